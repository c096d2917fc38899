//! One valid frame per message type, shared by the tests, the fuzz corpus
//! generator and the documentation example check.

use thinagent_protocol::{
    ActionResult, ActionStatus, AgentVersion, Capabilities, CreateDisposition, Decision, ErrorCode,
    ErrorMessage, EventKind, Exclusion, ExclusionKind, Exclusions, FailMode, FileEvent,
    FileIdentity, FilePath, Goodbye, GoodbyeReason, Health, HealthState, Heartbeat, Hello,
    HelloAck, InlineContent, Message, OsError, OsKind, Policy, PolicyFields, ReadData, ReadOutcome,
    ReadRequest, Remediate, RemediateAction, Restore, RestoreData, ScanCancel, ScanCounters,
    ScanDone, ScanFlags, ScanProgress, ScanStatus, ScanTree, Verdict,
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
/// except the `HelloAck`, which is always version 1): inline content, the
/// `OnDemand` event kind and one or more of every host-action message (§14).
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
    let Message::FileEvent(example) = EXAMPLE_FILE_EVENT else {
        unreachable!()
    };
    let example_file = example.file;
    // An OnDemand event (§14.4): no process, no access, FILE_OPEN.
    let on_demand = Message::FileEvent(FileEvent {
        kind: EventKind::OnDemand,
        process_id: 0,
        desired_access: 0,
        create_disposition: CreateDisposition::Open,
        ..example
    });
    let counters = ScanCounters {
        files_seen: 120,
        files_scanned: 100,
        files_denied: 1,
        files_skipped: 20,
        errors: 2,
        bytes: 1 << 24,
    };
    // The samples are 'static: the exclusions' bytes live as long as the
    // test process.
    let exclusions = Exclusions::write(
        [
            Exclusion {
                kind: ExclusionKind::PathPrefix,
                value: FilePath::Utf16Le(b"C\0:\0\\\0"),
            },
            Exclusion {
                kind: ExclusionKind::Extension,
                value: FilePath::Utf8("vhdx"),
            },
            Exclusion {
                kind: ExclusionKind::ProcessImage,
                value: FilePath::Utf8("backup.exe"),
            },
        ],
        Box::leak(vec![0u8; 64].into_boxed_slice()),
    )
    .expect("the sample exclusions fit");
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
        ("v2_file_event_on_demand", 2, 9, on_demand),
        (
            "v2_remediate",
            2,
            0x8000_0000_0000_0003,
            Message::Remediate(Remediate {
                action: RemediateAction::Delete,
                deadline_ms: 5_000,
                file: example_file,
                path: FilePath::Utf16Le(EICAR_PATH_UTF16),
            }),
        ),
        (
            "v2_action_result",
            2,
            0x8000_0000_0000_0003,
            Message::ActionResult(ActionResult::status(ActionStatus::DoneOnClose)),
        ),
        (
            "v2_action_result_failed",
            2,
            0x8000_0000_0000_0004,
            Message::ActionResult(ActionResult::failed(OsError::NtStatus(0xC000_0022))),
        ),
        (
            "v2_action_result_policy",
            2,
            0x8000_0000_0000_0005,
            Message::ActionResult(ActionResult {
                status: ActionStatus::Done,
                error: None,
                value: 7,
                pinned: PolicyFields::FAIL_MODE.0,
            }),
        ),
        (
            "v2_scan_tree",
            2,
            0x8000_0000_0000_0006,
            Message::ScanTree(ScanTree {
                flags: ScanFlags::CROSS_MOUNTS,
                max_in_flight: 8,
                max_depth: 0,
                progress_interval_ms: 1_000,
                max_file_size: 64 << 20,
                root: FilePath::Utf8("/home"),
            }),
        ),
        (
            "v2_scan_progress",
            2,
            0x8000_0000_0000_0006,
            Message::ScanProgress(ScanProgress { counters }),
        ),
        (
            "v2_scan_done",
            2,
            0x8000_0000_0000_0006,
            Message::ScanDone(ScanDone {
                counters,
                status: ScanStatus::Completed,
                error: None,
            }),
        ),
        (
            "v2_scan_done_failed",
            2,
            0x8000_0000_0000_0007,
            Message::ScanDone(ScanDone {
                counters: ScanCounters::default(),
                status: ScanStatus::Failed,
                error: Some(OsError::Errno(13)),
            }),
        ),
        (
            "v2_scan_cancel",
            2,
            0x8000_0000_0000_0006,
            Message::ScanCancel(ScanCancel),
        ),
        (
            "v2_policy",
            2,
            0x8000_0000_0000_0008,
            Message::Policy(Policy {
                version: 3,
                deadline_ms: 5_000,
                fail_mode: Some(FailMode::Closed),
                debug_level: Some(2),
                exclusions: Some(exclusions),
                query_timeout_ms: Some(2_000),
                cache_ttl_max_secs: Some(300),
                max_scan_size: Some(0),
            }),
        ),
        (
            "v2_policy_empty",
            2,
            0x8000_0000_0000_0009,
            Message::Policy(Policy {
                version: 4,
                deadline_ms: 1,
                fail_mode: None,
                debug_level: None,
                exclusions: None,
                query_timeout_ms: None,
                cache_ttl_max_secs: None,
                max_scan_size: None,
            }),
        ),
        (
            "v2_restore",
            2,
            0x8000_0000_0000_000a,
            Message::Restore(Restore {
                size: EICAR.len() as u64,
                deadline_ms: 30_000,
                path: FilePath::Utf8("/tmp/restored"),
            }),
        ),
        (
            "v2_restore_data",
            2,
            0x8000_0000_0000_000a,
            Message::RestoreData(RestoreData {
                offset: 0,
                last: true,
                data: EICAR,
            }),
        ),
        (
            "v2_health",
            2,
            0,
            Message::Health(Health {
                policy_version: 3,
                state: HealthState::ON_ACCESS.union(HealthState::CACHE),
                fail_mode: FailMode::Open,
                uptime_ms: 86_400_000,
                events_sent: 1_234,
                cache_hits: 567,
                denied: 1,
                fail_decisions: 2,
                sessions: 1,
            }),
        ),
    ]
}
