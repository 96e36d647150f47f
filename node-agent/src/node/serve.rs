//! Requests in node mode: who is calling, may it read this reference, and the read itself.
//!
//! Each connection is pinned to its peer process at accept (pidfd). At the first request the
//! process's cgroup names its pod and container, which the pod watch resolves. Every request is
//! then checked against that pod's annotations and spec, and `vault:` references are read
//! with the pod's own Vault identity, after the connection has presented that pod's projected
//! service account token.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envproxy_proto::{has_known_scheme, Reference, Request, Response, SecretBytes};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use zeroize::Zeroizing;

use super::annotations::{self, PodSettings};
use super::caller::{BootTime, Caller};
use super::identities::{Identities, Identity, LatestJwt};
use super::pods::PodWatch;
use super::policy;
use super::policy::Denial;
use super::proc_root;
use super::settings::{NodeSettings, TokenSource, TOKEN_REQUEST_LIFETIME_SECS};
use super::token_claims::{self, ExpectedIdentity};
use crate::admin::audit;
use crate::backend::FileBackend;
use crate::handler::{found, Decision, Outcome};
use crate::status::StatusReporter;
use crate::vault::{SecretText, VaultSettings};

/// The largest projected token file the agent reads. Real tokens are about 1 KiB.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// A stored token this close to its expiry is replaced by the caller's current one.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// State that every node-mode connection shares.
pub(crate) struct NodeContext {
    pub settings: NodeSettings,
    /// The kube API client, for TokenRequest when that token source is configured.
    pub kube: kube::Client,
    pub pods: PodWatch,
    /// Address, TLS and timeouts for Vault; each identity logs in with its own role.
    pub vault: Option<VaultSettings>,
    pub identities: Identities,
    /// A node-wide secrets file for `envproxy:` references and v1 requests, set only when the
    /// operator configures one.
    pub file: Option<FileBackend>,
    /// The agent's effective uid. Callers of this uid outside any pod may read the status.
    pub agent_uid: u32,
}

/// The pod and container of a connection's process, with the pod's settings.
struct Attested {
    pod: Arc<Pod>,
    pod_uid: String,
    container: String,
    settings: PodSettings,
}

/// One connection's caller, attested at its first request.
pub(crate) struct NodeConnection {
    caller: Result<Caller, String>,
    attested: Option<Arc<Attested>>,
    /// Identities whose token this connection's process presented and the agent checked.
    checked: HashSet<Identity>,
}

impl NodeConnection {
    /// Pins the peer of `stream`, which was accepted at `accepted_at`.
    pub fn new(stream: &tokio::net::UnixStream, accepted_at: BootTime) -> NodeConnection {
        let caller = Caller::from_socket(stream, accepted_at).map_err(|err| err.to_string());
        if let Err(reason) = &caller {
            tracing::warn!(%reason, "cannot identify the caller of a new connection");
        }
        NodeConnection {
            caller,
            attested: None,
            checked: HashSet::new(),
        }
    }

    /// Returns the caller's pid, or 0 when it could not be identified.
    pub fn pid(&self) -> i32 {
        self.caller.as_ref().map_or(0, Caller::pid)
    }
}

/// A refusal: the response text and the reason recorded in the log line.
struct Denied {
    reason: &'static str,
    message: String,
}

impl Denied {
    fn new(reason: &'static str, message: String) -> Denied {
        Denied { reason, message }
    }
}

/// Builds the response to `request` from the process behind `connection`.
pub(crate) async fn handle(
    context: &NodeContext,
    connection: &mut NodeConnection,
    request: &Request,
    status: &StatusReporter,
) -> Outcome {
    let (name, value) = match request {
        Request::Status => return status_outcome(context, connection, status),
        Request::V1 { key } => (key.as_slice(), None),
        Request::V2 { key, value } => (key.as_slice(), Some(value.as_slice())),
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return Outcome::error("the variable name is not valid UTF-8".to_string());
    };
    if let Some(value) = value {
        if !has_known_scheme(value) {
            return Outcome {
                response: Response::Passthrough,
                decision: Decision::Passthrough,
            };
        }
    }
    let attested = match attest(context, connection).await {
        Ok(attested) => attested,
        Err(denied) => return deny(connection, None, name, denied),
    };
    audit::note_workload(&attested.pod, &attested.pod_uid, &attested.container);
    let Some(value) = value else {
        return v1_lookup(context, &attested, connection, name);
    };
    let Ok(text) = std::str::from_utf8(value) else {
        return Outcome::error(format!("{name}: the reference is not valid UTF-8"));
    };
    let reference = match Reference::parse(text) {
        Ok(reference) => reference,
        Err(err) => return Outcome::error(format!("{name}: invalid reference: {err}")),
    };
    if let Err(denial) = policy::authorize(
        &attested.pod,
        &attested.container,
        name,
        text,
        &attested.settings,
    ) {
        return deny(
            connection,
            Some(&attested),
            name,
            policy_denial(name, &denial),
        );
    }
    match reference {
        Reference::Local { key } => file_lookup(context, name, &key),
        reference => match vault_lookup(context, connection, &attested, name, &reference).await {
            Ok(outcome) => outcome,
            Err(denied) => deny(connection, Some(&attested), name, denied),
        },
    }
}

