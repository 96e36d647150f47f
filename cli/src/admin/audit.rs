//! `envproxy admin audit`: the agent's audit events, collected for a bounded time or followed.
//!
//! The agent keeps no history: a stream starts with the first request answered after it opens.
//! So without `--follow` the command watches for `--for` seconds (or until `--count` events),
//! then prints what it saw as one table or document. With `--follow` it prints each event as it
//! arrives, until Ctrl-C, the agent stopping, or `--count` events.

use std::time::Duration;

use clap::Args;

use super::connect::{AdminClient, AdminError};
use super::views::AuditEvent;
use super::{render, write_stdout, Format, EXIT_OK};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Print each event as it arrives, until Ctrl-C or the agent stops.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Stop after this many events.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Without --follow: seconds to watch before printing what arrived.
    #[arg(long = "for", value_name = "SECONDS", default_value_t = 10, conflicts_with = "follow",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    watch_for: u64,
}

/// Runs the audit command on `client` and returns the exit status.
pub async fn run(
    client: &mut AdminClient,
    args: AuditArgs,
    format: Format,
) -> Result<i32, AdminError> {
    if args.follow {
        follow(client, args.count, format).await
    } else {
        collect(
            client,
            args.count,
            Duration::from_secs(args.watch_for),
            format,
        )
        .await
    }
}

/// Prints each event as it arrives. Ctrl-C ends the stream with status 0.
async fn follow(
    client: &mut AdminClient,
    count: Option<u64>,
    format: Format,
) -> Result<i32, AdminError> {
    let mut stream = client.watch_audit().await?;
    write_stdout(&render::audit_follow_header(format))?;
    let mut printed = 0;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while count.is_none_or(|count| printed < count) {
        let event = tokio::select! {
            event = stream.next() => event?,
            _ = &mut interrupted => break,
        };
        report_lost(event.dropped_before);
        write_stdout(&render::audit_follow_event(
            &AuditEvent::from(event),
            format,
        ))?;
        printed += 1;
    }
    Ok(EXIT_OK)
}

/// Collects events for `duration` or until `count` of them, then prints them together. Ctrl-C
/// prints what was collected so far.
async fn collect(
    client: &mut AdminClient,
    count: Option<u64>,
    duration: Duration,
    format: Format,
) -> Result<i32, AdminError> {
    let mut stream = client.watch_audit().await?;
    let mut events = Vec::new();
    let deadline = tokio::time::sleep(duration);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(deadline, interrupted);
    let mut ended = None;
    while count.is_none_or(|count| (events.len() as u64) < count) {
        tokio::select! {
            event = stream.next() => match event {
                Ok(event) => {
                    report_lost(event.dropped_before);
                    events.push(AuditEvent::from(event));
                }
                Err(err) => {
                    ended = Some(err);
                    break;
                }
            },
            _ = &mut deadline => break,
            _ = &mut interrupted => break,
        }
    }
    if events.is_empty() && format == Format::Table {
        eprintln!(
            "envproxy: the agent answered no request while watched; use --for to watch longer \
             or --follow to wait"
        );
    }
    write_stdout(&render::audit_events(&events, format))?;
    match ended {
        Some(err) => Err(err),
        None => Ok(EXIT_OK),
    }
}

fn report_lost(dropped: u64) {
    if dropped > 0 {
        eprintln!(
            "envproxy: {dropped} audit events were lost before the next one because this \
             stream fell behind the agent's [audit] buffer"
        );
    }
}
