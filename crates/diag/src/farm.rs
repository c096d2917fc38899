//! `farm guests|detections`: what every scanner of a farm published to the
//! farm's Redis (docs/operations.md, "Scanner farms"), read from Redis
//! directly: no scanner needs to run here.
//!
//! * guests: the sorted set `{prefix}guests` indexes one hash per guest and
//!   scanner, `{prefix}guest:{scanner}:{identity}` (fields `scanner`,
//!   `guest`, `updated`, `view`: the guest's JSON as the control socket's
//!   `guests` gives it);
//! * detections: the stream `{prefix}events`, entries with fields
//!   `scanner`, `type`, `event` (the event sink's JSON line); a
//!   `remediation` of the same guest, path and threat after a detection
//!   is the action taken.
//!
//! Tables a person pastes into a ticket; `--json` prints JSON lines.
//! Exit status: 0 listed (also when there is nothing to list), 2 Redis
//! could not be read (with what to check).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use redis::IntoConnectionInfo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::control::{table, text};

/// The scanner's default `farm.key_prefix`.
pub const DEFAULT_PREFIX: &str = "thinagent:";

/// A snapshot older than this (seconds) while the guest is connected: its
/// scanner stopped refreshing it (it rewrites every guest each minute).
pub const STALE_SECS: u64 = 180;

/// How to reach the farm's Redis: the scanner's `[farm]` settings.
#[derive(clap::Args, Debug)]
pub struct RedisArgs {
    /// A scanner's configuration file: its [farm] redis_url, password_file,
    /// ca_file, cert_file, key_file and key_prefix (the options below
    /// override them).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The farm's Redis: redis://[USER@]HOST:PORT or rediss://... (TLS), as
    /// the scanners' farm.redis_url.
    #[arg(long, value_name = "URL", env = "THINAGENT_REDIS_URL")]
    pub redis_url: Option<String>,
    /// File whose first line is the Redis password (farm.password_file).
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<PathBuf>,
    /// rediss:// only: PEM CA certificates that sign Redis's certificate
    /// (farm.ca_file; unset: the system's trust store).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// rediss:// only: PEM client certificate to show Redis, with
    /// --key-file (farm.cert_file).
    #[arg(long, value_name = "PATH")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of --cert-file (farm.key_file).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Prefix of the farm's keys (farm.key_prefix; default thinagent:).
    #[arg(long, value_name = "PREFIX")]
    pub key_prefix: Option<String>,
    /// Only this scanner's (its farm.scanner_name).
    #[arg(long, value_name = "NAME")]
    pub scanner: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct FarmArgs {
    #[command(subcommand)]
    pub command: FarmCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum FarmCommand {
    /// Every guest of every scanner of the farm: scanner, identity, name,
    /// OS, connected or gone (stale: its scanner stopped updating it), last
    /// seen, policy version, on-access, last detection. Exit status: 0
    /// listed, 2 Redis could not be read.
    Guests(RedisArgs),
    /// The farm's newest detections, oldest first: time, scanner, guest,
    /// path, threat, action taken. Exit status: 0 listed, 2 Redis could not
    /// be read.
    Detections(DetectionsArgs),
}

#[derive(clap::Args, Debug)]
pub struct DetectionsArgs {
    /// Only detections newer than this: 45s, 90m, 12h, 7d, 2w (by the Redis
    /// server's clock).
    #[arg(long, value_name = "AGE")]
    pub since: Option<String>,
    /// At most this many (the newest).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// `farm guests|detections`.
pub fn run(args: &FarmArgs) -> Result<ExitCode> {
    let result = match &args.command {
        FarmCommand::Guests(a) => guests(a),
        FarmCommand::Detections(a) => detections(a),
    };
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    })
}

/// The part of a scanner's configuration file read here.
#[derive(Deserialize, Default)]
struct ScannerFile {
    #[serde(default)]
    farm: FarmSection,
}

#[derive(Deserialize, Default)]
struct FarmSection {
    redis_url: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    key_prefix: Option<String>,
}

/// The farm's settings: the options over the configuration file.
#[derive(Debug, PartialEq, Eq)]
struct Settings {
    url: String,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    prefix: String,
}

fn settings(args: &RedisArgs) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read the scanner configuration {}; give the scanner's --config file, or --redis-url",
                    path.display()
                )
            })?;
            toml::from_str::<ScannerFile>(&text)
                .with_context(|| format!("{} is not a scanner configuration", path.display()))?
                .farm
        }
        None => FarmSection::default(),
    };
    let url = args.redis_url.clone().or(file.redis_url).ok_or_else(|| {
        anyhow!(
            "no Redis to read: give --redis-url redis://HOST:PORT, or --config with a scanner configuration whose [farm] sets redis_url"
        )
    })?;
    // A password file named in the configuration file is relative to the
    // scanner's working directory: as written.
    Ok(Settings {
        url,
        password_file: args.password_file.clone().or(file.password_file),
        ca_file: args.ca_file.clone().or(file.ca_file),
        cert_file: args.cert_file.clone().or(file.cert_file),
        key_file: args.key_file.clone().or(file.key_file),
        prefix: args
            .key_prefix
            .clone()
            .or(file.key_prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
    })
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the password file {}; give a readable file whose first line is the Redis password (--password-file)",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned())
}

