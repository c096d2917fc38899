//! Agent parameters: defaults, bounds, and a name/value feed.
//!
//! The Windows driver reads values under its service key's `Parameters`
//! subkey; the Linux agent reads `name = value` lines. Both hand each raw pair
//! to [`Params::apply`] (or all of them to [`Params::from_values`]), which:
//!
//! * matches the name case-insensitively (registry value names are);
//! * accepts a `REG_DWORD`/`REG_QWORD`, or a string holding a decimal or `0x`
//!   hex number, for numeric parameters;
//! * **clamps** out-of-range numbers into their bounds and reports a
//!   [`Clamp`] (a boot driver must start with *some* configuration);
//! * **rejects** unknown names, wrong types and meaningless values (keeping the
//!   previous value) and reports them.
//!
//! | name | type | default | bounds |
//! |---|---|---|---|
//! | `umcMsgTimeoutMs` | DWORD | 2000 (the VMware agent's value) | 100..=60000 |
//! | `captureRetryCount` | DWORD | 100 | 1..=10000 |
//! | `captureRetryDelayMs` | DWORD | 1000 | 1..=60000 |
//! | `captureBackoffFactor` | DWORD | 1 (fixed delay) | 1..=16 |
//! | `captureBackoffCapMs` | DWORD | 60000 | 1..=300000 (and ≥ the delay) |
//! | `hostCid` | DWORD | 2 (`VMADDR_CID_HOST`) | not 0, not 0xFFFFFFFF |
//! | `hostPort` | DWORD | 5317 ([`DEFAULT_HOST_PORT`]) | not 0, not 0xFFFFFFFF |
//! | `failMode` | DWORD 0/1 or SZ `open`/`closed` | open | |
//! | `debugLevel` | DWORD | 2 (AUDIT+ERROR+WARN) | 0..=4 |
//! | `maxScanSizeMb` | DWORD | 0 (no limit) | 0..=1048576 |
//! | `verdictCacheTtlMs` | DWORD | 600000 (10 min) | 0 (no TTL)..=86400000 |
//! | `excludePaths` | MULTI_SZ / SZ | none | 32 prefixes × 260 units |
//! | `excludeExtensions` | MULTI_SZ / SZ | none | 32 × 16 units |
//!
//! **Fail mode defaults to open**: when the scanner cannot answer in time the
//! open is allowed. A boot-start filter that fails closed while the host is
//! unreachable blocks every file open, which turns a scanner outage (or the
//! seed's capture failure) into an unbootable guest. Sites that prefer
//! blocking set `failMode` to 1 / `closed`.
//!
//! **Default port 5317**: no IANA or VMware assignment exists for this
//! protocol on vsock; 5317 is unassigned in the IANA registry and easy to spot.

use core::fmt;
use core::time::Duration;

use crate::clamp::{BoundedList, Clamp, clamp_u64};
use crate::connector::{self, Backoff, ConnectorConfig};
use crate::log::{Level, LevelFilter, LogRecord, routine};
use crate::policy::{OpenPolicy, PathRef, PathStyle, PolicyError};
use crate::status::NtStatus;

/// `VMADDR_CID_HOST`: the hypervisor host's context id.
pub const VMADDR_CID_HOST: u32 = 2;
/// `VMADDR_CID_ANY` / `VMADDR_PORT_ANY` (not a valid destination).
pub const VMADDR_ANY: u32 = 0xFFFF_FFFF;
/// Default vsock port of the host scanner.
pub const DEFAULT_HOST_PORT: u32 = 5317;
/// Default scanner reply timeout (the real VMware agent's `umcMsgTimeoutMs`).
pub const DEFAULT_UMC_MSG_TIMEOUT_MS: u32 = 2000;

