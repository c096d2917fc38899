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
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
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
    /// Certificate revocation lists (PEM, `-----BEGIN X509 CRL-----`), one
    /// from each CA of `client_ca`: a guest whose certificate is listed is
    /// refused at the handshake, and so is one whose CA has no list here
    /// (fail closed). Read at start, like the other files: a new list takes
    /// a restart. Unset: no revocation check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
}

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("tls.{field} = {path:?}: {why}")]
    File {
        /// Which setting (`cert`, `key`, `client_ca`, `crl`).
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

/// Every PEM block of type `T` in `path` (setting `field`), at least one:
/// `what` names them for people (`certificate`, `revocation list`) and
/// `begin` is their PEM label.
fn pem_blocks<T: PemObject>(
    field: &'static str,
    path: &Path,
    what: &str,
    begin: &str,
) -> Result<Vec<T>, TlsError> {
    let err = |why: String| TlsError::File {
        field,
        path: path.to_path_buf(),
        why,
    };
    let blocks = T::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not PEM {what}s: {e}")))?;
    if blocks.is_empty() {
        return Err(err(format!(
            "holds no {what} (expected -----BEGIN {begin}----- blocks)"
        )));
    }
    Ok(blocks)
}

fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_blocks(field, path, "certificate", "CERTIFICATE")
}

fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    pem_blocks("crl", path, "revocation list", "X509 CRL")
}

/// Builds the server configuration: our chain and key, and a verifier that
/// requires a client certificate signed by `client_ca` (and not revoked by
/// `crl`, when set).
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
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if let Some(path) = &config.crl {
        // The guest's own certificate is checked against its CA's list; a
        // guest whose CA has no list is refused (rustls' default), so a
        // wrong file fails loudly instead of revoking nothing.
        verifier = verifier
            .with_crls(revocation_lists(path)?)
            .only_check_end_entity_revocation();
    }
    let verifier = verifier.build().map_err(|e| match (&config.crl, e) {
        (Some(path), rustls::server::VerifierBuilderError::InvalidCrl(why)) => TlsError::File {
            field: "crl",
            path: path.clone(),
            why: format!("not a usable revocation list: {why:?}"),
        },
        (_, other) => TlsError::Verifier(other),
    })?;
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
