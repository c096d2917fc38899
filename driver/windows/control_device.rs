//! The control device `\Device\ThinAgent` (link `\DosDevices\ThinAgent`,
//! user mode opens `\\.\ThinAgent`): two buffered IOCTLs, one returns the
//! agent's state, one sets the live `debugLevel`. The ABI (names, codes,
//! validation, the `AgentState` byte layout) is
//! [`thinagent_guest::control`]; this module moves bytes between the IRP and
//! that crate. `thinagent-diag agent-state` is the client.
//!
//! * **Access**: `IoCreateDevice` with `FILE_DEVICE_SECURE_OPEN` (so the
//!   ACL also covers opens of names below the device, `\\.\ThinAgent\x`),
//!   then, before the symbolic link exists and before `DriverEntry` returns
//!   (until then `DO_DEVICE_INITIALIZING` fails every open), the device gets
//!   a DACL granting [`control::DEVICE_ACCESS_MASK`] to SYSTEM and
//!   Administrators only ([`restrict_access`]):
//!   `FltBuildDefaultSecurityDescriptor` builds exactly that descriptor,
//!   `ObOpenObjectByPointer` gives a kernel handle to the device with
//!   `WRITE_DAC`, `ZwSetSecurityObject` sets the DACL from it. That is what
//!   the WDK's `IoCreateDeviceSecure` does after its own `IoCreateDevice`;
//!   it is not used because it is code in the static library `wdmsec.lib`,
//!   not a kernel export (docs/windows.md, "Control device"). Any
//!   failure deletes the device and fails `create`. The IOCTL codes carry
//!   `FILE_READ_ACCESS` / `FILE_WRITE_ACCESS`, which the I/O manager checks
//!   against the handle before the request reaches us.
//! * **Dispatch**: `IRP_MJ_CREATE`, `IRP_MJ_CLOSE` and
//!   `IRP_MJ_DEVICE_CONTROL` of the driver object point at [`dispatch`].
//!   Filter Manager never sends file-system IRPs through a minifilter's
//!   driver object (it calls the registered callbacks instead), so the only
//!   device these entries can see is ours; [`dispatch`] still checks the
//!   device object and fails anything else with
//!   `STATUS_INVALID_DEVICE_REQUEST`.
//! * **Unload**: [`delete`] removes the link (no new opens), waits for
//!   IOCTLs in progress (rundown protection), then deletes the device. It
//!   runs before `agent::uninstall`, so an IOCTL never sees a freed agent.
//!   A handle still open keeps the device object until it is closed
//!   (`IoDeleteDevice` defers the deletion); its requests are refused, its
//!   close succeeds.
//!
//! `DO_DEVICE_INITIALIZING` is cleared by the I/O manager when `DriverEntry`
//! returns, for devices created there (the `IoCreateDevice` page, Remarks).
//!
//! Kernel routines and their doc pages
//! (learn.microsoft.com/windows-hardware/drivers/ddi/...):
//! `IoCreateDevice` (wdm/nf-wdm-iocreatedevice),
//! `FltBuildDefaultSecurityDescriptor`
//! (fltkernel/nf-fltkernel-fltbuilddefaultsecuritydescriptor),
//! `FltFreeSecurityDescriptor` (fltkernel/nf-fltkernel-fltfreesecuritydescriptor),
//! `ObOpenObjectByPointer` (ntifs/nf-ntifs-obopenobjectbypointer),
//! `ZwSetSecurityObject` (ntifs/nf-ntifs-zwsetsecurityobject), `ZwClose`
//! (wdm/nf-wdm-zwclose),
//! `IoCreateSymbolicLink` (wdm/nf-wdm-iocreatesymboliclink),
//! `IoDeleteSymbolicLink` (wdm/nf-wdm-iodeletesymboliclink), `IoDeleteDevice`
//! (wdm/nf-wdm-iodeletedevice), `IofCompleteRequest` (the function behind the
//! `IoCompleteRequest` macro: wdm/nf-wdm-iocompleterequest),
//! `ExInitializeRundownProtection` (wdm/nf-wdm-exinitializerundownprotection),
//! `ExAcquireRundownProtection` (wdm/nf-wdm-exacquirerundownprotection),
//! `ExReleaseRundownProtection` (wdm/nf-wdm-exreleaserundownprotection),
//! `ExWaitForRundownProtectionRelease`
//! (wdm/nf-wdm-exwaitforrundownprotectionrelease).
//! `IoGetCurrentIrpStackLocation` is a `wdm.h` inline function, written out
//! in [`current_stack_location`].

