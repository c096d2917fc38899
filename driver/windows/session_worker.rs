//! The session worker: the only thread that talks to the host scanner, and
//! the query API the create path uses to wait for a verdict.
//!
//! # Shape
//!
//! One static hub behind a [`SpinLock`] holds the live
//! [`thinagent_guest::Session`] (if any) and [`SLOTS`] fixed waiter slots.
//! An open that needs a verdict ([`query`], from post-create or pre-cleanup,
//! PASSIVE_LEVEL):
//!
//! 1. claims a free slot (no allocation: the slot's path buffer and
//!    `KEVENT` are static), copies the normalized name into the slot's
//!    buffer (at PASSIVE_LEVEL: Filter Manager's name buffers are paged),
//! 2. in a version-2 session with `inlineContent` on, takes the inline
//!    budget under the lock, drops it, and reads the file's first bytes
//!    with one non-cached `FltReadFile` into an aligned pool buffer
//!    ([`read_inline`]),
//! 3. submits the `FileEvent` (with those bytes: the session encodes them
//!    into its transmit buffer at once, so neither a slot nor the hub holds
//!    content) to the session under the lock, frees the buffer, wakes the
//!    worker ([`WAKE`]) and
//! 4. waits on the slot's event with `FltCancellableWaitForSingleObject`
//!    for at most `umcMsgTimeoutMs` after it started.
//!
//! The worker ([`run`]) pumps the session: bytes to send go to the
//! [`Transport`], received bytes into the session, each
//! [`SessionEvent::Verdict`] completes the slot holding that query, each
//! [`SessionEvent::ReadJob`] is served with `FltReadFile` on the waiting
//! open's file object. It sleeps in `KeWaitForMultipleObjects` on the
//! transport's receive event, [`WAKE`] and [`STOP`], at most until the
//! session's next deadline.
//!
//! # Guarantees relied on
//!
//! [`thinagent_guest::Session`] answers every accepted query exactly once,
//! from the host, at its deadline or when it closes. So every submitted slot
//! is completed by the worker, even one whose waiter gave up first (an
//! *abandoned* slot is freed when that verdict arrives). When no session
//! exists, or unload began, [`query`] answers from the fail mode at once.
//!
//! # Why a waiter may outlive its own timeout
//!
//! A host read uses the waiting open's `FILE_OBJECT` and `FLT_INSTANCE`,
//! which stay valid only while that create (or cleanup) thread is still in
//! our callback. A waiter that gives up while the worker is reading from its
//! file therefore waits for that one read to finish before it returns
//! ([`Waiter::reading`]); the worker starts no read on an abandoned slot.

use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use core::time::Duration;

use thinagent_guest::log::routine;
use thinagent_guest::{
    AlignError, AlignedRange, CloseReason, FailMode, Level, QueryId, QueryVerdict, SessionConfig,
    SessionEvent, SubmitError, inline_content, inline_read_len,
};
use thinagent_km_sys::fltmgr::Minifilters::{
    FLT_CALLBACK_DATA, FLT_VOLUME_PROPERTIES, FLTFL_IO_OPERATION_DO_NOT_UPDATE_BYTE_OFFSET,
    FLTFL_IO_OPERATION_NON_CACHED, FltAllocatePoolAlignedWithTag,
    FltCancellableWaitForSingleObject, FltFreePoolAlignedWithTag, FltGetVolumeFromInstance,
    FltGetVolumeProperties, FltObjectDereference, FltReadFile, PFLT_INSTANCE, PFLT_VOLUME,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::{FILE_OBJECT, NonPagedPoolNx};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::PsGetCurrentThreadId;
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_BUFFER_OVERFLOW, STATUS_END_OF_FILE,
};
use thinagent_protocol::{
    CreateDisposition, EventKind, FileEvent, FileIdentity, FilePath, InlineContent, OsError,
    OsKind, ReadOutcome,
};

use super::agent::{Agent, AgentStats};
use super::filter_callbacks::file_size;
use super::kernel::{
    self, EventKind as KEventKind, KernelEvent, STATUS_CANCELLED, STATUS_SUCCESS, STATUS_TIMEOUT,
    SpinLock, nt_success, relative_100ns,
};
use super::transport::Transport;
use crate::filter_registration::pool_tag;

pub use crate::session_sizes::{PATH_BYTES, READS, SLOTS};

/// The session type the worker runs (sizes: [`crate::session_sizes`]).
pub type GuestSession = crate::session_sizes::DriverSession;

/// Pool tag of host-read buffers, displayed `TAgR`.
const READ_BUFFER_TAG: u32 = pool_tag(*b"TAgR");
/// Pool tag of the buffers a query's inline content is read into (freed
/// before the query waits), displayed `TAgC`.
const INLINE_BUFFER_TAG: u32 = pool_tag(*b"TAgC");
/// Size of the buffer `poll_transmit` fills before each `send_all`.
const SEND_CHUNK: usize = 16 * 1024;
/// How long one `send_all` may take (the session's own timers bound the
/// rest).
const SEND_TIMEOUT_MS: u32 = 5_000;
/// Longest single wait of the worker loop.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// The name sent in `Hello` (the host logs it).
const GUEST_NAME: &str = "thinagent.sys";

/// `STATUS_CONNECTION_DISCONNECTED` (`ntstatus.h`): the host closed the
/// stream.
const STATUS_CONNECTION_DISCONNECTED: NTSTATUS = 0xC000_020C_u32 as i32;
/// `STATUS_INVALID_NETWORK_RESPONSE` (`ntstatus.h`): the host sent bytes
/// that break the protocol.
const STATUS_INVALID_NETWORK_RESPONSE: NTSTATUS = 0xC000_00C3_u32 as i32;
/// `STATUS_IO_TIMEOUT` (`ntstatus.h`): handshake, heartbeat or idle timeout.
const STATUS_IO_TIMEOUT: NTSTATUS = 0xC000_00B5_u32 as i32;
/// `STATUS_REMOTE_DISCONNECT` (`ntstatus.h`): the host said `Goodbye`.
const STATUS_REMOTE_DISCONNECT: NTSTATUS = 0xC000_013C_u32 as i32;
/// `STATUS_WAIT_1` / `STATUS_WAIT_2`: `KeWaitForMultipleObjects` index
/// results.
const STATUS_WAIT_1: NTSTATUS = 1;
const STATUS_WAIT_2: NTSTATUS = 2;

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// Why [`query`] answered without the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReason {
    /// Unload began (or [`shutdown`] ran).
    Stopping,
    /// No session with the host is up.
    NoSession,
    /// Every waiter slot (or session slot) stayed busy until the deadline.
    Busy,
    /// The normalized name is longer than [`PATH_BYTES`] or empty.
    PathTooLong,
    /// Our own wait reached `umcMsgTimeoutMs` before the verdict.
    WaitTimedOut,
    /// The wait was cancelled: the I/O was cancelled or the thread is
    /// terminating (the status `FltCancellableWaitForSingleObject` returned).
    Cancelled(NTSTATUS),
    /// The volume's instance is being torn down.
    InstanceTeardown,
}

/// The answer to one [`query`].
#[expect(
    clippy::large_enum_variant,
    reason = "no allocation: the verdict (threat name included) is copied inline"
)]
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// The session answered: the host, its deadline or its close (see
    /// [`QueryVerdict::source`]).
    Session(QueryVerdict),
    /// Decided here by the fail mode.
    Local {
        /// The fail mode applied.
        fail_mode: FailMode,
        /// Why.
        reason: LocalReason,
    },
}

