//! End to end on a real fanotify mark: the agent binary watching a tmpfs this
//! test mounts, the scanner service running in this process. Every test skips
//! with a printed reason when not root or when fanotify permission events are
//! unavailable.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Agent, EACCES, EICAR, EPERM, HungScanner, Scanner, base_args, denied, eventually, final_stat,
    md5_signature_dir, read, setup, state_dir,
};
use thinagent_guest::{Level, parse_line};

#[test]
fn eicar_denied_and_audited_clean_allowed_rewritten_file_denied() {
    let Some(mnt) = setup("eicar_denied_and_audited") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let eicar = mnt.join("eicar.com");
    let clean = mnt.join("readme.txt");
    std::fs::write(&eicar, EICAR).unwrap();
    std::fs::write(&clean, b"just a clean text file\n").unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut agent = Agent::start(state.path(), &base_args(&scanner.url, watch));

    assert_eq!(read(&eicar), Err(EPERM), "EICAR open is denied");
    let audit = scanner.audit_with(eicar.to_str().unwrap());
    let line = audit
        .lines()
        .find(|l| l.contains(eicar.to_str().unwrap()))
        .unwrap_or_else(|| panic!("audit log names the EICAR file:\n{audit}"));
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["verdict"], "deny");
    assert_eq!(entry["threat"], "Eicar-Test-Signature");

    assert_eq!(read(&clean).unwrap(), b"just a clean text file\n");
    assert_eq!(read(&clean).unwrap(), b"just a clean text file\n");
    // The writer's open is allowed (clean content), its close-after-write
    // invalidates the verdict: the next open is scanned again and denied.
    std::fs::write(&clean, EICAR).unwrap();
    assert!(denied(&clean), "rewritten file denied on the next open");
    assert!(denied(&eicar), "a cached deny still denies");

    let st = agent.terminate();
    assert!(st.success(), "{st}");
    let log = agent.log_text();
    let deny = log
        .lines()
        .filter_map(parse_line)
        .find(|l| l.level == Level::Audit && l.message.contains("eicar.com"))
        .unwrap_or_else(|| panic!("an AUDIT line names the denied file:\n{log}"));
    assert_eq!(deny.routine, "OpenFilter");
    assert_eq!(
        deny.status,
        Some(thinagent_guest::NtStatus::STATUS_VIRUS_INFECTED)
    );
    assert!(log.contains("cache_hits="), "final stats:\n{log}");
}

#[test]
fn executing_a_denied_binary_fails() {
    let Some(mnt) = setup("executing_a_denied_binary_fails") else {
        return;
    };
    let state = state_dir();
    let truebin = std::fs::read("/bin/true").expect("/bin/true");
    let mut good = truebin.clone();
    good.extend_from_slice(b"\nthinagent-clean-marker\n");
    let mut bad = truebin;
    bad.extend_from_slice(b"\nthinagent-exec-test-marker\n");
    let sigs = md5_signature_dir(state.path(), "exec.hdb", &bad, "ThinAgent.Test.Exec");
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[sigs]);
    let watch = mnt.path().to_str().unwrap();
    let agent = Agent::start(state.path(), &base_args(&scanner.url, watch));
    let good_path = mnt.join("good-true");
    let bad_path = mnt.join("bad-true");
    for (p, bytes) in [(&good_path, &good), (&bad_path, &bad)] {
        std::fs::write(p, bytes).unwrap();
        Command::new("chmod").arg("755").arg(p).status().unwrap();
    }
    // A fork elsewhere in this multi-threaded test process can hold a
    // just-written file open for a moment (ETXTBSY): retry that.
    let run = |p: &PathBuf| loop {
        match Command::new(p).status() {
            Err(e) if e.raw_os_error() == Some(26) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    };
    let st = run(&good_path).expect("the clean binary runs");
    assert!(st.success());
    let err = run(&bad_path).expect_err("the denied binary must not run");
    assert!(
        matches!(err.raw_os_error(), Some(EPERM | EACCES)),
        "{err:?}\n{}",
        agent.log_text()
    );
    assert!(
        scanner
            .audit_with("ThinAgent.Test.Exec")
            .contains("ThinAgent.Test.Exec")
    );
}

