//! The `envproxy` binary with the Vault backend: `get` and `status` against an agent that
//! serves Vault, and `run` starting an embedded agent from `VAULT_ADDR` alone. Vault is the
//! in-repo test server, on its own runtime in this process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use envproxy_agent::vault::{SecretText, VaultEnvironment, VaultSettings};
use envproxy_agent::{Agent, AgentStatus, Config};
use envproxy_vault_test_server::{ServerOptions, VaultTestServer};
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

const ENVPROXY: &str = env!("CARGO_BIN_EXE_envproxy");
const WAIT: Duration = Duration::from_secs(30);

/// A Vault test server with `secret/app` (`password`, `port`), kept alive by its runtime.
struct Vault {
    server: VaultTestServer,
    _runtime: Runtime,
}

impl Vault {
    fn start() -> Vault {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime
            .block_on(VaultTestServer::start(ServerOptions::default()))
            .unwrap();
        server
            .root()
            .kv2_put(
                "secret",
                "app",
                json!({"password": "vault-cli-pw", "port": 5432}),
            )
            .unwrap();
        Vault {
            server,
            _runtime: runtime,
        }
    }

    fn settings(&self) -> VaultSettings {
        let environment = VaultEnvironment {
            token: Some(std::sync::Arc::new(SecretText::new(
                self.server.root_token().to_string(),
            ))),
            ..VaultEnvironment::default()
        };
        VaultSettings::with_defaults(self.server.url(), &environment)
    }
}