impl Answer {
    /// Whether the open may proceed.
    #[must_use]
    pub fn allows(&self) -> bool {
        match self {
            Answer::Session(v) => v.allows(),
            Answer::Local {
                reason: LocalReason::Cancelled(_),
                ..
            } => false,
            Answer::Local { fail_mode, .. } => *fail_mode == FailMode::Open,
        }
    }
}

/// What the create path knows about the open it asks about.
pub struct OpenQuery<'a> {
    /// `Open` from post-create, `CloseAfterWrite` from the cleanup rescan.
    pub kind: EventKind,
    /// `FltGetRequestorProcessId`.
    pub process_id: u32,
    /// `Parameters.Create.SecurityContext->DesiredAccess` (0 at cleanup).
    pub desired_access: u32,
    /// The create disposition.
    pub create_disposition: CreateDisposition,
    /// Volume serial, file id, size, last-write time.
    pub file: FileIdentity,
    /// Whether `file` was queried (else it is all zero, size included):
    /// inline content is marked `WHOLE_FILE` only against a known size.
    pub file_known: bool,
    /// The normalized name (UTF-16, may live in paged pool).
    pub path: &'a [u16],
    /// The instance the open arrived on (`FltObjects->Instance`).
    pub instance: PFLT_INSTANCE,
    /// The open's file object (`FltObjects->FileObject`), read by host
    /// reads while the caller waits.
    pub file_object: *const FILE_OBJECT,
    /// The operation, for the cancellable wait (may be null).
    pub data: *const FLT_CALLBACK_DATA,
}

// ---------------------------------------------------------------------------
// The hub
// ---------------------------------------------------------------------------

#[expect(
    clippy::large_enum_variant,
    reason = "no allocation: the verdict (threat name included) is copied inline"
)]
#[derive(Clone, Copy, Debug)]
enum SlotState {
    Free,
    /// Claimed by a waiter that is copying its path.
    Claimed,
    /// Submitted to the session `generation` as `query`.
    Pending {
        generation: u32,
        query: QueryId,
    },
    /// Answered; the waiter collects it.
    Done(Answer),
}

#[derive(Clone, Copy)]
struct Waiter {
    state: SlotState,
    /// The waiter is gone; the worker frees the slot when the session's
    /// verdict for it arrives.
    abandoned: bool,
    /// The worker is reading through `file_object` right now.
    reading: bool,
    /// The waiter stopped waiting but stays until `reading` ends (it is
    /// woken through the slot's event).
    giving_up: bool,
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
}

impl Waiter {
    const FREE: Waiter = Waiter {
        state: SlotState::Free,
        abandoned: false,
        reading: false,
        giving_up: false,
        instance: 0,
        file_object: core::ptr::null(),
    };
}

struct Hub {
    /// The one session, in static storage: built by the compiler
    /// (`Session::new_closed`) and reset in place for every connection
    /// (`Session::reset`), so its ~280 KiB never touch a kernel stack.
    session: GuestSession,
    /// Whether `session` belongs to a running [`run`].
    live: bool,
    /// Bumped for every session, so a verdict of an old session can never
    /// complete a slot of a new one (query ids restart per session).
    generation: u32,
    /// `false` after [`shutdown`]: no new query or session.
    accepting: bool,
    waiters: [Waiter; SLOTS],
    /// `OnDemand` events of a host scan (protocol §14.4) the session has
    /// not answered yet, or answered and not yet collected by
    /// [`super::host_actions`]: their file objects serve host reads.
    scan_slots: [ScanSlot; SCAN_SLOTS],
}

/// Most `OnDemand` events of a scan outstanding at once (the session's
/// `on_demand_capacity` may allow fewer).
pub const SCAN_SLOTS: usize = 16;

/// One `OnDemand` event of a scan.
#[derive(Clone, Copy)]
struct ScanSlot {
    state: ScanSlotState,
    /// The worker reads through `file_object` right now.
    reading: bool,
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScanSlotState {
    Free,
    /// Taken by [`submit_on_demand`] while it reads the first bytes.
    Claimed,
    /// Submitted to session `generation` as `query`.
    Pending {
        generation: u32,
        query: QueryId,
    },
    /// Answered: `Some(deny)` by a host `Verdict`, `None` by a deadline
    /// or the session's close.
    Done(Option<bool>),
}

impl ScanSlot {
    const FREE: ScanSlot = ScanSlot {
        state: ScanSlotState::Free,
        reading: false,
        instance: 0,
        file_object: core::ptr::null(),
    };
}

impl Hub {
    /// The running session, if any.
    fn live(&self) -> Option<&GuestSession> {
        self.live.then_some(&self.session)
    }

    /// The running session, if any, for changing.
    fn live_mut(&mut self) -> Option<&mut GuestSession> {
        if self.live {
            Some(&mut self.session)
        } else {
            None
        }
    }
}

// SAFETY: the raw pointers in `Waiter` are only dereferenced by the worker
// while their waiter is parked in `query` (see the module docs); the hub
// itself is only reached through its spin lock.
unsafe impl Send for Hub {}

static HUB: SpinLock<Hub> = SpinLock::new(Hub {
    session: GuestSession::new_closed(),
    live: false,
    generation: 0,
    accepting: true,
    waiters: [Waiter::FREE; SLOTS],
    scan_slots: [ScanSlot::FREE; SCAN_SLOTS],
});

/// One slot's path buffer, written only by the waiter that claimed the slot
/// (before submitting) and read by the session's `submit` under the lock.
struct PathBuf(UnsafeCell<[u8; PATH_BYTES]>);
// SAFETY: exclusive use is handed over by the slot state in `HUB`.
unsafe impl Sync for PathBuf {}

static PATHS: [PathBuf; SLOTS] = [const { PathBuf(UnsafeCell::new([0; PATH_BYTES])) }; SLOTS];

/// One notification event per slot: the worker sets it when the slot is
/// answered (or its read finished after the waiter gave up).
static EVENTS: [KernelEvent; SLOTS] = [const { KernelEvent::uninit() }; SLOTS];
/// Wakes the worker: a query was submitted (synchronization event).
static WAKE: KernelEvent = KernelEvent::uninit();
/// Tells the worker to close its session (notification event, set by
/// [`shutdown`]).
static STOP: KernelEvent = KernelEvent::uninit();
/// A slot became free (synchronization event) for openers waiting for one.
static SLOT_FREED: KernelEvent = KernelEvent::uninit();

static INITIALISED: AtomicBool = AtomicBool::new(false);
/// `PsGetCurrentThreadId` of the worker while [`run`] runs, else 0: opens,
/// writes and cleanups on that thread are the driver's own I/O.
static WORKER_THREAD: AtomicUsize = AtomicUsize::new(0);

/// Initialises the static events and the hub's lock (PASSIVE_LEVEL, once,
/// before the filter starts; idempotent). Called by
/// `filter_callbacks::register`.
pub fn init() {
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return;
    }
    HUB.init();
    for e in &EVENTS {
        e.init(KEventKind::Notification, false);
    }
    WAKE.init(KEventKind::Synchronization, false);
    STOP.init(KEventKind::Notification, false);
    SLOT_FREED.init(KEventKind::Synchronization, false);
}

/// The calling thread's id (any IRQL).
fn current_thread_id() -> usize {
    // SAFETY: PsGetCurrentThreadId (ntddk.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetcurrentthreadid)
    // has no preconditions; any IRQL.
    unsafe { PsGetCurrentThreadId() as usize }
}

