//! `envproxy get`: print one value from the agent.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use envproxy_proto::reference::{KUBERNETES_SCHEME, LOCAL_SCHEME, VAULT_SCHEME};
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
            match unknown_scheme(&args.name) {
                Some(scheme) => eprintln!(
                    "envproxy: {}: not found in the agent's secrets, and `{scheme}:` is not a \
                     reference scheme EnvProxy knows ({VAULT_SCHEME}, {LOCAL_SCHEME}, \
                     {KUBERNETES_SCHEME}); check the reference's spelling",
                    args.name
                ),
                None => eprintln!("envproxy: {}: not found in the agent's secrets", args.name),
            }
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

/// Returns the scheme of `name` when it has the form `scheme:rest` of a URI (a letter, then
/// letters, digits, `+`, `-` or `.`) and the scheme is not one that EnvProxy resolves.
fn unknown_scheme(name: &str) -> Option<&str> {
    let (scheme, rest) = name.split_once(':')?;
    let mut characters = scheme.chars();
    let first = characters.next()?;
    let is_scheme = first.is_ascii_alphabetic()
        && characters.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme || rest.is_empty() || has_known_scheme(name.as_bytes()) {
        return None;
    }
    Some(scheme)
}

#[cfg(test)]
mod tests {
    use super::unknown_scheme;

    #[test]
    fn unknown_scheme_forms() {
        assert_eq!(unknown_scheme("s3:bucket/x"), Some("s3"));
        assert_eq!(unknown_scheme("aws-sm:app/db"), Some("aws-sm"));
        assert_eq!(unknown_scheme("API_KEY"), None);
        assert_eq!(unknown_scheme("vault:secret/data/app#k"), None);
        assert_eq!(unknown_scheme("k8s:db/password"), None);
        assert_eq!(unknown_scheme("envproxy:KEY"), None);
        assert_eq!(unknown_scheme("3d:x"), None);
        assert_eq!(unknown_scheme("s3:"), None);
        assert_eq!(unknown_scheme("my key:x"), None);
    }
}
