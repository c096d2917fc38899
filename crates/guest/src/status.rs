//! NTSTATUS values as a portable `u32` newtype.
//!
//! The Windows adapter converts with [`NtStatus::from_i32`] / [`NtStatus::to_i32`]
//! (wdk-sys declares `NTSTATUS = i32`); the Linux agent maps errno values to the
//! closest NTSTATUS so the portable logic sees one vocabulary.
//!
//! Every constant below was checked against `windows-sys` 0.61.2
//! (`src/Windows/Win32/Foundation/mod.rs`, generated from Microsoft's metadata
//! for `ntstatus.h`) and agrees with the `[MS-ERREF]` NTSTATUS table.
//!
//! Layout of an NTSTATUS (`[MS-ERREF]` 2.3): bits 31..30 are the severity
//! (00 success, 01 informational, 10 warning, 11 error), bit 29 the customer
//! flag, bits 27..16 the facility, bits 15..0 the code.

use core::fmt;

/// An NTSTATUS value, stored as its raw 32 bits.
///
/// `Display` prints the form the drivers' debug logs use, `0x80000011`
/// (eight upper-case hex digits); `Debug` adds the symbolic name when known.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtStatus(pub u32);

/// Severity class of an [`NtStatus`] (its top two bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    /// `00`: success (`0x0000_0000..=0x3FFF_FFFF`).
    Success,
    /// `01`: informational, still a success for `NT_SUCCESS`.
    Informational,
    /// `10`: warning; **not** a success for `NT_SUCCESS` (e.g. `STATUS_DEVICE_BUSY`).
    Warning,
    /// `11`: error.
    Error,
}