/// Whether the calling thread is the session worker (any IRQL): its opens,
/// writes and cleanups are the driver's own I/O and are never scanned.
#[must_use]
pub fn is_worker_thread() -> bool {
    let worker = WORKER_THREAD.load(Ordering::Acquire);
    worker != 0 && worker == current_thread_id()
}

/// Wakes the session worker (the host-action thread wrote a restore chunk:
/// the worker hands it the next one and feeds the bytes it held back).
/// Any IRQL <= DISPATCH.
pub fn wake_worker() {
    if INITIALISED.load(Ordering::Acquire) {
        WAKE.set();
    }
}

/// Whether a session with the host is up and past its handshake (any IRQL
/// ≤ DISPATCH).
#[must_use]
pub fn is_connected() -> bool {
    INITIALISED.load(Ordering::Acquire) && HUB.with(|h| h.live().is_some_and(|s| s.is_connected()))
}

/// Frees slot `i` and wakes one opener waiting for a slot (under the hub lock, DISPATCH_LEVEL).
fn free_slot(h: &mut Hub, i: usize) {
    h.waiters[i] = Waiter::FREE;
    SLOT_FREED.set();
}

/// Completes slot `i` with `answer`: wakes its waiter, or frees the slot if
/// the waiter is gone (an abandoned slot is never being read: reads start
/// only on slots whose waiter is present). Runs under the hub lock.
fn complete(h: &mut Hub, i: usize, answer: Answer) {
    if h.waiters[i].abandoned {
        free_slot(h, i);
        return;
    }
    h.waiters[i].state = SlotState::Done(answer);
    EVENTS[i].set();
}

/// Answers by `fail_mode` for `reason` every query a thread still waits for
/// (slot claimed or pending, waiter present) that `pick` selects; returns
/// how many. Runs under the hub lock.
fn answer_waiting_locally(
    h: &mut Hub,
    fail_mode: FailMode,
    reason: LocalReason,
    pick: impl Fn(&Waiter) -> bool,
) -> u32 {
    let mut n = 0;
    for i in 0..SLOTS {
        let w = h.waiters[i];
        if !w.abandoned
            && matches!(w.state, SlotState::Claimed | SlotState::Pending { .. })
            && pick(&w)
        {
            complete(h, i, Answer::Local { fail_mode, reason });
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------
// The query API (create path)
// ---------------------------------------------------------------------------

enum Claim {
    Slot(usize),
    Full,
    NoSession,
    Refused,
}

/// Asks the host about one open and waits for the answer
/// (PASSIVE_LEVEL; post-create and pre-cleanup).
///
/// Never waits longer than `umcMsgTimeoutMs` for the verdict (plus, in the
/// rare case the worker is reading from this very file when the time runs
/// out, that one read). Counts `queries`, `timeouts` and
/// `fail_mode_decisions`; the caller counts denials.
pub fn query(agent: &Agent, q: &OpenQuery<'_>) -> Answer {
    let fail_mode = agent.live.fail_mode();
    let local = |reason| Answer::Local { fail_mode, reason };
    if agent.is_stopping() || !INITIALISED.load(Ordering::Acquire) {
        AgentStats::bump(&agent.stats.fail_mode_decisions);
        return local(LocalReason::Stopping);
    }
    let nbytes = q.path.len() * 2;
    if nbytes == 0 || nbytes > PATH_BYTES {
        crate::klog!(
            Level::Warn,
            routine::OPEN_FILTER,
            "name of {} UTF-16 units does not fit a query slot ({} bytes): fail mode {:?}",
            q.path.len(),
            PATH_BYTES,
            fail_mode
        );
        AgentStats::bump(&agent.stats.fail_mode_decisions);
        return local(LocalReason::PathTooLong);
    }
    let timeout = agent.live.query_timeout();
    let deadline = kernel::now().saturating_add(timeout);

    // 1. Claim a slot.
    let index = loop {
        let claim = HUB.with(|h| {
            if !h.accepting {
                return Claim::Refused;
            }
            if !h.live {
                return Claim::NoSession;
            }
            let Some(i) = h
                .waiters
                .iter()
                .position(|w| matches!(w.state, SlotState::Free))
            else {
                return Claim::Full;
            };
            h.waiters[i] = Waiter {
                state: SlotState::Claimed,
                abandoned: false,
                reading: false,
                giving_up: false,
                instance: q.instance,
                file_object: q.file_object,
            };
            EVENTS[i].clear();
            Claim::Slot(i)
        });
        match claim {
            Claim::Slot(i) => break i,
            Claim::Refused => {
                AgentStats::bump(&agent.stats.fail_mode_decisions);
                return local(LocalReason::Stopping);
            }
            Claim::NoSession => {
                AgentStats::bump(&agent.stats.fail_mode_decisions);
                return local(LocalReason::NoSession);
            }
            Claim::Full => {
                let now = kernel::now();
                if now.has_reached(deadline) {
                    AgentStats::bump(&agent.stats.fail_mode_decisions);
                    return local(LocalReason::Busy);
                }
                let left = deadline.saturating_duration_since(now);
                let _ = SLOT_FREED.wait(Some(left.min(Duration::from_millis(50))));
            }
        }
    };

    // 2. Copy the name (PASSIVE_LEVEL: the source may be paged).
    // SAFETY: slot `index` is Claimed by this thread; nobody else touches
    // its path buffer until it is submitted below.
    let buf = unsafe { &mut *PATHS[index].0.get() };
    for (dst, unit) in buf.chunks_exact_mut(2).zip(q.path) {
        dst.copy_from_slice(&unit.to_le_bytes());
    }

    // 3. Inline content (protocol version 2): the budget under the lock,
    // the read without it, on this thread (the open's file object is
    // valid: its create is in our callback). Budget 0 (version 1,
    // `inlineContent` 0, the slot already answered) reads nothing.
    let budget = HUB.with(|h| {
        if !matches!(h.waiters[index].state, SlotState::Claimed) {
            return 0;
        }
        h.live().map_or(0, |s| s.inline_budget(nbytes))
    });
    let stated_size = q.file_known.then_some(q.file.size);
    let first_bytes = (budget > 0).then(|| read_inline(q, budget, stated_size));
    // Non-paged pool: the session encodes it under the spin lock.
    let content = first_bytes.as_ref().map_or(InlineContent::NONE, |r| {
        inline_content(r.outcome(), stated_size)
    });

    // 4. Submit under the lock (unless teardown or unload answered the
    // slot while the name was copied or the content read).
    #[expect(
        clippy::result_large_err,
        reason = "no allocation: the early answer is copied inline"
    )]
    let submitted = HUB.with(|h| {
        if let SlotState::Done(a) = h.waiters[index].state {
            free_slot(h, index);
            return Err(Early::Answered(a));
        }
        let generation = h.generation;
        let Some(session) = h.live_mut() else {
            free_slot(h, index);
            return Err(Early::Local(LocalReason::NoSession));
        };
        let event = FileEvent {
            kind: q.kind,
            process_id: q.process_id,
            desired_access: q.desired_access,
            create_disposition: q.create_disposition,
            file: q.file,
            path: FilePath::Utf16Le(&buf[..nbytes]),
            content,
        };
        match session.submit(&event, kernel::now()) {
            Ok(query) => {
                h.waiters[index].state = SlotState::Pending { generation, query };
                Ok(())
            }
            Err(SubmitError::Full) => {
                free_slot(h, index);
                Err(Early::Local(LocalReason::Busy))
            }
        }
    });
    // Encoded (or dropped) by `submit`: the buffer is free now.
    drop(first_bytes);
    match submitted {
        Ok(()) => {}
        Err(Early::Answered(a)) => {
            account(agent, &a);
            return a;
        }
        Err(Early::Local(reason)) => {
            AgentStats::bump(&agent.stats.fail_mode_decisions);
            return local(reason);
        }
    }
    AgentStats::bump(&agent.stats.queries);
    WAKE.set();

    // 5. Wait, cancellably, until the deadline.
    let left = deadline.saturating_duration_since(kernel::now());
    let rel = relative_100ns(left);
    // SAFETY: FltCancellableWaitForSingleObject (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltcancellablewaitforsingleobject):
    // a static, initialised event; a relative timeout on this stack; the
    // callback data is the caller's operation (or null), which stays valid
    // for the whole call. PASSIVE_LEVEL.
    let status =
        unsafe { FltCancellableWaitForSingleObject(EVENTS[index].as_object(), &rel, q.data) };

    let answer = collect(index, status, fail_mode);
    account(agent, &answer);
    answer
}

/// Reads the first bytes of the waiting open's file for its inline content
/// (protocol version 2, docs/protocol.md §5.3.1): one non-cached
/// `FltReadFile` of [`inline_read_len`] bytes at offset 0, sector-aligned
/// like a host read ([`AlignedRead`]), into a `NonPagedPoolNx` buffer of at
/// most the budget rounded up to a sector (64 KiB with the host's default
/// `max_inline_len`), freed as soon as the session has encoded it.
///
/// The scanner sample (Windows-driver-samples
/// `filesys/miniFilter/scanner/filter/scanner.c`,
/// `ScannerpScanFileInUserMode`, called from `ScannerPostCreate`) reads a
/// file's beginning the same way in post-create: aligned pool, offset 0,
/// `NON_CACHED | DO_NOT_UPDATE_BYTE_OFFSET`. A failed read is logged at
/// DEBUG and sends nothing: the host reads the file as in version 1.
/// PASSIVE_LEVEL, on the opener's thread (post-create or pre-cleanup).
fn read_inline(q: &OpenQuery<'_>, budget: usize, stated_size: Option<u64>) -> AlignedRead {
    let length = inline_read_len(budget, stated_size);
    let read = AlignedRead::new(q.instance, q.file_object, 0, length, INLINE_BUFFER_TAG);
    if !nt_success(read.status) && read.status != STATUS_END_OF_FILE {
        crate::klog_status!(
            Level::Debug,
            routine::SESSION,
            read.status,
            "first-bytes read failed; the host reads the file"
        );
    }
    read
}

/// An answer found before the query reached the session.
#[expect(
    clippy::large_enum_variant,
    reason = "no allocation: the verdict (threat name included) is copied inline"
)]
enum Early {
    Answered(Answer),
    Local(LocalReason),
}

