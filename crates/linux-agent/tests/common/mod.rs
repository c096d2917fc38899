//! Shared pieces of the agent's end-to-end tests: a tmpfs mounted for the
//! test (unmounted on drop), the scanner service run in-process, a hung fake
//! scanner, and the agent binary as a child process.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thinagent_linux_agent::fanotify;
use thinagent_protocol::{Decoded, HelloAck, MAX_FRAME_LEN, Message, PROTOCOL_VERSION};
use thinagent_scanner::config::Config;
use thinagent_scanner::service::Service;

/// The EICAR test file.
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// `EPERM`: what a fanotify `FAN_DENY` makes `open`/`execve` fail with.
pub const EPERM: i32 = 1;
/// `EACCES`.
pub const EACCES: i32 = 13;

/// A tmpfs mounted on a fresh directory for one test; unmounted on drop
/// (also when the test fails).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the mount.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: an agent killed a moment ago may still hold the mount busy.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Mounts a tmpfs for the test, or says why the test must be skipped (not
/// root, no mount, no fanotify permission events).
pub fn setup(test: &str) -> Option<Tmpfs> {
    let dir = tempfile::Builder::new()
        .prefix("thinagent-agent-mnt")
        .tempdir()
        .ok()?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs"])
        .arg(dir.path())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIP {test}: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("SKIP {test}: cannot run mount: {e}");
            return None;
        }
    }
    let mnt = Tmpfs { dir };
    if let Err(e) = fanotify::probe(mnt.path()) {
        eprintln!("SKIP {test}: {e}");
        return None;
    }
    Some(mnt)
}

/// The scanner service, in this process, on its own runtime.
pub struct Scanner {
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Where it listens (`tcp://127.0.0.1:PORT` or `unix:///path`).
    pub url: String,
    /// Its audit log (JSON lines).
    pub audit: PathBuf,
    config: Config,
    handle: Option<thinagent_scanner::service::ServiceHandle>,
}

impl Scanner {
    /// Starts the scanner on `listen` (`tcp://127.0.0.1:0` picks a port),
    /// with the built-in signatures plus `signatures` directories, its audit
    /// log in `state` (never on the watched tmpfs).
    pub fn start(listen: &str, state: &Path, signatures: &[PathBuf]) -> Self {
        Self::start_with(listen, state, signatures, |_| {})
    }

