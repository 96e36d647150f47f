//! The admission webhook (`envproxy-agent webhook`): mutates opted-in pods so their selected
//! containers load the library and reach the node's agent.
//!
//! - [`settings`]: the webhook's keys of the config file.
//! - [`mutate`]: the patch for one pod.
//! - [`review`]: AdmissionReview v1 requests and responses, and the Pod Security route.
//! - [`tls`]: the server certificate, reloaded when its files change.
//! - [`server`]: the HTTPS listener.
//! - [`connections`]: the table that keeps open connections under a limit.

mod connections;
pub mod mutate;
pub mod review;
pub mod server;
pub mod settings;
pub mod tls;

pub use server::{Webhook, WebhookError};
pub use settings::WebhookSettings;
