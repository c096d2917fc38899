//! The minifilter itself: registration with Filter Manager and every
//! callback in [`crate::filter_registration`]'s tables.
//!
//! The rules follow the `avscan` sample (Windows-driver-samples
//! `filesys/miniFilter/avscan/filter/avscan.c`); every decision about *which*
//! open is checked is [`thinagent_guest::OpenPolicy::decide`]'s, every
//! verdict comes from [`super::session_worker::query`] or the verdict
//! cache. See docs/windows.md, "Create path".
//!
//! * **Pre-create** (PASSIVE_LEVEL) skips what cannot or must not be
//!   scanned before the file system runs: `FILE_DIRECTORY_FILE`,
//!   `SL_OPEN_TARGET_DIRECTORY`, `SL_OPEN_PAGING_FILE`, `FO_VOLUME_OPEN`,
//!   stack file objects, prefetch opens (`GUID_ECP_PREFETCH_OPEN` from kernel
//!   mode), kernel-mode requestors unless `scanKernelOpens`, and the session
//!   worker's own I/O.
//! * **Post-create** (PASSIVE_LEVEL, same thread) skips failed and
//!   `STATUS_REPARSE` opens, directories, alternate data streams and
//!   transacted opens, builds the `FileEvent`, asks the policy, then the
//!   stream context and the global [`VerdictCache`], then the host. A denied
//!   open is cancelled with `FltCancelFileOpen` and fails with `denyStatus`.
//! * **Pre-write / pre-set-information / pre-FSCTL** (IRQL ≤ APC_LEVEL) mark
//!   the stream modified and drop its cached verdict.
//! * **Pre-cleanup** (PASSIVE_LEVEL) rescans a modified stream when a handle
//!   with write access closes.

use core::ffi::c_void;
use core::sync::atomic::{AtomicIsize, Ordering};