/// Builds the response to a status request, served only to the agent's own user outside any
/// pod, such as an operator on the node, because the status names the node's workloads.
fn status_outcome(
    context: &NodeContext,
    connection: &NodeConnection,
    status: &StatusReporter,
) -> Outcome {
    let allowed = match &connection.caller {
        Ok(caller) => caller.uid() == context.agent_uid && matches!(caller.pod(), Ok(None)),
        Err(_) => false,
    };
    if !allowed {
        return Outcome::error(
            "permission denied: in node mode the status is served only to the agent's user \
             outside any pod; use `envproxy status` on the node as that user"
                .to_string(),
        );
    }
    Outcome {
        response: Response::Found(SecretBytes::new(status.payload())),
        decision: Decision::Status,
    }
}

/// Finds the connection's pod and container, once per connection, and checks on every request
/// that the pod still runs on this node.
async fn attest(
    context: &NodeContext,
    connection: &mut NodeConnection,
) -> Result<Arc<Attested>, Denied> {
    match &connection.attested {
        Some(attested) => still_on_node(context, attested).await,
        None => {
            let attested = attest_first(context, connection).await?;
            connection.attested = Some(Arc::clone(&attested));
            Ok(attested)
        }
    }
}

/// Returns `attested` while its pod is still in the watch of this node.
async fn still_on_node(
    context: &NodeContext,
    attested: &Arc<Attested>,
) -> Result<Arc<Attested>, Denied> {
    let present = context
        .pods
        .pod_by_uid(&attested.pod_uid, Duration::ZERO)
        .await
        .is_some();
    if !present {
        return Err(Denied::new(
            "pod_deleted",
            format!(
                "permission denied: pod {} was deleted; its processes are no longer served",
                pod_name(&attested.pod)
            ),
        ));
    }
    Ok(Arc::clone(attested))
}

/// Attests the caller of a connection at its first request: its cgroup, pod, container and the
/// pod's opt-in and settings.
async fn attest_first(
    context: &NodeContext,
    connection: &NodeConnection,
) -> Result<Arc<Attested>, Denied> {
    let caller = connection.caller.as_ref().map_err(|reason| {
        Denied::new(
            "caller_unknown",
            format!("permission denied: the agent cannot identify the calling process: {reason}"),
        )
    })?;
    let pod_container = caller
        .pod()
        .map_err(|err| {
            Denied::new(
                "caller_unknown",
                format!("permission denied: the agent cannot read the caller's cgroup: {err}"),
            )
        })?
        .ok_or_else(|| {
            Denied::new(
                "outside_pod",
                format!(
                    "permission denied: pid {} runs outside any Kubernetes pod, and node mode \
                     serves only processes of pods on this node",
                    caller.pid()
                ),
            )
        })?;
    let wait = context.settings.pod_wait;
    let entry = context
        .pods
        .pod_by_uid(&pod_container.pod_uid, wait)
        .await
        .ok_or_else(|| {
            Denied::new(
                "pod_unknown",
                format!(
                    "permission denied: pod UID {} is not among the pods the agent watches on \
                     node {} (waited {} ms); if the pod just started, retry",
                    pod_container.pod_uid,
                    context.settings.node_name,
                    wait.as_millis()
                ),
            )
        })?;
    let Some(container_id) = pod_container.container_id.as_deref() else {
        return Err(Denied::new(
            "container_unknown",
            format!(
                "permission denied: pid {} runs in the cgroup of pod {} but in no container of it",
                caller.pid(),
                pod_name(&entry.pod)
            ),
        ));
    };
    let (entry, container) = context
        .pods
        .container(&pod_container.pod_uid, container_id, wait)
        .await
        .ok_or_else(|| {
            Denied::new(
                "container_unknown",
                format!(
                    "permission denied: container ID {container_id} is not in the status of pod \
                     {} (waited {} ms); if the container just started, retry",
                    pod_name(&entry.pod),
                    wait.as_millis()
                ),
            )
        })?;
    let opted_in = annotations::is_opted_in(&entry.pod).map_err(|source| {
        policy_denial_plain(&Denial::BadAnnotation {
            pod: pod_name(&entry.pod),
            source,
        })
    })?;
    if !opted_in {
        return Err(policy_denial_plain(&Denial::NotOptedIn {
            pod: pod_name(&entry.pod),
        }));
    }
    let settings = PodSettings::from_pod(&entry.pod, &context.settings.vault_addr_allowlist)
        .map_err(|source| {
            policy_denial_plain(&Denial::BadAnnotation {
                pod: pod_name(&entry.pod),
                source,
            })
        })?;
    Ok(Arc::new(Attested {
        pod: Arc::clone(&entry.pod),
        pod_uid: pod_container.pod_uid,
        container,
        settings,
    }))
}

