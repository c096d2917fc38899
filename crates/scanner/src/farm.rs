//! Scanner farms: one verdict cache shared by every scanner of a farm
//! through Redis (or Valkey).
//!
//! One scanner serves the guests of one hypervisor host; a VDI farm has
//! dozens of hosts whose near-identical desktops open the same files. With
//! `[farm] redis_url` set, each scanner asks Redis when its own caches
//! miss, and tells Redis what it scanned, so a file is scanned once per
//! farm rather than once per host.
//!
//! What is shared (keys under `farm.key_prefix`, `thinagent:` by default;
//! every entry expires after `farm.ttl_secs`):
//!
//! * `{prefix}c:{content}:{digest}`: the verdict for content whose BLAKE3
//!   (computed by a scanner from bytes it read itself, never sent by a
//!   guest) is `content`, under the signature set whose
//!   [farm digest](crate::signatures::SignatureSet::farm_digest) is
//!   `digest`. A reload with other signatures changes the digest, so every
//!   entry of the old set misses, without a flush.
//! * `{prefix}d:{content}`: a detection, whatever the signatures: a Deny
//!   found on any host is served on every host, under any signature set
//!   (until it expires). A lookup reads `c:` and `d:` with one `MGET`; a
//!   Deny wins.
//! * `{prefix}i:{scope}:{file identity}:{digest}`: the verdict by file
//!   identity (no content pulled at all), only for guests whose transport
//!   identity is unique across the farm ([`shared_scope`]): TLS certificate
//!   subjects. Never vsock CIDs (each host numbers its VMs), loopback TCP
//!   addresses or Unix uids (they name a host or a user of one host).
//!   Identity entries follow the digest for Deny as well.
//!
//! Redis is never on the path of a verdict: the local caches stay in front
//! (a local hit never touches the network), a lookup waits at most
//! `farm.deadline_ms`, writes go through a bounded queue to one writer task
//! (full: dropped and counted). Every error, timeout or refusal is a miss
//! and the scan goes on locally; nothing Redis says or fails to say changes
//! the answer a scan would give, except that a detection shared by another
//! host is served without scanning. Reachability is one state machine
//! ([`Health`]), logged once per change (WARN when lost, INFO when back)
//! and exported as `thinagent_scanner_farm_up`; a probe (`PING`) runs
//! every second, and while Redis is down no lookup or write is tried.
//!
//! **Farm-wide events.** Every event the scanner gives its event sink
//! ([`crate::events`]: detections, remediations, guests connected and
//! gone, scans, restores) is also added to one Redis stream,
//! `{prefix}events` (`XADD ... MAXLEN ~ farm.stream_maxlen`), so one
//! reader sees the whole farm. An entry's fields: `scanner` (this
//! scanner's `farm.scanner_name`, the host name by default), `type` (the
//! event's type) and `event` (the event's JSON, exactly the sink's line).
//!
//! **Farm-wide guests.** Each guest this scanner knows is kept in a hash
//! `{prefix}guest:{scanner}:{guest identity}` (fields `scanner`, `guest`,
//! `updated`: seconds since 1970, `view`: the guest's JSON as the control
//! socket's `guests` answer gives it), which expires
//! `farm.guest_ttl_secs` after its last update, and indexed in the sorted
//! set `{prefix}guests` (member: the hash's key, score: `updated`). It is
//! written when a guest connects and when it goes, when its `Health` state
//! (on-access, fail mode, policy version) changes or it has a detection
//! (at most once per [`GUEST_PUBLISH_GAP`] per guest for these two), and
//! for every guest every [`GUEST_REFRESH`] (so a Redis that was down or
//! restarted is filled again). The snapshots of the first three cases are
//! also stream entries: `type` `guest`, `key` (the hash), `why`
//! (`connected`, `disconnected`, `health`, `detection`) and `guest` (the
//! JSON).
//!
//! Publishing is a write like the verdicts': queued without waiting
//! (full: dropped), skipped while Redis is down, counted under
//! `op="publish"` in `thinagent_scanner_farm_requests_total`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use thinagent_protocol::FileIdentity;
use tokio::sync::{mpsc, watch};

use crate::cache::{CachedVerdict, ContentKey};
use crate::config::ConfigError;
use crate::connection::PeerIdentity;
use crate::events::Event;
use crate::guests::GuestView;
use crate::records::hex;

/// The `[farm]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FarmConfig {
    /// `redis://[USER:PASSWORD@]HOST:PORT[/DB]` or `rediss://...` (TLS).
    /// Unset: no farm, the caches are this scanner's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// A file holding the Redis password (its first line), read at start,
    /// so the secret is not in the configuration; the ACL user goes in the
    /// URL (`redis://thinagent@HOST:PORT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// `rediss://` only: a PEM file of the CA certificates that sign the
    /// Redis server's certificate (a farm's own CA); these alone are then
    /// trusted. Unset: the system's trust store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `rediss://` only, with `key_file`: the PEM certificate (chain) this
    /// scanner shows Redis. A Redis TLS port asks every client for one
    /// unless it is set `tls-auth-clients no`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file` (keep it 0600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Prefix of every key.
    pub key_prefix: String,
    /// How long a shared verdict lives, seconds.
    pub ttl_secs: u64,
    /// How long a lookup may wait for Redis, milliseconds.
    pub deadline_ms: u64,
    /// Share verdicts by file identity for guests with a farm-wide identity
    /// (TLS certificate subjects).
    pub share_identity: bool,
    /// This scanner's name in the farm's events and guest lists; unset:
    /// the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanner_name: Option<String>,
    /// About how many entries the events stream keeps (`MAXLEN ~`).
    pub stream_maxlen: u64,
    /// How long a guest's entry lives after its last update, seconds.
    pub guest_ttl_secs: u64,
}

impl Default for FarmConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_prefix: "thinagent:".into(),
            ttl_secs: 86_400,
            deadline_ms: 20,
            share_identity: true,
            scanner_name: None,
            stream_maxlen: 100_000,
            guest_ttl_secs: 86_400,
        }
    }
}

