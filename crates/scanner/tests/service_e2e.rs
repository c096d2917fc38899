//! End to end through the real `thinagent-scanner` binary: a guest built on
//! `thinagent_guest::Session` over TCP and Unix sockets (vsock when a
//! loopback transport exists), signature files, SIGHUP reloads, the audit
//! log, the metrics endpoint, `--check-config` and shutdown.
// Off Linux (the Windows CI job) this file is skipped:
// Unix sockets, SIGHUP/SIGTERM and AF_VSOCK (tokio-vsock is a Linux-only dependency).
#![cfg(target_os = "linux")]

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{EICAR, FileSpec, ScannerProcess, connect, metric, run_guest, scrape};
use thinagent_protocol::Decision;

const LIMIT: Duration = Duration::from_secs(30);
/// `printf 'hash-signature-test-content\n' | md5sum`
const HASHED: &[u8] = b"hash-signature-test-content\n";
const HASHED_HDB: &str = "5241dbb51231025ef3dd87f377f8eaba:28:Test.Hash.Custom\n";
const YARA_RULE: &str =
    "rule ThinAgent_Test_Yara { strings: $a = \"thinagent-yara-test-marker\" condition: $a }\n";

fn signature_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("sigs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("custom.hdb"), HASHED_HDB).unwrap();
    std::fs::write(dir.join("rules.yar"), YARA_RULE).unwrap();
    dir
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn tcp_and_unix_verdicts_cache_changed_file_audit_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let sigs = signature_dir(tmp.path());
    let sock = tmp.path().join("scanner.sock");
    let audit = tmp.path().join("audit.jsonl");
    let unix_url = format!("unix://{}", sock.display());
    let scanner = ScannerProcess::start(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--listen",
            &unix_url,
            "--signatures",
            sigs.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
            "--metrics",
            "tcp://127.0.0.1:0",
        ],
        tmp.path(),
        2,
    );
    let eicar = FileSpec::new("/guest/eicar.com", 1, 1, EICAR);
    let clean = FileSpec::new("/guest/readme.txt", 2, 1, b"just a clean text file\n");
    let hashed = FileSpec::new("/guest/hashed.bin", 3, 1, HASHED);
    let yara = FileSpec::new(
        "/guest/marked.dat",
        4,
        1,
        b"prefix bytes thinagent-yara-test-marker suffix bytes",
    );
    // Same file id, written again: new size, new last-write time, new content.
    let changed_infected = FileSpec::new("/guest/readme.txt", 2, 2, EICAR);
    let changed_clean = FileSpec::new("/guest/readme.txt", 2, 3, b"clean again, longer text\n");
    rt().block_on(async {
        for (n, url) in [scanner.url("tcp://"), &unix_url].into_iter().enumerate() {
            let opens = vec![
                eicar.clone(),
                clean.clone(),
                hashed.clone(),
                yara.clone(),
                clean.clone(),
            ];
            let r = run_guest(connect(url).await, &format!("vm{n}"), &opens, 8, LIMIT).await;
            r.assert_each_answered_once_by_host();
            let a: Vec<_> = r.answers.iter().map(|a| a.clone().unwrap()).collect();
            assert!(a[0].is_found("Eicar-Test-Signature"), "{url}: {:?}", a[0]);
            assert!(a[1].is_clean(), "{url}: {:?}", a[1]);
            assert!(a[2].is_found("Test.Hash.Custom"), "{url}: {:?}", a[2]);
            assert!(a[3].is_found("ThinAgent_Test_Yara"), "{url}: {:?}", a[3]);
            assert!(a[4].is_clean(), "{url}: {:?}", a[4]);
            // The changed file is rescanned, not answered from the cache.
            let r = run_guest(
                connect(url).await,
                &format!("vm{n}"),
                &[changed_infected.clone(), changed_clean.clone()],
                1,
                LIMIT,
            )
            .await;
            r.assert_each_answered_once_by_host();
            let a = r.answers[0].clone().unwrap();
            assert!(
                a.is_found("Eicar-Test-Signature"),
                "{url}: changed file: {a:?}"
            );
            assert!(r.answers[1].clone().unwrap().is_clean(), "{url}");
            // A reopen of an unchanged file: answered from the identity
            // cache, no content pulled.
            let r = run_guest(
                connect(url).await,
                &format!("vm{n}"),
                std::slice::from_ref(&clean),
                1,
                LIMIT,
            )
            .await;
            r.assert_each_answered_once_by_host();
            assert!(r.answers[0].clone().unwrap().is_clean(), "{url}");
        }
        // A broken peer is logged (and counted below), the service goes on.
        let mut bad = connect(scanner.url("tcp://")).await;
        tokio::io::AsyncWriteExt::write_all(&mut bad, b"not a frame at all")
            .await
            .unwrap();
        let (_, eof) = common::read_to_eof(&mut bad, LIMIT).await;
        assert!(eof);
        let text = scrape(scanner.metrics.as_deref().unwrap()).await;
        assert_eq!(
            metric(
                &text,
                "thinagent_scanner_protocol_errors_total{kind=\"bad_magic\"}"
            ),
            1.0
        );
        assert_eq!(
            metric(&text, "thinagent_scanner_sessions_total"),
            7.0,
            "{text}"
        );
        assert_eq!(
            metric(&text, "thinagent_scanner_verdicts_total{decision=\"deny\"}"),
            8.0,
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                "thinagent_scanner_verdicts_total{decision=\"allow\"}"
            ),
            8.0,
            "{text}"
        );
        // The repeated clean open hit the identity cache on both transports.
        assert!(metric(&text, "thinagent_scanner_cache_hits_total{kind=\"guest\"}") >= 2.0);
        assert_eq!(metric(&text, "thinagent_scanner_queries_total"), 16.0);
        assert!(metric(&text, "thinagent_scanner_bytes_read_total") > 0.0);
        assert_eq!(
            metric(&text, "thinagent_scanner_query_latency_seconds_count"),
            16.0
        );
    });
    // The audit lines are written by the scanner's audit thread just after
    // each verdict: wait (bounded) until all 16 are there.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&audit).unwrap();
        // Verdict lines; the guests' session lines (`"record":"guest"`)
        // come between them.
        let verdicts: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l.get("record").is_none())
            .collect();
        if verdicts.len() >= 16 || std::time::Instant::now() >= deadline {
            assert!(
                text.lines().any(|l| l.contains(r#""record":"guest""#)),
                "{text}"
            );
            break verdicts;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(lines.len(), 16);
    let first = &lines[0];
    for key in [
        "time",
        "guest",
        "path",
        "verdict",
        "threat",
        "engine",
        "bytes",
        "duration_ms",
        "cache",
    ] {
        assert!(first.get(key).is_some(), "audit line lacks {key}: {first}");
    }
    let yara_line = lines
        .iter()
        .find(|l| l["threat"] == "ThinAgent_Test_Yara")
        .expect("yara detection audited");
    assert_eq!(yara_line["verdict"], "deny");
    assert_eq!(yara_line["engine"], "yara");
    assert_eq!(yara_line["path"], "/guest/marked.dat");
    assert!(lines.iter().any(|l| l["cache"] == "guest"));
    let log = scanner.log_text();
    assert!(log.contains("threat found"), "{log}");
    assert!(
        log.contains("session closed: protocol error") && log.contains("undecodable input"),
        "{log}"
    );
}

#[test]
fn sighup_reloads_signatures_and_a_failed_reload_keeps_the_old_set() {
    let tmp = tempfile::tempdir().unwrap();
    let sigs = signature_dir(tmp.path());
    let scanner = ScannerProcess::start(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--signatures",
            sigs.to_str().unwrap(),
            "--metrics",
            "tcp://127.0.0.1:0",
        ],
        tmp.path(),
        1,
    );
    // `printf 'reload-marker\n' | md5sum`
    let target = FileSpec::new("/guest/later.bin", 9, 1, b"reload-marker\n");
    let url = scanner.url("tcp://").to_string();
    let metrics = scanner.metrics.clone().unwrap();
    let check = |name: &'static str, target: Arc<FileSpec>| {
        let url = url.clone();
        async move {
            let r = run_guest(connect(&url).await, name, &[target], 1, LIMIT).await;
            r.assert_each_answered_once_by_host();
            r.answers[0].clone().unwrap()
        }
    };
    let wait_reloads = |result: &'static str, n: f64| {
        let metrics = metrics.clone();
        async move {
            let key = format!("thinagent_scanner_signature_reloads_total{{result=\"{result}\"}}");
            for _ in 0..200 {
                if metric(&scrape(&metrics).await, &key) >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no {result} reload #{n}");
        }
    };
    rt().block_on(async {
        assert!(check("a", target.clone()).await.is_clean());
        std::fs::write(
            sigs.join("added.hdb"),
            "fd6e1801ad0304aeeb00077bad52a9c6:14:Test.Reload.Added\n",
        )
        .unwrap();
        scanner.signal("HUP");
        wait_reloads("ok", 2.0).await;
        // Same guest name and file identity: the new generation invalidated
        // the cached clean verdict.
        let a = check("a", target.clone()).await;
        assert!(a.is_found("Test.Reload.Added"), "{a:?}");
        // A broken file: the reload fails, the old set (with the added
        // signature and EICAR) stays active.
        std::fs::write(sigs.join("broken.hdb"), "this is not a signature\n").unwrap();
        scanner.signal("HUP");
        wait_reloads("failed", 1.0).await;
        let a = check("b", target.clone()).await;
        assert!(a.is_found("Test.Reload.Added"), "{a:?}");
        let a = check("b", FileSpec::new("/e", 10, 1, EICAR)).await;
        assert!(a.is_found("Eicar-Test-Signature"));
    });
    let log = scanner.log_text();
    assert!(log.contains("signature reload failed"), "{log}");
    assert!(
        log.contains("broken.hdb"),
        "the failed reload names the file: {log}"
    );
}

