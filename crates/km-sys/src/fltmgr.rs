//! Filter Manager (`fltKernel.h`), from Microsoft's `windows-sys`, not
//! hand-written.
//!
//! `windows-sys` 0.61.2, feature `Wdk_Storage_FileSystem_Minifilters` plus
//! the features its structures are gated on (see this crate's `Cargo.toml`),
//! generates `FLT_REGISTRATION`, `FLT_OPERATION_REGISTRATION`,
//! `FLT_CALLBACK_DATA`, `FltRegisterFilter`, ... with imports from
//! `fltmgr.sys` and `extern "system"` callbacks. It type-checks on every
//! host; it links only on Windows.
//!
//! This module re-exports the crate (so the driver and these checks use one
//! version) and asserts, at compile time on 64-bit targets, the sizes the
//! driver relies on. If a `windows-sys` upgrade changes one of them, the
//! build stops here instead of the driver registering a malformed table.
//! The same sizes, with their derivation from `fltKernel.h`, are tested in
//! `tests/layout.rs`.

pub use windows_sys;
pub use windows_sys::Wdk::Storage::FileSystem::Minifilters;

/// Size of `FLT_REGISTRATION` on x64 (`fltKernel.h`, registration version
/// 0x0203):
///
/// ```text
/// USHORT Size (2, at 0), USHORT Version (2, at 2), Flags (4, at 4),
/// ContextRegistration (8, at 8), OperationRegistration (8, at 16),
/// 11 callback pointers: FilterUnloadCallback (at 24) ...
/// SectionNotificationCallback (at 104)         => 24 + 11 * 8 = 112
/// ```
pub const FLT_REGISTRATION_SIZE_X64: usize = 112;
/// Size of `FLT_OPERATION_REGISTRATION` on x64:
///
/// ```text
/// UCHAR MajorFunction (1, at 0), pad 3, ULONG Flags (4, at 4),
/// PreOperation (8, at 8), PostOperation (8, at 16),
/// PVOID Reserved1 (8, at 24)                   => 32
/// ```
pub const FLT_OPERATION_REGISTRATION_SIZE_X64: usize = 32;
/// Size of `FLT_CALLBACK_DATA` on x64:
///
/// ```text
/// ULONG Flags (4, at 0), pad 4, PETHREAD Thread (8, at 8),
/// PFLT_IO_PARAMETER_BLOCK Iopb (8, at 16),
/// IO_STATUS_BLOCK IoStatus (8 + 8 = 16, at 24),
/// PFLT_TAG_DATA_BUFFER TagData (8, at 40),
/// union { { LIST_ENTRY QueueLinks; PVOID QueueContext[2]; };
///         PVOID FilterContext[4]; } (32, at 48),
/// KPROCESSOR_MODE RequestorMode (1, at 80), pad 7  => 88
/// ```
pub const FLT_CALLBACK_DATA_SIZE_X64: usize = 88;
/// Size of `FLT_IO_PARAMETER_BLOCK` on x64:
///
/// ```text
/// ULONG IrpFlags (4, at 0), UCHAR MajorFunction, MinorFunction,
/// OperationFlags, Reserved (4, at 4), PFILE_OBJECT TargetFileObject
/// (8, at 8), PFLT_INSTANCE TargetInstance (8, at 16),
/// FLT_PARAMETERS Parameters (48 = its largest arm, Others:
/// six PVOIDs; at 24)                           => 72
/// ```
pub const FLT_IO_PARAMETER_BLOCK_SIZE_X64: usize = 72;

#[cfg(target_pointer_width = "64")]
const _: () = {
    use Minifilters::{
        FLT_CALLBACK_DATA, FLT_IO_PARAMETER_BLOCK, FLT_OPERATION_REGISTRATION, FLT_REGISTRATION,
    };
    assert!(size_of::<FLT_REGISTRATION>() == FLT_REGISTRATION_SIZE_X64);
    assert!(size_of::<FLT_OPERATION_REGISTRATION>() == FLT_OPERATION_REGISTRATION_SIZE_X64);
    assert!(size_of::<FLT_CALLBACK_DATA>() == FLT_CALLBACK_DATA_SIZE_X64);
    assert!(size_of::<FLT_IO_PARAMETER_BLOCK>() == FLT_IO_PARAMETER_BLOCK_SIZE_X64);
};
