//! Requests in node mode: who is calling, may it read this reference, and the read itself.
//!
//! Each connection is pinned to its peer process at accept (pidfd). At the first request the
//! process's cgroup names its pod and container, which the pod watch resolves. Every request is
//! then checked against that pod's annotations and spec, and `vault:` references are read
//! with the pod's own Vault identity, after the connection has presented that pod's projected
//! service account token. `k8s:` references are read with the pod's own API server token
//! (`kube_reads`).

mod kube_reads;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

use envproxy_proto::{has_known_scheme, Reference, Request, Response, SecretBytes};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use zeroize::Zeroizing;

use super::annotations::{self, PodSettings};
use super::caller::{BootTime, Caller};
use super::cgroup::PodContainer;
use super::identities::{Identities, Identity, LatestJwt, Session};
use super::pods::PodWatch;
use super::policy;
use super::policy::Denial;
use super::proc_root;
use super::settings::{NodeSettings, TokenSource, TOKEN_REQUEST_LIFETIME_SECS};
use super::token_claims::{self, ExpectedIdentity};
use crate::admin::audit;
use crate::backend::FileBackend;
use crate::handler::{found, Decision, Outcome};
use crate::kube_secrets::KubeSecrets;
use crate::peer::{peer_closed, Peer};
use crate::refusals::{Refusals, Verdict};
use crate::status::StatusReporter;
use crate::vault::{SecretText, VaultError, VaultSettings};

/// The largest projected token file the agent reads. Real tokens are about 1 KiB.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Most (variable, reference) pairs a connection remembers as allowed. A client that sends
/// more distinct names is checked by the policy on each request instead, so its memory stays
/// bounded.
const MAX_ALLOWED_PAIRS: usize = 1024;
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
    /// Open connections per pod, for `max_connections_per_pod`.
    pub slots: PodSlots,
    /// The last checked token of each pod.
    pub checked_tokens: CheckedTokens,
    /// Kubernetes Secrets, read with each calling pod's token.
    pub kube_secrets: KubeSecrets,
    /// The last checked API server token of each pod, for `k8s:` references.
    pub checked_kube_tokens: CheckedTokens,
    /// Counts and rate-limits the warnings about refused connections.
    pub refusals: Arc<Refusals>,
    /// Counts and rate-limits the warnings about denied requests, per pod and reason.
    pub denials: Arc<Refusals>,
    /// Counts and rate-limits the warnings about failed Vault requests, per pod and error
    /// kind.
    pub failures: Arc<Refusals>,
}

/// The pod and container of a connection's process, with the pod's settings.
struct Attested {
    pod: Arc<Pod>,
    pod_uid: String,
    container: String,
    settings: PodSettings,
}

/// One connection's caller, pinned and placed at accept, attested at its first request.
pub(crate) struct NodeConnection {
    /// The pid `SO_PEERCRED` reported, for logs even when the caller cannot be pinned.
    peer_pid: i32,
    caller: Caller,
    /// The caller's pod and container from its cgroup.
    pod_container: PodContainer,
    attested: Option<Arc<Attested>>,
    /// Results of earlier requests of this connection, for its current attestation.
    memo: Option<Memo>,
    /// Releases the connection's place in its pod's connection count when dropped.
    _slot: PodSlot,
}

/// Memo of a connection for one attestation of its pod, so later requests skip the
/// policy check and the session lookup. It is dropped when the pod's object changes.
struct Memo {
    attested: Arc<Attested>,
    /// (variable name, reference) pairs the policy allowed.
    allowed: HashSet<(String, String)>,
    /// The Vault session of the pod's identity, once the connection presented its token.
    session: Option<Session>,
    /// The pod's API server token, once the connection presented it for a `k8s:` reference.
    kube_bearer: Option<kube_reads::CheckedBearer>,
}

impl NodeConnection {
    /// Returns the memo of `attested`, starting a new one when the attestation changed.
    fn memo(&mut self, attested: &Arc<Attested>) -> &mut Memo {
        let current = self
            .memo
            .as_ref()
            .is_some_and(|memo| Arc::ptr_eq(&memo.attested, attested));
        if !current {
            self.memo = Some(Memo {
                attested: Arc::clone(attested),
                allowed: HashSet::new(),
                session: None,
                kube_bearer: None,
            });
        }
        self.memo.as_mut().expect("the memo was just set")
    }
}

