//! A virtio-vsock stream socket straight on virtio-win's `viosock.sys`
//! device interface, as the [`Transport`] the session worker speaks the
//! protocol over (KVM/QEMU guests; `vsockTransport` = `Virtio`, or `Auto`
//! without `\Device\vmci`).
//!
//! `viosock.sys` has no WSK provider to capture: virtio-win's `VioWsk` is a
//! static library that turns WSK calls into requests on the viosock device.
//! This module makes those requests itself (the interface is described in
//! `thinagent_km_sys::viosock`, with the header and commit it comes from):
//!
//! * [`ViosockDevice::open`]: `IoGetDeviceObjectPointer` on the device
//!   interface's symbolic link (from the PnP arrival) gives a *control* file
//!   object (no extended attribute) and the device at the top of viosock's
//!   stack. The reference is held while sockets are used (it pins the
//!   device), and `IOCTL_GET_CONFIG` on it reads this guest's CID for the
//!   log;
//! * [`ViosockConnection::connect`]: `ZwCreateFile` on the same link with a
//!   28-byte `FILE_FULL_EA_INFORMATION` whose value is `VIRTIO_VSOCK_PARAMS
//!   { Socket: 0, Type: STREAM }` creates the socket (a kernel handle, then
//!   `ObReferenceObjectByHandle(IoFileObjectType)` for the file object);
//!   `IOCTL_SOCKET_CONNECT` with `sockaddr_vm {AF_VSOCK, host port, host
//!   CID}` connects (viosock binds automatically and answers when the host
//!   does, or after its own 2 s connect timeout);
//! * data: `IRP_MJ_READ` / `IRP_MJ_WRITE` on the socket's file object, the
//!   buffer described by an MDL (viosock uses direct I/O). A read completes
//!   with what is there, 0 bytes when the host shut the stream; a write
//!   takes at most 64 KiB and says how much;
//! * [`Transport::shutdown`]: cancel what is outstanding,
//!   `IOCTL_SOCKET_SHUTDOWN(SD_BOTH)`, then `ZwClose` (viosock's cleanup
//!   resets the connection) and the file object's reference.
//!
//! Every request goes through one of three driver-allocated IRPs
//! ([`ReusableIrp`] with the device's stack size: receive, send, control),
//! whose completion routine keeps the IRP for us, so a timed-out request is
//! cancelled and waited for before anything it points to is freed. Buffers,
//! their MDLs and the IOCTL system buffer live in one boxed non-paged block.
//!
//! Routines (first use named here; all PASSIVE_LEVEL here):
//! IoGetDeviceObjectPointer
//! (learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-iogetdeviceobjectpointer),
//! ZwCreateFile (…/wdm/nf-wdm-zwcreatefile), ObReferenceObjectByHandle
//! (…/wdm/nf-wdm-obreferenceobjectbyhandle, with `IoFileObjectType`),
//! ZwClose (…/wdm/nf-wdm-zwclose), ObfDereferenceObject
//! (…/wdm/nf-wdm-obdereferenceobject), IoFreeMdl (…/wdm/nf-wdm-iofreemdl);
//! through [`super::irp`]: IoAllocateMdl + MmBuildMdlForNonPagedPool
//! ([`build_mdl`]), IoAllocateIrp, IoReuseIrp, IofCallDriver, IoCancelIrp, IoFreeIrp,
//! KeWaitForSingleObject/KeWaitForMultipleObjects, PsGetCurrentThread.

use alloc::boxed::Box;
use core::ffi::c_void;
use core::time::Duration;

