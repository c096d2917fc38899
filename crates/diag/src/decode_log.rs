//! `thinagent-diag decode-log FILE`: reads a thin agent's debug log and says
//! what went wrong.
//!
//! Both our agent and VMware's `vsepflt.sys` print lines of the shape
//! `LEVEL: Routine : message[: 0xSTATUS]` ([`thinagent_guest::log`]), so one
//! decoder reads both. Lines may carry a prefix from the tool that captured
//! them (DbgView's sequence number and time, a `kd>` timestamp): everything
//! before the level tag is ignored. The decoder
//!
//! * names every NTSTATUS (the guest crate's table plus [`EXTRA_STATUS_NAMES`]
//!   for statuses that show up in these logs),
//! * groups the lines by routine, in order of first appearance,
//! * applies the diagnosis rules of [`diagnose`]: each finding has an id, a
//!   severity, the likely cause, the next step and the lines it rests on.

use std::fmt::Write as _;

use serde::Serialize;
use thinagent_guest::NtStatus;
use thinagent_guest::log::{Level, parse_line};
use thinagent_guest::status::Severity;

/// Statuses seen in minifilter / vsock logs that `thinagent_guest::NtStatus`
/// has no constant for. Values checked against windows-sys 0.61.2
/// (`Win32/Foundation/mod.rs`, generated from `ntstatus.h`).
pub const EXTRA_STATUS_NAMES: &[(u32, &str)] = &[
    (0x0000_0101, "STATUS_ALERTED"),
    (0x0000_0104, "STATUS_REPARSE"),
    (0x8000_0005, "STATUS_BUFFER_OVERFLOW"),
    (0xC000_0002, "STATUS_NOT_IMPLEMENTED"),
    (0xC000_0008, "STATUS_INVALID_HANDLE"),
    (0xC000_000F, "STATUS_NO_SUCH_FILE"),
    (0xC000_0016, "STATUS_MORE_PROCESSING_REQUIRED"),
    (0xC000_0017, "STATUS_NO_MEMORY"),
    (0xC000_0024, "STATUS_OBJECT_TYPE_MISMATCH"),
    (0xC000_0033, "STATUS_OBJECT_NAME_INVALID"),
    (0xC000_0035, "STATUS_OBJECT_NAME_COLLISION"),
    (0xC000_0037, "STATUS_PORT_DISCONNECTED"),
    (0xC000_003B, "STATUS_OBJECT_PATH_SYNTAX_BAD"),
    (0xC000_0043, "STATUS_SHARING_VIOLATION"),
    (0xC000_0054, "STATUS_FILE_LOCK_CONFLICT"),
    (0xC000_0056, "STATUS_DELETE_PENDING"),
    (0xC000_0061, "STATUS_PRIVILEGE_NOT_HELD"),
    (0xC000_009D, "STATUS_DEVICE_NOT_CONNECTED"),
    (0xC000_010E, "STATUS_IMAGE_ALREADY_LOADED"),
    (0xC000_0141, "STATUS_INVALID_ADDRESS"),
    (0xC000_0184, "STATUS_INVALID_DEVICE_STATE"),
    (0xC000_0185, "STATUS_IO_DEVICE_ERROR"),
    (0xC000_0206, "STATUS_INVALID_BUFFER_SIZE"),
    (0xC000_020A, "STATUS_ADDRESS_ALREADY_EXISTS"),
    (0xC000_020C, "STATUS_CONNECTION_DISCONNECTED"),
    (0xC000_0225, "STATUS_NOT_FOUND"),
    (0xC000_022D, "STATUS_RETRY"),
    (0xC000_0237, "STATUS_GRACEFUL_DISCONNECT"),
    (0xC000_023C, "STATUS_NETWORK_UNREACHABLE"),
    (0xC000_023D, "STATUS_HOST_UNREACHABLE"),
    (0xC000_0240, "STATUS_REQUEST_ABORTED"),
    (0xC000_0241, "STATUS_CONNECTION_ABORTED"),
    (0xC000_026C, "STATUS_DRIVER_UNABLE_TO_LOAD"),
    (0xC000_02B6, "STATUS_DEVICE_REMOVED"),
    (0xC000_02B9, "STATUS_NOINTERFACE"),
    (0xC000_036B, "STATUS_DRIVER_BLOCKED_CRITICAL"),
    (0xC000_036C, "STATUS_DRIVER_BLOCKED"),
    (0xC000_0428, "STATUS_INVALID_IMAGE_HASH"),
    (0xC01C_0007, "STATUS_FLT_NOT_INITIALIZED"),
    (0xC01C_0008, "STATUS_FLT_FILTER_NOT_READY"),
    (0xC01C_000B, "STATUS_FLT_DELETING_OBJECT"),
    (0xC01C_000F, "STATUS_FLT_DO_NOT_ATTACH"),
    (0xC01C_0011, "STATUS_FLT_INSTANCE_ALTITUDE_COLLISION"),
    (0xC01C_0012, "STATUS_FLT_INSTANCE_NAME_COLLISION"),
    (0xC01C_0013, "STATUS_FLT_FILTER_NOT_FOUND"),
];

