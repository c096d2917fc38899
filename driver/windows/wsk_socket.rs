//! A WSK connection socket through the captured vSockets provider, as the
//! [`Transport`] the session worker speaks the protocol over.
//!
//! [`WskProvider`] is what the capture produced and the checks in
//! [`super::vsock_capture`] accepted: the provider's `Client` handle, a
//! *copy* of its `WSK_PROVIDER_DISPATCH`, and the image range its functions
//! were checked against. [`WskConnection::connect`] calls
//! `WskSocketConnect` (`SOCK_STREAM`, local `{AF, CID_ANY, PORT_ANY}`,
//! remote `{AF, host CID, host port}`; `WskSocketConnect` always makes a
//! `WSK_FLAG_CONNECTION_SOCKET`), checks the new socket's connection
//! dispatch the same way, and copies only its first 80 bytes (up to
//! `WskRelease`): a provider built against a pre-RS2 `wsk.h` has no more.
//!
//! Each kind of operation owns one IRP ([`ReusableIrp`]: receive, send,
//! control = connect/disconnect/close), whose completion routine signals an
//! event — the pattern of virtio-win's WSK test client
//! (`viosock/tests/viosock-wsk-test`). Data goes through two non-paged
//! buffers described by MDLs built once (`IoAllocateMdl` +
//! `MmBuildMdlForNonPagedPool`); the `WSK_BUF`s live in the same boxed
//! block, so nothing a pending request points to ever moves.
//!
//! Routines: IoAllocateMdl + MmBuildMdlForNonPagedPool through
//! [`super::irp::build_mdl`], IoFreeMdl
//! (learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-iofreemdl), MmIsAddressValid
//! (…/ntddk/nf-ntddk-mmisaddressvalid); the WSK dispatch functions
//! (…/wsk/nc-wsk-pfn_wsk_socket_connect, pfn_wsk_send, pfn_wsk_receive,
//! pfn_wsk_disconnect, pfn_wsk_close_socket). All PASSIVE_LEVEL here (WSK
//! functions allow <= DISPATCH_LEVEL; their completions run at
//! <= DISPATCH_LEVEL).

use alloc::boxed::Box;
use core::ffi::c_void;
use core::time::Duration;

use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::{IRP, MDL};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    IoFreeMdl, MmIsAddressValid,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::NTSTATUS;
use thinagent_km_sys::ntoskrnl::{
    STATUS_INVALID_DEVICE_STATE, STATUS_IO_TIMEOUT, STATUS_NOT_SUPPORTED,
};
use thinagent_km_sys::vmci::{
    CONNECTION_DISPATCH_BYTES, ImageRange, SOCKADDR_VM, check_connection_dispatch,
};
use thinagent_km_sys::wsk::{
    SOCK_STREAM, WSK_BUF, WSK_PROVIDER_BASIC_DISPATCH, WSK_PROVIDER_CONNECTION_DISPATCH,
    WSK_PROVIDER_DISPATCH, WSK_SOCKET,
};

use super::irp::{ReusableIrp, build_mdl, send_chunked};
use super::kernel::{KernelEvent, STATUS_INSUFFICIENT_RESOURCES, SpinLock};
use super::transport::Transport;
use crate::klog_status;
use thinagent_guest::Level;
use thinagent_guest::log::routine;

/// Receive buffer size: one receive never asks for more.
pub const RECEIVE_BUFFER_BYTES: usize = 64 * 1024;
/// Send buffer size: larger frames are sent in pieces of this size.
pub const SEND_BUFFER_BYTES: usize = 64 * 1024;
/// How long `WskSocketConnect` may take before it is cancelled.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful `WskDisconnect` may take before it is cancelled (the
/// close that follows is then abortive).
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The captured provider, checked (see the module docs). Plain data: the
/// reference that keeps the provider's driver loaded is held by
/// [`super::vsock_capture`] for as long as this is used.
#[derive(Clone, Copy, Debug)]
pub struct WskProvider {
    /// `WSK_PROVIDER_NPI.Client`: first argument of provider-level calls.
    pub client: *mut c_void,
    /// Copy of the provider's dispatch table.
    pub dispatch: WSK_PROVIDER_DISPATCH,
    /// The image every function pointer was checked to lie in.
    pub image: ImageRange,
    /// The vSockets address family (get-AF IOCTL).
    pub family: u16,
}

// SAFETY: the client handle and function pointers are usable from any
// thread; only the link thread uses them.
unsafe impl Send for WskProvider {}

