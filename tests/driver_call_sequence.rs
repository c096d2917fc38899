//! The call sequence of `thinagent.sys`, driven on Linux through the same
//! `thinagent_guest` objects the driver uses, against the real scanner
//! service (in-process, `tcp://127.0.0.1:0`) over real TCP sockets.
//!
//! The Windows driver cannot run here, but it makes no decision of its own:
//! every decision is a call into `thinagent_guest`. This test makes those
//! calls in the driver's order, with the driver's inputs, and stands in for
//! the kernel only where the driver calls Windows:
//!
//! | driver (driver/windows/…) | Windows call | here |
//! |---|---|---|
//! | `registry_params::read_into` from `DriverEntry` | `ZwQueryValueKey` per name of `params::names::ALL` -> `Params::apply` | [`params_from`]: `Params::from_values` on the values a registry would hold |
//! | `vsock_capture::start` in `DriverEntry`: one attempt (deferred) or the whole loop (blocking) | `IoGetDeviceObjectPointer(\Device\vmci)`, IOCTL `0x810320C0` | [`VmciDevice::capture_ioctl`]: `STATUS_DEVICE_BUSY` until vmci.sys is up |
//! | `vsock_capture::capture_loop` on the link thread; `boot_reinit` (`IoRegisterBootDriverReinitialization`) sets WAKE | `KeWaitForMultipleObjects(STOP, WAKE, delay)` between attempts | [`start_driver`]: virtual time advanced by the delay `Connector` asks for, cut short once by the reinit |
//! | `vsock_capture::link_loop`: connect, then `Reconnect` between connections | `WskSocketConnect` to {`hostCid`, `hostPort`}; `STOP.wait(delay)` | `TcpStream::connect(127.0.0.1:hostPort)`; `Reconnect::on_closed` delays (20 ms first delay here, 1 s in the driver) |
//! | `session_worker::run` | `WskSend`/`WskReceive`, waits up to the session's next deadline | [`Channel::pump`]: `poll_transmit` -> write, read -> `receive`, sleep -> `on_timeout`, `poll_event` |
//! | `session_worker::serve_read` | non-cached `FltReadFile` of the sectors covering the request on the opener's file object; `FileStandardInformation` when the count cannot tell the end | [`Channel::serve_read`]: read the same sectors of the file, `AlignedRange::outcome` |
//! | `filter_callbacks::post_create` -> `decide` -> `session_worker::query` | name, `FileIdInformation`, size, `LastWriteTime`; deny = `FltCancelFileOpen` + `IoStatus.Status` | [`Driver::begin_open`] / [`Driver::finish_open`]: `OpenPolicy::decide`, `VerdictCache::get`, `Session::submit`, wait, cache the host verdict for min(host TTL, `verdictCacheTtlMs`), `Params::deny_status` |
//! | `filter_callbacks::mark_modified` (pre-write, set-information EOF/VDL, offload FSCTLs) | stream context `Modified`, cache entry dropped | [`Driver::on_write`] |
//! | `filter_callbacks::pre_cleanup` | rescan a `Modified` stream (`CloseAfterWrite`) | [`Driver::cleanup`] |
//!
//! The driver also keeps the last verdict in the stream context and checks it
//! before the `VerdictCache`; both answer without a `FileEvent`, which is
//! what this test checks on the wire and at the scanner.
//!
//! In the driver the opener's thread waits on an event (at most
//! `umcMsgTimeoutMs`) that the worker thread signals; here one task does
//! both, pumping the worker until the opener's verdict is in. Nothing asserts
//! on wall-clock time; the capture loop runs on virtual time.
//!
//! Unix only (file identities come from `MetadataExt`); on Windows the root
//! package is the driver and its tests are not run.
#![cfg(unix)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thinagent_guest::policy::{FILE_READ_DATA, GENERIC_WRITE};
use thinagent_guest::{
    AlignedRange, CachedVerdict, CaptureMode, CloseReason, Connector, ConnectorAction, FailMode,
    FileKey, GiveUpReason, Instant, NtStatus, OpenDecision, OpenRequest, Params, PathRef,
    PathStyle, QueryId, QueryVerdict, ReadError, Reconnect, ReconnectConfig, RegValue, Session,
    SessionConfig, SessionEvent, SkipReason, VerdictCache, VerdictSource,
};
use thinagent_protocol::{
    CreateDisposition, Decision, Decoded, EventKind, FileEvent, FileIdentity, FilePath,
    MAX_FRAME_LEN, Message, OsKind, ReadOutcome, decode_frame,
};
use thinagent_scanner::config::Config;
use thinagent_scanner::service::{Service, ServiceHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../driver/session_sizes.rs"]
mod session_sizes;
use session_sizes::DriverSession;

/// The EICAR test file.
const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
/// A clean file (a different length from EICAR, so a rewrite changes the size).
const CLEAN: &[u8] = b"a clean text file the driver opens twice\n";
/// Bound of every network wait: "finishes", not a speed assertion.
const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Start-up: DriverEntry, the capture thread and the boot reinit routine
// (driver/windows/vsock_capture.rs: `start`, `capture_loop`, `attempt`,
// `boot_reinit`).
// ---------------------------------------------------------------------------

/// Which driver routine made a capture attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Routine {
    /// `DriverEntry` (the boot driver initialisation thread).
    DriverEntry,
    /// The link thread started by `DriverEntry` (`PsCreateSystemThread`).
    CaptureThread,
}

