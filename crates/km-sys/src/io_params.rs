//! The request-parameter arms whose layout windows-sys 0.61.2 gets wrong on
//! 64-bit Windows, with the layout of the WDK headers.
//!
//! `wdm.h` and `fltKernel.h` declare many parameter fields
//! `POINTER_ALIGNMENT`, which `ntdef.h`/`wdm.h` define as
//! `DECLSPEC_ALIGN(8)` when `_WIN64` is defined (nothing on 32-bit). Such a
//! field starts at the next multiple of 8 but keeps its own size. The
//! metadata windows-sys is generated from drops that attribute, so in
//! windows-sys these fields sit right after the previous one, and reading
//! them through windows-sys reads the wrong bytes:
//!
//! | windows-sys type | field | windows-sys offset | header offset (x64) |
//! |---|---|---|---|
//! | `IO_STACK_LOCATION_0_16` (`Parameters.DeviceIoControl`) | `InputBufferLength` | 4 | 8 |
//! | | `IoControlCode` | 8 | 16 |
//! | | `Type3InputBuffer` | 16 | 24 |
//! | `FLT_PARAMETERS_6` (`Parameters.SetFileInformation`) | `FileInformationClass` | 4 | 8 |
//! | | `ParentOfTarget` | 8 | 16 |
//! | `FLT_PARAMETERS_12_1` (`Parameters.FileSystemControl.Common`) | `InputBufferLength` | 4 | 8 |
//! | | `FsControlCode` | 8 | 16 |
//! | `FLT_PARAMETERS_0` (`Parameters.Create`) | `FileAttributes` | 12 | 16 |
//! | | `EaLength` | 16 | 24 |
//!
//! (`Create.Options`, at 8, is right in both.) The structures here are the
//! headers' layouts, written out with explicit padding, for the arms the
//! driver reads. Use them by casting the address of the windows-sys union
//! (`&(*stack).Parameters` or `&(*iopb).Parameters`) to a pointer to the
//! arm here; the unions themselves (`IO_STACK_LOCATION_0`, `FLT_PARAMETERS`)
//! have the right size and position in their parents, because their largest
//! arms hold no `POINTER_ALIGNMENT` field.
//!
//! Sources: `wdm.h` (`IO_STACK_LOCATION`), `fltKernel.h` (`FLT_PARAMETERS`)
//! as printed on learn.microsoft.com (ddi/wdm/ns-wdm-_io_stack_location,
//! ddi/fltkernel/ns-fltkernel-_flt_parameters and the per-arm pages such as
//! ifs/flt-parameters-for-irp-mj-set-information), and the `POINTER_ALIGNMENT`
//! definition (`#if defined(_WIN64) #define POINTER_ALIGNMENT
//! DECLSPEC_ALIGN(8)`). 64-bit only: the driver builds for x64 (and would for
//! ARM64, also `_WIN64`); on 32-bit targets this module is empty.

#![allow(non_camel_case_types, non_snake_case)]

#[cfg(target_pointer_width = "64")]
pub use layouts::*;

#[cfg(target_pointer_width = "64")]
mod layouts {
    use core::ffi::c_void;

    /// `IO_STACK_LOCATION.Parameters.DeviceIoControl` (`wdm.h`), x64:
    ///
    /// ```text
    /// ULONG                   OutputBufferLength;  //  0
    /// ULONG POINTER_ALIGNMENT InputBufferLength;   //  8
    /// ULONG POINTER_ALIGNMENT IoControlCode;       // 16
    /// PVOID                   Type3InputBuffer;    // 24   => 32 bytes
    /// ```
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct IO_STACK_DEVICE_IO_CONTROL {
        /// Output buffer length (bytes).
        pub OutputBufferLength: u32,
        _pad0: u32,
        /// Input buffer length (bytes).
        pub InputBufferLength: u32,
        _pad1: u32,
        /// The IOCTL code.
        pub IoControlCode: u32,
        _pad2: u32,
        /// METHOD_NEITHER input buffer (user address).
        pub Type3InputBuffer: *mut c_void,
    }

    /// `FLT_PARAMETERS.Create` (`fltKernel.h`), x64:
    ///
    /// ```text
    /// PIO_SECURITY_CONTEXT     SecurityContext;   //  0
    /// ULONG                    Options;           //  8
    /// USHORT POINTER_ALIGNMENT FileAttributes;    // 16
    /// USHORT                   ShareAccess;       // 18
    /// ULONG POINTER_ALIGNMENT  EaLength;          // 24
    /// PVOID                    EaBuffer;          // 32
    /// LARGE_INTEGER            AllocationSize;    // 40   => 48 bytes
    /// ```
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct FLT_PARAMETERS_CREATE {
        /// `PIO_SECURITY_CONTEXT` (its `DesiredAccess` is the open's access).
        pub SecurityContext: *mut c_void,
        /// Create options (low 24 bits) and disposition (high 8 bits).
        pub Options: u32,
        _pad0: u32,
        /// `FILE_ATTRIBUTE_*` for a new file.
        pub FileAttributes: u16,
        /// `FILE_SHARE_*`.
        pub ShareAccess: u16,
        _pad1: u32,
        /// Extended-attribute buffer length.
        pub EaLength: u32,
        _pad2: u32,
        /// Extended-attribute buffer.
        pub EaBuffer: *mut c_void,
        /// Initial allocation size.
        pub AllocationSize: i64,
    }