#[test]
fn scanner_stopped_fail_open_lets_opens_through_then_agent_reconnects() {
    let Some(mnt) = setup("scanner_stopped_fail_open") else {
        return;
    };
    let state = state_dir();
    let mut scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut args = base_args(&scanner.url, watch);
    args.extend(["--stats-interval-secs", "1"]);
    let mut agent = Agent::start(state.path(), &args);
    assert!(denied(&eicar));
    // A clean file the scanner allows: its ignore mark goes at the new
    // session (the restarted scanner's signatures may differ).
    let clean = mnt.join("clean.txt");
    std::fs::write(&clean, b"clean\n").unwrap();
    assert_eq!(read(&clean).unwrap(), b"clean\n");
    scanner.stop();
    // Fail-open: the open goes through (the cached deny was for this
    // version; write a new EICAR file the cache has never seen).
    let fresh = mnt.join("fresh-eicar.com");
    std::fs::write(&fresh, EICAR).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || read(&fresh).is_ok()),
        "fail-open lets the open through:\n{}",
        agent.log_text()
    );
    scanner.restart();
    assert!(
        eventually(Duration::from_secs(20), || denied(&fresh)),
        "the agent reconnects by itself:\n{}",
        agent.log_text()
    );
    assert!(
        eventually(Duration::from_secs(10), || agent
            .log_text()
            .contains("INFO: Stats : events=")),
        "periodic stats every --stats-interval-secs:\n{}",
        agent.log_text()
    );
    assert!(agent.terminate().success());
    let log = agent.log_text();
    assert!(
        log.contains("decided by fail-open while the scanner was unreachable"),
        "{log}"
    );
    assert!(final_stat(&log, "disconnected") >= 1, "{log}");
    assert!(final_stat(&log, "fail_mode_decisions") >= 1, "{log}");
    assert!(
        log.contains("kernel verdict cache flushed (new scanner session): 1 ignore marks removed"),
        "{log}"
    );
}

#[test]
fn scanner_stopped_fail_closed_denies_until_it_is_back() {
    let Some(mnt) = setup("scanner_stopped_fail_closed") else {
        return;
    };
    let state = state_dir();
    let sock = state.path().join("scanner.sock");
    let mut scanner = Scanner::start(&format!("unix://{}", sock.display()), state.path(), &[]);
    let clean = mnt.join("clean.txt");
    std::fs::write(&clean, b"clean\n").unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut args = base_args(&scanner.url, watch);
    args.extend(["--fail-mode", "closed"]);
    let mut agent = Agent::start(state.path(), &args);
    // The scanner runs in this process and the agent learned its pid over
    // the Unix socket: this process's opens are not checked. A child's are.
    let cat = |p: &PathBuf| Command::new("cat").arg(p).output().unwrap();
    let out = cat(&clean);
    assert!(out.status.success(), "{out:?}");
    scanner.stop();
    let fresh = mnt.join("fresh.txt");
    std::fs::write(&fresh, b"never scanned\n").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let o = cat(&fresh);
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not permitted")
        }),
        "fail-closed denies while the scanner is down:\n{}",
        agent.log_text()
    );
    scanner.restart();
    assert!(
        eventually(Duration::from_secs(20), || cat(&fresh).status.success()),
        "the agent reconnects over the same socket path:\n{}",
        agent.log_text()
    );
    assert!(agent.terminate().success());
}

#[test]
fn unix_socket_scanner_pid_is_excluded_its_children_are_not() {
    let Some(mnt) = setup("unix_socket_scanner_pid_is_excluded") else {
        return;
    };
    let state = state_dir();
    let sock = state.path().join("scanner.sock");
    let scanner = Scanner::start(&format!("unix://{}", sock.display()), state.path(), &[]);
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    let watch = mnt.path().to_str().unwrap();
    let agent = Agent::start(state.path(), &base_args(&scanner.url, watch));
    assert!(
        eventually(Duration::from_secs(10), || agent
            .log_text()
            .contains(&format!("scanner pid {}", std::process::id()))),
        "{}",
        agent.log_text()
    );
    assert_eq!(read(&eicar).unwrap(), EICAR, "the scanner's own opens pass");
    let out = Command::new("cat").arg(&eicar).output().unwrap();
    assert!(!out.status.success(), "another process is checked: {out:?}");
}

