//! The admin API of a local-mode agent, over its Unix socket with a tonic client: status, cache
//! entries, flush, the audit stream, health, reflection, the JSON audit log, config reload, and
//! who may connect.

mod admin_support;
mod vault_support;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use admin_support::*;
use envproxy_admin_proto::v1 as pb;
use envproxy_agent::admin::AdminSettings;
use envproxy_agent::http_backend::{AuthToken, HttpSettings};
use envproxy_agent::vault::{AuthSettings, SecretText, TokenSource};
use envproxy_agent::{Agent, Config};
use envproxy_http_test_server::{HttpSecretsServer, TokenAccess};
use envproxy_proto::{Response, SecretBytes};
use envproxy_vault_test_server::{ServerOptions, VaultTestServer};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use vault_support::{settings, start_server, token_reading};

const DB_PATH: &str = "secret/data/app/config";
const DB_REFERENCE: &str = "vault:secret/data/app/config#password";

/// A local-mode agent served on the current runtime, with a secrets file holding `API_KEY`
/// and Vault holding `app/config`, each with a random secret.
struct TestAgent {
    dir: tempfile::TempDir,
    socket: PathBuf,
    admin_socket: PathBuf,
    /// The metrics listener's address, when the config turned it on.
    metrics: Option<SocketAddr>,
    /// The `[admin] health_listen` address, when the config turned it on.
    health: Option<SocketAddr>,
    file_secret: String,
    vault_secret: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestAgent {
    async fn start(server: &VaultTestServer, token: &str) -> TestAgent {
        TestAgent::start_with(server, token, |_| {}).await
    }

    async fn start_with(
        server: &VaultTestServer,
        token: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let file_secret = format!("file-{}", random_hex(24));
        let vault_secret = format!("vault-{}", random_hex(24));
        let secrets = dir.path().join("secrets.json");
        std::fs::write(&secrets, json!({ "API_KEY": file_secret }).to_string()).unwrap();
        server
            .root()
            .kv2_put("secret", "app/config", json!({ "password": vault_secret }))
            .unwrap();
        let socket = dir.path().join("agent.sock");
        let mut config = Config {
            socket: Some(socket.clone()),
            secrets_file: Some(secrets),
            vault: Some(settings(server, token)),
            admin: AdminSettings {
                enabled: Some(true),
                socket: None,
                health_listen: None,
            },
            ..Config::default()
        };
        adjust(&mut config);
        let agent = Agent::bind(config).await.unwrap();
        let admin_socket = agent.admin_socket_path().unwrap().to_path_buf();
        let metrics = agent.metrics_address();
        let health = agent.health_address();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.serve(async {
            let _ = stopped.await;
        }));
        TestAgent {
            dir,
            socket,
            admin_socket,
            metrics,
            health,
            file_secret,
            vault_secret,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn get(&self, name: &str, value: &str) -> Response {
        agent_request(&self.socket, &v2(name, value)).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("agent stops")
                .unwrap();
        }
    }
}

fn found(value: &str) -> Response {
    Response::Found(SecretBytes::from(value))
}

#[tokio::test]
async fn admin_socket_private_beside_agent() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;

    assert_eq!(
        agent.admin_socket,
        agent.dir.path().join("admin/admin.sock")
    );
    let directory = std::fs::metadata(agent.dir.path().join("admin")).unwrap();
    assert_eq!(directory.permissions().mode() & 0o777, 0o700);
    let socket = std::fs::metadata(&agent.admin_socket).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);
    assert_eq!(socket.uid(), nix::unistd::geteuid().as_raw());

    let admin_socket = agent.admin_socket.clone();
    agent.stop().await;
    assert!(!admin_socket.exists(), "admin socket removed at shutdown");
}

#[tokio::test]
async fn admin_socket_off_by_default_locally() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"A": "1"}"#).unwrap();
    let config = Config {
        socket: Some(dir.path().join("agent.sock")),
        secrets_file: Some(secrets),
        ..Config::default()
    };
    let agent = Agent::bind(config).await.unwrap();
    assert_eq!(agent.admin_socket_path(), None);
    assert!(!dir.path().join("admin").exists());
}

#[tokio::test]
async fn status_reports_vault_and_counts() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    assert_eq!(
        agent.get("KEY", "envproxy:MISSING").await,
        Response::NotFound
    );

    let mut client = admin_client(&agent.admin_socket).await;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.mode, "local");
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.node, "");
    assert!(!status.kube_watch_synced);
    assert!(status.serving);
    let counters = status.counters.unwrap();
    assert_eq!(counters.requests, 3);
    assert_eq!(counters.denials, 0);
    assert_eq!(counters.errors, 0);
    assert_eq!(status.vault.len(), 1);
    let vault = &status.vault[0];
    assert_eq!(vault.identity, format!("token auth at {}", server.url()));
    assert!(vault.logged_in);
    assert_eq!(vault.cache_entries, 1);
    assert_eq!(vault.cache_hits, 1);
    assert_eq!(vault.cache_misses, 1);
    let file = status.secrets_file.unwrap();
    assert_eq!(file.keys_loaded, 1);
    assert_eq!(file.last_reload_error, "");
    agent.stop().await;
}

