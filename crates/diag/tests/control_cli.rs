//! `thinagent-diag guests`, `remediate` and `scan-guest` as a person and a
//! script see them: the requests they send, their tables, progress and exit
//! codes, against a stand-in control socket that answers as the scanner's
//! does (`crates/scanner/tests/control_socket.rs` checks the scanner's side
//! of the same lines against the real service and a real guest session).
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;

/// Serves one connection on `dir/control.sock`: reads one request line,
/// sends it back through the returned channel, answers with `answers`.
fn stand_in(dir: &Path, answers: &[&str]) -> (PathBuf, mpsc::Receiver<serde_json::Value>) {
    let path = dir.join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let answers: Vec<String> = answers.iter().map(|s| (*s).to_owned()).collect();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        tx.send(serde_json::from_str(&line).unwrap()).unwrap();
        let mut w = stream;
        for a in answers {
            writeln!(w, "{a}").unwrap();
        }
    });
    (path, rx)
}

fn diag(args: &[&str], control: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thinagent-diag"))
        .args(args)
        .arg("--control")
        .arg(control)
        .env_remove("THINAGENT_CONTROL")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const GUESTS: &str = r#"{"ok":true,"guests":[{"identity":"vsock:cid=5","address":"vsock://5:1031","name":"web-01","os":"linux","agent_version":"1.2.3","protocol_version":2,"actions":["remediate","scan-tree"],"connected":true,"connected_since":"2026-12-03T18:00:00Z","last_seen":"2026-12-03T18:05:00Z","policy_version":4,"health":{"at":"2026-12-03T18:05:00Z","fail_mode":"closed","on_access":true,"scan_running":false,"uptime_secs":300,"events_sent":10,"cache_hits":2,"denied":1,"fail_decisions":0,"sessions":1},"detections":1,"last_detection":"Eicar-Test-Signature at /srv/eicar.com"},{"identity":"vsock:cid=9","name":"db-02","os":"windows","agent_version":"0.1.0","protocol_version":1,"actions":[],"connected":false,"connected_since":"2026-12-03T17:00:00Z","last_seen":"2026-12-03T17:30:00Z","policy_version":null,"health":null,"detections":0,"last_detection":null}]}"#;

#[test]
fn guests_prints_a_table_of_every_guest() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(dir.path(), &[GUESTS]);
    let out = diag(&["guests"], &socket);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rx.recv().unwrap(), serde_json::json!({"cmd": "guests"}));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("IDENTITY"), "{stdout}");
    assert!(lines[0].contains("LAST DETECTION"));
    assert!(lines[1].starts_with("vsock:cid=5"), "{stdout}");
    for cell in [
        "vsock://5:1031",
        "web-01",
        "linux",
        "1.2.3",
        "connected",
        "closed",
        "remediate,scan-tree",
        "Eicar-Test-Signature at /srv/eicar.com",
    ] {
        assert!(lines[1].contains(cell), "{cell} missing: {stdout}");
    }
    assert!(
        lines[2].contains("db-02") && lines[2].contains("gone"),
        "{stdout}"
    );
    // Columns line up: every row's NAME starts where the header's does.
    let name_col = lines[0].find("NAME").unwrap();
    assert_eq!(&lines[1][name_col..name_col + 6], "web-01");
    assert_eq!(&lines[2][name_col..name_col + 5], "db-02");
}

#[test]
fn guests_json_passes_the_answer_through() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _rx) = stand_in(dir.path(), &[GUESTS]);
    let out = diag(&["guests", "--json"], &socket);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["guests"][1]["name"], "db-02");
}

#[test]
fn an_unreachable_socket_says_what_to_check_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = diag(&["guests"], &dir.path().join("nothing.sock"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot reach the scanner's control socket"),
        "{stderr}"
    );
    assert!(stderr.contains("control_socket"), "{stderr}");
}

