//! Field and label selectors of list and watch requests (`fieldSelector`, `labelSelector`).
//!
//! Field selectors support the pod and Secret fields the API server indexes, with `=`, `==`
//! and `!=`. Label selectors support equality (`a=b`, `a==b`, `a!=b`), existence (`a`, `!a`)
//! and sets (`a in (x,y)`, `a notin (x)`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret};

use crate::object::{Kind, Object};
use crate::status::ApiError;

/// Pod fields the API server accepts in a field selector.
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

/// The Secret fields a field selector may name, as the API server indexes them.
const SECRET_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "type"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed field selector for pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<Requirement>);

impl FieldSelector {
    /// Parses `fieldSelector`; a field pods do not index is a 400, as on the API server.
    pub(crate) fn parse(text: &str, kind: Kind) -> Result<FieldSelector, ApiError> {
        let supported = match kind {
            Kind::Pod => POD_FIELDS,
            Kind::Secret => SECRET_FIELDS,
        };
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let requirement = if let Some((field, value)) = term.split_once("!=") {
                Requirement::NotEquals(field.trim().to_owned(), value.trim().to_owned())
            } else if let Some((field, value)) = term.split_once("==") {
                Requirement::Equals(field.trim().to_owned(), value.trim().to_owned())
            } else if let Some((field, value)) = term.split_once('=') {
                Requirement::Equals(field.trim().to_owned(), value.trim().to_owned())
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            let (Requirement::Equals(field, _) | Requirement::NotEquals(field, _)) = &requirement
            else {
                unreachable!("field selectors only build equality requirements");
            };
            if !supported.contains(&field.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            requirements.push(requirement);
        }
        Ok(FieldSelector(requirements))
    }

    /// Returns whether `pod` satisfies every requirement.
    pub(crate) fn matches(&self, object: &Object) -> bool {
        let field_of = |field: &str| match object {
            Object::Pod(pod) => pod_field(pod, field),
            Object::Secret(secret) => secret_field(secret, field),
        };
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(field, value) => field_of(field) == *value,
            Requirement::NotEquals(field, value) => field_of(field) != *value,
            _ => unreachable!("field selectors only hold equality requirements"),
        })
    }
}

/// Returns a pod field as the API server's field set renders it (absent fields are empty).
fn pod_field(pod: &Pod, field: &str) -> String {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let text = |value: Option<&String>| value.cloned().unwrap_or_default();
    match field {
        "metadata.name" => text(pod.metadata.name.as_ref()),
        "metadata.namespace" => text(pod.metadata.namespace.as_ref()),
        "spec.nodeName" => text(spec.and_then(|s| s.node_name.as_ref())),
        "spec.restartPolicy" => text(spec.and_then(|s| s.restart_policy.as_ref())),
        "spec.schedulerName" => text(spec.and_then(|s| s.scheduler_name.as_ref())),
        "spec.serviceAccountName" => text(spec.and_then(|s| s.service_account_name.as_ref())),
        "spec.hostNetwork" => spec
            .and_then(|s| s.host_network)
            .unwrap_or(false)
            .to_string(),
        "status.phase" => text(status.and_then(|s| s.phase.as_ref())),
        "status.podIP" => text(status.and_then(|s| s.pod_ip.as_ref())),
        "status.nominatedNodeName" => text(status.and_then(|s| s.nominated_node_name.as_ref())),
        _ => String::new(),
    }
}

fn secret_field(secret: &Secret, field: &str) -> String {
    let text = |value: Option<&String>| value.cloned().unwrap_or_default();
    match field {
        "metadata.name" => text(secret.metadata.name.as_ref()),
        "metadata.namespace" => text(secret.metadata.namespace.as_ref()),
        "type" => text(secret.type_.as_ref()),
        _ => String::new(),
    }
}

/// A parsed label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses `labelSelector`; a term it cannot read is a 400.
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        let invalid = |term: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement: found '{term}' in label selector '{text}'"
            ))
        };
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
            let requirement = if let [key, rest] = words.as_slice() {
                let rest = rest.trim();
                let (negated, values) = if let Some(values) = rest.strip_prefix("notin") {
                    (true, values)
                } else if let Some(values) = rest.strip_prefix("in") {
                    (false, values)
                } else {
                    return Err(invalid(term));
                };
                let values = values
                    .trim()
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(|| invalid(term))?;
                let values = values.split(',').map(|v| v.trim().to_owned()).collect();
                if negated {
                    Requirement::NotIn((*key).to_owned(), values)
                } else {
                    Requirement::In((*key).to_owned(), values)
                }
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = term.split_once("==") {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = term.split_once('=') {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_owned())
            } else {
                Requirement::Exists(term.to_owned())
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    /// Returns whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let empty = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::NotExists(key) => !labels.contains_key(key),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
        })
    }
}

/// Splits a selector on the commas that separate terms, keeping commas inside `(...)`.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|term| !term.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod_on(node: &str) -> Object {
        Object::Pod(Arc::new(Pod {
            spec: Some(PodSpec {
                node_name: Some(node.to_owned()),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }))
    }

    fn secret(name: &str, type_: &str) -> Object {
        Object::Secret(Arc::new(Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            type_: Some(type_.to_owned()),
            ..Secret::default()
        }))
    }

    #[test]
    fn field_selector_matches_secret_fields() {
        let selector = FieldSelector::parse("metadata.name=db,type=Opaque", Kind::Secret).unwrap();
        assert!(selector.matches(&secret("db", "Opaque")));
        assert!(!selector.matches(&secret("web", "Opaque")));
        assert!(!selector.matches(&secret("db", "kubernetes.io/tls")));
        let error = FieldSelector::parse("spec.nodeName=a", Kind::Secret).unwrap_err();
        assert_eq!(error.message, "field label not supported: spec.nodeName");
    }

    #[test]
    fn field_selector_matches_node_name() {
        let selector = FieldSelector::parse("spec.nodeName=node-a", Kind::Pod).unwrap();
        assert!(selector.matches(&pod_on("node-a")));
        assert!(!selector.matches(&pod_on("node-b")));

        let negated = FieldSelector::parse("spec.nodeName!=node-a", Kind::Pod).unwrap();
        assert!(negated.matches(&pod_on("node-b")));
    }

    #[test]
    fn field_selector_rejects_unindexed_field() {
        let error =
            FieldSelector::parse("spec.nodeName=a,metadata.labels=x", Kind::Pod).unwrap_err();
        assert_eq!(error.code, 400);
        assert_eq!(error.message, "field label not supported: metadata.labels");
    }

    #[test]
    fn field_selector_rejects_term_without_operator() {
        let error = FieldSelector::parse("spec.nodeName", Kind::Pod).unwrap_err();
        assert_eq!(error.code, 400);
    }

    #[test]
    fn label_selector_forms() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let cases = [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("missing notin (x)", true),
            ("app=db", false),
        ];
        for (text, expected) in cases {
            let selector = LabelSelector::parse(text).unwrap();
            assert_eq!(selector.matches(Some(&labels)), expected, "{text}");
        }
    }
}