    /// `FLT_PARAMETERS.SetFileInformation` (`fltKernel.h`), x64:
    ///
    /// ```text
    /// ULONG                                    Length;                //  0
    /// FILE_INFORMATION_CLASS POINTER_ALIGNMENT FileInformationClass;  //  8
    /// PFILE_OBJECT                             ParentOfTarget;        // 16
    /// union { struct { BOOLEAN ReplaceIfExists; BOOLEAN AdvanceOnly; };
    ///         ULONG ClusterCount; HANDLE DeleteHandle; };            // 24
    /// PVOID POINTER_ALIGNMENT                  InfoBuffer;            // 32   => 40 bytes
    /// ```
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct FLT_PARAMETERS_SET_FILE_INFORMATION {
        /// Length of `InfoBuffer`.
        pub Length: u32,
        _pad0: u32,
        /// `FILE_INFORMATION_CLASS` (an `enum`, 4 bytes).
        pub FileInformationClass: i32,
        _pad1: u32,
        /// Target directory of a rename or link.
        pub ParentOfTarget: *mut c_void,
        /// `ReplaceIfExists`/`AdvanceOnly`, `ClusterCount` or `DeleteHandle`.
        pub Union: *mut c_void,
        /// The information buffer.
        pub InfoBuffer: *mut c_void,
    }

    /// `FLT_PARAMETERS.FileSystemControl.Common` (`fltKernel.h`), x64: the
    /// prefix every FSCTL method's arm shares.
    ///
    /// ```text
    /// ULONG                   OutputBufferLength;  //  0
    /// ULONG POINTER_ALIGNMENT InputBufferLength;   //  8
    /// ULONG POINTER_ALIGNMENT FsControlCode;       // 16   => 24 bytes (20 + pad)
    /// ```
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct FLT_PARAMETERS_FSCTL_COMMON {
        /// Output buffer length.
        pub OutputBufferLength: u32,
        _pad0: u32,
        /// Input buffer length.
        pub InputBufferLength: u32,
        _pad1: u32,
        /// The FSCTL code.
        pub FsControlCode: u32,
    }

    /// `FLT_PARAMETERS.DeviceIoControl.Common` has the same shape as
    /// [`FLT_PARAMETERS_FSCTL_COMMON`] (`IoControlCode` at 16).
    pub type FLT_PARAMETERS_IOCTL_COMMON = FLT_PARAMETERS_FSCTL_COMMON;
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn header_layouts() {
        type D = IO_STACK_DEVICE_IO_CONTROL;
        assert_eq!(offset_of!(D, OutputBufferLength), 0);
        assert_eq!(offset_of!(D, InputBufferLength), 8);
        assert_eq!(offset_of!(D, IoControlCode), 16);
        assert_eq!(offset_of!(D, Type3InputBuffer), 24);
        assert_eq!(size_of::<D>(), 32);

        type C = FLT_PARAMETERS_CREATE;
        assert_eq!(offset_of!(C, Options), 8);
        assert_eq!(offset_of!(C, FileAttributes), 16);
        assert_eq!(offset_of!(C, ShareAccess), 18);
        assert_eq!(offset_of!(C, EaLength), 24);
        assert_eq!(offset_of!(C, EaBuffer), 32);
        assert_eq!(offset_of!(C, AllocationSize), 40);
        assert_eq!(size_of::<C>(), 48);

        type S = FLT_PARAMETERS_SET_FILE_INFORMATION;
        assert_eq!(offset_of!(S, FileInformationClass), 8);
        assert_eq!(offset_of!(S, ParentOfTarget), 16);
        assert_eq!(offset_of!(S, InfoBuffer), 32);
        assert_eq!(size_of::<S>(), 40);

        type F = FLT_PARAMETERS_FSCTL_COMMON;
        assert_eq!(offset_of!(F, InputBufferLength), 8);
        assert_eq!(offset_of!(F, FsControlCode), 16);
    }

    #[test]
    fn every_arm_fits_its_union() {
        use windows_sys::Wdk::Foundation::IO_STACK_LOCATION_0;
        use windows_sys::Wdk::Storage::FileSystem::Minifilters::FLT_PARAMETERS;
        assert!(size_of::<IO_STACK_DEVICE_IO_CONTROL>() <= size_of::<IO_STACK_LOCATION_0>());
        assert_eq!(size_of::<IO_STACK_LOCATION_0>(), 32);
        assert_eq!(size_of::<FLT_PARAMETERS>(), 48);
        for arm in [
            size_of::<FLT_PARAMETERS_CREATE>(),
            size_of::<FLT_PARAMETERS_SET_FILE_INFORMATION>(),
            size_of::<FLT_PARAMETERS_FSCTL_COMMON>(),
        ] {
            assert!(arm <= size_of::<FLT_PARAMETERS>());
        }
    }

    /// The reason this module exists. When a windows-sys release models
    /// `POINTER_ALIGNMENT`, this fails: switch the driver back to the
    /// windows-sys arms and drop these.
    #[test]
    fn windows_sys_still_lacks_pointer_alignment() {
        use windows_sys::Wdk::Foundation::IO_STACK_LOCATION_0_16;
        use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
            FLT_PARAMETERS_0, FLT_PARAMETERS_6, FLT_PARAMETERS_12_1,
        };
        assert_eq!(offset_of!(IO_STACK_LOCATION_0_16, IoControlCode), 8);
        assert_eq!(offset_of!(FLT_PARAMETERS_6, FileInformationClass), 4);
        assert_eq!(offset_of!(FLT_PARAMETERS_12_1, FsControlCode), 8);
        assert_eq!(offset_of!(FLT_PARAMETERS_0, FileAttributes), 12);
    }
}
