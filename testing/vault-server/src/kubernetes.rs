//! Kubernetes auth: roles, and the checks a service account JWT must pass to log in.
//!
//! Follows <https://developer.hashicorp.com/vault/api-docs/auth/kubernetes> and the error texts
//! of the Vault Kubernetes auth plugin and its JWT validator (`hashicorp/cap`). The payload is
//! decoded without verifying the signature, which is what Vault does when no `pem_keys` are
//! configured.
//! NOTE: Vault then checks the token with the cluster's TokenReview API. This server has no
//! cluster, so a JWT whose claims pass is accepted.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::clock::unix_seconds;

/// Signing algorithms the Kubernetes auth plugin accepts in the JWT header.
const ALLOWED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// Clock skew the JWT validator tolerates on `exp`, `nbf` and `iat` (go-jose's default).
const CLOCK_SKEW_LEEWAY: u64 = 60;

/// Lifetime the JWT validator gives a token that has `iat` or `nbf` but no `exp`.
const MISSING_EXPIRY_LEEWAY: u64 = 150;

/// A role of a Kubernetes auth mount (`auth/<mount>/role/<name>`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct KubernetesRole {
    /// Service account names allowed to log in; `*` allows all. Globs like `app-*` work.
    pub bound_service_account_names: Vec<String>,
    /// Namespaces allowed to log in; `*` allows all.
    pub bound_service_account_namespaces: Vec<String>,
    /// When set, the JWT's `aud` claim must contain it.
    pub audience: Option<String>,
    /// Policies of the issued token (`default` is added unless `token_no_default_policy`).
    pub token_policies: Vec<String>,
    /// TTL of the issued token in seconds; 0 uses the system default (768h).
    pub token_ttl: u64,
    /// Maximum lifetime of the issued token in seconds; 0 uses the system maximum (768h).
    pub token_max_ttl: u64,
    pub token_no_default_policy: bool,
}

impl Default for KubernetesRole {
    fn default() -> KubernetesRole {
        KubernetesRole {
            bound_service_account_names: vec!["*".to_owned()],
            bound_service_account_namespaces: vec!["*".to_owned()],
            audience: None,
            token_policies: Vec::new(),
            token_ttl: 0,
            token_max_ttl: 0,
            token_no_default_policy: false,
        }
    }
}

impl KubernetesRole {
    /// Creates a role bound to the given service account names and namespaces.
    pub fn new(names: &[&str], namespaces: &[&str], policies: &[&str]) -> KubernetesRole {
        let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        KubernetesRole {
            bound_service_account_names: owned(names),
            bound_service_account_namespaces: owned(namespaces),
            token_policies: owned(policies),
            ..KubernetesRole::default()
        }
    }

    /// Sets the TTL and maximum TTL of issued tokens.
    pub fn with_ttl(mut self, ttl: Duration, max_ttl: Duration) -> KubernetesRole {
        self.token_ttl = ttl.as_secs();
        self.token_max_ttl = max_ttl.as_secs();
        self
    }
}

/// A Kubernetes auth mount: its config and roles.
#[derive(Clone, Debug, Default)]
pub(crate) struct KubernetesAuth {
    /// When set, the JWT's `iss` claim must equal it (the deprecated `issuer` config field).
    pub(crate) issuer: Option<String>,
    pub(crate) roles: BTreeMap<String, KubernetesRole>,
}

/// The service account a JWT names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ServiceAccount {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) uid: String,
    pub(crate) secret_name: String,
}

/// A failed login, with the status and message Vault returns for it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LoginError {
    /// 403 with Vault's plain `permission denied` (a JWT that cannot be parsed or verified).
    #[error("permission denied")]
    PermissionDenied,
    /// 403 with the validator's message.
    #[error("{0}")]
    Forbidden(String),
    /// 500: the claims lack what Vault needs to issue a token.
    #[error("{0}")]
    Internal(String),
}

