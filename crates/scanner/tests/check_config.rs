//! `thinagent-scanner --check-config` makes the checks the start makes (one
//! code path, `service::prepare`), so "configuration OK" means the start
//! gets past everything but binding. Run through the real binary.
// Linux only (mkfifo, file modes), like service_e2e.rs.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn run_check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_thinagent-scanner"))
        .args(args)
        .arg("--check-config")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the real service did on `args` (plus a loopback TCP listener).
#[derive(Debug)]
enum Start {
    /// It exited: code and stderr.
    Exited(i32, String),
    /// It printed "listening on" (then it was killed).
    Listening,
}

fn start_outcome(args: &[&str]) -> Start {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_thinagent-scanner"))
        .args(["--listen", "tcp://127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = line_tx.send(line);
    });
    let line = line_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the start neither listened nor exited (blocked?)");
    if line.starts_with("listening on") {
        let _ = child.kill();
        let _ = child.wait();
        return Start::Listening;
    }
    let out = child.wait_with_output().unwrap();
    Start::Exited(
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn audit(path: &Path) -> [String; 2] {
    ["--audit-log".into(), path.to_str().unwrap().into()]
}

fn args(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

#[test]
fn check_config_refuses_the_audit_paths_the_start_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory, and a file in a missing directory: the start refuses
    // them, and so does the check, saying what to do.
    let cases = [
        (tmp.path().to_path_buf(), "give a file path"),
        (tmp.path().join("missing/audit.jsonl"), "does not exist"),
    ];
    for (path, hint) in cases {
        let a = audit(&path);
        let (code, out, err) = run_check(&args(&a));
        assert_eq!(code, 2, "{}: {out}{err}", path.display());
        assert!(err.contains("audit log") && err.contains(hint), "{err}");
        match start_outcome(&args(&a)) {
            Start::Exited(code, err) => {
                assert_ne!(code, 0);
                assert!(err.contains(hint), "{err}");
            }
            Start::Listening => panic!("the start accepted {}", path.display()),
        }
    }
    // A file this user may not write (unless root, who may).
    let ro = tmp.path().join("read-only.jsonl");
    std::fs::write(&ro, "").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    if std::fs::OpenOptions::new().append(true).open(&ro).is_err() {
        let (code, _, err) = run_check(&args(&audit(&ro)));
        assert_eq!(code, 2);
        assert!(err.contains("permissions"), "{err}");
    } else {
        eprintln!("SKIPPED the read-only case: this user (root?) may write it");
    }
}

#[test]
fn check_config_accepts_a_good_audit_path_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    // A new file: checked by creating it, then removed.
    let new = tmp.path().join("audit.jsonl");
    let (code, out, err) = run_check(&args(&audit(&new)));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(!new.exists(), "--check-config left a new audit file behind");
    // An existing file: kept as it was.
    std::fs::write(&new, "{\"old\":1}\n").unwrap();
    assert_eq!(run_check(&args(&audit(&new))).0, 0);
    assert_eq!(std::fs::read_to_string(&new).unwrap(), "{\"old\":1}\n");
    // A FIFO nobody reads: neither the check nor the start waits for a
    // reader.
    let fifo = tmp.path().join("audit.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("SKIPPED the FIFO case: mkfifo is not available");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_thinagent-scanner"))
        .args(args(&audit(&fifo)))
        .arg("--check-config")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..200 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("--check-config blocked on a FIFO without a reader");
    }
    assert_eq!(status.unwrap().code(), Some(0));
    let started = start_outcome(&args(&audit(&fifo)));
    assert!(matches!(started, Start::Listening), "{started:?}");
}

#[test]
fn long_signature_names_are_cut_with_one_warning_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let sigs = tmp.path().join("sigs");
    std::fs::create_dir_all(&sigs).unwrap();
    let long = "N".repeat(200 * 1024);
    std::fs::write(
        sigs.join("long.hdb"),
        format!(
            "# two long names\n\
             5241dbb51231025ef3dd87f377f8eaba:28:{long}\n\
             fd6e1801ad0304aeeb00077bad52a9c6:14:{long}\n"
        ),
    )
    .unwrap();
    let (code, out, err) = run_check(&["--signatures", sigs.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 hash signatures"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning per file: {err:.2000}");
    let w = warnings[0];
    assert!(
        w.contains("long.hdb:2:") && w.contains("cut to 256"),
        "{w:.2000}"
    );
    assert!(w.contains("2 name(s)"), "{w:.2000}");
    assert!(
        err.len() < 4096,
        "the whole name was printed: {} bytes",
        err.len()
    );
}

