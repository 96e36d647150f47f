//! The kube API that node-mode agents watch in the benchmarks: the in-repo Kubernetes API test
//! server, on a Tokio runtime of its own inside this process.

use std::time::Duration;

use anyhow::Context;
use envproxy_kube_test_server::{KubeTestServer, Rule, ServerOptions};
use k8s_openapi::api::core::v1::Pod;
use tokio::runtime::Runtime;

/// A Kubernetes API test server listening on 127.0.0.1 with plain HTTP. Dropping it stops the
/// server.
pub struct KubeServer {
    // Declared before the runtime, so the listener is stopped while its runtime still runs.
    server: KubeTestServer,
    runtime: Runtime,
}

impl KubeServer {
    pub fn start() -> anyhow::Result<KubeServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube-test-server")
            .enable_all()
            .build()
            .context("cannot start the Tokio runtime of the kube test server")?;
        let server = runtime
            .block_on(KubeTestServer::start(ServerOptions::default()))
            .context("cannot start the kube test server")?;
        tracing::info!(url = %server.url(), "kube test server listening");
        Ok(KubeServer { server, runtime })
    }

    /// Registers `token` for the agent's service account with the rights of the agent's RBAC
    /// role (pods get, list and watch), and returns a kubeconfig that uses it.
    pub fn agent_kubeconfig(&self, token: &str) -> String {
        self.server.register_token(
            token,
            "system:serviceaccount:envproxy:agent",
            vec![Rule::new(&["get", "list", "watch"], &["pods"])],
        );
        self.server.kubeconfig(token)
    }

    pub fn add_service_account(&self, namespace: &str, name: &str) {
        self.server.add_service_account(namespace, name);
    }

    /// Creates or replaces `pod`.
    pub fn apply_pod(&self, pod: Pod) -> anyhow::Result<()> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.server
            .apply_pod(pod)
            .map_err(|err| anyhow::anyhow!("cannot create the test pod {name}: {err}"))?;
        Ok(())
    }

    /// Returns the projected token that the kubelet would mount into pod
    /// `namespace/pod_name` for `audience`, valid for `lifetime`.
    pub fn projected_token(
        &self,
        namespace: &str,
        pod_name: &str,
        audience: &str,
        lifetime: Duration,
    ) -> anyhow::Result<String> {
        self.server
            .mint_projected_token(namespace, pod_name, audience, lifetime)
            .map_err(|err| {
                anyhow::anyhow!("cannot mint a token for pod {namespace}/{pod_name}: {err}")
            })
    }
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        self.runtime.block_on(self.server.stop_listening());
    }
}
