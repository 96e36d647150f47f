//! Log output: `tracing` events as text lines on stderr.

use std::io::IsTerminal;

use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Directives added to every filter: rustify, under vaultrs, logs each failed HTTP call as an
/// error, which the Vault backend already reports in its own words.
const QUIET_DEPENDENCIES: &str = "rustify=off";

/// Installs the global subscriber. `RUST_LOG`, when set and valid, replaces `default_filter`.
///
/// Fails when a subscriber is already installed.
pub fn init(default_filter: &str) -> Result<(), tracing_subscriber::util::TryInitError> {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.is_empty());
    let quiet = |filter: EnvFilter| match QUIET_DEPENDENCIES.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let filter = match from_env.map(|value| EnvFilter::builder().parse(value)) {
        Some(Ok(filter)) => filter,
        Some(Err(err)) => {
            eprintln!("ignoring invalid RUST_LOG ({err}); using log level {default_filter:?}");
            quiet(EnvFilter::new(default_filter))
        }
        None => quiet(EnvFilter::new(default_filter)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .try_init()
}
