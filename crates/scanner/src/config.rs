//! Service configuration: the TOML file (`--config`) and its defaults.
//!
//! Every key has a safe default, so an empty file (or none) is a valid
//! configuration: the embedded default listens on vsock port 5317 (when the
//! kernel has AF_VSOCK) and on `tcp://127.0.0.1:5317`, with the built-in
//! signature set. The command line overrides any key (see the binary's
//! `--help`); `crates/scanner/dist/thinagent-scanner.toml` documents them all
//! and is loaded by a test, so it cannot drift from this parser.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thinagent_protocol::Decision;

use crate::listen::ListenUrl;

/// Default port, on vsock and on loopback TCP: the guest's default
/// `hostPort` (`thinagent_guest::params::DEFAULT_HOST_PORT`).
pub const DEFAULT_PORT: u32 = 5317;

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys / wrong types.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the line and the key).
        message: String,
    },
    /// A value is out of its range.
    #[error("config: {key} = {value}: {why}")]
    Invalid {
        /// The key, as written in the file (`limits.max_sessions`).
        key: &'static str,
        /// The offending value.
        value: String,
        /// What is allowed.
        why: String,
    },
    /// Two values set explicitly contradict each other.
    #[error("config: {key} = {value} contradicts {other} = {other_value}: {why}")]
    Conflict {
        /// The key whose value is out of line (`limits.max_read_chunk`).
        key: &'static str,
        /// Its value.
        value: String,
        /// The key it contradicts.
        other: &'static str,
        /// That key's value.
        other_value: String,
        /// The rule, and what to change.
        why: String,
    },
}

/// A policy decision: what a guest gets when the engines cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyDecision {
    /// `AllowNoCache`: the open proceeds, the guest caches nothing.
    Allow,
    /// `Deny` (not cached by the guest).
    Deny,
}

impl PolicyDecision {
    /// The wire decision.
    pub fn decision(self) -> Decision {
        match self {
            Self::Allow => Decision::AllowNoCache,
            Self::Deny => Decision::Deny,
        }
    }
}

impl std::str::FromStr for PolicyDecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            _ => Err(format!("{s:?}: expected allow or deny")),
        }
    }
}

/// Verdicts the service decides by policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Files larger than `limits.max_file_size` (not scanned).
    pub too_large: PolicyDecision,
    /// The scan budget (`limits.request_timeout_ms`) expired.
    pub timeout: PolicyDecision,
    /// Content unreadable, or an engine failed without a detection.
    pub error: PolicyDecision,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            too_large: PolicyDecision::Allow,
            timeout: PolicyDecision::Allow,
            error: PolicyDecision::Allow,
        }
    }
}

