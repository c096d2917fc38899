//! Windows kernel-mode side of the driver: the adapters between the kernel
//! and the portable crates (`thinagent-guest` decides, these modules do).
//!
//! | module | what it does | runs at |
//! |---|---|---|
//! | [`driver_entry`] | `DriverEntry`, unload order | PASSIVE |
//! | [`registry_params`] | `Parameters` key -> [`thinagent_guest::Params`] | PASSIVE |
//! | [`control_device`] | `\Device\ThinAgent`: state and debug-level IOCTLs | PASSIVE |
//! | [`vsock_capture`] | the vSockets provider capture loop, its thread, boot re-init, virtio PnP | PASSIVE |
//! | [`wsk_socket`] | a WSK connection socket through the captured provider | PASSIVE (completions ≤ DISPATCH) |
//! | [`session_worker`] | pumps [`thinagent_guest::Session`] over the socket | PASSIVE |
//! | [`filter_callbacks`] | create / cleanup / write / set-info / FSCTL callbacks | PASSIVE/APC |
//! | [`host_actions`] | protocol §14: Remediate, ScanTree, Policy, Health, on a thread of their own | PASSIVE |
//! | [`agent`] | the one global: parameters, statistics, shutdown flag | any |
//! | [`kernel`] | events, spin lock, time, UNICODE_STRING, the pointer casts | any |
//! | [`log`] | `DbgPrintEx` sink for [`thinagent_guest::LogRecord`] | any |
//!
//! **Bindings.** Every kernel routine comes from `windows-sys` (Microsoft's
//! generated crate: `Wdk_*` features) or, where that crate has nothing or
//! binds the wrong library, from `thinagent-km-sys`. That is a deliberate
//! choice: `wdk-sys` can only be generated on a Windows host with the WDK,
//! whereas windows-sys builds here, so `.ci/build-driver` compiles and links
//! this whole module for `x86_64-pc-windows-msvc` on Linux with
//! `--cfg thinagent_no_wdk` (`no_wdk.rs` stands in for the two crates below).
//! On Windows, windows-drivers-rs provides the build (`wdk-build`), the
//! allocator (`wdk-alloc`) and the panic handler (`wdk-panic`). Every
//! windows-sys routine used must be imported from a kernel module
//! (`ntoskrnl.exe`, `fltmgr.sys`, `hal.dll`, `netio.sys`): windows-sys also
//! binds user-mode `ntdll.dll` routines under `Wdk`, and a driver importing
//! from ntdll does not load. `tests/driver_pe.rs` checks
//! that rule on the import table of the linked `thinagent.sys`.

#[cfg(not(any(test, thinagent_no_wdk)))]
extern crate wdk_panic;

/// Kernel pool allocator behind `alloc` (non-paged pool, tag `rust`;
/// `ExAllocatePool2`, so Windows 10 2004 or later).
#[cfg(not(any(test, thinagent_no_wdk)))]
#[global_allocator]
static GLOBAL_ALLOCATOR: wdk_alloc::WdkAllocator = wdk_alloc::WdkAllocator;

#[cfg(thinagent_no_wdk)]
mod no_wdk;

pub mod agent;
pub mod control_device;
pub mod driver_entry;
pub mod filter_callbacks;
pub mod host_actions;
pub mod irp;
pub mod kernel;
pub mod log;
pub mod registry_params;
pub mod restore;
pub mod session_worker;
pub mod transport;
pub mod viosock_socket;
pub mod vsock_capture;
pub mod wsk_socket;
