//! Where the scanner is: `vsock://CID:PORT`, `tcp://HOST:PORT`,
//! `tls://HOST:PORT` (with a client certificate: [`TlsClient`]),
//! `unix:///path`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use thinagent_quiet_socket::QuietSocket;

/// The client certificate and trusted CA a `tls://` scanner is reached
/// with ([`thinagent_guest_tls::client_config`]). Two are equal when they
/// are the same configuration.
#[derive(Clone, Debug)]
pub struct TlsClient(pub Arc<thinagent_guest_tls::rustls::ClientConfig>);

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TlsClient {}

/// A scanner address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectUrl {
    /// AF_VSOCK: `vsock://2:5317` reaches the hypervisor host from a VM.
    Vsock {
        /// Context id (2 = the host).
        cid: u32,
        /// Port.
        port: u32,
    },
    /// TCP, `HOST:PORT` as given (resolved at each connect).
    Tcp(String),
    /// TLS over TCP, `HOST:PORT` as given; the scanner's certificate must
    /// name HOST. `client` is set from `--tls-cert`/`--tls-key`/`--tls-ca`
    /// ([`ConnectUrl::with_tls`]); without it a connect fails saying so.
    Tls {
        /// `HOST:PORT`.
        addr: String,
        /// This guest's certificate and the scanner's CA.
        client: Option<TlsClient>,
    },
    /// A Unix stream socket.
    Unix(PathBuf),
}

/// A URL that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "--connect {url:?}: {why} (expected vsock://CID:PORT, tcp://HOST:PORT, tls://HOST:PORT or unix:///path)"
)]
pub struct UrlError {
    url: String,
    why: &'static str,
}

impl FromStr for ConnectUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let err = |why| UrlError {
            url: url.to_string(),
            why,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| err("no scheme"))?;
        match scheme {
            "vsock" => {
                let (cid, port) = rest.rsplit_once(':').ok_or_else(|| err("no port"))?;
                let cid = match cid {
                    "host" => 2,
                    "local" => 1,
                    c => c.parse().map_err(|_| err("CID is not a number"))?,
                };
                let port = port.parse().map_err(|_| err("port is not a number"))?;
                Ok(ConnectUrl::Vsock { cid, port })
            }
            "tcp" | "tls" => {
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("no port"))?;
                if host.is_empty() {
                    return Err(err("no host"));
                }
                port.parse::<u16>()
                    .map_err(|_| err("port is not a number 0-65535"))?;
                Ok(if scheme == "tls" {
                    ConnectUrl::Tls {
                        addr: rest.to_string(),
                        client: None,
                    }
                } else {
                    ConnectUrl::Tcp(rest.to_string())
                })
            }
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(err("the socket path must be absolute (unix:///run/x.sock)"));
                }
                Ok(ConnectUrl::Unix(PathBuf::from(rest)))
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for ConnectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectUrl::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            ConnectUrl::Tcp(a) => write!(f, "tcp://{a}"),
            ConnectUrl::Tls { addr, .. } => write!(f, "tls://{addr}"),
            ConnectUrl::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// Any connected byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connection and, on Unix sockets, the peer's pid (`SO_PEERCRED`).
pub struct Connection {
    /// The stream.
    pub stream: Box<dyn Stream>,
    /// The scanner's pid, when the transport tells it.
    pub peer_pid: Option<u32>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer_pid", &self.peer_pid)
            .finish_non_exhaustive()
    }
}

impl ConnectUrl {
    /// A `tls://` URL with its client configuration (other URLs unchanged).
    #[must_use]
    pub fn with_tls(self, tls: TlsClient) -> Self {
        match self {
            ConnectUrl::Tls { addr, .. } => ConnectUrl::Tls {
                addr,
                client: Some(tls),
            },
            other => other,
        }
    }

    /// Connects once.
    pub async fn connect(&self) -> io::Result<Connection> {
        match self {
            ConnectUrl::Vsock { cid, port } => {
                let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await?;
                Ok(Connection {
                    stream: Box::new(s),
                    peer_pid: None,
                })
            }
            ConnectUrl::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(Connection {
                    stream: Box::new(QuietSocket::new(s.into_std()?.into())?),
                    peer_pid: None,
                })
            }
            ConnectUrl::Tls { addr, client } => {
                let Some(TlsClient(config)) = client else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("tls://{addr}: give --tls-cert, --tls-key and --tls-ca"),
                    ));
                };
                let (host, _) = addr.rsplit_once(':').unwrap_or((addr, ""));
                let resolved = tokio::net::lookup_host(addr.as_str())
                    .await?
                    .next()
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{addr}: resolves to nothing"),
                        )
                    })?;
                let s = thinagent_guest_tls::connect(host, resolved, config).await?;
                Ok(Connection {
                    stream: Box::new(s),
                    peer_pid: None,
                })
            }
            ConnectUrl::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path).await?;
                let peer_pid = s
                    .peer_cred()
                    .ok()
                    .and_then(|c| c.pid())
                    .and_then(|p| u32::try_from(p).ok());
                Ok(Connection {
                    stream: Box::new(QuietSocket::new(s.into_std()?.into())?),
                    peer_pid,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_schemes() {
        assert_eq!(
            "vsock://2:5317".parse::<ConnectUrl>().unwrap(),
            ConnectUrl::Vsock { cid: 2, port: 5317 }
        );
        assert_eq!(
            "vsock://host:9".parse::<ConnectUrl>().unwrap(),
            ConnectUrl::Vsock { cid: 2, port: 9 }
        );
        assert_eq!(
            "tcp://127.0.0.1:80".parse::<ConnectUrl>().unwrap(),
            ConnectUrl::Tcp("127.0.0.1:80".into())
        );
        assert_eq!(
            "unix:///run/s.sock".parse::<ConnectUrl>().unwrap(),
            ConnectUrl::Unix("/run/s.sock".into())
        );
        assert_eq!(
            "tls://scanner.lan:5318".parse::<ConnectUrl>().unwrap(),
            ConnectUrl::Tls {
                addr: "scanner.lan:5318".into(),
                client: None
            }
        );
        assert_eq!(
            "unix:///run/s.sock"
                .parse::<ConnectUrl>()
                .unwrap()
                .to_string(),
            "unix:///run/s.sock"
        );
    }

    #[test]
    fn rejects_bad_urls_saying_why() {
        for (url, why) in [
            ("127.0.0.1:80", "no scheme"),
            ("http://x:1", "unknown scheme"),
            ("tcp://x", "no port"),
            ("tcp://x:99999", "0-65535"),
            ("vsock://x:1", "CID"),
            ("unix://rel.sock", "absolute"),
        ] {
            let e = url.parse::<ConnectUrl>().unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
