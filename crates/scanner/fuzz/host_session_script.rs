//! A byte-driven script for the host session: a hostile or broken guest and
//! an arbitrary application, with the session's contract checked after every
//! step. The guest may negotiate protocol version 2 and send events with
//! inline content (partial, whole, empty, over the limit, without the
//! capability), and frames in the session's version or in version 1.
//! Shared by the `host_session` fuzz target and the crate's test that
//! replays the committed seeds (`corpus/host_session/`).
//!
//! The including module must have `scanner` in scope as the
//! `thinagent_scanner` crate.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, Decoded, EventKind, FileEvent,
    FileIdentity, FilePath, Goodbye, GoodbyeReason, Heartbeat, Hello, InlineContent, MAX_FRAME_LEN,
    Message, OsError, OsKind, ReadData, ReadOutcome, decode_frame,
};

use super::scanner::session::{HostSession, PolicyVerdicts, SessionEvent, SessionLimits};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(0)])
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn frame(msg: &Message<'_>, id: u64) -> Vec<u8> {
    frame_v(1, msg, id)
}

/// A frame with header `version`; empty when the message cannot be sent in
/// it (inline content in version 1).
fn frame_v(version: u16, msg: &Message<'_>, id: u64) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    match msg.encode_for(version, id, &mut buf) {
        Ok(n) => buf.truncate(n),
        Err(_) => buf.clear(),
    }
    buf
}

/// Contract state observed from outside the session.
#[derive(Default)]
struct Model {
    /// Queries announced and not yet ended.
    open: HashSet<u64>,
    /// Queries ever announced.
    seen: HashSet<u64>,
    /// Ended queries (app verdict or `Finished`), counted per id.
    ended: HashMap<u64, u32>,
    /// Verdict frames on the wire, per id.
    wire_verdicts: HashMap<u64, u32>,
    /// Outstanding reads the host asked for: read id -> (event, offset, len).
    reads: HashMap<u64, (u64, u64, u32)>,
    goodbye_sent: bool,
    chunk: u32,
    max_reads: usize,
    /// The version the host's `HelloAck` chose (0: no `HelloAck` yet).
    version: u16,
    /// Inline bytes of open queries (charged once fetched).
    inline: HashMap<u64, u64>,
    /// Open queries whose whole file came inline: never read.
    whole: HashSet<u64>,
}

const GUEST_READS: u32 = 3;

