//! [`HostSession`]: the host side of the ThinAgent protocol
//! (`docs/protocol.md`) as a sans-IO state machine, in the style of
//! `quinn-proto` and of the guest's `thinagent_guest::Session`.
//!
//! The caller owns the socket and the clock. It feeds received bytes
//! ([`HostSession::receive`]), the end of the stream
//! ([`HostSession::transport_closed`]), the time ([`HostSession::handle_timeout`]
//! at [`HostSession::next_deadline`]) and its decisions
//! ([`HostSession::verdict`], [`HostSession::fetch`],
//! [`HostSession::consumed`]), and polls bytes to send
//! ([`HostSession::poll_transmit`]) and [`SessionEvent`]s
//! ([`HostSession::poll_event`]). `crate::connection` drives it over tokio.
//!
//! Guarantees, for any input bytes and any call order:
//! * no panic (the workspace aborts on panic, which would end every guest's
//!   session); proptests and the `host_session` fuzz target check it;
//! * every accepted `FileEvent` gets at most one `Verdict` on the wire, and
//!   exactly one unless the guest said `Goodbye` or the transport closed
//!   (then the guest applies its own fail decision, §8);
//! * every [`Query`] ends exactly once for the application: its own
//!   successful [`HostSession::verdict`] call or one
//!   [`SessionEvent::Finished`];
//! * content is pulled with `ReadRequest`s of at most the negotiated chunk,
//!   with at most `min(max_reads_in_flight, guest's max_reads_in_flight)`
//!   reads and [`SessionLimits::max_bytes_in_flight`] bytes outstanding;
//! * it speaks protocol versions 1 and 2 and chooses the highest the guest
//!   offers (§6.2). From its `HelloAck` on, every frame it sends carries
//!   the chosen version and frames are checked against it (§6.6). In
//!   version 2 a `FileEvent` may carry the file's first bytes or the whole
//!   file (§5.3.1): they are delivered as content without a `ReadRequest`,
//!   and for `WHOLE_FILE` no `ReadRequest` is ever sent.
//!
//! Defined outcomes of hostile input: fatal decoding errors and session rule
//! violations (wrong state or direction, a request with request id 0, a
//! `ReadData` longer than asked or with a wrong echo, a reused event id, more
//! consecutive `FileEvent`s above `max_events_in_flight` than the limit
//! itself, inline content from a guest without `INLINE_CONTENT` or longer
//! than the announced `max_inline_len`) answer every open query with the
//! error policy verdict, then send `Error` (echoing the offending frame's
//! request id when its header could be trusted, else 0; none at all when
//! the offending frame is itself an `Error`) + `Goodbye(ProtocolError)` and
//! close; a `FileEvent` above the limit is answered at once with the
//! error policy verdict ([`PolicyReason::OverLimit`]), because a guest whose
//! own deadline expired no longer counts queries the host still has; unknown
//! message types and versions are skipped with an `Error` (§9); a `ReadData`
//! for an unknown read id is ignored and reported as an [`Anomaly`] (§7).

mod host_actions;
mod types;

#[cfg(test)]
mod tests;

#[cfg(test)]
use crate as scanner;

/// The `host_session` fuzz target's script, replayed over the committed
/// seed corpus by `tests::fuzz_seeds_keep_the_contract`.
#[cfg(test)]
#[path = "../../fuzz/host_session_script.rs"]
mod fuzz_script;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thinagent_protocol::{
    ActionResult, Capabilities, Decision, DecodeError, ErrorCode, ErrorMessage, EventKind,
    FileEvent, Goodbye, GoodbyeReason, Health, Heartbeat, HelloAck, INLINE_CONTENT_VERSION,
    MAX_FRAME_LEN, MAX_THREAT_NAME_LEN, MAX_VERSION, MIN_VERSION, Message, MessageType,
    PROTOCOL_VERSION, ReadOutcome, ReadRequest, ScanCounters, ScanDone, StreamDecoder, Verdict,
};

pub use host_actions::{ActionError, ActionKind, ActionOutcome, ScanOptions};
pub use types::{
    Anomaly, CallError, CloseReason, ContentFailure, EventId, GuestInfo, GuestPath, Inline,
    LimitsError, PolicyReason, PolicyVerdicts, Query, QueryOutcome, SessionEvent, SessionLimits,
};

/// One outstanding `ReadRequest`.
#[derive(Debug, Clone, Copy)]
struct ReadOut {
    event_id: EventId,
    offset: u64,
    length: u32,
}

/// Content transfer state of one fetched query.
#[derive(Debug, Default)]
struct Fetch {
    /// Where the next new (non-gap) request starts.
    next_offset: u64,
    /// Bytes delivered to the application, in order.
    delivered: u64,
    /// End of file as the guest reported it.
    eof_at: Option<u64>,
    /// Ranges a short read left unread, to request before new ranges.
    gaps: VecDeque<(u64, u32)>,
    /// Received out of order, waiting for the bytes before them.
    held: BTreeMap<u64, Vec<u8>>,
    /// Reads of this query outstanding.
    reads_out: u32,
    /// Bytes this query counts against the budget (outstanding read lengths,
    /// held bytes, delivered bytes not yet consumed).
    charged: u64,
    /// `ContentEnd` or `ContentFailed` was emitted: nothing more to request.
    done: bool,
}

#[derive(Debug)]
struct OpenQuery {
    info: Arc<Query>,
    deadline: Option<Instant>,
    fetch: Option<Fetch>,
    /// The bytes the `FileEvent` carried inline (`info.inline`), until
    /// [`HostSession::fetch`] delivers them.
    inline: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for `Hello` until the deadline.
    Handshake,
    Connected,
    Closed,
}