/// A refused connection: the reason sent to the client before the agent closes it.
pub(crate) struct Rejected(pub String);

impl NodeConnection {
    /// Pins the peer of `stream`, accepted at `accepted_at`, and admits it: processes in a pod
    /// of this node, within the pod's connection limit, and the agent's own user outside any
    /// pod (for the status request).
    ///
    /// Refusals are counted in the metrics and logged through `context.refusals`, so a pod that
    /// connects in a loop cannot flood the log.
    pub fn admit(
        context: &NodeContext,
        stream: &tokio::net::UnixStream,
        peer: &Peer,
        accepted_at: BootTime,
    ) -> Result<NodeConnection, Rejected> {
        let peer_pid = peer.pid;
        let uid_source = || format!("uid {}", peer.uid);
        let caller = Caller::from_socket(stream, accepted_at).map_err(|err| {
            if peer_closed(stream) {
                // Nothing to answer: the client is gone, and its process may well be alive.
                context
                    .refusals
                    .refuse(&uid_source(), "closed_before_identified", Instant::now());
                tracing::debug!(
                    pid = peer_pid,
                    %err,
                    "the caller closed its connection before the agent identified it"
                );
                return Rejected(
                    "the connection closed before the agent identified the caller".to_string(),
                );
            }
            let verdict = context
                .refusals
                .refuse(&uid_source(), "unidentified", Instant::now());
            if let Verdict::Log { unlogged } = verdict {
                tracing::warn!(
                    pid = peer_pid,
                    uid = peer.uid,
                    %err,
                    unlogged,
                    "cannot identify the caller of a new connection"
                );
            }
            Rejected(format!(
                "permission denied: the agent cannot identify the calling process: {err}"
            ))
        })?;
        let placed = caller.pod().map_err(|err| {
            let verdict =
                context
                    .refusals
                    .refuse(&uid_source(), "cgroup_unreadable", Instant::now());
            if let Verdict::Log { unlogged } = verdict {
                tracing::warn!(
                    pid = peer_pid,
                    uid = peer.uid,
                    %err,
                    unlogged,
                    "cannot read the cgroup of a new connection's caller"
                );
            }
            Rejected(format!(
                "permission denied: the agent cannot read the caller's cgroup: {err}"
            ))
        })?;
        let pod_container = match placed {
            Some(pod_container) => pod_container,
            None if caller.uid() == context.agent_uid => PodContainer {
                pod_uid: String::new(),
                container_id: None,
            },
            None => {
                context
                    .refusals
                    .refuse(&uid_source(), "outside_pod", Instant::now());
                tracing::debug!(
                    pid = peer_pid,
                    uid = caller.uid(),
                    "refused a caller outside any pod"
                );
                return Err(Rejected(format!(
                    "permission denied: pid {peer_pid} runs outside any Kubernetes pod, and node \
                     mode serves only processes of pods on this node"
                )));
            }
        };
        let limit = context.settings.max_connections_per_pod;
        let slot = context
            .slots
            .take(&pod_container.pod_uid, limit)
            .ok_or_else(|| {
                let verdict = context.refusals.refuse(
                    &pod_container.pod_uid,
                    "pod_connection_limit",
                    Instant::now(),
                );
                if let Verdict::Log { unlogged } = verdict {
                    tracing::warn!(
                        pid = peer_pid,
                        pod_uid = %pod_container.pod_uid,
                        limit,
                        unlogged,
                        "pod reached its connection limit; refused a connection (later refusals \
                         of this pod are counted in envproxy_refused_connections_total and \
                         logged as a summary)"
                    );
                }
                Rejected(format!(
                    "too many connections: pod UID {} already has {limit} open connections to \
                     the agent, the most one pod may hold ([node] max_connections_per_pod)",
                    pod_container.pod_uid
                ))
            })?;
        Ok(NodeConnection {
            peer_pid,
            caller,
            pod_container,
            attested: None,
            memo: None,
            _slot: slot,
        })
    }

    /// Returns the caller's pid.
    pub fn pid(&self) -> i32 {
        self.peer_pid
    }
}

