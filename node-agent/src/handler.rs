//! The response to one request: passthrough, a lookup in the secrets file, the HTTP secrets
//! API, a Kubernetes Secret or Vault, or an error.

use std::fmt;

use envproxy_proto::frame::MAX_PAYLOAD_LEN;
use envproxy_proto::{has_known_scheme, Reference, Request, Response, SecretBytes};

use crate::backend::FileBackend;
use crate::http_backend::HttpBackend;
use crate::kube_secrets::KubeSecrets;
use crate::status::StatusReporter;
use crate::vault::VaultBackend;

/// The agent's decision on a request, recorded in the request's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Found,
    NotFound,
    Passthrough,
    Error,
    /// Refused by node mode's policy.
    Denied,
    Status,
}

impl Decision {
    /// Returns the decision as a snake_case label, as audit events and metrics name it.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Decision::Found => "found",
            Decision::NotFound => "not_found",
            Decision::Passthrough => "passthrough",
            Decision::Error => "error",
            Decision::Denied => "denied",
            Decision::Status => "status",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) struct Outcome {
    pub response: Response,
    pub decision: Decision,
}

impl Outcome {
    pub(crate) fn error(reason: String) -> Outcome {
        Outcome {
            response: Response::error(reason),
            decision: Decision::Error,
        }
    }
}

/// The backends of one agent: `envproxy:` references and bare names go to the default
/// backend (the HTTP API or a Kubernetes Secret when configured, else the file), `vault:`
/// references to Vault and `k8s:` references to Kubernetes Secrets.
#[derive(Clone)]
pub(crate) struct Backends {
    pub file: Option<FileBackend>,
    pub vault: Option<VaultBackend>,
    pub http: Option<HttpBackend>,
    /// Kubernetes Secrets: read with the user's kubeconfig in local mode. In node mode node
    /// mode's own request handling reads them as the calling pod, and this copy only feeds
    /// the status.
    pub kube: Option<KubeSecrets>,
}

/// Builds the response to `request`.
pub(crate) async fn handle(
    request: &Request,
    backends: &Backends,
    status: &StatusReporter,
) -> Outcome {
    match request {
        Request::Status => {
            if let Some(vault) = &backends.vault {
                // moka counts inserts and evictions in batches; apply them so the status
                // reports the current number of cache entries.
                vault.sync_cache().await;
            }
            if let Some(http) = &backends.http {
                http.sync_cache().await;
            }
            if let Some(kube) = &backends.kube {
                kube.sync_cache().await;
            }
            Outcome {
                response: Response::Found(SecretBytes::new(status.payload())),
                decision: Decision::Status,
            }
        }
        Request::V1 { key } => {
            let Ok(name) = std::str::from_utf8(key) else {
                return Outcome::error("the variable name is not valid UTF-8".to_string());
            };
            look_up_default(backends, name, name).await
        }
        Request::V2 { key, value } => {
            let Ok(name) = std::str::from_utf8(key) else {
                return Outcome::error("the variable name is not valid UTF-8".to_string());
            };
            // A value without a known scheme is the variable's plain value, not a reference.
            if !has_known_scheme(value) {
                return Outcome {
                    response: Response::Passthrough,
                    decision: Decision::Passthrough,
                };
            }
            let Ok(text) = std::str::from_utf8(value) else {
                return Outcome::error(format!("{name}: the reference is not valid UTF-8"));
            };
            match Reference::parse(text) {
                Ok(Reference::Local { key }) => look_up_default(backends, name, &key).await,
                Ok(Reference::Kubernetes {
                    namespace,
                    secret,
                    key,
                }) => look_up_kube(backends, name, namespace.as_deref(), &secret, &key).await,
                Ok(reference) => look_up_vault(backends, name, &reference).await,
                Err(err) => Outcome::error(format!("{name}: invalid reference: {err}")),
            }
        }
    }
}

/// Looks up `key` for variable `name` in the default backend: the HTTP API or the Kubernetes
/// Secret when configured, else the secrets file.
async fn look_up_default(backends: &Backends, name: &str, key: &str) -> Outcome {
    if let Some(http) = &backends.http {
        return look_up_http(http, name, key).await;
    }
    match &backends.kube {
        Some(kube) if kube.has_default_secret() => match kube.default_value(key).await {
            Ok(Some(value)) => found(name, key, value),
            Ok(None) => Outcome {
                response: Response::NotFound,
                decision: Decision::NotFound,
            },
            Err(err) => Outcome::error(format!("{name}: {err}")),
        },
        _ => look_up_file(backends, name, key),
    }
}

