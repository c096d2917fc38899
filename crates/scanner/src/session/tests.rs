//! Unit tests and proptests of [`HostSession`] against hand-built frames.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, Decoded, ErrorCode, EventKind,
    FileEvent, FileIdentity, FilePath, Goodbye, GoodbyeReason, Heartbeat, Hello, InlineContent,
    MAX_FRAME_LEN, MAX_INLINE_LEN, Message, OsKind, ReadData, ReadOutcome, decode_frame,
    max_inline_len_for,
};

use super::*;

/// A decoded frame, owned enough for assertions.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    HelloAck(u64, HelloAck),
    Verdict(u64, Decision, String, u32),
    Read(u64, ReadRequest),
    Ping(u64),
    Pong(u64, Heartbeat),
    Error(u64, ErrorCode),
    Goodbye(GoodbyeReason),
    Other,
}

fn frame(msg: &Message<'_>, id: u64) -> Vec<u8> {
    frame_v(1, msg, id)
}

/// A frame with header `version` (and that version's payload layout).
fn frame_v(version: u16, msg: &Message<'_>, id: u64) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = msg.encode_for(version, id, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn hello_msg(caps: Capabilities, min: u16, max: u16) -> Message<'static> {
    Message::Hello(Hello {
        version_min: min,
        version_max: max,
        os: OsKind::Windows,
        agent_version: AgentVersion::default(),
        capabilities: caps,
        max_frame_len: MAX_FRAME_LEN as u32,
        max_reads_in_flight: 4,
        guest_name: "vm-1",
    })
}

fn event_msg(size: u64, path: &'static str) -> Message<'static> {
    Message::FileEvent(FileEvent {
        kind: EventKind::Open,
        process_id: 1,
        desired_access: 1,
        create_disposition: CreateDisposition::Open,
        file: FileIdentity {
            volume_serial: 9,
            file_id: [1; 16],
            size,
            last_write_time: 5,
        },
        path: FilePath::Utf8(path),
        content: thinagent_protocol::InlineContent::NONE,
    })
}

struct Harness {
    s: HostSession,
    t0: Instant,
    now: Instant,
    /// Header versions of the frames the last [`Harness::out`] returned.
    versions: Vec<u16>,
}

impl Harness {
    fn new(limits: SessionLimits) -> Self {
        let t0 = Instant::now();
        Self {
            s: HostSession::new(limits, t0),
            t0,
            now: t0,
            versions: Vec::new(),
        }
    }

    fn connected() -> Self {
        let mut h = Self::new(SessionLimits::default());
        h.send(&hello_msg(Capabilities::READ_CONTENT, 1, 1), 1);
        assert!(matches!(h.out()[..], [Out::HelloAck(1, _)]));
        assert!(matches!(h.events()[..], [SessionEvent::Connected(_)]));
        h
    }

    fn send(&mut self, msg: &Message<'_>, id: u64) {
        let bytes = frame(msg, id);
        self.s.receive(&bytes, self.now);
    }

    /// Sends a frame with header `version`.
    fn send_v(&mut self, version: u16, msg: &Message<'_>, id: u64) {
        let bytes = frame_v(version, msg, id);
        self.s.receive(&bytes, self.now);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.handle_timeout(self.now);
    }

    fn out(&mut self) -> Vec<Out> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 1000];
        while let Some(n) = self.s.poll_transmit(&mut buf) {
            bytes.extend_from_slice(&buf[..n]);
        }
        let mut rest = &bytes[..];
        let mut out = Vec::new();
        self.versions.clear();
        while !rest.is_empty() {
            let Ok(Decoded::Frame { frame, consumed }) = decode_frame(rest) else {
                panic!("host sent an undecodable frame: {rest:02x?}");
            };
            self.versions.push(frame.version);
            out.push(match frame.message {
                Message::HelloAck(a) => Out::HelloAck(frame.request_id, a),
                Message::Verdict(v) => Out::Verdict(
                    frame.request_id,
                    v.decision,
                    v.threat_name.to_owned(),
                    v.cache_ttl_secs,
                ),
                Message::ReadRequest(r) => Out::Read(frame.request_id, r),
                Message::Ping(_) => Out::Ping(frame.request_id),
                Message::Pong(h) => Out::Pong(frame.request_id, h),
                Message::Error(e) => Out::Error(frame.request_id, e.code),
                Message::Goodbye(g) => Out::Goodbye(g.reason),
                _ => Out::Other,
            });
            rest = &rest[consumed..];
        }
        out
    }

    fn events(&mut self) -> Vec<SessionEvent> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }

    fn read_data(&mut self, read_id: u64, event_id: u64, offset: u64, outcome: ReadOutcome<'_>) {
        self.send(
            &Message::ReadData(ReadData {
                event_id,
                offset,
                outcome,
            }),
            read_id,
        );
    }
}

