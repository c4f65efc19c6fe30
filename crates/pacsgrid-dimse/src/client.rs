//! C-STORE SCU: sends stored instances (C-MOVE sub-operations) or local Part 10 files
//! (`pacsgrid import --to host:port`) to a remote AE, streaming each data set.
//!
//! The sub-C-STORE core, [`store_on`], is shared with C-GET, which sends on the
//! requestor's own association.

use crate::association::{
    AssocError, Association, PresentationContext, ProposedContext, RequestParams,
};
use crate::config::RemoteAe;
use crate::message::{field, Command, Event, SendError, PRIORITY_MEDIUM};
use dicom_dictionary_std::tags;
use pacsgrid_archive::{transcode, Archive, StoredInstance};
use pacsgrid_dicom::uid;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncSeekExt};

pub use pacsgrid_dicom::part10::{parse_part10_header, Part10Header, MAX_META_GROUP};

/// Default time to connect and negotiate.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time to wait for any PDU once associated (a C-STORE-RSP may follow a long fsync).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a C-STORE SCU operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The association failed; it cannot be used any more.
    #[error(transparent)]
    Assoc(#[from] AssocError),
    /// The peer accepted no context for this SOP class in a syntax we can send.
    #[error("cannot send SOP class {sop_class} stored as {transfer_syntax}: {why}")]
    NoContext {
        /// The SOP class.
        sop_class: String,
        /// The object's transfer syntax.
        transfer_syntax: String,
        /// What the peer accepted instead, and why that does not do.
        why: String,
    },
    /// The data set could not be read or converted before anything was sent; the
    /// association is still usable.
    #[error("cannot read the object to send: {0}")]
    Source(String),
    /// Reading the data set failed after part of it was sent: the association had to be
    /// aborted.
    #[error("reading the object failed midway, association aborted: {0}")]
    Midway(String),
    /// A local file is not a DICOM Part 10 file we can send.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// The peer's answer to one C-STORE-RQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreResponse {
    /// The DIMSE status.
    pub status: u16,
    /// ErrorComment, when the peer gave one.
    pub error_comment: Option<String>,
}

/// Where the data set bytes of a C-STORE come from.
pub enum DataSource {
    /// Streamed (a stored blob, a local file positioned at the data set).
    Reader(Pin<Box<dyn AsyncRead + Send + Unpin>>),
    /// Already in memory (a converted object).
    Bytes(Vec<u8>),
}

/// How an object reaches the peer: on which context, and whether it must be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Send the bytes as stored on this context.
    AsStored(u8),
    /// Convert to this uncompressed transfer syntax (decoding compressed pixel data), then
    /// send on this context.
    Convert(u8, String),
}

fn is_uncompressed(ts: &str) -> bool {
    uid::transfer_syntax(ts).is_some_and(|t| !t.encapsulated)
}

/// Picks the context to send an object of `sop_class` stored in `stored_ts` on: one
/// accepted in that very syntax, else one in an uncompressed syntax, explicit little endian
/// first (a compressed object is then decoded, when this node has the decoder: a receiver
/// that takes only uncompressed data, like `storescp` or `getscu` by default, still gets
/// it). `need_requestor_scp` restricts to contexts where the association requestor took the
/// SCP role (C-GET).
pub fn route(
    contexts: &[PresentationContext],
    sop_class: &str,
    stored_ts: &str,
    need_requestor_scp: bool,
) -> Option<Route> {
    let usable = |c: &&PresentationContext| {
        c.abstract_syntax == sop_class && (!need_requestor_scp || c.requestor_scp)
    };
    let stored_ts = uid::trim_uid(stored_ts);
    if let Some(c) = contexts
        .iter()
        .filter(usable)
        .find(|c| c.transfer_syntax == stored_ts)
    {
        return Some(Route::AsStored(c.id));
    }
    if !is_uncompressed(stored_ts) && transcode::cannot_decode(stored_ts).is_some() {
        return None;
    }
    for preferred in [uid::EXPLICIT_VR_LE, uid::IMPLICIT_VR_LE] {
        if let Some(c) = contexts
            .iter()
            .filter(usable)
            .find(|c| c.transfer_syntax == preferred)
        {
            return Some(Route::Convert(c.id, preferred.to_string()));
        }
    }
    contexts
        .iter()
        .filter(usable)
        .find(|c| is_uncompressed(&c.transfer_syntax))
        .map(|c| Route::Convert(c.id, c.transfer_syntax.clone()))
}

