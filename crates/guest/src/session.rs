//! [`Session`]: the guest side of the ThinAgent protocol as a sans-IO state
//! machine (in the style of `quinn-proto` / `rustls`).
//!
//! The adapter owns the socket and the clock. It feeds the session with
//! received bytes ([`Session::receive`]), the time ([`Session::on_timeout`] at
//! [`Session::next_deadline`]) and local events ([`Session::start`],
//! [`Session::submit`], [`Session::read_completed`]), and polls the outputs:
//! bytes to send ([`Session::poll_transmit`]) and [`SessionEvent`]s
//! ([`Session::poll_event`]).
//!
//! Guarantees:
//! * every query accepted by [`Session::submit`] gets exactly one
//!   [`SessionEvent::Verdict`], from the host or from the fail mode
//!   (deadline, connection closed);
//! * a query never waits longer than `umcMsgTimeoutMs` ([`Params::umc_msg_timeout`]);
//! * nothing allocates: queries live in `N` fixed slots whose paths are copied
//!   into `PATH` bytes each, and host reads in `R` fixed slots.
//!
//! Not here: reconnecting with back-off. After [`SessionEvent::Closed`] the
//! adapter closes the socket and builds a new `Session` on the next
//! connection (pacing attempts with [`crate::Backoff`]).

use core::time::Duration;

use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, DecodeError, ErrorCode, ErrorMessage,
    EventKind, FileEvent, FileIdentity, FilePath, Goodbye, GoodbyeReason, HANDSHAKE_TIMEOUT_MS,
    Heartbeat, Hello, HelloAck, InlineContent, MAX_FRAME_LEN, MAX_THREAT_NAME_LEN, Message, OsKind,
    PROTOCOL_VERSION, ReadData, ReadOutcome, ReadRequest, StreamDecoder, Verdict,
};

use crate::params::{FailMode, Params};
use crate::time::Instant;

/// Id of one submitted query (the `FileEvent`'s event id on the wire).
pub type QueryId = u64;

/// Room for outgoing control frames and one full `ReadData`.
const TX_CAP: usize = MAX_FRAME_LEN + 1024;

/// Static configuration of a [`Session`].
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig<'a> {
    /// Per-query deadline (`umcMsgTimeoutMs`).
    pub query_timeout: Duration,
    /// What a query gets when it cannot be answered by the host.
    pub fail_mode: FailMode,
    /// Sent in `Hello`.
    pub os: OsKind,
    /// Sent in `Hello`.
    pub agent_version: AgentVersion,
    /// Sent in `Hello`; `READ_CONTENT` is what enables [`SessionEvent::ReadJob`].
    pub capabilities: Capabilities,
    /// Sent in `Hello` (host or VM name, ≤ 255 bytes).
    pub guest_name: &'a str,
}

impl<'a> SessionConfig<'a> {
    /// Configuration from the registry parameters, with `READ_CONTENT`.
    pub fn from_params(params: &Params, os: OsKind, guest_name: &'a str) -> Self {
        Self {
            query_timeout: params.umc_msg_timeout(),
            fail_mode: params.fail_mode,
            os,
            agent_version: AgentVersion {
                major: 0,
                minor: 1,
                patch: 0,
            },
            capabilities: Capabilities::READ_CONTENT,
            guest_name,
        }
    }
}

/// Where a verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictSource {
    /// The host's `Verdict`.
    Host,
    /// The query deadline passed; the fail mode decided.
    Deadline(FailMode),
    /// The session was (or became) closed, or the query could not be sent
    /// (path too long); the fail mode decided.
    Local(FailMode),
}

/// A threat name copied out of a `Verdict` (≤ 255 bytes, no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ThreatName {
    buf: [u8; MAX_THREAT_NAME_LEN],
    len: u8,
}

impl ThreatName {
    const EMPTY: Self = Self {
        buf: [0; MAX_THREAT_NAME_LEN],
        len: 0,
    };

    fn copy_from(name: &str) -> Self {
        // The decoder guarantees ≤ 255 bytes; cut on a char boundary anyway.
        let mut end = name.len().min(MAX_THREAT_NAME_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut t = Self::EMPTY;
        t.buf[..end].copy_from_slice(&name.as_bytes()[..end]);
        t.len = end as u8;
        t
    }

    /// The name; empty when no threat was reported.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl core::fmt::Debug for ThreatName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The answer to one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryVerdict {
    /// The query.
    pub query: QueryId,
    /// Allow / Deny / AllowNoCache.
    pub decision: Decision,
    /// Detected threat, empty if none.
    pub threat: ThreatName,
    /// How long the verdict may be cached; 0 = do not cache (always 0 unless
    /// the host decided).
    pub cache_ttl_secs: u32,
    /// Who decided.
    pub source: VerdictSource,
}

impl QueryVerdict {
    /// Whether the operation may proceed.
    pub fn allows(&self) -> bool {
        !matches!(self.decision, Decision::Deny)
    }

    fn fail(query: QueryId, mode: FailMode, source: VerdictSource) -> Self {
        Self {
            query,
            decision: match mode {
                FailMode::Open => Decision::AllowNoCache,
                FailMode::Closed => Decision::Deny,
            },
            threat: ThreatName::EMPTY,
            cache_ttl_secs: 0,
            source,
        }
    }
}

/// Why the session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Received bytes that end the connection.
    Decode(DecodeError),
    /// The host broke the session rules (§6–§7); the code was sent to it.
    Protocol(ErrorCode),
    /// The host said `Goodbye`.
    PeerGoodbye(GoodbyeReason),
    /// No `HelloAck` within `HANDSHAKE_TIMEOUT_MS`.
    HandshakeTimeout,
    /// No `Pong` within two heartbeat intervals.
    HeartbeatTimeout,
    /// Nothing received for `idle_timeout_ms`.
    IdleTimeout,
    /// [`Session::close`] was called.
    Local,
}

/// An output of the session.
#[expect(
    clippy::large_enum_variant,
    reason = "no allocation: the threat name is copied inline"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// The handshake completed.
    Connected {
        /// Negotiated protocol version.
        version: u16,
    },
    /// A query is answered (exactly once per query).
    Verdict(QueryVerdict),
    /// The host wants file content: read it and call
    /// [`Session::read_completed`] with `read_id`.
    ReadJob {
        /// Id to pass to [`Session::read_completed`].
        read_id: u64,
        /// The query whose file to read.
        query: QueryId,
        /// Byte offset.
        offset: u64,
        /// Bytes wanted.
        length: u32,
    },
    /// The connection is over: send what [`Session::poll_transmit`] still
    /// yields, then close the socket.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Why [`Session::submit`] refused a query (the caller applies its fail mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// All `N` query slots are in use.
    Full,
}

