//! The tokio edge: fanotify events, the scanner connection, timers and host
//! reads around the sans-IO [`AgentCore`].
//!
//! One task owns the core and runs a single `select!` loop. Every permission
//! event read from the group is stored (with its descriptor) under a token
//! until the core's [`Action::Respond`] for it; reads for the host run on the
//! blocking pool with `pread` on the event's descriptor. At most
//! `max_in_flight` events are held: beyond that the loop stops reading the
//! group and the kernel queues the rest.
//!
//! The cold path, hop by hop (protocol version 2 with inline content): the
//! kernel's event wakes the loop itself (the group's descriptor is in the
//! loop's reactor), which reads the file's first bytes with the event
//! ([`crate::intake`]), runs it through the core, which encodes the
//! `FileEvent` with the content, and writes it to the socket at once in the
//! same turn ([`Edge::try_flush`], no second pass through the
//! `select!`); the `Verdict` wakes the loop, which answers the kernel and
//! puts the ignore mark in that same turn. A small file needs no
//! `ReadRequest`, so no blocking-pool thread and no second round trip.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::fanotify::FanotifyEvent;
use thinagent_guest::{
    FailMode, Instant, Level, NtStatus, OpenPolicy, PathRef, PathStyle, Reconnect, ReconnectConfig,
};
use thinagent_protocol::{
    ActionResult, ActionStatus, Decision, Health, HealthState, InlineContent, OsError,
    PolicyFields, ReadOutcome, RemediateAction, ScanCounters, ScanDone, ScanFlags, ScanStatus,
};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::actions::{self, ScanFilter, ScanMsg, WalkConfig, WalkCounters, WalkEnd};
use crate::connect::{ConnectUrl, Connection, Stream};
use crate::core::{
    Access, Action, AgentCore, CoreConfig, FileStat, FlushReason, HostJob, PermEvent, PolicyChange,
    Stats, StopPlan, StopRequest, Token, Why, field_names, stop_plan, supersedes,
};
use crate::fanotify::{self, FanGroup, FanotifyError, LoopReads, MarkScope, Wait};
use crate::handover::{self, Inherited};
use crate::intake::{Arrival, Incoming, Intake};
use crate::logging::{Logger, routine};

/// How long after an open was checked a host scan keeps its reduced pace.
const SCAN_YIELD: Duration = Duration::from_millis(50);
/// A host scan's files in flight while opens are being checked.
const SCAN_IN_FLIGHT_UNDER_LOAD: u16 = 2;
/// How long one connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the loop leaves the fanotify group alone after a failed read
/// (`EMFILE`: the kernel answers that event itself; reading again at once
/// would only fail again).
const GROUP_RETRY: Duration = Duration::from_millis(10);
/// How long the last bytes (Goodbye) may take to leave at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(300);

/// Everything the agent needs to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The scanner.
    pub connect: ConnectUrl,
    /// Paths whose mount (or file system) is watched.
    pub watch: Vec<PathBuf>,
    /// Mount or file-system marks.
    pub scope: MarkScope,
    /// Path prefixes never checked.
    pub exclude: Vec<String>,
    /// What an event gets when the scanner cannot answer.
    pub fail_mode: FailMode,
    /// Per-event deadline.
    pub timeout: Duration,
    /// Most events held at once (1..=[`crate::core::SESSION_SLOTS`]).
    pub max_in_flight: usize,
    /// Files larger than this are not checked.
    pub max_file_size: Option<u64>,
    /// Processes whose opens are never checked.
    pub exclude_pids: Vec<u32>,
    /// Written once the marks are in place and the first connect attempt
    /// finished.
    pub ready_file: Option<PathBuf>,
    /// Period of the INFO stats line (`None`: only at exit).
    pub stats_interval: Option<Duration>,
    /// Sent to the scanner in `Hello`.
    pub guest_name: String,
    /// Reconnect pacing.
    pub reconnect: ReconnectConfig,
    /// Most fanotify ignore marks at once (the kernel-side verdict cache;
    /// 0: off, `--no-kernel-cache`).
    pub kernel_cache_entries: usize,
    /// Protocol version 2's inline content: announce `INLINE_CONTENT` and
    /// read files up to the scanner's `max_inline_len` with their event
    /// (`false`: `--no-inline`, every byte on the scanner's request).
    pub inline_content: bool,
    /// Host actions (protocol §14: remediation, scans, policy, health);
    /// `false`: `--no-host-actions`.
    pub host_actions: bool,
    /// Policy fields a host policy may not change (`--pin-policy`).
    pub pinned: PolicyFields,
    /// Where lines go.
    pub logger: Logger,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// fanotify could not be set up.
    #[error(transparent)]
    Fanotify(#[from] FanotifyError),
    /// A setting is not usable.
    #[error("{0}")]
    Config(String),
    /// An I/O failure of the edge.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl AgentError {
    /// `true` for command-line or privilege errors (exit status 2).
    #[must_use]
    pub fn is_usage(&self) -> bool {
        match self {
            AgentError::Fanotify(e) => e.is_usage(),
            AgentError::Config(_) => true,
            AgentError::Io { .. } => false,
        }
    }
}

/// Where the agent's fanotify group comes from.
#[derive(Debug)]
pub enum GroupSource {
    /// A new group (`fanotify_init`).
    New,
    /// One a previous agent handed over ([`handover::take_inherited`]).
    Inherited(Inherited),
    /// This process's own, kept after a re-exec that failed.
    Kept(Arc<FanGroup>),
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The final counters.
    pub stats: Stats,
    /// What stopped it.
    pub request: StopRequest,
    /// What was done with the group.
    pub plan: StopPlan,
    /// The group (marks still in place after [`StopPlan::HandOver`]).
    pub group: Arc<FanGroup>,
}

/// A finished host read: its id, then the bytes and whether the file ended.
type ReadResult = (u64, io::Result<(Vec<u8>, bool)>);

/// A finished remediation: request id, action, path, result.
type RemediationDone = (u64, RemediateAction, String, ActionResult);

/// What a restore's writer thread reports.
enum RestoreReport {
    /// A chunk of restore `id` is written (or dropped after a failure).
    Written(u64),
    /// Restore `id` ended: its path, the answer, and on `Done` the new
    /// file's (`st_dev`, `st_ino`).
    Done(u64, String, ActionResult, Option<(u64, u64)>),
}

/// A chunk for a restore's writer thread.
struct RestoreChunk {
    offset: u64,
    data: Vec<u8>,
    last: bool,
}

/// Writes restore `id` (§14.7) on its own thread, off the loop: the file
/// ([`actions::RestoreFile`]) from the chunks on `rx`, in order; reports
/// each chunk written and the end. A channel closed before the `LAST` chunk
/// (the session ended the restore, or the connection) leaves nothing.
fn restore_writer(
    id: u64,
    path: &[u8],
    size: u64,
    deadline: std::time::Instant,
    rx: &std::sync::mpsc::Receiver<RestoreChunk>,
    report: &tokio::sync::mpsc::UnboundedSender<RestoreReport>,
) {
    let text = String::from_utf8_lossy(path).into_owned();
    let end = |result: ActionResult, key| {
        let _ = report.send(RestoreReport::Done(id, text.clone(), result, key));
    };
    let mut file = match actions::RestoreFile::create(path, size, id) {
        Ok(f) => f,
        Err(result) => return end(result, None),
    };
    while let Ok(chunk) = rx.recv() {
        let written = file.write_at(chunk.offset, &chunk.data);
        let _ = report.send(RestoreReport::Written(id));
        if let Err(result) = written {
            return end(result, None);
        }
        if chunk.last {
            let (result, key) = file.finish(deadline);
            return end(result, key);
        }
    }
}

/// The host scan running (one at a time, §14.4).
struct ScanRun {
    id: u64,
    root: String,
    max_in_flight: u16,
    progress_interval: Option<Duration>,
    next_progress: Option<tokio::time::Instant>,
    counters: Arc<WalkCounters>,
    rx: tokio::sync::mpsc::Receiver<ScanMsg>,
    walk_end: Option<WalkEnd>,
    /// `OnDemand` events sent and not yet judged: their paths.
    outstanding: HashMap<Token, String>,
    scanned: u64,
    denied: u64,
    bytes: u64,
    /// Events that ended without a verdict (deadline).
    errors: u64,
    started: std::time::Instant,
}