/// The symbolic name of `status`, from the guest crate or [`EXTRA_STATUS_NAMES`].
#[must_use]
pub fn status_name(status: NtStatus) -> Option<&'static str> {
    status.name().or_else(|| {
        EXTRA_STATUS_NAMES
            .iter()
            .find(|(v, _)| *v == status.0)
            .map(|(_, n)| *n)
    })
}

fn severity_word(status: NtStatus) -> &'static str {
    match status.severity() {
        Severity::Success => "success",
        Severity::Informational => "informational",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

/// One NTSTATUS as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusInfo {
    /// `0x80000011`.
    pub hex: String,
    /// `STATUS_DEVICE_BUSY`, or `null` when unknown.
    pub name: Option<&'static str>,
    /// `success` / `informational` / `warning` / `error` (the top two bits).
    pub severity: &'static str,
    /// `NT_SUCCESS(status)`.
    pub nt_success: bool,
}

impl StatusInfo {
    fn of(status: NtStatus) -> Self {
        StatusInfo {
            hex: status.to_string(),
            name: status_name(status),
            severity: severity_word(status),
            nt_success: status.is_success(),
        }
    }

    fn label(&self) -> String {
        match self.name {
            Some(n) => format!("{} {n}", self.hex),
            None => format!("{} (unnamed, severity {})", self.hex, self.severity),
        }
    }
}

/// A decoded line of the log.
#[derive(Clone, Debug, Serialize)]
pub struct DecodedLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// `AUDIT`, `ERROR`, `WARN`, `INFO` or `DEBUG`.
    pub level: &'static str,
    /// The routine (second field).
    pub routine: String,
    /// The message without the status suffix.
    pub message: String,
    /// The trailing status, if any.
    pub status: Option<StatusInfo>,
    #[serde(skip)]
    level_enum: Option<Level>,
    #[serde(skip)]
    raw_status: Option<NtStatus>,
}

/// The lines of one routine.
#[derive(Clone, Debug, Serialize)]
pub struct RoutineGroup {
    /// Routine name.
    pub routine: String,
    /// Line numbers, in file order.
    pub lines: Vec<usize>,
    /// The worst level among them.
    pub worst_level: &'static str,
}

/// One distinct status in the log.
#[derive(Clone, Debug, Serialize)]
pub struct StatusCount {
    /// The status.
    #[serde(flatten)]
    pub status: StatusInfo,
    /// How many lines carry it.
    pub count: usize,
    /// Line numbers carrying it.
    pub lines: Vec<usize>,
}

/// A diagnosis: what probably happened and what to do next.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Stable id, e.g. `vsock-provider-busy`.
    pub id: &'static str,
    /// `error`, `warning` or `info`.
    pub severity: &'static str,
    /// The likely cause, one line.
    pub cause: String,
    /// Why: how the lines lead to the cause.
    pub explanation: String,
    /// What to do next.
    pub next_step: String,
    /// The lines the finding rests on.
    pub lines: Vec<usize>,
}

/// The whole decoded log.
#[derive(Clone, Debug, Serialize)]
pub struct DecodedLog {
    /// Non-empty lines in the file.
    pub total_lines: usize,
    /// Lines in the `LEVEL: Routine : message` shape.
    pub decoded: Vec<DecodedLine>,
    /// Line numbers of non-empty lines that are not in that shape.
    pub other_lines: Vec<usize>,
    /// Lines grouped by routine, in order of first appearance.
    pub routines: Vec<RoutineGroup>,
    /// Every distinct status, in order of first appearance.
    pub statuses: Vec<StatusCount>,
    /// `key: value` parameters dumped by the agent (`ReadParams`, `VFileUmcReadParams`).
    pub parameters: Vec<(String, String)>,
    /// The diagnosis, most important first.
    pub findings: Vec<Finding>,
}

impl DecodedLog {
    /// `true` if any finding has severity `error`.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == "error")
    }
}

/// Turns file bytes into text: UTF-16LE/BE with BOM (what Windows tools write),
/// UTF-8 with or without BOM; invalid sequences become U+FFFD.
#[must_use]
pub fn bytes_to_text(bytes: &[u8]) -> String {
    fn utf16(bytes: &[u8], le: bool) -> String {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| {
                if le {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        utf16(rest, true)
    } else if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        utf16(rest, false)
    } else {
        let b = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
        String::from_utf8_lossy(b).into_owned()
    }
}

const LEVEL_TAGS: &[&str] = &[
    "AUDIT: ",
    "ERROR: ",
    "WARNING: ",
    "WARN: ",
    "INFO: ",
    "DEBUG: ",
    "TRACE: ",
];

/// Finds the seed-shaped record in `line`, skipping a capture tool's prefix.
fn find_record(line: &str) -> Option<thinagent_guest::ParsedLine<'_>> {
    if let Some(p) = parse_line(line) {
        return Some(p);
    }
    let mut best: Option<usize> = None;
    for tag in LEVEL_TAGS {
        let mut from = 0;
        while let Some(i) = line[from..].find(tag) {
            let at = from + i;
            let boundary = line[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric());
            if boundary && parse_line(&line[at..]).is_some() {
                best = Some(best.map_or(at, |b: usize| b.min(at)));
                break;
            }
            from = at + tag.len();
        }
    }
    best.and_then(|at| parse_line(&line[at..]))
}