/// Why [`route`] found no context: whether the peer took the SOP class at all, and if so why
/// none of its syntaxes does, for the log line and the error a failed sub-operation leaves.
pub fn no_route_why(
    contexts: &[PresentationContext],
    sop_class: &str,
    stored_ts: &str,
    need_requestor_scp: bool,
) -> String {
    let offered: Vec<&str> = contexts
        .iter()
        .filter(|c| c.abstract_syntax == sop_class && (!need_requestor_scp || c.requestor_scp))
        .map(|c| c.transfer_syntax.as_str())
        .collect();
    let role = if need_requestor_scp {
        " with the SCP role"
    } else {
        ""
    };
    if offered.is_empty() {
        return format!("the peer has no presentation context for this SOP class{role}");
    }
    let stored_ts = uid::trim_uid(stored_ts);
    match transcode::cannot_decode(stored_ts) {
        Some(why) if !is_uncompressed(stored_ts) => {
            format!("the peer takes it only in {} and {why}", offered.join(", "))
        }
        _ => format!(
            "the peer takes it only in {}, compressed syntaxes this node does not encode to",
            offered.join(", ")
        ),
    }
}

/// The contexts to propose for objects of these (SOP class, transfer syntax) pairs: one
/// per pair in the stored syntax (sent as is), then one per SOP class offering explicit
/// and implicit little endian (for a receiver that refuses the stored syntax). At most 128,
/// the exact ones first.
pub fn contexts_for<I, S, T>(pairs: I) -> Vec<ProposedContext>
where
    I: IntoIterator<Item = (S, T)>,
    S: AsRef<str>,
    T: AsRef<str>,
{
    let mut exact: Vec<(String, String)> = Vec::new();
    let mut classes: Vec<String> = Vec::new();
    for (class, ts) in pairs {
        let class = uid::trim_uid(class.as_ref()).to_string();
        let ts = uid::trim_uid(ts.as_ref()).to_string();
        if !exact.iter().any(|(c, t)| *c == class && *t == ts) {
            exact.push((class.clone(), ts));
        }
        if !classes.contains(&class) {
            classes.push(class);
        }
    }
    let mut out: Vec<ProposedContext> = exact
        .into_iter()
        .map(|(class, ts)| ProposedContext {
            abstract_syntax: class,
            transfer_syntaxes: vec![ts],
        })
        .collect();
    for class in classes {
        out.push(ProposedContext {
            abstract_syntax: class,
            transfer_syntaxes: vec![uid::EXPLICIT_VR_LE.into(), uid::IMPLICIT_VR_LE.into()],
        });
    }
    if out.len() > 128 {
        tracing::warn!(
            needed = out.len(),
            "more than 128 presentation contexts needed; some objects may not be sendable"
        );
        out.truncate(128);
    }
    out
}

/// Opens what to send for a stored instance along `route`.
pub async fn prepare(
    archive: &Archive,
    inst: &StoredInstance,
    route: &Route,
) -> Result<DataSource, ClientError> {
    match route {
        Route::AsStored(_) => archive
            .open_dataset(inst)
            .await
            .map(DataSource::Reader)
            .map_err(|e| ClientError::Source(e.to_string())),
        Route::Convert(_, ts) => archive
            .transcode_dataset(inst, ts)
            .await
            .map(DataSource::Bytes)
            .map_err(|e| ClientError::Source(e.to_string())),
    }
}