/// SIGHUP on the binary also reads the `[tls]` files again: the guest a
/// new revocation list revokes loses its session at once and is refused at
/// its next handshake, while another guest's session goes on.
#[test]
fn sighup_reloads_the_revocation_list_and_ends_the_revoked_session() {
    use common::{HostFrame, Pki, decode_all, hello_v1, read_to_eof, read_until, tls_connect};
    use tokio::io::AsyncWriteExt;

    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (vm_a, _) = pki.leaf("vm-a", "vm-a", false, &pki.ca);
    pki.leaf("vm-c", "vm-c", false, &pki.ca);
    let crl = pki.path("guest.crl");
    std::fs::write(&crl, common::revocation_list(&pki.ca, &[])).unwrap();
    let arg = |p: &Path| p.to_str().unwrap().to_string();
    let tls = pki.server_config();
    let scanner = ScannerProcess::start(
        &[
            "--listen",
            "tls://127.0.0.1:0",
            "--tls-cert",
            &arg(&tls.cert),
            "--tls-key",
            &arg(&tls.key),
            "--tls-client-ca",
            &arg(&tls.client_ca),
            "--tls-crl",
            &arg(&crl),
            "--metrics",
            "tcp://127.0.0.1:0",
        ],
        tmp.path(),
        1,
    );
    let url = scanner.url("tls://").to_string();
    let metrics = scanner.metrics.clone().unwrap();
    let (client_a, client_c) = (pki.client("vm-a"), pki.client("vm-c"));
    rt().block_on(async {
        let mut a = tls_connect(&url, &client_a).await.unwrap();
        a.write_all(&hello_v1("vm-a")).await.unwrap();
        let frames = read_until(&mut a, LIMIT, |f| f.contains(&HostFrame::HelloAck)).await;
        assert!(frames.contains(&HostFrame::HelloAck), "{frames:?}");
        let c = tls_connect(&url, &client_c).await.unwrap();

        std::fs::write(&crl, common::revocation_list(&pki.ca, &[&vm_a])).unwrap();
        scanner.signal("HUP");
        let (bytes, eof) = read_to_eof(&mut a, LIMIT).await;
        assert!(eof, "vm-a's session outlived the reload");
        assert!(
            decode_all(&bytes).contains(&HostFrame::Goodbye(
                thinagent_protocol::GoodbyeReason::Shutdown
            )),
            "{:?}",
            decode_all(&bytes)
        );
        let text = scrape(&metrics).await;
        for counter in [
            "thinagent_scanner_tls_reloads_total{result=\"ok\"}",
            "thinagent_scanner_tls_sessions_untrusted_total",
        ] {
            assert_eq!(metric(&text, counter), 1.0, "{counter}");
        }
        // Refused at the handshake now: the connection ends before a Hello
        // is answered.
        let refused = match tls_connect(&url, &client_a).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s.write_all(&hello_v1("vm-a")).await;
                let (bytes, eof) = read_to_eof(&mut s, LIMIT).await;
                eof && !decode_all(&bytes).contains(&HostFrame::HelloAck)
            }
        };
        assert!(refused, "revoked vm-a got a session after the reload");
        // vm-c's session, open all along, is still answered.
        let r = run_guest(c, "vm-c", &[FileSpec::new("/e", 1, 1, EICAR)], 1, LIMIT).await;
        let answer = r.answers[0].clone();
        assert!(
            answer
                .as_ref()
                .is_some_and(|a| a.is_found("Eicar-Test-Signature")),
            "{answer:?}"
        );
    });
    let log = scanner.log_text();
    assert!(log.contains("tls files reloaded"), "{log}");
    assert!(log.contains("no longer accept"), "{log}");
}