/// Parameter names, as stored in the registry (matched case-insensitively).
pub mod names {
    /// Scanner reply timeout, ms.
    pub const UMC_MSG_TIMEOUT_MS: &str = "umcMsgTimeoutMs";
    /// Capture attempts.
    pub const CAPTURE_RETRY_COUNT: &str = crate::connector::FIELD_ATTEMPTS;
    /// Delay between capture attempts, ms.
    pub const CAPTURE_RETRY_DELAY_MS: &str = crate::connector::FIELD_DELAY;
    /// Capture backoff factor (1 = fixed).
    pub const CAPTURE_BACKOFF_FACTOR: &str = crate::connector::FIELD_FACTOR;
    /// Capture backoff cap, ms.
    pub const CAPTURE_BACKOFF_CAP_MS: &str = crate::connector::FIELD_CAP;
    /// Host vsock CID.
    pub const HOST_CID: &str = "hostCid";
    /// Host vsock port.
    pub const HOST_PORT: &str = "hostPort";
    /// Fail mode.
    pub const FAIL_MODE: &str = "failMode";
    /// Debug level 0..=4.
    pub const DEBUG_LEVEL: &str = "debugLevel";
    /// Maximum scanned size, MiB (0 = no limit).
    pub const MAX_SCAN_SIZE_MB: &str = "maxScanSizeMb";
    /// Verdict cache TTL, ms (0 = none).
    pub const VERDICT_CACHE_TTL_MS: &str = "verdictCacheTtlMs";
    /// Excluded path prefixes.
    pub const EXCLUDE_PATHS: &str = "excludePaths";
    /// Excluded extensions.
    pub const EXCLUDE_EXTENSIONS: &str = "excludeExtensions";
    /// When the capture loop runs: 0 = deferred to a worker thread (default),
    /// 1 = blocking in `DriverEntry` (the incident's behaviour, for diagnosis).
    pub const CAPTURE_MODE: &str = "captureMode";
    /// Which vsock transport to use: 0 = auto, 1 = VMCI (VMware), 2 = virtio.
    pub const VSOCK_TRANSPORT: &str = "vsockTransport";
    /// Status a denied open fails with: 0 = `STATUS_VIRUS_INFECTED`,
    /// 1 = `STATUS_ACCESS_DENIED`.
    pub const DENY_STATUS: &str = "denyStatus";
    /// 1 = also scan opens requested from kernel mode (default 0).
    pub const SCAN_KERNEL_OPENS: &str = "scanKernelOpens";
    /// 1 = send a small file's first bytes (or the whole file) with its
    /// query, protocol version 2 (default); 0 = every byte on the host's
    /// request, as in version 1.
    pub const INLINE_CONTENT: &str = "inlineContent";
    /// Fields of a host `Policy` (protocol §14.6) the local admin pinned:
    /// a bit mask with the bits of `Policy.fields` (1 fail mode, 2 debug
    /// level, 4 exclusions, 8 query timeout, 16 cache TTL max, 32 max scan
    /// size); those fields keep their local value and are reported in
    /// `ActionResult.pinned`. 0 (default): the host sets every field.
    pub const PINNED_POLICY: &str = "PinnedPolicy";
    /// Every name, for adapters that query each value.
    pub const ALL: [&str; 19] = [
        UMC_MSG_TIMEOUT_MS,
        CAPTURE_RETRY_COUNT,
        CAPTURE_RETRY_DELAY_MS,
        CAPTURE_BACKOFF_FACTOR,
        CAPTURE_BACKOFF_CAP_MS,
        HOST_CID,
        HOST_PORT,
        FAIL_MODE,
        DEBUG_LEVEL,
        MAX_SCAN_SIZE_MB,
        VERDICT_CACHE_TTL_MS,
        EXCLUDE_PATHS,
        EXCLUDE_EXTENSIONS,
        CAPTURE_MODE,
        VSOCK_TRANSPORT,
        DENY_STATUS,
        SCAN_KERNEL_OPENS,
        INLINE_CONTENT,
        PINNED_POLICY,
    ];
}

/// The bits `PinnedPolicy` may hold: every `Policy.fields` bit (§14.6).
pub const PINNED_POLICY_MASK: u32 = 0b11_1111;

/// A raw registry / config value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegValue<'a> {
    /// `REG_DWORD`.
    Dword(u32),
    /// `REG_QWORD`.
    Qword(u64),
    /// `REG_SZ` as UTF-8.
    Sz(&'a str),
    /// `REG_SZ` as UTF-16 (no terminating NUL needed).
    SzUtf16(&'a [u16]),
    /// `REG_MULTI_SZ` as UTF-8: strings separated by NUL; empty strings are
    /// skipped (so the registry's double-NUL terminator is harmless).
    MultiSz(&'a str),
    /// `REG_MULTI_SZ` as UTF-16, same rules.
    MultiSzUtf16(&'a [u16]),
}

impl RegValue<'_> {
    /// The registry type name, for messages.
    #[must_use]
    pub const fn type_name(&self) -> &'static str {
        match self {
            RegValue::Dword(_) => "REG_DWORD",
            RegValue::Qword(_) => "REG_QWORD",
            RegValue::Sz(_) | RegValue::SzUtf16(_) => "REG_SZ",
            RegValue::MultiSz(_) | RegValue::MultiSzUtf16(_) => "REG_MULTI_SZ",
        }
    }
}

/// What to answer when no verdict arrives in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Allow the open (default; see the module docs).
    #[default]
    Open,
    /// Deny the open.
    Closed,
}

/// Where the driver runs its vSockets capture loop (`captureMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// `DriverEntry` returns at once; the bounded loop runs on a system
    /// worker thread (first attempt immediately) (and again once boot drivers are initialised)
    /// while the filter already runs under the fail mode. Default.
    #[default]
    Deferred,
    /// The whole bounded loop inside `DriverEntry`, as the agent in the
    /// incident did. It holds back every boot driver initialised after this
    /// one (including `vmci.sys` when it loads later): for diagnosis only.
    Blocking,
}

