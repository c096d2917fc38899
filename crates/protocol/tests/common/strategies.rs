//! Proptest strategies producing every valid message.

use proptest::prelude::*;
use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, ErrorCode, ErrorMessage, EventKind,
    FileEvent, FileIdentity, FilePath, Goodbye, GoodbyeReason, Heartbeat, Hello, HelloAck,
    MAX_FRAME_LEN, MAX_READ_CHUNK, MIN_FRAME_LEN, Message, OsError, OsKind, ReadData, ReadOutcome,
    ReadRequest, Verdict,
};

/// A message whose borrowed fields are placeholders, plus the owned text and
/// bytes [`Owned::message`] puts into them.
#[derive(Debug, Clone)]
pub struct Owned {
    template: Message<'static>,
    text: String,
    bytes: Vec<u8>,
}

impl Owned {
    /// The message, borrowing from `self`.
    pub fn message(&self) -> Message<'_> {
        let text = self.text.as_str();
        let bytes = self.bytes.as_slice();
        match self.template {
            Message::Hello(h) => Message::Hello(Hello {
                guest_name: text,
                ..h
            }),
            Message::FileEvent(e) => Message::FileEvent(FileEvent {
                path: match e.path {
                    FilePath::Utf8(_) => FilePath::Utf8(text),
                    FilePath::Utf16Le(_) => FilePath::Utf16Le(bytes),
                    FilePath::Bytes(_) => FilePath::Bytes(bytes),
                },
                ..e
            }),
            Message::Verdict(v) => Message::Verdict(Verdict {
                threat_name: text,
                ..v
            }),
            Message::ReadData(r) => Message::ReadData(ReadData {
                outcome: match r.outcome {
                    ReadOutcome::Data(_) => ReadOutcome::Data(bytes),
                    ReadOutcome::EndOfFile(_) => ReadOutcome::EndOfFile(bytes),
                    other => other,
                },
                ..r
            }),
            Message::Error(e) => Message::Error(ErrorMessage { text, ..e }),
            other => other,
        }
    }
}

fn fixed(template: Message<'static>) -> Owned {
    Owned {
        template,
        text: String::new(),
        bytes: Vec::new(),
    }
}

fn one_of<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

fn frame_limit() -> impl Strategy<Value = u32> {
    (MIN_FRAME_LEN as u32)..=(MAX_FRAME_LEN as u32)
}

fn hello() -> impl Strategy<Value = Owned> {
    (
        (1u16..=u16::MAX).prop_flat_map(|min| (Just(min), min..=u16::MAX)),
        one_of(OsKind::ALL),
        any::<(u16, u16, u16)>(),
        any::<u64>(),
        frame_limit(),
        1u32..,
        "\\PC{0,60}",
    )
        .prop_map(
            |(
                (version_min, version_max),
                os,
                (major, minor, patch),
                caps,
                max_frame_len,
                reads,
                name,
            )| Owned {
                template: Message::Hello(Hello {
                    version_min,
                    version_max,
                    os,
                    agent_version: AgentVersion {
                        major,
                        minor,
                        patch,
                    },
                    capabilities: Capabilities(caps),
                    max_frame_len,
                    max_reads_in_flight: reads,
                    guest_name: "",
                }),
                text: name,
                bytes: Vec::new(),
            },
        )
}

fn hello_ack() -> impl Strategy<Value = Owned> {
    (
        1u16..,
        frame_limit().prop_flat_map(|f| (Just(f), 1..=f - 56)),
        1u32..,
        0u32..u32::MAX / 2,
        any::<bool>(),
        0u32..u32::MAX / 2,
        1u32..,
    )
        .prop_map(
            |(
                version,
                (max_frame_len, max_read_chunk),
                events,
                heartbeat,
                idle_on,
                extra,
                query,
            )| {
                let idle_timeout_ms = if heartbeat == 0 || !idle_on {
                    0
                } else {
                    heartbeat + 1 + extra
                };
                fixed(Message::HelloAck(HelloAck {
                    version,
                    max_frame_len,
                    max_events_in_flight: events,
                    max_read_chunk,
                    heartbeat_interval_ms: heartbeat,
                    idle_timeout_ms,
                    query_timeout_ms: query,
                    max_inline_len: 0,
                }))
            },
        )
}

