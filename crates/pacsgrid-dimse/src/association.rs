//! DICOM associations (PS3.8) over TCP or TLS ([`DicomStream`]), on dicom-ul's PDU types and
//! codec.
//!
//! Why not dicom-ul's `ServerAssociationOptions` / `ClientAssociationOptions`: its acceptor
//! picks transfer syntaxes by its own registry check and cannot apply our rules (storage
//! classes take the first known syntax in the *sender's* order, Verification and
//! Query/Retrieve only implicit/explicit little endian, role selection only for storage
//! classes), it cannot reject with "local limit exceeded" when our cap is reached, and it
//! reads PDUs without a bound of ours. So this module drives negotiation itself and uses
//! dicom-ul only for what it does well: the PDU types and `read_pdu` / `write_pdu`.
//!
//! P-DATA-TF PDUs are framed and parsed here rather than through `read_pdu` / `write_pdu`:
//! those copy every data byte two or three times into nested buffers, which matters when
//! gigabytes stream through. The framing is twelve bytes of header; a test checks that it
//! is byte-identical to dicom-ul's.
//!
//! Every PDU read is bounded before any buffer grows: a P-DATA PDU longer than the max PDU
//! length we announced, or any other PDU longer than [`CONTROL_PDU_LIMIT`], ends the
//! association with an A-ABORT, and only that association.

use crate::config::DimseConfig;
use crate::stream::DicomStream;
use bytes::{Buf, Bytes, BytesMut};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderASCEReason, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, Pdu,
    PresentationContextProposed, PresentationContextResult, PresentationContextResultReason,
    RequestorRoles, UserVariableItem, MAXIMUM_PDU_SIZE,
};
use pacsgrid_dicom::uid;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long we wait for a rejected requestor to close the connection (the ARTIM timer).
const REJECT_LINGER: std::time::Duration = std::time::Duration::from_secs(5);
/// The DICOM application context name, the only one there is.
pub const APPLICATION_CONTEXT_NAME: &str = "1.2.840.10008.3.1.1.1";

/// The largest non-P-DATA PDU we read (A-ASSOCIATE-RQ/AC with many presentation contexts
/// can exceed a small max PDU length; nothing legitimate comes near this).
pub const CONTROL_PDU_LIMIT: u32 = 1 << 20;

/// How many data bytes we put in one PDU when the peer announced no limit (max PDU 0).
const UNLIMITED_PEER_CHUNK: u32 = 1 << 20;

/// P-DATA PDU header (6) plus one PDV item header (4 length + 1 context + 1 control).
const PDATA_OVERHEAD: usize = 12;

/// The six Query/Retrieve SOP classes we serve.
pub const QR_SOP_CLASSES: [&str; 6] = [
    uid::PATIENT_ROOT_FIND,
    uid::PATIENT_ROOT_MOVE,
    uid::PATIENT_ROOT_GET,
    uid::STUDY_ROOT_FIND,
    uid::STUDY_ROOT_MOVE,
    uid::STUDY_ROOT_GET,
];

/// Errors of an association: transport, protocol, timeouts.
#[derive(Debug, thiserror::Error)]
pub enum AssocError {
    /// The socket failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// No PDU arrived within the idle timeout.
    #[error("no PDU within the idle timeout of {0:?}")]
    Idle(Duration),
    /// The peer did not complete a step in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// The TLS handshake of an association we requested failed (untrusted certificate,
    /// wrong name, no common protocol version or cipher suite, a plain port).
    #[error("{0}")]
    Tls(#[from] crate::stream::HandshakeError),
    /// A PDU longer than we allow.
    #[error("PDU type {pdu_type:#04x} of {length} bytes exceeds the limit of {limit} bytes")]
    PduTooLarge {
        /// The PDU type.
        pdu_type: u8,
        /// Its declared length.
        length: u32,
        /// Our limit for it.
        limit: u32,
    },
    /// A PDU that does not parse.
    #[error("malformed PDU: {0}")]
    Malformed(String),
    /// A PDU or DIMSE message that is not allowed at this point.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer sent A-ABORT.
    #[error("the peer aborted the association")]
    PeerAborted,
    /// The peer rejected our association request.
    #[error("association rejected ({result}): {reason}")]
    Rejected {
        /// Permanent or transient.
        result: &'static str,
        /// The reason given.
        reason: String,
    },
    /// A PDU could not be encoded (an AE title too long, ...).
    #[error("cannot encode PDU: {0}")]
    Encode(String),
}

impl AssocError {
    /// The A-ABORT reason to send for this error, if the association should be aborted
    /// with one (provider-initiated); `None` when the connection is already gone.
    pub fn abort_reason(&self) -> Option<AbortRQServiceProviderReason> {
        match self {
            AssocError::PduTooLarge { .. } => {
                Some(AbortRQServiceProviderReason::InvalidPduParameter)
            }
            AssocError::Malformed(_) => Some(AbortRQServiceProviderReason::UnrecognizedPdu),
            AssocError::Protocol(_) => Some(AbortRQServiceProviderReason::UnexpectedPdu),
            AssocError::Idle(_) | AssocError::Timeout(_) | AssocError::Encode(_) => {
                Some(AbortRQServiceProviderReason::ReasonNotSpecified)
            }
            AssocError::Io(_)
            | AssocError::Tls(_)
            | AssocError::Closed
            | AssocError::PeerAborted
            | AssocError::Rejected { .. } => None,
        }
    }
}

/// An accepted presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentationContext {
    /// The odd context ID.
    pub id: u8,
    /// The abstract syntax (SOP class UID).
    pub abstract_syntax: String,
    /// The transfer syntax accepted for it.
    pub transfer_syntax: String,
    /// Whether the requestor may act as SCU of this SOP class (the default).
    pub requestor_scu: bool,
    /// Whether the requestor may act as SCP (negotiated by role selection; C-GET needs it).
    pub requestor_scp: bool,
}

/// A presentation context to propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedContext {
    /// The abstract syntax (SOP class UID).
    pub abstract_syntax: String,
    /// The transfer syntaxes, preferred first.
    pub transfer_syntaxes: Vec<String>,
}

/// Why we refuse an association request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The called AE title is not ours.
    CalledAeNotRecognized,
    /// The calling AE title is not on the allow-list (or is empty).
    CallingAeNotRecognized,
    /// The application context is not the DICOM one.
    ApplicationContextNotSupported,
    /// The protocol version bit 0 is not set.
    ProtocolVersionNotSupported,
    /// Too many associations are open (transient: try again later).
    LocalLimitExceeded,
}

