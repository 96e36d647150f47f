//! A logged-in identity: its current Vault token, renewed at 2/3 of its TTL while renewable,
//! and replaced by a new login when it expires or Vault rejects it (for auth methods that can
//! log in again).
//!
//! Every log line about a login, renewal, rejection or expiry carries the `identity` field
//! (service account, role, auth mount and Vault address in node mode; auth method and address
//! in local mode). A login that a request caused runs inside the caller's span, which in node
//! mode names the pod.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use tokio::task::JoinHandle;

use super::auth::{Auth, Login};
use super::error::VaultError;
use super::secret::SecretText;
use super::transport::Transport;
use crate::metrics::VaultOperation;

/// Minimum pause before retrying a failed renewal.
const MIN_RENEW_RETRY: Duration = Duration::from_secs(1);
/// Maximum pause before retrying a failed renewal.
const MAX_RENEW_RETRY: Duration = Duration::from_secs(30);
/// Minimum age of a token before a plain "permission denied" (a policy that does not grant the
/// path, rather than a rejected token) leads to a new login. Without it, a program that keeps
/// reading a path its policy denies would cause one login per read.
const MIN_TOKEN_AGE_FOR_RELOGIN: Duration = Duration::from_secs(10);
/// First pause after a login that Vault refused, before the next login of that identity.
const MIN_LOGIN_BACKOFF: Duration = Duration::from_secs(1);
/// Maximum pause between logins that Vault keeps refusing. Each refusal doubles the pause.
const MAX_LOGIN_BACKOFF: Duration = Duration::from_secs(60);

/// The pause after a refused login: until it ends, requests of the identity fail at once with
/// the refusal, so that a wrong role does not cause one login per request.
struct LoginBackoff {
    until: Instant,
    pause: Duration,
    error: VaultError,
}

/// The token in use and what is known about its lifetime.
struct ActiveToken {
    token: Arc<SecretText>,
    expires_at: Option<SystemTime>,
    renewable: bool,
    obtained_at: Instant,
}

/// A token of one identity. Cheap to share: the renewal task holds a weak reference.
pub(crate) struct Session {
    auth: Arc<dyn Auth>,
    transport: Arc<Transport>,
    /// The identity in words for log lines, without any token.
    identity: Arc<str>,
    current: Mutex<Option<ActiveToken>>,
    /// The message of the latest failed login, cleared by a successful one.
    login_error: Mutex<Option<String>>,
    /// Whether the latest login failed because Vault was unavailable.
    login_unavailable: AtomicBool,
    /// Set after a login that Vault refused, cleared by a successful one.
    login_backoff: Mutex<Option<LoginBackoff>>,
    /// Serializes logins, so concurrent requests wait for one login.
    login_lock: tokio::sync::Mutex<()>,
    renewer: Mutex<Option<JoinHandle<()>>>,
}

/// Token facts for the status report.
pub(crate) struct TokenStatus {
    pub ttl_secs: Option<u64>,
    pub renewable: bool,
    pub logged_in: bool,
}

impl Session {
    pub(crate) fn new(
        auth: Arc<dyn Auth>,
        transport: Arc<Transport>,
        identity: Arc<str>,
    ) -> Arc<Session> {
        Arc::new(Session {
            auth,
            transport,
            identity,
            current: Mutex::new(None),
            login_error: Mutex::new(None),
            login_unavailable: AtomicBool::new(false),
            login_backoff: Mutex::new(None),
            login_lock: tokio::sync::Mutex::new(()),
            renewer: Mutex::new(None),
        })
    }

    pub(crate) fn auth(&self) -> &dyn Auth {
        &*self.auth
    }

    /// Returns the identity in words, as log lines name it.
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    /// Returns the message of the latest login when it failed, or `None` after a successful
    /// login. The message names the call and Vault's reason, never a token.
    pub(crate) fn login_error(&self) -> Option<String> {
        lock(&self.login_error).clone()
    }

    /// Returns whether no token is in use because the latest login found Vault unavailable.
    pub(crate) fn login_found_unavailable(&self) -> bool {
        self.login_unavailable.load(Ordering::Relaxed) && self.lock_current().is_none()
    }

    /// Returns the current token, logging in first when there is none or it has expired.
    pub(crate) async fn token(self: &Arc<Self>) -> Result<Arc<SecretText>, VaultError> {
        if let Some(token) = self.usable_token() {
            return Ok(token);
        }
        let _guard = self.login_lock.lock().await;
        if let Some(token) = self.usable_token() {
            return Ok(token);
        }
        self.login_locked().await
    }

