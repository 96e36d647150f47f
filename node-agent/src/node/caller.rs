//! The process at the other end of an accepted connection, pinned with a pidfd.
//!
//! `SO_PEERCRED` gives the pid that connected, but a pid is only a number: once that process
//! exits, the kernel may hand the same number to a new process, possibly in another pod. A
//! pidfd refers to one process for as long as the descriptor is open. So each read from
//! `/proc/PID/...` is followed by a check that the pidfd's process is still alive: while it
//! lives, its pid cannot have been reused, so the read came from that process.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use rustix::time::{clock_gettime, ClockId};

use super::cgroup::{parse_cgroup_file, CgroupConflict, PodContainer};
use crate::peer::peer_of;

/// Index of `starttime` among the fields after the command name in `/proc/PID/stat`.
/// `starttime` is field 22 of proc(5), and the fields after the name start at field 3.
const STAT_START_TIME_INDEX: usize = 22 - 3;

/// A point in time on `CLOCK_BOOTTIME`: time since boot, including time spent suspended.
///
/// This is the clock of the process start times in `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BootTime(Duration);

impl BootTime {
    /// Reads `CLOCK_BOOTTIME` now.
    pub fn now() -> Self {
        let now = clock_gettime(ClockId::Boottime);
        let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
        let nanoseconds = u32::try_from(now.tv_nsec).unwrap_or(0);
        BootTime(Duration::new(seconds, nanoseconds))
    }

    /// Builds a value from a duration since boot.
    pub fn from_duration(since_boot: Duration) -> Self {
        BootTime(since_boot)
    }

    /// Returns the time since boot.
    pub fn as_duration(&self) -> Duration {
        self.0
    }

    /// Converts to clock ticks since boot (`sysconf(_SC_CLK_TCK)` per second), rounded down
    /// like the kernel rounds process start times.
    fn as_clock_ticks(&self) -> u64 {
        let ticks_per_second = u128::from(rustix::param::clock_ticks_per_second());
        let ticks = self.0.as_nanos() * ticks_per_second / 1_000_000_000;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }
}

/// Origin of a [`Caller`]'s pidfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidfdSource {
    /// `SO_PEERPIDFD` (Linux 6.5 and later): the kernel's own reference to the process that
    /// connected, so no pid can be mixed up.
    PeerPidfd,
    /// `pidfd_open` on the `SO_PEERCRED` pid, accepted only if that process started no later
    /// than the connection was accepted.
    PidfdOpen,
}

