//! `envproxy get`: print one value from the agent.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use envproxy_proto::{has_known_scheme, Request, Response};

use crate::client::{self, IO_TIMEOUT};

/// Variable name sent with a reference in a v2 request. The agent names the variable in its
/// errors and logs, so this name shows that the request came from `envproxy get`.
pub const GET_VARIABLE: &str = "ENVPROXY_GET";

pub const EXIT_FOUND: i32 = 0;
pub const EXIT_NOT_FOUND: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

#[derive(Debug, Args)]
pub struct GetArgs {
    /// A key of the agent's secrets file (`API_KEY`) or a reference (`envproxy:API_KEY`).
    #[arg(value_name = "NAME|REFERENCE")]
    name: String,
    /// Agent socket [default: the per-user socket].
    #[arg(long, value_name = "PATH", env = "ENVPROXY_SOCKET")]
    socket: Option<PathBuf>,
}

/// Prints the value and a newline on stdout. Returns 0 when found, 1 when not found and 2 on an
/// error, with a message on stderr for the last two.
pub fn run(args: GetArgs) -> i32 {
    let socket = args
        .socket
        .unwrap_or_else(envproxy_agent::default_socket_path);
    let request = if has_known_scheme(args.name.as_bytes()) {
        Request::V2 {
            key: GET_VARIABLE.as_bytes().to_vec(),
            value: args.name.as_bytes().to_vec(),
        }
    } else {
        Request::V1 {
            key: args.name.as_bytes().to_vec(),
        }
    };

    let response = match client::call(&socket, &request, IO_TIMEOUT) {
        Ok(response) => response,
        Err(err) => {
            eprintln!("envproxy: {err}");
            return EXIT_ERROR;
        }
    };
    match response {
        Response::Found(value) => {
            // The one place where EnvProxy prints a value, because the user requested it.
            let mut stdout = std::io::stdout().lock();
            let written = stdout
                .write_all(value.expose_secret())
                .and_then(|()| stdout.write_all(b"\n"))
                .and_then(|()| stdout.flush());
            match written {
                Ok(()) => EXIT_FOUND,
                Err(err) => {
                    eprintln!("envproxy: cannot write the value to stdout: {err}");
                    EXIT_ERROR
                }
            }
        }
        Response::NotFound => {
            eprintln!("envproxy: {}: not found in the agent's secrets", args.name);
            EXIT_NOT_FOUND
        }
        Response::Error(reason) => {
            // The agent names the variable of a v2 request first, which here is the internal
            // GET_VARIABLE rather than anything the user typed.
            let prefix = format!("{GET_VARIABLE}: ");
            match reason.strip_prefix(prefix.as_str()) {
                Some(rest) => eprintln!("envproxy get: {rest}"),
                None => eprintln!("envproxy: {reason}"),
            }
            EXIT_ERROR
        }
        Response::Passthrough => {
            eprintln!(
                "envproxy: {}: the agent treated it as a plain value",
                args.name
            );
            EXIT_ERROR
        }
    }
}