#[tokio::test]
async fn cache_entries_without_values() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    for _ in 0..3 {
        assert_eq!(
            agent.get("DB", DB_REFERENCE).await,
            found(&agent.vault_secret)
        );
    }
    assert_eq!(
        agent
            .get("OLD", "vault:secret/data/app/config#password#1")
            .await,
        found(&agent.vault_secret)
    );

    let mut client = admin_client(&agent.admin_socket).await;
    let entries = client
        .list_cache_entries(pb::ListCacheEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 2, "{entries:?}");
    let latest = &entries[0];
    assert_eq!(latest.path, DB_PATH);
    assert_eq!(latest.version, None);
    assert_eq!(latest.hits, 2);
    assert!(latest.ttl_left_seconds <= 60, "{latest:?}");
    assert!(latest.ttl_left_seconds >= 50, "{latest:?}");
    assert!(latest.age_seconds <= 10, "{latest:?}");
    assert_eq!(latest.lease_end_unix_ms, None);
    assert!(!latest.stale);
    assert_eq!(latest.identity, format!("token auth at {}", server.url()));
    let pinned = &entries[1];
    assert_eq!(pinned.version, Some(1));
    assert_eq!(pinned.hits, 0);
    assert!(!format!("{entries:?}").contains(&agent.vault_secret));
    agent.stop().await;
}

#[tokio::test]
async fn flush_makes_next_request_read_vault() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    let reads = || server.request_count("GET", DB_PATH);
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    assert_eq!(reads(), 1, "the second request is served from the cache");

    let mut client = admin_client(&agent.admin_socket).await;
    let other_prefix = pb::FlushRequest {
        target: Some(pb::flush_request::Target::PathPrefix(
            "secret/data/other".into(),
        )),
    };
    let flushed = client.flush(other_prefix).await.unwrap().into_inner();
    assert_eq!(flushed.entries_flushed, 0);
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    assert_eq!(reads(), 1, "a flush of another prefix keeps the entry");

    let by_prefix = pb::FlushRequest {
        target: Some(pb::flush_request::Target::PathPrefix(
            "secret/data/app".into(),
        )),
    };
    let flushed = client.flush(by_prefix).await.unwrap().into_inner();
    assert_eq!(flushed.entries_flushed, 1);
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    assert_eq!(reads(), 2, "the request after a flush reads Vault");

    let identity = format!("token auth at {}", server.url());
    let by_identity = pb::FlushRequest {
        target: Some(pb::flush_request::Target::Identity(identity)),
    };
    let flushed = client.flush(by_identity).await.unwrap().into_inner();
    assert_eq!(flushed.entries_flushed, 1);
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    assert_eq!(
        reads(),
        3,
        "the request after an identity flush reads Vault"
    );
    agent.stop().await;
}

#[tokio::test]
async fn flush_rejects_bad_targets() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    let mut client = admin_client(&agent.admin_socket).await;

    let missing = client
        .flush(pb::FlushRequest { target: None })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);

    let unknown = pb::FlushRequest {
        target: Some(pb::flush_request::Target::Identity("nobody".into())),
    };
    let unknown = client.flush(unknown).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(unknown.message().contains("token auth at"), "{unknown:?}");
    assert!(
        unknown.message().contains("(cached reads: 0)"),
        "an identity without reads is listed with its count: {unknown:?}"
    );

    let by_pod = pb::FlushRequest {
        target: Some(pb::flush_request::Target::Pod("shop/web-0".into())),
    };
    let by_pod = client.flush(by_pod).await.unwrap_err();
    assert_eq!(by_pod.code(), tonic::Code::FailedPrecondition);
    assert!(by_pod.message().contains("node mode"), "{by_pod:?}");
    agent.stop().await;
}

#[tokio::test]
async fn watch_audit_streams_requests_without_values() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    let plain_secret = format!("plain-{}", random_hex(24));
    let mut client = admin_client(&agent.admin_socket).await;
    let mut stream = client
        .watch_audit(pb::WatchAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.counters.unwrap().audit_watchers, 1);

    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    assert_eq!(
        agent.get("TOKEN", "envproxy:API_KEY").await,
        found(&agent.file_secret)
    );
    assert_eq!(
        agent.get("PASSWORD", &plain_secret).await,
        Response::Passthrough
    );
    let Response::Error(invalid) = agent.get("BROKEN", "vault:secret/data/app").await else {
        panic!("expected an error for an invalid reference");
    };

    let mut events = Vec::new();
    for _ in 0..5 {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an audit event")
            .unwrap()
            .expect("the stream stays open");
        events.push(event);
    }
    let pid = std::process::id() as i32;
    for event in &events {
        assert_eq!(event.pid, pid);
        assert_eq!(event.pod, "");
        assert_eq!(event.dropped_before, 0);
        assert!(event.time_unix_ms > 0);
    }
    assert_eq!(events[0].variable, "DB");
    assert_eq!(events[0].reference, DB_REFERENCE);
    assert_eq!(events[0].decision, "found");
    assert_eq!(events[0].cache, "miss");
    assert_eq!(events[1].cache, "hit");
    assert_eq!(events[2].variable, "TOKEN");
    assert_eq!(events[2].reference, "envproxy:API_KEY");
    assert_eq!(events[2].decision, "found");
    assert_eq!(events[2].cache, "");
    assert_eq!(events[3].variable, "PASSWORD");
    assert_eq!(events[3].reference, "", "a plain value is never recorded");
    assert_eq!(events[3].decision, "passthrough");
    assert_eq!(events[4].decision, "error");
    assert_eq!(
        Some(events[4].reason.as_str()),
        invalid.strip_prefix("BROKEN: "),
        "the reason leaves out the variable name, which has its own field"
    );

    let output = format!("{events:?}");
    for secret in [&agent.vault_secret, &agent.file_secret, &plain_secret] {
        assert!(!output.contains(secret.as_str()), "{output}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn slow_watcher_loses_events_counted() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start_with(&server, server.root_token(), |config| {
        config.audit.buffer = 4;
    })
    .await;
    let channel = channel_with_window(&agent.admin_socket, 1024)
        .await
        .unwrap();
    let mut client = pb::admin_client::AdminClient::new(channel);
    let mut stream = client
        .watch_audit(pb::WatchAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    // The stream is not read while the agent responds to the requests, so once HTTP/2 flow control
    // stops the server from sending, the stream falls behind and loses events.
    const REQUESTS: u64 = 20_000;
    let responses = agent_requests(&agent.socket, &v2("TOKEN", "envproxy:API_KEY"), REQUESTS).await;
    assert!(responses
        .iter()
        .all(|response| *response == found(&agent.file_secret)));

    let mut received = 0;
    let mut dropped = 0;
    while received + dropped < REQUESTS {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an audit event")
            .unwrap()
            .unwrap();
        received += 1;
        dropped += event.dropped_before;
    }
    assert_eq!(
        received + dropped,
        REQUESTS,
        "every event is received or counted"
    );
    assert!(dropped > 0, "received {received} of {REQUESTS}");
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let counters = status.counters.unwrap();
    assert!(counters.audit_events_dropped >= dropped, "{counters:?}");
    assert_eq!(counters.requests, REQUESTS);
    agent.stop().await;
}