fn run_check(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thinagent-scanner"))
        .args(args)
        .arg("--check-config")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_exit_codes_and_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, _) = run_check(&[]);
    assert_eq!(code, 0);
    assert!(out.contains("configuration OK"), "{out}");
    assert!(out.contains("tcp://127.0.0.1:5317"), "{out}");
    let sigs = signature_dir(tmp.path());
    let (code, out, err) = run_check(&["--signatures", sigs.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 hash signatures") && out.contains("1 YARA rules"),
        "{out}"
    );
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/thinagent-scanner.toml");
    assert_eq!(run_check(&["--config", dist.to_str().unwrap()]).0, 0);
    // A broken rule file: named, exit 2, nothing half-loaded.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("ok.hdb"), HASHED_HDB).unwrap();
    std::fs::write(
        bad.join("broken.yar"),
        "rule broken { condition: nonsense( }\n",
    )
    .unwrap();
    let (code, _, err) = run_check(&["--signatures", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("broken.yar"), "{err}");
    // A bad hash line names file and line.
    std::fs::remove_file(bad.join("broken.yar")).unwrap();
    std::fs::write(bad.join("two.hdb"), format!("{HASHED_HDB}zz:1\n")).unwrap();
    let (code, _, err) = run_check(&["--signatures", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("two.hdb") && err.contains('2'), "{err}");
    // clamd configured but not answering.
    let nowhere = format!("unix://{}", tmp.path().join("no-clamd.sock").display());
    let (code, _, err) = run_check(&["--clamd", &nowhere]);
    assert_eq!(code, 2);
    assert!(err.contains("clamd"), "{err}");
    // Bad URL, unknown key, bad range.
    let (code, _, err) = run_check(&["--listen", "http://x:1"]);
    assert_eq!(code, 2);
    assert!(err.contains("http://x:1"), "{err}");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nmax_sesions = 3\n").unwrap();
    let (code, _, err) = run_check(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("max_sesions"), "{err}");
    let (code, _, err) = run_check(&["--max-frame-len", "100"]);
    assert_eq!(code, 2);
    assert!(err.contains("max_frame_len"), "{err}");
    // The command line overrides the file.
    std::fs::write(&cfg, "[limits]\nmax_sessions = 0\n").unwrap();
    assert_eq!(run_check(&["--config", cfg.to_str().unwrap()]).0, 2);
    assert_eq!(
        run_check(&["--config", cfg.to_str().unwrap(), "--max-sessions", "5"]).0,
        0
    );
}

#[test]
fn sigterm_closes_sessions_and_removes_the_unix_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("s.sock");
    let url = format!("unix://{}", sock.display());
    let mut scanner = ScannerProcess::start(&["--listen", &url], tmp.path(), 1);
    rt().block_on(async {
        let mut idle = connect(&url).await;
        use tokio::io::AsyncWriteExt;
        idle.write_all(&common::hello_v1("idle")).await.unwrap();
        let frames = common::read_until(&mut idle, LIMIT, |f| !f.is_empty()).await;
        assert_eq!(frames, [common::HostFrame::HelloAck]);
        scanner.signal("TERM");
        // The connected guest is told Goodbye(Shutdown).
        let frames = common::read_until(&mut idle, LIMIT, |f| {
            f.iter().any(|f| matches!(f, common::HostFrame::Goodbye(_)))
        })
        .await;
        assert!(
            frames.contains(&common::HostFrame::Goodbye(
                thinagent_protocol::GoodbyeReason::Shutdown
            )),
            "{frames:?}"
        );
    });
    let status = scanner.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "the socket file is removed on exit");
}