/// Decisions the session derives from one received frame, copied out of the
/// decoder's buffer.
enum Step {
    Hello(u64, HelloFields),
    Ping(u64, Heartbeat),
    Pong(u64, Heartbeat),
    Goodbye(GoodbyeReason),
    /// A host-to-guest message (`HelloAck`, `ReadRequest`, `Verdict`), with
    /// its request id.
    WrongDirection(u64),
    /// A guest's `Health` report (§14.8).
    Health(u64, Health),
    /// An `ActionResult` (§14.3).
    ActionResult(u64, ActionResult),
    /// A `ScanProgress` (no `ScanDone`) or a `ScanDone` (§14.5).
    ScanReport(u64, ScanCounters, Option<ScanDone>),
    /// The event and its inline content (copied out of the frame once).
    FileEvent(u64, Box<Query>, Vec<u8>),
    ReadData(u64, ReadDataOwned),
    PeerError(u64, ErrorCode),
    Error(DecodeError),
}

struct HelloFields {
    min: u16,
    max: u16,
    info: GuestInfo,
}

struct ReadDataOwned {
    event_id: EventId,
    offset: u64,
    kind: ReadKind,
    data: Vec<u8>,
}

enum ReadKind {
    Data,
    Eof,
    Error(thinagent_protocol::OsError),
    Cancelled,
}

/// The host side of one connection. See the [module docs](self).
#[derive(Debug)]
pub struct HostSession {
    limits: SessionLimits,
    state: State,
    handshake_deadline: Option<Instant>,
    guest: Option<Arc<GuestInfo>>,
    /// The session version (§6.6): [`PROTOCOL_VERSION`] until `HelloAck`
    /// is sent, then the chosen one. Every frame sent carries it.
    version: u16,
    /// The `max_inline_len` announced in `HelloAck` (0: inline content is
    /// not allowed).
    inline_max: u32,
    /// Negotiated read chunk.
    chunk: u32,
    /// min(own, guest's) reads in flight.
    max_reads: u32,
    rx: StreamDecoder<Box<[u8]>>,
    tx: Vec<u8>,
    tx_start: usize,
    events: VecDeque<SessionEvent>,
    queries: HashMap<EventId, OpenQuery>,
    /// Fetching queries in round-robin order.
    fetch_order: VecDeque<EventId>,
    reads: HashMap<u64, ReadOut>,
    next_read_id: u64,
    bytes_charged: u64,
    last_sent: Instant,
    last_recv: Instant,
    ping: Option<u64>,
    /// `FileEvent`s in a row answered as over the in-flight limit.
    excess_run: u32,
    /// Host actions (§14) sent and not yet answered, by request id.
    actions: HashMap<u64, host_actions::Outstanding>,
    /// The restore whose chunks are still to be sent (paced, §14.7).
    restore_out: Option<host_actions::RestoreOut>,
    now: Instant,
    created: Instant,
}

impl HostSession {
    /// A session for a connection accepted at `now`. Limits are
    /// [normalized](SessionLimits::normalized).
    pub fn new(limits: SessionLimits, now: Instant) -> Self {
        let limits = limits.normalized();
        let mut rx = StreamDecoder::new(vec![0u8; MAX_FRAME_LEN].into_boxed_slice());
        rx.set_max_frame_len(limits.max_frame_len as usize);
        Self {
            handshake_deadline: now.checked_add(limits.handshake_timeout),
            limits,
            state: State::Handshake,
            guest: None,
            version: PROTOCOL_VERSION,
            inline_max: 0,
            chunk: limits.max_read_chunk,
            max_reads: limits.max_reads_in_flight,
            rx,
            tx: Vec::new(),
            tx_start: 0,
            events: VecDeque::new(),
            queries: HashMap::new(),
            fetch_order: VecDeque::new(),
            reads: HashMap::new(),
            next_read_id: 1,
            bytes_charged: 0,
            last_sent: now,
            last_recv: now,
            ping: None,
            excess_run: 0,
            actions: HashMap::new(),
            restore_out: None,
            now,
            created: now,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// The guest, once the handshake completed.
    pub fn guest(&self) -> Option<&Arc<GuestInfo>> {
        self.guest.as_ref()
    }

    /// Whether the session is closed (nothing more will be accepted; send
    /// what [`poll_transmit`](Self::poll_transmit) still yields).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Open (unanswered) queries.
    pub fn open_queries(&self) -> usize {
        self.queries.len()
    }

    /// Outstanding `ReadRequest`s.
    pub fn reads_in_flight(&self) -> usize {
        self.reads.len()
    }

    /// Content bytes currently charged against
    /// [`SessionLimits::max_bytes_in_flight`].
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_charged
    }

    /// Bytes waiting to be sent. A driver should stop reading from the
    /// guest while this is large (the guest is not reading its answers).
    pub fn tx_backlog(&self) -> usize {
        self.tx.len().saturating_sub(self.tx_start)
    }

    // ----- input -----------------------------------------------------------

    /// Feeds bytes received from the guest.
    pub fn receive(&mut self, mut bytes: &[u8], now: Instant) {
        self.now = now;
        while !bytes.is_empty() && self.state != State::Closed {
            let n = self.rx.push(bytes);
            bytes = bytes.get(n..).unwrap_or_default();
            self.process_rx();
            if n == 0 {
                break;
            }
        }
        self.pump_reads();
    }

    /// The byte stream ended (EOF or I/O error): open queries are abandoned.
    pub fn transport_closed(&mut self, now: Instant) {
        self.now = now;
        if self.state == State::Closed {
            return;
        }
        self.tx.clear();
        self.tx_start = 0;
        self.finish_closed(CloseReason::TransportClosed);
    }

    /// Closes the session from the host side (service stop: `Shutdown`,
    /// restart: `Restarting`, too many guests: `Overloaded`). Open queries
    /// get the error policy verdict first.
    pub fn close(&mut self, reason: GoodbyeReason, now: Instant) {
        self.now = now;
        if self.state == State::Closed {
            return;
        }
        self.answer_all_open();
        self.push(&Message::Goodbye(Goodbye { reason }), 0);
        self.finish_closed(CloseReason::Local(reason));
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Handshake => self.handshake_deadline,
            State::Connected => {
                let queries = self.queries.values().filter_map(|q| q.deadline);
                let idle =
                    non_zero(self.limits.idle_timeout).and_then(|d| self.last_recv.checked_add(d));
                let ping = if self.ping.is_none() {
                    non_zero(self.limits.heartbeat_interval)
                        .and_then(|d| self.last_sent.checked_add(d))
                } else {
                    None
                };
                queries
                    .chain(idle)
                    .chain(ping)
                    .chain(self.next_action_deadline())
                    .min()
            }
        }
    }