#[tokio::test]
async fn health_and_reflection_serve() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    let channel = channel(&agent.admin_socket).await.unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "envproxy.admin.v1.Admin"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"envproxy.admin.v1.Admin"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    agent.stop().await;
}

#[tokio::test]
async fn health_not_serving_without_vault_login() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, "not-a-valid-token").await;
    let mut health = HealthClient::new(channel(&agent.admin_socket).await.unwrap());
    let response = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status(), ServingStatus::NotServing);
    let mut client = admin_client(&agent.admin_socket).await;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.serving);
    assert!(!status.vault[0].logged_in);
    agent.stop().await;
}

#[tokio::test]
async fn status_shows_failed_vault_login() {
    let server = start_server(ServerOptions::default()).await;
    let wrong_token = format!("hvs.{}", random_hex(24));
    let agent = TestAgent::start(&server, &wrong_token).await;
    let mut client = admin_client(&agent.admin_socket).await;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let last_error = &status.vault[0].last_error;
    assert!(
        last_error.contains("auth/token/lookup-self"),
        "{last_error}"
    );
    assert!(last_error.contains("rejected"), "{last_error}");
    assert!(!last_error.contains(&wrong_token), "{last_error}");
    let reason = &status.not_serving_reason;
    assert!(reason.contains("not logged in to Vault"), "{reason}");
    assert!(!reason.contains(&wrong_token), "{reason}");
    agent.stop().await;
}

/// Returns the agent's `grpc.health.v1` status and the reason the admin API gives.
async fn health_and_reason(admin_socket: &Path) -> (ServingStatus, String) {
    let channel = channel(admin_socket).await.unwrap();
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let status = admin_client(admin_socket)
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    (response.status(), status.not_serving_reason)
}

/// Waits until the health status is `expected`, within `wait`, and returns the reason.
async fn wait_for_health(admin_socket: &Path, expected: ServingStatus, wait: Duration) -> String {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (status, reason) = health_and_reason(admin_socket).await;
        if status == expected {
            return reason;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health stayed {status:?} for {wait:?}, expected {expected:?}; reason: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Health bound: the updater runs every 0.5 s, and during an outage probes Vault every 5 s.
const HEALTH_FLIP: Duration = Duration::from_secs(2);
const HEALTH_RECOVERY: Duration = Duration::from_secs(8);

#[tokio::test]
async fn health_follows_stopped_vault() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_FLIP).await;

    server.stop_listening().await;
    let response = agent
        .get("OTHER", "vault:secret/data/app/other#password")
        .await;
    assert!(matches!(response, Response::Error(_)), "{response:?}");
    let reason = wait_for_health(&agent.admin_socket, ServingStatus::NotServing, HEALTH_FLIP).await;
    assert!(reason.contains("Vault has been unavailable"), "{reason}");
    assert!(reason.contains(&server.url()), "{reason}");

    // No request comes while Vault is back: the probe alone restores the status.
    server.start_listening().await.unwrap();
    let reason =
        wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_RECOVERY).await;
    assert_eq!(reason, "");
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    agent.stop().await;
}

/// Bound for health to recover after Vault was down when the agent started: the updater
/// probes `sys/health` every 5 s and logs in once the probe succeeds.
const HEALTH_RECOVERY_AFTER_START: Duration = Duration::from_secs(12);

#[tokio::test]
async fn health_recovers_vault_down_at_start() {
    let server = start_server(ServerOptions::default()).await;
    server.stop_listening().await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    let reason = wait_for_health(&agent.admin_socket, ServingStatus::NotServing, HEALTH_FLIP).await;
    assert!(reason.contains("not logged in to Vault"), "{reason}");
    assert!(reason.contains(&server.url()), "{reason}");

    // No request comes while Vault is back: the probe and the login it triggers restore it.
    server.start_listening().await.unwrap();
    let reason = wait_for_health(
        &agent.admin_socket,
        ServingStatus::Serving,
        HEALTH_RECOVERY_AFTER_START,
    )
    .await;
    assert_eq!(reason, "");
    let status = admin_client(&agent.admin_socket)
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.vault[0].logged_in);
    assert_eq!(
        agent.get("DB", DB_REFERENCE).await,
        found(&agent.vault_secret)
    );
    agent.stop().await;
}

