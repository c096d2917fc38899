//! The `session` fuzz target's seed corpus holds scripted conversations built
//! with the protocol encoder (a valid handshake, verdicts, a content read, a
//! ping), so fuzzing starts from the connected states instead of rediscovering
//! a valid `HelloAck` by chance. This test keeps the committed seeds equal to
//! the scripts below and proves each one reaches what it is meant to reach.
//!
//! Regenerate after changing the scripts or the wire format:
//! `THINAGENT_WRITE_CORPUS=1 cargo test -p thinagent-guest --test session_corpus`

mod common;

use std::path::PathBuf;

use common::session_script::{Outcome, run};
use thinagent_protocol::{
    Decision, Heartbeat, HelloAck, MAX_FRAME_LEN, Message, ReadRequest, Verdict,
};

/// The Hello is the session's first id; queries follow.
const HELLO_ID: u64 = 1;

fn frame(id: u64, msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = msg.encode(id, &mut buf).expect("sample frames encode");
    buf.truncate(n);
    buf
}

/// Op 1: receive `bytes` (in pieces of at most 255, the op's length limit).
fn receive(script: &mut Vec<u8>, bytes: &[u8]) {
    for piece in bytes.chunks(255) {
        script.push(1);
        script.push(piece.len() as u8);
        script.extend_from_slice(piece);
    }
}

fn hello_ack() -> Vec<u8> {
    frame(
        HELLO_ID,
        &Message::HelloAck(HelloAck {
            version: 1,
            max_frame_len: MAX_FRAME_LEN as u32,
            max_events_in_flight: 4,
            max_read_chunk: 4096,
            heartbeat_interval_ms: 10_000,
            idle_timeout_ms: 30_000,
            query_timeout_ms: 2_000,
            max_inline_len: 0,
        }),
    )
}

fn verdict(id: u64, decision: Decision, threat: &str) -> Vec<u8> {
    frame(
        id,
        &Message::Verdict(Verdict {
            decision,
            cache_ttl_secs: 60,
            threat_name: threat,
        }),
    )
}

/// A version-2 `HelloAck` with inline content.
fn hello_ack_v2() -> Vec<u8> {
    frame(
        HELLO_ID,
        &Message::HelloAck(HelloAck {
            version: 2,
            max_frame_len: MAX_FRAME_LEN as u32,
            max_events_in_flight: 4,
            max_read_chunk: 4096,
            heartbeat_interval_ms: 10_000,
            idle_timeout_ms: 30_000,
            query_timeout_ms: 2_000,
            max_inline_len: 4096,
        }),
    )
}

/// `msg` in a version-2 frame.
fn frame_v2(id: u64, msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = msg
        .encode_for(2, id, &mut buf)
        .expect("sample frames encode");
    buf.truncate(n);
    buf
}

/// A seed: its file name, its script, and what its replay must show.
type Seed = (&'static str, Vec<u8>, fn(&Outcome) -> bool);

fn scripts() -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();

    // Handshake, two queries, one allowed and one denied by the host.
    let mut s = vec![0];
    receive(&mut s, &hello_ack());
    s.extend([0, 0]);
    receive(&mut s, &verdict(2, Decision::Allow, ""));
    receive(&mut s, &verdict(3, Decision::Deny, "Eicar-Test-Signature"));
    out.push(("connected_verdicts", s, |o| {
        o.connected && o.host_verdicts == 2
    }));

    // Handshake, a query, the host reads content, then answers.
    let mut s = vec![1];
    receive(&mut s, &hello_ack());
    s.push(0);
    let read = ReadRequest {
        event_id: 2,
        offset: 0,
        length: 7,
    };
    receive(&mut s, &frame(40, &Message::ReadRequest(read)));
    s.push(3);
    receive(&mut s, &verdict(2, Decision::Allow, ""));
    out.push(("connected_read", s, |o| {
        o.connected && o.read_jobs == 1 && o.host_verdicts == 1
    }));

    // Handshake, a host ping, then the query's deadline passes (fail closed).
    let mut s = vec![1];
    receive(&mut s, &hello_ack());
    let ping = Heartbeat {
        nonce: 3,
        timestamp_ms: 9,
    };
    receive(&mut s, &frame(50, &Message::Ping(ping)));
    s.extend([0, 2, 60]);
    out.push(("connected_deadline", s, |o| {
        o.connected && o.host_verdicts == 0
    }));

    // Version 2 with INLINE_CONTENT: three queries (no content, a whole
    // file, a file's first bytes), a read of the partial one, verdicts.
    let mut s = vec![2];
    receive(&mut s, &hello_ack_v2());
    s.extend([0, 0, 0]);
    let read = ReadRequest {
        event_id: 4,
        offset: 7,
        length: 93,
    };
    receive(&mut s, &frame_v2(40, &Message::ReadRequest(read)));
    s.push(3);
    for (id, decision) in [
        (2, Decision::Allow),
        (3, Decision::Deny),
        (4, Decision::Allow),
    ] {
        let v = Verdict {
            decision,
            cache_ttl_secs: 60,
            threat_name: "",
        };
        receive(&mut s, &frame_v2(id, &Message::Verdict(v)));
    }
    out.push(("connected_v2_inline", s, |o| {
        o.connected
            && o.version == 2
            && o.inline_events == 2
            && o.read_jobs == 1
            && o.host_verdicts == 3
    }));
    out
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/session")
}

#[test]
fn committed_session_seeds_are_current_and_reach_their_states() {
    let write = std::env::var_os("THINAGENT_WRITE_CORPUS").is_some();
    for (name, script, check) in scripts() {
        let outcome = run(&script);
        assert!(check(&outcome), "{name}: replay gave {outcome:?}");
        let path = corpus_dir().join(name);
        if write {
            std::fs::write(&path, &script).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate (see this file's header)",
                path.display()
            )
        });
        assert_eq!(committed, script, "{name}: stale seed; regenerate");
    }
}
