//! The files to scan: arguments expanded (directories walked), and each
//! file's protocol identity from its metadata.

#[cfg(unix)]
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use thinagent_protocol::FileIdentity;

/// Seconds from 1601-01-01 to 1970-01-01, in 100 ns units (Windows' own
/// metadata is already a FILETIME: there only the tests use it).
#[cfg_attr(all(windows, not(test)), allow(dead_code))]
const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

/// Expands the arguments: files as given, directories walked (sorted,
/// regular files only, symlinks to files followed, symlinked directories not).
pub fn expand(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        // A missing or unreadable file is kept: opening it fails later and
        // it is reported as that file's ERROR, like clamdscan does.
        if std::fs::metadata(a).is_ok_and(|m| m.is_dir()) {
            walk(a, &mut out)?;
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read directory", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let Ok(lmeta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if lmeta.is_dir() {
            walk(&p, out)?;
        } else if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            out.push(p);
        }
    }
    Ok(())
}

/// The identity the Linux agent sends (docs/protocol.md §5.3): `st_dev`,
/// `st_ino` as little-endian in bytes 0..8, size, `st_mtime` as FILETIME.
/// `path` is not used on Unix.
#[cfg(unix)]
pub fn identity(_path: &Path, meta: &std::fs::Metadata) -> FileIdentity {
    let mut file_id = [0u8; 16];
    file_id[..8].copy_from_slice(&meta.ino().to_le_bytes());
    let unix_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    let filetime = (unix_ns / 100 + i128::from(FILETIME_UNIX_EPOCH)).clamp(0, i128::from(u64::MAX));
    FileIdentity {
        volume_serial: meta.dev(),
        file_id,
        size: meta.size(),
        last_write_time: filetime as u64,
    }
}

/// Windows: size and last-write FILETIME from the metadata. Stable Rust has
/// no volume serial or file index without FFI, so the volume serial is 0 and
/// the file id is a hash of `path` (the scanner caches verdicts per identity:
/// distinct paths must not share one); a changed size or write time still
/// changes the identity.
#[cfg(windows)]
pub fn identity(path: &Path, meta: &std::fs::Metadata) -> FileIdentity {
    use std::hash::{Hash, Hasher};
    use std::os::windows::fs::MetadataExt;
    let mut file_id = [0u8; 16];
    for (half, chunk) in file_id.chunks_exact_mut(8).enumerate() {
        let mut h = std::hash::DefaultHasher::new();
        (half, path).hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    FileIdentity {
        volume_serial: 0,
        file_id,
        size: meta.file_size(),
        last_write_time: meta.last_write_time(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_follows_content_changes() {
        let dir = std::env::temp_dir().join(format!("ta-diag-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let f = dir.join("sub/a.txt");
        std::fs::write(&f, b"one").unwrap();
        let a = identity(&f, &std::fs::metadata(&f).unwrap());
        assert_eq!(a.size, 3);
        assert!(a.last_write_time > FILETIME_UNIX_EPOCH);
        std::fs::write(&f, b"four").unwrap();
        let b = identity(&f, &std::fs::metadata(&f).unwrap());
        assert_eq!((a.volume_serial, a.file_id), (b.volume_serial, b.file_id));
        assert_ne!(a, b);
        std::fs::write(dir.join("b.txt"), b"x").unwrap();
        let all = expand(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(all, [dir.join("b.txt"), dir.join("sub/a.txt")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
