//! One request to the HTTP secrets API: the URL of a key, the bearer token, and the response
//! turned into a value, "not found" or an [`HttpError`].

use std::error::Error as _;
use std::time::Duration;

use envproxy_proto::SecretBytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::StatusCode;
use serde_json::Value;
use zeroize::Zeroizing;

use super::error::HttpError;
use super::settings::{check_token, AuthToken, HttpSettings};
use crate::vault::SecretText;

/// Characters escaped in a key: all but RFC 3986's unreserved characters, so `/`, `?`, `#`, `%`
/// and spaces in a key cannot change the path or add a query.
const KEY_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The largest response body read. A value must fit in one agent response (64 KiB), so a
/// larger body is a misconfigured URL rather than a secret.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A successful read: the value, or `None` for a 404, and the response's `ttl`.
pub(crate) type Fetched = crate::value_cache::Fetched<SecretBytes>;

/// The HTTP client for one API base URL and token source.
pub(crate) struct Client {
    http: reqwest::Client,
    /// The base URL without a trailing slash.
    base_url: String,
    auth_token: AuthToken,
    timeout: Duration,
}

impl Client {
    /// Checks the URL, reads `ca_cert` and builds the reqwest client.
    pub(crate) fn new(settings: &HttpSettings) -> Result<Client, HttpError> {
        // reqwest is built without a crypto provider; an error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base_url = check_url(&settings.url)?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            // A redirect would send the token to wherever the server points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("envproxy-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_cert {
            let ca_error = |reason: String| HttpError::CaCert {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|err| ca_error(err.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| ca_error(format!("not a PEM certificate bundle: {err}")))?;
            if certificates.is_empty() {
                return Err(ca_error("it contains no PEM certificate".to_string()));
            }
            // The file replaces the system's roots, as `ca_cert` does for Vault.
            builder = builder.tls_certs_only(certificates);
        }
        if let AuthToken::File(path) = &settings.auth_token {
            // A file that is missing now may be written later, so only its content is checked.
            if let Ok(bytes) = std::fs::read(path).map(Zeroizing::new) {
                token_from_file(path, &bytes)?;
            }
        }
        let http = builder.build().map_err(|err| HttpError::InvalidUrl {
            url: settings.url.clone(),
            reason: format!("cannot build the HTTP client: {err}"),
        })?;
        Ok(Client {
            http,
            base_url,
            auth_token: settings.auth_token.clone(),
            timeout: settings.timeout,
        })
    }

    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Returns the request URL of `key`, with the key as one escaped path segment.
    pub(crate) fn key_url(&self, key: &str) -> Result<String, HttpError> {
        if key.is_empty() || key == "." || key == ".." {
            // URL parsers drop `.` and `..` segments, so such a key would name another path.
            return Err(HttpError::InvalidKey {
                key: key.to_string(),
                reason: "a key may not be empty, `.` or `..`".to_string(),
            });
        }
        let escaped = utf8_percent_encode(key, KEY_ESCAPES);
        Ok(format!("{}/v1/env/{escaped}", self.base_url))
    }

    /// Sends `GET <url>/v1/env/<key>` with the bearer token and decodes the response.
    pub(crate) async fn fetch(&self, key: &str) -> Result<Fetched, HttpError> {
        let url = self.key_url(key)?;
        let token = self.token().await?;
        let response = self
            .http
            .get(&url)
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|err| self.transport_error(&url, &err))?;
        drop(token);

        let status = response.status();
        match status {
            status if status.is_success() => {}
            StatusCode::NOT_FOUND => {
                tracing::debug!(%url, "the HTTP secrets API returned 404; the key is not found");
                return Ok(Fetched {
                    value: None,
                    ttl: None,
                    lease: None,
                });
            }
            StatusCode::UNAUTHORIZED => return Err(HttpError::Unauthorized { url }),
            StatusCode::FORBIDDEN => {
                return Err(HttpError::PermissionDenied {
                    key: key.to_string(),
                    url,
                })
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
                return Err(HttpError::Server {
                    url,
                    status: status.as_u16(),
                })
            }
            status if status.is_server_error() => {
                return Err(HttpError::Server {
                    url,
                    status: status.as_u16(),
                })
            }
            status => {
                let hint = if status.is_redirection() {
                    ": redirects are not followed; set `url` to the address that serves the API"
                } else {
                    ""
                };
                return Err(HttpError::Rejected {
                    url,
                    status: status.as_u16(),
                    hint,
                });
            }
        }