/// An agent with only the Vault backend, on its own runtime thread.
struct VaultAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VaultAgent {
    fn start(vault: &Vault) -> VaultAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let config = Config {
            socket: Some(socket.clone()),
            vault: Some(vault.settings()),
            ..Config::default()
        };
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let agent = Agent::bind(config).await.unwrap();
                ready_sender.send(()).unwrap();
                agent
                    .serve(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        ready.recv_timeout(WAIT).expect("the agent did not start");
        VaultAgent {
            _dir: dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

impl Drop for VaultAgent {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

/// Returns the path of the C library mapped into this process, a harmless library to preload.
fn harmless_library() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            let name = Path::new(path).file_name().unwrap().to_string_lossy();
            name.starts_with("libc.so") || name.starts_with("libc-")
        })
        .map(PathBuf::from)
        .expect("no C library in /proc/self/maps")
}

/// `envproxy` with no EnvProxy or Vault settings inherited from the test's environment.
fn envproxy(args: &[&str]) -> Command {
    let mut command = Command::new(ENVPROXY);
    command
        .args(args)
        .env_remove("ENVPROXY_SOCKET")
        .env_remove("LD_PRELOAD")
        .env_remove("RUST_LOG")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_NAMESPACE")
        .env_remove("VAULT_CACERT")
        .env("ENVPROXY_LIB", harmless_library())
        .stdin(Stdio::null());
    command
}

fn output_of(mut command: Command) -> Output {
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn get_prints_vault_value() {
    let vault = Vault::start();
    let agent = VaultAgent::start(&vault);
    let output = output_of(envproxy(&[
        "get",
        "--socket",
        agent.socket(),
        "vault:secret/data/app#password",
    ]));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "vault-cli-pw\n");

    let port = output_of(envproxy(&[
        "get",
        "--socket",
        agent.socket(),
        "vault:secret/data/app#port",
    ]));
    assert_eq!(text(&port.stdout), "5432\n");
}

#[test]
fn get_reports_vault_errors() {
    let vault = Vault::start();
    let agent = VaultAgent::start(&vault);
    let cases = [
        (
            "vault:secret/data/app#missing",
            "the secret at secret/data/app in Vault has no key `missing`",
        ),
        (
            "vault:secret/data/absent#k",
            "no secret at secret/data/absent",
        ),
        (
            "vault:nomount/data/app#k",
            "no secrets engine mounted at nomount/data/app",
        ),
        ("envproxy:API_KEY", "no secrets file is configured"),
    ];
    for (reference, expected) in cases {
        let output = output_of(envproxy(&["get", "--socket", agent.socket(), reference]));
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{reference}: {stderr}");
        assert!(stderr.contains(expected), "{reference}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{reference}: {stderr}");
        assert!(!stderr.contains("vault-cli-pw"), "{reference}: {stderr}");
        assert!(output.stdout.is_empty(), "{reference}");
    }
}

#[test]
fn status_shows_vault() {
    let vault = Vault::start();
    let agent = VaultAgent::start(&vault);
    for _ in 0..2 {
        let output = output_of(envproxy(&[
            "get",
            "--socket",
            agent.socket(),
            "vault:secret/data/app#password",
        ]));
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    }

    let output = output_of(envproxy(&["status", "--socket", agent.socket()]));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(&format!("vault:             {}\n", vault.server.url())),
        "{stdout}"
    );
    assert!(stdout.contains("vault auth:        token\n"), "{stdout}");
    assert!(
        stdout.contains("vault token:       never expires\n"),
        "{stdout}"
    );
    assert!(stdout.contains("vault cache:       1 entry\n"), "{stdout}");
    assert!(
        stdout.contains("vault hit ratio:   50.0% hits (1 hits, 1 Vault reads)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("backend:           none"), "{stdout}");
    assert!(!stdout.contains(vault.server.root_token()), "{stdout}");

    let json = output_of(envproxy(&[
        "status",
        "-o",
        "json",
        "--socket",
        agent.socket(),
    ]));
    let status: AgentStatus = serde_json::from_slice(&json.stdout).unwrap();
    let info = status.vault.expect("a vault object");
    assert_eq!(info.address, vault.server.url());
    assert_eq!(info.cache_hits, 1);
    assert_eq!(info.cache_misses, 1);
}

#[test]
fn run_serves_vault_from_vault_addr() {
    let vault = Vault::start();
    let dir = tempfile::tempdir().unwrap();
    // The command asks the embedded agent through the socket `run` gives it.
    let script =
        format!("'{ENVPROXY}' get --socket \"$ENVPROXY_SOCKET\" 'vault:secret/data/app#password'");
    let mut command = envproxy(&[
        "run",
        "--socket",
        dir.path().join("agent.sock").to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    command
        .env("VAULT_ADDR", vault.server.url())
        .env("VAULT_TOKEN", vault.server.root_token())
        .env("HOME", dir.path());
    let output = output_of(command);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "vault-cli-pw\n");
    assert_eq!(vault.server.request_count("GET", "secret/data/app"), 1);
}

#[test]
fn run_without_agent_or_vault_explains() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = envproxy(&[
        "run",
        "--socket",
        dir.path().join("agent.sock").to_str().unwrap(),
        "--",
        "true",
    ]);
    command.env("HOME", dir.path());
    let output = output_of(command);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("set VAULT_ADDR"), "{stderr}");
}

#[test]
fn run_serves_file_and_vault_together() {
    let vault = Vault::start();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"API_KEY": "file-pw"}"#).unwrap();
    let script = format!(
        "'{ENVPROXY}' get --socket \"$ENVPROXY_SOCKET\" 'vault:secret/data/app#password' && \
         '{ENVPROXY}' get --socket \"$ENVPROXY_SOCKET\" envproxy:API_KEY && \
         echo \"$API_KEY\""
    );
    let mut command = envproxy(&[
        "run",
        "--secrets",
        secrets.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    command
        .env("VAULT_ADDR", vault.server.url())
        .env("VAULT_TOKEN", vault.server.root_token())
        .env("HOME", dir.path());
    let output = output_of(command);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "vault-cli-pw\nfile-pw\nenvproxy:API_KEY\n"
    );
}

#[test]
fn run_values_in_environ_from_vault() {
    let vault = Vault::start();
    let dir = tempfile::tempdir().unwrap();
    let mut random = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut random,
    )
    .unwrap();
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    vault
        .server
        .root()
        .kv2_put("secret", "values", json!({ "token": token }))
        .unwrap();
    let start = |variables: &[(&str, &str)]| {
        let mut command = envproxy(&[
            "run",
            "--values-in-environ",
            "--",
            "sh",
            "-c",
            "printf '%s' \"$DB_TOKEN\"",
        ]);
        command
            .env("VAULT_ADDR", vault.server.url())
            .env("VAULT_TOKEN", vault.server.root_token())
            .env("HOME", dir.path())
            .env_remove("ENVPROXY_ON_ERROR");
        for (name, value) in variables {
            command.env(name, value);
        }
        output_of(command)
    };

    let output = start(&[("DB_TOKEN", "vault:secret/data/values#token")]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(text(&output.stdout), token);
    assert_eq!(
        stderr.matches("--values-in-environ put 1 ").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "{stderr}");

    let output = start(&[
        ("DB_TOKEN", "vault:secret/data/values#token"),
        ("MISSING_KEY", "vault:secret/data/values#absent"),
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert!(output.stdout.is_empty(), "the command started: {stderr}");
    assert!(
        stderr.contains("MISSING_KEY=vault:secret/data/values#absent: "),
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "{stderr}");
}