/// Takes the answer of slot `index` after the wait returned `status`.
///
/// If the worker is reading through this open's file object, waits for that
/// read to end first (the file object and instance must outlive it).
fn collect(index: usize, status: NTSTATUS, fail_mode: FailMode) -> Answer {
    let gave_up = if status == STATUS_SUCCESS || status == STATUS_TIMEOUT {
        LocalReason::WaitTimedOut
    } else {
        LocalReason::Cancelled(status)
    };
    loop {
        let taken = HUB.with(|h| {
            let w = h.waiters[index];
            if w.reading {
                h.waiters[index].giving_up = true;
                EVENTS[index].clear();
                return None;
            }
            if let SlotState::Done(a) = w.state {
                free_slot(h, index);
                return Some(a);
            }
            // Still pending in the session: the worker frees the slot when
            // the session's verdict (due by its own deadline) arrives.
            h.waiters[index].abandoned = true;
            h.waiters[index].giving_up = false;
            Some(Answer::Local {
                fail_mode,
                reason: gave_up,
            })
        });
        if let Some(answer) = taken {
            return answer;
        }
        // The worker sets the event when the read ends; the period only
        // bounds a lost race.
        let _ = EVENTS[index].wait(Some(Duration::from_millis(100)));
    }
}

/// Counts a timeout or fail-mode decision for `answer` (any IRQL).
fn account(agent: &Agent, answer: &Answer) {
    use thinagent_guest::VerdictSource;
    match answer {
        Answer::Session(v) => match v.source {
            VerdictSource::Host => {}
            VerdictSource::Deadline(_) => AgentStats::bump(&agent.stats.timeouts),
            VerdictSource::Local(_) => AgentStats::bump(&agent.stats.fail_mode_decisions),
        },
        Answer::Local {
            reason: LocalReason::WaitTimedOut,
            ..
        } => {
            AgentStats::bump(&agent.stats.timeouts);
        }
        Answer::Local {
            reason: LocalReason::Cancelled(_),
            ..
        } => {}
        Answer::Local { .. } => AgentStats::bump(&agent.stats.fail_mode_decisions),
    }
}

/// Answers every query still waiting on `instance` by the fail mode
/// (InstanceTeardownStart, PASSIVE_LEVEL): a dismounting volume does not
/// wait for the host. Their verdicts, when the session delivers them, find
/// no slot and are dropped.
pub fn cancel_instance(instance: PFLT_INSTANCE) {
    if !INITIALISED.load(Ordering::Acquire) {
        return;
    }
    let fail_mode = super::agent::get().map_or(FailMode::default(), |a| a.live.fail_mode());
    HUB.with(|h| {
        answer_waiting_locally(h, fail_mode, LocalReason::InstanceTeardown, |w| {
            w.instance == instance
        })
    });
}

/// Refuses new queries and sessions, answers every query still waiting by
/// the fail mode, and tells a running [`run`] to close its session
/// (PASSIVE_LEVEL, unload; idempotent).
pub fn shutdown() {
    if !INITIALISED.load(Ordering::Acquire) {
        return;
    }
    let fail_mode = super::agent::get().map_or(FailMode::default(), |a| a.live.fail_mode());
    let waiting = HUB.with(|h| {
        h.accepting = false;
        answer_waiting_locally(h, fail_mode, LocalReason::Stopping, |_| true)
    });
    STOP.set();
    crate::klog!(
        Level::Info,
        routine::SESSION,
        "session worker stopped; {} waiting queries answered by fail mode {:?}",
        waiting,
        fail_mode
    );
}

// ---------------------------------------------------------------------------
// Host actions (protocol §14): the session as `host_actions` uses it
// ---------------------------------------------------------------------------

/// The generation of the live, connected session (any IRQL <= DISPATCH).
#[must_use]
pub fn live_generation() -> Option<u32> {
    if !INITIALISED.load(Ordering::Acquire) {
        return None;
    }
    HUB.with(|h| h.live().filter(|s| s.is_connected()).map(|_| h.generation))
}

/// Runs `f` on the live session if it is still session `generation`
/// (under the hub's spin lock: `f` must not touch paged memory), then
/// wakes the worker to send what `f` queued. `None`: that session is gone.
pub fn with_session<R>(generation: u32, f: impl FnOnce(&mut GuestSession) -> R) -> Option<R> {
    if !INITIALISED.load(Ordering::Acquire) {
        return None;
    }
    let r = HUB.with(|h| {
        if h.generation != generation {
            return None;
        }
        h.live_mut().map(f)
    });
    WAKE.set();
    r
}

/// [`with_session`] without waking the worker (for the worker itself).
pub fn with_session_quiet<R>(generation: u32, f: impl FnOnce(&mut GuestSession) -> R) -> Option<R> {
    HUB.with(|h| {
        if h.generation != generation {
            return None;
        }
        h.live_mut().map(f)
    })
}

