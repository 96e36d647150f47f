//! `ReloadConfig`: reads the agent's config file again, applies the keys that can change while
//! the agent runs, and lists the keys whose new values take effect only after a restart.

use std::path::PathBuf;

use envproxy_admin_proto::v1 as pb;
use tonic::Status;

use super::AdminState;
use crate::config::Config;
use crate::vault::VaultEnvironment;

/// The settings the agent runs with, which each reload compares the config file with.
#[derive(Debug)]
pub(crate) struct RunningConfig {
    config: Config,
    /// `--socket` when it replaced the file's `[agent] socket`.
    socket_override: Option<Option<PathBuf>>,
    /// `--secrets` when it replaced the file's `[backend] path`.
    secrets_override: Option<Option<PathBuf>>,
}

impl RunningConfig {
    /// Records `running`, the settings the agent started with. The command-line options that
    /// replaced file values are found by comparing `running` with its config file as read now.
    ///
    /// NOTE: an option that sets the same value as the file is not detected as an override. A
    /// later change of that key in the file is then reported as needing a restart, though the
    /// option would still win after one.
    pub(crate) fn new(running: &Config) -> RunningConfig {
        let file = running.source.as_ref().and_then(|path| {
            let mut file = Config::load(path).ok()?;
            file.enable_vault_from_environment(&VaultEnvironment::from_process());
            Some(file)
        });
        let (socket_override, secrets_override) = match &file {
            Some(file) => (
                (file.socket != running.socket).then(|| running.socket.clone()),
                (file.secrets_file != running.secrets_file).then(|| running.secrets_file.clone()),
            ),
            None => (None, None),
        };
        RunningConfig {
            config: running.clone(),
            socket_override,
            secrets_override,
        }
    }

    /// Returns `file` with the command-line options that the agent was started with applied,
    /// as a restart with the same command line would see it.
    fn effective(&self, mut file: Config) -> Config {
        if let Some(socket) = &self.socket_override {
            file.socket = socket.clone();
        }
        if let Some(secrets) = &self.secrets_override {
            file.secrets_file = secrets.clone();
        }
        file
    }
}

/// Reads the config file again, applies `[audit] log` and returns what changed.
pub(crate) fn reload(state: &AdminState) -> Result<pb::ReloadConfigResponse, Status> {
    let Some(path) = state.config_source.clone() else {
        return Err(Status::failed_precondition(
            "the agent was started without a config file (--config), so there is none to read \
             again",
        ));
    };
    let mut running = state
        .running_config
        .lock()
        .unwrap_or_else(|err| err.into_inner());
    let loaded = Config::load(&path);
    *state
        .config_reload_error
        .lock()
        .unwrap_or_else(|err| err.into_inner()) =
        loaded.as_ref().err().map(|err| one_line(&err.to_string()));
    let mut file = loaded.map_err(|err| {
        let error = one_line(&err.to_string());
        tracing::warn!(config = %path.display(), %error, "config reload failed; the running settings stay");
        Status::invalid_argument(format!("{err}; the running settings stay"))
    })?;
    file.enable_vault_from_environment(&VaultEnvironment::from_process());
    let warnings = std::mem::take(&mut file.warnings);
    for warning in &warnings {
        tracing::warn!(config = %path.display(), "{warning}");
    }
    let new = running.effective(file);

    let mut applied = Vec::new();
    if new.audit.log != state.audit.log_enabled() {
        state.audit.set_log(new.audit.log);
        applied.push("[audit] log".to_string());
    }
    running.config.audit.log = new.audit.log;
    let restart_required = restart_keys(&running.config, &new);
    tracing::info!(
        config = %path.display(),
        ?applied,
        ?restart_required,
        "config reloaded"
    );
    Ok(pb::ReloadConfigResponse {
        applied,
        restart_required,
        warnings,
    })
}

/// Joins the lines of a multi-line message, such as a TOML parser error with its source
/// excerpt, with "; ", so that it fits one log line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Returns the keys whose values differ between `running` and `new` and that take effect only
/// after a restart.
fn restart_keys(running: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &str| {
        if changed {
            keys.push(key.to_string());
        }
    };
    check(running.socket != new.socket, "[agent] socket");
    check(running.log_level != new.log_level, "[agent] log_level");
    check(
        running.max_connections != new.max_connections,
        "[agent] max_connections",
    );
    check(
        running.idle_timeout != new.idle_timeout,
        "[agent] idle_timeout_secs",
    );
    check(running.node.is_some() != new.node.is_some(), "[agent] mode");
    check(running.secrets_file != new.secrets_file, "[backend] path");
    check(
        running.http != new.http || running.kubernetes != new.kubernetes,
        "[backend]",
    );
    check(running.vault != new.vault, "[vault]");
    check(
        running.node.is_some() && new.node.is_some() && running.node != new.node,
        "[node]",
    );
    check(running.admin != new.admin, "[admin]");
    check(running.metrics != new.metrics, "[metrics] listen");
    check(running.install != new.install, "[install]");
    check(running.audit.buffer != new.audit.buffer, "[audit] buffer");
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("/etc/envproxy/agent.toml")).unwrap()
    }

    #[test]
    fn one_line_joins_parser_lines() {
        let message = "TOML parse error at line 2, column 1\n  |\n2 | x\n  | ^\nexpected `=`\n";
        assert_eq!(
            one_line(message),
            "TOML parse error at line 2, column 1; |; 2 | x; | ^; expected `=`"
        );
    }

    #[test]
    fn restart_keys_compare_with_running() {
        let running = parse("[agent]\nmax_connections = 10\n");
        let same = parse("[agent]\nmax_connections = 10\n");
        assert!(restart_keys(&running, &same).is_empty());
        let changed = parse("[agent]\nmax_connections = 7\nsocket = \"/run/other.sock\"\n");
        assert_eq!(
            restart_keys(&running, &changed),
            ["[agent] socket", "[agent] max_connections"]
        );
    }

    #[test]
    fn overrides_apply_to_reloaded_file() {
        let running = RunningConfig {
            config: parse("[agent]\nsocket = \"/run/cli.sock\"\n"),
            socket_override: Some(Some(PathBuf::from("/run/cli.sock"))),
            secrets_override: None,
        };
        let file = parse("[agent]\nsocket = \"/run/file.sock\"\n");
        let effective = running.effective(file);
        assert_eq!(effective.socket, Some(PathBuf::from("/run/cli.sock")));
        assert!(restart_keys(&running.config, &effective).is_empty());
    }
}
