//! The mutation of one pod: volumes, mounts and environment variables for the selected
//! containers, computed on the pod's JSON so fields this build does not know are kept.
//!
//! Every addition is made only where it is missing. A second admission of a mutated pod
//! therefore returns an empty patch. When another webhook added a container in between (under
//! `reinvocationPolicy: IfNeeded`), only that container gets what it lacks.

use std::collections::BTreeMap;
use std::path::Path;

use envproxy_proto::reference::has_known_scheme;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Map, Value};

use super::settings::WebhookSettings;
use crate::node::annotations::{
    self, is_opted_in, AnnotationError, ContainerSelection, PodSettings,
};

/// Volume of the agent socket's directory, a hostPath.
pub const SOCKET_VOLUME: &str = "envproxy-socket";
/// Volume of the library and hooks directory, a hostPath.
pub const LIBRARY_VOLUME: &str = "envproxy-lib";
/// Volume of the projected service account token.
pub const TOKEN_VOLUME: &str = "envproxy-token";

/// The three lists of containers in a pod spec, in the order they are mutated.
const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// The kind of admission request being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A pod being created: volumes, mounts, env and the marker annotation.
    Create,
    /// An update of the `ephemeralcontainers` subresource, as `kubectl debug` sends. Only
    /// ephemeral containers may change then, so they get mounts of the volumes the pod already
    /// has, and env.
    EphemeralContainers,
}

/// The webhook's decision for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit the pod with `patch` applied (empty when nothing changes).
    Allow {
        patch: json_patch::Patch,
        warnings: Vec<String>,
    },
    /// Reject the pod with a message for the client that created it.
    Deny(String),
}

impl Decision {
    fn allow_unchanged(warnings: Vec<String>) -> Decision {
        Decision::Allow {
            patch: json_patch::Patch::default(),
            warnings,
        }
    }
}

/// Decides what to do with `pod` (its JSON, as in the AdmissionReview) and computes the patch.
pub fn mutate_pod(pod: &Value, admission: Admission, settings: &WebhookSettings) -> Decision {
    let typed: Pod = match serde_json::from_value(pod.clone()) {
        Ok(typed) => typed,
        Err(err) => return Decision::Deny(format!("the pod object cannot be read: {err}")),
    };
    let pod_settings = match read_settings(&typed, settings) {
        Ok(Some(pod_settings)) => pod_settings,
        Ok(None) => return Decision::allow_unchanged(Vec::new()),
        Err(errors) => return Decision::Deny(annotation_errors_message(&errors)),
    };
    let annotations = typed.metadata.annotations.clone().unwrap_or_default();
    let mut warnings = unknown_annotation_warnings(&annotations);

    let mut mutated = pod.clone();
    let injection = Injection::new(settings, &pod_settings, &annotations);
    let result = match admission {
        Admission::Create => {
            warnings.extend(selection_warnings(pod, &pod_settings.containers));
            warnings.extend(reference_warnings(pod, &pod_settings.containers));
            inject_on_create(&mut mutated, &injection)
        }
        Admission::EphemeralContainers => inject_ephemeral(&mut mutated, &injection),
    };
    match result {
        Ok(more_warnings) => warnings.extend(more_warnings),
        Err(message) => return Decision::Deny(message),
    }
    Decision::Allow {
        patch: json_patch::diff(pod, &mutated),
        warnings,
    }
}

/// Returns the pod's settings when it opted in, `None` when it did not, or every invalid
/// annotation.
fn read_settings(
    pod: &Pod,
    settings: &WebhookSettings,
) -> Result<Option<PodSettings>, Vec<AnnotationError>> {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref());
    let checked = PodSettings::from_annotations_checking_all(
        annotations,
        service_account,
        &settings.vault_addr_allowlist,
    );
    match (is_opted_in(pod), checked) {
        (Ok(false), _) => Ok(None),
        (Ok(true), Ok(pod_settings)) => Ok(Some(pod_settings)),
        (Ok(true), Err(errors)) => Err(errors),
        (Err(inject_error), Ok(_)) => Err(vec![inject_error]),
        (Err(inject_error), Err(mut errors)) => {
            errors.insert(0, inject_error);
            Err(errors)
        }
    }
}

/// Returns the rejection message for invalid annotations, naming each one.
pub fn annotation_errors_message(errors: &[AnnotationError]) -> String {
    let details: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let count = match errors.len() {
        1 => "an invalid EnvProxy annotation".to_string(),
        n => format!("{n} invalid EnvProxy annotations"),
    };
    format!(
        "the pod has {count}; fix or remove each: {}",
        details.join("; ")
    )
}