/// Buffers, MDLs and `WSK_BUF`s of one connection, boxed so that pending
/// requests' pointers into it stay valid while the owner moves.
struct IoBlock {
    receive: [u8; RECEIVE_BUFFER_BYTES],
    send: [u8; SEND_BUFFER_BYTES],
    receive_mdl: *mut MDL,
    send_mdl: *mut MDL,
    receive_buf: WSK_BUF,
    send_buf: WSK_BUF,
    local: SOCKADDR_VM,
    remote: SOCKADDR_VM,
}

/// The receive IRP of the live connection, so [`cancel_pending_receive`]
/// (unload, another thread) can cut the session worker's wait short. Set and
/// cleared under the lock; the IRP is freed only after it is cleared.
static LIVE_RECEIVE_IRP: SpinLock<usize> = SpinLock::new(0);

/// Initialises this module's lock (PASSIVE_LEVEL, before the link thread
/// starts; `SpinLock::new` already holds the released value, this only makes
/// it explicit with `KeInitializeSpinLock`).
pub fn init() {
    LIVE_RECEIVE_IRP.init();
}

/// The lock guarding [`LIVE_RECEIVE_IRP`] (any IRQL).
fn live_receive_lock() -> &'static SpinLock<usize> {
    &LIVE_RECEIVE_IRP
}

/// Registers `irp` as the live connection's receive IRP (the WSK or the
/// viosock connection's), for [`cancel_pending_receive`]. IRQL <=
/// DISPATCH_LEVEL.
pub(super) fn set_live_receive(irp: *mut IRP) {
    live_receive_lock().with(|p| *p = irp as usize);
}

/// Unregisters `irp` if it is the registered one; call before the IRP is
/// freed. IRQL <= DISPATCH_LEVEL.
pub(super) fn clear_live_receive(irp: *mut IRP) {
    live_receive_lock().with(|p| {
        if *p == irp as usize {
            *p = 0;
        }
    });
}

/// Cancels the live connection's outstanding receive, if any, so a session
/// worker waiting for data wakes up (its receive completes with
/// `STATUS_CANCELLED`). For unload; IRQL <= DISPATCH_LEVEL.
pub fn cancel_pending_receive() {
    live_receive_lock().with(|irp| {
        if *irp != 0 {
            // SAFETY: the pointer is registered only while its ReusableIrp
            // is alive; it is cleared under this lock before being freed.
            unsafe { ReusableIrp::cancel_raw(*irp as *mut IRP) };
        }
    });
}

/// A connected WSK stream socket. See the module docs.
pub struct WskConnection {
    socket: *mut WSK_SOCKET,
    dispatch: WSK_PROVIDER_CONNECTION_DISPATCH,
    io: Box<IoBlock>,
    receive_irp: ReusableIrp,
    send_irp: ReusableIrp,
    control_irp: ReusableIrp,
    received: usize,
}

// SAFETY: owned by the link thread; kernel objects inside are thread-agnostic.
unsafe impl Send for WskConnection {}

/// Whether `len` bytes at `p` can be read without a page fault
/// (`MmIsAddressValid` on the first and last byte; PASSIVE_LEVEL here).
pub(super) fn readable(p: *const c_void, len: usize) -> bool {
    if p.is_null() {
        return false;
    }
    let last = p.cast::<u8>().wrapping_add(len - 1);
    // SAFETY: MmIsAddressValid only probes the page tables.
    unsafe { MmIsAddressValid(p) && MmIsAddressValid(last.cast()) }
}

