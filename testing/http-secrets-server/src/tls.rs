//! Certificates for the HTTPS listener: a CA and a server certificate for `127.0.0.1` and
//! `localhost`, generated at start.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Certificate generation or TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to generate a test certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("failed to build the TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub(crate) struct TlsMaterial {
    pub(crate) ca_cert_pem: String,
    pub(crate) server_config: Arc<rustls::ServerConfig>,
}

/// Generates a CA, a server certificate signed by it, and a rustls configuration for HTTP/1.1.
pub(crate) fn generate() -> Result<TlsMaterial, TlsError> {
    let ca = generate_ca("EnvProxy HTTP secrets test CA")?;

    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "envproxy-http-test-server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &ca)?;

    let chain = vec![certificate.der().clone(), ca.der().clone()];
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Naming ring here keeps the server independent of the process-wide default provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    Ok(TlsMaterial {
        ca_cert_pem: ca.pem(),
        server_config: Arc::new(config),
    })
}

/// Generates a CA certificate (PEM) that signed nothing this server presents.
pub fn unrelated_ca_pem() -> Result<String, TlsError> {
    Ok(generate_ca("Unrelated test CA")?.pem())
}

fn generate_ca(common_name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}