fn unknown_annotation_warnings(annotations: &BTreeMap<String, String>) -> Vec<String> {
    annotations
        .keys()
        .filter(|key| key.starts_with(annotations::PREFIX))
        .filter(|key| !annotations::KNOWN.contains(&key.as_str()))
        .map(|key| format!("unknown annotation {key} is ignored by EnvProxy"))
        .collect()
}

/// Warns about names in `envproxy.dev/containers` that are no container of the pod.
fn selection_warnings(pod: &Value, selection: &ContainerSelection) -> Vec<String> {
    let ContainerSelection::Only(names) = selection else {
        return Vec::new();
    };
    let present: Vec<&str> = all_containers(pod)
        .filter_map(|container| container.get("name").and_then(Value::as_str))
        .collect();
    names
        .iter()
        .filter(|name| !present.contains(&name.as_str()))
        .map(|name| {
            format!(
                "{} names {name:?}, which is not a container of this pod",
                annotations::CONTAINERS
            )
        })
        .collect()
}

/// Warns when no selected container declares a `vault:` or `envproxy:` value, because the pod
/// then gains nothing from EnvProxy, or the references come from a ConfigMap or Secret.
fn reference_warnings(pod: &Value, selection: &ContainerSelection) -> Vec<String> {
    let has_reference = all_containers(pod)
        .filter(|container| is_selected(container, selection))
        .flat_map(|container| env_entries(container).iter())
        .filter_map(|entry| entry.get("value").and_then(Value::as_str))
        .any(|value| has_known_scheme(value.as_bytes()));
    if has_reference {
        return Vec::new();
    }
    vec![format!(
        "no selected container has an env value starting with vault: or envproxy:; the agent \
         serves references from valueFrom or envFrom only with {}: \"true\"",
        annotations::ALLOW_UNLISTED_REFS
    )]
}