/// Serves a v1 request (a bare name) from the node-wide secrets file, when one is configured.
fn v1_lookup(
    context: &NodeContext,
    attested: &Attested,
    connection: &NodeConnection,
    name: &str,
) -> Outcome {
    if context.file.is_none() {
        return Outcome {
            response: Response::NotFound,
            decision: Decision::NotFound,
        };
    }
    if !attested.settings.containers.selects(&attested.container) {
        let denial = Denial::ContainerNotSelected {
            pod: pod_name(&attested.pod),
            container: attested.container.clone(),
            selected: attested
                .pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(annotations::CONTAINERS))
                .cloned()
                .unwrap_or_default(),
        };
        return deny(
            connection,
            Some(attested),
            name,
            policy_denial(name, &denial),
        );
    }
    file_lookup(context, name, name)
}

fn file_lookup(context: &NodeContext, name: &str, key: &str) -> Outcome {
    let Some(file) = &context.file else {
        return Outcome::error(format!(
            "{name}: envproxy: references are not served in node mode unless the operator \
             configures a node-wide secrets file ([backend] path); use a vault: reference"
        ));
    };
    match file.get(key) {
        Some(value) => found(name, key, value),
        None => Outcome {
            response: Response::NotFound,
            decision: Decision::NotFound,
        },
    }
}

/// Reads a `vault:` reference with the identity of the attested pod.
async fn vault_lookup(
    context: &NodeContext,
    connection: &mut NodeConnection,
    attested: &Attested,
    name: &str,
    reference: &Reference,
) -> Result<Outcome, Denied> {
    let Some(base) = &context.vault else {
        return Ok(Outcome::error(format!(
            "{name}: vault: references need Vault, which this agent does not have; the operator \
             sets it in the [vault] table of the agent's config"
        )));
    };
    let identity = identity_of(attested, base);
    let pod_uid = attested.pod_uid.clone();

    // The connection presents the pod's token once per identity, even when the identity is
    // already logged in, so that a process never reads with a session its own pod's token
    // would not have opened.
    let needs_token = !connection.checked.contains(&identity);
    let token = if needs_token {
        Some(checked_token(context, connection, attested).await?)
    } else {
        None
    };
    let store_token = |jwt: &LatestJwt| {
        if let Some((token, expires_at)) = &token {
            jwt.set(
                SecretText::new(token.expose_secret().to_string()),
                *expires_at,
            );
        }
        Ok(())
    };
    let session = context
        .identities
        .session(&identity, &pod_uid, base, store_token)
        .await
        .map_err(|reason| Denied::new("vault_setup", format!("{name}: {reason}")))?;
    match token {
        Some((token, expires_at)) => {
            if !session.jwt.is_fresh(TOKEN_REFRESH_MARGIN) {
                session.jwt.set(token, expires_at);
            }
            connection.checked.insert(identity);
        }
        // The kubelet rotates projected tokens, so the stored one can near its expiry while
        // this connection stays open; the caller's current token replaces it for the next
        // login.
        None if !session.jwt.is_fresh(TOKEN_REFRESH_MARGIN) => {
            let (token, expires_at) = checked_token(context, connection, attested).await?;
            session.jwt.set(token, expires_at);
        }
        None => {}
    }
    Ok(match session.backend.resolve(reference).await {
        Ok(value) => found(name, reference.key(), value),
        Err(err) => Outcome::error(format!("{name}: {err}")),
    })
}