/// Sends one C-STORE-RQ and its data set on `pc_id`, then waits for the C-STORE-RSP.
///
/// `originator` fills MoveOriginatorApplicationEntityTitle / MessageID (C-MOVE).
/// `cancel_of` is the message ID of a C-GET running on this same association: a C-CANCEL
/// for it may arrive while we wait, and is reported in the returned flag.
pub async fn store_on(
    assoc: &mut Association,
    pc_id: u8,
    sop_class: &str,
    sop_instance: &str,
    source: DataSource,
    originator: Option<(&str, u16)>,
    cancel_of: Option<u16>,
) -> Result<(StoreResponse, bool), ClientError> {
    let msg_id = assoc.next_message_id();
    let mut b = Command::builder(field::C_STORE_RQ)
        .u16(tags::MESSAGE_ID, msg_id)
        .uid(tags::AFFECTED_SOP_CLASS_UID, sop_class)
        .uid(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance)
        .u16(tags::PRIORITY, PRIORITY_MEDIUM)
        .with_dataset(true);
    if let Some((ae, id)) = originator {
        b = b
            .ae(tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE, ae)
            .u16(tags::MOVE_ORIGINATOR_MESSAGE_ID, id);
    }
    assoc.send_command(pc_id, &b.build()).await?;
    match source {
        DataSource::Bytes(bytes) => assoc.send_dataset(pc_id, &bytes).await?,
        DataSource::Reader(mut reader) => match assoc.send_dataset_stream(pc_id, &mut reader).await
        {
            Ok(_) => {}
            Err(SendError::Assoc(e)) => return Err(e.into()),
            Err(SendError::Source(e)) => {
                let why = AssocError::Protocol(format!("data set source failed: {e}"));
                assoc.abort_with(&why).await;
                return Err(ClientError::Midway(e.to_string()));
            }
        },
    }
    let mut cancelled = false;
    loop {
        match assoc.next_event().await? {
            Event::Command {
                command,
                pc_id: rsp_pc,
            } => {
                let f = command.field();
                if f == Some(field::C_STORE_RSP) && command.responded_to() == Some(msg_id) {
                    if command.has_dataset() {
                        assoc.skip_dataset(rsp_pc).await?;
                    }
                    let status = command
                        .status()
                        .ok_or_else(|| AssocError::Protocol("C-STORE-RSP without Status".into()))?;
                    let rsp = StoreResponse {
                        status,
                        error_comment: command.string(tags::ERROR_COMMENT),
                    };
                    return Ok((rsp, cancelled));
                }
                if f == Some(field::C_CANCEL_RQ)
                    && cancel_of.is_some()
                    && command.responded_to() == cancel_of
                {
                    cancelled = true;
                    continue;
                }
                return Err(AssocError::Protocol(format!(
                    "unexpected command {:#06x} while waiting for C-STORE-RSP",
                    f.unwrap_or(0)
                ))
                .into());
            }
            Event::Data(_) => {
                return Err(
                    AssocError::Protocol("data set while waiting for C-STORE-RSP".into()).into(),
                )
            }
            Event::Release => {
                return Err(AssocError::Protocol(
                    "A-RELEASE-RQ while waiting for C-STORE-RSP".into(),
                )
                .into())
            }
            Event::Aborted => return Err(AssocError::PeerAborted.into()),
        }
    }
}

/// Verifies a remote AE with C-ECHO (associate, echo, release); returns the echo status.
pub async fn echo(remote: &RemoteAe, our_ae: &str) -> Result<u16, ClientError> {
    let params = RequestParams {
        calling_ae: our_ae.to_string(),
        called_ae: remote.ae_title.clone(),
        contexts: vec![ProposedContext {
            abstract_syntax: uid::VERIFICATION.into(),
            transfer_syntaxes: vec![uid::IMPLICIT_VR_LE.into()],
        }],
        roles: Vec::new(),
        max_pdu_length: crate::config::MIN_MAX_PDU_LENGTH,
        timeout: DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: DEFAULT_CONNECT_TIMEOUT,
    };
    let mut assoc = Association::request((remote.host.as_str(), remote.port), &params).await?;
    let Some(pc_id) = assoc.contexts().first().map(|c| c.id) else {
        assoc.abort().await;
        return Err(
            AssocError::Protocol(format!("{} refused Verification", remote.ae_title)).into(),
        );
    };
    let msg_id = assoc.next_message_id();
    let rq = Command::builder(field::C_ECHO_RQ)
        .u16(tags::MESSAGE_ID, msg_id)
        .uid(tags::AFFECTED_SOP_CLASS_UID, uid::VERIFICATION)
        .build();
    assoc.send_command(pc_id, &rq).await?;
    let status = match assoc.next_event().await? {
        Event::Command { command, .. }
            if command.field() == Some(field::C_ECHO_RSP)
                && command.responded_to() == Some(msg_id) =>
        {
            command
                .status()
                .ok_or_else(|| AssocError::Protocol("C-ECHO-RSP without Status".into()))?
        }
        _ => return Err(AssocError::Protocol("unexpected answer to C-ECHO-RQ".into()).into()),
    };
    assoc.release().await?;
    Ok(status)
}