/// Reads a reference not yet cached, so the request reaches Vault.
async fn read_uncached(agent: &TestAgent, server: &VaultTestServer, path: &str) -> Response {
    server
        .root()
        .kv2_put("secret", path, json!({ "password": "p" }))
        .unwrap();
    agent
        .get("OTHER", &format!("vault:secret/data/{path}#password"))
        .await
}

/// Returns the Vault status of the agent's only Vault backend.
async fn vault_status(admin_socket: &Path) -> pb::VaultSession {
    let status = admin_client(admin_socket)
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    status.vault[0].clone()
}

#[tokio::test]
async fn revoked_token_counts_as_logged_out() {
    capture_log();
    let server = start_server(ServerOptions::default()).await;
    let token = token_reading(&server, &["secret/data/app/*"]);
    let agent = TestAgent::start(&server, &token).await;
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_FLIP).await;
    assert_eq!(read_uncached(&agent, &server, "app/one").await, found("p"));

    assert!(server.revoke_token(&token));
    for path in ["app/two", "app/three", "app/four"] {
        let response = read_uncached(&agent, &server, path).await;
        let Response::Error(message) = &response else {
            panic!("expected an error, got {response:?}");
        };
        assert!(message.contains("rejected"), "{message}");
    }
    let reason = wait_for_health(&agent.admin_socket, ServingStatus::NotServing, HEALTH_FLIP).await;
    assert!(reason.contains("not logged in to Vault"), "{reason}");
    assert!(reason.contains("rejected"), "{reason}");
    let vault = vault_status(&agent.admin_socket).await;
    assert!(!vault.logged_in);
    assert!(
        vault.last_error.contains("rejected"),
        "{}",
        vault.last_error
    );
    assert!(!vault.last_error.contains(&token), "{}", vault.last_error);

    let warnings: Vec<String> = log_lines_with("Vault rejected the token of this identity")
        .into_iter()
        .filter(|line| line.contains(&server.url()))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(!warnings[0].contains(&token), "{}", warnings[0]);
    agent.stop().await;
}

#[tokio::test]
async fn rewritten_token_file_restores_login() {
    capture_log();
    let server = start_server(ServerOptions::default()).await;
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join(".vault-token");
    let first = token_reading(&server, &["secret/data/app/*"]);
    std::fs::write(&token_file, &first).unwrap();
    let file = token_file.clone();
    let agent = TestAgent::start_with(&server, "unused", move |config| {
        let vault = config.vault.as_mut().unwrap();
        vault.auth = AuthSettings::Token(TokenSource::File(file));
    })
    .await;
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_FLIP).await;

    assert!(server.revoke_token(&first));
    let response = read_uncached(&agent, &server, "app/two").await;
    assert!(matches!(response, Response::Error(_)), "{response:?}");
    let reason = wait_for_health(&agent.admin_socket, ServingStatus::NotServing, HEALTH_FLIP).await;
    assert!(reason.contains("not logged in to Vault"), "{reason}");
    assert!(!vault_status(&agent.admin_socket).await.logged_in);
    let warnings: Vec<String> = log_lines_with("Vault login after a rejected token failed")
        .into_iter()
        .filter(|line| line.contains(&server.url()))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");

    // A new token in the file, as `vault login` writes it, is used at the next request.
    let second = token_reading(&server, &["secret/data/app/*"]);
    std::fs::write(&token_file, &second).unwrap();
    assert_eq!(
        read_uncached(&agent, &server, "app/three").await,
        found("p")
    );
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_FLIP).await;
    assert!(vault_status(&agent.admin_socket).await.logged_in);
    agent.stop().await;
}

#[tokio::test]
async fn rejected_http_token_not_serving() {
    capture_log();
    let vault = start_server(ServerOptions::default()).await;
    let http = HttpSecretsServer::start().await.unwrap();
    let good_token = format!("good-{}", random_hex(16));
    let bad_token = format!("bad-{}", random_hex(16));
    let api_secret = random_hex(24);
    http.add_token(&good_token, TokenAccess::All);
    http.set_secret("API", &api_secret);
    let token = bad_token.clone();
    let http_url = http.url();
    let agent = TestAgent::start_with(&vault, vault.root_token(), move |config| {
        config.secrets_file = None;
        config.http = Some(HttpSettings::new(
            http_url,
            AuthToken::Value(Arc::new(SecretText::new(token))),
        ));
    })
    .await;
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_FLIP).await;

    for _ in 0..3 {
        let response = agent.get("API", "envproxy:API").await;
        let Response::Error(message) = &response else {
            panic!("expected an error, got {response:?}");
        };
        assert!(message.contains("HTTP 401"), "{message}");
    }
    let reason = wait_for_health(&agent.admin_socket, ServingStatus::NotServing, HEALTH_FLIP).await;
    assert!(
        reason.contains("HTTP secrets backend is unusable"),
        "{reason}"
    );
    assert!(reason.contains("HTTP 401"), "{reason}");
    assert!(!reason.contains(&bad_token), "{reason}");
    let warnings: Vec<String> = log_lines_with("rejected the agent's credentials")
        .into_iter()
        .filter(|line| line.contains(&http.url()))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for three requests: {warnings:#?}"
    );
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(!warnings[0].contains(&bad_token), "{}", warnings[0]);

    // The API starts accepting the token: the next request makes the backend usable again.
    http.add_token(&bad_token, TokenAccess::All);
    let response = agent.get("API", "envproxy:API").await;
    assert_eq!(response, found(&api_secret));
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_FLIP).await;
    agent.stop().await;
}

