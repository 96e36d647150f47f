//! End-to-end tests of Kubernetes Secrets in local mode: C and Python programs under
//! `envproxy run` read `k8s:` references and, with `[backend] type = "kubernetes"`, `envproxy:`
//! references from the in-repo kube API test server, with the user's kubeconfig
//! (`~/.kube/config` or `[backend] kubeconfig`).
//!
//! Every test starts its own server and uses random secrets and tokens, and checks that none
//! of them reaches stderr.

mod e2e_support;
mod e2e_vault_support;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envproxy_kube_test_server::{KubeTestServer, Rule, ServerOptions};
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use tokio::runtime::Runtime;

use e2e_support::*;
use e2e_vault_support::{envproxy_run, error_line};

const LIMIT: Duration = Duration::from_secs(60);

/// The kube API test server on a runtime owned by the test, and the token of user `alice`, who
/// may get Secrets in `default` and `shop` and list and watch them in `shop`.
struct Cluster {
    // Declared before the runtime, so the listener is stopped while its runtime still exists.
    server: KubeTestServer,
    _runtime: Runtime,
    token: String,
}

impl Cluster {
    fn start() -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("start a Tokio runtime for the kube API test server");
        let server = runtime
            .block_on(KubeTestServer::start(ServerOptions::default()))
            .expect("start the kube API test server");
        let token = random_secret();
        server.register_token(
            &token,
            "alice",
            vec![
                Rule::new(&["get"], &["secrets"]).in_namespaces(&["default", "shop"]),
                Rule::new(&["list", "watch"], &["secrets"]).in_namespaces(&["shop"]),
            ],
        );
        Cluster {
            server,
            _runtime: runtime,
            token,
        }
    }

    /// Stores Secret `namespace/name` with `pairs` as `stringData`.
    fn put(&self, namespace: &str, name: &str, pairs: &[(&str, &str)]) {
        let data: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": data,
        }))
        .unwrap();
        self.server.apply_secret(secret).unwrap();
    }

    /// Writes the kubeconfig where `kubectl` finds it: `~/.kube/config` of the test's home.
    fn write_home_kubeconfig(&self, world: &World) -> PathBuf {
        let directory = world.path(".kube");
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("config");
        std::fs::write(&path, self.server.kubeconfig(&self.token)).unwrap();
        path
    }
}

/// `envproxy run OPTIONS -- probe ARGS` without `KUBECONFIG`, so the kubeconfig comes from the
/// test's home directory or the config file.
fn run_probe(world: &World, options: &[&OsStr]) -> Command {
    let mut command = envproxy_run(world, options, probe());
    command.env_remove("KUBECONFIG");
    command
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
fn k8s_references_use_home_kubeconfig() {
    let cluster = Cluster::start();
    let world = World::new();
    cluster.write_home_kubeconfig(&world);
    let (password, token) = (random_secret(), random_secret());
    cluster.put("default", "db", &[("password", &password)]);
    cluster.put("shop", "api", &[("token", &token)]);
    let secrets = world.write_secrets(&[("PLAIN_KEY", "from-file")]);

    let mut command = run_probe(&world, &[OsStr::new("--secrets"), secrets.as_os_str()]);
    command
        .env("DB_PASSWORD", "k8s:db#password")
        .env("API_TOKEN", "k8s:shop/api#token")
        .env("GONE", "k8s:shop/gone#token")
        .args(["get", "DB_PASSWORD", "API_TOKEN", "PLAIN_KEY", "GONE"]);
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let value = |name: &str| value_of(&output.stdout, name);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        value("DB_PASSWORD").as_deref(),
        Some(&*password),
        "{stderr}"
    );
    assert_eq!(value("API_TOKEN").as_deref(), Some(&*token), "{stderr}");
    assert_eq!(value("PLAIN_KEY").as_deref(), Some("from-file"), "{stderr}");
    assert_eq!(value("GONE").as_deref(), Some("k8s:shop/gone#token"));
    let line = error_line(&stderr, "GONE").unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains("Secret shop/gone not found"), "{line}");
    assert_no_secrets("stderr", &stderr, &[&password, &token, &cluster.token]);
}

