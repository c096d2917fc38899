//! Listener URLs and the sockets behind them.
//!
//! `vsock://any:PORT` (or `vsock://CID:PORT`), `tcp://HOST:PORT`,
//! `tls://HOST:PORT`, `unix:///path`. Every accepted connection comes with a
//! [`GuestId`], the transport's word on who connected: on vsock the peer's
//! CID, on TLS the client certificate's subject, on Unix the peer's uid, on
//! TCP the address. `tcp://` is refused beyond loopback
//! ([`ListenUrl::unauthenticated_beyond_loopback`]): use `tls://` there.
//!
//! vsock exists only on Linux and Unix sockets only on Unix: elsewhere (Windows)
//! such a URL still parses, but binding or connecting it fails with
//! [`BindError::Unsupported`] / an [`io::ErrorKind::Unsupported`] error that
//! says to use `tcp://` (see [`transport_unsupported`]).

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
#[cfg(unix)]
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::connection::GuestId;

/// `VMADDR_CID_ANY`.
pub const VMADDR_CID_ANY: u32 = u32::MAX;

/// A parsed listener (or client) address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenUrl {
    /// AF_VSOCK: CID ([`VMADDR_CID_ANY`] for `any`) and port.
    Vsock {
        /// CID to bind (or connect to).
        cid: u32,
        /// Port.
        port: u32,
    },
    /// TCP.
    Tcp(SocketAddr),
    /// TCP with TLS; guests must present a client certificate.
    Tls(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

/// Why a URL was rejected.
#[derive(Debug, thiserror::Error)]
#[error(
    "{url:?}: {why} (expected vsock://any:PORT, vsock://CID:PORT, tcp://HOST:PORT, tls://HOST:PORT or unix:///path)"
)]
pub struct UrlError {
    url: String,
    why: String,
}

impl FromStr for ListenUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let err = |why: &str| UrlError {
            url: s.to_string(),
            why: why.to_string(),
        };
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(err("no scheme"));
        };
        match scheme {
            "vsock" => {
                let (cid, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
                let cid = match cid {
                    "any" | "-1" => VMADDR_CID_ANY,
                    c => c
                        .parse()
                        .map_err(|_| err("the CID must be `any` or a number"))?,
                };
                let port = port
                    .parse()
                    .map_err(|_| err("the port must be a number 0..=4294967295"))?;
                Ok(Self::Vsock { cid, port })
            }
            "tcp" | "tls" => {
                let addr = rest
                    .to_socket_addrs()
                    .map_err(|e| err(&format!("bad TCP address: {e}")))?
                    .next()
                    .ok_or_else(|| err("the host name resolves to nothing"))?;
                Ok(if scheme == "tls" {
                    Self::Tls(addr)
                } else {
                    Self::Tcp(addr)
                })
            }
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(err("the socket path must be absolute: unix:///path"));
                }
                Ok(Self::Unix(PathBuf::from(rest)))
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for ListenUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } if *cid == VMADDR_CID_ANY => write!(f, "vsock://any:{port}"),
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
            Self::Tls(a) => write!(f, "tls://{a}"),
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// Why a `tcp://` listener beyond loopback is refused.
pub const TCP_NEEDS_TLS: &str = "plain TCP beyond loopback cannot tell one guest from another \
     (any host can claim any address and name); listen on tls://HOST:PORT with a [tls] section \
     (cert, key, client_ca: guests present certificates the CA signed), or on a loopback address";

impl ListenUrl {
    /// `Some(why)` for a plain `tcp://` listener on an address that is not
    /// loopback ([`TCP_NEEDS_TLS`]): its peers prove nothing about who they
    /// are. Loopback TCP (labs, tests) and every other transport pass.
    pub fn unauthenticated_beyond_loopback(&self) -> Option<&'static str> {
        match self {
            Self::Tcp(addr) if !addr.ip().is_loopback() => Some(TCP_NEEDS_TLS),
            _ => None,
        }
    }

    /// The embedded default: vsock on every CID and loopback TCP, same port.
    pub fn defaults(port: u32) -> Vec<Self> {
        vec![
            Self::Vsock {
                cid: VMADDR_CID_ANY,
                port,
            },
            Self::Tcp(SocketAddr::from(([127, 0, 0, 1], port as u16))),
        ]
    }
}

/// Why vsock cannot be used on this OS (the text of [`BindError::Unsupported`]).
pub const VSOCK_NEEDS_LINUX: &str =
    "vsock:// needs Linux (AF_VSOCK); use tcp://HOST:PORT on this OS";