impl FarmConfig {
    /// Checks the values without connecting (`--check-config`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, why: &str| ConfigError::Invalid {
            key,
            value,
            why: why.into(),
        };
        if let Some(url) = &self.redis_url {
            self.connection_info(None)
                .map_err(|why| invalid("farm.redis_url", redact(url), &why))?;
        } else if self.password_file.is_some() {
            return Err(invalid(
                "farm.password_file",
                display_path(self.password_file.as_ref()),
                "a password without farm.redis_url: set the Redis URL too, or unset the password file",
            ));
        }
        let tls = self
            .redis_url
            .as_deref()
            .is_some_and(|u| u.starts_with("rediss://"));
        for (key, file) in [
            ("farm.ca_file", &self.ca_file),
            ("farm.cert_file", &self.cert_file),
            ("farm.key_file", &self.key_file),
        ] {
            if file.is_some() && !tls {
                return Err(invalid(
                    key,
                    display_path(file.as_ref()),
                    "TLS files without a rediss:// farm.redis_url: a redis:// connection is not encrypted; use rediss://HOST:PORT (Redis's tls-port), or unset the file",
                ));
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "farm.cert_file",
                    display_path(self.cert_file.as_ref()),
                    "a client certificate without farm.key_file: set its private key too",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "farm.key_file",
                    display_path(self.key_file.as_ref()),
                    "a private key without farm.cert_file: set the client certificate too",
                ));
            }
            _ => {}
        }
        if self.key_prefix.len() > 64
            || self
                .key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "farm.key_prefix",
                self.key_prefix.clone(),
                "at most 64 characters, no spaces or control characters (e.g. thinagent: or farm1:)",
            ));
        }
        if !(60..=30 * 86_400).contains(&self.ttl_secs) {
            return Err(invalid(
                "farm.ttl_secs",
                self.ttl_secs.to_string(),
                "expected 60 ..= 2592000 (one minute to 30 days)",
            ));
        }
        if !(1..=5_000).contains(&self.deadline_ms) {
            return Err(invalid(
                "farm.deadline_ms",
                self.deadline_ms.to_string(),
                "expected 1 ..= 5000: every local cache miss waits for Redis up to this long",
            ));
        }
        if let Some(name) = &self.scanner_name
            && !valid_scanner_name(name)
        {
            return Err(invalid(
                "farm.scanner_name",
                name.clone(),
                "1 to 64 letters, digits, '.', '-' or '_' (e.g. esx-07)",
            ));
        }
        if !(1_000..=100_000_000).contains(&self.stream_maxlen) {
            return Err(invalid(
                "farm.stream_maxlen",
                self.stream_maxlen.to_string(),
                "expected 1000 ..= 100000000 entries",
            ));
        }
        if !(300..=30 * 86_400).contains(&self.guest_ttl_secs) {
            return Err(invalid(
                "farm.guest_ttl_secs",
                self.guest_ttl_secs.to_string(),
                "expected 300 ..= 2592000 (five minutes to 30 days)",
            ));
        }
        Ok(())
    }

    /// `scanner_name`, or this host's name made valid (other characters
    /// as `-`, at most 64), or `thinagent-scanner`.
    pub fn scanner_name(&self) -> String {
        if let Some(name) = &self.scanner_name {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_default();
        let name: String = host
            .trim()
            .chars()
            .map(|c| if scanner_name_char(c) { c } else { '-' })
            .take(64)
            .collect();
        if name.is_empty() {
            "thinagent-scanner".into()
        } else {
            name
        }
    }

    /// The parsed URL, with `password` set when given.
    fn connection_info(&self, password: Option<&str>) -> Result<redis::ConnectionInfo, String> {
        let url = self.redis_url.as_deref().unwrap_or_default();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(
                "expected redis://HOST:PORT or rediss://HOST:PORT (TLS), with USER:PASSWORD@ or farm.password_file for an ACL user"
                    .into(),
            );
        }
        let info = url
            .into_connection_info()
            .map_err(|e| format!("not a Redis URL ({e}); e.g. redis://10.0.0.5:6379"))?;
        Ok(match password {
            Some(p) => {
                let redis = info.redis_settings().clone().set_password(p);
                info.set_redis_settings(redis)
            }
            None => info,
        })
    }
}

fn scanner_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Whether `name` may name a scanner: 1 to 64 of `[A-Za-z0-9._-]` (no
/// `:`, so `guest:{scanner}:{identity}` splits at the first one).
pub fn valid_scanner_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(scanner_name_char)
}

fn display_path(p: Option<&PathBuf>) -> String {
    p.map(|p| p.display().to_string()).unwrap_or_default()
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Why a farm could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    /// The password file cannot be read.
    #[error(
        "farm.password_file = {}: cannot read it ({source}); give a readable file holding the Redis password, or put it in the URL",
        path.display()
    )]
    Password {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file of the farm cannot be used.
    #[error("{key} = {}: {why}; give {what}", path.display())]
    TlsFile {
        /// The setting.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
        /// What the file must hold.
        what: &'static str,
    },
    /// The URL or the client settings are refused.
    #[error("farm.redis_url = {url}: {why}")]
    Url {
        /// The URL, password hidden.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// A reload's new connection did not answer `PING`.
    #[error(
        "farm reload: {url} did not answer a connection made with the files read now ({why}); the connection in use stays: check farm.password_file, the certificates and that Redis is up, then reload again"
    )]
    Reconnect {
        /// The URL, password hidden.
        url: String,
        /// What Redis or the network said.
        why: String,
    },
}

/// The files a farm connection uses, read at the start (by
/// [`crate::service::prepare`], so `--check-config` reads what the start
/// uses) and kept for [`Farm::start`], and again at each reload
/// ([`Farm::reconnect`]): a file that goes missing in between does not
/// matter until then.
#[derive(Default)]
pub struct FarmFiles {
    /// The password of `password_file`.
    pub password: Option<String>,
    /// The `rediss://` files ([`read_tls_files`]).
    pub tls: Option<redis::TlsCertificates>,
}

impl std::fmt::Debug for FarmFiles {
    // The password is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FarmFiles")
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl FarmFiles {
    /// Reads the files `config` names.
    pub fn read(config: &FarmConfig) -> Result<Self, FarmError> {
        Ok(Self {
            password: config
                .password_file
                .as_deref()
                .map(read_password)
                .transpose()?,
            tls: read_tls_files(config)?,
        })
    }
}

/// What `rediss://` trusts and shows, read from `ca_file`, `cert_file` and
/// `key_file` (each parsed here, so a wrong file is named at the start and
/// by `--check-config`, not at the first connection); `None` when none is
/// set: the system's trust store, no client certificate.
pub fn read_tls_files(config: &FarmConfig) -> Result<Option<redis::TlsCertificates>, FarmError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;

