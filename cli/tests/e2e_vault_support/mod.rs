//! Shared parts of the Vault end-to-end tests: a Vault test server on a Tokio runtime owned by
//! the test, agent config files, and the commands that run programs, agents and `envproxy get`
//! against it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use envproxy_vault_test_server::{Capability, Policy, ServerOptions, TokenSpec, VaultTestServer};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::e2e_support::{
    envproxy, library, run_with_limit, source_hooks_dir, wait_for_agent, World,
};

/// The KV v2 mount of the test server's default options.
pub const KV2_MOUNT: &str = "secret";
/// The KV v1 mount of the test server's default options.
pub const KV1_MOUNT: &str = "kv";
/// The database secrets engine mount of the test server's default options.
pub const DATABASE_MOUNT: &str = "database";

/// The policy of [`Vault::reader_token`].
pub const READER_POLICY: &str = "e2e-reader";

/// A Vault test server listening on 127.0.0.1, served by its own runtime so that the tests
/// stay synchronous like the other end-to-end tests.
pub struct Vault {
    // Declared before the runtime so that the server's listener is aborted while the runtime
    // that runs it still exists.
    server: VaultTestServer,
    runtime: Runtime,
}

impl Vault {
    /// Starts a plain HTTP server with the default mounts (`secret` KV v2, `kv` KV v1,
    /// `database`).
    pub fn start() -> Vault {
        Vault::start_with(ServerOptions::default())
    }

    pub fn start_with(options: ServerOptions) -> Vault {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vault-test-server")
            .enable_all()
            .build()
            .expect("start a Tokio runtime for the Vault test server");
        let server = runtime
            .block_on(VaultTestServer::start(options))
            .expect("start the Vault test server");
        Vault { server, runtime }
    }

    pub fn server(&self) -> &VaultTestServer {
        &self.server
    }

    /// Returns the server's address, for `address` in the agent config or `VAULT_ADDR`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn root_token(&self) -> String {
        self.server.root_token().to_string()
    }

    /// Writes a new version of a KV v2 secret under the `secret` mount and returns its number.
    pub fn put_kv2(&self, path: &str, data: Value) -> u64 {
        self.server
            .root()
            .kv2_put(KV2_MOUNT, path, data)
            .expect("write a KV v2 secret")
    }

    /// Creates the `e2e-reader` policy, which allows `read` on `secret/data/e2e/*`,
    /// `kv/e2e/*` and `database/creds/*`, and returns a new token that carries it.
    pub fn reader_token(&self, spec: TokenSpec) -> String {
        let read = [Capability::Read];
        let policy = Policy::new()
            .allow("secret/data/e2e/*", &read)
            .allow("kv/e2e/*", &read)
            .allow("database/creds/*", &read);
        self.server.root().set_policy(READER_POLICY, policy);
        let spec = TokenSpec {
            policies: vec![READER_POLICY.to_string()],
            ..spec
        };
        self.server
            .create_token(spec)
            .expect("create a token in the root namespace")
            .token
    }

    /// Closes the listening socket and every open connection; the stored data stays.
    pub fn stop_listening(&self) {
        self.runtime.block_on(self.server.stop_listening());
    }

    /// Listens again on the same port.
    pub fn start_listening(&self) {
        self.runtime
            .block_on(self.server.start_listening())
            .expect("listen again on the same port");
    }

    /// Returns how many `GET` requests reached `path` (after `/v1/`, without the query).
    pub fn reads(&self, path: &str) -> u64 {
        self.server.request_count("GET", path)
    }

    /// Returns how many `PUT` and `POST` requests reached `path`. Vault treats both methods
    /// as the same write operation, so a client may use either.
    pub fn writes(&self, path: &str) -> u64 {
        self.server.request_count("PUT", path) + self.server.request_count("POST", path)
    }

    /// Writes the PEM of the CA that signed the server certificate to `world` and returns the
    /// file's path.
    pub fn write_ca_cert(&self, world: &World) -> PathBuf {
        let pem = self
            .server
            .ca_cert_pem()
            .expect("the server was started with TLS");
        let path = world.path("vault-ca.pem");
        std::fs::write(&path, pem).expect("write the CA certificate");
        path
    }
}

/// Returns a secret path that no other test uses, such as `e2e/kv-3f9a1c7e`.
pub fn unique_path(prefix: &str) -> String {
    let random = crate::e2e_support::random_secret();
    format!("e2e/{prefix}-{}", &random[..8])
}

/// An agent config file: a `[backend]` table of type `vault`, or of type `file` with a
/// `[vault]` table, built key by key.
pub struct AgentConfig {
    secrets_file: Option<PathBuf>,
    vault: Vec<(String, String)>,
    /// TOML text written after the `[vault]` table, such as an `[admin]` table.
    tables: String,
}

impl AgentConfig {
    /// Starts a config with Vault as the only backend at `address`, with token auth.
    pub fn vault(address: &str) -> AgentConfig {
        AgentConfig {
            secrets_file: None,
            vault: vec![
                ("address".to_string(), toml_string(address)),
                ("auth_method".to_string(), toml_string("token")),
            ],
            tables: String::new(),
        }
    }

    /// Switches to a `file` backend on `secrets` with a `[vault]` table, so the agent serves
    /// `envproxy:` references from the file and `vault:` references from Vault.
    pub fn with_secrets_file(mut self, secrets: &Path) -> AgentConfig {
        self.secrets_file = Some(secrets.to_path_buf());
        self
    }

    /// Sets a string key of the Vault settings, such as `cache_ttl = "1s"`.
    pub fn set(mut self, key: &str, value: &str) -> AgentConfig {
        self.vault.push((key.to_string(), toml_string(value)));
        self
    }

