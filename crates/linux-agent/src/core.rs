//! The agent's sans-IO core: one fanotify permission event in, one answer out.
//!
//! [`AgentCore`] owns everything that decides: the [`OpenPolicy`], the
//! [`VerdictCache`], the protocol [`Session`] with the scanner (when
//! connected), the table of pending permission events and their watchdog
//! deadlines, and the counters. It reads no clock and touches no descriptor:
//! the edge ([`crate::agent`]) feeds it events, received bytes and the time,
//! and carries out the [`Action`]s it returns (write a fanotify response,
//! `pread` for the host, close the connection) and the bytes it wants sent.
//!
//! Guarantees (tested by the proptests at the end of this file):
//! * every permission event given to [`AgentCore::on_perm_event`] gets exactly
//!   one [`Action::Respond`];
//! * no later than its deadline (`now + timeout` at arrival), provided the
//!   edge calls [`AgentCore::on_timeout`] at [`AgentCore::next_deadline`]: the
//!   watchdog answers by the fail mode whatever the session is doing;
//! * after [`AgentCore::shutdown`] nothing is pending.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use thinagent_guest::policy::{FILE_EXECUTE, FILE_OPEN, FILE_READ_DATA};
use thinagent_guest::{
    CachedVerdict, CloseReason, FailMode, FileKey, Instant, OpenDecision, OpenPolicy, OpenRequest,
    PathRef, QueryId, ReadError, Session, SessionConfig, SessionEvent, SkipReason, VerdictCache,
    VerdictSource,
};
use thinagent_protocol::{
    ActionResult, ActionStatus, AgentVersion, Capabilities, CreateDisposition, Decision, EventKind,
    FileEvent, FileIdentity, FilePath, Health, InlineContent, Message, OsKind, PolicyFields,
    ReadOutcome, RemediateAction, ScanCounters, ScanDone, ScanFlags,
};

pub use policy::{HostPolicy, PolicyChange, field_names, pinned_fields_from_names};

mod policy;

/// The most permission events checked at once (the upper bound of
/// `--max-in-flight`).
pub const SESSION_SLOTS: usize = 64;
/// Query slots kept for a host scan's `OnDemand` events (§14.4), on top of
/// [`SESSION_SLOTS`]: a scan never takes a slot an open needs.
pub const SCAN_SLOTS: usize = 32;
/// Longest path sent to the scanner, bytes (Linux `PATH_MAX`). Longer paths
/// are decided by the fail mode.
pub const MAX_PATH: usize = 4096;
/// Host reads served at once.
pub const READ_SLOTS: usize = 4;
/// Entries of one verdict cache shard (64 bytes each: 256 KiB).
const CACHE_SHARD_ENTRIES: usize = 4096;
/// Shards: a file's identity picks one.
const CACHE_SHARDS: usize = 16;
/// Verdict cache entries in all (4 MiB): a warm working set of tens of
/// thousands of files stays cached.
pub const CACHE_ENTRIES: usize = CACHE_SHARD_ENTRIES * CACHE_SHARDS;
/// Default bound of the kernel-side verdict cache (`--kernel-cache-entries`):
/// fanotify ignore marks held at once. About 130 bytes of kernel memory each
/// (the mark and its inode connector); the marks are evictable, so they do
/// not pin inodes.
pub const KERNEL_CACHE_ENTRIES: usize = 32_768;

/// The guest crate's fixed-size [`VerdictCache`], sharded by file identity
/// so that a large cache is built shard by shard on the heap (one
/// `VerdictCache` is a plain array, built on the stack first). Shared (behind
/// a mutex) by the core and the intake's warm path ([`crate::intake`]).
pub struct ShardedCache {
    shards: Vec<VerdictCache<CACHE_SHARD_ENTRIES>>,
}

impl std::fmt::Debug for ShardedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedCache")
            .field(
                "entries",
                &self.shards.iter().map(|s| s.len()).sum::<usize>(),
            )
            .finish()
    }
}

impl Default for ShardedCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardedCache {
    /// An empty cache of [`CACHE_ENTRIES`] entries.
    #[must_use]
    pub fn new() -> Self {
        let mut shards = Vec::with_capacity(CACHE_SHARDS);
        for _ in 0..CACHE_SHARDS {
            shards.push(VerdictCache::new());
        }
        ShardedCache { shards }
    }

    fn shard(
        &mut self,
        volume_serial: u64,
        file_id: &[u8; 16],
    ) -> &mut VerdictCache<CACHE_SHARD_ENTRIES> {
        // The low bits: the cache picks its set from the top ones
        // (multiply-shift), so both choices stay independent.
        let h = thinagent_guest::file_key::identity_hash(volume_serial, file_id);
        &mut self.shards[(h % CACHE_SHARDS as u64) as usize]
    }

    /// Looks `key` up at `now` (see [`VerdictCache::get`]).
    pub fn get(&mut self, key: &FileKey, now: Instant) -> Option<CachedVerdict> {
        self.shard(key.volume_serial, &key.file_id).get(key, now)
    }

    /// Stores `verdict` for `key`, valid for `ttl`.
    pub fn insert(&mut self, key: FileKey, verdict: CachedVerdict, now: Instant, ttl: Duration) {
        self.shard(key.volume_serial, &key.file_id)
            .insert(key, verdict, now, Some(ttl));
    }

    /// Forgets every version of the file; returns how many entries went.
    pub fn invalidate(&mut self, volume_serial: u64, file_id: &[u8; 16]) -> usize {
        self.shard(volume_serial, file_id)
            .invalidate(volume_serial, file_id)
    }
}

/// The protocol session type the agent uses.
pub type AgentSession = Session<{ SESSION_SLOTS + SCAN_SLOTS }, MAX_PATH, READ_SLOTS>;

/// The edge's handle for one permission event (unique while it is pending).
pub type Token = u64;

/// Seconds from 1601-01-01 to 1970-01-01, in `FILETIME` units (100 ns).
const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

/// Which permission event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `FAN_OPEN_PERM`.
    Open,
    /// `FAN_OPEN_EXEC_PERM`.
    Exec,
}

/// What kind of inode the event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file: checked.
    Regular,
    /// A directory: skipped by the policy.
    Directory,
    /// A FIFO, socket or device: not content, let through.
    Other,
}