/// What [`submit_on_demand`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDemand {
    /// Sent (or queued) as scan slot `.0`: collect it with
    /// [`take_on_demand`]; keep the file open until then.
    Submitted(usize),
    /// No room now (`on_demand_capacity`, a scan slot, or a session slot):
    /// try again after an answer.
    NoRoom,
    /// Session `generation` is gone.
    Closed,
}

/// One `OnDemand` event of a scan (protocol §14.4).
pub struct OnDemandFile<'a> {
    /// Volume serial, file id, size, last-write time of the opened file.
    pub file: FileIdentity,
    /// The file's path, UTF-16LE bytes.
    pub path: &'a [u8],
    /// The scan's opened file (instance and file object), read for inline
    /// content here and by host reads until the verdict.
    pub instance: PFLT_INSTANCE,
    /// See `instance`.
    pub file_object: *const FILE_OBJECT,
}

/// Submits one `OnDemand` event to session `generation`, within the
/// scan's `max_in_flight` and the session's `on_demand_capacity`; in a
/// version-2 session with inline content on, its first bytes go with it
/// (read here, on the caller's thread, as the create path does).
/// PASSIVE_LEVEL (the host-action thread).
pub fn submit_on_demand(generation: u32, max_in_flight: u16, f: &OnDemandFile<'_>) -> OnDemand {
    if !INITIALISED.load(Ordering::Acquire) {
        return OnDemand::Closed;
    }
    let claimed = HUB.with(|h| {
        if h.generation != generation {
            return Err(OnDemand::Closed);
        }
        let Some(s) = h.live() else {
            return Err(OnDemand::Closed);
        };
        if s.on_demand_capacity(max_in_flight) == 0 {
            return Err(OnDemand::NoRoom);
        }
        let budget = s.inline_budget(f.path.len());
        let Some(i) = h
            .scan_slots
            .iter()
            .position(|x| x.state == ScanSlotState::Free)
        else {
            return Err(OnDemand::NoRoom);
        };
        h.scan_slots[i] = ScanSlot {
            state: ScanSlotState::Claimed,
            reading: false,
            instance: f.instance,
            file_object: f.file_object,
        };
        Ok((i, budget))
    });
    let (index, budget) = match claimed {
        Ok(c) => c,
        Err(e) => return e,
    };
    let stated = Some(f.file.size);
    let first = (budget > 0).then(|| {
        AlignedRead::new(
            f.instance,
            f.file_object,
            0,
            inline_read_len(budget, stated),
            INLINE_BUFFER_TAG,
        )
    });
    let content = first
        .as_ref()
        .map_or(InlineContent::NONE, |r| inline_content(r.outcome(), stated));
    let out = HUB.with(|h| {
        let live = h.generation == generation;
        let r = match h.live_mut().filter(|_| live) {
            None => OnDemand::Closed,
            Some(session) => {
                let event = FileEvent {
                    kind: EventKind::OnDemand,
                    process_id: 0,
                    desired_access: 0,
                    create_disposition: CreateDisposition::Open,
                    file: f.file,
                    path: FilePath::Utf16Le(f.path),
                    content,
                };
                match session.submit(&event, kernel::now()) {
                    Ok(query) => {
                        h.scan_slots[index].state = ScanSlotState::Pending { generation, query };
                        return OnDemand::Submitted(index);
                    }
                    Err(SubmitError::Full) => OnDemand::NoRoom,
                }
            }
        };
        h.scan_slots[index] = ScanSlot::FREE;
        r
    });
    drop(first);
    WAKE.set();
    out
}

/// The answer of scan slot `index` once it has one and no host read uses
/// its file any more (the slot is then free and the caller may close the
/// file): `Some(Some(deny))` from the host, `Some(None)` from a deadline or
/// the session's close; `None`: not yet (any IRQL <= DISPATCH).
#[must_use]
pub fn take_on_demand(index: usize) -> Option<Option<bool>> {
    HUB.with(|h| {
        let slot = h.scan_slots.get_mut(index)?;
        match slot.state {
            ScanSlotState::Done(r) if !slot.reading => {
                *slot = ScanSlot::FREE;
                Some(r)
            }
            _ => None,
        }
    })
}

// ---------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------

/// Why the loop ended, for the return status and the log.
#[derive(Debug)]
enum End {
    Closed(CloseReason),
    Transport(NTSTATUS),
    PeerClosed,
}

