//! End-to-end tests of `envproxy admin` against the `envproxy-agent` binary in local mode, with
//! a secrets file and the Vault test server, or with the HTTP secrets and kube API test
//! servers. They cover every subcommand in table, JSON and YAML form, the audit stream, and
//! flushes counted at Vault. They also check the errors for missing, stale, silent and
//! forbidden admin sockets.
//!
//! `other_uid_is_told_who_may_connect` must run as root: it runs the command as uid 65534.

mod e2e_admin_support;
mod e2e_support;
mod e2e_vault_support;

use std::collections::BTreeMap;
use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_admin_support::*;
use e2e_support::*;
use e2e_vault_support::*;
use envproxy_agent::admin::default_admin_socket;
use envproxy_http_test_server::{HttpSecretsServer, TokenAccess};
use envproxy_kube_test_server::{KubeTestServer, Rule, ServerOptions as KubeOptions};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{json, Value};

const OTHER_UID: u32 = 65534;

/// A local-mode agent with its admin socket on, serving a secrets file with `API_KEY` and a
/// KV v2 secret in the Vault test server, each a random value.
struct Local {
    world: World,
    vault: Vault,
    agent: VaultAgent,
    admin_socket: PathBuf,
    config: PathBuf,
    /// The Vault API path of the secret, such as `secret/data/e2e/admin-1a2b3c4d`.
    vault_path: String,
    reference: String,
    vault_secret: String,
    file_secret: String,
}

impl Local {
    fn start() -> Local {
        let vault = Vault::start();
        let token = vault.root_token();
        Local::start_with_token(vault, &token)
    }

    /// Starts the agent with `VAULT_TOKEN` set to `token`.
    fn start_with_token(vault: Vault, token: &str) -> Local {
        let world = World::new();
        let path = unique_path("admin");
        let vault_secret = random_secret();
        vault.put_kv2(&path, json!({ "password": vault_secret }));
        let file_secret = random_secret();
        let secrets = world.write_secrets(&[("API_KEY", &file_secret)]);
        let agent_socket = world.path("vault-agent.sock");
        let config = AgentConfig::vault(&vault.url())
            .with_secrets_file(&secrets)
            .set("cache_ttl", "5m")
            .with_tables(&format!(
                "[agent]\nsocket = {agent_socket:?}\n\n[admin]\nenabled = true\n"
            ))
            .write(&world, "agent.toml");
        let agent = VaultAgent::start(&world, &config, token);
        assert_eq!(agent.socket, agent_socket);
        let admin_socket = default_admin_socket(&agent.socket);
        Local {
            world,
            vault,
            agent,
            admin_socket,
            config,
            reference: format!("vault:secret/data/{path}#password"),
            vault_path: format!("secret/data/{path}"),
            vault_secret,
            file_secret,
        }
    }

    /// Reads the Vault secret through the agent with `envproxy get`.
    fn get_vault_secret(&self) {
        let output = envproxy_get(&self.world, &self.agent.socket, &self.reference);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(output.stdout, format!("{}\n", self.vault_secret).as_bytes());
    }

    fn vault_reads(&self) -> u64 {
        self.vault.reads(&self.vault_path)
    }

    fn identity(&self) -> String {
        format!("token auth at {}", self.vault.url())
    }