impl ScanRun {
    fn counters(&self) -> ScanCounters {
        ScanCounters {
            files_seen: self.counters.seen.load(Ordering::Relaxed),
            files_scanned: self.scanned,
            files_denied: self.denied,
            files_skipped: self.counters.skipped.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed) + self.errors,
            bytes: self.bytes,
        }
    }
}

async fn recv_scan(scan: &mut Option<ScanRun>) -> Option<ScanMsg> {
    match scan {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

fn scan_status_name(s: ScanStatus) -> &'static str {
    match s {
        ScanStatus::Completed => "completed",
        ScanStatus::Cancelled => "cancelled",
        ScanStatus::NotFound => "root not found",
        ScanStatus::Failed => "failed",
        ScanStatus::Busy => "busy",
        ScanStatus::Unsupported => "unsupported",
    }
}

fn action_status_name(s: ActionStatus) -> &'static str {
    match s {
        ActionStatus::Done => "done",
        ActionStatus::DoneOnClose => "done on close",
        ActionStatus::NotFound => "not found",
        ActionStatus::Changed => "changed (another file is at the path now: left alone)",
        ActionStatus::Failed => "failed",
        ActionStatus::Unsupported => "unsupported",
        ActionStatus::Busy => "busy",
        ActionStatus::Rejected => "rejected",
    }
}

/// The basename of `/proc/PID/exe` (the process image name), for the host
/// policy's process exclusions.
fn process_image(pid: u32) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(exe.file_name()?.as_bytes().to_vec())
}

/// One held permission event.
struct Held {
    event: FanotifyEvent,
    path: String,
    pid: u32,
    access: Access,
    /// Which of the host's reads of it the loop serves itself, as for the
    /// bytes read with the event: no blocking-pool hop per read; the rest
    /// go to the pool.
    loop_reads: LoopReads,
}

/// Builds the policy from the configuration.
fn build_policy(config: &AgentConfig) -> Result<OpenPolicy, AgentError> {
    let mut policy = OpenPolicy::new(PathStyle::Posix);
    policy.set_max_file_size(config.max_file_size);
    for p in &config.exclude {
        policy
            .add_excluded_prefix(PathRef::Utf8(p.trim_end_matches('/')))
            .map_err(|e| AgentError::Config(format!("--exclude {p:?}: {e}")))?;
    }
    for pid in &config.exclude_pids {
        policy
            .add_excluded_process(*pid)
            .map_err(|e| AgentError::Config(format!("--exclude-pid {pid}: {e}")))?;
    }
    Ok(policy)
}

/// A connection's error as the log says it: a scanner that refused this
/// guest's TLS certificate is named as such, with what to do.
fn connection_error(e: &io::Error) -> String {
    thinagent_guest_tls::certificate_refusal(e).unwrap_or_else(|| e.to_string())
}

fn fail_mode_name(mode: FailMode) -> &'static str {
    match mode {
        FailMode::Open => "fail-open",
        FailMode::Closed => "fail-closed",
    }
}

/// The counters as one line's text.
#[must_use]
pub fn stats_text(s: &Stats) -> String {
    format!(
        "events={} skipped={} not_regular={} cache_hits={} allowed_by_scanner={} \
         denied_by_scanner={} denied={} fail_mode_decisions={} (disconnected={} deadline={} \
         watchdog={} session_closed={} overloaded={} shutdown={}) reads={} inline_whole={} \
         inline_partial={} invalidations={} ignore_marks={} ignore_marks_failed={} \
         ignore_mark_flushes={} too_large={} events_sent={} on_demand_sent={} sessions={} \
         host_requests={} policy_version={}",
        s.events,
        s.skipped,
        s.not_regular,
        s.cache_hits,
        s.host_allowed,
        s.host_denied,
        s.denied,
        s.fail_mode_total(),
        s.fail_mode_disconnected,
        s.fail_mode_deadline,
        s.fail_mode_watchdog,
        s.fail_mode_session_closed,
        s.fail_mode_overloaded,
        s.fail_mode_shutdown,
        s.reads,
        s.inline_whole,
        s.inline_partial,
        s.invalidations,
        s.ignore_marks,
        s.ignore_marks_failed,
        s.ignore_mark_flushes,
        s.fail_mode_too_large,
        s.events_sent,
        s.on_demand_sent,
        s.sessions,
        s.host_requests,
        s.policy_version,
    )
}

