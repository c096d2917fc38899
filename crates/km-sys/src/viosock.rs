//! virtio-win's `viosock.sys` (virtio-vsock for KVM/QEMU guests): the device
//! interface a kernel client speaks to it directly, without a WSK provider.
//!
//! `viosock.sys` exports no Winsock Kernel provider. virtio-win's own kernel
//! clients link the static `VioWsk` library, which implements WSK-shaped
//! calls over this interface:
//!
//! * a **socket is a file object** opened on the viosock device (its
//!   `GUID_DEVINTERFACE_VIOSOCK` symbolic link, or `\Device\Viosock`) whose
//!   create request carries one extended attribute holding a
//!   [`VIRTIO_VSOCK_PARAMS`] (`{ Socket = 0, Type = STREAM }` for a new
//!   socket; a listening socket's handle there means "accept"). A create
//!   without an EA opens a *control* file (configuration, select) instead;
//! * connect, shutdown and configuration are `METHOD_BUFFERED` IOCTLs on
//!   that file object ([`IOCTL_SOCKET_CONNECT`] with a [`SOCKADDR_VM`],
//!   [`IOCTL_SOCKET_SHUTDOWN`] with an `int how`, [`IOCTL_GET_CONFIG`] into a
//!   [`VIRTIO_VSOCK_CONFIG`]);
//! * data moves with `IRP_MJ_WRITE` / `IRP_MJ_READ` on the same file object;
//!   the device uses direct I/O (`WdfDeviceIoDirect`), so the buffer is the
//!   IRP's `MdlAddress`. A read completes with what is available (0 bytes
//!   when the peer shut down); a write takes at most
//!   [`VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`] bytes and reports how many in
//!   `IoStatus.Information`.
//!
//! Source: github.com/virtio-win/kvm-guest-drivers-windows, commit
//! `fbcc19d763f92a8281abe364c7ea1de3de87e61d`: `viosock/sys/public.h` (IOCTL
//! macros, `VIRTIO_VSOCK_PARAMS`, `VIRTIO_VSOCK_TYPE`, `AF_VSOCK`,
//! `VIRTIO_VSOCK_HOST_CID`), `viosock/inc/vio_sockets.h` (`sockaddr_vm`,
//! `VIRTIO_VSOCK_CONFIG`, the literal `IOCTL_GET_CONFIG`/`IOCTL_GET_AF`
//! values, `VMADDR_*`, `STATUS_NOT_SOCKET`), `viosock/sys/viosock.h`
//! (`\Device\Viosock`, `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`,
//! `VSOCK_DEFAULT_CONNECT_TIMEOUT`), `viosock/sys/Socket.c` (how the create
//! EA, connect and shutdown are read), `viosock/wsk/socket-internal.c` (how
//! VioWsk builds the create EA). BSD-3-Clause; only numbers and layouts are
//! used here, no code was copied.

#![allow(non_camel_case_types, non_snake_case)]

use crate::ioctl::{
    FILE_ANY_ACCESS, FILE_READ_ACCESS, METHOD_BUFFERED, METHOD_OUT_DIRECT, ctl_code,
};
use crate::nt::NTSTATUS;

/// `\Device\Viosock` (`viosock.h` `VIOSOCK_DEVICE_NAME`), the device's name.
pub const VIOSOCK_DEVICE: &str = "\\Device\\Viosock";
/// `\DosDevices\Viosock` (`public.h` `VIOSOCK_SYMLINK_NAME`).
pub const VIOSOCK_DOS_DEVICE: &str = "\\DosDevices\\Viosock";

/// `FILE_DEVICE_SOCKET` (`public.h`: 0x0801), the IOCTLs' device type.
pub const FILE_DEVICE_SOCKET: u32 = 0x0801;

/// `DEFINE_DEVICE_IOCTL(Function)` (`public.h`):
/// `CTL_CODE(FILE_DEVICE_SOCKET, 0xC00 | Function, METHOD_BUFFERED, FILE_ANY_ACCESS)`.
#[must_use]
pub const fn device_ioctl(function: u32) -> u32 {
    ctl_code(
        FILE_DEVICE_SOCKET,
        0xC00 | function,
        METHOD_BUFFERED,
        FILE_ANY_ACCESS,
    )
}

/// `DEFINE_SOCKET_IOCTL(Function)` (`public.h`):
/// `CTL_CODE(FILE_DEVICE_SOCKET, 0x800 | Function, METHOD_BUFFERED, FILE_ANY_ACCESS)`.
#[must_use]
pub const fn socket_ioctl(function: u32) -> u32 {
    ctl_code(
        FILE_DEVICE_SOCKET,
        0x800 | function,
        METHOD_BUFFERED,
        FILE_ANY_ACCESS,
    )
}

