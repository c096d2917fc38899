//! Decoding a registry value as the Windows kernel returns it
//! (`ZwQueryValueKey` with `KeyValuePartialInformation`) into a
//! [`RegValue`] for [`Params::apply`](crate::Params::apply).
//!
//! `KEY_VALUE_PARTIAL_INFORMATION` (`wdm.h`) is `ULONG TitleIndex; ULONG
//! Type; ULONG DataLength; UCHAR Data[1];`: a 12-byte little-endian header
//! and the data. The driver only moves these bytes; which registry types
//! are accepted and how strings are cut is decided here:
//!
//! * `REG_DWORD` (exactly 4 bytes) and `REG_QWORD` (exactly 8 bytes);
//! * `REG_SZ`: UTF-16LE, trailing NULs removed (the registry stores the
//!   terminator in `DataLength`);
//! * `REG_MULTI_SZ`: UTF-16LE, kept whole ([`RegValue::MultiSzUtf16`] skips
//!   the empty strings the terminators make);
//! * anything else (`REG_EXPAND_SZ`, `REG_BINARY`, a DWORD of 3 bytes, ...)
//!   is refused with the type and length, for the log line.

use core::fmt;

use crate::params::RegValue;

/// `REG_SZ` (`winnt.h`).
pub const REG_SZ: u32 = 1;
/// `REG_EXPAND_SZ` (`winnt.h`).
pub const REG_EXPAND_SZ: u32 = 2;
/// `REG_BINARY` (`winnt.h`).
pub const REG_BINARY: u32 = 3;
/// `REG_DWORD` (`winnt.h`, little-endian).
pub const REG_DWORD: u32 = 4;
/// `REG_MULTI_SZ` (`winnt.h`).
pub const REG_MULTI_SZ: u32 = 7;
/// `REG_QWORD` (`winnt.h`, little-endian).
pub const REG_QWORD: u32 = 11;

/// Bytes before `Data` in `KEY_VALUE_PARTIAL_INFORMATION`.
pub const PARTIAL_INFORMATION_HEADER: usize = 12;

/// Why a value could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegDecodeError {
    /// Shorter than the 12-byte header, or `DataLength` runs past the bytes.
    Truncated,
    /// A type this agent does not read, or a numeric type of the wrong size.
    Unsupported {
        /// The registry type.
        reg_type: u32,
        /// `DataLength`.
        len: usize,
    },
    /// The caller's UTF-16 buffer is smaller than the string.
    BufferTooSmall {
        /// UTF-16 units needed.
        need: usize,
    },
}

impl fmt::Display for RegDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegDecodeError::Truncated => f.write_str("truncated value"),
            RegDecodeError::Unsupported { reg_type, len } => write!(
                f,
                "registry type {} with {len} bytes is not supported",
                type_name(*reg_type)
            ),
            RegDecodeError::BufferTooSmall { need } => {
                write!(f, "string of {need} UTF-16 units does not fit the buffer")
            }
        }
    }
}

impl core::error::Error for RegDecodeError {}

/// The `winnt.h` name of a registry type (`"type 9"` for others).
#[must_use]
pub fn type_name(reg_type: u32) -> TypeName {
    TypeName(reg_type)
}

/// Display form of a registry type: `REG_DWORD`, ..., or `type N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeName(pub u32);

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            REG_SZ => f.write_str("REG_SZ"),
            REG_EXPAND_SZ => f.write_str("REG_EXPAND_SZ"),
            REG_BINARY => f.write_str("REG_BINARY"),
            REG_DWORD => f.write_str("REG_DWORD"),
            REG_MULTI_SZ => f.write_str("REG_MULTI_SZ"),
            REG_QWORD => f.write_str("REG_QWORD"),
            n => write!(f, "type {n}"),
        }
    }
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// The `Type` and the `Data` bytes of a `KEY_VALUE_PARTIAL_INFORMATION`.
pub fn partial_information_parts(info: &[u8]) -> Result<(u32, &[u8]), RegDecodeError> {
    let (Some(reg_type), Some(len)) = (le_u32(info, 4), le_u32(info, 8)) else {
        return Err(RegDecodeError::Truncated);
    };
    let data = info
        .get(PARTIAL_INFORMATION_HEADER..PARTIAL_INFORMATION_HEADER.saturating_add(len as usize))
        .ok_or(RegDecodeError::Truncated)?;
    Ok((reg_type, data))
}

/// UTF-16 units a string value of this `Data` needs (for sizing the buffer
/// [`decode_value`] takes).
#[must_use]
pub const fn units_needed(data: &[u8]) -> usize {
    data.len() / 2
}