    if config.ca_file.is_none() && config.cert_file.is_none() {
        return Ok(None);
    }
    let root_cert = config
        .ca_file
        .as_deref()
        .map(|path| {
            read_tls_file(
                "farm.ca_file",
                path,
                "the CA certificates (PEM) that sign Redis's certificate",
                pem_certificates,
            )
        })
        .transpose()?;
    let client_tls = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_tls_file(
                "farm.cert_file",
                cert,
                "this scanner's client certificate (PEM)",
                pem_certificates,
            )?,
            client_key: read_tls_file(
                "farm.key_file",
                key,
                "the PEM private key of farm.cert_file",
                |pem| {
                    PrivateKeyDer::from_pem_slice(pem)
                        .map(drop)
                        .map_err(|e| format!("no usable private key in it ({e})"))
                },
            )?,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// The bytes of the TLS file `path` (setting `key`, which must hold
/// `what`), once `check` accepts them.
fn read_tls_file(
    key: &'static str,
    path: &std::path::Path,
    what: &'static str,
    check: impl FnOnce(&[u8]) -> Result<(), String>,
) -> Result<Vec<u8>, FarmError> {
    let bad = |why| FarmError::TlsFile {
        key,
        path: path.to_owned(),
        why,
        what,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    check(&pem).map_err(bad)?;
    Ok(pem)
}

/// Whether `pem` holds certificates, and only well-formed ones.
fn pem_certificates(pem: &[u8]) -> Result<(), String> {
    crate::tls::pem_blocks_in::<rustls::pki_types::CertificateDer<'static>>(
        pem,
        "certificate",
        "CERTIFICATE",
    )
    .map(drop)
}

/// Reads the password: the file's first line.
pub fn read_password(path: &std::path::Path) -> Result<String, FarmError> {
    let text = std::fs::read_to_string(path).map_err(|source| FarmError::Password {
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned())
}

/// The guest scope shared across a farm, when the transport identity names
/// one guest farm-wide: a TLS certificate subject (signed by the farm's
/// guest CA). A vsock CID names a VM of one host only, and loopback TCP and
/// Unix peers a host or a user of one host: their verdicts by identity stay
/// on that host.
pub fn shared_scope(peer: &PeerIdentity) -> Option<Arc<str>> {
    match peer {
        PeerIdentity::Tls(_) => Some(Arc::from(peer.to_string())),
        PeerIdentity::Vsock(_) | PeerIdentity::Tcp(_) | PeerIdentity::Unix { .. } => None,
    }
}

/// Key of a content verdict under one signature set.
pub fn content_entry_key(prefix: &str, content: &ContentKey, digest: &[u8; 32]) -> String {
    format!("{prefix}c:{}:{}", hex(content), hex(digest))
}

/// Key of a detection, whatever the signature set.
pub fn deny_entry_key(prefix: &str, content: &ContentKey) -> String {
    format!("{prefix}d:{}", hex(content))
}

/// Key of a verdict by file identity in a [shared scope](shared_scope).
pub fn identity_entry_key(
    prefix: &str,
    scope: &str,
    file: &FileIdentity,
    digest: &[u8; 32],
) -> String {
    format!(
        "{prefix}i:{scope}:{:x}:{}:{}:{}:{}",
        file.volume_serial,
        hex(&file.file_id),
        file.size,
        file.last_write_time,
        hex(digest)
    )
}

/// Key of the farm's events stream.
pub fn events_key(prefix: &str) -> String {
    format!("{prefix}events")
}

/// Key of the sorted set indexing every guest hash.
pub fn guests_index_key(prefix: &str) -> String {
    format!("{prefix}guests")
}

/// Key of the hash of guest `identity` on scanner `scanner`.
pub fn guest_key(prefix: &str, scanner: &str, identity: &str) -> String {
    format!("{prefix}guest:{scanner}:{identity}")
}

/// Longest threat name taken from Redis (longer: the entry is ignored).
const MAX_THREAT_LEN: usize = 255;

/// A shared verdict, as stored (JSON: `{"v":"deny","t":"Eicar-Test-Signature","e":"builtin","at":1764800000}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmVerdict {
    /// `allow` or `deny`.
    #[serde(rename = "v")]
    pub decision: FarmDecision,
    /// The threat (Deny only).
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub threat: Option<String>,
    /// The engine that found it.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// When it was scanned, seconds since 1970.
    #[serde(rename = "at")]
    pub scanned_at: u64,
}

/// The decision of a [`FarmVerdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FarmDecision {
    /// Clean.
    Allow,
    /// A detection.
    Deny,
}

impl FarmVerdict {
    /// The shared form of a local verdict, scanned now.
    pub fn of(v: &CachedVerdict) -> Self {
        Self {
            decision: if v.threat.is_some() {
                FarmDecision::Deny
            } else {
                FarmDecision::Allow
            },
            threat: v.threat.as_deref().map(str::to_owned),
            engine: v.engine.map(str::to_owned),
            scanned_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks a stored value; `None` when it is not a verdict
    /// (a Deny without a threat, an over-long name, not JSON).
    pub fn decode(text: &str) -> Option<Self> {
        let v: Self = serde_json::from_str(text).ok()?;
        let ok = match (&v.decision, &v.threat) {
            (FarmDecision::Deny, Some(t)) => !t.is_empty() && t.len() <= MAX_THREAT_LEN,
            (FarmDecision::Allow, None) => true,
            _ => false,
        };
        ok.then_some(v)
    }

    /// The local cache's form, under signature generation `generation`.
    pub fn to_cached(&self, generation: u64) -> CachedVerdict {
        match &self.threat {
            Some(t) if self.decision == FarmDecision::Deny => {
                CachedVerdict::infected(t, engine_name(self.engine.as_deref()), generation)
            }
            _ => CachedVerdict::clean(generation),
        }
    }
}

/// The engine names this scanner knows; another name reads as `farm`.
fn engine_name(name: Option<&str>) -> &'static str {
    match name {
        Some("builtin") => "builtin",
        Some("hash") => "hash",
        Some("yara") => "yara",
        Some("clamd") => "clamd",
        _ => "farm",
    }
}

/// Whether Redis can be reached, as the last requests tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Not asked yet.
    Unknown,
    /// The last request was answered.
    Up,
    /// A request failed (connection error, or [`TIMEOUTS_DOWN`] timeouts
    /// in a row).
    Down,
}

/// A change worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Redis answers (again).
    Up,
    /// Redis stopped answering; why.
    Down(String),
    /// Redis refuses writes (e.g. `OOM` at `maxmemory`); why.
    WritesRefused(String),
    /// Redis takes writes again.
    WritesTaken,
}

/// Timeouts in a row after which Redis counts as down.
pub const TIMEOUTS_DOWN: u32 = 5;

/// The farm's health: reachability and whether writes are taken. Sans-IO:
/// requests' outcomes in, changes to log out.
#[derive(Debug)]
pub struct Health {
    reach: Reach,
    timeouts: u32,
    writes_refused: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            reach: Reach::Unknown,
            timeouts: 0,
            writes_refused: false,
        }
    }
}

impl Health {
    /// The reachability now.
    pub fn reach(&self) -> Reach {
        self.reach
    }

    /// Whether lookups and writes are tried (not while down: the probe
    /// finds out when Redis is back).
    pub fn usable(&self) -> bool {
        self.reach != Reach::Down
    }

    /// A request was answered.
    pub fn answered(&mut self) -> Option<Change> {
        self.timeouts = 0;
        (std::mem::replace(&mut self.reach, Reach::Up) != Reach::Up).then_some(Change::Up)
    }

    /// A request failed to reach Redis (connection refused or lost, TLS or
    /// authentication failure).
    pub fn failed(&mut self, why: String) -> Option<Change> {
        self.timeouts = 0;
        (std::mem::replace(&mut self.reach, Reach::Down) != Reach::Down)
            .then_some(Change::Down(why))
    }

    /// A request got no answer within its deadline.
    pub fn timed_out(&mut self) -> Option<Change> {
        self.timeouts = self.timeouts.saturating_add(1);
        if self.timeouts >= TIMEOUTS_DOWN {
            self.failed(format!(
                "{TIMEOUTS_DOWN} requests in a row got no answer within their deadline"
            ))
        } else {
            None
        }
    }