/// `IOCTL_GET_CONFIG` (0x08013004): out, a [`VIRTIO_VSOCK_CONFIG`]
/// (this guest's CID). Accepted on socket and control files.
pub const IOCTL_GET_CONFIG: u32 = device_ioctl(1);
/// `IOCTL_GET_AF` (0x0801300C): out, a `ULONG` address family.
pub const IOCTL_GET_AF: u32 = device_ioctl(3);
/// `IOCTL_SOCKET_BIND`: in, a [`SOCKADDR_VM`] (connect binds automatically).
pub const IOCTL_SOCKET_BIND: u32 = socket_ioctl(1);
/// `IOCTL_SOCKET_CONNECT`: in, the remote [`SOCKADDR_VM`]. On a blocking
/// socket (the default) the request stays pending until the peer answers,
/// the socket's connect timeout passes ([`VSOCK_DEFAULT_CONNECT_TIMEOUT`]),
/// or it is cancelled.
pub const IOCTL_SOCKET_CONNECT: u32 = socket_ioctl(2);
/// `IOCTL_SOCKET_READ`: a read with [`VIRTIO_VSOCK_READ_PARAMS`] flags
/// (`METHOD_OUT_DIRECT`, `FILE_READ_ACCESS`); a plain `IRP_MJ_READ` is the
/// same with flags 0.
pub const IOCTL_SOCKET_READ: u32 = ctl_code(
    FILE_DEVICE_SOCKET,
    0x800 | 3,
    METHOD_OUT_DIRECT,
    FILE_READ_ACCESS,
);
/// `IOCTL_SOCKET_SHUTDOWN`: in, an `int how` with the user-mode values
/// (`SD_RECEIVE` 0, `SD_SEND` 1, [`SD_BOTH`] 2); the driver adds one to get
/// the virtio shutdown bits.
pub const IOCTL_SOCKET_SHUTDOWN: u32 = socket_ioctl(4);

/// `SD_BOTH` (`winsock2.h`: 2): shut both directions, what `VioWskDisconnect`
/// passes.
pub const SD_BOTH: u32 = 2;

/// `AF_VSOCK` (`public.h`: 40), the family viosock's addresses carry.
pub const AF_VSOCK: u16 = 40;
/// `VIRTIO_VSOCK_HOST_CID` / `VMADDR_CID_HOST` (2): the host.
pub const VIRTIO_VSOCK_HOST_CID: u32 = 2;
/// `VMADDR_CID_ANY` (`vio_sockets.h`: `(-1)`).
pub const VMADDR_CID_ANY: u32 = u32::MAX;
/// `VMADDR_PORT_ANY` (`vio_sockets.h`: `(-1)`).
pub const VMADDR_PORT_ANY: u32 = u32::MAX;

/// `VIRTIO_VSOCK_TYPE_STREAM` (`public.h` `VIRTIO_VSOCK_TYPE`: 1), the only
/// socket type viosock supports.
pub const VIRTIO_VSOCK_TYPE_STREAM: u32 = 1;

/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE` (`viosock.h`: 64 KiB): a write longer
/// than this is truncated to it (the reply says how much was taken).
pub const VIRTIO_VSOCK_MAX_PKT_BUF_SIZE: usize = 64 * 1024;

/// `VSOCK_DEFAULT_CONNECT_TIMEOUT` (`viosock.h`: `SEC_TO_NANO(2)`), in
/// milliseconds: a blocking connect fails after this long without an answer.
pub const VSOCK_DEFAULT_CONNECT_TIMEOUT_MS: u32 = 2_000;

/// `STATUS_NOT_SOCKET` (`vio_sockets.h`: 0xE0040001): data I/O on a control
/// file.
pub const STATUS_NOT_SOCKET: NTSTATUS = 0xE004_0001_u32 as i32;
/// `STATUS_CONNECTION_ESTABLISHING` (`vio_sockets.h`: 0xE0040002): connect
/// while a connect is in progress.
pub const STATUS_CONNECTION_ESTABLISHING: NTSTATUS = 0xE004_0002_u32 as i32;

/// `VIRTIO_VSOCK_PARAMS` (`public.h`): `ULONGLONG Socket; VIRTIO_VSOCK_TYPE
/// Type;` (the enum is an `int`), 16 bytes on x64. The value of the socket
/// create request's extended attribute.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VIRTIO_VSOCK_PARAMS {
    /// A listening socket's handle to accept from, or 0 for a new socket.
    pub Socket: u64,
    /// [`VIRTIO_VSOCK_TYPE_STREAM`].
    pub Type: u32,
}

/// `VIRTIO_VSOCK_CONFIG` (`vio_sockets.h`): `ULONG32 guest_cid;`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VIRTIO_VSOCK_CONFIG {
    /// This guest's context ID.
    pub guest_cid: u32,
}

