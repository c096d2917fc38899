//! Host actions carried out on this guest (`docs/protocol.md` §14): the
//! file operations of `Remediate` and the tree walk of `ScanTree`. Both run
//! off the agent's loop (a blocking-pool thread, a walker thread), so an
//! open waiting for its verdict never waits for them.
//!
//! The agent's own opens here raise fanotify permission events like anyone
//! else's (only opens through an event's own descriptor do not): the reader
//! thread answers every event of the agent's own process at once
//! ([`crate::reader`]), so these threads never wait on the loop, and the
//! loop never waits on them. `O_PATH` opens raise no permission event at
//! all.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{Mode, fstatat};
use nix::unistd::{UnlinkatFlags, ftruncate, unlinkat};
use thinagent_guest::{OpenPolicy, PathRef};
use thinagent_protocol::{
    ActionResult, ActionStatus, FileIdentity, OsError, RemediateAction, ScanFlags,
};

use crate::core::{FileStat, FileType};
use crate::fanotify::{self, InlineRead};

fn failed(e: Errno) -> ActionResult {
    ActionResult::failed(OsError::Errno(e as u32))
}

/// Carries out `Remediate` (§14.2) on `path`, only if the file there has
/// exactly the identity `expect` (`st_dev`, `st_ino`, size, mtime as a
/// `FILETIME`, as the agent fills `FileEvent`s).
///
/// The file is opened `O_PATH | O_NOFOLLOW` relative to its parent
/// directory's descriptor and its identity checked on that descriptor.
/// *Delete*: the name is checked once more (`fstatat` on the parent,
/// `AT_SYMLINK_NOFOLLOW`: the same inode, size and mtime) immediately before
/// `unlinkat` on the same parent descriptor. Linux cannot unlink by
/// descriptor, so a window remains between that check and the `unlinkat`
/// (a few microseconds): a process that renames another file onto the name
/// exactly then would have that file removed instead. Processes that have
/// the file open keep reading it (the inode lives until its last close).
/// *Truncate*: opened for writing (`O_WRONLY | O_NOFOLLOW | O_NONBLOCK`),
/// the identity checked on that very descriptor, then `ftruncate`: no
/// window.
pub fn remediate(action: RemediateAction, path: &[u8], expect: &FileIdentity) -> ActionResult {
    let path = Path::new(OsStr::from_bytes(path));
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return failed(Errno::EINVAL);
    };
    if !path.is_absolute() {
        return failed(Errno::EINVAL);
    }
    let dir = match open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(Errno::ENOENT | Errno::ENOTDIR) => {
            return ActionResult::status(ActionStatus::NotFound);
        }
        Err(e) => return failed(e),
    };
    let fd = match openat(
        &dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(f) => f,
        Err(Errno::ENOENT) => return ActionResult::status(ActionStatus::NotFound),
        Err(e) => return failed(e),
    };
    let Some(st) = fanotify::stat_fd(&fd) else {
        return failed(Errno::EIO);
    };
    // A symbolic link, a directory or another file: not the one judged.
    if st.file_type != FileType::Regular || st.identity() != *expect {
        return ActionResult::status(ActionStatus::Changed);
    }
    match action {
        RemediateAction::Delete => {
            match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(now) if fanotify::file_stat(&now) == st => {}
                Ok(_) => return ActionResult::status(ActionStatus::Changed),
                Err(Errno::ENOENT) => return ActionResult::status(ActionStatus::NotFound),
                Err(e) => return failed(e),
            }
            match unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => ActionResult::status(ActionStatus::Done),
                Err(Errno::ENOENT) => ActionResult::status(ActionStatus::NotFound),
                Err(e) => failed(e),
            }
        }
        RemediateAction::Truncate => {
            let w = match openat(
                &dir,
                name,
                OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(w) => w,
                Err(Errno::ENOENT) => return ActionResult::status(ActionStatus::NotFound),
                Err(Errno::ELOOP) => return ActionResult::status(ActionStatus::Changed),
                Err(e) => return failed(e),
            };
            match fanotify::stat_fd(&w) {
                Some(now) if now == st => {}
                Some(_) => return ActionResult::status(ActionStatus::Changed),
                None => return failed(Errno::EIO),
            }
            match ftruncate(&w, 0) {
                Ok(()) => ActionResult::status(ActionStatus::Done),
                Err(e) => failed(e),
            }
        }
    }
}

