//! The tokio driver of one guest connection: [`serve_connection`].
//!
//! It pumps bytes between the socket and a sans-IO
//! [`HostSession`], runs its timers on
//! `tokio::time`, answers queries from the [caches](crate::cache) when it
//! can, and otherwise streams the content into the engines of the active
//! [`SignatureSet`]:
//!
//! * files up to [`Limits::scan_buffer_max`] are buffered (at most
//!   [`Limits::scan_buffer_total`] per connection); at their end the
//!   BLAKE3 of the content is looked up in the cross-guest content cache
//!   and only a miss runs the engines over the buffer (one `spawn_blocking`
//!   call);
//! * a file the guest sent whole inline with its `FileEvent` (protocol
//!   version 2, §5.3.1) arrives complete with the query: no `ReadRequest`.
//!   Up to [`Limits::scan_on_task_max`] bytes, and when no engine blocks
//!   on I/O (clamd), the cache lookup and the scan run right on the
//!   connection's task, without the thread hop of `spawn_blocking`;
//! * larger files (or when the connection's buffer is full) are streamed
//!   chunk by chunk into a [`FileScan`] living in
//!   a blocking task, so memory stays bounded; content flow is limited by
//!   the session's bytes-in-flight budget, which a chunk leaves only once
//!   the engines have consumed it. (Their hash still fills the content
//!   cache, but a later open of the same large content is scanned again.)
//!
//! Everything that happens is reported to a [`ScanObserver`] (metrics,
//! audit log). A broken or hostile guest only ends its own connection.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use thinagent_protocol::{Decision, EventKind, FileIdentity, GoodbyeReason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::cache::{CachedVerdict, VerdictCaches};
use crate::engine::EngineError;
use crate::guests::{Detection, GuestCommand, GuestRegistry, ScanUpdate};
use crate::scan::{FileScan, ScanOutcome, ScanVerdict, content_key, scan_complete};
use crate::session::{
    ActionError, ActionOutcome, Anomaly, CloseReason, ContentFailure, EventId, GuestInfo,
    GuestPath, HostSession, Inline, PolicyReason, Query, QueryOutcome, SessionEvent, SessionLimits,
};
use crate::signatures::{SharedSignatures, SignatureSet};

/// Who is on the other end of a connection, as the transport says (not as
/// the guest claims in `Hello`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GuestId {
    /// An AF_VSOCK peer: its context id identifies the VM.
    Vsock {
        /// Peer CID.
        cid: u32,
        /// Peer port.
        port: u32,
    },
    /// A TCP peer without TLS (the scanner only listens so on loopback).
    Tcp(SocketAddr),
    /// A TCP peer that completed a TLS handshake with a client certificate
    /// signed by the configured guest CA.
    Tls {
        /// Peer address.
        addr: SocketAddr,
        /// The client certificate's subject (RFC 4514 text).
        subject: Arc<str>,
    },
    /// A Unix socket peer.
    Unix {
        /// The listening socket's path.
        listener: PathBuf,
        /// The connecting process's user id (`SO_PEERCRED`), when the OS
        /// reports it.
        uid: Option<u32>,
        /// Peer process id, when the OS reports it (a label only: it
        /// changes with every restart).
        pid: Option<i32>,
    },
}

/// The part of a [`GuestId`] a guest cannot choose: what per-guest state
/// (caches, limits, audit records) is keyed by. The `guest_name` of
/// `Hello` never is: any guest can send any name.
///
/// What each transport proves (docs/architecture.md, "Who is trusted for
/// what"):
/// * vsock: the hypervisor assigns the CID, a guest cannot forge another's;
///   one CID is one VM.
/// * TLS: the client holds the private key of a certificate the configured
///   CA signed for this subject; one subject is one guest.
/// * loopback TCP: only that the peer runs on this host (QEMU user
///   networking forwards every VM to 127.0.0.1): several guests may share
///   one address.
/// * Unix: the connecting process's uid on this host: several guests may
///   share one uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerIdentity {
    /// A VM by its context id.
    Vsock(u32),
    /// A guest by its certificate subject.
    Tls(Arc<str>),
    /// A process on this host by its (loopback) address.
    Tcp(IpAddr),
    /// A process on this host by its uid on one listening socket.
    Unix {
        /// The listening socket's path.
        listener: PathBuf,
        /// The peer's uid, when the OS reports it.
        uid: Option<u32>,
    },
}

impl PeerIdentity {
    /// Whether the identity names exactly one guest (a vsock CID, a
    /// certificate subject) rather than a host or user that several guests
    /// may share (loopback TCP, Unix).
    pub fn names_one_guest(&self) -> bool {
        matches!(self, Self::Vsock(_) | Self::Tls(_))
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock(cid) => write!(f, "vsock:{cid}"),
            Self::Tls(subject) => write!(f, "tls:{subject}"),
            Self::Tcp(ip) => write!(f, "tcp:{ip}"),
            Self::Unix {
                listener,
                uid: Some(uid),
            } => write!(f, "unix:{}:uid={uid}", listener.display()),
            Self::Unix {
                listener,
                uid: None,
            } => write!(f, "unix:{}", listener.display()),
        }
    }
}

impl GuestId {
    /// The identity the transport vouches for.
    pub fn peer(&self) -> PeerIdentity {
        match self {
            Self::Vsock { cid, .. } => PeerIdentity::Vsock(*cid),
            Self::Tls { subject, .. } => PeerIdentity::Tls(Arc::clone(subject)),
            Self::Tcp(addr) => PeerIdentity::Tcp(addr.ip()),
            Self::Unix { listener, uid, .. } => PeerIdentity::Unix {
                listener: listener.clone(),
                uid: *uid,
            },
        }
    }

    /// The identity-cache scope of this guest: file identities are only
    /// compared within one scope, so a guest can neither use nor plant
    /// another guest's verdicts.
    ///
    /// Where the transport names one guest (vsock CID, certificate subject)
    /// the scope is that identity alone and the announced name is ignored.
    /// Where it names only a host or a user that several guests may share
    /// (loopback TCP, Unix), the scope also holds the announced name, so
    /// that lab guests behind one address do not mix their (colliding)
    /// file ids; a process that can reach such a listener is on this host
    /// and is trusted as the host is.
    pub fn cache_scope(&self, guest_name: &str) -> Arc<str> {
        let peer = self.peer();
        if peer.names_one_guest() {
            Arc::from(peer.to_string())
        } else {
            Arc::from(format!("{peer}/{guest_name}"))
        }
    }
}

impl fmt::Display for GuestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Tls { addr, subject } => write!(f, "tls://{addr} ({subject})"),
            Self::Unix { listener, uid, pid } => {
                write!(f, "unix://{}", listener.display())?;
                match (uid, pid) {
                    (Some(uid), Some(pid)) => write!(f, " (uid {uid}, pid {pid})"),
                    (Some(uid), None) => write!(f, " (uid {uid})"),
                    (None, Some(pid)) => write!(f, " (pid {pid})"),
                    (None, None) => Ok(()),
                }
            }
        }
    }
}

/// Limits of one connection. [`Default`] is safe for production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Protocol limits and timers (max frame, max file size, per-request and
    /// idle timeouts, max in-flight events and bytes per guest, policy
    /// verdicts).
    pub session: SessionLimits,
    /// `cache_ttl_secs` sent with scan results (the guest's own cache).
    pub verdict_ttl_secs: u32,
    /// Files up to this size are buffered and looked up in the content cache
    /// before scanning; larger ones are streamed into the engines.
    pub scan_buffer_max: usize,
    /// Most content bytes one connection buffers at once (all its files);
    /// a file that would exceed it is streamed instead.
    pub scan_buffer_total: usize,
    /// A file the guest sent whole inline (protocol version 2) of at most
    /// this many bytes is looked up in the content cache and scanned on the
    /// connection's task instead of a blocking thread, unless an engine of
    /// the set blocks on I/O (clamd). See [`SCAN_ON_TASK_MAX`].
    pub scan_on_task_max: usize,
    /// Bytes read from the socket at once.
    pub read_buffer: usize,
    /// Stop reading from a guest while this many answer bytes wait to be
    /// sent to it (it is not reading).
    pub max_tx_backlog: usize,
    /// After the session closed, how long unsent bytes may take to drain.
    pub close_linger: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            session: SessionLimits::default(),
            verdict_ttl_secs: 300,
            scan_buffer_max: 8 << 20,
            scan_buffer_total: 32 << 20,
            scan_on_task_max: SCAN_ON_TASK_MAX,
            read_buffer: 64 * 1024,
            max_tx_backlog: 1 << 20,
            close_linger: Duration::from_secs(2),
        }
    }
}

/// Default [`Limits::scan_on_task_max`]: 64 KiB, which holds every inline
/// file with the default frame limit (`MAX_INLINE_LEN` is 65 447 bytes).
///
/// Why scanning on the async task is fine up to there: the engines that
/// run there only compute (built-in, hash, YARA; a set with clamd never
/// does). Over 64 KiB BLAKE3 takes about 10-20 µs, the hash engine's
/// size-indexed digests only run when a signature of exactly this size
/// exists, and yara-x scans 64 KiB in tens of µs for a typical rule set:
/// about what a `spawn_blocking` round trip costs (waking a blocking
/// thread, then the channel back), so for such files the hop would double
/// the host's share of the latency. It is also short against tokio's
/// guideline of 10-100 µs between `.await`s, and one connection blocks
/// only its own worker thread for it. A huge YARA rule set makes each
/// scan slower: lower this limit (0 sends every scan to a blocking
/// thread), see docs/architecture.md.
pub const SCAN_ON_TASK_MAX: usize = 64 * 1024;

/// Where a verdict came from, for the audit log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictSource {
    /// The engines scanned the content.
    Scanned,
    /// The guest's identity cache (no content transferred).
    IdentityCache,
    /// The cross-guest content cache (content transferred, not scanned).
    ContentCache,
    /// The session's own policy verdict.
    Policy(PolicyReason),
    /// Content could not be read; the error policy decided.
    ReadFailed(ContentFailure),
    /// An engine failed without detection; the error policy decided.
    EngineFailed,
    /// No verdict could be sent (guest gone); `verdict` is `None`.
    Abandoned,
}

impl VerdictSource {
    /// Decided by policy (the session's, or the error policy), not by the
    /// engines or a cache.
    pub const fn is_policy(self) -> bool {
        matches!(
            self,
            Self::Policy(_) | Self::ReadFailed(_) | Self::EngineFailed
        )
    }
}

