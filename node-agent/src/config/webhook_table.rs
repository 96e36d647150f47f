//! Reading [`WebhookSettings`] from a config file: the `[webhook]` table and the keys the webhook
//! shares with the agent (`[agent] socket`, `[agent] log_level`, and `[node] token_path`,
//! `token_audience` and `vault_addr_allowlist`). The keys are listed in
//! [`crate::webhook::settings`].

use std::path::Path;
use std::time::Duration;

use toml::Table;

use super::{parse_table, read_config_file, ConfigError, TableReader};
use crate::node::settings::NodeSettings;
use crate::vault::VaultEnvironment;
use crate::webhook::settings::{WebhookSettings, MAX_TOKEN_EXPIRATION, MIN_TOKEN_EXPIRATION};

impl WebhookSettings {
    /// Reads and validates the webhook's keys of the config file at `path`.
    pub fn load(path: &Path) -> Result<WebhookSettings, ConfigError> {
        let (path, text) = read_config_file(path)?;
        let mut settings = WebhookSettings::parse(&text, &path)?;
        settings.source = Some(path);
        Ok(settings)
    }

    /// Validates the webhook's keys of config text read from `path`. Relative paths are
    /// resolved against the directory of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<WebhookSettings, ConfigError> {
        let table = parse_table(text, path)?;
        let environment = VaultEnvironment::default();
        let mut reader = TableReader {
            path,
            base: path.parent().unwrap_or(Path::new("/")),
            environment: &environment,
            warnings: Vec::new(),
        };
        let mut settings = WebhookSettings::default();

        if let Some(agent) = reader.section(&table, "agent", "[agent]")? {
            if let Some(socket) = agent.get("socket") {
                settings.socket = reader.path_value(socket, "[agent] socket")?;
            }
            if let Some(level) = agent.get("log_level") {
                let level = reader.string(level, "[agent] log_level")?;
                if let Err(reason) = crate::logging::parse_filter(level) {
                    return Err(reader.invalid("[agent] log_level", reason));
                }
                settings.log_level = level.to_string();
            }
        }
        if let Some(node) = reader.section(&table, "node", "[node]")? {
            // The agent's own reader validates the shared keys exactly as the agent does. Its
            // warnings about keys that only the agent reads are dropped: the agent logs them.
            let mut node_settings = NodeSettings::from_environment();
            let mut node_reader = TableReader {
                path,
                base: reader.base,
                environment: &environment,
                warnings: Vec::new(),
            };
            node_reader.read_node(node, &mut node_settings)?;
            settings.token_path = node_settings.token_path;
            settings.token_audience = node_settings.token_audience;
            settings.vault_addr_allowlist = node_settings.vault_addr_allowlist;
        }
        if let Some(webhook) = reader.section(&table, "webhook", "[webhook]")? {
            reader.read_webhook(webhook, &mut settings)?;
        }
        reader.check_mount_points(&settings)?;

        settings.warnings = reader.warnings;
        Ok(settings)
    }
}