#[tokio::test]
async fn health_follows_sealed_vault() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_FLIP).await;

    server.seal();
    let response = agent
        .get("OTHER", "vault:secret/data/app/other#password")
        .await;
    assert!(matches!(response, Response::Error(_)), "{response:?}");
    let reason = wait_for_health(&agent.admin_socket, ServingStatus::NotServing, HEALTH_FLIP).await;
    assert!(reason.contains("sealed"), "{reason}");
    // The probe finds Vault still sealed, so the status stays NOT_SERVING past a probe.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, _) = health_and_reason(&agent.admin_socket).await;
    assert_eq!(status, ServingStatus::NotServing);

    server.unseal();
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_RECOVERY).await;
    agent.stop().await;
}

#[tokio::test]
async fn health_follows_vault_server_errors() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_FLIP).await;

    server.inject_failures("secret/data/app/other", 1, 500);
    let response = agent
        .get("OTHER", "vault:secret/data/app/other#password")
        .await;
    assert!(matches!(response, Response::Error(_)), "{response:?}");
    let reason = wait_for_health(&agent.admin_socket, ServingStatus::NotServing, HEALTH_FLIP).await;
    assert!(reason.contains("500"), "{reason}");

    // The next request that reaches Vault ends the outage, even before a probe.
    server
        .root()
        .kv2_put("secret", "app/other", json!({ "password": "x" }))
        .unwrap();
    let response = agent
        .get("OTHER", "vault:secret/data/app/other#password")
        .await;
    assert_eq!(response, found("x"));
    wait_for_health(&agent.admin_socket, ServingStatus::Serving, HEALTH_FLIP).await;
    agent.stop().await;
}

#[tokio::test]
async fn health_listen_serves_only_health() {
    let server = start_server(ServerOptions::default()).await;
    for (token, expected) in [
        (server.root_token(), ServingStatus::Serving),
        ("not-a-valid-token", ServingStatus::NotServing),
    ] {
        let agent = TestAgent::start_with(&server, token, |config| {
            config.admin.health_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let address = agent.health.expect("the health listener is bound");
        assert_ne!(address.port(), 0);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel.clone());
        let response = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), expected, "token {token:?}");

        let mut admin = pb::admin_client::AdminClient::new(channel);
        let status = admin.status(pb::StatusRequest {}).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        agent.stop().await;
    }
}

#[tokio::test]
async fn health_listen_needs_admin_api() {
    let server = start_server(ServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        socket: Some(dir.path().join("agent.sock")),
        vault: Some(settings(&server, server.root_token())),
        admin: AdminSettings {
            enabled: Some(false),
            socket: None,
            health_listen: Some("127.0.0.1:0".parse().unwrap()),
        },
        ..Config::default()
    };
    let error = Agent::bind(config).await.err().unwrap().to_string();
    assert!(error.contains("[admin] health_listen"), "{error}");
    assert!(error.contains("enabled = false"), "{error}");
}

#[tokio::test]
async fn health_listen_without_enabled_says_enable() {
    let server = start_server(ServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        socket: Some(dir.path().join("agent.sock")),
        vault: Some(settings(&server, server.root_token())),
        admin: AdminSettings {
            enabled: None,
            socket: None,
            health_listen: Some("127.0.0.1:0".parse().unwrap()),
        },
        ..Config::default()
    };
    let error = Agent::bind(config).await.err().unwrap().to_string();
    assert!(error.contains("[admin] health_listen"), "{error}");
    assert!(error.contains("set `enabled = true`"), "{error}");
    assert!(!error.contains("enabled = false"), "{error}");
}

#[tokio::test]
async fn admin_socket_with_admin_disabled_rejected() {
    let server = start_server(ServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        socket: Some(dir.path().join("agent.sock")),
        vault: Some(settings(&server, server.root_token())),
        admin: AdminSettings {
            enabled: Some(false),
            socket: Some(dir.path().join("admin.sock")),
            health_listen: None,
        },
        ..Config::default()
    };
    let error = Agent::bind(config).await.err().unwrap().to_string();
    assert!(error.contains("[admin] socket"), "{error}");
    assert!(error.contains("enabled = false"), "{error}");
    assert!(
        !dir.path().join("agent.sock").exists(),
        "no socket is left behind"
    );
}

#[tokio::test]
async fn admin_socket_equal_to_agent_socket_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secrets.json"), "{}").unwrap();
    let socket = dir.path().join("agent.sock");
    let same_paths = [socket.clone(), dir.path().join("./sub/../agent.sock")];
    for admin_socket in same_paths {
        let config = Config {
            socket: Some(socket.clone()),
            secrets_file: Some(dir.path().join("secrets.json")),
            admin: AdminSettings {
                enabled: Some(true),
                socket: Some(admin_socket.clone()),
                health_listen: None,
            },
            ..Config::default()
        };
        let error = Agent::bind(config).await.err().unwrap().to_string();
        assert!(
            error.contains("[admin] socket"),
            "{admin_socket:?}: {error}"
        );
        assert!(
            error.contains("[agent] socket"),
            "{admin_socket:?}: {error}"
        );
        assert!(error.contains("must differ"), "{admin_socket:?}: {error}");
        assert!(
            error.contains(&socket.display().to_string()),
            "{admin_socket:?}: {error}"
        );
        assert!(!socket.exists(), "no socket is left behind");
    }
}