fn level_rank(l: Level) -> u8 {
    // most severe first for "worst": ERROR > WARN > AUDIT > INFO > DEBUG
    match l {
        Level::Error => 4,
        Level::Warn => 3,
        Level::Audit => 2,
        Level::Info => 1,
        Level::Debug => 0,
    }
}

/// Decodes `text` (a whole log).
#[must_use]
pub fn decode(text: &str) -> DecodedLog {
    let mut decoded = Vec::new();
    let mut other_lines = Vec::new();
    let mut total_lines = 0;
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        total_lines += 1;
        match find_record(raw) {
            Some(p) => decoded.push(DecodedLine {
                line: i + 1,
                level: p.level.as_str(),
                routine: p.routine.to_string(),
                message: p.message.trim().to_string(),
                status: p.status.map(StatusInfo::of),
                level_enum: Some(p.level),
                raw_status: p.status,
            }),
            None => other_lines.push(i + 1),
        }
    }

    let mut routines: Vec<RoutineGroup> = Vec::new();
    for d in &decoded {
        let lvl = d.level_enum.unwrap_or(Level::Debug);
        match routines.iter_mut().find(|g| g.routine == d.routine) {
            Some(g) => {
                g.lines.push(d.line);
                let cur = Level::parse(g.worst_level).unwrap_or(Level::Debug);
                if level_rank(lvl) > level_rank(cur) {
                    g.worst_level = lvl.as_str();
                }
            }
            None => routines.push(RoutineGroup {
                routine: d.routine.clone(),
                lines: vec![d.line],
                worst_level: lvl.as_str(),
            }),
        }
    }

    let mut statuses: Vec<StatusCount> = Vec::new();
    for d in &decoded {
        let Some(s) = d.raw_status else { continue };
        let hex = s.to_string();
        match statuses.iter_mut().find(|c| c.status.hex == hex) {
            Some(c) => {
                c.count += 1;
                c.lines.push(d.line);
            }
            None => statuses.push(StatusCount {
                status: StatusInfo::of(s),
                count: 1,
                lines: vec![d.line],
            }),
        }
    }

    let parameters = decoded
        .iter()
        .filter(|d| is_param_routine(&d.routine) && d.raw_status.is_none())
        .filter_map(|d| {
            d.message
                .rsplit_once(": ")
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();

    let findings = diagnose(&decoded);
    DecodedLog {
        total_lines,
        decoded,
        other_lines,
        routines,
        statuses,
        parameters,
        findings,
    }
}

fn is_param_routine(r: &str) -> bool {
    r.eq_ignore_ascii_case("ReadParams") || r.to_ascii_lowercase().ends_with("readparams")
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// A capture of the vSockets provider: VMware's `VSockLayer_Init` /
/// `VMCISock_WskCaptureProviderNPI`, or our `VsockCapture` routine.
fn is_capture_line(d: &DecodedLine) -> bool {
    let r = lower(&d.routine);
    let m = lower(&d.message);
    r == "vsocklayer_init"
        || r == "vsockcapture"
        || m.contains("captureprovidernpi")
        || m.contains("capture attempt")
        || m.contains("capture failed")
}

fn is_load_failed(d: &DecodedLine) -> bool {
    let m = lower(&d.message);
    d.routine.eq_ignore_ascii_case("DriverEntry")
        && (m.contains("load failed") || m.contains("failed to load"))
}

fn is_loaded(d: &DecodedLine) -> bool {
    let m = lower(&d.message);
    d.routine.eq_ignore_ascii_case("DriverEntry")
        && d.level_enum == Some(Level::Audit)
        && !m.contains("fail")
        && (m.ends_with("loaded") || m.contains(" loaded"))
}

/// Extracts the integer after `word` in `m`, e.g. `after 100 attempt(s)`.
fn number_after(m: &str, word: &str) -> Option<u64> {
    let i = m.find(word)? + word.len();
    let digits: String = m[i..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn lines_of<'a>(it: impl Iterator<Item = &'a DecodedLine>) -> Vec<usize> {
    it.map(|d| d.line).collect()
}

fn has_status(d: &DecodedLine, any: &[NtStatus]) -> bool {
    d.raw_status.is_some_and(|s| any.contains(&s))
}

/// The diagnosis rules, most important first.
///
/// | id | when | severity |
/// |---|---|---|
/// | `vsock-provider-busy` | a capture returned STATUS_DEVICE_BUSY and never succeeded | error |
/// | `vsock-provider-busy-recovered` | the same, but a later capture succeeded | info |
/// | `vsock-device-missing` | a capture found no `\Device\vmci` (name/path not found, no such device) | error, info if recovered |
/// | `capture-ioctl-hung` | a capture attempt timed out (STATUS_IO_TIMEOUT on a capture line) | error, info if recovered |
/// | `capture-retries-exhausted` | our agent gave up (`capture failed after N attempt(s)`) | error |
/// | `driver-load-failed` | DriverEntry reported `load failed` | error |
/// | `host-connection-refused` | STATUS_CONNECTION_REFUSED | error |
/// | `host-connection-lost` | reset / aborted / disconnected / unreachable | warning |
/// | `verdict-timeouts` | STATUS_IO_TIMEOUT / STATUS_TIMEOUT or a WARN/ERROR line about a timeout | warning |
/// | `altitude-collision` | STATUS_FLT_INSTANCE_ALTITUDE_COLLISION | error |
/// | `provider-captured` | a capture succeeded (`captured after N attempt(s)`) | info |
/// | `connected` | a `connected` line | info |
/// | `driver-loaded` | DriverEntry's AUDIT `loaded` line | info |
/// | `unexplained-error` | an ERROR line with a status no rule explained | warning |
pub fn diagnose(lines: &[DecodedLine]) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    let busy = NtStatus::STATUS_DEVICE_BUSY;
    let missing = [
        NtStatus::STATUS_OBJECT_NAME_NOT_FOUND,
        NtStatus::STATUS_OBJECT_PATH_NOT_FOUND,
        NtStatus::STATUS_NO_SUCH_DEVICE,
        NtStatus::STATUS_DEVICE_DOES_NOT_EXIST,
    ];
    let captures: Vec<&DecodedLine> = lines.iter().filter(|d| is_capture_line(d)).collect();
    let captured: Vec<&DecodedLine> = captures
        .iter()
        .copied()
        .filter(|d| {
            let m = lower(&d.message);
            m.contains("captured") && d.raw_status.is_none_or(NtStatus::is_success)
        })
        .collect();
    let recovered = !captured.is_empty();
    let load_failed: Vec<&DecodedLine> = lines.iter().filter(|d| is_load_failed(d)).collect();
    let mut explained: Vec<usize> = Vec::new();

    // Lines that repeat the capture's failure status on the way out of
    // DriverEntry (VFileSocketMgr_Init, DriverEntry) belong to the same chain.
    let chain = |status: NtStatus, first: usize| -> Vec<usize> {
        lines
            .iter()
            .filter(|d| d.line >= first && d.raw_status == Some(status))
            .map(|d| d.line)
            .collect()
    };

    let busy_caps: Vec<&DecodedLine> = captures
        .iter()
        .copied()
        .filter(|d| d.raw_status == Some(busy))
        .collect();
    if let Some(first) = busy_caps.first() {
        let ev = if recovered {
            lines_of(busy_caps.iter().copied())
        } else {
            chain(busy, first.line)
        };
        explained.extend(&ev);
        if recovered {
            out.push(Finding {
                id: "vsock-provider-busy-recovered",
                severity: "info",
                cause: "vsock provider was busy at first: vmci device started late — retries absorbed it; check class filters with `thinagent-diag loadorder`".into(),
                explanation: format!(
                    "{} capture attempt(s) got STATUS_DEVICE_BUSY (0x80000011) from \\Driver\\vsock before the provider was captured: \\Driver\\vmci's device (\\Device\\VMCIHostDev, \\Global??\\VMCIDev) was not started yet. Something delays vmci's PnP device start, typically a class filter whose driver loads later.",
                    busy_caps.len()
                ),
                next_step: "Nothing is broken; to remove the delay run `thinagent-diag loadorder` on this machine's SYSTEM hive (or `reg export HKLM\\SYSTEM` file) and look for a deferred vmci.".into(),
                lines: ev,
            });
        } else {
            out.push(Finding {
                id: "vsock-provider-busy",
                severity: "error",
                cause: "vsock provider busy: vmci device not started yet — check class filters with `thinagent-diag loadorder`".into(),
                explanation: "The capture IOCTL 0x810320C0 sent to \\Device\\vmci (owned by \\Driver\\vsock) returned STATUS_DEVICE_BUSY (0x80000011, a warning: not NT_SUCCESS): vsock is loaded but \\Driver\\vmci has no device yet (\\Global??\\VMCIDev -> \\Device\\VMCIHostDev missing). vmci's device is a PnP device of the System class; its start waits until every upper and lower filter of its device and class has loaded, so a class filter whose driver is in a later load-order group keeps it busy for the whole boot-driver phase.".into(),
                next_step: "Run `thinagent-diag loadorder FILE` on the machine's SYSTEM hive (copied from the disk) or on `reg export HKLM\\SYSTEM system.reg`; it names the class filter that defers vmci. Then remove that class filter, move its driver to an earlier group that exists in the machine's ServiceGroupOrder (e.g. \"Boot Bus Extender\"), or use an agent that keeps retrying after DriverEntry (ThinAgent does). `thinagent-diag simulate FILE --agent vsepflt` replays the boot.".into(),
                lines: ev,
            });
        }
    }

    let missing_caps: Vec<&DecodedLine> = captures
        .iter()
        .copied()
        .filter(|d| has_status(d, &missing))
        .collect();
    if let Some(first) = missing_caps.first() {
        let status = first.raw_status.unwrap_or_default();
        let ev = if recovered {
            lines_of(missing_caps.iter().copied())
        } else {
            chain(status, first.line)
        };
        explained.extend(&ev);
        out.push(Finding {
            id: "vsock-device-missing",
            severity: if recovered { "info" } else { "error" },
            cause: if recovered {
                "vsock driver started after the agent: \\Device\\vmci appeared late — retries absorbed it".into()
            } else {
                "vsock driver not started: \\Device\\vmci does not exist — check that vsock is installed and boot-start before the agent with `thinagent-diag loadorder`".into()
            },
            explanation: format!(
                "{} capture attempt(s) could not open \\DosDevices\\vmci ({}): \\Driver\\vsock had not created \\Device\\vmci yet, or is not installed.",
                missing_caps.len(),
                StatusInfo::of(status).label()
            ),
            next_step: "Check that VMware Tools' vSockets driver (service `vsock`) is installed with Start=0 and that `thinagent-diag loadorder` lists it before the agent; reinstall VMware Tools if it is missing.".into(),
            lines: ev,
        });
    }

    // Our adapter reports a capture IOCTL it waited 5 s for and cancelled
    // as STATUS_IO_TIMEOUT (transient: the loop goes on).
    let hung_caps: Vec<&DecodedLine> = captures
        .iter()
        .copied()
        .filter(|d| has_status(d, &[NtStatus::STATUS_IO_TIMEOUT]))
        .collect();
    if !hung_caps.is_empty() {
        let ev = lines_of(hung_caps.iter().copied());
        explained.extend(&ev);
        out.push(Finding {
            id: "capture-ioctl-hung",
            severity: if recovered { "info" } else { "error" },
            cause: format!(
                "{} capture IOCTL(s) hung: \\Driver\\vsock left 0x810320C0 pending until the agent timed it out{}",
                ev.len(),
                if recovered { "; a later attempt succeeded" } else { "" }
            ),
            explanation: "The agent waits at most 5 s for the capture IOCTL, then cancels it and counts the attempt as STATUS_IO_TIMEOUT (0xC00000B5), a transient failure: the loop goes on with the next attempt, and the 5 s count as time waited.".into(),
            next_step: "Check that vsock.sys and vmci.sys are the versions VMware Tools installed together and that vmci's device started (`thinagent-diag loadorder`); a provider that never answers leaves the agent under its fail mode.".into(),
            lines: ev,
        });
    }

    for d in lines {
        let m = lower(&d.message);
        if m.contains("capture failed after") {
            let attempts = number_after(&m, "after");
            let waited = number_after(&m, "attempt(s),");
            let status = d.raw_status.map(StatusInfo::of);
            let fatal = m.contains("not transient");
            explained.push(d.line);
            out.push(Finding {
                id: "capture-retries-exhausted",
                severity: "error",
                cause: if fatal {
                    format!(
                        "capture stopped: {} is not a transient status",
                        status.as_ref().map_or("the status".into(), StatusInfo::label)
                    )
                } else {
                    format!(
                        "capture retries exhausted after {} attempt(s){}",
                        attempts.map_or("?".into(), |a| a.to_string()),
                        waited.map_or(String::new(), |w| format!(", {w} ms waited"))
                    )
                },
                explanation: format!(
                    "The agent's capture loop gave up; the last status was {}. The rules above say why the provider was not ready.",
                    status.as_ref().map_or("not logged".into(), StatusInfo::label)
                ),
                next_step: "Fix the cause (usually the load order: `thinagent-diag loadorder`), or give the agent more time: raise captureRetryCount / captureRetryDelayMs under the service's Parameters key. `thinagent-diag simulate FILE` shows whether the new values suffice.".into(),
                lines: vec![d.line],
            });
        }
    }

    if let Some(last) = load_failed.last() {
        let ev = lines_of(load_failed.iter().copied());
        explained.extend(&ev);
        let status = last.raw_status.map(StatusInfo::of);
        out.push(Finding {
            id: "driver-load-failed",
            severity: "error",
            cause: format!(
                "the driver failed DriverEntry{}: it is not filtering",
                status
                    .as_ref()
                    .map_or(String::new(), |s| format!(" with {}", s.label()))
            ),
            explanation: "DriverEntry returned a failure, so Windows unloaded the driver; files were not scanned during this boot. The findings above give the root cause.".into(),
            next_step: "Fix the root cause above, then start the driver by hand (`sc start <service>`) to check, or reboot.".into(),
            lines: ev,
        });
    }

    let refused: Vec<&DecodedLine> = lines
        .iter()
        .filter(|d| d.raw_status == Some(NtStatus::STATUS_CONNECTION_REFUSED))
        .collect();
    if !refused.is_empty() {
        let ev = lines_of(refused.iter().copied());
        explained.extend(&ev);
        out.push(Finding {
            id: "host-connection-refused",
            severity: "error",
            cause: "host scanner refused the connection: nothing listens on hostCid:hostPort".into(),
            explanation: "The vsock connect reached the host, which answered with a reset: no scanner is bound to that port.".into(),
            next_step: "Start `thinagent-scanner` on the host listening on vsock://any:PORT and check the agent's hostCid (2 = the host) and hostPort parameters.".into(),
            lines: ev,
        });
    }

    let lost_statuses = [
        NtStatus::STATUS_CONNECTION_RESET,
        NtStatus(0xC000_0241), // STATUS_CONNECTION_ABORTED
        NtStatus(0xC000_020C), // STATUS_CONNECTION_DISCONNECTED
        NtStatus(0xC000_023D), // STATUS_HOST_UNREACHABLE
        NtStatus(0xC000_023C), // STATUS_NETWORK_UNREACHABLE
    ];
    let lost: Vec<&DecodedLine> = lines
        .iter()
        .filter(|d| has_status(d, &lost_statuses))
        .collect();
    if !lost.is_empty() {
        let ev = lines_of(lost.iter().copied());
        explained.extend(&ev);
        out.push(Finding {
            id: "host-connection-lost",
            severity: "warning",
            cause: format!(
                "connection to the host scanner lost or unreachable ({} line(s))",
                ev.len()
            ),
            explanation: "The session with the scanner ended abnormally; the agent applies its fail mode to pending queries and reconnects with backoff.".into(),
            next_step: "Check the scanner's log on the host around the same time and that the VM's vsock device is enabled.".into(),
            lines: ev,
        });
    }

    let timeouts: Vec<&DecodedLine> = lines
        .iter()
        .filter(|d| !is_capture_line(d))
        .filter(|d| {
            let m = lower(&d.message);
            has_status(d, &[NtStatus::STATUS_IO_TIMEOUT, NtStatus::STATUS_TIMEOUT])
                || (matches!(d.level_enum, Some(Level::Warn | Level::Error))
                    && (m.contains("timed out") || m.contains("timeout")))
        })
        .collect();
    if !timeouts.is_empty() {
        let ev = lines_of(timeouts.iter().copied());
        explained.extend(&ev);
        out.push(Finding {
            id: "verdict-timeouts",
            severity: "warning",
            cause: format!(
                "{} request(s) timed out: the scanner answered later than umcMsgTimeoutMs",
                ev.len()
            ),
            explanation: "When a verdict does not arrive in time the agent decides by its fail mode (open: allow, closed: deny).".into(),
            next_step: "Check the scanner host's load and engine timings; raise umcMsgTimeoutMs under the service's Parameters key if the scans are legitimately slow.".into(),
            lines: ev,
        });
    }

    let collisions: Vec<&DecodedLine> = lines
        .iter()
        .filter(|d| d.raw_status == Some(NtStatus(0xC01C_0011)))
        .collect();
    if !collisions.is_empty() {
        let ev = lines_of(collisions.iter().copied());
        explained.extend(&ev);
        out.push(Finding {
            id: "altitude-collision",
            severity: "error",
            cause: "another minifilter already uses this instance's altitude".into(),
            explanation: "Filter Manager refuses an instance whose altitude equals a loaded filter's (STATUS_FLT_INSTANCE_ALTITUDE_COLLISION); e.g. 328200 belongs to VMware's vsepflt.sys.".into(),
            next_step: "Give the instance its own altitude in the FSFilter Anti-Virus range and check the INF with `thinagent-diag lint-inf`.".into(),
            lines: ev,
        });
    }

    for d in &captured {
        let m = lower(&d.message);
        let attempts = number_after(&m, "after");
        let waited = number_after(&m, "attempt(s),");
        explained.push(d.line);
        out.push(Finding {
            id: "provider-captured",
            severity: "info",
            cause: format!(
                "vSockets provider captured after {} attempt(s){}",
                attempts.map_or("?".into(), |a| a.to_string()),
                waited.map_or(String::new(), |w| format!(", {w} ms waited"))
            ),
            explanation: "The capture IOCTL succeeded: vsock and vmci were both ready.".into(),
            next_step: "None.".into(),
            lines: vec![d.line],
        });
    }

    let connected: Vec<&DecodedLine> = lines
        .iter()
        .filter(|d| {
            let m = lower(&d.message);
            !is_capture_line(d)
                && m.contains("connected")
                && !m.contains("disconnected")
                && !m.contains("not connected")
                && d.raw_status.is_none_or(NtStatus::is_success)
        })
        .collect();
    if let Some(last) = connected.last() {
        let ev = lines_of(connected.iter().copied());
        explained.extend(&ev);
        out.push(Finding {
            id: "connected",
            severity: "info",
            cause: format!("connected to the host scanner ({})", last.message),
            explanation: "The agent has a session with the scanner.".into(),
            next_step: "None.".into(),
            lines: ev,
        });
    }

    if let Some(d) = lines.iter().rev().find(|d| is_loaded(d)) {
        explained.push(d.line);
        out.push(Finding {
            id: "driver-loaded",
            severity: "info",
            cause: format!("the driver loaded ({})", d.message),
            explanation: "DriverEntry succeeded.".into(),
            next_step: "None.".into(),
            lines: vec![d.line],
        });
    }

    for d in lines {
        if d.level_enum == Some(Level::Error)
            && d.raw_status.is_some_and(|s| !s.is_success())
            && !explained.contains(&d.line)
        {
            let s = StatusInfo::of(d.raw_status.unwrap_or_default());
            out.push(Finding {
                id: "unexplained-error",
                severity: "warning",
                cause: format!("{} failed with {}", d.routine, s.label()),
                explanation: format!("Line {}: `{}`; no rule recognises it.", d.line, d.message),
                next_step: format!(
                    "Read the lines of routine {} above; report the log if the cause is unclear.",
                    d.routine
                ),
                lines: vec![d.line],
            });
        }
    }
    out
}

/// The human-readable report.
#[must_use]
pub fn render_text(name: &str, log: &DecodedLog) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "decode-log {name}: {} line(s), {} in the agent's log shape, {} other",
        log.total_lines,
        log.decoded.len(),
        log.other_lines.len()
    );
    if !log.statuses.is_empty() {
        let _ = writeln!(s, "\nStatuses:");
        for c in &log.statuses {
            let _ = writeln!(
                s,
                "  {}  {:<40} {:<13} x{}  (line {})",
                c.status.hex,
                c.status.name.unwrap_or("(unnamed)"),
                c.status.severity,
                c.count,
                join(&c.lines)
            );
        }
    }
    if !log.parameters.is_empty() {
        let _ = writeln!(s, "\nParameters:");
        for (k, v) in &log.parameters {
            let _ = writeln!(s, "  {k} = {v}");
        }
    }
    let _ = writeln!(s, "\nBy routine:");
    for g in &log.routines {
        let _ = writeln!(
            s,
            "  {} ({} line(s), worst {})",
            g.routine,
            g.lines.len(),
            g.worst_level
        );
        for n in &g.lines {
            if let Some(d) = log.decoded.iter().find(|d| d.line == *n) {
                let status = d
                    .status
                    .as_ref()
                    .map_or(String::new(), |st| format!("  [{}]", st.label()));
                let _ = writeln!(
                    s,
                    "    {:>4}  {:<5}  {}{}",
                    d.line, d.level, d.message, status
                );
            }
        }
    }
    let _ = writeln!(s, "\nDiagnosis:");
    if log.findings.is_empty() {
        let _ = writeln!(s, "  nothing to report: no failures and no known events");
    }
    for f in &log.findings {
        let _ = writeln!(s, "  [{}] {}: {}", f.severity, f.id, f.cause);
        let _ = writeln!(s, "      lines: {}", join(&f.lines));
        let _ = writeln!(s, "      why:   {}", f.explanation);
        let _ = writeln!(s, "      next:  {}", f.next_step);
    }
    s
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING_1: &str = include_str!("../tests/fixtures/seed-listing1-vsepflt.log");

    #[test]
    fn listing_1_decodes_to_vmci_not_started() {
        let log = decode(LISTING_1);
        assert_eq!(log.decoded.len(), 8);
        assert!(log.other_lines.is_empty());
        let f = &log.findings[0];
        assert_eq!(f.id, "vsock-provider-busy");
        assert_eq!(
            f.cause,
            "vsock provider busy: vmci device not started yet — check class filters with `thinagent-diag loadorder`"
        );
        assert_eq!(f.lines, [5, 6, 7, 8]);
        assert!(log.findings.iter().any(|f| f.id == "driver-load-failed"));
        assert!(!log.findings.iter().any(|f| f.id == "unexplained-error"));
        assert_eq!(log.statuses.len(), 1);
        assert_eq!(log.statuses[0].status.name, Some("STATUS_DEVICE_BUSY"));
        assert_eq!(log.statuses[0].count, 4);
        let routines: Vec<_> = log.routines.iter().map(|g| g.routine.as_str()).collect();
        assert_eq!(
            routines,
            [
                "VFileUmcReadParams",
                "DriverEntry",
                "VSockLayer_Init",
                "VFileSocketMgr_Init"
            ]
        );
        assert_eq!(
            log.parameters[0],
            ("umcMsgTimeoutMs".to_string(), "2000".to_string())
        );
        // the pointer in "device: 0xfffffa8003e1a6a0." is not a status
        assert!(log.decoded[2].status.is_none());
        assert!(log.has_errors());
    }

    #[test]
    fn prefixes_of_capture_tools_are_skipped() {
        let text = "00000005\t0.01234\t[4] ERROR: VSockLayer_Init : VMCISock_WskCaptureProviderNPI: 0x80000011\r\n\
                    kd> junk line\n";
        let log = decode(text);
        assert_eq!(log.decoded.len(), 1);
        assert_eq!(log.decoded[0].routine, "VSockLayer_Init");
        assert_eq!(log.other_lines, [2]);
        assert_eq!(log.findings[0].id, "vsock-provider-busy");
    }

    #[test]
    fn utf16_logs_decode() {
        let mut bytes = vec![0xFF, 0xFE];
        for u in "ERROR: Session : query timed out: 0xC00000B5\r\n".encode_utf16() {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        let log = decode(&bytes_to_text(&bytes));
        assert_eq!(log.decoded.len(), 1);
        assert_eq!(log.findings[0].id, "verdict-timeouts");
    }

    #[test]
    fn our_agent_recovering_from_busy() {
        let text = "\
DEBUG: ReadParams : umcMsgTimeoutMs: 2000
DEBUG: VsockCapture : capture attempt 1 failed, retrying in 1000 ms: 0x80000011
DEBUG: VsockCapture : capture attempt 2 failed, retrying in 1000 ms: 0x80000011
INFO: VsockCapture : vSockets provider captured after 3 attempt(s), 2000 ms waited: 0x00000000
INFO: VsockConnect : connected to vsock://2:5317
AUDIT: DriverEntry : ThinAgent loaded: 0x00000000
";
        let log = decode(text);
        let ids: Vec<_> = log.findings.iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [
                "vsock-provider-busy-recovered",
                "provider-captured",
                "connected",
                "driver-loaded"
            ]
        );
        assert!(!log.has_errors());
        assert_eq!(
            log.findings[1].cause,
            "vSockets provider captured after 3 attempt(s), 2000 ms waited"
        );
    }

    #[test]
    fn our_agent_with_hung_capture_ioctls() {
        let text = "\
WARN: VsockCapture : IOCTL 0x810320c0 still pending after 5000 ms or unload: cancelling it: 0x00000103
WARN: VsockCapture : IOCTL 0x810320c0 completed after the cancel: 0xC0000120
DEBUG: VsockCapture : capture attempt 1 timed out after 5000 ms, retrying in 1000 ms: 0xC00000B5
ERROR: VsockCapture : capture failed after 2 attempt(s), 11000 ms waited, attempts exhausted: 0xC00000B5
";
        let log = decode(text);
        let ids: Vec<_> = log.findings.iter().map(|f| f.id).collect();
        assert_eq!(ids, ["capture-ioctl-hung", "capture-retries-exhausted"]);
        assert_eq!(log.findings[0].severity, "error");
        assert_eq!(log.findings[0].lines, [3, 4]);
        assert_eq!(
            log.findings[1].cause,
            "capture retries exhausted after 2 attempt(s), 11000 ms waited"
        );
    }

    #[test]
    fn our_agent_giving_up() {
        let text = "\
DEBUG: VsockCapture : capture attempt 1 failed, retrying in 1000 ms: 0xC0000034
DEBUG: VsockCapture : capture attempt 2 failed, retrying in 1000 ms: 0x80000011
ERROR: VsockCapture : capture failed after 100 attempt(s), 99000 ms waited, attempts exhausted: 0x80000011
AUDIT: DriverEntry : ThinAgent load failed: 0x80000011
";
        let log = decode(text);
        let ids: Vec<_> = log.findings.iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [
                "vsock-provider-busy",
                "vsock-device-missing",
                "capture-retries-exhausted",
                "driver-load-failed"
            ]
        );
        assert_eq!(
            log.findings[2].cause,
            "capture retries exhausted after 100 attempt(s), 99000 ms waited"
        );
        assert_eq!(log.findings[1].severity, "error");
    }

    #[test]
    fn connection_and_unknown_errors() {
        let text = "\
ERROR: VsockConnect : connect to vsock://2:5317 failed: 0xC0000236
ERROR: Session : connection lost: 0xC000020D
ERROR: Mystery : something odd: 0xE0001234
";
        let log = decode(text);
        let ids: Vec<_> = log.findings.iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [
                "host-connection-refused",
                "host-connection-lost",
                "unexplained-error"
            ]
        );
        assert!(log.findings[2].cause.contains("0xE0001234 (unnamed"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_accounts_for_every_line(text in "(\\PC{0,40}(: 0x[0-9A-F]{8})?\\r?\\n){0,12}") {
            let log = decode(&text);
            let non_empty = text.lines().filter(|l| !l.trim().is_empty()).count();
            proptest::prop_assert_eq!(log.total_lines, non_empty);
            proptest::prop_assert_eq!(log.decoded.len() + log.other_lines.len(), non_empty);
            let _ = render_text("x", &log);
        }

        #[test]
        fn our_lines_always_decode(
            level in proptest::sample::select(&Level::ALL[..]),
            routine in "[A-Za-z_][A-Za-z0-9_]{0,20}",
            message in "[ -~]{0,40}",
            status in proptest::option::of(proptest::prelude::any::<u32>()),
            prefix in "[0-9. \\t\\[\\]]{0,12}",
        ) {
            let rec = thinagent_guest::LogRecord { level, routine: &routine, message: format_args!("{message}"), status: status.map(NtStatus) };
            // a capture tool's prefix ends in a separator (DbgView: a tab)
            let log = decode(&format!("{prefix}\t{rec}\n"));
            proptest::prop_assert_eq!(log.decoded.len(), 1);
            proptest::prop_assert_eq!(&log.decoded[0].routine, &routine);
        }
    }

    #[test]
    fn extra_names_do_not_shadow_guest_names() {
        for (v, n) in EXTRA_STATUS_NAMES {
            assert_eq!(
                NtStatus(*v).name(),
                None,
                "{n} is already in the guest table"
            );
            assert!(n.starts_with("STATUS_"));
        }
        assert_eq!(
            status_name(NtStatus(0xC01C_0011)),
            Some("STATUS_FLT_INSTANCE_ALTITUDE_COLLISION")
        );
        assert_eq!(
            status_name(NtStatus::STATUS_DEVICE_BUSY),
            Some("STATUS_DEVICE_BUSY")
        );
    }
}
