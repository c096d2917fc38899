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
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use thinagent_guest::Params;

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

/// What every part of the driver reads.
pub struct Agent {
    /// Parameters from the service's `Parameters` key (fixed after load;
    /// `debugLevel` changes live in [`super::log`]).
    pub params: Params,
    /// Counters for the control device.
    pub stats: AgentStats,
    /// Set once unload begins: threads stop, new queries get the fail mode.
    pub stopping: AtomicBool,
}

impl Agent {
    /// A fresh agent with `params`.
    #[must_use]
    pub fn new(params: Params) -> Self {
        Agent {
            params,
            stats: AgentStats::default(),
            stopping: AtomicBool::new(false),
        }
    }

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
