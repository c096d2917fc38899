//! The host actions of protocol version 2 (`docs/protocol.md` §14):
//! `Remediate`, `ActionResult`, `ScanTree`, `ScanProgress`, `ScanDone`,
//! `ScanCancel`, `Policy`, `Restore`, `RestoreData` and `Health`.
//!
//! None of them exists in version 1: the decoder reports their types as
//! unknown in a version-1 frame, and the encoder refuses them
//! ([`PayloadError::NotInVersion`]).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::message::Codec;
use crate::messages::file_event::{FileIdentity, FilePath, PathEncoding};
use crate::messages::read::{ErrorSpace, OsError};
use crate::wire::{self, Writer};
use crate::wire_enum::wire_enum;
use crate::{HOST_ACTIONS_VERSION, PayloadError};

/// Every message of this module needs version 2.
fn check_host_action_version(version: u16) -> Result<(), PayloadError> {
    if version >= HOST_ACTIONS_VERSION {
        Ok(())
    } else {
        Err(PayloadError::NotInVersion {
            field: "msg_type",
            version,
        })
    }
}

/// The error of a result from its wire fields: present exactly when the
/// status is a failure (`failed`), §14.3 and §14.5.
fn error_from_wire(failed: bool, space: u8, code: u32) -> Result<Option<OsError>, PayloadError> {
    let error = match ErrorSpace::decode(space)? {
        ErrorSpace::None => {
            wire::reserved(code.into(), "error_code")?;
            None
        }
        ErrorSpace::NtStatus => Some(OsError::NtStatus(code)),
        ErrorSpace::Errno => Some(OsError::Errno(code)),
    };
    check_error_matches(failed, error)?;
    Ok(error)
}

fn check_error_matches(failed: bool, error: Option<OsError>) -> Result<(), PayloadError> {
    match (failed, error) {
        (true, None) => Err(PayloadError::UnknownValue {
            field: "error_space",
            value: 0,
        }),
        (false, Some(e)) => Err(PayloadError::OutOfRange {
            field: "error_space",
            value: match e {
                OsError::NtStatus(_) => 1,
                OsError::Errno(_) => 2,
            },
        }),
        _ => Ok(()),
    }
}

fn deadline(deadline_ms: u32) -> Result<(), PayloadError> {
    if deadline_ms == 0 {
        Err(PayloadError::OutOfRange {
            field: "deadline_ms",
            value: 0,
        })
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------- Remediate

wire_enum! {
    /// What `Remediate` does to the file (§14.2).
    pub enum RemediateAction: u8, field = "action" {
        /// Remove the file's name.
        Delete = 1,
        /// Set the file's size to 0; the name stays.
        Truncate = 2,
    }
}

/// Host → guest (§14.2): remove or empty the file at `path`, only if it
/// still has the identity `file` the host judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remediate<'a> {
    /// What to do.
    pub action: RemediateAction,
    /// The host stops waiting after this many milliseconds, ≥ 1.
    pub deadline_ms: u32,
    /// The identity the host judged (the fields of its `FileEvent`).
    pub file: FileIdentity,
    /// The file's path, as in its `FileEvent`.
    pub path: FilePath<'a>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RemediateWire {
    action: u8,
    path_encoding: u8,
    path_len: U16,
    deadline_ms: U32,
    volume_serial: U64,
    file_id: [u8; 16],
    file_size: U64,
    last_write_time: U64,
}

/// Size of `Remediate`'s fixed part.
pub const REMEDIATE_FIXED_LEN: usize = 48;
const _: () = assert!(size_of::<RemediateWire>() == REMEDIATE_FIXED_LEN);

impl<'a> Codec<'a> for Remediate<'a> {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let (w, path) = wire::split_fixed::<RemediateWire>(payload)?;
        wire::expect_len(payload, REMEDIATE_FIXED_LEN + usize::from(w.path_len.get()))?;
        let m = Remediate {
            action: RemediateAction::decode(w.action)?,
            deadline_ms: w.deadline_ms.get(),
            file: FileIdentity {
                volume_serial: w.volume_serial.get(),
                file_id: w.file_id,
                size: w.file_size.get(),
                last_write_time: w.last_write_time.get(),
            },
            path: FilePath::from_wire(PathEncoding::decode(w.path_encoding)?, path)?,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        deadline(self.deadline_ms)?;
        self.path.validate()
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        REMEDIATE_FIXED_LEN.saturating_add(self.path.as_bytes().len())
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = RemediateWire {
            action: self.action.to_wire(),
            path_encoding: self.path.encoding().to_wire(),
            path_len: wire::len_u16(self.path.as_bytes().len()).into(),
            deadline_ms: self.deadline_ms.into(),
            volume_serial: self.file.volume_serial.into(),
            file_id: self.file.file_id,
            file_size: self.file.size.into(),
            last_write_time: self.file.last_write_time.into(),
        };
        w.put(fixed.as_bytes());
        w.put(self.path.as_bytes());
    }
}

// ------------------------------------------------------------- ActionResult

wire_enum! {
    /// The `status` of an `ActionResult` (§14.3).
    pub enum ActionStatus: u8, field = "status" {
        /// Done as asked.
        Done = 1,
        /// `Remediate(Delete)`: the name goes when the file's last handle closes.
        DoneOnClose = 2,
        /// Nothing at the path.
        NotFound = 3,
        /// The file at the path is not the one named (for `Restore`: a file exists).
        Changed = 4,
        /// The action failed; the result carries the OS error.
        Failed = 5,
        /// The guest lacks the capability.
        Unsupported = 6,
        /// The guest cannot take the request now.
        Busy = 7,
        /// The request breaks a rule the decoder cannot check.
        Rejected = 8,
    }
}

/// Guest → host (§14.3): the one answer to a `Remediate`, `Policy` or
/// `Restore`; the header's request id is the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionResult {
    /// What happened.
    pub status: ActionStatus,
    /// The OS error: `Some` exactly when `status` is `Failed`.
    pub error: Option<OsError>,
    /// `Policy`: the version in effect; `Restore`: bytes written; else 0.
    pub value: u64,
    /// `Policy`: the `fields` bits pinned locally and not applied; else 0.
    pub pinned: u32,
}

impl ActionResult {
    /// A result with this status and nothing else (no error, value 0).
    pub const fn status(status: ActionStatus) -> Self {
        Self {
            status,
            error: None,
            value: 0,
            pinned: 0,
        }
    }

