//! Drives the real [`HostSession`] with every host-side test vector of
//! `crates/protocol/tests/vectors/session.toml` (docs/protocol.md §12) and
//! asserts exactly the frames it sends back and whether it closed.

#[path = "../../protocol/tests/vectors/schema.rs"]
mod schema;

use std::time::{Duration, Instant};

use schema::{Receiver, Step, Vector, check_sent, hex, load};
use thinagent_protocol::{Decision, GoodbyeReason};
use thinagent_scanner::session::{HostSession, SessionLimits};

fn decision(name: &str) -> Decision {
    Decision::ALL
        .iter()
        .copied()
        .find(|d| format!("{d:?}") == name)
        .unwrap_or_else(|| panic!("unknown decision {name}"))
}

fn reason(name: &str) -> GoodbyeReason {
    GoodbyeReason::ALL
        .iter()
        .copied()
        .find(|r| format!("{r:?}") == name)
        .unwrap_or_else(|| panic!("unknown Goodbye reason {name}"))
}

fn limits(v: &Vector) -> SessionLimits {
    let mut l = SessionLimits::default();
    let h = &v.host_limits;
    l.max_frame_len = h.max_frame_len.unwrap_or(l.max_frame_len);
    l.max_events_in_flight = h.max_events_in_flight.unwrap_or(l.max_events_in_flight);
    l.max_file_size = h.max_file_size.unwrap_or(l.max_file_size);
    l.max_inline_len = h.max_inline_len.unwrap_or(l.max_inline_len);
    let p = &v.host_policy;
    l.policy.error = p.error.as_deref().map_or(l.policy.error, decision);
    l.policy.timeout = p.timeout.as_deref().map_or(l.policy.timeout, decision);
    l.policy.too_large = p.too_large.as_deref().map_or(l.policy.too_large, decision);
    l
}

fn run_step(s: &mut HostSession, now: &mut Instant, step: &Step, ctx: &str) {
    if let Some(bytes) = &step.recv {
        s.receive(&hex(bytes), *now);
        return;
    }
    let id = || step.id.unwrap_or_else(|| panic!("{ctx}: `id` missing"));
    match step.app.as_deref() {
        Some("fetch") => s.fetch(id(), *now).unwrap_or_else(|e| panic!("{ctx}: {e}")),
        Some("verdict") => {
            let d = decision(step.decision.as_deref().expect("decision"));
            s.verdict(id(), d, "", step.ttl.expect("ttl"), *now)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
        Some("close") => s.close(reason(step.reason.as_deref().expect("reason")), *now),
        Some("advance_ms") => {
            *now += Duration::from_millis(step.ms.expect("ms"));
            s.handle_timeout(*now);
        }
        other => panic!("{ctx}: no host app action {other:?}"),
    }
}

fn run(v: &Vector) {
    let mut now = Instant::now();
    let mut s = HostSession::new(limits(v), now);
    for (i, step) in v.step.iter().enumerate() {
        let ctx = format!("{} step {i} ({})", v.name, v.rule);
        run_step(&mut s, &mut now, step, &ctx);
        let mut sent = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(n) = s.poll_transmit(&mut buf) {
            sent.extend_from_slice(&buf[..n]);
        }
        // Events are the application's business; draining them keeps the
        // session's queue as a real driver would.
        while s.poll_event().is_some() {}
        check_sent(&ctx, &sent, &step.expect);
    }
    assert_eq!(s.is_closed(), v.closed, "{}: closed ({})", v.name, v.rule);
}

#[test]
fn host_session_follows_every_host_vector() {
    let vectors: Vec<Vector> = load()
        .into_iter()
        .filter(|v| v.receiver == Receiver::Host)
        .collect();
    // The protocol crate's test checks the file; this floor catches a
    // filter that silently matches nothing.
    assert!(vectors.len() >= 50, "only {} host vectors", vectors.len());
    for v in &vectors {
        run(v);
    }
}
