//! The admin API of a node-mode agent against the kube and Vault test servers. Health follows
//! the pod watch. Processes in real pod cgroups send allowed and denied requests, which show up
//! as audit events, workloads and cache entries, and Vault's request count proves a flush by
//! pod.
//!
//! These tests must run as root: they create cgroups and mount namespaces.

mod admin_support;

use std::ffi::CString;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use admin_support::*;
use envproxy_admin_proto::v1 as pb;
use envproxy_agent::vault::VaultEnvironment;
use envproxy_agent::{Agent, Config};
use envproxy_kube_test_server::{KubeTestServer, Rule, ServerOptions as KubeOptions};
use envproxy_proto::Response;
use envproxy_vault_test_server::{
    Capability, KubernetesRole, Policy, ServerOptions as VaultOptions, VaultTestServer,
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const NODE: &str = "node-admin";
const AUDIENCE: &str = "vault";
const SECRET_PATH: &str = "secret/data/team-a/config";
const REFERENCE: &str = "vault:secret/data/team-a/config#password";
/// A reference that the pod's spec does not declare.
const UNDECLARED_REFERENCE: &str = "vault:secret/data/team-a/other#password";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root: it creates cgroups and mount namespaces"
    );
}

fn random_uid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

/// Returns the mount point of the cgroup v2 file system.
fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if after.split(' ').next() == Some("cgroup2") {
            return PathBuf::from(before.split(' ').nth(4).unwrap());
        }
    }
    panic!("no cgroup2 file system is mounted, so node mode cannot be tested here");
}

/// Cgroups of test pods under a private subtree, removed at drop.
struct Cgroups {
    root: PathBuf,
    created: Vec<PathBuf>,
}

impl Cgroups {
    fn new() -> Cgroups {
        let root = cgroup2_mount().join(format!("envproxy-admin-{}", random_hex(8)));
        fs::create_dir(&root).unwrap();
        Cgroups {
            root: root.clone(),
            created: vec![root],
        }
    }