#[test]
fn hung_scanner_opens_answered_by_the_deadline() {
    let Some(mnt) = setup("hung_scanner_opens_answered_by_the_deadline") else {
        return;
    };
    let state = state_dir();
    let hung = HungScanner::start();
    let a = mnt.join("a.txt");
    let b = mnt.join("b.txt");
    std::fs::write(&a, b"a\n").unwrap();
    std::fs::write(&b, b"b\n").unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut args = base_args(&hung.url, watch);
    args.extend(["--timeout-ms", "300"]);
    let mut open_agent = Agent::start(state.path(), &args);
    assert_eq!(read(&a).unwrap(), b"a\n", "fail-open at the deadline");
    assert!(open_agent.terminate().success());
    assert!(open_agent.log_text().contains("no verdict within 300 ms"));

    args.extend(["--fail-mode", "closed"]);
    let mut closed_agent = Agent::start(state.path(), &args);
    assert_eq!(read(&b), Err(EPERM), "fail-closed at the deadline");
    assert!(closed_agent.terminate().success());
}

#[test]
fn ten_thousand_opens_by_eight_threads_finish() {
    let Some(mnt) = setup("ten_thousand_opens_by_eight_threads_finish") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    const FILES: usize = 10_000;
    const THREADS: usize = 8;
    let dir = mnt.join("tree");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..FILES {
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let watch = mnt.path().to_str().unwrap();
    let mut agent = Agent::start(state.path(), &base_args(&scanner.url, watch));
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let dir = dir.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for i in (t..FILES).step_by(THREADS) {
                    let got = std::fs::read(dir.join(format!("f{i}"))).expect("allowed");
                    assert_eq!(got, format!("file {i}\n").as_bytes());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("opener thread");
    }
    assert_eq!(done.load(Ordering::Relaxed), FILES);
    assert!(agent.terminate().success());
    let log = agent.log_text();
    // Every open went to the scanner (distinct files): none decided by the
    // fail mode, so none waited out a deadline.
    assert!(final_stat(&log, "events") >= FILES as u64, "{log}");
    assert!(
        final_stat(&log, "allowed_by_scanner") >= FILES as u64,
        "{log}"
    );
    assert_eq!(final_stat(&log, "fail_mode_decisions"), 0, "{log}");
}

#[test]
fn sigterm_with_opens_pending_exits_zero_and_removes_the_mark() {
    let Some(mnt) = setup("sigterm_with_opens_pending") else {
        return;
    };
    let state = state_dir();
    let hung = HungScanner::start();
    let files: Vec<PathBuf> = (0..4).map(|i| mnt.join(&format!("p{i}"))).collect();
    for f in &files {
        std::fs::write(f, b"pending\n").unwrap();
    }
    let watch = mnt.path().to_str().unwrap();
    let mut args = base_args(&hung.url, watch);
    args.extend(["--timeout-ms", "60000", "--fail-mode", "closed"]);
    let mut agent = Agent::start(state.path(), &args);
    let openers: Vec<_> = files
        .iter()
        .cloned()
        .map(|f| std::thread::spawn(move || read(&f)))
        .collect();
    // Wait until the opens are blocked on the agent (the hung scanner never
    // answers and the deadline is a minute away).
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        openers.iter().all(|h| !h.is_finished()),
        "opens are pending"
    );
    let st = agent.terminate();
    assert_eq!(st.code(), Some(0), "{}", agent.log_text());
    for h in openers {
        assert_eq!(h.join().unwrap(), Err(EPERM), "answered by fail-closed");
    }
    // The mark is gone: opens are not held any more.
    assert_eq!(read(&files[0]).unwrap(), b"pending\n");
    let log = agent.log_text();
    assert!(log.contains("marks removed"), "{log}");
    assert_eq!(final_stat(&log, "shutdown"), 4, "{log}");
}