/// Why [`Session::read_completed`] refused an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// No outstanding read has this id (already answered, or session closed).
    UnknownRead,
    /// The outgoing buffer has no room now: drain
    /// [`Session::poll_transmit`] and call again.
    Busy,
}

#[expect(
    clippy::large_enum_variant,
    reason = "no allocation: the threat name is copied inline"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting to be sent (before `HelloAck` or above `max_events_in_flight`).
    Queued,
    /// Sent, waiting for `Verdict`.
    Sent,
    /// Answered; the event is waiting in `poll_event`.
    Answered(QueryVerdict),
}

#[derive(Debug, Clone, Copy)]
struct Slot<const PATH: usize> {
    state: SlotState,
    id: QueryId,
    deadline: Instant,
    kind: EventKind,
    process_id: u32,
    desired_access: u32,
    create_disposition: CreateDisposition,
    file: FileIdentity,
    encoding: u8,
    path: [u8; PATH],
    path_len: usize,
}

#[derive(Debug, Clone, Copy)]
struct ReadSlot {
    read_id: u64,
    query: QueryId,
    offset: u64,
    length: u32,
    delivered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Handshake { deadline: Instant },
    Connected,
    Closed,
}

/// The guest side of one connection. `N` query slots, `PATH` bytes of path
/// per slot, `R` concurrent host reads.
pub struct Session<const N: usize = 64, const PATH: usize = 1024, const R: usize = 4> {
    state: State,
    query_timeout: Duration,
    fail_mode: FailMode,
    os: OsKind,
    agent_version: AgentVersion,
    capabilities: Capabilities,
    guest_name: [u8; 255],
    guest_name_len: usize,
    hello_id: u64,
    next_id: u64,
    ack: Option<HelloAck>,
    connected_pending: bool,
    closed_pending: Option<CloseReason>,
    slots: [Slot<PATH>; N],
    reads: [Option<ReadSlot>; R],
    rx: StreamDecoder<[u8; MAX_FRAME_LEN]>,
    tx: TxBuf,
    now: Instant,
    last_sent: Instant,
    last_recv: Instant,
    ping: Option<(u64, Instant)>,
    /// A `Pong` that found the outgoing buffer full (behind large
    /// `ReadData`s): sent as soon as there is room, never dropped.
    pong_pending: Option<(Heartbeat, u64)>,
}

impl<const N: usize, const PATH: usize, const R: usize> core::fmt::Debug for Session<N, PATH, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<const N: usize, const PATH: usize, const R: usize> Session<N, PATH, R> {
    /// A session for a freshly established connection; call
    /// [`start`](Self::start) to send `Hello`.
    ///
    /// Returns the session by value. With the default sizes that is a few
    /// hundred KiB, which is fine on a user-mode stack but not on a 24 KiB
    /// kernel stack; there, keep the session in a `static` built by
    /// [`Session::new_closed`] and reuse it with [`Session::reset`].
    pub fn new(config: &SessionConfig<'_>) -> Self {
        let mut session = Self::new_closed();
        session.reset(config);
        session
    }

    /// A closed session with no configuration, for `static` and `const`
    /// initialisers: evaluated by the compiler, so it never passes through a
    /// stack. [`Session::reset`] turns it into a fresh session for a new
    /// connection; until then [`Session::start`] does nothing and
    /// [`Session::submit`] answers every query at once by the fail mode
    /// (open).
    #[must_use]
    pub const fn new_closed() -> Self {
        Self {
            state: State::Closed,
            query_timeout: Duration::from_millis(crate::params::DEFAULT_UMC_MSG_TIMEOUT_MS as u64),
            fail_mode: FailMode::Open,
            os: OsKind::Windows,
            agent_version: AgentVersion {
                major: 0,
                minor: 0,
                patch: 0,
            },
            capabilities: Capabilities(0),
            guest_name: [0u8; 255],
            guest_name_len: 0,
            hello_id: 0,
            next_id: 1,
            ack: None,
            connected_pending: false,
            closed_pending: None,
            slots: [Slot {
                state: SlotState::Free,
                id: 0,
                deadline: Instant::ZERO,
                kind: EventKind::Open,
                process_id: 0,
                desired_access: 0,
                create_disposition: CreateDisposition::Open,
                file: FileIdentity {
                    volume_serial: 0,
                    file_id: [0; 16],
                    size: 0,
                    last_write_time: 0,
                },
                encoding: 0,
                path: [0; PATH],
                path_len: 0,
            }; N],
            reads: [None; R],
            rx: StreamDecoder::new_zeroed(),
            tx: TxBuf {
                buf: [0; TX_CAP],
                start: 0,
                end: 0,
            },
            now: Instant::ZERO,
            last_sent: Instant::ZERO,
            last_recv: Instant::ZERO,
            ping: None,
            pong_pending: None,
        }
    }

    /// Makes this session a fresh one for a new connection with `config`,
    /// in place (field by field, slot by slot: no temporary copy of the
    /// session is built). Anything the previous connection left (queued
    /// bytes, unanswered queries, undelivered events) is discarded, so
    /// drain [`Session::poll_event`] first: every query accepted before has
    /// had its verdict event by then once the session is closed.
    pub fn reset(&mut self, config: &SessionConfig<'_>) {
        let name = ThreatName::copy_from(config.guest_name);
        let name_len = usize::from(name.len);
        self.guest_name[..name_len].copy_from_slice(name.as_str().as_bytes());
        self.guest_name[name_len..].fill(0);
        self.guest_name_len = name_len;
        self.state = State::Idle;
        self.query_timeout = config.query_timeout;
        self.fail_mode = config.fail_mode;
        self.os = config.os;
        self.agent_version = config.agent_version;
        self.capabilities = config.capabilities;
        self.hello_id = 0;
        self.next_id = 1;
        self.ack = None;
        self.connected_pending = false;
        self.closed_pending = None;
        for slot in &mut self.slots {
            slot.state = SlotState::Free;
            slot.id = 0;
            slot.path_len = 0;
        }
        for read in &mut self.reads {
            *read = None;
        }
        self.rx.clear();
        self.tx.start = 0;
        self.tx.end = 0;
        self.now = Instant::ZERO;
        self.last_sent = Instant::ZERO;
        self.last_recv = Instant::ZERO;
        self.ping = None;
        self.pong_pending = None;
    }

