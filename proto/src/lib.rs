//! Wire protocol and reference syntax shared by every EnvProxy component.
//!
//! - [`frame`]: the length-prefixed request and response frames spoken on the agent socket.
//! - [`reference`]: the `vault:` and `envproxy:` reference syntax found in environment values.
//! - [`secret`]: the redacting wrapper that carries secret values.
//! - [`settings`]: the values that turn an `ENVPROXY_*` switch on.
//! - [`socket_path`]: where the local agent's socket lives by default.
//! - `codec` (feature `codec`): the frames as `tokio-util` codecs for async servers.
//! - [`client`]: a blocking request/response call over any `Read + Write` stream.
#![forbid(unsafe_code)]

pub mod client;
#[cfg(feature = "codec")]
pub mod codec;
pub mod frame;
pub mod reference;
pub mod secret;
pub mod settings;
pub mod socket_path;

pub use frame::{FrameError, Request, Response};
pub use reference::{has_known_scheme, Reference, ReferenceError};
pub use secret::SecretBytes;
pub use settings::{is_disabled, is_switch_on};