/// Open connections per pod UID (the empty UID stands for the agent's own user outside pods).
#[derive(Default, Clone)]
pub(crate) struct PodSlots {
    open: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One connection's place in its pod's count, given back on drop.
pub(crate) struct PodSlot {
    slots: PodSlots,
    pod_uid: String,
}

impl PodSlots {
    /// Takes a place for pod `pod_uid` unless it already has `limit` connections open.
    fn take(&self, pod_uid: &str, limit: usize) -> Option<PodSlot> {
        let mut open = self.open.lock().unwrap_or_else(|err| err.into_inner());
        let count = open.entry(pod_uid.to_string()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PodSlot {
            slots: self.clone(),
            pod_uid: pod_uid.to_string(),
        })
    }
}

impl Drop for PodSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(|err| err.into_inner());
        if let Some(count) = open.get_mut(&self.pod_uid) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.pod_uid);
            }
        }
    }
}

/// A refusal: the response text and the reason recorded in the log line.
struct Denied {
    reason: &'static str,
    message: String,
    /// The pod, its UID and, when known, the container, when known before attestation
    /// completed, for the log line, the audit event and the workloads.
    pod: Option<(Arc<Pod>, String)>,
    container: Option<String>,
    /// The annotation whose value was rejected, for `bad_annotation`.
    annotation: Option<&'static str>,
}

impl Denied {
    fn new(reason: &'static str, message: String) -> Denied {
        Denied {
            reason,
            message,
            pod: None,
            container: None,
            annotation: None,
        }
    }

