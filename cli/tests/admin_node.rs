//! End-to-end tests of `envproxy admin` against the `envproxy-agent` binary in node mode, on the
//! node that `e2e_node_support` sets up with the kube API and Vault test servers. A C program
//! in a test pod sends an allowed and a denied request. The audit stream, workloads, cache and
//! a flush by pod then show them, and Vault's read count proves the flush.
//!
//! These tests must run as root: they create cgroups and mount namespaces, and run the command
//! as another uid and inside a pod.

mod e2e_admin_support;
mod e2e_node_support;
mod e2e_support;

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use e2e_admin_support::*;
use e2e_node_support::*;
use e2e_support::*;
use serde_json::{json, Value};

const OTHER_UID: u32 = 65534;

/// A node with pod `team-a/web-a`, whose container `app` declares `DB_PASSWORD` as team a's
/// reference, and that secret in Vault.
struct Node {
    cluster: Cluster,
    pod: TestPod,
    secret: String,
}

impl Node {
    fn start() -> Node {
        let mut cluster = Cluster::start();
        let secret = put_secret(&cluster, "a");
        let pod = cluster.add_pod(
            "a",
            "web-a",
            json!({"envproxy.dev/inject": "true"}),
            &[("DB_PASSWORD", &reference("a"))],
        );
        Node {
            cluster,
            pod,
            secret,
        }
    }

    /// Reads `DB_PASSWORD` in the pod; the value must be the secret.
    fn read_allowed(&self) {
        let mut command = self.cluster.in_pod(&self.pod, &probe());
        command.env("DB_PASSWORD", reference("a"));
        let (value, stderr) = probe_get(command, "DB_PASSWORD");
        assert_eq!(value.as_deref(), Some(self.secret.as_str()), "{stderr}");
    }

    /// Requests team b's reference, which the pod's spec does not declare, so it is denied.
    fn read_denied(&self) {
        let mut command = self.cluster.in_pod(&self.pod, &probe());
        command.env("OTHER_PASSWORD", reference("b"));
        let (value, stderr) = probe_get(command, "OTHER_PASSWORD");
        assert_eq!(value.as_deref(), Some(reference("b").as_str()), "{stderr}");
        assert!(stderr.contains("does not declare reference"), "{stderr}");
    }

    fn vault_reads(&self) -> u64 {
        self.cluster
            .vault
            .request_count("GET", "secret/data/team-a/config")
    }
}

#[test]
fn audit_follow_shows_allowed_and_denied() {
    let node = Node::start();
    let socket = node.cluster.admin_socket();
    let json_child = spawn_admin(
        &socket,
        &["audit", "--follow", "--count", "2", "-o", "json"],
    );
    let table_child = spawn_admin(&socket, &["audit", "--follow", "--count", "2"]);
    wait_for_audit_watchers(&socket, 2);

    node.read_allowed();
    node.read_denied();

    let output = finish(json_child);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let events: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    assert_eq!(events.len(), 2, "{stdout}");
    let (allowed, denied) = (&events[0], &events[1]);
    for event in &events {
        assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
        assert!(event["pid"].as_i64().unwrap() > 0, "{event}");
        assert_eq!(event["pod"], "team-a/web-a");
        assert_eq!(event["container"], "app");
        assert!(event["latency_us"].as_u64().is_some(), "{event}");
    }
    assert_eq!(allowed["variable"], "DB_PASSWORD");
    assert_eq!(allowed["reference"], reference("a").as_str());
    assert_eq!(allowed["decision"], "found");
    assert_eq!(allowed["cache"], "miss");
    assert_eq!(allowed["reason"], Value::Null);
    assert_eq!(denied["variable"], "OTHER_PASSWORD");
    assert_eq!(denied["reference"], reference("b").as_str());
    assert_eq!(denied["decision"], "denied");
    assert_eq!(denied["cache"], Value::Null);
    assert!(denied["reason"]
        .as_str()
        .is_some_and(|reason| !reason.is_empty()));

    let table_output = finish(table_child);
    assert!(table_output.status.success(), "{table_output:?}");
    let table = String::from_utf8(table_output.stdout.clone()).unwrap();
    let rows = parse_table(&table);
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(rows[0]["POD"], "team-a/web-a");
    assert_eq!(rows[0]["CONTAINER"], "app");
    assert_eq!(rows[0]["VARIABLE"], "DB_PASSWORD");
    assert_eq!(rows[0]["DECISION"], "found");
    assert_eq!(rows[0]["CACHE"], "miss");
    assert_eq!(rows[1]["VARIABLE"], "OTHER_PASSWORD");
    assert_eq!(rows[1]["DECISION"], "denied");
    assert_eq!(rows[1]["REASON"], denied["reason"].as_str().unwrap());

    let everything = format!(
        "{stdout}{table}{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&table_output.stderr)
    );
    assert_free_of(&everything, &[&node.secret]);
}

