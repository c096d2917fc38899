//! The few `ntoskrnl.exe` exports and callback shapes the vsock layer needs
//! that windows-sys 0.61.2 does not bind usably:
//!
//! * `ZwClose` — windows-sys binds it to **`ntdll.dll`**
//!   (`Wdk::System::SystemServices::ZwClose`), which a driver cannot import;
//!   the kernel export of the same name is declared here.
//! * `PsThreadType` — an exported *data* symbol, which windows-sys does not
//!   model; `ObReferenceObjectByHandle` takes its value to check that a
//!   handle really is a thread. ntoskrnl's exported variable *is* the
//!   `POBJECT_TYPE`; `wdm.h` writes `extern POBJECT_TYPE *PsThreadType`
//!   because C code without `dllimport` sees the import-address-table slot,
//!   one pointer further out. A Rust `static` in a raw-dylib block is
//!   imported with `dllimport`, so the static here is the variable itself,
//!   typed `POBJECT_TYPE`, and is passed as it is (not dereferenced: that
//!   would pass the first word of the `OBJECT_TYPE`; the emulated kernel in
//!   tests/emulation caught exactly that).
//! * [`KSTART_ROUTINE`] and [`IO_COMPLETION_ROUTINE`] — windows-sys 0.61.2
//!   declares `PKSTART_ROUTINE` as `fn()` and `PIO_COMPLETION_ROUTINE` as
//!   `fn() -> NTSTATUS` (the metadata lost the parameters). The shapes below
//!   are `wdm.h`'s; the driver converts them to the windows-sys field types
//!   in one place (`driver/windows/irp.rs`), where both are pointer-sized
//!   `extern "system"` function pointers.
//! * The device-interface GUIDs the virtio-vsock wait registers for:
//!   [`GUID_DEVINTERFACE_VIOSOCK`] (virtio-win `viosock/sys/public.h`) and
//!   [`GUID_DEVICE_INTERFACE_ARRIVAL`] / [`GUID_DEVICE_INTERFACE_REMOVAL`]
//!   (`wdmguid.h`).
//! * NTSTATUS values the IRP plumbing uses that `nt` does not have.
//! * For the virtio-vsock socket (`crate::viosock`): `ZwCreateFile`
//!   (windows-sys binds it to ntdll.dll), the data export `IoFileObjectType`
//!   and `PsGetCurrentThread` (not in windows-sys 0.61.2).
//! * For the control device's DACL: `ZwSetSecurityObject` (windows-sys binds
//!   it to ntdll.dll) and the access-mask constants it is used with.
//!
//! **Why these declarations, not windows-sys's ntdll ones, end up in the
//! driver's import table.** windows-sys declares `ZwClose`, `ZwCreateFile`,
//! `ZwSetSecurityObject` (and, in `crate::registry`, `ZwOpenKey` and
//! `ZwQueryValueKey`) as raw-dylib imports from `ntdll.dll`; the blocks below
//! declare the same names from `ntoskrnl.exe`. Both define the linker symbol
//! `__imp_<name>`, and the linker takes the first definition it meets on its
//! command line. This crate depends on windows-sys, so rustc puts this
//! crate's rlib and its raw-dylib import entries before windows-sys's on the
//! link line, and the `ntoskrnl.exe` entries win. That rests on the link
//! order, which nothing here can assert, so the result is checked where it
//! matters: the PE test of the root package (`tests/driver_pe.rs`) reads the
//! built `thinagent.sys` and fails on any import from a module other than
//! `ntoskrnl.exe`, `hal.dll`, `fltmgr.sys` and `netio.sys` (ntdll.dll among
//! them). A new ntdll-bound windows-sys routine belongs here, not in a `use`.

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

use core::ffi::c_void;

use crate::nt::{GUID, IRP, NTSTATUS};

