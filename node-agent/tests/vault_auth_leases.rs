//! Vault logins and leases: token lookup, renewal and expiry warnings, Kubernetes login with a
//! service account JWT and a new login after a 403, and dynamic secrets whose leases are kept,
//! renewed, or replaced when they end.

mod vault_support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envproxy_agent::vault::{
    AuthSettings, JwtFile, JwtSource, KubernetesAuth, SecretText, TokenSource, VaultBackend,
    VaultError,
};
use envproxy_vault_test_server::{
    service_account_jwt, Capability, DatabaseRole, KubernetesRole, Policy, ServerOptions,
    TokenSpec, VaultTestServer,
};
use serde_json::json;
use vault_support::{resolve, settings, start_server, LogCapture};

fn renew_self_count(server: &VaultTestServer) -> u64 {
    server
        .request_counts()
        .iter()
        .filter(|((method, path), _)| method == "POST" && path.ends_with("auth/token/renew-self"))
        .map(|(_, count)| count)
        .sum()
}

#[tokio::test]
async fn token_lookup_at_start() {
    let server = start_server(ServerOptions::default()).await;
    let token = server
        .create_token(TokenSpec::new(&["default"]).ttl(Duration::from_secs(3600)))
        .unwrap()
        .token;
    let backend = VaultBackend::start(settings(&server, &token))
        .await
        .unwrap();
    assert_eq!(server.request_count("GET", "auth/token/lookup-self"), 1);
    let status = backend.status();
    assert!(status.logged_in);
    assert!(status.token_renewable);
    let ttl = status.token_ttl_secs.unwrap();
    assert!((3590..=3600).contains(&ttl), "{ttl}");
    assert_eq!(status.auth_method, "token");
}

#[tokio::test]
async fn token_renewed_at_two_thirds() {
    let (logs, _guard) = LogCapture::install();
    let server = start_server(ServerOptions::default()).await;
    let token = server
        .create_token(TokenSpec::new(&["default"]).ttl(Duration::from_secs(3)))
        .unwrap()
        .token;
    let backend = VaultBackend::start(settings(&server, &token))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        renew_self_count(&server),
        0,
        "renewed before 2/3 of the TTL"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(renew_self_count(&server), 1);
    assert!(server.token_is_live(&token));

    // The renewed token outlives its original 3 s TTL.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(server.token_is_live(&token));
    assert!(backend.status().token_ttl_secs.is_some());
    assert!(
        logs.text().contains("renewed the Vault token"),
        "{}",
        logs.text()
    );
    logs.assert_free_of(&[&token]);
}

#[tokio::test]
async fn unrenewable_token_warns_then_expires() {
    let (logs, _guard) = LogCapture::install();
    let server = start_server(ServerOptions::default()).await;
    let token = server
        .create_token(
            TokenSpec::new(&["default"])
                .ttl(Duration::from_secs(2))
                .renewable(false),
        )
        .unwrap()
        .token;
    let backend = VaultBackend::start(settings(&server, &token))
        .await
        .unwrap();
    assert!(!backend.status().token_renewable);
    tokio::task::yield_now().await;
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("cannot be renewed and will expire"), "{text}");
    assert!(text.contains("expires_at="), "{text}");

    tokio::time::sleep(Duration::from_millis(2300)).await;
    let text = logs.text();
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("the Vault token has expired"), "{text}");
    assert_eq!(renew_self_count(&server), 0);

    let error = resolve(&backend, "vault:secret/data/app#password")
        .await
        .unwrap_err();
    assert!(
        matches!(error, VaultError::InvalidToken { .. }),
        "{error:?}"
    );
    logs.assert_free_of(&[&token]);
}

/// Sets up Kubernetes auth: role `app` for service account `app-sa` in `default`, with a
/// policy that reads `secret/data/*` and tokens whose max TTL is four times `ttl`.
fn kubernetes_role(server: &VaultTestServer, ttl: Duration) {
    kubernetes_role_with_max(server, ttl, ttl * 4);
}

fn kubernetes_role_with_max(server: &VaultTestServer, ttl: Duration, max_ttl: Duration) {
    let root = server.root();
    root.set_policy(
        "app-read",
        Policy::new().allow("secret/data/*", &[Capability::Read]),
    );
    root.add_kubernetes_role(
        "kubernetes",
        "app",
        KubernetesRole::new(&["app-sa"], &["default"], &["app-read"]).with_ttl(ttl, max_ttl),
    )
    .unwrap();
    root.kv2_put("secret", "app", json!({"password": "k8s-pw"}))
        .unwrap();
}

