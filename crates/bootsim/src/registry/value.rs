//! Registry values, typed as `REG_*`.

/// One registry value's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegValue {
    /// `REG_SZ` (1).
    Sz(String),
    /// `REG_EXPAND_SZ` (2), not expanded.
    ExpandSz(String),
    /// `REG_BINARY` (3).
    Binary(Vec<u8>),
    /// `REG_DWORD` (4), little-endian.
    Dword(u32),
    /// `REG_MULTI_SZ` (7), without the terminating empty string.
    MultiSz(Vec<String>),
    /// `REG_QWORD` (11).
    Qword(u64),
    /// Any other type (`REG_NONE`, `REG_LINK`, `REG_DWORD_BIG_ENDIAN`,
    /// resource lists, ...): the raw type number and bytes.
    Other {
        /// The `REG_*` type number.
        kind: u32,
        /// The raw data.
        data: Vec<u8>,
    },
}

impl RegValue {
    /// The `REG_*` type number.
    pub fn kind(&self) -> u32 {
        match self {
            Self::Sz(_) => 1,
            Self::ExpandSz(_) => 2,
            Self::Binary(_) => 3,
            Self::Dword(_) => 4,
            Self::MultiSz(_) => 7,
            Self::Qword(_) => 11,
            Self::Other { kind, .. } => *kind,
        }
    }

    /// The value as a DWORD: `REG_DWORD`, or a 4-byte `REG_BINARY`/other
    /// (some tools write DWORDs that way).
    pub fn as_dword(&self) -> Option<u32> {
        match self {
            Self::Dword(v) => Some(*v),
            Self::Binary(b) | Self::Other { data: b, .. } if b.len() == 4 => {
                Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => None,
        }
    }

    /// The value as one string: `REG_SZ` or `REG_EXPAND_SZ`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Sz(s) | Self::ExpandSz(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a list of strings: `REG_MULTI_SZ`, or a single string as
    /// a one-element list (Windows reads `DependOnService` written as
    /// `REG_SZ` the same way).
    pub fn as_strings(&self) -> Option<Vec<&str>> {
        match self {
            Self::MultiSz(v) => Some(v.iter().map(String::as_str).collect()),
            Self::Sz(s) | Self::ExpandSz(s) if s.is_empty() => Some(Vec::new()),
            Self::Sz(s) | Self::ExpandSz(s) => Some(vec![s.as_str()]),
            _ => None,
        }
    }

    /// The raw bytes of a binary-ish value (`REG_BINARY` or other types).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Binary(b) | Self::Other { data: b, .. } => Some(b),
            _ => None,
        }
    }
}

/// How the bytes of string-typed data (`REG_SZ`, `REG_EXPAND_SZ`,
/// `REG_MULTI_SZ`) are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringEncoding {
    /// UTF-16LE: hives, and `hex(2)`/`hex(7)` data in version 5 `.reg` exports.
    Utf16Le,
    /// One byte per character (the ANSI code page; read as Windows-1252's
    /// Latin-1 subset): `hex(2)`/`hex(7)` data in `REGEDIT4` exports.
    Ansi,
}

impl RegValue {
    /// Decodes raw value data of type `kind` the way the configuration
    /// manager stores it. Both readers (hive and `.reg` `hex(N):` data) go
    /// through here, so the same bytes always give the same value:
    ///
    /// - 1 (`REG_SZ`), 2 (`REG_EXPAND_SZ`): the string up to the first NUL
    ///   (invalid UTF-16 is replaced with U+FFFD, an odd last byte ignored);
    /// - 7 (`REG_MULTI_SZ`): the strings up to the first empty one;
    /// - 4 (`REG_DWORD`) with exactly 4 bytes, 11 (`REG_QWORD`) with exactly
    ///   8 bytes; other lengths stay [`RegValue::Other`] with their bytes;
    /// - 3 (`REG_BINARY`): the bytes;
    /// - anything else: [`RegValue::Other`].
    pub fn from_raw(kind: u32, data: &[u8], encoding: StringEncoding) -> RegValue {
        match kind {
            1 => RegValue::Sz(first_string(data, encoding)),
            2 => RegValue::ExpandSz(first_string(data, encoding)),
            3 => RegValue::Binary(data.to_vec()),
            4 if data.len() == 4 => {
                RegValue::Dword(u32::from_le_bytes([data[0], data[1], data[2], data[3]]))
            }
            7 => RegValue::MultiSz(
                decode_string(data, encoding)
                    .split('\0')
                    .take_while(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            11 if data.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                RegValue::Qword(u64::from_le_bytes(b))
            }
            _ => RegValue::Other {
                kind,
                data: data.to_vec(),
            },
        }
    }
}

/// Decodes the whole byte string.
fn decode_string(data: &[u8], encoding: StringEncoding) -> String {
    match encoding {
        StringEncoding::Utf16Le => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        StringEncoding::Ansi => data.iter().map(|&b| char::from(b)).collect(),
    }
}

/// The string up to the first NUL.
fn first_string(data: &[u8], encoding: StringEncoding) -> String {
    let mut s = decode_string(data, encoding);
    if let Some(nul) = s.find('\0') {
        s.truncate(nul);
    }
    s
}

#[cfg(test)]
mod raw_tests {
    use super::*;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn strings_stop_at_the_first_nul() {
        let v = RegValue::from_raw(1, &utf16("vmci\0junk"), StringEncoding::Utf16Le);
        assert_eq!(v, RegValue::Sz("vmci".into()));
        let v = RegValue::from_raw(2, b"%SystemRoot%\0", StringEncoding::Ansi);
        assert_eq!(v, RegValue::ExpandSz("%SystemRoot%".into()));
    }

    #[test]
    fn multi_sz_stops_at_the_first_empty_string() {
        let v = RegValue::from_raw(7, &utf16("a\0bc\0\0ignored\0\0"), StringEncoding::Utf16Le);
        assert_eq!(v, RegValue::MultiSz(vec!["a".into(), "bc".into()]));
        assert_eq!(
            RegValue::from_raw(7, &[], StringEncoding::Utf16Le),
            RegValue::MultiSz(vec![])
        );
    }

    #[test]
    fn numbers_need_their_exact_width() {
        assert_eq!(
            RegValue::from_raw(4, &[1, 0, 0, 0], StringEncoding::Utf16Le),
            RegValue::Dword(1)
        );
        assert_eq!(
            RegValue::from_raw(4, &[1, 0], StringEncoding::Utf16Le),
            RegValue::Other {
                kind: 4,
                data: vec![1, 0]
            }
        );
        assert_eq!(
            RegValue::from_raw(11, &[2, 0, 0, 0, 0, 0, 0, 1], StringEncoding::Utf16Le),
            RegValue::Qword(0x0100_0000_0000_0002)
        );
        assert_eq!(
            RegValue::from_raw(0, &[9], StringEncoding::Utf16Le),
            RegValue::Other {
                kind: 0,
                data: vec![9]
            }
        );
    }
}
