//! Drives the real guest [`Session`] with every guest-side test vector of
//! `crates/protocol/tests/vectors/session.toml` (docs/protocol.md §12) and
//! asserts exactly the frames it sends back and whether it closed.
//!
//! Every vector starts with the session started: its `Hello` (request id 1)
//! is checked and drained before the first step; submitted queries get ids
//! 2, 3, ... (the session's one per-connection counter).
//!
//! Beyond what each vector says, every frame the session sends must carry
//! its session version in the header (`docs/protocol.md` §6.6): 1 until it
//! accepted a `HelloAck`, then the chosen version.

#[path = "../../protocol/tests/vectors/schema.rs"]
mod schema;

use core::time::Duration;

use schema::{Receiver, Step, Vector, check_sent, hex, load};
use thinagent_guest::{FailMode, Instant, Session, SessionConfig};
use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decoded, EventKind, FileEvent, FileIdentity,
    FilePath, InlineContent, Message, OsKind, ReadOutcome, decode_frame,
};

type S = Session<64, 1024, 4>;

fn drain(s: &mut S) -> Vec<u8> {
    let mut sent = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(n) = s.poll_transmit(&mut buf) {
        sent.extend_from_slice(&buf[..n]);
    }
    sent
}

fn run_step(s: &mut S, now: &mut Instant, step: &Step, ctx: &str) {
    if let Some(bytes) = &step.recv {
        s.receive(&hex(bytes), *now);
        return;
    }
    match step.app.as_deref() {
        Some("submit") => {
            let content = step.content.as_deref().map(hex);
            let event = FileEvent {
                kind: EventKind::Open,
                process_id: 1,
                desired_access: 1,
                create_disposition: CreateDisposition::Open,
                file: FileIdentity {
                    volume_serial: 9,
                    file_id: [1; 16],
                    size: step.size.unwrap_or(10),
                    last_write_time: 5,
                },
                path: FilePath::Utf8("/a"),
                content: match &content {
                    Some(bytes) => InlineContent {
                        bytes,
                        whole_file: step.whole_file.unwrap_or(false),
                    },
                    None => InlineContent::NONE,
                },
            };
            s.submit(&event, *now)
                .unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
        }
        Some("read_completed") => {
            let data = hex(step.data.as_deref().unwrap_or(""));
            let outcome = match step.status.as_deref() {
                Some("Data") => ReadOutcome::Data(&data),
                Some("EndOfFile") => ReadOutcome::EndOfFile(&data),
                Some("Cancelled") => ReadOutcome::Cancelled,
                other => panic!("{ctx}: no read outcome {other:?}"),
            };
            let read_id = step.read_id.expect("read_id");
            s.read_completed(read_id, outcome, *now)
                .unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
        }
        Some("close") => s.close(*now),
        Some("advance_ms") => {
            *now = now.saturating_add(Duration::from_millis(step.ms.expect("ms")));
            s.on_timeout(*now);
        }
        other => panic!("{ctx}: no guest app action {other:?}"),
    }
}

fn run(v: &Vector) {
    let mut caps = if v.guest_read_content.unwrap_or(true) {
        Capabilities::READ_CONTENT
    } else {
        Capabilities(0)
    };
    if v.guest_inline_content.unwrap_or(false) {
        caps = caps.union(Capabilities::INLINE_CONTENT);
    }
    let config = SessionConfig {
        query_timeout: Duration::from_millis(2_000),
        fail_mode: FailMode::Open,
        os: OsKind::Linux,
        agent_version: AgentVersion::default(),
        capabilities: caps,
        guest_name: "vm-1",
    };
    let mut s: Box<S> = Box::new(S::new(&config));
    let mut now = Instant::ZERO;
    s.start(now);
    let hello = drain(&mut s);
    match decode_frame(&hello) {
        Ok(Decoded::Frame { frame, consumed }) => {
            assert_eq!(consumed, hello.len(), "{}: only Hello at start", v.name);
            let Message::Hello(h) = frame.message else {
                panic!("{}: {frame:?}", v.name)
            };
            assert_eq!(
                (frame.version, h.version_min, h.version_max),
                (1, 1, 2),
                "{}: a version-1 Hello offering versions 1..=2",
                v.name
            );
            assert_eq!(h.capabilities, caps, "{}: the Hello's capabilities", v.name);
            assert_eq!(frame.request_id, 1, "{}: the Hello's request id", v.name);
        }
        other => panic!("{}: start sent {other:?}", v.name),
    }
    for (i, step) in v.step.iter().enumerate() {
        let ctx = format!("{} step {i} ({})", v.name, v.rule);
        run_step(&mut s, &mut now, step, &ctx);
        // Deliver events first: a ReadJob must be delivered before the
        // application may answer it (`read_completed`).
        while s.poll_event().is_some() {}
        let sent = drain(&mut s);
        check_sent(&ctx, &sent, &step.expect);
        check_versions(&ctx, &sent, s.version());
    }
    assert_eq!(s.is_closed(), v.closed, "{}: closed ({})", v.name, v.rule);
}

/// Every frame in `sent` carries `version` in its header (§6.6).
fn check_versions(ctx: &str, sent: &[u8], version: u16) {
    let mut rest = sent;
    while rest.len() >= 24 {
        let header_version = u16::from_le_bytes([rest[4], rest[5]]);
        assert_eq!(header_version, version, "{ctx}: a frame's header version");
        let payload = u32::from_le_bytes([rest[20], rest[21], rest[22], rest[23]]) as usize;
        rest = &rest[(24 + payload).min(rest.len())..];
    }
    assert!(rest.is_empty(), "{ctx}: trailing bytes");
}

#[test]
fn guest_session_follows_every_guest_vector() {
    let vectors: Vec<Vector> = load()
        .into_iter()
        .filter(|v| v.receiver == Receiver::Guest)
        .collect();
    // The protocol crate's test checks the file; this floor catches a
    // filter that silently matches nothing.
    assert!(vectors.len() >= 40, "only {} guest vectors", vectors.len());
    for v in &vectors {
        run(v);
    }
}
