//! Helpers shared by the Vault backend tests: a test server, settings pointing at it, and a
//! log capture that checks nothing secret reaches the logs.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envproxy_agent::vault::{
    SecretText, TokenSource, VaultBackend, VaultEnvironment, VaultError, VaultSettings,
};
use envproxy_proto::Reference;
use envproxy_vault_test_server::{Capability, Policy, ServerOptions, TokenSpec, VaultTestServer};

/// Starts a test server with default mounts (`secret` KV v2, `kv` KV v1, `database`,
/// `kubernetes` auth).
pub async fn start_server(options: ServerOptions) -> VaultTestServer {
    VaultTestServer::start(options).await.unwrap()
}

/// Token-auth settings for `server` with `token`, a 60 s cache and a 2 s timeout.
pub fn settings(server: &VaultTestServer, token: &str) -> VaultSettings {
    let environment = VaultEnvironment {
        token: Some(Arc::new(SecretText::new(token.to_string()))),
        ..VaultEnvironment::default()
    };
    let mut settings = VaultSettings::with_defaults(server.url(), &environment);
    settings.cache_ttl = Duration::from_secs(60);
    settings.timeout = Duration::from_secs(2);
    settings
}

/// Returns the static token of token-auth settings.
pub fn token_of(settings: &VaultSettings) -> String {
    match &settings.auth {
        envproxy_agent::vault::AuthSettings::Token(TokenSource::Value(token)) => {
            token.expose_secret().to_string()
        }
        other => panic!("expected a static token, got {other:?}"),
    }
}

/// Creates a token whose policy `app-read` allows reading `patterns`.
pub fn token_reading(server: &VaultTestServer, patterns: &[&str]) -> String {
    let mut policy = Policy::new();
    for pattern in patterns {
        policy = policy.allow(pattern, &[Capability::Read]);
    }
    server.root().set_policy("app-read", policy);
    server
        .create_token(TokenSpec::new(&["app-read"]))
        .unwrap()
        .token
}

pub fn reference(text: &str) -> Reference {
    Reference::parse(text).unwrap()
}

/// Resolves `text` and returns the value as a string.
pub async fn resolve(backend: &VaultBackend, text: &str) -> Result<String, VaultError> {
    let value = backend.resolve(&reference(text)).await?;
    Ok(String::from_utf8(value.expose_secret().to_vec()).unwrap())
}

/// Log lines written while a [`LogCapture`] is the thread's default subscriber.
#[derive(Clone, Default)]
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Installs the capture for this thread at `debug`, so every log line a test's
    /// current-thread runtime emits is captured. Keep the guard alive for the test.
    pub fn install() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }

    /// Panics when any of `secrets` appears in the captured log.
    pub fn assert_free_of(&self, secrets: &[&str]) {
        let text = self.text();
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "the log contains a secret ({} bytes); log:\n{text}",
                secret.len()
            );
        }
    }
}

impl Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
