//! Shared helpers of the service tests: a test guest built on the real
//! `thinagent_guest::Session`, raw frame tools for hostile peers, and ways
//! to start the service (binary or in-process).
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use thinagent_guest::{
    CloseReason, FailMode, Instant as GuestInstant, QueryId, Session, SessionConfig, SessionEvent,
    VerdictSource,
};
use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, Decoded, ErrorCode, EventKind,
    FileEvent, FileIdentity, FilePath, GoodbyeReason, Hello, MAX_FRAME_LEN, Message, OsKind,
    PROTOCOL_VERSION, ReadOutcome, decode_frame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The EICAR test file.
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// A file as a guest sees it.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// Path sent in the FileEvent.
    pub path: String,
    /// Identity sent in the FileEvent.
    pub identity: FileIdentity,
    /// Content served on ReadRequest.
    pub content: Arc<[u8]>,
}

impl FileSpec {
    /// A file with identity (`volume`, `id`, mtime `version`).
    pub fn new(path: &str, id: u64, version: u64, content: &[u8]) -> Arc<Self> {
        let mut file_id = [0u8; 16];
        file_id[..8].copy_from_slice(&id.to_le_bytes());
        Arc::new(Self {
            path: path.to_string(),
            identity: FileIdentity {
                volume_serial: 7,
                file_id,
                size: content.len() as u64,
                last_write_time: 133_000_000_000_000_000 + version,
            },
            content: content.into(),
        })
    }
}

/// One open's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Allow / Deny / AllowNoCache.
    pub decision: Decision,
    /// Threat name (empty when none).
    pub threat: String,
    /// Host, deadline or local.
    pub source: VerdictSource,
}

impl Answer {
    /// Denied with this threat, by the host.
    pub fn is_found(&self, threat: &str) -> bool {
        self.source == VerdictSource::Host
            && self.decision == Decision::Deny
            && self.threat == threat
    }

    /// Allowed by the host after a scan or cache.
    pub fn is_clean(&self) -> bool {
        self.source == VerdictSource::Host && self.decision == Decision::Allow
    }
}

/// What a test guest saw.
#[derive(Debug, Default)]
pub struct GuestReport {
    /// Answer per open, by index.
    pub answers: Vec<Option<Answer>>,
    /// Verdict frames the host sent, per FileEvent request id (raw count).
    pub host_verdicts: HashMap<u64, u32>,
    /// FileEvent ids the guest sent, by open index.
    pub ids: Vec<Option<QueryId>>,
    /// Why the session closed (None: it was still open at the end).
    pub closed: Option<CloseReason>,
}

impl GuestReport {
    /// Every open answered once by the host, and no FileEvent got two Verdicts.
    pub fn assert_each_answered_once_by_host(&self) {
        for (i, a) in self.answers.iter().enumerate() {
            let a = a
                .as_ref()
                .unwrap_or_else(|| panic!("open {i} never answered"));
            assert_eq!(a.source, VerdictSource::Host, "open {i}: {a:?}");
            let id = self.ids[i].expect("id");
            assert_eq!(self.host_verdicts.get(&id), Some(&1), "open {i} id {id}");
        }
        assert!(
            self.host_verdicts.values().all(|n| *n == 1),
            "some FileEvent got more than one Verdict: {:?}",
            self.host_verdicts
                .iter()
                .filter(|(_, n)| **n != 1)
                .collect::<Vec<_>>()
        );
    }
}

/// Counts `Verdict` frames in the raw byte stream the host sends.
#[derive(Default)]
struct RawCounter {
    buf: Vec<u8>,
    verdicts: HashMap<u64, u32>,
}

impl RawCounter {
    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Ok(Decoded::Frame { frame, consumed }) = decode_frame(&self.buf[at..]) {
            if let Message::Verdict(_) = frame.message {
                *self.verdicts.entry(frame.request_id).or_default() += 1;
            }
            at += consumed;
        }
        self.buf.drain(..at);
    }
}