fn file_event() -> impl Strategy<Value = Owned> {
    let path = prop_oneof![
        "\\PC{1,100}".prop_map(|s| (FilePath::Utf8(""), s, Vec::new())),
        proptest::collection::vec(any::<u16>(), 1..100).prop_map(|units| (
            FilePath::Utf16Le(&[]),
            String::new(),
            units.iter().flat_map(|u| u.to_le_bytes()).collect()
        )),
        proptest::collection::vec(any::<u8>(), 1..200).prop_map(|b| (
            FilePath::Bytes(&[]),
            String::new(),
            b
        )),
    ];
    (
        // Kinds of every version (OnDemand is version 2 only, §14.4).
        one_of(&[
            EventKind::Open,
            EventKind::Execute,
            EventKind::CloseAfterWrite,
        ]),
        any::<(u32, u32)>(),
        one_of(CreateDisposition::ALL),
        any::<(u64, [u8; 16], u64, u64)>(),
        path,
    )
        .prop_map(
            |(
                kind,
                (process_id, desired_access),
                create_disposition,
                (vs, id, size, lwt),
                (path, text, bytes),
            )| {
                Owned {
                    template: Message::FileEvent(FileEvent {
                        kind,
                        process_id,
                        desired_access,
                        create_disposition,
                        file: FileIdentity {
                            volume_serial: vs,
                            file_id: id,
                            size,
                            last_write_time: lwt,
                        },
                        path,
                        content: thinagent_protocol::InlineContent::NONE,
                    }),
                    text,
                    bytes,
                }
            },
        )
}

fn verdict() -> impl Strategy<Value = Owned> {
    (one_of(Decision::ALL), any::<u32>(), "\\PC{0,60}").prop_map(|(decision, ttl, threat)| Owned {
        template: Message::Verdict(Verdict {
            decision,
            cache_ttl_secs: if decision == Decision::AllowNoCache {
                0
            } else {
                ttl
            },
            threat_name: "",
        }),
        text: threat,
        bytes: Vec::new(),
    })
}

fn read_request() -> impl Strategy<Value = Owned> {
    (any::<u64>(), 1..=MAX_READ_CHUNK)
        .prop_flat_map(|(event_id, length)| {
            (
                Just(event_id),
                0..=u64::MAX - u64::from(length),
                Just(length),
            )
        })
        .prop_map(|(event_id, offset, length)| {
            fixed(Message::ReadRequest(ReadRequest {
                event_id,
                offset,
                length,
            }))
        })
}

fn read_data() -> impl Strategy<Value = Owned> {
    let outcome = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..300).prop_map(|b| (ReadOutcome::Data(&[]), b)),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| (ReadOutcome::EndOfFile(&[]), b)),
        any::<u32>().prop_map(|c| (ReadOutcome::Error(OsError::NtStatus(c)), Vec::new())),
        any::<u32>().prop_map(|c| (ReadOutcome::Error(OsError::Errno(c)), Vec::new())),
        Just((ReadOutcome::Cancelled, Vec::new())),
    ];
    (any::<u64>(), 0..u64::MAX / 2, outcome).prop_map(|(event_id, offset, (outcome, bytes))| {
        Owned {
            template: Message::ReadData(ReadData {
                event_id,
                offset,
                outcome,
            }),
            text: String::new(),
            bytes,
        }
    })
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    any::<(u64, u64)>().prop_map(|(nonce, timestamp_ms)| Heartbeat {
        nonce,
        timestamp_ms,
    })
}

fn error() -> impl Strategy<Value = Owned> {
    (one_of(ErrorCode::ALL), "\\PC{0,200}").prop_map(|(code, text)| Owned {
        template: Message::Error(ErrorMessage { code, text: "" }),
        text,
        bytes: Vec::new(),
    })
}

/// Any valid message.
pub fn message() -> impl Strategy<Value = Owned> {
    prop_oneof![
        hello(),
        hello_ack(),
        file_event(),
        verdict(),
        read_request(),
        read_data(),
        heartbeat().prop_map(|h| fixed(Message::Ping(h))),
        heartbeat().prop_map(|h| fixed(Message::Pong(h))),
        error(),
        one_of(GoodbyeReason::ALL).prop_map(|reason| fixed(Message::Goodbye(Goodbye { reason }))),
    ]
}
