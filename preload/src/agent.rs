//! Requests to the agent over its Unix socket, each bounded by one deadline.
//!
//! Connections are kept in a small pool and reused, so a process normally keeps one
//! persistent connection. A connection is never used by two threads at once: a request takes
//! one out of the pool (or opens a new one) and puts it back after a complete response. The
//! pool lock is never held during I/O. After `fork` the child drops the connections it
//! inherited, so parent and child never interleave frames on one socket.
//!
//! Sockets are non-blocking, every send and receive passes `MSG_DONTWAIT`, and every wait is a
//! `poll` with the time left before the deadline, so a hung or overloaded agent costs the
//! program at most `ENVPROXY_TIMEOUT_MS`.
//!
//! The program may close or replace a pooled descriptor behind the library's back: daemons
//! close every descriptor above 2, and `dup2` can put another file on the same number. So each
//! connection remembers the device and inode of its socket, and the library closes only
//! descriptors that `fstat` has just shown to be its own. One whose identity changed is
//! forgotten, never closed. A pooled connection is reused without `fstat` only while nothing
//! can have changed its descriptor: no interposed `close`, `dup2`, `dup3`, `close_range` or
//! `closefrom` covered it since its last check (see `descriptors`), and it was last used less
//! than [`RECHECK_AFTER_MS`] ago. After a failed request the descriptor is checked again
//! before it is closed or reused.
//!
//! NOTE: a descriptor closed with a raw system call (`syscall(SYS_close, fd)`) is not noticed
//! until the connection has been unused for [`RECHECK_AFTER_MS`]. If the program reopens that
//! number within that time and a request follows, the request goes to whatever the number now
//! refers to. A file, a pipe or a free number makes the send fail at once with ENOTSOCK or
//! EBADF, without writing anything, and the library then drops the connection without closing
//! the descriptor and retries on a new connection. A socket of the program would receive the
//! request frame (the variable name and its reference, never a value), and the library could
//! read bytes meant for the program before the response check or the deadline fails the
//! request.

use std::ffi::c_int;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use envproxy_proto::frame::MAX_RESPONSE_LEN;
use envproxy_proto::{FrameError, Request, Response};

use crate::clock;
use crate::descriptors;
use crate::forked;
use crate::lock::SpinLock;
use crate::real;
use crate::settings;

/// Maximum idle connections kept per process. More are opened only while several threads
/// miss the cache at the same moment, and closed after use.
const MAX_IDLE: usize = 4;

/// A pooled connection unused for this long is checked with `fstat` before its next request,
/// which bounds how long a close that bypassed the interposed functions goes unnoticed. A
/// program that sends requests in a loop pays no `fstat`, and one that sends them less often
/// pays one `fstat` per request.
const RECHECK_AFTER_MS: u64 = 10;

/// Size of the stack buffer that each `recv` of a response reads into. A response whose value
/// is shorter than this by the 3-byte header or more arrives in one call.
const RECEIVE_BUFFER_LEN: usize = 4096;

/// After a failure to reach the agent, requests fail at once for this long, so a program that
/// reads many references pays the timeout once per pause instead of once per variable.
pub const BACKOFF_MS: u64 = 1000;
// The messages state the pause in whole seconds.
const _: () = assert!(BACKOFF_MS.is_multiple_of(1000));

/// Coarse-clock time until which requests fail at once, or 0.
static DOWN_UNTIL_MS: AtomicU64 = AtomicU64::new(0);
/// The message of the failure that started the pause.
static LAST_FAILURE: SpinLock<String> = SpinLock::new(String::new());

/// A failed request to the agent.
#[derive(Debug)]
pub enum AgentError {
    /// The socket path does not exist.
    NoSocket(String),
    /// The socket exists but the connection failed.
    Connect(String, io::Error),
    /// The path does not fit in `sockaddr_un`.
    PathTooLong(String),
    /// The deadline passed before a whole response arrived.
    TimedOut(String, u64),
    /// The agent closed the connection before a whole response.
    Closed(String),
    /// A response header arrived, but its payload stopped short because the agent closed
    /// the connection (`timeout_ms` is `None`) or the deadline passed.
    Incomplete {
        path: String,
        received: usize,
        expected: usize,
        timeout_ms: Option<u64>,
    },
    /// Reading or writing failed.
    Io(String, io::Error),
    /// The agent sent bytes that are not a valid response.
    Protocol(String, FrameError),
    /// The socket is served by a process of another user, which must not learn which
    /// references this program reads.
    ForeignAgent {
        path: String,
        agent_uid: u32,
        own_uid: u32,
    },
    /// A request failed less than [`BACKOFF_MS`] ago; carries that failure's message.
    BackingOff(String),
    /// The agent sent more bytes than one response, so the stream is out of step.
    TrailingBytes(String),
    /// The request itself exceeds a frame bound (a huge name or reference).
    Request(FrameError),
    /// Another thread of the program closed or replaced the connection's descriptor during the
    /// request, twice in a row. This is no agent outage, so no pause follows.
    DescriptorReplaced(String),
}

