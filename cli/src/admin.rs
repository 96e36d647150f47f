//! `envproxy admin`: the agent's gRPC admin API (`envproxy.admin.v1.Admin`) from the command
//! line, as aligned tables, JSON or YAML.
//!
//! - `connect`: which admin socket to use, the connection, and errors with exit codes.
//! - `views`: the API's messages as serde structs, with times in RFC 3339.
//! - `render`: tables, JSON and YAML.
//! - `audit`: the audit stream, bounded or followed.

mod audit;
mod connect;
mod render;
mod views;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use envproxy_admin_proto::v1 as pb;

pub use connect::AdminError;
use connect::{AdminClient, SocketChoice};

/// Exit status when the command did what was requested.
pub const EXIT_OK: i32 = 0;
/// Exit status when the agent answered the call with an error, such as an unknown identity to
/// flush or an invalid config file to reload.
pub const EXIT_CALL_FAILED: i32 = 1;
/// Exit status for invalid options or an agent config file that cannot be read (clap also uses
/// 2 for usage errors).
pub const EXIT_USAGE: i32 = 2;
/// Exit status when no agent answers: no admin socket, a stale socket, an unavailable server, a
/// timeout, or an audit stream that ended because the agent stopped.
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit status when this user may not use the admin socket: the file permissions deny it, or
/// the agent rejected the connection.
pub const EXIT_PERMISSION: i32 = 4;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin socket [default: ENVPROXY_ADMIN_SOCKET, else admin/admin.sock beside the per-user
    /// agent socket when it exists, else /run/envproxy/admin/admin.sock (node mode)].
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Agent config file: use the admin socket that its [agent] and [admin] tables select.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    /// Seconds to wait for the connection and for each answer of the agent.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, global = true,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON: one document, or one line per event with `audit --follow`.
    Json,
    /// YAML: one document, or one document per event with `audit --follow`.
    Yaml,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Show the agent's version, mode, uptime, pod watch, health, Vault sessions and counters.
    Status,
    /// List the containers of pods on this node that sent requests (node mode).
    Workloads,
    /// List the cached reads of Vault, the HTTP API and Kubernetes Secrets, without values.
    Cache,
    /// Drop cached reads of Vault, the HTTP API and Kubernetes Secrets, so the next request
    /// for them reads the backend, and list them.
    Flush(FlushArgs),
    /// Print audit events: one per request the agent answers, never a value.
    ///
    /// Without --follow, collects the events of --for seconds (or until --count events) and
    /// prints them together. With --follow, prints each event as it arrives until Ctrl-C, the
    /// agent stops or --count events were printed.
    Audit(audit::AuditArgs),
    /// Make the agent read its config file again (ReloadConfig) and show what changed.
    Reload,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(false)))]
struct FlushArgs {
    /// Drop the reads whose path starts with this prefix: a Vault path such as
    /// `secret/data/app`, `envproxy:KEY` (HTTP API) or `k8s:NAMESPACE/SECRET`.
    #[arg(long, value_name = "PREFIX", group = "target")]
    prefix: Option<String>,
    /// Drop every read of the Vault identities and the service account that this pod uses
    /// (node mode).
    #[arg(long, value_name = "NAMESPACE/NAME", group = "target", value_parser = parse_pod)]
    pod: Option<String>,
    /// Drop every read of one identity, as `envproxy admin cache` or `flush` names it.
    #[arg(long, value_name = "IDENTITY", group = "target")]
    identity: Option<String>,
    /// Drop every cached read.
    #[arg(long, group = "target")]
    all: bool,
}

/// Accepts `namespace/name` with both parts non-empty.
fn parse_pod(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(text.to_string())
        }
        _ => Err(format!(
            "expected NAMESPACE/NAME, such as shop/web-0, got {text:?}"
        )),
    }
}

/// Runs one admin command and returns its exit status, with the error on stderr.
pub fn run(args: AdminArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("envproxy: cannot start the Tokio runtime: {err}");
            return EXIT_UNREACHABLE;
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("envproxy: {err}");
            err.exit_code()
        }
    }
}

async fn execute(args: AdminArgs) -> Result<i32, AdminError> {
    let choice = SocketChoice::resolve(args.socket, args.config)?;
    let timeout = Duration::from_secs(args.timeout);
    let mut client = AdminClient::connect(&choice, timeout).await?;
    let format = args.output;
    let text = match args.command {
        AdminCommand::Status => {
            let status = client.status().await?;
            render::status(&views::Status::from(status), format)
        }
        AdminCommand::Workloads => {
            let response = client.workloads().await?;
            let workloads: Vec<views::Workload> =
                response.workloads.into_iter().map(Into::into).collect();
            if workloads.is_empty() && format == Format::Table {
                eprintln!(
                    "envproxy: no workloads: a local-mode agent has none, and a node-mode agent \
                     lists each pod container that has sent it a request"
                );
            }
            render::workloads(&workloads, format)
        }
        AdminCommand::Cache => {
            let response = client.cache_entries().await?;
            let entries: Vec<views::CacheEntry> =
                response.entries.into_iter().map(Into::into).collect();
            if entries.is_empty() && format == Format::Table {
                eprintln!("envproxy: the agent has no cached reads");
            }
            render::cache(&entries, format)
        }
        AdminCommand::Flush(flush) => {
            let response = client.flush(flush_target(flush)).await?;
            render::flush(&views::Flush::from(response), format)
        }
        AdminCommand::Audit(audit) => return audit::run(&mut client, audit, format).await,
        AdminCommand::Reload => {
            let response = client.reload().await?;
            render::reload(&views::Reload::from(response), format)
        }
    };
    write_stdout(&text)?;
    Ok(EXIT_OK)
}

fn flush_target(args: FlushArgs) -> pb::flush_request::Target {
    use pb::flush_request::Target;
    match (args.prefix, args.pod, args.identity) {
        (Some(prefix), _, _) => Target::PathPrefix(prefix),
        (_, Some(pod), _) => Target::Pod(pod),
        (_, _, Some(identity)) => Target::Identity(identity),
        // clap requires exactly one target, so the remaining one is --all.
        (None, None, None) => Target::PathPrefix(String::new()),
    }
}

/// Writes `text` to stdout. A reader that stopped early, such as `head`, is not an error.
fn write_stdout(text: &str) -> Result<(), AdminError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(AdminError::Stdout { source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_needs_namespace_and_name() {
        assert_eq!(parse_pod("shop/web-0"), Ok("shop/web-0".to_string()));
        for bad in ["web-0", "/web-0", "shop/", "a/b/c"] {
            assert!(parse_pod(bad).is_err(), "{bad}");
        }
    }
}
