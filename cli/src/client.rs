//! Blocking requests to a running agent, each bounded by timeouts.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envproxy_agent::AgentStatus;
use envproxy_proto::{client, Request, Response};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::unistd::geteuid;

/// Maximum wait for a connection, and for each read or write on it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between connection attempts while the agent's listen backlog is full.
const BACKLOG_RETRY: Duration = Duration::from_millis(10);

/// A request that got no response. Messages name the socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent at {}: the socket does not exist", path.display())]
    NoSocket { path: PathBuf },
    #[error("no agent at {}: connection refused (the socket file is stale)", path.display())]
    Refused { path: PathBuf },
    #[error(
        "no agent at {}: the file is not a socket; point --socket or ENVPROXY_SOCKET at the \
         agent's socket",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error(
        "the agent socket {} is served by uid {agent_uid}, not by this user (uid {own_uid}) or \
         root, so no request was sent; check who created the socket, or point --socket or \
         ENVPROXY_SOCKET at your own agent",
        path.display()
    )]
    ForeignAgent {
        path: PathBuf,
        agent_uid: u32,
        own_uid: u32,
    },
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent at {} did not respond within {}s", path.display(), timeout.as_secs_f32())]
    TimedOut { path: PathBuf, timeout: Duration },
    #[error("request to the agent at {} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent at {} sent an invalid status: {source}", path.display())]
    InvalidStatus {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agent at {} refused the status request: {reason}", path.display())]
    StatusRefused { path: PathBuf, reason: String },
    #[error("the agent at {} returned {response:?} for a status request", path.display())]
    UnexpectedStatusResponse { path: PathBuf, response: Response },
}

impl ClientError {
    /// Returns whether a process accepted the connection but sent no valid agent response, so the
    /// socket is in use and no agent can be started on it.
    pub fn is_socket_in_use(&self) -> bool {
        matches!(
            self,
            ClientError::TimedOut { .. }
                | ClientError::Io { .. }
                | ClientError::InvalidStatus { .. }
                | ClientError::StatusRefused { .. }
                | ClientError::UnexpectedStatusResponse { .. }
        )
    }
}

/// Sends one request to the agent at `socket` and returns its response.
///
/// `timeout` bounds the connection and, separately, each read and write.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = connect(socket, timeout)?;
    let io_error = |source: io::Error| {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::TimedOut {
                path: socket.to_path_buf(),
                timeout,
            }
        } else {
            ClientError::Io {
                path: socket.to_path_buf(),
                source,
            }
        }
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;

    let mut frame = Vec::new();
    request
        .encode(&mut frame)
        .map_err(|err| io_error(io::Error::new(io::ErrorKind::InvalidInput, err)))?;
    match stream.write_all(&frame) {
        Ok(()) => client::read_response(&mut stream).map_err(io_error),
        // An agent that rejects the connection may close it before the request is written, with
        // the reason already waiting to be read.
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            client::read_response(&mut stream).map_err(|_| io_error(err))
        }
        Err(err) => Err(io_error(err)),
    }
}

/// Asks the agent at `socket` to describe itself.
pub fn fetch_status(socket: &Path, timeout: Duration) -> Result<AgentStatus, ClientError> {
    let (status, _) = fetch_status_json(socket, timeout)?;
    Ok(status)
}

/// Returns the agent's status, parsed and as the JSON text it sent.
pub fn fetch_status_json(
    socket: &Path,
    timeout: Duration,
) -> Result<(AgentStatus, String), ClientError> {
    let response = call(socket, &Request::Status, timeout)?;
    let payload = match response {
        Response::Found(payload) => payload,
        Response::Error(reason) => {
            return Err(ClientError::StatusRefused {
                path: socket.to_path_buf(),
                reason,
            })
        }
        response => {
            return Err(ClientError::UnexpectedStatusResponse {
                path: socket.to_path_buf(),
                response,
            })
        }
    };
    // A status payload contains key names and settings, never a secret value.
    let text = String::from_utf8_lossy(payload.expose_secret()).into_owned();
    let status = serde_json::from_str(&text).map_err(|source| ClientError::InvalidStatus {
        path: socket.to_path_buf(),
        source,
    })?;
    Ok((status, text))
}

