//! The test server's contract, checked with a plain HTTP client: status codes, bodies, key
//! decoding, faults and the request log.

use std::time::Duration;

use envproxy_http_test_server::{Fault, HttpSecretsServer, ServerOptions, TokenAccess};
use serde_json::{json, Value};

const TOKEN: &str = "reader-token";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only(Vec::new())
        .build()
        .unwrap()
}

async fn get(server: &HttpSecretsServer, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client().get(format!("{}{path}", server.url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn started() -> HttpSecretsServer {
    let server = HttpSecretsServer::start().await.unwrap();
    server.add_token(TOKEN, TokenAccess::All);
    server
}

#[tokio::test]
async fn secret_body_with_and_without_ttl() {
    let server = started().await;
    server.set_secret("API_KEY", "k-1");
    server.set_secret_with_ttl("DB_PASSWORD", "p-1", 30);

    let (status, body) = get(&server, "/v1/env/API_KEY", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({ "key": "API_KEY", "value": "k-1" }));

    let (status, body) = get(&server, "/v1/env/DB_PASSWORD", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({ "key": "DB_PASSWORD", "value": "p-1", "ttl": 30 })
    );
}

#[tokio::test]
async fn token_checks_and_not_found() {
    let server = started().await;
    server.set_secret("API_KEY", "k-1");
    server.add_token("no-access", TokenAccess::Forbidden);
    server.add_token_for_keys("one-key", &["OTHER"]);

    assert_eq!(get(&server, "/v1/env/API_KEY", None).await.0, 401);
    assert_eq!(
        get(&server, "/v1/env/API_KEY", Some("unknown")).await.0,
        401
    );
    assert_eq!(
        get(&server, "/v1/env/API_KEY", Some("no-access")).await.0,
        403
    );
    assert_eq!(
        get(&server, "/v1/env/API_KEY", Some("one-key")).await.0,
        403
    );
    assert_eq!(get(&server, "/v1/env/OTHER", Some("one-key")).await.0, 404);
    assert_eq!(get(&server, "/v1/env/MISSING", Some(TOKEN)).await.0, 404);
    assert_eq!(get(&server, "/v1/other", Some(TOKEN)).await.0, 404);

    server.remove_token(TOKEN);
    assert_eq!(get(&server, "/v1/env/API_KEY", Some(TOKEN)).await.0, 401);
}

#[tokio::test]
async fn unauthorized_names_bearer_scheme() {
    let server = started().await;
    let response = client()
        .get(format!("{}/v1/env/API_KEY", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let challenge = response.headers().get("www-authenticate").unwrap();
    assert_eq!(challenge, "Bearer");
}

#[tokio::test]
async fn post_is_not_allowed() {
    let server = started().await;
    let response = client()
        .post(format!("{}/v1/env/API_KEY", server.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers().get("allow").unwrap(), "GET");
}

#[tokio::test]
async fn key_is_percent_decoded() {
    let server = started().await;
    server.set_secret("team/db password", "v");
    let (status, body) = get(&server, "/v1/env/team%2Fdb%20password", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.request_count("team/db password"), 1);
    let recorded = server.requests();
    assert_eq!(recorded[0].path, "/v1/env/team%2Fdb%20password");
    assert!(recorded[0].had_bearer_token);
    assert_eq!(recorded[0].status, 200);
}

#[tokio::test]
async fn injected_faults_shape_responses() {
    let server = started().await;
    server.set_secret("A", "a");
    server.set_secret("B", "b");

    server.inject_for("A", Fault::Status(503));
    assert_eq!(get(&server, "/v1/env/A", Some(TOKEN)).await.0, 503);
    assert_eq!(get(&server, "/v1/env/B", Some(TOKEN)).await.0, 200);
    // Outages come before the token check, as from a proxy in front of the service.
    assert_eq!(get(&server, "/v1/env/A", None).await.0, 503);
    server.clear_faults();

    server.inject(Fault::NotJson);
    let (status, body) = get(&server, "/v1/env/A", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    server.clear_faults();

    server.inject(Fault::MissingValue);
    let (_, body) = get(&server, "/v1/env/A", Some(TOKEN)).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body.get("value").is_none(), "{body}");
    server.clear_faults();

    server.inject(Fault::NonStringValue);
    let (_, body) = get(&server, "/v1/env/A", Some(TOKEN)).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["value"].is_number(), "{body}");
    server.clear_faults();

    assert_eq!(server.request_count("A"), 5);
    assert_eq!(server.request_count("B"), 1);
}

#[tokio::test]
async fn delay_fault_and_latency_wait() {
    let server = started().await;
    server.set_secret("A", "a");
    server.inject_for("A", Fault::Delay(Duration::from_millis(300)));
    server.set_latency(Duration::from_millis(100));
    let started_at = std::time::Instant::now();
    assert_eq!(get(&server, "/v1/env/A", Some(TOKEN)).await.0, 200);
    assert!(started_at.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn tls_server_trusts_its_ca() {
    let server = HttpSecretsServer::start_with(ServerOptions {
        tls: true,
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    server.add_token(TOKEN, TokenAccess::All);
    server.set_secret("A", "a");
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(server.ca_cert_pem().unwrap().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let response = client
        .get(format!("{}/v1/env/A", server.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}