    /// Names the pod with UID `pod_uid` and, when known, the container.
    fn in_pod(mut self, pod: &Arc<Pod>, pod_uid: &str, container: Option<&str>) -> Denied {
        self.pod = Some((Arc::clone(pod), pod_uid.to_string()));
        self.container = container.map(str::to_string);
        self
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
        Request::Status => return status_outcome(context, connection, status).await,
        Request::V1 { key } => (key.as_slice(), None),
        Request::V2 { key, value } => (key.as_slice(), Some(value.as_slice())),
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return Outcome::error("the variable name is not valid UTF-8".to_string());
    };
    if let Some(value) = value {
        if !has_known_scheme(value) {
            // The pod and container are known only when an earlier request attested the
            // connection, because a passthrough alone does not attest it.
            if let Some(attested) = &connection.attested {
                audit::note_workload(&attested.pod, &attested.pod_uid, &attested.container);
            }
            return Outcome {
                response: Response::Passthrough,
                decision: Decision::Passthrough,
            };
        }
    }
    let attested = match attest(context, connection).await {
        Ok(attested) => attested,
        Err(denied) => {
            return deny(
                context,
                connection,
                connection.attested.as_deref(),
                name,
                denied,
            )
        }
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
    let pair = (name.to_string(), text.to_string());
    if !connection.memo(&attested).allowed.contains(&pair) {
        if let Err(denial) = policy::authorize(
            &attested.pod,
            &attested.container,
            name,
            text,
            &attested.settings,
        ) {
            return deny(
                context,
                connection,
                Some(&attested),
                name,
                policy_denial(name, &denial),
            );
        }
        let allowed = &mut connection.memo(&attested).allowed;
        if allowed.len() < MAX_ALLOWED_PAIRS {
            allowed.insert(pair);
        }
    }
    match reference {
        Reference::Local { key } => file_lookup(context, name, &key),
        Reference::Kubernetes {
            namespace,
            secret,
            key,
        } => {
            let target = (namespace.as_deref(), secret.as_str(), key.as_str());
            match kube_reads::kube_lookup(context, connection, &attested, name, target).await {
                Ok(outcome) => outcome,
                Err(denied) => deny(context, connection, Some(&attested), name, denied),
            }
        }
        reference => match vault_lookup(context, connection, &attested, name, &reference).await {
            Ok(outcome) => outcome,
            Err(denied) => deny(context, connection, Some(&attested), name, denied),
        },
    }
}

/// Builds the response to a status request, served only to the agent's own user outside any
/// pod, such as an operator on the node, because the status names the node's workloads. A
/// request from elsewhere is denied like any other, naming the caller's pod and container
/// when the connection can be attested.
async fn status_outcome(
    context: &NodeContext,
    connection: &mut NodeConnection,
    status: &StatusReporter,
) -> Outcome {
    let allowed =
        connection.pod_container.pod_uid.is_empty() && connection.caller.uid() == context.agent_uid;
    if allowed {
        return Outcome {
            response: Response::Found(SecretBytes::new(status.payload())),
            decision: Decision::Status,
        };
    }
    let mut denied = Denied::new(
        "status_not_allowed",
        "permission denied: in node mode the status is served only to the agent's user outside \
         any pod; use `envproxy status` on the node as that user"
            .to_string(),
    );
    let attested = match attest(context, connection).await {
        Ok(attested) => Some(attested),
        Err(not_attested) => {
            // The pod, when known, still names the caller in the log and the audit event.
            denied.pod = not_attested.pod;
            denied.container = not_attested.container;
            None
        }
    };
    deny(context, connection, attested.as_deref(), "", denied)
}

/// Finds the connection's pod and container, once per connection, and checks on every request
/// that the pod still runs on this node.
async fn attest(
    context: &NodeContext,
    connection: &mut NodeConnection,
) -> Result<Arc<Attested>, Denied> {
    let attested = match &connection.attested {
        Some(attested) => still_on_node(context, attested).await?,
        None => attest_first(context, connection).await?,
    };
    connection.attested = Some(Arc::clone(&attested));
    Ok(attested)
}

/// Returns `attested` while its pod is still in the watch of this node, with the pod's
/// annotations read again when the watch delivered a change of the pod.
async fn still_on_node(
    context: &NodeContext,
    attested: &Arc<Attested>,
) -> Result<Arc<Attested>, Denied> {
    let Some(entry) = context
        .pods
        .pod_by_uid(&attested.pod_uid, Duration::ZERO)
        .await
    else {
        return Err(Denied::new(
            "pod_deleted",
            format!(
                "permission denied: pod {} was deleted; its processes are no longer served",
                pod_name(&attested.pod)
            ),
        ));
    };
    if Arc::ptr_eq(&entry.pod, &attested.pod) {
        return Ok(Arc::clone(attested));
    }
    attested_with(
        context,
        &entry.pod,
        attested.pod_uid.clone(),
        attested.container.clone(),
    )
}

/// Attests the caller of a connection at its first request: its cgroup, pod, container and the
/// pod's opt-in and settings.
async fn attest_first(
    context: &NodeContext,
    connection: &NodeConnection,
) -> Result<Arc<Attested>, Denied> {
    let caller = &connection.caller;
    let pod_container = connection.pod_container.clone();
    if pod_container.pod_uid.is_empty() {
        return Err(Denied::new(
            "outside_pod",
            format!(
                "permission denied: pid {} runs outside any Kubernetes pod, and node mode \
                 serves only processes of pods on this node",
                caller.pid()
            ),
        ));
    }
    let wait = context.settings.pod_wait;
    let entry = context
        .pods
        .pod_by_uid(&pod_container.pod_uid, wait)
        .await
        .ok_or_else(|| {
            let message = if context.pods.is_synced() {
                format!(
                    "permission denied: pod UID {} is not among the pods the agent watches on \
                     node {} (waited {} ms); if the pod just started, retry",
                    pod_container.pod_uid,
                    context.settings.node_name,
                    wait.as_millis()
                )
            } else {
                format!(
                    "permission denied: the agent has not yet listed the pods of node {} from \
                     the kube API, so pod UID {} is unknown; check the agent's log for why the \
                     pod watch fails (API server unreachable, RBAC, node name)",
                    context.settings.node_name, pod_container.pod_uid
                )
            };
            Denied::new("pod_unknown", message)
        })?;
    let Some(container_id) = pod_container.container_id.as_deref() else {
        return Err(Denied::new(
            "container_unknown",
            format!(
                "permission denied: pid {} runs in the cgroup of pod {} but in no container of it",
                caller.pid(),
                pod_name(&entry.pod)
            ),
        )
        .in_pod(&entry.pod, &pod_container.pod_uid, None));
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
            .in_pod(&entry.pod, &pod_container.pod_uid, None)
        })?;
    attested_with(context, &entry.pod, pod_container.pod_uid, container)
}

