//! VMware vSockets (VMCI sockets) for a Windows kernel client.
//!
//! VMware publishes vSockets for **user mode** only: `vmci_sockets.h`
//! (open-vm-tools `open-vm-tools/lib/include/vmci_sockets.h`, also shipped
//! in the VMware Tools / vSockets SDK) defines the `\\.\VMCI` device, three
//! `DeviceIoControl` codes and `struct sockaddr_vm`. The kernel-mode provider
//! capture (IOCTL `0x810320C0` with a 0x5C-byte buffer) is **unpublished**:
//! it is what VMware's own `vsepflt.sys` sends (its log calls the step
//! `VMCISock_WskCaptureProviderNPI`), found by reverse engineering and
//! described in the seed incident report. Only the facts (numbers, names,
//! sizes) are taken from these sources; `docs/km-sys.md` lists them, derives
//! the IOCTL family and says what is still unknown.
//!
//! Objects on a VMware guest (from the seed report's kernel-debugger
//! listings): `\Device\vmci` belongs to `\Driver\vsock` (vsock.sys, the
//! vSockets provider), reachable as `\DosDevices\vmci` (= `\??\vmci`,
//! user mode `\\.\VMCI`). Do not confuse it with `\Driver\vmci` (vmci.sys,
//! the VMCI bus driver), whose device is `\Device\VMCIHostDev`, linked from
//! `\Global??\VMCIDev`; vsock.sys needs that one, and answers
//! `STATUS_DEVICE_BUSY` to the capture until it exists.

#![allow(non_camel_case_types, non_snake_case)]

use core::ffi::c_void;

use crate::ioctl::{FILE_ANY_ACCESS, METHOD_BUFFERED, ctl_code};
use crate::nt::SOCKADDR;

// ---------------------------------------------------------------------------
// Object names
// ---------------------------------------------------------------------------

/// The vSockets device by its DOS-devices link, as the seed's test driver
/// opens it with `IoGetDeviceObjectPointer` (object names are
/// case-insensitive: user mode opens the same object as `\\.\VMCI`).
pub const VMCI_SOCKETS_DOS_DEVICE: &str = r"\DosDevices\vmci";
/// The vSockets device object itself, created by `\Driver\vsock`.
pub const VMCI_SOCKETS_DEVICE: &str = r"\Device\vmci";
/// The driver object owning [`VMCI_SOCKETS_DEVICE`] (vsock.sys).
pub const VMCI_SOCKETS_DRIVER: &str = r"\Driver\vsock";
/// The user-mode path of the vSockets device (`VMCI_SOCKETS_DEVICE` in
/// `vmci_sockets.h`, `L"\\\\.\\VMCI"`).
pub const VMCI_SOCKETS_USER_DEVICE: &str = r"\\.\VMCI";
/// The VMCI bus driver (vmci.sys); *not* the vSockets device's owner.
pub const VMCI_BUS_DRIVER: &str = r"\Driver\vmci";
/// The VMCI bus driver's device, which vsock.sys needs before it can serve
/// the capture.
pub const VMCI_HOST_DEVICE: &str = r"\Device\VMCIHostDev";
/// The symbolic link to [`VMCI_HOST_DEVICE`]; absent while vmci.sys has not
/// started its device (the seed's `!object \Global??\VMCIDev` check).
pub const VMCI_HOST_DEVICE_LINK: &str = r"\Global??\VMCIDev";

/// Widens an ASCII string to UTF-16 at compile time, for `UNICODE_STRING`
/// buffers in a `no_std` driver (no NUL; `Length` = `2 * N`). Fails to
/// compile if `s` is not ASCII or not exactly `N` bytes long.
#[must_use]
pub const fn ascii_to_utf16<const N: usize>(s: &str) -> [u16; N] {
    let b = s.as_bytes();
    assert!(b.len() == N, "length mismatch");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        assert!(b[i].is_ascii(), "not ASCII");
        out[i] = b[i] as u16;
        i += 1;
    }
    out
}