    /// [`start`](Self::start), with `edit` applied to its configuration
    /// first (e.g. a short `cache.guest_ttl_secs`).
    pub fn start_with(
        listen: &str,
        state: &Path,
        signatures: &[PathBuf],
        edit: impl FnOnce(&mut Config),
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let audit = state.join("audit.jsonl");
        let mut config = Config {
            listen: vec![listen.to_string()],
            signatures: signatures.to_vec(),
            audit_log: Some(audit.clone()),
            ..Config::default()
        };
        edit(&mut config);
        let mut s = Scanner {
            rt,
            stop: None,
            task: None,
            url: String::new(),
            audit,
            config,
            handle: None,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let service = self
            .rt
            .block_on(Service::build(&self.config))
            .expect("scanner service starts");
        self.url = service.urls()[0].to_string();
        self.handle = Some(service.handle());
        // A restart binds the same address.
        self.config.listen = vec![self.url.clone()];
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(self.rt.spawn(async move {
            service
                .run(
                    async move {
                        let _ = rx.await;
                    },
                    Duration::from_secs(2),
                )
                .await;
        }));
    }

    /// Stops it (sessions get `Goodbye(Shutdown)`, the listener closes).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = self.rt.block_on(t);
        }
        // The Unix socket file goes with the listener; make sure before a
        // restart binds it again.
        if let Some(p) = self.url.strip_prefix("unix://") {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Reloads its signatures from the same directories (as SIGHUP does).
    #[allow(dead_code, reason = "not every test binary reloads")]
    pub fn reload(&self) {
        let handle = self.handle.as_ref().expect("running");
        self.rt
            .block_on(handle.reload())
            .expect("signatures reload");
    }

    /// Starts it again on the same address.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The audit log so far.
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit).unwrap_or_default()
    }

    /// The audit log once it contains `needle` (the scanner writes it from a
    /// thread of its own, just after the verdict), waiting at most 10 s;
    /// the text as it is then, either way.
    pub fn audit_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = self.audit_text();
            if text.contains(needle) || std::time::Instant::now() >= deadline {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A "scanner" that completes the handshake and then never answers.
pub struct HungScanner {
    /// `tcp://127.0.0.1:PORT`.
    pub url: String,
    _thread: std::thread::JoinHandle<()>,
}

impl HungScanner {
    /// Listens on a free loopback port.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("tcp://{}", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; MAX_FRAME_LEN];
                    let mut have = 0;
                    // Read the Hello, answer HelloAck, then swallow everything.
                    loop {
                        let Ok(n) = s.read(&mut buf[have..]) else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        have += n;
                        if let Ok(Decoded::Frame { frame, .. }) =
                            thinagent_protocol::decode_frame(&buf[..have])
                        {
                            let ack = HelloAck {
                                version: PROTOCOL_VERSION,
                                max_frame_len: MAX_FRAME_LEN as u32,
                                max_events_in_flight: 64,
                                max_read_chunk: 65_000,
                                heartbeat_interval_ms: 0,
                                idle_timeout_ms: 0,
                                query_timeout_ms: 60_000,
                                max_inline_len: 0,
                            };
                            let mut out = vec![0u8; 256];
                            let n = Message::HelloAck(ack)
                                .encode(frame.request_id, &mut out)
                                .unwrap();
                            if s.write_all(&out[..n]).is_err() {
                                return;
                            }
                            break;
                        }
                    }
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        HungScanner {
            url,
            _thread: thread,
        }
    }
}

/// The agent binary as a child; killed on drop.
pub struct Agent {
    child: Option<Child>,
    /// Its stderr.
    pub log: PathBuf,
}

impl Agent {
    /// Starts the agent with `args` (plus a `--ready-file` unless given)
    /// and waits until it is ready.
    pub fn start(state: &Path, args: &[&str]) -> Self {
        Self::start_command(
            state,
            Command::new(env!("CARGO_BIN_EXE_thinagent-linux-agent")),
            args,
        )
    }