/// Checks the opt-in of `pod` and reads its settings for the process in `container`.
fn attested_with(
    context: &NodeContext,
    pod: &Arc<Pod>,
    pod_uid: String,
    container: String,
) -> Result<Arc<Attested>, Denied> {
    let denied =
        |denial: Denial| policy_denial_plain(&denial).in_pod(pod, &pod_uid, Some(&container));
    let bad_annotation = |source| {
        denied(Denial::BadAnnotation {
            pod: pod_name(pod),
            source,
        })
    };
    if !annotations::is_opted_in(pod).map_err(bad_annotation)? {
        return Err(denied(Denial::NotOptedIn { pod: pod_name(pod) }));
    }
    let settings = PodSettings::from_pod(pod, &context.settings.vault_addr_allowlist)
        .map_err(bad_annotation)?;
    Ok(Arc::new(Attested {
        pod: Arc::clone(pod),
        pod_uid,
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
            context,
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
    attested: &Arc<Attested>,
    name: &str,
    reference: &Reference,
) -> Result<Outcome, Denied> {
    let Some(base) = &context.vault else {
        return Ok(Outcome::error(format!(
            "{name}: vault: references need Vault, which this agent does not have; the operator \
             sets it in the [vault] table of the agent's config"
        )));
    };
    let session = match &connection.memo(attested).session {
        Some(session) => {
            // The kubelet rotates projected tokens, so the stored one can near its expiry
            // while this connection stays open. The caller's current token then replaces it
            // for the next login.
            if !session.jwt.is_fresh(TOKEN_REFRESH_MARGIN) {
                let jwt = Arc::clone(&session.jwt);
                let (token, expires_at) = checked_token(context, connection, attested).await?;
                jwt.set(token, expires_at);
            }
            connection
                .memo(attested)
                .session
                .clone()
                .expect("checked above")
        }
        None => {
            let session = open_session(context, connection, attested, name, base)
                .instrument(vault_span(attested))
                .await?;
            connection.memo(attested).session = Some(session.clone());
            session
        }
    };
    let result = session
        .backend
        .resolve_in(reference, || vault_span(attested))
        .await;
    let err = match result {
        Ok(value) => return Ok(found(name, reference.key(), value)),
        Err(err) => err,
    };
    let pod = pod_name(&attested.pod);
    let verdict = context.failures.refuse(&pod, err.kind(), Instant::now());
    let hint = match &err {
        VaultError::LoginFailed { .. } => Some(login_hint(attested, &identity_of(attested, base))),
        _ => None,
    };
    if let Verdict::Log { unlogged } = verdict {
        log_vault_failure(
            connection,
            attested,
            name,
            base,
            &err,
            hint.as_deref(),
            unlogged,
        );
    }
    Ok(match hint {
        Some(hint) => Outcome::error(format!("{name}: {err}; {hint}")),
        None => Outcome::error(format!("{name}: {err}")),
    })
}

/// Logs a failed Vault request of `attested`'s pod. `unlogged` failures of this pod and kind
/// came since its last line, and later ones within the summary interval are only counted.
fn log_vault_failure(
    connection: &NodeConnection,
    attested: &Attested,
    name: &str,
    base: &VaultSettings,
    err: &VaultError,
    hint: Option<&str>,
    unlogged: u64,
) {
    match hint {
        Some(hint) => {
            let identity = identity_of(attested, base);
            tracing::warn!(
                pid = connection.pid(),
                pod = %pod_name(&attested.pod),
                container = %attested.container,
                variable = name,
                service_account = %format!("{}/{}", identity.namespace, identity.service_account),
                role = %identity.role,
                auth_mount = %identity.auth_mount,
                %err,
                unlogged,
                "Vault login failed; {hint} (later failures of this pod are counted and logged \
                 as a summary every 10 s)"
            );
        }
        None => tracing::warn!(
            pid = connection.pid(),
            pod = %pod_name(&attested.pod),
            container = %attested.container,
            variable = name,
            kind = err.kind(),
            %err,
            unlogged,
            "Vault read failed (later failures of this kind in this pod are counted and logged \
             as a summary every 10 s)"
        ),
    }
}

/// Returns the span of a Vault request that `attested`'s pod caused, so that log lines of the
/// logins it triggers name the pod. The span is at error level so that it shows at every log
/// level that shows those lines.
fn vault_span(attested: &Attested) -> tracing::Span {
    tracing::error_span!("vault_request", pod = %pod_name(&attested.pod))
}

/// Says which identity a failed Vault login used and which setting chooses each part, for a
/// login that Vault refused.
fn login_hint(attested: &Attested, identity: &Identity) -> String {
    let role_source = if has_annotation(&attested.pod, annotations::VAULT_ROLE) {
        format!("annotation {}", annotations::VAULT_ROLE)
    } else {
        format!(
            "the service account's name; annotation {} sets another",
            annotations::VAULT_ROLE
        )
    };
    let mount_source = if has_annotation(&attested.pod, annotations::VAULT_AUTH_MOUNT) {
        format!("annotation {}", annotations::VAULT_AUTH_MOUNT)
    } else {
        format!(
            "default; annotation {} sets another",
            annotations::VAULT_AUTH_MOUNT
        )
    };
    format!(
        "pod {} tried to log in as service account {}/{} with Vault role {} (from {role_source}) at \
         auth mount {} ({mount_source}); bind that service account and namespace to the role in \
         Vault (bound_service_account_names, bound_service_account_namespaces), or set {} to a \
         role that allows it",
        pod_name(&attested.pod),
        identity.namespace,
        identity.service_account,
        identity.role,
        identity.auth_mount,
        annotations::VAULT_ROLE
    )
}

fn has_annotation(pod: &Pod, name: &str) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(name))
}

/// Returns the Vault session of the attested pod's identity after the connection's process
/// presented its pod's token. The token is checked once per connection and identity, even
/// when the identity is already logged in, so that a process never reads with a session its
/// own pod's token would not have opened.
async fn open_session(
    context: &NodeContext,
    connection: &NodeConnection,
    attested: &Arc<Attested>,
    name: &str,
    base: &VaultSettings,
) -> Result<Session, Denied> {
    let identity = identity_of(attested, base);
    let (token, expires_at) = checked_token(context, connection, attested).await?;
    let store_token = |jwt: &LatestJwt| {
        jwt.set(
            SecretText::new(token.expose_secret().to_string()),
            expires_at,
        );
        Ok(())
    };
    let session = context
        .identities
        .session(&identity, &attested.pod_uid, base, store_token)
        .await
        .map_err(|reason| Denied::new("vault_setup", format!("{name}: {reason}")))?;
    if !session.jwt.is_fresh(TOKEN_REFRESH_MARGIN) {
        session.jwt.set(token, expires_at);
    }
    Ok(session)
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
                "permission denied: the service account token in container {} of pod {} is not \
                 valid for that pod: {err}",
                attested.container,
                pod_name(&attested.pod)
            ),
        )
    };
    let now = SystemTime::now();
    let expires_at = match context
        .checked_tokens
        .expiry(&attested.pod_uid, &bytes, now)
    {
        Some(expires_at) => expires_at,
        None => {
            let expected =
                ExpectedIdentity::from_pod(&attested.pod, &context.settings.token_audience)
                    .map_err(mismatch)?;
            let claims = token_claims::check_token(&bytes, &expected, now).map_err(mismatch)?;
            context
                .checked_tokens
                .remember(&attested.pod_uid, &bytes, claims.expires_at);
            claims.expires_at
        }
    };
    // The claims check accepted the bytes, so they are a JWT of ASCII characters.
    let jwt = String::from_utf8_lossy(&bytes).trim().to_string();
    Ok((SecretText::new(jwt), expires_at))
}

