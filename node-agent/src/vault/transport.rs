//! HTTP to one Vault address: the reqwest client with its TLS settings, Vault's error bodies
//! mapped to [`VaultError`], and vaultrs clients that share the same connection pool.

use std::error::Error as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Once};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettings};
use zeroize::Zeroizing;

use super::error::VaultError;
use super::secret::SecretText;
use super::settings::{TlsSettings, VaultSettings};
use crate::metrics::{Metrics, VaultOperation};

/// A decoded Vault response with a 2xx status, or a 404 whose body is still needed (KV v2
/// returns the metadata of a deleted version that way).
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

/// The HTTP side of one Vault address and namespace, shared by every request of an identity.
pub struct Transport {
    client: reqwest::Client,
    /// URL that requests go to: the address, with the host replaced by `tls_server_name` when
    /// that is set.
    base_url: String,
    /// The address as configured, for messages.
    address: String,
    namespace: Option<String>,
    timeout: Duration,
    /// The agent's metrics, which count the requests of every caller of this transport.
    metrics: Arc<Metrics>,
}

/// Installs ring as rustls's process-wide crypto provider. reqwest is built without one.
pub(crate) fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another crate installed a provider first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Transport {
    /// Builds the HTTP client for `settings`: checks the address, reads the TLS files. Requests
    /// are counted in `metrics`.
    pub(crate) fn new(
        settings: &VaultSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Transport, VaultError> {
        install_crypto_provider();
        let address = settings.address.trim_end_matches('/').to_string();
        let invalid = |reason: String| VaultError::InvalidAddress {
            address: settings.address.clone(),
            reason,
        };
        let url = reqwest::Url::parse(&address).map_err(|err| {
            invalid(format!(
                "{err}; expected a URL such as https://vault.example.com:8200"
            ))
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(invalid(format!(
                "the scheme is {:?}; use http or https",
                url.scheme()
            )));
        }
        let Some(host) = url.host_str().map(str::to_string) else {
            return Err(invalid("the URL has no host".to_string()));
        };
        if url.path() != "/" || url.query().is_some() {
            return Err(invalid(
                "the URL has a path or query; give only scheme, host and port".to_string(),
            ));
        }
        let port = url.port_or_known_default().unwrap_or(8200);

        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("envproxy-agent/", env!("CARGO_PKG_VERSION")));
        let mut base_url = address.clone();
        if url.scheme() == "https" {
            builder = configure_tls(builder, &settings.tls)?;
            if let Some(name) = &settings.tls.tls_server_name {
                // The request goes to the name to verify, and the name resolves to the
                // address's own IP addresses, so SNI and certificate checks use the name.
                let addresses = resolve(&host, port).map_err(invalid)?;
                builder = builder.resolve_to_addrs(name, &addresses);
                let mut renamed = url.clone();
                renamed
                    .set_host(Some(name))
                    .map_err(|err| invalid(format!("invalid tls_server_name {name:?}: {err}")))?;
                base_url = renamed.as_str().trim_end_matches('/').to_string();
            }
        } else {
            // reqwest loads the platform's roots even for plain HTTP unless configured otherwise.
            builder = builder.tls_certs_only(Vec::new());
        }
        let client = builder
            .build()
            .map_err(|err| invalid(format!("cannot build the HTTP client: {err}")))?;
        Ok(Transport {
            client,
            base_url,
            address,
            namespace: settings.namespace().map(str::to_string),
            timeout: settings.timeout,
            metrics,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Counts one `operation` request and, when it failed, its error kind.
    pub(crate) fn count<T>(&self, operation: VaultOperation, result: &Result<T, VaultError>) {
        self.metrics.vault_request(operation);
        if let Err(err) = result {
            self.metrics.vault_error(operation, err.kind());
        }
    }

    /// Sends one request to `/v1/<path>` and returns the decoded reply of a 2xx status, or of a
    /// 404 when `keep_not_found` is set. Any other status becomes the matching error, which
    /// names `path`.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        token: Option<&SecretText>,
        body: Option<&Value>,
        keep_not_found: bool,
    ) -> Result<Reply, VaultError> {
        let mut url = format!("{}/v1/{path}", self.base_url);
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token.expose_secret());
        }
        if let Some(namespace) = &self.namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(path, &err))?;
        let status = response.status();
        // The body may contain secret values, so its bytes are wiped once decoded.
        let bytes = Zeroizing::new(
            response
                .bytes()
                .await
                .map_err(|err| self.transport_error(path, &err))?
                .to_vec(),
        );
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(body) => body,
                Err(_) if !status.is_success() => Value::Null,
                Err(err) => {
                    return Err(VaultError::InvalidResponse {
                        path: path.to_string(),
                        reason: format!("the body is not JSON: {err}"),
                    })
                }
            }
        };
        if status.is_success() || (keep_not_found && status == StatusCode::NOT_FOUND) {
            return Ok(Reply { status, body });
        }
        Err(self.status_error(path, status.as_u16(), &error_messages(&body)))
    }

    /// Maps an error status and Vault's `errors` list to an error.
    pub fn status_error(&self, path: &str, status: u16, errors: &[String]) -> VaultError {
        let path = path.to_string();
        let joined = errors
            .iter()
            .map(|message| flatten_message(message))
            .collect::<Vec<_>>()
            .join("; ");
        match status {
            403 if errors.iter().any(|e| e.contains("invalid token")) => {
                VaultError::InvalidToken { path }
            }
            403 => VaultError::PermissionDenied { path },
            404 if errors.iter().any(|e| e.contains("no handler for route")) => {
                VaultError::UnknownMount { path }
            }
            404 => VaultError::NotFound { path },
            503 if errors.iter().any(|e| e.contains("Vault is sealed")) => VaultError::Sealed {
                address: self.address.clone(),
                path,
            },
            429 => VaultError::RateLimited {
                address: self.address.clone(),
                path,
            },
            // 412 means the client should retry until a performance standby catches up.
            412 | 500..=599 => VaultError::Server {
                address: self.address.clone(),
                path,
                status,
                message: if joined.is_empty() {
                    "no error message".to_string()
                } else {
                    joined
                },
            },
            _ => VaultError::Rejected {
                path,
                status,
                message: if joined.is_empty() {
                    "no error message".to_string()
                } else {
                    joined
                },
            },
        }
    }

    /// Maps a reqwest error (no HTTP status) to an error that names what failed.
    pub(crate) fn transport_error(&self, path: &str, err: &reqwest::Error) -> VaultError {
        let address = self.address.clone();
        let path = path.to_string();
        if err.is_timeout() {
            return VaultError::Timeout {
                address,
                path,
                timeout: self.timeout,
            };
        }
        if let Some(reason) = tls_failure(err) {
            return VaultError::Tls {
                address,
                path,
                reason,
            };
        }
        if is_connection_refused(err) {
            return VaultError::ConnectionRefused { address, path };
        }
        VaultError::Unreachable {
            address,
            path,
            reason: error_chain(err),
        }
    }

    /// Maps an error of a vaultrs call on `path` to an error.
    pub fn vaultrs_error(&self, path: &str, err: vaultrs::error::ClientError) -> VaultError {
        use rustify::errors::ClientError as RestError;
        use vaultrs::error::ClientError;
        match err {
            ClientError::APIError { code, errors } => self.status_error(path, code, &errors),
            ClientError::RestClientError { source } => match &source {
                RestError::RequestError { source, .. } | RestError::ResponseError { source } => {
                    match source.downcast_ref::<reqwest::Error>() {
                        Some(reqwest_error) => self.transport_error(path, reqwest_error),
                        None => VaultError::Unreachable {
                            address: self.address.clone(),
                            path: path.to_string(),
                            reason: format!("{source:#}"),
                        },
                    }
                }
                RestError::ServerResponseError { code, content } => {
                    let errors = content
                        .as_deref()
                        .and_then(|text| serde_json::from_str::<Value>(text).ok())
                        .map(|body| error_messages(&body))
                        .unwrap_or_default();
                    self.status_error(path, *code, &errors)
                }
                other => VaultError::InvalidResponse {
                    path: path.to_string(),
                    reason: error_chain(other),
                },
            },
            other => VaultError::InvalidResponse {
                path: path.to_string(),
                reason: error_chain(&other),
            },
        }
    }

    /// Returns a vaultrs client that sends `token` over this transport's connection pool.
    ///
    /// The client is built from its public fields, because `VaultClient::new` would build a
    /// second reqwest client without `tls_server_name` and read `VAULT_*` variables itself.
    pub fn vaultrs_client(&self, token: Option<&SecretText>) -> VaultClient {
        let token = token.map_or_else(String::new, |t| t.expose_secret().to_string());
        let address = reqwest::Url::parse(&self.base_url).expect("the base URL was validated");
        VaultClient {
            http: rustify::clients::reqwest::Client::new(&self.base_url, self.client.clone()),
            middle: EndpointMiddleware {
                token: token.clone(),
                version: "v1".to_string(),
                wrap: None,
                namespace: self.namespace.clone(),
            },
            settings: VaultClientSettings {
                address,
                ca_certs: Vec::new(),
                identity: None,
                timeout: Some(self.timeout),
                token,
                verify: true,
                version: 1,
                wrapping: false,
                namespace: self.namespace.clone(),
                proxy: None,
            },
        }
    }
}

