//! Checks of a pod's projected service-account token before the agent logs in to Vault with it,
//! or reads Kubernetes Secrets with it.
//!
//! The agent reads the token from the calling container, which could have replaced it with a
//! token of another pod. The claims must therefore name the attested pod: its UID, name and
//! namespace, its service account, an audience and an unexpired lifetime. A projected token
//! carries them as in this payload (abridged):
//!
//! ```json
//! { "aud": ["vault"], "exp": 1717674955, "nbf": 1717671355,
//!   "sub": "system:serviceaccount:shop:checkout",
//!   "kubernetes.io": { "namespace": "shop",
//!     "pod": { "name": "web-5d9c7b6f4-x2x8q", "uid": "0d8b260e-..." },
//!     "serviceaccount": { "name": "checkout", "uid": "e6a8680e-..." } } }
//! ```
//!
//! The signature is not verified here. Vault verifies it when the agent logs in with the token,
//! and a token that fails there gets no Vault token. These checks only keep the agent from
//! logging in as an identity other than the caller's. Claims are identities, not secrets, so
//! errors quote them. No error, log or `Debug` output contains the token itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::annotations::DEFAULT_SERVICE_ACCOUNT;

/// Maximum token length in bytes. A projected token with an RS256 signature is around 1 KiB (an
/// estimate from the claims above), so this bound leaves room for long names and audiences.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock difference tolerated between this node and the token's issuer when checking `exp` and
/// `nbf`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

const CLAIM_NAMESPACE: &str = "kubernetes.io.namespace";
const CLAIM_POD_NAME: &str = "kubernetes.io.pod.name";
const CLAIM_POD_UID: &str = "kubernetes.io.pod.uid";
const CLAIM_SERVICE_ACCOUNT_NAME: &str = "kubernetes.io.serviceaccount.name";
const CLAIM_SERVICE_ACCOUNT_UID: &str = "kubernetes.io.serviceaccount.uid";
const CLAIM_NODE_NAME: &str = "kubernetes.io.node.name";

/// A token that the agent does not send to Vault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenClaimsError {
    #[error("the service account token is {len} bytes, more than the maximum of {max}")]
    TooLarge { len: usize, max: usize },

    #[error("the service account token is empty")]
    Empty,

    #[error(
        "the service account token is not a JWT: it has {parts} dot-separated parts, expected 3"
    )]
    NotJwt { parts: usize },

    #[error("the {part} of the service account token is not valid unpadded base64url")]
    InvalidBase64 { part: &'static str },

    #[error("the {part} of the service account token is not a JSON object")]
    InvalidJson { part: &'static str },

    #[error(
        "claim {claim} is missing from the service account token (a projected token from a \
         serviceAccountToken volume has it, a legacy Secret-based token does not)"
    )]
    MissingClaim { claim: &'static str },

    #[error("claim {claim} of the service account token is not {expected_type}")]
    InvalidClaim {
        claim: &'static str,
        expected_type: &'static str,
    },

    #[error(
        "claim {claim} of the service account token is {found:?}, but the calling pod's is \
         {expected:?}"
    )]
    ClaimMismatch {
        claim: &'static str,
        expected: String,
        found: String,
    },

    #[error(
        "the service account token's audience {found:?} does not contain {expected:?}: the \
         projected token volume must request this audience"
    )]
    AudienceMismatch {
        expected: String,
        found: Vec<String>,
    },

    #[error("the service account token expired at {expired_at}")]
    Expired { expired_at: String },

    #[error("the service account token is not valid before {not_before}")]
    NotYetValid { not_before: String },

    #[error("the attested pod has no {field}, so its token cannot be checked (this is a bug)")]
    IncompletePod { field: &'static str },
}

/// The identity a token must name: the caller's attested pod and the configured audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedIdentity {
    pub pod_uid: String,
    pub pod_name: String,
    pub namespace: String,
    pub service_account: String,
    /// Audience the projected token volume requests, such as `vault`.
    pub audience: String,
}

