//! `envproxy run`: start a command whose environment holds references that the preload library
//! resolves through an agent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;
use envproxy_agent::vault::VaultEnvironment;
use envproxy_agent::{default_socket_path, limits, secrets, AgentStatus, Config};

use crate::child::{self, ChildSpec};
use crate::client::{self, ClientError};
use crate::embedded::EmbeddedAgent;
use crate::environment::{self, SOCKET_VARIABLE};
use crate::library::{self, LIBRARY_VARIABLE};
use crate::run_startup::StartupWatcher;
use crate::values_in_environ::{self, OnUnresolved, ON_ERROR_VARIABLE};

/// Maximum wait for a running agent to respond before `run` gives up on it.
const AGENT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Exit status when `envproxy run` itself fails before the command starts, as `env(1)` uses.
pub const EXIT_RUN_FAILED: i32 = 125;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Secrets file (JSON, .env or TOML by name) served by an agent inside this process.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    secrets: Option<PathBuf>,
    /// Agent config file whose [backend] (and [vault]) name the backends; its [agent] socket
    /// is not used.
    ///
    /// Each key of the default backend (a secrets file or a Kubernetes Secret) that the
    /// environment does not set is passed as KEY=envproxy:KEY, as with --secrets. The HTTP API
    /// cannot list its keys, so the command gets ENVPROXY_LOOKUP_UNSET=1 instead (unless that
    /// variable is set): names absent from its environment are asked of the agent.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Agent socket. Without a file, the agent that listens there is used (default:
    /// $ENVPROXY_SOCKET, then the per-user socket). With a file, an agent that responds there is
    /// used, else the embedded agent listens there.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Resolve every reference before the command starts and pass the values in its
    /// environment, for programs the library cannot reach (static binaries, Go, setuid).
    ///
    /// The cost: the values sit in the command's /proc/PID/environ, readable by the same user
    /// and root, every process it starts inherits them, and they stay fixed until it is started
    /// again. libenvproxy.so is not preloaded. An unresolvable reference fails the start
    /// (status 125) unless ENVPROXY_ON_ERROR=reference keeps it or ENVPROXY_ON_ERROR=unset
    /// removes the variable.
    #[arg(long)]
    values_in_environ: bool,
    /// The command and its arguments, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

/// The agent that serves the command.
enum AgentChoice {
    /// An agent that is already running.
    Running {
        socket: PathBuf,
    },
    Embedded(EmbeddedAgent),
}

