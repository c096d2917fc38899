//! The driver's one global: the parameters read at `DriverEntry`, the
//! statistics the control device reports, and the shutdown flag.
//!
//! Each subsystem keeps its own state in its own module (the filter handle
//! in [`super::filter_callbacks`], the provider and thread in
//! [`super::vsock_capture`], the live session and the waiting queries in
//! [`super::session_worker`]); what they all read lives here.
//!
//! Lifetime: [`install`] in `DriverEntry` before anything that could call
//! [`get`]; [`uninstall`] in the unload path after every thread, callback and
//! IOCTL that could still call [`get`] has finished.

use alloc::boxed::Box;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering,
};
use core::time::Duration;

use thinagent_guest::{FailMode, HostSettings, ImageList, OpenPolicy, Params};
use thinagent_km_sys::fltmgr::Minifilters::{
    FltAcquirePushLockExclusive, FltAcquirePushLockShared, FltDeletePushLock,
    FltInitializePushLock, FltReleasePushLock,
};

/// Counters and state reported by the control device (`IOCTL_THINAGENT_GET_STATE`).
/// Relaxed atomics: each value is exact, the set is not a consistent snapshot.
#[derive(Default)]
pub struct AgentStats {
    /// A session with the host scanner is established.
    pub connected: AtomicBool,
    /// vSockets provider capture attempts made so far (all rounds).
    pub capture_attempts: AtomicU32,
    /// Status of the latest capture attempt (NTSTATUS; 0 before the first).
    pub last_capture_status: AtomicI32,
    /// The provider is captured (the capture loop succeeded).
    pub provider_captured: AtomicBool,
    /// Sessions established since load.
    pub sessions: AtomicU32,
    /// Status of the latest failed connect / session end (NTSTATUS; 0 if none).
    pub last_session_status: AtomicI32,
    /// Verdict queries sent to the host.
    pub queries: AtomicU64,
    /// Opens denied (by a host verdict or the fail mode).
    pub denials: AtomicU64,
    /// Opens denied on a host verdict (answered now or cached): `Health`'s
    /// `denied` (protocol §14.8), which leaves fail-mode denials out.
    pub host_denials: AtomicU64,
    /// Queries answered by the deadline (`umcMsgTimeoutMs`) instead of the host.
    pub timeouts: AtomicU64,
    /// Opens decided by the fail mode because no session was up.
    pub fail_mode_decisions: AtomicU64,
    /// Opens answered from the verdict cache.
    pub cache_hits: AtomicU64,
    /// Opens the policy skipped (directories, excluded paths, own I/O, ...).
    pub skipped: AtomicU64,
    /// Host read requests served with `FltReadFile`.
    pub read_requests: AtomicU64,
    /// Streams rescanned at cleanup because they were modified.
    pub rescans: AtomicU64,
}

impl AgentStats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The settings a host `Policy` (protocol §14.6) changes, behind one
/// Filter Manager push lock: an open reads them under the shared lock
/// ([`Live::read`]), a policy replaces them under the exclusive lock
/// ([`Live::write`]), so an open sees the old policy or the new, never a
/// mix. A push lock (not a spin lock) because the create path compares
/// paths that may live in paged pool (`FltGetFileNameInformation`'s
/// buffers) while it holds it. `FltAcquirePushLock*` disables normal
/// kernel APCs itself (fltkernel.h,
/// learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltacquirepushlockexclusive);
/// IRQL <= APC_LEVEL. The fail mode and query timeout are mirrored in
/// atomics for readers outside the create decision (the session worker,
/// teardown).
pub struct Live {
    /// The `EX_PUSH_LOCK` (one pointer-sized word).
    lock: UnsafeCell<usize>,
    inner: UnsafeCell<LiveSettings>,
    fail_mode_closed: AtomicBool,
    query_timeout_ms: AtomicU32,
    debug_level: AtomicU8,
    version: AtomicU64,
}

/// What [`Live`] guards.
pub struct LiveSettings {
    /// The exclusions and size limit (`excludePaths`, `excludeExtensions`,
    /// `maxScanSizeMb` at load; a host policy's after).
    pub policy: OpenPolicy,
    /// Process images whose opens are not scanned (a host policy's; none
    /// at load).
    pub images: ImageList,
    /// Fail mode, query timeout, cache TTL cap, debug level, version.
    pub settings: HostSettings,
}

// SAFETY: `inner` is only reached under the push lock (shared for
// readers, exclusive for the writer), the rest are atomics.
unsafe impl Sync for Live {}

impl Live {
    /// Fills the live settings from the registry parameters and
    /// initialises the push lock (PASSIVE_LEVEL, `DriverEntry`, before the
    /// agent is published; `self` is exclusively ours).
    pub fn init_from(&mut self, params: &Params) {
        // SAFETY: FltInitializePushLock (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltinitializepushlock):
        // a pointer-sized word in the agent, which outlives every use.
        unsafe { FltInitializePushLock(self.lock.get()) };
        let inner = self.inner.get_mut();
        // SAFETY: `OpenPolicy` is plain data (fixed arrays and integers, no
        // Drop, no pointers): a bitwise copy is a valid second value, made
        // in place so that no 18 KB temporary sits on the kernel stack.
        unsafe { ptr::copy_nonoverlapping(&raw const params.policy, &raw mut inner.policy, 1) };
        inner.images.clear();
        inner.settings = HostSettings {
            version: 0,
            fail_mode: params.fail_mode,
            debug_level: params.debug_level,
            query_timeout_ms: params.umc_msg_timeout_ms,
            cache_ttl_cap_ms: params.verdict_ttl().map(|d| d.as_millis() as u64),
        };
        let settings = inner.settings;
        self.mirror(&settings);
    }

