//! The tokio driver of one guest connection: [`serve_connection`].
//!
//! It pumps bytes between the socket and a sans-IO
//! [`HostSession`](crate::session::HostSession), runs its timers on
//! `tokio::time`, answers queries from the [caches](crate::cache) when it
//! can, and otherwise streams the content into the engines of the active
//! [`SignatureSet`](crate::signatures::SignatureSet):
//!
//! * files up to [`Limits::scan_buffer_max`] are buffered; at their end the
//!   SHA-256 is looked up in the cross-guest content cache and only a miss
//!   runs the engines (one `spawn_blocking` call);
//! * larger files are streamed chunk by chunk into a [`FileScan`] living in
//!   a blocking task, so memory stays bounded; content flow is limited by
//!   the session's bytes-in-flight budget, which a chunk leaves only once
//!   the engines have consumed it. (Their hash still fills the content
//!   cache, but a later open of the same large content is scanned again.)
//!
//! Everything that happens is reported to a [`ScanObserver`] (metrics,
//! audit log). A broken or hostile guest only ends its own connection.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use thinagent_protocol::{Decision, EventKind, GoodbyeReason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::cache::{CachedVerdict, VerdictCaches};
use crate::engine::EngineError;
use crate::scan::{FileScan, ScanOutcome, ScanVerdict, scan_bytes, sha256};
use crate::session::{
    Anomaly, CloseReason, ContentFailure, EventId, GuestInfo, HostSession, PolicyReason, Query,
    QueryOutcome, SessionEvent, SessionLimits,
};
use crate::signatures::{SharedSignatures, SignatureSet};

/// Who is on the other end of a connection, as the transport says (not as
/// the guest claims).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GuestId {
    /// An AF_VSOCK peer: its context id identifies the VM.
    Vsock {
        /// Peer CID.
        cid: u32,
        /// Peer port.
        port: u32,
    },
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix socket peer.
    Unix {
        /// The listening socket's path.
        listener: PathBuf,
        /// Peer process id, when the OS reports it.
        pid: Option<i32>,
    },
}

impl GuestId {
    /// The identity-cache scope of this guest: file identities are only
    /// compared within one scope. A vsock guest is its CID (assigned by the
    /// hypervisor); TCP and Unix peers cannot be told apart by address alone
    /// (many test guests share 127.0.0.1), so their scope adds the guest's
    /// announced name.
    pub fn cache_scope(&self, guest_name: &str) -> Arc<str> {
        match self {
            Self::Vsock { cid, .. } => Arc::from(format!("vsock:{cid}")),
            Self::Tcp(addr) => Arc::from(format!("tcp:{}/{guest_name}", addr.ip())),
            Self::Unix { listener, .. } => {
                Arc::from(format!("unix:{}/{guest_name}", listener.display()))
            }
        }
    }
}

impl fmt::Display for GuestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Unix { listener, pid } => match pid {
                Some(pid) => write!(f, "unix://{} (pid {pid})", listener.display()),
                None => write!(f, "unix://{}", listener.display()),
            },
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
            scan_buffer_max: 1 << 20,
            read_buffer: 64 * 1024,
            max_tx_backlog: 1 << 20,
            close_linger: Duration::from_secs(2),
        }
    }
}

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

/// One answered (or abandoned) file query: a line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When the answer was sent.
    pub time: SystemTime,
    /// The guest by transport address.
    pub guest: GuestId,
    /// The guest's announced name.
    pub guest_name: String,
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
    /// Content bytes transferred for this query.
    pub bytes: u64,
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
        }
    }

    /// Makes `set` the active set (atomic; scans in progress finish on the
    /// old one, cached verdicts of older sets stop matching).
    pub fn reload(&self, set: SignatureSet) {
        self.signatures.store(Arc::new(set));
    }
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
    ctx.observer.on_session_open(&guest);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let limits = ctx.limits;
    let mut driver = Driver {
        session: HostSession::new(limits.session, now()),
        ctx: Arc::clone(&ctx),
        guest,
        scope: Arc::from(""),
        work: std::collections::HashMap::new(),
        results: mpsc::unbounded_channel(),
        closed: None,
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
    /// The scan of `id` is over.
    Done(EventId, WorkResult),
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
    bytes: u64,
}

struct Driver {
    session: HostSession,
    ctx: Arc<ScanContext>,
    guest: GuestId,
    scope: Arc<str>,
    work: std::collections::HashMap<EventId, Work>,
    results: (
        mpsc::UnboundedSender<WorkMessage>,
        mpsc::UnboundedReceiver<WorkMessage>,
    ),
    closed: Option<CloseReason>,
}

