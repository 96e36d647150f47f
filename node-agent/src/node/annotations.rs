//! Per-pod settings read from the pod's `envproxy.dev/*` annotations.
//!
//! | annotation | default | accepted values |
//! | --- | --- | --- |
//! | `envproxy.dev/inject` | not opted in | `"true"` opts in, `"false"` opts out |
//! | `envproxy.dev/vault-role` | the service account name | a Vault role name |
//! | `envproxy.dev/vault-auth-mount` | `kubernetes` | a Vault auth mount path |
//! | `envproxy.dev/vault-addr` | the agent's Vault address | an address on the agent's allowlist |
//! | `envproxy.dev/vault-cache-ttl` | the agent's `[vault] cache_ttl` | `30s`, `5m`, `1h`, `1h30m`, from 1 s to 24 h |
//! | `envproxy.dev/cache-ttl` | `30` | whole seconds from 0 to 86400 |
//! | `envproxy.dev/containers` | all containers | comma-separated container names |
//! | `envproxy.dev/no-python`, `envproxy.dev/no-java` | `false` | `true` or `false` |
//! | `envproxy.dev/allow-unlisted-refs` | `false` | `true` or `false` |
//!
//! The webhook adds `envproxy.dev/injected: "true"` to each pod it mutates; the agent does not
//! read it.
//!
//! Annotation values are not secrets, so errors quote them (shortened when long).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

/// Opts a pod in when its value is `"true"`.
pub const INJECT: &str = "envproxy.dev/inject";
/// Vault Kubernetes-auth role used for the pod's logins.
pub const VAULT_ROLE: &str = "envproxy.dev/vault-role";
/// Vault auth mount path of the Kubernetes auth method.
pub const VAULT_AUTH_MOUNT: &str = "envproxy.dev/vault-auth-mount";
/// Vault address for this pod, in place of the agent's configured one.
pub const VAULT_ADDR: &str = "envproxy.dev/vault-addr";
/// Time the agent caches this pod's secrets.
pub const VAULT_CACHE_TTL: &str = "envproxy.dev/vault-cache-ttl";
/// Time the preload library caches a value in the process, in whole seconds.
pub const CACHE_TTL: &str = "envproxy.dev/cache-ttl";
/// Containers that are injected and served.
pub const CONTAINERS: &str = "envproxy.dev/containers";
/// Skips the Python runtime hook.
pub const NO_PYTHON: &str = "envproxy.dev/no-python";
/// Skips the Java runtime hook.
pub const NO_JAVA: &str = "envproxy.dev/no-java";
/// Skips the Perl runtime hook.
pub const NO_PERL: &str = "envproxy.dev/no-perl";
/// Serves references that the container's spec does not declare.
pub const ALLOW_UNLISTED_REFS: &str = "envproxy.dev/allow-unlisted-refs";
/// Marks a pod that the webhook has mutated.
pub const INJECTED: &str = "envproxy.dev/injected";
/// Prefix of every EnvProxy annotation.
pub const PREFIX: &str = "envproxy.dev/";
/// Every annotation that EnvProxy reads or writes.
pub const KNOWN: [&str; 12] = [
    INJECT,
    VAULT_ROLE,
    VAULT_AUTH_MOUNT,
    VAULT_ADDR,
    VAULT_CACHE_TTL,
    CACHE_TTL,
    CONTAINERS,
    NO_PYTHON,
    NO_JAVA,
    NO_PERL,
    ALLOW_UNLISTED_REFS,
    INJECTED,
];

/// Service account of a pod whose spec names none, as the API server fills in.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Vault auth mount when [`VAULT_AUTH_MOUNT`] is absent.
pub const DEFAULT_VAULT_AUTH_MOUNT: &str = "kubernetes";
/// In-process cache time when [`CACHE_TTL`] is absent.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);

/// Shortest accepted [`VAULT_CACHE_TTL`].
pub const MIN_VAULT_CACHE_TTL: Duration = Duration::from_secs(1);
/// Longest accepted [`VAULT_CACHE_TTL`].
pub const MAX_VAULT_CACHE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest accepted [`CACHE_TTL`]. Zero is accepted and makes the library ask every time.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Maximum length of an annotation value quoted in an error, in characters.
const MAX_QUOTED_VALUE_CHARS: usize = 120;
/// Maximum length of a container name, which Kubernetes requires to be a DNS-1123 label.
const MAX_CONTAINER_NAME_LEN: usize = 63;

