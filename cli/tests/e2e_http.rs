//! End-to-end tests of the HTTP secrets backend: real C and Python programs under `envproxy run
//! --config CONFIG`, with `[backend] type = "http"`, read `envproxy:` references from the
//! in-repo HTTP secrets test server, which counts the requests it receives.
//!
//! Every test starts its own server and uses random secrets and tokens, and checks that none
//! of them reaches stderr.

mod e2e_support;
mod e2e_vault_support;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use envproxy_http_test_server::{HttpSecretsServer, TokenAccess};
use tokio::runtime::Runtime;

use e2e_support::*;
use e2e_vault_support::{envproxy_run, error_line, PYTHON_PRINT};

const LIMIT: Duration = Duration::from_secs(60);

/// An HTTP secrets test server on a runtime owned by the test, so the test stays synchronous.
struct Api {
    // Declared before the runtime, so the listener is stopped while its runtime still exists.
    server: HttpSecretsServer,
    _runtime: Runtime,
    token: String,
}

impl Api {
    fn start() -> Api {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("start a Tokio runtime for the HTTP secrets test server");
        let server = runtime
            .block_on(HttpSecretsServer::start())
            .expect("start the HTTP secrets test server");
        let token = random_secret();
        server.add_token(&token, TokenAccess::All);
        Api {
            server,
            _runtime: runtime,
            token,
        }
    }

    /// Writes the token file and an agent config with the HTTP backend and `extra` lines, and
    /// returns the config's path.
    fn write_config(&self, world: &World, extra: &str) -> PathBuf {
        std::fs::write(world.path("http-token"), format!("{}\n", self.token))
            .expect("write the token file");
        let text = format!(
            "[backend]\ntype = \"http\"\nurl = \"{}\"\nauth_token_file = \"http-token\"\n{extra}",
            self.server.url()
        );
        let path = world.path("agent.toml");
        std::fs::write(&path, text).expect("write the agent config");
        path
    }
}

/// `envproxy run --config CONFIG -- PROGRAM`.
fn run_with_config(world: &World, config: &Path, program: impl AsRef<OsStr>) -> Command {
    envproxy_run(
        world,
        &[OsStr::new("--config"), config.as_os_str()],
        program,
    )
}

fn require_python() {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "python3 is not installed; .ci/run installs it (apt-get install python3)"
    );
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_no_secrets(origin: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{origin} contains a secret value or the token: {text}"
        );
    }
}

#[test]
fn c_and_python_resolve_references() {
    require_python();
    let api = Api::start();
    let world = World::new();
    let (password, key) = (random_secret(), random_secret());
    api.server.set_secret("DB_PASSWORD", &password);
    api.server.set_secret_with_ttl("API_KEY", &key, 5);
    let config = api.write_config(&world, "");
    let variables = [
        ("DB_PASSWORD", "envproxy:DB_PASSWORD"),
        ("SERVICE_KEY", "envproxy:API_KEY"),
        ("PLAIN", "plain-value"),
    ];

    let mut c_command = run_with_config(&world, &config, probe());
    c_command
        .envs(variables)
        .args(["get", "DB_PASSWORD", "SERVICE_KEY", "PLAIN"]);
    let mut python_command = run_with_config(&world, &config, "python3");
    python_command.envs(variables).args([
        "-c",
        PYTHON_PRINT,
        "DB_PASSWORD",
        "SERVICE_KEY",
        "PLAIN",
    ]);
    for (program, mut command) in [("C", c_command), ("Python", python_command)] {
        let output = run_with_limit(&mut command, LIMIT);
        let stderr = stderr_of(&output);
        let value = |name: &str| value_of(&output.stdout, name);
        assert_eq!(
            value("DB_PASSWORD").as_deref(),
            Some(&*password),
            "{program}: {stderr}"
        );
        assert_eq!(
            value("SERVICE_KEY").as_deref(),
            Some(&*key),
            "{program}: {stderr}"
        );
        assert_eq!(
            value("PLAIN").as_deref(),
            Some("plain-value"),
            "{program}: {stderr}"
        );
        assert!(output.status.success(), "{program}: {stderr}");
        assert_no_secrets(program, &stderr, &[&password, &key, &api.token]);
    }
    assert!(api.server.request_count("DB_PASSWORD") >= 1);
    assert!(api.server.request_count("API_KEY") >= 1);
    assert!(api
        .server
        .requests()
        .iter()
        .all(|request| request.had_bearer_token));
}

#[test]
fn forbidden_key_is_reported_by_name() {
    let api = Api::start();
    let world = World::new();
    let limited = random_secret();
    api.server.add_token_for_keys(&limited, &["ALLOWED"]);
    api.server.set_secret("ALLOWED", "allowed-value");
    api.server.set_secret("DENIED", &random_secret());
    let config = api.write_config(&world, "");
    std::fs::write(world.path("http-token"), &limited).expect("write the limited token");

    let mut command = run_with_config(&world, &config, probe());
    command
        .env("OPEN", "envproxy:ALLOWED")
        .env("CLOSED", "envproxy:DENIED")
        .args(["get", "OPEN", "CLOSED"]);
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = stderr_of(&output);
    assert_eq!(
        value_of(&output.stdout, "OPEN").as_deref(),
        Some("allowed-value")
    );
    // By default the program gets the reference unchanged when it cannot be resolved.
    assert_eq!(
        value_of(&output.stdout, "CLOSED").as_deref(),
        Some("envproxy:DENIED"),
        "{stderr}"
    );
    let line = error_line(&stderr, "CLOSED").unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains("permission denied reading `DENIED`"),
        "{line}"
    );
    assert!(line.contains("HTTP 403"), "{line}");
    assert_no_secrets("stderr", &stderr, &[&limited, &api.token]);
}

