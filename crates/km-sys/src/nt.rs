//! The NT types the WSK and VMCI bindings mention, modelled without `wdk-sys`.
//!
//! `wdk-sys` generates these from the WDK headers, but it only builds on a
//! Windows host with the WDK, and km-sys must compile and be tested on Linux.
//! So:
//!
//! * objects the kernel only ever hands out by pointer (`IRP`, `MDL`,
//!   `EPROCESS`, `ETHREAD`, `SECURITY_DESCRIPTOR`, `ADDRINFOEXW`) are opaque
//!   types: zero-sized, `!Send`, `!Sync`, `!Unpin`, impossible to construct
//!   or dereference from Rust. The driver casts its `wdk_sys` pointers to
//!   these (and back) in one module;
//! * types whose size matters because they are embedded or allocated by the
//!   caller (`SOCKADDR`, `UNICODE_STRING`, `GUID`) get their exact layout.

#![allow(non_camel_case_types, non_snake_case)]

use core::marker::{PhantomData, PhantomPinned};

/// `NTSTATUS` (`ntdef.h`: `typedef LONG NTSTATUS`), a 32-bit signed value.
/// Same representation as `wdk_sys::NTSTATUS` (`i32`).
pub type NTSTATUS = i32;

/// `KSPIN_LOCK` (`wdm.h`: `typedef ULONG_PTR KSPIN_LOCK`): pointer-sized.
pub type KSPIN_LOCK = usize;

/// `ADDRESS_FAMILY` (`ws2def.h`: `typedef USHORT ADDRESS_FAMILY`).
pub type ADDRESS_FAMILY = u16;

/// `STATUS_SUCCESS` (`ntstatus.h`).
pub const STATUS_SUCCESS: NTSTATUS = 0;
/// `STATUS_PENDING` (`ntstatus.h`: 0x00000103).
pub const STATUS_PENDING: NTSTATUS = 0x0000_0103;
/// `STATUS_DEVICE_BUSY` (`ntstatus.h`: 0x80000011), what the capture IOCTL
/// returns while `vmci.sys` has not started (the seed incident).
pub const STATUS_DEVICE_BUSY: NTSTATUS = 0x8000_0011_u32 as i32;

/// `STATUS_DEVICE_NOT_READY` (`ntstatus.h`: 0xC00000A3), what
/// `WskCaptureProviderNPI` returns while the WSK provider is not available.
pub const STATUS_DEVICE_NOT_READY: NTSTATUS = 0xC000_00A3_u32 as i32;
/// `STATUS_NOINTERFACE` (`ntstatus.h`: 0xC00002B9), what
/// `WskCaptureProviderNPI` returns when the client's WSK version is not
/// supported.
pub const STATUS_NOINTERFACE: NTSTATUS = 0xC000_02B9_u32 as i32;

/// `NT_SUCCESS(Status)` (`ntdef.h`: `((NTSTATUS)(Status)) >= 0`).
#[must_use]
pub const fn nt_success(status: NTSTATUS) -> bool {
    status >= 0
}

macro_rules! opaque {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        ///
        /// Opaque: only ever used behind a pointer that the kernel hands out;
        /// Rust code cannot build, move or read one.
        #[repr(C)]
        pub struct $name {
            _opaque: [u8; 0],
            _pin: PhantomData<(*mut u8, PhantomPinned)>,
        }
    };
}

opaque!(
    /// `IRP` (`wdm.h`), an I/O request packet. Cast to/from `wdk_sys::IRP`.
    IRP
);
opaque!(
    /// `MDL` (`wdm.h`), a memory descriptor list. Cast to/from `wdk_sys::MDL`.
    MDL
);
opaque!(
    /// `EPROCESS` (`PEPROCESS`, `wdm.h`), a process object.
    EPROCESS
);
opaque!(
    /// `ETHREAD` (`PETHREAD`, `wdm.h`), a thread object.
    ETHREAD
);
opaque!(
    /// `SECURITY_DESCRIPTOR` (`PSECURITY_DESCRIPTOR`, `ntifs.h`/`winnt.h`).
    SECURITY_DESCRIPTOR
);
opaque!(
    /// `ADDRINFOEXW` (`ws2def.h`), the result list of `WskGetAddressInfo`.
    /// ThinAgent never resolves names, so its layout is not modelled.
    ADDRINFOEXW
);
opaque!(
    /// `CMSGHDR` / `WSACMSGHDR` (`ws2def.h`), datagram control data. Only
    /// datagram sockets use it; ThinAgent does not.
    CMSGHDR
);