impl TableReader<'_> {
    fn read_webhook(
        &mut self,
        webhook: &Table,
        settings: &mut WebhookSettings,
    ) -> Result<(), ConfigError> {
        for (key, value) in webhook {
            let name = format!("[webhook] {key}");
            match key.as_str() {
                "listen" => {
                    let text = self.string(value, &name)?;
                    settings.listen = text.parse().map_err(|_| {
                        self.invalid(
                            &name,
                            format!(
                                "expected an IP address and port such as \"0.0.0.0:8443\" or \
                                 \"[::]:8443\", found {text:?}"
                            ),
                        )
                    })?;
                }
                "tls_cert" => settings.tls_cert = self.path_value(value, &name)?,
                "tls_key" => settings.tls_key = self.path_value(value, &name)?,
                "library_dir" => {
                    let text = self.string(value, &name)?;
                    if !text.starts_with('/') || text == "/" {
                        return Err(self.invalid(
                            &name,
                            format!(
                                "expected an absolute directory path on the node other than \
                                 \"/\", found {text:?}"
                            ),
                        ));
                    }
                    settings.library_dir = text.trim_end_matches('/').into();
                }
                "token_expiration_secs" => {
                    let secs = self.positive_integer(value, &name)?;
                    let expiration = Duration::from_secs(secs);
                    if !(MIN_TOKEN_EXPIRATION..=MAX_TOKEN_EXPIRATION).contains(&expiration) {
                        return Err(self.invalid(
                            &name,
                            format!(
                                "expected {} to {} seconds, found {secs}",
                                MIN_TOKEN_EXPIRATION.as_secs(),
                                MAX_TOKEN_EXPIRATION.as_secs()
                            ),
                        ));
                    }
                    settings.token_expiration = expiration;
                }
                "max_connections" => {
                    let count = self.positive_integer(value, &name)?;
                    settings.max_connections = usize::try_from(count).map_err(|_| {
                        self.invalid(
                            &name,
                            format!("expected at most {}, found {count}", usize::MAX),
                        )
                    })?;
                }
                _ => self.warn_unknown(&format!("key `{key}` in [webhook]")),
            }
        }
        Ok(())
    }

    /// Checks that the socket directory, the library directory and the token directory can be
    /// three mount points of one container.
    fn check_mount_points(&self, settings: &WebhookSettings) -> Result<(), ConfigError> {
        if settings.token_dir() == Path::new("/") {
            return Err(self.invalid(
                "[node] token_path",
                format!(
                    "the token's directory is mounted as a volume, so it cannot be \"/\"; found \
                     {:?}",
                    settings.token_path
                ),
            ));
        }
        if settings.socket_dir() == Path::new("/") {
            return Err(self.invalid(
                "[agent] socket",
                format!(
                    "the socket's directory is mounted into containers, so it cannot be \"/\"; \
                     found {:?}",
                    settings.socket
                ),
            ));
        }
        let mounts = [
            ("[agent] socket", settings.socket_dir()),
            ("[webhook] library_dir", settings.library_dir.as_path()),
            ("[node] token_path", settings.token_dir()),
        ];
        for (i, (first_key, first)) in mounts.iter().enumerate() {
            for (second_key, second) in &mounts[i + 1..] {
                if first == second {
                    return Err(self.invalid(
                        second_key,
                        format!(
                            "its directory {} is also the directory of {first_key}; each is \
                             mounted separately, so they must differ",
                            second.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn parse(text: &str) -> Result<WebhookSettings, ConfigError> {
        WebhookSettings::parse(text, Path::new("/etc/envproxy/config.toml"))
    }

    #[test]
    fn defaults_without_tables() {
        let settings = parse("").unwrap();
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(settings.socket, Path::new("/run/envproxy/agent.sock"));
        assert_eq!(settings.socket_dir(), Path::new("/run/envproxy"));
        assert_eq!(settings.library_dir, Path::new("/opt/envproxy"));
        assert_eq!(
            settings.library_path(),
            Path::new("/opt/envproxy/lib/libenvproxy.so")
        );
        assert_eq!(
            settings.token_dir(),
            Path::new("/var/run/secrets/envproxy.dev/serviceaccount")
        );
        assert_eq!(settings.token_file_name(), "token");
        assert_eq!(settings.token_audience, "vault");
        assert_eq!(settings.token_expiration, Duration::from_secs(3600));
        assert!(settings.warnings.is_empty());
    }

    #[test]
    fn shared_file_is_read() {
        let settings = parse(
            "[agent]\nmode = \"node\"\nsocket = \"/run/ep/agent.sock\"\nlog_level = \"debug\"\n\
             [node]\nname = \"worker-1\"\ntoken_path = \"/run/ep-token/jwt\"\n\
             token_audience = \"vault.example\"\n\
             vault_addr_allowlist = [\"https://vault.example:8200/\"]\n\
             [vault]\naddress = \"https://vault.example:8200\"\n\
             [webhook]\nlisten = \"127.0.0.1:9443\"\ntls_cert = \"tls/cert.pem\"\n\
             tls_key = \"/keys/key.pem\"\nlibrary_dir = \"/var/lib/envproxy/\"\n\
             token_expiration_secs = 600\nmax_connections = 64\ncolour = \"blue\"\n",
        )
        .unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:9443");
        assert_eq!(
            settings.tls_cert,
            PathBuf::from("/etc/envproxy/tls/cert.pem")
        );
        assert_eq!(settings.tls_key, PathBuf::from("/keys/key.pem"));
        assert_eq!(settings.socket, Path::new("/run/ep/agent.sock"));
        assert_eq!(settings.library_dir, Path::new("/var/lib/envproxy"));
        assert_eq!(settings.token_path, Path::new("/run/ep-token/jwt"));
        assert_eq!(settings.token_file_name(), "jwt");
        assert_eq!(settings.token_audience, "vault.example");
        assert_eq!(
            settings.vault_addr_allowlist,
            ["https://vault.example:8200"]
        );
        assert_eq!(settings.token_expiration, Duration::from_secs(600));
        assert_eq!(settings.max_connections, 64);
        assert_eq!(settings.log_level, "debug");
        assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
        assert!(settings.warnings[0].contains("`colour` in [webhook]"));
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases = [
            ("[webhook]\nlisten = \"8443\"", "[webhook] listen"),
            (
                "[webhook]\nlibrary_dir = \"opt/envproxy\"",
                "[webhook] library_dir",
            ),
            ("[webhook]\nlibrary_dir = \"/\"", "[webhook] library_dir"),
            (
                "[webhook]\ntoken_expiration_secs = 599",
                "[webhook] token_expiration_secs",
            ),
            (
                "[webhook]\ntoken_expiration_secs = 86401",
                "[webhook] token_expiration_secs",
            ),
            ("[webhook]\ntls_cert = \"\"", "[webhook] tls_cert"),
            (
                "[webhook]\nmax_connections = 0",
                "[webhook] max_connections",
            ),
            ("[node]\ntoken_path = \"/token\"", "[node] token_path"),
            ("[node]\ntoken_path = \"token\"", "[node] token_path"),
            ("[agent]\nsocket = \"/agent.sock\"", "[agent] socket"),
            (
                "[webhook]\nlibrary_dir = \"/run/envproxy\"",
                "[webhook] library_dir",
            ),
            ("webhook = 1", "[webhook]"),
        ];
        for (text, key) in cases {
            let error = parse(text).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(key), "{text}: {message}");
        }
    }
}