/// `KSTART_ROUTINE` (`wdm.h`): `VOID (PVOID StartContext)`, the entry of a
/// thread made by `PsCreateSystemThread`. Runs at PASSIVE_LEVEL.
pub type KSTART_ROUTINE = unsafe extern "system" fn(StartContext: *mut c_void);

/// `IO_COMPLETION_ROUTINE` (`wdm.h`): `NTSTATUS (PDEVICE_OBJECT DeviceObject,
/// PIRP Irp, PVOID Context)`. Runs at IRQL <= DISPATCH_LEVEL. For an IRP the
/// driver allocated itself, `DeviceObject` is NULL (no stack location of its
/// own) and the routine returns [`STATUS_MORE_PROCESSING_REQUIRED`] so the
/// I/O manager leaves the IRP to its owner.
pub type IO_COMPLETION_ROUTINE = unsafe extern "system" fn(
    DeviceObject: *mut c_void,
    Irp: *mut IRP,
    Context: *mut c_void,
) -> NTSTATUS;

/// `STATUS_MORE_PROCESSING_REQUIRED` (`ntstatus.h`: 0xC0000016).
pub const STATUS_MORE_PROCESSING_REQUIRED: NTSTATUS = 0xC000_0016_u32 as i32;
/// `STATUS_NOT_SUPPORTED` (`ntstatus.h`: 0xC00000BB).
pub const STATUS_NOT_SUPPORTED: NTSTATUS = 0xC000_00BB_u32 as i32;
/// `STATUS_IO_TIMEOUT` (`ntstatus.h`: 0xC00000B5).
pub const STATUS_IO_TIMEOUT: NTSTATUS = 0xC000_00B5_u32 as i32;
/// `STATUS_INVALID_DEVICE_STATE` (`ntstatus.h`: 0xC0000184).
pub const STATUS_INVALID_DEVICE_STATE: NTSTATUS = 0xC000_0184_u32 as i32;
/// `STATUS_CONNECTION_DISCONNECTED` (`ntstatus.h`: 0xC000020C).
pub const STATUS_CONNECTION_DISCONNECTED: NTSTATUS = 0xC000_020C_u32 as i32;
/// `STATUS_ALERTED` (`ntstatus.h`: 0x00000101), a wait's "alerted" result.
pub const STATUS_ALERTED: NTSTATUS = 0x0000_0101;
/// `STATUS_WAIT_1` (`ntstatus.h`: 0x00000001): the second object of a
/// `KeWaitForMultipleObjects(WaitAny)` was signalled.
pub const STATUS_WAIT_1: NTSTATUS = 1;

/// `SL_INVOKE_ON_CANCEL` (`wdm.h`: 0x20), an `IO_STACK_LOCATION.Control` bit.
pub const SL_INVOKE_ON_CANCEL: u8 = 0x20;
/// `SL_INVOKE_ON_SUCCESS` (`wdm.h`: 0x40).
pub const SL_INVOKE_ON_SUCCESS: u8 = 0x40;
/// `SL_INVOKE_ON_ERROR` (`wdm.h`: 0x80).
pub const SL_INVOKE_ON_ERROR: u8 = 0x80;