    /// Where the policy lives, for the in-place initialisation of a
    /// freshly allocated agent (`driver_entry::new_agent`).
    ///
    /// # Safety
    ///
    /// `live` points to storage for a `Live` (it may be uninitialised).
    pub unsafe fn policy_slot(live: *mut Live) -> *mut OpenPolicy {
        // SAFETY: only addresses are computed, nothing is read or
        // referenced: valid for uninitialised storage.
        unsafe { &raw mut (*UnsafeCell::raw_get(&raw const (*live).inner)).policy }
    }

    fn mirror(&self, s: &HostSettings) {
        self.fail_mode_closed
            .store(s.fail_mode == FailMode::Closed, Ordering::Release);
        self.query_timeout_ms
            .store(s.query_timeout_ms, Ordering::Release);
        self.debug_level.store(s.debug_level, Ordering::Release);
        self.version.store(s.version, Ordering::Release);
    }

    /// Runs `f` on the settings under the shared lock (IRQL <= APC_LEVEL).
    /// `f` must not wait for anything that may take the exclusive lock.
    pub fn read<R>(&self, f: impl FnOnce(&LiveSettings) -> R) -> R {
        // SAFETY: FltAcquirePushLockShared (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltacquirepushlockshared):
        // an initialised push lock; not held by this thread (never nested).
        unsafe { FltAcquirePushLockShared(self.lock.get()) };
        // SAFETY: shared access under the shared lock.
        let r = f(unsafe { &*self.inner.get() });
        // SAFETY: FltReleasePushLock (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltreleasepushlock):
        // releases the acquisition above.
        unsafe { FltReleasePushLock(self.lock.get()) };
        r
    }

    /// Runs `f` on the settings under the exclusive lock (PASSIVE_LEVEL),
    /// then updates the mirrors.
    pub fn write<R>(&self, f: impl FnOnce(&mut LiveSettings) -> R) -> R {
        // SAFETY: FltAcquirePushLockExclusive (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltacquirepushlockexclusive):
        // an initialised push lock; not held by this thread.
        unsafe { FltAcquirePushLockExclusive(self.lock.get()) };
        // SAFETY: exclusive access under the exclusive lock.
        let inner = unsafe { &mut *self.inner.get() };
        let r = f(inner);
        self.mirror(&inner.settings);
        // SAFETY: FltReleasePushLock: releases the acquisition above.
        unsafe { FltReleasePushLock(self.lock.get()) };
        r
    }

    /// The fail mode in effect (any IRQL).
    #[must_use]
    pub fn fail_mode(&self) -> FailMode {
        if self.fail_mode_closed.load(Ordering::Acquire) {
            FailMode::Closed
        } else {
            FailMode::Open
        }
    }

    /// The per-query deadline in effect (any IRQL).
    #[must_use]
    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.query_timeout_ms.load(Ordering::Acquire)))
    }

    /// The host policy version in effect, 0 before the first (any IRQL).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // SAFETY: FltDeletePushLock (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltdeletepushlock):
        // nobody holds or waits for the lock any more (the agent is freed
        // last at unload).
        unsafe { FltDeletePushLock(self.lock.get()) };
    }
}

/// What every part of the driver reads.
pub struct Agent {
    /// Parameters from the service's `Parameters` key (fixed after load;
    /// `debugLevel` changes live in [`super::log`]; what a host policy
    /// changes lives in [`Agent::live`]).
    pub params: Params,
    /// The settings a host `Policy` may change (fail mode, exclusions,
    /// query timeout, cache TTL cap, max scan size, debug level).
    pub live: Live,
    /// When `DriverEntry` ran (for `Health.uptime_ms`).
    pub started: thinagent_guest::Instant,
    /// Counters for the control device.
    pub stats: AgentStats,
    /// Set once unload begins: threads stop, new queries get the fail mode.
    pub stopping: AtomicBool,
}

impl Agent {
    /// Whether unload has begun.
    #[must_use]
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

static AGENT: AtomicPtr<Agent> = AtomicPtr::new(ptr::null_mut());

/// Publishes the agent (PASSIVE_LEVEL, `DriverEntry`). Returns it, or gives
/// `agent` back if one is already installed.
pub fn install(agent: Box<Agent>) -> Result<&'static Agent, Box<Agent>> {
    let raw = Box::into_raw(agent);
    match AGENT.compare_exchange(ptr::null_mut(), raw, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: `raw` came from Box::into_raw just above and stays
        // allocated until `uninstall`, whose contract guarantees no
        // reference obtained here is still in use.
        Ok(_) => Ok(unsafe { &*raw }),
        // SAFETY: not published, so we still own it exclusively.
        Err(_) => Err(unsafe { Box::from_raw(raw) }),
    }
}

/// The installed agent, if any (any IRQL).
#[must_use]
pub fn get() -> Option<&'static Agent> {
    let raw = AGENT.load(Ordering::Acquire);
    // SAFETY: non-null means installed and not yet uninstalled (see
    // `uninstall`'s contract).
    unsafe { raw.as_ref() }
}

/// Takes the agent back for freeing (PASSIVE_LEVEL, last step of unload).
///
/// # Safety
///
/// No thread, callback or IOCTL that may still use a reference from [`get`]
/// or [`install`] may be running or start later: call it only after the
/// filter is unregistered, the worker threads have exited and the control
/// device is deleted.
pub unsafe fn uninstall() -> Option<Box<Agent>> {
    let raw = AGENT.swap(ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: a non-null value was produced by Box::into_raw in `install`
    // and, per the contract, nobody uses it any more.
    (!raw.is_null()).then(|| unsafe { Box::from_raw(raw) })
}