/// Which vsock transport the driver uses (`vsockTransport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VsockTransport {
    /// VMCI when `\Device\vmci` exists, else wait for the virtio socket
    /// device interface. Default.
    #[default]
    Auto,
    /// VMware's VMCI sockets (`\Device\vmci`, capture IOCTL).
    Vmci,
    /// virtio-vsock (KVM/QEMU guests with virtio-win's viosock driver).
    Virtio,
}

/// The status a denied open fails with (`denyStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DenyStatus {
    /// `STATUS_VIRUS_INFECTED` (0xC0000906): Explorer and most programs show
    /// "the file contains a virus". Default.
    #[default]
    VirusInfected,
    /// `STATUS_ACCESS_DENIED` (0xC0000022), for software that only handles
    /// the generic error.
    AccessDenied,
}

impl DenyStatus {
    /// The NTSTATUS value.
    #[must_use]
    pub const fn ntstatus(self) -> NtStatus {
        match self {
            DenyStatus::VirusInfected => NtStatus::STATUS_VIRUS_INFECTED,
            DenyStatus::AccessDenied => NtStatus::STATUS_ACCESS_DENIED,
        }
    }
}

/// Why a value was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// No parameter has this name.
    UnknownName,
    /// The value has the wrong registry type.
    WrongType {
        /// What was expected.
        expected: &'static str,
        /// What was given.
        given: &'static str,
    },
    /// The value cannot mean anything for this parameter (e.g. `hostCid` 0,
    /// `failMode` 7, a non-numeric string).
    Invalid,
    /// An exclusion could not be added.
    Policy(PolicyError),
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::UnknownName => f.write_str("unknown parameter"),
            ParamError::WrongType { expected, given } => {
                write!(f, "expected {expected}, got {given}")
            }
            ParamError::Invalid => f.write_str("invalid value"),
            ParamError::Policy(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for ParamError {}

/// The result of applying one value successfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Stored as given.
    Set,
    /// Stored after clamping.
    Clamped(Clamp),
}

/// One problem found while applying values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamIssue {
    /// The value was clamped.
    Clamped(Clamp),
    /// The value was rejected; the previous value stays.
    Rejected(ParamError),
}

/// A fixed-capacity list of `(name, issue)` pairs from [`Params::from_values`].
pub type ParamReport<'a, const N: usize = 16> = BoundedList<(&'a str, ParamIssue), N>;

impl<'a, const N: usize> ParamReport<'a, N> {
    /// Records the outcome of applying `name`, if it is an issue.
    pub fn record(&mut self, name: &'a str, outcome: Result<Applied, ParamError>) {
        let issue = match outcome {
            Ok(Applied::Set) => return,
            Ok(Applied::Clamped(c)) => ParamIssue::Clamped(c),
            Err(e) => ParamIssue::Rejected(e),
        };
        self.push((name, issue));
    }
}

/// The agent's parameters. [`Params::default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct Params {
    /// Scanner reply timeout, ms (`umcMsgTimeoutMs`).
    pub umc_msg_timeout_ms: u32,
    /// Capture attempts (`captureRetryCount`).
    pub capture_retry_count: u32,
    /// Capture delay, ms (`captureRetryDelayMs`).
    pub capture_retry_delay_ms: u32,
    /// Capture backoff factor, 1 = fixed (`captureBackoffFactor`).
    pub capture_backoff_factor: u32,
    /// Capture backoff cap, ms (`captureBackoffCapMs`).
    pub capture_backoff_cap_ms: u32,
    /// Host CID (`hostCid`).
    pub host_cid: u32,
    /// Host port (`hostPort`).
    pub host_port: u32,
    /// Fail mode (`failMode`).
    pub fail_mode: FailMode,
    /// Debug level 0..=4 (`debugLevel`).
    pub debug_level: u8,
    /// Maximum scanned size in MiB, 0 = no limit (`maxScanSizeMb`).
    pub max_scan_size_mb: u32,
    /// Verdict TTL in ms, 0 = none (`verdictCacheTtlMs`).
    pub verdict_cache_ttl_ms: u32,
    /// Where the capture loop runs (`captureMode`).
    pub capture_mode: CaptureMode,
    /// Which vsock transport (`vsockTransport`).
    pub vsock_transport: VsockTransport,
    /// Status of a denied open (`denyStatus`).
    pub deny_status: DenyStatus,
    /// Read a file's first bytes and send them with its query, announcing
    /// `INLINE_CONTENT` (`inlineContent`; protocol version 2, §5.3.1).
    /// `false`: the capability is not announced and the host reads every
    /// byte with `ReadRequest`s.
    pub inline_content: bool,
    /// Host policy fields pinned locally (`PinnedPolicy`, bits of
    /// `Policy.fields`, protocol §14.6; 0 = none).
    pub pinned_policy: u32,
    /// Open-filter policy holding the path and extension exclusions, and
    /// whether kernel-mode opens are scanned (`scanKernelOpens`).
    pub policy: OpenPolicy,
}

