//! Scanner farms (issue 15): two scanner services on one real
//! `redis-server` share verdicts. What one scanned the other answers from
//! the farm (a TLS guest by its file identity with no content pulled at
//! all, any guest by content); a signature reload makes the reloaded
//! scanner's clean verdicts miss while a detection stays served; Redis
//! killed mid-run changes no verdict and delays no answer, and sharing
//! resumes when it is back. Every event, and each guest's snapshot, goes
//! to the farm's stream and guest hashes; a storm of desktops opening the
//! same files costs one scan per content.
//!
//! Each test starts its own `redis-server` on a free loopback port in a
//! temporary directory (no persistence). Without `redis-server` on PATH the
//! tests say so and pass, except under CI (`CI` set), where it is a
//! failure: .ci/run installs it.
#![cfg(unix)]

use crate::common;
use crate::support::redis_server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{EICAR, FileSpec, Pki, Running, connect, metric, run_guest, tls_connect};
use redis_server::RedisServer;
use thinagent_scanner::config::Config;
use thinagent_scanner::farm::FarmConfig;

const LIMIT: Duration = Duration::from_secs(30);

/// Log lines of this test binary (every test's: filter by Redis port).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("thinagent_scanner::farm=info")
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Farm log lines about the Redis at `port` that contain `what`.
fn log_lines(port: u16, what: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    let needle = format!("127.0.0.1:{port} ");
    text.lines()
        .filter(|l| l.contains(&needle) && l.contains(what))
        .map(str::to_owned)
        .collect()
}

/// A scanner of the farm: TLS and loopback TCP listeners, its own
/// signature directory.
fn scanner_config(pki: &Pki, redis: &RedisServer, signatures: &Path) -> Config {
    Config {
        listen: vec!["tls://127.0.0.1:0".into(), "tcp://127.0.0.1:0".into()],
        tls: Some(pki.server_config()),
        signatures: vec![signatures.to_owned()],
        farm: FarmConfig {
            redis_url: Some(redis.url()),
            // Generous: a debug build on a busy 2-core machine; the
            // default is 20 ms.
            deadline_ms: 2_000,
            ..FarmConfig::default()
        },
        ..Config::default()
    }
}

fn m(svc: &Running, name_and_labels: &str) -> f64 {
    metric(&svc.metrics(), name_and_labels)
}

fn farm(svc: &Running, op: &str, result: &str) -> f64 {
    m(
        svc,
        &format!("thinagent_scanner_farm_requests_total{{op=\"{op}\",result=\"{result}\"}}"),
    )
}

