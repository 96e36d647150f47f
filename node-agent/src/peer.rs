//! Identity of the process at the other end of a connection, from the kernel.

use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// The credentials the kernel recorded when the peer connected (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// A peer that runs as another user than the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "permission denied: this agent serves uid {agent_uid} only; the caller runs as uid {peer_uid}"
)]
pub struct PeerRejected {
    pub agent_uid: u32,
    pub peer_uid: u32,
}

/// Reads the peer credentials of a connected Unix socket.
pub fn peer_of(socket: &impl AsFd) -> nix::Result<Peer> {
    let credentials = getsockopt(socket, PeerCredentials)?;
    Ok(Peer {
        pid: credentials.pid(),
        uid: credentials.uid(),
        gid: credentials.gid(),
    })
}

/// Returns whether the peer of a connected stream socket has closed its end, so that a failure
/// to identify it is explained by the close rather than by the process.
pub fn peer_closed(socket: &impl AsFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let no_wait = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(socket, PollFlags::RDHUP)];
    match poll(&mut fds, Some(&no_wait)) {
        Ok(0) | Err(_) => false,
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP),
    }
}

/// Admits only peers that run as `agent_uid`, the local agent's effective uid.
pub fn authorize(peer: &Peer, agent_uid: u32) -> Result<(), PeerRejected> {
    if peer.uid == agent_uid {
        Ok(())
    } else {
        Err(PeerRejected {
            agent_uid,
            peer_uid: peer.uid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn socketpair_peer_is_this_process() {
        let (left, _right) = UnixStream::pair().unwrap();
        let peer = peer_of(&left).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(peer.gid, nix::unistd::getegid().as_raw());
    }

    #[test]
    fn other_uid_is_rejected_with_both_ids() {
        let peer = Peer {
            pid: 10,
            uid: 65534,
            gid: 65534,
        };
        let error = authorize(&peer, 1000).unwrap_err();
        assert_eq!(
            error.to_string(),
            "permission denied: this agent serves uid 1000 only; the caller runs as uid 65534"
        );
        assert!(authorize(&Peer { uid: 1000, ..peer }, 1000).is_ok());
    }
}
