//! The vsock layer (`VSockLayer_Init` in VMware's logs): capture the
//! vSockets provider, connect to the host scanner, run the session, and
//! reconnect — on a system thread, so `DriverEntry` never waits for vsock.
//!
//! **Capture (VMCI).** The seed's Listing 2 done right:
//! `IoGetDeviceObjectPointer(\Device\vmci, FILE_READ_DATA)`, then IOCTL
//! `0x810320C0` with the 0x5C-byte buffer (first DWORD 1) on a
//! driver-allocated IRP with the file object in the next stack location
//! ([`super::irp::device_ioctl_bounded`]), and the file object
//! dereferenced on every failed path (the seed leaked it). Each attempt goes
//! to [`thinagent_guest::Connector`] as an [`AttemptReport`] (status, start
//! and end time, whether we timed it out), which says retry after a delay,
//! done, or give up, and gives the attempt's log line; the delay is a wait
//! on the stop and wake events, so unload and the boot re-initialisation
//! callback cut it short. A capture IOCTL the lower driver leaves pending
//! is cancelled after 5 s ([`device_ioctl_bounded`]) and reported as timed
//! out, which the connector counts as `STATUS_IO_TIMEOUT`, transient: the
//! loop (and the boot re-initialisation retry) goes on, and the 5 s count
//! as time waited. Only a request cancelled because unload began keeps
//! `STATUS_CANCELLED`. On
//! success the file object stays referenced (it pins `vsock.sys`, whose
//! functions we are about to call) until the link thread ends.
//!
//! **Where the loop runs** (`captureMode`): `Deferred` (default) runs the
//! whole bounded loop on the link thread, first attempt at once (not one
//! IOCTL in `DriverEntry`: a pending capture IOCTL would hold `DriverEntry`,
//! and every boot driver after it, for the IOCTL's bounded wait), and
//! `IoRegisterBootDriverReinitialization` wakes it for an
//! immediate retry "after all devices have been enumerated and started"
//! (its documentation; that is when a deferred `vmci.sys` start has
//! happened). It is registered only once the thread runs, since the routine
//! may be registered only by a `DriverEntry` that succeeds; when the driver
//! is not boot start the documentation does not say when it runs, and it
//! only sets an event. `Blocking` runs the whole loop inside
//! [`start`], as the incident's agent did: for diagnosis only (see
//! docs/windows.md, "The vsock layer").
//!
//! **Transport** (`vsockTransport`): `Vmci` as above. `Virtio` waits,
//! event-driven, for virtio-win's viosock device interface
//! (`IoRegisterPlugPlayNotification`, `EventCategoryDeviceInterfaceChange`,
//! `PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES`,
//! `GUID_DEVINTERFACE_VIOSOCK`), as VioWsk's `VioWskCaptureProviderNPI`
//! does. viosock.sys exports no WSK provider (VioWsk is a static library its
//! clients link in, implementing WSK over viosock's device interface), so
//! the link thread opens the device and speaks that interface itself
//! ([`super::viosock_socket`]): a socket file object per connection,
//! connect/shutdown IOCTLs, read/write IRPs. `Auto` runs the VMCI loop and
//! the virtio wait together: the first to produce a device wins, and once
//! the VMCI loop gives up without `\Device\vmci` ever opening, the virtio
//! wait continues alone.
//!
//! **After capture**: the reply is logged in hex at DEBUG, the address
//! family read (IOCTL 0x81032068, same IRP pattern), and the reply read as
//! a `WSK_PROVIDER_NPI` (hypothesis (a) of docs/km-sys.md): a `{Client,
//! Dispatch}` pair of kernel pointers whose dispatch is readable, has WSK
//! major version 1 and functions inside `vsock.sys`'s image. Exactly one
//! such pair must exist, or nothing is called and the driver keeps
//! filtering under the fail mode.
//!
//! **Link loop** (the same for both transports): connect
//! ([`WskConnection::connect`] through the captured provider, or
//! [`ViosockConnection::connect`] to `{hostCid, hostPort}` on the viosock
//! device), run [`super::session_worker::run`], shut the socket, wait the
//! [`thinagent_guest::Reconnect`] backoff (interruptible by unload), until
//! unload.
//!
//! **Unload safety.** Every IOCTL to `\Device\vmci` waits at most 5 s (or
//! until unload), then is cancelled and waited for ([`device_ioctl`]); a
//! capture attempt cut short that way counts as timed out (above).
//! `IoRegisterBootDriverReinitialization` has no unregister: until its
//! routine has run, [`unload_is_safe`] is `false`.
//!
//! Routines (first use is named here; all PASSIVE_LEVEL unless noted):
//! IoGetDeviceObjectPointer
//! (learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-iogetdeviceobjectpointer),
//! ObfDereferenceObject (…/wdm/nf-wdm-obdereferenceobject),
//! IoRegisterBootDriverReinitialization
//! (…/ntddk/nf-ntddk-ioregisterbootdriverreinitialization),
//! IoRegisterPlugPlayNotification (…/wdm/nf-wdm-ioregisterplugplaynotification),
//! IoUnregisterPlugPlayNotificationEx
//! (…/wdm/nf-wdm-iounregisterplugplaynotificationex),
//! KeWaitForMultipleObjects (…/wdm/nf-wdm-kewaitformultipleobjects), and
//! through [`super::irp`]: IoBuildDeviceIoControlRequest, IofCallDriver,
//! PsCreateSystemThread, ObReferenceObjectByHandle, ZwClose.

