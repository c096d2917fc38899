//! The event sink: detections and guest state changes as JSON lines, for
//! systems that act on them (an isolation system that tags an infected VM,
//! a SIEM), delivered to a file and/or an HTTP webhook (issue 14).
//!
//! **What is sent.** One JSON object per event ([`Event`]), one per line:
//! `id` (32 hex digits, unique: consumers deduplicate by it), `time`
//! (RFC 3339 UTC), `type` and the fields of that type:
//!
//! * `detection`: a file open was denied for a threat: `guest`, `path`,
//!   `file`, `threat`, `engine`, `operation` (`open`, `execute`,
//!   `close_after_write`), `verdict` (`deny`), `cache` (`none`: scanned
//!   now; `guest`, `content`: a cached verdict);
//! * `guest_connected`: a guest completed its handshake and was admitted:
//!   `guest` (with its agent and protocol version);
//! * `guest_disconnected`: that session ended: `guest`, `reason`.
//!
//! `guest`, `path` and `file` are the records of [`crate::records`].
//! Remediation results are a later type; consumers must ignore types they do
//! not know.
//!
//! **Where it goes.** Each configured destination, `events.file` (lines
//! appended, fsynced) and `events.webhook_url` (HTTP POST, body
//! `application/x-ndjson`: up to [`MAX_BATCH_EVENTS`] lines; any 2xx status
//! is success, anything else, or no answer within `events.timeout_ms`, a
//! failure), has its own on-disk queue `<queue_dir>/<file|webhook>.queue`
//! (a [`queue_file::QueueFile`]: atomic, fsynced add and remove) and its own
//! writer thread. An event is removed from a queue only after its
//! destination took it; a failed delivery is retried, the same batch
//! first, after a back-off that doubles from 0.5 s up to
//! `events.retry_max_ms`. Events queued when the scanner stops are
//! delivered after it starts again.
//!
//! **Guarantees.** At least once, in order, per destination: an event can be
//! delivered twice if the scanner dies between a delivery and its removal
//! from the queue (consumers deduplicate by `id`). Lost only: (a) when the
//! queue on disk would pass `events.max_queue_bytes`: the *new* event is
//! dropped (what is queued is older and kept), counted in
//! `thinagent_scanner_events_dropped_total{sink,reason="queue_full"}` with
//! one log line when dropping starts and one when it stops; (b) when the
//! verdict path outruns a writer thread by more than [`CHANNEL_EVENTS`]
//! events (`reason="channel_full"`), the same way; (c) on a crash (not a
//! shutdown) the few events handed to the writer and not yet added to the
//! queue file (milliseconds' worth).
//!
//! **Scanner farms.** With `[farm]` set, every event also goes, with the
//! same `id` and JSON, to the farm's Redis stream ([`crate::farm`]).
//!
//! **The verdict path never waits** for the sink: [`EventSink::emit`]
//! encodes the line and `try_send`s it to each writer's bounded channel.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, channel, sync_channel,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use queue_file::QueueFile;
use serde::{Deserialize, Serialize};

use crate::audit::rfc3339;
use crate::metrics::Metrics;
use crate::records::{FileRecord, GuestRecord, PathRecord, hex};

/// Events a writer thread's channel holds.
pub const CHANNEL_EVENTS: usize = 4096;
/// Most events in one delivery (one webhook POST, one file write).
pub const MAX_BATCH_EVENTS: usize = 100;
/// Most bytes in one delivery (a single larger event goes alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// The first retry's back-off (or `events.retry_max_ms` if shorter).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long closing the sink waits for its writers to queue what they
/// were handed (and try one last delivery).
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Bytes a queue element takes beyond its payload, as counted against
/// `events.max_queue_bytes` (queue-file 2's element header and footer are 44, with
/// room to spare).
pub const ELEMENT_OVERHEAD: u64 = 64;

/// One event, as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (32 hex digits): deduplicate by it.
    pub id: String,
    /// When it happened (RFC 3339 UTC, milliseconds).
    pub time: String,
    /// The type and its fields.
    #[serde(flatten)]
    pub body: EventBody,
}

