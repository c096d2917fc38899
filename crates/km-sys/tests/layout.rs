//! Size and field offsets of every km-sys structure, and the sizes of the
//! windows-sys Filter Manager structures the driver relies on, against
//! values derived by hand from the Windows x64 headers (LLP64: `ULONG` and
//! `LONG` 4 bytes, pointers and `SIZE_T`/`ULONG_PTR` 8, natural alignment).
//! Each expected number carries its derivation.
//!
//! Every check is a `const fn` evaluated at compile time (the `const _`
//! at the end), so `cargo check --tests --target x86_64-pc-windows-msvc`
//! verifies the same numbers against rustc's Windows x64 layout, and the
//! test below runs them again on the host.
//!
//! The driver targets x64 only, and x64 Linux has the same `repr(C)` rules
//! for these fixed-width fields, so the tests run on any 64-bit host.
#![cfg(target_pointer_width = "64")]

use core::mem::{align_of, offset_of, size_of};

use thinagent_km_sys::fltmgr::Minifilters::{
    FLT_CALLBACK_DATA, FLT_IO_PARAMETER_BLOCK, FLT_OPERATION_REGISTRATION, FLT_REGISTRATION,
};
use thinagent_km_sys::nt::{GUID, SOCKADDR, UNICODE_STRING};
use thinagent_km_sys::viosock::{
    FILE_FULL_EA_INFORMATION_SIZE, FILE_FULL_EA_NAME_OFFSET, VIRTIO_VSOCK_CONFIG,
    VIRTIO_VSOCK_PARAMS, VIRTIO_VSOCK_READ_PARAMS,
};
use thinagent_km_sys::vmci::{SOCKADDR_VM, VmciCaptureBuffer};
use thinagent_km_sys::wsk::*;

// ----------------------------------------------------------------- NT types

const fn sockaddr() {
    // USHORT sa_family (2, at 0) + CHAR sa_data[14] (14, at 2) = 16, align 2
    assert!(size_of::<SOCKADDR>() == 16);
    assert!(align_of::<SOCKADDR>() == 2);
    assert!(offset_of!(SOCKADDR, sa_family) == 0);
    assert!(offset_of!(SOCKADDR, sa_data) == 2);
}

const fn unicode_string() {
    // USHORT Length (at 0) + USHORT MaximumLength (at 2) + pad 4 + PWCH Buffer (8, at 8) = 16
    assert!(size_of::<UNICODE_STRING>() == 16);
    assert!(offset_of!(UNICODE_STRING, Length) == 0);
    assert!(offset_of!(UNICODE_STRING, MaximumLength) == 2);
    assert!(offset_of!(UNICODE_STRING, Buffer) == 8);
}

const fn guid() {
    // unsigned long Data1 (4, at 0) + USHORT Data2 (at 4) + USHORT Data3 (at 6) + UCHAR Data4[8] (at 8) = 16
    assert!(size_of::<GUID>() == 16);
    assert!(offset_of!(GUID, Data2) == 4);
    assert!(offset_of!(GUID, Data3) == 6);
    assert!(offset_of!(GUID, Data4) == 8);
}

// ---------------------------------------------------------------- wsk.h

const fn wsk_socket() {
    // const VOID *Dispatch (8, at 0) = 8
    assert!(size_of::<WSK_SOCKET>() == 8);
    assert!(offset_of!(WSK_SOCKET, Dispatch) == 0);
}

const fn wsk_buf() {
    // PMDL Mdl (8, at 0) + ULONG Offset (4, at 8) + pad 4 + SIZE_T Length (8, at 16) = 24
    assert!(size_of::<WSK_BUF>() == 24);
    assert!(offset_of!(WSK_BUF, Mdl) == 0);
    assert!(offset_of!(WSK_BUF, Offset) == 8);
    assert!(offset_of!(WSK_BUF, Length) == 16);
}

const fn wsk_data_indication() {
    // struct _WSK_DATA_INDICATION *Next (8, at 0) + WSK_BUF Buffer (24, at 8) = 32
    assert!(size_of::<WSK_DATA_INDICATION>() == 32);
    assert!(offset_of!(WSK_DATA_INDICATION, Next) == 0);
    assert!(offset_of!(WSK_DATA_INDICATION, Buffer) == 8);
}