async fn read_opt(rd: &mut Option<ReadHalf<Box<dyn Stream>>>, buf: &mut [u8]) -> io::Result<usize> {
    match rd {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn write_opt(wr: &mut Option<WriteHalf<Box<dyn Stream>>>, data: &[u8]) -> io::Result<usize> {
    match wr {
        Some(w) if !data.is_empty() => w.write(data).await,
        _ => std::future::pending().await,
    }
}

async fn join_opt<T>(
    h: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The running agent's state outside the core.
struct Edge {
    config: AgentConfig,
    log: Logger,
    fan: Arc<FanGroup>,
    /// Cache hits, the agent's own opens and inline reads, done as each
    /// event is read.
    intake: Intake,
    core: AgentCore,
    held: HashMap<Token, Arc<Held>>,
    /// Permission events read but not yet given to the core (a read returns
    /// up to ~170 events; at most `max_in_flight` are held at once).
    backlog: VecDeque<Arrival>,
    next_token: Token,
    clock: std::time::Instant,
    rd: Option<ReadHalf<Box<dyn Stream>>>,
    wr: Option<WriteHalf<Box<dyn Stream>>>,
    reconnect: Reconnect,
    next_connect: Option<tokio::time::Instant>,
    connecting: Option<tokio::task::JoinHandle<io::Result<Connection>>>,
    ready_written: bool,
    disconnected_decisions: u64,
    read_tx: tokio::sync::mpsc::UnboundedSender<ReadResult>,
    remediation_tx: tokio::sync::mpsc::UnboundedSender<RemediationDone>,
    restore_tx: tokio::sync::mpsc::UnboundedSender<RestoreReport>,
    /// The restore being written: its id and its writer's channel.
    restore: Option<(u64, std::sync::mpsc::Sender<RestoreChunk>)>,
    /// Bytes read from the scanner the core could not take yet (a restore
    /// chunk waits for room): fed again before reading more.
    rx_pending: Vec<u8>,
    /// The host scan running.
    scan: Option<ScanRun>,
    /// Open files of `OnDemand` events not yet judged (host reads are
    /// served from them).
    scan_files: HashMap<Token, Arc<OwnedFd>>,
    /// When the last `Health` went out, and what it said (uptime aside).
    health_sent: Option<(std::time::Instant, Health)>,
    /// When the last open went to the core (the scan yields to opens).
    last_on_access: Option<std::time::Instant>,
}

impl Edge {
    /// The core's counters plus the intake's cache hits and own opens.
    fn stats(&self) -> Stats {
        let mut s = self.core.stats();
        let fast = self.intake.fast_hits;
        s.events += fast;
        s.cache_hits += fast;
        let own = self.intake.own_hits;
        s.events += own;
        s.skipped += own;
        s
    }

    /// The `Health` report (§14.8) as of now.
    fn health(&self) -> Health {
        let s = self.stats();
        let mut state = HealthState::ON_ACCESS;
        if self.core.caching() {
            state = state.union(HealthState::CACHE);
        }
        if self.scan.is_some() {
            state = state.union(HealthState::SCAN_RUNNING);
        }
        if self.core.pinned().0 != 0 {
            state = state.union(HealthState::POLICY_PINNED);
        }
        Health {
            policy_version: s.policy_version,
            state,
            fail_mode: match self.core.fail_mode() {
                FailMode::Open => thinagent_protocol::FailMode::Open,
                FailMode::Closed => thinagent_protocol::FailMode::Closed,
            },
            uptime_ms: u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX),
            events_sent: s.events_sent,
            cache_hits: s.cache_hits,
            denied: s.host_denied,
            fail_decisions: s.fail_mode_total(),
            sessions: s.sessions,
        }
    }

    /// Sends `Health` when `force`d (right after the handshake) or when a
    /// value changed and the last one is at least 10 s old.
    fn maybe_send_health(&mut self, force: bool) {
        if !self.config.host_actions || self.core.version() < 2 {
            return;
        }
        let h = self.health();
        let same =
            |a: &Health, b: &Health| Health { uptime_ms: 0, ..*a } == Health { uptime_ms: 0, ..*b };
        let due = match &self.health_sent {
            None => true,
            Some((at, last)) => {
                at.elapsed()
                    >= Duration::from_millis(thinagent_protocol::HEALTH_MIN_INTERVAL_MS.into())
                    && !same(last, &h)
            }
        };
        if (force || due) && self.core.send_health(&h) {
            self.health_sent = Some((std::time::Instant::now(), h));
        }
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        let base = tokio::time::Instant::from_std(self.clock);
        base + Duration::from_nanos(at.as_nanos())
    }

    fn start_connect(&mut self) {
        let url = self.config.connect.clone();
        self.next_connect = None;
        self.connecting = Some(tokio::spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, url.connect()).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer within 5 s",
                )),
            }
        }));
    }

    fn schedule_reconnect(&mut self) {
        let delay = self.reconnect.on_closed(self.now());
        self.next_connect = Some(tokio::time::Instant::now() + delay);
        delay_log(self, delay);
    }

    fn write_ready(&mut self) {
        if self.ready_written {
            return;
        }
        self.ready_written = true;
        if let Some(path) = self.config.ready_file.clone() {
            // Never open a file on the loop's thread: if it is on a watched
            // mount, its permission event waits for this very thread.
            let log = self.log;
            tokio::task::spawn_blocking(move || {
                // Written aside and renamed: whoever waits for it never
                // sees it empty.
                let mut tmp = path.clone().into_os_string();
                tmp.push(".tmp");
                let written = std::fs::write(&tmp, format!("{}\n", std::process::id()))
                    .and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = written {
                    log.log(
                        Level::Error,
                        routine::DRIVER_ENTRY,
                        format_args!("cannot write the ready file {}: {e}", path.display()),
                    );
                }
            });
        }
    }

    fn on_connect_result(&mut self, result: io::Result<Connection>) {
        match result {
            Ok(conn) => {
                self.log.log(
                    Level::Info,
                    routine::VSOCK_CONNECT,
                    format_args!(
                        "connected to the scanner at {}{}",
                        self.config.connect,
                        conn.peer_pid
                            .map(|p| format!(" (scanner pid {p}, its opens are not checked)"))
                            .unwrap_or_default()
                    ),
                );
                let (rd, wr) = tokio::io::split(conn.stream);
                self.rd = Some(rd);
                self.wr = Some(wr);
                self.core.set_scanner_pid(conn.peer_pid);
                let now = self.now();
                self.reconnect.on_connected(now);
                self.core.on_connected(now);
            }
            Err(e) => {
                self.log.log_status(
                    Level::Warn,
                    routine::VSOCK_CONNECT,
                    NtStatus::STATUS_CONNECTION_REFUSED,
                    format_args!(
                        "cannot connect to the scanner at {}: {}; {} decides meanwhile",
                        self.config.connect,
                        connection_error(&e),
                        fail_mode_name(self.core.fail_mode())
                    ),
                );
                self.schedule_reconnect();
            }
        }
        self.write_ready();
    }

    fn drop_connection(&mut self, why: &str) {
        self.rd = None;
        self.wr = None;
        self.rx_pending.clear();
        // The writer sees its channel close and leaves nothing behind.
        self.restore = None;
        self.end_scan_with_session();
        self.core.on_disconnected(self.now());
        self.log.log_status(
            Level::Warn,
            routine::SESSION,
            NtStatus::STATUS_CONNECTION_RESET,
            format_args!(
                "connection to the scanner lost ({why}); {} decides until it is back",
                fail_mode_name(self.core.fail_mode())
            ),
        );
        self.schedule_reconnect();
    }

    /// Hands backlogged events to the core while fewer than
    /// `max_in_flight` are held.
    fn feed(&mut self) {
        while self.held.len() < self.config.max_in_flight {
            let Some(arrival) = self.backlog.pop_front() else {
                break;
            };
            self.on_perm(arrival);
        }
    }

    /// Events just read from the group: each answered at once when the
    /// intake can (cache hit, the agent's own open), else given to the core
    /// (a close-write invalidates before the next event is taken) or queued
    /// for it, in the order read.
    fn on_group_events(&mut self, events: Vec<FanotifyEvent>) {
        let now = self.now();
        for event in events {
            if let Some(incoming) = self.intake.take(&self.fan, event, now) {
                self.on_incoming(incoming);
            }
        }
    }

    /// Reading the group failed. `EMFILE`/`ENFILE`: the kernel could not
    /// open an event's file for us and answered that event itself.
    fn on_group_read_error(&self, e: &io::Error) {
        self.log.log(
            Level::Error,
            routine::FANOTIFY,
            format_args!("reading fanotify events: {e}"),
        );
    }

    /// What the intake left for the core.
    fn on_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Perm(arrival) => self.backlog.push_back(arrival),
            Incoming::CloseWrite { dev, ino } => self.core.on_close_write(dev, ino),
            Incoming::Overflow => self.log.log(
                Level::Warn,
                routine::FANOTIFY,
                format_args!("fanotify queue overflow: notification events were lost"),
            ),
        }
    }

    /// One permission event, which arrived at `arrived`: its deadline
    /// counts from then, not from when it left the backlog.
    fn on_perm(&mut self, arrival: Arrival) {
        let Arrival {
            event,
            access,
            arrived,
            stat,
            content,
            loop_reads,
        } = arrival;
        let token = self.next_token;
        self.next_token += 1;
        self.last_on_access = Some(std::time::Instant::now());
        let path = fanotify::path_of(&event);
        let pid = u32::try_from(event.pid()).unwrap_or(0);
        let held = Arc::new(Held {
            path: String::from_utf8_lossy(&path).into_owned(),
            event,
            pid,
            access,
            loop_reads,
        });
        self.held.insert(token, held);
        let image = if self.core.wants_process_images() {
            process_image(pid)
        } else {
            None
        };
        self.core.on_perm_event(
            &PermEvent {
                token,
                access,
                pid,
                path: &path,
                image: image.as_deref(),
                stat,
                content: content
                    .as_ref()
                    .map_or(InlineContent::NONE, |c| InlineContent {
                        bytes: &c.bytes,
                        whole_file: c.whole_file,
                    }),
            },
            arrived,
        );
        self.run_actions();
    }

    /// Writes what the core has queued for the scanner now, as far as the
    /// socket takes it without waiting, instead of on the `select!`'s next
    /// turn: a `FileEvent` leaves in the same turn that read its event from
    /// the group. The rest, if any, goes by the `select!`'s write branch.
    fn try_flush(&mut self) {
        let Some(wr) = self.wr.as_mut() else {
            return;
        };
        // One poll with a waker that does nothing: `Pending` means the
        // socket is full, and the `select!` polls the write again with its
        // own waker (the readiness this poll cleared is registered then).
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let tx = self.core.pending_tx();
            if tx.is_empty() {
                return;
            }
            match std::pin::Pin::new(&mut *wr).poll_write(&mut cx, tx) {
                std::task::Poll::Ready(Ok(n)) if n > 0 => self.core.consume_tx(n),
                std::task::Poll::Ready(Err(e)) => {
                    self.drop_connection(&connection_error(&e));
                    return;
                }
                _ => return,
            }
        }
    }

    /// Puts the ignore mark of [`Action::AddIgnoreMark`] and tells the core.
    fn add_ignore_mark(&mut self, token: Token, expect: FileStat) {
        let Some(held) = self.held.get(&token).cloned() else {
            self.core.ignore_mark_result(expect.dev, expect.ino, false);
            return;
        };
        let added = match self.fan.add_ignore_mark(&held.event) {
            Ok(()) => {
                if self.core.stats().ignore_marks == 0 {
                    self.log.log(
                        Level::Info,
                        routine::FANOTIFY,
                        format_args!(
                            "kernel verdict cache on: files the scanner allows get an ignore \
                             mark ({}), at most {} at once",
                            self.fan.ignore_mark_kind().unwrap_or("?"),
                            self.config.kernel_cache_entries
                        ),
                    );
                }
                // The verdict is for the version fstat saw when the event
                // came. Modified since, before the mark was in place (the
                // kernel clears the mark on modifications after): undo.
                if fanotify::stat_of(&held.event) == Some(expect) {
                    true
                } else {
                    let _ = self.fan.remove_ignore_mark(&held.event);
                    self.log.log(
                        Level::Debug,
                        routine::FANOTIFY,
                        format_args!("{} changed while it was scanned: no ignore mark", held.path),
                    );
                    false
                }
            }
            Err(e) => {
                let level = if self.core.stats().ignore_marks_failed == 0 {
                    Level::Warn
                } else {
                    Level::Debug
                };
                self.log.log(
                    level,
                    routine::FANOTIFY,
                    format_args!(
                        "cannot put an ignore mark on {}: {e}; its opens stay checked \
                         (through the verdict cache)",
                        held.path
                    ),
                );
                false
            }
        };
        self.core.ignore_mark_result(expect.dev, expect.ino, added);
    }

    fn flush_ignore_marks(&mut self, reason: FlushReason, marks: usize) {
        match self.fan.flush_ignore_marks() {
            Ok(()) => {
                let level = if reason == FlushReason::Ttl {
                    Level::Debug
                } else {
                    Level::Info
                };
                self.log.log(
                    level,
                    routine::FANOTIFY,
                    format_args!(
                        "kernel verdict cache flushed ({}): {marks} ignore marks removed",
                        reason.as_str()
                    ),
                );
            }
            Err(e) => self.log.log(
                Level::Error,
                routine::FANOTIFY,
                format_args!("cannot flush the ignore marks ({}): {e}", reason.as_str()),
            ),
        }
    }

    fn run_actions(&mut self) {
        self.run_core_actions();
        // What the intake reads with each event follows the session (0
        // until a version-2 session with inline content is open).
        self.intake
            .inline_len
            .store(self.core.max_inline_len(), Ordering::Relaxed);
    }

    fn run_core_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                // Before the answer that follows it, on purpose: once
                // answered, the opener may write, and a write before the
                // mark is in place would leave a mark on changed content
                // that the check after the mark cannot always see (same
                // size, within one timestamp tick).
                Action::AddIgnoreMark { token, expect } => self.add_ignore_mark(token, expect),
                Action::FlushIgnoreMarks { reason, marks } => {
                    self.flush_ignore_marks(reason, marks);
                }
                Action::Respond { token, allow, why } => self.respond(token, allow, &why),
                Action::Read {
                    token,
                    read_id,
                    offset,
                    length,
                } => match self.held.get(&token).cloned() {
                    Some(held) => {
                        // On the loop when it may; a read that would wait
                        // for the disk is done again on the pool.
                        let here = held
                            .loop_reads
                            .wait()
                            .map(|w| fanotify::pread_event(&held.event, offset, length, w))
                            .filter(
                                |r| !matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                            );
                        if let Some(result) = here {
                            let now = self.now();
                            self.core
                                .read_completed(read_id, read_outcome(&result), now);
                        } else {
                            let tx = self.read_tx.clone();
                            tokio::task::spawn_blocking(move || {
                                let r =
                                    fanotify::pread_event(&held.event, offset, length, Wait::Block);
                                let _ = tx.send((read_id, r));
                            });
                        }
                    }
                    None if self.scan_files.contains_key(&token) => {
                        let file = self.scan_files[&token].clone();
                        let tx = self.read_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let r = fanotify::pread_fd(&*file, offset, length, Wait::Block);
                            let _ = tx.send((read_id, r));
                        });
                    }
                    None => {
                        let now = self.now();
                        self.core
                            .read_completed(read_id, ReadOutcome::Cancelled, now);
                    }
                },
                Action::Connected { version } => {
                    // Before the line that says so: from here the intake
                    // reads files with their events.
                    self.intake
                        .inline_len
                        .store(self.core.max_inline_len(), Ordering::Relaxed);
                    self.log.log(
                        Level::Info,
                        routine::SESSION,
                        format_args!(
                            "session with the scanner open (protocol v{version}{})",
                            match self.core.max_inline_len() {
                                0 => String::new(),
                                n => format!(", files up to {n} bytes sent with their event"),
                            }
                        ),
                    );
                    self.maybe_send_health(true);
                    if self.disconnected_decisions > 0 {
                        self.log.log(
                            Level::Warn,
                            routine::SESSION,
                            format_args!(
                                "{} opens were decided by {} while the scanner was unreachable",
                                self.disconnected_decisions,
                                fail_mode_name(self.core.fail_mode())
                            ),
                        );
                        self.disconnected_decisions = 0;
                    }
                }
                Action::HostRequest(job) => self.on_host_request(job),
                Action::ScanCancelled { id } => {
                    if self.scan.as_ref().is_some_and(|s| s.id == id) {
                        self.finish_scan(ScanStatus::Cancelled, None);
                    }
                }
                Action::OnDemandDone {
                    token,
                    decision,
                    threat,
                } => self.on_demand_done(token, decision, &threat),
                Action::PolicyApplied(change) => self.on_policy_applied(&change),
                Action::Closed { reason } => {
                    // The session is over (its last Error / Goodbye frames
                    // go with the connection): drop it, reconnect later.
                    self.rd = None;
                    self.wr = None;
                    self.end_scan_with_session();
                    self.core.on_disconnected(self.now());
                    self.log.log(
                        Level::Warn,
                        routine::SESSION,
                        format_args!("session closed: {reason:?}"),
                    );
                    self.schedule_reconnect();
                }
            }
        }
    }

    /// Bytes from the scanner: what the core cannot take yet waits in
    /// `rx_pending` (and the connection is not read meanwhile).
    fn on_received(&mut self, bytes: &[u8]) {
        let now = self.now();
        let taken = self.core.on_receive(bytes, now);
        if let Some(rest) = bytes.get(taken..) {
            self.rx_pending.extend_from_slice(rest);
        }
    }

    /// Feeds `rx_pending` again (the core may have room now).
    fn feed_pending(&mut self) {
        if self.rx_pending.is_empty() {
            return;
        }
        let now = self.now();
        let taken = self.core.on_receive(&self.rx_pending, now);
        self.rx_pending.drain(..taken.min(self.rx_pending.len()));
    }

    /// A report of the restore's writer thread.
    fn on_restore_report(&mut self, report: RestoreReport) {
        let now = self.now();
        match report {
            RestoreReport::Written(id) => self.core.restore_chunk_written(id, now),
            RestoreReport::Done(id, path, result, key) => {
                if self.restore.as_ref().is_some_and(|(r, _)| *r == id) {
                    self.restore = None;
                }
                if let Some((dev, ino)) = key {
                    // The restored file is a new inode: nothing cached may
                    // answer its opens; they are judged again.
                    self.core.on_close_write(dev, ino);
                }
                self.finish_host_action(id, "restore", &path, result);
            }
        }
    }

    /// A host request: remediation on the blocking pool, a scan on its own
    /// walker thread, a restore on its writer thread. Never on this
    /// thread: opens wait for it.
    fn on_host_request(&mut self, job: HostJob) {
        match job {
            HostJob::Restore {
                id,
                path,
                size,
                deadline,
            } => {
                let text = String::from_utf8_lossy(&path).into_owned();
                self.log.log(
                    Level::Info,
                    routine::SESSION,
                    format_args!(
                        "host request {id}: restore {size} bytes to {text} (deadline {} ms)",
                        deadline.as_millis()
                    ),
                );
                let (tx, rx) = std::sync::mpsc::channel();
                let report = self.restore_tx.clone();
                let at = std::time::Instant::now() + deadline;
                let spawned = std::thread::Builder::new()
                    .name("restore-writer".into())
                    .spawn(move || {
                        crate::handover::block_control_signals();
                        restore_writer(id, &path, size, at, &rx, &report);
                    });
                match spawned {
                    Ok(_) => self.restore = Some((id, tx)),
                    Err(e) => {
                        let errno = e
                            .raw_os_error()
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(12);
                        self.core
                            .complete_action(id, ActionResult::failed(OsError::Errno(errno)));
                    }
                }
            }
            HostJob::RestoreData {
                id,
                offset,
                data,
                last,
            } => {
                let chunk = RestoreChunk { offset, data, last };
                let sent = match &self.restore {
                    Some((r, tx)) if *r == id => tx.send(chunk).is_ok(),
                    _ => false,
                };
                if !sent {
                    // No writer (it failed and answered already): the
                    // chunk is dropped, its room given back.
                    let now = self.now();
                    self.core.restore_chunk_written(id, now);
                }
            }
            HostJob::RestoreAborted { id } => {
                if self.restore.as_ref().is_some_and(|(r, _)| *r == id) {
                    self.restore = None;
                }
                self.log.log(
                    Level::Warn,
                    routine::SESSION,
                    format_args!(
                        "host request {id}: restore ended by the session (data out of order or \
                         late); nothing was written"
                    ),
                );
            }
            HostJob::Remediate {
                id,
                action,
                path,
                file,
                deadline,
            } => {
                let text = String::from_utf8_lossy(&path).into_owned();
                self.log.log(
                    Level::Info,
                    routine::SESSION,
                    format_args!(
                        "host request {id}: {} {text} (deadline {} ms)",
                        match action {
                            RemediateAction::Delete => "delete",
                            RemediateAction::Truncate => "truncate",
                        },
                        deadline.as_millis()
                    ),
                );
                let tx = self.remediation_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let result = actions::remediate(action, &path, &file);
                    let _ = tx.send((id, action, text, result));
                });
            }
            HostJob::Scan {
                id,
                root,
                flags,
                max_in_flight,
                max_depth,
                progress_interval,
                max_file_size,
            } => {
                if self.scan.is_some() {
                    // The session answers a second scan Busy itself; never
                    // two walkers.
                    self.core.scan_done(
                        id,
                        ScanDone {
                            counters: ScanCounters::default(),
                            status: ScanStatus::Busy,
                            error: None,
                        },
                    );
                    return;
                }
                let root_text = String::from_utf8_lossy(&root).into_owned();
                let policy = self.core.policy();
                let max_size = [
                    (max_file_size > 0).then_some(max_file_size),
                    policy.max_file_size(),
                    self.core.max_scan_size(),
                ]
                .into_iter()
                .flatten()
                .min();
                let filter = ScanFilter {
                    exclusions: (!flags.contains(ScanFlags::INCLUDE_EXCLUDED))
                        .then(|| Box::new(policy.clone())),
                    max_size,
                };
                let cfg = WalkConfig {
                    root: PathBuf::from(
                        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&root),
                    ),
                    flags,
                    max_depth,
                    filter,
                    inline_len: self.intake.inline_len.clone(),
                };
                let counters = Arc::new(WalkCounters::default());
                // Room for a few files ahead of the in-flight limit; the
                // walker waits when it is full.
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let c = counters.clone();
                let spawned = std::thread::Builder::new()
                    .name("scan-walker".into())
                    .spawn(move || {
                        crate::handover::block_control_signals();
                        actions::walk(&cfg, &c, &tx);
                    });
                if let Err(e) = spawned {
                    self.core.scan_done(
                        id,
                        ScanDone {
                            counters: ScanCounters::default(),
                            status: ScanStatus::Failed,
                            error: Some(OsError::Errno(
                                e.raw_os_error()
                                    .and_then(|n| u32::try_from(n).ok())
                                    .unwrap_or(12),
                            )),
                        },
                    );
                    return;
                }
                self.log.log(
                    Level::Audit,
                    routine::SESSION,
                    format_args!(
                        "host scan {id} of {root_text} started (at most {max_in_flight} files \
                         in flight, depth {}, {}{})",
                        if max_depth == 0 {
                            "unlimited".to_string()
                        } else {
                            max_depth.to_string()
                        },
                        if flags.contains(ScanFlags::CROSS_MOUNTS) {
                            "crossing mounts"
                        } else {
                            "this mount only"
                        },
                        if flags.contains(ScanFlags::INCLUDE_EXCLUDED) {
                            ", exclusions included"
                        } else {
                            ""
                        }
                    ),
                );
                let interval = (!progress_interval.is_zero()).then_some(progress_interval);
                self.scan = Some(ScanRun {
                    id,
                    root: root_text,
                    max_in_flight: max_in_flight.max(1),
                    progress_interval: interval,
                    next_progress: interval.map(|d| tokio::time::Instant::now() + d),
                    counters,
                    rx,
                    walk_end: None,
                    outstanding: HashMap::new(),
                    scanned: 0,
                    denied: 0,
                    bytes: 0,
                    errors: 0,
                    started: std::time::Instant::now(),
                });
            }
        }
    }

    /// Whether the scan may send one more file now. While opens are being
    /// checked (one waits, or one came in the last [`SCAN_YIELD`]), the
    /// scan keeps at most [`SCAN_IN_FLIGHT_UNDER_LOAD`] files in flight, so
    /// the scanner has few `OnDemand` events queued ahead of an open's.
    fn scan_has_room(&self) -> bool {
        self.scan.as_ref().is_some_and(|s| {
            if s.walk_end.is_some() {
                return false;
            }
            let busy = !self.held.is_empty()
                || self
                    .last_on_access
                    .is_some_and(|t| t.elapsed() < SCAN_YIELD);
            let max = if busy {
                s.max_in_flight.min(SCAN_IN_FLIGHT_UNDER_LOAD)
            } else {
                s.max_in_flight
            };
            self.core.on_demand_capacity(max) > 0
        })
    }

    /// A message from the walker.
    fn on_scan_msg(&mut self, msg: Option<ScanMsg>) {
        let Some(scan) = self.scan.as_mut() else {
            return;
        };
        match msg {
            Some(ScanMsg::File(item)) => {
                let token = self.next_token;
                self.next_token += 1;
                let content =
                    item.content
                        .as_ref()
                        .map_or(InlineContent::NONE, |c| InlineContent {
                            bytes: &c.bytes,
                            whole_file: c.whole_file,
                        });
                let now = Instant::from_nanos(
                    u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX),
                );
                let path = String::from_utf8_lossy(&item.path).into_owned();
                if self
                    .core
                    .submit_on_demand(token, &item.path, item.stat, content, now)
                {
                    scan.bytes += item.stat.size;
                    scan.outstanding.insert(token, path);
                    self.scan_files.insert(token, Arc::new(item.file));
                } else {
                    scan.errors += 1;
                }
            }
            Some(ScanMsg::End(end)) => scan.walk_end = Some(end),
            None => scan.walk_end = Some(scan.walk_end.unwrap_or(WalkEnd::Stopped)),
        }
        self.check_scan_end();
    }

    /// Ends the scan when the walk is over and every file sent was judged.
    fn check_scan_end(&mut self) {
        let Some(scan) = self.scan.as_ref() else {
            return;
        };
        match scan.walk_end {
            Some(WalkEnd::NotFound) => self.finish_scan(ScanStatus::NotFound, None),
            Some(WalkEnd::Failed(e)) => {
                self.finish_scan(ScanStatus::Failed, Some(OsError::Errno(e)))
            }
            Some(WalkEnd::Done | WalkEnd::Stopped) if scan.outstanding.is_empty() => {
                self.finish_scan(ScanStatus::Completed, None);
            }
            _ => {}
        }
    }

    /// Sends the scan's one `ScanDone` and forgets it (its files still out
    /// get their verdicts, no longer counted).
    fn finish_scan(&mut self, status: ScanStatus, error: Option<OsError>) {
        let Some(scan) = self.scan.take() else {
            return;
        };
        scan.counters.cancel.store(true, Ordering::Relaxed);
        let counters = scan.counters();
        self.core.scan_done(
            scan.id,
            ScanDone {
                counters,
                status,
                error,
            },
        );
        self.log.log(
            Level::Audit,
            routine::SESSION,
            format_args!(
                "host scan {} of {} {} after {} ms: seen={} scanned={} denied={} skipped={} \
                 errors={} bytes={}",
                scan.id,
                scan.root,
                scan_status_name(status),
                scan.started.elapsed().as_millis(),
                counters.files_seen,
                counters.files_scanned,
                counters.files_denied,
                counters.files_skipped,
                counters.errors,
                counters.bytes
            ),
        );
    }

    /// The session ended: so does the scan (no `ScanDone` can reach the
    /// host any more).
    fn end_scan_with_session(&mut self) {
        if let Some(scan) = self.scan.take() {
            scan.counters.cancel.store(true, Ordering::Relaxed);
            self.log.log(
                Level::Warn,
                routine::SESSION,
                format_args!(
                    "host scan {} of {} ended with the session to the scanner",
                    scan.id, scan.root
                ),
            );
        }
    }

    /// An `OnDemand` event got its verdict, or its deadline.
    fn on_demand_done(&mut self, token: Token, decision: Option<Decision>, threat: &str) {
        self.scan_files.remove(&token);
        let Some(scan) = self.scan.as_mut() else {
            return;
        };
        let Some(path) = scan.outstanding.remove(&token) else {
            return;
        };
        match decision {
            Some(Decision::Deny) => {
                scan.scanned += 1;
                scan.denied += 1;
                self.log.log_status(
                    Level::Audit,
                    routine::OPEN_FILTER,
                    NtStatus::STATUS_VIRUS_INFECTED,
                    format_args!("host scan {} found {path}: {threat}", scan.id),
                );
            }
            Some(_) => scan.scanned += 1,
            None => scan.errors += 1,
        }
        self.check_scan_end();
    }

    /// Progress report of the scan, when due.
    fn scan_progress(&mut self) {
        let Some(scan) = self.scan.as_mut() else {
            return;
        };
        let counters = scan.counters();
        let id = scan.id;
        scan.next_progress = scan
            .progress_interval
            .map(|d| tokio::time::Instant::now() + d);
        self.core.scan_progress(id, counters);
    }

    /// A remediation finished on the blocking pool.
    fn on_remediation_done(&mut self, done: RemediationDone) {
        let (id, action, path, result) = done;
        let what = match action {
            RemediateAction::Delete => "delete",
            RemediateAction::Truncate => "truncate",
        };
        self.finish_host_action(id, what, &path, result);
    }

    /// Logs how the host request `id` (`what` on `path`) ended and answers
    /// it.
    fn finish_host_action(&mut self, id: u64, what: &str, path: &str, result: ActionResult) {
        let errno = match result.error {
            Some(OsError::Errno(e)) => {
                format!(" (errno {e}: {})", Errno::from_raw(e as i32).desc())
            }
            _ => String::new(),
        };
        let level = if result.status == ActionStatus::Done {
            Level::Audit
        } else {
            Level::Warn
        };
        self.log.log(
            level,
            routine::SESSION,
            format_args!(
                "host request {id}: {what} {path}: {}{errno}",
                action_status_name(result.status)
            ),
        );
        if !self.core.complete_action(id, result) {
            self.log.log(
                Level::Info,
                routine::SESSION,
                format_args!("host request {id}: the session it came on is gone; not answered"),
            );
        }
    }

    /// A host policy was applied (or rejected) by the core.
    fn on_policy_applied(&mut self, change: &PolicyChange) {
        if let Some(why) = &change.rejected {
            self.log.log(
                Level::Warn,
                routine::SESSION,
                format_args!(
                    "host policy version {} rejected ({why}); version {} stays in effect",
                    change.version,
                    self.core.policy_version()
                ),
            );
            return;
        }
        if change.unchanged {
            self.log.log(
                Level::Info,
                routine::SESSION,
                format_args!("host policy version {} already in effect", change.version),
            );
            return;
        }
        if let Some(level) = change.debug_level {
            crate::logging::set_host_debug_level(level);
        }
        let local = self.config.max_file_size.unwrap_or(u64::MAX);
        let host = self.core.max_scan_size().unwrap_or(u64::MAX);
        self.intake.max_file_size = local.min(host);
        self.log.log(
            Level::Audit,
            routine::SESSION,
            format_args!(
                "host policy version {} in effect: applied {}; pinned locally (not applied) {}; \
                 now {}{}",
                change.version,
                field_names(change.applied),
                field_names(change.pinned),
                change.summary,
                change
                    .debug_level
                    .map(|l| format!(", log level {l}"))
                    .unwrap_or_default()
            ),
        );
    }

    fn respond(&mut self, token: Token, allow: bool, why: &Why) {
        let Some(held) = self.held.remove(&token) else {
            return;
        };
        if let Err(e) = self.fan.respond(&held.event, allow) {
            self.log.log(
                Level::Error,
                routine::FANOTIFY,
                format_args!("cannot answer the open of {}: {e}", held.path),
            );
        }
        let kind = match held.access {
            Access::Open => "open",
            Access::Exec => "exec",
        };
        let verdict = if allow { "allowed" } else { "denied" };
        let log = self.log;
        match why {
            Why::Host { threat, .. } if !allow => log.log_status(
                Level::Audit,
                routine::OPEN_FILTER,
                NtStatus::STATUS_VIRUS_INFECTED,
                format_args!(
                    "denied {kind} of {} by pid {}: {threat}",
                    held.path, held.pid
                ),
            ),
            Why::Cached(_) if !allow => log.log_status(
                Level::Audit,
                routine::OPEN_FILTER,
                NtStatus::STATUS_VIRUS_INFECTED,
                format_args!(
                    "denied {kind} of {} by pid {}: cached verdict",
                    held.path, held.pid
                ),
            ),
            Why::Disconnected => {
                self.disconnected_decisions += 1;
                let level = if self.disconnected_decisions == 1 {
                    Level::Warn
                } else {
                    Level::Debug
                };
                log.log(
                    level,
                    routine::OPEN_FILTER,
                    format_args!(
                        "scanner unreachable: {} {verdict} {kind} of {} by pid {}",
                        fail_mode_name(self.core.fail_mode()),
                        held.path,
                        held.pid
                    ),
                );
            }
            Why::SessionDeadline | Why::Watchdog => log.log_status(
                Level::Warn,
                routine::OPEN_FILTER,
                NtStatus::STATUS_IO_TIMEOUT,
                format_args!(
                    "no verdict within {} ms: {} {verdict} {kind} of {} by pid {}",
                    self.config.timeout.as_millis(),
                    fail_mode_name(self.core.fail_mode()),
                    held.path,
                    held.pid
                ),
            ),
            Why::SessionClosed | Why::Overloaded | Why::Shutdown => log.log(
                Level::Info,
                routine::OPEN_FILTER,
                format_args!(
                    "{why:?}: {} {verdict} {kind} of {} by pid {}",
                    fail_mode_name(self.core.fail_mode()),
                    held.path,
                    held.pid
                ),
            ),
            _ => {
                if log.enabled(Level::Debug) {
                    log.log(
                        Level::Debug,
                        routine::OPEN_FILTER,
                        format_args!(
                            "{verdict} {kind} of {} by pid {} ({why:?})",
                            held.path, held.pid
                        ),
                    );
                }
            }
        }
    }
}