/// A failure to identify the caller or to read its `/proc` entries. Messages name the pid and
/// the file, never file contents.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error("cannot read the peer credentials (SO_PEERCRED) of the connection: {0}")]
    PeerCredentials(#[source] io::Error),
    #[error(
        "the peer's pid is not visible in the agent's PID namespace (SO_PEERCRED returned pid \
         0); run the agent in the host PID namespace (hostPID)"
    )]
    PidNotVisible,
    #[error("cannot get a pidfd for peer pid {pid} with SO_PEERPIDFD: {source}")]
    PeerPidfd {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a pidfd for pid {pid}: {source}")]
    PidfdOpen {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error(
        "pid {pid} started {started_ticks} clock ticks after boot, later than the connection \
         was accepted ({accepted_ticks} ticks), so the pid now belongs to another process"
    )]
    StartedAfterAccept {
        pid: i32,
        started_ticks: u64,
        accepted_ticks: u64,
    },
    #[error("process {pid} exited")]
    Exited { pid: i32 },
    #[error("cannot read {path}: {source}")]
    ReadProc {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid {path}: {reason}")]
    InvalidProcFile { path: String, reason: &'static str },
    #[error("cannot poll the pidfd of pid {pid}: {source}")]
    Poll {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid}: {source}")]
    CgroupConflict {
        pid: i32,
        #[source]
        source: Box<CgroupConflict>,
    },
}

/// The process that connected to the agent, with its credentials and a pidfd that pins it.
#[derive(Debug)]
pub struct Caller {
    pid: i32,
    uid: u32,
    gid: u32,
    pidfd: OwnedFd,
    pidfd_source: PidfdSource,
}

impl Caller {
    /// Identifies the peer of an accepted Unix socket.
    ///
    /// Uses `SO_PEERPIDFD` and falls back to `pidfd_open` only when the kernel does not support
    /// that option (`ENOPROTOOPT`, before Linux 6.5). `accepted_at` is [`BootTime::now`] read
    /// right after `accept` returned; the fallback uses it to reject a reused pid.
    pub fn from_socket(socket: &impl AsFd, accepted_at: BootTime) -> Result<Self, CallerError> {
        match Self::from_socket_with(socket, accepted_at, PidfdSource::PeerPidfd) {
            Err(CallerError::PeerPidfd { source, .. })
                if source.raw_os_error() == Some(rustix::io::Errno::NOPROTOOPT.raw_os_error()) =>
            {
                Self::from_socket_with(socket, accepted_at, PidfdSource::PidfdOpen)
            }
            result => result,
        }
    }

    /// Identifies the peer of an accepted Unix socket with the given pidfd source and no
    /// fallback.
    pub fn from_socket_with(
        socket: &impl AsFd,
        accepted_at: BootTime,
        pidfd_source: PidfdSource,
    ) -> Result<Self, CallerError> {
        let peer = peer_of(socket).map_err(|errno| CallerError::PeerCredentials(errno.into()))?;
        if peer.pid <= 0 {
            return Err(CallerError::PidNotVisible);
        }
        let pid = peer.pid;

        let pidfd = match pidfd_source {
            // The kernel takes the pidfd and the SO_PEERCRED pid from the same peer record of
            // the socket, so they name one process. A peer that already exited is refused
            // here; one that exits later is caught by the liveness check after each read of
            // its /proc entries.
            PidfdSource::PeerPidfd => {
                let pidfd = peer_pidfd(socket.as_fd())
                    .map_err(|source| CallerError::PeerPidfd { pid, source })?;
                let alive = pidfd_is_alive(pidfd.as_fd())
                    .map_err(|source| CallerError::Poll { pid, source })?;
                if !alive {
                    return Err(CallerError::Exited { pid });
                }
                pidfd
            }
            PidfdSource::PidfdOpen => open_pidfd_started_by(pid, accepted_at)?,
        };
        Ok(Caller {
            pid,
            uid: peer.uid,
            gid: peer.gid,
            pidfd,
            pidfd_source,
        })
    }

    /// Process ID in the agent's PID namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// User ID the process had when it connected.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Group ID the process had when it connected.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Borrows the pidfd that pins the process.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Returns the origin of the pidfd.
    pub fn pidfd_source(&self) -> PidfdSource {
        self.pidfd_source
    }

    /// Returns whether the process is still running. A process that exited but was not yet
    /// reaped by its parent (a zombie) counts as exited, and so does a pidfd that cannot be
    /// polled.
    pub fn is_alive(&self) -> bool {
        matches!(pidfd_is_alive(self.pidfd.as_fd()), Ok(true))
    }

    /// Fails with [`CallerError::Exited`] unless the process is still running, so that any
    /// `/proc/PID` read made before this call came from this process.
    pub fn ensure_alive(&self) -> Result<(), CallerError> {
        let alive = pidfd_is_alive(self.pidfd.as_fd()).map_err(|source| CallerError::Poll {
            pid: self.pid,
            source,
        })?;
        if alive {
            Ok(())
        } else {
            Err(CallerError::Exited { pid: self.pid })
        }
    }

    /// Reads the pod and container of the process from `/proc/PID/cgroup`.
    ///
    /// Returns `Ok(None)` for a process outside any pod. Fails with [`CallerError::Exited`]
    /// when the process exited before the read was confirmed, never with another process's
    /// cgroup.
    pub fn pod(&self) -> Result<Option<PodContainer>, CallerError> {
        let text = read_proc_file(self, "cgroup")?;
        parse_cgroup_file(&text).map_err(|source| CallerError::CgroupConflict {
            pid: self.pid,
            source: Box::new(source),
        })
    }
}

/// Reads `/proc/PID/<name>` of the caller and confirms through the pidfd that the caller was
/// alive for the whole read.
fn read_proc_file(caller: &Caller, name: &str) -> Result<String, CallerError> {
    let path = format!("/proc/{}/{name}", caller.pid);
    let read = fs::read_to_string(&path);
    caller.ensure_alive()?;
    read.map_err(|source| CallerError::ReadProc { path, source })
}

/// Returns whether the process behind `pidfd` is running: a pidfd polls readable once the
/// process has exited (pidfd_open(2)).
fn pidfd_is_alive(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    let no_wait = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&no_wait)) {
            Ok(0) => return Ok(true),
            Ok(_) => return Ok(false),
            Err(rustix::io::Errno::INTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Opens a pidfd for `pid` and accepts it only if that process started no later than
/// `accepted_at`, because a process that started after the accept cannot have connected.
///
/// NOTE: a peer that exits between `connect` and `accept` frees its pid, and a process that
/// reuses the pid in that window passes this check. Start times also have clock-tick
/// resolution (usually 10 ms), so a process started in the same tick as the accept passes.
/// `SO_PEERPIDFD` has neither gap.
fn open_pidfd_started_by(pid: i32, accepted_at: BootTime) -> Result<OwnedFd, CallerError> {
    let raw_pid = Pid::from_raw(pid).ok_or(CallerError::PidNotVisible)?;
    let pidfd = pidfd_open(raw_pid, PidfdFlags::empty()).map_err(|errno| {
        if errno == rustix::io::Errno::SRCH {
            CallerError::Exited { pid }
        } else {
            CallerError::PidfdOpen {
                pid,
                source: errno.into(),
            }
        }
    })?;

    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path);
    if !pidfd_is_alive(pidfd.as_fd()).map_err(|source| CallerError::Poll { pid, source })? {
        return Err(CallerError::Exited { pid });
    }
    let stat = stat.map_err(|source| CallerError::ReadProc {
        path: path.clone(),
        source,
    })?;
    let started_ticks = parse_start_time(&stat).ok_or(CallerError::InvalidProcFile {
        path,
        reason: "no start time in field 22",
    })?;

    let accepted_ticks = accepted_at.as_clock_ticks();
    if started_ticks > accepted_ticks {
        return Err(CallerError::StartedAfterAccept {
            pid,
            started_ticks,
            accepted_ticks,
        });
    }
    Ok(pidfd)
}

/// Reads `starttime` (clock ticks after boot) from the content of `/proc/PID/stat`.
///
/// The command name in field 2 is in parentheses and may itself contain spaces and `)`, so the
/// fields are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name
        .split_ascii_whitespace()
        .nth(STAT_START_TIME_INDEX)?
        .parse()
        .ok()
}

/// Gets a pidfd for the process that connected the socket (`SO_PEERPIDFD`).
///
/// Neither rustix 1.1 nor nix 0.29 wraps this option, so the call goes through libc.
#[allow(unsafe_code)]
fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;

    let mut raw_pidfd: libc::c_int = -1;
    let expected_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let mut len = expected_len;
    // SAFETY: `raw_pidfd` and `len` are live locals for the whole call, and `len` gives the
    // kernel the buffer size of one `c_int`, so it writes at most that many bytes.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut raw_pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    if len != expected_len || raw_pidfd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERPIDFD returned no file descriptor",
        ));
    }
    // SAFETY: on success the kernel installed `raw_pidfd` as a new descriptor of this process,
    // and nothing else owns it, so the `OwnedFd` becomes its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw_pidfd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn start_time_parses_names_with_parentheses() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 10000 200 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("4242 (short) S 1 2 3"), None);
        assert_eq!(parse_start_time("no parentheses at all"), None);
    }

    #[test]
    fn boot_time_converts_to_ticks() {
        let ticks_per_second = rustix::param::clock_ticks_per_second();
        let time = BootTime::from_duration(Duration::from_millis(2500));
        assert_eq!(time.as_clock_ticks(), ticks_per_second * 5 / 2);
        assert!(BootTime::now() > time);
    }

    #[test]
    fn socketpair_peer_pinned_both_ways() {
        let (left, _right) = UnixStream::pair().unwrap();
        let accepted_at = BootTime::now();
        for source in [PidfdSource::PeerPidfd, PidfdSource::PidfdOpen] {
            let caller = Caller::from_socket_with(&left, accepted_at, source).unwrap();
            assert_eq!(caller.pid(), std::process::id() as i32, "{source:?}");
            assert_eq!(
                caller.uid(),
                rustix::process::geteuid().as_raw(),
                "{source:?}"
            );
            assert_eq!(
                caller.gid(),
                rustix::process::getegid().as_raw(),
                "{source:?}"
            );
            assert_eq!(caller.pidfd_source(), source);
            assert!(caller.is_alive(), "{source:?}");
            assert!(caller.ensure_alive().is_ok(), "{source:?}");
        }
    }

    #[test]
    fn from_socket_prefers_peer_pidfd() {
        let (left, _right) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(&left, BootTime::now()).unwrap();
        // SO_PEERPIDFD exists since Linux 6.5; older kernels take the fallback.
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = numbers.next().unwrap().parse().unwrap();
        let minor: u32 = numbers.next().unwrap().parse().unwrap();
        let expected = if (major, minor) >= (6, 5) {
            PidfdSource::PeerPidfd
        } else {
            PidfdSource::PidfdOpen
        };
        assert_eq!(caller.pidfd_source(), expected, "kernel {release}");
    }

    #[test]
    fn fallback_rejects_process_started_after_accept() {
        let (left, _right) = UnixStream::pair().unwrap();
        let long_ago = BootTime::from_duration(Duration::ZERO);
        let error = Caller::from_socket_with(&left, long_ago, PidfdSource::PidfdOpen).unwrap_err();
        assert!(
            matches!(error, CallerError::StartedAfterAccept { pid, .. } if pid == std::process::id() as i32),
            "{error}"
        );
        // The peer pidfd needs no start time, so the same accept time is no obstacle.
        assert!(Caller::from_socket_with(&left, long_ago, PidfdSource::PeerPidfd).is_ok());
    }

    #[test]
    fn pod_matches_own_cgroup_file() {
        let (left, _right) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(&left, BootTime::now()).unwrap();
        let own_cgroup = fs::read_to_string("/proc/self/cgroup").unwrap();
        let expected = parse_cgroup_file(&own_cgroup).unwrap();
        assert_eq!(caller.pod().unwrap(), expected);
    }
}