impl AgentError {
    /// Returns whether the failure happened on a reused connection that the agent had already
    /// closed, so a fresh connection may succeed (for example after an agent restart).
    fn is_stale_connection(&self) -> bool {
        match self {
            AgentError::Closed(_) => true,
            AgentError::Io(_, err) => matches!(
                err.raw_os_error(),
                Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
            ),
            _ => false,
        }
    }

    /// Returns whether the failure means the descriptor was not an open socket (EBADF or
    /// ENOTSOCK), which happens when the program closed or reused its number.
    fn is_descriptor_error(&self) -> bool {
        match self {
            AgentError::Io(_, err) => {
                matches!(err.raw_os_error(), Some(libc::EBADF) | Some(libc::ENOTSOCK))
            }
            _ => false,
        }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HINT: &str = "start envproxy-agent, run the program under `envproxy run`, \
                            or point ENVPROXY_SOCKET at a running agent";
        match self {
            AgentError::NoSocket(path) => write!(f, "no agent socket at {path} ({HINT})"),
            AgentError::Connect(path, err)
                if matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) =>
            {
                write!(
                    f,
                    "cannot connect to the agent at {path}: {err}; this process has no free \
                     file descriptors (raise `ulimit -n` or close unused descriptors)"
                )
            }
            AgentError::Connect(path, err) => {
                write!(f, "cannot connect to the agent at {path}: {err} ({HINT})")
            }
            AgentError::DescriptorReplaced(path) => write!(
                f,
                "the program closed or replaced the descriptor of the connection to the agent \
                 at {path} during the request, twice in a row"
            ),
            AgentError::PathTooLong(path) => write!(
                f,
                "the socket path {path} is longer than a Unix socket address allows \
                 (107 bytes); set ENVPROXY_SOCKET to a shorter path"
            ),
            AgentError::TimedOut(path, ms) => write!(
                f,
                "the agent at {path} did not answer within {ms} ms (ENVPROXY_TIMEOUT_MS)"
            ),
            AgentError::Closed(path) => {
                write!(
                    f,
                    "the agent at {path} closed the connection without answering"
                )
            }
            AgentError::Incomplete {
                path,
                received,
                expected,
                timeout_ms: None,
            } => write!(
                f,
                "the agent at {path} sent an incomplete response: the header promised \
                 {expected} bytes, and the connection closed after {received}"
            ),
            AgentError::Incomplete {
                path,
                received,
                expected,
                timeout_ms: Some(ms),
            } => write!(
                f,
                "the agent at {path} sent an incomplete response: {received} of the \
                 {expected} bytes its header promised arrived within {ms} ms \
                 (ENVPROXY_TIMEOUT_MS)"
            ),
            AgentError::Io(path, err) => {
                write!(f, "I/O error talking to the agent at {path}: {err}")
            }
            AgentError::Protocol(path, err) => {
                write!(f, "the agent at {path} sent a malformed response: {err}")
            }
            AgentError::ForeignAgent {
                path,
                agent_uid,
                own_uid,
            } => write!(
                f,
                "the agent socket {path} is served by uid {agent_uid}, not by this user \
                 (uid {own_uid}) or root; requests are not sent to it (check who created \
                 the socket, or point ENVPROXY_SOCKET at your own agent)"
            ),
            AgentError::BackingOff(last) => {
                write!(
                    f,
                    "{last} (this request was not sent, because requests pause for {} s \
                     after a failure)",
                    BACKOFF_MS / 1000
                )
            }
            AgentError::TrailingBytes(path) => {
                write!(
                    f,
                    "the agent at {path} sent more than one response to one request"
                )
            }
            AgentError::Request(err) => write!(f, "the request cannot be sent: {err}"),
        }
    }
}