const fn wsk_registration() {
    // ULONGLONG ReservedRegistrationState (8, at 0) + PVOID ReservedRegistrationContext (8, at 8)
    // + KSPIN_LOCK = ULONG_PTR ReservedRegistrationLock (8, at 16) = 24
    assert!(size_of::<WSK_REGISTRATION>() == 24);
    assert!(align_of::<WSK_REGISTRATION>() == 8);
    assert!(offset_of!(WSK_REGISTRATION, ReservedRegistrationState) == 0);
    assert!(offset_of!(WSK_REGISTRATION, ReservedRegistrationContext) == 8);
    assert!(offset_of!(WSK_REGISTRATION, ReservedRegistrationLock) == 16);
}

const fn wsk_provider_characteristics() {
    // USHORT HighestVersion (at 0) + USHORT LowestVersion (at 2) = 4
    assert!(size_of::<WSK_PROVIDER_CHARACTERISTICS>() == 4);
    assert!(offset_of!(WSK_PROVIDER_CHARACTERISTICS, LowestVersion) == 2);
}

const fn wsk_client_dispatch() {
    // USHORT Version (at 0) + USHORT Reserved (at 2) + pad 4 + PFN_WSK_CLIENT_EVENT (8, at 8) = 16
    assert!(size_of::<WSK_CLIENT_DISPATCH>() == 16);
    assert!(offset_of!(WSK_CLIENT_DISPATCH, Version) == 0);
    assert!(offset_of!(WSK_CLIENT_DISPATCH, Reserved) == 2);
    assert!(offset_of!(WSK_CLIENT_DISPATCH, WskClientEvent) == 8);
}

const fn wsk_client_npi() {
    // PVOID ClientContext (8, at 0) + const WSK_CLIENT_DISPATCH *Dispatch (8, at 8) = 16
    assert!(size_of::<WSK_CLIENT_NPI>() == 16);
    assert!(offset_of!(WSK_CLIENT_NPI, ClientContext) == 0);
    assert!(offset_of!(WSK_CLIENT_NPI, Dispatch) == 8);
}

const fn wsk_client_connection_dispatch() {
    // 3 function pointers: WskReceiveEvent (at 0), WskDisconnectEvent (at 8),
    // WskSendBacklogEvent (at 16) = 24
    assert!(size_of::<WSK_CLIENT_CONNECTION_DISPATCH>() == 24);
    assert!(offset_of!(WSK_CLIENT_CONNECTION_DISPATCH, WskReceiveEvent) == 0);
    assert!(offset_of!(WSK_CLIENT_CONNECTION_DISPATCH, WskDisconnectEvent) == 8);
    assert!(offset_of!(WSK_CLIENT_CONNECTION_DISPATCH, WskSendBacklogEvent) == 16);
}

const fn wsk_provider_dispatch() {
    // USHORT Version (at 0) + USHORT Reserved (at 2) + pad 4, then 6 pointers from 8:
    // WskSocket 8, WskSocketConnect 16, WskControlClient 24, WskGetAddressInfo 32,
    // WskFreeAddressInfo 40, WskGetNameInfo 48; 8 + 6 × 8 = 56
    assert!(size_of::<WSK_PROVIDER_DISPATCH>() == 56);
    assert!(offset_of!(WSK_PROVIDER_DISPATCH, Version) == 0);
    assert!(offset_of!(WSK_PROVIDER_DISPATCH, Reserved) == 2);
    assert!(offset_of!(WSK_PROVIDER_DISPATCH, WskSocket) == 8);
    assert!(offset_of!(WSK_PROVIDER_DISPATCH, WskSocketConnect) == 16);
    assert!(offset_of!(WSK_PROVIDER_DISPATCH, WskControlClient) == 24);
    assert!(offset_of!(WSK_PROVIDER_DISPATCH, WskGetAddressInfo) == 32);
    assert!(offset_of!(WSK_PROVIDER_DISPATCH, WskFreeAddressInfo) == 40);
    assert!(offset_of!(WSK_PROVIDER_DISPATCH, WskGetNameInfo) == 48);
}