    /// Checks that no secret value reached `output` or the agent's log.
    fn assert_no_secret(&self, output: &str) {
        let secrets = [self.vault_secret.as_str(), self.file_secret.as_str()];
        assert_free_of(output, &secrets);
        assert_free_of(&self.agent.log_text(), &secrets);
    }
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn status_in_three_formats() {
    let local = Local::start();
    local.get_vault_secret();
    local.get_vault_secret();

    let json = admin_json(&local.admin_socket, &["status"]);
    let yaml = admin_yaml(&local.admin_socket, &["status"]);
    for status in [&json, &yaml] {
        assert_eq!(status["mode"], "local");
        assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(status["serving"], true);
        assert_eq!(status["node"], Value::Null);
        assert!(
            status["counters"]["requests"].as_u64() >= Some(2),
            "{status}"
        );
        assert_eq!(status["secrets_file"]["keys_loaded"], 1);
        let vault = &status["vault"][0];
        assert_eq!(vault["identity"], local.identity());
        assert_eq!(vault["logged_in"], true);
        assert_eq!(vault["cache_entries"], 1);
        assert_eq!(vault["cache_hits"], 1);
        assert_eq!(vault["cache_misses"], 1);
    }

    let table = admin_ok(&local.admin_socket, &["status"]);
    let fields = parse_fields(&table);
    assert_eq!(fields["mode"], "local");
    assert_eq!(fields["serving"], "yes");
    assert_eq!(fields["keys loaded"], "1");
    let sessions = parse_table(after_blank_line(&table));
    assert_eq!(sessions.len(), 1, "{table}");
    assert_eq!(sessions[0]["VAULT IDENTITY"], local.identity());
    assert_eq!(sessions[0]["LOGGED IN"], "yes");
    assert_eq!(sessions[0]["ENTRIES"], "1");
    assert_eq!(sessions[0]["HITS"], "1");
    assert_eq!(sessions[0]["MISSES"], "1");
    local.assert_no_secret(&format!("{json}{yaml}{table}"));
}

#[test]
fn status_shows_failed_vault_login() {
    let wrong_token = format!("hvs.{}", random_secret());
    let local = Local::start_with_token(Vault::start(), &wrong_token);

    let json = admin_json(&local.admin_socket, &["status"]);
    assert_eq!(json["serving"], false);
    let reason = json["not_serving_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not logged in to Vault"), "{json}");
    let vault = &json["vault"][0];
    assert_eq!(vault["logged_in"], false);
    let last_error = vault["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("the Vault token was rejected"),
        "{json}"
    );
    assert!(last_error.contains("log in again"), "{json}");

    let table = admin_ok(&local.admin_socket, &["status"]);
    let fields = parse_fields(&table);
    assert_eq!(fields["serving"], "no");
    assert!(
        fields["not serving because"].contains("not logged in to Vault"),
        "{table}"
    );
    let sessions = parse_table(after_blank_line(&table));
    assert_eq!(sessions.len(), 1, "{table}");
    assert_eq!(sessions[0]["LOGGED IN"], "no");
    assert!(
        sessions[0]["LAST ERROR"].contains("the Vault token was rejected"),
        "{table}"
    );
    let outputs = format!("{json}{table}{}", local.agent.log_text());
    assert_free_of(&outputs, &[&wrong_token]);
}

#[test]
fn cache_lists_reads_without_values() {
    let local = Local::start();
    for _ in 0..3 {
        local.get_vault_secret();
    }

    let json = admin_json(&local.admin_socket, &["cache"]);
    let yaml = admin_yaml(&local.admin_socket, &["cache"]);
    for entries in [&json, &yaml] {
        let entries = entries.as_array().expect("a list of entries");
        assert_eq!(entries.len(), 1, "{entries:?}");
        let entry = &entries[0];
        assert_eq!(entry["identity"], local.identity());
        assert_eq!(entry["path"], local.vault_path.as_str());
        assert_eq!(entry["version"], Value::Null);
        assert_eq!(entry["hits"], 2);
        assert_eq!(entry["stale"], false);
        assert_eq!(entry["lease_end"], Value::Null);
        let ttl_left = entry["ttl_left_seconds"].as_u64().unwrap();
        assert!((250..=300).contains(&ttl_left), "{entry}");
    }

    let table = admin_ok(&local.admin_socket, &["cache"]);
    let rows = parse_table(&table);
    assert_eq!(rows.len(), 1, "{table}");
    assert_eq!(rows[0]["IDENTITY"], local.identity());
    assert_eq!(rows[0]["PATH"], local.vault_path);
    assert_eq!(rows[0]["VERSION"], "-");
    assert_eq!(rows[0]["HITS"], "2");
    assert_eq!(rows[0]["STALE"], "no");
    local.assert_no_secret(&format!("{json}{yaml}{table}"));
}