/// An annotation whose value is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for annotation {annotation}: {expected}")]
pub struct AnnotationError {
    /// The annotation's name.
    pub annotation: &'static str,
    /// The rejected value, shortened to 120 characters.
    pub value: String,
    /// The values the annotation accepts, or the reason this value is rejected.
    pub expected: String,
}

impl AnnotationError {
    fn new(annotation: &'static str, value: &str, expected: impl Into<String>) -> Self {
        AnnotationError {
            annotation,
            value: shorten(value),
            expected: expected.into(),
        }
    }
}

/// Containers of a pod that EnvProxy injects and serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerSelection {
    /// Every container, init container and ephemeral container.
    All,
    /// Only the named containers.
    Only(Vec<String>),
}

impl ContainerSelection {
    /// Returns whether the container named `name` is selected.
    pub fn selects(&self, name: &str) -> bool {
        match self {
            ContainerSelection::All => true,
            ContainerSelection::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

impl fmt::Display for ContainerSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerSelection::All => f.write_str("all containers"),
            ContainerSelection::Only(names) => f.write_str(&names.join(",")),
        }
    }
}

/// Settings of one pod, from its annotations and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    /// Vault Kubernetes-auth role for the pod's logins.
    pub vault_role: String,
    /// Vault auth mount path, without the `auth/` prefix.
    pub vault_auth_mount: String,
    /// Vault address for this pod. `None` selects the agent's configured address.
    pub vault_addr: Option<String>,
    /// Time the agent caches this pod's secrets. `None` selects the agent's `[vault] cache_ttl`.
    pub vault_cache_ttl: Option<Duration>,
    /// Time the preload library caches a value in the process, in whole seconds.
    pub cache_ttl: Duration,
    /// Containers that are injected and served.
    pub containers: ContainerSelection,
    /// Whether the Python runtime hook is skipped.
    pub no_python: bool,
    /// Whether the Java runtime hook is skipped.
    pub no_java: bool,
    /// Whether the Perl runtime hook is skipped.
    pub no_perl: bool,
    /// Whether references that the container's spec does not declare are served.
    pub allow_unlisted_refs: bool,
}