    /// Replaces `rejected`, which Vault refused with `error`, by a new login when the auth
    /// method can log in again. Returns the new token, or `None` when a new login cannot help:
    /// the method cannot log in again, or the token is fresh and Vault only denied the path.
    ///
    /// When the method cannot log in again (a `VAULT_TOKEN` token), a token that Vault no
    /// longer accepts is dropped, so the identity counts as not logged in until a login at a
    /// later request succeeds.
    pub(crate) async fn login_after_rejection(
        self: &Arc<Self>,
        rejected: &Arc<SecretText>,
        error: &VaultError,
    ) -> Result<Option<Arc<SecretText>>, VaultError> {
        let _guard = self.login_lock.lock().await;
        let (replaced, fresh) = match self.lock_current().as_ref() {
            Some(active) => (
                !Arc::ptr_eq(&active.token, rejected),
                active.obtained_at.elapsed() < MIN_TOKEN_AGE_FOR_RELOGIN,
            ),
            None => (false, false),
        };
        if replaced {
            // Another request already logged in again.
            return Ok(self.usable_token());
        }
        if fresh && matches!(error, VaultError::PermissionDenied { .. }) {
            return Ok(None);
        }
        if !self.auth.can_login_again() {
            self.check_static_token(rejected, error).await;
            return Ok(None);
        }
        tracing::info!(
            identity = %self.identity,
            method = self.auth.method(),
            %error,
            "Vault rejected the token of this identity; logging in again"
        );
        let login = self.login_locked().await;
        if let Err(err) = &login {
            tracing::warn!(
                identity = %self.identity,
                method = self.auth.method(),
                %err,
                "Vault login after a rejected token failed; vault: references of this identity \
                 fail until a login succeeds"
            );
        }
        login.map(Some)
    }

    /// Drops `rejected`, a token that cannot be replaced, when Vault no longer accepts it. A
    /// plain "permission denied" may mean only that the policy denies the path, so the token
    /// is then looked up first. The caller must hold `login_lock`.
    async fn check_static_token(&self, rejected: &Arc<SecretText>, error: &VaultError) {
        let rejection = match error {
            VaultError::InvalidToken { .. } => error.to_string(),
            _ => match self.auth.login(&self.transport).await {
                Ok(_) => {
                    // The token is valid; wait before the next lookup of a denied path.
                    if let Some(active) = self.lock_current().as_mut() {
                        active.obtained_at = Instant::now();
                    }
                    return;
                }
                Err(err) if err.is_auth_rejection() => err.to_string(),
                Err(_) => return,
            },
        };
        self.forget(rejected);
        *lock(&self.login_error) = Some(rejection.clone());
        tracing::warn!(
            identity = %self.identity,
            method = self.auth.method(),
            error = %rejection,
            "Vault rejected the token of this identity; vault: references fail until Vault \
             accepts a new token (set VAULT_TOKEN and restart the agent)"
        );
    }

    /// Logs in now. Used at start so that a bad token shows up before the first request.
    pub(crate) async fn login(self: &Arc<Self>) -> Result<(), VaultError> {
        let _guard = self.login_lock.lock().await;
        self.login_locked().await.map(|_| ())
    }

    pub(crate) fn status(&self) -> TokenStatus {
        let current = self.lock_current();
        match current.as_ref() {
            Some(active) => TokenStatus {
                ttl_secs: active.expires_at.map(|at| {
                    at.duration_since(SystemTime::now())
                        .map_or(0, |left| left.as_secs())
                }),
                renewable: active.renewable,
                logged_in: true,
            },
            None => TokenStatus {
                ttl_secs: None,
                renewable: false,
                logged_in: false,
            },
        }
    }

    /// Stops the renewal task.
    pub(crate) fn stop(&self) {
        if let Some(task) = self.lock_renewer().take() {
            task.abort();
        }
    }

    fn usable_token(&self) -> Option<Arc<SecretText>> {
        let current = self.lock_current();
        let active = current.as_ref()?;
        let expired = active.expires_at.is_some_and(|at| at <= SystemTime::now());
        // A static token that expired is still returned: no login can replace it, and
        // Vault's rejection names the problem.
        if expired && self.auth.can_login_again() {
            return None;
        }
        Some(Arc::clone(&active.token))
    }

