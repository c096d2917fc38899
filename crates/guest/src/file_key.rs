//! Identity of one *version* of a file's content, the verdict cache's key.

use core::fmt;

/// Identifies a file and the version of its content.
///
/// * `volume_serial` + `file_id` name the file: on Windows the volume serial
///   number and the 128-bit `FILE_ID_128` (`FileIdInformation`; NTFS 64-bit ids
///   are zero-extended); on Linux the `st_dev` and the inode number (low 8
///   bytes, little endian) or a file handle from `name_to_handle_at`.
/// * `size` and `last_write` (Windows `LastWriteTime` in 100 ns units; Linux
///   `st_mtime` in nanoseconds) describe the content version. Because they are
///   part of the key, **a file modified since it was scanned misses the cache**
///   even if nobody called [`crate::VerdictCache::invalidate`]. They are a
///   best-effort guard (a writer can restore the timestamp), which is why the
///   adapters also invalidate on write / close-after-write.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileKey {
    /// Volume serial number (Windows) or device number (Linux).
    pub volume_serial: u64,
    /// 128-bit file id (Windows `FILE_ID_128`) or inode number / handle bytes.
    pub file_id: [u8; 16],
    /// File size in bytes when the verdict was given.
    pub size: u64,
    /// Last-write time when the verdict was given (adapter-defined unit).
    pub last_write: u64,
}

impl FileKey {
    /// A key from its four parts.
    #[must_use]
    pub const fn new(volume_serial: u64, file_id: [u8; 16], size: u64, last_write: u64) -> Self {
        FileKey {
            volume_serial,
            file_id,
            size,
            last_write,
        }
    }

    /// A key whose file id is a 64-bit number (NTFS file reference, inode),
    /// stored little endian in the low 8 bytes.
    #[must_use]
    pub const fn with_u64_id(volume_serial: u64, id: u64, size: u64, last_write: u64) -> Self {
        let b = id.to_le_bytes();
        let file_id = [
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        Self::new(volume_serial, file_id, size, last_write)
    }

    /// `true` if both keys name the same file, whatever its content version.
    #[must_use]
    pub fn same_file(&self, other: &FileKey) -> bool {
        self.volume_serial == other.volume_serial && self.file_id == other.file_id
    }

    /// A 64-bit hash of the *file identity* only (volume + file id), so every
    /// version of a file lands in the same cache set.
    #[must_use]
    pub fn identity_hash(&self) -> u64 {
        identity_hash(self.volume_serial, &self.file_id)
    }
}

/// The identity hash of [`FileKey::identity_hash`] from its parts.
#[must_use]
pub fn identity_hash(volume_serial: u64, file_id: &[u8; 16]) -> u64 {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&file_id[..8]);
    hi.copy_from_slice(&file_id[8..]);
    let h = mix(volume_serial ^ 0x9E37_79B9_7F4A_7C15);
    let h = mix(h ^ u64::from_le_bytes(lo));
    mix(h ^ u64::from_le_bytes(hi))
}

/// SplitMix64 finaliser: a fast bijective mixer with good avalanche.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileKey({:016x}:", self.volume_serial)?;
        for b in self.file_id.iter().rev() {
            write!(f, "{b:02x}")?;
        }
        write!(f, " size={} mtime={})", self.size, self.last_write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_ignores_version() {
        let a = FileKey::with_u64_id(1, 42, 10, 100);
        let b = FileKey::with_u64_id(1, 42, 11, 200);
        assert!(a.same_file(&b));
        assert_ne!(a, b);
        assert_eq!(a.identity_hash(), b.identity_hash());
        assert_ne!(
            a.identity_hash(),
            FileKey::with_u64_id(2, 42, 10, 100).identity_hash()
        );
        assert_eq!(a.file_id[0], 42);
        extern crate std;
        assert_eq!(
            std::format!("{a:?}"),
            "FileKey(0000000000000001:0000000000000000000000000000002a size=10 mtime=100)"
        );
    }
}
