//! `DriverEntry` and the unload sequence: the order in which the driver's
//! parts start and stop. Every part is in its own module; this one only
//! sequences them and unwinds on failure.
//!
//! Start (`DriverEntry`, PASSIVE_LEVEL, on the boot-driver initialisation
//! thread for a boot start):
//!
//! 1. the `Parameters` key into the agent's [`thinagent_guest::Params`]
//!    ([`registry_params::read_into`]), the live `debugLevel`
//!    ([`log::set_debug_level`]) and the parameter dump at DEBUG
//!    ([`thinagent_guest::Params::dump`]: `umcMsgTimeoutMs: 2000`,
//!    `umcMsgTimeout100Ns: -20000000`, ...);
//! 2. [`agent::install`];
//! 3. [`control_device::create`];
//! 4. [`filter_callbacks::register`] (`FltRegisterFilter`), then
//!    [`filter_callbacks::start_filtering`] (`FltStartFiltering`);
//! 5. [`vsock_capture::start`]: the provider capture and the session
//!    thread. **Never a reason to fail**: with the default `captureMode` it
//!    starts a system thread for the whole loop and returns; until a
//!    session is up the filter answers by `failMode`. A failure status from
//!    it (e.g. no thread could be created, or a blocking-mode capture that
//!    gave up) is logged at ERROR and the driver stays loaded, filtering
//!    under `failMode`; the control device shows the state.
//!
//! A failure in steps 2–4 undoes the steps before it, in reverse, and
//! `DriverEntry` returns that status (Filter Manager then unloads the image).
//!
//! Unload ([`unload`], from Filter Manager's `FilterUnloadCallback`):
//! `stopping` set → [`vsock_capture::stop`] → [`session_worker::shutdown`]
//! → [`filter_callbacks::unregister`] → [`control_device::delete`] →
//! [`agent::uninstall`]. A minifilter does not set
//! `DriverObject->DriverUnload`; Filter Manager calls the unload callback
//! (learn.microsoft.com/windows-hardware/drivers/ifs/writing-a-filterunloadcallback-routine).
//!
//! Kernel routines: none directly; `alloc::alloc` goes to `wdk-alloc`
//! (`ExAllocatePool2`, learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-exallocatepool2).

use alloc::boxed::Box;
use core::alloc::Layout;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use thinagent_guest::policy::PathStyle;
use thinagent_guest::{Level, Params, log::routine};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::DRIVER_OBJECT;
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{NTSTATUS, UNICODE_STRING};

use super::agent::{self, Agent, AgentStats, Live};
use super::kernel::{
    self, STATUS_INSUFFICIENT_RESOURCES, STATUS_SUCCESS, STATUS_UNSUCCESSFUL, nt_success,
};
use super::{
    control_device, filter_callbacks, host_actions, log, registry_params, session_worker,
    vsock_capture,
};
use crate::{klog, klog_status};

/// Routine name of the unload lines (the load lines use
/// [`routine::DRIVER_ENTRY`]).
const DRIVER_UNLOAD: &str = "DriverUnload";

/// The defaults, in read-only data: copied straight into the heap-allocated
/// agent so that no ~18 KB `Params` value ever sits on the kernel stack.
static DEFAULT_PARAMS: Params = Params::new(PathStyle::Windows);

/// The driver's entry point (`DRIVER_INITIALIZE`, `wdm.h`;
/// learn.microsoft.com/windows-hardware/drivers/wdm/writing-a-driverentry-routine).
/// PASSIVE_LEVEL, in the system process.
///
/// # Safety
///
/// Called by the I/O manager only, with its driver object and the
/// service's registry path, both valid for the duration of the call (the
/// driver object for the driver's lifetime).
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    registry_path: *const UNICODE_STRING,
) -> NTSTATUS {
    klog!(
        Level::Audit,
        routine::DRIVER_ENTRY,
        "ThinAgent {} loading",
        env!("CARGO_PKG_VERSION")
    );
    let status = start(driver, registry_path);
    if nt_success(status) {
        klog_status!(
            Level::Audit,
            routine::DRIVER_ENTRY,
            status,
            "ThinAgent loaded"
        );
    } else {
        klog_status!(
            Level::Audit,
            routine::DRIVER_ENTRY,
            status,
            "ThinAgent failed to load"
        );
    }
    status
}

