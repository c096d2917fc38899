//! The control device's ABI: what the driver's `\Device\ThinAgent` accepts
//! and returns, shared by the driver (which serves it) and
//! `thinagent-diag agent-state` (which asks).
//!
//! * Names: the kernel device [`DEVICE_NAME`], its symbolic link
//!   [`DOS_DEVICE_NAME`], and the path user mode opens, [`WIN32_PATH`].
//! * Access: the device's DACL grants [`DEVICE_ACCESS_MASK`] to SYSTEM and
//!   the Administrators group and nobody else, so only an elevated process
//!   can open it.
//! * Requests (`DeviceIoControl`), both `METHOD_BUFFERED` with the vendor
//!   device type [`FILE_DEVICE_THINAGENT`]:
//!   - [`IOCTL_THINAGENT_GET_STATE`] (`FILE_READ_ACCESS`): no input; the
//!     output buffer receives an [`AgentState`] ([`AgentState::SIZE`] bytes).
//!   - [`IOCTL_THINAGENT_SET_DEBUG_LEVEL`] (`FILE_WRITE_ACCESS`): input one
//!     little-endian `u32` in `0..=4` (the `debugLevel` parameter's range);
//!     no output.
//!
//! [`ControlRequest::parse`] is the whole validation both ends agree on; the
//! driver only copies bytes and completes the IRP with
//! [`ControlError::ntstatus`] on failure.
//!
//! [`AgentState`] has a fixed little-endian layout with a size + version
//! header. Later versions may only **append** fields and raise both; a
//! reader decodes the fields it knows from any version ≥ 1 and ignores the
//! rest, so an older `thinagent-diag` still reads a newer driver.

use core::fmt;

use crate::log::LevelFilter;
use crate::params::FailMode;
use crate::status::NtStatus;

/// Kernel name of the control device (`IoCreateDevice*` `DeviceName`).
pub const DEVICE_NAME: &str = r"\Device\ThinAgent";
/// Symbolic link to it (`IoCreateSymbolicLink`): `\DosDevices\` is
/// `\??\`, so user mode reaches it as [`WIN32_PATH`].
pub const DOS_DEVICE_NAME: &str = r"\DosDevices\ThinAgent";
/// The path user mode passes to `CreateFileW`.
pub const WIN32_PATH: &str = r"\\.\ThinAgent";

/// The access the control device's DACL grants, `FILE_ALL_ACCESS`
/// (`winnt.h`: 0x001F01FF), in two access-allowed ACEs: one for the built-in
/// Administrators group (S-1-5-32-544), one for LocalSystem (S-1-5-18);
/// nobody else has an ACE, so nobody else gets in. The driver builds that
/// descriptor with `FltBuildDefaultSecurityDescriptor(&sd, DEVICE_ACCESS_MASK)`
/// (fltmgr.sys: "only users with system or administrator privileges have
/// access") and puts its DACL on the device (`ZwSetSecurityObject`) before
/// the device has a link or can be opened. In SDDL: `D:(A;;FA;;;BA)(A;;FA;;;SY)`.
///
/// It includes `FILE_READ_DATA` and `FILE_WRITE_DATA`, the rights the I/O
/// manager checks on the handle for [`IOCTL_THINAGENT_GET_STATE`]
/// (`FILE_READ_ACCESS`) and [`IOCTL_THINAGENT_SET_DEBUG_LEVEL`]
/// (`FILE_WRITE_ACCESS`).
pub const DEVICE_ACCESS_MASK: u32 = 0x001F_01FF;

/// Our `DEVICE_TYPE`: in the vendor range (`0x8000..=0xFFFF`; values below
/// are Microsoft's, `devioctl.h`).
pub const FILE_DEVICE_THINAGENT: u32 = 0x8A1E;

/// `METHOD_BUFFERED` (`devioctl.h`): input and output share one system buffer.
pub const METHOD_BUFFERED: u32 = 0;
/// `FILE_READ_ACCESS` (`devioctl.h`): the handle needs read access.
pub const FILE_READ_ACCESS: u32 = 1;
/// `FILE_WRITE_ACCESS` (`devioctl.h`): the handle needs write access.
pub const FILE_WRITE_ACCESS: u32 = 2;