/// The mode a restored file has: readable and writable by its owner
/// (root) only. The `Restore` carries no mode or owner, and the quarantine
/// does not know them: a restore must never widen who may read a file (a
/// false positive may be a private key or a mailbox, 0600 to its user), so
/// the admin gives it back its owner and mode.
pub const RESTORED_MODE: u32 = 0o600;

/// A file being restored (`Restore`, §14.7): a new file in the target's
/// directory that has no name yet (`O_TMPFILE`; where the file system
/// lacks it, a unique hidden name), mode 0600, that [`finish`](Self::finish)
/// links into place only if nothing is at the path. Dropped unfinished, it
/// is gone (the unnamed file with its descriptor; the named one is
/// unlinked).
///
/// The target's directory is opened without following any symbolic link
/// (`openat2` `RESOLVE_NO_SYMLINKS`; on kernels before 5.6 only the last
/// component is checked, `O_NOFOLLOW`), and every later step is relative
/// to that descriptor: a link swapped in meanwhile is never followed.
#[derive(Debug)]
pub struct RestoreFile {
    dir: OwnedFd,
    name: std::ffi::OsString,
    file: OwnedFd,
    /// The hidden name of the fallback temporary file, while it has one.
    temp: Option<std::ffi::OsString>,
    size: u64,
}

