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
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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
    /// (fail closed). Read at start and again at each reload (SIGHUP), like
    /// the other files: a reload also ends the sessions of guests the new
    /// list revokes. Unset: no revocation check.
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

/// Every PEM block of type `T` in `pem`, at least one, or what is wrong
/// with it: `what` names the blocks for people (`certificate`,
/// `revocation list`) and `begin` is their PEM label. Also what the farm
/// checks its `rediss://` files with.
pub(crate) fn pem_blocks_in<T: PemObject>(
    pem: &[u8],
    what: &str,
    begin: &str,
) -> Result<Vec<T>, String> {
    let blocks = T::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM {what}s: {e}"))?;
    if blocks.is_empty() {
        return Err(format!(
            "holds no {what}: no {begin} block (expected -----BEGIN {begin}-----)"
        ));
    }
    Ok(blocks)
}

/// [`pem_blocks_in`] the file `path` (setting `field`).
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
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    pem_blocks_in(&pem, what, begin).map_err(err)
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

/// What the `tls://` listeners run: the rustls configuration new
/// handshakes use, and its client verifier, kept to check the guests
/// already connected again when the files are reloaded
/// ([`TlsPeer::no_longer_trusted`]).
pub struct TlsServer {
    /// The configuration of new handshakes.
    pub config: Arc<rustls::ServerConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer").finish_non_exhaustive()
    }
}

/// The `tls://` listeners' current [`TlsServer`]: a reload
/// (`ServiceHandle::reload_tls`, SIGHUP) sends the next one.
pub type TlsServers = watch::Receiver<Arc<TlsServer>>;

impl TlsServer {
    /// Reads `config`'s files: our chain and key, and a verifier that
    /// requires a client certificate signed by `client_ca` (and not revoked
    /// by `crl`, when set).
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
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
            // The guest's own certificate is checked against its CA's list;
            // a guest whose CA has no list is refused (rustls' default), so
            // a wrong file fails loudly instead of revoking nothing.
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
            .with_client_cert_verifier(Arc::clone(&verifier))
            .with_single_cert(chain, key)?;
        Ok(Self {
            config: Arc::new(server),
            verifier,
        })
    }
}

/// A guest connected over TLS: the certificate chain it presented (leaf
/// first), checked again against each reloaded [`TlsServer`].
pub struct TlsPeer {
    chain: Vec<CertificateDer<'static>>,
    servers: TlsServers,
}

impl std::fmt::Debug for TlsPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPeer")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsPeer {
    /// `chain` as the handshake on `servers`' configuration verified it.
    pub fn new(chain: Vec<CertificateDer<'static>>, servers: TlsServers) -> Self {
        Self { chain, servers }
    }

    /// Waits until a reload's verifier refuses this guest's certificate as
    /// a new handshake would now (revoked by a new list, its CA no longer
    /// trusted, expired since it connected) and says why; pending for as
    /// long as every reload accepts it.
    pub async fn no_longer_trusted(mut self) -> rustls::Error {
        let Some((leaf, rest)) = self.chain.split_first() else {
            return rustls::Error::NoCertificatesPresented;
        };
        // The first check is against the newest server even when it came
        // between the handshake and this call.
        while self.servers.changed().await.is_ok() {
            let server = Arc::clone(&self.servers.borrow_and_update());
            if let Err(e) = server
                .verifier
                .verify_client_cert(leaf, rest, UnixTime::now())
            {
                return e;
            }
        }
        // No reload can come any more (the service is going away).
        std::future::pending().await
    }
}

/// The subject of a (verified) client certificate, as RFC 4514-like text
/// (`CN=vm-17, O=Example`); `None` when it does not parse or is empty.
pub fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject().to_string();
    (!subject.is_empty()).then_some(subject)
}