const fn wsk_provider_npi() {
    // PWSK_CLIENT Client (8, at 0) + const WSK_PROVIDER_DISPATCH *Dispatch (8, at 8) = 16
    assert!(size_of::<WSK_PROVIDER_NPI>() == 16);
    assert!(offset_of!(WSK_PROVIDER_NPI, Client) == 0);
    assert!(offset_of!(WSK_PROVIDER_NPI, Dispatch) == 8);
}

const fn wsk_provider_basic_dispatch() {
    // WskControlSocket (8, at 0) + WskCloseSocket (8, at 8) = 16
    assert!(size_of::<WSK_PROVIDER_BASIC_DISPATCH>() == 16);
    assert!(offset_of!(WSK_PROVIDER_BASIC_DISPATCH, WskControlSocket) == 0);
    assert!(offset_of!(WSK_PROVIDER_BASIC_DISPATCH, WskCloseSocket) == 8);
}

const fn wsk_provider_connection_dispatch() {
    // unnamed WSK_PROVIDER_BASIC_DISPATCH (16, at 0), then one pointer each:
    // WskBind 16, WskConnect 24, WskGetLocalAddress 32, WskGetRemoteAddress 40,
    // WskSend 48, WskReceive 56, WskDisconnect 64, WskRelease 72,
    // (NTDDI_WIN10_RS2+) WskConnectEx 80, WskSendEx 88, WskReceiveEx 96; 13 × 8 = 104
    type T = WSK_PROVIDER_CONNECTION_DISPATCH;
    assert!(size_of::<T>() == 104);
    assert!(offset_of!(T, Basic) == 0);
    assert!(offset_of!(T, Basic.WskControlSocket) == 0);
    assert!(offset_of!(T, Basic.WskCloseSocket) == 8);
    assert!(offset_of!(T, WskBind) == 16);
    assert!(offset_of!(T, WskConnect) == 24);
    assert!(offset_of!(T, WskGetLocalAddress) == 32);
    assert!(offset_of!(T, WskGetRemoteAddress) == 40);
    assert!(offset_of!(T, WskSend) == 48);
    assert!(offset_of!(T, WskReceive) == 56);
    assert!(offset_of!(T, WskDisconnect) == 64);
    assert!(offset_of!(T, WskRelease) == 72);
    assert!(offset_of!(T, WskConnectEx) == 80);
    assert!(offset_of!(T, WskSendEx) == 88);
    assert!(offset_of!(T, WskReceiveEx) == 96);
    // a pre-RS2 table ends after WskRelease: 10 × 8 = 80
    let pre_rs2 = CONNECTION_DISPATCH_PRE_RS2_SIZE;
    assert!(pre_rs2 == 80);
}

const fn function_pointer_options_are_pointer_sized() {
    // A NULL entry in a C dispatch table is `None` (niche optimisation).
    assert!(size_of::<PFN_WSK_SEND>() == 8);
    assert!(size_of::<PFN_WSK_SOCKET_CONNECT>() == 8);
    assert!(size_of::<PFN_WSK_CLIENT_EVENT>() == 8);
}

// --------------------------------------------------------------- VMCI sockets

const fn sockaddr_vm() {
    // sa_family_t = USHORT svm_family (at 0) + USHORT svm_reserved1 (at 2)
    // + unsigned int svm_port (at 4) + unsigned int svm_cid (at 8)
    // + UCHAR svm_zero[16 - 2 - 2 - 4 - 4 = 4] (at 12) = 16 = sizeof(SOCKADDR)
    assert!(size_of::<SOCKADDR_VM>() == 16);
    assert!(size_of::<SOCKADDR_VM>() == size_of::<SOCKADDR>());
    assert!(align_of::<SOCKADDR_VM>() == 4);
    assert!(offset_of!(SOCKADDR_VM, svm_family) == 0);
    assert!(offset_of!(SOCKADDR_VM, svm_reserved1) == 2);
    assert!(offset_of!(SOCKADDR_VM, svm_port) == 4);
    assert!(offset_of!(SOCKADDR_VM, svm_cid) == 8);
    assert!(offset_of!(SOCKADDR_VM, svm_zero) == 12);
}

