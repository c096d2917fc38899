//! The inputs and outputs of [`HostSession`](super::HostSession): limits,
//! guest and query descriptions, events and errors.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_EVENTS_IN_FLIGHT, DEFAULT_MAX_READS_IN_FLIGHT,
    DEFAULT_QUERY_TIMEOUT_MS, Decision, DecodeError, ErrorCode, EventKind, FileIdentity, FilePath,
    GoodbyeReason, HANDSHAKE_TIMEOUT_MS, HEADER_LEN, Health, MAX_FRAME_LEN, MAX_INLINE_LEN,
    MAX_READ_CHUNK, MIN_FRAME_LEN, MessageType, OsError, OsKind, READ_DATA_FIXED_LEN,
    max_inline_len_for,
};

/// The protocol's event id of a `FileEvent` (its header request id).
pub type EventId = u64;

/// Verdicts the session sends on its own, when no scan result can be used.
/// Always sent with `cache_ttl_secs` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyVerdicts {
    /// The file is larger than [`SessionLimits::max_file_size`].
    pub too_large: Decision,
    /// The per-query scan budget ([`SessionLimits::query_timeout`]) expired.
    pub timeout: Decision,
    /// Content could not be read, an engine failed, the guest cannot send
    /// content, or the session is closing with the query unanswered.
    pub error: Decision,
}

impl Default for PolicyVerdicts {
    /// Fail open, never cached: `AllowNoCache` everywhere (the guest's own
    /// default fail mode is also open).
    fn default() -> Self {
        Self {
            too_large: Decision::AllowNoCache,
            timeout: Decision::AllowNoCache,
            error: Decision::AllowNoCache,
        }
    }
}

/// Per-session limits and timers. [`Default`] gives safe values; call
/// [`validate`](Self::validate) on anything read from a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Largest frame the host accepts (announced in `HelloAck`),
    /// [`MIN_FRAME_LEN`]..=[`MAX_FRAME_LEN`].
    pub max_frame_len: u32,
    /// Most `FileEvent`s a guest may have unanswered (announced in
    /// `HelloAck`); one more is a fatal `LimitExceeded`.
    pub max_events_in_flight: u32,
    /// Largest `ReadRequest.length` (also capped by the frame limit and
    /// [`MAX_READ_CHUNK`]).
    pub max_read_chunk: u32,
    /// Most content bytes a guest may send inline in one `FileEvent`
    /// (protocol version 2, §5.3.1; announced in `HelloAck` as
    /// `max_inline_len` to a version-2 guest with `INLINE_CONTENT`, else 0).
    /// 0 turns inline content off. Capped by the frame limit at
    /// [`max_inline_len_for`]`(max_frame_len)` ([`MAX_INLINE_LEN`] with
    /// the largest frame), which is also the default.
    pub max_inline_len: u32,
    /// Most `ReadRequest`s the host has outstanding (also capped by the
    /// guest's `Hello.max_reads_in_flight`).
    pub max_reads_in_flight: u32,
    /// Most content bytes requested from or held for this guest at once:
    /// outstanding read lengths + received bytes not yet
    /// [`consumed`](super::HostSession::consumed).
    pub max_bytes_in_flight: u64,
    /// Files larger than this get [`PolicyVerdicts::too_large`] without
    /// content transfer (or as soon as the content turns out larger).
    pub max_file_size: u64,
    /// Scan budget per `FileEvent` (announced as `query_timeout_ms`); when it
    /// expires the query gets [`PolicyVerdicts::timeout`].
    pub query_timeout: Duration,
    /// Send `Ping` after this much send silence (zero = never).
    pub heartbeat_interval: Duration,
    /// Close with `Goodbye(Timeout)` after this long without a whole received
    /// frame (zero = never). Must exceed a nonzero heartbeat interval.
    pub idle_timeout: Duration,
    /// Close with `Goodbye(Timeout)` when no `Hello` arrives this long after
    /// the connection was accepted.
    pub handshake_timeout: Duration,
    /// What the session answers on its own.
    pub policy: PolicyVerdicts,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_frame_len: MAX_FRAME_LEN as u32,
            max_events_in_flight: DEFAULT_MAX_EVENTS_IN_FLIGHT,
            max_read_chunk: MAX_READ_CHUNK,
            max_inline_len: MAX_INLINE_LEN,
            max_reads_in_flight: DEFAULT_MAX_READS_IN_FLIGHT,
            max_bytes_in_flight: 4 << 20,
            max_file_size: 64 << 20,
            // Below the guest's default deadline (2 000 ms), so the host's
            // policy verdict reaches the guest before it gives up.
            query_timeout: Duration::from_millis(u64::from(DEFAULT_QUERY_TIMEOUT_MS) * 3 / 4),
            heartbeat_interval: Duration::from_millis(DEFAULT_HEARTBEAT_INTERVAL_MS.into()),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS.into()),
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS.into()),
            policy: PolicyVerdicts::default(),
        }
    }
}

