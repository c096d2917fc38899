//! Host actions (protocol version 2, `docs/protocol.md` §14) carried out by
//! the real agent binary, as root, on a tmpfs of the test's own, against a
//! host built from the scanner's `HostSession`: remediation of an open file,
//! of a replaced file and of a missing one; an on-demand scan of 10,000
//! files while on-access opens go on (their latency measured and printed,
//! never asserted), with symbolic-link loops, a bind mount and an inner
//! tmpfs not followed; cancelling a scan; host policies taking effect
//! without a restart, a pinned field reported and not applied, and the
//! policy kept across a reconnect; restoring files (new ones only, never
//! over an existing one, their later opens judged again).
//!
//! Each test skips with a printed reason when not root or without fanotify
//! permission events.

use crate::common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Agent, EICAR, EPERM, base_args, read, setup, state_dir};
use thinagent_protocol::{
    ActionResult, ActionStatus, Decision, EventKind, Exclusion, ExclusionKind, Exclusions,
    FailMode, FileIdentity, FilePath, Health, Policy, PolicyFields, RemediateAction, ScanCounters,
    ScanDone, ScanFlags, ScanStatus,
};
use thinagent_scanner::session::{
    ActionOutcome, GuestPath, HostSession, ScanOptions, SessionEvent, SessionLimits,
};

/// A host policy to send, owned.
#[derive(Clone, Debug, Default)]
struct HostPolicy {
    version: u64,
    fail_mode: Option<FailMode>,
    exclusions: Option<Vec<(ExclusionKind, String)>>,
    max_scan_size: Option<u64>,
}

enum Cmd {
    Remediate(RemediateAction, String, FileIdentity, Sender<ActionOutcome>),
    Policy(HostPolicy, Sender<ActionOutcome>),
    Scan(String, ScanOptions, Sender<u64>, Sender<ActionOutcome>),
    Cancel(u64),
    Restore(String, Vec<u8>, Sender<ActionOutcome>),
    /// Close the connection (the agent reconnects).
    Drop,
}

enum Input {
    Bytes(u64, Vec<u8>),
    Eof(u64),
    Cmd(Cmd),
}

/// What the host saw.
#[derive(Default)]
struct Seen {
    /// Every query: (kind, path, identity).
    queries: Vec<(EventKind, String, FileIdentity)>,
    /// Verdicts sent: (kind, path, denied).
    verdicts: Vec<(EventKind, String, bool)>,
    /// `ScanProgress` counters, in order.
    progress: Vec<ScanCounters>,
    /// `Health` reports, in order.
    health: Vec<Health>,
    /// Sessions established.
    connections: u64,
}

/// A host on a `HostSession`: judges by content (EICAR denied), carries
/// out the test's host actions, records what it saw.
struct ActionHost {
    url: String,
    tx: Sender<Input>,
    seen: Arc<Mutex<Seen>>,
}

impl ActionHost {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("tcp://{}", listener.local_addr().unwrap());
        let (tx, rx) = channel::<Input>();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (seen2, tx2) = (seen.clone(), tx.clone());
        std::thread::spawn(move || serve(&listener, &rx, &tx2, &seen2));
        ActionHost { url, tx, seen }
    }

    fn wait<T>(rx: &Receiver<T>, what: &str) -> T {
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no answer to {what}"))
    }

    fn remediate(&self, action: RemediateAction, path: &Path, id: FileIdentity) -> ActionResult {
        let (tx, rx) = channel();
        let p = path.to_str().unwrap().to_string();
        self.tx
            .send(Input::Cmd(Cmd::Remediate(action, p, id, tx)))
            .unwrap();
        match Self::wait(&rx, "remediate") {
            ActionOutcome::Result(r) => r,
            other => panic!("remediate ended {other:?}"),
        }
    }

    fn policy(&self, p: HostPolicy) -> ActionResult {
        let (tx, rx) = channel();
        self.tx.send(Input::Cmd(Cmd::Policy(p, tx))).unwrap();
        match Self::wait(&rx, "policy") {
            ActionOutcome::Result(r) => r,
            other => panic!("policy ended {other:?}"),
        }
    }

    /// Starts a scan; returns its id and where its `ScanDone` comes.
    fn scan(&self, root: &Path, options: ScanOptions) -> (u64, Receiver<ActionOutcome>) {
        let (id_tx, id_rx) = channel();
        let (tx, rx) = channel();
        let p = root.to_str().unwrap().to_string();
        self.tx
            .send(Input::Cmd(Cmd::Scan(p, options, id_tx, tx)))
            .unwrap();
        (Self::wait(&id_rx, "scan_tree"), rx)
    }

    fn scan_done(rx: &Receiver<ActionOutcome>) -> ScanDone {
        match Self::wait(rx, "the scan") {
            ActionOutcome::ScanDone(d) => d,
            other => panic!("scan ended {other:?}"),
        }
    }

    fn restore(&self, path: &Path, content: &[u8]) -> ActionResult {
        let (tx, rx) = channel();
        let p = path.to_str().unwrap().to_string();
        self.tx
            .send(Input::Cmd(Cmd::Restore(p, content.to_vec(), tx)))
            .unwrap();
        match Self::wait(&rx, "restore") {
            ActionOutcome::Result(r) => r,
            other => panic!("restore ended {other:?}"),
        }
    }

    fn cancel(&self, id: u64) {
        self.tx.send(Input::Cmd(Cmd::Cancel(id))).unwrap();
    }

    /// The identity of the last event for `path`.
    fn identity(&self, path: &Path) -> FileIdentity {
        let p = path.to_str().unwrap();
        self.seen
            .lock()
            .unwrap()
            .queries
            .iter()
            .rev()
            .find(|(_, q, _)| q == p)
            .map(|(_, _, id)| *id)
            .unwrap_or_else(|| panic!("no event for {p}"))
    }
}

