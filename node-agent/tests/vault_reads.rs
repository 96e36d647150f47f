//! The Vault backend's reads and cache against the in-repo Vault test server: KV v2 latest and
//! pinned versions, KV v1, JSON values, namespaces, single flight, TTL expiry, and the errors
//! that Vault's responses map to.

mod vault_support;

use std::time::Duration;

use envproxy_agent::vault::{VaultBackend, VaultError};
use envproxy_vault_test_server::ServerOptions;
use serde_json::json;
use vault_support::{resolve, settings, start_server, token_reading, LogCapture};

#[tokio::test]
async fn kv2_latest_and_pinned_versions() {
    let server = start_server(ServerOptions::default()).await;
    let root = server.root();
    root.kv2_put("secret", "app", json!({"password": "first-pw"}))
        .unwrap();
    root.kv2_put(
        "secret",
        "app",
        json!({"password": "second-pw", "user": "svc"}),
    )
    .unwrap();
    let token = token_reading(&server, &["secret/data/*"]);
    let backend = VaultBackend::start(settings(&server, &token))
        .await
        .unwrap();

    assert_eq!(
        resolve(&backend, "vault:secret/data/app#password").await,
        Ok("second-pw".to_string())
    );
    assert_eq!(
        resolve(&backend, "vault:secret/data/app#user").await,
        Ok("svc".to_string())
    );
    assert_eq!(
        resolve(&backend, "vault:secret/data/app#password#1").await,
        Ok("first-pw".to_string())
    );
    // Two keys of one path and version cost one read; the pinned version is its own read.
    assert_eq!(server.request_count("GET", "secret/data/app"), 2);
}

#[tokio::test]
async fn kv1_read() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv1_put("kv", "legacy/db", json!({"password": "kv1-pw"}))
        .unwrap();
    let token = token_reading(&server, &["kv/*"]);
    let backend = VaultBackend::start(settings(&server, &token))
        .await
        .unwrap();
    assert_eq!(
        resolve(&backend, "vault:kv/legacy/db#password").await,
        Ok("kv1-pw".to_string())
    );
}

#[tokio::test]
async fn json_values_become_text() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put(
            "secret",
            "typed",
            json!({
                "port": 5432,
                "ratio": 0.5,
                "enabled": true,
                "nothing": null,
                "nested": {"host": "db", "replicas": [1, 2]},
                "list": ["a", "b"],
            }),
        )
        .unwrap();
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();
    let cases = [
        ("port", "5432"),
        ("ratio", "0.5"),
        ("enabled", "true"),
        ("nothing", ""),
        ("nested", r#"{"host":"db","replicas":[1,2]}"#),
        ("list", r#"["a","b"]"#),
    ];
    for (key, expected) in cases {
        let value = resolve(&backend, &format!("vault:secret/data/typed#{key}")).await;
        assert_eq!(value, Ok(expected.to_string()), "key {key}");
    }
}

#[tokio::test]
async fn namespace_header_selects_namespace() {
    let server = start_server(ServerOptions::default().with_namespace("team-a")).await;
    server
        .namespace("team-a")
        .unwrap()
        .kv2_put("secret", "app", json!({"password": "team-a-pw"}))
        .unwrap();
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "root-pw"}))
        .unwrap();

    let mut in_namespace = settings(&server, server.root_token());
    in_namespace.namespace = Some("team-a".to_string());
    let backend = VaultBackend::start(in_namespace).await.unwrap();
    assert_eq!(
        resolve(&backend, "vault:secret/data/app#password").await,
        Ok("team-a-pw".to_string())
    );
    let requests = server.requests();
    let read = requests
        .iter()
        .find(|request| request.path == "secret/data/app")
        .unwrap();
    assert_eq!(read.namespace, "team-a");

    let root_backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();
    assert_eq!(
        resolve(&root_backend, "vault:secret/data/app#password").await,
        Ok("root-pw".to_string())
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_read() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put("secret", "shared", json!({"password": "pw", "user": "u"}))
        .unwrap();
    // The read takes long enough that all 64 requests arrive while it is in flight.
    server.inject_latency("secret/data/shared", Duration::from_millis(300));
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();

    let requests = (0..64).map(|i| {
        let backend = backend.clone();
        let key = if i % 2 == 0 { "password" } else { "user" };
        async move { resolve(&backend, &format!("vault:secret/data/shared#{key}")).await }
    });
    let values = futures::future::join_all(requests).await;
    for (i, value) in values.iter().enumerate() {
        let expected = if i % 2 == 0 { "pw" } else { "u" };
        assert_eq!(value.as_deref(), Ok(expected), "request {i}");
    }
    assert_eq!(server.request_count("GET", "secret/data/shared"), 1);
    let status = backend.status();
    assert_eq!(status.cache_misses, 1);
    assert_eq!(status.cache_hits, 63);
}

#[tokio::test]
async fn expired_entry_is_read_again() {
    let server = start_server(ServerOptions::default()).await;
    let root = server.root();
    root.kv2_put("secret", "rotating", json!({"password": "old"}))
        .unwrap();
    let mut short = settings(&server, server.root_token());
    short.cache_ttl = Duration::from_millis(500);
    let backend = VaultBackend::start(short).await.unwrap();

    let reference = "vault:secret/data/rotating#password";
    assert_eq!(resolve(&backend, reference).await, Ok("old".to_string()));
    root.kv2_put("secret", "rotating", json!({"password": "new"}))
        .unwrap();
    assert_eq!(resolve(&backend, reference).await, Ok("old".to_string()));
    assert_eq!(server.request_count("GET", "secret/data/rotating"), 1);

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(resolve(&backend, reference).await, Ok("new".to_string()));
    assert_eq!(server.request_count("GET", "secret/data/rotating"), 2);
}

