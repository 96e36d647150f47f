//! Vault sessions per pod identity against the Vault test server: one login per identity,
//! shared by its pods, and dropped when the last pod leaves.

mod vault_support;

use std::time::{Duration, SystemTime};

use envproxy_agent::node::identities::{Identities, Identity};
use envproxy_agent::vault::{SecretText, VaultError};
use envproxy_vault_test_server::{
    service_account_jwt, Capability, KubernetesRole, Policy, ServerOptions, VaultTestServer,
};
use serde_json::json;
use tracing::Instrument;
use vault_support::*;

const LOGIN: &str = "auth/kubernetes/login";

async fn server_with_role() -> VaultTestServer {
    let server = start_server(ServerOptions::default()).await;
    let root = server.root();
    root.enable_kubernetes_auth("kubernetes", None);
    root.set_policy(
        "shop-read",
        Policy::new().allow("secret/data/shop/*", &[Capability::Read]),
    );
    root.add_kubernetes_role(
        "kubernetes",
        "checkout",
        KubernetesRole::new(&["checkout"], &["shop"], &["shop-read"]),
    )
    .unwrap();
    root.kv2_put("secret", "shop/db", json!({"password": "pw-1"}))
        .unwrap();
    server
}

fn identity(server: &VaultTestServer) -> Identity {
    Identity {
        vault_address: server.url(),
        vault_namespace: None,
        namespace: "shop".to_string(),
        service_account: "checkout".to_string(),
        auth_mount: "kubernetes".to_string(),
        role: "checkout".to_string(),
        cache_ttl: Duration::from_secs(300),
    }
}

/// Returns a token store preparation that stores a valid token of `shop/checkout`.
fn store_token(
    jwt: &str,
) -> impl FnOnce(&envproxy_agent::node::identities::LatestJwt) -> Result<(), String> + '_ {
    move |latest| {
        latest.set(
            SecretText::new(jwt.to_string()),
            SystemTime::now() + Duration::from_secs(3600),
        );
        Ok(())
    }
}

#[tokio::test]
async fn pods_of_one_identity_share_one_login() {
    let server = server_with_role().await;
    let base = settings(&server, "unused");
    let jwt = service_account_jwt("shop", "checkout", server.now() + Duration::from_secs(3600));
    let identities = Identities::default();
    let identity = identity(&server);

    let first = identities
        .session(&identity, "pod-1", &base, store_token(&jwt))
        .await
        .unwrap();
    let second = identities
        .session(&identity, "pod-2", &base, |_| {
            panic!("an existing session needs no new token")
        })
        .await
        .unwrap();
    assert_eq!(identities.len().await, 1);
    assert_eq!(server.request_count("POST", LOGIN), 1);

    let text = "vault:secret/data/shop/db#password";
    assert_eq!(resolve(&first.backend, text).await, Ok("pw-1".into()));
    assert_eq!(resolve(&second.backend, text).await, Ok("pw-1".into()));
    assert_eq!(server.request_count("GET", "secret/data/shop/db"), 1);
}

#[tokio::test]
async fn identity_dropped_after_last_pod() {
    let server = server_with_role().await;
    let base = settings(&server, "unused");
    let jwt = service_account_jwt("shop", "checkout", server.now() + Duration::from_secs(3600));
    let identities = Identities::default();
    let identity = identity(&server);
    for pod in ["pod-1", "pod-2"] {
        identities
            .session(&identity, pod, &base, store_token(&jwt))
            .await
            .unwrap();
    }

    identities.forget_pod("pod-1").await;
    assert_eq!(identities.len().await, 1);
    identities.forget_pod("pod-2").await;
    assert!(identities.is_empty().await);
    identities.forget_pod("pod-unknown").await;
    assert!(identities.is_empty().await);
}

