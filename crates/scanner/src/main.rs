//! `thinagent-scanner`: the host scanner service.
//!
//! With no arguments it serves on its embedded default: port 5317 on vsock
//! (when the kernel has AF_VSOCK) and on `tcp://127.0.0.1:5317`, with the
//! built-in signature set. See `--help` and `dist/thinagent-scanner.toml`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use thinagent_scanner::config::{Config, LogFormat, PolicyDecision};
use thinagent_scanner::service::{self, Service};
use tracing_subscriber::EnvFilter;

/// The ThinAgent host scanner: answers every guest's file-open queries.
///
/// Every option overrides the same key of the --config file.
#[derive(Parser, Debug)]
#[command(name = "thinagent-scanner", version)]
struct Cli {
    /// TOML configuration file (see dist/thinagent-scanner.toml).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Run every check of the start short of binding (values, signatures, audit log, event and quarantine paths; pings clamd), then exit: 0 valid, 2 not.
    #[arg(long)]
    check_config: bool,
    /// Listen here (repeatable): vsock://any:PORT, tcp://127.0.0.1:PORT, unix:///path. [config: listen]
    #[arg(short, long, value_name = "URL")]
    listen: Vec<String>,
    /// Load every .hdb/.hsb/.yar/.yara file of DIR (repeatable). [config: signatures]
    #[arg(long, value_name = "DIR")]
    signatures: Vec<PathBuf>,
    /// Do not load the built-in set (EICAR). [config: builtin_signatures]
    #[arg(long)]
    no_builtin: bool,
    /// Forward content to clamd: unix:///run/clamav/clamd.ctl or tcp://HOST:PORT. [config: clamd]
    #[arg(long, value_name = "URL")]
    clamd: Option<String>,
    /// clamd I/O timeout, ms. [config: clamd_timeout_ms]
    #[arg(long, value_name = "MS")]
    clamd_timeout_ms: Option<u64>,
    /// Append one JSON line per verdict to PATH. [config: audit_log]
    #[arg(long, value_name = "PATH")]
    audit_log: Option<PathBuf>,
    /// Admin control socket (Unix, mode 0600) for thinagent-diag guests / remediate / scan-guest. [config: control_socket]
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Keep the guest policy set at run time and the guests seen across restarts in DIR. [config: state_dir]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Serve Prometheus /metrics here (loopback only): tcp://127.0.0.1:PORT. [config: metrics]
    #[arg(long, value_name = "URL")]
    metrics: Option<String>,
    /// Accept only this vsock CID (repeatable; none = any). [config: allowed_cids]
    #[arg(long = "allow-cid", value_name = "CID")]
    allow_cid: Vec<u32>,
    /// [config: limits.max_frame_len]
    #[arg(long, value_name = "BYTES")]
    max_frame_len: Option<u32>,
    /// Unset: max-frame-len - 56, at most max-bytes-in-flight. [config: limits.max_read_chunk]
    #[arg(long, value_name = "BYTES")]
    max_read_chunk: Option<u32>,
    /// Most content bytes a guest may send inline per query (protocol version 2); 0 = off. Unset: max-frame-len - 89. [config: limits.max_inline_len]
    #[arg(long, value_name = "BYTES")]
    max_inline_len: Option<u32>,
    /// [config: limits.max_reads_in_flight]
    #[arg(long, value_name = "N")]
    max_reads_in_flight: Option<u32>,
    /// Larger files are not scanned (policy.too_large). [config: limits.max_file_size]
    #[arg(long, value_name = "BYTES")]
    max_file_size: Option<u64>,
    /// Scan budget per query. [config: limits.request_timeout_ms]
    #[arg(long, value_name = "MS")]
    request_timeout_ms: Option<u64>,
    /// Unset: 30000, or 3 heartbeat intervals if longer. [config: limits.idle_timeout_ms]
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// Unset: 10000, or a third of the idle timeout if shorter. [config: limits.heartbeat_interval_ms]
    #[arg(long, value_name = "MS")]
    heartbeat_interval_ms: Option<u64>,
    /// [config: limits.handshake_timeout_ms]
    #[arg(long, value_name = "MS")]
    handshake_timeout_ms: Option<u64>,
    /// [config: limits.max_sessions]
    #[arg(long, value_name = "N")]
    max_sessions: Option<u32>,
    /// [config: limits.max_sessions_per_guest]
    #[arg(long, value_name = "N")]
    max_sessions_per_guest: Option<u32>,
    /// Connections that have not sent Hello yet, over all peers. [config: limits.max_pending_handshakes]
    #[arg(long, value_name = "N")]
    max_pending_handshakes: Option<u32>,
    /// Connections one peer may have that have not sent Hello yet. [config: limits.max_pending_per_peer]
    #[arg(long, value_name = "N")]
    max_pending_per_peer: Option<u32>,
    /// PEM certificate chain of tls:// listeners. [config: tls.cert]
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_client_ca"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of tls:// listeners. [config: tls.key]
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_client_ca"])]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that sign guest certificates. [config: tls.client_ca]
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    tls_client_ca: Option<PathBuf>,
    /// PEM revocation lists of the guest CA(s): a listed guest certificate is refused (needs a [tls] section or the three --tls-* options). [config: tls.crl]
    #[arg(long, value_name = "PEM")]
    tls_crl: Option<PathBuf>,
    /// Max unanswered FileEvents per guest. [config: limits.max_in_flight_per_guest]
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u32>,
    /// [config: limits.max_bytes_in_flight_per_guest]
    #[arg(long, value_name = "BYTES")]
    max_bytes_in_flight: Option<u64>,
    /// [config: limits.scan_buffer_max]
    #[arg(long, value_name = "BYTES")]
    scan_buffer_max: Option<u64>,
    /// [config: cache.identity_entries]
    #[arg(long, value_name = "N")]
    identity_cache_entries: Option<u64>,
    /// [config: cache.content_entries]
    #[arg(long, value_name = "N")]
    content_cache_entries: Option<u64>,
    /// [config: cache.ttl_secs]
    #[arg(long, value_name = "SECS")]
    cache_ttl_secs: Option<u64>,
    /// [config: cache.guest_ttl_secs]
    #[arg(long, value_name = "SECS")]
    guest_ttl_secs: Option<u32>,
    /// allow|deny. [config: policy.too_large]
    #[arg(long, value_name = "allow|deny")]
    too_large: Option<PolicyDecision>,
    /// allow|deny. [config: policy.timeout]
    #[arg(long, value_name = "allow|deny")]
    on_timeout: Option<PolicyDecision>,
    /// allow|deny. [config: policy.error]
    #[arg(long, value_name = "allow|deny")]
    on_error: Option<PolicyDecision>,
    /// tracing filter, e.g. info or thinagent_scanner=debug (RUST_LOG wins). [config: log.level]
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// text|json. [config: log.format]
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
    /// Append every event (detections, guest connects/disconnects) as a JSON line to PATH. [config: events.file]
    #[arg(long, value_name = "PATH")]
    events_file: Option<PathBuf>,
    /// POST every event as JSON lines to this http(s) URL, retried until it answers 2xx. [config: events.webhook_url]
    #[arg(long, value_name = "URL")]
    events_webhook_url: Option<String>,
    /// Extra webhook request headers, `Name: value` per line (e.g. Authorization: Bearer ...), from PATH (keep it 0600). [config: events.webhook_headers_file]
    #[arg(long, value_name = "PATH")]
    events_webhook_headers_file: Option<PathBuf>,
    /// Directory of the on-disk event queues (needed with --events-file or --events-webhook-url). [config: events.queue_dir]
    #[arg(long, value_name = "DIR")]
    events_queue_dir: Option<PathBuf>,
    /// Most bytes each event queue holds on disk; past it new events are dropped and counted. [config: events.max_queue_bytes]
    #[arg(long, value_name = "BYTES")]
    events_max_queue_bytes: Option<u64>,
    /// Whole webhook request. [config: events.timeout_ms]
    #[arg(long, value_name = "MS")]
    events_timeout_ms: Option<u64>,
    /// Webhook connect. [config: events.connect_timeout_ms]
    #[arg(long, value_name = "MS")]
    events_connect_timeout_ms: Option<u64>,
    /// Longest back-off between delivery retries. [config: events.retry_max_ms]
    #[arg(long, value_name = "MS")]
    events_retry_max_ms: Option<u64>,
    /// Quarantine store directory (created 0700). [config: quarantine.dir]
    #[arg(long, value_name = "DIR")]
    quarantine_dir: Option<PathBuf>,
    /// Most distinct content bytes the quarantine holds (full: storing fails, nothing is evicted). [config: quarantine.max_bytes]
    #[arg(long, value_name = "BYTES")]
    quarantine_max_bytes: Option<u64>,
    /// Most quarantine entries holding content. [config: quarantine.max_entries]
    #[arg(long, value_name = "N")]
    quarantine_max_entries: Option<u64>,
    /// Guests' fail mode, sent as their policy. [config: guest_policy.fail_mode]
    #[arg(long, value_name = "MODE", value_parser = ["open", "closed"])]
    guest_fail_mode: Option<String>,
    /// Guests' debug level 0..=4. [config: guest_policy.debug_level]
    #[arg(long, value_name = "N")]
    guest_debug_level: Option<u8>,
    /// Guests' exclusions, KIND:VALUE with KIND path-prefix, extension or process (repeatable; replaces their lists). [config: guest_policy.exclusions]
    #[arg(long = "guest-exclude", value_name = "KIND:VALUE")]
    guest_exclude: Vec<String>,
    /// Guests' deadline per on-access query, ms. [config: guest_policy.query_timeout_ms]
    #[arg(long, value_name = "MS")]
    guest_query_timeout_ms: Option<u32>,
    /// Longest a guest keeps a verdict, s. [config: guest_policy.cache_ttl_max_secs]
    #[arg(long, value_name = "SECS")]
    guest_cache_ttl_max_secs: Option<u32>,
    /// Guests do not query larger files, bytes (0 = no limit). [config: guest_policy.max_scan_size]
    #[arg(long, value_name = "BYTES")]
    guest_max_scan_size: Option<u64>,
    /// Automatic remediation rule THREAT-PATTERN=ACTION, ACTION deny, delete or quarantine (repeatable, first match wins; replaces the file's rules). [config: remediation.rules]
    #[arg(long = "remediate", value_name = "PATTERN=ACTION")]
    remediate: Vec<String>,
    /// Most automatic remediations per guest per minute. [config: remediation.max_per_guest_per_minute]
    #[arg(long, value_name = "N")]
    remediation_max_per_guest_per_minute: Option<u32>,
    /// How long to wait for a guest's remediation answer, ms. [config: remediation.deadline_ms]
    #[arg(long, value_name = "MS")]
    remediation_deadline_ms: Option<u64>,
    /// Share verdicts with a scanner farm through this Redis (or Valkey): redis://[USER@]HOST:PORT, rediss://... for TLS. [config: farm.redis_url]
    #[arg(long, value_name = "URL")]
    farm_redis_url: Option<String>,
    /// File whose first line is the farm's Redis password (keep it 0600). [config: farm.password_file]
    #[arg(long, value_name = "PATH")]
    farm_password_file: Option<PathBuf>,
    /// PEM CA certificates that sign the farm's Redis certificate (rediss:// only; unset: the system's). [config: farm.ca_file]
    #[arg(long, value_name = "PATH")]
    farm_ca_file: Option<PathBuf>,
    /// PEM client certificate shown to the farm's Redis (rediss:// only, with --farm-key-file). [config: farm.cert_file]
    #[arg(long, value_name = "PATH")]
    farm_cert_file: Option<PathBuf>,
    /// PEM private key of --farm-cert-file (keep it 0600). [config: farm.key_file]
    #[arg(long, value_name = "PATH")]
    farm_key_file: Option<PathBuf>,
    /// Prefix of every farm key in Redis. [config: farm.key_prefix]
    #[arg(long, value_name = "PREFIX")]
    farm_key_prefix: Option<String>,
    /// Lifetime of a shared verdict, s. [config: farm.ttl_secs]
    #[arg(long, value_name = "SECS")]
    farm_ttl_secs: Option<u64>,
    /// Longest a local cache miss waits for the farm's Redis, ms. [config: farm.deadline_ms]
    #[arg(long, value_name = "MS")]
    farm_deadline_ms: Option<u64>,
    /// Share verdicts by file identity for TLS guests (certificate subjects): true|false. [config: farm.share_identity]
    #[arg(long, value_name = "BOOL")]
    farm_share_identity: Option<bool>,
    /// This scanner's name in the farm's events and guest lists (unset: the host name). [config: farm.scanner_name]
    #[arg(long, value_name = "NAME")]
    farm_scanner_name: Option<String>,
    /// About how many entries the farm's events stream keeps. [config: farm.stream_maxlen]
    #[arg(long, value_name = "N")]
    farm_stream_maxlen: Option<u64>,
    /// How long a guest's farm entry lives after its last update, s. [config: farm.guest_ttl_secs]
    #[arg(long, value_name = "SECS")]
    farm_guest_ttl_secs: Option<u64>,
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

impl Cli {
    /// The config file (or defaults) with the command line on top.
    fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if !self.listen.is_empty() {
            c.listen = self.listen.clone();
        }
        if !self.signatures.is_empty() {
            c.signatures = self.signatures.clone();
        }
        if self.no_builtin {
            c.builtin_signatures = false;
        }
        if self.clamd.is_some() {
            c.clamd = self.clamd.clone();
        }
        set(&mut c.clamd_timeout_ms, self.clamd_timeout_ms);
        if self.audit_log.is_some() {
            c.audit_log = self.audit_log.clone();
        }
        if self.metrics.is_some() {
            c.metrics = self.metrics.clone();
        }
        if self.control_socket.is_some() {
            c.control_socket = self.control_socket.clone();
        }
        if self.state_dir.is_some() {
            c.state_dir = self.state_dir.clone();
        }
        if !self.allow_cid.is_empty() {
            c.allowed_cids = self.allow_cid.clone();
        }
        if let (Some(cert), Some(key), Some(client_ca)) =
            (&self.tls_cert, &self.tls_key, &self.tls_client_ca)
        {
            let crl = c.tls.take().and_then(|t| t.crl);
            c.tls = Some(thinagent_scanner::tls::TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
                crl,
            });
        }
        if let Some(crl) = &self.tls_crl {
            let Some(tls) = c.tls.as_mut() else {
                anyhow::bail!(
                    "--tls-crl {}: there is no TLS to check guests for: add a [tls] section or --tls-cert, --tls-key and --tls-client-ca",
                    crl.display()
                );
            };
            tls.crl = Some(crl.clone());
        }
        let l = &mut c.limits;
        set(&mut l.max_frame_len, self.max_frame_len);
        if self.max_read_chunk.is_some() {
            l.max_read_chunk = self.max_read_chunk;
        }
        if self.max_inline_len.is_some() {
            l.max_inline_len = self.max_inline_len;
        }
        set(&mut l.max_reads_in_flight, self.max_reads_in_flight);
        set(&mut l.max_file_size, self.max_file_size);
        set(&mut l.request_timeout_ms, self.request_timeout_ms);
        if self.idle_timeout_ms.is_some() {
            l.idle_timeout_ms = self.idle_timeout_ms;
        }
        if self.heartbeat_interval_ms.is_some() {
            l.heartbeat_interval_ms = self.heartbeat_interval_ms;
        }
        set(&mut l.handshake_timeout_ms, self.handshake_timeout_ms);
        set(&mut l.max_sessions, self.max_sessions);
        set(&mut l.max_sessions_per_guest, self.max_sessions_per_guest);
        set(&mut l.max_pending_handshakes, self.max_pending_handshakes);
        set(&mut l.max_pending_per_peer, self.max_pending_per_peer);
        set(&mut l.max_in_flight_per_guest, self.max_in_flight);
        set(
            &mut l.max_bytes_in_flight_per_guest,
            self.max_bytes_in_flight,
        );
        set(&mut l.scan_buffer_max, self.scan_buffer_max);
        set(&mut c.cache.identity_entries, self.identity_cache_entries);
        set(&mut c.cache.content_entries, self.content_cache_entries);
        set(&mut c.cache.ttl_secs, self.cache_ttl_secs);
        set(&mut c.cache.guest_ttl_secs, self.guest_ttl_secs);
        set(&mut c.policy.too_large, self.too_large);
        set(&mut c.policy.timeout, self.on_timeout);
        set(&mut c.policy.error, self.on_error);
        set(&mut c.log.level, self.log_level.clone());
        let ev = &mut c.events;
        if self.events_file.is_some() {
            ev.file = self.events_file.clone();
        }
        if self.events_webhook_url.is_some() {
            ev.webhook_url = self.events_webhook_url.clone();
        }
        if self.events_webhook_headers_file.is_some() {
            ev.webhook_headers_file = self.events_webhook_headers_file.clone();
        }
        if self.events_queue_dir.is_some() {
            ev.queue_dir = self.events_queue_dir.clone();
        }
        set(&mut ev.max_queue_bytes, self.events_max_queue_bytes);
        set(&mut ev.timeout_ms, self.events_timeout_ms);
        set(&mut ev.connect_timeout_ms, self.events_connect_timeout_ms);
        set(&mut ev.retry_max_ms, self.events_retry_max_ms);
        if self.quarantine_dir.is_some() {
            c.quarantine.dir = self.quarantine_dir.clone();
        }
        set(&mut c.quarantine.max_bytes, self.quarantine_max_bytes);
        set(&mut c.quarantine.max_entries, self.quarantine_max_entries);
        let gp = &mut c.guest_policy;
        if let Some(mode) = &self.guest_fail_mode {
            gp.fail_mode = Some(match mode.as_str() {
                "open" => thinagent_scanner::guest_policy::FailModeConfig::Open,
                _ => thinagent_scanner::guest_policy::FailModeConfig::Closed,
            });
        }
        if self.guest_debug_level.is_some() {
            gp.debug_level = self.guest_debug_level;
        }
        if !self.guest_exclude.is_empty() {
            let mut list = Vec::new();
            for item in &self.guest_exclude {
                let (kind, value) = item.split_once(':').with_context(|| {
                    format!("--guest-exclude {item:?}: expected KIND:VALUE, e.g. path-prefix:/proc")
                })?;
                let kind = match kind {
                    "path-prefix" => {
                        thinagent_scanner::guest_policy::ExclusionKindConfig::PathPrefix
                    }
                    "extension" => thinagent_scanner::guest_policy::ExclusionKindConfig::Extension,
                    "process" => thinagent_scanner::guest_policy::ExclusionKindConfig::Process,
                    other => anyhow::bail!(
                        "--guest-exclude {item:?}: unknown kind {other:?}; use path-prefix, extension or process"
                    ),
                };
                list.push(thinagent_scanner::guest_policy::ExclusionConfig {
                    kind,
                    value: value.to_owned(),
                });
            }
            gp.exclusions = Some(list);
        }
        if self.guest_query_timeout_ms.is_some() {
            gp.query_timeout_ms = self.guest_query_timeout_ms;
        }
        if self.guest_cache_ttl_max_secs.is_some() {
            gp.cache_ttl_max_secs = self.guest_cache_ttl_max_secs;
        }
        if self.guest_max_scan_size.is_some() {
            gp.max_scan_size = self.guest_max_scan_size;
        }
        if !self.remediate.is_empty() {
            use thinagent_scanner::remediation::{RemediationAction, RemediationRule};
            let mut rules = Vec::new();
            for item in &self.remediate {
                let (threat, action) = item.rsplit_once('=').with_context(|| {
                    format!(
                        "--remediate {item:?}: expected PATTERN=ACTION, e.g. 'Eicar-*=quarantine'"
                    )
                })?;
                let action = match action {
                    "deny" => RemediationAction::Deny,
                    "delete" => RemediationAction::Delete,
                    "quarantine" => RemediationAction::Quarantine,
                    other => anyhow::bail!(
                        "--remediate {item:?}: unknown action {other:?}; use deny, delete or quarantine"
                    ),
                };
                rules.push(RemediationRule {
                    threat: threat.to_owned(),
                    action,
                });
            }
            c.remediation.rules = rules;
        }
        set(
            &mut c.remediation.max_per_guest_per_minute,
            self.remediation_max_per_guest_per_minute,
        );
        set(&mut c.remediation.deadline_ms, self.remediation_deadline_ms);
        let farm = &mut c.farm;
        if self.farm_redis_url.is_some() {
            farm.redis_url = self.farm_redis_url.clone();
        }
        for (slot, flag) in [
            (&mut farm.password_file, &self.farm_password_file),
            (&mut farm.ca_file, &self.farm_ca_file),
            (&mut farm.cert_file, &self.farm_cert_file),
            (&mut farm.key_file, &self.farm_key_file),
        ] {
            if flag.is_some() {
                *slot = flag.clone();
            }
        }
        if let Some(prefix) = &self.farm_key_prefix {
            farm.key_prefix = prefix.clone();
        }
        set(&mut farm.ttl_secs, self.farm_ttl_secs);
        set(&mut farm.deadline_ms, self.farm_deadline_ms);
        set(&mut farm.share_identity, self.farm_share_identity);
        if self.farm_scanner_name.is_some() {
            farm.scanner_name = self.farm_scanner_name.clone();
        }
        set(&mut farm.stream_maxlen, self.farm_stream_maxlen);
        set(&mut farm.guest_ttl_secs, self.farm_guest_ttl_secs);
        if let Some(f) = &self.log_format {
            c.log.format = match f.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => anyhow::bail!("--log-format {other:?}: expected text or json"),
            };
        }
        Ok(c)
    }
}

