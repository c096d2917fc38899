//! One job: connections to the scanner, each driving the reference guest
//! `Session`. It offers protocol versions 1..=2; unless `--no-inline`, it
//! announces `INLINE_CONTENT` and sends each file's first bytes (the whole
//! file when it fits the host's `max_inline_len`: one round trip, no
//! `ReadRequest`) with its `FileEvent`, cut by the session to what §5.3.1
//! allows. With `--no-inline` the host reads every byte.

use std::collections::HashMap;
use std::fs::File;
#[cfg(unix)]
use std::os::unix::ffi::OsStrExt;
#[cfg(unix)]
use std::os::unix::fs::FileExt;
#[cfg(windows)]
use std::os::windows::fs::FileExt;
use std::time::Duration;

use anyhow::{Result, anyhow};
use thinagent_guest::{
    CloseReason, FailMode, Instant, QueryId, Session, SessionConfig, SessionEvent, SubmitError,
    VerdictSource,
};
use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, EventKind, FileEvent, FilePath,
    InlineContent, OsError, OsKind, ReadOutcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::url::ScanUrl;
use super::{Job, Outcome, ScanResult, Shared, files};

/// 64 query slots, Linux PATH_MAX bytes of path, 16 concurrent host reads.
type GuestSession = Session<64, 4096, 16>;

/// Per-job options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Queries in flight per session (≤ 64).
    pub window: usize,
    /// Per-query deadline.
    pub timeout: Duration,
    /// Sent in Hello.
    pub guest_name: String,
    /// Client certificate and trusted CA for `tls://`.
    pub tls: Option<std::sync::Arc<thinagent_guest_tls::rustls::ClientConfig>>,
    /// Protocol version 2 with inline content (`false`: `--no-inline`).
    pub inline: bool,
}

/// Consecutive failed connections or broken sessions before a job gives up.
const MAX_FAILURES: u32 = 3;