/// `VIRTIO_VSOCK_READ_PARAMS` (`public.h`): `ULONG Flags;` (`MSG_PEEK` 2,
/// `MSG_WAITALL` 8), the input of [`IOCTL_SOCKET_READ`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VIRTIO_VSOCK_READ_PARAMS {
    /// `MSG_*` flags.
    pub Flags: u32,
}

/// `sockaddr_vm` as `vio_sockets.h` declares it: 12 bytes, **no** zero
/// padding to `sizeof(SOCKADDR)` (unlike VMware's `vmci_sockets.h`).
/// viosock reads at least `sizeof(SOCKADDR_VM)` bytes from the IOCTL input.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SOCKADDR_VM {
    /// [`AF_VSOCK`].
    pub svm_family: u16,
    /// Reserved, 0.
    pub svm_reserved1: u16,
    /// Port, host byte order.
    pub svm_port: u32,
    /// Context ID, host byte order.
    pub svm_cid: u32,
}

impl SOCKADDR_VM {
    /// `{AF_VSOCK, cid, port}`.
    #[must_use]
    pub const fn new(cid: u32, port: u32) -> Self {
        Self {
            svm_family: AF_VSOCK,
            svm_reserved1: 0,
            svm_port: port,
            svm_cid: cid,
        }
    }

    /// The 12 bytes the connect IOCTL sends (little-endian, as on x64).
    #[must_use]
    pub const fn to_le_bytes(&self) -> [u8; 12] {
        let f = self.svm_family.to_le_bytes();
        let r = self.svm_reserved1.to_le_bytes();
        let p = self.svm_port.to_le_bytes();
        let c = self.svm_cid.to_le_bytes();
        [
            f[0], f[1], r[0], r[1], p[0], p[1], p[2], p[3], c[0], c[1], c[2], c[3],
        ]
    }
}

/// Offset of `EaName` in `FILE_FULL_EA_INFORMATION` (`wdm.h`: `ULONG
/// NextEntryOffset; UCHAR Flags; UCHAR EaNameLength; USHORT EaValueLength;
/// CHAR EaName[1];`): 4 + 1 + 1 + 2 = 8.
pub const FILE_FULL_EA_NAME_OFFSET: usize = 8;
/// `sizeof(FILE_FULL_EA_INFORMATION)`: 9 bytes padded to its 4-byte
/// alignment = 12.
pub const FILE_FULL_EA_INFORMATION_SIZE: usize = 12;
/// The EA name length VioWsk uses: the rest of the fixed structure after
/// `EaName`, minus the name's terminating NUL (12 − 8 − 1 = 3; the name's
/// bytes are zero, viosock does not look at them).
pub const VIOSOCK_EA_NAME_LENGTH: u8 =
    (FILE_FULL_EA_INFORMATION_SIZE - FILE_FULL_EA_NAME_OFFSET - 1) as u8;
/// Size of the socket-create EA buffer: the fixed structure, then the
/// 16-byte [`VIRTIO_VSOCK_PARAMS`] value.
pub const VIOSOCK_CREATE_EA_BYTES: usize =
    FILE_FULL_EA_INFORMATION_SIZE + core::mem::size_of::<VIRTIO_VSOCK_PARAMS>();

/// Where viosock reads the value of an EA (`Socket.c`:
/// `EaBuffer + FIELD_OFFSET(FILE_FULL_EA_INFORMATION, EaName) + 1 +
/// EaNameLength`, i.e. after the name and its NUL).
#[must_use]
pub const fn ea_value_offset(ea_name_length: u8) -> usize {
    FILE_FULL_EA_NAME_OFFSET + 1 + ea_name_length as usize
}

/// The extended-attribute buffer a socket create passes to `ZwCreateFile`:
/// one `FILE_FULL_EA_INFORMATION` (no next entry, flags 0, name length
/// [`VIOSOCK_EA_NAME_LENGTH`] of zero bytes, value length 16) followed by
/// `params` (x64 layout: `Socket` LE at +12, `Type` LE at +20, 4 padding
/// bytes). viosock requires `EaValueLength >= sizeof(VIRTIO_VSOCK_PARAMS)`
/// and reads the value at [`ea_value_offset`].
#[must_use]
pub const fn socket_create_ea(params: VIRTIO_VSOCK_PARAMS) -> [u8; VIOSOCK_CREATE_EA_BYTES] {
    let mut ea = [0u8; VIOSOCK_CREATE_EA_BYTES];
    // NextEntryOffset (0..4) = 0, Flags (4) = 0.
    ea[5] = VIOSOCK_EA_NAME_LENGTH;
    let vlen = (core::mem::size_of::<VIRTIO_VSOCK_PARAMS>() as u16).to_le_bytes();
    ea[6] = vlen[0];
    ea[7] = vlen[1];
    let v = ea_value_offset(VIOSOCK_EA_NAME_LENGTH);
    let s = params.Socket.to_le_bytes();
    let mut i = 0;
    while i < 8 {
        ea[v + i] = s[i];
        i += 1;
    }
    let t = params.Type.to_le_bytes();
    let mut i = 0;
    while i < 4 {
        ea[v + 8 + i] = t[i];
        i += 1;
    }
    ea
}

