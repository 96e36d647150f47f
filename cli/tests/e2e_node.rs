//! End-to-end tests of node mode. They run as root, with real parts wherever they exist: the
//! `envproxy-agent` binary in node mode, `kubepods` cgroups that the test creates under the
//! machine's cgroup v2 tree, and C and Python programs under `libenvproxy.so`. Each test pod
//! gets a mount namespace that contains its projected token. The in-repo kube API and Vault
//! test servers stand in for a cluster.
//!
//! Run as another user, every test fails with a message saying why.

mod e2e_support;

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_support::*;
use envproxy_kube_test_server::{KubeTestServer, Rule, ServerOptions as KubeOptions};
use envproxy_vault_test_server::{
    Capability, KubernetesRole, Policy, ServerOptions as VaultOptions, VaultTestServer,
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

const NODE: &str = "node-e2e";
const AUDIENCE: &str = "vault";
const LIMIT: Duration = Duration::from_secs(30);

fn require_root() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "node-mode end-to-end tests must run as root: they create cgroups and mount \
         namespaces for test pods (CI runs them as root)"
    );
}

/// Random lowercase hex of `len` digits.
fn random_hex(len: usize) -> String {
    let mut hex = String::new();
    while hex.len() < len {
        hex.extend(random_uid().chars().filter(char::is_ascii_hexdigit));
    }
    hex.truncate(len);
    hex
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

/// Returns the mount point of the cgroup v1 `pids` hierarchy.
fn cgroup1_pids_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let mut fields = after.split(' ');
        let is_pids = fields.next() == Some("cgroup")
            && fields
                .nth(1)
                .is_some_and(|options| options.split(',').any(|o| o == "pids"));
        if is_pids {
            return PathBuf::from(before.split(' ').nth(4).unwrap());
        }
    }
    panic!(
        "no cgroup v1 `pids` hierarchy is mounted, so node mode on cgroup v1 cannot be tested \
         here; run this test on a machine with cgroup v1 or hybrid mounts"
    );
}

/// A `kubepods` tree under a test directory of one cgroup hierarchy, removed on drop: the
/// systemd driver's layout on cgroup v2, the cgroupfs driver's on cgroup v1.
struct Cgroups {
    root: PathBuf,
    version: u8,
    created: Vec<PathBuf>,
}

impl Cgroups {
    fn new() -> Cgroups {
        Cgroups::under(cgroup2_mount(), 2)
    }

    fn under(mount: PathBuf, version: u8) -> Cgroups {
        let root = mount.join(format!("envproxy-e2e-{}", random_hex(8)));
        fs::create_dir(&root).unwrap();
        Cgroups {
            root: root.clone(),
            version,
            created: vec![root],
        }
    }