/// The HTTP secrets test server and the kube API test server on a runtime owned by the test,
/// with a random token for each.
struct HttpAndKube {
    // Declared before the runtime, so the listeners stop while their runtime still exists.
    http: HttpSecretsServer,
    kube: KubeTestServer,
    _runtime: tokio::runtime::Runtime,
    http_token: String,
    kube_token: String,
}

impl HttpAndKube {
    fn start() -> HttpAndKube {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("start a Tokio runtime for the test servers");
        let http = runtime
            .block_on(HttpSecretsServer::start())
            .expect("start the HTTP secrets test server");
        let http_token = random_secret();
        http.add_token(&http_token, TokenAccess::All);
        let kube = runtime
            .block_on(KubeTestServer::start(KubeOptions::default()))
            .expect("start the kube API test server");
        let kube_token = random_secret();
        let rule = Rule::new(&["get"], &["secrets"]).in_namespaces(&["shop"]);
        kube.register_token(&kube_token, "alice", vec![rule]);
        HttpAndKube {
            http,
            kube,
            _runtime: runtime,
            http_token,
            kube_token,
        }
    }

    /// Stores Secret `shop/<name>` with `key` set to `value`.
    fn put_secret(&self, name: &str, key: &str, value: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "shop"},
            "stringData": {key: value},
        }))
        .unwrap();
        self.kube.apply_secret(secret).unwrap();
    }

    /// Starts an agent with the HTTP backend and the admin socket, which reads `k8s:`
    /// references with the kubeconfig in the home directory of `world`. Returns the agent and
    /// its admin socket.
    fn start_agent(&self, world: &World) -> (VaultAgent, PathBuf) {
        let kube_dir = world.path(".kube");
        fs::create_dir_all(&kube_dir).unwrap();
        fs::write(
            kube_dir.join("config"),
            self.kube.kubeconfig(&self.kube_token),
        )
        .unwrap();
        let token_file = world.path("http-token");
        fs::write(&token_file, &self.http_token).unwrap();
        let config = world.path("agent.toml");
        let text = format!(
            "[backend]\ntype = \"http\"\nurl = {:?}\nauth_token_file = {:?}\n\n\
             [admin]\nenabled = true\n",
            self.http.url(),
            token_file,
        );
        fs::write(&config, text).unwrap();
        // The agent reads no Vault, so the token it is given is never used.
        let agent = VaultAgent::start(world, &config, &random_secret());
        let admin_socket = default_admin_socket(&agent.socket);
        (agent, admin_socket)
    }
}