    /// A write was refused by Redis (`Some(why)`) or taken (`None`).
    pub fn write_result(&mut self, refused: Option<String>) -> Option<Change> {
        match refused {
            Some(why) if !self.writes_refused => {
                self.writes_refused = true;
                Some(Change::WritesRefused(why))
            }
            None if self.writes_refused => {
                self.writes_refused = false;
                Some(Change::WritesTaken)
            }
            _ => None,
        }
    }
}

/// Labels `op` (`content`, `identity`, `put`, `publish`, `ping`) and `result` (`hit`,
/// `miss`, `ok`, `error`, `timeout`, `dropped`, `skipped`; `coalesced`: a
/// content lookup that waited for the same content's lookup or scan).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpResultLabel {
    /// The request.
    pub op: &'static str,
    /// How it ended.
    pub result: &'static str,
}

/// The farm's metrics (registered by [`crate::metrics::Metrics`]).
#[derive(Debug, Clone, Default)]
pub struct FarmMetrics {
    /// `thinagent_scanner_farm_requests_total{op,result}`.
    pub requests: Family<OpResultLabel, Counter>,
    /// `thinagent_scanner_farm_up`: 1 while Redis answers.
    pub up: Gauge,
}

impl FarmMetrics {
    fn count(&self, op: &'static str, result: &'static str) {
        self.count_n(op, result, 1);
    }

    fn count_n(&self, op: &'static str, result: &'static str, n: usize) {
        self.requests
            .get_or_create(&OpResultLabel { op, result })
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }
}

/// Writes waiting for the writer task, at most.
const WRITE_QUEUE: usize = 4096;
/// How long one write (a pipeline of `SET`s) may take.
const WRITE_DEADLINE: Duration = Duration::from_secs(1);
/// How often Redis is probed (`PING`).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Connect (TCP, TLS, AUTH) timeout of the connection manager.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the lookups and the writer share.
#[derive(Debug)]
struct Shared {
    health: Mutex<Health>,
    metrics: FarmMetrics,
    /// The URL, password hidden, for logs.
    url: String,
}

impl Shared {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn usable(&self) -> bool {
        self.health().usable()
    }

    fn report(&self, change: Option<Change>) {
        let Some(change) = change else { return };
        match &change {
            Change::Up => {
                self.metrics.up.set(1);
                tracing::info!(
                    "farm cache: Redis {} answers; sharing verdicts with the farm",
                    self.url
                );
            }
            Change::Down(why) => {
                self.metrics.up.set(0);
                tracing::warn!(
                    "farm cache: Redis {} unreachable ({why}); scanning with the local caches only until it is back",
                    self.url
                );
            }
            Change::WritesRefused(why) => tracing::warn!(
                "farm cache: Redis {} refuses writes ({why}); verdicts are not shared until it takes them (check maxmemory and the ACL user's permissions)",
                self.url
            ),
            Change::WritesTaken => {
                tracing::info!("farm cache: Redis {} takes writes again", self.url);
            }
        }
    }

    /// Feeds a request's outcome to the health machine; counts it.
    fn outcome<T>(
        &self,
        op: &'static str,
        r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        match r {
            Ok(Ok(v)) => {
                let c = self.health().answered();
                self.report(c);
                Some(v)
            }
            Ok(Err(e)) => {
                self.metrics.count(op, "error");
                let c = if unreachable(&e) {
                    self.health().failed(e.to_string())
                } else {
                    // Redis answered, with an error: it is up.
                    let (up, refused) = {
                        let mut h = self.health();
                        let up = h.answered();
                        let refused = if op == "put" || op == "publish" {
                            h.write_result(Some(e.to_string()))
                        } else {
                            tracing::debug!("farm cache: {op}: {e}");
                            None
                        };
                        (up, refused)
                    };
                    self.report(up);
                    refused
                };
                self.report(c);
                None
            }
            Err(_) => {
                self.metrics.count(op, "timeout");
                let c = self.health().timed_out();
                self.report(c);
                None
            }
        }
    }
}

/// Whether `e` says Redis cannot be reached (rather than that it answered
/// with an error).
fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// The connection to the farm's Redis: lookups with a deadline, writes
/// fire-and-forget. Cheap to share (`Arc`).
pub struct Farm {
    /// The connection; a reload of the farm's files ([`Farm::reconnect`])
    /// puts a new one here, and the old one closes once no request uses it.
    conn: Arc<ArcSwap<ConnectionManager>>,
    /// The settings it was started with (a reload reads their files again).
    config: FarmConfig,
    prefix: String,
    ttl_secs: u64,
    deadline: Duration,
    share_identity: bool,
    scanner: String,
    guest_ttl_secs: u64,
    writes: mpsc::Sender<Batch>,
    shared: Arc<Shared>,
    /// Contents this scanner is looking up or scanning now
    /// ([`Farm::content_flight`]).
    inflight: Arc<Mutex<HashMap<ContentKey, watch::Receiver<()>>>>,
}

/// What a local content-cache miss does in a farm ([`Farm::content_flight`]).
#[derive(Debug)]
pub enum Flight {
    /// The first: look the content up in Redis, scan it on a miss, put the
    /// verdict in the local cache, then drop the guard.
    Lead(FlightGuard),
    /// Another query of this scanner is at it: [`Follower::wait`], then
    /// read the local cache.
    Follow(Follower),
}