/// Resolves a `k8s:` reference for variable `name` with the kubeconfig's credentials.
async fn look_up_kube(
    backends: &Backends,
    name: &str,
    namespace: Option<&str>,
    secret: &str,
    key: &str,
) -> Outcome {
    let Some(kube) = &backends.kube else {
        return Outcome::error(format!(
            "{name}: k8s: references are not served by this agent"
        ));
    };
    match kube.value(namespace, secret, key).await {
        Ok(value) => found(name, key, value),
        Err(err) => Outcome::error(format!("{name}: {err}")),
    }
}

/// Looks up `key` in the HTTP secrets API for variable `name`.
async fn look_up_http(http: &HttpBackend, name: &str, key: &str) -> Outcome {
    match http.get(key).await {
        Ok(Some(value)) => found(name, key, value),
        Ok(None) => Outcome {
            response: Response::NotFound,
            decision: Decision::NotFound,
        },
        Err(err) => Outcome::error(format!("{name}: {err}")),
    }
}

/// Looks up `key` of the secrets file for variable `name`.
fn look_up_file(backends: &Backends, name: &str, key: &str) -> Outcome {
    let Some(file) = &backends.file else {
        return Outcome::error(format!(
            "{name}: no secrets file is configured, so `{key}` cannot be looked up; pass \
             --secrets FILE or set `path` in the [backend] section of the config file"
        ));
    };
    let Some(value) = file.get(key) else {
        return Outcome {
            response: Response::NotFound,
            decision: Decision::NotFound,
        };
    };
    found(name, key, value)
}

/// Resolves a `vault:` reference for variable `name`.
async fn look_up_vault(backends: &Backends, name: &str, reference: &Reference) -> Outcome {
    let Some(vault) = &backends.vault else {
        return Outcome::error(format!(
            "{name}: vault: references need the Vault backend, which this agent does not have; \
             set VAULT_ADDR (and VAULT_TOKEN) or add a [vault] table to the config file"
        ));
    };
    match vault.resolve(reference).await {
        Ok(value) => found(name, reference.key(), value),
        Err(err) => Outcome::error(format!("{name}: {err}")),
    }
}

