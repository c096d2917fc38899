//! The client side of a `tls://` scanner: this guest's certificate and the
//! CA that signed the scanner's. The scanner takes the certificate's subject
//! as this guest's identity (docs/architecture.md, "Who is trusted for
//! what").

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{flag} {}: cannot read it", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{flag} {}: holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
            path.display()
        );
    }
    Ok(certs)
}

/// A client configuration from `--tls-cert`, `--tls-key` and `--tls-ca`.
pub fn client_config(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("--tls-cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: no usable PEM private key", key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates("--tls-ca", ca)? {
        roots
            .add(c)
            .with_context(|| format!("--tls-ca {}: not a usable CA certificate", ca.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context(
            "--tls-cert/--tls-key: the key does not match the certificate, or either is unusable",
        )?;
    Ok(Arc::new(config))
}
