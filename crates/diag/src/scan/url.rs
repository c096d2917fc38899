//! The `--connect` URL: `tcp://HOST:PORT`, `tls://HOST:PORT`, `unix:///path`,
//! `vsock://CID:PORT`.
//!
//! vsock exists only on Linux and Unix sockets only on Unix: elsewhere
//! (Windows) such a URL is refused when parsed, with [`transport_unsupported`]'s
//! text, which says to use `tcp://`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncRead, AsyncWrite};

/// Where the scanner listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanUrl {
    /// TCP.
    Tcp(SocketAddr),
    /// TCP with TLS (a client certificate is required: `--tls-cert`,
    /// `--tls-key`, `--tls-ca`); `host` as given, which the scanner's
    /// certificate must name.
    Tls {
        /// The host part of the URL.
        host: String,
        /// Where it resolved to.
        addr: SocketAddr,
    },
    /// Unix stream socket.
    Unix(PathBuf),
    /// AF_VSOCK CID and port (from a guest: CID 2 is the host; 1 is loopback).
    Vsock(u32, u32),
}

/// Why vsock cannot be used on this OS.
pub const VSOCK_NEEDS_LINUX: &str =
    "vsock:// needs Linux (AF_VSOCK); use tcp://HOST:PORT on this OS";
/// Why a Unix socket cannot be used on this OS.
pub const UNIX_NEEDS_UNIX: &str =
    "unix:// needs a Unix OS (Linux, macOS, BSD); use tcp://HOST:PORT on this OS";

/// Why `url`'s transport does not exist on the OS this was built for, or
/// `None` when it does (always `None` on Linux).
pub fn transport_unsupported(url: &ScanUrl) -> Option<&'static str> {
    match url {
        ScanUrl::Vsock(..) if !cfg!(target_os = "linux") => Some(VSOCK_NEEDS_LINUX),
        ScanUrl::Unix(_) if !cfg!(unix) => Some(UNIX_NEEDS_UNIX),
        _ => None,
    }
}

impl FromStr for ScanUrl {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let url = Self::parse_any_os(s)?;
        if let Some(why) = transport_unsupported(&url) {
            bail!("--connect {s:?}: {why}");
        }
        Ok(url)
    }
}

impl ScanUrl {
    /// Parses every scheme, whether or not this OS has the transport.
    fn parse_any_os(s: &str) -> Result<Self> {
        let hint = "expected tcp://HOST:PORT, tls://HOST:PORT, unix:///path or vsock://CID:PORT";
        let Some((scheme, rest)) = s.split_once("://") else {
            bail!("--connect {s:?}: no scheme; {hint}");
        };
        match scheme {
            "tcp" | "tls" => {
                let addr = rest
                    .to_socket_addrs()
                    .with_context(|| format!("--connect {s:?}: bad TCP address"))?
                    .next()
                    .ok_or_else(|| anyhow!("--connect {s:?}: the host name resolves to nothing"))?;
                Ok(match scheme {
                    "tls" => Self::Tls {
                        host: rest.rsplit_once(':').map_or(rest, |(h, _)| h).to_string(),
                        addr,
                    },
                    _ => Self::Tcp(addr),
                })
            }
            "unix" if rest.starts_with('/') => Ok(Self::Unix(PathBuf::from(rest))),
            "unix" => bail!("--connect {s:?}: the socket path must be absolute (unix:///path)"),
            "vsock" => {
                let (cid, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| anyhow!("--connect {s:?}: missing :PORT; {hint}"))?;
                let cid = cid
                    .parse()
                    .with_context(|| format!("--connect {s:?}: the CID must be a number"))?;
                let port = port
                    .parse()
                    .with_context(|| format!("--connect {s:?}: the port must be a number"))?;
                Ok(Self::Vsock(cid, port))
            }
            _ => bail!("--connect {s:?}: unknown scheme; {hint}"),
        }
    }
}

impl From<SocketAddr> for ScanUrl {
    fn from(a: SocketAddr) -> Self {
        Self::Tcp(a)
    }
}

/// A connected stream of any transport.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

impl ScanUrl {
    /// Connects; a `tls://` URL uses `tls` (see
    /// [`thinagent_guest_tls::client_config`]) and checks the scanner's
    /// certificate against the URL's host.
    pub async fn connect(
        &self,
        tls: Option<&std::sync::Arc<thinagent_guest_tls::rustls::ClientConfig>>,
    ) -> std::io::Result<Pin<Box<dyn Stream>>> {
        if let Some(why) = transport_unsupported(self) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("{self}: {why}"),
            ));
        }
        Ok(match self {
            Self::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                let _ = s.set_nodelay(true);
                #[cfg(unix)]
                let s = thinagent_quiet_socket::QuietSocket::new(s.into_std()?.into())?;
                Box::pin(s)
            }
            Self::Tls { host, addr } => {
                let Some(tls) = tls else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "{self}: a tls:// scanner needs --tls-cert, --tls-key and --tls-ca"
                        ),
                    ));
                };
                Box::pin(thinagent_guest_tls::connect(host, *addr, tls).await?)
            }
            #[cfg(unix)]
            Self::Unix(p) => Box::pin(thinagent_quiet_socket::QuietSocket::new(
                tokio::net::UnixStream::connect(p).await?.into_std()?.into(),
            )?),
            #[cfg(target_os = "linux")]
            Self::Vsock(cid, port) => Box::pin(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
            ),
            #[allow(unreachable_patterns)] // only reachable where a transport is missing
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    format!("{other}: transport not built in"),
                ));
            }
        })
    }
}

impl std::fmt::Display for ScanUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp://{a}"),
            Self::Tls { addr, .. } => write!(f, "tls://{addr}"),
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Vsock(c, p) => write!(f, "vsock://{c}:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            "tcp://127.0.0.1:5317".parse::<ScanUrl>().unwrap(),
            ScanUrl::Tcp(([127, 0, 0, 1], 5317).into())
        );
        assert_eq!(
            ScanUrl::parse_any_os("unix:///run/x.sock").unwrap(),
            ScanUrl::Unix("/run/x.sock".into())
        );
        assert_eq!(
            ScanUrl::parse_any_os("vsock://2:5317").unwrap(),
            ScanUrl::Vsock(2, 5317)
        );
        for bad in ["127.0.0.1:1", "unix://rel", "vsock://any", "ftp://x:1"] {
            assert!(bad.parse::<ScanUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn transports_this_os_lacks_are_refused_with_what_to_use() {
        assert!(VSOCK_NEEDS_LINUX.starts_with("vsock:// needs Linux"));
        assert!(UNIX_NEEDS_UNIX.starts_with("unix:// needs a Unix OS"));
        for why in [VSOCK_NEEDS_LINUX, UNIX_NEEDS_UNIX] {
            assert!(why.ends_with("use tcp://HOST:PORT on this OS"), "{why}");
        }
        let tcp = ScanUrl::Tcp(([127, 0, 0, 1], 1).into());
        assert_eq!(transport_unsupported(&tcp), None);
        let vsock = "vsock://1:5317".parse::<ScanUrl>();
        let unix = "unix:///run/x.sock".parse::<ScanUrl>();
        if cfg!(target_os = "linux") {
            assert_eq!(vsock.unwrap(), ScanUrl::Vsock(1, 5317));
            assert_eq!(unix.unwrap(), ScanUrl::Unix("/run/x.sock".into()));
        } else {
            assert_eq!(
                vsock.unwrap_err().to_string(),
                format!("--connect \"vsock://1:5317\": {VSOCK_NEEDS_LINUX}")
            );
            assert_eq!(unix.is_err(), !cfg!(unix));
        }
    }
}