    /// A `Failed` result carrying `error`.
    pub const fn failed(error: OsError) -> Self {
        Self {
            status: ActionStatus::Failed,
            error: Some(error),
            value: 0,
            pinned: 0,
        }
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ActionResultWire {
    status: u8,
    error_space: u8,
    reserved0: U16,
    error_code: U32,
    value: U64,
    pinned: U32,
    reserved1: U32,
}

/// Size of `ActionResult`'s payload.
pub const ACTION_RESULT_LEN: usize = 24;
const _: () = assert!(size_of::<ActionResultWire>() == ACTION_RESULT_LEN);

impl<'a> Codec<'a> for ActionResult {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let w = wire::exact_fixed::<ActionResultWire>(payload)?;
        wire::reserved(w.reserved0.get().into(), "reserved")?;
        wire::reserved(w.reserved1.get().into(), "reserved")?;
        let status = ActionStatus::decode(w.status)?;
        let m = ActionResult {
            status,
            error: error_from_wire(
                status == ActionStatus::Failed,
                w.error_space,
                w.error_code.get(),
            )?,
            value: w.value.get(),
            pinned: w.pinned.get(),
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        check_error_matches(self.status == ActionStatus::Failed, self.error)?;
        if self.pinned & !PolicyFields::ALL.0 != 0 {
            return Err(PayloadError::ReservedNonZero { field: "pinned" });
        }
        Ok(())
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        ACTION_RESULT_LEN
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let (space, code) = OsError::to_wire(self.error);
        let fixed = ActionResultWire {
            status: self.status.to_wire(),
            error_space: space.to_wire(),
            reserved0: 0.into(),
            error_code: code.into(),
            value: self.value.into(),
            pinned: self.pinned.into(),
            reserved1: 0.into(),
        };
        w.put(fixed.as_bytes());
    }
}

// ----------------------------------------------------------------- ScanTree

/// `ScanTree.flags` (§14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScanFlags(pub u32);

impl ScanFlags {
    /// Enter other volumes and mount points.
    pub const CROSS_MOUNTS: Self = Self(1 << 0);
    /// Also judge files the guest's exclusions skip.
    pub const INCLUDE_EXCLUDED: Self = Self(1 << 1);
    /// Every defined bit; the others are reserved.
    pub const ALL: Self = Self(0b11);

    /// `true` when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits of both.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Host → guest (§14.4): judge every regular file under `root` (or `root`
/// itself when it is a file) as `OnDemand` events. The header's request id
/// is the scan id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanTree<'a> {
    /// How to walk.
    pub flags: ScanFlags,
    /// Most `OnDemand` events of this scan outstanding at once, ≥ 1.
    pub max_in_flight: u16,
    /// Directory levels below the root to enter; 0 = unlimited.
    pub max_depth: u16,
    /// `ScanProgress` at most this often, in ms; 0 = never.
    pub progress_interval_ms: u32,
    /// Larger files are skipped; 0 = no limit of the scan's own.
    pub max_file_size: u64,
    /// The root of the walk.
    pub root: FilePath<'a>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ScanTreeWire {
    flags: U32,
    max_in_flight: U16,
    max_depth: U16,
    progress_interval_ms: U32,
    path_encoding: u8,
    reserved: u8,
    path_len: U16,
    max_file_size: U64,
}

/// Size of `ScanTree`'s fixed part.
pub const SCAN_TREE_FIXED_LEN: usize = 24;
const _: () = assert!(size_of::<ScanTreeWire>() == SCAN_TREE_FIXED_LEN);

impl<'a> Codec<'a> for ScanTree<'a> {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let (w, path) = wire::split_fixed::<ScanTreeWire>(payload)?;
        wire::expect_len(payload, SCAN_TREE_FIXED_LEN + usize::from(w.path_len.get()))?;
        wire::reserved(w.reserved.into(), "reserved")?;
        let m = ScanTree {
            flags: ScanFlags(w.flags.get()),
            max_in_flight: w.max_in_flight.get(),
            max_depth: w.max_depth.get(),
            progress_interval_ms: w.progress_interval_ms.get(),
            max_file_size: w.max_file_size.get(),
            root: FilePath::from_wire(PathEncoding::decode(w.path_encoding)?, path)?,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        if self.flags.0 & !ScanFlags::ALL.0 != 0 {
            return Err(PayloadError::ReservedNonZero { field: "flags" });
        }
        if self.max_in_flight == 0 {
            return Err(PayloadError::OutOfRange {
                field: "max_in_flight",
                value: 0,
            });
        }
        self.root.validate()
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        SCAN_TREE_FIXED_LEN.saturating_add(self.root.as_bytes().len())
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = ScanTreeWire {
            flags: self.flags.0.into(),
            max_in_flight: self.max_in_flight.into(),
            max_depth: self.max_depth.into(),
            progress_interval_ms: self.progress_interval_ms.into(),
            path_encoding: self.root.encoding().to_wire(),
            reserved: 0,
            path_len: wire::len_u16(self.root.as_bytes().len()).into(),
            max_file_size: self.max_file_size.into(),
        };
        w.put(fixed.as_bytes());
        w.put(self.root.as_bytes());
    }
}

// ------------------------------------------------ ScanProgress and ScanDone

/// The counters of a scan, in `ScanProgress` and `ScanDone` (§14.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScanCounters {
    /// Regular files found.
    pub files_seen: u64,
    /// `OnDemand` events that got a `Verdict`.
    pub files_scanned: u64,
    /// Of those, denied.
    pub files_denied: u64,
    /// Not sent: excluded or too large.
    pub files_skipped: u64,
    /// Files or directories that could not be opened, read or listed.
    pub errors: u64,
    /// Sum of the sizes of the files sent.
    pub bytes: u64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ScanCountersWire {
    files_seen: U64,
    files_scanned: U64,
    files_denied: U64,
    files_skipped: U64,
    errors: U64,
    bytes: U64,
}

/// Size of `ScanProgress`'s payload (the counters).
pub const SCAN_PROGRESS_LEN: usize = 48;
const _: () = assert!(size_of::<ScanCountersWire>() == SCAN_PROGRESS_LEN);

impl ScanCounters {
    fn from_wire(w: &ScanCountersWire) -> Self {
        Self {
            files_seen: w.files_seen.get(),
            files_scanned: w.files_scanned.get(),
            files_denied: w.files_denied.get(),
            files_skipped: w.files_skipped.get(),
            errors: w.errors.get(),
            bytes: w.bytes.get(),
        }
    }

    fn to_wire(self) -> ScanCountersWire {
        ScanCountersWire {
            files_seen: self.files_seen.into(),
            files_scanned: self.files_scanned.into(),
            files_denied: self.files_denied.into(),
            files_skipped: self.files_skipped.into(),
            errors: self.errors.into(),
            bytes: self.bytes.into(),
        }
    }

