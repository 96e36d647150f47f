//! The HTTP backend when the API fails: 5xx, timeouts, stale values within `max_stale` and the
//! error after it, and bodies it cannot use. Also single flight under concurrent requests, and
//! a check that no value or token reaches an error or the log.

mod http_support;

use std::time::Duration;

use envproxy_http_test_server::Fault;
use envproxy_proto::Response;
use http_support::*;

#[tokio::test]
async fn server_error_names_status_and_path() {
    let token = random_secret();
    let server = start_server(&token).await;
    server.set_secret("DB_PASSWORD", "v");
    server.inject(Fault::Status(503));
    let agent = TestAgent::start(settings(&server, &token)).await;

    let error = error_text(agent.get("DB", "envproxy:DB_PASSWORD").await);
    assert!(
        error.starts_with("DB: the HTTP secrets API failed"),
        "{error}"
    );
    assert!(error.contains("HTTP 503"), "{error}");
    assert!(
        error.contains(&format!("GET {}/v1/env/DB_PASSWORD", server.url())),
        "{error}"
    );
    // An error is not cached: the next request reaches the API again.
    server.clear_faults();
    assert_eq!(found_text(agent.get_key("DB_PASSWORD").await), "v");
    assert_eq!(server.request_count("DB_PASSWORD"), 2);
    agent.stop().await;
}

#[tokio::test]
async fn slow_api_times_out() {
    let token = random_secret();
    let server = start_server(&token).await;
    server.set_secret("SLOW", "v");
    server.inject_for("SLOW", Fault::Delay(Duration::from_secs(2)));
    let mut http = settings(&server, &token);
    http.timeout = Duration::from_millis(200);
    let agent = TestAgent::start(http).await;

    let started = std::time::Instant::now();
    let error = error_text(agent.get_key("SLOW").await);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(error.contains("did not respond within 0.2s"), "{error}");
    assert!(error.contains("/v1/env/SLOW"), "{error}");
    agent.stop().await;
}

#[tokio::test]
async fn stale_value_within_max_stale_then_error() {
    let token = random_secret();
    let server = start_server(&token).await;
    let secret = random_secret();
    server.set_secret("API_KEY", &secret);
    let mut http = settings(&server, &token);
    http.cache_ttl = Duration::from_secs(1);
    http.max_stale = Duration::from_secs(2);
    http.timeout = Duration::from_millis(200);
    let agent = TestAgent::start(http).await;
    assert_eq!(found_text(agent.get_key("API_KEY").await), secret);

    // Past the TTL and within max_stale, a 5xx and then a timeout both serve the last value.
    server.inject(Fault::Status(502));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(found_text(agent.get_key("API_KEY").await), secret);
    server.clear_faults();
    server.inject(Fault::Delay(Duration::from_secs(1)));
    // The stale entry is served without a request for up to one second, so wait past that.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(found_text(agent.get_key("API_KEY").await), secret);
    let status = agent.status().await.http.unwrap();
    assert!(status.stale_served >= 2, "{status:?}");
    let last_error = status.last_error.unwrap();
    assert!(last_error.contains("did not respond"), "{last_error}");

    // Three seconds after the read, the TTL and max_stale have both passed.
    server.clear_faults();
    server.inject(Fault::Status(500));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let error = error_text(agent.get_key("API_KEY").await);
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(!error.contains(&secret), "{error}");

    // Once the API is back, the value is read again.
    server.clear_faults();
    assert_eq!(found_text(agent.get_key("API_KEY").await), secret);
    agent.stop().await;
}

#[tokio::test]
async fn permission_error_is_never_masked_by_stale_value() {
    let token = random_secret();
    let server = start_server(&token).await;
    server.set_secret("API_KEY", "v");
    let mut http = settings(&server, &token);
    http.cache_ttl = Duration::from_secs(1);
    let agent = TestAgent::start(http).await;
    assert_eq!(found_text(agent.get_key("API_KEY").await), "v");

    server.remove_token(&token);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let error = error_text(agent.get_key("API_KEY").await);
    assert!(error.contains("HTTP 401"), "{error}");
    agent.stop().await;
}

#[tokio::test]
async fn unusable_bodies_are_errors_without_values() {
    let token = random_secret();
    let server = start_server(&token).await;
    let secret = random_secret();
    server.set_secret("KEY", &secret);
    let agent = TestAgent::start(settings(&server, &token)).await;

    let cases = [
        (Fault::NotJson, "the body is not JSON"),
        (Fault::MissingValue, "the body has no `value` field"),
        (
            Fault::NonStringValue,
            "`value` is a number, expected a string",
        ),
    ];
    for (fault, expected) in cases {
        server.clear_faults();
        server.inject(fault.clone());
        let error = error_text(agent.get_key("KEY").await);
        assert!(error.contains("cannot use"), "{fault:?}: {error}");
        assert!(error.contains(expected), "{fault:?}: {error}");
        assert!(error.contains("/v1/env/KEY"), "{fault:?}: {error}");
        assert!(!error.contains(&secret), "{fault:?}: {error}");
    }

    server.clear_faults();
    server.set_json_value("NUMBER", serde_json::json!(4711));
    let error = error_text(agent.get_key("NUMBER").await);
    assert!(error.contains("`value` is a number"), "{error}");
    assert!(!error.contains("4711"), "{error}");
    agent.stop().await;
}

