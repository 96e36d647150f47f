//! An in-process HTTP secrets API for testing EnvProxy's HTTP backend (`[backend] type =
//! "http"`) without a real secrets service.
//!
//! [`HttpSecretsServer::start`] listens on `127.0.0.1` (plain HTTP, or HTTPS with a CA generated
//! at start) and serves one route:
//!
//! | request | response |
//! | --- | --- |
//! | `GET /v1/env/<key>` with `Authorization: Bearer <token>` | `200 {"key": ..., "value": ..., "ttl": <seconds>}` (`ttl` only when the secret has one) |
//! | the same without a token, or with an unknown one | `401` with `WWW-Authenticate: Bearer` |
//! | a known token that may not read the key | `403` |
//! | a key that is not set | `404` |
//! | any other method on that route | `405` with `Allow: GET` |
//! | any other path | `404` |
//!
//! The key is the percent-decoded last path segment, so `a%2Fb` names the key `a/b`. Error
//! bodies are `{"error": "<message>"}`.
//!
//! The control methods on [`HttpSecretsServer`] set secrets (with an optional TTL, or a JSON
//! value of another type) and register tokens with the keys they may read. They also add
//! latency, inject faults ([`Fault`]: an error status, a delay, or a malformed body) and report
//! the requests received.
//!
//! Module layout: `server` (listener, routing and control API), `state` (secrets, tokens,
//! faults and the request log), `tls` (certificates generated at start).

#![forbid(unsafe_code)]

mod server;
mod state;
mod tls;

pub use server::{HttpSecretsServer, ServerOptions, StartError};
pub use state::{Fault, RecordedRequest, TokenAccess};
pub use tls::{unrelated_ca_pem, TlsError};