    /// Whether the handshake completed and the session is not closed.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Queries submitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Queued | SlotState::Sent))
            .count()
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Sends `Hello` and starts the handshake timer.
    pub fn start(&mut self, now: Instant) {
        if self.state != State::Idle {
            return;
        }
        self.now = now;
        self.last_recv = now;
        self.last_sent = now;
        self.hello_id = self.alloc_id();
        let name = core::str::from_utf8(&self.guest_name[..self.guest_name_len]).unwrap_or("");
        let hello_id = self.hello_id;
        let hello = Message::Hello(Hello {
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            os: self.os,
            agent_version: self.agent_version,
            capabilities: self.capabilities,
            max_frame_len: MAX_FRAME_LEN as u32,
            max_reads_in_flight: R.max(1) as u32,
            guest_name: name,
        });
        self.tx.push(&hello, hello_id);
        self.state = State::Handshake {
            deadline: now.saturating_add(Duration::from_millis(HANDSHAKE_TIMEOUT_MS.into())),
        };
    }

    /// Submits a file query. The path is copied; the returned id appears in
    /// exactly one later [`SessionEvent::Verdict`] (already queued when the
    /// session is closed or the path does not fit a slot or a frame).
    pub fn submit(&mut self, event: &FileEvent<'_>, now: Instant) -> Result<QueryId, SubmitError> {
        self.now = now;
        let Some(index) = self.slots.iter().position(|s| s.state == SlotState::Free) else {
            return Err(SubmitError::Full);
        };
        let id = self.alloc_id();
        let bytes = event.path.as_bytes();
        let max_len = self.ack.map_or(MAX_FRAME_LEN, |a| a.max_frame_len as usize);
        let fits = bytes.len() <= PATH && Message::FileEvent(*event).encoded_len() <= max_len;
        let fail = self.fail_mode;
        let slot = &mut self.slots[index];
        slot.id = id;
        slot.deadline = now.saturating_add(self.query_timeout);
        if self.state == State::Closed || !fits {
            slot.state =
                SlotState::Answered(QueryVerdict::fail(id, fail, VerdictSource::Local(fail)));
            return Ok(id);
        }
        slot.kind = event.kind;
        slot.process_id = event.process_id;
        slot.desired_access = event.desired_access;
        slot.create_disposition = event.create_disposition;
        slot.file = event.file;
        slot.encoding = event.path.encoding().to_wire();
        slot.path[..bytes.len()].copy_from_slice(bytes);
        slot.path_len = bytes.len();
        slot.state = SlotState::Queued;
        Ok(id)
    }

    /// Answers the host read `read_id` (from [`SessionEvent::ReadJob`]).
    /// Data beyond the requested length is cut; if the query is no longer
    /// outstanding the host gets `Cancelled`.
    pub fn read_completed(
        &mut self,
        read_id: u64,
        outcome: ReadOutcome<'_>,
        now: Instant,
    ) -> Result<(), ReadError> {
        self.now = now;
        if self.state == State::Closed {
            return Err(ReadError::UnknownRead);
        }
        let Some(pos) = self
            .reads
            .iter()
            .position(|r| r.is_some_and(|r| r.read_id == read_id && r.delivered))
        else {
            return Err(ReadError::UnknownRead);
        };
        let Some(read) = self.reads[pos] else {
            return Err(ReadError::UnknownRead);
        };
        let live = self
            .slots
            .iter()
            .any(|s| s.id == read.query && s.state == SlotState::Sent);
        let len = read.length as usize;
        let outcome = match outcome {
            _ if !live => ReadOutcome::Cancelled,
            ReadOutcome::Data(d) => ReadOutcome::Data(&d[..d.len().min(len)]),
            ReadOutcome::EndOfFile(d) => ReadOutcome::EndOfFile(&d[..d.len().min(len)]),
            other => other,
        };
        let msg = Message::ReadData(ReadData {
            event_id: read.query,
            offset: read.offset,
            outcome,
        });
        if !self.push_frame(&msg, read_id) {
            return Err(ReadError::Busy);
        }
        self.reads[pos] = None;
        Ok(())
    }

    /// Feeds received bytes.
    pub fn receive(&mut self, mut bytes: &[u8], now: Instant) {
        self.now = now;
        if matches!(self.state, State::Closed | State::Idle) {
            return;
        }
        self.last_recv = now;
        while !bytes.is_empty() && self.state != State::Closed {
            let n = self.rx.push(bytes);
            bytes = &bytes[n..];
            self.process_rx();
            if n == 0 {
                break;
            }
        }
    }

