//! The `--connect` URL: `tcp://HOST:PORT`, `unix:///path`, `vsock://CID:PORT`.

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
    /// Unix stream socket.
    Unix(PathBuf),
    /// AF_VSOCK CID and port (from a guest: CID 2 is the host; 1 is loopback).
    Vsock(u32, u32),
}

impl FromStr for ScanUrl {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let hint = "expected tcp://HOST:PORT, unix:///path or vsock://CID:PORT";
        let Some((scheme, rest)) = s.split_once("://") else {
            bail!("--connect {s:?}: no scheme; {hint}");
        };
        match scheme {
            "tcp" => rest
                .to_socket_addrs()
                .with_context(|| format!("--connect {s:?}: bad TCP address"))?
                .next()
                .map(Self::Tcp)
                .ok_or_else(|| anyhow!("--connect {s:?}: the host name resolves to nothing")),
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
    /// Connects.
    pub async fn connect(&self) -> std::io::Result<Pin<Box<dyn Stream>>> {
        Ok(match self {
            Self::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                let _ = s.set_nodelay(true);
                Box::pin(s)
            }
            Self::Unix(p) => Box::pin(tokio::net::UnixStream::connect(p).await?),
            Self::Vsock(cid, port) => Box::pin(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
            ),
        })
    }
}

impl std::fmt::Display for ScanUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp://{a}"),
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
            "unix:///run/x.sock".parse::<ScanUrl>().unwrap(),
            ScanUrl::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "vsock://2:5317".parse::<ScanUrl>().unwrap(),
            ScanUrl::Vsock(2, 5317)
        );
        for bad in ["127.0.0.1:1", "unix://rel", "vsock://any", "ftp://x:1"] {
            assert!(bad.parse::<ScanUrl>().is_err(), "{bad}");
        }
    }
}