impl ExpectedIdentity {
    /// Takes the identity from `pod`. A pod without `spec.serviceAccountName` runs as the
    /// `default` service account.
    pub fn from_pod(pod: &Pod, audience: &str) -> Result<Self, TokenClaimsError> {
        let field = |value: Option<&String>, field| {
            value
                .filter(|value| !value.is_empty())
                .cloned()
                .ok_or(TokenClaimsError::IncompletePod { field })
        };
        let service_account = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.as_deref())
            .filter(|name| !name.is_empty())
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
        Ok(ExpectedIdentity {
            pod_uid: field(pod.metadata.uid.as_ref(), "metadata.uid")?,
            pod_name: field(pod.metadata.name.as_ref(), "metadata.name")?,
            namespace: field(pod.metadata.namespace.as_ref(), "metadata.namespace")?,
            service_account: service_account.to_string(),
            audience: audience.to_string(),
        })
    }
}

/// Claims of a token that passed [`check_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub audiences: Vec<String>,
    pub expires_at: SystemTime,
    pub not_before: Option<SystemTime>,
    pub issued_at: Option<SystemTime>,
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub service_account_name: String,
    pub service_account_uid: Option<String>,
    /// The node the pod is bound to. Tokens from older Kubernetes versions lack this claim.
    pub node_name: Option<String>,
}

/// Decodes the payload of `token`, a projected service-account token in JWT compact form, and
/// checks that it names `expected` and is valid at `now`.
///
/// Leading and trailing ASCII whitespace is ignored, so a token file that ends in a newline
/// works. The signature is not verified: Vault verifies it at login.
pub fn check_token(
    token: &[u8],
    expected: &ExpectedIdentity,
    now: SystemTime,
) -> Result<TokenClaims, TokenClaimsError> {
    check(token, expected, AudienceCheck::Required, now)
}

/// Like [`check_token`] without the audience check, for the token the kubelet mounts for the
/// API server, whose audience is the cluster's API audience (`--api-audiences`, by default the
/// issuer), which the agent does not know. The API server checks it when the agent reads with
/// the token.
pub fn check_api_server_token(
    token: &[u8],
    expected: &ExpectedIdentity,
    now: SystemTime,
) -> Result<TokenClaims, TokenClaimsError> {
    check(token, expected, AudienceCheck::Skipped, now)
}

/// Whether the token's audience must contain [`ExpectedIdentity::audience`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum AudienceCheck {
    Required,
    Skipped,
}

fn check(
    token: &[u8],
    expected: &ExpectedIdentity,
    audience: AudienceCheck,
    now: SystemTime,
) -> Result<TokenClaims, TokenClaimsError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenClaimsError::TooLarge {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    let token = token.trim_ascii();
    if token.is_empty() {
        return Err(TokenClaimsError::Empty);
    }
    let parts: Vec<&[u8]> = token.split(|b| *b == b'.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(TokenClaimsError::NotJwt { parts: parts.len() });
    };
    decode_json_object(header, "header")?;
    let payload = decode_json_object(payload, "payload")?;
    if signature.is_empty() || decode_base64url(signature).is_none() {
        return Err(TokenClaimsError::InvalidBase64 { part: "signature" });
    }

    let claims = read_claims(&payload)?;
    check_identity(&claims, expected)?;
    if audience == AudienceCheck::Required && !claims.audiences.contains(&expected.audience) {
        return Err(TokenClaimsError::AudienceMismatch {
            expected: expected.audience.clone(),
            found: claims.audiences.clone(),
        });
    }
    check_lifetime(&claims, now)?;
    Ok(claims)
}

