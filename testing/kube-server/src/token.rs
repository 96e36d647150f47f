//! `POST .../serviceaccounts/{name}/token`: the TokenRequest API.

use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::state::{time_at, PodTokenRequest, ServerState};
use crate::status::ApiError;

/// Lifetime of a token whose request sets no `expirationSeconds`.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The shortest lifetime the API server accepts: 10 minutes.
const MIN_EXPIRATION_SECONDS: i64 = 600;

/// Maximum lifetime the API server accepts: 2^32 seconds.
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Issues a token for service account `name`, bound to the pod that `boundObjectRef` names.
pub(crate) fn create(
    state: &ServerState,
    namespace: &str,
    name: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let mut request: TokenRequest = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("invalid TokenRequest body: {err}")))?;
    let spec = request.spec.get_or_insert_with(Default::default);

    let expiration = spec
        .expiration_seconds
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(ApiError::invalid(format!(
            "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration \
             less than 10 minutes"
        )));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(ApiError::invalid(format!(
            "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration \
             larger than 2^32 seconds"
        )));
    }
    if !state.service_account_exists(namespace, name) {
        return Err(ApiError::not_found("serviceaccounts", name));
    }
    let audiences = spec.audiences.get_or_insert_with(Vec::new);
    if audiences.is_empty() {
        // The API server's default audience is its own issuer.
        audiences.push(state.issuer.clone());
    }
    let audiences = audiences.clone();

    // NOTE: only tokens bound to a pod are issued. The API server also binds tokens to Secrets
    // and Nodes and issues unbound ones, but EnvProxy requests neither.
    let Some(bound) = spec.bound_object_ref.as_ref() else {
        return Err(ApiError::bad_request(
            "spec.boundObjectRef is required by this test server (kind Pod)",
        ));
    };
    if bound.kind.as_deref() != Some("Pod") {
        return Err(ApiError::bad_request(format!(
            "spec.boundObjectRef.kind: Unsupported value: {:?}: supported values: \"Pod\"",
            bound.kind.as_deref().unwrap_or_default()
        )));
    }
    let pod_name = bound.name.as_deref().unwrap_or_default();
    let now = SystemTime::now();
    let token = state.issue_pod_token(
        &PodTokenRequest {
            namespace,
            service_account: Some(name),
            pod_name,
            pod_uid: bound.uid.as_deref(),
            audiences: &audiences,
            lifetime: Duration::from_secs(expiration as u64),
        },
        now,
    )?;

    let expires = time_at(now + Duration::from_secs(expiration as u64));
    spec.expiration_seconds = Some(expiration);
    request.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        creation_timestamp: Some(time_at(now)),
        ..ObjectMeta::default()
    };
    request.status = Some(TokenRequestStatus {
        expiration_timestamp: Some(expires),
        token: Some(token),
    });
    let body = serde_json::to_value(&request).expect("a TokenRequest always serializes");
    Ok((StatusCode::CREATED, body))
}