#[test]
fn no_arguments_serves_the_embedded_default() {
    if std::net::TcpListener::bind("127.0.0.1:5317").is_err() {
        println!("SKIP: 127.0.0.1:5317 is in use; cannot test the embedded default here");
        return;
    }
    let expect = rt().block_on(async {
        match tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(u32::MAX, 5317)) {
            Ok(_) => 2,
            Err(_) => 1,
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let scanner = ScannerProcess::start(&[], tmp.path(), expect);
    assert!(
        scanner.urls.contains(&"tcp://127.0.0.1:5317".to_string()),
        "{:?}",
        scanner.urls
    );
    if expect == 2 {
        assert!(scanner.urls.contains(&"vsock://any:5317".to_string()));
    } else {
        assert!(
            scanner.log_text().contains("AF_VSOCK"),
            "{}",
            scanner.log_text()
        );
    }
    rt().block_on(async {
        let r = run_guest(
            connect("tcp://127.0.0.1:5317").await,
            "default",
            &[FileSpec::new("/e", 1, 1, EICAR)],
            1,
            LIMIT,
        )
        .await;
        assert_eq!(r.answers[0].as_ref().unwrap().decision, Decision::Deny);
    });
}

#[test]
fn vsock_loopback_end_to_end_or_skip() {
    let port = 20_000 + std::process::id() % 20_000;
    let probe = rt().block_on(async {
        tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(u32::MAX, port)).map(drop)
    });
    if let Err(e) = probe {
        println!("SKIP: no AF_VSOCK on this kernel ({e}); vsock end to end not run");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("vsock://any:{port}");
    let scanner = ScannerProcess::start(&["--listen", &listen], tmp.path(), 1);
    rt().block_on(async {
        // CID 1 = VMADDR_CID_LOCAL, the only CID a test may connect to.
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(1, port)),
        )
        .await;
        let Ok(Ok(stream)) = stream else {
            println!(
                "SKIP: AF_VSOCK exists but no loopback transport (vsock_loopback) answers on CID 1"
            );
            return;
        };
        let r = run_guest(
            stream,
            "vsock-guest",
            &[
                FileSpec::new("/e", 1, 1, EICAR),
                FileSpec::new("/c", 2, 1, b"clean"),
            ],
            2,
            LIMIT,
        )
        .await;
        r.assert_each_answered_once_by_host();
        assert!(
            r.answers[0]
                .as_ref()
                .unwrap()
                .is_found("Eicar-Test-Signature")
        );
        assert!(r.answers[1].as_ref().unwrap().is_clean());
        assert!(scanner.log_text().contains("vsock://1:"));
    });
}