/// A connection this module opened: its descriptor and the identity of its socket.
#[derive(Clone, Copy, Debug)]
struct Connection {
    fd: c_int,
    device: u64,
    inode: u64,
    /// Whether `fd` is registered with `descriptors::watch`. An unregistered descriptor is
    /// checked before every request.
    watched: bool,
    /// The value of `descriptors::changes()` read before the last `fstat` that showed `fd` to
    /// be this socket.
    checked_at_change: u64,
    /// Coarse-clock milliseconds of the last `fstat` or complete response.
    last_used_ms: u64,
}

impl Connection {
    /// Registers `fd`, a socket this module has just connected, and records the identity of
    /// its socket. Closes `fd` when `fstat` fails.
    fn identify(fd: c_int) -> io::Result<Connection> {
        let watched = descriptors::watch(fd);
        let checked_at_change = descriptors::changes();
        match socket_status(fd) {
            Ok(status) => Ok(Connection {
                fd,
                device: status.st_dev,
                inode: status.st_ino,
                watched,
                checked_at_change,
                last_used_ms: clock::coarse_ms(),
            }),
            Err(err) => {
                if watched {
                    descriptors::unwatch(fd);
                }
                close(fd);
                Err(err)
            }
        }
    }

    /// Returns whether the descriptor may be used without `fstat`: no interposed close or
    /// `dup2` has covered it since its last check, and it was used within
    /// [`RECHECK_AFTER_MS`].
    fn is_unchanged(&self, changes: u64, now_ms: u64) -> bool {
        self.watched
            && self.checked_at_change == changes
            && now_ms.saturating_sub(self.last_used_ms) < RECHECK_AFTER_MS
    }

    /// Returns whether the descriptor still refers to this connection's socket, and not to a
    /// file or socket the program opened on the same number after closing ours.
    fn is_still_ours(&self) -> bool {
        match socket_status(self.fd) {
            Ok(status) => status.st_dev == self.device && status.st_ino == self.inode,
            Err(_) => false,
        }
    }

    /// Checks the descriptor with `fstat` and records the check. `changes` must have been
    /// read before the call.
    fn recheck(&mut self, changes: u64, now_ms: u64) -> bool {
        if !self.is_still_ours() {
            return false;
        }
        self.checked_at_change = changes;
        self.last_used_ms = now_ms;
        true
    }

    /// Closes the descriptor if it is still this connection's socket; otherwise the program
    /// owns that number now, and the connection is only forgotten. Returns whether it was
    /// still this connection's socket.
    fn release(self) -> bool {
        let ours = self.is_still_ours();
        if self.watched {
            descriptors::unwatch(self.fd);
        }
        if ours {
            close(self.fd);
        }
        ours
    }
}