    /// [`start`](Self::start) through `cmd`: the agent binary itself, or a
    /// wrapper that execs it with `args` appended.
    pub fn start_command(state: &Path, mut cmd: Command, args: &[&str]) -> Self {
        // A --ready-file in `args` is used as is; otherwise one in `state`.
        let given = args
            .iter()
            .position(|a| *a == "--ready-file")
            .map(|i| PathBuf::from(args[i + 1]));
        let ready = given
            .clone()
            .unwrap_or_else(|| state.join(format!("ready-{}", rand_suffix())));
        let log = state.join(format!("agent-{}.log", rand_suffix()));
        cmd.args(args);
        if given.is_none() {
            cmd.arg("--ready-file").arg(&ready);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn thinagent-linux-agent");
        let mut agent = Agent {
            child: Some(child),
            log,
        };
        let start = Instant::now();
        while !ready.exists() {
            if let Some(st) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited early ({st}):\n{}", agent.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent not ready:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (a `kill` name: `TERM`, `USR2`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Sends `SIGKILL` and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        child.wait().unwrap()
    }

    /// Sends `SIGTERM` and waits (bounded) for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("agent did not exit after SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Reads a file; `Err(errno)` if the open (or read) failed.
pub fn read(path: &Path) -> Result<Vec<u8>, i32> {
    std::fs::read(path).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Whether reading failed as a denied open does.
pub fn denied(path: &Path) -> bool {
    matches!(read(path), Err(EPERM | EACCES))
}

/// Polls `cond` every 50 ms for up to `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A counter of the agent's final `AUDIT: Stats : ...` line.
pub fn final_stat(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .filter_map(thinagent_guest::parse_line)
        .find(|l| l.routine == "Stats" && l.level == thinagent_guest::Level::Audit)
        .unwrap_or_else(|| panic!("no final stats line:\n{log}"));
    line.message
        .split([' ', '(', ')'])
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}", line.message))
}

/// A fresh state directory for one test's scanner and agent (removed on
/// drop).
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("thinagent-test-state")
        .tempdir()
        .unwrap()
}

/// Writes a ClamAV MD5 hash signature (`<md5>:<size>:<name>`) matching exactly
/// `bytes` into `<state>/sigs/<file>` (an `.hdb` name) and returns the `sigs`
/// directory, to hand to [`Scanner::start`].
pub fn md5_signature_dir(state: &Path, file: &str, bytes: &[u8], name: &str) -> PathBuf {
    use md5::{Digest, Md5};
    let digest: String = Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sigs = state.join("sigs");
    std::fs::create_dir(&sigs).unwrap();
    std::fs::write(
        sigs.join(file),
        format!("{digest}:{}:{name}\n", bytes.len()),
    )
    .unwrap();
    sigs
}

/// The agent's arguments every test passes: scanner `url`, the `watch`ed
/// directory, and a 100 ms reconnect delay.
pub fn base_args<'a>(url: &'a str, watch: &'a str) -> Vec<&'a str> {
    vec!["--connect", url, "--watch", watch, "--reconnect-ms", "100"]
}

/// A stand-in for systemd's file-descriptor store: the `NOTIFY_SOCKET` an
/// agent sends `FDSTORE=1` to, and the `LISTEN_FDS` start of the next agent.
pub struct FdStore {
    sock: std::os::unix::net::UnixDatagram,
    /// The socket's path (`NOTIFY_SOCKET`).
    pub path: PathBuf,
    /// The descriptors stored, by `FDNAME`.
    pub fds: Vec<(String, std::os::fd::OwnedFd)>,
}

impl FdStore {
    /// Binds `<state>/notify.sock`.
    pub fn bind(state: &Path) -> Self {
        let path = state.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        FdStore {
            sock,
            path,
            fds: Vec::new(),
        }
    }

    /// Handles the messages that came (`FDSTOREREMOVE=1`, `FDSTORE=1`, with
    /// their `FDNAME=`), waiting up to `limit` for one that stores a
    /// descriptor; `true` if one did.
    pub fn receive(&mut self, limit: Duration) -> bool {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let start = Instant::now();
        while start.elapsed() < limit {
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let Ok(msg) = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) else {
                continue;
            };
            let mut got = Vec::new();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: SCM_RIGHTS just installed these descriptors in
                    // this process; nothing else owns them.
                    got.extend(
                        fds.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_string();
            if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                self.fds.retain(|(n, _)| *n != name);
            }
            if text.lines().any(|l| l == "FDSTORE=1") && !got.is_empty() {
                for fd in got {
                    self.fds.push((name.clone(), fd));
                }
                return true;
            }
        }
        false
    }

    /// A command that starts the agent as systemd would with this store:
    /// the stored descriptors from fd 3 on, `LISTEN_FDS`, `LISTEN_FDNAMES`
    /// and `LISTEN_PID` (the shell's pid, kept by its `exec`), and
    /// `NOTIFY_SOCKET`.
    pub fn command(&self) -> Command {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let raw: Vec<i32> = self.fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let names: Vec<&str> = self.fds.iter().map(|(n, _)| n.as_str()).collect();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(env!("CARGO_BIN_EXE_thinagent-linux-agent"))
            .env("LISTEN_FDS", raw.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env("NOTIFY_SOCKET", &self.path);
        // Moved out of the way first (a stored fd may itself be 3, 4, ...).
        let high: Vec<i32> = (0..raw.len() as i32).map(|i| 900 + i).collect();
        // SAFETY: only async-signal-safe calls (dup2, fcntl) on descriptors
        // this process owns, in the forked child before exec.
        unsafe {
            cmd.pre_exec(move || {
                for (src, tmp) in raw.iter().zip(&high) {
                    if nix::libc::dup2(*src, *tmp) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, tmp) in high.iter().enumerate() {
                    // dup2 leaves FD_CLOEXEC off on the new descriptor.
                    if nix::libc::dup2(*tmp, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    nix::libc::close(*tmp);
                }
                Ok(())
            });
        }
        cmd
    }
}

/// A frame the [`ScriptedHost`] saw, summarised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenEvent {
    /// The path, lossily as UTF-8.
    pub path: String,
    /// The frame's header version.
    pub version: u16,
    /// The `file_size` the event states.
    pub file_size: u64,
    /// Inline content bytes.
    pub content_len: usize,
    /// The `WHOLE_FILE` flag.
    pub whole_file: bool,
}

/// What the [`ScriptedHost`] saw on all its connections.
#[derive(Clone, Debug, Default)]
pub struct HostLog {
    /// Each `Hello`: (`version_min`, `version_max`, capabilities).
    pub hellos: Vec<(u16, u16, u64)>,
    /// The version each `HelloAck` chose.
    pub chosen: Vec<u16>,
    /// Every `FileEvent`.
    pub events: Vec<SeenEvent>,
    /// `ReadRequest`s sent, per event path.
    pub reads: Vec<String>,
    /// Verdicts sent: (path, denied).
    pub verdicts: Vec<(String, bool)>,
}

impl HostLog {
    /// The events for paths ending in `name`.
    pub fn events_of(&self, name: &str) -> Vec<SeenEvent> {
        self.events
            .iter()
            .filter(|e| e.path.ends_with(name))
            .cloned()
            .collect()
    }

    /// `ReadRequest`s for paths ending in `name`.
    pub fn reads_of(&self, name: &str) -> usize {
        self.reads.iter().filter(|p| p.ends_with(name)).count()
    }
}

/// A minimal scanner speaking protocol versions 1..=`max_version` for the
/// agent's tests: it announces `max_inline_len`, reads with `ReadRequest`s
/// whatever an event did not carry whole, denies content containing the
/// EICAR string (TTL 60 s), allows the rest, and logs what it saw.
pub struct ScriptedHost {
    /// `tcp://127.0.0.1:PORT`.
    pub url: String,
    log: std::sync::Arc<std::sync::Mutex<HostLog>>,
}

impl ScriptedHost {
    /// Listens on a free loopback port.
    pub fn start(max_version: u16, max_inline_len: u32) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("tcp://{}", listener.local_addr().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(HostLog::default()));
        let shared = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { return };
                let log = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve_scripted(s, max_version, max_inline_len, &log);
                });
            }
        });
        ScriptedHost { url, log }
    }

    /// What it saw so far.
    pub fn log(&self) -> HostLog {
        self.log.lock().unwrap().clone()
    }
}