#[tokio::test]
async fn missing_key_is_named() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "pw", "other": "o"}))
        .unwrap();
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();
    let error = resolve(&backend, "vault:secret/data/app#missing")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        VaultError::KeyNotFound {
            path: "secret/data/app".into(),
            key: "missing".into()
        }
    );
    let message = error.to_string();
    assert!(message.contains("`missing`"), "{message}");
    assert!(!message.contains("password"), "{message}");
    assert!(!message.contains("other"), "{message}");
}

#[tokio::test]
async fn missing_path_and_unknown_mount() {
    let server = start_server(ServerOptions::default()).await;
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();

    let error = resolve(&backend, "vault:secret/data/nothing#k")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        VaultError::NotFound {
            path: "secret/data/nothing".into()
        }
    );
    let error = resolve(&backend, "vault:kv/nothing#k").await.unwrap_err();
    assert_eq!(
        error,
        VaultError::NotFound {
            path: "kv/nothing".into()
        }
    );
    let error = resolve(&backend, "vault:nomount/data/app#k")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        VaultError::UnknownMount {
            path: "nomount/data/app".into()
        }
    );
    assert!(error.to_string().contains("nomount/data/app"), "{error}");
}

#[tokio::test]
async fn permission_denied_names_path_and_policy() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put("secret", "other-team", json!({"password": "theirs"}))
        .unwrap();
    let token = token_reading(&server, &["secret/data/app"]);
    let backend = VaultBackend::start(settings(&server, &token))
        .await
        .unwrap();
    let error = resolve(&backend, "vault:secret/data/other-team#password")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        VaultError::PermissionDenied {
            path: "secret/data/other-team".into()
        }
    );
    let message = error.to_string();
    assert!(message.contains("secret/data/other-team"), "{message}");
    assert!(message.contains("`read`"), "{message}");
    assert!(!message.contains(&token), "{message}");
}

#[tokio::test]
async fn invalid_token_is_reported() {
    let (logs, _guard) = LogCapture::install();
    let server = start_server(ServerOptions::default()).await;
    let backend = VaultBackend::start(settings(&server, "hvs.not-a-real-token"))
        .await
        .unwrap();
    let error = resolve(&backend, "vault:secret/data/app#password")
        .await
        .unwrap_err();
    assert!(
        matches!(error, VaultError::InvalidToken { .. }),
        "expected an invalid token error, got {error:?}"
    );
    assert!(!backend.status().logged_in);
    logs.assert_free_of(&["hvs.not-a-real-token"]);
}

#[tokio::test]
async fn deleted_and_destroyed_versions() {
    let server = start_server(ServerOptions::default()).await;
    let root = server.root();
    for value in ["v1", "v2", "v3"] {
        root.kv2_put("secret", "versions", json!({"password": value}))
            .unwrap();
    }
    root.kv2_delete_versions("secret", "versions", &[1])
        .unwrap();
    root.kv2_destroy_versions("secret", "versions", &[2])
        .unwrap();
    let backend = VaultBackend::start(settings(&server, server.root_token()))
        .await
        .unwrap();

    let deleted = resolve(&backend, "vault:secret/data/versions#password#1")
        .await
        .unwrap_err();
    assert_eq!(
        deleted,
        VaultError::VersionDeleted {
            path: "secret/data/versions".into(),
            version: 1
        }
    );
    assert!(deleted.to_string().contains("deleted"), "{deleted}");
    let destroyed = resolve(&backend, "vault:secret/data/versions#password#2")
        .await
        .unwrap_err();
    assert_eq!(
        destroyed,
        VaultError::VersionDestroyed {
            path: "secret/data/versions".into(),
            version: 2
        }
    );
    assert_eq!(
        resolve(&backend, "vault:secret/data/versions#password").await,
        Ok("v3".to_string())
    );

    // Deleting the latest version makes the unpinned reference fail too.
    root.kv2_delete_versions("secret", "versions", &[3])
        .unwrap();
    let mut fresh_settings = settings(&server, server.root_token());
    fresh_settings.cache_ttl = Duration::ZERO;
    let uncached = VaultBackend::start(fresh_settings).await.unwrap();
    assert_eq!(
        resolve(&uncached, "vault:secret/data/versions#password").await,
        Err(VaultError::VersionDeleted {
            path: "secret/data/versions".into(),
            version: 3
        })
    );
}

#[tokio::test]
async fn values_and_tokens_stay_out_of_logs() {
    let (logs, _guard) = LogCapture::install();
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "do-not-log-me"}))
        .unwrap();
    let token = token_reading(&server, &["secret/data/*"]);
    let backend = VaultBackend::start(settings(&server, &token))
        .await
        .unwrap();
    assert_eq!(
        resolve(&backend, "vault:secret/data/app#password").await,
        Ok("do-not-log-me".to_string())
    );
    let _ = resolve(&backend, "vault:secret/data/app#absent").await;
    assert!(
        logs.text().contains("Vault login succeeded"),
        "{}",
        logs.text()
    );
    logs.assert_free_of(&["do-not-log-me", &token]);
}
