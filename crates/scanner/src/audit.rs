//! The audit log: one JSON object per verdict, one per line, appended to a
//! file.
//!
//! Fields: `time` (RFC 3339 UTC, milliseconds), `guest` (address and announced
//! name), `peer` (the transport identity caches and limits are keyed by),
//! `path`, `verdict`
//! (`allow`, `deny`, `allow_no_cache`), `threat` and `engine` (null when
//! clean), `bytes` (content bytes pulled for this query with `ReadRequest`s),
//! `inline_bytes` and `whole_file` (content the guest sent inline with its
//! `FileEvent`, protocol version 2: how many bytes, and whether they were
//! the whole file), `duration_ms`, `cache` (`none`, `guest`, `content`).
//!
//! **A verdict never waits for the audit sink.** [`AuditLog::write`] only
//! queues the encoded line (a bounded queue of [`QUEUE_RECORDS`]); a thread of
//! its own writes the lines. When the sink blocks (a FIFO nobody reads, a
//! hung NFS mount) the queue fills and further records are dropped and
//! counted (`thinagent_scanner_audit_records_not_written`), with one log line
//! when dropping starts and one when writing resumes, never one per record.
//!
//! **Every line is whole or absent.** A line is written with one
//! `write_all`; if that fails (`ENOSPC`, `EIO`) the file is truncated back to
//! the end of the last whole line, so the next record after space returns
//! starts on a line of its own. A failing sink logs one ERROR when it starts
//! failing and one line when it writes again, with the count of records lost.
//!
//! **Opening** ([`AuditFile::open`]) is the one check of the path, made both
//! by the start and by `--check-config`: a missing file is created, an
//! existing one appended to; a directory, a path in a missing directory or a
//! file this user cannot write is an error that says which. A FIFO is opened
//! read-write, which on Linux never blocks (write-only would wait for a
//! reader, holding the start): records then wait in the pipe until a reader
//! comes, and a full pipe is a blocked sink (see above). `--check-config`
//! opens the path the same way and closes it again, removing the file if the
//! check created it ([`AuditFile::close_checked`]): it writes no record and
//! leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TrySendError, channel, sync_channel,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

/// Lines the queue between the verdict path and the writer thread holds.
pub const QUEUE_RECORDS: usize = 4096;

/// How long closing the log waits for the writer to write what is queued
/// (a blocked sink must not hold the scanner's shutdown).
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One audit line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the verdict was sent (RFC 3339, UTC).
    pub time: String,
    /// Who asked: the transport address (`vsock://CID:PORT`, `tcp://ADDR`,
    /// `tls://ADDR (SUBJECT)`, `unix://PATH (uid U, pid P)`) and the name the
    /// guest announced (a label, not proof of anything).
    pub guest: String,
    /// The identity the transport vouches for, which per-guest caches and
    /// limits are keyed by: `vsock:CID`, `tls:SUBJECT`, `tcp:IP`,
    /// `unix:PATH:uid=U` (docs/architecture.md, "Who is trusted for what").
    pub peer: String,
    /// The path the guest reported (lossy UTF-8).
    pub path: String,
    /// `allow`, `deny`, `allow_no_cache`.
    pub verdict: String,
    /// Threat name, if any.
    pub threat: Option<String>,
    /// Engine that found it, if any.
    pub engine: Option<String>,
    /// Content bytes pulled from the guest for this query (`ReadRequest`s).
    pub bytes: u64,
    /// Content bytes the guest sent inline with the `FileEvent` (protocol
    /// version 2; 0 when none). Not counted in `bytes`.
    #[serde(default)]
    pub inline_bytes: u64,
    /// The inline bytes were the whole file (`WHOLE_FILE`): nothing was
    /// pulled.
    #[serde(default)]
    pub whole_file: bool,
    /// FileEvent to Verdict, milliseconds.
    pub duration_ms: f64,
    /// Which cache answered: `none`, `guest`, `content`.
    pub cache: String,
    /// Set on the line of an admin's quarantine action instead of a
    /// verdict (`verdict` then names the action: `restore`, `purge`): the
    /// quarantine entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_id: Option<String>,
    /// How the admin's action ended (`done`, `changed`, `failed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// An open audit log: the queue to its writer thread.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    queue: Option<SyncSender<Vec<u8>>>,
    /// Set while records are being dropped because the queue is full.
    dropping: Arc<AtomicBool>,
    not_written: Counter,
    /// Disconnects when the writer thread ends (in a Mutex only because a
    /// Receiver is not Sync; it is used once, at drop).
    writer_done: Mutex<Option<Receiver<()>>>,
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open audit log {}: {source}; {}", .path.display(), open_hint(.path, .source))]
pub struct AuditOpenError {
    path: PathBuf,
    source: io::Error,
}