fn serve_scripted(
    mut s: std::net::TcpStream,
    max_version: u16,
    max_inline_len: u32,
    log: &std::sync::Mutex<HostLog>,
) -> std::io::Result<()> {
    use std::collections::HashMap;
    use thinagent_protocol::{
        Decision, FileEvent, ReadData, ReadOutcome, ReadRequest, StreamDecoder, Verdict,
    };
    const CHUNK: u32 = 65_480;
    let mut rx = StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]);
    let mut version = PROTOCOL_VERSION;
    // Event id -> (path, bytes so far); read id -> event id.
    let mut files: HashMap<u64, (String, Vec<u8>)> = HashMap::new();
    let mut reads: HashMap<u64, u64> = HashMap::new();
    let mut next_read = 1u64;
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let mut out = vec![0u8; MAX_FRAME_LEN];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let took = rx.push(rest);
            rest = &rest[took..];
            loop {
                // Frames to send (message, request id), and the event to
                // judge once its content is complete.
                let mut replies: Vec<(Message<'static>, u64)> = Vec::new();
                let frame = match rx.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => panic!("scripted host: the agent sent a bad frame: {e:?}"),
                };
                let id = frame.request_id;
                let mut verdict_for: Option<u64> = None;
                match frame.message {
                    Message::Hello(h) => {
                        log.lock().unwrap().hellos.push((
                            h.version_min,
                            h.version_max,
                            h.capabilities.0,
                        ));
                        let chosen = h.version_max.min(max_version);
                        log.lock().unwrap().chosen.push(chosen);
                        let ack = HelloAck {
                            version: chosen,
                            max_frame_len: MAX_FRAME_LEN as u32,
                            max_events_in_flight: 64,
                            max_read_chunk: CHUNK,
                            heartbeat_interval_ms: 0,
                            idle_timeout_ms: 0,
                            query_timeout_ms: 60_000,
                            max_inline_len: if chosen >= 2 { max_inline_len } else { 0 },
                        };
                        let n = Message::HelloAck(ack).encode(id, &mut out).unwrap();
                        s.write_all(&out[..n])?;
                        version = chosen;
                        rx.set_session_version(chosen);
                    }
                    Message::FileEvent(FileEvent {
                        path,
                        file,
                        content,
                        ..
                    }) => {
                        let path = String::from_utf8_lossy(path.as_bytes()).into_owned();
                        log.lock().unwrap().events.push(SeenEvent {
                            path: path.clone(),
                            version: frame.version,
                            file_size: file.size,
                            content_len: content.bytes.len(),
                            whole_file: content.whole_file,
                        });
                        files.insert(id, (path.clone(), content.bytes.to_vec()));
                        if content.whole_file {
                            verdict_for = Some(id);
                        } else {
                            let read = next_read;
                            next_read += 1;
                            reads.insert(read, id);
                            log.lock().unwrap().reads.push(path);
                            let req = ReadRequest {
                                event_id: id,
                                offset: content.bytes.len() as u64,
                                length: CHUNK,
                            };
                            replies.push((Message::ReadRequest(req), read));
                        }
                    }
                    Message::ReadData(ReadData {
                        event_id, outcome, ..
                    }) if reads.remove(&id).is_some() => match outcome {
                        ReadOutcome::Data(d) => {
                            let (path, bytes) = files.get_mut(&event_id).unwrap();
                            bytes.extend_from_slice(d);
                            let read = next_read;
                            next_read += 1;
                            reads.insert(read, event_id);
                            log.lock().unwrap().reads.push(path.clone());
                            let req = ReadRequest {
                                event_id,
                                offset: bytes.len() as u64,
                                length: CHUNK,
                            };
                            replies.push((Message::ReadRequest(req), read));
                        }
                        ReadOutcome::EndOfFile(d) => {
                            files.get_mut(&event_id).unwrap().1.extend_from_slice(d);
                            verdict_for = Some(event_id);
                        }
                        _ => verdict_for = Some(event_id),
                    },
                    Message::Ping(hb) => replies.push((Message::Pong(hb), id)),
                    Message::Goodbye(_) => return Ok(()),
                    _ => {}
                }
                if let Some(event) = verdict_for
                    && let Some((path, bytes)) = files.remove(&event)
                {
                    let denied = bytes.windows(EICAR.len()).any(|w| w == EICAR);
                    log.lock().unwrap().verdicts.push((path, denied));
                    let v = Verdict {
                        decision: if denied {
                            Decision::Deny
                        } else {
                            Decision::Allow
                        },
                        cache_ttl_secs: 60,
                        threat_name: if denied { "Eicar-Test-Signature" } else { "" },
                    };
                    replies.push((Message::Verdict(v), event));
                }
                for (msg, rid) in replies {
                    let n = msg.encode_for(version, rid, &mut out).unwrap();
                    s.write_all(&out[..n])?;
                }
            }
        }
    }
}