/// `fstat` of the event's descriptor, reduced to what the core uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStat {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in nanoseconds since the Unix epoch (0 if before it).
    pub mtime_ns: u64,
    /// Inode type.
    pub file_type: FileType,
}

impl FileStat {
    /// The verdict cache key: (`st_dev`, inode, size, mtime).
    #[must_use]
    pub fn key(&self) -> FileKey {
        FileKey::with_u64_id(self.dev, self.ino, self.size, self.mtime_ns)
    }

    /// The identity sent in `FileEvent` (mtime as a `FILETIME`).
    #[must_use]
    pub fn identity(&self) -> FileIdentity {
        FileIdentity {
            volume_serial: self.dev,
            file_id: self.key().file_id,
            size: self.size,
            last_write_time: FILETIME_UNIX_EPOCH.saturating_add(self.mtime_ns / 100),
        }
    }
}

/// One permission event as the edge read it.
#[derive(Clone, Copy, Debug)]
pub struct PermEvent<'a> {
    /// The edge's handle, echoed in [`Action::Respond`] / [`Action::Read`].
    pub token: Token,
    /// Open or exec.
    pub access: Access,
    /// Process that opens.
    pub pid: u32,
    /// Path of the file (from `/proc/self/fd/N`), raw bytes.
    pub path: &'a [u8],
    /// `fstat` of the event's descriptor, if it worked.
    pub stat: Option<FileStat>,
    /// The file's first bytes, read with the event (version 2, up to
    /// [`AgentCore::max_inline_len`] when it was read; `stat` is the
    /// version they were read from), or [`InlineContent::NONE`]. The
    /// session sends what §5.3.1 allows and drops the rest.
    pub content: InlineContent<'a>,
    /// The opening process's image name (basename of `/proc/PID/exe`), when
    /// the edge looked it up ([`AgentCore::wants_process_images`]).
    pub image: Option<&'a [u8]>,
}

/// Why an event got its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The policy let it through unchecked.
    Skipped(SkipReason),
    /// Not a regular file (FIFO, socket, device).
    NotRegularFile,
    /// The verdict cache answered.
    Cached(CachedVerdict),
    /// The scanner answered.
    Host {
        /// Allow / Deny / AllowNoCache.
        decision: Decision,
        /// Threat name, empty if none.
        threat: String,
    },
    /// No connection to the scanner: the fail mode decided.
    Disconnected,
    /// The session's per-query deadline passed: the fail mode decided.
    SessionDeadline,
    /// The session closed (or could not send the query, e.g. path too long)
    /// while the query was pending: the fail mode decided.
    SessionClosed,
    /// The watchdog deadline passed before any answer: the fail mode decided.
    Watchdog,
    /// Every session slot was busy: the fail mode decided.
    Overloaded,
    /// Larger than the host policy's `max_scan_size` (§14.6): not queried,
    /// the fail mode decided.
    TooLarge,
    /// The agent is shutting down: the fail mode decided.
    Shutdown,
}

impl Why {
    /// `true` when the fail mode (not a scan, cache or policy) decided.
    #[must_use]
    pub fn is_fail_mode(&self) -> bool {
        matches!(
            self,
            Why::Disconnected
                | Why::SessionDeadline
                | Why::SessionClosed
                | Why::Watchdog
                | Why::Overloaded
                | Why::TooLarge
                | Why::Shutdown
        )
    }
}

/// What the edge must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer the permission event `token` (exactly once per event).
    Respond {
        /// The event.
        token: Token,
        /// `FAN_ALLOW` or `FAN_DENY`.
        allow: bool,
        /// Why.
        why: Why,
    },
    /// The host wants bytes of `token`'s file: `pread` them from the event's
    /// descriptor and call [`AgentCore::read_completed`].
    Read {
        /// The event whose descriptor to read.
        token: Token,
        /// Id for [`AgentCore::read_completed`].
        read_id: u64,
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
    },
    /// The scanner allowed `token`'s file: put a fanotify ignore mark for
    /// open and exec on its inode, through the event's descriptor, so that
    /// later opens raise no event at all (the kernel drops the mark's ignore
    /// mask when the file is modified). Comes right before the event's
    /// [`Action::Respond`]. If the file's `fstat` no longer matches `expect`
    /// once the mark is in place (it changed while being scanned), remove the
    /// mark again. Report with [`AgentCore::ignore_mark_result`].
    AddIgnoreMark {
        /// The event whose descriptor names the inode.
        token: Token,
        /// The file's version the verdict is for.
        expect: FileStat,
    },
    /// Remove every ignore mark of the group (`FAN_MARK_FLUSH` of inode
    /// marks; the mount and file-system marks stay).
    FlushIgnoreMarks {
        /// Why.
        reason: FlushReason,
        /// Marks the core counted since the previous flush.
        marks: usize,
    },
    /// The handshake completed.
    Connected {
        /// Negotiated protocol version.
        version: u16,
    },
    /// A host request (§14) for the edge to carry out off the loop:
    /// answer it with [`AgentCore::complete_action`] (remediation) or
    /// [`AgentCore::scan_done`] (scan).
    HostRequest(HostJob),
    /// The host cancelled the running scan `id`.
    ScanCancelled {
        /// The scan id.
        id: u64,
    },
    /// An `OnDemand` event (from [`AgentCore::submit_on_demand`]) is
    /// over: `Some(decision)` from the scanner, `None` when the fail mode
    /// ended it (deadline, session closed, shutdown).
    OnDemandDone {
        /// The edge's token of the scanned file.
        token: Token,
        /// The scanner's decision.
        decision: Option<Decision>,
        /// The threat it named (empty if none).
        threat: String,
    },
    /// A host `Policy` was applied (§14.6); the core already enforces it.
    /// The edge logs it and applies what lives outside the core (log level,
    /// the reader's size limit).
    PolicyApplied(PolicyChange),
    /// The session ended by itself: send what is left in
    /// [`AgentCore::pending_tx`], close the connection, reconnect later.
    Closed {
        /// Why it closed.
        reason: CloseReason,
    },
}

/// Why the kernel-side verdict cache (the ignore marks) is flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushReason {
    /// The shortest verdict TTL among the marks has passed.
    Ttl,
    /// `--kernel-cache-entries` marks are in place and another is wanted.
    Bound,
    /// A new session with the scanner (its signatures may have changed).
    Connected,
    /// A host policy changed the longest verdict lifetime.
    Policy,
}

