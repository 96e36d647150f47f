//! The `/v1/` HTTP API: request parsing, authentication, ACL checks and routing to the
//! engines.
//!
//! Order of checks, as in Vault:
//! 1. `sys/health` and `sys/seal-status` respond even when sealed; other paths get 503 then.
//! 2. Login paths need no token. Other paths need a live token from the request's namespace
//!    or a parent of it, and a policy that grants the capability the operation needs.
//! 3. The mount at the longest matching prefix handles the request.

mod database;
mod kubernetes;
mod kv;
mod response;
mod sys;
mod token;

use std::collections::HashMap;

use serde_json::{Map, Value};

pub(crate) use response::ApiResponse;

use crate::namespace::{normalize_namespace, MountMatch, NamespaceState};
use crate::policy::{Acl, Capability};
use crate::state::ServerState;
use crate::tokens::TokenEntry;

/// Operation a request performs, derived from the HTTP method as Vault derives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    /// `GET`, or `HEAD` on the few paths that allow it.
    Read,
    /// `LIST`, or `GET` with `?list=true`.
    List,
    /// `POST` and `PUT`, which Vault treats as the same.
    Write,
    Delete,
    Patch,
    Other,
}

/// A request with its path split from `/v1/` and its namespace resolved.
#[derive(Debug)]
pub(crate) struct ApiRequest {
    pub(crate) method: String,
    pub(crate) operation: Operation,
    /// Path inside the namespace, after `/v1/` and any namespace prefix.
    pub(crate) path: String,
    /// Namespace path in Vault's form: `""` or `team-a/`.
    pub(crate) namespace: String,
    pub(crate) query: HashMap<String, String>,
    pub(crate) token: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl ApiRequest {
    /// Builds a request from its parts. `path` is the percent-decoded path after `/v1/`.
    pub(crate) fn new(
        method: &str,
        path: &str,
        query: HashMap<String, String>,
        namespace_header: Option<&str>,
        token: Option<String>,
        body: Vec<u8>,
    ) -> ApiRequest {
        let list = query.get("list").is_some_and(|v| v == "true" || v == "1");
        let operation = match method {
            "GET" if list => Operation::List,
            "GET" | "HEAD" => Operation::Read,
            "LIST" => Operation::List,
            "POST" | "PUT" => Operation::Write,
            "DELETE" => Operation::Delete,
            "PATCH" => Operation::Patch,
            _ => Operation::Other,
        };
        ApiRequest {
            method: method.to_owned(),
            operation,
            path: path.to_owned(),
            namespace: normalize_namespace(namespace_header.unwrap_or_default()),
            query,
            token: token.filter(|t| !t.is_empty()),
            body,
        }
    }

    /// Parses the body as a JSON object; an empty body is an empty object.
    pub(crate) fn json_body(&self) -> Result<Map<String, Value>, ApiResponse> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(ApiResponse::bad_request(
                "failed to parse JSON input: request body must be a JSON object",
            )),
            Err(e) => Err(ApiResponse::bad_request(&format!(
                "failed to parse JSON input: {e}"
            ))),
        }
    }
}

/// Moves leading path segments that name child namespaces into the namespace, so
/// `/v1/team-a/secret/data/x` equals `/v1/secret/data/x` with `X-Vault-Namespace: team-a`.
fn resolve_namespace(state: &ServerState, request: &mut ApiRequest) {
    loop {
        let Some((first, rest)) = request.path.split_once('/') else {
            return;
        };
        let candidate = format!("{}{first}/", request.namespace);
        if !state.namespaces.contains_key(&candidate) {
            return;
        }
        request.namespace = candidate;
        request.path = rest.to_owned();
    }
}

/// Handles one request against the state. The caller holds the state lock and has already
/// expired stale tokens and leases.
pub(crate) fn handle(state: &mut ServerState, mut request: ApiRequest) -> ApiResponse {
    match request.path.as_str() {
        "sys/health" => return sys::health(state, &request),
        "sys/seal-status" => return sys::seal_status(state, &request),
        _ => {}
    }
    if state.sealed || state.node_state == crate::options::NodeState::Uninitialized {
        return ApiResponse::sealed();
    }

    if !state.namespaces.contains_key(&request.namespace) {
        // NOTE: Vault Enterprise's response to an unknown namespace header is not documented.
        // This server treats it like an unmounted path.
        return ApiResponse::no_handler(&format!("{}{}", request.namespace, request.path));
    }
    resolve_namespace(state, &mut request);

    if let Some(response) = kubernetes::try_login(state, &request) {
        return response;
    }

    let now = state.now();
    let Some(token) = request
        .token
        .as_deref()
        .and_then(|t| state.tokens.get(t, now))
    else {
        return ApiResponse::invalid_token();
    };
    if !request.namespace.starts_with(&token.namespace) {
        return ApiResponse::invalid_token();
    }
    let token = token.clone();

    if let Some(denied) = check_acl(state, &request, &token) {
        return denied;
    }
    route(state, &request, &token)
}