/// The types of event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per event and encoded at once; never stored in bulk"
)]
pub enum EventBody {
    /// A file open was denied for a threat.
    Detection {
        /// The guest.
        guest: GuestRecord,
        /// The file's path there.
        path: PathRecord,
        /// The file's identity there.
        file: FileRecord,
        /// What was found.
        threat: String,
        /// The engine that found it (also for a cached verdict).
        engine: Option<String>,
        /// `open`, `execute`, `close_after_write`.
        operation: String,
        /// The verdict sent (`deny`).
        verdict: String,
        /// `none` (scanned now), `guest`, `content` (a cached verdict).
        cache: String,
    },
    /// A guest connected (handshake done, admitted).
    GuestConnected {
        /// The guest.
        guest: GuestRecord,
    },
    /// A connected guest's session ended.
    GuestDisconnected {
        /// The guest.
        guest: GuestRecord,
        /// Why (`peer said goodbye: ...`, `idle timeout`, ...).
        reason: String,
    },
    /// A remediation ended: an automatic one ([`crate::remediation`]; also
    /// one not attempted, and why) or one an admin asked for.
    Remediation {
        /// `automatic` or `admin`.
        origin: String,
        /// The guest.
        guest: GuestRecord,
        /// The file's path there.
        path: PathRecord,
        /// The identity judged.
        file: FileRecord,
        /// What was found.
        threat: String,
        /// `delete`, `quarantine` (a rule's action), `truncate` (an admin's).
        action: String,
        /// `done`, `done-on-close`, `changed`, `not-found`, `failed`,
        /// `unsupported`, `rate-limited`, `kept`, `timed-out`,
        /// `connection-lost`, `busy`.
        status: String,
        /// In words.
        detail: String,
        /// The quarantine entry holding the bytes, when quarantined.
        #[serde(skip_serializing_if = "Option::is_none")]
        quarantine_id: Option<String>,
    },
    /// An on-demand scan an admin asked for ended (protocol §14.4); its
    /// detections are `detection` events of their own.
    ScanFinished {
        /// The guest.
        guest: GuestRecord,
        /// The scan's root there.
        path: PathRecord,
        /// `completed`, `cancelled`, `not-found`, `failed`, `busy`,
        /// `unsupported`, `timed-out`, `connection-lost`.
        status: String,
        /// In words.
        detail: String,
        /// The counters the guest sent with its end.
        #[serde(skip_serializing_if = "Option::is_none")]
        counters: Option<crate::audit::ScanSummary>,
    },
    /// An admin restored a quarantined file to its guest (protocol §14.7),
    /// or tried to: `status` says how it ended.
    Restore {
        /// The entry, and where it was written.
        #[serde(flatten)]
        entry: QuarantineRef,
        /// `done`, `changed` (a file exists there; nothing was written),
        /// `failed`, `rejected`, `busy`, `unsupported`, `timed-out`,
        /// `connection-lost`.
        status: String,
        /// In words.
        detail: String,
    },
    /// An admin purged a quarantine entry: its bytes are gone.
    QuarantinePurged {
        /// The entry.
        #[serde(flatten)]
        entry: QuarantineRef,
    },
}

/// A quarantine entry as a `restore` or `quarantine_purged` event names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRef {
    /// The guest it came from (and a restore went back to).
    pub guest: GuestRecord,
    /// Its path there (a restore's target).
    pub path: PathRecord,
    /// The quarantine entry.
    pub quarantine_id: String,
    /// What had been found in it.
    pub threat: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

impl Event {
    /// `body`, happening at `time`, with the next id of `ids`.
    pub fn new(ids: &EventIds, body: EventBody, time: SystemTime) -> Self {
        Self {
            id: ids.next(),
            time: rfc3339(time),
            body,
        }
    }
}

impl EventBody {
    /// The `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Detection { .. } => "detection",
            Self::GuestConnected { .. } => "guest_connected",
            Self::GuestDisconnected { .. } => "guest_disconnected",
            Self::Remediation { .. } => "remediation",
            Self::ScanFinished { .. } => "scan_finished",
            Self::Restore { .. } => "restore",
            Self::QuarantinePurged { .. } => "quarantine_purged",
        }
    }
}