/// A host read's result as the protocol's outcome (`EIO` for an error
/// without an OS code).
fn read_outcome(result: &io::Result<(Vec<u8>, bool)>) -> ReadOutcome<'_> {
    match result {
        Ok((data, true)) => ReadOutcome::EndOfFile(data),
        Ok((data, false)) => ReadOutcome::Data(data),
        Err(e) => ReadOutcome::Error(OsError::Errno(
            e.raw_os_error()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(5),
        )),
    }
}

fn delay_log(edge: &Edge, delay: Duration) {
    edge.log.log(
        Level::Info,
        routine::VSOCK_CONNECT,
        format_args!(
            "next connect attempt to {} in {} ms",
            edge.config.connect,
            delay.as_millis()
        ),
    );
}

/// Runs the agent with a new group until `shutdown` completes (a stop: the
/// marks are removed); returns the final counters. Must be called inside a
/// tokio runtime.
pub async fn run<F: Future<Output = ()>>(
    config: AgentConfig,
    shutdown: F,
) -> Result<Stats, AgentError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let agent = run_with(config, GroupSource::New, &mut rx);
    tokio::pin!(agent);
    tokio::pin!(shutdown);
    let mut tx = Some(tx);
    loop {
        tokio::select! {
            r = &mut agent => return r.map(|o| o.stats),
            () = &mut shutdown, if tx.is_some() => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(StopRequest::Terminate);
                }
            }
        }
    }
}