/// Mounts and env that the webhook adds to each selected container.
struct Injection<'a> {
    settings: &'a WebhookSettings,
    selection: &'a ContainerSelection,
    mounts: [(&'static str, String); 3],
    env: Vec<(&'static str, String)>,
    library: String,
}

impl<'a> Injection<'a> {
    fn new(
        settings: &'a WebhookSettings,
        pod_settings: &'a PodSettings,
        annotations: &BTreeMap<String, String>,
    ) -> Self {
        let mounts = [
            (SOCKET_VOLUME, path_text(settings.socket_dir())),
            (LIBRARY_VOLUME, path_text(&settings.library_dir)),
            (TOKEN_VOLUME, path_text(settings.token_dir())),
        ];
        let mut env = vec![("ENVPROXY_SOCKET", path_text(&settings.socket))];
        // The library's own default equals the annotation's, so the variable is set only when
        // the annotation is.
        if annotations.contains_key(annotations::CACHE_TTL) {
            env.push((
                "ENVPROXY_CACHE_TTL",
                pod_settings.cache_ttl.as_secs().to_string(),
            ));
        }
        if pod_settings.no_python {
            env.push(("ENVPROXY_NO_PYTHON", "1".to_string()));
        }
        if pod_settings.no_java {
            env.push(("ENVPROXY_NO_JAVA", "1".to_string()));
        }
        if pod_settings.no_perl {
            env.push(("ENVPROXY_NO_PERL", "1".to_string()));
        }
        Injection {
            settings,
            selection: &pod_settings.containers,
            mounts,
            env,
            library: path_text(&settings.library_path()),
        }
    }

    fn volumes(&self) -> [Value; 3] {
        [
            json!({
                "name": SOCKET_VOLUME,
                "hostPath": {"path": path_text(self.settings.socket_dir()), "type": "Directory"},
            }),
            json!({
                "name": LIBRARY_VOLUME,
                "hostPath": {"path": path_text(&self.settings.library_dir), "type": "Directory"},
            }),
            json!({
                "name": TOKEN_VOLUME,
                "projected": {"sources": [{"serviceAccountToken": {
                    "audience": self.settings.token_audience,
                    "expirationSeconds": self.settings.token_expiration.as_secs(),
                    "path": self.settings.token_file_name(),
                }}]},
            }),
        ]
    }

    /// Adds the mounts and env to one selected container. Returns warnings, or the rejection
    /// message when a mount cannot be added.
    fn inject_container(&self, container: &mut Value) -> Result<Vec<String>, String> {
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut warnings = Vec::new();
        for (volume, mount_path) in &self.mounts {
            add_mount(container, &name, volume, mount_path)?;
        }
        let library_dir = path_text(&self.settings.library_dir);
        if let Some(warning) = merge_ld_preload(container, &name, &self.library, &library_dir) {
            warnings.push(warning);
        }
        for (variable, value) in &self.env {
            add_env(container, variable, value);
        }
        Ok(warnings)
    }
}

fn inject_on_create(pod: &mut Value, injection: &Injection) -> Result<Vec<String>, String> {
    let spec = object_field(object(pod), "spec");
    let volumes = array_field(spec, "volumes");
    for volume in injection.volumes() {
        let existing = volumes
            .iter()
            .find(|existing| existing.get("name") == volume.get("name"));
        match existing {
            Some(existing) => check_own_volume(existing, &volume)?,
            None => volumes.push(volume),
        }
    }

    let mut warnings = Vec::new();
    for list in CONTAINER_LISTS {
        warnings.extend(inject_list(spec, list, injection)?);
    }

    let metadata = object_field(object(pod), "metadata");
    let annotations = object_field(metadata, "annotations");
    if !annotations.contains_key(annotations::INJECTED) {
        annotations.insert(annotations::INJECTED.to_string(), json!("true"));
    }
    Ok(warnings)
}

fn inject_ephemeral(pod: &mut Value, injection: &Injection) -> Result<Vec<String>, String> {
    let spec = object_field(object(pod), "spec");
    let volumes = spec.get("volumes").and_then(Value::as_array);
    let missing: Vec<&str> = [SOCKET_VOLUME, LIBRARY_VOLUME, TOKEN_VOLUME]
        .into_iter()
        .filter(|name| {
            !volumes.is_some_and(|volumes| {
                volumes
                    .iter()
                    .any(|volume| volume.get("name").and_then(Value::as_str) == Some(*name))
            })
        })
        .collect();
    for volume in injection.volumes() {
        let existing = volumes
            .into_iter()
            .flatten()
            .find(|existing| existing.get("name") == volume.get("name"));
        if let Some(existing) = existing {
            check_own_volume(existing, &volume)?;
        }
    }
    if !missing.is_empty() {
        // The volumes of a running pod cannot change, so the ephemeral container runs without
        // EnvProxy.
        return Ok(vec![format!(
            "the pod was not injected when it was created (it lacks the volumes {}), so \
             EnvProxy cannot serve its ephemeral containers; recreate the pod to inject it",
            missing.join(", ")
        )]);
    }
    inject_list(spec, "ephemeralContainers", injection)
}

fn inject_list(
    spec: &mut Map<String, Value>,
    list: &str,
    injection: &Injection,
) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let Some(Value::Array(containers)) = spec.get_mut(list) else {
        return Ok(warnings);
    };
    for container in containers {
        if is_selected(container, injection.selection) {
            warnings.extend(injection.inject_container(container)?);
        }
    }
    Ok(warnings)
}

/// Checks that the pod's volume `existing`, named like one of EnvProxy's, is the one EnvProxy
/// adds (from an earlier admission): the same hostPath, or a projected token with the same
/// audience and path. Any other volume of that name would be mounted in EnvProxy's place.
fn check_own_volume(existing: &Value, ours: &Value) -> Result<(), String> {
    let name = ours.get("name").and_then(Value::as_str).unwrap_or_default();
    let same = if ours.get("hostPath").is_some() {
        host_path_of(existing).is_some() && host_path_of(existing) == host_path_of(ours)
    } else {
        token_source_of(existing).is_some() && token_source_of(existing) == token_source_of(ours)
    };
    if same {
        return Ok(());
    }
    Err(format!(
        "the pod already has a volume named {name:?} that differs from the one EnvProxy adds \
         under that name, so the containers would mount it in EnvProxy's place; rename that \
         volume"
    ))
}

/// Returns the components of a hostPath volume's path.
fn host_path_of(volume: &Value) -> Option<Vec<&str>> {
    volume
        .pointer("/hostPath/path")
        .and_then(Value::as_str)
        .map(path_components)
}

/// Returns the audience and path of a projected volume's first service account token source.
fn token_source_of(volume: &Value) -> Option<(Option<&Value>, Option<&Value>)> {
    volume
        .pointer("/projected/sources/0/serviceAccountToken")
        .map(|token| (token.get("audience"), token.get("path")))
}

/// Returns the components of a mount path, without empty and `.` components, so that
/// `/run/envproxy/`, `/run//envproxy` and `/run/envproxy` compare equal.
fn path_components(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|component| !component.is_empty() && *component != ".")
        .collect()
}