/// What the sink needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Append events to this file.
    pub file: Option<PathBuf>,
    /// POST events to this URL (`http://` or `https://`).
    pub webhook_url: Option<String>,
    /// Extra request headers for the webhook (`Name: value` lines, e.g.
    /// `Authorization: Bearer ...`), read at the start.
    pub webhook_headers_file: Option<PathBuf>,
    /// Where the queues live.
    pub queue_dir: PathBuf,
    /// Most bytes each queue may hold on disk.
    pub max_queue_bytes: u64,
    /// Whole webhook request (connect, send, answer).
    pub timeout: Duration,
    /// Webhook connect.
    pub connect_timeout: Duration,
    /// Longest back-off between retries.
    pub retry_max: Duration,
}

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The queue directory or a queue file could not be opened.
    #[error("events: cannot open the queue {}: {message}; events.queue_dir must be a writable directory on a local file system", .path.display())]
    Queue {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Another process uses the queue directory.
    #[error("events: the queue directory {} is in use by another process (a running scanner?); stop it, or give another events.queue_dir", .dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The events file cannot be written.
    #[error("events: cannot open events.file {}: {source}; give a writable file path in an existing directory", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The webhook client could not be set up.
    #[error("events: webhook {url}: {message}")]
    Webhook {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// A writer thread could not be started.
    #[error("events: cannot start a writer thread: {0}")]
    Thread(io::Error),
}

/// The sink: queues to each destination's writer thread.
#[derive(Debug)]
pub struct EventSink {
    outputs: Vec<Output>,
    metrics: Arc<Metrics>,
    ids: EventIds,
    /// Holds the queue directory's lock.
    _lock: File,
}

#[derive(Debug)]
struct Output {
    name: &'static str,
    queue: Option<SyncSender<Vec<u8>>>,
    dropping: Arc<AtomicBool>,
    /// Disconnects when the writer ends.
    done: Mutex<Option<Receiver<()>>>,
}

impl EventSink {
    /// Opens the queues (creating `queue_dir` if missing) and starts a
    /// writer per destination. Blocking (fsyncs).
    pub fn open(config: &SinkConfig, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        // 0700: events name guests, paths and threats.
        let mut dirs = std::fs::DirBuilder::new();
        dirs.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            dirs.mode(0o700);
        }
        dirs.create(&config.queue_dir)
            .map_err(|e| SinkError::Queue {
                path: config.queue_dir.clone(),
                message: e.to_string(),
            })?;
        let lock_path = config.queue_dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| SinkError::Queue {
                path: lock_path.clone(),
                message: e.to_string(),
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SinkError::Locked {
                    dir: config.queue_dir.clone(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(SinkError::Queue {
                    path: lock_path,
                    message: e.to_string(),
                });
            }
        }
        let mut outputs = Vec::new();
        if let Some(path) = &config.file {
            // Opened once here so a wrong path fails the start.
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|source| SinkError::File {
                    path: path.clone(),
                    source,
                })?;
            let dest = Destination::File(FileDest { path: path.clone() });
            outputs.push(start_writer("file", dest, config, metrics.clone())?);
        }
        if let Some(url) = &config.webhook_url {
            let dest = Destination::Webhook(WebhookDest::new(url, config)?);
            outputs.push(start_writer("webhook", dest, config, metrics.clone())?);
        }
        Ok(Self {
            outputs,
            metrics,
            ids: EventIds::new(),
            _lock: lock,
        })
    }

    /// Sends `body` (happening now) to every destination; never blocks.
    /// Returns the event's id.
    pub fn emit(&self, body: EventBody) -> String {
        self.emit_at(body, SystemTime::now())
    }

    /// Sends `body` (happening at `time`) to every destination; never
    /// blocks. Returns the event's id.
    pub fn emit_at(&self, body: EventBody, time: SystemTime) -> String {
        let event = Event::new(&self.ids, body, time);
        self.send(&event);
        event.id
    }

    /// Sends `event` (made by [`Event::new`]) to every destination; never
    /// blocks.
    pub fn send(&self, event: &Event) {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "events: cannot encode an event");
                return;
            }
        };
        line.push(b'\n');
        self.metrics.events_emitted.inc();
        for out in &self.outputs {
            let Some(queue) = &out.queue else { continue };
            match queue.try_send(line.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.metrics.event_dropped(out.name, "channel_full");
                    if !out.dropping.swap(true, Ordering::AcqRel) {
                        tracing::error!(
                            sink = out.name,
                            queued = CHANNEL_EVENTS,
                            "events: the {} writer is not keeping up; events are DROPPED and counted in \
                             thinagent_scanner_events_dropped_total{{reason=\"channel_full\"}}; verdicts are not delayed",
                            out.name
                        );
                    }
                }
            }
        }
    }
}

impl Drop for EventSink {
    /// Closes the channels and waits, at most [`CLOSE_WAIT`] in all, for
    /// the writers to queue what they hold; what is queued is delivered
    /// after the next start.
    fn drop(&mut self) {
        for out in &mut self.outputs {
            drop(out.queue.take());
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        for out in &mut self.outputs {
            let done = out.done.get_mut().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(done) = done
                && let Err(RecvTimeoutError::Timeout) =
                    done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                tracing::warn!(
                    sink = out.name,
                    "events: the writer is still busy at close (a slow delivery); what it queued is delivered after the next start"
                );
            }
        }
    }
}

/// Unique event ids: BLAKE3 of the time, the process, a counter and a
/// per-process random key.
#[derive(Debug)]
pub struct EventIds {
    key: [u8; 16],
    counter: AtomicU64,
}

impl Default for EventIds {
    fn default() -> Self {
        Self::new()
    }
}

impl EventIds {
    /// A source with a fresh random key.
    pub fn new() -> Self {
        let mut key = [0u8; 16];
        for (i, half) in key.chunks_mut(8).enumerate() {
            // std's hasher keys are random per process.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        Self {
            key,
            counter: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut h = blake3::Hasher::new();
        h.update(&self.key);
        h.update(&std::process::id().to_le_bytes());
        h.update(
            &SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                .to_le_bytes(),
        );
        h.update(&n.to_le_bytes());
        hex(&h.finalize().as_bytes()[..16])
    }
}

/// Where a writer delivers.
enum Destination {
    File(FileDest),
    Webhook(WebhookDest),
}

impl Destination {
    fn deliver(&mut self, lines: &[Vec<u8>]) -> Result<(), String> {
        match self {
            Self::File(f) => f.deliver(lines),
            Self::Webhook(w) => w.deliver(lines),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::File(f) => f.path.display().to_string(),
            Self::Webhook(w) => w.url.clone(),
        }
    }
}

/// `events.file`: opened for each delivery (so a rotated file is followed),
/// lines appended whole and fsynced.
struct FileDest {
    path: PathBuf,
}

impl FileDest {
    fn deliver(&mut self, lines: &[Vec<u8>]) -> Result<(), String> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| e.to_string())?;
        let mut sink = crate::audit::LineSink::new(file).map_err(|e| e.to_string())?;
        let batch = lines.concat();
        sink.write_line(&batch).map_err(|e| e.to_string())?;
        sink.get_ref().sync_data().map_err(|e| e.to_string())
    }
}

