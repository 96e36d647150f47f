//! `envproxy-agent`: the EnvProxy agent, in local mode or in node mode.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use envproxy_agent::vault::VaultEnvironment;
use envproxy_agent::webhook::{Webhook, WebhookSettings};
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
///
/// `envproxy-agent webhook` runs the admission webhook that injects opted-in pods instead.
#[derive(Debug, Parser)]
#[command(
    name = "envproxy-agent",
    version,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
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

#[derive(Debug, Subcommand)]
enum Command {
    Webhook(WebhookArgs),
}

/// Serve the Kubernetes admission webhook that injects EnvProxy into opted-in pods.
///
/// It serves AdmissionReview v1 requests over HTTPS and mounts the agent socket, the library
/// and a projected service account token into the pods' selected containers.
#[derive(Debug, clap::Args)]
struct WebhookArgs {
    /// TOML config file: [webhook], and the shared [agent] socket and [node] token_path,
    /// token_audience and vault_addr_allowlist.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// HTTPS listen address, replacing `[webhook] listen`. [default: 0.0.0.0:8443]
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain, replacing `[webhook] tls_cert`; reloaded when it changes.
    /// [default: /etc/envproxy/webhook/tls.crt]
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key, replacing `[webhook] tls_key`; reloaded when it changes.
    /// [default: /etc/envproxy/webhook/tls.key]
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let result = match args.command.take() {
        Some(Command::Webhook(webhook_args)) => run_webhook(webhook_args),
        None => run(args),
    };
    match result {
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
        let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let mut user1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
        let mut user2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
        let agent = Agent::bind(config).await?;
        let reloader = agent.config_reloader();
        agent
            .serve(async move {
                loop {
                    tokio::select! {
                        _ = terminate.recv() => {
                            tracing::info!("received SIGTERM; shutting down");
                            return;
                        }
                        _ = interrupt.recv() => {
                            tracing::info!("received SIGINT; shutting down");
                            return;
                        }
                        _ = hangup.recv() => {
                            tracing::info!("received SIGHUP; reloading the config file");
                            reloader.request();
                        }
                        _ = user1.recv() => ignore_signal("SIGUSR1"),
                        _ = user2.recv() => ignore_signal("SIGUSR2"),
                    }
                }
            })
            .await;
        Ok(())
    })
}

/// Logs a signal that the agent catches only so that it does not end the agent.
fn ignore_signal(name: &str) {
    tracing::info!(
        signal = name,
        "received {name}; ignored (SIGHUP reloads the config file, SIGTERM and SIGINT stop \
         the agent)"
    );
}

fn run_webhook(args: WebhookArgs) -> anyhow::Result<()> {
    let mut settings = match &args.config {
        Some(path) => WebhookSettings::load(path)?,
        None => WebhookSettings::default(),
    };
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if let Some(cert) = &args.tls_cert {
        settings.tls_cert = std::path::absolute(cert).context("invalid --tls-cert path")?;
    }
    if let Some(key) = &args.tls_key {
        settings.tls_key = std::path::absolute(key).context("invalid --tls-key path")?;
    }

    logging::init(&settings.log_level).context("cannot set up logging")?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let webhook = Webhook::bind(settings).await?;
        webhook
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
