//! TLS, listener restarts, sealing, health codes, fault injection and request counting.

mod common;

use std::time::{Duration, Instant};

use common::{install_crypto_provider, keys, start_default, Api};
use envproxy_vault_test_server::{unrelated_ca_pem, NodeState, ServerOptions, VaultTestServer};
use serde_json::json;

#[tokio::test]
async fn tls_with_right_ca_succeeds() {
    let server = VaultTestServer::start(ServerOptions::default().with_tls())
        .await
        .unwrap();
    assert!(server.url().starts_with("https://127.0.0.1:"));
    assert!(server
        .ca_cert_pem()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let api = Api::new(&server);
    let reply = api.get("auth/token/lookup-self", server.root_token()).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn tls_names_localhost_too() {
    let server = VaultTestServer::start(ServerOptions::default().with_tls())
        .await
        .unwrap();
    let api = Api::new(&server);
    let url = format!("https://localhost:{}/v1/sys/health", server.addr().port());
    let reply = api.client.get(url).send().await.unwrap();
    assert_eq!(reply.status(), 200);
}

#[tokio::test]
async fn tls_with_wrong_ca_fails_handshake() {
    install_crypto_provider();
    let server = VaultTestServer::start(ServerOptions::default().with_tls())
        .await
        .unwrap();
    let wrong = reqwest::Certificate::from_pem(unrelated_ca_pem().unwrap().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([wrong])
        .build()
        .unwrap();
    let error = client
        .get(format!("{}/v1/sys/health", server.url()))
        .send()
        .await
        .expect_err("a client that trusts another CA must fail");
    assert!(error.is_connect(), "{error:?}");
    let chain = format!("{error:?}");
    assert!(
        chain.contains("UnknownIssuer") || chain.contains("certificate"),
        "{chain}"
    );
}

#[tokio::test]
async fn plain_client_cannot_talk_to_tls_server() {
    let server = VaultTestServer::start(ServerOptions::default().with_tls())
        .await
        .unwrap();
    let api = Api::new(&server);
    let url = format!("http://{}/v1/sys/health", server.addr());
    let outcome = api.client.get(url).send().await;
    // The TLS listener never returns a Vault response to plain HTTP.
    assert!(outcome.is_err() || outcome.unwrap().status() != 200);
}

#[tokio::test]
async fn listener_restarts_on_same_port() {
    let server = start_default().await;
    server
        .root()
        .kv2_put("secret", "a", json!({ "k": "v" }))
        .unwrap();
    let api = Api::new(&server);
    let addr = server.addr();
    assert_eq!(
        api.get("secret/data/a", server.root_token()).await.status,
        200
    );

    server.stop_listening().await;
    assert!(!server.is_listening().await);
    let refused = api
        .client
        .get(format!("{}/v1/sys/health", server.url()))
        .send()
        .await;
    assert!(refused.expect_err("nothing listens").is_connect());

    server.start_listening().await.unwrap();
    assert_eq!(server.addr(), addr);
    let reply = api.get("secret/data/a", server.root_token()).await;
    assert_eq!(reply.status, 200, "state survives a restart");
    assert_eq!(reply.body["data"]["data"]["k"], "v");
}

#[tokio::test]
async fn sealed_server_returns_503() {
    let server = start_default().await;
    let api = Api::new(&server);
    server.seal();

    let reply = api.get("secret/data/a", server.root_token()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.errors(), ["Vault is sealed"]);
    let health = api.call("GET", "sys/health", None, None, None).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.body["sealed"], true);
    let status = api.call("GET", "sys/seal-status", None, None, None).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["sealed"], true);

    server.unseal();
    assert_eq!(
        api.get("auth/token/lookup-self", server.root_token())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn health_codes_follow_node_state() {
    let server = start_default().await;
    let api = Api::new(&server);
    let health = |query: &'static str| api.call("GET", query, None, None, None);

    let active = health("sys/health").await;
    assert_eq!(active.status, 200);
    for field in [
        "cluster_id",
        "cluster_name",
        "initialized",
        "performance_standby",
        "replication_dr_mode",
        "replication_performance_mode",
        "sealed",
        "server_time_utc",
        "standby",
        "version",
    ] {
        assert!(active.body.get(field).is_some(), "health lacks {field}");
    }

    let cases = [
        (NodeState::Standby, 429),
        (NodeState::PerformanceStandby, 473),
        (NodeState::DrSecondary, 472),
        (NodeState::Uninitialized, 501),
    ];
    for (state, code) in cases {
        server.set_node_state(state);
        assert_eq!(health("sys/health").await.status, code, "{state:?}");
    }
    server.set_node_state(NodeState::Standby);
    assert_eq!(health("sys/health?standbyok=true").await.status, 200);
    assert_eq!(health("sys/health?standbycode=299").await.status, 299);
    server.set_node_state(NodeState::Active);
    server.seal();
    assert_eq!(health("sys/health?sealedcode=200").await.status, 200);
    server.unseal();

    let head = api.call("HEAD", "sys/health", None, None, None).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.body, serde_json::Value::Null);
}

#[tokio::test]
async fn seal_status_has_documented_fields() {
    let server = start_default().await;
    let api = Api::new(&server);
    let reply = api.call("GET", "sys/seal-status", None, None, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        keys(&reply.body),
        [
            "build_date",
            "cluster_id",
            "cluster_name",
            "initialized",
            "migration",
            "n",
            "nonce",
            "progress",
            "recovery_seal",
            "sealed",
            "storage_type",
            "t",
            "type",
            "version"
        ]
    );
}

#[tokio::test]
async fn injected_failures_run_out() {
    let server = start_default().await;
    server
        .root()
        .kv2_put("secret", "a", json!({ "k": "v" }))
        .unwrap();
    let api = Api::new(&server);
    server.inject_failures("secret/", 2, 500);

    let first = api.get("secret/data/a", server.root_token()).await;
    assert_eq!(first.status, 500);
    assert_eq!(first.errors(), ["internal error"]);
    let unrelated = api.get("auth/token/lookup-self", server.root_token()).await;
    assert_eq!(unrelated.status, 200);
    assert_eq!(
        api.get("secret/data/a", server.root_token()).await.status,
        500
    );
    assert_eq!(
        api.get("secret/data/a", server.root_token()).await.status,
        200
    );
}

#[tokio::test]
async fn injected_rate_limit_matches_vault() {
    let server = start_default().await;
    let api = Api::new(&server);
    server.inject_failures("secret/data/", 1, 429);
    let reply = api.get("secret/data/hot", server.root_token()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.errors(),
        ["request path \"secret/data/hot\": rate limit quota exceeded"]
    );
    assert_eq!(reply.headers["retry-after"], "1");

    server.inject_failures("secret/", 1, 412);
    assert_eq!(
        api.get("secret/data/hot", server.root_token()).await.status,
        412
    );
    server.inject_failures_with_message("secret/", 1, 502, "upstream down");
    let custom = api.get("secret/data/hot", server.root_token()).await;
    assert_eq!(
        (custom.status, custom.errors()),
        (502, vec!["upstream down".to_owned()])
    );
}

#[tokio::test]
async fn injected_latency_delays_matching_paths() {
    let server = start_default().await;
    let api = Api::new(&server);
    server.inject_latency("auth/token/", Duration::from_millis(300));

    let started = Instant::now();
    assert_eq!(
        api.get("auth/token/lookup-self", server.root_token())
            .await
            .status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = Instant::now();
    api.call("GET", "sys/health", None, None, None).await;
    assert!(started.elapsed() < Duration::from_millis(300));

    server.clear_faults();
    let started = Instant::now();
    api.get("auth/token/lookup-self", server.root_token()).await;
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn requests_are_counted_per_method_and_path() {
    let server = start_default().await;
    server
        .root()
        .kv2_put("secret", "a", json!({ "k": "v" }))
        .unwrap();
    let api = Api::new(&server);
    for _ in 0..3 {
        api.get("secret/data/a", server.root_token()).await;
    }
    api.put("secret/data/a", server.root_token(), json!({ "data": {} }))
        .await;
    api.get("secret/data/a?version=1", server.root_token())
        .await;

    assert_eq!(server.request_count("GET", "secret/data/a"), 4);
    assert_eq!(server.request_count("PUT", "secret/data/a"), 1);
    assert_eq!(server.request_count("GET", "secret/data/b"), 0);
    let counts = server.request_counts();
    assert_eq!(counts[&("GET".to_owned(), "secret/data/a".to_owned())], 4);

    let log = server.requests();
    assert_eq!(log.len(), 5);
    assert_eq!(log[3].method, "PUT");
    assert_eq!(log[3].status, 200);
    assert!(log[0].token_accessor.is_some());
    server.clear_request_log();
    assert!(server.requests().is_empty());
}