impl PodSettings {
    /// Reads the settings of `pod` from its annotations and its service account.
    ///
    /// [`VAULT_ADDR`] is accepted only when its value is on `vault_addr_allowlist`. The
    /// [`INJECT`] annotation is not read here: see [`is_opted_in`].
    pub fn from_pod(pod: &Pod, vault_addr_allowlist: &[String]) -> Result<Self, AnnotationError> {
        let empty = BTreeMap::new();
        let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        let service_account = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.as_deref());
        Self::from_annotations(annotations, service_account, vault_addr_allowlist)
    }

    /// Reads the settings from a pod's annotations. `service_account` is the pod's
    /// `spec.serviceAccountName`, the default Vault role. Returns the first invalid annotation
    /// as the error; [`PodSettings::from_annotations_checking_all`] returns all of them.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        service_account: Option<&str>,
        vault_addr_allowlist: &[String],
    ) -> Result<Self, AnnotationError> {
        Self::from_annotations_checking_all(annotations, service_account, vault_addr_allowlist)
            .map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`PodSettings::from_annotations`], but checks every annotation and returns one
    /// error per invalid annotation, in the order of the table in this module's documentation.
    /// The returned list is never empty.
    pub fn from_annotations_checking_all(
        annotations: &BTreeMap<String, String>,
        service_account: Option<&str>,
        vault_addr_allowlist: &[String],
    ) -> Result<Self, Vec<AnnotationError>> {
        let get = |name: &str| annotations.get(name).map(String::as_str);
        let mut errors = Vec::new();

        let service_account = service_account
            .filter(|name| !name.is_empty())
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
        let vault_role = match get(VAULT_ROLE) {
            Some(value) => keep_valid(parse_vault_role(value), &mut errors),
            None => service_account.to_string(),
        };
        let vault_auth_mount = match get(VAULT_AUTH_MOUNT) {
            Some(value) => keep_valid(parse_vault_auth_mount(value), &mut errors),
            None => DEFAULT_VAULT_AUTH_MOUNT.to_string(),
        };
        let vault_addr = get(VAULT_ADDR)
            .map(|value| keep_valid(parse_vault_addr(value, vault_addr_allowlist), &mut errors));
        let vault_cache_ttl =
            get(VAULT_CACHE_TTL).map(|value| keep_valid(parse_vault_cache_ttl(value), &mut errors));
        let cache_ttl = match get(CACHE_TTL) {
            Some(value) => keep_valid(parse_cache_ttl(value), &mut errors),
            None => DEFAULT_CACHE_TTL,
        };
        let containers = match get(CONTAINERS) {
            Some(value) => parse_containers(value).unwrap_or_else(|error| {
                errors.push(error);
                ContainerSelection::All
            }),
            None => ContainerSelection::All,
        };
        let no_python = keep_valid(parse_bool(NO_PYTHON, get(NO_PYTHON)), &mut errors);
        let no_java = keep_valid(parse_bool(NO_JAVA, get(NO_JAVA)), &mut errors);
        let no_perl = keep_valid(parse_bool(NO_PERL, get(NO_PERL)), &mut errors);
        let allow_unlisted_refs = keep_valid(
            parse_bool(ALLOW_UNLISTED_REFS, get(ALLOW_UNLISTED_REFS)),
            &mut errors,
        );

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(PodSettings {
            vault_role,
            vault_auth_mount,
            vault_addr,
            vault_cache_ttl,
            cache_ttl,
            containers,
            no_python,
            no_java,
            no_perl,
            allow_unlisted_refs,
        })
    }
}

/// Returns the value of `result`, or records its error and returns a placeholder that is
/// discarded because `errors` is then not empty.
fn keep_valid<T: Default>(
    result: Result<T, AnnotationError>,
    errors: &mut Vec<AnnotationError>,
) -> T {
    result.unwrap_or_else(|error| {
        errors.push(error);
        T::default()
    })
}

/// Returns whether `pod` opted in with `envproxy.dev/inject: "true"`.
///
/// An absent annotation or `"false"` is not opted in. Any other value is an error, so a pod
/// annotated `"True"` or `"yes"` learns why it is not served instead of being skipped silently.
pub fn is_opted_in(pod: &Pod) -> Result<bool, AnnotationError> {
    let value = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(INJECT));
    parse_bool(INJECT, value.map(String::as_str))
}

fn parse_bool(annotation: &'static str, value: Option<&str>) -> Result<bool, AnnotationError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(AnnotationError::new(
            annotation,
            other,
            "accepted values are \"true\" and \"false\" (lower case)",
        )),
    }
}

fn parse_vault_role(value: &str) -> Result<String, AnnotationError> {
    match path_segment_problem(value) {
        Some(problem) => Err(AnnotationError::new(
            VAULT_ROLE,
            value,
            format!("a Vault role name must be one path segment, but it {problem}"),
        )),
        None => Ok(value.to_string()),
    }
}

/// Accepts a mount path of one or more segments, such as `kubernetes` or `clusters/prod`,
/// because Vault lets an auth method be enabled at a nested path.
fn parse_vault_auth_mount(value: &str) -> Result<String, AnnotationError> {
    let invalid = |problem: &str| {
        AnnotationError::new(
            VAULT_AUTH_MOUNT,
            value,
            format!("a Vault auth mount path such as \"kubernetes\" is expected, but it {problem}"),
        )
    };
    if value.starts_with("auth/") {
        return Err(invalid(
            "starts with \"auth/\"; write the mount path without it",
        ));
    }
    if value.starts_with('/') || value.ends_with('/') {
        return Err(invalid("starts or ends with \"/\""));
    }
    for segment in value.split('/') {
        if let Some(problem) = path_segment_problem(segment) {
            return Err(invalid(problem));
        }
    }
    Ok(value.to_string())
}

/// Longest Vault path segment accepted in a role or mount name. Longer names would be copied
/// into every log line and error about the pod.
const MAX_SEGMENT_LEN: usize = 255;

