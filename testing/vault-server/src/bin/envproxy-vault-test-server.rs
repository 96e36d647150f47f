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

/// The seed file format, shown by `--help`. `SeedFile` in `src/seed.rs` defines it.
const SEED_FORMAT: &str = r#"Seed file (--config), JSON; every key is optional and unknown keys are rejected:
  {
    "options": { "tls": true, "port": 8200, "root_token": "root" },
    "namespaces": {
      "": {
        "kv2": { "secret": { "myapp/config": { "db_url": "postgres://..." } } },
        "kv1": { "kv": { "legacy": { "password": "...", "ttl": "1h" } } },
        "database_roles": { "database": { "readonly": { "default_ttl": 60, "max_ttl": 300 } } },
        "kubernetes_roles": {
          "kubernetes": { "app": { "bound_service_account_names": ["app"],
                                   "bound_service_account_namespaces": ["prod"],
                                   "token_policies": ["app"] } }
        },
        "policies": { "app": { "paths": { "secret/data/myapp/*": ["read"] } } }
      }
    },
    "tokens": [ { "policies": ["app"], "ttl": 3600 } ]
  }
"namespaces" is keyed by namespace path ("" is the root namespace; others are created). Under
it, kv2, kv1, database_roles and kubernetes_roles are keyed by mount, which is mounted when
missing. "tokens" are issued after the namespaces are seeded; a token takes "id", "policies",
"no_default_policy", "ttl" (seconds; 0 never expires), "explicit_max_ttl", "renewable",
"display_name" and "meta"."#;

#[derive(Parser)]
#[command(
    about = "A Vault stand-in that follows Vault's HTTP API, for tests",
    after_long_help = SEED_FORMAT
)]
struct Args {
    /// JSON seed file: server options, secrets, roles, policies and tokens (format under
    /// --help).
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
