//! Runs the HTTP secrets test server as its own process, for manual tests of the agent.
//!
//! Prints one JSON line on stdout once listening (`addr`, `url`, and `ca_cert_pem` with
//! `--tls`), then serves until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use envproxy_http_test_server::{HttpSecretsServer, ServerOptions, TokenAccess};
use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(about = "An HTTP secrets API (GET /v1/env/<key>) for testing EnvProxy")]
struct Args {
    /// JSON file of secrets: an object whose values are strings, or objects with a string
    /// `value` and an optional `ttl` in seconds.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    /// Bearer token that may read every key; repeat for more tokens.
    #[arg(long, value_name = "TOKEN", required = true)]
    token: Vec<String>,
    /// Bearer token that is known but may read no key (requests get 403); may be repeated.
    #[arg(long, value_name = "TOKEN")]
    forbidden_token: Vec<String>,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Serve HTTPS with a CA generated at start (its PEM is printed).
    #[arg(long)]
    tls: bool,
    /// Delay before every response, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency_ms: u64,
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

    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let server = HttpSecretsServer::start_with(ServerOptions {
        port: args.port,
        tls: args.tls,
    })
    .await?;
    if let Some(path) = &args.secrets {
        load_secrets(&server, path)?;
    }
    for token in &args.token {
        server.add_token(token, TokenAccess::All);
    }
    for token in &args.forbidden_token {
        server.add_token(token, TokenAccess::Forbidden);
    }
    server.set_latency(Duration::from_millis(args.latency_ms));

    let ready = serde_json::json!({
        "addr": server.addr().to_string(),
        "url": server.url(),
        "ca_cert_pem": server.ca_cert_pem(),
    });
    println!("{ready}");

    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.shutdown();
    Ok(())
}

fn load_secrets(server: &HttpSecretsServer, path: &PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read secrets file {}", path.display()))?;
    let secrets: serde_json::Map<String, Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON object", path.display()))?;
    for (key, entry) in secrets {
        match entry {
            Value::String(value) => server.set_secret(&key, &value),
            Value::Object(fields) => {
                let Some(Value::String(value)) = fields.get("value") else {
                    bail!("{}: `{key}` has no string `value`", path.display());
                };
                match fields.get("ttl") {
                    None => server.set_secret(&key, value),
                    Some(ttl) => {
                        let Some(ttl) = ttl.as_u64() else {
                            bail!(
                                "{}: the `ttl` of `{key}` is not a whole number of seconds",
                                path.display()
                            );
                        };
                        server.set_secret_with_ttl(&key, value, ttl);
                    }
                }
            }
            _ => bail!(
                "{}: `{key}` must be a string or an object with `value`",
                path.display()
            ),
        }
    }
    Ok(())
}