#[tokio::test]
async fn concurrent_requests_share_one_fetch() {
    let token = random_secret();
    let server = start_server(&token).await;
    let secret = random_secret();
    server.set_secret("SHARED", &secret);
    server.set_latency(Duration::from_millis(300));
    let agent = std::sync::Arc::new(TestAgent::start(settings(&server, &token)).await);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let agent = std::sync::Arc::clone(&agent);
        tasks.spawn(async move { agent.get_key("SHARED").await });
    }
    let mut answers = 0;
    while let Some(response) = tasks.join_next().await {
        assert_eq!(found_text(response.unwrap()), secret);
        answers += 1;
    }
    assert_eq!(answers, 64);
    assert_eq!(server.request_count("SHARED"), 1);

    // Concurrent requests that fail share one request too.
    server.inject_for("FAILING", Fault::Status(503));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let agent = std::sync::Arc::clone(&agent);
        tasks.spawn(async move { agent.get_key("FAILING").await });
    }
    while let Some(response) = tasks.join_next().await {
        let error = error_text(response.unwrap());
        assert!(error.contains("HTTP 503"), "{error}");
    }
    assert_eq!(server.request_count("FAILING"), 1);
    let agent = std::sync::Arc::into_inner(agent).expect("no task holds the agent");
    agent.stop().await;
}

#[tokio::test]
async fn secrets_never_in_log_or_errors() {
    let logs = capture_logs();
    let token = random_secret();
    let server = start_server(&token).await;
    let secret = random_secret();
    let other = random_secret();
    server.set_secret("API_KEY", &secret);
    server.set_secret_with_ttl("OTHER", &other, 1);
    let mut http = settings(&server, &token);
    http.cache_ttl = Duration::from_secs(1);
    http.max_stale = Duration::from_secs(1);
    http.timeout = Duration::from_millis(200);
    let agent = TestAgent::start(http).await;

    let mut errors = Vec::new();
    assert_eq!(found_text(agent.get_key("API_KEY").await), secret);
    assert_eq!(found_text(agent.get_key("OTHER").await), other);
    for fault in [
        Fault::NotJson,
        Fault::MissingValue,
        Fault::NonStringValue,
        Fault::Status(503),
        Fault::Delay(Duration::from_secs(1)),
    ] {
        server.clear_faults();
        server.inject(fault);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for key in ["API_KEY", "OTHER"] {
            if let Response::Error(reason) = agent.get_key(key).await {
                errors.push(reason);
            }
        }
    }
    server.clear_faults();
    server.remove_token(&token);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    errors.push(error_text(agent.get_key("API_KEY").await));
    let status = serde_json::to_string(&agent.status().await).unwrap();
    agent.stop().await;

    assert!(errors.len() >= 5, "{errors:?}");
    let log = logs.text();
    assert!(log.contains("HTTP secrets API is unavailable"), "{log}");
    for (origin, text) in [
        ("errors", errors.join("\n")),
        ("status", status),
        ("log", log),
    ] {
        for hidden in [&secret, &other, &token] {
            assert!(
                !text.contains(hidden.as_str()),
                "{origin} contains a secret: {text}"
            );
        }
    }
}

#[tokio::test]
async fn outage_log_without_cached_values() {
    let logs = capture_logs();
    let token = random_secret();
    let server = start_server(&token).await;
    server.inject(Fault::Status(503));
    let agent = TestAgent::start(settings(&server, &token)).await;
    let error = error_text(agent.get_key("FIRST").await);
    assert!(error.contains("HTTP 503"), "{error}");
    server.clear_faults();
    assert_eq!(agent.get_key("ABSENT").await, Response::NotFound);
    agent.stop().await;

    let log = logs.text();
    let first_url = format!("{}/v1/env/FIRST", server.url());
    let outage: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(&first_url))
        .collect();
    assert!(
        outage
            .iter()
            .any(|line| line.contains("no value is cached")),
        "{outage:#?}"
    );
    assert!(
        !outage
            .iter()
            .any(|line| line.contains("serving cached values")),
        "{outage:#?}"
    );
    let absent_url = format!("{}/v1/env/ABSENT", server.url());
    let not_found = log
        .lines()
        .find(|line| line.contains(&absent_url) && line.contains("DEBUG"));
    assert!(
        not_found.is_some_and(|line| line.contains("returned 404")),
        "no DEBUG line names {absent_url}"
    );
}
