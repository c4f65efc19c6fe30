//! DIMSE messages (PS3.7): command sets, fragment reassembly and data set transfer.
//!
//! A command set is group 0000 in implicit VR little endian with its CommandGroupLength,
//! encoded and decoded with dicom-object. A command may arrive split over several PDVs
//! and PDUs; the fragments are joined up to the last-fragment bit. Data sets are *not*
//! reassembled here: a receiver takes them PDV by PDV ([`Association::next_data_fragment`])
//! so that a 2 GB object never needs 2 GB of memory, and a sender streams them from any
//! `AsyncRead` in fragments sized to the peer's max PDU.

use crate::association::{AssocError, Association, Pdv, Received};
use dicom_core::header::Header;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::pdu::Pdu;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a poll waits for an event whose bytes the kernel already holds: enough for the
/// runtime to notice them; reached only if they are not a whole PDU yet.
const WAITING_GRACE: Duration = Duration::from_millis(50);

/// Command Field values (PS3.7 E.1).
pub mod field {
    /// C-STORE-RQ.
    pub const C_STORE_RQ: u16 = 0x0001;
    /// C-STORE-RSP.
    pub const C_STORE_RSP: u16 = 0x8001;
    /// C-GET-RQ.
    pub const C_GET_RQ: u16 = 0x0010;
    /// C-GET-RSP.
    pub const C_GET_RSP: u16 = 0x8010;
    /// C-FIND-RQ.
    pub const C_FIND_RQ: u16 = 0x0020;
    /// C-FIND-RSP.
    pub const C_FIND_RSP: u16 = 0x8020;
    /// C-MOVE-RQ.
    pub const C_MOVE_RQ: u16 = 0x0021;
    /// C-MOVE-RSP.
    pub const C_MOVE_RSP: u16 = 0x8021;
    /// C-ECHO-RQ.
    pub const C_ECHO_RQ: u16 = 0x0030;
    /// C-ECHO-RSP.
    pub const C_ECHO_RSP: u16 = 0x8030;
    /// C-CANCEL-RQ.
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
}

/// CommandDataSetType value meaning "no data set follows".
pub const NO_DATASET: u16 = 0x0101;
/// CommandDataSetType value we send when a data set follows (any other value means one).
pub const HAS_DATASET: u16 = 0x0000;
/// Priority MEDIUM.
pub const PRIORITY_MEDIUM: u16 = 0x0000;

/// Command sets larger than this are refused: real ones are a few hundred bytes, and the
/// reassembly buffer must stay bounded.
pub const MAX_COMMAND_SET: usize = 64 * 1024;

/// The longest ErrorComment (0000,0902) allowed (LO).
pub const MAX_ERROR_COMMENT: usize = 64;

/// A decoded DIMSE command set.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    obj: InMemDicomObject,
}

fn implicit_le() -> dicom_encoding::TransferSyntax {
    dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()
}

impl Command {
    /// Starts building a command with this Command Field.
    pub fn builder(command_field: u16) -> CommandBuilder {
        CommandBuilder {
            elements: vec![DataElement::new(
                tags::COMMAND_FIELD,
                VR::US,
                PrimitiveValue::from(command_field),
            )],
            has_dataset: false,
        }
    }

    /// Starts a response to `request`: MessageIDBeingRespondedTo, AffectedSOPClassUID and
    /// (when the request had one) AffectedSOPInstanceUID are copied, Status set.
    pub fn response_to(request: &Command, command_field: u16, status: u16) -> CommandBuilder {
        let mut b = Command::builder(command_field)
            .u16(
                tags::MESSAGE_ID_BEING_RESPONDED_TO,
                request.message_id().unwrap_or(0),
            )
            .u16(tags::STATUS, status);
        if let Some(class) = request.affected_sop_class() {
            b = b.uid(tags::AFFECTED_SOP_CLASS_UID, &class);
        }
        if let Some(inst) = request.string(tags::AFFECTED_SOP_INSTANCE_UID) {
            b = b.uid(tags::AFFECTED_SOP_INSTANCE_UID, &inst);
        }
        b
    }

