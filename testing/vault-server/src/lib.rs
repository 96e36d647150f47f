//! An in-process stand-in for HashiCorp Vault that follows Vault's documented HTTP API, for
//! testing EnvProxy's Vault backend without a Vault server.
//!
//! [`VaultTestServer::start`] listens on `127.0.0.1` (plain HTTP, or HTTPS with a CA generated
//! at start) and serves under `/v1/`:
//!
//! | area | paths |
//! | --- | --- |
//! | KV v2 (default mount `secret`) | `data/`, `metadata/`, `delete/`, `undelete/`, `destroy/`, `config` |
//! | KV v1 (default mount `kv`) | `<mount>/<path>` read, write, delete, list |
//! | database (default mount `database`) | `creds/<role>` with leases, `roles/<role>` |
//! | leases | `sys/leases/renew`, `sys/leases/revoke`, `sys/leases/lookup` |
//! | token auth | `auth/token/lookup-self`, `renew-self`, `revoke-self`, `create` |
//! | Kubernetes auth (default mount `kubernetes`) | `auth/<mount>/login` |
//! | status | `sys/health`, `sys/seal-status` |
//!
//! Requests are checked as Vault checks them: the `X-Vault-Token` (or `Authorization: Bearer`)
//! must be live, its ACL policies must grant the operation, `X-Vault-Namespace` selects an
//! isolated namespace, and errors carry Vault's status codes and `{"errors": [...]}` bodies.
//! The control API on [`VaultTestServer`] and [`NamespaceHandle`] seeds data, issues tokens,
//! seals the server, moves its clock, injects latency and failures, stops and resumes
//! listening on the same port, and reports request counts and leases.
//!
//! Module layout: `api` (HTTP routing and handlers), `server` (listener and control API),
//! `state` with `namespace`, `kv`, `database`, `tokens`, `leases`, `policy`, `kubernetes`
//! (engine logic), `tls`, `clock`, `faults`, `seed` (JSON seed files for the binary).

#![forbid(unsafe_code)]

mod api;
mod clock;
mod control;
mod database;
mod duration;
mod faults;
mod ids;
mod kubernetes;
mod kv;
mod leases;
mod namespace;
mod options;
mod policy;
mod seed;
mod server;
mod state;
mod tls;
mod tokens;

pub use clock::ClockMode;
pub use control::{ControlError, NamespaceHandle};
pub use database::DatabaseRole;
pub use faults::RecordedRequest;
pub use kubernetes::{service_account_jwt, KubernetesRole};
pub use leases::{LeaseInfo, RevocationReason, RevokedLease};
pub use options::{NodeState, ServerOptions, KV1_DEFAULT_LEASE_SECONDS};
pub use policy::{Capability, Policy};
pub use seed::{NamespaceSeed, SeedFile};
pub use server::{StartError, VaultTestServer};
pub use state::UnknownNamespace;
pub use tls::{certificates_from_pem, unrelated_ca_pem, TlsError};
pub use tokens::{IssuedToken, TokenSpec, SYSTEM_MAX_TTL};