use alloc::boxed::Box;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use core::time::Duration;

use thinagent_guest::log::routine;
use thinagent_guest::params::{CaptureMode, VsockTransport};
use thinagent_guest::{
    AttemptReport, Connector, ConnectorAction, Level, NtStatus, Reconnect, ReconnectConfig,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::{
    DEVICE_OBJECT, DRIVER_OBJECT, FILE_OBJECT,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    DEVICE_INTERFACE_CHANGE_NOTIFICATION, EventCategoryDeviceInterfaceChange,
    IoGetDeviceObjectPointer, IoRegisterBootDriverReinitialization, IoRegisterPlugPlayNotification,
    IoUnregisterPlugPlayNotificationEx, ObfDereferenceObject,
    PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{NTSTATUS, UNICODE_STRING};
use thinagent_km_sys::hexdump::hex_rows;
use thinagent_km_sys::ioctl::FILE_READ_DATA;
use thinagent_km_sys::nt::GUID;
use thinagent_km_sys::ntoskrnl::{
    GUID_DEVICE_INTERFACE_ARRIVAL, GUID_DEVINTERFACE_VIOSOCK, STATUS_NOT_SUPPORTED,
};
use thinagent_km_sys::vmci::{
    IOCTL_VMCI_SOCKETS_CAPTURE_PROVIDER, IOCTL_VMCI_SOCKETS_GET_AF_VALUE, ImageRange,
    PROVIDER_DISPATCH_BYTES, VMCI_SOCKETS_DEVICE, VMCI_SOCKETS_DEVICE_W, VmciCaptureBuffer,
    address_family_from_ioctl, check_provider_dispatch, npi_candidates,
};
use thinagent_km_sys::wsk::WSK_PROVIDER_DISPATCH;

use super::agent::Agent;
use super::irp::{SystemThread, device_ioctl, device_ioctl_bounded};
use super::kernel::{
    EventKind, KernelEvent, STATUS_SUCCESS, SpinLock, Utf16, now, nt_success, unicode_string,
};
use super::transport::Transport;
use super::viosock_socket::{ViosockConnection, ViosockDevice};
use super::wsk_socket::{WskConnection, WskProvider, cancel_pending_receive, readable};
use crate::{klog, klog_status};

/// `\Device\vmci` as a `'static` UTF-16 buffer for its `UNICODE_STRING`.
static VMCI_DEVICE_NAME: [u16; 12] = VMCI_SOCKETS_DEVICE_W;
/// The interface class the virtio wait registers for (must outlive the
/// registration).
static VIOSOCK_INTERFACE: GUID = GUID_DEVINTERFACE_VIOSOCK;

/// Set by [`stop`]: every wait of the link thread ends (notification).
static STOP: KernelEvent = KernelEvent::uninit();
/// Set by the boot re-init callback and the PnP arrival callback: retry now
/// (synchronization).
static WAKE: KernelEvent = KernelEvent::uninit();
/// The viosock interface arrived (the link name is in [`VIRTIO_LINK`]).
static VIRTIO_ARRIVED: AtomicBool = AtomicBool::new(false);
/// The arrived viosock interface's symbolic link name.
static VIRTIO_LINK: SpinLock<LinkName> = SpinLock::new(LinkName::EMPTY);
/// The link thread, joined by [`stop`].
static THREAD: SpinLock<Option<SystemThread>> = SpinLock::new(None);
/// `IoRegisterPlugPlayNotification`'s entry, unregistered by [`stop`].
static PNP_ENTRY: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
/// [`start`] ran and [`stop`] has not.
static STARTED: AtomicBool = AtomicBool::new(false);
/// `IoRegisterBootDriverReinitialization` registered [`boot_reinit`] and it
/// has not run yet. The registration cannot be withdrawn, so while this is
/// set the driver image must stay loaded ([`unload_is_safe`]).
static REINIT_PENDING: AtomicBool = AtomicBool::new(false);

/// Whether this load is a boot-start one (the service's `Start` is 0), set
/// by `DriverEntry` before [`start`] through [`set_boot_start`]. Only then is
/// the boot re-initialisation routine registered.
static BOOT_START: AtomicBool = AtomicBool::new(false);

/// Tells the vsock layer whether the driver was loaded as a boot-start
/// driver (any IRQL; call before [`start`]). A routine registered with
/// `IoRegisterBootDriverReinitialization` by a driver started later (by
/// `sc start` or `fltmc load`) may never run, and until it runs the driver
/// refuses to unload ([`unload_is_safe`]), so it is registered only for a
/// boot-start load.
pub fn set_boot_start(boot_start: bool) {
    BOOT_START.store(boot_start, Ordering::Release);
}

/// Longest symbolic link name kept (UTF-16 units); longer ones are ignored
/// (viosock's are about 90).
const LINK_NAME_MAX: usize = 256;

/// A copied symbolic link name.
#[derive(Clone, Copy)]
struct LinkName {
    len: usize,
    units: [u16; LINK_NAME_MAX],
}

impl LinkName {
    const EMPTY: LinkName = LinkName {
        len: 0,
        units: [0; LINK_NAME_MAX],
    };

    /// The name's units (any IRQL).
    fn as_units(&self) -> &[u16] {
        &self.units[..self.len]
    }
}

/// A successful capture: the referenced file object (and the device it
/// resolved to) plus the reply. Dropping it releases the reference.
struct VmciCapture {
    file: *mut FILE_OBJECT,
    device: *mut DEVICE_OBJECT,
    reply: VmciCaptureBuffer,
    written: usize,
    /// The capture IOCTL's final status (a success code).
    status: NTSTATUS,
}

// SAFETY: a referenced file object may be used and released from any thread.
unsafe impl Send for VmciCapture {}

impl Drop for VmciCapture {
    fn drop(&mut self) {
        // SAFETY: the reference IoGetDeviceObjectPointer gave us, released
        // once (ObDereferenceObject's function form).
        let _ = unsafe { ObfDereferenceObject(self.file.cast_const().cast()) };
    }
}

/// What the capture state carries from [`start`] to the loop on the link
/// thread.
struct CaptureState {
    connector: Connector,
    vmci: bool,
    virtio: bool,
    vmci_device_seen: bool,
    /// Delay the connector asked for after the last attempt, not waited yet.
    next_delay: Option<Duration>,
}

/// Everything the link thread owns.
struct LinkContext {
    agent: &'static Agent,
    state: CaptureState,
    /// Set when the capture already finished in [`start`] (the blocking
    /// loop ran): `Some(Some(l))` a transport is
    /// there, `Some(None)` gave up.
    done: Option<Option<Found>>,
}

/// What the capture loop found to connect through.
enum Found {
    /// The vSockets provider was captured from `\Device\vmci`.
    Vmci(VmciCapture),
    /// The viosock device interface arrived (its link is in [`VIRTIO_LINK`]).
    Virtio,
}

enum Attempt {
    Captured(VmciCapture),
    Retry(Duration),
    GaveUp,
}

/// Why one capture attempt failed.
struct CaptureFailed {
    /// The open's status, or the capture IOCTL's final status.
    status: NTSTATUS,
    /// `\Device\vmci` opened (the IOCTL was sent).
    opened: bool,
    /// The IOCTL did not complete within [`device_ioctl_bounded`]'s bound
    /// (or before unload) and was cancelled.
    cancelled: bool,
}

/// One open + capture IOCTL (PASSIVE_LEVEL). Returns the capture, or why
/// it failed.
fn vmci_capture_once() -> Result<VmciCapture, CaptureFailed> {
    let name: UNICODE_STRING = unicode_string(&VMCI_DEVICE_NAME);
    let mut file: *mut FILE_OBJECT = core::ptr::null_mut();
    let mut device: *mut DEVICE_OBJECT = core::ptr::null_mut();
    // SAFETY: a static name; out-pointers to locals. FILE_READ_DATA is the
    // access the seed's listing asks for.
    let status = unsafe { IoGetDeviceObjectPointer(&name, FILE_READ_DATA, &mut file, &mut device) };
    if !nt_success(status) {
        return Err(CaptureFailed {
            status,
            opened: false,
            cancelled: false,
        });
    }
    let mut cap = VmciCapture {
        file,
        device,
        reply: VmciCaptureBuffer::request(),
        written: 0,
        status: STATUS_SUCCESS,
    };
    let len = VmciCaptureBuffer::len_bytes();
    // SAFETY: file and device referenced by `cap` for the call; the reply
    // buffer is 0x5C bytes, in and out.
    let r = unsafe {
        device_ioctl_bounded(
            cap.device,
            cap.file,
            IOCTL_VMCI_SOCKETS_CAPTURE_PROVIDER,
            cap.reply.as_mut_ptr(),
            len,
            len,
            Some(&STOP),
        )
    };
    if !nt_success(r.status) {
        // `cap` drops here: the file object is released on this path too.
        return Err(CaptureFailed {
            status: r.status,
            opened: true,
            cancelled: r.cancelled,
        });
    }
    cap.written = r.info.min(len as usize);
    cap.status = r.status;
    Ok(cap)
}

/// One capture attempt, fed to the connector and logged in the seed's shape
/// (PASSIVE_LEVEL).
fn attempt(agent: &Agent, state: &mut CaptureState) -> Attempt {
    let started = now();
    let result = vmci_capture_once();
    let ended = now();
    let (status, cancelled) = match &result {
        Ok(cap) => (cap.status, false),
        Err(f) => {
            state.vmci_device_seen |= f.opened;
            (f.status, f.cancelled)
        }
    };
    state.vmci_device_seen |= result.is_ok();
    // A request cancelled because unload began is not a timeout: it keeps
    // its own status (STATUS_CANCELLED, fatal) and the loop ends anyway.
    let report = AttemptReport {
        status: NtStatus::from_i32(status),
        started,
        ended,
        timed_out: cancelled && !agent.is_stopping(),
    };
    agent.stats.capture_attempts.fetch_add(1, Ordering::Relaxed);
    agent
        .stats
        .last_capture_status
        .store(report.effective_status().to_i32(), Ordering::Relaxed);
    let action = state.connector.on_report(report);
    // The guest core's line for this attempt (Listing 1's shape).
    state
        .connector
        .log_line(&report, action)
        .with_record(super::log::emit);
    match action {
        ConnectorAction::Connected { .. } => {
            agent.stats.provider_captured.store(true, Ordering::Relaxed);
            match result {
                Ok(cap) => Attempt::Captured(cap),
                // The connector only says Connected for a success status.
                Err(_) => Attempt::GaveUp,
            }
        }
        ConnectorAction::RetryAfter(d) => Attempt::Retry(d),
        ConnectorAction::GiveUp { .. } => Attempt::GaveUp,
    }
}

/// Waits until unload, a wake-up, or `timeout` (`None` = no timeout).
/// Returns `true` if unload began. PASSIVE_LEVEL.
fn wait_stop_or_wake(agent: &Agent, timeout: Option<Duration>) -> bool {
    // SAFETY: two initialised static events.
    let _ = unsafe { super::kernel::wait_any(&[STOP.as_object(), WAKE.as_object()], timeout) };
    agent.is_stopping() || !STARTED.load(Ordering::Acquire)
}

/// How [`capture_loop`] ended.
enum LoopEnd {
    /// A transport is there.
    Captured(Found),
    /// Gave up, or unload began: no connection.
    Ended,
    /// Only the unbounded virtio wait is left, and the caller may not wait
    /// without bound (`captureMode` Blocking inside `DriverEntry`): the link
    /// thread continues it.
    Deferred,
}

/// The bounded VMCI loop and/or the virtio wait, until a capture, give-up
/// or unload. With `unbounded_ok` false it returns [`LoopEnd::Deferred`]
/// instead of entering a wait without a timeout. PASSIVE_LEVEL.
fn capture_loop(agent: &Agent, state: &mut CaptureState, unbounded_ok: bool) -> LoopEnd {
    loop {
        if agent.is_stopping() {
            return LoopEnd::Ended;
        }
        if let Some(d) = state.next_delay.take()
            && wait_stop_or_wake(agent, Some(d))
        {
            return LoopEnd::Ended;
        }
        if state.virtio && VIRTIO_ARRIVED.load(Ordering::Acquire) {
            return LoopEnd::Captured(Found::Virtio);
        }
        if state.vmci {
            match attempt(agent, state) {
                Attempt::Captured(cap) => return LoopEnd::Captured(Found::Vmci(cap)),
                Attempt::Retry(d) => state.next_delay = Some(d),
                Attempt::GaveUp => {
                    if state.virtio && !state.vmci_device_seen {
                        klog!(
                            Level::Info,
                            routine::VSOCK_CAPTURE,
                            "{} never opened; waiting for the virtio socket device interface",
                            VMCI_SOCKETS_DEVICE
                        );
                        state.vmci = false;
                    } else {
                        return LoopEnd::Ended;
                    }
                }
            }
        } else if !state.virtio {
            return LoopEnd::Ended;
        } else if !unbounded_ok {
            return LoopEnd::Deferred;
        } else if wait_stop_or_wake(agent, None) {
            return LoopEnd::Ended;
        }
    }
}

/// The viosock interface is there: open the device and run the link loop
/// over viosock sockets until unload (PASSIVE_LEVEL, link thread).
fn virtio_link(agent: &'static Agent) {
    let link = VIRTIO_LINK.with(|l| *l);
    let units = link.as_units();
    let dev = match ViosockDevice::open(units, &STOP) {
        Ok(dev) => {
            klog_status!(
                Level::Info,
                routine::VSOCK_CAPTURE,
                STATUS_SUCCESS,
                "virtio socket device open: {} (guest CID {})",
                Utf16(units),
                dev.guest_cid.map_or(-1, i64::from)
            );
            agent.stats.provider_captured.store(true, Ordering::Relaxed);
            agent
                .stats
                .last_capture_status
                .store(STATUS_SUCCESS, Ordering::Relaxed);
            dev
        }
        Err(status) => {
            agent
                .stats
                .last_capture_status
                .store(status, Ordering::Relaxed);
            klog_status!(
                Level::Error,
                routine::VSOCK_CAPTURE,
                status,
                "virtio socket device interface {} arrived but could not be opened",
                Utf16(units)
            );
            return;
        }
    };
    link_loop(agent, "virtio", |stop| {
        ViosockConnection::connect(&dev, agent.params.host_cid, agent.params.host_port, stop)
    });
    // `dev` drops after the last socket: the device stays referenced while
    // any request on it may run.
    drop(dev);
}

/// Logs the reply in hex (DEBUG), one line per 16 bytes (any IRQL <= DISPATCH).
fn log_reply(cap: &VmciCapture) {
    klog!(
        Level::Debug,
        routine::VSOCK_CAPTURE,
        "capture reply: sent {:#x} bytes, IoStatus.Information {:#x}, unchanged request: {}",
        VmciCaptureBuffer::len_bytes(),
        cap.written,
        cap.reply.is_unchanged_request()
    );
    if super::log::enabled(Level::Debug) {
        let bytes = cap.reply.to_le_bytes();
        for row in hex_rows(&bytes) {
            klog!(
                Level::Debug,
                routine::VSOCK_CAPTURE,
                "capture reply {}",
                row
            );
        }
    }
}

/// IOCTL 0x81032068 (get the vSockets address family) on the captured
/// device, same IRP pattern as the capture (PASSIVE_LEVEL).
fn address_family(cap: &VmciCapture) -> Result<u16, NTSTATUS> {
    let mut value: u32 = 0;
    // SAFETY: file/device referenced by `cap`; a 4-byte buffer in and out,
    // as vmci_sockets.h passes it.
    let (status, written) = unsafe {
        device_ioctl(
            cap.device,
            cap.file,
            IOCTL_VMCI_SOCKETS_GET_AF_VALUE,
            (&raw mut value).cast(),
            4,
            4,
            Some(&STOP),
        )
    };
    klog_status!(
        Level::Debug,
        routine::VSOCK_CAPTURE,
        status,
        "get address family: {} (IoStatus.Information {})",
        value as i32,
        written
    );
    if !nt_success(status) {
        return Err(status);
    }
    address_family_from_ioctl(value as i32).ok_or(STATUS_NOT_SUPPORTED)
}

/// Reads the provider out of the capture (see the module docs), or refuses
/// (PASSIVE_LEVEL).
fn vmci_provider(cap: &VmciCapture) -> Result<WskProvider, NTSTATUS> {
    log_reply(cap);
    // SAFETY: the file object is referenced; DeviceObject is the device the
    // name resolved to (\Device\vmci) and its DriverObject the owner
    // (\Driver\vsock), both kept alive by that reference.
    let image = unsafe {
        let dev = (*cap.file).DeviceObject;
        let drv = if dev.is_null() {
            core::ptr::null_mut()
        } else {
            (*dev).DriverObject
        };
        if drv.is_null() {
            return Err(STATUS_NOT_SUPPORTED);
        }
        ImageRange {
            start: (*drv).DriverStart as u64,
            len: u64::from((*drv).DriverSize),
        }
    };
    klog!(
        Level::Debug,
        routine::VSOCK_CAPTURE,
        "provider driver image {:#x}, {:#x} bytes",
        image.start,
        image.len
    );
    let family = address_family(cap)?;
    let bytes = cap.reply.to_le_bytes();
    let mut accepted: Option<(u64, [u8; PROVIDER_DISPATCH_BYTES])> = None;
    let mut valid = 0u32;
    for c in npi_candidates(&bytes, cap.written) {
        let table = c.dispatch as usize as *const c_void;
        if !image.contains_range(c.dispatch, PROVIDER_DISPATCH_BYTES as u64) {
            klog!(
                Level::Debug,
                routine::VSOCK_CAPTURE,
                "candidate at +{:#x}: dispatch {:#x} is outside the provider image",
                c.offset,
                c.dispatch
            );
            continue;
        }
        if !readable(table, PROVIDER_DISPATCH_BYTES) {
            klog!(
                Level::Debug,
                routine::VSOCK_CAPTURE,
                "candidate at +{:#x}: dispatch {:#x} not readable",
                c.offset,
                c.dispatch
            );
            continue;
        }
        let mut raw = [0u8; PROVIDER_DISPATCH_BYTES];
        // SAFETY: first and last byte are mapped (a 56-byte table spans at
        // most two pages), so the copy cannot fault.
        unsafe { core::ptr::copy_nonoverlapping(table.cast::<u8>(), raw.as_mut_ptr(), raw.len()) };
        match check_provider_dispatch(&raw, image) {
            Ok(()) => {
                valid += 1;
                accepted = Some((c.client, raw));
                klog!(
                    Level::Debug,
                    routine::VSOCK_CAPTURE,
                    "candidate at +{:#x}: client {:#x}, dispatch {:#x} accepted",
                    c.offset,
                    c.client,
                    c.dispatch
                );
            }
            Err(p) => klog!(
                Level::Debug,
                routine::VSOCK_CAPTURE,
                "candidate at +{:#x}: dispatch {:#x} refused: {} ({:?})",
                c.offset,
                c.dispatch,
                p.describe(),
                p
            ),
        }
    }
    let (client, raw) = match (valid, accepted) {
        (1, Some(a)) => a,
        _ => {
            klog_status!(
                Level::Error,
                routine::VSOCK_CAPTURE,
                STATUS_NOT_SUPPORTED,
                "capture reply not recognised as a WSK provider NPI ({} valid candidates); nothing called, see docs/km-sys.md",
                valid
            );
            return Err(STATUS_NOT_SUPPORTED);
        }
    };
    // SAFETY: all-NULL is a valid WSK_PROVIDER_DISPATCH; the checked
    // 56-byte copy then fills it (same x64 layout, asserted in km-sys).
    let mut dispatch: WSK_PROVIDER_DISPATCH = unsafe { core::mem::zeroed() };
    // SAFETY: `raw` is exactly size_of::<WSK_PROVIDER_DISPATCH>() bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(
            raw.as_ptr(),
            (&raw mut dispatch).cast::<u8>(),
            PROVIDER_DISPATCH_BYTES,
        );
    }
    Ok(WskProvider {
        client: client as usize as *mut c_void,
        dispatch,
        image,
        family,
    })
}

