//! `IoCreateDeviceSecure` (`wdmsec.h`): a device object with an SDDL
//! security descriptor and a class GUID, so that the ACL holds even before
//! (and regardless of) any INF or registry override.
//!
//! In `wdmsec.h`, `IoCreateDeviceSecure` is a macro for
//! `WdmlibIoCreateDeviceSecure`, which lives in the WDK's static library
//! `wdmsec.lib` (`Lib\<version>\km\<arch>\wdmsec.lib`), not in an image the
//! kernel exports: the driver links that library in. No binding crate has it
//! (windows-sys has no `wdmsec` module; wdk-sys 0.5 does not generate
//! `wdmsec.h`).
//!
//! Doc page: learn.microsoft.com/windows-hardware/drivers/ddi/wdmsec/nf-wdmsec-wdmlibiocreatedevicesecure
//! (PASSIVE_LEVEL).

#[cfg(windows)]
use windows_sys::Wdk::Foundation::{DEVICE_OBJECT, DRIVER_OBJECT};
#[cfg(windows)]
use windows_sys::Win32::Foundation::{NTSTATUS, UNICODE_STRING};

#[cfg(windows)]
use crate::nt::GUID;

// `wdmsec.lib` is a static library; on `*-windows-msvc` a plain
// `#[link(name)]` hands `wdmsec.lib` to link.exe, which resolves it from the
// library path wdk-build configures for the driver (the WDK's `km\x64`
// directory). `kind = "static"` would make rustc look for it when building
// this crate, where that path is not set.
#[cfg(windows)]
#[link(name = "wdmsec")]
unsafe extern "system" {
    /// `WdmlibIoCreateDeviceSecure` (`wdmsec.h`, wdmsec.lib; PASSIVE_LEVEL).
    ///
    /// Same parameters as `IoCreateDevice`, plus `DefaultSDDLString` (the
    /// device's security descriptor, e.g. `D:P(A;;GA;;;SY)(A;;GA;;;BA)`) and
    /// `DeviceClassGuid` (a GUID of the driver's own, under which an
    /// administrator may override the SDDL in the registry).
    pub fn WdmlibIoCreateDeviceSecure(
        DriverObject: *const DRIVER_OBJECT,
        DeviceExtensionSize: u32,
        DeviceName: *const UNICODE_STRING,
        DeviceType: u32,
        DeviceCharacteristics: u32,
        Exclusive: bool,
        DefaultSDDLString: *const UNICODE_STRING,
        DeviceClassGuid: *const GUID,
        DeviceObject: *mut *mut DEVICE_OBJECT,
    ) -> NTSTATUS;
}
