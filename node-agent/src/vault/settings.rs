//! Settings of the Vault backend, and the Vault CLI's environment variables as their defaults.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::secret::SecretText;

/// Cache lifetime of a secret read when `cache_ttl` is not set.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// How long past its cache lifetime a secret may be served while Vault is unavailable, when
/// `max_stale` is not set.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(3600);
/// Bound of one HTTP request to Vault when `timeout` is not set. It is shorter than the
/// library's default 2 s wait for the agent (`ENVPROXY_TIMEOUT_MS`), so a Vault that does not
/// respond reaches the program as a Vault timeout rather than as a silent agent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Maximum number of cached secret reads when `max_entries` is not set.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// Mount of Kubernetes auth when `auth_mount` is not set.
pub const DEFAULT_KUBERNETES_MOUNT: &str = "kubernetes";
/// The service account token that the kubelet mounts into every pod by default.
pub const DEFAULT_JWT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Environment variables of the Vault CLI that EnvProxy reads as defaults.
pub const VAULT_ADDR: &str = "VAULT_ADDR";
pub const VAULT_TOKEN: &str = "VAULT_TOKEN";
pub const VAULT_NAMESPACE: &str = "VAULT_NAMESPACE";
pub const VAULT_CACERT: &str = "VAULT_CACERT";
/// The file where `vault login` stores the token, relative to the home directory.
pub const TOKEN_HELPER_FILE: &str = ".vault-token";

/// Source of the Vault token when `auth_method` is `token`.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The value of `VAULT_TOKEN`, read when the settings were built.
    Value(Arc<SecretText>),
    /// A file that contains the token, read at each login (`~/.vault-token` by default).
    File(PathBuf),
    /// Neither `VAULT_TOKEN` nor a home directory was available.
    Missing,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Value(_) => f.write_str("Value([redacted])"),
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
            TokenSource::Missing => f.write_str("Missing"),
        }
    }
}

/// Auth method of the Vault login, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSettings {
    /// A static token, looked up at start and renewed while renewable.
    Token(TokenSource),
    /// Kubernetes auth: a service account JWT read from `jwt_path`, exchanged at
    /// `auth/<mount>/login` for a token of `role`.
    Kubernetes {
        mount: String,
        role: String,
        jwt_path: PathBuf,
    },
}

impl AuthSettings {
    /// Returns the `auth_method` name of the config file.
    pub fn method_name(&self) -> &'static str {
        match self {
            AuthSettings::Token(_) => "token",
            AuthSettings::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// TLS settings for an `https` Vault address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CAs to trust instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM file of a client certificate, for Vault's TLS certificate auth or a mutual-TLS proxy.
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub client_key: Option<PathBuf>,
    /// Name to send in SNI and to verify the server certificate against, in place of the
    /// address's host name.
    pub tls_server_name: Option<String>,
}

/// Settings of the Vault backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultSettings {
    /// Base URL such as `https://vault.example.com:8200`.
    pub address: String,
    /// Vault Enterprise namespace, sent as `X-Vault-Namespace`; `None` for the root namespace.
    pub namespace: Option<String>,
    pub auth: AuthSettings,
    /// Cache lifetime of a secret read without a lease.
    pub cache_ttl: Duration,
    /// How long past its cache lifetime a secret may be served while Vault is unavailable.
    pub max_stale: Duration,
    /// Bound of one HTTP request to Vault, connection included.
    pub timeout: Duration,
    /// Revoke the leases of dynamic secrets when the agent stops.
    pub revoke_on_shutdown: bool,
    /// Maximum number of cached secret reads.
    pub max_entries: u64,
    pub tls: TlsSettings,
}

/// The Vault CLI's environment variables, captured once so that tests can supply their own.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct VaultEnvironment {
    pub address: Option<String>,
    pub token: Option<Arc<SecretText>>,
    pub namespace: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl fmt::Debug for VaultEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultEnvironment")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("namespace", &self.namespace)
            .field("ca_cert", &self.ca_cert)
            .field("home", &self.home)
            .finish()
    }
}

impl VaultEnvironment {
    /// Reads `VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_NAMESPACE`, `VAULT_CACERT` and `HOME` from
    /// this process's environment. Empty values count as unset, as the Vault CLI treats them.
    pub fn from_process() -> VaultEnvironment {
        let read = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        VaultEnvironment {
            address: read(VAULT_ADDR),
            token: read(VAULT_TOKEN).map(|token| Arc::new(SecretText::new(token))),
            namespace: read(VAULT_NAMESPACE),
            ca_cert: read(VAULT_CACERT).map(PathBuf::from),
            home: std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(PathBuf::from),
        }
    }

