//! `envproxy run --values-in-environ`: resolves the references of the command's environment
//! before it starts, as exec wrappers do, for programs that the library cannot reach (static
//! binaries, Go programs, setuid programs).
//!
//! The values then sit in the command's `/proc/PID/environ`, where the same user and root can
//! read them, and every child of the command inherits them. They are fixed at start, so a
//! rotated secret reaches the command only when it is started again.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use envproxy_proto::{has_known_scheme, Reference, Request, Response};

use crate::client::{self, IO_TIMEOUT};

/// Setting that selects what an unresolvable reference does, shared with the library.
pub const ON_ERROR_VARIABLE: &str = "ENVPROXY_ON_ERROR";
/// Prefix of the variables that configure EnvProxy; they are never resolved.
const OWN_PREFIX: &[u8] = b"ENVPROXY_";

/// Policy for a reference in the command's environment that cannot be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnresolved {
    /// The command is not started (`ENVPROXY_ON_ERROR` unset, empty or `exit`).
    Fail,
    /// The command starts with the reference as the value (`ENVPROXY_ON_ERROR=reference`).
    KeepReference,
    /// The command starts without the variable (`ENVPROXY_ON_ERROR=unset`).
    Unset,
}

impl OnUnresolved {
    /// Parses the value of `ENVPROXY_ON_ERROR`.
    ///
    /// Unlike the library, whose default is `reference`, the default here is to fail, because a
    /// static program cannot tell a reference from a password, and a failed start names the
    /// variable at once.
    pub fn from_setting(value: Option<&OsStr>) -> anyhow::Result<OnUnresolved> {
        match value.map(OsStr::as_bytes) {
            None | Some(b"") | Some(b"exit") => Ok(OnUnresolved::Fail),
            Some(b"reference") => Ok(OnUnresolved::KeepReference),
            Some(b"unset") => Ok(OnUnresolved::Unset),
            Some(other) => anyhow::bail!(
                "{ON_ERROR_VARIABLE}={:?} is not one of reference, unset, exit; set one of them \
                 or unset it to fail the start on an unresolvable reference",
                String::from_utf8_lossy(other)
            ),
        }
    }
}

/// A reference that could not be resolved, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub name: String,
    pub reference: String,
    pub reason: String,
}

/// The outcome of [`resolve`].
#[derive(Debug, Default)]
pub struct Resolution {
    /// Number of variables whose reference was replaced by its value.
    pub resolved: usize,
    /// References left as they were or removed, by `ENVPROXY_ON_ERROR`.
    pub unresolved: Vec<Unresolved>,
}

/// Replaces each reference in `variables` by its value from the agent at `socket`.
///
/// Names that start with `ENVPROXY_` and plain values are left as they are. With
/// [`OnUnresolved::Fail`], any reference that cannot be resolved fails the whole call with an
/// error that lists every such variable. `variables` is then partly resolved and must not be
/// used. Error messages contain names, references and the agent's reasons, never values.
pub fn resolve(
    variables: &mut Vec<(OsString, OsString)>,
    socket: &Path,
    policy: OnUnresolved,
) -> anyhow::Result<Resolution> {
    let mut resolution = Resolution::default();
    // After the agent is unreachable once, the remaining references fail with the same reason
    // instead of each waiting for its own timeout.
    let mut unreachable: Option<String> = None;
    let mut removed = Vec::new();
    let mut connection = Connection::new(socket);

    for (index, (name, value)) in variables.iter_mut().enumerate() {
        if name.as_bytes().starts_with(OWN_PREFIX) || !has_known_scheme(value.as_bytes()) {
            continue;
        }
        let outcome = match &unreachable {
            Some(reason) => Err(reason.clone()),
            None => request_value(&mut connection, name, value),
        };
        match outcome {
            Ok(Some(resolved)) => {
                *value = resolved;
                resolution.resolved += 1;
            }
            Ok(None) => {}
            Err(reason) => {
                if unreachable.is_none() && reason.starts_with(UNREACHABLE_PREFIX) {
                    unreachable = Some(reason.clone());
                }
                resolution.unresolved.push(Unresolved {
                    name: name.to_string_lossy().into_owned(),
                    reference: shortened(value),
                    reason,
                });
                if policy == OnUnresolved::Unset {
                    removed.push(index);
                }
            }
        }
    }

    if policy == OnUnresolved::Fail && !resolution.unresolved.is_empty() {
        anyhow::bail!("{}", failure_message(&resolution.unresolved));
    }
    for index in removed.into_iter().rev() {
        variables.remove(index);
    }
    Ok(resolution)
}

