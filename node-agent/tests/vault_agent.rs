//! The agent with the Vault backend over a real Unix socket: routing between the secrets file
//! and Vault, Vault-only agents, the status JSON, and lease revocation at shutdown.

mod vault_support;

use std::path::PathBuf;
use std::time::Duration;

use envproxy_agent::{Agent, AgentStatus, Config};
use envproxy_proto::{Request, Response};
use envproxy_vault_test_server::{DatabaseRole, ServerOptions, VaultTestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vault_support::{settings, start_server};

const WAIT: Duration = Duration::from_secs(10);

struct TestAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestAgent {
    /// Starts an agent serving Vault at `server` and, with `with_file`, a secrets file with
    /// `API_KEY=file-value`.
    async fn start(
        server: &VaultTestServer,
        with_file: bool,
        adjust: impl FnOnce(&mut Config),
    ) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let secrets_file = with_file.then(|| {
            let path = dir.path().join("secrets.json");
            std::fs::write(&path, r#"{"API_KEY": "file-value"}"#).unwrap();
            path
        });
        let socket = dir.path().join("agent.sock");
        let mut config = Config {
            socket: Some(socket.clone()),
            secrets_file,
            vault: Some(settings(server, server.root_token())),
            ..Config::default()
        };
        adjust(&mut config);
        let agent = Agent::bind(config).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.serve(async {
            let _ = stopped.await;
        }));
        TestAgent {
            _dir: dir,
            socket,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn request(&self, request: &Request) -> Response {
        let mut stream = UnixStream::connect(&self.socket).await.unwrap();
        let mut frame = Vec::new();
        request.encode(&mut frame).unwrap();
        stream.write_all(&frame).await.unwrap();
        let mut header = [0u8; 3];
        tokio::time::timeout(WAIT, stream.read_exact(&mut header))
            .await
            .expect("timed out waiting for a response")
            .unwrap();
        let len = u16::from_be_bytes([header[1], header[2]]) as usize;
        let mut frame = header.to_vec();
        frame.resize(3 + len, 0);
        stream.read_exact(&mut frame[3..]).await.unwrap();
        Response::decode(&frame).unwrap().unwrap().0
    }

    async fn get(&self, name: &str, value: &str) -> Response {
        self.request(&Request::V2 {
            key: name.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        })
        .await
    }

    async fn status(&self) -> AgentStatus {
        match self.request(&Request::Status).await {
            Response::Found(payload) => serde_json::from_slice(payload.expose_secret()).unwrap(),
            other => panic!("expected a status payload, got {other:?}"),
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }
}

fn found_text(response: Response) -> String {
    match response {
        Response::Found(value) => String::from_utf8(value.expose_secret().to_vec()).unwrap(),
        other => panic!("expected a value, got {other:?}"),
    }
}

fn error_text(response: Response) -> String {
    match response {
        Response::Error(reason) => reason,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn file_and_vault_routes() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .kv2_put("secret", "app", json!({"password": "vault-value"}))
        .unwrap();
    let agent = TestAgent::start(&server, true, |_| {}).await;

    let vault_value = agent
        .get("DB_PASSWORD", "vault:secret/data/app#password")
        .await;
    assert_eq!(found_text(vault_value), "vault-value");
    assert_eq!(
        found_text(agent.get("KEY", "envproxy:API_KEY").await),
        "file-value"
    );
    let bare = agent
        .request(&Request::V1 {
            key: b"API_KEY".to_vec(),
        })
        .await;
    assert_eq!(found_text(bare), "file-value");
    assert_eq!(agent.get("PATH", "/usr/bin").await, Response::Passthrough);
    let missing = error_text(agent.get("DB_PASSWORD", "vault:secret/data/app#nope").await);
    assert_eq!(
        missing,
        "DB_PASSWORD: the secret at secret/data/app in Vault has no key `nope`"
    );
    assert_eq!(server.request_count("GET", "secret/data/app"), 1);
    agent.stop().await;
}

#[tokio::test]
async fn vault_only_agent_rejects_local_references() {
    let server = start_server(ServerOptions::default()).await;
    let agent = TestAgent::start(&server, false, |_| {}).await;
    let reason = error_text(agent.get("KEY", "envproxy:API_KEY").await);
    assert!(
        reason.starts_with("KEY: no secrets file is configured"),
        "{reason}"
    );
    let status = agent.status().await;
    assert_eq!(status.backend, None);
    assert!(status.keys.is_empty());
    agent.stop().await;
}

#[tokio::test]
async fn status_reports_vault() {
    let server = start_server(ServerOptions::default().with_namespace("team-a")).await;
    server
        .namespace("team-a")
        .unwrap()
        .kv2_put("secret", "app", json!({"password": "pw"}))
        .unwrap();
    let agent = TestAgent::start(&server, true, |config| {
        config.vault.as_mut().unwrap().namespace = Some("team-a".into());
    })
    .await;
    for _ in 0..3 {
        found_text(agent.get("P", "vault:secret/data/app#password").await);
    }
    error_text(agent.get("P", "vault:secret/data/absent#password").await);

    let status = agent.status().await;
    let vault = status.vault.expect("a vault object");
    assert_eq!(vault.address, server.url());
    assert_eq!(vault.namespace.as_deref(), Some("team-a"));
    assert_eq!(vault.auth_method, "token");
    assert!(vault.logged_in);
    // The root token never expires.
    assert_eq!(vault.token_ttl_secs, None);
    assert_eq!(vault.cache_hits, 2);
    assert_eq!(vault.cache_misses, 2);
    assert_eq!(vault.stale_served, 0);
    assert_eq!(vault.cache_entries, 1);
    let last_error = vault.last_error.expect("the failed read");
    assert!(last_error.contains("secret/data/absent"), "{last_error}");
    assert_eq!(status.backend.map(|backend| backend.keys_loaded), Some(1));
    agent.stop().await;
}

#[tokio::test]
async fn shutdown_revokes_leases_when_configured() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .add_database_role(
            "database",
            "app",
            DatabaseRole::new(Duration::from_secs(600), Duration::from_secs(3600)),
        )
        .unwrap();
    let agent = TestAgent::start(&server, false, |config| {
        config.vault.as_mut().unwrap().revoke_on_shutdown = true;
    })
    .await;
    found_text(
        agent
            .get("DB_USER", "vault:database/creds/app#username")
            .await,
    );
    assert_eq!(server.live_leases().len(), 1);
    agent.stop().await;
    assert_eq!(server.live_leases().len(), 0);
    assert_eq!(server.revoked_leases().len(), 1);
    assert_eq!(server.request_count("PUT", "sys/leases/revoke"), 1);
}

#[tokio::test]
async fn shutdown_keeps_leases_by_default() {
    let server = start_server(ServerOptions::default()).await;
    server
        .root()
        .add_database_role(
            "database",
            "app",
            DatabaseRole::new(Duration::from_secs(600), Duration::from_secs(3600)),
        )
        .unwrap();
    let agent = TestAgent::start(&server, false, |_| {}).await;
    found_text(
        agent
            .get("DB_USER", "vault:database/creds/app#username")
            .await,
    );
    agent.stop().await;
    assert_eq!(server.live_leases().len(), 1);
    assert_eq!(server.request_count("PUT", "sys/leases/revoke"), 0);
}
