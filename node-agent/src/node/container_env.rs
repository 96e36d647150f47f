//! The env values a container's spec declares, with `$(VAR)` references expanded as the kubelet
//! expands them, and the sources of values that the agent cannot see.
//!
//! The kubelet builds a container's environment from `envFrom` first and then from `env` in
//! order. A literal `value` may refer to a variable defined before it as `$(NAME)`, and `$$`
//! writes a literal `$`. A `$(NAME)` whose variable is not defined stays as written. The agent
//! reads the pod object only, so values from ConfigMaps, Secrets and files are unknown to it.

use std::collections::HashMap;
use std::fmt;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, Pod};

/// Maximum length of one expanded value, in bytes. Each `$(NAME)` may copy an earlier expanded
/// value, so without a bound a small spec could expand to gigabytes. A secret reference is far
/// shorter than this.
const MAX_EXPANDED_LEN: usize = 32 * 1024;

/// A source of container env values that the agent cannot read from the pod object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HiddenSource {
    /// `valueFrom.configMapKeyRef` of one env entry.
    ConfigMapKey {
        variable: String,
        config_map: String,
        key: String,
    },
    /// `envFrom.configMapRef`: every key of a ConfigMap.
    ConfigMap { config_map: String },
    /// `valueFrom.secretKeyRef` of one env entry.
    SecretKey {
        variable: String,
        secret: String,
        key: String,
    },
    /// `envFrom.secretRef`: every key of a Secret.
    Secret { secret: String },
    /// `valueFrom.fileKeyRef` of one env entry: a key of a file in a volume.
    FileKey {
        variable: String,
        volume: String,
        path: String,
        key: String,
    },
    /// A `$(NAME)` in a literal value whose variable has a value the agent cannot see.
    Expansion { variable: String, name: String },
    /// A literal value whose expansion is longer than the agent compares.
    TooLong { variable: String },
}

impl fmt::Display for HiddenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HiddenSource::ConfigMapKey {
                variable,
                config_map,
                key,
            } => write!(f, "env {variable} from key {key} of ConfigMap {config_map}"),
            HiddenSource::ConfigMap { config_map } => write!(f, "envFrom ConfigMap {config_map}"),
            HiddenSource::SecretKey {
                variable,
                secret,
                key,
            } => write!(f, "env {variable} from key {key} of Secret {secret}"),
            HiddenSource::Secret { secret } => write!(f, "envFrom Secret {secret}"),
            HiddenSource::FileKey {
                variable,
                volume,
                path,
                key,
            } => write!(
                f,
                "env {variable} from key {key} of file {path} in volume {volume}"
            ),
            HiddenSource::Expansion { variable, name } => {
                write!(f, "env {variable}, which expands $({name})")
            }
            HiddenSource::TooLong { variable } => write!(
                f,
                "env {variable}, whose expanded value is longer than {MAX_EXPANDED_LEN} bytes"
            ),
        }
    }
}

/// The env of one container, as far as the pod object shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerEnv {
    /// Literal `value`s of the env entries after expansion, in spec order.
    pub values: Vec<String>,
    /// Sources of values that the agent cannot see, in spec order.
    pub hidden_sources: Vec<HiddenSource>,
}

/// Env entries and `envFrom` sources of one container of a pod's spec.
pub struct ContainerSpecEnv<'a> {
    pub env: &'a [EnvVar],
    pub env_from: &'a [EnvFromSource],
}

/// Finds the container named `name` among the pod's containers, init containers and ephemeral
/// containers, and returns its env entries.
pub fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<ContainerSpecEnv<'a>> {
    let spec = pod.spec.as_ref()?;
    let regular = spec.containers.iter();
    let init = spec.init_containers.iter().flatten();
    if let Some(container) = regular.chain(init).find(|c| c.name == name) {
        return Some(ContainerSpecEnv {
            env: container.env.as_deref().unwrap_or_default(),
            env_from: container.env_from.as_deref().unwrap_or_default(),
        });
    }
    let ephemeral = spec.ephemeral_containers.iter().flatten();
    let container = ephemeral.into_iter().find(|c| c.name == name)?;
    Some(ContainerSpecEnv {
        env: container.env.as_deref().unwrap_or_default(),
        env_from: container.env_from.as_deref().unwrap_or_default(),
    })
}

