//! One valid frame per message type, shared by the tests, the fuzz corpus
//! generator and the documentation example check.

use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, ErrorCode, ErrorMessage, EventKind,
    FileEvent, FileIdentity, FilePath, Goodbye, GoodbyeReason, Heartbeat, Hello, HelloAck,
    InlineContent, Message, OsError, OsKind, ReadData, ReadOutcome, ReadRequest, Verdict,
};

/// `\??\C:\eicar.com` as UTF-16LE.
pub const EICAR_PATH_UTF16: &[u8] = b"\\\0?\0?\0\\\0C\0:\0\\\0e\0i\0c\0a\0r\0.\0c\0o\0m\0";

/// The `FileEvent` of the worked example in `docs/protocol.md` (request id 7).
pub const EXAMPLE_FILE_EVENT: Message<'static> = Message::FileEvent(FileEvent {
    kind: EventKind::Open,
    process_id: 4242,
    desired_access: 0x0012_0089,
    create_disposition: CreateDisposition::Open,
    file: FileIdentity {
        volume_serial: 0x0000_0000_a1b2_c3d4,
        file_id: [0x2a, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        size: 68,
        last_write_time: 0x01db_0000_0000_0000,
    },
    path: FilePath::Utf16Le(EICAR_PATH_UTF16),
    content: thinagent_protocol::InlineContent::NONE,
});

/// The 68-byte EICAR test file, the content of [`EXAMPLE_FILE_EVENT_V2`].
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// The version-2 `FileEvent` of the worked example in `docs/protocol.md`
/// (request id 7): the same event with the whole file inline.
pub const EXAMPLE_FILE_EVENT_V2: Message<'static> = match EXAMPLE_FILE_EVENT {
    Message::FileEvent(e) => Message::FileEvent(FileEvent {
        content: InlineContent {
            bytes: EICAR,
            whole_file: true,
        },
        ..e
    }),
    _ => unreachable!(),
};

/// The `Verdict` of the worked example in `docs/protocol.md` (request id 7).
pub const EXAMPLE_VERDICT: Message<'static> = Message::Verdict(Verdict {
    decision: Decision::Deny,
    cache_ttl_secs: 300,
    threat_name: "EICAR-Test-File",
});

/// One valid message of every type, each with its request id and a file name
/// for the fuzz corpus.
pub fn samples() -> Vec<(&'static str, u64, Message<'static>)> {
    vec![
        (
            "hello",
            1,
            Message::Hello(Hello {
                version_min: 1,
                version_max: 1,
                os: OsKind::Windows,
                agent_version: AgentVersion {
                    major: 0,
                    minor: 1,
                    patch: 0,
                },
                capabilities: Capabilities::READ_CONTENT.union(Capabilities::VERDICT_CACHE),
                max_frame_len: 65_536,
                max_reads_in_flight: 16,
                guest_name: "win11-lab-01",
            }),
        ),
        (
            "hello_ack",
            1,
            Message::HelloAck(HelloAck {
                version: 1,
                max_frame_len: 65_536,
                max_events_in_flight: 64,
                max_read_chunk: 65_480,
                heartbeat_interval_ms: 10_000,
                idle_timeout_ms: 30_000,
                query_timeout_ms: 2_000,
                max_inline_len: 0,
            }),
        ),
        ("file_event", 7, EXAMPLE_FILE_EVENT),
        (
            "file_event_utf8",
            8,
            Message::FileEvent(FileEvent {
                kind: EventKind::Execute,
                process_id: 1,
                desired_access: 0x20,
                create_disposition: CreateDisposition::Open,
                file: FileIdentity {
                    volume_serial: 2049,
                    file_id: [1; 16],
                    size: 0,
                    last_write_time: 0,
                },
                path: FilePath::Utf8("/usr/bin/ls"),
                content: thinagent_protocol::InlineContent::NONE,
            }),
        ),
        ("verdict", 7, EXAMPLE_VERDICT),
        (
            "read_request",
            0x8000_0000_0000_0001,
            Message::ReadRequest(ReadRequest {
                event_id: 7,
                offset: 0,
                length: 4096,
            }),
        ),
        (
            "read_data",
            0x8000_0000_0000_0001,
            Message::ReadData(ReadData {
                event_id: 7,
                offset: 0,
                outcome: ReadOutcome::EndOfFile(b"X5O!P%@AP"),
            }),
        ),
        (
            "read_data_error",
            0x8000_0000_0000_0002,
            Message::ReadData(ReadData {
                event_id: 7,
                offset: 4096,
                outcome: ReadOutcome::Error(OsError::NtStatus(0xC000_0022)),
            }),
        ),
        (
            "ping",
            9,
            Message::Ping(Heartbeat {
                nonce: 0xfeed,
                timestamp_ms: 123_456,
            }),
        ),
        (
            "pong",
            9,
            Message::Pong(Heartbeat {
                nonce: 0xfeed,
                timestamp_ms: 123_456,
            }),
        ),
        (
            "error",
            3,
            Message::Error(ErrorMessage {
                code: ErrorCode::UnknownMessageType,
                text: "message type 0x7777",
            }),
        ),
        (
            "goodbye",
            0,
            Message::Goodbye(Goodbye {
                reason: GoodbyeReason::Shutdown,
            }),
        ),
    ]
}

/// Encodes `message` into a new vector.
pub fn encode(request_id: u64, message: &Message<'_>) -> Vec<u8> {
    encode_for(1, request_id, message)
}

/// [`encode`] in protocol `version`.
pub fn encode_for(version: u16, request_id: u64, message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; message.encoded_len_for(version)];
    let len = message
        .encode_for(version, request_id, &mut buf)
        .expect("sample messages are valid");
    assert_eq!(len, buf.len());
    buf
}

/// Version-2 samples: what only version 2 has (sent with header version 2,
/// except the `HelloAck`, which is always version 1).
pub fn samples_v2() -> Vec<(&'static str, u16, u64, Message<'static>)> {
    let partial = match EXAMPLE_FILE_EVENT {
        Message::FileEvent(e) => Message::FileEvent(FileEvent {
            content: InlineContent {
                bytes: &EICAR[..16],
                whole_file: false,
            },
            file: FileIdentity {
                size: 1 << 20,
                ..e.file
            },
            ..e
        }),
        _ => unreachable!(),
    };
    vec![
        ("v2_file_event_whole", 2, 7, EXAMPLE_FILE_EVENT_V2),
        ("v2_file_event_partial", 2, 8, partial),
        (
            "v2_hello_ack",
            1,
            1,
            Message::HelloAck(HelloAck {
                version: 2,
                max_frame_len: 65_536,
                max_events_in_flight: 64,
                max_read_chunk: 65_480,
                heartbeat_interval_ms: 10_000,
                idle_timeout_ms: 30_000,
                query_timeout_ms: 2_000,
                max_inline_len: 65_447,
            }),
        ),
    ]
}
