//! TLS for `serve` (rustls on ring, the one TLS stack of the project): the
//! server certificate, optional client-certificate verification, the CN of a
//! verified client certificate, and the client config for `mqtts://`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read, or is no PEM.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: pem::Error,
    },
    /// The file holds none of what it should.
    #[error("{} holds no PEM {what}", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// A certificate or a private key.
        what: &'static str,
    },
    /// rustls refused what the file holds.
    #[error("{}: {source}", path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        source: tokio_rustls::rustls::Error,
    },
    /// The client CA cannot verify client certificates.
    #[error("{}: {source}", path.display())]
    ClientCa {
        /// The `--client-ca` file.
        path: PathBuf,
        /// Why.
        source: VerifierBuilderError,
    },
    /// The certificate and the key do not make a server identity.
    #[error("the server certificate and key: {0}")]
    KeyPair(tokio_rustls::rustls::Error),
}

/// Why the PEM file at `path`, which should hold `what`, cannot be used.
fn unreadable<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(pem::Error) -> TlsError + 'a {
    move |source| match source {
        pem::Error::NoItemsFound => TlsError::Empty { path: path.to_owned(), what },
        source => TlsError::Read { path: path.to_owned(), source },
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(unreadable(path, "certificate"))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.to_owned(), what: "certificate" });
    }
    Ok(certs)
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|source| TlsError::Refused { path: path.to_owned(), source })?;
    }
    Ok(roots)
}

/// The HTTPS server config. With `client_ca`, a client certificate is asked
/// for and verified against it, but not required: Basic callers (the second
/// example of Tencent Cloud MQTT's HTTP publish documentation) connect without one.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(unreadable(key, "private key"))?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|source| TlsError::ClientCa { path: ca.to_owned(), source })?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(TlsError::KeyPair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS client config for `mqtts://`: trust `ca` if given, else the system's roots.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(ca) => roots(ca)?,
        None => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The subject's first Common Name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}
