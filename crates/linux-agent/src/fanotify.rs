//! The fanotify OS edge: the group, its marks, reading events, answering them.
//!
//! Built on `nix`'s fanotify API. Its one `unsafe` registers the group's
//! descriptor with tokio's reactor ([`register_with_reactor`]); an inherited
//! group's descriptor is checked and owned in [`crate::handover`].
//! The group is created in the content class (`FAN_CLASS_CONTENT`) with
//! permission events `FAN_OPEN_PERM` and `FAN_OPEN_EXEC_PERM`, plus the
//! notification `FAN_CLOSE_WRITE` (verdict cache invalidation). Each event's
//! descriptor is the kernel's own open of the file: content for the scanner is
//! read from it with `pread`, never by reopening the path (opens by fanotify
//! listeners through their event descriptors raise no events).
//!
//! The kernel-side verdict cache: after the scanner allows a regular file,
//! [`FanGroup::add_ignore_mark`] puts an *ignore mark* for
//! [`ignore_mask`] (open and exec permission events) on its inode, through
//! the event's own descriptor. The group's mount or file-system mark then
//! raises no event for that inode at all: a warm open costs nothing. Without
//! `FAN_MARK_IGNORED_SURV_MODIFY`, the kernel clears the ignore mask itself
//! on the next modification (`write`, `truncate`, an `O_TRUNC` open), so a
//! rewritten file is checked again at its next open. A shared writable
//! mapping modifies without such an event: the `FAN_CLOSE_WRITE` of its
//! writer removes the mark ([`FanGroup::remove_ignore_mark`]). The marks are
//! evictable where the kernel allows it (`FAN_MARK_EVICTABLE`, Linux 5.19):
//! they do not pin inodes in memory; an evicted inode simply raises events
//! again. Measured on Linux 6.18 (see `tests/onaccess.rs`).
//!
//! A denied open fails with `EPERM`: the kernel's `FAN_DENY`. (Custom errors
//! such as `EACCES` via `FAN_DENY_ERRNO` are accepted only for pre-content
//! groups and only from a short list that does not include `EACCES`.)

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags,
    Response,
};
use nix::sys::stat::{SFlag, fstat};

use crate::core::{FileStat, FileType};

/// Events the agent subscribes to.
pub fn watch_mask() -> MaskFlags {
    MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM | MaskFlags::FAN_CLOSE_WRITE
}

/// Events an ignore mark suppresses: the permission events.
pub fn ignore_mask() -> MaskFlags {
    MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM
}

/// The ways to add an ignore mark, newest first; the group settles on the
/// first one the kernel accepts.
const IGNORE_FLAVOURS: [(&str, MarkFlags, MarkFlags); 3] = [
    (
        "FAN_MARK_IGNORE | FAN_MARK_EVICTABLE",
        MarkFlags::FAN_MARK_IGNORE.union(MarkFlags::FAN_MARK_EVICTABLE),
        MarkFlags::FAN_MARK_IGNORE,
    ),
    (
        "FAN_MARK_IGNORED_MASK | FAN_MARK_EVICTABLE",
        MarkFlags::FAN_MARK_IGNORED_MASK.union(MarkFlags::FAN_MARK_EVICTABLE),
        MarkFlags::FAN_MARK_IGNORED_MASK,
    ),
    (
        "FAN_MARK_IGNORED_MASK",
        MarkFlags::FAN_MARK_IGNORED_MASK,
        MarkFlags::FAN_MARK_IGNORED_MASK,
    ),
];

/// What to mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkScope {
    /// The mount containing the path (`FAN_MARK_MOUNT`).
    Mount,
    /// The whole file system containing the path (`FAN_MARK_FILESYSTEM`).
    Filesystem,
}

impl MarkScope {
    fn flag(self) -> MarkFlags {
        match self {
            MarkScope::Mount => MarkFlags::FAN_MARK_MOUNT,
            MarkScope::Filesystem => MarkFlags::FAN_MARK_FILESYSTEM,
        }
    }
}

