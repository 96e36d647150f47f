//! The serving policy: whether a process in one container of a pod may read a reference.
//!
//! A request is denied unless the pod opted in with `envproxy.dev/inject: "true"`, the container
//! is selected by `envproxy.dev/containers` (all containers when absent), and the reference is
//! the literal value of an env entry of that container's spec. The entry may have any name, so
//! a child process that renamed the variable still resolves it.
//! `envproxy.dev/allow-unlisted-refs: "true"` lifts the last rule only.
//!
//! Every [`Denial`] has a text for the pod's owner that says what to change, and a
//! [`DenialReason`] for metrics and audit. Neither contains a secret value: references, names
//! and annotation values are not secrets.

use std::fmt;

use envproxy_proto::Reference;
use k8s_openapi::api::core::v1::Pod;

use super::annotations::{
    is_opted_in, AnnotationError, PodSettings, ALLOW_UNLISTED_REFS, CONTAINERS, INJECT,
};
use super::container_env::{declared_env, find_container};

pub use super::container_env::HiddenSource;

/// Maximum length of a requested reference quoted in a denial, in characters. A caller may send
/// any text as the reference, so the quote is bounded.
const MAX_QUOTED_REFERENCE_CHARS: usize = 256;

/// Stable, machine-readable kind of a [`Denial`], for metric labels and audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialReason {
    NotOptedIn,
    BadAnnotation,
    ContainerNotFound,
    ContainerNotSelected,
    ReferenceNotDeclared,
}