use thinagent_guest::log::routine;
use thinagent_guest::{
    CachedVerdict, FileKey, Level, OpenDecision, OpenRequest, PathRef, VerdictCache, VerdictSource,
};
use thinagent_km_sys::fltmgr::Minifilters::{
    FLT_CALLBACK_DATA, FLT_CONTEXT_REGISTRATION, FLT_FILE_NAME_INFORMATION,
    FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_OPENED, FLT_FILE_NAME_QUERY_DEFAULT,
    FLT_INSTANCE_CONTEXT, FLT_OPERATION_REGISTRATION, FLT_POSTOP_CALLBACK_STATUS,
    FLT_POSTOP_FINISHED_PROCESSING, FLT_PREOP_CALLBACK_STATUS, FLT_PREOP_SUCCESS_NO_CALLBACK,
    FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_REGISTRATION, FLT_RELATED_OBJECTS,
    FLT_SET_CONTEXT_KEEP_IF_EXISTS, FLT_STREAM_CONTEXT, FLTFL_FILTER_UNLOAD_MANDATORY,
    FLTFL_POST_OPERATION_DRAINING, FltAllocateContext, FltCancelFileOpen,
    FltCancellableWaitForSingleObject, FltFindExtraCreateParameter, FltGetEcpListFromCallbackData,
    FltGetFileNameInformation, FltGetInstanceContext, FltGetRequestorProcess,
    FltGetRequestorProcessId, FltGetStreamContext, FltIsDirectory, FltIsEcpFromUserMode,
    FltParseFileNameInformation, FltQueryInformationFile, FltQueryVolumeInformation,
    FltRegisterFilter, FltReleaseContext, FltReleaseFileNameInformation, FltSetInstanceContext,
    FltSetStreamContext, FltStartFiltering, FltUnregisterFilter, PFLT_CONTEXT, PFLT_FILTER,
    PFLT_INSTANCE,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::{
    DRIVER_OBJECT, ECP_LIST, FILE_OBJECT, KEVENT, NonPagedPoolNx,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Storage::FileSystem::{
    FILE_BASIC_INFORMATION, FILE_DIRECTORY_FILE, FILE_ID_INFORMATION, FILE_STANDARD_INFORMATION,
    FileAllocationInformation, FileBasicInformation, FileEndOfFileInformation,
    FileFsVolumeInformation, FileIdInformation, FileInternalInformation, FileStandardInformation,
    FileValidDataLengthInformation, GUID_ECP_PREFETCH_OPEN, SeLocateProcessImageName,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    ExAllocatePool2, ExFreePool, ExFreePoolWithTag, FILE_FS_VOLUME_INFORMATION, FO_VOLUME_OPEN,
    IoGetStackLimits, KernelMode, SL_OPEN_PAGING_FILE, SL_OPEN_TARGET_DIRECTORY,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_OVERFLOW, STATUS_FLT_CONTEXT_ALREADY_DEFINED, STATUS_FLT_DO_NOT_ATTACH,
    STATUS_FLT_DO_NOT_DETACH, STATUS_REPARSE, UNICODE_STRING,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Storage::InstallableFileSystems::{
    FLT_FILESYSTEM_TYPE, FLT_FSTYPE_RAW,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::System::IO::IO_STATUS_BLOCK;
use thinagent_km_sys::fltmgr::windows_sys::Win32::System::Ioctl::{
    FILE_DEVICE_DISK_FILE_SYSTEM, FSCTL_DUPLICATE_EXTENTS_TO_FILE, FSCTL_OFFLOAD_WRITE,
    FSCTL_SET_ZERO_DATA, FSCTL_WRITE_RAW_ENCRYPTED,
};
use thinagent_km_sys::io_params::{
    FLT_PARAMETERS_FSCTL_COMMON, FLT_PARAMETERS_SET_FILE_INFORMATION,
};
use thinagent_protocol::{CreateDisposition, Decision, EventKind, FileIdentity};

use super::agent::{self, Agent, AgentStats};
use super::kernel::{
    self, EventKind as KEventKind, KernelEvent, POOL_FLAG_NON_PAGED, STATUS_SUCCESS, SpinLock,
    Utf16, nt_success, relative_100ns, unicode_units,
};
use super::session_worker::{self, Answer, LocalReason, OpenQuery};
use crate::filter_registration::{
    CONTEXT_TABLE_LEN, FilterCallbacks, InstanceContext, OPERATION_TABLE_LEN, StreamContext,
    StreamScanState, context_registration, filter_registration, operation_registration, pool_tag,
};

// ---------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------

/// A static that Filter Manager only reads. `FLT_REGISTRATION` and the
/// tables hold raw pointers, so they are not `Sync` by themselves.
#[repr(transparent)]
struct ReadOnly<T>(T);
// SAFETY: written once by the compiler (const initialisers), never
// mutated; Filter Manager only reads them.
unsafe impl<T> Sync for ReadOnly<T> {}

static CALLBACKS: FilterCallbacks = FilterCallbacks {
    pre_create,
    post_create,
    pre_cleanup,
    pre_write,
    pre_set_information,
    pre_file_system_control,
    filter_unload,
    instance_setup,
    instance_query_teardown,
    instance_teardown_start,
    instance_teardown_complete,
    stream_context_cleanup,
    instance_context_cleanup,
};
static OPERATIONS: ReadOnly<[FLT_OPERATION_REGISTRATION; OPERATION_TABLE_LEN]> =
    ReadOnly(operation_registration(&CALLBACKS));
static CONTEXTS: ReadOnly<[FLT_CONTEXT_REGISTRATION; CONTEXT_TABLE_LEN]> =
    ReadOnly(context_registration(&CALLBACKS));
static REGISTRATION: ReadOnly<FLT_REGISTRATION> =
    ReadOnly(filter_registration(&CONTEXTS.0, &OPERATIONS.0, &CALLBACKS));

/// The `PFLT_FILTER` from `FltRegisterFilter`, 0 when not registered.
static FILTER: AtomicIsize = AtomicIsize::new(0);

/// Verdict cache entries: 4096 × 64 bytes = 256 KiB of non-paged image
/// data, one table for every volume (keyed by volume serial + file id, in
/// place of avscan's per-instance file-id tables).
const CACHE_ENTRIES: usize = 4096;
static CACHE: SpinLock<VerdictCache<CACHE_ENTRIES>> = SpinLock::new(VerdictCache::new());

/// Pool tag of the per-stream scan event, displayed `TAgE`.
const SCAN_EVENT_TAG: u32 = pool_tag(*b"TAgE");

/// The registered filter handle (any IRQL).
pub(super) fn filter() -> PFLT_FILTER {
    FILTER.load(Ordering::Acquire)
}

/// `FltRegisterFilter` with the static tables (PASSIVE_LEVEL, DriverEntry).
/// Also initialises the session worker's hub and the verdict cache's lock.
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "the driver object is only handed to FltRegisterFilter, as the contract with driver_entry fixes"
)]
pub fn register(driver: *mut DRIVER_OBJECT) -> Result<(), NTSTATUS> {
    session_worker::init();
    CACHE.init();
    let mut handle: PFLT_FILTER = 0;
    // SAFETY: FltRegisterFilter (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltregisterfilter):
    // the driver object DriverEntry got; the registration and its tables are
    // statics, as Filter Manager keeps pointers into them. PASSIVE_LEVEL.
    let status = unsafe { FltRegisterFilter(driver, &REGISTRATION.0, &mut handle) };
    if !nt_success(status) {
        crate::klog_status!(
            Level::Error,
            routine::DRIVER_ENTRY,
            status,
            "FltRegisterFilter failed"
        );
        return Err(status);
    }
    FILTER.store(handle, Ordering::Release);
    Ok(())
}

/// `FltStartFiltering` (PASSIVE_LEVEL, DriverEntry after [`register`]).
pub fn start_filtering() -> Result<(), NTSTATUS> {
    let f = filter();
    if f == 0 {
        return Err(kernel::STATUS_INVALID_PARAMETER);
    }
    // SAFETY: FltStartFiltering (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltstartfiltering):
    // a registered filter. PASSIVE_LEVEL.
    let status = unsafe { FltStartFiltering(f) };
    if !nt_success(status) {
        crate::klog_status!(
            Level::Error,
            routine::DRIVER_ENTRY,
            status,
            "FltStartFiltering failed"
        );
        return Err(status);
    }
    crate::klog!(Level::Info, routine::DRIVER_ENTRY, "filtering started");
    Ok(())
}

/// `FltUnregisterFilter` (PASSIVE_LEVEL, unload; idempotent). Returns after
/// every instance is torn down and every callback has returned.
pub fn unregister() {
    let f = FILTER.swap(0, Ordering::AcqRel);
    if f != 0 {
        // SAFETY: FltUnregisterFilter (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltunregisterfilter):
        // the handle FltRegisterFilter returned, unregistered once (swap).
        // PASSIVE_LEVEL.
        unsafe { FltUnregisterFilter(f) };
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// A referenced Filter Manager context, released on drop.
struct ContextRef(PFLT_CONTEXT);

impl ContextRef {
    /// The stream context behind the reference (any IRQL; non-paged).
    fn stream(&self) -> &StreamContext {
        // SAFETY: only built from stream contexts of our registered size,
        // initialised before FltSetStreamContext published them.
        unsafe { &*self.0.cast::<StreamContext>() }
    }
    /// The instance context behind the reference (any IRQL; non-paged).
    fn instance(&self) -> &InstanceContext {
        // SAFETY: only built from instance contexts, initialised before
        // FltSetInstanceContext published them.
        unsafe { &*self.0.cast::<InstanceContext>() }
    }
}

impl Drop for ContextRef {
    fn drop(&mut self) {
        // SAFETY: FltReleaseContext (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltreleasecontext):
        // drops the reference this value holds. IRQL <= DISPATCH_LEVEL.
        unsafe { FltReleaseContext(self.0) };
    }
}

/// The stream context of `file_object`, if one is set (IRQL ≤ APC_LEVEL).
fn get_stream_context(
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
) -> Option<ContextRef> {
    let mut ctx: PFLT_CONTEXT = core::ptr::null_mut();
    // SAFETY: FltGetStreamContext (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetstreamcontext):
    // instance and file object of the current operation. IRQL <= APC_LEVEL.
    let status = unsafe { FltGetStreamContext(instance, file_object, &mut ctx) };
    // `then`, not `then_some`: `then_some(ContextRef(ctx))` builds the
    // guard even on a miss, and its Drop then calls FltReleaseContext(NULL),
    // which bug-checks (the emulated Filter Manager caught it on the first
    // open of every file).
    (nt_success(status) && !ctx.is_null()).then(|| ContextRef(ctx))
}

/// The instance context of `instance`, if set (IRQL ≤ APC_LEVEL).
fn get_instance_context(instance: PFLT_INSTANCE) -> Option<ContextRef> {
    let mut ctx: PFLT_CONTEXT = core::ptr::null_mut();
    // SAFETY: FltGetInstanceContext (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetinstancecontext):
    // a live instance. IRQL <= APC_LEVEL.
    let status = unsafe { FltGetInstanceContext(instance, &mut ctx) };
    // `then`, not `then_some`: see get_stream_context.
    (nt_success(status) && !ctx.is_null()).then(|| ContextRef(ctx))
}

/// Allocates a non-paged context of type `kind` for `filter` and
/// initialises it with `init()` (called only once the allocation
/// succeeded); `None` if Filter Manager has no memory. The context is not
/// published yet: the caller sets it, and dropping the reference frees it
/// through the cleanup callback. IRQL <= APC_LEVEL.
///
/// # Safety
///
/// `kind` is registered (`filter_registration`'s context table) with the
/// size of `T`, and `T` is the type [`ContextRef`]'s accessors read for it
/// (`FLT_STREAM_CONTEXT` -> [`StreamContext`], `FLT_INSTANCE_CONTEXT` ->
/// [`InstanceContext`]).
unsafe fn allocate_context<T>(
    filter: PFLT_FILTER,
    kind: u16,
    init: impl FnOnce() -> T,
) -> Option<ContextRef> {
    let mut raw: PFLT_CONTEXT = core::ptr::null_mut();
    // SAFETY: FltAllocateContext (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltallocatecontext):
    // our filter, a context type with exactly its registered size (the
    // caller's guarantee), non-paged (the write path touches stream
    // contexts at APC_LEVEL). IRQL <= APC_LEVEL.
    let status =
        unsafe { FltAllocateContext(filter, kind, size_of::<T>(), NonPagedPoolNx, &mut raw) };
    if !nt_success(status) || raw.is_null() {
        return None;
    }
    // SAFETY: `raw` is a fresh allocation of size_of::<T>() bytes, suitably
    // aligned by Filter Manager (pool alignment).
    unsafe { raw.cast::<T>().write(init()) };
    Some(ContextRef(raw))
}

/// A file's name from `FltGetFileNameInformation`, parsed, released on drop.
struct FileName(*mut FLT_FILE_NAME_INFORMATION);

impl FileName {
    /// The normalized name, or the opened name if normalizing fails
    /// (PASSIVE_LEVEL in post-create / pre-cleanup).
    fn query(data: *const FLT_CALLBACK_DATA) -> Result<Self, NTSTATUS> {
        let mut status = STATUS_SUCCESS;
        for format in [FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_OPENED] {
            let mut info: *mut FLT_FILE_NAME_INFORMATION = core::ptr::null_mut();
            // SAFETY: FltGetFileNameInformation (fltkernel.h,
            // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetfilenameinformation):
            // the current operation's callback data; in post-create the open
            // succeeded, so the name can be queried. IRQL <= APC_LEVEL.
            status = unsafe {
                FltGetFileNameInformation(data, format | FLT_FILE_NAME_QUERY_DEFAULT, &mut info)
            };
            if nt_success(status) && !info.is_null() {
                // SAFETY: FltParseFileNameInformation (fltkernel.h,
                // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltparsefilenameinformation):
                // fills Volume/Stream/FinalComponent... of the structure we own.
                let parsed = unsafe { FltParseFileNameInformation(info) };
                let name = FileName(info);
                if !nt_success(parsed) {
                    return Err(parsed);
                }
                return Ok(name);
            }
        }
        Err(status)
    }

    /// The structure (its buffers are paged: IRQL <= APC_LEVEL to read them).
    fn info(&self) -> &FLT_FILE_NAME_INFORMATION {
        // SAFETY: a referenced name structure until drop.
        unsafe { &*self.0 }
    }

    /// The full name (volume device name + path + stream); paged, read at
    /// IRQL <= APC_LEVEL.
    fn units(&self) -> &[u16] {
        // SAFETY: Filter Manager's buffer, valid while referenced.
        unsafe { unicode_units(&self.info().Name) }
    }

    /// Whether it names an alternate data stream (avscan's
    /// `AvIsStreamAlternate`): a stream component other than `::$DATA`.
    fn is_alternate_stream(&self) -> bool {
        // SAFETY: as above.
        let stream = unsafe { unicode_units(&self.info().Stream) };
        if stream.is_empty() {
            return false;
        }
        let default: [u16; 7] = kernel::ascii_utf16("::$DATA");
        !(stream.len() == default.len()
            && stream
                .iter()
                .zip(default)
                .all(|(a, b)| ascii_upper(*a) == b))
    }
}

/// ASCII upper-casing of one UTF-16 unit (any IRQL).
fn ascii_upper(u: u16) -> u16 {
    if (u16::from(b'a')..=u16::from(b'z')).contains(&u) {
        u - 32
    } else {
        u
    }
}

impl Drop for FileName {
    fn drop(&mut self) {
        // SAFETY: FltReleaseFileNameInformation (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltreleasefilenameinformation):
        // drops the reference FltGetFileNameInformation gave us.
        unsafe { FltReleaseFileNameInformation(self.0) };
    }
}

/// One fixed-size `FltQueryInformationFile` (PASSIVE_LEVEL).
fn query_file<T>(
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
    class: i32,
) -> Option<T> {
    let mut value = core::mem::MaybeUninit::<T>::zeroed();
    let mut returned = 0u32;
    // SAFETY: FltQueryInformationFile (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltqueryinformationfile):
    // an opened file object of this instance; the buffer is size_of::<T>()
    // bytes for the class the caller pairs with T. PASSIVE_LEVEL.
    let status = unsafe {
        FltQueryInformationFile(
            instance,
            file_object,
            value.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            class,
            &mut returned,
        )
    };
    // SAFETY: zero-initialised plain-old-data, filled on success.
    nt_success(status).then(|| unsafe { value.assume_init() })
}

/// File identity and content version of an opened file: `FileIdInformation`
/// (volume serial + 128-bit id; NTFS, ReFS), else `FileInternalInformation`
/// with the volume serial from the instance context (FAT, exFAT), plus size
/// and last-write time. `None` if the identity or version is unknown: then
/// no cache is used for this open.
pub(super) fn file_identity(
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
) -> Option<FileIdentity> {
    let (volume_serial, file_id) =
        match query_file::<FILE_ID_INFORMATION>(instance, file_object, FileIdInformation) {
            Some(id) => (id.VolumeSerialNumber, id.FileId.Identifier),
            None => {
                // FILE_INTERNAL_INFORMATION is one LARGE_INTEGER IndexNumber.
                let index = query_file::<i64>(instance, file_object, FileInternalInformation)?;
                let serial = get_instance_context(instance)?.instance().volume_serial;
                (serial, FileKey::with_u64_id(0, index as u64, 0, 0).file_id)
            }
        };
    let standard =
        query_file::<FILE_STANDARD_INFORMATION>(instance, file_object, FileStandardInformation)?;
    let basic = query_file::<FILE_BASIC_INFORMATION>(instance, file_object, FileBasicInformation)?;
    Some(FileIdentity {
        volume_serial,
        file_id,
        size: standard.EndOfFile as u64,
        last_write_time: basic.LastWriteTime as u64,
    })
}

/// Whether an opened file is a directory
/// (`FileStandardInformation.Directory`) and its attributes
/// (`FileBasicInformation.FileAttributes`). PASSIVE_LEVEL.
pub(super) fn directory_and_attributes(
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
) -> Option<(bool, u32)> {
    let standard =
        query_file::<FILE_STANDARD_INFORMATION>(instance, file_object, FileStandardInformation)?;
    let basic = query_file::<FILE_BASIC_INFORMATION>(instance, file_object, FileBasicInformation)?;
    Some((standard.Directory, basic.FileAttributes))
}

/// The file's current size (`FileStandardInformation.EndOfFile`), if known.
/// PASSIVE_LEVEL, on a file object that is open (a waiting open's).
pub(super) fn file_size(instance: PFLT_INSTANCE, file_object: *const FILE_OBJECT) -> Option<u64> {
    query_file::<FILE_STANDARD_INFORMATION>(instance, file_object, FileStandardInformation)
        .and_then(|s| u64::try_from(s.EndOfFile).ok())
}

/// The cache key of an identity (any IRQL).
fn key_of(id: &FileIdentity) -> FileKey {
    FileKey::new(id.volume_serial, id.file_id, id.size, id.last_write_time)
}

/// Drops every cached verdict of the stream's file (any IRQL ≤ DISPATCH).
fn invalidate(ctx: &StreamContext) {
    let k = ctx.file_key;
    if k.volume_serial != 0 || k.file_id != [0; 16] {
        let _ = CACHE.with(|c| c.invalidate(k.volume_serial, &k.file_id));
    }
}

/// The stream context of an opened file, created if missing (PASSIVE_LEVEL).
fn stream_context_for(
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
    identity: Option<&FileIdentity>,
) -> Option<ContextRef> {
    if let Some(c) = get_stream_context(instance, file_object) {
        return Some(c);
    }
    let key = identity.map(key_of).unwrap_or_default();
    let init = || {
        // SAFETY: ExAllocatePool2 (wdm.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-exallocatepool2):
        // non-paged storage for one KEVENT. IRQL <= DISPATCH_LEVEL.
        let event =
            unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, size_of::<KEVENT>(), SCAN_EVENT_TAG) };
        if !event.is_null() {
            // SAFETY: fresh non-paged storage for a KEVENT (KernelEvent is
            // repr(transparent) over it); a signalled synchronization event
            // is a free scan lock.
            unsafe {
                event.cast::<KernelEvent>().write(KernelEvent::uninit());
                (*event.cast::<KernelEvent>()).init(KEventKind::Synchronization, true);
            }
        }
        StreamContext::new(key, event)
    };
    // SAFETY: the stream context type, with StreamContext.
    let ours = unsafe { allocate_context(filter(), FLT_STREAM_CONTEXT as u16, init) }?;
    let mut old: PFLT_CONTEXT = core::ptr::null_mut();
    // SAFETY: FltSetStreamContext (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltsetstreamcontext):
    // publishes the initialised context; KEEP_IF_EXISTS returns the winner of
    // a race in `old`. IRQL <= APC_LEVEL.
    let status = unsafe {
        FltSetStreamContext(
            instance,
            file_object,
            FLT_SET_CONTEXT_KEEP_IF_EXISTS,
            ours.0,
            &mut old,
        )
    };
    if nt_success(status) {
        return Some(ours);
    }
    drop(ours); // its cleanup callback frees the event
    if status == STATUS_FLT_CONTEXT_ALREADY_DEFINED && !old.is_null() {
        return Some(ContextRef(old));
    }
    None
}

/// Cancels a successful open and fails it with `status` (PASSIVE_LEVEL,
/// post-create): `FltCancelFileOpen`, then the operation's status.
///
/// # Safety
///
/// `data` and `objects` are post-create's, for an open that succeeded.
unsafe fn cancel_open(
    data: *mut FLT_CALLBACK_DATA,
    objects: &FLT_RELATED_OBJECTS,
    status: NTSTATUS,
) {
    // SAFETY: FltCancelFileOpen (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltcancelfileopen):
    // the file object of a create that succeeded, from its post-create at
    // PASSIVE_LEVEL; then the create fails with `status`, as avscan's
    // AvCancelFileOpen does.
    unsafe {
        FltCancelFileOpen(objects.Instance, objects.FileObject);
        (*data).IoStatus.Anonymous.Status = status;
        (*data).IoStatus.Information = 0;
    }
}

/// Serializes scans of one stream (avscan's `ScanSynchronizationEvent`).
struct ScanLock<'a>(Option<&'a KernelEvent>);

impl<'a> ScanLock<'a> {
    /// Waits for the stream's scan lock, cancellably, at most twice
    /// `umcMsgTimeoutMs` (one other scan's wait plus its own). `Err` carries
    /// the cancel status.
    fn acquire(
        ctx: &'a StreamContext,
        agent: &Agent,
        data: *const FLT_CALLBACK_DATA,
    ) -> Result<Self, NTSTATUS> {
        let Some(event) = (!ctx.scan_event.is_null()).then(|| {
            // SAFETY: allocated and initialised in `stream_context_for`,
            // freed only by the context's cleanup callback, after the last
            // reference (ours) is gone.
            unsafe { &*ctx.scan_event.cast::<KernelEvent>() }
        }) else {
            return Ok(ScanLock(None));
        };
        let rel = relative_100ns(agent.live.query_timeout() * 2);
        // SAFETY: FltCancellableWaitForSingleObject (see session_worker):
        // an initialised event, a local timeout, the current operation.
        let status = unsafe { FltCancellableWaitForSingleObject(event.as_object(), &rel, data) };
        if status == STATUS_SUCCESS {
            Ok(ScanLock(Some(event)))
        } else if status == kernel::STATUS_TIMEOUT {
            // Another scan of this stream is stuck past its own deadline:
            // go on without the lock rather than stall the open.
            Ok(ScanLock(None))
        } else {
            Err(status)
        }
    }
}

impl Drop for ScanLock<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.0 {
            e.set();
        }
    }
}