/// The audit log on a FIFO whose reader never reads (what a hung NFS mount
/// or a stuck log shipper looks like): the sink blocks, yet every guest's
/// query is answered, a new guest is still served, `/metrics` answers, and
/// the records the sink could not take are counted.
#[test]
fn a_blocked_audit_sink_never_delays_a_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("audit.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mkfifo is missing"
        );
        eprintln!("SKIPPED: mkfifo is not available");
        return;
    }
    // The reader opens the FIFO (which lets the scanner's open of it
    // return) and then never reads.
    let (close_reader, reader_closes) = std::sync::mpsc::channel::<()>();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&fifo).unwrap();
            let _ = reader_closes.recv();
            drop(f);
        })
    };
    let scanner = ScannerProcess::start(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--audit-log",
            fifo.to_str().unwrap(),
            "--metrics",
            "tcp://127.0.0.1:0",
        ],
        tmp.path(),
        1,
    );
    // More verdicts than the pipe (64 KiB) and the audit queue hold.
    let opens: Vec<_> = (0..6000u64)
        .map(|i| {
            FileSpec::new(
                &format!("/guest/file-{i}.txt"),
                100 + i,
                1,
                format!("clean file {i}\n").as_bytes(),
            )
        })
        .collect();
    rt().block_on(async {
        let r = run_guest(
            connect(scanner.url("tcp://")).await,
            "vm-a",
            &opens,
            16,
            LIMIT,
        )
        .await;
        r.assert_each_answered_once_by_host();
        assert!(r.answers.iter().all(|a| a.clone().unwrap().is_clean()));
        // a new guest is still served while the sink stays blocked
        let r = run_guest(
            connect(scanner.url("tcp://")).await,
            "vm-b",
            &opens[..1],
            1,
            LIMIT,
        )
        .await;
        r.assert_each_answered_once_by_host();
        let text = scrape(scanner.metrics.as_deref().unwrap()).await;
        assert_eq!(metric(&text, "thinagent_scanner_queries_total"), 6001.0);
        assert!(
            metric(&text, "thinagent_scanner_audit_records_not_written_total") > 0.0,
            "records the blocked sink could not take are counted"
        );
    });
    close_reader.send(()).unwrap();
    reader.join().unwrap();
    drop(scanner);
}