/// Runs the command and returns its exit code.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    // Caught before any temporary directory exists: a signal during a slow start then ends the
    // run through the normal path, which removes the directory.
    let signals = child::catch_signals().context("cannot install signal handlers")?;
    let startup_watcher =
        StartupWatcher::start().context("cannot install the start-up signal handlers")?;
    let executable = std::env::current_exe().context("cannot locate the envproxy executable")?;
    // With values in the environment the command needs no library, so a missing one is no error.
    let (library, on_unresolved) = if args.values_in_environ {
        let setting = std::env::var_os(ON_ERROR_VARIABLE);
        (None, Some(OnUnresolved::from_setting(setting.as_deref())?))
    } else {
        let library = library::find(std::env::var_os(LIBRARY_VARIABLE), &executable)?;
        library::check_preload_path(&library)?;
        (Some(library), None)
    };

    let vault_environment = VaultEnvironment::from_process();
    let config = load_file_config(&args, &vault_environment)?;
    let mut open_files_soft_limit = None;
    let (agent, keys) = match config {
        None => {
            let socket = socket_without_file(args.socket.as_deref())?;
            match keys_from_running_agent(&socket) {
                Ok(keys) => (AgentChoice::Running { socket }, keys),
                Err(err @ ClientError::ForeignAgent { .. }) => return Err(err.into()),
                // With VAULT_ADDR set, the developer's Vault token is enough to serve the
                // command's vault: references from an agent inside this process.
                Err(err) if err.is_socket_in_use() && args.socket.is_some() => {
                    return Err(socket_in_use_error(&err, &socket))
                }
                Err(err) => match vault_environment.settings() {
                    Some(vault) => {
                        tracing::debug!(%err, "no agent responds; serving Vault from VAULT_ADDR");
                        open_files_soft_limit = raise_open_files_limit();
                        let config = Config {
                            vault: Some(vault),
                            ..Config::default()
                        };
                        let agent = match &args.socket {
                            Some(socket) => {
                                EmbeddedAgent::start(config, &absolute(socket, "--socket")?)?
                            }
                            None => EmbeddedAgent::start_private(config)?,
                        };
                        (AgentChoice::Embedded(agent), Some(Vec::new()))
                    }
                    None => return Err(no_agent_error(&err, &socket)),
                },
            }
        }
        Some(config) => {
            let running = match &args.socket {
                Some(socket) => {
                    let socket = absolute(socket, "--socket")?;
                    match client::fetch_status(&socket, AGENT_PROBE_TIMEOUT) {
                        Ok(status) => Some((socket, status)),
                        Err(err @ ClientError::ForeignAgent { .. }) => return Err(err.into()),
                        Err(err) if err.is_socket_in_use() => {
                            return Err(socket_in_use_error(&err, &socket))
                        }
                        Err(err) => {
                            tracing::debug!(%err, "no agent responds; starting one on the socket");
                            None
                        }
                    }
                }
                None => None,
            };
            match running {
                Some((socket, status)) => {
                    // The HTTP API or a Kubernetes Secret, when configured, is the default
                    // backend rather than the secrets file.
                    let keys = match &config.secrets_file {
                        Some(path) if config.http.is_none() && config.kubernetes.is_none() => {
                            Some(secrets::load(path)?.into_keys().collect())
                        }
                        _ => listed_keys(status),
                    };
                    (AgentChoice::Running { socket }, keys)
                }
                None => {
                    open_files_soft_limit = raise_open_files_limit();
                    let agent = match &args.socket {
                        Some(socket) => {
                            EmbeddedAgent::start(config, &absolute(socket, "--socket")?)?
                        }
                        None => EmbeddedAgent::start_private(config)?,
                    };
                    let keys = agent.keys().map(<[String]>::to_vec);
                    (AgentChoice::Embedded(agent), keys)
                }
            }
        }
    };

    let socket = match &agent {
        AgentChoice::Running { socket } => socket.clone(),
        AgentChoice::Embedded(agent) => agent.socket().to_path_buf(),
    };
    let mut environment = environment::build(
        std::env::vars_os(),
        keys.as_deref().unwrap_or_default(),
        &socket,
        library.as_deref(),
    );
    // A default backend that cannot list its keys (the HTTP API) gets no `KEY=envproxy:KEY`
    // variables, so the library asks the agent for every name the environment lacks.
    if keys.is_none() && library.is_some() {
        environment.look_up_unset_names();
    }
    for (key, reason) in &environment.skipped {
        eprintln!("envproxy: not adding secret key {key:?} to the environment: {reason}");
    }
    if let Some(policy) = on_unresolved {
        // Values are fetched, and the warning about them printed, only for a command that
        // will start.
        if let Some(err) = child::check_command_exists(&args.command[0], &environment.variables) {
            if let AgentChoice::Embedded(agent) = agent {
                agent.stop();
            }
            eprintln!("envproxy: {err}");
            return Ok(err.exit_code);
        }
        let resolution = values_in_environ::resolve(&mut environment.variables, &socket, policy);
        let resolution = match resolution {
            Ok(resolution) => resolution,
            Err(err) => {
                if let AgentChoice::Embedded(agent) = agent {
                    agent.stop();
                }
                return Err(err);
            }
        };
        for warning in values_in_environ::unresolved_warnings(&resolution, policy) {
            eprintln!("{warning}");
        }
        if resolution.resolved > 0 {
            let program = &args.command[0];
            eprintln!(
                "{}",
                values_in_environ::exposure_warning(resolution.resolved, program)
            );
        }
    }

    startup_watcher.finish();
    let outcome = child::run(ChildSpec {
        command: args.command,
        environment: environment.variables,
        open_files_soft_limit,
        signals,
    });
    if let AgentChoice::Embedded(agent) = agent {
        agent.stop();
    }
    match outcome {
        Ok(code) => Ok(code),
        Err(err) => {
            eprintln!("envproxy: {err}");
            Ok(err.exit_code)
        }
    }
}