/// `THREAD_ALL_ACCESS` (`winnt.h`: `STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE |
/// 0xFFFF` = 0x000F0000 | 0x00100000 | 0xFFFF), what drivers pass to
/// `PsCreateSystemThread`.
pub const THREAD_ALL_ACCESS: u32 = 0x001F_FFFF;
/// `SYNCHRONIZE` (`winnt.h`: 0x00100000), enough to wait on a thread object.
pub const SYNCHRONIZE: u32 = 0x0010_0000;
/// `FILE_READ_ATTRIBUTES` (`winnt.h`: 0x0080), the access virtio-win's
/// VioWsk opens the viosock device with.
pub const FILE_READ_ATTRIBUTES: u32 = 0x0080;
/// `OBJ_KERNEL_HANDLE` (`ntdef.h`: 0x00000200).
pub const OBJ_KERNEL_HANDLE: u32 = 0x0000_0200;
/// `OBJ_CASE_INSENSITIVE` (`ntdef.h`: 0x00000040).
pub const OBJ_CASE_INSENSITIVE: u32 = 0x0000_0040;
/// `FILE_GENERIC_READ` (`winnt.h`: 0x00120089).
pub const FILE_GENERIC_READ: u32 = 0x0012_0089;
/// `FILE_GENERIC_WRITE` (`winnt.h`: 0x00120116).
pub const FILE_GENERIC_WRITE: u32 = 0x0012_0116;
/// `FILE_SHARE_READ` (`winnt.h`: 1).
pub const FILE_SHARE_READ: u32 = 0x1;
/// `FILE_SHARE_WRITE` (`winnt.h`: 2).
pub const FILE_SHARE_WRITE: u32 = 0x2;
/// `FILE_OPEN` (`wdm.h` create disposition: 1), open an existing object.
pub const FILE_OPEN: u32 = 0x1;
/// `FILE_NON_DIRECTORY_FILE` (`wdm.h` create option: 0x40).
pub const FILE_NON_DIRECTORY_FILE: u32 = 0x40;

/// `WRITE_DAC` (`winnt.h`: 0x00040000): the right to change an object's
/// DACL, what the control device's handle is opened with for
/// `ZwSetSecurityObject`.
pub const WRITE_DAC: u32 = 0x0004_0000;
/// `DACL_SECURITY_INFORMATION` (`winnt.h`: 0x00000004): `ZwSetSecurityObject`
/// replaces only the DACL.
pub const DACL_SECURITY_INFORMATION: u32 = 0x0000_0004;
/// `FILE_ALL_ACCESS` (`winnt.h`: `STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE |
/// 0x1FF` = 0x000F0000 | 0x00100000 | 0x1FF): the access the control
/// device's two ACEs grant (it includes `FILE_READ_DATA` and
/// `FILE_WRITE_DATA`, which its IOCTL codes require). Not
/// `FLT_PORT_ALL_ACCESS` (`FLT_PORT_CONNECT | STANDARD_RIGHTS_ALL` =
/// 0x001F0001): on a device object its 0x1 means `FILE_READ_DATA` only, so
/// the write IOCTL could never be opened for.
pub const FILE_ALL_ACCESS: u32 = 0x001F_01FF;

/// `GUID_DEVINTERFACE_VIOSOCK` {6B58DC1F-01C3-440F-BE1C-B95D000F1FF5}:
/// the device interface virtio-win's `viosock.sys` registers
/// (`WdfDeviceCreateDeviceInterface` in `viosock/sys/Device.c`; defined in
/// `viosock/sys/public.h` and `viosock/inc/vio_sockets.h`).
pub const GUID_DEVINTERFACE_VIOSOCK: GUID = GUID {
    Data1: 0x6b58_dc1f,
    Data2: 0x01c3,
    Data3: 0x440f,
    Data4: [0xbe, 0x1c, 0xb9, 0x5d, 0x00, 0x0f, 0x1f, 0xf5],
};

/// `GUID_DEVICE_INTERFACE_ARRIVAL` {CB3A4004-46F0-11D0-B08F-00609713053F}
/// (`wdmguid.h`): `DEVICE_INTERFACE_CHANGE_NOTIFICATION.Event` of an arrival.
pub const GUID_DEVICE_INTERFACE_ARRIVAL: GUID = GUID {
    Data1: 0xcb3a_4004,
    Data2: 0x46f0,
    Data3: 0x11d0,
    Data4: [0xb0, 0x8f, 0x00, 0x60, 0x97, 0x13, 0x05, 0x3f],
};

/// `GUID_DEVICE_INTERFACE_REMOVAL` {CB3A4005-46F0-11D0-B08F-00609713053F}
/// (`wdmguid.h`).
pub const GUID_DEVICE_INTERFACE_REMOVAL: GUID = GUID {
    Data1: 0xcb3a_4005,
    Data2: 0x46f0,
    Data3: 0x11d0,
    Data4: [0xb0, 0x8f, 0x00, 0x60, 0x97, 0x13, 0x05, 0x3f],
};