/// Returns why `segment` cannot be one segment of a Vault API path, or `None` if it can.
fn path_segment_problem(segment: &str) -> Option<&'static str> {
    if segment.is_empty() {
        return Some("is empty or contains an empty segment");
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Some("has a segment longer than 255 characters");
    }
    if segment.contains('/') {
        return Some("contains \"/\"");
    }
    if segment.contains("..") {
        return Some("contains \"..\"");
    }
    if segment == "." {
        return Some("is \".\"");
    }
    if segment.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains whitespace or a control character");
    }
    if segment.contains(['?', '#', '%', '\\']) {
        return Some("contains \"?\", \"#\", \"%\" or \"\\\"");
    }
    None
}

fn parse_vault_addr(value: &str, allowlist: &[String]) -> Result<String, AnnotationError> {
    let requested = value.trim_end_matches('/');
    if let Some(allowed) = allowlist
        .iter()
        .find(|allowed| allowed.trim_end_matches('/') == requested)
    {
        return Ok(allowed.clone());
    }
    let expected = if allowlist.is_empty() {
        "the agent allows no per-pod Vault address; remove the annotation or add the address \
         to the agent's Vault address allowlist"
            .to_string()
    } else {
        format!(
            "the address must be one of the agent's allowlist: {}",
            allowlist.join(", ")
        )
    };
    Err(AnnotationError::new(VAULT_ADDR, value, expected))
}

fn parse_vault_cache_ttl(value: &str) -> Result<Duration, AnnotationError> {
    let invalid = || {
        AnnotationError::new(
            VAULT_CACHE_TTL,
            value,
            "a duration from 1s to 24h is expected, written with the units h, m and s in \
             that order, such as \"30s\", \"5m\", \"1h\" or \"1h30m\"",
        )
    };
    let ttl = parse_duration(value).ok_or_else(invalid)?;
    if !(MIN_VAULT_CACHE_TTL..=MAX_VAULT_CACHE_TTL).contains(&ttl) {
        return Err(invalid());
    }
    Ok(ttl)
}

/// Parses a duration such as `30s`, `5m`, `1h` or `1h30m`: one or more `<digits><unit>`
/// parts with the units `h`, `m` and `s`, each at most once and in that order.
fn parse_duration(text: &str) -> Option<Duration> {
    const UNITS: [(char, u64); 3] = [('h', 3600), ('m', 60), ('s', 1)];

    let mut rest = text;
    let mut next_unit = 0;
    let mut total_secs: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits_len = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits_len == 0 {
            return None;
        }
        let number: u64 = rest[..digits_len].parse().ok()?;
        let unit = rest[digits_len..].chars().next()?;
        let offset = UNITS[next_unit..].iter().position(|(u, _)| *u == unit)?;
        let (_, unit_secs) = UNITS[next_unit + offset];
        total_secs = total_secs.checked_add(number.checked_mul(unit_secs)?)?;
        next_unit += offset + 1;
        rest = &rest[digits_len + unit.len_utf8()..];
    }
    Some(Duration::from_secs(total_secs))
}

