//! The agent with `[backend] type = "http"` over a real Unix socket, against the in-repo HTTP
//! secrets test server. Covered: `envproxy:` references and bare names, key escaping, the cache
//! TTL and the response's `ttl`, rotation, 401, 403, 404, token files, TLS and status.

mod http_support;

use std::time::Duration;

use envproxy_agent::http_backend::AuthToken;
use envproxy_http_test_server::{ServerOptions, TokenAccess};
use envproxy_proto::{Request, Response};
use http_support::*;

#[tokio::test]
async fn reference_and_bare_name_resolve() {
    let token = random_secret();
    let server = start_server(&token).await;
    let secret = random_secret();
    server.set_secret("DB_PASSWORD", &secret);
    let agent = TestAgent::start(settings(&server, &token)).await;

    assert_eq!(found_text(agent.get_key("DB_PASSWORD").await), secret);
    let bare = agent
        .request(&Request::V1 {
            key: b"DB_PASSWORD".to_vec(),
        })
        .await;
    assert_eq!(found_text(bare), secret);
    assert_eq!(agent.get_key("NOT_SET").await, Response::NotFound);
    assert_eq!(agent.get("PATH", "/usr/bin").await, Response::Passthrough);

    let requests = server.requests();
    assert!(requests.iter().all(|request| request.had_bearer_token));
    assert!(requests.iter().all(|request| request.method == "GET"));
    assert_eq!(requests[0].path, "/v1/env/DB_PASSWORD");
    // The bare-name request was served from the cache.
    assert_eq!(server.request_count("DB_PASSWORD"), 1);
    agent.stop().await;
}

#[tokio::test]
async fn key_is_one_escaped_path_segment() {
    let token = random_secret();
    let server = start_server(&token).await;
    server.set_secret("team/db password?x#y", "v-escaped");
    let agent = TestAgent::start(settings(&server, &token)).await;

    let response = agent.get_key("team/db password?x#y").await;
    assert_eq!(found_text(response), "v-escaped");
    let requests = server.requests();
    assert_eq!(requests[0].path, "/v1/env/team%2Fdb%20password%3Fx%23y");
    assert_eq!(requests[0].key.as_deref(), Some("team/db password?x#y"));

    let dots = error_text(agent.get_key("..").await);
    assert!(dots.contains("`..` cannot be requested"), "{dots}");
    agent.stop().await;
}

#[tokio::test]
async fn answer_ttl_bounds_the_cache() {
    let token = random_secret();
    let server = start_server(&token).await;
    server.set_secret_with_ttl("SHORT", "short-1", 1);
    server.set_secret("LONG", "long-1");
    let mut http = settings(&server, &token);
    http.cache_ttl = Duration::from_secs(60);
    let agent = TestAgent::start(http).await;

    assert_eq!(found_text(agent.get_key("SHORT").await), "short-1");
    assert_eq!(found_text(agent.get_key("LONG").await), "long-1");
    server.set_secret_with_ttl("SHORT", "short-2", 1);
    server.set_secret("LONG", "long-2");
    assert_eq!(found_text(agent.get_key("SHORT").await), "short-1");
    assert_eq!(server.request_count("SHORT"), 1);

    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(found_text(agent.get_key("SHORT").await), "short-2");
    assert_eq!(server.request_count("SHORT"), 2);
    // Without a ttl in the response the configured 60 s apply.
    assert_eq!(found_text(agent.get_key("LONG").await), "long-1");
    assert_eq!(server.request_count("LONG"), 1);
    agent.stop().await;
}

#[tokio::test]
async fn rotation_seen_within_cache_ttl() {
    let token = random_secret();
    let server = start_server(&token).await;
    server.set_secret("API_KEY", "before");
    let mut http = settings(&server, &token);
    http.cache_ttl = Duration::from_secs(1);
    let agent = TestAgent::start(http).await;

    assert_eq!(found_text(agent.get_key("API_KEY").await), "before");
    server.set_secret("API_KEY", "after");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut seen = String::new();
    while tokio::time::Instant::now() < deadline {
        seen = found_text(agent.get_key("API_KEY").await);
        if seen == "after" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "after");

    // A key removed from the API is reported as not found once the TTL has passed.
    server.remove_secret("API_KEY");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(agent.get_key("API_KEY").await, Response::NotFound);
    agent.stop().await;
}