/// Steps 1–5 with unwinding; the status `DriverEntry` returns.
fn start(driver: *mut DRIVER_OBJECT, registry_path: *const UNICODE_STRING) -> NTSTATUS {
    let Some(mut boxed) = new_agent() else {
        klog!(
            Level::Error,
            routine::DRIVER_ENTRY,
            "no memory for the agent"
        );
        return STATUS_INSUFFICIENT_RESOURCES;
    };
    registry_params::read_into(registry_path, &mut boxed.params);
    let Agent { params, live, .. } = &mut *boxed;
    live.init_from(params);
    log::set_debug_level(boxed.params.debug_level);
    boxed.params.dump(log::emit);

    let agent = match agent::install(boxed) {
        Ok(a) => a,
        Err(_again) => {
            // Only possible if a previous instance of this image never
            // uninstalled its agent; refuse rather than share it.
            klog!(
                Level::Error,
                routine::DRIVER_ENTRY,
                "an agent is already installed"
            );
            return STATUS_UNSUCCESSFUL;
        }
    };

    if let Err(status) = control_device::create(driver) {
        klog_status!(
            Level::Error,
            routine::DRIVER_ENTRY,
            status,
            "control device not created"
        );
        unwind_agent();
        return status;
    }
    if let Err(status) = filter_callbacks::register(driver) {
        klog_status!(
            Level::Error,
            routine::DRIVER_ENTRY,
            status,
            "FltRegisterFilter failed"
        );
        control_device::delete();
        unwind_agent();
        return status;
    }
    if let Err(status) = filter_callbacks::start_filtering() {
        klog_status!(
            Level::Error,
            routine::DRIVER_ENTRY,
            status,
            "FltStartFiltering failed"
        );
        filter_callbacks::unregister();
        control_device::delete();
        unwind_agent();
        return status;
    }

    let actions = host_actions::start(agent);
    if !nt_success(actions) {
        klog_status!(
            Level::Error,
            routine::DRIVER_ENTRY,
            actions,
            "host-action thread not started; host requests are answered Busy"
        );
    }
    let start_type = registry_params::service_start_type(registry_path);
    vsock_capture::set_boot_start(start_type == Some(registry_params::SERVICE_BOOT_START));
    let vsock = vsock_capture::start(agent, driver);
    if !nt_success(vsock) {
        klog_status!(
            Level::Error,
            routine::DRIVER_ENTRY,
            vsock,
            "vsock layer not started; filtering under failMode"
        );
    }
    STATUS_SUCCESS
}

/// The agent, allocated and initialised on the heap field by field
/// (`Params` is copied from [`DEFAULT_PARAMS`], never built on the stack).
/// `None` when the pool is exhausted.
fn new_agent() -> Option<Box<Agent>> {
    // Fails to compile if `Agent` gains a field this function does not
    // initialise below.
    let _: fn(&Agent) = |a| {
        let Agent {
            params: _,
            live: _,
            started: _,
            stats: _,
            stopping: _,
        } = a;
    };
    let layout = Layout::new::<Agent>();
    // SAFETY: `Agent` is not zero-sized.
    let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<Agent>();
    if raw.is_null() {
        return None;
    }
    // SAFETY: `raw` is valid and aligned for one `Agent`; every field is
    // written exactly once before the Box takes ownership. `DEFAULT_PARAMS`
    // is a plain-data value (no Drop, no interior mutability), so a bitwise
    // copy is a valid second value.
    unsafe {
        ptr::copy_nonoverlapping(&raw const DEFAULT_PARAMS, &raw mut (*raw).params, 1);
        // The live settings: the lock word and mirrors zeroed (`init_from`
        // fills them after the registry is read), the policy copied from
        // the defaults like `params`.
        ptr::write_bytes(&raw mut (*raw).live, 0, 1);
        ptr::copy_nonoverlapping(
            &raw const DEFAULT_PARAMS.policy,
            Live::policy_slot(&raw mut (*raw).live),
            1,
        );
        (&raw mut (*raw).started).write(kernel::now());
        (&raw mut (*raw).stats).write(AgentStats::default());
        (&raw mut (*raw).stopping).write(AtomicBool::new(false));
        Some(Box::from_raw(raw))
    }
}

/// Frees the agent during a failed `DriverEntry` (nothing else uses it yet:
/// every part that could was not started or has been undone).
fn unwind_agent() {
    // SAFETY: called only after the parts started so far were stopped, in
    // DriverEntry, before any thread or callback could take a reference.
    drop(unsafe { agent::uninstall() });
}

/// Stops everything and frees the agent (PASSIVE_LEVEL). Called once, by
/// `filter_callbacks`' `FilterUnloadCallback`, whose return value this is,
/// after that callback has decided the unload goes ahead (it refuses a
/// non-mandatory unload while `vsock_capture::unload_is_safe()` is false).
/// Once called, it always completes and returns `STATUS_SUCCESS`.
pub fn unload() -> NTSTATUS {
    klog!(Level::Audit, DRIVER_UNLOAD, "ThinAgent unloading");
    if let Some(agent) = agent::get() {
        agent.stopping.store(true, Ordering::Release);
    }
    vsock_capture::stop();
    session_worker::shutdown();
    // After the session ended (its scan events are all answered), before
    // the filter goes: the thread closes its files and instance references.
    host_actions::stop();
    filter_callbacks::unregister();
    control_device::delete();
    // SAFETY: the capture and session threads have exited
    // (vsock_capture::stop waits for them), every waiting query was
    // answered, FltUnregisterFilter returned (no callback runs or will), and
    // the control device is gone with no IOCTL in progress: nobody holds a
    // reference from agent::get() any more.
    drop(unsafe { agent::uninstall() });
    klog_status!(
        Level::Audit,
        DRIVER_UNLOAD,
        STATUS_SUCCESS,
        "ThinAgent unloaded"
    );
    STATUS_SUCCESS
}
