//! The Vault keys of `[vault]` (or of `[backend]` with `type = "vault"`):
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `address` | `VAULT_ADDR` | Vault URL, required one way or the other |
//! | `auth_method` | `token` | `token` (`VAULT_TOKEN`, then `~/.vault-token`) or `kubernetes` |
//! | `auth_mount` | `kubernetes` | mount of Kubernetes auth |
//! | `role` | — | Kubernetes auth role, required for `kubernetes` |
//! | `jwt_path` | the pod's service account token | JWT file for `kubernetes` |
//! | `namespace` | `VAULT_NAMESPACE` | Vault Enterprise namespace |
//! | `cache_ttl` | `5m` | cache lifetime of a read without a lease |
//! | `max_stale` | `1h` | how long past `cache_ttl` a value is served while Vault is down |
//! | `timeout` | `1500ms` | bound of one request to Vault |
//! | `max_entries` | `10000` | maximum number of cached reads |
//! | `revoke_on_shutdown` | `false` | revoke dynamic secrets' leases when the agent stops |
//! | `ca_cert` | `VAULT_CACERT` | PEM CA bundle to trust instead of the system roots |
//! | `client_cert`, `client_key` | — | PEM client certificate and key |
//! | `tls_server_name` | — | name to verify Vault's certificate against |
//!
//! Durations are a string such as `"30s"`, `"5m"`, `"1h"` or an integer number of seconds.

use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::{describe_type, ConfigError, TableReader};
use crate::vault::settings::{
    parse_duration, AuthSettings, DEFAULT_JWT_PATH, DEFAULT_KUBERNETES_MOUNT,
};
use crate::vault::VaultSettings;