impl AuditOpenError {
    /// The OS error.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// What to do about a failed open of `path`.
fn open_hint(path: &Path, e: &io::Error) -> String {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match e.kind() {
        io::ErrorKind::IsADirectory => format!(
            "audit_log names a directory: give a file path, e.g. {}",
            path.join("audit.jsonl").display()
        ),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => format!(
            "the directory {} does not exist: create it, or choose another path",
            parent.display()
        ),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "this user may not write it: fix the permissions of the file and its directory, \
             or choose another path"
                .into()
        }
        _ => "audit_log must be a writable file (or FIFO) path".into(),
    }
}

/// The audit log's file, opened the way the service writes it (see the
/// module docs).
#[derive(Debug)]
pub struct AuditFile {
    path: PathBuf,
    file: File,
    /// This open created the file.
    created: bool,
}

impl AuditFile {
    /// Opens `path` for appending, creating it if missing; a FIFO is opened
    /// read-write so that the open never blocks.
    pub fn open(path: &Path) -> Result<Self, AuditOpenError> {
        let err = |source| AuditOpenError {
            path: path.to_path_buf(),
            source,
        };
        let (file, created) = match OpenOptions::new().append(true).create_new(true).open(path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let mut options = OpenOptions::new();
                options.append(true);
                if is_fifo(path) {
                    options.read(true);
                }
                (options.open(path).map_err(err)?, false)
            }
            Err(e) => return Err(err(e)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            created,
        })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes a file opened only to check it (`--check-config`), removing it
    /// if this open created it.
    pub fn close_checked(self) -> Result<(), AuditOpenError> {
        let Self {
            path,
            file,
            created,
        } = self;
        drop(file);
        if created {
            std::fs::remove_file(&path).map_err(|source| AuditOpenError { path, source })?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

#[cfg(not(unix))]
fn is_fifo(_path: &Path) -> bool {
    false
}

impl AuditLog {
    /// Opens (creates, appends to) `path` and starts its writer thread.
    /// Records that cannot be written are counted in `not_written`.
    pub fn open(path: &Path, not_written: Counter) -> Result<Self, AuditOpenError> {
        Self::start(AuditFile::open(path)?, not_written)
    }

    /// Starts the writer thread of an opened [`AuditFile`].
    pub fn start(file: AuditFile, not_written: Counter) -> Result<Self, AuditOpenError> {
        let AuditFile { path, file, .. } = file;
        let path = path.as_path();
        let err = |source| AuditOpenError {
            path: path.to_path_buf(),
            source,
        };
        let sink = LineSink::new(file).map_err(err)?;
        let (queue, lines) = sync_channel::<Vec<u8>>(QUEUE_RECORDS);
        let dropping = Arc::new(AtomicBool::new(false));
        let (done, writer_done) = channel::<()>();
        {
            let path = path.to_path_buf();
            let dropping = dropping.clone();
            let not_written = not_written.clone();
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || {
                    write_lines(&path, sink, &lines, &dropping, &not_written);
                    drop(done);
                })
                .map_err(err)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            queue: Some(queue),
            dropping,
            not_written,
            writer_done: Mutex::new(Some(writer_done)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one entry; never blocks. A record the queue has no room for
    /// is dropped and counted (see the module docs).
    pub fn write(&self, entry: &AuditEntry) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "audit: cannot encode entry");
                return;
            }
        };
        line.push(b'\n');
        let Some(queue) = &self.queue else { return };
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.not_written.inc();
                if !self.dropping.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        path = %self.path.display(),
                        queued = QUEUE_RECORDS,
                        "audit: the sink is not keeping up (its writes block); records are dropped \
                         and counted in thinagent_scanner_audit_records_not_written; verdicts are not delayed"
                    );
                }
            }
        }
    }
}

impl Drop for AuditLog {
    /// Closes the queue and waits, at most [`CLOSE_WAIT`], for the writer to
    /// write what was queued; a writer blocked in its sink is left behind
    /// (it ends with the process) rather than holding the shutdown.
    fn drop(&mut self) {
        drop(self.queue.take());
        let done = self
            .writer_done
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(done) = done
            && let Err(RecvTimeoutError::Timeout) = done.recv_timeout(CLOSE_WAIT)
        {
            tracing::warn!(
                path = %self.path.display(),
                "audit: the sink is still blocked at close; records still queued are lost"
            );
        }
    }
}