#[test]
fn cache_lists_http_and_secret_reads() {
    let servers = HttpAndKube::start();
    let api_key = random_secret();
    servers.http.set_secret("API_KEY", &api_key);
    let password = random_secret();
    servers.put_secret("db", "password", &password);
    let world = World::new();
    let (agent, admin_socket) = servers.start_agent(&world);

    let empty = admin(&admin_socket, &["cache"]);
    assert!(empty.status.success(), "{empty:?}");
    assert_eq!(
        stderr_of(&empty),
        "envproxy: the agent has no cached reads\n"
    );
    assert!(parse_table(&String::from_utf8_lossy(&empty.stdout)).is_empty());

    let get = |reference: &str| envproxy_get(&world, &agent.socket, reference);
    for _ in 0..2 {
        let output = get("envproxy:API_KEY");
        assert_eq!(output.stdout, format!("{api_key}\n").as_bytes());
    }
    for _ in 0..3 {
        let output = get("k8s:shop/db#password");
        assert_eq!(output.stdout, format!("{password}\n").as_bytes());
    }
    let missing_secret = get("k8s:shop/gone#password");
    assert!(!missing_secret.status.success(), "{missing_secret:?}");

    let http_identity = format!("HTTP API at {}", servers.http.url());
    let kube_identity = "Kubernetes API as kubeconfig";
    let table = admin_ok(&admin_socket, &["cache"]);
    let rows = parse_table(&table);
    let columns = |row: &BTreeMap<String, String>, names: &[&str]| -> Vec<String> {
        names.iter().map(|name| row[*name].clone()).collect()
    };
    let listed: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns(row, &["IDENTITY", "PATH", "HITS", "NOT FOUND"]))
        .collect();
    assert_eq!(
        listed,
        [
            [http_identity.as_str(), "envproxy:API_KEY", "1", "no"],
            [kube_identity, "k8s:shop/db", "2", "no"],
            [kube_identity, "k8s:shop/gone", "0", "yes"],
        ],
        "{table}"
    );
    for row in &rows {
        let none = columns(row, &["VERSION", "LEASE END", "STALE"]);
        assert_eq!(none, ["-", "-", "no"], "{table}");
        assert!(row["AGE"].ends_with('s'), "{table}");
        assert!(row["TTL LEFT"].ends_with('s'), "{table}");
    }

    let json = admin_json(&admin_socket, &["cache"]);
    let yaml = admin_yaml(&admin_socket, &["cache"]);
    for entries in [&json, &yaml] {
        let backends: Vec<&str> = entries
            .as_array()
            .expect("a list of entries")
            .iter()
            .map(|entry| entry["backend"].as_str().unwrap())
            .collect();
        assert_eq!(backends, ["http", "kubernetes", "kubernetes"], "{entries}");
        assert_eq!(entries[0]["identity"], http_identity.as_str());
        assert_eq!(entries[0]["path"], "envproxy:API_KEY");
        assert_eq!(entries[0]["hits"], 1);
        assert_eq!(entries[2]["not_found"], true);
        assert_eq!(entries[2]["version"], Value::Null);
        // The defaults: `cache_ttl` 5m for the HTTP secrets API, 1m for Kubernetes Secrets.
        let http_ttl_left = entries[0]["ttl_left_seconds"].as_u64().unwrap();
        assert!((240..=300).contains(&http_ttl_left), "{entries}");
        let kube_ttl_left = entries[1]["ttl_left_seconds"].as_u64().unwrap();
        assert!((30..=60).contains(&kube_ttl_left), "{entries}");
    }
    let secrets = [
        api_key.as_str(),
        password.as_str(),
        &servers.http_token,
        &servers.kube_token,
    ];
    assert_free_of(&format!("{table}{json}{yaml}"), &secrets);
    assert_free_of(&agent.log_text(), &secrets);
}