#[test]
fn not_root_is_a_clear_error_with_status_2() {
    let Some(mnt) = setup("not_root_is_a_clear_error") else {
        return;
    };
    let Ok(out) = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_thinagent-linux-agent"))
        .args(["--connect", "tcp://127.0.0.1:9", "--watch"])
        .arg(mnt.path())
        .output()
    else {
        eprintln!("SKIP not_root_is_a_clear_error: no setpriv");
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("root (CAP_SYS_ADMIN)"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_thinagent-linux-agent"))
        .args(["--connect", "http://x:1", "--watch", "/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scheme"));
    let out = Command::new(env!("CARGO_BIN_EXE_thinagent-linux-agent"))
        .args(["--connect", "tcp://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--watch is required");
}

#[test]
fn bounded_in_flight_queue_still_answers_every_open_by_the_deadline() {
    let Some(mnt) = setup("bounded_in_flight_queue") else {
        return;
    };
    let state = state_dir();
    let hung = HungScanner::start();
    const OPENERS: usize = 16;
    let files: Vec<PathBuf> = (0..OPENERS).map(|i| mnt.join(&format!("q{i}"))).collect();
    for f in &files {
        std::fs::write(f, b"queued\n").unwrap();
    }
    let watch = mnt.path().to_str().unwrap();
    // The ready file on the watched mount itself: the agent must not wait
    // on its own open.
    let ready = mnt.join("agent.ready");
    let ready = ready.to_str().unwrap();
    let mut args = base_args(&hung.url, watch);
    args.extend([
        "--timeout-ms",
        "200",
        "--max-in-flight",
        "2",
        "--ready-file",
        ready,
    ]);
    let mut agent = Agent::start(state.path(), &args);
    let openers: Vec<_> = files
        .iter()
        .cloned()
        .map(|f| std::thread::spawn(move || read(&f)))
        .collect();
    for h in openers {
        assert_eq!(h.join().unwrap().unwrap(), b"queued\n", "fail-open");
    }
    assert!(agent.terminate().success());
    let log = agent.log_text();
    // Two at a time, each waiting out its deadline: none was refused for
    // lack of a session slot, none left for shutdown.
    assert_eq!(final_stat(&log, "overloaded"), 0, "{log}");
    assert_eq!(final_stat(&log, "shutdown"), 0, "{log}");
    assert!(
        final_stat(&log, "deadline") + final_stat(&log, "watchdog") >= OPENERS as u64,
        "{log}"
    );
}

#[test]
fn vsock_loopback_connection_or_skip() {
    let Some(mnt) = setup("vsock_loopback_connection") else {
        return;
    };
    let port = 41_000 + std::process::id() % 20_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let probe = rt.block_on(async {
        tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(u32::MAX, port)).map(drop)
    });
    if let Err(e) = probe {
        eprintln!("SKIP vsock_loopback_connection: no AF_VSOCK on this kernel ({e})");
        return;
    }
    let state = state_dir();
    let scanner = Scanner::start(&format!("vsock://any:{port}"), state.path(), &[]);
    // CID 1 (VMADDR_CID_LOCAL) is the only CID a test may connect to.
    let reachable = rt.block_on(async {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(1, port)),
            )
            .await,
            Ok(Ok(_))
        )
    });
    if !reachable {
        eprintln!(
            "SKIP vsock_loopback_connection: AF_VSOCK exists but no loopback transport \
             (vsock_loopback) answers on CID 1"
        );
        return;
    }
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    let url = format!("vsock://1:{port}");
    let watch = mnt.path().to_str().unwrap();
    let mut agent = Agent::start(state.path(), &base_args(&url, watch));
    assert!(
        eventually(Duration::from_secs(10), || denied(&eicar)),
        "{}",
        agent.log_text()
    );
    assert!(agent.terminate().success());
    assert!(scanner.audit_with("eicar.com").contains("eicar.com"));
}

