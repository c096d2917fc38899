//! Loader and frame matcher of the protocol's test vectors (`session.toml`,
//! format in `README.md` beside this file). Shared, by `#[path]`, by the
//! protocol crate's well-formedness test and by the host (scanner) and guest
//! runners, so all three read the vectors the same way. Anything the format
//! does not define (an unknown key, an app action the runner does not know)
//! fails the test instead of being skipped.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use serde::Deserialize;
use thinagent_protocol::{Decoded, Message, decode_frame};

/// The vector file, embedded at compile time.
pub const VECTORS_TOML: &str = include_str!("session.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    vector: Vec<Vector>,
}

/// Which side's session receives the vector's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Receiver {
    /// The host scanner's session.
    Host,
    /// The guest agent's session.
    Guest,
}

/// One test vector: a conversation with one receiver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    pub name: String,
    /// The `docs/protocol.md` section stating the rule ("9", "5.6").
    pub section: String,
    pub receiver: Receiver,
    pub rule: String,
    /// Whether the session is closed after the last step.
    pub closed: bool,
    #[serde(default)]
    pub host_limits: HostLimits,
    #[serde(default)]
    pub host_policy: HostPolicy,
    /// Whether the guest announces `READ_CONTENT` (default true).
    pub guest_read_content: Option<bool>,
    /// Whether the guest announces `INLINE_CONTENT` (default false).
    pub guest_inline_content: Option<bool>,
    pub step: Vec<Step>,
}

/// Host session limits the vector changes from the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLimits {
    pub max_frame_len: Option<u32>,
    pub max_events_in_flight: Option<u32>,
    pub max_file_size: Option<u64>,
    /// The most inline content the host allows (announced in a version-2
    /// `HelloAck` to a guest with `INLINE_CONTENT`); 0 turns it off.
    pub max_inline_len: Option<u32>,
}

/// Host policy decisions the vector changes from the defaults
/// (`AllowNoCache` everywhere).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPolicy {
    pub error: Option<String>,
    pub timeout: Option<String>,
    pub too_large: Option<String>,
}

/// One step: bytes received from the peer (`recv`) or a local action
/// (`app`), and the frames the receiver sends because of it, exactly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub recv: Option<String>,
    pub decodes: Option<String>,
    pub decode_limit: Option<usize>,
    pub note: Option<String>,
    pub app: Option<String>,
    pub id: Option<u64>,
    pub decision: Option<String>,
    pub ttl: Option<u32>,
    pub ms: Option<u64>,
    pub reason: Option<String>,
    pub read_id: Option<u64>,
    pub status: Option<String>,
    pub data: Option<String>,
    /// Guest `submit`: the file's first bytes, as hex (inline content).
    pub content: Option<String>,
    /// Guest `submit`: `content` is the whole file.
    pub whole_file: Option<bool>,
    /// Guest `submit`: the file size the event states (default 10).
    pub size: Option<u64>,
    pub expect: Vec<Expect>,
}

/// One expected frame: `type`, and every other key given must match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(rename = "type")]
    pub msg_type: String,
    /// Absent: any nonzero id (one the receiver chose for its own request).
    pub request_id: Option<u64>,
    pub code: Option<String>,
    pub reason: Option<String>,
    pub decision: Option<String>,
    pub ttl: Option<u32>,
    pub version: Option<u16>,
    /// `HelloAck.max_inline_len`.
    pub max_inline_len: Option<u32>,
    /// The frame header's `version` (any type; §6.6).
    pub header_version: Option<u16>,
    pub event_id: Option<u64>,
    pub offset: Option<u64>,
    pub length: Option<u32>,
    pub status: Option<String>,
    pub data_len: Option<usize>,
    pub nonce: Option<u64>,
    pub timestamp: Option<u64>,
    /// `FileEvent`: bytes of inline content.
    pub content_len: Option<usize>,
    /// `FileEvent`: the `WHOLE_FILE` flag.
    pub whole_file: Option<bool>,
}

/// Every vector in the file, in order. Panics on anything malformed.
pub fn load() -> Vec<Vector> {
    let file: File = toml::from_str(VECTORS_TOML).expect("session.toml parses");
    file.vector
}

/// Bytes from a hex string (no separators).
pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Asserts that `sent` is exactly the frames `expect` describes, in order.
pub fn check_sent(ctx: &str, sent: &[u8], expect: &[Expect]) {
    let mut rest = sent;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        match decode_frame(rest) {
            Ok(Decoded::Frame { frame, consumed }) => {
                frames.push((frame.request_id, frame.version, frame.message));
                rest = &rest[consumed..];
            }
            other => panic!("{ctx}: the receiver sent undecodable bytes ({other:?}): {rest:02x?}"),
        }
    }
    assert_eq!(
        frames.len(),
        expect.len(),
        "{ctx}: sent {frames:?}, expected {expect:?}"
    );
    for ((id, version, msg), want) in frames.iter().zip(expect) {
        check_frame(ctx, *id, *version, msg, want);
    }
}