/// The farm's metric lines, for failure messages.
fn farm_lines(svc: &Running) -> String {
    svc.metrics()
        .lines()
        .filter(|l| l.starts_with("thinagent_scanner_farm"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn bytes_read(svc: &Running) -> f64 {
    m(svc, "thinagent_scanner_bytes_read_total")
}

/// Opens `files` as TLS guest `cert` on `svc`; every answer.
async fn open_tls(
    svc: &Running,
    pki: &Pki,
    cert: &str,
    files: &[Arc<FileSpec>],
) -> Vec<common::Answer> {
    let client = pki.client(cert);
    let stream = tls_connect(svc.url("tls://"), &client)
        .await
        .expect("TLS connect");
    answers(run_guest(stream, cert, files, 4, LIMIT).await)
}

/// Opens `files` as a loopback TCP guest on `svc`.
async fn open_tcp(svc: &Running, name: &str, files: &[Arc<FileSpec>]) -> Vec<common::Answer> {
    let stream = connect(svc.url("tcp://")).await;
    answers(run_guest(stream, name, files, 4, LIMIT).await)
}

fn answers(r: common::GuestReport) -> Vec<common::Answer> {
    r.assert_each_answered_once_by_host();
    r.answers.into_iter().map(Option::unwrap).collect()
}

/// Waits (up to 10 s) until `svc`'s `farm_up` is `up`.
async fn wait_farm_up(svc: &Running, up: f64) {
    let until = Instant::now() + Duration::from_secs(10);
    while m(svc, "thinagent_scanner_farm_up") != up {
        assert!(Instant::now() < until, "farm_up never became {up}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signature_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn digest_hex(svc: &Running) -> String {
    thinagent_scanner::records::hex(svc.handle.context().signatures.load().farm_digest())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scanners_share_verdicts_and_a_reload_rescans_but_keeps_detections() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pki = Pki::new();
    pki.leaf("vm-a", "vm-a", false, &pki.ca);
    pki.leaf("vm-b", "vm-b", false, &pki.ca);
    let (dir_a, dir_b) = (signature_dir(), signature_dir());
    let a = Running::start(scanner_config(&pki, &redis, dir_a.path())).await;
    let b = Running::start(scanner_config(&pki, &redis, dir_b.path())).await;
    assert_eq!(
        digest_hex(&a),
        digest_hex(&b),
        "same signatures, same digest"
    );

    let eicar = FileSpec::new("C:\\eicar.com", 1, 1, EICAR);
    let clean = FileSpec::new("C:\\Windows\\system32\\kernel32.dll", 2, 1, &[0x4d; 5000]);
    let files = [Arc::clone(&eicar), Arc::clone(&clean)];
    // Guest vm-a on host A: both read and scanned.
    let got = open_tls(&a, &pki, "vm-a", &files).await;
    assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    assert!(got[1].is_clean(), "{got:?}");
    assert!(bytes_read(&a) >= 5068.0);
    // A shared: two content verdicts, the detection also by content alone,
    // both verdicts by vm-a's (farm-wide) identity.
    assert_eq!(redis.wait_keys("thinagent:c:*", 2).len(), 2);
    assert_eq!(redis.wait_keys("thinagent:d:*", 1).len(), 1);
    let identity_keys = redis.wait_keys("thinagent:i:*", 2);
    assert_eq!(identity_keys.len(), 2, "{identity_keys:?}");
    assert!(
        identity_keys
            .iter()
            .all(|k| k.starts_with("thinagent:i:tls:CN=vm-a:") && k.ends_with(&digest_hex(&a))),
        "{identity_keys:?}"
    );
    let deny_key = redis.keys("thinagent:d:*").remove(0);
    let value = redis.get(&deny_key).unwrap();
    assert!(
        value.starts_with(r#"{"v":"deny","t":"Eicar-Test-Signature","e":"builtin","at":"#),
        "{value}"
    );
    let ttl = redis.ttl(&deny_key);
    assert!((86_000..=86_400).contains(&ttl), "TTL {ttl}");

    // vm-a moved to host B: answered from the farm by identity, no
    // content pulled.
    let got = open_tls(&b, &pki, "vm-a", &files).await;
    assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    assert!(got[1].is_clean(), "{got:?}");
    assert_eq!(bytes_read(&b), 0.0, "B pulled content");
    assert_eq!(farm(&b, "identity", "hit"), 2.0);

    // Another guest on B, same contents under its own identities: the
    // content is read (B must hash it) but not scanned: farm content hits.
    let eicar_b = FileSpec::new("C:\\Users\\x\\eicar.txt", 11, 1, EICAR);
    let clean_b = FileSpec::new("C:\\Windows\\system32\\kernel32.dll", 12, 1, &[0x4d; 5000]);
    let got = open_tls(&b, &pki, "vm-b", &[eicar_b, clean_b]).await;
    assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    assert!(got[1].is_clean(), "{got:?}");
    assert!(bytes_read(&b) >= 5068.0);
    assert_eq!(farm(&b, "content", "hit"), 2.0);
    assert_eq!(farm(&b, "identity", "miss"), 2.0);

    // A loopback TCP guest's identity names this host only: its verdicts
    // are shared by content, never by identity.
    let tcp_file = FileSpec::new("/usr/bin/tool", 21, 1, b"a tcp guest's own clean tool");
    let got = open_tcp(&a, "lab-1", &[tcp_file]).await;
    assert!(got[0].is_clean(), "{got:?}");
    assert_eq!(redis.wait_keys("thinagent:c:*", 3).len(), 3);
    let identity_keys = redis.keys("thinagent:i:*");
    assert!(
        identity_keys
            .iter()
            .all(|k| k.starts_with("thinagent:i:tls:")),
        "{identity_keys:?}"
    );

    // Sizing: what one entry costs Redis.
    let content_key = redis.keys("thinagent:c:*").remove(0);
    let (c_bytes, d_bytes, i_bytes) = (
        redis.memory_usage(&content_key),
        redis.memory_usage(&deny_key),
        redis.memory_usage(&identity_keys[0]),
    );
    eprintln!(
        "MEMORY USAGE: content entry {c_bytes} B ({content_key}), detection entry {d_bytes} B, identity entry {i_bytes} B"
    );
    for bytes in [c_bytes, d_bytes, i_bytes] {
        assert!((100..=1024).contains(&bytes), "{bytes} bytes per entry");
    }

    // A signature reload on B (a hash signature file more): B's digest
    // changes, its clean verdicts of the old set miss and it scans again;
    // the detection is still served from the farm.
    std::fs::write(
        dir_b.path().join("extra.hdb"),
        "5d41402abc4b2a76b9719d911017c592:5:Test-Hello\n",
    )
    .unwrap();
    b.handle.reload().await.unwrap();
    assert_ne!(digest_hex(&a), digest_hex(&b));
    let (content_hits, content_misses) = (farm(&b, "content", "hit"), farm(&b, "content", "miss"));
    let read_before = bytes_read(&b);
    let got = open_tls(&b, &pki, "vm-a", &files).await;
    assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    assert!(got[1].is_clean(), "{got:?}");
    assert!(
        bytes_read(&b) >= read_before + 5068.0,
        "the identity entries of the old set missed: both read"
    );
    assert_eq!(
        farm(&b, "content", "hit"),
        content_hits + 1.0,
        "the detection is served from the farm under any signature set"
    );
    assert_eq!(
        farm(&b, "content", "miss"),
        content_misses + 1.0,
        "the clean file is scanned again"
    );
    // What B scanned under its new set is shared under its new digest.
    let new_digest = digest_hex(&b);
    let under_new = redis.wait_keys(&format!("thinagent:c:*:{new_digest}"), 1);
    assert_eq!(under_new.len(), 1, "{under_new:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Every event of the sink's kinds, and a snapshot of each guest when it
/// connects and goes, is an entry of the farm's stream naming the scanner;
/// each guest has a hash (with its TTL) in the guest index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_guests_go_to_the_farm_stream() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pki = Pki::new();
    let dir = signature_dir();
    let mut config = scanner_config(&pki, &redis, dir.path());
    config.farm.scanner_name = Some("esx-a".into());
    config.farm.guest_ttl_secs = 3_600;
    let svc = Running::start(config).await;
    wait_farm_up(&svc, 1.0).await;
    let got = open_tcp(
        &svc,
        "desk-1",
        &[
            FileSpec::new("/home/u/eicar.com", 1, 1, EICAR),
            FileSpec::new("/home/u/clean.txt", 2, 1, b"clean"),
        ],
    )
    .await;
    assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
    let entries = redis.wait_stream("thinagent:events", |e| {
        e.get("why").map(String::as_str) == Some("disconnected")
    });
    let kinds: Vec<&str> = entries.iter().map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "guest_connected",
            "guest",
            "detection",
            "guest",
            "guest_disconnected",
            "guest"
        ],
        "{entries:?}"
    );
    assert!(
        entries.iter().all(|e| e["scanner"] == "esx-a"),
        "{entries:?}"
    );
    // The detection is the event sink's JSON.
    let detection: serde_json::Value = serde_json::from_str(&entries[2]["event"]).unwrap();
    assert_eq!(detection["type"], "detection");
    assert_eq!(detection["threat"], "Eicar-Test-Signature");
    assert_eq!(detection["guest"]["name"], "desk-1");
    assert_eq!(detection["path"]["display"], "/home/u/eicar.com");
    assert_eq!(detection["id"].as_str().map(str::len), Some(32));
    assert_eq!(entries[3]["why"], "detection");
    let with_detection: serde_json::Value = serde_json::from_str(&entries[3]["guest"]).unwrap();
    assert_eq!(with_detection["connected"], true);
    assert!(
        with_detection["last_detection"]
            .as_str()
            .is_some_and(|d| d.contains("Eicar-Test-Signature")),
        "{with_detection}"
    );
    // The guest's snapshot: the stream entry names its hash.
    let gone = &entries[5];
    let key = &gone["key"];
    assert!(key.starts_with("thinagent:guest:esx-a:tcp"), "{key}");
    let view: serde_json::Value = serde_json::from_str(&gone["guest"]).unwrap();
    assert_eq!(view["name"], "desk-1");
    assert_eq!(view["connected"], false);
    assert_eq!(view["detections"], 1);
    let hash = redis.hgetall(key);
    assert_eq!(hash["scanner"], "esx-a");
    assert_eq!(
        hash["view"], gone["guest"],
        "the hash holds the last snapshot"
    );
    let ttl = redis.ttl(key);
    assert!((3_500..=3_600).contains(&ttl), "TTL {ttl}");
    let mut c = redis.sync_conn().unwrap();
    let index: Vec<String> = redis::cmd("ZRANGE")
        .arg("thinagent:guests")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(index, std::slice::from_ref(key));
    assert!(farm(&svc, "publish", "ok") >= 1.0);
    assert_eq!(farm(&svc, "publish", "dropped"), 0.0);
    assert_eq!(farm(&svc, "publish", "error"), 0.0);
    svc.shutdown().await;
}

/// A logon storm on one scanner: desktops open the same files at once
/// while Redis is slow to answer. Each content is scanned once: the first
/// lookup of a content leads, the others wait for its verdict in the local
/// cache instead of each missing in Redis and scanning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_on_one_scanner_scans_each_content_once() {
    let Some(redis) = RedisServer::start_with(
        vec!["--enable-debug-command".into(), "yes".into()],
        String::new(),
    ) else {
        return;
    };
    let pki = Pki::new();
    let dir = signature_dir();
    let svc = Running::start(scanner_config(&pki, &redis, dir.path())).await;
    wait_farm_up(&svc, 1.0).await;
    // Redis stalls for 1 s (less than the 2 s lookup deadline): every
    // lookup of the storm is in flight at once.
    let mut stall = redis.sync_conn().unwrap();
    let sleeper = std::thread::spawn(move || {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(1)
            .query::<()>(&mut stall)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let desk = |n: u64| {
        vec![
            FileSpec::new("/a.dll", 10 * n + 1, 1, &[0x41; 3000]),
            FileSpec::new("/b.dll", 10 * n + 2, 1, &[0x42; 3000]),
            FileSpec::new("/eicar.com", 10 * n + 3, 1, EICAR),
        ]
    };
    let (d1, d2, d3, d4, d5, d6) = (desk(1), desk(2), desk(3), desk(4), desk(5), desk(6));
    let got = tokio::join!(
        open_tcp(&svc, "desk-1", &d1),
        open_tcp(&svc, "desk-2", &d2),
        open_tcp(&svc, "desk-3", &d3),
        open_tcp(&svc, "desk-4", &d4),
        open_tcp(&svc, "desk-5", &d5),
        open_tcp(&svc, "desk-6", &d6),
    );
    sleeper.join().unwrap();
    for answers in [got.0, got.1, got.2, got.3, got.4, got.5] {
        assert!(
            answers[0].is_clean() && answers[1].is_clean(),
            "{answers:?}"
        );
        assert!(answers[2].is_found("Eicar-Test-Signature"), "{answers:?}");
    }
    let queries = m(&svc, "thinagent_scanner_queries_total");
    let hits = m(&svc, "thinagent_scanner_cache_hits_total{kind=\"content\"}")
        + m(&svc, "thinagent_scanner_cache_hits_total{kind=\"guest\"}");
    assert_eq!(queries, 18.0);
    assert_eq!(
        queries - hits,
        3.0,
        "engine scans: one per content\n{}",
        farm_lines(&svc)
    );
    assert!(
        farm(&svc, "content", "coalesced") >= 1.0,
        "{}",
        farm_lines(&svc)
    );
    svc.shutdown().await;
}

/// A guest's `Health` report (protocol §14.8) is a change of its state: the
/// farm gets its snapshot (a `guest` entry, `why` `health`, with the
/// on-access state an admin looks for) and its hash is updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_report_reaches_the_farm() {
    use thinagent_guest::{
        FailMode, Instant as GuestInstant, Session, SessionConfig, SessionEvent,
    };
    use thinagent_protocol::{AgentVersion, Capabilities, HealthState, OsKind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pki = Pki::new();
    let dir = signature_dir();
    let mut config = scanner_config(&pki, &redis, dir.path());
    config.farm.scanner_name = Some("esx-h".into());
    let svc = Running::start(config).await;
    wait_farm_up(&svc, 1.0).await;
    let addr = svc.url("tcp://").trim_start_matches("tcp://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let session_config = SessionConfig {
        query_timeout: Duration::from_secs(5),
        fail_mode: FailMode::Closed,
        os: OsKind::Windows,
        agent_version: AgentVersion {
            major: 1,
            minor: 0,
            patch: 0,
        },
        capabilities: Capabilities(Capabilities::READ_CONTENT.0 | Capabilities::INLINE_CONTENT.0),
        guest_name: "vdi-0042",
    };
    let mut s: Box<Session<16, 256, 4>> = Box::new(Session::new(&session_config));
    let t0 = Instant::now();
    let now = || GuestInstant::from_millis(t0.elapsed().as_millis() as u64);
    s.start(now());
    let (mut rbuf, mut tbuf) = (vec![0u8; 70_000], vec![0u8; 70_000]);
    let until = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        assert!(Instant::now() < until, "no health snapshot on the stream");
        while let Some(ev) = s.poll_event() {
            if let SessionEvent::Connected { .. } = ev {
                assert!(s.send_health(&thinagent_protocol::Health {
                    policy_version: 7,
                    state: HealthState(HealthState::ON_ACCESS.0),
                    fail_mode: thinagent_protocol::FailMode::Closed,
                    uptime_ms: 61_000,
                    events_sent: 17,
                    cache_hits: 5,
                    denied: 0,
                    fail_decisions: 0,
                    sessions: 1,
                }));
            }
        }
        while let Some(n) = s.poll_transmit(&mut tbuf) {
            stream.write_all(&tbuf[..n]).await.unwrap();
        }
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut rbuf)).await
        {
            assert!(n > 0, "the scanner closed the session");
            s.receive(&rbuf[..n], now());
        }
        let entries = redis.stream("thinagent:events");
        if entries
            .iter()
            .any(|e| e.get("why").map(String::as_str) == Some("health"))
        {
            break entries;
        }
    };
    let health = entries
        .iter()
        .find(|e| e.get("why").map(String::as_str) == Some("health"))
        .unwrap();
    assert_eq!(health["scanner"], "esx-h");
    let view: serde_json::Value = serde_json::from_str(&health["guest"]).unwrap();
    assert_eq!(view["name"], "vdi-0042");
    assert_eq!(view["connected"], true);
    assert_eq!(view["policy_version"], 7);
    assert_eq!(view["health"]["on_access"], true);
    assert_eq!(view["health"]["fail_mode"], "closed");
    assert_eq!(redis.hgetall(&health["key"])["view"], health["guest"]);
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_changes_no_verdict_and_sharing_resumes_when_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    logs();
    let port = redis.port;
    let pki = Pki::new();
    let (dir_a, dir_b) = (signature_dir(), signature_dir());
    let mut config_a = scanner_config(&pki, &redis, dir_a.path());
    // A short deadline (the default is 20 ms; a debug build on a busy
    // machine needs some margin): lookups while Redis dies wait no longer.
    config_a.farm.deadline_ms = 200;
    let a = Running::start(config_a).await;
    let b = Running::start(scanner_config(&pki, &redis, dir_b.path())).await;
    wait_farm_up(&a, 1.0).await;
    wait_farm_up(&b, 1.0).await;
    let content = |n: u64| format!("clean content number {n} of this test").into_bytes();
    let got = open_tcp(&a, "g", &[FileSpec::new("/a", 1, 1, &content(1))]).await;
    assert!(got[0].is_clean());
    redis.wait_keys("thinagent:c:*", 1);

    redis.kill();
    // Every open is answered with the right verdict: each lookup of the new
    // content ends (an error, the deadline, or not tried) instead of
    // holding the open, and none is answered by the dead Redis.
    let answered = |svc: &Running| farm(svc, "content", "hit") + farm(svc, "content", "miss");
    let ended = |svc: &Running| {
        ["error", "timeout", "skipped"]
            .iter()
            .map(|r| farm(svc, "content", r))
            .sum::<f64>()
    };
    let (answered_before, ended_before) = (answered(&a), ended(&a));
    for round in 0..5u64 {
        let files = [
            FileSpec::new("/eicar", 100 + round, 1, EICAR),
            FileSpec::new("/clean", 200 + round, 1, &content(10 + round)),
        ];
        let got = open_tcp(&a, "g", &files).await;
        assert!(got[0].is_found("Eicar-Test-Signature"), "{got:?}");
        assert!(got[1].is_clean(), "{got:?}");
    }
    assert_eq!(answered(&a), answered_before, "{}", farm_lines(&a));
    assert!(
        ended(&a) >= ended_before + 5.0,
        "each new content's lookup ended: {}",
        farm_lines(&a)
    );
    wait_farm_up(&a, 0.0).await;
    // B, asked nothing meanwhile, notices by its probe.
    wait_farm_up(&b, 0.0).await;
    let lost = log_lines(port, "unreachable");
    assert!(!lost.is_empty(), "no WARN when Redis was lost");
    // Still down: lookups are not even tried.
    let skipped = farm(&a, "content", "skipped");
    let got = open_tcp(&a, "g", &[FileSpec::new("/x", 300, 1, &content(300))]).await;
    assert!(got[0].is_clean());
    assert!(
        farm(&a, "content", "skipped") > skipped,
        "lookups tried while down"
    );
    assert!(
        farm(&a, "publish", "skipped") >= 2.0,
        "events (connected, disconnected) not counted while down: {}",
        farm_lines(&a)
    );

    // Back (empty: it kept nothing): sharing resumes.
    redis.run();
    wait_farm_up(&a, 1.0).await;
    wait_farm_up(&b, 1.0).await;
    let shared = FileSpec::new("/after", 400, 1, &content(400));
    let got = open_tcp(&a, "g", std::slice::from_ref(&shared)).await;
    assert!(got[0].is_clean());
    assert_eq!(redis.wait_keys("thinagent:c:*", 1).len(), 1);
    let hits = farm(&b, "content", "hit");
    let got = open_tcp(
        &b,
        "other",
        &[FileSpec::new("/elsewhere", 401, 1, &content(400))],
    )
    .await;
    assert!(got[0].is_clean());
    assert_eq!(
        farm(&b, "content", "hit"),
        hits + 1.0,
        "B answered from the farm: {}\n{:?}",
        farm_lines(&b),
        log_lines(port, "farm cache")
    );
    // One WARN per loss, one INFO per return (A: up at start, back once).
    let warn_a: Vec<_> = lost.iter().filter(|l| l.contains("WARN")).collect();
    assert!(!warn_a.is_empty(), "{lost:?}");
    let all_lost = log_lines(port, "unreachable");
    assert_eq!(
        all_lost.len(),
        2,
        "one WARN per scanner for one loss: {all_lost:?}"
    );
    let answers = log_lines(port, "answers; sharing");
    assert_eq!(
        answers.len(),
        4,
        "INFO at start and when back, per scanner: {answers:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A full Redis (`maxmemory` with `noeviction`) refuses the writes: the
/// scanner answers as before, says so once, and shares again once there is
/// room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_writes_and_nothing_else_changes() {
    let Some(redis) = RedisServer::start_with(
        vec![
            "--maxmemory".into(),
            "64mb".into(),
            "--maxmemory-policy".into(),
            "noeviction".into(),
        ],
        String::new(),
    ) else {
        return;
    };
    logs();
    let pki = Pki::new();
    let dir = signature_dir();
    let svc = Running::start(scanner_config(&pki, &redis, dir.path())).await;
    wait_farm_up(&svc, 1.0).await;
    let mut c = redis.sync_conn().unwrap();
    // Fill it: 2 MiB of data, then a maxmemory below that.
    let filler = vec![b'f'; 256 << 10];
    for i in 0..8 {
        redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&filler)
            .query::<()>(&mut c)
            .unwrap();
    }
    let set_maxmemory = |c: &mut redis::Connection, v: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(v)
            .query::<()>(c)
            .unwrap();
    };
    set_maxmemory(&mut c, "1mb");
    let got = open_tcp(&svc, "g", &[FileSpec::new("/e", 1, 1, EICAR)]).await;
    assert!(got[0].is_found("Eicar-Test-Signature"));
    let until = Instant::now() + Duration::from_secs(10);
    while log_lines(redis.port, "refuses writes").is_empty() {
        assert!(
            Instant::now() < until,
            "no WARN about refused writes: {}\n{:?}",
            farm_lines(&svc),
            log_lines(redis.port, "farm cache")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = open_tcp(&svc, "g", &[FileSpec::new("/c", 2, 1, b"clean while full")]).await;
    assert!(got[0].is_clean());
    assert!(farm(&svc, "put", "error") >= 1.0);
    assert_eq!(
        m(&svc, "thinagent_scanner_farm_up"),
        1.0,
        "reads still work"
    );
    assert!(redis.keys("thinagent:*").is_empty(), "written while full");
    // Room again: shared again, said once.
    set_maxmemory(&mut c, "64mb");
    let got = open_tcp(&svc, "g", &[FileSpec::new("/c2", 3, 1, b"clean with room")]).await;
    assert!(got[0].is_clean());
    assert_eq!(redis.wait_keys("thinagent:c:*", 1).len(), 1);
    let refused = log_lines(redis.port, "refuses writes");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("WARN") && refused[0].contains("OOM"),
        "{refused:?}"
    );
    let taken = log_lines(redis.port, "takes writes again");
    assert_eq!(taken.len(), 1, "{taken:?}");
    svc.shutdown().await;
}

/// The ACL user docs/operations.md tells to create (its own prefix, only
/// the commands the scanner sends) is enough, with its password from
/// `farm.password_file`; without the password Redis refuses and the
/// scanner scans on, saying why once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_the_documented_permissions_shares_verdicts() {
    let acl_dir = tempfile::tempdir().unwrap();
    let acl = acl_dir.path().join("users.acl");
    std::fs::write(
        &acl,
        "user thinagent on >s3cret-pw ~thinagent:* +get +mget +set +ping +xadd +hset +expire +zadd +zremrangebyscore\n\
         user admin on >admin-pw ~* +@all\n\
         user default off\n",
    )
    .unwrap();
    let Some(redis) = RedisServer::start_with(
        vec!["--aclfile".into(), acl.display().to_string()],
        "admin:admin-pw@".into(),
    ) else {
        return;
    };
    logs();
    let pki = Pki::new();
    let dir = signature_dir();
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "s3cret-pw\n").unwrap();
    let mut config = scanner_config(&pki, &redis, dir.path());
    config.farm.redis_url = Some(format!("redis://thinagent@127.0.0.1:{}", redis.port));
    config.farm.password_file = Some(password);
    let svc = Running::start(config.clone()).await;
    wait_farm_up(&svc, 1.0).await;
    let got = open_tcp(&svc, "g", &[FileSpec::new("/e", 1, 1, EICAR)]).await;
    assert!(got[0].is_found("Eicar-Test-Signature"));
    assert_eq!(redis.wait_keys("thinagent:d:*", 1).len(), 1);
    assert_eq!(redis.wait_keys("thinagent:c:*", 1).len(), 1);
    assert_eq!(redis.wait_keys("thinagent:guest:*", 1).len(), 1);
    assert_eq!(farm(&svc, "put", "error"), 0.0);
    svc.shutdown().await;
    // Every write the scanner makes is allowed: the events, the guests.
    let entries = redis.wait_stream("thinagent:events", |e| e["type"] == "guest_disconnected");
    assert!(
        entries.iter().any(|e| e["type"] == "detection"),
        "{entries:?}"
    );

    // A wrong password: refused, the scanner scans on.
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-it\n").unwrap();
    config.farm.password_file = Some(wrong.clone());
    let svc = Running::start(config).await;
    let got = open_tcp(&svc, "g", &[FileSpec::new("/e2", 2, 1, EICAR)]).await;
    assert!(got[0].is_found("Eicar-Test-Signature"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(m(&svc, "thinagent_scanner_farm_up"), 0.0);
    let refused = log_lines(redis.port, "unreachable");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("WARN") && refused[0].contains("authentication failed"),
        "{refused:?}"
    );

    // A reload (SIGHUP in the binary) reads the password file again, with
    // no restart: a missing file is refused and changes nothing ...
    let reloads = |svc: &Running, result: &str| {
        m(
            svc,
            &format!("thinagent_scanner_farm_reloads_total{{result=\"{result}\"}}"),
        )
    };
    std::fs::remove_file(&wrong).unwrap();
    let e = svc.handle.reload_farm().await.unwrap_err().to_string();
    assert!(e.contains("farm.password_file"), "{e}");
    assert_eq!(reloads(&svc, "failed"), 1.0);
    // ... the right password in it connects.
    std::fs::write(&wrong, "s3cret-pw\n").unwrap();
    assert!(svc.handle.reload_farm().await.unwrap());
    assert_eq!(reloads(&svc, "ok"), 1.0);
    wait_farm_up(&svc, 1.0).await;
    let clean = |n: u64| FileSpec::new("/c", 10 + n, 1, format!("clean {n}").as_bytes());
    assert!(open_tcp(&svc, "g", &[clean(1)]).await[0].is_clean());
    assert_eq!(redis.wait_keys("thinagent:c:*", 2).len(), 2);
    // A wrong new password: Redis refuses the new connection, so the one
    // in use stays and sharing goes on.
    std::fs::write(&wrong, "not-it-either\n").unwrap();
    let e = svc.handle.reload_farm().await.unwrap_err().to_string();
    assert!(e.contains("the connection in use stays"), "{e}");
    assert_eq!(reloads(&svc, "failed"), 2.0);
    assert!(open_tcp(&svc, "g", &[clean(3)]).await[0].is_clean());
    assert_eq!(redis.wait_keys("thinagent:c:*", 3).len(), 3);

    // A rotation: Redis takes a new password and drops the scanner's
    // connections, so the old password is refused; the reload of the
    // rotated file brings sharing back.
    let mut admin = redis.sync_conn().unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", "thinagent", "resetpass", ">rotated-pw"][..])
        .query::<()>(&mut admin)
        .unwrap();
    redis::cmd("CLIENT")
        .arg(&["KILL", "USER", "thinagent"][..])
        .query::<i64>(&mut admin)
        .unwrap();
    wait_farm_up(&svc, 0.0).await;
    std::fs::write(&wrong, "rotated-pw\n").unwrap();
    assert!(svc.handle.reload_farm().await.unwrap());
    wait_farm_up(&svc, 1.0).await;
    assert!(open_tcp(&svc, "g", &[clean(2)]).await[0].is_clean());
    assert_eq!(redis.wait_keys("thinagent:c:*", 4).len(), 4);
    svc.shutdown().await;
}

/// `--check-config` never connects: a farm whose Redis is not there passes.
#[test]
fn check_config_validates_the_farm_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let password: PathBuf = dir.path().join("redis-password");
    std::fs::write(&password, "secret\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_thinagent-scanner"))
            .arg("--check-config")
            .args(["--listen", "tcp://127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "--farm-redis-url",
        "redis://thinagent@127.0.0.1:1",
        "--farm-password-file",
        password.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["--farm-redis-url", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("farm.redis_url"));
    let out = run(&[
        "--farm-redis-url",
        "redis://127.0.0.1:1",
        "--farm-password-file",
        "/nonexistent/pw",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("farm.password_file"));
    // TLS files: for rediss:// only, and read (a missing one is named).
    let out = run(&[
        "--farm-redis-url",
        "redis://127.0.0.1:1",
        "--farm-ca-file",
        password.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("farm.ca_file") && err.contains("rediss://"),
        "{err}"
    );
    let out = run(&[
        "--farm-redis-url",
        "rediss://127.0.0.1:1",
        "--farm-ca-file",
        "/nonexistent/ca.pem",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("farm.ca_file = /nonexistent/ca.pem: cannot read it"),
        "{err}"
    );
}
