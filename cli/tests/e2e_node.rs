//! End-to-end tests of node mode. They run as root, with real parts wherever they exist: the
//! `envproxy-agent` binary in node mode, `kubepods` cgroups that the test creates under the
//! machine's cgroup v2 tree, and C and Python programs under `libenvproxy.so`. Each test pod
//! gets a mount namespace that contains its projected token. The in-repo kube API and Vault
//! test servers stand in for a cluster.
//!
//! Run as another user, every test fails with a message saying why.

mod e2e_node_support;
mod e2e_support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_node_support::*;
use e2e_support::*;
use serde_json::json;

#[test]
fn each_pod_reads_its_own_secret() {
    let mut cluster = Cluster::start();
    let secret_a = put_secret(&cluster, "a");
    let secret_b = put_secret(&cluster, "b");
    let pod_a = cluster.add_pod(
        "a",
        "web-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let pod_b = cluster.add_pod(
        "b",
        "web-b",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("b"))],
    );

    let mut command = cluster.in_pod(&pod_a, &probe());
    command.env("DB_PASSWORD", reference("a"));
    let (value, stderr) = probe_get(command, "DB_PASSWORD");
    assert_eq!(value.as_deref(), Some(secret_a.as_str()), "{stderr}");

    let python = "import os; print('DB_PASSWORD=' + str(os.getenv('DB_PASSWORD')))";
    let mut command = cluster.in_pod(&pod_b, Path::new("python3"));
    // Python copies the environment at start, so its hook, not libc's getenv, resolves it.
    command
        .env_remove("ENVPROXY_NO_PYTHON")
        .env("DB_PASSWORD", reference("b"))
        .args(["-c", python]);
    let output = run_with_limit(&mut command, LIMIT);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        value_of(&output.stdout, "DB_PASSWORD").as_deref(),
        Some(secret_b.as_str()),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        cluster.vault.request_count("POST", "auth/kubernetes/login"),
        2,
        "one login per identity"
    );
}

#[test]
fn late_pod_is_waited_for() {
    let mut cluster = Cluster::start();
    let secret = put_secret(&cluster, "a");
    let pod = cluster.prepare_pod(
        "a",
        "late-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    // The token is minted while the pod exists, then the pod leaves and comes back 300 ms
    // after the process has sent its first request.
    cluster.apply(&pod);
    cluster.write_token(&pod);
    cluster.kube.delete_pod(&pod.namespace, &pod.name).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let mut command = cluster.in_pod(&pod, &probe());
    command.env("DB_PASSWORD", reference("a"));
    let serving = Serving::start(command);
    std::thread::sleep(Duration::from_millis(300));
    cluster.apply(&pod);
    let mut serving = serving;
    assert_eq!(serving.get("DB_PASSWORD"), secret);
}

#[test]
fn status_only_for_the_node_operator() {
    let mut cluster = Cluster::start();
    let pod = cluster.add_pod("a", "status-a", json!({"envproxy.dev/inject": "true"}), &[]);

    let output = run_with_limit(
        Command::new(envproxy())
            .args(["status", "-o", "json", "--socket"])
            .arg(&cluster.socket),
        LIMIT,
    );
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["mode"], "node");

    let mut command = Command::new(envproxy());
    command.args(["status", "--socket"]).arg(&cluster.socket);
    cluster.enter(&pod, &mut command);
    let output = run_with_limit(&mut command, LIMIT);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("served only to the agent's user outside any pod"),
        "{stderr}"
    );
}

