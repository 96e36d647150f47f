//! `Status` objects: the body the API server sends with every failed request and in `ERROR`
//! watch events.

use serde_json::{json, Value};

/// A failed request: the HTTP status code, the `reason` and the message of its `Status` body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the `Status`: the resource kind and, for one object, its name.
    pub details: Option<(String, Option<String>)>,
    /// `details.causes` as (`reason`, `message`) pairs.
    pub causes: &'static [(&'static str, &'static str)],
    /// `details.retryAfterSeconds`.
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    /// 400 `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 401 `Unauthorized`: no bearer token, or one the server does not know.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 `Forbidden`, worded as the RBAC authorizer words it.
    pub fn forbidden(user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> ApiError {
        let (group_resource, subresource) = match resource.split_once('/') {
            Some((resource, sub)) => (resource, Some(sub)),
            None => (resource, None),
        };
        let scope = match namespace {
            Some(namespace) => format!("in the namespace \"{namespace}\""),
            None => "at the cluster scope".to_owned(),
        };
        let subresource = subresource
            .map(|sub| format!(" subresource \"{sub}\""))
            .unwrap_or_default();
        let message = format!(
            "{group_resource} is forbidden: User \"{user}\" cannot {verb} resource \
             \"{group_resource}\"{subresource} in API group \"\" {scope}"
        );
        ApiError {
            details: Some((group_resource.to_owned(), None)),
            ..ApiError::new(403, "Forbidden", message)
        }
    }

    /// 404 `NotFound` for one named object, such as `pods "web-0" not found`.
    pub fn not_found(resource: &str, name: &str) -> ApiError {
        ApiError {
            details: Some((resource.to_owned(), Some(name.to_owned()))),
            ..ApiError::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
        }
    }

    /// 404 for a path the server does not serve; the real server sends the same bare body.
    pub fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 405 for a method the resource does not support.
    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    /// 410 `Expired`: the requested resource version is older than the retained history.
    pub fn expired(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 422 `Invalid`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    /// 503 `ServiceUnavailable`, what a client sees while the API server is unhealthy.
    pub fn unavailable() -> ApiError {
        ApiError::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )
    }

    /// 504 `Timeout` for a resource version newer than any the server has issued, with a
    /// `ResourceVersionTooLarge` cause and a retry after 1 s, as the API server's storage
    /// layer builds it (`NewTooLargeResourceVersionError` in k8s.io/apiserver).
    pub fn too_large_resource_version(requested: u64, current: u64) -> ApiError {
        ApiError {
            causes: &[("ResourceVersionTooLarge", "Too large resource version")],
            retry_after_seconds: Some(1),
            ..ApiError::new(
                504,
                "Timeout",
                format!("Timeout: Too large resource version: {requested}, current: {current}"),
            )
        }
    }

    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            causes: &[],
            retry_after_seconds: None,
        }
    }

    /// Builds the `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((kind, name)) = &self.details {
            let mut details = json!({ "kind": kind });
            if let Some(name) = name {
                details["name"] = json!(name);
            }
            status["details"] = details;
        }
        if !self.causes.is_empty() || self.retry_after_seconds.is_some() {
            if status.get("details").is_none() {
                status["details"] = json!({});
            }
            if !self.causes.is_empty() {
                let causes: Vec<Value> = self
                    .causes
                    .iter()
                    .map(|(reason, message)| json!({ "reason": reason, "message": message }))
                    .collect();
                status["details"]["causes"] = json!(causes);
            }
            if let Some(seconds) = self.retry_after_seconds {
                status["details"]["retryAfterSeconds"] = json!(seconds);
            }
        }
        status
    }
}
