//! Database secrets engine endpoints
//! (<https://developer.hashicorp.com/vault/api-docs/secret/databases>): dynamic credentials
//! under a lease, and role reads.

use std::time::Duration;

use serde_json::json;

use super::response::Envelope;
use super::{ApiRequest, ApiResponse, Operation};
use crate::database::{generate_password, generate_username};
use crate::ids;
use crate::leases::LeaseEntry;
use crate::state::ServerState;
use crate::tokens::{TokenEntry, SYSTEM_MAX_TTL};

pub(super) fn handle(
    state: &mut ServerState,
    request: &ApiRequest,
    token: &TokenEntry,
    mount: &str,
    rest: &str,
) -> ApiResponse {
    if rest == "roles" || rest == "roles/" {
        if request.operation != Operation::List {
            return ApiResponse::unsupported_operation();
        }
        let namespace = &state.namespaces[&request.namespace];
        let keys: Vec<&String> = namespace.database[mount].roles.keys().collect();
        if keys.is_empty() {
            return ApiResponse::not_found();
        }
        return Envelope::data(json!({ "keys": keys }), "database").ok();
    }
    if let Some(name) = rest.strip_prefix("roles/") {
        if request.operation != Operation::Read {
            return ApiResponse::unsupported_operation();
        }
        let namespace = &state.namespaces[&request.namespace];
        let Some(role) = namespace.database[mount].roles.get(name) else {
            return ApiResponse::not_found();
        };
        let data = json!({
            "creation_statements": [],
            "credential_type": "password",
            "db_name": "envproxy-test",
            "default_ttl": role.default_ttl,
            "max_ttl": role.max_ttl,
            "renew_statements": [],
            "revocation_statements": [],
            "rollback_statements": [],
        });
        return Envelope::data(data, "database").ok();
    }
    let Some(name) = rest
        .strip_prefix("creds/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
    else {
        return ApiResponse::unsupported_path();
    };
    if request.operation != Operation::Read {
        return ApiResponse::unsupported_operation();
    }
    generate_credentials(state, request, token, mount, name)
}

/// `GET <mount>/creds/<name>`: a fresh username and password under a new lease.
fn generate_credentials(
    state: &mut ServerState,
    request: &ApiRequest,
    token: &TokenEntry,
    mount: &str,
    name: &str,
) -> ApiResponse {
    let now = state.now();
    let namespace = &state.namespaces[&request.namespace];
    let Some(role) = namespace.database[mount].roles.get(name).cloned() else {
        return ApiResponse::bad_request(&format!("unknown role: {name}"));
    };
    let or_system = |secs: u64| {
        if secs == 0 {
            SYSTEM_MAX_TTL
        } else {
            Duration::from_secs(secs)
        }
    };
    let max_ttl = or_system(role.max_ttl);
    let ttl = or_system(role.default_ttl).min(max_ttl);

    let lease_id = ids::with_namespace_suffix(
        format!("{mount}/creds/{name}/{}", ids::alphanumeric(24)),
        namespace.id.as_deref(),
    );
    state.leases.insert(LeaseEntry {
        id: lease_id.clone(),
        namespace: request.namespace.clone(),
        issue_time: now,
        expire_time: now + ttl,
        last_renewal_time: None,
        max_expire_time: now + max_ttl,
        default_ttl: ttl,
        renewable: role.renewable,
        token_accessor: Some(token.accessor.clone()),
    });

    let data = json!({
        "username": generate_username(&token.display_name, name, now),
        "password": generate_password(),
    });
    let mut envelope = Envelope::data(data, "database");
    envelope.lease_id = lease_id;
    envelope.lease_duration = ttl.as_secs();
    envelope.renewable = role.renewable;
    envelope.ok()
}
