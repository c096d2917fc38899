//! The service: configuration in, listeners and connection tasks out.
//!
//! [`Service::build`] loads the signature set (all or nothing), opens the
//! audit log, binds every listener and the metrics endpoint;
//! [`Service::run`] accepts connections until shutdown, one task per
//! connection driving [`serve_connection_until`], with:
//!
//! * admission ([`crate::admission`]): a connection that has not said
//!   `Hello` holds a *pending* slot (bounded in total and per peer; more are
//!   closed at once), and only a completed handshake takes a *session* slot
//!   (bounded in total and per guest identity; more get
//!   `Goodbye(Overloaded)`), so silent peers never crowd out guests;
//! * `tls://` listeners run their TLS handshake in the connection's task,
//!   inside the handshake timeout and the pending slot;
//! * an optional vsock CID allow-list: other CIDs are closed at once;
//! * log lines peers can cause are rate-limited per peer and kind
//!   ([`crate::log_limit`]): a flood is logged as a few lines and a
//!   summary;
//! * signature reloads ([`ServiceHandle::reload`], SIGHUP in the binary):
//!   the new set is built off the runtime and swapped atomically; a failed
//!   load keeps the old set and says why;
//! * graceful shutdown: every session is closed with `Goodbye(Shutdown)`
//!   (open queries first get the policy verdict), then listeners go away.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use thinagent_protocol::{Decision, Goodbye, GoodbyeReason, Message};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Level;