fn init_logs(c: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&c.log.level));
    // Colour only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match c.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `--check-config`: every check of the start short of binding (the same
/// [`service::prepare`]), and a clamd PING. The audit log is opened as the
/// start opens it and closed again; a file the check created is removed.
fn check(config: &Config) -> Result<String> {
    let prepared = service::prepare(config)?;
    let ping = service::ping_clamd(&prepared.signature_config);
    if let Some(audit) = prepared.audit {
        audit.close_checked()?;
    }
    ping.context("clamd is configured but does not answer PING")?;
    let set = prepared.set;
    let (urls, _) = config.listeners()?;
    Ok(format!(
        "configuration OK: listen {}; {}",
        urls.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        service::describe(set.summary())
    ))
}

async fn run(config: Config) -> Result<()> {
    let service = Service::build(&config).await?;
    {
        let mut out = std::io::stdout().lock();
        for url in service.urls() {
            writeln!(out, "listening on {url}")?;
        }
        if let Some(addr) = service.metrics_addr() {
            writeln!(out, "metrics on http://{addr}/metrics")?;
        }
        out.flush()?;
    }
    let (reloader, shutdown) = signal_handlers(service.handle())?;
    service.run(shutdown, Duration::from_secs(5)).await;
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Unix: SIGHUP reloads the signatures, the `[tls]` files and the farm's
/// files (a failed reload keeps what was in use); SIGTERM or Ctrl-C
/// (SIGINT) shuts down. Returns the reload task and the shutdown future.
#[cfg(unix)]
fn signal_handlers(
    handle: service::ServiceHandle,
) -> Result<(
    Option<tokio::task::JoinHandle<()>>,
    impl std::future::Future<Output = ()>,
)> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let reloader = Some(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading signatures, tls and farm files");
            // Failures are logged inside; what was in use stays.
            let _ = handle.reload().await;
            let _ = handle.reload_tls().await;
            let _ = handle.reload_farm().await;
        }
    }));
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        }
    };
    Ok((reloader, shutdown))
}