/// Why the group or a mark could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    /// `fanotify_init` or `fanotify_mark` said `EPERM`.
    #[error(
        "fanotify needs root (CAP_SYS_ADMIN): run thinagent-linux-agent as root \
         (the systemd unit does)"
    )]
    NotPermitted,
    /// The kernel has no fanotify, or no permission events.
    #[error(
        "fanotify permission events are unavailable on this kernel ({0}): it needs \
         CONFIG_FANOTIFY and CONFIG_FANOTIFY_ACCESS_PERMISSIONS"
    )]
    Unsupported(Errno),
    /// A `--watch` path cannot be marked.
    #[error("cannot watch {path}: {errno}; give an existing path on the file system to protect")]
    Mark {
        /// The path.
        path: PathBuf,
        /// What the kernel said.
        errno: Errno,
    },
    /// Any other failure of `fanotify_init`.
    #[error("fanotify_init failed: {0}")]
    Init(Errno),
}

impl FanotifyError {
    /// `true` for errors of the command line or the privileges (exit 2).
    #[must_use]
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            FanotifyError::NotPermitted | FanotifyError::Mark { .. }
        )
    }
}

/// A fanotify group in the content class, non-blocking.
#[derive(Debug)]
pub struct FanGroup {
    fan: Fanotify,
    marks: std::sync::Mutex<Vec<(PathBuf, MarkScope)>>,
    /// Index into [`IGNORE_FLAVOURS`] of the way ignore marks are added;
    /// past the end: the kernel accepts none.
    ignore_flavour: std::sync::atomic::AtomicUsize,
}

