//! Scanner farms (issue 15), as deployed: two `thinagent-scanner`
//! processes on one real `redis-server`, guests over TLS (a farm-wide
//! identity: the certificate subject) and loopback TCP, and the real
//! `thinagent-diag farm guests|detections` reading what both published.
//!
//! * a file scanned through scanner A is answered by scanner B with no
//!   content pulled (the same TLS guest, by file identity);
//! * a signature reload (SIGHUP) on B makes B read and scan again, while the
//!   detection stays served from the farm;
//! * both scanners' events and guests are on the farm's stream and in its
//!   guest hashes, and `thinagent-diag farm` lists them;
//! * the scanners and `thinagent-diag` connect as the ACL users of
//!   docs/operations.md, with their passwords in files;
//! * Redis killed mid-run: every query is still answered by the host (the
//!   guest's deadline would otherwise answer it) with the right verdict;
//!   Redis back (empty): sharing resumes.
//!
//! `thinagent-diag` is the binary next to `thinagent-scanner` (built by
//! `cargo test --workspace`, or `cargo test -p thinagent-scanner -p
//! thinagent-diag`). Without it, or without `redis-server`, the test says
//! so and passes, except under CI (`CI` set), where it fails.
#![cfg(unix)]

use crate::common;
use crate::support::redis_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Answer, EICAR, FileSpec, Pki, ScannerProcess, connect, metric, run_guest, scrape, tls_connect,
};
use redis_server::RedisServer;

/// The guest's deadline per query: an answer later than this would come
/// from the guest's fail mode, not from the host (and fail the test).
const GUEST_DEADLINE: Duration = Duration::from_secs(10);

/// The real `thinagent-diag`, or `None` (said why) outside CI.
fn diag_binary() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_thinagent-scanner")).with_file_name("thinagent-diag");
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing: build it (cargo test --workspace, or cargo build -p thinagent-diag)",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: {} is missing; run cargo test -p thinagent-scanner -p thinagent-diag",
        path.display()
    );
    None
}

/// One scanner of the farm, a process.
struct Scanner {
    process: ScannerProcess,
    signatures: tempfile::TempDir,
    _logs: tempfile::TempDir,
}

impl Scanner {
    fn start(name: &str, pki: &Pki, farm: &Acl, deadline_ms: u32) -> Self {
        let farm = [
            "--farm-redis-url".to_owned(),
            farm.url("thinagent"),
            "--farm-password-file".to_owned(),
            path(farm.password_file("thinagent")),
        ];
        Self::start_with(name, pki, &farm, deadline_ms)
    }

    /// A scanner whose farm options are `farm` (URL, password, TLS files).
    fn start_with(name: &str, pki: &Pki, farm: &[String], deadline_ms: u32) -> Self {
        let signatures = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let args = [
            "--listen".to_owned(),
            "tls://127.0.0.1:0".to_owned(),
            "--listen".to_owned(),
            "tcp://127.0.0.1:0".to_owned(),
            "--tls-cert".to_owned(),
            path(pki.path("server.crt")),
            "--tls-key".to_owned(),
            path(pki.path("server.key")),
            "--tls-client-ca".to_owned(),
            path(pki.path("ca.pem")),
            "--signatures".to_owned(),
            path(signatures.path().to_owned()),
            "--metrics".to_owned(),
            "tcp://127.0.0.1:0".to_owned(),
            "--farm-scanner-name".to_owned(),
            name.to_owned(),
            "--farm-deadline-ms".to_owned(),
            deadline_ms.to_string(),
        ];
        let args: Vec<&str> = args.iter().chain(farm).map(String::as_str).collect();
        let process = ScannerProcess::start(&args, logs.path(), 2);
        Self {
            process,
            signatures,
            _logs: logs,
        }
    }

    async fn metrics(&self) -> String {
        scrape(self.process.metrics.as_deref().expect("metrics address")).await
    }

    async fn m(&self, name_and_labels: &str) -> f64 {
        metric(&self.metrics().await, name_and_labels)
    }

