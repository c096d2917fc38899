//! Taking events off the fanotify group: the warm path of every open, and
//! the first step of the cold one.
//!
//! The loop ([`crate::agent`]) waits on the group itself: its descriptor is
//! registered with the loop's reactor beside the scanner socket, so the
//! thread the kernel wakes for an open is the thread that answers it. Each
//! event read goes through [`Intake::take`] at once, in the order read:
//!
//! * the agent's own opens (walker, remediation, ready file) are allowed at
//!   once: the policy never checks them;
//! * a permission event whose file version the verdict cache holds as
//!   **allowed** is answered at once: a `fstat` and a cache lookup. Only
//!   allows are answered here, so skipping the policy is safe: the policy
//!   can only let more opens through unchecked, never deny. A cached *deny*
//!   goes through the full path (a hard link under an excluded prefix, or
//!   an excluded process, still gets through);
//! * `FAN_CLOSE_WRITE` removes the file's ignore mark (a shared writable
//!   mapping modifies a file without the event that would clear it) and
//!   goes to the core, which invalidates its cached verdict before the
//!   loop takes the next event;
//! * everything else becomes an [`Incoming`] for the core.
//!
//! The cold path (protocol version 2). Once the session has negotiated
//! inline content ([`Intake::inline_len`] > 0), a cache miss's first bytes
//! are read here, `pread` on the event's descriptor, up to that length,
//! right after the `fstat` done anyway. The core puts them in the
//! `FileEvent`, and the loop writes it to the socket in the same turn. A
//! small file then costs the agent two wakeups, as a bare responder with one
//! round trip does: the kernel's event, and the scanner's `Verdict`. (A
//! reader thread that handed events to the loop over a channel, as earlier
//! versions had, cost one more wakeup per cold open, on another CPU as often
//! as not.)
//!
//! This thread is the one every open waits on, so what it reads is bounded
//! by where the file lives ([`fanotify::loop_reads`]): on a memory file
//! system (tmpfs) it reads; on a block-device file system only what the page
//! cache holds (`preadv2(RWF_NOWAIT)`: a file that would have to come from
//! the disk, which on a VM may be remote storage that stalls, goes the
//! version-1 way and is read on a blocking-pool thread); on network, FUSE
//! and cluster file systems never. Only regular files the policy would
//! check are read (not the agent's own opens, not above `--max-file-size`).
//! (Excluded prefixes and processes are only known to the core: such a file
//! may be read here for nothing, never sent.)

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

use nix::sys::fanotify::FanotifyEvent;
use thinagent_guest::{CachedVerdict, Instant};

use crate::core::{Access, FileStat, FileType, ShardedCache};
use crate::fanotify::{self, EventClass, FanGroup, InlineRead, LoopReads};

/// A permission event the cache could not allow, waiting for the core.
pub struct Arrival {
    /// The event (its descriptor stays open until answered).
    pub event: FanotifyEvent,
    /// Open or exec.
    pub access: Access,
    /// When it was read: its deadline counts from then.
    pub arrived: Instant,
    /// `fstat` of its descriptor.
    pub stat: Option<FileStat>,
    /// The file's first bytes, read with the event for inline content
    /// (version 2), from the version `stat` describes.
    pub content: Option<InlineRead>,
    /// Which reads of it the loop may do itself ([`fanotify::loop_reads`];
    /// [`LoopReads::None`] for anything but a regular file).
    pub loop_reads: LoopReads,
}

/// An event [`Intake::take`] could not answer itself: the core's.
pub enum Incoming {
    /// A permission event the cache could not allow.
    Perm(Arrival),
    /// `FAN_CLOSE_WRITE` (its ignore mark already removed).
    CloseWrite {
        /// `st_dev`.
        dev: u64,
        /// Inode.
        ino: u64,
    },
    /// The kernel's queue overflowed.
    Overflow,
}

