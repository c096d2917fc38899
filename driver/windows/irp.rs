//! IRP plumbing for the vsock layer: the `wdm.h` inline helpers no binding
//! has (`IoGetNextIrpStackLocation`, `IoSetCompletionRoutine`), a
//! synchronous device IOCTL on a referenced file object with a bounded,
//! cancellable wait (the seed's Listing 2 pattern, done right), one reusable
//! driver-allocated IRP per operation (viosock's WSK test client pattern:
//! completion routine signals an event and returns
//! `STATUS_MORE_PROCESSING_REQUIRED`, so the IRP stays ours until we free
//! it), requests sent through such an IRP straight to a device
//! ([`Request`]: device control, read, write), and a joinable system thread.
//!
//! Every routine is named with its documentation page the first time it is
//! used below; signatures are windows-sys 0.61.2
//! `src/Windows/Wdk/System/SystemServices/mod.rs` (all `ntoskrnl.exe`), or
//! `thinagent_km_sys::ntoskrnl` where windows-sys binds the ntdll export
//! (`ZwClose`) or lost a callback's parameters (`PKSTART_ROUTINE`,
//! `PIO_COMPLETION_ROUTINE`).

use alloc::boxed::Box;
use core::ffi::c_void;
use core::time::Duration;

use thinagent_guest::Level;
use thinagent_guest::log::routine;
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::{
    DEVICE_OBJECT, FILE_OBJECT, IO_STACK_LOCATION, IRP, MDL, OBJECT_ATTRIBUTES,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    Executive, IRP_MJ_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE, IoAllocateIrp, IoAllocateMdl,
    IoCancelIrp, IoFreeIrp, IoReuseIrp, IofCallDriver, KeWaitForSingleObject, KernelMode,
    MmBuildMdlForNonPagedPool, ObReferenceObjectByHandle, ObfDereferenceObject,
    PsCreateSystemThread,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{HANDLE, NTSTATUS};
use thinagent_km_sys::io_params::IO_STACK_DEVICE_IO_CONTROL;
use thinagent_km_sys::ntoskrnl::{
    IO_COMPLETION_ROUTINE, KSTART_ROUTINE, OBJ_KERNEL_HANDLE, PsGetCurrentThread, PsThreadType,
    SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_ERROR, SL_INVOKE_ON_SUCCESS, STATUS_INVALID_DEVICE_STATE,
    STATUS_IO_TIMEOUT, STATUS_MORE_PROCESSING_REQUIRED, SYNCHRONIZE, THREAD_ALL_ACCESS, ZwClose,
};

use super::kernel::{
    EventKind, KernelEvent, STATUS_INSUFFICIENT_RESOURCES, STATUS_PENDING, now, relative_100ns,
};
use crate::klog_status;

/// How long [`device_ioctl`] waits for a pending IOCTL before it cancels it.
pub const DEVICE_IOCTL_TIMEOUT: Duration = Duration::from_secs(5);

/// `IoGetNextIrpStackLocation` (`wdm.h` FORCEINLINE:
/// `return Irp->Tail.Overlay.CurrentStackLocation - 1;`), any IRQL.
/// learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-iogetnextirpstacklocation
///
/// # Safety
///
/// `irp` must be a valid IRP whose current location is not its first
/// (true for any IRP not yet passed down: a fresh `IoAllocateIrp`/
/// `IoBuildDeviceIoControlRequest` IRP points one past its last location).
pub unsafe fn next_stack_location(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller guarantees a valid IRP; the union member is the one
    // the I/O manager keeps for a non-APC IRP (`wdm.h` reads it the same way).
    unsafe {
        (*irp)
            .Tail
            .Overlay
            .Anonymous2
            .Anonymous
            .CurrentStackLocation
            .sub(1)
    }
}

/// `IoSetCompletionRoutine` (`wdm.h` FORCEINLINE): stores `routine` and
/// `context` in the next stack location and sets `SL_INVOKE_ON_*` in its
/// `Control` byte. IRQL <= DISPATCH_LEVEL.
/// learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-iosetcompletionroutine
///
/// # Safety
///
/// As [`next_stack_location`]; `context` must stay valid until the routine
/// has run.
pub unsafe fn set_completion_routine(
    irp: *mut IRP,
    routine: IO_COMPLETION_ROUTINE,
    context: *mut c_void,
    on_success: bool,
    on_error: bool,
    on_cancel: bool,
) {
    // SAFETY: windows-sys 0.61.2 types `PIO_COMPLETION_ROUTINE` as
    // `extern "system" fn() -> NTSTATUS` (its metadata lost the parameters);
    // both are one code pointer with the same ABI, and the I/O manager calls
    // it with wdm.h's three arguments, which `routine` declares.
    let stored: unsafe extern "system" fn() -> NTSTATUS = unsafe { core::mem::transmute(routine) };
    // SAFETY: the caller guarantees a valid IRP with a next location.
    let sl = unsafe { &mut *next_stack_location(irp) };
    sl.CompletionRoutine = Some(stored);
    sl.Context = context;
    let mut control = 0u8;
    if on_success {
        control |= SL_INVOKE_ON_SUCCESS;
    }
    if on_error {
        control |= SL_INVOKE_ON_ERROR;
    }
    if on_cancel {
        control |= SL_INVOKE_ON_CANCEL;
    }
    sl.Control = control;
}

/// Sends a `METHOD_BUFFERED` IOCTL to `device` on behalf of `file` and waits
/// for it, at most [`DEVICE_IOCTL_TIMEOUT`] or until `stop` is signalled;
/// then it cancels the request (`IoCancelIrp`) and waits for its completion
/// (the IRP's event), so it never returns while the IRP may still complete
/// into memory that is about to be freed. `buffer` is both input (`in_len`
/// bytes) and output (`out_len` bytes). Returns the final status and
/// `IoStatus.Information` (bytes written back). PASSIVE_LEVEL.
///
/// The IRP is ours ([`ReusableIrp`], `IoAllocateIrp(device->StackSize)`),
/// not `IoBuildDeviceIoControlRequest`'s: a threaded IRP is freed by the I/O
/// manager in an APC to this very thread as soon as it completes, so after a
/// timed-out wait there would be no moment at which `IoCancelIrp` on it is
/// safe. Like `IoBuildDeviceIoControlRequest`, it carries a non-paged
/// system buffer holding the input, and the output is copied back from it;
/// the thread is the caller's (`PsGetCurrentThread`,
/// learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-psgetcurrentthread).
/// A driver that ignores the cancel makes the second wait as long as the
/// request takes (logged): an unload then waits rather than crash later.
///
/// Routines: IofCallDriver (…/wdm/nf-wdm-iocalldriver, the function behind
/// the `IoCallDriver` macro), and through [`ReusableIrp`]: IoAllocateIrp,
/// IoCancelIrp, KeWaitForMultipleObjects, IoFreeIrp.
///
/// # Safety
///
/// `device` and `file` must be referenced (e.g. by `IoGetDeviceObjectPointer`)
/// for the call; `buffer` must be valid for `max(in_len, out_len)` bytes.
pub unsafe fn device_ioctl(
    device: *mut DEVICE_OBJECT,
    file: *mut FILE_OBJECT,
    code: u32,
    buffer: *mut c_void,
    in_len: u32,
    out_len: u32,
    stop: Option<&KernelEvent>,
) -> (NTSTATUS, usize) {
    // SAFETY: the caller's guarantees, passed on unchanged.
    let r = unsafe { device_ioctl_bounded(device, file, code, buffer, in_len, out_len, stop) };
    (r.status, r.info)
}

/// What [`device_ioctl_bounded`] returns.
#[derive(Clone, Copy, Debug)]
pub struct IoctlResult {
    /// The request's final `IoStatus.Status`.
    pub status: NTSTATUS,
    /// Its `IoStatus.Information` (bytes written back on success).
    pub info: usize,
    /// The wait ended (after [`DEVICE_IOCTL_TIMEOUT`] or because `stop`
    /// was signalled) before the request completed, so it was cancelled;
    /// `status` is whatever it completed with after the cancel (usually
    /// `STATUS_CANCELLED`, a success if it won the race). The caller tells
    /// a timeout from a stop by its own stop state.
    pub cancelled: bool,
}

/// [`device_ioctl`], also saying whether the request had to be cancelled
/// (so the capture loop can report a hung IOCTL as a timeout).
///
/// # Safety
///
/// As [`device_ioctl`].
pub unsafe fn device_ioctl_bounded(
    device: *mut DEVICE_OBJECT,
    file: *mut FILE_OBJECT,
    code: u32,
    buffer: *mut c_void,
    in_len: u32,
    out_len: u32,
    stop: Option<&KernelEvent>,
) -> IoctlResult {
    let failed = |status| IoctlResult {
        status,
        info: 0,
        cancelled: false,
    };
    // SAFETY: the caller keeps `device` referenced.
    let stack_size = unsafe { (*device).StackSize };
    let mut irp = match ReusableIrp::with_stack_size(stack_size) {
        Ok(i) => i,
        Err(e) => return failed(e),
    };
    let len = in_len.max(out_len) as usize;
    let mut system: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
    if system.try_reserve_exact(len.max(1)).is_err() {
        return failed(STATUS_INSUFFICIENT_RESOURCES);
    }
    system.resize(len.max(1), 0);
    if in_len > 0 {
        // SAFETY: the caller's buffer holds `in_len` input bytes; `system`
        // has at least that many.
        unsafe {
            core::ptr::copy_nonoverlapping(
                buffer.cast::<u8>(),
                system.as_mut_ptr(),
                in_len as usize,
            )
        };
    }
    let request = Request::DeviceControl {
        code,
        system_buffer: system.as_mut_ptr().cast(),
        in_len,
        out_len,
    };
    // SAFETY: device/file referenced by the caller; the system buffer lives
    // in `system` until the request has completed (every path below waits
    // for completion before `system` drops).
    let status = unsafe { irp.send(device, file, request) };
    let mut cancelled = false;
    let (status, info) = match irp.wait(stop, Some(DEVICE_IOCTL_TIMEOUT)) {
        Some(r) => r,
        None => {
            cancelled = true;
            klog_status!(
                Level::Warn,
                routine::VSOCK_CAPTURE,
                status,
                "IOCTL {:#x} still pending after {} ms or unload: cancelling it",
                code,
                DEVICE_IOCTL_TIMEOUT.as_millis()
            );
            let (s, info) = irp.cancel_and_wait();
            klog_status!(
                Level::Warn,
                routine::VSOCK_CAPTURE,
                s,
                "IOCTL {:#x} completed after the cancel",
                code
            );
            (s, info)
        }
    };
    let info = if status >= 0 {
        let written = info.min(out_len as usize);
        // SAFETY: the request has completed; the caller's buffer holds
        // `out_len` >= `written` bytes.
        unsafe { core::ptr::copy_nonoverlapping(system.as_ptr(), buffer.cast::<u8>(), written) };
        written
    } else {
        info
    };
    IoctlResult {
        status,
        info,
        cancelled,
    }
}

/// One request sent through a [`ReusableIrp`] straight to a device, on
/// behalf of a file object ([`ReusableIrp::send`]).
pub enum Request {
    /// `IRP_MJ_DEVICE_CONTROL`, `METHOD_BUFFERED`: `system_buffer` (ours,
    /// non-paged, `max(in_len, out_len)` bytes) holds the input and receives
    /// the output, as the I/O manager's `AssociatedIrp.SystemBuffer` would.
    DeviceControl {
        /// IOCTL code.
        code: u32,
        /// Non-paged buffer for input and output.
        system_buffer: *mut c_void,
        /// Input bytes.
        in_len: u32,
        /// Output capacity.
        out_len: u32,
    },
    /// `IRP_MJ_READ` into the buffer `mdl` describes (direct I/O).
    Read {
        /// MDL of a locked (non-paged) buffer.
        mdl: *mut MDL,
        /// Bytes to read at most (<= the MDL's byte count).
        len: u32,
    },
    /// `IRP_MJ_WRITE` of the buffer `mdl` describes (direct I/O).
    Write {
        /// MDL of a locked (non-paged) buffer.
        mdl: *mut MDL,
        /// Bytes to write (<= the MDL's byte count).
        len: u32,
    },
}

/// The completion routine of every [`ReusableIrp`]: signals the IRP's event
/// and keeps the IRP for its owner. IRQL <= DISPATCH_LEVEL.
unsafe extern "system" fn signal_and_keep(
    _device: *mut c_void,
    _irp: *mut thinagent_km_sys::nt::IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: `context` is the owning ReusableIrp's boxed event, which
    // outlives every request (the owner waits for completion before reuse
    // or free). KeSetEvent is fine at DISPATCH_LEVEL.
    unsafe { (*context.cast::<KernelEvent>()).set() };
    STATUS_MORE_PROCESSING_REQUIRED
}

/// An MDL over `len` bytes of non-paged memory at `va`, for a socket's
/// receive or send buffer (both transports). IRQL <= DISPATCH_LEVEL. The
/// caller frees it with `IoFreeMdl`.
///
/// Routines: IoAllocateMdl
/// (learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-ioallocatemdl),
/// MmBuildMdlForNonPagedPool (…/wdm/nf-wdm-mmbuildmdlfornonpagedpool).
pub fn build_mdl(va: *mut u8, len: usize) -> Result<*mut MDL, NTSTATUS> {
    // SAFETY: callers pass non-paged pool (a boxed buffer block, allocated
    // by the driver's non-paged global allocator) valid for `len` bytes.
    let mdl = unsafe { IoAllocateMdl(va.cast(), len as u32, false, false, core::ptr::null_mut()) };
    if mdl.is_null() {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    // SAFETY: the MDL describes non-paged memory, as the routine requires.
    unsafe { MmBuildMdlForNonPagedPool(mdl) };
    Ok(mdl)
}

/// Sends `bytes` in pieces of at most `chunk` bytes, all within `timeout`,
/// for both transports' `send_all`. `send_one(piece, left)` sends one piece
/// (waiting at most `left`) and returns the request's `(status,
/// information)`, or an error status of its own. Fails with
/// `STATUS_IO_TIMEOUT` when the time is up before a piece is sent, with a
/// piece's failure status, and with `STATUS_INVALID_DEVICE_STATE` when a
/// piece reports 0 bytes or more than it was given. PASSIVE_LEVEL.
pub fn send_chunked(
    bytes: &[u8],
    chunk: usize,
    timeout: Duration,
    mut send_one: impl FnMut(&[u8], Duration) -> Result<(NTSTATUS, usize), NTSTATUS>,
) -> Result<(), NTSTATUS> {
    let deadline = now() + timeout;
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rest.len().min(chunk);
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            return Err(STATUS_IO_TIMEOUT);
        }
        let (status, sent) = send_one(&rest[..n], left)?;
        if status < 0 {
            return Err(status);
        }
        if sent == 0 || sent > n {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        rest = &rest[sent..];
    }
    Ok(())
}

/// One driver-allocated IRP (`IoAllocateIrp(1, FALSE)`), reused for one kind
/// of operation (viosock's WSK test client keeps one per request the same
/// way). Its completion routine signals [`ReusableIrp::event`]; the owner
/// reads the result once it is signalled. PASSIVE_LEVEL.
///
/// Routines: IoAllocateIrp (…/wdm/nf-wdm-ioallocateirp), IoReuseIrp
/// (…/wdm/nf-wdm-ioreuseirp), IoCancelIrp (…/wdm/nf-wdm-iocancelirp),
/// IoFreeIrp (…/wdm/nf-wdm-iofreeirp), KeWaitForSingleObject through
/// [`KernelEvent::wait`] and KeWaitForMultipleObjects through
/// [`super::kernel::wait_any`].
pub struct ReusableIrp {
    irp: *mut IRP,
    done: Box<KernelEvent>,
    in_flight: bool,
}

// SAFETY: the IRP and event are kernel objects usable from any thread; the
// owner serialises its own use.
unsafe impl Send for ReusableIrp {}

impl ReusableIrp {
    /// Allocates the IRP (one stack location: the WSK provider's).
    /// IRQL <= DISPATCH_LEVEL.
    pub fn new() -> Result<Self, NTSTATUS> {
        Self::with_stack_size(1)
    }

    /// Allocates the IRP with `stack_size` locations (a target device's
    /// `StackSize`, for [`ReusableIrp::send`]). IRQL <= DISPATCH_LEVEL.
    pub fn with_stack_size(stack_size: i8) -> Result<Self, NTSTATUS> {
        let done = Box::new(KernelEvent::uninit());
        done.init(EventKind::Notification, false);
        // SAFETY: plain allocation, PASSIVE_LEVEL.
        let irp = unsafe { IoAllocateIrp(stack_size.max(1), false) };
        if irp.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        Ok(ReusableIrp {
            irp,
            done,
            in_flight: false,
        })
    }

    /// Readies the IRP for one request and returns it (as km-sys's opaque
    /// type, for the WSK dispatch functions). The caller must pass it to a
    /// call that completes it (every WSK function does, whatever it returns)
    /// and then wait with [`ReusableIrp::wait`] or
    /// [`ReusableIrp::cancel_and_wait`]. IRQL <= DISPATCH_LEVEL.
    pub fn arm(&mut self) -> *mut thinagent_km_sys::nt::IRP {
        debug_assert!(!self.in_flight);
        // SAFETY: our IRP, not in flight (completed or never sent).
        unsafe { IoReuseIrp(self.irp, super::kernel::STATUS_UNSUCCESSFUL) };
        self.done.clear();
        let ctx: *const KernelEvent = &*self.done;
        // SAFETY: fresh (reused) IRP with one location; the event is boxed
        // and outlives the request.
        unsafe {
            set_completion_routine(
                self.irp,
                signal_and_keep,
                ctx.cast_mut().cast(),
                true,
                true,
                true,
            )
        };
        self.in_flight = true;
        self.irp.cast()
    }

    /// Arms the IRP, fills its next stack location for `request` on `file`
    /// (major function, file object, parameters; the buffer in the IRP),
    /// sets the requesting thread, and passes it to `device`
    /// (`IofCallDriver`). Returns what `IofCallDriver` returned; the result
    /// comes from [`ReusableIrp::wait`] / [`ReusableIrp::cancel_and_wait`],
    /// one of which the caller must call. PASSIVE_LEVEL (callers' devices
    /// dispatch at PASSIVE_LEVEL).
    ///
    /// # Safety
    ///
    /// `device` and `file` must be referenced for the request's lifetime,
    /// `device` must be the device `file` was opened on (its top), this IRP
    /// must have been allocated with at least `device`'s stack size, and the
    /// request's buffer or MDL must stay valid until it has completed.
    pub unsafe fn send(
        &mut self,
        device: *mut DEVICE_OBJECT,
        file: *mut FILE_OBJECT,
        request: Request,
    ) -> NTSTATUS {
        let irp: *mut IRP = self.arm().cast();
        // SAFETY: our armed IRP (IoReuseIrp zeroed it and its stack
        // locations); the next location is the first one `device` gets.
        unsafe {
            (*irp).Tail.Overlay.Thread = PsGetCurrentThread() as isize;
            let sl = &mut *next_stack_location(irp);
            sl.FileObject = file;
            match request {
                Request::DeviceControl {
                    code,
                    system_buffer,
                    in_len,
                    out_len,
                } => {
                    sl.MajorFunction = IRP_MJ_DEVICE_CONTROL as u8;
                    (*irp).AssociatedIrp.SystemBuffer = system_buffer;
                    // wdm.h's layout (POINTER_ALIGNMENT), not windows-sys's.
                    let p = (&raw mut sl.Parameters).cast::<IO_STACK_DEVICE_IO_CONTROL>();
                    (*p).OutputBufferLength = out_len;
                    (*p).InputBufferLength = in_len;
                    (*p).IoControlCode = code;
                }
                Request::Read { mdl, len } => {
                    sl.MajorFunction = IRP_MJ_READ as u8;
                    (*irp).MdlAddress = mdl;
                    // wdm.h: `struct { ULONG Length; ULONG POINTER_ALIGNMENT
                    // Key; ULONG Flags; LARGE_INTEGER ByteOffset; } Read`:
                    // Length is at offset 0; Key, Flags and ByteOffset stay
                    // 0 (zeroed by IoReuseIrp).
                    (&raw mut sl.Parameters).cast::<u32>().write(len);
                }
                Request::Write { mdl, len } => {
                    sl.MajorFunction = IRP_MJ_WRITE as u8;
                    (*irp).MdlAddress = mdl;
                    // The Write arm has the Read arm's layout (wdm.h).
                    (&raw mut sl.Parameters).cast::<u32>().write(len);
                }
            }
        }
        // SAFETY: the caller guarantees `device` and `file`; the IRP is
        // armed with our completion routine, so it comes back to us.
        unsafe { IofCallDriver(device, irp) }
    }

    /// Whether a request is outstanding (any IRQL).
    #[must_use]
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The completion event (dispatcher object), for multi-object waits
    /// (any IRQL).
    #[must_use]
    pub fn event(&self) -> &KernelEvent {
        &self.done
    }

    /// Waits until the request completes, `stop` is signalled, or `timeout`
    /// passes. On completion returns `Some((status, information))`; on stop
    /// or timeout returns `None` and the request is still outstanding.
    /// PASSIVE_LEVEL (APC_LEVEL allowed).
    pub fn wait(
        &mut self,
        stop: Option<&KernelEvent>,
        timeout: Option<Duration>,
    ) -> Option<(NTSTATUS, usize)> {
        if !self.in_flight {
            return Some(self.result());
        }
        let status = match stop {
            None => self.done.wait(timeout),
            // SAFETY: two initialised events that outlive the wait.
            Some(stop) => unsafe {
                super::kernel::wait_any(&[self.done.as_object(), stop.as_object()], timeout)
            },
        };
        if status == 0 {
            self.in_flight = false;
            // The MDL is the caller's; the IRP must not carry it into a
            // reuse or IoFreeIrp.
            // SAFETY: our IRP, completed (the completion routine ran).
            unsafe { (*self.irp).MdlAddress = core::ptr::null_mut() };
            Some(self.result())
        } else {
            // STATUS_WAIT_1 (stop) or STATUS_TIMEOUT.
            None
        }
    }

    /// [`ReusableIrp::wait`], then, on stop or timeout,
    /// [`ReusableIrp::cancel_and_wait`]: `Ok` with the result of a request
    /// that completed in time, `Err` with the result of the cancelled one
    /// (a success if it completed before the cancel took effect).
    /// PASSIVE_LEVEL.
    pub fn wait_or_cancel(
        &mut self,
        stop: Option<&KernelEvent>,
        timeout: Duration,
    ) -> Result<(NTSTATUS, usize), (NTSTATUS, usize)> {
        match self.wait(stop, Some(timeout)) {
            Some(r) => Ok(r),
            None => Err(self.cancel_and_wait()),
        }
    }

    /// Takes the result of a request without waiting, and clears
    /// [`ReusableIrp::event`] once it has completed: its `Information` on
    /// success, `Err(STATUS_PENDING)` while it is outstanding, its status
    /// on failure. For a receive the transport polls after its event was
    /// signalled. PASSIVE_LEVEL.
    pub fn take_completed(&mut self) -> Result<usize, NTSTATUS> {
        let Some((status, info)) = self.wait(None, Some(Duration::ZERO)) else {
            return Err(STATUS_PENDING);
        };
        self.done.clear();
        if status < 0 {
            return Err(status);
        }
        Ok(info)
    }

    /// Cancels the outstanding request (`IoCancelIrp`) and waits until it
    /// has completed; returns its result. A provider that ignores
    /// cancellation makes this wait as long as the request takes.
    /// PASSIVE_LEVEL.
    pub fn cancel_and_wait(&mut self) -> (NTSTATUS, usize) {
        if self.in_flight {
            // SAFETY: our IRP is outstanding and stays allocated until it
            // completes (we wait below before anything can free it).
            let _ = unsafe { IoCancelIrp(self.irp) };
            let _ = self.wait(None, None);
        }
        self.result()
    }

    /// Requests cancellation without waiting (IRQL <= DISPATCH_LEVEL); for
    /// unload, from another thread, while this IRP's owner waits on it.
    ///
    /// # Safety
    ///
    /// `irp` must be an IRP owned by a live [`ReusableIrp`] (see
    /// [`ReusableIrp::raw`]).
    pub unsafe fn cancel_raw(irp: *mut IRP) {
        // SAFETY: the caller guarantees the IRP is allocated.
        let _ = unsafe { IoCancelIrp(irp) };
    }

    /// The IRP pointer (for [`ReusableIrp::cancel_raw`]; any IRQL).
    #[must_use]
    pub fn raw(&self) -> *mut IRP {
        self.irp
    }

    /// `IoStatus` of the last completed request (any IRQL).
    #[must_use]
    pub fn result(&self) -> (NTSTATUS, usize) {
        // SAFETY: our IRP; IoStatus is plain data written by the completer.
        unsafe {
            (
                (*self.irp).IoStatus.Anonymous.Status,
                (*self.irp).IoStatus.Information,
            )
        }
    }
}

impl Drop for ReusableIrp {
    fn drop(&mut self) {
        let _ = self.cancel_and_wait();
        // SAFETY: allocated by IoAllocateIrp, not in flight.
        unsafe { IoFreeIrp(self.irp) };
    }
}

/// A system thread the driver can wait for: `PsCreateSystemThread`, then
/// `ObReferenceObjectByHandle` for the thread object and `ZwClose` for the
/// handle (so no handle outlives the call). PASSIVE_LEVEL.
///
/// Routines: PsCreateSystemThread (…/wdm/nf-wdm-pscreatesystemthread),
/// ObReferenceObjectByHandle (…/wdm/nf-wdm-obreferenceobjectbyhandle),
/// ZwClose (…/wdm/nf-wdm-zwclose), ObfDereferenceObject (the function behind
/// `ObDereferenceObject`, …/wdm/nf-wdm-obdereferenceobject).
pub struct SystemThread {
    object: *mut c_void,
}

// SAFETY: a referenced thread object may be waited on from any thread.
unsafe impl Send for SystemThread {}
// SAFETY: as above; only `join` (by value) touches it.
unsafe impl Sync for SystemThread {}

impl SystemThread {
    /// Starts `routine(context)` on a new system thread (PASSIVE_LEVEL). On
    /// error also says
    /// whether the thread runs anyway (it was created but could not be
    /// referenced, so it cannot be joined and owns `context`).
    ///
    /// # Safety
    ///
    /// `context` must be valid for whatever `routine` does with it, for as
    /// long as the thread runs.
    pub unsafe fn spawn(
        routine: KSTART_ROUTINE,
        context: *mut c_void,
    ) -> Result<Self, (NTSTATUS, bool)> {
        // InitializeObjectAttributes(&oa, NULL, OBJ_KERNEL_HANDLE, NULL, NULL)
        // (wdm.h macro): a kernel handle, whatever process we run in.
        let oa = OBJECT_ATTRIBUTES {
            Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
            RootDirectory: core::ptr::null_mut(),
            ObjectName: core::ptr::null(),
            Attributes: OBJ_KERNEL_HANDLE as _,
            SecurityDescriptor: core::ptr::null(),
            SecurityQualityOfService: core::ptr::null(),
        };
        // SAFETY: windows-sys 0.61.2 types PKSTART_ROUTINE as
        // `extern "system" fn()` (parameter lost in its metadata); the kernel
        // calls it with the one `StartContext` argument `routine` declares.
        let start: unsafe extern "system" fn() = unsafe { core::mem::transmute(routine) };
        let mut handle: HANDLE = core::ptr::null_mut();
        // SAFETY: out-pointer to a local; no process handle = system process.
        let status = unsafe {
            PsCreateSystemThread(
                &mut handle,
                THREAD_ALL_ACCESS,
                &oa,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                Some(start),
                context,
            )
        };
        if status < 0 {
            return Err((status, false));
        }
        let mut object: *mut c_void = core::ptr::null_mut();
        // SAFETY: a kernel handle we just got; PsThreadType is the thread
        // object type (exported data, valid after boot); KernelMode access.
        let status = unsafe {
            ObReferenceObjectByHandle(
                handle,
                SYNCHRONIZE,
                PsThreadType as isize,
                KernelMode as i8,
                &mut object,
                core::ptr::null_mut(),
            )
        };
        // SAFETY: closes the handle PsCreateSystemThread gave us; the thread
        // keeps running (the reference above, if taken, keeps its object).
        let _ = unsafe { ZwClose(handle) };
        if status < 0 {
            // The thread runs but cannot be joined; the caller must not
            // free `context` (it says so in its log).
            return Err((status, true));
        }
        Ok(SystemThread { object })
    }

    /// Waits at most `timeout` for the thread to end; `true` if it has
    /// (PASSIVE_LEVEL).
    #[must_use]
    pub fn wait(&self, timeout: Duration) -> bool {
        let rel = relative_100ns(timeout);
        // SAFETY: a referenced thread object is a dispatcher object; the
        // timeout is a local.
        let status =
            unsafe { KeWaitForSingleObject(self.object, Executive, KernelMode as i8, false, &rel) };
        status == 0
    }

    /// Waits for the thread to end and drops the reference (PASSIVE_LEVEL).
    pub fn join(self) {
        // SAFETY: a referenced thread object is a dispatcher object,
        // signalled when the thread terminates.
        let _ = unsafe {
            KeWaitForSingleObject(
                self.object,
                Executive,
                KernelMode as i8,
                false,
                core::ptr::null(),
            )
        };
        // SAFETY: releases the reference taken in `spawn`.
        let _ = unsafe { ObfDereferenceObject(self.object) };
    }
}