/// Runs a Python client as uid 65534 that connects to `socket` and sends the HTTP/2 preface.
/// Returns the errno name when connecting fails, `closed` when the server closes the
/// connection without sending anything, else how many bytes it read.
fn connect_as_nobody(socket: &Path) -> String {
    use std::os::unix::process::CommandExt;
    let script = "import socket, sys, errno\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.settimeout(10)\n\
                  try:\n    s.connect(sys.argv[1])\n\
                  except OSError as e:\n    print(errno.errorcode[e.errno]); sys.exit(0)\n\
                  try:\n    s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n')\n    data = s.recv(64)\n\
                  except OSError:\n    data = b''\n\
                  print('read %d bytes' % len(data) if data else 'closed')\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(socket)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test]
async fn non_root_uid_cannot_connect() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test must run as root: it runs a client as uid 65534");
    }
    let server = start_server(ServerOptions::default()).await;
    let parent = tempfile::tempdir().unwrap();
    // Other users may traverse this directory, so only the socket's own mode and the peer
    // check keep them out.
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let admin_socket = parent.path().join("admin.sock");
    let agent = TestAgent::start_with(&server, server.root_token(), |config| {
        config.admin.socket = Some(admin_socket.clone());
    })
    .await;
    assert_eq!(agent.admin_socket, admin_socket);

    let denied = tokio::task::spawn_blocking({
        let socket = admin_socket.clone();
        move || connect_as_nobody(&socket)
    })
    .await
    .unwrap();
    assert_eq!(denied, "EACCES", "the 0600 socket rejects uid 65534");

    // With the socket opened to everyone, the SO_PEERCRED check still closes the connection
    // before any byte is sent, while the agent's own uid gets the server's HTTP/2 settings.
    std::fs::set_permissions(&admin_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let closed = tokio::task::spawn_blocking({
        let socket = admin_socket.clone();
        move || connect_as_nobody(&socket)
    })
    .await
    .unwrap();
    assert_eq!(closed, "closed");
    let mut client = admin_client(&admin_socket).await;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.mode, "local");
    agent.stop().await;
}

/// The agent binary, started with a config file, its stderr collected.
struct AgentProcess {
    child: std::process::Child,
    socket: PathBuf,
    admin_socket: PathBuf,
}

impl AgentProcess {
    fn start(config: &Path, socket: PathBuf, admin_socket: PathBuf) -> AgentProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_envproxy-agent"))
            .arg("--config")
            .arg(config)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        AgentProcess {
            child,
            socket,
            admin_socket,
        }
    }

    async fn wait_ready(&self) {
        eventually("the agent listens", || async {
            self.socket.exists() && self.admin_socket.exists()
        })
        .await;
    }

    /// Stops the agent with SIGTERM and returns its stderr.
    fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let output = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        let _ = self.child.wait();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

#[tokio::test]
async fn audit_log_and_reload_in_agent_binary() {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("file-{}", random_hex(24));
    let plain_secret = format!("plain-{}", random_hex(24));
    std::fs::write(
        dir.path().join("secrets.json"),
        json!({ "API_KEY": secret }).to_string(),
    )
    .unwrap();
    let socket = dir.path().join("agent.sock");
    let admin_socket = dir.path().join("admin/admin.sock");
    let config = dir.path().join("agent.toml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[agent]\nsocket = \"agent.sock\"\n{extra}\n[backend]\npath = \"secrets.json\"\n\
                 [admin]\nenabled = true\n"
            ),
        )
        .unwrap();
    };
    write_config("");
    let agent = AgentProcess::start(&config, socket.clone(), admin_socket.clone());
    agent.wait_ready().await;

    let before = agent_request(&socket, &v2("BEFORE", "envproxy:API_KEY")).await;
    assert_eq!(before, found(&secret));

    let mut client = admin_client(&admin_socket).await;
    write_config("max_connections = 7\n[audit]\nlog = true");
    let reloaded = client
        .reload_config(pb::ReloadConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reloaded.applied, ["[audit] log"]);
    assert_eq!(reloaded.restart_required, ["[agent] max_connections"]);
    assert!(reloaded.warnings.is_empty(), "{reloaded:?}");

    let after = agent_request(&socket, &v2("AFTER", "envproxy:API_KEY")).await;
    assert_eq!(after, found(&secret));
    let plain = agent_request(&socket, &v2("PLAIN", &plain_secret)).await;
    assert_eq!(plain, Response::Passthrough);

    std::fs::write(&config, "[agent\n").unwrap();
    let broken = client
        .reload_config(pb::ReloadConfigRequest {})
        .await
        .unwrap_err();
    assert_eq!(broken.code(), tonic::Code::InvalidArgument);
    assert!(broken.message().contains("invalid TOML"), "{broken:?}");
    assert!(broken.message().contains("agent.toml"), "{broken:?}");
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.counters.unwrap().requests,
        3,
        "the agent still serves"
    );
    drop(client);

    let stderr = agent.stop();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("each audit line is JSON"))
        .collect();
    assert_eq!(events.len(), 2, "{stderr}");
    assert_eq!(events[0]["variable"], "AFTER");
    assert_eq!(events[0]["reference"], "envproxy:API_KEY");
    assert_eq!(events[0]["decision"], "found");
    assert!(events[0]["pid"].as_i64().unwrap() > 0);
    assert!(events[0]["latency_us"].is_u64());
    assert_eq!(events[1]["variable"], "PLAIN");
    assert_eq!(events[1]["reference"], "");
    assert_eq!(events[1]["decision"], "passthrough");
    assert!(!stderr.contains(&secret), "{stderr}");
    assert!(!stderr.contains(&plain_secret), "{stderr}");
}

