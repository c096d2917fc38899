//! Issue 14 end to end: an admin does it from the host alone. The real
//! scanner service (in-process, on a Unix socket, with its control socket
//! and a `[guest_policy]`), the real agent binary as root on a tmpfs of the
//! test's own, and the admin's requests sent to the control socket as JSON
//! lines, exactly as `thinagent-diag guests / remediate / scan-guest /
//! policy show|set` send them (that binary belongs to another package, so
//! the test speaks its protocol itself rather than build it):
//!
//! 1. the connected agent is listed: protocol 2, its actions, a `Health`;
//! 2. the configured guest policy is in effect on the agent (an extension
//!    exclusion lets an EICAR file open; EICAR elsewhere is denied);
//! 3. a denied file is remediated (gone on the tmpfs); again: `not-found`;
//! 4. a denied file replaced since is left alone: `changed`;
//! 5. an on-demand scan of a 200-file subtree finds its 2 EICAR files;
//! 6. a new policy (fail open, no exclusions) reaches the agent at once:
//!    in effect as version 2, reported by its `Health`, the extension no
//!    longer excluded.
//!
//! Skips with a printed reason when not root or without fanotify
//! permission events.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, EICAR, EPERM, Scanner, base_args, md5_signature_dir, setup, state_dir};
use serde_json::{Value, json};
use thinagent_scanner::guest_policy::{
    ExclusionConfig, ExclusionKindConfig, FailModeConfig, GuestPolicyConfig,
};

/// One request line to the control socket; every answer line up to the
/// one carrying `"ok"` (as `thinagent-diag` reads them).
fn control(socket: &Path, request: &Value) -> Vec<Value> {
    let mut stream = UnixStream::connect(socket).expect("the control socket accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.expect("the control socket answers in time");
        let v: Value = serde_json::from_str(&line).unwrap();
        let last = v.get("ok").is_some();
        out.push(v);
        if last {
            return out;
        }
    }
    panic!("the control socket closed before the last answer: {out:?}");
}

/// The single answer line of `request`.
fn control1(socket: &Path, request: &Value) -> Value {
    let mut out = control(socket, request);
    assert_eq!(out.len(), 1, "{request}: {out:?}");
    out.pop().unwrap()
}

