//! The fanotify reader thread: the warm path of every open.
//!
//! A plain thread (no async runtime in between) waits on the group, reads
//! events and answers at once every permission event whose file version the
//! verdict cache holds as **allowed**: that is the common case, and it costs a
//! `fstat` and a cache lookup. Everything else (cache misses, cached denies,
//! close-after-write notifications, overflows) goes to the agent's loop, where
//! the policy, the cache and the session decide ([`crate::core`]).
//!
//! Only allows are answered here, so skipping the policy is safe: the policy
//! can only let more opens through unchecked, never deny. A cached *deny*
//! goes through the full path (a hard link under an excluded prefix, or an
//! excluded process, still gets through).
//!
//! The cold path (protocol version 2). Once the session has negotiated
//! inline content ([`ReaderShared::inline_len`] > 0), the thread also reads
//! each cache miss's first bytes itself, `pread` on the event's descriptor,
//! up to that length, right after the `fstat` it does anyway, and hands them
//! to the loop with the event. A small file then goes to the scanner whole
//! with its `FileEvent` and comes back as one `Verdict`: no `ReadRequest`,
//! and no hop to a blocking-pool thread and back for the read. Counting
//! thread wakeups on that path: the kernel wakes this thread, this thread
//! wakes the loop (one wake for however many events it sends before the
//! loop runs), the
//! scanner's `Verdict` wakes the loop, which answers the kernel and puts the
//! ignore mark; version 1 needed four more per read (the `ReadRequest`
//! wakes the loop, the loop wakes a blocking thread, that wakes the loop
//! again, and the `ReadData` / next request round trip). Reads here are
//! kept to file systems whose reads cannot hang on the network or a FUSE
//! daemon ([`fanotify::reads_are_local`]), to regular files the policy
//! would check (not the agent's own opens, not above `--max-file-size`):
//! this thread is the one every open waits on. Everything else goes the
//! version-1 way. (Excluded prefixes and processes are only known to the
//! core: such a file may be read here for nothing, never sent.)

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::fanotify::FanotifyEvent;
use thinagent_guest::{CachedVerdict, Instant, Level};

use crate::core::{Access, FileStat, FileType, ShardedCache};
use crate::fanotify::{self, EventClass, FanGroup, InlineRead};
use crate::logging::{Logger, routine};

/// How often the thread looks at its stop flag while idle.
const POLL_MS: u16 = 50;

/// What the reader hands to the loop.
pub enum Incoming {
    /// A permission event the cache could not allow.
    Perm {
        /// The event (its descriptor stays open until answered).
        event: FanotifyEvent,
        /// Open or exec.
        access: Access,
        /// When it was read.
        arrived: Instant,
        /// `fstat` of its descriptor.
        stat: Option<FileStat>,
        /// The file's first bytes, read here for inline content (version
        /// 2), from the version `stat` describes.
        content: Option<InlineRead>,
    },
    /// `FAN_CLOSE_WRITE` (already invalidated in the cache).
    CloseWrite {
        /// `st_dev`.
        dev: u64,
        /// Inode.
        ino: u64,
    },
    /// The kernel's queue overflowed.
    Overflow,
    /// Reading the group failed.
    ReadError(std::io::Error),
}

/// Shared between the reader and the loop.
#[derive(Clone)]
pub struct ReaderShared {
    /// The verdict cache (also used by the core).
    pub cache: Arc<Mutex<ShardedCache>>,
    /// Permission events handed to the loop and not yet answered: the reader
    /// stops reading at `limit`, leaving the rest queued in the kernel.
    pub handed: Arc<AtomicUsize>,
    /// Opens allowed from the cache by the reader.
    pub fast_hits: Arc<AtomicU64>,
    /// The kernel-side cache is on: a `FAN_CLOSE_WRITE` removes the file's
    /// ignore mark (a shared writable mapping modifies a file without the
    /// event that would clear it).
    pub kernel_cache: bool,
    /// Bytes of a cache miss to read with its event for inline content: the
    /// session's negotiated `max_inline_len`, kept current by the loop; 0
    /// (no session, version 1, `--no-inline`) reads nothing.
    pub inline_len: Arc<AtomicU32>,
    /// `--max-file-size` or the host policy's `max_scan_size`, whichever
    /// is smaller (`u64::MAX`: none): larger files are not sent, so not
    /// read here. Kept current by the loop.
    pub max_file_size: Arc<AtomicU64>,
    /// Permission events of the agent's own process (its remediation and
    /// scan threads, its ready file), allowed here at once: the policy
    /// never checks them, and they must not wait for the loop.
    pub own_hits: Arc<AtomicU64>,
}

