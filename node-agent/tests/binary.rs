//! The `envproxy-agent` binary as a user runs it: config file, signals, exit status, log lines.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envproxy_proto::{client, Request, Response, SecretBytes};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const AGENT: &str = env!("CARGO_BIN_EXE_envproxy-agent");
const WAIT: Duration = Duration::from_secs(10);

fn unique_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("secret-{nanos:x}-{}", std::process::id())
}

fn spawn_agent(args: &[&str]) -> Child {
    Command::new(AGENT)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until a request on `socket` succeeds, failing if `agent` exits first.
fn wait_until_serving(socket: &Path, agent: &mut Child) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut stream) = UnixStream::connect(socket) {
            stream.set_read_timeout(Some(WAIT)).unwrap();
            if client::call(&mut stream, &Request::Status).is_ok() {
                return;
            }
        }
        if let Some(status) = agent.try_wait().unwrap() {
            let mut stderr = String::new();
            agent
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("the agent exited with {status} before serving:\n{stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "the agent never answered on {socket:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate_and_collect(mut agent: Child, signal: Signal) -> (std::process::ExitStatus, String) {
    kill(Pid::from_raw(agent.id() as i32), signal).unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop after {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

fn run_to_end(args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = Command::new(AGENT)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("VAULT_ADDR")
        .env_remove("NODE_NAME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn original_config_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let secret = unique_secret();
    std::fs::write(
        dir.path().join("secrets.json"),
        format!(r#"{{"DB_PASSWORD": "{secret}"}}"#),
    )
    .unwrap();
    let socket = dir.path().join("envproxy.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nsocket = \"{}\"\nlog_level = \"debug\"\n\
             [backend]\ntype = \"file\"\npath = \"secrets.json\"\n",
            socket.display()
        ),
    )
    .unwrap();

    let mut agent = spawn_agent(&["--config", config.to_str().unwrap()]);
    wait_until_serving(&socket, &mut agent);

    let mut stream = UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let response = client::call(
        &mut stream,
        &Request::V1 {
            key: b"DB_PASSWORD".to_vec(),
        },
    )
    .unwrap();
    assert_eq!(
        response,
        Response::Found(SecretBytes::new(secret.clone().into_bytes()))
    );
    let response = client::call(
        &mut stream,
        &Request::V2 {
            key: b"DATABASE_PASSWORD".to_vec(),
            value: b"envproxy:DB_PASSWORD".to_vec(),
        },
    )
    .unwrap();
    assert_eq!(
        response,
        Response::Found(SecretBytes::new(secret.clone().into_bytes()))
    );
    drop(stream);

    let (status, stderr) = terminate_and_collect(agent, Signal::SIGTERM);
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(!socket.exists(), "the socket file was left behind");
    assert!(stderr.contains("agent listening"), "{stderr}");
    assert!(stderr.contains("keys=1"), "{stderr}");
    assert!(
        stderr.contains("DATABASE_PASSWORD"),
        "no debug line per request:\n{stderr}"
    );
    assert!(stderr.contains("agent stopped"), "{stderr}");
    assert!(
        !stderr.contains(&secret),
        "a value reached the log:\n{stderr}"
    );
}

#[test]
fn sigint_removes_socket_and_second_agent_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join(".env");
    std::fs::write(&secrets, "A=1\n").unwrap();
    let socket = dir.path().join("s/agent.sock");
    let args = [
        "--secrets",
        secrets.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ];
    let mut agent = spawn_agent(&args);
    wait_until_serving(&socket, &mut agent);

    let (status, stderr) = run_to_end(&args);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().last().unwrap(),
        format!(
            "envproxy-agent: an agent is already listening on {}",
            socket.display()
        )
    );
    assert!(socket.exists(), "the refused agent removed the live socket");

    let (status, stderr) = terminate_and_collect(agent, Signal::SIGINT);
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(!socket.exists(), "the socket file was left behind");
}

#[test]
fn unknown_keys_warn_and_still_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.toml"), "A = \"1\"\n").unwrap();
    let socket = dir.path().join("agent.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nsocket = \"{}\"\nworkers = 8\n[backend]\npath = \"s.toml\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut agent = spawn_agent(&["--config", config.to_str().unwrap()]);
    wait_until_serving(&socket, &mut agent);
    let (status, stderr) = terminate_and_collect(agent, Signal::SIGTERM);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(stderr.contains("key `workers` in [agent]"), "{stderr}");
}

#[test]
fn startup_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    let secret = unique_secret();
    std::fs::write(&secrets, format!(r#"{{"A": ["{secret}"]}}"#)).unwrap();
    let vault = dir.path().join("vault.toml");
    std::fs::write(&vault, "[backend]\ntype = \"vault\"\n").unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(&node, "[agent]\nmode = \"node\"\n").unwrap();
    let socket = dir.path().join("agent.sock");
    let socket = socket.to_str().unwrap();

    let cases: [(&[&str], &str); 4] = [
        (
            &["--config", vault.to_str().unwrap()],
            "[backend] has no Vault address",
        ),
        (
            &["--config", node.to_str().unwrap()],
            "mode = \"node\" needs the node's name",
        ),
        (&["--socket", socket], "no backend is configured"),
        (
            &["--secrets", secrets.to_str().unwrap(), "--socket", socket],
            "the value of `A` must be a string, found an array",
        ),
    ];
    for (args, expected) in cases {
        let (status, stderr) = run_to_end(args);
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("envproxy-agent: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains(&secret), "{args:?}: {stderr}");
    }
    assert!(!Path::new(socket).exists());
}

/// Runs the agent with a config file of `[metrics]` `table` and returns its exit status and
/// standard error; the agent must exit on its own.
fn run_with_metrics_table(dir: &Path, table: &str) -> (std::process::ExitStatus, String) {
    std::fs::write(dir.join("s.toml"), "A = \"1\"\n").unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nsocket = \"{}\"\n[backend]\npath = \"s.toml\"\n[metrics]\n{table}",
            dir.join("agent.sock").display()
        ),
    )
    .unwrap();
    let output = Command::new(AGENT)
        .args(["--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (output.status, String::from_utf8(output.stderr).unwrap())
}

#[test]
fn metrics_listen_invalid_address_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = run_with_metrics_table(dir.path(), "listen = \"localhost:9464\"\n");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid [metrics] listen"), "{stderr}");
    assert!(stderr.contains("\"127.0.0.1:9464\""), "{stderr}");
    assert!(!dir.path().join("agent.sock").exists());
}

#[test]
fn metrics_listen_port_in_use_fails() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = run_with_metrics_table(dir.path(), &format!("listen = \"{address}\"\n"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on [metrics] listen = \"{address}\""
        )),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!dir.path().join("agent.sock").exists(), "no socket is left");
}

#[test]
fn metrics_listener_serves_scrapes() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = probe.local_addr().unwrap();
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.toml"), "A = \"1\"\n").unwrap();
    let socket = dir.path().join("agent.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nsocket = \"{}\"\n[backend]\npath = \"s.toml\"\n[metrics]\nlisten = \"{address}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut agent = spawn_agent(&["--config", config.to_str().unwrap()]);
    wait_until_serving(&socket, &mut agent);

    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("envproxy_requests_total{decision=\"status\"} 1\n"),
        "the readiness probe's status request is counted:\n{response}"
    );

    let (status, stderr) = terminate_and_collect(agent, Signal::SIGTERM);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("metrics listening"), "{stderr}");
}