#[test]
fn rotation_seen_by_running_process() {
    let api = Api::start();
    let world = World::new();
    let (old, new) = (random_secret(), random_secret());
    api.server.set_secret("ROTATING", &old);
    let config = api.write_config(&world, "cache_ttl = \"1s\"\n");
    let mut command = run_with_config(&world, &config, probe());
    command
        .env("ENVPROXY_CACHE_TTL", "1")
        .env("ROTATING", "envproxy:ROTATING")
        .args(["loop", "ROTATING", "50", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the program");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, values) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(value) = line.strip_prefix("ROTATING=") {
                if sender.send((Instant::now(), value.to_string())).is_err() {
                    break;
                }
            }
        }
    });

    let (_, first) = values.recv_timeout(LIMIT).expect("first value");
    assert_eq!(first, old);
    let written_at = Instant::now();
    api.server.set_secret("ROTATING", &new);
    let delay = loop {
        let (at, value) = values
            .recv_timeout(Duration::from_secs(10))
            .expect("the new value never appeared");
        if value == new {
            break at.duration_since(written_at);
        }
        assert_eq!(value, old, "unexpected value while rotating");
    };
    let output = child.wait_with_output().expect("wait for the program");
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert_no_secrets("stderr", &stderr, &[&old, &new, &api.token]);
    // The agent's and the library's TTLs of one second each, plus one for scheduling.
    assert!(
        delay <= Duration::from_secs(3),
        "new value seen {delay:?} after the write"
    );
}

#[test]
fn status_shows_http_backend() {
    let api = Api::start();
    let world = World::new();
    api.server.set_secret("A", &random_secret());
    let config = api.write_config(&world, "");
    let mut command = run_with_config(&world, &config, envproxy());
    command.args(["status"]);
    let output = run_with_limit(&mut command, LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    let backend = format!("backend:           http {}", api.server.url());
    assert!(stdout.contains(&backend), "{stdout}");
    let token_file = world.path("http-token");
    let auth = format!(
        "http auth:         auth_token_file {}",
        token_file.display()
    );
    assert!(stdout.contains(&auth), "{stdout}");
    assert!(stdout.contains("http last error:   none"), "{stdout}");
    assert_no_secrets("status", &stdout, &[&api.token]);
}

#[test]
fn bare_names_looked_up_without_key_list() {
    let api = Api::start();
    let world = World::new();
    let db_url = random_secret();
    api.server.set_secret("DB_URL", &db_url);
    let config = api.write_config(&world, "");

    // The program's environment does not name DB_URL; the API cannot list its keys, so
    // envproxy run has the library ask the agent for names the environment lacks.
    let mut command = run_with_config(&world, &config, probe());
    command
        .env_remove("DB_URL")
        .env_remove("ENVPROXY_LOOKUP_UNSET")
        .args(["wait", "DB_URL"]);
    let probe_run = run_waiting_probe(&mut command, LIMIT);
    assert!(probe_run.status.success(), "{}", probe_run.stderr);
    assert_eq!(
        value_of(probe_run.printed.as_bytes(), "DB_URL").as_deref(),
        Some(&*db_url),
        "{}",
        probe_run.stderr
    );
    assert!(contains(&probe_run.environ, "ENVPROXY_LOOKUP_UNSET=1"));
    assert!(!contains(&probe_run.environ, "DB_URL="));
    assert!(
        !contains(&probe_run.environ, &db_url),
        "the value is in the environ"
    );
    assert_no_secrets("stderr", &probe_run.stderr, &[&db_url, &api.token]);

    // A name the API lacks is requested once, because the "not found" response is cached.
    let mut command = run_with_config(&world, &config, probe());
    command.env_remove("ENVPROXY_LOOKUP_UNSET").args([
        "get",
        "NOT_THERE",
        "NOT_THERE",
        "NOT_THERE",
    ]);
    let output = run_with_limit(&mut command, LIMIT);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        value_of(&output.stdout, "NOT_THERE").as_deref(),
        Some("(null)")
    );
    assert_eq!(api.server.request_count("NOT_THERE"), 1);

    // A value the user set is kept: with 0, bare names are not looked up.
    let mut command = run_with_config(&world, &config, probe());
    command
        .env("ENVPROXY_LOOKUP_UNSET", "0")
        .args(["get", "DB_URL", "ENVPROXY_LOOKUP_UNSET"]);
    let output = run_with_limit(&mut command, LIMIT);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        value_of(&output.stdout, "DB_URL").as_deref(),
        Some("(null)")
    );
    assert_eq!(
        value_of(&output.stdout, "ENVPROXY_LOOKUP_UNSET").as_deref(),
        Some("0")
    );
    assert_eq!(api.server.request_count("DB_URL"), 1);
}

#[test]
fn status_json_names_http_backend() {
    let api = Api::start();
    let world = World::new();
    let config = api.write_config(&world, "");
    let mut command = run_with_config(&world, &config, envproxy());
    command.args(["status", "-o", "json"]);
    let output = run_with_limit(&mut command, LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["backend"]["type"], "http", "{stdout}");
    assert_eq!(status["backend"]["url"], api.server.url(), "{stdout}");
    assert_eq!(status["backend"]["keys_listed"], false, "{stdout}");
    assert_eq!(status["keys"], serde_json::json!([]), "{stdout}");
    assert_no_secrets("status", &stdout, &[&api.token]);
}