#[test]
fn flush_lists_entries_and_vault_is_read_again() {
    let local = Local::start();
    local.get_vault_secret();
    local.get_vault_secret();
    assert_eq!(
        local.vault_reads(),
        1,
        "the second read is served from the cache"
    );

    let other = admin_ok(
        &local.admin_socket,
        &["flush", "--prefix", "secret/data/other"],
    );
    assert_eq!(other, "no cached read matched; nothing was flushed\n");
    local.get_vault_secret();
    assert_eq!(
        local.vault_reads(),
        1,
        "a flush of another prefix keeps the entry"
    );

    let table = admin_ok(
        &local.admin_socket,
        &["flush", "--prefix", "secret/data/e2e"],
    );
    let rows = parse_table(&table);
    assert_eq!(rows.len(), 1, "{table}");
    assert_eq!(rows[0]["IDENTITY"], local.identity());
    assert_eq!(rows[0]["PATH"], local.vault_path);
    assert!(
        table.ends_with("\nflushed 1 cached read; the next request for each reads its backend\n"),
        "{table}"
    );
    local.get_vault_secret();
    assert_eq!(
        local.vault_reads(),
        2,
        "the request after the flush reads Vault"
    );

    let identity = local.identity();
    let json = admin_json(&local.admin_socket, &["flush", "--identity", &identity]);
    assert_eq!(json["entries_flushed"], 1);
    assert_eq!(json["flushed"][0]["path"], local.vault_path.as_str());
    assert_eq!(json["flushed"][0]["identity"], identity.as_str());
    local.get_vault_secret();
    assert_eq!(
        local.vault_reads(),
        3,
        "the request after the identity flush reads Vault"
    );

    let yaml = admin_yaml(&local.admin_socket, &["flush", "--all"]);
    assert_eq!(yaml["entries_flushed"], 1);
    assert_eq!(yaml["flushed"][0]["path"], local.vault_path.as_str());
    local.get_vault_secret();
    assert_eq!(
        local.vault_reads(),
        4,
        "the request after flushing all reads Vault"
    );

    let unknown = admin(&local.admin_socket, &["flush", "--identity", "nobody"]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    let message = stderr_of(&unknown);
    assert!(
        message.contains("refused Flush: no identity \"nobody\" has cached reads"),
        "{message}"
    );
    assert!(message.contains(&identity), "{message}");

    let two_targets = admin(&local.admin_socket, &["flush", "--all", "--prefix", "x"]);
    assert_eq!(two_targets.status.code(), Some(2), "{two_targets:?}");
    let no_target = admin(&local.admin_socket, &["flush"]);
    assert_eq!(no_target.status.code(), Some(2), "{no_target:?}");
    let bad_pod = admin(&local.admin_socket, &["flush", "--pod", "web-0"]);
    assert_eq!(bad_pod.status.code(), Some(2), "{bad_pod:?}");
    assert!(stderr_of(&bad_pod).contains("NAMESPACE/NAME"));
    local.assert_no_secret(&format!("{other}{table}{json}{yaml}"));
}

#[test]
fn workloads_empty_in_local_mode() {
    let local = Local::start();
    local.get_vault_secret();
    assert_eq!(admin_json(&local.admin_socket, &["workloads"]), json!([]));
    assert_eq!(admin_yaml(&local.admin_socket, &["workloads"]), json!([]));
    let output = admin(&local.admin_socket, &["workloads"]);
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(table.starts_with("NAMESPACE  POD  CONTAINER"), "{table}");
    assert!(parse_table(&table).is_empty(), "{table}");
    let message = stderr_of(&output);
    assert!(message.contains("a local-mode agent has none"), "{message}");
    assert!(!message.contains("yet"), "{message}");
}

#[test]
fn reload_reports_applied_keys() {
    let local = Local::start();
    let unchanged = admin_json(&local.admin_socket, &["reload"]);
    assert_eq!(unchanged["applied"], json!([]));
    assert_eq!(unchanged["restart_required"], json!([]));

    let text = fs::read_to_string(&local.config).unwrap();
    fs::write(&local.config, format!("{text}\n[audit]\nlog = true\n")).unwrap();
    let table = admin_ok(&local.admin_socket, &["reload"]);
    let fields = parse_fields(&table);
    assert_eq!(fields["applied"], "[audit] log");
    assert_eq!(fields["restart required"], "none");

    fs::write(
        &local.config,
        format!("{text}\n[audit]\nlog = true\n[agent.bad\n"),
    )
    .unwrap();
    let invalid = admin(&local.admin_socket, &["reload", "-o", "yaml"]);
    assert_eq!(invalid.status.code(), Some(1), "{invalid:?}");
    let message = stderr_of(&invalid);
    assert!(message.contains("refused ReloadConfig"), "{message}");
    assert!(message.contains("the running settings stay"), "{message}");
}

#[test]
fn config_option_finds_admin_socket() {
    let local = Local::start();
    let mut command = std::process::Command::new(envproxy());
    isolate(&mut command, &local.world);
    command
        .arg("admin")
        .arg("--config")
        .arg(&local.config)
        .args(["status", "-o", "json"]);
    let output = run_with_limit(&mut command, ADMIN_LIMIT);
    assert!(output.status.success(), "{output:?}");
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["mode"], "local");

    let off = local.world.path("off.toml");
    fs::write(
        &off,
        "[backend]\ntype = \"file\"\npath = \"secrets.json\"\n",
    )
    .unwrap();
    let mut command = std::process::Command::new(envproxy());
    isolate(&mut command, &local.world);
    command.arg("admin").arg("--config").arg(&off).arg("status");
    let output = run_with_limit(&mut command, ADMIN_LIMIT);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(
        stderr_of(&output).contains("turns the admin API off"),
        "{output:?}"
    );
}