/// Limits and timeouts, all with safe defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame accepted from a guest, bytes (4096..=65536).
    pub max_frame_len: u32,
    /// Largest `ReadRequest.length`, bytes (1..=`max_frame_len` - 56).
    /// Unset: derived, see [`Limits::read_chunk`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_read_chunk: Option<u32>,
    /// Most content bytes a guest may send inline with one `FileEvent`
    /// (protocol version 2), 0..=`max_frame_len` - 89; 0 turns inline
    /// content off. Unset: derived, see [`Limits::inline_len`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inline_len: Option<u32>,
    /// Most `ReadRequest`s outstanding per guest (also bounded by the
    /// guest's own `max_reads_in_flight`).
    pub max_reads_in_flight: u32,
    /// Files larger than this are not scanned: they get `policy.too_large`.
    pub max_file_size: u64,
    /// Scan budget per `FileEvent`, milliseconds (sent as `query_timeout_ms`;
    /// when it expires the guest gets `policy.timeout`).
    pub request_timeout_ms: u64,
    /// Close a connection after this much receive silence, milliseconds
    /// (0 = never; else greater than `heartbeat_interval_ms`). Unset:
    /// derived, see [`Limits::idle_timeout`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Heartbeat interval announced to guests, milliseconds (0 = none).
    /// Unset: derived, see [`Limits::heartbeat_interval`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// A connection that sends no `Hello` within this is closed, milliseconds.
    pub handshake_timeout_ms: u64,
    /// Most concurrent sessions (guests that completed `Hello`) over all
    /// listeners; more are refused with `Goodbye(Overloaded)`.
    pub max_sessions: u32,
    /// Most concurrent sessions of one guest, by the identity its transport
    /// gives (vsock CID, certificate subject, loopback address, Unix uid).
    pub max_sessions_per_guest: u32,
    /// Most connections that have not completed `Hello` yet, over all
    /// listeners (a TLS handshake counts as not yet); more are closed at
    /// once. They never use up `max_sessions`.
    pub max_pending_handshakes: u32,
    /// Most connections one peer (CID, address, uid) may have that have
    /// not completed `Hello` yet; more are closed at once.
    pub max_pending_per_peer: u32,
    /// Most `FileEvent`s one guest may have unanswered (`max_events_in_flight`).
    pub max_in_flight_per_guest: u32,
    /// Most content bytes requested from one guest and not yet consumed.
    pub max_bytes_in_flight_per_guest: u64,
    /// Files up to this size are buffered and looked up in the content cache
    /// before scanning; larger ones are streamed into the engines.
    pub scan_buffer_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: 65_536,
            max_read_chunk: None,
            max_inline_len: None,
            max_reads_in_flight: 16,
            max_file_size: 256 * 1024 * 1024,
            request_timeout_ms: 10_000,
            idle_timeout_ms: None,
            heartbeat_interval_ms: None,
            handshake_timeout_ms: 5_000,
            max_sessions: 1024,
            max_sessions_per_guest: 64,
            max_pending_handshakes: 256,
            max_pending_per_peer: 32,
            max_in_flight_per_guest: 64,
            max_bytes_in_flight_per_guest: 4 * 1024 * 1024,
            scan_buffer_max: 1024 * 1024,
        }
    }
}

/// Frame header (24) and `ReadData` header (32) bytes: a read of
/// `max_frame_len - READ_OVERHEAD` bytes fills a frame.
pub const READ_OVERHEAD: u32 = 24 + 32;

/// Frame header (24), version-2 `FileEvent` fixed part (64) and a one-byte
/// path: `max_frame_len - INLINE_OVERHEAD` content bytes fill a frame
/// (protocol §5.2).
pub const INLINE_OVERHEAD: u32 = 24 + 64 + 1;

/// `idle_timeout_ms` when neither it nor `heartbeat_interval_ms` is set.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;

/// `heartbeat_interval_ms` when neither it nor `idle_timeout_ms` is set.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 10_000;

/// The limits some of whose values follow from others: a value left unset
/// is derived from the ones set (in the file or on the command line, after
/// both are merged); only explicit values that contradict each other are an
/// error ([`Config::validate`]).
impl Limits {
    /// `max_read_chunk`, or when unset the largest read that fits a frame
    /// (`max_frame_len` - 56) and the bytes-in-flight budget
    /// (`max_bytes_in_flight_per_guest`).
    pub fn read_chunk(&self) -> u32 {
        self.max_read_chunk.unwrap_or_else(|| {
            let frame = self.max_frame_len.saturating_sub(READ_OVERHEAD);
            let budget = u32::try_from(self.max_bytes_in_flight_per_guest).unwrap_or(u32::MAX);
            frame.min(budget)
        })
    }

    /// `max_inline_len`, or when unset the largest inline content that fits
    /// a frame (`max_frame_len` - 89: 65 447 with the default frame limit).
    pub fn inline_len(&self) -> u32 {
        self.max_inline_len
            .unwrap_or_else(|| self.max_frame_len.saturating_sub(INLINE_OVERHEAD))
    }

    /// `idle_timeout_ms`, or when unset [`DEFAULT_IDLE_TIMEOUT_MS`], raised
    /// to three heartbeat intervals when `heartbeat_interval_ms` is set
    /// longer.
    pub fn idle_timeout(&self) -> u64 {
        self.idle_timeout_ms.unwrap_or_else(|| {
            DEFAULT_IDLE_TIMEOUT_MS.max(self.heartbeat_interval_ms.unwrap_or(0).saturating_mul(3))
        })
    }