/// Pumps one session over `transport` until it closes, the transport fails
/// or unload begins (PASSIVE_LEVEL, on the vsock link thread; the only
/// thread that talks to the host). Every query submitted to this session
/// has its answer before this returns. The caller owns the transport and
/// shuts it down afterwards. Returns the close status for the log
/// (`STATUS_SUCCESS` for a local close at unload).
pub fn run(agent: &'static Agent, transport: &mut dyn Transport) -> NTSTATUS {
    init();
    // INLINE_CONTENT is announced only when `query` sends content.
    // The host actions of protocol §14 are announced, and the settings a
    // host policy may have changed are the live ones.
    let mut config = SessionConfig::from_params(&agent.params, OsKind::Windows, GUEST_NAME)
        .with_inline_content(agent.params.inline_content);
    config.query_timeout = agent.live.query_timeout();
    config.fail_mode = agent.live.fail_mode();
    config.capabilities = config.capabilities.union(super::host_actions::CAPABILITIES);
    let started = HUB.with(|h| {
        if !h.accepting || h.live {
            return false;
        }
        h.generation = h.generation.wrapping_add(1);
        // In place, at DISPATCH_LEVEL under the lock: a few field stores and
        // one loop over the slots.
        h.session.reset(&config);
        h.session.start(kernel::now());
        h.live = true;
        true
    });
    if !started {
        crate::klog!(
            Level::Warn,
            routine::SESSION,
            "not starting a session: unload began or one is running"
        );
        return STATUS_CANCELLED;
    }
    WORKER_THREAD.store(current_thread_id(), Ordering::Release);
    agent.stats.sessions.fetch_add(1, Ordering::Relaxed);
    crate::klog!(Level::Info, routine::SESSION, "session started, Hello sent");

    let mut send_buf: Vec<u8> = Vec::new();
    if send_buf.try_reserve_exact(SEND_CHUNK).is_err() {
        crate::klog!(
            Level::Error,
            routine::SESSION,
            "cannot allocate the send buffer"
        );
        HUB.with(|h| {
            if let Some(s) = h.live_mut() {
                s.close(kernel::now());
            }
        });
        retire(agent);
        return kernel::STATUS_INSUFFICIENT_RESOURCES;
    }
    send_buf.resize(SEND_CHUNK, 0);
    let mut end: Option<End> = None;
    let mut failed = false;
    let mut health = super::host_actions::HealthReporter::new();
    // Received bytes the session did not take yet: it holds a restore
    // chunk it has no room for (§14.7 backpressure). No receive is posted
    // while any are here, so the transport's flow control holds the host.
    let mut held_rx: Vec<u8> = Vec::new();
    if let Err(status) = transport.start_receive() {
        end = Some(End::Transport(status));
        close_session();
        failed = true;
    }

    loop {
        // Drain the session's events.
        while let Some(event) = HUB.with(|h| h.live_mut().and_then(|s| s.poll_event())) {
            match event {
                SessionEvent::Connected { version } => {
                    agent.stats.connected.store(true, Ordering::Relaxed);
                    health.connected();
                    crate::klog!(
                        Level::Info,
                        routine::SESSION,
                        "connected to the host scanner, protocol {}",
                        version
                    );
                }
                SessionEvent::Verdict(v) => HUB.with(|h| deliver(h, v)),
                SessionEvent::ReadJob {
                    read_id,
                    query,
                    offset,
                    length,
                } => {
                    let served = serve_read(
                        agent,
                        transport,
                        &mut send_buf,
                        &mut failed,
                        read_id,
                        query,
                        offset,
                        length,
                    );
                    // A send that failed while answering ends the session
                    // with the transport's status, not as a local close.
                    if let Err(status) = served
                        && end.is_none()
                    {
                        end = Some(End::Transport(status));
                    }
                }
                SessionEvent::Closed { reason } => {
                    if end.is_none() {
                        end = Some(End::Closed(reason));
                    }
                }
                // Host actions (protocol §14) run on the host-action
                // thread, never here: this loop judges opens.
                SessionEvent::HostRequest => {}
                SessionEvent::ScanCancelled { id } => super::host_actions::cancel_scan(id),
            }
        }
        // Every turn, not only on `HostRequest`: restore chunks wait in the
        // session until the host-action thread has room for them.
        take_host_requests();
        // Bytes held back, fed again once the session has room.
        if !held_rx.is_empty() && !failed {
            match feed_held(&mut held_rx) {
                Fed::Waiting => {}
                Fed::Some => continue,
                Fed::All => {
                    if let Err(status) = transport.start_receive() {
                        end = Some(End::Transport(status));
                        failed = true;
                        close_session();
                    }
                    continue;
                }
            }
        }
        // A Health report after the handshake and on change (§14.8).
        let generation = HUB.with(|h| h.generation);
        health.poll(agent, generation);
        // Send what the session has (Goodbye included, after a close).
        if !failed && let Err(status) = flush(transport, &mut send_buf) {
            failed = true;
            if end.is_none() {
                end = Some(End::Transport(status));
            }
            close_session();
            continue;
        }
        if end.is_some() {
            break;
        }
        if agent.is_stopping() {
            close_session();
            continue;
        }

        // Wait for data, a new query, unload, or the next deadline, at most
        // MAX_WAIT so that unload (`agent.stopping`, set before
        // vsock_capture::stop) is seen and answered with Goodbye even if
        // nobody signals STOP.
        let now = kernel::now();
        let deadline = HUB.with(|h| h.live().and_then(|s| s.next_deadline()));
        let wait = deadline.map_or(MAX_WAIT, |d| d.saturating_duration_since(now).min(MAX_WAIT));
        // SAFETY: three initialised dispatcher objects that outlive the
        // wait (the transport's receive event lives as long as `transport`).
        let status = unsafe {
            kernel::wait_any(
                &[
                    transport.receive_event(),
                    WAKE.as_object(),
                    STOP.as_object(),
                ],
                Some(wait),
            )
        };
        match status {
            STATUS_SUCCESS => match transport.take_received() {
                Ok([]) => {
                    end = Some(End::PeerClosed);
                    failed = true;
                    close_session();
                }
                Ok(bytes) => {
                    // The transport's buffer is non-paged (it is an I/O
                    // buffer), so the session may read it under the lock.
                    let taken = HUB.with(|h| {
                        h.live_mut()
                            .map_or(bytes.len(), |s| s.receive_some(bytes, kernel::now()))
                    });
                    if taken < bytes.len() {
                        // Held back until the session has room (§14.7).
                        let rest = &bytes[taken..];
                        crate::klog!(
                            Level::Debug,
                            routine::SESSION,
                            "restore data waits for room: {} received bytes held, no receive posted",
                            rest.len()
                        );
                        if held_rx.try_reserve_exact(rest.len()).is_err() {
                            crate::klog!(
                                Level::Error,
                                routine::SESSION,
                                "no memory to hold {} received bytes back",
                                rest.len()
                            );
                            end = Some(End::Transport(kernel::STATUS_INSUFFICIENT_RESOURCES));
                            failed = true;
                            close_session();
                        } else {
                            held_rx.extend_from_slice(rest);
                        }
                    } else if let Err(status) = transport.start_receive() {
                        end = Some(End::Transport(status));
                        failed = true;
                        close_session();
                    }
                }
                Err(status) => {
                    end = Some(End::Transport(status));
                    failed = true;
                    close_session();
                }
            },
            STATUS_WAIT_2 => close_session(),
            STATUS_WAIT_1 | STATUS_TIMEOUT => {}
            other => {
                crate::klog_status!(
                    Level::Error,
                    routine::SESSION,
                    other,
                    "KeWaitForMultipleObjects failed"
                );
                end = Some(End::Transport(other));
                close_session();
            }
        }
        HUB.with(|h| {
            if let Some(s) = h.live_mut() {
                s.on_timeout(kernel::now());
            }
        });
    }

    retire(agent);

    let why = end.as_ref().map(|e| match e {
        End::Closed(reason) => reason_text(reason),
        End::Transport(_) => "transport error",
        End::PeerClosed => "host closed the stream",
    });
    let status = match end {
        Some(End::Closed(CloseReason::Local)) | None => STATUS_SUCCESS,
        Some(End::Closed(CloseReason::Decode(_) | CloseReason::Protocol(_))) => {
            STATUS_INVALID_NETWORK_RESPONSE
        }
        Some(End::Closed(CloseReason::PeerGoodbye(_))) => STATUS_REMOTE_DISCONNECT,
        Some(End::Closed(
            CloseReason::HandshakeTimeout
            | CloseReason::HeartbeatTimeout
            | CloseReason::IdleTimeout,
        )) => STATUS_IO_TIMEOUT,
        Some(End::PeerClosed) => STATUS_CONNECTION_DISCONNECTED,
        Some(End::Transport(s)) => s,
    };
    if status != STATUS_SUCCESS {
        agent
            .stats
            .last_session_status
            .store(status, Ordering::Relaxed);
    }
    // vsock_capture logs the end at WARN; this adds the detail.
    crate::klog_status!(
        Level::Debug,
        routine::SESSION,
        status,
        "session worker done ({})",
        why.unwrap_or("unload")
    );
    status
}

/// What [`feed_held`] did.
enum Fed {
    /// The session still has no room: nothing taken.
    Waiting,
    /// Some taken, some still held.
    Some,
    /// Everything taken (or the session is gone): receive again.
    All,
}

/// Feeds the bytes held back to the session if it has room now.
fn feed_held(held: &mut Vec<u8>) -> Fed {
    let taken = HUB.with(|h| match h.live_mut() {
        None => Some(held.len()),
        Some(s) if s.rx_held() => None,
        Some(s) => Some(s.receive_some(held, kernel::now())),
    });
    match taken {
        None | Some(0) => Fed::Waiting,
        Some(n) if n >= held.len() => {
            held.clear();
            Fed::All
        }
        Some(n) => {
            held.drain(..n);
            Fed::Some
        }
    }
}