use crate::admission::{Admission, AdmissionLimits, PendingSlot, SessionSlot};
use crate::audit::{
    AuditEntry, AuditFile, AuditLog, GuestStateEntry, HostActionEntry, ScanSummary, rfc3339,
};
use crate::cache::{CacheLimits, VerdictCaches};
use crate::config::Config;
use crate::connection::{
    Admit, AuditRecord, GuestId, Limits, PeerIdentity, ScanContext, ScanObserver, VerdictSource,
    serve_connection_admitted,
};
use crate::engine::EngineError;
use crate::engine::clamd::{ClamdAddress, ClamdEngine};
use crate::events::{EventBody, EventSink};
use crate::listen::{Accepted, BindError, Established, ListenUrl, Listener};
use crate::log_limit::{LogLimiter, LogLimits};
use crate::metrics::Metrics;
use crate::quarantine::QuarantineStore;
use crate::records::{FileRecord, GuestRecord, PathRecord};
use crate::session::{
    ActionOutcome, Anomaly, CloseReason, GuestInfo, GuestPath, PolicyReason, PolicyVerdicts,
    SessionLimits,
};
use crate::signatures::{ClamdConfig, LoadSummary, SignatureConfig, SignatureError, SignatureSet};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The signature set did not load.
    #[error("signatures: {0}")]
    Signatures(#[from] SignatureError),
    /// A clamd URL does not parse.
    #[error(transparent)]
    Clamd(#[from] crate::engine::clamd::ClamdAddressError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// No listener could be bound at all.
    #[error("no listener could be bound: {0}")]
    NoListener(String),
    /// The signature loader task died.
    #[error("signature loader failed: {0}")]
    Loader(String),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditOpenError),
    /// The `[tls]` certificates or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The control socket could not be opened.
    #[cfg(unix)]
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// A control socket was configured on a system without Unix sockets.
    #[error("control_socket needs Unix sockets, which this system lacks; unset it")]
    NoControlSocket,
    /// A file or directory of the configuration is unusable.
    #[error("config: {key} = {}: {why}; fix it, or choose another path", .path.display())]
    Path {
        /// The key (`events.queue_dir`).
        key: &'static str,
        /// Its value.
        path: std::path::PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The event sink could not start.
    #[error(transparent)]
    Events(#[from] crate::events::SinkError),
    /// The quarantine store could not be opened.
    #[error(transparent)]
    Quarantine(#[from] crate::quarantine::QuarantineError),
    /// `state_dir` cannot be used.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The scanner farm's Redis settings are unusable.
    #[error(transparent)]
    Farm(#[from] crate::farm::FarmError),
    /// The metrics endpoint could not be bound.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The signature configuration a [`Config`] asks for.
pub fn signature_config(config: &Config) -> Result<SignatureConfig, ServiceError> {
    let clamd = match &config.clamd {
        None => None,
        Some(url) => Some(ClamdConfig {
            address: url.parse::<ClamdAddress>()?,
            timeout: Duration::from_millis(config.clamd_timeout_ms),
        }),
    };
    Ok(SignatureConfig {
        dirs: config.signatures.clone(),
        builtin: config.builtin_signatures,
        clamd,
    })
}

/// Connection limits from a [`Config`].
pub fn connection_limits(config: &Config) -> Limits {
    let l = &config.limits;
    let p = &config.policy;
    let session = SessionLimits {
        max_frame_len: l.max_frame_len,
        max_events_in_flight: l.max_in_flight_per_guest,
        max_read_chunk: l.read_chunk(),
        max_inline_len: l.inline_len(),
        max_reads_in_flight: l.max_reads_in_flight,
        max_bytes_in_flight: l.max_bytes_in_flight_per_guest,
        max_file_size: l.max_file_size,
        query_timeout: Duration::from_millis(l.request_timeout_ms),
        heartbeat_interval: Duration::from_millis(l.heartbeat_interval()),
        idle_timeout: Duration::from_millis(l.idle_timeout()),
        handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
        policy: PolicyVerdicts {
            too_large: p.too_large.decision(),
            timeout: p.timeout.decision(),
            error: p.error.decision(),
        },
    }
    .normalized();
    Limits {
        session,
        verdict_ttl_secs: config.cache.guest_ttl_secs,
        scan_buffer_max: usize::try_from(l.scan_buffer_max).unwrap_or(usize::MAX),
        ..Limits::default()
    }
}

/// Caches from a [`Config`].
pub fn caches(config: &Config) -> VerdictCaches {
    let ttl = Duration::from_secs(config.cache.ttl_secs);
    VerdictCaches::new(
        CacheLimits {
            capacity: usize::try_from(config.cache.identity_entries).unwrap_or(usize::MAX),
            ttl,
        },
        CacheLimits {
            capacity: usize::try_from(config.cache.content_entries).unwrap_or(usize::MAX),
            ttl,
        },
    )
}

/// Loads the signatures a config asks for and, when clamd is configured,
/// checks that it answers. Blocking (YARA compilation, clamd ping).
pub fn load_signatures(config: &SignatureConfig) -> Result<SignatureSet, ServiceError> {
    let set = SignatureSet::load(config)?;
    Ok(set)
}

/// What the start checks and loads before it binds anything: the values
/// of the configuration, the signature set, the audit log's path (opened,
/// created if missing), the `tls://` files and the farm's password and TLS
/// files (read and parsed). [`Service::build`] starts from it;
/// `--check-config` runs it, pings clamd, closes the audit file with
/// [`AuditFile::close_checked`] and stops. Blocking (signature loading).
#[derive(Debug)]
pub struct Prepared {
    /// The signature configuration (kept for reloads).
    pub signature_config: SignatureConfig,
    /// The loaded set.
    pub set: SignatureSet,
    /// The opened audit file, when one is configured.
    pub audit: Option<AuditFile>,
    /// What the `tls://` listeners run (certificate, key, guest CA,
    /// revocation lists), when `[tls]` is set.
    pub tls: Option<crate::tls::TlsServer>,
    /// The farm's password and `rediss://` files.
    pub farm_files: crate::farm::FarmFiles,
}

/// Runs every check of the start that needs no binding; see [`Prepared`].
pub fn prepare(config: &Config) -> Result<Prepared, ServiceError> {
    config.validate()?;
    let signature_config = signature_config(config)?;
    let set = load_signatures(&signature_config)?;
    // Paths the start creates: checked without creating anything.
    if config.events.sink().is_some() {
        if let Some(file) = &config.events.file {
            check_file("events.file", file)?;
        }
        if let Some(dir) = &config.events.queue_dir {
            check_dir("events.queue_dir", dir)?;
        }
    }
    if let Some(dir) = &config.quarantine.dir {
        check_dir("quarantine.dir", dir)?;
    }
    // The farm's and the listeners' files are read and checked once, here,
    // and kept for the start (no connection is made here).
    let farm_files = crate::farm::FarmFiles::read(&config.farm)?;
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::TlsServer::load)
        .transpose()?;
    // Last: nothing after it fails, so a check never leaves a file behind.
    let audit = config
        .audit_log
        .as_deref()
        .map(AuditFile::open)
        .transpose()?;
    Ok(Prepared {
        signature_config,
        set,
        audit,
        tls,
        farm_files,
    })
}

/// Checks that `dir` is, or can be created as, a directory this user may
/// write: its nearest existing ancestor must be a directory in which a
/// file can be created (one is, and removed again).
pub fn check_dir(key: &'static str, dir: &std::path::Path) -> Result<(), ServiceError> {
    use std::path::Path;
    let err = |why: String| ServiceError::Path {
        key,
        path: dir.to_path_buf(),
        why,
    };
    let mut probe = dir;
    loop {
        match std::fs::metadata(probe) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(err(format!("{} is not a directory", probe.display())));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                probe = probe
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
            }
            Err(e) => return Err(err(format!("{}: {e}", probe.display()))),
        }
    }
    let test = probe.join(format!(".thinagent-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&test)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&test);
            Ok(())
        }
        Err(e) => Err(err(format!(
            "this user cannot create files in {}: {e}",
            probe.display()
        ))),
    }
}

/// Checks that `file` can be appended to (or created) without changing
/// it: an existing file must be a writable non-directory, a missing one
/// needs an existing directory.
pub fn check_file(key: &'static str, file: &std::path::Path) -> Result<(), ServiceError> {
    let err = |why: String| ServiceError::Path {
        key,
        path: file.to_path_buf(),
        why,
    };
    match std::fs::metadata(file) {
        Ok(m) if m.is_dir() => Err(err("a directory, not a file".into())),
        Ok(_) => std::fs::OpenOptions::new()
            .append(true)
            .open(file)
            .map(drop)
            .map_err(|e| err(format!("cannot be written: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if parent.is_dir() {
                Ok(())
            } else {
                Err(err(format!(
                    "the directory {} does not exist",
                    parent.display()
                )))
            }
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Pings the configured clamd.
pub fn ping_clamd(config: &SignatureConfig) -> Result<(), EngineError> {
    match &config.clamd {
        Some(c) => ClamdEngine::new(c.address.clone(), c.timeout).ping(),
        None => Ok(()),
    }
}

/// A one-line description of a load.
pub fn describe(summary: &LoadSummary) -> String {
    format!(
        "built-in set {}, {} hash signatures and {} YARA rules from {} files, clamd {}",
        if summary.builtin { "on" } else { "off" },
        summary.hash_signatures,
        summary.yara_rules,
        summary.files.len(),
        if summary.clamd { "on" } else { "off" },
    )
}

/// The kinds of log line a peer can cause, each rate-limited per peer
/// ([`PeerLog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogKind {
    /// A guest completed its handshake.
    Connected,
    /// A session ended normally.
    Closed,
    /// A session ended on a protocol error or timeout.
    ProtocolError,
    /// Something odd the session skipped.
    Anomaly,
    /// A threat was found (every one is in the audit log).
    Threat,
    /// An engine failed.
    EngineError,
    /// A scan budget expired (the policy verdict was sent).
    ScanTimeout,
    /// A connection was refused (limits, CID allow-list).
    Refused,
    /// A TLS handshake failed.
    TlsFailed,
    /// `accept` itself failed (no peer).
    AcceptFailed,
}

impl LogKind {
    fn level(self) -> Level {
        match self {
            Self::Connected | Self::Closed | Self::Anomaly => Level::INFO,
            _ => Level::WARN,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Connected => "guest connected",
            Self::Closed => "session closed",
            Self::ProtocolError => "protocol error",
            Self::Anomaly => "protocol anomaly",
            Self::Threat => "threat found",
            Self::EngineError => "engine failed",
            Self::ScanTimeout => "scan budget expired",
            Self::Refused => "connection refused",
            Self::TlsFailed => "TLS handshake failed",
            Self::AcceptFailed => "accept failed",
        }
    }
}

/// Rate limiting of the log lines peers cause: the first few of a kind per
/// peer per 10 s are logged, the rest summarised as "N more like this".
#[derive(Debug)]
pub struct PeerLog {
    limiter: Mutex<LogLimiter<LogKind>>,
    metrics: Arc<Metrics>,
}

impl PeerLog {
    /// A limiter with `limits`, counting held-back lines into `metrics`.
    pub fn new(limits: LogLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            limiter: Mutex::new(LogLimiter::new(limits)),
            metrics,
        }
    }

    /// Whether a line of `kind` about `peer` may be logged now (logs the
    /// summary of an ended window first).
    pub fn allow(&self, peer: Option<&PeerIdentity>, kind: LogKind) -> bool {
        let (ok, summary) = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(peer, kind, Instant::now());
        if let Some(s) = summary {
            self.summarise(&s);
        }
        if !ok {
            self.metrics.log_lines_suppressed.inc();
        }
        ok
    }

    /// Logs the summaries of every ended window (call periodically).
    pub fn flush(&self) {
        let ended = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush(Instant::now());
        for s in &ended {
            self.summarise(s);
        }
    }

    /// Logs every summary, ended or not (at shutdown).
    pub fn drain(&self) {
        let all = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(Instant::now());
        for s in &all {
            self.summarise(s);
        }
    }

    fn summarise(&self, s: &crate::log_limit::Suppressed<LogKind>) {
        let peer = s
            .peer
            .as_ref()
            .map_or_else(|| "other peers".to_string(), ToString::to_string);
        let what = s.kind.name();
        let message = s.message();
        if s.kind.level() == Level::WARN {
            tracing::warn!(%peer, kind = what, suppressed = s.count, "{what}: {message}");
        } else {
            tracing::info!(%peer, kind = what, suppressed = s.count, "{what}: {message}");
        }
    }
}

/// Metrics, audit log and logs for every connection.
pub struct ServiceObserver {
    metrics: Arc<Metrics>,
    audit: Option<AuditLog>,
    /// Detections and guest state changes ([`crate::events`]).
    events: Option<EventSink>,
    /// The farm's events stream gets the same events ([`crate::farm`]).
    farm: Option<Arc<crate::farm::Farm>>,
    /// Ids of the events.
    ids: crate::events::EventIds,
    logs: Arc<PeerLog>,
    /// `limits.request_timeout_ms`, named in the log line of a query that
    /// exceeded it.
    scan_budget: Option<Duration>,
}

impl std::fmt::Debug for ServiceObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceObserver")
            .field("audit", &self.audit.as_ref().map(AuditLog::path))
            .finish_non_exhaustive()
    }
}

impl ServiceObserver {
    /// An observer counting into `metrics`, auditing into `audit` and
    /// logging through `logs`.
    pub fn new(metrics: Arc<Metrics>, audit: Option<AuditLog>, logs: Arc<PeerLog>) -> Self {
        Self {
            metrics,
            audit,
            events: None,
            farm: None,
            ids: crate::events::EventIds::new(),
            logs,
            scan_budget: None,
        }
    }

    /// Sends detections and guest state changes to `events`.
    #[must_use]
    pub fn with_events(mut self, events: EventSink) -> Self {
        self.events = Some(events);
        self
    }

    /// Also publishes every event on the farm's events stream.
    #[must_use]
    pub fn with_farm(mut self, farm: Arc<crate::farm::Farm>) -> Self {
        self.farm = Some(farm);
        self
    }

    /// Whether events go anywhere.
    fn emits(&self) -> bool {
        self.events.is_some() || self.farm.is_some()
    }

    /// Sends the event `body()` (happening now) to the event sink and the
    /// farm's stream, whichever there are; never blocks.
    fn emit(&self, body: impl FnOnce() -> EventBody) {
        if !self.emits() {
            return;
        }
        let event = crate::events::Event::new(&self.ids, body(), SystemTime::now());
        if let Some(sink) = &self.events {
            sink.send(&event);
        }
        if let Some(farm) = &self.farm {
            farm.publish_event(&event);
        }
    }

    fn allow(&self, guest: &GuestId, kind: LogKind) -> bool {
        self.logs.allow(Some(&guest.peer()), kind)
    }

    /// Names `budget` (the sessions' scan budget) in scan-timeout log lines.
    #[must_use]
    pub fn with_scan_budget(mut self, budget: Duration) -> Self {
        self.scan_budget = Some(budget);
        self
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `reason` label of a verdict decided by policy; `None` for scanned,
/// cached and abandoned queries.
impl ServiceObserver {
    /// An audit line: `guest` was admitted or is gone.
    fn audit_guest_state(
        &self,
        guest: &GuestId,
        info: &GuestInfo,
        state: &str,
        reason: Option<String>,
    ) {
        let Some(audit) = &self.audit else { return };
        let g = GuestRecord::new(guest, info);
        audit.write_record(&GuestStateEntry {
            record: "guest".into(),
            time: rfc3339(SystemTime::now()),
            guest: format!("{guest} {}", info.name),
            peer: g.peer,
            state: state.into(),
            reason,
            os: g.os,
            agent_version: g.agent_version.unwrap_or_default(),
            protocol_version: info.version,
        });
    }
}

fn policy_label(source: VerdictSource) -> Option<String> {
    match source {
        VerdictSource::Policy(reason) => Some(kind_label(&format!("{reason:?}"))),
        VerdictSource::ReadFailed(_) => Some("read_failed".into()),
        VerdictSource::EngineFailed => Some("engine_failed".into()),
        VerdictSource::Scanned
        | VerdictSource::IdentityCache
        | VerdictSource::ContentCache
        | VerdictSource::Abandoned => None,
    }
}

/// `BadMagic { .. }` -> `bad_magic`: a metric label from a Debug name.
fn kind_label(debug: &str) -> String {
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("other");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn decision_label(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::AllowNoCache => "allow_no_cache",
    }
}

impl ScanObserver for ServiceObserver {
    fn on_session_open(&self, guest: &GuestId) {
        self.metrics.sessions.inc();
        self.metrics.sessions_active.inc();
        tracing::debug!(%guest, "connection accepted");
    }

    fn on_handshake(&self, guest: &GuestId, info: &GuestInfo) {
        if self.allow(guest, LogKind::Connected) {
            tracing::info!(%guest, name = %info.name, os = ?info.os, version = info.version, "guest connected");
        }
    }

    fn on_guest_connected(&self, guest: &GuestId, info: &GuestInfo) {
        self.audit_guest_state(guest, info, "connected", None);
        self.emit(|| EventBody::GuestConnected {
            guest: GuestRecord::new(guest, info),
        });
    }

    fn on_guest_disconnected(&self, guest: &GuestId, info: &GuestInfo, reason: &CloseReason) {
        self.audit_guest_state(guest, info, "disconnected", Some(reason.to_string()));
        self.emit(|| EventBody::GuestDisconnected {
            guest: GuestRecord::new(guest, info),
            reason: reason.to_string(),
        });
    }

    fn on_session_closed(&self, guest: &GuestId, reason: &CloseReason) {
        self.metrics.sessions_active.dec();
        let error = match reason {
            CloseReason::PeerGoodbye(_) | CloseReason::Local(_) | CloseReason::TransportClosed => {
                None
            }
            CloseReason::Decode(e) => Some(kind_label(&format!("{e:?}"))),
            CloseReason::Protocol { code, .. } => Some(kind_label(&format!("{code:?}"))),
            CloseReason::VersionUnsupported { .. } => Some("version_unsupported".into()),
            CloseReason::HandshakeTimeout => Some("handshake_timeout".into()),
            CloseReason::IdleTimeout => Some("idle_timeout".into()),
        };
        match error {
            None => {
                if self.allow(guest, LogKind::Closed) {
                    tracing::info!(%guest, %reason, "session closed");
                }
            }
            Some(kind) => {
                self.metrics.protocol_error(&kind);
                if self.allow(guest, LogKind::ProtocolError) {
                    if kind.ends_with("_timeout") {
                        tracing::warn!(%guest, %reason, "session closed");
                    } else {
                        tracing::warn!(%guest, %reason, %kind, "session closed: protocol error");
                    }
                }
            }
        }
    }

    fn on_verdict(&self, r: &AuditRecord) {
        let m = &self.metrics;
        m.queries.inc();
        m.bytes_read.inc_by(r.bytes);
        if !r.inline.is_none() {
            m.inline_event(r.inline.len.into(), r.inline.whole_file);
        }
        m.query_latency.observe(r.duration.as_secs_f64());
        let cache = match r.source {
            VerdictSource::IdentityCache => "guest",
            VerdictSource::ContentCache => "content",
            _ => "none",
        };
        if cache != "none" {
            m.cache_hit(cache);
        }
        let verdict = r.verdict.map_or("none", decision_label);
        m.verdict(verdict);
        if let Some(reason) = policy_label(r.source) {
            m.policy_verdict(&reason);
        }
        match (&r.verdict, &r.threat) {
            (Some(_), _) if r.source == VerdictSource::Policy(PolicyReason::Timeout) => {
                if self.allow(&r.guest, LogKind::ScanTimeout) {
                    tracing::warn!(
                    guest = %r.guest,
                    name = %r.guest_name,
                    path = %r.path,
                    elapsed_ms = millis(r.duration),
                    budget_ms = self.scan_budget.map(millis),
                    verdict,
                    bytes = r.bytes,
                    "scan budget (limits.request_timeout_ms) expired: policy.timeout verdict sent"
                    );
                }
            }
            (Some(Decision::Deny), Some(threat)) => {
                if self.allow(&r.guest, LogKind::Threat) {
                    tracing::warn!(guest = %r.guest, name = %r.guest_name, path = %r.path, %threat, engine = r.engine.unwrap_or(""), "threat found, open denied");
                }
            }
            (None, _) => {
                tracing::debug!(guest = %r.guest, path = %r.path, "query abandoned (guest gone)");
            }
            _ => {
                tracing::debug!(guest = %r.guest, path = %r.path, verdict, source = ?r.source, "verdict");
            }
        }
        if let (Some(Decision::Deny), Some(threat)) = (r.verdict, &r.threat) {
            self.emit(|| EventBody::Detection {
                guest: GuestRecord::new(&r.guest, &r.guest_info),
                path: PathRecord::from(&r.raw_path),
                file: FileRecord::from(&r.file),
                threat: threat.clone(),
                engine: r.engine.map(str::to_string),
                operation: kind_label(&format!("{:?}", r.kind)),
                verdict: verdict.to_string(),
                cache: cache.to_string(),
            });
        }
        if let Some(audit) = &self.audit {
            audit.write(&AuditEntry {
                time: rfc3339(r.time),
                guest: format!("{} {}", r.guest, r.guest_name),
                peer: r.guest.peer().to_string(),
                path: r.path.clone(),
                verdict: verdict.to_string(),
                threat: r.threat.clone(),
                engine: r.engine.map(str::to_string),
                bytes: r.bytes,
                inline_bytes: r.inline.len.into(),
                whole_file: r.inline.whole_file,
                duration_ms: r.duration.as_secs_f64() * 1e3,
                cache: cache.to_string(),
            });
        }
    }

    fn on_quarantine_action(&self, r: &crate::connection::QuarantineActionRecord) {
        let e = &r.entry;
        tracing::info!(
            action = r.action, id = %e.id, guest = %e.guest.address, path = %r.path.display,
            threat = %e.threat, status = %r.status, detail = %r.detail, "quarantine action"
        );
        if self.emits() {
            let entry = crate::events::QuarantineRef {
                guest: e.guest.clone(),
                path: r.path.clone(),
                quarantine_id: e.id.clone(),
                threat: e.threat.clone(),
                size: e.size,
                sha256: e.sha256.clone(),
            };
            let body = match r.action {
                "restore" => EventBody::Restore {
                    entry,
                    status: r.status.clone(),
                    detail: r.detail.clone(),
                },
                _ => EventBody::QuarantinePurged { entry },
            };
            self.emit(|| body);
        }
        if let Some(audit) = &self.audit {
            audit.write_record(&HostActionEntry {
                record: "host_action".into(),
                time: rfc3339(SystemTime::now()),
                guest: format!("{} {}", e.guest.address, e.guest.name),
                peer: e.guest.peer.clone(),
                // `restore` (sent to the guest) or `quarantine_purge` (the
                // host's store only).
                action: match r.action {
                    "restore" => "restore".into(),
                    other => format!("quarantine_{other}"),
                },
                origin: "admin".into(),
                operation: None,
                path: Some(r.path.display.clone()),
                threat: Some(e.threat.clone()),
                policy_version: None,
                quarantine_id: Some(e.id.clone()),
                status: r.status.clone(),
                detail: r.detail.clone(),
                counters: None,
            });
        }
    }

    fn on_protocol_event(&self, guest: &GuestId, anomaly: &Anomaly) {
        self.metrics
            .protocol_error(&kind_label(&format!("{anomaly:?}")));
        if self.allow(guest, LogKind::Anomaly) {
            tracing::info!(%guest, ?anomaly, "protocol anomaly (session continues)");
        }
    }

    fn on_engine_error(&self, guest: &GuestId, error: &EngineError) {
        let text = error.to_string();
        let engine = text.split(':').next().unwrap_or("engine");
        self.metrics.engine_error(engine);
        if self.allow(guest, LogKind::EngineError) {
            tracing::warn!(%guest, %error, "engine failed; policy verdict sent");
        }
    }

    fn on_remediation(&self, r: &crate::connection::RemediationRecord) {
        let path = r.path.to_string_lossy();
        let ok = matches!(r.status, "done" | "done-on-close");
        if ok {
            tracing::info!(
                guest = %r.guest, %path, threat = %r.threat, action = r.action.as_str(),
                status = r.status, quarantine = ?r.quarantine_id, "remediated"
            );
        } else if self.allow(&r.guest, LogKind::Threat) {
            tracing::warn!(
                guest = %r.guest, %path, threat = %r.threat, action = r.action.as_str(),
                status = r.status, detail = %r.detail, quarantine = ?r.quarantine_id,
                "remediation not done"
            );
        }
        if let Some(audit) = &self.audit {
            audit.write_record(&HostActionEntry {
                operation: Some(r.action.as_str().into()),
                path: Some(path.clone()),
                threat: Some(r.threat.clone()),
                quarantine_id: r.quarantine_id.clone(),
                ..HostActionEntry::new(
                    &r.guest,
                    &r.guest_info.name,
                    "remediate",
                    "automatic",
                    r.status,
                    r.detail.clone(),
                )
            });
        }
        self.emit(|| EventBody::Remediation {
            origin: "automatic".into(),
            guest: GuestRecord::new(&r.guest, &r.guest_info),
            path: PathRecord::from(&r.path),
            file: FileRecord::from(&r.file),
            threat: r.threat.clone(),
            action: r.action.as_str().to_owned(),
            status: r.status.to_owned(),
            detail: r.detail.clone(),
            quarantine_id: r.quarantine_id.clone(),
        });
    }

    fn on_host_action(&self, r: &crate::connection::HostActionRecord) {
        let (_, status, detail) = crate::guests::describe_outcome(r.outcome);
        let counters = match r.outcome {
            ActionOutcome::ScanDone(d) => Some(ScanSummary::from(d.counters)),
            _ => None,
        };
        if let Some(audit) = &self.audit {
            audit.write_record(&HostActionEntry {
                operation: r.operation.map(str::to_owned),
                path: r.path.as_ref().map(GuestPath::to_string_lossy),
                threat: r.threat.clone(),
                policy_version: r.policy_version,
                counters,
                ..HostActionEntry::new(
                    &r.guest,
                    &r.guest_info.name,
                    r.action,
                    r.origin,
                    status,
                    detail.clone(),
                )
            });
        }
        match (r.action, &r.path) {
            ("remediate", Some(path)) => {
                self.emit(|| EventBody::Remediation {
                    origin: r.origin.into(),
                    guest: GuestRecord::new(&r.guest, &r.guest_info),
                    path: PathRecord::from(path),
                    file: FileRecord::from(&r.file.unwrap_or_default()),
                    threat: r.threat.clone().unwrap_or_default(),
                    action: r.operation.unwrap_or("delete").into(),
                    status: status.into(),
                    detail,
                    quarantine_id: None,
                });
            }
            ("scan_tree", Some(path)) => {
                self.emit(|| EventBody::ScanFinished {
                    guest: GuestRecord::new(&r.guest, &r.guest_info),
                    path: PathRecord::from(path),
                    status: status.into(),
                    detail,
                    counters,
                });
            }
            _ => {}
        }
    }
}

/// What a connection holds while it runs: its pending slot until the
/// handshake, then its session slot ([`crate::admission`]).
struct ConnectionSlot {
    pending: Option<PendingSlot>,
    session: Option<SessionSlot>,
    metrics: Arc<Metrics>,
    logs: Arc<PeerLog>,
}

impl ConnectionSlot {
    fn new(pending: PendingSlot, metrics: Arc<Metrics>, logs: Arc<PeerLog>) -> Self {
        metrics.handshakes_pending.inc();
        Self {
            pending: Some(pending),
            session: None,
            metrics,
            logs,
        }
    }

    fn end_pending(&mut self) -> Option<PendingSlot> {
        let p = self.pending.take();
        if p.is_some() {
            self.metrics.handshakes_pending.dec();
        }
        p
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.end_pending();
    }
}

impl Admit for ConnectionSlot {
    fn admit(&mut self, guest: &GuestId, _info: &GuestInfo) -> Result<(), GoodbyeReason> {
        let Some(pending) = self.end_pending() else {
            return Ok(());
        };
        match pending.promote(guest.peer()) {
            Ok(slot) => {
                self.session = Some(slot);
                Ok(())
            }
            Err(refusal) => {
                self.metrics.refused(refusal.label());
                if self.logs.allow(Some(&guest.peer()), LogKind::Refused) {
                    tracing::warn!(%guest, "{refusal}: Goodbye(Overloaded)");
                }
                Err(GoodbyeReason::Overloaded)
            }
        }
    }
}

/// A built, not yet running service.
pub struct Service {
    ctx: Arc<ScanContext>,
    metrics: Arc<Metrics>,
    logs: Arc<PeerLog>,
    listeners: Vec<Listener>,
    metrics_listener: Option<tokio::net::TcpListener>,
    #[cfg(unix)]
    control: Option<tokio::net::UnixListener>,
    signature_config: SignatureConfig,
    admission: Arc<Admission>,
    /// Bound on a `tls://` connection's TLS handshake.
    tls_handshake_timeout: Duration,
    allowed_cids: Vec<u32>,
    quarantine: Option<Arc<Mutex<QuarantineStore>>>,
    /// `state_dir`: where the guest registry is saved.
    state: Option<Arc<crate::state::StateDir>>,
    /// The `[tls]` files and what the `tls://` listeners run of them.
    tls: Option<Arc<TlsReload>>,
}

/// The `[tls]` section and where its next reading goes: the `tls://`
/// listeners take each new handshake's configuration from it, and the TLS
/// sessions check their guest's certificate again against each new one.
struct TlsReload {
    config: crate::tls::TlsConfig,
    servers: watch::Sender<Arc<crate::tls::TlsServer>>,
}

/// How often the guest registry is saved to `state_dir` when it changed.
pub const GUESTS_SAVE_INTERVAL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Validates `config`, loads signatures, opens the audit log, reads the
    /// TLS files (all by [`prepare`]) and binds every listener. Must be
    /// called inside a tokio runtime.
    pub async fn build(config: &Config) -> Result<Self, ServiceError> {
        let to_prepare = config.clone();
        let Prepared {
            signature_config,
            set,
            audit,
            tls,
            farm_files,
        } = tokio::task::spawn_blocking(move || prepare(&to_prepare))
            .await
            .map_err(|e| ServiceError::Loader(e.to_string()))??;
        tracing::info!("signatures loaded: {}", describe(set.summary()));
        let metrics = Arc::new(Metrics::new());
        metrics.reload(true);
        metrics
            .signatures_loaded
            .set(signature_count(set.summary()));
        let audit = audit
            .map(|file| AuditLog::start(file, metrics.audit_records_not_written.clone()))
            .transpose()?;
        let events = match config.events.sink() {
            Some(sink) => {
                let m = metrics.clone();
                let sink = tokio::task::spawn_blocking(move || EventSink::open(&sink, m))
                    .await
                    .map_err(|e| ServiceError::Loader(e.to_string()))??;
                Some(sink)
            }
            None => None,
        };
        let quarantine = match &config.quarantine.dir {
            Some(dir) => {
                let (dir, limits) = (dir.clone(), config.quarantine.limits());
                let store =
                    tokio::task::spawn_blocking(move || QuarantineStore::open(&dir, limits))
                        .await
                        .map_err(|e| ServiceError::Loader(e.to_string()))??;
                let u = store.usage();
                tracing::info!(
                    dir = %store.dir().display(),
                    entries = u.entries,
                    bytes = u.bytes,
                    max_entries = u.limits.max_entries,
                    max_bytes = u.limits.max_bytes,
                    report = ?store.report(),
                    "quarantine store open"
                );
                Some(Arc::new(Mutex::new(store)))
            }
            None => None,
        };
        let logs = Arc::new(PeerLog::new(LogLimits::default(), metrics.clone()));
        let farm = crate::farm::Farm::start(&config.farm, farm_files, metrics.farm.clone())?;
        let mut observer = ServiceObserver::new(metrics.clone(), audit, logs.clone())
            .with_scan_budget(Duration::from_millis(config.limits.request_timeout_ms));
        if let Some(events) = events {
            observer = observer.with_events(events);
        }
        if let Some(farm) = &farm {
            observer = observer.with_farm(Arc::clone(farm));
        }
        let observer = Arc::new(observer);
        let mut ctx =
            ScanContext::with_caches(set, connection_limits(config), observer, caches(config));
        let state = match &config.state_dir {
            Some(dir) => {
                let dir = dir.clone();
                let state = tokio::task::spawn_blocking(move || crate::state::StateDir::open(&dir))
                    .await
                    .map_err(|e| ServiceError::Loader(e.to_string()))??;
                Some(Arc::new(state))
            }
            None => None,
        };
        ctx.guest_policy = Arc::new(match &state {
            Some(state) => crate::guest_policy::PolicyStore::with_state(
                config.guest_policy.clone(),
                Arc::clone(state),
            ),
            None => crate::guest_policy::PolicyStore::new(config.guest_policy.clone()),
        });
        if let Some(state) = &state {
            ctx.guests = Arc::new(crate::guests::GuestRegistry::restore(state));
        }
        ctx.remediation = config.remediation.clone();
        ctx.quarantine = quarantine.clone();
        ctx.farm = farm;
        if let Some(farm) = &ctx.farm {
            tracing::info!(
                ?farm,
                scanner = farm.scanner_name(),
                ttl_secs = farm.ttl_secs(),
                "farm cache: sharing verdicts, events and guests through Redis"
            );
        }
        metrics.attach_guests(Arc::clone(&ctx.guests));
        let ctx = Arc::new(ctx);
        let (urls, explicit) = config.listeners()?;
        let tls = config.tls.clone().zip(tls).map(|(config, server)| {
            Arc::new(TlsReload {
                config,
                servers: watch::Sender::new(Arc::new(server)),
            })
        });
        let servers = tls.as_ref().map(|t| t.servers.subscribe());
        let mut listeners = Vec::new();
        let mut skipped = Vec::new();
        for url in &urls {
            match Listener::bind_with_tls(url, servers.as_ref()) {
                Ok(l) => listeners.push(l),
                // The embedded default's vsock listener is optional: skipped
                // when the kernel lacks AF_VSOCK, or off Linux (Unsupported).
                Err(e @ (BindError::NoVsock { .. } | BindError::Unsupported { .. }))
                    if !explicit =>
                {
                    tracing::warn!("{e}; continuing without vsock");
                    skipped.push(e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        if listeners.is_empty() {
            return Err(ServiceError::NoListener(skipped.join("; ")));
        }
        let metrics_listener = match config.metrics_addr()? {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServiceError::Metrics { addr, source })?,
            ),
            None => None,
        };
        #[cfg(unix)]
        let control = config
            .control_socket
            .as_deref()
            .map(crate::control::bind)
            .transpose()?;
        #[cfg(not(unix))]
        if config.control_socket.is_some() {
            return Err(ServiceError::NoControlSocket);
        }
        let l = &config.limits;
        Ok(Self {
            #[cfg(unix)]
            control,
            ctx,
            metrics,
            logs,
            listeners,
            metrics_listener,
            signature_config,
            admission: Admission::new(AdmissionLimits {
                max_sessions: l.max_sessions,
                max_sessions_per_guest: l.max_sessions_per_guest,
                max_pending: l.max_pending_handshakes,
                max_pending_per_peer: l.max_pending_per_peer,
            }),
            tls_handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            allowed_cids: config.allowed_cids.clone(),
            quarantine,
            state,
            tls,
        })
    }

    /// Where it listens (TCP port 0 resolved).
    pub fn urls(&self) -> Vec<ListenUrl> {
        self.listeners.iter().map(|l| l.url().clone()).collect()
    }

    /// The metrics endpoint's bound address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// A handle for reloads and inspection, usable while running.
    pub fn handle(&self) -> ServiceHandle {
        ServiceHandle {
            ctx: self.ctx.clone(),
            metrics: self.metrics.clone(),
            signature_config: self.signature_config.clone(),
            quarantine: self.quarantine.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The connection slot counters (for tests and inspection).
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Accepts connections until `shutdown` completes, then closes every
    /// session with `Goodbye(Shutdown)` and waits (up to `grace`) for them.
    pub async fn run<F: Future<Output = ()>>(self, shutdown: F, grace: Duration) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        if let Some(l) = self.metrics_listener {
            tasks.spawn(crate::metrics::serve(l, self.metrics.clone()));
        }
        // The control socket stops on `stop_tx` and waits for its clients
        // (they hold the service's state: the event sink's and the
        // quarantine's locks go only with the last of them).
        #[cfg(unix)]
        let control = self.control.map(|l| {
            tokio::spawn(crate::control::serve(
                l,
                Arc::new(crate::control::ControlState {
                    guests: self.ctx.guests.clone(),
                    policy: self.ctx.guest_policy.clone(),
                    quarantine: self.ctx.quarantine.clone(),
                    observer: self.ctx.observer.clone(),
                }),
                stop_rx.clone(),
            ))
        });
        if let Some(farm) = self.ctx.farm.clone() {
            let guests = self.ctx.guests.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(crate::farm::GUEST_REFRESH);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    farm.refresh_guests(&guests.list());
                }
            });
        }
        if let Some(state) = self.state.clone() {
            let guests = self.ctx.guests.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(GUESTS_SAVE_INTERVAL);
                let mut failing = false;
                loop {
                    tick.tick().await;
                    let (g, s) = (guests.clone(), state.clone());
                    match tokio::task::spawn_blocking(move || g.save(&s)).await {
                        Ok(Ok(())) if failing => {
                            failing = false;
                            tracing::info!("guest registry saved again");
                        }
                        Ok(Err(e)) if !failing => {
                            failing = true;
                            tracing::error!(error = %e, "guest registry not saved (retried every 5 s)");
                        }
                        _ => {}
                    }
                }
            });
        }
        let flush_logs = self.logs.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                flush_logs.flush();
            }
        });
        let mut accept_tasks = JoinSet::new();
        let conns = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        for listener in self.listeners {
            let acceptor = Acceptor {
                ctx: self.ctx.clone(),
                metrics: self.metrics.clone(),
                logs: self.logs.clone(),
                admission: self.admission.clone(),
                allowed: self.allowed_cids.clone(),
                tls_handshake_timeout: self.tls_handshake_timeout,
                stop_rx: stop_rx.clone(),
                conns: conns.clone(),
                refusing: Arc::new(Semaphore::new(64)),
            };
            accept_tasks.spawn(acceptor.run(listener));
        }
        shutdown.await;
        tracing::info!("shutting down: closing every session");
        accept_tasks.abort_all();
        while accept_tasks.join_next().await.is_some() {}
        let _ = stop_tx.send(true);
        let mut set = std::mem::take(&mut *conns.lock().await);
        let drained =
            tokio::time::timeout(grace, async { while set.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("sessions still open after {grace:?}; aborting them");
            set.abort_all();
            // Until each is gone (an aborted task is dropped at its next
            // poll): what they hold is released when `run` returns.
            while set.join_next().await.is_some() {}
        }
        #[cfg(unix)]
        if let Some(control) = control {
            let _ = control.await;
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if let Some(state) = self.state {
            let guests = self.ctx.guests.clone();
            match tokio::task::spawn_blocking(move || guests.save(&state)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "guest registry not saved at shutdown"),
                Err(e) => tracing::error!(error = %e, "guest registry not saved at shutdown"),
            }
        }
        self.logs.drain();
    }
}