/// Sets up the group from `source`: marks every `--watch` path (a no-op for
/// marks a handed-over group has already) and logs which way it came.
fn set_up_group(
    config: &AgentConfig,
    source: GroupSource,
    log: Logger,
) -> Result<Arc<FanGroup>, AgentError> {
    let group = match source {
        GroupSource::New => {
            let g = FanGroup::new()?;
            log.log(
                Level::Info,
                routine::FANOTIFY,
                format_args!("created a new fanotify group (no group handed over)"),
            );
            Arc::new(g)
        }
        GroupSource::Inherited(inh) => {
            log.log(
                Level::Audit,
                routine::FANOTIFY,
                format_args!(
                    "adopted the fanotify group {} (fd {}): its {} mount/file-system marks \
                     stayed in place, no open went unchecked",
                    inh.origin.describe(),
                    inh.fd,
                    inh.marks
                ),
            );
            let g = FanGroup::from_fanotify(inh.fan);
            if inh.origin == handover::Origin::SystemdStore {
                // After a crash the previous agent may have left events
                // read and unanswered (after a handover it left none).
                let allow = config.fail_mode == FailMode::Open;
                let n = g.answer_orphans(allow);
                if n > 0 {
                    log.log(
                        Level::Warn,
                        routine::FANOTIFY,
                        format_args!(
                            "{n} opens the previous agent had read and not answered (it \
                             died) {} by {}",
                            if allow { "allowed" } else { "denied" },
                            fail_mode_name(config.fail_mode)
                        ),
                    );
                }
            }
            // The previous agent's kernel verdict cache: this agent's core
            // knows nothing of those marks (nor of the scanner's TTL for
            // them), so they go, and the files are checked again.
            if inh.inode_marks > 0 {
                match g.flush_ignore_marks() {
                    Ok(()) => log.log(
                        Level::Info,
                        routine::FANOTIFY,
                        format_args!(
                            "kernel verdict cache flushed (group handed over): {} ignore \
                             marks removed",
                            inh.inode_marks
                        ),
                    ),
                    Err(e) => {
                        return Err(AgentError::Io {
                            what: "flushing the handed-over group's ignore marks",
                            source: e,
                        });
                    }
                }
            }
            Arc::new(g)
        }
        GroupSource::Kept(g) => {
            log.log(
                Level::Info,
                routine::FANOTIFY,
                format_args!("going on with this process's fanotify group"),
            );
            g
        }
    };
    for path in &config.watch {
        group.add_mark(path, config.scope)?;
        log.log(
            Level::Info,
            routine::FANOTIFY,
            format_args!(
                "watching the {} containing {} (open, exec, close-write)",
                match config.scope {
                    MarkScope::Mount => "mount",
                    MarkScope::Filesystem => "file system",
                },
                path.display()
            ),
        );
    }
    Ok(group)
}