/// [`VMCI_SOCKETS_DOS_DEVICE`] as UTF-16 (16 code units, no NUL).
pub const VMCI_SOCKETS_DOS_DEVICE_W: [u16; 16] = ascii_to_utf16(VMCI_SOCKETS_DOS_DEVICE);
/// [`VMCI_SOCKETS_DEVICE`] as UTF-16 (12 code units, no NUL).
pub const VMCI_SOCKETS_DEVICE_W: [u16; 12] = ascii_to_utf16(VMCI_SOCKETS_DEVICE);

// ---------------------------------------------------------------------------
// The IOCTL family
// ---------------------------------------------------------------------------

/// Device type of every vSockets IOCTL: bits 31..16 of the published codes
/// (0x8103; bit 15 of the device type set = vendor-defined).
pub const VMCI_SOCKETS_DEVICE_TYPE: u32 = 0x8103;

/// Function of `VMCI_SOCKETS_VERSION` (0x816).
pub const VMCI_SOCKETS_FN_VERSION: u32 = 0x816;
/// Function of `VMCI_SOCKETS_GET_AF_VALUE` (0x81A).
pub const VMCI_SOCKETS_FN_GET_AF_VALUE: u32 = 0x81A;
/// Function of `VMCI_SOCKETS_GET_LOCAL_CID` (0x81B).
pub const VMCI_SOCKETS_FN_GET_LOCAL_CID: u32 = 0x81B;
/// Function of the unpublished provider capture (0x830).
pub const VMCI_SOCKETS_FN_CAPTURE_PROVIDER: u32 = 0x830;

/// A vSockets IOCTL: `CTL_CODE(0x8103, function, METHOD_BUFFERED,
/// FILE_ANY_ACCESS)`, the only combination that reproduces the published
/// codes (bits 15..14 and 1..0 of all three are zero).
#[must_use]
pub const fn vmci_sockets_ioctl(function: u32) -> u32 {
    ctl_code(
        VMCI_SOCKETS_DEVICE_TYPE,
        function,
        METHOD_BUFFERED,
        FILE_ANY_ACCESS,
    )
}

/// `VMCI_SOCKETS_VERSION` (published, `vmci_sockets.h`: 0x81032058). In and
/// out: one `unsigned int` (the version, see [`vmci_sockets_version_parts`]).
pub const IOCTL_VMCI_SOCKETS_VERSION: u32 = vmci_sockets_ioctl(VMCI_SOCKETS_FN_VERSION);
/// `VMCI_SOCKETS_GET_AF_VALUE` (published: 0x81032068). Out: one `int`, the
/// address family to put in [`SOCKADDR_VM::svm_family`] and pass to WSK. It
/// is assigned at run time, not a constant.
pub const IOCTL_VMCI_SOCKETS_GET_AF_VALUE: u32 = vmci_sockets_ioctl(VMCI_SOCKETS_FN_GET_AF_VALUE);
/// `VMCI_SOCKETS_GET_LOCAL_CID` (published: 0x8103206c). Out: one
/// `unsigned int`, this VM's context ID.
pub const IOCTL_VMCI_SOCKETS_GET_LOCAL_CID: u32 = vmci_sockets_ioctl(VMCI_SOCKETS_FN_GET_LOCAL_CID);
/// The kernel provider capture (unpublished: 0x810320C0, from the seed
/// report). Input and output: a [`VmciCaptureBuffer`] of 0x5C bytes.
pub const IOCTL_VMCI_SOCKETS_CAPTURE_PROVIDER: u32 =
    vmci_sockets_ioctl(VMCI_SOCKETS_FN_CAPTURE_PROVIDER);

/// `VMCI_SOCKETS_INVALID_VERSION` (`vmci_sockets.h`: `(unsigned int)-1`).
pub const VMCI_SOCKETS_INVALID_VERSION: u32 = 0xffff_ffff;

/// Splits a vSockets version into (epoch, major, minor) as
/// `VMCI_SOCKETS_VERSION_EPOCH/MAJOR/MINOR` do: bits 31..24, 23..16, 15..0.
#[must_use]
pub const fn vmci_sockets_version_parts(version: u32) -> (u8, u8, u16) {
    ((version >> 24) as u8, (version >> 16) as u8, version as u16)
}

