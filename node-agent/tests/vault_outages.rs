//! The Vault backend when Vault is unavailable or the connection fails: stale-if-error within
//! and beyond `max_stale`, responses that are never masked (403, deleted versions), timeouts,
//! TLS with the right and a wrong CA, and invalid addresses.

mod vault_support;

use std::io::Write;
use std::time::Duration;

use envproxy_agent::vault::{VaultBackend, VaultError};
use envproxy_vault_test_server::{
    unrelated_ca_pem, Capability, Policy, ServerOptions, TokenSpec, VaultTestServer,
};
use serde_json::json;
use vault_support::{resolve, settings, start_server, LogCapture};

const REFERENCE: &str = "vault:secret/data/app#password";

/// Starts a server with `secret/app` and a backend with a 300 ms cache TTL and `max_stale`.
async fn cached_backend(
    options: ServerOptions,
    max_stale: Duration,
) -> (VaultTestServer, VaultBackend) {
    let server = start_server(options).await;
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "cached-pw"}))
        .unwrap();
    let mut settings = settings(&server, server.root_token());
    settings.cache_ttl = Duration::from_millis(300);
    settings.max_stale = max_stale;
    let backend = VaultBackend::start(settings).await.unwrap();
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("cached-pw".into()));
    (server, backend)
}

async fn past_ttl() {
    tokio::time::sleep(Duration::from_millis(450)).await;
}

#[tokio::test]
async fn stopped_vault_serves_stale_then_recovers() {
    let (logs, _guard) = LogCapture::install();
    let (server, backend) = cached_backend(ServerOptions::default(), Duration::from_secs(30)).await;

    server.stop_listening().await;
    past_ttl().await;
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("cached-pw".into()));
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("cached-pw".into()));
    let status = backend.status();
    assert_eq!(status.stale_served, 2);
    let last_error = status.last_error.expect("the failed read");
    assert!(last_error.contains("refused"), "{last_error}");

    // A path that was never read fails at once with the reason.
    let started = std::time::Instant::now();
    let error = resolve(&backend, "vault:secret/data/never-read#password")
        .await
        .unwrap_err();
    assert!(
        matches!(error, VaultError::ConnectionRefused { .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(error.to_string().contains(&server.url()), "{error}");

    server.start_listening().await.unwrap();
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "rotated-pw"}))
        .unwrap();
    // Vault is tried again once the stale retry interval (1 s at this TTL) has passed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("rotated-pw".into()));

    let text = logs.text();
    assert_eq!(
        text.matches("Vault is unavailable").count(),
        1,
        "the outage is logged once:\n{text}"
    );
    assert_eq!(
        text.matches("Vault is available again").count(),
        1,
        "{text}"
    );
    logs.assert_free_of(&["cached-pw", "rotated-pw", server.root_token()]);
}

