//! Default location of the local agent's socket.

use std::path::{Path, PathBuf};

/// File name of the agent socket inside its directory.
pub const SOCKET_FILE_NAME: &str = "agent.sock";

/// Returns the private directory of a user's local agent.
///
/// `$XDG_RUNTIME_DIR/envproxy` when the runtime directory is set and absolute, otherwise
/// `/tmp/envproxy-<uid>`. The agent creates the directory with mode 0700 and refuses to use one
/// that another user owns.
pub fn local_socket_dir(xdg_runtime_dir: Option<&Path>, uid: u32) -> PathBuf {
    match xdg_runtime_dir {
        Some(dir) if dir.is_absolute() => dir.join("envproxy"),
        _ => PathBuf::from(format!("/tmp/envproxy-{uid}")),
    }
}

/// Returns the default socket path of a user's local agent.
pub fn local_socket_path(xdg_runtime_dir: Option<&Path>, uid: u32) -> PathBuf {
    local_socket_dir(xdg_runtime_dir, uid).join(SOCKET_FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_under_runtime_dir() {
        let path = local_socket_path(Some(Path::new("/run/user/1000")), 1000);
        assert_eq!(path, Path::new("/run/user/1000/envproxy/agent.sock"));
    }

    #[test]
    fn socket_under_tmp_without_runtime_dir() {
        assert_eq!(
            local_socket_path(None, 1000),
            Path::new("/tmp/envproxy-1000/agent.sock")
        );
        assert_eq!(
            local_socket_path(Some(Path::new("relative")), 7),
            Path::new("/tmp/envproxy-7/agent.sock")
        );
    }
}