    /// Applies every timer that expired at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        match self.state {
            State::Closed => {}
            State::Handshake => {
                if self.handshake_deadline.is_some_and(|d| now >= d) {
                    self.push(
                        &Message::Goodbye(Goodbye {
                            reason: GoodbyeReason::Timeout,
                        }),
                        0,
                    );
                    self.finish_closed(CloseReason::HandshakeTimeout);
                }
            }
            State::Connected => {
                if let Some(idle) = non_zero(self.limits.idle_timeout)
                    && self.last_recv.checked_add(idle).is_some_and(|d| now >= d)
                {
                    self.answer_all_open();
                    self.push(
                        &Message::Goodbye(Goodbye {
                            reason: GoodbyeReason::Timeout,
                        }),
                        0,
                    );
                    self.finish_closed(CloseReason::IdleTimeout);
                    return;
                }
                let expired: Vec<EventId> = self
                    .queries
                    .iter()
                    .filter(|(_, q)| q.deadline.is_some_and(|d| now >= d))
                    .map(|(id, _)| *id)
                    .collect();
                for id in expired {
                    self.resolve_policy(id, PolicyReason::Timeout);
                }
                self.expire_actions(now);
                if self.ping.is_none()
                    && let Some(hb) = non_zero(self.limits.heartbeat_interval)
                    && self.last_sent.checked_add(hb).is_some_and(|d| now >= d)
                {
                    let nonce = self.alloc_read_id();
                    let ping = Message::Ping(Heartbeat {
                        nonce,
                        timestamp_ms: millis(now.saturating_duration_since(self.created)).into(),
                    });
                    self.push(&ping, nonce);
                    self.ping = Some(nonce);
                }
                self.pump_reads();
            }
        }
    }

    // ----- application calls ------------------------------------------------

    /// Answers query `id` with `decision`. `threat` is cut to 255 bytes on a
    /// character boundary; `AllowNoCache` is always sent with TTL 0. The
    /// query's outstanding reads are forgotten (their late `ReadData` is
    /// ignored, §7), and its undelivered content events are dropped.
    pub fn verdict(
        &mut self,
        id: EventId,
        decision: Decision,
        threat: &str,
        cache_ttl_secs: u32,
        now: Instant,
    ) -> Result<(), CallError> {
        self.now = now;
        if self.state == State::Closed {
            return Err(CallError::Closed);
        }
        if !self.queries.contains_key(&id) {
            return Err(CallError::UnknownQuery(id));
        }
        self.send_verdict(id, decision, threat, cache_ttl_secs);
        self.remove_query(id);
        self.pump_reads();
        Ok(())
    }

    /// Starts pulling query `id`'s content: [`SessionEvent::Content`]s then
    /// [`SessionEvent::ContentEnd`] or [`SessionEvent::ContentFailed`]. A file
    /// larger than `max_file_size`, or a guest without `READ_CONTENT`, gets
    /// its policy verdict at once ([`SessionEvent::Finished`]).
    ///
    /// Inline content (§5.3.1) comes first, at once, as one `Content` at
    /// offset 0, and counts as read (against `max_file_size` too). A
    /// `WHOLE_FILE` query is then complete: its `ContentEnd` follows at
    /// once, no `ReadRequest` is sent, and the guest needs no
    /// `READ_CONTENT`. Otherwise the rest is read from the end of the
    /// inline bytes on.
    pub fn fetch(&mut self, id: EventId, now: Instant) -> Result<(), CallError> {
        self.now = now;
        if self.state == State::Closed {
            return Err(CallError::Closed);
        }
        let Some(q) = self.queries.get(&id) else {
            return Err(CallError::UnknownQuery(id));
        };
        if q.fetch.is_some() {
            return Err(CallError::AlreadyFetching(id));
        }
        let inline = q.info.inline;
        let inline_len = u64::from(inline.len);
        // Inline bytes count as read (§5.3.1): more of them than the scan
        // limit is a file too large, whatever size the guest declared.
        let too_large = q.info.file.size.max(inline_len) > self.limits.max_file_size;
        let can_read = self
            .guest
            .as_ref()
            .is_some_and(|g| g.capabilities.contains(Capabilities::READ_CONTENT));
        if too_large {
            self.resolve_policy(id, PolicyReason::TooLarge);
        } else if !inline.whole_file && !can_read {
            self.resolve_policy(id, PolicyReason::NoContentCapability);
        } else if let Some(q) = self.queries.get_mut(&id) {
            // The fetch starts as if bytes 0..inline_len had been read.
            let mut f = Fetch {
                next_offset: inline_len,
                delivered: inline_len,
                charged: inline_len,
                ..Fetch::default()
            };
            self.bytes_charged = self.bytes_charged.saturating_add(inline_len);
            let data = std::mem::take(&mut q.inline);
            if !data.is_empty() {
                self.events.push_back(SessionEvent::Content {
                    id,
                    offset: 0,
                    data,
                });
            }
            if inline.whole_file {
                // Every byte is here: never a ReadRequest (§5.3.1).
                f.eof_at = Some(inline_len);
                f.done = true;
                self.events.push_back(SessionEvent::ContentEnd {
                    id,
                    size: inline_len,
                });
                q.fetch = Some(f);
            } else {
                q.fetch = Some(f);
                self.fetch_order.push_back(id);
                self.pump_reads();
            }
        }
        Ok(())
    }

    /// The application no longer holds `bytes` of query `id`'s delivered
    /// content: they stop counting against `max_bytes_in_flight`. Ignored
    /// for queries that are no longer open (their charge was released when
    /// they ended).
    pub fn consumed(&mut self, id: EventId, bytes: usize) {
        if let Some(f) = self.queries.get_mut(&id).and_then(|q| q.fetch.as_mut()) {
            let n = (bytes as u64).min(f.charged);
            f.charged -= n;
            self.bytes_charged = self.bytes_charged.saturating_sub(n);
        }
        self.pump_reads();
    }

    // ----- output -----------------------------------------------------------

    /// Copies bytes to send into `out` and returns how many (`None`: nothing
    /// to send). Frames may be split across calls.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        self.pump_restore();
        let pending = self.tx.get(self.tx_start..).unwrap_or_default();
        let n = pending.len().min(out.len());
        if n == 0 {
            return None;
        }
        out.get_mut(..n)?.copy_from_slice(pending.get(..n)?);
        self.advance_transmit(n);
        Some(n)
    }

    /// The bytes waiting to be sent, for drivers that write from the
    /// session's buffer; call [`advance_transmit`](Self::advance_transmit)
    /// with what was written. A restore's next chunk is queued here, once
    /// everything before it was taken (pacing, §14.7).
    pub fn transmit_pending(&mut self) -> &[u8] {
        self.pump_restore();
        self.tx.get(self.tx_start..).unwrap_or_default()
    }

    /// Marks `n` bytes of [`transmit_pending`](Self::transmit_pending) as
    /// sent.
    pub fn advance_transmit(&mut self, n: usize) {
        self.tx_start = self.tx_start.saturating_add(n).min(self.tx.len());
        if self.tx_start == self.tx.len() {
            self.tx.clear();
            self.tx_start = 0;
        } else if self.tx_start > 64 * 1024 {
            self.tx.drain(..self.tx_start);
            self.tx_start = 0;
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    // ----- receive path -------------------------------------------------------

    fn process_rx(&mut self) {
        while self.state != State::Closed {
            let step = match self.rx.next_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => {
                    let id = frame.request_id;
                    match frame.message {
                        Message::Hello(h) => Step::Hello(
                            id,
                            HelloFields {
                                min: h.version_min,
                                max: h.version_max,
                                info: GuestInfo {
                                    name: h.guest_name.to_owned(),
                                    os: h.os,
                                    agent_version: h.agent_version,
                                    capabilities: h.capabilities,
                                    version: 0,
                                    max_inline_len: 0,
                                    max_frame_len: h.max_frame_len,
                                    max_reads_in_flight: h.max_reads_in_flight,
                                },
                            },
                        ),
                        Message::FileEvent(e) => Step::FileEvent(
                            id,
                            Box::new(owned_query(id, &e, self.now)),
                            // The one copy of the inline bytes out of the
                            // decoder's (reused) buffer.
                            e.content.bytes.to_vec(),
                        ),
                        Message::ReadData(d) => Step::ReadData(
                            id,
                            ReadDataOwned {
                                event_id: d.event_id,
                                offset: d.offset,
                                kind: match d.outcome {
                                    ReadOutcome::Data(_) => ReadKind::Data,
                                    ReadOutcome::EndOfFile(_) => ReadKind::Eof,
                                    ReadOutcome::Error(e) => ReadKind::Error(e),
                                    ReadOutcome::Cancelled => ReadKind::Cancelled,
                                },
                                data: d.data().to_vec(),
                            },
                        ),
                        Message::Error(e) => Step::PeerError(id, e.code),
                        Message::Ping(h) => Step::Ping(id, h),
                        Message::Pong(h) => Step::Pong(id, h),
                        Message::Goodbye(g) => Step::Goodbye(g.reason),
                        Message::Health(h) => Step::Health(id, h),
                        // §14.1: answers to host requests.
                        Message::ActionResult(r) => Step::ActionResult(id, r),
                        Message::ScanProgress(p) => Step::ScanReport(id, p.counters, None),
                        Message::ScanDone(d) => Step::ScanReport(id, d.counters, Some(d)),
                        Message::HelloAck(_)
                        | Message::ReadRequest(_)
                        | Message::Verdict(_)
                        | Message::Remediate(_)
                        | Message::ScanTree(_)
                        | Message::ScanCancel(_)
                        | Message::Policy(_)
                        | Message::Restore(_)
                        | Message::RestoreData(_) => Step::WrongDirection(id),
                    }
                }
                Err(e) => Step::Error(e),
            };
            if !matches!(step, Step::Error(_)) {
                self.last_recv = self.now;
            }
            self.on_step(step);
        }
    }

    fn on_step(&mut self, step: Step) {
        match step {
            Step::Error(e) if e.is_fatal() => {
                // §9: the Error echoes the offending frame's request id when
                // its header passed the magic and length checks, else 0; an
                // Error frame is never answered with an Error.
                let error = (!e.concerns_error_frame())
                    .then(|| (e.request_id().unwrap_or(0), e.error_code()));
                self.close_fatal(error, "", CloseReason::Decode(e));
            }
            Step::Error(e) => {
                if !e.concerns_error_frame() {
                    let msg = Message::Error(ErrorMessage {
                        code: e.error_code(),
                        text: "",
                    });
                    self.push(&msg, e.request_id().unwrap_or(0));
                }
                self.events
                    .push_back(SessionEvent::Anomaly(Anomaly::SkippedFrame(e)));
            }
            Step::PeerError(request_id, code) => {
                self.events
                    .push_back(SessionEvent::Anomaly(Anomaly::PeerError {
                        request_id,
                        code,
                    }));
            }
            Step::Goodbye(reason) => {
                // §5.9: after the peer's Goodbye we send nothing.
                self.tx.clear();
                self.tx_start = 0;
                self.finish_closed(CloseReason::PeerGoodbye(reason));
            }
            Step::Hello(id, hello) => self.on_hello(id, hello),
            Step::FileEvent(id, _, _)
            | Step::Ping(id, _)
            | Step::Pong(id, _)
            | Step::ReadData(id, _)
            | Step::WrongDirection(id)
            | Step::Health(id, _)
            | Step::ActionResult(id, _)
            | Step::ScanReport(id, _, _)
                if self.state == State::Handshake =>
            {
                self.fatal(id, ErrorCode::UnexpectedMessage, "message before Hello");
            }
            Step::FileEvent(id, query, inline) => self.on_file_event(id, *query, inline),
            Step::ReadData(id, data) => self.on_read_data(id, data),
            Step::Ping(0, _) => {
                // §7: a request's id is never 0, whatever its type.
                self.fatal(0, ErrorCode::UnexpectedMessage, "Ping with request id 0");
            }
            Step::Ping(id, hb) => {
                self.push(&Message::Pong(hb), id);
            }
            Step::Pong(id, hb) => {
                if self.ping == Some(hb.nonce) && id == hb.nonce {
                    self.ping = None;
                } else {
                    self.events
                        .push_back(SessionEvent::Anomaly(Anomaly::UnknownPong {
                            request_id: id,
                        }));
                }
            }
            Step::WrongDirection(id) => {
                self.fatal(
                    id,
                    ErrorCode::UnexpectedMessage,
                    "host-to-guest message sent by the guest",
                );
            }
            // §14.8: the request id of a Health is ignored.
            Step::Health(_, health) => self.events.push_back(SessionEvent::Health(health)),
            Step::ActionResult(request_id, result) => {
                if !self.on_action_result(request_id, result) {
                    self.unknown_response(request_id, MessageType::ActionResult);
                }
            }
            Step::ScanReport(request_id, counters, done) => {
                let msg_type = match done {
                    Some(_) => MessageType::ScanDone,
                    None => MessageType::ScanProgress,
                };
                if !self.on_scan_report(request_id, counters, done) {
                    self.unknown_response(request_id, msg_type);
                }
            }
        }
    }

    /// §14.1: an answer that matches no outstanding request is ignored.
    fn unknown_response(&mut self, request_id: u64, msg_type: MessageType) {
        self.events
            .push_back(SessionEvent::Anomaly(Anomaly::UnknownResponse {
                request_id,
                msg_type,
            }));
    }

    fn on_hello(&mut self, id: u64, hello: HelloFields) {
        if self.state != State::Handshake {
            self.fatal(id, ErrorCode::UnexpectedMessage, "second Hello");
            return;
        }
        // §6.2: the highest version both speak.
        let lo = hello.min.max(MIN_VERSION);
        let hi = hello.max.min(MAX_VERSION);
        if lo > hi || id == 0 {
            if id == 0 {
                self.fatal(0, ErrorCode::UnexpectedMessage, "Hello with request id 0");
                return;
            }
            let text = format!(
                "no common protocol version: this host speaks versions {MIN_VERSION} to {MAX_VERSION}"
            );
            let text = text.as_str();
            self.push(
                &Message::Error(ErrorMessage {
                    code: ErrorCode::VersionUnsupported,
                    text,
                }),
                id,
            );
            self.push(
                &Message::Goodbye(Goodbye {
                    reason: GoodbyeReason::VersionUnsupported,
                }),
                0,
            );
            self.finish_closed(CloseReason::VersionUnsupported {
                min: hello.min,
                max: hello.max,
            });
            return;
        }
        let mut info = hello.info;
        info.version = hi;
        // §5.2: announced only in version 2 and to a guest that said it
        // sends inline content; normalized limits fit the frame limit.
        info.max_inline_len = if hi >= INLINE_CONTENT_VERSION
            && info.capabilities.contains(Capabilities::INLINE_CONTENT)
        {
            self.limits.max_inline_len
        } else {
            0
        };
        self.inline_max = info.max_inline_len;
        self.max_reads = self
            .limits
            .max_reads_in_flight
            .min(info.max_reads_in_flight)
            .max(1);
        self.chunk = self.limits.max_read_chunk;
        let ack = HelloAck {
            version: hi,
            max_frame_len: self.limits.max_frame_len,
            max_events_in_flight: self.limits.max_events_in_flight,
            max_read_chunk: self.chunk,
            heartbeat_interval_ms: millis(self.limits.heartbeat_interval),
            idle_timeout_ms: millis(self.limits.idle_timeout),
            query_timeout_ms: millis(self.limits.query_timeout).max(1),
            max_inline_len: info.max_inline_len,
        };
        // HelloAck itself carries the handshake version (§6.3); from here
        // on both directions use the chosen one (§6.6).
        self.push(&Message::HelloAck(ack), id);
        self.version = hi;
        self.rx.set_session_version(hi);
        self.state = State::Connected;
        let info = Arc::new(info);
        self.guest = Some(Arc::clone(&info));
        self.events.push_back(SessionEvent::Connected(info));
    }

    fn on_file_event(&mut self, id: EventId, mut query: Query, inline: Vec<u8>) {
        if id == 0 {
            self.fatal(
                0,
                ErrorCode::UnexpectedMessage,
                "FileEvent with request id 0",
            );
            return;
        }
        if self.queries.contains_key(&id) {
            self.fatal(
                id,
                ErrorCode::UnexpectedMessage,
                "FileEvent id reused while outstanding",
            );
            return;
        }
        if !query.inline.is_none() {
            // §5.3.1: session errors; the event gets no Verdict.
            let announced = self
                .guest
                .as_ref()
                .is_some_and(|g| g.capabilities.contains(Capabilities::INLINE_CONTENT));
            if !announced {
                self.fatal(
                    id,
                    ErrorCode::UnexpectedMessage,
                    "inline content from a guest without INLINE_CONTENT",
                );
                return;
            }
            if query.inline.len > self.inline_max {
                self.fatal(
                    id,
                    ErrorCode::LimitExceeded,
                    "inline content longer than max_inline_len",
                );
                return;
            }
        }
        if let Some(g) = &self.guest {
            query.guest = Arc::clone(g);
        }
        query.received_at = self.now;
        let info = Arc::new(query);
        if self.queries.len() >= self.limits.max_events_in_flight as usize {
            // The guest forgets a query when its own deadline passes, so an
            // honest guest can briefly have more events outstanding than the
            // host still counts: an excess event is answered at once with
            // the error policy verdict. Only a run of excess events longer
            // than the limit itself (a guest ignoring the limit) is the
            // fatal `LimitExceeded` of protocol §9.
            self.excess_run = self.excess_run.saturating_add(1);
            let decision = self.limits.policy.error;
            self.send_verdict(id, decision, "", 0);
            self.events.push_back(SessionEvent::Finished {
                query: info,
                outcome: QueryOutcome::Policy {
                    decision,
                    reason: PolicyReason::OverLimit,
                },
            });
            if self.excess_run > self.limits.max_events_in_flight {
                self.fatal(
                    id,
                    ErrorCode::LimitExceeded,
                    "more FileEvents in flight than max_events_in_flight",
                );
            }
            return;
        }
        self.excess_run = 0;
        self.queries.insert(
            id,
            OpenQuery {
                info: Arc::clone(&info),
                deadline: self
                    .now
                    .checked_add(scan_budget(&info, self.limits.query_timeout)),
                fetch: None,
                inline,
            },
        );
        self.events.push_back(SessionEvent::Query(info));
    }

    fn on_read_data(&mut self, read_id: u64, rd: ReadDataOwned) {
        let Some(read) = self.reads.get(&read_id).copied() else {
            self.events
                .push_back(SessionEvent::Anomaly(Anomaly::UnknownReadData { read_id }));
            return;
        };
        if read.event_id != rd.event_id || read.offset != rd.offset {
            self.fatal(
                read_id,
                ErrorCode::UnexpectedMessage,
                "ReadData echoes another event id or offset than its ReadRequest",
            );
            return;
        }
        if rd.data.len() > read.length as usize {
            self.fatal(
                read_id,
                ErrorCode::UnexpectedMessage,
                "ReadData longer than requested",
            );
            return;
        }
        self.reads.remove(&read_id);
        let max_file_size = self.limits.max_file_size;
        let Some(q) = self.queries.get_mut(&read.event_id) else {
            return;
        };
        let Some(f) = q.fetch.as_mut() else {
            return;
        };
        f.reads_out = f.reads_out.saturating_sub(1);
        let release = u64::from(read.length).min(f.charged);
        f.charged -= release;
        self.bytes_charged = self.bytes_charged.saturating_sub(release);
        if f.done {
            return;
        }
        let len = rd.data.len() as u64;
        let end = read.offset.saturating_add(len);
        let failure = match rd.kind {
            ReadKind::Error(e) => Some(ContentFailure::ReadError(e)),
            ReadKind::Cancelled => Some(ContentFailure::Cancelled),
            ReadKind::Data | ReadKind::Eof => {
                let eof = matches!(rd.kind, ReadKind::Eof);
                if !eof && len < u64::from(read.length) {
                    let gap_len = read.length - len as u32;
                    f.gaps.push_back((end, gap_len));
                }
                // Data past a known end of file, or an end of file before
                // data already received, cannot both be true.
                let beyond_eof = (len > 0 && f.eof_at.is_some_and(|e| end > e))
                    || (eof
                        && (f.delivered > end
                            || f.held
                                .iter()
                                .any(|(o, d)| o.saturating_add(d.len() as u64) > end)));
                if eof {
                    f.eof_at = Some(f.eof_at.map_or(end, |e| e.min(end)));
                    f.gaps.retain(|(o, _)| *o < end);
                }
                if beyond_eof {
                    Some(ContentFailure::Inconsistent)
                } else {
                    if !rd.data.is_empty() {
                        f.charged = f.charged.saturating_add(len);
                        self.bytes_charged = self.bytes_charged.saturating_add(len);
                        f.held.insert(read.offset, rd.data);
                    }
                    None
                }
            }
        };
        if let Some(reason) = failure {
            f.done = true;
            let held: u64 = f.held.values().map(|d| d.len() as u64).sum();
            f.held.clear();
            f.gaps.clear();
            let n = held.min(f.charged);
            f.charged -= n;
            self.bytes_charged = self.bytes_charged.saturating_sub(n);
            self.events.push_back(SessionEvent::ContentFailed {
                id: read.event_id,
                reason,
            });
            return;
        }
        // Deliver what is now contiguous.
        while let Some(data) = f.held.remove(&f.delivered) {
            let offset = f.delivered;
            f.delivered = f.delivered.saturating_add(data.len() as u64);
            self.events.push_back(SessionEvent::Content {
                id: read.event_id,
                offset,
                data,
            });
        }
        if f.delivered > max_file_size {
            self.resolve_policy(read.event_id, PolicyReason::TooLarge);
            return;
        }
        if f.eof_at == Some(f.delivered) {
            f.done = true;
            f.gaps.clear();
            self.events.push_back(SessionEvent::ContentEnd {
                id: read.event_id,
                size: f.delivered,
            });
        }
    }

    // ----- content pulling ----------------------------------------------------

    fn alloc_read_id(&mut self) -> u64 {
        let id = self.next_read_id;
        self.next_read_id = self.next_read_id.wrapping_add(1).max(1);
        id
    }

    /// Issues as many `ReadRequest`s as the limits allow, round-robin over the
    /// fetching queries.
    /// Sends the `ReadRequest`s the limits allow: those of on-access
    /// events first, then those of `OnDemand` ones (§14.4: a scan never
    /// takes the read slots or byte budget an open is waiting for).
    fn pump_reads(&mut self) {
        self.pump_reads_of(false);
        self.pump_reads_of(true);
    }

    /// [`pump_reads`](Self::pump_reads) for the events that are `OnDemand`
    /// (`on_demand`) or not.
    fn pump_reads_of(&mut self, on_demand: bool) {
        if self.state != State::Connected {
            return;
        }
        let mut idle_rounds = 0usize;
        while (self.reads.len() as u64) < u64::from(self.max_reads)
            && self.bytes_charged < self.limits.max_bytes_in_flight
            && idle_rounds < self.fetch_order.len()
        {
            let Some(id) = self.fetch_order.pop_front() else {
                break;
            };
            let budget = self.limits.max_bytes_in_flight - self.bytes_charged;
            let chunk = self.chunk;
            let max_file_size = self.limits.max_file_size;
            let Some(q) = self.queries.get_mut(&id) else {
                // Ended: drop it from the rotation.
                continue;
            };
            let declared = q.info.file.size;
            let Some(f) = q.fetch.as_mut() else {
                continue;
            };
            if f.done {
                continue;
            }
            self.fetch_order.push_back(id);
            if (q.info.kind == EventKind::OnDemand) != on_demand {
                idle_rounds += 1;
                continue;
            }
            let Some((offset, length)) = next_range(f, declared, chunk, budget, max_file_size)
            else {
                idle_rounds += 1;
                continue;
            };
            idle_rounds = 0;
            f.reads_out += 1;
            f.charged = f.charged.saturating_add(length.into());
            self.bytes_charged = self.bytes_charged.saturating_add(length.into());
            let read_id = self.alloc_read_id();
            self.reads.insert(
                read_id,
                ReadOut {
                    event_id: id,
                    offset,
                    length,
                },
            );
            let req = Message::ReadRequest(ReadRequest {
                event_id: id,
                offset,
                length,
            });
            self.push(&req, read_id);
        }
    }

    // ----- answers and closing -------------------------------------------------

    fn send_verdict(&mut self, id: EventId, decision: Decision, threat: &str, ttl: u32) {
        let mut end = threat.len().min(MAX_THREAT_NAME_LEN);
        while !threat.is_char_boundary(end) {
            end -= 1;
        }
        let ttl = if decision == Decision::AllowNoCache {
            0
        } else {
            ttl
        };
        let msg = Message::Verdict(Verdict {
            decision,
            cache_ttl_secs: ttl,
            threat_name: threat.get(..end).unwrap_or(""),
        });
        self.push(&msg, id);
    }

    /// Forgets query `id`: its reads, its budget charge, its queued content
    /// events.
    fn remove_query(&mut self, id: EventId) -> Option<OpenQuery> {
        let q = self.queries.remove(&id)?;
        if let Some(f) = &q.fetch {
            self.bytes_charged = self.bytes_charged.saturating_sub(f.charged);
            self.reads.retain(|_, r| r.event_id != id);
            self.fetch_order.retain(|x| *x != id);
            self.events.retain(|e| match e {
                SessionEvent::Content { id: x, .. }
                | SessionEvent::ContentEnd { id: x, .. }
                | SessionEvent::ContentFailed { id: x, .. } => *x != id,
                _ => true,
            });
        }
        Some(q)
    }

    fn resolve_policy(&mut self, id: EventId, reason: PolicyReason) {
        let policy = self.limits.policy;
        let decision = match reason {
            PolicyReason::TooLarge => policy.too_large,
            PolicyReason::Timeout => policy.timeout,
            _ => policy.error,
        };
        if let Some(q) = self.remove_query(id) {
            self.send_verdict(id, decision, "", 0);
            self.events.push_back(SessionEvent::Finished {
                query: q.info,
                outcome: QueryOutcome::Policy { decision, reason },
            });
        }
    }

    fn answer_all_open(&mut self) {
        let mut ids: Vec<EventId> = self.queries.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.resolve_policy(id, PolicyReason::SessionClosing);
        }
    }

    /// A session rule broken by the frame with `request_id` (§9): the
    /// `Error` echoes that id, which is 0 only when the frame carried 0.
    fn fatal(&mut self, request_id: u64, code: ErrorCode, detail: &'static str) {
        self.close_fatal(
            Some((request_id, code)),
            detail,
            CloseReason::Protocol { code, detail },
        );
    }

    /// Answers every open query with the error policy verdict, then sends
    /// `Error` (unless `error` is `None`: the offending frame was itself an
    /// `Error`) and `Goodbye(ProtocolError)`, and closes.
    fn close_fatal(&mut self, error: Option<(u64, ErrorCode)>, text: &str, reason: CloseReason) {
        self.answer_all_open();
        if let Some((request_id, code)) = error {
            self.push(&Message::Error(ErrorMessage { code, text }), request_id);
        }
        self.push(
            &Message::Goodbye(Goodbye {
                reason: GoodbyeReason::ProtocolError,
            }),
            0,
        );
        self.finish_closed(reason);
    }

    /// Enters `Closed`. Queries still open (callers answer them first when
    /// they can) are reported as abandoned: no verdict can be sent any more.
    fn finish_closed(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.restore_out = None;
        let mut ids: Vec<EventId> = self.queries.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(q) = self.remove_query(id) {
                self.events.push_back(SessionEvent::Finished {
                    query: q.info,
                    outcome: QueryOutcome::Abandoned,
                });
            }
        }
        self.abandon_actions();
        self.state = State::Closed;
        self.reads.clear();
        self.fetch_order.clear();
        self.bytes_charged = 0;
        self.events.push_back(SessionEvent::Closed(reason));
    }

    fn push(&mut self, msg: &Message<'_>, request_id: u64) {
        if self.state == State::Closed {
            return;
        }
        let version = self.version;
        let len = msg.encoded_len_for(version);
        let old = self.tx.len();
        self.tx.resize(old.saturating_add(len), 0);
        match self
            .tx
            .get_mut(old..)
            .map(|out| msg.encode_for(version, request_id, out))
        {
            Some(Ok(n)) => self.tx.truncate(old + n),
            _ => self.tx.truncate(old),
        }
        self.last_sent = self.now;
    }
}