impl RestoreFile {
    /// Starts restoring `size` bytes to the absolute `path`; `id` makes
    /// the fallback name unique.
    pub fn create(path: &[u8], size: u64, id: u64) -> Result<Self, ActionResult> {
        use nix::fcntl::{OpenHow, ResolveFlag, openat2};
        let path = Path::new(OsStr::from_bytes(path));
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(failed(Errno::EINVAL));
        };
        if !path.is_absolute() {
            return Err(failed(Errno::EINVAL));
        }
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let how = OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        let dir = match openat2(nix::fcntl::AT_FDCWD, parent, how) {
            Err(Errno::ENOSYS) => open(parent, flags | OFlag::O_NOFOLLOW, Mode::empty()),
            other => other,
        }
        .map_err(|e| match e {
            Errno::ENOENT => ActionResult::status(ActionStatus::NotFound),
            e => failed(e),
        })?;
        // Something at the path already: never overwritten (checked again,
        // atomically, when the file is linked).
        match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => return Err(ActionResult::status(ActionStatus::Changed)),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(failed(e)),
        }
        let private = Mode::from_bits_truncate(0o600);
        let unnamed = openat(
            &dir,
            ".",
            OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            private,
        );
        let (file, temp) = match unnamed {
            Ok(f) => (f, None),
            // The file system has no O_TMPFILE: a hidden unique name.
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {
                let mut temp = std::ffi::OsString::from(".thinagent-restore-");
                temp.push(format!("{}-{id}", std::process::id()));
                let f = openat(
                    &dir,
                    temp.as_os_str(),
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    private,
                )
                .map_err(failed)?;
                (f, Some(temp))
            }
            Err(e) => return Err(failed(e)),
        };
        Ok(Self {
            dir,
            name: name.to_owned(),
            file,
            temp,
            size,
        })
    }

    /// Writes `data` at `offset` (all of it).
    pub fn write_at(&mut self, offset: u64, mut data: &[u8]) -> Result<(), ActionResult> {
        let mut at = offset;
        while !data.is_empty() {
            let off = i64::try_from(at).map_err(|_| failed(Errno::EFBIG))?;
            match nix::sys::uio::pwrite(&self.file, data, off) {
                Ok(0) => return Err(failed(Errno::EIO)),
                Ok(n) => {
                    data = &data[n..];
                    at += n as u64;
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Ok(())
    }

    /// Gives the file its mode, syncs it and links it at the path, only if
    /// nothing is there (`Changed`: nothing was written there), unless
    /// `deadline` passed (`Failed`, `ETIMEDOUT`). `Done` carries the size
    /// in `value`, and the new file's (`st_dev`, `st_ino`).
    pub fn finish(mut self, deadline: std::time::Instant) -> (ActionResult, Option<(u64, u64)>) {
        let done = (|| {
            let st = nix::sys::stat::fstat(&self.file).map_err(failed)?;
            if st.st_size as u64 != self.size {
                return Err(failed(Errno::EIO));
            }
            nix::sys::stat::fchmod(&self.file, Mode::from_bits_truncate(RESTORED_MODE))
                .map_err(failed)?;
            nix::unistd::fsync(&self.file).map_err(failed)?;
            if std::time::Instant::now() >= deadline {
                return Err(failed(Errno::ETIMEDOUT));
            }
            let linked = match &self.temp {
                None => nix::unistd::linkat(
                    &self.file,
                    "",
                    &self.dir,
                    self.name.as_os_str(),
                    AtFlags::AT_EMPTY_PATH,
                ),
                Some(temp) => nix::unistd::linkat(
                    &self.dir,
                    temp.as_os_str(),
                    &self.dir,
                    self.name.as_os_str(),
                    AtFlags::empty(),
                ),
            };
            match linked {
                Ok(()) => {}
                Err(Errno::EEXIST) => return Err(ActionResult::status(ActionStatus::Changed)),
                Err(e) => return Err(failed(e)),
            }
            // The name is there; the directory entry is made durable.
            if let Ok(d) = openat(
                &self.dir,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                let _ = nix::unistd::fsync(&d);
            }
            Ok((st.st_dev, st.st_ino))
        })();
        // Whatever happened, the temporary name goes (the file stays only
        // under its real name).
        self.remove_temp();
        match done {
            Ok(key) => (
                ActionResult {
                    value: self.size,
                    ..ActionResult::status(ActionStatus::Done)
                },
                Some(key),
            ),
            Err(r) => (r, None),
        }
    }

    fn remove_temp(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = unlinkat(&self.dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

impl Drop for RestoreFile {
    fn drop(&mut self) {
        self.remove_temp();
    }
}

/// What a scan skips without sending: the exclusions in effect when the
/// scan started (unless `INCLUDE_EXCLUDED`) and the size limits (the
/// scan's own, the policy's `max_scan_size`, `--max-file-size`).
#[derive(Clone)]
pub struct ScanFilter {
    /// The open policy's path and extension exclusions; `None` with
    /// `INCLUDE_EXCLUDED`.
    pub exclusions: Option<Box<OpenPolicy>>,
    /// Larger files are skipped.
    pub max_size: Option<u64>,
}

impl ScanFilter {
    /// Whether the file at `path`, of `size` bytes, is skipped.
    #[must_use]
    pub fn skips(&self, path: &[u8], size: u64) -> bool {
        if self.max_size.is_some_and(|m| size > m) {
            return true;
        }
        let Some(p) = &self.exclusions else {
            return false;
        };
        let text = String::from_utf8_lossy(path);
        let r = PathRef::Utf8(&text);
        p.path_excluded(r) || p.extension_excluded(r)
    }
}

/// Counters the walker keeps (the loop adds scanned, denied and bytes).
#[derive(Debug, Default)]
pub struct WalkCounters {
    /// The host cancelled the scan, or its session ended: stop.
    pub cancel: AtomicBool,
    /// Regular files found.
    pub seen: AtomicU64,
    /// Not sent: excluded or too large.
    pub skipped: AtomicU64,
    /// Files or directories that could not be opened, read or listed.
    pub errors: AtomicU64,
}

/// One file for the loop to send as an `OnDemand` event.
pub struct ScanItem {
    /// Its path.
    pub path: Vec<u8>,
    /// Open for reading: the host's reads are served from it.
    pub file: OwnedFd,
    /// Its identity, from that descriptor.
    pub stat: FileStat,
    /// Its first bytes, read for inline content (version 2).
    pub content: Option<InlineRead>,
}

/// How the walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkEnd {
    /// Every file was found and handed over (or skipped, or counted as an
    /// error).
    Done,
    /// Nothing at the root.
    NotFound,
    /// The root could not be examined.
    Failed(u32),
    /// Stopped by the cancel flag or because the loop went away.
    Stopped,
}

/// What the walker sends the loop.
pub enum ScanMsg {
    /// A file to send.
    File(ScanItem),
    /// The walk is over (the last message).
    End(WalkEnd),
}

/// What to walk.
pub struct WalkConfig {
    /// The root.
    pub root: PathBuf,
    /// `CROSS_MOUNTS`, `INCLUDE_EXCLUDED`.
    pub flags: ScanFlags,
    /// Directory levels below the root to enter; 0 = unlimited.
    pub max_depth: u16,
    /// Exclusions and size limits.
    pub filter: ScanFilter,
    /// Bytes to read with each file for inline content (the session's
    /// `max_inline_len`, kept current by the loop).
    pub inline_len: Arc<AtomicU32>,
}

/// Mount points strictly under `root`, from `/proc/self/mountinfo` (bind
/// mounts of the same file system have the same `st_dev`, so `st_dev`
/// alone does not see them).
fn mount_points_under(root: &Path) -> HashSet<PathBuf> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else {
        return HashSet::new();
    };
    let mut out = HashSet::new();
    for line in text.split(|b| *b == b'\n') {
        let Some(field) = line.split(|b| *b == b' ').nth(4) else {
            continue;
        };
        // Octal escapes: \040 (space), \011, \012, \134.
        let mut bytes = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            if field[i] == b'\\'
                && field
                    .get(i + 1..i + 4)
                    .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
            {
                let d = &field[i + 1..i + 4];
                bytes.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            } else {
                bytes.push(field[i]);
                i += 1;
            }
        }
        let p = PathBuf::from(OsStr::from_bytes(&bytes));
        if p != root && p.starts_with(root) {
            out.insert(p);
        }
    }
    out
}

fn errno_of(e: &std::io::Error) -> u32 {
    e.raw_os_error()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(Errno::EIO as u32)
}

/// Walks `cfg.root` and sends each regular file to `tx` (blocking while
/// the channel is full: the loop takes files only as fast as the scan's
/// in-flight limit allows). Never follows symbolic links; does not enter
/// another file system or mount point without `CROSS_MOUNTS`. Ends with
/// one [`ScanMsg::End`] unless the loop is gone.
pub fn walk(cfg: &WalkConfig, counters: &WalkCounters, tx: &tokio::sync::mpsc::Sender<ScanMsg>) {
    let end = walk_inner(cfg, counters, tx);
    let _ = tx.blocking_send(ScanMsg::End(end));
}

fn walk_inner(
    cfg: &WalkConfig,
    counters: &WalkCounters,
    tx: &tokio::sync::mpsc::Sender<ScanMsg>,
) -> WalkEnd {
    let root_meta = match std::fs::symlink_metadata(&cfg.root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return WalkEnd::NotFound,
        Err(e) => return WalkEnd::Failed(errno_of(&e)),
    };
    let cross = cfg.flags.contains(ScanFlags::CROSS_MOUNTS);
    if root_meta.file_type().is_file() {
        return match send_file(cfg, counters, tx, &cfg.root, root_meta.len()) {
            true => WalkEnd::Done,
            false => WalkEnd::Stopped,
        };
    }
    if !root_meta.file_type().is_dir() {
        // A symbolic link or a special file: nothing to judge.
        return WalkEnd::Done;
    }
    let root_dev = root_meta.dev();
    let mounts = if cross {
        HashSet::new()
    } else {
        mount_points_under(&cfg.root)
    };
    let mut stack = vec![(cfg.root.clone(), 0u32)];
    while let Some((dir, depth)) = stack.pop() {
        if counters.cancel.load(Ordering::Relaxed) {
            return WalkEnd::Stopped;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        for entry in entries {
            if counters.cancel.load(Ordering::Relaxed) {
                return WalkEnd::Stopped;
            }
            let Ok(entry) = entry else {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // Neither of these follows a symbolic link.
            let Ok(meta) = entry.metadata() else {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let ft = meta.file_type();
            let path = entry.path();
            if ft.is_dir() {
                let next = depth + 1;
                if cfg.max_depth != 0 && next > u32::from(cfg.max_depth) {
                    continue;
                }
                if !cross && (meta.dev() != root_dev || mounts.contains(&path)) {
                    continue;
                }
                stack.push((path, next));
            } else if ft.is_file() && !send_file(cfg, counters, tx, &path, meta.len()) {
                return WalkEnd::Stopped;
            }
            // Symbolic links, FIFOs, sockets, devices: not followed, not
            // judged.
        }
    }
    WalkEnd::Done
}

/// Counts, filters, opens and hands over one regular file; `false` when
/// the loop is gone (stop walking).
fn send_file(
    cfg: &WalkConfig,
    counters: &WalkCounters,
    tx: &tokio::sync::mpsc::Sender<ScanMsg>,
    path: &Path,
    size: u64,
) -> bool {
    counters.seen.fetch_add(1, Ordering::Relaxed);
    let bytes = path.as_os_str().as_bytes();
    if cfg.filter.skips(bytes, size) {
        counters.skipped.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    let file = match open(
        path,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(f) => f,
        Err(_) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    };
    let Some(stat) = fanotify::stat_fd(&file).filter(|s| s.file_type == FileType::Regular) else {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        return true;
    };
    if cfg.filter.skips(bytes, stat.size) {
        counters.skipped.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    let max = cfg.inline_len.load(Ordering::Relaxed);
    let content = if max > 0 {
        fanotify::read_inline_fd(&file, &stat, max, fanotify::Wait::Block).ok()
    } else {
        None
    };
    tx.blocking_send(ScanMsg::File(ScanItem {
        path: bytes.to_vec(),
        file,
        stat,
        content,
    }))
    .is_ok()
}