/// Polls `request` until `cond` holds of its answer (60 s at most).
fn until(socket: &Path, request: &Value, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = control1(socket, request);
        if cond(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "never {what}: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `path` as a guest program does: from another process (`cat`).
/// This process runs the scanner, whose peer credentials on the Unix
/// socket make the agent leave its opens alone (they would otherwise wait
/// for a verdict from themselves). `Err(errno)` as the open failed.
fn read(path: &Path) -> Result<Vec<u8>, i32> {
    let out = Command::new("cat").arg(path).output().expect("run cat");
    if out.status.success() {
        return Ok(out.stdout);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(if err.contains("Operation not permitted") {
        EPERM
    } else if err.contains("No such file") {
        ENOENT
    } else {
        panic!("cat {}: {err}", path.display())
    })
}

/// `ENOENT`.
const ENOENT: i32 = 2;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_admin_remediates_scans_and_sets_policy_from_the_host_alone() {
    let Some(mnt) = setup("an_admin_remediates_scans_and_sets_policy_from_the_host_alone") else {
        return;
    };
    let state = state_dir();
    let socket = state.path().join("control.sock");
    let listen = format!("unix://{}", state.path().join("scanner.sock").display());
    let scanner = Scanner::start_with(&listen, state.path(), &[], |c| {
        c.control_socket = Some(socket.clone());
        // fail_mode = "closed"
        // exclusions = [{ kind = "extension", value = "skipme" }]
        c.guest_policy = GuestPolicyConfig {
            fail_mode: Some(FailModeConfig::Closed),
            exclusions: Some(vec![ExclusionConfig {
                kind: ExclusionKindConfig::Extension,
                value: "skipme".into(),
            }]),
            ..GuestPolicyConfig::default()
        };
    });
    let watch = mnt.path().to_str().unwrap().to_string();
    let agent = Agent::start(state.path(), &base_args(&scanner.url, &watch));

    // 1. The agent is listed, connected with protocol 2 and its actions,
    // once its Health report arrived.
    let guests = json!({"cmd": "guests"});
    let answer = until(&socket, &guests, "a guest with a Health report", |a| {
        a["guests"][0]["health"].is_object()
    });
    assert_eq!(answer["ok"], true, "{answer}");
    let list = answer["guests"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{answer}");
    let g = &list[0];
    assert_eq!(g["connected"], true, "{g}");
    assert_eq!(g["os"], "linux", "{g}");
    assert_eq!(g["protocol_version"], 2, "{g}");
    assert_eq!(
        g["actions"],
        json!(["remediate", "scan-tree", "policy", "restore"]),
        "{g}"
    );
    let fail_mode = g["health"]["fail_mode"].as_str().unwrap();
    assert!(["open", "closed"].contains(&fail_mode), "{g}");
    assert_eq!(g["health"]["on_access"], true, "{g}");
    let guest = g["identity"].as_str().unwrap().to_owned();
    assert!(guest.starts_with("unix:"), "{guest}");

    // 2. The configured policy went out as version 1 and is in effect.
    let show = json!({"cmd": "policy-show"});
    let shown = until(&socket, &show, "policy version 1 in effect", |a| {
        a["guests"][0]["policy"]["in_effect"] == 1
    });
    assert_eq!(shown["version"], 1, "{shown}");
    assert_eq!(shown["policy"]["fail_mode"], "closed", "{shown}");
    assert_eq!(shown["guests"][0]["identity"], guest.as_str(), "{shown}");
    assert_eq!(shown["guests"][0]["takes_policy"], true, "{shown}");
    assert_eq!(shown["guests"][0]["policy"]["status"], "done", "{shown}");
    assert_eq!(shown["guests"][0]["policy"]["pinned"], json!([]), "{shown}");
    let skipme = mnt.join("x.skipme");
    write(&skipme, EICAR);
    assert_eq!(read(&skipme).unwrap(), EICAR, "the extension is excluded");
    let eicar = mnt.join("eicar.com");
    write(&eicar, EICAR);
    assert_eq!(
        read(&eicar),
        Err(EPERM),
        "EICAR is denied: {}",
        agent.log_text()
    );

    // 3. Remediation of the denied file: gone from the tmpfs.
    let eicar_path = eicar.to_str().unwrap();
    let remediate = json!({"cmd": "remediate", "guest": guest, "path": eicar_path});
    let r = control1(&socket, &remediate);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["status"], "done", "{r}");
    assert_eq!(r["threat"], "Eicar-Test-Signature", "{r}");
    assert_eq!(read(&eicar), Err(ENOENT), "eicar.com is gone");
    // Again: the detection is still recorded, the guest finds nothing.
    let r = control1(&socket, &remediate);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["status"], "not-found", "{r}");
    // A file the scanner never denied cannot be named.
    let r = control1(
        &socket,
        &json!({"cmd": "remediate", "guest": guest, "path": skipme.to_str().unwrap()}),
    );
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("no detection"), "{r}");

    // 4. Denied, then replaced by a clean file of the same name: left alone.
    let eicar2 = mnt.join("eicar2.com");
    write(&eicar2, EICAR);
    assert_eq!(read(&eicar2), Err(EPERM));
    let clean = mnt.join("eicar2.new");
    write(&clean, b"clean now\n");
    std::fs::rename(&clean, &eicar2).unwrap();
    let r = control1(
        &socket,
        &json!({"cmd": "remediate", "guest": guest, "path": eicar2.to_str().unwrap()}),
    );
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["status"], "changed", "{r}");
    assert_eq!(read(&eicar2).unwrap(), b"clean now\n", "the new file stays");

    // 5. An on-demand scan of a subtree: 200 files, 2 of them EICAR.
    let tree = mnt.join("tree");
    for d in 0..4 {
        let dir = tree.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            let path = dir.join(format!("f{f}.txt"));
            if (d, f) == (1, 7) || (d, f) == (3, 42) {
                write(&path, EICAR);
            } else {
                write(&path, format!("file {d}/{f}\n").as_bytes());
            }
        }
    }
    let out = control(
        &socket,
        &json!({"cmd": "scan", "guest": guest, "path": tree.to_str().unwrap(), "wait": true}),
    );
    assert!(out[0]["scan_id"].as_u64().is_some(), "{out:?}");
    let done = out.last().unwrap();
    assert_eq!(done["status"], "completed", "{out:?}");
    // "ok": the scan completed (what it found is in the counters).
    assert_eq!(done["ok"], true, "{out:?}");
    let c = &done["counters"];
    assert_eq!(c["files_seen"], 200, "{c}");
    assert_eq!(c["files_scanned"], 200, "{c}");
    assert_eq!(c["files_denied"], 2, "{c}");
    assert_eq!(c["errors"], 0, "{c}");
    // Progress lines, if the scan lasted long enough for any, only grow.
    let seen: Vec<u64> = out
        .iter()
        .filter_map(|l| l["progress"]["files_seen"].as_u64())
        .collect();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{out:?}");
    // The scan's detections are recorded: 1 + 1 on access, 2 on demand.
    let answer = control1(&socket, &guests);
    assert_eq!(answer["guests"][0]["detections"], 4, "{answer}");
    // One of them remediated, as the open one was.
    let found = tree.join("d3/f42.txt");
    let r = control1(
        &socket,
        &json!({"cmd": "remediate", "guest": guest, "path": found.to_str().unwrap()}),
    );
    assert_eq!(r["status"], "done", "{r}");
    assert_eq!(read(&found), Err(ENOENT));

    // 6. A new policy: fail open, no exclusions. Sent at once, in effect as
    // version 2, reported by the agent's Health; the extension is no
    // longer excluded.
    let r = control1(
        &socket,
        &json!({"cmd": "policy-set", "policy": {"fail_mode": "open", "exclusions": []}}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["version"], 2, "{r}");
    assert_eq!(r["sent_to"], json!([guest]), "{r}");
    let shown = until(&socket, &show, "policy version 2 in effect", |a| {
        a["guests"][0]["policy"]["in_effect"] == 2
    });
    assert_eq!(shown["policy"]["fail_mode"], "open", "{shown}");
    assert_eq!(shown["policy"]["exclusions"], json!([]), "{shown}");
    assert_eq!(shown["guests"][0]["policy"]["status"], "done", "{shown}");
    assert_eq!(read(&skipme), Err(EPERM), "no longer excluded");
    let skipme2 = mnt.join("y.skipme");
    write(&skipme2, EICAR);
    assert_eq!(read(&skipme2), Err(EPERM));
    // The agent's own report follows (Health goes out at most every 10 s).
    let answer = until(&socket, &guests, "Health reporting version 2", |a| {
        a["guests"][0]["policy_version"] == 2
    });
    assert_eq!(
        answer["guests"][0]["health"]["fail_mode"], "open",
        "{answer}"
    );
    assert_eq!(answer["guests"][0]["connected"], true, "{answer}");

    let log = agent.log_text();
    assert!(log.contains("host policy version 2 in effect"), "{log}");
    assert!(
        scanner
            .audit_with("Eicar-Test-Signature")
            .contains("Eicar-Test-Signature"),
        "the audit log has the detections"
    );
}