impl RejectReason {
    /// The A-ASSOCIATE-RJ PDU for this reason.
    pub fn to_pdu(self) -> AssociationRJ {
        use AssociationRJSource as S;
        let (result, source) = match self {
            RejectReason::CalledAeNotRecognized => (
                AssociationRJResult::Permanent,
                S::ServiceUser(AssociationRJServiceUserReason::CalledAETitleNotRecognized),
            ),
            RejectReason::CallingAeNotRecognized => (
                AssociationRJResult::Permanent,
                S::ServiceUser(AssociationRJServiceUserReason::CallingAETitleNotRecognized),
            ),
            RejectReason::ApplicationContextNotSupported => (
                AssociationRJResult::Permanent,
                S::ServiceUser(AssociationRJServiceUserReason::ApplicationContextNameNotSupported),
            ),
            RejectReason::ProtocolVersionNotSupported => (
                AssociationRJResult::Permanent,
                S::ServiceProviderASCE(
                    AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
                ),
            ),
            RejectReason::LocalLimitExceeded => (
                AssociationRJResult::Transient,
                S::ServiceProviderPresentation(
                    AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                ),
            ),
        };
        AssociationRJ { result, source }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectReason::CalledAeNotRecognized => "called AE title not recognized",
            RejectReason::CallingAeNotRecognized => "calling AE title not recognized",
            RejectReason::ApplicationContextNotSupported => "application context not supported",
            RejectReason::ProtocolVersionNotSupported => "protocol version not supported",
            RejectReason::LocalLimitExceeded => "local limit exceeded",
        })
    }
}

/// Why accepting an association failed.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// We rejected the request with A-ASSOCIATE-RJ.
    #[error("rejected association from {calling_ae:?} to {called_ae:?}: {reason}")]
    Rejected {
        /// Why.
        reason: RejectReason,
        /// The calling AE title of the request.
        calling_ae: String,
        /// The called AE title of the request.
        called_ae: String,
    },
    /// The request never arrived or did not parse.
    #[error(transparent)]
    Assoc(#[from] AssocError),
}

/// What the acceptor's rules allow; built from [`DimseConfig`].
#[derive(Debug, Clone)]
pub struct AcceptPolicy {
    /// Our AE title.
    pub ae_title: String,
    /// Accept any called AE title.
    pub accept_any_called_ae: bool,
    /// Calling AE titles allowed, if restricted.
    pub allowed_calling_aes: Option<Vec<String>>,
    /// The max PDU length we announce.
    pub max_pdu_length: u32,
    /// The access point whose AE rules admit calling AEs (by title and host); `None`
    /// admits any calling AE the other rules let through.
    pub access: Option<std::sync::Arc<pacsgrid_access::AccessPoint>>,
}

impl AcceptPolicy {
    /// The policy of a configuration.
    pub fn from_config(cfg: &DimseConfig) -> Self {
        AcceptPolicy {
            ae_title: cfg.ae_title.clone(),
            accept_any_called_ae: cfg.accept_any_called_ae,
            allowed_calling_aes: cfg.allowed_calling_aes.clone(),
            max_pdu_length: cfg.effective_max_pdu(),
            access: None,
        }
    }
}

/// The outcome of negotiating an A-ASSOCIATE-RQ: the AC to send and what it means.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// The A-ASSOCIATE-AC PDU.
    pub ac: AssociationAC,
    /// The accepted contexts.
    pub contexts: Vec<PresentationContext>,
    /// Every proposed context with its result, for the debug log.
    pub results: Vec<(u8, String, PresentationContextResultReason, String)>,
    /// The peer's max PDU length (0: unlimited).
    pub peer_max_pdu: u32,
}

/// Which transfer syntaxes a non-storage service accepts: its identifiers and commands
/// are small, and decoding them needs nothing but little endian.
fn is_uncompressed_le(ts: &str) -> bool {
    let ts = uid::trim_uid(ts);
    ts == uid::IMPLICIT_VR_LE || ts == uid::EXPLICIT_VR_LE
}