/// The accept loop of one listener.
struct Acceptor {
    ctx: Arc<ScanContext>,
    metrics: Arc<Metrics>,
    logs: Arc<PeerLog>,
    admission: Arc<Admission>,
    allowed: Vec<u32>,
    tls_handshake_timeout: Duration,
    stop_rx: watch::Receiver<bool>,
    conns: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    /// Bounds the tasks that send `Goodbye(Overloaded)` to refused peers.
    refusing: Arc<Semaphore>,
}

impl Acceptor {
    async fn run(self, listener: Listener) {
        loop {
            let accepted = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    if self.logs.allow(None, LogKind::AcceptFailed) {
                        tracing::warn!(listener = %listener.url(), error = %e, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            self.admit(accepted, matches!(listener, Listener::Tls(..)))
                .await;
        }
    }

    /// Gives `accepted` a pending slot and a task, or closes it.
    async fn admit(&self, accepted: Accepted, tls: bool) {
        let guest = accepted.guest().clone();
        let peer = guest.peer();
        if !admitted(&guest, &self.allowed) {
            self.metrics.refused("cid_not_allowed");
            if self.logs.allow(Some(&peer), LogKind::Refused) {
                tracing::warn!(%guest, "CID not in the allow-list: connection closed");
            }
            return;
        }
        let pending = match self.admission.try_pending(peer.clone()) {
            Ok(p) => p,
            Err(refusal) => {
                self.metrics.refused(refusal.label());
                if self.logs.allow(Some(&peer), LogKind::Refused) {
                    tracing::warn!(%guest, "{refusal}: connection closed");
                }
                // A plain-text Goodbye means nothing on a TLS listener.
                if !tls && let Ok(p) = self.refusing.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        if let Ok(established) = accepted.establish().await {
                            refuse(established.stream).await;
                        }
                        drop(p);
                    });
                }
                return;
            }
        };
        let slot = ConnectionSlot::new(pending, self.metrics.clone(), self.logs.clone());
        let ctx = self.ctx.clone();
        let mut stop_rx = self.stop_rx.clone();
        let logs = self.logs.clone();
        let metrics = self.metrics.clone();
        let tls_timeout = self.tls_handshake_timeout;
        let mut set = self.conns.lock().await;
        // Reap finished sessions so the set stays small.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            let Established {
                stream,
                guest,
                tls,
            } = match tokio::time::timeout(tls_timeout, accepted.establish()).await {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        metrics.refused("tls_handshake");
                        if logs.allow(Some(&peer), LogKind::TlsFailed) {
                            tracing::warn!(%guest, error = %e, "connection closed");
                        }
                        return;
                    }
                    Err(_) => {
                        metrics.refused("tls_handshake");
                        if logs.allow(Some(&peer), LogKind::TlsFailed) {
                            tracing::warn!(%guest, "TLS handshake timed out: connection closed");
                        }
                        return;
                    }
                };
            let untrusted_guest = guest.clone();
            let stop = async move {
                let shutdown = stop_rx.wait_for(|s| *s);
                let Some(tls) = tls else {
                    let _ = shutdown.await;
                    return GoodbyeReason::Shutdown;
                };
                // A reload that no longer accepts the certificate ends the
                // session as a handshake now would be refused: the guest
                // reconnects and is refused there.
                tokio::select! {
                    _ = shutdown => {}
                    why = tls.no_longer_trusted() => {
                        metrics.tls_sessions_untrusted.inc();
                        tracing::warn!(
                            guest = %untrusted_guest,
                            error = %why,
                            "the reloaded tls files no longer accept this guest's certificate: session ended"
                        );
                    }
                }
                GoodbyeReason::Shutdown
            };
            let reason =
                serve_connection_admitted(stream, guest.clone(), ctx, stop, Some(Box::new(slot)))
                    .await;
            tracing::debug!(%guest, %reason, "connection task done");
        });
    }
}