#[tokio::test]
async fn not_found_is_cached_for_the_ttl() {
    let token = random_secret();
    let server = start_server(&token).await;
    let mut http = settings(&server, &token);
    http.cache_ttl = Duration::from_secs(60);
    let agent = TestAgent::start(http).await;

    for _ in 0..3 {
        let bare = agent
            .request(&Request::V1 {
                key: b"LANG".to_vec(),
            })
            .await;
        assert_eq!(bare, Response::NotFound);
    }
    assert_eq!(server.request_count("LANG"), 1);
    agent.stop().await;
}

#[tokio::test]
async fn unauthorized_and_forbidden_tokens() {
    let token = random_secret();
    let server = start_server(&token).await;
    server.set_secret("DB_PASSWORD", "v");
    let wrong = random_secret();
    let unknown_agent = TestAgent::start(settings(&server, &wrong)).await;
    let error = error_text(unknown_agent.get("DB", "envproxy:DB_PASSWORD").await);
    assert!(error.starts_with("DB: "), "{error}");
    assert!(error.contains("rejected the token (HTTP 401"), "{error}");
    assert!(error.contains("/v1/env/DB_PASSWORD"), "{error}");
    assert!(error.contains("auth_token_file"), "{error}");
    assert!(!error.contains(&wrong), "{error}");
    unknown_agent.stop().await;

    let forbidden = random_secret();
    server.add_token(&forbidden, TokenAccess::Forbidden);
    let forbidden_agent = TestAgent::start(settings(&server, &forbidden)).await;
    let error = error_text(forbidden_agent.get("DB", "envproxy:DB_PASSWORD").await);
    assert!(
        error.contains("permission denied reading `DB_PASSWORD`"),
        "{error}"
    );
    assert!(error.contains("HTTP 403"), "{error}");
    assert!(error.contains("/v1/env/DB_PASSWORD"), "{error}");
    assert!(!error.contains(&forbidden), "{error}");
    let status = forbidden_agent.status().await;
    let last_error = status.http.unwrap().last_error.unwrap();
    assert!(last_error.contains("HTTP 403"), "{last_error}");
    forbidden_agent.stop().await;
}

#[tokio::test]
async fn token_file_is_read_per_request() {
    let first = random_secret();
    let server = start_server(&first).await;
    server.set_secret("A", "a");
    server.set_secret("B", "b");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{first}\n")).unwrap();
    let mut http = settings(&server, "unused");
    http.auth_token = AuthToken::File(token_file.clone());
    let agent = TestAgent::start(http).await;
    assert_eq!(found_text(agent.get_key("A").await), "a");

    let second = random_secret();
    server.remove_token(&first);
    server.add_token(&second, TokenAccess::All);
    std::fs::write(&token_file, &second).unwrap();
    assert_eq!(found_text(agent.get_key("B").await), "b");

    std::fs::remove_file(&token_file).unwrap();
    let error = error_text(agent.get_key("C").await);
    assert!(error.contains("cannot use `auth_token_file`"), "{error}");
    assert!(error.contains(&token_file.display().to_string()), "{error}");
    let status = agent.status().await.http.unwrap();
    assert_eq!(
        status.auth,
        format!("auth_token_file {}", token_file.display())
    );
    agent.stop().await;
}

