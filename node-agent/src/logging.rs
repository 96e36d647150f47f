//! Log output: `tracing` events as text lines on stderr, and one-line error messages.

use std::error::Error;
use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Directives added to every filter: rustify, vaultrs and kube_client log each failed HTTP call
/// as an error, kube_runtime's watcher each failed watch as a warning with the raw status, and
/// rustls_platform_verifier each failed certificate check. The Vault and Kubernetes backends
/// and the pod watch already report all of these in their own words, naming the path, Secret or
/// node.
const QUIET_DEPENDENCIES: [&str; 5] = [
    "rustify=off",
    "vaultrs=off",
    "kube_client=off",
    "kube_runtime::watcher=off",
    "rustls_platform_verifier=off",
];

/// Log levels a filter directive may name, from most to least verbose.
pub const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Parses a log filter: a level, or comma-separated `target=level` directives.
///
/// `EnvFilter` reads a bare word that is not a level, such as `warning`, as a target name and so
/// silences every other target. Such a word is rejected here, with the valid levels in the error.
pub fn parse_filter(text: &str) -> Result<EnvFilter, String> {
    for directive in text.split(',').map(str::trim) {
        let is_bare_word = !directive.is_empty() && !directive.contains(['=', '[', ':']);
        if is_bare_word && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "`{directive}` is not a log level; use one of {}, or off, or directives \
                 `target=level` separated by commas such as \"info,envproxy_agent=debug\"",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::builder().parse(text).map_err(|err| {
        format!(
            "{err}; use one of {}, or off, or directives `target=level` separated by commas \
             such as \"info,envproxy_agent=debug\"",
            LEVELS.join(", ")
        )
    })
}

/// Installs the global subscriber. `RUST_LOG`, when set and valid, replaces `default_filter`.
///
/// Fails when a subscriber is already installed.
pub fn init(default_filter: &str) -> Result<(), tracing_subscriber::util::TryInitError> {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.is_empty());
    let filter = match from_env.map(|value| parse_filter(&value)) {
        Some(Ok(filter)) => filter,
        Some(Err(err)) => {
            eprintln!("ignoring invalid RUST_LOG ({err}); using log level {default_filter:?}");
            quiet_filter(default_filter)
        }
        None => quiet_filter(default_filter),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .try_init()
}

/// Returns the filter of `level` with the [`QUIET_DEPENDENCIES`] directives added.
fn quiet_filter(level: &str) -> EnvFilter {
    QUIET_DEPENDENCIES
        .iter()
        .filter_map(|directive| directive.parse().ok())
        .fold(EnvFilter::new(level), EnvFilter::add_directive)
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
        // A message often quotes its cause and then adds advice, so a cause already quoted
        // anywhere in the line is not repeated.
        if !line.contains(&text) {
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
    fn filter_accepts_levels_and_directives() {
        for text in [
            "trace",
            "debug",
            "info",
            "warn",
            "error",
            "off",
            "WARN",
            "info,envproxy_agent=debug",
            "envproxy_agent::vault=trace",
            "warn,[request]=debug",
        ] {
            assert!(parse_filter(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn filter_rejects_unknown_level() {
        for (text, word) in [
            ("warning", "warning"),
            ("info,verbose", "verbose"),
            ("Information", "Information"),
        ] {
            let message = parse_filter(text).unwrap_err();
            assert!(
                message.contains(&format!("`{word}` is not a log level")),
                "{message}"
            );
            assert!(
                message.contains("trace, debug, info, warn, error"),
                "{message}"
            );
        }
    }

    #[test]
    fn filter_rejects_invalid_directive() {
        let message = parse_filter("info,[").unwrap_err();
        assert!(
            message.contains("trace, debug, info, warn, error"),
            "{message}"
        );
        assert!(message.contains("target=level"), "{message}");
    }

    /// Runs `emit` under a subscriber with `filter` and returns what it logged.
    fn logged_with(filter: EnvFilter, emit: impl FnOnce()) -> String {
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = std::sync::Arc::clone(&output);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || WriteTo(std::sync::Arc::clone(&writer)))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = output.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct WriteTo(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for WriteTo {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn quiet_filter_drops_client_errors() {
        let logged = logged_with(quiet_filter("info"), || {
            tracing::error!(target: "kube_client::client::builder", "failed with error client");
            tracing::error!(target: "vaultrs::api", "vaultrs failure");
            tracing::warn!(target: "kube_runtime::watcher", "watch list error with 403: Api(..)");
            tracing::warn!(target: "envproxy_agent::kube_secrets", "agent warning");
        });
        assert!(!logged.contains("failed with error client"), "{logged}");
        assert!(!logged.contains("vaultrs failure"), "{logged}");
        assert!(!logged.contains("watch list error"), "{logged}");
        assert!(logged.contains("agent warning"), "{logged}");
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

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on {address}: {source}; choose a free port")]
    struct QuotedWithAdvice {
        address: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn error_chain_skips_cause_quoted_before_advice() {
        let error = QuotedWithAdvice {
            address: "127.0.0.1:9090",
            source: std::io::Error::from_raw_os_error(98),
        };
        let line = error_chain(&error);
        assert_eq!(line.matches("os error 98").count(), 1, "{line}");
        assert!(line.ends_with("; choose a free port"), "{line}");
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