/// A [`SessionLimits`] value that cannot be used, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// `max_frame_len` is outside the protocol's range.
    #[error(
        "max_frame_len {0} is outside {MIN_FRAME_LEN}..={MAX_FRAME_LEN}: pick a value in that range"
    )]
    FrameLen(u32),
    /// A count or size that must be at least 1 is 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A timeout does not fit the protocol's 32-bit millisecond fields, or
    /// is zero where zero is not allowed.
    #[error("{0} must be between 1 ms and {max} ms", max = u32::MAX)]
    Timeout(&'static str),
    /// The idle timeout does not exceed the heartbeat interval.
    #[error(
        "idle_timeout ({idle:?}) must be longer than heartbeat_interval ({heartbeat:?}), or one of them 0"
    )]
    IdleNotAboveHeartbeat {
        /// Configured idle timeout.
        idle: Duration,
        /// Configured heartbeat interval.
        heartbeat: Duration,
    },
}

fn millis_u32(d: Duration) -> Option<u32> {
    u32::try_from(d.as_millis()).ok()
}

impl SessionLimits {
    /// Checks every field against the protocol's ranges.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let frame = usize::try_from(self.max_frame_len).unwrap_or(usize::MAX);
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame) {
            return Err(LimitsError::FrameLen(self.max_frame_len));
        }
        for (value, name) in [
            (u64::from(self.max_events_in_flight), "max_events_in_flight"),
            (u64::from(self.max_read_chunk), "max_read_chunk"),
            (u64::from(self.max_reads_in_flight), "max_reads_in_flight"),
            (self.max_bytes_in_flight, "max_bytes_in_flight"),
        ] {
            if value == 0 {
                return Err(LimitsError::Zero(name));
            }
        }
        if millis_u32(self.query_timeout).is_none_or(|ms| ms == 0) {
            return Err(LimitsError::Timeout("query_timeout"));
        }
        if millis_u32(self.handshake_timeout).is_none_or(|ms| ms == 0) {
            return Err(LimitsError::Timeout("handshake_timeout"));
        }
        let Some(hb) = millis_u32(self.heartbeat_interval) else {
            return Err(LimitsError::Timeout("heartbeat_interval"));
        };
        let Some(idle) = millis_u32(self.idle_timeout) else {
            return Err(LimitsError::Timeout("idle_timeout"));
        };
        if hb != 0 && idle != 0 && idle <= hb {
            return Err(LimitsError::IdleNotAboveHeartbeat {
                idle: self.idle_timeout,
                heartbeat: self.heartbeat_interval,
            });
        }
        Ok(())
    }

    /// The same limits forced into the protocol's ranges (what a session
    /// actually uses, whatever it was given).
    pub fn normalized(mut self) -> Self {
        self.max_frame_len = self
            .max_frame_len
            .clamp(MIN_FRAME_LEN as u32, MAX_FRAME_LEN as u32);
        let frame_chunk = self.max_frame_len - (HEADER_LEN + READ_DATA_FIXED_LEN) as u32;
        self.max_read_chunk = self
            .max_read_chunk
            .clamp(1, MAX_READ_CHUNK.min(frame_chunk));
        self.max_inline_len = self
            .max_inline_len
            .min(max_inline_len_for(self.max_frame_len));
        self.max_events_in_flight = self.max_events_in_flight.max(1);
        self.max_reads_in_flight = self.max_reads_in_flight.max(1);
        self.max_bytes_in_flight = self.max_bytes_in_flight.max(1);
        let cap = Duration::from_millis(u32::MAX.into());
        self.query_timeout = self.query_timeout.clamp(Duration::from_millis(1), cap);
        self.handshake_timeout = self.handshake_timeout.clamp(Duration::from_millis(1), cap);
        self.heartbeat_interval = self.heartbeat_interval.min(cap);
        self.idle_timeout = self.idle_timeout.min(cap);
        let (hb, idle) = (
            millis_u32(self.heartbeat_interval).unwrap_or(0),
            millis_u32(self.idle_timeout).unwrap_or(0),
        );
        if hb != 0 && idle != 0 && idle <= hb {
            self.idle_timeout = Duration::from_millis(u64::from(hb) * 3).min(cap);
        }
        self
    }
}