#[test]
fn audit_names_pod_of_status_request() {
    let node = Node::start();
    let socket = node.cluster.admin_socket();
    let child = spawn_admin(
        &socket,
        &["audit", "--follow", "--count", "1", "-o", "json"],
    );
    wait_for_audit_watchers(&socket, 1);

    let mut command = Command::new(envproxy());
    command
        .args(["status", "--socket"])
        .arg(&node.cluster.socket);
    node.cluster.enter(&node.pod, &mut command);
    let status = run_with_limit(&mut command, LIMIT);
    assert_eq!(status.status.code(), Some(1), "{status:?}");

    let output = finish(child);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let event: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    assert_eq!(event["pod"], "team-a/web-a", "{event}");
    assert_eq!(event["container"], "app", "{event}");
    assert_eq!(event["decision"], "denied", "{event}");
    assert_eq!(event["reason"], "status_not_allowed", "{event}");
}

#[test]
fn workloads_cache_status_and_flush_by_pod() {
    let node = Node::start();
    let socket = node.cluster.admin_socket();
    node.read_allowed();
    node.read_allowed();
    node.read_denied();
    assert_eq!(
        node.vault_reads(),
        1,
        "the second read is served from the cache"
    );
    let mut outputs = String::new();

    for workloads in [
        admin_json(&socket, &["workloads"]),
        admin_yaml(&socket, &["workloads"]),
    ] {
        let workload = &workloads[0];
        assert_eq!(workloads.as_array().unwrap().len(), 1, "{workloads}");
        assert_eq!(workload["namespace"], "team-a");
        assert_eq!(workload["pod"], "web-a");
        assert_eq!(workload["container"], "app");
        assert_eq!(workload["service_account"], "app-a");
        assert_eq!(workload["vault_role"], "app-a");
        assert_eq!(workload["requests"], 3);
        assert_eq!(workload["denials"], 1);
        assert_eq!(workload["pod_present"], true);
        outputs.push_str(&workloads.to_string());
    }
    let table = admin_ok(&socket, &["workloads"]);
    let rows = parse_table(&table);
    assert_eq!(rows.len(), 1, "{table}");
    assert_eq!(rows[0]["NAMESPACE"], "team-a");
    assert_eq!(rows[0]["POD"], "web-a");
    assert_eq!(rows[0]["SERVICE ACCOUNT"], "app-a");
    assert_eq!(rows[0]["VAULT ROLE"], "app-a");
    assert_eq!(rows[0]["REQUESTS"], "3");
    assert_eq!(rows[0]["DENIALS"], "1");
    assert_eq!(rows[0]["PRESENT"], "yes");
    outputs.push_str(&table);

    let cache = admin_json(&socket, &["cache"]);
    assert_eq!(cache.as_array().unwrap().len(), 1, "{cache}");
    assert_eq!(cache[0]["path"], "secret/data/team-a/config");
    assert_eq!(cache[0]["hits"], 1);
    let identity = cache[0]["identity"].as_str().unwrap().to_string();
    assert!(identity.contains("app-a"), "{identity}");
    outputs.push_str(&cache.to_string());

    let status = admin_json(&socket, &["status"]);
    assert_eq!(status["mode"], "node");
    assert_eq!(status["node"], NODE);
    assert_eq!(status["kube_watch_synced"], true);
    assert_eq!(status["counters"]["denials"], 1);
    assert_eq!(status["vault"][0]["identity"], identity.as_str());
    let status_table = admin_ok(&socket, &["status"]);
    let fields = parse_fields(&status_table);
    assert_eq!(fields["mode"], "node");
    assert_eq!(fields["node"], NODE);
    assert_eq!(fields["kube watch synced"], "yes");
    outputs.push_str(&status_table);

    let flushed = admin_ok(&socket, &["flush", "--pod", "team-a/web-a"]);
    let rows = parse_table(&flushed);
    assert_eq!(rows.len(), 1, "{flushed}");
    assert_eq!(rows[0]["IDENTITY"], identity);
    assert_eq!(rows[0]["PATH"], "secret/data/team-a/config");
    outputs.push_str(&flushed);
    node.read_allowed();
    assert_eq!(
        node.vault_reads(),
        2,
        "the request after the flush reads Vault"
    );

    let unknown = admin(&socket, &["flush", "--pod", "team-a/gone"]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        message.contains("is not among the pods on node"),
        "{message}"
    );
    assert_free_of(&outputs, &[&node.secret]);
}

