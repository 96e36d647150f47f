//! The keys of `[backend]` with `type = "kubernetes"`, the original EnvProxy's Kubernetes
//! Secret backend:
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `secret_name` | — | the Secret whose keys serve `envproxy:KEY` and bare names, required |
//! | `namespace` | the kubeconfig context's | namespace of `secret_name` |
//! | `kubeconfig` | `KUBECONFIG`, `~/.kube/config`, in-cluster | kubeconfig file to read with |
//! | `timeout_ms` | `1500` | bound of one read, in milliseconds |
//! | `cache_ttl` | `1m` | cache lifetime of a Secret read for a `k8s:` reference |
//! | `max_stale` | `1h` | how long past its TTL a Secret is served while the API server is unavailable |
//! | `max_entries` | `10000` | maximum number of cached Secrets |
//!
//! Durations are a string such as `"30s"`, `"5m"`, `"1h"` or an integer number of seconds.

use std::time::Duration;

use envproxy_proto::reference::{is_dns_label, is_dns_subdomain};
use toml::Table;

use super::{ConfigError, TableReader};
use crate::kube_secrets::KubeSettings;

impl TableReader<'_> {
    /// Reads the Kubernetes Secret backend's keys of `[backend]`.
    pub(super) fn read_kubernetes(&mut self, table: &Table) -> Result<KubeSettings, ConfigError> {
        let mut settings = KubeSettings::default();
        for (key, value) in table {
            let name = format!("[backend] {key}");
            match key.as_str() {
                "type" => {}
                "secret_name" => {
                    let secret = self.non_empty_string(value, &name)?;
                    if !is_dns_subdomain(&secret) {
                        return Err(self.invalid(
                            &name,
                            format!(
                                "{secret:?} is not a valid Secret name: expected at most 253 \
                                 lowercase letters, digits, '-' and '.', starting and ending \
                                 with a letter or digit"
                            ),
                        ));
                    }
                    settings.secret_name = Some(secret);
                }
                "namespace" => {
                    let namespace = self.non_empty_string(value, &name)?;
                    if !is_dns_label(&namespace) {
                        return Err(self.invalid(
                            &name,
                            format!(
                                "{namespace:?} is not a valid namespace: expected at most 63 \
                                 lowercase letters, digits and '-', starting and ending with a \
                                 letter or digit"
                            ),
                        ));
                    }
                    settings.namespace = Some(namespace);
                }
                "kubeconfig" => settings.kubeconfig = Some(self.path_value(value, &name)?),
                "timeout_ms" => {
                    settings.timeout = Duration::from_millis(self.positive_integer(value, &name)?);
                }
                "cache_ttl" => settings.cache_ttl = self.duration(value, &name)?,
                "max_stale" => settings.max_stale = self.duration(value, &name)?,
                "max_entries" => settings.max_entries = self.positive_integer(value, &name)?,
                _ => self.warn_unknown(&format!("key `{key}` in [backend]")),
            }
        }
        if settings.secret_name.is_none() {
            return Err(self.invalid(
                "[backend] secret_name",
                "missing: set the name of the Secret whose keys serve envproxy: references"
                    .to_string(),
            ));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};
    use crate::kube_secrets::settings::{DEFAULT_CACHE_TTL, DEFAULT_MAX_STALE, DEFAULT_TIMEOUT};
    use crate::vault::VaultEnvironment;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(
            text,
            Path::new("/etc/envproxy/config.toml"),
            &VaultEnvironment::default(),
            None,
        )
    }

    #[test]
    fn original_kubernetes_backend_loads() {
        let config = parse(
            "[backend]\ntype = \"kubernetes\"\nnamespace = \"shop\"\nsecret_name = \"app-env\"\n",
        )
        .unwrap();
        let kubernetes = config.kubernetes.unwrap();
        assert_eq!(kubernetes.namespace.as_deref(), Some("shop"));
        assert_eq!(kubernetes.secret_name.as_deref(), Some("app-env"));
        assert_eq!(kubernetes.kubeconfig, None);
        assert_eq!(kubernetes.timeout, DEFAULT_TIMEOUT);
        assert_eq!(kubernetes.cache_ttl, DEFAULT_CACHE_TTL);
        assert_eq!(kubernetes.max_stale, DEFAULT_MAX_STALE);
        assert_eq!(config.secrets_file, None);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn kubernetes_backend_reads_every_key() {
        let config = parse(
            "[backend]\ntype = \"kubernetes\"\nsecret_name = \"app-env\"\n\
             kubeconfig = \"kube.yaml\"\ntimeout_ms = 200\ncache_ttl = \"10s\"\n\
             max_stale = 60\nmax_entries = 5\n",
        )
        .unwrap();
        let kubernetes = config.kubernetes.unwrap();
        assert_eq!(kubernetes.namespace, None);
        assert_eq!(
            kubernetes.kubeconfig.as_deref(),
            Some(Path::new("/etc/envproxy/kube.yaml"))
        );
        assert_eq!(kubernetes.timeout, Duration::from_millis(200));
        assert_eq!(kubernetes.cache_ttl, Duration::from_secs(10));
        assert_eq!(kubernetes.max_stale, Duration::from_secs(60));
        assert_eq!(kubernetes.max_entries, 5);
    }

    #[test]
    fn bad_kubernetes_values_name_the_key() {
        let base = "[backend]\ntype = \"kubernetes\"\n";
        let cases = [
            ("namespace = \"shop\"\n", "[backend] secret_name", "missing"),
            (
                "secret_name = \"App_Env\"\n",
                "[backend] secret_name",
                "not a valid Secret name",
            ),
            (
                "secret_name = \"app\"\nnamespace = \"a.b\"\n",
                "[backend] namespace",
                "not a valid namespace",
            ),
            (
                "secret_name = \"app\"\ntimeout_ms = 0\n",
                "[backend] timeout_ms",
                "at least 1",
            ),
        ];
        for (keys, key, detail) in cases {
            let error = parse(&format!("{base}{keys}")).unwrap_err().to_string();
            assert!(error.contains(key), "{keys:?}: {error}");
            assert!(error.contains(detail), "{keys:?}: {error}");
        }
    }

    #[test]
    fn kubernetes_backend_rejected_in_node_mode() {
        let error = Config::parse_with(
            "[agent]\nmode = \"node\"\n[backend]\ntype = \"kubernetes\"\nsecret_name = \"a\"\n",
            Path::new("/etc/envproxy/config.toml"),
            &VaultEnvironment::default(),
            Some("worker-1".to_string()),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("[backend] type"), "{error}");
        assert!(error.contains("k8s:"), "{error}");
    }
}
