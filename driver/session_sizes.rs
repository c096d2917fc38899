//! The sizes of the driver's `thinagent_guest::Session`, in one place.
//!
//! `driver/windows/session_worker.rs` runs a [`DriverSession`] and sizes its
//! static waiter slots and path buffers with [`SLOTS`] and [`PATH_BYTES`];
//! `tests/driver_call_sequence.rs` includes this file (by `#[path]`, since
//! the root package is a `cdylib` that integration tests cannot `use`) so the
//! test drives a session of exactly the driver's sizes.
//!
//! Portable: plain constants and a type alias, compiled on every host.

/// Waiter slots of the session worker, and query slots of the session (one
/// per waiting open).
pub const SLOTS: usize = 64;

/// Bytes of UTF-16LE path per slot: 1024 code units. A longer normalized
/// name is answered by the fail mode (logged at WARN).
pub const PATH_BYTES: usize = 2048;

/// Concurrent host reads the session accepts (`max_reads_in_flight`).
pub const READS: usize = 4;

/// The session type the driver's worker runs.
pub type DriverSession = thinagent_guest::Session<SLOTS, PATH_BYTES, READS>;
