//! Errors of the Vault backend, worded for the line a program prints to stderr and for
//! `envproxy get`. No message contains a secret value or a token.

use std::path::PathBuf;
use std::time::Duration;

/// A Vault read or login that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error(
        "Vault has no secrets engine mounted at {path}: check the mount name (`vault secrets \
         list`) and, for KV v2, write `<mount>/data/<path>`"
    )]
    UnknownMount { path: String },
    #[error(
        "permission denied reading {path} from Vault: the token's policy must allow `read` on \
         this path"
    )]
    PermissionDenied { path: String },
    #[error(
        "the Vault token was rejected reading {path} (invalid or expired token): log in again, \
         for example with `vault login`"
    )]
    InvalidToken { path: String },
    #[error("no secret at {path} in Vault (a KV v2 secret is read as `<mount>/data/<path>`)")]
    NotFound { path: String },
    #[error("version {version} of {path} does not exist in Vault")]
    VersionNotFound { path: String, version: u64 },
    #[error("the secret at {path} in Vault has no key `{key}`")]
    KeyNotFound { path: String, key: String },
    #[error(
        "version {version} of {path} was deleted in Vault; undelete it or use another version"
    )]
    VersionDeleted { path: String, version: u64 },
    #[error("version {version} of {path} was destroyed in Vault and cannot be read")]
    VersionDestroyed { path: String, version: u64 },
    #[error("Vault at {address} is sealed (reading {path}); unseal it and retry")]
    Sealed { address: String, path: String },
    #[error("Vault at {address} is rate limiting requests (reading {path}, HTTP 429)")]
    RateLimited { address: String, path: String },
    #[error("Vault at {address} failed reading {path}: HTTP {status}: {message}")]
    Server {
        address: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("Vault rejected the request for {path}: HTTP {status}: {message}")]
    Rejected {
        path: String,
        status: u16,
        message: String,
    },
    #[error(
        "TLS connection to Vault at {address} failed (reading {path}): {reason}; set `ca_cert` \
         in the [vault] config or VAULT_CACERT to the CA that signed Vault's certificate"
    )]
    Tls {
        address: String,
        path: String,
        reason: String,
    },
    #[error("Vault at {address} did not respond within {}s (reading {path})", timeout.as_secs_f32())]
    Timeout {
        address: String,
        path: String,
        timeout: Duration,
    },
    #[error("connection to Vault at {address} refused (reading {path}): is Vault running there?")]
    ConnectionRefused { address: String, path: String },
    #[error("cannot reach Vault at {address} (reading {path}): {reason}")]
    Unreachable {
        address: String,
        path: String,
        reason: String,
    },
    #[error("invalid Vault address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("Vault returned a response for {path} that EnvProxy cannot use: {reason}")]
    InvalidResponse { path: String, reason: String },
    #[error(
        "no Vault token: set VAULT_TOKEN or log in with `vault login`, which writes \
         ~/.vault-token"
    )]
    NoToken,
    #[error("cannot read the Vault token file {}: {reason}", path.display())]
    TokenFile { path: PathBuf, reason: String },
    #[error("cannot read the service account token {}: {reason}", path.display())]
    JwtFile { path: PathBuf, reason: String },
    #[error(
        "no pod of this identity has presented a checked service account token since the agent \
         started; the next request from such a pod logs in again"
    )]
    NoPodToken,
    #[error("cannot read {what} {}: {reason}", path.display())]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("Vault {method} login at {path} failed: {reason}")]
    LoginFailed {
        method: &'static str,
        path: String,
        reason: String,
    },
}

impl VaultError {
    /// Returns whether the error means Vault is unavailable for now (unreachable, timed out,
    /// sealed, rate limiting or failing with 5xx), so a cached value may be served instead.
    /// A 403, a 404 and a deleted or destroyed version are Vault's decisions and are never
    /// masked.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            VaultError::Sealed { .. }
                | VaultError::RateLimited { .. }
                | VaultError::Server { .. }
                | VaultError::Timeout { .. }
                | VaultError::ConnectionRefused { .. }
                | VaultError::Unreachable { .. }
        )
    }

    /// Names `secret_path` in an error that happened on the way to reading it (a token lookup
    /// or login), so the message says which reference failed as well as which call.
    pub fn while_reading(self, secret_path: &str) -> VaultError {
        let with_secret = |call: String| format!("{secret_path}, at {call}");
        match self {
            VaultError::Sealed { address, path } => VaultError::Sealed {
                address,
                path: with_secret(path),
            },
            VaultError::RateLimited { address, path } => VaultError::RateLimited {
                address,
                path: with_secret(path),
            },
            VaultError::Server {
                address,
                path,
                status,
                message,
            } => VaultError::Server {
                address,
                path: with_secret(path),
                status,
                message,
            },
            VaultError::Tls {
                address,
                path,
                reason,
            } => VaultError::Tls {
                address,
                path: with_secret(path),
                reason,
            },
            VaultError::Timeout {
                address,
                path,
                timeout,
            } => VaultError::Timeout {
                address,
                path: with_secret(path),
                timeout,
            },
            VaultError::ConnectionRefused { address, path } => VaultError::ConnectionRefused {
                address,
                path: with_secret(path),
            },
            VaultError::Unreachable {
                address,
                path,
                reason,
            } => VaultError::Unreachable {
                address,
                path: with_secret(path),
                reason,
            },
            VaultError::InvalidToken { path } => VaultError::InvalidToken {
                path: with_secret(path),
            },
            VaultError::PermissionDenied { path } => VaultError::PermissionDenied {
                path: with_secret(path),
            },
            other => other,
        }
    }

    /// Returns the error's kind as a snake_case label for metrics, such as `permission_denied`.
    pub fn kind(&self) -> &'static str {
        match self {
            VaultError::UnknownMount { .. } => "unknown_mount",
            VaultError::PermissionDenied { .. } => "permission_denied",
            VaultError::InvalidToken { .. } => "invalid_token",
            VaultError::NotFound { .. } => "not_found",
            VaultError::VersionNotFound { .. } => "version_not_found",
            VaultError::KeyNotFound { .. } => "key_not_found",
            VaultError::VersionDeleted { .. } => "version_deleted",
            VaultError::VersionDestroyed { .. } => "version_destroyed",
            VaultError::Sealed { .. } => "sealed",
            VaultError::RateLimited { .. } => "rate_limited",
            VaultError::Server { .. } => "server_error",
            VaultError::Rejected { .. } => "rejected",
            VaultError::Tls { .. } => "tls",
            VaultError::Timeout { .. } => "timeout",
            VaultError::ConnectionRefused { .. } => "connection_refused",
            VaultError::Unreachable { .. } => "unreachable",
            VaultError::InvalidAddress { .. } => "invalid_address",
            VaultError::InvalidResponse { .. } => "invalid_response",
            VaultError::NoToken => "no_token",
            VaultError::TokenFile { .. } => "token_file",
            VaultError::JwtFile { .. } => "jwt_file",
            VaultError::NoPodToken => "no_pod_token",
            VaultError::TlsFile { .. } => "tls_file",
            VaultError::LoginFailed { .. } => "login_failed",
        }
    }

    /// Returns whether a new login may cure the error: the token was rejected.
    pub fn is_auth_rejection(&self) -> bool {
        matches!(
            self,
            VaultError::PermissionDenied { .. } | VaultError::InvalidToken { .. }
        )
    }
}