#[tokio::test]
async fn kubernetes_login_with_jwt_file() {
    let (logs, _guard) = LogCapture::install();
    let server = start_server(ServerOptions::default()).await;
    kubernetes_role(&server, Duration::from_secs(3600));
    let jwt = service_account_jwt(
        "default",
        "app-sa",
        server.now() + Duration::from_secs(3600),
    );
    let dir = tempfile::tempdir().unwrap();
    let jwt_path = dir.path().join("token");
    std::fs::write(&jwt_path, &jwt).unwrap();

    let mut k8s = settings(&server, "unused");
    k8s.auth = AuthSettings::Kubernetes {
        mount: "kubernetes".into(),
        role: "app".into(),
        jwt_path,
    };
    let backend = VaultBackend::start(k8s).await.unwrap();
    assert_eq!(server.request_count("POST", "auth/kubernetes/login"), 1);
    assert_eq!(
        resolve(&backend, "vault:secret/data/app#password").await,
        Ok("k8s-pw".into())
    );
    let status = backend.status();
    assert_eq!(status.auth_method, "kubernetes");
    assert!(status.token_renewable);
    logs.assert_free_of(&[&jwt, "k8s-pw"]);
}

#[tokio::test]
async fn kubernetes_login_rejected_for_other_account() {
    let server = start_server(ServerOptions::default()).await;
    kubernetes_role(&server, Duration::from_secs(3600));
    let jwt = service_account_jwt(
        "default",
        "intruder",
        server.now() + Duration::from_secs(3600),
    );
    let auth = KubernetesAuth {
        mount: "kubernetes".into(),
        role: "app".into(),
        jwt: Arc::new(MemoryJwt(jwt)),
    };
    let backend = VaultBackend::start_with_auth(settings(&server, "unused"), Arc::new(auth))
        .await
        .unwrap();
    let error = resolve(&backend, "vault:secret/data/app#password")
        .await
        .unwrap_err();
    assert!(matches!(error, VaultError::LoginFailed { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("auth/kubernetes/login"), "{message}");
    assert!(
        message.contains("service account name not authorized"),
        "{message}"
    );
}

#[tokio::test]
async fn missing_jwt_file_is_named() {
    let server = start_server(ServerOptions::default()).await;
    let auth = KubernetesAuth {
        mount: "kubernetes".into(),
        role: "app".into(),
        jwt: Arc::new(JwtFile("/nonexistent/token".into())),
    };
    let backend = VaultBackend::start_with_auth(settings(&server, "unused"), Arc::new(auth))
        .await
        .unwrap();
    let error = resolve(&backend, "vault:secret/data/app#password")
        .await
        .unwrap_err();
    assert!(matches!(error, VaultError::JwtFile { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/token"), "{error}");
}

/// A JWT held in memory, as a node agent would supply one it read for a pod.
struct MemoryJwt(String);

impl JwtSource for MemoryJwt {
    fn jwt(&self) -> Result<SecretText, VaultError> {
        Ok(SecretText::new(self.0.clone()))
    }

    fn describe(&self) -> String {
        "JWT in memory".to_string()
    }
}

/// A JWT minted at each login from the server's clock, as the kubelet rotates a projected
/// service account token.
struct RotatingJwt(Arc<VaultTestServer>);

impl JwtSource for RotatingJwt {
    fn jwt(&self) -> Result<SecretText, VaultError> {
        let expires_at = self.0.now() + Duration::from_secs(3600);
        Ok(SecretText::new(service_account_jwt(
            "default", "app-sa", expires_at,
        )))
    }

    fn describe(&self) -> String {
        "JWT minted per login".to_string()
    }
}

#[tokio::test]
async fn kubernetes_logs_in_again_after_403() {
    let server = Arc::new(start_server(ServerOptions::default().with_frozen_clock()).await);
    kubernetes_role(&server, Duration::from_secs(3600));
    let auth = KubernetesAuth {
        mount: "kubernetes".into(),
        role: "app".into(),
        jwt: Arc::new(RotatingJwt(Arc::clone(&server))),
    };
    let backend = VaultBackend::start_with_auth(settings(&server, "unused"), Arc::new(auth))
        .await
        .unwrap();
    assert_eq!(server.request_count("POST", "auth/kubernetes/login"), 1);

    // Vault's clock passes the token's max TTL while the agent still counts it as valid, so
    // the next read is rejected with 403 and the agent must log in again.
    server.advance_clock(Duration::from_secs(5 * 3600));
    assert_eq!(
        resolve(&backend, "vault:secret/data/app#password").await,
        Ok("k8s-pw".into())
    );
    assert_eq!(server.request_count("POST", "auth/kubernetes/login"), 2);
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .filter(|request| request.path == "secret/data/app")
        .map(|request| request.status)
        .collect();
    assert_eq!(statuses, [403, 200]);
}

#[tokio::test]
async fn static_token_rejection_is_returned() {
    let server = start_server(ServerOptions::default()).await;
    let token = server
        .create_token(TokenSpec::new(&["default"]))
        .unwrap()
        .token;
    let backend = VaultBackend::start(settings(&server, &token))
        .await
        .unwrap();
    server.revoke_token(&token);
    let error = resolve(&backend, "vault:secret/data/app#password")
        .await
        .unwrap_err();
    assert!(
        matches!(error, VaultError::InvalidToken { .. }),
        "{error:?}"
    );
    // No login can replace a token from VAULT_TOKEN, so only the lookup at start was sent.
    assert_eq!(server.request_count("GET", "auth/token/lookup-self"), 1);
}

fn database_role(server: &VaultTestServer, role: DatabaseRole) {
    server
        .root()
        .add_database_role("database", "app", role)
        .unwrap();
}

#[tokio::test]
async fn dynamic_keys_come_from_one_lease() {
    let server = start_server(ServerOptions::default()).await;
    database_role(
        &server,
        DatabaseRole::new(Duration::from_secs(600), Duration::from_secs(3600)),
    );
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();
    let (username, password) = futures::join!(
        resolve(&backend, "vault:database/creds/app#username"),
        resolve(&backend, "vault:database/creds/app#password"),
    );
    let username = username.unwrap();
    assert!(username.starts_with("v-"), "{username}");
    assert_eq!(password.unwrap().len(), 20);
    assert_eq!(server.request_count("GET", "database/creds/app"), 1);
    assert_eq!(server.live_leases().len(), 1);
    assert_eq!(backend.status().live_leases, 1);
    // Later reads within the lease are served from it.
    assert_eq!(
        resolve(&backend, "vault:database/creds/app#username").await,
        Ok(username)
    );
    assert_eq!(server.request_count("GET", "database/creds/app"), 1);
}

#[tokio::test]
async fn renewable_lease_renewed_at_two_thirds() {
    let (logs, _guard) = LogCapture::install();
    let server = start_server(ServerOptions::default()).await;
    database_role(
        &server,
        DatabaseRole::new(Duration::from_secs(3), Duration::from_secs(60)),
    );
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();
    let username = resolve(&backend, "vault:database/creds/app#username")
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(server.request_count("PUT", "sys/leases/renew"), 0);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(server.request_count("PUT", "sys/leases/renew"), 1);

    // Past the original 3 s lease the same credentials are served, from the renewed lease.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        resolve(&backend, "vault:database/creds/app#username").await,
        Ok(username)
    );
    assert_eq!(server.request_count("GET", "database/creds/app"), 1);
    assert_eq!(server.live_leases().len(), 1);
    let text = logs.text();
    assert!(text.contains("renewed lease"), "{text}");
    assert!(text.contains("database/creds/app/"), "{text}");
    let lease_id = &server.live_leases()[0].lease_id;
    logs.assert_free_of(&[lease_id]);
}

#[tokio::test]
async fn unrenewable_lease_read_again_at_end() {
    let server = start_server(ServerOptions::default()).await;
    database_role(
        &server,
        DatabaseRole::new(Duration::from_secs(2), Duration::from_secs(2)).renewable(false),
    );
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();
    let first = resolve(&backend, "vault:database/creds/app#username")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        resolve(&backend, "vault:database/creds/app#username").await,
        Ok(first.clone())
    );

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = resolve(&backend, "vault:database/creds/app#username")
        .await
        .unwrap();
    assert_ne!(first, second, "credentials were served past their lease");
    assert_eq!(server.request_count("GET", "database/creds/app"), 2);
    assert_eq!(server.request_count("PUT", "sys/leases/renew"), 0);
}

#[tokio::test]
async fn ended_lease_is_not_served_stale() {
    let server = start_server(ServerOptions::default()).await;
    database_role(
        &server,
        DatabaseRole::new(Duration::from_secs(1), Duration::from_secs(1)).renewable(false),
    );
    let mut long_stale = settings(&server, server.root_token());
    long_stale.max_stale = Duration::from_secs(3600);
    let backend = VaultBackend::start(long_stale).await.unwrap();
    resolve(&backend, "vault:database/creds/app#username")
        .await
        .unwrap();
    server.stop_listening().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let error = resolve(&backend, "vault:database/creds/app#username")
        .await
        .unwrap_err();
    assert!(
        matches!(error, VaultError::ConnectionRefused { .. }),
        "{error:?}"
    );
    assert_eq!(backend.status().stale_served, 0);
}

#[tokio::test]
async fn shutdown_revokes_live_leases() {
    let server = start_server(ServerOptions::default()).await;
    database_role(
        &server,
        DatabaseRole::new(Duration::from_secs(600), Duration::from_secs(3600)),
    );
    let mut revoking = settings(&server, server.root_token());
    revoking.revoke_on_shutdown = true;
    let backend = VaultBackend::start(revoking).await.unwrap();
    resolve(&backend, "vault:database/creds/app#username")
        .await
        .unwrap();
    let lease_id = server.live_leases()[0].lease_id.clone();
    backend.shutdown().await;
    assert!(server.live_leases().is_empty());
    let revoked = server.revoked_leases();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].lease_id, lease_id);
    assert!(revoked[0].at <= SystemTime::now() + Duration::from_secs(1));
}

#[tokio::test]
async fn token_read_from_token_file() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "file-token-pw"}))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join(".vault-token");
    std::fs::write(&token_file, format!("{}\n", server.root_token())).unwrap();
    let mut from_file = settings(&server, "unused");
    from_file.auth = AuthSettings::Token(TokenSource::File(token_file));
    let backend = VaultBackend::start(from_file).await.unwrap();
    assert_eq!(
        resolve(&backend, "vault:secret/data/app#password").await,
        Ok("file-token-pw".into())
    );

    let mut missing = settings(&server, "unused");
    missing.auth = AuthSettings::Token(TokenSource::File(dir.path().join("absent")));
    let backend = VaultBackend::start(missing).await.unwrap();
    let error = resolve(&backend, "vault:secret/data/app#password")
        .await
        .unwrap_err();
    assert_eq!(error, VaultError::NoToken);
    assert!(error.to_string().contains("VAULT_TOKEN"), "{error}");
}