fn read_claims(payload: &serde_json::Map<String, Value>) -> Result<TokenClaims, TokenClaimsError> {
    let kubernetes = payload.get("kubernetes.io");
    let nested = |path: &[&str]| {
        path.iter()
            .try_fold(kubernetes?, |value, key| value.get(key))
    };
    let required = |claim, path: &[&str]| match nested(path) {
        None | Some(Value::Null) => Err(TokenClaimsError::MissingClaim { claim }),
        Some(value) => as_string(value, claim),
    };
    let optional = |claim, path: &[&str]| match nested(path) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => as_string(value, claim).map(Some),
    };
    let top_string = |claim| match payload.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => as_string(value, claim).map(Some),
    };

    let expires_at = match payload.get("exp") {
        None | Some(Value::Null) => return Err(TokenClaimsError::MissingClaim { claim: "exp" }),
        Some(value) => numeric_date(value, "exp")?,
    };
    Ok(TokenClaims {
        issuer: top_string("iss")?,
        subject: top_string("sub")?,
        audiences: audiences(payload.get("aud"))?,
        expires_at,
        not_before: optional_numeric_date(payload.get("nbf"), "nbf")?,
        issued_at: optional_numeric_date(payload.get("iat"), "iat")?,
        namespace: required(CLAIM_NAMESPACE, &["namespace"])?,
        pod_name: required(CLAIM_POD_NAME, &["pod", "name"])?,
        pod_uid: required(CLAIM_POD_UID, &["pod", "uid"])?,
        service_account_name: required(CLAIM_SERVICE_ACCOUNT_NAME, &["serviceaccount", "name"])?,
        service_account_uid: optional(CLAIM_SERVICE_ACCOUNT_UID, &["serviceaccount", "uid"])?,
        node_name: optional(CLAIM_NODE_NAME, &["node", "name"])?,
    })
}

fn check_identity(
    claims: &TokenClaims,
    expected: &ExpectedIdentity,
) -> Result<(), TokenClaimsError> {
    let pairs = [
        (CLAIM_NAMESPACE, &expected.namespace, &claims.namespace),
        (CLAIM_POD_NAME, &expected.pod_name, &claims.pod_name),
        (CLAIM_POD_UID, &expected.pod_uid, &claims.pod_uid),
        (
            CLAIM_SERVICE_ACCOUNT_NAME,
            &expected.service_account,
            &claims.service_account_name,
        ),
    ];
    for (claim, expected, found) in pairs {
        if expected != found {
            return Err(TokenClaimsError::ClaimMismatch {
                claim,
                expected: expected.clone(),
                found: found.clone(),
            });
        }
    }

    // The `sub` of a service-account token is `system:serviceaccount:<namespace>:<name>`.
    if let Some(subject) = &claims.subject {
        let expected_subject = format!(
            "system:serviceaccount:{}:{}",
            expected.namespace, expected.service_account
        );
        if *subject != expected_subject {
            return Err(TokenClaimsError::ClaimMismatch {
                claim: "sub",
                expected: expected_subject,
                found: subject.clone(),
            });
        }
    }
    Ok(())
}

fn check_lifetime(claims: &TokenClaims, now: SystemTime) -> Result<(), TokenClaimsError> {
    let expired = claims
        .expires_at
        .checked_add(CLOCK_SKEW)
        .is_none_or(|deadline| deadline <= now);
    if expired {
        return Err(TokenClaimsError::Expired {
            expired_at: format_time(claims.expires_at),
        });
    }
    if let Some(not_before) = claims.not_before {
        if now
            .checked_add(CLOCK_SKEW)
            .is_some_and(|late_now| not_before > late_now)
        {
            return Err(TokenClaimsError::NotYetValid {
                not_before: format_time(not_before),
            });
        }
    }
    Ok(())
}

fn as_string(value: &Value, claim: &'static str) -> Result<String, TokenClaimsError> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or(TokenClaimsError::InvalidClaim {
            claim,
            expected_type: "a string",
        })
}

/// Reads `aud`, which RFC 7519 allows as one string or an array of strings.
fn audiences(value: Option<&Value>) -> Result<Vec<String>, TokenClaimsError> {
    let invalid = TokenClaimsError::InvalidClaim {
        claim: "aud",
        expected_type: "a string or an array of strings",
    };
    match value {
        None | Some(Value::Null) => Err(TokenClaimsError::MissingClaim { claim: "aud" }),
        Some(Value::String(audience)) => Ok(vec![audience.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or(invalid.clone()))
            .collect(),
        Some(_) => Err(invalid),
    }
}

fn optional_numeric_date(
    value: Option<&Value>,
    claim: &'static str,
) -> Result<Option<SystemTime>, TokenClaimsError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => numeric_date(value, claim).map(Some),
    }
}