/// The writer thread: one line at a time, whole or not at all.
fn write_lines(
    path: &Path,
    mut sink: LineSink<File>,
    lines: &Receiver<Vec<u8>>,
    dropping: &AtomicBool,
    not_written: &Counter,
) {
    let mut failing: Option<u64> = None; // records lost since the sink failed
    for line in lines {
        match sink.write_line(&line) {
            Ok(()) => {
                if let Some(lost) = failing.take() {
                    tracing::info!(path = %path.display(), lost, "audit: the log is writable again");
                }
                if dropping.swap(false, Ordering::AcqRel) {
                    tracing::info!(
                        path = %path.display(),
                        not_written_total = not_written.get(),
                        "audit: the sink is keeping up again"
                    );
                }
            }
            Err(e) => {
                not_written.inc();
                match &mut failing {
                    Some(lost) => *lost += 1,
                    None => {
                        failing = Some(1);
                        tracing::error!(
                            path = %path.display(),
                            error = %e,
                            "audit: write failed; records are lost (counted in \
                             thinagent_scanner_audit_records_not_written) until a write succeeds"
                        );
                    }
                }
            }
        }
    }
}

/// A file that can be cut back to a length (a `File`; a test double).
pub trait Truncate {
    /// Sets the length to `len`.
    fn truncate_to(&mut self, len: u64) -> io::Result<()>;
}

impl Truncate for File {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

/// Appends whole lines: after a failed write the file is truncated back to
/// the end of the last whole line (a partial line never stays behind to be
/// glued to the next record).
#[derive(Debug)]
pub struct LineSink<F> {
    file: F,
    /// Length of the file up to the end of its last whole line.
    whole: u64,
}

impl LineSink<File> {
    /// Over an opened (appending) file.
    pub fn new(file: File) -> io::Result<Self> {
        let whole = file.metadata()?.len();
        Ok(Self { file, whole })
    }
}

impl<F: Write + Truncate> LineSink<F> {
    /// Over `file`, whose length is `len`.
    pub fn with_len(file: F, len: u64) -> Self {
        Self { file, whole: len }
    }

    /// Writes `line` (ending in a newline) whole, or leaves the file as it
    /// was and returns the error.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self.file.write_all(line).and_then(|()| self.file.flush()) {
            Ok(()) => {
                self.whole += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(t) = self.file.truncate_to(self.whole) {
                    tracing::error!(error = %t, "audit: cannot cut a partial line back");
                }
                Err(e)
            }
        }
    }

    /// The file.
    pub fn get_ref(&self) -> &F {
        &self.file
    }
}