#[test]
fn webhook_without_certificate_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[webhook]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let missing = dir.path().join("missing.crt");
    let output = Command::new(AGENT)
        .arg("webhook")
        .arg("--config")
        .arg(&config)
        .arg("--tls-cert")
        .arg(&missing)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("envproxy-agent: cannot load the TLS certificate"),
        "{stderr}"
    );
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn webhook_port_in_use_fails_once() {
    let dir = tempfile::tempdir().unwrap();
    let certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, certificate.cert.pem()).unwrap();
    std::fs::write(&key_path, certificate.signing_key.serialize_pem()).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();

    let output = Command::new(AGENT)
        .arg("webhook")
        .arg("--listen")
        .arg(address.to_string())
        .arg("--tls-cert")
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error 98").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn webhook_rejects_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[webhook]\ntoken_expiration_secs = 60\n").unwrap();
    let output = Command::new(AGENT)
        .args(["webhook", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid [webhook] token_expiration_secs: expected 600 to 86400 seconds"),
        "{stderr}"
    );
}

#[test]
fn agent_flags_conflict_with_webhook() {
    let output = Command::new(AGENT)
        .args(["--socket", "/tmp/x.sock", "webhook"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the subcommand 'webhook' cannot be used with '--socket <PATH>'"),
        "{stderr}"
    );
}