    fn process_rx(&mut self) {
        while self.state != State::Closed {
            // Copy the frame's essentials out of the decoder's buffer first.
            let step = match self.rx.next_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => Rx::Frame(frame.request_id, Incoming::from(&frame.message)),
                Err(e) => Rx::Err(e),
            };
            match step {
                // §9: an Error frame is never answered with an Error; any
                // other Error echoes the offending frame's request id when
                // its header passed the magic and length checks, else 0.
                Rx::Err(e) if e.is_fatal() => {
                    let error = (!e.concerns_error_frame())
                        .then(|| (e.request_id().unwrap_or(0), e.error_code()));
                    self.close_fatal(error, CloseReason::Decode(e));
                }
                Rx::Err(e) => {
                    if !e.concerns_error_frame() {
                        let msg = Message::Error(ErrorMessage {
                            code: e.error_code(),
                            text: "",
                        });
                        self.push_frame(&msg, e.request_id().unwrap_or(0));
                    }
                }
                Rx::Frame(id, incoming) => self.on_frame(id, incoming),
            }
        }
    }

    fn on_frame(&mut self, id: u64, msg: Incoming) {
        let handshaking = matches!(self.state, State::Handshake { .. });
        match msg {
            Incoming::HelloAck(ack) if handshaking && id == self.hello_id => {
                // The Hello offered exactly PROTOCOL_VERSION; a host that
                // picks anything else speaks a protocol we cannot (§4).
                if ack.version != PROTOCOL_VERSION {
                    self.fatal(
                        id,
                        ErrorCode::VersionUnsupported,
                        CloseReason::Protocol(ErrorCode::VersionUnsupported),
                    );
                    return;
                }
                self.ack = Some(ack);
                self.rx.set_max_frame_len(MAX_FRAME_LEN);
                self.state = State::Connected;
                self.connected_pending = true;
            }
            Incoming::Goodbye(reason) => {
                self.tx.start = 0;
                self.tx.end = 0;
                self.close_with(CloseReason::PeerGoodbye(reason));
            }
            Incoming::Error => {}
            _ if handshaking => {
                self.fatal(
                    id,
                    ErrorCode::UnexpectedMessage,
                    CloseReason::Protocol(ErrorCode::UnexpectedMessage),
                );
            }
            // §7: a request's id is never 0, whatever its type.
            Incoming::ReadRequest(_) | Incoming::Ping(_) if id == 0 => {
                self.fatal(
                    0,
                    ErrorCode::UnexpectedMessage,
                    CloseReason::Protocol(ErrorCode::UnexpectedMessage),
                );
            }
            Incoming::Verdict(v) => {
                // Unknown or timed-out ids are ignored (§7).
                if let Some(slot) = self
                    .slots
                    .iter_mut()
                    .find(|s| s.id == id && s.state == SlotState::Sent)
                {
                    slot.state = SlotState::Answered(QueryVerdict { query: id, ..v });
                    for r in self.reads.iter_mut() {
                        if r.is_some_and(|r| r.query == id) {
                            *r = None;
                        }
                    }
                }
            }
            Incoming::ReadRequest(req) => self.on_read_request(id, req),
            Incoming::Ping(hb) => {
                if !self.push_frame(&Message::Pong(hb), id) {
                    // Only the newest probe matters to the host.
                    self.pong_pending = Some((hb, id));
                }
            }
            Incoming::Pong(hb) => {
                // Matched by request id and nonce (both were the Ping's
                // nonce); anything else is an unmatched response, ignored.
                if self
                    .ping
                    .is_some_and(|(nonce, _)| nonce == hb.nonce && nonce == id)
                {
                    self.ping = None;
                }
            }
            Incoming::HelloAck(_) | Incoming::Unexpected => {
                self.fatal(
                    id,
                    ErrorCode::UnexpectedMessage,
                    CloseReason::Protocol(ErrorCode::UnexpectedMessage),
                );
            }
        }
    }

    fn on_read_request(&mut self, read_id: u64, req: ReadRequest) {
        let chunk = self.ack.map_or(0, |a| a.max_read_chunk);
        if req.length > chunk || !self.capabilities.contains(Capabilities::READ_CONTENT) {
            let code = if req.length > chunk {
                ErrorCode::LimitExceeded
            } else {
                ErrorCode::UnexpectedMessage
            };
            self.fatal(read_id, code, CloseReason::Protocol(code));
            return;
        }
        if self
            .reads
            .iter()
            .any(|r| r.is_some_and(|r| r.read_id == read_id))
        {
            self.fatal(
                read_id,
                ErrorCode::UnexpectedMessage,
                CloseReason::Protocol(ErrorCode::UnexpectedMessage),
            );
            return;
        }
        let live = self
            .slots
            .iter()
            .any(|s| s.id == req.event_id && s.state == SlotState::Sent);
        if !live {
            let msg = Message::ReadData(ReadData {
                event_id: req.event_id,
                offset: req.offset,
                outcome: ReadOutcome::Cancelled,
            });
            self.push_frame(&msg, read_id);
            return;
        }
        let Some(free) = self.reads.iter_mut().find(|r| r.is_none()) else {
            self.fatal(
                read_id,
                ErrorCode::LimitExceeded,
                CloseReason::Protocol(ErrorCode::LimitExceeded),
            );
            return;
        };
        *free = Some(ReadSlot {
            read_id,
            query: req.event_id,
            offset: req.offset,
            length: req.length,
            delivered: false,
        });
    }

    /// Sends `Goodbye(Shutdown)` and closes; pending queries get the fail mode.
    pub fn close(&mut self, now: Instant) {
        self.now = now;
        if self.state == State::Closed {
            return;
        }
        if self.state != State::Idle {
            self.push_frame(
                &Message::Goodbye(Goodbye {
                    reason: GoodbyeReason::Shutdown,
                }),
                0,
            );
        }
        self.close_with(CloseReason::Local);
    }

    /// A session rule broken by the frame with `request_id` (§9): the
    /// `Error` echoes that id, which is 0 only when the frame carried 0.
    fn fatal(&mut self, request_id: u64, code: ErrorCode, reason: CloseReason) {
        self.close_fatal(Some((request_id, code)), reason);
    }

    /// Sends `Error` (unless `error` is `None`: the offending frame was
    /// itself an `Error`) and `Goodbye(ProtocolError)`, and closes.
    fn close_fatal(&mut self, error: Option<(u64, ErrorCode)>, reason: CloseReason) {
        if let Some((request_id, code)) = error {
            self.push_frame(&Message::Error(ErrorMessage { code, text: "" }), request_id);
        }
        self.push_frame(
            &Message::Goodbye(Goodbye {
                reason: GoodbyeReason::ProtocolError,
            }),
            0,
        );
        self.close_with(reason);
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.closed_pending = Some(reason);
        let fail = self.fail_mode;
        for slot in self.slots.iter_mut() {
            if matches!(slot.state, SlotState::Queued | SlotState::Sent) {
                slot.state = SlotState::Answered(QueryVerdict::fail(
                    slot.id,
                    fail,
                    VerdictSource::Local(fail),
                ));
            }
        }
        self.reads = [None; R];
    }

    fn heartbeat(&self) -> Option<Duration> {
        self.ack
            .map(|a| a.heartbeat_interval_ms)
            .filter(|ms| *ms != 0)
            .map(|ms| Duration::from_millis(ms.into()))
    }

    fn idle(&self) -> Option<Duration> {
        self.ack
            .map(|a| a.idle_timeout_ms)
            .filter(|ms| *ms != 0)
            .map(|ms| Duration::from_millis(ms.into()))
    }

    /// The earliest time [`on_timeout`](Self::on_timeout) has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let queries = self
            .slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Queued | SlotState::Sent))
            .map(|s| s.deadline);
        let timers = match self.state {
            State::Idle | State::Closed => [None, None, None],
            State::Handshake { deadline } => [Some(deadline), None, None],
            State::Connected => {
                let hb = self.heartbeat();
                [
                    match (hb, self.ping) {
                        (Some(hb), Some((_, at))) => Some(at.saturating_add(hb * 2)),
                        (Some(hb), None) => Some(self.last_sent.saturating_add(hb)),
                        (None, _) => None,
                    },
                    self.idle().map(|d| self.last_recv.saturating_add(d)),
                    None,
                ]
            }
        };
        queries.chain(timers.into_iter().flatten()).min()
    }

    /// Applies every timer that expired at `now`.
    pub fn on_timeout(&mut self, now: Instant) {
        self.now = now;
        let fail = self.fail_mode;
        for slot in self.slots.iter_mut() {
            if matches!(slot.state, SlotState::Queued | SlotState::Sent)
                && now.has_reached(slot.deadline)
            {
                slot.state = SlotState::Answered(QueryVerdict::fail(
                    slot.id,
                    fail,
                    VerdictSource::Deadline(fail),
                ));
            }
        }
        match self.state {
            State::Handshake { deadline } if now.has_reached(deadline) => {
                self.close_with(CloseReason::HandshakeTimeout);
            }
            State::Connected => {
                if let Some(idle) = self.idle()
                    && now.has_reached(self.last_recv.saturating_add(idle))
                {
                    self.goodbye_timeout(CloseReason::IdleTimeout);
                    return;
                }
                if let Some(hb) = self.heartbeat() {
                    match self.ping {
                        Some((_, at)) if now.has_reached(at.saturating_add(hb * 2)) => {
                            self.goodbye_timeout(CloseReason::HeartbeatTimeout);
                        }
                        None if now.has_reached(self.last_sent.saturating_add(hb)) => {
                            let nonce = self.alloc_id();
                            let ping = Message::Ping(Heartbeat {
                                nonce,
                                timestamp_ms: now.as_millis(),
                            });
                            if self.push_frame(&ping, nonce) {
                                self.ping = Some((nonce, now));
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn goodbye_timeout(&mut self, reason: CloseReason) {
        self.push_frame(
            &Message::Goodbye(Goodbye {
                reason: GoodbyeReason::Timeout,
            }),
            0,
        );
        self.close_with(reason);
    }

    /// Encodes `msg` at the end of the outgoing buffer; false if it has no room.
    fn push_frame(&mut self, msg: &Message<'_>, request_id: u64) -> bool {
        self.tx.push(msg, request_id)
    }

    /// Copies bytes to send into `out` and returns how many (`None`: nothing
    /// to send now). Frames may be split across calls.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        if let Some((hb, id)) = self.pong_pending
            && self.state != State::Closed
            && self.tx.push(&Message::Pong(hb), id)
        {
            self.pong_pending = None;
        }
        if self.tx.start == self.tx.end && self.state == State::Connected {
            self.queue_file_events();
        }
        let pending = &self.tx.buf[self.tx.start..self.tx.end];
        let n = pending.len().min(out.len());
        if n == 0 {
            return None;
        }
        out[..n].copy_from_slice(&pending[..n]);
        self.tx.start += n;
        self.last_sent = self.now;
        Some(n)
    }

    fn queue_file_events(&mut self) {
        let limit = self.ack.map_or(0, |a| a.max_events_in_flight as usize);
        let mut sent = self
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Sent)
            .count();
        for i in 0..N {
            if sent >= limit {
                return;
            }
            if self.slots[i].state != SlotState::Queued {
                continue;
            }
            let s = &self.slots[i];
            let bytes = &s.path[..s.path_len];
            let path = match s.encoding {
                1 => match core::str::from_utf8(bytes) {
                    Ok(p) => FilePath::Utf8(p),
                    Err(_) => FilePath::Bytes(bytes),
                },
                2 => FilePath::Utf16Le(bytes),
                _ => FilePath::Bytes(bytes),
            };
            let msg = Message::FileEvent(FileEvent {
                kind: s.kind,
                process_id: s.process_id,
                desired_access: s.desired_access,
                create_disposition: s.create_disposition,
                file: s.file,
                path,
                content: InlineContent::NONE,
            });
            let id = s.id;
            if !self.tx.push(&msg, id) {
                return;
            }
            self.slots[i].state = SlotState::Sent;
            sent += 1;
        }
    }

    /// The next output event, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        if self.connected_pending {
            self.connected_pending = false;
            let version = self.ack.map_or(PROTOCOL_VERSION, |a| a.version);
            return Some(SessionEvent::Connected { version });
        }
        for slot in self.slots.iter_mut() {
            if let SlotState::Answered(v) = slot.state {
                slot.state = SlotState::Free;
                return Some(SessionEvent::Verdict(v));
            }
        }
        for r in self.reads.iter_mut().flatten() {
            if !r.delivered {
                r.delivered = true;
                return Some(SessionEvent::ReadJob {
                    read_id: r.read_id,
                    query: r.query,
                    offset: r.offset,
                    length: r.length,
                });
            }
        }
        self.closed_pending
            .take()
            .map(|reason| SessionEvent::Closed { reason })
    }
}

/// What the session keeps of a received message once the decoder's buffer is
/// released.
#[expect(
    clippy::large_enum_variant,
    reason = "no allocation: the threat name is copied inline"
)]
#[derive(Clone, Copy)]
enum Incoming {
    HelloAck(HelloAck),
    Verdict(QueryVerdict),
    ReadRequest(ReadRequest),
    Ping(Heartbeat),
    Pong(Heartbeat),
    Error,
    Goodbye(GoodbyeReason),
    /// A message the host must not send (`Hello`, `FileEvent`, `ReadData`).
    Unexpected,
}