/// Reads the JSON lines of `audit --follow` and checks their fields.
#[test]
fn audit_follow_shows_requests_without_values() {
    let local = Local::start();
    let child = spawn_admin(
        &local.admin_socket,
        &["audit", "--follow", "--count", "4", "-o", "json"],
    );
    wait_for_audit_watchers(&local.admin_socket, 1);

    let started_ms = unix_ms();
    local.get_vault_secret();
    local.get_vault_secret();
    let missing = envproxy_get(&local.world, &local.agent.socket, "envproxy:MISSING");
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    let invalid = envproxy_get(&local.world, &local.agent.socket, "vault:secret/data/app");
    assert_eq!(invalid.status.code(), Some(2), "{invalid:?}");

    let output = finish(child);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let events: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    assert_eq!(events.len(), 4, "{stdout}");
    for event in &events {
        for field in [
            "time",
            "pid",
            "pod",
            "container",
            "variable",
            "reference",
            "decision",
            "cache",
            "latency_us",
            "reason",
        ] {
            assert!(event.get(field).is_some(), "{field} missing in {event}");
        }
        let time = event["time"].as_str().unwrap();
        let parsed =
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .unwrap();
        let event_ms = (parsed.unix_timestamp_nanos() / 1_000_000) as i64;
        assert!(event_ms + 1000 >= started_ms, "{event}");
        assert!(event["pid"].as_i64().unwrap() > 0);
        assert_eq!(event["pod"], Value::Null, "local mode has no pods");
        assert!(event["latency_us"].as_u64().is_some());
    }
    assert_eq!(events[0]["variable"], "ENVPROXY_GET");
    assert_eq!(events[0]["reference"], local.reference.as_str());
    assert_eq!(events[0]["decision"], "found");
    assert_eq!(events[0]["cache"], "miss");
    assert_eq!(events[1]["cache"], "hit");
    assert_eq!(events[2]["reference"], "envproxy:MISSING");
    assert_eq!(events[2]["decision"], "not_found");
    assert_eq!(events[3]["decision"], "error");
    assert!(
        events[3]["reason"]
            .as_str()
            .unwrap()
            .contains("`secret/data/app` has no `#<key>`"),
        "{}",
        events[3]
    );
    let everything = format!("{stdout}{}", stderr_of(&output));
    local.assert_no_secret(&everything);
}

#[test]
fn audit_without_follow_prints_once() {
    let local = Local::start();
    let child = spawn_admin(
        &local.admin_socket,
        &["audit", "--count", "2", "-o", "yaml"],
    );
    wait_for_audit_watchers(&local.admin_socket, 1);
    local.get_vault_secret();
    local.get_vault_secret();
    let output = finish(child);
    assert!(output.status.success(), "{output:?}");
    let events: Value = yaml_serde::from_slice(&output.stdout).unwrap();
    let events = events.as_array().expect("a YAML list");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["cache"], "miss");
    assert_eq!(events[1]["cache"], "hit");
    assert_eq!(events[1]["reference"], local.reference.as_str());

    let child = spawn_admin(&local.admin_socket, &["audit", "--count", "1"]);
    wait_for_audit_watchers(&local.admin_socket, 1);
    local.get_vault_secret();
    let output = finish(child);
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    let rows = parse_table(&table);
    assert_eq!(rows.len(), 1, "{table}");
    assert_eq!(rows[0]["VARIABLE"], "ENVPROXY_GET");
    assert_eq!(rows[0]["REFERENCE"], local.reference);
    assert_eq!(rows[0]["DECISION"], "found");
    assert_eq!(rows[0]["CACHE"], "hit");
    assert_eq!(rows[0]["POD"], "-");

    // With nothing to report, the command stops after --for seconds with an empty list.
    let started = Instant::now();
    let quiet = admin_json(&local.admin_socket, &["audit", "--for", "1"]);
    assert_eq!(quiet, json!([]));
    assert!(started.elapsed() >= Duration::from_secs(1));
    local.assert_no_secret(&table);
}

