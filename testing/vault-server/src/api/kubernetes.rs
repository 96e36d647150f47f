//! `POST auth/<mount>/login` of Kubernetes auth
//! (<https://developer.hashicorp.com/vault/api-docs/auth/kubernetes#login>).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::response::Envelope;
use super::{ApiRequest, ApiResponse, Operation};
use crate::kubernetes::{validate_login, LoginError};
use crate::state::{NewToken, ServerState};
use crate::tokens::SYSTEM_MAX_TTL;

/// Handles the request when it is a login on a Kubernetes auth mount of its namespace;
/// returns `None` for every other path.
pub(super) fn try_login(state: &mut ServerState, request: &ApiRequest) -> Option<ApiResponse> {
    let mount = request.path.strip_prefix("auth/")?.strip_suffix("/login")?;
    let namespace = state.namespaces.get(&request.namespace)?;
    let auth = namespace.kubernetes.get(mount)?.clone();
    let namespace_id = namespace.id.clone();
    if request.operation != Operation::Write {
        return Some(ApiResponse::unsupported_operation());
    }

    let body = match request.json_body() {
        Ok(body) => body,
        Err(response) => return Some(response),
    };
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default();
    let (role_name, jwt) = (field("role"), field("jwt"));
    if role_name.is_empty() {
        return Some(ApiResponse::bad_request("missing role"));
    }
    if jwt.is_empty() {
        return Some(ApiResponse::bad_request("missing jwt"));
    }
    let Some(role) = auth.roles.get(role_name) else {
        return Some(ApiResponse::bad_request(&format!(
            "invalid role name {role_name:?}"
        )));
    };

    let account = match validate_login(&auth, role, jwt, state.now()) {
        Ok(account) => account,
        Err(LoginError::PermissionDenied) => {
            return Some(ApiResponse::errors(403, &["permission denied"]))
        }
        Err(LoginError::Forbidden(message)) => return Some(ApiResponse::errors(403, &[&message])),
        Err(LoginError::Internal(message)) => return Some(ApiResponse::errors(500, &[&message])),
    };

    let ttl = match role.token_ttl {
        0 => SYSTEM_MAX_TTL,
        seconds => Duration::from_secs(seconds),
    };
    let mut policies = role.token_policies.clone();
    if !role.token_no_default_policy {
        policies.push("default".to_owned());
    }
    let meta: BTreeMap<String, String> = [
        ("role", role_name.to_owned()),
        ("service_account_name", account.name.clone()),
        ("service_account_namespace", account.namespace.clone()),
        ("service_account_secret_name", account.secret_name.clone()),
        ("service_account_uid", account.uid.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let entry = state.new_token_entry(NewToken {
        id: None,
        namespace: request.namespace.clone(),
        namespace_id,
        policies,
        display_name: format!("{mount}-{}-{}", account.namespace, account.name),
        path: format!("auth/{mount}/login"),
        meta: Some(meta),
        ttl,
        max_ttl: Duration::from_secs(role.token_max_ttl),
        explicit_max_ttl: Duration::ZERO,
        renewable: true,
        orphan: true,
        role: Some(role_name.to_owned()),
        with_entity: true,
    });
    let auth_block = entry.auth_block(state.now());
    state.tokens.insert(entry);
    Some(Envelope::auth(auth_block, "kubernetes").ok())
}