const fn vmci_capture_buffer() {
    // ULONG inputBuffer[0x5C / sizeof(ULONG)] in the seed's listing: 23 × 4 = 92 = 0x5C, align 4
    assert!(size_of::<VmciCaptureBuffer>() == 0x5C);
    assert!(align_of::<VmciCaptureBuffer>() == 4);
}

// ------------------------------------------- fltKernel.h, from windows-sys

const fn flt_registration() {
    // USHORT Size (0) + USHORT Version (2) + FLT_REGISTRATION_FLAGS Flags (4)
    // + ContextRegistration (8) + OperationRegistration (16)
    // + 11 callbacks from 24: FilterUnload 24 … NormalizeNameComponentEx 96,
    //   SectionNotification 104; 24 + 11 × 8 = 112
    assert!(size_of::<FLT_REGISTRATION>() == 112);
    assert!(offset_of!(FLT_REGISTRATION, Flags) == 4);
    assert!(offset_of!(FLT_REGISTRATION, ContextRegistration) == 8);
    assert!(offset_of!(FLT_REGISTRATION, OperationRegistration) == 16);
    assert!(offset_of!(FLT_REGISTRATION, FilterUnloadCallback) == 24);
    assert!(offset_of!(FLT_REGISTRATION, NormalizeNameComponentExCallback) == 96);
    assert!(offset_of!(FLT_REGISTRATION, SectionNotificationCallback) == 104);
}

const fn flt_operation_registration() {
    // UCHAR MajorFunction (0) + pad 3 + ULONG Flags (4) + PreOperation (8)
    // + PostOperation (16) + PVOID Reserved1 (24) = 32
    assert!(size_of::<FLT_OPERATION_REGISTRATION>() == 32);
    assert!(offset_of!(FLT_OPERATION_REGISTRATION, Flags) == 4);
    assert!(offset_of!(FLT_OPERATION_REGISTRATION, PreOperation) == 8);
    assert!(offset_of!(FLT_OPERATION_REGISTRATION, PostOperation) == 16);
    assert!(offset_of!(FLT_OPERATION_REGISTRATION, Reserved1) == 24);
}

const fn flt_callback_data() {
    // ULONG Flags (0) + pad 4 + PETHREAD Thread (8) + PFLT_IO_PARAMETER_BLOCK Iopb (16)
    // + IO_STATUS_BLOCK IoStatus (16, at 24) + PFLT_TAG_DATA_BUFFER TagData (40)
    // + union { {LIST_ENTRY QueueLinks; PVOID QueueContext[2]}; PVOID FilterContext[4] } (32, at 48)
    // + KPROCESSOR_MODE RequestorMode (1, at 80) + pad 7 = 88
    assert!(size_of::<FLT_CALLBACK_DATA>() == 88);
    assert!(offset_of!(FLT_CALLBACK_DATA, Thread) == 8);
    assert!(offset_of!(FLT_CALLBACK_DATA, Iopb) == 16);
    assert!(offset_of!(FLT_CALLBACK_DATA, IoStatus) == 24);
    assert!(offset_of!(FLT_CALLBACK_DATA, TagData) == 40);
    assert!(offset_of!(FLT_CALLBACK_DATA, Anonymous) == 48);
    assert!(offset_of!(FLT_CALLBACK_DATA, RequestorMode) == 80);
}

const fn flt_io_parameter_block() {
    // ULONG IrpFlags (0) + UCHAR MajorFunction (4), MinorFunction (5), OperationFlags (6),
    // Reserved (7) + PFILE_OBJECT TargetFileObject (8) + PFLT_INSTANCE TargetInstance (16)
    // + FLT_PARAMETERS Parameters (24; 48 = its `Others` arm, 6 PVOIDs) = 72
    assert!(size_of::<FLT_IO_PARAMETER_BLOCK>() == 72);
    assert!(offset_of!(FLT_IO_PARAMETER_BLOCK, MajorFunction) == 4);
    assert!(offset_of!(FLT_IO_PARAMETER_BLOCK, MinorFunction) == 5);
    assert!(offset_of!(FLT_IO_PARAMETER_BLOCK, TargetFileObject) == 8);
    assert!(offset_of!(FLT_IO_PARAMETER_BLOCK, TargetInstance) == 16);
    assert!(offset_of!(FLT_IO_PARAMETER_BLOCK, Parameters) == 24);
}