/// Runs sessions until the shared queue is empty.
pub async fn worker(job: u32, url: &ScanUrl, opts: &Options, shared: &Shared) -> Result<()> {
    let mut failures = 0;
    loop {
        if shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return Ok(());
        }
        let err = match url.connect(opts.tls.as_ref()).await {
            Ok(stream) => match run_session(stream, opts, shared).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
            Err(e) => anyhow!("cannot connect to {url}: {e} (is thinagent-scanner listening?)"),
        };
        failures += 1;
        if failures >= MAX_FAILURES {
            return Err(err.context(format!("job {job}: giving up after {failures} failures")));
        }
        eprintln!("thinagent-diag scan: job {job}: {err:#}; reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Pending {
    job: Job,
    file: File,
    size: u64,
    start: std::time::Instant,
    /// Bytes the host pulled with reads.
    bytes: u64,
    /// Bytes sent inline with the `FileEvent`.
    inline: u64,
}

fn outcome(decision: Decision, source: VerdictSource, threat: &str) -> Outcome {
    match source {
        VerdictSource::Host => match decision {
            Decision::Deny if threat.is_empty() => Outcome::Found("Denied".into()),
            Decision::Deny => Outcome::Found(threat.to_string()),
            Decision::AllowNoCache => Outcome::AllowedByPolicy,
            _ => Outcome::Clean,
        },
        VerdictSource::Deadline(_) => Outcome::Error("no verdict before the deadline".into()),
        VerdictSource::Local(_) => {
            Outcome::Error("not answered (connection closed or path too long)".into())
        }
    }
}

/// Reads at `offset` until `buf` is full or the file ends.
fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        // Windows' seek_read also moves the cursor; nothing here uses it.
        #[cfg(unix)]
        let read = file.read_at(&mut buf[got..], offset + got as u64);
        #[cfg(windows)]
        let read = file.seek_read(&mut buf[got..], offset + got as u64);
        match read {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Drives one connection until the queue is drained (Ok) or the session
/// ends early (Err, after every submitted query got its result).
async fn run_session(
    stream: std::pin::Pin<Box<dyn super::url::Stream>>,
    opts: &Options,
    shared: &Shared,
) -> Result<()> {
    let base = tokio::time::Instant::now();
    let now = || Instant::from_nanos(base.elapsed().as_nanos() as u64);
    let config = SessionConfig {
        query_timeout: opts.timeout,
        fail_mode: FailMode::Open,
        os: OsKind::Linux,
        agent_version: AgentVersion {
            major: 0,
            minor: 1,
            patch: 0,
        },
        capabilities: Capabilities::READ_CONTENT,
        guest_name: &opts.guest_name,
    }
    .with_inline_content(opts.inline);
    let mut s = Box::new(GuestSession::new(&config));
    s.start(now());
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut pending: HashMap<QueryId, Pending> = HashMap::new();
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut tx = vec![0u8; 64 * 1024];
    let mut rx = vec![0u8; 64 * 1024];
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut content = vec![0u8; 64 * 1024];
    let mut connected = false;
    let mut finishing = false;
    let mut closed: Option<CloseReason> = None;
    let mut eof = false;
    // The scanner refusing our TLS certificate, said for people.
    let mut refused: Option<String> = None;
    loop {
        // Until neither new queries nor session events make progress.
        loop {
            // New queries while there is room.
            let mut progress = false;
            if connected && !finishing {
                while pending.len() < opts.window {
                    let Some(job) = shared.next() else {
                        break;
                    };
                    let opened = File::open(&job.path).and_then(|f| f.metadata().map(|m| (f, m)));
                    let (file, meta) = match opened {
                        Ok(x) => x,
                        Err(e) => {
                            shared.record(ScanResult {
                                path: job.path,
                                round: job.round,
                                outcome: Outcome::Error(format!("cannot open: {e}")),
                                latency: Duration::ZERO,
                                bytes: 0,
                                inline_bytes: 0,
                            });
                            continue;
                        }
                    };
                    let abs = std::path::absolute(&job.path).unwrap_or_else(|_| job.path.clone());
                    #[cfg(unix)]
                    let raw = abs.as_os_str().as_bytes();
                    // Windows paths are UTF-16: sent as UTF-8 (unpaired
                    // surrogates replaced).
                    #[cfg(not(unix))]
                    let lossy = abs.to_string_lossy();
                    #[cfg(not(unix))]
                    let raw = lossy.as_bytes();
                    let path = match std::str::from_utf8(raw) {
                        Ok(p) => FilePath::Utf8(p),
                        Err(_) => FilePath::Bytes(raw),
                    };
                    // §5.3.1: at most what the session may send inline now;
                    // one byte more than the size when it fits, so the read
                    // proves the file ends there (WHOLE_FILE). The session
                    // cuts the content and clears WHOLE_FILE as the host's
                    // limits require.
                    let file_identity = files::identity(&abs, &meta);
                    let budget = s.inline_budget(raw.len()).min(content.len());
                    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
                    let want = if size < budget { size + 1 } else { budget };
                    let got = match read_at(&file, 0, &mut content[..want]) {
                        Ok(n) => n,
                        Err(e) => {
                            shared.record(ScanResult {
                                path: job.path,
                                round: job.round,
                                outcome: Outcome::Error(format!("cannot read: {e}")),
                                latency: Duration::ZERO,
                                bytes: 0,
                                inline_bytes: 0,
                            });
                            continue;
                        }
                    };
                    let whole = got == size
                        && (size < budget
                            || read_at(&file, meta.len(), &mut [0u8; 1]).is_ok_and(|n| n == 0));
                    let event = FileEvent {
                        kind: EventKind::Open,
                        process_id: std::process::id(),
                        desired_access: 0x1, // FILE_READ_DATA
                        create_disposition: CreateDisposition::Open,
                        file: file_identity,
                        path,
                        content: InlineContent {
                            bytes: &content[..got],
                            whole_file: whole,
                        },
                    };
                    match s.submit_detailed(&event, now()) {
                        Ok(sub) => {
                            progress = true;
                            pending.insert(
                                sub.query,
                                Pending {
                                    job,
                                    file,
                                    size: meta.len(),
                                    start: std::time::Instant::now(),
                                    bytes: 0,
                                    inline: u64::from(sub.content_len),
                                },
                            );
                            // The content went into the session's send
                            // buffer: move it out so the next file's fits.
                            while let Some(k) = s.poll_transmit(&mut tx) {
                                out.extend_from_slice(&tx[..k]);
                            }
                        }
                        Err(SubmitError::Full) => {
                            shared
                                .queue
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push_front(job);
                            break;
                        }
                    }
                }
            }
            // Outputs of the session.
            while let Some(ev) = s.poll_event() {
                progress = true;
                match ev {
                    SessionEvent::Connected { .. } => connected = true,
                    // diag announces no host-action capability (protocol
                    // §14): the session refuses those requests itself.
                    SessionEvent::HostRequest | SessionEvent::ScanCancelled { .. } => {}
                    SessionEvent::Verdict(v) => {
                        if let Some(p) = pending.remove(&v.query) {
                            shared.record(ScanResult {
                                path: p.job.path,
                                round: p.job.round,
                                outcome: outcome(v.decision, v.source, v.threat.as_str()),
                                latency: p.start.elapsed(),
                                bytes: p.bytes,
                                inline_bytes: p.inline,
                            });
                        }
                    }
                    SessionEvent::ReadJob {
                        read_id,
                        query,
                        offset,
                        length,
                    } => {
                        let len = (length as usize).min(rbuf.len());
                        let (result, n) = match pending.get_mut(&query) {
                            None => (Err(0), 0),
                            Some(p) => match read_at(&p.file, offset, &mut rbuf[..len]) {
                                Ok(n) => {
                                    p.bytes += n as u64;
                                    let end = offset + n as u64 >= p.size || n < len;
                                    (Ok(end), n)
                                }
                                Err(e) => (Err(e.raw_os_error().unwrap_or(5) as u32), 0),
                            },
                        };
                        let outcome = match result {
                            Ok(true) => ReadOutcome::EndOfFile(&rbuf[..n]),
                            Ok(false) => ReadOutcome::Data(&rbuf[..n]),
                            Err(0) => ReadOutcome::Cancelled,
                            Err(errno) => ReadOutcome::Error(OsError::Errno(errno)),
                        };
                        // Busy: the session's send buffer is full; move it out and retry.
                        while let Err(thinagent_guest::ReadError::Busy) =
                            s.read_completed(read_id, outcome, now())
                        {
                            while let Some(k) = s.poll_transmit(&mut tx) {
                                out.extend_from_slice(&tx[..k]);
                            }
                        }
                    }
                    SessionEvent::Closed { reason } => closed = Some(reason),
                }
            }
            if !progress {
                break;
            }
        }
        while let Some(k) = s.poll_transmit(&mut tx) {
            out.extend_from_slice(&tx[..k]);
        }
        if let Some(reason) = closed {
            if !eof && !out.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&out)).await;
            }
            let _ = wr.shutdown().await;
            // The session answered every pending query on close.
            for (_, p) in pending.drain() {
                shared.record(ScanResult {
                    path: p.job.path,
                    round: p.job.round,
                    outcome: Outcome::Error("not answered".into()),
                    latency: p.start.elapsed(),
                    bytes: p.bytes,
                    inline_bytes: p.inline,
                });
            }
            if let Some(why) = refused.filter(|_| !finishing) {
                return Err(anyhow!(why));
            }
            return match reason {
                CloseReason::Local if finishing => Ok(()),
                CloseReason::Local if eof => Err(anyhow!("the scanner closed the connection")),
                other => Err(anyhow!("session closed: {other:?}")),
            };
        }
        if connected && !finishing && pending.is_empty() && shared.next_is_none() {
            finishing = true;
            s.close(now());
            continue;
        }
        let deadline = s
            .next_deadline()
            .map(|d| base + Duration::from_nanos(d.0))
            .unwrap_or_else(|| base + Duration::from_secs(86_400 * 365));
        tokio::select! {
            r = rd.read(&mut rx) => match r {
                Ok(n) if n > 0 => s.receive(&rx[..n], now()),
                ended => {
                    refused = ended.err().as_ref().and_then(thinagent_guest_tls::certificate_refusal);
                    eof = true;
                    s.close(now());
                }
            },
            w = wr.write(&out), if !out.is_empty() => match w {
                Ok(n) => { out.drain(..n); }
                Err(_) => {
                    eof = true;
                    s.close(now());
                }
            },
            () = tokio::time::sleep_until(deadline) => s.on_timeout(now()),
        }
    }
}
