//! `CTL_CODE` (`devioctl.h` / `winioctl.h`) as a `const fn`, and its inverse.
//!
//! ```text
//! #define CTL_CODE(DeviceType, Function, Method, Access) \
//!     (((DeviceType) << 16) | ((Access) << 14) | ((Function) << 2) | (Method))
//! ```
//!
//! Bits 31..16 device type (bit 31 set = vendor-defined, "common" bit),
//! bits 15..14 required access, bits 13..2 function (0x800 and above are
//! vendor-defined), bits 1..0 transfer method.

/// `METHOD_BUFFERED` (0): the I/O manager copies input and output through
/// one system buffer of `max(in, out)` bytes.
pub const METHOD_BUFFERED: u32 = 0;
/// `METHOD_IN_DIRECT` (1).
pub const METHOD_IN_DIRECT: u32 = 1;
/// `METHOD_OUT_DIRECT` (2).
pub const METHOD_OUT_DIRECT: u32 = 2;
/// `METHOD_NEITHER` (3).
pub const METHOD_NEITHER: u32 = 3;

/// `FILE_ANY_ACCESS` (0): any open handle may send the request.
pub const FILE_ANY_ACCESS: u32 = 0;
/// `FILE_READ_ACCESS` (1, same value as `FILE_READ_DATA`).
pub const FILE_READ_ACCESS: u32 = 1;
/// `FILE_WRITE_ACCESS` (2).
pub const FILE_WRITE_ACCESS: u32 = 2;

/// `FILE_READ_DATA` (`winnt.h`: 0x0001), the `DesiredAccess` the seed's
/// listing passes to `IoGetDeviceObjectPointer` for `\DosDevices\vmci`.
pub const FILE_READ_DATA: u32 = 0x0001;

/// `CTL_CODE(DeviceType, Function, Method, Access)`.
#[must_use]
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// The four fields of an IOCTL code, as [`ctl_code`] combines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtlCodeParts {
    /// Bits 31..16.
    pub device_type: u32,
    /// Bits 13..2.
    pub function: u32,
    /// Bits 1..0 (`METHOD_*`).
    pub method: u32,
    /// Bits 15..14 (`FILE_*_ACCESS`).
    pub access: u32,
}

/// Splits an IOCTL code into its `CTL_CODE` fields
/// (`DEVICE_TYPE_FROM_CTL_CODE`, `METHOD_FROM_CTL_CODE` and the two fields
/// `devioctl.h` has no macro for).
#[must_use]
pub const fn split_ctl_code(code: u32) -> CtlCodeParts {
    CtlCodeParts {
        device_type: code >> 16,
        function: (code >> 2) & 0x0fff,
        method: code & 0x3,
        access: (code >> 14) & 0x3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_windows_ioctls() {
        // IOCTL_DISK_GET_DRIVE_GEOMETRY = CTL_CODE(FILE_DEVICE_DISK 0x7, 0,
        // METHOD_BUFFERED, FILE_ANY_ACCESS) = 0x00070000 (winioctl.h).
        assert_eq!(
            ctl_code(0x7, 0, METHOD_BUFFERED, FILE_ANY_ACCESS),
            0x0007_0000
        );
        // FSCTL_GET_REPARSE_POINT = CTL_CODE(FILE_DEVICE_FILE_SYSTEM 0x9, 42,
        // METHOD_BUFFERED, FILE_ANY_ACCESS) = 0x000900A8.
        assert_eq!(
            ctl_code(0x9, 42, METHOD_BUFFERED, FILE_ANY_ACCESS),
            0x0009_00A8
        );
        // FSCTL_SET_REPARSE_POINT = CTL_CODE(0x9, 41, METHOD_BUFFERED,
        // FILE_SPECIAL_ACCESS, which winioctl.h defines as FILE_ANY_ACCESS) = 0x000900A4.
        assert_eq!(
            ctl_code(0x9, 41, METHOD_BUFFERED, FILE_ANY_ACCESS),
            0x0009_00A4
        );
        // FSCTL_SET_COMPRESSION = CTL_CODE(0x9, 16, METHOD_BUFFERED,
        // FILE_READ_DATA | FILE_WRITE_DATA = 3) = 0x0009C040.
        assert_eq!(
            ctl_code(
                0x9,
                16,
                METHOD_BUFFERED,
                FILE_READ_ACCESS | FILE_WRITE_ACCESS
            ),
            0x0009_C040
        );
    }

    #[test]
    fn split_inverts_ctl_code() {
        for (dt, f, m, a) in [
            (0x8103, 0x830, METHOD_BUFFERED, FILE_ANY_ACCESS),
            (0xFFFF, 0xFFF, METHOD_NEITHER, 3),
            (0, 0, 0, 0),
            (0x22, 0x801, METHOD_OUT_DIRECT, FILE_WRITE_ACCESS),
        ] {
            let parts = split_ctl_code(ctl_code(dt, f, m, a));
            assert_eq!(
                parts,
                CtlCodeParts {
                    device_type: dt,
                    function: f,
                    method: m,
                    access: a
                }
            );
        }
    }
}
