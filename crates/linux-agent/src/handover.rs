//! Keeping the fanotify group across a restart, so its marks never lapse.
//!
//! The kernel keeps a fanotify group, and its mount marks, for as long as any
//! descriptor of it is open. While no process reads it, its permission
//! events wait in the kernel and the openers block: fail-closed. So a
//! restart that hands the descriptor over never opens the file system. Two
//! ways:
//!
//! * **systemd's file-descriptor store** (`FileDescriptorStoreMax=` in the
//!   unit): once the marks are in place the agent sends `FDSTORE=1`,
//!   `FDNAME=fanotify` with the descriptor over `$NOTIFY_SOCKET`
//!   ([`store_in_systemd`]). systemd keeps it while the unit restarts (a
//!   restart job, or `Restart=` after the agent died) and passes it to the
//!   next agent as `LISTEN_FDS` / `LISTEN_FDNAMES` / `LISTEN_PID`; it closes
//!   it when the unit is fully stopped, and the group and its marks go then.
//! * **exec in place** (`SIGUSR2`, `systemctl reload`): the agent answers
//!   what it holds, clears `FD_CLOEXEC` on the group's descriptor alone and
//!   execs its binary (the upgraded one if it was replaced) with
//!   [`FD_ENV`] / [`PID_ENV`] naming the descriptor ([`reexec`]).
//!
//! [`take_inherited`] runs first thing in `main`, before any thread exists:
//! it takes the descriptor from either source, checks in
//! `/proc/self/fdinfo` that it really is a fanotify group of the content
//! class, and only then owns it. Anything else named `fanotify` is closed
//! (and dropped from systemd's store by [`store_in_systemd`]).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::fanotify::Fanotify;

/// Environment variable naming the group's descriptor for a re-exec'd image.
pub const FD_ENV: &str = "THINAGENT_FANOTIFY_FD";
/// The pid [`FD_ENV`] is meant for (an exec keeps the pid; a child that
/// inherited the environment by mistake has another).
pub const PID_ENV: &str = "THINAGENT_FANOTIFY_PID";
/// `FDNAME=` of the group in systemd's store.
pub const FD_NAME: &str = "fanotify";

/// `FAN_CLASS_CONTENT` in `fanotify_init`'s flags (and in fdinfo's).
const FAN_CLASS_CONTENT: u32 = 0x04;
/// The class bits (`FAN_CLASS_NOTIF` 0, `_CONTENT` 4, `_PRE_CONTENT` 8).
const FAN_CLASS_MASK: u32 = 0x0c;

/// Where the group came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// systemd's file-descriptor store (`LISTEN_FDS`).
    SystemdStore,
    /// The agent's previous image (exec in place).
    ReExec,
}

impl Origin {
    /// For the log.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Origin::SystemdStore => "from systemd's file-descriptor store",
            Origin::ReExec => "from the previous agent image (exec in place)",
        }
    }
}

/// A group descriptor inherited from a previous agent, checked.
#[derive(Debug)]
pub struct Inherited {
    /// The group.
    pub fan: Fanotify,
    /// Its descriptor number as inherited.
    pub fd: RawFd,
    /// Where it came from.
    pub origin: Origin,
    /// Mount and file-system marks it had (from fdinfo) when taken.
    pub marks: usize,
    /// Inode (ignore) marks it had.
    pub inode_marks: usize,
}

/// What [`take_inherited`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// The group to adopt, if any.
    pub group: Option<Inherited>,
    /// Why an inherited descriptor was not used (for the log).
    pub rejected: Vec<String>,
}

