//! The EnvProxy agent: serves secret lookups for processes of one user over a Unix socket.
//!
//! # Layout
//!
//! - [`config`]: the TOML config file.
//! - [`secrets`]: secrets files in JSON, `.env` and TOML.
//! - [`backend`]: the secrets file in memory, reloaded when it changes.
//! - [`http_backend`]: an HTTP secrets API as the default backend, through a cache.
//! - [`kube_secrets`]: Kubernetes Secrets for `k8s:` references and as the default backend.
//! - `value_cache`: the cache that the HTTP and Kubernetes Secret backends share.
//! - [`listener`]: the socket, its private directory and stale socket files.
//! - [`peer`]: caller identity from `SO_PEERCRED`.
//! - [`install`]: installation of the library and hooks into the node's hostPath directory.
//! - [`node`]: node mode, which serves the pods of one Kubernetes node.
//! - [`admin`]: the gRPC admin API on its own socket, health, and audit events.
//! - [`metrics`]: Prometheus metrics and the HTTP listener of `[metrics] listen`.
//! - [`webhook`]: the admission webhook that injects pods, served by `envproxy-agent webhook`.
//! - `server` and `connection`: the accept loop and one task per connection.
//! - `handler`: the answer to each request.
//! - [`status`]: the JSON returned for a status request.
//! - [`limits`] and [`logging`]: process set-up shared by the agent binary and the `envproxy` CLI.
//!
//! # Socket
//!
//! The agent listens on one Unix socket, by default `$XDG_RUNTIME_DIR/envproxy/agent.sock` (or
//! `/tmp/envproxy-<uid>/agent.sock`). Only processes whose uid equals the agent's effective uid
//! may ask; any other caller gets one permission-denied error and the connection is closed. The
//! accept loop runs on the Tokio runtime that calls [`BoundAgent::serve`], with one task per
//! connection and one task that polls the secrets file.
//!
//! ```no_run
//! # async fn run() -> Result<(), envproxy_agent::AgentError> {
//! use envproxy_agent::{Agent, Config};
//! let config = Config {
//!     secrets_file: Some("secrets.json".into()),
//!     ..Config::default()
//! };
//! let agent = Agent::bind(config).await?;
//! agent.serve(async { tokio::signal::ctrl_c().await.ok(); }).await;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

pub mod admin;
mod agent;
pub mod backend;
pub mod config;
mod connection;
mod expiry;
mod handler;
pub mod http_backend;
pub mod install;
pub mod kube_secrets;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod peer;
mod refusals;
pub mod secrets;
mod server;
pub mod status;
mod value_cache;
pub mod vault;
pub mod webhook;

pub use agent::{
    admin_socket_path, agent_socket_path, default_socket_path, Agent, AgentError, BoundAgent,
    ConfigReloader, DEFAULT_NODE_SOCKET,
};
pub use config::{Config, ConfigError};
pub use status::AgentStatus;