    /// Decodes a reassembled command set (implicit VR little endian).
    pub fn decode(bytes: &[u8]) -> Result<Command, AssocError> {
        let obj = InMemDicomObject::read_dataset_with_ts(bytes, &implicit_le())
            .map_err(|e| AssocError::Protocol(format!("command set does not parse: {e}")))?;
        if obj.iter().any(|e| e.tag().group() != 0x0000) {
            return Err(AssocError::Protocol(
                "command set holds elements outside group 0000".into(),
            ));
        }
        let cmd = Command { obj };
        if cmd.field().is_none() {
            return Err(AssocError::Protocol(
                "command set without CommandField".into(),
            ));
        }
        Ok(cmd)
    }

    /// Encodes the command set (implicit VR little endian, with CommandGroupLength).
    pub fn encode(&self) -> Result<Vec<u8>, AssocError> {
        let mut out = Vec::with_capacity(256);
        self.obj
            .write_dataset_with_ts(&mut out, &implicit_le())
            .map_err(|e| AssocError::Encode(format!("command set: {e}")))?;
        Ok(out)
    }

    /// The Command Field.
    pub fn field(&self) -> Option<u16> {
        self.u16(tags::COMMAND_FIELD)
    }

    /// An unsigned short element.
    // `get`, not `element_opt`: dicom-object answers an absent tag there by building an
    // error that captures a stack trace, 12 % of a C-FIND's CPU in a profile.
    pub fn u16(&self, tag: Tag) -> Option<u16> {
        self.obj.get(tag)?.to_int::<u16>().ok()
    }

    /// A text or UID element, padding removed; `None` when absent or empty.
    pub fn string(&self, tag: Tag) -> Option<String> {
        let e = self.obj.get(tag)?;
        let s = e.to_str().ok()?;
        let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
        (!s.is_empty()).then(|| s.to_string())
    }

    /// MessageID.
    pub fn message_id(&self) -> Option<u16> {
        self.u16(tags::MESSAGE_ID)
    }

    /// MessageIDBeingRespondedTo.
    pub fn responded_to(&self) -> Option<u16> {
        self.u16(tags::MESSAGE_ID_BEING_RESPONDED_TO)
    }

    /// Status (responses).
    pub fn status(&self) -> Option<u16> {
        self.u16(tags::STATUS)
    }

    /// AffectedSOPClassUID.
    pub fn affected_sop_class(&self) -> Option<String> {
        self.string(tags::AFFECTED_SOP_CLASS_UID)
    }

    /// Whether a data set follows this command.
    pub fn has_dataset(&self) -> bool {
        self.u16(tags::COMMAND_DATA_SET_TYPE)
            .is_some_and(|t| t != NO_DATASET)
    }
}

/// Builds a [`Command`]; CommandGroupLength is computed at the end.
#[derive(Debug, Clone)]
pub struct CommandBuilder {
    elements: Vec<DataElement<InMemDicomObject>>,
    has_dataset: bool,
}