/// Why a handover step failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// `$NOTIFY_SOCKET` could not be reached.
    #[error(
        "cannot offer the fanotify group to systemd's file-descriptor store through \
         NOTIFY_SOCKET={socket}: {source}; SIGTERM will remove the marks, so a restart \
         leaves opens unchecked until the next agent has marked (a path socket is \
         needed, not an abstract '@' one; SIGUSR2 still restarts without a gap)"
    )]
    Notify {
        /// The socket.
        socket: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The re-exec could not happen.
    #[error("cannot exec {path} to restart in place: {source}; the agent goes on as it is")]
    Exec {
        /// The binary.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The descriptor could not be prepared.
    #[error("cannot pass the fanotify descriptor to the new image: {0}")]
    Fcntl(nix::errno::Errno),
}

/// What `/proc/self/fdinfo/N` says about a fanotify descriptor.
#[derive(Debug, PartialEq, Eq)]
pub struct FdInfo {
    /// `fanotify_init` flags.
    pub flags: u32,
    /// Mount and file-system marks.
    pub marks: usize,
    /// Inode marks.
    pub inode_marks: usize,
}

/// Parses the text of `/proc/self/fdinfo/N` of a fanotify descriptor
/// (`fanotify flags:10 event-flags:8000` then one `fanotify ...` line per
/// mark: `mnt_id:`, `sdev:` without `ino:`, or `ino:`). `None`: not one.
#[must_use]
pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let mut flags = None;
    let mut marks = 0;
    let mut inode_marks = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("fanotify ") else {
            continue;
        };
        if let Some(f) = rest.strip_prefix("flags:") {
            let hex = f.split_whitespace().next()?;
            flags = Some(u32::from_str_radix(hex, 16).ok()?);
        } else if rest.starts_with("ino:") {
            inode_marks += 1;
        } else if rest.starts_with("mnt_id:") || rest.starts_with("sdev:") {
            marks += 1;
        }
    }
    Some(FdInfo {
        flags: flags?,
        marks,
        inode_marks,
    })
}

/// Checks that `fd` is an open fanotify group of the content class.
fn check(fd: RawFd) -> Result<FdInfo, String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("fd {fd} is not open: {e}"))?;
    if link.as_os_str() != "anon_inode:[fanotify]" {
        return Err(format!(
            "fd {fd} is {}, not a fanotify group",
            link.display()
        ));
    }
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .map_err(|e| format!("cannot read /proc/self/fdinfo/{fd}: {e}"))?;
    let info = parse_fdinfo(&text)
        .ok_or_else(|| format!("/proc/self/fdinfo/{fd} has no fanotify flags line"))?;
    if info.flags & FAN_CLASS_MASK != FAN_CLASS_CONTENT {
        return Err(format!(
            "fd {fd} is a fanotify group of another class (flags 0x{:x}), not \
             FAN_CLASS_CONTENT",
            info.flags
        ));
    }
    Ok(info)
}

/// Takes ownership of an inherited descriptor number.
#[allow(unsafe_code, reason = "the one place inherited descriptors are owned")]
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was handed to this process by its parent image or by
    // systemd (LISTEN_FDS), and [`take_inherited`] runs in `main` before
    // any thread or other descriptor owner exists; it calls `own` at most
    // once per number, after `check` or `/proc/self/fd` showed it open. So
    // the descriptor is open and nothing else in the process owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Wraps a checked, owned descriptor as nix's group.
#[allow(unsafe_code, reason = "nix requires an unsafe constructor")]
fn as_fanotify(fd: OwnedFd) -> Fanotify {
    // SAFETY: `check` found `/proc/self/fd/N` to be `anon_inode:[fanotify]`
    // with a fanotify fdinfo: a fanotify group descriptor, all that
    // `Fanotify` requires.
    unsafe { Fanotify::from_owned_fd(fd) }
}

/// Makes an adopted descriptor like one of [`crate::fanotify::FanGroup::new`]:
/// close-on-exec (inheritance cleared it) and non-blocking (it is shared
/// with the old image's open file; the reader relies on `EAGAIN`).
fn normalise(fd: &OwnedFd) -> Result<(), String> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("F_SETFD: {e}"))?;
    let fl = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| format!("F_GETFL: {e}"))?;
    let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(fl)).map_err(|e| format!("F_SETFL: {e}"))?;
    Ok(())
}