impl Default for Params {
    fn default() -> Self {
        Self::new(PathStyle::Windows)
    }
}

/// `w` as ASCII text in `buf`; `None` if it holds a non-ASCII character or
/// is longer than `buf`.
fn utf16_ascii<'b>(w: &[u16], buf: &'b mut [u8; 24]) -> Option<&'b str> {
    let mut n = 0;
    for c in char::decode_utf16(w.iter().copied()) {
        let c = c.ok()?;
        if !c.is_ascii() || n == buf.len() {
            return None;
        }
        buf[n] = c as u8;
        n += 1;
    }
    core::str::from_utf8(&buf[..n]).ok()
}

fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Params {
    /// Defaults, with exclusions compared in `style`.
    #[must_use]
    pub const fn new(style: PathStyle) -> Self {
        Params {
            umc_msg_timeout_ms: DEFAULT_UMC_MSG_TIMEOUT_MS,
            capture_retry_count: connector::DEFAULT_MAX_ATTEMPTS,
            capture_retry_delay_ms: 1000,
            capture_backoff_factor: 1,
            capture_backoff_cap_ms: 60_000,
            host_cid: VMADDR_CID_HOST,
            host_port: DEFAULT_HOST_PORT,
            fail_mode: FailMode::Open,
            debug_level: 2,
            max_scan_size_mb: 0,
            verdict_cache_ttl_ms: 600_000,
            capture_mode: CaptureMode::Deferred,
            vsock_transport: VsockTransport::Auto,
            deny_status: DenyStatus::VirusInfected,
            inline_content: true,
            pinned_policy: 0,
            policy: OpenPolicy::new(style),
        }
    }

    /// Defaults plus every `(name, value)` pair applied in order, with a report
    /// of clamps and rejections.
    pub fn from_values<'a, const N: usize, I>(
        style: PathStyle,
        values: I,
    ) -> (Params, ParamReport<'a, N>)
    where
        I: IntoIterator<Item = (&'a str, RegValue<'a>)>,
    {
        let mut p = Params::new(style);
        let mut report = ParamReport::new();
        for (name, value) in values {
            report.record(name, p.apply(name, value));
        }
        (p, report)
    }

    fn number(value: RegValue<'_>) -> Result<u64, ParamError> {
        match value {
            RegValue::Dword(v) => Ok(u64::from(v)),
            RegValue::Qword(v) => Ok(v),
            RegValue::Sz(s) => parse_number(s).ok_or(ParamError::Invalid),
            RegValue::SzUtf16(w) => {
                let mut buf = [0u8; 24];
                utf16_ascii(w, &mut buf)
                    .and_then(parse_number)
                    .ok_or(ParamError::Invalid)
            }
            other => Err(ParamError::WrongType {
                expected: "REG_DWORD",
                given: other.type_name(),
            }),
        }
    }

    fn bounded(
        field: &'static str,
        value: RegValue<'_>,
        min: u64,
        max: u64,
    ) -> Result<(u32, Applied), ParamError> {
        let v = Self::number(value)?;
        let (used, clamp) = clamp_u64(field, v, min, max);
        Ok((used as u32, clamp.map_or(Applied::Set, Applied::Clamped)))
    }

    /// Applies one raw value. On error the previous value stays.
    pub fn apply(&mut self, name: &str, value: RegValue<'_>) -> Result<Applied, ParamError> {
        let known = names::ALL
            .iter()
            .copied()
            .find(|n| n.eq_ignore_ascii_case(name))
            .ok_or(ParamError::UnknownName)?;
        let set = |slot: &mut u32, r: (u32, Applied)| {
            *slot = r.0;
            Ok(r.1)
        };
        match known {
            names::UMC_MSG_TIMEOUT_MS => set(
                &mut self.umc_msg_timeout_ms,
                Self::bounded(known, value, 100, 60_000)?,
            ),
            names::CAPTURE_RETRY_COUNT => set(
                &mut self.capture_retry_count,
                Self::bounded(
                    known,
                    value,
                    u64::from(connector::MIN_ATTEMPTS),
                    u64::from(connector::MAX_ATTEMPTS),
                )?,
            ),
            names::CAPTURE_RETRY_DELAY_MS => set(
                &mut self.capture_retry_delay_ms,
                Self::bounded(known, value, 1, 60_000)?,
            ),
            names::CAPTURE_BACKOFF_FACTOR => set(
                &mut self.capture_backoff_factor,
                Self::bounded(known, value, 1, u64::from(connector::MAX_BACKOFF_FACTOR))?,
            ),
            names::CAPTURE_BACKOFF_CAP_MS => set(
                &mut self.capture_backoff_cap_ms,
                Self::bounded(known, value, 1, 300_000)?,
            ),
            names::HOST_CID | names::HOST_PORT => {
                let v = Self::number(value)?;
                if v == 0 || v >= u64::from(VMADDR_ANY) {
                    return Err(ParamError::Invalid);
                }
                if known == names::HOST_CID {
                    self.host_cid = v as u32;
                } else {
                    self.host_port = v as u32;
                }
                Ok(Applied::Set)
            }
            names::FAIL_MODE => {
                // The words in UTF-8 (config files) or UTF-16 (the Windows
                // driver's REG_SZ), else a number.
                let mut buf = [0u8; 24];
                let word = match value {
                    RegValue::Sz(s) => Some(s),
                    RegValue::SzUtf16(w) => utf16_ascii(w, &mut buf),
                    _ => None,
                };
                self.fail_mode = match word.map(str::trim) {
                    Some(s) if s.eq_ignore_ascii_case("open") => FailMode::Open,
                    Some(s) if s.eq_ignore_ascii_case("closed") => FailMode::Closed,
                    _ => match Self::number(value)? {
                        0 => FailMode::Open,
                        1 => FailMode::Closed,
                        _ => return Err(ParamError::Invalid),
                    },
                };
                Ok(Applied::Set)
            }
            names::DEBUG_LEVEL => {
                let (v, a) =
                    Self::bounded(known, value, 0, u64::from(LevelFilter::MAX_DEBUG_LEVEL))?;
                self.debug_level = v as u8;
                Ok(a)
            }
            names::MAX_SCAN_SIZE_MB => {
                let r = Self::bounded(known, value, 0, 1_048_576)?;
                self.policy.set_max_file_size(if r.0 == 0 {
                    None
                } else {
                    Some(u64::from(r.0) << 20)
                });
                set(&mut self.max_scan_size_mb, r)
            }
            names::VERDICT_CACHE_TTL_MS => set(
                &mut self.verdict_cache_ttl_ms,
                Self::bounded(known, value, 0, 86_400_000)?,
            ),
            names::CAPTURE_MODE => {
                self.capture_mode = match Self::number(value)? {
                    0 => CaptureMode::Deferred,
                    1 => CaptureMode::Blocking,
                    _ => return Err(ParamError::Invalid),
                };
                Ok(Applied::Set)
            }
            names::VSOCK_TRANSPORT => {
                self.vsock_transport = match Self::number(value)? {
                    0 => VsockTransport::Auto,
                    1 => VsockTransport::Vmci,
                    2 => VsockTransport::Virtio,
                    _ => return Err(ParamError::Invalid),
                };
                Ok(Applied::Set)
            }
            names::DENY_STATUS => {
                self.deny_status = match Self::number(value)? {
                    0 => DenyStatus::VirusInfected,
                    1 => DenyStatus::AccessDenied,
                    _ => return Err(ParamError::Invalid),
                };
                Ok(Applied::Set)
            }
            names::SCAN_KERNEL_OPENS => {
                match Self::number(value)? {
                    0 => self.policy.set_check_kernel_mode(false),
                    1 => self.policy.set_check_kernel_mode(true),
                    _ => return Err(ParamError::Invalid),
                }
                Ok(Applied::Set)
            }
            names::INLINE_CONTENT => {
                self.inline_content = match Self::number(value)? {
                    0 => false,
                    1 => true,
                    _ => return Err(ParamError::Invalid),
                };
                Ok(Applied::Set)
            }
            names::PINNED_POLICY => {
                let v = Self::number(value)?;
                if v > u64::from(PINNED_POLICY_MASK) {
                    return Err(ParamError::Invalid);
                }
                self.pinned_policy = v as u32;
                Ok(Applied::Set)
            }
            names::EXCLUDE_PATHS => self.add_list(value, OpenPolicy::add_excluded_prefix),
            names::EXCLUDE_EXTENSIONS => self.add_list(value, OpenPolicy::add_excluded_extension),
            _ => Err(ParamError::UnknownName),
        }
    }

    fn add_list(
        &mut self,
        value: RegValue<'_>,
        add: fn(&mut OpenPolicy, PathRef<'_>) -> Result<(), PolicyError>,
    ) -> Result<Applied, ParamError> {
        let mut first_err = None;
        let mut each = |p: PathRef<'_>| {
            if !p.is_empty()
                && let Err(e) = add(&mut self.policy, p)
            {
                first_err.get_or_insert(ParamError::Policy(e));
            }
        };
        match value {
            RegValue::Sz(s) | RegValue::MultiSz(s) => {
                s.split('\0').map(PathRef::Utf8).for_each(&mut each)
            }
            RegValue::SzUtf16(w) | RegValue::MultiSzUtf16(w) => {
                w.split(|&u| u == 0).map(PathRef::Utf16).for_each(&mut each)
            }
            other => {
                return Err(ParamError::WrongType {
                    expected: "REG_MULTI_SZ",
                    given: other.type_name(),
                });
            }
        }
        first_err.map_or(Ok(Applied::Set), Err)
    }

    /// The scanner reply timeout.
    #[must_use]
    pub const fn umc_msg_timeout(&self) -> Duration {
        Duration::from_millis(self.umc_msg_timeout_ms as u64)
    }

    /// The timeout as an NT relative time (negative, 100 ns units), as
    /// `KeWaitForSingleObject` takes it: -20000000 for 2000 ms.
    #[must_use]
    pub const fn umc_msg_timeout_100ns(&self) -> i64 {
        -(self.umc_msg_timeout_ms as i64) * 10_000
    }

    /// The capture loop configuration (clamped by [`Connector::new`](crate::Connector::new)).
    #[must_use]
    pub const fn connector_config(&self) -> ConnectorConfig {
        let delay = Duration::from_millis(self.capture_retry_delay_ms as u64);
        ConnectorConfig {
            max_attempts: self.capture_retry_count,
            delay,
            backoff: if self.capture_backoff_factor <= 1 {
                Backoff::Fixed
            } else {
                Backoff::Exponential {
                    factor: self.capture_backoff_factor,
                    cap: Duration::from_millis(self.capture_backoff_cap_ms as u64),
                }
            },
        }
    }

    /// The log filter from `debugLevel`.
    #[must_use]
    pub const fn level_filter(&self) -> LevelFilter {
        LevelFilter::from_debug_level(self.debug_level as u32)
    }

    /// The verdict TTL (`None` when 0).
    #[must_use]
    pub const fn verdict_ttl(&self) -> Option<Duration> {
        if self.verdict_cache_ttl_ms == 0 {
            None
        } else {
            Some(Duration::from_millis(self.verdict_cache_ttl_ms as u64))
        }
    }

    /// Emits the parameter dump at DEBUG level, routine `ReadParams`, one
    /// record per value, starting with the seed's two lines
    /// (`umcMsgTimeoutMs: 2000`, `umcMsgTimeout100Ns: -20000000`).
    pub fn dump(&self, mut emit: impl FnMut(&LogRecord<'_>)) {
        let r = routine::READ_PARAMS;
        let d = Level::Debug;
        emit(&LogRecord::new(
            d,
            r,
            format_args!("{}: {}", names::UMC_MSG_TIMEOUT_MS, self.umc_msg_timeout_ms),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!("umcMsgTimeout100Ns: {}", self.umc_msg_timeout_100ns()),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::CAPTURE_RETRY_COUNT,
                self.capture_retry_count
            ),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::CAPTURE_RETRY_DELAY_MS,
                self.capture_retry_delay_ms
            ),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::CAPTURE_BACKOFF_FACTOR,
                self.capture_backoff_factor
            ),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::CAPTURE_BACKOFF_CAP_MS,
                self.capture_backoff_cap_ms
            ),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!("{}: {}", names::HOST_CID, self.host_cid),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!("{}: {}", names::HOST_PORT, self.host_port),
        ));
        let fm = match self.fail_mode {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        };
        emit(&LogRecord::new(
            d,
            r,
            format_args!("{}: {}", names::FAIL_MODE, fm),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!("{}: {}", names::DEBUG_LEVEL, self.debug_level),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!("{}: {}", names::MAX_SCAN_SIZE_MB, self.max_scan_size_mb),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::VERDICT_CACHE_TTL_MS,
                self.verdict_cache_ttl_ms
            ),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::EXCLUDE_PATHS,
                self.policy.prefixes().count()
            ),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::EXCLUDE_EXTENSIONS,
                self.policy.extensions().count()
            ),
        ));
        let capture_mode = match self.capture_mode {
            CaptureMode::Deferred => "deferred",
            CaptureMode::Blocking => "blocking",
        };
        let transport = match self.vsock_transport {
            VsockTransport::Auto => "auto",
            VsockTransport::Vmci => "vmci",
            VsockTransport::Virtio => "virtio",
        };
        emit(&LogRecord::new(
            d,
            r,
            format_args!("{}: {}", names::CAPTURE_MODE, capture_mode),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!("{}: {}", names::VSOCK_TRANSPORT, transport),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::DENY_STATUS,
                match self.deny_status {
                    DenyStatus::VirusInfected => "STATUS_VIRUS_INFECTED",
                    DenyStatus::AccessDenied => "STATUS_ACCESS_DENIED",
                }
            ),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::SCAN_KERNEL_OPENS,
                u8::from(self.policy.checks_kernel_mode())
            ),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!(
                "{}: {}",
                names::INLINE_CONTENT,
                u8::from(self.inline_content)
            ),
        ));
        emit(&LogRecord::new(
            d,
            r,
            format_args!("{}: {:#x}", names::PINNED_POLICY, self.pinned_policy),
        ));
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::log::parse_line;
    use proptest::prelude::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    #[test]
    fn driver_modes_parse_and_reject_unknown_codes() {
        let mut p = Params::default();
        assert_eq!(p.capture_mode, CaptureMode::Deferred);
        assert_eq!(p.vsock_transport, VsockTransport::Auto);
        assert_eq!(p.deny_status.ntstatus(), NtStatus::STATUS_VIRUS_INFECTED);
        assert!(!p.policy.checks_kernel_mode());
        assert_eq!(p.apply("CAPTUREMODE", RegValue::Dword(1)), Ok(Applied::Set));
        assert_eq!(p.capture_mode, CaptureMode::Blocking);
        assert_eq!(
            p.apply("vsockTransport", RegValue::Dword(2)),
            Ok(Applied::Set)
        );
        assert_eq!(p.vsock_transport, VsockTransport::Virtio);
        assert_eq!(p.apply("denyStatus", RegValue::Sz("1")), Ok(Applied::Set));
        assert_eq!(p.deny_status.ntstatus(), NtStatus::STATUS_ACCESS_DENIED);
        assert_eq!(
            p.apply("scanKernelOpens", RegValue::Dword(1)),
            Ok(Applied::Set)
        );
        assert!(p.policy.checks_kernel_mode());
        assert!(p.inline_content, "inline content is on by default");
        assert_eq!(
            p.apply("InlineContent", RegValue::Dword(0)),
            Ok(Applied::Set)
        );
        assert!(!p.inline_content);
        for name in [
            names::CAPTURE_MODE,
            names::VSOCK_TRANSPORT,
            names::DENY_STATUS,
            names::SCAN_KERNEL_OPENS,
            names::INLINE_CONTENT,
        ] {
            assert_eq!(p.apply(name, RegValue::Dword(3)), Err(ParamError::Invalid));
        }
        // A rejected value keeps the previous one.
        assert_eq!(p.capture_mode, CaptureMode::Blocking);
        assert_eq!(p.vsock_transport, VsockTransport::Virtio);
        assert!(p.policy.checks_kernel_mode());
        assert!(!p.inline_content);
        let mut lines = 0;
        p.dump(|_| lines += 1);
        assert_eq!(
            lines,
            names::ALL.len() + 1,
            "one dump line per parameter plus the 100 ns form"
        );
    }

    #[test]
    fn pinned_policy_is_a_mask_of_the_policy_field_bits() {
        let mut p = Params::default();
        assert_eq!(p.pinned_policy, 0, "nothing pinned by default");
        assert_eq!(
            p.apply("pinnedpolicy", RegValue::Dword(0b10_0101)),
            Ok(Applied::Set)
        );
        assert_eq!(p.pinned_policy, 0b10_0101);
        assert_eq!(
            p.apply(names::PINNED_POLICY, RegValue::Dword(0x40)),
            Err(ParamError::Invalid),
            "bit 6 is no policy field"
        );
        assert_eq!(p.pinned_policy, 0b10_0101, "a rejected value keeps the old");
    }

    #[test]
    fn defaults_and_seed_dump() {
        let p = Params::default();
        assert_eq!(p.umc_msg_timeout_ms, 2000);
        assert_eq!(p.umc_msg_timeout_100ns(), -20_000_000);
        assert_eq!(p.umc_msg_timeout(), Duration::from_secs(2));
        assert_eq!(p.connector_config(), ConnectorConfig::default());
        assert_eq!(
            (p.host_cid, p.host_port, p.fail_mode),
            (2, 5317, FailMode::Open)
        );
        assert_eq!(p.verdict_ttl(), Some(Duration::from_secs(600)));
        let mut lines: Vec<String> = Vec::new();
        p.dump(|r| lines.push(r.to_string()));
        assert_eq!(lines[0], "DEBUG: ReadParams : umcMsgTimeoutMs: 2000");
        assert_eq!(
            lines[1],
            "DEBUG: ReadParams : umcMsgTimeout100Ns: -20000000"
        );
        assert_eq!(lines.len(), names::ALL.len() + 1);
        assert_eq!(lines[17], "DEBUG: ReadParams : scanKernelOpens: 0");
        assert_eq!(lines[18], "DEBUG: ReadParams : inlineContent: 1");
        for l in &lines {
            let parsed = parse_line(l).unwrap();
            assert!(parsed.key_value().is_some(), "{l}");
        }
    }

    #[test]
    fn apply_clamps_rejects_and_reports() {
        let multi = "C:\\Temp\0D:\\Logs\0\0";
        let ext16: Vec<u16> = "log\0tmp\0".encode_utf16().collect();
        let port16: Vec<u16> = "6000".encode_utf16().collect();
        let (p, report) = Params::from_values::<16, _>(
            PathStyle::Windows,
            [
                ("UMCMSGTIMEOUTMS", RegValue::Dword(5)),
                ("captureRetryCount", RegValue::Sz("0x20")),
                ("captureRetryDelayMs", RegValue::Dword(0)),
                ("captureBackoffFactor", RegValue::Dword(2)),
                ("captureBackoffCapMs", RegValue::Qword(10_000)),
                ("hostCid", RegValue::Dword(0)),
                ("hostPort", RegValue::SzUtf16(&port16)),
                ("failMode", RegValue::Sz("Closed")),
                ("debugLevel", RegValue::Dword(9)),
                ("maxScanSizeMb", RegValue::Dword(64)),
                ("excludePaths", RegValue::MultiSz(multi)),
                ("excludeExtensions", RegValue::MultiSzUtf16(&ext16)),
                ("bogus", RegValue::Dword(1)),
                ("umcMsgTimeoutMs", RegValue::MultiSz("x")),
                ("verdictCacheTtlMs", RegValue::Sz("soon")),
            ],
        );
        assert_eq!(p.umc_msg_timeout_ms, 100);
        assert_eq!(p.capture_retry_count, 32);
        assert_eq!(p.capture_retry_delay_ms, 1);
        assert_eq!(
            p.connector_config().backoff,
            Backoff::Exponential {
                factor: 2,
                cap: Duration::from_secs(10)
            }
        );
        assert_eq!(p.host_cid, 2);
        assert_eq!(p.host_port, 6000);
        assert_eq!(p.fail_mode, FailMode::Closed);
        assert_eq!(p.debug_level, 4);
        assert_eq!(p.policy.max_file_size(), Some(64 << 20));
        assert_eq!(p.policy.prefixes().count(), 2);
        assert_eq!(p.policy.extensions().count(), 2);
        let issues: Vec<_> = report.iter().collect();
        assert_eq!(
            issues,
            [
                (
                    "UMCMSGTIMEOUTMS",
                    ParamIssue::Clamped(Clamp {
                        field: "umcMsgTimeoutMs",
                        given: 5,
                        used: 100
                    })
                ),
                (
                    "captureRetryDelayMs",
                    ParamIssue::Clamped(Clamp {
                        field: "captureRetryDelayMs",
                        given: 0,
                        used: 1
                    })
                ),
                ("hostCid", ParamIssue::Rejected(ParamError::Invalid)),
                (
                    "debugLevel",
                    ParamIssue::Clamped(Clamp {
                        field: "debugLevel",
                        given: 9,
                        used: 4
                    })
                ),
                ("bogus", ParamIssue::Rejected(ParamError::UnknownName)),
                (
                    "umcMsgTimeoutMs",
                    ParamIssue::Rejected(ParamError::WrongType {
                        expected: "REG_DWORD",
                        given: "REG_MULTI_SZ"
                    })
                ),
                (
                    "verdictCacheTtlMs",
                    ParamIssue::Rejected(ParamError::Invalid)
                ),
            ]
        );
        assert_eq!(ParamError::UnknownName.to_string(), "unknown parameter");
        let mut q = Params::default();
        assert_eq!(
            q.apply("failMode", RegValue::Dword(7)),
            Err(ParamError::Invalid)
        );
        assert_eq!(
            q.apply("verdictCacheTtlMs", RegValue::Dword(0)),
            Ok(Applied::Set)
        );
        assert_eq!(q.verdict_ttl(), None);
        assert_eq!(
            q.apply("maxScanSizeMb", RegValue::Dword(0)),
            Ok(Applied::Set)
        );
        assert_eq!(q.policy.max_file_size(), None);
        assert!(matches!(
            q.apply("excludePaths", RegValue::Dword(1)),
            Err(ParamError::WrongType {
                expected: "REG_MULTI_SZ",
                ..
            })
        ));
    }

    #[test]
    fn report_is_bounded() {
        let vals = (0..5).map(|_| ("nope", RegValue::Dword(0)));
        let (_, r) = Params::from_values::<2, _>(PathStyle::Posix, vals);
        assert_eq!((r.len(), r.dropped()), (2, 3));
        assert!(!r.is_empty());
    }

    proptest! {
        #[test]
        fn numeric_params_always_in_bounds(idx in 0usize..11, v: u64) {
            let mut p = Params::default();
            let _ = p.apply(names::ALL[idx], RegValue::Qword(v));
            prop_assert!((100..=60_000).contains(&p.umc_msg_timeout_ms));
            prop_assert!((1..=10_000).contains(&p.capture_retry_count));
            prop_assert!((1..=60_000).contains(&p.capture_retry_delay_ms));
            prop_assert!((1..=16).contains(&p.capture_backoff_factor));
            prop_assert!(p.debug_level <= 4);
            prop_assert!(p.host_cid != 0 && p.host_cid != VMADDR_ANY);
            prop_assert!(p.host_port != 0 && p.host_port != VMADDR_ANY);
            prop_assert_eq!(p.umc_msg_timeout_100ns(), -i64::from(p.umc_msg_timeout_ms) * 10_000);
            // the connector accepts whatever Params produces (cap may be raised to the delay)
            let (_, clamps) = p.connector_config().clamped();
            prop_assert!(clamps.iter().all(|c| c.field == names::CAPTURE_BACKOFF_CAP_MS));
        }
    }
}