#[test]
fn remediate_exit_codes_follow_the_guests_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(
        dir.path(),
        &[
            r#"{"ok":true,"guest":"vsock:cid=5","path":"/srv/eicar.com","threat":"Eicar-Test-Signature","status":"done","detail":"done"}"#,
        ],
    );
    let out = diag(&["remediate", "web-01", "/srv/eicar.com"], &socket);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        rx.recv().unwrap(),
        serde_json::json!({"cmd": "remediate", "guest": "web-01", "path": "/srv/eicar.com", "action": "delete", "timeout_ms": 10000})
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "/srv/eicar.com: Eicar-Test-Signature on vsock:cid=5: done (done)"
    );

    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(
        dir.path(),
        &[
            r#"{"ok":false,"guest":"vsock:cid=5","path":"/srv/eicar.com","threat":"Eicar-Test-Signature","status":"changed","detail":"the file at that path is not the one judged"}"#,
        ],
    );
    let out = diag(
        &["remediate", "web-01", "/srv/eicar.com", "--truncate"],
        &socket,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(rx.recv().unwrap()["action"], "truncate");
    assert!(text(&out.stdout).contains("changed"));

    let dir = tempfile::tempdir().unwrap();
    let (socket, _rx) = stand_in(dir.path(), &[r#"{"ok":false,"error":"no guest \"x\""}"#]);
    let out = diag(&["remediate", "x", "/a"], &socket);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no guest"));
}

#[test]
fn scan_guest_shows_progress_and_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(
        dir.path(),
        &[
            r#"{"scan_id":7,"guest":"vsock:cid=5"}"#,
            r#"{"progress":{"files_seen":10,"files_scanned":5,"files_denied":0,"files_skipped":0,"errors":0,"bytes":100}}"#,
            r#"{"progress":{"files_seen":10,"files_scanned":10,"files_denied":1,"files_skipped":1,"errors":0,"bytes":200}}"#,
            r#"{"ok":true,"status":"completed","error":null,"counters":{"files_seen":10,"files_scanned":10,"files_denied":1,"files_skipped":1,"errors":0,"bytes":200}}"#,
        ],
    );
    let out = diag(&["scan-guest", "web-01", "/srv", "--wait"], &socket);
    // Something was found: 1.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let req = rx.recv().unwrap();
    assert_eq!(req["cmd"], "scan");
    assert_eq!(req["wait"], true);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("scan 7 started on vsock:cid=5"), "{stderr}");
    assert!(
        stderr.contains("[###############...............] 5/10 files"),
        "{stderr}"
    );
    assert!(
        stderr.contains("10/10 files  1 denied  1 skipped  0 errors"),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("/srv: scan completed"), "{stdout}");
    assert!(stdout.contains("files denied   1"), "{stdout}");
}

#[test]
fn scan_guest_that_cannot_complete_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _rx) = stand_in(
        dir.path(),
        &[
            r#"{"scan_id":8,"guest":"vsock:cid=5"}"#,
            r#"{"ok":false,"status":"not-found","error":null,"counters":{"files_seen":0,"files_scanned":0,"files_denied":0,"files_skipped":0,"errors":0,"bytes":0}}"#,
        ],
    );
    let out = diag(&["scan-guest", "web-01", "/nope", "--wait"], &socket);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).contains("scan not-found"));
}