/// `thinagent_scanner_signatures_loaded`: every signature of the active
/// set ([`LoadSummary::signature_count`]), at start and after each reload.
fn signature_count(summary: &LoadSummary) -> i64 {
    i64::try_from(summary.signature_count()).unwrap_or(i64::MAX)
}

/// Whether the CID allow-list admits `guest` (non-vsock peers always pass;
/// an empty list admits every CID).
pub fn admitted(guest: &GuestId, allowed_cids: &[u32]) -> bool {
    match guest {
        GuestId::Vsock { cid, .. } => allowed_cids.is_empty() || allowed_cids.contains(cid),
        _ => true,
    }
}

/// Sends `Goodbye(Overloaded)` and closes, within one second.
async fn refuse(mut stream: crate::listen::BoxConn) {
    let mut buf = [0u8; 64];
    let msg = Message::Goodbye(Goodbye {
        reason: GoodbyeReason::Overloaded,
    });
    if let Ok(n) = msg.encode(0, &mut buf) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(&buf[..n]).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

/// Reloads and inspection while the service runs.
#[derive(Clone)]
pub struct ServiceHandle {
    ctx: Arc<ScanContext>,
    metrics: Arc<Metrics>,
    signature_config: SignatureConfig,
    quarantine: Option<Arc<Mutex<QuarantineStore>>>,
    tls: Option<Arc<TlsReload>>,
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle").finish_non_exhaustive()
    }
}