/// Returns the `fstat` of `fd`, or an error when `fd` is not open or is not a socket.
fn socket_status(fd: c_int) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat`, and fstat only writes into it.
    let mut status: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `status` is a writable stat; fstat on any descriptor number is safe.
    if unsafe { libc::fstat(fd, &mut status) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if status.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    Ok(status)
}

struct Pool {
    idle: Vec<Connection>,
}

static POOL: SpinLock<Pool> = SpinLock::new(Pool { idle: Vec::new() });

/// Sends one request and returns the agent's response, within `ENVPROXY_TIMEOUT_MS`.
///
/// After a failure to reach the agent, further requests fail at once for [`BACKOFF_MS`].
pub fn request(request: &Request) -> Result<Response, AgentError> {
    let now = clock::coarse_ms();
    if now < DOWN_UNTIL_MS.load(Ordering::Relaxed) {
        return Err(AgentError::BackingOff(LAST_FAILURE.lock().clone()));
    }
    let outcome = send_request(request);
    match &outcome {
        Ok(_) => DOWN_UNTIL_MS.store(0, Ordering::Relaxed),
        Err(AgentError::Request(_)) | Err(AgentError::DescriptorReplaced(_)) => {}
        Err(err) => {
            *LAST_FAILURE.lock() = err.to_string();
            DOWN_UNTIL_MS.store(clock::coarse_ms() + BACKOFF_MS, Ordering::Relaxed);
        }
    }
    outcome
}

fn send_request(request: &Request) -> Result<Response, AgentError> {
    let settings = settings::get();
    let deadline_ms = clock::precise_ms() + settings.timeout_ms;
    let socket = &settings.socket;
    let mut frame = Vec::with_capacity(64);
    request.encode(&mut frame).map_err(AgentError::Request)?;

    if let Some(connection) = take_idle() {
        match exchange(connection.fd, &frame, deadline_ms, socket) {
            Ok(response) => {
                put_idle(connection);
                return Ok(response);
            }
            Err(err) => {
                // A descriptor that is no longer ours was closed behind the interposed
                // functions; a new connection may succeed, as after an agent restart.
                let ours = connection.release();
                if ours && !err.is_stale_connection() {
                    return Err(err);
                }
            }
        }
    }

    // EBADF or ENOTSOCK on a number that is no longer ours means another thread closed or
    // reused it during the request, which is no agent failure. The connection is then dropped
    // without closing the number, and the request is sent once more at once.
    let mut replaced_before = false;
    loop {
        let connection = connect(socket, deadline_ms)?;
        match exchange(connection.fd, &frame, deadline_ms, socket) {
            Ok(response) => {
                put_idle(connection);
                return Ok(response);
            }
            Err(err) => {
                let ours = connection.release();
                if ours || !err.is_descriptor_error() {
                    return Err(err);
                }
                if replaced_before {
                    return Err(AgentError::DescriptorReplaced(display(socket)));
                }
                replaced_before = true;
            }
        }
    }
}

/// Takes an idle connection whose descriptor is still its socket. Connections whose number the
/// program closed or reused are dropped from the pool without touching the descriptor.
///
/// NOTE: another thread of the program can still close and reuse the number between this check
/// and the request. The request then fails at once or times out, because every send and
/// receive is non-blocking, and the descriptor is left open.
fn take_idle() -> Option<Connection> {
    // Read before any fstat below, so a close that overlaps the check moves the count past it.
    let changes = descriptors::changes();
    let now_ms = clock::coarse_ms();
    let mut pool = POOL.lock();
    if forked::is_new_process() {
        // Inherited through a fork that skipped the handlers (for example `clone`).
        pool.idle.drain(..).for_each(|connection| {
            connection.release();
        });
        forked::claim();
    }
    while let Some(mut connection) = pool.idle.pop() {
        if connection.is_unchanged(changes, now_ms) || connection.recheck(changes, now_ms) {
            return Some(connection);
        }
        if connection.watched {
            descriptors::unwatch(connection.fd);
        }
    }
    None
}

fn put_idle(mut connection: Connection) {
    connection.last_used_ms = clock::coarse_ms();
    let mut pool = POOL.lock();
    if !forked::is_new_process() && pool.idle.len() < MAX_IDLE {
        pool.idle.push(connection);
        return;
    }
    drop(pool);
    connection.release();
}

/// Closes a socket this module opened and has just proven to be its own.
fn close(fd: c_int) {
    // The next `close` is called directly: the interposed one would only look for `fd` among
    // the registered descriptors, which no longer include it.
    match real::close() {
        // SAFETY: `fd` is a socket this module opened and no longer uses.
        Some(next) => unsafe { next(fd) },
        // SAFETY: as above.
        None => unsafe { libc::close(fd) },
    };
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn connect(path: &Path, deadline_ms: u64) -> Result<Connection, AgentError> {
    let path_text = display(path);
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(AgentError::PathTooLong(path_text));
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let address_len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as u32;

    let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(AgentError::Connect(path_text, io::Error::last_os_error()));
    }
    let fd =
        above_standard_streams(fd).map_err(|err| AgentError::Connect(path_text.clone(), err))?;
    loop {
        // SAFETY: `address` is an initialised sockaddr_un and `address_len` covers its path.
        let rc = unsafe {
            libc::connect(
                fd,
                (&address as *const libc::sockaddr_un).cast(),
                address_len,
            )
        };
        if rc == 0 {
            let fd = check_agent_owner(fd, path_text.clone())?;
            // `identify` closes `fd` itself when it fails.
            return Connection::identify(fd).map_err(|err| AgentError::Connect(path_text, err));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // The listen backlog is full: retry until the deadline.
            Some(libc::EAGAIN) => {
                if clock::precise_ms() >= deadline_ms {
                    close(fd);
                    return Err(AgentError::TimedOut(path_text, settings::get().timeout_ms));
                }
                sleep_ms(1);
            }
            Some(libc::ENOENT) => {
                close(fd);
                return Err(AgentError::NoSocket(path_text));
            }
            _ => {
                close(fd);
                return Err(AgentError::Connect(path_text, err));
            }
        }
    }
}

/// Moves `fd` to 3 or above. A program that closed stdin, stdout or stderr would otherwise get
/// the socket on that number, and its own writes to the stream would corrupt the protocol.
fn above_standard_streams(fd: c_int) -> io::Result<c_int> {
    if fd > 2 {
        return Ok(fd);
    }
    // SAFETY: `fd` is an open descriptor this module owns.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    let err = io::Error::last_os_error();
    close(fd);
    if moved < 0 {
        return Err(err);
    }
    Ok(moved)
}

/// Accepts the connection only when the agent runs as this user or as root (the node agent),
/// so another user's socket at the expected path never learns which references are read.
fn check_agent_owner(fd: c_int, path_text: String) -> Result<c_int, AgentError> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `credentials` is a writable ucred and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        close(fd);
        return Err(AgentError::Connect(path_text, err));
    }
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    if credentials.uid != own_uid && credentials.uid != 0 {
        close(fd);
        return Err(AgentError::ForeignAgent {
            path: path_text,
            agent_uid: credentials.uid,
            own_uid,
        });
    }
    Ok(fd)
}

fn sleep_ms(ms: u64) {
    // SAFETY: poll with no descriptors only sleeps.
    unsafe { libc::poll(std::ptr::null_mut(), 0, ms as c_int) };
}

/// Waits until `fd` is ready for `events` or the deadline passes.
fn wait(fd: c_int, events: i16, deadline_ms: u64, socket: &Path) -> Result<(), AgentError> {
    loop {
        let now = clock::precise_ms();
        if now >= deadline_ms {
            return Err(AgentError::TimedOut(
                display(socket),
                settings::get().timeout_ms,
            ));
        }
        let mut poll_fd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let timeout = (deadline_ms - now).min(c_int::MAX as u64) as c_int;
        // SAFETY: `poll_fd` is one valid pollfd.
        let rc = unsafe { libc::poll(&mut poll_fd, 1, timeout) };
        if rc > 0 {
            return Ok(());
        }
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(AgentError::Io(display(socket), io::Error::last_os_error()));
        }
    }
}

/// Writes one request frame and reads one response frame.
fn exchange(
    fd: c_int,
    frame: &[u8],
    deadline_ms: u64,
    socket: &Path,
) -> Result<Response, AgentError> {
    send_frame(fd, frame, deadline_ms, socket)?;
    receive_response(fd, deadline_ms, socket)
}

fn send_frame(fd: c_int, frame: &[u8], deadline_ms: u64, socket: &Path) -> Result<(), AgentError> {
    let mut written = 0;
    while written < frame.len() {
        let rest = &frame[written..];
        // MSG_NOSIGNAL turns a closed peer into EPIPE instead of a SIGPIPE that would kill the
        // host program. MSG_DONTWAIT keeps the call from blocking even if the descriptor is no
        // longer the non-blocking socket that this module opened.
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
        // SAFETY: `rest` is a valid buffer.
        let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), flags) };
        if n >= 0 {
            written += n as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => wait(fd, libc::POLLOUT, deadline_ms, socket)?,
            _ => return Err(AgentError::Io(display(socket), err)),
        }
    }
    Ok(())
}

/// Reads one response. It waits in `poll` before each read, because the agent rarely
/// responds before the request's sender blocks: on a shared CPU it runs only then. A response
/// that fits [`RECEIVE_BUFFER_LEN`] is decoded straight from the stack buffer.
fn receive_response(fd: c_int, deadline_ms: u64, socket: &Path) -> Result<Response, AgentError> {
    let mut chunk = [0u8; RECEIVE_BUFFER_LEN];
    // Bytes of a response that needed more than one read.
    let mut received: Vec<u8> = Vec::new();
    loop {
        if let Err(err) = wait(fd, libc::POLLIN, deadline_ms, socket) {
            let timeout_ms = settings::get().timeout_ms;
            return Err(incomplete(&received, socket, Some(timeout_ms)).unwrap_or(err));
        }
        // SAFETY: `chunk` is a valid writable buffer of its length. MSG_DONTWAIT: as for send.
        let n = unsafe {
            libc::recv(
                fd,
                chunk.as_mut_ptr().cast(),
                chunk.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return Err(incomplete(&received, socket, None)
                .unwrap_or_else(|| AgentError::Closed(display(socket))));
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // A readiness that another reader consumed, or a signal: wait again.
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                // A peer that closes with our request still unread resets the connection.
                Some(libc::ECONNRESET) => {
                    if let Some(incomplete) = incomplete(&received, socket, None) {
                        return Err(incomplete);
                    }
                    return Err(AgentError::Io(display(socket), err));
                }
                _ => return Err(AgentError::Io(display(socket), err)),
            }
        }
        let bytes = &chunk[..n as usize];
        let complete = if received.is_empty() {
            let complete = decode_whole(bytes, socket)?;
            if complete.is_none() {
                received.extend_from_slice(bytes);
            }
            complete
        } else {
            received.extend_from_slice(bytes);
            decode_whole(&received, socket)?
        };
        if let Some(response) = complete {
            return Ok(response);
        }
        debug_assert!(received.len() <= MAX_RESPONSE_LEN);
    }
}

/// Returns the error for a response cut short after `received` bytes, or `None` when not
/// even its 3-byte header (status byte and big-endian payload length) arrived.
fn incomplete(received: &[u8], socket: &Path, timeout_ms: Option<u64>) -> Option<AgentError> {
    let [_, high, low, payload @ ..] = received else {
        return None;
    };
    Some(AgentError::Incomplete {
        path: display(socket),
        received: payload.len(),
        expected: usize::from(u16::from_be_bytes([*high, *low])),
        timeout_ms,
    })
}

/// Decodes `bytes` as exactly one response, or returns `None` while it is incomplete.
fn decode_whole(bytes: &[u8], socket: &Path) -> Result<Option<Response>, AgentError> {
    match Response::decode(bytes) {
        Ok(Some((response, used))) if used == bytes.len() => Ok(Some(response)),
        // Bytes after the response mean the stream is out of step: drop the connection.
        Ok(Some(_)) => Err(AgentError::TrailingBytes(display(socket))),
        Ok(None) => Ok(None),
        Err(err) => Err(AgentError::Protocol(display(socket), err)),
    }
}

extern "C" fn before_fork() {
    // Hold the lock across fork so the child never inherits it locked by another thread.
    POOL.lock_before_fork();
}

extern "C" fn after_fork_parent() {
    // SAFETY: `before_fork` took the lock in this thread.
    unsafe { POOL.unlock_after_fork() };
}

extern "C" fn after_fork_child() {
    // SAFETY: `before_fork` took the lock in the parent's forking thread, which is this thread
    // in the child.
    let pool = unsafe { POOL.data_while_forking() };
    // Close the child's copies; the parent's connections stay open.
    pool.idle.drain(..).for_each(|connection| {
        connection.release();
    });
    forked::claim();
    // SAFETY: as above.
    unsafe { POOL.unlock_after_fork() };
}

/// Registers the handlers that drop inherited connections in a forked child.
pub fn register_fork_handlers() {
    // SAFETY: the handlers are plain functions that live for the life of the process.
    unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_parent),
            Some(after_fork_child),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_off_message_states_pause() {
        let message = AgentError::BackingOff("no agent socket at /run/a.sock".into()).to_string();
        assert_eq!(
            message,
            "no agent socket at /run/a.sock (this request was not sent, because requests \
             pause for 1 s after a failure)"
        );
    }

    #[test]
    fn descriptor_limit_message_names_process() {
        for errno in [libc::EMFILE, libc::ENFILE] {
            let err = io::Error::from_raw_os_error(errno);
            let message = AgentError::Connect("/run/a.sock".into(), err).to_string();
            assert!(message.contains("no free file descriptors"), "{message}");
            assert!(!message.contains("start envproxy-agent"), "{message}");
        }
    }

    #[test]
    fn closed_descriptor_is_no_outage() {
        for errno in [libc::EBADF, libc::ENOTSOCK] {
            let err = AgentError::Io("/run/a.sock".into(), io::Error::from_raw_os_error(errno));
            assert!(err.is_descriptor_error(), "{err}");
        }
        let reset = AgentError::Io(
            "/run/a.sock".into(),
            io::Error::from_raw_os_error(libc::ECONNRESET),
        );
        assert!(!reset.is_descriptor_error());

        let message = AgentError::DescriptorReplaced("/run/a.sock".into()).to_string();
        assert!(
            message.contains("the program closed or replaced"),
            "{message}"
        );
        assert!(!message.contains("start envproxy-agent"), "{message}");
    }
}
