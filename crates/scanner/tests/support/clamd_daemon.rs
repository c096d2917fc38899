//! A real `clamd` for tests: its own config, signature databases, Unix socket
//! and loopback TCP port in a temporary directory; killed on drop.
//!
//! Include with `#[path = "support/clamd_daemon.rs"] mod clamd_daemon;`.
//! If clamd is not installed, [`ClamdDaemon::start`] returns `None` after
//! printing why (the test then skips), unless the environment variable `CI`
//! is `true`: CI installs clamav-daemon, so a missing clamd there fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The EICAR test file (68 bytes).
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// MD5 of [`EICAR`].
pub const EICAR_MD5: &str = "44d88612fea8a8f36de82e1278abb02f";

/// How long clamd may take to load its (tiny) databases and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running clamd, killed when dropped.
pub struct ClamdDaemon {
    child: Child,
    dir: tempfile::TempDir,
    /// clamd's LocalSocket.
    pub unix_socket: PathBuf,
    /// clamd's TCP listener, `127.0.0.1:PORT`.
    pub tcp: String,
}

/// Finds the clamd binary: `$THINAGENT_CLAMD`, `/usr/sbin/clamd`, or `clamd`
/// on `PATH`.
pub fn find_clamd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("THINAGENT_CLAMD") {
        return Some(PathBuf::from(p));
    }
    let standard = Path::new("/usr/sbin/clamd");
    if standard.exists() {
        return Some(standard.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("clamd"))
            .find(|p| p.is_file())
    })
}

/// True when running in CI (`CI=true`), where every test must really run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr().unwrap().port()
}

fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"zPING\0").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply.starts_with(b"PONG")
}

impl ClamdDaemon {
    /// Starts clamd with the given database files (name, content), e.g.
    /// `("test.hdb", "md5:size:Name\n")`, and `StreamMaxLength` (clamd
    /// syntax, e.g. `"4M"`). `None` = clamd not installed, test skipped.
    pub fn start(databases: &[(&str, &str)], stream_max_length: &str) -> Option<ClamdDaemon> {
        let Some(clamd) = find_clamd() else {
            let msg = "clamd not found (install Debian's clamav-daemon or set THINAGENT_CLAMD)";
            if in_ci() {
                panic!("{msg}: CI=true, so the clamd tests must run");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("thinagent-clamd-")
            .tempdir()
            .expect("create clamd temp dir");
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        for (name, content) in databases {
            std::fs::write(db.join(name), content).unwrap();
        }
        let unix_socket = dir.path().join("clamd.sock");
        let port = free_tcp_port();
        let conf = dir.path().join("clamd.conf");
        let log = dir.path().join("clamd.log");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\n\
                 LocalSocket {sock}\n\
                 FixStaleSocket yes\n\
                 TCPSocket {port}\n\
                 TCPAddr 127.0.0.1\n\
                 DatabaseDirectory {db}\n\
                 LogFile {log}\n\
                 StreamMaxLength {stream_max_length}\n\
                 MaxThreads 4\n\
                 SelfCheck 0\n",
                sock = unix_socket.display(),
                db = db.display(),
                log = log.display(),
            ),
        )
        .unwrap();
        let output = std::fs::File::create(dir.path().join("clamd.out")).unwrap();
        let child = Command::new(&clamd)
            .arg(format!("--config-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", clamd.display()));
        let mut daemon = ClamdDaemon {
            child,
            dir,
            unix_socket,
            tcp: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(&daemon.unix_socket) {
                break;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "clamd exited during start-up ({status}):\n{}",
                    daemon.output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "clamd did not answer PING within {START_TIMEOUT:?}:\n{}",
                    daemon.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The TCP listener is bound before the Unix one, but check anyway.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&daemon.tcp).is_err() {
            assert!(Instant::now() < deadline, "clamd TCP port never opened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(daemon)
    }

    /// clamd's console output and log so far, for failure messages.
    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(self.dir.path().join("clamd.out")).unwrap_or_default();
        let log = std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default();
        format!("--- clamd output ---\n{out}\n--- clamd log ---\n{log}")
    }

    /// The directory holding config, databases and sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ClamdDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
