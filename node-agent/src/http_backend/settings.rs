//! Settings of the HTTP secrets backend, read from `[backend]` with `type = "http"`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::vault::SecretText;

/// Cache lifetime of a value when `cache_ttl` is not set. A `ttl` in a response can shorten it.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// How long past its cache lifetime a value may be served while the API is unavailable, when
/// `max_stale` is not set.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(3600);
/// Bound of one request when `timeout_ms` is not set. It is shorter than the library's default
/// 2 s wait for the agent (`ENVPROXY_TIMEOUT_MS`), so a program gets the API's timeout error
/// rather than a silent agent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Maximum number of cached keys when `max_entries` is not set.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// Source of the bearer token.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthToken {
    /// `auth_token`: the token itself, from the config file.
    Value(Arc<SecretText>),
    /// `auth_token_file`: a file read at every request to the API, so a token rotated by
    /// rewriting the file is used from the next cache miss on, without a restart.
    File(PathBuf),
}

/// Checks that `token` can be sent in an `Authorization: Bearer` header, and returns why not
/// otherwise. The reason never contains the token.
pub fn check_token(token: &str) -> Result<(), &'static str> {
    if token.contains(['\n', '\r']) {
        return Err("it contains a line break, but a token is one line");
    }
    if token.chars().any(char::is_control) {
        return Err("it contains a control character, which an HTTP header cannot carry");
    }
    if !token.is_ascii() {
        return Err("it contains a non-ASCII character, which an HTTP header cannot carry");
    }
    Ok(())
}

impl AuthToken {
    /// Returns a description for the status report that never contains the token.
    pub fn describe(&self) -> String {
        match self {
            AuthToken::Value(_) => "auth_token".to_string(),
            AuthToken::File(path) => format!("auth_token_file {}", path.display()),
        }
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthToken::Value(_) => f.write_str("Value([redacted])"),
            AuthToken::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// Settings of the HTTP secrets backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Base URL; a key is read from `<url>/v1/env/<key>`.
    pub url: String,
    pub auth_token: AuthToken,
    /// Bound of one request, connection and body included.
    pub timeout: Duration,
    /// PEM file of the CAs to trust instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Cache lifetime of a value; a response's `ttl` shortens it for that value.
    pub cache_ttl: Duration,
    /// How long past its cache lifetime a value may be served while the API is unavailable.
    pub max_stale: Duration,
    /// Maximum number of cached keys.
    pub max_entries: u64,
}

impl HttpSettings {
    /// Returns settings for `url` and `auth_token` with every other key at its default.
    pub fn new(url: String, auth_token: AuthToken) -> HttpSettings {
        HttpSettings {
            url,
            auth_token,
            timeout: DEFAULT_TIMEOUT,
            ca_cert: None,
            cache_ttl: DEFAULT_CACHE_TTL,
            max_stale: DEFAULT_MAX_STALE,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check_rejects_header_breakers() {
        assert_eq!(check_token("tok-abc.DEF_123"), Ok(()));
        let cases = [
            ("first\nsecond", "line break"),
            ("first\r\nsecond", "line break"),
            ("tok\u{7}en", "control character"),
            ("tok\ten", "control character"),
            ("tök", "non-ASCII"),
        ];
        for (token, expected) in cases {
            let reason = check_token(token).unwrap_err();
            assert!(reason.contains(expected), "{token:?}: {reason}");
        }
    }

    #[test]
    fn debug_hides_token() {
        let settings = HttpSettings::new(
            "http://127.0.0.1:1".into(),
            AuthToken::Value(Arc::new(SecretText::new("tok-secret".into()))),
        );
        let text = format!("{settings:?}");
        assert!(!text.contains("tok-secret"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        assert_eq!(settings.auth_token.describe(), "auth_token");
    }
}
