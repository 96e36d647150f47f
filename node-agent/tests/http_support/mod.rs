//! Shared parts of the HTTP and Kubernetes Secret backend tests: an agent on a temporary
//! socket, requests over the socket, and a capture of the agent's log.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use envproxy_agent::http_backend::{AuthToken, HttpSettings};
use envproxy_agent::vault::SecretText;
use envproxy_agent::{Agent, AgentStatus, Config};
use envproxy_http_test_server::{HttpSecretsServer, ServerOptions, TokenAccess};
use envproxy_proto::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// Returns a random string of 32 hex characters.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Starts a plain HTTP test server that accepts `token` for every key.
pub async fn start_server(token: &str) -> HttpSecretsServer {
    start_server_with(token, ServerOptions::default()).await
}

pub async fn start_server_with(token: &str, options: ServerOptions) -> HttpSecretsServer {
    let server = HttpSecretsServer::start_with(options)
        .await
        .expect("start the HTTP secrets test server");
    server.add_token(token, TokenAccess::All);
    server
}

/// Returns settings for `server` with `token` as `auth_token`.
pub fn settings(server: &HttpSecretsServer, token: &str) -> HttpSettings {
    HttpSettings::new(
        server.url(),
        AuthToken::Value(Arc::new(SecretText::new(token.to_string()))),
    )
}

/// An agent with the HTTP backend on a socket in a temporary directory.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestAgent {
    pub async fn start(http: HttpSettings) -> TestAgent {
        TestAgent::start_with(Config {
            http: Some(http),
            ..Config::default()
        })
        .await
    }

    /// Starts an agent with `config` on a socket in a temporary directory.
    pub async fn start_with(mut config: Config) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        config.socket = Some(socket.clone());
        let agent = Agent::bind(config).await.expect("start the agent");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.serve(async {
            let _ = stopped.await;
        }));
        TestAgent {
            dir,
            socket,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn request(&self, request: &Request) -> Response {
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

    /// Sends a v2 request for variable `name` whose value is `value`.
    pub async fn get(&self, name: &str, value: &str) -> Response {
        self.request(&Request::V2 {
            key: name.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        })
        .await
    }

    /// Sends a v2 request for `envproxy:<key>`.
    pub async fn get_key(&self, key: &str) -> Response {
        self.get("VARIABLE", &format!("envproxy:{key}")).await
    }

    pub async fn status(&self) -> AgentStatus {
        match self.request(&Request::Status).await {
            Response::Found(payload) => serde_json::from_slice(payload.expose_secret()).unwrap(),
            other => panic!("expected a status payload, got {other:?}"),
        }
    }

    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }
}

pub fn found_text(response: Response) -> String {
    match response {
        Response::Found(value) => String::from_utf8(value.expose_secret().to_vec()).unwrap(),
        other => panic!("expected a value, got {other:?}"),
    }
}

pub fn error_text(response: Response) -> String {
    match response {
        Response::Error(reason) => reason,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Everything the agent logged in this test binary, at every level.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a subscriber that records every event at trace level, once per test binary, and
/// returns its capture.
pub fn capture_logs() -> LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = LogCapture::default();
            let writer = capture.clone();
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .init();
            capture
        })
        .clone()
}