impl From<&Message<'_>> for Incoming {
    fn from(msg: &Message<'_>) -> Self {
        match *msg {
            Message::HelloAck(a) => Self::HelloAck(a),
            Message::Verdict(Verdict {
                decision,
                cache_ttl_secs,
                threat_name,
            }) => Self::Verdict(QueryVerdict {
                query: 0,
                decision,
                threat: ThreatName::copy_from(threat_name),
                cache_ttl_secs,
                source: VerdictSource::Host,
            }),
            Message::ReadRequest(r) => Self::ReadRequest(r),
            Message::Ping(h) => Self::Ping(h),
            Message::Pong(h) => Self::Pong(h),
            Message::Error(_) => Self::Error,
            Message::Goodbye(g) => Self::Goodbye(g.reason),
            Message::Hello(_) | Message::FileEvent(_) | Message::ReadData(_) => Self::Unexpected,
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "no allocation: the threat name is copied inline"
)]
enum Rx {
    Frame(u64, Incoming),
    Err(DecodeError),
}

/// Outgoing bytes not yet handed to [`Session::poll_transmit`].
struct TxBuf {
    buf: [u8; TX_CAP],
    start: usize,
    end: usize,
}

impl TxBuf {
    fn push(&mut self, msg: &Message<'_>, request_id: u64) -> bool {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if TX_CAP - self.end < msg.encoded_len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match msg.encode(request_id, &mut self.buf[self.end..]) {
            Ok(n) => {
                self.end += n;
                true
            }
            Err(_) => false,
        }
    }
}