/// Waits (60 s at most) for `cond`; panics with `what` otherwise.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "never {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// "Restore a false positive", from the host alone: a clean file that a
/// (too broad) signature flags is denied and quarantined automatically;
/// the admin removes the signature, restores the file (identical bytes,
/// same path, its next open judged again and now allowed); a restore
/// onto an existing file answers `changed` and overwrites nothing; a
/// purge removes the bytes. Every step is in the event file and the
/// audit log.
#[test]
fn an_admin_restores_a_false_positive_from_quarantine() {
    use thinagent_scanner::remediation::{RemediationAction, RemediationRule};
    let Some(mnt) = setup("an_admin_restores_a_false_positive_from_quarantine") else {
        return;
    };
    let state = state_dir();
    let socket = state.path().join("control.sock");
    let events = state.path().join("events.jsonl");
    let store = state.path().join("quarantine");
    let queue = state.path().join("events-queue");
    let listen = format!("unix://{}", state.path().join("scanner.sock").display());
    let clean: Vec<u8> = b"#!/bin/sh\necho a perfectly good script\n".repeat(300);
    let sigs = md5_signature_dir(state.path(), "fp.hdb", &clean, "Test-FalsePositive");
    let scanner = Scanner::start_with(&listen, state.path(), std::slice::from_ref(&sigs), |c| {
        c.control_socket = Some(socket.clone());
        c.events.file = Some(events.clone());
        c.events.queue_dir = Some(queue.clone());
        c.quarantine.dir = Some(store.clone());
        c.remediation.rules = vec![RemediationRule {
            threat: "*".into(),
            action: RemediationAction::Quarantine,
        }];
    });
    let watch = mnt.path().to_str().unwrap().to_string();
    let agent = Agent::start(state.path(), &base_args(&scanner.url, &watch));
    let guests = json!({"cmd": "guests"});
    until(&socket, &guests, "a connected guest", |a| {
        a["guests"][0]["connected"] == true
    });

    // Flagged, denied, quarantined: gone from the guest, listed on the host.
    let tool = mnt.join("tool.sh");
    write(&tool, &clean);
    assert_eq!(read(&tool), Err(EPERM), "{}", agent.log_text());
    let list = json!({"cmd": "quarantine-list"});
    let listed = until(&socket, &list, "the file quarantined", |a| {
        a["entries"].as_array().is_some_and(|e| e.len() == 1)
    });
    let entry = &listed["entries"][0];
    assert_eq!(entry["path"], tool.to_str().unwrap(), "{listed}");
    assert_eq!(entry["threat"], "Test-FalsePositive", "{listed}");
    assert_eq!(entry["size"], clean.len(), "{listed}");
    assert_eq!(entry["restored"], false, "{listed}");
    let id = entry["id"].as_str().unwrap().to_owned();
    wait_for("the quarantined file removed", || !tool.exists());
    let shown = control1(&socket, &json!({"cmd": "quarantine-show", "id": id}));
    assert_eq!(
        shown["entry"]["sha256"].as_str().unwrap().len(),
        64,
        "{shown}"
    );
    assert_eq!(shown["entry"]["state"], "stored", "{shown}");

    // A file at the path now: the restore writes nothing over it.
    write(&tool, b"the admin's replacement\n");
    let restore = json!({"cmd": "quarantine-restore", "id": id});
    let r = control1(&socket, &restore);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["status"], "changed", "{r}");
    assert_eq!(std::fs::read(&tool).unwrap(), b"the admin's replacement\n");
    std::fs::remove_file(&tool).unwrap();

    // The signature was wrong: removed, the signatures reloaded.
    std::fs::remove_file(sigs.join("fp.hdb")).unwrap();
    scanner.reload();
    // Naming another guest is refused.
    let r = control1(
        &socket,
        &json!({"cmd": "quarantine-restore", "id": id, "guest": "no-such-guest"}),
    );
    assert_eq!(r["ok"], false, "{r}");
    assert!(!tool.exists());

    let r = control1(&socket, &restore);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["status"], "done", "{r}");
    assert_eq!(std::fs::read(&tool).unwrap(), clean, "the identical bytes");
    // Its next open is judged again, by the corrected set: allowed.
    let audit_before = scanner.audit_text().matches("tool.sh").count();
    assert_eq!(read(&tool).unwrap(), clean);
    let audit = scanner.audit_with("\"verdict\":\"allow\"");
    assert!(
        audit.matches("tool.sh").count() > audit_before
            && audit
                .lines()
                .any(|l| l.contains("tool.sh") && l.contains("\"verdict\":\"allow\"")),
        "the restored file's open was judged (allowed): {audit}"
    );
    let listed = control1(&socket, &list);
    assert_eq!(listed["entries"][0]["restored"], true, "{listed}");
    assert_eq!(listed["entries"][0]["state"], "restored", "{listed}");

    // Purged: the bytes are gone; a restore is refused.
    let r = control1(&socket, &json!({"cmd": "quarantine-purge", "id": id}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["purged"], json!([id]), "{r}");
    let shown = control1(&socket, &json!({"cmd": "quarantine-show", "id": id}));
    assert_eq!(shown["entry"]["state"], "purged", "{shown}");
    assert!(
        std::fs::read_dir(store.join("objects"))
            .unwrap()
            .next()
            .is_none(),
        "no object left"
    );
    let r = control1(&socket, &restore);
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("purged"), "{r}");

    // The event file and the audit log have the restore and the purge.
    wait_for("the events written", || {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        text.contains("\"type\":\"restore\"") && text.contains("\"type\":\"quarantine_purged\"")
    });
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"type\":\"restore\"") && l.contains("\"status\":\"done\"")),
        "{text}"
    );
    let audit = scanner.audit_with("\"action\":\"quarantine_purge\"");
    let restored = audit
        .lines()
        .find(|l| l.contains("\"record\":\"host_action\"") && l.contains("\"action\":\"restore\""))
        .unwrap_or_else(|| panic!("no restore line: {audit}"));
    assert!(restored.contains("\"origin\":\"admin\""), "{restored}");
    assert!(restored.contains("\"quarantine_id\""), "{restored}");
    assert!(audit.contains("\"action\":\"quarantine_purge\""), "{audit}");
}