/// Offers the group to systemd's file-descriptor store; `true` if there is
/// one to offer it to.
fn store_group(group: &FanGroup, log: Logger) -> bool {
    match handover::store_in_systemd(group) {
        Ok(true) => {
            log.log(
                Level::Info,
                routine::FANOTIFY,
                format_args!(
                    "fanotify group offered to systemd's file-descriptor store \
                     (FDNAME={}): a restart keeps the marks; SIGTERM leaves them to \
                     systemd, which closes the group when the unit is fully stopped",
                    handover::FD_NAME
                ),
            );
            true
        }
        Ok(false) => false,
        Err(e) => {
            log.log(Level::Warn, routine::FANOTIFY, format_args!("{e}"));
            false
        }
    }
}

/// Runs the agent on the group from `source` until a request from
/// `requests` stops it; with [`StopRequest::ReExec`], or a `Terminate` while
/// systemd's store holds the group, the marks stay ([`StopPlan::HandOver`]).
/// A `Terminate` while a restart in place is under way makes it a stop.
/// Must be called inside a tokio runtime.
pub async fn run_with(
    config: AgentConfig,
    source: GroupSource,
    requests: &mut tokio::sync::mpsc::UnboundedReceiver<StopRequest>,
) -> Result<Outcome, AgentError> {
    let log = config.logger;
    if config.watch.is_empty() {
        return Err(AgentError::Config(
            "nothing to watch: give at least one --watch PATH".into(),
        ));
    }
    if config.max_in_flight == 0 || config.max_in_flight > crate::core::SESSION_SLOTS {
        return Err(AgentError::Config(format!(
            "--max-in-flight must be 1..={}",
            crate::core::SESSION_SLOTS
        )));
    }
    let policy = build_policy(&config)?;
    let own_pid = std::process::id();
    let core = AgentCore::new(CoreConfig {
        fail_mode: config.fail_mode,
        timeout: config.timeout,
        guest_name: config.guest_name.clone(),
        policy,
        own_pid,
        kernel_cache_entries: config.kernel_cache_entries,
        inline_content: config.inline_content,
        host_actions: config.host_actions,
        pinned: config.pinned,
    });
    let handed_over = !matches!(source, GroupSource::New);
    let fan = set_up_group(&config, source, log)?;
    // A handed-over group's opens wait in the kernel already: connect to
    // the scanner before reading them (one attempt, at most the connect
    // timeout), or the first ones would all be decided by the fail mode.
    let first_connect = if handed_over {
        Some(
            match tokio::time::timeout(CONNECT_TIMEOUT, config.connect.connect()).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer within 5 s",
                )),
            },
        )
    } else {
        None
    };
    let in_store = store_group(&fan, log);
    let (read_tx, mut read_rx) = tokio::sync::mpsc::unbounded_channel();
    let intake = Intake::new(
        core.shared_cache(),
        config.kernel_cache_entries > 0,
        config.max_file_size.unwrap_or(u64::MAX),
    );
    let (remediation_tx, mut remediation_rx) = tokio::sync::mpsc::unbounded_channel();
    let (restore_tx, mut restore_rx) = tokio::sync::mpsc::unbounded_channel();
    let clock = std::time::Instant::now();
    // The loop waits on the group itself. The descriptor is non-blocking
    // (`FAN_NONBLOCK`, kept by a handed-over group's open file description).
    let group = fanotify::register_with_reactor(fan.clone()).map_err(|source| AgentError::Io {
        what: "registering the fanotify group with the event loop",
        source,
    })?;
    // Events read and not yet answered, at most (held by the core or
    // waiting in the backlog): a few reads' worth beyond max_in_flight;
    // beyond it the loop stops reading and the kernel queues the rest.
    let read_limit = config.max_in_flight * 4;
    // After a failed read of the group, when to try again.
    let mut group_retry: Option<tokio::time::Instant> = None;
    let mut edge = Edge {
        reconnect: Reconnect::new(config.reconnect),
        config,
        log,
        fan,
        intake,
        core,
        held: HashMap::new(),
        backlog: VecDeque::new(),
        next_token: 1,
        clock,
        rd: None,
        wr: None,
        next_connect: None,
        connecting: None,
        ready_written: false,
        disconnected_decisions: 0,
        read_tx,
        remediation_tx,
        restore_tx,
        restore: None,
        rx_pending: Vec::new(),
        scan: None,
        scan_files: HashMap::new(),
        health_sent: None,
        last_on_access: None,
    };
    log.log(
        Level::Audit,
        routine::DRIVER_ENTRY,
        format_args!(
            "thinagent-linux-agent {} started (pid {own_pid}): scanner {}, {}, timeout {} ms, \
             at most {} opens in flight, kernel verdict cache {}, inline content {}",
            env!("CARGO_PKG_VERSION"),
            edge.config.connect,
            fail_mode_name(edge.config.fail_mode),
            edge.config.timeout.as_millis(),
            edge.config.max_in_flight,
            match edge.config.kernel_cache_entries {
                0 => "off".to_string(),
                n => format!("up to {n} ignore marks"),
            },
            if edge.config.inline_content {
                "on (protocol v2)"
            } else {
                "off"
            }
        ),
    );
    match first_connect {
        Some(result) => edge.on_connect_result(result),
        None => edge.start_connect(),
    }
    let mut stats_tick = edge.config.stats_interval.map(|d| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut health_tick = tokio::time::interval(Duration::from_secs(1));
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rx_buf = vec![0u8; 64 * 1024];
    let mut request = StopRequest::Terminate;
    let mut plan = StopPlan::RemoveMarks;
    // Handing over: no more reading; the loop finishes the events it holds
    // (verdicts or deadlines), bounded by this.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        edge.feed_pending();
        edge.run_actions();
        edge.feed();
        edge.run_actions();
        edge.try_flush();
        if drain_until.is_some() && edge.held.is_empty() && edge.backlog.is_empty() {
            break;
        }
        let deadline = edge.core.next_deadline().map(|d| edge.to_tokio(d));
        let tx = edge.core.pending_tx().to_vec();
        let scan_room = edge.scan_has_room();
        let progress_at = edge.scan.as_ref().and_then(|s| s.next_progress);
        // Handing over, nothing more is read: the next agent takes the rest.
        let reading = drain_until.is_none()
            && group_retry.is_none()
            && edge.held.len() + edge.backlog.len() < read_limit;
        tokio::select! {
            biased;
            Some(r) = requests.recv() => {
                if drain_until.is_some() {
                    if supersedes(r, request) {
                        request = r;
                        plan = stop_plan(r, in_store);
                        log.log(
                            Level::Info,
                            routine::FANOTIFY,
                            format_args!("SIGTERM during the restart in place: stopping instead"),
                        );
                        if plan == StopPlan::RemoveMarks {
                            break;
                        }
                    }
                    continue;
                }
                request = r;
                plan = stop_plan(r, in_store);
                if plan == StopPlan::RemoveMarks {
                    break;
                }
                log.log(
                    Level::Info,
                    routine::FANOTIFY,
                    format_args!(
                        "{}: handing the fanotify group over with its marks; finishing the \
                         {} opens read already, the next ones wait in the kernel",
                        match r {
                            StopRequest::ReExec => "restart in place requested",
                            StopRequest::Terminate =>
                                "SIGTERM with the group in systemd's store",
                        },
                        edge.held.len() + edge.backlog.len()
                    ),
                );
                drain_until = Some(
                    tokio::time::Instant::now() + edge.config.timeout + Duration::from_millis(500),
                );
            }
            () = sleep_opt(drain_until) => break,
            r = join_opt(&mut edge.connecting) => {
                edge.connecting = None;
                let result = r.unwrap_or_else(|e| Err(io::Error::other(e)));
                edge.on_connect_result(result);
            }
            () = sleep_opt(deadline) => {
                let now = edge.now();
                edge.core.on_timeout(now);
            }
            Some((read_id, result)) = read_rx.recv() => {
                let now = edge.now();
                edge.core.read_completed(read_id, read_outcome(&result), now);
            }
            r = group.readable(), if reading => match r {
                // One read takes every event queued (as many as its buffer
                // holds); the readiness stays set while more wait.
                Ok(mut ready) => match ready.try_io(|g| g.get_ref().read_events()) {
                    Ok(Ok(events)) => edge.on_group_events(events),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => {
                        edge.on_group_read_error(&e);
                        group_retry = Some(tokio::time::Instant::now() + GROUP_RETRY);
                    }
                    // Read dry: `try_io` cleared the readiness.
                    Err(_would_block) => {}
                },
                Err(e) => {
                    edge.on_group_read_error(&e);
                    group_retry = Some(tokio::time::Instant::now() + GROUP_RETRY);
                }
            },
            () = sleep_opt(group_retry) => group_retry = None,
            r = read_opt(&mut edge.rd, &mut rx_buf), if edge.rx_pending.is_empty() => match r {
                Ok(0) => edge.drop_connection("closed by the scanner"),
                Ok(n) => edge.on_received(&rx_buf[..n]),
                Err(e) => edge.drop_connection(&connection_error(&e)),
            },
            r = write_opt(&mut edge.wr, &tx) => match r {
                Ok(n) => edge.core.consume_tx(n),
                Err(e) => edge.drop_connection(&connection_error(&e)),
            },
            () = sleep_opt(edge.next_connect), if edge.connecting.is_none() && edge.rd.is_none() => {
                edge.start_connect();
            }
            Some(done) = remediation_rx.recv() => edge.on_remediation_done(done),
            Some(report) = restore_rx.recv() => edge.on_restore_report(report),
            // After the fanotify branch (biased): opens first, and a scan
            // file only while the scan has room in flight.
            msg = recv_scan(&mut edge.scan), if scan_room => {
                edge.on_scan_msg(msg);
                while edge.scan_has_room() {
                    match edge.scan.as_mut().map(|s| s.rx.try_recv()) {
                        Some(Ok(more)) => edge.on_scan_msg(Some(more)),
                        _ => break,
                    }
                }
            }
            () = sleep_opt(progress_at) => edge.scan_progress(),
            _ = health_tick.tick() => edge.maybe_send_health(false),
            () = tick_opt(&mut stats_tick) => {
                let s = edge.stats();
                log.log(Level::Info, routine::STATS, format_args!("{}", stats_text(&s)));
            }
        }
    }
    drop(group);
    shutdown_edge(&mut edge, plan).await;
    let stats = edge.stats();
    log.log(
        Level::Audit,
        routine::STATS,
        format_args!("{}", stats_text(&stats)),
    );
    log.log(
        Level::Audit,
        routine::DRIVER_ENTRY,
        format_args!(
            "thinagent-linux-agent stopped{}",
            match (plan, request) {
                (StopPlan::RemoveMarks, _) => "",
                (StopPlan::HandOver, StopRequest::ReExec) => " (restarting in place)",
                (StopPlan::HandOver, StopRequest::Terminate) =>
                    " (group left in systemd's file-descriptor store)",
            }
        ),
    );
    Ok(Outcome {
        stats,
        request,
        plan,
        group: edge.fan.clone(),
    })
}