#[tokio::test]
async fn failed_sighup_reload_in_status() {
    use nix::sys::signal::{kill, Signal};

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secrets.json"), "{}").unwrap();
    let socket = dir.path().join("agent.sock");
    let admin_socket = dir.path().join("admin/admin.sock");
    let config = dir.path().join("agent.toml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[agent]\nsocket = \"agent.sock\"\n{extra}\n[backend]\npath = \"secrets.json\"\n\
                 [admin]\nenabled = true\n"
            ),
        )
        .unwrap();
    };
    write_config("");
    let log_path = dir.path().join("agent.log");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_envproxy-agent"))
            .arg("--config")
            .arg(&config)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    let log = || std::fs::read_to_string(&log_path).unwrap();
    eventually("the agent listens", || async {
        socket.exists() && admin_socket.exists()
    })
    .await;
    let mut client = admin_client(&admin_socket).await;

    std::fs::write(&config, "[agent\n").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    eventually("the failed reload is logged", || async {
        log().contains("config reload failed")
    })
    .await;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let error = status.config_reload_error;
    assert!(error.contains("invalid TOML"), "{error}");
    assert!(error.contains("agent.toml"), "{error}");
    assert!(!error.contains('\n'), "{error}");
    let log_text = log();
    let failed = log_text
        .lines()
        .find(|line| line.contains("config reload failed"))
        .unwrap();
    // The parser's whole message, excerpt included, is on the warning's line.
    assert!(failed.contains(&error), "{log_text}");

    write_config("no_such_key = 1");
    kill(pid, Signal::SIGHUP).unwrap();
    eventually("the reload is logged", || async {
        log().contains("config reloaded")
    })
    .await;
    let log_text = log();
    let unknown = log_text
        .lines()
        .find(|line| line.contains("no_such_key"))
        .unwrap_or_else(|| panic!("no line names the unknown key: {log_text}"));
    assert!(unknown.contains("WARN"), "{unknown}");
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.config_reload_error, "");

    drop(client);
    kill(pid, Signal::SIGTERM).unwrap();
    let exit = child.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A child process that is killed when a failed check ends the test early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn sighup_reloads_and_usr_signals_ignored() {
    use nix::sys::signal::{kill, Signal};

    let dir = tempfile::tempdir().unwrap();
    let secret = format!("file-{}", random_hex(24));
    std::fs::write(
        dir.path().join("secrets.json"),
        json!({ "API_KEY": secret }).to_string(),
    )
    .unwrap();
    let socket = dir.path().join("agent.sock");
    let admin_socket = dir.path().join("admin/admin.sock");
    let config = dir.path().join("agent.toml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[agent]\nsocket = \"agent.sock\"\n[backend]\npath = \"secrets.json\"\n\
                 [admin]\nenabled = true\n{extra}"
            ),
        )
        .unwrap();
    };
    write_config("");
    // The agent's log goes to a file, so the test can read it while the agent runs.
    let log_path = dir.path().join("agent.log");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_envproxy-agent"))
            .arg("--config")
            .arg(&config)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    let log = || std::fs::read_to_string(&log_path).unwrap();
    eventually("the agent listens", || async {
        socket.exists() && admin_socket.exists()
    })
    .await;

    write_config("[audit]\nlog = true\n");
    kill(pid, Signal::SIGHUP).unwrap();
    eventually("the reload is logged", || async {
        log().contains("config reloaded")
    })
    .await;
    kill(pid, Signal::SIGUSR1).unwrap();
    kill(pid, Signal::SIGUSR2).unwrap();
    eventually("both ignored signals are logged", || async {
        let log = log();
        log.contains("received SIGUSR1; ignored") && log.contains("received SIGUSR2; ignored")
    })
    .await;

    // The agent still serves, with the reloaded audit setting.
    let after = agent_request(&socket, &v2("AFTER", "envproxy:API_KEY")).await;
    assert_eq!(after, found(&secret));
    eventually("the audit line of the request is logged", || async {
        log().contains("\"variable\":\"AFTER\"")
    })
    .await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the agent still runs"
    );

    kill(pid, Signal::SIGTERM).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = log();
    assert!(
        log.contains("received SIGHUP; reloading the config file"),
        "{log}"
    );
    let reloaded = log
        .lines()
        .find(|line| line.contains("config reloaded"))
        .unwrap();
    assert!(reloaded.contains("INFO"), "{reloaded}");
    assert!(reloaded.contains("[audit] log"), "{reloaded}");
    assert!(!log.contains(&secret), "{log}");
    assert!(!socket.exists(), "the agent removed its socket");
    assert!(!admin_socket.exists(), "the agent removed its admin socket");
}

#[tokio::test]
async fn reload_compares_with_running_settings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secrets.json"), "{}").unwrap();
    let socket = dir.path().join("agent.sock");
    let admin_socket = dir.path().join("admin/admin.sock");
    let config = dir.path().join("agent.toml");
    let write_config = |agent_keys: &str| {
        std::fs::write(
            &config,
            format!(
                "[agent]\nsocket = \"agent.sock\"\n{agent_keys}\n[backend]\n\
                 path = \"secrets.json\"\n[admin]\nenabled = true\n"
            ),
        )
        .unwrap();
    };
    write_config("");
    let agent = AgentProcess::start(&config, socket.clone(), admin_socket.clone());
    agent.wait_ready().await;
    let mut client = admin_client(&admin_socket).await;
    let mut reload = async || {
        client
            .reload_config(pb::ReloadConfigRequest {})
            .await
            .unwrap()
            .into_inner()
            .restart_required
    };

    write_config("max_connections = 7");
    assert_eq!(reload().await, ["[agent] max_connections"]);
    assert_eq!(
        reload().await,
        ["[agent] max_connections"],
        "the agent still runs with the old value"
    );
    write_config("");
    assert!(
        reload().await.is_empty(),
        "the file matches the running value again"
    );

    std::fs::write(
        &config,
        "[agent]\nsocket = \"other.sock\"\n[backend]\npath = \"secrets.json\"\n\
         [admin]\nsocket = \"admin/admin.sock\"\n",
    )
    .unwrap();
    assert_eq!(reload().await, ["[agent] socket", "[admin]"]);
    assert_eq!(reload().await, ["[agent] socket", "[admin]"]);
    write_config("");
    assert!(reload().await.is_empty());
    drop(client);
    agent.stop();
}