#[test]
fn policy_set_sends_only_the_fields_given_and_policy_show_tabulates() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(
        dir.path(),
        &[r#"{"ok":true,"version":3,"sent_to":["vsock:cid=5"]}"#],
    );
    let out = diag(
        &[
            "policy",
            "set",
            "--fail-mode",
            "closed",
            "--exclude-prefix",
            "/proc",
            "--exclude-ext",
            "log",
            "--max-scan-size",
            "1048576",
        ],
        &socket,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        rx.recv().unwrap(),
        serde_json::json!({"cmd": "policy-set", "policy": {
            "fail_mode": "closed",
            "max_scan_size": 1048576,
            "exclusions": [
                {"kind": "path-prefix", "value": "/proc"},
                {"kind": "extension", "value": "log"},
            ],
        }})
    );
    assert!(
        text(&out.stdout)
            .contains("guest policy version 3 set; sent to 1 connected guest(s): vsock:cid=5"),
        "{}",
        text(&out.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let (socket, _rx) = stand_in(
        dir.path(),
        &[
            r#"{"ok":true,"version":3,"policy":{"fail_mode":"closed","debug_level":null,"exclusions":[{"kind":"path-prefix","value":"/proc"}],"query_timeout_ms":null,"cache_ttl_max_secs":null,"max_scan_size":1048576},"guests":[{"identity":"vsock:cid=5","name":"web-01","connected":true,"takes_policy":true,"policy":{"sent":3,"in_effect":3,"status":"done","pinned":["max_scan_size"]}}]}"#,
        ],
    );
    let out = diag(&["policy", "show"], &socket);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("guest policy version 3"), "{stdout}");
    assert!(
        stdout.contains("exclusions          path-prefix:/proc"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("vsock:cid=5"))
        .unwrap();
    for cell in ["web-01", "connected", "yes", "done", "max_scan_size"] {
        assert!(row.contains(cell), "{cell}: {stdout}");
    }

    let dir = tempfile::tempdir().unwrap();
    let (socket, _rx) = stand_in(
        dir.path(),
        &[r#"{"ok":false,"error":"config: guest_policy.debug_level = 9: must be 0..=4"}"#],
    );
    let out = diag(&["policy", "set", "--debug-level", "9"], &socket);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("0..=4"));
}

const QUARANTINE: &str = r#"{"ok":true,"entries":[{"id":"20261203T174010123Z-3f2a9c1b","guest":"vsock://5:1025","peer":"vsock:5","guest_name":"web-01","path":"/srv/tool.sh","threat":"Test-FalsePositive","size":12000,"stored_at":"2026-12-03T17:40:10.123Z","state":"stored","restored":false,"state_changed_at":null},{"id":"20261203T180000000Z-aa00bb11","guest":"vsock://5:1026","peer":"vsock:5","guest_name":"web-01","path":"/srv/eicar.com","threat":"Eicar-Test-Signature","size":68,"stored_at":"2026-12-03T18:00:00.000Z","state":"restored","restored":true,"state_changed_at":"2026-12-03T18:05:00.000Z"}]}"#;

#[test]
fn quarantine_list_prints_a_table_and_json_passes_it_through() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(dir.path(), &[QUARANTINE]);
    let out = diag(&["quarantine", "list"], &socket);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        rx.recv().unwrap(),
        serde_json::json!({"cmd": "quarantine-list"})
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("THREAT"),
        "{stdout}"
    );
    for cell in [
        "20261203T174010123Z-3f2a9c1b",
        "stored",
        "12000",
        "vsock://5:1025 (web-01)",
        "/srv/tool.sh",
        "Test-FalsePositive",
    ] {
        assert!(lines[1].contains(cell), "{cell} missing: {stdout}");
    }
    assert!(lines[2].contains("restored"), "{stdout}");
    let path_col = lines[0].find("PATH").unwrap();
    assert_eq!(&lines[1][path_col..path_col + 12], "/srv/tool.sh");

    let dir = tempfile::tempdir().unwrap();
    let (socket, _rx) = stand_in(dir.path(), &[QUARANTINE]);
    let out = diag(&["quarantine", "list", "--json"], &socket);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["entries"][1]["restored"], true);

    let dir = tempfile::tempdir().unwrap();
    let (socket, _rx) = stand_in(
        dir.path(),
        &[r#"{"ok":false,"error":"no quarantine is configured: set quarantine.dir"}"#],
    );
    let out = diag(&["quarantine", "list"], &socket);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("quarantine.dir"));
}