macro_rules! statuses {
    ($( $(#[$doc:meta])* $name:ident = $value:expr; )*) => {
        impl NtStatus {
            $( $(#[$doc])* pub const $name: NtStatus = NtStatus($value); )*

            /// The symbolic name of the statuses this crate knows, e.g.
            /// `Some("STATUS_DEVICE_BUSY")` for `0x80000011`.
            #[must_use]
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// Looks a status up by its symbolic name (exact, upper case).
            #[must_use]
            pub fn from_name(name: &str) -> Option<NtStatus> {
                match name {
                    $( stringify!($name) => Some(NtStatus::$name), )*
                    _ => None,
                }
            }

            /// Every status this crate has a name for, in declaration order.
            pub const KNOWN: &'static [NtStatus] = &[$( NtStatus::$name, )*];
        }
    };
}

statuses! {
    /// `0x00000000`: the operation completed successfully.
    STATUS_SUCCESS = 0x0000_0000;
    /// `0x00000102`: a wait timed out (a *success* code for `NT_SUCCESS`).
    STATUS_TIMEOUT = 0x0000_0102;
    /// `0x00000103`: the operation is pending; the IRP completes later.
    STATUS_PENDING = 0x0000_0103;
    /// `0x80000011`: the device is busy. The seed's capture IOCTL failed with it
    /// while `\Driver\vmci` had no device objects yet.
    STATUS_DEVICE_BUSY = 0x8000_0011;
    /// `0xC0000001`: generic failure.
    STATUS_UNSUCCESSFUL = 0xC000_0001;
    /// `0xC000000D`: an invalid parameter was passed.
    STATUS_INVALID_PARAMETER = 0xC000_000D;
    /// `0xC000000E`: the device does not exist.
    STATUS_NO_SUCH_DEVICE = 0xC000_000E;
    /// `0xC0000010`: the request is not valid for this device.
    STATUS_INVALID_DEVICE_REQUEST = 0xC000_0010;
    /// `0xC0000022`: access denied (what a denied open returns to the caller).
    STATUS_ACCESS_DENIED = 0xC000_0022;
    /// `0xC0000023`: the buffer is too small.
    STATUS_BUFFER_TOO_SMALL = 0xC000_0023;
    /// `0xC0000034`: the object name (e.g. `\DosDevices\vmci`) was not found.
    STATUS_OBJECT_NAME_NOT_FOUND = 0xC000_0034;
    /// `0xC000003A`: the object path was not found.
    STATUS_OBJECT_PATH_NOT_FOUND = 0xC000_003A;
    /// `0xC000009A`: insufficient system resources.
    STATUS_INSUFFICIENT_RESOURCES = 0xC000_009A;
    /// `0xC00000A3`: the device is not ready.
    STATUS_DEVICE_NOT_READY = 0xC000_00A3;
    /// `0xC00000B5`: an I/O operation timed out.
    STATUS_IO_TIMEOUT = 0xC000_00B5;
    /// `0xC00000BB`: the request is not supported.
    STATUS_NOT_SUPPORTED = 0xC000_00BB;
    /// `0xC00000C0`: the device does not exist.
    STATUS_DEVICE_DOES_NOT_EXIST = 0xC000_00C0;
    /// `0xC0000120`: the I/O request was cancelled.
    STATUS_CANCELLED = 0xC000_0120;
    /// `0xC000020D`: the connection was reset by the peer.
    STATUS_CONNECTION_RESET = 0xC000_020D;
    /// `0xC0000236`: the peer refused the connection.
    STATUS_CONNECTION_REFUSED = 0xC000_0236;
    /// `0xC0000906`: the file contains a virus (what a deny verdict may return).
    STATUS_VIRUS_INFECTED = 0xC000_0906;
}

impl NtStatus {
    /// From wdk-sys's `NTSTATUS` (`i32`), bit for bit.
    #[must_use]
    pub const fn from_i32(value: i32) -> Self {
        NtStatus(value as u32)
    }

    /// To wdk-sys's `NTSTATUS` (`i32`), bit for bit.
    #[must_use]
    pub const fn to_i32(self) -> i32 {
        self.0 as i32
    }

    /// The severity class (top two bits).
    #[must_use]
    pub const fn severity(self) -> Severity {
        match self.0 >> 30 {
            0 => Severity::Success,
            1 => Severity::Informational,
            2 => Severity::Warning,
            _ => Severity::Error,
        }
    }

    /// `NT_SUCCESS(status)`: `(NTSTATUS)status >= 0`, i.e. success *or*
    /// informational. `STATUS_PENDING` and `STATUS_TIMEOUT` are successes;
    /// `STATUS_DEVICE_BUSY` (`0x80000011`, a warning) is **not**.
    #[must_use]
    pub const fn is_success(self) -> bool {
        (self.0 as i32) >= 0
    }

    /// `NT_INFORMATION(status)`: severity `01`.
    #[must_use]
    pub const fn is_information(self) -> bool {
        self.0 >> 30 == 1
    }

    /// `NT_WARNING(status)`: severity `10`.
    #[must_use]
    pub const fn is_warning(self) -> bool {
        self.0 >> 30 == 2
    }

    /// `NT_ERROR(status)`: severity `11`.
    #[must_use]
    pub const fn is_error(self) -> bool {
        self.0 >> 30 == 3
    }

    /// The facility field (bits 27..16).
    #[must_use]
    pub const fn facility(self) -> u16 {
        ((self.0 >> 16) & 0x0FFF) as u16
    }

    /// The code field (bits 15..0).
    #[must_use]
    pub const fn code(self) -> u16 {
        (self.0 & 0xFFFF) as u16
    }

    /// Parses `0x80000011` / `0X80000011` / `80000011` (one to eight hex digits)
    /// or a known symbolic name such as `STATUS_DEVICE_BUSY`.
    #[must_use]
    pub fn parse(text: &str) -> Option<NtStatus> {
        let t = text.trim();
        if let Some(s) = NtStatus::from_name(t) {
            return Some(s);
        }
        let hex = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok().map(NtStatus)
    }
}

impl From<u32> for NtStatus {
    fn from(v: u32) -> Self {
        NtStatus(v)
    }
}

impl From<NtStatus> for u32 {
    fn from(s: NtStatus) -> u32 {
        s.0
    }
}

impl From<i32> for NtStatus {
    fn from(v: i32) -> Self {
        NtStatus::from_i32(v)
    }
}

impl From<NtStatus> for i32 {
    fn from(s: NtStatus) -> i32 {
        s.to_i32()
    }
}

impl fmt::Display for NtStatus {
    /// `0x80000011`: the shape of the seed's debug log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08X}", self.0)
    }
}

impl fmt::Debug for NtStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}(0x{:08X})", self.0),
            None => write!(f, "NtStatus(0x{:08X})", self.0),
        }
    }
}

