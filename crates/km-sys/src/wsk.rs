//! Winsock Kernel (`wsk.h`), the part of it a WSK *client* needs to register,
//! capture a provider and use a connection-oriented socket.
//!
//! Sources, checked field by field (see `docs/km-sys.md`):
//! * Microsoft's reference pages for `wsk.h`
//!   (<https://learn.microsoft.com/windows-hardware/drivers/ddi/wsk/>,
//!   source repository MicrosoftDocs/windows-driver-docs-ddi,
//!   `wdk-ddi-src/content/wsk/*.md`);
//! * ReactOS's clean-room `sdk/include/ddk/wsk.h` (reactos/reactos), which
//!   matches those pages up to Windows 8;
//! * the Windows 10 RS2 additions (`WSK_FLAG_STREAM_SOCKET`,
//!   `WskConnectEx` / `WskSendEx` / `WskReceiveEx` at the end of
//!   `WSK_PROVIDER_CONNECTION_DISPATCH`) from the same reference pages and
//!   the mingw-w64 port of `wsk.h` in utoni's mingw-w64-ksocket.
//!
//! Names are the header's. Function-pointer members are
//! `Option<unsafe extern "system" fn ...>` (a `NULL` entry is `None`), with
//! `ULONG` = `u32`, `USHORT` = `u16`, `SIZE_T` = `usize`, `PVOID` =
//! `*mut c_void`, `NTSTATUS` = `i32`. `WSKAPI` is `NTAPI`, i.e.
//! `extern "system"`.
//!
//! IRQL: every WSK dispatch function runs at `<= DISPATCH_LEVEL` and
//! completes through the IRP; `WskRegister`, `WskCaptureProviderNPI` (with a
//! non-zero wait) and `WskDeregister` need `PASSIVE_LEVEL`.

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

use core::ffi::c_void;

use crate::nt::{
    ADDRESS_FAMILY, ADDRINFOEXW, EPROCESS, ETHREAD, GUID, IRP, KSPIN_LOCK, MDL, NTSTATUS,
    SECURITY_DESCRIPTOR, SOCKADDR, UNICODE_STRING,
};

// ---------------------------------------------------------------------------
// Constants (wsk.h `#define`s)
// ---------------------------------------------------------------------------

/// `MAKE_WSK_VERSION(Mj, Mn)`: `((USHORT)((Mj) << 8) | (USHORT)((Mn) & 0xff))`.
#[must_use]
pub const fn MAKE_WSK_VERSION(major: u8, minor: u8) -> u16 {
    ((major as u16) << 8) | minor as u16
}

/// `WSK_MAJOR_VERSION(V)`: `((UCHAR)((V) >> 8))`.
#[must_use]
pub const fn WSK_MAJOR_VERSION(version: u16) -> u8 {
    (version >> 8) as u8
}

/// `WSK_MINOR_VERSION(V)`: `((UCHAR)(V))`.
#[must_use]
pub const fn WSK_MINOR_VERSION(version: u16) -> u8 {
    version as u8
}

/// WSK 1.0, the version every provider since Vista supports and the one
/// Microsoft's samples register with.
pub const WSK_VERSION_1_0: u16 = MAKE_WSK_VERSION(1, 0);

/// `WskCaptureProviderNPI` wait: return at once (`WSK_NO_WAIT`, 0).
pub const WSK_NO_WAIT: u32 = 0;
/// `WskCaptureProviderNPI` wait: until the provider is ready
/// (`WSK_INFINITE_WAIT`, 0xffffffff).
pub const WSK_INFINITE_WAIT: u32 = 0xffff_ffff;

/// Socket category for `WskSocket`'s `Flags`: basic socket, options and
/// IOCTLs only (`WSK_FLAG_BASIC_SOCKET`, 0).
pub const WSK_FLAG_BASIC_SOCKET: u32 = 0x0000_0000;
/// Listening socket (`WSK_FLAG_LISTEN_SOCKET`, 1).
pub const WSK_FLAG_LISTEN_SOCKET: u32 = 0x0000_0001;
/// Connection-oriented socket (`WSK_FLAG_CONNECTION_SOCKET`, 2); its
/// dispatch table is [`WSK_PROVIDER_CONNECTION_DISPATCH`]. `WskSocketConnect`
/// always creates this kind.
pub const WSK_FLAG_CONNECTION_SOCKET: u32 = 0x0000_0002;
/// Datagram socket (`WSK_FLAG_DATAGRAM_SOCKET`, 4).
pub const WSK_FLAG_DATAGRAM_SOCKET: u32 = 0x0000_0004;
/// Stream socket (`WSK_FLAG_STREAM_SOCKET`, 8), Windows 10 1703 (RS2) and
/// later.
pub const WSK_FLAG_STREAM_SOCKET: u32 = 0x0000_0008;