    async fn farm(&self, op: &str, result: &str) -> f64 {
        self.m(&format!(
            "thinagent_scanner_farm_requests_total{{op=\"{op}\",result=\"{result}\"}}"
        ))
        .await
    }

    /// Waits until the scanner has loaded its signatures `n` times.
    async fn wait_reloads(&self, n: f64) {
        let until = Instant::now() + Duration::from_secs(15);
        while self
            .m("thinagent_scanner_signature_reloads_total{result=\"ok\"}")
            .await
            < n
        {
            assert!(
                Instant::now() < until,
                "no reload; log:\n{}",
                self.process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Content the scanner hashed: pulled and sent inline.
    async fn content_bytes(&self) -> f64 {
        let text = self.metrics().await;
        metric(&text, "thinagent_scanner_bytes_read_total")
            + metric(&text, "thinagent_scanner_inline_content_bytes_total")
    }

    async fn wait_farm_up(&self, up: f64) {
        let until = Instant::now() + Duration::from_secs(15);
        while self.m("thinagent_scanner_farm_up").await != up {
            assert!(
                Instant::now() < until,
                "farm_up never became {up}; log:\n{}",
                self.process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn open_tls(&self, pki: &Pki, cert: &str, files: &[Arc<FileSpec>]) -> Vec<Answer> {
        let client = pki.client(cert);
        let stream = tls_connect(self.process.url("tls://"), &client)
            .await
            .expect("TLS connect");
        answers(run_guest(stream, cert, files, 4, GUEST_DEADLINE).await)
    }

    async fn open_tcp(&self, name: &str, files: &[Arc<FileSpec>]) -> Vec<Answer> {
        let stream = connect(self.process.url("tcp://")).await;
        answers(run_guest(stream, name, files, 4, GUEST_DEADLINE).await)
    }
}

/// Every open answered once, by the host (not by the guest's deadline).
fn answers(r: common::GuestReport) -> Vec<Answer> {
    r.assert_each_answered_once_by_host();
    r.answers.into_iter().map(Option::unwrap).collect()
}

/// `thinagent-diag farm ARGS` as the reader ACL user.
fn diag_farm(diag: &Path, acl: &Acl, args: &[&str]) -> Output {
    Command::new(diag)
        .arg("farm")
        .args(args)
        .args(["--redis-url", &acl.url("farm-reader")])
        .arg("--password-file")
        .arg(acl.password_file("farm-reader"))
        .output()
        .expect("run thinagent-diag")
}

/// The ACL users docs/operations.md tells to create: the scanners' (only
/// the commands they send, only their prefix) and the reader's
/// (`thinagent-diag farm`), each with its password in a file.
struct Acl {
    dir: tempfile::TempDir,
    /// `redis://`, or `rediss://` for a TLS port.
    scheme: &'static str,
    port: u16,
}

impl Acl {
    const USERS: &str = "user thinagent on >scanner-pw ~thinagent:* +get +mget +set +ping +xadd +hset +expire +zadd +zremrangebyscore\n\
                         user farm-reader on >reader-pw ~thinagent:* +ping +time +zrange +hgetall +xrevrange\n\
                         user admin on >admin-pw ~* +@all\n\
                         user default off\n";

    /// A Redis with these users only, or `None` outside CI without
    /// redis-server.
    fn start() -> Option<(Self, RedisServer)> {
        Self::start_with(None)
    }

    /// The same users, and a TLS port that asks every client for a
    /// certificate of the farm's Redis CA (`redis-ca.pem`, `redis.crt` and
    /// `redis.key` of `pki`); the users connect there (the test's own
    /// checks use the plain port).
    fn start_tls(pki: &Pki) -> Option<(Self, RedisServer)> {
        Self::start_with(Some(pki))
    }

    fn start_with(tls: Option<&Pki>) -> Option<(Self, RedisServer)> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users.acl");
        std::fs::write(&file, Self::USERS).unwrap();
        std::fs::write(dir.path().join("thinagent.pw"), "scanner-pw\n").unwrap();
        std::fs::write(dir.path().join("farm-reader.pw"), "reader-pw\n").unwrap();
        let mut args = vec!["--aclfile".into(), file.display().to_string()];
        let tls_port = tls.map(|pki| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            args.extend([
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                path(pki.path("redis.crt")),
                "--tls-key-file".into(),
                path(pki.path("redis.key")),
                "--tls-ca-cert-file".into(),
                path(pki.path("redis-ca.pem")),
                "--tls-auth-clients".into(),
                "yes".into(),
            ]);
            port
        });
        let redis = RedisServer::start_with(args, "admin:admin-pw@".into())?;
        let (scheme, port) = match tls_port {
            Some(port) => ("rediss://", port),
            None => ("redis://", redis.port),
        };
        Some((Self { dir, scheme, port }, redis))
    }

    fn url(&self, user: &str) -> String {
        format!("{}{user}@127.0.0.1:{}", self.scheme, self.port)
    }

    fn password_file(&self, user: &str) -> PathBuf {
        self.dir.path().join(format!("{user}.pw"))
    }
}

fn path(p: PathBuf) -> String {
    p.display().to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scanner_processes_share_verdicts_events_and_guests_through_one_redis() {
    let Some((acl, mut redis)) = Acl::start() else {
        return;
    };
    let Some(diag) = diag_binary() else {
        return;
    };
    let pki = Pki::new();
    pki.leaf("vm-a", "vm-a", false, &pki.ca);
    // A lookup waits at most this long for Redis (the default is 20 ms; a
    // debug build on a busy machine needs margin, and it stays far below
    // the guest's deadline).
    let a = Scanner::start("esx-a", &pki, &acl, 1_000);
    let b = Scanner::start("esx-b", &pki, &acl, 1_000);
    a.wait_farm_up(1.0).await;
    b.wait_farm_up(1.0).await;

    // Guest vm-a on host A: both files read and scanned.
    let eicar = FileSpec::new("C:\\Users\\vm-a\\eicar.com", 1, 1, EICAR);
    let clean = FileSpec::new("C:\\Windows\\system32\\kernel32.dll", 2, 1, &[0x4d; 5000]);
    let files = [Arc::clone(&eicar), Arc::clone(&clean)];
    let got = a.open_tls(&pki, "vm-a", &files).await;
    assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    assert!(got[1].is_clean(), "{got:?}");
    assert!(a.content_bytes().await >= 5068.0);
    assert_eq!(redis.wait_keys("thinagent:i:*", 2).len(), 2);

    // vm-a moved to host B: B answers from the farm, no content at all.
    let got = b.open_tls(&pki, "vm-a", &files).await;
    assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    assert!(got[1].is_clean(), "{got:?}");
    assert_eq!(b.content_bytes().await, 0.0, "B pulled or took content");
    assert_eq!(b.farm("identity", "hit").await, 2.0);

    // Both scanners' events are on the one stream, each naming its scanner.
    let entries = redis.wait_stream("thinagent:events", |e| {
        e["scanner"] == "esx-b" && e.get("why").map(String::as_str) == Some("disconnected")
    });
    for scanner in ["esx-a", "esx-b"] {
        let kinds: Vec<&str> = entries
            .iter()
            .filter(|e| e["scanner"] == scanner)
            .map(|e| e["type"].as_str())
            .collect();
        for kind in [
            "guest_connected",
            "detection",
            "guest_disconnected",
            "guest",
        ] {
            assert!(kinds.contains(&kind), "{scanner}: no {kind} in {kinds:?}");
        }
    }

    // thinagent-diag reads the whole farm.
    let out = diag_farm(&diag, &acl, &["guests"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = stdout(&out);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    for scanner in ["esx-a", "esx-b"] {
        assert!(
            rows.iter()
                .any(|r| r.starts_with(scanner) && r.contains("tls:CN=vm-a") && r.contains("gone")),
            "no vm-a on {scanner}:\n{table}"
        );
    }
    assert!(
        table.contains("Eicar-Test-Signature at C:\\Users\\vm-a\\eicar.com"),
        "{table}"
    );
    let out = diag_farm(&diag, &acl, &["guests", "--json", "--scanner", "esx-b"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["scanner"], "esx-b");
    assert_eq!(lines[0]["guest"]["name"], "vm-a");
    assert_eq!(lines[0]["guest"]["counters"]["bytes_read"], 0);

    let out = diag_farm(&diag, &acl, &["detections", "--since", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = stdout(&out);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(
        rows.len(),
        3,
        "a header and one detection per scanner:\n{table}"
    );
    assert!(rows[0].starts_with("TIME"), "{table}");
    for (row, scanner) in rows[1..].iter().zip(["esx-a", "esx-b"]) {
        for cell in [
            scanner,
            "(vm-a)",
            "C:\\Users\\vm-a\\eicar.com",
            "Eicar-Test-Signature",
            "denied",
        ] {
            assert!(row.contains(cell), "{cell:?} not in {row:?}:\n{table}");
        }
    }
    let out = diag_farm(&diag, &acl, &["detections", "--json", "--limit", "1"]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "--limit 1: {lines:?}");
    assert_eq!(lines[0]["scanner"], "esx-b", "the newest");
    assert_eq!(lines[0]["event"]["type"], "detection");
    assert_eq!(lines[0]["event"]["cache"], "guest");

    // A signature reload on B (SIGHUP, one hash signature more): B's set
    // differs, so its identity entries of the old set miss and B reads and
    // scans again; the detection is still served from the farm.
    std::fs::write(
        b.signatures.path().join("extra.hdb"),
        "5d41402abc4b2a76b9719d911017c592:5:Test-Hello\n",
    )
    .unwrap();
    b.process.signal("HUP");
    b.wait_reloads(2.0).await;
    let (hits, misses) = (
        b.farm("content", "hit").await,
        b.farm("content", "miss").await,
    );
    let got = b.open_tls(&pki, "vm-a", &files).await;
    assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    assert!(got[1].is_clean(), "{got:?}");
    assert!(
        b.content_bytes().await >= 5068.0,
        "B rescans after its reload"
    );
    assert_eq!(b.farm("content", "hit").await, hits + 1.0, "the detection");
    assert_eq!(
        b.farm("content", "miss").await,
        misses + 1.0,
        "the clean file"
    );

    // The farm's other scanner takes the same update: both share again.
    std::fs::copy(
        b.signatures.path().join("extra.hdb"),
        a.signatures.path().join("extra.hdb"),
    )
    .unwrap();
    a.process.signal("HUP");
    a.wait_reloads(2.0).await;

    // Redis killed mid-run: every open on both scanners answered by the
    // host with the right verdict.
    redis.kill();
    for round in 0..4u64 {
        for (s, name) in [(&a, "desk-a"), (&b, "desk-b")] {
            let files = [
                FileSpec::new("/eicar", 100 + round, 1, EICAR),
                FileSpec::new(
                    "/clean",
                    200 + round,
                    1,
                    format!("clean {name} {round}").as_bytes(),
                ),
            ];
            let got = s.open_tcp(name, &files).await;
            assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
            assert!(got[1].is_clean(), "{got:?}");
        }
    }
    a.wait_farm_up(0.0).await;
    b.wait_farm_up(0.0).await;
    let out = diag_farm(&diag, &acl, &["guests"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the farm's Redis") && err.contains("--redis-url"),
        "{err}"
    );

    // Redis back (empty): sharing resumes, A to B by content.
    redis.run();
    a.wait_farm_up(1.0).await;
    b.wait_farm_up(1.0).await;
    let shared = b"content shared after Redis came back";
    let got = a
        .open_tcp("desk-a", &[FileSpec::new("/after", 400, 1, shared)])
        .await;
    assert!(got[0].is_clean());
    redis.wait_keys("thinagent:c:*", 1);
    let hits = b.farm("content", "hit").await;
    let got = b
        .open_tcp("desk-b", &[FileSpec::new("/elsewhere", 401, 1, shared)])
        .await;
    assert!(got[0].is_clean());
    assert_eq!(b.farm("content", "hit").await, hits + 1.0);
    // And events flow again.
    let entries = redis.wait_stream("thinagent:events", |e| e["scanner"] == "esx-b");
    assert!(!entries.is_empty());
}

/// A Redis TLS port that asks every client for a certificate (Redis's
/// default), signed like the server's by the farm's own CA: a scanner
/// process reaches it with `--farm-ca-file`, `--farm-cert-file` and
/// `--farm-key-file` and shares verdicts, and `thinagent-diag farm` reads it
/// with the same files. Without a client certificate Redis refuses: the
/// scanner says so once and scans on, and `thinagent-diag` says what to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_tls_port_that_asks_for_client_certificates_is_reached_with_the_farm_files() {
    let pki = Pki::new();
    let redis_ca = Pki::make_ca("ThinAgent test farm Redis CA");
    std::fs::write(pki.path("redis-ca.pem"), redis_ca.pem()).unwrap();
    pki.leaf("redis", "redis", true, &redis_ca);
    pki.leaf("scanner-redis", "thinagent", false, &redis_ca);
    pki.leaf("reader-redis", "farm-reader", false, &redis_ca);
    let Some((acl, redis)) = Acl::start_tls(&pki) else {
        return;
    };
    let Some(diag) = diag_binary() else {
        return;
    };
    let farm = |client: Option<&str>| {
        let mut args = vec![
            "--farm-redis-url".to_owned(),
            acl.url("thinagent"),
            "--farm-password-file".to_owned(),
            path(acl.password_file("thinagent")),
            "--farm-ca-file".to_owned(),
            path(pki.path("redis-ca.pem")),
        ];
        if let Some(name) = client {
            args.extend([
                "--farm-cert-file".to_owned(),
                path(pki.path(&format!("{name}.crt"))),
                "--farm-key-file".to_owned(),
                path(pki.path(&format!("{name}.key"))),
            ]);
        }
        args
    };

    let a = Scanner::start_with("esx-tls", &pki, &farm(Some("scanner-redis")), 1_000);
    a.wait_farm_up(1.0).await;
    let got = a
        .open_tcp("desk-t", &[FileSpec::new("/eicar", 1, 1, EICAR)])
        .await;
    assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    assert_eq!(redis.wait_keys("thinagent:c:*", 1).len(), 1);
    assert_eq!(redis.wait_keys("thinagent:guest:esx-tls:*", 1).len(), 1);
    assert_eq!(a.farm("put", "error").await, 0.0);

    let read = |client: Option<&str>| {
        let mut cmd = Command::new(&diag);
        cmd.args(["farm", "guests", "--redis-url", &acl.url("farm-reader")])
            .arg("--password-file")
            .arg(acl.password_file("farm-reader"))
            .arg("--ca-file")
            .arg(pki.path("redis-ca.pem"));
        if let Some(name) = client {
            cmd.arg("--cert-file")
                .arg(pki.path(&format!("{name}.crt")))
                .arg("--key-file")
                .arg(pki.path(&format!("{name}.key")));
        }
        cmd.output().expect("run thinagent-diag")
    };
    let out = read(Some("reader-redis"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = stdout(&out);
    assert!(
        table.lines().skip(1).any(|r| r.starts_with("esx-tls")),
        "{table}"
    );
    let out = read(None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the farm's Redis") && err.contains("--cert-file"),
        "{err}"
    );

    // No client certificate: refused, said once, every open still answered.
    let b = Scanner::start_with("esx-nocert", &pki, &farm(None), 1_000);
    for round in 0..3u64 {
        let got = b
            .open_tcp("desk-u", &[FileSpec::new("/eicar", 10 + round, 1, EICAR)])
            .await;
        assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.m("thinagent_scanner_farm_up").await, 0.0);
    let log = b.process.log_text();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("unreachable")).collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains("WARN") && refused[0].contains("CertificateRequired"),
        "the reason is Redis's TLS alert: {log}"
    );
    assert!(
        redis.keys("thinagent:guest:esx-nocert:*").is_empty(),
        "written without a client certificate"
    );
}