impl FlushReason {
    /// A short name for log lines.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Ttl => "verdict TTL reached",
            FlushReason::Bound => "entry bound reached",
            FlushReason::Connected => "new scanner session",
            FlushReason::Policy => "host policy changed the cache TTL",
        }
    }
}

/// The kernel-side verdict cache's bookkeeping: which inodes carry an ignore
/// mark, how many may, and when the shortest verdict TTL among them ends.
/// Inodes whose mark the kernel dropped by itself (file modified, inode
/// evicted, file deleted) still count until the next flush: the bound is
/// conservative.
#[derive(Debug, Default)]
struct IgnoreMarks {
    /// Most marks at once; 0: off.
    capacity: usize,
    /// (`st_dev`, inode) of every mark since the last flush.
    marked: HashSet<(u64, u64)>,
    /// When the marks must go (the earliest verdict expiry among them).
    flush_due: Option<Instant>,
}

/// Why the agent stops, as its edge sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopRequest {
    /// `SIGTERM` / `SIGINT`.
    Terminate,
    /// `SIGUSR2`: restart in place (exec the binary again).
    ReExec,
}

/// What happens to the fanotify group when the agent stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopPlan {
    /// A stop: remove the marks, then answer everything held or still
    /// queued in the kernel (by verdict, cache or fail mode).
    RemoveMarks,
    /// A restart: the group and its marks stay for the next agent. Stop
    /// reading, finish the events already read (each by its verdict or its
    /// deadline, never later), leave the queued ones in the kernel for the
    /// next reader: their openers wait, whatever the fail mode.
    HandOver,
}

/// Whether `new`, arriving while the agent is already stopping for
/// `current`, changes what it does: a stop (`SIGTERM`) during a restart in
/// place turns it into a stop; anything else changes nothing.
#[must_use]
pub fn supersedes(new: StopRequest, current: StopRequest) -> bool {
    new == StopRequest::Terminate && current == StopRequest::ReExec
}

/// The plan for `request`. `group_in_store`: the group's descriptor is in
/// systemd's file-descriptor store, so systemd decides: on a restart it
/// passes the group to the next agent, on a full stop it closes it (and the
/// kernel removes the marks then). Without the store a `SIGTERM` is a stop.
#[must_use]
pub fn stop_plan(request: StopRequest, group_in_store: bool) -> StopPlan {
    match request {
        StopRequest::ReExec => StopPlan::HandOver,
        StopRequest::Terminate if group_in_store => StopPlan::HandOver,
        StopRequest::Terminate => StopPlan::RemoveMarks,
    }
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Permission events received.
    pub events: u64,
    /// Let through by the policy.
    pub skipped: u64,
    /// Let through as non-regular files.
    pub not_regular: u64,
    /// Answered from the verdict cache.
    pub cache_hits: u64,
    /// Allowed by the scanner.
    pub host_allowed: u64,
    /// Denied by the scanner.
    pub host_denied: u64,
    /// Decided by the fail mode while disconnected.
    pub fail_mode_disconnected: u64,
    /// Decided by the fail mode at the session's query deadline.
    pub fail_mode_deadline: u64,
    /// Decided by the fail mode when the session closed with the query open.
    pub fail_mode_session_closed: u64,
    /// Decided by the fail mode at the watchdog deadline.
    pub fail_mode_watchdog: u64,
    /// Decided by the fail mode because every session slot was busy.
    pub fail_mode_overloaded: u64,
    /// Decided by the fail mode at shutdown.
    pub fail_mode_shutdown: u64,
    /// Denied in total (scanner, cache or fail-closed).
    pub denied: u64,
    /// Cache entries removed by `FAN_CLOSE_WRITE`.
    pub invalidations: u64,
    /// Host reads served.
    pub reads: u64,
    /// Events sent with the whole file inline (version 2: no host read).
    pub inline_whole: u64,
    /// Events sent with the file's first bytes inline (the host reads the
    /// rest).
    pub inline_partial: u64,
    /// Ignore marks put on files the scanner allowed (kernel-side cache).
    pub ignore_marks: u64,
    /// Ignore marks wanted but not added (the kernel refused, or the file
    /// changed while it was scanned).
    pub ignore_marks_failed: u64,
    /// Flushes of every ignore mark (TTL, bound, new session).
    pub ignore_mark_flushes: u64,
    /// Decided by the fail mode as larger than the host policy's
    /// `max_scan_size`.
    pub fail_mode_too_large: u64,
    /// `FileEvent`s sent (on-access and `OnDemand`).
    pub events_sent: u64,
    /// `OnDemand` events sent for host scans.
    pub on_demand_sent: u64,
    /// Sessions established (handshake done).
    pub sessions: u64,
    /// Host requests (§14) received: remediations, policies, scans.
    pub host_requests: u64,
    /// The host policy version in effect (0: none).
    pub policy_version: u64,
}

impl Stats {
    /// Every decision the fail mode made.
    #[must_use]
    pub fn fail_mode_total(&self) -> u64 {
        self.fail_mode_disconnected
            + self.fail_mode_deadline
            + self.fail_mode_session_closed
            + self.fail_mode_watchdog
            + self.fail_mode_overloaded
            + self.fail_mode_too_large
            + self.fail_mode_shutdown
    }
}

/// Static configuration of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// What an event gets when the scanner cannot answer in time.
    pub fail_mode: FailMode,
    /// Per-event deadline (the session's query timeout and the watchdog).
    pub timeout: Duration,
    /// Sent in `Hello`.
    pub guest_name: String,
    /// The open policy (exclusions, size limit, the agent's own pid).
    pub policy: OpenPolicy,
    /// The agent's own pid (its opens are never checked).
    pub own_pid: u32,
    /// Most fanotify ignore marks at once (the kernel-side verdict cache);
    /// 0 turns it off.
    pub kernel_cache_entries: usize,
    /// Announce `INLINE_CONTENT`: the edge reads small files with their
    /// event and the session sends them inline (version 2). `false`
    /// (`--no-inline`): every byte is read on the scanner's request.
    pub inline_content: bool,
    /// Announce `REMEDIATE`, `SCAN_TREE`, `POLICY` and `RESTORE` (protocol §14);
    /// `false` (`--no-host-actions`): the session refuses them.
    pub host_actions: bool,
    /// Policy fields the local admin pinned (`--pin-policy`): a host
    /// `Policy` does not change them.
    pub pinned: PolicyFields,
}