/// Connect, run a session, close, back off — until unload (PASSIVE_LEVEL,
/// link thread). `connect` makes one connection (cut short by the stop
/// event); `kind` names the transport in the log.
fn link_loop<T: Transport>(
    agent: &'static Agent,
    kind: &str,
    mut connect: impl FnMut(&KernelEvent) -> Result<T, NTSTATUS>,
) {
    let cid = agent.params.host_cid;
    let port = agent.params.host_port;
    let mut reconnect = Reconnect::new(ReconnectConfig::default());
    while !agent.is_stopping() {
        klog!(
            Level::Debug,
            routine::VSOCK_CONNECT,
            "connecting to CID {} port {} ({})",
            cid,
            port,
            kind
        );
        match connect(&STOP) {
            Ok(mut conn) => {
                reconnect.on_connected(now());
                klog_status!(
                    Level::Info,
                    routine::VSOCK_CONNECT,
                    STATUS_SUCCESS,
                    "connected to CID {} port {} ({})",
                    cid,
                    port,
                    kind
                );
                let status = super::session_worker::run(agent, &mut conn);
                agent.stats.connected.store(false, Ordering::Relaxed);
                agent
                    .stats
                    .last_session_status
                    .store(status, Ordering::Relaxed);
                conn.shutdown();
                drop(conn);
                klog_status!(Level::Warn, routine::SESSION, status, "session ended");
            }
            Err(status) => {
                agent
                    .stats
                    .last_session_status
                    .store(status, Ordering::Relaxed);
                klog_status!(
                    Level::Warn,
                    routine::VSOCK_CONNECT,
                    status,
                    "connect to CID {} port {} failed ({})",
                    cid,
                    port,
                    kind
                );
                if status == STATUS_NOT_SUPPORTED {
                    // The transport refused the socket itself (a WSK socket
                    // failed the checks, or viosock does not support it);
                    // another connect would fail (and maybe leak) the same way.
                    return;
                }
            }
        }
        if agent.is_stopping() {
            break;
        }
        let delay = reconnect.on_closed(now());
        klog!(
            Level::Debug,
            routine::VSOCK_CONNECT,
            "reconnecting in {} ms",
            delay.as_millis()
        );
        if STOP.wait(Some(delay)) == STATUS_SUCCESS {
            break;
        }
    }
}