// ---------------------------------------------------------------------------
// The capture request
// ---------------------------------------------------------------------------

/// Size of the capture IOCTL's input and output buffer as the seed's
/// 32-bit listing sends it: 0x5C = 92 bytes = 23 DWORDs. Whether x64
/// vsock.sys expects the same size is **unknown** (see `docs/km-sys.md`).
pub const VMCI_CAPTURE_BUFFER_SIZE: usize = 0x5C;

/// Number of DWORDs in [`VmciCaptureBuffer`].
pub const VMCI_CAPTURE_BUFFER_DWORDS: usize = VMCI_CAPTURE_BUFFER_SIZE / 4;

/// The 0x5C-byte buffer of the capture IOCTL (`METHOD_BUFFERED`, the same
/// buffer passed as input and output). The request is all zero except the
/// first DWORD, which is 1; what the first DWORD means (a version? a
/// request kind?) and what vsock.sys writes back are unknown, so the reply
/// is kept as raw DWORDs and logged in hex ([`crate::hexdump`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmciCaptureBuffer {
    /// The buffer, as DWORDs (native = little-endian on Windows).
    pub dwords: [u32; VMCI_CAPTURE_BUFFER_DWORDS],
}

impl VmciCaptureBuffer {
    /// The request the seed's listing sends: first DWORD 1, the rest 0.
    #[must_use]
    pub const fn request() -> Self {
        let mut dwords = [0u32; VMCI_CAPTURE_BUFFER_DWORDS];
        dwords[0] = 1;
        Self { dwords }
    }

    /// Size in bytes, for the IOCTL's input and output lengths (0x5C).
    #[must_use]
    pub const fn len_bytes() -> u32 {
        VMCI_CAPTURE_BUFFER_SIZE as u32
    }

    /// Pointer for `IoBuildDeviceIoControlRequest`'s `InputBuffer` and
    /// `OutputBuffer`.
    #[must_use]
    pub fn as_mut_ptr(&mut self) -> *mut c_void {
        (self as *mut Self).cast()
    }

    /// The buffer as little-endian bytes (for logging the reply).
    #[must_use]
    pub fn to_le_bytes(&self) -> [u8; VMCI_CAPTURE_BUFFER_SIZE] {
        let mut out = [0u8; VMCI_CAPTURE_BUFFER_SIZE];
        for (chunk, d) in out.chunks_exact_mut(4).zip(self.dwords.iter()) {
            chunk.copy_from_slice(&d.to_le_bytes());
        }
        out
    }

    /// Rebuilds a buffer from little-endian bytes (e.g. a logged reply);
    /// `None` unless `bytes` is exactly 0x5C long.
    #[must_use]
    pub fn from_le_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != VMCI_CAPTURE_BUFFER_SIZE {
            return None;
        }
        let mut dwords = [0u32; VMCI_CAPTURE_BUFFER_DWORDS];
        for (d, chunk) in dwords.iter_mut().zip(bytes.chunks_exact(4)) {
            *d = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Some(Self { dwords })
    }

