//! Errors of the HTTP secrets backend, worded for the line a program prints to stderr and for
//! `envproxy get`. Each names the request URL (which contains the key) and, where there is one,
//! the HTTP status. No message contains a value, a response body or the token.

use std::path::PathBuf;
use std::time::Duration;

/// A request to the HTTP secrets API that failed, or settings it cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error(
        "the HTTP secrets API rejected the token (HTTP 401 for GET {url}): check `auth_token` \
         or `auth_token_file` in [backend]"
    )]
    Unauthorized { url: String },
    #[error(
        "permission denied reading `{key}` from the HTTP secrets API (HTTP 403 for GET {url}): \
         the token may not read this key"
    )]
    PermissionDenied { key: String, url: String },
    #[error("the HTTP secrets API failed (HTTP {status} for GET {url})")]
    Server { url: String, status: u16 },
    #[error("the HTTP secrets API rejected the request (HTTP {status} for GET {url}){hint}")]
    Rejected {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error(
        "the HTTP secrets API did not respond within {}s (GET {url})",
        timeout.as_secs_f32()
    )]
    Timeout { url: String, timeout: Duration },
    #[error("connection to the HTTP secrets API refused (GET {url}): is it running there?")]
    ConnectionRefused { url: String },
    #[error("cannot reach the HTTP secrets API (GET {url}): {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "TLS connection to the HTTP secrets API failed (GET {url}): {reason}; set `ca_cert` in \
         [backend] to the CA that signed the server's certificate"
    )]
    Tls { url: String, reason: String },
    #[error("the HTTP secrets API returned a response EnvProxy cannot use (GET {url}): {reason}")]
    InvalidResponse { url: String, reason: String },
    #[error("the key `{key}` cannot be requested: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("cannot use `auth_token_file` {} in [backend]: {reason}", path.display())]
    TokenFile { path: PathBuf, reason: String },
    #[error("invalid HTTP secrets API url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot use the CA certificate file {}: {reason}", path.display())]
    CaCert { path: PathBuf, reason: String },
}

impl HttpError {
    /// Returns the error's kind as a snake_case label for metrics, such as `timeout`.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Unauthorized { .. } => "unauthorized",
            HttpError::PermissionDenied { .. } => "permission_denied",
            HttpError::Server { .. } => "server_error",
            HttpError::Rejected { .. } => "rejected",
            HttpError::Timeout { .. } => "timeout",
            HttpError::ConnectionRefused { .. } => "connection_refused",
            HttpError::Unreachable { .. } => "unreachable",
            HttpError::Tls { .. } => "tls",
            HttpError::InvalidResponse { .. } => "invalid_response",
            HttpError::InvalidKey { .. } => "invalid_key",
            HttpError::TokenFile { .. } => "token_file",
            HttpError::InvalidUrl { .. } => "invalid_url",
            HttpError::CaCert { .. } => "ca_cert",
        }
    }

    /// Returns whether the error means the API is unavailable for now (unreachable, timed out,
    /// rate limiting or failing with 5xx), so a cached value may be served instead. A 401,
    /// 403 or 404 is the API's decision and is never masked.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            HttpError::Server { .. }
                | HttpError::Timeout { .. }
                | HttpError::ConnectionRefused { .. }
                | HttpError::Unreachable { .. }
        )
    }
}

impl crate::value_cache::SourceError for HttpError {
    fn is_unavailable(&self) -> bool {
        HttpError::is_unavailable(self)
    }

    /// Returns whether the error rejects the token for every key (a 401). A 403 denies one key
    /// only, so it does not count.
    fn is_credential_rejection(&self) -> bool {
        matches!(self, HttpError::Unauthorized { .. })
    }
}