/// What the guest said about itself in `Hello`, plus the negotiated version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInfo {
    /// Guest (host or VM) name as the guest announced it; may be empty. Not
    /// authenticated: identify guests by their transport address.
    pub name: String,
    /// Guest operating system.
    pub os: OsKind,
    /// Guest agent version.
    pub agent_version: AgentVersion,
    /// Announced capability bits (unknown bits kept).
    pub capabilities: Capabilities,
    /// Negotiated protocol version.
    pub version: u16,
    /// The `max_inline_len` the host announced in `HelloAck`: most content
    /// bytes the guest may send inline per `FileEvent` (0: none; always 0
    /// in version 1 and for a guest without `INLINE_CONTENT`).
    pub max_inline_len: u32,
    /// Largest frame the guest accepts.
    pub max_frame_len: u32,
    /// Most reads the guest serves at once.
    pub max_reads_in_flight: u32,
}

/// A guest's path, owned, in the encoding it was sent in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GuestPath {
    /// UTF-8 path.
    Utf8(String),
    /// UTF-16 code units (Windows; unpaired surrogates possible).
    Utf16(Vec<u16>),
    /// Raw POSIX bytes (not valid UTF-8).
    Bytes(Vec<u8>),
}

impl GuestPath {
    /// Copies a path out of a received frame.
    pub fn from_wire(path: &FilePath<'_>) -> Self {
        match path {
            FilePath::Utf8(s) => Self::Utf8((*s).to_owned()),
            FilePath::Utf16Le(_) => Self::Utf16(path.utf16_units().into_iter().flatten().collect()),
            FilePath::Bytes(b) => Self::Bytes(b.to_vec()),
        }
    }

    /// The path as text for logs (invalid sequences replaced by U+FFFD).
    pub fn to_string_lossy(&self) -> String {
        match self {
            Self::Utf8(s) => s.clone(),
            Self::Utf16(units) => String::from_utf16_lossy(units),
            Self::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        }
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

/// One `FileEvent`, owned: what the application needs to decide on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The event id; pass it to [`verdict`](super::HostSession::verdict) /
    /// [`fetch`](super::HostSession::fetch).
    pub id: EventId,
    /// The guest that asked.
    pub guest: Arc<GuestInfo>,
    /// Open / Execute / CloseAfterWrite.
    pub kind: EventKind,
    /// Process doing the operation.
    pub process_id: u32,
    /// Windows `ACCESS_MASK` of the open.
    pub desired_access: u32,
    /// Create disposition of the open.
    pub create_disposition: CreateDisposition,
    /// Volume serial, file id, size, last write time.
    pub file: FileIdentity,
    /// Normalized path.
    pub path: GuestPath,
    /// What the `FileEvent` carried inline (protocol version 2, §5.3.1).
    /// The bytes themselves stay in the session until
    /// [`fetch`](super::HostSession::fetch) delivers them as the first
    /// [`SessionEvent::Content`].
    pub inline: Inline,
    /// When the session received it.
    pub received_at: Instant,
}

/// The inline content of a `FileEvent` (protocol §5.3.1), described.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inline {
    /// Bytes `0..len` of the file came with the event.
    pub len: u32,
    /// They are the whole file (`WHOLE_FILE`, `len` = the file size): the
    /// host sends no `ReadRequest` for this event.
    pub whole_file: bool,
}