#[tokio::test]
async fn stale_value_ends_at_max_stale() {
    let (server, backend) =
        cached_backend(ServerOptions::default(), Duration::from_millis(500)).await;
    server.stop_listening().await;
    past_ttl().await;
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("cached-pw".into()));

    // TTL (300 ms) plus max_stale (500 ms) have passed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let error = resolve(&backend, REFERENCE).await.unwrap_err();
    assert!(
        matches!(error, VaultError::ConnectionRefused { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn sealed_vault_serves_stale() {
    let (server, backend) = cached_backend(ServerOptions::default(), Duration::from_secs(30)).await;
    server.seal();
    past_ttl().await;
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("cached-pw".into()));
    assert_eq!(backend.status().stale_served, 1);

    let error = resolve(&backend, "vault:secret/data/other#password")
        .await
        .unwrap_err();
    assert!(matches!(error, VaultError::Sealed { .. }), "{error:?}");
    assert!(error.to_string().contains("sealed"), "{error}");
    assert!(error.to_string().contains("secret/data/other"), "{error}");
}

#[tokio::test]
async fn server_errors_serve_stale() {
    for status in [500, 502, 429] {
        let (server, backend) =
            cached_backend(ServerOptions::default(), Duration::from_secs(30)).await;
        server.inject_failures("secret/data/app", 1, status);
        past_ttl().await;
        assert_eq!(
            resolve(&backend, REFERENCE).await,
            Ok("cached-pw".into()),
            "status {status}"
        );
        assert_eq!(backend.status().stale_served, 1, "status {status}");
        assert_eq!(server.request_count("GET", "secret/data/app"), 2);
    }
}

#[tokio::test]
async fn server_error_without_cache_is_reported() {
    let server = start_server(ServerOptions::default()).await;
    server.inject_failures("secret/data/app", 1, 500);
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();
    let error = resolve(&backend, REFERENCE).await.unwrap_err();
    assert!(
        matches!(error, VaultError::Server { status: 500, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("internal error"), "{error}");
}

#[tokio::test]
async fn permission_denied_is_not_masked() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "cached-pw"}))
        .unwrap();
    let root = server.root();
    root.set_policy(
        "app-read",
        Policy::new().allow("secret/data/app", &[Capability::Read]),
    );
    let token = server
        .create_token(TokenSpec::new(&["app-read"]))
        .unwrap()
        .token;
    let mut short = settings(&server, &token);
    short.cache_ttl = Duration::from_millis(300);
    let backend = VaultBackend::start(short).await.unwrap();
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("cached-pw".into()));

    // The policy no longer grants read: the cached value must not hide that.
    root.set_policy(
        "app-read",
        Policy::new().allow("secret/data/other", &[Capability::Read]),
    );
    past_ttl().await;
    let error = resolve(&backend, REFERENCE).await.unwrap_err();
    assert_eq!(
        error,
        VaultError::PermissionDenied {
            path: "secret/data/app".into()
        }
    );
    // Nor does it come back as stale data during a later outage, once the cached denial
    // (kept for the cache TTL) has expired too.
    past_ttl().await;
    server.stop_listening().await;
    let error = resolve(&backend, REFERENCE).await.unwrap_err();
    assert!(
        matches!(error, VaultError::ConnectionRefused { .. }),
        "{error:?}"
    );
    assert_eq!(backend.status().stale_served, 0);
}

#[tokio::test]
async fn deleted_version_is_not_masked() {
    let (server, backend) = cached_backend(ServerOptions::default(), Duration::from_secs(30)).await;
    server
        .root()
        .kv2_delete_versions("secret", "app", &[1])
        .unwrap();
    past_ttl().await;
    assert_eq!(
        resolve(&backend, REFERENCE).await,
        Err(VaultError::VersionDeleted {
            path: "secret/data/app".into(),
            version: 1
        })
    );

    server
        .root()
        .kv2_put("secret", "app", json!({"password": "second"}))
        .unwrap();
    server
        .root()
        .kv2_destroy_versions("secret", "app", &[2])
        .unwrap();
    assert_eq!(
        resolve(&backend, REFERENCE).await,
        Err(VaultError::VersionDestroyed {
            path: "secret/data/app".into(),
            version: 2
        })
    );
    assert_eq!(backend.status().stale_served, 0);
}

#[tokio::test]
async fn slow_vault_times_out() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put("secret", "slow", json!({"password": "pw"}))
        .unwrap();
    server.inject_latency("secret/data/slow", Duration::from_secs(3));
    let mut quick = settings(&server, server.root_token());
    quick.timeout = Duration::from_millis(500);
    let backend = VaultBackend::start(quick).await.unwrap();

    let started = std::time::Instant::now();
    let error = resolve(&backend, "vault:secret/data/slow#password")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(error, VaultError::Timeout { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("within 0.5s"), "{message}");
    assert!(message.contains("secret/data/slow"), "{message}");
}

fn pem_file(pem: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(pem.as_bytes()).unwrap();
    file
}