/// Adds a read-only mount of `volume` at `mount_path` unless the container has it. Another
/// volume at the same path is an error, because the API server rejects duplicate mount paths,
/// and so is one inside or around it, which would hide EnvProxy's files or be hidden by them.
fn add_mount(
    container: &mut Value,
    container_name: &str,
    volume: &str,
    mount_path: &str,
) -> Result<(), String> {
    let mounts = array_field(object(container), "volumeMounts");
    if mounts
        .iter()
        .any(|mount| mount.get("name").and_then(Value::as_str) == Some(volume))
    {
        return Ok(());
    }
    let ours = path_components(mount_path);
    for mount in mounts.iter() {
        let other = mount.get("name").and_then(Value::as_str).unwrap_or("");
        if [SOCKET_VOLUME, LIBRARY_VOLUME, TOKEN_VOLUME].contains(&other) {
            continue;
        }
        let other_path = mount.get("mountPath").and_then(Value::as_str).unwrap_or("");
        let theirs = path_components(other_path);
        let relation = if theirs == ours {
            "at"
        } else if theirs.starts_with(&ours) {
            "inside"
        } else if ours.starts_with(&theirs) {
            "around"
        } else {
            continue;
        };
        let place = if relation == "at" {
            format!("at {other_path}, where")
        } else {
            format!("at {other_path}, {relation} {mount_path}, where")
        };
        return Err(format!(
            "container {container_name:?} already mounts volume {other:?} {place} EnvProxy \
             mounts {volume}; move that mount or leave the container out of {}",
            annotations::CONTAINERS
        ));
    }
    mounts.push(json!({"name": volume, "mountPath": mount_path, "readOnly": true}));
    Ok(())
}

/// Appends the library to the container's `LD_PRELOAD`, or sets it. A value that already names
/// a build of the library in `library_dir`, such as the musl build, is kept unchanged. Returns a
/// warning when the variable comes from `valueFrom`, whose value the webhook cannot see.
fn merge_ld_preload(
    container: &mut Value,
    container_name: &str,
    library: &str,
    library_dir: &str,
) -> Option<String> {
    let env = array_field(object(container), "env");
    let Some(entry) = env
        .iter_mut()
        .find(|entry| entry.get("name").and_then(Value::as_str) == Some("LD_PRELOAD"))
    else {
        env.push(json!({"name": "LD_PRELOAD", "value": library}));
        return None;
    };
    let current = match entry.get("value") {
        Some(Value::String(current)) => current.clone(),
        None if entry.get("valueFrom").is_some() => {
            return Some(format!(
                "container {container_name:?} sets LD_PRELOAD with valueFrom, which EnvProxy \
                 cannot extend; it reads references unresolved unless that value names {library}"
            ));
        }
        _ => String::new(),
    };
    // glibc and musl split LD_PRELOAD at colons and spaces.
    let names_library = |item: &str| {
        item == library
            || (item.starts_with(library_dir)
                && item[library_dir.len()..].starts_with('/')
                && item.ends_with("/libenvproxy.so"))
    };
    if current.split([':', ' ']).any(names_library) {
        return None;
    }
    let merged = if current.trim().is_empty() {
        library.to_string()
    } else {
        format!("{current}:{library}")
    };
    object(entry).insert("value".to_string(), json!(merged));
    None
}

/// Adds `name=value` to the container's env unless the container sets `name` itself.
fn add_env(container: &mut Value, name: &str, value: &str) {
    let env = array_field(object(container), "env");
    let present = env
        .iter()
        .any(|entry| entry.get("name").and_then(Value::as_str) == Some(name));
    if !present {
        env.push(json!({"name": name, "value": value}));
    }
}

fn is_selected(container: &Value, selection: &ContainerSelection) -> bool {
    let name = container.get("name").and_then(Value::as_str).unwrap_or("");
    selection.selects(name)
}

fn all_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    CONTAINER_LISTS.into_iter().flat_map(move |list| {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .map(|containers| containers.as_slice())
            .unwrap_or_default()
    })
}

fn env_entries(container: &Value) -> &[Value] {
    container
        .get("env")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Returns `value` as an object, replacing anything else (such as `null`) by an empty object.
fn object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("the value was just made an object"),
    }
}

fn object_field<'m>(map: &'m mut Map<String, Value>, field: &str) -> &'m mut Map<String, Value> {
    object(map.entry(field).or_insert(Value::Null))
}

fn array_field<'m>(map: &'m mut Map<String, Value>, field: &str) -> &'m mut Vec<Value> {
    let value = map.entry(field).or_insert(Value::Null);
    if !value.is_array() {
        *value = Value::Array(Vec::new());
    }
    match value {
        Value::Array(items) => items,
        _ => unreachable!("the value was just made an array"),
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
