//! The driver's Filter Manager registration: the `FLT_OPERATION_REGISTRATION`
//! table, the `FLT_CONTEXT_REGISTRATION` table, the `FLT_REGISTRATION` that
//! `FltRegisterFilter` receives, and the two context structures whose sizes
//! the context table announces.
//!
//! This module compiles and is unit-tested on every host. It holds no
//! callback code: the builders take the callbacks as parameters
//! ([`FilterCallbacks`]), so the tests pass plain test functions and the
//! Windows-only part passes the real ones. The structures and constants are
//! Microsoft's generated `windows-sys` 0.61.2 bindings of `fltKernel.h`
//! (re-exported by `thinagent-km-sys`), never hand-written here.
//!
//! # What is registered, and why
//!
//! The operations follow the `avscan` minifilter sample
//! (Windows-driver-samples `filesys/miniFilter/avscan/filter/avscan.c`,
//! array `Callbacks`), entry for entry and in the same order:
//!
//! | major function | pre | post | flags | what ThinAgent does there |
//! | --- | --- | --- | --- | --- |
//! | `IRP_MJ_CREATE` (0x00) | yes | yes | 0 | pre: skip directories, target-directory, paging-file, volume and prefetch opens; post: query the host, deny with `FltCancelFileOpen` |
//! | `IRP_MJ_CLEANUP` (0x12) | yes | no | 0 | rescan a stream marked modified when its last handle closes |
//! | `IRP_MJ_WRITE` (0x04) | yes | no | 0 | mark the stream modified |
//! | `IRP_MJ_SET_INFORMATION` (0x06) | yes | no | 0 | mark modified on `FileEndOfFileInformation` / `FileValidDataLengthInformation` |
//! | `IRP_MJ_FILE_SYSTEM_CONTROL` (0x0D) | yes | no | 0 | mark modified on `FSCTL_OFFLOAD_WRITE`, `FSCTL_WRITE_RAW_ENCRYPTED`, `FSCTL_SET_ZERO_DATA` |
//! | `IRP_MJ_OPERATION_END` (0x80) | - | - | 0 | terminator |
//!
//! * **Modifications are seen in *pre*-operation callbacks**, as avscan's
//!   `AvPreOperationCallback` / `AvPreFsControl` do, not in post-operation
//!   ones. A post-operation callback of a non-synchronized operation "can be
//!   called at IRQL = DISPATCH_LEVEL" (Microsoft Learn, *Writing
//!   Postoperation Callback Routines* and *Ensuring that Completion
//!   Processing is Performed at Safe IRQL*), where the stream context cannot
//!   be looked up (`FltGetStreamContext` requires IRQL <= APC_LEVEL). Marking
//!   in the pre-operation is also the safe direction: a write that then fails
//!   only costs one extra scan.
//! * **No `FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO` on the write**, as in
//!   avscan (its flags are 0 everywhere): a write through a memory-mapped
//!   view reaches the file system only as a paging write, so skipping paging
//!   I/O would miss exactly the modifications made through sections.
//!   Because it is called on the paging path, the write pre-operation must
//!   be non-pageable code (avscan: "This is non-pageable because it could be
//!   called on the paging path").
//! * **No transaction or section-notification callbacks.** avscan registers
//!   `AvKtmNotificationCallback` and `AvScanAbortCallbackAsync` because it
//!   scans transacted writers and scans through data-scan sections. ThinAgent
//!   skips transacted opens (as VMware's agent does) and serves the host's
//!   reads with `FltReadFile`, so it has neither.
//! * **Contexts:** a stream context ([`StreamContext`], avscan's
//!   `AV_STREAM_CONTEXT`: scan state + file identity) and an instance context
//!   ([`InstanceContext`], avscan's `AV_INSTANCE_CONTEXT`: volume, instance,
//!   file-system type, per-volume file-id table). avscan's stream-handle,
//!   transaction and section contexts are not needed (see above; prefetch
//!   opens are skipped in pre-create instead of being flagged per handle).
//!
//! # IRQL of each callback
//!
//! * pre-create and post-create: `PASSIVE_LEVEL`. Create is inherently
//!   synchronous, so post-create runs at `PASSIVE_LEVEL` in the opener's
//!   thread (Microsoft Learn, *Ensuring that Completion Processing is
//!   Performed at Safe IRQL*).
//! * pre-cleanup: `PASSIVE_LEVEL` (cleanup is sent when the last user
//!   handle of a file object closes, in the closing thread).
//! * pre-write, pre-set-information, pre-file-system-control: IRQL <=
//!   `APC_LEVEL` (pre-operation callbacks; paging writes arrive at
//!   `APC_LEVEL`).
//! * filter unload, instance setup, instance query-teardown, instance
//!   teardown start / complete: `PASSIVE_LEVEL` (their reference pages).
//! * context cleanup: IRQL <= `APC_LEVEL` (`PFLT_CONTEXT_CLEANUP_CALLBACK`;
//!   avscan keeps its cleanup routines in pageable code).
//!
//! # Using it from the Windows part
//!
//! `FltRegisterFilter` keeps pointers into the tables, so they must live in
//! static storage, as every sample's `CONST` arrays do. `FLT_REGISTRATION`
//! holds raw pointers and is therefore not `Sync`; the Windows-only part
//! wraps the three statics in a `#[repr(transparent)]` cell with an
//! `unsafe impl Sync` (sound: nothing writes them after the compile-time
//! initialisation, and Filter Manager only reads them):
//!
//! ```text
//! static CALLBACKS: FilterCallbacks = FilterCallbacks { pre_create: pre_create, ... };
//! static OPERATIONS: ReadOnly<[FLT_OPERATION_REGISTRATION; OPERATION_TABLE_LEN]> =
//!     ReadOnly(operation_registration(&CALLBACKS));
//! static CONTEXTS: ReadOnly<[FLT_CONTEXT_REGISTRATION; CONTEXT_TABLE_LEN]> =
//!     ReadOnly(context_registration(&CALLBACKS));
//! static REGISTRATION: ReadOnly<FLT_REGISTRATION> =
//!     ReadOnly(filter_registration(&CONTEXTS.0, &OPERATIONS.0, &CALLBACKS));
//! // DriverEntry: FltRegisterFilter(driver, &REGISTRATION.0, &mut filter)
//! ```
//!
//! Every builder is a `const fn`, so those initialisers are evaluated by the
//! compiler. Contexts are then allocated with `FltAllocateContext(filter,
//! FLT_STREAM_CONTEXT, size_of::<StreamContext>(), PagedPool, ..)` (and the
//! instance context likewise): the sizes must match the table exactly, since
//! `FLTFL_CONTEXT_REGISTRATION_NO_EXACT_SIZE_MATCH` is not set.