/// `SOCKADDR` (`ws2def.h`): `ADDRESS_FAMILY sa_family; CHAR sa_data[14];`.
/// 2 + 14 = 16 bytes, alignment 2. WSK functions take `PSOCKADDR` and read
/// as many bytes as the family's address structure has; for vSockets that is
/// [`crate::vmci::SOCKADDR_VM`], also 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SOCKADDR {
    /// Address family.
    pub sa_family: ADDRESS_FAMILY,
    /// Family-specific address bytes.
    pub sa_data: [u8; 14],
}

/// `UNICODE_STRING` (`ntdef.h`): `USHORT Length; USHORT MaximumLength;
/// PWCH Buffer;`. Lengths are in bytes, without a terminating NUL.
/// x64: 2 + 2 + pad 4 + 8 = 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UNICODE_STRING {
    /// Length of the string in bytes (not counting any NUL).
    pub Length: u16,
    /// Size of `Buffer` in bytes.
    pub MaximumLength: u16,
    /// UTF-16 code units.
    pub Buffer: *mut u16,
}

/// `GUID` (`guiddef.h`): `unsigned long Data1; unsigned short Data2, Data3;
/// unsigned char Data4[8];` (Windows `unsigned long` is 32-bit). 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GUID {
    /// First 32 bits.
    pub Data1: u32,
    /// Next 16 bits.
    pub Data2: u16,
    /// Next 16 bits.
    pub Data3: u16,
    /// Last 64 bits.
    pub Data4: [u8; 8],
}

// ---------------------------------------------------------------------------
// Kernel debug output
// ---------------------------------------------------------------------------

/// `DPFLTR_IHVDRIVER_ID` (`dpfilter.h`): the component id third-party drivers
/// print under. Its Debug Print Filter value is `IHVDRIVER`.
pub const DPFLTR_IHVDRIVER_ID: u32 = 77;
/// `DPFLTR_ERROR_LEVEL` (`wdm.h`): always shown.
pub const DPFLTR_ERROR_LEVEL: u32 = 0;
/// `DPFLTR_WARNING_LEVEL` (`wdm.h`): bit 1 of the component's filter mask.
pub const DPFLTR_WARNING_LEVEL: u32 = 1;
/// `DPFLTR_TRACE_LEVEL` (`wdm.h`): bit 2.
pub const DPFLTR_TRACE_LEVEL: u32 = 2;
/// `DPFLTR_INFO_LEVEL` (`wdm.h`): bit 3.
pub const DPFLTR_INFO_LEVEL: u32 = 3;

#[cfg(windows)]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    /// `DbgPrintEx` (`wdm.h`, ntoskrnl.exe; any IRQL, but only `%s` of
    /// non-paged ANSI text above PASSIVE_LEVEL). Declared here because
    /// windows-sys 0.61 binds the *user-mode* export of the same name
    /// (`Wdk::System::SystemServices::DbgPrintEx` links to `ntdll.dll`,
    /// which a kernel driver cannot import from).
    pub fn DbgPrintEx(ComponentId: u32, Level: u32, Format: *const u8, ...) -> u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_success_follows_the_sign_bit() {
        assert!(nt_success(STATUS_SUCCESS));
        assert!(nt_success(STATUS_PENDING));
        assert!(!nt_success(STATUS_DEVICE_BUSY));
        assert_eq!(STATUS_DEVICE_BUSY as u32, 0x8000_0011);
    }

    #[test]
    fn opaque_types_are_zero_sized() {
        assert_eq!(size_of::<IRP>(), 0);
        assert_eq!(size_of::<MDL>(), 0);
        assert_eq!(size_of::<*mut IRP>(), size_of::<usize>());
    }
}