/// Decides on an association request by our rules, without I/O.
///
/// Storage SOP classes take the first transfer syntax the sender proposes that we know
/// (the sender's order, because it lists what it prefers to send, and we keep bytes as
/// received); Verification and Query/Retrieve take implicit or explicit little endian;
/// everything else is refused as abstract syntax not supported. Role selection is answered
/// for storage classes only (a C-GET requestor must act as their SCP).
pub fn negotiate(rq: &AssociationRQ, policy: &AcceptPolicy) -> Result<Negotiated, RejectReason> {
    if rq.protocol_version & 1 == 0 {
        return Err(RejectReason::ProtocolVersionNotSupported);
    }
    if rq.application_context_name.trim_end_matches(['\0', ' ']) != APPLICATION_CONTEXT_NAME {
        return Err(RejectReason::ApplicationContextNotSupported);
    }
    let called = rq.called_ae_title.trim();
    let calling = rq.calling_ae_title.trim();
    if !policy.accept_any_called_ae && called != policy.ae_title.trim() {
        return Err(RejectReason::CalledAeNotRecognized);
    }
    if calling.is_empty() || called.is_empty() {
        return Err(if calling.is_empty() {
            RejectReason::CallingAeNotRecognized
        } else {
            RejectReason::CalledAeNotRecognized
        });
    }
    if let Some(allowed) = &policy.allowed_calling_aes {
        if !allowed.iter().any(|a| a.trim() == calling) {
            return Err(RejectReason::CallingAeNotRecognized);
        }
    }

    let mut peer_max_pdu = 0;
    let mut proposed_roles: Vec<(String, RequestorRoles)> = Vec::new();
    for item in &rq.user_variables {
        match item {
            UserVariableItem::MaxLength(n) => peer_max_pdu = *n,
            UserVariableItem::ScuScpRoleSelectionSubItem(sop, roles) => {
                proposed_roles.push((uid::trim_uid(sop).to_string(), *roles));
            }
            _ => {}
        }
    }

    let mut results = Vec::new();
    let mut accepted = Vec::new();
    let mut pc_results = Vec::new();
    for pc in &rq.presentation_contexts {
        let abs = uid::trim_uid(&pc.abstract_syntax);
        let storage = uid::is_storage_sop_class(abs);
        let chosen: Option<&String> = if storage {
            pc.transfer_syntaxes
                .iter()
                .find(|ts| uid::transfer_syntax(ts).is_some())
        } else if abs == uid::VERIFICATION || QR_SOP_CLASSES.contains(&abs) {
            pc.transfer_syntaxes
                .iter()
                .find(|ts| is_uncompressed_le(ts))
        } else {
            None
        };
        let known_service = storage || abs == uid::VERIFICATION || QR_SOP_CLASSES.contains(&abs);
        let (reason, ts) = match chosen {
            Some(ts) => (
                PresentationContextResultReason::Acceptance,
                uid::trim_uid(ts).to_string(),
            ),
            None if known_service => (
                PresentationContextResultReason::TransferSyntaxesNotSupported,
                // the field must hold a syntax even when refused; echo a harmless one
                uid::IMPLICIT_VR_LE.to_string(),
            ),
            None => (
                PresentationContextResultReason::AbstractSyntaxNotSupported,
                uid::IMPLICIT_VR_LE.to_string(),
            ),
        };
        if reason == PresentationContextResultReason::Acceptance {
            let roles = if storage {
                proposed_roles
                    .iter()
                    .find(|(sop, _)| sop == abs)
                    .map(|(_, r)| *r)
            } else {
                None
            };
            accepted.push(PresentationContext {
                id: pc.id,
                abstract_syntax: abs.to_string(),
                transfer_syntax: ts.clone(),
                requestor_scu: roles.is_none_or(|r| r.scu),
                requestor_scp: roles.is_some_and(|r| r.scp),
            });
        }
        results.push((pc.id, abs.to_string(), reason.clone(), ts.clone()));
        pc_results.push(PresentationContextResult {
            id: pc.id,
            reason,
            transfer_syntax: ts,
        });
    }

    let mut user_variables = vec![
        UserVariableItem::MaxLength(policy.max_pdu_length),
        UserVariableItem::ImplementationClassUID(uid::IMPLEMENTATION_CLASS_UID.to_string()),
        UserVariableItem::ImplementationVersionName(uid::IMPLEMENTATION_VERSION_NAME.to_string()),
    ];
    for (sop, roles) in &proposed_roles {
        if uid::is_storage_sop_class(sop) {
            user_variables.push(UserVariableItem::ScuScpRoleSelectionSubItem(
                sop.clone(),
                *roles,
            ));
        }
    }

    Ok(Negotiated {
        ac: AssociationAC {
            protocol_version: 1,
            calling_ae_title: calling.to_string(),
            called_ae_title: called.to_string(),
            application_context_name: APPLICATION_CONTEXT_NAME.to_string(),
            presentation_contexts: pc_results,
            user_variables,
        },
        contexts: accepted,
        results,
        peer_max_pdu,
    })
}

/// One presentation data value: a fragment of a command or of a data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdv {
    /// The presentation context it travels on.
    pub pc_id: u8,
    /// Command fragment (true) or data set fragment (false).
    pub is_command: bool,
    /// The last fragment of its command or data set.
    pub is_last: bool,
    /// The fragment bytes (a slice of the received PDU, not a copy).
    pub data: Bytes,
}

/// A PDU as received: P-DATA split into PDVs, everything else as dicom-ul decodes it.
#[derive(Debug)]
pub enum Received {
    /// P-DATA-TF.
    Data(Vec<Pdv>),
    /// Any other PDU.
    Other(Pdu),
}

/// Which side of the association we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We accepted it.
    Acceptor,
    /// We requested it.
    Requestor,
}

/// P-DATA values up to this size are copied behind their header and sent in one write.
const SMALL_PDV: usize = 16 * 1024;

/// An established association (either side): PDU I/O, negotiated contexts, limits.
pub struct Association {
    stream: DicomStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    side: Side,
    peer: SocketAddr,
    calling_ae: String,
    called_ae: String,
    max_pdu_receive: u32,
    max_pdu_send: u32,
    contexts: Vec<PresentationContext>,
    idle_timeout: Duration,
    /// PDVs received but not yet consumed (a PDU may carry several).
    pub(crate) pending: VecDeque<Pdv>,
    /// Events read ahead while polling for C-CANCEL, handed out before new ones.
    pub(crate) deferred: VecDeque<crate::message::Event>,
    /// Command fragments being reassembled, with their context.
    pub(crate) command_buf: Option<(u8, Vec<u8>)>,
    /// The next message ID for requests we send on this association.
    next_message_id: u16,
    /// The two fragment buffers a streamed data set is sent through, kept between
    /// messages: a fresh pair per instance cost a zeroed allocation of up to 2 MiB that the
    /// kernel had to fault in again for every C-STORE sub-operation of a retrieve.
    pub(crate) send_bufs: [Vec<u8>; 2],
}

impl std::fmt::Debug for Association {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Association")
            .field("side", &self.side)
            .field("peer", &self.peer)
            .field("calling_ae", &self.calling_ae)
            .field("called_ae", &self.called_ae)
            .field("max_pdu_receive", &self.max_pdu_receive)
            .field("max_pdu_send", &self.max_pdu_send)
            .field("contexts", &self.contexts)
            .field("tls", &self.stream.is_tls())
            .field("peer_certificate", &self.stream.peer_certificate_name())
            .finish()
    }
}

/// Parameters of an association we request.
#[derive(Debug, Clone)]
pub struct RequestParams {
    /// Our AE title.
    pub calling_ae: String,
    /// The peer's AE title.
    pub called_ae: String,
    /// Contexts to propose (at most 128).
    pub contexts: Vec<ProposedContext>,
    /// SCU/SCP role selection items: (SOP class, we act as SCU, we act as SCP).
    pub roles: Vec<(String, bool, bool)>,
    /// The max PDU length we announce.
    pub max_pdu_length: u32,
    /// Connect and negotiation timeout.
    pub timeout: Duration,
    /// Idle timeout once established (waiting for responses).
    pub idle_timeout: Duration,
}

impl Association {
    fn new(stream: DicomStream, peer: SocketAddr, side: Side, idle_timeout: Duration) -> Self {
        Association {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: Vec::new(),
            side,
            peer,
            calling_ae: String::new(),
            called_ae: String::new(),
            max_pdu_receive: MAXIMUM_PDU_SIZE,
            max_pdu_send: UNLIMITED_PEER_CHUNK,
            contexts: Vec::new(),
            idle_timeout,
            pending: VecDeque::new(),
            deferred: VecDeque::new(),
            command_buf: None,
            next_message_id: 1,
            send_bufs: [Vec::new(), Vec::new()],
        }
    }

