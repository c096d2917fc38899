//! Offline registry hive files (`regf`), such as a SYSTEM hive copied from a
//! VM's disk (`Windows\System32\config\SYSTEM`).
//!
//! A small read-only reader written for this crate (docs/registry-input.md
//! says why it is not `regf` or `notatin`). It reads hive format versions
//! 1.2 to 1.6 (Windows NT 4 to 11): base block, hive bins, `nk` keys, `lf`,
//! `lh`, `li` and `ri` subkey lists, `vk` values with resident, single-cell
//! and `db` (big data) data. It never applies transaction logs: a *dirty*
//! hive (primary and secondary sequence numbers differ, i.e. the last write
//! was not completed in the primary file) is read as it is, with a
//! [`HiveWarning::Dirty`] for the caller to show.
//!
//! Malformed input is an error naming the file offset and what was expected
//! there; the reader bounds every access, so arbitrary bytes never panic.

use std::collections::HashSet;
use std::fmt;

use thiserror::Error;

use super::value::StringEncoding;
use super::{RegKey, RegValue};

/// Size of the base block (the file header); hive bins follow it.
pub const BASE_BLOCK_SIZE: usize = 4096;
/// Data of a value larger than this is split into `db` segments (format 1.4+).
const BIG_DATA_SEGMENT: usize = 16344;
/// Keys nested deeper than this are treated as malformed (Windows allows 512).
const MAX_DEPTH: usize = 512;

/// Something odd about a hive that does not stop it being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HiveWarning {
    /// Primary and secondary sequence numbers differ: the hive was copied
    /// while (or after) Windows was writing it, and the newest changes may
    /// still be in `SYSTEM.LOG1`/`SYSTEM.LOG2`, which are not applied.
    Dirty {
        /// Primary sequence number (offset 4).
        primary: u32,
        /// Secondary sequence number (offset 8).
        secondary: u32,
    },
    /// The base block's checksum (offset 508) does not match its contents.
    Checksum {
        /// The checksum stored in the file.
        stored: u32,
        /// The checksum of the first 508 bytes.
        computed: u32,
    },
    /// A format version this reader was not written for (it read it anyway).
    UnknownVersion {
        /// Major version (offset 20).
        major: u32,
        /// Minor version (offset 24).
        minor: u32,
    },
}

impl fmt::Display for HiveWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HiveWarning::Dirty { primary, secondary } => write!(
                f,
                "dirty hive (sequence numbers {primary} and {secondary} differ): read as is, \
                 without its transaction logs; the last changes before the copy may be missing \
                 (shut the VM down cleanly before copying the hive for an exact answer)"
            ),
            HiveWarning::Checksum { stored, computed } => write!(
                f,
                "hive header checksum is 0x{stored:08x} but the header sums to 0x{computed:08x}; read anyway"
            ),
            HiveWarning::UnknownVersion { major, minor } => write!(
                f,
                "hive format version {major}.{minor} is not one this reader knows (1.2 to 1.6); read anyway"
            ),
        }
    }
}

/// Why a hive could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HiveError {
    /// The file does not start with `regf`.
    #[error("not a registry hive: expected `regf` at offset 0, found {found:02x?}")]
    NotAHive {
        /// The first bytes.
        found: Vec<u8>,
    },
    /// A structure is not what the format requires at this offset.
    #[error("malformed hive at offset 0x{offset:x}: expected {expected}")]
    Malformed {
        /// File offset of the problem.
        offset: u64,
        /// What the reader expected there.
        expected: String,
    },
}

fn malformed(offset: usize, expected: impl Into<String>) -> HiveError {
    HiveError::Malformed {
        offset: offset as u64,
        expected: expected.into(),
    }
}

/// A hive read into memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hive {
    /// The whole tree; the root is renamed `SYSTEM` so that trees from hives
    /// and from `.reg` files compare equal (its name in the file is in
    /// [`Hive::root_name`]).
    pub system: RegKey,
    /// The root key's name as stored (e.g. `ROOT` or `CMI-CreateHive{...}`).
    pub root_name: String,
    /// Format version (major, minor), e.g. (1, 5) for Windows XP and later.
    pub version: (u32, u32),
    /// Odd but readable things about the file.
    pub warnings: Vec<HiveWarning>,
}