#[test]
fn quarantine_show_prints_the_record_with_its_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(
        dir.path(),
        &[
            r#"{"ok":true,"entry":{"format":1,"id":"20261203T174010123Z-3f2a9c1b","sha256":"ab12","blake3":"cd34","size":12000,"stored_at":"2026-12-03T17:40:10.123Z","stored_at_ms":1,"state":"stored","guest":{"peer":"vsock:5","address":"vsock://5:1025","name":"web-01","os":"linux"},"path":{"encoding":"utf8","hex":"2f","display":"/srv/tool.sh"},"file":{"volume_serial":9,"file_id":"01000000000000000000000000000000","size":12000,"last_write_time":5},"threat":"Test-FalsePositive","engine":"hash"}}"#,
        ],
    );
    let out = diag(
        &["quarantine", "show", "20261203T174010123Z-3f2a9c1b"],
        &socket,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        rx.recv().unwrap(),
        serde_json::json!({"cmd": "quarantine-show", "id": "20261203T174010123Z-3f2a9c1b"})
    );
    let stdout = text(&out.stdout);
    for line in [
        "sha256          ab12",
        "blake3          cd34",
        "path            /srv/tool.sh",
        "guest identity  vsock:5",
        "state           stored",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }

    let dir = tempfile::tempdir().unwrap();
    let (socket, _rx) = stand_in(
        dir.path(),
        &[
            r#"{"ok":false,"error":"quarantine: no entry \"x\"; list the entries to see their ids"}"#,
        ],
    );
    let out = diag(&["quarantine", "show", "x"], &socket);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no entry"));
}

#[test]
fn quarantine_restore_exit_codes_follow_the_guests_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(
        dir.path(),
        &[
            r#"{"ok":true,"id":"q1","guest":"vsock://5:1025","path":"/srv/tool.sh","size":12000,"threat":"Test-FalsePositive","status":"done","detail":"done"}"#,
        ],
    );
    let out = diag(&["quarantine", "restore", "q1"], &socket);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        rx.recv().unwrap(),
        serde_json::json!({"cmd": "quarantine-restore", "id": "q1", "timeout_ms": 60000})
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "q1: restored (12000 bytes, Test-FalsePositive) to /srv/tool.sh on vsock://5:1025: done (done)"
    );

    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(
        dir.path(),
        &[
            r#"{"ok":false,"id":"q1","guest":"vsock://5:1025","path":"/srv/other","size":12000,"threat":"T","status":"changed","detail":"a file exists at that path: nothing was written"}"#,
        ],
    );
    let out = diag(
        &[
            "quarantine",
            "restore",
            "q1",
            "--to",
            "/srv/other",
            "--guest",
            "web-01",
        ],
        &socket,
    );
    assert_eq!(out.status.code(), Some(1));
    let req = rx.recv().unwrap();
    assert_eq!(
        (&req["to"], &req["guest"]),
        (
            &serde_json::json!("/srv/other"),
            &serde_json::json!("web-01")
        )
    );
    assert!(
        text(&out.stdout).contains("not restored"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("changed"));

    let dir = tempfile::tempdir().unwrap();
    let (socket, _rx) = stand_in(
        dir.path(),
        &[r#"{"ok":false,"error":"entry q1 came from vsock://5:1025, not vsock://6:1025"}"#],
    );
    let out = diag(
        &["quarantine", "restore", "q1", "--guest", "db-02"],
        &socket,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("came from"));
}

#[test]
fn quarantine_purge_by_id_or_age() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(dir.path(), &[r#"{"ok":true,"purged":["q1"]}"#]);
    let out = diag(&["quarantine", "purge", "q1"], &socket);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        rx.recv().unwrap(),
        serde_json::json!({"cmd": "quarantine-purge", "id": "q1"})
    );
    assert_eq!(text(&out.stdout).trim(), "purged q1");

    let dir = tempfile::tempdir().unwrap();
    let (socket, rx) = stand_in(dir.path(), &[r#"{"ok":true,"purged":[]}"#]);
    let out = diag(&["quarantine", "purge", "--older-than", "30d"], &socket);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        rx.recv().unwrap(),
        serde_json::json!({"cmd": "quarantine-purge", "older_than": "30d"})
    );
    assert_eq!(text(&out.stdout).trim(), "nothing to purge");

    // Neither an id nor an age: refused before asking.
    let dir = tempfile::tempdir().unwrap();
    let out = diag(&["quarantine", "purge"], &dir.path().join("unused.sock"));
    assert_eq!(out.status.code(), Some(2));
}