/// Validates `jwt` for `role` at time `now` and returns the service account it names.
pub(crate) fn validate_login(
    auth: &KubernetesAuth,
    role: &KubernetesRole,
    jwt: &str,
    now: SystemTime,
) -> Result<ServiceAccount, LoginError> {
    let claims = decode_claims(jwt)?;

    if let Some(issuer) = &auth.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(LoginError::Forbidden(
                "invalid issuer (iss) claim".to_owned(),
            ));
        }
    }
    if let Some(audience) = role.audience.as_deref().filter(|a| !a.trim().is_empty()) {
        if !audiences(&claims).iter().any(|a| a == audience) {
            return Err(LoginError::Forbidden(
                "invalid audience (aud) claim: audience claim does not match any expected \
                 audience"
                    .to_owned(),
            ));
        }
    }
    check_times(&claims, unix_seconds(now))?;

    let account = service_account(&claims);
    let any_name =
        role.bound_service_account_names.len() == 1 && role.bound_service_account_names[0] == "*";
    if !any_name && !glob_list_contains(&role.bound_service_account_names, &account.name) {
        return Err(LoginError::Forbidden(
            "service account name not authorized".to_owned(),
        ));
    }
    let namespaces = &role.bound_service_account_namespaces;
    let namespace_allowed = namespaces.first().is_some_and(|n| n == "*")
        || glob_list_contains(namespaces, &account.namespace);
    if !namespace_allowed {
        return Err(LoginError::Forbidden("namespace not authorized".to_owned()));
    }
    if account.uid.is_empty() {
        return Err(LoginError::Internal(
            "could not parse UID from claims".to_owned(),
        ));
    }
    Ok(account)
}

/// Splits a compact JWS and decodes its claims; any malformed part is a `permission denied`.
fn decode_claims(jwt: &str) -> Result<serde_json::Map<String, Value>, LoginError> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err(LoginError::PermissionDenied);
    };
    let decode_json = |part: &str| -> Result<serde_json::Map<String, Value>, LoginError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| LoginError::PermissionDenied)?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(LoginError::PermissionDenied),
        }
    };
    let header = decode_json(header)?;
    let algorithm = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !ALLOWED_ALGORITHMS.contains(&algorithm) {
        return Err(LoginError::PermissionDenied);
    }
    let claims = decode_json(payload)?;
    if signature.is_empty() {
        return Err(LoginError::Forbidden(
            "invalid algorithm (alg) header parameter: token must be signed".to_owned(),
        ));
    }
    Ok(claims)
}

/// Applies the validator's `exp`, `nbf` and `iat` rules, which skip tokens with none of them.
fn check_times(claims: &serde_json::Map<String, Value>, now: u64) -> Result<(), LoginError> {
    let read = |name: &str| claims.get(name).and_then(Value::as_f64).map(|v| v as u64);
    let issued_at = read("iat").unwrap_or(0);
    let not_before = read("nbf").unwrap_or(0);
    let mut expiry = read("exp").unwrap_or(0);
    if issued_at == 0 && not_before == 0 && expiry == 0 {
        return Ok(());
    }
    if expiry == 0 {
        expiry = issued_at.max(not_before) + MISSING_EXPIRY_LEEWAY;
    }
    let not_before = if not_before == 0 {
        if issued_at != 0 {
            issued_at
        } else {
            expiry.saturating_sub(MISSING_EXPIRY_LEEWAY)
        }
    } else {
        not_before
    };

    if now + CLOCK_SKEW_LEEWAY < not_before {
        return Err(LoginError::Forbidden(
            "invalid not before (nbf) claim: token not yet valid".to_owned(),
        ));
    }
    if now.saturating_sub(CLOCK_SKEW_LEEWAY) > expiry {
        return Err(LoginError::Forbidden(
            "invalid expiration time (exp) claim: token is expired".to_owned(),
        ));
    }
    if issued_at != 0 && now + CLOCK_SKEW_LEEWAY < issued_at {
        return Err(LoginError::Forbidden(
            "invalid issued at (iat) claim: token issued in the future".to_owned(),
        ));
    }
    Ok(())
}