    /// Logs in and starts renewing the new token. The caller must hold `login_lock`.
    ///
    /// After a login that Vault refused ([`VaultError::LoginFailed`], not an outage), further
    /// calls return that error without a login until the backoff pause ends. The pause starts
    /// at [`MIN_LOGIN_BACKOFF`], doubles at each refusal up to [`MAX_LOGIN_BACKOFF`] and ends
    /// with a successful login. Each refusal is logged once, with the pause that follows it.
    ///
    /// The future is boxed with an explicit `Send` bound because the renewal task it spawns
    /// calls it again, and the compiler cannot infer `Send` through that cycle.
    fn login_locked(self: &Arc<Self>) -> BoxFuture<'_, Result<Arc<SecretText>, VaultError>> {
        Box::pin(async move {
            if let Some(err) = self.backoff_error() {
                return Err(err);
            }
            let login = self.auth.login(&self.transport).await;
            self.transport.count(VaultOperation::Login, &login);
            *lock(&self.login_error) = login.as_ref().err().map(ToString::to_string);
            self.login_unavailable.store(
                login.as_ref().is_err_and(VaultError::is_unavailable),
                Ordering::Relaxed,
            );
            if login.as_ref().is_err_and(VaultError::is_auth_rejection) {
                // A rejected login leaves no usable token: the old one was rejected or
                // expires soon.
                *self.lock_current() = None;
            }
            let Login {
                token,
                expires_at,
                renewable,
            } = match login {
                Ok(login) => login,
                Err(err) => {
                    if matches!(err, VaultError::LoginFailed { .. }) {
                        self.back_off(&err);
                    }
                    return Err(err);
                }
            };
            *lock(&self.login_backoff) = None;
            tracing::info!(
                identity = %self.identity,
                method = self.auth.method(),
                ttl_secs = expires_at.map(seconds_until),
                renewable,
                "Vault login succeeded"
            );
            *self.lock_current() = Some(ActiveToken {
                token: Arc::clone(&token),
                expires_at,
                renewable,
                obtained_at: Instant::now(),
            });
            let task = tokio::spawn(keep_alive(Arc::downgrade(self), Arc::clone(&token)));
            if let Some(previous) = self.lock_renewer().replace(task) {
                previous.abort();
            }
            Ok(token)
        })
    }

    /// Returns the error of the last refused login while its backoff pause lasts.
    fn backoff_error(&self) -> Option<VaultError> {
        let backoff = lock(&self.login_backoff);
        let backoff = backoff.as_ref()?;
        (Instant::now() < backoff.until).then(|| backoff.error.clone())
    }

    /// Starts the next backoff pause after `err`, a login that Vault refused, and logs it.
    ///
    /// NOTE: the pause also delays a login with a newer service account token that a pod
    /// presents meanwhile, so a refusal of an expired token can delay the next login by up to
    /// the current pause.
    fn back_off(&self, err: &VaultError) {
        let mut backoff = lock(&self.login_backoff);
        let pause = match backoff.as_ref() {
            Some(previous) => (previous.pause * 2).min(MAX_LOGIN_BACKOFF),
            None => MIN_LOGIN_BACKOFF,
        };
        *backoff = Some(LoginBackoff {
            until: Instant::now() + pause,
            pause,
            error: err.clone(),
        });
        tracing::warn!(
            identity = %self.identity,
            method = self.auth.method(),
            %err,
            retry_in_secs = pause.as_secs(),
            "Vault login failed; vault: references of this identity fail with this error \
             without a login until the pause ends, then the next request logs in again"
        );
    }

    /// Returns the expiry and renewability of `token` while it is still the current token.
    fn lifetime_of(&self, token: &Arc<SecretText>) -> Option<(Option<SystemTime>, bool)> {
        let current = self.lock_current();
        let active = current.as_ref()?;
        Arc::ptr_eq(&active.token, token).then_some((active.expires_at, active.renewable))
    }

    fn update_lifetime(&self, token: &Arc<SecretText>, expires_at: SystemTime, renewable: bool) {
        if let Some(active) = self.lock_current().as_mut() {
            if Arc::ptr_eq(&active.token, token) {
                active.expires_at = Some(expires_at);
                active.renewable = renewable;
            }
        }
    }

    fn forget(&self, token: &Arc<SecretText>) {
        let mut current = self.lock_current();
        if current
            .as_ref()
            .is_some_and(|active| Arc::ptr_eq(&active.token, token))
        {
            *current = None;
        }
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<ActiveToken>> {
        lock(&self.current)
    }

    fn lock_renewer(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        lock(&self.renewer)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Writers only replace whole values, so a poisoned lock still holds a usable state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps `token` alive: renews it at 2/3 of its TTL while Vault allows, logs in again before
/// it expires when the auth method can, and otherwise warns about its expiry.
async fn keep_alive(session: std::sync::Weak<Session>, token: Arc<SecretText>) {
    let mut retrying = false;
    loop {
        let Some(strong) = session.upgrade() else {
            return;
        };
        let Some((expires_at, renewable)) = strong.lifetime_of(&token) else {
            return;
        };
        let Some(expires_at) = expires_at else {
            return;
        };
        let remaining = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let can_login_again = strong.auth.can_login_again();
        let method = strong.auth.method();
        let identity = Arc::clone(&strong.identity);
        drop(strong);

        if !renewable && !can_login_again {
            tracing::warn!(
                identity = %identity,
                method,
                expires_at = %format_time(expires_at),
                "the Vault token cannot be renewed and will expire; vault: references \
                 fail after that until the agent gets a new token"
            );
            tokio::time::sleep(remaining).await;
            tracing::error!(
                identity = %identity,
                method,
                expired_at = %format_time(expires_at),
                "the Vault token has expired; log in again (for example `vault login`) and \
                 restart the agent"
            );
            return;
        }

        if !retrying {
            tokio::time::sleep(remaining * 2 / 3).await;
        }
        let Some(strong) = session.upgrade() else {
            return;
        };
        if !renewable {
            // Log in again while the old token still works, so no request gets an expired token.
            strong.forget(&token);
            let _guard = strong.login_lock.lock().await;
            if let Err(err) = strong.login_locked().await {
                tracing::warn!(
                    identity = %identity,
                    method,
                    %err,
                    "Vault login of this identity before its token expiry failed"
                );
            }
            return;
        }

        let client = strong.transport.vaultrs_client(Some(&token));
        let renewed = vaultrs::token::renew_self(&client, None)
            .await
            .map_err(|err| strong.transport.vaultrs_error("auth/token/renew-self", err));
        strong.transport.count(VaultOperation::TokenRenew, &renewed);
        match renewed {
            Ok(auth) => {
                retrying = false;
                let new_expiry = SystemTime::now() + Duration::from_secs(auth.lease_duration);
                // Vault caps a renewal at the token's max TTL, and then it stops extending.
                let extended = new_expiry > expires_at + Duration::from_secs(1);
                strong.update_lifetime(&token, new_expiry, auth.renewable && extended);
                if extended {
                    tracing::info!(
                        identity = %identity,
                        method,
                        ttl_secs = auth.lease_duration,
                        "renewed the Vault token"
                    );
                } else if can_login_again {
                    // Routine: the next pass of this loop logs in again before the expiry.
                    tracing::info!(
                        identity = %identity,
                        method,
                        expires_at = %format_time(new_expiry),
                        "the Vault token reached its maximum TTL; logging in again before it \
                         expires"
                    );
                } else {
                    tracing::warn!(
                        identity = %identity,
                        method,
                        expires_at = %format_time(new_expiry),
                        "the Vault token reached its maximum TTL and cannot be renewed further"
                    );
                }
            }
            Err(err) => {
                if err.is_auth_rejection() {
                    tracing::warn!(
                        identity = %identity,
                        method,
                        %err,
                        "Vault rejected the token renewal of this identity"
                    );
                    if can_login_again {
                        strong.forget(&token);
                    }
                    return;
                }
                let retry = (remaining / 6).clamp(MIN_RENEW_RETRY, MAX_RENEW_RETRY);
                tracing::warn!(
                    identity = %identity,
                    method,
                    %err,
                    retry_secs = retry.as_secs(),
                    "renewing the Vault token failed; retrying"
                );
                drop(strong);
                tokio::time::sleep(retry).await;
                retrying = true;
            }
        }
    }
}

fn seconds_until(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::now())
        .map_or(0, |left| left.as_secs())
}

/// Formats a time as RFC 3339 in UTC, such as `2024-06-01T12:00:00Z`.
pub(crate) fn format_time(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "an unknown time".to_string())
}