/// Why a Unix socket cannot be used on this OS.
pub const UNIX_NEEDS_UNIX: &str =
    "unix:// needs a Unix OS (Linux, macOS, BSD); use tcp://HOST:PORT on this OS";

/// Why `url`'s transport does not exist on the OS this was built for
/// ([`VSOCK_NEEDS_LINUX`] or [`UNIX_NEEDS_UNIX`]), or `None` when it does
/// (always `None` on Linux).
pub fn transport_unsupported(url: &ListenUrl) -> Option<&'static str> {
    match url {
        ListenUrl::Vsock { .. } if !cfg!(target_os = "linux") => Some(VSOCK_NEEDS_LINUX),
        ListenUrl::Unix(_) if !cfg!(unix) => Some(UNIX_NEEDS_UNIX),
        _ => None,
    }
}

/// The error [`connect`] and [`Listener::bind`] give for a transport this OS lacks.
fn unsupported_io_error(url: &ListenUrl, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("{url}: {why}"))
}

/// A connected byte stream of any transport.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// A boxed connection.
pub type BoxConn = Pin<Box<dyn Conn>>;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// AF_VSOCK (Linux only).
    #[cfg(target_os = "linux")]
    Vsock(tokio_vsock::VsockListener, ListenUrl),
    /// TCP.
    Tcp(tokio::net::TcpListener, ListenUrl),
    /// TCP with TLS and client certificates.
    Tls(tokio::net::TcpListener, crate::tls::TlsServers, ListenUrl),
    /// Unix; the path is removed on drop (Unix only).
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, UnixPathGuard, ListenUrl),
}

/// Removes a Unix socket file when the listener goes away.
#[derive(Debug)]
pub struct UnixPathGuard(PathBuf);

impl Drop for UnixPathGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Why binding failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The kernel has no AF_VSOCK (module `vsock`/`vhost_vsock` not loaded).
    #[error(
        "{url}: this kernel has no AF_VSOCK ({source}); load vhost_vsock or listen on tcp/unix"
    )]
    NoVsock {
        /// The URL.
        url: ListenUrl,
        /// The OS error.
        source: io::Error,
    },
    /// A live process already serves this Unix socket.
    #[error("{url}: another process is listening on this socket; stop it or choose another path")]
    UnixInUse {
        /// The URL.
        url: ListenUrl,
    },
    /// The Unix path exists and is not a socket: never removed.
    #[error("{url}: the path exists and is not a socket; refusing to remove it")]
    NotASocket {
        /// The URL.
        url: ListenUrl,
    },
    /// The transport does not exist on this OS (vsock off Linux, Unix
    /// sockets on Windows): [`VSOCK_NEEDS_LINUX`] / [`UNIX_NEEDS_UNIX`].
    #[error("{url}: {why}")]
    Unsupported {
        /// The URL.
        url: ListenUrl,
        /// What is missing and what to use instead.
        why: &'static str,
    },
    /// Plain TCP on an address other than loopback ([`TCP_NEEDS_TLS`]).
    #[error("{url}: {why}")]
    Unauthenticated {
        /// The URL.
        url: ListenUrl,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// A `tls://` listener without a `[tls]` section.
    #[error(
        "{url}: tls:// needs a [tls] section with cert, key and client_ca (the CA that signs guest certificates)"
    )]
    NoTlsConfig {
        /// The URL.
        url: ListenUrl,
    },
    /// Any other bind error.
    #[error("{url}: cannot listen: {source}")]
    Io {
        /// The URL.
        url: ListenUrl,
        /// The OS error.
        source: io::Error,
    },
}