fn audiences(claims: &serde_json::Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads the service account from the legacy flat claims, or from the `kubernetes.io` block
/// of a projected token, which takes precedence as in Vault.
fn service_account(claims: &serde_json::Map<String, Value>) -> ServiceAccount {
    let flat = |name: &str| {
        let key = format!("kubernetes.io/serviceaccount/{name}");
        claims
            .get(&key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut account = ServiceAccount {
        name: flat("service-account.name"),
        namespace: flat("namespace"),
        uid: flat("service-account.uid"),
        secret_name: flat("secret.name"),
    };
    if let Some(projected) = claims.get("kubernetes.io").and_then(Value::as_object) {
        account.namespace = text_of(projected.get("namespace"));
        if let Some(sa) = projected.get("serviceaccount").and_then(Value::as_object) {
            account.name = text_of(sa.get("name"));
            account.uid = text_of(sa.get("uid"));
        }
    }
    account
}

fn text_of(value: Option<&Value>) -> String {
    value.and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// Matches `value` against a list of patterns where `*` stands for any run of characters.
fn glob_list_contains(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|pattern| glob_matches(pattern, value))
}

fn glob_matches(pattern: &str, value: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('*').collect();
    if pieces.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() {
        return false;
    }
    if !value.ends_with(last) {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Builds an unsigned-but-well-formed service account JWT, for tests and the binary's users.
///
/// The claims follow a projected service account token (`kubernetes.io` block). The signature
/// part is filler: the server never verifies it.
pub fn service_account_jwt(
    namespace: &str,
    service_account: &str,
    expires_at: SystemTime,
) -> String {
    let exp = expires_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "aud": ["vault"],
        "exp": exp,
        "iat": exp.saturating_sub(3600),
        "iss": "https://kubernetes.default.svc.cluster.local",
        "kubernetes.io": {
            "namespace": namespace,
            "pod": { "name": format!("{service_account}-pod"), "uid": "pod-uid-0001" },
            "serviceaccount": {
                "name": service_account,
                "uid": format!("{namespace}-{service_account}-uid"),
            },
        },
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
    });
    let header = serde_json::json!({ "alg": "RS256", "kid": "test", "typ": "JWT" });
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(b"unverified-signature"),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn jwt_with(claims: Value) -> String {
        let header = json!({ "alg": "RS256" });
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn role() -> KubernetesRole {
        KubernetesRole::new(&["app"], &["prod"], &["app-read"])
    }

    #[test]
    fn projected_token_passes() {
        let jwt = service_account_jwt("prod", "app", SystemTime::now() + Duration::from_secs(60));
        let account =
            validate_login(&KubernetesAuth::default(), &role(), &jwt, SystemTime::now()).unwrap();
        assert_eq!(account.name, "app");
        assert_eq!(account.namespace, "prod");
        assert_eq!(account.uid, "prod-app-uid");
    }

    #[test]
    fn legacy_flat_claims_pass() {
        let jwt = jwt_with(json!({
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": "prod",
            "kubernetes.io/serviceaccount/service-account.name": "app",
            "kubernetes.io/serviceaccount/service-account.uid": "uid-1",
            "kubernetes.io/serviceaccount/secret.name": "app-token-x",
        }));
        let account =
            validate_login(&KubernetesAuth::default(), &role(), &jwt, SystemTime::now()).unwrap();
        assert_eq!(account.secret_name, "app-token-x");
    }

    #[test]
    fn unbound_name_and_namespace_are_rejected() {
        let now = SystemTime::now();
        let auth = KubernetesAuth::default();
        let other_name = service_account_jwt("prod", "intruder", now + Duration::from_secs(60));
        assert_eq!(
            validate_login(&auth, &role(), &other_name, now),
            Err(LoginError::Forbidden(
                "service account name not authorized".to_owned()
            ))
        );
        let other_ns = service_account_jwt("dev", "app", now + Duration::from_secs(60));
        assert_eq!(
            validate_login(&auth, &role(), &other_ns, now),
            Err(LoginError::Forbidden("namespace not authorized".to_owned()))
        );
    }

    #[test]
    fn expired_token_is_rejected_after_leeway() {
        let now = SystemTime::now();
        let auth = KubernetesAuth::default();
        let within_leeway = service_account_jwt("prod", "app", now - Duration::from_secs(30));
        assert!(validate_login(&auth, &role(), &within_leeway, now).is_ok());
        let expired = service_account_jwt("prod", "app", now - Duration::from_secs(120));
        assert_eq!(
            validate_login(&auth, &role(), &expired, now),
            Err(LoginError::Forbidden(
                "invalid expiration time (exp) claim: token is expired".to_owned()
            ))
        );
    }

    #[test]
    fn issuer_is_checked_only_when_configured() {
        let now = SystemTime::now();
        let jwt = service_account_jwt("prod", "app", now + Duration::from_secs(60));
        let auth = KubernetesAuth {
            issuer: Some("other".to_owned()),
            ..Default::default()
        };
        assert_eq!(
            validate_login(&auth, &role(), &jwt, now),
            Err(LoginError::Forbidden(
                "invalid issuer (iss) claim".to_owned()
            ))
        );
    }

    #[test]
    fn malformed_jwt_is_permission_denied() {
        let now = SystemTime::now();
        let auth = KubernetesAuth::default();
        for jwt in ["", "a.b", "not.base64!.x", "e30.e30.c2ln"] {
            assert_eq!(
                validate_login(&auth, &role(), jwt, now),
                Err(LoginError::PermissionDenied),
                "{jwt}"
            );
        }
    }

    #[test]
    fn glob_patterns_match() {
        assert!(glob_matches("app-*", "app-web"));
        assert!(glob_matches("*-web", "app-web"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("app-*", "db-web"));
    }
}
