//! The event sink through the real `thinagent-scanner` binary: a guest
//! opens EICAR, the open is denied, and a loopback webhook receives the
//! guest's connect, the detection (guest identity, path, file identity,
//! threat) and the disconnect; the events file gets the same events. A
//! webhook that fails keeps the events queued on disk across a restart of
//! the scanner, and the next start delivers them, each once.
// Linux only, like service_e2e.rs (SIGTERM, the scanner's process tests).
#![cfg(target_os = "linux")]

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{EICAR, FileSpec, ScannerProcess, connect, metric, run_guest, scrape};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// A loopback HTTP server answering every POST with the status in
/// `status` (changeable while it runs), handing over each body with the
/// status it got.
fn webhook(status: Arc<AtomicU16>) -> (String, mpsc::Receiver<(u16, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/thinagent/events", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            let mut request_line = None;
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_string();
                if l.is_empty() {
                    break;
                }
                if request_line.is_none() {
                    request_line = Some(l.clone());
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            assert_eq!(
                request_line.as_deref(),
                Some("POST /thinagent/events HTTP/1.1")
            );
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let s = status.load(Ordering::SeqCst);
            let _ = write!(
                conn,
                "HTTP/1.1 {s} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if tx.send((s, String::from_utf8(body).unwrap())).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

fn events_of(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Accepted (2xx) POSTs until `n` events arrived.
fn accepted_events(posts: &mpsc::Receiver<(u16, String)>, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let (status, body) = posts
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived: {out:#?}", out.len()));
        if status == 200 {
            out.extend(events_of(&body));
        }
    }
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start(
    tmp: &std::path::Path,
    url: &str,
    events_file: &std::path::Path,
    queue: &std::path::Path,
) -> ScannerProcess {
    ScannerProcess::start(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--metrics",
            "tcp://127.0.0.1:0",
            "--events-webhook-url",
            url,
            "--events-file",
            events_file.to_str().unwrap(),
            "--events-queue-dir",
            queue.to_str().unwrap(),
            "--events-retry-max-ms",
            "200",
            "--quarantine-dir",
            tmp.join("quarantine").to_str().unwrap(),
        ],
        tmp,
        1,
    )
}

fn run_eicar_guest(url: &str, name: &str) {
    let eicar = FileSpec::new("/home/user/Downloads/eicar.com", 41, 1, EICAR);
    rt().block_on(async {
        let r = run_guest(connect(url).await, name, &[eicar], 1, LIMIT).await;
        r.assert_each_answered_once_by_host();
        assert!(
            r.answers[0]
                .clone()
                .unwrap()
                .is_found("Eicar-Test-Signature")
        );
    });
}

fn stop(mut scanner: ScannerProcess) {
    scanner.signal("TERM");
    let deadline = Instant::now() + LIMIT;
    while scanner.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the scanner did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_file_events(path: &std::path::Path) -> Vec<Value> {
    events_of(&std::fs::read_to_string(path).unwrap_or_default())
}

#[test]
fn eicar_denied_and_the_webhook_gets_the_detection() {
    let tmp = tempfile::tempdir().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let (url, posts) = webhook(status);
    let file = tmp.path().join("events.jsonl");
    let queue = tmp.path().join("queue");
    let scanner = start(tmp.path(), &url, &file, &queue);
    run_eicar_guest(scanner.url("tcp://"), "vm-eicar");
    let got = accepted_events(&posts, 3);
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["guest_connected", "detection", "guest_disconnected"],
        "{got:#?}"
    );
    let d = &got[1];
    assert_eq!(d["threat"], "Eicar-Test-Signature");
    assert_eq!(d["engine"], "builtin");
    assert_eq!(d["cache"], "none");
    assert_eq!(d["verdict"], "deny");
    assert_eq!(d["operation"], "open");
    assert_eq!(d["guest"]["peer"], "tcp:127.0.0.1");
    assert!(
        d["guest"]["address"]
            .as_str()
            .unwrap()
            .starts_with("tcp://127.0.0.1:")
    );
    assert_eq!(d["guest"]["name"], "vm-eicar");
    assert_eq!(d["guest"]["os"], "linux");
    assert_eq!(d["guest"]["agent_version"], "0.1.0");
    assert_eq!(d["path"]["display"], "/home/user/Downloads/eicar.com");
    assert_eq!(d["path"]["encoding"], "utf8");
    assert_eq!(d["file"]["volume_serial"], 7);
    assert_eq!(d["file"]["size"], EICAR.len());
    assert_eq!(
        d["file"]["file_id"], "29000000000000000000000000000000",
        "41 as little-endian bytes"
    );
    assert_eq!(d["id"].as_str().unwrap().len(), 32);
    let connected = &got[0];
    assert!(connected["guest"]["protocol_version"].as_u64().unwrap() >= 1);
    assert!(
        got[2]["reason"].as_str().unwrap().contains("goodbye"),
        "{:#?}",
        got[2]
    );
    // The events file has the same events.
    wait_for("three events in the file", || {
        read_file_events(&file).len() == 3
    });
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&read_file_events(&file)), ids(&got));
    // Counted in /metrics.
    let m = scanner.metrics.clone().unwrap();
    let text = rt().block_on(scrape(&m));
    assert_eq!(
        metric(&text, "thinagent_scanner_events_emitted_total"),
        3.0,
        "{text}"
    );
    wait_for("the webhook delivery counted", || {
        let text = rt().block_on(scrape(&m));
        metric(
            &text,
            "thinagent_scanner_events_delivered_total{sink=\"webhook\"}",
        ) == 3.0
    });
    // The quarantine store was opened (and holds nothing yet).
    assert!(tmp.path().join("quarantine/objects").is_dir());
    assert!(scanner.log_text().contains("quarantine store open"));
    stop(scanner);
    assert!(posts.try_recv().is_err(), "nothing sent twice");
}

#[test]
fn events_a_failing_webhook_refused_are_delivered_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("events.jsonl");
    let queue = tmp.path().join("queue");
    // A webhook that fails with 500 while the scanner runs.
    let failing = Arc::new(AtomicU16::new(500));
    let (url, posts) = webhook(failing);
    let scanner = start(tmp.path(), &url, &file, &queue);
    run_eicar_guest(scanner.url("tcp://"), "vm-restart");
    wait_for("three events in the file", || {
        read_file_events(&file).len() == 3
    });
    let m = scanner.metrics.clone().unwrap();
    wait_for("failed webhook deliveries", || {
        let text = rt().block_on(scrape(&m));
        metric(
            &text,
            "thinagent_scanner_events_failed_total{sink=\"webhook\"}",
        ) >= 2.0
            && metric(
                &text,
                "thinagent_scanner_events_queue_depth{sink=\"webhook\"}",
            ) == 3.0
    });
    assert!(
        scanner.log_text().contains("delivery failed"),
        "{}",
        scanner.log_text()
    );
    stop(scanner);
    drop(posts);
    // The next start, with a webhook that accepts: the queued events first.
    let (url, posts) = webhook(Arc::new(AtomicU16::new(200)));
    let scanner = start(tmp.path(), &url, &file, &queue);
    let got = accepted_events(&posts, 3);
    let in_file = read_file_events(&file);
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&got), ids(&in_file), "the same events, in order");
    assert_eq!(got[1]["type"], "detection");
    assert_eq!(got[1]["guest"]["name"], "vm-restart");
    std::thread::sleep(Duration::from_millis(500));
    assert!(posts.try_recv().is_err(), "nothing sent twice");
    // The file got each event once (its queue was empty at the stop).
    assert_eq!(read_file_events(&file).len(), 3);
    stop(scanner);
}