/// Logs at WARN, unless unload is under way, that the link thread ends
/// without a host connection (PASSIVE_LEVEL, link thread).
fn warn_no_host(agent: &Agent, routine: &str) {
    if !agent.is_stopping() {
        klog!(
            Level::Warn,
            routine,
            "no host connection; opens are decided by the fail mode ({:?})",
            agent.live.fail_mode()
        );
    }
}

/// The link thread's body: finish the capture, read the provider, run the
/// link loop; release everything (PASSIVE_LEVEL, link thread).
fn run_link(mut ctx: LinkContext) {
    let agent = ctx.agent;
    let found = match ctx.done.take() {
        Some(done) => done,
        None => match capture_loop(agent, &mut ctx.state, true) {
            LoopEnd::Captured(found) => Some(found),
            LoopEnd::Ended | LoopEnd::Deferred => None,
        },
    };
    let cap = match found {
        Some(Found::Vmci(cap)) => Some(cap),
        Some(Found::Virtio) => {
            virtio_link(agent);
            warn_no_host(agent, routine::VSOCK_CONNECT);
            return;
        }
        None => None,
    };
    let Some(cap) = cap else {
        warn_no_host(agent, routine::VSOCK_CAPTURE);
        return;
    };
    match vmci_provider(&cap) {
        Ok(provider) => {
            link_loop(agent, "vmci", |stop| {
                WskConnection::connect(
                    &provider,
                    agent.params.host_cid,
                    agent.params.host_port,
                    stop,
                )
            });
            warn_no_host(agent, routine::VSOCK_CONNECT);
        }
        Err(status) => {
            agent
                .stats
                .last_session_status
                .store(status, Ordering::Relaxed);
            klog_status!(
                Level::Warn,
                routine::VSOCK_CAPTURE,
                status,
                "no host connection; opens are decided by the fail mode ({:?})",
                agent.live.fail_mode()
            );
        }
    }
    // `cap` drops after the provider's last use: vsock.sys stays pinned
    // while its functions may run.
    drop(cap);
}