fn parse_cache_ttl(value: &str) -> Result<Duration, AnnotationError> {
    let invalid = || {
        AnnotationError::new(
            CACHE_TTL,
            value,
            format!(
                "whole seconds from 0 to {} are expected, without a unit",
                MAX_CACHE_TTL.as_secs()
            ),
        )
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let secs: u64 = value.parse().map_err(|_| invalid())?;
    let ttl = Duration::from_secs(secs);
    if ttl > MAX_CACHE_TTL {
        return Err(invalid());
    }
    Ok(ttl)
}

fn parse_containers(value: &str) -> Result<ContainerSelection, AnnotationError> {
    let mut names = Vec::new();
    for entry in value.split(',') {
        let name = entry.trim();
        if name.is_empty() {
            return Err(AnnotationError::new(
                CONTAINERS,
                value,
                "comma-separated container names are expected, without empty entries",
            ));
        }
        if !is_dns_label(name) {
            return Err(AnnotationError::new(
                CONTAINERS,
                value,
                format!(
                    "{name:?} is not a container name (lower-case letters, digits and '-', \
                     starting and ending with a letter or digit, at most 63 characters)"
                ),
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(ContainerSelection::Only(names))
}

/// Returns whether `name` is a DNS-1123 label, the form Kubernetes requires of container names.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    !bytes.is_empty()
        && bytes.len() <= MAX_CONTAINER_NAME_LEN
        && bytes.iter().all(allowed)
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn shorten(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED_VALUE_CHARS) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_with(annotations: serde_json::Value, service_account: Option<&str>) -> Pod {
        let mut spec = json!({ "containers": [{ "name": "app", "image": "app:1" }] });
        if let Some(name) = service_account {
            spec["serviceAccountName"] = json!(name);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-5d9c7b6f4-x2x8q",
                "namespace": "shop",
                "uid": "0d8b260e-ef0e-45fb-be8e-ff44f97722e8",
                "annotations": annotations,
            },
            "spec": spec,
        }))
        .unwrap()
    }

    fn settings(annotations: serde_json::Value) -> Result<PodSettings, AnnotationError> {
        let allowlist = vec!["https://vault.shop.svc:8200".to_string()];
        PodSettings::from_pod(&pod_with(annotations, Some("checkout")), &allowlist)
    }

    #[test]
    fn defaults_without_annotations() {
        let settings = settings(json!({})).unwrap();
        assert_eq!(settings.vault_role, "checkout");
        assert_eq!(settings.vault_auth_mount, "kubernetes");
        assert_eq!(settings.vault_addr, None);
        assert_eq!(settings.vault_cache_ttl, None);
        assert_eq!(settings.cache_ttl, Duration::from_secs(30));
        assert_eq!(settings.containers, ContainerSelection::All);
        assert!(!settings.no_python);
        assert!(!settings.no_java);
        assert!(!settings.no_perl);
        assert!(!settings.allow_unlisted_refs);
    }

    #[test]
    fn role_defaults_to_default_account() {
        let pod = pod_with(json!({}), None);
        let settings = PodSettings::from_pod(&pod, &[]).unwrap();
        assert_eq!(settings.vault_role, "default");
    }

    #[test]
    fn all_annotations_set() {
        let settings = settings(json!({
            "envproxy.dev/inject": "true",
            "envproxy.dev/vault-role": "checkout-reader",
            "envproxy.dev/vault-auth-mount": "clusters/prod-eu",
            "envproxy.dev/vault-addr": "https://vault.shop.svc:8200/",
            "envproxy.dev/vault-cache-ttl": "1h30m",
            "envproxy.dev/cache-ttl": "0",
            "envproxy.dev/containers": " app , sidecar,app",
            "envproxy.dev/no-python": "true",
            "envproxy.dev/no-java": "false",
            "envproxy.dev/no-perl": "true",
            "envproxy.dev/allow-unlisted-refs": "true",
        }))
        .unwrap();
        assert_eq!(settings.vault_role, "checkout-reader");
        assert_eq!(settings.vault_auth_mount, "clusters/prod-eu");
        assert_eq!(
            settings.vault_addr.as_deref(),
            Some("https://vault.shop.svc:8200")
        );
        assert_eq!(settings.vault_cache_ttl, Some(Duration::from_secs(5400)));
        assert_eq!(settings.cache_ttl, Duration::ZERO);
        assert_eq!(
            settings.containers,
            ContainerSelection::Only(vec!["app".into(), "sidecar".into()])
        );
        assert!(settings.no_python);
        assert!(!settings.no_java);
        assert!(settings.no_perl);
        assert!(settings.allow_unlisted_refs);
    }

    #[test]
    fn opt_in_values() {
        let cases = [
            (json!({}), Ok(false)),
            (json!({ "envproxy.dev/inject": "true" }), Ok(true)),
            (json!({ "envproxy.dev/inject": "false" }), Ok(false)),
            (json!({ "envproxy.dev/inject": "True" }), Err("True")),
            (json!({ "envproxy.dev/inject": "yes" }), Err("yes")),
            (json!({ "envproxy.dev/inject": "" }), Err("")),
        ];
        for (annotations, expected) in cases {
            let result = is_opted_in(&pod_with(annotations.clone(), None));
            match expected {
                Ok(opted_in) => assert_eq!(result, Ok(opted_in), "{annotations}"),
                Err(value) => {
                    let error = result.unwrap_err();
                    assert_eq!(error.annotation, INJECT);
                    assert_eq!(error.value, value);
                }
            }
        }
    }

    #[test]
    fn opt_in_without_annotations_map() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "bare", "namespace": "shop" },
            "spec": { "containers": [{ "name": "app" }] },
        }))
        .unwrap();
        assert_eq!(is_opted_in(&pod), Ok(false));
    }

    #[test]
    fn vault_cache_ttl_values() {
        let accepted = [
            ("1s", 1),
            ("30s", 30),
            ("5m", 300),
            ("1h", 3600),
            ("1h30m", 5400),
            ("1h0m15s", 3615),
            ("90m", 5400),
            ("24h", 86400),
        ];
        for (value, secs) in accepted {
            let result = settings(json!({ "envproxy.dev/vault-cache-ttl": value }));
            assert_eq!(
                result.map(|s| s.vault_cache_ttl),
                Ok(Some(Duration::from_secs(secs))),
                "{value}"
            );
        }
        let rejected = [
            "",
            "0s",
            "25h",
            "24h1s",
            "30",
            "5 m",
            "m",
            "5x",
            "1m1h",
            "1h1h",
            "-5m",
            "1.5h",
            "99999999999999999999h",
            "5m ",
        ];
        for value in rejected {
            let error = settings(json!({ "envproxy.dev/vault-cache-ttl": value })).unwrap_err();
            assert_eq!(error.annotation, VAULT_CACHE_TTL, "{value}");
            assert_eq!(error.value, value);
            assert!(error.expected.contains("1h30m"), "{}", error.expected);
        }
    }

    #[test]
    fn cache_ttl_values() {
        for (value, secs) in [("0", 0), ("30", 30), ("86400", 86400), ("007", 7)] {
            let result = settings(json!({ "envproxy.dev/cache-ttl": value }));
            assert_eq!(result.map(|s| s.cache_ttl), Ok(Duration::from_secs(secs)));
        }
        for value in [
            "",
            "30s",
            "-1",
            "+5",
            "86401",
            "1e3",
            " 30",
            "18446744073709551616",
        ] {
            let error = settings(json!({ "envproxy.dev/cache-ttl": value })).unwrap_err();
            assert_eq!(error.annotation, CACHE_TTL, "{value}");
            assert!(
                error.expected.contains("whole seconds"),
                "{}",
                error.expected
            );
        }
    }

    #[test]
    fn container_list_errors() {
        let cases = [
            ("app,,sidecar", "empty entries"),
            ("app,", "empty entries"),
            ("", "empty entries"),
            (" , ", "empty entries"),
            ("App", "\"App\" is not a container name"),
            ("app;sidecar", "\"app;sidecar\" is not a container name"),
            ("-app", "\"-app\" is not a container name"),
        ];
        for (value, message) in cases {
            let error = settings(json!({ "envproxy.dev/containers": value })).unwrap_err();
            assert_eq!(error.annotation, CONTAINERS, "{value}");
            assert!(
                error.expected.contains(message),
                "{value}: {}",
                error.expected
            );
        }
        let long_name = "a".repeat(64);
        let error = settings(json!({ "envproxy.dev/containers": long_name })).unwrap_err();
        assert_eq!(error.annotation, CONTAINERS);
    }

    #[test]
    fn container_selection_matches() {
        let only = ContainerSelection::Only(vec!["app".into(), "migrate".into()]);
        assert!(only.selects("app"));
        assert!(only.selects("migrate"));
        assert!(!only.selects("sidecar"));
        assert!(!only.selects("ap"));
        assert!(ContainerSelection::All.selects("anything"));
        assert_eq!(only.to_string(), "app,migrate");
    }

    #[test]
    fn booleans_reject_other_spellings() {
        for annotation in [NO_PYTHON, NO_JAVA, NO_PERL, ALLOW_UNLISTED_REFS] {
            for value in ["TRUE", "1", "yes", "on", ""] {
                let error = settings(json!({ annotation: value })).unwrap_err();
                assert_eq!(error.annotation, annotation);
                assert_eq!(error.value, value);
                assert!(error.expected.contains("\"true\" and \"false\""));
            }
        }
    }

    #[test]
    fn vault_role_errors() {
        let cases = [
            ("", "is empty"),
            ("a/b", "contains \"/\""),
            ("..", "contains \"..\""),
            ("a..b", "contains \"..\""),
            (".", "is \".\""),
            ("my role", "whitespace"),
            ("role\n", "whitespace"),
            ("role?x=1", "\"?\""),
        ];
        let long = "r".repeat(300_000);
        let cases = cases
            .into_iter()
            .chain([(long.as_str(), "longer than 255 characters")]);
        for (value, problem) in cases {
            let error = settings(json!({ "envproxy.dev/vault-role": value })).unwrap_err();
            assert_eq!(error.annotation, VAULT_ROLE, "{value:?}");
            assert!(
                error.expected.contains(problem),
                "{value:?}: {}",
                error.expected
            );
        }
        let accepted = settings(json!({ "envproxy.dev/vault-role": "app.reader_v2-eu@x" }));
        assert_eq!(accepted.unwrap().vault_role, "app.reader_v2-eu@x");
    }

    #[test]
    fn vault_auth_mount_errors() {
        let cases = [
            ("", "is empty"),
            ("auth/kubernetes", "without it"),
            ("/kubernetes", "starts or ends"),
            ("kubernetes/", "starts or ends"),
            ("a//b", "empty segment"),
            ("a/../b", "contains \"..\""),
            ("k8s prod", "whitespace"),
            ("k8s%2fprod", "\"%\""),
        ];
        for (value, problem) in cases {
            let error = settings(json!({ "envproxy.dev/vault-auth-mount": value })).unwrap_err();
            assert_eq!(error.annotation, VAULT_AUTH_MOUNT, "{value:?}");
            assert!(
                error.expected.contains(problem),
                "{value:?}: {}",
                error.expected
            );
        }
    }

    #[test]
    fn vault_addr_allowlist() {
        let error = settings(json!({ "envproxy.dev/vault-addr": "https://evil.example:8200" }))
            .unwrap_err();
        assert_eq!(error.annotation, VAULT_ADDR);
        assert_eq!(error.value, "https://evil.example:8200");
        assert!(error.expected.contains("https://vault.shop.svc:8200"));

        let pod = pod_with(
            json!({ "envproxy.dev/vault-addr": "https://vault:8200" }),
            None,
        );
        let error = PodSettings::from_pod(&pod, &[]).unwrap_err();
        assert!(error.expected.contains("allows no per-pod Vault address"));
    }

    #[test]
    fn checking_all_names_each_invalid_annotation() {
        let pod = pod_with(
            json!({
                "envproxy.dev/vault-role": "a/b",
                "envproxy.dev/cache-ttl": "30s",
                "envproxy.dev/containers": "App",
                "envproxy.dev/no-java": "yes",
                "envproxy.dev/vault-cache-ttl": "5m",
            }),
            None,
        );
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        let errors =
            PodSettings::from_annotations_checking_all(annotations, None, &[]).unwrap_err();
        let named: Vec<&str> = errors.iter().map(|error| error.annotation).collect();
        assert_eq!(named, [VAULT_ROLE, CACHE_TTL, CONTAINERS, NO_JAVA]);

        let first = PodSettings::from_annotations(annotations, None, &[]).unwrap_err();
        assert_eq!(first, errors[0]);
    }

    #[test]
    fn error_message_names_everything() {
        let error = settings(json!({ "envproxy.dev/no-java": "yes" })).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid value \"yes\" for annotation envproxy.dev/no-java: accepted values are \
             \"true\" and \"false\" (lower case)"
        );
    }

    #[test]
    fn long_value_is_shortened() {
        let value = "x".repeat(5000);
        let error = settings(json!({ "envproxy.dev/cache-ttl": value })).unwrap_err();
        assert_eq!(error.value.len(), MAX_QUOTED_VALUE_CHARS + 3);
        assert!(error.value.ends_with("..."));
        assert!(error.to_string().len() < 400);
    }
}
