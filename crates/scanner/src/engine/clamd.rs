//! ClamAV as an engine: content is forwarded to a running `clamd` with its
//! `zINSTREAM` command, over clamd's Unix socket or TCP.
//!
//! Protocol (clamd(8), "INSTREAM"): the client sends `zINSTREAM\0`, then the
//! content as chunks, each a 4-byte big-endian length followed by that many
//! bytes, and ends the stream with a zero-length chunk. clamd answers one
//! NUL-terminated line: `stream: OK`, `stream: <name> FOUND`, or `<reason>
//! ERROR`, then closes the connection. clamd refuses streams longer than its
//! `StreamMaxLength` with `INSTREAM size limit exceeded. ERROR` and closes the
//! connection (the client usually sees a reset while still writing).
//!
//! A [`ClamdScan`] opens its connection when the scan starts and writes every
//! chunk to clamd as soon as [`EngineScan::update`] receives it: the file is
//! never buffered here. All I/O is blocking `std` sockets with read and write
//! timeouts; the service calls engines from a blocking-capable thread.

use std::fmt;
use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::{Detection, Engine, EngineError, EngineScan, cap_signature_name};

/// The engine name used in detections, logs and metrics.
pub const CLAMD_ENGINE_NAME: &str = "clamd";

/// Default timeout for each connect, read and write with clamd.
pub const DEFAULT_CLAMD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a `unix://` clamd address cannot be used off Unix (Windows).
pub const CLAMD_UNIX_NEEDS_UNIX: &str =
    "a Unix socket needs a Unix OS; set clamd's TCPSocket and use tcp://HOST:PORT on this OS";

/// Largest chunk sent in one INSTREAM length prefix; longer updates are split.
const MAX_CHUNK: usize = 1024 * 1024;

/// Size of the write buffer that coalesces each chunk's length prefix with its
/// data.
const WRITE_BUFFER: usize = 64 * 1024;

/// Most reply bytes read from clamd (a reply is one short line; with
/// `AllMatchScan` a few).
const MAX_REPLY: u64 = 64 * 1024;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// clamd's `LocalSocket`, e.g. `/run/clamav/clamd.ctl`.
    Unix(PathBuf),
    /// clamd's `TCPAddr`:`TCPSocket`, as `host:port` (e.g. `127.0.0.1:3310`).
    Tcp(String),
}

/// A clamd address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid clamd address `{0}`: use unix:///path/to/clamd.sock, tcp://HOST:PORT or an absolute socket path"
)]
pub struct ClamdAddressError(pub String);

impl FromStr for ClamdAddress {
    type Err = ClamdAddressError;

    /// Parses `unix:///path`, `tcp://host:port`, or a bare absolute path (a
    /// Unix socket).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ClamdAddressError(s.to_owned());
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') && path.len() > 1 {
                return Ok(ClamdAddress::Unix(PathBuf::from(path)));
            }
            return Err(bad());
        }
        if let Some(hostport) = s.strip_prefix("tcp://") {
            let hostport = hostport.trim_end_matches('/');
            let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            return Ok(ClamdAddress::Tcp(hostport.to_owned()));
        }
        if s.starts_with('/') && s.len() > 1 {
            return Ok(ClamdAddress::Unix(PathBuf::from(s)));
        }
        Err(bad())
    }
}

impl fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddress::Unix(path) => write!(f, "unix://{}", path.display()),
            ClamdAddress::Tcp(hostport) => write!(f, "tcp://{hostport}"),
        }
    }
}