/// What the loop needs to take events off the group.
pub struct Intake {
    /// The verdict cache (also used by the core).
    pub cache: Arc<Mutex<ShardedCache>>,
    /// Opens allowed from the cache here.
    pub fast_hits: u64,
    /// Permission events of the agent's own process (its remediation and
    /// scan threads, its ready file), allowed here at once: the policy
    /// never checks them.
    pub own_hits: u64,
    /// The kernel-side cache is on: a `FAN_CLOSE_WRITE` removes the file's
    /// ignore mark.
    pub kernel_cache: bool,
    /// Bytes of a cache miss to read with its event for inline content: the
    /// session's negotiated `max_inline_len`, kept current by the loop; 0
    /// (no session, version 1, `--no-inline`) reads nothing. Shared with
    /// the host scan's walker thread, which reads the same way.
    pub inline_len: Arc<AtomicU32>,
    /// `--max-file-size` or the host policy's `max_scan_size`, whichever
    /// is smaller (`u64::MAX`: none): larger files are not sent, so not
    /// read here. Kept current by the loop.
    pub max_file_size: u64,
    /// This process's pid, as fanotify reports it.
    own_pid: i32,
}

impl Intake {
    /// Takes events for the core that owns `cache`.
    pub fn new(cache: Arc<Mutex<ShardedCache>>, kernel_cache: bool, max_file_size: u64) -> Self {
        Intake {
            cache,
            fast_hits: 0,
            own_hits: 0,
            kernel_cache,
            inline_len: Arc::new(AtomicU32::new(0)),
            max_file_size,
            own_pid: i32::try_from(std::process::id()).unwrap_or(-1),
        }
    }

    /// One event read from `fan` at `now`: answered here (`None`), or what
    /// the core must decide.
    pub fn take(&mut self, fan: &FanGroup, event: FanotifyEvent, now: Instant) -> Option<Incoming> {
        match fanotify::classify(&event) {
            class @ (EventClass::OpenPerm | EventClass::ExecPerm) => {
                if event.pid() == self.own_pid {
                    // An answer that fails here (the group is closing) is
                    // final either way.
                    let _ = fan.respond(&event, true);
                    self.own_hits += 1;
                    return None;
                }
                let stat = fanotify::stat_of(&event);
                if self.allowed_from_cache(fan, &event, stat, now) {
                    self.fast_hits += 1;
                    return None;
                }
                let regular = stat.is_some_and(|s| s.file_type == FileType::Regular);
                let loop_reads = if regular {
                    fanotify::loop_reads(&event)
                } else {
                    LoopReads::None
                };
                let content = self.read_with_event(&event, stat, loop_reads);
                Some(Incoming::Perm(Arrival {
                    event,
                    access: if class == EventClass::ExecPerm {
                        Access::Exec
                    } else {
                        Access::Open
                    },
                    arrived: now,
                    stat,
                    content,
                    loop_reads,
                }))
            }
            EventClass::CloseWrite => {
                let st = fanotify::stat_of(&event)?;
                // The next open of this file must raise an event. (Its
                // cached verdict goes in the core, in this same turn.)
                if self.kernel_cache {
                    let _ = fan.remove_ignore_mark(&event);
                }
                Some(Incoming::CloseWrite {
                    dev: st.dev,
                    ino: st.ino,
                })
            }
            EventClass::Overflow => Some(Incoming::Overflow),
            EventClass::Other => None,
        }
    }

    /// Answers `event` from the cache if it holds an allow for its version.
    fn allowed_from_cache(
        &self,
        fan: &FanGroup,
        event: &FanotifyEvent,
        stat: Option<FileStat>,
        now: Instant,
    ) -> bool {
        let Some(st) = stat.filter(|s| s.file_type == FileType::Regular) else {
            return false;
        };
        let hit = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&st.key(), now);
        if hit != Some(CachedVerdict::Allow) {
            return false;
        }
        let _ = fan.respond(event, true);
        true
    }

    /// The first bytes of a cache miss's regular file, when the session
    /// takes inline content and the loop may read them (module docs);
    /// `None` otherwise, when they are not in the page cache, and on a read
    /// error (the scanner will ask, and get them or the error then).
    fn read_with_event(
        &self,
        event: &FanotifyEvent,
        stat: Option<FileStat>,
        loop_reads: LoopReads,
    ) -> Option<InlineRead> {
        let max = self.inline_len.load(std::sync::atomic::Ordering::Relaxed);
        let st = stat?;
        if max == 0 || st.size > self.max_file_size {
            return None;
        }
        fanotify::read_inline(event, &st, max, loop_reads.wait()?).ok()
    }
}
