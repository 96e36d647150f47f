//! The Vault that benchmarks 7 and 8 and the node-mode benchmarks read through the agent. It is
//! the in-repo Vault test server, on a Tokio runtime of its own inside this process, so the
//! benchmark can count the requests that reach it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use envproxy_vault_test_server::{
    Capability, KubernetesRole, Policy, ServerOptions, VaultTestServer,
};
use tokio::runtime::Runtime;

/// The KV v2 mount of the test server's default options.
pub const KV2_MOUNT: &str = "secret";
/// The Kubernetes auth mount that node-mode agents log in at, the agent's default.
pub const KUBERNETES_AUTH_MOUNT: &str = "kubernetes";

/// A Vault test server listening on 127.0.0.1 with plain HTTP. Dropping it stops the server.
pub struct VaultServer {
    // Declared before the runtime, so the listener is stopped while its runtime still runs.
    server: VaultTestServer,
    runtime: Runtime,
}

impl VaultServer {
    pub fn start() -> anyhow::Result<VaultServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vault-test-server")
            .enable_all()
            .build()
            .context("cannot start the Tokio runtime of the Vault test server")?;
        let server = runtime
            .block_on(VaultTestServer::start(ServerOptions::default()))
            .context("cannot start the Vault test server")?;
        server
            .root()
            .enable_kubernetes_auth(KUBERNETES_AUTH_MOUNT, None);
        tracing::info!(url = %server.url(), "Vault test server listening");
        Ok(VaultServer { server, runtime })
    }

    /// Returns the server's address, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Returns the token the agent reads with. It may read everything and never expires, so
    /// no token renewal happens during a measurement.
    pub fn token(&self) -> &str {
        self.server.root_token()
    }

    /// Writes `{key: value}` as a new version of the KV v2 secret at `path`.
    pub fn put(&self, path: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let data = serde_json::json!({ key: value });
        self.server
            .root()
            .kv2_put(KV2_MOUNT, path, data)
            .with_context(|| format!("cannot write the test secret {path}"))?;
        Ok(())
    }

    /// Returns the number of `GET` requests that reached the KV v2 secret at `path`.
    pub fn reads(&self, path: &str) -> u64 {
        self.server
            .request_count("GET", &format!("{KV2_MOUNT}/data/{path}"))
    }

    /// Returns the number of Kubernetes auth logins, by any role, since the server started.
    pub fn kubernetes_logins(&self) -> u64 {
        self.server
            .request_count("POST", &format!("auth/{KUBERNETES_AUTH_MOUNT}/login"))
    }

    /// Adds the Kubernetes auth role `role` for service account `service_account` of
    /// `namespace`, whose token may read the KV v2 secrets under `prefix`.
    pub fn add_kubernetes_role(
        &self,
        role: &str,
        namespace: &str,
        service_account: &str,
        prefix: &str,
    ) -> anyhow::Result<()> {
        let policy = format!("{role}-read");
        let root = self.server.root();
        root.set_policy(
            &policy,
            Policy::new().allow(&format!("{KV2_MOUNT}/data/{prefix}*"), &[Capability::Read]),
        );
        root.add_kubernetes_role(
            KUBERNETES_AUTH_MOUNT,
            role,
            KubernetesRole::new(&[service_account], &[namespace], &[&policy]),
        )
        .with_context(|| format!("cannot add the Kubernetes auth role {role}"))?;
        Ok(())
    }

    /// Delays every read of KV v2 secrets whose path starts with `prefix`.
    pub fn delay_reads(&self, prefix: &str, delay: Duration) {
        self.server
            .inject_latency(&format!("{KV2_MOUNT}/data/{prefix}"), delay);
    }

    /// Writes an agent config to `path` that serves `envproxy:` references from
    /// `secrets_file` and `vault:` references from this server, with entries cached for
    /// `cache_ttl`.
    pub fn write_agent_config(
        &self,
        path: &Path,
        secrets_file: &Path,
        cache_ttl: &str,
    ) -> anyhow::Result<PathBuf> {
        let quote = |text: &str| serde_json::to_string(text).expect("a string serializes");
        let secrets_file = secrets_file
            .to_str()
            .context("the secrets file path is not UTF-8")?;
        let text = format!(
            "[backend]\ntype = \"file\"\npath = {}\n\n[vault]\naddress = {}\n\
             auth_method = \"token\"\ncache_ttl = {}\n",
            quote(secrets_file),
            quote(&self.server.url()),
            quote(cache_ttl),
        );
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path.to_path_buf())
    }
}

impl Drop for VaultServer {
    fn drop(&mut self) {
        self.runtime.block_on(self.server.stop_listening());
    }
}
