//! `thinagent-diag scan --connect URL FILE...`: a guest over the real
//! protocol.
//!
//! Each job opens one connection: a `FileEvent` per file with its identity
//! from the file's metadata, `ReadRequest`s served from the local file, one
//! result line per file in clamdscan's shape (`PATH: OK`, `PATH: NAME
//! FOUND`, `PATH: REASON ERROR`). Each connection drives
//! `thinagent_guest::Session`, the sans-IO core the drivers use. By default
//! it speaks protocol version 2 and sends each file inline: whole when it
//! fits the host's `max_inline_len` (one round trip, no `ReadRequest`), else
//! its first bytes. `--no-inline` announces no inline content: every byte is
//! read by the host, as in version 1, for comparison.
//!
//! Exit status: 0 nothing found, 1 something found, 2 an error occurred
//! (errors win, as with clamdscan).

mod conn;
mod files;
mod url;

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use url::ScanUrl;

/// Options of `thinagent-diag scan`.
#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// The scanner: tcp://HOST:PORT, tls://HOST:PORT, unix:///path, vsock://CID:PORT.
    #[arg(long, value_name = "URL")]
    pub connect: String,
    /// PEM client certificate (chain) for tls://; its subject is who the
    /// scanner takes this guest to be.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that signed the scanner's certificate.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// Files to scan; directories are walked recursively (regular files only).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Concurrent sessions (connections), all taking files from one shared queue.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub jobs: u32,
    /// Send every file this many times (rounds after the first hit the caches).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Queries in flight per session (at most 64; the host may allow fewer).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub window: u32,
    /// Per-query deadline, milliseconds (the guest's umcMsgTimeoutMs). A
    /// query not answered in time is reported as an ERROR.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Print only infected files and errors (clamdscan --infected).
    #[arg(short = 'i', long)]
    pub infected: bool,
    /// Print no per-file lines: only the summary (stderr) and the exit status.
    #[arg(long, conflicts_with = "infected")]
    pub quiet: bool,
    /// Write one CSV line per query: path,round,latency_us,result,bytes.
    #[arg(long, value_name = "FILE")]
    pub latency_out: Option<PathBuf>,
    /// Guest name sent in Hello.
    #[arg(long, default_value = "thinagent-diag")]
    pub guest_name: String,
    /// Send no file content inline: protocol version 1 through the reference
    /// guest session, the host reads every byte (the behaviour before
    /// protocol version 2, for comparison).
    #[arg(long)]
    pub no_inline: bool,
}

/// What one query ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed by the scanner.
    Clean,
    /// Allowed without caching (`AllowNoCache`): the scanner's policy
    /// verdict for content it did not fully scan (too large, scan budget
    /// expired, unreadable, engine failure).
    AllowedByPolicy,
    /// Denied; the threat name (or `Denied` when the host gave none).
    Found(String),
    /// No host answer: why.
    Error(String),
}

/// One query's result.
#[derive(Debug, Clone)]
pub struct ScanResult {
    /// The file as given (or found under a directory).
    pub path: PathBuf,
    /// Which round (0-based) of `--repeat`.
    pub round: u32,
    /// What happened.
    pub outcome: Outcome,
    /// Submit to verdict.
    pub latency: Duration,
    /// Content bytes the host pulled (`ReadRequest`s).
    pub bytes: u64,
    /// Content bytes sent inline with the `FileEvent`.
    pub inline_bytes: u64,
}

/// One unit of work.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub path: PathBuf,
    pub round: u32,
}

/// Shared queue of work and sink of results.
#[derive(Debug)]
pub(crate) struct Shared {
    pub queue: Mutex<VecDeque<Job>>,
    pub results: Mutex<Vec<ScanResult>>,
    pub printer: Mutex<Printer>,
}

#[derive(Debug)]
pub(crate) struct Printer {
    infected_only: bool,
    silent: bool,
}