/// One peer that connects and disconnects 1,000 times, and one that sends
/// garbage 300 times, cause a few log lines each and a summary, not a line
/// per event; a guest beside them is logged as usual.
#[test]
fn log_lines_peers_cause_are_rate_limited_per_peer_and_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let mut scanner = ScannerProcess::start(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--metrics",
            "tcp://127.0.0.1:0",
        ],
        tmp.path(),
        1,
    );
    let url = scanner.url("tcp://").to_string();
    rt().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let goodbye = common::frame(
            thinagent_protocol::Message::Goodbye(thinagent_protocol::Goodbye {
                reason: thinagent_protocol::GoodbyeReason::Shutdown,
            }),
            0,
        );
        for n in 0..1000 {
            let mut s = common::connect_from(&url, "127.0.0.2").await;
            s.write_all(&common::hello_v1(&format!("churn{n}")))
                .await
                .unwrap();
            s.write_all(&goodbye).await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut sink)).await;
        }
        for _ in 0..300 {
            let mut s = common::connect_from(&url, "127.0.0.3").await;
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut sink)).await;
        }
        let r = run_guest(
            connect(&url).await,
            "good",
            &[FileSpec::new("/e", 1, 1, EICAR)],
            1,
            LIMIT,
        )
        .await;
        assert!(
            r.answers[0]
                .as_ref()
                .unwrap()
                .is_found("Eicar-Test-Signature")
        );
        let m = scrape(scanner.metrics.as_deref().unwrap()).await;
        assert!(
            metric(&m, "thinagent_scanner_log_lines_suppressed_total") >= 1000.0,
            "{m}"
        );
    });
    // Summaries of windows still open are logged at shutdown.
    scanner.signal("TERM");
    assert!(scanner.child.wait().unwrap().success());
    let log = scanner.log_text();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let churn = |l: &&str| l.contains("127.0.0.2");
    let churn_lines = log.lines().filter(churn).count();
    let garbage_lines = log.lines().filter(|l| l.contains("127.0.0.3")).count();
    assert!(
        churn_lines <= 20,
        "{churn_lines} lines about one churning peer:\n{log}"
    );
    assert!(
        garbage_lines <= 10,
        "{garbage_lines} lines about one garbage peer:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("127.0.0.2") && l.contains("995 more like this in the last")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("127.0.0.3") && l.contains("more like this")),
        "{log}"
    );
    // The good guest is logged as usual: its threat line is there.
    assert_eq!(count("threat found"), 1, "{log}");
}

