//! `envproxy-agent`: the EnvProxy agent, in local mode or in node mode.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use envproxy_agent::vault::VaultEnvironment;
use envproxy_agent::{limits, logging, Agent, Config};
use tokio::signal::unix::{signal, SignalKind};

/// Serve secrets from a local file and Vault over a Unix socket.
///
/// In local mode (the default) only processes of this user are served. In node mode
/// ([agent] mode = "node" in the config file) one agent serves every pod of a Kubernetes node,
/// each with its own Vault identity.
///
/// Without Vault settings in the config file, Vault is enabled when VAULT_ADDR is set: with the
/// token from VAULT_TOKEN or ~/.vault-token in local mode, with each pod's own login in node
/// mode.
#[derive(Debug, Parser)]
#[command(name = "envproxy-agent", version)]
struct Args {
    /// TOML config file with [agent], [backend], [vault] and, in node mode, [node] sections.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket path, replacing `[agent] socket` of the config file.
    /// [default: $XDG_RUNTIME_DIR/envproxy/agent.sock, or /tmp/envproxy-UID/agent.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Secrets file (JSON, .env or TOML by name), replacing `[backend] path` of the config file.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("envproxy-agent: {}", logging::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(socket) = &args.socket {
        config.socket = Some(std::path::absolute(socket).context("invalid --socket path")?);
    }
    if let Some(secrets) = &args.secrets {
        config.secrets_file = Some(std::path::absolute(secrets).context("invalid --secrets path")?);
    }
    config.enable_vault_from_environment(&VaultEnvironment::from_process());

    logging::init(&config.log_level).context("cannot set up logging")?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    match limits::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(soft = limit.soft, "raised the open files limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open files limit"),
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let agent = Agent::bind(config).await?;
        agent
            .serve(async move {
                tokio::select! {
                    _ = terminate.recv() => tracing::info!("received SIGTERM; shutting down"),
                    _ = interrupt.recv() => tracing::info!("received SIGINT; shutting down"),
                }
            })
            .await;
        Ok(())
    })
}