impl Printer {
    fn print(&self, r: &ScanResult) {
        if self.silent {
            return;
        }
        let line = match &r.outcome {
            Outcome::Clean if self.infected_only => return,
            Outcome::Clean => format!("{}: OK", r.path.display()),
            Outcome::AllowedByPolicy if self.infected_only => return,
            Outcome::AllowedByPolicy => {
                format!(
                    "{}: OK (policy verdict AllowNoCache: not fully scanned)",
                    r.path.display()
                )
            }
            Outcome::Found(t) => format!("{}: {t} FOUND", r.path.display()),
            Outcome::Error(e) => format!("{}: {e} ERROR", r.path.display()),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

impl Shared {
    pub(crate) fn record(&self, r: ScanResult) {
        self.printer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .print(&r);
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
    }

    pub(crate) fn next_is_none(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    pub(crate) fn next(&self) -> Option<Job> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}

/// Runs the subcommand; usage and setup errors exit with 2.
pub fn run(args: &ScanArgs) -> Result<ExitCode> {
    Ok(run_scan(args).unwrap_or_else(|e| {
        eprintln!("thinagent-diag scan: {e:#}");
        ExitCode::from(2)
    }))
}

fn run_scan(args: &ScanArgs) -> Result<ExitCode> {
    let url: ScanUrl = args.connect.parse()?;
    let files = files::expand(&args.files)?;
    if files.is_empty() {
        bail!("no regular files found under the given paths");
    }
    let mut queue = VecDeque::with_capacity(files.len() * args.repeat as usize);
    for round in 0..args.repeat {
        for f in &files {
            queue.push_back(Job {
                path: f.clone(),
                round,
            });
        }
    }
    let total = queue.len();
    let shared = Arc::new(Shared {
        queue: Mutex::new(queue),
        results: Mutex::new(Vec::with_capacity(total)),
        printer: Mutex::new(Printer {
            infected_only: args.infected,
            silent: args.quiet,
        }),
    });
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            Some(thinagent_guest_tls::client_config(cert, key, ca)?)
        }
        _ if matches!(url, ScanUrl::Tls { .. }) => {
            bail!("--connect {url}: a tls:// scanner needs --tls-cert, --tls-key and --tls-ca")
        }
        _ => None,
    };
    let opts = conn::Options {
        window: args.window as usize,
        timeout: Duration::from_millis(args.timeout_ms),
        guest_name: args.guest_name.clone(),
        tls,
        inline: !args.no_inline,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.jobs.clamp(1, 8) as usize)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let started = Instant::now();
    let connect_errors = rt.block_on(async {
        let mut tasks = Vec::new();
        for job in 0..args.jobs {
            let shared = shared.clone();
            let url = url.clone();
            let opts = opts.clone();
            tasks.push(tokio::spawn(async move {
                conn::worker(job, &url, &opts, &shared).await
            }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(anyhow::anyhow!("a job panicked: {e}")),
            }
        }
        errors
    });
    let elapsed = started.elapsed();
    for e in &connect_errors {
        eprintln!("thinagent-diag scan: {e:#}");
    }
    // Work no job could do (every connection failed) is reported as errors.
    while let Some(job) = shared.next() {
        shared.record(ScanResult {
            path: job.path,
            round: job.round,
            outcome: Outcome::Error("not scanned (no connection)".into()),
            latency: Duration::ZERO,
            bytes: 0,
            inline_bytes: 0,
        });
    }
    let results = std::mem::take(&mut *shared.results.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(path) = &args.latency_out {
        write_latencies(path, &results)?;
    }
    let found = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Found(_)))
        .count();
    let errors = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Error(_)))
        .count();
    let policy = results
        .iter()
        .filter(|r| r.outcome == Outcome::AllowedByPolicy)
        .count();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let inline: u64 = results.iter().map(|r| r.inline_bytes).sum();
    let secs = elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "scanned {} queries ({} files x {} rounds), found {found}, errors {errors}, policy-allowed {policy}, elapsed {:.3} s, {:.1} files/s, {:.2} MB/s pulled, {:.2} MB/s inline",
        results.len(),
        files.len(),
        args.repeat,
        secs,
        results.len() as f64 / secs,
        bytes as f64 / 1e6 / secs,
        inline as f64 / 1e6 / secs,
    );
    Ok(if errors > 0 || !connect_errors.is_empty() {
        ExitCode::from(2)
    } else if found > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_latencies(path: &std::path::Path, results: &[ScanResult]) -> Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path)
            .with_context(|| format!("--latency-out {}: cannot create", path.display()))?,
    );
    writeln!(out, "path,round,latency_us,result,bytes")?;
    for r in results {
        let result = match &r.outcome {
            Outcome::Clean => "OK".to_string(),
            Outcome::AllowedByPolicy => "OK-POLICY".to_string(),
            Outcome::Found(t) => format!("FOUND {t}"),
            Outcome::Error(e) => format!("ERROR {e}"),
        };
        writeln!(
            out,
            "{},{},{},{},{}",
            csv(&r.path.display().to_string()),
            r.round,
            r.latency.as_micros(),
            csv(&result),
            r.bytes
        )?;
    }
    out.flush()
        .with_context(|| format!("--latency-out {}: write failed", path.display()))
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