#[tokio::test]
async fn metrics_count_local_requests() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start_with(&server, server.root_token(), |config| {
        config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let address = agent.metrics.expect("the metrics listener is on");
    assert!(address.ip().is_loopback());
    assert_ne!(address.port(), 0, "the bound port is reported");

    let vault_reads = 5;
    for response in agent_requests(&agent.socket, &v2("DB", DB_REFERENCE), vault_reads).await {
        assert_eq!(response, found(&agent.vault_secret));
    }
    for _ in 0..3 {
        assert_eq!(
            agent.get("API", "envproxy:API_KEY").await,
            found(&agent.file_secret)
        );
    }
    for _ in 0..2 {
        assert_eq!(
            agent.get("GONE", "envproxy:NOT_THERE").await,
            Response::NotFound
        );
    }
    assert_eq!(agent.get("HOME", "/root").await, Response::Passthrough);
    let missing = agent.get("X", "vault:secret/data/missing#x").await;
    assert!(matches!(missing, Response::Error(_)), "{missing:?}");

    let scrape = scrape(address).await;
    let requests =
        |decision: &str| scrape.value("envproxy_requests_total", &[("decision", decision)]);
    assert_eq!(requests("found"), 8.0);
    assert_eq!(requests("not_found"), 2.0);
    assert_eq!(requests("passthrough"), 1.0);
    assert_eq!(requests("error"), 1.0);
    assert_eq!(requests("denied"), 0.0);
    assert_eq!(requests("status"), 0.0);
    assert_eq!(
        scrape.value("envproxy_request_duration_seconds_count", &[]),
        12.0
    );
    assert!(scrape.value("envproxy_request_duration_seconds_sum", &[]) > 0.0);

    let cache = |backend: &str, outcome: &str| {
        scrape.value(
            "envproxy_cache_requests_total",
            &[("backend", backend), ("outcome", outcome)],
        )
    };
    assert_eq!(cache("vault", "hit"), 4.0, "the first DB read misses");
    assert_eq!(cache("vault", "miss"), 2.0, "DB once and the missing path");
    assert_eq!(cache("vault", "stale"), 0.0);
    assert_eq!(cache("http", "hit"), 0.0);

    let vault = |operation: &str| {
        scrape.value("envproxy_vault_requests_total", &[("operation", operation)])
    };
    assert_eq!(vault("login"), 1.0, "the token lookup at start");
    assert_eq!(vault("read"), 2.0);
    assert_eq!(vault("token_renew"), 0.0);
    assert_eq!(
        scrape.value(
            "envproxy_vault_errors_total",
            &[("operation", "read"), ("kind", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        server.request_count("GET", DB_PATH),
        1,
        "the Vault test server agrees on the reads"
    );
    assert!(
        !scrape.has("envproxy_denials_total", &[("reason", "outside_pod")]),
        "local mode denies nothing"
    );
    assert_eq!(
        scrape.value("envproxy_http_backend_requests_total", &[]),
        0.0
    );
    assert_eq!(scrape.value("envproxy_pod_watch_relists_total", &[]), 0.0);
    assert!(!scrape.text.contains(&agent.vault_secret));
    assert!(!scrape.text.contains(&agent.file_secret));

    agent.stop().await;
}

#[tokio::test]
async fn metrics_gauge_follows_open_connections() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start_with(&server, server.root_token(), |config| {
        config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let address = agent.metrics.unwrap();
    let open = || async {
        scrape(address)
            .await
            .value("envproxy_open_connections", &[])
    };
    assert_eq!(open().await, 0.0);

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap();
        let response = request_on(&mut stream, &v2("API", "envproxy:API_KEY")).await;
        assert_eq!(response, found(&agent.file_secret));
        held.push(stream);
    }
    assert_eq!(open().await, 3.0);
    drop(held);
    eventually("the closed connections are no longer counted", || async {
        open().await == 0.0
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn metrics_listener_serves_only_metrics_path() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start_with(&server, server.root_token(), |config| {
        config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let address = agent.metrics.unwrap();

    for path in ["/", "/metrics/", "/healthz", "/metricsx"] {
        let reply = http_request(address, "GET", path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.body.contains("/metrics"), "{path}: {}", reply.body);
    }
    let post = http_request(address, "POST", "/metrics").await;
    assert_eq!(post.status, 405);
    assert!(
        post.headers.contains("allow: get, head"),
        "{}",
        post.headers
    );
    let head = http_request(address, "HEAD", "/metrics").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{}", head.body);

    agent.stop().await;
    let refused = tokio::net::TcpStream::connect(address).await;
    assert!(refused.is_err(), "the listener closes when the agent stops");
}

#[tokio::test]
async fn metrics_listener_off_by_default() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, server.root_token()).await;
    assert_eq!(agent.metrics, None);
    agent.stop().await;
}