/// Removes `path` if it is a socket nobody listens on (left over by a crash).
#[cfg(unix)]
fn remove_stale_socket(path: &Path, url: &ListenUrl) -> Result<(), BindError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Io {
                url: url.clone(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket { url: url.clone() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(BindError::UnixInUse { url: url.clone() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale Unix socket");
            std::fs::remove_file(path).map_err(|source| BindError::Io {
                url: url.clone(),
                source,
            })
        }
        Err(source) => Err(BindError::Io {
            url: url.clone(),
            source,
        }),
    }
}

#[cfg(target_os = "linux")]
fn no_vsock(e: &io::Error) -> bool {
    // EAFNOSUPPORT (97) / ENODEV (19) / EADDRNOTAVAIL when no transport.
    matches!(e.raw_os_error(), Some(97) | Some(19) | Some(99))
}

fn bind_tcp(addr: &SocketAddr, url: &ListenUrl) -> Result<tokio::net::TcpListener, BindError> {
    let io_err = |source| BindError::Io {
        url: url.clone(),
        source,
    };
    let std = std::net::TcpListener::bind(addr).map_err(io_err)?;
    std.set_nonblocking(true).map_err(io_err)?;
    tokio::net::TcpListener::from_std(std).map_err(io_err)
}

impl Listener {
    /// Binds `url` (a `tls://` URL needs [`Listener::bind_with_tls`]).
    pub fn bind(url: &ListenUrl) -> Result<Self, BindError> {
        Self::bind_with_tls(url, None)
    }

    /// Binds `url`; `tls` is what `tls://` listeners use (each handshake
    /// the newest [`crate::tls::TlsServer`] it holds).
    pub fn bind_with_tls(
        url: &ListenUrl,
        tls: Option<&crate::tls::TlsServers>,
    ) -> Result<Self, BindError> {
        let io_err = |source| BindError::Io {
            url: url.clone(),
            source,
        };
        if let Some(why) = transport_unsupported(url) {
            return Err(BindError::Unsupported {
                url: url.clone(),
                why,
            });
        }
        if let Some(why) = url.unauthenticated_beyond_loopback() {
            return Err(BindError::Unauthenticated {
                url: url.clone(),
                why,
            });
        }
        match url {
            #[cfg(target_os = "linux")]
            ListenUrl::Vsock { cid, port } => {
                let addr = tokio_vsock::VsockAddr::new(*cid, *port);
                match tokio_vsock::VsockListener::bind(addr) {
                    Ok(l) => Ok(Self::Vsock(l, url.clone())),
                    Err(source) if no_vsock(&source) => Err(BindError::NoVsock {
                        url: url.clone(),
                        source,
                    }),
                    Err(source) => Err(io_err(source)),
                }
            }
            ListenUrl::Tcp(addr) => {
                let l = bind_tcp(addr, url)?;
                let bound = l.local_addr().map_err(io_err)?;
                Ok(Self::Tcp(l, ListenUrl::Tcp(bound)))
            }
            ListenUrl::Tls(addr) => {
                let Some(tls) = tls else {
                    return Err(BindError::NoTlsConfig { url: url.clone() });
                };
                let l = bind_tcp(addr, url)?;
                let bound = l.local_addr().map_err(io_err)?;
                Ok(Self::Tls(l, tls.clone(), ListenUrl::Tls(bound)))
            }
            #[cfg(unix)]
            ListenUrl::Unix(path) => {
                remove_stale_socket(path, url)?;
                let l = tokio::net::UnixListener::bind(path).map_err(io_err)?;
                Ok(Self::Unix(l, UnixPathGuard(path.clone()), url.clone()))
            }
            #[allow(unreachable_patterns)] // only reachable where a transport is missing
            other => Err(BindError::Unsupported {
                url: other.clone(),
                why: transport_unsupported(other).unwrap_or("transport not built in"),
            }),
        }
    }

    /// The bound address (a TCP port 0 is resolved to the real port).
    pub fn url(&self) -> &ListenUrl {
        match self {
            #[cfg(target_os = "linux")]
            Self::Vsock(_, u) => u,
            Self::Tcp(_, u) => u,
            Self::Tls(_, _, u) => u,
            #[cfg(unix)]
            Self::Unix(_, _, u) => u,
        }
    }

    /// Waits for the next connection. A TLS connection is returned before
    /// its handshake ([`Accepted::establish`] runs it), so that one slow
    /// peer never holds up the accept loop.
    pub async fn accept(&self) -> io::Result<Accepted> {
        match self {
            #[cfg(target_os = "linux")]
            Self::Vsock(l, _) => {
                let (s, a) = l.accept().await?;
                Ok(Accepted::ready(
                    Box::pin(s),
                    GuestId::Vsock {
                        cid: a.cid(),
                        port: a.port(),
                    },
                ))
            }
            Self::Tcp(l, _) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Accepted::ready(quiet(s.into_std()?)?, GuestId::Tcp(a)))
            }
            Self::Tls(l, tls, _) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                let config = std::sync::Arc::clone(&tls.borrow().config);
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                Ok(Accepted {
                    stream: Pending::Tls(s, acceptor, tls.clone(), a),
                    guest: GuestId::Tcp(a),
                })
            }
            #[cfg(unix)]
            Self::Unix(l, guard, _) => {
                let (s, _) = l.accept().await?;
                let cred = s.peer_cred().ok();
                Ok(Accepted::ready(
                    quiet(s.into_std()?)?,
                    GuestId::Unix {
                        listener: guard.0.clone(),
                        uid: cred.map(|c| c.uid()),
                        pid: cred.and_then(|c| c.pid()),
                    },
                ))
            }
        }
    }
}