impl Inline {
    /// `true` when the event carried nothing inline (every version-1 event).
    pub const fn is_none(&self) -> bool {
        self.len == 0 && !self.whole_file
    }
}

/// Why the session answered a query on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyReason {
    /// The file is larger than `max_file_size` (declared or streamed).
    TooLarge,
    /// The per-query scan budget expired.
    Timeout,
    /// The guest did not announce `READ_CONTENT`, so content cannot be
    /// fetched.
    NoContentCapability,
    /// The session closed (protocol error, timeout, shutdown) with the query
    /// unanswered; it was answered before the closing `Goodbye`.
    SessionClosing,
    /// The `FileEvent` arrived with `max_events_in_flight` queries open; it
    /// was answered at once (after more such events in a row than the limit,
    /// the session also closes with `LimitExceeded`).
    OverLimit,
}

/// How a query the application did not answer itself ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOutcome {
    /// The session sent this policy `Verdict` (`cache_ttl_secs` 0).
    Policy {
        /// The decision sent.
        decision: Decision,
        /// Why.
        reason: PolicyReason,
    },
    /// No `Verdict` could be sent: the guest said `Goodbye` or the transport
    /// closed. The guest applies its own fail decision (protocol §8).
    Abandoned,
}

/// Why content could not be fetched. The query is still open: the
/// application answers it (typically with [`PolicyVerdicts::error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFailure {
    /// The guest's read failed with this OS error.
    ReadError(OsError),
    /// The guest no longer has the event outstanding (its own deadline
    /// passed); a verdict will be ignored by it.
    Cancelled,
    /// The guest's answers contradict each other (data past its own end of
    /// file).
    Inconsistent,
}

/// Received frames the session ignored or skipped, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// A `ReadData` whose read id matches no outstanding read (the event was
    /// already answered, §7): ignored.
    UnknownReadData {
        /// Its read id.
        read_id: u64,
    },
    /// An `ActionResult`, `ScanProgress` or `ScanDone` matching no
    /// outstanding host request (§14.1): ignored.
    UnknownResponse {
        /// Its request id.
        request_id: u64,
        /// Its type.
        msg_type: MessageType,
    },
    /// A `Pong` matching no `Ping`: ignored.
    UnknownPong {
        /// Its request id.
        request_id: u64,
    },
    /// A recoverable decoding error (unknown message type or version): the
    /// frame was skipped and answered with `Error`.
    SkippedFrame(DecodeError),
    /// The guest sent an `Error` frame.
    PeerError {
        /// The request id it concerns (0 = connection).
        request_id: u64,
        /// Its code.
        code: ErrorCode,
    },
}