#[tokio::test]
async fn failed_preparation_creates_no_session() {
    let server = server_with_role().await;
    let base = settings(&server, "unused");
    let identities = Identities::default();
    let result = identities
        .session(&identity(&server), "pod-1", &base, |_| {
            Err("the pod's token is missing".to_string())
        })
        .await;
    assert_eq!(result.err(), Some("the pod's token is missing".to_string()));
    assert!(identities.is_empty().await);
    assert_eq!(server.request_count("POST", LOGIN), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn session_logs_name_identity_and_pod() {
    let server = server_with_role().await;
    let jwt = service_account_jwt("shop", "checkout", server.now() + Duration::from_secs(3600));
    let base = settings(&server, "unused");
    let identities = Identities::default();
    let (capture, _guard) = LogCapture::install();
    let good = identity(&server);
    let mut wrong_role = identity(&server);
    wrong_role.role = "no-such-role".to_string();

    let span = tracing::error_span!("vault_request", pod = %"shop/checkout-1");
    let session = identities
        .session(&good, "pod-1", &base, store_token(&jwt))
        .instrument(span)
        .await
        .unwrap();
    let failed = identities
        .session(&wrong_role, "pod-2", &base, store_token(&jwt))
        .await
        .unwrap();
    assert!(failed.backend.status().last_error.is_some());

    let log = capture.text();
    let succeeded = log
        .lines()
        .find(|line| line.contains("Vault login succeeded"))
        .unwrap_or_else(|| panic!("no login line; log:\n{log}"));
    assert!(succeeded.contains(&good.describe()), "{succeeded}");
    assert!(succeeded.contains("pod=shop/checkout-1"), "{succeeded}");
    let failed_line = log
        .lines()
        .find(|line| line.contains("Vault login failed"))
        .unwrap_or_else(|| panic!("no failed login line; log:\n{log}"));
    assert!(
        failed_line.contains(&wrong_role.describe()),
        "{failed_line}"
    );
    assert!(failed_line.contains("of this identity"), "{failed_line}");
    assert!(!failed_line.contains(&good.describe()), "{failed_line}");
    capture.assert_free_of(&[jwt.as_str()]);
    drop(session);
}

#[tokio::test(flavor = "current_thread")]
async fn refused_logins_back_off() {
    let server = server_with_role().await;
    let jwt = service_account_jwt("shop", "checkout", server.now() + Duration::from_secs(3600));
    let base = settings(&server, "unused");
    let identities = Identities::default();
    let (capture, _guard) = LogCapture::install();
    let mut wrong_role = identity(&server);
    wrong_role.role = "no-such-role".to_string();
    let session = identities
        .session(&wrong_role, "pod-1", &base, store_token(&jwt))
        .await
        .unwrap();
    assert_eq!(server.request_count("POST", LOGIN), 1);

    let text = "vault:secret/data/shop/db#password";
    for _ in 0..100 {
        let result = resolve(&session.backend, text).await;
        assert!(
            matches!(result, Err(VaultError::LoginFailed { .. })),
            "{result:?}"
        );
    }
    assert_eq!(server.request_count("POST", LOGIN), 1);

    // After the first pause (1 s) one request logs in again; the next pause is 2 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..50 {
        let result = resolve(&session.backend, text).await;
        assert!(
            matches!(result, Err(VaultError::LoginFailed { .. })),
            "{result:?}"
        );
    }
    assert_eq!(server.request_count("POST", LOGIN), 2);
    assert_eq!(server.request_count("GET", "secret/data/shop/db"), 0);

    let log = capture.text();
    let failures: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Vault login failed"))
        .collect();
    assert_eq!(failures.len(), 2, "{log}");
    assert!(failures[0].contains("retry_in_secs=1"), "{}", failures[0]);
    assert!(failures[1].contains("retry_in_secs=2"), "{}", failures[1]);
    capture.assert_free_of(&[jwt.as_str()]);
}

#[tokio::test]
async fn login_backoff_ends_on_success() {
    let server = server_with_role().await;
    let jwt = service_account_jwt("shop", "checkout", server.now() + Duration::from_secs(3600));
    let base = settings(&server, "unused");
    let identities = Identities::default();
    let mut late_role = identity(&server);
    late_role.role = "late".to_string();
    let session = identities
        .session(&late_role, "pod-1", &base, store_token(&jwt))
        .await
        .unwrap();
    assert_eq!(server.request_count("POST", LOGIN), 1);

    // The operator creates the missing role; the next request after the pause logs in.
    server
        .root()
        .add_kubernetes_role(
            "kubernetes",
            "late",
            KubernetesRole::new(&["checkout"], &["shop"], &["shop-read"]),
        )
        .unwrap();
    let text = "vault:secret/data/shop/db#password";
    assert!(resolve(&session.backend, text).await.is_err());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(resolve(&session.backend, text).await, Ok("pw-1".into()));
    assert_eq!(server.request_count("POST", LOGIN), 2);
}

#[tokio::test]
async fn refused_reads_cached_briefly() {
    let server = server_with_role().await;
    server
        .root()
        .kv2_put("secret", "other/db", json!({"password": "pw-2"}))
        .unwrap();
    let jwt = service_account_jwt("shop", "checkout", server.now() + Duration::from_secs(3600));
    let base = settings(&server, "unused");
    let identities = Identities::default();
    let mut short_ttl = identity(&server);
    short_ttl.cache_ttl = Duration::from_secs(1);
    let session = identities
        .session(&short_ttl, "pod-1", &base, store_token(&jwt))
        .await
        .unwrap();

    let missing = "vault:secret/data/shop/missing#k";
    let forbidden = "vault:secret/data/other/db#password";
    for _ in 0..100 {
        let result = resolve(&session.backend, missing).await;
        assert!(
            matches!(result, Err(VaultError::NotFound { .. })),
            "{result:?}"
        );
        let result = resolve(&session.backend, forbidden).await;
        assert!(
            matches!(result, Err(VaultError::PermissionDenied { .. })),
            "{result:?}"
        );
    }
    assert_eq!(server.request_count("GET", "secret/data/shop/missing"), 1);
    assert_eq!(server.request_count("GET", "secret/data/other/db"), 1);

    // A secret written after the read is served once the cached "not found" expires.
    server
        .root()
        .kv2_put("secret", "shop/missing", json!({"k": "v-1"}))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(resolve(&session.backend, missing).await, Ok("v-1".into()));
    assert_eq!(server.request_count("GET", "secret/data/shop/missing"), 2);
}