#[tokio::test]
async fn multiline_token_file_is_config_error() {
    let token = random_secret();
    let server = start_server(&token).await;
    server.set_secret("A", "a");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let second_line = random_secret();
    std::fs::write(&token_file, format!("{token}\n{second_line}\n")).unwrap();
    let mut http = settings(&server, "unused");
    http.auth_token = AuthToken::File(token_file.clone());

    let Err(error) = envproxy_agent::http_backend::HttpBackend::start(http.clone()) else {
        panic!("a token file of two lines was accepted at start");
    };
    let error = error.to_string();
    assert!(error.contains("`auth_token_file`"), "{error}");
    assert!(error.contains("line break"), "{error}");
    assert!(!error.contains(&token), "the token was printed: {error}");
    assert!(
        !error.contains(&second_line),
        "the token was printed: {error}"
    );

    // A file rewritten while the agent runs is a config error, not an outage.
    std::fs::write(&token_file, &token).unwrap();
    let agent = TestAgent::start(http).await;
    assert_eq!(found_text(agent.get_key("A").await), "a");
    std::fs::write(&token_file, format!("{token}\u{7}\n")).unwrap();
    let error = error_text(agent.get_key("B").await);
    assert!(error.contains("`auth_token_file`"), "{error}");
    assert!(error.contains("control character"), "{error}");
    assert!(!error.contains("unavailable"), "{error}");
    assert!(!error.contains(&token), "the token was printed: {error}");
    let status = agent.status().await.http.unwrap();
    assert_eq!(status.stale_served, 0, "{status:?}");
    agent.stop().await;
}

#[tokio::test]
async fn tls_with_and_without_ca_cert() {
    let token = random_secret();
    let server = start_server_with(
        &token,
        ServerOptions {
            tls: true,
            ..ServerOptions::default()
        },
    )
    .await;
    server.set_secret("A", "over-tls");

    let untrusted = TestAgent::start(settings(&server, &token)).await;
    let error = error_text(untrusted.get_key("A").await);
    assert!(error.contains("TLS connection"), "{error}");
    assert!(error.contains("`ca_cert`"), "{error}");
    untrusted.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, server.ca_cert_pem().unwrap()).unwrap();
    let mut http = settings(&server, &token);
    http.ca_cert = Some(ca_path);
    let trusted = TestAgent::start(http).await;
    assert_eq!(found_text(trusted.get_key("A").await), "over-tls");
    trusted.stop().await;
}

#[tokio::test]
async fn status_reports_url_and_cache_without_token() {
    let token = random_secret();
    let server = start_server(&token).await;
    server.set_secret("A", "a");
    let agent = TestAgent::start(settings(&server, &token)).await;
    agent.get_key("A").await;
    agent.get_key("A").await;

    let status = agent.status().await;
    let backend = status.backend.clone().expect("a backend object");
    assert_eq!(backend.kind, "http");
    assert_eq!(backend.url.as_deref(), Some(&*server.url()));
    assert_eq!(backend.path, None);
    assert!(!backend.keys_listed);
    assert!(status.keys.is_empty());
    let http = status.http.clone().expect("an http object");
    assert_eq!(http.url, server.url());
    assert_eq!(http.auth, "auth_token");
    assert_eq!(http.cache_entries, 1);
    assert_eq!(http.cache_hits, 1);
    assert_eq!(http.cache_misses, 1);
    assert_eq!(http.stale_served, 0);
    assert_eq!(http.last_error, None);
    let json = serde_json::to_string(&status).unwrap();
    assert!(!json.contains(&token), "{json}");
    agent.stop().await;
}

#[tokio::test]
async fn cache_is_bounded_by_max_entries() {
    let token = random_secret();
    let server = start_server(&token).await;
    for index in 0..200 {
        server.set_secret(&format!("KEY_{index}"), "v");
    }
    let mut http = settings(&server, &token);
    http.max_entries = 20;
    let agent = TestAgent::start(http).await;
    for index in 0..200 {
        assert_eq!(
            found_text(agent.get_key(&format!("KEY_{index}")).await),
            "v"
        );
    }
    let entries = agent.status().await.http.unwrap().cache_entries;
    assert!(entries <= 20, "{entries} entries cached");
    assert!(entries > 0);
    agent.stop().await;
}