impl fmt::LowerHex for NtStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::UpperHex for NtStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::UpperHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::format;

    #[test]
    fn values_match_ntstatus_h() {
        // Independent restatement of the table (windows-sys 0.61.2).
        let table: &[(NtStatus, u32)] = &[
            (NtStatus::STATUS_SUCCESS, 0),
            (NtStatus::STATUS_PENDING, 0x103),
            (NtStatus::STATUS_DEVICE_BUSY, 0x8000_0011),
            (NtStatus::STATUS_OBJECT_NAME_NOT_FOUND, 0xC000_0034),
            (NtStatus::STATUS_OBJECT_PATH_NOT_FOUND, 0xC000_003A),
            (NtStatus::STATUS_DEVICE_NOT_READY, 0xC000_00A3),
            (NtStatus::STATUS_NO_SUCH_DEVICE, 0xC000_000E),
            (NtStatus::STATUS_DEVICE_DOES_NOT_EXIST, 0xC000_00C0),
            (NtStatus::STATUS_INSUFFICIENT_RESOURCES, 0xC000_009A),
            (NtStatus::STATUS_ACCESS_DENIED, 0xC000_0022),
            (NtStatus::STATUS_INVALID_PARAMETER, 0xC000_000D),
            (NtStatus::STATUS_NOT_SUPPORTED, 0xC000_00BB),
            (NtStatus::STATUS_UNSUCCESSFUL, 0xC000_0001),
            (NtStatus::STATUS_IO_TIMEOUT, 0xC000_00B5),
            (NtStatus::STATUS_CONNECTION_REFUSED, 0xC000_0236),
            (NtStatus::STATUS_CONNECTION_RESET, 0xC000_020D),
            (NtStatus::STATUS_VIRUS_INFECTED, 0xC000_0906),
            (NtStatus::STATUS_TIMEOUT, 0x102),
            (NtStatus::STATUS_CANCELLED, 0xC000_0120),
            (NtStatus::STATUS_INVALID_DEVICE_REQUEST, 0xC000_0010),
            (NtStatus::STATUS_BUFFER_TOO_SMALL, 0xC000_0023),
        ];
        assert_eq!(table.len(), NtStatus::KNOWN.len());
        for (s, v) in table {
            assert_eq!(s.0, *v, "{:?}", s);
        }
    }

    #[test]
    fn nt_success_semantics() {
        assert!(NtStatus::STATUS_SUCCESS.is_success());
        assert!(NtStatus::STATUS_PENDING.is_success());
        assert!(NtStatus::STATUS_TIMEOUT.is_success());
        assert!(!NtStatus::STATUS_DEVICE_BUSY.is_success());
        assert!(NtStatus::STATUS_DEVICE_BUSY.is_warning());
        assert!(!NtStatus::STATUS_DEVICE_BUSY.is_error());
        assert!(NtStatus::STATUS_ACCESS_DENIED.is_error());
        assert!(NtStatus(0x4000_0000).is_information());
        assert!(NtStatus(0x4000_0000).is_success());
        assert_eq!(NtStatus::STATUS_DEVICE_BUSY.severity(), Severity::Warning);
        assert_eq!(NtStatus::STATUS_VIRUS_INFECTED.code(), 0x0906);
        assert_eq!(NtStatus(0xC00A_0006).facility(), 0x00A);
    }

    #[test]
    fn display_and_names() {
        assert_eq!(format!("{}", NtStatus::STATUS_DEVICE_BUSY), "0x80000011");
        assert_eq!(format!("{}", NtStatus::STATUS_PENDING), "0x00000103");
        assert_eq!(
            format!("{}", NtStatus::STATUS_OBJECT_NAME_NOT_FOUND),
            "0xC0000034"
        );
        assert_eq!(
            format!("{:?}", NtStatus::STATUS_DEVICE_BUSY),
            "STATUS_DEVICE_BUSY(0x80000011)"
        );
        assert_eq!(
            format!("{:?}", NtStatus(0xDEAD_BEEF)),
            "NtStatus(0xDEADBEEF)"
        );
        assert_eq!(
            NtStatus::STATUS_DEVICE_BUSY.name(),
            Some("STATUS_DEVICE_BUSY")
        );
        assert_eq!(NtStatus(0x1234).name(), None);
        assert_eq!(
            NtStatus::parse("0x80000011"),
            Some(NtStatus::STATUS_DEVICE_BUSY)
        );
        assert_eq!(
            NtStatus::parse("c0000034"),
            Some(NtStatus::STATUS_OBJECT_NAME_NOT_FOUND)
        );
        assert_eq!(
            NtStatus::parse("STATUS_PENDING"),
            Some(NtStatus::STATUS_PENDING)
        );
        assert_eq!(NtStatus::parse("0x123456789"), None);
        assert_eq!(NtStatus::parse("0x"), None);
        assert_eq!(
            NtStatus::from_i32(-1073741790),
            NtStatus::STATUS_ACCESS_DENIED
        );
        assert_eq!(NtStatus::STATUS_DEVICE_BUSY.to_i32(), -2147483631);
        for s in NtStatus::KNOWN {
            assert_eq!(NtStatus::from_name(s.name().unwrap()), Some(*s));
        }
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(v: u32) {
            let s = NtStatus(v);
            prop_assert_eq!(NtStatus::parse(&format!("{s}")), Some(s));
            prop_assert_eq!(NtStatus::from_i32(s.to_i32()), s);
            // exactly one severity predicate, and NT_SUCCESS == success|informational
            let n = [s.is_warning(), s.is_error(), s.is_success()].iter().filter(|b| **b).count();
            prop_assert_eq!(n, 1);
            prop_assert_eq!(s.is_success(), (v as i32) >= 0);
        }
    }
}