#[test]
fn a_limit_left_unset_follows_the_ones_set() {
    // Used to fail: `limits.max_read_chunk = 65480: must be in 1..=8136`.
    let (code, out, err) = run_check(&["--max-frame-len", "8192"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    let (code, _, err) = run_check(&["--heartbeat-interval-ms", "60000"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_check(&["--idle-timeout-ms", "5000"]);
    assert_eq!(code, 0, "{err}");
    // The same through a config file.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nmax_frame_len = 8192\n").unwrap();
    assert_eq!(run_check(&["--config", cfg.to_str().unwrap()]).0, 0);
}

#[test]
fn contradictory_explicit_limits_name_both_settings() {
    let (code, _, err) = run_check(&["--max-frame-len", "8192", "--max-read-chunk", "65480"]);
    assert_eq!(code, 2);
    for needle in [
        "limits.max_read_chunk = 65480",
        "limits.max_frame_len = 8192",
        "8136",
    ] {
        assert!(err.contains(needle), "{err} lacks {needle}");
    }
    // Inline content must fit a frame as well (0 turns it off).
    let (code, _, err) = run_check(&["--max-frame-len", "8192", "--max-inline-len", "65447"]);
    assert_eq!(code, 2);
    for needle in [
        "limits.max_inline_len = 65447",
        "limits.max_frame_len = 8192",
        "8103",
    ] {
        assert!(err.contains(needle), "{err} lacks {needle}");
    }
    let (code, _, err) = run_check(&["--max-frame-len", "8192", "--max-inline-len", "0"]);
    assert_eq!(code, 0, "{err}");
    // One from the file, one from the command line.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nheartbeat_interval_ms = 10000\n").unwrap();
    let (code, _, err) = run_check(&[
        "--config",
        cfg.to_str().unwrap(),
        "--idle-timeout-ms",
        "5000",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("limits.idle_timeout_ms = 5000")
            && err.contains("limits.heartbeat_interval_ms = 10000"),
        "{err}"
    );
}

/// The event queue and the quarantine directories: the check refuses what
/// the start refuses, names the key, and creates nothing.
#[test]
fn check_config_checks_the_event_and_quarantine_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain-file");
    std::fs::write(&plain, "").unwrap();
    let under_file = plain.join("sub");
    let events_file = tmp.path().join("events.jsonl");
    let cases: [(Vec<String>, &str); 4] = [
        (
            vec![
                "--events-file".into(),
                events_file.display().to_string(),
                "--events-queue-dir".into(),
                under_file.display().to_string(),
            ],
            "events.queue_dir",
        ),
        (
            vec![
                "--events-file".into(),
                tmp.path().join("missing/e.jsonl").display().to_string(),
                "--events-queue-dir".into(),
                tmp.path().join("q").display().to_string(),
            ],
            "events.file",
        ),
        (
            vec!["--events-webhook-url".into(), "http://127.0.0.1:9/x".into()],
            "events.queue_dir",
        ),
        (
            vec!["--quarantine-dir".into(), under_file.display().to_string()],
            "quarantine.dir",
        ),
    ];
    for (a, key) in &cases {
        let (code, out, err) = run_check(&args(a));
        assert_eq!(code, 2, "{a:?}: {out}{err}");
        assert!(err.contains(key), "{a:?}: {err}");
        match start_outcome(&args(a)) {
            Start::Exited(code, err) => {
                assert_ne!(code, 0);
                assert!(err.contains(key), "{err}");
            }
            Start::Listening => panic!("the start accepted {a:?}"),
        }
    }
    // Good paths: OK, and nothing created.
    let queue = tmp.path().join("new/queue");
    let quarantine = tmp.path().join("new/quarantine");
    let good = [
        "--events-file".to_string(),
        events_file.display().to_string(),
        "--events-queue-dir".into(),
        queue.display().to_string(),
        "--quarantine-dir".into(),
        quarantine.display().to_string(),
    ];
    let (code, out, err) = run_check(&args(&good));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!tmp.path().join("new").exists() && !events_file.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["plain-file"], "the check left files behind");
    // And the start accepts them.
    assert!(matches!(start_outcome(&args(&good)), Start::Listening));
}

/// The tls:// files are read by `--check-config` as by the start: a
/// missing certificate, or a revocation list that is not one, is named;
/// `--tls-crl` without TLS says what is missing.
#[test]
fn check_config_reads_the_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(d.join("s.crt"), cert.pem()).unwrap();
    std::fs::write(d.join("s.key"), key.serialize_pem()).unwrap();
    let p = |n: &str| d.join(n).display().to_string();
    let tls = |cert: &str, crl: Option<&str>| {
        let mut a = vec![
            "--listen".to_string(),
            "tls://127.0.0.1:0".into(),
            "--tls-cert".into(),
            p(cert),
            "--tls-key".into(),
            p("s.key"),
            "--tls-client-ca".into(),
            p("s.crt"),
        ];
        if let Some(crl) = crl {
            a.extend(["--tls-crl".into(), p(crl)]);
        }
        a
    };
    let (code, out, err) = run_check(&args(&tls("s.crt", None)));
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run_check(&args(&tls("none.crt", None)));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tls.cert") && err.contains("none.crt"),
        "{err}"
    );
    let (code, _, err) = run_check(&args(&tls("s.crt", Some("s.crt"))));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tls.crl") && err.contains("X509 CRL"), "{err}");
    let (code, _, err) = run_check(&["--listen", "tcp://127.0.0.1:0", "--tls-crl", "/x.crl"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-cert"), "{err}");
}