/// `events.webhook_url`: one POST per batch.
struct WebhookDest {
    url: String,
    agent: ureq::Agent,
    /// From `events.webhook_headers_file`.
    headers: Vec<(ureq::http::HeaderName, ureq::http::HeaderValue)>,
}

/// Reads `events.webhook_headers_file`: one `Name: value` per line; blank
/// lines and lines starting with `#` are skipped. The values are secrets
/// (tokens): they are never logged, and a file others may read is warned
/// about.
pub fn read_webhook_headers(
    path: &Path,
) -> Result<Vec<(ureq::http::HeaderName, ureq::http::HeaderValue)>, String> {
    use ureq::http::{HeaderName, HeaderValue};
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("events.webhook_headers_file {}: {e}", path.display()))?;
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "events.webhook_headers_file can be read by other users: it holds the webhook's credentials; chmod 600 it"
            );
        }
    }
    let mut headers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || {
            format!(
                "events.webhook_headers_file {} line {}",
                path.display(),
                n + 1
            )
        };
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("{}: expected `Name: value`", at()))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{}: {:?} is not a header name", at(), name.trim()))?;
        if [
            ureq::http::header::CONTENT_TYPE,
            ureq::http::header::CONTENT_LENGTH,
            ureq::http::header::HOST,
            ureq::http::header::TRANSFER_ENCODING,
        ]
        .contains(&name)
        {
            return Err(format!("{}: {name} is set by the scanner itself", at()));
        }
        let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
            format!(
                "{}: the value of {name} has characters a header cannot carry",
                at()
            )
        })?;
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Ok(headers)
}

impl WebhookDest {
    fn new(url: &str, config: &SinkConfig) -> Result<Self, SinkError> {
        let cleartext = check_webhook_url(url).map_err(|message| SinkError::Webhook {
            url: url.into(),
            message,
        })?;
        if cleartext {
            tracing::warn!(
                url,
                "events.webhook_url is plain http:// beyond loopback: detections cross the network \
                 unencrypted and unauthenticated; prefer https://"
            );
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.connect_timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("thinagent-scanner/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let headers = match &config.webhook_headers_file {
            Some(path) => read_webhook_headers(path).map_err(|message| SinkError::Webhook {
                url: url.into(),
                message,
            })?,
            None => Vec::new(),
        };
        if cleartext && !headers.is_empty() {
            tracing::warn!(
                url,
                "events.webhook_headers_file's headers (credentials) go over plain http://"
            );
        }
        Ok(Self {
            url: url.into(),
            agent,
            headers,
        })
    }

    fn deliver(&mut self, lines: &[Vec<u8>]) -> Result<(), String> {
        let body = lines.concat();
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/x-ndjson");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let response = request.send(&body[..]).map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP status {status}"))
        }
    }
}

/// Checks a webhook URL: `http://` or `https://` with a host. Returns
/// whether it is plain `http://` to a host that is not loopback.
pub fn check_webhook_url(url: &str) -> Result<bool, String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http(s)://HOST[:PORT]/PATH"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("expected an http:// or https:// URL".into()),
    };
    let Some(host) = uri.host() else {
        return Err("the URL has no host".into());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Ok(!https && !loopback)
}

fn start_writer(
    name: &'static str,
    dest: Destination,
    config: &SinkConfig,
    metrics: Arc<Metrics>,
) -> Result<Output, SinkError> {
    let path = config.queue_dir.join(format!("{name}.queue"));
    let (queue, lines) = sync_channel::<Vec<u8>>(CHANNEL_EVENTS);
    let (opened_tx, opened) = channel::<Result<(), String>>();
    let (done_tx, done) = channel::<()>();
    let dropping = Arc::new(AtomicBool::new(false));
    let writer = Writer {
        name,
        dest,
        max_queue_bytes: config.max_queue_bytes,
        retry_max: config.retry_max,
        metrics,
        dropping: dropping.clone(),
        queue_full: false,
    };
    let queue_path = path.clone();
    let max_queue_bytes = config.max_queue_bytes;
    std::thread::Builder::new()
        .name(format!("events-{name}"))
        .spawn(move || {
            // A QueueFile is not Send: it lives on this thread.
            let q = match open_queue(&queue_path, max_queue_bytes) {
                Ok(q) => {
                    let _ = opened_tx.send(Ok(()));
                    q
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e.to_string()));
                    return;
                }
            };
            writer.run(q, &lines);
            drop(done_tx);
        })
        .map_err(SinkError::Thread)?;
    match opened.recv() {
        Ok(Ok(())) => {}
        Ok(Err(message)) => return Err(SinkError::Queue { path, message }),
        Err(_) => {
            return Err(SinkError::Queue {
                path,
                message: "the writer thread ended".into(),
            });
        }
    }
    Ok(Output {
        name,
        queue: Some(queue),
        dropping,
        done: Mutex::new(Some(done)),
    })
}