/// `KSTART_ROUTINE` of the link thread (PASSIVE_LEVEL, system process).
unsafe extern "system" fn link_thread(context: *mut c_void) {
    // SAFETY: `start` passed a Box<LinkContext> it gave up ownership of.
    let ctx = unsafe { Box::from_raw(context.cast::<LinkContext>()) };
    run_link(*ctx);
}

/// `DRIVER_REINITIALIZE` for `IoRegisterBootDriverReinitialization`
/// (PASSIVE_LEVEL, after every boot driver is initialised): retry now.
unsafe extern "system" fn boot_reinit(
    _driver: *const DRIVER_OBJECT,
    _context: *const c_void,
    count: u32,
) {
    let captured =
        super::agent::get().is_some_and(|a| a.stats.provider_captured.load(Ordering::Relaxed));
    klog!(
        Level::Info,
        routine::VSOCK_CAPTURE,
        "boot drivers initialised (call {}): {}",
        count,
        if captured {
            "provider already captured"
        } else {
            "retrying the capture now"
        }
    );
    WAKE.set();
    // Last: from here on the routine only returns, and the I/O manager
    // holds no further reference to it.
    REINIT_PENDING.store(false, Ordering::Release);
}

/// Whether the driver image may be unloaded as far as the vsock layer is
/// concerned (any IRQL): `false` while the boot re-initialisation routine is
/// registered and has not run, because `IoRegisterBootDriverReinitialization`
/// has no unregister and the I/O manager would later call into the unloaded
/// image. `filter_callbacks`' `FilterUnloadCallback` returns
/// `STATUS_FLT_DO_NOT_DETACH` for a non-mandatory unload while this is
/// `false`; a mandatory unload cannot be refused and keeps that risk (see
/// docs/windows.md, "The vsock layer").
#[must_use]
pub fn unload_is_safe() -> bool {
    !REINIT_PENDING.load(Ordering::Acquire)
}

