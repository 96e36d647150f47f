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
    /// Whom reads without a bearer token are made as, for messages, such as
    /// "kubeconfig user `alice` (context `dev`)".
    pub user: String,
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
        let kubeconfig = match &settings.kubeconfig {
            Some(path) => kube::config::Kubeconfig::read_from(path)
                .map_err(|err| client_error(format!("{}: {err}", path.display())))?,
            None => match kube::config::Kubeconfig::read() {
                Ok(kubeconfig) => kubeconfig,
                Err(kubeconfig_error) => return Connection::in_cluster(settings, kubeconfig_error),
            },
        };
        let user = describe_user(&kubeconfig);
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|err| match &settings.kubeconfig {
                Some(path) => client_error(format!("{}: {err}", path.display())),
                None => client_error(err.to_string()),
            })?;
        // A read is bounded by its own timeout; kube's retries of 429 and 5xx would hide an
        // outage behind minutes of retries.
        config.default_retry = false;
        Connection::new(config, "kubeconfig", user)
    }

    /// Builds a client from the in-cluster config, when no kubeconfig can be read.
    fn in_cluster(
        settings: &KubeSettings,
        kubeconfig_error: kube::config::KubeconfigError,
    ) -> Result<Connection, KubeSecretError> {
        let Ok(mut config) = kube::Config::incluster() else {
            // `kubeconfig` is a key of `[backend]` only with `type = "kubernetes"`, which is
            // the only case where these settings name the default Secret.
            let hint = if settings.secret_name.is_some() {
                "set `kubeconfig` in [backend], set KUBECONFIG, or create ~/.kube/config"
            } else {
                "set KUBECONFIG to a kubeconfig file or create ~/.kube/config \
                 (`kubeconfig` in [backend] is read only with type = \"kubernetes\")"
            };
            return Err(KubeSecretError::Client {
                reason: format!(
                    "k8s: references need a kubeconfig, but {kubeconfig_error}, and the agent \
                     is not running in a cluster; {hint}"
                ),
            });
        };
        config.default_retry = false;
        Connection::new(
            config,
            "kubeconfig",
            "the in-cluster service account".to_string(),
        )
    }

    /// Builds a client for the API server of `config` with its credentials removed, for
    /// reads that each carry a pod's token.
    pub(crate) fn without_credentials(
        mut config: kube::Config,
    ) -> Result<Connection, KubeSecretError> {
        config.auth_info = Default::default();
        config.default_retry = false;
        Connection::new(config, "calling pod", "the calling pod".to_string())
    }

    fn new(
        config: kube::Config,
        identity: &str,
        user: String,
    ) -> Result<Connection, KubeSecretError> {
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
            user,
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
                    lease: None,
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
                lease: None,
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

/// Describes the user of the current context of `kubeconfig` for messages.
fn describe_user(kubeconfig: &kube::config::Kubeconfig) -> String {
    let Some(context_name) = kubeconfig.current_context.as_deref() else {
        return "the kubeconfig's user (no current context)".to_string();
    };
    let user = kubeconfig
        .contexts
        .iter()
        .find(|context| context.name == context_name)
        .and_then(|context| context.context.as_ref())
        .and_then(|context| context.user.as_deref());
    match user {
        Some(user) => format!("kubeconfig user `{user}` (context `{context_name}`)"),
        None => format!("the kubeconfig context `{context_name}`"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn missing_kubeconfig_error(settings: &KubeSettings) -> String {
        assert!(
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_none(),
            "this test needs a host outside a Kubernetes pod, so that no in-cluster config exists"
        );
        let error = Connection::in_cluster(settings, kube::config::KubeconfigError::FindPath);
        match error {
            Err(err) => err.to_string(),
            Ok(_) => panic!("an in-cluster config was found"),
        }
    }

    #[test]
    fn missing_kubeconfig_hint_without_default_secret() {
        let message = missing_kubeconfig_error(&KubeSettings::default());
        assert!(message.contains("set KUBECONFIG"), "{message}");
        assert!(
            message.contains("read only with type = \"kubernetes\""),
            "{message}"
        );
        assert!(
            !message.contains("set `kubeconfig` in [backend]"),
            "{message}"
        );
        assert!(!message.contains("(("), "{message}");
        assert!(!message.contains("in-cluster: ("), "{message}");
    }

    #[test]
    fn missing_kubeconfig_hint_with_default_secret() {
        let settings = KubeSettings {
            secret_name: Some("app-env".to_string()),
            ..KubeSettings::default()
        };
        let message = missing_kubeconfig_error(&settings);
        assert!(
            message.contains("set `kubeconfig` in [backend]"),
            "{message}"
        );
    }

    #[test]
    fn kubeconfig_user_described() {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\ncontexts:\n- name: dev\n  \
             context:\n    cluster: c\n    user: alice\n",
        )
        .unwrap();
        assert_eq!(
            describe_user(&kubeconfig),
            "kubeconfig user `alice` (context `dev`)"
        );
    }
}