/// Opens (creating) a queue file sized so that it never grows nor shrinks.
///
/// queue-file 2.0.0 grows a file by doubling it, and when a `remove_n`
/// empties the queue it cuts a grown file back to its capacity *after*
/// committing a header that still records the longer length: the next open
/// then fails ("v2 file is truncated: header claims 16384, actual 8192").
/// A file created at its final size (sparse until written) never grows,
/// because [`Writer::enqueue`] keeps the used bytes under
/// `max_queue_bytes`, so it is never cut either; an existing larger file
/// (`max_queue_bytes` lowered) keeps its size. Removed elements are not
/// overwritten with zeros (that would rewrite the whole file at every
/// emptying): delivered events are not secrets kept from the host.
fn open_queue(path: &Path, max_queue_bytes: u64) -> Result<QueueFile, queue_file::Error> {
    let existing = std::fs::metadata(path).map_or(0, |m| m.len());
    let capacity = max_queue_bytes.saturating_add(QUEUE_SLACK).max(existing);
    let mut q = QueueFile::with_capacity(path, capacity)?;
    q.set_overwrite_on_remove(false);
    Ok(q)
}

/// Bytes a queue file has beyond `events.max_queue_bytes`.
const QUEUE_SLACK: u64 = 64 * 1024;

/// One destination's writer thread.
struct Writer {
    name: &'static str,
    dest: Destination,
    max_queue_bytes: u64,
    retry_max: Duration,
    metrics: Arc<Metrics>,
    /// Set by the emitter when its channel was full; cleared here.
    dropping: Arc<AtomicBool>,
    /// The queue file is full: new events are dropped.
    queue_full: bool,
}

