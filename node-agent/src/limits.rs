//! Process resource limits the agent adjusts at start.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The `RLIMIT_NOFILE` soft limit before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    pub previous_soft: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft limit on open files to the hard limit, so thousands of client connections
/// fit. Each connection costs one file descriptor.
///
/// The limit is inherited by child processes. A caller that starts other programs should restore
/// `previous_soft` in the child, because programs that use `select(2)` fail on descriptors above
/// 1023.
pub fn raise_open_files_limit() -> nix::Result<OpenFilesLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(OpenFilesLimit {
        previous_soft: soft,
        soft: hard,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_reaches_hard_limit() {
        let limit = raise_open_files_limit().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
        assert_eq!(limit.soft, hard);
        assert!(limit.previous_soft <= limit.soft);
    }
}
