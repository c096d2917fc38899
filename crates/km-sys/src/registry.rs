//! The kernel's registry routines the driver reads its `Parameters` key
//! with: `ZwOpenKey`, `ZwQueryValueKey` (`wdm.h`, exported by
//! `ntoskrnl.exe`); the handle is closed with [`crate::ntoskrnl::ZwClose`].
//!
//! Declared here because windows-sys 0.61.2 binds them (and `ZwClose`) to the
//! *user-mode* `ntdll.dll` exports of the same names
//! (`Wdk::System::Registry::{ZwOpenKey, ZwQueryValueKey}` and
//! `Wdk::System::SystemServices::ZwClose` are `windows_link::link!("ntdll.dll" ...)`),
//! and a kernel driver cannot import from ntdll. The types are windows-sys's
//! (`OBJECT_ATTRIBUTES`, `HANDLE`, `UNICODE_STRING`,
//! `KEY_VALUE_PARTIAL_INFORMATION`, `KEY_VALUE_INFORMATION_CLASS`), so the
//! signatures are the same as windows-sys's apart from the library.
//!
//! Doc pages: learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-zwopenkey,
//! .../wdm/nf-wdm-zwqueryvaluekey. Both run at PASSIVE_LEVEL only.

#[cfg(windows)]
use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
#[cfg(windows)]
use windows_sys::Win32::Foundation::{HANDLE, NTSTATUS, UNICODE_STRING};

/// `KeyValuePartialInformation` (`wdm.h` `KEY_VALUE_INFORMATION_CLASS`):
/// the reply is a `KEY_VALUE_PARTIAL_INFORMATION` (type, data length, data).
pub const KEY_VALUE_PARTIAL_INFORMATION_CLASS: i32 = 2;

/// Offset of `Data` in `KEY_VALUE_PARTIAL_INFORMATION` (`wdm.h`:
/// `ULONG TitleIndex; ULONG Type; ULONG DataLength; UCHAR Data[1];`):
/// 3 × 4 = 12 on every architecture.
pub const KEY_VALUE_PARTIAL_INFORMATION_DATA_OFFSET: usize = 12;

#[cfg(windows)]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    /// `ZwOpenKey` (`wdm.h`, ntoskrnl.exe; PASSIVE_LEVEL). Opens an existing
    /// key; with `OBJ_KERNEL_HANDLE` the handle is only valid in kernel mode.
    pub fn ZwOpenKey(
        KeyHandle: *mut HANDLE,
        DesiredAccess: u32,
        ObjectAttributes: *const OBJECT_ATTRIBUTES,
    ) -> NTSTATUS;

    /// `ZwQueryValueKey` (`wdm.h`, ntoskrnl.exe; PASSIVE_LEVEL). Returns
    /// `STATUS_OBJECT_NAME_NOT_FOUND` for a missing value,
    /// `STATUS_BUFFER_OVERFLOW` / `STATUS_BUFFER_TOO_SMALL` with the needed
    /// size in `ResultLength` when `Length` is too small.
    pub fn ZwQueryValueKey(
        KeyHandle: HANDLE,
        ValueName: *const UNICODE_STRING,
        KeyValueInformationClass: i32,
        KeyValueInformation: *mut core::ffi::c_void,
        Length: u32,
        ResultLength: *mut u32,
    ) -> NTSTATUS;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_information_matches_windows_sys() {
        use windows_sys::Wdk::System::SystemServices::KEY_VALUE_PARTIAL_INFORMATION as K;
        assert_eq!(
            core::mem::offset_of!(K, Data),
            KEY_VALUE_PARTIAL_INFORMATION_DATA_OFFSET
        );
        assert_eq!(core::mem::offset_of!(K, DataLength), 8);
        assert_eq!(core::mem::offset_of!(K, Type), 4);
        assert_eq!(
            KEY_VALUE_PARTIAL_INFORMATION_CLASS,
            windows_sys::Wdk::System::Registry::KeyValuePartialInformation
        );
    }
}