/// The 16 bytes of a GUID as `guiddef.h` lays it out (Data1..3 little-endian
/// on Windows), for comparing against a GUID of another binding crate.
#[must_use]
pub const fn guid_bytes(g: &GUID) -> [u8; 16] {
    let a = g.Data1.to_le_bytes();
    let b = g.Data2.to_le_bytes();
    let c = g.Data3.to_le_bytes();
    let d = g.Data4;
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

#[cfg(windows)]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    /// `ZwClose` (`wdm.h`, ntoskrnl.exe; PASSIVE_LEVEL): closes a kernel
    /// handle. learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-zwclose.
    /// Declared here because windows-sys binds the ntdll.dll export.
    pub fn ZwClose(Handle: *mut c_void) -> NTSTATUS;

    /// `PsThreadType`, the thread object type (`POBJECT_TYPE`; `wdm.h`
    /// declares it `extern POBJECT_TYPE *PsThreadType`, see the module
    /// docs), for `ObReferenceObjectByHandle`'s `ObjectType`: pass this
    /// value itself.
    pub static PsThreadType: *mut c_void;

    /// `IoFileObjectType`, the file object type (`POBJECT_TYPE`; `wdm.h`:
    /// `extern POBJECT_TYPE *IoFileObjectType`, see `PsThreadType`), for
    /// `ObReferenceObjectByHandle`'s `ObjectType`: pass this value itself.
    pub static IoFileObjectType: *mut c_void;

    /// `ZwCreateFile` (`wdm.h`, ntoskrnl.exe; PASSIVE_LEVEL): opens a file
    /// or device object, here with an extended-attribute buffer.
    /// learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-zwcreatefile.
    /// Declared here because windows-sys binds the ntdll.dll export; the
    /// parameter types are windows-sys's (`HANDLE`, `OBJECT_ATTRIBUTES`,
    /// `IO_STATUS_BLOCK`), so the signature is its `ZwCreateFile`'s.
    pub fn ZwCreateFile(
        FileHandle: *mut windows_sys::Win32::Foundation::HANDLE,
        DesiredAccess: u32,
        ObjectAttributes: *const windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES,
        IoStatusBlock: *mut windows_sys::Win32::System::IO::IO_STATUS_BLOCK,
        AllocationSize: *const i64,
        FileAttributes: u32,
        ShareAccess: u32,
        CreateDisposition: u32,
        CreateOptions: u32,
        EaBuffer: *const c_void,
        EaLength: u32,
    ) -> NTSTATUS;

    /// `ZwSetSecurityObject` (`ntifs.h`, ntoskrnl.exe; PASSIVE_LEVEL): sets
    /// the parts of an object's security descriptor `SecurityInformation`
    /// names, from `SecurityDescriptor`; the handle needs `WRITE_DAC` for
    /// the DACL. learn.microsoft.com/windows-hardware/drivers/ddi/ntifs/nf-ntifs-zwsetsecurityobject.
    /// Declared here because windows-sys binds the ntdll.dll export
    /// (`Wdk::Storage::FileSystem::ZwSetSecurityObject`); the signature is
    /// that one's: `HANDLE`, `u32`, `PSECURITY_DESCRIPTOR`.
    pub fn ZwSetSecurityObject(
        Handle: windows_sys::Win32::Foundation::HANDLE,
        SecurityInformation: u32,
        SecurityDescriptor: windows_sys::Win32::Security::PSECURITY_DESCRIPTOR,
    ) -> NTSTATUS;

    /// `PsGetCurrentThread` (`wdm.h`, ntoskrnl.exe; any IRQL): the calling
    /// thread's `ETHREAD`, for `Irp->Tail.Overlay.Thread` of a driver-built
    /// IRP. learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-psgetcurrentthread.
    pub fn PsGetCurrentThread() -> *mut c_void;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viosock_guid_bytes_match_define_guid() {
        // DEFINE_GUID(GUID_DEVINTERFACE_VIOSOCK, 0x6b58dc1f, 0x1c3, 0x440f,
        //   0xbe, 0x1c, 0xb9, 0x5d, 0x0, 0xf, 0x1f, 0xf5)
        assert_eq!(
            guid_bytes(&GUID_DEVINTERFACE_VIOSOCK),
            [
                0x1f, 0xdc, 0x58, 0x6b, 0xc3, 0x01, 0x0f, 0x44, 0xbe, 0x1c, 0xb9, 0x5d, 0x00, 0x0f,
                0x1f, 0xf5
            ]
        );
    }

    #[test]
    fn arrival_and_removal_differ_in_data1_only() {
        assert_eq!(
            GUID_DEVICE_INTERFACE_ARRIVAL.Data1 + 1,
            GUID_DEVICE_INTERFACE_REMOVAL.Data1
        );
        assert_eq!(
            GUID_DEVICE_INTERFACE_ARRIVAL.Data4,
            GUID_DEVICE_INTERFACE_REMOVAL.Data4
        );
        assert_ne!(GUID_DEVICE_INTERFACE_ARRIVAL, GUID_DEVICE_INTERFACE_REMOVAL);
    }

    #[test]
    fn create_constants_match_windows_sys() {
        use windows_sys::Wdk::Storage::FileSystem as W;
        use windows_sys::Win32::Storage::FileSystem as F;
        assert_eq!(FILE_GENERIC_READ, F::FILE_GENERIC_READ);
        assert_eq!(FILE_GENERIC_WRITE, F::FILE_GENERIC_WRITE);
        assert_eq!(FILE_SHARE_READ, F::FILE_SHARE_READ);
        assert_eq!(FILE_SHARE_WRITE, F::FILE_SHARE_WRITE);
        assert_eq!(FILE_OPEN, W::FILE_OPEN);
        assert_eq!(FILE_NON_DIRECTORY_FILE, W::FILE_NON_DIRECTORY_FILE);
        assert_eq!(
            OBJ_CASE_INSENSITIVE,
            windows_sys::Win32::Foundation::OBJ_CASE_INSENSITIVE
        );
    }

    #[test]
    fn security_constants_match_windows_sys() {
        use windows_sys::Win32::Storage::FileSystem as F;
        assert_eq!(WRITE_DAC, F::WRITE_DAC);
        assert_eq!(FILE_ALL_ACCESS, F::FILE_ALL_ACCESS);
        assert_eq!(
            DACL_SECURITY_INFORMATION,
            windows_sys::Win32::Security::DACL_SECURITY_INFORMATION
        );
        // FLT_PORT_ALL_ACCESS = FLT_PORT_CONNECT | STANDARD_RIGHTS_ALL lacks
        // FILE_WRITE_DATA; FILE_ALL_ACCESS has read and write data.
        let flt_port_all = windows_sys::Wdk::Storage::FileSystem::Minifilters::FLT_PORT_CONNECT
            | F::STANDARD_RIGHTS_ALL;
        assert_eq!(flt_port_all, 0x001F_0001);
        assert_eq!(flt_port_all & F::FILE_WRITE_DATA, 0);
        assert_eq!(
            FILE_ALL_ACCESS & (F::FILE_READ_DATA | F::FILE_WRITE_DATA),
            F::FILE_READ_DATA | F::FILE_WRITE_DATA
        );
    }

    #[test]
    fn status_values() {
        assert_eq!(STATUS_MORE_PROCESSING_REQUIRED as u32, 0xC000_0016);
        assert!(!crate::nt::nt_success(STATUS_IO_TIMEOUT));
        assert_eq!(
            SL_INVOKE_ON_CANCEL | SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR,
            0xE0
        );
    }
}