/// Connects to `path` within `timeout`.
///
/// A blocking `connect` on a Unix socket waits without bound while the listener's backlog is
/// full, for example when the agent is stopped. This one uses a non-blocking socket and retries
/// until the deadline.
pub fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let deadline = Instant::now() + timeout;
    let connect_error = |errno: Errno| match errno {
        Errno::ENOENT => ClientError::NoSocket {
            path: path.to_path_buf(),
        },
        // Linux also returns ECONNREFUSED for a path that exists but is not a socket.
        Errno::ECONNREFUSED if !is_socket(path) => ClientError::NotASocket {
            path: path.to_path_buf(),
        },
        Errno::ECONNREFUSED => ClientError::Refused {
            path: path.to_path_buf(),
        },
        other => ClientError::Connect {
            path: path.to_path_buf(),
            source: other.into(),
        },
    };
    let timed_out = || ClientError::TimedOut {
        path: path.to_path_buf(),
        timeout,
    };
    let address = UnixAddr::new(path).map_err(connect_error)?;

    loop {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(connect_error)?;
        match socket::connect(fd.as_raw_fd(), &address) {
            Ok(()) => {}
            Err(Errno::EAGAIN) => {
                // Linux returns EAGAIN from a non-blocking Unix connect when the backlog is full.
                if Instant::now() >= deadline {
                    return Err(timed_out());
                }
                std::thread::sleep(BACKLOG_RETRY);
                continue;
            }
            Err(Errno::EINPROGRESS) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let millis = u16::try_from(remaining.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                let ready = poll(&mut fds, PollTimeout::from(millis)).map_err(connect_error)?;
                if ready == 0 {
                    return Err(timed_out());
                }
                let pending =
                    socket::getsockopt(&fd, socket::sockopt::SocketError).map_err(connect_error)?;
                if pending != 0 {
                    return Err(connect_error(Errno::from_raw(pending)));
                }
            }
            Err(errno) => return Err(connect_error(errno)),
        }
        check_agent_owner(path, &fd)?;
        let stream = UnixStream::from(fd);
        stream
            .set_nonblocking(false)
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        return Ok(stream);
    }
}

/// Accepts the connection only when the agent runs as this user or as root (the node agent), so
/// a socket that another user placed at the expected path never learns which keys are read.
fn check_agent_owner(path: &Path, fd: &OwnedFd) -> Result<(), ClientError> {
    let credentials =
        socket::getsockopt(fd, socket::sockopt::PeerCredentials).map_err(|errno| {
            ClientError::Connect {
                path: path.to_path_buf(),
                source: errno.into(),
            }
        })?;
    let own_uid = geteuid().as_raw();
    let agent_uid = credentials.uid();
    if agent_uid != own_uid && agent_uid != 0 {
        return Err(ClientError::ForeignAgent {
            path: path.to_path_buf(),
            agent_uid,
            own_uid,
        });
    }
    Ok(())
}

/// Returns false only when `path` exists and is not a socket, so a failed `stat` keeps the
/// connection error as it is.
fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).map_or(true, |metadata| metadata.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn missing_socket_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let error = connect(&path, IO_TIMEOUT).unwrap_err();
        assert!(matches!(error, ClientError::NoSocket { .. }), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn stale_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        drop(UnixListener::bind(&path).unwrap());
        let error = connect(&path, IO_TIMEOUT).unwrap_err();
        assert!(matches!(error, ClientError::Refused { .. }), "{error}");
    }

    #[test]
    fn regular_file_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let error = connect(&path, IO_TIMEOUT).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ClientError::NotASocket { .. }), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a socket"), "{message}");
        assert!(!message.contains("stale"), "{message}");
    }

    #[test]
    fn silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        // A listener that accepts into the backlog but never reads or writes.
        let _listener = UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let timeout = Duration::from_millis(200);
        let error = call(&path, &Request::Status, timeout).unwrap_err();
        assert!(matches!(error, ClientError::TimedOut { .. }), "{error}");
        assert!(started.elapsed() >= timeout);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn full_backlog_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        envproxy_agent::limits::raise_open_files_limit().unwrap();
        // Fill the backlog: connections are queued until the kernel refuses more.
        let mut queued = Vec::new();
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let error = loop {
            match connect(&path, timeout) {
                Ok(stream) => queued.push(stream),
                Err(error) => break error,
            }
            assert!(queued.len() < 100_000, "the backlog never filled");
        };
        assert!(matches!(error, ClientError::TimedOut { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
