//! The kube client of the Secret backend and one read of a Secret.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envproxy_proto::SecretBytes;
use k8s_openapi::api::core::v1::Secret;
use kube::api::GetParams;

use super::error::KubeSecretError;
use super::settings::KubeSettings;
use super::SecretData;
use crate::http_backend::error_chain;
use crate::value_cache::Fetched;
use crate::vault::SecretText;

/// A kube client and what reads through it are made as.
pub(crate) struct Connection {
    pub client: kube::Client,
    /// The API server's URL, for messages and the status.
    pub server: String,
    /// The kubeconfig context's namespace (`default` when it names none).
    pub default_namespace: String,
    /// The cache identity of reads without a bearer token: `kubeconfig`.
    pub identity: Arc<str>,
}

/// One read: the Secret and who reads it.
pub(crate) struct Read<'a> {
    pub identity: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub timeout: Duration,
}

impl Connection {
    /// Builds a client from `kubeconfig` in the settings, else from `KUBECONFIG` or
    /// `~/.kube/config`, else from the in-cluster config.
    pub(crate) async fn from_kubeconfig(
        settings: &KubeSettings,
    ) -> Result<Connection, KubeSecretError> {
        let client_error = |reason: String| KubeSecretError::Client { reason };
        let mut config = match &settings.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|err| client_error(format!("{}: {err}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|err| client_error(format!("{}: {err}", path.display())))?
            }
            None => kube::Config::infer().await.map_err(|err| {
                client_error(format!(
                    "{err}; k8s: references need a kubeconfig (KUBECONFIG or ~/.kube/config) \
                     or [backend] kubeconfig"
                ))
            })?,
        };
        // A read is bounded by its own timeout; kube's retries of 429 and 5xx would hide an
        // outage behind minutes of retries.
        config.default_retry = false;
        Connection::new(config, "kubeconfig")
    }

    /// Builds a client for the API server of `config` with its credentials removed, for
    /// reads that each carry a pod's token.
    pub(crate) fn without_credentials(
        mut config: kube::Config,
    ) -> Result<Connection, KubeSecretError> {
        config.auth_info = Default::default();
        config.default_retry = false;
        Connection::new(config, "calling pod")
    }

    fn new(config: kube::Config, identity: &str) -> Result<Connection, KubeSecretError> {
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let default_namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).map_err(|err| KubeSecretError::Client {
            reason: format!("{server}: {err}"),
        })?;
        Ok(Connection {
            client,
            server,
            default_namespace,
            identity: Arc::from(identity),
        })
    }

    /// Sends `GET /api/v1/namespaces/<namespace>/secrets/<name>`, with `token` as the bearer
    /// token when set, and turns the response into the Secret's data, "not found" or an
    /// error.
    pub(crate) async fn fetch(
        &self,
        read: &Read<'_>,
        token: Option<&SecretText>,
    ) -> Result<Fetched<SecretData>, KubeSecretError> {
        let path = format!("/api/v1/namespaces/{}/secrets", read.namespace);
        let mut request = kube::core::Request::new(path)
            .get(read.name, &GetParams::default())
            .map_err(|err| KubeSecretError::Client {
                reason: format!("cannot build the request: {err}"),
            })?;
        if let Some(token) = token {
            let header = format!("Bearer {}", token.expose_secret());
            let mut value =
                http::HeaderValue::from_str(&header).map_err(|_| KubeSecretError::Client {
                    reason: "the service account token contains characters that are not \
                             valid in an HTTP header"
                        .to_string(),
                })?;
            value.set_sensitive(true);
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        let response =
            tokio::time::timeout(read.timeout, self.client.request::<Secret>(request)).await;
        let unavailable = |reason: String| KubeSecretError::Unavailable {
            server: self.server.clone(),
            namespace: read.namespace.to_string(),
            secret: read.name.to_string(),
            reason,
        };
        let result = match response {
            Err(_) => {
                return Err(unavailable(format!(
                    "no response within {} ms",
                    read.timeout.as_millis()
                )))
            }
            Ok(result) => result,
        };
        let status = match result {
            Ok(secret) => {
                return Ok(Fetched {
                    value: Some(secret_data(secret)),
                    ttl: None,
                })
            }
            Err(kube::Error::Api(status)) => status,
            Err(kube::Error::SerdeError(err)) => {
                return Err(KubeSecretError::Rejected {
                    server: self.server.clone(),
                    namespace: read.namespace.to_string(),
                    secret: read.name.to_string(),
                    code: 200,
                    reason: "invalid body".to_string(),
                    message: format!("the response is not a Secret: {err}"),
                })
            }
            Err(err) => return Err(unavailable(error_chain(&err))),
        };
        match status.code {
            404 => Ok(Fetched {
                value: None,
                ttl: None,
            }),
            401 => Err(KubeSecretError::Unauthorized {
                server: self.server.clone(),
                namespace: read.namespace.to_string(),
                secret: read.name.to_string(),
                identity: read.identity.to_string(),
            }),
            403 => Err(KubeSecretError::Forbidden {
                namespace: read.namespace.to_string(),
                secret: read.name.to_string(),
                identity: read.identity.to_string(),
                message: status.message.clone(),
            }),
            code if code == 429 || code >= 500 => Err(unavailable(format!(
                "HTTP {code} {}: {}",
                status.reason, status.message
            ))),
            code => Err(KubeSecretError::Rejected {
                server: self.server.clone(),
                namespace: read.namespace.to_string(),
                secret: read.name.to_string(),
                code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            }),
        }
    }
}

/// Takes the decoded `data` of `secret`. The API server merges `stringData` into `data` on
/// write and never returns it, so `data` contains every key.
pub(crate) fn secret_data(mut secret: Secret) -> SecretData {
    let data = secret.data.take().unwrap_or_default();
    let values: BTreeMap<String, SecretBytes> = data
        .into_iter()
        .map(|(key, bytes)| (key, SecretBytes::new(bytes.0)))
        .collect();
    SecretData(values)
}