#[test]
fn filesystem_mark_and_excluded_prefix() {
    let Some(mnt) = setup("filesystem_mark_and_excluded_prefix") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    std::fs::create_dir(mnt.join("quarantine")).unwrap();
    let eicar = mnt.join("eicar.com");
    let excluded = mnt.join("quarantine/eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    std::fs::write(&excluded, EICAR).unwrap();
    let watch = mnt.path().to_str().unwrap();
    let prefix = mnt.join("quarantine");
    let mut args = base_args(&scanner.url, watch);
    args.extend(["--watch-filesystem", "--exclude", prefix.to_str().unwrap()]);
    let mut agent = Agent::start(state.path(), &args);
    assert!(
        agent
            .log_text()
            .contains("watching the file system containing")
    );
    assert_eq!(read(&eicar), Err(EPERM), "FAN_MARK_FILESYSTEM works here");
    assert_eq!(
        read(&excluded).unwrap(),
        EICAR,
        "--exclude prefix is not checked"
    );
    assert!(agent.terminate().success());
    assert_eq!(final_stat(&agent.log_text(), "skipped"), 1);
}

/// Issue 16: a read that reaches the file's end answers `EndOfFile` with the
/// last bytes, so the scanner needs no extra `ReadRequest` to learn that
/// nothing follows. With a 4096-byte chunk, a 23-byte file takes one read
/// (it took two: `Data`, then an empty `EndOfFile`), a file of exactly two
/// chunks takes two (it took three). `reads=` counts the agent's answers to
/// `ReadRequest`s. This is the read path of a version-1 host and of the part
/// of a large file not sent inline, so the first agent runs `--no-inline`;
/// a second agent with inline content on (the default, protocol version 2)
/// then sends both files whole with their events: no read at all.
#[test]
fn a_read_reaching_the_end_of_file_ends_it_without_another_request() {
    let Some(mnt) = setup("a_read_reaching_the_end_of_file_ends_it") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start_with("tcp://127.0.0.1:0", state.path(), &[], |c| {
        c.limits.max_read_chunk = Some(4096);
    });
    let small = mnt.join("small.txt");
    let two_chunks = mnt.join("two-chunks.bin");
    std::fs::write(&small, b"a small clean text file").unwrap();
    let big: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&two_chunks, &big).unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut args = base_args(&scanner.url, watch);
    args.push("--no-inline");
    let mut agent = Agent::start(state.path(), &args);

    assert_eq!(read(&small).unwrap(), b"a small clean text file");
    scanner.audit_with(small.to_str().unwrap());
    assert_eq!(read(&two_chunks).unwrap(), big);
    let audit = scanner.audit_with(two_chunks.to_str().unwrap());
    // Both were scanned by the scanner (not skipped, not decided by a fail
    // mode), so the reads below are theirs.
    for f in [&small, &two_chunks] {
        assert!(
            audit.contains(f.to_str().unwrap()),
            "{} scanned:\n{audit}",
            f.display()
        );
    }

    assert!(agent.terminate().success());
    let log = agent.log_text();
    assert_eq!(final_stat(&log, "allowed_by_scanner"), 2, "{log}");
    assert_eq!(final_stat(&log, "reads"), 1 + 2, "{log}");
    assert_eq!(final_stat(&log, "inline_whole"), 0, "{log}");

    // The same files rewritten (new content, so no cache answers them), now
    // with inline content on: one FileEvent each, no ReadRequest.
    std::fs::write(&small, b"another small clean file").unwrap();
    let big2: Vec<u8> = big.iter().map(|b| b.wrapping_add(1)).collect();
    std::fs::write(&two_chunks, &big2).unwrap();
    let mut agent = Agent::start(state.path(), &base_args(&scanner.url, watch));
    assert_eq!(read(&small).unwrap(), b"another small clean file");
    assert_eq!(read(&two_chunks).unwrap(), big2);
    assert!(agent.terminate().success());
    let log = agent.log_text();
    assert_eq!(final_stat(&log, "allowed_by_scanner"), 2, "{log}");
    assert_eq!(final_stat(&log, "reads"), 0, "{log}");
    assert_eq!(final_stat(&log, "inline_whole"), 2, "{log}");
}