impl WskConnection {
    /// Creates, binds and connects a stream socket to `{cid, port}` through
    /// `provider` (`WskSocketConnect`), waiting at most [`CONNECT_TIMEOUT`]
    /// or until `stop` is signalled (the request is then cancelled).
    pub fn connect(
        provider: &WskProvider,
        cid: u32,
        port: u32,
        stop: &KernelEvent,
    ) -> Result<Self, NTSTATUS> {
        let Some(socket_connect) = provider.dispatch.WskSocketConnect else {
            return Err(STATUS_INVALID_DEVICE_STATE);
        };
        // The IRPs first: once the MDLs exist, `conn`'s Drop must free them.
        let (receive_irp, send_irp, control_irp) = (
            ReusableIrp::new()?,
            ReusableIrp::new()?,
            ReusableIrp::new()?,
        );
        let layout = core::alloc::Layout::new::<IoBlock>();
        // SAFETY: IoBlock has a non-zero size.
        let raw = unsafe { alloc::alloc::alloc_zeroed(layout) }.cast::<IoBlock>();
        if raw.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        // SAFETY: freshly allocated with IoBlock's layout; IoBlock is plain
        // data (bytes, pointers, WSK_BUF, SOCKADDR_VM), for which all-zero is
        // valid; everything is set below.
        let mut io: Box<IoBlock> = unsafe { Box::from_raw(raw) };
        io.local = SOCKADDR_VM::local_any(provider.family);
        io.remote = SOCKADDR_VM::remote(provider.family, cid, port);
        io.receive_mdl = build_mdl(io.receive.as_mut_ptr(), RECEIVE_BUFFER_BYTES)?;
        io.send_mdl = match build_mdl(io.send.as_mut_ptr(), SEND_BUFFER_BYTES) {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: allocated just above, used by nobody.
                unsafe { IoFreeMdl(io.receive_mdl) };
                return Err(e);
            }
        };
        io.receive_buf = WSK_BUF {
            Mdl: io.receive_mdl.cast(),
            Offset: 0,
            Length: RECEIVE_BUFFER_BYTES,
        };
        io.send_buf = WSK_BUF {
            Mdl: io.send_mdl.cast(),
            Offset: 0,
            Length: 0,
        };
        let mut conn = WskConnection {
            socket: core::ptr::null_mut(),
            // SAFETY: a table of `Option<fn>`s and raw pointers: all-zero
            // is all-NULL; replaced by the checked copy before any use.
            dispatch: unsafe { core::mem::zeroed() },
            io,
            receive_irp,
            send_irp,
            control_irp,
            received: 0,
        };
        let irp = conn.control_irp.arm();
        let local = conn.io.local.as_sockaddr_mut().cast();
        let remote = conn.io.remote.as_sockaddr_mut().cast();
        // SAFETY: checked provider function (WSK signature, in the provider
        // image); addresses live in the boxed block until completion; no
        // event callbacks (NULL dispatch), kernel-owned socket (no process,
        // thread or security descriptor); the IRP is ours and armed.
        let _ = unsafe {
            socket_connect(
                provider.client,
                SOCK_STREAM,
                0,
                local,
                remote,
                0,
                core::ptr::null_mut(),
                core::ptr::null(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                irp,
            )
        };
        // Timed out or unload: cancelled. If it connected just before the
        // cancel took effect, go on as for a normal completion so the
        // socket is checked and later closed.
        let (status, info) = match conn.control_irp.wait_or_cancel(Some(stop), CONNECT_TIMEOUT) {
            Ok(r) => r,
            Err((super::kernel::STATUS_CANCELLED, _)) => return Err(STATUS_IO_TIMEOUT),
            Err(r) => r,
        };
        if status < 0 {
            return Err(status);
        }
        let socket = info as *mut WSK_SOCKET;
        if !readable(socket.cast(), size_of::<WSK_SOCKET>()) {
            klog_status!(
                Level::Error,
                routine::VSOCK_CONNECT,
                STATUS_INVALID_DEVICE_STATE,
                "WskSocketConnect returned no readable socket ({:#x})",
                info
            );
            return Err(STATUS_NOT_SUPPORTED);
        }
        // SAFETY: readable, checked above.
        let table = unsafe { (*socket).Dispatch };
        if !provider
            .image
            .contains_range(table as usize as u64, CONNECTION_DISPATCH_BYTES as u64)
            || !readable(table, CONNECTION_DISPATCH_BYTES)
        {
            klog_status!(
                Level::Error,
                routine::VSOCK_CONNECT,
                STATUS_INVALID_DEVICE_STATE,
                "socket dispatch table {:#x} is not a readable table inside the provider image; socket left open",
                table as usize
            );
            return Err(STATUS_NOT_SUPPORTED);
        }
        let mut raw = [0u8; CONNECTION_DISPATCH_BYTES];
        // SAFETY: readable for 80 bytes (first and last page present; the
        // table is at most two pages).
        unsafe {
            core::ptr::copy_nonoverlapping(table.cast::<u8>(), raw.as_mut_ptr(), raw.len());
        }
        if let Err(problem) = check_connection_dispatch(&raw, provider.image) {
            // Close the socket if at least its WskCloseSocket (offset 8) is
            // a function inside the provider image.
            let mut close = [0u8; 8];
            close.copy_from_slice(&raw[8..16]);
            let close = u64::from_le_bytes(close);
            let closed = close != 0 && provider.image.contains(close);
            if closed {
                // SAFETY: a non-NULL code address inside the provider image,
                // at the WskCloseSocket slot of the table the provider gave
                // this socket; same PFN_WSK_CLOSE_SOCKET ABI.
                let f: unsafe extern "system" fn(
                    *mut WSK_SOCKET,
                    *mut thinagent_km_sys::nt::IRP,
                ) -> NTSTATUS = unsafe { core::mem::transmute(close as usize) };
                let irp = conn.control_irp.arm();
                // SAFETY: the socket this provider just created; armed IRP.
                let _ = unsafe { f(socket, irp) };
                let _ = conn.control_irp.wait(None, None);
            }
            klog_status!(
                Level::Error,
                routine::VSOCK_CONNECT,
                STATUS_NOT_SUPPORTED,
                "socket dispatch refused ({}: {:?}); socket {}",
                problem.describe(),
                problem,
                if closed { "closed" } else { "left open" }
            );
            return Err(STATUS_NOT_SUPPORTED);
        }
        // SAFETY: same source; only the first 80 bytes (pre-RS2 size) are
        // read, the RS2 tail stays NULL in our copy.
        unsafe {
            core::ptr::copy_nonoverlapping(
                table.cast::<u8>(),
                (&raw mut conn.dispatch).cast::<u8>(),
                CONNECTION_DISPATCH_BYTES,
            );
        }
        conn.socket = socket;
        set_live_receive(conn.receive_irp.raw());
        Ok(conn)
    }