    /// Creates the systemd-style container cgroup of `pod_uid` and returns its path.
    fn container(&mut self, pod_uid: &str, container_id: &str) -> PathBuf {
        let underscored = pod_uid.replace('-', "_");
        let parts = [
            "kubepods.slice".to_string(),
            "kubepods-besteffort.slice".to_string(),
            format!("kubepods-besteffort-pod{underscored}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ];
        let mut path = self.root.clone();
        for part in parts {
            path.push(part);
            if !path.exists() {
                fs::create_dir(&path).unwrap();
                self.created.push(path.clone());
            }
        }
        path
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for path in self.created.iter().rev() {
            // A cgroup can be removed once its processes have exited.
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(path).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A node-mode agent on the current runtime, with the kube and Vault test servers.
struct Node {
    kube: KubeTestServer,
    /// The agent's bearer token at the kube test server.
    agent_token: String,
    vault: VaultTestServer,
    dir: tempfile::TempDir,
    socket: PathBuf,
    admin_socket: PathBuf,
    /// The metrics listener, on a port the system picked.
    metrics: SocketAddr,
    token_mount: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Node {
    /// Starts the servers; with `kube_down`, the kube test server rejects every request with
    /// 503 until [`KubeTestServer::set_unavailable`] turns it back on.
    async fn start(kube_down: bool) -> Node {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kube = KubeTestServer::start(KubeOptions::default()).await.unwrap();
        kube.set_unavailable(kube_down);
        let vault = VaultTestServer::start(VaultOptions::default())
            .await
            .unwrap();
        let root = vault.root();
        root.enable_kubernetes_auth("kubernetes", None);
        root.set_policy(
            "team-a-read",
            Policy::new().allow("secret/data/team-a/*", &[Capability::Read]),
        );
        root.add_kubernetes_role(
            "kubernetes",
            "app-a",
            KubernetesRole::new(&["app-a"], &["team-a"], &["team-a-read"]),
        )
        .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let token_mount = dir.path().join("token-mount");
        fs::create_dir(&token_mount).unwrap();
        let agent_token = format!("agent-{}", random_hex(16));
        kube.register_token(
            &agent_token,
            "system:serviceaccount:envproxy:agent",
            vec![Rule::new(&["list", "watch", "get"], &["pods"])],
        );
        let kubeconfig = dir.path().join("kubeconfig");
        fs::write(&kubeconfig, kube.kubeconfig(&agent_token)).unwrap();
        let socket = dir.path().join("node/agent.sock");
        let config_path = dir.path().join("agent.toml");
        let text = format!(
            "[agent]\nmode = \"node\"\nsocket = {socket:?}\n\
             [node]\nname = \"{NODE}\"\nkubeconfig = {kubeconfig:?}\n\
             token_path = {token:?}\ntoken_audience = \"{AUDIENCE}\"\npod_wait_ms = 1000\n\
             [vault]\naddress = \"{address}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            token = token_mount.join("token"),
            address = vault.url(),
        );
        let config =
            Config::parse_with(&text, &config_path, &VaultEnvironment::default(), None).unwrap();
        let agent = Agent::bind(config).await.unwrap();
        let admin_socket = agent.admin_socket_path().unwrap().to_path_buf();
        let metrics = agent.metrics_address().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.serve(async {
            let _ = stopped.await;
        }));
        Node {
            kube,
            agent_token,
            vault,
            dir,
            socket,
            admin_socket,
            metrics,
            token_mount,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("agent stops")
                .unwrap();
        }
    }

    async fn status(&self) -> pb::StatusResponse {
        let mut client = admin_client(&self.admin_socket).await;
        client
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    async fn pods_watched(&self) -> u64 {
        self.status().await.pods_watched
    }

    /// Replaces the kube test server with a fresh one on the same port: no pods, and a
    /// resourceVersion lower than the old server's.
    async fn restart_kube_fresh(&mut self) {
        let port = self.kube.addr().port();
        self.kube.stop_listening().await;
        let fresh = KubeTestServer::start(KubeOptions {
            port,
            ..KubeOptions::default()
        })
        .await
        .unwrap();
        fresh.register_token(
            &self.agent_token,
            "system:serviceaccount:envproxy:agent",
            vec![Rule::new(&["list", "watch", "get"], &["pods"])],
        );
        let old = std::mem::replace(&mut self.kube, fresh);
        old.shutdown().await;
    }

    async fn health(&self) -> ServingStatus {
        let mut health = HealthClient::new(channel(&self.admin_socket).await.unwrap());
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    }
}

/// One test pod: its cgroup and the directory that contains its projected token.
struct TestPod {
    cgroup: PathBuf,
    token_dir: PathBuf,
}

/// Adds pod `team-a/<name>` of service account `app-a` on the node, opted in, with container
/// `app` that declares `DB_PASSWORD` as [`REFERENCE`], and writes its projected token.
fn add_pod(node: &Node, cgroups: &mut Cgroups, name: &str) -> TestPod {
    add_pod_with(node, cgroups, name, json!({"envproxy.dev/inject": "true"}))
}

/// Adds a pod as [`add_pod`] does, with `annotations` instead of the opt-in.
fn add_pod_with(
    node: &Node,
    cgroups: &mut Cgroups,
    name: &str,
    annotations: serde_json::Value,
) -> TestPod {
    let uid = random_uid();
    let container_id = random_hex(64);
    let object: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": uid,
            "annotations": annotations,
        },
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": "app-a",
            "containers": [{
                "name": "app",
                "image": "app:1",
                "env": [{"name": "DB_PASSWORD", "value": REFERENCE}],
            }],
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": "app",
                "image": "app:1",
                "imageID": "",
                "ready": true,
                "restartCount": 0,
                "containerID": format!("containerd://{container_id}"),
            }],
        },
    }))
    .unwrap();
    node.kube.add_service_account("team-a", "app-a");
    node.kube.apply_pod(object).unwrap();
    let token_dir = node.dir.path().join(format!("pods/{name}"));
    fs::create_dir_all(&token_dir).unwrap();
    let token = node
        .kube
        .mint_projected_token("team-a", name, AUDIENCE, Duration::from_secs(3600))
        .unwrap();
    fs::write(token_dir.join("token"), token).unwrap();
    TestPod {
        cgroup: cgroups.container(&uid, &container_id),
        token_dir,
    }
}

