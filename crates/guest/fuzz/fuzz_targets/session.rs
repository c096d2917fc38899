//! The guest session is fed bytes by the host (a peer that may be hostile or
//! broken) interleaved with local submits, timer ticks and read completions.
//! Whatever happens: no panic, and every accepted query is answered exactly
//! once by the time all deadlines have passed.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use thinagent_guest::{FailMode, Instant, Params, Session, SessionConfig, SessionEvent};
use thinagent_protocol::{
    CreateDisposition, EventKind, FileEvent, FileIdentity, FilePath, OsKind, ReadOutcome,
};

type S = Session<8, 256, 4>;

fuzz_target!(|data: &[u8]| {
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

    let mut drain = |s: &mut S, answered: &mut HashSet<_>, reads: &mut Vec<u64>| {
        while let Some(ev) = s.poll_event() {
            match ev {
                SessionEvent::Verdict(v) => {
                    assert!(answered.insert(v.query), "query answered twice");
                }
                SessionEvent::ReadJob { read_id, .. } => reads.push(read_id),
                SessionEvent::Connected { .. } | SessionEvent::Closed { .. } => {}
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
                };
                if let Ok(q) = s.submit(&event, Instant::from_millis(now_ms)) {
                    assert!(accepted.insert(q), "query id reused while outstanding");
                }
            }
            1 => {
                let n = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
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
        drain(&mut s, &mut answered, &mut reads);
    }
    // Let every deadline pass: each accepted query must now be answered.
    for _ in 0..4 {
        now_ms += 3_600_000;
        s.on_timeout(Instant::from_millis(now_ms));
        drain(&mut s, &mut answered, &mut reads);
    }
    assert_eq!(
        accepted, answered,
        "every accepted query is answered exactly once"
    );
});
