//! Auth methods: how an identity obtains a Vault token.
//!
//! [`TokenAuth`] uses a static token (from `VAULT_TOKEN` or `~/.vault-token`) and looks it up
//! to learn its TTL. [`KubernetesAuth`] exchanges a service account JWT for a token at
//! `auth/<mount>/login`. The JWT comes from a [`JwtSource`] the caller supplies, so a node
//! agent can log in once per pod with the token it read for that pod.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use super::error::VaultError;
use super::secret::SecretText;
use super::settings::{AuthSettings, TokenSource};
use super::transport::Transport;

/// A token obtained from Vault, with what Vault said about its lifetime.
pub struct Login {
    pub token: Arc<SecretText>,
    /// Expiry time; `None` for a token that never expires (such as a root token).
    pub expires_at: Option<SystemTime>,
    pub renewable: bool,
}

/// One way to obtain a Vault token.
pub trait Auth: Send + Sync {
    /// Returns the method name for status and logs: `token` or `kubernetes`.
    fn method(&self) -> &'static str;

    /// Returns text that distinguishes this login from others of the same method (mount,
    /// role, token file), for the cache key. Never contains a token or JWT.
    fn describe(&self) -> String;

    /// Obtains a token. For a static token this looks it up.
    fn login<'a>(&'a self, transport: &'a Transport) -> BoxFuture<'a, Result<Login, VaultError>>;

    /// Returns whether [`Auth::login`] can yield a new token once the current one is rejected
    /// or expires. A static token cannot.
    fn can_login_again(&self) -> bool;
}

/// Builds the auth method of `settings`.
pub fn from_settings(settings: &AuthSettings) -> Arc<dyn Auth> {
    match settings {
        AuthSettings::Token(source) => Arc::new(TokenAuth {
            source: source.clone(),
        }),
        AuthSettings::Kubernetes {
            mount,
            role,
            jwt_path,
        } => Arc::new(KubernetesAuth {
            mount: mount.trim_matches('/').to_string(),
            role: role.clone(),
            jwt: Arc::new(JwtFile(jwt_path.clone())),
        }),
    }
}

/// A static token.
pub struct TokenAuth {
    pub source: TokenSource,
}

impl TokenAuth {
    fn read_token(&self) -> Result<Arc<SecretText>, VaultError> {
        match &self.source {
            TokenSource::Value(token) => Ok(Arc::clone(token)),
            TokenSource::Missing => Err(VaultError::NoToken),
            TokenSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let text = zeroize::Zeroizing::new(text);
                    let token = text.trim();
                    if token.is_empty() {
                        return Err(VaultError::TokenFile {
                            path: path.clone(),
                            reason: "the file is empty".to_string(),
                        });
                    }
                    Ok(Arc::new(SecretText::new(token.to_string())))
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(VaultError::NoToken),
                Err(err) => Err(VaultError::TokenFile {
                    path: path.clone(),
                    reason: err.to_string(),
                }),
            },
        }
    }
}

impl Auth for TokenAuth {
    fn method(&self) -> &'static str {
        "token"
    }

    fn describe(&self) -> String {
        match &self.source {
            TokenSource::Value(_) => "token from VAULT_TOKEN".to_string(),
            TokenSource::File(path) => format!("token file {}", path.display()),
            TokenSource::Missing => "no token".to_string(),
        }
    }

    fn login<'a>(&'a self, transport: &'a Transport) -> BoxFuture<'a, Result<Login, VaultError>> {
        Box::pin(async move {
            let token = self.read_token()?;
            let client = transport.vaultrs_client(Some(&token));
            let info = vaultrs::token::lookup_self(&client)
                .await
                .map_err(|err| transport.vaultrs_error("auth/token/lookup-self", err))?;
            // `ttl` 0 with no `expire_time` is a token without expiry.
            let expires_at = match (info.ttl, info.expire_time.as_deref()) {
                (0, None | Some("")) => None,
                (ttl, _) => Some(SystemTime::now() + Duration::from_secs(ttl)),
            };
            Ok(Login {
                token,
                expires_at,
                renewable: info.renewable.unwrap_or(false),
            })
        })
    }

    fn can_login_again(&self) -> bool {
        // The token file may hold a new token after `vault login`; VAULT_TOKEN cannot change.
        matches!(self.source, TokenSource::File(_))
    }
}

