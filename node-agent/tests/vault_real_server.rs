//! The Vault backend against a real Vault or OpenBao server, when `VAULT_ADDR` and
//! `VAULT_TOKEN` name one (for example `vault server -dev` or `bao server -dev`, which mount
//! KV v2 at `secret/`). Without both variables the test prints why it did nothing and passes.
//!
//! The test writes `secret/envproxy-test/<pid>` with the token, reads it back through the
//! backend, and deletes its metadata at the end.

use std::time::Duration;

use envproxy_agent::vault::{VaultBackend, VaultEnvironment};
use envproxy_proto::Reference;
use serde_json::json;

#[tokio::test]
async fn reads_from_real_vault() {
    let environment = VaultEnvironment::from_process();
    let (Some(_), Some(token)) = (&environment.address, &environment.token) else {
        println!(
            "skipped: set VAULT_ADDR and VAULT_TOKEN to run this test against a real Vault \
             or OpenBao server"
        );
        return;
    };
    let mut settings = environment.settings().expect("VAULT_ADDR is set");
    settings.timeout = Duration::from_secs(10);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().tls_backend_rustls();
    if let Some(ca) = &settings.tls.ca_cert {
        let pem = std::fs::read(ca).unwrap();
        builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
    }
    let client = builder.build().unwrap();
    let path = format!("envproxy-test/{}", std::process::id());
    let url = |kind: &str| {
        format!(
            "{}/v1/secret/{kind}/{path}",
            settings.address.trim_end_matches('/')
        )
    };
    let with_headers = |request: reqwest::RequestBuilder| {
        let request = request.header("X-Vault-Token", token.expose_secret());
        match settings.namespace() {
            Some(namespace) => request.header("X-Vault-Namespace", namespace),
            None => request,
        }
    };
    let written = with_headers(client.post(url("data")))
        .json(&json!({"data": {"password": "real-vault-pw", "port": 5432}}))
        .send()
        .await
        .unwrap();
    assert!(
        written.status().is_success(),
        "writing the test secret failed with HTTP {}",
        written.status()
    );

    let backend = VaultBackend::start(settings.clone()).await.unwrap();
    let read = |key: &str| {
        let reference = Reference::parse(&format!("vault:secret/data/{path}#{key}")).unwrap();
        let backend = backend.clone();
        async move { backend.resolve(&reference).await }
    };
    let password = read("password").await.unwrap();
    assert_eq!(password.expose_secret(), b"real-vault-pw");
    let port = read("port").await.unwrap();
    assert_eq!(port.expose_secret(), b"5432");
    assert!(backend.status().logged_in);

    let deleted = with_headers(client.delete(url("metadata")))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "HTTP {}", deleted.status());
}