/// `DRIVER_NOTIFICATION_CALLBACK_ROUTINE` for the viosock interface
/// (PASSIVE_LEVEL): on arrival keep the link name and wake the thread.
unsafe extern "system" fn interface_change(
    notification: *const c_void,
    _context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: for EventCategoryDeviceInterfaceChange the PnP manager passes
    // a DEVICE_INTERFACE_CHANGE_NOTIFICATION.
    let n = unsafe { &*notification.cast::<DEVICE_INTERFACE_CHANGE_NOTIFICATION>() };
    let a = GUID_DEVICE_INTERFACE_ARRIVAL;
    let arrival = n.Event.data1 == a.Data1
        && n.Event.data2 == a.Data2
        && n.Event.data3 == a.Data3
        && n.Event.data4 == a.Data4;
    if !arrival || n.SymbolicLinkName.is_null() || VIRTIO_ARRIVED.load(Ordering::Acquire) {
        return STATUS_SUCCESS;
    }
    // Copy at PASSIVE_LEVEL first (the name may be paged), then publish.
    let mut copy = LinkName::EMPTY;
    // SAFETY: the PnP manager's UNICODE_STRING is valid during the callback.
    let units = unsafe { super::kernel::unicode_units(&*n.SymbolicLinkName) };
    if units.len() > LINK_NAME_MAX {
        return STATUS_SUCCESS;
    }
    copy.units[..units.len()].copy_from_slice(units);
    copy.len = units.len();
    VIRTIO_LINK.with(|l| *l = copy);
    VIRTIO_ARRIVED.store(true, Ordering::Release);
    WAKE.set();
    STATUS_SUCCESS
}