    /// The basic part of the checked socket dispatch (any IRQL).
    fn basic(&self) -> WSK_PROVIDER_BASIC_DISPATCH {
        self.dispatch.Basic
    }

    /// Closes the socket (`WskCloseSocket`, which cannot be cancelled, so
    /// it is waited for without a timeout). PASSIVE_LEVEL.
    fn close_socket(&mut self) {
        if self.socket.is_null() {
            return;
        }
        if let Some(close) = self.basic().WskCloseSocket {
            let irp = self.control_irp.arm();
            // SAFETY: checked function, our live socket, armed IRP.
            let _ = unsafe { close(self.socket, irp) };
            let _ = self.control_irp.wait(None, None);
        }
        self.socket = core::ptr::null_mut();
    }
}

impl Transport for WskConnection {
    fn start_receive(&mut self) -> Result<(), NTSTATUS> {
        if self.receive_irp.in_flight() {
            return Ok(());
        }
        if self.socket.is_null() {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        let Some(receive) = self.dispatch.WskReceive else {
            return Err(STATUS_INVALID_DEVICE_STATE);
        };
        self.received = 0;
        let irp = self.receive_irp.arm();
        // SAFETY: checked function; the WSK_BUF and its MDL live in the
        // boxed block until the IRP completes; armed IRP.
        let _ = unsafe { receive(self.socket, &raw mut self.io.receive_buf, 0, irp) };
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
        if self.socket.is_null() {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        let Some(send) = self.dispatch.WskSend else {
            return Err(STATUS_INVALID_DEVICE_STATE);
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        send_chunked(bytes, SEND_BUFFER_BYTES, timeout, |piece, left| {
            let n = piece.len();
            self.io.send[..n].copy_from_slice(piece);
            self.io.send_buf.Length = n;
            let irp = self.send_irp.arm();
            // SAFETY: checked function; WSK_BUF/MDL in the boxed block,
            // stable until completion; armed IRP.
            let _ = unsafe { send(self.socket, &raw mut self.io.send_buf, 0, irp) };
            self.send_irp
                .wait_or_cancel(None, left)
                .map_err(|_| STATUS_IO_TIMEOUT)
        })
    }

    fn shutdown(&mut self) {
        if self.socket.is_null() {
            return;
        }
        if self.receive_irp.in_flight() {
            let _ = self.receive_irp.cancel_and_wait();
        }
        if self.send_irp.in_flight() {
            let _ = self.send_irp.cancel_and_wait();
        }
        if let Some(disconnect) = self.dispatch.WskDisconnect {
            let irp = self.control_irp.arm();
            // SAFETY: checked function, live socket, NULL buffer = no final
            // data, flags 0 = graceful; armed IRP.
            let _ = unsafe { disconnect(self.socket, core::ptr::null_mut(), 0, irp) };
            let _ = self.control_irp.wait_or_cancel(None, DISCONNECT_TIMEOUT);
        }
        self.close_socket();
    }
}

impl Drop for WskConnection {
    fn drop(&mut self) {
        clear_live_receive(self.receive_irp.raw());
        self.shutdown();
        // The IRPs cancel and wait for anything still outstanding when they
        // drop (after this body); MDLs must outlive them, so complete every
        // request first.
        let _ = self.receive_irp.cancel_and_wait();
        let _ = self.send_irp.cancel_and_wait();
        let _ = self.control_irp.cancel_and_wait();
        // SAFETY: no request is outstanding; the MDLs were built in
        // `connect` and are freed once.
        unsafe {
            if !self.io.receive_mdl.is_null() {
                IoFreeMdl(self.io.receive_mdl);
            }
            if !self.io.send_mdl.is_null() {
                IoFreeMdl(self.io.send_mdl);
            }
        }
    }
}