    /// Reads an A-ASSOCIATE-RQ within `timeout` and answers it: A-ASSOCIATE-AC by our
    /// rules, or A-ASSOCIATE-RJ (`at_capacity` rejects as transient "local limit exceeded").
    ///
    /// `stream` is a plain `TcpStream` or a [`DicomStream`] whose TLS handshake is done.
    /// The TCP connection gets TCP_NODELAY first: without it every small response waits for
    /// the peer's delayed ACK (tens of milliseconds per C-STORE).
    pub async fn accept(
        stream: impl Into<DicomStream>,
        policy: &AcceptPolicy,
        at_capacity: bool,
        timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Association, AcceptError> {
        let stream = stream.into();
        stream.tcp().set_nodelay(true).map_err(AssocError::Io)?;
        let peer = stream.peer_addr().map_err(AssocError::Io)?;
        let mut assoc = Association::new(stream, peer, Side::Acceptor, timeout);
        assoc.max_pdu_receive = policy.max_pdu_length;
        let rq = match assoc.read_pdu().await {
            Ok(Received::Other(Pdu::AssociationRQ(rq))) => rq,
            Ok(Received::Other(Pdu::AbortRQ { .. })) => return Err(AssocError::PeerAborted.into()),
            Ok(other) => {
                let e = AssocError::Protocol(format!(
                    "expected A-ASSOCIATE-RQ, got {}",
                    describe(&other)
                ));
                assoc.abort_with(&e).await;
                return Err(e.into());
            }
            Err(AssocError::Idle(_)) => {
                let e = AssocError::Timeout("A-ASSOCIATE-RQ");
                assoc.abort_with(&e).await;
                return Err(e.into());
            }
            Err(e) => {
                assoc.abort_with(&e).await;
                return Err(e.into());
            }
        };
        assoc.calling_ae = rq.calling_ae_title.trim().to_string();
        assoc.called_ae = rq.called_ae_title.trim().to_string();
        let decision = if at_capacity {
            Err(RejectReason::LocalLimitExceeded)
        } else {
            negotiate(&rq, policy).and_then(|neg| match &policy.access {
                Some(a) if a.ae_rights().admit(&assoc.calling_ae, peer.ip()).is_err() => {
                    Err(RejectReason::CallingAeNotRecognized)
                }
                _ => Ok(neg),
            })
        };
        match decision {
            Err(reason) => {
                // best effort: the peer may already be gone, and we are closing anyway
                let _ = assoc.send_pdu(&Pdu::AssociationRJ(reason.to_pdu())).await;
                // PS3.8 9.2 (state Sta13): after an A-ASSOCIATE-RJ the requestor closes the
                // connection; closing first can make it see a dropped connection instead of
                // the rejection (pynetdicom does, now and then). Wait for its close, bounded
                // by an ARTIM-like timer.
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(REJECT_LINGER, async {
                    while let Ok(n) = assoc.stream.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                let _ = assoc.stream.shutdown().await;
                Err(AcceptError::Rejected {
                    reason,
                    calling_ae: assoc.calling_ae,
                    called_ae: assoc.called_ae,
                })
            }
            Ok(neg) => {
                for (id, abs, reason, ts) in &neg.results {
                    tracing::debug!(
                        pc = id,
                        abstract_syntax = %abs,
                        transfer_syntax = %ts,
                        result = %reason,
                        "presentation context"
                    );
                }
                assoc.max_pdu_send = effective_send_limit(neg.peer_max_pdu);
                assoc.contexts = neg.contexts;
                assoc.send_pdu(&Pdu::AssociationAC(neg.ac)).await?;
                assoc.idle_timeout = idle_timeout;
                Ok(assoc)
            }
        }
    }

    /// Connects to `addr` and requests an association; returns it with the contexts the
    /// peer accepted (possibly none: the caller decides whether that is an error).
    pub async fn request<A>(addr: A, params: &RequestParams) -> Result<Association, AssocError>
    where
        A: tokio::net::ToSocketAddrs,
    {
        if params.contexts.is_empty() || params.contexts.len() > 128 {
            return Err(AssocError::Protocol(format!(
                "{} presentation contexts proposed; 1 to 128 are allowed",
                params.contexts.len()
            )));
        }
        let stream = tokio::time::timeout(params.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| AssocError::Timeout("TCP connect"))??;
        stream.set_nodelay(true)?;
        Self::request_on(stream.into(), params).await
    }

    /// Like [`Self::request`], over DICOM TLS: the server's certificate must chain to the
    /// roots of `config` and carry `server_name` (a host name or an IP address).
    pub async fn request_tls(
        addr: (&str, u16),
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
        params: &RequestParams,
    ) -> Result<Association, AssocError> {
        let name =
            rustls_pki_types::ServerName::try_from(server_name.to_string()).map_err(|e| {
                AssocError::Protocol(format!("{server_name:?} is no TLS server name: {e}"))
            })?;
        let tcp = tokio::time::timeout(params.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| AssocError::Timeout("TCP connect"))??;
        let stream =
            tokio::time::timeout(params.timeout, DicomStream::connect_tls(tcp, config, name))
                .await
                .map_err(|_| AssocError::Timeout("TLS handshake"))??;
        Self::request_on(stream, params).await
    }

    /// Requests an association on a connection already made (plain, or TLS after its
    /// handshake); see [`Self::request`].
    pub async fn request_on(
        stream: DicomStream,
        params: &RequestParams,
    ) -> Result<Association, AssocError> {
        if params.contexts.is_empty() || params.contexts.len() > 128 {
            return Err(AssocError::Protocol(format!(
                "{} presentation contexts proposed; 1 to 128 are allowed",
                params.contexts.len()
            )));
        }
        let peer = stream.peer_addr()?;
        let mut assoc = Association::new(stream, peer, Side::Requestor, params.timeout);
        assoc.max_pdu_receive = params.max_pdu_length;
        assoc.calling_ae = params.calling_ae.trim().to_string();
        assoc.called_ae = params.called_ae.trim().to_string();

        let proposed: Vec<PresentationContextProposed> = params
            .contexts
            .iter()
            .enumerate()
            .map(|(i, c)| PresentationContextProposed {
                // odd IDs 1, 3, ... 255; the length check above keeps this in range
                id: (2 * i + 1) as u8,
                abstract_syntax: c.abstract_syntax.clone(),
                transfer_syntaxes: c.transfer_syntaxes.clone(),
            })
            .collect();
        let mut user_variables = vec![
            UserVariableItem::MaxLength(params.max_pdu_length),
            UserVariableItem::ImplementationClassUID(uid::IMPLEMENTATION_CLASS_UID.to_string()),
            UserVariableItem::ImplementationVersionName(
                uid::IMPLEMENTATION_VERSION_NAME.to_string(),
            ),
        ];
        for (sop, scu, scp) in &params.roles {
            user_variables.push(UserVariableItem::ScuScpRoleSelectionSubItem(
                sop.clone(),
                RequestorRoles {
                    scu: *scu,
                    scp: *scp,
                },
            ));
        }
        let rq = AssociationRQ {
            protocol_version: 1,
            calling_ae_title: assoc.calling_ae.clone(),
            called_ae_title: assoc.called_ae.clone(),
            application_context_name: APPLICATION_CONTEXT_NAME.to_string(),
            presentation_contexts: proposed.clone(),
            user_variables,
        };
        assoc.send_pdu(&Pdu::AssociationRQ(rq)).await?;
        let ac = match assoc.read_pdu().await {
            Ok(Received::Other(Pdu::AssociationAC(ac))) => ac,
            Ok(Received::Other(Pdu::AssociationRJ(rj))) => {
                let _ = assoc.stream.shutdown().await;
                return Err(AssocError::Rejected {
                    result: match rj.result {
                        AssociationRJResult::Permanent => "permanent",
                        AssociationRJResult::Transient => "transient",
                    },
                    reason: rj.source.to_string(),
                });
            }
            Ok(Received::Other(Pdu::AbortRQ { .. })) => return Err(AssocError::PeerAborted),
            Ok(other) => {
                let e = AssocError::Protocol(format!(
                    "expected A-ASSOCIATE-AC, got {}",
                    describe(&other)
                ));
                assoc.abort_with(&e).await;
                return Err(e);
            }
            Err(AssocError::Idle(_)) => {
                let e = AssocError::Timeout("A-ASSOCIATE-AC");
                assoc.abort_with(&e).await;
                return Err(e);
            }
            Err(e) => {
                assoc.abort_with(&e).await;
                return Err(e);
            }
        };
        let mut peer_max = 0;
        let mut roles: Vec<(String, RequestorRoles)> = Vec::new();
        for item in &ac.user_variables {
            match item {
                UserVariableItem::MaxLength(n) => peer_max = *n,
                UserVariableItem::ScuScpRoleSelectionSubItem(sop, r) => {
                    roles.push((uid::trim_uid(sop).to_string(), *r))
                }
                _ => {}
            }
        }
        assoc.max_pdu_send = effective_send_limit(peer_max);
        for res in &ac.presentation_contexts {
            let Some(prop) = proposed.iter().find(|p| p.id == res.id) else {
                continue;
            };
            let ts = uid::trim_uid(&res.transfer_syntax).to_string();
            tracing::debug!(
                pc = res.id,
                abstract_syntax = %prop.abstract_syntax,
                transfer_syntax = %ts,
                result = %res.reason,
                "presentation context"
            );
            if res.reason != PresentationContextResultReason::Acceptance {
                continue;
            }
            if !prop
                .transfer_syntaxes
                .iter()
                .any(|t| uid::trim_uid(t) == ts)
            {
                // an acceptor may only pick one of the proposed syntaxes
                continue;
            }
            let abs = uid::trim_uid(&prop.abstract_syntax).to_string();
            let r = roles.iter().find(|(s, _)| *s == abs).map(|(_, r)| *r);
            assoc.contexts.push(PresentationContext {
                id: res.id,
                abstract_syntax: abs,
                transfer_syntax: ts,
                requestor_scu: r.is_none_or(|r| r.scu),
                requestor_scp: r.is_some_and(|r| r.scp),
            });
        }
        assoc.idle_timeout = params.idle_timeout;
        Ok(assoc)
    }

    /// Which side we are.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The peer's socket address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the association runs under TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// The subject (CN) of the certificate the peer presented and we verified, if any: the
    /// identity of a TLS client with a client certificate.
    pub fn peer_certificate_name(&self) -> Option<&str> {
        self.stream.peer_certificate_name()
    }

    /// The calling AE title (the requestor's).
    pub fn calling_ae(&self) -> &str {
        &self.calling_ae
    }

    /// The called AE title (the acceptor's).
    pub fn called_ae(&self) -> &str {
        &self.called_ae
    }

    /// The AE title of the other side.
    pub fn peer_ae(&self) -> &str {
        match self.side {
            Side::Acceptor => &self.calling_ae,
            Side::Requestor => &self.called_ae,
        }
    }

    /// The accepted presentation contexts.
    pub fn contexts(&self) -> &[PresentationContext] {
        &self.contexts
    }

    /// The accepted context with this ID.
    pub fn context(&self, id: u8) -> Option<&PresentationContext> {
        self.contexts.iter().find(|c| c.id == id)
    }

    /// The largest P-DATA PDU we accept.
    pub fn max_pdu_receive(&self) -> u32 {
        self.max_pdu_receive
    }

    /// The largest P-DATA PDU we send (the peer's limit, or our cap when it has none).
    pub fn max_pdu_send(&self) -> u32 {
        self.max_pdu_send
    }

    /// How many bytes of one fragment fit in a PDU we send.
    pub fn max_fragment(&self) -> usize {
        (self.max_pdu_send as usize).saturating_sub(6).max(1)
    }

    /// Whether the peer has sent bytes not read yet (see [`DicomStream::bytes_waiting`]).
    pub(crate) fn stream_bytes_waiting(&self) -> bool {
        self.stream.bytes_waiting()
    }

    /// A fresh message ID for a request we send.
    pub fn next_message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// Reads one PDU, waiting at most the idle timeout for each read.
    ///
    /// Cancel-safe: everything read stays in the association's buffer, so a caller may
    /// poll this with a zero timeout (to look for C-CANCEL) and call it again later.
    pub async fn read_pdu(&mut self) -> Result<Received, AssocError> {
        loop {
            if let Some(pdu) = self.parse_buffered()? {
                return Ok(pdu);
            }
            let read =
                tokio::time::timeout(self.idle_timeout, self.stream.read_buf(&mut self.rbuf));
            match read.await {
                Err(_) => return Err(AssocError::Idle(self.idle_timeout)),
                Ok(Ok(0)) => return Err(AssocError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(AssocError::Io(e)),
            }
        }
    }

    /// Takes one complete PDU out of the read buffer, if there is one; makes room for the
    /// rest of a PDU whose header has arrived, after checking its length against our limits.
    fn parse_buffered(&mut self) -> Result<Option<Received>, AssocError> {
        if self.rbuf.len() < 6 {
            self.rbuf.reserve(64 * 1024);
            return Ok(None);
        }
        let pdu_type = self.rbuf[0];
        let length = u32::from_be_bytes([self.rbuf[2], self.rbuf[3], self.rbuf[4], self.rbuf[5]]);
        let limit = if pdu_type == 0x04 {
            self.max_pdu_receive
        } else {
            CONTROL_PDU_LIMIT
        };
        if length > limit {
            return Err(AssocError::PduTooLarge {
                pdu_type,
                length,
                limit,
            });
        }
        let total = 6 + length as usize;
        if self.rbuf.len() < total {
            self.rbuf.reserve(total - self.rbuf.len());
            return Ok(None);
        }
        let frame = self.rbuf.split_to(total).freeze();
        if pdu_type == 0x04 {
            return parse_pdata(frame.slice(6..)).map(|p| Some(Received::Data(p)));
        }
        match dicom_ul::pdu::read_pdu(&frame[..], MAXIMUM_PDU_SIZE, false) {
            Ok(Some(Pdu::Unknown { pdu_type, .. })) => Err(AssocError::Malformed(format!(
                "unknown PDU type {pdu_type:#04x}"
            ))),
            Ok(Some(pdu)) => Ok(Some(Received::Other(pdu))),
            Ok(None) => Err(AssocError::Malformed(format!(
                "PDU type {pdu_type:#04x} is truncated"
            ))),
            Err(e) => Err(AssocError::Malformed(e.to_string())),
        }
    }

    /// Sends one non-P-DATA PDU.
    pub async fn send_pdu(&mut self, pdu: &Pdu) -> Result<(), AssocError> {
        self.wbuf.clear();
        dicom_ul::pdu::write_pdu(&mut self.wbuf, pdu)
            .map_err(|e| AssocError::Encode(e.to_string()))?;
        let stream = &mut self.stream;
        let wbuf = &self.wbuf;
        let write = tokio::time::timeout(self.idle_timeout, async {
            stream.write_all(wbuf).await?;
            // under TLS the record may still sit in the session; plain TCP: a no-op
            stream.flush().await
        });
        write
            .await
            .map_err(|_| AssocError::Timeout("the peer to read what we send"))??;
        Ok(())
    }

    /// Sends one PDV in its own P-DATA-TF PDU. `data` must fit [`Self::max_fragment`].
    pub async fn send_pdv(
        &mut self,
        pc_id: u8,
        is_command: bool,
        is_last: bool,
        data: &[u8],
    ) -> Result<(), AssocError> {
        if data.len() > self.max_fragment() {
            return Err(AssocError::Protocol(format!(
                "fragment of {} bytes exceeds the peer's max PDU {}",
                data.len(),
                self.max_pdu_send
            )));
        }
        let header = pdata_header(pc_id, is_command, is_last, data.len());
        let stream = &mut self.stream;
        let wbuf = &mut self.wbuf;
        let write = async {
            if data.len() <= SMALL_PDV {
                // One write, one TCP segment: with TCP_NODELAY a separate 12-byte header
                // write would go out alone and cost the peer an extra wake-up.
                wbuf.clear();
                wbuf.extend_from_slice(&header);
                wbuf.extend_from_slice(data);
                stream.write_all(wbuf).await?;
                stream.flush().await
            } else {
                stream.write_all_pair(&header, data).await
            }
        };
        tokio::time::timeout(self.idle_timeout, write)
            .await
            .map_err(|_| AssocError::Timeout("the peer to read what we send"))??;
        Ok(())
    }

    /// Answers the peer's A-RELEASE-RQ and closes.
    pub async fn answer_release(mut self) -> Result<(), AssocError> {
        self.send_pdu(&Pdu::ReleaseRP).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Releases an association we hold: A-RELEASE-RQ, then waits for A-RELEASE-RP.
    /// Associations are not released on drop; call this (or [`Self::abort`]).
    pub async fn release(mut self) -> Result<(), AssocError> {
        self.send_pdu(&Pdu::ReleaseRQ).await?;
        loop {
            match self.read_pdu().await? {
                Received::Other(Pdu::ReleaseRP) => break,
                // a release collision: answer it, then our RP is awaited no further
                Received::Other(Pdu::ReleaseRQ) => {
                    self.send_pdu(&Pdu::ReleaseRP).await?;
                    break;
                }
                Received::Other(Pdu::AbortRQ { .. }) => return Err(AssocError::PeerAborted),
                // late data (e.g. a response we no longer wait for) is dropped
                Received::Data(_) => continue,
                Received::Other(other) => {
                    return Err(AssocError::Protocol(format!(
                        "expected A-RELEASE-RP, got {}",
                        describe(&Received::Other(other))
                    )))
                }
            }
        }
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Gives up the association object and returns its socket (tests drive raw bytes).
    #[cfg(test)]
    pub(crate) fn into_stream(self) -> TcpStream {
        match self.stream {
            DicomStream::Plain(s) => s,
            DicomStream::Tls { .. } => panic!("into_stream is for plain test associations"),
        }
    }

    /// Aborts as the service user (we give up on the association).
    pub async fn abort(mut self) {
        let pdu = Pdu::AbortRQ {
            source: AbortRQSource::ServiceUser,
        };
        let _ = self.send_pdu(&pdu).await;
        let _ = self.stream.shutdown().await;
    }

    /// Aborts as the service provider because of `err`, if it calls for an A-ABORT; the
    /// connection is shut down either way. Best effort: the peer may be gone already.
    pub async fn abort_with(&mut self, err: &AssocError) {
        if let Some(reason) = err.abort_reason() {
            let pdu = Pdu::AbortRQ {
                source: AbortRQSource::ServiceProvider(reason),
            };
            // a short bound: a peer that stopped reading must not hold us here
            let saved = self.idle_timeout;
            self.idle_timeout = saved.min(Duration::from_secs(2));
            let _ = self.send_pdu(&pdu).await;
            self.idle_timeout = saved;
        }
        let _ = self.stream.shutdown().await;
    }
}

/// How many bytes we may put in one PDU, given the peer's announced max (0: no limit).
fn effective_send_limit(peer_max: u32) -> u32 {
    if peer_max == 0 {
        UNLIMITED_PEER_CHUNK
    } else {
        // the smallest legal max is far above 12 bytes of header; clamp defensively
        peer_max.clamp(64, UNLIMITED_PEER_CHUNK)
    }
}

/// The 12-byte header of a P-DATA-TF PDU with one PDV of `len` data bytes.
pub fn pdata_header(
    pc_id: u8,
    is_command: bool,
    is_last: bool,
    len: usize,
) -> [u8; PDATA_OVERHEAD] {
    let item_len = (len + 2) as u32;
    let pdu_len = item_len + 4;
    let mut h = [0u8; PDATA_OVERHEAD];
    h[0] = 0x04;
    h[2..6].copy_from_slice(&pdu_len.to_be_bytes());
    h[6..10].copy_from_slice(&item_len.to_be_bytes());
    h[10] = pc_id;
    h[11] = u8::from(is_command) | (u8::from(is_last) << 1);
    h
}

/// Splits the body of a P-DATA-TF PDU into its PDVs, without copying data.
pub fn parse_pdata(mut body: Bytes) -> Result<Vec<Pdv>, AssocError> {
    let mut out = Vec::new();
    if body.is_empty() {
        return Err(AssocError::Malformed("P-DATA-TF without any PDV".into()));
    }
    while body.has_remaining() {
        if body.remaining() < 6 {
            return Err(AssocError::Malformed("truncated PDV item header".into()));
        }
        let item_len = body.get_u32() as usize;
        if item_len < 2 || item_len > body.remaining() {
            return Err(AssocError::Malformed(format!(
                "PDV item length {item_len} does not fit the PDU"
            )));
        }
        let pc_id = body.get_u8();
        let control = body.get_u8();
        let data = body.split_to(item_len - 2);
        out.push(Pdv {
            pc_id,
            is_command: control & 0x01 != 0,
            is_last: control & 0x02 != 0,
            data,
        });
    }
    Ok(out)
}

/// A short name of a received PDU, for logs and errors.
pub fn describe(r: &Received) -> String {
    match r {
        Received::Data(_) => "P-DATA-TF".into(),
        Received::Other(p) => match p {
            Pdu::Unknown { pdu_type, .. } => format!("unknown PDU type {pdu_type:#04x}"),
            Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ".into(),
            Pdu::AssociationAC(_) => "A-ASSOCIATE-AC".into(),
            Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ".into(),
            Pdu::PData { .. } => "P-DATA-TF".into(),
            Pdu::ReleaseRQ => "A-RELEASE-RQ".into(),
            Pdu::ReleaseRP => "A-RELEASE-RP".into(),
            Pdu::AbortRQ { .. } => "A-ABORT".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::{PDataValue, PDataValueType};

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const JPEG_LS: &str = "1.2.840.10008.1.2.4.80";

    fn policy() -> AcceptPolicy {
        AcceptPolicy {
            ae_title: "PACSGRID".into(),
            accept_any_called_ae: false,
            allowed_calling_aes: None,
            max_pdu_length: 65536,
            access: None,
        }
    }

    fn rq(contexts: Vec<(u8, &str, Vec<&str>)>, vars: Vec<UserVariableItem>) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "MODALITY".into(),
            called_ae_title: "PACSGRID".into(),
            application_context_name: APPLICATION_CONTEXT_NAME.into(),
            presentation_contexts: contexts
                .into_iter()
                .map(|(id, a, ts)| PresentationContextProposed {
                    id,
                    abstract_syntax: a.into(),
                    transfer_syntaxes: ts.into_iter().map(String::from).collect(),
                })
                .collect(),
            user_variables: vars,
        }
    }

    #[test]
    fn storage_takes_the_first_known_syntax_in_the_senders_order() {
        let r = rq(
            vec![
                (1, CT, vec!["1.2.3.4", JPEG_LS, uid::EXPLICIT_VR_LE]),
                (3, CT, vec!["9.9"]),
                (
                    5,
                    uid::VERIFICATION,
                    vec![JPEG_LS, uid::EXPLICIT_VR_LE, uid::IMPLICIT_VR_LE],
                ),
                (7, uid::STUDY_ROOT_FIND, vec![uid::EXPLICIT_VR_BE]),
                (9, "1.2.840.10008.5.1.4.31", vec![uid::IMPLICIT_VR_LE]),
            ],
            vec![UserVariableItem::MaxLength(16384)],
        );
        let n = negotiate(&r, &policy()).unwrap();
        assert_eq!(n.peer_max_pdu, 16384);
        let reasons: Vec<_> =
            n.ac.presentation_contexts
                .iter()
                .map(|p| p.reason.clone())
                .collect();
        use PresentationContextResultReason as R;
        assert_eq!(
            reasons,
            vec![
                R::Acceptance,
                R::TransferSyntaxesNotSupported,
                R::Acceptance,
                R::TransferSyntaxesNotSupported,
                R::AbstractSyntaxNotSupported
            ]
        );
        assert_eq!(n.contexts.len(), 2);
        assert_eq!(n.contexts[0].transfer_syntax, JPEG_LS);
        assert_eq!(n.contexts[1].transfer_syntax, uid::EXPLICIT_VR_LE);
        assert!(n
            .ac
            .user_variables
            .contains(&UserVariableItem::MaxLength(65536)));
    }

    #[test]
    fn ae_titles_are_checked() {
        let mut r = rq(
            vec![(1, uid::VERIFICATION, vec![uid::IMPLICIT_VR_LE])],
            vec![],
        );
        r.called_ae_title = "OTHER".into();
        assert_eq!(
            negotiate(&r, &policy()).unwrap_err(),
            RejectReason::CalledAeNotRecognized
        );
        let mut p = policy();
        p.accept_any_called_ae = true;
        assert!(negotiate(&r, &p).is_ok());
        p.allowed_calling_aes = Some(vec!["WS1".into()]);
        assert_eq!(
            negotiate(&r, &p).unwrap_err(),
            RejectReason::CallingAeNotRecognized
        );
        r.calling_ae_title = "WS1".into();
        assert!(negotiate(&r, &p).is_ok());
        r.application_context_name = "1.2.3".into();
        assert_eq!(
            negotiate(&r, &p).unwrap_err(),
            RejectReason::ApplicationContextNotSupported
        );
    }

    #[test]
    fn role_selection_is_answered_for_storage_classes_only() {
        let r = rq(
            vec![
                (1, uid::STUDY_ROOT_GET, vec![uid::IMPLICIT_VR_LE]),
                (3, CT, vec![uid::EXPLICIT_VR_LE]),
            ],
            vec![
                UserVariableItem::ScuScpRoleSelectionSubItem(
                    CT.into(),
                    RequestorRoles {
                        scu: false,
                        scp: true,
                    },
                ),
                UserVariableItem::ScuScpRoleSelectionSubItem(
                    uid::STUDY_ROOT_GET.into(),
                    RequestorRoles {
                        scu: true,
                        scp: true,
                    },
                ),
            ],
        );
        let n = negotiate(&r, &policy()).unwrap();
        let roles: Vec<_> =
            n.ac.user_variables
                .iter()
                .filter(|v| matches!(v, UserVariableItem::ScuScpRoleSelectionSubItem(..)))
                .collect();
        assert_eq!(roles.len(), 1);
        let get = n.contexts.iter().find(|c| c.id == 1).unwrap();
        assert!(get.requestor_scu && !get.requestor_scp);
        let ct = n.contexts.iter().find(|c| c.id == 3).unwrap();
        assert!(!ct.requestor_scu && ct.requestor_scp);
    }

    #[test]
    fn reject_pdus_carry_the_standard_reasons() {
        let rj = RejectReason::LocalLimitExceeded.to_pdu();
        assert_eq!(rj.result, AssociationRJResult::Transient);
        let mut out = Vec::new();
        dicom_ul::pdu::write_pdu(&mut out, &Pdu::AssociationRJ(rj)).unwrap();
        // type 3, length 4, reserved, result 2, source 3, reason 2
        assert_eq!(out, vec![3, 0, 0, 0, 0, 4, 0, 2, 3, 2]);
        let rj = RejectReason::CalledAeNotRecognized.to_pdu();
        let mut out = Vec::new();
        dicom_ul::pdu::write_pdu(&mut out, &Pdu::AssociationRJ(rj)).unwrap();
        assert_eq!(&out[6..], &[0, 1, 1, 7]);
    }

    #[test]
    fn pdata_framing_matches_dicom_ul() {
        for (cmd, last) in [(true, true), (false, false), (false, true)] {
            let data = vec![7u8; 301];
            let mut expected = Vec::new();
            dicom_ul::pdu::write_pdu(
                &mut expected,
                &Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: 5,
                        value_type: if cmd {
                            PDataValueType::Command
                        } else {
                            PDataValueType::Data
                        },
                        is_last: last,
                        data: data.clone(),
                    }],
                },
            )
            .unwrap();
            let mut ours = pdata_header(5, cmd, last, data.len()).to_vec();
            ours.extend_from_slice(&data);
            assert_eq!(ours, expected);
            let pdvs = parse_pdata(Bytes::from(ours).slice(6..)).unwrap();
            assert_eq!(pdvs.len(), 1);
            assert_eq!(
                (pdvs[0].is_command, pdvs[0].is_last, pdvs[0].pc_id),
                (cmd, last, 5)
            );
            assert_eq!(&pdvs[0].data[..], &data[..]);
        }
    }

    #[test]
    fn malformed_pdata_is_refused() {
        assert!(parse_pdata(Bytes::from_static(&[])).is_err());
        assert!(parse_pdata(Bytes::from_static(&[0, 0, 0, 9, 1, 3, 0])).is_err());
        assert!(parse_pdata(Bytes::from_static(&[0, 0, 0, 1, 1, 3])).is_err());
        let two = [0, 0, 0, 3, 1, 0, 0xAA, 0, 0, 0, 2, 1, 2];
        let pdvs = parse_pdata(Bytes::copy_from_slice(&two)).unwrap();
        assert_eq!(pdvs.len(), 2);
        assert!(pdvs[1].data.is_empty() && pdvs[1].is_last);
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn oversize_pdu_is_aborted() {
        let (mut client, server) = pair().await;
        let policy = policy();
        let accept = tokio::spawn(async move {
            Association::accept(
                server,
                &policy,
                false,
                Duration::from_secs(5),
                Duration::from_secs(5),
            )
            .await
        });
        // A-ASSOCIATE-RQ header announcing 2 MiB: larger than any control PDU we take
        client.write_all(&[1, 0, 0, 0x20, 0, 0]).await.unwrap();
        let err = accept.await.unwrap().unwrap_err();
        assert!(
            matches!(err, AcceptError::Assoc(AssocError::PduTooLarge { .. })),
            "{err}"
        );
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf.first(), Some(&0x07), "expected an A-ABORT, got {buf:?}");
    }

    #[tokio::test]
    async fn request_and_accept_agree() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut a = Association::accept(
                s,
                &policy(),
                false,
                Duration::from_secs(5),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            // an oversize P-DATA (our max is 64 KiB) must end in an abort
            let r = a.read_pdu().await;
            assert!(
                matches!(r, Err(AssocError::PduTooLarge { pdu_type: 4, .. })),
                "{r:?}"
            );
            a.abort_with(&r.unwrap_err()).await;
            a.contexts().to_vec()
        });
        let params = RequestParams {
            calling_ae: "SCU".into(),
            called_ae: "PACSGRID".into(),
            contexts: vec![
                ProposedContext {
                    abstract_syntax: CT.into(),
                    transfer_syntaxes: vec![JPEG_LS.into()],
                },
                ProposedContext {
                    abstract_syntax: "1.2.3.4".into(),
                    transfer_syntaxes: vec![uid::IMPLICIT_VR_LE.into()],
                },
            ],
            roles: vec![],
            max_pdu_length: 32768,
            timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        let mut a = Association::request(&addr, &params).await.unwrap();
        assert_eq!(a.contexts().len(), 1);
        assert_eq!(a.contexts()[0].transfer_syntax, JPEG_LS);
        assert_eq!(a.max_pdu_send(), 65536);
        // bypass the fragment check: hand-write a P-DATA of 100 KiB
        let big = vec![0u8; 100 * 1024];
        let header = pdata_header(1, false, true, big.len());
        a.stream.write_all(&header).await.unwrap();
        let _ = a.stream.write_all(&big).await;
        let r = a.read_pdu().await;
        assert!(
            matches!(
                r,
                Ok(Received::Other(Pdu::AbortRQ { .. }))
                    | Err(AssocError::Closed)
                    | Err(AssocError::Io(_))
            ),
            "{r:?}"
        );
        let server_contexts = server.await.unwrap();
        assert_eq!(server_contexts.len(), 1);
    }
}