/// Reads an RFC 7519 NumericDate: seconds since the Unix epoch, possibly with a fraction.
fn numeric_date(value: &Value, claim: &'static str) -> Result<SystemTime, TokenClaimsError> {
    let invalid = TokenClaimsError::InvalidClaim {
        claim,
        expected_type: "a non-negative number of seconds since 1970",
    };
    let seconds = match value.as_u64() {
        Some(seconds) => Duration::from_secs(seconds),
        None => {
            let seconds = value.as_f64().ok_or(invalid.clone())?;
            Duration::try_from_secs_f64(seconds).map_err(|_| invalid.clone())?
        }
    };
    UNIX_EPOCH.checked_add(seconds).ok_or(invalid)
}

fn format_time(time: SystemTime) -> String {
    let seconds = match time.duration_since(UNIX_EPOCH) {
        Ok(elapsed) => elapsed.as_secs(),
        Err(_) => 0,
    };
    let formatted = i64::try_from(seconds)
        .ok()
        .and_then(|seconds| time::OffsetDateTime::from_unix_timestamp(seconds).ok())
        .and_then(|date| {
            date.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    match formatted {
        Some(formatted) => formatted,
        None => format!("{seconds} s after 1970-01-01T00:00:00Z"),
    }
}

fn decode_json_object(
    part: &[u8],
    name: &'static str,
) -> Result<serde_json::Map<String, Value>, TokenClaimsError> {
    let bytes = decode_base64url(part).ok_or(TokenClaimsError::InvalidBase64 { part: name })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(TokenClaimsError::InvalidJson { part: name }),
    }
}

/// Decodes unpadded base64url (RFC 4648 section 5), the encoding of JWT parts (RFC 7515).
/// Returns `None` for any other character, padding, an impossible length or non-zero trailing
/// bits.
fn decode_base64url(text: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POD_UID: &str = "0d8b260e-ef0e-45fb-be8e-ff44f97722e8";
    /// 2024-06-06T10:35:55Z, when the test tokens were issued.
    const ISSUED_AT: u64 = 1_717_670_155;
    const EXPIRES_AT: u64 = ISSUED_AT + 3600;
    const SIGNATURE: &str = "c2lnbmF0dXJlLW5vdC1jaGVja2VkLWhlcmU";

    fn encode_base64url(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn payload() -> Value {
        json!({
            "aud": ["vault"],
            "exp": EXPIRES_AT,
            "iat": ISSUED_AT,
            "nbf": ISSUED_AT,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "jti": "e51f1fbc-4733-4b85-a59f-ba80c0523874",
            "kubernetes.io": {
                "namespace": "shop",
                "node": { "name": "node-a", "uid": "517eb86e-b863-451b-bf70-86cb61439a3a" },
                "pod": { "name": "web-5d9c7b6f4-x2x8q", "uid": POD_UID },
                "serviceaccount": {
                    "name": "checkout",
                    "uid": "e6a8680e-d103-4cce-80ea-03acbbeacf7d",
                },
                "warnafter": ISSUED_AT + 3000,
            },
            "sub": "system:serviceaccount:shop:checkout",
        })
    }

    fn token_for(payload: &Value) -> String {
        let header =
            json!({ "alg": "RS256", "kid": "OAjVVaejWFc0Yt9ykr0_8lMMuRNs67OXTWHsN02Pkyw" });
        format!(
            "{}.{}.{SIGNATURE}",
            encode_base64url(header.to_string().as_bytes()),
            encode_base64url(payload.to_string().as_bytes()),
        )
    }

    fn expected() -> ExpectedIdentity {
        ExpectedIdentity {
            pod_uid: POD_UID.into(),
            pod_name: "web-5d9c7b6f4-x2x8q".into(),
            namespace: "shop".into(),
            service_account: "checkout".into(),
            audience: "vault".into(),
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn check(payload: &Value) -> Result<TokenClaims, TokenClaimsError> {
        check_token(
            token_for(payload).as_bytes(),
            &expected(),
            at(ISSUED_AT + 60),
        )
    }

    fn with(path: &[&str], value: Value) -> Value {
        let mut payload = payload();
        let (last, parents) = path.split_last().unwrap();
        let mut target = &mut payload;
        for key in parents {
            target = &mut target[*key];
        }
        match value {
            Value::Null => {
                target.as_object_mut().unwrap().remove(*last);
            }
            value => target[*last] = value,
        }
        payload
    }

    #[test]
    fn base64url_vectors() {
        let vectors: [(&str, &[u8]); 8] = [
            ("", b""),
            ("Zg", b"f"),
            ("Zm8", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYg", b"foob"),
            ("Zm9vYmE", b"fooba"),
            ("Zm9vYmFy", b"foobar"),
            ("-_8", &[0xfb, 0xff]),
        ];
        for (text, bytes) in vectors {
            assert_eq!(
                decode_base64url(text.as_bytes()).as_deref(),
                Some(bytes),
                "{text}"
            );
            assert_eq!(encode_base64url(bytes), text);
        }
    }

    #[test]
    fn base64url_rejects_invalid() {
        for text in ["Z", "Zg==", "Zm9v+", "Zm9v/", "Zh", "Zm9", "Zm 9v", "é"] {
            assert_eq!(decode_base64url(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn api_server_token_skips_only_audience() {
        let api_audience = with(
            &["aud"],
            json!(["https://kubernetes.default.svc.cluster.local"]),
        );
        let now = at(ISSUED_AT + 60);
        let token = token_for(&api_audience);
        assert!(matches!(
            check_token(token.as_bytes(), &expected(), now),
            Err(TokenClaimsError::AudienceMismatch { .. })
        ));
        let claims = check_api_server_token(token.as_bytes(), &expected(), now).unwrap();
        assert_eq!(claims.pod_uid, POD_UID);

        let other_pod = with(&["kubernetes.io", "pod", "uid"], json!("other-uid"));
        let error =
            check_api_server_token(token_for(&other_pod).as_bytes(), &expected(), now).unwrap_err();
        assert!(
            matches!(error, TokenClaimsError::ClaimMismatch { claim, .. } if claim == CLAIM_POD_UID),
            "{error}"
        );
        let expired = check_api_server_token(token.as_bytes(), &expected(), at(EXPIRES_AT + 3600));
        assert!(matches!(expired, Err(TokenClaimsError::Expired { .. })));
    }

    #[test]
    fn valid_token_claims() {
        let claims = check(&payload()).unwrap();
        assert_eq!(claims.pod_uid, POD_UID);
        assert_eq!(claims.pod_name, "web-5d9c7b6f4-x2x8q");
        assert_eq!(claims.namespace, "shop");
        assert_eq!(claims.service_account_name, "checkout");
        assert_eq!(
            claims.service_account_uid.as_deref(),
            Some("e6a8680e-d103-4cce-80ea-03acbbeacf7d")
        );
        assert_eq!(claims.node_name.as_deref(), Some("node-a"));
        assert_eq!(claims.audiences, ["vault"]);
        assert_eq!(claims.expires_at, at(EXPIRES_AT));
        assert_eq!(claims.not_before, Some(at(ISSUED_AT)));
        assert_eq!(claims.issued_at, Some(at(ISSUED_AT)));
        assert_eq!(
            claims.issuer.as_deref(),
            Some("https://kubernetes.default.svc.cluster.local")
        );
        assert_eq!(
            claims.subject.as_deref(),
            Some("system:serviceaccount:shop:checkout")
        );
    }

    #[test]
    fn audience_as_string_or_array() {
        assert!(check(&with(&["aud"], json!("vault"))).is_ok());
        assert!(check(&with(
            &["aud"],
            json!(["https://kubernetes.default.svc", "vault"])
        ))
        .is_ok());

        let error = check(&with(&["aud"], json!(["https://kubernetes.default.svc"]))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the service account token's audience [\"https://kubernetes.default.svc\"] does not \
             contain \"vault\": the projected token volume must request this audience"
        );
        let error = check(&with(&["aud"], json!([]))).unwrap_err();
        assert!(matches!(error, TokenClaimsError::AudienceMismatch { .. }));
        let error = check(&with(&["aud"], json!(["vault", 7]))).unwrap_err();
        assert!(matches!(
            error,
            TokenClaimsError::InvalidClaim { claim: "aud", .. }
        ));
        let error = check(&with(&["aud"], Value::Null)).unwrap_err();
        assert_eq!(error, TokenClaimsError::MissingClaim { claim: "aud" });
    }

    #[test]
    fn identity_mismatches_name_claim() {
        let cases = [
            (
                &["kubernetes.io", "pod", "uid"][..],
                "kubernetes.io.pod.uid",
                POD_UID,
            ),
            (
                &["kubernetes.io", "pod", "name"][..],
                "kubernetes.io.pod.name",
                "web-5d9c7b6f4-x2x8q",
            ),
            (
                &["kubernetes.io", "namespace"][..],
                "kubernetes.io.namespace",
                "shop",
            ),
            (
                &["kubernetes.io", "serviceaccount", "name"][..],
                "kubernetes.io.serviceaccount.name",
                "checkout",
            ),
            (&["sub"][..], "sub", "system:serviceaccount:shop:checkout"),
        ];
        for (path, claim, expected_value) in cases {
            let error = check(&with(path, json!("other"))).unwrap_err();
            assert_eq!(
                error,
                TokenClaimsError::ClaimMismatch {
                    claim,
                    expected: expected_value.into(),
                    found: "other".into(),
                },
                "{claim}"
            );
            let text = error.to_string();
            assert!(text.contains(claim), "{text}");
            assert!(text.contains("\"other\""), "{text}");
        }
    }

    #[test]
    fn default_service_account() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "batch-1", "namespace": "jobs", "uid": POD_UID },
            "spec": { "containers": [{ "name": "run" }] },
        }))
        .unwrap();
        let expected = ExpectedIdentity::from_pod(&pod, "vault").unwrap();
        assert_eq!(expected.service_account, "default");
        assert_eq!(expected.pod_name, "batch-1");
        assert_eq!(expected.namespace, "jobs");
        assert_eq!(expected.pod_uid, POD_UID);
        assert_eq!(expected.audience, "vault");
    }

    #[test]
    fn pod_without_uid_is_a_bug() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "batch-1", "namespace": "jobs" },
        }))
        .unwrap();
        let error = ExpectedIdentity::from_pod(&pod, "vault").unwrap_err();
        assert_eq!(
            error,
            TokenClaimsError::IncompletePod {
                field: "metadata.uid"
            }
        );
    }

    #[test]
    fn missing_and_wrong_type_claims() {
        let legacy = json!({
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": "shop",
            "kubernetes.io/serviceaccount/service-account.name": "checkout",
            "sub": "system:serviceaccount:shop:checkout",
            "aud": "vault",
            "exp": EXPIRES_AT,
        });
        let error = check(&legacy).unwrap_err();
        assert_eq!(
            error,
            TokenClaimsError::MissingClaim {
                claim: CLAIM_NAMESPACE
            }
        );
        assert!(error.to_string().contains("legacy Secret-based token"));

        let error = check(&with(&["kubernetes.io", "pod"], Value::Null)).unwrap_err();
        assert_eq!(
            error,
            TokenClaimsError::MissingClaim {
                claim: CLAIM_POD_NAME
            }
        );
        let error = check(&with(&["kubernetes.io", "pod", "uid"], json!(42))).unwrap_err();
        assert_eq!(
            error,
            TokenClaimsError::InvalidClaim {
                claim: CLAIM_POD_UID,
                expected_type: "a string",
            }
        );
        let error = check(&with(&["exp"], Value::Null)).unwrap_err();
        assert_eq!(error, TokenClaimsError::MissingClaim { claim: "exp" });
        for bad_exp in [json!("1717673755"), json!(-5), json!(1e300)] {
            let error = check(&with(&["exp"], bad_exp.clone())).unwrap_err();
            assert!(
                matches!(error, TokenClaimsError::InvalidClaim { claim: "exp", .. }),
                "{bad_exp}: {error}"
            );
        }
        // `iss`, `sub`, `nbf`, `iat`, `jti` and the node claim may be absent.
        let mut minimal = payload();
        for claim in ["iss", "sub", "nbf", "iat", "jti"] {
            minimal.as_object_mut().unwrap().remove(claim);
        }
        minimal["kubernetes.io"]
            .as_object_mut()
            .unwrap()
            .remove("node");
        let claims = check(&minimal).unwrap();
        assert_eq!(claims.subject, None);
        assert_eq!(claims.node_name, None);
    }

    #[test]
    fn lifetime_with_clock_skew() {
        let token = token_for(&payload());
        let skew = CLOCK_SKEW.as_secs();
        let cases = [
            (ISSUED_AT, true),
            (ISSUED_AT - skew + 1, true),
            (ISSUED_AT - skew - 1, false),
            (EXPIRES_AT - 1, true),
            (EXPIRES_AT + skew - 1, true),
            (EXPIRES_AT + skew, false),
        ];
        for (now, valid) in cases {
            let result = check_token(token.as_bytes(), &expected(), at(now));
            assert_eq!(result.is_ok(), valid, "now {now}: {result:?}");
        }

        let error = check_token(token.as_bytes(), &expected(), at(EXPIRES_AT + 3600)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the service account token expired at 2024-06-06T11:35:55Z"
        );
        let error = check_token(token.as_bytes(), &expected(), at(0)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the service account token is not valid before 2024-06-06T10:35:55Z"
        );
    }

    #[test]
    fn fractional_exp_accepted() {
        let claims = check(&with(&["exp"], json!(EXPIRES_AT as f64 + 0.5))).unwrap();
        assert_eq!(
            claims.expires_at,
            at(EXPIRES_AT) + Duration::from_millis(500)
        );
    }

    #[test]
    fn surrounding_whitespace_ignored() {
        let token = format!("\n{}\n", token_for(&payload()));
        let claims = check_token(token.as_bytes(), &expected(), at(ISSUED_AT));
        assert!(claims.is_ok(), "{claims:?}");
    }

    #[test]
    fn malformed_tokens_rejected() {
        let good = token_for(&payload());
        let (header, rest) = good.split_once('.').unwrap();
        let (body, _) = rest.split_once('.').unwrap();
        let not_object = encode_base64url(b"[1,2]");
        let not_json = encode_base64url(b"{\"aud\":");
        let cases: Vec<(Vec<u8>, TokenClaimsError)> = vec![
            (b"".to_vec(), TokenClaimsError::Empty),
            (b" \n".to_vec(), TokenClaimsError::Empty),
            (
                format!("{header}.{body}").into_bytes(),
                TokenClaimsError::NotJwt { parts: 2 },
            ),
            (
                format!("{good}.{SIGNATURE}").into_bytes(),
                TokenClaimsError::NotJwt { parts: 4 },
            ),
            (
                format!("{header}.{body}.").into_bytes(),
                TokenClaimsError::InvalidBase64 { part: "signature" },
            ),
            (
                format!("{header}.{body}==.{SIGNATURE}").into_bytes(),
                TokenClaimsError::InvalidBase64 { part: "payload" },
            ),
            (
                format!("%%%.{body}.{SIGNATURE}").into_bytes(),
                TokenClaimsError::InvalidBase64 { part: "header" },
            ),
            (
                format!("{header}.{not_object}.{SIGNATURE}").into_bytes(),
                TokenClaimsError::InvalidJson { part: "payload" },
            ),
            (
                format!("{header}.{not_json}.{SIGNATURE}").into_bytes(),
                TokenClaimsError::InvalidJson { part: "payload" },
            ),
            (
                vec![0xff, b'.', 0xfe, b'.', 0xfd],
                TokenClaimsError::InvalidBase64 { part: "header" },
            ),
            (
                vec![b'a'; MAX_TOKEN_LEN + 1],
                TokenClaimsError::TooLarge {
                    len: MAX_TOKEN_LEN + 1,
                    max: MAX_TOKEN_LEN,
                },
            ),
        ];
        for (token, expected_error) in cases {
            let result = check_token(&token, &expected(), at(ISSUED_AT));
            assert_eq!(
                result,
                Err(expected_error),
                "{}",
                String::from_utf8_lossy(&token)
            );
        }
    }

    #[test]
    fn errors_never_contain_token() {
        let payloads = [
            with(&["aud"], json!("other")),
            with(&["kubernetes.io", "pod", "uid"], json!("x")),
            with(&["exp"], json!(1)),
            with(&["kubernetes.io"], Value::Null),
        ];
        for payload in payloads {
            let token = token_for(&payload);
            let error = check_token(token.as_bytes(), &expected(), at(ISSUED_AT)).unwrap_err();
            let text = format!("{error} {error:?}");
            assert!(!text.contains(SIGNATURE), "{text}");
            for part in token.split('.') {
                assert!(!text.contains(part), "{text}");
            }
        }
    }
}
