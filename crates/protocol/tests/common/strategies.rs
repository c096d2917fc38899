//! Proptest strategies producing every valid message.

use proptest::prelude::*;
use thinagent_protocol::{
    ActionResult, ActionStatus, AgentVersion, Capabilities, CreateDisposition, Decision, ErrorCode,
    ErrorMessage, EventKind, Exclusion, ExclusionKind, Exclusions, FailMode, FileEvent,
    FileIdentity, FilePath, Goodbye, GoodbyeReason, Health, HealthState, Heartbeat, Hello,
    HelloAck, InlineContent, MAX_DEBUG_LEVEL, MAX_FRAME_LEN, MAX_READ_CHUNK, MIN_FRAME_LEN,
    Message, OsError, OsKind, Policy, PolicyFields, ReadData, ReadOutcome, ReadRequest, Remediate,
    RemediateAction, Restore, RestoreData, ScanCancel, ScanCounters, ScanDone, ScanFlags,
    ScanProgress, ScanStatus, ScanTree, Verdict,
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

// ------------------------------------------------------------ version 2 (§14)

/// A path owned by a generated value (`FilePath` borrows).
#[derive(Debug, Clone)]
pub enum OwnedPath {
    /// UTF-8 text.
    Utf8(String),
    /// UTF-16LE code units, as bytes.
    Utf16Le(Vec<u8>),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

impl OwnedPath {
    /// The path, borrowing from `self`.
    pub fn as_path(&self) -> FilePath<'_> {
        match self {
            Self::Utf8(s) => FilePath::Utf8(s),
            Self::Utf16Le(b) => FilePath::Utf16Le(b),
            Self::Bytes(b) => FilePath::Bytes(b),
        }
    }
}

/// Any valid path of 1 ..= `max` characters, units or bytes.
fn owned_path(max: usize) -> impl Strategy<Value = OwnedPath> {
    prop_oneof![
        proptest::string::string_regex(&format!("\\PC{{1,{max}}}"))
            .expect("a valid regex")
            .prop_map(OwnedPath::Utf8),
        proptest::collection::vec(any::<u16>(), 1..=max).prop_map(|units| OwnedPath::Utf16Le(
            units.iter().flat_map(|u| u.to_le_bytes()).collect()
        )),
        proptest::collection::vec(any::<u8>(), 1..=max).prop_map(OwnedPath::Bytes),
    ]
}

/// A version-2 message (one of §14, or an `OnDemand` `FileEvent`) whose
/// borrowed parts are placeholders, plus what [`OwnedV2::message`] puts
/// into them.
#[derive(Debug, Clone)]
pub struct OwnedV2 {
    template: Message<'static>,
    path: OwnedPath,
    data: Vec<u8>,
    exclusions: Option<Vec<(ExclusionKind, OwnedPath)>>,
}

/// Room for the exclusions of any [`message_v2`] `Policy`.
pub const EXCLUSION_SCRATCH: usize = 8 * 1024;

impl OwnedV2 {
    /// The message, borrowing from `self`; a `Policy`'s exclusions are
    /// encoded by [`Exclusions::write`] into `scratch`
    /// ([`EXCLUSION_SCRATCH`] bytes suffice).
    pub fn message<'a>(&'a self, scratch: &'a mut [u8]) -> Message<'a> {
        let path = self.path.as_path();
        match self.template {
            Message::Remediate(r) => Message::Remediate(Remediate { path, ..r }),
            Message::ScanTree(s) => Message::ScanTree(ScanTree { root: path, ..s }),
            Message::Restore(r) => Message::Restore(Restore { path, ..r }),
            Message::RestoreData(d) => Message::RestoreData(RestoreData {
                data: &self.data,
                ..d
            }),
            Message::FileEvent(e) => Message::FileEvent(FileEvent {
                path,
                content: InlineContent {
                    bytes: &self.data,
                    whole_file: e.content.whole_file,
                },
                ..e
            }),
            Message::Policy(p) => Message::Policy(Policy {
                exclusions: self.exclusions.as_ref().map(|entries| {
                    Exclusions::write(
                        entries.iter().map(|(kind, value)| Exclusion {
                            kind: *kind,
                            value: value.as_path(),
                        }),
                        scratch,
                    )
                    .expect("generated exclusions fit the scratch buffer")
                }),
                ..p
            }),
            other => other,
        }
    }
}

fn v2_fixed(template: Message<'static>) -> OwnedV2 {
    OwnedV2 {
        template,
        path: OwnedPath::Bytes(vec![b'/']),
        data: Vec::new(),
        exclusions: None,
    }
}

fn v2_with_path(template: Message<'static>, path: OwnedPath) -> OwnedV2 {
    OwnedV2 {
        path,
        ..v2_fixed(template)
    }
}

fn file_identity() -> impl Strategy<Value = FileIdentity> {
    any::<(u64, [u8; 16], u64, u64)>().prop_map(|(volume_serial, file_id, size, lwt)| {
        FileIdentity {
            volume_serial,
            file_id,
            size,
            last_write_time: lwt,
        }
    })
}

fn os_error() -> impl Strategy<Value = OsError> {
    prop_oneof![
        any::<u32>().prop_map(OsError::NtStatus),
        any::<u32>().prop_map(OsError::Errno),
    ]
}

fn remediate() -> impl Strategy<Value = OwnedV2> {
    (
        one_of(RemediateAction::ALL),
        1u32..,
        file_identity(),
        owned_path(100),
    )
        .prop_map(|(action, deadline_ms, file, path)| {
            v2_with_path(
                Message::Remediate(Remediate {
                    action,
                    deadline_ms,
                    file,
                    path: FilePath::Utf8(""),
                }),
                path,
            )
        })
}

fn action_result() -> impl Strategy<Value = OwnedV2> {
    (
        one_of(ActionStatus::ALL),
        os_error(),
        any::<u64>(),
        0..=PolicyFields::ALL.0,
    )
        .prop_map(|(status, error, value, pinned)| {
            v2_fixed(Message::ActionResult(ActionResult {
                status,
                error: (status == ActionStatus::Failed).then_some(error),
                value,
                pinned,
            }))
        })
}

fn scan_tree() -> impl Strategy<Value = OwnedV2> {
    (
        0..=ScanFlags::ALL.0,
        1u16..,
        any::<(u16, u32, u64)>(),
        owned_path(100),
    )
        .prop_map(
            |(flags, max_in_flight, (max_depth, progress_interval_ms, max_file_size), root)| {
                v2_with_path(
                    Message::ScanTree(ScanTree {
                        flags: ScanFlags(flags),
                        max_in_flight,
                        max_depth,
                        progress_interval_ms,
                        max_file_size,
                        root: FilePath::Utf8(""),
                    }),
                    root,
                )
            },
        )
}

fn scan_counters() -> impl Strategy<Value = ScanCounters> {
    (any::<u64>(), any::<[u64; 5]>()).prop_map(
        |(denied_seed, [seen, scanned, skipped, errors, bytes])| {
            ScanCounters {
                files_seen: seen,
                files_scanned: scanned,
                // files_denied ≤ files_scanned (§14.5).
                files_denied: denied_seed % scanned.saturating_add(1).max(1),
                files_skipped: skipped,
                errors,
                bytes,
            }
        },
    )
}

fn scan_done() -> impl Strategy<Value = OwnedV2> {
    (scan_counters(), one_of(ScanStatus::ALL), os_error()).prop_map(|(counters, status, error)| {
        v2_fixed(Message::ScanDone(ScanDone {
            counters,
            status,
            error: (status == ScanStatus::Failed).then_some(error),
        }))
    })
}

fn policy() -> impl Strategy<Value = OwnedV2> {
    let exclusions = proptest::option::of(proptest::collection::vec(
        (one_of(ExclusionKind::ALL), owned_path(40)),
        0..20,
    ));
    (
        1u64..,
        1u32..,
        proptest::option::of(one_of(FailMode::ALL)),
        proptest::option::of(0..=MAX_DEBUG_LEVEL),
        exclusions,
        proptest::option::of(1u32..),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(
                version,
                deadline_ms,
                fail_mode,
                debug_level,
                exclusions,
                query_timeout_ms,
                cache_ttl_max_secs,
                max_scan_size,
            )| OwnedV2 {
                exclusions,
                ..v2_fixed(Message::Policy(Policy {
                    version,
                    deadline_ms,
                    fail_mode,
                    debug_level,
                    // Filled in by OwnedV2::message.
                    exclusions: None,
                    query_timeout_ms,
                    cache_ttl_max_secs,
                    max_scan_size,
                }))
            },
        )
}

fn restore() -> impl Strategy<Value = OwnedV2> {
    (any::<u64>(), 1u32.., owned_path(100)).prop_map(|(size, deadline_ms, path)| {
        v2_with_path(
            Message::Restore(Restore {
                size,
                deadline_ms,
                path: FilePath::Utf8(""),
            }),
            path,
        )
    })
}

fn restore_data() -> impl Strategy<Value = OwnedV2> {
    (
        0..u64::MAX / 2,
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(offset, last, data)| OwnedV2 {
            data,
            ..v2_fixed(Message::RestoreData(RestoreData {
                offset,
                last,
                data: &[],
            }))
        })
}

fn health() -> impl Strategy<Value = OwnedV2> {
    (
        any::<(u64, u32)>(),
        one_of(FailMode::ALL),
        any::<[u64; 6]>(),
    )
        .prop_map(
            |(
                (policy_version, state),
                fail_mode,
                [
                    uptime_ms,
                    events_sent,
                    cache_hits,
                    denied,
                    fail_decisions,
                    sessions,
                ],
            )| {
                v2_fixed(Message::Health(Health {
                    policy_version,
                    state: HealthState(state),
                    fail_mode,
                    uptime_ms,
                    events_sent,
                    cache_hits,
                    denied,
                    fail_decisions,
                    sessions,
                }))
            },
        )
}

/// An `OnDemand` `FileEvent` (§5.3, §14.4): `process_id` 0,
/// `desired_access` 0, `create_disposition` `Open`; maybe with inline
/// content (partial, or the whole file).
fn on_demand_event() -> impl Strategy<Value = OwnedV2> {
    (
        file_identity(),
        owned_path(100),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(|(mut file, path, data, whole_file)| {
            if whole_file {
                file.size = data.len() as u64;
            }
            OwnedV2 {
                path,
                data,
                ..v2_fixed(Message::FileEvent(FileEvent {
                    kind: EventKind::OnDemand,
                    process_id: 0,
                    desired_access: 0,
                    create_disposition: CreateDisposition::Open,
                    file,
                    path: FilePath::Utf8(""),
                    content: InlineContent {
                        bytes: &[],
                        whole_file,
                    },
                }))
            }
        })
}

/// Any valid message that exists only in version 2: every message of §14
/// and `OnDemand` events.
pub fn message_v2() -> impl Strategy<Value = OwnedV2> {
    prop_oneof![
        remediate(),
        action_result(),
        scan_tree(),
        scan_counters()
            .prop_map(|counters| v2_fixed(Message::ScanProgress(ScanProgress { counters }))),
        scan_done(),
        Just(v2_fixed(Message::ScanCancel(ScanCancel))),
        policy(),
        restore(),
        restore_data(),
        health(),
        on_demand_event(),
    ]
}