/// Returns a 403 unless the token's policies grant what the request needs.
fn check_acl(state: &ServerState, request: &ApiRequest, token: &TokenEntry) -> Option<ApiResponse> {
    let namespace = state.namespaces.get(&request.namespace)?;
    let wanted: &[Capability] = match request.operation {
        Operation::Read => &[Capability::Read],
        Operation::List => &[Capability::List],
        Operation::Delete => &[Capability::Delete],
        Operation::Patch => &[Capability::Patch],
        Operation::Write if target_exists(namespace, &request.path) => &[Capability::Update],
        Operation::Write => &[Capability::Create],
        Operation::Other => return Some(ApiResponse::unsupported_operation()),
    };

    // Policies live in the token's namespace and name paths relative to it.
    let policies = &state.namespaces.get(&token.namespace)?.policies;
    let acl = Acl::new(
        token
            .policies
            .iter()
            .map(|name| (name.as_str(), policies.get(name))),
    );
    let relative_namespace = &request.namespace[token.namespace.len()..];
    let acl_path = format!("{relative_namespace}{}", request.path);
    (!acl.allows(&acl_path, wanted)).then(ApiResponse::permission_denied)
}

/// Vault's existence check: a write to a stored KV secret is an update, to a new one a create.
/// Paths without an existence check are always updates.
fn target_exists(namespace: &NamespaceState, path: &str) -> bool {
    match namespace.route(path) {
        Some(MountMatch::Kv2(mount, rest)) => match rest.strip_prefix("data/") {
            Some(key) => namespace.kv2[mount].secrets.contains_key(key),
            None => true,
        },
        Some(MountMatch::Kv1(mount, rest)) => namespace.kv1[mount].secrets.contains_key(rest),
        _ => true,
    }
}

fn route(state: &mut ServerState, request: &ApiRequest, token: &TokenEntry) -> ApiResponse {
    let path = request.path.as_str();
    if let Some(rest) = path.strip_prefix("auth/token/") {
        return token::handle(state, request, token, rest);
    }
    if path.starts_with("sys/") {
        return sys::handle(state, request, path);
    }

    let Some(namespace) = state.namespaces.get(&request.namespace) else {
        return ApiResponse::no_handler(path);
    };
    match namespace.route(path) {
        Some(MountMatch::Kv2(mount, rest)) => {
            let (mount, rest) = (mount.to_owned(), rest.to_owned());
            kv::handle_v2(state, request, &mount, &rest)
        }
        Some(MountMatch::Kv1(mount, rest)) => {
            let (mount, rest) = (mount.to_owned(), rest.to_owned());
            kv::handle_v1(state, request, &mount, &rest)
        }
        Some(MountMatch::Database(mount, rest)) => {
            let (mount, rest) = (mount.to_owned(), rest.to_owned());
            database::handle(state, request, token, &mount, &rest)
        }
        None => ApiResponse::no_handler(&format!("{}{path}", request.namespace)),
    }
}

/// Reads an integer field that Vault decodes weakly: a JSON number or a numeric string.
pub(crate) fn weak_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a `versions` list of integers.
pub(crate) fn versions_field(body: &Map<String, Value>) -> Result<Vec<u64>, ApiResponse> {
    let Some(raw) = body.get("versions") else {
        return Err(ApiResponse::bad_request("no version number provided"));
    };
    let items: Vec<Value> = match raw {
        Value::Array(items) => items.clone(),
        Value::String(s) => s.split(',').map(|p| Value::String(p.to_owned())).collect(),
        other => vec![other.clone()],
    };
    let versions: Option<Vec<u64>> = items.iter().map(weak_u64).collect();
    match versions {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiResponse::bad_request("no version number provided")),
    }
}