/// The checksum of a base block: XOR of its first 127 little-endian dwords,
/// with 0 stored as 1 and 0xFFFFFFFF as 0xFFFFFFFE.
pub fn base_block_checksum(base_block: &[u8]) -> u32 {
    let sum = base_block[..508].chunks_exact(4).fold(0u32, |acc, c| {
        acc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]])
    });
    match sum {
        0 => 1,
        u32::MAX => u32::MAX - 1,
        s => s,
    }
}

/// True if `bytes` starts like a hive (`regf`).
pub fn looks_like_hive(bytes: &[u8]) -> bool {
    bytes.starts_with(b"regf")
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a hive file's bytes.
pub fn parse_hive(bytes: &[u8]) -> Result<Hive, HiveError> {
    if !looks_like_hive(bytes) {
        return Err(HiveError::NotAHive {
            found: bytes.iter().take(4).copied().collect(),
        });
    }
    if bytes.len() < BASE_BLOCK_SIZE {
        return Err(malformed(
            bytes.len(),
            format!(
                "a {BASE_BLOCK_SIZE}-byte base block, but the file ends after {} bytes",
                bytes.len()
            ),
        ));
    }
    let mut warnings = Vec::new();
    let primary = u32_at(bytes, 4);
    let secondary = u32_at(bytes, 8);
    let major = u32_at(bytes, 20);
    let minor = u32_at(bytes, 24);
    let file_type = u32_at(bytes, 28);
    let root_offset = u32_at(bytes, 36);
    let bins_size = u32_at(bytes, 40) as usize;
    let stored = u32_at(bytes, 508);
    let computed = base_block_checksum(bytes);

    if major != 1 {
        return Err(malformed(
            20,
            format!("major format version 1, found {major}"),
        ));
    }
    if !(2..=6).contains(&minor) {
        warnings.push(HiveWarning::UnknownVersion { major, minor });
    }
    if file_type != 0 {
        return Err(malformed(
            28,
            format!(
                "file type 0 (a primary hive), found {file_type} (a transaction log or alternate file): \
                 give the SYSTEM file itself, not SYSTEM.LOG1/LOG2"
            ),
        ));
    }
    if primary != secondary {
        warnings.push(HiveWarning::Dirty { primary, secondary });
    }
    if stored != computed {
        warnings.push(HiveWarning::Checksum { stored, computed });
    }
    if bins_size == 0 || !bins_size.is_multiple_of(BASE_BLOCK_SIZE) {
        return Err(malformed(
            40,
            format!("a hive bins size that is a non-zero multiple of 4096, found {bins_size}"),
        ));
    }
    let available = bytes.len() - BASE_BLOCK_SIZE;
    if bins_size > available {
        return Err(malformed(
            40,
            format!(
                "{bins_size} bytes of hive bins as the header says, but the file has only {available} \
                 after the base block (a truncated copy?)"
            ),
        ));
    }
    if &bytes[BASE_BLOCK_SIZE..BASE_BLOCK_SIZE + 4] != b"hbin" {
        return Err(malformed(
            BASE_BLOCK_SIZE,
            "the first hive bin's `hbin` signature",
        ));
    }
    let reader = Reader {
        bins: &bytes[..BASE_BLOCK_SIZE + bins_size],
        minor,
    };
    let mut seen = HashSet::new();
    let (root_name, system) = reader.key(root_offset, 0, &mut seen, Some("SYSTEM"))?;
    Ok(Hive {
        system,
        root_name,
        version: (major, minor),
        warnings,
    })
}

struct Reader<'a> {
    /// The file up to the end of the hive bins.
    bins: &'a [u8],
    minor: u32,
}

impl<'a> Reader<'a> {
    /// The data of the allocated cell at hive-bins offset `cell` (without the
    /// size field); `what` names the structure expected there.
    fn cell(&self, cell: u32, what: &str) -> Result<(&'a [u8], usize), HiveError> {
        let at = BASE_BLOCK_SIZE + cell as usize;
        if !cell.is_multiple_of(8) || at + 4 > self.bins.len() {
            return Err(malformed(
                at,
                format!(
                    "{what}: a cell offset that is 8-aligned and inside the hive bins, found 0x{cell:x}"
                ),
            ));
        }
        let size = u32_at(self.bins, at) as i32;
        if size >= 0 {
            return Err(malformed(
                at,
                format!(
                    "{what}: an allocated cell (negative size), found a free cell of size {size}"
                ),
            ));
        }
        let len = size.unsigned_abs() as usize;
        if len < 8 || at + len > self.bins.len() {
            return Err(malformed(
                at,
                format!("{what}: a cell size inside the hive bins, found {len}"),
            ));
        }
        Ok((&self.bins[at + 4..at + len], at + 4))
    }