/// A connection to clamd over either transport.
enum ClamdStream {
    #[cfg(unix)]
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for ClamdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            #[cfg(unix)]
            ClamdStream::Unix(s) => s.read(buf),
            ClamdStream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for ClamdStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            #[cfg(unix)]
            ClamdStream::Unix(s) => s.write(buf),
            ClamdStream::Tcp(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            #[cfg(unix)]
            ClamdStream::Unix(s) => s.write_vectored(bufs),
            ClamdStream::Tcp(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// ClamAV via a running clamd, as an [`Engine`]. Holds only the address:
/// every scan opens its own connection.
#[derive(Debug, Clone)]
pub struct ClamdEngine {
    address: ClamdAddress,
    timeout: Duration,
    stream_max_length: Option<u64>,
}

impl ClamdEngine {
    /// An engine that talks to clamd at `address`; `timeout` bounds every
    /// connect, read and write (so also how long clamd may take to answer
    /// after the last chunk).
    pub fn new(address: ClamdAddress, timeout: Duration) -> Self {
        ClamdEngine {
            address,
            timeout,
            stream_max_length: None,
        }
    }

    /// Tells the engine clamd's `StreamMaxLength`: a file known to be longer
    /// is refused without being sent. Without it, clamd's own refusal
    /// (`INSTREAM size limit exceeded`) is reported the same way, after the
    /// first `StreamMaxLength` bytes were sent.
    #[must_use]
    pub fn with_stream_max_length(mut self, bytes: u64) -> Self {
        self.stream_max_length = Some(bytes);
        self
    }

    /// Where this engine sends content.
    pub fn address(&self) -> &ClamdAddress {
        &self.address
    }

    /// Checks that clamd answers (`zPING` -> `PONG`); for start-up and
    /// `--check-config`.
    pub fn ping(&self) -> Result<(), EngineError> {
        let reply = self.command(b"zPING\0")?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(self.unavailable(format!("unexpected reply to PING: {reply:?}")))
        }
    }

    /// clamd's version line (`zVERSION`), e.g. `ClamAV 1.4.6/27000/...`.
    pub fn version(&self) -> Result<String, EngineError> {
        self.command(b"zVERSION\0")
    }

    /// Scans a complete buffer (one INSTREAM) — a convenience over
    /// [`Engine::start`].
    pub fn scan_bytes(&self, data: &[u8]) -> Result<Option<Detection>, EngineError> {
        let mut scan = self.start(data.len() as u64);
        scan.update(data)?;
        scan.finish()
    }

    fn command(&self, command: &[u8]) -> Result<String, EngineError> {
        let mut stream = self.connect()?;
        stream
            .write_all(command)
            .map_err(|e| self.io_error("sending command", e))?;
        let reply = read_reply(&mut stream).map_err(|e| self.io_error("reading reply", e))?;
        Ok(reply
            .split(['\0', '\n'])
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_owned())
    }

    fn connect(&self) -> Result<ClamdStream, EngineError> {
        let timeout = Some(self.timeout.max(Duration::from_millis(1)));
        match &self.address {
            // Unix sockets do not exist on Windows: clamd there listens on TCP.
            #[cfg(not(unix))]
            ClamdAddress::Unix(_) => Err(self.unavailable(format!(
                "cannot connect to {}: {CLAMD_UNIX_NEEDS_UNIX}",
                self.address
            ))),
            #[cfg(unix)]
            ClamdAddress::Unix(path) => {
                let s = UnixStream::connect(path).map_err(|e| {
                    self.unavailable(format!("cannot connect to {}: {e}", self.address))
                })?;
                s.set_read_timeout(timeout)
                    .and_then(|()| s.set_write_timeout(timeout))
                    .map_err(|e| self.io_error("setting socket timeouts", e))?;
                Ok(ClamdStream::Unix(s))
            }
            ClamdAddress::Tcp(hostport) => {
                let addrs = hostport.to_socket_addrs().map_err(|e| {
                    self.unavailable(format!("cannot resolve {}: {e}", self.address))
                })?;
                let mut last = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, self.timeout) {
                        Ok(s) => {
                            s.set_read_timeout(timeout)
                                .and_then(|()| s.set_write_timeout(timeout))
                                .and_then(|()| s.set_nodelay(true))
                                .map_err(|e| self.io_error("setting socket options", e))?;
                            return Ok(ClamdStream::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(self.unavailable(match last {
                    Some(e) => format!("cannot connect to {}: {e}", self.address),
                    None => format!("{} resolves to no address", self.address),
                }))
            }
        }
    }

    fn unavailable(&self, reason: String) -> EngineError {
        EngineError::Unavailable {
            engine: CLAMD_ENGINE_NAME,
            reason,
        }
    }

    fn too_long(&self, detail: &str) -> EngineError {
        EngineError::Refused {
            engine: CLAMD_ENGINE_NAME,
            reason: format!(
                "{detail}: the file is longer than clamd's StreamMaxLength at {} \
                 (raise StreamMaxLength in clamd.conf, or lower the scanner's max file size)",
                self.address
            ),
        }
    }

    fn io_error(&self, doing: &str, e: io::Error) -> EngineError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => EngineError::Timeout {
                engine: CLAMD_ENGINE_NAME,
                millis: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            },
            _ => self.unavailable(format!("{doing} ({}): {e}", self.address)),
        }
    }

    /// Interprets clamd's answer to one INSTREAM.
    fn parse_scan_reply(&self, reply: &str) -> Result<Option<Detection>, EngineError> {
        let mut lines = reply
            .split(['\0', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .peekable();
        if lines.peek().is_none() {
            return Err(self.unavailable(format!(
                "clamd at {} closed the connection without a verdict",
                self.address
            )));
        }
        let mut clean = false;
        for line in lines {
            let body = line.strip_prefix("stream:").map_or(line, str::trim_start);
            if let Some(name) = body.strip_suffix(" FOUND") {
                return Ok(Some(Detection {
                    threat: cap_signature_name(name.trim()).into_owned(),
                    engine: CLAMD_ENGINE_NAME,
                }));
            }
            if body == "OK" {
                clean = true;
                continue;
            }
            if line.contains("size limit exceeded") {
                return Err(self.too_long("INSTREAM size limit exceeded"));
            }
            if let Some(reason) = body.strip_suffix("ERROR") {
                return Err(EngineError::Refused {
                    engine: CLAMD_ENGINE_NAME,
                    reason: format!("the daemon reported a scan error: {}", reason.trim()),
                });
            }
            return Err(self.unavailable(format!("unexpected reply from clamd: {line:?}")));
        }
        debug_assert!(clean);
        Ok(None)
    }
}

/// Reads clamd's reply: everything until clamd closes the connection (it
/// does after every command outside IDSESSION), at most [`MAX_REPLY`] bytes.
fn read_reply(stream: &mut ClamdStream) -> io::Result<String> {
    let mut reply = Vec::new();
    match stream.take(MAX_REPLY).read_to_end(&mut reply) {
        Ok(_) => {}
        // A connection reset after the reply arrived (clamd closes a refused
        // INSTREAM with our data still unread, and a TCP peer may then send
        // RST) must not hide the reply: `read_to_end` keeps what it read
        // before the error in `reply`.
        Err(_) if !reply.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

impl Engine for ClamdEngine {
    fn name(&self) -> &'static str {
        CLAMD_ENGINE_NAME
    }

    /// Network I/O: always scanned on a blocking thread.
    fn blocks(&self) -> bool {
        true
    }

    fn start(&self, size: u64) -> Box<dyn EngineScan> {
        let state = match self.stream_max_length {
            Some(max) if size > max => ScanState::Failed(self.too_long(&format!(
                "file of {size} bytes not sent (StreamMaxLength {max})"
            ))),
            _ => match self.open_stream() {
                Ok(writer) => ScanState::Streaming(writer),
                Err(e) => ScanState::Failed(e),
            },
        };
        Box::new(ClamdScan {
            engine: self.clone(),
            state,
            sent: 0,
        })
    }
}

impl ClamdEngine {
    fn open_stream(&self) -> Result<BufWriter<ClamdStream>, EngineError> {
        let mut stream = self.connect()?;
        stream
            .write_all(b"zINSTREAM\0")
            .map_err(|e| self.io_error("sending INSTREAM", e))?;
        Ok(BufWriter::with_capacity(WRITE_BUFFER, stream))
    }
}

enum ScanState {
    Streaming(BufWriter<ClamdStream>),
    /// The scan failed; the error is reported once, then [`ScanState::Done`].
    Failed(EngineError),
    Done,
}

/// One file being streamed to clamd.
pub struct ClamdScan {
    engine: ClamdEngine,
    state: ScanState,
    sent: u64,
}

impl ClamdScan {
    /// Takes the pending error (or a generic one if it was already reported).
    fn take_error(&mut self) -> EngineError {
        match std::mem::replace(&mut self.state, ScanState::Done) {
            ScanState::Failed(e) => e,
            _ => self
                .engine
                .unavailable("scan already failed (error reported earlier)".to_owned()),
        }
    }

    /// A write failed: clamd may have refused the stream (StreamMaxLength)
    /// and closed; its reason, if it sent one, is still readable.
    fn write_failed(&mut self, e: io::Error) -> EngineError {
        let state = std::mem::replace(&mut self.state, ScanState::Done);
        if let ScanState::Streaming(writer) = state {
            let (mut stream, _) = writer.into_parts();
            if let Ok(reply) = read_reply(&mut stream)
                && reply.contains("size limit exceeded")
            {
                return self.engine.too_long("INSTREAM size limit exceeded");
            }
        }
        self.engine.io_error("streaming content", e)
    }
}

impl EngineScan for ClamdScan {
    fn update(&mut self, chunk: &[u8]) -> Result<Option<Detection>, EngineError> {
        let writer = match &mut self.state {
            ScanState::Streaming(w) => w,
            _ => return Err(self.take_error()),
        };
        if let Some(max) = self.engine.stream_max_length
            && self.sent + chunk.len() as u64 > max
        {
            let total = self.sent + chunk.len() as u64;
            self.state = ScanState::Done;
            return Err(self.engine.too_long(&format!(
                "content grew to {total} bytes (StreamMaxLength {max})"
            )));
        }
        let mut result = Ok(());
        for piece in chunk.chunks(MAX_CHUNK) {
            let len = u32::try_from(piece.len()).expect("MAX_CHUNK fits in u32");
            result = writer
                .write_all(&len.to_be_bytes())
                .and_then(|()| writer.write_all(piece));
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => {
                self.sent += chunk.len() as u64;
                Ok(None)
            }
            Err(e) => Err(self.write_failed(e)),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<Option<Detection>, EngineError> {
        let mut writer = match std::mem::replace(&mut self.state, ScanState::Done) {
            ScanState::Streaming(w) => w,
            other => {
                self.state = other;
                return Err(self.take_error());
            }
        };
        if let Err(e) = writer
            .write_all(&0u32.to_be_bytes())
            .and_then(|()| writer.flush())
        {
            self.state = ScanState::Streaming(writer);
            return Err(self.write_failed(e));
        }
        let mut stream = match writer.into_inner() {
            Ok(s) => s,
            Err(e) => {
                let err = e.error().kind();
                return Err(self.engine.io_error("streaming content", err.into()));
            }
        };
        let reply = read_reply(&mut stream)
            .map_err(|e| self.engine.io_error("waiting for clamd's verdict", e))?;
        self.engine.parse_scan_reply(&reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake clamd that reads only the command and a few bytes, answers
    /// like clamd at its StreamMaxLength and closes with the rest of the
    /// stream unread: the engine must report the refusal with its reason.
    #[cfg(unix)]
    #[test]
    fn refusal_is_read_even_when_clamd_closes_with_unread_data() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake-clamd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // Let the client's whole stream (it fits the socket buffer)
            // and its terminating chunk arrive before answering.
            std::thread::sleep(Duration::from_millis(300));
            let mut head = [0u8; 64];
            let _ = conn.read(&mut head).unwrap();
            conn.write_all(b"INSTREAM size limit exceeded. ERROR\0")
                .unwrap();
            // Dropped with the client's data unread.
        });
        let engine = ClamdEngine::new(ClamdAddress::Unix(path.clone()), Duration::from_secs(5));
        let err = engine
            .scan_bytes(&vec![0x41u8; 8 * 1024 * 1024])
            .unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&err, EngineError::Refused { reason, .. } if reason.contains("StreamMaxLength")),
            "{err:?}"
        );
    }

    fn engine() -> ClamdEngine {
        ClamdEngine::new(
            ClamdAddress::Tcp("127.0.0.1:3310".into()),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "unix:///run/clamav/clamd.ctl".parse(),
            Ok(ClamdAddress::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(
            "/run/clamd.sock".parse(),
            Ok(ClamdAddress::Unix("/run/clamd.sock".into()))
        );
        assert_eq!(
            "tcp://127.0.0.1:3310".parse(),
            Ok(ClamdAddress::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            "tcp://[::1]:3310".parse(),
            Ok(ClamdAddress::Tcp("[::1]:3310".into()))
        );
        for bad in [
            "tcp://127.0.0.1",
            "tcp://:3310",
            "tcp://h:99999",
            "unix://rel",
            "clamd",
            "",
        ] {
            assert!(bad.parse::<ClamdAddress>().is_err(), "{bad}");
        }
        let a: ClamdAddress = "unix:///x/y.sock".parse().unwrap();
        assert_eq!(a.to_string(), "unix:///x/y.sock");
    }

    #[test]
    fn parses_scan_replies() {
        let e = engine();
        assert_eq!(e.parse_scan_reply("stream: OK\0").unwrap(), None);
        assert_eq!(
            e.parse_scan_reply("stream: Eicar-Signature FOUND\0")
                .unwrap(),
            Some(Detection {
                threat: "Eicar-Signature".into(),
                engine: CLAMD_ENGINE_NAME
            })
        );
        // A name longer than MAX_SIGNATURE_NAME_LEN is cut when parsed.
        let long = "L".repeat(100_000);
        let d = e
            .parse_scan_reply(&format!("stream: {long} FOUND\0"))
            .unwrap()
            .unwrap();
        assert_eq!(d.threat.len(), super::super::MAX_SIGNATURE_NAME_LEN);
        assert!(d.threat.ends_with(super::super::CUT_MARK));
        assert!(matches!(
            e.parse_scan_reply("INSTREAM size limit exceeded. ERROR\0"),
            Err(EngineError::Refused { ref reason, .. }) if reason.contains("StreamMaxLength")
        ));
        assert!(matches!(
            e.parse_scan_reply("stream: Can't allocate memory ERROR\0"),
            Err(EngineError::Refused { ref reason, .. }) if reason.contains("allocate")
        ));
        assert!(matches!(
            e.parse_scan_reply(""),
            Err(EngineError::Unavailable { .. })
        ));
        assert!(matches!(
            e.parse_scan_reply("UNKNOWN COMMAND\0"),
            Err(EngineError::Unavailable { .. })
        ));
    }

    #[test]
    fn unreachable_clamd_is_unavailable_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let e = ClamdEngine::new(
            ClamdAddress::Unix(dir.path().join("missing.sock")),
            Duration::from_secs(1),
        );
        assert!(matches!(e.ping(), Err(EngineError::Unavailable { .. })));
        let mut scan = e.start(3);
        assert!(matches!(
            scan.update(b"abc"),
            Err(EngineError::Unavailable { .. })
        ));
        assert!(scan.finish().is_err());
    }

    #[test]
    fn stream_max_length_refuses_before_sending() {
        let e = engine().with_stream_max_length(10);
        let scan = e.start(11);
        assert!(matches!(
            scan.finish(),
            Err(EngineError::Refused { ref reason, .. }) if reason.contains("StreamMaxLength")
        ));
    }
}
