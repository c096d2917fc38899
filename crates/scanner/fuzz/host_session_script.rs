//! A byte-driven script for the host session: a hostile or broken guest and
//! an arbitrary application, with the session's contract checked after every
//! step. Shared by the `host_session` fuzz target and the crate's test that
//! replays the committed seeds (`corpus/host_session/`).
//!
//! The including module must have `scanner` in scope as the
//! `thinagent_scanner` crate.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, Decoded, EventKind, FileEvent,
    FileIdentity, FilePath, Goodbye, GoodbyeReason, Heartbeat, Hello, MAX_FRAME_LEN, Message,
    OsError, OsKind, ReadData, ReadOutcome, decode_frame,
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
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    match msg.encode(id, &mut buf) {
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
}

const GUEST_READS: u32 = 3;

/// Runs one script. Panics when the session breaks its contract.
pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let limits = SessionLimits {
        max_read_chunk: 1 + u32::from(input.byte().unwrap_or(0)) * 64,
        max_events_in_flight: 1 + u32::from(input.byte().unwrap_or(0) % 8),
        max_reads_in_flight: 1 + u32::from(input.byte().unwrap_or(0) % 6),
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
                let caps = if input.byte().unwrap_or(0) % 4 == 0 {
                    Capabilities::default()
                } else {
                    Capabilities::READ_CONTENT
                };
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
                let size = u64::from(input.u16());
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
                    content: thinagent_protocol::InlineContent::NONE,
                });
                s.receive(&frame(&ev, id), now);
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
                s.receive(&frame(&rd, read_id), now);
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
                let ping = Message::Ping(Heartbeat {
                    nonce: u64::from(input.byte().unwrap_or(0)),
                    timestamp_ms: 0,
                });
                s.receive(&frame(&ping, 5), now);
            }
            10 => {
                let bye = Message::Goodbye(Goodbye {
                    reason: GoodbyeReason::Shutdown,
                });
                s.receive(&frame(&bye, 0), now);
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
        match frame.message {
            Message::Verdict(_) => {
                *m.wire_verdicts.entry(frame.request_id).or_default() += 1;
            }
            Message::ReadRequest(r) => {
                assert!(r.length <= m.chunk, "read longer than the chunk");
                assert!(m.seen.contains(&r.event_id), "read for an unknown event");
                assert!(
                    m.reads
                        .insert(frame.request_id, (r.event_id, r.offset, r.length))
                        .is_none(),
                    "read id reused while outstanding"
                );
            }
            Message::Goodbye(_) => m.goodbye_sent = true,
            Message::HelloAck(_) | Message::Pong(_) | Message::Ping(_) | Message::Error(_) => {}
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
    assert!(
        s.bytes_in_flight() <= max_bytes.saturating_add(u64::from(m.chunk)),
        "byte budget exceeded"
    );
    for (id, n) in &m.wire_verdicts {
        assert!(
            *n <= m.ended.get(id).copied().unwrap_or(0),
            "more Verdicts for {id} than query endings"
        );
    }
}