/// A Python client of the agent's wire protocol: sends a v2 request per `NAME=VALUE` argument
/// over one connection and prints `status` and the payload length for each.
const CLIENT: &str = "import socket, struct, sys\n\
s = socket.socket(socket.AF_UNIX)\n\
s.settimeout(15)\n\
s.connect(sys.argv[1])\n\
def read(n):\n    data = b''\n    while len(data) < n:\n        chunk = s.recv(n - len(data))\n        if not chunk:\n            raise SystemExit('connection closed')\n        data += chunk\n    return data\n\
for pair in sys.argv[2:]:\n    name, value = (part.encode() for part in pair.split('=', 1))\n    s.sendall(bytes([2]) + struct.pack('>H', len(name)) + name + struct.pack('>H', len(value)) + value)\n    status, length = struct.unpack('>BH', read(3))\n    read(length)\n    print(status, length)\n";

/// Runs [`CLIENT`] in `pod`'s container cgroup with the pod's token directory mounted at the
/// token mount point, and returns the response statuses.
fn request_in_pod(node: &Node, pod: &TestPod, pairs: &[(&str, &str)]) -> Vec<u8> {
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let mut args = vec![node.socket.display().to_string()];
    args.extend(pairs);
    let stdout = python_in_pod(node, pod, CLIENT, &args);
    String::from_utf8_lossy(&stdout)
        .lines()
        .map(|line| line.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// Runs the Python `script` with `args` in `pod`'s container cgroup with the pod's token
/// directory mounted at the token mount point, checks that it succeeded and returns its
/// standard output.
fn python_in_pod(node: &Node, pod: &TestPod, script: &str, args: &[String]) -> Vec<u8> {
    let c_path = |path: &Path| CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let procs = c_path(&pod.cgroup.join("cgroup.procs"));
    let source = c_path(&pod.token_dir);
    let target = c_path(&node.token_mount);
    let mut command = Command::new("python3");
    command.args(["-c", script]).args(args).stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec and makes only system calls, on strings
    // built before the fork.
    unsafe {
        command.pre_exec(move || enter_pod(&procs, &source, &target));
    }
    let output = command.output().expect("run python3");
    assert!(output.status.success(), "{output:?}");
    output.stdout
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`, and bind-mounts
/// `source` over `target` in a new private mount namespace.
fn enter_pod(procs: &CString, source: &CString, target: &CString) -> std::io::Result<()> {
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        if written != 1 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

const FOUND: u8 = 0;
const ERROR: u8 = 2;
const PASSTHROUGH: u8 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_kube_watch() {
    require_root();
    let node = Node::start(true).await;
    assert_eq!(node.health().await, ServingStatus::NotServing);
    let mut client = admin_client(&node.admin_socket).await;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.mode, "node");
    assert_eq!(status.node, NODE);
    assert!(!status.kube_watch_synced);
    assert!(!status.serving);

    node.kube.set_unavailable(false);
    eventually("health is SERVING after the first list", || async {
        node.health().await == ServingStatus::Serving
    })
    .await;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.kube_watch_synced);
    assert!(status.kube_watch_connected);

    node.kube.set_unavailable(true);
    eventually(
        "health is NOT_SERVING while the API server is down",
        || async { node.health().await == ServingStatus::NotServing },
    )
    .await;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.kube_watch_synced, "the first list stays delivered");
    assert!(!status.kube_watch_connected);

    node.kube.set_unavailable(false);
    eventually("health is SERVING again", || async {
        node.health().await == ServingStatus::Serving
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_reason_names_watch_error() {
    require_root();
    capture_log();
    let node = Node::start(true).await;
    // RBAC lets the agent get pods but not list or watch them.
    node.kube.register_token(
        &node.agent_token,
        "system:serviceaccount:envproxy:agent",
        vec![Rule::new(&["get"], &["pods"])],
    );
    node.kube.set_unavailable(false);
    eventually("the reason names the 403", || async {
        node.status().await.not_serving_reason.contains("403")
    })
    .await;
    let status = node.status().await;
    let reason = &status.not_serving_reason;
    assert!(
        reason.contains("has not received its first full list of pods: "),
        "{reason}"
    );
    assert!(reason.contains("list and watch pods"), "{reason}");
    let last_error = status.kubernetes.expect("kubernetes status").last_error;
    assert!(last_error.contains("403"), "{last_error}");
    let warnings: Vec<String> = log_lines_with("403 Forbidden")
        .into_iter()
        .filter(|line| line.contains(&node.kube.url()))
        .collect();
    assert!(!warnings.is_empty(), "the 403 is logged");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);

    // RBAC is fixed: the watch lists, and the error is gone from the status.
    node.kube.register_token(
        &node.agent_token,
        "system:serviceaccount:envproxy:agent",
        vec![Rule::new(&["list", "watch", "get"], &["pods"])],
    );
    eventually_within(
        "health is SERVING after RBAC is fixed",
        WAIT * 2,
        || async { node.health().await == ServingStatus::Serving },
    )
    .await;
    let status = node.status().await;
    assert_eq!(status.kubernetes.expect("kubernetes status").last_error, "");

    // The API server stops: the status and the log name the refused connection.
    node.kube.stop_listening().await;
    eventually("the reason names the refused connection", || async {
        node.status()
            .await
            .not_serving_reason
            .contains("connection refused")
    })
    .await;
    let status = node.status().await;
    let last_error = status.kubernetes.expect("kubernetes status").last_error;
    assert!(last_error.contains("connection refused"), "{last_error}");
    // Wait for several failures of the same kind: they give one warning until the 10th.
    eventually_within("three failed requests", WAIT * 2, || async {
        node.status()
            .await
            .not_serving_reason
            .contains("3 times in a row")
    })
    .await;
    let refused: Vec<String> = log_lines_with("connection refused")
        .into_iter()
        .filter(|line| line.contains(&node.kube.url()) && line.contains("WARN"))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_status_after_kube_restart() {
    require_root();
    let mut node = Node::start(false).await;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "restart-a", "namespace": "team-a", "uid": random_uid()},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app:1"}]},
    }))
    .unwrap();
    node.kube.apply_pod(pod).unwrap();
    eventually("the pod is watched", || async {
        node.pods_watched().await == 1
    })
    .await;
    eventually("health is SERVING", || async {
        node.health().await == ServingStatus::Serving
    })
    .await;

    // The same server goes away for about 3 s and comes back with its state.
    node.kube.stop_listening().await;
    eventually(
        "health is NOT_SERVING while the API server is away",
        || async { node.health().await == ServingStatus::NotServing },
    )
    .await;
    let status = node.status().await;
    assert!(!status.kube_watch_connected);
    assert!(!status.serving);
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.kube.start_listening().await.unwrap();
    eventually_within("the watch reports connected again", WAIT * 2, || async {
        node.status().await.kube_watch_connected
    })
    .await;
    eventually("health is SERVING again", || async {
        node.health().await == ServingStatus::Serving
    })
    .await;
    let status = node.status().await;
    assert!(status.serving);
    assert_eq!(status.pods_watched, 1);

    // A fresh server on the same port has no pod and a lower resourceVersion, so resuming the
    // old watch could never deliver the deletion: the agent must list again.
    let relists_before = scrape(node.metrics)
        .await
        .value("envproxy_pod_watch_relists_total", &[]);
    node.restart_kube_fresh().await;
    eventually_within("the deleted pod is forgotten", WAIT * 2, || async {
        node.pods_watched().await == 0
    })
    .await;
    eventually("health is SERVING with the fresh server", || async {
        node.health().await == ServingStatus::Serving
    })
    .await;
    let status = node.status().await;
    assert!(status.kube_watch_connected);
    assert!(status.serving);
    let relists = scrape(node.metrics)
        .await
        .value("envproxy_pod_watch_relists_total", &[]);
    assert!(relists > relists_before, "{relists} relists");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_outside_pod_is_audited() {
    require_root();
    let node = Node::start(false).await;
    let mut client = admin_client(&node.admin_socket).await;
    let mut stream = client
        .watch_audit(pb::WatchAuditRequest {})
        .await
        .unwrap()
        .into_inner();

    let response = agent_request(&node.socket, &v2("DB_PASSWORD", REFERENCE)).await;
    let Response::Error(message) = response else {
        panic!("expected a denial, got {response:?}");
    };
    assert!(message.contains("outside any Kubernetes pod"), "{message}");

    let event = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.decision, "denied");
    assert_eq!(event.reason, "outside_pod");
    assert_eq!(event.pid, std::process::id() as i32);
    assert_eq!(event.pod, "");
    assert_eq!(event.variable, "DB_PASSWORD");
    assert_eq!(event.reference, REFERENCE);
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.counters.unwrap().denials, 1);
    let workloads = client
        .list_workloads(pb::ListWorkloadsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(workloads.workloads.is_empty(), "{workloads:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_requests_audited_listed_and_flushed() {
    require_root();
    let node = Node::start(false).await;
    let mut cgroups = Cgroups::new();
    let secret = format!("pw-{}", random_hex(24));
    node.vault
        .root()
        .kv2_put("secret", "team-a/config", json!({"password": secret}))
        .unwrap();
    let pod = add_pod(&node, &mut cgroups, "web-a");
    let mut client = admin_client(&node.admin_socket).await;
    let mut stream = client
        .watch_audit(pb::WatchAuditRequest {})
        .await
        .unwrap()
        .into_inner();

    let statuses = tokio::task::block_in_place(|| {
        request_in_pod(
            &node,
            &pod,
            &[
                ("DB_PASSWORD", REFERENCE),
                ("UNDECLARED", UNDECLARED_REFERENCE),
                ("PLAIN", "plain-value"),
                ("BROKEN", "vault:"),
            ],
        )
    });
    assert_eq!(statuses, [FOUND, ERROR, PASSTHROUGH, ERROR]);
    let reads = || node.vault.request_count("GET", SECRET_PATH);
    assert_eq!(reads(), 1);

    let mut events = Vec::new();
    for _ in 0..4 {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        events.push(event);
    }
    for event in &events {
        assert_eq!(event.pod, "team-a/web-a");
        assert_eq!(event.container, "app");
        assert!(event.pid > 0);
        assert_ne!(event.pid, std::process::id() as i32);
    }
    assert_eq!(events[0].variable, "DB_PASSWORD");
    assert_eq!(events[0].reference, REFERENCE);
    assert_eq!(events[0].decision, "found");
    assert_eq!(events[0].cache, "miss");
    assert_eq!(events[0].reason, "");
    assert_eq!(events[1].variable, "UNDECLARED");
    assert_eq!(events[1].reference, UNDECLARED_REFERENCE);
    assert_eq!(events[1].decision, "denied");
    assert_eq!(events[1].reason, "reference_not_declared");
    assert_eq!(events[2].variable, "PLAIN");
    assert_eq!(events[2].decision, "passthrough");
    assert_eq!(events[2].reference, "");
    assert_eq!(events[3].variable, "BROKEN");
    assert_eq!(events[3].decision, "error");
    assert!(
        events[3].reason.starts_with("invalid reference"),
        "the variable name is only in its own field: {:?}",
        events[3].reason
    );
    assert!(!format!("{events:?}").contains(&secret));

    let workloads = client
        .list_workloads(pb::ListWorkloadsRequest {})
        .await
        .unwrap()
        .into_inner()
        .workloads;
    assert_eq!(workloads.len(), 1, "{workloads:?}");
    let workload = &workloads[0];
    assert_eq!(workload.namespace, "team-a");
    assert_eq!(workload.pod, "web-a");
    assert_eq!(workload.container, "app");
    assert_eq!(workload.service_account, "app-a");
    assert_eq!(workload.vault_role, "app-a");
    assert_eq!(workload.requests, 4);
    assert_eq!(workload.denials, 1);
    assert!(workload.pod_present);
    assert!(workload.last_request_unix_ms >= events[3].time_unix_ms);

    let entries = client
        .list_cache_entries(pb::ListCacheEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].path, SECRET_PATH);
    assert!(entries[0].identity.contains("team-a/app-a"), "{entries:?}");
    assert!(!format!("{entries:?}").contains(&secret));

    let statuses =
        tokio::task::block_in_place(|| request_in_pod(&node, &pod, &[("DB_PASSWORD", REFERENCE)]));
    assert_eq!(statuses, [FOUND]);
    assert_eq!(reads(), 1, "the second read is served from the cache");

    let flushed = client
        .flush(pb::FlushRequest {
            target: Some(pb::flush_request::Target::Pod("team-a/web-a".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(flushed.entries_flushed, 1);
    let statuses =
        tokio::task::block_in_place(|| request_in_pod(&node, &pod, &[("DB_PASSWORD", REFERENCE)]));
    assert_eq!(statuses, [FOUND]);
    assert_eq!(reads(), 2, "the request after the flush reads Vault");

    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.pods_watched, 1);
    assert_eq!(status.vault.len(), 1);
    assert!(status.vault[0].logged_in);
    assert!(status.vault[0].identity.contains("team-a/app-a"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_pod_requests_and_relists() {
    require_root();
    let node = Node::start(false).await;
    let mut cgroups = Cgroups::new();
    let secret = format!("pw-{}", random_hex(24));
    node.vault
        .root()
        .kv2_put("secret", "team-a/config", json!({"password": secret}))
        .unwrap();
    let pod = add_pod(&node, &mut cgroups, "metrics-a");

    let statuses = tokio::task::block_in_place(|| {
        request_in_pod(
            &node,
            &pod,
            &[
                ("DB_PASSWORD", REFERENCE),
                ("DB_PASSWORD", REFERENCE),
                ("DB_PASSWORD", REFERENCE),
                ("UNDECLARED", UNDECLARED_REFERENCE),
            ],
        )
    });
    assert_eq!(statuses, [FOUND, FOUND, FOUND, ERROR]);
    let outside = agent_request(&node.socket, &v2("DB_PASSWORD", REFERENCE)).await;
    assert!(matches!(outside, Response::Error(_)), "{outside:?}");

    let counts = scrape(node.metrics).await;
    let requests =
        |decision: &str| counts.value("envproxy_requests_total", &[("decision", decision)]);
    assert_eq!(requests("found"), 3.0);
    assert_eq!(requests("denied"), 2.0);
    assert_eq!(requests("error"), 0.0);
    assert_eq!(
        counts.value("envproxy_request_duration_seconds_count", &[]),
        5.0
    );
    let denials = |reason: &str| counts.value("envproxy_denials_total", &[("reason", reason)]);
    assert_eq!(denials("reference_not_declared"), 1.0);
    assert_eq!(denials("outside_pod"), 1.0);
    let cache = |outcome: &str| {
        counts.value(
            "envproxy_cache_requests_total",
            &[("backend", "vault"), ("outcome", outcome)],
        )
    };
    assert_eq!(cache("miss"), 1.0);
    assert_eq!(cache("hit"), 2.0);
    let vault = |operation: &str| {
        counts.value("envproxy_vault_requests_total", &[("operation", operation)])
    };
    assert_eq!(
        vault("login"),
        1.0,
        "one Kubernetes login for the pod's identity"
    );
    assert_eq!(vault("read"), 1.0);
    assert_eq!(node.vault.request_count("GET", SECRET_PATH), 1);
    assert_eq!(counts.value("envproxy_pod_watch_relists_total", &[]), 0.0);
    assert!(!counts.text.contains(&secret));

    // The watch misses a change during an outage, and compaction drops it from the history,
    // so the watch must relist to see it.
    let outage = Instant::now();
    node.kube.set_unavailable(true);
    add_pod(&node, &mut cgroups, "metrics-b");
    node.kube.compact();
    node.kube.set_unavailable(false);
    // The watch retries with a backoff that doubles through the outage. The relist may then
    // come up to about twice the outage after it ends, and a slow machine stretches the outage.
    let wait = WAIT + outage.elapsed() * 2;
    eventually_within("the pod watch relists", wait, || async {
        scrape(node.metrics)
            .await
            .value("envproxy_pod_watch_relists_total", &[])
            >= 1.0
    })
    .await;
    let relisted = scrape(node.metrics).await;
    assert_eq!(
        relisted.value("envproxy_pod_watch_relists_total", &[]),
        1.0,
        "one completed list after one outage"
    );
    eventually("the missed pod is watched", || async {
        node.pods_watched().await == 2
    })
    .await;
    let after = scrape(node.metrics).await;
    assert!(after.value("envproxy_pod_watch_errors_total", &[]) >= 1.0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_pod_watch_errors() {
    require_root();
    let node = Node::start(true).await;
    eventually("a failed pod list is counted", || async {
        scrape(node.metrics)
            .await
            .value("envproxy_pod_watch_errors_total", &[])
            >= 1.0
    })
    .await;
    node.kube.set_unavailable(false);
    eventually("health is SERVING after the first list", || async {
        node.health().await == ServingStatus::Serving
    })
    .await;
    let after = scrape(node.metrics).await;
    assert_eq!(
        after.value("envproxy_pod_watch_relists_total", &[]),
        0.0,
        "the first full list is no relist"
    );
    node.stop().await;
}

/// Connects to the Unix socket `argv[1]` `argv[2]` times in a row. Each time it waits for the
/// agent to close the connection, so one refusal ends before the next connect.
const CONNECT_LOOP: &str = "import socket, sys\n\
for _ in range(int(sys.argv[2])):\n    s = socket.socket(socket.AF_UNIX)\n    s.settimeout(15)\n    s.connect(sys.argv[1])\n    s.recv(1)\n    s.close()\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_admin_connections_counted_and_logged_in_summary() {
    require_root();
    capture_log();
    let node = Node::start(false).await;
    let mut cgroups = Cgroups::new();
    let pod = add_pod(&node, &mut cgroups, "flood-a");
    const FLOOD: u64 = 300;
    let args = [node.admin_socket.display().to_string(), FLOOD.to_string()];
    tokio::task::block_in_place(|| python_in_pod(&node, &pod, CONNECT_LOOP, &args));

    eventually("every refusal is counted", || async {
        let counts = scrape(node.metrics).await;
        counts.has(
            "envproxy_refused_connections_total",
            &[("socket", "admin"), ("reason", "in_pod")],
        ) && counts.value(
            "envproxy_refused_connections_total",
            &[("socket", "admin"), ("reason", "in_pod")],
        ) == FLOOD as f64
    })
    .await;
    let rejected = log_lines_with("rejected an admin API connection");
    let summaries = log_lines_with("refused more connections than were logged");
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert!(rejected[0].contains("in_pod"), "{rejected:#?}");
    assert!(summaries.len() <= 1, "{summaries:#?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_before_attestation_name_pod_container_and_annotation() {
    require_root();
    let node = Node::start(false).await;
    let mut cgroups = Cgroups::new();
    let mut client = admin_client(&node.admin_socket).await;
    let mut stream = client
        .watch_audit(pb::WatchAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    let cases = [
        ("plain-a", json!({}), "not_opted_in"),
        (
            "ttl-a",
            json!({"envproxy.dev/inject": "true", "envproxy.dev/vault-cache-ttl": "banana"}),
            "bad_annotation: envproxy.dev/vault-cache-ttl",
        ),
        (
            "capital-a",
            json!({"envproxy.dev/inject": "True"}),
            "bad_annotation: envproxy.dev/inject",
        ),
        (
            "containers-a",
            json!({"envproxy.dev/inject": "true", "envproxy.dev/containers": ""}),
            "bad_annotation: envproxy.dev/containers",
        ),
    ];
    for (name, annotations, reason) in &cases {
        let pod = add_pod_with(&node, &mut cgroups, name, annotations.clone());
        let statuses = tokio::task::block_in_place(|| {
            request_in_pod(&node, &pod, &[("DB_PASSWORD", REFERENCE)])
        });
        assert_eq!(statuses, [ERROR], "{name}");
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.decision, "denied", "{name}");
        assert_eq!(event.pod, format!("team-a/{name}"));
        assert_eq!(event.container, "app", "{name}");
        assert_eq!(event.reason, *reason, "{name}");
        assert_eq!(event.variable, "DB_PASSWORD");
    }
    let workloads = client
        .list_workloads(pb::ListWorkloadsRequest {})
        .await
        .unwrap()
        .into_inner()
        .workloads;
    for (name, _, _) in &cases {
        let workload = workloads
            .iter()
            .find(|workload| workload.pod == *name)
            .unwrap_or_else(|| panic!("pod {name} is not listed: {workloads:#?}"));
        assert_eq!(workload.namespace, "team-a");
        assert_eq!(workload.container, "app");
        assert_eq!(workload.denials, 1, "{workload:?}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_logged_once_then_summarised() {
    require_root();
    capture_log();
    let node = Node::start(false).await;
    let mut cgroups = Cgroups::new();
    let pod = add_pod(&node, &mut cgroups, "deny-flood-a");
    const FLOOD: usize = 500;
    let pairs = vec![("UNDECLARED", UNDECLARED_REFERENCE); FLOOD];
    let started = Instant::now();
    let statuses = tokio::task::block_in_place(|| request_in_pod(&node, &pod, &pairs));
    assert_eq!(statuses, vec![ERROR; FLOOD]);

    // Metrics and the workload's denial count stay one per request.
    let counts = scrape(node.metrics).await;
    assert_eq!(
        counts.value(
            "envproxy_denials_total",
            &[("reason", "reference_not_declared")]
        ),
        FLOOD as f64
    );
    assert_eq!(
        counts.value("envproxy_requests_total", &[("decision", "denied")]),
        FLOOD as f64
    );
    let mut client = admin_client(&node.admin_socket).await;
    let workloads = client
        .list_workloads(pb::ListWorkloadsRequest {})
        .await
        .unwrap()
        .into_inner()
        .workloads;
    let workload = workloads
        .iter()
        .find(|workload| workload.pod == "deny-flood-a")
        .unwrap_or_else(|| panic!("pod deny-flood-a is not listed: {workloads:#?}"));
    assert_eq!(workload.denials, FLOOD as u64, "{workload:?}");

    // The log gets the first denial, then one summary with the count of the others once the
    // 10 s interval has passed.
    let pod_field = "pod=\"team-a/deny-flood-a\"";
    let summary_text = "denied more requests than were logged";
    eventually_within("the summary line is logged", WAIT, || async {
        !log_lines_with(summary_text).is_empty()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(10));
    let denied: Vec<String> = log_lines_with("request denied")
        .into_iter()
        .filter(|line| line.contains(pod_field))
        .collect();
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert!(denied[0].contains("reference_not_declared"), "{denied:#?}");
    let summaries: Vec<String> = log_lines_with(summary_text)
        .into_iter()
        .filter(|line| line.contains("source=team-a/deny-flood-a"))
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:#?}");
    assert!(
        summaries[0].contains(&format!("unlogged={}", FLOOD - 1)),
        "{summaries:#?}"
    );
    assert!(
        summaries[0].contains("reason=\"reference_not_declared\""),
        "{summaries:#?}"
    );
    node.stop().await;
}