impl Driver {
    fn handle_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::Connected(info) => {
                    self.scope = self.guest.cache_scope(&info.name);
                    self.ctx.observer.on_handshake(&self.guest, &info);
                }
                SessionEvent::Query(q) => self.on_query(q),
                SessionEvent::Content { id, data, .. } => self.on_content(id, data),
                SessionEvent::ContentEnd { id, .. } => self.on_content_end(id),
                SessionEvent::ContentFailed { id, reason } => {
                    if let Some(w) = self.work.remove(&id) {
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
                    let bytes = self.work.remove(&query.id).map_or(0, |w| w.bytes);
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
                    self.ctx.observer.on_session_closed(&self.guest, &reason);
                    self.closed = Some(reason);
                    // Dropping the work drops stream senders: scan tasks end.
                    self.work.clear();
                }
            }
        }
    }

    fn on_query(&mut self, q: Arc<Query>) {
        let set = self.ctx.signatures.load_full();
        let cached = self
            .ctx
            .caches
            .identity
            .get(&self.scope, &q.file, set.generation(), now());
        if let Some(v) = cached {
            let (decision, ttl) = self.decision_of(&v);
            let threat = v.threat.as_deref().map(str::to_owned);
            self.answer(&q, decision, threat, ttl, 0, VerdictSource::IdentityCache);
            return;
        }
        let id = q.id;
        self.work.insert(
            id,
            Work {
                query: q,
                set,
                feed: Feed::Buffer(Vec::new()),
                bytes: 0,
            },
        );
        // Too large or no READ_CONTENT: the session answers by policy and
        // reports `Finished`, which removes the work.
        let _ = self.session.fetch(id, now());
    }

    fn on_content(&mut self, id: EventId, data: Vec<u8>) {
        let buffer_max = self.ctx.limits.scan_buffer_max;
        let Some(w) = self.work.get_mut(&id) else {
            self.session.consumed(id, data.len());
            return;
        };
        let len = data.len();
        w.bytes = w.bytes.saturating_add(len as u64);
        match &mut w.feed {
            Feed::Buffer(buf) if buf.len() + len <= buffer_max => {
                buf.extend_from_slice(&data);
                self.session.consumed(id, len);
            }
            Feed::Buffer(buf) => {
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
            Feed::Buffer(buf) => {
                let set = Arc::clone(&w.set);
                let ctx = Arc::clone(&self.ctx);
                let results = self.results.0.clone();
                tokio::task::spawn_blocking(move || {
                    let hash = sha256(&buf);
                    let result = match ctx.caches.content.get(&hash, set.generation(), now()) {
                        Some(verdict) => WorkResult::ContentCacheHit(verdict),
                        None => WorkResult::Scanned(scan_bytes(&set, &buf)),
                    };
                    let _ = results.send(WorkMessage::Done(id, result));
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
            WorkMessage::Done(id, result) => {
                let Some(w) = self.work.remove(&id) else {
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
                        if let (Some(v), Some(hash)) = (&verdict, outcome.sha256) {
                            self.ctx.caches.content.insert(hash, v.clone(), now());
                        }
                        (verdict, VerdictSource::Scanned)
                    }
                };
                match verdict {
                    Some(v) => {
                        self.ctx.caches.identity.insert(
                            &self.scope,
                            &w.query.file,
                            v.clone(),
                            now(),
                        );
                        let (decision, ttl) = self.decision_of(&v);
                        let threat = v.threat.as_deref().map(str::to_owned);
                        let engine = v.engine;
                        self.answer_with_engine(
                            &w.query, decision, threat, engine, ttl, w.bytes, source,
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
        let name = threat.as_deref().unwrap_or("");
        // Refused only when the session already ended the query (timeout,
        // close): its `Finished` event was audited instead.
        if self
            .session
            .verdict(query.id, decision, name, ttl, now())
            .is_ok()
        {
            self.audit_full(query, Some(decision), threat, engine, bytes, source);
        }
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
            event_id: query.id,
            kind: query.kind,
            path: query.path.to_string_lossy(),
            verdict,
            threat,
            engine,
            bytes,
            duration: now().saturating_duration_since(query.received_at),
            source,
        };
        self.ctx.observer.on_verdict(&record);
    }
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
        let _ = results.send(WorkMessage::Done(id, WorkResult::Scanned(scan.finish())));
    });
}