/// A connection to the farm's Redis, or an error saying what to check.
fn connect(s: &Settings) -> Result<redis::Connection> {
    let shown = redact(&s.url);
    if !(s.url.starts_with("redis://") || s.url.starts_with("rediss://")) {
        bail!("{shown}: expected redis://HOST:PORT or rediss://HOST:PORT (TLS)");
    }
    let mut info = s
        .url
        .as_str()
        .into_connection_info()
        .with_context(|| format!("{shown} is not a Redis URL (e.g. redis://10.0.0.5:6379)"))?;
    if let Some(file) = &s.password_file {
        let password = read_password(file)?;
        let redis = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(redis);
    }
    let client = match tls_files(s)? {
        Some(tls) => redis::Client::build_with_tls(info, tls),
        None => redis::Client::open(info),
    }
    .with_context(|| shown.clone())?;
    let check = "check the URL (--redis-url, or [farm] redis_url of --config), that Redis runs and \
                 this host may reach it (firewall; rediss:// for a TLS port, with --ca-file for a \
                 private CA and --cert-file and --key-file where Redis asks for a client \
                 certificate), and the ACL user and its password (--password-file)";
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(3))
        .map_err(|e| anyhow!("cannot reach the farm's Redis at {shown}: {e}; {check}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    redis::cmd("PING")
        .query::<String>(&mut conn)
        .map_err(|e| anyhow!("the farm's Redis at {shown} does not answer PING: {e}; {check}"))?;
    Ok(conn)
}

/// The TLS files of a `rediss://` connection, read; `None` when none is
/// given (the system's trust store, no client certificate). The redis
/// crate parses them and says what is wrong in one.
fn tls_files(s: &Settings) -> Result<Option<redis::TlsCertificates>> {
    if s.ca_file.is_none() && s.cert_file.is_none() && s.key_file.is_none() {
        return Ok(None);
    }
    if !s.url.starts_with("rediss://") {
        bail!(
            "--ca-file, --cert-file and --key-file (farm.ca_file, cert_file, key_file) are for a rediss:// URL: a redis:// connection is not encrypted"
        );
    }
    let read = |flag: &str, path: &Path| {
        std::fs::read(path)
            .with_context(|| format!("cannot read {flag} {}: give a PEM file", path.display()))
    };
    let root_cert = s
        .ca_file
        .as_deref()
        .map(|p| read("--ca-file", p))
        .transpose()?;
    let client_tls = match (&s.cert_file, &s.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("--cert-file", cert)?,
            client_key: read("--key-file", key)?,
        }),
        (None, None) => None,
        _ => bail!(
            "a client certificate needs both --cert-file and --key-file (farm.cert_file and key_file)"
        ),
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn query<T: redis::FromRedisValue>(
    conn: &mut redis::Connection,
    cmd: &redis::Cmd,
    what: &str,
) -> Result<T> {
    cmd.query(conn).map_err(|e| {
        anyhow!(
            "reading {what} from Redis: {e}; if it says NOPERM, the ACL user needs the reader's commands and keys (docs/operations.md, \"Scanner farms\")"
        )
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One guest's entry.
#[derive(Debug, Clone, PartialEq)]
struct FarmGuest {
    scanner: String,
    updated: u64,
    view: Value,
}

impl FarmGuest {
    /// `connected`, `gone`, or `stale` (connected, but its scanner has not
    /// refreshed it for [`STALE_SECS`]).
    fn state(&self, now: u64) -> &'static str {
        if self.view["connected"] != true {
            "gone"
        } else if now.saturating_sub(self.updated) > STALE_SECS {
            "stale"
        } else {
            "connected"
        }
    }
}

/// Every guest hash the index names (expired ones skipped), sorted by
/// scanner and identity.
fn read_guests(conn: &mut redis::Connection, prefix: &str) -> Result<Vec<FarmGuest>> {
    let index = format!("{prefix}guests");
    let keys: Vec<String> = query(
        conn,
        redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1),
        &index,
    )?;
    let mut guests = Vec::new();
    for chunk in keys.chunks(200) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("HGETALL").arg(key);
        }
        let hashes: Vec<HashMap<String, String>> = pipe
            .query(conn)
            .map_err(|e| anyhow!("reading the guests' hashes: {e}"))?;
        for h in hashes {
            let (Some(scanner), Some(view)) = (h.get("scanner"), h.get("view")) else {
                continue; // expired since the index was read
            };
            let Ok(view) = serde_json::from_str::<Value>(view) else {
                continue;
            };
            guests.push(FarmGuest {
                scanner: scanner.clone(),
                updated: h.get("updated").and_then(|u| u.parse().ok()).unwrap_or(0),
                view,
            });
        }
    }
    guests.sort_by(|a, b| {
        (a.scanner.as_str(), a.view["identity"].as_str())
            .cmp(&(b.scanner.as_str(), b.view["identity"].as_str()))
    });
    Ok(guests)
}

