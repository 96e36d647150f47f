//! AdmissionReview v1 requests and responses.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde_json::Value;

use super::mutate::{mutate_pod, Admission, Decision};
use super::settings::WebhookSettings;
use crate::node::annotations::{self, is_opted_in};
use k8s_openapi::api::core::v1::Pod;

/// The Pod Security label that the namespace selectors of the webhook configuration match.
pub const POD_SECURITY_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// The webhook of the `MutatingWebhookConfiguration` that sent the review, identified by the
/// request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/mutate`: namespaces that allow hostPath volumes.
    Mutate,
    /// `/pod-security/<level>`: namespaces whose enforced Pod Security level forbids hostPath
    /// volumes. AdmissionReview does not carry namespace labels, so the webhook configuration
    /// selects these namespaces by label and sends them to this path.
    PodSecurity(PodSecurityLevel),
}

/// A Pod Security Standards level that forbids hostPath volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodSecurityLevel {
    Baseline,
    Restricted,
}

impl PodSecurityLevel {
    /// Parses the level as the label value spells it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "baseline" => Some(PodSecurityLevel::Baseline),
            "restricted" => Some(PodSecurityLevel::Restricted),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            PodSecurityLevel::Baseline => "baseline",
            PodSecurityLevel::Restricted => "restricted",
        }
    }
}

/// A request body that is no AdmissionReview with a request.
#[derive(Debug, thiserror::Error)]
#[error("the body is not an admission.k8s.io/v1 AdmissionReview with a request: {0}")]
pub struct InvalidReview(String);

/// Decides one AdmissionReview request body and returns the JSON of the AdmissionReview
/// response.
pub fn review(
    body: &[u8],
    route: Route,
    settings: &WebhookSettings,
) -> Result<Value, InvalidReview> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|err| InvalidReview(err.to_string()))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| InvalidReview("the `request` field is missing".to_string()))?;
    let answer = answer(&request, route, settings).into_review();
    let mut json = serde_json::to_value(answer)
        .map_err(|err| InvalidReview(format!("bug: the response cannot be serialized: {err}")))?;
    encode_patch(&mut json);
    Ok(json)
}

/// Writes the response's patch as a base64 string, the encoding of Go's `[]byte` that the
/// AdmissionReview API documents. `kube` serializes it as an array of numbers.
fn encode_patch(review: &mut Value) {
    use base64::Engine as _;
    let Some(patch) = review.pointer_mut("/response/patch") else {
        return;
    };
    if let Some(items) = patch.as_array() {
        let bytes: Vec<u8> = items
            .iter()
            .filter_map(|item| item.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect();
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
}

fn answer(
    request: &AdmissionRequest<DynamicObject>,
    route: Route,
    settings: &WebhookSettings,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let span = tracing::info_span!(
        "admission",
        uid = %request.uid,
        namespace,
        pod = pod_name(request),
        operation = ?request.operation,
    );
    let _entered = span.enter();

    let Some(admission) = admission_kind(request) else {
        tracing::debug!(
            kind = %request.kind.kind,
            sub_resource = request.sub_resource.as_deref().unwrap_or(""),
            "not a pod creation or ephemeral container update; admitted unchanged"
        );
        return response;
    };
    let Some(object) = &request.object else {
        return response.deny("the AdmissionReview request has no object");
    };
    let pod = match serde_json::to_value(object) {
        Ok(pod) => pod,
        Err(err) => return response.deny(format!("the pod object cannot be read: {err}")),
    };

    let decision = match route {
        Route::Mutate => mutate_pod(&pod, admission, settings),
        Route::PodSecurity(level) => pod_security_decision(&pod, namespace, level),
    };
    match decision {
        Decision::Deny(message) => {
            tracing::info!(reason = %message, "pod rejected");
            response.deny(message)
        }
        Decision::Allow { patch, warnings } => {
            if !warnings.is_empty() {
                tracing::info!(?warnings, "pod admitted with warnings");
            }
            let mut response = response;
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            if patch.0.is_empty() {
                tracing::debug!("pod admitted unchanged");
                return response;
            }
            tracing::info!(operations = patch.0.len(), "pod injected");
            match response.clone().with_patch(patch) {
                Ok(patched) => patched,
                Err(err) => {
                    tracing::error!(%err, "bug: the JSON patch cannot be serialized");
                    response.deny(format!("EnvProxy failed to serialize its patch: {err}"))
                }
            }
        }
    }
}

/// Returns the kind of admission the webhook mutates, or `None` for any other request, which
/// is admitted unchanged.
fn admission_kind(request: &AdmissionRequest<DynamicObject>) -> Option<Admission> {
    if !request.kind.group.is_empty() || request.kind.kind != "Pod" {
        return None;
    }
    match (&request.operation, request.sub_resource.as_deref()) {
        (Operation::Create, None) => Some(Admission::Create),
        (Operation::Update, Some("ephemeralcontainers")) => Some(Admission::EphemeralContainers),
        _ => None,
    }
}

/// Rejects an opted-in pod in a namespace whose Pod Security level forbids hostPath volumes.
/// The API server would reject the mutated pod anyway, with a message that names the volumes
/// but not EnvProxy.
fn pod_security_decision(pod: &Value, namespace: &str, level: PodSecurityLevel) -> Decision {
    let opted_in = serde_json::from_value::<Pod>(pod.clone())
        .map(|pod| is_opted_in(&pod).unwrap_or(true))
        .unwrap_or(false);
    if !opted_in {
        return Decision::Allow {
            patch: json_patch::Patch::default(),
            warnings: Vec::new(),
        };
    }
    Decision::Deny(format!(
        "namespace {namespace:?} enforces Pod Security level {level:?} (label \
         {POD_SECURITY_ENFORCE_LABEL}), which forbids the hostPath volumes EnvProxy mounts for \
         its agent socket and library; run the pod in a namespace with \
         {POD_SECURITY_ENFORCE_LABEL}=privileged, or remove the {} annotation",
        annotations::INJECT,
        level = level.as_str(),
    ))
}

fn pod_name(request: &AdmissionRequest<DynamicObject>) -> String {
    if !request.name.is_empty() {
        return request.name.clone();
    }
    // A pod of a ReplicaSet or Job has only a generateName at creation.
    let generate_name = request
        .object
        .as_ref()
        .and_then(|object| object.metadata.generate_name.clone())
        .unwrap_or_default();
    format!("{generate_name}*")
}