fn adopt(fd: RawFd, origin: Origin, found: &mut Found) {
    match check(fd) {
        Ok(info) => {
            let owned = own(fd);
            if let Err(e) = normalise(&owned) {
                found
                    .rejected
                    .push(format!("fd {fd} {}: {e}", origin.describe()));
                return;
            }
            if found.group.is_some() {
                // A second group: never leave one open unread (its marks
                // would hold every open). Dropping closes it here; the
                // store's copy goes with the next FDSTOREREMOVE.
                found.rejected.push(format!(
                    "fd {fd} {}: a second fanotify group, closed",
                    origin.describe()
                ));
                return;
            }
            found.group = Some(Inherited {
                fan: as_fanotify(owned),
                fd,
                origin,
                marks: info.marks,
                inode_marks: info.inode_marks,
            });
        }
        Err(why) => found
            .rejected
            .push(format!("{} ({why}): not used", origin.describe())),
    }
}

/// The group descriptor a previous agent left: from a re-exec
/// ([`FD_ENV`] for this pid) or from systemd's store (`LISTEN_FDS`, name
/// [`FD_NAME`]). Call it in `main` before any thread starts.
#[must_use]
pub fn take_inherited() -> Found {
    let mut found = Found::default();
    let me = std::process::id();
    if let Some(v) = std::env::var_os(FD_ENV) {
        let pid_ok = std::env::var(PID_ENV)
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(me);
        match v.to_str().and_then(|s| s.parse::<RawFd>().ok()) {
            Some(fd) if pid_ok && fd > 2 => adopt(fd, Origin::ReExec, &mut found),
            _ => found.rejected.push(format!(
                "{FD_ENV}={} is not for this process ({PID_ENV} is not {me}): ignored",
                v.to_string_lossy()
            )),
        }
    }
    match sd_notify::listen_fds_with_names() {
        Ok(fds) => {
            for (fd, name) in fds {
                if name == FD_NAME {
                    adopt(fd, Origin::SystemdStore, &mut found);
                }
            }
        }
        Err(e) => found.rejected.push(format!(
            "LISTEN_FDS / LISTEN_FDNAMES from systemd are malformed ({e}): ignored"
        )),
    }
    found
}

/// `true` when systemd gave this process a notification socket.
#[must_use]
pub fn notify_socket() -> Option<String> {
    std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Puts the group into systemd's file-descriptor store (first dropping
/// whatever is stored under [`FD_NAME`], so a group that was not adopted
/// never lingers there). `Ok(false)`: not run by systemd (no
/// `$NOTIFY_SOCKET`).
///
/// systemd accepts it only with `FileDescriptorStoreMax=` > 0 and
/// `NotifyAccess=main` (implied); it does not say whether it did.
pub fn store_in_systemd(fan: &impl AsFd) -> Result<bool, HandoverError> {
    use sd_notify::NotifyState;
    let Some(socket) = notify_socket() else {
        return Ok(false);
    };
    let err = |source| HandoverError::Notify {
        socket: socket.clone(),
        source,
    };
    sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(FD_NAME)]).map_err(err)?;
    sd_notify::notify_with_fds(
        &[NotifyState::FdStore, NotifyState::FdName(FD_NAME)],
        &[fan.as_fd()],
    )
    .map_err(err)?;
    Ok(true)
}

/// The signals that stop or restart the agent.
fn control_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGUSR2);
    set
}

/// Blocks [`control_signals`] in the calling thread. The agent's threads
/// all block them except the main one; the main one too just before an
/// exec: the mask survives it, so a `SIGTERM` or `SIGUSR2` sent meanwhile
/// stays pending for the new image instead of being lost, or killing it by
/// its default action before its handlers exist (which, without the store,
/// would drop the group).
pub fn block_control_signals() {
    let _ = control_signals().thread_block();
}

