//! Hand-written Windows kernel bindings that no published crate provides,
//! for the ThinAgent minifilter (`thinagent.sys`).
//!
//! * [`wsk`]: Winsock Kernel (`wsk.h`, exported by `netio.sys`): the client
//!   and provider NPIs, the registration block, the provider and socket
//!   dispatch tables, `WSK_BUF`, `WSK_SOCKET`, the socket-kind flags and
//!   `WskRegister` / `WskCaptureProviderNPI` / `WskReleaseProviderNPI` /
//!   `WskDeregister` (linked from `netio` on Windows only).
//! * [`vmci`]: VMware vSockets (VMCI sockets): device names, the IOCTL family
//!   `0x8103` (the published user-mode codes and the unpublished provider
//!   capture `0x810320C0`), the 0x5C-byte capture request, `sockaddr_vm` and
//!   the well-known CIDs and ports.
//! * [`ioctl`]: `CTL_CODE` as a `const fn`, with its inverse.
//! * [`io_params`]: the `IO_STACK_LOCATION` / `FLT_PARAMETERS` arms whose
//!   `POINTER_ALIGNMENT` fields windows-sys places wrongly on 64-bit
//!   Windows (`DeviceIoControl`, `Create`, `SetFileInformation`,
//!   `FileSystemControl`), with the headers' layout.
//! * [`hexdump`]: a `no_std` hex-dump formatter (and its parser) for logging
//!   the capture IOCTL's reply at DEBUG level.
//! * [`nt`]: the few NT types the bindings mention, modelled without
//!   `wdk-sys` (which cannot build off Windows): opaque types for objects
//!   only ever passed by pointer (`IRP`, `MDL`, ...) and exact layouts where
//!   the size matters (`SOCKADDR`, `UNICODE_STRING`, `GUID`).
//! * [`ntoskrnl`]: kernel exports windows-sys binds to ntdll or not at all
//!   (`ZwClose`, `ZwCreateFile`, `ZwSetSecurityObject`, `PsThreadType`),
//!   the `wdm.h` shapes of the thread-start and IRP-completion callbacks,
//!   the viosock device-interface GUID; its module docs say why these
//!   declarations, not windows-sys's ntdll ones, reach the import table.
//! * [`viosock`]: virtio-win's `viosock.sys` device interface (socket =
//!   file object created with a `VIRTIO_VSOCK_PARAMS` extended attribute;
//!   connect/shutdown IOCTLs; data by read/write IRPs), `sockaddr_vm`.
//! * [`registry`]: `ZwOpenKey` / `ZwQueryValueKey` from ntoskrnl
//!   (windows-sys binds them to user-mode ntdll; `ZwClose` is in
//!   [`ntoskrnl`]).
//! * [`fltmgr`]: the Filter Manager, re-exported from Microsoft's
//!   `windows-sys` (not hand-written), with compile-time size checks on the
//!   structures the driver relies on.
//!
//! Everything is `#[repr(C)]` with fixed-width integers (`ULONG` = `u32`,
//! `USHORT` = `u16`, `SIZE_T` = `usize`, never `c_long`/`c_ulong`, which are
//! 8 bytes on Linux x64 but 4 on Windows). Type and field names are the
//! header's, so a binding can be checked against `wsk.h` line by line.
//! Every structure carries a comment naming its source, and `tests/layout.rs`
//! checks each size and field offset against a value derived from the
//! Windows x64 headers. On 64-bit targets the same sizes are also asserted at
//! compile time, so a wrong layout fails the driver build itself.
//!
//! Sources, the IOCTL derivation and what is still unknown about the
//! captured vSockets provider: `docs/km-sys.md`.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod fltmgr;
pub mod hexdump;
pub mod io_params;
pub mod ioctl;
pub mod nt;
pub mod ntoskrnl;
pub mod registry;
pub mod viosock;
pub mod vmci;
pub mod wsk;

pub use nt::NTSTATUS;