/// Expands the literal env values of one container of `pod` and lists the sources it cannot
/// see. `pod` supplies the values of `valueFrom.fieldRef` entries.
pub fn declared_env(pod: &Pod, spec_env: &ContainerSpecEnv<'_>) -> ContainerEnv {
    let mut result = ContainerEnv::default();
    for source in spec_env.env_from {
        if let Some(config_map) = &source.config_map_ref {
            result.hidden_sources.push(HiddenSource::ConfigMap {
                config_map: config_map.name.clone(),
            });
        }
        if let Some(secret) = &source.secret_ref {
            result.hidden_sources.push(HiddenSource::Secret {
                secret: secret.name.clone(),
            });
        }
    }
    // With `envFrom` sources, any `$(NAME)` not defined in `env` may be defined there.
    let env_from_hidden = !result.hidden_sources.is_empty();

    // Variables defined so far: `Some` with a known value, `None` when the value is unknown.
    let mut defined: HashMap<&str, Option<String>> = HashMap::new();
    for entry in spec_env.env {
        let variable = entry.name.as_str();
        if let Some(value) = entry.value.as_deref().filter(|value| !value.is_empty()) {
            let mut unresolved = Vec::new();
            let lookup = |name: &str| match defined.get(name) {
                Some(Some(value)) => Some(value.as_str()),
                Some(None) => {
                    unresolved.push(name.to_string());
                    None
                }
                None => {
                    if env_from_hidden {
                        unresolved.push(name.to_string());
                    }
                    None
                }
            };
            let expanded = expand(value, lookup);
            for name in unresolved {
                result.hidden_sources.push(HiddenSource::Expansion {
                    variable: variable.to_string(),
                    name,
                });
            }
            match expanded {
                Some(expanded) => {
                    result.values.push(expanded.clone());
                    defined.insert(variable, Some(expanded));
                }
                None => {
                    result.hidden_sources.push(HiddenSource::TooLong {
                        variable: variable.to_string(),
                    });
                    defined.insert(variable, None);
                }
            }
            continue;
        }

        let Some(source) = &entry.value_from else {
            // An entry with an empty value and no source defines the variable as empty.
            defined.insert(variable, Some(String::new()));
            continue;
        };
        if let Some(selector) = &source.config_map_key_ref {
            result.hidden_sources.push(HiddenSource::ConfigMapKey {
                variable: variable.to_string(),
                config_map: selector.name.clone(),
                key: selector.key.clone(),
            });
        }
        if let Some(selector) = &source.secret_key_ref {
            result.hidden_sources.push(HiddenSource::SecretKey {
                variable: variable.to_string(),
                secret: selector.name.clone(),
                key: selector.key.clone(),
            });
        }
        if let Some(selector) = &source.file_key_ref {
            result.hidden_sources.push(HiddenSource::FileKey {
                variable: variable.to_string(),
                volume: selector.volume_name.clone(),
                path: selector.path.clone(),
                key: selector.key.clone(),
            });
        }
        let field_value = source
            .field_ref
            .as_ref()
            .and_then(|selector| pod_field(pod, &selector.field_path));
        defined.insert(variable, field_value);
    }
    result
}

/// Returns a pod field that the downward API can put in an env entry, or `None` for a field
/// that the pod object does not contain yet or that this function does not read.
fn pod_field(pod: &Pod, field_path: &str) -> Option<String> {
    let metadata = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    match field_path {
        "metadata.name" => metadata.name.clone(),
        "metadata.namespace" => metadata.namespace.clone(),
        "metadata.uid" => metadata.uid.clone(),
        "spec.nodeName" => spec?.node_name.clone(),
        "spec.serviceAccountName" => spec?.service_account_name.clone(),
        "status.podIP" => status?.pod_ip.clone(),
        "status.hostIP" => status?.host_ip.clone(),
        _ => {
            if let Some(key) = bracketed_key(field_path, "metadata.labels") {
                return metadata.labels.as_ref()?.get(key).cloned();
            }
            let key = bracketed_key(field_path, "metadata.annotations")?;
            metadata.annotations.as_ref()?.get(key).cloned()
        }
    }
}

/// Returns `KEY` of a field path `<prefix>['KEY']`.
fn bracketed_key<'a>(field_path: &'a str, prefix: &str) -> Option<&'a str> {
    field_path
        .strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// Expands `$(NAME)` and `$$` in `input` the way the kubelet does (Kubernetes