/// Reads the file meta group of a local file.
pub async fn read_part10_header(path: &Path) -> Result<Part10Header, ClientError> {
    use tokio::io::AsyncReadExt;
    let err = |why: String| ClientError::File {
        path: path.display().to_string(),
        why,
    };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut head = Vec::new();
    file.take((MAX_META_GROUP + 256) as u64)
        .read_to_end(&mut head)
        .await
        .map_err(|e| err(e.to_string()))?;
    parse_part10_header(&head).map_err(err)
}

/// A C-STORE SCU association to one remote AE.
pub struct StoreScu {
    assoc: Association,
}

impl std::fmt::Debug for StoreScu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreScu")
            .field("assoc", &self.assoc)
            .finish()
    }
}

impl StoreScu {
    /// Associates with `remote` as `our_ae`, proposing `contexts` (see [`contexts_for`]),
    /// with the default timeouts. Fails when the peer accepts none of them.
    pub async fn connect(
        remote: &RemoteAe,
        our_ae: &str,
        max_pdu: u32,
        contexts: Vec<ProposedContext>,
    ) -> Result<StoreScu, ClientError> {
        Self::connect_with(
            remote,
            our_ae,
            max_pdu,
            contexts,
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_RESPONSE_TIMEOUT,
        )
        .await
    }

    /// Like [`Self::connect`], with explicit connect and response timeouts.
    pub async fn connect_with(
        remote: &RemoteAe,
        our_ae: &str,
        max_pdu: u32,
        contexts: Vec<ProposedContext>,
        timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<StoreScu, ClientError> {
        let params = RequestParams {
            calling_ae: our_ae.to_string(),
            called_ae: remote.ae_title.clone(),
            contexts,
            roles: Vec::new(),
            max_pdu_length: max_pdu,
            timeout,
            idle_timeout,
        };
        let addr = (remote.host.as_str(), remote.port);
        let assoc = match &remote.tls {
            None => Association::request(addr, &params).await?,
            Some(tls) => Association::request_tls(addr, tls.clone(), &remote.host, &params).await?,
        };
        if assoc.contexts().is_empty() {
            assoc.abort().await;
            return Err(AssocError::Protocol(format!(
                "{} accepted none of the proposed presentation contexts",
                remote.ae_title
            ))
            .into());
        }
        tracing::debug!(remote = %remote.ae_title, contexts = assoc.contexts().len(), "store association established");
        Ok(StoreScu { assoc })
    }

    /// The contexts the peer accepted.
    pub fn contexts(&self) -> &[PresentationContext] {
        self.assoc.contexts()
    }

    /// Sends a stored instance, as stored when the peer accepts its syntax, else converted
    /// to an uncompressed one when possible.
    pub async fn send(
        &mut self,
        archive: &Archive,
        inst: &StoredInstance,
        originator: Option<(&str, u16)>,
    ) -> Result<StoreResponse, ClientError> {
        let Some(r) = route(
            self.assoc.contexts(),
            &inst.sop_class_uid,
            &inst.transfer_syntax,
            false,
        ) else {
            return Err(ClientError::NoContext {
                sop_class: inst.sop_class_uid.clone(),
                transfer_syntax: inst.transfer_syntax.clone(),
                why: no_route_why(
                    self.assoc.contexts(),
                    &inst.sop_class_uid,
                    &inst.transfer_syntax,
                    false,
                ),
            });
        };
        let pc_id = match &r {
            Route::AsStored(id) | Route::Convert(id, _) => *id,
        };
        let source = prepare(archive, inst, &r).await?;
        let (rsp, _) = store_on(
            &mut self.assoc,
            pc_id,
            &inst.sop_class_uid,
            &inst.sop_instance_uid,
            source,
            originator,
            None,
        )
        .await?;
        Ok(rsp)
    }

    /// Sends a local Part 10 file: its meta group is stripped and the data set bytes are
    /// streamed as they are, in the file's transfer syntax (which the peer must accept).
    pub async fn send_file(&mut self, path: &Path) -> Result<StoreResponse, ClientError> {
        let header = read_part10_header(path).await?;
        let pc_id = self
            .assoc
            .contexts()
            .iter()
            .find(|c| {
                c.abstract_syntax == header.sop_class_uid
                    && c.transfer_syntax == header.transfer_syntax
            })
            .map(|c| c.id)
            .ok_or_else(|| ClientError::NoContext {
                sop_class: header.sop_class_uid.clone(),
                transfer_syntax: header.transfer_syntax.clone(),
                why: "a file is sent as it is, and the peer took no context in its syntax".into(),
            })?;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Source(e.to_string()))?;
        file.seek(std::io::SeekFrom::Start(header.dataset_offset))
            .await
            .map_err(|e| ClientError::Source(e.to_string()))?;
        let source = DataSource::Reader(Box::pin(file));
        let (rsp, _) = store_on(
            &mut self.assoc,
            pc_id,
            &header.sop_class_uid,
            &header.sop_instance_uid,
            source,
            None,
            None,
        )
        .await?;
        Ok(rsp)
    }

