//! Host actions (docs/protocol.md §14): `Remediate`, `ScanTree` (with
//! `ScanCancel`, `ScanProgress`, `ScanDone`), `Policy`, and the `Health`
//! reports, on a system thread of their own (never the session worker,
//! which judges opens: §14.1 "On-access first").
//!
//! # Shape
//!
//! The session worker copies each request the session accepted into a
//! [`Job`] (its frame, re-encoded: the session's inbox is reused) and hands
//! it to [`submit`]; the host-action thread ([`run`], started by [`start`]
//! in `DriverEntry`, joined by [`stop`] at unload before the filter is
//! unregistered) takes the jobs in order and answers each through
//! [`session_worker::with_session`], only to the session (`generation`)
//! that sent it: after a reconnect an old request is void (§14.1).
//!
//! * **Remediate** ([`remediate`]): `FltCreateFileEx2` from our instance of
//!   the path's volume (so our own filter never sees the open: no
//!   scan of our own I/O), `FILE_OPEN_REPARSE_POINT` (the name itself,
//!   never a link's target), `IO_IGNORE_SHARE_ACCESS_CHECK` (a process
//!   holding the file open without `FILE_SHARE_DELETE` keeps its handle
//!   and cannot block the removal); then the identity on that same file
//!   object exactly as the create path fills a `FileEvent`
//!   ([`filter_callbacks::file_identity`]), then the disposition or the end
//!   of file on that file object.
//! * **ScanTree** ([`Scan`]): an explicit stack of open directories (depth
//!   capped at [`MAX_DEPTH`], no recursion), one `FltQueryDirectoryFile`
//!   entry at a time, reparse points never entered nor sent; each regular
//!   file opened like a remediation target, its identity queried, and sent
//!   as an `OnDemand` `FileEvent` ([`session_worker::submit_on_demand`],
//!   within the session's `on_demand_capacity`) while its file object stays
//!   open for the host's reads until its verdict.
//! * **Policy** ([`apply_policy`]): [`thinagent_guest::host_policy::stage`]
//!   checks and builds it aside (a heap copy of the open policy), then
//!   [`super::agent::Live::write`] puts it in place under the exclusive push
//!   lock; fields pinned by `PinnedPolicy` are reported.
//! * **Health** ([`HealthReporter`], polled by the session worker): after
//!   each handshake, then on change at most every 10 s.
//!
//! * **Restore** ([`super::restore`]): the chunks come through the same
//!   queue, at most [`RESTORE_WINDOW`] of them at a time (the session
//!   worker leaves the rest in the session, which then stops taking bytes:
//!   §14.7 backpressure); written to a temporary file in the target's
//!   directory, renamed into place only if nothing is there.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;