        let body = self.read_body(&url, response).await?;
        decode_body(&url, key, &body)
    }

    /// Returns the bearer token, reading `auth_token_file` anew.
    async fn token(&self) -> Result<std::sync::Arc<SecretText>, HttpError> {
        match &self.auth_token {
            AuthToken::Value(token) => Ok(std::sync::Arc::clone(token)),
            AuthToken::File(path) => {
                let bytes = Zeroizing::new(tokio::fs::read(path).await.map_err(|err| {
                    HttpError::TokenFile {
                        path: path.clone(),
                        reason: err.to_string(),
                    }
                })?);
                token_from_file(path, &bytes).map(std::sync::Arc::new)
            }
        }
    }

    /// Reads the body up to [`MAX_BODY_BYTES`]; the bytes are wiped when dropped.
    async fn read_body(
        &self,
        url: &str,
        mut response: reqwest::Response,
    ) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        let mut body = Zeroizing::new(Vec::new());
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport_error(url, &err))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(HttpError::InvalidResponse {
                    url: url.to_string(),
                    reason: format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Maps a reqwest error (no HTTP status) to an error that names what failed.
    fn transport_error(&self, url: &str, err: &reqwest::Error) -> HttpError {
        let url = url.to_string();
        if err.is_timeout() {
            return HttpError::Timeout {
                url,
                timeout: self.timeout,
            };
        }
        if let Some(reason) = tls_failure(err) {
            return HttpError::Tls { url, reason };
        }
        if is_connection_refused(err) {
            return HttpError::ConnectionRefused { url };
        }
        HttpError::Unreachable {
            url,
            reason: error_chain(err),
        }
    }
}

/// Reads a token from the bytes of `auth_token_file` at `path`, without its surrounding white
/// space, and checks that it can be sent in a header.
pub(crate) fn token_from_file(
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<SecretText, HttpError> {
    let token_file_error = |reason: &str| HttpError::TokenFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| token_file_error("it is not UTF-8 text"))?
        .trim();
    if text.is_empty() {
        return Err(token_file_error("it is empty"));
    }
    check_token(text).map_err(token_file_error)?;
    Ok(SecretText::new(text.to_string()))
}

/// Checks that `url` is an http or https URL without credentials, query or fragment, and
/// returns it without a trailing slash.
fn check_url(url: &str) -> Result<String, HttpError> {
    let invalid = |reason: &str| HttpError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|err| HttpError::InvalidUrl {
        // A URL with `@` may carry a password, so it is not repeated.
        url: if url.contains('@') {
            "(not shown because it contains `@`)".to_string()
        } else {
            url.to_string()
        },
        reason: format!("{err}; expected a URL such as https://secrets.example.com"),
    })?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(invalid("the scheme must be http or https"));
    }
    if parsed.host_str().is_none() {
        return Err(invalid("the URL has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // The message shows the URL without its user name and password.
        let mut shown = parsed.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        return Err(HttpError::InvalidUrl {
            url: shown.to_string(),
            reason: "the URL contains credentials; put the token in `auth_token` or \
                     `auth_token_file`"
                .to_string(),
        });
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            "the URL has a query or fragment; give scheme, host, port and an optional path",
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Decodes `{"key": ..., "value": "...", "ttl": <seconds>}`. Messages name JSON types and
/// fields, never the text of the body.
fn decode_body(url: &str, key: &str, body: &[u8]) -> Result<Fetched, HttpError> {
    let invalid = |reason: String| HttpError::InvalidResponse {
        url: url.to_string(),
        reason,
    };
    // serde_json's syntax errors give a position and a category, never the input text.
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|err| invalid(format!("the body is not JSON: {err}")))?;
    let Value::Object(fields) = &parsed else {
        return Err(invalid(format!(
            "the body is {}, expected a JSON object",
            describe_json(&parsed)
        )));
    };
    match fields.get("key") {
        None | Some(Value::Null) => {}
        Some(Value::String(returned)) if returned == key => {}
        Some(Value::String(returned)) => {
            return Err(invalid(format!(
                "the body is for key `{returned}`, not `{key}`"
            )))
        }
        Some(other) => {
            return Err(invalid(format!(
                "`key` is {}, expected a string",
                describe_json(other)
            )))
        }
    }
    let value = match fields.get("value") {
        None => return Err(invalid("the body has no `value` field".to_string())),
        Some(Value::String(value)) => SecretBytes::new(value.as_bytes().to_vec()),
        Some(other) => {
            return Err(invalid(format!(
                "`value` is {}, expected a string",
                describe_json(other)
            )))
        }
    };
    let ttl = match fields.get("ttl") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => match number.as_f64() {
            Some(seconds) if seconds >= 0.0 && seconds.is_finite() => {
                Some(Duration::from_secs_f64(seconds.min(u32::MAX as f64)))
            }
            _ => {
                return Err(invalid(
                    "`ttl` is negative, expected a number of seconds of at least 0".to_string(),
                ))
            }
        },
        Some(other) => {
            return Err(invalid(format!(
                "`ttl` is {}, expected a number of seconds",
                describe_json(other)
            )))
        }
    };
    Ok(Fetched {
        value: Some(value),
        ttl,
        lease: None,
    })
}

fn describe_json(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Finds a TLS error in the chain of `err` and returns its text.
///
/// hyper-util wraps the rustls error in boxed errors of private types, so when no
/// `rustls::Error` can be downcast, the innermost message is checked for rustls's wording.
fn tls_failure(err: &reqwest::Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut innermost = err.to_string();
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            // io::Error::source skips the wrapped error, so it is checked here directly.
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
    const TLS_WORDING: [&str; 3] = ["certificate", "handshake", "TLS"];
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

/// Formats an error with its sources, `outer: inner: innermost`, skipping repeated text.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
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

    fn decode(body: &str) -> Result<Fetched, HttpError> {
        decode_body("http://h/v1/env/K", "K", body.as_bytes())
    }

    fn reason(result: Result<Fetched, HttpError>) -> String {
        match result {
            Err(HttpError::InvalidResponse { reason, .. }) => reason,
            Err(other) => panic!("expected an invalid response, got {other}"),
            Ok(_) => panic!("expected an invalid response, got a value"),
        }
    }

    #[test]
    fn body_with_ttl_decodes() {
        let fetched = decode(r#"{"key": "K", "value": "v-1", "ttl": 30}"#).unwrap();
        assert_eq!(fetched.value.unwrap().expose_secret(), b"v-1");
        assert_eq!(fetched.ttl, Some(Duration::from_secs(30)));
        let fetched = decode(r#"{"value": "", "ttl": null}"#).unwrap();
        assert_eq!(fetched.value.unwrap().expose_secret(), b"");
        assert_eq!(fetched.ttl, None);
        let fetched = decode(r#"{"value": "v", "ttl": 1.5}"#).unwrap();
        assert_eq!(fetched.ttl, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn invalid_bodies_name_the_problem_not_the_value() {
        let cases = [
            ("<html>s3cr3t</html>", "the body is not JSON"),
            (r#"["s3cr3t"]"#, "the body is an array"),
            (r#"{"key": "K"}"#, "no `value` field"),
            (r#"{"value": 7357}"#, "`value` is a number"),
            (r#"{"value": {"s3cr3t": 1}}"#, "`value` is an object"),
            (
                r#"{"key": "OTHER", "value": "s3cr3t"}"#,
                "for key `OTHER`, not `K`",
            ),
            (r#"{"value": "s3cr3t", "ttl": "60"}"#, "`ttl` is a string"),
            (r#"{"value": "s3cr3t", "ttl": -1}"#, "`ttl` is negative"),
        ];
        for (body, expected) in cases {
            let reason = reason(decode(body));
            assert!(reason.contains(expected), "{body}: {reason}");
            assert!(!reason.contains("s3cr3t"), "{body}: {reason}");
            assert!(!reason.contains("7357"), "{body}: {reason}");
        }
    }

    fn client_for(url: &str) -> Result<Client, HttpError> {
        let token = AuthToken::Value(std::sync::Arc::new(SecretText::new("t".into())));
        Client::new(&HttpSettings::new(url.to_string(), token))
    }

    #[test]
    fn key_is_one_escaped_segment() {
        let client = client_for("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(client.base_url(), "http://127.0.0.1:8080/api");
        let cases = [
            (
                "DB_PASSWORD",
                "http://127.0.0.1:8080/api/v1/env/DB_PASSWORD",
            ),
            ("a/b", "http://127.0.0.1:8080/api/v1/env/a%2Fb"),
            ("x?y#z", "http://127.0.0.1:8080/api/v1/env/x%3Fy%23z"),
            ("50% off", "http://127.0.0.1:8080/api/v1/env/50%25%20off"),
            ("v1.2-a_b~c", "http://127.0.0.1:8080/api/v1/env/v1.2-a_b~c"),
            ("Ü", "http://127.0.0.1:8080/api/v1/env/%C3%9C"),
        ];
        for (key, expected) in cases {
            assert_eq!(client.key_url(key).unwrap(), expected, "{key}");
        }
        for key in ["", ".", ".."] {
            assert!(matches!(
                client.key_url(key),
                Err(HttpError::InvalidKey { .. })
            ));
        }
    }

    #[test]
    fn invalid_urls_are_rejected() {
        let cases = [
            ("secrets.example.com", "expected a URL"),
            ("ftp://secrets.example.com", "http or https"),
            ("https://user:pw@secrets.example.com", "credentials"),
            ("https://secrets.example.com/?a=b", "query"),
        ];
        for (url, expected) in cases {
            let Err(err) = client_for(url) else {
                panic!("{url} was accepted");
            };
            let message = err.to_string();
            assert!(message.contains(expected), "{url}: {message}");
            assert!(!message.contains("pw"), "{url}: {message}");
        }
    }
}
