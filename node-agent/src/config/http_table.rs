//! The keys of `[backend]` with `type = "http"`:
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `url` | — | base URL of the API, required; a key is read from `<url>/v1/env/<key>` |
//! | `auth_token` | — | bearer token; set this or `auth_token_file` |
//! | `auth_token_file` | — | file that contains the bearer token, read at every request |
//! | `timeout_ms` | `1500` | bound of one request, in milliseconds |
//! | `ca_cert` | system roots | PEM CA bundle to trust instead of the system roots |
//! | `cache_ttl` | `5m` | cache lifetime of a value; a `ttl` in the response can shorten it |
//! | `max_stale` | `1h` | how long past its TTL a value is served while the API is unavailable |
//! | `max_entries` | `10000` | maximum number of cached keys |
//!
//! Durations are a string such as `"30s"`, `"5m"`, `"1h"` or an integer number of seconds.

use std::sync::Arc;
use std::time::Duration;

use toml::Table;

use super::{ConfigError, TableReader};
use crate::http_backend::settings::check_token;
use crate::http_backend::{AuthToken, HttpSettings};
use crate::vault::SecretText;

impl TableReader<'_> {
    /// Reads the HTTP backend's keys of `[backend]`.
    pub(super) fn read_http(&mut self, table: &Table) -> Result<HttpSettings, ConfigError> {
        let Some(url) = table.get("url") else {
            return Err(self.invalid(
                "[backend] url",
                "missing: set the base URL of the HTTP secrets API, such as \
                 \"https://secrets.example.com\""
                    .to_string(),
            ));
        };
        let url = self.non_empty_string(url, "[backend] url")?;
        let auth_token = match (table.get("auth_token"), table.get("auth_token_file")) {
            (Some(token), None) => {
                let token = self.non_empty_string(token, "[backend] auth_token")?;
                if let Err(reason) = check_token(&token) {
                    return Err(self.invalid("[backend] auth_token", reason.to_string()));
                }
                AuthToken::Value(Arc::new(SecretText::new(token)))
            }
            (None, Some(path)) => {
                AuthToken::File(self.path_value(path, "[backend] auth_token_file")?)
            }
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "[backend] auth_token",
                    "both `auth_token` and `auth_token_file` are set; keep one of them".to_string(),
                ))
            }
            (None, None) => {
                return Err(self.invalid(
                    "[backend] auth_token",
                    "missing: set `auth_token` to the bearer token, or `auth_token_file` to a \
                     file that contains it"
                        .to_string(),
                ))
            }
        };
        let mut settings = HttpSettings::new(url, auth_token);

        for (key, value) in table {
            let name = format!("[backend] {key}");
            match key.as_str() {
                "type" | "url" | "auth_token" | "auth_token_file" => {}
                "timeout_ms" => {
                    settings.timeout = Duration::from_millis(self.positive_integer(value, &name)?);
                }
                "ca_cert" => settings.ca_cert = Some(self.path_value(value, &name)?),
                "cache_ttl" => settings.cache_ttl = self.duration(value, &name)?,
                "max_stale" => settings.max_stale = self.duration(value, &name)?,
                "max_entries" => settings.max_entries = self.positive_integer(value, &name)?,
                _ => self.warn_unknown(&format!("key `{key}` in [backend]")),
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};
    use crate::http_backend::settings::{
        DEFAULT_CACHE_TTL, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_STALE, DEFAULT_TIMEOUT,
    };
    use crate::vault::VaultEnvironment;

    use super::*;

    const CONFIG_PATH: &str = "/etc/envproxy/config.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(
            text,
            Path::new(CONFIG_PATH),
            &VaultEnvironment::default(),
            None,
        )
    }

    #[test]
    fn http_backend_reads_every_key() {
        let config = parse(
            "[backend]\ntype = \"http\"\nurl = \"https://secrets.internal:8443/api\"\n\
             auth_token_file = \"token\"\ntimeout_ms = 250\nca_cert = \"/etc/ca.pem\"\n\
             cache_ttl = \"30s\"\nmax_stale = 600\nmax_entries = 7\n",
        )
        .unwrap();
        assert_eq!(config.secrets_file, None);
        assert_eq!(config.vault, None);
        let http = config.http.unwrap();
        assert_eq!(http.url, "https://secrets.internal:8443/api");
        assert_eq!(
            http.auth_token,
            AuthToken::File("/etc/envproxy/token".into())
        );
        assert_eq!(http.timeout, Duration::from_millis(250));
        assert_eq!(http.ca_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(http.cache_ttl, Duration::from_secs(30));
        assert_eq!(http.max_stale, Duration::from_secs(600));
        assert_eq!(http.max_entries, 7);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn http_backend_defaults() {
        let config = parse(
            "[backend]\ntype = \"http\"\nurl = \"http://127.0.0.1:8080\"\n\
             auth_token = \"tok-abc\"\npath = \"secrets.json\"\n",
        )
        .unwrap();
        let http = config.http.unwrap();
        let AuthToken::Value(token) = &http.auth_token else {
            panic!("expected the token value, got {:?}", http.auth_token);
        };
        assert_eq!(token.expose_secret(), "tok-abc");
        assert_eq!(http.timeout, DEFAULT_TIMEOUT);
        assert_eq!(http.ca_cert, None);
        assert_eq!(http.cache_ttl, DEFAULT_CACHE_TTL);
        assert_eq!(http.max_stale, DEFAULT_MAX_STALE);
        assert_eq!(http.max_entries, DEFAULT_MAX_ENTRIES);
        assert_eq!(config.secrets_file, None);
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("key `path` in [backend]"));
    }

    #[test]
    fn http_backend_with_vault_table() {
        let config = parse(
            "[backend]\ntype = \"http\"\nurl = \"http://127.0.0.1:8080\"\nauth_token = \"t\"\n\
             [vault]\naddress = \"http://127.0.0.1:8200\"\n",
        )
        .unwrap();
        assert!(config.http.is_some());
        assert_eq!(config.vault.unwrap().address, "http://127.0.0.1:8200");
    }

    #[test]
    fn bad_http_values_name_the_key() {
        let base = "[backend]\ntype = \"http\"\n";
        let cases = [
            ("auth_token = \"t\"\n", "[backend] url", "missing"),
            (
                "url = \"\"\nauth_token = \"t\"\n",
                "[backend] url",
                "non-empty",
            ),
            (
                "url = \"http://h\"\n",
                "[backend] auth_token",
                "auth_token_file",
            ),
            (
                "url = \"http://h\"\nauth_token = \"t\"\nauth_token_file = \"/f\"\n",
                "[backend] auth_token",
                "keep one of them",
            ),
            (
                "url = \"http://h\"\nauth_token = 5\n",
                "[backend] auth_token",
                "an integer",
            ),
            (
                "url = \"http://h\"\nauth_token = \"tok\\nen\"\n",
                "[backend] auth_token",
                "line break",
            ),
            (
                "url = \"http://h\"\nauth_token = \"tok\\u0007en\"\n",
                "[backend] auth_token",
                "control character",
            ),
            (
                "url = \"http://h\"\nauth_token = \"t\"\ntimeout_ms = 0\n",
                "[backend] timeout_ms",
                "at least 1",
            ),
            (
                "url = \"http://h\"\nauth_token = \"t\"\ncache_ttl = \"soon\"\n",
                "[backend] cache_ttl",
                "duration",
            ),
            (
                "url = \"http://h\"\nauth_token = \"t\"\nmax_entries = -1\n",
                "[backend] max_entries",
                "at least 1",
            ),
        ];
        for (keys, key, detail) in cases {
            let text = format!("{base}{keys}");
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(key), "{keys:?}: {error}");
            assert!(error.contains(detail), "{keys:?}: {error}");
        }
    }

    #[test]
    fn token_never_in_errors_or_debug() {
        let config =
            parse("[backend]\ntype = \"http\"\nurl = \"http://h\"\nauth_token = \"tok-visible\"\n")
                .unwrap();
        assert!(!format!("{config:?}").contains("tok-visible"));
        let error = parse(
            "[backend]\ntype = \"http\"\nurl = \"http://h\"\nauth_token = \"tok-visible\"\n\
             timeout_ms = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(!error.contains("tok-visible"), "{error}");
    }

    #[test]
    fn http_backend_rejected_in_node_mode() {
        let error = Config::parse_with(
            "[agent]\nmode = \"node\"\n[backend]\ntype = \"http\"\nurl = \"http://h\"\n\
             auth_token = \"t\"\n",
            Path::new(CONFIG_PATH),
            &VaultEnvironment::default(),
            Some("worker-1".to_string()),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("[backend] type"), "{error}");
        assert!(error.contains("local mode only"), "{error}");
    }
}