/// Event-callback flag: the WSK subsystem called the callback at
/// DISPATCH_LEVEL (`WSK_FLAG_AT_DISPATCH_LEVEL`, 8).
pub const WSK_FLAG_AT_DISPATCH_LEVEL: u32 = 0x0000_0008;
/// `WskDisconnect` flag (and `WskDisconnectEvent` flag): abortive
/// disconnect (`WSK_FLAG_ABORTIVE`, 1).
pub const WSK_FLAG_ABORTIVE: u32 = 0x0000_0001;
/// `WskSend` flag: send without Nagle delay (`WSK_FLAG_NODELAY`, 2).
pub const WSK_FLAG_NODELAY: u32 = 0x0000_0002;
/// `WskReceive` flag: complete only when the buffer is full
/// (`WSK_FLAG_WAITALL`, 2).
pub const WSK_FLAG_WAITALL: u32 = 0x0000_0002;
/// `WskReceive` flag: drain and discard (`WSK_FLAG_DRAIN`, 4).
pub const WSK_FLAG_DRAIN: u32 = 0x0000_0004;

/// `SOCK_STREAM` (`ws2def.h`/`winsock2.h`: 1), the socket type for a
/// connection socket.
pub const SOCK_STREAM: u16 = 1;

/// `WSK_CONTROL_SOCKET_TYPE` (`wsk.h`), a C enum, so `int`-sized.
pub type WSK_CONTROL_SOCKET_TYPE = i32;
/// `WskSetOption`.
pub const WskSetOption: WSK_CONTROL_SOCKET_TYPE = 0;
/// `WskGetOption`.
pub const WskGetOption: WSK_CONTROL_SOCKET_TYPE = 1;
/// `WskIoctl`.
pub const WskIoctl: WSK_CONTROL_SOCKET_TYPE = 2;

/// `PWSK_CLIENT` (`wsk.h`: `typedef PVOID PWSK_CLIENT`): the provider's
/// handle for a registered client, from [`WSK_PROVIDER_NPI::Client`].
pub type PWSK_CLIENT = *mut c_void;

// ---------------------------------------------------------------------------
// Plain structures
// ---------------------------------------------------------------------------

/// `WSK_SOCKET` (`wsk.h`): `const VOID *Dispatch;`. The provider allocates
/// it; `Dispatch` points to the table for the socket's category (for a
/// connection socket a [`WSK_PROVIDER_CONNECTION_DISPATCH`]).
/// x64: 8 bytes.
#[repr(C)]
#[derive(Debug)]
pub struct WSK_SOCKET {
    /// The provider's dispatch table for this socket.
    pub Dispatch: *const c_void,
}

/// `WSK_BUF` (`wsk.h`): `PMDL Mdl; ULONG Offset; SIZE_T Length;`.
/// x64: 8 + 4 + pad 4 + 8 = 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSK_BUF {
    /// Locked MDL chain describing the data.
    pub Mdl: *mut MDL,
    /// Offset into the first MDL of the chain.
    pub Offset: u32,
    /// Bytes of data starting at `Offset`.
    pub Length: usize,
}

/// `WSK_DATA_INDICATION` (`wsk.h`): `struct _WSK_DATA_INDICATION *Next;
/// WSK_BUF Buffer;`. x64: 8 + 24 = 32 bytes.
#[repr(C)]
#[derive(Debug)]
pub struct WSK_DATA_INDICATION {
    /// Next indication in the list, or null.
    pub Next: *mut WSK_DATA_INDICATION,
    /// The indicated data.
    pub Buffer: WSK_BUF,
}

/// `WSK_REGISTRATION` (`wsk.h`): `ULONGLONG ReservedRegistrationState;
/// PVOID ReservedRegistrationContext; KSPIN_LOCK ReservedRegistrationLock;`.
/// Opaque to the client, which only provides the storage (non-paged, alive
/// from `WskRegister` to `WskDeregister`). x64: 8 + 8 + 8 = 24 bytes.
#[repr(C)]
#[derive(Debug)]
pub struct WSK_REGISTRATION {
    /// Reserved for the WSK subsystem.
    pub ReservedRegistrationState: u64,
    /// Reserved for the WSK subsystem.
    pub ReservedRegistrationContext: *mut c_void,
    /// Reserved for the WSK subsystem.
    pub ReservedRegistrationLock: KSPIN_LOCK,
}

