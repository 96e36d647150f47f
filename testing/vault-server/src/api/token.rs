//! Token auth endpoints (<https://developer.hashicorp.com/vault/api-docs/auth/token>):
//! lookup-self, renew-self, revoke-self and create.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::response::Envelope;
use super::{ApiRequest, ApiResponse, Operation};
use crate::duration;
use crate::state::{NewToken, ServerState};
use crate::tokens::{TokenEntry, SYSTEM_MAX_TTL};

pub(super) fn handle(
    state: &mut ServerState,
    request: &ApiRequest,
    token: &TokenEntry,
    rest: &str,
) -> ApiResponse {
    let now = state.now();
    match (rest, request.operation) {
        ("lookup-self", Operation::Read) => Envelope::data(token.lookup_data(now), "token").ok(),
        ("renew-self", Operation::Write) => renew_self(state, request, token),
        ("revoke-self", Operation::Write) => {
            state.revoke_token(&token.id);
            ApiResponse::no_content()
        }
        ("create" | "create-orphan", Operation::Write) => create(state, request, token, rest),
        ("lookup-self" | "renew-self" | "revoke-self" | "create" | "create-orphan", _) => {
            ApiResponse::unsupported_operation()
        }
        _ => ApiResponse::unsupported_path(),
    }
}

fn renew_self(state: &mut ServerState, request: &ApiRequest, token: &TokenEntry) -> ApiResponse {
    let body = match request.json_body() {
        Ok(body) => body,
        Err(response) => return response,
    };
    let increment = match increment_field(&body) {
        Ok(increment) => increment,
        Err(response) => return response,
    };
    let now = state.now();
    match state.tokens.renew(&token.id, increment, now) {
        Ok(warning) => {
            let renewed = state
                .tokens
                .get(&token.id, now)
                .expect("token was just renewed");
            Envelope::auth(renewed.auth_block(now), "token")
                .with_warnings(warning)
                .ok()
        }
        Err(e) => ApiResponse::bad_request(&e.to_string()),
    }
}

/// Reads the optional `increment` duration of renew calls.
pub(super) fn increment_field(
    body: &serde_json::Map<String, Value>,
) -> Result<Option<Duration>, ApiResponse> {
    match body.get("increment") {
        None | Some(Value::Null) => Ok(None),
        Some(raw) => match duration::parse_field(raw) {
            Some(d) => Ok(Some(d)),
            None => {
                let message = format!("error converting input {raw} for field \"increment\"");
                Err(ApiResponse::bad_request(&message))
            }
        },
    }
}

/// `POST auth/token/create`: a child token with a subset of the caller's policies.
fn create(
    state: &mut ServerState,
    request: &ApiRequest,
    parent: &TokenEntry,
    path: &str,
) -> ApiResponse {
    let body = match request.json_body() {
        Ok(body) => body,
        Err(response) => return response,
    };
    let strings = |name: &str| -> Vec<String> {
        match body.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    };
    let parent_is_root = parent.policies.iter().any(|p| p == "root");
    let mut policies = strings("policies");
    if policies.is_empty() {
        policies = parent.policies.clone();
    }
    let no_default = body
        .get("no_default_policy")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !no_default && !policies.iter().any(|p| p == "root") {
        policies.push("default".to_owned());
    }
    if !parent_is_root && policies.iter().any(|p| !parent.policies.contains(p)) {
        return ApiResponse::bad_request("child policies must be subset of parent");
    }

    let duration_of = |name: &str| body.get(name).and_then(duration::parse_field);
    let ttl = duration_of("ttl").unwrap_or(if parent_is_root && policies == ["root"] {
        Duration::ZERO
    } else {
        SYSTEM_MAX_TTL
    });
    let explicit_max_ttl = duration_of("explicit_max_ttl").unwrap_or(Duration::ZERO);
    let display_name = match body.get("display_name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => format!("token-{name}"),
        _ => "token".to_owned(),
    };
    let meta: Option<BTreeMap<String, String>> = body.get("meta").and_then(|m| {
        m.as_object().map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
    });
    let namespace_id = state.namespaces[&request.namespace].id.clone();
    let entry = state.new_token_entry(NewToken {
        id: None,
        namespace: request.namespace.clone(),
        namespace_id,
        policies,
        display_name,
        path: format!("auth/token/{path}"),
        meta,
        ttl,
        max_ttl: explicit_max_ttl,
        explicit_max_ttl,
        renewable: body
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        orphan: path == "create-orphan",
        role: None,
        with_entity: false,
    });
    let auth = entry.auth_block(state.now());
    state.tokens.insert(entry);
    Envelope::auth(auth, "token").ok()
}