/// What the verdict logic decided for one open or rescan.
enum Outcome {
    Allow,
    Deny { threat_known: bool },
    Cancel(NTSTATUS),
}

/// Cache lookup, then the host; updates the stream state and the cache.
/// `name` is for logs and the query; PASSIVE_LEVEL.
#[allow(clippy::too_many_arguments)]
fn decide(
    agent: &Agent,
    ctx: Option<&StreamContext>,
    identity: Option<&FileIdentity>,
    name: &[u16],
    kind: EventKind,
    process_id: u32,
    desired_access: u32,
    create_disposition: CreateDisposition,
    data: *const FLT_CALLBACK_DATA,
    objects: &FLT_RELATED_OBJECTS,
) -> Outcome {
    let now = kernel::now();
    let rescan = kind == EventKind::CloseAfterWrite;
    if !rescan {
        // 1. The stream context.
        if let Some(c) = ctx {
            match c.state() {
                StreamScanState::Infected => {
                    AgentStats::bump(&agent.stats.cache_hits);
                    AgentStats::bump(&agent.stats.host_denials);
                    return Outcome::Deny {
                        threat_known: false,
                    };
                }
                // Clean is only as good as the TTL the host gave: with a
                // known identity the cache (below) decides, so an expired
                // or evicted verdict is asked again; without one the stream
                // state is all there is.
                StreamScanState::Clean if identity.is_none() => {
                    AgentStats::bump(&agent.stats.cache_hits);
                    return Outcome::Allow;
                }
                _ => {}
            }
        }
        // 2. The verdict cache (exact content version).
        if let Some(id) = identity
            && let Some(v) = CACHE.with(|cache| cache.get(&key_of(id), now))
        {
            AgentStats::bump(&agent.stats.cache_hits);
            return match v {
                CachedVerdict::Allow => {
                    if let Some(c) = ctx {
                        c.set_state(StreamScanState::Clean);
                    }
                    Outcome::Allow
                }
                CachedVerdict::Deny { .. } => {
                    AgentStats::bump(&agent.stats.host_denials);
                    if let Some(c) = ctx {
                        c.set_state(StreamScanState::Infected);
                    }
                    Outcome::Deny {
                        threat_known: false,
                    }
                }
            };
        }
    }

    // 3. The host.
    if let Some(c) = ctx {
        c.set_state(StreamScanState::Scanning);
    }
    let q = OpenQuery {
        kind,
        process_id,
        desired_access,
        create_disposition,
        file: identity.copied().unwrap_or_default(),
        file_known: identity.is_some(),
        path: name,
        instance: objects.Instance,
        file_object: objects.FileObject,
        data,
    };
    let answer = session_worker::query(agent, &q);
    let finish = |state| {
        if let Some(c) = ctx {
            c.finish_scan(state);
        }
    };
    match answer {
        Answer::Session(v) if v.source == VerdictSource::Host => {
            // The host's TTL, capped by `verdictCacheTtlMs` or a host
            // policy's `cache_ttl_max_secs` (0: nothing is cached).
            let ttl = agent
                .live
                .read(|l| l.settings.verdict_ttl(v.cache_ttl_secs));
            match v.decision {
                Decision::Deny => {
                    AgentStats::bump(&agent.stats.host_denials);
                    finish(StreamScanState::Infected);
                    if let (Some(id), Some(ttl)) = (identity, ttl) {
                        let _ = CACHE.with(|c| {
                            c.insert(
                                key_of(id),
                                CachedVerdict::Deny { threat_id: 0 },
                                now,
                                Some(ttl),
                            )
                        });
                    }
                    crate::klog!(
                        Level::Audit,
                        routine::OPEN_FILTER,
                        "{} denied: {} (pid {}, threat {})",
                        if rescan { "modified file" } else { "open" },
                        Utf16(name),
                        process_id,
                        v.threat.as_str()
                    );
                    Outcome::Deny { threat_known: true }
                }
                Decision::Allow if ttl.is_some() => {
                    finish(StreamScanState::Clean);
                    if let Some(id) = identity {
                        let _ =
                            CACHE.with(|c| c.insert(key_of(id), CachedVerdict::Allow, now, ttl));
                    }
                    Outcome::Allow
                }
                _ => {
                    // AllowNoCache, or Allow with TTL 0: ask again next time.
                    finish(StreamScanState::Unknown);
                    Outcome::Allow
                }
            }
        }
        Answer::Local {
            reason: LocalReason::Cancelled(status),
            ..
        } => {
            finish(StreamScanState::Unknown);
            Outcome::Cancel(status)
        }
        other => {
            // Deadline, closed session, no session, busy, teardown: the fail
            // mode decided; nothing is cached.
            finish(StreamScanState::Unknown);
            crate::klog!(
                Level::Debug,
                routine::OPEN_FILTER,
                "{}: no host verdict ({:?}), fail mode {}",
                Utf16(name),
                other,
                if other.allows() { "allows" } else { "denies" }
            );
            if other.allows() {
                Outcome::Allow
            } else {
                Outcome::Deny {
                    threat_known: false,
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------

/// Whether the process that requested the operation runs an image a host
/// policy excludes (`SeLocateProcessImageName` of `FltGetRequestorProcess`,
/// compared by file name). PASSIVE_LEVEL (post-create).
fn requestor_image_excluded(agent: &Agent, data: *const FLT_CALLBACK_DATA) -> bool {
    // SAFETY: FltGetRequestorProcess (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetrequestorprocess):
    // the current operation's callback data. IRQL <= DISPATCH_LEVEL.
    let process = unsafe { FltGetRequestorProcess(data) };
    if process == 0 {
        return false;
    }
    let mut image: *mut UNICODE_STRING = core::ptr::null_mut();
    // SAFETY: SeLocateProcessImageName (ntddk.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/ntddk/nf-ntddk-selocateprocessimagename):
    // the requestor's process, referenced for the duration of its
    // operation; the routine allocates the string, freed below with
    // ExFreePool as its page requires. PASSIVE_LEVEL.
    let status = unsafe { SeLocateProcessImageName(process, &mut image) };
    if !nt_success(status) || image.is_null() {
        return false;
    }
    // SAFETY: the routine returned a valid UNICODE_STRING whose buffer
    // lives in the same allocation until it is freed below.
    let units = unsafe { unicode_units(&*image) };
    let hit = agent.live.read(|l| l.images.matches(units));
    // SAFETY: ExFreePool (wdm.h): frees what SeLocateProcessImageName
    // allocated, once.
    unsafe { ExFreePool(image.cast()) };
    hit
}

/// Counts a skipped open and lets it through without post-create (PASSIVE_LEVEL).
fn skip(agent: &Agent) -> FLT_PREOP_CALLBACK_STATUS {
    AgentStats::bump(&agent.stats.skipped);
    FLT_PREOP_SUCCESS_NO_CALLBACK
}

/// Whether the create carries a prefetch ECP added in kernel mode (avscan's
/// `AvIsPrefetchEcpPresent`; one added by user mode is ignored, so it cannot
/// be used to dodge the scan). PASSIVE_LEVEL.
fn is_prefetch_open(data: *const FLT_CALLBACK_DATA) -> bool {
    let f = filter();
    let mut list: *mut ECP_LIST = core::ptr::null_mut();
    // SAFETY: FltGetEcpListFromCallbackData (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetecplistfromcallbackdata):
    // a create's callback data. IRQL <= APC_LEVEL.
    if !nt_success(unsafe { FltGetEcpListFromCallbackData(f, data, &mut list) }) || list.is_null() {
        return false;
    }
    let mut ecp: *mut c_void = core::ptr::null_mut();
    // SAFETY: FltFindExtraCreateParameter (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltfindextracreateparameter):
    // looks the GUID up in the list above; the size pointer may be null.
    let found = nt_success(unsafe {
        FltFindExtraCreateParameter(
            f,
            list,
            &GUID_ECP_PREFETCH_OPEN,
            &mut ecp,
            core::ptr::null_mut(),
        )
    });
    // SAFETY: FltIsEcpFromUserMode (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltisecpfromusermode):
    // an ECP context found above.
    found && !ecp.is_null() && !unsafe { FltIsEcpFromUserMode(f, ecp) }
}

/// `IRP_MJ_CREATE` pre-operation (PASSIVE_LEVEL).
unsafe extern "system" fn pre_create(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    let Some(agent) = agent::get() else {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    };
    // SAFETY: Filter Manager passes valid callback data, parameter block and
    // related objects for the duration of the callback.
    let (d, iopb, objects) = unsafe { (&*data, &*(*data).Iopb, &*objects) };
    // SAFETY: the create arm of the union, for IRP_MJ_CREATE. Fields are
    // copied out (the struct is packed(4)).
    let options = unsafe { iopb.Parameters.Create.Options };
    if options & FILE_DIRECTORY_FILE != 0
        || u32::from(iopb.OperationFlags) & (SL_OPEN_TARGET_DIRECTORY | SL_OPEN_PAGING_FILE) != 0
    {
        return skip(agent);
    }
    let fo = objects.FileObject;
    if !fo.is_null() {
        // SAFETY: the create's file object, valid during the callback.
        if unsafe { (*fo).Flags } & FO_VOLUME_OPEN != 0 {
            return skip(agent);
        }
        // Stack-based file objects are never scanned (avscan): they cannot
        // be read after this thread unwinds.
        let (mut low, mut high) = (0usize, 0usize);
        // SAFETY: IoGetStackLimits (wdm.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-iogetstacklimits):
        // writes the current stack's bounds. IRQL <= APC_LEVEL.
        unsafe { IoGetStackLimits(&mut low, &mut high) };
        if (fo as usize) > low && (fo as usize) < high {
            return skip(agent);
        }
    }
    if session_worker::is_worker_thread() {
        return skip(agent);
    }
    if d.RequestorMode == KernelMode as i8 && !agent.params.policy.checks_kernel_mode() {
        return skip(agent);
    }
    if is_prefetch_open(data) {
        return skip(agent);
    }
    FLT_PREOP_SUCCESS_WITH_CALLBACK
}

/// `IRP_MJ_CREATE` post-operation (PASSIVE_LEVEL: create is synchronous,
/// so it runs in the opener's thread).
unsafe extern "system" fn post_create(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion: *const c_void,
    flags: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    let Some(agent) = agent::get() else {
        return FLT_POSTOP_FINISHED_PROCESSING;
    };
    if flags & FLTFL_POST_OPERATION_DRAINING != 0 {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    // SAFETY: as in pre_create.
    let (d, iopb, objects) = unsafe { (&*data, &*(*data).Iopb, &*objects) };
    // SAFETY: the status arm of IO_STATUS_BLOCK, set by the file system.
    let status = unsafe { d.IoStatus.Anonymous.Status };
    if !nt_success(status) || status == STATUS_REPARSE {
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    let mut is_dir = false;
    // SAFETY: FltIsDirectory (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltisdirectory):
    // an opened file object of this instance. IRQL <= APC_LEVEL.
    let dir_status = unsafe { FltIsDirectory(objects.FileObject, objects.Instance, &mut is_dir) };
    if nt_success(dir_status) && is_dir {
        AgentStats::bump(&agent.stats.skipped);
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    let name = match FileName::query(data) {
        Ok(n) => n,
        Err(status) => {
            crate::klog_status!(
                Level::Warn,
                routine::OPEN_FILTER,
                status,
                "no name for an open; fail mode applies"
            );
            AgentStats::bump(&agent.stats.fail_mode_decisions);
            if agent.live.fail_mode() == thinagent_guest::FailMode::Closed {
                AgentStats::bump(&agent.stats.denials);
                // SAFETY: post-create of a successful open.
                unsafe { cancel_open(data, objects, agent.params.deny_status.ntstatus().0 as i32) };
            }
            return FLT_POSTOP_FINISHED_PROCESSING;
        }
    };
    if name.is_alternate_stream() {
        AgentStats::bump(&agent.stats.skipped);
        return FLT_POSTOP_FINISHED_PROCESSING;
    }
    if !objects.Transaction.is_null() {
        crate::klog!(
            Level::Debug,
            routine::OPEN_FILTER,
            "File ({}) in a transaction, ignore",
            Utf16(name.units())
        );
        AgentStats::bump(&agent.stats.skipped);
        return FLT_POSTOP_FINISHED_PROCESSING;
    }

    let identity = file_identity(objects.Instance, objects.FileObject);
    // SAFETY: FltGetRequestorProcessId (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetrequestorprocessid):
    // the current operation's callback data. IRQL <= DISPATCH_LEVEL.
    let process_id = unsafe { FltGetRequestorProcessId(data) };
    // SAFETY: the create arm of the parameters; SecurityContext is always
    // set for IRP_MJ_CREATE (the I/O manager fills it).
    let (options, security) = unsafe {
        (
            iopb.Parameters.Create.Options,
            iopb.Parameters.Create.SecurityContext,
        )
    };
    let desired_access = if security.is_null() {
        0
    } else {
        // SAFETY: the create's IO_SECURITY_CONTEXT, valid for the callback
        // (null-checked above).
        unsafe { (*security).DesiredAccess }
    };
    let disposition = options >> 24;

    // A host policy's process-image exclusions (§14.6): looked up only
    // when there are any.
    if agent.live.read(|l| !l.images.is_empty()) && requestor_image_excluded(agent, data) {
        AgentStats::bump(&agent.stats.skipped);
        crate::klog!(
            Level::Debug,
            routine::OPEN_FILTER,
            "skip {} (excluded process image, pid {})",
            Utf16(name.units()),
            process_id
        );
        return FLT_POSTOP_FINISHED_PROCESSING;
    }

    let request = OpenRequest {
        is_directory: false,
        is_volume_open: false,
        is_paging_file: false,
        requestor_kernel_mode: d.RequestorMode == KernelMode as i8,
        process_id,
        path: PathRef::Utf16(name.units()),
        file_size: identity.map(|i| i.size),
        desired_access,
        create_disposition: disposition,
        own_io: session_worker::is_worker_thread(),
    };
    if let OpenDecision::Skip(reason) = agent.live.read(|l| l.policy.decide(&request)) {
        AgentStats::bump(&agent.stats.skipped);
        crate::klog!(
            Level::Debug,
            routine::OPEN_FILTER,
            "skip {} ({})",
            Utf16(name.units()),
            reason
        );
        return FLT_POSTOP_FINISHED_PROCESSING;
    }

    let ctx = stream_context_for(objects.Instance, objects.FileObject, identity.as_ref());
    let lock = match ctx
        .as_ref()
        .map(|c| ScanLock::acquire(c.stream(), agent, data))
    {
        Some(Err(status)) => {
            // The opener is being cancelled while waiting: fail its open
            // with that status (avscan's AvCancelFileOpen).
            // SAFETY: post-create of a successful open.
            unsafe { cancel_open(data, objects, status) };
            return FLT_POSTOP_FINISHED_PROCESSING;
        }
        Some(Ok(l)) => Some(l),
        None => None,
    };
    let outcome = decide(
        agent,
        ctx.as_ref().map(ContextRef::stream),
        identity.as_ref(),
        name.units(),
        EventKind::Open,
        process_id,
        desired_access,
        CreateDisposition::from_wire(disposition).unwrap_or(CreateDisposition::Open),
        data,
        objects,
    );
    drop(lock);
    match outcome {
        Outcome::Allow => {}
        Outcome::Deny { threat_known } => {
            AgentStats::bump(&agent.stats.denials);
            if !threat_known {
                crate::klog!(
                    Level::Info,
                    routine::OPEN_FILTER,
                    "open denied: {} (pid {})",
                    Utf16(name.units()),
                    process_id
                );
            }
            // SAFETY: post-create of a successful open.
            unsafe { cancel_open(data, objects, agent.params.deny_status.ntstatus().0 as i32) };
        }
        Outcome::Cancel(status) => {
            // SAFETY: post-create of a successful open.
            unsafe { cancel_open(data, objects, status) };
        }
    }
    FLT_POSTOP_FINISHED_PROCESSING
}

// ---------------------------------------------------------------------------
// Cleanup and modifications
// ---------------------------------------------------------------------------

/// `IRP_MJ_CLEANUP` pre-operation (PASSIVE_LEVEL): the last handle of a file
/// object closes. A stream modified since its verdict is rescanned when the
/// closing handle had write access; the file is still open, so the host can
/// read it. There is no open to cancel any more: a deny is logged at WARN
/// and kept in the stream context (and cache), so the next open is denied.
unsafe extern "system" fn pre_cleanup(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    let Some(agent) = agent::get() else {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    };
    if session_worker::is_worker_thread() {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    }
    // SAFETY: valid for the callback.
    let objects = unsafe { &*objects };
    let fo = objects.FileObject;
    // SAFETY: the cleanup's file object, valid during the callback.
    if fo.is_null() || !unsafe { (*fo).WriteAccess } {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    }
    let Some(ctx) = get_stream_context(objects.Instance, fo) else {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    };
    let stream = ctx.stream();
    if stream.state() != StreamScanState::Modified {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    }
    let Ok(lock) = ScanLock::acquire(stream, agent, data) else {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    };
    if stream.state() != StreamScanState::Modified {
        return FLT_PREOP_SUCCESS_NO_CALLBACK; // rescanned meanwhile
    }
    AgentStats::bump(&agent.stats.rescans);
    invalidate(stream);
    let identity = file_identity(objects.Instance, fo);
    let name = match FileName::query(data) {
        Ok(n) => n,
        Err(status) => {
            crate::klog_status!(
                Level::Warn,
                routine::OPEN_FILTER,
                status,
                "no name for a modified file; rescan at next open"
            );
            return FLT_PREOP_SUCCESS_NO_CALLBACK;
        }
    };
    // SAFETY: as in post_create.
    let process_id = unsafe { FltGetRequestorProcessId(data) };
    let outcome = decide(
        agent,
        Some(stream),
        identity.as_ref(),
        name.units(),
        EventKind::CloseAfterWrite,
        process_id,
        0,
        CreateDisposition::Open,
        data,
        objects,
    );
    drop(lock);
    match outcome {
        Outcome::Deny { threat_known: true } => {
            // `decide` stored Infected (a write since then would have made it
            // Modified again): the next open is denied from the context.
            crate::klog!(
                Level::Warn,
                routine::OPEN_FILTER,
                "modified file {} denied at close (pid {}): no open left to cancel, its next open is denied",
                Utf16(name.units()),
                process_id
            );
        }
        Outcome::Deny {
            threat_known: false,
        }
        | Outcome::Cancel(_) => {
            // The fail mode, not the host: leave the stream to be checked
            // again at its next open instead of remembering a verdict.
            stream.mark_modified();
        }
        Outcome::Allow => {}
    }
    FLT_PREOP_SUCCESS_NO_CALLBACK
}

/// Marks the stream of the current operation modified and drops its cached
/// verdict (IRQL ≤ APC_LEVEL; non-paged code and data: it runs on the
/// paging-write path).
fn mark_modified(objects: *const FLT_RELATED_OBJECTS) -> FLT_PREOP_CALLBACK_STATUS {
    if agent::get().is_none() || session_worker::is_worker_thread() {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    }
    // SAFETY: valid for the callback.
    let objects = unsafe { &*objects };
    if objects.FileObject.is_null() {
        return FLT_PREOP_SUCCESS_NO_CALLBACK;
    }
    if let Some(ctx) = get_stream_context(objects.Instance, objects.FileObject) {
        let before = ctx.stream().mark_modified();
        if before != StreamScanState::Modified {
            invalidate(ctx.stream());
        }
    }
    FLT_PREOP_SUCCESS_NO_CALLBACK
}

/// `IRP_MJ_WRITE` pre-operation (IRQL ≤ APC_LEVEL, also paging writes).
unsafe extern "system" fn pre_write(
    _data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    mark_modified(objects)
}

/// `IRP_MJ_SET_INFORMATION` pre-operation (IRQL ≤ APC_LEVEL): end of file,
/// valid data length and allocation size change content. Renames and hard
/// links do not: verdicts are keyed by file id, not by name, so they stay
/// valid (and an excluded file renamed out of its excluded path was never
/// cached, so its next open is checked).
unsafe extern "system" fn pre_set_information(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: the set-information arm, for IRP_MJ_SET_INFORMATION. Read
    // with fltKernel.h's layout: windows-sys's FLT_PARAMETERS_6 lacks
    // POINTER_ALIGNMENT and would read FileInformationClass at offset 4
    // instead of 8 (thinagent_km_sys::io_params).
    let class = unsafe {
        let params =
            (&raw const (*(*data).Iopb).Parameters).cast::<FLT_PARAMETERS_SET_FILE_INFORMATION>();
        (*params).FileInformationClass
    };
    if class == FileEndOfFileInformation
        || class == FileValidDataLengthInformation
        || class == FileAllocationInformation
    {
        return mark_modified(objects);
    }
    FLT_PREOP_SUCCESS_NO_CALLBACK
}

/// `IRP_MJ_FILE_SYSTEM_CONTROL` pre-operation (IRQL ≤ APC_LEVEL): offload
/// writes, raw encrypted writes, zeroing and block cloning
/// (`FSCTL_DUPLICATE_EXTENTS_TO_FILE`, which replaces the target's content
/// on ReFS and NTFS) change content.
unsafe extern "system" fn pre_file_system_control(
    data: *mut FLT_CALLBACK_DATA,
    objects: *const FLT_RELATED_OBJECTS,
    _completion: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    // SAFETY: the FSCTL arm, for IRP_MJ_FILE_SYSTEM_CONTROL (Common is the
    // prefix every method shares). Read with fltKernel.h's layout:
    // windows-sys's FLT_PARAMETERS_12_1 lacks POINTER_ALIGNMENT and would
    // read FsControlCode at offset 8 (InputBufferLength) instead of 16.
    let code = unsafe {
        let params = (&raw const (*(*data).Iopb).Parameters).cast::<FLT_PARAMETERS_FSCTL_COMMON>();
        (*params).FsControlCode
    };
    if matches!(
        code,
        FSCTL_OFFLOAD_WRITE
            | FSCTL_WRITE_RAW_ENCRYPTED
            | FSCTL_SET_ZERO_DATA
            | FSCTL_DUPLICATE_EXTENTS_TO_FILE
    ) {
        return mark_modified(objects);
    }
    FLT_PREOP_SUCCESS_NO_CALLBACK
}

// ---------------------------------------------------------------------------
// Filter, instances, contexts
// ---------------------------------------------------------------------------

/// `FilterUnloadCallback` (PASSIVE_LEVEL): the driver's unload sequence
/// (learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nc-fltkernel-pflt_filter_unload_callback).
///
/// A non-mandatory unload (`fltmc unload`, `sc stop`) is refused with
/// `STATUS_FLT_DO_NOT_DETACH` while the boot re-initialisation routine is
/// registered and has not run yet: it cannot be unregistered, and the I/O
/// manager would call into the unloaded image. A mandatory unload
/// (`FLTFL_FILTER_UNLOAD_MANDATORY`) cannot be refused; that remaining risk
/// is described in docs/windows.md ("The vsock layer").
unsafe extern "system" fn filter_unload(flags: u32) -> NTSTATUS {
    if flags & FLTFL_FILTER_UNLOAD_MANDATORY == 0 && !super::vsock_capture::unload_is_safe() {
        crate::klog_status!(
            Level::Warn,
            "DriverUnload",
            STATUS_FLT_DO_NOT_DETACH,
            "unload refused: the boot re-initialisation routine has not run yet"
        );
        return STATUS_FLT_DO_NOT_DETACH;
    }
    super::driver_entry::unload()
}

/// `InstanceSetupCallback` (PASSIVE_LEVEL): attach to disk file systems
/// (not RAW, not network redirectors: file ids and reads there are not what
/// the cache and the host reads assume), and record the volume serial.
unsafe extern "system" fn instance_setup(
    objects: *const FLT_RELATED_OBJECTS,
    _flags: u32,
    device_type: u32,
    fs_type: FLT_FILESYSTEM_TYPE,
) -> NTSTATUS {
    if device_type != FILE_DEVICE_DISK_FILE_SYSTEM || fs_type == FLT_FSTYPE_RAW {
        return STATUS_FLT_DO_NOT_ATTACH;
    }
    // SAFETY: valid for the callback.
    let objects = unsafe { &*objects };
    // FILE_FS_VOLUME_INFORMATION plus room for a label; the fixed part is
    // filled even when the label does not fit (STATUS_BUFFER_OVERFLOW).
    #[repr(C)]
    struct VolumeInfo {
        info: FILE_FS_VOLUME_INFORMATION,
        label: [u16; 32],
    }
    // SAFETY: plain old data.
    let mut vol: VolumeInfo = unsafe { core::mem::zeroed() };
    // SAFETY: all-zero is a valid IO_STATUS_BLOCK.
    let mut iosb: IO_STATUS_BLOCK = unsafe { core::mem::zeroed() };
    // SAFETY: FltQueryVolumeInformation (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltqueryvolumeinformation):
    // the new instance, a local buffer of the given size. PASSIVE_LEVEL.
    let status = unsafe {
        FltQueryVolumeInformation(
            objects.Instance,
            &mut iosb,
            (&mut vol as *mut VolumeInfo).cast(),
            size_of::<VolumeInfo>() as u32,
            FileFsVolumeInformation,
        )
    };
    let serial = if nt_success(status) || status == STATUS_BUFFER_OVERFLOW {
        u64::from(vol.info.VolumeSerialNumber)
    } else {
        0
    };
    // SAFETY: the instance context type, with InstanceContext.
    let ctx = unsafe {
        allocate_context(objects.Filter, FLT_INSTANCE_CONTEXT as u16, || {
            InstanceContext {
                volume: objects.Volume,
                instance: objects.Instance,
                filesystem_type: fs_type,
                volume_serial: serial,
                // One global verdict cache replaces avscan's per-volume table.
                file_table: core::ptr::null_mut(),
            }
        })
    };
    if let Some(ctx) = ctx {
        // SAFETY: FltSetInstanceContext (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltsetinstancecontext):
        // publishes the initialised context. IRQL <= APC_LEVEL.
        let set = unsafe {
            FltSetInstanceContext(
                objects.Instance,
                FLT_SET_CONTEXT_KEEP_IF_EXISTS,
                ctx.0,
                core::ptr::null_mut(),
            )
        };
        drop(ctx);
        if !nt_success(set) {
            crate::klog_status!(
                Level::Warn,
                routine::OPEN_FILTER,
                set,
                "FltSetInstanceContext failed"
            );
        }
    }
    crate::klog!(
        Level::Info,
        routine::OPEN_FILTER,
        "attached to a volume (file system type {}, serial {:08X})",
        fs_type,
        serial
    );
    STATUS_SUCCESS
}

/// `InstanceQueryTeardownCallback` (PASSIVE_LEVEL): manual detach is
/// allowed (`fltmc detach`).
unsafe extern "system" fn instance_query_teardown(
    _objects: *const FLT_RELATED_OBJECTS,
    _flags: u32,
) -> NTSTATUS {
    STATUS_SUCCESS
}

/// `InstanceTeardownStartCallback` (PASSIVE_LEVEL): answer the instance's
/// waiting queries by the fail mode and forget the volume's verdicts.
unsafe extern "system" fn instance_teardown_start(
    objects: *const FLT_RELATED_OBJECTS,
    reason: u32,
) {
    // SAFETY: valid for the callback.
    let objects = unsafe { &*objects };
    session_worker::cancel_instance(objects.Instance);
    if let Some(ctx) = get_instance_context(objects.Instance) {
        let serial = ctx.instance().volume_serial;
        let _ = CACHE.with(|c| c.invalidate_volume(serial));
    }
    crate::klog!(
        Level::Info,
        routine::OPEN_FILTER,
        "instance teardown (reason {:#x})",
        reason
    );
}

/// `InstanceTeardownCompleteCallback` (PASSIVE_LEVEL): nothing left to
/// release (contexts are freed by Filter Manager).
unsafe extern "system" fn instance_teardown_complete(
    _objects: *const FLT_RELATED_OBJECTS,
    _reason: u32,
) {
}

/// Stream context cleanup (IRQL ≤ APC_LEVEL): frees the scan event.
unsafe extern "system" fn stream_context_cleanup(context: PFLT_CONTEXT, _kind: u16) {
    // SAFETY: Filter Manager passes one of our initialised stream contexts,
    // no longer referenced by anyone.
    let ctx = unsafe { &*context.cast::<StreamContext>() };
    if !ctx.scan_event.is_null() {
        // SAFETY: ExFreePoolWithTag (wdm.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-exfreepoolwithtag):
        // the event came from ExAllocatePool2 with this tag; nobody waits on
        // it (no reference to the context is left). IRQL <= DISPATCH_LEVEL.
        unsafe { ExFreePoolWithTag(ctx.scan_event, SCAN_EVENT_TAG) };
    }
}

/// Instance context cleanup (IRQL ≤ APC_LEVEL): `file_table` is always null
/// (one global cache), so there is nothing to free.
unsafe extern "system" fn instance_context_cleanup(_context: PFLT_CONTEXT, _kind: u16) {}
