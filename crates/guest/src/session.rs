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
//! # Versions and inline content
//!
//! `Hello` offers protocol versions [`OFFERED_VERSION_MIN`]`..=`
//! [`OFFERED_VERSION_MAX`] (1 and 2); the host's `HelloAck` picks one. Until
//! then every frame carries version 1 (`Hello`, and an `Error` or `Goodbye`
//! sent before the answer); from the accepted `HelloAck` on, the decoder
//! checks received frames against the chosen version and every frame sent
//! carries it (`docs/protocol.md` §6.6).
//!
//! In version 2 a `FileEvent` may carry the file's first bytes, or the whole
//! file (§5.3.1). An embedder that can read a file before submitting it
//! announces [`Capabilities::INLINE_CONTENT`] in
//! [`SessionConfig::capabilities`], reads up to [`Session::max_inline_len`]
//! bytes (0 in a version-1 session: read nothing) and puts them in the
//! event's [`FileEvent::content`] for [`Session::submit`] (or
//! [`Session::submit_detailed`], which says what went out). The session
//! enforces the rules of §5.3.1 itself: no content unless `INLINE_CONTENT`
//! was announced and version 2 chosen; never more than the host's
//! `max_inline_len`; the frame fits the host's `max_frame_len` (a long path
//! leaves less room: the content is cut); `WHOLE_FILE` only when every byte
//! given went out and their number is the event's `file.size` (else it is
//! cleared, and the host reads the rest).
//!
//! **Encode at once or not at all.** A query with content is encoded into
//! the outgoing buffer during `submit`, so the caller's buffer is free as
//! soon as `submit` returns, and the slot never stores content: a slot holds
//! a path of `PATH` bytes, not up to 64 KiB of file, so `N` slots stay small
//! enough for a driver's static memory. When the event cannot go out at
//! once (before `HelloAck`, `max_events_in_flight` reached, or the outgoing
//! buffer lacks room for the frame plus a small reserve for control frames)
//! its content is dropped and the event is queued exactly like a version-1
//! event: the host then reads the file with `ReadRequest`s, as it would
//! without inline content. Either way the query is answered exactly once.
//!
//! # Host actions (version 2, `docs/protocol.md` §14)
//!
//! An embedder that can act on the host's requests announces their
//! capabilities ([`Capabilities::REMEDIATE`], [`Capabilities::SCAN_TREE`],
//! [`Capabilities::POLICY`], [`Capabilities::RESTORE`]). Every request
//! without its capability is answered `Unsupported` by the session itself. An accepted request waits, encoded,
//! in an inbox of `INBOX` bytes ([`DEFAULT_INBOX`]; one that does not fit,
//! a second scan, or more than §14.1 allows is answered `Busy`):
//! [`SessionEvent::HostRequest`] says so, [`Session::host_request`] shows
//! the oldest and [`Session::pop_host_request`] hands it over. The embedder
//! then owes exactly one answer: [`Session::complete_action`] for
//! `Remediate` and `Policy`, [`Session::scan_done`] for a scan (after
//! [`Session::scan_progress`] reports and `OnDemand` events submitted within
//! [`Session::on_demand_capacity`]; on-access events always go out first).
//! A `ScanCancel` arrives as [`SessionEvent::ScanCancelled`]. When the
//! session closes, requests not yet answered are void. [`Session::send_health`]
//! sends a `Health` report.
//!
//! # Restore (§14.7) and backpressure
//!
//! A `Restore` is taken like any request; its content follows as
//! `RestoreData` chunks, which the session checks (the first at 0, each
//! next one where the previous ended, `LAST` ending at `size`; one restore
//! at a time, a second is answered `Busy`) and puts in the same inbox, in
//! order, for the embedder to write out ([`Session::host_request`] returns
//! them as `Message::RestoreData`). Chunks out of order are answered
//! `Rejected`, and a restore whose `LAST` chunk has not arrived by its
//! deadline `Failed` (`ETIMEDOUT`, or `STATUS_IO_TIMEOUT` on Windows), by
//! the session itself: the embedder learns it from
//! [`Session::take_aborted_restore`] and removes its temporary file. Data
//! of a restore already answered or never taken is ignored. Once the `LAST`
//! chunk is in, the embedder owns the deadline and the one answer
//! ([`Session::complete_action`]).
//!
//! **Backpressure.** Chunks arrive as fast as the host sends them, and the
//! inbox is bounded. A chunk that does not fit the inbox now is not
//! dropped: the session leaves it in its decoder and stops taking bytes, so
//! [`Session::receive`] returns fewer bytes than it was given. The adapter
//! keeps the rest and stops reading the socket (the transport's own flow
//! control then holds the host back), and feeds the rest again once the
//! embedder took requests out of the inbox ([`Session::pop_host_request`]
//! processes what the decoder holds at once). A chunk is at most
//! `MAX_RESTORE_CHUNK` (4096) bytes, and `RESTORE` is only announced with
//! an inbox that holds one ([`MIN_RESTORE_INBOX`]), so an empty inbox
//! always takes the next chunk: frames behind a held chunk (`Verdict`s
//! included) wait only while the embedder writes what the inbox holds,
//! and a query whose verdict waits longer still gets its fail decision at
//! its deadline. Without an active restore nothing is ever held.
//!
//! Not here: reconnecting with back-off. After [`SessionEvent::Closed`] the
//! adapter closes the socket and builds a new `Session` on the next
//! connection (pacing attempts with [`crate::Backoff`]).

use core::time::Duration;

use thinagent_protocol::{
    ActionResult, ActionStatus, AgentVersion, Capabilities, CreateDisposition, Decision,
    DecodeError, ErrorCode, ErrorMessage, EventKind, FILE_EVENT_V2_FIXED_LEN, FileEvent,
    FileIdentity, FilePath, Goodbye, GoodbyeReason, HANDSHAKE_TIMEOUT_MS, HEADER_LEN, Heartbeat,
    Hello, HelloAck, INLINE_CONTENT_VERSION, InlineContent, MAX_FRAME_LEN, MAX_RESTORE_CHUNK,
    MAX_THREAT_NAME_LEN, Message, OsError, OsKind, PROTOCOL_VERSION, RESTORE_DATA_FIXED_LEN,
    ReadData, ReadOutcome, ReadRequest, ScanCounters, ScanDone, ScanStatus, StreamDecoder, Verdict,
};

use crate::params::{FailMode, Params};
use crate::time::Instant;

/// Id of one submitted query (the `FileEvent`'s event id on the wire).
pub type QueryId = u64;

/// Room for outgoing control frames and one full `ReadData` (or one
/// `FileEvent` carrying the most inline content).
const TX_CAP: usize = MAX_FRAME_LEN + 1024;

/// Room a `FileEvent` with inline content leaves free in the outgoing
/// buffer, so that the control frames a session may still have to send
/// (`Error`, `Goodbye`, `Pong`, `Ping`: at most 44 bytes each) never find it
/// full behind a large event.
const TX_RESERVE: usize = 256;

/// The lowest protocol version the guest offers in `Hello`.
pub const OFFERED_VERSION_MIN: u16 = 1;
/// The highest protocol version the guest offers in `Hello` (version 2:
/// inline content, `docs/protocol.md` §5.3.1).
pub const OFFERED_VERSION_MAX: u16 = 2;

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
    /// Sent in `Hello`; `READ_CONTENT` is what enables [`SessionEvent::ReadJob`],
    /// `INLINE_CONTENT` lets [`Session::submit`] send an event's
    /// [`FileEvent::content`] (version 2, see the module docs).
    pub capabilities: Capabilities,
    /// Sent in `Hello` (host or VM name, ≤ 255 bytes).
    pub guest_name: &'a str,
}

impl<'a> SessionConfig<'a> {
    /// This configuration with [`Capabilities::INLINE_CONTENT`] announced (or
    /// not): the embedder reads files up front and submits their first bytes.
    #[must_use]
    pub fn with_inline_content(mut self, on: bool) -> Self {
        self.capabilities = if on {
            self.capabilities.union(Capabilities::INLINE_CONTENT)
        } else {
            Capabilities(self.capabilities.0 & !Capabilities::INLINE_CONTENT.0)
        };
        self
    }

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
    /// Host requests (§14) arrived: take them with
    /// [`Session::host_request`] / [`Session::pop_host_request`] until it
    /// returns `None`.
    HostRequest,
    /// The host cancelled the running scan `id` (`ScanCancel`, §14.5): stop
    /// walking and end it with [`Session::scan_done`] (`Cancelled`).
    ScanCancelled {
        /// The scan's request id.
        id: u64,
    },
    /// The connection is over: send what [`Session::poll_transmit`] still
    /// yields, then close the socket. Host requests taken and not yet
    /// answered are void (the host records them as unanswered).
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

/// What [`Session::submit_detailed`] did with an accepted query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// The query's id, as [`Session::submit`] returns it.
    pub query: QueryId,
    /// Content bytes that went out inline with the event (0: none; the host
    /// reads what it needs with `ReadRequest`s).
    pub content_len: u32,
    /// The event went out marked `WHOLE_FILE`: the host has every byte and
    /// sends no `ReadRequest` for it.
    pub whole_file: bool,
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
pub struct Session<
    const N: usize = 64,
    const PATH: usize = 1024,
    const R: usize = 4,
    const INBOX: usize = DEFAULT_INBOX,
> {
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
    /// Answers to host requests (§14) still to be sent once the transmit
    /// buffer has room, in order: refusals (`Unsupported`, `Busy`) and the
    /// embedder's results.
    answers: [Option<(u64, Answer)>; ANSWERS],
    /// Host requests accepted and not yet answered (in the inbox or taken
    /// by the embedder), by request id.
    actions: [Option<(u64, ActionKind)>; ANSWERS],
    /// Accepted host requests not yet taken by the embedder, as encoded
    /// frames one after the other (re-encoded from the decoded message).
    inbox: [u8; INBOX],
    inbox_len: usize,
    /// Accepted host requests to announce with [`SessionEvent::HostRequest`].
    host_request_pending: bool,
    /// A `ScanCancel` for the running scan, to announce.
    scan_cancel_pending: Option<u64>,
    /// The restore taken and not yet answered (§14.7).
    restore: Option<RestoreRun>,
    /// The decoder holds a `RestoreData` the inbox has no room for: no
    /// more bytes are taken until the embedder empties the inbox.
    rx_held: bool,
    /// A restore the session ended itself (`Rejected`, deadline), for
    /// [`Session::take_aborted_restore`].
    restore_aborted: Option<u64>,
    /// The embedder feeds with [`Session::receive_some`]: a chunk without
    /// room may be held back.
    may_hold: bool,
}

/// The restore in progress (§14.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RestoreRun {
    id: u64,
    size: u64,
    /// Where the next chunk must start.
    next: u64,
    /// The `LAST` chunk arrived.
    complete: bool,
    deadline: Instant,
}

impl RestoreRun {
    /// Where the restore stands after chunk `(offset, len, last)`, or
    /// `None` when the chunk breaks §14.7's order.
    fn after(&self, offset: u64, len: u32, last: bool) -> Option<Self> {
        let end = offset.checked_add(u64::from(len))?;
        if offset != self.next || end > self.size || (last && end != self.size) {
            return None;
        }
        Some(Self {
            next: end,
            complete: last,
            ..*self
        })
    }
}

/// The smallest inbox with which a session announces `RESTORE`: one
/// `RestoreData` of `MAX_RESTORE_CHUNK` bytes fits it (module docs).
pub const MIN_RESTORE_INBOX: usize = HEADER_LEN + RESTORE_DATA_FIXED_LEN + MAX_RESTORE_CHUNK;