/// Hands every host request the session accepted to the host-action
/// thread (a copy of its frame: the session's inbox is reused), or answers
/// `Busy` when that thread cannot take it. A restore chunk stays in the
/// session while the thread holds [`super::host_actions::RESTORE_WINDOW`]
/// of them (§14.7 backpressure). A restore the session ended itself is
/// passed on. PASSIVE_LEVEL (worker thread).
fn take_host_requests() {
    loop {
        let taken = HUB.with(|h| {
            let generation = h.generation;
            let s = h.live_mut()?;
            if let Some(id) = s.take_aborted_restore() {
                super::host_actions::abort_restore(generation, id);
            }
            let r = s.host_request()?;
            let chunk = matches!(r.message, thinagent_protocol::Message::RestoreData(_));
            if chunk && !super::host_actions::restore_chunk_room() {
                return None;
            }
            let job = super::host_actions::Job::copy(generation, r.id, &r.message, kernel::now());
            let id = r.id;
            let is_scan = matches!(r.message, thinagent_protocol::Message::ScanTree(_));
            s.pop_host_request();
            Some((generation, id, is_scan, chunk, job))
        });
        let Some((generation, id, is_scan, chunk, job)) = taken else {
            return;
        };
        let refused = match job {
            Some(job) => super::host_actions::submit(job).is_err(),
            None => true,
        };
        if refused {
            if chunk {
                // The restore ends here: its temporary file goes.
                super::host_actions::abort_restore(generation, id);
            }
            HUB.with(|h| {
                if let Some(s) = h.live_mut() {
                    let _ = if is_scan {
                        s.scan_done(
                            id,
                            thinagent_protocol::ScanDone {
                                counters: thinagent_protocol::ScanCounters::default(),
                                status: thinagent_protocol::ScanStatus::Busy,
                                error: None,
                            },
                        )
                    } else {
                        s.complete_action(
                            id,
                            thinagent_protocol::ActionResult::status(
                                thinagent_protocol::ActionStatus::Busy,
                            ),
                        )
                    };
                }
            });
        }
    }
}

/// Retires the live session (end of [`run`]): delivers what it still holds
/// (it answers every accepted query when it closes), answers any slot of
/// its generation still pending by the fail mode, frees it outside the
/// lock, and clears the worker's identity and the `connected` flag.
fn retire(agent: &Agent) {
    let fail_mode = agent.live.fail_mode();
    HUB.with(|h| {
        while let Some(event) = h.live_mut().and_then(|s| s.poll_event()) {
            if let SessionEvent::Verdict(v) = event {
                deliver(h, v);
            }
        }
        let generation = h.generation;
        for i in 0..SLOTS {
            if matches!(h.waiters[i].state, SlotState::Pending { generation: g, .. } if g == generation)
            {
                complete(
                    h,
                    i,
                    Answer::Local {
                        fail_mode,
                        reason: LocalReason::NoSession,
                    },
                );
            }
        }
        for slot in &mut h.scan_slots {
            if matches!(slot.state, ScanSlotState::Pending { generation: g, .. } if g == generation)
            {
                slot.state = ScanSlotState::Done(None);
            }
        }
        h.live = false;
    });
    super::host_actions::wake();
    WORKER_THREAD.store(0, Ordering::Release);
    agent.stats.connected.store(false, Ordering::Relaxed);
}

/// A short text for a close reason (any IRQL).
fn reason_text(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Decode(_) => "undecodable bytes from the host",
        CloseReason::Protocol(_) => "the host broke the protocol",
        CloseReason::PeerGoodbye(_) => "the host said Goodbye",
        CloseReason::HandshakeTimeout => "no HelloAck in time",
        CloseReason::HeartbeatTimeout => "no Pong in time",
        CloseReason::IdleTimeout => "nothing received for the idle timeout",
        CloseReason::Local => "closed locally",
    }
}

/// Closes the live session (it queues `Goodbye` and answers its queries).
/// PASSIVE_LEVEL (worker thread).
fn close_session() {
    HUB.with(|h| {
        if let Some(s) = h.live_mut() {
            s.close(kernel::now());
        }
    });
}

/// Sends everything the session wants to send.
/// PASSIVE_LEVEL (worker thread; `send_all` waits).
fn flush(transport: &mut dyn Transport, buf: &mut [u8]) -> Result<(), NTSTATUS> {
    loop {
        // `buf` is pool memory (non-paged), filled under the lock.
        let n = HUB.with(|h| h.live_mut().and_then(|s| s.poll_transmit(buf)));
        match n {
            Some(n) => transport.send_all(&buf[..n], SEND_TIMEOUT_MS)?,
            None => return Ok(()),
        }
    }
}

/// Completes the slot waiting for verdict `v` of the live generation
/// (under the lock). A verdict whose slot was already answered (teardown,
/// shutdown) is dropped.
fn deliver(h: &mut Hub, v: QueryVerdict) {
    let generation = h.generation;
    if let Some(i) = h.waiters.iter().position(|w| {
        matches!(w.state, SlotState::Pending { generation: g, query } if g == generation && query == v.query)
    }) {
        complete(h, i, Answer::Session(v));
        return;
    }
    let pending = ScanSlotState::Pending {
        generation,
        query: v.query,
    };
    if let Some(slot) = h.scan_slots.iter_mut().find(|s| s.state == pending) {
        slot.state = ScanSlotState::Done(
            (v.source == thinagent_guest::VerdictSource::Host)
                .then_some(v.decision == thinagent_protocol::Decision::Deny),
        );
        super::host_actions::wake();
    }
}

/// Serves one host read from the waiting open's file object.
#[allow(clippy::too_many_arguments)]
/// PASSIVE_LEVEL (worker thread; `FltReadFile` is synchronous).
fn serve_read(
    agent: &Agent,
    transport: &mut dyn Transport,
    send_buf: &mut [u8],
    failed: &mut bool,
    read_id: u64,
    query: QueryId,
    offset: u64,
    length: u32,
) -> Result<(), NTSTATUS> {
    let target = HUB.with(|h| {
        let generation = h.generation;
        let i = h.waiters.iter().position(|w| {
            !w.abandoned
                && !w.giving_up
                && matches!(w.state, SlotState::Pending { generation: g, query: q } if g == generation && q == query)
        })?;
        h.waiters[i].reading = true;
        Some((i, h.waiters[i].instance, h.waiters[i].file_object))
    });
    let Some((index, instance, file_object)) = target else {
        return serve_scan_read(
            agent, transport, send_buf, failed, read_id, query, offset, length,
        );
    };
    AgentStats::bump(&agent.stats.read_requests);
    let read = AlignedRead::new(instance, file_object, offset, length, READ_BUFFER_TAG);
    let outcome = read.outcome();
    let sent = answer_read(transport, send_buf, failed, read_id, outcome);
    drop(read);
    HUB.with(|h| {
        h.waiters[index].reading = false;
        if h.waiters[index].giving_up {
            EVENTS[index].set();
        }
    });
    sent
}

/// Serves one host read of an `OnDemand` event from the scan's own file
/// object (kept open by [`super::host_actions`] until the verdict), or
/// answers `Cancelled` when no live event has that id.
/// PASSIVE_LEVEL (worker thread).
#[allow(clippy::too_many_arguments)]
fn serve_scan_read(
    agent: &Agent,
    transport: &mut dyn Transport,
    send_buf: &mut [u8],
    failed: &mut bool,
    read_id: u64,
    query: QueryId,
    offset: u64,
    length: u32,
) -> Result<(), NTSTATUS> {
    let target = HUB.with(|h| {
        let pending = ScanSlotState::Pending {
            generation: h.generation,
            query,
        };
        let i = h.scan_slots.iter().position(|s| s.state == pending)?;
        h.scan_slots[i].reading = true;
        Some((i, h.scan_slots[i].instance, h.scan_slots[i].file_object))
    });
    let Some((index, instance, file_object)) = target else {
        return answer_read(transport, send_buf, failed, read_id, ReadOutcome::Cancelled);
    };
    AgentStats::bump(&agent.stats.read_requests);
    let read = AlignedRead::new(instance, file_object, offset, length, READ_BUFFER_TAG);
    let outcome = read.outcome();
    let sent = answer_read(transport, send_buf, failed, read_id, outcome);
    drop(read);
    HUB.with(|h| h.scan_slots[index].reading = false);
    super::host_actions::wake();
    sent
}