use thinagent_guest::log::routine;
use thinagent_guest::nt_path;
use thinagent_guest::{Instant, Level, OpenPolicy, PathRef};
use thinagent_km_sys::fltmgr::Minifilters::{
    FltClose, FltCreateFileEx2, FltFsControlFile, FltGetVolumeFromName,
    FltGetVolumeInstanceFromName, FltGetVolumeName, FltObjectDereference, FltQueryDirectoryFile,
    FltSetInformationFile, PFLT_INSTANCE, PFLT_VOLUME,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::{FILE_OBJECT, OBJECT_ATTRIBUTES};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Storage::FileSystem::{
    FILE_DIRECTORY_FILE, FILE_DIRECTORY_INFORMATION, FILE_DISPOSITION_DELETE,
    FILE_DISPOSITION_IGNORE_READONLY_ATTRIBUTE, FILE_DISPOSITION_INFORMATION,
    FILE_DISPOSITION_INFORMATION_EX, FILE_DISPOSITION_POSIX_SEMANTICS, FILE_NON_DIRECTORY_FILE,
    FILE_OPEN, FILE_OPEN_REPARSE_POINT, FILE_SYNCHRONOUS_IO_NONALERT, FileDirectoryInformation,
    FileDispositionInformation, FileDispositionInformationEx, FileEndOfFileInformation,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    FILE_END_OF_FILE_INFORMATION, IO_IGNORE_SHARE_ACCESS_CHECK, ObfDereferenceObject,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{
    HANDLE, NTSTATUS, OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE, STATUS_BUFFER_TOO_SMALL,
    STATUS_FLT_VOLUME_NOT_FOUND, STATUS_NO_MORE_FILES, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_OBJECT_PATH_NOT_FOUND, UNICODE_STRING,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::System::IO::IO_STATUS_BLOCK;
use thinagent_protocol::{
    ActionResult, ActionStatus, Capabilities, Decoded, FilePath, Health, HealthState, Message,
    OsError, Policy, Remediate, RemediateAction, ScanCounters, ScanDone, ScanFlags, ScanStatus,
    ScanTree, decode_frame,
};

use super::agent::Agent;
use super::filter_callbacks;
use super::irp::SystemThread;
use super::kernel::{
    self, EventKind, KernelEvent, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
    STATUS_SUCCESS, SpinLock, Utf16, nt_success, unicode_string_for,
};
use super::restore::Restoring;
use super::session_worker::{self, OnDemand, OnDemandFile, SCAN_SLOTS};

/// The host-action capabilities the driver announces in `Hello`.
pub const CAPABILITIES: Capabilities = Capabilities(
    Capabilities::REMEDIATE.0
        | Capabilities::SCAN_TREE.0
        | Capabilities::POLICY.0
        | Capabilities::RESTORE.0,
);

/// `RestoreData` chunks handed to the thread and not yet written, at most
/// (each a 4 KiB copy). The session worker leaves further chunks in the
/// session until the thread wrote one (§14.7 backpressure).
pub const RESTORE_WINDOW: usize = 2;

/// Jobs waiting for the thread: `MAX_ACTIONS_IN_FLIGHT` (8) actions, one
/// scan (§14.1) and the restore chunks of [`RESTORE_WINDOW`].
const QUEUE: usize = thinagent_protocol::MAX_ACTIONS_IN_FLIGHT as usize + 1 + RESTORE_WINDOW;
/// Deepest directory nesting a scan enters (open directory handles held at
/// once); deeper directories count as errors.
pub const MAX_DEPTH: usize = 64;
/// Longest path a scan or remediation handles, UTF-16 units (the query
/// slots' `PATH_BYTES`).
const PATH_UNITS: usize = session_worker::PATH_BYTES / 2;
/// `FltQueryDirectoryFile` buffer: one `FILE_DIRECTORY_INFORMATION` with a
/// 255-unit name fits.
const DIR_BUFFER: usize = 1024;
/// Longest wait of the thread while a scan runs (verdicts and reads also
/// wake it).
const SCAN_TICK: Duration = Duration::from_millis(50);
/// Longest wait while idle (unload also wakes it).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Directory entries (or files) handled per turn before the thread looks
/// at remediations and the stop flag again.
const WALK_BUDGET: usize = 64;

/// `DELETE`, `SYNCHRONIZE`, `FILE_READ_ATTRIBUTES`, `FILE_WRITE_DATA`,
/// `FILE_READ_DATA`, `FILE_LIST_DIRECTORY`, `FILE_TRAVERSE`
/// (winnt.h access rights).
pub(super) const DELETE: u32 = 0x0001_0000;
const SYNCHRONIZE: u32 = 0x0010_0000;
pub(super) const FILE_READ_ATTRIBUTES: u32 = 0x0080;
pub(super) const FILE_WRITE_DATA: u32 = 0x0002;
const FILE_READ_DATA: u32 = 0x0001;
pub(super) const FILE_LIST_DIRECTORY: u32 = 0x0001;
pub(super) const FILE_TRAVERSE: u32 = 0x0020;
/// `FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE`.
const SHARE_ALL: u32 = 0x7;
/// `FILE_ATTRIBUTE_DIRECTORY`, `FILE_ATTRIBUTE_NORMAL`,
/// `FILE_ATTRIBUTE_REPARSE_POINT` (winnt.h).
const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x10;
const FILE_ATTRIBUTE_NORMAL: u32 = 0x80;
pub(super) const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;
/// `STATUS_NOT_SUPPORTED`, `STATUS_INVALID_INFO_CLASS`,
/// `STATUS_IO_TIMEOUT`, `STATUS_UNSUCCESSFUL`, `STATUS_NAME_TOO_LONG`
/// (ntstatus.h).
const STATUS_NOT_SUPPORTED: NTSTATUS = 0xC000_00BB_u32 as i32;
const STATUS_INVALID_INFO_CLASS: NTSTATUS = 0xC000_0003_u32 as i32;
pub(super) const STATUS_IO_TIMEOUT: NTSTATUS = 0xC000_00B5_u32 as i32;
pub(super) const STATUS_UNSUCCESSFUL: NTSTATUS = kernel::STATUS_UNSUCCESSFUL;
const STATUS_NAME_TOO_LONG: NTSTATUS = 0xC000_0106_u32 as i32;

// The layouts the file system writes and reads, as windows-sys declares
// them (ntifs.h; learn.microsoft.com/windows-hardware/drivers/ddi/ntifs/
// ns-ntifs-_file_directory_information, ns-ntddk-_file_disposition_information_ex,
// ns-ntddk-_file_disposition_information, ns-ntddk-_file_end_of_file_information).
const _: () = {
    assert!(core::mem::offset_of!(FILE_DIRECTORY_INFORMATION, EndOfFile) == 0x28);
    assert!(core::mem::offset_of!(FILE_DIRECTORY_INFORMATION, FileAttributes) == 0x38);
    assert!(core::mem::offset_of!(FILE_DIRECTORY_INFORMATION, FileNameLength) == 0x3C);
    assert!(core::mem::offset_of!(FILE_DIRECTORY_INFORMATION, FileName) == 0x40);
    assert!(size_of::<FILE_DISPOSITION_INFORMATION_EX>() == 4);
    assert!(size_of::<FILE_DISPOSITION_INFORMATION>() == 1);
    assert!(size_of::<FILE_END_OF_FILE_INFORMATION>() == 8);
};

// ---------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------

/// One host request, owned: its frame re-encoded (the session's inbox is
/// reused as soon as the worker takes it).
pub struct Job {
    pub(super) generation: u32,
    pub(super) id: u64,
    pub(super) received: Instant,
    /// Order of submission: the thread takes jobs oldest first (a
    /// restore's chunks must be written in order).
    seq: u64,
    frame: Vec<u8>,
}

impl Job {
    /// Copies `message` (a `Remediate`, `Policy`, `ScanTree`, `Restore` or
    /// `RestoreData` the session accepted) of session `generation`. `None` when there is no memory
    /// (the caller answers `Busy`). Any IRQL <= DISPATCH (non-paged pool).
    #[must_use]
    pub fn copy(generation: u32, id: u64, message: &Message<'_>, now: Instant) -> Option<Self> {
        // Host actions exist in version 2 only (§14).
        let version = thinagent_protocol::HOST_ACTIONS_VERSION;
        let len = message.encoded_len_for(version);
        let mut frame = Vec::new();
        frame.try_reserve_exact(len).ok()?;
        frame.resize(len, 0);
        message.encode_for(version, id, &mut frame).ok()?;
        Some(Job {
            generation,
            id,
            received: now,
            seq: 0,
            frame,
        })
    }

    pub(super) fn message(&self) -> Option<Message<'_>> {
        match decode_frame(&self.frame) {
            Ok(Decoded::Frame { frame, .. }) => Some(frame.message),
            _ => None,
        }
    }
}

struct Queue {
    jobs: [Option<Job>; QUEUE],
    /// The next job's `seq`.
    next_seq: u64,
    /// A `ScanCancel` for this scan id arrived.
    cancel: Option<u64>,
    /// The session ended this restore itself (chunks out of order, its
    /// deadline): its temporary file goes, nothing is answered.
    restore_aborted: Option<(u32, u64)>,
    /// `RestoreData` jobs queued or being written.
    restore_chunks: usize,
    accepting: bool,
}

static QUEUE_LOCK: SpinLock<Queue> = SpinLock::new(Queue {
    jobs: [const { None }; QUEUE],
    next_seq: 0,
    cancel: None,
    restore_aborted: None,
    restore_chunks: 0,
    accepting: false,
});
/// Wakes the thread: a job, a cancel, a verdict or read of a scan's event,
/// the session's end, unload (synchronization event).
static WAKE: KernelEvent = KernelEvent::uninit();
static STOP: AtomicBool = AtomicBool::new(false);
static INITIALISED: AtomicBool = AtomicBool::new(false);
static THREAD: SpinLock<Option<SystemThread>> = SpinLock::new(None);
/// A scan runs (`Health.state` bit 2).
static SCAN_RUNNING: AtomicBool = AtomicBool::new(false);
/// `OnDemand` events sent (part of `Health.events_sent`).
static ON_DEMAND_SENT: AtomicU64 = AtomicU64::new(0);

/// Hands `job` to the thread; gives it back when the queue is full or the
/// thread is not running (the caller answers `Busy`). Any IRQL <= DISPATCH.
pub fn submit(mut job: Job) -> Result<(), Job> {
    if !INITIALISED.load(Ordering::Acquire) {
        return Err(job);
    }
    let chunk = matches!(job.message(), Some(Message::RestoreData(_)));
    let r = QUEUE_LOCK.with(|q| {
        if !q.accepting {
            return Err(job);
        }
        let seq = q.next_seq;
        match q.jobs.iter_mut().find(|j| j.is_none()) {
            Some(free) => {
                job.seq = seq;
                *free = Some(job);
                q.next_seq += 1;
                if chunk {
                    q.restore_chunks += 1;
                }
                Ok(())
            }
            None => Err(job),
        }
    });
    if r.is_ok() {
        WAKE.set();
    }
    r
}

/// A `ScanCancel` for scan `id` arrived (the session announced it: a scan
/// the thread runs or is about to). Any IRQL <= DISPATCH.
pub fn cancel_scan(id: u64) {
    if !INITIALISED.load(Ordering::Acquire) {
        return;
    }
    QUEUE_LOCK.with(|q| q.cancel = Some(id));
    WAKE.set();
}

/// Whether the thread takes another `RestoreData` now (fewer than
/// [`RESTORE_WINDOW`] are queued or being written). Any IRQL <= DISPATCH.
#[must_use]
pub fn restore_chunk_room() -> bool {
    INITIALISED.load(Ordering::Acquire) && QUEUE_LOCK.with(|q| q.restore_chunks < RESTORE_WINDOW)
}

/// The session ended restore `id` of session `generation` itself (it
/// answered it): the thread removes its temporary file. Any IRQL <=
/// DISPATCH.
pub fn abort_restore(generation: u32, id: u64) {
    if !INITIALISED.load(Ordering::Acquire) {
        return;
    }
    QUEUE_LOCK.with(|q| q.restore_aborted = Some((generation, id)));
    WAKE.set();
}

/// The restore the session ended itself, once.
pub(super) fn take_restore_aborted() -> Option<(u32, u64)> {
    QUEUE_LOCK.with(|q| q.restore_aborted.take())
}

/// A `RestoreData` job was written (or dropped): room for the next; the
/// session worker is woken to hand it over.
pub(super) fn restore_chunk_done() {
    QUEUE_LOCK.with(|q| q.restore_chunks = q.restore_chunks.saturating_sub(1));
    session_worker::wake_worker();
}

/// Wakes the thread (a scan's event was answered or read, or the session
/// ended). Any IRQL <= DISPATCH.
pub fn wake() {
    if INITIALISED.load(Ordering::Acquire) {
        WAKE.set();
    }
}

/// Starts the host-action thread (PASSIVE_LEVEL, `DriverEntry`, after the
/// filter started). On failure the session still announces the
/// capabilities, and every request is answered `Busy`.
pub fn start(agent: &'static Agent) -> NTSTATUS {
    if !INITIALISED.swap(true, Ordering::AcqRel) {
        QUEUE_LOCK.init();
        THREAD.init();
        WAKE.init(EventKind::Synchronization, false);
    }
    STOP.store(false, Ordering::Release);
    QUEUE_LOCK.with(|q| q.accepting = true);
    let ctx = core::ptr::from_ref(agent).cast_mut().cast::<c_void>();
    // SAFETY: `thread_main` only reads the agent, which outlives the
    // thread (`stop` joins it before the agent is freed).
    match unsafe { SystemThread::spawn(thread_main, ctx) } {
        Ok(t) => {
            THREAD.with(|slot| *slot = Some(t));
            STATUS_SUCCESS
        }
        Err((status, _)) => {
            QUEUE_LOCK.with(|q| q.accepting = false);
            crate::klog_status!(
                Level::Error,
                routine::SESSION,
                status,
                "host-action thread not started; host actions are answered Busy"
            );
            status
        }
    }
}

/// Stops the thread and waits for it (PASSIVE_LEVEL, unload, after the
/// session worker stopped and before the filter is unregistered: the
/// thread closes its files and drops its instance references first).
pub fn stop() {
    if !INITIALISED.load(Ordering::Acquire) {
        return;
    }
    QUEUE_LOCK.with(|q| q.accepting = false);
    STOP.store(true, Ordering::Release);
    WAKE.set();
    if let Some(t) = THREAD.with(Option::take) {
        t.join();
    }
    // Jobs never taken (their session is gone anyway).
    let left = QUEUE_LOCK.with(|q| {
        q.restore_chunks = 0;
        q.jobs.iter_mut().filter_map(Option::take).count()
    });
    let _ = left;
}

/// The thread's entry (`KSTART_ROUTINE`).
unsafe extern "system" fn thread_main(ctx: *mut c_void) {
    // SAFETY: `start` passed the installed agent, which outlives us.
    let agent = unsafe { &*ctx.cast::<Agent>() };
    run(agent);
    // PsTerminateSystemThread is not needed: returning ends a system thread.
}

/// The thread's loop (PASSIVE_LEVEL).
fn run(agent: &Agent) {
    let mut scan: Option<Box<Scan>> = None;
    let mut restore: Option<Box<Restoring>> = None;
    loop {
        if STOP.load(Ordering::Acquire) || agent.is_stopping() {
            break;
        }
        // Actions first: they are short.
        while let Some(job) = next_job(scan.is_some()) {
            handle(agent, job, &mut scan, &mut restore);
        }
        super::restore::check(&mut restore);
        let wait = match scan.as_mut() {
            Some(s) => {
                if s.step(agent) {
                    SCAN_RUNNING.store(false, Ordering::Release);
                    scan = None;
                    continue;
                }
                SCAN_TICK
            }
            None => IDLE_TICK,
        };
        let _ = WAKE.wait(Some(wait));
    }
    if let Some(mut s) = scan {
        s.abort();
    }
    if let Some(r) = restore {
        r.abort("unload");
    }
    SCAN_RUNNING.store(false, Ordering::Release);
}

/// The oldest job, skipping scans while one runs (a second scan never
/// reaches here: the session answers it `Busy`).
fn next_job(scan_running: bool) -> Option<Job> {
    QUEUE_LOCK.with(|q| {
        let (i, _) = q
            .jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| j.as_ref().map(|j| (i, j)))
            .filter(|(_, j)| !(scan_running && matches!(j.message(), Some(Message::ScanTree(_)))))
            .min_by_key(|(_, j)| j.seq)?;
        q.jobs[i].take()
    })
}

/// Runs one job and answers it. Never inlined into [`run`]: the actions'
/// frames (the policy's is ~4 KiB) would make the loop's frame pass a
/// page, which needs `__chkstk`.
#[inline(never)]
fn handle(
    agent: &Agent,
    job: Job,
    scan: &mut Option<Box<Scan>>,
    restore: &mut Option<Box<Restoring>>,
) {
    let answer = match job.message() {
        Some(Message::Remediate(r)) => remediate(agent, &job, &r),
        Some(Message::Policy(p)) => apply_policy(agent, &p),
        Some(Message::Restore(r)) => match super::restore::start(&job, &r, restore) {
            Some(answer) => answer,
            // Answered after its data.
            None => return,
        },
        Some(Message::RestoreData(d)) => {
            let answer = super::restore::write(&job, &d, restore);
            restore_chunk_done();
            match answer {
                Some(answer) => answer,
                None => return,
            }
        }
        Some(Message::ScanTree(t)) => {
            match Scan::start(agent, &job, &t) {
                Ok(s) => {
                    SCAN_RUNNING.store(true, Ordering::Release);
                    *scan = Some(s);
                }
                Err(done) => {
                    let _ =
                        session_worker::with_session(job.generation, |s| s.scan_done(job.id, done));
                }
            }
            return;
        }
        _ => ActionResult::status(ActionStatus::Rejected),
    };
    let sent = session_worker::with_session(job.generation, |s| s.complete_action(job.id, answer));
    if !matches!(sent, Some(Ok(()))) {
        crate::klog!(
            Level::Debug,
            routine::SESSION,
            "host request {} answered after its session ended: dropped",
            job.id
        );
    }
}

pub(super) fn failed(status: NTSTATUS) -> ActionResult {
    ActionResult::failed(OsError::NtStatus(status as u32))
}

// ---------------------------------------------------------------------------
// Files: our own opens below our instance
// ---------------------------------------------------------------------------

/// Our instance on a volume, referenced (`FltGetVolumeInstanceFromName`);
/// dereferenced on drop.
pub(super) struct InstanceRef(pub(super) PFLT_INSTANCE);

impl InstanceRef {
    /// Our instance on the volume `path` starts with (`\Device\<name>`, the
    /// first two components of a normalized name). PASSIVE_LEVEL.
    pub(super) fn for_path(path: &[u16]) -> Result<Self, NTSTATUS> {
        let end = nt_path::volume_name_len(path).ok_or(STATUS_OBJECT_PATH_NOT_FOUND)?;
        let name = unicode_string_for(&path[..end]).ok_or(STATUS_NAME_TOO_LONG)?;
        let filter = filter_callbacks::filter();
        let mut volume: PFLT_VOLUME = 0;
        // SAFETY: FltGetVolumeFromName (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetvolumefromname):
        // our registered filter, a UNICODE_STRING over `path` for the call;
        // the volume comes back referenced. PASSIVE_LEVEL.
        let status = unsafe { FltGetVolumeFromName(filter, &name, &mut volume) };
        if !nt_success(status) {
            return Err(status);
        }
        let mut instance: PFLT_INSTANCE = 0;
        // SAFETY: FltGetVolumeInstanceFromName (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetvolumeinstancefromname):
        // the referenced volume; a null instance name picks our
        // highest-altitude instance on it, referenced. IRQL <= APC_LEVEL.
        let status = unsafe {
            FltGetVolumeInstanceFromName(filter, volume, core::ptr::null(), &mut instance)
        };
        // SAFETY: FltObjectDereference (fltkernel.h): drops the volume
        // reference FltGetVolumeFromName added.
        unsafe { FltObjectDereference(volume as *mut c_void) };
        if nt_success(status) {
            Ok(InstanceRef(instance))
        } else {
            Err(status)
        }
    }
}

impl Drop for InstanceRef {
    fn drop(&mut self) {
        // SAFETY: FltObjectDereference: drops the reference
        // FltGetVolumeInstanceFromName added.
        unsafe { FltObjectDereference(self.0 as *mut c_void) };
    }
}

/// A file or directory we opened with `FltCreateFileEx2`: its kernel
/// handle and referenced file object, released on drop (PASSIVE_LEVEL).
pub(super) struct OpenFile {
    pub(super) handle: HANDLE,
    pub(super) file_object: *mut FILE_OBJECT,
}

impl OpenFile {
    /// Opens `path` (a full NT name) from `instance`: the create goes to the
    /// file system below us, so our own callbacks never see it.
    /// `FILE_OPEN_REPARSE_POINT`: a reparse point itself is opened, never
    /// its target. PASSIVE_LEVEL.
    pub(super) fn open(
        instance: PFLT_INSTANCE,
        path: &[u16],
        access: u32,
        options: u32,
    ) -> Result<Self, NTSTATUS> {
        Self::create(instance, None, path, access, FILE_OPEN, options)
    }

    /// `FltCreateFileEx2` from `instance` with `disposition`, `name`
    /// relative to the directory `root` (one component) or a full NT name
    /// (`root` `None`), always `FILE_OPEN_REPARSE_POINT` (a reparse point
    /// is opened itself, never followed) and without share-access checks.
    /// PASSIVE_LEVEL.
    pub(super) fn create(
        instance: PFLT_INSTANCE,
        root: Option<&OpenFile>,
        name: &[u16],
        access: u32,
        disposition: u32,
        options: u32,
    ) -> Result<Self, NTSTATUS> {
        let mut name = unicode_string_for(name).ok_or(STATUS_NAME_TOO_LONG)?;
        // InitializeObjectAttributes(&oa, &name, OBJ_KERNEL_HANDLE |
        // OBJ_CASE_INSENSITIVE, root, NULL) (ntdef.h macro, written out).
        let oa = OBJECT_ATTRIBUTES {
            Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
            RootDirectory: root.map_or(core::ptr::null_mut(), |r| r.handle),
            ObjectName: &mut name,
            Attributes: OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE,
            SecurityDescriptor: core::ptr::null(),
            SecurityQualityOfService: core::ptr::null(),
        };
        let mut handle: HANDLE = core::ptr::null_mut();
        let mut file_object: *mut FILE_OBJECT = core::ptr::null_mut();
        // SAFETY: all-zero is a valid IO_STATUS_BLOCK.
        let mut iosb: IO_STATUS_BLOCK = unsafe { core::mem::zeroed() };
        // SAFETY: FltCreateFileEx2 (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltcreatefileex2):
        // our filter and a referenced instance of it; object attributes
        // with a kernel handle, a name valid for the call and, if any, the
        // kernel handle of a directory we hold open on the same volume;
        // out-pointers to locals; normal attributes for a new file; no
        // EAs, no driver context. The returned file object is referenced
        // (released in Drop). PASSIVE_LEVEL.
        let status = unsafe {
            FltCreateFileEx2(
                filter_callbacks::filter(),
                instance,
                &mut handle,
                &mut file_object,
                access | SYNCHRONIZE,
                &oa,
                &mut iosb,
                core::ptr::null(),
                FILE_ATTRIBUTE_NORMAL,
                SHARE_ALL,
                disposition,
                options | FILE_OPEN_REPARSE_POINT | FILE_SYNCHRONOUS_IO_NONALERT,
                core::ptr::null(),
                0,
                IO_IGNORE_SHARE_ACCESS_CHECK,
                core::ptr::null(),
            )
        };
        if nt_success(status) {
            Ok(OpenFile {
                handle,
                file_object,
            })
        } else {
            Err(status)
        }
    }

    pub(super) fn set_information<T>(
        &self,
        instance: PFLT_INSTANCE,
        value: &T,
        class: i32,
    ) -> NTSTATUS {
        // SAFETY: FltSetInformationFile (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltsetinformationfile):
        // our open file object of this instance; `value` is the structure
        // of `class` (the callers pair them). PASSIVE_LEVEL.
        unsafe {
            FltSetInformationFile(
                instance,
                self.file_object,
                core::ptr::from_ref(value).cast(),
                size_of::<T>() as u32,
                class,
            )
        }
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        // SAFETY: ObfDereferenceObject (wdm.h, ObDereferenceObject):
        // drops the reference FltCreateFileEx2 gave with the file object.
        unsafe { ObfDereferenceObject(self.file_object.cast()) };
        // SAFETY: FltClose (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltclose):
        // the kernel handle FltCreateFileEx2 returned, closed once.
        let _ = unsafe { FltClose(self.handle) };
    }
}

/// A protocol path as UTF-16 units (`None`: not text, or too long).
fn path_units(path: &FilePath<'_>) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    out.try_reserve_exact(PATH_UNITS).ok()?;
    match *path {
        FilePath::Utf16Le(b) => {
            out.extend(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
        }
        FilePath::Utf8(t) => out.extend(t.encode_utf16()),
        FilePath::Bytes(b) => out.extend(core::str::from_utf8(b).ok()?.encode_utf16()),
    }
    (!out.is_empty() && out.len() <= PATH_UNITS).then_some(out)
}

/// The path a host action names, as UTF-16 units in the normalized form
/// the filter reports and every action takes (`\Device\HarddiskVolumeN\...`):
/// a drive letter (`C:\...`, `\??\C:\...`, `\DosDevices\C:\...`, as an
/// admin types it) is spelled as its volume's device name
/// ([`device_name_of`]); any other path comes as it is. No such drive is
/// `STATUS_OBJECT_PATH_NOT_FOUND` (`NotFound` like a missing directory);
/// not text or too long, `STATUS_NAME_TOO_LONG`. PASSIVE_LEVEL.
pub(super) fn target_path(path: &FilePath<'_>) -> Result<Vec<u16>, NTSTATUS> {
    let path = path_units(path).ok_or(STATUS_NAME_TOO_LONG)?;
    let Some((drive, rest)) = nt_path::drive_letter(&path) else {
        return Ok(path);
    };
    let mut out = match device_name_of(&[drive, u16::from(b':')]) {
        Err(STATUS_FLT_VOLUME_NOT_FOUND) => return Err(STATUS_OBJECT_PATH_NOT_FOUND),
        other => other?,
    };
    if out.try_reserve_exact(path.len() - rest + 1).is_err() {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    out.extend_from_slice(&path[rest..]);
    if rest == path.len() {
        // "C:" alone: the root directory.
        out.push(u16::from(b'\\'));
    }
    if out.len() > PATH_UNITS {
        return Err(STATUS_NAME_TOO_LONG);
    }
    Ok(out)
}

/// The device name (`\Device\HarddiskVolumeN`) of the volume
/// `FltGetVolumeFromName` finds for `name` (a drive, `D:`; a volume GUID
/// name, `\??\Volume{...}`; or a device name), by `FltGetVolumeName`.
/// PASSIVE_LEVEL.
fn device_name_of(name: &[u16]) -> Result<Vec<u16>, NTSTATUS> {
    let name = unicode_string_for(name).ok_or(STATUS_NAME_TOO_LONG)?;
    let mut volume: PFLT_VOLUME = 0;
    // SAFETY: FltGetVolumeFromName (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetvolumefromname,
    // which takes "D:" names): our registered filter, a UNICODE_STRING over
    // the caller's units for the call; the volume comes back referenced.
    // PASSIVE_LEVEL.
    let status = unsafe { FltGetVolumeFromName(filter_callbacks::filter(), &name, &mut volume) };
    if !nt_success(status) {
        return Err(status);
    }
    let named = volume_device_name(volume);
    // SAFETY: FltObjectDereference (fltkernel.h): drops the reference
    // FltGetVolumeFromName added.
    unsafe { FltObjectDereference(volume as *mut c_void) };
    named
}

/// The volume's device name (`\Device\HarddiskVolumeN`), by
/// `FltGetVolumeName`. PASSIVE_LEVEL.
fn volume_device_name(volume: PFLT_VOLUME) -> Result<Vec<u16>, NTSTATUS> {
    let mut units: Vec<u16> = Vec::new();
    let mut capacity = 64usize;
    for _ in 0..2 {
        units.clear();
        if units.try_reserve_exact(capacity).is_err() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        units.resize(capacity, 0);
        let bytes = u16::try_from(capacity * 2).map_err(|_| STATUS_NAME_TOO_LONG)?;
        let mut name = UNICODE_STRING {
            Length: 0,
            MaximumLength: bytes,
            Buffer: units.as_mut_ptr(),
        };
        let mut needed = 0u32;
        // SAFETY: FltGetVolumeName (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetvolumename):
        // a referenced volume; a UNICODE_STRING whose buffer is `units`
        // (MaximumLength bytes); `needed` receives the size when it is too
        // small. IRQL <= APC_LEVEL.
        let status = unsafe { FltGetVolumeName(volume, &mut name, &mut needed) };
        if nt_success(status) {
            units.truncate(usize::from(name.Length) / 2);
            return Ok(units);
        }
        if status != STATUS_BUFFER_TOO_SMALL {
            return Err(status);
        }
        capacity = (needed as usize).div_ceil(2);
    }
    Err(STATUS_BUFFER_TOO_SMALL)
}

pub(super) fn not_found(status: NTSTATUS) -> bool {
    status == STATUS_OBJECT_NAME_NOT_FOUND || status == STATUS_OBJECT_PATH_NOT_FOUND
}

// ---------------------------------------------------------------------------
// Remediate (§14.2)
// ---------------------------------------------------------------------------

/// Removes or empties the file `r` names if it still has the identity the
/// host judged. PASSIVE_LEVEL (the host-action thread).
fn remediate(_agent: &Agent, job: &Job, r: &Remediate<'_>) -> ActionResult {
    let deadline = job
        .received
        .saturating_add(Duration::from_millis(u64::from(r.deadline_ms)));
    if kernel::now().has_reached(deadline) {
        // The host stopped waiting (§14.1): do not start.
        return failed(STATUS_IO_TIMEOUT);
    }
    let path = match target_path(&r.path) {
        Ok(p) => p,
        Err(status) if not_found(status) => return ActionResult::status(ActionStatus::NotFound),
        Err(status) => return failed(status),
    };
    let instance = match InstanceRef::for_path(&path) {
        Ok(i) => i,
        Err(status) if not_found(status) || status == STATUS_INVALID_PARAMETER => {
            return ActionResult::status(ActionStatus::NotFound);
        }
        Err(status) => return failed(status),
    };
    let access = match r.action {
        RemediateAction::Delete => DELETE | FILE_READ_ATTRIBUTES,
        RemediateAction::Truncate => FILE_WRITE_DATA | FILE_READ_ATTRIBUTES,
    };
    let file = match OpenFile::open(instance.0, &path, access, FILE_NON_DIRECTORY_FILE) {
        Ok(f) => f,
        Err(status) if not_found(status) => {
            return ActionResult::status(ActionStatus::NotFound);
        }
        Err(status) => return failed(status),
    };
    // The identity on the very file object we act on (§14.2).
    let Some(now_is) = filter_callbacks::file_identity(instance.0, file.file_object) else {
        return failed(STATUS_UNSUCCESSFUL);
    };
    if now_is != r.file {
        crate::klog!(
            Level::Warn,
            routine::SESSION,
            "remediation of {} refused: the file changed since it was judged",
            Utf16(&path)
        );
        return ActionResult::status(ActionStatus::Changed);
    }
    let result = match r.action {
        RemediateAction::Truncate => {
            let eof = FILE_END_OF_FILE_INFORMATION { EndOfFile: 0 };
            let status = file.set_information(instance.0, &eof, FileEndOfFileInformation);
            if nt_success(status) {
                ActionResult::status(ActionStatus::Done)
            } else {
                failed(status)
            }
        }
        RemediateAction::Delete => match mark_deleted(instance.0, &file) {
            Err(status) => failed(status),
            Ok(true) => ActionResult::status(ActionStatus::Done),
            Ok(false) => {
                drop(file);
                // Our handle was the last one if the name is gone now.
                match OpenFile::open(instance.0, &path, FILE_READ_ATTRIBUTES, 0) {
                    Err(s) if not_found(s) => ActionResult::status(ActionStatus::Done),
                    _ => ActionResult::status(ActionStatus::DoneOnClose),
                }
            }
        },
    };
    crate::klog!(
        Level::Audit,
        routine::SESSION,
        "host remediation {:?} of {}: {:?}",
        r.action,
        Utf16(&path),
        result.status
    );
    result
}

/// Deletes the file `file` is open on (opened with `DELETE`): with POSIX
/// semantics, the name goes now (`Ok(true)`); where the file system has
/// none (FAT, older NTFS), the name goes when the last handle closes
/// (`Ok(false)`). PASSIVE_LEVEL.
pub(super) fn mark_deleted(instance: PFLT_INSTANCE, file: &OpenFile) -> Result<bool, NTSTATUS> {
    let ex = FILE_DISPOSITION_INFORMATION_EX {
        Flags: FILE_DISPOSITION_DELETE
            | FILE_DISPOSITION_POSIX_SEMANTICS
            | FILE_DISPOSITION_IGNORE_READONLY_ATTRIBUTE,
    };
    let status = file.set_information(instance, &ex, FileDispositionInformationEx);
    if nt_success(status) {
        return Ok(true);
    }
    if status != STATUS_INVALID_PARAMETER
        && status != STATUS_NOT_SUPPORTED
        && status != STATUS_INVALID_INFO_CLASS
    {
        return Err(status);
    }
    let old = FILE_DISPOSITION_INFORMATION { DeleteFile: true };
    let status = file.set_information(instance, &old, FileDispositionInformation);
    if nt_success(status) {
        Ok(false)
    } else {
        Err(status)
    }
}

// ---------------------------------------------------------------------------
// Policy (§14.6)
// ---------------------------------------------------------------------------

/// Checks the whole policy aside, then puts it in place under the
/// exclusive lock. PASSIVE_LEVEL (the host-action thread).
#[inline(never)]
fn apply_policy(agent: &Agent, p: &Policy<'_>) -> ActionResult {
    let pinned = agent.params.pinned_policy;
    if p.version == agent.live.version() {
        return ActionResult {
            value: p.version,
            ..ActionResult::status(ActionStatus::Done)
        };
    }
    // A heap copy of the open policy in effect (18 KB: never on the stack).
    let layout = core::alloc::Layout::new::<OpenPolicy>();
    // SAFETY: OpenPolicy is not zero-sized.
    let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<OpenPolicy>();
    if raw.is_null() {
        return failed(STATUS_INSUFFICIENT_RESOURCES);
    }
    let (current, mut images) = agent.live.read(|l| {
        // SAFETY: OpenPolicy is plain data (no Drop, no pointers): a
        // bitwise copy into fresh storage is a valid second value.
        unsafe { core::ptr::copy_nonoverlapping(&raw const l.policy, raw, 1) };
        (l.settings, l.images)
    });
    // SAFETY: initialised just above; owned by this Box from now on.
    let mut staged = unsafe { Box::from_raw(raw) };
    let out =
        match thinagent_guest::host_policy::stage(p, pinned, &current, &mut staged, &mut images) {
            Ok(out) => out,
            Err(why) => {
                crate::klog!(
                    Level::Warn,
                    routine::SESSION,
                    "host policy {} rejected: {}",
                    p.version,
                    why
                );
                return ActionResult::status(ActionStatus::Rejected);
            }
        };
    agent.live.write(|l| {
        if out.open_policy_changed {
            // SAFETY: as above: plain data, copied in place.
            unsafe { core::ptr::copy_nonoverlapping(&raw const *staged, &raw mut l.policy, 1) };
            l.images = images;
        }
        l.settings = out.settings;
    });
    if p.debug_level.is_some() && out.pinned & thinagent_protocol::PolicyFields::DEBUG_LEVEL.0 == 0
    {
        // Only a policy that sets it changes the level (the control
        // device may have changed it live since load).
        super::log::set_debug_level(out.settings.debug_level);
    }
    // The running session: new queries get the new deadline and fail mode.
    if let Some(g) = session_worker::live_generation() {
        let _ = session_worker::with_session(g, |s| {
            s.set_on_access(
                Duration::from_millis(u64::from(out.settings.query_timeout_ms)),
                out.settings.fail_mode,
            );
        });
    }
    crate::klog!(
        Level::Info,
        routine::SESSION,
        "host policy {} in effect (fail mode {:?}, query timeout {} ms, pinned {:#x})",
        p.version,
        out.settings.fail_mode,
        out.settings.query_timeout_ms,
        out.pinned
    );
    ActionResult {
        value: p.version,
        pinned: out.pinned,
        ..ActionResult::status(ActionStatus::Done)
    }
}

// ---------------------------------------------------------------------------
// ScanTree (§14.4, §14.5)
// ---------------------------------------------------------------------------

/// One open directory of the walk.
struct Dir {
    file: OpenFile,
    /// Length of `Scan::path` (UTF-16 units) naming this directory.
    path_len: usize,
    /// Our instance on this directory's volume.
    instance: PFLT_INSTANCE,
    /// For the root of a volume entered through a mount point
    /// (`CROSS_MOUNTS`): the walk's path before it, put back when this
    /// directory is done (names on the mounted volume are its own device
    /// name's, as the filter reports them).
    saved_path: Option<Vec<u16>>,
}

/// An `OnDemand` event sent, its file kept open until its verdict.
struct Sent {
    slot: usize,
    file: OpenFile,
}

/// A running scan.
struct Scan {
    id: u64,
    generation: u32,
    flags: ScanFlags,
    max_in_flight: u16,
    max_depth: u16,
    progress_interval: Option<Duration>,
    max_file_size: u64,
    instance: InstanceRef,
    /// Open directories, root first (at most [`MAX_DEPTH`] + 1).
    stack: Vec<Dir>,
    /// The current path (directory, then the file being looked at).
    path: Vec<u16>,
    /// A regular file opened and counted but not yet sent (no room for
    /// its event): offered again first on the next turn. Its path is
    /// `path`, which the walk leaves alone meanwhile. The root, when it is
    /// a file, starts here.
    pending_file: Option<OpenFile>,
    /// Our instances on the volumes entered through mount points
    /// (`CROSS_MOUNTS`), referenced until the scan ends (files sent from
    /// them may still be read).
    mounts: Vec<InstanceRef>,
    /// Device names of the volumes walked (the root's first): a volume is
    /// entered once, so two mount points of one volume, or a volume
    /// mounted inside itself, cannot loop.
    volumes_seen: Vec<Vec<u16>>,
    sent: Vec<Sent>,
    counters: ScanCounters,
    last_progress: Instant,
    /// `ScanDone` went out (cancelled): only the verdicts are awaited.
    answered: bool,
    dir_buffer: Vec<u8>,
}

impl Scan {
    /// Opens the root. `Err`: the scan's `ScanDone` at once (NotFound,
    /// Failed). PASSIVE_LEVEL.
    fn start(_agent: &Agent, job: &Job, t: &ScanTree<'_>) -> Result<Box<Scan>, ScanDone> {
        let done = |status, error| ScanDone {
            counters: ScanCounters::default(),
            status,
            error,
        };
        let fail = |s: NTSTATUS| {
            if not_found(s) {
                done(ScanStatus::NotFound, None)
            } else {
                done(ScanStatus::Failed, Some(OsError::NtStatus(s as u32)))
            }
        };
        let mut path = target_path(&t.root).map_err(fail)?;
        // "\Device\HarddiskVolume3\" names the volume's root directory;
        // without its last backslash it would name the volume itself.
        let slash = u16::from(b'\\');
        while path.len() > 1
            && path.last() == Some(&slash)
            && path.iter().filter(|&&u| u == slash).count() > 3
        {
            path.pop();
        }
        let instance = InstanceRef::for_path(&path).map_err(|s| {
            fail(if s == STATUS_INVALID_PARAMETER {
                STATUS_OBJECT_PATH_NOT_FOUND
            } else {
                s
            })
        })?;
        let root = OpenFile::open(
            instance.0,
            &path,
            FILE_READ_DATA | FILE_LIST_DIRECTORY | FILE_TRAVERSE | FILE_READ_ATTRIBUTES,
            0,
        )
        .map_err(fail)?;
        let is_dir = is_directory(instance.0, &root);
        let mut dir_buffer = Vec::new();
        let mut stack = Vec::new();
        let mut sent = Vec::new();
        if dir_buffer.try_reserve_exact(DIR_BUFFER).is_err()
            || stack.try_reserve_exact(MAX_DEPTH + 1).is_err()
            || sent.try_reserve_exact(SCAN_SLOTS).is_err()
        {
            return Err(fail(STATUS_INSUFFICIENT_RESOURCES));
        }
        dir_buffer.resize(DIR_BUFFER, 0);
        let path_len = path.len();
        let (pending_file, reparse) = match is_dir {
            Some((true, reparse)) => {
                stack.push(Dir {
                    file: root,
                    path_len,
                    instance: instance.0,
                    saved_path: None,
                });
                (None, reparse)
            }
            Some((false, reparse)) => (Some(root), reparse),
            None => return Err(fail(STATUS_UNSUCCESSFUL)),
        };
        let _ = reparse; // the root itself is where the host asked to start
        let mut volumes_seen = Vec::new();
        let root_volume = nt_path::volume_name_len(&path).unwrap_or(path.len());
        let mut root_name = Vec::new();
        if root_name.try_reserve_exact(root_volume).is_err()
            || volumes_seen.try_reserve_exact(MAX_MOUNTS + 1).is_err()
        {
            return Err(fail(STATUS_INSUFFICIENT_RESOURCES));
        }
        root_name.extend_from_slice(&path[..root_volume]);
        volumes_seen.push(root_name);
        let mut counters = ScanCounters::default();
        if pending_file.is_some() {
            counters.files_seen = 1;
        }
        crate::klog!(
            Level::Info,
            routine::SESSION,
            "host scan {} of {} started",
            job.id,
            Utf16(&path)
        );
        Ok(Box::new(Scan {
            id: job.id,
            generation: job.generation,
            flags: t.flags,
            max_in_flight: t.max_in_flight,
            max_depth: t.max_depth,
            progress_interval: (t.progress_interval_ms > 0)
                .then(|| Duration::from_millis(u64::from(t.progress_interval_ms))),
            max_file_size: t.max_file_size,
            instance,
            stack,
            path,
            pending_file,
            mounts: Vec::new(),
            volumes_seen,
            sent,
            counters,
            last_progress: kernel::now(),
            answered: false,
            dir_buffer,
        }))
    }

    /// One turn: collect verdicts, handle a cancel, walk while there is
    /// room, report progress, finish. `true` when the scan is over (its
    /// `ScanDone` sent, or its session gone). PASSIVE_LEVEL.
    fn step(&mut self, agent: &Agent) -> bool {
        self.collect();
        if session_worker::live_generation() != Some(self.generation) {
            // The session ended: its requests are void (§14.1). The
            // session answered every event at its close, so `collect` has
            // released them all.
            self.abort();
            return true;
        }
        let cancelled = QUEUE_LOCK.with(|q| {
            if q.cancel == Some(self.id) {
                q.cancel = None;
                true
            } else {
                false
            }
        });
        if cancelled && !self.answered {
            self.finish(ScanStatus::Cancelled);
            self.stop_walking();
        }
        if !self.answered {
            self.walk(agent);
            self.progress();
            if self.stack.is_empty() && self.pending_file.is_none() && self.sent.is_empty() {
                self.finish(ScanStatus::Completed);
            }
        }
        self.answered && self.sent.is_empty()
    }

    /// Releases every event the session answered.
    fn collect(&mut self) {
        let mut i = 0;
        while i < self.sent.len() {
            match session_worker::take_on_demand(self.sent[i].slot) {
                Some(answer) => {
                    let s = self.sent.swap_remove(i);
                    if !self.answered {
                        match answer {
                            Some(deny) => {
                                self.counters.files_scanned += 1;
                                if deny {
                                    self.counters.files_denied += 1;
                                }
                            }
                            None => self.counters.errors += 1,
                        }
                    }
                    drop(s.file);
                }
                None => i += 1,
            }
        }
    }

    fn stop_walking(&mut self) {
        self.stack.clear();
        self.pending_file = None;
    }

    /// Sends `ScanDone(status)` with the counters now.
    fn finish(&mut self, status: ScanStatus) {
        self.answered = true;
        let done = ScanDone {
            counters: self.counters,
            status,
            error: None,
        };
        let _ = session_worker::with_session(self.generation, |s| s.scan_done(self.id, done));
        crate::klog!(
            Level::Info,
            routine::SESSION,
            "host scan {} {:?}: {} seen, {} scanned, {} denied, {} skipped, {} errors",
            self.id,
            status,
            self.counters.files_seen,
            self.counters.files_scanned,
            self.counters.files_denied,
            self.counters.files_skipped,
            self.counters.errors
        );
    }

    /// The session is gone or unload began: close everything, answer
    /// nothing (nobody could receive it).
    fn abort(&mut self) {
        self.stop_walking();
        // Events of a closed session were all answered at its close; at
        // unload the session worker has already stopped, so no read runs.
        for _ in 0..100 {
            self.collect();
            if self.sent.is_empty() {
                break;
            }
            let _ = WAKE.wait(Some(SCAN_TICK));
        }
        // Whatever is left is closed: no read can start on a slot whose
        // session ended.
        self.sent.clear();
        self.answered = true;
    }

    fn progress(&mut self) {
        let Some(every) = self.progress_interval else {
            return;
        };
        let now = kernel::now();
        if now.saturating_duration_since(self.last_progress) >= every {
            let c = self.counters;
            if session_worker::with_session(self.generation, |s| s.scan_progress(self.id, c))
                == Some(true)
            {
                self.last_progress = now;
            }
        }
    }

    /// Walks until the budget is spent, the room for events is full, or
    /// the tree is done.
    fn walk(&mut self, agent: &Agent) {
        if let Some(root) = self.pending_file.take() {
            let len = self.path.len();
            if !self.offer_file(agent, root, len) {
                return;
            }
        }
        for _ in 0..WALK_BUDGET {
            if self.sent.len() >= SCAN_SLOTS.min(usize::from(self.max_in_flight.max(1))) {
                return;
            }
            let Some(top) = self.stack.last() else {
                return;
            };
            let dir_len = top.path_len;
            let entry = match self.next_entry() {
                Ok(Some(e)) => e,
                Ok(None) => {
                    self.pop_dir();
                    continue;
                }
                Err(status) => {
                    crate::klog_status!(
                        Level::Debug,
                        routine::SESSION,
                        status,
                        "scan: a directory could not be listed"
                    );
                    self.counters.errors += 1;
                    self.pop_dir();
                    continue;
                }
            };
            let (attributes, size, name_len) = entry;
            // The child's path: directory + '\' + name (in dir_buffer).
            self.path.truncate(dir_len);
            if dir_len + 1 + name_len > PATH_UNITS {
                self.counters.errors += 1;
                continue;
            }
            if self.path.last() != Some(&u16::from(b'\\')) {
                self.path.push(u16::from(b'\\'));
            }
            let name_at = self.path.len();
            for i in 0..name_len {
                let b = 0x40 + 2 * i;
                self.path.push(u16::from_le_bytes([
                    self.dir_buffer[b],
                    self.dir_buffer[b + 1],
                ]));
            }
            let name = &self.path[name_at..];
            if name == [u16::from(b'.')] || name == [u16::from(b'.'), u16::from(b'.')] {
                continue;
            }
            if attributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
                // Symbolic links and junctions: never followed (§14.4), so
                // the walk cannot loop. A volume mount point is entered
                // with `CROSS_MOUNTS` only, as the root of that volume.
                if attributes & FILE_ATTRIBUTE_DIRECTORY != 0
                    && self.flags.contains(ScanFlags::CROSS_MOUNTS)
                    && self.may_enter(agent)
                {
                    self.enter_mount();
                }
                continue;
            }
            if attributes & FILE_ATTRIBUTE_DIRECTORY != 0 {
                if !self.may_enter(agent) {
                    continue;
                }
                let instance = self.current_instance();
                match OpenFile::open(
                    instance,
                    &self.path,
                    FILE_LIST_DIRECTORY | FILE_TRAVERSE | FILE_READ_ATTRIBUTES,
                    FILE_DIRECTORY_FILE,
                ) {
                    Ok(file) => {
                        let path_len = self.path.len();
                        self.stack.push(Dir {
                            file,
                            path_len,
                            instance,
                            saved_path: None,
                        });
                    }
                    Err(_) => self.counters.errors += 1,
                }
                continue;
            }
            // A regular file.
            self.counters.files_seen += 1;
            let limit = if self.max_file_size == 0 {
                u64::MAX
            } else {
                self.max_file_size
            };
            let skip = size > limit
                || (!self.flags.contains(ScanFlags::INCLUDE_EXCLUDED)
                    && agent.live.read(|l| {
                        let p = PathRef::Utf16(&self.path);
                        l.policy.path_excluded(p)
                            || l.policy.extension_excluded(p)
                            || l.policy.max_file_size().is_some_and(|m| size > m)
                    }));
            if skip {
                self.counters.files_skipped += 1;
                continue;
            }
            match OpenFile::open(
                self.current_instance(),
                &self.path,
                FILE_READ_DATA | FILE_READ_ATTRIBUTES,
                FILE_NON_DIRECTORY_FILE,
            ) {
                Ok(file) => {
                    let len = self.path.len();
                    if !self.offer_file(agent, file, len) {
                        // No room: the file is offered again after a
                        // verdict (it stays counted once).
                        return;
                    }
                }
                Err(_) => self.counters.errors += 1,
            }
        }
    }

    /// Our instance on the volume being walked (the top directory's; the
    /// root's when the root is a file).
    fn current_instance(&self) -> PFLT_INSTANCE {
        self.stack.last().map_or(self.instance.0, |d| d.instance)
    }

    /// The top directory is done: closed, and the path before a mounted
    /// volume's root put back.
    fn pop_dir(&mut self) {
        if let Some(dir) = self.stack.pop()
            && let Some(saved) = dir.saved_path
        {
            self.path = saved;
        }
    }

    /// Whether the directory at `self.path` is walked: within `max_depth`
    /// and [`MAX_DEPTH`] (deeper is an error), not excluded (unless
    /// `INCLUDE_EXCLUDED`).
    fn may_enter(&mut self, agent: &Agent) -> bool {
        let depth = self.stack.len(); // levels below the root + 1
        if self.max_depth != 0 && depth > usize::from(self.max_depth) {
            return false;
        }
        if depth > MAX_DEPTH {
            self.counters.errors += 1;
            return false;
        }
        self.flags.contains(ScanFlags::INCLUDE_EXCLUDED)
            || !agent
                .live
                .read(|l| l.policy.path_excluded(PathRef::Utf16(&self.path)))
    }

    /// `CROSS_MOUNTS`: the reparse point at `self.path`, if it is a volume
    /// mount point (`FSCTL_GET_REPARSE_POINT` names `\??\Volume{GUID}\`; a
    /// junction names a directory and is never followed), is walked as the
    /// root of that volume, under its device name, through our instance
    /// there; each volume once ([`Scan::volumes_seen`]), at most
    /// [`MAX_MOUNTS`] of them. PASSIVE_LEVEL.
    fn enter_mount(&mut self) {
        let here = self.current_instance();
        let Ok(point) = OpenFile::open(here, &self.path, FILE_READ_ATTRIBUTES, FILE_DIRECTORY_FILE)
        else {
            self.counters.errors += 1;
            return;
        };
        let target = mount_target(here, &point);
        drop(point);
        let Some(guid_name) = target else {
            return; // a junction or a symbolic link
        };
        match self.open_mounted_volume(&guid_name) {
            Ok(Some((instance, device, root))) => {
                let path_len = device.len();
                let saved = core::mem::replace(&mut self.path, device.clone());
                crate::klog!(
                    Level::Debug,
                    routine::SESSION,
                    "scan {}: entering the volume mounted at {} ({})",
                    self.id,
                    Utf16(&saved),
                    Utf16(&device)
                );
                self.stack.push(Dir {
                    file: root,
                    path_len,
                    instance: instance.0,
                    saved_path: Some(saved),
                });
                self.mounts.push(instance);
                self.volumes_seen.push(device);
            }
            Ok(None) => {} // walked already
            Err(status) => {
                crate::klog_status!(
                    Level::Debug,
                    routine::SESSION,
                    status,
                    "scan {}: the volume mounted at {} could not be entered",
                    self.id,
                    Utf16(&self.path)
                );
                self.counters.errors += 1;
            }
        }
    }

    /// Our instance on the volume `guid_name` names, its device name and
    /// its root directory, opened; `None` when it was walked already.
    fn open_mounted_volume(
        &mut self,
        guid_name: &[u16],
    ) -> Result<Option<(InstanceRef, Vec<u16>, OpenFile)>, NTSTATUS> {
        if self.mounts.len() >= MAX_MOUNTS {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let device = device_name_of(guid_name)?;
        let seen = self
            .volumes_seen
            .iter()
            .any(|v| nt_path::eq_ascii_case(v, &device));
        if seen {
            return Ok(None);
        }
        let instance = InstanceRef::for_path(&device)?;
        if device.len() + 1 > PATH_UNITS {
            return Err(STATUS_NAME_TOO_LONG);
        }
        let mut root_name = Vec::new();
        root_name
            .try_reserve_exact(device.len() + 1)
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        root_name.extend_from_slice(&device);
        root_name.push(u16::from(b'\\'));
        let root = OpenFile::open(
            instance.0,
            &root_name,
            FILE_LIST_DIRECTORY | FILE_TRAVERSE | FILE_READ_ATTRIBUTES,
            FILE_DIRECTORY_FILE,
        )?;
        Ok(Some((instance, device, root)))
    }

    /// Sends the opened file at `self.path[..len]` as an `OnDemand` event.
    /// `false` when there is no room now: the file waits in
    /// `pending_file` and the walk stops for this turn.
    fn offer_file(&mut self, _agent: &Agent, file: OpenFile, len: usize) -> bool {
        let instance = self.current_instance();
        let Some(identity) = filter_callbacks::file_identity(instance, file.file_object) else {
            self.counters.errors += 1;
            return true;
        };
        let mut bytes = Vec::new();
        if bytes.try_reserve_exact(len * 2).is_err() {
            self.counters.errors += 1;
            return true;
        }
        for u in &self.path[..len] {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        let offer = OnDemandFile {
            file: identity,
            path: &bytes,
            instance,
            file_object: file.file_object,
        };
        match session_worker::submit_on_demand(self.generation, self.max_in_flight, &offer) {
            OnDemand::Submitted(slot) => {
                ON_DEMAND_SENT.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes += identity.size;
                self.sent.push(Sent { slot, file });
                true
            }
            OnDemand::NoRoom => {
                // Keep it: offered again on the next turn.
                self.pending_file = Some(file);
                false
            }
            OnDemand::Closed => true,
        }
    }

    /// The next entry of the top directory: (attributes, size, name
    /// length in units, the name at offset 0x40 of `dir_buffer`), `None`
    /// at its end.
    fn next_entry(&mut self) -> Result<Option<(u32, u64, usize)>, NTSTATUS> {
        let top = self.stack.last().expect("a directory is open");
        let mut returned = 0u32;
        // SAFETY: FltQueryDirectoryFile (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltquerydirectoryfile):
        // our open directory's file object of this instance; a buffer of
        // DIR_BUFFER bytes for FILE_DIRECTORY_INFORMATION entries; one
        // entry per call; no file-name filter; the enumeration goes on
        // from the file object's position. PASSIVE_LEVEL.
        let status = unsafe {
            FltQueryDirectoryFile(
                top.instance,
                top.file.file_object,
                self.dir_buffer.as_mut_ptr().cast(),
                DIR_BUFFER as u32,
                FileDirectoryInformation,
                true,
                core::ptr::null(),
                false,
                &mut returned,
            )
        };
        if status == STATUS_NO_MORE_FILES {
            return Ok(None);
        }
        if !nt_success(status) {
            return Err(status);
        }
        let b = &self.dir_buffer;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let size = u64::from(u32_at(0x28)) | (u64::from(u32_at(0x2C)) << 32);
        let attributes = u32_at(0x38);
        let name_bytes = u32_at(0x3C) as usize;
        if 0x40 + name_bytes > DIR_BUFFER {
            return Err(STATUS_UNSUCCESSFUL);
        }
        Ok(Some((attributes, size, name_bytes / 2)))
    }
}

/// `FSCTL_GET_REPARSE_POINT` (winioctl.h) and `IO_REPARSE_TAG_MOUNT_POINT`
/// (ntifs.h): junctions and volume mount points share the tag.
const FSCTL_GET_REPARSE_POINT: u32 = 0x0009_00A8;
const IO_REPARSE_TAG_MOUNT_POINT: u32 = 0xA000_0003;
/// Reparse data read for a mount point: its header, the four name fields
/// and a volume GUID name fit many times over (longer data is not a
/// volume mount point we enter).
const REPARSE_BUFFER: usize = 1024;
/// Volumes a scan enters through mount points, at most.
const MAX_MOUNTS: usize = 16;

/// The volume GUID name (`\??\Volume{...}`, without its last backslash)
/// a mount point names, `None` for a junction (a directory), a symbolic
/// link or anything unreadable. REPARSE_DATA_BUFFER (ntifs.h,
/// learn.microsoft.com/windows-hardware/drivers/ddi/ntifs/ns-ntifs-_reparse_data_buffer):
/// ReparseTag (u32), ReparseDataLength (u16), Reserved (u16), then the
/// MountPointReparseBuffer's SubstituteNameOffset, SubstituteNameLength,
/// PrintNameOffset, PrintNameLength (u16 each, bytes into PathBuffer, at
/// 16). PASSIVE_LEVEL.
fn mount_target(instance: PFLT_INSTANCE, point: &OpenFile) -> Option<Vec<u16>> {
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(REPARSE_BUFFER).ok()?;
    buf.resize(REPARSE_BUFFER, 0);
    let mut returned = 0u32;
    // SAFETY: FltFsControlFile (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltfscontrolfile):
    // our instance and our open file object (the reparse point itself,
    // FILE_OPEN_REPARSE_POINT); no input; an output buffer of
    // REPARSE_BUFFER bytes we own. PASSIVE_LEVEL.
    let status = unsafe {
        FltFsControlFile(
            instance,
            point.file_object,
            FSCTL_GET_REPARSE_POINT,
            core::ptr::null(),
            0,
            buf.as_mut_ptr().cast(),
            REPARSE_BUFFER as u32,
            &mut returned,
        )
    };
    if !nt_success(status) {
        return None;
    }
    let data = buf.get(..returned as usize)?;
    let u16_at = |o: usize| Some(u16::from_le_bytes([*data.get(o)?, *data.get(o + 1)?]));
    let tag = u32::from_le_bytes([*data.first()?, *data.get(1)?, *data.get(2)?, *data.get(3)?]);
    if tag != IO_REPARSE_TAG_MOUNT_POINT {
        return None;
    }
    let offset = usize::from(u16_at(8)?);
    let len = usize::from(u16_at(10)?);
    let name = data.get(16 + offset..16 + offset + len)?;
    let mut units: Vec<u16> = name
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    units.truncate(nt_path::volume_guid_name_len(&units)?);
    Some(units)
}

/// Whether the opened file is a directory, and a reparse point
/// (`FileStandardInformation.Directory`, `FileBasicInformation`).
fn is_directory(instance: PFLT_INSTANCE, file: &OpenFile) -> Option<(bool, bool)> {
    let (dir, attributes) = filter_callbacks::directory_and_attributes(instance, file.file_object)?;
    Some((dir, attributes & FILE_ATTRIBUTE_REPARSE_POINT != 0))
}

// ---------------------------------------------------------------------------
// Health (§14.8)
// ---------------------------------------------------------------------------

/// The `Health` reports of one session worker, paced by
/// [`thinagent_guest::HealthPacer`] (after each handshake, then on change
/// at most every `HEALTH_MIN_INTERVAL_MS`).
#[derive(Default)]
pub struct HealthReporter(thinagent_guest::HealthPacer);

impl HealthReporter {
    /// Nothing sent yet.
    #[must_use]
    pub const fn new() -> Self {
        HealthReporter(thinagent_guest::HealthPacer::new())
    }

    /// The handshake completed: report at once.
    pub fn connected(&mut self) {
        self.0.connected();
    }

    /// Sends a report to session `generation` if one is due (PASSIVE_LEVEL;
    /// the session worker calls it every loop and flushes right after, so
    /// this does not wake it).
    pub fn poll(&mut self, agent: &Agent, generation: u32) {
        let now = kernel::now();
        if !self.0.wants(now) {
            return;
        }
        let h = health(agent, now);
        if !self.0.should_send(now, &h) {
            return;
        }
        let sent = session_worker::with_session_quiet(generation, |s| s.send_health(&h));
        self.0.tried(now, (sent == Some(true)).then_some(&h));
    }
}

/// The driver's state as `Health` reports it.
fn health(agent: &Agent, now: Instant) -> Health {
    let st = &agent.stats;
    let (version, pinned) = (agent.live.version(), agent.params.pinned_policy != 0);
    let mut state = HealthState::ON_ACCESS;
    if agent.live.read(|l| l.settings.cache_ttl_cap_ms != Some(0)) {
        state = state.union(HealthState::CACHE);
    }
    if SCAN_RUNNING.load(Ordering::Acquire) {
        state = state.union(HealthState::SCAN_RUNNING);
    }
    if pinned {
        state = state.union(HealthState::POLICY_PINNED);
    }
    Health {
        policy_version: version,
        state,
        fail_mode: match agent.live.fail_mode() {
            thinagent_guest::FailMode::Open => thinagent_protocol::FailMode::Open,
            thinagent_guest::FailMode::Closed => thinagent_protocol::FailMode::Closed,
        },
        uptime_ms: now.saturating_duration_since(agent.started).as_millis() as u64,
        events_sent: st.queries.load(Ordering::Relaxed) + ON_DEMAND_SENT.load(Ordering::Relaxed),
        cache_hits: st.cache_hits.load(Ordering::Relaxed),
        // Host verdicts only (§14.8); fail-mode denials are fail decisions.
        denied: st.host_denials.load(Ordering::Relaxed),
        fail_decisions: st.fail_mode_decisions.load(Ordering::Relaxed)
            + st.timeouts.load(Ordering::Relaxed),
        sessions: u64::from(st.sessions.load(Ordering::Relaxed)),
    }
}