fn guests(args: &RedisArgs) -> Result<()> {
    let s = settings(args)?;
    let mut conn = connect(&s)?;
    let mut guests = read_guests(&mut conn, &s.prefix)?;
    if let Some(only) = &args.scanner {
        guests.retain(|g| &g.scanner == only);
    }
    let now = now_secs();
    if args.json {
        for g in &guests {
            let line = json!({
                "scanner": g.scanner,
                "state": g.state(now),
                "updated": g.updated,
                "guest": g.view,
            });
            println!("{line}");
        }
        return Ok(());
    }
    print!("{}", guests_table(&guests, now));
    if guests.is_empty() {
        println!(
            "(no guest in {}: no scanner with [farm] and key_prefix {:?} has had a guest, or their entries expired)",
            redact(&s.url),
            s.prefix
        );
    }
    Ok(())
}

fn guests_table(guests: &[FarmGuest], now: u64) -> String {
    let mut rows = vec![
        [
            "SCANNER",
            "GUEST",
            "NAME",
            "OS",
            "STATE",
            "LAST SEEN",
            "POLICY",
            "ON-ACCESS",
            "DETECTIONS",
            "LAST DETECTION",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for g in guests {
        let v = &g.view;
        let on_access = match v["health"]["on_access"].as_bool() {
            Some(true) => "on",
            Some(false) => "OFF",
            None => "-",
        };
        rows.push(vec![
            g.scanner.clone(),
            text(&v["identity"]),
            text(&v["name"]),
            text(&v["os"]),
            g.state(now).to_owned(),
            text(&v["last_seen"]),
            text(&v["policy_version"]),
            on_access.to_owned(),
            text(&v["detections"]),
            text(&v["last_detection"]),
        ]);
    }
    table(&rows)
}

/// `45s`, `90m`, `12h`, `7d`, `2w` as a duration.
fn parse_age(s: &str) -> Result<Duration> {
    let bad = || anyhow!("--since {s:?}: expected a number and a unit s, m, h, d or w (e.g. 12h)");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// A detection and what was done about it.
#[derive(Debug, Clone, PartialEq)]
struct FarmDetection {
    scanner: String,
    stream_id: String,
    event: Value,
    remediation: Option<Value>,
}

impl FarmDetection {
    /// `denied`, or `denied; quarantine done`.
    fn action(&self) -> String {
        match &self.remediation {
            Some(r) => format!("denied; {} {}", text(&r["action"]), text(&r["status"])),
            None => "denied".to_owned(),
        }
    }
}

/// What joins a remediation to its detection.
fn join_key(scanner: &str, e: &Value) -> (String, String, String, String) {
    (
        scanner.to_owned(),
        text(&e["guest"]["address"]),
        text(&e["path"]["hex"]),
        text(&e["threat"]),
    )
}

/// Most stream entries read for one listing.
const MAX_ENTRIES_READ: usize = 1_000_000;
/// Entries read per request.
const PAGE: usize = 1_000;

/// The newest `limit` detections of the stream (newer than `since_ms`,
/// Redis time; of `scanner` only, if given), oldest first.
fn read_detections(
    conn: &mut redis::Connection,
    prefix: &str,
    since_ms: Option<u64>,
    scanner: Option<&str>,
    limit: usize,
) -> Result<Vec<FarmDetection>> {
    let key = format!("{prefix}events");
    let start = since_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string());
    let mut end = "+".to_owned();
    let mut found = Vec::new();
    let mut remediations: HashMap<(String, String, String, String), Value> = HashMap::new();
    let mut read = 0;
    while found.len() < limit && read < MAX_ENTRIES_READ {
        let page: Vec<(String, Vec<String>)> = query(
            conn,
            redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg(&start)
                .arg("COUNT")
                .arg(PAGE),
            &key,
        )?;
        read += page.len();
        let last = page.last().map(|(id, _)| id.clone());
        for (id, kv) in page {
            let fields: HashMap<&str, &str> = kv
                .chunks_exact(2)
                .map(|p| (p[0].as_str(), p[1].as_str()))
                .collect();
            let (Some(&entry_scanner), Some(&kind), Some(&event)) = (
                fields.get("scanner"),
                fields.get("type"),
                fields.get("event"),
            ) else {
                continue;
            };
            if scanner.is_some_and(|only| only != entry_scanner) {
                continue;
            }
            let Ok(event) = serde_json::from_str::<Value>(event) else {
                continue;
            };
            match kind {
                // Newest first: a remediation is read before its detection.
                "remediation" => {
                    remediations
                        .entry(join_key(entry_scanner, &event))
                        .or_insert(event);
                }
                "detection" => {
                    let remediation = remediations.remove(&join_key(entry_scanner, &event));
                    found.push(FarmDetection {
                        scanner: entry_scanner.to_owned(),
                        stream_id: id,
                        event,
                        remediation,
                    });
                    if found.len() == limit {
                        break;
                    }
                }
                _ => {}
            }
        }
        match last {
            // Exclusive range start (Redis 6.2 or later).
            Some(id) => end = format!("({id}"),
            None => break,
        }
    }
    found.reverse();
    Ok(found)
}

fn detections(args: &DetectionsArgs) -> Result<()> {
    let since = args.since.as_deref().map(parse_age).transpose()?;
    let s = settings(&args.redis)?;
    let mut conn = connect(&s)?;
    let since_ms = match since {
        Some(age) => {
            // The stream's ids are the Redis server's clock: ask it.
            let (secs, micros): (String, String) =
                query(&mut conn, &redis::cmd("TIME"), "the server's time")?;
            let now_ms = secs.parse::<u64>().unwrap_or(0) * 1_000
                + micros.parse::<u64>().unwrap_or(0) / 1_000;
            Some(now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)))
        }
        None => None,
    };
    let found = read_detections(
        &mut conn,
        &s.prefix,
        since_ms,
        args.redis.scanner.as_deref(),
        args.limit,
    )?;
    if args.redis.json {
        for d in &found {
            let line = json!({
                "scanner": d.scanner,
                "stream_id": d.stream_id,
                "action": d.action(),
                "event": d.event,
                "remediation": d.remediation,
            });
            println!("{line}");
        }
        return Ok(());
    }
    print!("{}", detections_table(&found));
    if found.is_empty() {
        println!(
            "(no detection in the events stream {}events of {}{})",
            s.prefix,
            redact(&s.url),
            args.since
                .as_deref()
                .map(|a| format!(" in the last {a}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn detections_table(found: &[FarmDetection]) -> String {
    let mut rows = vec![
        ["TIME", "SCANNER", "GUEST", "PATH", "THREAT", "ACTION"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for d in found {
        let e = &d.event;
        let guest = match e["guest"]["name"].as_str() {
            Some(name) if !name.is_empty() => format!("{} ({name})", text(&e["guest"]["address"])),
            _ => text(&e["guest"]["address"]),
        };
        rows.push(vec![
            text(&e["time"]),
            d.scanner.clone(),
            guest,
            text(&e["path"]["display"]),
            text(&e["threat"]),
            d.action(),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RedisArgs {
        RedisArgs {
            config: None,
            redis_url: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_prefix: None,
            scanner: None,
            json: false,
        }
    }

    #[test]
    fn tls_files_come_from_the_scanner_config_and_are_for_rediss_only() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("scanner.toml");
        std::fs::write(
            &config,
            "[farm]\nredis_url = \"rediss://u@redis.example:6380\"\nca_file = \"/nonexistent/ca.pem\"\ncert_file = \"/etc/c.crt\"\nkey_file = \"/etc/c.key\"\n",
        )
        .unwrap();
        let s = settings(&RedisArgs {
            config: Some(config),
            ..args()
        })
        .unwrap();
        assert_eq!(s.ca_file, Some("/nonexistent/ca.pem".into()));
        assert_eq!(s.cert_file, Some("/etc/c.crt".into()));
        assert_eq!(s.key_file, Some("/etc/c.key".into()));
        let e = tls_files(&s).unwrap_err().to_string();
        assert!(
            e.contains("cannot read --ca-file /nonexistent/ca.pem"),
            "{e}"
        );

        let plain = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>, url: &str| Settings {
            url: url.into(),
            password_file: None,
            ca_file: ca.map(Into::into),
            cert_file: cert.map(Into::into),
            key_file: key.map(Into::into),
            prefix: DEFAULT_PREFIX.into(),
        };
        assert!(
            tls_files(&plain(None, None, None, "rediss://h:1"))
                .unwrap()
                .is_none()
        );
        let e = tls_files(&plain(Some("/ca"), None, None, "redis://h:1")).unwrap_err();
        assert!(e.to_string().contains("rediss://"), "{e}");
        let e = tls_files(&plain(None, Some("/c"), None, "rediss://h:1")).unwrap_err();
        assert!(
            e.to_string().contains("both --cert-file and --key-file"),
            "{e}"
        );
    }

    #[test]
    fn settings_come_from_the_options_over_the_scanner_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("scanner.toml");
        std::fs::write(
            &config,
            "listen = [\"tcp://127.0.0.1:5317\"]\n[farm]\nredis_url = \"redis://u@10.0.0.5:6379\"\npassword_file = \"/etc/pw\"\nkey_prefix = \"f1:\"\nttl_secs = 600\n",
        )
        .unwrap();
        let from_file = settings(&RedisArgs {
            config: Some(config.clone()),
            ..args()
        })
        .unwrap();
        assert_eq!(
            from_file,
            Settings {
                url: "redis://u@10.0.0.5:6379".into(),
                password_file: Some("/etc/pw".into()),
                ca_file: None,
                cert_file: None,
                key_file: None,
                prefix: "f1:".into(),
            }
        );
        let over = settings(&RedisArgs {
            config: Some(config),
            redis_url: Some("redis://127.0.0.1:1".into()),
            key_prefix: Some("f2:".into()),
            ..args()
        })
        .unwrap();
        assert_eq!(over.url, "redis://127.0.0.1:1");
        assert_eq!(over.prefix, "f2:");
        assert_eq!(over.password_file, Some("/etc/pw".into()));
        let e = settings(&args()).unwrap_err().to_string();
        assert!(e.contains("--redis-url"), "{e}");
        let plain = settings(&RedisArgs {
            redis_url: Some("redis://h:1".into()),
            ..args()
        })
        .unwrap();
        assert_eq!(plain.prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_age("90m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_age("2w").unwrap(), Duration::from_secs(1_209_600));
        for bad in ["", "h", "12", "12y", "-1h", "1.5h"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_guest_not_refreshed_while_connected_is_stale() {
        let g = |connected: bool, updated: u64| FarmGuest {
            scanner: "s".into(),
            updated,
            view: json!({"connected": connected}),
        };
        assert_eq!(g(true, 1_000).state(1_000 + STALE_SECS), "connected");
        assert_eq!(g(true, 1_000).state(1_001 + STALE_SECS), "stale");
        assert_eq!(g(false, 1_000).state(1_000_000), "gone");
    }

    #[test]
    fn tables_show_the_columns_a_ticket_needs() {
        let guest = FarmGuest {
            scanner: "esx-07".into(),
            updated: 100,
            view: json!({
                "identity": "tls:CN=vdi-0042", "name": "VDI-0042", "os": "windows",
                "connected": true, "last_seen": "2026-12-04T08:01:02.000Z",
                "policy_version": 3, "health": {"on_access": true}, "detections": 1,
                "last_detection": "Eicar-Test-Signature at C:\\eicar.com"
            }),
        };
        let t = guests_table(&[guest], 100);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SCANNER  GUEST"), "{t}");
        for cell in [
            "esx-07",
            "tls:CN=vdi-0042",
            "VDI-0042",
            "windows",
            "connected",
            "2026-12-04T08:01:02.000Z",
            " 3 ",
            " on ",
            "Eicar-Test-Signature at C:\\eicar.com",
        ] {
            assert!(lines[1].contains(cell), "{cell:?} not in {t}");
        }
        let d = FarmDetection {
            scanner: "esx-07".into(),
            stream_id: "1-0".into(),
            event: json!({
                "time": "2026-12-04T08:01:02.000Z", "threat": "Eicar-Test-Signature",
                "guest": {"address": "tls:CN=vdi-0042", "name": "VDI-0042"},
                "path": {"display": "C:\\eicar.com", "hex": "00"}
            }),
            remediation: Some(json!({"action": "quarantine", "status": "done"})),
        };
        let t = detections_table(&[d]);
        assert!(t.starts_with("TIME"), "{t}");
        let row: Vec<&str> = t
            .lines()
            .nth(1)
            .unwrap()
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect();
        assert_eq!(
            row,
            [
                "2026-12-04T08:01:02.000Z",
                "esx-07",
                "tls:CN=vdi-0042 (VDI-0042)",
                "C:\\eicar.com",
                "Eicar-Test-Signature",
                "denied; quarantine done"
            ],
            "{t}"
        );
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("redis://u:pw@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("rediss://h:1"), "rediss://h:1");
    }
}
