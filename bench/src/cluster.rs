//! The node of the node-mode benchmarks: pods in the kube test server, their cgroups and
//! projected tokens, and the config of an agent in node mode that serves them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::cgroups::{self, Cgroups};
use crate::kube::KubeServer;

/// `spec.nodeName` of every test pod, and the node the agent serves.
pub const NODE_NAME: &str = "bench-node";
/// Audience of the projected tokens, the agent's default `token_audience`.
const TOKEN_AUDIENCE: &str = "vault";
/// Lifetime of the projected tokens: longer than any run, so no token is refreshed during one.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The one container of every test pod.
const CONTAINER: &str = "app";

/// Settings the pods of one workload share: namespace, service account, annotations and the env of
/// their container.
pub struct Workload<'a> {
    /// Pod names are `<name>-<index>`.
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub annotations: serde_json::Value,
    /// `(name, value)` of the container's env, where the pod declares its references.
    pub env: &'a [(&'a str, &'a str)],
}

/// A pod that exists in the kube test server, with its cgroup and its token directory.
pub struct TestPod {
    pub name: String,
    cgroup: PathBuf,
    /// Contains `token`, mounted over the token mount point in the pod's processes.
    token_dir: PathBuf,
}

/// The kube test server, the pods' cgroups and their token files. Dropping it removes the
/// cgroups, which must be empty by then, and stops the kube test server.
pub struct NodeCluster {
    kube: KubeServer,
    cgroups: Cgroups,
    dir: PathBuf,
    /// Token mount point of every pod's processes: an empty directory outside any pod.
    token_mount: PathBuf,
    kubeconfig: PathBuf,
}

impl NodeCluster {
    /// Starts the kube test server and prepares `dir` for the pods' token directories. Needs
    /// root, for the cgroups.
    pub fn start(dir: &Path) -> anyhow::Result<NodeCluster> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let token_mount = dir.join("token-mount");
        fs::create_dir(&token_mount)
            .with_context(|| format!("cannot create {}", token_mount.display()))?;
        let kube = KubeServer::start()?;
        let kubeconfig = dir.join("kubeconfig");
        let agent_token = format!("agent-{}", random_hex(32)?);
        fs::write(&kubeconfig, kube.agent_kubeconfig(&agent_token))
            .with_context(|| format!("cannot write {}", kubeconfig.display()))?;
        let cgroups = Cgroups::create(&random_hex(8)?)?;
        Ok(NodeCluster {
            kube,
            cgroups,
            dir: dir.to_path_buf(),
            token_mount,
            kubeconfig,
        })
    }

    /// Adds pod `<workload.name>-<index>` on this node, running, with its container cgroup
    /// and the token the kubelet would project into it.
    pub fn add_pod(&mut self, workload: &Workload<'_>, index: usize) -> anyhow::Result<TestPod> {
        let name = format!("{}-{index}", workload.name);
        let uid = random_uid()?;
        let container_id = random_hex(64)?;
        let env: Vec<serde_json::Value> = workload
            .env
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": workload.namespace,
                "uid": uid,
                "labels": {"app": workload.name},
                "annotations": workload.annotations,
            },
            "spec": {
                "nodeName": NODE_NAME,
                "serviceAccountName": workload.service_account,
                "containers": [{"name": CONTAINER, "image": "app:1", "env": env}],
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [{
                    "name": CONTAINER,
                    "image": "app:1",
                    "imageID": "",
                    "ready": true,
                    "restartCount": 0,
                    "containerID": format!("containerd://{container_id}"),
                }],
            },
        }))
        .context("bug: the test pod is not a valid Pod")?;
        self.kube
            .add_service_account(workload.namespace, workload.service_account);
        self.kube.apply_pod(pod)?;

        let token_dir = self.dir.join("pods").join(&name);
        fs::create_dir_all(&token_dir)
            .with_context(|| format!("cannot create {}", token_dir.display()))?;
        let token =
            self.kube
                .projected_token(workload.namespace, &name, TOKEN_AUDIENCE, TOKEN_LIFETIME)?;
        let token_file = token_dir.join("token");
        fs::write(&token_file, token)
            .with_context(|| format!("cannot write {}", token_file.display()))?;
        let cgroup = self.cgroups.container(&uid, &container_id)?;
        Ok(TestPod {
            name,
            cgroup,
            token_dir,
        })
    }

    /// Makes `command` start in `pod`'s container: in its cgroup, with its token at the token
    /// mount point.
    pub fn enter(&self, pod: &TestPod, command: &mut Command) -> anyhow::Result<()> {
        cgroups::enter_pod(command, &pod.cgroup, &pod.token_dir, &self.token_mount)
    }

    /// Writes the config of an agent in node mode that listens on `socket`, serves the pods of
    /// this node and reads Vault at `vault_url`, and returns its path.
    pub fn write_agent_config(
        &self,
        path: &Path,
        socket: &Path,
        vault_url: &str,
    ) -> anyhow::Result<PathBuf> {
        let quote = |text: &str| serde_json::to_string(text).expect("a string serializes");
        let path_text = |path: &Path| {
            path.to_str()
                .map(quote)
                .with_context(|| format!("the path {} is not UTF-8", path.display()))
        };
        let text = format!(
            "[agent]\nmode = \"node\"\nsocket = {socket}\nlog_level = \"info\"\n\n\
             [node]\nname = {node}\nkubeconfig = {kubeconfig}\ntoken_path = {token_path}\n\
             token_audience = {audience}\npod_wait_ms = 1000\n\n\
             [vault]\naddress = {vault}\n",
            socket = path_text(socket)?,
            node = quote(NODE_NAME),
            kubeconfig = path_text(&self.kubeconfig)?,
            token_path = path_text(&self.token_mount.join("token"))?,
            audience = quote(TOKEN_AUDIENCE),
            vault = quote(vault_url),
        );
        fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path.to_path_buf())
    }
}

/// Returns a random UUID from the kernel, the form of a pod UID.
fn random_uid() -> anyhow::Result<String> {
    let text = fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("cannot read /proc/sys/kernel/random/uuid")?;
    Ok(text.trim().to_string())
}

/// Returns `len` random lowercase hex digits, the form of a container ID.
fn random_hex(len: usize) -> anyhow::Result<String> {
    let mut hex = String::with_capacity(len + 32);
    while hex.len() < len {
        hex.extend(random_uid()?.chars().filter(char::is_ascii_hexdigit));
    }
    hex.truncate(len);
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_has_requested_length() {
        let hex = random_hex(64).unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(hex, random_hex(64).unwrap());
    }
}
