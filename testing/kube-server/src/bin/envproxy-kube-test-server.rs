//! Runs the Kubernetes API test server as its own process.
//!
//! Prints one JSON line on stdout once listening: `addr`, `url`, `admin_token` and
//! `kubeconfig` (for the admin token); then serves until SIGTERM or SIGINT. Pods can be
//! loaded from a JSON file holding an array of Pod objects.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use envproxy_kube_test_server::{KubeTestServer, ServerOptions};
use k8s_openapi::api::core::v1::Pod;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(about = "A Kubernetes API stand-in for pods and service account tokens, for tests")]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Bearer token with every permission instead of a random one.
    #[arg(long)]
    admin_token: Option<String>,
    /// JSON file with an array of Pod objects (Kubernetes `v1` Pod JSON, as `kubectl get pod
    /// -o json` prints one) to create at start. The binary cannot add or delete pods after
    /// start; tests that change pods use the library's `KubeTestServer::apply_pod` and
    /// `delete_pod`.
    #[arg(long)]
    pods: Option<PathBuf>,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 60)]
    bookmark_interval: u64,
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

    let pods: Vec<Pod> = match &args.pods {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read pods file {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "invalid pods file {}: expected an array of Pods",
                    path.display()
                )
            })?
        }
        None => Vec::new(),
    };

    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let options = ServerOptions {
        port: args.port,
        admin_token: args.admin_token,
        bookmark_interval: std::time::Duration::from_secs(args.bookmark_interval),
        ..ServerOptions::default()
    };
    let server = KubeTestServer::start(options).await?;
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        server.apply_pod(pod).map_err(|err| {
            anyhow::anyhow!("invalid pod {name:?} in the pods file: {}", err.message)
        })?;
    }

    let ready = serde_json::json!({
        "addr": server.addr().to_string(),
        "url": server.url(),
        "admin_token": server.admin_token(),
        "kubeconfig": server.kubeconfig(server.admin_token()),
    });
    println!("{ready}");

    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.shutdown().await;
    Ok(())
}