/// `CTL_CODE(DeviceType, Function, Method, Access)` (`devioctl.h`):
/// `(DeviceType << 16) | (Access << 14) | (Function << 2) | Method`.
#[must_use]
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// Read the agent's state: `CTL_CODE(0x8A1E, 0x800, METHOD_BUFFERED,
/// FILE_READ_ACCESS)` = `0x8A1E6000`. Functions from 0x800 up are the
/// vendor's.
pub const IOCTL_THINAGENT_GET_STATE: u32 = ctl_code(
    FILE_DEVICE_THINAGENT,
    0x800,
    METHOD_BUFFERED,
    FILE_READ_ACCESS,
);
/// Set the live `debugLevel`: `CTL_CODE(0x8A1E, 0x801, METHOD_BUFFERED,
/// FILE_WRITE_ACCESS)` = `0x8A1EA004`.
pub const IOCTL_THINAGENT_SET_DEBUG_LEVEL: u32 = ctl_code(
    FILE_DEVICE_THINAGENT,
    0x801,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);

/// A validated control request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    /// Fill the output buffer with an [`AgentState`].
    GetState,
    /// Set `debugLevel` to this value (`0..=4`).
    SetDebugLevel(u8),
}

/// Why a control request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// Not one of our IOCTL codes.
    UnknownCode(u32),
    /// The output buffer cannot hold the reply.
    OutputTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// The input is not a 4-byte little-endian level.
    BadInputLength(usize),
    /// The level is above [`LevelFilter::MAX_DEBUG_LEVEL`].
    LevelOutOfRange(u32),
}

impl ControlError {
    /// The status the driver completes the IRP with.
    #[must_use]
    pub const fn ntstatus(self) -> NtStatus {
        match self {
            ControlError::UnknownCode(_) => NtStatus::STATUS_INVALID_DEVICE_REQUEST,
            ControlError::OutputTooSmall { .. } => NtStatus::STATUS_BUFFER_TOO_SMALL,
            ControlError::BadInputLength(_) | ControlError::LevelOutOfRange(_) => {
                NtStatus::STATUS_INVALID_PARAMETER
            }
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::UnknownCode(c) => write!(f, "unknown control code {c:#010X}"),
            ControlError::OutputTooSmall { need, got } => {
                write!(f, "output buffer of {got} bytes, {need} needed")
            }
            ControlError::BadInputLength(n) => {
                write!(f, "debug level input of {n} bytes, 4 expected")
            }
            ControlError::LevelOutOfRange(l) => write!(
                f,
                "debug level {l} out of range 0..={}",
                LevelFilter::MAX_DEBUG_LEVEL
            ),
        }
    }
}

impl core::error::Error for ControlError {}

impl ControlRequest {
    /// Validates one `IRP_MJ_DEVICE_CONTROL` request: its code, its input
    /// bytes and the output buffer's length.
    pub fn parse(code: u32, input: &[u8], output_len: usize) -> Result<Self, ControlError> {
        match code {
            IOCTL_THINAGENT_GET_STATE => {
                if output_len < AgentState::SIZE {
                    Err(ControlError::OutputTooSmall {
                        need: AgentState::SIZE,
                        got: output_len,
                    })
                } else {
                    Ok(ControlRequest::GetState)
                }
            }
            IOCTL_THINAGENT_SET_DEBUG_LEVEL => {
                let bytes: [u8; 4] = input
                    .try_into()
                    .map_err(|_| ControlError::BadInputLength(input.len()))?;
                let level = u32::from_le_bytes(bytes);
                if level > u32::from(LevelFilter::MAX_DEBUG_LEVEL) {
                    return Err(ControlError::LevelOutOfRange(level));
                }
                Ok(ControlRequest::SetDebugLevel(level as u8))
            }
            other => Err(ControlError::UnknownCode(other)),
        }
    }

    /// The input bytes of a set-debug-level request (what user mode sends).
    #[must_use]
    pub const fn debug_level_input(level: u8) -> [u8; 4] {
        (level as u32).to_le_bytes()
    }
}