/// Runs a guest over `stream`: opens every file of `opens` (in order, at most
/// `window` in flight), serves reads from memory, closes with Goodbye when
/// all are answered (or the session closes). Bounded by `limit`.
pub async fn run_guest<S>(
    stream: S,
    name: &str,
    opens: &[Arc<FileSpec>],
    window: usize,
    limit: Duration,
) -> GuestReport
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let base = tokio::time::Instant::now();
    let now = || GuestInstant::from_nanos(base.elapsed().as_nanos() as u64);
    let config = SessionConfig {
        query_timeout: limit,
        fail_mode: FailMode::Closed,
        os: OsKind::Linux,
        agent_version: AgentVersion {
            major: 0,
            minor: 1,
            patch: 0,
        },
        capabilities: Capabilities::READ_CONTENT,
        guest_name: name,
    };
    let mut s: Box<Session<64, 1024, 16>> = Box::new(Session::new(&config));
    s.start(now());
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut report = GuestReport {
        answers: vec![None; opens.len()],
        ids: vec![None; opens.len()],
        ..GuestReport::default()
    };
    let mut by_id: HashMap<QueryId, usize> = HashMap::new();
    let mut next = 0usize;
    let mut out = Vec::new();
    let mut tx = vec![0u8; MAX_FRAME_LEN];
    let mut rx = vec![0u8; 64 * 1024];
    let mut raw = RawCounter::default();
    let mut connected = false;
    let mut finishing = false;
    let end = base + limit;
    loop {
        loop {
            let mut progress = false;
            while connected && !finishing && next < opens.len() && by_id.len() < window {
                let f = &opens[next];
                let ev = FileEvent {
                    kind: EventKind::Open,
                    process_id: 1,
                    desired_access: 1,
                    create_disposition: CreateDisposition::Open,
                    file: f.identity,
                    path: FilePath::Utf8(&f.path),
                    content: thinagent_protocol::InlineContent::NONE,
                };
                let Ok(q) = s.submit(&ev, now()) else { break };
                by_id.insert(q, next);
                report.ids[next] = Some(q);
                next += 1;
                progress = true;
            }
            while let Some(ev) = s.poll_event() {
                progress = true;
                match ev {
                    SessionEvent::Connected { .. } => connected = true,
                    SessionEvent::Verdict(v) => {
                        if let Some(i) = by_id.remove(&v.query) {
                            report.answers[i] = Some(Answer {
                                decision: v.decision,
                                threat: v.threat.as_str().to_string(),
                                source: v.source,
                            });
                        }
                    }
                    SessionEvent::ReadJob {
                        read_id,
                        query,
                        offset,
                        length,
                    } => {
                        let content = by_id.get(&query).map(|i| opens[*i].content.clone());
                        let outcome_data;
                        let outcome = match &content {
                            None => ReadOutcome::Cancelled,
                            Some(c) => {
                                let start = (offset as usize).min(c.len());
                                let stop = (start + length as usize).min(c.len());
                                outcome_data = &c[start..stop];
                                if stop == c.len() {
                                    ReadOutcome::EndOfFile(outcome_data)
                                } else {
                                    ReadOutcome::Data(outcome_data)
                                }
                            }
                        };
                        while let Err(thinagent_guest::ReadError::Busy) =
                            s.read_completed(read_id, outcome, now())
                        {
                            while let Some(k) = s.poll_transmit(&mut tx) {
                                out.extend_from_slice(&tx[..k]);
                            }
                        }
                    }
                    SessionEvent::Closed { reason } => report.closed = Some(reason),
                    // This guest announces no host-action capability.
                    SessionEvent::HostRequest | SessionEvent::ScanCancelled { .. } => {
                        panic!("host request raised without its capability: {ev:?}")
                    }
                }
            }
            if !progress {
                break;
            }
        }
        while let Some(k) = s.poll_transmit(&mut tx) {
            out.extend_from_slice(&tx[..k]);
        }
        if report.closed.is_some() {
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&out)).await;
            let _ = wr.shutdown().await;
            report.host_verdicts = raw.verdicts;
            return report;
        }
        if connected && !finishing && next == opens.len() && by_id.is_empty() {
            finishing = true;
            s.close(now());
            continue;
        }
        let deadline = s
            .next_deadline()
            .map(|d| base + Duration::from_nanos(d.0))
            .unwrap_or(end)
            .min(end);
        tokio::select! {
            r = rd.read(&mut rx) => match r {
                Ok(n) if n > 0 => {
                    raw.feed(&rx[..n]);
                    s.receive(&rx[..n], now());
                }
                _ => s.close(now()),
            },
            w = wr.write(&out), if !out.is_empty() => match w {
                Ok(n) => { out.drain(..n); }
                Err(_) => s.close(now()),
            },
            () = tokio::time::sleep_until(deadline) => {
                if tokio::time::Instant::now() >= end {
                    s.close(now());
                } else {
                    s.on_timeout(now());
                }
            }
        }
    }
}

/// One encoded frame.
pub fn frame(msg: Message<'_>, id: u64) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = msg.encode(id, &mut buf).expect("encode");
    buf.truncate(n);
    buf
}