/// A host request taken from the session, owned, for the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostJob {
    /// `Remediate` (§14.2).
    Remediate {
        /// Request id.
        id: u64,
        /// Delete or truncate.
        action: RemediateAction,
        /// The path (raw bytes).
        path: Vec<u8>,
        /// The identity the host judged.
        file: FileIdentity,
        /// The host's deadline.
        deadline: Duration,
    },
    /// `ScanTree` (§14.4).
    Scan {
        /// The scan id.
        id: u64,
        /// The root (raw bytes).
        root: Vec<u8>,
        /// Walk flags.
        flags: ScanFlags,
        /// Most `OnDemand` events outstanding.
        max_in_flight: u16,
        /// Directory levels below the root; 0 = unlimited.
        max_depth: u16,
        /// `ScanProgress` at most this often; zero = never.
        progress_interval: Duration,
        /// Larger files are skipped; 0 = no limit of the scan's own.
        max_file_size: u64,
    },
    /// `Restore` (§14.7): its data follows as [`HostJob::RestoreData`];
    /// answer it once with [`AgentCore::complete_action`].
    Restore {
        /// Request id.
        id: u64,
        /// Where the file goes (raw bytes).
        path: Vec<u8>,
        /// Its size.
        size: u64,
        /// The host's deadline for the whole restore.
        deadline: Duration,
    },
    /// A chunk of restore `id`'s content, in order. Report it written with
    /// [`AgentCore::restore_chunk_written`]: at most [`RESTORE_WINDOW`]
    /// chunks are handed out unwritten, and the session holds the rest
    /// back (the scanner waits on the connection meanwhile).
    RestoreData {
        /// The `Restore`'s id.
        id: u64,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
        /// The final chunk.
        last: bool,
    },
    /// The session ended restore `id` itself (chunks out of order, its
    /// data late): drop what was written of it; it is answered already.
    RestoreAborted {
        /// The `Restore`'s id.
        id: u64,
    },
}

/// Restore chunks handed to the edge and not yet written, at most.
pub const RESTORE_WINDOW: usize = 2;

/// A `FilePath` as raw bytes (UTF-16 paths, which a Linux guest never
/// sends, converted lossily).
fn path_bytes(p: &FilePath<'_>) -> Vec<u8> {
    match *p {
        FilePath::Utf8(s) => s.as_bytes().to_vec(),
        FilePath::Bytes(b) => b.to_vec(),
        FilePath::Utf16Le(b) => {
            let units: Vec<u16> = b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units).into_bytes()
        }
    }
}

/// What the pump took from the session's inbox.
enum Taken {
    Job(HostJob),
    /// Part of a restore already counted as a host request.
    Chunk(HostJob),
    Policy(u64, HostPolicy),
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    deadline: Instant,
    key: Option<FileKey>,
    stat: Option<FileStat>,
    query: QueryId,
    /// A `FAN_CLOSE_WRITE` of the same file arrived meanwhile: do not cache.
    dirty: bool,
    /// A host scan's `OnDemand` event: no opener waits for it.
    on_demand: bool,
}

/// The sans-IO agent. See the [module docs](self).
pub struct AgentCore {
    policy: Box<OpenPolicy>,
    cache: Arc<Mutex<ShardedCache>>,
    session: Option<Box<AgentSession>>,
    fail_mode: FailMode,
    timeout: Duration,
    guest_name: String,
    own_pid: u32,
    scanner_pid: Option<u32>,
    inline_content: bool,
    pending: HashMap<Token, Pending>,
    by_query: HashMap<QueryId, Token>,
    actions: VecDeque<Action>,
    outbox: Vec<u8>,
    stats: Stats,
    marks: IgnoreMarks,
    host_actions: bool,
    /// The host policy in effect and the local pins.
    host: policy::Enforced,
    /// The restore in progress and its chunks handed out unwritten.
    restore_window: Option<(u64, usize)>,
}