    /// Sets a path key of the Vault settings, such as `ca_cert`.
    pub fn set_path(self, key: &str, value: &Path) -> AgentConfig {
        let text = value.to_str().expect("temporary paths are UTF-8");
        self.set(key, text)
    }

    /// Adds TOML tables after the Vault settings, such as `"[admin]\nenabled = true\n"`.
    pub fn with_tables(mut self, text: &str) -> AgentConfig {
        self.tables.push_str(text);
        self
    }

    /// Writes the file as `<name>` in `world` and returns its path.
    pub fn write(&self, world: &World, name: &str) -> PathBuf {
        let mut text = String::from("[backend]\n");
        match &self.secrets_file {
            Some(secrets) => {
                text.push_str("type = \"file\"\n");
                let secrets = secrets.to_str().expect("temporary paths are UTF-8");
                text.push_str(&format!("path = {}\n\n[vault]\n", toml_string(secrets)));
            }
            None => text.push_str("type = \"vault\"\n"),
        }
        for (key, value) in &self.vault {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text.push('\n');
        text.push_str(&self.tables);
        let path = world.path(name);
        std::fs::write(&path, text).expect("write the agent config");
        path
    }
}

/// Quotes `text` as a TOML basic string. The escapes serde_json writes (`\"`, `\\`, `\n`,
/// `\uXXXX` and the like, never `\/`) are all valid in TOML.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Removes every `ENVPROXY_*` and `VAULT_*` variable of the test process from what `command`
/// passes on, so that a developer's own agent or Vault settings cannot change a test. Points
/// `HOME` and `XDG_RUNTIME_DIR` at `world`, so that no `~/.vault-token` and no agent on the
/// per-user socket is found, and `ENVPROXY_HOOKS_DIR` at the source tree's hooks.
pub fn isolate(command: &mut Command, world: &World) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("ENVPROXY_") || name.starts_with("VAULT_") {
            command.env_remove(&key);
        }
    }
    command
        .env("HOME", world.dir.path())
        .env("XDG_RUNTIME_DIR", world.dir.path())
        .env("ENVPROXY_HOOKS_DIR", source_hooks_dir());
}

/// `envproxy run OPTIONS -- PROGRAM` in an isolated environment, using the built library.
pub fn envproxy_run(world: &World, options: &[&OsStr], program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(envproxy());
    isolate(&mut command, world);
    command
        .env("ENVPROXY_LIB", library())
        .arg("run")
        .args(options)
        .arg("--")
        .arg(program);
    command
}

/// `envproxy run --config CONFIG -- PROGRAM` with `VAULT_TOKEN` set to `token`, so the embedded
/// agent reads Vault with that token.
pub fn run_with_config(
    world: &World,
    config: &Path,
    token: &str,
    program: impl AsRef<OsStr>,
) -> Command {
    let mut command = envproxy_run(
        world,
        &[OsStr::new("--config"), config.as_os_str()],
        program,
    );
    command.env("VAULT_TOKEN", token);
    command
}

/// `envproxy run -- PROGRAM` with only environment variables: `VAULT_ADDR`, `VAULT_TOKEN`, and
/// whatever the caller adds.
pub fn run_with_environment(
    world: &World,
    address: &str,
    token: &str,
    program: impl AsRef<OsStr>,
) -> Command {
    let mut command = envproxy_run(world, &[], program);
    command.env("VAULT_ADDR", address).env("VAULT_TOKEN", token);
    command
}

/// `envproxy get --socket SOCKET REFERENCE`, run to completion.
pub fn envproxy_get(world: &World, socket: &Path, reference: &str) -> Output {
    let mut command = Command::new(envproxy());
    isolate(&mut command, world);
    command
        .arg("get")
        .arg("--socket")
        .arg(socket)
        .arg(reference);
    run_with_limit(&mut command, Duration::from_secs(30))
}

/// A standalone `envproxy-agent --config CONFIG --socket SOCKET` with Vault, whose log goes to
/// a file so that tests can check it. Stopped on drop.
pub struct VaultAgent {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl VaultAgent {
    pub fn start(world: &World, config: &Path, token: &str) -> VaultAgent {
        let socket = world.path("vault-agent.sock");
        let log = world.path("vault-agent.log");
        let mut command = Command::new(crate::e2e_support::agent_binary());
        isolate(&mut command, world);
        let child = command
            .env("VAULT_TOKEN", token)
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create the agent log"))
            .spawn()
            .expect("start envproxy-agent");
        let mut agent = VaultAgent { child, socket, log };
        if let Ok(Some(status)) = agent.child.try_wait() {
            panic!("envproxy-agent exited with {status}: {}", agent.log_text());
        }
        wait_for_agent(&agent.socket, Duration::from_secs(10));
        agent
    }

    /// Returns what the agent has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `envproxy run --socket SOCKET -- PROGRAM`: a program served by this agent.
    pub fn run(&self, world: &World, program: impl AsRef<OsStr>) -> Command {
        envproxy_run(
            world,
            &[OsStr::new("--socket"), self.socket.as_os_str()],
            program,
        )
    }
}

impl Drop for VaultAgent {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) with the pid of a child this test spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns the line the library wrote to stderr for variable `name`, if any. The library
/// writes `envproxy[PID]: NAME: cannot resolve REFERENCE: REASON; ...`.
pub fn error_line(stderr: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}: cannot resolve ");
    let after_pid = format!("]: {prefix}");
    stderr
        .lines()
        .find(|line| line.starts_with(&prefix) || line.contains(&after_pid))
        .map(str::to_string)
}

/// Python code that prints `NAME=VALUE` for each name in its arguments, read through
/// `os.environ`.
pub const PYTHON_PRINT: &str = r#"
import os, sys
for name in sys.argv[1:]:
    print(f"{name}={os.environ.get(name, '(null)')}")
"#;