/// Held by the query that looks up and scans a content; dropping it (the
/// verdict is in the local cache, or the query is gone) wakes the
/// followers.
#[derive(Debug)]
pub struct FlightGuard {
    key: ContentKey,
    inflight: Arc<Mutex<HashMap<ContentKey, watch::Receiver<()>>>>,
    _done: watch::Sender<()>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Waits for a [`FlightGuard`] of the same content.
#[derive(Debug)]
pub struct Follower {
    done: watch::Receiver<()>,
    limit: Duration,
}

impl Follower {
    /// Until the leader is done, at most the farm deadline plus
    /// [`FOLLOW_SLACK`].
    pub async fn wait(mut self) {
        let _ = tokio::time::timeout(self.limit, self.done.changed()).await;
    }
}

/// How much longer than the farm deadline a follower waits for its leader
/// (its scan), before it looks up and scans by itself.
pub const FOLLOW_SLACK: Duration = Duration::from_secs(2);

/// One write of the queue.
#[derive(Debug)]
enum Op {
    /// `SET key value EX farm.ttl_secs`.
    Set(String, String),
    /// `XADD {prefix}events MAXLEN ~ farm.stream_maxlen * field value ...`.
    Event(Vec<(&'static str, String)>),
    /// A guest's hash: `HSET key field value ...`, `EXPIRE key
    /// farm.guest_ttl_secs`, `ZADD {prefix}guests updated key`.
    Guest {
        key: String,
        updated: u64,
        fields: Vec<(&'static str, String)>,
    },
    /// `ZREMRANGEBYSCORE {prefix}guests -inf before`: the index's members
    /// whose hashes expired.
    TrimGuests { before: u64 },
}

/// Writes sent as one pipeline, counted under `op` (`put`, `publish`).
#[derive(Debug)]
struct Batch {
    op: &'static str,
    ops: Vec<Op>,
}

/// What the writer task needs to know.
#[derive(Debug)]
struct WriterConfig {
    ttl_secs: u64,
    guest_ttl_secs: u64,
    events_key: String,
    guests_index_key: String,
    stream_maxlen: u64,
}

/// Seconds since 1970.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Most guest snapshots in one pipeline of a refresh.
const REFRESH_BATCH: usize = 100;

/// How often every guest's hash is written again.
pub const GUEST_REFRESH: Duration = Duration::from_secs(60);

/// Least time between two snapshots of one guest for a `Health` change or
/// a detection (connects and disconnects are always published).
pub const GUEST_PUBLISH_GAP: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Farm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Farm")
            .field("url", &self.shared.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Farm {
    /// Sets up the farm `config` names (`None` without `redis_url`) with
    /// `files`, what [`FarmFiles::read`] read of it. Does not wait for
    /// Redis: the connection is made in the background, and until it is,
    /// lookups miss. Must be called inside a tokio runtime.
    pub fn start(
        config: &FarmConfig,
        files: FarmFiles,
        metrics: FarmMetrics,
    ) -> Result<Option<Arc<Self>>, FarmError> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        let shown = redact(url);
        let conn = Arc::new(ArcSwap::from_pointee(connection(config, files)?));
        let deadline = Duration::from_millis(config.deadline_ms);
        metrics.up.set(0);
        let shared = Arc::new(Shared {
            health: Mutex::new(Health::default()),
            metrics,
            url: shown,
        });
        let (writes, rx) = mpsc::channel(WRITE_QUEUE);
        let writer_config = WriterConfig {
            ttl_secs: config.ttl_secs,
            guest_ttl_secs: config.guest_ttl_secs,
            events_key: events_key(&config.key_prefix),
            guests_index_key: guests_index_key(&config.key_prefix),
            stream_maxlen: config.stream_maxlen,
        };
        tokio::spawn(writer(
            Arc::clone(&conn),
            Arc::clone(&shared),
            rx,
            writer_config,
        ));
        Ok(Some(Arc::new(Self {
            conn,
            config: config.clone(),
            prefix: config.key_prefix.clone(),
            ttl_secs: config.ttl_secs,
            deadline,
            share_identity: config.share_identity,
            scanner: config.scanner_name(),
            guest_ttl_secs: config.guest_ttl_secs,
            writes,
            shared,
            inflight: Arc::default(),
        })))
    }

    /// The settings it was started with: [`FarmFiles::read`] of them is
    /// what [`reconnect`](Self::reconnect) takes.
    pub fn config(&self) -> &FarmConfig {
        &self.config
    }

    /// Connects again with `files`, the farm's password and TLS files read
    /// anew (a rotated password, a renewed certificate). Only a connection
    /// that answers `PING` replaces the one in use (a wrong new password
    /// never cuts a working farm off, and the first lookup after the
    /// reload does not wait for a connection to be made): lookups and
    /// writes from then on use it, those under way finish on the old one,
    /// which then closes.
    pub async fn reconnect(&self, files: FarmFiles) -> Result<(), FarmError> {
        let mut conn = connection(&self.config, files)?;
        let ping = tokio::time::timeout(
            CONNECT_TIMEOUT + WRITE_DEADLINE,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        let why = match ping {
            Ok(Ok(_)) => {
                self.conn.store(Arc::new(conn));
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", CONNECT_TIMEOUT + WRITE_DEADLINE),
        };
        Err(FarmError::Reconnect {
            url: self.shared.url.clone(),
            why,
        })
    }

    /// Single flight per content and scanner, for local content-cache
    /// misses: in a logon storm many desktops of one host open the same
    /// file at once, and each would otherwise wait for Redis, miss (the
    /// verdict is not there yet) and scan. The first leads; the others
    /// wait for it and find its verdict in the local cache.
    pub fn content_flight(&self, key: &ContentKey) -> Flight {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = inflight.get(key) {
            self.shared.metrics.count("content", "coalesced");
            return Flight::Follow(Follower {
                done: done.clone(),
                limit: self.deadline + FOLLOW_SLACK,
            });
        }
        let (tx, rx) = watch::channel(());
        inflight.insert(*key, rx);
        Flight::Lead(FlightGuard {
            key: *key,
            inflight: Arc::clone(&self.inflight),
            _done: tx,
        })
    }

    /// This scanner's name in the farm (`farm.scanner_name`).
    pub fn scanner_name(&self) -> &str {
        &self.scanner
    }

    /// Whether identity verdicts are shared (`farm.share_identity`).
    pub fn shares_identity(&self) -> bool {
        self.share_identity
    }

    /// Entry lifetime, seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Reachability now.
    pub fn reach(&self) -> Reach {
        self.shared.health().reach()
    }

    /// `MGET keys` within the deadline; `None` on any failure (counted
    /// under `op`).
    async fn mget(&self, op: &'static str, keys: &[String]) -> Option<Vec<Option<String>>> {
        if !self.shared.usable() {
            self.shared.metrics.count(op, "skipped");
            return None;
        }
        let mut conn = ConnectionManager::clone(&self.conn.load());
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        let r = tokio::time::timeout(
            self.deadline,
            cmd.query_async::<Vec<Option<String>>>(&mut conn),
        )
        .await;
        self.shared.outcome(op, r)
    }

    /// The shared verdict for content `key` under the set `digest`: a
    /// detection under any set wins, else the verdict under this one.
    pub async fn content(&self, key: &ContentKey, digest: &[u8; 32]) -> Option<FarmVerdict> {
        let keys = [
            deny_entry_key(&self.prefix, key),
            content_entry_key(&self.prefix, key, digest),
        ];
        let values = self.mget("content", &keys).await?;
        let mut values = values
            .into_iter()
            .map(|v| v.as_deref().and_then(FarmVerdict::decode));
        let deny = values
            .next()
            .flatten()
            .filter(|v| v.decision == FarmDecision::Deny);
        let found = deny.or_else(|| values.next().flatten());
        self.shared
            .metrics
            .count("content", if found.is_some() { "hit" } else { "miss" });
        found
    }

    /// The shared verdict for `file` in the shared `scope` under `digest`.
    pub async fn identity(
        &self,
        scope: &str,
        file: &FileIdentity,
        digest: &[u8; 32],
    ) -> Option<FarmVerdict> {
        let keys = [identity_entry_key(&self.prefix, scope, file, digest)];
        let values = self.mget("identity", &keys).await?;
        let found = values
            .into_iter()
            .next()
            .flatten()
            .as_deref()
            .and_then(FarmVerdict::decode);
        self.shared
            .metrics
            .count("identity", if found.is_some() { "hit" } else { "miss" });
        found
    }

    /// Shares a verdict the engines gave for content `key` (a detection
    /// also under `d:`). Never waits.
    pub fn put_content(&self, key: &ContentKey, digest: &[u8; 32], v: &CachedVerdict) {
        let value = FarmVerdict::of(v).encode();
        let mut entries = vec![Op::Set(
            content_entry_key(&self.prefix, key, digest),
            value.clone(),
        )];
        if v.threat.is_some() {
            entries.push(Op::Set(deny_entry_key(&self.prefix, key), value));
        }
        self.enqueue("put", entries);
    }

    /// Shares a verdict for `file` in the shared `scope`. Never waits.
    pub fn put_identity(
        &self,
        scope: &str,
        file: &FileIdentity,
        digest: &[u8; 32],
        v: &CachedVerdict,
    ) {
        let key = identity_entry_key(&self.prefix, scope, file, digest);
        self.enqueue("put", vec![Op::Set(key, FarmVerdict::of(v).encode())]);
    }

    /// Adds `event` (what the event sink got) to the farm's events stream.
    /// Never waits.
    pub fn publish_event(&self, event: &Event) {
        let json = match serde_json::to_string(event) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "farm: cannot encode an event");
                return;
            }
        };
        let fields = vec![
            ("scanner", self.scanner.clone()),
            ("type", event.body.kind().to_owned()),
            ("event", json),
        ];
        self.enqueue("publish", vec![Op::Event(fields)]);
    }

    /// Writes the guest `view`'s hash and, with `why` (`connected`,
    /// `disconnected`, `health`, `detection`), a `guest` entry of the
    /// events stream. Never waits.
    pub fn publish_guest(&self, view: &GuestView, why: Option<&'static str>) {
        let mut ops = Vec::with_capacity(2);
        let Some(json) = self.guest_op(view, &mut ops) else {
            return;
        };
        if let Some(why) = why {
            let key = guest_key(&self.prefix, &self.scanner, &view.identity);
            ops.push(Op::Event(vec![
                ("scanner", self.scanner.clone()),
                ("type", "guest".to_owned()),
                ("key", key),
                ("why", why.to_owned()),
                ("guest", json),
            ]));
        }
        self.enqueue("publish", ops);
    }

    /// Writes every guest's hash again (a Redis that lost them gets them
    /// back) and drops the index members of expired ones. Never waits.
    pub fn refresh_guests(&self, views: &[GuestView]) {
        let before = now_secs().saturating_sub(self.guest_ttl_secs);
        let mut ops = vec![Op::TrimGuests { before }];
        for view in views {
            let _ = self.guest_op(view, &mut ops);
            if ops.len() >= REFRESH_BATCH {
                self.enqueue("publish", std::mem::take(&mut ops));
            }
        }
        if !ops.is_empty() {
            self.enqueue("publish", ops);
        }
    }

    /// Pushes the hash write of `view` to `ops`; returns its JSON.
    fn guest_op(&self, view: &GuestView, ops: &mut Vec<Op>) -> Option<String> {
        let json = match serde_json::to_string(view) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "farm: cannot encode a guest");
                return None;
            }
        };
        let updated = now_secs();
        ops.push(Op::Guest {
            key: guest_key(&self.prefix, &self.scanner, &view.identity),
            updated,
            fields: vec![
                ("scanner", self.scanner.clone()),
                ("guest", view.identity.clone()),
                ("updated", updated.to_string()),
                ("view", json.clone()),
            ],
        });
        Some(json)
    }