impl std::fmt::Debug for AgentCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCore")
            .field("connected", &self.is_connected())
            .field("pending", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AgentCore {
    /// A disconnected core.
    #[must_use]
    pub fn new(config: CoreConfig) -> Self {
        let mut policy = Box::new(config.policy);
        // A full process list only loses this exclusion; own_io covers it.
        let _ = policy.add_excluded_process(config.own_pid);
        let host = policy::Enforced::new(config.pinned, &policy);
        AgentCore {
            policy,
            cache: Arc::new(Mutex::new(ShardedCache::new())),
            session: None,
            fail_mode: config.fail_mode,
            timeout: config.timeout,
            guest_name: config.guest_name,
            own_pid: config.own_pid,
            scanner_pid: None,
            inline_content: config.inline_content,
            pending: HashMap::new(),
            by_query: HashMap::new(),
            actions: VecDeque::new(),
            outbox: Vec::new(),
            stats: Stats::default(),
            marks: IgnoreMarks {
                capacity: config.kernel_cache_entries,
                ..IgnoreMarks::default()
            },
            host_actions: config.host_actions,
            host,
            restore_window: None,
        }
    }

    /// The verdict cache, for the intake's warm path.
    #[must_use]
    pub fn shared_cache(&self) -> Arc<Mutex<ShardedCache>> {
        self.cache.clone()
    }

    fn cache(&self) -> MutexGuard<'_, ShardedCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> Stats {
        Stats {
            policy_version: self.host.version,
            ..self.stats
        }
    }

    /// The fail mode.
    #[must_use]
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// Events waiting for an answer.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A session exists (connected or handshaking).
    #[must_use]
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// The handshake completed and the session is open.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.is_connected())
    }

    /// Most bytes of a file worth reading with its event, to send inline:
    /// the session's negotiated `max_inline_len` (version 2 with
    /// `INLINE_CONTENT`), 0 when nothing would go inline (no session yet,
    /// version 1, `--no-inline`).
    #[must_use]
    pub fn max_inline_len(&self) -> u32 {
        self.session.as_ref().map_or(0, |s| s.max_inline_len())
    }

    /// The open policy.
    #[must_use]
    pub fn policy(&self) -> &OpenPolicy {
        &self.policy
    }

    /// The scanner's pid learned from the connection (`SO_PEERCRED`): its
    /// opens are not checked. Replaces the previous one.
    pub fn set_scanner_pid(&mut self, pid: Option<u32>) {
        if self.scanner_pid == pid {
            return;
        }
        if let Some(old) = self.scanner_pid.take()
            && old != self.own_pid
        {
            self.policy.remove_excluded_process(old);
        }
        if let Some(new) = pid
            && self.policy.add_excluded_process(new).is_ok()
        {
            self.scanner_pid = Some(new);
        }
    }

    /// Ignore marks counted since the last flush.
    #[must_use]
    pub fn ignore_marks(&self) -> usize {
        self.marks.marked.len()
    }

    /// The edge carried out an [`Action::AddIgnoreMark`] for the file
    /// (`dev`, `ino`): `added` if the mark is in place, `false` if the kernel
    /// refused it or it was removed again (the file changed).
    pub fn ignore_mark_result(&mut self, dev: u64, ino: u64, added: bool) {
        if added {
            self.stats.ignore_marks += 1;
        } else {
            self.stats.ignore_marks_failed += 1;
            self.marks.marked.remove(&(dev, ino));
        }
    }

    fn flush_ignore_marks(&mut self, reason: FlushReason) {
        let marks = self.marks.marked.len();
        self.marks.marked.clear();
        self.marks.flush_due = None;
        self.stats.ignore_mark_flushes += 1;
        self.actions
            .push_back(Action::FlushIgnoreMarks { reason, marks });
    }

    /// Asks the edge for an ignore mark on `token`'s file, allowed by the
    /// scanner at `now` for `ttl` (flushing all marks first at the bound).
    fn want_ignore_mark(&mut self, token: Token, stat: FileStat, now: Instant, ttl: Duration) {
        if self.marks.capacity == 0 || stat.file_type != FileType::Regular {
            return;
        }
        let id = (stat.dev, stat.ino);
        if !self.marks.marked.contains(&id) && self.marks.marked.len() >= self.marks.capacity {
            self.flush_ignore_marks(FlushReason::Bound);
        }
        self.marks.marked.insert(id);
        let due = now.saturating_add(ttl);
        self.marks.flush_due = Some(self.marks.flush_due.map_or(due, |d| d.min(due)));
        self.actions.push_back(Action::AddIgnoreMark {
            token,
            expect: stat,
        });
    }

    /// A connection to the scanner was established at `now`: starts a
    /// session (sends `Hello`). An existing session is closed first. Ignore
    /// marks from earlier sessions are flushed (the scanner's signatures may
    /// have changed).
    pub fn on_connected(&mut self, now: Instant) {
        self.on_disconnected(now);
        // A pending TTL flush also covers marks no longer counted (one the
        // edge failed to remove again): flush those too.
        if !self.marks.marked.is_empty() || self.marks.flush_due.is_some() {
            self.flush_ignore_marks(FlushReason::Connected);
        }
        let config = SessionConfig {
            query_timeout: self.timeout,
            fail_mode: self.fail_mode,
            os: OsKind::Linux,
            agent_version: AgentVersion {
                major: 0,
                minor: 1,
                patch: 0,
            },
            capabilities: if self.host_actions {
                Capabilities(
                    Capabilities::READ_CONTENT.0
                        | Capabilities::REMEDIATE.0
                        | Capabilities::SCAN_TREE.0
                        | Capabilities::POLICY.0
                        | Capabilities::RESTORE.0,
                )
            } else {
                Capabilities::READ_CONTENT
            },
            guest_name: &self.guest_name,
        }
        .with_inline_content(self.inline_content);
        let mut s = Box::new(AgentSession::new(&config));
        s.start(now);
        self.session = Some(s);
        self.pump(now, false);
    }

    /// The connection broke (or the edge closed it) at `now`: queries in
    /// flight are answered by the fail mode; unsent bytes are dropped.
    pub fn on_disconnected(&mut self, now: Instant) {
        if let Some(s) = self.session.as_mut() {
            s.close(now);
            self.pump(now, true);
        }
        self.session = None;
        self.outbox.clear();
    }

    /// Bytes received from the scanner; returns how many were taken. Fewer
    /// than given while a restore's chunk waits for room (protocol §14.7,
    /// backpressure): keep the rest, stop reading the connection, and feed
    /// it again after [`restore_chunk_written`](Self::restore_chunk_written).
    pub fn on_receive(&mut self, bytes: &[u8], now: Instant) -> usize {
        let Some(s) = self.session.as_mut() else {
            return bytes.len();
        };
        let n = s.receive_some(bytes, now);
        self.pump(now, false);
        n
    }

    /// The edge wrote a chunk of restore `id` (or gave up on it): room for
    /// the next one.
    pub fn restore_chunk_written(&mut self, id: u64, now: Instant) {
        if let Some((r, n)) = self.restore_window.as_mut()
            && *r == id
        {
            *n = n.saturating_sub(1);
        }
        self.pump(now, false);
    }

    /// `FAN_CLOSE_WRITE` on (`dev`, `ino`): forget every verdict of the file
    /// (the edge removes its ignore mark, if any, with the event's
    /// descriptor).
    pub fn on_close_write(&mut self, dev: u64, ino: u64) {
        self.marks.marked.remove(&(dev, ino));
        let id = FileKey::with_u64_id(dev, ino, 0, 0).file_id;
        let n = self.cache().invalidate(dev, &id);
        self.stats.invalidations += n as u64;
        for p in self.pending.values_mut() {
            if p.key
                .is_some_and(|k| k.volume_serial == dev && k.file_id == id)
            {
                p.dirty = true;
            }
        }
    }

    /// One permission event at `now`. Its answer comes out of
    /// [`poll_action`](Self::poll_action), now or later.
    pub fn on_perm_event(&mut self, ev: &PermEvent<'_>, now: Instant) {
        self.stats.events += 1;
        let is_directory = match ev.stat.map(|s| s.file_type) {
            Some(FileType::Other) => {
                self.stats.not_regular += 1;
                self.respond(ev.token, true, Why::NotRegularFile);
                return;
            }
            Some(FileType::Directory) => true,
            _ => false,
        };
        let text = String::from_utf8_lossy(ev.path);
        let desired_access = match ev.access {
            Access::Open => FILE_READ_DATA,
            Access::Exec => FILE_READ_DATA | FILE_EXECUTE,
        };
        let request = OpenRequest {
            is_directory,
            is_volume_open: false,
            is_paging_file: false,
            requestor_kernel_mode: false,
            process_id: ev.pid,
            path: PathRef::Utf8(&text),
            file_size: ev.stat.map(|s| s.size),
            desired_access,
            create_disposition: FILE_OPEN,
            own_io: ev.pid == self.own_pid,
        };
        if let OpenDecision::Skip(reason) = self.policy.decide(&request) {
            self.stats.skipped += 1;
            self.respond(ev.token, true, Why::Skipped(reason));
            return;
        }
        if ev.image.is_some_and(|i| self.host.image_excluded(i)) {
            self.stats.skipped += 1;
            self.respond(ev.token, true, Why::Skipped(SkipReason::ExcludedProcess));
            return;
        }
        let key = ev.stat.map(|s| s.key());
        let hit = key.and_then(|k| self.cache().get(&k, now));
        if let Some(v) = hit {
            self.stats.cache_hits += 1;
            self.respond(ev.token, v.is_allow(), Why::Cached(v));
            return;
        }
        if let (Some(max), Some(st)) = (self.host.max_scan_size, ev.stat)
            && st.size > max
        {
            self.stats.fail_mode_too_large += 1;
            let allow = self.fail_mode == FailMode::Open;
            self.respond(ev.token, allow, Why::TooLarge);
            return;
        }
        let Some(session) = self.session.as_mut() else {
            self.stats.fail_mode_disconnected += 1;
            let allow = self.fail_mode == FailMode::Open;
            self.respond(ev.token, allow, Why::Disconnected);
            return;
        };
        let path = match std::str::from_utf8(ev.path) {
            Ok(p) => FilePath::Utf8(p),
            Err(_) => FilePath::Bytes(ev.path),
        };
        let event = FileEvent {
            kind: match ev.access {
                Access::Open => EventKind::Open,
                Access::Exec => EventKind::Execute,
            },
            process_id: ev.pid,
            desired_access,
            create_disposition: CreateDisposition::Open,
            file: ev.stat.map(|s| s.identity()).unwrap_or_default(),
            path,
            // Without a stat the identity is zeros: no content could match it.
            content: if ev.stat.is_some() {
                ev.content
            } else {
                InlineContent::NONE
            },
        };
        match session.submit_detailed(&event, now) {
            Ok(sent) => {
                let query = sent.query;
                self.stats.events_sent += 1;
                if sent.whole_file {
                    self.stats.inline_whole += 1;
                } else if sent.content_len > 0 {
                    self.stats.inline_partial += 1;
                }
                debug_assert!(!self.pending.contains_key(&ev.token), "token reused");
                self.pending.insert(
                    ev.token,
                    Pending {
                        deadline: now.saturating_add(self.timeout),
                        key,
                        stat: ev.stat,
                        query,
                        dirty: false,
                        on_demand: false,
                    },
                );
                self.by_query.insert(query, ev.token);
                self.pump(now, false);
            }
            Err(_full) => {
                self.stats.fail_mode_overloaded += 1;
                let allow = self.fail_mode == FailMode::Open;
                self.respond(ev.token, allow, Why::Overloaded);
            }
        }
    }

    /// The read `read_id` (from [`Action::Read`]) finished.
    pub fn read_completed(&mut self, read_id: u64, outcome: ReadOutcome<'_>, now: Instant) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        self.stats.reads += 1;
        for _ in 0..2 {
            match s.read_completed(read_id, outcome, now) {
                Err(ReadError::Busy) => drain_tx(s, &mut self.outbox),
                Ok(()) | Err(ReadError::UnknownRead) => break,
            }
        }
        self.pump(now, false);
    }

    /// The earliest time [`on_timeout`](Self::on_timeout) has work to do.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        let watchdog = self.pending.values().map(|p| p.deadline).min();
        let session = self.session.as_ref().and_then(|s| s.next_deadline());
        [watchdog, session, self.marks.flush_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Applies every timer due at `now`: the session's (query deadlines,
    /// heartbeats, handshake), the watchdog's, and the ignore marks' TTL.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.marks.flush_due.is_some_and(|d| now.has_reached(d)) {
            self.flush_ignore_marks(FlushReason::Ttl);
        }
        if let Some(s) = self.session.as_mut() {
            s.on_timeout(now);
            self.pump(now, false);
        }
        let due: Vec<Token> = self
            .pending
            .iter()
            .filter(|(_, p)| now.has_reached(p.deadline))
            .map(|(t, _)| *t)
            .collect();
        for token in due {
            if !self.is_on_demand(token) {
                self.stats.fail_mode_watchdog += 1;
            }
            let allow = self.fail_mode == FailMode::Open;
            self.respond(token, allow, Why::Watchdog);
        }
    }

    /// Stops: every pending event is answered by the fail mode and the
    /// session says `Goodbye` (left in [`pending_tx`](Self::pending_tx)).
    pub fn shutdown(&mut self, now: Instant) {
        let tokens: Vec<Token> = self.pending.keys().copied().collect();
        for token in tokens {
            if !self.is_on_demand(token) {
                self.stats.fail_mode_shutdown += 1;
            }
            let allow = self.fail_mode == FailMode::Open;
            self.respond(token, allow, Why::Shutdown);
        }
        if let Some(s) = self.session.as_mut() {
            s.close(now);
            self.pump(now, true);
        }
        self.session = None;
    }

    /// The next action for the edge.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Bytes waiting to be sent to the scanner.
    #[must_use]
    pub fn pending_tx(&self) -> &[u8] {
        &self.outbox
    }

    /// `n` bytes of [`pending_tx`](Self::pending_tx) were sent.
    pub fn consume_tx(&mut self, n: usize) {
        let n = n.min(self.outbox.len());
        self.outbox.drain(..n);
    }

    fn is_on_demand(&self, token: Token) -> bool {
        self.pending.get(&token).is_some_and(|p| p.on_demand)
    }

    /// Answers `token` if it is still pending (or was never queued), once.
    fn respond(&mut self, token: Token, allow: bool, why: Why) {
        if let Some(p) = self.pending.remove(&token) {
            self.by_query.remove(&p.query);
            if p.on_demand {
                let (decision, threat) = match why {
                    Why::Host { decision, threat } => (Some(decision), threat),
                    _ => (None, String::new()),
                };
                self.actions.push_back(Action::OnDemandDone {
                    token,
                    decision,
                    threat,
                });
                return;
            }
        }
        if !allow {
            self.stats.denied += 1;
        }
        self.actions
            .push_back(Action::Respond { token, allow, why });
    }

    /// Moves the session's outputs into actions and the outbox.
    fn pump(&mut self, now: Instant, closing_locally: bool) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut closed = None;
        let mut answers = Vec::new();
        loop {
            drain_tx(s, &mut self.outbox);
            let Some(ev) = s.poll_event() else { break };
            match ev {
                SessionEvent::Connected { version } => {
                    self.stats.sessions += 1;
                    self.actions.push_back(Action::Connected { version });
                }
                SessionEvent::Verdict(v) => {
                    if let Some(token) = self.by_query.remove(&v.query)
                        && let Some(p) = self.pending.get(&token).copied()
                    {
                        answers.push((token, p, v));
                    }
                }
                SessionEvent::ReadJob {
                    read_id,
                    query,
                    offset,
                    length,
                } => match self.by_query.get(&query) {
                    Some(&token) if self.pending.contains_key(&token) => {
                        self.actions.push_back(Action::Read {
                            token,
                            read_id,
                            offset,
                            length,
                        });
                    }
                    _ => {
                        for _ in 0..2 {
                            match s.read_completed(read_id, ReadOutcome::Cancelled, now) {
                                Err(ReadError::Busy) => drain_tx(s, &mut self.outbox),
                                _ => break,
                            }
                        }
                    }
                },
                SessionEvent::Closed { reason } => closed = Some(reason),
                SessionEvent::HostRequest => {}
                SessionEvent::ScanCancelled { id } => {
                    self.actions.push_back(Action::ScanCancelled { id });
                }
            }
        }
        let mut taken = Vec::new();
        while let Some(req) = s.host_request() {
            let id = req.id;
            match req.message {
                Message::Restore(r) => {
                    self.restore_window = Some((id, 0));
                    taken.push(Taken::Job(HostJob::Restore {
                        id,
                        path: path_bytes(&r.path),
                        size: r.size,
                        deadline: Duration::from_millis(r.deadline_ms.into()),
                    }));
                }
                Message::RestoreData(d) => {
                    // Backpressure: no more than RESTORE_WINDOW chunks out.
                    match self.restore_window.as_mut() {
                        Some((r, n)) if *r == id && *n >= RESTORE_WINDOW => break,
                        Some((r, n)) if *r == id => *n += 1,
                        _ => {}
                    }
                    taken.push(Taken::Chunk(HostJob::RestoreData {
                        id,
                        offset: d.offset,
                        data: d.data.to_vec(),
                        last: d.last,
                    }));
                }
                Message::Remediate(r) => taken.push(Taken::Job(HostJob::Remediate {
                    id,
                    action: r.action,
                    path: path_bytes(&r.path),
                    file: r.file,
                    deadline: Duration::from_millis(r.deadline_ms.into()),
                })),
                Message::ScanTree(t) => taken.push(Taken::Job(HostJob::Scan {
                    id,
                    root: path_bytes(&t.root),
                    flags: t.flags,
                    max_in_flight: t.max_in_flight,
                    max_depth: t.max_depth,
                    progress_interval: Duration::from_millis(t.progress_interval_ms.into()),
                    max_file_size: t.max_file_size,
                })),
                Message::Policy(p) => taken.push(Taken::Policy(id, HostPolicy::from_wire(&p))),
                // The session hands over nothing else.
                _ => {}
            }
            s.pop_host_request();
        }
        if let Some(id) = s.take_aborted_restore() {
            if self.restore_window.is_some_and(|(r, _)| r == id) {
                self.restore_window = None;
            }
            taken.push(Taken::Chunk(HostJob::RestoreAborted { id }));
        }
        drain_tx(s, &mut self.outbox);
        if closed.is_some() {
            self.session = None;
        }
        for t in taken {
            if !matches!(t, Taken::Chunk(_)) {
                self.stats.host_requests += 1;
            }
            match t {
                Taken::Job(job) | Taken::Chunk(job) => {
                    self.actions.push_back(Action::HostRequest(job));
                }
                Taken::Policy(id, policy) => {
                    let result = self.apply_policy(&policy);
                    self.complete_action(id, result);
                }
            }
        }
        for (token, p, v) in answers {
            if p.on_demand {
                if let (VerdictSource::Host, Some(k), false, Decision::Allow | Decision::Deny) =
                    (v.source, p.key, p.dirty, v.decision)
                {
                    let ttl = self.host.cap_ttl(v.cache_ttl_secs);
                    if ttl > 0 {
                        let c = if v.decision == Decision::Allow {
                            CachedVerdict::Allow
                        } else {
                            CachedVerdict::Deny { threat_id: 0 }
                        };
                        self.cache()
                            .insert(k, c, now, Duration::from_secs(ttl.into()));
                    }
                }
                let why = match v.source {
                    VerdictSource::Host => Why::Host {
                        decision: v.decision,
                        threat: v.threat.as_str().to_string(),
                    },
                    _ => Why::SessionDeadline,
                };
                self.respond(token, v.allows(), why);
                continue;
            }
            let why = match v.source {
                VerdictSource::Host => {
                    let cached = match v.decision {
                        Decision::Allow => Some(CachedVerdict::Allow),
                        Decision::Deny => Some(CachedVerdict::Deny { threat_id: 0 }),
                        Decision::AllowNoCache => None,
                    };
                    if let (Some(c), Some(k), false, ttl @ 1..) =
                        (cached, p.key, p.dirty, self.host.cap_ttl(v.cache_ttl_secs))
                    {
                        let ttl = Duration::from_secs(ttl.into());
                        self.cache().insert(k, c, now, ttl);
                        if let (CachedVerdict::Allow, Some(st)) = (c, p.stat) {
                            self.want_ignore_mark(token, st, now, ttl);
                        }
                    }
                    if v.allows() {
                        self.stats.host_allowed += 1;
                    } else {
                        self.stats.host_denied += 1;
                    }
                    Why::Host {
                        decision: v.decision,
                        threat: v.threat.as_str().to_string(),
                    }
                }
                VerdictSource::Deadline(_) => {
                    self.stats.fail_mode_deadline += 1;
                    Why::SessionDeadline
                }
                VerdictSource::Local(_) => {
                    self.stats.fail_mode_session_closed += 1;
                    Why::SessionClosed
                }
            };
            // A fail-mode answer follows the fail mode in effect now (a
            // host policy may have changed it since the query was sent).
            let allow = match v.source {
                VerdictSource::Host => v.allows(),
                _ => self.fail_mode == FailMode::Open,
            };
            self.respond(token, allow, why);
        }
        if let Some(reason) = closed
            && !closing_locally
        {
            self.actions.push_back(Action::Closed { reason });
        }
    }
}