/// An accepted Unix or TCP connection, registered for readability only
/// (`thinagent_quiet_socket`): no wakeup of the runtime each time the guest
/// reads a verdict.
#[cfg(unix)]
fn quiet(s: impl Into<std::os::fd::OwnedFd>) -> io::Result<BoxConn> {
    Ok(Box::pin(thinagent_quiet_socket::QuietSocket::new(
        s.into(),
    )?))
}

/// Elsewhere the tokio stream as it is.
#[cfg(not(unix))]
fn quiet(s: std::net::TcpStream) -> io::Result<BoxConn> {
    Ok(Box::pin(tokio::net::TcpStream::from_std(s)?))
}

enum Pending {
    Ready(BoxConn),
    Tls(
        tokio::net::TcpStream,
        tokio_rustls::TlsAcceptor,
        crate::tls::TlsServers,
        SocketAddr,
    ),
}

/// An accepted connection whose transport may still have to authenticate
/// the peer (TLS).
pub struct Accepted {
    stream: Pending,
    guest: GuestId,
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("guest", &self.guest)
            .finish_non_exhaustive()
    }
}

/// Why a TLS handshake did not give a guest identity.
#[derive(Debug, thiserror::Error)]
pub enum EstablishError {
    /// The TLS handshake failed (no or untrusted client certificate, not
    /// TLS at all, connection closed).
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The verified client certificate has no subject to identify it by.
    #[error("the client certificate has an empty or unreadable subject")]
    NoSubject,
}

impl Accepted {
    fn ready(stream: BoxConn, guest: GuestId) -> Self {
        Self {
            stream: Pending::Ready(stream),
            guest,
        }
    }

    /// Who connected, as far as known before [`establish`](Self::establish):
    /// for TLS, the TCP address (its certificate is not checked yet).
    pub fn guest(&self) -> &GuestId {
        &self.guest
    }

    /// Runs the TLS handshake if there is one (the caller bounds it in
    /// time) and returns the stream with the guest's final identity: for
    /// TLS, [`GuestId::Tls`] with the verified certificate's subject, and
    /// the certificates it presented (to check again at a reload).
    pub async fn establish(self) -> Result<Established, EstablishError> {
        match self.stream {
            Pending::Ready(stream) => Ok(Established {
                stream,
                guest: self.guest,
                tls: None,
            }),
            Pending::Tls(tcp, acceptor, servers, addr) => {
                let tls = acceptor
                    .accept(tcp)
                    .await
                    .map_err(EstablishError::Handshake)?;
                let chain: Vec<_> = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .unwrap_or_default()
                    .iter()
                    .map(|c| c.clone().into_owned())
                    .collect();
                let subject = chain
                    .first()
                    .and_then(crate::tls::subject_of)
                    .ok_or(EstablishError::NoSubject)?;
                Ok(Established {
                    stream: Box::pin(tls),
                    guest: GuestId::Tls {
                        addr,
                        subject: std::sync::Arc::from(subject),
                    },
                    tls: Some(crate::tls::TlsPeer::new(chain, servers)),
                })
            }
        }
    }
}

/// A connection whose peer is known: [`Accepted::establish`]'s result.
pub struct Established {
    /// The stream (TLS decrypted).
    pub stream: BoxConn,
    /// Who it is.
    pub guest: GuestId,
    /// For a TLS guest, its certificates as verified.
    pub tls: Option<crate::tls::TlsPeer>,
}