/// A valid Hello frame (version range as given).
pub fn hello(name: &str, version_min: u16, version_max: u16) -> Vec<u8> {
    frame(
        Message::Hello(Hello {
            version_min,
            version_max,
            os: OsKind::Linux,
            agent_version: AgentVersion {
                major: 0,
                minor: 1,
                patch: 0,
            },
            capabilities: Capabilities::READ_CONTENT,
            max_frame_len: MAX_FRAME_LEN as u32,
            max_reads_in_flight: 4,
            guest_name: name,
        }),
        1,
    )
}

/// The default Hello.
pub fn hello_v1(name: &str) -> Vec<u8> {
    hello(name, PROTOCOL_VERSION, PROTOCOL_VERSION)
}

/// A FileEvent frame for `f` with request id `id`.
pub fn file_event(f: &FileSpec, id: u64) -> Vec<u8> {
    frame(
        Message::FileEvent(FileEvent {
            kind: EventKind::Open,
            process_id: 1,
            desired_access: 1,
            create_disposition: CreateDisposition::Open,
            file: f.identity,
            path: FilePath::Utf8(&f.path),
            content: thinagent_protocol::InlineContent::NONE,
        }),
        id,
    )
}

/// A frame the host sent, summarized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFrame {
    /// HelloAck.
    HelloAck,
    /// Verdict for request `id`.
    Verdict {
        /// FileEvent id.
        id: u64,
        /// Decision.
        decision: Decision,
        /// Threat.
        threat: String,
    },
    /// ReadRequest.
    ReadRequest {
        /// Read id.
        id: u64,
        /// Event id.
        event_id: u64,
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
    },
    /// Error.
    Error(ErrorCode),
    /// Goodbye.
    Goodbye(GoodbyeReason),
    /// Ping / Pong / anything else.
    Other,
}

/// Decodes every complete frame of `bytes`.
pub fn decode_all(bytes: &[u8]) -> Vec<HostFrame> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok(Decoded::Frame { frame, consumed }) = decode_frame(rest) {
        out.push(match frame.message {
            Message::HelloAck(_) => HostFrame::HelloAck,
            Message::Verdict(v) => HostFrame::Verdict {
                id: frame.request_id,
                decision: v.decision,
                threat: v.threat_name.to_string(),
            },
            Message::ReadRequest(r) => HostFrame::ReadRequest {
                id: frame.request_id,
                event_id: r.event_id,
                offset: r.offset,
                length: r.length,
            },
            Message::Error(e) => HostFrame::Error(e.code),
            Message::Goodbye(g) => HostFrame::Goodbye(g.reason),
            _ => HostFrame::Other,
        });
        rest = &rest[consumed..];
    }
    out
}