impl WSK_REGISTRATION {
    /// Zeroed storage to pass to `WskRegister`.
    #[must_use]
    pub const fn zeroed() -> Self {
        Self {
            ReservedRegistrationState: 0,
            ReservedRegistrationContext: core::ptr::null_mut(),
            ReservedRegistrationLock: 0,
        }
    }
}

/// `WSK_PROVIDER_CHARACTERISTICS` (`wsk.h`): `USHORT HighestVersion;
/// USHORT LowestVersion;`. 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WSK_PROVIDER_CHARACTERISTICS {
    /// Highest WSK version the provider supports.
    pub HighestVersion: u16,
    /// Lowest WSK version the provider supports.
    pub LowestVersion: u16,
}

// ---------------------------------------------------------------------------
// Client side: what the driver gives the provider
// ---------------------------------------------------------------------------

/// `PFN_WSK_CLIENT_EVENT` (`wsk.h`):
/// `NTSTATUS (PVOID ClientContext, ULONG EventType, PVOID Information,
/// SIZE_T InformationLength)`.
pub type PFN_WSK_CLIENT_EVENT = Option<
    unsafe extern "system" fn(
        ClientContext: *mut c_void,
        EventType: u32,
        Information: *mut c_void,
        InformationLength: usize,
    ) -> NTSTATUS,
>;

/// `WSK_CLIENT_DISPATCH` (`wsk.h`): `USHORT Version; USHORT Reserved;
/// PFN_WSK_CLIENT_EVENT WskClientEvent;`.
/// x64: 2 + 2 + pad 4 + 8 = 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSK_CLIENT_DISPATCH {
    /// WSK version the client wants ([`MAKE_WSK_VERSION`]).
    pub Version: u16,
    /// Reserved, 0.
    pub Reserved: u16,
    /// Client-level event callback, normally `None`.
    pub WskClientEvent: PFN_WSK_CLIENT_EVENT,
}

/// `WSK_CLIENT_NPI` (`wsk.h`): `PVOID ClientContext;
/// const WSK_CLIENT_DISPATCH *Dispatch;`. x64: 8 + 8 = 16 bytes.
#[repr(C)]
#[derive(Debug)]
pub struct WSK_CLIENT_NPI {
    /// Passed back to the client's callbacks.
    pub ClientContext: *mut c_void,
    /// The client's dispatch table (must outlive the registration).
    pub Dispatch: *const WSK_CLIENT_DISPATCH,
}

