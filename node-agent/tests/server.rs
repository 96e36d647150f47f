//! The agent over a real Unix socket in a temporary directory: raw frames in, responses checked
//! byte for byte where the layout matters.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use envproxy_agent::{limits, Agent, AgentStatus, Config};
use envproxy_proto::{Request, Response, SecretBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single wait in these tests. A healthy agent responds in milliseconds.
const WAIT: Duration = Duration::from_secs(10);

struct TestAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    api_key: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestAgent {
    async fn start(adjust: impl FnOnce(&mut Config)) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let api_key = unique_secret();
        let secrets = dir.path().join("secrets.json");
        std::fs::write(
            &secrets,
            format!(r#"{{"API_KEY": "{api_key}", "DB_PASSWORD": "pw-{api_key}"}}"#),
        )
        .unwrap();
        let socket = dir.path().join("run/agent.sock");
        let mut config = Config {
            socket: Some(socket.clone()),
            secrets_file: Some(secrets),
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
            api_key,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).await.unwrap()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert!(!self.socket.exists(), "the socket file was not removed");
    }
}

/// Returns a value that appears nowhere else, so finding it in output can only be a leak.
fn unique_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("secret-{nanos:x}-{}", std::process::id())
}

fn encode(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode(&mut out).unwrap();
    out
}

fn v2(key: &str, value: &str) -> Request {
    Request::V2 {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

/// Reads one response, or `None` when the agent closed the connection first.
async fn read_response(stream: &mut UnixStream) -> Option<Response> {
    let mut header = [0u8; 3];
    let read = tokio::time::timeout(WAIT, stream.read_exact(&mut header))
        .await
        .expect("timed out waiting for a response");
    if read.is_err() {
        return None;
    }
    let len = u16::from_be_bytes([header[1], header[2]]) as usize;
    let mut frame = header.to_vec();
    frame.resize(3 + len, 0);
    tokio::time::timeout(WAIT, stream.read_exact(&mut frame[3..]))
        .await
        .expect("timed out reading a response payload")
        .unwrap();
    let (response, used) = Response::decode(&frame).unwrap().unwrap();
    assert_eq!(used, frame.len());
    Some(response)
}

/// Asserts that the agent closes the connection without sending anything more.
async fn assert_closed(stream: &mut UnixStream) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, stream.read(&mut byte))
        .await
        .expect("the agent did not close the connection");
    // A reset also means closed: the agent may drop a connection with unread input.
    if let Ok(n) = read {
        assert_eq!(n, 0, "expected the connection to be closed, got more data");
    }
}