impl CommandBuilder {
    /// Sets an unsigned short element (MessageID, Status, counts, ...).
    pub fn u16(mut self, tag: Tag, value: u16) -> Self {
        self.elements
            .push(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
        self
    }

    /// Sets a UID element.
    pub fn uid(mut self, tag: Tag, value: &str) -> Self {
        self.elements
            .push(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
        self
    }

    /// Sets an AE title element (MoveDestination, MoveOriginatorApplicationEntityTitle).
    pub fn ae(mut self, tag: Tag, value: &str) -> Self {
        self.elements.push(DataElement::new(
            tag,
            VR::AE,
            PrimitiveValue::from(value.trim()),
        ));
        self
    }

    /// Sets ErrorComment, cut to the 64 characters an LO allows (at a character boundary).
    pub fn error_comment(mut self, comment: &str) -> Self {
        let text = truncate_chars(comment, MAX_ERROR_COMMENT);
        self.elements.push(DataElement::new(
            tags::ERROR_COMMENT,
            VR::LO,
            PrimitiveValue::from(text),
        ));
        self
    }

    /// Declares that a data set follows.
    pub fn with_dataset(mut self, yes: bool) -> Self {
        self.has_dataset = yes;
        self
    }

    /// Finishes the command set.
    pub fn build(mut self) -> Command {
        let dst = if self.has_dataset {
            HAS_DATASET
        } else {
            NO_DATASET
        };
        self.elements.push(DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(dst),
        ));
        Command {
            obj: InMemDicomObject::command_from_element_iter(self.elements),
        }
    }
}

/// Cuts a string to at most `max` bytes of ASCII-safe text: non-ASCII characters are
/// replaced with '?' because an ErrorComment is LO in the default character set.
pub fn truncate_chars(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// What arrives on an association, message-wise.
#[derive(Debug)]
pub enum Event {
    /// A complete command set.
    Command {
        /// The presentation context it came on.
        pc_id: u8,
        /// The command.
        command: Command,
    },
    /// One data set fragment.
    Data(Pdv),
    /// The peer asks to release (A-RELEASE-RQ).
    Release,
    /// The peer aborted (A-ABORT).
    Aborted,
}

impl Association {
    /// Waits for the next message event: a command (reassembled), a data fragment, a
    /// release request or an abort. Other PDUs are protocol violations.
    ///
    /// Cancel-safe, like [`Association::read_pdu`].
    pub async fn next_event(&mut self) -> Result<Event, AssocError> {
        if let Some(ev) = self.deferred.pop_front() {
            return Ok(ev);
        }
        loop {
            while let Some(pdv) = self.pending.pop_front() {
                if pdv.is_command {
                    let (pc, buf) = self
                        .command_buf
                        .get_or_insert_with(|| (pdv.pc_id, Vec::new()));
                    if *pc != pdv.pc_id {
                        return Err(AssocError::Protocol(format!(
                            "command fragments on contexts {pc} and {}",
                            pdv.pc_id
                        )));
                    }
                    if buf.len() + pdv.data.len() > MAX_COMMAND_SET {
                        return Err(AssocError::Protocol(format!(
                            "command set larger than {MAX_COMMAND_SET} bytes"
                        )));
                    }
                    buf.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        if let Some((pc_id, bytes)) = self.command_buf.take() {
                            let command = Command::decode(&bytes)?;
                            return Ok(Event::Command { pc_id, command });
                        }
                    }
                } else {
                    if self.command_buf.is_some() {
                        return Err(AssocError::Protocol(
                            "data set fragment before the command's last fragment".into(),
                        ));
                    }
                    return Ok(Event::Data(pdv));
                }
            }
            match self.read_pdu().await? {
                Received::Data(pdvs) => self.pending.extend(pdvs),
                Received::Other(Pdu::ReleaseRQ) => return Ok(Event::Release),
                Received::Other(Pdu::AbortRQ { .. }) => return Ok(Event::Aborted),
                other => {
                    return Err(AssocError::Protocol(format!(
                        "unexpected {}",
                        crate::association::describe(&other)
                    )))
                }
            }
        }
    }

    /// Returns an event if one is already available, without waiting.
    pub async fn poll_event(&mut self) -> Result<Option<Event>, AssocError> {
        // Poll exactly once. A zero `tokio::time::timeout` is not "no wait": its timer only
        // fires on the driver's next millisecond tick, which cost ~1 ms per C-FIND answer and
        // per C-GET sub-operation. `next_event` is cancel-safe, so dropping it is fine.
        match futures::FutureExt::now_or_never(self.next_event()) {
            Some(r) => r.map(Some),
            // The peer sent something the runtime has not reported yet (a C-CANCEL while
            // answers stream out): waiting a moment lets the driver see it.
            None if self.stream_bytes_waiting() => self.event_within(WAITING_GRACE).await,
            None => Ok(None),
        }
    }

    /// Returns an event that arrives within `grace`, or `None`. Unlike [`Self::poll_event`]
    /// this also sees bytes already in the socket that the reactor has not reported yet.
    pub async fn event_within(&mut self, grace: Duration) -> Result<Option<Event>, AssocError> {
        match tokio::time::timeout(grace, self.next_event()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Checks, without waiting, whether the peer cancelled request `message_id`
    /// (C-CANCEL-RQ). Other events read meanwhile are kept for later; an abort ends
    /// the operation at once.
    pub async fn cancelled(&mut self, message_id: u16) -> Result<bool, AssocError> {
        let mut found = false;
        while let Some(ev) = self.poll_event().await? {
            match ev {
                Event::Command { command, .. }
                    if command.field() == Some(field::C_CANCEL_RQ)
                        && command.responded_to() == Some(message_id) =>
                {
                    found = true;
                }
                // a cancel of something else that is no longer running: nothing to do
                Event::Command { command, .. } if command.field() == Some(field::C_CANCEL_RQ) => {}
                Event::Aborted => return Err(AssocError::PeerAborted),
                other => {
                    self.deferred.push_back(other);
                    break;
                }
            }
        }
        Ok(found)
    }

    /// The next fragment of the data set that is arriving on `pc_id`; anything else
    /// (a command, a release, another context) is a protocol violation.
    pub async fn next_data_fragment(&mut self, pc_id: u8) -> Result<Pdv, AssocError> {
        match self.next_event().await? {
            Event::Data(pdv) if pdv.pc_id == pc_id => Ok(pdv),
            Event::Data(pdv) => Err(AssocError::Protocol(format!(
                "data set fragment on context {} while receiving on {pc_id}",
                pdv.pc_id
            ))),
            Event::Command { .. } => Err(AssocError::Protocol(
                "command received before the data set's last fragment".into(),
            )),
            Event::Release => Err(AssocError::Protocol(
                "A-RELEASE-RQ before the data set's last fragment".into(),
            )),
            Event::Aborted => Err(AssocError::PeerAborted),
        }
    }

    /// Reads a whole (small) data set such as a query identifier, refusing more than
    /// `limit` bytes.
    pub async fn read_small_dataset(
        &mut self,
        pc_id: u8,
        limit: usize,
    ) -> Result<Vec<u8>, AssocError> {
        let mut out = Vec::new();
        loop {
            let pdv = self.next_data_fragment(pc_id).await?;
            if out.len() + pdv.data.len() > limit {
                return Err(AssocError::Protocol(format!(
                    "identifier larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&pdv.data);
            if pdv.is_last {
                return Ok(out);
            }
        }
    }

    /// Reads and discards the rest of a data set (after a refusal, so that the response
    /// comes after the data set as the protocol requires). Returns the bytes skipped.
    pub async fn skip_dataset(&mut self, pc_id: u8) -> Result<u64, AssocError> {
        let mut n = 0u64;
        loop {
            let pdv = self.next_data_fragment(pc_id).await?;
            n += pdv.data.len() as u64;
            if pdv.is_last {
                return Ok(n);
            }
        }
    }

    /// Sends bytes as fragments no larger than the peer accepts; the last one is marked.
    async fn send_fragments(
        &mut self,
        pc_id: u8,
        is_command: bool,
        data: &[u8],
    ) -> Result<(), AssocError> {
        let max = self.max_fragment();
        if data.is_empty() {
            return self.send_pdv(pc_id, is_command, true, &[]).await;
        }
        let mut chunks = data.chunks(max).peekable();
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.send_pdv(pc_id, is_command, last, chunk).await?;
        }
        Ok(())
    }

    /// Sends a command set.
    pub async fn send_command(&mut self, pc_id: u8, command: &Command) -> Result<(), AssocError> {
        let bytes = command.encode()?;
        self.send_fragments(pc_id, true, &bytes).await
    }

    /// Sends a data set held in memory (identifiers, transcoded objects).
    pub async fn send_dataset(&mut self, pc_id: u8, data: &[u8]) -> Result<(), AssocError> {
        self.send_fragments(pc_id, false, data).await
    }

    /// Streams a data set from `reader` in fragments sized to the peer's max PDU, reading
    /// one fragment ahead to know which is the last. Returns the bytes sent.
    ///
    /// A read failure midway leaves a data set that cannot be completed; the caller must
    /// abort the association ([`SendError::Source`]).
    pub async fn send_dataset_stream<R>(
        &mut self,
        pc_id: u8,
        reader: &mut R,
    ) -> Result<u64, SendError>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let chunk = self.max_fragment();
        let [mut cur, mut next] = std::mem::take(&mut self.send_bufs);
        cur.resize(chunk, 0);
        next.resize(chunk, 0);
        let sent = self
            .send_stream_through(pc_id, reader, &mut cur, &mut next)
            .await;
        // Kept only after a success: a failed send ends the association anyway.
        if sent.is_ok() {
            self.send_bufs = [cur, next];
        }
        sent
    }

    /// The body of [`Self::send_dataset_stream`], with its two fragment buffers (each
    /// exactly one fragment long).
    async fn send_stream_through<R>(
        &mut self,
        pc_id: u8,
        reader: &mut R,
        cur: &mut Vec<u8>,
        next: &mut Vec<u8>,
    ) -> Result<u64, SendError>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let chunk = cur.len();
        let mut cur_len = fill(reader, cur).await.map_err(SendError::Source)?;
        let mut sent = 0u64;
        loop {
            if cur_len < chunk {
                self.send_pdv(pc_id, false, true, &cur[..cur_len]).await?;
                return Ok(sent + cur_len as u64);
            }
            let next_len = fill(reader, next).await.map_err(SendError::Source)?;
            let last = next_len == 0;
            self.send_pdv(pc_id, false, last, &cur[..cur_len]).await?;
            sent += cur_len as u64;
            if last {
                return Ok(sent);
            }
            std::mem::swap(cur, next);
            cur_len = next_len;
        }
    }
}

/// Why streaming a data set out failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Reading the source (blob, file) failed.
    #[error("reading the data set to send: {0}")]
    Source(std::io::Error),
    /// The association failed.
    #[error(transparent)]
    Assoc(#[from] AssocError),
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
async fn fill<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = reader.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::association::{parse_pdata, pdata_header};
    use bytes::Bytes;

    fn store_rq() -> Command {
        Command::builder(field::C_STORE_RQ)
            .u16(tags::MESSAGE_ID, 7)
            .uid(tags::AFFECTED_SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.2")
            .uid(tags::AFFECTED_SOP_INSTANCE_UID, "1.2.3.4.5")
            .u16(tags::PRIORITY, PRIORITY_MEDIUM)
            .with_dataset(true)
            .build()
    }

    #[test]
    fn command_set_round_trip() {
        let cmd = store_rq();
        let bytes = cmd.encode().unwrap();
        // CommandGroupLength first, and equal to the bytes that follow it
        assert_eq!(&bytes[0..4], &[0, 0, 0, 0]);
        let gl = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(gl, bytes.len() - 12);
        let back = Command::decode(&bytes).unwrap();
        assert_eq!(back.field(), Some(field::C_STORE_RQ));
        assert_eq!(back.message_id(), Some(7));
        assert_eq!(
            back.affected_sop_class().as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.2")
        );
        assert_eq!(
            back.string(tags::AFFECTED_SOP_INSTANCE_UID).as_deref(),
            Some("1.2.3.4.5")
        );
        assert!(back.has_dataset());

        let rsp = Command::response_to(&back, field::C_STORE_RSP, 0xB000)
            .error_comment(&format!("conflict — {}", "x".repeat(100)))
            .build();
        let rsp = Command::decode(&rsp.encode().unwrap()).unwrap();
        assert_eq!(rsp.responded_to(), Some(7));
        assert_eq!(rsp.status(), Some(0xB000));
        assert!(!rsp.has_dataset());
        let comment = rsp.string(tags::ERROR_COMMENT).unwrap();
        assert!(
            comment.len() <= 64 && comment.starts_with("conflict ? x"),
            "{comment}"
        );
    }

    #[test]
    fn garbage_command_sets_are_refused() {
        assert!(Command::decode(&[1, 2, 3]).is_err());
        // a data set element (0010,0010) is not a command
        let bad = [0x10, 0, 0x10, 0, 2, 0, 0, 0, b'A', b' '];
        assert!(Command::decode(&bad).is_err());
    }

    async fn pair() -> (Association, tokio::net::TcpStream) {
        use crate::association::{AcceptPolicy, ProposedContext, RequestParams};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move { l.accept().await.unwrap().0 });
        let params = RequestParams {
            calling_ae: "A".into(),
            called_ae: "B".into(),
            contexts: vec![ProposedContext {
                abstract_syntax: pacsgrid_dicom::uid::VERIFICATION.into(),
                transfer_syntaxes: vec![pacsgrid_dicom::uid::IMPLICIT_VR_LE.into()],
            }],
            roles: vec![],
            max_pdu_length: 16384,
            timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        let req = tokio::spawn(async move { Association::request(&addr, &params).await.unwrap() });
        let server = accept.await.unwrap();
        let policy = AcceptPolicy {
            ae_title: "B".into(),
            accept_any_called_ae: false,
            allowed_calling_aes: None,
            max_pdu_length: 16384,
            access: None,
        };
        // negotiate on the server side by hand, then hand the raw stream to the test
        let acc = tokio::spawn(async move {
            Association::accept(
                server,
                &policy,
                false,
                Duration::from_secs(5),
                Duration::from_secs(5),
            )
            .await
            .unwrap()
        });
        let client = req.await.unwrap();
        let _server = acc.await.unwrap();
        // the test drives the requestor's association and writes raw bytes as the acceptor
        (client, _server.into_stream())
    }

    #[tokio::test]
    async fn command_split_over_pdvs_and_pdus_is_reassembled() {
        use tokio::io::AsyncWriteExt;
        let (mut assoc, mut raw) = pair().await;
        let bytes = store_rq().encode().unwrap();
        let (a, b) = bytes.split_at(10);
        let (b, c) = b.split_at(20);
        // first PDU: two command fragments; second PDU: last fragment plus a data fragment
        let mut pdu1 = Vec::new();
        for part in [a, b] {
            pdu1.extend_from_slice(&((part.len() + 2) as u32).to_be_bytes());
            pdu1.extend_from_slice(&[1, 0x01]);
            pdu1.extend_from_slice(part);
        }
        let mut framed = vec![4, 0];
        framed.extend_from_slice(&(pdu1.len() as u32).to_be_bytes());
        framed.extend_from_slice(&pdu1);
        raw.write_all(&framed).await.unwrap();
        raw.write_all(&pdata_header(1, true, true, c.len()))
            .await
            .unwrap();
        raw.write_all(c).await.unwrap();
        raw.write_all(&pdata_header(1, false, true, 4))
            .await
            .unwrap();
        raw.write_all(b"DATA").await.unwrap();
        match assoc.next_event().await.unwrap() {
            Event::Command { pc_id, command } => {
                assert_eq!(pc_id, 1);
                assert_eq!(command, Command::decode(&bytes).unwrap());
            }
            other => panic!("{other:?}"),
        }
        let pdv = assoc.next_data_fragment(1).await.unwrap();
        assert!(pdv.is_last);
        assert_eq!(&pdv.data[..], b"DATA");
    }

    #[tokio::test]
    async fn data_streams_in_fragments_sized_to_the_peer() {
        use tokio::io::AsyncReadExt;
        let (mut assoc, mut raw) = pair().await;
        let max = assoc.max_fragment();
        let data: Vec<u8> = (0..(max * 2 + 100)).map(|i| i as u8).collect();
        let sent = assoc
            .send_dataset_stream(1, &mut std::io::Cursor::new(data.clone()))
            .await
            .unwrap();
        assert_eq!(sent as usize, data.len());
        // exactly-full last chunk: the read-ahead must still mark it last
        // sent through the first message's buffers, which must carry nothing over
        let exact: Vec<u8> = vec![9; max];
        assoc
            .send_dataset_stream(1, &mut std::io::Cursor::new(exact.clone()))
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut lasts = Vec::new();
        while lasts.iter().filter(|l| **l).count() < 2 {
            let mut h = [0u8; 6];
            raw.read_exact(&mut h).await.unwrap();
            let len = u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize;
            assert!(len <= 16384);
            let mut body = vec![0u8; len];
            raw.read_exact(&mut body).await.unwrap();
            for pdv in parse_pdata(Bytes::from(body)).unwrap() {
                got.extend_from_slice(&pdv.data);
                lasts.push(pdv.is_last);
            }
        }
        assert_eq!(lasts, vec![false, false, true, true]);
        assert_eq!(&got[..data.len()], &data[..]);
        assert_eq!(&got[data.len()..], &exact[..]);
    }
}
