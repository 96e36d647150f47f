//! The webhook's server certificate, read from PEM files and read again when they change.
//!
//! cert-manager and the kubelet replace the files of a mounted Secret by swapping a symlink,
//! so each TLS handshake compares the files' identity (device, inode, size and modification
//! time) with the loaded pair and reloads on a difference. A pair that fails to load keeps the
//! previous certificate in use, such as a key that does not match the new certificate while
//! only one file has been replaced. The failure is logged once per change.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate or key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} contains no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} contains no PEM private key: {reason}", path.display())]
    InvalidKey { path: PathBuf, reason: String },
    #[error(
        "the key {} cannot be used with the certificate {}: {source}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Identity of one file's current content, compared to notice a replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let metadata = fs::metadata(path).ok()?;
        Some(FileStamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: metadata.modified().ok(),
        })
    }
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// Stamps of the certificate and key files that were loaded or last tried.
    stamps: (Option<FileStamp>, Option<FileStamp>),
}

/// Serves the certificate and key from two PEM files, reloading them when they change.
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCertificate {
    /// Loads the pair once, failing when it cannot be used.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamps = (FileStamp::of(cert_path), FileStamp::of(key_path));
        let key = load_pair(cert_path, key_path, &provider)?;
        Ok(ReloadingCertificate {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            loaded: Mutex::new(Loaded {
                key: Arc::new(key),
                stamps,
            }),
        })
    }

    /// Returns the certificate to present, reloading the files first if they changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let stamps = (
            FileStamp::of(&self.cert_path),
            FileStamp::of(&self.key_path),
        );
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if stamps == loaded.stamps {
            return Arc::clone(&loaded.key);
        }
        // The stamps are recorded even when loading fails, so a broken pair is tried and
        // logged once, not at every handshake, and is tried again when a file changes.
        loaded.stamps = stamps;
        match load_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(key) => {
                tracing::info!(
                    cert = %self.cert_path.display(),
                    "reloaded the webhook's TLS certificate"
                );
                loaded.key = Arc::new(key);
            }
            Err(err) => tracing::warn!(
                %err,
                "cannot reload the webhook's TLS certificate; still serving the previous one"
            ),
        }
        Arc::clone(&loaded.key)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Builds a server configuration for HTTP/1.1 that presents `certificate`.
pub fn server_config(
    certificate: Arc<ReloadingCertificate>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::clone(&certificate.provider);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_pem = fs::read(cert_path).map_err(|source| TlsError::Read {
        path: cert_path.to_path_buf(),
        source,
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key_pem = zeroize::Zeroizing::new(fs::read(key_path).map_err(|source| TlsError::Read {
        path: key_path.to_path_buf(),
        source,
    })?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| TlsError::InvalidKey {
        path: key_path.to_path_buf(),
        reason: err.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    })
}