/// Why the session closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Received bytes that cannot be decoded (fatal, §9).
    Decode(DecodeError),
    /// The guest broke a session rule (§6–§7); `Error(code)` and
    /// `Goodbye(ProtocolError)` were sent.
    Protocol {
        /// The error code sent.
        code: ErrorCode,
        /// What the guest did.
        detail: &'static str,
    },
    /// No common protocol version.
    VersionUnsupported {
        /// The guest's `version_min`.
        min: u16,
        /// The guest's `version_max`.
        max: u16,
    },
    /// The guest said `Goodbye`.
    PeerGoodbye(GoodbyeReason),
    /// No `Hello` within the handshake timeout.
    HandshakeTimeout,
    /// No frame received within the idle timeout.
    IdleTimeout,
    /// [`close`](super::HostSession::close) was called with this reason.
    Local(GoodbyeReason),
    /// The byte stream ended or failed (EOF or I/O error).
    TransportClosed,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decode(e) => write!(f, "undecodable input: {e}"),
            Self::Protocol { code, detail } => write!(f, "protocol error {code:?}: {detail}"),
            Self::VersionUnsupported { min, max } => {
                write!(f, "no common protocol version (guest speaks {min}..={max})")
            }
            Self::PeerGoodbye(r) => write!(f, "guest said goodbye ({r:?})"),
            Self::HandshakeTimeout => f.write_str("no Hello within the handshake timeout"),
            Self::IdleTimeout => f.write_str("idle timeout"),
            Self::Local(r) => write!(f, "closed by the host ({r:?})"),
            Self::TransportClosed => f.write_str("connection closed by the peer"),
        }
    }
}

/// An output of [`HostSession::poll_event`](super::HostSession::poll_event).
///
/// Every [`Query`] ends exactly once: either the application's successful
/// [`verdict`](super::HostSession::verdict) call, or one
/// [`SessionEvent::Finished`]. `Finished` may also name a query that was
/// never announced (one rejected at intake, [`PolicyReason::OverLimit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The handshake completed.
    Connected(Arc<GuestInfo>),
    /// The guest reported its state (`Health`, version 2, §14.8).
    Health(Health),
    /// A host action (§14) ended: its answer, its deadline, or the end of
    /// the connection. Exactly one per request the session sent.
    ActionDone {
        /// The request id the action was sent with.
        id: u64,
        /// Which action.
        kind: super::ActionKind,
        /// How it ended.
        outcome: super::ActionOutcome,
    },
    /// A running scan's counters (`ScanProgress`, §14.5).
    ScanProgress {
        /// The scan's request id.
        id: u64,
        /// Its counters so far.
        counters: thinagent_protocol::ScanCounters,
    },
    /// A new query: answer it from a cache with
    /// [`verdict`](super::HostSession::verdict), or ask for its content with
    /// [`fetch`](super::HostSession::fetch).
    Query(Arc<Query>),
    /// Content of a fetched file, in offset order, without gaps. Call
    /// [`consumed`](super::HostSession::consumed) when the bytes are no
    /// longer held, to let more content flow. A query with inline content
    /// ([`Query::inline`]) gets it first, as one `Content` at offset 0
    /// (charged and consumed like read content); the bytes after it, if
    /// any, are read from the guest.
    Content {
        /// The query.
        id: EventId,
        /// Offset of `data` in the file.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// All content of a fetched file was delivered.
    ContentEnd {
        /// The query.
        id: EventId,
        /// Total bytes delivered.
        size: u64,
    },
    /// Content cannot be fetched; the query still awaits a verdict.
    ContentFailed {
        /// The query.
        id: EventId,
        /// Why.
        reason: ContentFailure,
    },
    /// The session ended a query itself.
    Finished {
        /// The query.
        query: Arc<Query>,
        /// How.
        outcome: QueryOutcome,
    },
    /// Something was ignored or skipped (the session goes on).
    Anomaly(Anomaly),
    /// The session is over: send what is left to transmit, then close.
    Closed(CloseReason),
}

/// Why an application call was refused (nothing was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No open query has this id (answered already, finished by the
    /// session, or never received).
    #[error("no open query with id {0}")]
    UnknownQuery(EventId),
    /// The query's content is already being fetched.
    #[error("query {0} is already being fetched")]
    AlreadyFetching(EventId),
    /// The session is closed.
    #[error("the session is closed")]
    Closed,
}
