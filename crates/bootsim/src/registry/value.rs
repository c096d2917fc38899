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