/// `\Device\vmci` as the capture sees it: `STATUS_DEVICE_BUSY` (the seed's
/// failure: vmci.sys has no device yet) until `up_at`, then up.
struct VmciDevice {
    up_at: Instant,
    calls: u32,
}

impl VmciDevice {
    fn up_at(t: Instant) -> Self {
        Self { up_at: t, calls: 0 }
    }

    fn never_up() -> Self {
        Self::up_at(Instant::MAX)
    }

    /// `IoGetDeviceObjectPointer(\Device\vmci)`, `IoBuildDeviceIoControlRequest
    /// (0x810320C0, 0x5C-byte buffer, first DWORD 1)`, `IoCallDriver`, wait if
    /// pending, dereference: the final `IoStatus.Status` at `now`.
    fn capture_ioctl(&mut self, now: Instant) -> NtStatus {
        self.calls += 1;
        if now.has_reached(self.up_at) {
            NtStatus::STATUS_SUCCESS
        } else {
            NtStatus::STATUS_DEVICE_BUSY
        }
    }
}

#[derive(Debug)]
struct Attempt {
    routine: Routine,
    at: Instant,
    /// The boot reinit routine cut the delay before this attempt short.
    woken_by_reinit: bool,
    status: NtStatus,
    action: ConnectorAction,
}

#[derive(Debug)]
struct StartUp {
    attempts: Vec<Attempt>,
    /// Virtual time at which `DriverEntry` returned `STATUS_SUCCESS`.
    driver_entry_returned: Instant,
    /// The capture's final action.
    outcome: ConnectorAction,
}

/// `DriverEntry` and the capture it starts, on virtual time, as
/// `vsock_capture::start` runs it. Deferred (`captureMode` 0): one attempt
/// in `DriverEntry`, which then starts the link thread, registers the boot
/// reinit routine and returns; the thread goes on with the same
/// `Connector`, sleeping the delay it asks for (`KeWaitForMultipleObjects`
/// on STOP and WAKE). The reinit routine (at `boot_drivers_done`, once every
/// boot driver is initialised) sets WAKE: a pending delay ends at once and
/// the thread attempts now. Blocking (`captureMode` 1): the whole loop runs
/// inside `DriverEntry`, as in the incident. After `GiveUp` nothing
/// retries; the filter stays under `failMode`.
fn start_driver(params: &Params, dev: &mut VmciDevice, boot_drivers_done: Instant) -> StartUp {
    let mut connector = Connector::new(params.connector_config());
    let deferred = params.capture_mode == CaptureMode::Deferred;
    let mut now = Instant::ZERO;
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut routine = Routine::DriverEntry;
    let mut woken = false;
    let mut reinit_pending = deferred;
    let mut driver_entry_returned = None;
    let outcome = loop {
        let status = dev.capture_ioctl(now);
        let action = connector.on_attempt(status, now);
        attempts.push(Attempt {
            routine,
            at: now,
            woken_by_reinit: woken,
            status,
            action,
        });
        let ConnectorAction::RetryAfter(d) = action else {
            break action;
        };
        if deferred && routine == Routine::DriverEntry {
            // PsCreateSystemThread (the link thread), then
            // IoRegisterBootDriverReinitialization; return STATUS_SUCCESS:
            // boot goes on.
            driver_entry_returned = Some(now);
            routine = Routine::CaptureThread;
        }
        let wake = now.saturating_add(d);
        woken = reinit_pending && boot_drivers_done < wake && now < boot_drivers_done;
        if woken {
            reinit_pending = false;
            now = boot_drivers_done;
        } else {
            now = wake;
        }
    };
    StartUp {
        driver_entry_returned: driver_entry_returned.unwrap_or(now),
        attempts,
        outcome,
    }
}