#[test]
fn refusals_say_what_to_change() {
    let mut cluster = Cluster::start();
    let secret_a = put_secret(&cluster, "a");
    let secret_b = put_secret(&cluster, "b");
    let pod_a = cluster.add_pod(
        "a",
        "web-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let not_opted_in = cluster.add_pod(
        "a",
        "plain-a",
        json!({}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let unselected = cluster.add_pod(
        "a",
        "sidecar-a",
        json!({"envproxy.dev/inject": "true", "envproxy.dev/containers": "other"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let unlisted = cluster.add_pod(
        "a",
        "unlisted-a",
        json!({"envproxy.dev/inject": "true", "envproxy.dev/allow-unlisted-refs": "true"}),
        &[],
    );

    let cases: Vec<(Command, &str, String)> = vec![
        // Pod A requests pod B's reference, which its spec does not declare.
        (
            cluster.in_pod(&pod_a, &probe()),
            "does not declare reference",
            reference("b"),
        ),
        (
            cluster.in_pod(&not_opted_in, &probe()),
            "has not opted in",
            reference("a"),
        ),
        (
            cluster.in_pod(&unselected, &probe()),
            "is not selected for EnvProxy",
            reference("a"),
        ),
        (
            cluster.outside_pods(&probe()),
            "outside any Kubernetes pod",
            reference("a"),
        ),
        // Allowed by the pod's annotation, but the Vault role of team a may not read team b's
        // path: Vault itself refuses.
        (
            cluster.in_pod(&unlisted, &probe()),
            "permission denied",
            reference("b"),
        ),
    ];
    for (mut command, expected, reference) in cases {
        command.env("DB_PASSWORD", &reference);
        let (value, stderr) = probe_get(command, "DB_PASSWORD");
        assert_eq!(
            value.as_deref(),
            Some(reference.as_str()),
            "{expected}: {stderr}"
        );
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!stderr.contains(&secret_a), "{stderr}");
        assert!(!stderr.contains(&secret_b), "{stderr}");
    }

    let log = cluster.agent_log();
    let denials: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("request denied"))
        .collect();
    let outside = denials
        .iter()
        .find(|line| !line.contains(" pod="))
        .unwrap_or_else(|| panic!("no denial outside pods: {log}"));
    assert!(
        outside.contains("later denials of this caller"),
        "{outside}"
    );
    let in_pod = denials
        .iter()
        .find(|line| line.contains(" pod="))
        .unwrap_or_else(|| panic!("no denial in a pod: {log}"));
    assert!(in_pod.contains("later denials of this pod"), "{in_pod}");
}

#[test]
fn another_pods_token_is_refused() {
    let mut cluster = Cluster::start();
    let secret = put_secret(&cluster, "a");
    let owner = cluster.add_pod(
        "a",
        "owner-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let copier = cluster.add_pod(
        "a",
        "copier-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let linker = cluster.add_pod(
        "a",
        "linker-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    // The copier presents a copy of the owner's token, the linker a symbolic link to it.
    fs::copy(
        owner.token_dir.join("token"),
        copier.token_dir.join("token"),
    )
    .unwrap();
    fs::remove_file(linker.token_dir.join("token")).unwrap();
    std::os::unix::fs::symlink(
        owner.token_dir.join("token"),
        linker.token_dir.join("token"),
    )
    .unwrap();

    for pod in [&copier, &linker] {
        let mut command = cluster.in_pod(pod, &probe());
        command.env("DB_PASSWORD", reference("a"));
        let (value, stderr) = probe_get(command, "DB_PASSWORD");
        assert_eq!(value.as_deref(), Some(reference("a").as_str()), "{stderr}");
        assert!(stderr.contains("is not valid for that pod"), "{stderr}");
        assert!(!stderr.contains(&secret), "{stderr}");
    }
    assert_eq!(
        cluster.vault.request_count("POST", "auth/kubernetes/login"),
        0
    );

    let mut command = cluster.in_pod(&owner, &probe());
    command.env("DB_PASSWORD", reference("a"));
    let (value, stderr) = probe_get(command, "DB_PASSWORD");
    assert_eq!(value.as_deref(), Some(secret.as_str()), "{stderr}");
}

/// A `probe serve` process that resolves one name per line of input.
struct Serving {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Serving {
    fn start(mut command: Command) -> Serving {
        let mut child = command
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Serving {
            child,
            input,
            output,
        }
    }

    fn get(&mut self, name: &str) -> String {
        writeln!(self.input, "{name}").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        let value = line
            .trim_end()
            .strip_prefix(&format!("{name}="))
            .unwrap_or_default()
            .to_string();
        line.clear();
        self.output.read_line(&mut line).unwrap();
        value
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a process of an opted-in pod that resolves its reference at every call, applies
/// `change` to the pod in the kube test server, and checks that the agent stops serving the
/// process within 10 s.
fn check_serving_stops(name: &str, change: impl FnOnce(&Cluster, &TestPod), what: &str) {
    let mut cluster = Cluster::start();
    let secret = put_secret(&cluster, "a");
    let pod = cluster.add_pod(
        "a",
        name,
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let mut command = cluster.in_pod(&pod, &probe());
    command
        .env("DB_PASSWORD", reference("a"))
        .env("ENVPROXY_CACHE_TTL", "0");
    let mut serving = Serving::start(command);
    assert_eq!(serving.get("DB_PASSWORD"), secret);

    change(&cluster, &pod);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut value = serving.get("DB_PASSWORD");
    while value == secret && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        value = serving.get("DB_PASSWORD");
    }
    assert_eq!(value, reference("a"), "the {what} pod was still served");
}

#[test]
fn deleted_pod_stops_being_served() {
    check_serving_stops(
        "short-a",
        |cluster, pod| {
            cluster.kube.delete_pod(&pod.namespace, &pod.name).unwrap();
        },
        "deleted",
    );
}

#[test]
fn pod_without_token_is_told_so() {
    let mut cluster = Cluster::start();
    let pod = cluster.prepare_pod(
        "a",
        "tokenless-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    cluster.apply(&pod);
    let mut command = cluster.in_pod(&pod, &probe());
    command.env("DB_PASSWORD", reference("a"));
    let (value, stderr) = probe_get(command, "DB_PASSWORD");
    assert_eq!(value.as_deref(), Some(reference("a").as_str()), "{stderr}");
    assert!(
        stderr.contains("projected service account token is not readable"),
        "{stderr}"
    );
    assert!(stderr.contains("envproxy.dev/inject"), "{stderr}");
}

#[test]
fn token_request_serves_pods_without_projected_token() {
    let mut cluster = Cluster::start_with_token_source("token-request");
    let secret = put_secret(&cluster, "a");
    let pod = cluster.prepare_pod(
        "a",
        "tokenless-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    cluster.apply(&pod);
    let mut command = cluster.in_pod(&pod, &probe());
    command.env("DB_PASSWORD", reference("a"));
    let (value, stderr) = probe_get(command, "DB_PASSWORD");
    assert_eq!(value.as_deref(), Some(secret.as_str()), "{stderr}");
    assert_eq!(
        cluster
            .kube
            .request_count("create", "serviceaccounts/token"),
        1
    );
}

#[test]
fn cgroup_v1_pods_are_identified() {
    let mut cluster = Cluster::start_with("projected", || Cgroups::under(cgroup1_pids_mount(), 1));
    let secret = put_secret(&cluster, "a");
    let pod = cluster.add_pod(
        "a",
        "v1-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let mut command = cluster.in_pod(&pod, &probe());
    command.env("DB_PASSWORD", reference("a"));
    let (value, stderr) = probe_get(command, "DB_PASSWORD");
    assert_eq!(value.as_deref(), Some(secret.as_str()), "{stderr}");
}

#[test]
fn opt_out_applies_to_running_processes() {
    check_serving_stops(
        "opting-a",
        |cluster, pod| {
            cluster
                .kube
                .modify_pod(&pod.namespace, &pod.name, |pod| {
                    pod.metadata.annotations = None;
                })
                .unwrap();
        },
        "opted-out",
    );
}

/// A Python program that opens connections to the agent socket in `argv[1]`, `argv[2]` of them,
/// sends nothing, and prints for each the response the agent sent within one second, or
/// `silent`.
const CONNECTION_FLOOD: &str = r#"
import socket, sys
connections = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.settimeout(1.0)
    connections.append(s)
for s in connections:
    try:
        reply = s.recv(4096)
        print("closed" if not reply else reply[3:].decode("utf-8", "replace"))
    except socket.timeout:
        print("silent")
"#;

fn flood(mut command: Command, socket: &Path, connections: usize) -> Vec<String> {
    command
        .arg("-c")
        .arg(CONNECTION_FLOOD)
        .arg(socket)
        .arg(connections.to_string());
    let output = run_with_limit(&mut command, LIMIT);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn connections_are_limited_per_pod() {
    let mut cluster =
        Cluster::start_configured("projected", Cgroups::new, "max_connections_per_pod = 3");
    let pod = cluster.add_pod("a", "busy-a", json!({"envproxy.dev/inject": "true"}), &[]);

    let mut command = Command::new("python3");
    cluster.enter(&pod, &mut command);
    let replies = flood(command, &cluster.socket, 5);
    // The agent admits connections in the order its tasks run, not the order they connected.
    assert_eq!(replies.len(), 5, "{replies:?}");
    let silent = replies.iter().filter(|r| *r == "silent").count();
    assert_eq!(silent, 3, "{replies:?}");
    for reply in replies.iter().filter(|r| *r != "silent") {
        assert!(reply.contains("too many connections"), "{replies:?}");
        assert!(reply.contains("max_connections_per_pod"), "{replies:?}");
    }
}

#[test]
fn callers_outside_pods_are_refused_at_accept() {
    let cluster = Cluster::start();
    let mut command = Command::new("python3");
    command.uid(65534).gid(65534);
    let replies = flood(command, &cluster.socket, 2);
    assert_eq!(replies.len(), 2, "{replies:?}");
    for reply in &replies {
        assert!(reply.contains("outside any Kubernetes pod"), "{replies:?}");
    }
}

/// Stores Secret `namespace/name` with `password` as `stringData`, as `kubectl apply` would.
fn put_kube_secret(cluster: &Cluster, namespace: &str, name: &str, password: &str) {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"password": password},
    }))
    .unwrap();
    cluster.kube.apply_secret(secret).unwrap();
}

/// Gives service account `app-<team>` `get` on Secrets in its own namespace, as a Role and
/// RoleBinding would.
fn grant_own_secrets(cluster: &Cluster, team: &str) {
    let namespace = format!("team-{team}");
    cluster.kube.grant_service_account(
        &namespace,
        &format!("app-{team}"),
        vec![envproxy_kube_test_server::Rule::new(&["get"], &["secrets"])
            .in_namespaces(&[&namespace])],
    );
}

#[test]
fn k8s_reference_read_as_calling_pod() {
    let mut cluster = Cluster::start_for_secrets();
    let secret_a = random_secret();
    put_kube_secret(&cluster, "team-a", "db", &secret_a);
    put_kube_secret(&cluster, "team-b", "db", &random_secret());
    grant_own_secrets(&cluster, "a");
    let own = "k8s:db#password";
    let other_namespace = "k8s:team-b/db#password";
    let pod_a = cluster.add_pod(
        "a",
        "web-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", own), ("OTHER_PASSWORD", other_namespace)],
    );
    cluster.write_kube_token(&pod_a);
    let pod_b = cluster.add_pod(
        "b",
        "web-b",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", own)],
    );
    cluster.write_kube_token(&pod_b);

    let mut command = cluster.in_pod(&pod_a, &probe());
    command.env("DB_PASSWORD", own);
    let (value, stderr) = probe_get(command, "DB_PASSWORD");
    assert_eq!(value.as_deref(), Some(secret_a.as_str()), "{stderr}");

    // Pod a's service account may read only its own namespace.
    let mut command = cluster.in_pod(&pod_a, &probe());
    command.env("OTHER_PASSWORD", other_namespace);
    let (value, stderr) = probe_get(command, "OTHER_PASSWORD");
    // ENVPROXY_ON_ERROR=reference, the default, leaves the reference in place.
    assert_eq!(value.as_deref(), Some(other_namespace), "{stderr}");
    assert!(
        stderr.contains(
            "permission denied reading Secret team-b/db as system:serviceaccount:team-a:app-a"
        ),
        "{stderr}"
    );

    // Pod b's service account has no grant, so the API server refuses its own namespace too.
    let mut command = cluster.in_pod(&pod_b, &probe());
    command.env("DB_PASSWORD", own);
    let (value, stderr) = probe_get(command, "DB_PASSWORD");
    assert_eq!(value.as_deref(), Some(own), "{stderr}");
    assert!(
        stderr.contains(
            "permission denied reading Secret team-b/db as system:serviceaccount:team-b:app-b"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("User \"system:serviceaccount:team-b:app-b\" cannot get"),
        "{stderr}"
    );

    // A reference the spec does not declare is refused before any read.
    let gets_before = cluster.kube.request_count("get", "secrets");
    let mut command = cluster.in_pod(&pod_a, &probe());
    command.env("DB_PASSWORD", "k8s:team-a/db#password");
    let (value, stderr) = probe_get(command, "DB_PASSWORD");
    assert_eq!(value.as_deref(), Some("k8s:team-a/db#password"), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("does not declare reference"), "{stderr}");
    assert_eq!(cluster.kube.request_count("get", "secrets"), gets_before);
    for request in cluster.kube.requests() {
        if request.resource == "secrets" {
            assert_eq!(request.verb, "get", "{request:?}");
        }
    }
}

#[test]
fn pod_without_kube_token_is_told_why() {
    let mut cluster = Cluster::start_for_secrets();
    put_kube_secret(&cluster, "team-a", "db", &random_secret());
    grant_own_secrets(&cluster, "a");
    let own = "k8s:db#password";
    // The pod gets its Vault token but no API server token, as with
    // automountServiceAccountToken: false.
    let pod = cluster.add_pod(
        "a",
        "no-token-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", own)],
    );
    let mut command = cluster.in_pod(&pod, &probe());
    command.env("DB_PASSWORD", own);
    let (value, stderr) = probe_get(command, "DB_PASSWORD");
    assert_eq!(value.as_deref(), Some(own), "{stderr}");
    assert!(stderr.contains("has no token at"), "{stderr}");
    assert!(stderr.contains("automountServiceAccountToken"), "{stderr}");
    assert_eq!(cluster.kube.request_count("get", "secrets"), 0);
}

#[test]
fn edited_k8s_secret_reaches_running_process() {
    let mut cluster = Cluster::start_for_secrets();
    let before = random_secret();
    put_kube_secret(&cluster, "team-a", "db", &before);
    grant_own_secrets(&cluster, "a");
    let own = "k8s:db#password";
    let pod = cluster.add_pod(
        "a",
        "rotating-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("DB_PASSWORD", own)],
    );
    cluster.write_kube_token(&pod);
    let mut command = cluster.in_pod(&pod, &probe());
    command
        .env("DB_PASSWORD", own)
        .env("ENVPROXY_CACHE_TTL", "1");
    let mut serving = Serving::start(command);
    assert_eq!(serving.get("DB_PASSWORD"), before);

    let after = random_secret();
    put_kube_secret(&cluster, "team-a", "db", &after);
    let edited = Instant::now();
    // The agent's cache (kube_cache_ttl = 1) and the library's (ENVPROXY_CACHE_TTL=1) add up
    // to 2 s at most.
    let mut value = serving.get("DB_PASSWORD");
    while value != after && edited.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        value = serving.get("DB_PASSWORD");
    }
    assert_eq!(value, after, "the edited value did not arrive");
    assert!(
        edited.elapsed() < Duration::from_millis(2500),
        "arrived after {:?}, expected within the 2 s of the two TTLs",
        edited.elapsed()
    );
}

/// A Python program that sends `argv[4]` v2 requests for variable `argv[2]` with reference
/// `argv[3]` on one connection to the agent socket in `argv[1]`, and prints each response's
/// status byte and payload.
const REQUEST_FLOOD: &str = r#"
import socket, struct, sys
name, value = sys.argv[2].encode(), sys.argv[3].encode()
frame = bytes([2]) + struct.pack(">H", len(name)) + name + struct.pack(">H", len(value)) + value
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(10.0)

def read_exact(count):
    data = b""
    while len(data) < count:
        chunk = s.recv(count - len(data))
        if not chunk:
            raise SystemExit("the agent closed the connection")
        data += chunk
    return data

for _ in range(int(sys.argv[4])):
    s.sendall(frame)
    status, length = struct.unpack(">BH", read_exact(3))
    print(status, read_exact(length).decode("utf-8", "replace"))
"#;

/// Sends `count` requests for `name` set to `reference` from `pod` on one connection, and
/// returns the responses as "STATUS PAYLOAD" lines.
fn request_flood(
    cluster: &Cluster,
    pod: &TestPod,
    name: &str,
    reference: &str,
    count: usize,
) -> Vec<String> {
    let mut command = Command::new("python3");
    cluster.enter(pod, &mut command);
    command
        .arg("-c")
        .arg(REQUEST_FLOOD)
        .arg(&cluster.socket)
        .arg(name)
        .arg(reference)
        .arg(count.to_string());
    let output = run_with_limit(&mut command, LIMIT);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn failed_vault_requests_are_bounded() {
    let mut cluster = Cluster::start();
    let secret = put_secret(&cluster, "a");
    let wrong_role = cluster.add_pod(
        "a",
        "wrong-role-a",
        json!({"envproxy.dev/inject": "true", "envproxy.dev/vault-role": "nosuch"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let missing = "vault:secret/data/team-a/missing#k";
    let reader = cluster.add_pod(
        "a",
        "reader-a",
        json!({"envproxy.dev/inject": "true"}),
        &[("MISSING", missing)],
    );

    let replies = request_flood(&cluster, &wrong_role, "DB_PASSWORD", &reference("a"), 100);
    assert_eq!(replies.len(), 100, "{replies:?}");
    for reply in &replies {
        assert!(reply.starts_with("2 "), "{reply}");
        assert!(reply.contains("tried to log in as"), "{reply}");
        assert!(!reply.contains(&secret), "{reply}");
    }
    // The first refused login starts a 1 s pause, doubling at each refusal, so a flood of
    // 100 requests makes a few logins however slowly it runs.
    let logins = cluster.vault.request_count("POST", "auth/kubernetes/login");
    assert!((1..=4).contains(&logins), "{logins} logins");

    let replies = request_flood(&cluster, &reader, "MISSING", missing, 100);
    assert_eq!(replies.len(), 100, "{replies:?}");
    for reply in &replies {
        assert!(
            reply.contains("no secret at secret/data/team-a/missing"),
            "{reply}"
        );
    }
    // "Not found" is cached for the cache TTL, at most 5 s.
    let reads = cluster
        .vault
        .request_count("GET", "secret/data/team-a/missing");
    assert!((1..=2).contains(&reads), "{reads} reads");

    let log = cluster.agent_log();
    let login_warnings = log
        .lines()
        .filter(|line| line.contains("Vault login failed"))
        .count() as u64;
    // One line per refused login, and one rate-limited line about the pod's failed requests.
    assert!((2..=logins + 1).contains(&login_warnings), "{log}");
    let read_warnings = log
        .lines()
        .filter(|line| line.contains("Vault read failed"))
        .count();
    assert_eq!(read_warnings, 1, "{log}");
    assert!(!log.contains(&secret), "{log}");
}
