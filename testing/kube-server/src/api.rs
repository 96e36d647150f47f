//! HTTP routing and the handlers of the resource paths: list and get of pods and Secrets, and
//! the discovery documents of the service account issuer. Watches live in `watch`, token
//! requests in `token`.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::object::{Kind, Object};
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::state::ServerState;
use crate::status::ApiError;
use crate::{token, watch};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A parsed request, with the verb and resource RBAC would see.
pub(crate) struct ApiRequest {
    pub(crate) method: Method,
    pub(crate) route: Route,
    pub(crate) query: HashMap<String, String>,
    pub(crate) raw_query: String,
    pub(crate) token: Option<String>,
    pub(crate) body: Bytes,
}

/// The paths the server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/api/v1/pods` (`namespace: None`) or `/api/v1/namespaces/{ns}/pods`.
    Pods {
        namespace: Option<String>,
    },
    /// `/api/v1/namespaces/{ns}/pods/{name}`.
    Pod {
        namespace: String,
        name: String,
    },
    /// `/api/v1/secrets` (`namespace: None`) or `/api/v1/namespaces/{ns}/secrets`.
    Secrets {
        namespace: Option<String>,
    },
    /// `/api/v1/namespaces/{ns}/secrets/{name}`.
    Secret {
        namespace: String,
        name: String,
    },
    /// `/api/v1/namespaces/{ns}/serviceaccounts/{name}/token`.
    ServiceAccountToken {
        namespace: String,
        name: String,
    },
    /// `/.well-known/openid-configuration`.
    OpenIdConfiguration,
    /// `/openid/v1/jwks`.
    Jwks,
    /// `/version`.
    Version,
    Unknown(String),
}

impl Route {
    pub(crate) fn parse(path: &str) -> Route {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let owned = |s: &str| s.to_owned();
        match segments.as_slice() {
            ["api", "v1", "pods"] => Route::Pods { namespace: None },
            ["api", "v1", "namespaces", ns, "pods"] => Route::Pods {
                namespace: Some(owned(ns)),
            },
            ["api", "v1", "namespaces", ns, "pods", name] => Route::Pod {
                namespace: owned(ns),
                name: owned(name),
            },
            ["api", "v1", "secrets"] => Route::Secrets { namespace: None },
            ["api", "v1", "namespaces", ns, "secrets"] => Route::Secrets {
                namespace: Some(owned(ns)),
            },
            ["api", "v1", "namespaces", ns, "secrets", name] => Route::Secret {
                namespace: owned(ns),
                name: owned(name),
            },
            ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"] => {
                Route::ServiceAccountToken {
                    namespace: owned(ns),
                    name: owned(name),
                }
            }
            [".well-known", "openid-configuration"] => Route::OpenIdConfiguration,
            ["openid", "v1", "jwks"] => Route::Jwks,
            ["version"] => Route::Version,
            _ => Route::Unknown(path.to_owned()),
        }
    }
}

impl ApiRequest {
    fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }

    /// Returns the RBAC verb, resource and namespace, or `None` for paths outside the
    /// resource API, which need no authorization here.
    pub(crate) fn attributes(&self) -> Option<(&'static str, &'static str, Option<&str>)> {
        let collection_verb = if self.is_watch() { "watch" } else { "list" };
        match (&self.route, &self.method) {
            (Route::Pods { namespace }, &Method::GET) => {
                Some((collection_verb, "pods", namespace.as_deref()))
            }
            (Route::Pod { namespace, .. }, &Method::GET) => {
                Some(("get", "pods", Some(namespace.as_str())))
            }
            (Route::Secrets { namespace }, &Method::GET) => {
                Some((collection_verb, "secrets", namespace.as_deref()))
            }
            (Route::Secret { namespace, .. }, &Method::GET) => {
                Some(("get", "secrets", Some(namespace.as_str())))
            }
            (Route::ServiceAccountToken { namespace, .. }, &Method::POST) => {
                Some(("create", "serviceaccounts/token", Some(namespace.as_str())))
            }
            _ => None,
        }
    }
}