/// The next range to request for `f`, if any.
fn next_range(
    f: &mut Fetch,
    declared: u64,
    chunk: u32,
    budget: u64,
    max_file_size: u64,
) -> Option<(u64, u32)> {
    let cap = |len: u32| -> u32 { u64::from(len).min(budget).try_into().unwrap_or(len) };
    if let Some((offset, len)) = f.gaps.pop_front() {
        let take = cap(len.min(chunk));
        if take == 0 {
            f.gaps.push_front((offset, len));
            return None;
        }
        if take < len {
            f.gaps
                .push_front((offset.saturating_add(take.into()), len - take));
        }
        return Some((offset, take));
    }
    if f.eof_at.is_some() {
        return None;
    }
    let offset = f.next_offset;
    let length = if offset < declared {
        u32::try_from((declared - offset).min(chunk.into())).unwrap_or(chunk)
    } else if f.reads_out == 0 && offset <= max_file_size {
        // Past the declared size: probe one chunk at a time for more content
        // or the end of file.
        chunk
    } else {
        return None;
    };
    let length = cap(length);
    if length == 0 || offset.checked_add(length.into()).is_none() {
        return None;
    }
    f.next_offset = offset + u64::from(length);
    Some((offset, length))
}

/// The scan budget of `query`: `query_timeout`, or for an `OnDemand`
/// event (it blocks no open) at least `ON_DEMAND_SCAN_BUDGET_MS` (§14.4).
fn scan_budget(query: &Query, query_timeout: Duration) -> Duration {
    if query.kind == EventKind::OnDemand {
        query_timeout.max(Duration::from_millis(
            thinagent_protocol::ON_DEMAND_SCAN_BUDGET_MS.into(),
        ))
    } else {
        query_timeout
    }
}

fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn owned_query(id: EventId, e: &FileEvent<'_>, now: Instant) -> Query {
    Query {
        id,
        guest: Arc::new(GuestInfo {
            name: String::new(),
            os: thinagent_protocol::OsKind::Linux,
            agent_version: thinagent_protocol::AgentVersion::default(),
            capabilities: Capabilities::default(),
            version: 0,
            max_inline_len: 0,
            max_frame_len: 0,
            max_reads_in_flight: 0,
        }),
        kind: e.kind,
        process_id: e.process_id,
        desired_access: e.desired_access,
        create_disposition: e.create_disposition,
        file: e.file,
        path: GuestPath::from_wire(&e.path),
        inline: Inline {
            len: u32::try_from(e.content.bytes.len()).unwrap_or(u32::MAX),
            whole_file: e.content.whole_file,
        },
        received_at: now,
    }
}