/// `PFN_WSK_RECEIVE_EVENT` (`wsk.h`): `NTSTATUS (PVOID SocketContext,
/// ULONG Flags, PWSK_DATA_INDICATION DataIndication, SIZE_T BytesIndicated,
/// SIZE_T *BytesAccepted)`.
pub type PFN_WSK_RECEIVE_EVENT = Option<
    unsafe extern "system" fn(
        SocketContext: *mut c_void,
        Flags: u32,
        DataIndication: *mut WSK_DATA_INDICATION,
        BytesIndicated: usize,
        BytesAccepted: *mut usize,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_DISCONNECT_EVENT` (`wsk.h`): `NTSTATUS (PVOID SocketContext,
/// ULONG Flags)`.
pub type PFN_WSK_DISCONNECT_EVENT =
    Option<unsafe extern "system" fn(SocketContext: *mut c_void, Flags: u32) -> NTSTATUS>;

/// `PFN_WSK_SEND_BACKLOG_EVENT` (`wsk.h`): `NTSTATUS (PVOID SocketContext,
/// SIZE_T IdealBacklogSize)`.
pub type PFN_WSK_SEND_BACKLOG_EVENT = Option<
    unsafe extern "system" fn(SocketContext: *mut c_void, IdealBacklogSize: usize) -> NTSTATUS,
>;

/// `WSK_CLIENT_CONNECTION_DISPATCH` (`wsk.h`): the client's event callbacks
/// for a connection socket, passed to `WskSocketConnect` (may be null when
/// the client enables no events). x64: 3 × 8 = 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSK_CLIENT_CONNECTION_DISPATCH {
    /// Data arrived.
    pub WskReceiveEvent: PFN_WSK_RECEIVE_EVENT,
    /// The peer disconnected.
    pub WskDisconnectEvent: PFN_WSK_DISCONNECT_EVENT,
    /// The ideal send backlog changed.
    pub WskSendBacklogEvent: PFN_WSK_SEND_BACKLOG_EVENT,
}

// ---------------------------------------------------------------------------
// Provider side: what the provider gives the driver
// ---------------------------------------------------------------------------

/// `PFN_WSK_SOCKET` (`wsk.h`): `NTSTATUS (PWSK_CLIENT Client,
/// ADDRESS_FAMILY AddressFamily, USHORT SocketType, ULONG Protocol,
/// ULONG Flags, PVOID SocketContext, const VOID *Dispatch,
/// PEPROCESS OwningProcess, PETHREAD OwningThread,
/// PSECURITY_DESCRIPTOR SecurityDescriptor, PIRP Irp)`. The new
/// `PWSK_SOCKET` arrives in `Irp->IoStatus.Information`.
pub type PFN_WSK_SOCKET = Option<
    unsafe extern "system" fn(
        Client: PWSK_CLIENT,
        AddressFamily: ADDRESS_FAMILY,
        SocketType: u16,
        Protocol: u32,
        Flags: u32,
        SocketContext: *mut c_void,
        Dispatch: *const c_void,
        OwningProcess: *mut EPROCESS,
        OwningThread: *mut ETHREAD,
        SecurityDescriptor: *mut SECURITY_DESCRIPTOR,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_SOCKET_CONNECT` (`wsk.h`): `NTSTATUS (PWSK_CLIENT Client,
/// USHORT SocketType, ULONG Protocol, PSOCKADDR LocalAddress,
/// PSOCKADDR RemoteAddress, ULONG Flags, PVOID SocketContext,
/// const WSK_CLIENT_CONNECTION_DISPATCH *Dispatch, PEPROCESS OwningProcess,
/// PETHREAD OwningThread, PSECURITY_DESCRIPTOR SecurityDescriptor,
/// PIRP Irp)`. Creates, binds and connects a connection socket; the family
/// comes from the addresses. `Flags` is reserved (0). The new `PWSK_SOCKET`
/// arrives in `Irp->IoStatus.Information`.
pub type PFN_WSK_SOCKET_CONNECT = Option<
    unsafe extern "system" fn(
        Client: PWSK_CLIENT,
        SocketType: u16,
        Protocol: u32,
        LocalAddress: *mut SOCKADDR,
        RemoteAddress: *mut SOCKADDR,
        Flags: u32,
        SocketContext: *mut c_void,
        Dispatch: *const WSK_CLIENT_CONNECTION_DISPATCH,
        OwningProcess: *mut EPROCESS,
        OwningThread: *mut ETHREAD,
        SecurityDescriptor: *mut SECURITY_DESCRIPTOR,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_CONTROL_CLIENT` (`wsk.h`): `NTSTATUS (PWSK_CLIENT Client,
/// ULONG ControlCode, SIZE_T InputSize, PVOID InputBuffer, SIZE_T OutputSize,
/// PVOID OutputBuffer, SIZE_T *OutputSizeReturned, PIRP Irp)`.
pub type PFN_WSK_CONTROL_CLIENT = Option<
    unsafe extern "system" fn(
        Client: PWSK_CLIENT,
        ControlCode: u32,
        InputSize: usize,
        InputBuffer: *mut c_void,
        OutputSize: usize,
        OutputBuffer: *mut c_void,
        OutputSizeReturned: *mut usize,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_GET_ADDRESS_INFO` (`wsk.h`, Windows 7+): `NTSTATUS
/// (PWSK_CLIENT Client, PUNICODE_STRING NodeName, PUNICODE_STRING
/// ServiceName, ULONG NameSpace, GUID *Provider, PADDRINFOEXW Hints,
/// PADDRINFOEXW *Result, PEPROCESS OwningProcess, PETHREAD OwningThread,
/// PIRP Irp)`.
pub type PFN_WSK_GET_ADDRESS_INFO = Option<
    unsafe extern "system" fn(
        Client: PWSK_CLIENT,
        NodeName: *mut UNICODE_STRING,
        ServiceName: *mut UNICODE_STRING,
        NameSpace: u32,
        Provider: *mut GUID,
        Hints: *mut ADDRINFOEXW,
        Result: *mut *mut ADDRINFOEXW,
        OwningProcess: *mut EPROCESS,
        OwningThread: *mut ETHREAD,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_FREE_ADDRESS_INFO` (`wsk.h`, Windows 7+): `VOID
/// (PWSK_CLIENT Client, PADDRINFOEXW AddrInfo)`.
pub type PFN_WSK_FREE_ADDRESS_INFO =
    Option<unsafe extern "system" fn(Client: PWSK_CLIENT, AddrInfo: *mut ADDRINFOEXW)>;

/// `PFN_WSK_GET_NAME_INFO` (`wsk.h`, Windows 7+): `NTSTATUS
/// (PWSK_CLIENT Client, PSOCKADDR SockAddr, ULONG SockAddrLength,
/// PUNICODE_STRING NodeName, PUNICODE_STRING ServiceName, ULONG Flags,
/// PEPROCESS OwningProcess, PETHREAD OwningThread, PIRP Irp)`.
pub type PFN_WSK_GET_NAME_INFO = Option<
    unsafe extern "system" fn(
        Client: PWSK_CLIENT,
        SockAddr: *mut SOCKADDR,
        SockAddrLength: u32,
        NodeName: *mut UNICODE_STRING,
        ServiceName: *mut UNICODE_STRING,
        Flags: u32,
        OwningProcess: *mut EPROCESS,
        OwningThread: *mut ETHREAD,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `WSK_PROVIDER_DISPATCH` (`wsk.h`): `USHORT Version; USHORT Reserved;`
/// then six function pointers (the last three since Windows 7).
/// x64: 2 + 2 + pad 4 + 6 × 8 = 56 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSK_PROVIDER_DISPATCH {
    /// WSK version the provider speaks with this client.
    pub Version: u16,
    /// Reserved.
    pub Reserved: u16,
    /// Create a socket.
    pub WskSocket: PFN_WSK_SOCKET,
    /// Create, bind and connect a connection socket.
    pub WskSocketConnect: PFN_WSK_SOCKET_CONNECT,
    /// Client-level control operations.
    pub WskControlClient: PFN_WSK_CONTROL_CLIENT,
    /// Name resolution (Windows 7+).
    pub WskGetAddressInfo: PFN_WSK_GET_ADDRESS_INFO,
    /// Free a name-resolution result (Windows 7+).
    pub WskFreeAddressInfo: PFN_WSK_FREE_ADDRESS_INFO,
    /// Reverse name resolution (Windows 7+).
    pub WskGetNameInfo: PFN_WSK_GET_NAME_INFO,
}

/// `WSK_PROVIDER_NPI` (`wsk.h`): `PWSK_CLIENT Client;
/// const WSK_PROVIDER_DISPATCH *Dispatch;`, filled by
/// `WskCaptureProviderNPI`. x64: 8 + 8 = 16 bytes.
#[repr(C)]
#[derive(Debug)]
pub struct WSK_PROVIDER_NPI {
    /// First argument of every provider-level call.
    pub Client: PWSK_CLIENT,
    /// The provider's dispatch table.
    pub Dispatch: *const WSK_PROVIDER_DISPATCH,
}

impl WSK_PROVIDER_NPI {
    /// Null NPI (storage for `WskCaptureProviderNPI` to fill).
    #[must_use]
    pub const fn null() -> Self {
        Self {
            Client: core::ptr::null_mut(),
            Dispatch: core::ptr::null(),
        }
    }
}

/// `PFN_WSK_CONTROL_SOCKET` (`wsk.h`): `NTSTATUS (PWSK_SOCKET Socket,
/// WSK_CONTROL_SOCKET_TYPE RequestType, ULONG ControlCode, ULONG Level,
/// SIZE_T InputSize, PVOID InputBuffer, SIZE_T OutputSize,
/// PVOID OutputBuffer, SIZE_T *OutputSizeReturned, PIRP Irp)`.
pub type PFN_WSK_CONTROL_SOCKET = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        RequestType: WSK_CONTROL_SOCKET_TYPE,
        ControlCode: u32,
        Level: u32,
        InputSize: usize,
        InputBuffer: *mut c_void,
        OutputSize: usize,
        OutputBuffer: *mut c_void,
        OutputSizeReturned: *mut usize,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_CLOSE_SOCKET` (`wsk.h`): `NTSTATUS (PWSK_SOCKET Socket,
/// PIRP Irp)`. The socket is freed when the IRP completes.
pub type PFN_WSK_CLOSE_SOCKET =
    Option<unsafe extern "system" fn(Socket: *mut WSK_SOCKET, Irp: *mut IRP) -> NTSTATUS>;

/// `WSK_PROVIDER_BASIC_DISPATCH` (`wsk.h`): the two functions every socket
/// has, and the first member of every other socket dispatch table.
/// x64: 2 × 8 = 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSK_PROVIDER_BASIC_DISPATCH {
    /// Socket options and IOCTLs.
    pub WskControlSocket: PFN_WSK_CONTROL_SOCKET,
    /// Close the socket.
    pub WskCloseSocket: PFN_WSK_CLOSE_SOCKET,
}

/// `PFN_WSK_BIND` (`wsk.h`): `NTSTATUS (PWSK_SOCKET Socket,
/// PSOCKADDR LocalAddress, ULONG Flags, PIRP Irp)`.
pub type PFN_WSK_BIND = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        LocalAddress: *mut SOCKADDR,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_CONNECT` (`wsk.h`): `NTSTATUS (PWSK_SOCKET Socket,
/// PSOCKADDR RemoteAddress, ULONG Flags, PIRP Irp)`.
pub type PFN_WSK_CONNECT = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        RemoteAddress: *mut SOCKADDR,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_GET_LOCAL_ADDRESS` (`wsk.h`): `NTSTATUS (PWSK_SOCKET Socket,
/// PSOCKADDR LocalAddress, PIRP Irp)`.
pub type PFN_WSK_GET_LOCAL_ADDRESS = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        LocalAddress: *mut SOCKADDR,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_GET_REMOTE_ADDRESS` (`wsk.h`): `NTSTATUS (PWSK_SOCKET Socket,
/// PSOCKADDR RemoteAddress, PIRP Irp)`.
pub type PFN_WSK_GET_REMOTE_ADDRESS = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        RemoteAddress: *mut SOCKADDR,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_SEND` (`wsk.h`): `NTSTATUS (PWSK_SOCKET Socket, PWSK_BUF Buffer,
/// ULONG Flags, PIRP Irp)`. Bytes sent arrive in `Irp->IoStatus.Information`.
pub type PFN_WSK_SEND = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        Buffer: *mut WSK_BUF,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_RECEIVE` (`wsk.h`): `NTSTATUS (PWSK_SOCKET Socket,
/// PWSK_BUF Buffer, ULONG Flags, PIRP Irp)`. Bytes received arrive in
/// `Irp->IoStatus.Information`; 0 means the peer closed gracefully.
pub type PFN_WSK_RECEIVE = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        Buffer: *mut WSK_BUF,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_DISCONNECT` (`wsk.h`): `NTSTATUS (PWSK_SOCKET Socket,
/// PWSK_BUF Buffer /* optional */, ULONG Flags, PIRP Irp)`.
pub type PFN_WSK_DISCONNECT = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        Buffer: *mut WSK_BUF,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_RELEASE_DATA_INDICATION_LIST` (`wsk.h`): `NTSTATUS
/// (PWSK_SOCKET Socket, PWSK_DATA_INDICATION DataIndication)`.
pub type PFN_WSK_RELEASE_DATA_INDICATION_LIST = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        DataIndication: *mut WSK_DATA_INDICATION,
    ) -> NTSTATUS,
>;

/// `PFN_WSK_CONNECT_EX` (`wsk.h`, Windows 10 1703+): `NTSTATUS
/// (PWSK_SOCKET Socket, PSOCKADDR RemoteAddress, PWSK_BUF Buffer,
/// ULONG Flags, PIRP Irp)`.
pub type PFN_WSK_CONNECT_EX = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        RemoteAddress: *mut SOCKADDR,
        Buffer: *mut WSK_BUF,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// `WSK_PROVIDER_CONNECTION_DISPATCH` (`wsk.h`): the dispatch table of a
/// connection socket (`WSK_SOCKET::Dispatch` of a socket created with
/// [`WSK_FLAG_CONNECTION_SOCKET`] or by `WskSocketConnect`).
///
/// In C the first member is an *unnamed* `WSK_PROVIDER_BASIC_DISPATCH`
/// (C++ names it `Basic`); the layout is the same. The last three members
/// exist only when compiled for `NTDDI_WIN10_RS2` and later: a provider
/// written against an older `wsk.h` (possibly VMware's vSockets provider,
/// see `docs/km-sys.md`) has a table of [`CONNECTION_DISPATCH_PRE_RS2_SIZE`]
/// bytes, so never read `WskConnectEx`, `WskSendEx` or `WskReceiveEx` from
/// a provider that is not Microsoft's own.
///
/// x64: 2 × 8 (Basic) + 11 × 8 = 104 bytes; up to `WskRelease`: 80 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSK_PROVIDER_CONNECTION_DISPATCH {
    /// `WskControlSocket` and `WskCloseSocket`.
    pub Basic: WSK_PROVIDER_BASIC_DISPATCH,
    /// Bind to a local address.
    pub WskBind: PFN_WSK_BIND,
    /// Connect to a remote address.
    pub WskConnect: PFN_WSK_CONNECT,
    /// Query the local address.
    pub WskGetLocalAddress: PFN_WSK_GET_LOCAL_ADDRESS,
    /// Query the remote address.
    pub WskGetRemoteAddress: PFN_WSK_GET_REMOTE_ADDRESS,
    /// Send data.
    pub WskSend: PFN_WSK_SEND,
    /// Receive data.
    pub WskReceive: PFN_WSK_RECEIVE,
    /// Disconnect (gracefully, or abortively with [`WSK_FLAG_ABORTIVE`]).
    pub WskDisconnect: PFN_WSK_DISCONNECT,
    /// Release indicated data (`WskRelease`).
    pub WskRelease: PFN_WSK_RELEASE_DATA_INDICATION_LIST,
    /// Connect and send (Windows 10 1703+ header only, see above).
    pub WskConnectEx: PFN_WSK_CONNECT_EX,
    /// Reserved for system use (`PFN_WSK_SEND_EX`; Windows 10 1703+).
    pub WskSendEx: *const c_void,
    /// Reserved for system use (`PFN_WSK_RECEIVE_EX`; Windows 10 1703+).
    pub WskReceiveEx: *const c_void,
}

/// Size of a [`WSK_PROVIDER_CONNECTION_DISPATCH`] built against a `wsk.h`
/// older than Windows 10 1703 (it ends after `WskRelease`): 10 pointers.
pub const CONNECTION_DISPATCH_PRE_RS2_SIZE: usize =
    core::mem::offset_of!(WSK_PROVIDER_CONNECTION_DISPATCH, WskConnectEx);

// Compile-time layout checks for Windows x64 (derivations in the item docs
// and in tests/layout.rs): a wrong layout fails the driver build itself.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<WSK_SOCKET>() == 8);
    assert!(size_of::<WSK_BUF>() == 24);
    assert!(size_of::<WSK_DATA_INDICATION>() == 32);
    assert!(size_of::<WSK_REGISTRATION>() == 24);
    assert!(size_of::<WSK_PROVIDER_CHARACTERISTICS>() == 4);
    assert!(size_of::<WSK_CLIENT_DISPATCH>() == 16);
    assert!(size_of::<WSK_CLIENT_NPI>() == 16);
    assert!(size_of::<WSK_CLIENT_CONNECTION_DISPATCH>() == 24);
    assert!(size_of::<WSK_PROVIDER_DISPATCH>() == 56);
    assert!(size_of::<WSK_PROVIDER_NPI>() == 16);
    assert!(size_of::<WSK_PROVIDER_BASIC_DISPATCH>() == 16);
    assert!(size_of::<WSK_PROVIDER_CONNECTION_DISPATCH>() == 104);
    assert!(CONNECTION_DISPATCH_PRE_RS2_SIZE == 80);
};

// ---------------------------------------------------------------------------
// netio.sys exports
// ---------------------------------------------------------------------------

#[cfg(windows)]
#[link(name = "netio.sys", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    /// `WskRegister` (`wsk.h`, netio.sys; PASSIVE_LEVEL): registers a WSK
    /// client. `WskRegistration` must stay valid (non-paged) until
    /// `WskDeregister` returns.
    pub fn WskRegister(
        WskClientNpi: *mut WSK_CLIENT_NPI,
        WskRegistration: *mut WSK_REGISTRATION,
    ) -> NTSTATUS;

    /// `WskCaptureProviderNPI` (`wsk.h`, netio.sys): waits up to
    /// `WaitTimeout` ms ([`WSK_NO_WAIT`], [`WSK_INFINITE_WAIT`]) for the WSK
    /// subsystem and fills `WskProviderNpi`. PASSIVE_LEVEL unless
    /// `WaitTimeout` is `WSK_NO_WAIT` (then `<= DISPATCH_LEVEL`).
    pub fn WskCaptureProviderNPI(
        WskRegistration: *mut WSK_REGISTRATION,
        WaitTimeout: u32,
        WskProviderNpi: *mut WSK_PROVIDER_NPI,
    ) -> NTSTATUS;

    /// `WskReleaseProviderNPI` (`wsk.h`, netio.sys; `<= DISPATCH_LEVEL`):
    /// releases a captured provider NPI.
    pub fn WskReleaseProviderNPI(WskRegistration: *mut WSK_REGISTRATION);

    /// `WskQueryProviderCharacteristics` (`wsk.h`, netio.sys;
    /// `<= DISPATCH_LEVEL`): the WSK versions the subsystem supports.
    pub fn WskQueryProviderCharacteristics(
        WskRegistration: *mut WSK_REGISTRATION,
        WskProviderCharacteristics: *mut WSK_PROVIDER_CHARACTERISTICS,
    ) -> NTSTATUS;

    /// `WskDeregister` (`wsk.h`, netio.sys; PASSIVE_LEVEL): waits for every
    /// captured NPI to be released and every socket to be closed, then
    /// deregisters the client.
    pub fn WskDeregister(WskRegistration: *mut WSK_REGISTRATION);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wsk_version_macros() {
        assert_eq!(MAKE_WSK_VERSION(1, 0), 0x0100);
        assert_eq!(MAKE_WSK_VERSION(2, 0x34), 0x0234);
        assert_eq!(WSK_MAJOR_VERSION(0x0234), 2);
        assert_eq!(WSK_MINOR_VERSION(0x0234), 0x34);
        assert_eq!(WSK_VERSION_1_0, 0x0100);
    }

    #[test]
    fn socket_kinds_are_distinct_bits() {
        let kinds = [
            WSK_FLAG_LISTEN_SOCKET,
            WSK_FLAG_CONNECTION_SOCKET,
            WSK_FLAG_DATAGRAM_SOCKET,
            WSK_FLAG_STREAM_SOCKET,
        ];
        for (i, a) in kinds.iter().enumerate() {
            assert_eq!(a.count_ones(), 1);
            for b in &kinds[i + 1..] {
                assert_eq!(a & b, 0);
            }
        }
        assert_eq!(WSK_FLAG_BASIC_SOCKET, 0);
    }

    #[test]
    fn zeroed_registration_and_null_npi() {
        let r = WSK_REGISTRATION::zeroed();
        assert_eq!(r.ReservedRegistrationState, 0);
        assert!(r.ReservedRegistrationContext.is_null());
        let n = WSK_PROVIDER_NPI::null();
        assert!(n.Client.is_null() && n.Dispatch.is_null());
    }

    /// A provider-side function with the exact `PFN_WSK_SEND` signature can
    /// be stored in and called through the table (the ABI is the same
    /// `extern "system"` on every host).
    #[test]
    fn dispatch_table_calls_through() {
        unsafe extern "system" fn send(
            _s: *mut WSK_SOCKET,
            b: *mut WSK_BUF,
            flags: u32,
            _irp: *mut IRP,
        ) -> NTSTATUS {
            // SAFETY: the test passes a valid, exclusive WSK_BUF pointer.
            let len = unsafe { (*b).Length };
            (len as i32) + flags as i32
        }
        let basic = WSK_PROVIDER_BASIC_DISPATCH {
            WskControlSocket: None,
            WskCloseSocket: None,
        };
        let table = WSK_PROVIDER_CONNECTION_DISPATCH {
            Basic: basic,
            WskBind: None,
            WskConnect: None,
            WskGetLocalAddress: None,
            WskGetRemoteAddress: None,
            WskSend: Some(send),
            WskReceive: None,
            WskDisconnect: None,
            WskRelease: None,
            WskConnectEx: None,
            WskSendEx: core::ptr::null(),
            WskReceiveEx: core::ptr::null(),
        };
        let mut buf = WSK_BUF {
            Mdl: core::ptr::null_mut(),
            Offset: 0,
            Length: 40,
        };
        let f = table.WskSend.expect("set above");
        // SAFETY: `send` only reads `buf`, which lives for the call.
        let r = unsafe { f(core::ptr::null_mut(), &mut buf, 2, core::ptr::null_mut()) };
        assert_eq!(r, 42);
    }
}