// ------------------------------------------------- virtio-win viosock (public.h, vio_sockets.h)

const fn viosock_params() {
    // ULONGLONG Socket (8, at 0) + VIRTIO_VSOCK_TYPE Type (enum = int, 4, at 8) + pad 4 = 16, align 8
    assert!(size_of::<VIRTIO_VSOCK_PARAMS>() == 16);
    assert!(align_of::<VIRTIO_VSOCK_PARAMS>() == 8);
    assert!(offset_of!(VIRTIO_VSOCK_PARAMS, Socket) == 0);
    assert!(offset_of!(VIRTIO_VSOCK_PARAMS, Type) == 8);
    // ULONG32 guest_cid = 4; ULONG Flags = 4
    assert!(size_of::<VIRTIO_VSOCK_CONFIG>() == 4);
    assert!(size_of::<VIRTIO_VSOCK_READ_PARAMS>() == 4);
}

const fn viosock_sockaddr_vm() {
    // ADDRESS_FAMILY svm_family (2, at 0) + USHORT svm_reserved1 (at 2) + UINT svm_port (at 4)
    // + UINT svm_cid (at 8) = 12: vio_sockets.h has no svm_zero padding
    use thinagent_km_sys::viosock::SOCKADDR_VM as V;
    assert!(size_of::<V>() == 12);
    assert!(offset_of!(V, svm_reserved1) == 2);
    assert!(offset_of!(V, svm_port) == 4);
    assert!(offset_of!(V, svm_cid) == 8);
}

const fn file_full_ea_information() {
    // wdm.h: ULONG NextEntryOffset (at 0) + UCHAR Flags (4) + UCHAR EaNameLength (5)
    // + USHORT EaValueLength (6) + CHAR EaName[1] (at 8) = 9, padded to 12
    use thinagent_km_sys::fltmgr::windows_sys::Wdk::Storage::FileSystem::FILE_FULL_EA_INFORMATION as E;
    assert!(size_of::<E>() == FILE_FULL_EA_INFORMATION_SIZE);
    assert!(offset_of!(E, EaName) == FILE_FULL_EA_NAME_OFFSET);
    assert!(offset_of!(E, EaNameLength) == 5);
    assert!(offset_of!(E, EaValueLength) == 6);
}

// Evaluated by the compiler, for the host and for any `--target`.
const _: () = {
    sockaddr();
    unicode_string();
    guid();
    wsk_socket();
    wsk_buf();
    wsk_data_indication();
    wsk_registration();
    wsk_provider_characteristics();
    wsk_client_dispatch();
    wsk_client_npi();
    wsk_client_connection_dispatch();
    wsk_provider_dispatch();
    wsk_provider_npi();
    wsk_provider_basic_dispatch();
    wsk_provider_connection_dispatch();
    function_pointer_options_are_pointer_sized();
    sockaddr_vm();
    vmci_capture_buffer();
    flt_registration();
    flt_operation_registration();
    flt_callback_data();
    flt_io_parameter_block();
    viosock_params();
    viosock_sockaddr_vm();
    file_full_ea_information();
};

#[test]
fn layouts_match_the_windows_x64_headers() {
    sockaddr();
    unicode_string();
    guid();
    wsk_socket();
    wsk_buf();
    wsk_data_indication();
    wsk_registration();
    wsk_provider_characteristics();
    wsk_client_dispatch();
    wsk_client_npi();
    wsk_client_connection_dispatch();
    wsk_provider_dispatch();
    wsk_provider_npi();
    wsk_provider_basic_dispatch();
    wsk_provider_connection_dispatch();
    function_pointer_options_are_pointer_sized();
    sockaddr_vm();
    vmci_capture_buffer();
    flt_registration();
    flt_operation_registration();
    flt_callback_data();
    flt_io_parameter_block();
    viosock_params();
    viosock_sockaddr_vm();
    file_full_ea_information();
}
