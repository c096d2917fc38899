//! The op language the `session` fuzz target speaks, shared with the test
//! that replays the committed seed corpus (crates/guest/tests/session_corpus.rs)
//! so the seeds provably reach the connected state.
//!
//! Input: byte 0 bit 0 = fail closed, bit 1 = announce `INLINE_CONTENT`;
//! then ops, each one byte `op % 5`: 0 submit a query (in turn without
//! content, with a 7-byte whole file, with the first 7 bytes of a 100-byte
//! file); 1 receive the next `n` bytes (`n` = next byte); 2 advance time by
//! 50 ms × next byte and run timers; 3 complete the oldest read job; 4
//! nothing. Whatever happens: no panic, every accepted query is answered
//! exactly once by the time all deadlines have passed, and every byte the
//! session sends decodes, in its session version (`Hello`, and `Error` or
//! `Goodbye` before the handshake, in version 1), with inline content only
//! as `docs/protocol.md` §5.3.1 allows.

use std::collections::HashSet;

use thinagent_guest::{
    FailMode, Instant, Params, Session, SessionConfig, SessionEvent, VerdictSource,
};
use thinagent_protocol::{
    CreateDisposition, Decoded, EventKind, FileEvent, FileIdentity, FilePath, InlineContent,
    Message, OsKind, ReadOutcome, decode_frame,
};

type S = Session<8, 256, 4>;

/// What a run saw, for the corpus test.
#[derive(Debug, Default)]
#[allow(dead_code)] // the fuzz target reads none of it
pub struct Outcome {
    /// The session reached `Connected`.
    pub connected: bool,
    /// Verdicts that came from the host (not deadlines or local decisions).
    pub host_verdicts: usize,
    /// Read jobs the host asked for.
    pub read_jobs: usize,
    /// The negotiated protocol version (0: none).
    pub version: u16,
    /// `FileEvent`s sent with inline content (or `WHOLE_FILE`).
    pub inline_events: usize,
}

/// Checks everything in `sent` (whole frames) against the session's
/// contract; `inline_max` is the most inline content it may send.
fn check_sent(sent: &[u8], version: u16, inline_max: u32, inline: bool, outcome: &mut Outcome) {
    let mut rest = sent;
    while !rest.is_empty() {
        let (frame, consumed) = match decode_frame(rest) {
            Ok(Decoded::Frame { frame, consumed }) => (frame, consumed),
            other => panic!("the session sent undecodable bytes: {other:?}"),
        };
        rest = &rest[consumed..];
        match frame.message {
            Message::Hello(_) => assert_eq!(frame.version, 1, "Hello is version 1"),
            Message::Error(_) | Message::Goodbye(_) => assert!(
                frame.version == version || frame.version == 1,
                "{frame:?} in a version-{version} session"
            ),
            Message::FileEvent(e) => {
                assert_eq!(frame.version, version, "{frame:?}");
                if !e.content.is_none() {
                    assert!(
                        inline && version >= 2,
                        "content without INLINE_CONTENT / v2"
                    );
                    assert!(
                        e.content.bytes.len() <= inline_max as usize,
                        "above max_inline_len"
                    );
                    outcome.inline_events += 1;
                }
            }
            _ => assert_eq!(frame.version, version, "{frame:?}"),
        }
    }
}

/// Runs one input; panics if the session breaks its contract.
pub fn run(data: &[u8]) -> Outcome {
    let mut params = Params::default();
    if data.first().is_some_and(|b| b & 1 == 1) {
        params.fail_mode = FailMode::Closed;
    }
    let inline = data.first().is_some_and(|b| b & 2 == 2);
    let config =
        SessionConfig::from_params(&params, OsKind::Linux, "fuzz").with_inline_content(inline);
    let mut s = Box::new(S::new(&config));
    let mut now_ms = 0u64;
    s.start(Instant::from_millis(now_ms));

    let mut accepted = HashSet::new();
    let mut answered = HashSet::new();
    let mut reads = Vec::new();
    let mut out = vec![0u8; 70_000];
    let mut outcome = Outcome::default();
    let mut inline_max = 0u32;
    let mut submits = 0usize;

    let mut drain =
        |s: &mut S, answered: &mut HashSet<_>, reads: &mut Vec<u64>, outcome: &mut Outcome| {
            // Read before the events: the most the session may have used.
            inline_max = inline_max.max(s.max_inline_len());
            while let Some(ev) = s.poll_event() {
                match ev {
                    SessionEvent::Verdict(v) => {
                        assert!(answered.insert(v.query), "query answered twice");
                        if v.source == VerdictSource::Host {
                            outcome.host_verdicts += 1;
                        }
                    }
                    SessionEvent::ReadJob { read_id, .. } => {
                        outcome.read_jobs += 1;
                        reads.push(read_id);
                    }
                    SessionEvent::Connected { version } => {
                        outcome.connected = true;
                        outcome.version = version;
                    }
                    SessionEvent::Closed { .. } => {}
                    // The script announces no host-action capability: the
                    // session must refuse those requests itself (§14.1).
                    SessionEvent::HostRequest | SessionEvent::ScanCancelled { .. } => {
                        panic!("host request raised without its capability: {ev:?}")
                    }
                }
            }
            // The buffer holds more than the session's whole outgoing
            // buffer: each call yields whole frames.
            while let Some(n) = s.poll_transmit(&mut out[..]) {
                check_sent(&out[..n], s.version(), inline_max, inline, outcome);
            }
        };

    let mut rest = data.get(1..).unwrap_or_default();
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op % 5 {
            0 => {
                let (size, content) = match submits % 3 {
                    0 => (7, InlineContent::NONE),
                    1 => (
                        7,
                        InlineContent {
                            bytes: b"content",
                            whole_file: true,
                        },
                    ),
                    _ => (
                        100,
                        InlineContent {
                            bytes: b"content",
                            whole_file: false,
                        },
                    ),
                };
                submits += 1;
                let event = FileEvent {
                    kind: EventKind::Open,
                    process_id: 7,
                    desired_access: 1,
                    create_disposition: CreateDisposition::Open,
                    file: FileIdentity {
                        size,
                        ..FileIdentity::default()
                    },
                    path: FilePath::Utf8("/srv/file"),
                    content,
                };
                if let Ok(q) = s.submit(&event, Instant::from_millis(now_ms)) {
                    assert!(accepted.insert(q), "query id reused while outstanding");
                }
            }
            1 => {
                let Some((&n, body)) = rest.split_first() else {
                    break;
                };
                let (chunk, tail) = body.split_at(usize::from(n).min(body.len()));
                rest = tail;
                s.receive(chunk, Instant::from_millis(now_ms));
            }
            2 => {
                let step = u64::from(rest.first().copied().unwrap_or(0)) * 50;
                rest = rest.get(1..).unwrap_or_default();
                now_ms += step;
                s.on_timeout(Instant::from_millis(now_ms));
            }
            3 => {
                if let Some(id) = reads.pop() {
                    let _ = s.read_completed(
                        id,
                        ReadOutcome::EndOfFile(b"content"),
                        Instant::from_millis(now_ms),
                    );
                }
            }
            _ => {}
        }
        drain(&mut s, &mut answered, &mut reads, &mut outcome);
    }
    // Let every deadline pass: each accepted query must now be answered.
    for _ in 0..4 {
        now_ms += 3_600_000;
        s.on_timeout(Instant::from_millis(now_ms));
        drain(&mut s, &mut answered, &mut reads, &mut outcome);
    }
    assert_eq!(
        accepted, answered,
        "every accepted query is answered exactly once"
    );
    outcome
}
