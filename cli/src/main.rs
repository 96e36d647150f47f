//! `envproxy`: run programs whose environment variables are resolved from secrets on `getenv`.
//!
//! - `run`: start a command with `KEY=envproxy:KEY` references in its environment and
//!   `libenvproxy.so` preloaded, served by a running agent or one inside this process.
//! - `check`: tell whether a program will see resolved values, and why.
//! - `get`: print one value from the agent.
//! - `status`: show whether an agent responds and how it is set up.
//! - `admin`: the agent's admin API: status, workloads, cache, flush, audit events, reload.
//! - `completions`: print a shell completion script.

mod admin;
mod check;
mod child;
mod client;
mod embedded;
mod environment;
mod get;
mod library;
mod run;
mod run_startup;
mod status;
mod values_in_environ;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Debug, Parser)]
#[command(name = "envproxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command with secrets resolved when it reads its environment.
    ///
    /// Exits with the command's status, 128 + N when signal N ended it, 127 when it is not
    /// found, 126 when it cannot be executed and 125 when envproxy itself fails.
    Run(run::RunArgs),
    /// Tell whether a program will see resolved values, and why.
    ///
    /// Give the program's path, or a command after `--` as `envproxy run` takes it. Exits with
    /// 0 when the program will see resolved values (also with a caveat), 1 when it will see
    /// references, and 2 on a usage error or a file that cannot be checked.
    Check(check::CheckArgs),
    /// Print the value of a key or reference (exit 1: not found, 2: error).
    Get(get::GetArgs),
    /// Show the agent's status (exit 1: no agent responds).
    Status(status::StatusArgs),
    /// Inspect and control a running agent through its admin socket.
    ///
    /// Exit status: 0 done, 1 the agent answered the call with an error, 2 invalid options or
    /// an unreadable --config, 3 no agent answers (no admin socket, a stale socket, the agent
    /// is unavailable or timed out, or it stopped during `audit`), 4 this user may not use the
    /// admin socket (file permissions, or the agent rejected the connection).
    Admin(admin::AdminArgs),
    /// Print the completion script for a shell, for example
    /// `envproxy completions bash > /etc/bash_completion.d/envproxy`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The embedded agent logs only warnings by default, such as a secrets file that became
    // invalid, because its start and request lines would mix with the command's own output.
    // RUST_LOG selects more.
    if let Err(err) = envproxy_agent::logging::init("warn") {
        eprintln!("envproxy: cannot set up logging: {err}");
    }
    let code = match cli.command {
        Command::Run(args) => run::run(args).unwrap_or_else(|err| {
            let message = envproxy_agent::logging::error_chain(err.as_ref());
            eprintln!("envproxy: {message}");
            run::EXIT_RUN_FAILED
        }),
        Command::Check(args) => check::run(args),
        Command::Get(args) => get::run(args),
        Command::Status(args) => status::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "envproxy",
                &mut std::io::stdout(),
            );
            0
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}