#[test]
fn handshake_acks_with_limits() {
    let mut h = Harness::new(SessionLimits::default());
    h.send(&hello_msg(Capabilities::READ_CONTENT, 1, 3), 77);
    let out = h.out();
    let [Out::HelloAck(77, ack)] = out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(ack.version, 2);
    // No INLINE_CONTENT: no inline content allowed.
    assert_eq!(ack.max_inline_len, 0);
    assert_eq!(ack.max_read_chunk, thinagent_protocol::MAX_READ_CHUNK);
    assert_eq!(ack.max_events_in_flight, 64);
    let ev = h.events();
    let [SessionEvent::Connected(info)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!((info.name.as_str(), info.version), ("vm-1", 2));
    assert_eq!(h.s.guest().map(|g| g.max_reads_in_flight), Some(4));
}

#[test]
fn wrong_version_gets_error_and_goodbye() {
    let mut h = Harness::new(SessionLimits::default());
    h.send(&hello_msg(Capabilities::READ_CONTENT, 3, 5), 3);
    assert_eq!(
        h.out(),
        vec![
            Out::Error(3, ErrorCode::VersionUnsupported),
            Out::Goodbye(GoodbyeReason::VersionUnsupported)
        ]
    );
    // Before HelloAck everything carries the handshake version (§6.6).
    assert_eq!(h.versions, [1, 1]);
    assert!(h.s.is_closed());
    assert_eq!(
        h.events(),
        vec![SessionEvent::Closed(CloseReason::VersionUnsupported {
            min: 3,
            max: 5
        })]
    );
}

#[test]
fn message_before_hello_is_fatal() {
    let mut h = Harness::new(SessionLimits::default());
    h.send(&event_msg(1, "/a"), 1);
    // §9: the fatal Error echoes the offending frame's request id.
    assert_eq!(
        h.out(),
        vec![
            Out::Error(1, ErrorCode::UnexpectedMessage),
            Out::Goodbye(GoodbyeReason::ProtocolError)
        ]
    );
    assert!(h.s.is_closed());
}

#[test]
fn handshake_timeout_says_goodbye() {
    let mut h = Harness::new(SessionLimits::default());
    h.advance(Duration::from_millis(4_999));
    assert!(h.out().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.out(), vec![Out::Goodbye(GoodbyeReason::Timeout)]);
    assert_eq!(
        h.events(),
        vec![SessionEvent::Closed(CloseReason::HandshakeTimeout)]
    );
}

#[test]
fn query_answered_by_app_from_cache() {
    let mut h = Harness::connected();
    h.send(&event_msg(10, "/etc/x"), 5);
    let ev = h.events();
    let [SessionEvent::Query(q)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!((q.id, q.path.to_string_lossy().as_str()), (5, "/etc/x"));
    assert_eq!(q.guest.name, "vm-1");
    h.s.verdict(5, Decision::Deny, "Bad", 60, h.now).unwrap();
    assert_eq!(
        h.out(),
        vec![Out::Verdict(5, Decision::Deny, "Bad".into(), 60)]
    );
    assert_eq!(
        h.s.verdict(5, Decision::Allow, "", 0, h.now),
        Err(CallError::UnknownQuery(5))
    );
    assert!(h.out().is_empty(), "answered exactly once");
}

#[test]
fn fetch_pulls_chunks_in_order_and_ends() {
    let limits = SessionLimits {
        max_read_chunk: 4,
        ..SessionLimits::default()
    };
    let mut h = Harness::new(limits);
    h.send(&hello_msg(Capabilities::READ_CONTENT, 1, 1), 1);
    h.out();
    h.events();
    h.send(&event_msg(10, "/f"), 9);
    h.events();
    h.s.fetch(9, h.now).unwrap();
    let reads = h.out();
    // Guest allows 4 reads: [0,4) [4,8) [8,10).
    let ranges: Vec<(u64, u32)> = reads
        .iter()
        .map(|o| match o {
            Out::Read(_, r) => (r.offset, r.length),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ranges, vec![(0, 4), (4, 4), (8, 2)]);
    let ids: Vec<u64> = reads
        .iter()
        .map(|o| match o {
            Out::Read(id, _) => *id,
            _ => 0,
        })
        .collect();
    // Answer out of order: last, then a short first, then middle.
    h.read_data(ids[2], 9, 8, ReadOutcome::EndOfFile(b"ij"));
    assert!(h.events().is_empty(), "nothing contiguous yet");
    h.read_data(ids[0], 9, 0, ReadOutcome::Data(b"ab"));
    let ev = h.events();
    assert_eq!(
        ev,
        vec![SessionEvent::Content {
            id: 9,
            offset: 0,
            data: b"ab".to_vec()
        }]
    );
    // The short read left a gap [2,4) which is requested next.
    let gap = h.out();
    let [Out::Read(gap_id, r)] = gap[..] else {
        panic!("{gap:?}")
    };
    assert_eq!((r.offset, r.length), (2, 2));
    h.read_data(ids[1], 9, 4, ReadOutcome::Data(b"efgh"));
    assert!(h.events().is_empty());
    h.read_data(gap_id, 9, 2, ReadOutcome::Data(b"cd"));
    let ev = h.events();
    let data: Vec<u8> = ev
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Content { data, .. } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(data, b"cdefghij");
    assert_eq!(
        ev.last(),
        Some(&SessionEvent::ContentEnd { id: 9, size: 10 })
    );
    h.s.verdict(9, Decision::Allow, "", 30, h.now).unwrap();
    assert_eq!(h.s.reads_in_flight(), 0);
    assert_eq!(h.s.bytes_in_flight(), 0);
}

#[test]
fn honest_eof_answers_to_reads_past_the_end_are_consistent() {
    let limits = SessionLimits {
        max_read_chunk: 4,
        ..SessionLimits::default()
    };
    let mut h = Harness::new(limits);
    h.send(&hello_msg(Capabilities::READ_CONTENT, 1, 1), 1);
    h.out();
    h.events();
    // Declared 12 bytes, but the file shrank to 6.
    h.send(&event_msg(12, "/shrunk"), 7);
    h.events();
    h.s.fetch(7, h.now).unwrap();
    let ids: Vec<u64> = h
        .out()
        .iter()
        .map(|o| match o {
            Out::Read(id, _) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 3);
    h.read_data(ids[2], 7, 8, ReadOutcome::EndOfFile(b""));
    h.read_data(ids[1], 7, 4, ReadOutcome::EndOfFile(b"ef"));
    h.read_data(ids[0], 7, 0, ReadOutcome::Data(b"abcd"));
    let ev = h.events();
    assert_eq!(
        ev.last(),
        Some(&SessionEvent::ContentEnd { id: 7, size: 6 })
    );
    // An end of file before data already received is inconsistent.
    h.send(&event_msg(8, "/liar"), 8);
    h.events();
    h.s.fetch(8, h.now).unwrap();
    let ids: Vec<u64> = h
        .out()
        .iter()
        .map(|o| match o {
            Out::Read(id, _) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    h.read_data(ids[1], 8, 4, ReadOutcome::Data(b"efgh"));
    h.read_data(ids[0], 8, 0, ReadOutcome::EndOfFile(b"ab"));
    assert_eq!(
        h.events(),
        vec![SessionEvent::ContentFailed {
            id: 8,
            reason: ContentFailure::Inconsistent
        }]
    );
}

#[test]
fn file_exactly_at_declared_size_probes_for_eof() {
    let mut h = Harness::connected();
    h.send(&event_msg(3, "/f"), 2);
    h.events();
    h.s.fetch(2, h.now).unwrap();
    let out = h.out();
    let [Out::Read(r1, req)] = out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((req.offset, req.length), (0, 3));
    h.read_data(r1, 2, 0, ReadOutcome::Data(b"abc"));
    let out = h.out();
    let [Out::Read(r2, req)] = out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(req.offset, 3);
    h.read_data(r2, 2, 3, ReadOutcome::EndOfFile(b""));
    let ev = h.events();
    assert_eq!(
        ev.last(),
        Some(&SessionEvent::ContentEnd { id: 2, size: 3 })
    );
}

#[test]
fn too_large_and_timeout_get_policy_verdicts() {
    let limits = SessionLimits {
        max_file_size: 100,
        policy: PolicyVerdicts {
            too_large: Decision::Deny,
            ..PolicyVerdicts::default()
        },
        ..SessionLimits::default()
    };
    let mut h = Harness::new(limits);
    h.send(&hello_msg(Capabilities::READ_CONTENT, 1, 1), 1);
    h.out();
    h.events();
    h.send(&event_msg(101, "/big"), 4);
    h.events();
    h.s.fetch(4, h.now).unwrap();
    assert_eq!(
        h.out(),
        vec![Out::Verdict(4, Decision::Deny, String::new(), 0)]
    );
    let ev = h.events();
    assert!(matches!(
        &ev[..],
        [SessionEvent::Finished {
            outcome: QueryOutcome::Policy {
                reason: PolicyReason::TooLarge,
                ..
            },
            ..
        }]
    ));
    h.send(&event_msg(1, "/slow"), 6);
    h.events();
    h.advance(Duration::from_millis(1_499));
    assert!(h.out().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(
        h.out(),
        vec![Out::Verdict(6, Decision::AllowNoCache, String::new(), 0)]
    );
    assert!(h.s.verdict(6, Decision::Allow, "", 1, h.now).is_err());
}

#[test]
fn no_read_content_capability_gets_policy_verdict() {
    let mut h = Harness::new(SessionLimits::default());
    h.send(&hello_msg(Capabilities::default(), 1, 1), 1);
    h.out();
    h.events();
    h.send(&event_msg(1, "/x"), 2);
    h.events();
    h.s.fetch(2, h.now).unwrap();
    assert_eq!(
        h.out(),
        vec![Out::Verdict(2, Decision::AllowNoCache, String::new(), 0)]
    );
}

#[test]
fn flood_beyond_in_flight_limit_answers_all_then_closes() {
    let limits = SessionLimits {
        max_events_in_flight: 2,
        ..SessionLimits::default()
    };
    let mut h = Harness::new(limits);
    h.send(&hello_msg(Capabilities::READ_CONTENT, 1, 1), 1);
    h.out();
    h.events();
    // One excess event (a guest that already forgot a query) is answered
    // at once and the session goes on.
    for id in [10, 11, 12] {
        h.send(&event_msg(1, "/f"), id);
    }
    assert_eq!(
        h.out(),
        vec![Out::Verdict(12, Decision::AllowNoCache, String::new(), 0)]
    );
    assert!(!h.s.is_closed());
    h.s.verdict(10, Decision::Allow, "", 5, h.now).unwrap();
    h.send(&event_msg(1, "/f"), 13);
    assert!(!h.s.is_closed());
    h.out();
    // A flood: more excess events in a row than the limit is fatal.
    let mut bytes = Vec::new();
    for id in 20..30 {
        bytes.extend(frame(&event_msg(1, "/f"), id));
    }
    h.s.receive(&bytes, h.now);
    let out = h.out();
    let verdicts: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Out::Verdict(id, ..) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(verdicts, vec![20, 21, 22, 11, 13]);
    assert_eq!(
        out[5..],
        [
            // The event that made the run fatal (§9).
            Out::Error(22, ErrorCode::LimitExceeded),
            Out::Goodbye(GoodbyeReason::ProtocolError)
        ]
    );
    assert!(h.s.is_closed());
    let ev = h.events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, SessionEvent::Finished { .. }))
            .count(),
        6
    );
}

#[test]
fn unknown_read_data_is_ignored_wrong_echo_is_fatal() {
    let mut h = Harness::connected();
    h.read_data(999, 1, 0, ReadOutcome::Data(b"x"));
    assert_eq!(
        h.events(),
        vec![SessionEvent::Anomaly(Anomaly::UnknownReadData {
            read_id: 999
        })]
    );
    assert!(!h.s.is_closed());
    h.send(&event_msg(5, "/f"), 3);
    h.events();
    h.s.fetch(3, h.now).unwrap();
    let out = h.out();
    let [Out::Read(rid, _)] = out[..] else {
        panic!("{out:?}")
    };
    h.read_data(rid, 3, 1, ReadOutcome::Data(b"x"));
    let out = h.out();
    assert_eq!(
        out,
        vec![
            Out::Verdict(3, Decision::AllowNoCache, String::new(), 0),
            Out::Error(rid, ErrorCode::UnexpectedMessage),
            Out::Goodbye(GoodbyeReason::ProtocolError)
        ]
    );
}

#[test]
fn longer_than_requested_is_fatal_and_read_error_fails_content() {
    let mut h = Harness::connected();
    h.send(&event_msg(2, "/f"), 3);
    h.send(&event_msg(2, "/g"), 4);
    h.events();
    h.s.fetch(3, h.now).unwrap();
    h.s.fetch(4, h.now).unwrap();
    let out = h.out();
    let [Out::Read(r3, _), Out::Read(r4, _)] = out[..] else {
        panic!("{out:?}")
    };
    h.read_data(
        r4,
        4,
        0,
        ReadOutcome::Error(thinagent_protocol::OsError::Errno(5)),
    );
    assert_eq!(
        h.events(),
        vec![SessionEvent::ContentFailed {
            id: 4,
            reason: ContentFailure::ReadError(thinagent_protocol::OsError::Errno(5))
        }]
    );
    h.read_data(r3, 3, 0, ReadOutcome::Data(b"abc"));
    let out = h.out();
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(h.s.is_closed());
}

#[test]
fn ping_pong_heartbeat_and_idle_timeout() {
    let mut h = Harness::connected();
    h.send(
        &Message::Ping(Heartbeat {
            nonce: 7,
            timestamp_ms: 8,
        }),
        42,
    );
    assert_eq!(
        h.out(),
        vec![Out::Pong(
            42,
            Heartbeat {
                nonce: 7,
                timestamp_ms: 8
            }
        )]
    );
    h.advance(Duration::from_secs(10));
    let out = h.out();
    let [Out::Ping(nonce)] = out[..] else {
        panic!("{out:?}")
    };
    h.send(
        &Message::Pong(Heartbeat {
            nonce,
            timestamp_ms: 0,
        }),
        nonce,
    );
    assert!(h.events().is_empty());
    h.advance(Duration::from_secs(30));
    assert!(h.out().contains(&Out::Goodbye(GoodbyeReason::Timeout)));
    assert_eq!(
        h.events(),
        vec![SessionEvent::Closed(CloseReason::IdleTimeout)]
    );
    let _ = h.t0;
}

#[test]
fn peer_goodbye_abandons_open_queries_and_sends_nothing() {
    let mut h = Harness::connected();
    h.send(&event_msg(2, "/f"), 3);
    h.events();
    h.send(
        &Message::Goodbye(Goodbye {
            reason: GoodbyeReason::Shutdown,
        }),
        0,
    );
    assert!(h.out().is_empty());
    let ev = h.events();
    assert!(matches!(
        &ev[..],
        [
            SessionEvent::Finished {
                outcome: QueryOutcome::Abandoned,
                ..
            },
            SessionEvent::Closed(CloseReason::PeerGoodbye(GoodbyeReason::Shutdown))
        ]
    ));
}

#[test]
fn garbage_closes_with_malformed() {
    let mut h = Harness::connected();
    h.s.receive(b"GARBAGE", h.now);
    assert_eq!(
        h.out(),
        vec![
            Out::Error(0, ErrorCode::MalformedFrame),
            Out::Goodbye(GoodbyeReason::ProtocolError)
        ]
    );
    assert!(matches!(
        h.events()[..],
        [SessionEvent::Closed(CloseReason::Decode(_))]
    ));
}

#[test]
fn bytes_in_flight_budget_limits_reads() {
    let limits = SessionLimits {
        max_bytes_in_flight: 100_000,
        ..SessionLimits::default()
    };
    let mut h = Harness::new(limits);
    h.send(&hello_msg(Capabilities::READ_CONTENT, 1, 1), 1);
    h.out();
    h.events();
    h.send(&event_msg(1_000_000, "/big"), 2);
    h.events();
    h.s.fetch(2, h.now).unwrap();
    let out = h.out();
    let total: u64 = out
        .iter()
        .map(|o| match o {
            Out::Read(_, r) => u64::from(r.length),
            _ => 0,
        })
        .sum();
    assert_eq!(total, 100_000);
    assert_eq!(h.s.bytes_in_flight(), 100_000);
}

/// One step of a random peer.
#[derive(Debug, Clone)]
enum Act {
    Bytes(Vec<u8>),
    Frame(u8, u64, u64, u16),
    Advance(u16),
    AppVerdict(u8),
    AppFetch(u8),
    Consume(u8, u16),
    Close,
    Eof,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Act::Bytes),
        (0u8..11, 0u64..6, 0u64..200, 0u16..300).prop_map(|(k, a, b, c)| Act::Frame(k, a, b, c)),
        any::<u16>().prop_map(Act::Advance),
        any::<u8>().prop_map(Act::AppVerdict),
        any::<u8>().prop_map(Act::AppFetch),
        (any::<u8>(), any::<u16>()).prop_map(|(a, b)| Act::Consume(a, b)),
        Just(Act::Close),
        Just(Act::Eof),
    ]
}

fn valid_frame(kind: u8, id: u64, x: u64, len: u16) -> Vec<u8> {
    let data = vec![0x41u8; usize::from(len)];
    // Version 2: a Hello offering it with INLINE_CONTENT, and events with
    // the file's first `len` bytes or (kind 10) the whole file inline. In
    // a version-1 session the events are skipped.
    match kind {
        8 => return frame(&hello_msg(INLINE_GUEST, 1, 2), id),
        9 => return frame_v(2, &inline_event(x.max(len.into()), &data, false), id),
        10 => return frame_v(2, &inline_event(len.into(), &data, true), id),
        _ => {}
    }
    let msg = match kind {
        0 => hello_msg(Capabilities::READ_CONTENT, 1, 1),
        1 | 2 => event_msg(x, "/p"),
        3 => Message::ReadData(ReadData {
            event_id: id,
            offset: x,
            outcome: if len == 0 {
                ReadOutcome::EndOfFile(&[])
            } else {
                ReadOutcome::Data(&data)
            },
        }),
        4 => Message::ReadData(ReadData {
            event_id: id,
            offset: x,
            outcome: ReadOutcome::EndOfFile(&data),
        }),
        5 => Message::Ping(Heartbeat {
            nonce: x,
            timestamp_ms: 0,
        }),
        6 => Message::ReadData(ReadData {
            event_id: id,
            offset: x,
            outcome: ReadOutcome::Cancelled,
        }),
        _ => Message::Goodbye(Goodbye {
            reason: GoodbyeReason::Shutdown,
        }),
    };
    frame(
        &msg,
        if kind == 3 || kind == 4 || kind == 6 {
            x % 8
        } else {
            id
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No panic, at most one Verdict per event on the wire (an id may be
    /// reused once its event is answered: §7 asks only that outstanding ids
    /// be unique), every Query ends exactly once, and limits hold.
    #[test]
    fn random_peers_and_apps_keep_the_invariants(acts in prop::collection::vec(act(), 1..80)) {
        let limits = SessionLimits {
            max_read_chunk: 16,
            max_bytes_in_flight: 40,
            max_events_in_flight: 4,
            ..SessionLimits::default()
        };
        let mut h = Harness::new(limits);
        let mut verdicts: std::collections::HashMap<u64, usize> = Default::default();
        let mut open: std::collections::HashSet<u64> = Default::default();
        let mut ended: std::collections::HashSet<u64> = Default::default();
        let mut queries: std::collections::HashMap<u64, usize> = Default::default();
        let mut tx = Vec::new();
        // Inline bytes of open queries: charged once fetched, on top of
        // what the host itself asks for.
        let mut inline: std::collections::HashMap<u64, u64> = Default::default();
        for a in acts {
            match a {
                Act::Bytes(b) => h.s.receive(&b, h.now),
                Act::Frame(k, id, x, len) => {
                    let f = valid_frame(k, id, x, len);
                    h.s.receive(&f, h.now);
                }
                Act::Advance(ms) => h.advance(Duration::from_millis(ms.into())),
                Act::AppVerdict(i) => {
                    if let Some(id) = open.iter().copied().nth(usize::from(i) % open.len().max(1))
                        && h.s.verdict(id, Decision::Allow, "T", 5, h.now).is_ok() {
                            open.remove(&id);
                            prop_assert!(ended.insert(id));
                    }
                }
                Act::AppFetch(i) => {
                    if let Some(id) = open.iter().copied().nth(usize::from(i) % open.len().max(1)) {
                        let _ = h.s.fetch(id, h.now);
                    }
                }
                Act::Consume(i, n) => {
                    if let Some(id) = open.iter().copied().nth(usize::from(i) % open.len().max(1)) {
                        h.s.consumed(id, usize::from(n));
                    }
                }
                Act::Close => h.s.close(GoodbyeReason::Shutdown, h.now),
                Act::Eof => h.s.transport_closed(h.now),
            }
            prop_assert!(h.s.reads_in_flight() <= 4);
            let pushed: u64 = open.iter().filter_map(|id| inline.get(id)).sum();
            prop_assert!(h.s.bytes_in_flight() <= 40 + 16 * 4 + pushed);
            while let Some(e) = h.s.poll_event() {
                match e {
                    SessionEvent::Query(q) => {
                        prop_assert!(open.insert(q.id));
                        inline.insert(q.id, q.inline.len.into());
                        // A reused id is a new event: it may end again.
                        ended.remove(&q.id);
                        *queries.entry(q.id).or_default() += 1;
                    }
                    SessionEvent::Finished { query, .. } => {
                        open.remove(&query.id);
                        prop_assert!(ended.insert(query.id) || !open.contains(&query.id));
                    }
                    _ => {}
                }
            }
            let mut buf = [0u8; 333];
            while let Some(n) = h.s.poll_transmit(&mut buf) {
                tx.extend_from_slice(&buf[..n]);
            }
        }
        // Every byte the host sent decodes; Verdicts are unique per id.
        let mut rest = &tx[..];
        let mut goodbye = false;
        while !rest.is_empty() {
            let Ok(Decoded::Frame { frame, consumed }) = decode_frame(rest) else {
                return Err(TestCaseError::fail("undecodable host output"));
            };
            prop_assert!(!goodbye, "frame after Goodbye");
            match frame.message {
                Message::Verdict(_) => {
                    let n = verdicts.entry(frame.request_id).or_default();
                    *n += 1;
                }
                Message::Goodbye(_) => goodbye = true,
                _ => {}
            }
            rest = &rest[consumed..];
        }
        if h.s.is_closed() {
            prop_assert!(open.is_empty(), "open after close: {open:?}");
        }
        for (id, n) in &verdicts {
            prop_assert!(*n <= queries.get(id).copied().unwrap_or(0), "{n} verdicts for id {id}");
        }
    }
}

#[test]
fn fuzz_seeds_keep_the_contract() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/host_session");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        super::fuzz_script::run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 3, "seed corpus missing in {}", dir.display());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The fuzz script on random bytes (a cheap in-tree fuzzer).
    #[test]
    fn fuzz_script_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        super::fuzz_script::run(&data);
    }
}

#[test]
fn limits_validate_and_normalize() {
    assert_eq!(SessionLimits::default().validate(), Ok(()));
    let bad = [
        (
            SessionLimits {
                max_frame_len: 100,
                ..SessionLimits::default()
            },
            "max_frame_len 100",
        ),
        (
            SessionLimits {
                max_events_in_flight: 0,
                ..SessionLimits::default()
            },
            "max_events_in_flight",
        ),
        (
            SessionLimits {
                query_timeout: Duration::ZERO,
                ..SessionLimits::default()
            },
            "query_timeout",
        ),
        (
            SessionLimits {
                idle_timeout: Duration::from_secs(5),
                ..SessionLimits::default()
            },
            "idle_timeout",
        ),
    ];
    for (limits, needle) in bad {
        let err = limits.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
        assert_eq!(limits.normalized().validate(), Ok(()), "{needle}");
    }
    let small = SessionLimits {
        max_frame_len: 4096,
        ..SessionLimits::default()
    }
    .normalized();
    assert_eq!(small.max_read_chunk, 4096 - 56);
}

// ----- protocol version 2: negotiation, session version, inline content ------

const INLINE_GUEST: Capabilities =
    Capabilities(Capabilities::READ_CONTENT.0 | Capabilities::INLINE_CONTENT.0);

/// A version-2 `FileEvent` of a `size`-byte file carrying `content`.
fn inline_event(size: u64, content: &[u8], whole_file: bool) -> Message<'_> {
    let Message::FileEvent(mut e) = event_msg(size, "/inline") else {
        unreachable!()
    };
    e.content = InlineContent {
        bytes: content,
        whole_file,
    };
    Message::FileEvent(e)
}

impl Harness {
    /// Connected in version 2 with `caps`; returns the HelloAck.
    fn connected_v2(limits: SessionLimits, caps: Capabilities) -> (Self, HelloAck) {
        let mut h = Self::new(limits);
        h.send(&hello_msg(caps, 1, 2), 1);
        let out = h.out();
        let [Out::HelloAck(1, ack)] = out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(ack.version, 2);
        assert!(matches!(h.events()[..], [SessionEvent::Connected(_)]));
        (h, ack)
    }

    /// Sends a version-2 event and returns its announced query.
    fn query_v2(&mut self, id: u64, msg: &Message<'_>) -> Arc<Query> {
        self.send_v(2, msg, id);
        let ev = self.events();
        let [SessionEvent::Query(q)] = &ev[..] else {
            panic!("{ev:?}")
        };
        Arc::clone(q)
    }
}

#[test]
fn negotiation_matrix_picks_the_highest_common_version() {
    // (guest min, guest max, caps, host max_inline_len) -> (version,
    // announced max_inline_len).
    let cases = [
        (1, 1, INLINE_GUEST, MAX_INLINE_LEN, 1, 0),
        (1, 2, INLINE_GUEST, MAX_INLINE_LEN, 2, MAX_INLINE_LEN),
        (2, 2, INLINE_GUEST, MAX_INLINE_LEN, 2, MAX_INLINE_LEN),
        (2, 3, INLINE_GUEST, MAX_INLINE_LEN, 2, MAX_INLINE_LEN),
        // Version 2 without INLINE_CONTENT: nothing inline.
        (1, 2, Capabilities::READ_CONTENT, MAX_INLINE_LEN, 2, 0),
        // Inline content turned off by the host.
        (1, 2, INLINE_GUEST, 0, 2, 0),
        (2, 3, INLINE_GUEST, 1000, 2, 1000),
        // Version 1: the field is reserved, whatever the guest says.
        (1, 1, INLINE_GUEST, 1000, 1, 0),
    ];
    for (min, max, caps, host_inline, version, announced) in cases {
        let ctx = format!("guest {min}..={max} caps {caps:?} host inline {host_inline}");
        let mut h = Harness::new(SessionLimits {
            max_inline_len: host_inline,
            ..SessionLimits::default()
        });
        h.send(&hello_msg(caps, min, max), 9);
        let out = h.out();
        let [Out::HelloAck(9, ack)] = out[..] else {
            panic!("{ctx}: {out:?}")
        };
        assert_eq!(
            (ack.version, ack.max_inline_len),
            (version, announced),
            "{ctx}"
        );
        // HelloAck always carries the handshake version in its header.
        assert_eq!(h.versions, [1], "{ctx}");
        let ev = h.events();
        let [SessionEvent::Connected(info)] = &ev[..] else {
            panic!("{ctx}: {ev:?}")
        };
        assert_eq!((info.version, info.max_inline_len), (version, announced));
        // From then on every frame carries the session version, both ways.
        h.send_v(
            version,
            &Message::Ping(Heartbeat {
                nonce: 3,
                timestamp_ms: 4,
            }),
            5,
        );
        assert_eq!(
            h.out(),
            vec![Out::Pong(
                5,
                Heartbeat {
                    nonce: 3,
                    timestamp_ms: 4
                }
            )],
            "{ctx}"
        );
        assert_eq!(h.versions, [version], "{ctx}");
    }
    // The frame limit caps what is announced.
    let mut h = Harness::new(SessionLimits {
        max_frame_len: 8192,
        ..SessionLimits::default()
    });
    h.send(&hello_msg(INLINE_GUEST, 1, 2), 1);
    let out = h.out();
    let [Out::HelloAck(1, ack)] = out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(ack.max_inline_len, 8192 - 24 - 64 - 1);
    assert_eq!(max_inline_len_for(MAX_FRAME_LEN as u32), MAX_INLINE_LEN);
}

#[test]
fn whole_inline_file_is_complete_without_any_read_request() {
    let (mut h, _) = Harness::connected_v2(SessionLimits::default(), INLINE_GUEST);
    let q = h.query_v2(7, &inline_event(5, b"hello", true));
    assert_eq!(
        q.inline,
        Inline {
            len: 5,
            whole_file: true
        }
    );
    h.s.fetch(7, h.now).unwrap();
    assert!(h.out().is_empty(), "no ReadRequest for a WHOLE_FILE event");
    assert_eq!(
        h.events(),
        vec![
            SessionEvent::Content {
                id: 7,
                offset: 0,
                data: b"hello".to_vec()
            },
            SessionEvent::ContentEnd { id: 7, size: 5 },
        ]
    );
    // Charged like read content until consumed.
    assert_eq!(h.s.bytes_in_flight(), 5);
    h.s.consumed(7, 5);
    assert_eq!(h.s.bytes_in_flight(), 0);
    assert_eq!(h.s.fetch(7, h.now), Err(CallError::AlreadyFetching(7)));
    h.s.verdict(7, Decision::Deny, "T", 60, h.now).unwrap();
    assert_eq!(
        h.out(),
        vec![Out::Verdict(7, Decision::Deny, "T".into(), 60)]
    );
    assert_eq!(h.versions, [2]);
    // An empty file: WHOLE_FILE with no bytes, complete at once.
    h.query_v2(8, &inline_event(0, b"", true));
    h.s.fetch(8, h.now).unwrap();
    assert!(h.out().is_empty());
    assert_eq!(
        h.events(),
        vec![SessionEvent::ContentEnd { id: 8, size: 0 }]
    );
}

#[test]
fn whole_inline_file_needs_no_read_content_but_partial_does() {
    let (mut h, _) = Harness::connected_v2(SessionLimits::default(), Capabilities::INLINE_CONTENT);
    h.query_v2(7, &inline_event(3, b"abc", true));
    h.s.fetch(7, h.now).unwrap();
    assert!(h.out().is_empty());
    assert_eq!(h.events().len(), 2, "Content and ContentEnd");
    // Only a prefix, and the rest cannot be read: policy verdict.
    h.query_v2(8, &inline_event(10, b"abc", false));
    h.s.fetch(8, h.now).unwrap();
    assert_eq!(
        h.out(),
        vec![Out::Verdict(8, Decision::AllowNoCache, String::new(), 0)]
    );
}

#[test]
fn partial_inline_content_is_delivered_then_reads_start_at_content_len() {
    let limits = SessionLimits {
        max_read_chunk: 4,
        ..SessionLimits::default()
    };
    let (mut h, _) = Harness::connected_v2(limits, INLINE_GUEST);
    h.query_v2(9, &inline_event(10, b"012", false));
    h.s.fetch(9, h.now).unwrap();
    let reads = h.out();
    let ranges: Vec<(u64, u64, u32)> = reads
        .iter()
        .map(|o| match o {
            Out::Read(id, r) => (*id, r.offset, r.length),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ranges, vec![(1, 3, 4), (2, 7, 3)]);
    assert_eq!(h.versions, [2, 2]);
    assert_eq!(
        h.events(),
        vec![SessionEvent::Content {
            id: 9,
            offset: 0,
            data: b"012".to_vec()
        }]
    );
    h.s.consumed(9, 3);
    h.send_v(
        2,
        &Message::ReadData(ReadData {
            event_id: 9,
            offset: 3,
            outcome: ReadOutcome::Data(b"3456"),
        }),
        1,
    );
    h.send_v(
        2,
        &Message::ReadData(ReadData {
            event_id: 9,
            offset: 7,
            outcome: ReadOutcome::EndOfFile(b"789"),
        }),
        2,
    );
    assert_eq!(
        h.events(),
        vec![
            SessionEvent::Content {
                id: 9,
                offset: 3,
                data: b"3456".to_vec()
            },
            SessionEvent::Content {
                id: 9,
                offset: 7,
                data: b"789".to_vec()
            },
            SessionEvent::ContentEnd { id: 9, size: 10 },
        ]
    );
    // A prefix that is already the declared size: one probe from its end.
    h.query_v2(10, &inline_event(3, b"abc", false));
    h.s.fetch(10, h.now).unwrap();
    let out = h.out();
    let [Out::Read(_, r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((r.event_id, r.offset), (10, 3));
}

/// A version-2 `OnDemand` event (§14.4) of a `size`-byte file.
fn on_demand_event(size: u64, path: &'static str) -> Message<'static> {
    let Message::FileEvent(e) = event_msg(size, path) else {
        unreachable!()
    };
    Message::FileEvent(FileEvent {
        kind: EventKind::OnDemand,
        process_id: 0,
        desired_access: 0,
        ..e
    })
}

#[test]
fn on_access_reads_go_before_on_demand_ones() {
    let limits = SessionLimits {
        max_read_chunk: 4,
        max_bytes_in_flight: 8,
        ..SessionLimits::default()
    };
    let (mut h, _) = Harness::connected_v2(limits, Capabilities::READ_CONTENT);
    h.query_v2(5, &on_demand_event(100, "/scan/a"));
    h.s.fetch(5, h.now).unwrap();
    let reads: Vec<(u64, u64, u64)> = h
        .out()
        .iter()
        .map(|o| match o {
            Out::Read(id, r) => (*id, r.event_id, r.offset),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reads,
        [(1, 5, 0), (2, 5, 4)],
        "the scan takes the idle budget"
    );
    // An open arrives while the scan's file holds the whole budget.
    h.query_v2(6, &event_msg(100, "/open"));
    h.s.fetch(6, h.now).unwrap();
    assert!(h.out().is_empty());
    // The scan's first chunk arrives and is consumed: the freed budget
    // goes to the open, though the scan's file came first.
    h.send_v(
        2,
        &Message::ReadData(ReadData {
            event_id: 5,
            offset: 0,
            outcome: ReadOutcome::Data(b"abcd"),
        }),
        1,
    );
    h.events();
    h.s.consumed(5, 4);
    let out = h.out();
    let [Out::Read(_, r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((r.event_id, r.offset), (6, 0), "{out:?}");
    // Only when the open needs nothing more does the scan read again.
    h.send_v(
        2,
        &Message::ReadData(ReadData {
            event_id: 5,
            offset: 4,
            outcome: ReadOutcome::Data(b"efgh"),
        }),
        2,
    );
    h.events();
    h.s.consumed(5, 4);
    let out = h.out();
    let [Out::Read(_, r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((r.event_id, r.offset), (6, 4), "{out:?}");
}

#[test]
fn an_on_demand_event_gets_the_longer_scan_budget() {
    let limits = SessionLimits {
        heartbeat_interval: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        ..SessionLimits::default()
    };
    let budget = limits.query_timeout;
    let (mut h, _) = Harness::connected_v2(limits, Capabilities::READ_CONTENT);
    h.query_v2(5, &on_demand_event(100, "/scan/a"));
    h.query_v2(6, &event_msg(100, "/open"));
    h.advance(budget + Duration::from_millis(1));
    let out = h.out();
    assert!(
        matches!(&out[..], [Out::Verdict(6, _, _, 0)]),
        "only the open's budget expired: {out:?}"
    );
    let scan_budget = Duration::from_millis(thinagent_protocol::ON_DEMAND_SCAN_BUDGET_MS.into());
    h.advance(scan_budget - budget - Duration::from_millis(2));
    assert!(h.out().is_empty());
    h.advance(Duration::from_millis(2));
    let out = h.out();
    assert!(matches!(&out[..], [Out::Verdict(5, _, _, 0)]), "{out:?}");
}

#[test]
fn inline_content_counts_against_the_scan_limit() {
    let limits = SessionLimits {
        max_file_size: 4,
        policy: PolicyVerdicts {
            too_large: Decision::Deny,
            ..PolicyVerdicts::default()
        },
        ..SessionLimits::default()
    };
    let (mut h, _) = Harness::connected_v2(limits, INLINE_GUEST);
    // Whole file of 5 bytes: too large, never delivered.
    h.query_v2(1, &inline_event(5, b"12345", true));
    h.s.fetch(1, h.now).unwrap();
    assert_eq!(
        h.out(),
        vec![Out::Verdict(1, Decision::Deny, String::new(), 0)]
    );
    assert!(matches!(
        h.events()[..],
        [SessionEvent::Finished {
            outcome: QueryOutcome::Policy {
                reason: PolicyReason::TooLarge,
                ..
            },
            ..
        }]
    ));
    // A prefix longer than the limit (the file grew past its declared
    // size): too large as well.
    h.query_v2(2, &inline_event(3, b"12345", false));
    h.s.fetch(2, h.now).unwrap();
    assert_eq!(
        h.out(),
        vec![Out::Verdict(2, Decision::Deny, String::new(), 0)]
    );
    assert_eq!(h.s.bytes_in_flight(), 0);
}

#[test]
fn inline_content_from_a_guest_without_inline_content_is_fatal() {
    for (content, whole) in [(&b"abc"[..], false), (&b""[..], true), (&b"x"[..], true)] {
        let (mut h, ack) =
            Harness::connected_v2(SessionLimits::default(), Capabilities::READ_CONTENT);
        assert_eq!(ack.max_inline_len, 0);
        h.query_v2(4, &event_msg(10, "/open"));
        let size = if whole { content.len() as u64 } else { 10 };
        h.send_v(2, &inline_event(size, content, whole), 5);
        // The open query gets its policy verdict first; the offending event
        // gets none.
        assert_eq!(
            h.out(),
            vec![
                Out::Verdict(4, Decision::AllowNoCache, String::new(), 0),
                Out::Error(5, ErrorCode::UnexpectedMessage),
                Out::Goodbye(GoodbyeReason::ProtocolError)
            ],
            "{content:?} whole {whole}"
        );
        assert_eq!(h.versions, [2, 2, 2]);
        assert!(h.s.is_closed());
        let ev = h.events();
        assert!(ev.iter().all(|e| !matches!(e, SessionEvent::Query(_))));
        assert!(matches!(
            ev.last(),
            Some(SessionEvent::Closed(CloseReason::Protocol {
                code: ErrorCode::UnexpectedMessage,
                ..
            }))
        ));
    }
}

#[test]
fn inline_content_above_max_inline_len_is_fatal() {
    let limits = SessionLimits {
        max_inline_len: 4,
        ..SessionLimits::default()
    };
    let (mut h, ack) = Harness::connected_v2(limits, INLINE_GUEST);
    assert_eq!(ack.max_inline_len, 4);
    // Exactly the limit is fine.
    h.query_v2(1, &inline_event(4, b"1234", true));
    h.send_v(2, &inline_event(5, b"12345", true), 2);
    assert_eq!(
        h.out(),
        vec![
            Out::Verdict(1, Decision::AllowNoCache, String::new(), 0),
            Out::Error(2, ErrorCode::LimitExceeded),
            Out::Goodbye(GoodbyeReason::ProtocolError)
        ]
    );
    assert!(h.s.is_closed());
    // Inline content turned off: any byte is above the limit; an empty
    // whole file is not.
    let limits = SessionLimits {
        max_inline_len: 0,
        ..SessionLimits::default()
    };
    let (mut h, _) = Harness::connected_v2(limits, INLINE_GUEST);
    h.query_v2(1, &inline_event(0, b"", true));
    h.send_v(2, &inline_event(1, b"x", true), 2);
    assert_eq!(
        h.out()[1..],
        [
            Out::Error(2, ErrorCode::LimitExceeded),
            Out::Goodbye(GoodbyeReason::ProtocolError)
        ]
    );
}

#[test]
fn frozen_types_with_header_version_1_are_accepted_after_version_2() {
    let (mut h, _) = Harness::connected_v2(SessionLimits::default(), INLINE_GUEST);
    // An Error the guest sent before it saw the HelloAck: understood.
    h.send_v(
        1,
        &Message::Error(thinagent_protocol::ErrorMessage {
            code: ErrorCode::Internal,
            text: "late",
        }),
        0,
    );
    assert!(h.out().is_empty());
    assert_eq!(
        h.events(),
        vec![SessionEvent::Anomaly(Anomaly::PeerError {
            request_id: 0,
            code: ErrorCode::Internal
        })]
    );
    h.query_v2(3, &event_msg(1, "/x"));
    // A Goodbye with header version 1 closes; nothing is sent after it.
    h.send_v(
        1,
        &Message::Goodbye(Goodbye {
            reason: GoodbyeReason::Shutdown,
        }),
        0,
    );
    assert!(h.out().is_empty());
    assert!(h.s.is_closed());
}

#[test]
fn other_frames_with_header_version_1_are_skipped_after_version_2() {
    let (mut h, _) = Harness::connected_v2(SessionLimits::default(), INLINE_GUEST);
    // A Ping in the handshake version is not the session's: skipped with
    // Error(VersionUnsupported) echoing its id, in the session version.
    h.send_v(
        1,
        &Message::Ping(Heartbeat {
            nonce: 1,
            timestamp_ms: 2,
        }),
        5,
    );
    assert_eq!(h.out(), vec![Out::Error(5, ErrorCode::VersionUnsupported)]);
    assert_eq!(h.versions, [2]);
    assert!(matches!(
        h.events()[..],
        [SessionEvent::Anomaly(Anomaly::SkippedFrame(_))]
    ));
    // A version-1 FileEvent too: no query, no Verdict.
    h.send(&event_msg(1, "/v1"), 6);
    assert_eq!(h.out(), vec![Out::Error(6, ErrorCode::VersionUnsupported)]);
    assert_eq!(h.s.open_queries(), 0);
    // A second Hello in version 1 is still a Hello (frozen): fatal.
    h.send(&hello_msg(INLINE_GUEST, 1, 2), 8);
    assert_eq!(
        h.out(),
        vec![
            Out::Error(8, ErrorCode::UnexpectedMessage),
            Out::Goodbye(GoodbyeReason::ProtocolError)
        ]
    );
    assert_eq!(h.versions, [2, 2]);
    // And in a version-1 session a version-2 frame is skipped (§6.6).
    let mut h = Harness::connected();
    h.send_v(2, &inline_event(3, b"abc", true), 4);
    assert_eq!(h.out(), vec![Out::Error(4, ErrorCode::VersionUnsupported)]);
    assert_eq!(h.versions, [1]);
    assert_eq!(h.s.open_queries(), 0);
    assert!(!h.s.is_closed());
}

#[test]
fn host_frames_after_a_version_2_hello_ack_carry_version_2() {
    let limits = SessionLimits {
        max_read_chunk: 4,
        ..SessionLimits::default()
    };
    let (mut h, _) = Harness::connected_v2(limits, INLINE_GUEST);
    h.query_v2(1, &event_msg(8, "/r"));
    h.s.fetch(1, h.now).unwrap();
    let mut all = h.out();
    let mut versions = h.versions.clone();
    // The scan budget expires, then a heartbeat is due.
    h.advance(Duration::from_millis(1_500));
    all.extend(h.out());
    versions.extend(&h.versions);
    h.advance(Duration::from_secs(10));
    all.extend(h.out());
    versions.extend(&h.versions);
    h.events();
    h.query_v2(2, &event_msg(8, "/r"));
    h.s.close(GoodbyeReason::Shutdown, h.now);
    all.extend(h.out());
    versions.extend(&h.versions);
    assert!(
        matches!(
            all[..],
            [
                Out::Read(..),
                Out::Read(..),
                Out::Verdict(1, ..),
                Out::Ping(_),
                Out::Verdict(2, ..),
                Out::Goodbye(GoodbyeReason::Shutdown)
            ]
        ),
        "{all:?}"
    );
    assert_eq!(versions, [2; 6]);
}

// ----- host actions (protocol §14) -------------------------------------------

mod host_actions {
    use thinagent_protocol::{
        ActionResult, ActionStatus, MAX_ACTIONS_IN_FLIGHT, RemediateAction, ScanCounters, ScanDone,
        ScanProgress, ScanStatus,
    };

    use super::*;

    const ACTIONS_GUEST: Capabilities = Capabilities(
        Capabilities::READ_CONTENT.0
            | Capabilities::REMEDIATE.0
            | Capabilities::SCAN_TREE.0
            | Capabilities::POLICY.0
            | Capabilities::RESTORE.0,
    );

    fn path() -> GuestPath {
        GuestPath::Utf8("/srv/eicar.com".into())
    }

    fn file() -> FileIdentity {
        FileIdentity {
            volume_serial: 9,
            file_id: [1; 16],
            size: 68,
            last_write_time: 5,
        }
    }

    /// The frames the host sent, each as (request id, header version,
    /// owned bytes of the frame) so the test can decode and look inside.
    fn raw_frames(h: &mut Harness) -> Vec<(u64, Vec<u8>)> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(n) = h.s.poll_transmit(&mut buf) {
            bytes.extend_from_slice(&buf[..n]);
        }
        let mut rest = &bytes[..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let Ok(Decoded::Frame { frame, consumed }) = decode_frame(rest) else {
                panic!("host sent an undecodable frame: {rest:02x?}");
            };
            assert_eq!(frame.version, 2, "every frame after HelloAck is version 2");
            frames.push((frame.request_id, rest[..consumed].to_vec()));
            rest = &rest[consumed..];
        }
        frames
    }

    fn decoded(bytes: &[u8]) -> Message<'_> {
        match decode_frame(bytes) {
            Ok(Decoded::Frame { frame, .. }) => frame.message,
            other => panic!("{other:?}"),
        }
    }

    fn remediate(h: &mut Harness) -> u64 {
        let now = h.now;
        h.s.remediate(
            RemediateAction::Delete,
            &path(),
            file(),
            Duration::from_secs(5),
            now,
        )
        .unwrap()
    }

    #[test]
    fn a_version_1_guest_gets_no_host_action() {
        let mut h = Harness::connected();
        let now = h.now;
        let err =
            h.s.remediate(
                RemediateAction::Delete,
                &path(),
                file(),
                Duration::from_secs(1),
                now,
            )
            .unwrap_err();
        assert_eq!(err, ActionError::Version(1));
        assert!(err.to_string().contains("upgrade its agent"), "{err}");
        assert!(h.out().is_empty());
    }

    #[test]
    fn a_guest_without_the_capability_gets_no_request() {
        let (mut h, _) = Harness::connected_v2(SessionLimits::default(), INLINE_GUEST);
        let now = h.now;
        let err =
            h.s.remediate(
                RemediateAction::Delete,
                &path(),
                file(),
                Duration::from_secs(1),
                now,
            )
            .unwrap_err();
        assert_eq!(err, ActionError::Unsupported("remediation"));
        let err =
            h.s.scan_tree(&path(), ScanOptions::default(), now)
                .unwrap_err();
        assert_eq!(err, ActionError::Unsupported("on-demand scans"));
        assert!(h.out().is_empty());
    }

    #[test]
    fn remediate_carries_path_and_identity_and_ends_with_the_guests_result() {
        let (mut h, _) = Harness::connected_v2(SessionLimits::default(), ACTIONS_GUEST);
        let id = remediate(&mut h);
        let frames = raw_frames(&mut h);
        let [(sent_id, bytes)] = &frames[..] else {
            panic!("{frames:?}")
        };
        assert_eq!(*sent_id, id);
        let Message::Remediate(r) = decoded(bytes) else {
            panic!()
        };
        assert_eq!(r.action, RemediateAction::Delete);
        assert_eq!(r.file, file());
        assert_eq!(r.path, FilePath::Utf8("/srv/eicar.com"));
        assert_eq!(r.deadline_ms, 5_000);
        assert_eq!(h.s.actions_in_flight(), 1);

        let done = ActionResult::status(ActionStatus::Done);
        h.send_v(2, &Message::ActionResult(done), id);
        assert_eq!(
            h.events(),
            vec![SessionEvent::ActionDone {
                id,
                kind: ActionKind::Remediate,
                outcome: ActionOutcome::Result(done),
            }]
        );
        // A second answer matches nothing: ignored (§14.1).
        h.send_v(2, &Message::ActionResult(done), id);
        assert_eq!(
            h.events(),
            vec![SessionEvent::Anomaly(Anomaly::UnknownResponse {
                request_id: id,
                msg_type: thinagent_protocol::MessageType::ActionResult,
            })]
        );
        assert!(!h.s.is_closed());
        assert_eq!(h.s.actions_in_flight(), 0);
    }

    #[test]
    fn an_unanswered_action_times_out_once_and_a_late_answer_is_ignored() {
        let (mut h, _) = Harness::connected_v2(SessionLimits::default(), ACTIONS_GUEST);
        let id = remediate(&mut h);
        raw_frames(&mut h);
        let deadline = h.s.next_deadline().unwrap();
        assert!(deadline <= h.now + Duration::from_secs(5));
        h.advance(Duration::from_millis(4_999));
        assert!(h.events().is_empty());
        h.advance(Duration::from_millis(1));
        assert_eq!(
            h.events(),
            vec![SessionEvent::ActionDone {
                id,
                kind: ActionKind::Remediate,
                outcome: ActionOutcome::TimedOut,
            }]
        );
        h.send_v(
            2,
            &Message::ActionResult(ActionResult::status(ActionStatus::Done)),
            id,
        );
        assert!(matches!(
            h.events()[..],
            [SessionEvent::Anomaly(Anomaly::UnknownResponse { .. })]
        ));
    }

    #[test]
    fn at_most_max_actions_in_flight_are_outstanding() {
        let (mut h, _) = Harness::connected_v2(SessionLimits::default(), ACTIONS_GUEST);
        let ids: Vec<u64> = (0..MAX_ACTIONS_IN_FLIGHT)
            .map(|_| remediate(&mut h))
            .collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "ids are unique: {ids:?}");
        let now = h.now;
        assert_eq!(
            h.s.remediate(
                RemediateAction::Truncate,
                &path(),
                file(),
                Duration::from_secs(1),
                now
            ),
            Err(ActionError::TooManyInFlight)
        );
        // A scan is not an action of that count.
        h.s.scan_tree(&path(), ScanOptions::default(), now).unwrap();
        assert_eq!(raw_frames(&mut h).len(), MAX_ACTIONS_IN_FLIGHT as usize + 1);
    }

    #[test]
    fn a_scan_reports_progress_and_ends_with_its_scan_done_and_can_be_cancelled() {
        let (mut h, _) = Harness::connected_v2(SessionLimits::default(), ACTIONS_GUEST);
        let now = h.now;
        let id = h.s.scan_tree(&path(), ScanOptions::default(), now).unwrap();
        assert!(matches!(
            h.s.scan_tree(&path(), ScanOptions::default(), now),
            Err(ActionError::ScanRunning(running)) if running == id
        ));
        assert_eq!(
            h.s.cancel_scan(id + 100, now),
            Err(ActionError::NoSuchScan(id + 100))
        );
        // No deadline of its own: a scan runs as long as it takes.
        h.advance(Duration::from_secs(25));
        assert!(
            h.events()
                .iter()
                .all(|e| !matches!(e, SessionEvent::ActionDone { .. }))
        );
        let now = h.now;
        let counters = ScanCounters {
            files_seen: 10,
            files_scanned: 4,
            files_denied: 1,
            ..ScanCounters::default()
        };
        h.send_v(2, &Message::ScanProgress(ScanProgress { counters }), id);
        assert_eq!(
            h.events(),
            vec![SessionEvent::ScanProgress { id, counters }]
        );
        h.s.cancel_scan(id, now).unwrap();
        // (The heartbeat's Ping went out meanwhile.)
        let frames: Vec<_> = raw_frames(&mut h)
            .into_iter()
            .filter(|(_, b)| !matches!(decoded(b), Message::Ping(_)))
            .collect();
        assert!(matches!(decoded(&frames[0].1), Message::ScanTree(_)));
        assert!(matches!(decoded(&frames[1].1), Message::ScanCancel(_)));
        assert_eq!(frames[1].0, id);
        let done = ScanDone {
            counters,
            status: ScanStatus::Cancelled,
            error: None,
        };
        h.send_v(2, &Message::ScanDone(done), id);
        assert_eq!(
            h.events(),
            vec![SessionEvent::ActionDone {
                id,
                kind: ActionKind::ScanTree,
                outcome: ActionOutcome::ScanDone(done),
            }]
        );
        // A ScanProgress after the end matches nothing.
        h.send_v(2, &Message::ScanProgress(ScanProgress { counters }), id);
        assert!(matches!(
            h.events()[..],
            [SessionEvent::Anomaly(Anomaly::UnknownResponse { .. })]
        ));
    }

    #[test]
    fn restore_sends_the_content_in_ordered_chunks_that_fit_the_guests_frames() {
        let mut h = Harness::new(SessionLimits::default());
        // A guest that accepts only 4 KiB frames.
        let Message::Hello(mut hello) = hello_msg(ACTIONS_GUEST, 1, 2) else {
            unreachable!()
        };
        hello.max_frame_len = 4_096;
        h.send(&Message::Hello(hello), 1);
        h.out();
        h.events();
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let now = h.now;
        let id =
            h.s.restore(&path(), &content, Duration::from_secs(30), now)
                .unwrap();
        assert!(matches!(
            h.s.restore(&path(), b"x", Duration::from_secs(30), now),
            Err(ActionError::RestoreRunning(r)) if r == id
        ));
        let frames = raw_frames(&mut h);
        let Message::Restore(r) = decoded(&frames[0].1) else {
            panic!()
        };
        assert_eq!(r.size, 10_000);
        let mut joined = Vec::new();
        for (i, (frame_id, bytes)) in frames[1..].iter().enumerate() {
            assert_eq!(*frame_id, id);
            assert!(bytes.len() <= 4_096);
            let Message::RestoreData(d) = decoded(bytes) else {
                panic!()
            };
            assert_eq!(d.offset, joined.len() as u64);
            assert_eq!(d.last, i == frames.len() - 2);
            joined.extend_from_slice(d.data);
        }
        assert_eq!(joined, content);
        assert_eq!(frames.len(), 1 + 3);
    }

    #[test]
    fn restore_chunks_are_paced_behind_verdicts_and_stop_with_the_restore() {
        let (mut h, _) = Harness::connected_v2(SessionLimits::default(), ACTIONS_GUEST);
        let content = vec![5u8; 5 * thinagent_protocol::MAX_RESTORE_CHUNK];
        let now = h.now;
        let id =
            h.s.restore(&path(), &content, Duration::from_secs(30), now)
                .unwrap();
        // Restore and one chunk at most are queued; a verdict that is ready
        // goes before every further chunk.
        let first = h.s.transmit_pending().len();
        assert!(
            first <= 64 + 24 + 16 + thinagent_protocol::MAX_RESTORE_CHUNK,
            "{first}"
        );
        assert_eq!(h.s.transmit_pending().len(), first, "nothing more queued");
        h.s.advance_transmit(first);
        h.query_v2(7, &inline_event(0, b"", false));
        h.s.verdict(7, Decision::Allow, "", 0, h.now).unwrap();
        let frames = raw_frames(&mut h);
        assert!(
            matches!(decoded(&frames[0].1), Message::Verdict(_)),
            "{:?}",
            decoded(&frames[0].1)
        );
        let chunks = frames[1..]
            .iter()
            .filter(|(f, b)| *f == id && matches!(decoded(b), Message::RestoreData(_)))
            .count();
        assert_eq!(chunks, 5, "every chunk went after the verdict");
        h.send_v(
            2,
            &Message::ActionResult(ActionResult::status(ActionStatus::Done)),
            id,
        );
        // A restore answered early sends nothing more.
        let id2 = {
            let content = vec![1u8; 3 * thinagent_protocol::MAX_RESTORE_CHUNK];
            let id2 =
                h.s.restore(&path(), &content, Duration::from_secs(30), h.now)
                    .unwrap();
            let n = h.s.transmit_pending().len();
            h.s.advance_transmit(n);
            id2
        };
        h.send_v(
            2,
            &Message::ActionResult(ActionResult::status(ActionStatus::Busy)),
            id2,
        );
        assert!(raw_frames(&mut h).is_empty());
    }

    #[test]
    fn an_empty_restore_is_one_empty_last_chunk() {
        let (mut h, _) = Harness::connected_v2(SessionLimits::default(), ACTIONS_GUEST);
        let now = h.now;
        let id =
            h.s.restore(&path(), b"", Duration::from_secs(1), now)
                .unwrap();
        let frames = raw_frames(&mut h);
        assert_eq!(frames.len(), 2);
        let Message::RestoreData(d) = decoded(&frames[1].1) else {
            panic!()
        };
        assert_eq!(
            (frames[1].0, d.offset, d.last, d.data.len()),
            (id, 0, true, 0)
        );
    }

    #[test]
    fn the_end_of_the_connection_ends_every_outstanding_action() {
        let (mut h, _) = Harness::connected_v2(SessionLimits::default(), ACTIONS_GUEST);
        let a = remediate(&mut h);
        let now = h.now;
        let s = h.s.scan_tree(&path(), ScanOptions::default(), now).unwrap();
        h.s.transport_closed(now);
        let ev = h.events();
        assert_eq!(
            ev[..2],
            [
                SessionEvent::ActionDone {
                    id: a,
                    kind: ActionKind::Remediate,
                    outcome: ActionOutcome::ConnectionLost
                },
                SessionEvent::ActionDone {
                    id: s,
                    kind: ActionKind::ScanTree,
                    outcome: ActionOutcome::ConnectionLost
                },
            ]
        );
        assert!(matches!(ev[2], SessionEvent::Closed(_)));
        assert_eq!(
            h.s.remediate(
                RemediateAction::Delete,
                &path(),
                file(),
                Duration::from_secs(1),
                now
            ),
            Err(ActionError::NotConnected)
        );
    }

    #[test]
    fn a_health_report_is_surfaced_and_not_answered() {
        let (mut h, _) = Harness::connected_v2(SessionLimits::default(), ACTIONS_GUEST);
        let health = thinagent_protocol::Health {
            policy_version: 3,
            state: thinagent_protocol::HealthState::ON_ACCESS,
            fail_mode: thinagent_protocol::FailMode::Closed,
            uptime_ms: 1,
            events_sent: 2,
            cache_hits: 3,
            denied: 4,
            fail_decisions: 5,
            sessions: 1,
        };
        h.send_v(2, &Message::Health(health), 0);
        assert_eq!(h.events(), vec![SessionEvent::Health(health)]);
        assert!(h.out().is_empty());
    }
}