/// `third_party/forked/golang/expansion`). `lookup` returns the value of a defined variable.
/// An undefined `$(NAME)` stays as written, and so does a `$` before any other character or at
/// the end. Returns `None` when the result exceeds [`MAX_EXPANDED_LEN`].
fn expand<'v>(input: &str, mut lookup: impl FnMut(&str) -> Option<&'v str>) -> Option<String> {
    let mut output = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        output.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            output.push('$');
            rest = tail;
        } else if let Some(close) = after.strip_prefix('(').and_then(|s| s.find(')')) {
            let name = &after[1..close + 1];
            match lookup(name) {
                Some(value) => output.push_str(value),
                None => {
                    output.push_str("$(");
                    output.push_str(name);
                    output.push(')');
                }
            }
            rest = &after[close + 2..];
        } else {
            output.push('$');
            rest = after;
        }
        if output.len() > MAX_EXPANDED_LEN {
            return None;
        }
    }
    output.push_str(rest);
    (output.len() <= MAX_EXPANDED_LEN).then_some(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-5d9c7b6f4-x2x8q",
                "namespace": "shop",
                "uid": "0d8b260e-ef0e-45fb-be8e-ff44f97722e8",
                "labels": { "app": "web" },
                "annotations": { "envproxy.dev/inject": "true" },
            },
            "spec": {
                "serviceAccountName": "checkout",
                "nodeName": "node-a",
                "containers": [container],
            },
            "status": { "podIP": "10.0.3.17" },
        }))
        .unwrap()
    }

    fn env_of(pod: &Pod) -> ContainerEnv {
        let name = &pod.spec.as_ref().unwrap().containers[0].name;
        declared_env(pod, &find_container(pod, name).unwrap())
    }

    fn expand_with(input: &str, vars: &[(&str, &str)]) -> Option<String> {
        let lookup = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        expand(input, lookup)
    }

    #[test]
    fn expand_matches_kubelet_rules() {
        let vars = [("NS", "shop"), ("EMPTY", "")];
        let cases = [
            ("plain", "plain"),
            (
                "vault:secret/data/$(NS)/db#url",
                "vault:secret/data/shop/db#url",
            ),
            ("$(NS)$(NS)", "shopshop"),
            ("$(EMPTY)x", "x"),
            ("$(UNDEFINED)", "$(UNDEFINED)"),
            ("$$(NS)", "$(NS)"),
            ("$$$(NS)", "$shop"),
            ("cost: $5", "cost: $5"),
            ("trailing $", "trailing $"),
            ("$(NS", "$(NS"),
            ("$()", "$()"),
            ("a$$b", "a$b"),
            ("ü$(NS)ü", "üshopü"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                expand_with(input, &vars).as_deref(),
                Some(expected),
                "{input}"
            );
        }
    }

    #[test]
    fn expand_bounds_output_length() {
        let big = "x".repeat(MAX_EXPANDED_LEN / 2 + 1);
        assert!(expand_with("$(BIG)", &[("BIG", &big)]).is_some());
        assert_eq!(expand_with("$(BIG)$(BIG)", &[("BIG", &big)]), None);
    }

    #[test]
    fn literal_values_in_order() {
        let pod = pod(json!({
            "name": "app",
            "env": [
                { "name": "DATABASE_URL", "value": "vault:secret/data/shop/db#url" },
                { "name": "LOG_LEVEL", "value": "info" },
                { "name": "EMPTY", "value": "" },
            ],
        }));
        let env = env_of(&pod);
        assert_eq!(env.values, ["vault:secret/data/shop/db#url", "info"]);
        assert!(env.hidden_sources.is_empty());
    }

    #[test]
    fn earlier_literal_is_expanded() {
        let pod = pod(json!({
            "name": "app",
            "env": [
                { "name": "TEAM", "value": "payments" },
                { "name": "KEY", "value": "vault:secret/data/$(TEAM)/api#key" },
                { "name": "LATER", "value": "$(DEFINED_AFTER)" },
                { "name": "DEFINED_AFTER", "value": "x" },
            ],
        }));
        let env = env_of(&pod);
        assert_eq!(env.values[1], "vault:secret/data/payments/api#key");
        assert_eq!(env.values[2], "$(DEFINED_AFTER)");
        assert!(env.hidden_sources.is_empty());
    }

    #[test]
    fn field_refs_are_expanded() {
        let pod = pod(json!({
            "name": "app",
            "env": [
                { "name": "NS", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                { "name": "SA", "valueFrom": { "fieldRef": { "fieldPath": "spec.serviceAccountName" } } },
                { "name": "APP", "valueFrom": { "fieldRef": { "fieldPath": "metadata.labels['app']" } } },
                { "name": "IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                { "name": "KEY", "value": "vault:kv/data/$(NS)/$(SA)/$(APP)#$(IP)" },
            ],
        }));
        let env = env_of(&pod);
        assert_eq!(env.values, ["vault:kv/data/shop/checkout/web#10.0.3.17"]);
        assert!(env.hidden_sources.is_empty());
    }

    #[test]
    fn pod_fields_by_path() {
        let pod = pod(json!({ "name": "app" }));
        let cases = [
            ("metadata.name", Some("web-5d9c7b6f4-x2x8q")),
            ("metadata.uid", Some("0d8b260e-ef0e-45fb-be8e-ff44f97722e8")),
            ("spec.nodeName", Some("node-a")),
            ("metadata.annotations['envproxy.dev/inject']", Some("true")),
            ("metadata.labels['missing']", None),
            ("status.hostIP", None),
            ("spec.containers", None),
        ];
        for (path, expected) in cases {
            assert_eq!(pod_field(&pod, path).as_deref(), expected, "{path}");
        }
    }

    #[test]
    fn config_map_sources_are_hidden() {
        let pod = pod(json!({
            "name": "app",
            "envFrom": [
                { "configMapRef": { "name": "shop-config" } },
                { "secretRef": { "name": "shop-secrets" }, "prefix": "S_" },
            ],
            "env": [
                { "name": "A", "valueFrom": { "configMapKeyRef": { "name": "cm", "key": "a" } } },
                { "name": "B", "valueFrom": { "secretKeyRef": { "name": "sec", "key": "b" } } },
                { "name": "C", "value": "vault:secret/data/$(A)#k" },
                { "name": "D", "value": "$(FROM_ENV_FROM)" },
            ],
        }));
        let env = env_of(&pod);
        assert_eq!(env.values, ["vault:secret/data/$(A)#k", "$(FROM_ENV_FROM)"]);
        let described: Vec<String> = env.hidden_sources.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            described,
            [
                "envFrom ConfigMap shop-config",
                "envFrom Secret shop-secrets",
                "env A from key a of ConfigMap cm",
                "env B from key b of Secret sec",
                "env C, which expands $(A)",
                "env D, which expands $(FROM_ENV_FROM)",
            ]
        );
    }

    #[test]
    fn file_key_source_is_hidden() {
        let pod = pod(json!({
            "name": "app",
            "env": [{
                "name": "F",
                "valueFrom": { "fileKeyRef": {
                    "volumeName": "config", "path": "app.env", "key": "F" } },
            }],
        }));
        let env = env_of(&pod);
        assert!(env.values.is_empty());
        assert_eq!(
            env.hidden_sources,
            [HiddenSource::FileKey {
                variable: "F".into(),
                volume: "config".into(),
                path: "app.env".into(),
                key: "F".into(),
            }]
        );
    }

    #[test]
    fn exploding_expansion_is_bounded() {
        let mut env = vec![json!({ "name": "V0", "value": "x".repeat(1024) })];
        for i in 1..30 {
            let previous = format!("$(V{})", i - 1);
            env.push(json!({ "name": format!("V{i}"), "value": previous.repeat(4) }));
        }
        let pod = pod(json!({ "name": "app", "env": env }));
        let env = env_of(&pod);
        assert!(env.values.iter().all(|v| v.len() <= MAX_EXPANDED_LEN));
        // V3 would be 64 KiB: four copies of the 16 KiB V2.
        assert_eq!(env.values[2].len(), 16 * 1024);
        assert!(env.hidden_sources.contains(&HiddenSource::TooLong {
            variable: "V3".into()
        }));
        assert!(env.hidden_sources.contains(&HiddenSource::Expansion {
            variable: "V4".into(),
            name: "V3".into(),
        }));
        assert_eq!(env.values[3], "$(V3)".repeat(4));
    }

    #[test]
    fn finds_init_and_ephemeral_containers() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "shop" },
            "spec": {
                "containers": [{ "name": "app" }],
                "initContainers": [
                    { "name": "migrate", "env": [{ "name": "X", "value": "vault:a/b#c" }] },
                ],
                "ephemeralContainers": [
                    { "name": "debugger", "env": [{ "name": "Y", "value": "envproxy:TOKEN" }] },
                ],
            },
        }))
        .unwrap();
        let app = find_container(&pod, "app").unwrap();
        assert!(app.env.is_empty());
        assert_eq!(find_container(&pod, "migrate").unwrap().env[0].name, "X");
        assert_eq!(find_container(&pod, "debugger").unwrap().env[0].name, "Y");
        assert!(find_container(&pod, "missing").is_none());
    }
}
