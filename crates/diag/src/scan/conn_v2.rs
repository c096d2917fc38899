//! One connection in protocol version 2 (docs/protocol.md §5.3.1, §6.6):
//! files that fit the host's `max_inline_len` go whole inline with their
//! `FileEvent` (one round trip, no `ReadRequest`), larger ones with their
//! first bytes inline and the rest read by the host.
//!
//! The guest session of `thinagent-guest` speaks version 1 only for now, so
//! this job drives the wire itself with `thinagent-protocol`'s codec: Hello
//! (offering 1..=2 with `INLINE_CONTENT`), the session version from the
//! `HelloAck` on, host reads served from the local file, Ping answered,
//! per-query deadlines. A version-1 host is served too (nothing inline).
//! `--no-inline` keeps the reference guest session (`conn::run_session`).

use std::collections::HashMap;
use std::fs::File;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, ErrorMessage, EventKind, FileEvent,
    FilePath, Goodbye, GoodbyeReason, HANDSHAKE_TIMEOUT_MS, HEADER_LEN, Hello, HelloAck,
    InlineContent, MAX_FRAME_LEN, Message, OsError, OsKind, PROTOCOL_VERSION, ReadData,
    ReadOutcome, StreamDecoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::{Options, read_at};
use super::{Outcome, ScanResult, Shared, files};

/// The version-2 `FileEvent` fixed part (§5.3.1).
const FIXED_V2: usize = 64;

/// An open query.
struct Pending {
    job: super::Job,
    file: File,
    /// The size the `FileEvent` stated.
    size: u64,
    start: Instant,
    deadline: Instant,
    /// Bytes the host pulled with reads.
    bytes: u64,
    /// Bytes sent inline.
    inline: u64,
}

/// What the host granted in its `HelloAck`.
#[derive(Clone, Copy)]
struct Granted {
    version: u16,
    max_frame_len: usize,
    max_events: usize,
    max_inline: usize,
}

struct Client<'a> {
    opts: &'a Options,
    shared: &'a Shared,
    rx: StreamDecoder<Vec<u8>>,
    out: Vec<u8>,
    granted: Option<Granted>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    /// Scratch for inline content and read answers.
    buf: Vec<u8>,
    /// Why the session ended (`None`: it goes on).
    closed: Option<Result<()>>,
    finishing: bool,
}

/// Drives one version-2 connection until the queue is drained (Ok) or the
/// session ends early (Err, after every submitted query got its result).
pub async fn run_session(
    stream: std::pin::Pin<Box<dyn super::url::Stream>>,
    opts: &Options,
    shared: &Shared,
) -> Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut c = Client {
        opts,
        shared,
        rx: StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]),
        out: Vec::with_capacity(128 * 1024),
        granted: None,
        pending: HashMap::new(),
        next_id: 2,
        buf: vec![0u8; MAX_FRAME_LEN],
        closed: None,
        finishing: false,
    };
    let hello = Message::Hello(Hello {
        version_min: 1,
        version_max: 2,
        os: OsKind::Linux,
        agent_version: AgentVersion {
            major: 0,
            minor: 1,
            patch: 0,
        },
        capabilities: Capabilities::READ_CONTENT.union(Capabilities::INLINE_CONTENT),
        max_frame_len: MAX_FRAME_LEN as u32,
        max_reads_in_flight: 16,
        guest_name: &opts.guest_name,
    });
    c.push(PROTOCOL_VERSION, &hello, 1);
    let handshake_end = Instant::now() + Duration::from_millis(HANDSHAKE_TIMEOUT_MS.into());
    let mut rbuf = vec![0u8; 64 * 1024];
    loop {
        c.submit_more();
        if c.granted.is_some() && !c.finishing && c.pending.is_empty() && shared.next_is_none() {
            c.finishing = true;
            let bye = Message::Goodbye(Goodbye {
                reason: GoodbyeReason::Shutdown,
            });
            c.push_session(&bye, 0);
            c.closed = Some(Ok(()));
        }
        if let Some(result) = c.closed.take() {
            if !c.out.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&c.out)).await;
            }
            let _ = wr.shutdown().await;
            for (_, p) in c.pending.drain() {
                shared.record(ScanResult {
                    path: p.job.path,
                    round: p.job.round,
                    outcome: Outcome::Error("not answered".into()),
                    latency: p.start.elapsed(),
                    bytes: p.bytes,
                    inline_bytes: p.inline,
                });
            }
            return result;
        }
        let deadline = if c.granted.is_none() {
            handshake_end
        } else {
            c.pending
                .values()
                .map(|p| p.deadline)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
        };
        tokio::select! {
            r = rd.read(&mut rbuf) => match r {
                Ok(0) | Err(_) => c.closed = Some(Err(anyhow!("the scanner closed the connection"))),
                Ok(n) => c.receive(&rbuf[..n]),
            },
            w = wr.write(&c.out), if !c.out.is_empty() => match w {
                Ok(n) if n > 0 => { c.out.drain(..n); }
                _ => c.closed = Some(Err(anyhow!("the scanner closed the connection"))),
            },
            () = tokio::time::sleep_until(deadline.into()) => c.on_timeout(),
        }
    }
}