#[tokio::test]
async fn kubernetes_logs_in_again_before_max_ttl() {
    let (logs, _guard) = LogCapture::install();
    let server = Arc::new(start_server(ServerOptions::default()).await);
    kubernetes_role_with_max(&server, Duration::from_secs(3), Duration::from_secs(4));
    let auth = KubernetesAuth {
        mount: "kubernetes".into(),
        role: "app".into(),
        jwt: Arc::new(RotatingJwt(Arc::clone(&server))),
    };
    let backend = VaultBackend::start_with_auth(settings(&server, "unused"), Arc::new(auth))
        .await
        .unwrap();

    // At 2 s the renewal is capped at the 4 s max TTL, so the agent logs in again at 2/3 of
    // the remaining 2 s, before the first token expires.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(renew_self_count(&server), 1);
    assert_eq!(server.request_count("POST", "auth/kubernetes/login"), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(server.request_count("POST", "auth/kubernetes/login"), 2);
    let text = logs.text();
    let max_ttl = text
        .lines()
        .find(|line| line.contains("reached its maximum TTL"))
        .unwrap_or_else(|| panic!("no maximum TTL line: {text}"));
    // A login before the expiry is routine for an auth method that can log in again.
    assert!(max_ttl.contains("INFO"), "{max_ttl}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        resolve(&backend, "vault:secret/data/app#password").await,
        Ok("k8s-pw".into())
    );
    let reads: Vec<u16> = server
        .requests()
        .iter()
        .filter(|request| request.path == "secret/data/app")
        .map(|request| request.status)
        .collect();
    assert_eq!(reads, [200]);
}

#[tokio::test]
async fn denied_path_does_not_repeat_logins() {
    let server = Arc::new(start_server(ServerOptions::default()).await);
    kubernetes_role(&server, Duration::from_secs(3600));
    server
        .root()
        .kv1_put("kv", "other-team", json!({"password": "theirs"}))
        .unwrap();
    let auth = KubernetesAuth {
        mount: "kubernetes".into(),
        role: "app".into(),
        jwt: Arc::new(RotatingJwt(Arc::clone(&server))),
    };
    let backend = VaultBackend::start_with_auth(settings(&server, "unused"), Arc::new(auth))
        .await
        .unwrap();
    for _ in 0..3 {
        let error = resolve(&backend, "vault:kv/other-team#password")
            .await
            .unwrap_err();
        assert_eq!(
            error,
            VaultError::PermissionDenied {
                path: "kv/other-team".into()
            }
        );
    }
    // The token is fresh and valid, so a denied path is the policy's decision. The denial is
    // cached for a few seconds, so the later requests do not read Vault either.
    assert_eq!(server.request_count("POST", "auth/kubernetes/login"), 1);
    assert_eq!(server.request_count("GET", "kv/other-team"), 1);
}
