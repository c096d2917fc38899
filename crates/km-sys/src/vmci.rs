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

// ---------------------------------------------------------------------------
// Reading the capture reply (hypothesis (a) of docs/km-sys.md)
// ---------------------------------------------------------------------------

/// Whether `v` lies in the upper canonical half of the x64 address space,
/// where every kernel-mode address is (`MmSystemRangeStart` is at or above
/// 0xFFFF8000'00000000 on x64 Windows).
#[must_use]
pub const fn is_kernel_address(v: u64) -> bool {
    v >= 0xFFFF_8000_0000_0000
}

/// The loaded image of the driver that owns the vSockets device
/// (`DRIVER_OBJECT.DriverStart`, `DriverSize`): code the provider's
/// functions must lie in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRange {
    /// First byte of the image.
    pub start: u64,
    /// Size in bytes.
    pub len: u64,
}

impl ImageRange {
    /// Whether `addr` lies inside the image.
    #[must_use]
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < self.len
    }
}

impl ImageRange {
    /// Whether all `len` bytes from `addr` lie inside the image: where a
    /// provider's static dispatch table lives. The driver reads a table only
    /// if this holds, so it never probes arbitrary pool addresses
    /// (`MmIsAddressValid` is reliable only for non-paged memory).
    #[must_use]
    pub const fn contains_range(&self, addr: u64, len: u64) -> bool {
        len > 0
            && self.contains(addr)
            && addr.checked_add(len - 1).is_some()
            && self.contains(addr + (len - 1))
    }
}

/// A `{Client, Dispatch}` pointer pair found in the capture reply: the shape
/// of a `WSK_PROVIDER_NPI` (hypothesis (a) in `docs/km-sys.md`). Only a
/// candidate: the driver must still check the table `dispatch` points to
/// ([`check_provider_dispatch`]) before calling anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpiCandidate {
    /// Byte offset of the pair in the reply.
    pub offset: usize,
    /// `WSK_PROVIDER_NPI.Client`.
    pub client: u64,
    /// `WSK_PROVIDER_NPI.Dispatch`.
    pub dispatch: u64,
}

/// Every 8-byte-aligned pair of kernel addresses in the first `written`
/// bytes of `reply` (`IoStatus.Information` of the capture, capped at the
/// buffer). Zero, user-mode or non-canonical values are skipped; so is a
/// pair whose two halves are equal.
pub fn npi_candidates(reply: &[u8], written: usize) -> impl Iterator<Item = NpiCandidate> + '_ {
    let valid = &reply[..written.min(reply.len())];
    let word = |o: usize| -> Option<u64> {
        let b = valid.get(o..o + 8)?;
        Some(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    };
    (0..valid.len()).step_by(8).filter_map(move |o| {
        let client = word(o)?;
        let dispatch = word(o + 8)?;
        (is_kernel_address(client) && is_kernel_address(dispatch) && client != dispatch).then_some(
            NpiCandidate {
                offset: o,
                client,
                dispatch,
            },
        )
    })
}

/// Why a copied dispatch table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatchProblem {
    /// `Version`'s major number is not 1 (`WSK_MAJOR_VERSION`), the only WSK
    /// major version there is.
    Version(u16),
    /// `Reserved` is not 0.
    Reserved(u16),
    /// A function the driver calls is NULL.
    Missing(&'static str),
    /// A function pointer lies outside the provider driver's image.
    OutsideImage(&'static str),
}

impl DispatchProblem {
    /// One-line description for the log.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            DispatchProblem::Version(_) => "WSK major version is not 1",
            DispatchProblem::Reserved(_) => "reserved field is not zero",
            DispatchProblem::Missing(_) => "a required function is NULL",
            DispatchProblem::OutsideImage(_) => "a function lies outside the provider image",
        }
    }
}

fn le_u64(raw: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[o..o + 8]);
    u64::from_le_bytes(b)
}