    /// Whether the buffer still equals the request, i.e. vsock.sys wrote
    /// nothing back (useful to log next to the dump).
    #[must_use]
    pub fn is_unchanged_request(&self) -> bool {
        *self == Self::request()
    }
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// `VMADDR_CID_ANY` (`vmci_sockets.h`: `(unsigned int)-1`): this VM.
pub const VMADDR_CID_ANY: u32 = 0xffff_ffff;
/// `VMADDR_PORT_ANY` (`vmci_sockets.h`: `(unsigned int)-1`): any free port.
pub const VMADDR_PORT_ANY: u32 = 0xffff_ffff;
/// The hypervisor's context ID (`VMCI_HYPERVISOR_CONTEXT_ID`, 0).
pub const VMADDR_CID_HYPERVISOR: u32 = 0;
/// The host's context ID (`VMCI_HOST_CONTEXT_ID` in open-vm-tools
/// `vmci_defs.h`, and `VMADDR_CID_HOST` in Linux `vm_sockets.h`: 2).
pub const VMADDR_CID_HOST: u32 = 2;

/// `SO_VMCI_BUFFER_SIZE` (`vmci_sockets.h`: 0); socket-option level = the
/// address family value.
pub const SO_VMCI_BUFFER_SIZE: u32 = 0;
/// `SO_VMCI_BUFFER_MIN_SIZE` (1).
pub const SO_VMCI_BUFFER_MIN_SIZE: u32 = 1;
/// `SO_VMCI_BUFFER_MAX_SIZE` (2).
pub const SO_VMCI_BUFFER_MAX_SIZE: u32 = 2;
/// `SO_VMCI_PEER_HOST_VM_ID` (3).
pub const SO_VMCI_PEER_HOST_VM_ID: u32 = 3;
/// `SO_VMCI_SERVICE_LABEL` (4).
pub const SO_VMCI_SERVICE_LABEL: u32 = 4;
/// `SO_VMCI_TRUSTED` (5).
pub const SO_VMCI_TRUSTED: u32 = 5;
/// `SO_VMCI_CONNECT_TIMEOUT` (6).
pub const SO_VMCI_CONNECT_TIMEOUT: u32 = 6;

/// `struct sockaddr_vm` (`vmci_sockets.h`, Windows layout — no `svm_len`,
/// that is macOS only): `sa_family_t svm_family` (`unsigned short` on
/// Windows); `unsigned short svm_reserved1; unsigned int svm_port;
/// unsigned int svm_cid; unsigned char svm_zero[sizeof(struct sockaddr) -
/// 2 - 2 - 4 - 4]`. 2 + 2 + 4 + 4 + 4 = 16 bytes, the size of `SOCKADDR`,
/// alignment 4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SOCKADDR_VM {
    /// The vSockets address family ([`IOCTL_VMCI_SOCKETS_GET_AF_VALUE`]).
    pub svm_family: u16,
    /// Reserved, 0.
    pub svm_reserved1: u16,
    /// Port.
    pub svm_port: u32,
    /// Context ID.
    pub svm_cid: u32,
    /// Zero padding to `sizeof(struct sockaddr)`.
    pub svm_zero: [u8; 4],
}

impl SOCKADDR_VM {
    /// An address of family `family` (from the get-AF IOCTL).
    #[must_use]
    pub const fn new(family: u16, cid: u32, port: u32) -> Self {
        Self {
            svm_family: family,
            svm_reserved1: 0,
            svm_port: port,
            svm_cid: cid,
            svm_zero: [0; 4],
        }
    }

    /// The local address for a connecting socket: this VM, any port.
    #[must_use]
    pub const fn local_any(family: u16) -> Self {
        Self::new(family, VMADDR_CID_ANY, VMADDR_PORT_ANY)
    }

    /// The host scanner's address: CID `cid` (normally
    /// [`VMADDR_CID_HOST`]), port `port`.
    #[must_use]
    pub const fn remote(family: u16, cid: u32, port: u32) -> Self {
        Self::new(family, cid, port)
    }

    /// As the `PSOCKADDR` WSK functions take. Sound because `SOCKADDR_VM`
    /// is 16 bytes like `SOCKADDR` and starts with the family; the provider
    /// reads it as a `sockaddr_vm`.
    #[must_use]
    pub fn as_sockaddr_mut(&mut self) -> *mut SOCKADDR {
        (self as *mut Self).cast()
    }
}