use thinagent_guest::Level;
use thinagent_guest::log::routine;
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::{
    DEVICE_OBJECT, FILE_OBJECT, MDL, OBJECT_ATTRIBUTES,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    IoFreeMdl, IoGetDeviceObjectPointer, KernelMode, ObReferenceObjectByHandle,
    ObfDereferenceObject,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{HANDLE, NTSTATUS};
use thinagent_km_sys::fltmgr::windows_sys::Win32::System::IO::IO_STATUS_BLOCK;
use thinagent_km_sys::ntoskrnl::{
    FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_NON_DIRECTORY_FILE, FILE_OPEN,
    FILE_READ_ATTRIBUTES, FILE_SHARE_READ, FILE_SHARE_WRITE, IoFileObjectType,
    OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE, STATUS_INVALID_DEVICE_STATE, STATUS_IO_TIMEOUT,
    ZwClose, ZwCreateFile,
};
use thinagent_km_sys::viosock::{
    IOCTL_GET_CONFIG, IOCTL_SOCKET_CONNECT, IOCTL_SOCKET_SHUTDOWN, NEW_STREAM_SOCKET_EA, SD_BOTH,
    SOCKADDR_VM, VIOSOCK_CREATE_EA_BYTES, VIRTIO_VSOCK_CONFIG, VIRTIO_VSOCK_MAX_PKT_BUF_SIZE,
};

use super::irp::{Request, ReusableIrp, build_mdl, device_ioctl, send_chunked};
use super::kernel::{
    KernelEvent, STATUS_CANCELLED, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
    nt_success, unicode_string_for,
};
use super::transport::Transport;
use crate::klog_status;

/// Receive buffer size: one read never asks for more.
pub const RECEIVE_BUFFER_BYTES: usize = 64 * 1024;
/// Send buffer size: one write never carries more (viosock truncates a
/// write to `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`, the same 64 KiB).
pub const SEND_BUFFER_BYTES: usize = VIRTIO_VSOCK_MAX_PKT_BUF_SIZE;
/// How long a connect may stay pending before we cancel it (viosock's own
/// connect timeout, 2 s by default, normally ends it first).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the shutdown IOCTL may take before it is cancelled (the close
/// that follows resets the connection anyway).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest symbolic link name kept (UTF-16 units).
pub const LINK_NAME_MAX: usize = 256;

/// The viosock device, opened through its interface's symbolic link: a
/// referenced control file object and the device requests go to. Dropping
/// it releases the reference (PASSIVE_LEVEL).
pub struct ViosockDevice {
    file: *mut FILE_OBJECT,
    device: *mut DEVICE_OBJECT,
    link: [u16; LINK_NAME_MAX],
    link_len: usize,
    /// This guest's CID (`IOCTL_GET_CONFIG`), if the device answered.
    pub guest_cid: Option<u32>,
}

// SAFETY: a referenced file object may be used and released from any
// thread; only the link thread uses it.
unsafe impl Send for ViosockDevice {}

impl ViosockDevice {
    /// Opens the device interface `link` (the PnP arrival's symbolic link
    /// name) and reads the guest CID. `stop` cuts the configuration IOCTL's
    /// wait short. PASSIVE_LEVEL.
    pub fn open(link: &[u16], stop: &KernelEvent) -> Result<Self, NTSTATUS> {
        if link.len() > LINK_NAME_MAX {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let mut dev = ViosockDevice {
            file: core::ptr::null_mut(),
            device: core::ptr::null_mut(),
            link: [0; LINK_NAME_MAX],
            link_len: link.len(),
            guest_cid: None,
        };
        dev.link[..link.len()].copy_from_slice(link);
        let name = unicode_string_for(dev.link_units()).ok_or(STATUS_INVALID_PARAMETER)?;
        // SAFETY: `name` describes `dev.link` for the call; out-pointers to
        // fields. FILE_READ_ATTRIBUTES as VioWsk opens it; with no EA this
        // is a control file in viosock (configuration, not a socket).
        let status = unsafe {
            IoGetDeviceObjectPointer(&name, FILE_READ_ATTRIBUTES, &mut dev.file, &mut dev.device)
        };
        if !nt_success(status) {
            dev.file = core::ptr::null_mut();
            return Err(status);
        }
        let mut config = VIRTIO_VSOCK_CONFIG::default();
        let len = size_of::<VIRTIO_VSOCK_CONFIG>() as u32;
        // SAFETY: file and device referenced by `dev`; a 4-byte out buffer.
        let (status, written) = unsafe {
            device_ioctl(
                dev.device,
                dev.file,
                IOCTL_GET_CONFIG,
                (&raw mut config).cast(),
                0,
                len,
                Some(stop),
            )
        };
        if nt_success(status) && written >= len as usize {
            dev.guest_cid = Some(config.guest_cid);
        } else {
            klog_status!(
                Level::Warn,
                routine::VSOCK_CONNECT,
                status,
                "viosock IOCTL_GET_CONFIG failed ({} bytes)",
                written
            );
        }
        Ok(dev)
    }

    /// The symbolic link's UTF-16 units (any IRQL).
    #[must_use]
    pub fn link_units(&self) -> &[u16] {
        &self.link[..self.link_len]
    }
}

impl Drop for ViosockDevice {
    fn drop(&mut self) {
        if !self.file.is_null() {
            // SAFETY: the reference IoGetDeviceObjectPointer gave us,
            // released once, after every socket using the device is gone
            // (the link loop drops sockets first).
            let _ = unsafe { ObfDereferenceObject(self.file.cast_const().cast()) };
        }
    }
}

/// Buffers of one connection, boxed so pending requests' pointers stay
/// valid while the owner moves. Non-paged (the driver's global allocator).
struct IoBlock {
    receive: [u8; RECEIVE_BUFFER_BYTES],
    send: [u8; SEND_BUFFER_BYTES],
    /// The IOCTLs' system buffer (connect: 12 bytes in; shutdown: 4 in).
    control: [u8; 16],
    receive_mdl: *mut MDL,
}

/// A connected viosock stream socket. See the module docs.
pub struct ViosockConnection {
    /// The control file's device (top of viosock's stack); the socket's
    /// file object was opened on the same link, so it is the same device.
    device: *mut DEVICE_OBJECT,
    handle: HANDLE,
    file: *mut FILE_OBJECT,
    io: Box<IoBlock>,
    receive_irp: ReusableIrp,
    send_irp: ReusableIrp,
    control_irp: ReusableIrp,
    received: usize,
}

// SAFETY: owned by the link thread; kernel objects inside are thread-agnostic.
unsafe impl Send for ViosockConnection {}

impl ViosockConnection {
    /// Creates a stream socket on `dev` and connects it to `{cid, port}`,
    /// waiting at most [`CONNECT_TIMEOUT`] or until `stop` is signalled
    /// (the connect is then cancelled). PASSIVE_LEVEL.
    pub fn connect(
        dev: &ViosockDevice,
        cid: u32,
        port: u32,
        stop: &KernelEvent,
    ) -> Result<Self, NTSTATUS> {
        // SAFETY: `dev` holds the device referenced.
        let stack_size = unsafe { (*dev.device).StackSize };
        let (receive_irp, send_irp, control_irp) = (
            ReusableIrp::with_stack_size(stack_size)?,
            ReusableIrp::with_stack_size(stack_size)?,
            ReusableIrp::with_stack_size(stack_size)?,
        );
        let layout = core::alloc::Layout::new::<IoBlock>();
        // SAFETY: IoBlock has a non-zero size.
        let raw = unsafe { alloc::alloc::alloc_zeroed(layout) }.cast::<IoBlock>();
        if raw.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        // SAFETY: freshly allocated with IoBlock's layout; IoBlock is bytes
        // and a pointer, for which all-zero is valid.
        let mut io: Box<IoBlock> = unsafe { Box::from_raw(raw) };
        io.receive_mdl = build_mdl(io.receive.as_mut_ptr(), RECEIVE_BUFFER_BYTES)?;
        let (handle, file) = match create_socket(dev) {
            Ok(h) => h,
            Err(s) => {
                // SAFETY: built above, used by nobody.
                unsafe { IoFreeMdl(io.receive_mdl) };
                return Err(s);
            }
        };
        // From here on, `conn`'s Drop closes the socket and frees the MDL.
        let mut conn = ViosockConnection {
            device: dev.device,
            handle,
            file,
            io,
            receive_irp,
            send_irp,
            control_irp,
            received: 0,
        };
        let addr = SOCKADDR_VM::new(cid, port).to_le_bytes();
        conn.io.control[..addr.len()].copy_from_slice(&addr);
        let request = Request::DeviceControl {
            code: IOCTL_SOCKET_CONNECT,
            system_buffer: conn.io.control.as_mut_ptr().cast(),
            in_len: addr.len() as u32,
            out_len: 0,
        };
        // SAFETY: device/file referenced (dev, conn); the system buffer is
        // in the boxed block, which outlives the request (we wait below).
        let _ = unsafe { conn.control_irp.send(conn.device, conn.file, request) };
        let (status, _) = match conn.control_irp.wait_or_cancel(Some(stop), CONNECT_TIMEOUT) {
            Ok(r) => r,
            Err((STATUS_CANCELLED, _)) => return Err(STATUS_IO_TIMEOUT),
            Err(r) => r,
        };
        if !nt_success(status) {
            return Err(status);
        }
        super::wsk_socket::set_live_receive(conn.receive_irp.raw());
        Ok(conn)
    }

    /// Sends `IOCTL_SOCKET_SHUTDOWN(SD_BOTH)` and waits at most
    /// [`SHUTDOWN_TIMEOUT`] (then cancels). PASSIVE_LEVEL.
    fn shutdown_both(&mut self) {
        self.io.control[..4].copy_from_slice(&SD_BOTH.to_le_bytes());
        let request = Request::DeviceControl {
            code: IOCTL_SOCKET_SHUTDOWN,
            system_buffer: self.io.control.as_mut_ptr().cast(),
            in_len: 4,
            out_len: 0,
        };
        // SAFETY: live socket; boxed system buffer outlives the request.
        let _ = unsafe { self.control_irp.send(self.device, self.file, request) };
        let (Ok((status, _)) | Err((status, _))) =
            self.control_irp.wait_or_cancel(None, SHUTDOWN_TIMEOUT);
        klog_status!(
            Level::Debug,
            routine::VSOCK_CONNECT,
            status,
            "viosock shutdown"
        );
    }

    /// Closes the handle (viosock's cleanup resets the connection and
    /// completes whatever is still queued) and drops the file object's
    /// reference. PASSIVE_LEVEL; no request may be outstanding.
    fn close(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: the kernel handle ZwCreateFile gave us, closed once.
            let _ = unsafe { ZwClose(self.handle) };
            self.handle = core::ptr::null_mut();
        }
        if !self.file.is_null() {
            // SAFETY: the reference ObReferenceObjectByHandle took, released
            // once, after every request on it completed.
            let _ = unsafe { ObfDereferenceObject(self.file.cast_const().cast()) };
            self.file = core::ptr::null_mut();
        }
    }
}

/// `ZwCreateFile` on the device's link with the stream-socket EA, then the
/// file object of the new kernel handle (PASSIVE_LEVEL).
fn create_socket(dev: &ViosockDevice) -> Result<(HANDLE, *mut FILE_OBJECT), NTSTATUS> {
    let name = unicode_string_for(dev.link_units()).ok_or(STATUS_INVALID_PARAMETER)?;
    // InitializeObjectAttributes(&oa, &name, OBJ_CASE_INSENSITIVE |
    // OBJ_KERNEL_HANDLE, NULL, NULL) (wdm.h macro).
    let oa = OBJECT_ATTRIBUTES {
        Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: core::ptr::null_mut(),
        ObjectName: &name,
        Attributes: (OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE) as _,
        SecurityDescriptor: core::ptr::null(),
        SecurityQualityOfService: core::ptr::null(),
    };
    // FILE_FULL_EA_INFORMATION is ULONG-aligned; keep the copy aligned even
    // though the I/O manager copies it into pool for the driver.
    #[repr(C, align(8))]
    struct AlignedEa([u8; VIOSOCK_CREATE_EA_BYTES]);
    let ea = AlignedEa(NEW_STREAM_SOCKET_EA);
    let mut handle: HANDLE = core::ptr::null_mut();
    // SAFETY: all-zero is a valid IO_STATUS_BLOCK.
    let mut iosb: IO_STATUS_BLOCK = unsafe { core::mem::zeroed() };
    // SAFETY: `oa` and `name` live for the call; the EA buffer is a local
    // the I/O manager copies; out-pointers to locals. The access, share
    // mode, disposition and options are VioWsk's.
    let status = unsafe {
        ZwCreateFile(
            &mut handle,
            FILE_GENERIC_READ | FILE_GENERIC_WRITE,
            &oa,
            &mut iosb,
            core::ptr::null(),
            0,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            FILE_OPEN,
            FILE_NON_DIRECTORY_FILE,
            ea.0.as_ptr().cast(),
            ea.0.len() as u32,
        )
    };
    if !nt_success(status) {
        klog_status!(
            Level::Warn,
            routine::VSOCK_CONNECT,
            status,
            "viosock socket create failed"
        );
        return Err(status);
    }
    let mut object: *mut c_void = core::ptr::null_mut();
    // SAFETY: the kernel handle just opened; IoFileObjectType is the file
    // object type (exported data, valid after boot); KernelMode access.
    let status = unsafe {
        ObReferenceObjectByHandle(
            handle,
            FILE_GENERIC_READ | FILE_GENERIC_WRITE,
            IoFileObjectType as isize,
            KernelMode as i8,
            &mut object,
            core::ptr::null_mut(),
        )
    };
    if !nt_success(status) {
        // SAFETY: the handle we own, closed once.
        let _ = unsafe { ZwClose(handle) };
        return Err(status);
    }
    Ok((handle, object.cast()))
}

impl Transport for ViosockConnection {
    fn start_receive(&mut self) -> Result<(), NTSTATUS> {
        if self.receive_irp.in_flight() {
            return Ok(());
        }
        if self.file.is_null() {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        self.received = 0;
        let request = Request::Read {
            mdl: self.io.receive_mdl,
            len: RECEIVE_BUFFER_BYTES as u32,
        };
        // SAFETY: live socket; the MDL and its buffer are in the boxed block,
        // which outlives the request (Drop cancels and waits).
        let _ = unsafe { self.receive_irp.send(self.device, self.file, request) };
        Ok(())
    }

    fn receive_event(&self) -> *const c_void {
        self.receive_irp.event().as_object()
    }

    fn take_received(&mut self) -> Result<&[u8], NTSTATUS> {
        let info = self.receive_irp.take_completed()?;
        self.received = info.min(RECEIVE_BUFFER_BYTES);
        Ok(&self.io.receive[..self.received])
    }

    fn send_all(&mut self, bytes: &[u8], timeout_ms: u32) -> Result<(), NTSTATUS> {
        if self.file.is_null() {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        send_chunked(bytes, SEND_BUFFER_BYTES, timeout, |piece, left| {
            let n = piece.len();
            self.io.send[..n].copy_from_slice(piece);
            // An MDL of exactly `n` bytes: the write's length and its
            // buffer's byte count agree, whichever viosock reads.
            let mdl = build_mdl(self.io.send.as_mut_ptr(), n)?;
            let request = Request::Write { mdl, len: n as u32 };
            // SAFETY: live socket; MDL and buffer outlive the request (we
            // wait for completion, cancelling on timeout, before freeing).
            let _ = unsafe { self.send_irp.send(self.device, self.file, request) };
            let result = self
                .send_irp
                .wait_or_cancel(None, left)
                .map_err(|_| STATUS_IO_TIMEOUT);
            // SAFETY: the request has completed; nobody uses the MDL.
            unsafe { IoFreeMdl(mdl) };
            result
        })
    }

    fn shutdown(&mut self) {
        if self.file.is_null() {
            return;
        }
        super::wsk_socket::clear_live_receive(self.receive_irp.raw());
        if self.receive_irp.in_flight() {
            let _ = self.receive_irp.cancel_and_wait();
        }
        if self.send_irp.in_flight() {
            let _ = self.send_irp.cancel_and_wait();
        }
        self.shutdown_both();
        self.close();
    }
}

impl Drop for ViosockConnection {
    fn drop(&mut self) {
        super::wsk_socket::clear_live_receive(self.receive_irp.raw());
        // Complete every request before the socket, MDL and buffers go.
        let _ = self.receive_irp.cancel_and_wait();
        let _ = self.send_irp.cancel_and_wait();
        let _ = self.control_irp.cancel_and_wait();
        self.close();
        if !self.io.receive_mdl.is_null() {
            // SAFETY: no request is outstanding; built in `connect`, freed once.
            unsafe { IoFreeMdl(self.io.receive_mdl) };
        }
    }
}
