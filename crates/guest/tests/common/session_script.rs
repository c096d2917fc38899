//! The op language the `session` fuzz target speaks, shared with the test
//! that replays the committed seed corpus (crates/guest/tests/session_corpus.rs)
//! so the seeds provably reach the connected state.
//!
//! Input: byte 0 bit 0 = fail closed; then ops, each one byte `op % 5`:
//! 0 submit a query; 1 receive the next `n` bytes (`n` = next byte); 2 advance
//! time by 50 ms × next byte and run timers; 3 complete the oldest read job;
//! 4 nothing. Whatever happens: no panic, and every accepted query is answered
//! exactly once by the time all deadlines have passed.

use std::collections::HashSet;

use thinagent_guest::{
    FailMode, Instant, Params, Session, SessionConfig, SessionEvent, VerdictSource,
};
use thinagent_protocol::{
    CreateDisposition, EventKind, FileEvent, FileIdentity, FilePath, OsKind, ReadOutcome,
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
}

/// Runs one input; panics if the session breaks its contract.
pub fn run(data: &[u8]) -> Outcome {
    let mut params = Params::default();
    if data.first().is_some_and(|b| b & 1 == 1) {
        params.fail_mode = FailMode::Closed;
    }
    let config = SessionConfig::from_params(&params, OsKind::Linux, "fuzz");
    let mut s = Box::new(S::new(&config));
    let mut now_ms = 0u64;
    s.start(Instant::from_millis(now_ms));

    let mut accepted = HashSet::new();
    let mut answered = HashSet::new();
    let mut reads = Vec::new();
    let mut out = vec![0u8; 70_000];
    let mut outcome = Outcome::default();

    let mut drain =
        |s: &mut S, answered: &mut HashSet<_>, reads: &mut Vec<u64>, outcome: &mut Outcome| {
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
                    SessionEvent::Connected { .. } => outcome.connected = true,
                    SessionEvent::Closed { .. } => {}
                }
            }
            while s.poll_transmit(&mut out[..]).is_some() {}
        };

    let mut rest = data.get(1..).unwrap_or_default();
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op % 5 {
            0 => {
                let event = FileEvent {
                    kind: EventKind::Open,
                    process_id: 7,
                    desired_access: 1,
                    create_disposition: CreateDisposition::Open,
                    file: FileIdentity::default(),
                    path: FilePath::Utf8("/srv/file"),
                    content: thinagent_protocol::InlineContent::NONE,
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
