//! Runs the Vault test server as its own process.
//!
//! Prints one JSON line on stdout once listening: `addr`, `url`, `root_token`,
//! `ca_cert_pem` (with `--tls`) and the `tokens` issued from the seed file; then serves
//! until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use envproxy_vault_test_server::{SeedFile, VaultTestServer};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(about = "A Vault stand-in that follows Vault's HTTP API, for tests")]
struct Args {
    /// JSON seed file: server options, secrets, roles, policies and tokens.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve HTTPS with a freshly generated CA (overrides the seed file).
    #[arg(long)]
    tls: bool,
    /// Port on 127.0.0.1; 0 picks a free one (overrides the seed file).
    #[arg(long)]
    port: Option<u16>,
    /// Root token id instead of a random one (overrides the seed file).
    #[arg(long)]
    root_token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();

    let mut seed = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read seed file {}", path.display()))?;
            serde_json::from_str::<SeedFile>(&text)
                .with_context(|| format!("invalid seed file {}", path.display()))?
        }
        None => SeedFile::default(),
    };
    seed.options.tls |= args.tls;
    if let Some(port) = args.port {
        seed.options.port = port;
    }
    if let Some(token) = args.root_token {
        seed.options.root_token = Some(token);
    }

    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let server = VaultTestServer::start(seed.options.clone()).await?;
    let tokens = seed
        .apply(&server)
        .context("failed to apply the seed file")?;

    let ready = serde_json::json!({
        "addr": server.addr().to_string(),
        "url": server.url(),
        "root_token": server.root_token(),
        "ca_cert_pem": server.ca_cert_pem(),
        "tokens": tokens
            .iter()
            .map(|t| serde_json::json!({ "token": t.token, "accessor": t.accessor }))
            .collect::<Vec<_>>(),
    });
    println!("{ready}");

    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.shutdown().await;
    Ok(())
}
