//! An in-process stand-in for the Kubernetes API server that follows its documented HTTP API
//! for what EnvProxy's agent uses, for tests without a cluster.
//!
//! [`KubeTestServer::start`] listens on `127.0.0.1` (plain HTTP) and serves:
//!
//! | path | verbs |
//! | --- | --- |
//! | `/api/v1/pods`, `/api/v1/namespaces/{ns}/pods` | list, watch (`watch=true`) |
//! | `/api/v1/namespaces/{ns}/pods/{name}` | get |
//! | `/api/v1/secrets`, `/api/v1/namespaces/{ns}/secrets` | list, watch (`watch=true`) |
//! | `/api/v1/namespaces/{ns}/secrets/{name}` | get |
//! | `/api/v1/namespaces/{ns}/serviceaccounts/{name}/token` | create (TokenRequest) |
//! | `/.well-known/openid-configuration`, `/openid/v1/jwks` | issuer discovery |
//! | `/version` | server version |
//!
//! Lists and watches take `fieldSelector` (fields the API server indexes, such as
//! `spec.nodeName` of pods or `metadata.name` of Secrets; others are a 400), `labelSelector`, `resourceVersion`,
//! `resourceVersionMatch`, `allowWatchBookmarks` and `timeoutSeconds`. Every change bumps one
//! global resource version. Watches replay the retained history after their resource version,
//! and a version older than the history (see [`KubeTestServer::compact`]) gets an `ERROR`
//! event with a 410 `Status`, so clients relist. A list or watch at a version newer than the
//! server's waits 3 s for it, then gets 504 "Too large resource version" with a
//! `ResourceVersionTooLarge` cause (a watch as an `ERROR` event). Failures carry `Status` bodies with the API
//! server's codes and reasons.
//!
//! Requests to the resource paths need a bearer token registered with
//! [`KubeTestServer::register_token`] and [`Rule`]s that allow the verb: an unknown token is
//! 401 and a known one without the permission is 403. Issued service account tokens are
//! RS256-signed JWTs with the claims of a projected token. They also authenticate, as their
//! service account, while they are unexpired, carry the server's audience (its issuer) and
//! name a pod that still exists; [`KubeTestServer::grant_service_account`] gives a service
//! account its rules. Secrets are stored as a create or update would store them: `stringData`
//! is merged into the base64 `data` and dropped.
//!
//! Module layout: `server` (listener and control API), `api` (routing, list and get),
//! `watch`, `token` (TokenRequest), `state` (objects and history), `object` (the stored
//! kinds), `selector`, `auth`, `jwt`, `status`.

#![forbid(unsafe_code)]

mod api;
mod auth;
mod ids;
mod jwt;
mod object;
mod selector;
mod server;
mod state;
mod status;
mod token;
mod watch;

pub use auth::Rule;
pub use jwt::DEFAULT_ISSUER;
pub use server::{KubeTestServer, ServerOptions, StartError};
pub use state::RecordedRequest;
pub use status::ApiError;