/// One answered (or abandoned) file query: a line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When the answer was sent.
    pub time: SystemTime,
    /// The guest by transport address.
    pub guest: GuestId,
    /// The guest's announced name.
    pub guest_name: String,
    /// Everything the guest announced in `Hello` (name, OS, agent and
    /// protocol version).
    pub guest_info: Arc<GuestInfo>,
    /// The file's identity as the guest reported it.
    pub file: FileIdentity,
    /// The path as the guest sent it (`path` is its lossy text).
    pub raw_path: GuestPath,
    /// The event id.
    pub event_id: EventId,
    /// Open / Execute / CloseAfterWrite.
    pub kind: EventKind,
    /// The path (lossy text).
    pub path: String,
    /// The decision sent; `None` when abandoned.
    pub verdict: Option<Decision>,
    /// Threat name when denied for a detection.
    pub threat: Option<String>,
    /// Engine that decided (detections, or `hash` etc. for clean scans is
    /// `None`).
    pub engine: Option<&'static str>,
    /// Content bytes pulled for this query with `ReadRequest`s (inline
    /// bytes are not counted here, see `inline`).
    pub bytes: u64,
    /// What the `FileEvent` carried inline (protocol version 2): bytes the
    /// guest pushed with the event, whether the answer used them or not.
    pub inline: Inline,
    /// From `FileEvent` received to verdict sent.
    pub duration: Duration,
    /// Where the verdict came from.
    pub source: VerdictSource,
}

/// Receives what happens on connections (metrics, audit log, logs). Called
/// from the connection's task: keep it quick and non-blocking.
pub trait ScanObserver: Send + Sync {
    /// A connection was accepted.
    fn on_session_open(&self, guest: &GuestId) {
        let _ = guest;
    }
    /// The handshake completed.
    fn on_handshake(&self, guest: &GuestId, info: &GuestInfo) {
        let _ = (guest, info);
    }
    /// The guest was admitted after its handshake: it is connected (every
    /// call is followed by one [`on_guest_disconnected`](Self::on_guest_disconnected)).
    fn on_guest_connected(&self, guest: &GuestId, info: &GuestInfo) {
        let _ = (guest, info);
    }
    /// A guest [`on_guest_connected`](Self::on_guest_connected) announced
    /// is gone (called before [`on_session_closed`](Self::on_session_closed)).
    fn on_guest_disconnected(&self, guest: &GuestId, info: &GuestInfo, reason: &CloseReason) {
        let _ = (guest, info, reason);
    }
    /// The connection ended.
    fn on_session_closed(&self, guest: &GuestId, reason: &CloseReason) {
        let _ = (guest, reason);
    }
    /// A query was answered or abandoned.
    fn on_verdict(&self, record: &AuditRecord) {
        let _ = record;
    }
    /// Something odd that the session ignored or skipped.
    fn on_protocol_event(&self, guest: &GuestId, anomaly: &Anomaly) {
        let _ = (guest, anomaly);
    }
    /// An engine failed on a file.
    fn on_engine_error(&self, guest: &GuestId, error: &EngineError) {
        let _ = (guest, error);
    }
    /// An automatic remediation ended (or was not attempted, and why).
    fn on_remediation(&self, record: &RemediationRecord) {
        let _ = record;
    }
    /// A host action other than an automatic remediation (those are
    /// [`on_remediation`](Self::on_remediation)) ended: an admin's
    /// remediation, scan or restore, or a policy sent to the guest.
    fn on_host_action(&self, record: &HostActionRecord) {
        let _ = record;
    }
    /// An admin restored or purged a quarantine entry (the control socket).
    fn on_quarantine_action(&self, record: &QuarantineActionRecord) {
        let _ = record;
    }
}

/// How one host action ended ([`ScanObserver::on_host_action`]).
#[derive(Debug, Clone)]
pub struct HostActionRecord {
    /// The guest by transport.
    pub guest: GuestId,
    /// What it announced.
    pub guest_info: Arc<GuestInfo>,
    /// The request's id in the session.
    pub request_id: u64,
    /// `remediate`, `scan_tree`, `policy`, `restore`.
    pub action: &'static str,
    /// `admin` or `policy`.
    pub origin: &'static str,
    /// `delete` / `truncate` for a remediation.
    pub operation: Option<&'static str>,
    /// The path acted on.
    pub path: Option<GuestPath>,
    /// The identity a remediation named.
    pub file: Option<thinagent_protocol::FileIdentity>,
    /// The detection a remediation answered, if the registry has it.
    pub threat: Option<String>,
    /// The policy version sent.
    pub policy_version: Option<u64>,
    /// How it ended.
    pub outcome: ActionOutcome,
}

/// An admin's quarantine action: a restore (however it ended) or a purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineActionRecord {
    /// `restore` or `purge`.
    pub action: &'static str,
    /// The entry (as it is after the action).
    pub entry: crate::quarantine::Entry,
    /// The path acted on (a restore's target).
    pub path: crate::records::PathRecord,
    /// `done`, `changed`, `failed`, ...
    pub status: String,
    /// In words.
    pub detail: String,
    /// How long it took.
    pub duration: Duration,
}

/// How one automatic remediation went ([`crate::remediation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemediationRecord {
    /// The guest by transport.
    pub guest: GuestId,
    /// What it announced.
    pub guest_info: Arc<GuestInfo>,
    /// The file's path as the guest sent it.
    pub path: GuestPath,
    /// The identity judged.
    pub file: thinagent_protocol::FileIdentity,
    /// The threat.
    pub threat: String,
    /// The rule's action.
    pub action: crate::remediation::RemediationAction,
    /// `done`, `done-on-close`, `changed`, `not-found`, `failed`,
    /// `unsupported`, `rate-limited`, `kept`, `timed-out`, ...
    pub status: &'static str,
    /// In words.
    pub detail: String,
    /// The quarantine entry holding the bytes, when quarantined.
    pub quarantine_id: Option<String>,
}

/// A [`ScanObserver`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl ScanObserver for NoopObserver {}

/// What every connection shares.
pub struct ScanContext {
    /// The active signature set; [`ScanContext::reload`] swaps it.
    pub signatures: SharedSignatures,
    /// Identity and content caches.
    pub caches: VerdictCaches,
    /// Connection limits.
    pub limits: Limits,
    /// Where events go.
    pub observer: Arc<dyn ScanObserver>,
    /// Every guest seen, and the channels to the connected ones.
    pub guests: Arc<GuestRegistry>,
    /// The policy guests get (protocol §14.6).
    pub guest_policy: Arc<crate::guest_policy::PolicyStore>,
    /// Automatic remediation rules ([`crate::remediation`]).
    pub remediation: crate::remediation::RemediationConfig,
    /// Its per-guest rate limit.
    pub remediation_rate: Arc<crate::remediation::RateLimit>,
    /// The quarantine store, when configured.
    pub quarantine: Option<Arc<std::sync::Mutex<crate::quarantine::QuarantineStore>>>,
    /// The scanner farm's shared cache, when configured: asked on a local
    /// miss, told what was scanned ([`crate::farm`]).
    pub farm: Option<Arc<crate::farm::Farm>>,
}

impl fmt::Debug for ScanContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanContext")
            .field("generation", &self.signatures.load().generation())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ScanContext {
    /// A context with default caches.
    pub fn new(signatures: SignatureSet, limits: Limits, observer: Arc<dyn ScanObserver>) -> Self {
        Self::with_caches(signatures, limits, observer, VerdictCaches::default())
    }

    /// A context with the given caches.
    pub fn with_caches(
        signatures: SignatureSet,
        limits: Limits,
        observer: Arc<dyn ScanObserver>,
        caches: VerdictCaches,
    ) -> Self {
        Self {
            signatures: SharedSignatures::from_pointee(signatures),
            caches,
            limits,
            observer,
            guests: Arc::new(GuestRegistry::default()),
            guest_policy: Arc::new(crate::guest_policy::PolicyStore::default()),
            remediation: crate::remediation::RemediationConfig::default(),
            remediation_rate: Arc::new(crate::remediation::RateLimit::default()),
            quarantine: None,
            farm: None,
        }
    }

    /// Makes `set` the active set (atomic; scans in progress finish on the
    /// old one, cached verdicts of older sets stop matching).
    pub fn reload(&self, set: SignatureSet) {
        self.signatures.store(Arc::new(set));
    }
}

/// Decides, when a guest's handshake completes, whether it may hold a
/// session (see [`crate::admission`]). Whatever it keeps is held until the
/// connection ends.
pub trait Admit: Send {
    /// `Err(reason)` closes the session at once with `Goodbye(reason)`.
    fn admit(&mut self, guest: &GuestId, info: &GuestInfo) -> Result<(), GoodbyeReason>;
}

/// Serves one guest connection until it ends; returns why it ended.
pub async fn serve_connection<S>(stream: S, guest: GuestId, ctx: Arc<ScanContext>) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_connection_until(stream, guest, ctx, std::future::pending()).await
}