impl Client<'_> {
    fn push(&mut self, version: u16, msg: &Message<'_>, id: u64) {
        let old = self.out.len();
        self.out.resize(old + msg.encoded_len_for(version), 0);
        match msg.encode_for(version, id, &mut self.out[old..]) {
            Ok(n) => self.out.truncate(old + n),
            Err(_) => self.out.truncate(old),
        }
    }

    /// Pushes in the session version (§6.6).
    fn push_session(&mut self, msg: &Message<'_>, id: u64) {
        let version = self.granted.map_or(PROTOCOL_VERSION, |g| g.version);
        self.push(version, msg, id);
    }

    /// A fatal problem: `Error` (unless about an `Error`), `Goodbye`, close.
    fn fatal(&mut self, error: Option<(u64, thinagent_protocol::ErrorCode)>, why: String) {
        if let Some((id, code)) = error {
            let msg = Message::Error(ErrorMessage { code, text: "" });
            self.push_session(&msg, id);
        }
        let bye = Message::Goodbye(Goodbye {
            reason: GoodbyeReason::ProtocolError,
        });
        self.push_session(&bye, 0);
        self.closed = Some(Err(anyhow!(why)));
    }

    fn record(&self, p: Pending, outcome: Outcome) {
        self.shared.record(ScanResult {
            path: p.job.path,
            round: p.job.round,
            outcome,
            latency: p.start.elapsed(),
            bytes: p.bytes,
            inline_bytes: p.inline,
        });
    }

    /// Sends new queries while the window (ours and the host's) has room.
    fn submit_more(&mut self) {
        let Some(g) = self.granted else { return };
        if self.finishing || self.closed.is_some() {
            return;
        }
        while self.pending.len() < self.opts.window.min(g.max_events) {
            let Some(job) = self.shared.next() else { break };
            if let Err(e) = self.submit(job.clone(), g) {
                self.shared.record(ScanResult {
                    path: job.path,
                    round: job.round,
                    outcome: Outcome::Error(format!("{e}")),
                    latency: Duration::ZERO,
                    bytes: 0,
                    inline_bytes: 0,
                });
            }
        }
    }

    fn submit(&mut self, job: super::Job, g: Granted) -> Result<()> {
        let opened = File::open(&job.path).and_then(|f| f.metadata().map(|m| (f, m)));
        let (file, meta) = opened.map_err(|e| anyhow!("cannot open: {e}"))?;
        let abs = std::path::absolute(&job.path).unwrap_or_else(|_| job.path.clone());
        let lossy = abs.to_string_lossy();
        #[cfg(unix)]
        let raw = std::os::unix::ffi::OsStrExt::as_bytes(abs.as_os_str());
        #[cfg(not(unix))]
        let raw = lossy.as_bytes();
        let path = match std::str::from_utf8(raw) {
            Ok(p) => FilePath::Utf8(p),
            Err(_) => FilePath::Bytes(raw),
        };
        let identity = files::identity(&abs, &meta);
        let size = identity.size;
        // §5.3.1: min(file size, max_inline_len, what the frame leaves
        // beside the path) bytes, and WHOLE_FILE only when the read ended
        // exactly at the size the event states.
        let room = g
            .max_frame_len
            .saturating_sub(HEADER_LEN + FIXED_V2 + raw.len());
        let limit = if g.version >= 2 {
            g.max_inline.min(room)
        } else {
            0
        };
        let inline_on = limit > 0;
        let size_us = usize::try_from(size).unwrap_or(usize::MAX);
        // One byte more than the size when it fits: reading it proves the
        // file ends there.
        let want = if size_us < limit { size_us + 1 } else { limit };
        let got = if want > 0 {
            read_at(&file, 0, &mut self.buf[..want]).map_err(|e| anyhow!("cannot read: {e}"))?
        } else {
            0
        };
        let whole = inline_on
            && got == size_us
            && (size_us < limit || read_at(&file, size, &mut [0u8; 1]).is_ok_and(|n| n == 0));
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(2);
        let event = Message::FileEvent(FileEvent {
            kind: EventKind::Open,
            process_id: std::process::id(),
            desired_access: 0x1, // FILE_READ_DATA
            create_disposition: CreateDisposition::Open,
            file: identity,
            path,
            content: if inline_on {
                InlineContent {
                    bytes: &self.buf[..got],
                    whole_file: whole,
                }
            } else {
                InlineContent::NONE
            },
        });
        if event.encoded_len_for(g.version) > g.max_frame_len {
            bail!("path too long for the scanner's frame limit ({lossy})");
        }
        let mut frame = vec![0u8; event.encoded_len_for(g.version)];
        let n = event
            .encode_for(g.version, id, &mut frame)
            .map_err(|e| anyhow!("cannot encode the query: {e}"))?;
        self.out.extend_from_slice(&frame[..n]);
        let now = Instant::now();
        self.pending.insert(
            id,
            Pending {
                job,
                file,
                size,
                start: now,
                deadline: now + self.opts.timeout,
                bytes: 0,
                inline: if inline_on { got as u64 } else { 0 },
            },
        );
        Ok(())
    }

    fn on_timeout(&mut self) {
        if self.granted.is_none() {
            self.closed = Some(Err(anyhow!("no HelloAck within {HANDSHAKE_TIMEOUT_MS} ms")));
            return;
        }
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.record(p, Outcome::Error("no verdict before the deadline".into()));
            }
        }
    }

    fn receive(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.closed.is_none() {
            let n = self.rx.push(bytes);
            bytes = &bytes[n..];
            loop {
                let step = match self.rx.next_frame() {
                    Ok(None) => break,
                    Ok(Some(frame)) => Step::from_frame(frame.request_id, &frame.message),
                    Err(e) if e.is_fatal() => {
                        let error = (!e.concerns_error_frame())
                            .then(|| (e.request_id().unwrap_or(0), e.error_code()));
                        self.fatal(error, format!("undecodable frame from the scanner: {e}"));
                        return;
                    }
                    Err(e) => {
                        if !e.concerns_error_frame() {
                            let msg = Message::Error(ErrorMessage {
                                code: e.error_code(),
                                text: "",
                            });
                            self.push_session(&msg, e.request_id().unwrap_or(0));
                        }
                        continue;
                    }
                };
                self.on_step(step);
                if self.closed.is_some() {
                    return;
                }
            }
            if n == 0 {
                break;
            }
        }
    }

    fn on_step(&mut self, step: Step) {
        use thinagent_protocol::ErrorCode::UnexpectedMessage;
        match step {
            Step::HelloAck(id, ack) => {
                if self.granted.is_some() || id != 1 || !(1..=2).contains(&ack.version) {
                    self.fatal(
                        Some((id, UnexpectedMessage)),
                        format!("bad HelloAck (version {})", ack.version),
                    );
                    return;
                }
                self.granted = Some(Granted {
                    version: ack.version,
                    max_frame_len: ack.max_frame_len as usize,
                    max_events: ack.max_events_in_flight as usize,
                    max_inline: ack.max_inline_len as usize,
                });
                self.rx.set_session_version(ack.version);
            }
            _ if self.granted.is_none() => match step {
                Step::Goodbye => {
                    self.closed = Some(Err(anyhow!("the scanner said Goodbye before HelloAck")));
                }
                Step::Error(code) => {
                    eprintln!("thinagent-diag scan: the scanner sent Error({code:?})");
                }
                _ => self.fatal(
                    Some((step.id(), UnexpectedMessage)),
                    "a frame before HelloAck".into(),
                ),
            },
            Step::Verdict(id, decision, threat) => {
                if let Some(p) = self.pending.remove(&id) {
                    let outcome = match decision {
                        Decision::Deny if threat.is_empty() => Outcome::Found("Denied".into()),
                        Decision::Deny => Outcome::Found(threat),
                        Decision::AllowNoCache => Outcome::AllowedByPolicy,
                        Decision::Allow => Outcome::Clean,
                    };
                    self.record(p, outcome);
                }
            }
            Step::Read(read_id, event_id, offset, length) => {
                self.serve_read(read_id, event_id, offset, length)
            }
            Step::Ping(id, hb) => {
                if id == 0 {
                    self.fatal(
                        Some((0, UnexpectedMessage)),
                        "Ping with request id 0".into(),
                    );
                } else {
                    self.push_session(&Message::Pong(hb), id);
                }
            }
            Step::Ignore => {}
            Step::Error(_) => {}
            Step::Goodbye => {
                self.closed = Some(if self.finishing {
                    Ok(())
                } else {
                    Err(anyhow!("the scanner said Goodbye"))
                });
            }
            Step::Wrong(id) => self.fatal(
                Some((id, UnexpectedMessage)),
                "a guest-to-host message from the scanner".into(),
            ),
        }
    }

    fn serve_read(&mut self, read_id: u64, event_id: u64, offset: u64, length: u32) {
        use thinagent_protocol::ErrorCode::UnexpectedMessage;
        if read_id == 0 {
            self.fatal(
                Some((0, UnexpectedMessage)),
                "ReadRequest with request id 0".into(),
            );
            return;
        }
        let len = (length as usize).min(self.buf.len());
        let mut buf = std::mem::take(&mut self.buf);
        let outcome = match self.pending.get_mut(&event_id) {
            None => ReadOutcome::Cancelled,
            Some(p) => match read_at(&p.file, offset, &mut buf[..len]) {
                Ok(n) => {
                    p.bytes += n as u64;
                    if offset + n as u64 >= p.size || n < len {
                        ReadOutcome::EndOfFile(&buf[..n])
                    } else {
                        ReadOutcome::Data(&buf[..n])
                    }
                }
                Err(e) => ReadOutcome::Error(OsError::Errno(e.raw_os_error().unwrap_or(5) as u32)),
            },
        };
        let msg = Message::ReadData(ReadData {
            event_id,
            offset,
            outcome,
        });
        self.push_session(&msg, read_id);
        self.buf = buf;
    }
}