/// The audit log on a real file system that fills up (a 256 KiB tmpfs):
/// every verdict is still sent, records that cannot be written are counted
/// (not logged one by one), once space returns records are written again,
/// and every line of the file is a whole record.
#[test]
fn a_full_disk_never_delays_a_verdict_and_leaves_only_whole_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=256k",
            "thinagent-test",
            mnt.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mounting a tmpfs failed (CI runs as root)"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let audit = mnt.join("audit.jsonl");
    // Leave a few KiB free: the first records fit, the rest hit ENOSPC.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(8192))
        .unwrap();
    let scanner = ScannerProcess::start(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--audit-log",
            audit.to_str().unwrap(),
            "--metrics",
            "tcp://127.0.0.1:0",
        ],
        tmp.path(),
        1,
    );
    let opens: Vec<_> = (0..400u64)
        .map(|i| {
            FileSpec::new(
                &format!("/guest/a-rather-long-directory-name/file-{i}.txt"),
                1000 + i,
                1,
                if i % 10 == 0 {
                    EICAR.to_vec()
                } else {
                    format!("clean file {i}\n").into_bytes()
                }
                .as_slice(),
            )
        })
        .collect();
    rt().block_on(async {
        let r = run_guest(
            connect(scanner.url("tcp://")).await,
            "vm-a",
            &opens,
            8,
            LIMIT,
        )
        .await;
        r.assert_each_answered_once_by_host();
        for (i, a) in r.answers.iter().enumerate() {
            let a = a.as_ref().unwrap();
            assert_eq!(
                a.is_found("Eicar-Test-Signature"),
                i % 10 == 0,
                "{i}: {a:?}"
            );
        }
        // The writer thread reports failures as it meets them.
        let mut not_written = 0.0;
        for _ in 0..100 {
            let text = scrape(scanner.metrics.as_deref().unwrap()).await;
            not_written = metric(&text, "thinagent_scanner_audit_records_not_written_total");
            if not_written > 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(not_written > 0.0, "ENOSPC records are counted");
        // Space returns: the next verdicts are audited again.
        std::fs::remove_file(&filler).unwrap();
        let after: Vec<_> = (0..5u64)
            .map(|i| FileSpec::new(&format!("/after/{i}"), 9000 + i, 1, EICAR))
            .collect();
        let r = run_guest(
            connect(scanner.url("tcp://")).await,
            "vm-b",
            &after,
            1,
            LIMIT,
        )
        .await;
        r.assert_each_answered_once_by_host();
        let mut lines = Vec::new();
        for _ in 0..100 {
            lines = std::fs::read_to_string(&audit)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            if lines.iter().filter(|l| l.contains("/after/")).count() == 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            lines.iter().filter(|l| l.contains("/after/")).count(),
            5,
            "records after the disk had space again"
        );
        assert!(
            lines.len() < 405,
            "some records were dropped: {}",
            lines.len()
        );
        eprintln!(
            "audit: {} lines written, {not_written} not written",
            lines.len()
        );
        // Every line is one whole record.
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a whole record ({e}): {l:?}"));
            assert!(v["verdict"].is_string() || v["record"] == "guest", "{l}");
        }
        let text = std::fs::read_to_string(&audit).unwrap();
        assert!(text.ends_with('\n'));
    });
    let log = scanner.log_text();
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    assert!(
        errors <= 4,
        "one line per state change, not per record:\n{log}"
    );
    drop(scanner);
}
