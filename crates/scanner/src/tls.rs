//! TLS with client certificates for `tls://` listeners.
//!
//! TCP beyond loopback proves nothing about who connects, so the scanner
//! only listens there with TLS, and only accepts guests that present a
//! certificate signed by the configured guest CA. The certificate's subject
//! is then the guest's identity ([`PeerIdentity::Tls`](crate::connection::PeerIdentity)):
//! caches, limits and audit records are keyed by it, never by the name the
//! guest announces.
//!
//! rustls (with the ring provider) does the protocol; x509-parser reads the
//! subject of the verified certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};

/// The `[tls]` section: what `tls://` listeners present and whom they accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The scanner's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The scanner's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) (PEM) that sign guest certificates: a guest is
    /// accepted only with a certificate one of them signed.
    pub client_ca: PathBuf,
}

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("tls.{field} = {path:?}: {why}")]
    File {
        /// Which setting (`cert`, `key`, `client_ca`).
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        why: String,
    },
    /// rustls refused the certificates or key.
    #[error(
        "tls: {0} (check that tls.key belongs to tls.cert and that tls.client_ca is a CA certificate)"
    )]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("tls.client_ca: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::File {
        field,
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

/// Builds the server configuration: our chain and key, and a verifier that
/// requires a client certificate signed by `client_ca`.
pub fn server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("cert", &config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| TlsError::File {
        field: "key",
        path: config.key.clone(),
        why: format!("no usable PEM private key in it: {e}"),
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certificates("client_ca", &config.client_ca)? {
        roots.add(ca).map_err(|e| TlsError::File {
            field: "client_ca",
            path: config.client_ca.clone(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()?;
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(server))
}

/// The subject of a (verified) client certificate, as RFC 4514-like text
/// (`CN=vm-17, O=Example`); `None` when it does not parse or is empty.
pub fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject().to_string();
    (!subject.is_empty()).then_some(subject)
}