/// Starts the vsock layer (PASSIVE_LEVEL, `DriverEntry`, after filtering
/// started). Never waits for vsock unless `captureMode` is `Blocking`.
/// Returns `STATUS_SUCCESS`, or the status of `PsCreateSystemThread` when
/// the link thread could not start: `DriverEntry` should log that and keep
/// filtering under the fail mode, not fail.
#[allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "the cross-module contract fixes this safe signature; `driver` is \
              only handed to the I/O manager, which requires our own driver object, \
              and DriverEntry is the only caller"
)]
pub fn start(agent: &'static Agent, driver: *mut DRIVER_OBJECT) -> NTSTATUS {
    if STARTED.swap(true, Ordering::AcqRel) {
        return STATUS_SUCCESS;
    }
    STOP.init(EventKind::Notification, false);
    WAKE.init(EventKind::Synchronization, false);
    VIRTIO_LINK.init();
    super::wsk_socket::init();
    THREAD.init();
    VIRTIO_ARRIVED.store(false, Ordering::Release);
    let transport = agent.params.vsock_transport;
    let mut state = CaptureState {
        connector: Connector::new(agent.params.connector_config()),
        vmci: transport != VsockTransport::Virtio,
        virtio: transport != VsockTransport::Vmci,
        vmci_device_seen: false,
        next_delay: None,
    };
    klog!(
        Level::Info,
        routine::VSOCK_CAPTURE,
        "vsock layer starting: transport {:?}, capture mode {:?}, host CID {} port {}",
        transport,
        agent.params.capture_mode,
        agent.params.host_cid,
        agent.params.host_port
    );
    if state.virtio {
        let mut entry: *mut c_void = core::ptr::null_mut();
        // SAFETY: static GUID and callback; our driver object (the PnP
        // manager references it while registered); out-pointer to a local.
        let status = unsafe {
            IoRegisterPlugPlayNotification(
                EventCategoryDeviceInterfaceChange,
                PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES,
                (&raw const VIOSOCK_INTERFACE).cast(),
                driver,
                Some(interface_change),
                core::ptr::null_mut(),
                &mut entry,
            )
        };
        if nt_success(status) {
            PNP_ENTRY.store(entry, Ordering::Release);
        } else {
            klog_status!(
                Level::Error,
                routine::VSOCK_CAPTURE,
                status,
                "IoRegisterPlugPlayNotification for the viosock interface failed"
            );
            state.virtio = false;
        }
    }
    let mut done = None;
    let mut want_reinit = false;
    match agent.params.capture_mode {
        CaptureMode::Deferred => {
            // No attempt here: even one capture IOCTL can hold DriverEntry
            // (and every boot driver after this one) for the IOCTL's whole
            // bounded wait when vsock.sys leaves it pending. The link
            // thread makes the first attempt at once. For a boot-start load
            // the re-initialisation routine is registered up front: it only
            // wakes the loop, and is harmless once the capture is done.
            want_reinit = state.vmci && BOOT_START.load(Ordering::Acquire);
        }
        CaptureMode::Blocking => {
            klog!(
                Level::Warn,
                routine::VSOCK_CAPTURE,
                "captureMode Blocking: the capture loop runs inside DriverEntry (diagnosis only)"
            );
            done = match capture_loop(agent, &mut state, false) {
                LoopEnd::Captured(found) => Some(Some(found)),
                LoopEnd::Ended => Some(None),
                LoopEnd::Deferred => None,
            };
        }
    }
    let ctx = Box::into_raw(Box::new(LinkContext { agent, state, done }));
    // SAFETY: `link_thread` takes ownership of `ctx` once it runs.
    match unsafe { SystemThread::spawn(link_thread, ctx.cast()) } {
        Ok(thread) => {
            THREAD.with(|t| *t = Some(thread));
            if want_reinit {
                // Registered only now that start() will succeed, as the
                // routine's documentation requires, and only for a
                // boot-start load (BOOT_START): for a driver started later
                // the documentation does not say when (or whether) the
                // routine runs, and a pending routine blocks unload.
                REINIT_PENDING.store(true, Ordering::Release);
                // SAFETY: our driver object; static callback; no context.
                unsafe {
                    IoRegisterBootDriverReinitialization(
                        driver,
                        Some(boot_reinit),
                        core::ptr::null(),
                    )
                };
            }
            STATUS_SUCCESS
        }
        Err((status, running)) => {
            if !running {
                // SAFETY: no thread was created, so `ctx` is still ours;
                // dropping it releases a captured file object too.
                drop(unsafe { Box::from_raw(ctx) });
            }
            klog_status!(
                Level::Error,
                routine::VSOCK_CAPTURE,
                status,
                "the vsock link thread could not be started (running unjoinable: {}); no host connection",
                running
            );
            status
        }
    }
}