fn configure_tls(
    mut builder: reqwest::ClientBuilder,
    tls: &TlsSettings,
) -> Result<reqwest::ClientBuilder, VaultError> {
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|err| VaultError::TlsFile {
                what,
                path: path.to_path_buf(),
                reason: err.to_string(),
            })
    };
    if let Some(path) = &tls.ca_cert {
        let pem = read("the CA certificate file", path)?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| VaultError::TlsFile {
                what: "the CA certificate file",
                path: path.clone(),
                reason: format!("not a PEM certificate bundle: {err}"),
            })?;
        if certificates.is_empty() {
            return Err(VaultError::TlsFile {
                what: "the CA certificate file",
                path: path.clone(),
                reason: "it contains no PEM certificate".to_string(),
            });
        }
        // As with the Vault CLI's VAULT_CACERT, the file replaces the system's roots.
        builder = builder.tls_certs_only(certificates);
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert_path), Some(key_path)) => {
            let mut pem = Zeroizing::new(read("the client certificate file", cert_path)?.to_vec());
            pem.push(b'\n');
            pem.extend_from_slice(&read("the client key file", key_path)?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|err| VaultError::TlsFile {
                    what: "the client certificate and key",
                    path: cert_path.clone(),
                    reason: err.to_string(),
                })?;
            builder = builder.identity(identity);
        }
        (Some(path), None) | (None, Some(path)) => {
            return Err(VaultError::TlsFile {
                what: "the client certificate or key",
                path: path.clone(),
                reason: "set both client_cert and client_key".to_string(),
            })
        }
        (None, None) => {}
    }
    Ok(builder)
}