use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use thinagent_guest::Level;
use thinagent_guest::control::{
    self, AgentState, ControlRequest, DEVICE_ACCESS_MASK, DEVICE_NAME, DOS_DEVICE_NAME,
    FILE_DEVICE_THINAGENT,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::{
    DEVICE_OBJECT, DRIVER_OBJECT, IO_STACK_LOCATION, IRP,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Storage::FileSystem::IO_NO_INCREMENT;
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FltBuildDefaultSecurityDescriptor, FltFreeSecurityDescriptor,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Storage::FileSystem::ObOpenObjectByPointer;
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    EX_RUNDOWN_REF, ExAcquireRundownProtection, ExInitializeRundownProtection,
    ExReleaseRundownProtection, ExWaitForRundownProtectionRelease, FILE_DEVICE_SECURE_OPEN,
    IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL, IoCreateDevice, IoCreateSymbolicLink,
    IoDeleteDevice, IoDeleteSymbolicLink, IofCompleteRequest, KernelMode,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{
    HANDLE, NTSTATUS, STATUS_INVALID_DEVICE_REQUEST,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;
use thinagent_km_sys::io_params::IO_STACK_DEVICE_IO_CONTROL;
use thinagent_km_sys::nt::STATUS_DEVICE_NOT_READY;
use thinagent_km_sys::ntoskrnl::{
    DACL_SECURITY_INFORMATION, FILE_ALL_ACCESS, OBJ_KERNEL_HANDLE, WRITE_DAC, ZwClose,
    ZwSetSecurityObject,
};

use super::agent::{self, Agent};
use super::kernel::{STATUS_SUCCESS, ascii_utf16, nt_success, unicode_string};
use super::log;
use crate::{klog, klog_status};

/// Routine name in the log lines of this module.
const ROUTINE: &str = "ControlDevice";

static DEVICE_NAME_UNITS: [u16; DEVICE_NAME.len()] = ascii_utf16(DEVICE_NAME);
static DOS_DEVICE_NAME_UNITS: [u16; DOS_DEVICE_NAME.len()] = ascii_utf16(DOS_DEVICE_NAME);

// The portable ABI's mask is the kernel's FILE_ALL_ACCESS.
const _: () = assert!(DEVICE_ACCESS_MASK == FILE_ALL_ACCESS);

/// The control device object, null when absent.
static CONTROL_DEVICE: AtomicPtr<DEVICE_OBJECT> = AtomicPtr::new(ptr::null_mut());
/// Whether `\DosDevices\ThinAgent` exists (ours to delete).
static LINK_CREATED: AtomicBool = AtomicBool::new(false);

/// Rundown protection for IOCTLs in progress against [`delete`].
struct Rundown(UnsafeCell<EX_RUNDOWN_REF>);
// SAFETY: an EX_RUNDOWN_REF is made to be used from any thread through the
// Ex*RundownProtection routines, which are the only access.
unsafe impl Sync for Rundown {}

// SAFETY: all-zero is a valid EX_RUNDOWN_REF (`Count = 0`, what
// ExInitializeRundownProtection writes); `create` initialises it anyway.
static RUNDOWN: Rundown = Rundown(UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Creates the device and its link and takes over `IRP_MJ_CREATE`, `CLOSE`
/// and `DEVICE_CONTROL` of `driver`. PASSIVE_LEVEL (`DriverEntry`, after
/// `agent::install`). On failure nothing is left behind.
///
/// `driver` must be the driver object `DriverEntry` received.
#[allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "safe fn by the driver's module contract; its one caller, DriverEntry, passes the I/O manager's driver object"
)]
pub fn create(driver: *mut DRIVER_OBJECT) -> Result<(), NTSTATUS> {
    // SAFETY: not yet published, so no IOCTL can hold rundown protection.
    unsafe { ExInitializeRundownProtection(RUNDOWN.0.get()) };
    let name = unicode_string(&DEVICE_NAME_UNITS);
    let link = unicode_string(&DOS_DEVICE_NAME_UNITS);
    let mut device: *mut DEVICE_OBJECT = ptr::null_mut();
    // SAFETY: `driver` is DriverEntry's driver object; the name points at a
    // static; `device` receives the new object.
    let status = unsafe {
        IoCreateDevice(
            driver,
            0,
            &name,
            FILE_DEVICE_THINAGENT,
            FILE_DEVICE_SECURE_OPEN,
            false,
            &mut device,
        )
    };
    if !nt_success(status) {
        klog_status!(
            Level::Error,
            ROUTINE,
            status,
            "IoCreateDevice {DEVICE_NAME} failed"
        );
        return Err(status);
    }
    if let Err((step, status)) = restrict_access(device) {
        klog_status!(
            Level::Error,
            ROUTINE,
            status,
            "{step} for the DACL of {DEVICE_NAME} failed; device deleted"
        );
        // SAFETY: the device was created above and is not yet published
        // (no link, no dispatch routine, CONTROL_DEVICE still null, and
        // DO_DEVICE_INITIALIZING still fails every open).
        unsafe { IoDeleteDevice(device) };
        return Err(status);
    }
    // SAFETY: both strings point at statics.
    let status = unsafe { IoCreateSymbolicLink(&link, &name) };
    if !nt_success(status) {
        klog_status!(
            Level::Error,
            ROUTINE,
            status,
            "IoCreateSymbolicLink {DOS_DEVICE_NAME} failed"
        );
        // SAFETY: the device was created above and is not yet published
        // (no dispatch routine installed, CONTROL_DEVICE still null).
        unsafe { IoDeleteDevice(device) };
        return Err(status);
    }
    LINK_CREATED.store(true, Ordering::Release);
    CONTROL_DEVICE.store(device, Ordering::Release);
    // SAFETY: `driver` is valid during DriverEntry; the dispatch table is
    // written before DriverEntry returns, which is when the I/O manager
    // starts delivering IRPs to this driver's devices.
    unsafe {
        let major = &mut (*driver).MajorFunction;
        major[IRP_MJ_CREATE as usize] = Some(dispatch);
        major[IRP_MJ_CLOSE as usize] = Some(dispatch);
        major[IRP_MJ_DEVICE_CONTROL as usize] = Some(dispatch);
    }
    klog!(
        Level::Info,
        ROUTINE,
        "{DEVICE_NAME} created (SYSTEM and Administrators only), link {DOS_DEVICE_NAME}"
    );
    Ok(())
}

/// Gives `device` a DACL that grants [`DEVICE_ACCESS_MASK`] to LocalSystem
/// and the Administrators group and nobody else (PASSIVE_LEVEL, before the
/// device is published). On failure returns the routine that failed and its
/// status; the device is then as `IoCreateDevice` made it, and the caller
/// deletes it.
///
/// `FltBuildDefaultSecurityDescriptor` (fltmgr.sys, IRQL <= APC_LEVEL)
/// builds, in paged pool, a descriptor whose DACL has one access-allowed ACE
/// with the given mask for each of the two ("only users with system or
/// administrator privileges have access to the object"); its pages name
/// `FLT_PORT_ALL_ACCESS` because it is made for communication ports, but on
/// a device that mask lacks `FILE_WRITE_DATA` (see
/// [`thinagent_km_sys::ntoskrnl::FILE_ALL_ACCESS`]). Only the DACL is
/// applied (`DACL_SECURITY_INFORMATION`); owner and group stay the device's.
fn restrict_access(device: *mut DEVICE_OBJECT) -> Result<(), (&'static str, NTSTATUS)> {
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // SAFETY: `sd` is a local out-pointer; on success it receives a
    // descriptor that is ours until FltFreeSecurityDescriptor below.
    let status = unsafe { FltBuildDefaultSecurityDescriptor(&mut sd, DEVICE_ACCESS_MASK) };
    if !nt_success(status) {
        return Err(("FltBuildDefaultSecurityDescriptor", status));
    }
    let result = set_dacl(device, sd);
    // SAFETY: the descriptor FltBuildDefaultSecurityDescriptor returned,
    // freed once; ZwSetSecurityObject copied what it needed into the
    // object's own descriptor.
    unsafe { FltFreeSecurityDescriptor(sd) };
    result
}

/// Opens a kernel handle to `device` with `WRITE_DAC`, sets the DACL of
/// `sd` on it, closes the handle (PASSIVE_LEVEL).
fn set_dacl(
    device: *mut DEVICE_OBJECT,
    sd: PSECURITY_DESCRIPTOR,
) -> Result<(), (&'static str, NTSTATUS)> {
    let mut handle: HANDLE = ptr::null_mut();
    // SAFETY: `device` is the device object IoCreateDevice just returned
    // (referenced by its creation until IoDeleteDevice). OBJ_KERNEL_HANDLE:
    // the handle is in the system handle table, out of reach of the process
    // DriverEntry runs in; no access state; no object type (null: the
    // pointer is known to be our device); KernelMode, so no access check
    // against the still-default descriptor; `handle` is a local.
    let status = unsafe {
        ObOpenObjectByPointer(
            device.cast_const().cast(),
            OBJ_KERNEL_HANDLE,
            ptr::null(),
            WRITE_DAC,
            0,
            KernelMode as i8,
            &mut handle,
        )
    };
    if !nt_success(status) {
        return Err(("ObOpenObjectByPointer", status));
    }
    // SAFETY: a kernel handle opened above with WRITE_DAC; `sd` is a valid
    // descriptor with a DACL (FltBuildDefaultSecurityDescriptor's).
    let status = unsafe { ZwSetSecurityObject(handle, DACL_SECURITY_INFORMATION, sd) };
    // SAFETY: the kernel handle opened above, closed once.
    let closed = unsafe { ZwClose(handle) };
    if !nt_success(status) {
        return Err(("ZwSetSecurityObject", status));
    }
    if !nt_success(closed) {
        return Err(("ZwClose", closed));
    }
    Ok(())
}

/// Deletes the link, waits for IOCTLs in progress, deletes the device.
/// PASSIVE_LEVEL (unload, and `DriverEntry` unwinding). Idempotent.
pub fn delete() {
    if LINK_CREATED.swap(false, Ordering::AcqRel) {
        let link = unicode_string(&DOS_DEVICE_NAME_UNITS);
        // SAFETY: the link was created by `create` and not yet deleted.
        let status = unsafe { IoDeleteSymbolicLink(&link) };
        if !nt_success(status) {
            klog_status!(
                Level::Warn,
                ROUTINE,
                status,
                "IoDeleteSymbolicLink {DOS_DEVICE_NAME} failed"
            );
        }
    }
    let device = CONTROL_DEVICE.swap(ptr::null_mut(), Ordering::AcqRel);
    if device.is_null() {
        return;
    }
    // SAFETY: initialised in `create`; waits (PASSIVE_LEVEL) until every
    // dispatch that acquired protection has released it, and makes later
    // acquisitions fail.
    unsafe { ExWaitForRundownProtectionRelease(RUNDOWN.0.get()) };
    // SAFETY: our device object, created in `create`; no IOCTL is running
    // any more. Handles still open keep the object (not our code) alive
    // until closed: IoDeleteDevice marks it for deletion.
    unsafe { IoDeleteDevice(device) };
}

/// `IoGetCurrentIrpStackLocation(Irp)` (`wdm.h` inline:
/// `Irp->Tail.Overlay.CurrentStackLocation`).
///
/// # Safety
///
/// `irp` must be a valid IRP owned by the caller's dispatch routine.
unsafe fn current_stack_location(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: per the contract; the union arm is the one the I/O manager
    // uses for an IRP being dispatched.
    unsafe {
        (*irp)
            .Tail
            .Overlay
            .Anonymous2
            .Anonymous
            .CurrentStackLocation
    }
}

/// Completes `irp` with `status` and `information` bytes
/// (`IoCompleteRequest(Irp, IO_NO_INCREMENT)`).
///
/// # Safety
///
/// `irp` must be valid and owned by the caller, who must not touch it after.
unsafe fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    // SAFETY: per the contract.
    unsafe {
        (*irp).IoStatus.Anonymous.Status = status;
        (*irp).IoStatus.Information = information;
        IofCompleteRequest(irp, IO_NO_INCREMENT as i8);
    }
    status
}

/// `DRIVER_DISPATCH` for `IRP_MJ_CREATE`, `IRP_MJ_CLOSE` and
/// `IRP_MJ_DEVICE_CONTROL`. PASSIVE_LEVEL, in the context of the thread
/// that sent the request (a top-level device, so never from a raised IRQL).
unsafe extern "system" fn dispatch(device: *const DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    let ours = CONTROL_DEVICE.load(Ordering::Acquire);
    // SAFETY: the I/O manager hands us a valid IRP for `device`; we complete
    // it exactly once on every path below.
    unsafe {
        let stack = current_stack_location(irp);
        if ours.is_null() || !ptr::eq(device, ours) {
            // A handle opened before `delete` began is still closed
            // normally; everything else is refused.
            let status = if u32::from((*stack).MajorFunction) == IRP_MJ_CLOSE {
                STATUS_SUCCESS
            } else {
                STATUS_INVALID_DEVICE_REQUEST
            };
            return complete(irp, status, 0);
        }
        match u32::from((*stack).MajorFunction) {
            IRP_MJ_CREATE | IRP_MJ_CLOSE => complete(irp, STATUS_SUCCESS, 0),
            IRP_MJ_DEVICE_CONTROL => {
                if !ExAcquireRundownProtection(RUNDOWN.0.get()) {
                    return complete(irp, STATUS_DEVICE_NOT_READY, 0);
                }
                let (status, information) = device_control(irp, stack);
                ExReleaseRundownProtection(RUNDOWN.0.get());
                complete(irp, status, information)
            }
            _ => complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0),
        }
    }
}

