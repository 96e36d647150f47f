//! Seed data for a server started from a JSON file (the binary's `--config`).
//!
//! ```json
//! {
//!   "options": { "tls": true },
//!   "namespaces": {
//!     "": {
//!       "kv2": { "secret": { "myapp/config": { "db_url": "postgres://..." } } },
//!       "kv1": { "kv": { "legacy": { "password": "...", "ttl": "1h" } } },
//!       "database_roles": { "database": { "readonly": { "default_ttl": 60, "max_ttl": 300 } } },
//!       "kubernetes_roles": {
//!         "kubernetes": { "app": { "bound_service_account_names": ["app"],
//!                                  "bound_service_account_namespaces": ["prod"],
//!                                  "token_policies": ["app"] } }
//!       },
//!       "policies": { "app": { "paths": { "secret/data/myapp/*": ["read"] } } }
//!     }
//!   },
//!   "tokens": [ { "policies": ["app"], "ttl": 3600 } ]
//! }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::control::ControlError;
use crate::database::DatabaseRole;
use crate::kubernetes::KubernetesRole;
use crate::options::ServerOptions;
use crate::policy::Policy;
use crate::server::VaultTestServer;
use crate::tokens::{IssuedToken, TokenSpec};

/// The whole seed file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedFile {
    pub options: ServerOptions,
    /// Keyed by namespace path; `""` is the root namespace. Others are created.
    pub namespaces: BTreeMap<String, NamespaceSeed>,
    /// Tokens to issue after the namespaces are seeded.
    pub tokens: Vec<TokenSpec>,
}

/// Contents of one namespace. Mount names that do not exist yet are mounted.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceSeed {
    /// Mount to path to secret data.
    pub kv2: BTreeMap<String, BTreeMap<String, Value>>,
    pub kv1: BTreeMap<String, BTreeMap<String, Value>>,
    /// Mount to role name to role.
    pub database_roles: BTreeMap<String, BTreeMap<String, DatabaseRole>>,
    pub kubernetes_roles: BTreeMap<String, BTreeMap<String, KubernetesRole>>,
    pub policies: BTreeMap<String, Policy>,
}

impl SeedFile {
    /// Applies the namespaces and tokens to a started server and returns the issued tokens.
    pub fn apply(&self, server: &VaultTestServer) -> Result<Vec<IssuedToken>, ControlError> {
        for (path, seed) in &self.namespaces {
            let namespace = server.create_namespace(path);
            for (mount, secrets) in &seed.kv2 {
                namespace.mount_kv2(mount);
                for (secret_path, data) in secrets {
                    namespace.kv2_put(mount, secret_path, data.clone())?;
                }
            }
            for (mount, secrets) in &seed.kv1 {
                namespace.mount_kv1(mount);
                for (secret_path, data) in secrets {
                    namespace.kv1_put(mount, secret_path, data.clone())?;
                }
            }
            for (mount, roles) in &seed.database_roles {
                namespace.mount_database(mount);
                for (name, role) in roles {
                    namespace.add_database_role(mount, name, role.clone())?;
                }
            }
            for (mount, roles) in &seed.kubernetes_roles {
                namespace.enable_kubernetes_auth(mount, None);
                for (name, role) in roles {
                    namespace.add_kubernetes_role(mount, name, role.clone())?;
                }
            }
            for (name, policy) in &seed.policies {
                namespace.set_policy(name, policy.clone());
            }
        }
        let mut issued = Vec::new();
        for spec in &self.tokens {
            issued.push(server.create_token(spec.clone())?);
        }
        Ok(issued)
    }
}
