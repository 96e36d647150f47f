//! `k8s:` references in node mode, read as the calling pod: with the service account token
//! the kubelet mounted in the caller's container, checked against the attested pod, as the
//! bearer token of the read. Kubernetes RBAC then decides what the pod may read, and the
//! agent's own service account needs no permission on Secrets.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::SystemTime;

use super::{
    found, pod_name, service_account, Attested, Denied, NodeConnection, NodeContext, Outcome,
    MAX_TOKEN_LEN, TOKEN_REFRESH_MARGIN,
};
use crate::kube_secrets::{KubeSecretError, PodBearer};
use crate::node::proc_root::{self, ProcRootError};
use crate::node::token_claims::{self, ExpectedIdentity};
use crate::vault::SecretText;

/// A pod's checked token, kept in the connection's memo until it nears its expiry.
pub(super) struct CheckedBearer {
    bearer: Arc<PodBearer>,
    expires_at: SystemTime,
}

/// Reads key `key` of Secret `secret` in `namespace` (the pod's own when `None`) as the pod
/// of `attested`.
pub(super) async fn kube_lookup(
    context: &NodeContext,
    connection: &mut NodeConnection,
    attested: &Arc<Attested>,
    name: &str,
    (namespace, secret, key): (Option<&str>, &str, &str),
) -> Result<Outcome, Denied> {
    let bearer = pod_bearer(context, connection, attested).await?;
    Ok(
        match context
            .kube_secrets
            .value_as(&bearer, namespace, secret, key)
            .await
        {
            Ok(value) => found(name, key, value),
            Err(err) => {
                let log = |level_is_warn: bool| {
                    if level_is_warn {
                        tracing::warn!(
                            pid = connection.pid(),
                            pod = %pod_name(&attested.pod),
                            container = %attested.container,
                            variable = name,
                            %err,
                            "Secret read rejected by the API server"
                        );
                    } else {
                        tracing::debug!(
                            pid = connection.pid(),
                            pod = %pod_name(&attested.pod),
                            variable = name,
                            %err,
                            "Secret read failed"
                        );
                    }
                };
                // An operator must fix RBAC or the token mount; other failures are the pod's
                // own references or transient.
                log(matches!(
                    err,
                    KubeSecretError::Forbidden { .. } | KubeSecretError::Unauthorized { .. }
                ));
                Outcome::error(format!("{name}: {err}"))
            }
        },
    )
}

/// Returns the connection's checked token, reading it from the caller's container at the
/// first `k8s:` reference and again when it nears its expiry (the kubelet rotates it).
async fn pod_bearer(
    context: &NodeContext,
    connection: &mut NodeConnection,
    attested: &Arc<Attested>,
) -> Result<Arc<PodBearer>, Denied> {
    let fresh_until = SystemTime::now() + TOKEN_REFRESH_MARGIN;
    if let Some(checked) = &connection.memo(attested).kube_bearer {
        if checked.expires_at > fresh_until {
            return Ok(Arc::clone(&checked.bearer));
        }
    }

    let bytes = read_kube_token(context, connection, attested)?;
    let mismatch = |err: token_claims::TokenClaimsError| {
        Denied::new(
            "token_mismatch",
            format!(
                "permission denied: the service account token at {} in container {} of pod {} \
                 is not valid for that pod: {err}",
                context.settings.kube_token_path.display(),
                attested.container,
                pod_name(&attested.pod)
            ),
        )
    };
    let now = SystemTime::now();
    let checked_tokens = &context.checked_kube_tokens;
    let expires_at = match checked_tokens.expiry(&attested.pod_uid, &bytes, now) {
        Some(expires_at) => expires_at,
        None => {
            // The audience is the API server's, which the API server checks itself.
            let expected = ExpectedIdentity::from_pod(&attested.pod, "").map_err(mismatch)?;
            let claims =
                token_claims::check_api_server_token(&bytes, &expected, now).map_err(mismatch)?;
            checked_tokens.remember(&attested.pod_uid, &bytes, claims.expires_at);
            claims.expires_at
        }
    };

    let namespace = attested.pod.metadata.namespace.clone().unwrap_or_default();
    // The claims check accepted the bytes, so they are a JWT of ASCII characters.
    let token = String::from_utf8_lossy(&bytes).trim().to_string();
    let bearer = Arc::new(PodBearer {
        identity: format!(
            "system:serviceaccount:{namespace}:{}",
            service_account(&attested.pod)
        ),
        namespace,
        token: SecretText::new(token),
    });
    connection.memo(attested).kube_bearer = Some(CheckedBearer {
        bearer: Arc::clone(&bearer),
        expires_at,
    });
    Ok(bearer)
}

/// Reads the API server token from the caller's container. A missing file gets its own
/// denial, because it means the pod opted out of the token mount.
fn read_kube_token(
    context: &NodeContext,
    connection: &NodeConnection,
    attested: &Attested,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Denied> {
    let path = &context.settings.kube_token_path;
    proc_root::read_file_in_root(&connection.caller, path, MAX_TOKEN_LEN).map_err(|err| {
        let missing = matches!(
            &err,
            ProcRootError::Open { source, .. } if source.kind() == ErrorKind::NotFound
        );
        if missing {
            Denied::new(
                "kube_token_not_mounted",
                format!(
                    "permission denied: k8s: references are read with the pod's own service \
                     account token, but container {} of pod {} has no token at {}; remove \
                     automountServiceAccountToken: false from the pod or its service account, \
                     or mount a projected serviceAccountToken volume there",
                    attested.container,
                    pod_name(&attested.pod),
                    path.display()
                ),
            )
        } else {
            Denied::new(
                "token_unreadable",
                format!(
                    "permission denied: the service account token is not readable in container \
                     {} of pod {} ({err})",
                    attested.container,
                    pod_name(&attested.pod)
                ),
            )
        }
    })
}