impl Writer {
    fn run(mut self, mut q: QueueFile, lines: &Receiver<Vec<u8>>) {
        self.depth(&q);
        if !q.is_empty() {
            tracing::info!(
                sink = self.name,
                queued = q.size(),
                "events: delivering events queued before the start"
            );
        }
        let mut backoff = self.retry_max.min(FIRST_BACKOFF);
        let mut next_attempt = Instant::now();
        // Failed attempts since the last success.
        let mut failing: u64 = 0;
        loop {
            // Persist what was handed over first.
            loop {
                match lines.try_recv() {
                    Ok(line) => self.enqueue(&mut q, &line),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        // Closing: one last pass if not in back-off.
                        if failing == 0 {
                            while !q.is_empty() && self.attempt(&mut q).is_ok() {}
                        }
                        return;
                    }
                }
            }
            // The channel is empty now: the emitter may stop dropping.
            if self.dropping.swap(false, Ordering::AcqRel) {
                tracing::info!(sink = self.name, "events: the writer is keeping up again");
            }
            let now = Instant::now();
            if !q.is_empty() && now >= next_attempt {
                match self.attempt(&mut q) {
                    Ok(()) => {
                        if failing > 0 {
                            tracing::info!(
                                sink = self.name,
                                destination = %self.dest.describe(),
                                failed_attempts = failing,
                                "events: delivering again"
                            );
                        }
                        failing = 0;
                        backoff = self.retry_max.min(FIRST_BACKOFF);
                    }
                    Err(e) => {
                        self.metrics.event_failed(self.name);
                        if failing == 0 {
                            tracing::error!(
                                sink = self.name,
                                destination = %self.dest.describe(),
                                error = %e,
                                queued = q.size(),
                                "events: delivery failed; events stay queued on disk and are retried with back-off"
                            );
                        } else {
                            tracing::debug!(sink = self.name, error = %e, retry_in = ?backoff, "events: delivery failed again");
                        }
                        failing += 1;
                        next_attempt = Instant::now() + backoff;
                        backoff = (backoff * 2).min(self.retry_max);
                    }
                }
                continue;
            }
            // Wait for an event, or for the next attempt.
            let got = if q.is_empty() {
                lines.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                lines.recv_timeout(next_attempt.saturating_duration_since(now))
            };
            match got {
                Ok(line) => self.enqueue(&mut q, &line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if failing == 0 {
                        while !q.is_empty() && self.attempt(&mut q).is_ok() {}
                    }
                    return;
                }
            }
        }
    }

    /// Adds `line` to the queue file, unless that would pass the limit.
    fn enqueue(&mut self, q: &mut QueueFile, line: &[u8]) {
        let need = line.len() as u64 + ELEMENT_OVERHEAD;
        if q.used_bytes().saturating_add(need) > self.max_queue_bytes {
            self.metrics.event_dropped(self.name, "queue_full");
            if !self.queue_full {
                self.queue_full = true;
                tracing::error!(
                    sink = self.name,
                    destination = %self.dest.describe(),
                    queued = q.size(),
                    max_queue_bytes = self.max_queue_bytes,
                    "events: the on-disk queue is full (events.max_queue_bytes): NEW events are DROPPED \
                     and counted in thinagent_scanner_events_dropped_total{{reason=\"queue_full\"}} \
                     until deliveries free room; fix the destination or raise events.max_queue_bytes"
                );
            }
            return;
        }
        if let Err(e) = q.add(line) {
            self.metrics.event_dropped(self.name, "queue_error");
            tracing::error!(sink = self.name, error = %e, "events: cannot add an event to the on-disk queue; it is DROPPED");
            return;
        }
        if self.queue_full {
            self.queue_full = false;
            tracing::info!(sink = self.name, "events: the on-disk queue has room again");
        }
        self.depth(q);
    }

    /// Delivers the head of the queue; removes it on success.
    fn attempt(&mut self, q: &mut QueueFile) -> Result<(), String> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for line in q.iter().take(MAX_BATCH_EVENTS) {
            if !batch.is_empty() && bytes + line.len() > MAX_BATCH_BYTES {
                break;
            }
            bytes += line.len();
            batch.push(line);
        }
        if batch.is_empty() {
            return Err("the queue file could not be read".into());
        }
        self.dest.deliver(&batch)?;
        let n = batch.len();
        if let Err(e) = q.remove_n(n) {
            // Delivered, but still queued: they will be sent again (at
            // least once).
            tracing::error!(sink = self.name, error = %e, "events: cannot remove delivered events from the queue");
            return Err(e.to_string());
        }
        self.metrics.event_delivered(self.name, n as u64);
        self.depth(q);
        Ok(())
    }

    fn depth(&self, q: &QueueFile) {
        self.metrics.event_queue_depth(self.name, q.size() as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn restore_and_purge_events_are_flat_and_read_back() {
        let entry = QuarantineRef {
            guest: GuestRecord {
                peer: "vsock:5".into(),
                address: "vsock://5:1025".into(),
                name: "web-01".into(),
                os: "linux".into(),
                agent_version: None,
                protocol_version: Some(2),
            },
            path: PathRecord {
                encoding: "utf8".into(),
                hex: "2f61".into(),
                display: "/a".into(),
            },
            quarantine_id: "q1".into(),
            threat: "T".into(),
            size: 3,
            sha256: "ab".into(),
        };
        let event = Event {
            id: "1".into(),
            time: "2026-12-03T18:00:00.000Z".into(),
            body: EventBody::Restore {
                entry: entry.clone(),
                status: "done".into(),
                detail: "done".into(),
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "restore");
        assert_eq!(json["quarantine_id"], "q1");
        assert_eq!(json["guest"]["peer"], "vsock:5");
        assert_eq!(json["status"], "done");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        let purged = EventBody::QuarantinePurged { entry };
        assert_eq!(purged.kind(), "quarantine_purged");
        assert_eq!(serde_json::to_value(&purged).unwrap()["size"], 3);
    }

    fn config(dir: &Path) -> SinkConfig {
        SinkConfig {
            file: None,
            webhook_url: None,
            webhook_headers_file: None,
            queue_dir: dir.join("queue"),
            max_queue_bytes: 1 << 20,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retry_max: Duration::from_millis(100),
        }
    }

    fn detection(n: u32) -> EventBody {
        EventBody::Detection {
            guest: GuestRecord {
                peer: "vsock:3".into(),
                address: "vsock://3:1025".into(),
                name: "vm1".into(),
                os: "linux".into(),
                agent_version: Some("0.1.0".into()),
                protocol_version: Some(2),
            },
            path: PathRecord::from(&crate::session::GuestPath::Utf8(format!("/tmp/eicar{n}"))),
            file: FileRecord {
                volume_serial: 1,
                file_id: [2; 16],
                size: 68,
                last_write_time: 3,
            },
            threat: "Eicar-Test-Signature".into(),
            engine: Some("builtin".into()),
            operation: "open".into(),
            verdict: "deny".into(),
            cache: "none".into(),
        }
    }

    fn read_events(path: &Path) -> Vec<Event> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_json_schema() {
        let ids = EventIds::new();
        let e = Event {
            id: ids.next(),
            time: rfc3339(SystemTime::UNIX_EPOCH),
            body: detection(1),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "detection");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["id"].as_str().unwrap().len(), 32);
        assert_eq!(v["guest"]["peer"], "vsock:3");
        assert_eq!(v["path"]["display"], "/tmp/eicar1");
        assert_eq!(v["path"]["encoding"], "utf8");
        assert_eq!(v["file"]["size"], 68);
        assert_eq!(v["threat"], "Eicar-Test-Signature");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_ne!(ids.next(), ids.next());
        let v = serde_json::to_value(Event {
            id: "x".into(),
            time: "t".into(),
            body: EventBody::GuestDisconnected {
                guest: GuestRecord {
                    peer: "tcp:127.0.0.1".into(),
                    address: "tcp://127.0.0.1:5000".into(),
                    name: "lab".into(),
                    os: "windows".into(),
                    agent_version: Some("1.2.3".into()),
                    protocol_version: Some(1),
                },
                reason: "idle timeout".into(),
            },
        })
        .unwrap();
        assert_eq!(v["type"], "guest_disconnected");
        assert_eq!(v["guest"]["agent_version"], "1.2.3");
        assert_eq!(v["reason"], "idle timeout");
    }

    #[test]
    fn events_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events.jsonl");
        let metrics = Arc::new(Metrics::new());
        let sink = EventSink::open(
            &SinkConfig {
                file: Some(out.clone()),
                ..config(dir.path())
            },
            metrics.clone(),
        )
        .unwrap();
        let ids: Vec<String> = (0..250)
            .map(|n| sink.emit_at(detection(n), SystemTime::now()))
            .collect();
        wait_for("250 events in the file", || read_events(&out).len() == 250);
        let got: Vec<String> = read_events(&out).into_iter().map(|e| e.id).collect();
        assert_eq!(got, ids);
        drop(sink);
        // The queue (150 KiB went through it, then it emptied) opens again:
        // queue-file 2.0.0 cut a grown file behind its header's back.
        let again = EventSink::open(
            &SinkConfig {
                file: Some(out.clone()),
                ..config(dir.path())
            },
            Arc::new(Metrics::new()),
        )
        .unwrap();
        drop(again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("queue"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let size = std::fs::metadata(dir.path().join("queue/file.queue"))
            .unwrap()
            .len();
        assert_eq!(size, (1 << 20) + QUEUE_SLACK, "the queue file never grew");
        assert_eq!(metrics.events_emitted.get(), 250);
        let text = metrics.encode();
        assert!(
            text.contains("thinagent_scanner_events_delivered_total{sink=\"file\"} 250"),
            "{text}"
        );
        assert!(
            text.contains("thinagent_scanner_events_queue_depth{sink=\"file\"} 0"),
            "{text}"
        );
    }

    /// A loopback HTTP server: answers each POST with the next status of
    /// `statuses` (then 200), and hands over every body it got.
    /// A webhook receiver answering `statuses` in turn (then 200); each
    /// request comes out as (status answered, body, header lines).
    #[allow(clippy::type_complexity)]
    fn webhook(statuses: Vec<u16>) -> (String, mpsc::Receiver<(u16, String, Vec<String>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                // One request per connection is enough for ureq's pool:
                // we answer "Connection: close".
                let mut len = 0usize;
                let mut line = String::new();
                let mut headers = Vec::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    headers.push(l.to_owned());
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let status = statuses.next().unwrap_or(200);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if tx
                    .send((status, String::from_utf8(body).unwrap(), headers))
                    .is_err()
                {
                    return;
                }
            }
        });
        (url, rx)
    }

    fn ids_of(body: &str) -> Vec<String> {
        body.lines()
            .map(|l| serde_json::from_str::<Event>(l).unwrap().id)
            .collect()
    }

    #[test]
    fn webhook_headers_come_from_their_file_and_a_bad_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("headers");
        std::fs::write(
            &file,
            "# the SOC's token\nAuthorization: Bearer s3cret\n\nX-Tenant:  vdi-farm-2 \n",
        )
        .unwrap();
        let (url, posts) = webhook(vec![]);
        let sink = EventSink::open(
            &SinkConfig {
                webhook_url: Some(url.clone()),
                webhook_headers_file: Some(file.clone()),
                ..config(dir.path())
            },
            Arc::new(Metrics::new()),
        )
        .unwrap();
        sink.emit(detection(1));
        let (_, _, headers) = posts.recv_timeout(Duration::from_secs(30)).unwrap();
        let lower: Vec<String> = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        assert!(
            lower.contains(&"authorization: bearer s3cret".to_owned()),
            "{headers:?}"
        );
        assert!(
            lower.contains(&"x-tenant: vdi-farm-2".to_owned()),
            "{headers:?}"
        );
        drop(sink);
        for (bad, says) in [
            ("Authorization Bearer x\n", "expected `Name: value`"),
            ("Bad Name: x\n", "not a header name"),
            ("Content-Type: text/plain\n", "set by the scanner"),
        ] {
            std::fs::write(&file, bad).unwrap();
            let e = EventSink::open(
                &SinkConfig {
                    webhook_url: Some(url.clone()),
                    webhook_headers_file: Some(file.clone()),
                    ..config(&dir.path().join("q2"))
                },
                Arc::new(Metrics::new()),
            )
            .err()
            .unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
            assert!(e.to_string().contains("line 1"), "{e}");
        }
    }

    #[test]
    fn a_failing_webhook_is_retried_until_it_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let (url, posts) = webhook(vec![500, 503]);
        let metrics = Arc::new(Metrics::new());
        let sink = EventSink::open(
            &SinkConfig {
                webhook_url: Some(url),
                ..config(dir.path())
            },
            metrics.clone(),
        )
        .unwrap();
        let id = sink.emit(detection(1));
        let wait = Duration::from_secs(30);
        let (s1, b1, _) = posts.recv_timeout(wait).unwrap();
        let (s2, b2, _) = posts.recv_timeout(wait).unwrap();
        let (s3, b3, _) = posts.recv_timeout(wait).unwrap();
        assert_eq!((s1, s2, s3), (500, 503, 200));
        // the same event each time, as JSON lines
        for b in [&b1, &b2, &b3] {
            assert_eq!(ids_of(b), std::slice::from_ref(&id));
            assert!(b.ends_with('\n'));
        }
        wait_for("the delivery counted", || {
            metrics
                .encode()
                .contains("events_delivered_total{sink=\"webhook\"} 1")
        });
        let text = metrics.encode();
        assert!(
            text.contains("thinagent_scanner_events_failed_total{sink=\"webhook\"} 2"),
            "{text}"
        );
        drop(sink);
    }

    #[test]
    fn undelivered_events_survive_a_restart_and_are_sent_once() {
        let dir = tempfile::tempdir().unwrap();
        // A webhook nobody listens on: a port bound and closed again.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/events", l.local_addr().unwrap())
        };
        let metrics = Arc::new(Metrics::new());
        let sink = EventSink::open(
            &SinkConfig {
                webhook_url: Some(dead),
                ..config(dir.path())
            },
            metrics.clone(),
        )
        .unwrap();
        let ids: Vec<String> = (0..5).map(|n| sink.emit(detection(n))).collect();
        wait_for("the events queued and a failed attempt", || {
            metrics
                .encode()
                .contains("events_queue_depth{sink=\"webhook\"} 5")
                && metrics.encode().contains("events_failed_total")
        });
        drop(sink);
        // Restarted with a webhook that answers.
        let (url, posts) = webhook(vec![]);
        let metrics = Arc::new(Metrics::new());
        let sink = EventSink::open(
            &SinkConfig {
                webhook_url: Some(url),
                ..config(dir.path())
            },
            metrics.clone(),
        )
        .unwrap();
        let (status, body, _) = posts.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(status, 200);
        assert_eq!(ids_of(&body), ids, "all five, in order, in one POST");
        let later = sink.emit(detection(9));
        let (_, body, _) = posts.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(ids_of(&body), [later], "nothing sent twice");
        drop(sink);
        assert!(posts.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_drops_new_events_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/events", l.local_addr().unwrap())
        };
        let metrics = Arc::new(Metrics::new());
        let sink = EventSink::open(
            &SinkConfig {
                webhook_url: Some(dead),
                // the queue file's own header (8 KiB of dual header slots)
                // plus room for a few events
                max_queue_bytes: 8192 + 3 * 700,
                ..config(dir.path())
            },
            metrics.clone(),
        )
        .unwrap();
        for n in 0..20 {
            sink.emit(detection(n));
        }
        wait_for("drops counted", || {
            metrics
                .encode()
                .contains("events_dropped_total{sink=\"webhook\",reason=\"queue_full\"}")
        });
        drop(sink);
        let text = metrics.encode();
        let depth: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("thinagent_scanner_events_queue_depth{sink=\"webhook\"} "))
            .unwrap()
            .parse()
            .unwrap();
        let dropped: u64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "thinagent_scanner_events_dropped_total{sink=\"webhook\",reason=\"queue_full\"} ",
                )
            })
            .unwrap()
            .parse()
            .unwrap();
        assert!(depth > 0, "{text}");
        assert_eq!(depth as u64 + dropped, 20, "{text}");
    }

    #[test]
    fn webhook_urls() {
        assert_eq!(check_webhook_url("https://soc.example/hook"), Ok(false));
        assert_eq!(check_webhook_url("http://127.0.0.1:8080/x"), Ok(false));
        assert_eq!(check_webhook_url("http://[::1]:8080/x"), Ok(false));
        assert_eq!(check_webhook_url("http://localhost/x"), Ok(false));
        assert_eq!(check_webhook_url("http://soc.example/x"), Ok(true));
        assert!(
            check_webhook_url("ftp://x/")
                .unwrap_err()
                .contains("http://")
        );
        assert!(check_webhook_url("http://").is_err());
        assert!(check_webhook_url("not a url").is_err());
    }

    #[test]
    fn a_second_sink_on_the_same_queue_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("e.jsonl");
        let c = SinkConfig {
            file: Some(out),
            ..config(dir.path())
        };
        let _a = EventSink::open(&c, Arc::new(Metrics::new())).unwrap();
        let e = EventSink::open(&c, Arc::new(Metrics::new())).unwrap_err();
        assert!(matches!(e, SinkError::Locked { .. }), "{e}");
    }

    #[test]
    fn bad_destinations_fail_the_start_saying_which() {
        let dir = tempfile::tempdir().unwrap();
        let e = EventSink::open(
            &SinkConfig {
                webhook_url: Some("ftp://x".into()),
                ..config(dir.path())
            },
            Arc::new(Metrics::new()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        let e = EventSink::open(
            &SinkConfig {
                file: Some(dir.path().join("missing/e.jsonl")),
                ..config(dir.path())
            },
            Arc::new(Metrics::new()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("events.file"), "{e}");
    }
}