/// Decodes one value's type and data; strings are converted into `units`
/// (at least [`units_needed`] long) and borrowed from it.
pub fn decode_value<'u>(
    reg_type: u32,
    data: &[u8],
    units: &'u mut [u16],
) -> Result<RegValue<'u>, RegDecodeError> {
    match reg_type {
        REG_DWORD if data.len() == 4 => Ok(RegValue::Dword(u32::from_le_bytes([
            data[0], data[1], data[2], data[3],
        ]))),
        REG_QWORD if data.len() == 8 => {
            let mut q = [0u8; 8];
            q.copy_from_slice(data);
            Ok(RegValue::Qword(u64::from_le_bytes(q)))
        }
        REG_SZ | REG_MULTI_SZ => {
            let need = units_needed(data);
            let out = units
                .get_mut(..need)
                .ok_or(RegDecodeError::BufferTooSmall { need })?;
            for (u, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *u = u16::from_le_bytes([c[0], c[1]]);
            }
            if reg_type == REG_SZ {
                let end = out.iter().rposition(|&u| u != 0).map_or(0, |i| i + 1);
                Ok(RegValue::SzUtf16(&out[..end]))
            } else {
                Ok(RegValue::MultiSzUtf16(out))
            }
        }
        other => Err(RegDecodeError::Unsupported {
            reg_type: other,
            len: data.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::Params;
    use crate::params::{FailMode, names};
    use proptest::prelude::*;
    use std::vec::Vec;

    fn info(reg_type: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&reg_type.to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn numbers() {
        let i = info(REG_DWORD, &5000u32.to_le_bytes());
        let (t, d) = partial_information_parts(&i).unwrap();
        assert_eq!(decode_value(t, d, &mut []), Ok(RegValue::Dword(5000)));
        let i = info(REG_QWORD, &7u64.to_le_bytes());
        let (t, d) = partial_information_parts(&i).unwrap();
        assert_eq!(decode_value(t, d, &mut []), Ok(RegValue::Qword(7)));
    }

    #[test]
    fn strings_lose_their_terminators() {
        let i = info(REG_SZ, &utf16("closed\0"));
        let (t, d) = partial_information_parts(&i).unwrap();
        let mut units = [0u16; 16];
        let v = decode_value(t, d, &mut units).unwrap();
        assert_eq!(
            v,
            RegValue::SzUtf16(&"closed".encode_utf16().collect::<Vec<_>>())
        );
        let mut p = Params::default();
        p.apply(names::FAIL_MODE, v).unwrap();
        assert_eq!(p.fail_mode, FailMode::Closed);

        let i = info(REG_MULTI_SZ, &utf16("log\0tmp\0\0"));
        let (t, d) = partial_information_parts(&i).unwrap();
        let mut units = [0u16; 16];
        let v = decode_value(t, d, &mut units).unwrap();
        let mut p = Params::default();
        p.apply(names::EXCLUDE_EXTENSIONS, v).unwrap();
        assert_eq!(p.policy.extensions().count(), 2);
    }

    #[test]
    fn refusals_name_the_type() {
        let e = decode_value(REG_DWORD, &[1, 2, 3], &mut []).unwrap_err();
        assert_eq!(
            e,
            RegDecodeError::Unsupported {
                reg_type: REG_DWORD,
                len: 3
            }
        );
        assert_eq!(
            std::format!("{e}"),
            "registry type REG_DWORD with 3 bytes is not supported"
        );
        let e = decode_value(REG_EXPAND_SZ, &utf16("%x%\0"), &mut [0; 8]).unwrap_err();
        assert_eq!(
            std::format!("{e}"),
            "registry type REG_EXPAND_SZ with 8 bytes is not supported"
        );
        assert_eq!(std::format!("{}", type_name(9)), "type 9");
        assert_eq!(
            decode_value(REG_SZ, &utf16("abcdef"), &mut [0; 3]),
            Err(RegDecodeError::BufferTooSmall { need: 6 })
        );
    }

    #[test]
    fn truncated_information() {
        assert_eq!(
            partial_information_parts(&[0; 11]),
            Err(RegDecodeError::Truncated)
        );
        let mut i = info(REG_DWORD, &1u32.to_le_bytes());
        i.truncate(14);
        assert_eq!(
            partial_information_parts(&i),
            Err(RegDecodeError::Truncated)
        );
        // Extra bytes after DataLength (the buffer was larger) are ignored.
        let mut i = info(REG_DWORD, &9u32.to_le_bytes());
        i.extend_from_slice(&[0xEE; 20]);
        let (t, d) = partial_information_parts(&i).unwrap();
        assert_eq!(decode_value(t, d, &mut []), Ok(RegValue::Dword(9)));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut units = [0u16; 32];
            if let Ok((t, d)) = partial_information_parts(&bytes) {
                let _ = decode_value(t, d, &mut units);
            }
        }
    }
}