/// The running reader thread.
pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts reading `fan`. `clock` is the origin of the agent's
    /// [`Instant`]s; `limit` bounds the events handed to the loop at once.
    pub fn start(
        fan: Arc<FanGroup>,
        shared: ReaderShared,
        tx: tokio::sync::mpsc::UnboundedSender<Incoming>,
        clock: std::time::Instant,
        limit: usize,
        log: Logger,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fanotify-reader".into())
            .spawn(move || run(&fan, &shared, &tx, clock, limit, &flag, log))?;
        Ok(Reader {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (at most one poll interval).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop();
    }
}

fn now_of(clock: std::time::Instant) -> Instant {
    Instant::from_nanos(u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// Answers `event` from the cache if it holds an allow for its version.
fn allowed_from_cache(
    fan: &FanGroup,
    cache: &Mutex<ShardedCache>,
    event: &FanotifyEvent,
    stat: Option<FileStat>,
    now: Instant,
) -> bool {
    let Some(st) = stat.filter(|s| s.file_type == FileType::Regular) else {
        return false;
    };
    let hit = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&st.key(), now);
    if hit != Some(CachedVerdict::Allow) {
        return false;
    }
    // An answer that fails here (the group is closing) is final either way.
    let _ = fan.respond(event, true);
    true
}

/// The first bytes of a cache miss's file, when the session takes inline
/// content and reading here is safe (module docs); `None` otherwise, and on
/// a read error (the scanner will ask, and get the error then).
fn read_with_event(
    event: &FanotifyEvent,
    stat: Option<FileStat>,
    shared: &ReaderShared,
    own_pid: i32,
) -> Option<InlineRead> {
    let max = shared.inline_len.load(Ordering::Relaxed);
    let st = stat.filter(|s| s.file_type == FileType::Regular)?;
    if max == 0
        || event.pid() == own_pid
        || st.size > shared.max_file_size.load(Ordering::Relaxed)
        || !fanotify::reads_are_local(event)
    {
        return None;
    }
    fanotify::read_inline(event, &st, max).ok()
}

fn run(
    fan: &FanGroup,
    shared: &ReaderShared,
    tx: &tokio::sync::mpsc::UnboundedSender<Incoming>,
    clock: std::time::Instant,
    limit: usize,
    stop: &AtomicBool,
    log: Logger,
) {
    use std::os::fd::AsFd;
    // Signals go to the main thread only (see `main`).
    crate::handover::block_control_signals();
    let own_pid = i32::try_from(std::process::id()).unwrap_or(-1);
    while !stop.load(Ordering::SeqCst) {
        if shared.handed.load(Ordering::SeqCst) >= limit {
            // The loop holds all it may: leave the rest in the kernel queue.
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let mut fds = [PollFd::new(fan.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, POLL_MS) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log.log(
                    Level::Error,
                    routine::FANOTIFY,
                    format_args!("poll on the fanotify group: {e}"),
                );
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        let events = match fan.read_events() {
            Ok(ev) => ev,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE / ENFILE: the kernel could not open the event's file
                // for us and answers that event itself.
                let _ = tx.send(Incoming::ReadError(e));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let now = now_of(clock);
        for event in events {
            let msg = match fanotify::classify(&event) {
                class @ (EventClass::OpenPerm | EventClass::ExecPerm) => {
                    if event.pid() == own_pid {
                        // The agent's own opens (scan walker, remediation,
                        // ready file): never checked (the policy's own-I/O
                        // rule), and answered here so that no thread of the
                        // agent ever waits for the loop.
                        let _ = fan.respond(&event, true);
                        shared.own_hits.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let stat = fanotify::stat_of(&event);
                    if allowed_from_cache(fan, &shared.cache, &event, stat, now) {
                        shared.fast_hits.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    shared.handed.fetch_add(1, Ordering::SeqCst);
                    let content = read_with_event(&event, stat, shared, own_pid);
                    Incoming::Perm {
                        event,
                        access: if class == EventClass::ExecPerm {
                            Access::Exec
                        } else {
                            Access::Open
                        },
                        arrived: now,
                        stat,
                        content,
                    }
                }
                EventClass::CloseWrite => {
                    let Some(st) = fanotify::stat_of(&event) else {
                        continue;
                    };
                    // Invalidate before reading any later event: the next
                    // open of this file must miss, and raise an event.
                    if shared.kernel_cache {
                        let _ = fan.remove_ignore_mark(&event);
                    }
                    let id = thinagent_guest::FileKey::with_u64_id(st.dev, st.ino, 0, 0).file_id;
                    shared
                        .cache
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .invalidate(st.dev, &id);
                    Incoming::CloseWrite {
                        dev: st.dev,
                        ino: st.ino,
                    }
                }
                EventClass::Overflow => Incoming::Overflow,
                EventClass::Other => continue,
            };
            if tx.send(msg).is_err() {
                // The loop is gone; dropping the events lets the group's
                // close answer them.
                return;
            }
        }
    }
}