/// A supplier of service account JWTs for Kubernetes auth.
pub trait JwtSource: Send + Sync {
    /// Returns the current JWT. Called at every login, so a rotated token is picked up.
    fn jwt(&self) -> Result<SecretText, VaultError>;

    /// Returns where the JWT comes from, for the cache key and messages.
    fn describe(&self) -> String;
}

/// A JWT read from a file, such as the projected service account token of a pod.
pub struct JwtFile(pub PathBuf);

impl JwtSource for JwtFile {
    fn jwt(&self) -> Result<SecretText, VaultError> {
        let text = std::fs::read_to_string(&self.0).map_err(|err| VaultError::JwtFile {
            path: self.0.clone(),
            reason: err.to_string(),
        })?;
        let text = zeroize::Zeroizing::new(text);
        let jwt = text.trim();
        if jwt.is_empty() {
            return Err(VaultError::JwtFile {
                path: self.0.clone(),
                reason: "the file is empty".to_string(),
            });
        }
        Ok(SecretText::new(jwt.to_string()))
    }

    fn describe(&self) -> String {
        format!("JWT file {}", self.0.display())
    }
}

/// Kubernetes auth: `POST auth/<mount>/login` with `{role, jwt}`.
pub struct KubernetesAuth {
    pub mount: String,
    pub role: String,
    pub jwt: Arc<dyn JwtSource>,
}

impl Auth for KubernetesAuth {
    fn method(&self) -> &'static str {
        "kubernetes"
    }

    fn describe(&self) -> String {
        format!(
            "mount {} role {} {}",
            self.mount,
            self.role,
            self.jwt.describe()
        )
    }

    fn login<'a>(&'a self, transport: &'a Transport) -> BoxFuture<'a, Result<Login, VaultError>> {
        Box::pin(async move {
            let path = format!("auth/{}/login", self.mount);
            let jwt = self.jwt.jwt()?;
            let client = transport.vaultrs_client(None);
            let auth = vaultrs::auth::kubernetes::login(
                &client,
                &self.mount,
                &self.role,
                jwt.expose_secret(),
            )
            .await
            .map_err(|err| login_error(transport, &path, &self.role, err))?;
            let expires_at = match auth.lease_duration {
                0 => None,
                seconds => Some(SystemTime::now() + Duration::from_secs(seconds)),
            };
            Ok(Login {
                token: Arc::new(SecretText::new(auth.client_token)),
                expires_at,
                renewable: auth.renewable,
            })
        })
    }

    fn can_login_again(&self) -> bool {
        true
    }
}

/// Maps a failed Kubernetes login to an error that keeps Vault's reason, such as "service
/// account name not authorized" or an expired JWT.
fn login_error(
    transport: &Transport,
    path: &str,
    role: &str,
    err: vaultrs::error::ClientError,
) -> VaultError {
    let failed = |reason: String| VaultError::LoginFailed {
        method: "kubernetes",
        path: path.to_string(),
        reason,
    };
    match err {
        vaultrs::error::ClientError::APIError { code, errors } if code == 400 || code == 403 => {
            let reason = errors
                .iter()
                .map(|message| message.trim())
                .filter(|message| !message.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            if code == 403 && (reason.is_empty() || reason == "permission denied") {
                failed(format!(
                    "permission denied: check that role {role:?} is bound to this service \
                     account and namespace, and that the JWT is valid"
                ))
            } else {
                failed(format!("HTTP {code}: {reason}"))
            }
        }
        other => transport.vaultrs_error(path, other),
    }
}