/// Unblocks them in the calling thread, once their handlers are in place
/// (a no-op unless this image was exec'd by [`reexec`]); a signal that came
/// meanwhile is delivered now.
pub fn unblock_control_signals() {
    let _ = control_signals().thread_unblock();
}

/// The binary to re-exec: the file at the path this one was started from,
/// which after an upgrade is the new version (`/proc/self/exe` then reads
/// `PATH (deleted)`); `/proc/self/exe` itself (this very image) when that
/// path is gone.
#[must_use]
pub fn reexec_path() -> PathBuf {
    if let Ok(p) = std::fs::read_link("/proc/self/exe") {
        let s = p.as_os_str().to_string_lossy();
        let path = PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string());
        if path.is_file() {
            return path;
        }
    }
    PathBuf::from("/proc/self/exe")
}

/// Execs `path` with this process's arguments, passing `fan` (its
/// `FD_CLOEXEC` cleared, every other descriptor keeps it). Returns only on
/// failure, with `FD_CLOEXEC` set again.
pub fn reexec(fan: &impl AsFd, path: &std::path::Path) -> HandoverError {
    use std::os::unix::process::CommandExt;
    let fd = fan.as_fd();
    if let Err(e) = fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())) {
        return HandoverError::Fcntl(e);
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = std::process::Command::new(path);
    cmd.arg0(std::env::args_os().next().unwrap_or_else(|| path.into()))
        .args(args)
        // The store's LISTEN_* would point the new image at fd 3 again
        // (the pid stays the same across exec).
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env(FD_ENV, fd.as_raw_fd().to_string())
        .env(PID_ENV, std::process::id().to_string());
    block_control_signals();
    let source = cmd.exec();
    unblock_control_signals();
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    HandoverError::Exec {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_content_group_with_marks() {
        let text = "pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\n\
                    fanotify flags:1c event-flags:8000\n\
                    fanotify mnt_id:5a mflags:0 mask:10030 ignored_mask:0\n\
                    fanotify sdev:2d mflags:0 mask:10030 ignored_mask:0\n\
                    fanotify ino:2 sdev:2d mflags:0 mask:0 ignored_mask:30000 \
                    fhandle-bytes:8 fhandle-type:1 f_handle:0200000000000000\n";
        assert_eq!(
            parse_fdinfo(text),
            Some(FdInfo {
                flags: 0x1c,
                marks: 2,
                inode_marks: 1
            })
        );
    }

    #[test]
    fn fdinfo_of_something_else() {
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t15\n"), None);
        assert_eq!(parse_fdinfo("fanotify flags:zz event-flags:0\n"), None);
    }

    #[test]
    fn only_a_content_class_group_is_taken() {
        use nix::sys::fanotify::{EventFFlags, InitFlags};
        let init = |class| Fanotify::init(class | InitFlags::FAN_CLOEXEC, EventFFlags::O_RDONLY);
        let (Ok(notif), Ok(content)) = (
            init(InitFlags::FAN_CLASS_NOTIF),
            init(InitFlags::FAN_CLASS_CONTENT),
        ) else {
            eprintln!("SKIP only_a_content_class_group_is_taken: fanotify_init needs root");
            return;
        };
        let err = check(notif.as_raw_fd()).unwrap_err();
        assert!(err.contains("another class"), "{err}");
        let info = check(content.as_raw_fd()).unwrap();
        assert_eq!(info.flags & FAN_CLASS_MASK, FAN_CLASS_CONTENT);
        assert_eq!((info.marks, info.inode_marks), (0, 0));
    }

    #[test]
    fn a_plain_file_is_not_taken() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let err = check(f.as_raw_fd()).unwrap_err();
        assert!(err.contains("not a fanotify group"), "{err}");
        assert!(check(100_000).unwrap_err().contains("not open"));
    }
}