fn error_text(response: Option<Response>) -> String {
    match response {
        Some(Response::Error(reason)) => reason,
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_answered_in_order() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;

    let mut batch = Vec::new();
    for request in [
        Request::V1 {
            key: b"API_KEY".to_vec(),
        },
        v2("TOKEN", "envproxy:DB_PASSWORD"),
        v2("HOME", "/home/user"),
        v2("MISSING", "envproxy:NOPE"),
        v2("DB_URL", "vault:secret/data/app#url"),
        v2("BROKEN", "vault:secret/data/app"),
        Request::V1 {
            key: b"NOPE".to_vec(),
        },
    ] {
        batch.extend(encode(&request));
    }
    stream.write_all(&batch).await.unwrap();

    let expected_key = SecretBytes::new(agent.api_key.clone().into_bytes());
    assert_eq!(
        read_response(&mut stream).await,
        Some(Response::Found(expected_key))
    );
    let expected_password = SecretBytes::new(format!("pw-{}", agent.api_key).into_bytes());
    assert_eq!(
        read_response(&mut stream).await,
        Some(Response::Found(expected_password))
    );
    assert_eq!(
        read_response(&mut stream).await,
        Some(Response::Passthrough)
    );
    assert_eq!(read_response(&mut stream).await, Some(Response::NotFound));
    let vault = error_text(read_response(&mut stream).await);
    assert!(
        vault.starts_with("DB_URL: vault: references need the Vault backend"),
        "{vault}"
    );
    let malformed = error_text(read_response(&mut stream).await);
    assert!(
        malformed.starts_with("BROKEN: invalid reference:"),
        "{malformed}"
    );
    assert!(malformed.contains("no `#<key>` part"), "{malformed}");
    assert_eq!(read_response(&mut stream).await, Some(Response::NotFound));

    // The connection stays open for more requests.
    stream
        .write_all(&encode(&v2("PATH", "/bin")))
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        Some(Response::Passthrough)
    );
    drop(stream);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bytes_match_layout() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;
    stream
        .write_all(&[2, 0, 1, b'P', 0, 4, b'/', b'b', b'i', b'n'])
        .await
        .unwrap();
    let mut reply = [0u8; 3];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [3, 0, 0]);
    stream.write_all(&[1, 0, 1, b'Z']).await.unwrap();
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [1, 0, 0]);
    drop(stream);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_then_close_works() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;
    stream
        .write_all(&encode(&v2("K", "envproxy:API_KEY")))
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let expected = SecretBytes::new(agent.api_key.clone().into_bytes());
    assert_eq!(
        read_response(&mut stream).await,
        Some(Response::Found(expected))
    );
    assert_closed(&mut stream).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_close() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;
    // A v2 request announcing a 5-byte key, of which one byte arrives.
    stream.write_all(&[2, 0, 5, b'A']).await.unwrap();
    stream.shutdown().await.unwrap();
    let reason = error_text(read_response(&mut stream).await);
    assert!(reason.starts_with("incomplete frame"), "{reason}");
    assert_closed(&mut stream).await;

    // The agent still serves new connections.
    let mut other = agent.connect().await;
    other.write_all(&encode(&v2("X", "plain"))).await.unwrap();
    assert_eq!(read_response(&mut other).await, Some(Response::Passthrough));
    drop(other);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_beyond_body_hits_idle_timeout() {
    let idle = Duration::from_millis(300);
    let agent = TestAgent::start(|config| config.idle_timeout = idle).await;
    let mut stream = agent.connect().await;
    let started = Instant::now();
    // Announces a 10-byte key, sends 2 bytes and then nothing.
    stream.write_all(&[1, 0, 10, b'A', b'B']).await.unwrap();
    assert_closed(&mut stream).await;
    let waited = started.elapsed();
    assert!(
        waited >= idle,
        "closed after {waited:?}, before the idle timeout"
    );
    assert!(waited < WAIT, "closed after {waited:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_spares_active_connection() {
    let idle = Duration::from_millis(400);
    let agent = TestAgent::start(|config| config.idle_timeout = idle).await;
    let mut stream = agent.connect().await;
    // Requests every 150 ms keep the connection alive well past one idle timeout.
    for _ in 0..6 {
        stream.write_all(&encode(&v2("X", "plain"))).await.unwrap();
        assert_eq!(
            read_response(&mut stream).await,
            Some(Response::Passthrough)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_key_is_rejected() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;
    let mut frame = vec![1, 0xff, 0xff];
    frame.extend(vec![b'K'; 65535]);
    let (mut reader, mut writer) = stream.split();
    // The agent rejects the frame from its header and may close before reading the whole key,
    // so the write is allowed to fail.
    let write = async {
        let _ = writer.write_all(&frame).await;
    };
    let read = async {
        let mut header = [0u8; 3];
        tokio::time::timeout(WAIT, reader.read_exact(&mut header))
            .await
            .unwrap()
            .unwrap();
        let mut payload = vec![0u8; u16::from_be_bytes([header[1], header[2]]) as usize];
        reader.read_exact(&mut payload).await.unwrap();
        (header[0], String::from_utf8(payload).unwrap())
    };
    let ((), (status, reason)) = tokio::join!(write, read);
    assert_eq!(status, 2);
    assert_eq!(
        reason,
        "malformed frame: key length 65535 exceeds the maximum of 4096 bytes"
    );
    assert_closed(&mut stream).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_key_and_long_value_are_rejected() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;
    stream.write_all(&[1, 0, 0]).await.unwrap();
    let reason = error_text(read_response(&mut stream).await);
    assert_eq!(reason, "malformed frame: the key is empty");
    assert_closed(&mut stream).await;

    let mut stream = agent.connect().await;
    stream
        .write_all(&[2, 0, 1, b'K', 0xff, 0xff])
        .await
        .unwrap();
    let reason = error_text(read_response(&mut stream).await);
    assert_eq!(
        reason,
        "malformed frame: value length 65535 exceeds the maximum of 16384 bytes"
    );
    assert_closed(&mut stream).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_key_keeps_connection() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;
    stream.write_all(&[1, 0, 2, 0xc3, 0x28]).await.unwrap();
    let reason = error_text(read_response(&mut stream).await);
    assert_eq!(reason, "the variable name is not valid UTF-8");

    stream
        .write_all(&encode(&Request::V1 {
            key: b"API_KEY".to_vec(),
        }))
        .await
        .unwrap();
    let expected = SecretBytes::new(agent.api_key.clone().into_bytes());
    assert_eq!(
        read_response(&mut stream).await,
        Some(Response::Found(expected))
    );
    drop(stream);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_version_byte_closes() {
    let agent = TestAgent::start(|_| {}).await;
    let mut bystander = agent.connect().await;
    let mut stream = agent.connect().await;
    stream.write_all(&[9, 0, 1, b'K']).await.unwrap();
    let reason = error_text(read_response(&mut stream).await);
    assert_eq!(
        reason,
        "malformed frame: unknown request version byte 9 (expected 1, 2 or 3)"
    );
    assert_closed(&mut stream).await;

    // Another connection opened before the bad frame is unaffected.
    bystander
        .write_all(&encode(&v2("X", "envproxy:NOPE")))
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut bystander).await,
        Some(Response::NotFound)
    );
    drop(bystander);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_idle_connections_do_not_block() {
    limits::raise_open_files_limit().unwrap();
    let agent = TestAgent::start(|_| {}).await;
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        idle.push(agent.connect().await);
    }
    // Half of them have sent part of a frame, so the agent keeps a partial buffer for each.
    for stream in idle.iter_mut().step_by(2) {
        stream.write_all(&[2, 0, 8, b'V']).await.unwrap();
    }

    let started = Instant::now();
    let mut client = agent.connect().await;
    client
        .write_all(&encode(&v2("TOKEN", "envproxy:API_KEY")))
        .await
        .unwrap();
    let expected = SecretBytes::new(agent.api_key.clone().into_bytes());
    assert_eq!(
        read_response(&mut client).await,
        Some(Response::Found(expected))
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "answer took {took:?}");

    // The idle connections are still open and served.
    let last = idle.last_mut().unwrap();
    last.write_all(&encode(&v2("X", "plain"))).await.unwrap();
    assert_eq!(read_response(last).await, Some(Response::Passthrough));
    drop(idle);
    drop(client);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_limit_are_closed() {
    let agent = TestAgent::start(|config| config.max_connections = 2).await;
    let mut first = agent.connect().await;
    let mut second = agent.connect().await;
    // Both requests get a response, which proves the agent has accepted both connections.
    for stream in [&mut first, &mut second] {
        stream.write_all(&encode(&v2("X", "plain"))).await.unwrap();
        assert_eq!(read_response(stream).await, Some(Response::Passthrough));
    }

    let mut third = agent.connect().await;
    let _ = third.write_all(&encode(&v2("X", "plain"))).await;
    assert_eq!(read_response(&mut third).await, None);

    // A freed slot is available again.
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut next = agent.connect().await;
        let _ = next.write_all(&encode(&v2("X", "plain"))).await;
        if read_response(&mut next).await == Some(Response::Passthrough) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed connection slot was never reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(second);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_key_names_without_values() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;
    stream.write_all(&encode(&Request::Status)).await.unwrap();
    let Some(Response::Found(payload)) = read_response(&mut stream).await else {
        panic!("expected a found response to a status request");
    };
    let text = String::from_utf8(payload.expose_secret().to_vec()).unwrap();
    assert!(
        !text.contains(&agent.api_key),
        "status contains a value: {text}"
    );

    let status: AgentStatus = serde_json::from_str(&text).unwrap();
    assert_eq!(status.keys, ["API_KEY", "DB_PASSWORD"]);
    assert_eq!(status.mode, "local");
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.pid, std::process::id());
    assert_eq!(status.socket, agent.socket);
    let backend = status.backend.expect("a file backend");
    assert_eq!(backend.kind, "file");
    assert_eq!(backend.keys_loaded, 2);
    assert_eq!(backend.last_reload_error, None);
    let path = backend.path.expect("the secrets file's path");
    assert!(path.ends_with("secrets.json"), "{}", path.display());
    assert!(backend.keys_listed);
    assert_eq!(status.vault, None);

    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in [
        "version",
        "mode",
        "pid",
        "uptime_secs",
        "socket",
        "backend",
        "keys",
    ] {
        assert!(json.get(field).is_some(), "missing field {field}: {text}");
    }
    for field in [
        "type",
        "path",
        "keys_loaded",
        "last_reload_error",
        "last_reload_unix",
    ] {
        assert!(
            json["backend"].get(field).is_some(),
            "missing backend.{field}: {text}"
        );
    }
    drop(stream);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_secrets_served_after_reload() {
    let agent = TestAgent::start(|config| {
        config.reload_poll_interval = Duration::from_millis(10);
    })
    .await;
    let secrets = agent
        .socket
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("secrets.json");
    std::fs::write(&secrets, r#"{"API_KEY": "rotated"}"#).unwrap();

    let deadline = Instant::now() + WAIT;
    let mut stream = agent.connect().await;
    loop {
        stream
            .write_all(&encode(&v2("K", "envproxy:API_KEY")))
            .await
            .unwrap();
        let response = read_response(&mut stream).await;
        if response == Some(Response::Found(SecretBytes::from("rotated"))) {
            break;
        }
        assert!(Instant::now() < deadline, "the edit was never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_connections() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;
    stream.write_all(&encode(&v2("X", "plain"))).await.unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        Some(Response::Passthrough)
    );
    agent.stop().await;
    assert_closed(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_reason_survives_late_write() {
    let agent = TestAgent::start(|_| {}).await;
    let mut stream = agent.connect().await;
    stream.write_all(&[9]).await.unwrap();
    // By now the agent has sent its error; it must still accept the rest of the client's write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&[0, 1, b'K']).await.unwrap();
    let reason = error_text(read_response(&mut stream).await);
    assert!(
        reason.starts_with("malformed frame: unknown request version byte 9"),
        "{reason}"
    );
    assert_closed(&mut stream).await;
    agent.stop().await;
}
