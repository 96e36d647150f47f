//! A node for the node-mode end-to-end tests, set up by hand. It runs the kube API and Vault
//! test servers and the `envproxy-agent` binary in node mode. Test pods get `kubepods` cgroups
//! under the machine's cgroup tree and a mount namespace that contains their projected token.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envproxy_kube_test_server::{KubeTestServer, Rule, ServerOptions as KubeOptions};
use envproxy_vault_test_server::{
    Capability, KubernetesRole, Policy, ServerOptions as VaultOptions, VaultTestServer,
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::e2e_support::*;

pub const NODE: &str = "node-e2e";
pub const AUDIENCE: &str = "vault";
pub const LIMIT: Duration = Duration::from_secs(30);
/// File name of the API server token in a pod's token directory.
pub const KUBE_TOKEN_FILE: &str = "kube-token";

pub fn require_root() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "node-mode end-to-end tests must run as root: they create cgroups and mount \
         namespaces for test pods (CI runs them as root)"
    );
}

/// Random lowercase hex of `len` digits.
pub fn random_hex(len: usize) -> String {
    let mut hex = String::new();
    while hex.len() < len {
        hex.extend(random_uid().chars().filter(char::is_ascii_hexdigit));
    }
    hex.truncate(len);
    hex
}

pub fn random_uid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

/// Returns the mount point of the cgroup v2 file system.
pub fn cgroup2_mount() -> PathBuf {
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
pub fn cgroup1_pids_mount() -> PathBuf {
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
pub struct Cgroups {
    pub root: PathBuf,
    pub version: u8,
    pub created: Vec<PathBuf>,
}

impl Cgroups {
    pub fn new() -> Cgroups {
        Cgroups::under(cgroup2_mount(), 2)
    }

    pub fn under(mount: PathBuf, version: u8) -> Cgroups {
        let root = mount.join(format!("envproxy-e2e-{}", random_hex(8)));
        fs::create_dir(&root).unwrap();
        Cgroups {
            root: root.clone(),
            version,
            created: vec![root],
        }
    }

    /// Creates the container cgroup of `pod_uid` and returns its path.
    pub fn container(&mut self, pod_uid: &str, container_id: &str) -> PathBuf {
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
pub struct TestPod {
    pub namespace: String,
    pub name: String,
    /// The pod as the kube test server will store it.
    pub object: Pod,
    pub cgroup: PathBuf,
    /// Mounted over the token mount point in the pod's processes.
    pub token_dir: PathBuf,
}

/// The servers, the agent and the file system of one test.
pub struct Cluster {
    /// Runtime of the test servers' tasks, kept for the life of the cluster.
    _runtime: tokio::runtime::Runtime,
    pub kube: KubeTestServer,
    pub vault: VaultTestServer,
    pub dir: tempfile::TempDir,
    pub cgroups: Cgroups,
    pub agent: Option<Child>,
    pub socket: PathBuf,
    /// The agent's stderr, printed when a test fails.
    pub agent_log: PathBuf,
    /// Where each pod's processes find their token; empty outside any pod.
    pub token_mount: PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with_token_source("projected")
    }

    /// Starts the cluster with the agent's `[node] token_source` set to `token_source`. With
    /// `token-request`, the agent's service account may also create service account tokens.
    pub fn start_with_token_source(token_source: &str) -> Cluster {
        Cluster::start_with(token_source, Cgroups::new)
    }

    /// Starts the cluster with pod cgroups from `cgroups`.
    pub fn start_with(token_source: &str, cgroups: impl FnOnce() -> Cgroups) -> Cluster {
        Cluster::start_configured(token_source, cgroups, "")
    }

    /// Starts the cluster for `k8s:` references: pods find their API server token as
    /// `kube-token` at the token mount point, and the agent caches Secret reads for 1 s.
    pub fn start_for_secrets() -> Cluster {
        // The token mount point is created inside `start_configured`, under the test's
        // temporary directory, so the config names it through a placeholder resolved there.
        Cluster::start_configured(
            "projected",
            Cgroups::new,
            "kube_token_path = \"{TOKEN_MOUNT}/kube-token\"\nkube_cache_ttl = 1",
        )
    }

    /// Starts the cluster with `node_lines` added to the agent's `[node]` table. The text
    /// `{TOKEN_MOUNT}` in them stands for the pods' token mount point.
    pub fn start_configured(
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
        let node_lines = node_lines.replace("{TOKEN_MOUNT}", &token_mount.to_string_lossy());
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
        let agent_log = dir.path().join("agent.log");
        let agent = Command::new(agent_binary())
            .arg("--config")
            .arg(&config)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("NODE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&agent_log).unwrap())
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
            agent_log,
            token_mount,
        }
    }

    /// Adds a pod with one container `app` whose env declares `env`, and places its projected
    /// token in its token directory.
    pub fn add_pod(
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
    pub fn prepare_pod(
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

    pub fn apply(&self, pod: &TestPod) {
        self.kube.apply_pod(pod.object.clone()).unwrap();
    }

    /// Writes the token the kubelet would project for `pod`, which the server must know.
    pub fn write_token(&self, pod: &TestPod) {
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

    /// Writes the token the kubelet mounts for the API server in `pod` as `kube-token` in its
    /// token directory, where `[node] kube_token_path` of [`Cluster::start_for_secrets`] points.
    pub fn write_kube_token(&self, pod: &TestPod) {
        let token = self
            .kube
            .mint_projected_token(
                &pod.namespace,
                &pod.name,
                &self.kube.api_audience(),
                Duration::from_secs(3600),
            )
            .unwrap();
        fs::write(pod.token_dir.join(KUBE_TOKEN_FILE), token).unwrap();
    }

    /// Returns a command for `program` under the library, which runs in `pod`'s container.
    pub fn in_pod(&self, pod: &TestPod, program: &Path) -> Command {
        let mut command = preload_command(program, &self.socket);
        command
            .env("ENVPROXY_NO_PYTHON", "1")
            .env("ENVPROXY_NO_JAVA", "1");
        self.enter(pod, &mut command);
        command
    }

    /// Makes `command` join `pod`'s container cgroup and see the pod's token directory at the
    /// token mount point, before it executes.
    pub fn enter(&self, pod: &TestPod, command: &mut Command) {
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

    /// Returns what the agent has written to stderr so far.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(&self.agent_log).unwrap_or_default()
    }

    /// Returns the admin socket, which node mode serves by default beside the agent socket.
    pub fn admin_socket(&self) -> PathBuf {
        envproxy_agent::admin::default_admin_socket(&self.socket)
    }

    /// Returns a command for `program` under the library in no pod at all.
    pub fn outside_pods(&self, program: &Path) -> Command {
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
        if std::thread::panicking() {
            eprintln!("agent log:\n{}", self.agent_log());
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`, and bind-mounts
/// `source` over `target` in a new private mount namespace.
pub fn enter_pod(procs: &CString, source: &CString, target: &CString) -> std::io::Result<()> {
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
pub fn probe_get(mut command: Command, name: &str) -> (Option<String>, String) {
    let output = run_with_limit(command.args(["get", name]), LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{output:?}");
    let value = value_of(&output.stdout, name).filter(|value| value != "(null)");
    (value, stderr)
}

pub fn put_secret(cluster: &Cluster, team: &str) -> String {
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

pub fn reference(team: &str) -> String {
    format!("vault:secret/data/team-{team}/config#password")
}