#[test]
fn missing_socket_says_how_to_turn_admin_on() {
    let world = World::new();
    let socket = world.path("admin/admin.sock");
    let output = admin(&socket, &["status"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let message = stderr_of(&output);
    assert!(message.contains(&socket.display().to_string()), "{message}");
    assert!(message.contains("[admin] enabled = true"), "{message}");
    assert!(output.stdout.is_empty());

    // The default is the per-user socket's admin socket, else node mode's.
    let mut command = std::process::Command::new(envproxy());
    isolate(&mut command, &world);
    command.args(["admin", "status"]);
    let output = run_with_limit(&mut command, ADMIN_LIMIT);
    let message = stderr_of(&output);
    let expected = default_admin_socket(&world.path("envproxy/agent.sock"));
    if Path::new("/run/envproxy/admin/admin.sock").exists() {
        panic!("an admin socket exists at /run/envproxy/admin/admin.sock; stop that agent first");
    }
    assert_eq!(output.status.code(), Some(3), "{message}");
    assert!(
        message.contains(&format!(
            "{} or /run/envproxy/admin/admin.sock",
            expected.display()
        )),
        "{message}"
    );
}

#[test]
fn agent_socket_is_named_as_not_admin() {
    let local = Local::start();
    let output = admin(&local.agent.socket, &["status"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let message = stderr_of(&output);
    assert!(
        message.contains("is the agent's socket for programs, not its admin socket"),
        "{message}"
    );
    assert!(
        message.contains(&local.admin_socket.display().to_string()),
        "{message}"
    );
    assert!(message.contains("[admin] socket"), "{message}");
    assert!(!message.contains("h2 protocol error"), "{message}");
    assert!(output.stdout.is_empty());
}

#[test]
fn stale_and_silent_sockets() {
    let world = World::new();
    let stale = world.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let output = admin(&stale, &["status"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(
        stderr_of(&output).contains("connection refused"),
        "{output:?}"
    );

    // A listener that never accepts: the connection waits in the backlog, unanswered.
    let silent = world.path("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let started = Instant::now();
    let output = admin(&silent, &["--timeout", "1", "status"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(
        stderr_of(&output).contains("did not answer within 1s"),
        "{output:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let file = world.path("plain-file");
    fs::write(&file, "not a socket").unwrap();
    let output = admin(&file, &["status"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr_of(&output).contains("is not a socket"), "{output:?}");
}

#[test]
fn other_uid_is_told_who_may_connect() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "this test must run as root (it runs the command as uid {OTHER_UID}); it runs as uid \
         {euid}"
    );
    let local = Local::start();
    // The binary is copied, because the build directory may sit below a directory that uid
    // 65534 cannot enter.
    let bin = tempfile::tempdir().unwrap();
    fs::set_permissions(bin.path(), Permissions::from_mode(0o755)).unwrap();
    let client = bin.path().join("envproxy");
    fs::copy(envproxy(), &client).unwrap();
    fs::set_permissions(&client, Permissions::from_mode(0o755)).unwrap();
    let run_as_other = || {
        let mut command = std::process::Command::new(&client);
        command
            .args(["admin", "--socket"])
            .arg(&local.admin_socket)
            .arg("status")
            .env_remove("ENVPROXY_ADMIN_SOCKET")
            .uid(OTHER_UID)
            .gid(OTHER_UID);
        run_with_limit(&mut command, ADMIN_LIMIT)
    };

    // The file permissions stop the connection: the admin directory is 0700 and root's.
    fs::set_permissions(local.world.dir.path(), Permissions::from_mode(0o711)).unwrap();
    let output = run_as_other();
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let message = stderr_of(&output);
    assert!(
        message.contains("permission denied on the admin socket"),
        "{message}"
    );
    assert!(message.contains("root (uid 0)"), "{message}");
    assert!(message.contains("sudo"), "{message}");
    assert!(output.stdout.is_empty());

    // With the permissions opened, the agent itself rejects the other uid.
    let admin_dir = local.admin_socket.parent().unwrap();
    fs::set_permissions(admin_dir, Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&local.admin_socket, Permissions::from_mode(0o666)).unwrap();
    let output = run_as_other();
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let message = stderr_of(&output);
    assert!(message.contains("rejected the connection"), "{message}");
    assert!(message.contains(&format!("uid {OTHER_UID}")), "{message}");
    assert!(message.contains("run it as root"), "{message}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !local
        .agent
        .log_text()
        .contains("rejected an admin API connection")
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not log the rejection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(output.stdout.is_empty());
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
