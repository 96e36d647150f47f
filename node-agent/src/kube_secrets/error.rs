//! Errors of the Kubernetes Secret backend, worded for the line a program prints to stderr and
//! for `envproxy get`. Each names the Secret and, for permission errors, the identity the read
//! was made as. No message contains a value or a token.

/// A read of a Kubernetes Secret that failed, or a client that cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeSecretError {
    #[error(
        "permission denied reading Secret {namespace}/{secret} as {identity}: the API server \
         answered 403 ({message}); grant `get` on secrets in namespace {namespace} to that \
         identity with a Role and RoleBinding"
    )]
    Forbidden {
        namespace: String,
        secret: String,
        identity: String,
        message: String,
    },
    #[error(
        "the API server at {server} rejected the credentials of {identity} (401) when reading \
         Secret {namespace}/{secret}"
    )]
    Unauthorized {
        server: String,
        namespace: String,
        secret: String,
        identity: String,
    },
    #[error("Secret {namespace}/{secret} not found")]
    SecretNotFound { namespace: String, secret: String },
    #[error("Secret {namespace}/{secret} has no key `{key}`")]
    KeyNotFound {
        namespace: String,
        secret: String,
        key: String,
    },
    #[error(
        "the API server at {server} is unavailable when reading Secret {namespace}/{secret}: \
         {reason}"
    )]
    Unavailable {
        server: String,
        namespace: String,
        secret: String,
        reason: String,
    },
    #[error(
        "the API server at {server} rejected the read of Secret {namespace}/{secret} \
         (HTTP {code} {reason}): {message}"
    )]
    Rejected {
        server: String,
        namespace: String,
        secret: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("cannot set up the Kubernetes client: {reason}")]
    Client { reason: String },
}

impl KubeSecretError {
    /// Returns the error's kind as a snake_case label for metrics, such as `forbidden`.
    pub fn kind(&self) -> &'static str {
        match self {
            KubeSecretError::Forbidden { .. } => "forbidden",
            KubeSecretError::Unauthorized { .. } => "unauthorized",
            KubeSecretError::SecretNotFound { .. } => "secret_not_found",
            KubeSecretError::KeyNotFound { .. } => "key_not_found",
            KubeSecretError::Unavailable { .. } => "unavailable",
            KubeSecretError::Rejected { .. } => "rejected",
            KubeSecretError::Client { .. } => "client",
        }
    }
}

impl crate::value_cache::SourceError for KubeSecretError {
    /// Returns true only for outages: a 401, 403 or 404 is the API server's decision and is
    /// never masked by a cached value.
    fn is_unavailable(&self) -> bool {
        matches!(self, KubeSecretError::Unavailable { .. })
    }

    /// Returns whether the error rejects the credentials for every Secret (a 401). A 403 denies
    /// one Secret or namespace only, so it does not count.
    fn is_credential_rejection(&self) -> bool {
        matches!(self, KubeSecretError::Unauthorized { .. })
    }
}