/// `SystemTime` as RFC 3339 UTC with milliseconds (`2026-11-24T19:04:26.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2026-11-24T19:04:26.5Z
        let t = UNIX_EPOCH + Duration::from_millis(1_795_547_066_500);
        assert_eq!(rfc3339(t), "2026-11-24T19:04:26.500Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_append_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Counter::default()).unwrap();
        let e = entry();
        log.write(&e);
        log.write(&e);
        drop(log); // the writer has written what was queued
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: AuditEntry = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn open_refuses_a_directory_and_a_missing_directory_saying_which() {
        let dir = tempfile::tempdir().unwrap();
        let e = AuditFile::open(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::IsADirectory);
        assert!(e.to_string().contains("give a file path"), "{e}");
        let e = AuditFile::open(&dir.path().join("nope/audit.jsonl")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let msg = e.to_string();
        assert!(
            msg.contains("does not exist") && msg.contains("nope"),
            "{msg}"
        );
    }

    #[test]
    fn a_checked_open_leaves_no_new_file_and_keeps_an_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        AuditFile::open(&path).unwrap().close_checked().unwrap();
        assert!(!path.exists(), "the check created the file and left it");
        std::fs::write(&path, "old line\n").unwrap();
        AuditFile::open(&path).unwrap().close_checked().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old line\n");
    }

    #[cfg(unix)]
    #[test]
    fn an_unwritable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        if OpenOptions::new().append(true).open(&path).is_ok() {
            eprintln!("SKIPPED: this user (root?) may write a read-only file");
            return;
        }
        let e = AuditFile::open(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("permissions"), "{e}");
    }

    /// A FIFO nobody reads: opening it returns at once (write-only would
    /// wait for a reader), and the records wait in the pipe.
    #[cfg(unix)]
    #[test]
    fn a_fifo_without_reader_opens_without_blocking() {
        use std::io::Read;
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("audit.fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: mkfifo is not available");
            return;
        }
        let (opened, wait_opened) = mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let log = AuditLog::open(&path, Counter::default());
            let _ = opened.send(log.inspect(|log| log.write(&entry())));
        });
        let log = wait_opened
            .recv_timeout(Duration::from_secs(30))
            .expect("opening a FIFO without a reader blocked")
            .unwrap();
        // A reader that comes later gets the record.
        let mut reader = File::open(&fifo).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = reader.read(&mut buf).unwrap();
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(line.contains("eicar.com") && line.ends_with('\n'), "{line}");
        drop(log);
    }

    fn entry() -> AuditEntry {
        AuditEntry {
            time: rfc3339(SystemTime::now()),
            guest: "tcp:127.0.0.1:4000 vm1".into(),
            peer: "vsock:3".into(),
            path: "/tmp/eicar.com".into(),
            verdict: "deny".into(),
            threat: Some("Eicar-Test-Signature".into()),
            engine: Some("hash".into()),
            bytes: 68,
            inline_bytes: 0,
            whole_file: false,
            duration_ms: 0.5,
            cache: "none".into(),
            quarantine_id: None,
            status: None,
        }
    }

    /// A file that accepts `room` more bytes, then fails with ENOSPC (a
    /// partial write first, as a real full disk does).
    struct FullDisk {
        data: Vec<u8>,
        room: Option<usize>,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.room {
                None => {
                    self.data.extend_from_slice(buf);
                    Ok(buf.len())
                }
                Some(0) => Err(io::Error::from_raw_os_error(28)), // ENOSPC
                Some(r) => {
                    let n = r.min(buf.len());
                    self.data.extend_from_slice(&buf[..n]);
                    self.room = Some(r - n);
                    Ok(n)
                }
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Truncate for FullDisk {
        fn truncate_to(&mut self, len: u64) -> io::Result<()> {
            self.data.truncate(len as usize);
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_leaves_only_whole_lines() {
        let line = |v: &str| {
            let mut e = entry();
            e.verdict = v.into();
            let mut l = serde_json::to_vec(&e).unwrap();
            l.push(b'\n');
            l
        };
        let mut sink = LineSink::with_len(
            FullDisk {
                data: Vec::new(),
                room: None,
            },
            0,
        );
        sink.write_line(&line("allow")).unwrap();
        // the disk fills in the middle of the next record
        sink.file.room = Some(10);
        assert!(sink.write_line(&line("deny")).is_err());
        assert!(sink.write_line(&line("deny")).is_err());
        // space returns: the next record starts on a line of its own
        sink.file.room = None;
        sink.write_line(&line("allow_no_cache")).unwrap();
        let text = String::from_utf8(sink.get_ref().data.clone()).unwrap();
        let verdicts: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<AuditEntry>(l).unwrap().verdict)
            .collect();
        assert_eq!(verdicts, ["allow", "allow_no_cache"]);
        assert!(text.ends_with('\n'));
    }

    /// The audit log on a FIFO whose reader never reads: the writer thread
    /// blocks, yet every write returns and the excess is counted. (A hang
    /// here is caught by the watchdog and fails the test.)
    #[cfg(unix)]
    #[test]
    fn a_blocked_sink_never_blocks_the_verdict_path() {
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("audit.fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: mkfifo is not available");
            return;
        }
        // a reader that opens the FIFO and never reads
        let (close_reader, reader_closes) = mpsc::channel::<()>();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let f = File::open(&fifo).unwrap();
                let _ = reader_closes.recv();
                drop(f);
            })
        };
        let not_written = Counter::default();
        let log = AuditLog::open(&fifo, not_written.clone()).unwrap();
        let (finished, wait_finished) = mpsc::channel();
        let writer = std::thread::spawn(move || {
            let e = entry();
            // far more than the pipe (64 KiB) and the queue hold
            for _ in 0..(QUEUE_RECORDS * 4) {
                log.write(&e);
            }
            finished.send(()).unwrap();
            log
        });
        assert!(
            wait_finished.recv_timeout(Duration::from_secs(60)).is_ok(),
            "AuditLog::write blocked behind a sink that does not read"
        );
        let log = writer.join().unwrap();
        assert!(
            not_written.get() > 0,
            "records beyond the queue were neither written nor counted"
        );
        assert!(not_written.get() < (QUEUE_RECORDS * 4) as u64);
        close_reader.send(()).unwrap();
        reader.join().unwrap();
        drop(log);
    }
}