#[test]
fn forbidden_namespace_names_user_and_fix() {
    let cluster = Cluster::start();
    let world = World::new();
    cluster.write_home_kubeconfig(&world);
    let card = random_secret();
    cluster.put("billing", "card", &[("number", &card)]);
    let secrets = world.write_secrets(&[("UNUSED", "x")]);

    let mut command = run_probe(&world, &[OsStr::new("--secrets"), secrets.as_os_str()]);
    command
        .env("CARD", "k8s:billing/card#number")
        .args(["get", "CARD"]);
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        value_of(&output.stdout, "CARD").as_deref(),
        Some("k8s:billing/card#number")
    );
    let line = error_line(&stderr, "CARD").unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains("permission denied reading Secret billing/card"),
        "{line}"
    );
    assert!(line.contains("User \"alice\" cannot get"), "{line}");
    assert_no_secrets("stderr", &stderr, &[&card, &cluster.token]);
}

#[test]
fn default_secret_edit_reaches_running_process() {
    let cluster = Cluster::start();
    let world = World::new();
    std::fs::write(
        world.path("kubeconfig"),
        cluster.server.kubeconfig(&cluster.token),
    )
    .unwrap();
    let config = world.path("agent.toml");
    // The original EnvProxy layout, plus the kubeconfig to read with. The long cache TTL
    // leaves the watch as the only way an edit can arrive within the test.
    std::fs::write(
        &config,
        "[backend]\ntype = \"kubernetes\"\nnamespace = \"shop\"\nsecret_name = \"app-env\"\n\
         kubeconfig = \"kubeconfig\"\ncache_ttl = \"10m\"\n",
    )
    .unwrap();
    let before = random_secret();
    cluster.put("shop", "app-env", &[("API_KEY", &before)]);

    let mut child = run_probe(&world, &[OsStr::new("--config"), config.as_os_str()])
        .env("API_KEY", "envproxy:API_KEY")
        .env("ENVPROXY_CACHE_TTL", "1")
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap());
    let mut get = |name: &str| {
        writeln!(input, "{name}").unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        let value = line
            .trim_end()
            .strip_prefix(&format!("{name}="))
            .unwrap_or_default()
            .to_string();
        line.clear();
        output.read_line(&mut line).unwrap();
        value
    };
    assert_eq!(get("API_KEY"), before);

    let after = random_secret();
    cluster.put("shop", "app-env", &[("API_KEY", &after)]);
    let edited = Instant::now();
    let mut value = get("API_KEY");
    while value != after && edited.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        value = get("API_KEY");
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(value, after, "the edited value did not arrive");
    assert!(
        edited.elapsed() < Duration::from_secs(3),
        "arrived after {:?}; the watch and ENVPROXY_CACHE_TTL=1 allow about 1 s",
        edited.elapsed()
    );
    // The first request may arrive before the watch's first list and read the Secret once;
    // the edit itself comes through the watch.
    assert!(
        cluster.server.request_count("get", "secrets") <= 1,
        "the watch served the default Secret: {:?}",
        cluster.server.requests()
    );
    assert_eq!(cluster.server.request_count("watch", "secrets"), 1);
}

/// Python code that prints a variable read through `os.environ[...]`, `os.getenv` and a copy
/// of `os.environ`, and whether the value is in the process's own environ.
const PYTHON_READ: &str = r#"
import os, sys
name = sys.argv[1]
value = os.environ[name]
raw = open("/proc/self/environ", "rb").read()
print(f"item={value}")
print("getenv=" + str(os.getenv(name)))
print("copy=" + dict(os.environ)[name])
print("environ=" + ("leak" if value.encode() in raw else "clean"))
"#;