    fn validate(&self) -> Result<(), PayloadError> {
        if self.files_denied > self.files_scanned {
            return Err(PayloadError::OutOfRange {
                field: "files_denied",
                value: self.files_denied,
            });
        }
        Ok(())
    }
}

/// Guest → host (§14.5): how far a scan got; not answered. The header's
/// request id is the scan id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScanProgress {
    /// The counters so far.
    pub counters: ScanCounters,
}

impl<'a> Codec<'a> for ScanProgress {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let w = wire::exact_fixed::<ScanCountersWire>(payload)?;
        let m = ScanProgress {
            counters: ScanCounters::from_wire(w),
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        self.counters.validate()
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        SCAN_PROGRESS_LEN
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        w.put(self.counters.to_wire().as_bytes());
    }
}

wire_enum! {
    /// How a scan ended (`ScanDone.status`, §14.5).
    pub enum ScanStatus: u8, field = "status" {
        /// The walk ended and every event sent was answered.
        Completed = 1,
        /// A `ScanCancel` stopped it.
        Cancelled = 2,
        /// Nothing at the root.
        NotFound = 3,
        /// The root could not be opened; the result carries the OS error.
        Failed = 4,
        /// Another scan runs.
        Busy = 5,
        /// The guest lacks `SCAN_TREE`.
        Unsupported = 6,
    }
}

/// Guest → host (§14.5): the one answer to a `ScanTree`. The header's
/// request id is the scan id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScanDone {
    /// The counters at the end.
    pub counters: ScanCounters,
    /// How it ended.
    pub status: ScanStatus,
    /// The OS error: `Some` exactly when `status` is `Failed`.
    pub error: Option<OsError>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ScanDoneWire {
    counters: ScanCountersWire,
    status: u8,
    error_space: u8,
    reserved: U16,
    error_code: U32,
}

/// Size of `ScanDone`'s payload.
pub const SCAN_DONE_LEN: usize = 56;
const _: () = assert!(size_of::<ScanDoneWire>() == SCAN_DONE_LEN);

impl<'a> Codec<'a> for ScanDone {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let w = wire::exact_fixed::<ScanDoneWire>(payload)?;
        wire::reserved(w.reserved.get().into(), "reserved")?;
        let status = ScanStatus::decode(w.status)?;
        let m = ScanDone {
            counters: ScanCounters::from_wire(&w.counters),
            status,
            error: error_from_wire(
                status == ScanStatus::Failed,
                w.error_space,
                w.error_code.get(),
            )?,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        self.counters.validate()?;
        check_error_matches(self.status == ScanStatus::Failed, self.error)
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        SCAN_DONE_LEN
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let (space, code) = OsError::to_wire(self.error);
        let fixed = ScanDoneWire {
            counters: self.counters.to_wire(),
            status: self.status.to_wire(),
            error_space: space.to_wire(),
            reserved: 0.into(),
            error_code: code.into(),
        };
        w.put(fixed.as_bytes());
    }
}

/// Host → guest (§14.5): stop the scan whose id the header carries. Empty
/// payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScanCancel;

impl<'a> Codec<'a> for ScanCancel {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        wire::expect_len(payload, 0)?;
        Ok(ScanCancel)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        Ok(())
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        0
    }

    fn write(&self, _w: &mut Writer<'_>, _version: u16) {}
}

// ------------------------------------------------------------------- Policy

wire_enum! {
    /// What the guest does with an open it cannot get a verdict for in time
    /// (`Policy.fail_mode`, `Health.fail_mode`).
    pub enum FailMode: u8, field = "fail_mode" {
        /// Allow it.
        Open = 1,
        /// Deny it.
        Closed = 2,
    }
}

/// `Policy.fields` and `ActionResult.pinned`: which policy fields (§14.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyFields(pub u32);

impl PolicyFields {
    /// `fail_mode`.
    pub const FAIL_MODE: Self = Self(1 << 0);
    /// `debug_level`.
    pub const DEBUG_LEVEL: Self = Self(1 << 1);
    /// The exclusion list.
    pub const EXCLUSIONS: Self = Self(1 << 2);
    /// `query_timeout_ms`.
    pub const QUERY_TIMEOUT: Self = Self(1 << 3);
    /// `cache_ttl_max_secs`.
    pub const CACHE_TTL_MAX: Self = Self(1 << 4);
    /// `max_scan_size`.
    pub const MAX_SCAN_SIZE: Self = Self(1 << 5);
    /// Every defined bit; the others are reserved.
    pub const ALL: Self = Self(0b11_1111);

    /// `true` when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits of both.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

wire_enum! {
    /// What an exclusion matches (§14.6).
    pub enum ExclusionKind: u8, field = "kind" {
        /// A path prefix.
        PathPrefix = 1,
        /// A file extension, without the dot.
        Extension = 2,
        /// A process image name.
        ProcessImage = 3,
    }
}

/// The largest `debug_level`.
pub const MAX_DEBUG_LEVEL: u8 = 4;

/// One exclusion of a `Policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exclusion<'a> {
    /// What it matches.
    pub kind: ExclusionKind,
    /// The prefix, extension or image name.
    pub value: FilePath<'a>,
}

/// Size of one exclusion entry's header (`kind`, `encoding`, `len`).
pub const EXCLUSION_HEADER_LEN: usize = 4;

/// The exclusion entries of a `Policy`, as on the wire (validated); build
/// one to send with [`Exclusions::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exclusions<'a> {
    count: u16,
    bytes: &'a [u8],
}