fn check_functions(
    raw: &[u8],
    fields: &[(&'static str, usize, bool)],
    image: ImageRange,
) -> Result<(), DispatchProblem> {
    for &(name, off, required) in fields {
        let f = le_u64(raw, off);
        if f == 0 {
            if required {
                return Err(DispatchProblem::Missing(name));
            }
        } else if !image.contains(f) {
            return Err(DispatchProblem::OutsideImage(name));
        }
    }
    Ok(())
}

/// Size of the x64 `WSK_PROVIDER_DISPATCH` copy [`check_provider_dispatch`] reads.
pub const PROVIDER_DISPATCH_BYTES: usize = 56;
/// Size of the `WSK_PROVIDER_CONNECTION_DISPATCH` prefix
/// [`check_connection_dispatch`] reads (up to `WskRelease`, the pre-RS2 size).
pub const CONNECTION_DISPATCH_BYTES: usize = 80;

/// Checks a copy of a candidate x64 `WSK_PROVIDER_DISPATCH` (56 bytes:
/// `USHORT Version` at 0, `USHORT Reserved` at 2, six pointers from 8):
/// major version 1, `Reserved` 0, `WskSocketConnect` (at 16) present, and
/// every non-NULL function inside `image`.
pub fn check_provider_dispatch(
    raw: &[u8; PROVIDER_DISPATCH_BYTES],
    image: ImageRange,
) -> Result<(), DispatchProblem> {
    let version = u16::from_le_bytes([raw[0], raw[1]]);
    let reserved = u16::from_le_bytes([raw[2], raw[3]]);
    if crate::wsk::WSK_MAJOR_VERSION(version) != 1 {
        return Err(DispatchProblem::Version(version));
    }
    if reserved != 0 {
        return Err(DispatchProblem::Reserved(reserved));
    }
    check_functions(
        raw,
        &[
            ("WskSocket", 8, false),
            ("WskSocketConnect", 16, true),
            ("WskControlClient", 24, false),
            ("WskGetAddressInfo", 32, false),
            ("WskFreeAddressInfo", 40, false),
            ("WskGetNameInfo", 48, false),
        ],
        image,
    )
}

/// Checks the first 80 bytes (up to `WskRelease`) of a connection socket's
/// x64 `WSK_PROVIDER_CONNECTION_DISPATCH`: `WskCloseSocket` (8), `WskSend`
/// (48), `WskReceive` (56) and `WskDisconnect` (64) present, every non-NULL
/// function inside `image`.
pub fn check_connection_dispatch(
    raw: &[u8; CONNECTION_DISPATCH_BYTES],
    image: ImageRange,
) -> Result<(), DispatchProblem> {
    check_functions(
        raw,
        &[
            ("WskControlSocket", 0, false),
            ("WskCloseSocket", 8, true),
            ("WskBind", 16, false),
            ("WskConnect", 24, false),
            ("WskGetLocalAddress", 32, false),
            ("WskGetRemoteAddress", 40, false),
            ("WskSend", 48, true),
            ("WskReceive", 56, true),
            ("WskDisconnect", 64, true),
            ("WskRelease", 72, false),
        ],
        image,
    )
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

    const IMAGE: ImageRange = ImageRange {
        start: 0xFFFF_F801_2000_0000,
        len: 0x4_0000,
    };

    fn dispatch_bytes(version: u16, fns: [u64; 6]) -> [u8; PROVIDER_DISPATCH_BYTES] {
        let mut raw = [0u8; PROVIDER_DISPATCH_BYTES];
        raw[..2].copy_from_slice(&version.to_le_bytes());
        for (i, f) in fns.iter().enumerate() {
            raw[8 + 8 * i..16 + 8 * i].copy_from_slice(&f.to_le_bytes());
        }
        raw
    }

    #[test]
    fn npi_candidates_need_two_kernel_pointers() {
        let mut reply = [0u8; VMCI_CAPTURE_BUFFER_SIZE];
        reply[..4].copy_from_slice(&1u32.to_le_bytes());
        // A pair at offset 8: pool client, dispatch in the image.
        reply[8..16].copy_from_slice(&0xFFFF_A001_0000_1000u64.to_le_bytes());
        reply[16..24].copy_from_slice(&(IMAGE.start + 0x100).to_le_bytes());
        let mut it = npi_candidates(&reply, reply.len());
        assert_eq!(
            it.next(),
            Some(NpiCandidate {
                offset: 8,
                client: 0xFFFF_A001_0000_1000,
                dispatch: IMAGE.start + 0x100
            })
        );
        assert_eq!(it.next(), None);
        drop(it);
        // Only the written part counts.
        assert_eq!(npi_candidates(&reply, 16).count(), 0);
        // A user-mode value is no candidate.
        reply[16..24].copy_from_slice(&0x0000_7FF0_0000_0000u64.to_le_bytes());
        assert_eq!(npi_candidates(&reply, reply.len()).count(), 0);
        // The untouched request has none.
        let req = VmciCaptureBuffer::request().to_le_bytes();
        assert_eq!(npi_candidates(&req, req.len()).count(), 0);
    }

    #[test]
    fn image_range_bounds() {
        assert!(IMAGE.contains_range(IMAGE.start, 56));
        assert!(IMAGE.contains_range(IMAGE.start + IMAGE.len - 56, 56));
        assert!(!IMAGE.contains_range(IMAGE.start + IMAGE.len - 55, 56));
        assert!(!IMAGE.contains_range(IMAGE.start - 1, 56));
        assert!(!IMAGE.contains_range(u64::MAX - 10, 56));
        assert!(!IMAGE.contains_range(IMAGE.start, 0));
    }

    #[test]
    fn provider_dispatch_checks() {
        let f = |o: u64| IMAGE.start + o;
        let good = dispatch_bytes(0x0100, [f(0x10), f(0x20), f(0x30), 0, 0, 0]);
        assert_eq!(check_provider_dispatch(&good, IMAGE), Ok(()));
        let v2 = dispatch_bytes(0x0200, [f(0x10), f(0x20), 0, 0, 0, 0]);
        assert_eq!(
            check_provider_dispatch(&v2, IMAGE),
            Err(DispatchProblem::Version(0x0200))
        );
        let no_connect = dispatch_bytes(0x0100, [f(0x10), 0, 0, 0, 0, 0]);
        assert_eq!(
            check_provider_dispatch(&no_connect, IMAGE),
            Err(DispatchProblem::Missing("WskSocketConnect"))
        );
        let outside = dispatch_bytes(0x0100, [f(0x10), IMAGE.start + IMAGE.len, 0, 0, 0, 0]);
        assert_eq!(
            check_provider_dispatch(&outside, IMAGE),
            Err(DispatchProblem::OutsideImage("WskSocketConnect"))
        );
        let mut reserved = good;
        reserved[2] = 1;
        assert_eq!(
            check_provider_dispatch(&reserved, IMAGE),
            Err(DispatchProblem::Reserved(1))
        );
    }

    #[test]
    fn connection_dispatch_checks() {
        let mut raw = [0u8; CONNECTION_DISPATCH_BYTES];
        for o in [8usize, 48, 56, 64] {
            raw[o..o + 8].copy_from_slice(&(IMAGE.start + o as u64).to_le_bytes());
        }
        assert_eq!(check_connection_dispatch(&raw, IMAGE), Ok(()));
        raw[56..64].fill(0);
        assert_eq!(
            check_connection_dispatch(&raw, IMAGE),
            Err(DispatchProblem::Missing("WskReceive"))
        );
        // Offsets agree with the km-sys struct.
        assert_eq!(
            core::mem::offset_of!(crate::wsk::WSK_PROVIDER_CONNECTION_DISPATCH, WskSend),
            48
        );
        assert_eq!(
            core::mem::offset_of!(crate::wsk::WSK_PROVIDER_CONNECTION_DISPATCH, WskDisconnect),
            64
        );
        assert_eq!(
            core::mem::offset_of!(crate::wsk::WSK_PROVIDER_DISPATCH, WskSocketConnect),
            16
        );
        assert_eq!(
            CONNECTION_DISPATCH_BYTES,
            crate::wsk::CONNECTION_DISPATCH_PRE_RS2_SIZE
        );
    }
}