    fn enqueue(&self, op: &'static str, ops: Vec<Op>) {
        if !self.shared.usable() {
            self.shared.metrics.count(op, "skipped");
            return;
        }
        if self.writes.try_send(Batch { op, ops }).is_err() {
            self.shared.metrics.count(op, "dropped");
        }
    }
}

/// The pipeline of `ops`.
fn pipeline(ops: &[Op], c: &WriterConfig) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for op in ops {
        match op {
            Op::Set(key, value) => {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("EX")
                    .arg(c.ttl_secs);
            }
            Op::Event(fields) => {
                let cmd = pipe
                    .cmd("XADD")
                    .arg(&c.events_key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(c.stream_maxlen)
                    .arg("*");
                for (field, value) in fields {
                    cmd.arg(*field).arg(value);
                }
            }
            Op::Guest {
                key,
                updated,
                fields,
            } => {
                let cmd = pipe.cmd("HSET").arg(key);
                for (field, value) in fields {
                    cmd.arg(*field).arg(value);
                }
                pipe.cmd("EXPIRE").arg(key).arg(c.guest_ttl_secs);
                pipe.cmd("ZADD")
                    .arg(&c.guests_index_key)
                    .arg(*updated)
                    .arg(key);
            }
            Op::TrimGuests { before } => {
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(&c.guests_index_key)
                    .arg("-inf")
                    .arg(*before);
            }
        }
    }
    pipe
}

/// Most queued batches sent as one pipeline.
/// A connection to `config`'s Redis with `files` (lazy: made at the first
/// request, remade after a failure).
fn connection(config: &FarmConfig, files: FarmFiles) -> Result<ConnectionManager, FarmError> {
    let url = config.redis_url.as_deref().unwrap_or_default();
    let url_error = |why: String| FarmError::Url {
        url: redact(url),
        why,
    };
    let FarmFiles { password, tls } = files;
    let info = config
        .connection_info(password.as_deref())
        .map_err(url_error)?;
    let client = match tls {
        Some(tls) => redis::Client::build_with_tls(info, tls),
        None => redis::Client::open(info),
    }
    .map_err(|e| url_error(e.to_string()))?;
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(WRITE_DEADLINE))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, manager).map_err(|e| url_error(e.to_string()))
}

const PIPELINE_BATCHES: usize = 64;