/// Reads until EOF (or `limit`); returns the bytes and whether EOF came.
pub async fn read_to_eof<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> (Vec<u8>, bool) {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let res = tokio::time::timeout(limit, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (all, res.is_ok())
}

/// Reads frames until `pred` holds for the frames so far (or `limit`).
pub async fn read_until<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
    pred: impl Fn(&[HostFrame]) -> bool,
) -> Vec<HostFrame> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(limit, async {
        loop {
            if pred(&decode_all(&all)) {
                return;
            }
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    decode_all(&all)
}

/// A running `thinagent-scanner` process; killed on drop.
pub struct ScannerProcess {
    /// The child.
    pub child: Child,
    /// The URLs it printed.
    pub urls: Vec<String>,
    /// Metrics address, if printed.
    pub metrics: Option<String>,
    /// Stderr log file.
    pub log: PathBuf,
}

impl ScannerProcess {
    /// Starts the binary with `args`, waits for its "listening on" lines.
    pub fn start(args: &[&str], log_dir: &Path, expect_urls: usize) -> Self {
        let log = log_dir.join(format!("scanner-{}.log", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_thinagent-scanner"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn thinagent-scanner");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut urls = Vec::new();
        let mut metrics = None;
        while urls.len() < expect_urls || (args.contains(&"--metrics") && metrics.is_none()) {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "scanner exited early; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            };
            if let Some(u) = line.strip_prefix("listening on ") {
                urls.push(u.to_string());
            } else if let Some(m) = line.strip_prefix("metrics on http://") {
                metrics = Some(m.trim_end_matches("/metrics").to_string());
            }
        }
        Self {
            child,
            urls,
            metrics,
            log,
        }
    }

    /// The URL with this scheme.
    pub fn url(&self, scheme: &str) -> &str {
        self.urls
            .iter()
            .find(|u| u.starts_with(scheme))
            .unwrap_or_else(|| panic!("no {scheme} listener in {:?}", self.urls))
    }

    /// Sends a signal with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ScannerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to a tcp:// or unix:// URL.
pub async fn connect(url: &str) -> Box<dyn Stream> {
    if let Some(a) = url.strip_prefix("tcp://") {
        Box::new(
            tokio::net::TcpStream::connect(a)
                .await
                .expect("tcp connect"),
        )
    } else if let Some(p) = url.strip_prefix("unix://") {
        Box::new(
            tokio::net::UnixStream::connect(p)
                .await
                .expect("unix connect"),
        )
    } else {
        panic!("unsupported url {url}")
    }
}

/// Connects to a tcp:// URL from the loopback address `local_ip`
/// (127.0.0.2, ...: every 127/8 address is this host, and the scanner sees
/// each as a different peer).
pub async fn connect_from(url: &str, local_ip: &str) -> Box<dyn Stream> {
    let addr: std::net::SocketAddr = url
        .strip_prefix("tcp://")
        .expect("a tcp:// URL")
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(local_ip.parse().unwrap(), 0))
        .expect("bind the local address");
    Box::new(socket.connect(addr).await.expect("tcp connect"))
}

/// Any connected stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// HTTP GET of /metrics at `addr` (host:port).
pub async fn scrape(addr: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Value of a metric line (`name{labels} value`), 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The scanner service running in this process, on the test's runtime.
pub struct Running {
    /// Where it listens.
    pub urls: Vec<String>,
    /// Its handle (metrics, reloads).
    pub handle: thinagent_scanner::service::ServiceHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Builds the service from `config` and runs it until [`shutdown`](Self::shutdown).
    pub async fn start(config: thinagent_scanner::config::Config) -> Self {
        let service = thinagent_scanner::service::Service::build(&config)
            .await
            .expect("service builds");
        let urls = service.urls().iter().map(ToString::to_string).collect();
        let handle = service.handle();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run(
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(3),
        ));
        Self {
            urls,
            handle,
            stop: Some(tx),
            task,
        }
    }

    /// The URL with this scheme.
    pub fn url(&self, scheme: &str) -> &str {
        self.urls.iter().find(|u| u.starts_with(scheme)).unwrap()
    }

    /// Its metrics, as `/metrics` would serve them.
    pub fn metrics(&self) -> String {
        self.handle.metrics().encode()
    }

    /// Stops it (sessions get `Goodbye(Shutdown)`) and waits.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// A revocation list signed by `issuer` listing the certificates in the
/// PEM files `revoked`.
pub fn revocation_list(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    revoked: &[&Path],
) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let revoked_certs = revoked
        .iter()
        .map(|path| {
            let der = CertificateDer::from_pem_file(path).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
            rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }
        })
        .collect();
    rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2026, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// Test PKI made at test time: a guest CA, the scanner's certificate (for
/// 127.0.0.1), guest certificates, and a rogue CA nobody configured.
pub struct Pki {
    /// Where the files are.
    pub dir: tempfile::TempDir,
    /// The guest CA.
    pub ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// A CA and the scanner's certificate.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Self::make_ca("ThinAgent test guest CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let pki = Self { dir, ca };
        pki.leaf("server", "thinagent-scanner", true, &pki.ca);
        pki
    }

    /// A self-signed CA named `name`.
    pub fn make_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
    }

    /// Writes `NAME.crt` and `NAME.key`: a certificate for `cn` signed by
    /// `issuer` (a server one for 127.0.0.1, or a client one).
    pub fn leaf(
        &self,
        name: &str,
        cn: &str,
        server: bool,
        issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    ) -> (PathBuf, PathBuf) {
        let sans = if server {
            vec!["127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let crt = self.path(&format!("{name}.crt"));
        let pem = self.path(&format!("{name}.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        (crt, pem)
    }

    /// A file of the PKI.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The scanner's `[tls]` section.
    pub fn server_config(&self) -> thinagent_scanner::tls::TlsConfig {
        thinagent_scanner::tls::TlsConfig {
            cert: self.path("server.crt"),
            key: self.path("server.key"),
            client_ca: self.path("ca.pem"),
            crl: None,
        }
    }

    /// A client configuration for the guest certificate `name`.
    pub fn client(&self, name: &str) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let chain =
            rustls::pki_types::CertificateDer::pem_file_iter(self.path(&format!("{name}.crt")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key")))
                .unwrap();
        let config = self
            .client_builder()
            .with_client_auth_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    /// A client configuration that trusts the scanner, before choosing a
    /// certificate.
    pub fn client_builder(
        &self,
    ) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
    }
}

/// Connects to a tls:// URL with a guest's client configuration.
pub async fn tls_connect(
    url: &str,
    client: &Arc<rustls::ClientConfig>,
) -> std::io::Result<impl Stream> {
    thinagent_scanner::listen::connect_with_tls(&url.parse().unwrap(), Some(client)).await
}
