//! Vault's response shapes: the JSON envelope of successful calls and the error bodies.
//!
//! From <https://developer.hashicorp.com/vault/api-docs#error-response>: every status of 400
//! and above carries `{"errors": [...]}`. The texts of authentication failures are those Vault
//! 1.16 and later send: a bad token yields both `permission denied` and `invalid token`
//! (<https://developer.hashicorp.com/vault/docs/concepts/tokens#error-responses>).

use serde_json::{json, Value};

use crate::ids;

/// An HTTP response the router produced.
#[derive(Debug)]
pub(crate) struct ApiResponse {
    pub(crate) status: u16,
    pub(crate) body: Option<Value>,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl ApiResponse {
    pub(crate) fn json(status: u16, body: Value) -> ApiResponse {
        ApiResponse {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    /// 204 No Content, what Vault sends for successful writes without response data.
    pub(crate) fn no_content() -> ApiResponse {
        ApiResponse {
            status: 204,
            body: None,
            headers: Vec::new(),
        }
    }

    pub(crate) fn errors(status: u16, messages: &[&str]) -> ApiResponse {
        ApiResponse::json(status, json!({ "errors": messages }))
    }

    /// 400 with one message, Vault's `logical.ErrorResponse`.
    pub(crate) fn bad_request(message: &str) -> ApiResponse {
        ApiResponse::errors(400, &[message])
    }

    /// 403 for a missing, unknown, expired or revoked token.
    pub(crate) fn invalid_token() -> ApiResponse {
        ApiResponse::errors(
            403,
            &["2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"],
        )
    }

    /// 403 for a valid token whose policies do not allow the request.
    pub(crate) fn permission_denied() -> ApiResponse {
        ApiResponse::errors(403, &["1 error occurred:\n\t* permission denied\n\n"])
    }

    /// 404 with an empty error list: nothing stored at the path.
    pub(crate) fn not_found() -> ApiResponse {
        ApiResponse::errors(404, &[])
    }

    /// 404 for a path no mount serves.
    pub(crate) fn no_handler(path: &str) -> ApiResponse {
        let message = format!("no handler for route {path:?}. route entry not found.");
        ApiResponse::errors(404, &[&message])
    }

    /// 404 for a path inside a mount that the engine does not serve.
    pub(crate) fn unsupported_path() -> ApiResponse {
        ApiResponse::errors(404, &["1 error occurred:\n\t* unsupported path\n\n"])
    }

    /// 405 for a method the path does not support.
    pub(crate) fn unsupported_operation() -> ApiResponse {
        ApiResponse::errors(405, &["1 error occurred:\n\t* unsupported operation\n\n"])
    }

    pub(crate) fn sealed() -> ApiResponse {
        ApiResponse::errors(503, &["Vault is sealed"])
    }

    /// The body Vault sends for `status` when nothing more specific applies; used for
    /// injected failures. `message` replaces the default text.
    pub(crate) fn for_status(status: u16, path: &str, message: Option<&str>) -> ApiResponse {
        if let Some(message) = message {
            return ApiResponse::errors(status, &[message]);
        }
        match status {
            403 => ApiResponse::permission_denied(),
            404 => ApiResponse::not_found(),
            405 => ApiResponse::unsupported_operation(),
            412 => ApiResponse::errors(412, &["required index state not present"]),
            429 => {
                let message = format!("request path {path:?}: rate limit quota exceeded");
                let mut response = ApiResponse::errors(429, &[&message]);
                response.headers.push(("retry-after", "1".to_owned()));
                response
            }
            503 => ApiResponse::sealed(),
            500 => ApiResponse::errors(500, &["internal error"]),
            _ => ApiResponse::errors(status, &["injected failure"]),
        }
    }
}

/// The common body of successful logical responses.
pub(crate) struct Envelope {
    pub(crate) data: Value,
    pub(crate) lease_id: String,
    pub(crate) lease_duration: u64,
    pub(crate) renewable: bool,
    pub(crate) warnings: Vec<String>,
    pub(crate) auth: Value,
    pub(crate) mount_type: &'static str,
}

impl Envelope {
    pub(crate) fn data(data: Value, mount_type: &'static str) -> Envelope {
        Envelope {
            data,
            lease_id: String::new(),
            lease_duration: 0,
            renewable: false,
            warnings: Vec::new(),
            auth: Value::Null,
            mount_type,
        }
    }

    pub(crate) fn auth(auth: Value, mount_type: &'static str) -> Envelope {
        Envelope {
            auth,
            ..Envelope::data(Value::Null, mount_type)
        }
    }

    pub(crate) fn with_warnings(mut self, warnings: impl IntoIterator<Item = String>) -> Envelope {
        self.warnings.extend(warnings);
        self
    }

    pub(crate) fn into_response(self, status: u16) -> ApiResponse {
        let warnings = if self.warnings.is_empty() {
            Value::Null
        } else {
            json!(self.warnings)
        };
        ApiResponse::json(
            status,
            json!({
                "request_id": ids::uuid(),
                "lease_id": self.lease_id,
                "renewable": self.renewable,
                "lease_duration": self.lease_duration,
                "data": self.data,
                "wrap_info": null,
                "warnings": warnings,
                "auth": self.auth,
                "mount_type": self.mount_type,
            }),
        )
    }

    pub(crate) fn ok(self) -> ApiResponse {
        self.into_response(200)
    }
}
