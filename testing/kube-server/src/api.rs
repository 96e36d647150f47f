//! HTTP routing and the handlers of the resource paths: pod list and get, and the discovery
//! documents of the service account issuer. Watches live in `watch`, token requests in
//! `token`.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

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
        match (&self.route, &self.method) {
            (Route::Pods { namespace }, &Method::GET) => {
                let verb = if self.is_watch() { "watch" } else { "list" };
                Some((verb, "pods", namespace.as_deref()))
            }
            (Route::Pod { namespace, .. }, &Method::GET) => {
                Some(("get", "pods", Some(namespace.as_str())))
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
    let result = match (&request.route, &request.method) {
        (Route::Pods { namespace }, &Method::GET) => {
            let filter = match Filter::from_query(namespace.clone(), &request.query) {
                Ok(filter) => filter,
                Err(error) => return error_response(&error),
            };
            if request.is_watch() {
                return watch::start(shared, filter, &request.query);
            }
            list_pods(&shared.state.lock(), &filter, &request.query)
        }
        (Route::Pod { namespace, name }, &Method::GET) => {
            let state = shared.state.lock();
            match state.pods.get(&(namespace.clone(), name.clone())) {
                Some(pod) => Ok((StatusCode::OK, to_value(pod.as_ref()))),
                None => Err(ApiError::not_found("pods", name)),
            }
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

/// The namespace and selectors of a list or watch.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    namespace: Option<String>,
    fields: FieldSelector,
    labels: LabelSelector,
}

impl Filter {
    fn from_query(
        namespace: Option<String>,
        query: &HashMap<String, String>,
    ) -> Result<Filter, ApiError> {
        let selector = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
        Ok(Filter {
            namespace,
            fields: FieldSelector::parse(selector("fieldSelector"))?,
            labels: LabelSelector::parse(selector("labelSelector"))?,
        })
    }

    pub(crate) fn matches(&self, pod: &Pod) -> bool {
        let in_namespace = self
            .namespace
            .as_ref()
            .is_none_or(|ns| pod.metadata.namespace.as_ref() == Some(ns));
        in_namespace
            && self.fields.matches(pod)
            && self.labels.matches(pod.metadata.labels.as_ref())
    }
}

/// Lists pods at the current resource version.
///
/// NOTE: `limit` is ignored, so every list is one page without a `continue` token, and a
/// list at an exact older `resourceVersion` is 410 Expired because no snapshots are kept.
fn list_pods(
    state: &ServerState,
    filter: &Filter,
    query: &HashMap<String, String>,
) -> Result<(StatusCode, Value), ApiError> {
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
        .pods
        .values()
        .filter(|pod| filter.matches(pod))
        .map(|pod| to_value(pod.as_ref()))
        .collect();
    let list = json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": { "resourceVersion": state.resource_version.to_string() },
        "items": items,
    });
    Ok((StatusCode::OK, list))
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

pub(crate) fn to_value(pod: &Pod) -> Value {
    serde_json::to_value(pod).expect("a Pod always serializes to JSON")
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