/// Runs one script. Panics when the session breaks its contract.
pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let chunk = input.byte().unwrap_or(0);
    let events = input.byte().unwrap_or(0);
    // Its high bit also picks a small max_inline_len (0..=1016), so that
    // inline content above the limit happens.
    let reads = input.byte().unwrap_or(0);
    let limits = SessionLimits {
        max_read_chunk: 1 + u32::from(chunk) * 64,
        max_events_in_flight: 1 + u32::from(events % 8),
        max_reads_in_flight: 1 + u32::from(reads % 6),
        max_inline_len: if reads & 0x80 != 0 {
            u32::from(reads & 0x7f) * 8
        } else {
            SessionLimits::default().max_inline_len
        },
        max_bytes_in_flight: 1 + u64::from(input.u16()),
        max_file_size: u64::from(input.u16()),
        policy: PolicyVerdicts {
            too_large: Decision::Deny,
            ..PolicyVerdicts::default()
        },
        ..SessionLimits::default()
    };
    let mut now = Instant::now();
    let mut s = HostSession::new(limits, now);
    let chunk = s.limits().max_read_chunk;
    let mut m = Model {
        chunk,
        max_reads: (s.limits().max_reads_in_flight.min(GUEST_READS)) as usize,
        ..Model::default()
    };
    let max_bytes = s.limits().max_bytes_in_flight;
    while let Some(op) = input.byte() {
        match op % 13 {
            0 => {
                let n = usize::from(input.byte().unwrap_or(0));
                let bytes = input.take(n).to_vec();
                s.receive(&bytes, now);
            }
            1 => {
                let b = input.byte().unwrap_or(0);
                let mut caps = if b % 4 == 0 {
                    Capabilities::default()
                } else {
                    Capabilities::READ_CONTENT
                };
                if b & 4 != 0 {
                    caps = caps.union(Capabilities::INLINE_CONTENT);
                }
                let hello = Message::Hello(Hello {
                    version_min: 1,
                    version_max: 1 + u16::from(input.byte().unwrap_or(0) % 2),
                    os: OsKind::Linux,
                    agent_version: AgentVersion::default(),
                    capabilities: caps,
                    max_frame_len: MAX_FRAME_LEN as u32,
                    max_reads_in_flight: GUEST_READS,
                    guest_name: "fuzz",
                });
                s.receive(&frame(&hello, 1), now);
            }
            2 => {
                let id = u64::from(input.byte().unwrap_or(0) % 12);
                let mut size = u64::from(input.u16());
                // In a version-2 session (only there, so that the seeds of
                // version-1 sessions keep their meaning): inline content
                // (none, the first bytes, the whole file, an empty whole
                // file), in the session's version or version 1 (skipped).
                let (how, len) = if m.version >= 2 {
                    (input.byte().unwrap_or(0), input.u16() % 700)
                } else {
                    (0, 0)
                };
                let version = if how & 4 == 0 { m.version.max(1) } else { 1 };
                let content = vec![0x5a; usize::from(len)];
                let (bytes, whole_file): (&[u8], bool) = match how % 4 {
                    0 => (&[], false),
                    1 if content.is_empty() => (&[], false),
                    1 => (&content, false),
                    2 => (&content, true),
                    _ => (&[], true),
                };
                if whole_file {
                    size = bytes.len() as u64;
                }
                let ev = Message::FileEvent(FileEvent {
                    kind: EventKind::Open,
                    process_id: 1,
                    desired_access: 1,
                    create_disposition: CreateDisposition::Open,
                    file: FileIdentity {
                        size,
                        ..FileIdentity::default()
                    },
                    path: FilePath::Utf8("/f"),
                    content: if version >= 2 {
                        InlineContent { bytes, whole_file }
                    } else {
                        InlineContent::NONE
                    },
                });
                s.receive(&frame_v(version, &ev, id), now);
            }
            3 | 4 => {
                // Answer one outstanding read, honestly or not.
                let pick = usize::from(input.byte().unwrap_or(0));
                let how = input.byte().unwrap_or(0);
                let mut ids: Vec<u64> = m.reads.keys().copied().collect();
                ids.sort_unstable();
                let Some(&read_id) = ids.get(pick % ids.len().max(1)) else {
                    continue;
                };
                let Some((event_id, offset, len)) = m.reads.remove(&read_id) else {
                    continue;
                };
                let n = match how % 4 {
                    0 => len as usize,
                    1 => (len as usize) / 2,
                    2 => 0,
                    _ => len as usize + 1, // longer than asked: fatal
                };
                let bytes = vec![0x5a; n];
                let outcome = match how / 4 % 5 {
                    0 | 1 if n > 0 => ReadOutcome::Data(&bytes),
                    2 => ReadOutcome::Error(OsError::Errno(5)),
                    3 => ReadOutcome::Cancelled,
                    _ => ReadOutcome::EndOfFile(&bytes),
                };
                let rd = Message::ReadData(ReadData {
                    event_id,
                    offset,
                    outcome,
                });
                s.receive(&frame_v(m.version.max(1), &rd, read_id), now);
            }
            5 => {
                let ms = u64::from(input.u16()) * 4;
                now += Duration::from_millis(ms);
                s.handle_timeout(now);
            }
            6 | 7 => {
                let pick = usize::from(input.byte().unwrap_or(0));
                let mut open: Vec<u64> = m.open.iter().copied().collect();
                open.sort_unstable();
                if let Some(&id) = open.get(pick % open.len().max(1)) {
                    if op % 13 == 6 {
                        if s.verdict(id, Decision::Allow, "T", 9, now).is_ok() {
                            assert!(m.open.remove(&id), "verdict accepted for a non-open query");
                            *m.ended.entry(id).or_default() += 1;
                        }
                    } else {
                        let _ = s.fetch(id, now);
                    }
                }
            }
            8 => {
                let pick = usize::from(input.byte().unwrap_or(0));
                let n = usize::from(input.u16());
                let mut open: Vec<u64> = m.open.iter().copied().collect();
                open.sort_unstable();
                if let Some(&id) = open.get(pick % open.len().max(1)) {
                    s.consumed(id, n);
                }
            }
            9 => {
                // In a version-2 session an odd nonce sends it in version 1
                // (skipped: not the session's version).
                let nonce = input.byte().unwrap_or(0);
                let version = if m.version >= 2 && nonce & 1 == 0 {
                    2
                } else {
                    1
                };
                let ping = Message::Ping(Heartbeat {
                    nonce: u64::from(nonce),
                    timestamp_ms: 0,
                });
                s.receive(&frame_v(version, &ping, 5), now);
            }
            10 => {
                // Frozen type: accepted in version 1 in every state; in a
                // version-2 session also in version 2.
                let bye = Message::Goodbye(Goodbye {
                    reason: GoodbyeReason::Shutdown,
                });
                let version = if m.version >= 2 {
                    1 + u16::from(input.byte().unwrap_or(0) % 2)
                } else {
                    1
                };
                s.receive(&frame_v(version, &bye, 0), now);
            }
            11 => s.transport_closed(now),
            _ => s.close(GoodbyeReason::Shutdown, now),
        }
        check(&mut s, &mut m, max_bytes);
    }
    if !s.is_closed() {
        s.close(GoodbyeReason::Shutdown, now);
        check(&mut s, &mut m, max_bytes);
    }
    assert!(
        m.open.is_empty(),
        "queries left open after close: {:?}",
        m.open
    );
}