/// Stops taking events; for a stop removes the marks and takes what is still
/// queued; answers everything held by the fail mode; says Goodbye. Handing
/// over, the marks and the kernel's queue stay for the next agent.
async fn shutdown_edge(edge: &mut Edge, plan: StopPlan) {
    let log = edge.log;
    if let Some(h) = edge.connecting.take() {
        h.abort();
    }
    if let Some(scan) = edge.scan.take() {
        scan.counters.cancel.store(true, Ordering::Relaxed);
    }
    if plan == StopPlan::RemoveMarks {
        let removed = edge.fan.remove_marks();
        log.log(
            Level::Info,
            routine::FANOTIFY,
            format_args!("shutting down: {removed} marks removed; answering pending opens"),
        );
        // Events queued before the marks went away still wait for an answer.
        loop {
            match edge.fan.read_events() {
                Ok(events) if !events.is_empty() => edge.on_group_events(events),
                _ => break,
            }
        }
    } else {
        log.log(
            Level::Info,
            routine::FANOTIFY,
            format_args!(
                "shutting down: marks kept for the next agent; {} opens still held are \
                 answered by {}",
                edge.held.len() + edge.backlog.len(),
                fail_mode_name(edge.core.fail_mode())
            ),
        );
    }
    // Held events and the backlog alike: each through the core, answered by
    // the policy, the cache or (at shutdown) the fail mode.
    while !edge.backlog.is_empty() {
        edge.feed();
        edge.core.shutdown(edge.now());
        edge.run_actions();
    }
    let now = edge.now();
    edge.core.shutdown(now);
    edge.run_actions();
    debug_assert!(edge.held.is_empty(), "every held event answered");
    if let Some(wr) = edge.wr.as_mut() {
        let tx = edge.core.pending_tx().to_vec();
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
            let _ = wr.write_all(&tx).await;
            let _ = wr.shutdown().await;
        })
        .await;
    }
    edge.rd = None;
    edge.wr = None;
}