impl FanGroup {
    /// Creates the group (`FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK |
    /// FAN_UNLIMITED_MARKS`, event descriptors `O_RDONLY | O_LARGEFILE |
    /// O_CLOEXEC`). Unlimited marks: the agent bounds its ignore marks itself
    /// (`--kernel-cache-entries`) instead of sharing root's
    /// `/proc/sys/fs/fanotify/max_user_marks` with other groups.
    pub fn new() -> Result<Self, FanotifyError> {
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::FAN_UNLIMITED_MARKS,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| match e {
            Errno::EPERM => FanotifyError::NotPermitted,
            Errno::ENOSYS | Errno::EINVAL => FanotifyError::Unsupported(e),
            e => FanotifyError::Init(e),
        })?;
        Ok(Self::from_fanotify(fan))
    }

    /// A group created by a previous agent and handed over (see
    /// [`crate::handover`]): its marks are in place already; those of this
    /// agent's `--watch` paths are added again with
    /// [`add_mark`](Self::add_mark), which for an existing mark is a no-op.
    #[must_use]
    pub fn from_fanotify(fan: Fanotify) -> Self {
        FanGroup {
            fan,
            marks: std::sync::Mutex::new(Vec::new()),
            ignore_flavour: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Puts an ignore mark for [`ignore_mask`] on the inode of `event`'s
    /// descriptor (never its path). The first call probes which flags the
    /// kernel accepts (see [`ignore_mark_kind`](Self::ignore_mark_kind)).
    pub fn add_ignore_mark(&self, event: &FanotifyEvent) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        let fd = event
            .fd()
            .ok_or_else(|| io::Error::from_raw_os_error(libc_ebadf()))?;
        loop {
            let i = self.ignore_flavour.load(Ordering::Relaxed);
            let Some((_, add, _)) = IGNORE_FLAVOURS.get(i) else {
                return Err(io::Error::from_raw_os_error(Errno::EINVAL as i32));
            };
            match self.fan.mark(
                MarkFlags::FAN_MARK_ADD | *add,
                ignore_mask(),
                fd,
                None::<&Path>,
            ) {
                // An older kernel: try the next way (once for the group).
                Err(Errno::EINVAL) => {
                    let _ = self.ignore_flavour.compare_exchange(
                        i,
                        i + 1,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                r => return r.map_err(io::Error::from),
            }
        }
    }

    /// The flags ignore marks are added with, once the first one was
    /// (`None` before, or when the kernel took none).
    #[must_use]
    pub fn ignore_mark_kind(&self) -> Option<&'static str> {
        let i = self
            .ignore_flavour
            .load(std::sync::atomic::Ordering::Relaxed);
        IGNORE_FLAVOURS.get(i).map(|f| f.0)
    }

    /// Removes the ignore mask from the inode of `event`'s descriptor (the
    /// mark goes with it). `Ok(false)`: the inode had no ignore mark.
    pub fn remove_ignore_mark(&self, event: &FanotifyEvent) -> io::Result<bool> {
        let fd = event
            .fd()
            .ok_or_else(|| io::Error::from_raw_os_error(libc_ebadf()))?;
        let i = self
            .ignore_flavour
            .load(std::sync::atomic::Ordering::Relaxed);
        let Some((_, _, remove)) = IGNORE_FLAVOURS.get(i) else {
            return Ok(false);
        };
        match self.fan.mark(
            MarkFlags::FAN_MARK_REMOVE | *remove,
            ignore_mask(),
            fd,
            None::<&Path>,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every inode mark of the group (`FAN_MARK_FLUSH` without a
    /// mount or file-system flag): all ignore marks at once. The mount and
    /// file-system marks of [`add_mark`](Self::add_mark) stay.
    pub fn flush_ignore_marks(&self) -> io::Result<()> {
        self.fan
            .mark(
                MarkFlags::FAN_MARK_FLUSH,
                MaskFlags::empty(),
                nix::fcntl::AT_FDCWD,
                None::<&Path>,
            )
            .map_err(io::Error::from)
    }

    /// Marks the mount (or file system) containing `path` for
    /// [`watch_mask`].
    pub fn add_mark(&self, path: &Path, scope: MarkScope) -> Result<(), FanotifyError> {
        self.fan
            .mark(
                MarkFlags::FAN_MARK_ADD | scope.flag(),
                watch_mask(),
                nix::fcntl::AT_FDCWD,
                Some(path),
            )
            .map_err(|errno| match errno {
                Errno::EPERM => FanotifyError::NotPermitted,
                // Permission events need CONFIG_FANOTIFY_ACCESS_PERMISSIONS.
                Errno::EINVAL if path.exists() => FanotifyError::Unsupported(errno),
                errno => FanotifyError::Mark {
                    path: path.to_path_buf(),
                    errno,
                },
            })?;
        let mut marks = self
            .marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !marks.iter().any(|(p, s)| p == path && *s == scope) {
            marks.push((path.to_path_buf(), scope));
        }
        Ok(())
    }

    /// Removes every mark added by [`add_mark`](Self::add_mark); returns how
    /// many the kernel removed (a path unmounted meanwhile has lost its mark
    /// already).
    pub fn remove_marks(&self) -> usize {
        let marks = std::mem::take(
            &mut *self
                .marks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut removed = 0;
        for (path, scope) in marks {
            let r = self.fan.mark(
                MarkFlags::FAN_MARK_REMOVE | scope.flag(),
                watch_mask(),
                nix::fcntl::AT_FDCWD,
                Some(&path),
            );
            if r.is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Reads the queued events (`EAGAIN` as `WouldBlock` when none).
    pub fn read_events(&self) -> io::Result<Vec<FanotifyEvent>> {
        self.fan.read_events().map_err(io::Error::from)
    }

    /// Answers a permission event. `ENOENT` means it was answered already
    /// (or the group is gone); the caller treats every error as final.
    pub fn respond(&self, event: &FanotifyEvent, allow: bool) -> io::Result<()> {
        let Some(fd) = event.fd() else {
            return Ok(());
        };
        let response = if allow {
            Response::FAN_ALLOW
        } else {
            Response::FAN_DENY
        };
        self.fan
            .write_response(FanotifyResponse::new(fd, response))
            .map_err(io::Error::from)
    }
}

/// Most descriptor numbers [`FanGroup::answer_orphans`] tries.
const ORPHAN_SWEEP_MAX: i32 = 1 << 20;

impl FanGroup {
    /// Answers the permission events a previous reader of this group took
    /// and never answered (it was killed): `allow` for each. Returns how
    /// many there were.
    ///
    /// The kernel keeps such events until they are answered or the group
    /// closes, and it matches a response to an event by the descriptor
    /// number the *reader* got for it, whoever writes the response. Left
    /// alone, an orphan holds its opener forever, and worse, this agent's
    /// answer for a new event that happens to get the same number would go
    /// to the orphan instead. So before reading anything, a response is
    /// written for every number the previous reader could have had (below
    /// `RLIMIT_NOFILE`, at least 65536, at most 2^20): the kernel answers
    /// the orphans and says `ENOENT` for the rest.
    pub fn answer_orphans(&self, allow: bool) -> usize {
        use nix::sys::resource::{Resource, getrlimit};
        let limit = getrlimit(Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(0)
            .max(65_536);
        let max = i32::try_from(limit)
            .unwrap_or(ORPHAN_SWEEP_MAX)
            .min(ORPHAN_SWEEP_MAX);
        // struct fanotify_response { __s32 fd; __u32 response; }
        let response: u32 = if allow { 1 } else { 2 }; // FAN_ALLOW / FAN_DENY
        let mut answered = 0;
        let mut buf = [0u8; 8];
        buf[4..].copy_from_slice(&response.to_ne_bytes());
        for fd in 0..max {
            buf[..4].copy_from_slice(&fd.to_ne_bytes());
            if nix::unistd::write(self.fan.as_fd(), &buf).is_ok() {
                answered += 1;
            }
        }
        answered
    }
}

/// The group's descriptor in the calling tokio runtime's reactor, readable
/// when events wait: the agent's loop reads the group itself (no thread in
/// between, [`crate::intake`]).
///
/// # Errors
/// Setting `O_NONBLOCK` or registering failed.
pub fn register_with_reactor(
    group: Arc<FanGroup>,
) -> io::Result<tokio::io::unix::AsyncFd<Arc<FanGroup>>> {
    // A new group is non-blocking already (`FAN_NONBLOCK`); one handed over
    // by another program need not be, and a blocking read would stall the
    // loop.
    let flags = nix::fcntl::fcntl(group.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(group.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    #[allow(
        unsafe_code,
        reason = "tokio registers a raw descriptor only through an unsafe constructor"
    )]
    // SAFETY: the descriptor is the group's `Fanotify`, an `OwnedFd` that a
    // `FanGroup` never replaces or closes before it is dropped; the
    // `AsyncFd` holds an `Arc` of the group, so the group (and with it the
    // descriptor) lives at least as long as the registration, and
    // `as_raw_fd` always returns that same descriptor.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(group, tokio::io::Interest::READABLE)
    };
    registered.map_err(io::Error::from)
}

impl AsRawFd for FanGroup {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fan.as_raw_fd()
    }
}

impl AsFd for FanGroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fan.as_fd()
    }
}

/// What one event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventClass {
    /// `FAN_OPEN_EXEC_PERM`.
    ExecPerm,
    /// `FAN_OPEN_PERM`.
    OpenPerm,
    /// `FAN_CLOSE_WRITE` (no answer expected).
    CloseWrite,
    /// Queue overflow: events were lost (no descriptor).
    Overflow,
    /// Anything else (ignored).
    Other,
}

/// Classifies `event` by its mask.
#[must_use]
pub fn classify(event: &FanotifyEvent) -> EventClass {
    let mask = event.mask();
    if event.fd().is_none() || mask.contains(MaskFlags::FAN_Q_OVERFLOW) {
        EventClass::Overflow
    } else if mask.contains(MaskFlags::FAN_OPEN_EXEC_PERM) {
        EventClass::ExecPerm
    } else if mask.contains(MaskFlags::FAN_OPEN_PERM) {
        EventClass::OpenPerm
    } else if mask.contains(MaskFlags::FAN_CLOSE_WRITE) {
        EventClass::CloseWrite
    } else {
        EventClass::Other
    }
}

/// `fstat` of the event's descriptor.
#[must_use]
pub fn stat_of(event: &FanotifyEvent) -> Option<FileStat> {
    stat_fd(event.fd()?)
}

/// `fstat` of any descriptor, as [`FileStat`] (the identity a `FileEvent`
/// states: `st_dev`, `st_ino`, size, mtime).
#[must_use]
pub fn stat_fd<Fd: AsFd>(fd: Fd) -> Option<FileStat> {
    Some(file_stat(&fstat(fd).ok()?))
}

/// A `stat` result as [`FileStat`].
#[must_use]
pub fn file_stat(st: &nix::sys::stat::FileStat) -> FileStat {
    let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let file_type = if fmt == SFlag::S_IFREG {
        FileType::Regular
    } else if fmt == SFlag::S_IFDIR {
        FileType::Directory
    } else {
        FileType::Other
    };
    let mtime_ns = u64::try_from(st.st_mtime)
        .ok()
        .map_or(0, |s| s.saturating_mul(1_000_000_000))
        .saturating_add(u64::try_from(st.st_mtime_nsec).unwrap_or(0));
    FileStat {
        dev: st.st_dev,
        ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime_ns,
        file_type,
    }
}

/// The path of the event's file, from `/proc/self/fd/N` (raw bytes; a
/// deleted file ends in ` (deleted)`).
#[must_use]
pub fn path_of(event: &FanotifyEvent) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    let Some(fd) = event.fd() else {
        return Vec::new();
    };
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.into_os_string().into_vec())
        .unwrap_or_default()
}

/// Reads up to `length` bytes at `offset` from the event's descriptor;
/// returns the bytes and whether they end the file (the answer is then
/// `EndOfFile` carrying them, §5.6).
///
/// A full read ends the file when it ends at the file's size as `fstat`
/// gives it just after the read: the host usually asks for exactly the size
/// the `FileEvent` stated, and without this it would need a second
/// `ReadRequest` only to learn that nothing follows.
///
/// With [`Wait::CachedOnly`] it fails with `WouldBlock` as soon as a byte
/// is not in the page cache (the caller reads again where waiting is
/// allowed).
pub fn pread_event(
    event: &FanotifyEvent,
    offset: u64,
    length: u32,
    wait: Wait,
) -> io::Result<(Vec<u8>, bool)> {
    let fd = event
        .fd()
        .ok_or_else(|| io::Error::from_raw_os_error(libc_ebadf()))?;
    pread_fd(fd, offset, length, wait)
}

/// [`pread_event`] on any descriptor (a host scan's file).
pub fn pread_fd<Fd: AsFd>(
    fd: Fd,
    offset: u64,
    length: u32,
    wait: Wait,
) -> io::Result<(Vec<u8>, bool)> {
    let fd = fd.as_fd();
    // No file has bytes past i64::MAX (and to `preadv2` an offset of
    // u64::MAX means "the current offset").
    if i64::try_from(offset.saturating_add(u64::from(length))).is_err() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut buf = vec![0u8; length as usize];
    let mut got = 0usize;
    while got < buf.len() {
        match pread_at(fd, &mut buf[got..], offset + got as u64, wait) {
            Ok(0) => {
                buf.truncate(got);
                return Ok((buf, true));
            }
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) if wait == Wait::CachedOnly && would_wait(e) => {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The real size now, not the stated one: a file that grew is read on.
    // Without a size (fstat failed) the answer is Data and the host probes.
    let size_now = fstat(fd).ok().and_then(|st| u64::try_from(st.st_size).ok());
    let end = thinagent_guest::read_reaches_end(offset, got, false, size_now);
    Ok((buf, end))
}

/// Inline content read with the event (`docs/protocol.md` §5.3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineRead {
    /// The file's first bytes (at most the length asked for).
    pub bytes: Vec<u8>,
    /// `bytes` is the whole file, of the size and version `stat` said.
    pub whole_file: bool,
}

/// Reads up to `max` first bytes of the event's file to send inline with
/// its `FileEvent`, with `pread` on the event's descriptor, and says whether
/// they are the whole file: only if the read ended exactly at the size
/// `stat` (the `fstat` taken with the event, whose identity the `FileEvent`
/// states) gives, and the file is still that version afterwards (same size
/// and mtime: a file rewritten or grown meanwhile is never sent as whole;
/// §5.3.1's MUST NOT, the [`thinagent_guest::read_reaches_end`] rule with
/// the size after the read). A file that reports size 0 but has bytes (a
/// pseudo file) is not whole either: one byte past the stated size is read
/// to see the end.
///
/// With [`Wait::CachedOnly`] the read stops at the first byte the page
/// cache does not hold: what came before it is sent (never as the whole
/// file), and nothing at all fails with `WouldBlock`.
pub fn read_inline(
    event: &FanotifyEvent,
    stat: &FileStat,
    max: u32,
    wait: Wait,
) -> io::Result<InlineRead> {
    let fd = event
        .fd()
        .ok_or_else(|| io::Error::from_raw_os_error(libc_ebadf()))?;
    read_inline_fd(fd, stat, max, wait)
}

/// [`read_inline`] on any descriptor (a host scan's file).
pub fn read_inline_fd<Fd: AsFd>(
    fd: Fd,
    stat: &FileStat,
    max: u32,
    wait: Wait,
) -> io::Result<InlineRead> {
    let fd = fd.as_fd();
    let want = usize::try_from(stat.size.min(u64::from(max))).unwrap_or(0);
    // When the whole file fits, one byte more: a read that stops at the
    // stated size (returns 0 there) is what proves the end.
    let expect_end = stat.size <= u64::from(max);
    let target = want + usize::from(expect_end);
    let mut buf = vec![0u8; target];
    let mut got = 0usize;
    let mut hit_end = false;
    while got < target {
        match pread_at(fd, &mut buf[got..], got as u64, wait) {
            Ok(0) => {
                hit_end = true;
                break;
            }
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) if wait == Wait::CachedOnly && would_wait(e) => {
                if got == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                // The first bytes, not the whole file.
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let whole_file = expect_end
        && hit_end
        && u64::try_from(got).ok() == Some(stat.size)
        && stat_fd(fd).is_some_and(|now| {
            now == *stat && thinagent_guest::read_reaches_end(0, got, hit_end, Some(now.size))
        });
    buf.truncate(got.min(want));
    Ok(InlineRead {
        bytes: buf,
        whole_file,
    })
}

/// How a read may wait for the storage under the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// As long as it takes (a blocking-pool or walker thread).
    Block,
    /// Not at all: only bytes the page cache holds (`preadv2` with
    /// `RWF_NOWAIT`); the loop's reads of block-device file systems.
    CachedOnly,
}

/// Which reads of a file the agent's loop may do itself, on the thread every
/// open waits on ([`loop_reads`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopReads {
    /// A memory file system (tmpfs, ramfs): reads never wait for storage.
    /// (`RWF_NOWAIT` is refused there, `EOPNOTSUPP`, so it cannot be asked.)
    All,
    /// A local file system on a block device: only what the page cache
    /// holds ([`Wait::CachedOnly`]). A read that would wait for the disk,
    /// which on a VM may be remote storage that stalls for seconds, goes to
    /// a blocking-pool thread, and the loop goes on answering.
    Cached,
    /// Network, FUSE and cluster file systems (a read may hang on a server
    /// or a daemon that itself waits for an open this agent must answer),
    /// or no answer from `fstatfs`: never on the loop.
    None,
}

impl LoopReads {
    /// How the loop reads such a file; `None`: not on the loop.
    #[must_use]
    pub fn wait(self) -> Option<Wait> {
        match self {
            LoopReads::All => Some(Wait::Block),
            LoopReads::Cached => Some(Wait::CachedOnly),
            LoopReads::None => None,
        }
    }
}

/// Which reads of the event's file the loop may do itself.
#[must_use]
pub fn loop_reads(event: &FanotifyEvent) -> LoopReads {
    // f_type values (linux/magic.h and the file systems' own headers).
    const MEMORY: &[u32] = &[
        0x0102_1994, // TMPFS_MAGIC
        0x8584_58F6, // RAMFS_MAGIC
    ];
    const SLOW: &[u32] = &[
        0x6573_5546, // FUSE_SUPER_MAGIC (also virtiofs, sshfs, ...)
        0x0000_6969, // NFS_SUPER_MAGIC
        0x0000_517B, // SMB_SUPER_MAGIC
        0xFF53_4D42, // CIFS_SUPER_MAGIC
        0xFE53_4D42, // SMB2_SUPER_MAGIC
        0x5346_414F, // AFS_SUPER_MAGIC
        0x6B41_4653, // AFS_FS_MAGIC (kafs)
        0x0000_564C, // NCP_SUPER_MAGIC
        0x0102_1997, // V9FS_MAGIC (9p)
        0x00C3_6400, // CEPH_SUPER_MAGIC
        0x0116_1970, // GFS2_MAGIC
        0x7461_636F, // OCFS2_SUPER_MAGIC
        0x7375_7245, // CODA_SUPER_MAGIC
        0x0BD0_0BD0, // LUSTRE_SUPER_MAGIC
    ];
    let Some(fd) = event.fd() else {
        return LoopReads::None;
    };
    match nix::sys::statfs::fstatfs(fd) {
        // The kernel's f_type is a 32-bit magic in a (signed) long.
        Ok(st) => {
            let magic = st.filesystem_type().0 as u64 as u32;
            if MEMORY.contains(&magic) {
                LoopReads::All
            } else if SLOW.contains(&magic) {
                LoopReads::None
            } else {
                LoopReads::Cached
            }
        }
        Err(_) => LoopReads::None,
    }
}

/// One `pread` of `buf.len()` bytes at `offset`; with [`Wait::CachedOnly`]
/// a `preadv2(RWF_NOWAIT)`, which fails with `EAGAIN` rather than wait
/// for the disk (nix has no `preadv2`; rustix's is safe).
fn pread_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64, wait: Wait) -> Result<usize, Errno> {
    match wait {
        Wait::Block => {
            let at = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            nix::sys::uio::pread(fd, buf, at)
        }
        Wait::CachedOnly => rustix::io::preadv2(
            fd,
            &mut [std::io::IoSliceMut::new(buf)],
            offset,
            rustix::io::ReadWriteFlags::NOWAIT,
        )
        .map_err(|e| Errno::from_raw(e.raw_os_error())),
    }
}

/// A `RWF_NOWAIT` read that would have had to wait (`EAGAIN`), or a file
/// system that cannot tell (`EOPNOTSUPP`): read it where waiting is allowed.
fn would_wait(e: Errno) -> bool {
    matches!(e, Errno::EAGAIN | Errno::EOPNOTSUPP)
}

fn libc_ebadf() -> i32 {
    Errno::EBADF as i32
}

/// Whether fanotify permission events work here (root, kernel support) for
/// the mount holding `path`: `Ok(())`, or the reason they do not. Tests use
/// it to skip. The mark lives only for the duration of the call.
pub fn probe(path: &Path) -> Result<(), FanotifyError> {
    let g = FanGroup::new()?;
    g.add_mark(path, MarkScope::Mount)?;
    g.remove_marks();
    Ok(())
}