/// The family value the published get-AF IOCTL returns as an `int`,
/// checked to fit `ADDRESS_FAMILY` (a `USHORT`): `None` for a negative
/// (error, `-1`) or oversized value.
#[must_use]
pub const fn address_family_from_ioctl(value: i32) -> Option<u16> {
    if value < 0 || value > u16::MAX as i32 {
        None
    } else {
        Some(value as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioctl::{CtlCodeParts, split_ctl_code};

    /// Every published vSockets IOCTL (open-vm-tools
    /// `lib/include/vmci_sockets.h`, `_WIN32` branch) is
    /// `CTL_CODE(0x8103, function, METHOD_BUFFERED, FILE_ANY_ACCESS)`.
    #[test]
    fn published_ioctls_are_ctl_codes_of_device_type_0x8103() {
        // 0x81032058: 0x8103 << 16 | 0 << 14 | 0x816 << 2 (= 0x2058) | 0
        assert_eq!(IOCTL_VMCI_SOCKETS_VERSION, 0x8103_2058);
        // 0x81032068: 0x81A << 2 = 0x2068
        assert_eq!(IOCTL_VMCI_SOCKETS_GET_AF_VALUE, 0x8103_2068);
        // 0x8103206c: 0x81B << 2 = 0x206C
        assert_eq!(IOCTL_VMCI_SOCKETS_GET_LOCAL_CID, 0x8103_206c);
        // 0x810320C0 (seed report): 0x830 << 2 = 0x20C0
        assert_eq!(IOCTL_VMCI_SOCKETS_CAPTURE_PROVIDER, 0x8103_20C0);
        for (code, function) in [
            (0x8103_2058, 0x816),
            (0x8103_2068, 0x81A),
            (0x8103_206c, 0x81B),
            (0x8103_20C0, 0x830),
        ] {
            assert_eq!(
                split_ctl_code(code),
                CtlCodeParts {
                    device_type: 0x8103,
                    function,
                    method: METHOD_BUFFERED,
                    access: FILE_ANY_ACCESS,
                }
            );
        }
    }

    #[test]
    fn capture_request_is_one_then_zeros() {
        let req = VmciCaptureBuffer::request();
        assert_eq!(size_of::<VmciCaptureBuffer>(), 0x5C);
        assert_eq!(VmciCaptureBuffer::len_bytes(), 0x5C);
        let bytes = req.to_le_bytes();
        assert_eq!(&bytes[..4], &[1, 0, 0, 0]);
        assert!(bytes[4..].iter().all(|&b| b == 0));
        assert!(req.is_unchanged_request());
        let mut changed = req;
        changed.dwords[5] = 0xdead_beef;
        assert!(!changed.is_unchanged_request());
        assert_eq!(
            VmciCaptureBuffer::from_le_bytes(&changed.to_le_bytes()),
            Some(changed)
        );
        assert_eq!(VmciCaptureBuffer::from_le_bytes(&bytes[..0x58]), None);
    }

    #[test]
    fn sockaddr_vm_constructors() {
        let local = SOCKADDR_VM::local_any(40);
        assert_eq!(local.svm_cid, 0xffff_ffff);
        assert_eq!(local.svm_port, 0xffff_ffff);
        let mut remote = SOCKADDR_VM::remote(40, VMADDR_CID_HOST, 5317);
        assert_eq!(
            (remote.svm_family, remote.svm_cid, remote.svm_port),
            (40, 2, 5317)
        );
        assert_eq!(remote.svm_reserved1, 0);
        assert_eq!(remote.svm_zero, [0; 4]);
        let p = remote.as_sockaddr_mut();
        assert_eq!(p.cast::<u8>(), (&raw mut remote).cast::<u8>());
    }

    #[test]
    fn device_names_in_utf16() {
        assert_eq!(VMCI_SOCKETS_DOS_DEVICE.len(), 16);
        assert_eq!(VMCI_SOCKETS_DEVICE.len(), 12);
        let back: [u8; 16] = VMCI_SOCKETS_DOS_DEVICE_W.map(|c| c as u8);
        assert_eq!(&back, VMCI_SOCKETS_DOS_DEVICE.as_bytes());
        assert_eq!(VMCI_SOCKETS_DEVICE_W[0], u16::from(b'\\'));
        assert_eq!(VMCI_SOCKETS_DEVICE_W[11], u16::from(b'i'));
    }

    #[test]
    fn version_and_family_helpers() {
        assert_eq!(vmci_sockets_version_parts(0x0102_0003), (1, 2, 3));
        assert_eq!(address_family_from_ioctl(-1), None);
        assert_eq!(address_family_from_ioctl(0x1_0000), None);
        assert_eq!(address_family_from_ioctl(40), Some(40));
    }
}