/// Start of the reason when no request reached the agent.
const UNREACHABLE_PREFIX: &str = "no response from the agent: ";

/// One connection to the agent, used for request after request as the protocol allows.
struct Connection<'s> {
    socket: &'s Path,
    stream: Option<UnixStream>,
}

impl<'s> Connection<'s> {
    fn new(socket: &'s Path) -> Connection<'s> {
        Connection {
            socket,
            stream: None,
        }
    }

    /// Sends `request` and returns the response. A connection that failed, for example one the
    /// agent closed after an error response, is replaced by a new one once per request; a v2
    /// request only reads, so sending it again is harmless.
    fn call(&mut self, request: &Request) -> Result<Response, String> {
        match self.call_once(request) {
            Ok(response) => Ok(response),
            Err(_) => {
                self.stream = None;
                self.call_once(request)
            }
        }
    }

    fn call_once(&mut self, request: &Request) -> Result<Response, String> {
        if self.stream.is_none() {
            let stream = client::connect(self.socket, IO_TIMEOUT).map_err(|err| err.to_string())?;
            let timeouts = stream
                .set_read_timeout(Some(IO_TIMEOUT))
                .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
            timeouts.map_err(|err| format!("cannot set timeouts on the connection: {err}"))?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        envproxy_proto::client::call(stream, request).map_err(|err| {
            self.stream = None;
            format!(
                "request to the agent at {} failed: {err}",
                self.socket.display()
            )
        })
    }
}

/// Requests the value of the reference `value` of variable `name`. Returns `Ok(None)` when the
/// agent treats the value as plain, and the reason on failure.
fn request_value(
    connection: &mut Connection<'_>,
    name: &OsStr,
    value: &OsStr,
) -> Result<Option<OsString>, String> {
    let request = Request::V2 {
        key: name.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    };
    // A request the protocol cannot carry, such as a reference over its length limit, fails
    // alone, and the agent stays reachable for the others.
    request
        .encode(&mut Vec::new())
        .map_err(|err| format!("invalid request: {err}"))?;
    let response = connection
        .call(&request)
        .map_err(|reason| format!("{UNREACHABLE_PREFIX}{reason}"))?;
    match response {
        Response::Found(secret) => {
            let bytes = secret.expose_secret();
            if bytes.contains(&0) {
                let reason = "the value contains a NUL byte, which an environment variable \
                              cannot hold";
                return Err(reason.to_string());
            }
            Ok(Some(OsString::from_vec(bytes.to_vec())))
        }
        Response::NotFound => {
            let parsed = value
                .to_str()
                .and_then(|value| Reference::parse(value).ok());
            Err(match parsed {
                Some(parsed) => format!("the agent's backend has no key {:?}", parsed.key()),
                None => "the agent's backend has no such key".to_string(),
            })
        }
        Response::Error(reason) => Err(format!(
            "the agent returned an error: {}",
            Response::reason_without_name(&reason, name.as_bytes())
        )),
        Response::Passthrough => Ok(None),
    }
}

/// Maximum number of characters of a reference shown in a message.
const SHOWN_REFERENCE_MAX: usize = 120;

/// Returns `value` for a message, cut to [`SHOWN_REFERENCE_MAX`] characters with its length.
fn shortened(value: &OsStr) -> String {
    let text = value.to_string_lossy();
    if text.chars().count() <= SHOWN_REFERENCE_MAX {
        return text.into_owned();
    }
    let start: String = text.chars().take(SHOWN_REFERENCE_MAX).collect();
    format!("{start}... ({} bytes)", value.len())
}

/// Returns the error for a start that failed, one line per unresolved variable.
fn failure_message(unresolved: &[Unresolved]) -> String {
    let mut message = format!(
        "--values-in-environ: cannot resolve {} reference(s), so the command was not started:",
        unresolved.len()
    );
    for entry in unresolved {
        message.push_str(&format!(
            "\n  {}={}: {}",
            entry.name, entry.reference, entry.reason
        ));
    }
    message.push_str(&format!(
        "\nfix the references or the agent's secrets, or set {ON_ERROR_VARIABLE}=reference \
         (start with the references) or {ON_ERROR_VARIABLE}=unset (start without these \
         variables)"
    ));
    message
}

/// Returns the warning printed once before a command starts with resolved values.
pub fn exposure_warning(resolved: usize, program: &OsStr) -> String {
    format!(
        "envproxy: warning: --values-in-environ put {resolved} secret value(s) in the \
         environment of {}: the same user and root can read them in /proc/PID/environ, and \
         every process it starts inherits them",
        program.to_string_lossy()
    )
}

/// Returns one warning line per reference that was kept or removed by `ENVPROXY_ON_ERROR`.
pub fn unresolved_warnings(resolution: &Resolution, policy: OnUnresolved) -> Vec<String> {
    let consequence = match policy {
        OnUnresolved::KeepReference => {
            "the command gets the reference (ENVPROXY_ON_ERROR=reference)"
        }
        OnUnresolved::Unset => "the command gets no such variable (ENVPROXY_ON_ERROR=unset)",
        OnUnresolved::Fail => return Vec::new(),
    };
    resolution
        .unresolved
        .iter()
        .map(|entry| {
            format!(
                "envproxy: {}: cannot resolve {}: {}; {consequence}",
                entry.name, entry.reference, entry.reason
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_error_setting_parses() {
        let cases = [
            (None, OnUnresolved::Fail),
            (Some(""), OnUnresolved::Fail),
            (Some("exit"), OnUnresolved::Fail),
            (Some("reference"), OnUnresolved::KeepReference),
            (Some("unset"), OnUnresolved::Unset),
        ];
        for (value, expected) in cases {
            let parsed = OnUnresolved::from_setting(value.map(OsStr::new)).unwrap();
            assert_eq!(parsed, expected, "{value:?}");
        }
    }

    #[test]
    fn invalid_on_error_setting_is_error() {
        let error = OnUnresolved::from_setting(Some(OsStr::new("ignore"))).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("ENVPROXY_ON_ERROR=\"ignore\""),
            "{message}"
        );
        assert!(message.contains("reference, unset, exit"), "{message}");
    }

    #[test]
    fn plain_and_own_variables_need_no_agent() {
        let dir = tempfile::tempdir().unwrap();
        let mut variables: Vec<(OsString, OsString)> = vec![
            ("PLAIN".into(), "postgres://local".into()),
            ("ENVPROXY_SOCKET".into(), "envproxy:not-a-key".into()),
        ];
        let before = variables.clone();
        // No agent listens on this socket, so any request would fail.
        let resolution = resolve(
            &mut variables,
            &dir.path().join("none.sock"),
            OnUnresolved::Fail,
        )
        .unwrap();
        assert_eq!(resolution.resolved, 0);
        assert!(resolution.unresolved.is_empty());
        assert_eq!(variables, before);
    }

    #[test]
    fn unreachable_agent_fails_every_reference() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let mut variables: Vec<(OsString, OsString)> = vec![
            ("A".into(), "envproxy:A".into()),
            ("KEEP".into(), "plain".into()),
            ("B".into(), "vault:secret/data/app#b".into()),
        ];

        let error = resolve(&mut variables.clone(), &socket, OnUnresolved::Fail).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("cannot resolve 2 reference(s)"),
            "{message}"
        );
        assert!(
            message.contains("\n  A=envproxy:A: no response"),
            "{message}"
        );
        assert!(
            message.contains("\n  B=vault:secret/data/app#b: "),
            "{message}"
        );
        assert!(message.contains("ENVPROXY_ON_ERROR=reference"), "{message}");

        let mut kept = variables.clone();
        let resolution = resolve(&mut kept, &socket, OnUnresolved::KeepReference).unwrap();
        assert_eq!(resolution.unresolved.len(), 2);
        assert_eq!(kept, variables);

        let resolution = resolve(&mut variables, &socket, OnUnresolved::Unset).unwrap();
        assert_eq!(resolution.unresolved.len(), 2);
        assert_eq!(variables, vec![("KEEP".into(), "plain".into())]);
        let warnings = unresolved_warnings(&resolution, OnUnresolved::Unset);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].starts_with("envproxy: A: cannot resolve envproxy:A: "));
        assert!(
            warnings[0].ends_with("(ENVPROXY_ON_ERROR=unset)"),
            "{}",
            warnings[0]
        );
    }
}