    /// `heartbeat_interval_ms`, or when unset
    /// [`DEFAULT_HEARTBEAT_INTERVAL_MS`], lowered to a third of
    /// `idle_timeout_ms` when that is set shorter (not 0).
    pub fn heartbeat_interval(&self) -> u64 {
        self.heartbeat_interval_ms
            .unwrap_or_else(|| match self.idle_timeout_ms {
                Some(idle) if idle > 0 => DEFAULT_HEARTBEAT_INTERVAL_MS.min(idle / 3),
                _ => DEFAULT_HEARTBEAT_INTERVAL_MS,
            })
    }
}

/// Verdict caches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Entries of the per-guest cache by file identity (volume, file id,
    /// size, last write), over all guests; 0 disables it.
    pub identity_entries: u64,
    /// Entries of the cross-guest cache by content SHA-256; 0 disables it.
    pub content_entries: u64,
    /// How long a cached verdict stays valid, seconds.
    pub ttl_secs: u64,
    /// `cache_ttl_secs` sent with scanned verdicts: how long the guest may
    /// cache them itself (0 = not at all).
    pub guest_ttl_secs: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            identity_entries: 1 << 18,
            content_entries: 1 << 16,
            ttl_secs: 600,
            guest_ttl_secs: 300,
        }
    }
}

/// Logging options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter (`info`, `thinagent_scanner=debug`, ...); the
    /// `RUST_LOG` environment variable wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The event sink ([`crate::events`]): detections and guest state changes
/// as JSON lines to a file and/or a webhook, through an on-disk queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Append events (JSON lines) to this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// POST events (JSON lines) to this `http://` or `https://` URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Extra webhook request headers, one `Name: value` per line (e.g.
    /// `Authorization: Bearer ...`): a file, so the credentials stay out of
    /// the config (keep it 0600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_headers_file: Option<PathBuf>,
    /// Directory of the on-disk queues that keep undelivered events across
    /// restarts (required with `file` or `webhook_url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_dir: Option<PathBuf>,
    /// Most bytes each destination's queue holds on disk; past it new
    /// events are dropped and counted.
    pub max_queue_bytes: u64,
    /// A whole webhook request (connect, send, answer), milliseconds.
    pub timeout_ms: u64,
    /// A webhook connect, milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest wait between retries of a failed delivery, milliseconds
    /// (back-off doubles from 500 ms up to it).
    pub retry_max_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            file: None,
            webhook_url: None,
            webhook_headers_file: None,
            queue_dir: None,
            max_queue_bytes: 64 * 1024 * 1024,
            timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            retry_max_ms: 60_000,
        }
    }
}

impl EventsConfig {
    /// The sink's configuration, when a destination is set.
    pub fn sink(&self) -> Option<crate::events::SinkConfig> {
        if self.file.is_none() && self.webhook_url.is_none() {
            return None;
        }
        Some(crate::events::SinkConfig {
            file: self.file.clone(),
            webhook_url: self.webhook_url.clone(),
            webhook_headers_file: self.webhook_headers_file.clone(),
            queue_dir: self.queue_dir.clone()?,
            max_queue_bytes: self.max_queue_bytes,
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            connect_timeout: std::time::Duration::from_millis(self.connect_timeout_ms),
            retry_max: std::time::Duration::from_millis(self.retry_max_ms),
        })
    }
}

/// The quarantine store ([`crate::quarantine`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuarantineConfig {
    /// The store's directory (created 0700 if missing); unset: no store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Most distinct content bytes held; a file that does not fit is not
    /// quarantined (never evicts).
    pub max_bytes: u64,
    /// Most entries holding content.
    pub max_entries: u64,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: 1 << 30,
            max_entries: 10_000,
        }
    }
}

impl QuarantineConfig {
    /// The store's limits.
    pub fn limits(&self) -> crate::quarantine::QuarantineLimits {
        crate::quarantine::QuarantineLimits {
            max_bytes: self.max_bytes,
            max_entries: self.max_entries,
        }
    }
}