#[test]
fn python_reads_k8s_reference_through_os_environ() {
    let cluster = Cluster::start();
    let world = World::new();
    cluster.write_home_kubeconfig(&world);
    let password = random_secret();
    cluster.put("shop", "db", &[("password", &password)]);
    let secrets = world.write_secrets(&[("PLAIN_KEY", "from-file")]);

    let mut command = envproxy_run(
        &world,
        &[OsStr::new("--secrets"), secrets.as_os_str()],
        "python3",
    );
    command
        .env_remove("KUBECONFIG")
        .env("DB_PASSWORD", "k8s:shop/db#password")
        .args(["-c", PYTHON_READ, "DB_PASSWORD"]);
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let value = |name: &str| value_of(&output.stdout, name);
    assert!(output.status.success(), "python3 failed: {stderr}");
    assert_eq!(value("item").as_deref(), Some(&*password), "{stderr}");
    assert_eq!(value("getenv").as_deref(), Some(&*password));
    assert_eq!(value("copy").as_deref(), Some(&*password));
    assert_eq!(value("environ").as_deref(), Some("clean"));
    assert_no_secrets("stderr", &stderr, &[&password, &cluster.token]);
}

/// Writes `kubeconfig` and an agent config whose default backend is Secret `shop/app-env`,
/// and returns the config's path.
fn write_default_secret_config(cluster: &Cluster, world: &World) -> PathBuf {
    std::fs::write(
        world.path("kubeconfig"),
        cluster.server.kubeconfig(&cluster.token),
    )
    .unwrap();
    let config = world.path("agent.toml");
    std::fs::write(
        &config,
        "[backend]\ntype = \"kubernetes\"\nnamespace = \"shop\"\nsecret_name = \"app-env\"\n\
         kubeconfig = \"kubeconfig\"\n",
    )
    .unwrap();
    config
}

#[test]
fn default_secret_keys_are_exported_as_references() {
    let cluster = Cluster::start();
    let world = World::new();
    let config = write_default_secret_config(&cluster, &world);
    let (db_url, api_key) = (random_secret(), random_secret());
    cluster.put(
        "shop",
        "app-env",
        &[("DB_URL", &db_url), ("API_KEY", &api_key)],
    );

    // The program's environment does not name DB_URL: envproxy run adds it from the Secret.
    let mut command = run_probe(&world, &[OsStr::new("--config"), config.as_os_str()]);
    command.env_remove("DB_URL").args(["wait", "DB_URL"]);
    let probe = run_waiting_probe(&mut command, LIMIT);
    assert!(probe.status.success(), "{}", probe.stderr);
    assert_eq!(
        value_of(probe.printed.as_bytes(), "DB_URL").as_deref(),
        Some(&*db_url),
        "{}",
        probe.stderr
    );
    assert!(contains(&probe.environ, "DB_URL=envproxy:DB_URL"));
    assert!(contains(&probe.environ, "API_KEY=envproxy:API_KEY"));
    // The keys are listed, so no name absent from the environment is looked up.
    assert!(!contains(&probe.environ, "ENVPROXY_LOOKUP_UNSET"));
    for secret in [&db_url, &api_key] {
        assert!(
            !contains(&probe.environ, secret),
            "a value is in the environ"
        );
    }
    assert_no_secrets(
        "stderr",
        &probe.stderr,
        &[&db_url, &api_key, &cluster.token],
    );

    // `envproxy status` under `envproxy run`, served by the same embedded agent.
    let mut command = envproxy_run(
        &world,
        &[OsStr::new("--config"), config.as_os_str()],
        envproxy(),
    );
    command
        .env_remove("KUBECONFIG")
        .args(["status", "-o", "json"]);
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["keys"], json!(["API_KEY", "DB_URL"]), "{status}");
    assert_eq!(status["backend"]["type"], "kubernetes", "{status}");
    assert_eq!(status["backend"]["namespace"], "shop");
    assert_eq!(status["backend"]["secret"], "app-env");
    assert_eq!(status["backend"]["keys_loaded"], 2);
    assert_eq!(status["backend"]["keys_listed"], true);
    assert_no_secrets(
        "status",
        &String::from_utf8_lossy(&output.stdout),
        &[&db_url, &api_key, &cluster.token],
    );
}
