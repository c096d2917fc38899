//! The byte stream [`super::session_worker`] runs the protocol over, as a
//! trait so the worker does not depend on how the socket was made
//! ([`super::wsk_socket`] implements it for a WSK connection socket through
//! the captured vSockets provider).
//!
//! The worker's loop waits on several things at once (received data, new
//! queries to send, unload) with `KeWaitForMultipleObjects`, so receiving is
//! split in two: [`Transport::start_receive`] posts one receive whose
//! completion signals [`Transport::receive_event`], and
//! [`Transport::take_received`] collects it once that event is signalled.

use core::ffi::c_void;

use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::NTSTATUS;

/// A connected, reliable byte stream to the host scanner. All methods run at
/// PASSIVE_LEVEL on the session worker thread, the only user.
pub trait Transport {
    /// Posts one receive into the transport's own buffer unless one is
    /// already outstanding. Its completion (data, end of stream or error)
    /// signals [`Transport::receive_event`].
    fn start_receive(&mut self) -> Result<(), NTSTATUS>;

    /// The event the outstanding receive signals, as a dispatcher object
    /// pointer for `KeWaitForMultipleObjects`. Stable for the transport's
    /// lifetime.
    fn receive_event(&self) -> *const c_void;

    /// After [`Transport::receive_event`] is signalled: the bytes received
    /// (an empty slice means the peer closed the stream), or the error the
    /// receive completed with. Clears the event; call
    /// [`Transport::start_receive`] again for more.
    fn take_received(&mut self) -> Result<&[u8], NTSTATUS>;

    /// Sends all of `bytes`, waiting at most `timeout_ms` in total; an error
    /// (including `STATUS_TIMEOUT`, reported as `STATUS_IO_TIMEOUT`) means the
    /// stream is no longer usable.
    fn send_all(&mut self, bytes: &[u8], timeout_ms: u32) -> Result<(), NTSTATUS>;

    /// Disconnects and waits until no I/O is outstanding; afterwards the
    /// transport can only be dropped.
    fn shutdown(&mut self);
}