/// The whole service configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener URLs: `vsock://any:PORT`, `vsock://CID:PORT`,
    /// `tcp://HOST:PORT`, `unix:///path`. Empty = the embedded default.
    pub listen: Vec<String>,
    /// Directories whose signature files (`.hdb`, `.hsb`, `.yar`, `.yara`)
    /// are loaded on top of the built-in set.
    pub signatures: Vec<PathBuf>,
    /// Load the built-in set (EICAR and friends).
    pub builtin_signatures: bool,
    /// A running clamd to forward content to: `unix:///run/clamav/clamd.ctl`
    /// or `tcp://127.0.0.1:3310`.
    pub clamd: Option<String>,
    /// Timeout of each clamd connect, read and write, milliseconds.
    pub clamd_timeout_ms: u64,
    /// Audit log file (JSON lines), appended to.
    pub audit_log: Option<PathBuf>,
    /// The admin control socket (Unix, created mode 0600): what
    /// `thinagent-diag guests`, `remediate` and `scan-guest` talk to. Unset:
    /// no control socket.
    pub control_socket: Option<PathBuf>,
    /// What the scanner remembers across restarts: the guest policy set at
    /// run time and the guests it has seen (created 0700). Unset: both last
    /// until the scanner stops.
    pub state_dir: Option<PathBuf>,
    /// Prometheus endpoint, loopback TCP only: `tcp://127.0.0.1:9317`.
    pub metrics: Option<String>,
    /// Only these vsock CIDs may connect (empty = any). TCP and Unix peers
    /// are not CIDs and are not filtered by it.
    pub allowed_cids: Vec<u32>,
    /// Certificates of `tls://` listeners and the CA that signs guests'.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Verdict caches.
    pub cache: CacheConfig,
    /// Policy verdicts.
    pub policy: Policy,
    /// The policy sent to guests that take one (protocol §14.6); unset
    /// fields keep each guest's own value. Changed at run time with
    /// `thinagent-diag policy set`.
    pub guest_policy: crate::guest_policy::GuestPolicyConfig,
    /// What the scanner does on its own to a file it denied
    /// ([`crate::remediation`]).
    pub remediation: crate::remediation::RemediationConfig,
    /// Logging.
    pub log: LogConfig,
    /// Event sink.
    pub events: EventsConfig,
    /// Quarantine store.
    pub quarantine: QuarantineConfig,
    /// Scanner farm: the verdict cache shared through Redis
    /// ([`crate::farm`]).
    pub farm: crate::farm::FarmConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            signatures: Vec::new(),
            builtin_signatures: true,
            clamd: None,
            clamd_timeout_ms: 30_000,
            audit_log: None,
            control_socket: None,
            state_dir: None,
            metrics: None,
            allowed_cids: Vec::new(),
            tls: None,
            limits: Limits::default(),
            cache: CacheConfig::default(),
            policy: Policy::default(),
            guest_policy: crate::guest_policy::GuestPolicyConfig::default(),
            remediation: crate::remediation::RemediationConfig::default(),
            log: LogConfig::default(),
            events: EventsConfig::default(),
            quarantine: QuarantineConfig::default(),
            farm: crate::farm::FarmConfig::default(),
        }
    }
}