/// The last token of each pod whose claims the agent checked, so that the next connection of
/// the pod that presents the same token skips the decode. A pod's kubelet rotates its token, so
/// one entry per pod is enough.
#[derive(Default, Clone)]
pub(crate) struct CheckedTokens {
    by_pod: Arc<std::sync::Mutex<std::collections::HashMap<String, CheckedToken>>>,
}

/// A token's bytes and the expiry its claims give.
type CheckedToken = (Zeroizing<Vec<u8>>, SystemTime);

impl CheckedTokens {
    /// Returns the expiry of `token` when it is the checked token of pod `pod_uid` and has not
    /// expired at `now`.
    fn expiry(&self, pod_uid: &str, token: &[u8], now: SystemTime) -> Option<SystemTime> {
        let by_pod = self.by_pod.lock().unwrap_or_else(|err| err.into_inner());
        let (checked, expires_at) = by_pod.get(pod_uid)?;
        (checked.as_slice() == token && *expires_at > now).then_some(*expires_at)
    }

    fn remember(&self, pod_uid: &str, token: &[u8], expires_at: SystemTime) {
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|err| err.into_inner());
        by_pod.insert(
            pod_uid.to_string(),
            (Zeroizing::new(token.to_vec()), expires_at),
        );
    }

    /// Forgets the token of a pod that left the node.
    pub fn forget(&self, pod_uid: &str) {
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|err| err.into_inner());
        by_pod.remove(pod_uid);
    }
}

/// Reads the projected token from the caller's container.
fn read_projected_token(
    context: &NodeContext,
    connection: &NodeConnection,
    attested: &Attested,
) -> Result<Zeroizing<Vec<u8>>, Denied> {
    let caller = &connection.caller;
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
        cache_ttl: settings.vault_cache_ttl.unwrap_or(base.cache_ttl),
    }
}

