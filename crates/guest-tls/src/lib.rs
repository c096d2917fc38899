//! The guest end of a `tls://` scanner, shared by the guests that run on an
//! OS with a TLS stack (`thinagent-linux-agent`, `thinagent-diag scan`).
//!
//! The scanner accepts a `tls://` guest only with a client certificate its
//! guest CA signed, and takes the certificate's subject as the guest's
//! identity (docs/architecture.md, "Who is trusted for what"). This crate
//! loads that certificate, its key and the CA that signed the scanner's
//! certificate from PEM files ([`client_config`]) and connects
//! ([`connect`]), checking the scanner's certificate against the host name
//! or IP address of the URL.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The TLS stream to the scanner.
pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Why the client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{option} {path}: {why}", path = path.display())]
    File {
        /// The option that named it (`--tls-cert`, `--tls-key`, `--tls-ca`).
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        why: String,
    },
    /// rustls refused the certificate and key.
    #[error("--tls-cert/--tls-key: {0} (check that the key belongs to the certificate)")]
    Rustls(#[from] rustls::Error),
}

fn certificates(
    option: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsClientError> {
    let err = |why: String| TlsClientError::File {
        option,
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            "holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)".into(),
        ));
    }
    Ok(certs)
}

/// A client configuration: this guest's certificate chain `cert` (leaf
/// first) and private key `key`, trusting the scanner certificates `ca`
/// signed. The options named in errors are the command-line ones
/// (`--tls-cert`, `--tls-key`, `--tls-ca`).
pub fn client_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("--tls-cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsClientError::File {
        option: "--tls-key",
        path: key.to_path_buf(),
        why: format!("no usable PEM private key in it: {e}"),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates("--tls-ca", ca)? {
        roots.add(c).map_err(|e| TlsClientError::File {
            option: "--tls-ca",
            path: ca.to_path_buf(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The name the scanner's certificate must carry for `host` (the host part
/// of a `tls://HOST:PORT` URL): an IP address entry for an address, a DNS
/// entry otherwise.
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name or IP address: {e}"),
        )
    })
}

/// Connects to `addr` and runs the TLS handshake, checking the scanner's
/// certificate against `host` (see [`server_name`]).
pub async fn connect(
    host: &str,
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> io::Result<TlsStream> {
    let name = server_name(host)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
}

/// What `e`, an error of the connect or of a read or write on a
/// [`TlsStream`], means when it is the scanner refusing this guest's
/// certificate: the TLS alert the scanner sent, said for the admin with
/// what to do; `None` for any other error. (With TLS 1.3 the guest's
/// handshake ends before the scanner has checked its certificate, so the
/// refusal comes as the first read's error.)
pub fn certificate_refusal(e: &io::Error) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let Some(rustls::Error::AlertReceived(alert)) = e.get_ref()?.downcast_ref::<rustls::Error>()
    else {
        return None;
    };
    let why = match alert {
        Alert::CertificateRevoked => "it is revoked (on its CA's revocation list)",
        Alert::CertificateExpired => {
            "it has expired or is not valid yet (check this machine's clock)"
        }
        Alert::UnknownCA => {
            "its CA is not one the scanner trusts (tls.client_ca), or that CA has no revocation list in the scanner's tls.crl"
        }
        Alert::CertificateRequired => "none was sent",
        Alert::UnsupportedCertificate => {
            "it is not a client certificate (extendedKeyUsage clientAuth)"
        }
        Alert::BadCertificate | Alert::CertificateUnknown | Alert::AccessDenied => {
            "the scanner does not accept it"
        }
        _ => return None,
    };
    Some(format!(
        "the scanner refused this guest's certificate ({alert:?}): {why}; give the agent a valid one from the guest CA (--tls-cert, --tls-key)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_said_with_what_to_do() {
        let alert = |a| io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
        let said = certificate_refusal(&alert(rustls::AlertDescription::CertificateRevoked))
            .expect("a refusal");
        assert!(
            said.contains("revoked") && said.contains("--tls-cert"),
            "{said}"
        );
        let said = certificate_refusal(&alert(rustls::AlertDescription::UnknownCA)).unwrap();
        assert!(said.contains("tls.client_ca"), "{said}");
        // Other alerts and other errors are not about the certificate.
        assert!(certificate_refusal(&alert(rustls::AlertDescription::HandshakeFailure)).is_none());
        assert!(certificate_refusal(&io::Error::from(io::ErrorKind::ConnectionReset)).is_none());
        let other = io::Error::new(io::ErrorKind::InvalidData, "not rustls");
        assert!(certificate_refusal(&other).is_none());
    }

    #[test]
    fn server_names_from_url_hosts() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("scanner.example").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("not a name").is_err());
    }

    #[test]
    fn errors_name_the_option_the_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(&missing, &missing, &missing)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--tls-cert ") && e.contains("cannot read it"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = client_config(&empty, &empty, &empty)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no certificate"), "{e}");
    }
}