    /// Reads the `nk` key at `cell` with everything under it; returns its
    /// stored name and the tree (named `rename` if given).
    fn key(
        &self,
        cell: u32,
        depth: usize,
        seen: &mut HashSet<u32>,
        rename: Option<&str>,
    ) -> Result<(String, RegKey), HiveError> {
        let (nk, at) = self.cell(cell, "a key node (nk)")?;
        if nk.len() < 76 || &nk[..2] != b"nk" {
            return Err(malformed(
                at,
                "a key node (`nk` signature, 76 bytes or more)",
            ));
        }
        if depth > MAX_DEPTH {
            return Err(malformed(
                at,
                format!("keys nested at most {MAX_DEPTH} deep"),
            ));
        }
        if !seen.insert(cell) {
            return Err(malformed(
                at,
                "a key tree without cycles (this key is reached a second time)",
            ));
        }
        let flags = u16_at(nk, 2);
        let subkey_count = u32_at(nk, 20);
        let subkey_list = u32_at(nk, 28);
        let value_count = u32_at(nk, 36);
        let value_list = u32_at(nk, 40);
        let name_len = u16_at(nk, 72) as usize;
        if nk.len() < 76 + name_len {
            return Err(malformed(
                at + 72,
                format!("a key name of {name_len} bytes inside the key's cell"),
            ));
        }
        let name = decode_name(&nk[76..76 + name_len], flags & 0x20 != 0);
        let mut key = RegKey::new(rename.unwrap_or(&name));

        if value_count > 0 {
            let (list, list_at) = self.cell(value_list, "a value list")?;
            let count = value_count as usize;
            if list.len() < count.saturating_mul(4) {
                return Err(malformed(
                    list_at,
                    format!("a value list of {count} offsets (key at 0x{at:x})"),
                ));
            }
            for i in 0..count {
                let (vname, value) = self.value(u32_at(list, i * 4))?;
                key.set_value(vname, value);
            }
        }
        if subkey_count > 0 {
            let mut offsets = Vec::new();
            self.subkey_list(subkey_list, 0, &mut offsets)?;
            for off in offsets {
                let (_, sub) = self.key(off, depth + 1, seen, None)?;
                key.add_subkey(sub);
            }
        }
        Ok((name, key))
    }

    /// Collects the `nk` offsets of an `lf`/`lh`/`li`/`ri` list.
    fn subkey_list(&self, cell: u32, depth: usize, out: &mut Vec<u32>) -> Result<(), HiveError> {
        let (list, at) = self.cell(cell, "a subkey list (lf, lh, li or ri)")?;
        if list.len() < 4 {
            return Err(malformed(at, "a subkey list header (signature and count)"));
        }
        let count = u16_at(list, 2) as usize;
        let (stride, index) = match &list[..2] {
            b"lf" | b"lh" => (8, false),
            b"li" => (4, false),
            b"ri" if depth == 0 => (4, true),
            b"ri" => {
                return Err(malformed(
                    at,
                    "an lf/lh/li list inside an ri index (not another ri)",
                ));
            }
            _ => return Err(malformed(at, "a subkey list signature lf, lh, li or ri")),
        };
        if list.len() < 4 + count * stride {
            return Err(malformed(
                at,
                format!("a subkey list of {count} entries inside its cell"),
            ));
        }
        for i in 0..count {
            let off = u32_at(list, 4 + i * stride);
            if index {
                self.subkey_list(off, depth + 1, out)?;
            } else {
                out.push(off);
            }
        }
        Ok(())
    }