#[tokio::test]
async fn tls_with_right_and_wrong_ca() {
    let server = start_server(ServerOptions::default().with_tls()).await;
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "over-tls"}))
        .unwrap();
    let right_ca = pem_file(server.ca_cert_pem().unwrap());
    let wrong_ca = pem_file(&unrelated_ca_pem().unwrap());

    let mut trusted = settings(&server, server.root_token());
    trusted.tls.ca_cert = Some(right_ca.path().to_path_buf());
    let backend = VaultBackend::start(trusted).await.unwrap();
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("over-tls".into()));

    let mut untrusted = settings(&server, server.root_token());
    untrusted.tls.ca_cert = Some(wrong_ca.path().to_path_buf());
    let backend = VaultBackend::start(untrusted).await.unwrap();
    let error = resolve(&backend, REFERENCE).await.unwrap_err();
    assert!(matches!(error, VaultError::Tls { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("VAULT_CACERT"), "{message}");
    assert!(message.contains("ca_cert"), "{message}");

    // Without a CA file the system roots apply, which do not include the test CA.
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();
    let error = resolve(&backend, REFERENCE).await.unwrap_err();
    assert!(matches!(error, VaultError::Tls { .. }), "{error:?}");
}

#[tokio::test]
async fn tls_server_name_is_verified() {
    let server = start_server(ServerOptions::default().with_tls()).await;
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "by-name"}))
        .unwrap();
    let ca = pem_file(server.ca_cert_pem().unwrap());

    // The certificate names 127.0.0.1 and localhost.
    let mut named = settings(&server, server.root_token());
    named.tls.ca_cert = Some(ca.path().to_path_buf());
    named.tls.tls_server_name = Some("localhost".into());
    let backend = VaultBackend::start(named).await.unwrap();
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("by-name".into()));

    let mut misnamed = settings(&server, server.root_token());
    misnamed.tls.ca_cert = Some(ca.path().to_path_buf());
    misnamed.tls.tls_server_name = Some("vault.example.com".into());
    let backend = VaultBackend::start(misnamed).await.unwrap();
    let error = resolve(&backend, REFERENCE).await.unwrap_err();
    assert!(matches!(error, VaultError::Tls { .. }), "{error:?}");
}

#[tokio::test]
async fn unreadable_ca_file_fails_start() {
    let server = start_server(ServerOptions::default().with_tls()).await;
    let mut settings = settings(&server, server.root_token());
    settings.tls.ca_cert = Some("/nonexistent/ca.pem".into());
    let error = VaultBackend::start(settings).await.err().unwrap();
    assert!(matches!(error, VaultError::TlsFile { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");

    let not_pem = pem_file("not a certificate");
    let mut settings = vault_support::settings(&server, server.root_token());
    settings.tls.ca_cert = Some(not_pem.path().to_path_buf());
    let error = VaultBackend::start(settings).await.err().unwrap();
    assert!(error.to_string().contains("no PEM certificate"), "{error}");
}

#[tokio::test]
async fn invalid_addresses_fail_start() {
    let server = start_server(ServerOptions::default()).await;
    for (address, detail) in [
        ("not a url", "expected a URL"),
        ("ftp://127.0.0.1:8200", "use http or https"),
        ("http://127.0.0.1:8200/v1/secret", "path or query"),
    ] {
        let mut settings = settings(&server, server.root_token());
        settings.address = address.into();
        let error = VaultBackend::start(settings).await.err().unwrap();
        assert!(
            matches!(error, VaultError::InvalidAddress { .. }),
            "{address}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(detail), "{address}: {message}");
        assert!(message.contains(address), "{address}: {message}");
    }
}

#[tokio::test]
async fn agent_starts_while_vault_is_down() {
    let (logs, _guard) = LogCapture::install();
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "later"}))
        .unwrap();
    server.stop_listening().await;
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();
    assert!(!backend.status().logged_in);
    assert!(
        logs.text()
            .contains("Vault is unavailable at the first login"),
        "{}",
        logs.text()
    );
    let error = resolve(&backend, REFERENCE).await.unwrap_err();
    assert!(
        matches!(error, VaultError::ConnectionRefused { .. }),
        "{error:?}"
    );

    server.start_listening().await.unwrap();
    assert_eq!(resolve(&backend, REFERENCE).await, Ok("later".into()));
    assert!(backend.status().logged_in);
}