fn same<T: PartialEq + std::fmt::Debug>(ctx: &str, field: &str, got: T, want: Option<T>) {
    if let Some(want) = want {
        assert_eq!(got, want, "{ctx}: field {field}");
    }
}

fn name(value: impl std::fmt::Debug) -> String {
    format!("{value:?}")
}

fn check_frame(ctx: &str, id: u64, version: u16, msg: &Message<'_>, want: &Expect) {
    let ctx = &format!("{ctx}: frame {msg:?} (request id {id}, header version {version})");
    assert_eq!(name(msg.message_type()), want.msg_type, "{ctx}: type");
    same(ctx, "header_version", version, want.header_version);
    match want.request_id {
        Some(want) => assert_eq!(id, want, "{ctx}: request id"),
        None => assert_ne!(
            id, 0,
            "{ctx}: a request id of the receiver's own must be nonzero"
        ),
    }
    // Every key the vector gives must belong to this message type: a key on
    // the wrong type would otherwise be silently unchecked.
    let mut used = 0;
    let mut field = |present: bool| used += usize::from(present);
    match msg {
        Message::Error(e) => {
            field(want.code.is_some());
            same(ctx, "code", name(e.code), want.code.clone());
        }
        Message::Goodbye(g) => {
            field(want.reason.is_some());
            same(ctx, "reason", name(g.reason), want.reason.clone());
        }
        Message::Verdict(v) => {
            field(want.decision.is_some());
            field(want.ttl.is_some());
            same(ctx, "decision", name(v.decision), want.decision.clone());
            same(ctx, "ttl", v.cache_ttl_secs, want.ttl);
        }
        Message::HelloAck(a) => {
            field(want.version.is_some());
            field(want.max_inline_len.is_some());
            same(ctx, "version", a.version, want.version);
            same(ctx, "max_inline_len", a.max_inline_len, want.max_inline_len);
        }
        Message::ReadRequest(r) => {
            field(want.event_id.is_some());
            field(want.offset.is_some());
            field(want.length.is_some());
            same(ctx, "event_id", r.event_id, want.event_id);
            same(ctx, "offset", r.offset, want.offset);
            same(ctx, "length", r.length, want.length);
        }
        Message::ReadData(d) => {
            field(want.event_id.is_some());
            field(want.offset.is_some());
            field(want.status.is_some());
            field(want.data_len.is_some());
            same(ctx, "event_id", d.event_id, want.event_id);
            same(ctx, "offset", d.offset, want.offset);
            same(ctx, "status", name(d.status()), want.status.clone());
            same(ctx, "data_len", d.data().len(), want.data_len);
        }
        Message::Ping(h) | Message::Pong(h) => {
            field(want.nonce.is_some());
            field(want.timestamp.is_some());
            same(ctx, "nonce", h.nonce, want.nonce);
            same(ctx, "timestamp", h.timestamp_ms, want.timestamp);
        }
        Message::FileEvent(e) => {
            field(want.content_len.is_some());
            field(want.whole_file.is_some());
            same(ctx, "content_len", e.content.bytes.len(), want.content_len);
            same(ctx, "whole_file", e.content.whole_file, want.whole_file);
        }
        Message::ActionResult(r) => {
            field(want.status.is_some());
            same(ctx, "status", name(r.status), want.status.clone());
        }
        Message::ScanDone(d) => {
            field(want.status.is_some());
            same(ctx, "status", name(d.status), want.status.clone());
        }
        Message::Hello(_)
        | Message::Remediate(_)
        | Message::ScanTree(_)
        | Message::ScanProgress(_)
        | Message::ScanCancel(_)
        | Message::Policy(_)
        | Message::Restore(_)
        | Message::RestoreData(_)
        | Message::Health(_) => {}
    }
    let given = [
        want.code.is_some(),
        want.reason.is_some(),
        want.decision.is_some(),
        want.ttl.is_some(),
        want.version.is_some(),
        want.max_inline_len.is_some(),
        want.event_id.is_some(),
        want.offset.is_some(),
        want.length.is_some(),
        want.status.is_some(),
        want.data_len.is_some(),
        want.nonce.is_some(),
        want.timestamp.is_some(),
        want.content_len.is_some(),
        want.whole_file.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    assert_eq!(
        used, given,
        "{ctx}: the vector gives keys this type does not have: {want:?}"
    );
}