    /// Returns the token source the Vault CLI would use: `VAULT_TOKEN`, else `~/.vault-token`.
    pub fn token_source(&self) -> TokenSource {
        if let Some(token) = &self.token {
            return TokenSource::Value(Arc::clone(token));
        }
        match &self.home {
            Some(home) => TokenSource::File(home.join(TOKEN_HELPER_FILE)),
            None => TokenSource::Missing,
        }
    }

    /// Builds settings from the environment alone, or `None` when `VAULT_ADDR` is not set.
    pub fn settings(&self) -> Option<VaultSettings> {
        let address = self.address.clone()?;
        Some(VaultSettings::with_defaults(address, self))
    }
}

impl VaultSettings {
    /// Returns token-auth settings for `address` with every other value at its default,
    /// taking the token, namespace and CA file from `environment`.
    pub fn with_defaults(address: String, environment: &VaultEnvironment) -> VaultSettings {
        VaultSettings {
            address,
            namespace: environment.namespace.clone(),
            auth: AuthSettings::Token(environment.token_source()),
            cache_ttl: DEFAULT_CACHE_TTL,
            max_stale: DEFAULT_MAX_STALE,
            timeout: DEFAULT_TIMEOUT,
            revoke_on_shutdown: false,
            max_entries: DEFAULT_MAX_ENTRIES,
            tls: TlsSettings {
                ca_cert: environment.ca_cert.clone(),
                ..TlsSettings::default()
            },
        }
    }

    /// Returns the namespace without surrounding slashes, or `None` for the root namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace
            .as_deref()
            .map(|namespace| namespace.trim_matches('/'))
            .filter(|namespace| !namespace.is_empty())
    }
}

/// Parses a duration as the config file writes it: `"30s"`, `"5m"`, `"1h"`, `"1h30m"`, `"0"`
/// or a bare number of seconds such as `"90"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(
            "expected a duration such as \"30s\", \"5m\" or \"1h\", found an empty string"
                .to_string(),
        );
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let invalid = || {
        format!(
            "expected a duration such as \"30s\", \"5m\" or \"1h\" (units ms, s, m, h, d), \
             found {text:?}"
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        let part = unit.checked_mul(u32::try_from(number).map_err(|_| invalid())?);
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(invalid)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_rejected() {
        for text in ["", "5x", "m", "-5s", "1.5h", "5 m"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("expected a duration"), "{text:?}: {error}");
        }
    }

    #[test]
    fn token_source_prefers_environment() {
        let environment = VaultEnvironment {
            token: Some(Arc::new(SecretText::new("s.abc".to_string()))),
            home: Some("/home/u".into()),
            ..VaultEnvironment::default()
        };
        assert!(matches!(environment.token_source(), TokenSource::Value(_)));
        let without_token = VaultEnvironment {
            token: None,
            ..environment
        };
        assert_eq!(
            without_token.token_source(),
            TokenSource::File("/home/u/.vault-token".into())
        );
        assert_eq!(
            VaultEnvironment::default().token_source(),
            TokenSource::Missing
        );
    }

    #[test]
    fn debug_hides_token() {
        let environment = VaultEnvironment {
            token: Some(Arc::new(SecretText::new("s.topsecret".to_string()))),
            ..VaultEnvironment::default()
        };
        let printed = format!("{environment:?} {:?}", environment.token_source());
        assert!(!printed.contains("topsecret"), "{printed}");
    }

    #[test]
    fn settings_need_address() {
        assert_eq!(VaultEnvironment::default().settings(), None);
        let environment = VaultEnvironment {
            address: Some("http://127.0.0.1:8200".into()),
            namespace: Some("team-a".into()),
            ca_cert: Some("/etc/ca.pem".into()),
            ..VaultEnvironment::default()
        };
        let settings = environment.settings().unwrap();
        assert_eq!(settings.address, "http://127.0.0.1:8200");
        assert_eq!(settings.namespace(), Some("team-a"));
        assert_eq!(
            settings.tls.ca_cert.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        assert_eq!(settings.cache_ttl, DEFAULT_CACHE_TTL);
        assert_eq!(settings.max_stale, DEFAULT_MAX_STALE);
        assert_eq!(settings.max_entries, DEFAULT_MAX_ENTRIES);
        assert_eq!(settings.auth, AuthSettings::Token(TokenSource::Missing));
    }
}