/// The agent's state as the control device reports it. Counters are since
/// load; statuses are raw NTSTATUS values (0 = none yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentState {
    /// A session with the host scanner is established.
    pub connected: bool,
    /// The vSockets provider is captured.
    pub provider_captured: bool,
    /// Capture attempts made so far.
    pub capture_attempts: u32,
    /// Status of the latest capture attempt.
    pub last_capture_status: NtStatus,
    /// Sessions established since load.
    pub sessions: u32,
    /// Status of the latest failed connect or session end.
    pub last_session_status: NtStatus,
    /// Verdict queries sent to the host.
    pub queries: u64,
    /// Opens denied (host verdict or fail mode).
    pub denials: u64,
    /// Queries decided by the `umcMsgTimeoutMs` deadline.
    pub timeouts: u64,
    /// Opens decided by the fail mode because no session was up.
    pub fail_mode_decisions: u64,
    /// Opens answered from the verdict cache.
    pub cache_hits: u64,
    /// Opens the policy skipped.
    pub skipped: u64,
    /// Host read requests served.
    pub read_requests: u64,
    /// Streams rescanned at cleanup after a modification.
    pub rescans: u64,
    /// The live `debugLevel` (0..=4).
    pub debug_level: u8,
    /// The configured `failMode`.
    pub fail_mode: FailMode,
}

/// Why bytes are not an [`AgentState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateDecodeError {
    /// Fewer bytes than the version-1 layout.
    TooShort(usize),
    /// The header's size is smaller than version 1's or larger than the
    /// bytes received.
    BadSize {
        /// The header's size field.
        declared: u32,
        /// Bytes received.
        received: usize,
    },
    /// Version 0 is not a version.
    BadVersion(u32),
    /// `failMode` is not 0 or 1.
    BadFailMode(u32),
}

impl fmt::Display for StateDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateDecodeError::TooShort(n) => write!(
                f,
                "agent state of {n} bytes, at least {} expected",
                AgentState::SIZE
            ),
            StateDecodeError::BadSize { declared, received } => write!(
                f,
                "agent state header says {declared} bytes, {received} received"
            ),
            StateDecodeError::BadVersion(v) => write!(f, "agent state version {v} is invalid"),
            StateDecodeError::BadFailMode(m) => write!(f, "agent state fail mode {m} is invalid"),
        }
    }
}

impl core::error::Error for StateDecodeError {}