/// Host actions (protocol §14): the answers the edge owes, `OnDemand`
/// events, the host policy and `Health`.
impl AgentCore {
    /// Applies a host `Policy` (§14.6) at once or not at all and says how
    /// (the `ActionResult` to send). Pinned fields are left alone and
    /// reported; a policy that does not fit the agent's tables is
    /// `Rejected` and changes nothing.
    pub fn apply_policy(&mut self, p: &HostPolicy) -> ActionResult {
        let applied = match self.host.prepare(p, &self.policy) {
            Ok(a) => a,
            Err(why) => {
                let mut r = ActionResult::status(ActionStatus::Rejected);
                r.value = self.host.version;
                self.actions
                    .push_back(Action::PolicyApplied(PolicyChange::rejected(
                        p.version, why,
                    )));
                return r;
            }
        };
        let pinned = applied.pinned;
        let change = self.host.commit(
            applied,
            &mut self.policy,
            &mut self.fail_mode,
            &mut self.timeout,
        );
        if let Some(s) = self.session.as_mut() {
            s.set_on_access(self.timeout, self.fail_mode);
        }
        if change.cache_ttl_changed {
            // Verdicts kept longer than the new maximum go.
            *self.cache() = ShardedCache::new();
            if !self.marks.marked.is_empty() || self.marks.flush_due.is_some() {
                self.flush_ignore_marks(FlushReason::Policy);
            }
        }
        self.actions.push_back(Action::PolicyApplied(change));
        ActionResult {
            status: ActionStatus::Done,
            error: None,
            value: self.host.version,
            pinned: pinned.0,
        }
    }

