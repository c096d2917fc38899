//! What the scanner remembers across restarts (`state_dir`): the guest
//! policy an admin set at run time (`guest-policy.json`) and the guests it
//! has seen (`guests.json`). Small JSON files, each replaced whole and
//! atomically (written beside, fsynced, renamed, the directory fsynced), so
//! a crash leaves the old file or the new one, never a mix.
//!
//! A file that cannot be read as what it should be (a disk error, an edit
//! by hand) does not stop the start: it is renamed `NAME.bad` and the
//! scanner starts without it, with a warning naming both files.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why the state directory or one of its files could not be used.
#[derive(Debug, thiserror::Error)]
#[error("state_dir: cannot {op} {}: {source}; state_dir must be a writable directory on a local file system", .path.display())]
pub struct StateError {
    /// What was being done (`create`, `write`, `rename`, `read`, `sync`).
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    move |source| StateError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The state directory.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    counter: AtomicU64,
}

impl StateDir {
    /// Opens `dir`, creating it (mode 0700: it names guests, paths and
    /// threats) if missing, and checks that it can be written.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let mut b = DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir).map_err(err("create", dir))?;
        let state = Self {
            dir: dir.to_owned(),
            counter: AtomicU64::new(0),
        };
        // A directory we cannot write would fail at the first save, long
        // after the start said all was well.
        let probe = state.temp_path(".probe");
        File::create(&probe).map_err(err("write", &probe))?;
        let _ = fs::remove_file(&probe);
        Ok(state)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn temp_path(&self, name: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".{name}.{}.{n}.tmp", std::process::id()))
    }

    /// Reads `name`: `None` when it does not exist (or was unreadable and
    /// has been moved aside as `NAME.bad`, with a warning).
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let path = self.dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "state file unreadable; starting without it");
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                let bad = self.dir.join(format!("{name}.bad"));
                let moved = fs::rename(&path, &bad);
                tracing::warn!(
                    path = %path.display(),
                    moved_to = %bad.display(),
                    moved = moved.is_ok(),
                    error = %e,
                    "state file is not valid; it was moved aside and the scanner starts without it"
                );
                None
            }
        }
    }

    /// Replaces `name` with `value` as JSON, atomically.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let data = serde_json::to_vec_pretty(value).map_err(|e| StateError {
            op: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        replace_file(&self.temp_path(name), &path, &data)
    }
}

/// Replaces `path` with `data` so that a crash leaves the old file or the
/// new one: writes `tmp` (created new, mode 0600), fsyncs it, renames it to
/// `path`, fsyncs `path`'s directory. `tmp` must be on `path`'s file
/// system; it is removed on failure. The error names the step and its path.
pub fn replace_file(tmp: &Path, path: &Path, data: &[u8]) -> Result<(), StateError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(err("write", tmp)(e));
    }
    if let Err(e) = fs::rename(tmp, path) {
        let _ = fs::remove_file(tmp);
        return Err(err("rename", path)(e));
    }
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("sync", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_replace_whole_files_and_a_bad_file_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let state = StateDir::open(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        assert_eq!(state.load::<Vec<u32>>("x.json"), None);
        state.save("x.json", &vec![1u32, 2]).unwrap();
        state.save("x.json", &vec![3u32]).unwrap();
        assert_eq!(state.load::<Vec<u32>>("x.json"), Some(vec![3]));
        // Nothing but the file is left behind.
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["x.json"]);
        fs::write(dir.join("x.json"), b"{not json").unwrap();
        assert_eq!(state.load::<Vec<u32>>("x.json"), None);
        assert_eq!(fs::read(dir.join("x.json.bad")).unwrap(), b"{not json");
        assert!(!dir.join("x.json").exists());
    }

    #[test]
    fn a_state_dir_that_is_a_file_is_an_error_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("state");
        fs::write(&file, b"").unwrap();
        let e = StateDir::open(&file).unwrap_err();
        assert!(e.to_string().contains("state_dir"), "{e}");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    }
}
