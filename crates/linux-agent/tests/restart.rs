//! Restarts under load in fail-closed: the fanotify group is handed to the
//! next agent (exec in place, or systemd's file-descriptor store emulated by
//! [`FdStore`]) and its marks never lapse, so no EICAR open gets through at
//! any point. Root and fanotify permission events needed, as in
//! `onaccess.rs` (the tests skip with a reason otherwise).

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{
    Agent, EICAR, EPERM, FdStore, Scanner, base_args, eventually, read, setup, state_dir,
};

/// Most iterations of each load thread (a bound besides the stop flag).
const MAX_ITERATIONS: usize = 200_000;

/// Threads of this process opening EICAR files and clean files in a loop
/// (over TCP the scanner's pid is unknown to the agent: these opens are
/// checked).
struct Load {
    stop: Arc<AtomicBool>,
    /// EICAR opens that succeeded (must stay empty).
    eicar_opened: Arc<Mutex<Vec<PathBuf>>>,
    eicar_denied: Arc<AtomicUsize>,
    clean_ok: Arc<AtomicUsize>,
    clean_failed: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let eicar_opened = Arc::new(Mutex::new(Vec::new()));
        let eicar_denied = Arc::new(AtomicUsize::new(0));
        let clean_ok = Arc::new(AtomicUsize::new(0));
        let clean_failed = Arc::new(AtomicUsize::new(0));
        let fixed = dir.join("eicar.com");
        std::fs::write(&fixed, EICAR).unwrap();
        let mut threads = Vec::new();
        for t in 0..2 {
            let (dir, fixed, stop) = (dir.to_path_buf(), fixed.clone(), stop.clone());
            let (opened, denied) = (eicar_opened.clone(), eicar_denied.clone());
            threads.push(std::thread::spawn(move || {
                for i in 0..MAX_ITERATIONS {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // The same file (a cached deny, then after each restart
                    // a new agent's first scan) and, every 8th time, a new
                    // one (written clean-open-first, then scanned on read).
                    let path = if i % 8 == 0 {
                        let p = dir.join(format!("eicar-{t}-{i}.com"));
                        if std::fs::write(&p, EICAR).is_err() {
                            continue;
                        }
                        p
                    } else {
                        fixed.clone()
                    };
                    match read(&path) {
                        Ok(_) => opened.lock().unwrap().push(path),
                        Err(EPERM) => {
                            denied.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("reading {}: errno {e}", path.display()),
                    }
                }
            }));
        }
        for t in 0..2 {
            let (dir, stop) = (dir.to_path_buf(), stop.clone());
            let (ok, failed) = (clean_ok.clone(), clean_failed.clone());
            threads.push(std::thread::spawn(move || {
                for i in 0..MAX_ITERATIONS {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // A new file each time: no verdict cached anywhere.
                    let p = dir.join(format!("clean-{t}-{i}.txt"));
                    let body = format!("clean file {t} {i}\n");
                    let fine = std::fs::write(&p, &body).is_ok()
                        && read(&p).is_ok_and(|got| got == body.as_bytes());
                    if fine {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Load {
            stop,
            eicar_opened,
            eicar_denied,
            clean_ok,
            clean_failed,
            threads,
        }
    }

    /// Waits until `n` more clean opens and `n` more EICAR denials happened
    /// than at the call (the file system works, the agent enforces).
    fn progress(&self, n: usize, agent_log: impl Fn() -> String) {
        let (c, d) = (
            self.clean_ok.load(Ordering::Relaxed),
            self.eicar_denied.load(Ordering::Relaxed),
        );
        assert!(
            eventually(Duration::from_secs(30), || {
                self.clean_ok.load(Ordering::Relaxed) >= c + n
                    && self.eicar_denied.load(Ordering::Relaxed) >= d + n
            }),
            "no progress: clean ok {} failed {}, EICAR denied {}:\n{}",
            self.clean_ok.load(Ordering::Relaxed),
            self.clean_failed.load(Ordering::Relaxed),
            self.eicar_denied.load(Ordering::Relaxed),
            agent_log()
        );
    }

    fn no_eicar_opened(&self) -> Vec<PathBuf> {
        self.eicar_opened.lock().unwrap().clone()
    }

    fn stop(mut self) -> Vec<PathBuf> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("load thread");
        }
        self.no_eicar_opened()
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn exec_in_place_restarts_under_load_keep_fail_closed() {
    let Some(mnt) = setup("exec_in_place_restarts_under_load") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let watch = mnt.path().to_str().unwrap();
    let mut args = base_args(&scanner.url, watch);
    args.extend(["--fail-mode", "closed"]);
    let mut agent = Agent::start(state.path(), &args);
    let pid = agent.pid();
    let load = Load::start(mnt.path());
    load.progress(20, || agent.log_text());
    const RESTARTS: usize = 3;
    for round in 1..=RESTARTS {
        agent.signal("USR2");
        assert!(
            eventually(Duration::from_secs(30), || count(
                &agent.log_text(),
                "adopted the fanotify group from the previous agent image"
            ) == round),
            "restart {round}: the new image adopts the group:\n{}",
            agent.log_text()
        );
        assert_eq!(agent.pid(), pid, "exec keeps the pid");
        load.progress(20, || agent.log_text());
        assert!(load.no_eicar_opened().is_empty(), "round {round}");
    }
    let opened = load.stop();
    assert!(
        opened.is_empty(),
        "EICAR opened during a restart: {opened:?}\n{}",
        agent.log_text()
    );
    let st = agent.terminate();
    assert!(st.success(), "{st}");
    let log = agent.log_text();
    assert_eq!(count(&log, "restarting in place: exec"), RESTARTS, "{log}");
    assert_eq!(count(&log, "created a new fanotify group"), 1, "{log}");
    // The last stop is a plain one: marks removed, the file system open.
    assert!(log.contains("1 marks removed; answering"), "{log}");
    assert_eq!(read(&mnt.join("eicar.com")).unwrap(), EICAR);
}

#[test]
fn fd_store_restarts_under_load_keep_fail_closed() {
    let Some(mnt) = setup("fd_store_restarts_under_load") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let mut store = FdStore::bind(state.path());
    let watch = mnt.path().to_str().unwrap();
    let mut args = base_args(&scanner.url, watch);
    args.extend(["--fail-mode", "closed"]);
    let mut first = Command::new(env!("CARGO_BIN_EXE_thinagent-linux-agent"));
    first.env("NOTIFY_SOCKET", &store.path);
    let mut agent = Agent::start_command(state.path(), first, &args);
    assert!(
        store.receive(Duration::from_secs(10)),
        "the agent stores its group:\n{}",
        agent.log_text()
    );
    let load = Load::start(mnt.path());
    load.progress(20, || agent.log_text());
    const RESTARTS: usize = 3;
    for round in 1..=RESTARTS {
        // What systemd does on `systemctl restart`: SIGTERM, wait for the
        // exit, start the next one with the stored descriptors.
        let st = agent.terminate();
        assert!(st.success(), "round {round}: {st}\n{}", agent.log_text());
        let old = agent.log_text();
        assert!(old.contains("marks kept for the next agent"), "{old}");
        assert!(!old.contains("marks removed; answering"), "{old}");
        // Nobody reads the group now: the load's opens wait in the kernel.
        let before = load.clean_ok.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            load.clean_ok.load(Ordering::Relaxed) <= before + 4,
            "round {round}: opens go through with no agent running"
        );
        assert_eq!(store.fds.len(), 1, "one group stored");
        agent = Agent::start_command(state.path(), store.command(), &args);
        assert!(store.receive(Duration::from_secs(10)), "stored again");
        assert_eq!(store.fds.len(), 1, "the re-store replaced the entry");
        let log = agent.log_text();
        assert!(
            log.contains("adopted the fanotify group from systemd's file-descriptor store"),
            "round {round}:\n{log}"
        );
        load.progress(20, || agent.log_text());
        assert!(load.no_eicar_opened().is_empty(), "round {round}");
    }
    let opened = load.stop();
    assert!(
        opened.is_empty(),
        "EICAR opened during a restart: {opened:?}\n{}",
        agent.log_text()
    );
    // `systemctl stop`: SIGTERM, then systemd closes its copy once the unit
    // is fully stopped; the kernel drops the group and its marks with it.
    assert!(agent.terminate().success());
    drop(store);
    assert!(
        eventually(Duration::from_secs(10), || read(&mnt.join("eicar.com"))
            .is_ok()),
        "with the last descriptor closed the marks are gone"
    );
}

#[test]
fn killed_agent_with_group_in_store_opens_wait_for_the_next_agent() {
    let Some(mnt) = setup("killed_agent_with_group_in_store") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let mut store = FdStore::bind(state.path());
    let watch = mnt.path().to_str().unwrap();
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    let args = base_args(&scanner.url, watch);
    let mut first = Command::new(env!("CARGO_BIN_EXE_thinagent-linux-agent"));
    first.env("NOTIFY_SOCKET", &store.path);
    let mut agent = Agent::start_command(state.path(), first, &args);
    assert!(store.receive(Duration::from_secs(10)));
    assert_eq!(read(&eicar), Err(EPERM));
    // SIGKILL (or the OOM killer): no clean-up at all. systemd's copy keeps
    // the group and its marks; with nobody reading, opens wait, even in
    // fail-open.
    agent.kill();
    let opener = {
        let eicar = eicar.clone();
        std::thread::spawn(move || read(&eicar))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!opener.is_finished(), "the open waits for an agent");
    let next = Agent::start_command(state.path(), store.command(), &args);
    assert_eq!(
        opener.join().unwrap(),
        Err(EPERM),
        "answered by the next agent"
    );
    assert!(
        next.log_text()
            .contains("adopted the fanotify group from systemd's file-descriptor store"),
        "{}",
        next.log_text()
    );
}

#[test]
fn terminate_without_a_store_removes_the_marks() {
    let Some(mnt) = setup("terminate_without_a_store_removes_the_marks") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    let mut args = base_args(&scanner.url, mnt.path().to_str().unwrap());
    args.extend(["--fail-mode", "closed"]);
    let mut agent = Agent::start(state.path(), &args);
    assert_eq!(read(&eicar), Err(EPERM));
    assert!(agent.terminate().success());
    let log = agent.log_text();
    assert!(log.contains("1 marks removed; answering"), "{log}");
    assert!(!log.contains("offered to systemd"), "{log}");
    // The gap the handover closes: between this stop and the next start
    // nothing checks the file system.
    assert_eq!(read(&eicar).unwrap(), EICAR);
}

#[test]
fn opens_a_killed_agent_had_read_are_answered_by_the_next_one() {
    let Some(mnt) = setup("opens_a_killed_agent_had_read") else {
        return;
    };
    let state = state_dir();
    let hung = common::HungScanner::start();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let mut store = FdStore::bind(state.path());
    let watch = mnt.path().to_str().unwrap();
    let held = mnt.join("held.txt");
    std::fs::write(&held, b"held\n").unwrap();
    let later: Vec<PathBuf> = (0..8)
        .map(|i| mnt.join(&format!("later-{i}.txt")))
        .collect();
    for p in &later {
        std::fs::write(p, b"later\n").unwrap();
    }
    let mut args = base_args(&hung.url, watch);
    args.extend(["--timeout-ms", "600000", "--fail-mode", "closed"]);
    let mut first = Command::new(env!("CARGO_BIN_EXE_thinagent-linux-agent"));
    first.env("NOTIFY_SOCKET", &store.path);
    let mut agent = Agent::start_command(state.path(), first, &args);
    assert!(store.receive(Duration::from_secs(10)));
    // Read by the agent and sent to a scanner that never answers; then the
    // agent is killed holding it.
    let opener = {
        let held = held.clone();
        std::thread::spawn(move || read(&held))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!opener.is_finished(), "held by the agent");
    agent.kill();
    let mut next_args = base_args(&scanner.url, watch);
    next_args.extend(["--fail-mode", "closed"]);
    let mut next = Agent::start_command(state.path(), store.command(), &next_args);
    // Without the sweep, the kernel would give the next agent's answer for
    // a new event with the orphan's descriptor number to the orphan, and
    // leave the new open waiting for ever.
    assert!(
        eventually(Duration::from_secs(20), || opener.is_finished()),
        "the orphan is answered:\n{}",
        next.log_text()
    );
    assert_eq!(opener.join().unwrap(), Err(EPERM), "by fail-closed");
    let readers: Vec<_> = later
        .iter()
        .cloned()
        .map(|p| std::thread::spawn(move || read(&p)))
        .collect();
    assert!(
        eventually(Duration::from_secs(20), || readers
            .iter()
            .all(JoinHandle::is_finished)),
        "new opens are answered:\n{}",
        next.log_text()
    );
    for r in readers {
        assert_eq!(r.join().unwrap().unwrap(), b"later\n");
    }
    assert!(next.terminate().success());
    let log = next.log_text();
    assert!(
        log.contains("1 opens the previous agent had read and not answered (it died) denied"),
        "{log}"
    );
}

/// Copies the executable `from` to `to` with cp(1), never through a
/// descriptor of this process: another test thread's fork would inherit a
/// descriptor open for writing until its exec, and running the copy
/// meanwhile fails with ETXTBSY (seen in CI: "Text file busy").
fn copy_executable(from: &str, to: &Path) {
    let st = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp {from} {}", to.display());
}

#[test]
fn reexec_after_an_upgrade_runs_the_new_binary() {
    let Some(mnt) = setup("reexec_after_an_upgrade_runs_the_new_binary") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    // The agent installed at a path of its own (not on the watched mount).
    let installed = state.path().join("thinagent-linux-agent");
    copy_executable(env!("CARGO_BIN_EXE_thinagent-linux-agent"), &installed);
    let mut args = base_args(&scanner.url, mnt.path().to_str().unwrap());
    args.extend(["--fail-mode", "closed"]);
    let mut agent = Agent::start_command(state.path(), Command::new(&installed), &args);
    assert_eq!(read(&eicar), Err(EPERM));
    let exe = || std::fs::read_link(format!("/proc/{}/exe", agent.pid())).unwrap();
    let old_ino = std::fs::metadata(&installed).unwrap().ino();
    // An upgrade as install(1) does it: a new file renamed over the old one.
    let staged = state.path().join("thinagent-linux-agent.new");
    copy_executable(env!("CARGO_BIN_EXE_thinagent-linux-agent"), &staged);
    std::fs::rename(&staged, &installed).unwrap();
    assert!(exe().to_string_lossy().ends_with(" (deleted)"));
    agent.signal("USR2");
    assert!(
        eventually(Duration::from_secs(20), || agent.log_text().contains(
            "adopted the fanotify group from the previous agent image"
        )),
        "{}",
        agent.log_text()
    );
    assert_eq!(exe(), installed, "the new file runs now");
    assert_ne!(std::fs::metadata(&installed).unwrap().ino(), old_ino);
    assert!(
        agent.log_text().contains(&format!(
            "restarting in place: exec {}",
            installed.display()
        )),
        "{}",
        agent.log_text()
    );
    assert_eq!(read(&eicar), Err(EPERM));
    assert!(agent.terminate().success());
}

#[test]
fn restart_requests_during_a_restart_never_kill_the_agent() {
    let Some(mnt) = setup("restart_requests_during_a_restart") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    let mut args = base_args(&scanner.url, mnt.path().to_str().unwrap());
    args.extend(["--fail-mode", "closed"]);
    let mut agent = Agent::start(state.path(), &args);
    // A burst of SIGUSR2: some land while an image is between its exec and
    // its signal handlers, where the default action would kill it.
    for _ in 0..30 {
        agent.signal("USR2");
        std::thread::sleep(Duration::from_millis(3));
    }
    let settled = |log: &str| {
        count(log, "restarting in place: exec")
            == count(
                log,
                "adopted the fanotify group from the previous agent image",
            )
    };
    assert!(
        eventually(Duration::from_secs(30), || settled(&agent.log_text())),
        "{}",
        agent.log_text()
    );
    assert_eq!(read(&eicar), Err(EPERM), "{}", agent.log_text());
    let st = agent.terminate();
    assert!(st.success(), "{st}\n{}", agent.log_text());
    let restarts = count(&agent.log_text(), "adopted the fanotify group");
    assert!(restarts >= 1);
}

#[test]
fn sigterm_right_after_a_burst_of_restarts_stops_the_agent() {
    let Some(mnt) = setup("sigterm_right_after_a_burst_of_restarts") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    let args = base_args(&scanner.url, mnt.path().to_str().unwrap());
    let mut agent = Agent::start(state.path(), &args);
    for _ in 0..10 {
        agent.signal("USR2");
        std::thread::sleep(Duration::from_millis(3));
    }
    // Lands while an image winds down, execs or starts: never lost.
    let st = agent.terminate();
    assert!(st.success(), "{st}\n{}", agent.log_text());
    let log = agent.log_text();
    assert!(log.contains("1 marks removed; answering"), "{log}");
    assert_eq!(read(&eicar).unwrap(), EICAR, "a stop: the marks are gone");
}

#[test]
fn a_stored_descriptor_that_is_not_a_group_is_refused() {
    let Some(mnt) = setup("a_stored_descriptor_that_is_not_a_group") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    let mut store = FdStore::bind(state.path());
    let not_a_group = std::fs::File::open("/dev/null").unwrap();
    store.fds.push(("fanotify".into(), not_a_group.into()));
    let args = base_args(&scanner.url, mnt.path().to_str().unwrap());
    let mut agent = Agent::start_command(state.path(), store.command(), &args);
    let log = agent.log_text();
    assert!(
        log.contains("WARN: Fanotify : inherited descriptor from systemd's file-descriptor store (fd 3 is /dev/null, not a fanotify group): not used"),
        "{log}"
    );
    assert!(log.contains("created a new fanotify group"), "{log}");
    assert_eq!(read(&eicar), Err(EPERM));
    // The bad entry is dropped from the store, the new group stored.
    assert!(store.receive(Duration::from_secs(10)));
    assert_eq!(store.fds.len(), 1);
    assert!(agent.terminate().success());
}

#[test]
fn sigterm_during_a_restart_in_place_stops_the_agent() {
    let Some(mnt) = setup("sigterm_during_a_restart_in_place") else {
        return;
    };
    let state = state_dir();
    let hung = common::HungScanner::start();
    let held = mnt.join("held.txt");
    std::fs::write(&held, b"held\n").unwrap();
    let mut args = base_args(&hung.url, mnt.path().to_str().unwrap());
    args.extend(["--timeout-ms", "5000", "--fail-mode", "closed"]);
    let mut agent = Agent::start(state.path(), &args);
    // An open the scanner never answers keeps the restart busy (it waits
    // for that open's deadline).
    let opener = {
        let held = held.clone();
        std::thread::spawn(move || read(&held))
    };
    std::thread::sleep(Duration::from_millis(300));
    agent.signal("USR2");
    assert!(
        eventually(Duration::from_secs(10), || agent
            .log_text()
            .contains("restart in place requested")),
        "{}",
        agent.log_text()
    );
    let st = agent.terminate();
    assert!(st.success(), "{st}\n{}", agent.log_text());
    let log = agent.log_text();
    assert!(
        log.contains("SIGTERM during the restart in place: stopping instead"),
        "{log}"
    );
    assert!(!log.contains("restarting in place: exec"), "{log}");
    assert!(log.contains("1 marks removed; answering"), "{log}");
    assert_eq!(
        opener.join().unwrap(),
        Err(EPERM),
        "fail-closed at the stop"
    );
    assert_eq!(read(&held).unwrap(), b"held\n", "the marks are gone");
}