    /// Releases the association (A-RELEASE); associations are not released on drop.
    pub async fn release(self) -> Result<(), ClientError> {
        Ok(self.assoc.release().await?)
    }

    /// Aborts the association.
    pub async fn abort(self) {
        self.assoc.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(id: u8, class: &str, ts: &str, scp: bool) -> PresentationContext {
        PresentationContext {
            id,
            abstract_syntax: class.into(),
            transfer_syntax: ts.into(),
            requestor_scu: true,
            requestor_scp: scp,
        }
    }

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const J2K: &str = "1.2.840.10008.1.2.4.90";

    #[test]
    fn routes_prefer_the_stored_syntax_then_uncompressed_ones() {
        let cs = vec![
            ctx(1, CT, uid::IMPLICIT_VR_LE, true),
            ctx(3, CT, uid::EXPLICIT_VR_LE, false),
            ctx(5, CT, J2K, true),
        ];
        assert_eq!(route(&cs, CT, J2K, false), Some(Route::AsStored(5)));
        assert_eq!(
            route(&cs, CT, uid::IMPLICIT_VR_LE, false),
            Some(Route::AsStored(1))
        );
        assert_eq!(
            route(&cs, CT, uid::EXPLICIT_VR_BE, false),
            Some(Route::Convert(3, uid::EXPLICIT_VR_LE.into()))
        );
        // C-GET: only contexts where the requestor is SCP
        assert_eq!(
            route(&cs, CT, uid::EXPLICIT_VR_BE, true),
            Some(Route::Convert(1, uid::IMPLICIT_VR_LE.into()))
        );
        // compressed, no context in its syntax: decoded when there is a decoder
        assert_eq!(
            route(&cs, CT, "1.2.840.10008.1.2.5", false),
            Some(Route::Convert(3, uid::EXPLICIT_VR_LE.into()))
        );
        assert_eq!(
            route(&cs, CT, "1.2.840.10008.1.2.4.91", true),
            Some(Route::Convert(1, uid::IMPLICIT_VR_LE.into()))
        );
        assert_eq!(route(&cs, CT, "1.2.840.10008.1.2.4.80", false), None);
        assert_eq!(
            route(&cs, "1.2.840.10008.5.1.4.1.1.4", uid::EXPLICIT_VR_LE, false),
            None
        );
    }

    #[test]
    fn a_missing_route_says_why() {
        let cs = vec![ctx(1, CT, uid::EXPLICIT_VR_LE, false)];
        let jls = "1.2.840.10008.1.2.4.80";
        let why = no_route_why(&cs, CT, jls, false);
        assert!(
            why.contains(uid::EXPLICIT_VR_LE) && why.contains("JPEG-LS"),
            "{why}"
        );
        let why = no_route_why(&cs, CT, jls, true);
        assert!(
            why.contains("no presentation context") && why.contains("SCP role"),
            "{why}"
        );
        let why = no_route_why(&cs, "1.2.840.10008.5.1.4.1.1.4", uid::EXPLICIT_VR_LE, false);
        assert!(why.contains("no presentation context"), "{why}");
        let cs = vec![ctx(1, CT, J2K, false)];
        let why = no_route_why(&cs, CT, uid::EXPLICIT_VR_LE, false);
        assert!(why.contains("does not encode"), "{why}");
    }

    #[test]
    fn proposed_contexts_cover_stored_and_fallback_syntaxes() {
        let cs = contexts_for([(CT, J2K), (CT, uid::EXPLICIT_VR_LE), (CT, J2K)]);
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0].transfer_syntaxes, vec![J2K.to_string()]);
        assert_eq!(cs[2].transfer_syntaxes.len(), 2);
        let many: Vec<(String, String)> = (0..200)
            .map(|i| {
                (
                    format!("1.2.840.10008.5.1.4.1.1.{i}"),
                    uid::EXPLICIT_VR_LE.to_string(),
                )
            })
            .collect();
        assert_eq!(contexts_for(many).len(), 128);
    }
}