// Byte offsets of the version-1 layout (all little-endian).
const OFF_SIZE: usize = 0; // u32: bytes of the whole structure
const OFF_VERSION: usize = 4; // u32
const OFF_FLAGS: usize = 8; // u32: bit 0 connected, bit 1 provider captured
const OFF_CAPTURE_ATTEMPTS: usize = 12; // u32
const OFF_LAST_CAPTURE_STATUS: usize = 16; // u32 (NTSTATUS bits)
const OFF_SESSIONS: usize = 20; // u32
const OFF_LAST_SESSION_STATUS: usize = 24; // u32
const OFF_DEBUG_LEVEL: usize = 28; // u32
const OFF_FAIL_MODE: usize = 32; // u32: 0 open, 1 closed
// 36: u32 reserved, written 0
const OFF_QUERIES: usize = 40; // u64, then seven more u64 counters
const FLAG_CONNECTED: u32 = 1;
const FLAG_PROVIDER_CAPTURED: u32 = 2;

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl AgentState {
    /// Layout version written by this crate.
    pub const VERSION: u32 = 1;
    /// Bytes of the version-1 layout: a 40-byte header of `u32`s (size,
    /// version, flags, capture attempts, last capture status, sessions, last
    /// session status, debug level, fail mode, reserved) and eight `u64`
    /// counters (queries, denials, timeouts, fail-mode decisions, cache hits,
    /// skipped, read requests, rescans): 40 + 64 = 104.
    pub const SIZE: usize = 104;

    fn counters(&self) -> [u64; 8] {
        [
            self.queries,
            self.denials,
            self.timeouts,
            self.fail_mode_decisions,
            self.cache_hits,
            self.skipped,
            self.read_requests,
            self.rescans,
        ]
    }

    /// Writes the version-1 layout into `out[..SIZE]`. Returns the bytes
    /// written, or `None` if `out` is shorter than [`AgentState::SIZE`].
    pub fn write_to(&self, out: &mut [u8]) -> Option<usize> {
        let out = out.get_mut(..Self::SIZE)?;
        out.fill(0);
        put_u32(out, OFF_SIZE, Self::SIZE as u32);
        put_u32(out, OFF_VERSION, Self::VERSION);
        let flags = if self.connected { FLAG_CONNECTED } else { 0 }
            | if self.provider_captured {
                FLAG_PROVIDER_CAPTURED
            } else {
                0
            };
        put_u32(out, OFF_FLAGS, flags);
        put_u32(out, OFF_CAPTURE_ATTEMPTS, self.capture_attempts);
        put_u32(out, OFF_LAST_CAPTURE_STATUS, self.last_capture_status.0);
        put_u32(out, OFF_SESSIONS, self.sessions);
        put_u32(out, OFF_LAST_SESSION_STATUS, self.last_session_status.0);
        put_u32(out, OFF_DEBUG_LEVEL, u32::from(self.debug_level));
        let fm = match self.fail_mode {
            FailMode::Open => 0,
            FailMode::Closed => 1,
        };
        put_u32(out, OFF_FAIL_MODE, fm);
        for (i, c) in self.counters().into_iter().enumerate() {
            put_u64(out, OFF_QUERIES + 8 * i, c);
        }
        Some(Self::SIZE)
    }

    /// The version-1 layout as an array.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let _ = self.write_to(&mut out);
        out
    }

    /// Decodes a state from the bytes the device returned (any version ≥ 1
    /// whose size is at least version 1's; fields appended by later versions
    /// are ignored).
    pub fn from_bytes(b: &[u8]) -> Result<Self, StateDecodeError> {
        if b.len() < Self::SIZE {
            return Err(StateDecodeError::TooShort(b.len()));
        }
        let declared = get_u32(b, OFF_SIZE);
        if (declared as usize) < Self::SIZE || declared as usize > b.len() {
            return Err(StateDecodeError::BadSize {
                declared,
                received: b.len(),
            });
        }
        let version = get_u32(b, OFF_VERSION);
        if version == 0 {
            return Err(StateDecodeError::BadVersion(version));
        }
        let fail_mode = match get_u32(b, OFF_FAIL_MODE) {
            0 => FailMode::Open,
            1 => FailMode::Closed,
            other => return Err(StateDecodeError::BadFailMode(other)),
        };
        let flags = get_u32(b, OFF_FLAGS);
        let c = |i: usize| get_u64(b, OFF_QUERIES + 8 * i);
        Ok(AgentState {
            connected: flags & FLAG_CONNECTED != 0,
            provider_captured: flags & FLAG_PROVIDER_CAPTURED != 0,
            capture_attempts: get_u32(b, OFF_CAPTURE_ATTEMPTS),
            last_capture_status: NtStatus(get_u32(b, OFF_LAST_CAPTURE_STATUS)),
            sessions: get_u32(b, OFF_SESSIONS),
            last_session_status: NtStatus(get_u32(b, OFF_LAST_SESSION_STATUS)),
            // A wider value than u8 means a corrupt reply; keep it visible
            // rather than wrapping.
            debug_level: u8::try_from(get_u32(b, OFF_DEBUG_LEVEL)).unwrap_or(u8::MAX),
            fail_mode,
            queries: c(0),
            denials: c(1),
            timeouts: c(2),
            fail_mode_decisions: c(3),
            cache_hits: c(4),
            skipped: c(5),
            read_requests: c(6),
            rescans: c(7),
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    fn sample() -> AgentState {
        AgentState {
            connected: true,
            provider_captured: true,
            capture_attempts: 7,
            last_capture_status: NtStatus::STATUS_DEVICE_BUSY,
            sessions: 2,
            last_session_status: NtStatus::STATUS_CONNECTION_RESET,
            queries: 1000,
            denials: 3,
            timeouts: 4,
            fail_mode_decisions: 5,
            cache_hits: 600,
            skipped: 7000,
            read_requests: 80,
            rescans: 9,
            debug_level: 4,
            fail_mode: FailMode::Closed,
        }
    }

    #[test]
    fn ioctl_codes_are_the_documented_values() {
        assert_eq!(IOCTL_THINAGENT_GET_STATE, 0x8A1E_6000);
        assert_eq!(IOCTL_THINAGENT_SET_DEBUG_LEVEL, 0x8A1E_A004);
        // Vendor range, buffered, the access each needs.
        for (code, access) in [
            (IOCTL_THINAGENT_GET_STATE, FILE_READ_ACCESS),
            (IOCTL_THINAGENT_SET_DEBUG_LEVEL, FILE_WRITE_ACCESS),
        ] {
            assert!(code >> 16 >= 0x8000);
            assert_eq!(code & 3, METHOD_BUFFERED);
            assert_eq!((code >> 14) & 3, access);
            assert!((code >> 2) & 0xFFF >= 0x800);
        }
        // CTL_CODE against a code winioctl.h publishes:
        // FSCTL_GET_REPARSE_POINT = CTL_CODE(0x9, 42, 0, 0) = 0x000900A8.
        assert_eq!(ctl_code(0x9, 42, 0, 0), 0x0009_00A8);
    }

    #[test]
    fn names_are_consistent() {
        assert!(DEVICE_NAME.ends_with(r"\ThinAgent"));
        assert!(DOS_DEVICE_NAME.ends_with(r"\ThinAgent"));
        assert!(WIN32_PATH.ends_with(r"\ThinAgent"));
        assert!(WIN32_PATH.starts_with(r"\\.\"));
    }

    #[test]
    fn device_access_mask_opens_both_ioctls() {
        // FILE_ALL_ACCESS = STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | 0x1FF.
        assert_eq!(DEVICE_ACCESS_MASK, 0x000F_0000 | 0x0010_0000 | 0x1FF);
        // The I/O manager requires FILE_READ_DATA (1) for FILE_READ_ACCESS
        // and FILE_WRITE_DATA (2) for FILE_WRITE_ACCESS, the code's bits 15..14.
        for code in [IOCTL_THINAGENT_GET_STATE, IOCTL_THINAGENT_SET_DEBUG_LEVEL] {
            let access = (code >> 14) & 3;
            assert_ne!(access, 0, "{code:#x}");
            assert_eq!(DEVICE_ACCESS_MASK & access, access, "{code:#x}");
        }
        // Not FLT_PORT_ALL_ACCESS (FLT_PORT_CONNECT | STANDARD_RIGHTS_ALL),
        // which lacks FILE_WRITE_DATA.
        assert_eq!(0x001F_0001 & FILE_WRITE_ACCESS, 0);
        // No generic bits: the ACEs hold specific rights.
        assert_eq!(DEVICE_ACCESS_MASK & 0xF000_0000, 0);
    }

    #[test]
    fn layout_is_fixed_little_endian() {
        let b = sample().to_bytes();
        assert_eq!(b.len(), 104);
        assert_eq!(&b[0..4], &104u32.to_le_bytes());
        assert_eq!(&b[4..8], &1u32.to_le_bytes());
        assert_eq!(&b[8..12], &3u32.to_le_bytes()); // both flags
        assert_eq!(&b[12..16], &7u32.to_le_bytes());
        assert_eq!(&b[16..20], &0x8000_0011u32.to_le_bytes());
        assert_eq!(&b[20..24], &2u32.to_le_bytes());
        assert_eq!(&b[24..28], &0xC000_020Du32.to_le_bytes());
        assert_eq!(&b[28..32], &4u32.to_le_bytes());
        assert_eq!(&b[32..36], &1u32.to_le_bytes());
        assert_eq!(&b[36..40], &[0; 4]);
        assert_eq!(&b[40..48], &1000u64.to_le_bytes());
        assert_eq!(&b[96..104], &9u64.to_le_bytes());
    }

    #[test]
    fn round_trip_and_defaults() {
        let s = sample();
        assert_eq!(AgentState::from_bytes(&s.to_bytes()), Ok(s));
        let d = AgentState::default();
        assert_eq!(AgentState::from_bytes(&d.to_bytes()), Ok(d));
    }

    #[test]
    fn write_to_needs_the_whole_size() {
        let mut small = [0u8; 103];
        assert_eq!(sample().write_to(&mut small), None);
        let mut big = [0xAAu8; 200];
        assert_eq!(sample().write_to(&mut big), Some(104));
        assert!(big[104..].iter().all(|&b| b == 0xAA), "nothing past SIZE");
    }

    #[test]
    fn decode_rejects_bad_input() {
        let b = sample().to_bytes();
        assert_eq!(
            AgentState::from_bytes(&b[..50]),
            Err(StateDecodeError::TooShort(50))
        );
        let mut bad = b;
        bad[0..4].copy_from_slice(&200u32.to_le_bytes());
        assert_eq!(
            AgentState::from_bytes(&bad),
            Err(StateDecodeError::BadSize {
                declared: 200,
                received: 104
            })
        );
        let mut bad = b;
        bad[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            AgentState::from_bytes(&bad),
            Err(StateDecodeError::BadVersion(0))
        );
        let mut bad = b;
        bad[32..36].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            AgentState::from_bytes(&bad),
            Err(StateDecodeError::BadFailMode(7))
        );
    }

    #[test]
    fn a_newer_version_with_appended_fields_still_decodes() {
        let mut v2 = std::vec::Vec::from(sample().to_bytes());
        v2.extend_from_slice(&[0x55; 16]);
        v2[0..4].copy_from_slice(&120u32.to_le_bytes());
        v2[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(AgentState::from_bytes(&v2), Ok(sample()));
    }

    #[test]
    fn requests_are_validated() {
        assert_eq!(
            ControlRequest::parse(IOCTL_THINAGENT_GET_STATE, &[], 104),
            Ok(ControlRequest::GetState)
        );
        let e = ControlRequest::parse(IOCTL_THINAGENT_GET_STATE, &[], 16).unwrap_err();
        assert_eq!(e, ControlError::OutputTooSmall { need: 104, got: 16 });
        assert_eq!(e.ntstatus(), NtStatus::STATUS_BUFFER_TOO_SMALL);
        for level in 0..=4u8 {
            assert_eq!(
                ControlRequest::parse(
                    IOCTL_THINAGENT_SET_DEBUG_LEVEL,
                    &ControlRequest::debug_level_input(level),
                    0
                ),
                Ok(ControlRequest::SetDebugLevel(level))
            );
        }
        let e = ControlRequest::parse(IOCTL_THINAGENT_SET_DEBUG_LEVEL, &5u32.to_le_bytes(), 0)
            .unwrap_err();
        assert_eq!(e, ControlError::LevelOutOfRange(5));
        assert_eq!(e.ntstatus(), NtStatus::STATUS_INVALID_PARAMETER);
        assert_eq!(
            ControlRequest::parse(IOCTL_THINAGENT_SET_DEBUG_LEVEL, &[1, 0], 0),
            Err(ControlError::BadInputLength(2))
        );
        let e = ControlRequest::parse(0x8103_20C0, &[], 104).unwrap_err();
        assert_eq!(e.ntstatus(), NtStatus::STATUS_INVALID_DEVICE_REQUEST);
        assert_eq!(std::format!("{e}"), "unknown control code 0x810320C0");
    }

    proptest! {
        #[test]
        fn any_state_round_trips(
            flags in 0u8..4, attempts: u32, cap: u32, sessions: u32, sess: u32,
            counters in proptest::array::uniform8(any::<u64>()),
            level in 0u8..=4, closed: bool,
        ) {
            let s = AgentState {
                connected: flags & 1 != 0,
                provider_captured: flags & 2 != 0,
                capture_attempts: attempts,
                last_capture_status: NtStatus(cap),
                sessions,
                last_session_status: NtStatus(sess),
                queries: counters[0],
                denials: counters[1],
                timeouts: counters[2],
                fail_mode_decisions: counters[3],
                cache_hits: counters[4],
                skipped: counters[5],
                read_requests: counters[6],
                rescans: counters[7],
                debug_level: level,
                fail_mode: if closed { FailMode::Closed } else { FailMode::Open },
            };
            prop_assert_eq!(AgentState::from_bytes(&s.to_bytes()), Ok(s));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = AgentState::from_bytes(&b);
        }
    }
}