/// The writer task: the queued batches in pipelines (up to
/// [`PIPELINE_BATCHES`] of one op each: a storm's many verdicts cost few
/// round trips), and a `PING` every [`PROBE_INTERVAL`]. Ends when the
/// [`Farm`] is dropped.
async fn writer(
    conns: Arc<ArcSwap<ConnectionManager>>,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Batch>,
    config: WriterConfig,
) {
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(first) = batch else { return };
                let (op, mut ops, mut n) = (first.op, first.ops, 1);
                let mut other = None;
                while n < PIPELINE_BATCHES {
                    match rx.try_recv() {
                        Ok(b) if b.op == op => {
                            ops.extend(b.ops);
                            n += 1;
                        }
                        Ok(b) => {
                            other = Some(b);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // The newest connection: a reload may have replaced it.
                let mut conn = ConnectionManager::clone(&conns.load());
                write(&mut conn, &shared, &config, op, &ops, n).await;
                if let Some(b) = other {
                    write(&mut conn, &shared, &config, b.op, &b.ops, 1).await;
                }
            }
            _ = probe.tick() => {
                // Also while up: a Redis that died is noticed (and the
                // connection remade) without waiting for a lookup.
                let mut conn = ConnectionManager::clone(&conns.load());
                let r = tokio::time::timeout(
                    WRITE_DEADLINE,
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await;
                let _ = shared.outcome("ping", r);
            }
        }
    }
}

/// Sends `ops` (`batches` queued batches of `op`) as one pipeline.
async fn write(
    conn: &mut ConnectionManager,
    shared: &Shared,
    config: &WriterConfig,
    op: &'static str,
    ops: &[Op],
    batches: usize,
) {
    if !shared.usable() {
        shared.metrics.count_n(op, "skipped", batches);
        return;
    }
    let pipe = pipeline(ops, config);
    let r = tokio::time::timeout(WRITE_DEADLINE, pipe.query_async::<Vec<redis::Value>>(conn))
        .await
        // A refused SET (OOM, NOPERM) is an error reply inside the
        // pipeline's answer, not an error of the whole request.
        .map(|r| {
            r.and_then(|replies| {
                replies.into_iter().try_for_each(|reply| match reply {
                    redis::Value::ServerError(e) => Err(e.into()),
                    _ => Ok(()),
                })
            })
        });
    if shared.outcome(op, r).is_some() {
        shared.metrics.count_n(op, "ok", batches);
        let c = shared.health().write_result(None);
        shared.report(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> FileIdentity {
        FileIdentity {
            volume_serial: 0xabc,
            file_id: [7; 16],
            size: 68,
            last_write_time: 133,
        }
    }

    #[test]
    fn keys_name_content_set_and_identity() {
        let (content, digest) = ([0x11; 32], [0x22; 32]);
        let c = content_entry_key("t:", &content, &digest);
        assert_eq!(c, format!("t:c:{}:{}", "11".repeat(32), "22".repeat(32)));
        assert_eq!(
            deny_entry_key("t:", &content),
            format!("t:d:{}", "11".repeat(32))
        );
        assert_ne!(c, content_entry_key("t:", &content, &[0x23; 32]));
        let i = identity_entry_key("t:", "tls:CN=vm-1", &file(), &digest);
        assert_eq!(
            i,
            format!(
                "t:i:tls:CN=vm-1:abc:{}:68:133:{}",
                "07".repeat(16),
                "22".repeat(32)
            )
        );
        let mut other = file();
        other.last_write_time += 1;
        assert_ne!(i, identity_entry_key("t:", "tls:CN=vm-1", &other, &digest));
    }

    #[test]
    fn the_default_scanner_name_is_a_valid_host_name() {
        let name = FarmConfig::default().scanner_name();
        assert!(valid_scanner_name(&name), "{name:?}");
        let named = FarmConfig {
            scanner_name: Some("esx-07".into()),
            ..FarmConfig::default()
        };
        assert_eq!(named.scanner_name(), "esx-07");
        assert_eq!(
            guest_key("t:", "esx-07", "tls:CN=vm-1"),
            "t:guest:esx-07:tls:CN=vm-1"
        );
        assert_eq!(events_key("t:"), "t:events");
        assert_eq!(guests_index_key("t:"), "t:guests");
    }

    #[test]
    fn a_guest_snapshot_is_a_hash_its_expiry_and_its_index_entry() {
        let c = WriterConfig {
            ttl_secs: 100,
            guest_ttl_secs: 600,
            events_key: "t:events".into(),
            guests_index_key: "t:guests".into(),
            stream_maxlen: 5000,
        };
        let ops = [
            Op::Guest {
                key: "t:guest:s:g".into(),
                updated: 42,
                fields: vec![("scanner", "s".into()), ("view", "{}".into())],
            },
            Op::Event(vec![("scanner", "s".into()), ("type", "detection".into())]),
            Op::TrimGuests { before: 7 },
        ];
        let pipe = pipeline(&ops, &c);
        let text = String::from_utf8_lossy(&pipe.get_packed_pipeline()).replace("\r\n", " ");
        for expected in [
            "HSET $11 t:guest:s:g $7 scanner $1 s $4 view $2 {}",
            "EXPIRE $11 t:guest:s:g $3 600",
            "ZADD $8 t:guests $2 42 $11 t:guest:s:g",
            "XADD $8 t:events $6 MAXLEN $1 ~ $4 5000 $1 * $7 scanner $1 s $4 type $9 detection",
            "ZREMRANGEBYSCORE $8 t:guests $4 -inf $1 7",
        ] {
            assert!(text.contains(expected), "{expected} not in {text}");
        }
    }

    /// One lead per content: the others follow until the guard is dropped
    /// (verdict cached, or the query gone); then the next one leads.
    #[tokio::test]
    async fn one_lookup_of_a_content_leads_the_others_follow() {
        // Nothing listens there: the farm is set up lazily, never asked.
        let config = FarmConfig {
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..FarmConfig::default()
        };
        let farm = Farm::start(&config, FarmFiles::default(), FarmMetrics::default())
            .unwrap()
            .unwrap();
        let (a, b) = ([1; 32], [2; 32]);
        let Flight::Lead(guard) = farm.content_flight(&a) else {
            panic!("the first leads")
        };
        let Flight::Follow(follower) = farm.content_flight(&a) else {
            panic!("the second follows")
        };
        assert!(
            matches!(farm.content_flight(&b), Flight::Lead(_)),
            "another content leads"
        );
        assert_eq!(
            follower.limit,
            Duration::from_millis(config.deadline_ms) + FOLLOW_SLACK
        );
        assert!(
            matches!(follower.done.has_changed(), Ok(false)),
            "still at it"
        );
        drop(guard);
        assert!(
            follower.done.has_changed().is_err(),
            "woken: the leader is done"
        );
        follower.wait().await;
        assert!(
            matches!(farm.content_flight(&a), Flight::Lead(_)),
            "the next one leads"
        );
        let coalesced = farm
            .shared
            .metrics
            .requests
            .get_or_create(&OpResultLabel {
                op: "content",
                result: "coalesced",
            })
            .get();
        assert_eq!(coalesced, 1);
    }

    #[test]
    fn only_farm_wide_identities_are_shared() {
        use std::net::{IpAddr, Ipv4Addr};
        assert_eq!(
            shared_scope(&PeerIdentity::Tls(Arc::from("CN=vm-1"))).as_deref(),
            Some("tls:CN=vm-1")
        );
        assert_eq!(shared_scope(&PeerIdentity::Vsock(3)), None);
        assert_eq!(
            shared_scope(&PeerIdentity::Tcp(IpAddr::V4(Ipv4Addr::LOCALHOST))),
            None
        );
        assert_eq!(
            shared_scope(&PeerIdentity::Unix {
                listener: "/run/x".into(),
                uid: Some(0)
            }),
            None
        );
    }

    #[test]
    fn verdicts_round_trip_and_bad_values_are_misses() {
        let deny = CachedVerdict::infected("Eicar-Test-Signature", "builtin", 4);
        let v = FarmVerdict::of(&deny);
        let text = v.encode();
        assert!(text.starts_with(r#"{"v":"deny","t":"Eicar-Test-Signature","e":"builtin","at":"#));
        let back = FarmVerdict::decode(&text).unwrap();
        assert_eq!(back, v);
        assert_eq!(
            back.to_cached(9),
            CachedVerdict::infected("Eicar-Test-Signature", "builtin", 9)
        );
        let clean = FarmVerdict::of(&CachedVerdict::clean(1));
        assert_eq!(
            FarmVerdict::decode(&clean.encode()).unwrap().to_cached(2),
            CachedVerdict::clean(2)
        );
        for bad in [
            r#"{"v":"deny","at":1}"#,
            r#"{"v":"deny","t":"","at":1}"#,
            r#"{"v":"allow","t":"X","at":1}"#,
            r#"{"v":"maybe","at":1}"#,
            "not json",
        ] {
            assert_eq!(FarmVerdict::decode(bad), None, "{bad}");
        }
        let long = format!(r#"{{"v":"deny","t":"{}","at":1}}"#, "x".repeat(256));
        assert_eq!(FarmVerdict::decode(&long), None);
        let unknown_engine = r#"{"v":"deny","t":"X","e":"other","at":1}"#;
        assert_eq!(
            FarmVerdict::decode(unknown_engine)
                .unwrap()
                .to_cached(0)
                .engine,
            Some("farm")
        );
    }

    #[test]
    fn health_changes_are_reported_once() {
        let mut h = Health::default();
        assert_eq!(h.reach(), Reach::Unknown);
        assert!(h.usable());
        assert_eq!(h.answered(), Some(Change::Up));
        assert_eq!(h.answered(), None);
        for _ in 1..TIMEOUTS_DOWN {
            assert_eq!(h.timed_out(), None);
        }
        assert!(matches!(h.timed_out(), Some(Change::Down(_))));
        assert!(!h.usable());
        assert_eq!(h.timed_out(), None);
        assert_eq!(h.failed("refused".into()), None, "already down");
        assert_eq!(h.answered(), Some(Change::Up));
        // A timeout streak is broken by an answer.
        for _ in 1..TIMEOUTS_DOWN {
            h.timed_out();
        }
        h.answered();
        assert_eq!(h.timed_out(), None);
        assert_eq!(
            h.failed("refused".into()),
            Some(Change::Down("refused".into()))
        );
        let mut w = Health::default();
        assert_eq!(
            w.write_result(Some("OOM".into())),
            Some(Change::WritesRefused("OOM".into()))
        );
        assert_eq!(w.write_result(Some("OOM".into())), None);
        assert_eq!(w.write_result(None), Some(Change::WritesTaken));
        assert_eq!(w.write_result(None), None);
        // Unknown -> Down at once on a connection failure.
        let mut d = Health::default();
        assert!(matches!(d.failed("x".into()), Some(Change::Down(_))));
    }

    #[test]
    fn config_is_checked_without_connecting() {
        let ok = FarmConfig {
            redis_url: Some("redis://user:secret@10.0.0.5:6379/2".into()),
            ..FarmConfig::default()
        };
        ok.validate().unwrap();
        FarmConfig {
            redis_url: Some("rediss://redis.example:6380".into()),
            ..FarmConfig::default()
        }
        .validate()
        .unwrap();
        let error = |c: FarmConfig| c.validate().unwrap_err().to_string();
        let e = error(FarmConfig {
            redis_url: Some("http://pass:secret@x:1".into()),
            ..FarmConfig::default()
        });
        assert!(
            e.contains("farm.redis_url") && e.contains("redis://"),
            "{e}"
        );
        assert!(!e.contains("secret"), "password shown: {e}");
        for (bad, key) in [
            (
                FarmConfig {
                    deadline_ms: 0,
                    ..ok.clone()
                },
                "farm.deadline_ms",
            ),
            (
                FarmConfig {
                    ttl_secs: 1,
                    ..ok.clone()
                },
                "farm.ttl_secs",
            ),
            (
                FarmConfig {
                    key_prefix: "a b".into(),
                    ..ok.clone()
                },
                "farm.key_prefix",
            ),
            (
                FarmConfig {
                    password_file: Some("/p".into()),
                    ..FarmConfig::default()
                },
                "farm.redis_url",
            ),
        ] {
            let e = error(bad);
            assert!(e.contains(key), "{key}: {e}");
        }
        for (bad, key) in [
            (
                FarmConfig {
                    scanner_name: Some("esx 07".into()),
                    ..ok.clone()
                },
                "farm.scanner_name",
            ),
            (
                FarmConfig {
                    scanner_name: Some("a:b".into()),
                    ..ok.clone()
                },
                "farm.scanner_name",
            ),
            (
                FarmConfig {
                    stream_maxlen: 10,
                    ..ok.clone()
                },
                "farm.stream_maxlen",
            ),
            (
                FarmConfig {
                    guest_ttl_secs: 5,
                    ..ok.clone()
                },
                "farm.guest_ttl_secs",
            ),
        ] {
            let e = error(bad);
            assert!(e.contains(key), "{key}: {e}");
        }
        FarmConfig {
            scanner_name: Some("esx-07.farm_1".into()),
            ..ok.clone()
        }
        .validate()
        .unwrap();
        assert_eq!(redact("redis://u:pw@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn tls_files_are_for_rediss_and_parsed_before_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = rcgen::CertifiedIssuer::self_signed(
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let ca_pem = file("ca.pem", &ca.pem());
        let crt = file("c.crt", &cert.pem());
        let key = file("c.key", &key.serialize_pem());
        let tls = FarmConfig {
            redis_url: Some("rediss://redis.example:6380".into()),
            ca_file: Some(ca_pem.clone()),
            cert_file: Some(crt.clone()),
            key_file: Some(key.clone()),
            ..FarmConfig::default()
        };
        tls.validate().unwrap();
        let read = read_tls_files(&tls).unwrap().unwrap();
        assert!(read.root_cert.is_some() && read.client_tls.is_some());
        let only_ca = FarmConfig {
            cert_file: None,
            key_file: None,
            ..tls.clone()
        };
        let read = read_tls_files(&only_ca).unwrap().unwrap();
        assert!(read.root_cert.is_some() && read.client_tls.is_none());
        assert!(
            read_tls_files(&FarmConfig::default()).unwrap().is_none(),
            "no file: the system's trust store"
        );

        let invalid = |c: FarmConfig, key: &str, why: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(why), "{key}: {e}");
        };
        invalid(
            FarmConfig {
                redis_url: Some("redis://redis.example:6379".into()),
                ..only_ca.clone()
            },
            "farm.ca_file",
            "rediss://",
        );
        invalid(
            FarmConfig {
                key_file: None,
                ..tls.clone()
            },
            "farm.cert_file",
            "farm.key_file",
        );
        invalid(
            FarmConfig {
                cert_file: None,
                ..tls.clone()
            },
            "farm.key_file",
            "farm.cert_file",
        );

        let unusable = |c: FarmConfig, key: &str, why: &str| {
            let e = read_tls_files(&c).unwrap_err().to_string();
            assert!(e.starts_with(key) && e.contains(why), "{key}: {e}");
        };
        unusable(
            FarmConfig {
                ca_file: Some(dir.path().join("none.pem")),
                ..tls.clone()
            },
            "farm.ca_file",
            "cannot read it",
        );
        unusable(
            FarmConfig {
                ca_file: Some(file("empty.pem", "")),
                ..tls.clone()
            },
            "farm.ca_file",
            "no CERTIFICATE block",
        );
        unusable(
            FarmConfig {
                cert_file: Some(key.clone()),
                ..tls.clone()
            },
            "farm.cert_file",
            "no CERTIFICATE block",
        );
        unusable(
            FarmConfig {
                key_file: Some(crt.clone()),
                ..tls.clone()
            },
            "farm.key_file",
            "no usable private key",
        );
    }

    #[test]
    fn password_is_the_files_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "s3cret");
        let e = read_password(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("farm.password_file"), "{e}");
    }
}