impl<const N: usize, const PATH: usize, const R: usize, const INBOX: usize> core::fmt::Debug
    for Session<N, PATH, R, INBOX>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<const N: usize, const PATH: usize, const R: usize, const INBOX: usize>
    Session<N, PATH, R, INBOX>
{
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
            answers: [None; ANSWERS],
            actions: [None; ANSWERS],
            inbox: [0; INBOX],
            inbox_len: 0,
            host_request_pending: false,
            scan_cancel_pending: None,
            restore: None,
            rx_held: false,
            restore_aborted: None,
            may_hold: false,
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
        // `Restore` needs an inbox that holds a whole chunk (module docs).
        self.capabilities = if INBOX < MIN_RESTORE_INBOX {
            Capabilities(config.capabilities.0 & !Capabilities::RESTORE.0)
        } else {
            config.capabilities
        };
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
        self.answers = [None; ANSWERS];
        self.actions = [None; ANSWERS];
        self.inbox_len = 0;
        self.host_request_pending = false;
        self.scan_cancel_pending = None;
        self.restore = None;
        self.rx_held = false;
        self.restore_aborted = None;
    }

    /// Whether the handshake completed and the session is not closed.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The session's protocol version (`docs/protocol.md` §6.6): 1 until a
    /// `HelloAck` is accepted, then the version it chose.
    pub fn version(&self) -> u16 {
        self.ack.map_or(PROTOCOL_VERSION, |a| a.version)
    }

    /// Most content bytes a query may carry inline now: the host's
    /// `HelloAck.max_inline_len` once a version-2 session is open and this
    /// session announced [`Capabilities::INLINE_CONTENT`]; 0 otherwise
    /// (version 1, no handshake yet, closed, or inline content not
    /// announced). How much an embedder should read before submitting.
    pub fn max_inline_len(&self) -> u32 {
        match self.ack {
            Some(a)
                if self.state == State::Connected
                    && a.version >= INLINE_CONTENT_VERSION
                    && self.capabilities.contains(Capabilities::INLINE_CONTENT) =>
            {
                a.max_inline_len
            }
            _ => 0,
        }
    }

    /// Most content bytes a query whose path has `path_len` bytes may carry
    /// inline now: [`max_inline_len`](Self::max_inline_len), less when the
    /// frame would not fit the host's `max_frame_len` (§5.3.1).
    pub fn inline_budget(&self, path_len: usize) -> usize {
        let max_frame = self.ack.map_or(MAX_FRAME_LEN, |a| a.max_frame_len as usize);
        let room = max_frame.saturating_sub(HEADER_LEN + FILE_EVENT_V2_FIXED_LEN + path_len);
        (self.max_inline_len() as usize).min(room)
    }

    /// The content `event` may carry under §5.3.1 in this session now: cut
    /// to [`inline_budget`](Self::inline_budget), `WHOLE_FILE` kept only if
    /// nothing was cut and the length is the file's size; none at all when
    /// nothing may be sent inline.
    fn allowed_content<'e>(&self, event: &FileEvent<'e>) -> InlineContent<'e> {
        let given = event.content;
        if given.is_none() || self.max_inline_len() == 0 {
            return InlineContent::NONE;
        }
        let budget = self.inline_budget(event.path.as_bytes().len());
        let bytes = &given.bytes[..given.bytes.len().min(budget)];
        let whole_file = given.whole_file
            && bytes.len() == given.bytes.len()
            && u64::try_from(bytes.len()).ok() == Some(event.file.size);
        if bytes.is_empty() && !whole_file {
            return InlineContent::NONE;
        }
        InlineContent { bytes, whole_file }
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
            version_min: OFFERED_VERSION_MIN,
            version_max: OFFERED_VERSION_MAX,
            os: self.os,
            agent_version: self.agent_version,
            capabilities: self.capabilities,
            max_frame_len: MAX_FRAME_LEN as u32,
            max_reads_in_flight: R.max(1) as u32,
            guest_name: name,
        });
        self.tx.push(&hello, PROTOCOL_VERSION, hello_id);
        self.state = State::Handshake {
            deadline: now.saturating_add(Duration::from_millis(HANDSHAKE_TIMEOUT_MS.into())),
        };
    }

    /// Submits a file query. The path is copied; the returned id appears in
    /// exactly one later [`SessionEvent::Verdict`] (already queued when the
    /// session is closed or the path does not fit a slot or a frame).
    ///
    /// The event's [`FileEvent::content`] goes out inline when the session
    /// allows it (version 2, `INLINE_CONTENT` announced, room now; cut to
    /// the budget, see the module docs) and is dropped otherwise: pass
    /// [`InlineContent::NONE`] for a version-1 query. The content is copied
    /// (encoded) before this returns; [`submit_detailed`](Self::submit_detailed)
    /// says how much went out.
    pub fn submit(&mut self, event: &FileEvent<'_>, now: Instant) -> Result<QueryId, SubmitError> {
        self.submit_detailed(event, now).map(|s| s.query)
    }

    /// [`submit`](Self::submit), also saying what went out inline.
    pub fn submit_detailed(
        &mut self,
        event: &FileEvent<'_>,
        now: Instant,
    ) -> Result<Submitted, SubmitError> {
        self.now = now;
        let Some(index) = self.slots.iter().position(|s| s.state == SlotState::Free) else {
            return Err(SubmitError::Full);
        };
        let id = self.alloc_id();
        let mut submitted = Submitted {
            query: id,
            content_len: 0,
            whole_file: false,
        };
        let bare = FileEvent {
            content: InlineContent::NONE,
            ..*event
        };
        let bytes = event.path.as_bytes();
        let fits = bytes.len() <= PATH
            && self.fits_host(&bare)
            // `OnDemand` exists in version 2 only (§14.4); a scan never runs
            // in a version-1 session, so this is an embedder's mistake.
            && (event.kind != EventKind::OnDemand
                || self.version() >= thinagent_protocol::HOST_ACTIONS_VERSION);
        let fail = self.fail_mode;
        // §14.4: an `OnDemand` event blocks no open; it waits longer.
        let timeout = if event.kind == EventKind::OnDemand {
            self.query_timeout.max(Duration::from_millis(
                thinagent_protocol::ON_DEMAND_QUERY_TIMEOUT_MS.into(),
            ))
        } else {
            self.query_timeout
        };
        let deadline = now.saturating_add(timeout);
        if self.state == State::Closed || !fits {
            let slot = &mut self.slots[index];
            slot.id = id;
            slot.deadline = deadline;
            slot.state =
                SlotState::Answered(QueryVerdict::fail(id, fail, VerdictSource::Local(fail)));
            return Ok(submitted);
        }
        // Inline content: encoded now or never (module docs).
        let content = self.allowed_content(event);
        let mut state = SlotState::Queued;
        // §14.4: an on-access event that waits goes out before any OnDemand.
        let on_access_waits = event.kind == EventKind::OnDemand
            && self
                .slots
                .iter()
                .any(|s| s.state == SlotState::Queued && s.kind != EventKind::OnDemand);
        if !content.is_none()
            && self.state == State::Connected
            && self.may_send_event()
            && !on_access_waits
        {
            let msg = Message::FileEvent(FileEvent { content, ..bare });
            let version = self.version();
            if self.fits_host(&FileEvent { content, ..bare })
                && self.tx.push_reserving(&msg, version, id, TX_RESERVE)
            {
                state = SlotState::Sent;
                submitted.content_len = content.bytes.len() as u32;
                submitted.whole_file = content.whole_file;
            }
        }
        let slot = &mut self.slots[index];
        slot.id = id;
        slot.deadline = deadline;
        slot.kind = event.kind;
        slot.process_id = event.process_id;
        slot.desired_access = event.desired_access;
        slot.create_disposition = event.create_disposition;
        slot.file = event.file;
        slot.encoding = event.path.encoding().to_wire();
        slot.path[..bytes.len()].copy_from_slice(bytes);
        slot.path_len = bytes.len();
        slot.state = state;
        Ok(submitted)
    }

    /// Whether `event` fits the host's frame limit (before `HelloAck`: the
    /// protocol's limit, in the handshake version; the queue checks again
    /// once the host's limit and version are known).
    fn fits_host(&self, event: &FileEvent<'_>) -> bool {
        let max_len = self.ack.map_or(MAX_FRAME_LEN, |a| a.max_frame_len as usize);
        Message::FileEvent(*event).encoded_len_for(self.version()) <= max_len
    }

    /// Whether one more `FileEvent` may go out now (`max_events_in_flight`).
    fn may_send_event(&self) -> bool {
        let limit = self.ack.map_or(0, |a| a.max_events_in_flight as usize);
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Sent)
            .count()
            < limit
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

    /// Feeds received bytes, all of them. Never holds a chunk back: a
    /// `RestoreData` the inbox has no room for ends its restore (`Busy`).
    /// An embedder that announces `RESTORE` feeds with
    /// [`receive_some`](Self::receive_some) instead.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) {
        self.may_hold = false;
        self.receive_bytes(bytes, now);
    }

    /// Feeds received bytes; returns how many it took. Fewer than given
    /// only while a `RestoreData` waits for room in the inbox (module
    /// docs, *Backpressure*): keep the rest, stop reading the socket, and
    /// feed it again once [`rx_held`](Self::rx_held) is `false` (after
    /// [`pop_host_request`](Self::pop_host_request)). A closed session
    /// takes (and drops) everything.
    pub fn receive_some(&mut self, bytes: &[u8], now: Instant) -> usize {
        self.may_hold = true;
        self.receive_bytes(bytes, now)
    }

    fn receive_bytes(&mut self, bytes: &[u8], now: Instant) -> usize {
        self.now = now;
        if matches!(self.state, State::Closed | State::Idle) {
            return bytes.len();
        }
        self.last_recv = now;
        let mut taken = 0;
        self.process_rx();
        while taken < bytes.len() && self.state != State::Closed && !self.rx_held {
            let n = self.rx.push(&bytes[taken..]);
            taken += n;
            self.process_rx();
            if n == 0 {
                break;
            }
        }
        // Only a held chunk leaves bytes to feed again; anything else the
        // decoder could not take is gone, as before.
        if self.rx_held { taken } else { bytes.len() }
    }

    /// Whether the session holds a `RestoreData` it has no room for and
    /// takes no bytes ([`receive`](Self::receive) returns 0) until the
    /// embedder takes requests out of the inbox.
    pub fn rx_held(&self) -> bool {
        self.rx_held
    }

    /// Processes what the decoder holds once the inbox has room again.
    fn release_rx(&mut self) {
        if self.rx_held {
            self.rx_held = false;
            self.process_rx();
        }
    }

    fn process_rx(&mut self) {
        while self.state != State::Closed && !self.rx_held {
            // Copy the frame's essentials out of the decoder's buffer first.
            let step = match self.rx.peek_frame() {
                Ok(None) => return,
                Ok(Some((frame, consumed))) => {
                    let mut incoming = Incoming::from(&frame.message);
                    // A host request this guest takes, and a chunk of the
                    // restore in progress that keeps its order, are copied
                    // (encoded again) behind the inbox's frames before the
                    // decoder's buffer is released; `on_frame` decides
                    // whether they stay there.
                    let wanted = match incoming {
                        Incoming::HostRequest(kind, ..) => {
                            self.capabilities.contains(kind.capability())
                        }
                        Incoming::RestoreData(chunk, _) => self
                            .restore
                            .filter(|r| r.id == frame.request_id && !r.complete)
                            .is_some_and(|r| {
                                r.after(chunk.offset, chunk.len, chunk.last).is_some()
                            }),
                        _ => false,
                    };
                    let mut hold = false;
                    if wanted {
                        let tail = self.inbox.get_mut(self.inbox_len..).unwrap_or_default();
                        let len = frame
                            .message
                            .encode_for(frame.version, frame.request_id, tail)
                            .unwrap_or(0);
                        match &mut incoming {
                            Incoming::HostRequest(_, l, _) => *l = len,
                            Incoming::RestoreData(_, l) => {
                                *l = len;
                                // No room now, but an emptier inbox has:
                                // leave the chunk in the decoder.
                                hold = len == 0 && self.inbox_len > 0 && self.may_hold;
                            }
                            _ => {}
                        }
                    }
                    if hold {
                        self.rx_held = true;
                        return;
                    }
                    Rx::Frame(frame.request_id, incoming, consumed)
                }
                Err(e) => Rx::Err(e),
            };
            if let Rx::Frame(_, _, consumed) = step {
                self.rx.consume(consumed);
            }
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
                Rx::Frame(id, incoming, _) => self.on_frame(id, incoming),
            }
        }
    }

    fn on_frame(&mut self, id: u64, msg: Incoming) {
        let handshaking = matches!(self.state, State::Handshake { .. });
        match msg {
            Incoming::HelloAck(ack) if handshaking && id == self.hello_id => {
                // A host that picks a version the Hello did not offer speaks
                // a protocol we cannot (§6.5).
                if !(OFFERED_VERSION_MIN..=OFFERED_VERSION_MAX).contains(&ack.version) {
                    self.fatal(
                        id,
                        ErrorCode::VersionUnsupported,
                        CloseReason::Protocol(ErrorCode::VersionUnsupported),
                    );
                    return;
                }
                self.ack = Some(ack);
                // From here on frames carry the chosen version (§6.6).
                self.rx.set_session_version(ack.version);
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
            // §14.1: a host request is never sent with id 0, and its id is
            // not reused while an earlier one waits for its answer.
            Incoming::HostRequest(..) if id == 0 => {
                self.fatal(
                    0,
                    ErrorCode::UnexpectedMessage,
                    CloseReason::Protocol(ErrorCode::UnexpectedMessage),
                );
            }
            Incoming::HostRequest(kind, len, restore) => {
                self.on_host_request(id, kind, len, restore);
            }
            Incoming::ScanCancel => self.on_scan_cancel(id),
            Incoming::RestoreData(chunk, len) => self.on_restore_data(id, chunk, len),
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

    /// A host request of §14 (not `ScanCancel`): taken into the inbox when
    /// this guest announced its capability and has room, else answered at
    /// once (`Unsupported`: no capability, §14.1; `Busy`: a scan already
    /// runs, or no room). `len` is its encoded length at the inbox's tail
    /// (0: it did not fit, or the capability is missing).
    fn on_host_request(
        &mut self,
        id: u64,
        kind: ActionKind,
        len: usize,
        restore: Option<RestoreHead>,
    ) {
        if self.outstanding(id).is_some() || self.answers.iter().flatten().any(|(a, _)| *a == id) {
            // §14.1: an id reused while its request waits for its answer.
            self.fatal(
                id,
                ErrorCode::UnexpectedMessage,
                CloseReason::Protocol(ErrorCode::UnexpectedMessage),
            );
            return;
        }
        if !self.capabilities.contains(kind.capability()) {
            self.answer(
                id,
                kind.refusal(ActionStatus::Unsupported, ScanStatus::Unsupported),
            );
            return;
        }
        let scan_running = self
            .actions
            .iter()
            .flatten()
            .any(|(_, k)| *k == ActionKind::Scan);
        let free = self.actions.iter().position(Option::is_none);
        let restore_running = kind == ActionKind::Restore && self.restore.is_some();
        match free {
            Some(slot)
                if len > 0 && !(kind == ActionKind::Scan && scan_running) && !restore_running =>
            {
                self.actions[slot] = Some((id, kind));
                self.inbox_len += len;
                self.host_request_pending = true;
                if let Some(head) = restore {
                    self.restore = Some(RestoreRun {
                        id,
                        size: head.size,
                        next: 0,
                        complete: false,
                        deadline: self
                            .now
                            .saturating_add(Duration::from_millis(head.deadline_ms.into())),
                    });
                }
            }
            _ => self.answer(id, kind.refusal(ActionStatus::Busy, ScanStatus::Busy)),
        }
    }

    /// `ScanCancel` (§14.5): a scan still in the inbox ends at once
    /// (`Cancelled`, no counters); a scan the embedder runs is announced
    /// with [`SessionEvent::ScanCancelled`]; anything else is ignored.
    fn on_scan_cancel(&mut self, id: u64) {
        if self.outstanding(id) != Some(ActionKind::Scan) {
            return;
        }
        if self.remove_from_inbox(id) {
            self.forget_action(id);
            self.answer(
                id,
                Answer::ScanDone(ScanDone {
                    counters: ScanCounters::default(),
                    status: ScanStatus::Cancelled,
                    error: None,
                }),
            );
        } else {
            self.scan_cancel_pending = Some(id);
        }
    }

    /// A `RestoreData` (§14.7). `len` is its encoded length at the inbox's
    /// tail (0: not copied, it is not the restore in progress's next chunk
    /// or, with an empty inbox, cannot fit at all).
    fn on_restore_data(&mut self, id: u64, chunk: ChunkHead, len: usize) {
        // Data of a restore answered, never taken or complete: ignored.
        let Some(run) = self.restore.filter(|r| r.id == id && !r.complete) else {
            return;
        };
        match run.after(chunk.offset, chunk.len, chunk.last) {
            Some(next) if len > 0 => {
                self.restore = Some(next);
                self.inbox_len += len;
                self.host_request_pending = true;
            }
            // In order, but no room and no holding it back (`receive`).
            Some(_) => self.abort_restore(id, ActionResult::status(ActionStatus::Busy)),
            None => self.abort_restore(id, ActionResult::status(ActionStatus::Rejected)),
        }
    }

    /// Ends the restore in progress with `result`, sent by the session: its
    /// frames leave the inbox and the embedder learns it from
    /// [`take_aborted_restore`](Self::take_aborted_restore).
    fn abort_restore(&mut self, id: u64, result: ActionResult) {
        while self.remove_from_inbox(id) {}
        self.restore = None;
        self.forget_action(id);
        self.answer(id, Answer::Action(result));
        self.restore_aborted = Some(id);
        self.host_request_pending = true;
    }

    /// The restore the session ended itself since the last call (chunks out
    /// of order: `Rejected`; its `LAST` chunk not in by the deadline:
    /// `Failed`), already answered: the embedder drops what it wrote of it
    /// (its temporary file) and answers nothing. Asked after
    /// [`SessionEvent::HostRequest`].
    pub fn take_aborted_restore(&mut self) -> Option<u64> {
        self.restore_aborted.take()
    }

    /// The kind of the accepted, unanswered host request `id`.
    fn outstanding(&self, id: u64) -> Option<ActionKind> {
        self.actions
            .iter()
            .flatten()
            .find(|(a, _)| *a == id)
            .map(|(_, k)| *k)
    }

    fn forget_action(&mut self, id: u64) {
        for a in self.actions.iter_mut() {
            if a.is_some_and(|(x, _)| x == id) {
                *a = None;
            }
        }
    }

    /// The inbox's frames: (offset, length, request id) each.
    fn inbox_frames(&self) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        let mut pos = 0;
        core::iter::from_fn(move || {
            let bytes = self.inbox.get(pos..self.inbox_len)?;
            match thinagent_protocol::decode_frame(bytes) {
                Ok(thinagent_protocol::Decoded::Frame { frame, consumed }) => {
                    let at = pos;
                    pos += consumed;
                    Some((at, consumed, frame.request_id))
                }
                _ => None,
            }
        })
    }

    /// Removes request `id` from the inbox; `false` if it is not there.
    fn remove_from_inbox(&mut self, id: u64) -> bool {
        let found = self.inbox_frames().find(|(_, _, r)| *r == id);
        let Some((at, len, _)) = found else {
            return false;
        };
        self.inbox.copy_within(at + len..self.inbox_len, at);
        self.inbox_len -= len;
        true
    }

    /// Sends `answer` to request `id` now, or queues it until the transmit
    /// buffer has room. A host that makes more answers wait than §14.1
    /// lets it have requests outstanding breaks the session.
    fn answer(&mut self, id: u64, answer: Answer) {
        if self.answers.iter().all(Option::is_none) && self.push_answer(id, answer) {
            return;
        }
        match self.answers.iter_mut().find(|r| r.is_none()) {
            Some(free) => *free = Some((id, answer)),
            None => self.fatal(
                id,
                ErrorCode::LimitExceeded,
                CloseReason::Protocol(ErrorCode::LimitExceeded),
            ),
        }
    }

    fn push_answer(&mut self, id: u64, answer: Answer) -> bool {
        let version = self.version();
        match answer {
            Answer::Action(result) => self.tx.push(&Message::ActionResult(result), version, id),
            Answer::ScanDone(done) => self.tx.push(&Message::ScanDone(done), version, id),
        }
    }

    /// The oldest host request (§14) the embedder has not taken yet:
    /// `Remediate`, `Policy` or `ScanTree`, borrowed from the session. Take
    /// what you need, then call [`pop_host_request`](Self::pop_host_request);
    /// answer it later with [`complete_action`](Self::complete_action) or,
    /// for a scan, [`scan_done`](Self::scan_done). Only requests whose
    /// capability [`SessionConfig::capabilities`] announces arrive here; the
    /// others are answered `Unsupported` by the session.
    pub fn host_request(&self) -> Option<HostRequest<'_>> {
        let bytes = self.inbox.get(..self.inbox_len)?;
        match thinagent_protocol::decode_frame(bytes) {
            Ok(thinagent_protocol::Decoded::Frame { frame, .. }) => Some(HostRequest {
                id: frame.request_id,
                message: frame.message,
            }),
            _ => None,
        }
    }

    /// Drops the request [`host_request`](Self::host_request) returned (the
    /// embedder has it now and owes its answer).
    pub fn pop_host_request(&mut self) {
        let first = self.inbox_frames().next();
        if let Some((_, len, _)) = first {
            self.inbox.copy_within(len..self.inbox_len, 0);
            self.inbox_len -= len;
        }
        self.release_rx();
    }

    /// Answers the `Remediate`, `Policy` or `Restore` `id` with `result`
    /// (exactly once; §14.3). A `Restore` may be answered before its `LAST`
    /// chunk (e.g. `Failed` on a write error): the rest of its data is then
    /// ignored. Fails when no such request waits for an answer (already
    /// answered, a scan, or the session closed since: the host then
    /// records no answer).
    pub fn complete_action(&mut self, id: u64, result: ActionResult) -> Result<(), AnswerError> {
        match self.outstanding(id) {
            Some(ActionKind::Remediate | ActionKind::Policy | ActionKind::Restore)
                if self.state == State::Connected =>
            {
                self.forget_action(id);
                self.answer(id, Answer::Action(result));
                if self.restore.is_some_and(|r| r.id == id) {
                    // Later data of it is ignored; so is what the inbox
                    // and the decoder still hold of it.
                    self.restore = None;
                    while self.remove_from_inbox(id) {}
                    self.release_rx();
                }
                Ok(())
            }
            _ => Err(AnswerError::NotOutstanding),
        }
    }

    /// Reports the running scan's counters (`ScanProgress`, §14.5); the
    /// embedder paces them by the scan's `progress_interval_ms`. Best
    /// effort: `false` when the transmit buffer has no room now (the next
    /// report carries newer counters anyway) or no such scan runs.
    pub fn scan_progress(&mut self, id: u64, counters: ScanCounters) -> bool {
        if self.outstanding(id) != Some(ActionKind::Scan) || self.state != State::Connected {
            return false;
        }
        let version = self.version();
        self.tx.push_reserving(
            &Message::ScanProgress(thinagent_protocol::ScanProgress { counters }),
            version,
            id,
            TX_RESERVE,
        )
    }

    /// Ends the scan `id` with `done` (its one `ScanDone`, §14.5).
    pub fn scan_done(&mut self, id: u64, done: ScanDone) -> Result<(), AnswerError> {
        if self.outstanding(id) != Some(ActionKind::Scan) || self.state != State::Connected {
            return Err(AnswerError::NotOutstanding);
        }
        if self.scan_cancel_pending == Some(id) {
            self.scan_cancel_pending = None;
        }
        self.forget_action(id);
        self.answer(id, Answer::ScanDone(done));
        Ok(())
    }

    /// Sends a `Health` report (§14.8) when the session is connected in
    /// version 2; `false` otherwise or when the transmit buffer has no room.
    /// The embedder sends one after [`SessionEvent::Connected`] and then
    /// at most every [`thinagent_protocol::HEALTH_MIN_INTERVAL_MS`] when a
    /// value changed.
    pub fn send_health(&mut self, health: &thinagent_protocol::Health) -> bool {
        let version = self.version();
        if self.state != State::Connected || version < thinagent_protocol::HOST_ACTIONS_VERSION {
            return false;
        }
        self.tx
            .push_reserving(&Message::Health(*health), version, 0, TX_RESERVE)
    }

    /// How many more `OnDemand` events a scan whose `ScanTree` asked for
    /// `scan_max_in_flight` may submit now (§14.4: at most
    /// `min(max_in_flight, max(1, max_events_in_flight / 2))` outstanding).
    pub fn on_demand_capacity(&self, scan_max_in_flight: u16) -> usize {
        let Some(ack) = self.ack.filter(|_| self.state == State::Connected) else {
            return 0;
        };
        let limit =
            usize::from(scan_max_in_flight).min((ack.max_events_in_flight as usize / 2).max(1));
        let outstanding = self
            .slots
            .iter()
            .filter(|s| {
                s.kind == EventKind::OnDemand
                    && matches!(s.state, SlotState::Queued | SlotState::Sent)
            })
            .count();
        limit.saturating_sub(outstanding)
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

    /// Changes the on-access settings of a running session (a host
    /// `Policy`, §14.6): queries submitted from now on get `query_timeout`
    /// as their deadline, and fail-mode answers from now on follow
    /// `fail_mode`. Queries already submitted keep their deadline.
    pub fn set_on_access(&mut self, query_timeout: Duration, fail_mode: FailMode) {
        self.query_timeout = query_timeout;
        self.fail_mode = fail_mode;
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
        self.actions = [None; ANSWERS];
        self.inbox_len = 0;
        self.host_request_pending = false;
        self.scan_cancel_pending = None;
        self.restore = None;
        self.rx_held = false;
        self.restore_aborted = None;
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
                    self.restore.filter(|r| !r.complete).map(|r| r.deadline),
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
                if let Some(run) = self.restore
                    && !run.complete
                    && now.has_reached(run.deadline)
                {
                    let timeout = match self.os {
                        OsKind::Windows => OsError::NtStatus(STATUS_IO_TIMEOUT),
                        _ => OsError::Errno(ETIMEDOUT),
                    };
                    self.abort_restore(run.id, ActionResult::failed(timeout));
                    self.release_rx();
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
        let version = self.version();
        self.tx.push(msg, version, request_id)
    }

    /// Copies bytes to send into `out` and returns how many (`None`: nothing
    /// to send now). Frames may be split across calls.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        if let Some((hb, id)) = self.pong_pending
            && self.state != State::Closed
            && self.tx.push(&Message::Pong(hb), self.version(), id)
        {
            self.pong_pending = None;
        }
        if self.state != State::Closed {
            // The waiting ones form a prefix in arrival order: send from
            // the front, then move what is left to the front.
            let mut sent = 0;
            while let Some(&Some((id, answer))) = self.answers.get(sent) {
                if !self.push_answer(id, answer) {
                    break;
                }
                sent += 1;
            }
            if sent > 0 {
                self.answers.rotate_left(sent);
                let len = self.answers.len();
                self.answers[len - sent..].fill(None);
            }
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
        let version = self.version();
        let fail = self.fail_mode;
        let mut sent = self
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Sent)
            .count();
        // Two passes: on-access events first, then OnDemand ones (§14.4).
        for (pass, i) in (0..2).flat_map(|pass| (0..N).map(move |i| (pass, i))) {
            if sent >= limit {
                return;
            }
            let on_demand = self.slots[i].kind == EventKind::OnDemand;
            if self.slots[i].state != SlotState::Queued || on_demand != (pass == 1) {
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
            // Queued events never carry content (module docs).
            let event = FileEvent {
                kind: s.kind,
                process_id: s.process_id,
                desired_access: s.desired_access,
                create_disposition: s.create_disposition,
                file: s.file,
                path,
                content: InlineContent::NONE,
            };
            let id = s.id;
            // Submitted before HelloAck, the event was measured against the
            // protocol's limit; the host may have announced a lower one.
            if !self.fits_host(&event) {
                self.slots[i].state =
                    SlotState::Answered(QueryVerdict::fail(id, fail, VerdictSource::Local(fail)));
                continue;
            }
            if !self.tx.push(&Message::FileEvent(event), version, id) {
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
            return Some(SessionEvent::Connected {
                version: self.version(),
            });
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
        if self.state == State::Connected {
            if let Some(id) = self.scan_cancel_pending.take() {
                return Some(SessionEvent::ScanCancelled { id });
            }
            if core::mem::take(&mut self.host_request_pending)
                && (self.inbox_len > 0 || self.restore_aborted.is_some())
            {
                return Some(SessionEvent::HostRequest);
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
    /// A host request of §14, its encoded length at the inbox's tail (0
    /// until `process_rx` copied it there), and for a `Restore` its size
    /// and deadline.
    HostRequest(ActionKind, usize, Option<RestoreHead>),
    /// `ScanCancel` (§14.5).
    ScanCancel,
    /// `RestoreData` (§14.7) and its encoded length at the inbox's tail.
    RestoreData(ChunkHead, usize),
    /// A message the host must not send (`Hello`, `FileEvent`, `ReadData`,
    /// and the guest → host messages of §14).
    Unexpected,
}

/// What the session keeps of a `Restore`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RestoreHead {
    size: u64,
    deadline_ms: u32,
}

/// What the session keeps of a `RestoreData`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChunkHead {
    offset: u64,
    len: u32,
    last: bool,
}

/// `ETIMEDOUT` (Linux): a restore's deadline passed before its data.
const ETIMEDOUT: u32 = 110;
/// `STATUS_IO_TIMEOUT` (Windows).
const STATUS_IO_TIMEOUT: u32 = 0xC000_00B5;

/// A host request of §14, by what answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActionKind {
    /// `Remediate`: `ActionResult`.
    Remediate,
    /// `Policy`: `ActionResult`.
    Policy,
    /// `Restore`: `ActionResult`, after its data.
    Restore,
    /// `ScanTree`: `ScanDone`.
    Scan,
}

impl ActionKind {
    const fn capability(self) -> Capabilities {
        match self {
            Self::Remediate => Capabilities::REMEDIATE,
            Self::Policy => Capabilities::POLICY,
            Self::Restore => Capabilities::RESTORE,
            Self::Scan => Capabilities::SCAN_TREE,
        }
    }

    /// The answer that refuses a request of this kind.
    const fn refusal(self, action: ActionStatus, scan: ScanStatus) -> Answer {
        match self {
            Self::Scan => Answer::ScanDone(ScanDone {
                counters: ScanCounters {
                    files_seen: 0,
                    files_scanned: 0,
                    files_denied: 0,
                    files_skipped: 0,
                    errors: 0,
                    bytes: 0,
                },
                status: scan,
                error: None,
            }),
            _ => Answer::Action(ActionResult::status(action)),
        }
    }
}

/// An answer to a host request, waiting for room to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Action(ActionResult),
    ScanDone(ScanDone),
}

/// Host requests one session tracks at once, and answers that may wait for
/// room in the transmit buffer: the most requests §14.1 lets a host have
/// outstanding (`MAX_ACTIONS_IN_FLIGHT` actions and one scan).
const ANSWERS: usize = thinagent_protocol::MAX_ACTIONS_IN_FLIGHT as usize + 1;

/// Default bytes of a [`Session`]'s inbox of host requests (§14) not yet
/// taken by the embedder. A request that does not fit is answered `Busy`.
pub const DEFAULT_INBOX: usize = 8 * 1024;

/// A host request (§14) for the embedder: see [`Session::host_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRequest<'a> {
    /// Its request id: pass it to [`Session::complete_action`] or
    /// [`Session::scan_done`].
    pub id: u64,
    /// `Remediate`, `Policy`, `ScanTree`, `Restore`, or a `RestoreData`
    /// of the restore taken (in order; answer the `Restore` once).
    pub message: Message<'a>,
}

/// Why [`Session::complete_action`] or [`Session::scan_done`] refused an
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerError {
    /// No such request waits for an answer (already answered, the wrong
    /// kind, or the session closed since).
    NotOutstanding,
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
            Message::Remediate(_) => Self::HostRequest(ActionKind::Remediate, 0, None),
            Message::Policy(_) => Self::HostRequest(ActionKind::Policy, 0, None),
            Message::Restore(r) => Self::HostRequest(
                ActionKind::Restore,
                0,
                Some(RestoreHead {
                    size: r.size,
                    deadline_ms: r.deadline_ms,
                }),
            ),
            Message::ScanTree(_) => Self::HostRequest(ActionKind::Scan, 0, None),
            Message::ScanCancel(_) => Self::ScanCancel,
            Message::RestoreData(d) => Self::RestoreData(
                ChunkHead {
                    offset: d.offset,
                    // The decoder bounds it by MAX_RESTORE_CHUNK.
                    len: u32::try_from(d.data.len()).unwrap_or(u32::MAX),
                    last: d.last,
                },
                0,
            ),
            Message::Hello(_)
            | Message::FileEvent(_)
            | Message::ReadData(_)
            | Message::ActionResult(_)
            | Message::ScanProgress(_)
            | Message::ScanDone(_)
            | Message::Health(_) => Self::Unexpected,
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "no allocation: the threat name is copied inline"
)]
enum Rx {
    /// A frame's request id, what it carries, and its length.
    Frame(u64, Incoming, usize),
    Err(DecodeError),
}

/// Outgoing bytes not yet handed to [`Session::poll_transmit`].
struct TxBuf {
    buf: [u8; TX_CAP],
    start: usize,
    end: usize,
}

impl TxBuf {
    /// Encodes `msg` in protocol `version` at the end; false if it has no
    /// room.
    fn push(&mut self, msg: &Message<'_>, version: u16, request_id: u64) -> bool {
        self.push_reserving(msg, version, request_id, 0)
    }

    /// [`push`](Self::push), only if `reserve` bytes stay free after it.
    fn push_reserving(
        &mut self,
        msg: &Message<'_>,
        version: u16,
        request_id: u64,
        reserve: usize,
    ) -> bool {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let len = msg.encoded_len_for(version);
        if TX_CAP - (self.end - self.start) < len.saturating_add(reserve) {
            return false;
        }
        if TX_CAP - self.end < len && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match msg.encode_for(version, request_id, &mut self.buf[self.end..]) {
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

    use thinagent_protocol::{Decoded, MessageType, decode_frame};

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
            version: OFFERED_VERSION_MAX + 1,
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

    /// Version 2: negotiation, the session version on every frame, inline
    /// content (§5.3.1, §6.6).
    mod v2 {
        use proptest::prelude::*;
        use thinagent_protocol::MAX_INLINE_LEN;

        use super::*;

        /// A session with room for long paths.
        type L = Session<4, 8192, 2>;

        fn inline_config(fail_mode: FailMode) -> SessionConfig<'static> {
            config(fail_mode).with_inline_content(true)
        }

        fn ack2(max_inline_len: u32) -> HelloAck {
            HelloAck {
                version: 2,
                max_inline_len,
                ..ack()
            }
        }

        /// Header version, request id and message of a whole frame.
        fn framev(b: &[u8]) -> (u16, u64, Message<'_>) {
            match decode_frame(b).unwrap() {
                Decoded::Frame { frame, .. } => (frame.version, frame.request_id, frame.message),
                Decoded::Incomplete { .. } => panic!("partial"),
            }
        }

        fn drain<const N: usize, const P: usize, const R: usize>(
            s: &mut Session<N, P, R>,
        ) -> Vec<Vec<u8>> {
            let mut bytes = Vec::new();
            let mut out = [0u8; 4096];
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

        fn evs<const N: usize, const P: usize, const R: usize>(
            s: &mut Session<N, P, R>,
        ) -> Vec<SessionEvent> {
            core::iter::from_fn(|| s.poll_event()).collect()
        }

        fn connect<const N: usize, const P: usize, const R: usize>(
            s: &mut Session<N, P, R>,
            ack: HelloAck,
        ) {
            s.start(ms(0));
            let hello = drain(s);
            let (_, hello_id, _) = framev(&hello[0]);
            s.receive(&enc(Message::HelloAck(ack), hello_id), ms(1));
            assert!(s.is_connected());
            assert_eq!(
                s.poll_event(),
                Some(SessionEvent::Connected {
                    version: ack.version
                })
            );
        }

        fn v2_connected(max_inline_len: u32) -> Box<S> {
            let mut s = Box::new(S::new(&inline_config(FailMode::Open)));
            connect(&mut *s, ack2(max_inline_len));
            s
        }

        fn event_with<'a>(path: &'a str, size: u64, content: InlineContent<'a>) -> FileEvent<'a> {
            FileEvent {
                file: FileIdentity {
                    size,
                    ..FileIdentity::default()
                },
                content,
                ..open_event(path)
            }
        }

        fn whole(bytes: &[u8]) -> InlineContent<'_> {
            InlineContent {
                bytes,
                whole_file: true,
            }
        }

        /// The one FileEvent sent: header version, id, content.
        fn sent_event(frames: &[Vec<u8>]) -> (u16, u64, Vec<u8>, bool) {
            assert_eq!(frames.len(), 1, "one frame");
            let (v, id, msg) = framev(&frames[0]);
            let Message::FileEvent(e) = msg else {
                panic!("{msg:?}")
            };
            (v, id, e.content.bytes.to_vec(), e.content.whole_file)
        }

        #[test]
        fn hello_offers_versions_1_to_2_and_inline_content_when_configured() {
            for (config, inline) in [
                (config(FailMode::Open), false),
                (inline_config(FailMode::Open), true),
            ] {
                let mut s = Box::new(S::new(&config));
                s.start(ms(0));
                let frames = drain(&mut *s);
                let (v, _, Message::Hello(h)) = framev(&frames[0]) else {
                    panic!()
                };
                assert_eq!((v, h.version_min, h.version_max), (1, 1, 2));
                assert_eq!(
                    h.capabilities.contains(Capabilities::INLINE_CONTENT),
                    inline
                );
                assert!(h.capabilities.contains(Capabilities::READ_CONTENT));
                assert_eq!((s.version(), s.max_inline_len()), (1, 0));
            }
            let off = inline_config(FailMode::Open).with_inline_content(false);
            assert_eq!(off.capabilities, Capabilities::READ_CONTENT);
        }

        #[test]
        fn a_version_2_session_puts_2_on_every_frame_it_sends() {
            let mut s = v2_connected(MAX_INLINE_LEN);
            assert_eq!((s.version(), s.max_inline_len()), (2, MAX_INLINE_LEN));
            let q = s.submit(&open_event("/a"), ms(2)).unwrap();
            let mut frames = drain(&mut *s);
            let hb = Heartbeat {
                nonce: 4,
                timestamp_ms: 5,
            };
            let mut bytes = Vec::new();
            let mut out = [0u8; 256];
            let n = Message::Ping(hb).encode_for(2, 31, &mut out).unwrap();
            bytes.extend_from_slice(&out[..n]);
            let req = ReadRequest {
                event_id: q,
                offset: 0,
                length: 3,
            };
            let n = Message::ReadRequest(req)
                .encode_for(2, 32, &mut out)
                .unwrap();
            bytes.extend_from_slice(&out[..n]);
            s.receive(&bytes, ms(3));
            let _ = events(&mut s);
            s.read_completed(32, ReadOutcome::EndOfFile(b"abc"), ms(4))
                .unwrap();
            s.on_timeout(ms(10_004));
            s.close(ms(10_005));
            frames.extend(drain(&mut *s));
            let kinds: Vec<(u16, MessageType)> = frames
                .iter()
                .map(|f| {
                    let (v, _, m) = framev(f);
                    (v, m.message_type())
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    (2, MessageType::FileEvent),
                    (2, MessageType::Pong),
                    (2, MessageType::ReadData),
                    (2, MessageType::Ping),
                    (2, MessageType::Goodbye),
                ]
            );
        }

        #[test]
        fn a_version_2_session_skips_frames_of_version_1_except_frozen_types() {
            let mut s = v2_connected(0);
            let q = s.submit(&open_event("/a"), ms(2)).unwrap();
            drain(&mut *s);
            // A version-1 Verdict in a version-2 session: skipped with
            // Error(VersionUnsupported) (itself version 2), the query stays.
            s.receive(&verdict(Decision::Deny, 0, "", q), ms(3));
            let frames = drain(&mut *s);
            let (v, id, msg) = framev(&frames[0]);
            assert_eq!((v, id), (2, q));
            assert!(matches!(msg, Message::Error(e) if e.code == ErrorCode::VersionUnsupported));
            assert!(events(&mut s).is_empty());
            assert_eq!(s.in_flight(), 1);
            // A version-1 Error is accepted (frozen) and ignored.
            s.receive(
                &enc(
                    Message::Error(ErrorMessage {
                        code: ErrorCode::Internal,
                        text: "",
                    }),
                    0,
                ),
                ms(4),
            );
            assert!(drain(&mut *s).is_empty());
            // The version-2 Verdict answers it.
            let mut out = [0u8; 256];
            let n = Message::Verdict(Verdict {
                decision: Decision::Deny,
                cache_ttl_secs: 0,
                threat_name: "T",
            })
            .encode_for(2, q, &mut out)
            .unwrap();
            s.receive(&out[..n], ms(5));
            assert!(matches!(
                events(&mut s)[..],
                [SessionEvent::Verdict(v)] if v.query == q && !v.allows()
            ));
            // A version-1 Goodbye closes (frozen).
            s.receive(
                &enc(
                    Message::Goodbye(Goodbye {
                        reason: GoodbyeReason::Shutdown,
                    }),
                    0,
                ),
                ms(6),
            );
            assert!(s.is_closed());
        }

        #[test]
        fn frames_before_hello_ack_carry_version_1() {
            // An unknown type before HelloAck: skipped with a version-1
            // Error; then a HelloAck choosing 3 (not offered): fatal, the
            // Error and Goodbye still version 1 (no version was accepted).
            let mut s = Box::new(S::new(&inline_config(FailMode::Open)));
            s.start(ms(0));
            let hello = drain(&mut *s);
            let (_, hello_id, _) = framev(&hello[0]);
            let mut unknown = enc(Message::Ping(Heartbeat::default()), 9);
            unknown[6] = 0x77;
            s.receive(&unknown, ms(1));
            let bad = HelloAck {
                version: 3,
                ..ack()
            };
            s.receive(&enc(Message::HelloAck(bad), hello_id), ms(2));
            assert!(s.is_closed());
            let frames = drain(&mut *s);
            let got: Vec<(u16, MessageType)> = frames
                .iter()
                .map(|f| {
                    let (v, _, m) = framev(f);
                    (v, m.message_type())
                })
                .collect();
            assert_eq!(
                got,
                [
                    (1, MessageType::Error),
                    (1, MessageType::Error),
                    (1, MessageType::Goodbye)
                ]
            );
        }

        #[test]
        fn a_version_1_host_gets_a_version_1_session_without_content() {
            let mut s = Box::new(S::new(&inline_config(FailMode::Open)));
            connect(&mut *s, ack());
            assert_eq!((s.version(), s.max_inline_len()), (1, 0));
            let sub = s
                .submit_detailed(&event_with("/a", 3, whole(b"abc")), ms(2))
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (0, false));
            let (v, id, content, whole_file) = sent_event(&drain(&mut *s));
            assert_eq!((v, id, content.len(), whole_file), (1, sub.query, 0, false));
        }

        #[test]
        fn whole_small_file_goes_inline_and_is_answered_without_reads() {
            let mut s = v2_connected(MAX_INLINE_LEN);
            let data = b"X5O!P%@AP";
            let sub = s
                .submit_detailed(&event_with("/eicar", 9, whole(data)), ms(2))
                .unwrap();
            assert_eq!(
                sub,
                Submitted {
                    query: sub.query,
                    content_len: 9,
                    whole_file: true
                }
            );
            let (v, id, content, whole_file) = sent_event(&drain(&mut *s));
            assert_eq!(
                (v, id, &content[..], whole_file),
                (2, sub.query, &data[..], true)
            );
            let mut out = [0u8; 256];
            let n = Message::Verdict(Verdict {
                decision: Decision::Deny,
                cache_ttl_secs: 60,
                threat_name: "EICAR",
            })
            .encode_for(2, sub.query, &mut out)
            .unwrap();
            s.receive(&out[..n], ms(3));
            assert!(matches!(
                events(&mut s)[..],
                [SessionEvent::Verdict(v)]
                    if v.query == sub.query && !v.allows() && v.threat.as_str() == "EICAR"
            ));
        }

        #[test]
        fn an_empty_file_is_content_len_0_with_whole_file() {
            let mut s = v2_connected(MAX_INLINE_LEN);
            let sub = s
                .submit_detailed(&event_with("/empty", 0, whole(b"")), ms(2))
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (0, true));
            let (_, _, content, whole_file) = sent_event(&drain(&mut *s));
            assert_eq!((content.len(), whole_file), (0, true));
        }

        #[test]
        fn content_is_cut_to_max_inline_len_and_whole_file_cleared() {
            let mut s = v2_connected(10);
            assert_eq!(s.inline_budget(2), 10);
            let data = [7u8; 20];
            let sub = s
                .submit_detailed(&event_with("/a", 20, whole(&data)), ms(2))
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (10, false));
            let (_, _, content, whole_file) = sent_event(&drain(&mut *s));
            assert_eq!((&content[..], whole_file), (&data[..10], false));
        }

        #[test]
        fn whole_file_is_cleared_when_the_length_is_not_the_size() {
            let mut s = v2_connected(MAX_INLINE_LEN);
            // The caller claims the whole file, but the size says 6.
            let sub = s
                .submit_detailed(&event_with("/a", 6, whole(b"abcde")), ms(2))
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (5, false));
            let (_, _, content, whole_file) = sent_event(&drain(&mut *s));
            assert_eq!((&content[..], whole_file), (&b"abcde"[..], false));
        }

        #[test]
        fn a_long_path_leaves_less_room_for_content() {
            let mut s = Box::new(L::new(&inline_config(FailMode::Open)));
            connect(
                &mut *s,
                HelloAck {
                    max_frame_len: 4096,
                    max_read_chunk: 4096 - 56,
                    ..ack2(4096 - 89)
                },
            );
            let path = "/".repeat(4000);
            assert_eq!(s.inline_budget(4000), 4096 - 24 - 64 - 4000);
            let data = [1u8; 200];
            let sub = s
                .submit_detailed(&event_with(&path, 200, whole(&data)), ms(2))
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (8, false));
            let frames = drain(&mut *s);
            assert_eq!(frames[0].len(), 4096, "exactly the host's limit");
            // A path that fills the frame: no room, no content, still sent.
            let path = "/".repeat(4096 - 88);
            let sub = s
                .submit_detailed(&event_with(&path, 200, whole(&data)), ms(3))
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (0, false));
            let (_, id, content, _) = sent_event(&drain(&mut *s));
            assert_eq!((id, content.len()), (sub.query, 0));
        }

        #[test]
        fn an_event_queued_before_hello_ack_that_outgrows_the_host_limit_is_failed_locally() {
            let mut s = Box::new(L::new(&inline_config(FailMode::Closed)));
            s.start(ms(0));
            let hello = drain(&mut *s);
            let (_, hello_id, _) = framev(&hello[0]);
            // Fits the protocol's limit in version 1, not the host's 4096
            // once version 2 adds 8 bytes.
            let path = "/".repeat(4096 - 24 - 56);
            let q = s.submit(&open_event(&path), ms(1)).unwrap();
            let small = s.submit(&open_event("/b"), ms(1)).unwrap();
            let ack = HelloAck {
                max_frame_len: 4096,
                max_read_chunk: 4096 - 56,
                ..ack2(0)
            };
            s.receive(&enc(Message::HelloAck(ack), hello_id), ms(2));
            let frames = drain(&mut *s);
            let (_, id, _, _) = sent_event(&frames);
            assert_eq!(id, small);
            let ev = evs(&mut *s);
            assert!(ev.iter().any(|e| matches!(e,
                SessionEvent::Verdict(v) if v.query == q && !v.allows()
                    && v.source == VerdictSource::Local(FailMode::Closed))));
        }

        #[test]
        fn no_content_without_the_capability_or_with_max_inline_len_0() {
            // The host offers inline content, but this guest did not
            // announce INLINE_CONTENT.
            let mut s = Box::new(S::new(&config(FailMode::Open)));
            connect(&mut *s, ack2(MAX_INLINE_LEN));
            assert_eq!(s.max_inline_len(), 0);
            let sub = s
                .submit_detailed(&event_with("/a", 3, whole(b"abc")), ms(2))
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (0, false));
            let (v, _, content, whole_file) = sent_event(&drain(&mut *s));
            assert_eq!((v, content.len(), whole_file), (2, 0, false));
            // The host turned inline content off: not even an empty file.
            let mut s = v2_connected(0);
            let sub = s
                .submit_detailed(&event_with("/e", 0, whole(b"")), ms(2))
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (0, false));
            let (_, _, content, whole_file) = sent_event(&drain(&mut *s));
            assert_eq!((content.len(), whole_file), (0, false));
        }

        #[test]
        fn content_submitted_before_hello_ack_is_dropped_and_the_event_queued() {
            let mut s = Box::new(S::new(&inline_config(FailMode::Open)));
            s.start(ms(0));
            let hello = drain(&mut *s);
            let (_, hello_id, _) = framev(&hello[0]);
            let sub = s
                .submit_detailed(&event_with("/a", 3, whole(b"abc")), ms(1))
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (0, false));
            assert!(drain(&mut *s).is_empty());
            s.receive(
                &enc(Message::HelloAck(ack2(MAX_INLINE_LEN)), hello_id),
                ms(2),
            );
            let (v, id, content, whole_file) = sent_event(&drain(&mut *s));
            assert_eq!((v, id, content.len(), whole_file), (2, sub.query, 0, false));
        }

        #[test]
        fn content_beyond_max_events_in_flight_waits_without_content() {
            let mut s = Box::new(S::new(&inline_config(FailMode::Open)));
            connect(
                &mut *s,
                HelloAck {
                    max_events_in_flight: 1,
                    ..ack2(MAX_INLINE_LEN)
                },
            );
            let a = s
                .submit_detailed(&event_with("/a", 1, whole(b"a")), ms(2))
                .unwrap();
            let b = s
                .submit_detailed(&event_with("/b", 1, whole(b"b")), ms(2))
                .unwrap();
            assert_eq!((a.content_len, b.content_len), (1, 0));
            let (_, id, _, _) = sent_event(&drain(&mut *s));
            assert_eq!(id, a.query);
            s.receive(
                &{
                    let mut out = [0u8; 64];
                    let n = Message::Verdict(Verdict {
                        decision: Decision::Allow,
                        cache_ttl_secs: 0,
                        threat_name: "",
                    })
                    .encode_for(2, a.query, &mut out)
                    .unwrap();
                    out[..n].to_vec()
                },
                ms(3),
            );
            let (_, id, content, _) = sent_event(&drain(&mut *s));
            assert_eq!((id, content.len()), (b.query, 0));
        }

        #[test]
        fn content_that_finds_the_outgoing_buffer_full_waits_without_content() {
            const BIG: u32 = (MAX_FRAME_LEN - 24 - 32) as u32;
            let mut s = Box::new(S::new(&inline_config(FailMode::Open)));
            connect(
                &mut *s,
                HelloAck {
                    max_read_chunk: BIG,
                    ..ack2(MAX_INLINE_LEN)
                },
            );
            let q = s.submit(&open_event("/a"), ms(2)).unwrap();
            drain(&mut *s);
            let mut out = [0u8; 64];
            let req = ReadRequest {
                event_id: q,
                offset: 0,
                length: BIG,
            };
            let n = Message::ReadRequest(req)
                .encode_for(2, 70, &mut out)
                .unwrap();
            s.receive(&out[..n], ms(3));
            let _ = events(&mut s);
            let data = std::vec![9u8; BIG as usize];
            s.read_completed(70, ReadOutcome::Data(&data), ms(4))
                .unwrap();
            // The full ReadData is still in the buffer: a 64 KiB inline
            // event does not fit beside it.
            let content = std::vec![1u8; MAX_INLINE_LEN as usize - 10];
            let sub = s
                .submit_detailed(
                    &event_with("/big", content.len() as u64, whole(&content)),
                    ms(5),
                )
                .unwrap();
            assert_eq!((sub.content_len, sub.whole_file), (0, false));
            let frames = drain(&mut *s);
            let ids: Vec<u64> = frames.iter().map(|f| framev(f).1).collect();
            assert_eq!(ids, [70, sub.query]);
            let (_, _, Message::FileEvent(e)) = framev(&frames[1]) else {
                panic!()
            };
            assert!(e.content.is_none());
            // With the buffer drained, the next one goes inline.
            let sub = s
                .submit_detailed(
                    &event_with("/big2", content.len() as u64, whole(&content)),
                    ms(6),
                )
                .unwrap();
            assert_eq!(
                (sub.content_len as usize, sub.whole_file),
                (content.len(), true)
            );
        }

        #[test]
        fn a_read_request_for_a_whole_file_event_is_answered_as_any_read() {
            let mut s = v2_connected(MAX_INLINE_LEN);
            let sub = s
                .submit_detailed(&event_with("/a", 3, whole(b"abc")), ms(2))
                .unwrap();
            assert!(sub.whole_file);
            drain(&mut *s);
            let mut out = [0u8; 64];
            let req = ReadRequest {
                event_id: sub.query,
                offset: 0,
                length: 3,
            };
            let n = Message::ReadRequest(req)
                .encode_for(2, 5, &mut out)
                .unwrap();
            s.receive(&out[..n], ms(3));
            assert_eq!(
                events(&mut s),
                [SessionEvent::ReadJob {
                    read_id: 5,
                    query: sub.query,
                    offset: 0,
                    length: 3
                }]
            );
            s.read_completed(5, ReadOutcome::EndOfFile(b"abc"), ms(4))
                .unwrap();
            let frames = drain(&mut *s);
            let (v, id, Message::ReadData(d)) = framev(&frames[0]) else {
                panic!()
            };
            assert_eq!((v, id, d.data()), (2, 5, &b"abc"[..]));
        }

        #[test]
        fn reset_forgets_the_version_of_the_previous_connection() {
            let mut s = v2_connected(MAX_INLINE_LEN);
            assert_eq!(s.version(), 2);
            s.reset(&inline_config(FailMode::Open));
            assert_eq!((s.version(), s.max_inline_len()), (1, 0));
            // The new connection's host speaks only version 1.
            connect(&mut *s, ack());
            let q = s.submit(&open_event("/a"), ms(2)).unwrap();
            let (v, id, _, _) = sent_event(&drain(&mut *s));
            assert_eq!((v, id), (1, q));
        }

        #[test]
        fn the_caller_buffer_is_free_once_submit_returns() {
            let mut s = v2_connected(MAX_INLINE_LEN);
            let mut buf = *b"first bytes";
            let sub = s
                .submit_detailed(&event_with("/a", 11, whole(&buf)), ms(2))
                .unwrap();
            buf.fill(0);
            let (_, id, content, _) = sent_event(&drain(&mut *s));
            assert_eq!((id, &content[..]), (sub.query, &b"first bytes"[..]));
        }

        proptest! {
            /// Whatever the caller passes and the host announced, the
            /// FileEvent that goes out keeps §5.3.1: no more than
            /// max_inline_len, a frame within the host's max_frame_len, a
            /// prefix of the given bytes, WHOLE_FILE only for every byte of a
            /// file of that size; and it says what it sent.
            #[test]
            fn inline_content_always_keeps_section_5_3_1(
                version in 1u16..=2,
                inline_cap in any::<bool>(),
                max_frame_len in 4096u32..=65_536,
                max_inline in 0u32..=MAX_INLINE_LEN,
                path_len in 1usize..6000,
                content_len in 0usize..70_000,
                size_delta in -2i64..=2,
                whole_file in any::<bool>(),
            ) {
                let max_inline = if version == 1 {
                    0
                } else {
                    max_inline.min(max_frame_len - 89)
                };
                let ack = HelloAck {
                    version,
                    max_frame_len,
                    max_read_chunk: max_frame_len - 56,
                    max_inline_len: max_inline,
                    ..ack()
                };
                let config = config(FailMode::Open).with_inline_content(inline_cap);
                let mut s = Box::new(L::new(&config));
                connect(&mut *s, ack);
                let path = "/".repeat(path_len);
                let data = std::vec![0xA5u8; content_len];
                let size = (content_len as i64 + size_delta).max(0) as u64;
                let content = InlineContent { bytes: &data, whole_file };
                let sub = s.submit_detailed(&event_with(&path, size, content), ms(2)).unwrap();
                let frames = drain(&mut *s);
                let events = evs(&mut *s);
                let fixed = if version == 1 { 56 } else { 64 };
                if 24 + fixed + path_len > max_frame_len as usize {
                    // Cannot be queried: decided locally, nothing sent.
                    prop_assert!(frames.is_empty());
                    prop_assert!(matches!(events[..], [SessionEvent::Verdict(v)]
                        if v.source == VerdictSource::Local(FailMode::Open)));
                    return Ok(());
                }
                prop_assert_eq!(frames.len(), 1);
                prop_assert!(frames[0].len() <= max_frame_len as usize);
                let (v, id, msg) = framev(&frames[0]);
                prop_assert_eq!((v, id), (version, sub.query));
                let Message::FileEvent(e) = msg else { panic!("{msg:?}") };
                let sent = e.content;
                prop_assert_eq!(sent.bytes.len(), sub.content_len as usize);
                prop_assert_eq!(sent.whole_file, sub.whole_file);
                prop_assert!(sent.bytes.len() <= max_inline as usize);
                prop_assert_eq!(sent.bytes, &data[..sent.bytes.len()]);
                if !inline_cap || version == 1 || max_inline == 0 {
                    prop_assert!(sent.is_none());
                }
                if sent.whole_file {
                    prop_assert!(whole_file && sent.bytes.len() == content_len);
                    prop_assert_eq!(sent.bytes.len() as u64, size);
                } else if inline_cap && version == 2 && whole_file && max_inline > 0
                    && size == content_len as u64
                    && content_len <= s.inline_budget(path_len)
                {
                    prop_assert!(false, "a whole file that fits lost WHOLE_FILE");
                }
                let budget = (max_inline as usize)
                    .min((max_frame_len as usize).saturating_sub(88 + path_len));
                if inline_cap && version == 2 && max_inline > 0 {
                    prop_assert_eq!(sent.bytes.len(), content_len.min(budget));
                }
            }
        }
    }

    // ----- host actions (protocol §14) ---------------------------------

    mod host_actions {
        use thinagent_protocol::{
            Exclusion, ExclusionKind, Exclusions, Policy, Remediate, RemediateAction, ScanCancel,
            ScanFlags, ScanTree,
        };

        use super::*;

        const ACTIONS: Capabilities = Capabilities(
            Capabilities::READ_CONTENT.0
                | Capabilities::REMEDIATE.0
                | Capabilities::SCAN_TREE.0
                | Capabilities::POLICY.0
                | Capabilities::RESTORE.0,
        );

        fn enc2(msg: Message<'_>, id: u64) -> Vec<u8> {
            let mut buf = std::vec![0u8; MAX_FRAME_LEN];
            let n = msg.encode_for(2, id, &mut buf).unwrap();
            buf.truncate(n);
            buf
        }

        /// A version-2 session announcing `caps`.
        fn connected_v2(caps: Capabilities) -> Box<S> {
            let mut s = Box::new(S::new(&SessionConfig {
                capabilities: caps,
                ..config(FailMode::Open)
            }));
            s.start(ms(0));
            let frames = sent(&mut s);
            let (hello_id, msg) = frame(&frames[0]);
            let Message::Hello(h) = msg else { panic!() };
            assert_eq!(
                h.capabilities.contains(Capabilities::RESTORE),
                caps.contains(Capabilities::RESTORE)
            );
            assert_eq!(
                h.capabilities.contains(Capabilities::REMEDIATE),
                caps.contains(Capabilities::REMEDIATE)
            );
            let ack = HelloAck {
                version: 2,
                ..ack()
            };
            s.receive(&enc(Message::HelloAck(ack), hello_id), ms(1));
            assert_eq!(events(&mut s), [SessionEvent::Connected { version: 2 }]);
            s
        }

        fn remediate(path: &str) -> Message<'_> {
            Message::Remediate(Remediate {
                action: RemediateAction::Delete,
                deadline_ms: 1000,
                file: FileIdentity::default(),
                path: FilePath::Utf8(path),
            })
        }

        fn scan(path: &str) -> Message<'_> {
            Message::ScanTree(ScanTree {
                flags: ScanFlags::default(),
                max_in_flight: 2,
                max_depth: 0,
                progress_interval_ms: 0,
                max_file_size: 0,
                root: FilePath::Utf8(path),
            })
        }

        fn answers(s: &mut S) -> Vec<(u64, Message<'static>)> {
            sent(s)
                .into_iter()
                .map(|f| {
                    let f: &'static [u8] = Box::leak(f.into_boxed_slice());
                    frame(f)
                })
                .collect()
        }

        #[test]
        fn without_the_capability_every_request_is_refused_unsupported() {
            let mut s = connected_v2(Capabilities::READ_CONTENT);
            s.receive(&enc2(remediate("/a"), 5), ms(2));
            s.receive(&enc2(scan("/"), 6), ms(2));
            s.receive(&enc2(Message::ScanCancel(ScanCancel), 6), ms(2));
            assert!(events(&mut s).is_empty());
            let out = answers(&mut s);
            assert!(
                matches!(
                    out[..],
                    [
                        (
                            5,
                            Message::ActionResult(ActionResult {
                                status: ActionStatus::Unsupported,
                                ..
                            })
                        ),
                        (
                            6,
                            Message::ScanDone(ScanDone {
                                status: ScanStatus::Unsupported,
                                ..
                            })
                        ),
                    ]
                ),
                "{out:?}"
            );
            assert!(s.is_connected());
        }

        #[test]
        fn a_taken_request_is_answered_once_by_the_embedder() {
            let mut s = connected_v2(ACTIONS);
            s.receive(&enc2(remediate("/srv/x"), 7), ms(2));
            assert_eq!(events(&mut s), [SessionEvent::HostRequest]);
            assert!(
                sent(&mut s).is_empty(),
                "nothing is answered by the session"
            );
            let req = s.host_request().unwrap();
            assert_eq!(req.id, 7);
            let Message::Remediate(r) = req.message else {
                panic!()
            };
            assert_eq!(r.path, FilePath::Utf8("/srv/x"));
            s.pop_host_request();
            assert!(s.host_request().is_none());
            // A second request with the same id while the first waits: fatal.
            let done = ActionResult::status(ActionStatus::Done);
            assert_eq!(s.complete_action(8, done), Err(AnswerError::NotOutstanding));
            assert_eq!(s.complete_action(7, done), Ok(()));
            assert_eq!(s.complete_action(7, done), Err(AnswerError::NotOutstanding));
            let out = answers(&mut s);
            assert!(matches!(
                out[..],
                [(
                    7,
                    Message::ActionResult(ActionResult {
                        status: ActionStatus::Done,
                        ..
                    })
                )]
            ));
            // The id is free again once answered (§7).
            s.receive(&enc2(remediate("/srv/y"), 7), ms(3));
            assert_eq!(events(&mut s), [SessionEvent::HostRequest]);
        }

        #[test]
        fn a_reused_outstanding_id_is_fatal() {
            let mut s = connected_v2(ACTIONS);
            s.receive(&enc2(remediate("/srv/x"), 7), ms(2));
            s.receive(&enc2(remediate("/srv/y"), 7), ms(2));
            let out = answers(&mut s);
            assert!(
                matches!(
                    out[..],
                    [
                        (
                            7,
                            Message::Error(ErrorMessage {
                                code: ErrorCode::UnexpectedMessage,
                                ..
                            })
                        ),
                        (0, Message::Goodbye(_)),
                    ]
                ),
                "{out:?}"
            );
            assert!(s.is_closed());
            assert_eq!(
                s.complete_action(7, ActionResult::status(ActionStatus::Done)),
                Err(AnswerError::NotOutstanding)
            );
        }

        #[test]
        fn requests_wait_in_order_and_a_full_inbox_answers_busy() {
            let mut s: Box<Session<4, 64, 2, 300>> = Box::new(Session::new(&SessionConfig {
                capabilities: ACTIONS,
                ..config(FailMode::Open)
            }));
            s.start(ms(0));
            let mut out = [0u8; 4096];
            let n = s.poll_transmit(&mut out).unwrap();
            let (hello_id, _) = frame(&out[..n]);
            s.receive(
                &enc(
                    Message::HelloAck(HelloAck {
                        version: 2,
                        ..ack()
                    }),
                    hello_id,
                ),
                ms(1),
            );
            let long = "/p".repeat(60);
            // 24 + 48 + 120 bytes each: one fits 300, the second does not;
            // a short one (78 bytes) still fits behind the first.
            s.receive(&enc2(remediate(&long), 10), ms(2));
            s.receive(&enc2(remediate(&long), 11), ms(2));
            s.receive(&enc2(remediate("/short"), 12), ms(2));
            let n = s.poll_transmit(&mut out).unwrap();
            let (id, msg) = frame(&out[..n]);
            assert_eq!(id, 11);
            assert!(matches!(
                msg,
                Message::ActionResult(ActionResult {
                    status: ActionStatus::Busy,
                    ..
                })
            ));
            assert_eq!(s.host_request().map(|r| r.id), Some(10));
            s.pop_host_request();
            assert_eq!(s.host_request().map(|r| r.id), Some(12));
            s.pop_host_request();
            assert_eq!(s.host_request(), None);
        }

        #[test]
        fn one_scan_at_a_time_and_a_cancel_reaches_the_embedder() {
            let mut s = connected_v2(ACTIONS);
            s.receive(&enc2(scan("/data"), 20), ms(2));
            s.receive(&enc2(scan("/other"), 21), ms(2));
            let out = answers(&mut s);
            assert!(matches!(
                out[..],
                [(
                    21,
                    Message::ScanDone(ScanDone {
                        status: ScanStatus::Busy,
                        ..
                    })
                )]
            ));
            assert_eq!(events(&mut s), [SessionEvent::HostRequest]);
            let req = s.host_request().unwrap();
            assert!(
                matches!(req.message, Message::ScanTree(t) if t.root == FilePath::Utf8("/data"))
            );
            s.pop_host_request();
            let counters = ScanCounters {
                files_seen: 3,
                ..ScanCounters::default()
            };
            assert!(s.scan_progress(20, counters));
            assert!(!s.scan_progress(99, counters));
            s.receive(&enc2(Message::ScanCancel(ScanCancel), 20), ms(3));
            assert_eq!(events(&mut s), [SessionEvent::ScanCancelled { id: 20 }]);
            let done = ScanDone {
                counters,
                status: ScanStatus::Cancelled,
                error: None,
            };
            assert_eq!(s.scan_done(20, done), Ok(()));
            assert_eq!(s.scan_done(20, done), Err(AnswerError::NotOutstanding));
            let out = answers(&mut s);
            assert!(
                matches!(
                    out[..],
                    [
                        (20, Message::ScanProgress(_)),
                        (
                            20,
                            Message::ScanDone(ScanDone {
                                status: ScanStatus::Cancelled,
                                ..
                            })
                        ),
                    ]
                ),
                "{out:?}"
            );
        }

        #[test]
        fn a_scan_cancelled_before_it_was_taken_ends_at_once() {
            let mut s = connected_v2(ACTIONS);
            s.receive(&enc2(scan("/data"), 20), ms(2));
            s.receive(&enc2(Message::ScanCancel(ScanCancel), 20), ms(2));
            assert!(s.host_request().is_none());
            let out = answers(&mut s);
            assert!(matches!(
                out[..],
                [(
                    20,
                    Message::ScanDone(ScanDone {
                        status: ScanStatus::Cancelled,
                        ..
                    })
                )]
            ));
            // No event for a request that is already gone.
            assert!(
                events(&mut s)
                    .iter()
                    .all(|e| *e != SessionEvent::HostRequest)
            );
        }

        /// An `OnDemand` event of a scan (§14.4) for `path`.
        fn on_demand_event(path: &str) -> FileEvent<'_> {
            FileEvent {
                kind: EventKind::OnDemand,
                process_id: 0,
                desired_access: 0,
                ..open_event(path)
            }
        }

        #[test]
        fn on_demand_events_wait_behind_on_access_ones_and_have_a_budget() {
            let mut s = connected_v2(ACTIONS);
            // ack(): 8 events in flight: half for on-demand.
            assert_eq!(s.on_demand_capacity(16), 4);
            assert_eq!(s.on_demand_capacity(2), 2);
            let od = on_demand_event("/data/f");
            let a = s.submit(&od, ms(2)).unwrap();
            let b = s.submit(&open_event("/tmp/open"), ms(2)).unwrap();
            assert_eq!(s.on_demand_capacity(16), 3);
            let out = answers(&mut s);
            let ids: Vec<u64> = out.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, [b, a], "the on-access event goes first");
        }

        #[test]
        fn an_on_demand_event_waits_longer_than_an_open() {
            let mut s = connected_v2(ACTIONS);
            let od = on_demand_event("/data/f");
            let a = s.submit(&od, ms(2)).unwrap();
            let b = s.submit(&open_event("/tmp/open"), ms(2)).unwrap();
            // The open's deadline (2 000 ms) passes: only it is decided.
            s.on_timeout(ms(2002));
            let decided: Vec<QueryId> = events(&mut s)
                .iter()
                .filter_map(|e| match e {
                    SessionEvent::Verdict(v) => Some(v.query),
                    _ => None,
                })
                .collect();
            assert_eq!(decided, [b]);
            let limit = u64::from(thinagent_protocol::ON_DEMAND_QUERY_TIMEOUT_MS);
            // The host stays alive (a Ping every 5 s) while the scan's
            // file takes its time.
            let mut t = 5_000;
            while t <= limit {
                let ping = Message::Ping(Heartbeat {
                    nonce: t,
                    timestamp_ms: t,
                });
                s.receive(&enc(ping, t), ms(t));
                s.on_timeout(ms(t));
                sent(&mut s);
                t += 5_000;
            }
            s.on_timeout(ms(limit + 1));
            assert!(
                !events(&mut s)
                    .iter()
                    .any(|e| matches!(e, SessionEvent::Verdict(_)))
            );
            s.on_timeout(ms(limit + 2));
            assert!(events(&mut s).iter().any(|e| matches!(
                e,
                SessionEvent::Verdict(v) if v.query == a && v.source == VerdictSource::Deadline(FailMode::Open)
            )));
        }

        #[test]
        fn an_on_demand_event_in_a_version_1_session_is_decided_locally() {
            let mut s = connected(FailMode::Closed);
            let od = on_demand_event("/data/f");
            let q = s.submit(&od, ms(2)).unwrap();
            assert!(sent(&mut s).is_empty());
            assert!(matches!(
                events(&mut s)[..],
                [SessionEvent::Verdict(v)] if v.query == q && v.source == VerdictSource::Local(FailMode::Closed)
            ));
        }

        #[test]
        fn a_policy_is_handed_over_whole_and_health_goes_out_in_version_2_only() {
            let mut s = connected_v2(ACTIONS);
            let mut buf = [0u8; 256];
            let exclusions = Exclusions::write(
                [Exclusion {
                    kind: ExclusionKind::PathPrefix,
                    value: FilePath::Utf8("/proc"),
                }],
                &mut buf,
            )
            .unwrap();
            let policy = Policy {
                version: 4,
                deadline_ms: 1000,
                fail_mode: Some(thinagent_protocol::FailMode::Closed),
                debug_level: None,
                exclusions: Some(exclusions),
                query_timeout_ms: None,
                cache_ttl_max_secs: None,
                max_scan_size: Some(1 << 20),
            };
            s.receive(&enc2(Message::Policy(policy), 30), ms(2));
            assert_eq!(events(&mut s), [SessionEvent::HostRequest]);
            let req = s.host_request().unwrap();
            assert_eq!(req.message, Message::Policy(policy));
            s.pop_host_request();
            let applied = ActionResult {
                value: 4,
                ..ActionResult::status(ActionStatus::Done)
            };
            s.complete_action(30, applied).unwrap();
            let health = thinagent_protocol::Health {
                policy_version: 4,
                state: thinagent_protocol::HealthState::ON_ACCESS,
                fail_mode: thinagent_protocol::FailMode::Closed,
                uptime_ms: 5,
                events_sent: 0,
                cache_hits: 0,
                denied: 0,
                fail_decisions: 0,
                sessions: 1,
            };
            assert!(s.send_health(&health));
            let out = answers(&mut s);
            assert!(
                matches!(
                    out[..],
                    [(30, Message::ActionResult(ActionResult { value: 4, .. })), (0, Message::Health(h))] if h == health
                ),
                "{out:?}"
            );
            let mut v1 = connected(FailMode::Open);
            assert!(!v1.send_health(&health));
        }
    }

    // ----- Restore (protocol §14.7) and backpressure --------------------

    mod restore {
        use proptest::prelude::*;
        use thinagent_protocol::{Restore, RestoreData};

        use super::*;

        const CAPS: Capabilities =
            Capabilities(Capabilities::READ_CONTENT.0 | Capabilities::RESTORE.0);

        fn enc2(msg: Message<'_>, id: u64) -> Vec<u8> {
            let mut buf = std::vec![0u8; MAX_FRAME_LEN];
            let n = msg.encode_for(2, id, &mut buf).unwrap();
            buf.truncate(n);
            buf
        }

        fn restore_msg(size: u64, deadline_ms: u32) -> Vec<u8> {
            enc2(
                Message::Restore(Restore {
                    size,
                    deadline_ms,
                    path: FilePath::Utf8("/srv/back"),
                }),
                9,
            )
        }

        fn chunk(id: u64, offset: u64, data: &[u8], last: bool) -> Vec<u8> {
            enc2(Message::RestoreData(RestoreData { offset, last, data }), id)
        }

        fn connect<const I: usize>(s: &mut Session<4, 64, 2, I>) {
            s.start(ms(0));
            let out = out_frames(s);
            let (hello_id, msg) = frame(&out[0]);
            let Message::Hello(h) = msg else { panic!() };
            assert!(h.capabilities.contains(Capabilities::RESTORE));
            let ack = HelloAck {
                version: 2,
                ..ack()
            };
            s.receive(&enc(Message::HelloAck(ack), hello_id), ms(1));
            assert_eq!(s.poll_event(), Some(SessionEvent::Connected { version: 2 }));
        }

        fn session<const I: usize>() -> Box<Session<4, 64, 2, I>> {
            let mut s = Box::new(Session::<4, 64, 2, I>::new(&SessionConfig {
                capabilities: CAPS,
                ..config(FailMode::Open)
            }));
            connect(&mut s);
            s
        }

        fn out_frames<const I: usize>(s: &mut Session<4, 64, 2, I>) -> Vec<Vec<u8>> {
            let mut bytes = Vec::new();
            let mut out = [0u8; 1000];
            while let Some(n) = s.poll_transmit(&mut out) {
                bytes.extend_from_slice(&out[..n]);
            }
            let mut frames = Vec::new();
            let mut rest = &bytes[..];
            while let Ok(Decoded::Frame { consumed, .. }) = decode_frame(rest) {
                frames.push(rest[..consumed].to_vec());
                rest = &rest[consumed..];
            }
            frames
        }

        /// The `ActionResult`s sent: (id, status, error).
        fn results<const I: usize>(
            s: &mut Session<4, 64, 2, I>,
        ) -> Vec<(u64, ActionStatus, Option<OsError>)> {
            out_frames(s)
                .iter()
                .filter_map(|f| match frame(f) {
                    (id, Message::ActionResult(r)) => Some((id, r.status, r.error)),
                    _ => None,
                })
                .collect()
        }

        /// What the embedder takes from the inbox: `Restore` as
        /// `(id, None)`, each chunk as `(id, Some((offset, data, last)))`.
        #[expect(clippy::type_complexity, reason = "a test's record")]
        fn take<const I: usize>(
            s: &mut Session<4, 64, 2, I>,
        ) -> Vec<(u64, Option<(u64, Vec<u8>, bool)>)> {
            let mut got = Vec::new();
            while let Some(req) = s.host_request() {
                got.push(match req.message {
                    Message::Restore(_) => (req.id, None),
                    Message::RestoreData(d) => (req.id, Some((d.offset, d.data.to_vec(), d.last))),
                    other => panic!("{other:?}"),
                });
                s.pop_host_request();
            }
            got
        }

        fn drain_events<const I: usize>(s: &mut Session<4, 64, 2, I>) -> Vec<SessionEvent> {
            core::iter::from_fn(|| s.poll_event()).collect()
        }

        #[test]
        fn restore_is_announced_only_with_an_inbox_that_holds_a_chunk() {
            let mut small = Box::new(Session::<4, 64, 2, 4096>::new(&SessionConfig {
                capabilities: CAPS,
                ..config(FailMode::Open)
            }));
            small.start(ms(0));
            let out = out_frames(&mut small);
            let Message::Hello(h) = frame(&out[0]).1 else {
                panic!()
            };
            assert!(!h.capabilities.contains(Capabilities::RESTORE));
            // …and one that holds a chunk announces it (asserted in `session`).
            let _ = session::<MIN_RESTORE_INBOX>();
        }

        #[test]
        fn chunks_in_order_reach_the_embedder_which_answers_once() {
            let mut s = session::<DEFAULT_INBOX>();
            s.receive_some(&restore_msg(6, 1000), ms(2));
            s.receive_some(&chunk(9, 0, b"abc", false), ms(2));
            s.receive_some(&chunk(9, 3, b"def", true), ms(2));
            assert!(drain_events(&mut s).contains(&SessionEvent::HostRequest));
            assert_eq!(
                take(&mut s),
                [
                    (9, None),
                    (9, Some((0, b"abc".to_vec(), false))),
                    (9, Some((3, b"def".to_vec(), true))),
                ]
            );
            assert!(results(&mut s).is_empty(), "the embedder answers");
            // Once LAST is in, the session no longer times the restore out.
            s.on_timeout(ms(5000));
            assert!(results(&mut s).is_empty());
            let done = ActionResult {
                value: 6,
                ..ActionResult::status(ActionStatus::Done)
            };
            assert_eq!(s.complete_action(9, done), Ok(()));
            assert_eq!(results(&mut s), [(9, ActionStatus::Done, None)]);
            assert_eq!(s.complete_action(9, done), Err(AnswerError::NotOutstanding));
            // Data of a restore already answered is ignored.
            s.receive_some(&chunk(9, 0, b"abc", true), ms(3));
            assert!(take(&mut s).is_empty());
            assert!(results(&mut s).is_empty());
            assert!(s.is_connected());
        }

        #[test]
        fn an_empty_file_is_one_empty_last_chunk() {
            let mut s = session::<DEFAULT_INBOX>();
            s.receive_some(&restore_msg(0, 1000), ms(2));
            s.receive_some(&chunk(9, 0, b"", true), ms(2));
            assert_eq!(take(&mut s), [(9, None), (9, Some((0, Vec::new(), true)))]);
        }

        #[test]
        fn chunks_out_of_order_are_rejected_by_the_session() {
            // (chunks, what breaks): a gap, an overlap, past size, LAST short.
            let cases: [&[(u64, &[u8], bool)]; 5] = [
                &[(1, b"abc", false)],
                &[(0, b"abc", false), (2, b"cde", false)],
                &[(0, b"abcdefg", false)],
                &[(0, b"abc", true)],
                &[(0, b"abcdef", false), (6, b"x", true)],
            ];
            for case in cases {
                let mut s = session::<DEFAULT_INBOX>();
                s.receive_some(&restore_msg(6, 1000), ms(2));
                for (offset, data, last) in case {
                    s.receive_some(&chunk(9, *offset, data, *last), ms(2));
                }
                assert_eq!(
                    results(&mut s),
                    [(9, ActionStatus::Rejected, None)],
                    "{case:?}"
                );
                assert_eq!(s.take_aborted_restore(), Some(9), "{case:?}");
                assert_eq!(s.take_aborted_restore(), None);
                // Nothing of it is left to take; later data is ignored.
                let left = take(&mut s);
                assert!(left.is_empty(), "{case:?}: {left:?}");
                s.receive_some(&chunk(9, 0, b"abcdef", true), ms(2));
                assert!(take(&mut s).is_empty());
                assert_eq!(
                    s.complete_action(9, ActionResult::status(ActionStatus::Done)),
                    Err(AnswerError::NotOutstanding)
                );
                // A host mistake costs the guest nothing: a new restore is
                // taken.
                s.receive_some(&restore_msg(1, 1000), ms(2));
                assert_eq!(take(&mut s), [(9, None)]);
                assert!(s.is_connected());
            }
        }

        #[test]
        fn one_restore_at_a_time_and_data_of_no_restore_is_ignored() {
            let mut s = session::<DEFAULT_INBOX>();
            s.receive_some(&chunk(4, 0, b"abc", true), ms(2));
            s.receive_some(&restore_msg(3, 1000), ms(2));
            let second = enc2(
                Message::Restore(Restore {
                    size: 3,
                    deadline_ms: 1000,
                    path: FilePath::Utf8("/srv/other"),
                }),
                10,
            );
            s.receive_some(&second, ms(2));
            assert_eq!(results(&mut s), [(10, ActionStatus::Busy, None)]);
            s.receive_some(&chunk(10, 0, b"xyz", true), ms(2));
            s.receive_some(&chunk(9, 0, b"abc", true), ms(2));
            assert_eq!(
                take(&mut s),
                [(9, None), (9, Some((0, b"abc".to_vec(), true)))]
            );
            assert!(results(&mut s).is_empty());
        }

        #[test]
        fn a_restore_whose_data_misses_its_deadline_fails() {
            let mut s = session::<DEFAULT_INBOX>();
            s.receive_some(&restore_msg(6, 500), ms(100));
            s.receive_some(&chunk(9, 0, b"abc", false), ms(200));
            assert_eq!(take(&mut s).len(), 2);
            assert!(s.next_deadline().is_some_and(|d| d <= ms(600)));
            s.on_timeout(ms(599));
            assert!(results(&mut s).is_empty());
            s.on_timeout(ms(600));
            assert_eq!(
                results(&mut s),
                [(9, ActionStatus::Failed, Some(OsError::Errno(ETIMEDOUT)))]
            );
            assert_eq!(s.take_aborted_restore(), Some(9));
            s.receive_some(&chunk(9, 3, b"def", true), ms(700));
            assert!(take(&mut s).is_empty());
            assert!(s.is_connected());
        }

        #[test]
        fn an_embedder_that_fails_early_ends_the_restore() {
            let mut s = session::<DEFAULT_INBOX>();
            s.receive_some(&restore_msg(6, 1000), ms(2));
            s.receive_some(&chunk(9, 0, b"abc", false), ms(2));
            take(&mut s);
            s.complete_action(9, ActionResult::failed(OsError::Errno(28)))
                .unwrap();
            s.receive_some(&chunk(9, 3, b"def", true), ms(2));
            assert!(take(&mut s).is_empty());
            assert_eq!(
                results(&mut s),
                [(9, ActionStatus::Failed, Some(OsError::Errno(28)))]
            );
            assert_eq!(s.take_aborted_restore(), None, "the embedder ended it");
        }

        #[test]
        fn a_chunk_without_room_is_held_and_the_bytes_behind_it_wait() {
            let mut s = session::<MIN_RESTORE_INBOX>();
            let q = s.submit(&open_event("/etc/x"), ms(2)).unwrap();
            let ev = out_frames(&mut s);
            assert_eq!(ev.len(), 1);
            // More chunks than the decoder's 64 KiB buffer holds.
            const CHUNKS: usize = 20;
            let content: Vec<u8> = (0..CHUNKS * MAX_RESTORE_CHUNK).map(|i| i as u8).collect();
            let mut wire = restore_msg(content.len() as u64, 10_000);
            for (i, c) in content.chunks(MAX_RESTORE_CHUNK).enumerate() {
                let offset = (i * MAX_RESTORE_CHUNK) as u64;
                wire.extend(chunk(9, offset, c, i == CHUNKS - 1));
            }
            wire.extend(enc2(
                Message::Verdict(Verdict {
                    decision: Decision::Allow,
                    cache_ttl_secs: 0,
                    threat_name: "",
                }),
                q,
            ));
            // The Restore fills the inbox: the first chunk waits in the
            // decoder, and the session takes no byte more than its decoder
            // holds.
            let n = s.receive_some(&wire, ms(3));
            assert!(s.rx_held());
            assert!(n <= MAX_FRAME_LEN && n < wire.len(), "{n}");
            assert_eq!(s.receive_some(&wire[n..], ms(3)), 0, "held: nothing taken");
            let evs = drain_events(&mut s);
            assert!(
                !evs.iter().any(|e| matches!(e, SessionEvent::Verdict(_))),
                "{evs:?}"
            );
            let mut rest = &wire[n..];
            let mut got = Vec::new();
            while !(rest.is_empty() && !s.rx_held() && s.host_request().is_none()) {
                got.extend(take(&mut s));
                let n = s.receive_some(rest, ms(4));
                rest = &rest[n..];
            }
            assert_eq!(got.len(), 1 + CHUNKS);
            assert_eq!(got[0], (9, None));
            let mut data = Vec::new();
            for (i, (id, c)) in got[1..].iter().enumerate() {
                let (offset, bytes, last) = c.clone().unwrap();
                assert_eq!((*id, offset, last), (9, data.len() as u64, i == CHUNKS - 1));
                data.extend(bytes);
            }
            assert!(data == content);
            let evs = drain_events(&mut s);
            assert!(
                evs.iter().any(|e| matches!(
                    e,
                    SessionEvent::Verdict(QueryVerdict {
                        source: VerdictSource::Host,
                        ..
                    })
                )),
                "the verdict behind the chunks arrives: {evs:?}"
            );
        }

        #[test]
        fn receive_never_holds_a_chunk_back_and_ends_the_restore_busy() {
            let mut s = session::<MIN_RESTORE_INBOX>();
            let mut wire = restore_msg(MAX_RESTORE_CHUNK as u64, 60_000);
            wire.extend(chunk(9, 0, &[0u8; MAX_RESTORE_CHUNK], true));
            s.receive(&wire, ms(3));
            assert!(!s.rx_held());
            assert_eq!(results(&mut s), [(9, ActionStatus::Busy, None)]);
            assert_eq!(s.take_aborted_restore(), Some(9));
            assert!(take(&mut s).is_empty());
        }

        #[test]
        fn a_query_behind_a_held_chunk_still_gets_its_fail_decision() {
            let mut s = session::<MIN_RESTORE_INBOX>();
            let q = s.submit(&open_event("/etc/x"), ms(2)).unwrap();
            let _ = out_frames(&mut s);
            let mut wire = restore_msg(MAX_RESTORE_CHUNK as u64, 60_000);
            wire.extend(chunk(9, 0, &[0u8; MAX_RESTORE_CHUNK], true));
            wire.extend(enc2(
                Message::Verdict(Verdict {
                    decision: Decision::Deny,
                    cache_ttl_secs: 0,
                    threat_name: "x",
                }),
                q,
            ));
            s.receive_some(&wire, ms(3));
            assert!(s.rx_held());
            assert!(
                !drain_events(&mut s)
                    .iter()
                    .any(|e| matches!(e, SessionEvent::Verdict(_))),
                "the verdict waits behind the held chunk"
            );
            // The embedder does not take the inbox; the query's deadline
            // (2 s) still decides it.
            s.on_timeout(ms(2002));
            let evs = drain_events(&mut s);
            assert!(
                evs.iter().any(|e| matches!(
                    e,
                    SessionEvent::Verdict(QueryVerdict {
                        source: VerdictSource::Deadline(_),
                        ..
                    })
                )),
                "{evs:?}"
            );
        }

        proptest! {
            /// However the host cuts the content (chunks ≤ 4096 bytes) and
            /// the transport cuts the bytes, and whenever the embedder
            /// takes the inbox, the embedder gets every byte once, in order,
            /// the session never loses or drops a byte, and nothing is
            /// answered for it.
            #[test]
            fn backpressure_delivers_every_byte_in_order(
                size in 0usize..20_000,
                cuts in proptest::collection::vec(1usize..=MAX_RESTORE_CHUNK, 1..16),
                splits in proptest::collection::vec(1usize..9000, 1..16),
                takes in proptest::collection::vec(any::<bool>(), 1..16),
            ) {
                let content: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
                let mut wire = restore_msg(size as u64, 60_000);
                let mut offset = 0;
                let mut i = 0;
                loop {
                    let len = cuts[i % cuts.len()].min(size - offset);
                    let last = offset + len == size;
                    wire.extend(chunk(9, offset as u64, &content[offset..offset + len], last));
                    offset += len;
                    i += 1;
                    if last {
                        break;
                    }
                }
                let mut s = session::<MIN_RESTORE_INBOX>();
                let mut rest = &wire[..];
                let mut got = Vec::new();
                let mut step = 0;
                let mut idle = 0;
                while !rest.is_empty() || s.host_request().is_some() {
                    if takes[step % takes.len()] || s.rx_held() || rest.is_empty() {
                        got.extend(take(&mut s));
                    }
                    let want = splits[step % splits.len()].min(rest.len());
                    let n = s.receive_some(&rest[..want], ms(5));
                    prop_assert!(n <= want);
                    prop_assert!(n == want || s.rx_held());
                    rest = &rest[n..];
                    step += 1;
                    idle = if n == 0 && want > 0 { idle + 1 } else { 0 };
                    prop_assert!(idle < 4, "no progress");
                }
                let mut data = Vec::new();
                let mut lasts = 0;
                for (id, c) in &got[1..] {
                    prop_assert_eq!(*id, 9);
                    let (offset, bytes, last) = c.clone().unwrap();
                    prop_assert_eq!(offset as usize, data.len());
                    data.extend(bytes);
                    lasts += usize::from(last);
                }
                prop_assert_eq!(got[0].clone(), (9, None));
                prop_assert_eq!(lasts, 1);
                prop_assert!(data == content);
                prop_assert!(results(&mut s).is_empty());
                prop_assert!(s.is_connected());
            }
        }
    }
}