    /// Creates the container cgroup of `pod_uid` and returns its path.
    fn container(&mut self, pod_uid: &str, container_id: &str) -> PathBuf {
        let underscored = pod_uid.replace('-', "_");
        let parts = if self.version == 2 {
            vec![
                "kubepods.slice".to_string(),
                "kubepods-besteffort.slice".to_string(),
                format!("kubepods-besteffort-pod{underscored}.slice"),
                format!("cri-containerd-{container_id}.scope"),
            ]
        } else {
            vec![
                "kubepods".to_string(),
                "burstable".to_string(),
                format!("pod{pod_uid}"),
                container_id.to_string(),
            ]
        };
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
            // A cgroup can be removed once its processes are gone; they exit shortly after
            // being killed.
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(path).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// One test pod: its object in the kube test server, its cgroup and its token directory.
struct TestPod {
    namespace: String,
    name: String,
    /// The pod as the kube test server will store it.
    object: Pod,
    cgroup: PathBuf,
    /// Mounted over the token mount point in the pod's processes.
    token_dir: PathBuf,
}

/// The servers, the agent and the file system of one test.
struct Cluster {
    /// Runtime of the test servers' tasks, kept for the life of the cluster.
    _runtime: tokio::runtime::Runtime,
    kube: KubeTestServer,
    vault: VaultTestServer,
    dir: tempfile::TempDir,
    cgroups: Cgroups,
    agent: Option<Child>,
    socket: PathBuf,
    /// Where each pod's processes find their token; empty outside any pod.
    token_mount: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with_token_source("projected")
    }

    /// Starts the cluster with the agent's `[node] token_source` set to `token_source`. With
    /// `token-request`, the agent's service account may also create service account tokens.
    fn start_with_token_source(token_source: &str) -> Cluster {
        Cluster::start_with(token_source, Cgroups::new)
    }

    /// Starts the cluster with pod cgroups from `cgroups`.
    fn start_with(token_source: &str, cgroups: impl FnOnce() -> Cgroups) -> Cluster {
        Cluster::start_configured(token_source, cgroups, "")
    }

    /// Starts the cluster with `node_lines` added to the agent's `[node]` table.
    fn start_configured(
        token_source: &str,
        cgroups: impl FnOnce() -> Cgroups,
        node_lines: &str,
    ) -> Cluster {
        require_root();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let kube = runtime
            .block_on(KubeTestServer::start(KubeOptions::default()))
            .unwrap();
        let vault = runtime
            .block_on(VaultTestServer::start(VaultOptions::default()))
            .unwrap();
        let root = vault.root();
        root.enable_kubernetes_auth("kubernetes", None);
        for team in ["a", "b"] {
            root.set_policy(
                &format!("team-{team}-read"),
                Policy::new().allow(&format!("secret/data/team-{team}/*"), &[Capability::Read]),
            );
            root.add_kubernetes_role(
                "kubernetes",
                &format!("app-{team}"),
                KubernetesRole::new(
                    &[&format!("app-{team}")],
                    &[&format!("team-{team}")],
                    &[&format!("team-{team}-read")],
                ),
            )
            .unwrap();
        }

        let dir = tempfile::tempdir().unwrap();
        let token_mount = dir.path().join("token-mount");
        fs::create_dir(&token_mount).unwrap();
        let agent_token = format!("agent-{}", random_hex(16));
        let mut rules = vec![Rule::new(&["list", "watch", "get"], &["pods"])];
        if token_source == "token-request" {
            rules.push(Rule::new(&["create"], &["serviceaccounts/token"]));
        }
        kube.register_token(&agent_token, "system:serviceaccount:envproxy:agent", rules);
        let kubeconfig = dir.path().join("kubeconfig");
        fs::write(&kubeconfig, kube.kubeconfig(&agent_token)).unwrap();
        let socket = dir.path().join("node/agent.sock");
        let config = dir.path().join("agent.toml");
        fs::write(
            &config,
            format!(
                "[agent]\nmode = \"node\"\nsocket = {socket:?}\nlog_level = \"info\"\n\
                 [node]\nname = \"{NODE}\"\nkubeconfig = {kubeconfig:?}\n\
                 token_path = {token:?}\ntoken_audience = \"{AUDIENCE}\"\npod_wait_ms = 1000\n\
                 token_source = \"{token_source}\"\n{node_lines}\n\
                 [vault]\naddress = \"{vault}\"\n",
                token = token_mount.join("token"),
                vault = vault.url(),
            ),
        )
        .unwrap();
        let agent = Command::new(agent_binary())
            .arg("--config")
            .arg(&config)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("NODE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        wait_for_agent(&socket, Duration::from_secs(10));
        Cluster {
            _runtime: runtime,
            kube,
            vault,
            dir,
            cgroups: cgroups(),
            agent: Some(agent),
            socket,
            token_mount,
        }
    }

    /// Adds a pod with one container `app` whose env declares `env`, and places its projected
    /// token in its token directory.
    fn add_pod(
        &mut self,
        team: &str,
        name: &str,
        annotations: serde_json::Value,
        env: &[(&str, &str)],
    ) -> TestPod {
        let pod = self.prepare_pod(team, name, annotations, env);
        self.apply(&pod);
        self.write_token(&pod);
        pod
    }

    /// Builds a pod of service account `app-<team>` in namespace `team-<team>` on this node,
    /// with its cgroup and token directory, without adding it to the kube test server.
    fn prepare_pod(
        &mut self,
        team: &str,
        name: &str,
        annotations: serde_json::Value,
        env: &[(&str, &str)],
    ) -> TestPod {
        let namespace = format!("team-{team}");
        let service_account = format!("app-{team}");
        let uid = random_uid();
        let container_id = random_hex(64);
        let env: Vec<serde_json::Value> = env
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        let object: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "annotations": annotations,
            },
            "spec": {
                "nodeName": NODE,
                "serviceAccountName": service_account,
                "containers": [{"name": "app", "image": "app:1", "env": env}],
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
        self.kube.add_service_account(&namespace, &service_account);
        let token_dir = self.dir.path().join(format!("pods/{name}"));
        fs::create_dir_all(&token_dir).unwrap();
        let cgroup = self.cgroups.container(&uid, &container_id);
        TestPod {
            namespace,
            name: name.to_string(),
            object,
            cgroup,
            token_dir,
        }
    }

    fn apply(&self, pod: &TestPod) {
        self.kube.apply_pod(pod.object.clone()).unwrap();
    }

    /// Writes the token the kubelet would project for `pod`, which the server must know.
    fn write_token(&self, pod: &TestPod) {
        let token = self
            .kube
            .mint_projected_token(
                &pod.namespace,
                &pod.name,
                AUDIENCE,
                Duration::from_secs(3600),
            )
            .unwrap();
        fs::write(pod.token_dir.join("token"), token).unwrap();
    }

    /// Returns a command for `program` under the library, which runs in `pod`'s container.
    fn in_pod(&self, pod: &TestPod, program: &Path) -> Command {
        let mut command = preload_command(program, &self.socket);
        command
            .env("ENVPROXY_NO_PYTHON", "1")
            .env("ENVPROXY_NO_JAVA", "1");
        self.enter(pod, &mut command);
        command
    }

    /// Makes `command` join `pod`'s container cgroup and see the pod's token directory at the
    /// token mount point, before it executes.
    fn enter(&self, pod: &TestPod, command: &mut Command) {
        let c_path = |path: &Path| CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let procs = c_path(&pod.cgroup.join("cgroup.procs"));
        let source = c_path(&pod.token_dir);
        let target = c_path(&self.token_mount);
        // SAFETY: the closure runs between fork and exec and makes only system calls, on
        // strings built before the fork.
        unsafe {
            command.pre_exec(move || enter_pod(&procs, &source, &target));
        }
    }

    /// Returns a command for `program` under the library in no pod at all.
    fn outside_pods(&self, program: &Path) -> Command {
        preload_command(program, &self.socket)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            // SAFETY: kill with the pid of the agent this test started.
            unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = agent.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
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
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
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

/// Runs `probe get NAME` and returns the value it printed and its stderr.
fn probe_get(mut command: Command, name: &str) -> (Option<String>, String) {
    let output = run_with_limit(command.args(["get", name]), LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{output:?}");
    let value = value_of(&output.stdout, name).filter(|value| value != "(null)");
    (value, stderr)
}

fn put_secret(cluster: &Cluster, team: &str) -> String {
    let secret = random_secret();
    cluster
        .vault
        .root()
        .kv2_put(
            "secret",
            &format!("team-{team}/config"),
            json!({"password": secret}),
        )
        .unwrap();
    secret
}

fn reference(team: &str) -> String {
    format!("vault:secret/data/team-{team}/config#password")
}

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
        .env("ENVPROXY_HOOKS_DIR", source_hooks_dir())
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