/// Returns the found response for `value`, or an error when it is too long for a response.
pub(crate) fn found(name: &str, key: &str, value: SecretBytes) -> Outcome {
    if value.len() > MAX_PAYLOAD_LEN {
        return Outcome::error(format!(
            "{name}: the value of `{key}` is {} bytes, more than the {MAX_PAYLOAD_LEN} bytes a \
             response can carry",
            value.len()
        ));
    }
    Outcome {
        response: Response::Found(value),
        decision: Decision::Found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Fixture {
        _dir: tempfile::TempDir,
        backends: Backends,
        status: StatusReporter,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        let long = "x".repeat(MAX_PAYLOAD_LEN + 1);
        std::fs::write(
            &path,
            format!(r#"{{"API_KEY": "k-123", "LONG": "{long}", "ÜBER": "u"}}"#),
        )
        .unwrap();
        let backends = Backends {
            file: Some(FileBackend::open(&path).unwrap()),
            vault: None,
            http: None,
            kube: None,
        };
        let status =
            StatusReporter::new(PathBuf::from("/run/agent.sock"), backends.clone(), "local");
        Fixture {
            _dir: dir,
            backends,
            status,
        }
    }

    fn v2(key: &[u8], value: &[u8]) -> Request {
        Request::V2 {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn answer(fixture: &Fixture, request: Request) -> (Response, Decision) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let outcome = runtime.block_on(handle(&request, &fixture.backends, &fixture.status));
        (outcome.response, outcome.decision)
    }

    fn error_text(response: Response) -> String {
        match response {
            Response::Error(reason) => reason,
            other => panic!("expected an error response, got {other:?}"),
        }
    }

    #[test]
    fn v2_local_reference_found() {
        let f = fixture();
        let (response, decision) = answer(&f, v2(b"TOKEN", b"envproxy:API_KEY"));
        assert_eq!(response, Response::Found(SecretBytes::from("k-123")));
        assert_eq!(decision, Decision::Found);
    }

    #[test]
    fn v2_local_reference_not_found() {
        let f = fixture();
        let (response, decision) = answer(&f, v2(b"TOKEN", b"envproxy:MISSING"));
        assert_eq!(response, Response::NotFound);
        assert_eq!(decision, Decision::NotFound);
    }

    #[test]
    fn v2_plain_value_passes_through() {
        let f = fixture();
        for value in [&b"/usr/bin"[..], b"", b"\xff\xfe", b"VAULT:x", b"envproxy"] {
            let (response, decision) = answer(&f, v2(b"PATH", value));
            assert_eq!(response, Response::Passthrough, "{value:?}");
            assert_eq!(decision, Decision::Passthrough);
        }
    }

    #[test]
    fn v2_vault_reference_needs_vault_backend() {
        let f = fixture();
        let (response, _) = answer(&f, v2(b"DB_URL", b"vault:secret/data/app#db"));
        let reason = error_text(response);
        assert!(
            reason.starts_with("DB_URL: vault: references need the Vault backend"),
            "{reason}"
        );
        assert!(reason.contains("VAULT_ADDR"), "{reason}");
    }

    #[test]
    fn local_reference_without_file_is_error() {
        let mut f = fixture();
        f.backends.file = None;
        for request in [
            v2(b"TOKEN", b"envproxy:API_KEY"),
            Request::V1 {
                key: b"API_KEY".to_vec(),
            },
        ] {
            let (response, decision) = answer(&f, request);
            assert_eq!(decision, Decision::Error);
            let reason = error_text(response);
            assert!(reason.contains("no secrets file is configured"), "{reason}");
            assert!(reason.contains("`API_KEY`"), "{reason}");
        }
    }

    #[test]
    fn v2_malformed_reference_names_variable() {
        let f = fixture();
        let (response, decision) = answer(&f, v2(b"DB_URL", b"vault:secret/data/app"));
        assert_eq!(decision, Decision::Error);
        assert_eq!(
            error_text(response),
            "DB_URL: invalid reference: the Vault path `secret/data/app` has no `#<key>` part \
             (expected `vault:<path>#<key>`)"
        );
        let (response, _) = answer(&f, v2(b"K", b"envproxy:"));
        assert_eq!(
            error_text(response),
            "K: invalid reference: the key after `envproxy:` is empty"
        );
    }

    #[test]
    fn invalid_utf8_is_named() {
        let f = fixture();
        let (response, _) = answer(&f, v2(b"K\xff", b"envproxy:API_KEY"));
        assert_eq!(error_text(response), "the variable name is not valid UTF-8");
        let (response, _) = answer(&f, v2(b"K", b"envproxy:\xff"));
        assert_eq!(error_text(response), "K: the reference is not valid UTF-8");
        let (response, _) = answer(
            &f,
            Request::V1 {
                key: b"\xc3".to_vec(),
            },
        );
        assert_eq!(error_text(response), "the variable name is not valid UTF-8");
    }

    #[test]
    fn v1_bare_name_lookup() {
        let f = fixture();
        let (response, _) = answer(
            &f,
            Request::V1 {
                key: b"API_KEY".to_vec(),
            },
        );
        assert_eq!(response, Response::Found(SecretBytes::from("k-123")));
        let (response, _) = answer(
            &f,
            Request::V1 {
                key: "ÜBER".as_bytes().to_vec(),
            },
        );
        assert_eq!(response, Response::Found(SecretBytes::from("u")));
        let (response, _) = answer(
            &f,
            Request::V1 {
                key: b"NOPE".to_vec(),
            },
        );
        assert_eq!(response, Response::NotFound);
    }

    #[test]
    fn oversized_value_is_error_without_value() {
        let f = fixture();
        let (response, _) = answer(
            &f,
            Request::V1 {
                key: b"LONG".to_vec(),
            },
        );
        let reason = error_text(response);
        assert!(reason.contains("65536 bytes"), "{reason}");
        assert!(!reason.contains("xxxx"), "{reason}");
    }

    #[test]
    fn status_lists_names_not_values() {
        let f = fixture();
        let (response, decision) = answer(&f, Request::Status);
        assert_eq!(decision, Decision::Status);
        let Response::Found(payload) = response else {
            panic!("expected a found response");
        };
        let text = String::from_utf8(payload.expose_secret().to_vec()).unwrap();
        assert!(text.contains("\"API_KEY\""), "{text}");
        assert!(!text.contains("k-123"), "{text}");
    }
}