/// The EA of a new (not accepted) stream socket.
pub const NEW_STREAM_SOCKET_EA: [u8; VIOSOCK_CREATE_EA_BYTES] =
    socket_create_ea(VIRTIO_VSOCK_PARAMS {
        Socket: 0,
        Type: VIRTIO_VSOCK_TYPE_STREAM,
    });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_codes_match_the_headers() {
        // vio_sockets.h spells these two out as literals.
        assert_eq!(IOCTL_GET_CONFIG, 0x0801_3004);
        assert_eq!(IOCTL_GET_AF, 0x0801_300C);
        // CTL_CODE(0x801, 0x800|n, 0, 0) = 0x08010000 | (0x800|n) << 2.
        assert_eq!(IOCTL_SOCKET_BIND, 0x0801_2004);
        assert_eq!(IOCTL_SOCKET_CONNECT, 0x0801_2008);
        assert_eq!(IOCTL_SOCKET_SHUTDOWN, 0x0801_2010);
        // METHOD_OUT_DIRECT (2), FILE_READ_ACCESS (1 << 14).
        assert_eq!(IOCTL_SOCKET_READ, 0x0801_600E);
        let p = crate::ioctl::split_ctl_code(IOCTL_SOCKET_CONNECT);
        assert_eq!(p.device_type, FILE_DEVICE_SOCKET);
        assert_eq!(p.method, METHOD_BUFFERED);
    }

    #[test]
    fn create_ea_is_laid_out_as_viosock_reads_it() {
        let ea = NEW_STREAM_SOCKET_EA;
        assert_eq!(ea.len(), 28);
        assert_eq!(&ea[0..4], &[0, 0, 0, 0], "NextEntryOffset");
        assert_eq!(ea[4], 0, "Flags");
        assert_eq!(ea[5], 3, "EaNameLength");
        assert_eq!(u16::from_le_bytes([ea[6], ea[7]]), 16, "EaValueLength");
        assert_eq!(&ea[8..12], &[0, 0, 0, 0], "name bytes and their NUL");
        let v = ea_value_offset(ea[5]);
        assert_eq!(v, 12);
        // VioWsk copies the value to &EaBuffer[sizeof(FILE_FULL_EA_INFORMATION)]:
        // the same place viosock's formula finds it.
        assert_eq!(v, FILE_FULL_EA_INFORMATION_SIZE);
        let socket = u64::from_le_bytes(ea[v..v + 8].try_into().unwrap());
        let ty = u32::from_le_bytes(ea[v + 8..v + 12].try_into().unwrap());
        assert_eq!((socket, ty), (0, VIRTIO_VSOCK_TYPE_STREAM));
        assert!(
            usize::from(u16::from_le_bytes([ea[6], ea[7]])) >= size_of::<VIRTIO_VSOCK_PARAMS>()
        );
        assert_eq!(
            v + usize::from(u16::from_le_bytes([ea[6], ea[7]])),
            ea.len()
        );
    }

    #[test]
    fn create_ea_carries_a_listen_handle() {
        let ea = socket_create_ea(VIRTIO_VSOCK_PARAMS {
            Socket: 0x1122_3344_5566_7788,
            Type: 7,
        });
        assert_eq!(&ea[12..20], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&ea[20..24], &7u32.to_le_bytes());
        assert_eq!(&ea[24..28], &[0; 4]);
    }

    #[test]
    fn sockaddr_bytes() {
        let a = SOCKADDR_VM::new(VIRTIO_VSOCK_HOST_CID, 0x1234_5678);
        assert_eq!(
            a.to_le_bytes(),
            [40, 0, 0, 0, 0x78, 0x56, 0x34, 0x12, 2, 0, 0, 0]
        );
    }

    #[test]
    fn status_values_are_customer_errors() {
        assert!(!crate::nt::nt_success(STATUS_NOT_SOCKET));
        assert!(!crate::nt::nt_success(STATUS_CONNECTION_ESTABLISHING));
        // Customer bit (0x20000000) set, facility 4.
        assert_eq!(STATUS_NOT_SOCKET as u32 & 0x2000_0000, 0x2000_0000);
    }
}