impl<'a> Exclusions<'a> {
    /// No exclusions.
    pub const EMPTY: Exclusions<'static> = Exclusions {
        count: 0,
        bytes: &[],
    };

    /// Number of entries.
    pub const fn len(&self) -> usize {
        self.count as usize
    }

    /// `true` without entries.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entries' encoded bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = Exclusion<'a>> + 'a {
        let mut rest = self.bytes;
        let mut left = self.count;
        core::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let (e, next) = Self::entry(rest).ok()?;
            rest = next;
            left -= 1;
            Some(e)
        })
    }

    /// Encodes `entries` into `buf` and returns them as `Exclusions`
    /// borrowing `buf`. Fails when an entry is invalid (empty, odd UTF-16,
    /// longer than 65 535 bytes), when there are more than 65 535, or when
    /// `buf` is too small.
    pub fn write<'b>(
        entries: impl IntoIterator<Item = Exclusion<'b>>,
        buf: &'a mut [u8],
    ) -> Result<Exclusions<'a>, PayloadError> {
        let mut pos = 0usize;
        let mut count = 0u16;
        for e in entries {
            e.value.validate()?;
            count = count.checked_add(1).ok_or(PayloadError::TooLong {
                field: "exclusions",
                len: usize::from(u16::MAX) + 1,
                max: usize::from(u16::MAX),
            })?;
            let value = e.value.as_bytes();
            let end = pos
                .saturating_add(EXCLUSION_HEADER_LEN)
                .saturating_add(value.len());
            let room = buf.len();
            let dst = buf.get_mut(pos..end).ok_or(PayloadError::TooLong {
                field: "exclusions",
                len: end,
                max: room,
            })?;
            let len = wire::len_u16(value.len()).to_le_bytes();
            dst[0] = e.kind.to_wire();
            dst[1] = e.value.encoding().to_wire();
            dst[2..4].copy_from_slice(&len);
            dst[EXCLUSION_HEADER_LEN..].copy_from_slice(value);
            pos = end;
        }
        let bytes: &'a [u8] = &buf[..pos];
        Ok(Exclusions { count, bytes })
    }

    /// Parses `count` entries that fill `bytes` exactly.
    fn parse(count: u16, bytes: &'a [u8]) -> Result<Self, PayloadError> {
        let mut rest = bytes;
        for _ in 0..count {
            rest = Self::entry(rest)?.1;
        }
        if !rest.is_empty() {
            return Err(PayloadError::LengthMismatch {
                expected: bytes.len() - rest.len(),
                actual: bytes.len(),
            });
        }
        Ok(Self { count, bytes })
    }

    fn entry(bytes: &'a [u8]) -> Result<(Exclusion<'a>, &'a [u8]), PayloadError> {
        let header = bytes
            .get(..EXCLUSION_HEADER_LEN)
            .ok_or(PayloadError::Truncated {
                needed: EXCLUSION_HEADER_LEN,
                actual: bytes.len(),
            })?;
        let kind = ExclusionKind::decode(header[0])?;
        let encoding = PathEncoding::decode(header[1])?;
        let len = usize::from(u16::from_le_bytes([header[2], header[3]]));
        let end = EXCLUSION_HEADER_LEN + len;
        let value = bytes
            .get(EXCLUSION_HEADER_LEN..end)
            .ok_or(PayloadError::Truncated {
                needed: end,
                actual: bytes.len(),
            })?;
        let value = FilePath::from_wire(encoding, value)?;
        value.validate()?;
        Ok((Exclusion { kind, value }, &bytes[end..]))
    }
}

/// Host → guest (§14.6): the guest's on-access policy. A field that is
/// `None` keeps the guest's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy<'a> {
    /// The policy's version, ≥ 1.
    pub version: u64,
    /// The host stops waiting after this many milliseconds, ≥ 1.
    pub deadline_ms: u32,
    /// What the guest does when it gets no verdict in time.
    pub fail_mode: Option<FailMode>,
    /// Log level 0..=[`MAX_DEBUG_LEVEL`].
    pub debug_level: Option<u8>,
    /// The guest's whole exclusion list (replaces it).
    pub exclusions: Option<Exclusions<'a>>,
    /// The guest's deadline per on-access query, ms, ≥ 1.
    pub query_timeout_ms: Option<u32>,
    /// Longest the guest keeps a verdict, s; 0 = no caching.
    pub cache_ttl_max_secs: Option<u32>,
    /// Larger files are not queried; 0 = no limit.
    pub max_scan_size: Option<u64>,
}

impl Policy<'_> {
    /// The `fields` bits of the values this policy sets.
    pub const fn fields(&self) -> PolicyFields {
        let mut bits = 0;
        if self.fail_mode.is_some() {
            bits |= PolicyFields::FAIL_MODE.0;
        }
        if self.debug_level.is_some() {
            bits |= PolicyFields::DEBUG_LEVEL.0;
        }
        if self.exclusions.is_some() {
            bits |= PolicyFields::EXCLUSIONS.0;
        }
        if self.query_timeout_ms.is_some() {
            bits |= PolicyFields::QUERY_TIMEOUT.0;
        }
        if self.cache_ttl_max_secs.is_some() {
            bits |= PolicyFields::CACHE_TTL_MAX.0;
        }
        if self.max_scan_size.is_some() {
            bits |= PolicyFields::MAX_SCAN_SIZE.0;
        }
        PolicyFields(bits)
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct PolicyWire {
    version: U64,
    fields: U32,
    deadline_ms: U32,
    fail_mode: u8,
    debug_level: u8,
    exclusion_count: U16,
    query_timeout_ms: U32,
    cache_ttl_max_secs: U32,
    reserved: U32,
    max_scan_size: U64,
}

/// Size of `Policy`'s fixed part.
pub const POLICY_FIXED_LEN: usize = 40;
const _: () = assert!(size_of::<PolicyWire>() == POLICY_FIXED_LEN);

/// `value` when `set`, else checks the field is zero (§14.6).
fn policy_field<T: Copy + Into<u64>>(
    set: bool,
    value: T,
    field: &'static str,
) -> Result<Option<T>, PayloadError> {
    if set {
        Ok(Some(value))
    } else {
        wire::reserved(value.into(), field)?;
        Ok(None)
    }
}

impl<'a> Codec<'a> for Policy<'a> {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let (w, entries) = wire::split_fixed::<PolicyWire>(payload)?;
        wire::reserved(w.reserved.get().into(), "reserved")?;
        let fields = PolicyFields(w.fields.get());
        if fields.0 & !PolicyFields::ALL.0 != 0 {
            return Err(PayloadError::ReservedNonZero { field: "fields" });
        }
        let has = |f: PolicyFields| fields.contains(f);
        let fail_mode = match policy_field(has(PolicyFields::FAIL_MODE), w.fail_mode, "fail_mode")?
        {
            Some(v) => Some(FailMode::decode(v)?),
            None => None,
        };
        let count = policy_field(
            has(PolicyFields::EXCLUSIONS),
            w.exclusion_count.get(),
            "exclusion_count",
        )?;
        let exclusions = match count {
            Some(n) => Some(Exclusions::parse(n, entries)?),
            None => {
                wire::expect_len(payload, POLICY_FIXED_LEN)?;
                None
            }
        };
        let m = Policy {
            version: w.version.get(),
            deadline_ms: w.deadline_ms.get(),
            fail_mode,
            debug_level: policy_field(
                has(PolicyFields::DEBUG_LEVEL),
                w.debug_level,
                "debug_level",
            )?,
            exclusions,
            query_timeout_ms: policy_field(
                has(PolicyFields::QUERY_TIMEOUT),
                w.query_timeout_ms.get(),
                "query_timeout_ms",
            )?,
            cache_ttl_max_secs: policy_field(
                has(PolicyFields::CACHE_TTL_MAX),
                w.cache_ttl_max_secs.get(),
                "cache_ttl_max_secs",
            )?,
            max_scan_size: policy_field(
                has(PolicyFields::MAX_SCAN_SIZE),
                w.max_scan_size.get(),
                "max_scan_size",
            )?,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        if self.version == 0 {
            return Err(PayloadError::OutOfRange {
                field: "version",
                value: 0,
            });
        }
        deadline(self.deadline_ms)?;
        if let Some(level) = self.debug_level
            && level > MAX_DEBUG_LEVEL
        {
            return Err(PayloadError::OutOfRange {
                field: "debug_level",
                value: level.into(),
            });
        }
        if self.query_timeout_ms == Some(0) {
            return Err(PayloadError::OutOfRange {
                field: "query_timeout_ms",
                value: 0,
            });
        }
        if let Some(e) = self.exclusions {
            Exclusions::parse(e.count, e.bytes)?;
        }
        Ok(())
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        POLICY_FIXED_LEN.saturating_add(self.exclusions.map_or(0, |e| e.bytes.len()))
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = PolicyWire {
            version: self.version.into(),
            fields: self.fields().0.into(),
            deadline_ms: self.deadline_ms.into(),
            fail_mode: self.fail_mode.map_or(0, FailMode::to_wire),
            debug_level: self.debug_level.unwrap_or(0),
            exclusion_count: self.exclusions.map_or(0, |e| e.count).into(),
            query_timeout_ms: self.query_timeout_ms.unwrap_or(0).into(),
            cache_ttl_max_secs: self.cache_ttl_max_secs.unwrap_or(0).into(),
            reserved: 0.into(),
            max_scan_size: self.max_scan_size.unwrap_or(0).into(),
        };
        w.put(fixed.as_bytes());
        if let Some(e) = self.exclusions {
            w.put(e.bytes);
        }
    }
}