/// Routes an authorized request to its handler.
pub(crate) fn dispatch(shared: &Shared, request: ApiRequest) -> Response<Body> {
    let collection = match &request.route {
        Route::Pods { namespace } => Some((Kind::Pod, namespace)),
        Route::Secrets { namespace } => Some((Kind::Secret, namespace)),
        _ => None,
    };
    if let (Some((kind, namespace)), &Method::GET) = (collection, &request.method) {
        let filter = match Filter::from_query(kind, namespace.clone(), &request.query) {
            Ok(filter) => filter,
            Err(error) => return error_response(&error),
        };
        if request.is_watch() {
            return watch::start(shared, filter, &request.query);
        }
        return match list(&shared.state.lock(), &filter, &request.query) {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(error) => error_response(&error),
        };
    }
    let result = match (&request.route, &request.method) {
        (Route::Pod { namespace, name }, &Method::GET) => {
            get(&shared.state.lock(), Kind::Pod, namespace, name)
        }
        (Route::Secret { namespace, name }, &Method::GET) => {
            get(&shared.state.lock(), Kind::Secret, namespace, name)
        }
        (Route::ServiceAccountToken { namespace, name }, &Method::POST) => {
            token::create(&shared.state.lock(), namespace, name, &request.body)
        }
        (Route::OpenIdConfiguration, &Method::GET) => {
            let issuer = shared.state.lock().issuer.clone();
            Ok((StatusCode::OK, openid_configuration(&issuer)))
        }
        (Route::Jwks, &Method::GET) => Ok((StatusCode::OK, shared.state.lock().signing_key.jwks())),
        (Route::Version, &Method::GET) => Ok((StatusCode::OK, version())),
        (Route::Unknown(_), _) => Err(ApiError::no_route()),
        (_, method) => Err(ApiError::method_not_allowed(method.as_str())),
    };
    match result {
        Ok((status, body)) => json_response(status, &body),
        Err(error) => error_response(&error),
    }
}

/// The kind, namespace and selectors of a list or watch.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    pub(crate) kind: Kind,
    namespace: Option<String>,
    fields: FieldSelector,
    labels: LabelSelector,
}

impl Filter {
    fn from_query(
        kind: Kind,
        namespace: Option<String>,
        query: &HashMap<String, String>,
    ) -> Result<Filter, ApiError> {
        let selector = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
        Ok(Filter {
            kind,
            namespace,
            fields: FieldSelector::parse(selector("fieldSelector"), kind)?,
            labels: LabelSelector::parse(selector("labelSelector"))?,
        })
    }

    pub(crate) fn matches(&self, object: &Object) -> bool {
        let metadata = object.metadata();
        let in_namespace = self
            .namespace
            .as_ref()
            .is_none_or(|ns| metadata.namespace.as_ref() == Some(ns));
        object.kind() == self.kind
            && in_namespace
            && self.fields.matches(object)
            && self.labels.matches(metadata.labels.as_ref())
    }
}

/// Returns one object, or 404 with the API server's `Status`.
fn get(
    state: &ServerState,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<(StatusCode, Value), ApiError> {
    match state.object(kind, namespace, name) {
        Some(object) => Ok((StatusCode::OK, object.to_value())),
        None => Err(ApiError::not_found(kind.resource(), name)),
    }
}

/// Lists the objects of the filter's kind at the current resource version.
///
/// NOTE: `limit` is ignored, so every list is one page without a `continue` token, and a
/// list at an exact older `resourceVersion` is 410 Expired because no snapshots are kept.
fn list(
    state: &ServerState,
    filter: &Filter,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let requested = query
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|rv| !rv.is_empty());
    if let Some(requested) = requested {
        let requested = parse_resource_version(requested)?;
        if requested > state.resource_version {
            return Err(ApiError::too_large_resource_version(
                requested,
                state.resource_version,
            ));
        }
        let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
        if exact && requested != state.resource_version {
            return Err(ApiError::expired(requested, state.resource_version));
        }
    }
    let items: Vec<Value> = state
        .objects(filter.kind)
        .iter()
        .filter(|object| filter.matches(object))
        .map(Object::to_value)
        .collect();
    Ok(json!({
        "kind": format!("{}List", filter.kind.name()),
        "apiVersion": "v1",
        "metadata": { "resourceVersion": state.resource_version.to_string() },
        "items": items,
    }))
}

pub(crate) fn parse_resource_version(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resource version: {text:?} is not a number"
        ))
    })
}

fn openid_configuration(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0",
        "platform": "linux/amd64",
    })
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("static header names and values are valid")
}

pub(crate) fn error_response(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &error.to_status())
}