impl Config {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML file (not yet validated: call
    /// [`validate`](Self::validate) after command-line overrides).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// The listener URLs, parsed; `explicit` is false for the embedded
    /// default (vsock may then be missing without failing the start).
    pub fn listeners(&self) -> Result<(Vec<ListenUrl>, bool), ConfigError> {
        if self.listen.is_empty() {
            return Ok((ListenUrl::defaults(DEFAULT_PORT), false));
        }
        let urls = self
            .listen
            .iter()
            .map(|s| {
                let invalid = |why: String| ConfigError::Invalid {
                    key: "listen",
                    value: s.clone(),
                    why,
                };
                let url = s.parse::<ListenUrl>().map_err(|e| invalid(e.to_string()))?;
                if let Some(why) = url.unauthenticated_beyond_loopback() {
                    return Err(invalid(why.into()));
                }
                if matches!(url, ListenUrl::Tls(_)) && self.tls.is_none() {
                    return Err(invalid(
                        "tls:// needs a [tls] section with cert, key and client_ca \
                         (the CA that signs guest certificates)"
                            .into(),
                    ));
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((urls, true))
    }

    /// The metrics endpoint, parsed and checked to be loopback TCP.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(url) = &self.metrics else {
            return Ok(None);
        };
        let invalid = |why: String| ConfigError::Invalid {
            key: "metrics",
            value: url.clone(),
            why,
        };
        match url
            .parse::<ListenUrl>()
            .map_err(|e| invalid(e.to_string()))?
        {
            ListenUrl::Tcp(addr) if addr.ip().is_loopback() => Ok(Some(addr)),
            _ => Err(invalid(
                "the metrics endpoint must be loopback TCP, e.g. tcp://127.0.0.1:9317".into(),
            )),
        }
    }

    /// Checks every value's range and the URLs; returns the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listeners()?;
        self.metrics_addr()?;
        self.guest_policy.validate()?;
        self.remediation.validate(self.quarantine.dir.is_some())?;
        self.farm.validate()?;
        if let Some(url) = &self.clamd
            && !(url.starts_with("unix://") || url.starts_with("tcp://"))
        {
            return Err(ConfigError::Invalid {
                key: "clamd",
                value: url.clone(),
                why: "expected unix:///path/to/clamd.ctl or tcp://HOST:PORT".into(),
            });
        }
        if !self.builtin_signatures && self.signatures.is_empty() && self.clamd.is_none() {
            return Err(ConfigError::Invalid {
                key: "builtin_signatures",
                value: "false".into(),
                why: "with no signature directory and no clamd nothing would be detected; \
                      give --signatures DIR or --clamd URL, or keep the built-in set"
                    .into(),
            });
        }
        let l = &self.limits;
        let range = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    value: v.to_string(),
                    why: format!("must be in {lo}..={hi}"),
                })
            }
        };
        let ms = u64::from(u32::MAX);
        range("limits.max_frame_len", l.max_frame_len.into(), 4096, 65_536)?;
        range(
            "limits.max_bytes_in_flight_per_guest",
            l.max_bytes_in_flight_per_guest,
            1,
            1 << 32,
        )?;
        let frame_room = l.max_frame_len - READ_OVERHEAD;
        if let Some(chunk) = l.max_read_chunk {
            range(
                "limits.max_read_chunk",
                chunk.into(),
                1,
                u64::from(u32::MAX),
            )?;
            if chunk > frame_room {
                return Err(ConfigError::Conflict {
                    key: "limits.max_read_chunk",
                    value: chunk.to_string(),
                    other: "limits.max_frame_len",
                    other_value: l.max_frame_len.to_string(),
                    why: format!(
                        "a read must fit a frame, so max_read_chunk may be at most \
                         max_frame_len - {READ_OVERHEAD} = {frame_room}; lower max_read_chunk, \
                         raise max_frame_len, or leave max_read_chunk unset to derive it"
                    ),
                });
            }
            if u64::from(chunk) > l.max_bytes_in_flight_per_guest {
                return Err(ConfigError::Conflict {
                    key: "limits.max_read_chunk",
                    value: chunk.to_string(),
                    other: "limits.max_bytes_in_flight_per_guest",
                    other_value: l.max_bytes_in_flight_per_guest.to_string(),
                    why: "one read may not exceed the bytes in flight allowed per guest; lower \
                          max_read_chunk, raise max_bytes_in_flight_per_guest, or leave \
                          max_read_chunk unset to derive it"
                        .into(),
                });
            }
        }
        if let Some(inline) = l.max_inline_len {
            let room = l.max_frame_len - INLINE_OVERHEAD;
            if inline > room {
                return Err(ConfigError::Conflict {
                    key: "limits.max_inline_len",
                    value: inline.to_string(),
                    other: "limits.max_frame_len",
                    other_value: l.max_frame_len.to_string(),
                    why: format!(
                        "a FileEvent with inline content must fit a frame, so max_inline_len \
                         may be at most max_frame_len - {INLINE_OVERHEAD} = {room} (0 turns \
                         inline content off); lower max_inline_len, raise max_frame_len, or \
                         leave max_inline_len unset to derive it"
                    ),
                });
            }
        }
        range(
            "limits.max_reads_in_flight",
            l.max_reads_in_flight.into(),
            1,
            4096,
        )?;
        range("limits.request_timeout_ms", l.request_timeout_ms, 1, ms)?;
        range("limits.handshake_timeout_ms", l.handshake_timeout_ms, 1, ms)?;
        range("limits.idle_timeout_ms", l.idle_timeout(), 0, ms)?;
        range(
            "limits.heartbeat_interval_ms",
            l.heartbeat_interval(),
            0,
            ms,
        )?;
        // Only two explicit values can contradict: an unset one is derived
        // to fit the other.
        if let (Some(idle), Some(beat)) = (l.idle_timeout_ms, l.heartbeat_interval_ms)
            && idle != 0
            && beat != 0
            && idle <= beat
        {
            return Err(ConfigError::Conflict {
                key: "limits.idle_timeout_ms",
                value: idle.to_string(),
                other: "limits.heartbeat_interval_ms",
                other_value: beat.to_string(),
                why: "a connection idle for one heartbeat interval is not dead, so \
                      idle_timeout_ms must be greater than heartbeat_interval_ms (or one of \
                      them 0); raise idle_timeout_ms, lower heartbeat_interval_ms, or leave one \
                      of them unset to derive it"
                    .into(),
            });
        }
        range("limits.max_sessions", l.max_sessions.into(), 1, 1 << 20)?;
        range(
            "limits.max_sessions_per_guest",
            l.max_sessions_per_guest.into(),
            1,
            1 << 20,
        )?;
        range(
            "limits.max_pending_handshakes",
            l.max_pending_handshakes.into(),
            1,
            1 << 20,
        )?;
        // Above max_pending_handshakes it is simply never reached: not an
        // error, so --max-pending-handshakes 16 alone is enough.
        range(
            "limits.max_pending_per_peer",
            l.max_pending_per_peer.into(),
            1,
            1 << 20,
        )?;
        range(
            "limits.max_in_flight_per_guest",
            l.max_in_flight_per_guest.into(),
            1,
            65_536,
        )?;
        range("limits.scan_buffer_max", l.scan_buffer_max, 0, 1 << 30)?;
        range(
            "cache.identity_entries",
            self.cache.identity_entries,
            0,
            1 << 26,
        )?;
        range(
            "cache.content_entries",
            self.cache.content_entries,
            0,
            1 << 26,
        )?;
        range("cache.ttl_secs", self.cache.ttl_secs, 1, 1 << 32)?;
        range("clamd_timeout_ms", self.clamd_timeout_ms, 1, ms)?;
        let ev = &self.events;
        if let Some(url) = &ev.webhook_url
            && let Err(why) = crate::events::check_webhook_url(url)
        {
            return Err(ConfigError::Invalid {
                key: "events.webhook_url",
                value: url.clone(),
                why,
            });
        }
        if let (Some(file), None) = (&ev.webhook_headers_file, &ev.webhook_url) {
            return Err(ConfigError::Invalid {
                key: "events.webhook_headers_file",
                value: file.display().to_string(),
                why: "it is for the webhook: set events.webhook_url too, or unset it".into(),
            });
        }
        if ev.queue_dir.is_none() {
            let set = [
                (
                    "events.file",
                    ev.file.as_ref().map(|p| p.display().to_string()),
                ),
                ("events.webhook_url", ev.webhook_url.clone()),
            ];
            if let Some((key, Some(value))) = set.into_iter().find(|(_, v)| v.is_some()) {
                return Err(ConfigError::Invalid {
                    key,
                    value,
                    why: "events are delivered through an on-disk queue that keeps them across \
                          restarts: set events.queue_dir (--events-queue-dir) to a directory, \
                          e.g. /var/lib/thinagent/events"
                        .into(),
                });
            }
        }
        range(
            "events.max_queue_bytes",
            ev.max_queue_bytes,
            64 * 1024,
            1 << 40,
        )?;
        range("events.timeout_ms", ev.timeout_ms, 1, ms)?;
        range("events.connect_timeout_ms", ev.connect_timeout_ms, 1, ms)?;
        range("events.retry_max_ms", ev.retry_max_ms, 1, ms)?;
        range(
            "quarantine.max_bytes",
            self.quarantine.max_bytes,
            1,
            u64::MAX,
        )?;
        range(
            "quarantine.max_entries",
            self.quarantine.max_entries,
            1,
            1 << 32,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        let (urls, explicit) = c.listeners().unwrap();
        assert!(!explicit);
        assert_eq!(
            urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["vsock://any:5317", "tcp://127.0.0.1:5317"]
        );
    }

    #[test]
    fn policy_parses() {
        let c = Config::from_toml(
            "[policy]\ntoo_large = \"deny\"\n[cache]\nguest_ttl_secs = 0\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.policy.too_large.decision(), Decision::Deny);
        assert_eq!(c.policy.error.decision(), Decision::AllowNoCache);
        assert_eq!(c.cache.guest_ttl_secs, 0);
    }

    #[test]
    fn unknown_key_names_it() {
        let e = Config::from_toml("[limits]\nmax_sesions = 3\n", Path::new("x.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("max_sesions"), "{msg}");
        assert!(msg.contains("x.toml"), "{msg}");
    }

    #[test]
    fn ranges_are_checked() {
        let mut c = Config::default();
        c.limits.max_frame_len = 100;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_frame_len")
        );
        let mut c = Config::default();
        c.limits.idle_timeout_ms = Some(5_000);
        c.limits.heartbeat_interval_ms = Some(10_000);
        assert!(c.validate().unwrap_err().to_string().contains("heartbeat"));
        let mut c = Config::default();
        c.limits.max_read_chunk = Some(8_192);
        c.limits.max_bytes_in_flight_per_guest = 10;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("bytes_in_flight")
        );
        let mut c = Config::default();
        c.limits.max_bytes_in_flight_per_guest = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("bytes_in_flight")
        );
        let c = Config {
            metrics: Some("tcp://0.0.0.0:9000".into()),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("loopback"));
        let c = Config {
            builtin_signatures: false,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            listen: vec!["http://x".into()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("listen"));
    }

    #[test]
    fn events_and_quarantine_parse_and_are_checked() {
        let c = Config::from_toml(
            "[events]\nfile = \"/var/log/e.jsonl\"\nwebhook_url = \"https://soc.example/hook\"\n\
             queue_dir = \"/var/lib/q\"\nretry_max_ms = 1000\n\
             [quarantine]\ndir = \"/var/lib/quarantine\"\nmax_entries = 5\n",
            Path::new("x.toml"),
        )
        .unwrap();
        c.validate().unwrap();
        let sink = c.events.sink().unwrap();
        assert_eq!(sink.retry_max, std::time::Duration::from_secs(1));
        assert_eq!(sink.queue_dir, Path::new("/var/lib/q"));
        assert_eq!(c.quarantine.limits().max_entries, 5);
        assert_eq!(c.quarantine.limits().max_bytes, 1 << 30);
        assert!(Config::default().events.sink().is_none());
        // a destination without a queue directory says what to set
        let c = Config::from_toml("[events]\nfile = \"/tmp/e\"\n", Path::new("x.toml")).unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("events.queue_dir") && msg.contains("--events-queue-dir"),
            "{msg}"
        );
        let c = Config::from_toml(
            "[events]\nwebhook_url = \"ftp://x\"\nqueue_dir = \"/q\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("http://"));
        let mut c = Config::default();
        c.events.max_queue_bytes = 10;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_queue_bytes")
        );
        let mut c = Config::default();
        c.quarantine.max_entries = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_entries")
        );
        let e = Config::from_toml("[quarantine]\nmax_byte = 1\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("max_byte"));
    }

    fn limits(toml: &str) -> Result<Limits, ConfigError> {
        let c = Config::from_toml(&format!("[limits]\n{toml}"), Path::new("x.toml"))?;
        c.validate()?;
        Ok(c.limits)
    }

    #[test]
    fn unset_limits_follow_the_ones_set() {
        // The defaults, derived.
        let l = limits("").unwrap();
        assert_eq!(
            (l.read_chunk(), l.heartbeat_interval(), l.idle_timeout()),
            (65_480, 10_000, 30_000)
        );
        // A smaller frame alone: the read chunk and inline limit follow it.
        let l = limits("max_frame_len = 8192").unwrap();
        assert_eq!(l.read_chunk(), 8192 - 56);
        assert_eq!(l.inline_len(), 8192 - 89);
        assert_eq!(limits("").unwrap().inline_len(), 65_447);
        // 0 turns inline content off; any value up to the frame's room.
        assert_eq!(limits("max_inline_len = 0").unwrap().inline_len(), 0);
        let l = limits("max_frame_len = 8192\nmax_inline_len = 8103").unwrap();
        assert_eq!(l.inline_len(), 8103);
        // A small bytes-in-flight budget alone: reads fit it.
        let l = limits("max_bytes_in_flight_per_guest = 4096").unwrap();
        assert_eq!(l.read_chunk(), 4096);
        // A long heartbeat alone: the idle timeout grows past it.
        let l = limits("heartbeat_interval_ms = 60000").unwrap();
        assert_eq!(
            (l.heartbeat_interval(), l.idle_timeout()),
            (60_000, 180_000)
        );
        // A short idle timeout alone: heartbeats come more often.
        let l = limits("idle_timeout_ms = 6000").unwrap();
        assert_eq!((l.heartbeat_interval(), l.idle_timeout()), (2_000, 6_000));
        // 0 (off) on one side leaves the other at its default.
        let l = limits("idle_timeout_ms = 0").unwrap();
        assert_eq!((l.heartbeat_interval(), l.idle_timeout()), (10_000, 0));
        let l = limits("heartbeat_interval_ms = 0").unwrap();
        assert_eq!((l.heartbeat_interval(), l.idle_timeout()), (0, 30_000));
        // Explicit values that agree are kept as they are.
        let l = limits("max_frame_len = 8192\nmax_read_chunk = 1000").unwrap();
        assert_eq!(l.read_chunk(), 1000);
    }

    #[test]
    fn explicit_contradictions_name_both_settings_and_the_fix() {
        let cases = [
            (
                "max_frame_len = 8192\nmax_read_chunk = 65480",
                [
                    "limits.max_read_chunk = 65480",
                    "limits.max_frame_len = 8192",
                    "8136",
                ],
            ),
            (
                "max_read_chunk = 8192\nmax_bytes_in_flight_per_guest = 4096",
                [
                    "limits.max_read_chunk = 8192",
                    "limits.max_bytes_in_flight_per_guest = 4096",
                    "raise max_bytes_in_flight_per_guest",
                ],
            ),
            (
                "max_frame_len = 8192\nmax_inline_len = 8104",
                [
                    "limits.max_inline_len = 8104",
                    "limits.max_frame_len = 8192",
                    "8103",
                ],
            ),
            (
                "idle_timeout_ms = 5000\nheartbeat_interval_ms = 10000",
                [
                    "limits.idle_timeout_ms = 5000",
                    "limits.heartbeat_interval_ms = 10000",
                    "leave one",
                ],
            ),
        ];
        for (toml, needles) in cases {
            let e = limits(toml).unwrap_err();
            assert!(matches!(e, ConfigError::Conflict { .. }), "{toml}: {e}");
            let msg = e.to_string();
            for n in needles {
                assert!(msg.contains(n), "{toml}: {msg} lacks {n}");
            }
        }
    }
}