    /// The host policy version in effect (0: none received).
    #[must_use]
    pub fn policy_version(&self) -> u64 {
        self.host.version
    }

    /// Whether verdicts are cached (a host policy's `cache_ttl_max_secs`
    /// 0 turns caching off).
    #[must_use]
    pub fn caching(&self) -> bool {
        self.host.cap_ttl(1) > 0
    }

    /// The policy fields pinned locally.
    #[must_use]
    pub fn pinned(&self) -> PolicyFields {
        self.host.pinned
    }

    /// The query deadline in effect.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The host policy's `max_scan_size` in effect (`None`: no limit).
    #[must_use]
    pub fn max_scan_size(&self) -> Option<u64> {
        self.host.max_scan_size
    }

    /// Whether a host policy excludes process images: the edge then gives
    /// each event's [`PermEvent::image`].
    #[must_use]
    pub fn wants_process_images(&self) -> bool {
        self.host.has_images()
    }

    /// Answers the host request `id` (a `Remediate`, `Policy` or `Restore`).
    pub fn complete_action(&mut self, id: u64, result: ActionResult) -> bool {
        if self.restore_window.is_some_and(|(r, _)| r == id) {
            self.restore_window = None;
        }
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let ok = s.complete_action(id, result).is_ok();
        drain_tx(s, &mut self.outbox);
        ok
    }

