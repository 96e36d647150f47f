//! Log output: `tracing` events as text lines on stderr, and one-line error messages.

use std::error::Error;
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

/// Formats `error` and its causes as one line, `error: cause: cause`.
///
/// Many errors already include their cause in their own message, and `anyhow`'s `{:#}` then
/// prints it twice. A cause whose text already ends the line is left out.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = current.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load {name}: {source}")]
    struct Repeating {
        name: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Outer {
        #[source]
        source: Repeating,
    }

    #[test]
    fn error_chain_repeats_no_cause() {
        let error = Repeating {
            name: "a.json",
            source: std::io::Error::other("broken pipe"),
        };
        assert_eq!(error_chain(&error), "cannot load a.json: broken pipe");
    }

    #[test]
    fn error_chain_adds_new_causes() {
        let error = Outer {
            source: Repeating {
                name: "a.json",
                source: std::io::Error::other("broken pipe"),
            },
        };
        assert_eq!(
            error_chain(&error),
            "cannot start: cannot load a.json: broken pipe"
        );
    }

    #[test]
    fn error_chain_through_anyhow_context() {
        let error = anyhow::Error::new(Repeating {
            name: "b.toml",
            source: std::io::Error::other("denied"),
        })
        .context("envproxy run");
        assert_eq!(
            error_chain(error.as_ref()),
            "envproxy run: cannot load b.toml: denied"
        );
    }
}