impl ServiceHandle {
    /// Rebuilds the signature set from the same configuration and swaps it
    /// in atomically. On failure the old set stays active.
    pub async fn reload(&self) -> Result<LoadSummary, ServiceError> {
        let sc = self.signature_config.clone();
        let loaded = tokio::task::spawn_blocking(move || load_signatures(&sc))
            .await
            .map_err(|e| ServiceError::Loader(e.to_string()))?;
        match loaded {
            Ok(set) => {
                let summary = set.summary().clone();
                self.ctx.reload(set);
                self.metrics.reload(true);
                self.metrics
                    .signatures_loaded
                    .set(signature_count(&summary));
                tracing::info!("signatures reloaded: {}", describe(&summary));
                Ok(summary)
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(error = %e, "signature reload failed; the previous set stays active");
                Err(e)
            }
        }
    }

    /// Reads the `[tls]` files again (certificate, key, guest CA,
    /// revocation lists): new handshakes use them, and each TLS session
    /// whose guest certificate they no longer accept (revoked by the new
    /// list, its CA gone, expired) is ended. On failure nothing changes.
    /// `Ok(false)` when there is no `[tls]`.
    pub async fn reload_tls(&self) -> Result<bool, ServiceError> {
        let Some(tls) = &self.tls else {
            return Ok(false);
        };
        let config = tls.config.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::tls::TlsServer::load(&config))
            .await
            .map_err(|e| ServiceError::Loader(e.to_string()))?;
        match loaded {
            Ok(server) => {
                // Counted and logged first: the sessions it ends may close
                // as soon as it is sent.
                self.metrics.tls_reload(true);
                tracing::info!("tls files reloaded: new handshakes use them");
                tls.servers.send_replace(Arc::new(server));
                Ok(true)
            }
            Err(e) => {
                self.metrics.tls_reload(false);
                tracing::error!(error = %e, "tls reload failed; the previous files stay in use");
                Err(e.into())
            }
        }
    }

    /// Reads the farm's password and TLS files again and connects to Redis
    /// with them (a rotated password, a renewed certificate): once that
    /// connection answers, requests use it. On failure (a file that does
    /// not read, a connection Redis refuses or that does not answer) the
    /// connection in use stays. `Ok(false)` when there is no farm.
    pub async fn reload_farm(&self) -> Result<bool, ServiceError> {
        let Some(farm) = self.ctx.farm.clone() else {
            return Ok(false);
        };
        let config = farm.config().clone();
        let read = tokio::task::spawn_blocking(move || crate::farm::FarmFiles::read(&config))
            .await
            .map_err(|e| ServiceError::Loader(e.to_string()))?;
        let reconnected = match read {
            Ok(files) => farm.reconnect(files).await,
            Err(e) => Err(e),
        };
        match reconnected {
            Ok(()) => {
                self.metrics.farm_reload(true);
                tracing::info!("farm files reloaded: Redis is reached with them from now on");
                Ok(true)
            }
            Err(e) => {
                self.metrics.farm_reload(false);
                tracing::error!(error = %e, "farm reload failed; the connection in use stays");
                Err(e.into())
            }
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The shared scan context (caches, active signature set).
    pub fn context(&self) -> &Arc<ScanContext> {
        &self.ctx
    }

    /// The quarantine store, when `quarantine.dir` is set (its operations
    /// block on file I/O: call them from `spawn_blocking`).
    pub fn quarantine(&self) -> Option<&Arc<Mutex<QuarantineStore>>> {
        self.quarantine.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(kind_label("BadMagic { offset: 3 }"), "bad_magic");
        assert_eq!(
            kind_label("UnknownReadData { read_id: 1 }"),
            "unknown_read_data"
        );
        assert_eq!(kind_label("LimitExceeded"), "limit_exceeded");
    }

    #[test]
    fn cid_allow_list() {
        let vm = |cid| GuestId::Vsock { cid, port: 1 };
        assert!(admitted(&vm(3), &[]));
        assert!(admitted(&vm(3), &[3, 4]));
        assert!(!admitted(&vm(5), &[3, 4]));
        let tcp = GuestId::Tcp(([127, 0, 0, 1], 9).into());
        assert!(admitted(&tcp, &[3]));
    }

    #[test]
    fn limits_map_from_config() {
        let mut c = Config::default();
        c.limits.max_in_flight_per_guest = 7;
        c.policy.too_large = crate::config::PolicyDecision::Deny;
        let l = connection_limits(&c);
        assert_eq!(l.session.max_events_in_flight, 7);
        assert_eq!(l.session.policy.too_large, Decision::Deny);
        assert_eq!(l.session.max_file_size, c.limits.max_file_size);
        assert_eq!(l.session.max_inline_len, thinagent_protocol::MAX_INLINE_LEN);
        l.session.validate().unwrap();
        c.limits.max_frame_len = 8192;
        assert_eq!(connection_limits(&c).session.max_inline_len, 8192 - 89);
        c.limits.max_inline_len = Some(0);
        assert_eq!(connection_limits(&c).session.max_inline_len, 0);
    }
}