impl fmt::Debug for Established {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Established")
            .field("guest", &self.guest)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Connects to `url` as a client (used by `thinagent-diag scan` and tests);
/// a `tls://` URL needs [`connect_with_tls`].
pub async fn connect(url: &ListenUrl) -> io::Result<BoxConn> {
    connect_with_tls(url, None).await
}

/// Connects to `url`; a `tls://` URL uses `tls` (a client configuration
/// with the guest's certificate; `thinagent-diag scan --tls-cert` builds
/// one from PEM files) and checks the scanner's certificate against the
/// URL's IP address.
pub async fn connect_with_tls(
    url: &ListenUrl,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> io::Result<BoxConn> {
    if let Some(why) = transport_unsupported(url) {
        return Err(unsupported_io_error(url, why));
    }
    Ok(match url {
        ListenUrl::Tls(a) => {
            let Some(tls) = tls else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{url}: a tls:// scanner needs a client certificate (give --tls-cert, --tls-key and --tls-ca)"
                    ),
                ));
            };
            let s = tokio::net::TcpStream::connect(a).await?;
            let _ = s.set_nodelay(true);
            let name = rustls::pki_types::ServerName::IpAddress(a.ip().into());
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(tls));
            Box::pin(connector.connect(name, s).await?)
        }
        #[cfg(target_os = "linux")]
        ListenUrl::Vsock { cid, port } => Box::pin(
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
        ),
        ListenUrl::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a).await?;
            let _ = s.set_nodelay(true);
            Box::pin(s)
        }
        #[cfg(unix)]
        ListenUrl::Unix(p) => Box::pin(tokio::net::UnixStream::connect(p).await?),
        #[allow(unreachable_patterns)] // only reachable where a transport is missing
        other => {
            return Err(unsupported_io_error(
                other,
                transport_unsupported(other).unwrap_or("transport not built in"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in [
            "vsock://any:5317",
            "vsock://2:1024",
            "tcp://127.0.0.1:5317",
            "tcp://[::1]:80",
            "unix:///run/thinagent.sock",
        ] {
            assert_eq!(s.parse::<ListenUrl>().unwrap().to_string(), s);
        }
        assert_eq!(
            "vsock://-1:7".parse::<ListenUrl>().unwrap(),
            ListenUrl::Vsock {
                cid: VMADDR_CID_ANY,
                port: 7
            }
        );
        for bad in [
            "5317",
            "http://x:1",
            "vsock://any",
            "vsock://foo:1",
            "tcp://nope",
            "unix://rel/path",
        ] {
            assert!(bad.parse::<ListenUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_transport_errors_say_what_to_use() {
        let vsock = ListenUrl::Vsock {
            cid: VMADDR_CID_ANY,
            port: 5317,
        };
        let unix = ListenUrl::Unix("/run/t.sock".into());
        let e = BindError::Unsupported {
            url: vsock.clone(),
            why: VSOCK_NEEDS_LINUX,
        };
        assert_eq!(
            e.to_string(),
            "vsock://any:5317: vsock:// needs Linux (AF_VSOCK); use tcp://HOST:PORT on this OS"
        );
        assert!(UNIX_NEEDS_UNIX.starts_with("unix:// needs a Unix OS"));
        assert!(UNIX_NEEDS_UNIX.ends_with("use tcp://HOST:PORT on this OS"));
        let io = unsupported_io_error(&unix, UNIX_NEEDS_UNIX);
        assert_eq!(io.kind(), io::ErrorKind::Unsupported);
        assert!(
            io.to_string()
                .starts_with("unix:///run/t.sock: unix:// needs")
        );
        let tcp: ListenUrl = "tcp://127.0.0.1:1".parse().unwrap();
        assert_eq!(transport_unsupported(&tcp), None);
        if cfg!(target_os = "linux") {
            assert_eq!(transport_unsupported(&vsock), None);
            assert_eq!(transport_unsupported(&unix), None);
        } else {
            assert_eq!(transport_unsupported(&vsock), Some(VSOCK_NEEDS_LINUX));
            assert_eq!(
                transport_unsupported(&unix),
                (!cfg!(unix)).then_some(UNIX_NEEDS_UNIX)
            );
            assert!(matches!(
                Listener::bind(&vsock),
                Err(BindError::Unsupported { .. })
            ));
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn unix_stale_socket_is_replaced_live_one_refused_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let url = ListenUrl::Unix(path.clone());
        // A stale socket: bound then dropped without unlinking.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = Listener::bind(&url).unwrap();
        // Now a live one: a second bind must refuse and leave it alone.
        assert!(matches!(
            Listener::bind(&url),
            Err(BindError::UnixInUse { .. })
        ));
        assert!(path.exists());
        drop(live);
        assert!(!path.exists());
        // A regular file is never removed.
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(
            Listener::bind(&url),
            Err(BindError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[tokio::test]
    async fn tcp_port_zero_reports_real_port_and_accepts() {
        let l = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap();
        let url = l.url().clone();
        assert!(!url.to_string().ends_with(":0"));
        let (c, a) = tokio::join!(connect(&url), l.accept());
        c.unwrap();
        assert!(matches!(a.unwrap().guest(), GuestId::Tcp(_)));
    }
}