/// Whether the answer to a content read is `EndOfFile` rather than `Data`
/// (§5.6), for the adapters to share one rule.
///
/// The adapter read `len` bytes at `offset`. `hit_end` says the read itself
/// met the end of the file (a zero-byte or short read, `STATUS_END_OF_FILE`).
/// `size_now` is the file's real size taken **after** the read (`fstat`,
/// `FileStandardInformation`), if known: a full read that ends exactly there
/// is the file's last bytes, so `EndOfFile` carries them and the host needs
/// no second `ReadRequest` to find the end. The size is the one at read
/// time, not the one sent in the `FileEvent`, so a file that grew since is
/// still read to its (new) end.
///
/// Only an exact match counts: a size that falls short of what was just read
/// is not trusted (pseudo files report 0 or a page, a truncation raced the
/// read), and the answer stays `Data` so the host probes on, as it would
/// without the size. An empty read is always `EndOfFile` (`Data` must carry
/// bytes).
#[must_use]
pub fn read_reaches_end(offset: u64, len: usize, hit_end: bool, size_now: Option<u64>) -> bool {
    hit_end
        || len == 0
        || size_now.is_some_and(|size| {
            u64::try_from(len)
                .ok()
                .and_then(|len| offset.checked_add(len))
                == Some(size)
        })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::boxed::Box;
    use std::vec::Vec;

    use thinagent_protocol::{Decoded, decode_frame};

    use super::*;

    type S = Session<4, 64, 2>;

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    fn config(fail_mode: FailMode) -> SessionConfig<'static> {
        SessionConfig {
            query_timeout: Duration::from_millis(2000),
            fail_mode,
            os: OsKind::Linux,
            agent_version: AgentVersion {
                major: 1,
                minor: 0,
                patch: 0,
            },
            capabilities: Capabilities::READ_CONTENT,
            guest_name: "vm1",
        }
    }

    fn ack() -> HelloAck {
        HelloAck {
            version: 1,
            max_frame_len: MAX_FRAME_LEN as u32,
            max_events_in_flight: 8,
            max_read_chunk: 4096,
            heartbeat_interval_ms: 10_000,
            idle_timeout_ms: 30_000,
            query_timeout_ms: 1000,
            max_inline_len: 0,
        }
    }

    fn enc(msg: Message<'_>, id: u64) -> Vec<u8> {
        let mut buf = std::vec![0u8; MAX_FRAME_LEN];
        let n = msg.encode(id, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// Everything the session wants to send, split into frames.
    fn sent(s: &mut S) -> Vec<Vec<u8>> {
        let mut bytes = Vec::new();
        let mut out = [0u8; 1000];
        while let Some(n) = s.poll_transmit(&mut out) {
            bytes.extend_from_slice(&out[..n]);
        }
        let mut frames = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match decode_frame(rest).unwrap() {
                Decoded::Frame { consumed, .. } => {
                    frames.push(rest[..consumed].to_vec());
                    rest = &rest[consumed..];
                }
                Decoded::Incomplete { .. } => panic!("partial frame"),
            }
        }
        frames
    }

    fn frame(b: &[u8]) -> (u64, Message<'_>) {
        match decode_frame(b).unwrap() {
            Decoded::Frame { frame, .. } => (frame.request_id, frame.message),
            Decoded::Incomplete { .. } => panic!("partial"),
        }
    }

    fn events(s: &mut S) -> Vec<SessionEvent> {
        core::iter::from_fn(|| s.poll_event()).collect()
    }

    fn open_event(path: &str) -> FileEvent<'_> {
        FileEvent {
            kind: EventKind::Open,
            process_id: 42,
            desired_access: 1,
            create_disposition: CreateDisposition::Open,
            file: FileIdentity::default(),
            path: FilePath::Utf8(path),
            content: thinagent_protocol::InlineContent::NONE,
        }
    }

    /// A session past the handshake.
    fn connected(fail: FailMode) -> Box<S> {
        let mut s = Box::new(S::new(&config(fail)));
        s.start(ms(0));
        let frames = sent(&mut s);
        assert_eq!(frames.len(), 1);
        let (hello_id, msg) = frame(&frames[0]);
        assert!(
            matches!(msg, Message::Hello(h) if h.guest_name == "vm1" && h.max_reads_in_flight == 2)
        );
        s.receive(&enc(Message::HelloAck(ack()), hello_id), ms(1));
        assert_eq!(events(&mut s), [SessionEvent::Connected { version: 1 }]);
        s
    }

    fn submit_sent(s: &mut S, now: u64) -> QueryId {
        let q = s.submit(&open_event("/tmp/a"), ms(now)).unwrap();
        let frames = sent(s);
        assert_eq!(frames.len(), 1);
        let (id, msg) = frame(&frames[0]);
        assert_eq!(id, q);
        assert!(matches!(msg, Message::FileEvent(e) if e.path == FilePath::Utf8("/tmp/a")));
        q
    }

    fn verdict(decision: Decision, ttl: u32, threat: &str, id: u64) -> Vec<u8> {
        enc(
            Message::Verdict(Verdict {
                decision,
                cache_ttl_secs: ttl,
                threat_name: threat,
            }),
            id,
        )
    }

    #[test]
    fn a_static_closed_session_is_reset_in_place_for_each_connection() {
        // The kernel driver's pattern: one session in static storage,
        // evaluated by the compiler (never built on a stack), reset for
        // every new connection. The static proves `new_closed` is const;
        // the test then works on a heap copy to stay free of `unsafe`.
        static CLOSED: S = S::new_closed();
        assert!(CLOSED.is_closed());
        let mut s: Box<S> = Box::new(S::new_closed());
        assert!(s.is_closed());
        // Closed: start does nothing, a query is answered at once (open).
        s.start(ms(0));
        assert!(sent(&mut s).is_empty());
        let q0 = s.submit(&open_event("/x"), ms(0)).unwrap();
        assert!(matches!(
            events(&mut s)[..],
            [SessionEvent::Verdict(v)] if v.query == q0 && v.allows()
        ));

        for round in 0..3u64 {
            s.reset(&config(FailMode::Closed));
            assert!(!s.is_closed() && !s.is_connected());
            s.start(ms(10 * round));
            let hello = sent(&mut s);
            assert_eq!(hello.len(), 1, "round {round}: one Hello");
            let (hello_id, msg) = frame(&hello[0]);
            assert!(matches!(msg, Message::Hello(h) if h.guest_name == "vm1"));
            // Leave garbage behind on purpose: a half frame in the decoder
            // and a query in flight, then reset must forget both.
            s.receive(&enc(Message::HelloAck(ack()), hello_id), ms(10 * round + 1));
            assert!(s.is_connected());
            let _ = events(&mut s);
            let q = submit_sent(&mut s, 10 * round + 2);
            s.receive(
                &verdict(Decision::Deny, 0, "T", q)[..10],
                ms(10 * round + 3),
            );
            assert_eq!(s.in_flight(), 1);
        }
        s.reset(&config(FailMode::Open));
        assert_eq!(s.in_flight(), 0);
        s.start(ms(100));
        let hello = sent(&mut s);
        let (hello_id, _) = frame(&hello[0]);
        s.receive(&enc(Message::HelloAck(ack()), hello_id), ms(101));
        assert_eq!(events(&mut s), [SessionEvent::Connected { version: 1 }]);
        let q = submit_sent(&mut s, 102);
        s.receive(&verdict(Decision::Deny, 0, "Eicar", q), ms(103));
        assert!(matches!(
            events(&mut s)[..],
            [SessionEvent::Verdict(v)] if v.query == q && !v.allows()
        ));
    }

    #[test]
    fn handshake_then_queued_event_is_sent() {
        let mut s = Box::new(S::new(&config(FailMode::Open)));
        s.start(ms(0));
        let hello = sent(&mut s);
        // Submitted before HelloAck: held back until connected.
        let q = s.submit(&open_event("/a"), ms(1)).unwrap();
        assert!(sent(&mut s).is_empty());
        let (hello_id, _) = frame(&hello[0]);
        s.receive(&enc(Message::HelloAck(ack()), hello_id), ms(2));
        assert!(s.is_connected());
        let frames = sent(&mut s);
        assert_eq!(frame(&frames[0]).0, q);
    }

    #[test]
    fn hello_ack_with_a_version_not_offered_closes() {
        let mut s = Box::new(S::new(&config(FailMode::Closed)));
        s.start(ms(0));
        let hello = sent(&mut s);
        let (hello_id, _) = frame(&hello[0]);
        let bad = HelloAck {
            version: PROTOCOL_VERSION + 1,
            ..ack()
        };
        s.receive(&enc(Message::HelloAck(bad), hello_id), ms(1));
        assert!(!s.is_connected());
        let frames = sent(&mut s);
        assert!(
            matches!(frame(&frames[0]).1, Message::Error(e) if e.code == ErrorCode::VersionUnsupported),
            "the host is told why"
        );
        assert_eq!(
            events(&mut s),
            [SessionEvent::Closed {
                reason: CloseReason::Protocol(ErrorCode::VersionUnsupported)
            }]
        );
    }

    #[test]
    fn handshake_timeout_closes_and_fails_pending() {
        let mut s = Box::new(S::new(&config(FailMode::Closed)));
        s.start(ms(0));
        sent(&mut s);
        assert_eq!(s.next_deadline(), Some(ms(5000)));
        s.on_timeout(ms(5000));
        assert_eq!(
            events(&mut s),
            [SessionEvent::Closed {
                reason: CloseReason::HandshakeTimeout
            }]
        );
    }

    #[test]
    fn verdict_allow_and_deny_from_host() {
        let mut s = connected(FailMode::Open);
        let a = submit_sent(&mut s, 10);
        let b = submit_sent(&mut s, 11);
        let mut bytes = verdict(Decision::Allow, 60, "", a);
        bytes.extend(verdict(Decision::Deny, 0, "EICAR-Test", b));
        // Byte by byte: the decoder reassembles.
        for byte in &bytes {
            s.receive(core::slice::from_ref(byte), ms(20));
        }
        let ev = events(&mut s);
        assert_eq!(ev.len(), 2);
        let SessionEvent::Verdict(va) = ev[0] else {
            panic!()
        };
        let SessionEvent::Verdict(vb) = ev[1] else {
            panic!()
        };
        assert_eq!(
            (va.query, va.decision, va.cache_ttl_secs, va.source),
            (a, Decision::Allow, 60, VerdictSource::Host)
        );
        assert!(va.allows());
        assert_eq!(
            (vb.query, vb.decision, vb.threat.as_str()),
            (b, Decision::Deny, "EICAR-Test")
        );
        assert!(!vb.allows());
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn deadline_fail_open_then_late_verdict_ignored() {
        let mut s = connected(FailMode::Open);
        let q = submit_sent(&mut s, 100);
        assert_eq!(s.next_deadline(), Some(ms(2100)));
        s.on_timeout(ms(2099));
        assert!(events(&mut s).is_empty());
        s.on_timeout(ms(2100));
        let ev = events(&mut s);
        assert_eq!(ev.len(), 1);
        let SessionEvent::Verdict(v) = ev[0] else {
            panic!()
        };
        assert_eq!(
            (v.query, v.decision, v.source),
            (
                q,
                Decision::AllowNoCache,
                VerdictSource::Deadline(FailMode::Open)
            )
        );
        s.receive(&verdict(Decision::Deny, 0, "", q), ms(2200));
        assert!(events(&mut s).is_empty());
        assert!(s.is_connected());
    }

    #[test]
    fn deadline_fail_closed() {
        let mut s = connected(FailMode::Closed);
        let q = submit_sent(&mut s, 0);
        s.on_timeout(ms(2000));
        let ev = events(&mut s);
        assert!(
            matches!(ev[..], [SessionEvent::Verdict(v)] if v.query == q && v.decision == Decision::Deny && v.source == VerdictSource::Deadline(FailMode::Closed))
        );
    }

    #[test]
    fn read_reaching_the_real_size_is_end_of_file() {
        // Short or zero-byte read: the read itself met the end.
        assert!(read_reaches_end(0, 23, true, None));
        assert!(read_reaches_end(4096, 0, false, None));
        // A full read whose end is the file's size (the host asked for the
        // stated size exactly): the last bytes, EndOfFile, no second read.
        assert!(read_reaches_end(0, 23, false, Some(23)));
        assert!(read_reaches_end(65_480, 100, false, Some(65_580)));
        // The file goes on (or grew since the FileEvent): Data.
        assert!(!read_reaches_end(0, 23, false, Some(24)));
        assert!(!read_reaches_end(0, 23, false, None));
        // A size below what was read (pseudo file, truncation racing the
        // read) is not trusted: Data, the host probes on.
        assert!(!read_reaches_end(0, 4096, false, Some(0)));
        assert!(!read_reaches_end(100, 23, false, Some(110)));
        assert!(!read_reaches_end(u64::MAX, 1, false, Some(u64::MAX)));
    }

    #[test]
    fn read_request_becomes_job_and_read_data() {
        let mut s = connected(FailMode::Open);
        let q = submit_sent(&mut s, 0);
        let req = ReadRequest {
            event_id: q,
            offset: 0,
            length: 4,
        };
        s.receive(&enc(Message::ReadRequest(req), 77), ms(5));
        let ev = events(&mut s);
        assert_eq!(
            ev,
            [SessionEvent::ReadJob {
                read_id: 77,
                query: q,
                offset: 0,
                length: 4
            }]
        );
        // Longer data than requested is cut to `length`.
        s.read_completed(77, ReadOutcome::Data(b"abcdef"), ms(6))
            .unwrap();
        let frames = sent(&mut s);
        let (id, msg) = frame(&frames[0]);
        assert_eq!(id, 77);
        let Message::ReadData(d) = msg else { panic!() };
        assert_eq!((d.event_id, d.offset, d.data()), (q, 0, &b"abcd"[..]));
        assert_eq!(
            s.read_completed(77, ReadOutcome::Cancelled, ms(7)),
            Err(ReadError::UnknownRead)
        );
    }

    #[test]
    fn read_request_for_unknown_event_is_cancelled() {
        let mut s = connected(FailMode::Open);
        let req = ReadRequest {
            event_id: 999,
            offset: 0,
            length: 4,
        };
        s.receive(&enc(Message::ReadRequest(req), 5), ms(5));
        assert!(events(&mut s).is_empty());
        let frames = sent(&mut s);
        let (id, msg) = frame(&frames[0]);
        assert_eq!(id, 5);
        assert!(matches!(msg, Message::ReadData(d) if d.outcome == ReadOutcome::Cancelled));
    }

    #[test]
    fn garbage_closes_and_answers_pending() {
        let mut s = connected(FailMode::Closed);
        let a = submit_sent(&mut s, 0);
        let b = submit_sent(&mut s, 0);
        s.receive(b"GARBAGE!", ms(10));
        assert!(s.is_closed());
        let ev = events(&mut s);
        assert_eq!(ev.len(), 3);
        for (e, q) in ev[..2].iter().zip([a, b]) {
            assert!(
                matches!(e, SessionEvent::Verdict(v) if v.query == q && v.decision == Decision::Deny && v.source == VerdictSource::Local(FailMode::Closed))
            );
        }
        assert!(matches!(
            ev[2],
            SessionEvent::Closed {
                reason: CloseReason::Decode(DecodeError::BadMagic { .. })
            }
        ));
        // Error(MalformedFrame) + Goodbye(ProtocolError) go out.
        let frames = sent(&mut s);
        assert!(
            matches!(frame(&frames[0]).1, Message::Error(e) if e.code == ErrorCode::MalformedFrame)
        );
        assert!(
            matches!(frame(&frames[1]).1, Message::Goodbye(g) if g.reason == GoodbyeReason::ProtocolError)
        );
        // Closed: a new query is answered at once.
        let c = s.submit(&open_event("/x"), ms(11)).unwrap();
        assert!(
            matches!(events(&mut s)[..], [SessionEvent::Verdict(v)] if v.query == c && v.decision == Decision::Deny)
        );
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn heartbeat_ping_pong_and_timeout() {
        let mut s = connected(FailMode::Open);
        assert_eq!(s.next_deadline(), Some(ms(10_000)));
        s.on_timeout(ms(10_000));
        let frames = sent(&mut s);
        let (id, Message::Ping(hb)) = frame(&frames[0]) else {
            panic!()
        };
        s.receive(&enc(Message::Pong(hb), id), ms(10_010));
        s.on_timeout(ms(20_000));
        let frames = sent(&mut s);
        assert!(matches!(frame(&frames[0]).1, Message::Ping(_)));
        // No Pong for two intervals.
        s.on_timeout(ms(40_000));
        assert!(s.is_closed());
        assert!(matches!(
            events(&mut s)[..],
            [SessionEvent::Closed {
                reason: CloseReason::HeartbeatTimeout
            }]
        ));
    }

    #[test]
    fn pong_waits_for_room_behind_large_read_data() {
        const BIG: u32 = (MAX_FRAME_LEN - 56) as u32;
        let mut s = Box::new(S::new(&config(FailMode::Open)));
        s.start(ms(0));
        let (hello_id, _) = frame(&sent(&mut s)[0]);
        let ack = HelloAck {
            max_read_chunk: BIG,
            ..ack()
        };
        s.receive(&enc(Message::HelloAck(ack), hello_id), ms(1));
        events(&mut s);
        let q = submit_sent(&mut s, 2);
        // Two reads whose ReadData frames leave less room than a Pong needs.
        let small = (TX_CAP - MAX_FRAME_LEN - 56 - 30) as u32;
        for (read_id, offset, length) in [(70, 0, BIG), (71, u64::from(BIG), small)] {
            let req = ReadRequest {
                event_id: q,
                offset,
                length,
            };
            s.receive(&enc(Message::ReadRequest(req), read_id), ms(3));
        }
        events(&mut s);
        let data = std::vec![7u8; BIG as usize];
        s.read_completed(70, ReadOutcome::Data(&data), ms(4))
            .unwrap();
        s.read_completed(71, ReadOutcome::Data(&data[..small as usize]), ms(4))
            .unwrap();
        let hb = Heartbeat {
            nonce: 5,
            timestamp_ms: 6,
        };
        s.receive(&enc(Message::Ping(hb), 90), ms(5));
        let frames = sent(&mut s);
        let ids: Vec<u64> = frames.iter().map(|f| frame(f).0).collect();
        assert_eq!(ids, [70, 71, 90], "the Pong follows once there is room");
        assert_eq!(frame(&frames[2]).1, Message::Pong(hb));
    }

    #[test]
    fn host_ping_is_answered() {
        let mut s = connected(FailMode::Open);
        let hb = Heartbeat {
            nonce: 9,
            timestamp_ms: 123,
        };
        s.receive(&enc(Message::Ping(hb), 31), ms(5));
        let frames = sent(&mut s);
        assert_eq!(frame(&frames[0]), (31, Message::Pong(hb)));
    }

    #[test]
    fn full_table_and_long_path() {
        let mut s = connected(FailMode::Open);
        let long = "/p".repeat(40);
        let q = s.submit(&open_event(&long), ms(0)).unwrap();
        assert!(
            matches!(events(&mut s)[..], [SessionEvent::Verdict(v)] if v.query == q && v.source == VerdictSource::Local(FailMode::Open))
        );
        for _ in 0..4 {
            s.submit(&open_event("/a"), ms(0)).unwrap();
        }
        assert_eq!(s.submit(&open_event("/a"), ms(0)), Err(SubmitError::Full));
    }

    #[test]
    fn goodbye_from_host_closes_silently() {
        let mut s = connected(FailMode::Open);
        let q = submit_sent(&mut s, 0);
        s.receive(
            &enc(
                Message::Goodbye(Goodbye {
                    reason: GoodbyeReason::Restarting,
                }),
                0,
            ),
            ms(1),
        );
        assert!(sent(&mut s).is_empty());
        let ev = events(&mut s);
        assert!(matches!(ev[0], SessionEvent::Verdict(v) if v.query == q));
        assert_eq!(
            ev[1],
            SessionEvent::Closed {
                reason: CloseReason::PeerGoodbye(GoodbyeReason::Restarting)
            }
        );
    }
}