/// Turns a policy denial of variable `name` into a refusal.
fn policy_denial(name: &str, denial: &Denial) -> Denied {
    let mut denied = policy_denial_plain(denial);
    denied.message = format!("{name}: {}", denied.message);
    denied
}

/// Turns a policy denial that concerns the whole pod into a refusal.
fn policy_denial_plain(denial: &Denial) -> Denied {
    let mut denied = Denied::new(
        denial.reason().as_str(),
        format!("permission denied: {denial}"),
    );
    if let Denial::BadAnnotation { source, .. } = denial {
        denied.annotation = Some(source.annotation);
    }
    denied
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

/// Logs a denial with the pod, container, variable name and reason, notes them for the audit
/// event and the workloads, and builds its response. The pod and container come from `denied`
/// when set, else from `attested`.
///
/// The warning is rate-limited per pod and reason through `context.denials`, so a pod that
/// sends denied requests in a loop cannot flood the log. The metrics and the audit event stay
/// one per request.
fn deny(
    context: &NodeContext,
    connection: &NodeConnection,
    attested: Option<&Attested>,
    name: &str,
    denied: Denied,
) -> Outcome {
    let pod = denied
        .pod
        .clone()
        .or_else(|| attested.map(|attested| (Arc::clone(&attested.pod), attested.pod_uid.clone())));
    let container = denied.container.clone().or_else(|| {
        attested
            .filter(|_| denied.pod.is_none())
            .map(|attested| attested.container.clone())
    });
    if let Some((pod, pod_uid)) = &pod {
        audit::note_workload(pod, pod_uid, container.as_deref().unwrap_or_default());
    }
    let pod_name = pod.as_ref().map(|(pod, _)| pod_name(pod));
    let source = match (&pod_name, connection.pod_container.pod_uid.as_str()) {
        (Some(pod_name), _) => pod_name.clone(),
        (None, "") => format!("uid {}", connection.caller.uid()),
        (None, pod_uid) => format!("pod UID {pod_uid}"),
    };
    let verdict = context
        .denials
        .refuse(&source, denied.reason, Instant::now());
    if let Verdict::Log { unlogged } = verdict {
        let subject = if pod_name.is_some() { "pod" } else { "caller" };
        tracing::warn!(
            pid = connection.pid(),
            pod = pod_name,
            container,
            variable = name,
            reason = denied.reason,
            annotation = denied.annotation,
            unlogged,
            "request denied (later denials of this {subject} for this reason are counted in \
             envproxy_denials_total and logged as a summary every 10 s)"
        );
    }
    audit::note_denial(denied.reason, denied.annotation);
    Outcome {
        response: Response::error(denied.message),
        decision: Decision::Denied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::VaultEnvironment;

    fn attested(annotations: serde_json::Value) -> Attested {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1",
                "namespace": "shop",
                "uid": "0c4f7f0e-4a1b-4a8e-9d55-1f1c2b3d4e5f",
                "annotations": annotations,
            },
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}]},
        }))
        .unwrap();
        let settings = PodSettings::from_pod(&pod, &[]).unwrap();
        Attested {
            pod_uid: "0c4f7f0e-4a1b-4a8e-9d55-1f1c2b3d4e5f".to_string(),
            container: "app".to_string(),
            pod: Arc::new(pod),
            settings,
        }
    }

    fn vault_settings(cache_ttl: Duration) -> VaultSettings {
        let mut settings = VaultSettings::with_defaults(
            "https://vault.example:8200".to_string(),
            &VaultEnvironment::default(),
        );
        settings.cache_ttl = cache_ttl;
        settings
    }

    #[test]
    fn identity_cache_ttl_defaults_to_config() {
        let base = vault_settings(Duration::from_secs(600));
        let identity = identity_of(&attested(serde_json::json!({})), &base);
        assert_eq!(identity.cache_ttl, Duration::from_secs(600));
    }

    #[test]
    fn identity_cache_ttl_from_annotation() {
        let base = vault_settings(Duration::from_secs(600));
        let pod = attested(serde_json::json!({"envproxy.dev/vault-cache-ttl": "90s"}));
        let identity = identity_of(&pod, &base);
        assert_eq!(identity.cache_ttl, Duration::from_secs(90));
    }
}