    /// Reads the `vk` value at `cell`.
    fn value(&self, cell: u32) -> Result<(String, RegValue), HiveError> {
        let (vk, at) = self.cell(cell, "a value (vk)")?;
        if vk.len() < 20 || &vk[..2] != b"vk" {
            return Err(malformed(at, "a value (`vk` signature, 20 bytes or more)"));
        }
        let name_len = u16_at(vk, 2) as usize;
        let raw_size = u32_at(vk, 4);
        let data_offset = u32_at(vk, 8);
        let kind = u32_at(vk, 12);
        let flags = u16_at(vk, 16);
        if vk.len() < 20 + name_len {
            return Err(malformed(
                at + 2,
                format!("a value name of {name_len} bytes inside the value's cell"),
            ));
        }
        let name = decode_name(&vk[20..20 + name_len], flags & 1 != 0);
        let data = if raw_size & 0x8000_0000 != 0 {
            // Resident: up to 4 bytes in the offset field itself.
            let len = (raw_size & 0x7FFF_FFFF) as usize;
            if len > 4 {
                return Err(malformed(
                    at + 4,
                    format!("resident value data of at most 4 bytes, found {len}"),
                ));
            }
            vk[8..8 + len].to_vec()
        } else {
            let len = raw_size as usize;
            if len == 0 {
                Vec::new()
            } else if len > BIG_DATA_SEGMENT && self.minor >= 4 {
                self.big_data(data_offset, len)?
            } else {
                let (data, data_at) = self.cell(data_offset, "value data")?;
                if data.len() < len {
                    return Err(malformed(
                        data_at,
                        format!(
                            "{len} bytes of value data for `{name}`, the cell holds {}",
                            data.len()
                        ),
                    ));
                }
                data[..len].to_vec()
            }
        };
        Ok((
            name,
            RegValue::from_raw(kind, &data, StringEncoding::Utf16Le),
        ))
    }

    /// Reads `len` bytes of big data from the `db` cell at `cell`.
    fn big_data(&self, cell: u32, len: usize) -> Result<Vec<u8>, HiveError> {
        let (db, at) = self.cell(cell, "big value data (db)")?;
        if db.len() < 8 || &db[..2] != b"db" {
            return Err(malformed(at, "big value data (`db` signature)"));
        }
        let count = u16_at(db, 2) as usize;
        let (list, list_at) = self.cell(u32_at(db, 4), "a big data segment list")?;
        if list.len() < count * 4 {
            return Err(malformed(
                list_at,
                format!("a segment list of {count} offsets"),
            ));
        }
        if len > count * BIG_DATA_SEGMENT {
            return Err(malformed(
                at,
                format!(
                    "{len} bytes of big data in {count} segments of at most {BIG_DATA_SEGMENT}"
                ),
            ));
        }
        let mut out = Vec::with_capacity(len);
        for i in 0..count {
            if out.len() >= len {
                break;
            }
            let (seg, seg_at) = self.cell(u32_at(list, i * 4), "a big data segment")?;
            let take = (len - out.len()).min(BIG_DATA_SEGMENT);
            if seg.len() < take {
                return Err(malformed(
                    seg_at,
                    format!("a big data segment of {take} bytes"),
                ));
            }
            out.extend_from_slice(&seg[..take]);
        }
        if out.len() < len {
            return Err(malformed(
                at,
                format!("{len} bytes of big data in {count} segments"),
            ));
        }
        Ok(out)
    }
}

/// Key and value names: Latin-1 when the "compressed name" flag is set,
/// else UTF-16LE.
fn decode_name(bytes: &[u8], compressed: bool) -> String {
    if compressed {
        bytes.iter().map(|&b| char::from(b)).collect()
    } else {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_special_cases() {
        let zero = [0u8; 512];
        assert_eq!(base_block_checksum(&zero), 1);
        let mut ones = [0u8; 512];
        ones[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(base_block_checksum(&ones), u32::MAX - 1);
        let mut x = [0u8; 512];
        x[..8].copy_from_slice(&[1, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(base_block_checksum(&x), 2);
    }

    #[test]
    fn short_and_foreign_input_is_an_error() {
        assert!(matches!(
            parse_hive(b"REGEDIT4"),
            Err(HiveError::NotAHive { .. })
        ));
        let e = parse_hive(b"regf\0\0\0\0").unwrap_err();
        assert!(e.to_string().contains("4096-byte base block"), "{e}");
    }
}