/// Reads the projected token from the caller's container and checks that it belongs to the
/// attested pod. Returns the token and its expiry.
/// Returns a service account token of the attested pod, from the configured source, after
/// checking its claims against the pod. Returns the token and its expiry.
async fn checked_token(
    context: &NodeContext,
    connection: &NodeConnection,
    attested: &Attested,
) -> Result<(SecretText, SystemTime), Denied> {
    let bytes = match context.settings.token_source {
        TokenSource::Projected => read_projected_token(context, connection, attested)?,
        TokenSource::TokenRequest => request_token(context, attested).await?,
    };
    let mismatch = |err: token_claims::TokenClaimsError| {
        Denied::new(
            "token_mismatch",
            format!(
                "permission denied: the service account token in container {} of pod {} does \
                 not belong to that pod: {err}",
                attested.container,
                pod_name(&attested.pod)
            ),
        )
    };
    let expected = ExpectedIdentity::from_pod(&attested.pod, &context.settings.token_audience)
        .map_err(mismatch)?;
    let claims =
        token_claims::check_token(&bytes, &expected, SystemTime::now()).map_err(mismatch)?;
    // `check_token` accepted the bytes, so they are a JWT of ASCII characters.
    let jwt = String::from_utf8_lossy(&bytes).trim().to_string();
    Ok((SecretText::new(jwt), claims.expires_at))
}

/// Reads the projected token from the caller's container.
fn read_projected_token(
    context: &NodeContext,
    connection: &NodeConnection,
    attested: &Attested,
) -> Result<Zeroizing<Vec<u8>>, Denied> {
    let caller = connection.caller.as_ref().map_err(|reason| {
        Denied::new(
            "caller_unknown",
            format!("cannot identify the caller: {reason}"),
        )
    })?;
    let path = &context.settings.token_path;
    let bytes = proc_root::read_file_in_root(caller, path, MAX_TOKEN_LEN).map_err(|err| {
        Denied::new(
            "token_unreadable",
            format!(
                "permission denied: the projected service account token is not readable in \
                 container {} of pod {} ({err}); the EnvProxy webhook mounts it at {} for pods \
                 with envproxy.dev/inject: \"true\"",
                attested.container,
                pod_name(&attested.pod),
                path.display()
            ),
        )
    })?;
    Ok(bytes)
}

/// Requests a token of the attested pod's service account, bound to the pod, through the
/// TokenRequest API.
async fn request_token(
    context: &NodeContext,
    attested: &Attested,
) -> Result<Zeroizing<Vec<u8>>, Denied> {
    let pod = &attested.pod;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let account = service_account(pod);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![context.settings.token_audience.clone()]),
            expiration_seconds: Some(TOKEN_REQUEST_LIFETIME_SECS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("Pod".to_string()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..TokenRequest::default()
    };
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(context.kube.clone(), namespace);
    let response = api
        .create_token_request(account, &kube::api::PostParams::default(), &request)
        .await
        .map_err(|err| {
            Denied::new(
                "token_request_failed",
                format!(
                    "the agent cannot request a token of service account {namespace}/{account} \
                     for pod {} through the TokenRequest API: {err}; the agent's service \
                     account needs create on serviceaccounts/token",
                    pod_name(pod)
                ),
            )
        })?;
    let token = response
        .status
        .and_then(|status| status.token)
        .unwrap_or_default();
    if token.is_empty() {
        return Err(Denied::new(
            "token_request_failed",
            format!(
                "the TokenRequest API returned no token for service account \
                 {namespace}/{account}"
            ),
        ));
    }
    Ok(Zeroizing::new(token.into_bytes()))
}

fn identity_of(attested: &Attested, base: &VaultSettings) -> Identity {
    let settings = &attested.settings;
    Identity {
        vault_address: settings
            .vault_addr
            .clone()
            .unwrap_or_else(|| base.address.clone()),
        vault_namespace: base.namespace.clone(),
        namespace: attested.pod.metadata.namespace.clone().unwrap_or_default(),
        service_account: service_account(&attested.pod).to_string(),
        auth_mount: settings.vault_auth_mount.clone(),
        role: settings.vault_role.clone(),
        cache_ttl: settings.vault_cache_ttl,
    }
}

/// Turns a policy denial of variable `name` into a refusal.
fn policy_denial(name: &str, denial: &Denial) -> Denied {
    Denied::new(
        denial.reason().as_str(),
        format!("{name}: permission denied: {denial}"),
    )
}

/// Turns a policy denial that concerns the whole pod into a refusal.
fn policy_denial_plain(denial: &Denial) -> Denied {
    Denied::new(
        denial.reason().as_str(),
        format!("permission denied: {denial}"),
    )
}

fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|name| !name.is_empty())
        .unwrap_or("default")
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Logs a denial with the pod, container, variable name and reason, and builds its response.
fn deny(
    connection: &NodeConnection,
    attested: Option<&Attested>,
    name: &str,
    denied: Denied,
) -> Outcome {
    tracing::warn!(
        pid = connection.pid(),
        pod = attested.map(|attested| pod_name(&attested.pod)),
        container = attested.map(|attested| attested.container.as_str()),
        variable = name,
        reason = denied.reason,
        "request denied"
    );
    audit::note_denial(denied.reason);
    Outcome {
        response: Response::error(denied.message),
        decision: Decision::Denied,
    }
}
