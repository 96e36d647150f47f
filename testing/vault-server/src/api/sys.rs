//! System endpoints: `sys/health` (<https://developer.hashicorp.com/vault/api-docs/system/health>),
//! `sys/seal-status` (<https://developer.hashicorp.com/vault/api-docs/system/seal-status>) and
//! `sys/leases` (<https://developer.hashicorp.com/vault/api-docs/system/leases>).

use serde_json::{json, Value};

use super::response::Envelope;
use super::token::increment_field;
use super::{ApiRequest, ApiResponse, Operation};
use crate::clock::{rfc3339, seconds_until, unix_seconds};
use crate::leases::RevocationReason;
use crate::options::NodeState;
use crate::state::ServerState;

/// Handles `GET` and `HEAD sys/health`, with the status-code query parameters of the API page.
pub(super) fn health(state: &ServerState, request: &ApiRequest) -> ApiResponse {
    if !matches!(request.method.as_str(), "GET" | "HEAD") {
        return ApiResponse::unsupported_operation();
    }
    let flag = |name: &str| {
        request
            .query
            .get(name)
            .is_some_and(|v| v == "true" || v.is_empty())
    };
    let code = |name: &str, default: u16| {
        request
            .query
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let initialized = state.node_state != NodeState::Uninitialized;
    let sealed = state.sealed || !initialized;
    let standby = matches!(
        state.node_state,
        NodeState::Standby | NodeState::PerformanceStandby
    );

    let status = if !initialized {
        code("uninitcode", 501)
    } else if state.sealed {
        code("sealedcode", 503)
    } else {
        match state.node_state {
            NodeState::DrSecondary => code("drsecondarycode", 472),
            NodeState::PerformanceStandby if !flag("perfstandbyok") => {
                code("performancestandbycode", 473)
            }
            NodeState::Standby if !flag("standbyok") => code("standbycode", 429),
            _ => code("activecode", 200),
        }
    };

    let now = state.now();
    let mut body = json!({
        "initialized": initialized,
        "sealed": sealed,
        "standby": standby || sealed,
        "performance_standby": state.node_state == NodeState::PerformanceStandby,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": if state.node_state == NodeState::DrSecondary {
            "secondary"
        } else {
            "disabled"
        },
        "server_time_utc": unix_seconds(now),
        "version": state.options.version,
        "enterprise": true,
        "echo_duration_ms": 0,
        "clock_skew_ms": 0,
        "last_wal": 0,
        "license": {
            "expiry_time": rfc3339(now + std::time::Duration::from_secs(365 * 86400)),
            "state": "autoloaded",
            "terminated": false,
        },
        "replication_primary_canary_age_ms": 0,
    });
    if !sealed {
        body["cluster_name"] = json!(state.cluster_name);
        body["cluster_id"] = json!(state.cluster_id);
    }
    let mut response = ApiResponse::json(status, body);
    if request.method == "HEAD" {
        response.body = None;
    }
    response
}

/// Handles `GET sys/seal-status`, which needs no token.
pub(super) fn seal_status(state: &ServerState, request: &ApiRequest) -> ApiResponse {
    if request.operation != Operation::Read {
        return ApiResponse::unsupported_operation();
    }
    let initialized = state.node_state != NodeState::Uninitialized;
    let sealed = state.sealed || !initialized;
    let mut body = json!({
        "type": "shamir",
        "initialized": initialized,
        "sealed": sealed,
        "t": 3,
        "n": 5,
        "progress": 0,
        "nonce": "",
        "version": state.options.version,
        "build_date": "2024-06-10T10:11:34Z",
        "migration": false,
        "recovery_seal": false,
        "storage_type": "inmem",
    });
    if !sealed {
        body["cluster_name"] = json!(state.cluster_name);
        body["cluster_id"] = json!(state.cluster_id);
    }
    ApiResponse::json(200, body)
}

/// Handles the other `sys/` paths: lease renew, revoke and lookup.
pub(super) fn handle(state: &mut ServerState, request: &ApiRequest, path: &str) -> ApiResponse {
    let (action, url_lease_id) = match lease_action(path) {
        Some(found) => found,
        None => return ApiResponse::no_handler(&format!("{}{path}", request.namespace)),
    };
    if request.operation != Operation::Write {
        return ApiResponse::unsupported_operation();
    }
    let body = match request.json_body() {
        Ok(body) => body,
        Err(response) => return response,
    };
    // The body's lease_id takes precedence over the one in the URL.
    let lease_id = match body.get("lease_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => url_lease_id.to_owned(),
    };
    if lease_id.is_empty() {
        return ApiResponse::bad_request("lease_id must be specified");
    }
    // Leases are visible only in the namespace that issued them.
    let visible = state
        .leases
        .get(&lease_id)
        .is_some_and(|l| l.namespace == request.namespace);

    let now = state.now();
    match action {
        LeaseAction::Renew => {
            let increment = match increment_field(&body) {
                Ok(increment) => increment,
                Err(response) => return response,
            };
            if !visible {
                return ApiResponse::bad_request("lease not found");
            }
            match state.leases.renew(&lease_id, increment, now) {
                Ok((ttl, warning)) => {
                    let mut envelope = Envelope::data(Value::Null, "system").with_warnings(warning);
                    envelope.lease_id = lease_id;
                    envelope.lease_duration = ttl.as_secs();
                    envelope.renewable = true;
                    envelope.ok()
                }
                Err(e) => ApiResponse::bad_request(&e.to_string()),
            }
        }
        LeaseAction::Revoke => {
            if visible {
                state
                    .leases
                    .revoke(&lease_id, RevocationReason::Revoked, now);
            }
            // `sync` defaults to true (revoke now, 204); false queues the revocation (202).
            match body.get("sync").and_then(Value::as_bool) {
                Some(false) => ApiResponse {
                    status: 202,
                    body: None,
                    headers: Vec::new(),
                },
                _ => ApiResponse::no_content(),
            }
        }
        LeaseAction::Lookup => {
            let Some(lease) = state.leases.get(&lease_id).filter(|_| visible) else {
                return ApiResponse::bad_request("invalid lease");
            };
            let data = json!({
                "id": lease.id,
                "issue_time": rfc3339(lease.issue_time),
                "expire_time": rfc3339(lease.expire_time),
                "last_renewal_time": lease.last_renewal_time.map(rfc3339),
                "renewable": lease.renewable,
                "ttl": seconds_until(now, lease.expire_time),
            });
            Envelope::data(data, "system").ok()
        }
    }
}

#[derive(Clone, Copy)]
enum LeaseAction {
    Renew,
    Revoke,
    Lookup,
}

/// Splits a lease path into its action and the lease id given in the URL, if any.
fn lease_action(path: &str) -> Option<(LeaseAction, &str)> {
    const ROUTES: &[(&str, LeaseAction)] = &[
        ("sys/leases/renew", LeaseAction::Renew),
        ("sys/renew", LeaseAction::Renew),
        ("sys/leases/revoke", LeaseAction::Revoke),
        ("sys/revoke", LeaseAction::Revoke),
        ("sys/leases/lookup", LeaseAction::Lookup),
    ];
    for (prefix, action) in ROUTES {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        if rest.is_empty() {
            return Some((*action, ""));
        }
        if let Some(id) = rest.strip_prefix('/') {
            return Some((*action, id));
        }
    }
    None
}