    /// How many more `OnDemand` events the scan may submit now.
    #[must_use]
    pub fn on_demand_capacity(&self, max_in_flight: u16) -> usize {
        let ours = self.pending.values().filter(|p| p.on_demand).count();
        self.session
            .as_ref()
            .map_or(0, |s| s.on_demand_capacity(max_in_flight))
            .min(SCAN_SLOTS.saturating_sub(ours))
    }

    /// Sends one file of a host scan as an `OnDemand` event (§14.4) under
    /// the edge's `token`; its end comes as [`Action::OnDemandDone`].
    /// `false` when it could not be sent (no session, no slot): nothing
    /// will come for it.
    pub fn submit_on_demand(
        &mut self,
        token: Token,
        path: &[u8],
        stat: FileStat,
        content: InlineContent<'_>,
        now: Instant,
    ) -> bool {
        let Some(session) = self.session.as_mut() else {
            return false;
        };
        let event = FileEvent {
            kind: EventKind::OnDemand,
            process_id: 0,
            desired_access: 0,
            create_disposition: CreateDisposition::Open,
            file: stat.identity(),
            path: match std::str::from_utf8(path) {
                Ok(p) => FilePath::Utf8(p),
                Err(_) => FilePath::Bytes(path),
            },
            content,
        };
        let Ok(sent) = session.submit_detailed(&event, now) else {
            return false;
        };
        self.stats.events_sent += 1;
        self.stats.on_demand_sent += 1;
        self.pending.insert(
            token,
            Pending {
                deadline: now.saturating_add(self.timeout),
                key: Some(stat.key()),
                stat: Some(stat),
                query: sent.query,
                dirty: false,
                on_demand: true,
            },
        );
        self.by_query.insert(sent.query, token);
        self.pump(now, false);
        true
    }

    /// Reports a scan's counters (`ScanProgress`); best effort.
    pub fn scan_progress(&mut self, id: u64, counters: ScanCounters) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let ok = s.scan_progress(id, counters);
        drain_tx(s, &mut self.outbox);
        ok
    }

    /// Ends the scan `id` (its one `ScanDone`).
    pub fn scan_done(&mut self, id: u64, done: ScanDone) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let ok = s.scan_done(id, done).is_ok();
        drain_tx(s, &mut self.outbox);
        ok
    }

    /// Sends a `Health` report (§14.8) if a version-2 session is open.
    pub fn send_health(&mut self, health: &Health) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let ok = s.send_health(health);
        drain_tx(s, &mut self.outbox);
        ok
    }

    /// The negotiated protocol version (0: no open session).
    #[must_use]
    pub fn version(&self) -> u16 {
        self.session
            .as_ref()
            .filter(|s| s.is_connected())
            .map_or(0, |s| s.version())
    }
}

fn drain_tx(s: &mut AgentSession, outbox: &mut Vec<u8>) {
    let mut buf = [0u8; 16 * 1024];
    while let Some(n) = s.poll_transmit(&mut buf) {
        outbox.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests;