impl DenialReason {
    /// Returns the reason as a snake_case label such as `not_opted_in`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DenialReason::NotOptedIn => "not_opted_in",
            DenialReason::BadAnnotation => "bad_annotation",
            DenialReason::ContainerNotFound => "container_not_found",
            DenialReason::ContainerNotSelected => "container_not_selected",
            DenialReason::ReferenceNotDeclared => "reference_not_declared",
        }
    }
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that the policy rejects. Pods are named `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error(
        "pod {pod} has not opted in to EnvProxy: add the annotation {inject}: \"true\" to the \
         pod (for a Deployment, to its pod template)",
        inject = INJECT
    )]
    NotOptedIn { pod: String },

    #[error("pod {pod} has an invalid EnvProxy annotation: {source}")]
    BadAnnotation {
        pod: String,
        #[source]
        source: AnnotationError,
    },

    #[error(
        "pod {pod} has no container, init container or ephemeral container named {container} \
         in its spec, so the references it may read are unknown"
    )]
    ContainerNotFound { pod: String, container: String },

    #[error(
        "container {container} of pod {pod} is not selected for EnvProxy: add it to the \
         annotation {annotation} (now {selected:?})",
        annotation = CONTAINERS
    )]
    ContainerNotSelected {
        pod: String,
        container: String,
        /// The value of the containers annotation.
        selected: String,
    },

    #[error("{}", describe_not_declared(.pod, .container, .variable, .reference, .hidden_sources))]
    ReferenceNotDeclared {
        pod: String,
        container: String,
        /// The variable name the process requested.
        variable: String,
        /// The requested reference, shortened to 256 characters.
        reference: String,
        /// Sources of env values that the agent cannot see, which may contain the reference.
        hidden_sources: Vec<HiddenSource>,
    },
}

impl Denial {
    /// Returns the stable kind of this denial.
    pub fn reason(&self) -> DenialReason {
        match self {
            Denial::NotOptedIn { .. } => DenialReason::NotOptedIn,
            Denial::BadAnnotation { .. } => DenialReason::BadAnnotation,
            Denial::ContainerNotFound { .. } => DenialReason::ContainerNotFound,
            Denial::ContainerNotSelected { .. } => DenialReason::ContainerNotSelected,
            Denial::ReferenceNotDeclared { .. } => DenialReason::ReferenceNotDeclared,
        }
    }
}

fn describe_not_declared(
    pod: &str,
    container: &str,
    variable: &str,
    reference: &str,
    hidden_sources: &[HiddenSource],
) -> String {
    if hidden_sources.is_empty() {
        return format!(
            "container {container} of pod {pod} does not declare reference {reference:?} \
             (requested as {variable}): add an env entry with this literal value to container \
             {container}, such as name {variable}, value {reference:?}"
        );
    }
    let sources: Vec<String> = hidden_sources.iter().map(ToString::to_string).collect();
    format!(
        "reference {reference:?} (requested as {variable}) is not a literal env value of \
         container {container} of pod {pod}, and it may come from {}, which the agent cannot \
         read: write the reference as a literal env value of container {container}, or allow \
         references the spec does not declare with the annotation {ALLOW_UNLISTED_REFS}: \"true\"",
        sources.join("; ")
    )
}

/// Decides whether a process in container `container_name` of `pod` may read `reference`,
/// which it requested as variable `variable_name`.
///
/// `settings` are the pod's settings from [`PodSettings::from_pod`]. References are compared
/// by their parsed form, so spellings that read the same secret match. A value that does not
/// parse matches only the same text.
pub fn authorize(
    pod: &Pod,
    container_name: &str,
    variable_name: &str,
    reference: &str,
    settings: &PodSettings,
) -> Result<(), Denial> {
    check_opted_in(pod)?;

    let Some(spec_env) = find_container(pod, container_name) else {
        return Err(Denial::ContainerNotFound {
            pod: pod_label(pod),
            container: container_name.to_string(),
        });
    };
    if !settings.containers.selects(container_name) {
        return Err(Denial::ContainerNotSelected {
            pod: pod_label(pod),
            container: container_name.to_string(),
            selected: settings.containers.to_string(),
        });
    }
    if settings.allow_unlisted_refs {
        return Ok(());
    }

    let env = declared_env(pod, &spec_env);
    let requested = Reference::parse(reference).ok();
    let declared = |value: &String| {
        value == reference
            || requested
                .as_ref()
                .is_some_and(|requested| Reference::parse(value).as_ref() == Ok(requested))
    };
    if env.values.iter().any(declared) {
        return Ok(());
    }
    Err(Denial::ReferenceNotDeclared {
        pod: pod_label(pod),
        container: container_name.to_string(),
        variable: variable_name.to_string(),
        reference: shorten(reference),
        hidden_sources: env.hidden_sources,
    })
}

/// Reads the settings of `pod` and decides one request as [`authorize`] does, returning the
/// settings the agent needs to serve it.
///
/// The opt-in is checked first, so a pod that has not opted in is denied as such even when its
/// other EnvProxy annotations are invalid.
pub fn authorize_request(
    pod: &Pod,
    container_name: &str,
    variable_name: &str,
    reference: &str,
    vault_addr_allowlist: &[String],
) -> Result<PodSettings, Denial> {
    check_opted_in(pod)?;
    let settings = PodSettings::from_pod(pod, vault_addr_allowlist).map_err(|source| {
        Denial::BadAnnotation {
            pod: pod_label(pod),
            source,
        }
    })?;
    authorize(pod, container_name, variable_name, reference, &settings)?;
    Ok(settings)
}

fn check_opted_in(pod: &Pod) -> Result<(), Denial> {
    match is_opted_in(pod) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Denial::NotOptedIn {
            pod: pod_label(pod),
        }),
        Err(source) => Err(Denial::BadAnnotation {
            pod: pod_label(pod),
            source,
        }),
    }
}

/// Returns `namespace/name` of `pod`, with `?` for a missing part.
fn pod_label(pod: &Pod) -> String {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("?");
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    format!("{namespace}/{name}")
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_REFERENCE_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DB_URL: &str = "vault:secret/data/shop/db#url";

    /// A pod as the API server returns it for a Deployment `web` in namespace `shop`.
    fn web_pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-5d9c7b6f4-x2x8q",
                "generateName": "web-5d9c7b6f4-",
                "namespace": "shop",
                "uid": "0d8b260e-ef0e-45fb-be8e-ff44f97722e8",
                "labels": { "app": "web", "pod-template-hash": "5d9c7b6f4" },
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9c7b6f4",
                    "uid": "7c1e3a52-1f0c-4f7e-9d53-4a0f3c2f9b11", "controller": true,
                }],
            },
            "spec": {
                "serviceAccountName": "checkout",
                "nodeName": "node-a",
                "initContainers": [{
                    "name": "migrate",
                    "image": "registry.example/shop/migrate:1.4",
                    "env": [{ "name": "MIGRATION_DSN", "value": "vault:database/creds/shop-migrate#dsn" }],
                }],
                "containers": [
                    {
                        "name": "app",
                        "image": "registry.example/shop/web:1.4",
                        "env": [
                            { "name": "DATABASE_URL", "value": DB_URL },
                            { "name": "API_KEY", "value": "vault:secret/data/shop/api#key#03" },
                            { "name": "LOG_LEVEL", "value": "info" },
                            { "name": "POD_NAMESPACE",
                              "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                            { "name": "TENANT_KEY",
                              "value": "vault:secret/data/$(POD_NAMESPACE)/tenant#key" },
                            { "name": "BROKEN", "value": "vault:no-key-here" },
                        ],
                    },
                    {
                        "name": "proxy",
                        "image": "registry.example/envoy:1.30",
                        "envFrom": [{ "configMapRef": { "name": "proxy-config" } }],
                        "env": [{ "name": "ADMIN_TOKEN", "value": "envproxy:PROXY_ADMIN" }],
                    },
                ],
                "ephemeralContainers": [{
                    "name": "debugger-7xkq",
                    "image": "busybox:1.36",
                    "env": [{ "name": "DEBUG_TOKEN", "value": "envproxy:DEBUG" }],
                }],
            },
            "status": { "phase": "Running", "podIP": "10.0.3.17" },
        }))
        .unwrap()
    }

    fn opted_in(extra: serde_json::Value) -> Pod {
        let mut annotations = json!({ "envproxy.dev/inject": "true" });
        for (key, value) in extra.as_object().unwrap() {
            annotations[key] = value.clone();
        }
        web_pod(annotations)
    }

    fn decide(pod: &Pod, container: &str, variable: &str, reference: &str) -> Result<(), Denial> {
        authorize_request(pod, container, variable, reference, &[]).map(|_| ())
    }

    #[test]
    fn decisions_by_case() {
        let pod = opted_in(json!({}));
        let cases: [(&str, &str, &str, Option<DenialReason>); 14] = [
            ("app", "DATABASE_URL", DB_URL, None),
            // A child that renamed the variable keeps the reference.
            ("app", "DB", DB_URL, None),
            // Version 03 and version 3 read the same secret.
            ("app", "API_KEY", "vault:secret/data/shop/api#key#3", None),
            (
                "app",
                "TENANT_KEY",
                "vault:secret/data/shop/tenant#key",
                None,
            ),
            // A value that does not parse matches its exact text only.
            ("app", "BROKEN", "vault:no-key-here", None),
            (
                "migrate",
                "MIGRATION_DSN",
                "vault:database/creds/shop-migrate#dsn",
                None,
            ),
            ("debugger-7xkq", "DEBUG_TOKEN", "envproxy:DEBUG", None),
            ("proxy", "ADMIN_TOKEN", "envproxy:PROXY_ADMIN", None),
            (
                "app",
                "API_KEY",
                "vault:secret/data/shop/api#key",
                Some(DenialReason::ReferenceNotDeclared),
            ),
            (
                "app",
                "TENANT_KEY",
                "vault:secret/data/$(POD_NAMESPACE)/tenant#key",
                Some(DenialReason::ReferenceNotDeclared),
            ),
            // A reference declared in another container of the same pod.
            (
                "app",
                "ADMIN_TOKEN",
                "envproxy:PROXY_ADMIN",
                Some(DenialReason::ReferenceNotDeclared),
            ),
            (
                "proxy",
                "DATABASE_URL",
                DB_URL,
                Some(DenialReason::ReferenceNotDeclared),
            ),
            (
                "app",
                "LOG_LEVEL",
                "vault:secret/data/shop/db#url2",
                Some(DenialReason::ReferenceNotDeclared),
            ),
            (
                "worker",
                "DATABASE_URL",
                DB_URL,
                Some(DenialReason::ContainerNotFound),
            ),
        ];
        for (container, variable, reference, expected) in cases {
            let result = decide(&pod, container, variable, reference);
            assert_eq!(
                result.as_ref().err().map(Denial::reason),
                expected,
                "{container} {variable} {reference}: {result:?}"
            );
        }
    }

    #[test]
    fn opt_in_annotation_values() {
        let cases = [
            (json!({}), DenialReason::NotOptedIn),
            (
                json!({ "envproxy.dev/inject": "false" }),
                DenialReason::NotOptedIn,
            ),
            (
                json!({ "envproxy.dev/inject": "True" }),
                DenialReason::BadAnnotation,
            ),
        ];
        for (annotations, expected) in cases {
            let pod = web_pod(annotations.clone());
            let denial = decide(&pod, "app", "DATABASE_URL", DB_URL).unwrap_err();
            assert_eq!(denial.reason(), expected, "{annotations}");
        }
    }

    #[test]
    fn opt_in_checked_before_settings() {
        let pod = web_pod(json!({ "envproxy.dev/vault-cache-ttl": "forever" }));
        let denial = decide(&pod, "app", "DATABASE_URL", DB_URL).unwrap_err();
        assert_eq!(denial.reason(), DenialReason::NotOptedIn);
    }

    #[test]
    fn not_opted_in_message() {
        let denial = decide(&web_pod(json!({})), "app", "DATABASE_URL", DB_URL).unwrap_err();
        assert_eq!(
            denial.to_string(),
            "pod shop/web-5d9c7b6f4-x2x8q has not opted in to EnvProxy: add the annotation \
             envproxy.dev/inject: \"true\" to the pod (for a Deployment, to its pod template)"
        );
    }

    #[test]
    fn bad_annotation_names_it() {
        let pod = opted_in(json!({ "envproxy.dev/vault-cache-ttl": "forever" }));
        let denial = decide(&pod, "app", "DATABASE_URL", DB_URL).unwrap_err();
        assert_eq!(denial.reason(), DenialReason::BadAnnotation);
        let text = denial.to_string();
        assert!(text.starts_with("pod shop/web-5d9c7b6f4-x2x8q has an invalid EnvProxy"));
        assert!(text.contains("envproxy.dev/vault-cache-ttl"), "{text}");
        assert!(text.contains("\"forever\""), "{text}");
        let source = std::error::Error::source(&denial).unwrap();
        assert!(source.to_string().contains("1h30m"));
    }

    #[test]
    fn container_list_selects() {
        let pod = opted_in(json!({ "envproxy.dev/containers": "app, migrate" }));
        assert_eq!(decide(&pod, "app", "DATABASE_URL", DB_URL), Ok(()));
        let migrate = decide(
            &pod,
            "migrate",
            "M",
            "vault:database/creds/shop-migrate#dsn",
        );
        assert_eq!(migrate, Ok(()));

        let denial = decide(&pod, "proxy", "ADMIN_TOKEN", "envproxy:PROXY_ADMIN").unwrap_err();
        assert_eq!(denial.reason(), DenialReason::ContainerNotSelected);
        assert_eq!(
            denial.to_string(),
            "container proxy of pod shop/web-5d9c7b6f4-x2x8q is not selected for EnvProxy: add \
             it to the annotation envproxy.dev/containers (now \"app,migrate\")"
        );
    }

    #[test]
    fn unknown_container_message() {
        let pod = opted_in(json!({}));
        let denial = decide(&pod, "worker", "DATABASE_URL", DB_URL).unwrap_err();
        assert_eq!(
            denial,
            Denial::ContainerNotFound {
                pod: "shop/web-5d9c7b6f4-x2x8q".into(),
                container: "worker".into(),
            }
        );
        assert!(denial.to_string().contains("named worker"));
    }

    #[test]
    fn undeclared_reference_message() {
        let pod = opted_in(json!({}));
        let reference = "vault:secret/data/shop/other#password";
        let denial = decide(&pod, "app", "OTHER_PASSWORD", reference).unwrap_err();
        assert_eq!(denial.reason(), DenialReason::ReferenceNotDeclared);
        assert_eq!(
            denial.to_string(),
            "container app of pod shop/web-5d9c7b6f4-x2x8q does not declare reference \
             \"vault:secret/data/shop/other#password\" (requested as OTHER_PASSWORD): add an env \
             entry with this literal value to container app, such as name OTHER_PASSWORD, value \
             \"vault:secret/data/shop/other#password\""
        );
        assert!(!denial.to_string().contains(ALLOW_UNLISTED_REFS));
    }

    #[test]
    fn config_map_hint_names_annotation() {
        let pod = opted_in(json!({}));
        let denial = decide(&pod, "proxy", "UPSTREAM_KEY", "vault:secret/data/up#key").unwrap_err();
        assert_eq!(denial.reason(), DenialReason::ReferenceNotDeclared);
        let Denial::ReferenceNotDeclared { hidden_sources, .. } = &denial else {
            panic!("unexpected denial {denial:?}");
        };
        assert_eq!(
            hidden_sources,
            &[HiddenSource::ConfigMap {
                config_map: "proxy-config".into()
            }]
        );
        let text = denial.to_string();
        assert!(
            text.contains("may come from envFrom ConfigMap proxy-config"),
            "{text}"
        );
        assert!(
            text.contains("envproxy.dev/allow-unlisted-refs: \"true\""),
            "{text}"
        );
    }

    #[test]
    fn unlisted_refs_allowed_by_annotation() {
        let pod = opted_in(json!({
            "envproxy.dev/allow-unlisted-refs": "true",
            "envproxy.dev/containers": "proxy",
        }));
        let settings = authorize_request(&pod, "proxy", "K", "vault:secret/data/up#key", &[]);
        assert!(settings.unwrap().allow_unlisted_refs);
        // The container list and the opt-in still apply.
        let denial = decide(&pod, "app", "DATABASE_URL", DB_URL).unwrap_err();
        assert_eq!(denial.reason(), DenialReason::ContainerNotSelected);
    }

    #[test]
    fn authorize_request_returns_settings() {
        let pod = opted_in(json!({
            "envproxy.dev/vault-addr": "https://vault.shop.svc:8200",
            "envproxy.dev/vault-role": "web",
        }));
        let allowlist = ["https://vault.shop.svc:8200".to_string()];
        let settings = authorize_request(&pod, "app", "DATABASE_URL", DB_URL, &allowlist).unwrap();
        assert_eq!(settings.vault_role, "web");
        assert_eq!(
            settings.vault_addr.as_deref(),
            Some("https://vault.shop.svc:8200")
        );

        let denial = decide(&pod, "app", "DATABASE_URL", DB_URL).unwrap_err();
        assert_eq!(denial.reason(), DenialReason::BadAnnotation);
    }

    #[test]
    fn authorize_uses_given_settings() {
        let pod = opted_in(json!({}));
        let mut settings = PodSettings::from_pod(&pod, &[]).unwrap();
        settings.allow_unlisted_refs = true;
        assert_eq!(
            authorize(&pod, "app", "X", "vault:secret/data/any#k", &settings),
            Ok(())
        );
        let not_opted_in = web_pod(json!({}));
        let denial = authorize(&not_opted_in, "app", "X", DB_URL, &settings).unwrap_err();
        assert_eq!(denial.reason(), DenialReason::NotOptedIn);
    }

    #[test]
    fn long_reference_is_shortened() {
        let pod = opted_in(json!({}));
        let reference = format!("vault:secret/data/{}#k", "a".repeat(10_000));
        let denial = decide(&pod, "app", "X", &reference).unwrap_err();
        let Denial::ReferenceNotDeclared { reference, .. } = &denial else {
            panic!("unexpected denial {denial:?}");
        };
        assert_eq!(reference.chars().count(), MAX_QUOTED_REFERENCE_CHARS + 3);
        assert!(denial.to_string().len() < 1000);
    }

    #[test]
    fn reason_labels_are_stable() {
        let labels = [
            (DenialReason::NotOptedIn, "not_opted_in"),
            (DenialReason::BadAnnotation, "bad_annotation"),
            (DenialReason::ContainerNotFound, "container_not_found"),
            (DenialReason::ContainerNotSelected, "container_not_selected"),
            (DenialReason::ReferenceNotDeclared, "reference_not_declared"),
        ];
        for (reason, label) in labels {
            assert_eq!(reason.as_str(), label);
            assert_eq!(reason.to_string(), label);
        }
    }
}