// ------------------------------------------------- Restore and RestoreData

/// Host → guest (§14.7): write a file of `size` bytes at `path`; the bytes
/// follow in `RestoreData` frames carrying this request's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restore<'a> {
    /// Bytes the file will have.
    pub size: u64,
    /// The host stops waiting after this many milliseconds, ≥ 1.
    pub deadline_ms: u32,
    /// Where the file goes.
    pub path: FilePath<'a>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RestoreWire {
    size: U64,
    deadline_ms: U32,
    path_encoding: u8,
    reserved: u8,
    path_len: U16,
}

/// Size of `Restore`'s fixed part.
pub const RESTORE_FIXED_LEN: usize = 16;
const _: () = assert!(size_of::<RestoreWire>() == RESTORE_FIXED_LEN);

impl<'a> Codec<'a> for Restore<'a> {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let (w, path) = wire::split_fixed::<RestoreWire>(payload)?;
        wire::expect_len(payload, RESTORE_FIXED_LEN + usize::from(w.path_len.get()))?;
        wire::reserved(w.reserved.into(), "reserved")?;
        let m = Restore {
            size: w.size.get(),
            deadline_ms: w.deadline_ms.get(),
            path: FilePath::from_wire(PathEncoding::decode(w.path_encoding)?, path)?,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        deadline(self.deadline_ms)?;
        self.path.validate()
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        RESTORE_FIXED_LEN.saturating_add(self.path.as_bytes().len())
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = RestoreWire {
            size: self.size.into(),
            deadline_ms: self.deadline_ms.into(),
            path_encoding: self.path.encoding().to_wire(),
            reserved: 0,
            path_len: wire::len_u16(self.path.as_bytes().len()).into(),
        };
        w.put(fixed.as_bytes());
        w.put(self.path.as_bytes());
    }
}

/// Size of `RestoreData`'s fixed part.
pub const RESTORE_DATA_FIXED_LEN: usize = 16;

/// Most bytes one `RestoreData` carries (§14.7: `data_len` ≤ 4096; more is
/// `Malformed`). Small, so that a guest can hold a chunk in a small inbox
/// and stop reading while it cannot take the next one, without holding up
/// its on-access answers for long.
pub const MAX_RESTORE_CHUNK: usize = 4096;

/// Host → guest (§14.7): a chunk of a `Restore`'s content; the header's
/// request id is the `Restore`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreData<'a> {
    /// Where `data` goes in the file.
    pub offset: u64,
    /// The final chunk.
    pub last: bool,
    /// The bytes.
    pub data: &'a [u8],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RestoreDataWire {
    offset: U64,
    flags: u8,
    reserved: [u8; 3],
    data_len: U32,
}

const _: () = assert!(size_of::<RestoreDataWire>() == RESTORE_DATA_FIXED_LEN);

/// `RestoreData.flags` bit 0.
const LAST: u8 = 1;

impl<'a> Codec<'a> for RestoreData<'a> {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let (w, data) = wire::split_fixed::<RestoreDataWire>(payload)?;
        let data_len = usize::try_from(w.data_len.get()).unwrap_or(usize::MAX);
        wire::expect_len(payload, RESTORE_DATA_FIXED_LEN.saturating_add(data_len))?;
        if w.flags & !LAST != 0 {
            return Err(PayloadError::ReservedNonZero { field: "flags" });
        }
        if w.reserved != [0; 3] {
            return Err(PayloadError::ReservedNonZero { field: "reserved" });
        }
        let m = RestoreData {
            offset: w.offset.get(),
            last: w.flags & LAST != 0,
            data,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        wire::bounded(self.data.len(), MAX_RESTORE_CHUNK, "data")?;
        if self.offset.checked_add(self.data.len() as u64).is_none() {
            return Err(PayloadError::OutOfRange {
                field: "offset",
                value: self.offset,
            });
        }
        Ok(())
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        RESTORE_DATA_FIXED_LEN.saturating_add(self.data.len())
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = RestoreDataWire {
            offset: self.offset.into(),
            flags: if self.last { LAST } else { 0 },
            reserved: [0; 3],
            data_len: wire::len_u32(self.data.len()).into(),
        };
        w.put(fixed.as_bytes());
        w.put(self.data);
    }
}

// ------------------------------------------------------------------- Health

/// `Health.state` bits (§14.8). Unknown bits are carried, not rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HealthState(pub u32);

impl HealthState {
    /// Opens are being judged.
    pub const ON_ACCESS: Self = Self(1 << 0);
    /// The verdict cache is on.
    pub const CACHE: Self = Self(1 << 1);
    /// A `ScanTree` runs.
    pub const SCAN_RUNNING: Self = Self(1 << 2);
    /// A policy field is pinned locally.
    pub const POLICY_PINNED: Self = Self(1 << 3);