/// What a received frame asks for, copied out of the decoder's buffer.
enum Step {
    HelloAck(u64, HelloAck),
    Verdict(u64, Decision, String),
    Read(u64, u64, u64, u32),
    Ping(u64, thinagent_protocol::Heartbeat),
    Error(thinagent_protocol::ErrorCode),
    Goodbye,
    /// A Pong (we send no Pings).
    Ignore,
    /// Hello, FileEvent or ReadData: guest-to-host messages.
    Wrong(u64),
}

impl Step {
    fn from_frame(id: u64, msg: &Message<'_>) -> Self {
        match msg {
            Message::HelloAck(a) => Self::HelloAck(id, *a),
            Message::Verdict(v) => Self::Verdict(id, v.decision, v.threat_name.to_string()),
            Message::ReadRequest(r) => Self::Read(id, r.event_id, r.offset, r.length),
            Message::Ping(h) => Self::Ping(id, *h),
            Message::Pong(_) => Self::Ignore,
            Message::Error(e) => Self::Error(e.code),
            Message::Goodbye(_) => Self::Goodbye,
            Message::Hello(_) | Message::FileEvent(_) | Message::ReadData(_) => Self::Wrong(id),
        }
    }

    fn id(&self) -> u64 {
        match self {
            Self::HelloAck(id, _)
            | Self::Verdict(id, ..)
            | Self::Read(id, ..)
            | Self::Ping(id, _)
            | Self::Wrong(id) => *id,
            Self::Error(_) | Self::Goodbye | Self::Ignore => 0,
        }
    }
}