#[test]
fn pods_and_other_uids_are_rejected() {
    let node = Node::start();
    let socket = node.cluster.admin_socket();

    // A root process in a test pod can open the socket, and the agent rejects it.
    let mut in_pod = admin_command(&socket, &["status"]);
    node.cluster.enter(&node.pod, &mut in_pod);
    let output = run_with_limit(&mut in_pod, ADMIN_LIMIT);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("rejected the connection"), "{message}");
    assert!(message.contains("runs in pod UID"), "{message}");
    assert!(output.stdout.is_empty());

    // Another uid on the node is stopped by the admin directory's permissions.
    let bin = tempfile::tempdir().unwrap();
    fs::set_permissions(bin.path(), Permissions::from_mode(0o755)).unwrap();
    let client = bin.path().join("envproxy");
    fs::copy(envproxy(), &client).unwrap();
    fs::set_permissions(&client, Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(node.cluster.dir.path(), Permissions::from_mode(0o711)).unwrap();
    let mut command = Command::new(&client);
    command
        .args(["admin", "--socket"])
        .arg(&socket)
        .arg("workloads")
        .env_remove("ENVPROXY_ADMIN_SOCKET")
        .uid(OTHER_UID)
        .gid(OTHER_UID);
    let output = run_with_limit(&mut command, ADMIN_LIMIT);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("permission denied on the admin socket"),
        "{message}"
    );
    assert!(message.contains("root (uid 0)"), "{message}");
    assert!(output.stdout.is_empty());
}

#[test]
fn status_shows_kubernetes_secret_cache() {
    let mut cluster = Cluster::start_for_secrets();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "team-a"},
        "stringData": {"password": random_secret()},
    }))
    .unwrap();
    cluster.kube.apply_secret(secret).unwrap();
    cluster.kube.grant_service_account(
        "team-a",
        "app-a",
        vec![envproxy_kube_test_server::Rule::new(&["get"], &["secrets"])],
    );
    let reference = "k8s:db#password";
    let pod = cluster.add_pod(
        "a",
        "web-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", reference)],
    );
    cluster.write_kube_token(&pod);
    for _ in 0..2 {
        let mut command = cluster.in_pod(&pod, &probe());
        command.env("DB_PASSWORD", reference);
        let (value, stderr) = probe_get(command, "DB_PASSWORD");
        assert!(value.is_some_and(|v| v != reference), "{stderr}");
    }

    let status = admin_json(&cluster.admin_socket(), &["status"]);
    let kubernetes = &status["kubernetes"];
    assert_eq!(kubernetes["address"], cluster.kube.url(), "{status}");
    assert_eq!(kubernetes["credentials"], "calling pod");
    assert_eq!(kubernetes["default_secret"], Value::Null);
    assert_eq!(kubernetes["cache_entries"], 1);
    assert_eq!(kubernetes["cache_hits"], 1);
    assert_eq!(kubernetes["cache_misses"], 1);
    assert_eq!(kubernetes["last_error"], Value::Null);
    assert_eq!(status["http"], Value::Null);
    let text = admin_ok(&cluster.admin_socket(), &["status"]);
    assert!(text.contains("k8s credentials:"), "{text}");

    let listed = admin_json(&cluster.admin_socket(), &["cache"]);
    let secrets: Vec<&Value> = listed
        .as_array()
        .expect("a list of entries")
        .iter()
        .filter(|entry| entry["backend"] == "kubernetes")
        .collect();
    assert_eq!(secrets.len(), 1, "{listed}");
    let identity = "Kubernetes API as system:serviceaccount:team-a:app-a";
    assert_eq!(secrets[0]["identity"], identity, "{listed}");
    assert_eq!(secrets[0]["path"], "k8s:team-a/db", "{listed}");
    assert_eq!(secrets[0]["hits"], 1, "{listed}");
    assert_eq!(secrets[0]["not_found"], false, "{listed}");
}