    /// `true` when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits of both.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Guest → host (§14.8): the guest's state and counters; not answered,
/// request id 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Health {
    /// The host policy in effect; 0 = none received.
    pub policy_version: u64,
    /// State bits.
    pub state: HealthState,
    /// The fail mode in effect.
    pub fail_mode: FailMode,
    /// Since the agent started, ms.
    pub uptime_ms: u64,
    /// `FileEvent`s sent since the agent started.
    pub events_sent: u64,
    /// Opens answered from the verdict cache.
    pub cache_hits: u64,
    /// Opens denied on a host `Verdict`.
    pub denied: u64,
    /// Opens decided by the fail mode.
    pub fail_decisions: u64,
    /// Sessions established since the agent started.
    pub sessions: u64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HealthWire {
    policy_version: U64,
    state: U32,
    fail_mode: u8,
    reserved0: u8,
    reserved1: U16,
    uptime_ms: U64,
    events_sent: U64,
    cache_hits: U64,
    denied: U64,
    fail_decisions: U64,
    sessions: U64,
}

/// Size of `Health`'s payload.
pub const HEALTH_LEN: usize = 64;
const _: () = assert!(size_of::<HealthWire>() == HEALTH_LEN);

impl<'a> Codec<'a> for Health {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let w = wire::exact_fixed::<HealthWire>(payload)?;
        wire::reserved(w.reserved0.into(), "reserved")?;
        wire::reserved(w.reserved1.get().into(), "reserved")?;
        Ok(Health {
            policy_version: w.policy_version.get(),
            state: HealthState(w.state.get()),
            fail_mode: FailMode::decode(w.fail_mode)?,
            uptime_ms: w.uptime_ms.get(),
            events_sent: w.events_sent.get(),
            cache_hits: w.cache_hits.get(),
            denied: w.denied.get(),
            fail_decisions: w.fail_decisions.get(),
            sessions: w.sessions.get(),
        })
    }

    fn validate(&self) -> Result<(), PayloadError> {
        Ok(())
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        check_host_action_version(version)
    }

    fn payload_len(&self, _version: u16) -> usize {
        HEALTH_LEN
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = HealthWire {
            policy_version: self.policy_version.into(),
            state: self.state.0.into(),
            fail_mode: self.fail_mode.to_wire(),
            reserved0: 0,
            reserved1: 0.into(),
            uptime_ms: self.uptime_ms.into(),
            events_sent: self.events_sent.into(),
            cache_hits: self.cache_hits.into(),
            denied: self.denied.into(),
            fail_decisions: self.fail_decisions.into(),
            sessions: self.sessions.into(),
        };
        w.put(fixed.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EncodeError, HEADER_LEN, Message};

    const V2: u16 = HOST_ACTIONS_VERSION;

    /// The payload `m` encodes to in version 2.
    fn payload(m: &Message<'_>, buf: &mut [u8]) -> usize {
        let n = m.encode_for(V2, 1, buf).expect("valid message encodes");
        buf.copy_within(HEADER_LEN..n, 0);
        n - HEADER_LEN
    }

    fn policy() -> Policy<'static> {
        Policy {
            version: 1,
            deadline_ms: 1,
            fail_mode: None,
            debug_level: None,
            exclusions: None,
            query_timeout_ms: None,
            cache_ttl_max_secs: None,
            max_scan_size: None,
        }
    }