fn check(s: &mut HostSession, m: &mut Model, max_bytes: u64) {
    while let Some(e) = s.poll_event() {
        match e {
            SessionEvent::Query(q) => {
                assert!(
                    m.open.insert(q.id),
                    "query {} announced twice while open",
                    q.id
                );
                m.seen.insert(q.id);
                m.inline.insert(q.id, q.inline.len.into());
                if q.inline.whole_file {
                    m.whole.insert(q.id);
                } else {
                    m.whole.remove(&q.id);
                }
            }
            SessionEvent::Finished { query, .. } => {
                m.open.remove(&query.id);
                *m.ended.entry(query.id).or_default() += 1;
            }
            SessionEvent::Content { id, .. }
            | SessionEvent::ContentEnd { id, .. }
            | SessionEvent::ContentFailed { id, .. } => {
                assert!(
                    m.open.contains(&id),
                    "content event for non-open query {id}"
                );
            }
            _ => {}
        }
    }
    // Everything sent decodes, nothing follows Goodbye, reads respect limits.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(n) = s.poll_transmit(&mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    let mut rest = &out[..];
    while !rest.is_empty() {
        let Ok(Decoded::Frame { frame, consumed }) = decode_frame(rest) else {
            panic!("host sent undecodable bytes");
        };
        assert!(!m.goodbye_sent, "frame after Goodbye");
        // §6.6: the handshake version up to and including HelloAck, then
        // the chosen one.
        let expected = if m.version == 0 || matches!(frame.message, Message::HelloAck(_)) {
            1
        } else {
            m.version
        };
        assert_eq!(
            frame.version, expected,
            "header version of {:?}",
            frame.message
        );
        match frame.message {
            Message::Verdict(_) => {
                *m.wire_verdicts.entry(frame.request_id).or_default() += 1;
            }
            Message::ReadRequest(r) => {
                assert!(r.length <= m.chunk, "read longer than the chunk");
                assert!(m.seen.contains(&r.event_id), "read for an unknown event");
                assert!(
                    !m.whole.contains(&r.event_id),
                    "read for an event whose whole file came inline"
                );
                assert!(
                    m.reads
                        .insert(frame.request_id, (r.event_id, r.offset, r.length))
                        .is_none(),
                    "read id reused while outstanding"
                );
            }
            Message::Goodbye(_) => m.goodbye_sent = true,
            Message::HelloAck(ack) => {
                assert_eq!(m.version, 0, "second HelloAck");
                m.version = ack.version;
            }
            Message::Pong(_) | Message::Ping(_) | Message::Error(_) => {}
            other => panic!("host sent a guest message: {other:?}"),
        }
        rest = &rest[consumed..];
    }
    // Reads of queries that ended are forgotten by the host (and the guest).
    m.reads
        .retain(|_, (event, _, _)| m.open.contains(event) && !s.is_closed());
    assert!(
        s.reads_in_flight() <= m.max_reads,
        "too many reads in flight"
    );
    // Inline bytes are charged once fetched, beyond what the host asks.
    let pushed: u64 = m.open.iter().filter_map(|id| m.inline.get(id)).sum();
    assert!(
        s.bytes_in_flight() <= max_bytes.saturating_add(u64::from(m.chunk)) + pushed,
        "byte budget exceeded"
    );
    for (id, n) in &m.wire_verdicts {
        assert!(
            *n <= m.ended.get(id).copied().unwrap_or(0),
            "more Verdicts for {id} than query endings"
        );
    }
}