/// Hands one read result to the session, draining the send buffer while it
/// is full.
/// PASSIVE_LEVEL (worker thread).
fn answer_read(
    transport: &mut dyn Transport,
    send_buf: &mut [u8],
    failed: &mut bool,
    read_id: u64,
    outcome: ReadOutcome<'_>,
) -> Result<(), NTSTATUS> {
    loop {
        let r = HUB.with(|h| {
            h.live_mut()
                .map(|s| s.read_completed(read_id, outcome, kernel::now()))
        });
        match r {
            Some(Err(thinagent_guest::ReadError::Busy)) if !*failed => {
                if let Err(status) = flush(transport, send_buf) {
                    *failed = true;
                    crate::klog_status!(
                        Level::Warn,
                        routine::SESSION,
                        status,
                        "send failed while answering a host read"
                    );
                    close_session();
                    return Err(status);
                }
            }
            _ => return Ok(()),
        }
    }
}

/// One non-cached `FltReadFile` into a sector-aligned pool buffer.
///
/// `FLTFL_IO_OPERATION_NON_CACHED` needs the offset, the length and the
/// buffer aligned to the volume's sector size (`FltReadFile` remarks), so the
/// range is widened to sectors ([`AlignedRange`]) and the requested part
/// handed out. Non-cached reads do not fill the cache with content nobody
/// asked for; the file systems flush dirty cached data of the range before
/// such a read, so the host sees what a cached reader would.
/// `DO_NOT_UPDATE_BYTE_OFFSET` leaves the opener's file position alone.
///
/// The answer ([`AlignedRange::outcome`]) is `EndOfFile` with the last
/// bytes whenever the count the file system returned shows where the file
/// ends; only a full read ending on a sector boundary asks the file's size.
///
/// Used for host reads (the worker, on a waiting open's file object) and
/// for a query's inline content (the opener, on its own file object).
struct AlignedRead {
    instance: PFLT_INSTANCE,
    file_object: *const FILE_OBJECT,
    buffer: *mut c_void,
    /// The pool tag `buffer` was allocated with.
    tag: u32,
    status: NTSTATUS,
    /// The aligned range read (None: nothing was read, `status` says why).
    range: Option<AlignedRange>,
    /// `BytesRead`, at most the range's length.
    read: usize,
}

impl AlignedRead {
    /// Reads the sectors covering `length` bytes at `offset` into a buffer
    /// tagged `tag` (PASSIVE_LEVEL; the worker thread, or the opener's).
    fn new(
        instance: PFLT_INSTANCE,
        file_object: *const FILE_OBJECT,
        offset: u64,
        length: u32,
        tag: u32,
    ) -> Self {
        let mut this = AlignedRead {
            instance,
            file_object,
            buffer: core::ptr::null_mut(),
            tag,
            status: STATUS_SUCCESS,
            range: None,
            read: 0,
        };
        let range = match AlignedRange::new(offset, length, sector_size(instance)) {
            Ok(r) => r,
            Err(AlignError::PastAnyFile) => {
                this.status = STATUS_END_OF_FILE;
                return this;
            }
            Err(AlignError::TooLong) => {
                this.status = kernel::STATUS_INVALID_PARAMETER;
                return this;
            }
        };
        // AlignedRange::new keeps the start at most i64::MAX.
        let byte_offset = range.start as i64;
        // SAFETY: FltAllocatePoolAlignedWithTag (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltallocatepoolalignedwithtag):
        // the instance is valid while its waiter is parked (module docs),
        // or in the opener's own callback; IRQL <= APC_LEVEL for this
        // non-paged request at PASSIVE.
        this.buffer = unsafe {
            FltAllocatePoolAlignedWithTag(instance, NonPagedPoolNx, range.len as usize, tag)
        };
        if this.buffer.is_null() {
            this.status = kernel::STATUS_INSUFFICIENT_RESOURCES;
            return this;
        }
        let mut read = 0u32;
        // SAFETY: FltReadFile (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltreadfile):
        // synchronous (no callback), PASSIVE_LEVEL; the file object and
        // instance belong to an open whose thread waits in `query` (or is
        // this thread, still in its create or cleanup callback); the
        // buffer holds `range.len` bytes, sector-aligned as are offset and
        // length.
        this.status = unsafe {
            FltReadFile(
                instance,
                file_object,
                &byte_offset,
                range.len,
                this.buffer,
                FLTFL_IO_OPERATION_NON_CACHED | FLTFL_IO_OPERATION_DO_NOT_UPDATE_BYTE_OFFSET,
                &mut read,
                None,
                core::ptr::null(),
            )
        };
        this.range = Some(range);
        this.read = read.min(range.len) as usize;
        this
    }

    /// The read as the protocol's outcome. May query the file's size
    /// (PASSIVE_LEVEL, while the opener still waits).
    fn outcome(&self) -> ReadOutcome<'_> {
        let at_end = self.status == STATUS_END_OF_FILE;
        let Some(range) = self.range.filter(|_| nt_success(self.status) || at_end) else {
            return if at_end {
                ReadOutcome::EndOfFile(&[])
            } else {
                ReadOutcome::Error(OsError::NtStatus(self.status as u32))
            };
        };
        let read: &[u8] = if at_end || self.read == 0 {
            // STATUS_END_OF_FILE: the aligned start is at or past the end.
            &[]
        } else {
            // SAFETY: the buffer (non-null: the read ran) holds range.len
            // bytes, of which FltReadFile wrote the first `read`
            // (<= range.len); it lives as long as `self`.
            unsafe { core::slice::from_raw_parts(self.buffer.cast::<u8>(), self.read) }
        };
        range.outcome(read, || file_size(self.instance, self.file_object))
    }
}

impl Drop for AlignedRead {
    fn drop(&mut self) {
        if !self.buffer.is_null() {
            // SAFETY: FltFreePoolAlignedWithTag (fltkernel.h,
            // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltfreepoolalignedwithtag):
            // the buffer came from FltAllocatePoolAlignedWithTag with this
            // instance and tag; the instance is still pinned by the waiter
            // (or the opener's callback).
            unsafe { FltFreePoolAlignedWithTag(self.instance, self.buffer, self.tag) };
        }
    }
}

/// The sector size of the instance's volume (0 if unknown).
/// IRQL <= APC_LEVEL.
fn sector_size(instance: PFLT_INSTANCE) -> u32 {
    let mut volume: PFLT_VOLUME = 0;
    // SAFETY: FltGetVolumeFromInstance (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetvolumefrominstance):
    // a live instance; the volume comes back referenced. IRQL <= APC_LEVEL.
    if !nt_success(unsafe { FltGetVolumeFromInstance(instance, &mut volume) }) {
        return 0;
    }
    // SAFETY: all-zero is a valid FLT_VOLUME_PROPERTIES.
    let mut props: FLT_VOLUME_PROPERTIES = unsafe { core::mem::zeroed() };
    let mut len = 0u32;
    // SAFETY: FltGetVolumeProperties (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltgetvolumeproperties):
    // the fixed part is filled even when the names do not fit
    // (STATUS_BUFFER_OVERFLOW). IRQL <= APC_LEVEL.
    let status = unsafe {
        FltGetVolumeProperties(
            volume,
            &mut props,
            size_of::<FLT_VOLUME_PROPERTIES>() as u32,
            &mut len,
        )
    };
    // SAFETY: FltObjectDereference (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltobjectdereference):
    // drops the reference FltGetVolumeFromInstance added.
    unsafe { FltObjectDereference(volume as *mut c_void) };
    if nt_success(status) || status == STATUS_BUFFER_OVERFLOW {
        u32::from(props.SectorSize)
    } else {
        0
    }
}