/// Stops the vsock layer (PASSIVE_LEVEL, unload, after `agent.stopping` is
/// set): signals the thread, cuts short any wait, a pending connect or the
/// session's receive, unregisters the PnP notification and waits for the
/// thread to end. Idempotent.
pub fn stop() {
    if !STARTED.swap(false, Ordering::AcqRel) {
        return;
    }
    STOP.set();
    WAKE.set();
    let entry = PNP_ENTRY.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !entry.is_null() {
        // SAFETY: the entry IoRegisterPlugPlayNotification returned; the Ex
        // form returns only when no callback is running or will run.
        let _ = unsafe { IoUnregisterPlugPlayNotificationEx(entry) };
    }
    let thread = THREAD.with(|t| t.take());
    if let Some(thread) = thread {
        // The session worker waits on its receive; cancelling that receive
        // ends the session so the thread can exit. Repeat in case the
        // receive was between two requests.
        while !thread.wait(Duration::from_millis(200)) {
            cancel_pending_receive();
        }
        thread.join();
    }
    klog!(Level::Info, routine::VSOCK_CAPTURE, "vsock layer stopped");
}

/// Compile-time guard: the transports the link loop hands the session
/// worker are the trait object the contract names.
const _: fn(&mut WskConnection) -> &mut dyn Transport = |c| c;
const _: fn(&mut ViosockConnection) -> &mut dyn Transport = |c| c;
