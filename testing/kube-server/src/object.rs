//! The kinds of object the server stores, so that history, watches and selectors handle pods
//! and Secrets alike.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// A kind of stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Pod,
    Secret,
}

impl Kind {
    /// Returns the `kind` field of one object.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
        }
    }

    /// Returns the resource name in paths and RBAC rules.
    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
        }
    }
}

/// One stored object of any kind.
#[derive(Clone, Debug)]
pub(crate) enum Object {
    Pod(Arc<Pod>),
    Secret(Arc<Secret>),
}

impl Object {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Secret(_) => Kind::Secret,
        }
    }

    pub(crate) fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Pod(pod) => &pod.metadata,
            Object::Secret(secret) => &secret.metadata,
        }
    }

    /// Returns the object as the API server serializes it, with `kind` and `apiVersion`.
    pub(crate) fn to_value(&self) -> Value {
        let value = match self {
            Object::Pod(pod) => serde_json::to_value(pod.as_ref()),
            Object::Secret(secret) => serde_json::to_value(secret.as_ref()),
        };
        value.expect("a Pod or Secret always serializes to JSON")
    }
}