fn serve(listener: &TcpListener, rx: &Receiver<Input>, tx: &Sender<Input>, seen: &Mutex<Seen>) {
    let mut conn_no = 0u64;
    let mut pending_cmds: Vec<Cmd> = Vec::new();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        stream.set_nodelay(true).unwrap();
        conn_no += 1;
        let mut rd = stream.try_clone().unwrap();
        let (tx2, n) = (tx.clone(), conn_no);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match rd.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx2.send(Input::Eof(n));
                        return;
                    }
                    Ok(k) => {
                        if tx2.send(Input::Bytes(n, buf[..k].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        run_connection(stream, conn_no, rx, seen, &mut pending_cmds);
    }
}

fn run_connection(
    mut wr: TcpStream,
    conn: u64,
    rx: &Receiver<Input>,
    seen: &Mutex<Seen>,
    pending_cmds: &mut Vec<Cmd>,
) {
    let mut s = HostSession::new(SessionLimits::default(), Instant::now());
    let mut kinds: HashMap<u64, (EventKind, String)> = HashMap::new();
    let mut content: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut replies: HashMap<u64, Sender<ActionOutcome>> = HashMap::new();
    let mut connected = false;
    let mut out = vec![0u8; 256 * 1024];
    loop {
        // Commands that came before the handshake wait for it.
        if connected {
            for cmd in std::mem::take(pending_cmds) {
                if !run_cmd(&mut s, cmd, &mut replies) {
                    let _ = wr.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
        while let Some(n) = s.poll_transmit(&mut out) {
            if wr.write_all(&out[..n]).is_err() {
                return;
            }
        }
        let wait = s
            .next_deadline()
            .map_or(Duration::from_millis(100), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(100));
        let input = rx.recv_timeout(wait);
        let now = Instant::now();
        match input {
            Ok(Input::Bytes(n, b)) if n == conn => s.receive(&b, now),
            Ok(Input::Eof(n)) if n == conn => s.transport_closed(now),
            Ok(Input::Bytes(..) | Input::Eof(_)) => {}
            Ok(Input::Cmd(c)) => pending_cmds.push(c),
            Err(_) => s.handle_timeout(now),
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                SessionEvent::Connected(_) => {
                    connected = true;
                    seen.lock().unwrap().connections += 1;
                }
                SessionEvent::Health(h) => seen.lock().unwrap().health.push(h),
                SessionEvent::Query(q) => {
                    let path = q.path.to_string_lossy();
                    seen.lock()
                        .unwrap()
                        .queries
                        .push((q.kind, path.clone(), q.file));
                    kinds.insert(q.id, (q.kind, path));
                    content.insert(q.id, Vec::new());
                    let _ = s.fetch(q.id, now);
                }
                SessionEvent::Content { id, data, .. } => {
                    s.consumed(id, data.len());
                    if let Some(c) = content.get_mut(&id) {
                        c.extend_from_slice(&data);
                    }
                }
                SessionEvent::ContentEnd { id, .. } => {
                    let bytes = content.remove(&id).unwrap_or_default();
                    let denied = bytes.windows(EICAR.len()).any(|w| w == EICAR);
                    let (decision, threat) = if denied {
                        (Decision::Deny, "Eicar-Test-Signature")
                    } else {
                        (Decision::Allow, "")
                    };
                    if s.verdict(id, decision, threat, 60, now).is_ok()
                        && let Some((kind, path)) = kinds.remove(&id)
                    {
                        seen.lock().unwrap().verdicts.push((kind, path, denied));
                    }
                }
                SessionEvent::ContentFailed { id, .. } => {
                    content.remove(&id);
                    let _ = s.verdict(id, Decision::AllowNoCache, "", 0, now);
                }
                SessionEvent::Finished { query, .. } => {
                    content.remove(&query.id);
                }
                SessionEvent::ActionDone { id, outcome, .. } => {
                    if let Some(r) = replies.remove(&id) {
                        let _ = r.send(outcome);
                    }
                }
                SessionEvent::ScanProgress { counters, .. } => {
                    seen.lock().unwrap().progress.push(counters);
                }
                SessionEvent::Closed(_) => {
                    while let Some(n) = s.poll_transmit(&mut out) {
                        let _ = wr.write_all(&out[..n]);
                    }
                    let _ = wr.shutdown(std::net::Shutdown::Both);
                    return;
                }
                SessionEvent::Anomaly(_) => {}
            }
        }
    }
}

/// Sends one command; `false` to drop the connection.
fn run_cmd(
    s: &mut HostSession,
    cmd: Cmd,
    replies: &mut HashMap<u64, Sender<ActionOutcome>>,
) -> bool {
    let now = Instant::now();
    match cmd {
        Cmd::Remediate(action, path, id, reply) => {
            let rid = s
                .remediate(
                    action,
                    &GuestPath::Utf8(path),
                    id,
                    Duration::from_secs(10),
                    now,
                )
                .unwrap();
            replies.insert(rid, reply);
        }
        Cmd::Policy(p, reply) => {
            let mut buf = vec![0u8; 64 * 1024];
            let exclusions = p.exclusions.as_ref().map(|list| {
                Exclusions::write(
                    list.iter().map(|(kind, v)| Exclusion {
                        kind: *kind,
                        value: FilePath::Utf8(v),
                    }),
                    &mut buf,
                )
                .unwrap()
            });
            let policy = Policy {
                version: p.version,
                deadline_ms: 10_000,
                fail_mode: p.fail_mode,
                debug_level: None,
                exclusions,
                query_timeout_ms: None,
                cache_ttl_max_secs: None,
                max_scan_size: p.max_scan_size,
            };
            let rid = s.set_policy(&policy, now).unwrap();
            replies.insert(rid, reply);
        }
        Cmd::Scan(root, options, id_tx, reply) => {
            let rid = s.scan_tree(&GuestPath::Utf8(root), options, now).unwrap();
            replies.insert(rid, reply);
            let _ = id_tx.send(rid);
        }
        Cmd::Cancel(id) => {
            let _ = s.cancel_scan(id, now);
        }
        Cmd::Restore(path, content, reply) => {
            let rid = s
                .restore(
                    &GuestPath::Utf8(path),
                    &content,
                    Duration::from_secs(30),
                    now,
                )
                .unwrap();
            replies.insert(rid, reply);
        }
        Cmd::Drop => return false,
    }
    true
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn mount(args: &[&str], target: &Path) -> bool {
    Command::new("mount")
        .args(args)
        .arg(target)
        .status()
        .is_ok_and(|s| s.success())
}

fn umount(target: &Path) {
    let _ = Command::new("umount").arg("-l").arg(target).status();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Opens `n` fresh files of `dir` one after the other (each a cold open:
/// an event the host judges) and returns each open's duration, sorted.
fn cold_opens(dir: &Path, tag: &str, n: usize, until: Option<&dyn Fn() -> bool>) -> Vec<Duration> {
    std::fs::create_dir_all(dir).unwrap();
    let mut times = Vec::new();
    for i in 0..n {
        if let Some(stop) = until
            && stop()
        {
            break;
        }
        let p = dir.join(format!("{tag}-{i}"));
        // Created (its empty version judged and cached), written (the
        // cache entry and ignore mark go), then opened for reading: a cold
        // open the host judges.
        write(&p, format!("live file {i}").as_bytes());
        let t = Instant::now();
        let f = std::fs::File::open(&p);
        times.push(t.elapsed());
        assert!(f.is_ok(), "clean file {} opens: {f:?}", p.display());
    }
    times.sort();
    times
}

#[test]
fn remediation_of_an_open_file_a_replaced_file_and_a_missing_one() {
    let Some(mnt) = setup("remediation_of_an_open_file_a_replaced_file_and_a_missing_one") else {
        return;
    };
    let state = state_dir();
    let host = ActionHost::start();
    let watch = mnt.path().to_str().unwrap().to_string();
    let agent = Agent::start(state.path(), &base_args(&host.url, &watch));

    // An infected file, denied, then deleted by the host.
    let eicar = mnt.join("eicar.com");
    write(&eicar, EICAR);
    assert_eq!(read(&eicar), Err(EPERM));
    let r = host.remediate(RemediateAction::Delete, &eicar, host.identity(&eicar));
    assert_eq!(r.status, ActionStatus::Done, "{r:?}");
    assert!(!eicar.exists());

    // A file another descriptor keeps open: the name goes, the open
    // descriptor still reads the content.
    let open = mnt.join("open.txt");
    write(&open, b"still readable through the open descriptor");
    let mut held = std::fs::File::open(&open).unwrap();
    let r = host.remediate(RemediateAction::Delete, &open, host.identity(&open));
    assert_eq!(r.status, ActionStatus::Done, "{r:?}");
    assert!(!open.exists(), "the name is gone");
    let mut text = String::new();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "still readable through the open descriptor");

    // Replaced after the scan (same path, another inode): Changed, and the
    // new file stays.
    let replaced = mnt.join("replaced.txt");
    write(&replaced, b"the judged version");
    read(&replaced).unwrap();
    let judged = host.identity(&replaced);
    let tmp = mnt.join("replaced.new");
    write(&tmp, b"the judged version");
    std::fs::rename(&tmp, &replaced).unwrap();
    let r = host.remediate(RemediateAction::Delete, &replaced, judged);
    assert_eq!(r.status, ActionStatus::Changed, "{r:?}");
    assert_eq!(read(&replaced).unwrap(), b"the judged version");
    // Same inode, content changed (size and mtime): Changed too.
    let grown = mnt.join("grown.txt");
    write(&grown, b"short");
    read(&grown).unwrap();
    let judged = host.identity(&grown);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&grown)
        .unwrap()
        .write_all(b" and longer")
        .unwrap();
    let r = host.remediate(RemediateAction::Truncate, &grown, judged);
    assert_eq!(r.status, ActionStatus::Changed, "{r:?}");
    assert_eq!(read(&grown).unwrap(), b"short and longer");

    // Nothing there.
    let r = host.remediate(RemediateAction::Delete, &mnt.join("never-was"), judged);
    assert_eq!(r.status, ActionStatus::NotFound, "{r:?}");
    let r = host.remediate(RemediateAction::Delete, &mnt.join("no/such/dir"), judged);
    assert_eq!(r.status, ActionStatus::NotFound, "{r:?}");

    // A symbolic link to the judged file is not the file.
    let target = mnt.join("target.txt");
    write(&target, b"target");
    read(&target).unwrap();
    let link = mnt.join("link.txt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let r = host.remediate(RemediateAction::Delete, &link, host.identity(&target));
    assert_eq!(r.status, ActionStatus::Changed, "{r:?}");
    assert!(target.exists() && link.symlink_metadata().is_ok());

    // Truncate: the name stays, the size becomes 0.
    let trunc = mnt.join("trunc.txt");
    write(&trunc, b"some content to drop");
    read(&trunc).unwrap();
    let r = host.remediate(RemediateAction::Truncate, &trunc, host.identity(&trunc));
    assert_eq!(r.status, ActionStatus::Done, "{r:?}");
    assert_eq!(std::fs::metadata(&trunc).unwrap().len(), 0);

    let log = agent.log_text();
    assert!(log.contains("delete") && log.contains(": done"), "{log}");
    // Health came right after the handshake.
    let seen = host.seen.lock().unwrap();
    assert!(!seen.health.is_empty(), "a Health report");
    assert_eq!(seen.health[0].policy_version, 0);
    assert_eq!(seen.health[0].sessions, 1);
}

#[test]
fn restore_writes_new_files_only_and_their_opens_are_judged_again() {
    let Some(mnt) = setup("restore_writes_new_files_only_and_their_opens_are_judged_again") else {
        return;
    };
    let state = state_dir();
    let host = ActionHost::start();
    let watch = mnt.path().to_str().unwrap().to_string();
    let agent = Agent::start(state.path(), &base_args(&host.url, &watch));
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    // 300 KiB: many chunks, more than the guest's inbox and decoder hold
    // (the session holds chunks back; nothing is lost or reordered).
    let content: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    let back = mnt.join("restored.bin");
    let r = host.restore(&back, &content);
    assert_eq!(
        (r.status, r.value),
        (ActionStatus::Done, content.len() as u64),
        "{r:?}"
    );
    assert!(std::fs::read(&back).unwrap() == content, "the same bytes");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&back).unwrap().permissions().mode() & 0o7777,
        0o600,
        "private to root: a restore never widens who may read a file"
    );
    // Its opens are judged by the host like any other file's.
    read(&back).unwrap();
    let p = back.to_str().unwrap().to_string();
    assert!(
        host.seen
            .lock()
            .unwrap()
            .verdicts
            .iter()
            .any(|(_, q, _)| *q == p),
        "the restored file's open was judged"
    );

    // Restored bytes that are a threat are denied at their next open: the
    // agent never trusts its own restore.
    let threat = mnt.join("eicar-back.com");
    let r = host.restore(&threat, EICAR);
    assert_eq!(r.status, ActionStatus::Done, "{r:?}");
    assert_eq!(read(&threat), Err(EPERM));

    // Never over an existing file: Changed, the file as it was.
    let existing = mnt.join("existing.txt");
    write(&existing, b"keep me");
    let r = host.restore(&existing, b"the restored bytes");
    assert_eq!(r.status, ActionStatus::Changed, "{r:?}");
    assert_eq!(read(&existing).unwrap(), b"keep me");
    // Nor over a symbolic link (not followed).
    let link = mnt.join("link.txt");
    std::os::unix::fs::symlink(mnt.join("nowhere"), &link).unwrap();
    let r = host.restore(&link, b"x");
    assert_eq!(r.status, ActionStatus::Changed, "{r:?}");
    assert!(!mnt.join("nowhere").exists());

    // A directory that is a symbolic link is not entered.
    std::fs::create_dir(mnt.join("real")).unwrap();
    std::os::unix::fs::symlink(mnt.join("real"), mnt.join("linked")).unwrap();
    let r = host.restore(&mnt.join("linked").join("f.txt"), b"x");
    assert_eq!(r.status, ActionStatus::Failed, "{r:?}");
    assert!(names(&mnt.join("real")).is_empty());

    // No directory: NotFound. An empty file: Done, 0 bytes.
    let r = host.restore(&mnt.join("no/such/dir/f"), b"x");
    assert_eq!(r.status, ActionStatus::NotFound, "{r:?}");
    let empty = mnt.join("empty");
    let r = host.restore(&empty, b"");
    assert_eq!((r.status, r.value), (ActionStatus::Done, 0), "{r:?}");
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    // Nothing temporary is left behind.
    assert_eq!(
        names(mnt.path()),
        [
            "eicar-back.com",
            "empty",
            "existing.txt",
            "link.txt",
            "linked",
            "real",
            "restored.bin"
        ]
    );
    let log = agent.log_text();
    assert!(log.contains("restore") && log.contains(": done"), "{log}");
}

#[test]
fn on_demand_scan_of_ten_thousand_files_while_opens_go_on() {
    let Some(mnt) = setup("on_demand_scan_of_ten_thousand_files_while_opens_go_on") else {
        return;
    };
    let state = state_dir();
    let host = ActionHost::start();
    let watch = mnt.path().to_str().unwrap().to_string();
    let agent = Agent::start(state.path(), &base_args(&host.url, &watch));

    // 10,000 regular files: 100 directories of 100, three of them EICAR.
    let tree = mnt.join("tree");
    let eicars: Vec<PathBuf> = [(3, 7), (42, 0), (99, 99)]
        .iter()
        .map(|(d, f)| tree.join(format!("d{d}/f{f}")))
        .collect();
    for d in 0..100 {
        let dir = tree.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let p = dir.join(format!("f{f}"));
            if eicars.contains(&p) {
                write(&p, EICAR);
            } else {
                write(&p, format!("clean file {d}/{f}").as_bytes());
            }
        }
    }
    // Loops and links that must not be followed.
    std::os::unix::fs::symlink(&tree, tree.join("loop")).unwrap();
    std::os::unix::fs::symlink("..", tree.join("d1/up")).unwrap();
    std::os::unix::fs::symlink("d0/f0", tree.join("file-link")).unwrap();
    // Another file system and a bind mount inside: not entered.
    let inner = tree.join("inner");
    std::fs::create_dir(&inner).unwrap();
    let inner_ok = mount(&["-t", "tmpfs", "tmpfs"], &inner);
    if inner_ok {
        for i in 0..5 {
            write(&inner.join(format!("x{i}")), b"on another tmpfs");
        }
    }
    let bind = tree.join("bind");
    std::fs::create_dir(&bind).unwrap();
    let bind_ok = mount(&["--bind", tree.join("d0").to_str().unwrap()], &bind);
    eprintln!("inner tmpfs mounted: {inner_ok}, bind mount: {bind_ok}");

    // On-access latency while idle.
    let idle = cold_opens(&mnt.join("live-idle"), "idle", 400, None);

    // The scan, with opens going on meanwhile.
    let options = ScanOptions {
        flags: ScanFlags::default(),
        max_in_flight: 32,
        max_depth: 0,
        progress_interval: Duration::from_millis(100),
        max_file_size: 0,
    };
    let started = Instant::now();
    let (_id, done_rx) = host.scan(&tree, options);
    let seen = host.seen.clone();
    let scan_running = move || {
        seen.lock()
            .unwrap()
            .queries
            .iter()
            .filter(|q| q.0 == EventKind::OnDemand)
            .count()
            >= 9_990
    };
    let busy = cold_opens(&mnt.join("live-busy"), "busy", 400, Some(&scan_running));
    let done = ActionHost::scan_done(&done_rx);
    let elapsed = started.elapsed();

    eprintln!(
        "on-access cold open latency (test process, fresh files):\n\
         {:>12} {:>8} {:>10} {:>10} {:>10}\n\
         {:>12} {:>8} {:>10.1?} {:>10.1?} {:>10.1?}\n\
         {:>12} {:>8} {:>10.1?} {:>10.1?} {:>10.1?}\n\
         scan of 10,000 files: {elapsed:.2?}",
        "",
        "opens",
        "p50",
        "p99",
        "max",
        "idle",
        idle.len(),
        percentile(&idle, 0.5),
        percentile(&idle, 0.99),
        idle.last().copied().unwrap_or_default(),
        "during scan",
        busy.len(),
        percentile(&busy, 0.5),
        percentile(&busy, 0.99),
        busy.last().copied().unwrap_or_default(),
    );

    assert_eq!(done.status, ScanStatus::Completed, "{done:?}");
    let c = done.counters;
    assert_eq!(c.files_seen, 10_000, "{c:?}");
    assert_eq!(c.files_scanned, 10_000, "{c:?}");
    assert_eq!(c.files_denied, 3, "{c:?}");
    assert_eq!(c.files_skipped, 0, "{c:?}");
    assert_eq!(c.errors, 0, "{c:?}");
    let s = host.seen.lock().unwrap();
    // Every file exactly once, nothing from the links, the inner tmpfs or
    // the bind mount.
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for (kind, path, _) in &s.queries {
        if *kind == EventKind::OnDemand {
            *counts.entry(path.as_str()).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 10_000);
    assert!(counts.values().all(|n| *n == 1), "every file scanned once");
    let tree_s = tree.to_str().unwrap();
    for path in counts.keys() {
        let rel = path.strip_prefix(tree_s).unwrap();
        assert!(
            rel.starts_with("/d") && !rel.contains("/up/"),
            "only the tree's own files: {path}"
        );
    }
    let denied: Vec<&str> = s
        .verdicts
        .iter()
        .filter(|(k, _, d)| *k == EventKind::OnDemand && *d)
        .map(|(_, p, _)| p.as_str())
        .collect();
    assert_eq!(denied.len(), 3);
    for e in &eicars {
        assert!(
            denied.contains(&e.to_str().unwrap()),
            "{} denied",
            e.display()
        );
    }
    let bytes: u64 = (0..100)
        .flat_map(|d| (0..100).map(move |f| (d, f)))
        .map(|(d, f)| {
            let p = tree.join(format!("d{d}/f{f}"));
            std::fs::metadata(p).unwrap().len()
        })
        .sum();
    assert_eq!(c.bytes, bytes);
    assert!(!s.progress.is_empty(), "progress reported");
    for w in s.progress.windows(2) {
        assert!(w[0].files_seen <= w[1].files_seen, "progress only grows");
    }
    drop(s);
    // The inner tmpfs, with CROSS_MOUNTS, is scanned (bind mount aside,
    // a small subtree).
    if inner_ok {
        let (_, rx) = host.scan(
            &inner,
            ScanOptions {
                flags: ScanFlags::CROSS_MOUNTS,
                ..options
            },
        );
        let d = ActionHost::scan_done(&rx);
        assert_eq!(
            (d.status, d.counters.files_seen),
            (ScanStatus::Completed, 5)
        );
        umount(&inner);
    }
    if bind_ok {
        umount(&bind);
    }
    // A root that does not exist.
    let (_, rx) = host.scan(&mnt.join("nothing-here"), options);
    assert_eq!(ActionHost::scan_done(&rx).status, ScanStatus::NotFound);
    // The EICAR files are still denied on access (the scan's verdicts are
    // cached like any other).
    for e in &eicars {
        assert_eq!(read(e), Err(EPERM));
    }
    drop(agent);
}

#[test]
fn a_scan_is_cancelled_mid_walk() {
    let Some(mnt) = setup("a_scan_is_cancelled_mid_walk") else {
        return;
    };
    let state = state_dir();
    let host = ActionHost::start();
    let watch = mnt.path().to_str().unwrap().to_string();
    let agent = Agent::start(state.path(), &base_args(&host.url, &watch));
    let tree = mnt.join("tree");
    for d in 0..20 {
        let dir = tree.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..200 {
            write(&dir.join(format!("f{f}")), b"clean");
        }
    }
    let (id, rx) = host.scan(
        &tree,
        ScanOptions {
            max_in_flight: 1,
            progress_interval: Duration::from_millis(20),
            ..ScanOptions::default()
        },
    );
    assert!(common::eventually(Duration::from_secs(20), || {
        host.seen
            .lock()
            .unwrap()
            .progress
            .last()
            .is_some_and(|p| p.files_scanned > 10)
    }));
    host.cancel(id);
    let d = ActionHost::scan_done(&rx);
    assert_eq!(d.status, ScanStatus::Cancelled, "{d:?}");
    assert!(d.counters.files_scanned < 4_000, "{d:?}");
    // No OnDemand event after the cancel's answer, beyond the one in flight.
    let sent_at_done = host
        .seen
        .lock()
        .unwrap()
        .queries
        .iter()
        .filter(|q| q.0 == EventKind::OnDemand)
        .count();
    std::thread::sleep(Duration::from_millis(300));
    let sent_later = host
        .seen
        .lock()
        .unwrap()
        .queries
        .iter()
        .filter(|q| q.0 == EventKind::OnDemand)
        .count();
    assert!(
        sent_later <= sent_at_done + 1,
        "{sent_at_done} then {sent_later}"
    );
    // Another scan may start now.
    let (_, rx) = host.scan(&tree.join("d0"), ScanOptions::default());
    let d = ActionHost::scan_done(&rx);
    assert_eq!(
        (d.status, d.counters.files_scanned),
        (ScanStatus::Completed, 200)
    );
    assert!(agent.log_text().contains("cancelled"));
}

#[test]
fn host_policy_takes_effect_without_a_restart() {
    let Some(mnt) = setup("host_policy_takes_effect_without_a_restart") else {
        return;
    };
    let state = state_dir();
    let host = ActionHost::start();
    let watch = mnt.path().to_str().unwrap().to_string();
    let agent = Agent::start(state.path(), &base_args(&host.url, &watch));
    let excluded = mnt.join("excluded");
    std::fs::create_dir(&excluded).unwrap();

    // Before: EICAR under excluded/ is denied.
    let e1 = excluded.join("eicar1.com");
    write(&e1, EICAR);
    assert_eq!(read(&e1), Err(EPERM));

    // Version 1: exclude the directory, fail closed, files above 100 bytes
    // not queried (so the fail mode decides them).
    let r = host.policy(HostPolicy {
        version: 1,
        fail_mode: Some(FailMode::Closed),
        exclusions: Some(vec![
            (ExclusionKind::PathPrefix, excluded.to_str().unwrap().into()),
            (ExclusionKind::Extension, "skipme".into()),
        ]),
        max_scan_size: Some(100),
    });
    assert_eq!((r.status, r.value, r.pinned), (ActionStatus::Done, 1, 0));
    let e2 = excluded.join("eicar2.com");
    write(&e2, EICAR);
    assert_eq!(read(&e2).unwrap(), EICAR, "excluded now");
    let e3 = mnt.join("eicar3.skipme");
    write(&e3, EICAR);
    assert_eq!(read(&e3).unwrap(), EICAR, "extension excluded now");
    let big = mnt.join("big.txt");
    write(&big, &[b'a'; 1000]);
    assert_eq!(
        read(&big),
        Err(EPERM),
        "too large for the policy: fail-closed"
    );

    // Version 2: fail open; the big file now opens by the fail mode.
    let r = host.policy(HostPolicy {
        version: 2,
        fail_mode: Some(FailMode::Open),
        ..HostPolicy::default()
    });
    assert_eq!((r.status, r.value), (ActionStatus::Done, 2));
    assert!(read(&big).is_ok(), "fail-open now");
    // The exclusions of version 1 stay (version 2 did not set them).
    assert!(read(&e2).is_ok());

    // Too many exclusions: Rejected, nothing changes.
    let r = host.policy(HostPolicy {
        version: 3,
        fail_mode: Some(FailMode::Closed),
        exclusions: Some(
            (0..100)
                .map(|i| (ExclusionKind::PathPrefix, format!("/x{i}")))
                .collect(),
        ),
        ..HostPolicy::default()
    });
    assert_eq!(r.status, ActionStatus::Rejected, "{r:?}");
    assert!(read(&big).is_ok(), "still fail-open");
    assert!(read(&e2).is_ok(), "still excluded");

    // The policy survives a reconnect: the next Health says version 2.
    host.tx.send(Input::Cmd(Cmd::Drop)).unwrap();
    assert!(common::eventually(Duration::from_secs(20), || {
        let s = host.seen.lock().unwrap();
        s.connections >= 2 && s.health.last().is_some_and(|h| h.sessions >= 2)
    }));
    let h = *host.seen.lock().unwrap().health.last().unwrap();
    assert_eq!(h.policy_version, 2, "{h:?}");
    assert_eq!(h.fail_mode, FailMode::Open);
    assert!(read(&e2).is_ok(), "still excluded after the reconnect");
    let log = agent.log_text();
    assert!(log.contains("host policy version 1 in effect"), "{log}");
    assert!(log.contains("host policy version 3 rejected"), "{log}");
}

#[test]
fn a_pinned_field_is_reported_and_not_applied() {
    let Some(mnt) = setup("a_pinned_field_is_reported_and_not_applied") else {
        return;
    };
    let state = state_dir();
    let host = ActionHost::start();
    let watch = mnt.path().to_str().unwrap().to_string();
    let mut args = base_args(&host.url, &watch);
    args.extend(["--pin-policy", "fail-mode,debug-level"]);
    let agent = Agent::start(state.path(), &args);
    let r = host.policy(HostPolicy {
        version: 7,
        fail_mode: Some(FailMode::Closed),
        exclusions: Some(vec![]),
        max_scan_size: Some(100),
    });
    assert_eq!(r.status, ActionStatus::Done);
    assert_eq!(r.value, 7);
    assert_eq!(r.pinned, PolicyFields::FAIL_MODE.0, "{r:?}");
    // max_scan_size applied, the fail mode stays open (pinned).
    let big = mnt.join("big.txt");
    write(&big, &[b'a'; 1000]);
    assert!(read(&big).is_ok(), "the local fail-open stays");
    assert!(common::eventually(Duration::from_secs(15), || {
        host.seen
            .lock()
            .unwrap()
            .health
            .last()
            .is_some_and(|h| h.policy_version == 7 && h.state.0 & (1 << 3) != 0)
    }));
    let log = agent.log_text();
    assert!(
        log.contains("pinned locally (not applied) fail-mode"),
        "{log}"
    );
}

#[test]
fn no_host_actions_refuses_them() {
    let Some(mnt) = setup("no_host_actions_refuses_them") else {
        return;
    };
    let state = state_dir();
    let host = ActionHost::start();
    let watch = mnt.path().to_str().unwrap().to_string();
    let mut args = base_args(&host.url, &watch);
    args.push("--no-host-actions");
    let _agent = Agent::start(state.path(), &args);
    let f = mnt.join("a.txt");
    write(&f, b"a");
    read(&f).unwrap();
    // The host's session refuses to send without the capability: the
    // remediate call itself fails, so check through the Hello instead.
    assert!(common::eventually(Duration::from_secs(10), || {
        host.seen.lock().unwrap().connections >= 1
    }));
    std::thread::sleep(Duration::from_millis(300));
    assert!(host.seen.lock().unwrap().health.is_empty(), "no Health");
}