    fn entry(kind: ExclusionKind, value: FilePath<'_>) -> Exclusion<'_> {
        Exclusion { kind, value }
    }

    #[test]
    fn exclusions_write_the_documented_entries_and_iter_reads_them_back() {
        let entries = [
            entry(ExclusionKind::PathPrefix, FilePath::Utf16Le(b"C\0:\0")),
            entry(ExclusionKind::Extension, FilePath::Utf8("iso")),
            entry(ExclusionKind::ProcessImage, FilePath::Bytes(b"\xffsh")),
        ];
        let mut buf = [0u8; 64];
        let e = Exclusions::write(entries, &mut buf).unwrap();
        assert_eq!((e.len(), e.is_empty()), (3, false));
        // kind u8, encoding u8, len u16 LE, then the bytes (§14.6).
        assert_eq!(
            e.as_bytes(),
            b"\x01\x02\x04\x00C\0:\0\x02\x01\x03\x00iso\x03\x03\x03\x00\xffsh"
        );
        assert!(e.iter().eq(entries));
        assert_eq!(Exclusions::parse(3, e.as_bytes()), Ok(e));
        let none = Exclusions::write([], &mut buf).unwrap();
        assert_eq!(none, Exclusions::EMPTY);
        assert!(none.is_empty() && none.iter().next().is_none());
    }

    #[test]
    fn exclusions_write_refuses_invalid_entries_and_a_short_buffer() {
        let mut buf = [0u8; 16];
        assert_eq!(
            Exclusions::write(
                [entry(ExclusionKind::Extension, FilePath::Utf8(""))],
                &mut buf
            ),
            Err(PayloadError::Empty { field: "path" })
        );
        assert_eq!(
            Exclusions::write(
                [entry(ExclusionKind::PathPrefix, FilePath::Utf16Le(b"abc"))],
                &mut buf
            ),
            Err(PayloadError::OddUtf16Length { field: "path" })
        );
        // 4 + 12 bytes fill the buffer exactly; one more byte does not fit.
        let twelve = FilePath::Utf8("abcdefghijkl");
        assert!(Exclusions::write([entry(ExclusionKind::PathPrefix, twelve)], &mut buf).is_ok());
        assert_eq!(
            Exclusions::write(
                [
                    entry(ExclusionKind::PathPrefix, twelve),
                    entry(ExclusionKind::Extension, FilePath::Utf8("x"))
                ],
                &mut buf
            ),
            Err(PayloadError::TooLong {
                field: "exclusions",
                len: 21,
                max: 16
            })
        );
    }

    #[test]
    fn exclusion_entries_must_fill_the_payload_exactly() {
        let one = b"\x01\x01\x02\x00/a";
        assert!(Exclusions::parse(1, one).is_ok());
        // More entries declared than present, an entry running past the end.
        assert_eq!(
            Exclusions::parse(2, one),
            Err(PayloadError::Truncated {
                needed: EXCLUSION_HEADER_LEN,
                actual: 0
            })
        );
        assert_eq!(
            Exclusions::parse(1, b"\x01\x01\x09\x00/a"),
            Err(PayloadError::Truncated {
                needed: 13,
                actual: 6
            })
        );
        // Fewer declared than present: the rest is a length mismatch.
        assert_eq!(
            Exclusions::parse(0, one),
            Err(PayloadError::LengthMismatch {
                expected: 0,
                actual: 6
            })
        );
        for (bad, error) in [
            (
                &b"\x04\x01\x01\x00a"[..],
                PayloadError::UnknownValue {
                    field: "kind",
                    value: 4,
                },
            ),
            (
                b"\x01\x04\x01\x00a",
                PayloadError::UnknownValue {
                    field: "path_encoding",
                    value: 4,
                },
            ),
            (b"\x01\x01\x00\x00", PayloadError::Empty { field: "path" }),
            (
                b"\x01\x02\x01\x00a",
                PayloadError::OddUtf16Length { field: "path" },
            ),
        ] {
            assert_eq!(Exclusions::parse(1, bad), Err(error), "{bad:02x?}");
        }
    }

    #[test]
    fn policy_fields_are_the_bits_of_the_values_it_sets() {
        assert_eq!(policy().fields(), PolicyFields(0));
        let mut buf = [0u8; 128];
        let excl = Exclusions::write(
            [entry(ExclusionKind::Extension, FilePath::Utf8("iso"))],
            &mut buf,
        )
        .unwrap();
        let each = [
            (
                Policy {
                    fail_mode: Some(FailMode::Closed),
                    ..policy()
                },
                PolicyFields::FAIL_MODE,
            ),
            (
                Policy {
                    debug_level: Some(0),
                    ..policy()
                },
                PolicyFields::DEBUG_LEVEL,
            ),
            (
                Policy {
                    exclusions: Some(Exclusions::EMPTY),
                    ..policy()
                },
                PolicyFields::EXCLUSIONS,
            ),
            (
                Policy {
                    query_timeout_ms: Some(1),
                    ..policy()
                },
                PolicyFields::QUERY_TIMEOUT,
            ),
            (
                Policy {
                    cache_ttl_max_secs: Some(0),
                    ..policy()
                },
                PolicyFields::CACHE_TTL_MAX,
            ),
            (
                Policy {
                    max_scan_size: Some(0),
                    ..policy()
                },
                PolicyFields::MAX_SCAN_SIZE,
            ),
        ];
        let mut all = PolicyFields(0);
        let mut out = [0u8; 256];
        for (p, bit) in each {
            assert_eq!(p.fields(), bit);
            all = all.union(bit);
            // A set field is sent even when its value is 0, and comes back
            // set (`Some(0)`), not as "keep the guest's value".
            let n = payload(&Message::Policy(p), &mut out);
            assert_eq!(&out[8..12], &bit.0.to_le_bytes(), "fields on the wire");
            assert_eq!(Policy::decode(&out[..n], V2), Ok(p));
        }
        assert_eq!(all, PolicyFields::ALL);
        let full = Policy {
            fail_mode: Some(FailMode::Open),
            debug_level: Some(MAX_DEBUG_LEVEL),
            exclusions: Some(excl),
            query_timeout_ms: Some(2_000),
            cache_ttl_max_secs: Some(300),
            max_scan_size: Some(1 << 20),
            ..policy()
        };
        assert_eq!(full.fields(), PolicyFields::ALL);
        let n = payload(&Message::Policy(full), &mut out);
        assert_eq!(n, POLICY_FIXED_LEN + excl.as_bytes().len());
        assert_eq!(Policy::decode(&out[..n], V2), Ok(full));
    }

    #[test]
    fn a_policy_field_whose_bit_is_clear_must_be_zero() {
        let mut frame = [0u8; HEADER_LEN + POLICY_FIXED_LEN];
        assert_eq!(
            payload(&Message::Policy(policy()), &mut frame),
            POLICY_FIXED_LEN
        );
        let mut base = [0u8; POLICY_FIXED_LEN];
        base.copy_from_slice(&frame[..POLICY_FIXED_LEN]);
        // (offset, width, field): every field with its bit clear.
        for (offset, width, field) in [
            (16, 1, "fail_mode"),
            (17, 1, "debug_level"),
            (18, 2, "exclusion_count"),
            (20, 4, "query_timeout_ms"),
            (24, 4, "cache_ttl_max_secs"),
            (32, 8, "max_scan_size"),
            (28, 4, "reserved"),
        ] {
            let mut bad = base;
            bad[offset + width - 1] = 1;
            assert_eq!(
                Policy::decode(&bad, V2),
                Err(PayloadError::ReservedNonZero { field }),
                "{field}"
            );
        }
        for bit in 6..32 {
            let mut bad = base;
            bad[8..12].copy_from_slice(&(1u32 << bit).to_le_bytes());
            assert_eq!(
                Policy::decode(&bad, V2),
                Err(PayloadError::ReservedNonZero { field: "fields" })
            );
        }
        // Without the exclusions bit nothing may follow the fixed part.
        let mut longer = [0u8; POLICY_FIXED_LEN + 1];
        longer[..POLICY_FIXED_LEN].copy_from_slice(&base);
        assert_eq!(
            Policy::decode(&longer, V2),
            Err(PayloadError::LengthMismatch {
                expected: POLICY_FIXED_LEN,
                actual: POLICY_FIXED_LEN + 1
            })
        );
    }

    #[test]
    fn policy_values_out_of_their_range_are_refused_both_ways() {
        let mut buf = [0u8; 256];
        for (bad, field, value) in [
            (
                Policy {
                    version: 0,
                    ..policy()
                },
                "version",
                0,
            ),
            (
                Policy {
                    deadline_ms: 0,
                    ..policy()
                },
                "deadline_ms",
                0,
            ),
            (
                Policy {
                    debug_level: Some(MAX_DEBUG_LEVEL + 1),
                    ..policy()
                },
                "debug_level",
                5,
            ),
            (
                Policy {
                    query_timeout_ms: Some(0),
                    ..policy()
                },
                "query_timeout_ms",
                0,
            ),
        ] {
            let error = PayloadError::OutOfRange { field, value };
            assert_eq!(
                Message::Policy(bad).encode_for(V2, 1, &mut buf),
                Err(EncodeError::Invalid(error))
            );
            // The same bytes on the wire, written past the encoder's check.
            let mut w = Writer::new(&mut buf[..POLICY_FIXED_LEN]);
            bad.write(&mut w, V2);
            assert_eq!(Policy::decode(&buf[..POLICY_FIXED_LEN], V2), Err(error));
        }
    }

    #[test]
    fn an_error_is_present_exactly_when_the_status_is_failed() {
        let mut buf = [0u8; 128];
        let error = OsError::Errno(13);
        for status in ActionStatus::ALL.iter().copied() {
            let failed = status == ActionStatus::Failed;
            let with = ActionResult {
                error: Some(error),
                ..ActionResult::status(status)
            };
            let without = ActionResult::status(status);
            let (good, bad) = if failed {
                (with, without)
            } else {
                (without, with)
            };
            let n = payload(&Message::ActionResult(good), &mut buf);
            assert_eq!(ActionResult::decode(&buf[..n], V2), Ok(good));
            // The wrong one neither encodes nor decodes.
            assert!(
                Message::ActionResult(bad)
                    .encode_for(V2, 1, &mut buf)
                    .is_err()
            );
            let mut w = Writer::new(&mut buf[..ACTION_RESULT_LEN]);
            bad.write(&mut w, V2);
            let expected = if failed {
                PayloadError::UnknownValue {
                    field: "error_space",
                    value: 0,
                }
            } else {
                PayloadError::OutOfRange {
                    field: "error_space",
                    value: 2,
                }
            };
            assert_eq!(
                ActionResult::decode(&buf[..ACTION_RESULT_LEN], V2),
                Err(expected)
            );
        }
        for status in ScanStatus::ALL.iter().copied() {
            let done = ScanDone {
                counters: ScanCounters::default(),
                status,
                error: (status == ScanStatus::Failed).then_some(OsError::NtStatus(0xC000_0022)),
            };
            let n = payload(&Message::ScanDone(done), &mut buf);
            assert_eq!(ScanDone::decode(&buf[..n], V2), Ok(done));
            let flipped = ScanDone {
                error: match done.error {
                    Some(_) => None,
                    None => Some(error),
                },
                ..done
            };
            assert!(
                Message::ScanDone(flipped)
                    .encode_for(V2, 1, &mut buf)
                    .is_err()
            );
        }
        // error_space 0 with a nonzero error_code, and an unknown space.
        let mut raw = [0u8; ACTION_RESULT_LEN];
        raw[0] = ActionStatus::Done.to_wire();
        raw[4] = 5;
        assert_eq!(
            ActionResult::decode(&raw, V2),
            Err(PayloadError::ReservedNonZero {
                field: "error_code"
            })
        );
        raw[0] = ActionStatus::Failed.to_wire();
        raw[1] = 3;
        assert_eq!(
            ActionResult::decode(&raw, V2),
            Err(PayloadError::UnknownValue {
                field: "error_space",
                value: 3
            })
        );
    }

    #[test]
    fn pinned_holds_only_policy_field_bits() {
        let mut buf = [0u8; 128];
        let ok = ActionResult {
            pinned: PolicyFields::ALL.0,
            value: 9,
            ..ActionResult::status(ActionStatus::Done)
        };
        let n = payload(&Message::ActionResult(ok), &mut buf);
        assert_eq!(ActionResult::decode(&buf[..n], V2), Ok(ok));
        let bad = ActionResult {
            pinned: 1 << 6,
            ..ok
        };
        assert_eq!(
            Message::ActionResult(bad).encode_for(V2, 1, &mut buf),
            Err(EncodeError::Invalid(PayloadError::ReservedNonZero {
                field: "pinned"
            }))
        );
    }

    #[test]
    fn scan_counters_allow_denied_up_to_scanned() {
        let c = |scanned, denied| ScanCounters {
            files_scanned: scanned,
            files_denied: denied,
            ..ScanCounters::default()
        };
        assert!(c(0, 0).validate().is_ok());
        assert!(c(5, 5).validate().is_ok());
        assert_eq!(
            c(5, 6).validate(),
            Err(PayloadError::OutOfRange {
                field: "files_denied",
                value: 6
            })
        );
    }

    #[test]
    fn restore_data_flags_and_range() {
        let mut buf = [0u8; 128];
        let last = RestoreData {
            offset: 0,
            last: true,
            data: b"",
        };
        let n = payload(&Message::RestoreData(last), &mut buf);
        assert_eq!((n, buf[8]), (RESTORE_DATA_FIXED_LEN, 1), "LAST is bit 0");
        assert_eq!(RestoreData::decode(&buf[..n], V2), Ok(last));
        for (offset, value, field) in [(8, 2, "flags"), (8, 0x80, "flags"), (10, 1, "reserved")] {
            let mut bad = buf;
            bad[offset] = value;
            assert_eq!(
                RestoreData::decode(&bad[..n], V2),
                Err(PayloadError::ReservedNonZero { field })
            );
        }
        let end = RestoreData {
            offset: u64::MAX - 3,
            last: false,
            data: b"abc",
        };
        assert!(end.validate().is_ok());
        assert!(
            RestoreData {
                offset: u64::MAX - 2,
                ..end
            }
            .validate()
            .is_err()
        );
        // §14.7: data_len ≤ MAX_RESTORE_CHUNK (4096), checked on decode.
        let big = [7u8; MAX_RESTORE_CHUNK + 1];
        let mut wire = [0u8; RESTORE_DATA_FIXED_LEN + MAX_RESTORE_CHUNK + 1];
        wire[12..16].copy_from_slice(&(MAX_RESTORE_CHUNK as u32 + 1).to_le_bytes());
        wire[RESTORE_DATA_FIXED_LEN..].copy_from_slice(&big);
        assert!(RestoreData::decode(&wire, V2).is_err());
        wire[12..16].copy_from_slice(&(MAX_RESTORE_CHUNK as u32).to_le_bytes());
        let n = wire.len() - 1;
        assert_eq!(
            RestoreData::decode(&wire[..n], V2).map(|d| d.data.len()),
            Ok(MAX_RESTORE_CHUNK)
        );
    }

    #[test]
    fn health_carries_unknown_state_bits_and_checks_fail_mode() {
        let mut buf = [0u8; 128];
        let h = Health {
            policy_version: 0,
            state: HealthState(u32::MAX),
            fail_mode: FailMode::Closed,
            uptime_ms: 1,
            events_sent: 2,
            cache_hits: 3,
            denied: 4,
            fail_decisions: 5,
            sessions: 6,
        };
        let n = payload(&Message::Health(h), &mut buf);
        assert_eq!(n, HEALTH_LEN);
        assert_eq!(Health::decode(&buf[..n], V2), Ok(h));
        for mode in [0u8, 3] {
            let mut bad = buf;
            bad[12] = mode;
            assert_eq!(
                Health::decode(&bad[..n], V2),
                Err(PayloadError::UnknownValue {
                    field: "fail_mode",
                    value: mode.into()
                })
            );
        }
    }

    #[test]
    fn host_actions_need_version_2() {
        let mut buf = [0u8; 128];
        let not_in_1 = Err(EncodeError::Invalid(PayloadError::NotInVersion {
            field: "msg_type",
            version: 1,
        }));
        for m in [
            Message::ScanCancel(ScanCancel),
            Message::Policy(policy()),
            Message::ActionResult(ActionResult::status(ActionStatus::Busy)),
        ] {
            assert_eq!(m.encode_for(1, 1, &mut buf), not_in_1, "{m:?}");
            assert!(m.encode_for(V2, 1, &mut buf).is_ok());
        }
    }
}