/// Windows: Ctrl-C / Ctrl-Break shuts down. There is no reload signal:
/// signatures are reloaded by restarting the scanner.
#[cfg(windows)]
fn signal_handlers(
    handle: service::ServiceHandle,
) -> Result<(
    Option<tokio::task::JoinHandle<()>>,
    impl std::future::Future<Output = ()>,
)> {
    drop(handle);
    tracing::info!("no reload signal on Windows: restart the scanner to reload signatures");
    let mut ctrl_break =
        tokio::signal::windows::ctrl_break().context("installing the Ctrl-Break handler")?;
    let reloader = None;
    let shutdown = async move {
        tokio::select! {
            _ = ctrl_break.recv() => tracing::info!("Ctrl-Break received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        }
    };
    Ok((reloader, shutdown))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("thinagent-scanner: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        // Load warnings (e.g. signature names cut) go to stderr.
        init_logs(&config);
        return match check(&config) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("thinagent-scanner: configuration invalid: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Err(e) = config.validate() {
        eprintln!("thinagent-scanner: configuration invalid: {e:#}");
        return ExitCode::from(2);
    }
    init_logs(&config);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("thinagent-scanner: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thinagent-scanner: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Keys that are unset in the default configuration, so the default's
    /// serialization does not show them.
    const UNSET_BY_DEFAULT: &[&str] = &[
        "clamd",
        "audit_log",
        "metrics",
        "tls.cert",
        "tls.key",
        "tls.client_ca",
        "tls.crl",
        "limits.max_read_chunk",
        "limits.max_inline_len",
        "limits.idle_timeout_ms",
        "limits.heartbeat_interval_ms",
        "events.file",
        "events.webhook_url",
        "events.webhook_headers_file",
        "events.queue_dir",
        "quarantine.dir",
        "control_socket",
        "state_dir",
        "guest_policy.fail_mode",
        "guest_policy.debug_level",
        "guest_policy.exclusions",
        "guest_policy.query_timeout_ms",
        "guest_policy.cache_ttl_max_secs",
        "guest_policy.max_scan_size",
        "farm.redis_url",
        "farm.password_file",
        "farm.ca_file",
        "farm.cert_file",
        "farm.key_file",
        "farm.scanner_name",
    ];

    /// Every key of the configuration has a command-line option that names
    /// it (`[config: KEY]` in its help).
    #[test]
    fn every_config_key_has_a_flag() {
        let help = Cli::command().render_long_help().to_string();
        let mut keys: Vec<String> = UNSET_BY_DEFAULT.iter().map(|k| k.to_string()).collect();
        let value = toml::Value::try_from(Config::default()).unwrap();
        for (key, v) in value.as_table().unwrap() {
            match v.as_table() {
                Some(t) => keys.extend(t.keys().map(|sub| format!("{key}.{sub}"))),
                None => keys.push(key.clone()),
            }
        }
        for key in keys {
            assert!(
                help.contains(&format!("[config: {key}]")),
                "no option names [config: {key}]"
            );
        }
    }

    #[test]
    fn events_and_quarantine_flags_override_the_file() {
        let cli = Cli::parse_from([
            "thinagent-scanner",
            "--events-file",
            "/tmp/e.jsonl",
            "--events-webhook-url",
            "http://127.0.0.1:9/x",
            "--events-queue-dir",
            "/tmp/q",
            "--events-max-queue-bytes",
            "100000",
            "--events-timeout-ms",
            "7",
            "--events-connect-timeout-ms",
            "8",
            "--events-retry-max-ms",
            "9",
            "--quarantine-dir",
            "/tmp/quar",
            "--quarantine-max-bytes",
            "10",
            "--quarantine-max-entries",
            "11",
        ]);
        let c = cli.config().unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.events.file.as_deref(),
            Some(std::path::Path::new("/tmp/e.jsonl"))
        );
        assert_eq!(
            c.events.webhook_url.as_deref(),
            Some("http://127.0.0.1:9/x")
        );
        assert_eq!(
            c.events.queue_dir.as_deref(),
            Some(std::path::Path::new("/tmp/q"))
        );
        assert_eq!(
            (
                c.events.max_queue_bytes,
                c.events.timeout_ms,
                c.events.connect_timeout_ms,
                c.events.retry_max_ms
            ),
            (100_000, 7, 8, 9)
        );
        assert_eq!(
            c.quarantine.dir.as_deref(),
            Some(std::path::Path::new("/tmp/quar"))
        );
        assert_eq!((c.quarantine.max_bytes, c.quarantine.max_entries), (10, 11));
    }
}
