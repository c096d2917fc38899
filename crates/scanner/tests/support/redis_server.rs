//! A real `redis-server` for the scanner-farm tests: each test starts its
//! own on a free loopback port in a temporary directory (no persistence).
//! Without `redis-server` on PATH a test says so and passes, except under
//! CI (`CI` set), where it is a failure: .ci/run installs it.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real `redis-server` of this test; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra `redis-server` arguments (e.g. an ACL user).
    args: Vec<String>,
    /// `USER:PASSWORD@` for the test's own connections.
    auth: String,
}

impl RedisServer {
    /// Starts one on a free port, or `None` (with the reason printed) when
    /// `redis-server` is not installed and this is not CI.
    pub fn start() -> Option<Self> {
        Self::start_with(Vec::new(), String::new())
    }

    /// Like [`start`](Self::start), with `args` for `redis-server` and
    /// `auth` (`USER:PASSWORD@`) for the test's own connections.
    pub fn start_with(args: Vec<String>, auth: String) -> Option<Self> {
        let found = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|d| d.join("redis-server").is_file())
        });
        if !found {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "redis-server is not on PATH: CI must install it (Debian package redis-server, see .ci/run)"
                );
            }
            eprintln!(
                "SKIPPED: redis-server is not on PATH (apt-get install redis-server); these tests need a real Redis"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            args,
            auth,
        };
        server.run();
        Some(server)
    }

    /// (Re)starts the server on its port and waits until it answers.
    pub fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if self.sync_conn().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer in 10 s", self.port);
    }

    /// Kills it (SIGKILL: no goodbye to the clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn sync_conn(&self) -> redis::RedisResult<redis::Connection> {
        let url = format!("redis://{}127.0.0.1:{}", self.auth, self.port);
        let client = redis::Client::open(url)?;
        let mut c = client.get_connection_with_timeout(Duration::from_secs(1))?;
        redis::cmd("PING").query::<String>(&mut c)?;
        Ok(c)
    }

    /// Keys matching `pattern` (`KEYS`: fine on a test's few keys).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut c = self.sync_conn().expect("redis answers");
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
        keys.sort();
        keys
    }

    /// `MEMORY USAGE key`: bytes Redis spends on the entry.
    pub fn memory_usage(&self, key: &str) -> u64 {
        let mut c = self.sync_conn().expect("redis answers");
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query(&mut c)
            .unwrap()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let mut c = self.sync_conn().expect("redis answers");
        redis::cmd("GET").arg(key).query(&mut c).unwrap()
    }

    pub fn ttl(&self, key: &str) -> i64 {
        let mut c = self.sync_conn().expect("redis answers");
        redis::cmd("TTL").arg(key).query(&mut c).unwrap()
    }

    /// Every entry of the stream `key`, oldest first: its fields.
    pub fn stream(&self, key: &str) -> Vec<HashMap<String, String>> {
        let mut c = self.sync_conn().expect("redis answers");
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(&mut c)
            .unwrap();
        entries
            .into_iter()
            .map(|(_, kv)| kv.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect())
            .collect()
    }

    /// Waits until the stream `key` has an entry for which `pred` holds;
    /// every entry.
    pub fn wait_stream(
        &self,
        key: &str,
        pred: impl Fn(&HashMap<String, String>) -> bool,
    ) -> Vec<HashMap<String, String>> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = self.stream(key);
            if entries.iter().any(&pred) || Instant::now() > until {
                return entries;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn hgetall(&self, key: &str) -> HashMap<String, String> {
        let mut c = self.sync_conn().expect("redis answers");
        redis::cmd("HGETALL").arg(key).query(&mut c).unwrap()
    }

    /// Waits until `pattern` matches at least `n` keys (the writes are
    /// fire-and-forget).
    pub fn wait_keys(&self, pattern: &str, n: usize) -> Vec<String> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let keys = self.keys(pattern);
            if keys.len() >= n || Instant::now() > until {
                return keys;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