/// Loads the agent config that `--secrets` or `--config` describes, or `None` without either.
/// Without Vault settings in it, Vault is enabled when `VAULT_ADDR` is set.
fn load_file_config(
    args: &RunArgs,
    vault_environment: &VaultEnvironment,
) -> anyhow::Result<Option<Config>> {
    let mut config = if let Some(secrets) = &args.secrets {
        Config {
            secrets_file: Some(absolute(secrets, "--secrets")?),
            ..Config::default()
        }
    } else {
        let Some(path) = &args.config else {
            return Ok(None);
        };
        let config = Config::load(path)?;
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        config
    };
    config.enable_vault_from_environment(vault_environment);
    Ok(Some(config))
}

/// Returns the socket of the agent to use when no file is given: `--socket`, then
/// `$ENVPROXY_SOCKET`, then the per-user default.
fn socket_without_file(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(socket) = flag {
        return absolute(socket, "--socket");
    }
    match std::env::var_os(SOCKET_VARIABLE).filter(|value| !value.is_empty()) {
        Some(socket) => absolute(Path::new(&socket), SOCKET_VARIABLE),
        None => Ok(default_socket_path()),
    }
}

fn no_agent_error(err: &ClientError, socket: &Path) -> anyhow::Error {
    if err.is_socket_in_use() {
        return socket_in_use_error(err, socket);
    }
    anyhow!(
        "{err}; start an agent with `envproxy-agent --secrets FILE --socket {}`, pass \
         --secrets FILE to run one for this command, or set VAULT_ADDR to serve vault: \
         references",
        socket.display()
    )
}

/// Builds the error for a socket where a process accepts connections but sends no status
/// response as an agent would, so `run` can neither use it nor start an agent there.
fn socket_in_use_error(err: &ClientError, socket: &Path) -> anyhow::Error {
    anyhow!(
        "{err}, so envproxy run can neither use it nor start an agent on it; stop the process \
         that listens on {} (a hung agent or another program) or pass another --socket",
        socket.display()
    )
}

/// Returns the key names of a running agent's default backend, or `None` when it cannot list
/// them.
fn keys_from_running_agent(socket: &Path) -> Result<Option<Vec<String>>, ClientError> {
    let status = client::fetch_status(socket, AGENT_PROBE_TIMEOUT)?;
    Ok(listed_keys(status))
}

/// Returns the key names that `status` lists, or `None` when its default backend cannot list
/// them. Warns when the list was cut short to fit the response.
fn listed_keys(status: AgentStatus) -> Option<Vec<String>> {
    if status
        .backend
        .as_ref()
        .is_some_and(|backend| !backend.keys_listed)
    {
        return None;
    }
    if status.keys_truncated {
        eprintln!(
            "envproxy: the agent listed only {} of its {} keys; set the others in the \
             environment as KEY=envproxy:KEY",
            status.keys.len(),
            status
                .backend
                .as_ref()
                .map_or(0, |backend| backend.keys_loaded)
        );
    }
    Some(status.keys)
}

/// Raises this process's open-files limit for the embedded agent and returns the previous soft
/// limit, which the command gets back.
fn raise_open_files_limit() -> Option<u64> {
    match limits::raise_open_files_limit() {
        Ok(limit) => Some(limit.previous_soft),
        Err(err) => {
            tracing::debug!(%err, "cannot raise the open files limit");
            None
        }
    }
}

fn absolute(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("invalid {what} path {}", path.display()))
}