use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering};

use thinagent_guest::FileKey;
use thinagent_km_sys::fltmgr::Minifilters::{
    FLT_CALLBACK_DATA, FLT_CONTEXT_END, FLT_CONTEXT_REGISTRATION, FLT_INSTANCE_CONTEXT,
    FLT_OPERATION_REGISTRATION, FLT_POSTOP_CALLBACK_STATUS, FLT_PREOP_CALLBACK_STATUS,
    FLT_REGISTRATION, FLT_REGISTRATION_VERSION, FLT_RELATED_OBJECTS, FLT_STREAM_CONTEXT,
    IRP_MJ_OPERATION_END, PFLT_CONTEXT, PFLT_CONTEXT_CLEANUP_CALLBACK, PFLT_FILTER_UNLOAD_CALLBACK,
    PFLT_INSTANCE, PFLT_INSTANCE_QUERY_TEARDOWN_CALLBACK, PFLT_INSTANCE_SETUP_CALLBACK,
    PFLT_INSTANCE_TEARDOWN_CALLBACK, PFLT_POST_OPERATION_CALLBACK, PFLT_PRE_OPERATION_CALLBACK,
    PFLT_VOLUME,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    IRP_MJ_CLEANUP, IRP_MJ_CREATE, IRP_MJ_FILE_SYSTEM_CONTROL, IRP_MJ_SET_INFORMATION, IRP_MJ_WRITE,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::NTSTATUS;
use thinagent_km_sys::fltmgr::windows_sys::Win32::Storage::InstallableFileSystems::FLT_FILESYSTEM_TYPE;

// ---------------------------------------------------------------------------
// Callback types
// ---------------------------------------------------------------------------

/// A pre-operation callback (`PFLT_PRE_OPERATION_CALLBACK` without its
/// `Option`): `(Data, FltObjects, CompletionContext) -> FLT_PREOP_CALLBACK_STATUS`.
pub type PreOperationCallback = unsafe extern "system" fn(
    data: *mut FLT_CALLBACK_DATA,
    flt_objects: *const FLT_RELATED_OBJECTS,
    completion_context: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS;

/// A post-operation callback (`PFLT_POST_OPERATION_CALLBACK`):
/// `(Data, FltObjects, CompletionContext, Flags) -> FLT_POSTOP_CALLBACK_STATUS`.
pub type PostOperationCallback = unsafe extern "system" fn(
    data: *mut FLT_CALLBACK_DATA,
    flt_objects: *const FLT_RELATED_OBJECTS,
    completion_context: *const c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS;

/// The filter unload callback (`PFLT_FILTER_UNLOAD_CALLBACK`):
/// `(FLT_FILTER_UNLOAD_FLAGS) -> NTSTATUS`.
pub type FilterUnloadCallback = unsafe extern "system" fn(flags: u32) -> NTSTATUS;

/// The instance setup callback (`PFLT_INSTANCE_SETUP_CALLBACK`):
/// `(FltObjects, Flags, VolumeDeviceType, VolumeFilesystemType) -> NTSTATUS`.
pub type InstanceSetupCallback = unsafe extern "system" fn(
    flt_objects: *const FLT_RELATED_OBJECTS,
    flags: u32,
    volume_device_type: u32,
    volume_filesystem_type: FLT_FILESYSTEM_TYPE,
) -> NTSTATUS;

/// The instance query-teardown callback
/// (`PFLT_INSTANCE_QUERY_TEARDOWN_CALLBACK`): `(FltObjects, Flags) -> NTSTATUS`.
pub type InstanceQueryTeardownCallback =
    unsafe extern "system" fn(flt_objects: *const FLT_RELATED_OBJECTS, flags: u32) -> NTSTATUS;

/// The instance teardown start / complete callbacks
/// (`PFLT_INSTANCE_TEARDOWN_CALLBACK`): `(FltObjects, Reason)`.
pub type InstanceTeardownCallback =
    unsafe extern "system" fn(flt_objects: *const FLT_RELATED_OBJECTS, reason: u32);

/// A context cleanup callback (`PFLT_CONTEXT_CLEANUP_CALLBACK`):
/// `(Context, ContextType)`, called before Filter Manager frees a context.
pub type ContextCleanupCallback =
    unsafe extern "system" fn(context: PFLT_CONTEXT, context_type: u16);

// The aliases above are exactly windows-sys's callback types (each of those
// is `Option<alias>`): these do not compile if windows-sys changes one.
const _: PFLT_PRE_OPERATION_CALLBACK = None::<PreOperationCallback>;
const _: PFLT_POST_OPERATION_CALLBACK = None::<PostOperationCallback>;
const _: PFLT_FILTER_UNLOAD_CALLBACK = None::<FilterUnloadCallback>;
const _: PFLT_INSTANCE_SETUP_CALLBACK = None::<InstanceSetupCallback>;
const _: PFLT_INSTANCE_QUERY_TEARDOWN_CALLBACK = None::<InstanceQueryTeardownCallback>;
const _: PFLT_INSTANCE_TEARDOWN_CALLBACK = None::<InstanceTeardownCallback>;
const _: PFLT_CONTEXT_CLEANUP_CALLBACK = None::<ContextCleanupCallback>;

/// Every callback the driver registers. All are required: a table built from
/// this struct cannot silently lack one.
#[derive(Clone, Copy)]
pub struct FilterCallbacks {
    /// `IRP_MJ_CREATE` pre-operation, `PASSIVE_LEVEL`.
    pub pre_create: PreOperationCallback,
    /// `IRP_MJ_CREATE` post-operation, `PASSIVE_LEVEL` (create is synchronous).
    pub post_create: PostOperationCallback,
    /// `IRP_MJ_CLEANUP` pre-operation, `PASSIVE_LEVEL`.
    pub pre_cleanup: PreOperationCallback,
    /// `IRP_MJ_WRITE` pre-operation, IRQL <= `APC_LEVEL`, also on the paging
    /// path: must be non-pageable.
    pub pre_write: PreOperationCallback,
    /// `IRP_MJ_SET_INFORMATION` pre-operation, IRQL <= `APC_LEVEL`.
    pub pre_set_information: PreOperationCallback,
    /// `IRP_MJ_FILE_SYSTEM_CONTROL` pre-operation, IRQL <= `APC_LEVEL`.
    pub pre_file_system_control: PreOperationCallback,
    /// `FilterUnloadCallback`, `PASSIVE_LEVEL`. Registering one is what lets
    /// the filter be unloaded (`fltmc unload`, `sc stop`).
    pub filter_unload: FilterUnloadCallback,
    /// `InstanceSetupCallback`, `PASSIVE_LEVEL`: attach or not to a volume.
    pub instance_setup: InstanceSetupCallback,
    /// `InstanceQueryTeardownCallback`, `PASSIVE_LEVEL`. Without it, a manual
    /// detach (`fltmc detach`) is always refused.
    pub instance_query_teardown: InstanceQueryTeardownCallback,
    /// `InstanceTeardownStartCallback`, `PASSIVE_LEVEL`: cancel the
    /// instance's pending queries, empty its file-id table.
    pub instance_teardown_start: InstanceTeardownCallback,
    /// `InstanceTeardownCompleteCallback`, `PASSIVE_LEVEL`.
    pub instance_teardown_complete: InstanceTeardownCallback,
    /// Cleanup of a [`StreamContext`], IRQL <= `APC_LEVEL`.
    pub stream_context_cleanup: ContextCleanupCallback,
    /// Cleanup of an [`InstanceContext`], IRQL <= `APC_LEVEL`.
    pub instance_context_cleanup: ContextCleanupCallback,
}

// ---------------------------------------------------------------------------
// Contexts
// ---------------------------------------------------------------------------

/// Scan state of one stream, in [`StreamContext::state`]. The values and
/// their meaning are avscan's `AV_FILE_INFECTED_STATE` (`context.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum StreamScanState {
    /// Never scanned.
    Unknown = 0,
    /// The host denied it.
    Infected = 1,
    /// The host allowed it and it has not been modified since.
    Clean = 2,
    /// Written to (or truncated, or offload-written) since its last verdict:
    /// rescan at cleanup or at the next open.
    Modified = 3,
    /// A query is in flight.
    Scanning = 4,
}

impl StreamScanState {
    /// The state stored as `value`; an unknown value reads as
    /// [`StreamScanState::Modified`], which forces a rescan.
    #[must_use]
    pub const fn from_u32(value: u32) -> Self {
        match value {
            0 => StreamScanState::Unknown,
            1 => StreamScanState::Infected,
            2 => StreamScanState::Clean,
            4 => StreamScanState::Scanning,
            _ => StreamScanState::Modified,
        }
    }

    /// `true` if the stream must be sent to the host before it is trusted.
    #[must_use]
    pub const fn needs_scan(self) -> bool {
        matches!(self, StreamScanState::Unknown | StreamScanState::Modified)
    }
}

/// The driver's stream context (`FLT_STREAM_CONTEXT`), one per file stream
/// the filter has seen open, like avscan's `AV_STREAM_CONTEXT`. Allocated in
/// post-create with `FltAllocateContext(.., FLT_STREAM_CONTEXT,
/// size_of::<StreamContext>(), NonPagedPoolNx, ..)` and initialised with
/// [`StreamContext::new`] before `FltSetStreamContext`. Non-paged because
/// the write pre-operation marks it modified on the paging-write path (at
/// APC_LEVEL, possibly from the modified page writer), where the filter
/// touches no pageable memory.
#[repr(C)]
pub struct StreamContext {
    /// A [`StreamScanState`], updated atomically: the write pre-operation
    /// marks it modified while another thread may be scanning.
    state: AtomicU32,
    /// The file identity and content version of the last verdict
    /// (`FileIdInformation`, size, last-write time).
    pub file_key: FileKey,
    /// A `KEVENT` in non-paged pool serializing the scans of this stream
    /// (avscan's `ScanSynchronizationEvent`, allocated separately as avscan
    /// does, so the context keeps a fixed, portable layout), or null. Freed
    /// by the stream-context cleanup callback.
    pub scan_event: *mut c_void,
}

impl StreamContext {
    /// A context for a stream not scanned yet.
    #[must_use]
    pub const fn new(file_key: FileKey, scan_event: *mut c_void) -> Self {
        StreamContext {
            state: AtomicU32::new(StreamScanState::Unknown as u32),
            file_key,
            scan_event,
        }
    }

    /// The current scan state.
    #[must_use]
    pub fn state(&self) -> StreamScanState {
        StreamScanState::from_u32(self.state.load(Ordering::Acquire))
    }

    /// Sets the scan state (after a verdict, or when a query starts).
    pub fn set_state(&self, state: StreamScanState) {
        self.state.store(state as u32, Ordering::Release);
    }

    /// Marks the stream modified (write, EOF / valid-data-length change,
    /// offload write); returns the state it had.
    pub fn mark_modified(&self) -> StreamScanState {
        StreamScanState::from_u32(
            self.state
                .swap(StreamScanState::Modified as u32, Ordering::AcqRel),
        )
    }

    /// Ends a scan started with `set_state(Scanning)`: stores `result` only
    /// if the stream is still [`StreamScanState::Scanning`], so a write that
    /// marked it modified during the scan is not overwritten by a verdict on
    /// the older content. Returns `true` if `result` was stored.
    pub fn finish_scan(&self, result: StreamScanState) -> bool {
        self.state
            .compare_exchange(
                StreamScanState::Scanning as u32,
                result as u32,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// The driver's instance context (`FLT_INSTANCE_CONTEXT`), one per volume
/// the filter attaches to, like avscan's `AV_INSTANCE_CONTEXT`. Allocated in
/// the instance-setup callback with `FltAllocateContext(..,
/// FLT_INSTANCE_CONTEXT, size_of::<InstanceContext>(), NonPagedPoolNx, ..)`
/// (as avscan does).
#[repr(C)]
pub struct InstanceContext {
    /// The volume (`FltObjects->Volume`), an opaque Filter Manager handle.
    pub volume: PFLT_VOLUME,
    /// The instance (`FltObjects->Instance`).
    pub instance: PFLT_INSTANCE,
    /// The volume's file system (`FLT_FSTYPE_NTFS`, ...).
    pub filesystem_type: FLT_FILESYSTEM_TYPE,
    /// The volume serial number, the first part of every [`FileKey`] on it.
    pub volume_serial: u64,
    /// The per-volume file-id verdict table (avscan's
    /// `FileStateCacheTable`), only on file systems with stable file ids
    /// (avscan: NTFS, ReFS, CSVFS), else null. Freed by the
    /// instance-context cleanup callback.
    pub file_table: *mut c_void,
}

// ---------------------------------------------------------------------------
// Pool tags
// ---------------------------------------------------------------------------

/// The pool tag that tools (`!pool`, `!poolused`, PoolMon) display as the
/// four characters `display`.
///
/// In C a tag is a multi-character constant written *reversed*: avscan's
/// `AV_STREAM_CONTEXT_TAG 'cSvA'`. MSVC gives `'abcd'` the value
/// `'a' << 24 | 'b' << 16 | 'c' << 8 | 'd'`, so `'cSvA'` = `0x6353_7641`;
/// x64 stores that `ULONG` little-endian, as the bytes `41 76 53 63` =
/// `"AvSc"`, which is what the tools print. Hence the tag displayed as
/// `display` is `u32::from_le_bytes(display)`, the value the WDK source
/// would write as the reversed literal.
#[must_use]
pub const fn pool_tag(display: [u8; 4]) -> u32 {
    u32::from_le_bytes(display)
}

/// Pool tag of [`StreamContext`] allocations, displayed `TAgS` (C literal
/// `'SgAT'` = `0x5367_4154`).
pub const STREAM_CONTEXT_TAG: u32 = pool_tag(*b"TAgS");
/// Pool tag of [`InstanceContext`] allocations, displayed `TAgI` (C literal
/// `'IgAT'` = `0x4967_4154`).
pub const INSTANCE_CONTEXT_TAG: u32 = pool_tag(*b"TAgI");

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

/// Operations registered, without the terminator.
pub const OPERATION_COUNT: usize = 5;
/// Length of [`operation_registration`]'s table, terminator included.
pub const OPERATION_TABLE_LEN: usize = OPERATION_COUNT + 1;
/// Context types registered, without the terminator.
pub const CONTEXT_COUNT: usize = 2;
/// Length of [`context_registration`]'s table, terminator included.
pub const CONTEXT_TABLE_LEN: usize = CONTEXT_COUNT + 1;

/// `FLT_OPERATION_REGISTRATION.MajorFunction` is a `UCHAR`; windows-sys
/// gives the `IRP_MJ_*` codes as `u32` and `IRP_MJ_OPERATION_END` as `u16`.
/// Stops compilation if a code does not fit.
const fn major(code: u32) -> u8 {
    assert!(code <= u8::MAX as u32, "IRP major function code above 0xFF");
    code as u8
}

/// `FLT_CONTEXT_REGISTRATION.ContextType` is a `USHORT`
/// (`FLT_CONTEXT_TYPE`); windows-sys gives the types as `u32`.
const fn context_type(value: u32) -> u16 {
    assert!(value <= u16::MAX as u32, "FLT_CONTEXT_TYPE above 0xFFFF");
    value as u16
}

const fn operation(
    major_function: u32,
    pre: PFLT_PRE_OPERATION_CALLBACK,
    post: PFLT_POST_OPERATION_CALLBACK,
) -> FLT_OPERATION_REGISTRATION {
    FLT_OPERATION_REGISTRATION {
        MajorFunction: major(major_function),
        // 0 for every entry, as in avscan (see the module documentation: no
        // SKIP_PAGING_IO, SKIP_CACHED_IO or SKIP_NON_CACHED_NON_PAGING_IO).
        Flags: 0,
        PreOperation: pre,
        PostOperation: post,
        Reserved1: core::ptr::null_mut(),
    }
}

/// The `FLT_OPERATION_REGISTRATION` array: create (pre + post), cleanup
/// (pre), write (pre), set-information (pre), file-system control (pre),
/// then the `IRP_MJ_OPERATION_END` terminator. See the module documentation
/// for each choice.
#[must_use]
pub const fn operation_registration(
    callbacks: &FilterCallbacks,
) -> [FLT_OPERATION_REGISTRATION; OPERATION_TABLE_LEN] {
    [
        operation(
            IRP_MJ_CREATE,
            Some(callbacks.pre_create),
            Some(callbacks.post_create),
        ),
        operation(IRP_MJ_CLEANUP, Some(callbacks.pre_cleanup), None),
        operation(IRP_MJ_WRITE, Some(callbacks.pre_write), None),
        operation(
            IRP_MJ_SET_INFORMATION,
            Some(callbacks.pre_set_information),
            None,
        ),
        operation(
            IRP_MJ_FILE_SYSTEM_CONTROL,
            Some(callbacks.pre_file_system_control),
            None,
        ),
        // `{ IRP_MJ_OPERATION_END }`: the rest of the entry zero.
        operation(IRP_MJ_OPERATION_END as u32, None, None),
    ]
}

const fn context(
    kind: u32,
    cleanup: PFLT_CONTEXT_CLEANUP_CALLBACK,
    size: usize,
    pool_tag: u32,
) -> FLT_CONTEXT_REGISTRATION {
    FLT_CONTEXT_REGISTRATION {
        ContextType: context_type(kind),
        // No FLTFL_CONTEXT_REGISTRATION_NO_EXACT_SIZE_MATCH: every allocation
        // of this type has exactly `size` bytes (avscan: flags 0).
        Flags: 0,
        ContextCleanupCallback: cleanup,
        Size: size,
        PoolTag: pool_tag,
        // Filter Manager allocates and frees the contexts itself (avscan
        // registers no allocate/free callbacks either).
        ContextAllocateCallback: None,
        ContextFreeCallback: None,
        Reserved1: core::ptr::null_mut(),
    }
}

/// The `FLT_CONTEXT_REGISTRATION` array: the stream context and the
/// instance context with their sizes, pool tags and cleanup callbacks, then
/// the `FLT_CONTEXT_END` terminator.
#[must_use]
pub const fn context_registration(
    callbacks: &FilterCallbacks,
) -> [FLT_CONTEXT_REGISTRATION; CONTEXT_TABLE_LEN] {
    [
        context(
            FLT_STREAM_CONTEXT,
            Some(callbacks.stream_context_cleanup),
            size_of::<StreamContext>(),
            STREAM_CONTEXT_TAG,
        ),
        context(
            FLT_INSTANCE_CONTEXT,
            Some(callbacks.instance_context_cleanup),
            size_of::<InstanceContext>(),
            INSTANCE_CONTEXT_TAG,
        ),
        // `{ FLT_CONTEXT_END }`: the rest of the entry zero.
        context(FLT_CONTEXT_END, None, 0, 0),
    ]
}

/// The `FLT_REGISTRATION` passed to `FltRegisterFilter`, pointing at the two
/// tables. They must be `'static` because Filter Manager keeps the pointers.
#[must_use]
pub const fn filter_registration(
    contexts: &'static [FLT_CONTEXT_REGISTRATION; CONTEXT_TABLE_LEN],
    operations: &'static [FLT_OPERATION_REGISTRATION; OPERATION_TABLE_LEN],
    callbacks: &FilterCallbacks,
) -> FLT_REGISTRATION {
    // `USHORT Size`: 112 on x64, asserted by thinagent-km-sys.
    const SIZE: u16 = {
        assert!(size_of::<FLT_REGISTRATION>() <= u16::MAX as usize);
        size_of::<FLT_REGISTRATION>() as u16
    };
    // `USHORT Version`: FLT_REGISTRATION_VERSION is 0x0203 in windows-sys
    // 0.61.2, the version whose structure ends with
    // SectionNotificationCallback, as windows-sys's does.
    const VERSION: u16 = {
        assert!(FLT_REGISTRATION_VERSION <= u16::MAX as u32);
        FLT_REGISTRATION_VERSION as u16
    };
    FLT_REGISTRATION {
        Size: SIZE,
        Version: VERSION,
        // 0, as avscan: the filter supports being stopped (no
        // FLTFL_REGISTRATION_DO_NOT_SUPPORT_SERVICE_STOP), and it does not
        // attach to named pipes / mailslots or DAX volumes.
        Flags: 0,
        ContextRegistration: contexts.as_ptr(),
        OperationRegistration: operations.as_ptr(),
        FilterUnloadCallback: Some(callbacks.filter_unload),
        InstanceSetupCallback: Some(callbacks.instance_setup),
        InstanceQueryTeardownCallback: Some(callbacks.instance_query_teardown),
        InstanceTeardownStartCallback: Some(callbacks.instance_teardown_start),
        InstanceTeardownCompleteCallback: Some(callbacks.instance_teardown_complete),
        // No name provider: the filter only asks for names
        // (FltGetFileNameInformation), it does not generate or normalize
        // them for others.
        GenerateFileNameCallback: None,
        NormalizeNameComponentCallback: None,
        NormalizeContextCleanupCallback: None,
        // No KTM enlistment and no data-scan sections (module documentation).
        TransactionNotificationCallback: None,
        NormalizeNameComponentExCallback: None,
        SectionNotificationCallback: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::collections::BTreeSet;
    use thinagent_km_sys::fltmgr::Minifilters::{
        FLT_PREOP_SUCCESS_NO_CALLBACK, FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_PREOP_SYNCHRONIZE,
        FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO,
    };
    use thinagent_km_sys::fltmgr::{
        FLT_OPERATION_REGISTRATION_SIZE_X64, FLT_REGISTRATION_SIZE_X64,
    };

    // Test callbacks: safe functions (a safe `extern "system" fn` coerces to
    // the `unsafe` pointer type), each with a distinct body so the compiler
    // cannot fold two into one address.
    extern "system" fn t_pre_create(
        _: *mut FLT_CALLBACK_DATA,
        _: *const FLT_RELATED_OBJECTS,
        _: *mut *mut c_void,
    ) -> FLT_PREOP_CALLBACK_STATUS {
        FLT_PREOP_SYNCHRONIZE
    }
    extern "system" fn t_post_create(
        _: *mut FLT_CALLBACK_DATA,
        _: *const FLT_RELATED_OBJECTS,
        _: *const c_void,
        _: u32,
    ) -> FLT_POSTOP_CALLBACK_STATUS {
        0x11
    }
    extern "system" fn t_pre_cleanup(
        _: *mut FLT_CALLBACK_DATA,
        _: *const FLT_RELATED_OBJECTS,
        _: *mut *mut c_void,
    ) -> FLT_PREOP_CALLBACK_STATUS {
        FLT_PREOP_SUCCESS_WITH_CALLBACK
    }
    extern "system" fn t_pre_write(
        _: *mut FLT_CALLBACK_DATA,
        _: *const FLT_RELATED_OBJECTS,
        _: *mut *mut c_void,
    ) -> FLT_PREOP_CALLBACK_STATUS {
        FLT_PREOP_SUCCESS_NO_CALLBACK
    }
    extern "system" fn t_pre_set_information(
        _: *mut FLT_CALLBACK_DATA,
        _: *const FLT_RELATED_OBJECTS,
        _: *mut *mut c_void,
    ) -> FLT_PREOP_CALLBACK_STATUS {
        0x21
    }
    extern "system" fn t_pre_fs_control(
        _: *mut FLT_CALLBACK_DATA,
        _: *const FLT_RELATED_OBJECTS,
        _: *mut *mut c_void,
    ) -> FLT_PREOP_CALLBACK_STATUS {
        0x22
    }
    extern "system" fn t_unload(_: u32) -> NTSTATUS {
        0x31
    }
    extern "system" fn t_instance_setup(
        _: *const FLT_RELATED_OBJECTS,
        _: u32,
        _: u32,
        _: FLT_FILESYSTEM_TYPE,
    ) -> NTSTATUS {
        0x32
    }
    extern "system" fn t_query_teardown(_: *const FLT_RELATED_OBJECTS, _: u32) -> NTSTATUS {
        0x33
    }
    static TEARDOWN_CALLS: AtomicU32 = AtomicU32::new(0);
    extern "system" fn t_teardown_start(_: *const FLT_RELATED_OBJECTS, reason: u32) {
        TEARDOWN_CALLS.fetch_add(reason, Ordering::Relaxed);
    }
    extern "system" fn t_teardown_complete(_: *const FLT_RELATED_OBJECTS, reason: u32) {
        TEARDOWN_CALLS.fetch_add(reason << 8, Ordering::Relaxed);
    }
    static CLEANUP_CALLS: AtomicU32 = AtomicU32::new(0);
    extern "system" fn t_stream_cleanup(_: PFLT_CONTEXT, kind: u16) {
        CLEANUP_CALLS.fetch_add(u32::from(kind), Ordering::Relaxed);
    }
    extern "system" fn t_instance_cleanup(_: PFLT_CONTEXT, kind: u16) {
        CLEANUP_CALLS.fetch_add(u32::from(kind) << 8, Ordering::Relaxed);
    }

    const CALLBACKS: FilterCallbacks = FilterCallbacks {
        pre_create: t_pre_create,
        post_create: t_post_create,
        pre_cleanup: t_pre_cleanup,
        pre_write: t_pre_write,
        pre_set_information: t_pre_set_information,
        pre_file_system_control: t_pre_fs_control,
        filter_unload: t_unload,
        instance_setup: t_instance_setup,
        instance_query_teardown: t_query_teardown,
        instance_teardown_start: t_teardown_start,
        instance_teardown_complete: t_teardown_complete,
        stream_context_cleanup: t_stream_cleanup,
        instance_context_cleanup: t_instance_cleanup,
    };

    // The tables are usable in constant initialisers, as the Windows part
    // needs for its statics.
    const OPERATIONS: [FLT_OPERATION_REGISTRATION; OPERATION_TABLE_LEN] =
        operation_registration(&CALLBACKS);
    const CONTEXTS: [FLT_CONTEXT_REGISTRATION; CONTEXT_TABLE_LEN] =
        context_registration(&CALLBACKS);

    fn addr_pre(f: PFLT_PRE_OPERATION_CALLBACK) -> Option<usize> {
        f.map(|f| f as usize)
    }
    fn addr_post(f: PFLT_POST_OPERATION_CALLBACK) -> Option<usize> {
        f.map(|f| f as usize)
    }
    fn pre(f: PreOperationCallback) -> Option<usize> {
        Some(f as usize)
    }

    /// The entry registering `major`; fails if there is not exactly one.
    fn entry(table: &[FLT_OPERATION_REGISTRATION], major: u32) -> &FLT_OPERATION_REGISTRATION {
        let mut found = table.iter().filter(|e| u32::from(e.MajorFunction) == major);
        let first = found.next().expect("major function registered");
        assert!(found.next().is_none(), "major {major:#x} registered twice");
        first
    }

    #[test]
    fn structure_sizes_are_the_x64_header_sizes() {
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(size_of::<FLT_REGISTRATION>(), FLT_REGISTRATION_SIZE_X64);
            assert_eq!(
                size_of::<FLT_OPERATION_REGISTRATION>(),
                FLT_OPERATION_REGISTRATION_SIZE_X64
            );
            // USHORT ContextType (2, at 0), USHORT Flags (2, at 2), pad 4,
            // ContextCleanupCallback (8, at 8), SIZE_T Size (8, at 16),
            // ULONG PoolTag (4, at 24), pad 4, ContextAllocateCallback (8, at
            // 32), ContextFreeCallback (8, at 40), PVOID Reserved1 (8, at 48)
            // => 56.
            assert_eq!(size_of::<FLT_CONTEXT_REGISTRATION>(), 56);
            assert_eq!(core::mem::offset_of!(FLT_CONTEXT_REGISTRATION, PoolTag), 24);
        }
        assert_eq!(OPERATIONS.len(), OPERATION_TABLE_LEN);
        assert_eq!(CONTEXTS.len(), CONTEXT_TABLE_LEN);
    }

    #[test]
    fn operation_table_registers_each_major_function_once_and_ends_with_the_terminator() {
        let (last, body) = OPERATIONS.split_last().unwrap();
        assert_eq!(last.MajorFunction, 0x80, "IRP_MJ_OPERATION_END is 0x80");
        assert_eq!(last.Flags, 0);
        assert!(last.PreOperation.is_none() && last.PostOperation.is_none());
        assert!(last.Reserved1.is_null());

        let majors: std::vec::Vec<u8> = body.iter().map(|e| e.MajorFunction).collect();
        // avscan's order; the numbers are wdm.h's IRP_MJ_* codes.
        assert_eq!(majors, [0x00, 0x12, 0x04, 0x06, 0x0D]);
        let unique: BTreeSet<u8> = majors.iter().copied().collect();
        assert_eq!(unique.len(), OPERATION_COUNT);
        assert!(!majors.contains(&0x80), "terminator only at the end");
        for major in [
            IRP_MJ_CREATE,
            IRP_MJ_CLEANUP,
            IRP_MJ_WRITE,
            IRP_MJ_SET_INFORMATION,
            IRP_MJ_FILE_SYSTEM_CONTROL,
        ] {
            let e = entry(&OPERATIONS, major);
            assert!(e.Reserved1.is_null());
            assert!(e.PreOperation.is_some(), "every operation has a pre-op");
        }
    }

    #[test]
    fn operation_entries_carry_the_given_callbacks() {
        let create = entry(&OPERATIONS, IRP_MJ_CREATE);
        assert_eq!(addr_pre(create.PreOperation), pre(t_pre_create));
        assert_eq!(
            addr_post(create.PostOperation),
            Some(t_post_create as PostOperationCallback as usize)
        );

        let cleanup = entry(&OPERATIONS, IRP_MJ_CLEANUP);
        assert_eq!(addr_pre(cleanup.PreOperation), pre(t_pre_cleanup));
        assert!(cleanup.PostOperation.is_none());

        let write = entry(&OPERATIONS, IRP_MJ_WRITE);
        assert_eq!(addr_pre(write.PreOperation), pre(t_pre_write));
        assert!(write.PostOperation.is_none());

        let set_info = entry(&OPERATIONS, IRP_MJ_SET_INFORMATION);
        assert_eq!(addr_pre(set_info.PreOperation), pre(t_pre_set_information));
        assert!(set_info.PostOperation.is_none());

        let fsctl = entry(&OPERATIONS, IRP_MJ_FILE_SYSTEM_CONTROL);
        assert_eq!(addr_pre(fsctl.PreOperation), pre(t_pre_fs_control));
        assert!(fsctl.PostOperation.is_none());

        // Only create has a post-operation: every other callback runs before
        // the operation, at IRQL <= APC_LEVEL, never at DISPATCH_LEVEL.
        let with_post: std::vec::Vec<u8> = OPERATIONS
            .iter()
            .filter(|e| e.PostOperation.is_some())
            .map(|e| e.MajorFunction)
            .collect();
        assert_eq!(with_post, [0x00]);
    }

    #[test]
    fn no_operation_skips_paging_or_cached_io() {
        // A write through a mapped view reaches the file system only as a
        // paging write: skipping paging I/O would miss it (avscan: flags 0).
        let write = entry(&OPERATIONS, IRP_MJ_WRITE);
        assert_eq!(write.Flags & FLTFL_OPERATION_REGISTRATION_SKIP_PAGING_IO, 0);
        for e in &OPERATIONS {
            assert_eq!(e.Flags, 0, "major {:#x}", e.MajorFunction);
        }
    }

    #[test]
    fn context_table_has_stream_and_instance_contexts_and_the_terminator() {
        let stream = &CONTEXTS[0];
        assert_eq!(stream.ContextType, 0x0008, "FLT_STREAM_CONTEXT");
        assert_eq!(stream.Flags, 0);
        assert_eq!(stream.Size, size_of::<StreamContext>());
        assert_eq!(stream.PoolTag, STREAM_CONTEXT_TAG);
        assert_eq!(
            stream.ContextCleanupCallback.map(|f| f as usize),
            Some(t_stream_cleanup as ContextCleanupCallback as usize)
        );

        let instance = &CONTEXTS[1];
        assert_eq!(instance.ContextType, 0x0002, "FLT_INSTANCE_CONTEXT");
        assert_eq!(instance.Flags, 0);
        assert_eq!(instance.Size, size_of::<InstanceContext>());
        assert_eq!(instance.PoolTag, INSTANCE_CONTEXT_TAG);
        assert_eq!(
            instance.ContextCleanupCallback.map(|f| f as usize),
            Some(t_instance_cleanup as ContextCleanupCallback as usize)
        );

        for c in &CONTEXTS[..CONTEXT_COUNT] {
            assert!(c.Size > 0);
            assert!(c.ContextAllocateCallback.is_none() && c.ContextFreeCallback.is_none());
            assert!(c.Reserved1.is_null());
        }

        let end = &CONTEXTS[CONTEXT_COUNT];
        assert_eq!(end.ContextType, 0xFFFF, "FLT_CONTEXT_END");
        assert!(end.ContextCleanupCallback.is_none());
        assert_eq!((end.Size, end.PoolTag, end.Flags), (0, 0, 0));
    }

    #[test]
    fn context_sizes_are_the_x64_layouts() {
        #[cfg(target_pointer_width = "64")]
        {
            // AtomicU32 state (4, at 0), pad 4, FileKey (u64 + [u8; 16] + u64
            // + u64 = 40, at 8), *mut KEVENT (8, at 48) => 56.
            assert_eq!(size_of::<StreamContext>(), 56);
            // PFLT_VOLUME (8, at 0), PFLT_INSTANCE (8, at 8),
            // FLT_FILESYSTEM_TYPE (4, at 16), pad 4, u64 serial (8, at 24),
            // *mut table (8, at 32) => 40.
            assert_eq!(size_of::<InstanceContext>(), 40);
        }
    }

    #[test]
    fn pool_tags_follow_the_msvc_multichar_derivation() {
        // avscan's AV_STREAM_CONTEXT_TAG 'cSvA': MSVC packs the characters
        // big-endian into the int, 0x63_53_76_41, shown by the tools as the
        // little-endian bytes "AvSc".
        let msvc_multichar = |lit: &[u8; 4]| u32::from_be_bytes(*lit);
        assert_eq!(msvc_multichar(b"cSvA"), 0x6353_7641);
        assert_eq!(pool_tag(*b"AvSc"), 0x6353_7641);
        assert_eq!(STREAM_CONTEXT_TAG, msvc_multichar(b"SgAT"));
        assert_eq!(STREAM_CONTEXT_TAG, 0x5367_4154);
        assert_eq!(INSTANCE_CONTEXT_TAG, msvc_multichar(b"IgAT"));
        assert_eq!(INSTANCE_CONTEXT_TAG, 0x4967_4154);
        assert_eq!(STREAM_CONTEXT_TAG.to_le_bytes(), *b"TAgS");
        assert_ne!(STREAM_CONTEXT_TAG, INSTANCE_CONTEXT_TAG);
    }

    #[test]
    fn filter_registration_points_at_the_tables_and_carries_the_callbacks() {
        let operations: &'static _ = Box::leak(Box::new(operation_registration(&CALLBACKS)));
        let contexts: &'static _ = Box::leak(Box::new(context_registration(&CALLBACKS)));
        let reg = filter_registration(contexts, operations, &CALLBACKS);

        assert_eq!(usize::from(reg.Size), size_of::<FLT_REGISTRATION>());
        #[cfg(target_pointer_width = "64")]
        assert_eq!(reg.Size, 112);
        assert_eq!(reg.Version, 0x0203, "FLT_REGISTRATION_VERSION_0203");
        assert_eq!(reg.Flags, 0);
        assert_eq!(reg.OperationRegistration, operations.as_ptr());
        assert_eq!(reg.ContextRegistration, contexts.as_ptr());

        assert_eq!(
            reg.FilterUnloadCallback.map(|f| f as usize),
            Some(t_unload as FilterUnloadCallback as usize)
        );
        assert_eq!(
            reg.InstanceSetupCallback.map(|f| f as usize),
            Some(t_instance_setup as InstanceSetupCallback as usize)
        );
        assert_eq!(
            reg.InstanceQueryTeardownCallback.map(|f| f as usize),
            Some(t_query_teardown as InstanceQueryTeardownCallback as usize)
        );
        assert_eq!(
            reg.InstanceTeardownStartCallback.map(|f| f as usize),
            Some(t_teardown_start as InstanceTeardownCallback as usize)
        );
        assert_eq!(
            reg.InstanceTeardownCompleteCallback.map(|f| f as usize),
            Some(t_teardown_complete as InstanceTeardownCallback as usize)
        );
        assert!(reg.GenerateFileNameCallback.is_none());
        assert!(reg.NormalizeNameComponentCallback.is_none());
        assert!(reg.NormalizeContextCleanupCallback.is_none());
        assert!(reg.TransactionNotificationCallback.is_none());
        assert!(reg.NormalizeNameComponentExCallback.is_none());
        assert!(reg.SectionNotificationCallback.is_none());
    }

    #[test]
    fn teardown_and_cleanup_callbacks_are_distinct_functions() {
        // Two callbacks of one type must not be swapped by the builder.
        assert_ne!(
            t_teardown_start as InstanceTeardownCallback as usize,
            t_teardown_complete as InstanceTeardownCallback as usize
        );
        assert_ne!(
            t_stream_cleanup as ContextCleanupCallback as usize,
            t_instance_cleanup as ContextCleanupCallback as usize
        );
        // Calling the test functions shows their bodies differ (and keeps
        // the compiler from folding them).
        t_teardown_start(core::ptr::null(), 1);
        t_teardown_complete(core::ptr::null(), 1);
        t_stream_cleanup(core::ptr::null_mut(), 1);
        t_instance_cleanup(core::ptr::null_mut(), 1);
        assert_eq!(TEARDOWN_CALLS.load(Ordering::Relaxed), 0x101);
        assert_eq!(CLEANUP_CALLS.load(Ordering::Relaxed), 0x101);
    }

    #[test]
    fn stream_context_tracks_the_scan_state() {
        let key = FileKey::with_u64_id(0xABCD, 42, 100, 7);
        let ctx = StreamContext::new(key, core::ptr::null_mut());
        assert_eq!(ctx.state(), StreamScanState::Unknown);
        assert!(ctx.state().needs_scan());
        ctx.set_state(StreamScanState::Scanning);
        assert!(!ctx.state().needs_scan());
        ctx.set_state(StreamScanState::Clean);
        assert!(!ctx.state().needs_scan());
        assert_eq!(ctx.mark_modified(), StreamScanState::Clean);
        assert_eq!(ctx.state(), StreamScanState::Modified);
        assert!(ctx.state().needs_scan());
        ctx.set_state(StreamScanState::Infected);
        assert!(!ctx.state().needs_scan());
        assert_eq!(ctx.file_key, key);
        assert!(ctx.scan_event.is_null());
        // A verdict only lands on a stream still being scanned.
        ctx.set_state(StreamScanState::Scanning);
        assert!(ctx.finish_scan(StreamScanState::Clean));
        assert_eq!(ctx.state(), StreamScanState::Clean);
        ctx.set_state(StreamScanState::Scanning);
        ctx.mark_modified();
        assert!(!ctx.finish_scan(StreamScanState::Clean));
        assert_eq!(ctx.state(), StreamScanState::Modified);
        ctx.set_state(StreamScanState::Infected);
        // A value no state has reads as Modified, forcing a rescan.
        assert_eq!(StreamScanState::from_u32(99), StreamScanState::Modified);
        for s in [
            StreamScanState::Unknown,
            StreamScanState::Infected,
            StreamScanState::Clean,
            StreamScanState::Modified,
            StreamScanState::Scanning,
        ] {
            assert_eq!(StreamScanState::from_u32(s as u32), s);
        }
    }
}