/// Resolves the address's host once, for `tls_server_name`.
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {host}: {err}"))?
        .collect();
    if addresses.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    Ok(addresses)
}

/// Returns the `errors` list of a Vault error body.
pub(crate) fn error_messages(body: &Value) -> Vec<String> {
    body.get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Turns Vault's multi-error text (`1 error occurred:\n\t* permission denied\n\n`) into one
/// line.
fn flatten_message(message: &str) -> String {
    let items: Vec<&str> = message
        .lines()
        .filter_map(|line| line.trim().strip_prefix("* "))
        .collect();
    if items.is_empty() {
        message.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        items.join("; ")
    }
}

/// Finds a TLS error in the chain of `err` and returns its text.
///
/// hyper-util wraps the rustls error in boxed errors whose types are private, so when no
/// `rustls::Error` can be downcast, the innermost message is checked for rustls's wording.
fn tls_failure(err: &reqwest::Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut innermost = err.to_string();
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            // io::Error::source skips the wrapped error itself, so look at it directly.
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(tls.to_string());
            }
        }
        innermost = error.to_string();
        current = error.source();
    }
    const TLS_WORDING: [&str; 4] = ["peer certificate", "certificate", "handshake", "TLS"];
    TLS_WORDING
        .iter()
        .any(|word| innermost.contains(word))
        .then_some(innermost)
}

fn is_connection_refused(err: &reqwest::Error) -> bool {
    let mut current = err.source();
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        current = error.source();
    }
    false
}

/// Formats an error with its sources, `outer: inner: innermost`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(error) = current {
        let next = error.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        current = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_error_text_is_one_line() {
        assert_eq!(
            flatten_message("1 error occurred:\n\t* permission denied\n\n"),
            "permission denied"
        );
        assert_eq!(
            flatten_message("2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"),
            "permission denied; invalid token"
        );
        assert_eq!(flatten_message("Vault is sealed"), "Vault is sealed");
    }
}