/// Like [`serve_connection`], but when `shutdown` completes the session is
/// closed with its `Goodbye` reason (`Shutdown` on service stop,
/// `Restarting`, or `Overloaded` to refuse a guest): open queries get the
/// error policy verdict first.
pub async fn serve_connection_until<S, F>(
    stream: S,
    guest: GuestId,
    ctx: Arc<ScanContext>,
    shutdown: F,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = GoodbyeReason>,
{
    serve_connection_admitted(stream, guest, ctx, shutdown, None).await
}

/// Like [`serve_connection_until`], with `admit` asked when the handshake
/// completes.
pub async fn serve_connection_admitted<S, F>(
    stream: S,
    guest: GuestId,
    ctx: Arc<ScanContext>,
    shutdown: F,
    admit: Option<Box<dyn Admit>>,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = GoodbyeReason>,
{
    ctx.observer.on_session_open(&guest);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let limits = ctx.limits;
    let mut driver = Driver {
        session: HostSession::new(limits.session, now()),
        ctx: Arc::clone(&ctx),
        guest,
        scope: Arc::from(""),
        farm_scope: None,
        admit,
        work: std::collections::HashMap::new(),
        results: mpsc::unbounded_channel(),
        closed: None,
        connected: None,
        buffered: 0,
        serial: None,
        counters: None,
        commands: None,
        replies: std::collections::HashMap::new(),
        audit_meta: std::collections::HashMap::new(),
        guest_published: None,
    };
    let mut rbuf = vec![0u8; limits.read_buffer.max(4096)];
    let mut out: Vec<u8> = Vec::new();
    let mut read_open = true;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutdown_seen = false;
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        driver.handle_events();
        if out.is_empty() {
            out.extend_from_slice(driver.session.transmit_pending());
            let n = out.len();
            driver.session.advance_transmit(n);
        }
        if driver.session.is_closed() {
            if out.is_empty() {
                break;
            }
            linger_until.get_or_insert_with(|| tokio::time::Instant::now() + limits.close_linger);
        }
        let deadline = driver
            .session
            .next_deadline()
            .map(tokio::time::Instant::from_std);
        let can_read = read_open
            && !driver.session.is_closed()
            && out.len() + driver.session.tx_backlog() < limits.max_tx_backlog;
        tokio::select! {
            biased;
            r = wr.write(&out), if !out.is_empty() => match r {
                Ok(n) if n > 0 => { out.drain(..n); }
                _ => {
                    out.clear();
                    driver.session.transport_closed(now());
                }
            },
            Some(msg) = driver.results.1.recv() => driver.on_work_message(msg),
            Some(cmd) = next_command(&mut driver.commands) => driver.on_command(cmd),
            r = rd.read(&mut rbuf), if can_read => match r {
                Ok(n) if n > 0 => driver.session.receive(rbuf.get(..n).unwrap_or_default(), now()),
                _ => {
                    read_open = false;
                    driver.session.transport_closed(now());
                }
            },
            () = sleep_until_opt(deadline), if deadline.is_some() => {
                driver.session.handle_timeout(now());
            }
            reason = &mut shutdown, if !shutdown_seen => {
                shutdown_seen = true;
                driver.session.close(reason, now());
            }
            () = sleep_until_opt(linger_until), if linger_until.is_some() => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    driver.handle_events();
    driver.closed.take().unwrap_or(CloseReason::TransportClosed)
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Messages from scan tasks back to the connection task.
enum WorkMessage {
    /// A streaming scan consumed this many bytes of `id`.
    Consumed(EventId, usize),
    /// The scan of `id` is over; the content comes back when it was
    /// buffered (for a quarantine).
    Done(EventId, WorkResult, Option<Vec<u8>>),
    /// A quarantine store `put` for an automatic remediation ended.
    Quarantined(Box<AutoRemediation>, Result<String, String>),
    /// The farm's answer for the identity of `id` (`None`: a miss, an
    /// error or a timeout: the content is fetched).
    FarmIdentity(EventId, Option<crate::farm::FarmVerdict>),
    /// The farm's answer for buffered content of `id` with this key
    /// (`None`: scanned here).
    FarmContent(
        EventId,
        crate::cache::ContentKey,
        Option<crate::farm::FarmVerdict>,
        Vec<u8>,
        crate::farm::FlightGuard,
    ),
}

/// An automatic remediation under way.
#[derive(Debug)]
struct AutoRemediation {
    query: Arc<Query>,
    threat: String,
    action: crate::remediation::RemediationAction,
    quarantine_id: Option<String>,
}

enum WorkResult {
    Scanned(ScanOutcome),
    ContentCacheHit(CachedVerdict),
}

enum Feed {
    /// Buffering small content.
    Buffer(Vec<u8>),
    /// Streaming into a blocking scan task.
    Stream(mpsc::UnboundedSender<(Vec<u8>, bool)>),
    /// Handed to a scan task, waiting for its result.
    Scanning,
}

struct Work {
    query: Arc<Query>,
    set: Arc<SignatureSet>,
    feed: Feed,
    /// Content bytes delivered beyond the inline ones: pulled with reads.
    bytes: u64,
    /// Bytes of this work counted in `Driver::buffered`.
    held: usize,
    /// This query leads the farm lookup and scan of its content: dropped
    /// (waking the others) once the verdict is in the local cache, or
    /// when the work is dropped.
    flight: Option<crate::farm::FlightGuard>,
}

struct Driver {
    session: HostSession,
    ctx: Arc<ScanContext>,
    guest: GuestId,
    scope: Arc<str>,
    /// The scope shared with the farm ([`crate::farm::shared_scope`]), when
    /// there is a farm that shares identities and this guest has one.
    farm_scope: Option<Arc<str>>,
    /// Asked once, at the handshake; kept (with the slot it holds) until
    /// the connection ends.
    admit: Option<Box<dyn Admit>>,
    work: std::collections::HashMap<EventId, Work>,
    results: (
        mpsc::UnboundedSender<WorkMessage>,
        mpsc::UnboundedReceiver<WorkMessage>,
    ),
    closed: Option<CloseReason>,
    /// The guest, once admitted (announced to the observer as connected).
    connected: Option<Arc<GuestInfo>>,
    /// Content bytes buffered (or handed to buffered scans) by this
    /// connection, bounded by [`Limits::scan_buffer_total`].
    buffered: usize,
    /// This connection's serial in the guest registry, once connected.
    serial: Option<u64>,
    /// The guest's counters in the registry (`/metrics` by guest), once
    /// connected.
    counters: Option<Arc<crate::guests::GuestCounters>>,
    /// Commands of the admin interface, once connected.
    commands: Option<mpsc::UnboundedReceiver<GuestCommand>>,
    /// Who waits for each host action's end, by request id.
    replies: std::collections::HashMap<u64, Reply>,
    /// What the audit line of an admin's or a policy's host action says,
    /// by request id (automatic remediations carry their own).
    audit_meta: std::collections::HashMap<u64, ActionAudit>,
    /// When this guest's snapshot last went to the farm for a `Health`
    /// change or a detection ([`crate::farm::GUEST_PUBLISH_GAP`]).
    guest_published: Option<std::time::Instant>,
}

/// What a host action's audit line names, kept from its request to its end.
struct ActionAudit {
    origin: &'static str,
    operation: Option<&'static str>,
    path: Option<GuestPath>,
    file: Option<thinagent_protocol::FileIdentity>,
    policy_version: Option<u64>,
}

/// Who waits for a host action.
enum Reply {
    /// An automatic remediation.
    Auto(Box<AutoRemediation>),
    /// A `Policy` of this version: its answer goes to the registry.
    Policy(u64),
    Action(tokio::sync::oneshot::Sender<Result<ActionOutcome, ActionError>>),
    Scan(mpsc::UnboundedSender<ScanUpdate>),
}

/// The next command, or never when there is no channel (not connected).
async fn next_command(
    commands: &mut Option<mpsc::UnboundedReceiver<GuestCommand>>,
) -> Option<GuestCommand> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn remove_work(&mut self, id: EventId) -> Option<Work> {
        let w = self.work.remove(&id)?;
        self.buffered = self.buffered.saturating_sub(w.held);
        Some(w)
    }

    fn handle_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::Connected(info) => {
                    self.scope = self.guest.cache_scope(&info.name);
                    self.farm_scope = self
                        .ctx
                        .farm
                        .as_ref()
                        .filter(|f| f.shares_identity())
                        .and_then(|_| crate::farm::shared_scope(&self.guest.peer()));
                    self.ctx.observer.on_handshake(&self.guest, &info);
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.serial = Some(self.ctx.guests.connected(&self.guest, &info, tx));
                    self.counters = Some(self.ctx.guests.counters(&self.guest));
                    self.commands = Some(rx);
                    // §14.6: the host sends its policy after every HelloAck.
                    self.push_policy();
                    if let Some(admit) = self.admit.as_mut()
                        && let Err(reason) = admit.admit(&self.guest, &info)
                    {
                        self.session.close(reason, now());
                    } else {
                        self.ctx.observer.on_guest_connected(&self.guest, &info);
                        self.connected = Some(info);
                        self.publish_guest("connected");
                    }
                }
                SessionEvent::Health(h) => {
                    if self.ctx.guests.health(&self.guest, h) {
                        self.publish_guest_paced("health");
                    }
                }
                SessionEvent::ActionDone { id, kind, outcome } => {
                    tracing::info!(
                        guest = %self.guest,
                        id,
                        action = kind.as_str(),
                        ?outcome,
                        "host action ended"
                    );
                    if let Some(c) = &self.counters {
                        c.action_ended(kind.as_str(), crate::guests::describe_outcome(outcome).1);
                    }
                    if let Some(meta) = self.audit_meta.remove(&id) {
                        self.report_host_action(id, kind.as_str(), meta, outcome);
                    }
                    match self.replies.remove(&id) {
                        Some(Reply::Action(tx)) => {
                            let _ = tx.send(Ok(outcome));
                        }
                        Some(Reply::Auto(auto)) => {
                            let (_, status, detail) = crate::guests::describe_outcome(outcome);
                            self.report_remediation(&auto, status, detail);
                        }
                        Some(Reply::Policy(version)) => {
                            self.ctx.guests.policy_result(&self.guest, version, outcome);
                        }
                        Some(Reply::Scan(tx)) => {
                            let _ = tx.send(ScanUpdate::Done(Ok(outcome)));
                        }
                        None => {}
                    }
                }
                SessionEvent::ScanProgress { id, counters } => {
                    if let Some(Reply::Scan(tx)) = self.replies.get(&id) {
                        let _ = tx.send(ScanUpdate::Progress(counters));
                    }
                }
                SessionEvent::Query(q) => self.on_query(q),
                SessionEvent::Content { id, offset, data } => self.on_content(id, offset, data),
                SessionEvent::ContentEnd { id, .. } => self.on_content_end(id),
                SessionEvent::ContentFailed { id, reason } => {
                    if let Some(w) = self.remove_work(id) {
                        let decision = self.session.limits().policy.error;
                        self.answer(
                            &w.query,
                            decision,
                            None,
                            0,
                            w.bytes,
                            VerdictSource::ReadFailed(reason),
                        );
                    }
                }
                SessionEvent::Finished { query, outcome } => {
                    let bytes = self.remove_work(query.id).map_or(0, |w| w.bytes);
                    let (verdict, source) = match outcome {
                        QueryOutcome::Policy { decision, reason } => {
                            (Some(decision), VerdictSource::Policy(reason))
                        }
                        QueryOutcome::Abandoned => (None, VerdictSource::Abandoned),
                    };
                    self.audit(&query, verdict, None, bytes, source);
                }
                SessionEvent::Anomaly(a) => self.ctx.observer.on_protocol_event(&self.guest, &a),
                SessionEvent::Closed(reason) => {
                    if let Some(info) = self.connected.take() {
                        self.ctx
                            .observer
                            .on_guest_disconnected(&self.guest, &info, &reason);
                    }
                    self.ctx.observer.on_session_closed(&self.guest, &reason);
                    if let Some(serial) = self.serial.take() {
                        self.ctx.guests.disconnected(&self.guest, serial);
                        self.publish_guest("disconnected");
                    }
                    self.commands = None;
                    self.closed = Some(reason);
                    // Dropping the work drops stream senders: scan tasks end.
                    self.work.clear();
                    self.buffered = 0;
                }
            }
        }
    }

    /// Sends this guest's snapshot to the farm (when there is one), with
    /// an events stream entry saying `why`.
    fn publish_guest(&mut self, why: &'static str) {
        let Some(farm) = &self.ctx.farm else { return };
        if let Some(view) = self
            .ctx
            .guests
            .view(&crate::guests::registry_key(&self.guest))
        {
            farm.publish_guest(&view, Some(why));
        }
    }

    /// [`publish_guest`](Self::publish_guest), at most once per
    /// [`crate::farm::GUEST_PUBLISH_GAP`] (the periodic refresh carries a
    /// change made sooner to the guest's hash).
    fn publish_guest_paced(&mut self, why: &'static str) {
        if self.ctx.farm.is_none()
            || self
                .guest_published
                .is_some_and(|at| at.elapsed() < crate::farm::GUEST_PUBLISH_GAP)
        {
            return;
        }
        self.guest_published = Some(std::time::Instant::now());
        self.publish_guest(why);
    }

    /// Sends the host's current guest policy, if one is set and the guest
    /// takes it (§14.6).
    fn push_policy(&mut self) {
        let (version, policy) = self.ctx.guest_policy.get();
        let Some(info) = self.session.guest().cloned() else {
            return;
        };
        if version == 0
            || info.version < thinagent_protocol::HOST_ACTIONS_VERSION
            || !info
                .capabilities
                .contains(thinagent_protocol::Capabilities::POLICY)
        {
            return;
        }
        let mut buf = Vec::new();
        let msg = policy.to_message(version, info.os, &mut buf);
        match self.session.set_policy(&msg, now()) {
            Ok(id) => {
                self.ctx.guests.policy_sent(&self.guest, version);
                self.replies.insert(id, Reply::Policy(version));
                self.audit_meta.insert(
                    id,
                    ActionAudit {
                        origin: "policy",
                        operation: None,
                        path: None,
                        file: None,
                        policy_version: Some(version),
                    },
                );
            }
            Err(e) => tracing::warn!(guest = %self.guest, version, "policy not sent: {e}"),
        }
    }

    /// A command of the admin interface for this guest (host actions, §14).
    fn on_command(&mut self, command: GuestCommand) {
        let at = now();
        match command {
            GuestCommand::Remediate {
                action,
                path,
                file,
                deadline,
                reply,
            } => match self.session.remediate(action, &path, file, deadline, at) {
                Ok(id) => {
                    self.replies.insert(id, Reply::Action(reply));
                    self.audit_meta.insert(
                        id,
                        ActionAudit {
                            origin: "admin",
                            operation: Some(match action {
                                thinagent_protocol::RemediateAction::Delete => "delete",
                                thinagent_protocol::RemediateAction::Truncate => "truncate",
                            }),
                            path: Some(path),
                            file: Some(file),
                            policy_version: None,
                        },
                    );
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            GuestCommand::Scan {
                root,
                options,
                updates,
            } => match self.session.scan_tree(&root, options, at) {
                Ok(id) => {
                    let _ = updates.send(ScanUpdate::Started(id));
                    self.replies.insert(id, Reply::Scan(updates));
                    self.audit_meta.insert(
                        id,
                        ActionAudit {
                            origin: "admin",
                            operation: None,
                            path: Some(root),
                            file: None,
                            policy_version: None,
                        },
                    );
                }
                Err(e) => {
                    let _ = updates.send(ScanUpdate::Done(Err(e)));
                }
            },
            GuestCommand::Restore {
                path,
                content,
                deadline,
                reply,
            } => match self.session.restore(&path, &content, deadline, at) {
                Ok(id) => {
                    self.replies.insert(id, Reply::Action(reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            GuestCommand::PushPolicy => self.push_policy(),
            GuestCommand::CancelScan { id } => {
                if let Err(e) = self.session.cancel_scan(id, at) {
                    tracing::info!(guest = %self.guest, id, "scan cancel not sent: {e}");
                }
            }
        }
    }

    fn on_query(&mut self, q: Arc<Query>) {
        let set = self.ctx.signatures.load_full();
        let cached = if has_identity(&q.file) {
            self.ctx
                .caches
                .identity
                .get(&self.scope, &q.file, set.generation(), now())
        } else {
            None
        };
        if let Some(v) = cached {
            let (decision, ttl) = self.decision_of(&v);
            let threat = v.threat.as_deref().map(str::to_owned);
            self.answer_with_engine(
                &q,
                decision,
                threat,
                v.engine,
                ttl,
                0,
                VerdictSource::IdentityCache,
            );
            return;
        }
        let id = q.id;
        let file = q.file;
        let digest = *set.farm_digest();
        self.work.insert(
            id,
            Work {
                query: q,
                set,
                feed: Feed::Buffer(Vec::new()),
                bytes: 0,
                held: 0,
                flight: None,
            },
        );
        if let (Some(farm), Some(scope)) = (&self.ctx.farm, &self.farm_scope)
            && has_identity(&file)
        {
            // The farm first (another host may have judged this guest's
            // file); its answer, or its miss, comes back as a message.
            let (farm, scope) = (Arc::clone(farm), Arc::clone(scope));
            let results = self.results.0.clone();
            tokio::spawn(async move {
                let found = farm.identity(&scope, &file, &digest).await;
                let _ = results.send(WorkMessage::FarmIdentity(id, found));
            });
            return;
        }
        // Too large or no READ_CONTENT: the session answers by policy and
        // reports `Finished`, which removes the work.
        let _ = self.session.fetch(id, now());
    }

    /// Buffered content of `id` is complete and there is a farm: the local
    /// content cache, else the farm (a message back), on this task when
    /// `on_task`, else on a blocking thread.
    fn farm_content_lookup(
        &mut self,
        id: EventId,
        set: Arc<SignatureSet>,
        buf: Vec<u8>,
        on_task: bool,
    ) {
        let ctx = Arc::clone(&self.ctx);
        let results = self.results.0.clone();
        let runtime = tokio::runtime::Handle::current();
        let lookup = move || {
            let key = content_key(&buf);
            if let Some(v) = ctx.caches.content.get(&key, set.generation(), now()) {
                let _ = results.send(WorkMessage::Done(
                    id,
                    WorkResult::ContentCacheHit(v),
                    Some(buf),
                ));
                return;
            }
            let Some(farm) = ctx.farm.clone() else {
                let result = WorkResult::Scanned(scan_complete(&set, &buf, key));
                let _ = results.send(WorkMessage::Done(id, result, Some(buf)));
                return;
            };
            let digest = *set.farm_digest();
            let flight = farm.content_flight(&key);
            runtime.spawn(async move {
                let guard = match flight {
                    crate::farm::Flight::Lead(guard) => guard,
                    crate::farm::Flight::Follow(follower) => {
                        follower.wait().await;
                        if let Some(v) = ctx.caches.content.get(&key, set.generation(), now()) {
                            let hit = WorkResult::ContentCacheHit(v);
                            let _ = results.send(WorkMessage::Done(id, hit, Some(buf)));
                            return;
                        }
                        // The leader gave up (its guest left, an engine
                        // failed) or took too long: lead now, or follow
                        // a newer leader once more at most.
                        match farm.content_flight(&key) {
                            crate::farm::Flight::Lead(guard) => guard,
                            crate::farm::Flight::Follow(follower) => {
                                follower.wait().await;
                                if let Some(v) =
                                    ctx.caches.content.get(&key, set.generation(), now())
                                {
                                    let hit = WorkResult::ContentCacheHit(v);
                                    let _ = results.send(WorkMessage::Done(id, hit, Some(buf)));
                                    return;
                                }
                                // Off the runtime's threads, as any
                                // scan of buffered content may be large.
                                tokio::task::spawn_blocking(move || {
                                    let result =
                                        WorkResult::Scanned(scan_complete(&set, &buf, key));
                                    let _ = results.send(WorkMessage::Done(id, result, Some(buf)));
                                });
                                return;
                            }
                        }
                    }
                };
                let found = farm.content(&key, &digest).await;
                let _ = results.send(WorkMessage::FarmContent(id, key, found, buf, guard));
            });
        };
        if on_task {
            lookup();
        } else {
            tokio::task::spawn_blocking(lookup);
        }
    }

    /// The farm answered (or missed) for buffered content.
    fn on_farm_content(
        &mut self,
        id: EventId,
        key: crate::cache::ContentKey,
        found: Option<crate::farm::FarmVerdict>,
        buf: Vec<u8>,
        guard: crate::farm::FlightGuard,
    ) {
        let Some(w) = self.work.get_mut(&id) else {
            return;
        };
        let set = Arc::clone(&w.set);
        if let Some(found) = found {
            let v = found.to_cached(set.generation());
            self.ctx.caches.content.insert(key, v.clone(), now());
            drop(guard);
            let hit = WorkMessage::Done(id, WorkResult::ContentCacheHit(v), Some(buf));
            self.on_work_message(hit);
            return;
        }
        // Scanned here: the followers wait until the verdict is cached (or
        // the work is dropped).
        w.flight = Some(guard);
        if w.query.inline.whole_file
            && buf.len() <= self.ctx.limits.scan_on_task_max
            && !set.blocks()
        {
            let result = WorkResult::Scanned(scan_complete(&set, &buf, key));
            self.on_work_message(WorkMessage::Done(id, result, Some(buf)));
        } else {
            let results = self.results.0.clone();
            tokio::task::spawn_blocking(move || {
                let result = WorkResult::Scanned(scan_complete(&set, &buf, key));
                let _ = results.send(WorkMessage::Done(id, result, Some(buf)));
            });
        }
    }

    /// The farm answered (or missed) for the identity of `id`.
    fn on_farm_identity(&mut self, id: EventId, found: Option<crate::farm::FarmVerdict>) {
        let Some(w) = self.work.get(&id) else {
            return;
        };
        let Some(found) = found else {
            let _ = self.session.fetch(id, now());
            return;
        };
        let v = found.to_cached(w.set.generation());
        let Some(w) = self.remove_work(id) else {
            return;
        };
        self.ctx
            .caches
            .identity
            .insert(&self.scope, &w.query.file, v.clone(), now());
        let (decision, ttl) = self.decision_of(&v);
        let threat = v.threat.as_deref().map(str::to_owned);
        self.answer_with_engine(
            &w.query,
            decision,
            threat,
            v.engine,
            ttl,
            0,
            VerdictSource::IdentityCache,
        );
    }

    fn on_content(&mut self, id: EventId, offset: u64, data: Vec<u8>) {
        let buffer_max = self.ctx.limits.scan_buffer_max;
        let room = self
            .ctx
            .limits
            .scan_buffer_total
            .saturating_sub(self.buffered);
        let Some(w) = self.work.get_mut(&id) else {
            self.session.consumed(id, data.len());
            return;
        };
        let len = data.len();
        // Bytes the guest sent inline were not pulled (§5.3.1): count only
        // what lies past them.
        let end = offset.saturating_add(len as u64);
        let inline_end = u64::from(w.query.inline.len);
        w.bytes = w
            .bytes
            .saturating_add(end.saturating_sub(offset.max(inline_end)));
        match &mut w.feed {
            Feed::Buffer(buf) if buf.len() + len <= buffer_max && len <= room => {
                if buf.is_empty() {
                    // The first chunk (e.g. the inline bytes) becomes the
                    // buffer: no copy.
                    *buf = data;
                } else {
                    buf.extend_from_slice(&data);
                }
                w.held += len;
                self.buffered += len;
                self.session.consumed(id, len);
            }
            Feed::Buffer(buf) => {
                self.buffered = self.buffered.saturating_sub(w.held);
                w.held = 0;
                // Too large to buffer: stream it from here on.
                // The buffered head was consumed when it was buffered; the
                // new chunk is consumed when the scan task reports it.
                let head = std::mem::take(buf);
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = tx.send((head, false));
                let _ = tx.send((data, true));
                w.feed = Feed::Stream(tx);
                spawn_stream_scan(
                    id,
                    Arc::clone(&w.set),
                    w.query.file.size,
                    rx,
                    self.results.0.clone(),
                );
            }
            Feed::Stream(tx) => {
                if tx.send((data, true)).is_err() {
                    self.session.consumed(id, len);
                }
            }
            Feed::Scanning => self.session.consumed(id, len),
        }
    }

    fn on_content_end(&mut self, id: EventId) {
        let Some(w) = self.work.get_mut(&id) else {
            return;
        };
        match std::mem::replace(&mut w.feed, Feed::Scanning) {
            Feed::Buffer(buf) if self.ctx.farm.is_some() => {
                let set = Arc::clone(&w.set);
                let on_task = w.query.inline.whole_file
                    && buf.len() <= self.ctx.limits.scan_on_task_max
                    && !set.blocks();
                self.farm_content_lookup(id, set, buf, on_task);
            }
            Feed::Buffer(buf)
                if w.query.inline.whole_file
                    && buf.len() <= self.ctx.limits.scan_on_task_max
                    && !w.set.blocks() =>
            {
                // Whole inline and small: no thread hop (see
                // `SCAN_ON_TASK_MAX`).
                let set = Arc::clone(&w.set);
                let result = lookup_or_scan(&self.ctx, &set, &buf);
                self.on_work_message(WorkMessage::Done(id, result, Some(buf)));
            }
            Feed::Buffer(buf) => {
                let set = Arc::clone(&w.set);
                let ctx = Arc::clone(&self.ctx);
                let results = self.results.0.clone();
                tokio::task::spawn_blocking(move || {
                    let result = lookup_or_scan(&ctx, &set, &buf);
                    let _ = results.send(WorkMessage::Done(id, result, Some(buf)));
                });
            }
            // Dropping the sender ends the stream; the task finishes the scan.
            Feed::Stream(tx) => drop(tx),
            Feed::Scanning => {}
        }
    }

    fn on_work_message(&mut self, msg: WorkMessage) {
        match msg {
            WorkMessage::Consumed(id, n) => self.session.consumed(id, n),
            WorkMessage::FarmIdentity(id, found) => self.on_farm_identity(id, found),
            WorkMessage::FarmContent(id, key, found, buf, guard) => {
                self.on_farm_content(id, key, found, buf, guard);
            }
            WorkMessage::Quarantined(auto, stored) => match stored {
                Ok(entry) => {
                    let auto = AutoRemediation {
                        quarantine_id: Some(entry),
                        ..*auto
                    };
                    self.send_auto_remediation(auto);
                }
                Err(e) => self.report_remediation(
                    &auto,
                    "kept",
                    format!("the quarantine store refused the file ({e}): not deleted"),
                ),
            },
            WorkMessage::Done(id, result, content) => {
                let Some(w) = self.remove_work(id) else {
                    return;
                };
                let generation = w.set.generation();
                let (verdict, source) = match result {
                    WorkResult::ContentCacheHit(verdict) => {
                        (Some(verdict), VerdictSource::ContentCache)
                    }
                    WorkResult::Scanned(outcome) => {
                        let verdict = match outcome.verdict {
                            ScanVerdict::Clean => Some(CachedVerdict::clean(generation)),
                            ScanVerdict::Infected(d) => {
                                Some(CachedVerdict::infected(&d.threat, d.engine, generation))
                            }
                            ScanVerdict::Error(errors) => {
                                for e in &errors {
                                    self.ctx.observer.on_engine_error(&self.guest, e);
                                }
                                None
                            }
                        };
                        if let (Some(v), Some(key)) = (&verdict, outcome.content_key) {
                            self.ctx.caches.content.insert(key, v.clone(), now());
                            if let Some(farm) = &self.ctx.farm {
                                farm.put_content(&key, w.set.farm_digest(), v);
                            }
                        }
                        (verdict, VerdictSource::Scanned)
                    }
                };
                match verdict {
                    Some(v) => {
                        if has_identity(&w.query.file) {
                            self.ctx.caches.identity.insert(
                                &self.scope,
                                &w.query.file,
                                v.clone(),
                                now(),
                            );
                            if let (Some(farm), Some(scope)) = (&self.ctx.farm, &self.farm_scope) {
                                farm.put_identity(scope, &w.query.file, w.set.farm_digest(), &v);
                            }
                        }
                        let (decision, ttl) = self.decision_of(&v);
                        let threat = v.threat.as_deref().map(str::to_owned);
                        let engine = v.engine;
                        self.answer_full(
                            &w.query, decision, threat, engine, ttl, w.bytes, source, content,
                        );
                    }
                    None => {
                        let decision = self.session.limits().policy.error;
                        self.answer(
                            &w.query,
                            decision,
                            None,
                            0,
                            w.bytes,
                            VerdictSource::EngineFailed,
                        );
                    }
                }
            }
        }
    }

    fn decision_of(&self, v: &CachedVerdict) -> (Decision, u32) {
        let decision = if v.threat.is_some() {
            Decision::Deny
        } else {
            Decision::Allow
        };
        (decision, self.ctx.limits.verdict_ttl_secs)
    }

    fn answer(
        &mut self,
        query: &Arc<Query>,
        decision: Decision,
        threat: Option<String>,
        ttl: u32,
        bytes: u64,
        source: VerdictSource,
    ) {
        self.answer_with_engine(query, decision, threat, None, ttl, bytes, source);
    }

    #[allow(clippy::too_many_arguments)]
    fn answer_with_engine(
        &mut self,
        query: &Arc<Query>,
        decision: Decision,
        threat: Option<String>,
        engine: Option<&'static str>,
        ttl: u32,
        bytes: u64,
        source: VerdictSource,
    ) {
        self.answer_full(query, decision, threat, engine, ttl, bytes, source, None);
    }

    /// Sends the verdict; a detection is recorded and, per the
    /// `[remediation]` rules, remediated (`content`: the file's bytes when
    /// the scanner holds them, for a quarantine).
    #[allow(clippy::too_many_arguments)]
    fn answer_full(
        &mut self,
        query: &Arc<Query>,
        decision: Decision,
        threat: Option<String>,
        engine: Option<&'static str>,
        ttl: u32,
        bytes: u64,
        source: VerdictSource,
        content: Option<Vec<u8>>,
    ) {
        let name = threat.as_deref().unwrap_or("");
        // Refused only when the session already ended the query (timeout,
        // close): its `Finished` event was audited instead.
        if self
            .session
            .verdict(query.id, decision, name, ttl, now())
            .is_ok()
        {
            if decision == Decision::Deny
                && let Some(threat) = &threat
            {
                self.ctx.guests.detection(
                    &self.guest,
                    Detection {
                        path: query.path.clone(),
                        file: query.file,
                        threat: threat.clone(),
                        at: SystemTime::now(),
                    },
                );
            }
            let detected = (decision == Decision::Deny)
                .then(|| threat.clone())
                .flatten();
            self.audit_full(query, Some(decision), threat, engine, bytes, source);
            if detected.is_some() {
                self.publish_guest_paced("detection");
            }
            if let Some(threat) = detected {
                self.auto_remediate(query, threat, engine, content);
            }
        }
    }

    /// Applies the `[remediation]` rule of `threat` to a denied file.
    fn auto_remediate(
        &mut self,
        query: &Arc<Query>,
        threat: String,
        engine: Option<&'static str>,
        content: Option<Vec<u8>>,
    ) {
        use crate::remediation::RemediationAction;
        let action = self.ctx.remediation.action_for(&threat);
        if action == RemediationAction::Deny {
            return;
        }
        let auto = AutoRemediation {
            query: Arc::clone(query),
            threat,
            action,
            quarantine_id: None,
        };
        let info = &query.guest;
        if info.version < thinagent_protocol::HOST_ACTIONS_VERSION
            || !info
                .capabilities
                .contains(thinagent_protocol::Capabilities::REMEDIATE)
        {
            let detail = "the guest's agent does not take remediation (protocol version 2, REMEDIATE): the open was denied, the file is kept".to_owned();
            self.report_remediation(&auto, "unsupported", detail);
            return;
        }
        let per_minute = self.ctx.remediation.max_per_guest_per_minute;
        if !self.ctx.remediation_rate.take(
            &crate::guests::registry_key(&self.guest),
            per_minute,
            now(),
        ) {
            let detail = format!(
                "more than {per_minute} remediations of this guest in a minute (remediation.max_per_guest_per_minute): the file is kept"
            );
            self.report_remediation(&auto, "rate-limited", detail);
            return;
        }
        if action == RemediationAction::Delete {
            self.send_auto_remediation(auto);
            return;
        }
        // Quarantine: the bytes first, the delete only once they are stored.
        let whole = content.filter(|c| c.len() as u64 == query.file.size);
        let (Some(bytes), Some(store)) = (whole, self.ctx.quarantine.clone()) else {
            let detail = "the scanner does not hold the whole file (streamed because large, or denied from a cache): not quarantined, so not deleted".to_owned();
            self.report_remediation(&auto, "kept", detail);
            return;
        };
        let entry = crate::quarantine::NewEntry {
            guest: crate::records::GuestRecord::new(&self.guest, info),
            path: crate::records::PathRecord::from(&query.path),
            file: crate::records::FileRecord::from(&query.file),
            threat: auto.threat.clone(),
            engine: engine.map(str::to_owned),
        };
        let results = self.results.0.clone();
        tokio::task::spawn_blocking(move || {
            let stored = store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .put(&bytes, entry, SystemTime::now())
                .map(|e| e.id)
                .map_err(|e| e.to_string());
            let _ = results.send(WorkMessage::Quarantined(Box::new(auto), stored));
        });
    }

    /// Asks the guest to delete the file of `auto`.
    fn send_auto_remediation(&mut self, auto: AutoRemediation) {
        let deadline = Duration::from_millis(self.ctx.remediation.deadline_ms);
        match self.session.remediate(
            thinagent_protocol::RemediateAction::Delete,
            &auto.query.path,
            auto.query.file,
            deadline,
            now(),
        ) {
            Ok(id) => {
                self.replies.insert(id, Reply::Auto(Box::new(auto)));
            }
            Err(e) => {
                let detail = format!("not sent: {e}");
                self.report_remediation(&auto, "failed", detail);
            }
        }
    }

    /// An admin's or a policy's host action ended: to the observer.
    fn report_host_action(
        &self,
        id: u64,
        action: &'static str,
        meta: ActionAudit,
        outcome: ActionOutcome,
    ) {
        let Some(guest_info) = self.session.guest().cloned() else {
            return;
        };
        let threat = match (&meta.path, meta.operation) {
            (Some(path), Some(_)) => self
                .ctx
                .guests
                .find_detection(
                    &crate::guests::registry_key(&self.guest),
                    &path.to_string_lossy(),
                )
                .map(|d| d.threat),
            _ => None,
        };
        self.ctx.observer.on_host_action(&HostActionRecord {
            guest: self.guest.clone(),
            guest_info,
            request_id: id,
            action,
            origin: meta.origin,
            operation: meta.operation,
            path: meta.path,
            file: meta.file,
            threat,
            policy_version: meta.policy_version,
            outcome,
        });
    }

    fn report_remediation(&self, auto: &AutoRemediation, status: &'static str, detail: String) {
        self.ctx.observer.on_remediation(&RemediationRecord {
            guest: self.guest.clone(),
            guest_info: Arc::clone(&auto.query.guest),
            path: auto.query.path.clone(),
            file: auto.query.file,
            threat: auto.threat.clone(),
            action: auto.action,
            status,
            detail,
            quarantine_id: auto.quarantine_id.clone(),
        });
    }

    fn audit(
        &self,
        query: &Query,
        verdict: Option<Decision>,
        threat: Option<String>,
        bytes: u64,
        source: VerdictSource,
    ) {
        self.audit_full(query, verdict, threat, None, bytes, source);
    }

    fn audit_full(
        &self,
        query: &Query,
        verdict: Option<Decision>,
        threat: Option<String>,
        engine: Option<&'static str>,
        bytes: u64,
        source: VerdictSource,
    ) {
        let record = AuditRecord {
            time: SystemTime::now(),
            guest: self.guest.clone(),
            guest_name: query.guest.name.clone(),
            guest_info: Arc::clone(&query.guest),
            file: query.file,
            raw_path: query.path.clone(),
            event_id: query.id,
            kind: query.kind,
            path: query.path.to_string_lossy(),
            verdict,
            threat,
            engine,
            bytes,
            inline: query.inline,
            duration: now().saturating_duration_since(query.received_at),
            source,
        };
        if let Some(c) = &self.counters {
            c.verdict(verdict, record.source.is_policy(), bytes);
        }
        self.ctx.observer.on_verdict(&record);
    }
}

/// Complete content: the cross-guest content cache by its BLAKE3, else a
/// scan by every engine of `set`.
fn lookup_or_scan(ctx: &ScanContext, set: &Arc<SignatureSet>, buf: &[u8]) -> WorkResult {
    let key = content_key(buf);
    match ctx.caches.content.get(&key, set.generation(), now()) {
        Some(verdict) => WorkResult::ContentCacheHit(verdict),
        None => WorkResult::Scanned(scan_complete(set, buf, key)),
    }
}

/// Whether the guest sent a usable file identity: one with neither a file
/// id nor a last-write time would make every file of a size look alike, so
/// it is never cached by identity.
fn has_identity(file: &thinagent_protocol::FileIdentity) -> bool {
    file.file_id != [0; 16] || file.last_write_time != 0
}

/// Runs a streaming scan in a blocking task: chunks arrive on `rx` until
/// the sender is dropped; each consumed chunk still charged to the session's
/// budget (flag `true`) is reported so the session lets more content flow.
/// A detection is reported at once.
fn spawn_stream_scan(
    id: EventId,
    set: Arc<SignatureSet>,
    size: u64,
    mut rx: mpsc::UnboundedReceiver<(Vec<u8>, bool)>,
    results: mpsc::UnboundedSender<WorkMessage>,
) {
    tokio::task::spawn_blocking(move || {
        let mut scan = FileScan::new(&set, size);
        while let Some((chunk, charged)) = rx.blocking_recv() {
            let decided = scan.update(&chunk).is_some();
            if charged {
                let _ = results.send(WorkMessage::Consumed(id, chunk.len()));
            }
            if decided {
                break;
            }
        }
        let _ = results.send(WorkMessage::Done(
            id,
            WorkResult::Scanned(scan.finish()),
            None,
        ));
    });
}

#[cfg(test)]
mod tests {
    //! `serve_connection` against the real guest `Session` over an in-memory
    //! duplex stream.

    use std::collections::HashMap;
    use std::sync::Mutex;

    use thinagent_guest::{
        FailMode, Instant as GuestInstant, QueryVerdict, Session, SessionConfig,
        SessionEvent as GuestEvent,
    };
    use thinagent_protocol::{
        AgentVersion, Capabilities, CreateDisposition, FileEvent, FileIdentity, FilePath, OsKind,
        ReadOutcome,
    };
    use tokio::io::DuplexStream;

    use super::*;

    #[test]
    fn per_guest_scopes_come_from_the_transport_not_the_name() {
        let vsock = |cid, port| GuestId::Vsock { cid, port };
        // One CID is one VM whatever it calls itself, on any port.
        assert_eq!(vsock(3, 1).cache_scope("a"), vsock(3, 999).cache_scope("b"));
        assert_ne!(vsock(3, 1).cache_scope("a"), vsock(4, 1).cache_scope("a"));
        let tls = |subject: &str, port| GuestId::Tls {
            addr: SocketAddr::from(([192, 0, 2, 1], port)),
            subject: Arc::from(subject),
        };
        assert_eq!(
            tls("CN=vm-a", 1).cache_scope("x"),
            tls("CN=vm-a", 2).cache_scope("y")
        );
        assert_ne!(
            tls("CN=vm-a", 1).cache_scope("x"),
            tls("CN=vm-b", 1).cache_scope("x")
        );
        // Loopback TCP and Unix name only a host or a user: the scope adds
        // the name, so lab guests behind one address stay apart, and never
        // matches another address or uid.
        let tcp = |ip: [u8; 4], port| GuestId::Tcp(SocketAddr::from((ip, port)));
        assert_eq!(
            tcp([127, 0, 0, 1], 5).cache_scope("a"),
            tcp([127, 0, 0, 1], 6).cache_scope("a")
        );
        assert_ne!(
            tcp([127, 0, 0, 1], 5).cache_scope("a"),
            tcp([127, 0, 0, 1], 5).cache_scope("b")
        );
        assert_ne!(
            tcp([127, 0, 0, 1], 5).cache_scope("a"),
            tcp([127, 0, 0, 2], 5).cache_scope("a")
        );
        let unix = |uid, pid| GuestId::Unix {
            listener: "/run/t.sock".into(),
            uid: Some(uid),
            pid: Some(pid),
        };
        assert_eq!(unix(0, 10).cache_scope("a"), unix(0, 11).cache_scope("a"));
        assert_ne!(
            unix(0, 10).cache_scope("a"),
            unix(1000, 10).cache_scope("a")
        );
        // No scope of one transport equals one of another.
        assert_ne!(vsock(3, 1).cache_scope("a"), tls("3", 1).cache_scope("a"));
        assert_eq!(unix(7, 1).peer().to_string(), "unix:/run/t.sock:uid=7");
        assert_eq!(tls("CN=vm-a", 1).peer().to_string(), "tls:CN=vm-a");
        assert!(vsock(3, 1).peer().names_one_guest());
        assert!(!tcp([127, 0, 0, 1], 1).peer().names_one_guest());
    }
    use crate::engine::builtin::{EICAR, builtin_engines};
    use crate::engine::hash::{HashDbKind, HashEngine, SharedHashEngine};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<AuditRecord>>);

    impl ScanObserver for Recorder {
        fn on_verdict(&self, record: &AuditRecord) {
            self.0.lock().unwrap().push(record.clone());
        }
    }

    struct TestFile {
        path: &'static str,
        id: u8,
        content: Vec<u8>,
    }

    /// What one guest round saw.
    struct Round {
        verdicts: Vec<(String, QueryVerdict)>,
        reads: usize,
    }

    fn identity(f: &TestFile) -> FileIdentity {
        FileIdentity {
            volume_serial: 0xA1B2,
            file_id: [f.id; 16],
            size: f.content.len() as u64,
            last_write_time: 1,
        }
    }

    /// Runs a guest that opens `files` (all at once) on `stream` and waits
    /// for every verdict.
    async fn guest_round(
        guest: &mut Session<16, 256, 4>,
        stream: &mut DuplexStream,
        files: &[TestFile],
        t0: tokio::time::Instant,
        first: bool,
    ) -> Round {
        let now = || GuestInstant::from_nanos(t0.elapsed().as_nanos() as u64);
        if first {
            guest.start(now());
        }
        let mut by_query: HashMap<u64, usize> = HashMap::new();
        let mut submitted = !first;
        if submitted {
            for (i, f) in files.iter().enumerate() {
                let id = guest.submit(&event(f), now()).unwrap();
                by_query.insert(id, i);
            }
        }
        let mut verdicts = Vec::new();
        let mut reads = 0;
        let mut rbuf = vec![0u8; 70_000];
        let mut tbuf = vec![0u8; 70_000];
        loop {
            while let Some(ev) = guest.poll_event() {
                match ev {
                    GuestEvent::Connected { .. } => {
                        if !submitted {
                            submitted = true;
                            for (i, f) in files.iter().enumerate() {
                                let id = guest.submit(&event(f), now()).unwrap();
                                by_query.insert(id, i);
                            }
                        }
                    }
                    GuestEvent::Verdict(v) => {
                        let i = by_query[&v.query];
                        verdicts.push((files[i].path.to_owned(), v));
                    }
                    GuestEvent::ReadJob {
                        read_id,
                        query,
                        offset,
                        length,
                    } => {
                        reads += 1;
                        let content = &files[by_query[&query]].content;
                        let start = (offset as usize).min(content.len());
                        let end = (start + length as usize).min(content.len());
                        let data = &content[start..end];
                        let outcome = if end == content.len() {
                            ReadOutcome::EndOfFile(data)
                        } else {
                            ReadOutcome::Data(data)
                        };
                        // The guest's send buffer holds one full ReadData:
                        // drain it until the answer fits.
                        while let Err(e) = guest.read_completed(read_id, outcome, now()) {
                            assert_eq!(e, thinagent_guest::ReadError::Busy);
                            while let Some(n) = guest.poll_transmit(&mut tbuf) {
                                stream.write_all(&tbuf[..n]).await.unwrap();
                            }
                        }
                    }
                    GuestEvent::Closed { reason } => panic!("guest closed: {reason:?}"),
                    GuestEvent::HostRequest | GuestEvent::ScanCancelled { .. } => {
                        panic!("host request raised without its capability: {ev:?}")
                    }
                }
            }
            while let Some(n) = guest.poll_transmit(&mut tbuf) {
                stream.write_all(&tbuf[..n]).await.unwrap();
            }
            if verdicts.len() == files.len() {
                return Round { verdicts, reads };
            }
            let deadline = guest
                .next_deadline()
                .map(|d| t0 + Duration::from_nanos(d.as_nanos()));
            tokio::select! {
                r = stream.read(&mut rbuf) => {
                    let n = r.unwrap();
                    assert!(n > 0, "host closed the connection");
                    guest.receive(&rbuf[..n], now());
                }
                () = sleep_until_opt(deadline), if deadline.is_some() => guest.on_timeout(now()),
            }
        }
    }

    fn event(f: &TestFile) -> FileEvent<'_> {
        FileEvent {
            kind: EventKind::Open,
            process_id: 4242,
            desired_access: 0x0012_0089,
            create_disposition: CreateDisposition::Open,
            file: identity(f),
            path: FilePath::Utf8(f.path),
            content: thinagent_protocol::InlineContent::NONE,
        }
    }

    fn guest_session() -> Session<16, 256, 4> {
        Session::new(&SessionConfig {
            query_timeout: Duration::from_secs(30),
            fail_mode: FailMode::Open,
            os: OsKind::Linux,
            agent_version: AgentVersion::default(),
            capabilities: Capabilities::READ_CONTENT,
            guest_name: "test-vm",
        })
    }

    fn context(recorder: Arc<Recorder>, mut limits: Limits) -> Arc<ScanContext> {
        // Debug builds on a busy machine are slow; these tests are about
        // correctness, never speed (the guest waits 30 s).
        limits.session.query_timeout = Duration::from_secs(20);
        let mut hash = HashEngine::new();
        // md5("hello hash engine\n")
        let text = format!("{}:18:Test.Hash-Match\n", md5_of(b"hello hash engine\n"));
        hash.add_text(&text, HashDbKind::Hdb, std::path::Path::new("t.hdb"))
            .unwrap();
        let mut big_sig = HashEngine::new();
        big_sig
            .add_text(
                &format!("{}:*:Test.Big-File:73\n", sha256_of(&big_infected())),
                HashDbKind::Hsb,
                std::path::Path::new("big.hsb"),
            )
            .unwrap();
        let mut engines = builtin_engines();
        engines.push(Arc::new(SharedHashEngine(Arc::new(hash))));
        engines.push(Arc::new(SharedHashEngine(Arc::new(big_sig))));
        Arc::new(ScanContext::new(
            SignatureSet::from_engines(engines),
            limits,
            recorder,
        ))
    }

    fn md5_of(data: &[u8]) -> String {
        use md5::{Digest, Md5};
        hex(&Md5::digest(data))
    }

    fn sha256_of(data: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        hex(&Sha256::digest(data))
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn big_infected() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn eicar_denied_clean_allowed_hash_match_and_identity_cache_hit() {
        let recorder = Arc::new(Recorder::default());
        let limits = Limits {
            scan_buffer_max: 64 * 1024,
            ..Limits::default()
        };
        let ctx = context(Arc::clone(&recorder), limits);
        let (host_end, mut guest_end) = tokio::io::duplex(256 * 1024);
        let server = tokio::spawn(serve_connection(
            host_end,
            GuestId::Tcp("127.0.0.1:5000".parse().unwrap()),
            Arc::clone(&ctx),
        ));
        let clean_big: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
        let files = vec![
            TestFile {
                path: "/tmp/eicar.com",
                id: 1,
                content: EICAR.to_vec(),
            },
            TestFile {
                path: "/tmp/clean.txt",
                id: 2,
                content: b"just a clean file\n".to_vec(),
            },
            TestFile {
                path: "/tmp/hash.bin",
                id: 3,
                content: b"hello hash engine\n".to_vec(),
            },
            TestFile {
                path: "/tmp/big-clean.bin",
                id: 4,
                content: clean_big,
            },
            TestFile {
                path: "/tmp/big-infected.bin",
                id: 5,
                content: big_infected(),
            },
            TestFile {
                path: "/tmp/empty",
                id: 6,
                content: Vec::new(),
            },
        ];
        let t0 = tokio::time::Instant::now();
        let mut guest = guest_session();
        let round = guest_round(&mut guest, &mut guest_end, &files, t0, true).await;
        let got: HashMap<String, (Decision, String)> = round
            .verdicts
            .iter()
            .map(|(p, v)| (p.clone(), (v.decision, v.threat.as_str().to_owned())))
            .collect();
        assert_eq!(
            got["/tmp/eicar.com"],
            (Decision::Deny, "Eicar-Test-Signature".into())
        );
        assert_eq!(got["/tmp/clean.txt"], (Decision::Allow, String::new()));
        assert_eq!(
            got["/tmp/hash.bin"],
            (Decision::Deny, "Test.Hash-Match".into())
        );
        assert_eq!(got["/tmp/big-clean.bin"], (Decision::Allow, String::new()));
        assert_eq!(
            got["/tmp/big-infected.bin"],
            (Decision::Deny, "Test.Big-File".into())
        );
        assert_eq!(got["/tmp/empty"], (Decision::Allow, String::new()));
        assert!(round.reads >= 6 + 200_000 / 65_480, "reads {}", round.reads);
        for (_, v) in &round.verdicts {
            assert_eq!(v.cache_ttl_secs, 300);
        }

        // Reopen the same files: every answer comes from the identity
        // cache, with no content transfer at all.
        let again = guest_round(&mut guest, &mut guest_end, &files, t0, false).await;
        assert_eq!(again.reads, 0, "identity cache hit needs no ReadRequest");
        let again_got: HashMap<String, (Decision, String)> = again
            .verdicts
            .iter()
            .map(|(p, v)| (p.clone(), (v.decision, v.threat.as_str().to_owned())))
            .collect();
        assert_eq!(again_got, got);

        // Same content under new identities: transferred, answered from
        // the content cache (small files) without running the engines.
        let renamed: Vec<TestFile> = files
            .iter()
            .filter(|f| f.content.len() < 1000)
            .map(|f| TestFile {
                path: f.path,
                id: f.id + 100,
                content: f.content.clone(),
            })
            .collect();
        let third = guest_round(&mut guest, &mut guest_end, &renamed, t0, false).await;
        assert_eq!(third.verdicts.len(), renamed.len());
        assert!(third.reads >= renamed.len());

        guest.close(GuestInstant::from_nanos(t0.elapsed().as_nanos() as u64));
        let mut tbuf = [0u8; 256];
        while let Some(n) = guest.poll_transmit(&mut tbuf) {
            guest_end.write_all(&tbuf[..n]).await.unwrap();
        }
        let reason = server.await.unwrap();
        assert_eq!(reason, CloseReason::PeerGoodbye(GoodbyeReason::Shutdown));

        let records = recorder.0.lock().unwrap().clone();
        assert_eq!(records.len(), files.len() * 2 + renamed.len());
        let sources: Vec<VerdictSource> = records.iter().map(|r| r.source).collect();
        assert_eq!(
            sources
                .iter()
                .filter(|s| **s == VerdictSource::IdentityCache)
                .count(),
            files.len()
        );
        assert_eq!(
            sources
                .iter()
                .filter(|s| **s == VerdictSource::ContentCache)
                .count(),
            renamed.len()
        );
        let eicar = records.iter().find(|r| r.path == "/tmp/eicar.com").unwrap();
        assert_eq!(eicar.threat.as_deref(), Some("Eicar-Test-Signature"));
        assert_eq!(eicar.engine, Some("builtin"));
        assert_eq!(eicar.bytes, 68);
        assert_eq!(eicar.guest_name, "test-vm");
        let cached = records
            .iter()
            .find(|r| r.path == "/tmp/eicar.com" && r.source == VerdictSource::IdentityCache)
            .unwrap();
        assert_eq!(
            (cached.engine, cached.bytes, cached.verdict),
            (Some("builtin"), 0, Some(Decision::Deny))
        );
        let big = records
            .iter()
            .find(|r| r.path == "/tmp/big-infected.bin")
            .unwrap();
        assert_eq!(big.bytes, 300_000);
    }

    #[tokio::test]
    async fn signature_reload_invalidates_the_identity_cache() {
        let recorder = Arc::new(Recorder::default());
        let ctx = context(Arc::clone(&recorder), Limits::default());
        let (host_end, mut guest_end) = tokio::io::duplex(256 * 1024);
        let server = tokio::spawn(serve_connection(
            host_end,
            GuestId::Vsock { cid: 3, port: 1 },
            Arc::clone(&ctx),
        ));
        let files = vec![TestFile {
            path: "/x",
            id: 9,
            content: b"abc".to_vec(),
        }];
        let t0 = tokio::time::Instant::now();
        let mut guest = guest_session();
        let first = guest_round(&mut guest, &mut guest_end, &files, t0, true).await;
        assert_eq!(first.verdicts[0].1.decision, Decision::Allow);
        // The same file changed (another size): rescanned, not served from
        // the identity cache.
        let changed = vec![TestFile {
            path: "/x",
            id: 9,
            content: b"abcd".to_vec(),
        }];
        let rescan = guest_round(&mut guest, &mut guest_end, &changed, t0, false).await;
        assert!(rescan.reads > 0, "a changed file must be transferred again");
        // md5("abc") = 900150983cd24fb0d6963f7d28e17f72
        let mut hash = HashEngine::new();
        hash.add_text(
            "900150983cd24fb0d6963f7d28e17f72:3:Now-Known\n",
            HashDbKind::Hdb,
            std::path::Path::new("new.hdb"),
        )
        .unwrap();
        ctx.reload(SignatureSet::from_engines(vec![Arc::new(
            SharedHashEngine(Arc::new(hash)),
        )]));
        let second = guest_round(&mut guest, &mut guest_end, &files, t0, false).await;
        assert!(second.reads > 0, "reload must force a rescan");
        assert_eq!(second.verdicts[0].1.decision, Decision::Deny);
        assert_eq!(second.verdicts[0].1.threat.as_str(), "Now-Known");
        drop(guest_end);
        assert_eq!(server.await.unwrap(), CloseReason::TransportClosed);
    }

    #[tokio::test]
    async fn content_cache_is_shared_across_guests_by_blake3_of_the_content() {
        let recorder = Arc::new(Recorder::default());
        let ctx = context(Arc::clone(&recorder), Limits::default());
        let shared = b"the same library in two cloned VMs\n".to_vec();
        let other = b"THE SAME LENGTH, OTHER BYTES, VM B\n".to_vec();
        assert_eq!(shared.len(), other.len());
        let t0 = tokio::time::Instant::now();
        // Runs one guest (its own VM by vsock CID) opening `files` once.
        let run = |cid: u32, files: Vec<TestFile>| {
            let ctx = Arc::clone(&ctx);
            async move {
                let (host_end, mut guest_end) = tokio::io::duplex(256 * 1024);
                let server = tokio::spawn(serve_connection(
                    host_end,
                    GuestId::Vsock { cid, port: 1 },
                    ctx,
                ));
                let mut guest = guest_session();
                let round = guest_round(&mut guest, &mut guest_end, &files, t0, true).await;
                drop(guest_end);
                assert_eq!(server.await.unwrap(), CloseReason::TransportClosed);
                round
            }
        };
        run(
            3,
            vec![TestFile {
                path: "/lib/a.so",
                id: 1,
                content: shared.clone(),
            }],
        )
        .await;
        // The key is the BLAKE3 of the bytes the host read.
        let generation = ctx.signatures.load().generation();
        assert!(
            ctx.caches
                .content
                .get(&content_key(&shared), generation, now())
                .is_some()
        );
        // Another VM: the same bytes under another identity hit; other
        // bytes under the first VM's very identity miss and are scanned.
        let round = run(
            4,
            vec![
                TestFile {
                    path: "/lib/b.so",
                    id: 2,
                    content: shared.clone(),
                },
                TestFile {
                    path: "/lib/a.so",
                    id: 1,
                    content: other.clone(),
                },
            ],
        )
        .await;
        assert_eq!(round.verdicts.len(), 2);
        let records = recorder.0.lock().unwrap().clone();
        let source = |path: &str| {
            records
                .iter()
                .filter(|r| r.path == path)
                .map(|r| r.source)
                .collect::<Vec<_>>()
        };
        assert_eq!(source("/lib/b.so"), [VerdictSource::ContentCache]);
        assert_eq!(
            source("/lib/a.so"),
            [VerdictSource::Scanned, VerdictSource::Scanned]
        );
        assert!(
            ctx.caches
                .content
                .get(&content_key(&other), generation, now())
                .is_some()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_guests_streaming_under_a_small_budget_all_answered_once() {
        let recorder = Arc::new(Recorder::default());
        let limits = Limits {
            session: SessionLimits {
                max_bytes_in_flight: 100_000,
                max_read_chunk: 8_192,
                ..SessionLimits::default()
            },
            // 40 kB files fit one buffer but not all at once: some switch to
            // streaming half-way.
            scan_buffer_max: 64 * 1024,
            scan_buffer_total: 50_000,
            ..Limits::default()
        };
        let ctx = context(Arc::clone(&recorder), limits);
        let mut guests = Vec::new();
        for g in 0..4u8 {
            let ctx = Arc::clone(&ctx);
            guests.push(tokio::spawn(async move {
                let (host_end, mut guest_end) = tokio::io::duplex(64 * 1024);
                let server = tokio::spawn(serve_connection(
                    host_end,
                    GuestId::Vsock {
                        cid: 10 + u32::from(g),
                        port: 1,
                    },
                    ctx,
                ));
                let mut files = Vec::new();
                for i in 0..12u8 {
                    let content = match i % 4 {
                        0 => EICAR.to_vec(),
                        1 => big_infected(),
                        2 => vec![i; 40_000 + usize::from(g) * 1000],
                        _ => b"small clean".to_vec(),
                    };
                    files.push(TestFile {
                        path: ["/e", "/bad", "/big", "/small"][usize::from(i % 4)],
                        id: i + 1,
                        content,
                    });
                }
                let t0 = tokio::time::Instant::now();
                let mut guest = guest_session();
                let round = guest_round(&mut guest, &mut guest_end, &files, t0, true).await;
                drop(guest_end);
                assert_eq!(server.await.unwrap(), CloseReason::TransportClosed);
                round
            }));
        }
        for g in guests {
            let round = tokio::time::timeout(Duration::from_secs(60), g)
                .await
                .expect("guests finish")
                .unwrap();
            assert_eq!(round.verdicts.len(), 12);
            for (path, v) in &round.verdicts {
                let want = match path.as_str() {
                    "/e" => (Decision::Deny, "Eicar-Test-Signature"),
                    "/bad" => (Decision::Deny, "Test.Big-File"),
                    _ => (Decision::Allow, ""),
                };
                assert_eq!((v.decision, v.threat.as_str()), want, "{path}");
            }
        }
        let records = recorder.0.lock().unwrap();
        assert_eq!(records.len(), 4 * 12, "one audit record per query");
    }

    /// An engine that records the thread each scan ran on (and finds
    /// nothing); `blocks` says whether it claims to wait on I/O.
    #[derive(Debug)]
    struct ThreadProbe {
        blocks: bool,
        threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    }

    struct ProbeScan(Arc<Mutex<Vec<std::thread::ThreadId>>>);

    impl crate::engine::Engine for ThreadProbe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn blocks(&self) -> bool {
            self.blocks
        }
        fn start(&self, _: u64) -> Box<dyn crate::engine::EngineScan> {
            Box::new(ProbeScan(Arc::clone(&self.threads)))
        }
    }

    impl crate::engine::EngineScan for ProbeScan {
        fn update(
            &mut self,
            _: &[u8],
        ) -> Result<Option<crate::engine::Detection>, crate::engine::EngineError> {
            Ok(None)
        }
        fn finish(
            self: Box<Self>,
        ) -> Result<Option<crate::engine::Detection>, crate::engine::EngineError> {
            self.0.lock().unwrap().push(std::thread::current().id());
            Ok(None)
        }
    }

    /// A version-2 guest on `stream` opens one file with `content` (its
    /// whole content when `whole`, else its first `prefix` bytes inline);
    /// returns the decision and how many ReadRequests it served.
    async fn v2_open(
        stream: &mut DuplexStream,
        id: u64,
        content: &[u8],
        whole: bool,
        prefix: usize,
    ) -> (Decision, usize) {
        use thinagent_protocol::{InlineContent, Message, StreamDecoder};
        let encode = |msg: &Message<'_>, rid: u64| {
            let mut buf = vec![0u8; 70_000];
            let n = msg.encode_for(2, rid, &mut buf).unwrap();
            buf.truncate(n);
            buf
        };
        let file = FileIdentity {
            volume_serial: 1,
            file_id: [id as u8; 16],
            size: content.len() as u64,
            last_write_time: 1,
        };
        let ev = Message::FileEvent(FileEvent {
            kind: EventKind::Open,
            process_id: 1,
            desired_access: 1,
            create_disposition: CreateDisposition::Open,
            file,
            path: FilePath::Utf8("/probe"),
            content: InlineContent {
                bytes: if whole { content } else { &content[..prefix] },
                whole_file: whole,
            },
        });
        stream.write_all(&encode(&ev, id)).await.unwrap();
        let mut rx = StreamDecoder::new(vec![0u8; 70_000]);
        rx.set_session_version(2);
        let mut reads = 0;
        loop {
            let mut answer = None;
            match rx.next_frame().unwrap() {
                Some(f) => match f.message {
                    Message::Verdict(v) if f.request_id == id => return (v.decision, reads),
                    Message::ReadRequest(r) => {
                        reads += 1;
                        let start = (r.offset as usize).min(content.len());
                        let end = (start + r.length as usize).min(content.len());
                        let outcome = if end == content.len() {
                            ReadOutcome::EndOfFile(&content[start..end])
                        } else {
                            ReadOutcome::Data(&content[start..end])
                        };
                        answer = Some(encode(
                            &Message::ReadData(thinagent_protocol::ReadData {
                                event_id: r.event_id,
                                offset: r.offset,
                                outcome,
                            }),
                            f.request_id,
                        ));
                    }
                    other => panic!("{other:?}"),
                },
                None => {
                    let n = stream.read(rx.spare_mut()).await.unwrap();
                    assert!(n > 0, "host closed");
                    rx.commit(n);
                }
            }
            if let Some(a) = answer {
                stream.write_all(&a).await.unwrap();
            }
        }
    }

    /// Connects a version-2 guest with INLINE_CONTENT over a duplex pair.
    async fn v2_connect(ctx: Arc<ScanContext>) -> DuplexStream {
        use thinagent_protocol::{Hello, Message};
        let (host_end, mut guest_end) = tokio::io::duplex(256 * 1024);
        tokio::spawn(serve_connection(
            host_end,
            GuestId::Vsock { cid: 7, port: 1 },
            ctx,
        ));
        let hello = Message::Hello(Hello {
            version_min: 1,
            version_max: 2,
            os: OsKind::Linux,
            agent_version: AgentVersion::default(),
            capabilities: Capabilities::READ_CONTENT.union(Capabilities::INLINE_CONTENT),
            max_frame_len: 65_536,
            max_reads_in_flight: 4,
            guest_name: "probe",
        });
        let mut buf = vec![0u8; 4096];
        let n = hello.encode(1, &mut buf).unwrap();
        guest_end.write_all(&buf[..n]).await.unwrap();
        // HelloAck: 24 + 32 bytes, header version 1.
        let mut ack = [0u8; 56];
        guest_end.read_exact(&mut ack).await.unwrap();
        assert_eq!((ack[4], ack[6], ack[24]), (1, 2, 2), "a version-2 HelloAck");
        guest_end
    }

    /// Whole inline content up to `scan_on_task_max` is scanned on the
    /// connection's own task (here: the test's one thread); larger
    /// limits, partial content and a blocking engine (clamd) go to a
    /// blocking thread.
    #[tokio::test]
    async fn small_whole_inline_files_are_scanned_on_the_connection_task() {
        let me = std::thread::current().id();
        let run = |blocks: bool, on_task_max: usize| {
            let threads = Arc::new(Mutex::new(Vec::new()));
            let probe = ThreadProbe {
                blocks,
                threads: Arc::clone(&threads),
            };
            let mut engines = builtin_engines();
            engines.push(Arc::new(probe));
            let limits = Limits {
                scan_on_task_max: on_task_max,
                ..Limits::default()
            };
            let ctx = Arc::new(ScanContext::new(
                SignatureSet::from_engines(engines),
                limits,
                Arc::new(NoopObserver),
            ));
            (ctx, threads)
        };
        let small = b"small and clean".to_vec();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();

        let (ctx, threads) = run(false, SCAN_ON_TASK_MAX);
        let mut g = v2_connect(ctx).await;
        assert_eq!(
            v2_open(&mut g, 1, &small, true, 0).await,
            (Decision::Allow, 0)
        );
        assert_eq!(v2_open(&mut g, 2, EICAR, true, 0).await.1, 0);
        // Partial: the rest is read, and scanned on a blocking thread.
        assert_eq!(
            v2_open(&mut g, 3, &big, false, 60_000).await,
            (Decision::Allow, 1)
        );
        let seen = threads.lock().unwrap().clone();
        // EICAR stops at the built-in engine: the probe saw two files.
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], me, "small whole inline: on the task");
        assert_ne!(seen[1], me, "partial inline: a blocking thread");

        for (blocks, on_task_max) in [(false, 0), (true, SCAN_ON_TASK_MAX)] {
            let (ctx, threads) = run(blocks, on_task_max);
            let mut g = v2_connect(ctx).await;
            assert_eq!(
                v2_open(&mut g, 1, &small, true, 0).await,
                (Decision::Allow, 0)
            );
            let seen = threads.lock().unwrap().clone();
            assert_eq!(seen.len(), 1);
            assert_ne!(seen[0], me, "blocks {blocks}, limit {on_task_max}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_says_goodbye_and_silent_guest_times_out() {
        let ctx = context(Arc::new(Recorder::default()), Limits::default());
        let (host_end, mut guest_end) = tokio::io::duplex(4096);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_connection_until(
            host_end,
            GuestId::Tcp("127.0.0.1:1".parse().unwrap()),
            Arc::clone(&ctx),
            async move {
                let _ = stop_rx.await;
                GoodbyeReason::Shutdown
            },
        ));
        stop_tx.send(()).unwrap();
        assert_eq!(
            server.await.unwrap(),
            CloseReason::Local(GoodbyeReason::Shutdown)
        );
        let mut buf = Vec::new();
        guest_end.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf.len(), 28, "one Goodbye frame");

        // A peer that connects and says nothing is closed after the
        // handshake timeout.
        let (host_end, _keep) = tokio::io::duplex(4096);
        let reason =
            serve_connection(host_end, GuestId::Tcp("127.0.0.1:2".parse().unwrap()), ctx).await;
        assert_eq!(reason, CloseReason::HandshakeTimeout);
    }
}
