//! Windows kernel-mode side of the driver.
//!
//! **Build scaffold.** This is the smallest real driver that exercises the
//! whole windows-drivers-rs flow (bindings, allocator, panic handler, linker
//! settings, `cargo make` packaging, INF, test signing): `DriverEntry` sets an
//! unload routine, prints one log line and succeeds. It registers no filter.
//! The minifilter proper (issue 5: `FltRegisterFilter`, the capture of the
//! VMware vSockets provider with IOCTL `0x810320C0` on `\Device\vmci` in a
//! bounded retry loop, the host session and the open-time verdicts) replaces
//! the body of `driver_entry` and adds its own modules here.
//!
//! Every name used below was checked against the sources, because nothing
//! Windows-specific compiles on the Linux machines this project is developed
//! on:
//! - `wdk_sys::{DRIVER_OBJECT, NTSTATUS, PCUNICODE_STRING, STATUS_SUCCESS}`,
//!   `wdk::println!`, the `DriverEntry` signature, and
//!   `driver.DriverUnload = Some(f)` with `extern "C" fn f(*mut DRIVER_OBJECT)`:
//!   windows-drivers-rs `examples/sample-wdm-driver/src/lib.rs` (commit
//!   7d3000c6) and `crates/cargo-wdk/templates/wdm/lib.rs.tmp`.
//! - `STATUS_SUCCESS: NTSTATUS = 0_i32`: wdk-sys 0.5.2 `src/constants.rs`.
//! - `wdk::println!` formats with `core::fmt` and sends the text through
//!   `DbgPrint` (component DEFAULT, level INFO): wdk 0.5.0 `src/print.rs`.
//! - `wdk_alloc::WdkAllocator` allocates with `ExAllocatePool2` (Windows 10
//!   2004 or later), pool tag `rust`: wdk-alloc 0.4.2 `src/lib.rs`.
//! - `wdk_panic` turns a panic into a bug check with code `0x52504E43`
//!   ("RPNC"), after a debug break in debug builds: wdk-panic 0.5.0
//!   `src/lib.rs`.

#[cfg(not(test))]
extern crate wdk_panic;

use wdk::println;
use wdk_sys::{DRIVER_OBJECT, NTSTATUS, PCUNICODE_STRING, STATUS_SUCCESS};

/// Kernel pool allocator behind `alloc` (non-paged pool, tag `rust`).
#[cfg(not(test))]
#[global_allocator]
static GLOBAL_ALLOCATOR: wdk_alloc::WdkAllocator = wdk_alloc::WdkAllocator;

/// Driver entry point, called once by the I/O manager at `PASSIVE_LEVEL` when
/// the service starts (at boot, by `fltmc load thinagent` or by
/// `sc start thinagent`).
///
/// Scaffold: it sets [`driver_unload`], logs one line in the seed's
/// `LEVEL: Routine : message: 0xSTATUS` shape and returns `STATUS_SUCCESS`.
/// Load and unload are `AUDIT` lines, the level `thinagent_guest::log`
/// always prints; issue 5 formats its lines with that module.
///
/// # Safety
///
/// Called only by the I/O manager, with `driver` pointing to this driver's
/// own, writable `DRIVER_OBJECT` and `registry_path` to its service key name.
// SAFETY: "DriverEntry" is the symbol name the kernel loader calls; no other
// item in this crate exports that name.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: &mut DRIVER_OBJECT,
    registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    // Issue 5 reads the Parameters subkey of this service key.
    let _ = registry_path;

    driver.DriverUnload = Some(driver_unload);

    let status = STATUS_SUCCESS;
    println!("AUDIT: DriverEntry : ThinAgent loaded: {status:#010x}");
    status
}

/// Unload routine (`DRIVER_OBJECT::DriverUnload`), called at `PASSIVE_LEVEL`
/// by `fltmc unload` / `sc stop`. The scaffold has nothing to release.
extern "C" fn driver_unload(_driver: *mut DRIVER_OBJECT) {
    println!("AUDIT: DriverUnload : ThinAgent unloaded: {STATUS_SUCCESS:#010x}");
}