/// `Params` from registry values, as `DriverEntry` reads them.
fn params_from(values: &[(&str, RegValue<'_>)]) -> Params {
    let (p, report) =
        Params::from_values::<16, _>(PathStyle::Windows, values.iter().map(|(n, v)| (*n, *v)));
    assert!(
        report.is_empty(),
        "registry values rejected or clamped: {report:?}"
    );
    p
}

#[test]
fn capture_deferred_blocking_boot_reinit_and_give_up() {
    let ms = Duration::from_millis;
    let busy = NtStatus::STATUS_DEVICE_BUSY;
    // vmci.sys is up at 9.5 s; delays 500 ms doubling up to 3 s: 5 x
    // STATUS_DEVICE_BUSY (at 0, 0.5, 1.5, 3.5, 6.5 s), then success.
    let registry = [
        ("captureRetryDelayMs", RegValue::Dword(500)),
        ("captureBackoffFactor", RegValue::Dword(2)),
        ("captureBackoffCapMs", RegValue::Dword(3000)),
    ];
    let late = Instant::from_millis(60_000);
    let deferred = params_from(&registry);
    assert_eq!(deferred.capture_mode, CaptureMode::Deferred);
    let mut dev = VmciDevice::up_at(Instant::from_millis(9500));
    let run = start_driver(&deferred, &mut dev, late);
    let routines: Vec<_> = run.attempts.iter().map(|a| a.routine).collect();
    assert_eq!(routines[0], Routine::DriverEntry);
    assert!(routines[1..].iter().all(|r| *r == Routine::CaptureThread));
    assert_eq!((run.attempts.len(), dev.calls), (6, 6));
    // DriverEntry returned after its single attempt, before any delay.
    assert_eq!(run.driver_entry_returned, Instant::ZERO);
    let asked: Vec<_> = run
        .attempts
        .iter()
        .filter_map(|a| match a.action {
            ConnectorAction::RetryAfter(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(asked, [ms(500), ms(1000), ms(2000), ms(3000), ms(3000)]);
    let gaps: Vec<_> = run
        .attempts
        .windows(2)
        .map(|w| w[1].at.saturating_duration_since(w[0].at))
        .collect();
    assert_eq!(gaps, asked, "each attempt comes after the delay asked for");
    assert!(run.attempts[..5].iter().all(|a| a.status == busy));
    assert_eq!(
        run.outcome,
        ConnectorAction::Connected {
            attempts: 6,
            waited: ms(9500)
        }
    );

    // captureMode 1: the same attempts and delays, all inside DriverEntry,
    // which returns only when the loop ends: boot waits 9.5 s for it.
    let blocking = params_from(&[
        registry[0],
        registry[1],
        registry[2],
        ("captureMode", RegValue::Dword(1)),
    ]);
    let run_b = start_driver(
        &blocking,
        &mut VmciDevice::up_at(Instant::from_millis(9500)),
        late,
    );
    assert!(
        run_b
            .attempts
            .iter()
            .all(|a| a.routine == Routine::DriverEntry && !a.woken_by_reinit)
    );
    assert_eq!(run_b.outcome, run.outcome);
    assert_eq!(run_b.driver_entry_returned, Instant::from_millis(9500));

    // Defaults (100 x 1 s): the boot drivers are done at 2.3 s, which is
    // when vmci.sys gets its device (the seed's deferred start). The reinit
    // routine wakes the thread in its third delay: it attempts at once.
    let defaults = params_from(&[]);
    let t = Instant::from_millis(2300);
    let run_r = start_driver(&defaults, &mut VmciDevice::up_at(t), t);
    let seq: Vec<_> = run_r
        .attempts
        .iter()
        .map(|a| (a.routine, a.at.as_millis(), a.woken_by_reinit, a.status))
        .collect();
    let thread = Routine::CaptureThread;
    assert_eq!(
        seq,
        [
            (Routine::DriverEntry, 0, false, busy),
            (thread, 1000, false, busy),
            (thread, 2000, false, busy),
            (thread, 2300, true, NtStatus::STATUS_SUCCESS),
        ]
    );
    // The connector counts the delays it asked for (3 x 1 s).
    assert_eq!(
        run_r.outcome,
        ConnectorAction::Connected {
            attempts: 4,
            waited: Duration::from_secs(3)
        }
    );
    assert_eq!(run_r.driver_entry_returned, Instant::ZERO);

    // captureRetryCount 3, vmci never comes: the thread gives up after
    // 3 attempts (2 s of delays) and nothing retries after that.
    let short = params_from(&[("captureRetryCount", RegValue::Dword(3))]);
    let mut dev = VmciDevice::never_up();
    let run_g = start_driver(&short, &mut dev, Instant::from_millis(10_000));
    assert_eq!(dev.calls, 3);
    assert_eq!(
        run_g.outcome,
        ConnectorAction::GiveUp {
            attempts: 3,
            last_status: busy,
            waited: Duration::from_secs(2),
            reason: GiveUpReason::AttemptsExhausted,
        }
    );
    assert_eq!(run_g.driver_entry_returned, Instant::ZERO);
}

// ---------------------------------------------------------------------------
// The host channel: connection, session worker, FltReadFile.
// ---------------------------------------------------------------------------

/// The driver's monotonic clock (`KeQueryInterruptTime`) for the session.
#[derive(Clone, Copy)]
struct Clock {
    base: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            base: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn at(&self, i: Instant) -> tokio::time::Instant {
        self.base + Duration::from_nanos(i.as_nanos())
    }
}

/// Counts the frames the driver sends, by kind.
#[derive(Default)]
struct SentFrames {
    buf: Vec<u8>,
    file_events: Vec<(u64, EventKind)>,
}

impl SentFrames {
    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Ok(Decoded::Frame { frame, consumed }) = decode_frame(&self.buf[at..]) {
            if let Message::FileEvent(ev) = frame.message {
                self.file_events.push((frame.request_id, ev.kind));
            }
            at += consumed;
        }
        self.buf.drain(..at);
    }
}

/// One connection to the host and the session the worker thread pumps.
struct Channel {
    stream: TcpStream,
    session: Box<DriverSession>,
    clock: Clock,
    out: Vec<u8>,
    sent: SentFrames,
    /// The opener's file object per outstanding query (for `FltReadFile`).
    files: HashMap<QueryId, PathBuf>,
    /// When false, host reads wait (an `FltReadFile` that has not completed).
    serve_reads: bool,
    parked_reads: Vec<(u64, QueryId, u64, u32)>,
    /// Every verdict event, per query (to check "exactly once").
    verdicts: HashMap<QueryId, Vec<QueryVerdict>>,
    connected: bool,
    closed: Option<CloseReason>,
}

impl Channel {
    /// `WskSocketConnect` to the host, then `Session::start` (sends Hello).
    async fn connect(port: u32, params: &Params, clock: Clock) -> std::io::Result<Self> {
        let port = u16::try_from(port).expect("a TCP port");
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let config = SessionConfig::from_params(params, OsKind::Windows, "driver-test-vm");
        let mut session: Box<DriverSession> = Box::new(Session::new(&config));
        session.start(clock.now());
        Ok(Self {
            stream,
            session,
            clock,
            out: Vec::new(),
            sent: SentFrames::default(),
            files: HashMap::new(),
            serve_reads: true,
            parked_reads: Vec::new(),
            verdicts: HashMap::new(),
            connected: false,
            closed: None,
        })
    }

    /// Pumps until the handshake is done (HelloAck received).
    async fn handshake(&mut self) {
        self.pump_until(|c| c.connected || c.closed.is_some()).await;
        assert!(self.connected, "no HelloAck: {:?}", self.closed);
    }

    /// Post-create hands the query to the session (under the session lock).
    fn submit(&mut self, event: &FileEvent<'_>, path: &Path) -> QueryId {
        let q = self
            .session
            .submit(event, self.clock.now())
            .expect("a free query slot");
        self.files.insert(q, path.to_path_buf());
        q
    }

    /// Non-cached `FltReadFile` of the opener's file: the sectors covering
    /// (offset, length) ([`AlignedRange`], 512-byte sectors), the count cut
    /// at the end of file as a file system returns it, and the answer from
    /// [`AlignedRange::outcome`] (the file's size asked, as
    /// `FileStandardInformation`, only when the count cannot tell).
    fn serve_read(&mut self, read_id: u64, query: QueryId, offset: u64, length: u32) {
        let range = AlignedRange::new(offset, length, 512).expect("a read within reach");
        let data = self.files.get(&query).map(|p| {
            let mut f = std::fs::File::open(p).expect("open for FltReadFile");
            f.seek(SeekFrom::Start(range.start)).unwrap();
            let mut buf = Vec::new();
            (&mut f)
                .take(u64::from(range.len))
                .read_to_end(&mut buf)
                .unwrap();
            (buf, p.clone())
        });
        let outcome = match &data {
            None => ReadOutcome::Cancelled,
            Some((buf, path)) => {
                range.outcome(buf, || std::fs::metadata(path).ok().map(|m| m.len()))
            }
        };
        while let Err(ReadError::Busy) =
            self.session
                .read_completed(read_id, outcome, self.clock.now())
        {
            self.drain_transmit();
        }
    }

    fn drain_transmit(&mut self) {
        let mut tx = vec![0u8; MAX_FRAME_LEN];
        while let Some(n) = self.session.poll_transmit(&mut tx) {
            self.sent.feed(&tx[..n]);
            self.out.extend_from_slice(&tx[..n]);
        }
    }

    fn handle_events(&mut self) {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                SessionEvent::Connected { .. } => self.connected = true,
                SessionEvent::Verdict(v) => {
                    self.files.remove(&v.query);
                    self.verdicts.entry(v.query).or_default().push(v);
                }
                SessionEvent::ReadJob {
                    read_id,
                    query,
                    offset,
                    length,
                } => {
                    if self.serve_reads {
                        self.serve_read(read_id, query, offset, length);
                    } else {
                        self.parked_reads.push((read_id, query, offset, length));
                    }
                }
                SessionEvent::Closed { reason } => self.closed = Some(reason),
                // The driver announces no host-action capability (as
                // driver/windows/session_worker.rs).
                SessionEvent::HostRequest | SessionEvent::ScanCancelled { .. } => {}
            }
        }
    }

    /// One turn of the worker thread: events, transmit, then wait for bytes
    /// in, room out, or the session's next deadline.
    async fn pump(&mut self) {
        self.handle_events();
        self.drain_transmit();
        self.handle_events();
        if self.closed.is_some() {
            return;
        }
        let mut rx = vec![0u8; 64 * 1024];
        let deadline = self
            .session
            .next_deadline()
            .map_or(self.clock.base + LIMIT * 10, |d| self.clock.at(d));
        let (mut rd, mut wr) = self.stream.split();
        tokio::select! {
            r = rd.read(&mut rx) => match r {
                Ok(n) if n > 0 => self.session.receive(&rx[..n], self.clock.now()),
                // The host is gone: close the session, the fail mode answers.
                _ => self.session.close(self.clock.now()),
            },
            w = wr.write(&self.out), if !self.out.is_empty() => match w {
                Ok(n) => { self.out.drain(..n); }
                Err(_) => self.session.close(self.clock.now()),
            },
            () = tokio::time::sleep_until(deadline) => self.session.on_timeout(self.clock.now()),
        }
        self.handle_events();
    }

    async fn pump_until(&mut self, done: impl Fn(&Channel) -> bool) {
        let finished = tokio::time::timeout(LIMIT, async {
            while !done(self) {
                self.pump().await;
            }
        })
        .await;
        assert!(finished.is_ok(), "the session worker did not finish");
    }

    /// The opener waits for its query's verdict (the worker signals it).
    async fn wait_verdict(&mut self, q: QueryId) -> QueryVerdict {
        self.pump_until(|c| c.verdicts.contains_key(&q)).await;
        self.verdicts[&q][0]
    }

    /// Unload / reconnect: `Goodbye`, flush, close the socket.
    async fn close(mut self) {
        self.session.close(self.clock.now());
        self.handle_events();
        self.drain_transmit();
        let _ = tokio::time::timeout(LIMIT, async {
            let _ = self.stream.write_all(&self.out).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    fn file_events(&self) -> usize {
        self.sent.file_events.len()
    }
}

// ---------------------------------------------------------------------------
// The filter: pre/post-create, write, cleanup.
// ---------------------------------------------------------------------------

/// How an open was decided.
#[expect(
    clippy::large_enum_variant,
    reason = "QueryVerdict carries its threat name inline"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decided {
    Skipped(SkipReason),
    Cached(CachedVerdict),
    Queried(QueryVerdict),
}

/// What the opener sees: the create's final status.
#[derive(Clone, Copy, Debug)]
struct Create {
    status: NtStatus,
    decided: Decided,
}

/// A create waiting for its verdict.
struct PendingOpen {
    key: FileKey,
    query: QueryId,
}

/// File identity as post-create queries it (`FileIdInformation`,
/// `FileStandardInformation`, `FileBasicInformation.LastWriteTime`).
fn identity(path: &Path) -> FileIdentity {
    let m = std::fs::metadata(path).expect("stat");
    let mut file_id = [0u8; 16];
    file_id[..8].copy_from_slice(&m.ino().to_le_bytes());
    // LastWriteTime: 100 ns units since 1601-01-01.
    let secs = u64::try_from(m.mtime()).unwrap() + 11_644_473_600;
    let last_write_time = secs * 10_000_000 + u64::try_from(m.mtime_nsec()).unwrap() / 100;
    FileIdentity {
        volume_serial: m.dev(),
        file_id,
        size: m.len(),
        last_write_time,
    }
}

fn key_of(id: &FileIdentity) -> FileKey {
    FileKey::new(id.volume_serial, id.file_id, id.size, id.last_write_time)
}

/// The normalized name as UTF-16LE, as the driver sends it.
fn utf16le(path: &Path) -> Vec<u8> {
    path.to_str()
        .unwrap()
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// The driver's state after `DriverEntry`: parameters, verdict cache, and
/// the stream contexts' `modified` flags.
struct Driver {
    params: Params,
    cache: Box<VerdictCache<256>>,
    modified: HashSet<(u64, [u8; 16])>,
    clock: Clock,
}

impl Driver {
    fn new(params: Params, clock: Clock) -> Self {
        Self {
            params,
            cache: Box::new(VerdictCache::new()),
            modified: HashSet::new(),
            clock,
        }
    }

    /// What a denied create fails with.
    fn status_of(&self, allows: bool) -> NtStatus {
        if allows {
            NtStatus::STATUS_SUCCESS
        } else {
            self.params.deny_status.ntstatus()
        }
    }

    /// Pre-create (skip rules) and post-create up to the query: returns the
    /// create's result when no query is needed.
    fn begin_open(
        &mut self,
        ch: &mut Channel,
        path: &Path,
        access: u32,
    ) -> Result<Create, PendingOpen> {
        let id = identity(path);
        let name = path.to_str().unwrap();
        let req = OpenRequest {
            file_size: Some(id.size),
            desired_access: access,
            ..OpenRequest::read(PathRef::Utf8(name), std::process::id())
        };
        if let OpenDecision::Skip(reason) = self.params.policy.decide(&req) {
            return Ok(Create {
                status: NtStatus::STATUS_SUCCESS,
                decided: Decided::Skipped(reason),
            });
        }
        let key = key_of(&id);
        if let Some(v) = self.cache.get(&key, self.clock.now()) {
            return Ok(Create {
                status: self.status_of(v.is_allow()),
                decided: Decided::Cached(v),
            });
        }
        let bytes = utf16le(path);
        let event = FileEvent {
            kind: EventKind::Open,
            process_id: std::process::id(),
            desired_access: access,
            create_disposition: CreateDisposition::Open,
            file: id,
            path: FilePath::Utf16Le(&bytes),
            content: thinagent_protocol::InlineContent::NONE,
        };
        let query = ch.submit(&event, path);
        Err(PendingOpen { key, query })
    }

    /// Post-create after the wait: cache a host verdict, map a deny to
    /// `FltCancelFileOpen` + the configured status.
    async fn finish_open(&mut self, ch: &mut Channel, pending: PendingOpen) -> Create {
        let v = ch.wait_verdict(pending.query).await;
        self.remember(pending.key, &v);
        Create {
            status: self.status_of(v.allows()),
            decided: Decided::Queried(v),
        }
    }

    async fn open(&mut self, ch: &mut Channel, path: &Path, access: u32) -> Create {
        match self.begin_open(ch, path, access) {
            Ok(done) => done,
            Err(pending) => self.finish_open(ch, pending).await,
        }
    }

    /// A host verdict is cached for min(its TTL, `verdictCacheTtlMs`); fail
    /// mode answers and `AllowNoCache` are not.
    fn remember(&mut self, key: FileKey, v: &QueryVerdict) {
        let cached = match v.decision {
            Decision::Allow => CachedVerdict::Allow,
            Decision::Deny => CachedVerdict::Deny { threat_id: 0 },
            Decision::AllowNoCache => return,
        };
        if v.source != VerdictSource::Host || v.cache_ttl_secs == 0 {
            return;
        }
        let host = Duration::from_secs(v.cache_ttl_secs.into());
        let ttl = self.params.verdict_ttl().map_or(host, |t| t.min(host));
        self.cache.insert(key, cached, self.clock.now(), Some(ttl));
    }

    /// Pre-write / set-information (EOF): the stream is marked modified and
    /// its cached verdicts are dropped at once.
    fn on_write(&mut self, path: &Path) {
        let id = identity(path);
        if self.modified.insert((id.volume_serial, id.file_id)) {
            self.cache.invalidate(id.volume_serial, &id.file_id);
        }
    }

    /// `IRP_MJ_CLEANUP` of a modified file: forget its verdicts and rescan
    /// the new content (`CloseAfterWrite`); the verdict is cached for the
    /// next open.
    async fn cleanup(&mut self, ch: &mut Channel, path: &Path) -> Option<QueryVerdict> {
        let id = identity(path);
        if !self.modified.remove(&(id.volume_serial, id.file_id)) {
            return None;
        }
        self.cache.invalidate(id.volume_serial, &id.file_id);
        let bytes = utf16le(path);
        let event = FileEvent {
            kind: EventKind::CloseAfterWrite,
            process_id: std::process::id(),
            desired_access: 0,
            create_disposition: CreateDisposition::Open,
            file: id,
            path: FilePath::Utf16Le(&bytes),
            content: thinagent_protocol::InlineContent::NONE,
        };
        let q = ch.submit(&event, path);
        let v = ch.wait_verdict(q).await;
        self.remember(key_of(&id), &v);
        Some(v)
    }
}

// ---------------------------------------------------------------------------
// The scanner, in-process.
// ---------------------------------------------------------------------------

struct Scanner {
    port: u32,
    handle: ServiceHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scanner {
    async fn start(listen: &str) -> Result<Self, thinagent_scanner::service::ServiceError> {
        let mut config = Config {
            listen: vec![listen.to_string()],
            ..Config::default()
        };
        // A host read the driver holds back must not be answered by the
        // scanner's own budget before the test is done with it.
        config.limits.request_timeout_ms = 120_000;
        config.limits.idle_timeout_ms = Some(120_000);
        let service = Service::build(&config).await?;
        let url = service.urls()[0].to_string();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("tcp url with a port");
        let handle = service.handle();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run(
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(3),
        ));
        Ok(Self {
            port,
            handle,
            stop: Some(tx),
            task,
        })
    }

    /// FileEvents the scanner answered (its `queries` counter).
    fn queries(&self) -> u64 {
        self.handle.metrics().queries.get()
    }

    /// Waits (bounded) until the scanner has counted `n` queries; the
    /// counter moves when the verdict is sent, so it may trail the guest.
    async fn wait_queries(&self, n: u64) {
        let ok = tokio::time::timeout(LIMIT, async {
            while self.queries() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            ok.is_ok(),
            "scanner counted {} queries, expected {n}",
            self.queries()
        );
        assert_eq!(self.queries(), n);
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// Runs `body` on a current-thread runtime, on a thread with room for the
/// nested futures of a debug build.
fn run<F: std::future::Future<Output = ()> + Send + 'static>(body: F) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body);
        })
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// `DriverEntry` with these registry values plus `hostPort`, a capture
/// (2 busy answers, on virtual time), then connect and handshake.
async fn boot(registry: &[(&str, RegValue<'_>)], port: u32) -> (Driver, Channel) {
    let mut values = registry.to_vec();
    values.push(("hostPort", RegValue::Dword(port)));
    let params = params_from(&values);
    let start = start_driver(
        &params,
        &mut VmciDevice::up_at(Instant::from_millis(2000)),
        Instant::MAX,
    );
    assert!(matches!(
        start.outcome,
        ConnectorAction::Connected { attempts: 3, .. }
    ));
    let clock = Clock::new();
    let mut ch = Channel::connect(params.host_port, &params, clock)
        .await
        .expect("connect to the scanner");
    ch.handshake().await;
    (Driver::new(params, clock), ch)
}

#[test]
fn opens_scanned_cached_denied_and_rescanned_after_write() {
    let tmp = tempfile::tempdir().unwrap();
    let eicar = write_file(tmp.path(), "eicar.com", EICAR);
    let clean = write_file(tmp.path(), "readme.txt", CLEAN);
    let excluded = write_file(tmp.path(), "debug.log", EICAR);
    run(async move {
        let scanner = Scanner::start("tcp://127.0.0.1:0").await.unwrap();
        let (mut drv, mut ch) = boot(
            &[("excludeExtensions", RegValue::MultiSz("log\0\0"))],
            scanner.port,
        )
        .await;

        // EICAR: FileEvent -> ReadRequest(s) served by FltReadFile -> Deny.
        let c = drv.open(&mut ch, &eicar, FILE_READ_DATA).await;
        let Decided::Queried(v) = c.decided else {
            panic!("{c:?}")
        };
        assert_eq!(
            (v.decision, v.source, v.threat.as_str()),
            (Decision::Deny, VerdictSource::Host, "Eicar-Test-Signature")
        );
        assert_eq!(c.status, NtStatus::STATUS_VIRUS_INFECTED);
        // A clean file: Allow.
        let c = drv.open(&mut ch, &clean, FILE_READ_DATA).await;
        assert!(
            matches!(c.decided, Decided::Queried(v) if v.decision == Decision::Allow && v.source == VerdictSource::Host),
            "{c:?}"
        );
        assert_eq!(c.status, NtStatus::STATUS_SUCCESS);
        assert_eq!(ch.file_events(), 2);
        scanner.wait_queries(2).await;

        // Second opens: answered by the VerdictCache, no FileEvent sent.
        let c = drv.open(&mut ch, &clean, FILE_READ_DATA).await;
        assert_eq!(c.decided, Decided::Cached(CachedVerdict::Allow));
        assert_eq!(c.status, NtStatus::STATUS_SUCCESS);
        let c = drv.open(&mut ch, &eicar, FILE_READ_DATA).await;
        assert!(matches!(
            c.decided,
            Decided::Cached(CachedVerdict::Deny { .. })
        ));
        assert_eq!(c.status, NtStatus::STATUS_VIRUS_INFECTED);
        // An excluded extension is skipped in pre-create: no query either.
        let c = drv.open(&mut ch, &excluded, FILE_READ_DATA).await;
        assert_eq!(c.decided, Decided::Skipped(SkipReason::ExcludedExtension));
        assert_eq!(c.status, NtStatus::STATUS_SUCCESS);
        assert_eq!(ch.file_events(), 2, "cache hits and skips send nothing");
        assert_eq!(drv.cache.stats().hits, 2);

        // A writer replaces the clean file's content with EICAR: post-write
        // marks it, cleanup invalidates and rescans -> Deny, cached.
        let c = drv
            .open(&mut ch, &clean, FILE_READ_DATA | GENERIC_WRITE)
            .await;
        assert_eq!(c.decided, Decided::Cached(CachedVerdict::Allow));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&clean)
                .unwrap();
            f.write_all(EICAR).unwrap();
        }
        drv.on_write(&clean);
        let v = drv.cleanup(&mut ch, &clean).await.expect("a rescan");
        assert_eq!(
            (v.decision, v.source, v.threat.as_str()),
            (Decision::Deny, VerdictSource::Host, "Eicar-Test-Signature")
        );
        assert_eq!(
            ch.sent.file_events.last().map(|e| e.1),
            Some(EventKind::CloseAfterWrite)
        );
        assert_eq!(drv.cache.stats().invalidations, 1);
        // The next open of the rewritten file is denied from the cache.
        let c = drv.open(&mut ch, &clean, FILE_READ_DATA).await;
        assert!(
            matches!(c.decided, Decided::Cached(CachedVerdict::Deny { .. })),
            "{c:?}"
        );
        assert_eq!(c.status, NtStatus::STATUS_VIRUS_INFECTED);
        // A cleanup without a write rescans nothing.
        assert!(drv.cleanup(&mut ch, &clean).await.is_none());
        assert_eq!(ch.file_events(), 3);
        scanner.wait_queries(3).await;
        ch.close().await;

        // Another boot with denyStatus 1: the same Deny fails the create
        // with STATUS_ACCESS_DENIED.
        let (mut drv, mut ch) = boot(&[("denyStatus", RegValue::Dword(1))], scanner.port).await;
        let c = drv.open(&mut ch, &eicar, FILE_READ_DATA).await;
        assert!(
            matches!(c.decided, Decided::Queried(v) if v.decision == Decision::Deny),
            "{c:?}"
        );
        assert_eq!(c.status, NtStatus::STATUS_ACCESS_DENIED);
        let c = drv.open(&mut ch, &eicar, FILE_READ_DATA).await;
        assert!(matches!(
            c.decided,
            Decided::Cached(CachedVerdict::Deny { .. })
        ));
        assert_eq!(c.status, NtStatus::STATUS_ACCESS_DENIED);
        scanner.wait_queries(4).await;
        ch.close().await;
        scanner.shutdown().await;
    });
}

#[test]
fn silent_scanner_deadline_answers_with_the_fail_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let eicar = write_file(tmp.path(), "eicar.com", EICAR);
    run(async move {
        // Accepts, reads nothing, answers nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = u32::from(listener.local_addr().unwrap().port());
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        for (fail_mode, expected) in [
            (0, NtStatus::STATUS_SUCCESS),
            (1, NtStatus::STATUS_VIRUS_INFECTED),
        ] {
            let values = [
                ("umcMsgTimeoutMs", RegValue::Dword(300)),
                ("failMode", RegValue::Dword(fail_mode)),
                ("hostPort", RegValue::Dword(port)),
            ];
            let params = params_from(&values);
            let clock = Clock::new();
            let mut ch = Channel::connect(params.host_port, &params, clock)
                .await
                .unwrap();
            let mut drv = Driver::new(params, clock);
            // No HelloAck: the query waits queued until its deadline.
            let c = drv.open(&mut ch, &eicar, FILE_READ_DATA).await;
            let Decided::Queried(v) = c.decided else {
                panic!("{c:?}")
            };
            let mode = if fail_mode == 0 {
                FailMode::Open
            } else {
                FailMode::Closed
            };
            assert_eq!(v.source, VerdictSource::Deadline(mode));
            assert_eq!(c.status, expected, "failMode {fail_mode}");
            assert!(!ch.connected && ch.closed.is_none());
            // A fail-mode answer is never cached: the next open asks again.
            assert!(drv.cache.is_empty());
            assert!(drv.begin_open(&mut ch, &eicar, FILE_READ_DATA).is_err());
        }
        holder.abort();
    });
}

#[test]
fn scanner_gone_mid_query_fail_mode_once_then_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let eicar = write_file(tmp.path(), "eicar.com", EICAR);
    let clean = write_file(tmp.path(), "clean.txt", CLEAN);
    run(async move {
        let scanner = Scanner::start("tcp://127.0.0.1:0").await.unwrap();
        let port = scanner.port;
        let (mut drv, mut ch) = boot(&[("failMode", RegValue::Dword(1))], port).await;
        // Two creates wait; the host's reads are held back so both queries
        // are still open at the scanner.
        ch.serve_reads = false;
        let a = drv
            .begin_open(&mut ch, &eicar, FILE_READ_DATA)
            .expect_err("a query");
        let b = drv
            .begin_open(&mut ch, &clean, FILE_READ_DATA)
            .expect_err("a query");
        ch.pump_until(|c| c.file_events() == 2 && c.out.is_empty() && !c.parked_reads.is_empty())
            .await;
        // The scanner dies (its tasks are dropped, the socket closes).
        scanner.task.abort();
        let _ = scanner.task.await;
        ch.pump_until(|c| c.closed.is_some()).await;
        let ca = drv.finish_open(&mut ch, a).await;
        let cb = drv.finish_open(&mut ch, b).await;
        for c in [ca, cb] {
            let Decided::Queried(v) = c.decided else {
                panic!("{c:?}")
            };
            assert_eq!(v.source, VerdictSource::Local(FailMode::Closed));
            assert_eq!(c.status, NtStatus::STATUS_VIRUS_INFECTED);
        }
        // Exactly once each, and nothing more comes.
        ch.handle_events();
        assert_eq!(ch.verdicts.len(), 2);
        assert!(
            ch.verdicts.values().all(|v| v.len() == 1),
            "{:?}",
            ch.verdicts
        );
        assert_eq!(ch.session.in_flight(), 0);
        assert!(ch.session.poll_event().is_none());
        assert!(drv.cache.is_empty());

        // Reconnect, paced by guest::Reconnect. The host port refuses until
        // a new scanner binds it.
        let mut reconnect = Reconnect::new(ReconnectConfig {
            first_delay: Duration::from_millis(20),
            factor: 2,
            cap: Duration::from_millis(200),
            stable_after: Duration::from_secs(30),
        });
        let refused = tokio::time::timeout(LIMIT, async {
            while TcpStream::connect(("127.0.0.1", u16::try_from(port).unwrap()))
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            refused.is_ok(),
            "the old scanner's listener never went away"
        );
        let d1 = reconnect.on_closed(drv.clock.now());
        tokio::time::sleep(d1).await;
        assert!(
            Channel::connect(port, &drv.params, drv.clock)
                .await
                .is_err(),
            "nobody listens yet"
        );
        let d2 = reconnect.on_closed(drv.clock.now());
        assert_eq!(
            (d1, d2),
            (Duration::from_millis(20), Duration::from_millis(40))
        );
        assert_eq!(reconnect.failures(), 2);
        let url = format!("tcp://127.0.0.1:{port}");
        let new_scanner = tokio::time::timeout(LIMIT, async {
            loop {
                match Scanner::start(&url).await {
                    Ok(s) => return s,
                    // The old listener's port may linger a moment.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .expect("a new scanner on the same port");
        tokio::time::sleep(d2).await;
        let mut ch = Channel::connect(port, &drv.params, drv.clock)
            .await
            .expect("reconnected");
        ch.handshake().await;
        reconnect.on_connected(drv.clock.now());
        let c = drv.open(&mut ch, &eicar, FILE_READ_DATA).await;
        assert!(
            matches!(c.decided, Decided::Queried(v) if v.source == VerdictSource::Host && v.decision == Decision::Deny),
            "{c:?}"
        );
        assert_eq!(c.status, NtStatus::STATUS_VIRUS_INFECTED);
        let c = drv.open(&mut ch, &clean, FILE_READ_DATA).await;
        assert!(
            matches!(c.decided, Decided::Queried(v) if v.source == VerdictSource::Host && v.decision == Decision::Allow),
            "{c:?}"
        );
        assert_eq!(c.status, NtStatus::STATUS_SUCCESS);
        new_scanner.wait_queries(2).await;
        ch.close().await;
        new_scanner.shutdown().await;
    });
}