impl TableReader<'_> {
    /// Reads the Vault keys of `table`, which is the `section` (`[vault]` or `[backend]`).
    pub(super) fn read_vault(
        &mut self,
        table: &Table,
        section: &'static str,
    ) -> Result<VaultSettings, ConfigError> {
        let key_name = |key: &str| format!("{section} {key}");
        let address = match table.get("address") {
            Some(value) => Some(self.string(value, &key_name("address"))?.to_string()),
            None => self.environment.address.clone(),
        };
        let Some(address) = address.filter(|address| !address.is_empty()) else {
            return Err(ConfigError::MissingVaultAddress {
                path: self.path.to_path_buf(),
                section,
            });
        };
        let mut settings = VaultSettings::with_defaults(address, self.environment);

        let mut method = "token";
        let mut mount = DEFAULT_KUBERNETES_MOUNT.to_string();
        let mut role = None;
        let mut jwt_path = PathBuf::from(DEFAULT_JWT_PATH);
        for (key, value) in table {
            let name = key_name(key);
            match key.as_str() {
                "type" | "address" => {}
                "auth_method" => {
                    method = match self.string(value, &name)? {
                        "token" => "token",
                        "kubernetes" => "kubernetes",
                        _ => {
                            return Err(self.invalid(
                                &name,
                                "expected \"token\" or \"kubernetes\"".to_string(),
                            ))
                        }
                    };
                }
                "auth_mount" => {
                    let text = self.string(value, &name)?.trim_matches('/');
                    if text.is_empty() {
                        return Err(self.invalid(&name, "expected a mount path".to_string()));
                    }
                    mount = text.to_string();
                }
                "role" => role = Some(self.non_empty_string(value, &name)?),
                "jwt_path" => jwt_path = self.path_value(value, &name)?,
                "namespace" => {
                    let namespace = self.string(value, &name)?.trim_matches('/');
                    settings.namespace = (!namespace.is_empty()).then(|| namespace.to_string());
                }
                "cache_ttl" => settings.cache_ttl = self.duration(value, &name)?,
                "max_stale" => settings.max_stale = self.duration(value, &name)?,
                "timeout" => {
                    settings.timeout = self.duration(value, &name)?;
                    if settings.timeout.is_zero() {
                        return Err(self.invalid(&name, "expected more than 0s".to_string()));
                    }
                }
                "max_entries" => settings.max_entries = self.positive_integer(value, &name)?,
                "revoke_on_shutdown" => settings.revoke_on_shutdown = self.boolean(value, &name)?,
                "ca_cert" => settings.tls.ca_cert = Some(self.path_value(value, &name)?),
                "client_cert" => settings.tls.client_cert = Some(self.path_value(value, &name)?),
                "client_key" => settings.tls.client_key = Some(self.path_value(value, &name)?),
                "tls_server_name" => {
                    settings.tls.tls_server_name = Some(self.non_empty_string(value, &name)?);
                }
                _ => self.warn_unknown(&format!("key `{key}` in {section}")),
            }
        }

        if method == "kubernetes" {
            let Some(role) = role else {
                return Err(ConfigError::MissingKubernetesRole {
                    path: self.path.to_path_buf(),
                    section,
                });
            };
            settings.auth = AuthSettings::Kubernetes {
                mount,
                role,
                jwt_path,
            };
        } else if role.is_some() {
            self.warnings.push(format!(
                "{}: {section} role is used only with auth_method = \"kubernetes\" and is ignored",
                self.path.display()
            ));
        }
        Ok(settings)
    }

    pub(super) fn duration(&self, value: &Value, key: &str) -> Result<Duration, ConfigError> {
        match value {
            Value::Integer(seconds) if *seconds >= 0 => Ok(Duration::from_secs(*seconds as u64)),
            Value::Integer(seconds) => Err(self.invalid(
                key,
                format!("expected a duration of at least 0, found {seconds}"),
            )),
            Value::String(text) => parse_duration(text).map_err(|reason| self.invalid(key, reason)),
            other => Err(self.invalid(
                key,
                format!(
                    "expected a duration such as \"30s\" or a number of seconds, found {}",
                    describe_type(other)
                ),
            )),
        }
    }

    fn boolean(&self, value: &Value, key: &str) -> Result<bool, ConfigError> {
        match value {
            Value::Boolean(flag) => Ok(*flag),
            other => Err(self.invalid(
                key,
                format!("expected true or false, found {}", describe_type(other)),
            )),
        }
    }

    pub(super) fn non_empty_string(&self, value: &Value, key: &str) -> Result<String, ConfigError> {
        let text = self.string(value, key)?;
        if text.is_empty() {
            return Err(self.invalid(key, "expected a non-empty string".to_string()));
        }
        Ok(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use crate::config::{Config, ConfigError};
    use crate::vault::settings::{TokenSource, DEFAULT_CACHE_TTL, DEFAULT_MAX_ENTRIES};
    use crate::vault::{AuthSettings, SecretText, VaultEnvironment};

    use super::*;

    const CONFIG_PATH: &str = "/etc/envproxy/config.toml";

    fn parse(text: &str, environment: &VaultEnvironment) -> Result<Config, ConfigError> {
        Config::parse_with_environment(text, Path::new(CONFIG_PATH), environment)
    }

    fn developer_environment() -> VaultEnvironment {
        VaultEnvironment {
            address: Some("http://127.0.0.1:8200".into()),
            token: Some(Arc::new(SecretText::new("hvs.from-env".into()))),
            namespace: Some("team-a".into()),
            ca_cert: Some("/etc/vault-ca.pem".into()),
            home: Some("/home/dev".into()),
        }
    }

    #[test]
    fn vault_backend_type_reads_backend_keys() {
        let config = parse(
            "[backend]\ntype = \"vault\"\naddress = \"https://vault.internal:8200\"\n\
             cache_ttl = \"30s\"\nmax_stale = 7200\ntimeout = \"2s\"\nnamespace = \"/ops/\"\n\
             ca_cert = \"certs/ca.pem\"\nclient_cert = \"/c.pem\"\nclient_key = \"/k.pem\"\n\
             tls_server_name = \"vault.example.com\"\nrevoke_on_shutdown = true\n\
             max_entries = 50\n",
            &VaultEnvironment::default(),
        )
        .unwrap();
        assert_eq!(config.secrets_file, None);
        let vault = config.vault.unwrap();
        assert_eq!(vault.address, "https://vault.internal:8200");
        assert_eq!(vault.cache_ttl, Duration::from_secs(30));
        assert_eq!(vault.max_stale, Duration::from_secs(7200));
        assert_eq!(vault.timeout, Duration::from_secs(2));
        assert_eq!(vault.namespace(), Some("ops"));
        assert_eq!(
            vault.tls.ca_cert.as_deref(),
            Some(Path::new("/etc/envproxy/certs/ca.pem"))
        );
        assert_eq!(vault.tls.client_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(vault.tls.client_key.as_deref(), Some(Path::new("/k.pem")));
        assert_eq!(
            vault.tls.tls_server_name.as_deref(),
            Some("vault.example.com")
        );
        assert!(vault.revoke_on_shutdown);
        assert_eq!(vault.max_entries, 50);
        assert_eq!(vault.auth, AuthSettings::Token(TokenSource::Missing));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn file_backend_with_vault_table_serves_both() {
        let config = parse(
            "[backend]\ntype = \"file\"\npath = \"secrets.json\"\n\
             [vault]\naddress = \"http://127.0.0.1:8200\"\n",
            &VaultEnvironment::default(),
        )
        .unwrap();
        assert_eq!(
            config.secrets_file.as_deref(),
            Some(Path::new("/etc/envproxy/secrets.json"))
        );
        let vault = config.vault.unwrap();
        assert_eq!(vault.address, "http://127.0.0.1:8200");
        assert_eq!(vault.cache_ttl, DEFAULT_CACHE_TTL);
        assert_eq!(vault.max_entries, DEFAULT_MAX_ENTRIES);
        assert!(!vault.revoke_on_shutdown);
    }

    #[test]
    fn environment_fills_unset_keys() {
        let config = parse("[vault]\n", &developer_environment()).unwrap();
        let vault = config.vault.unwrap();
        assert_eq!(vault.address, "http://127.0.0.1:8200");
        assert_eq!(vault.namespace(), Some("team-a"));
        assert_eq!(
            vault.tls.ca_cert.as_deref(),
            Some(Path::new("/etc/vault-ca.pem"))
        );
        let AuthSettings::Token(TokenSource::Value(token)) = &vault.auth else {
            panic!("expected the token from VAULT_TOKEN, got {:?}", vault.auth);
        };
        assert_eq!(token.expose_secret(), "hvs.from-env");
    }

    #[test]
    fn file_keys_replace_environment() {
        let config = parse(
            "[vault]\naddress = \"http://10.0.0.1:8200\"\nnamespace = \"\"\n\
             ca_cert = \"/other-ca.pem\"\n",
            &developer_environment(),
        )
        .unwrap();
        let vault = config.vault.unwrap();
        assert_eq!(vault.address, "http://10.0.0.1:8200");
        assert_eq!(vault.namespace(), None);
        assert_eq!(
            vault.tls.ca_cert.as_deref(),
            Some(Path::new("/other-ca.pem"))
        );
    }

    #[test]
    fn token_file_is_default_without_variable() {
        let environment = VaultEnvironment {
            token: None,
            ..developer_environment()
        };
        let vault = parse("[vault]\n", &environment).unwrap().vault.unwrap();
        assert_eq!(
            vault.auth,
            AuthSettings::Token(TokenSource::File("/home/dev/.vault-token".into()))
        );
    }

    #[test]
    fn kubernetes_auth_keys() {
        let config = parse(
            "[vault]\naddress = \"http://127.0.0.1:8200\"\nauth_method = \"kubernetes\"\n\
             role = \"app\"\nauth_mount = \"k8s-east/\"\njwt_path = \"/run/token\"\n",
            &VaultEnvironment::default(),
        )
        .unwrap();
        assert_eq!(
            config.vault.unwrap().auth,
            AuthSettings::Kubernetes {
                mount: "k8s-east".into(),
                role: "app".into(),
                jwt_path: "/run/token".into(),
            }
        );
        let defaults = parse(
            "[vault]\naddress = \"http://127.0.0.1:8200\"\nauth_method = \"kubernetes\"\n\
             role = \"app\"\n",
            &VaultEnvironment::default(),
        )
        .unwrap();
        assert_eq!(
            defaults.vault.unwrap().auth,
            AuthSettings::Kubernetes {
                mount: "kubernetes".into(),
                role: "app".into(),
                jwt_path: DEFAULT_JWT_PATH.into(),
            }
        );
    }

    #[test]
    fn kubernetes_needs_role() {
        let error = parse(
            "[vault]\naddress = \"http://127.0.0.1:8200\"\nauth_method = \"kubernetes\"\n",
            &VaultEnvironment::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("no `role`"), "{error}");
        assert!(error.contains("[vault]"), "{error}");
    }

    #[test]
    fn missing_address_names_variable() {
        let error = parse(
            "[backend]\ntype = \"vault\"\n",
            &VaultEnvironment::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("VAULT_ADDR"), "{error}");
        assert!(error.contains("[backend]"), "{error}");
        assert!(error.starts_with(CONFIG_PATH), "{error}");
    }

    #[test]
    fn vault_twice_is_rejected() {
        let error = parse(
            "[backend]\ntype = \"vault\"\naddress = \"http://a:1\"\n[vault]\naddress = \"http://b:1\"\n",
            &VaultEnvironment::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("keep one of them"), "{error}");
    }

    #[test]
    fn bad_vault_values_name_the_key() {
        let cases = [
            (
                "cache_ttl = \"5 minutes\"",
                "[vault] cache_ttl",
                "expected a duration",
            ),
            ("cache_ttl = -1", "[vault] cache_ttl", "found -1"),
            ("max_stale = true", "[vault] max_stale", "a boolean"),
            ("timeout = \"0s\"", "[vault] timeout", "more than 0s"),
            (
                "auth_method = \"ldap\"",
                "[vault] auth_method",
                "\"kubernetes\"",
            ),
            ("max_entries = 0", "[vault] max_entries", "at least 1"),
            (
                "revoke_on_shutdown = \"yes\"",
                "[vault] revoke_on_shutdown",
                "true or false",
            ),
            ("ca_cert = \"\"", "[vault] ca_cert", "empty string"),
            ("address = 8200", "[vault] address", "an integer"),
            ("role = \"\"", "[vault] role", "non-empty"),
        ];
        for (line, key, detail) in cases {
            let text = format!("[vault]\naddress = \"http://127.0.0.1:8200\"\n{line}\n");
            let text = if line.starts_with("address") {
                format!("[vault]\n{line}\n")
            } else {
                text
            };
            let error = parse(&text, &VaultEnvironment::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{line}: {error}");
            assert!(error.contains(detail), "{line}: {error}");
        }
    }

    #[test]
    fn unknown_vault_key_warns() {
        let config = parse(
            "[vault]\naddress = \"http://127.0.0.1:8200\"\ntoken = \"x\"\nrole = \"r\"\n",
            &VaultEnvironment::default(),
        )
        .unwrap();
        let all = config.warnings.join("\n");
        assert!(all.contains("key `token` in [vault]"), "{all}");
        assert!(all.contains("role is used only with"), "{all}");
    }

    #[test]
    fn environment_alone_enables_vault() {
        let mut config = parse(
            "[backend]\npath = \"s.json\"\n",
            &VaultEnvironment::default(),
        )
        .unwrap();
        config.enable_vault_from_environment(&VaultEnvironment::default());
        assert_eq!(config.vault, None);
        config.enable_vault_from_environment(&developer_environment());
        assert_eq!(
            config.vault.as_ref().map(|vault| vault.address.as_str()),
            Some("http://127.0.0.1:8200")
        );
    }
}