/// One `IRP_MJ_DEVICE_CONTROL` (METHOD_BUFFERED): validates with
/// [`ControlRequest::parse`], serves it, returns the status and the bytes
/// written to the system buffer. PASSIVE_LEVEL, under rundown protection.
///
/// # Safety
///
/// `irp` and `stack` are the dispatch routine's IRP and its current stack
/// location.
unsafe fn device_control(irp: *mut IRP, stack: *mut IO_STACK_LOCATION) -> (NTSTATUS, usize) {
    // SAFETY: for IRP_MJ_DEVICE_CONTROL the DeviceIoControl arm is valid.
    // Read with the header's layout: windows-sys's IO_STACK_LOCATION_0_16
    // lacks POINTER_ALIGNMENT and would read IoControlCode from the bytes
    // of InputBufferLength (thinagent_km_sys::io_params).
    let params = unsafe { *(&raw const (*stack).Parameters).cast::<IO_STACK_DEVICE_IO_CONTROL>() };
    // SAFETY: for METHOD_BUFFERED, SystemBuffer is the I/O manager's buffer
    // of max(InputBufferLength, OutputBufferLength) bytes (null if both
    // are 0), holding the caller's input.
    let system_buffer = unsafe { (*irp).AssociatedIrp.SystemBuffer }.cast::<u8>();
    let in_len = params.InputBufferLength as usize;
    let out_len = params.OutputBufferLength as usize;
    if system_buffer.is_null() && (in_len != 0 || out_len != 0) {
        return (
            control::ControlError::BadInputLength(in_len)
                .ntstatus()
                .to_i32(),
            0,
        );
    }
    // No request takes more than 4 bytes of input (set-debug-level); copy
    // it out before the same buffer is written as output. A longer input is
    // wrong for every request.
    let mut input = [0u8; 8];
    if in_len > input.len() {
        let e = control::ControlError::BadInputLength(in_len);
        klog!(Level::Warn, ROUTINE, "request refused: {e}");
        return (e.ntstatus().to_i32(), 0);
    }
    if in_len > 0 {
        // SAFETY: the system buffer holds `in_len` bytes of input.
        unsafe { ptr::copy_nonoverlapping(system_buffer, input.as_mut_ptr(), in_len) };
    }
    let request = match ControlRequest::parse(params.IoControlCode, &input[..in_len], out_len) {
        Ok(r) => r,
        Err(e) => {
            klog!(Level::Warn, ROUTINE, "request refused: {e}");
            return (e.ntstatus().to_i32(), 0);
        }
    };
    match request {
        ControlRequest::GetState => {
            let Some(agent) = agent::get() else {
                return (STATUS_DEVICE_NOT_READY, 0);
            };
            let bytes = snapshot(agent).to_bytes();
            // SAFETY: `parse` checked out_len ≥ AgentState::SIZE, and the
            // system buffer holds out_len bytes.
            unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), system_buffer, bytes.len()) };
            (STATUS_SUCCESS, bytes.len())
        }
        ControlRequest::SetDebugLevel(level) => {
            let previous = log::debug_level();
            log::set_debug_level(level);
            klog!(
                Level::Audit,
                ROUTINE,
                "debugLevel set to {level} (was {previous}) through {DOS_DEVICE_NAME}"
            );
            (STATUS_SUCCESS, 0)
        }
    }
}

/// The agent's counters as the control ABI reports them (any IRQL).
fn snapshot(agent: &Agent) -> AgentState {
    let s = &agent.stats;
    let r = Ordering::Relaxed;
    AgentState {
        connected: s.connected.load(r),
        provider_captured: s.provider_captured.load(r),
        capture_attempts: s.capture_attempts.load(r),
        last_capture_status: thinagent_guest::NtStatus(s.last_capture_status.load(r) as u32),
        sessions: s.sessions.load(r),
        last_session_status: thinagent_guest::NtStatus(s.last_session_status.load(r) as u32),
        queries: s.queries.load(r),
        denials: s.denials.load(r),
        timeouts: s.timeouts.load(r),
        fail_mode_decisions: s.fail_mode_decisions.load(r),
        cache_hits: s.cache_hits.load(r),
        skipped: s.skipped.load(r),
        read_requests: s.read_requests.load(r),
        rescans: s.rescans.load(r),
        debug_level: log::debug_level(),
        fail_mode: agent.live.fail_mode(),
    }
}
