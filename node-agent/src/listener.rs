//! The agent's listening socket: its private directory, stale socket files and cleanup.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Maximum socket path length in bytes, because `sun_path` is 108 bytes including the final NUL.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// Mode of the socket directory when the agent creates it.
const DIRECTORY_MODE: u32 = 0o700;
/// Mode of the socket file. The directory already keeps other users out; this is a second layer.
const SOCKET_MODE: u32 = 0o600;
/// Modes in node mode, where processes of every uid in every pod connect.
const SHARED_DIRECTORY_MODE: u32 = 0o755;
const SHARED_SOCKET_MODE: u32 = 0o666;

/// Access to the socket: which users may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only the agent's user: directory 0700, socket 0600 (local mode).
    Private,
    /// Every user: directory 0755, socket 0666 (node mode, where the kernel's caller identity
    /// decides what a connection may read).
    Shared,
}

impl Access {
    fn directory_mode(self) -> u32 {
        match self {
            Access::Private => DIRECTORY_MODE,
            Access::Shared => SHARED_DIRECTORY_MODE,
        }
    }

    fn socket_mode(self) -> u32 {
        match self {
            Access::Private => SOCKET_MODE,
            Access::Shared => SHARED_SOCKET_MODE,
        }
    }
}

/// A socket that cannot be set up. Each message names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(
        "socket path {} is {len} bytes long, but Unix socket paths are limited to {max} bytes; \
         choose a shorter path",
        path.display(),
        max = MAX_SOCKET_PATH_LEN
    )]
    PathTooLong { path: PathBuf, len: usize },
    #[error("socket path {} has no parent directory", path.display())]
    NoDirectory { path: PathBuf },
    #[error("cannot create socket directory {}: {source}", path.display())]
    CreateDirectory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect {}: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("socket directory {} exists but is not a directory; remove it or choose another socket path", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "socket directory {} is owned by uid {owner}, but this agent runs as uid {uid}; \
         remove the directory or choose another socket path",
        path.display()
    )]
    DirectoryNotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "socket directory {} has mode {mode:04o}, so other users could replace the socket; \
         run `chmod go-w {}` or choose another socket path",
        path.display(),
        path.display()
    )]
    DirectoryWritable { path: PathBuf, mode: u32 },
    #[error("an agent is already listening on {}", path.display())]
    AlreadyListening { path: PathBuf },
    #[error("{} exists and is not a socket; remove it or choose another socket path", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale socket {}: {source}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The socket file this agent created. Dropping it removes the file, unless another process has
/// replaced it since.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: FileIdentity,
}

/// Device, inode and modification time of a file. The inode number alone is not enough,
/// because filesystems such as tmpfs reuse a freed inode number for the next new file. A later
/// `chmod` changes none of these fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    modified_secs: i64,
    modified_nanos: i64,
}

impl FileIdentity {
    fn of(meta: &fs::Metadata) -> FileIdentity {
        FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
            modified_secs: meta.mtime(),
            modified_nanos: meta.mtime_nsec(),
        }
    }
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let Ok(meta) = fs::symlink_metadata(&self.path) else {
            return;
        };
        if FileIdentity::of(&meta) != self.identity {
            tracing::debug!(
                socket = %self.path.display(),
                "socket file was replaced by another process; leaving it in place"
            );
            return;
        }
        if let Err(err) = fs::remove_file(&self.path) {
            tracing::warn!(socket = %self.path.display(), %err, "cannot remove the socket file");
        }
    }
}

/// Prepares the directory of `path`, replaces a stale socket file and listens on `path` with
/// mode 0600. `uid` is the user the directory must belong to.
///
/// Must be called from within a Tokio runtime.
pub fn bind(path: &Path, uid: u32) -> Result<(UnixListener, SocketFile), ListenerError> {
    bind_with_access(path, uid, Access::Private)
}

/// Like [`bind`], with the directory and socket modes of `access`.
pub fn bind_with_access(
    path: &Path,
    uid: u32,
    access: Access,
) -> Result<(UnixListener, SocketFile), ListenerError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(ListenerError::PathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    let directory = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => {
            return Err(ListenerError::NoDirectory {
                path: path.to_path_buf(),
            })
        }
    };
    prepare_directory(directory, uid, access.directory_mode())?;
    remove_stale_socket(path)?;

    let listener = UnixListener::bind(path).map_err(|source| ListenerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let inspect = |source| ListenerError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(inspect)?;
    let socket = SocketFile {
        path: path.to_path_buf(),
        identity: FileIdentity::of(&meta),
    };
    fs::set_permissions(path, Permissions::from_mode(access.socket_mode())).map_err(inspect)?;
    Ok((listener, socket))
}

/// Creates `directory` with `create_mode` when it is missing, and otherwise checks that other
/// users cannot write to it.
///
/// A directory with the sticky bit that root or `uid` owns, such as `/tmp`, is accepted although
/// others may write to it. The sticky bit stops them from removing or renaming a socket this agent
/// created, and the socket file itself has mode 0600.
fn prepare_directory(directory: &Path, uid: u32, create_mode: u32) -> Result<(), ListenerError> {
    let meta = match fs::metadata(directory) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(create_mode)
                .create(directory)
                .map_err(|source| ListenerError::CreateDirectory {
                    path: directory.to_path_buf(),
                    source,
                })?;
            tracing::debug!(directory = %directory.display(), "created socket directory");
            fs::metadata(directory).map_err(|source| ListenerError::Inspect {
                path: directory.to_path_buf(),
                source,
            })?
        }
        Err(source) => {
            return Err(ListenerError::Inspect {
                path: directory.to_path_buf(),
                source,
            })
        }
    };

    if !meta.is_dir() {
        return Err(ListenerError::NotADirectory {
            path: directory.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    let owner = meta.uid();
    if sticky && (owner == 0 || owner == uid) {
        return Ok(());
    }
    if owner != uid {
        return Err(ListenerError::DirectoryNotOwned {
            path: directory.to_path_buf(),
            owner,
            uid,
        });
    }
    if mode & 0o022 != 0 {
        return Err(ListenerError::DirectoryWritable {
            path: directory.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Removes a socket file that no process listens on. Fails when a process accepts connections on
/// it or the path is some other kind of file.
fn remove_stale_socket(path: &Path) -> Result<(), ListenerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenerError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ListenerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenerError::AlreadyListening {
            path: path.to_path_buf(),
        }),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing stale socket file");
            fs::remove_file(path).map_err(|source| ListenerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ListenerError::Inspect {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[tokio::test]
    async fn creates_private_directory_and_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket_dir = dir.path().join("a/b");
        let path = socket_dir.join("agent.sock");
        let (_listener, socket) = bind(&path, uid()).unwrap();
        assert_eq!(mode_of(&socket_dir), 0o700);
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(socket.path(), path);
        drop(socket);
        assert!(!path.exists(), "the socket file was not removed");
    }

    #[tokio::test]
    async fn rejects_group_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), Permissions::from_mode(0o770)).unwrap();
        let error = bind(&dir.path().join("agent.sock"), uid()).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, ListenerError::DirectoryWritable { mode: 0o770, .. }),
            "{message}"
        );
        assert!(message.contains("chmod go-w"), "{message}");
    }

    #[tokio::test]
    async fn rejects_directory_of_other_user() {
        let dir = tempfile::tempdir().unwrap();
        let error = bind(&dir.path().join("agent.sock"), uid() + 1).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, ListenerError::DirectoryNotOwned { .. }),
            "{message}"
        );
        assert!(
            message.contains(&format!("runs as uid {}", uid() + 1)),
            "{message}"
        );
    }

    #[tokio::test]
    async fn accepts_sticky_shared_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), Permissions::from_mode(0o1777)).unwrap();
        let path = dir.path().join("envproxy.sock");
        let (_listener, _socket) = bind(&path, uid()).unwrap();
        assert_eq!(mode_of(&path), 0o600);
    }

    #[tokio::test]
    async fn shared_access_opens_socket_to_all() {
        let dir = tempfile::tempdir().unwrap();
        let socket_dir = dir.path().join("node");
        let path = socket_dir.join("agent.sock");
        let (_listener, _socket) = bind_with_access(&path, uid(), Access::Shared).unwrap();
        assert_eq!(mode_of(&socket_dir), 0o755);
        assert_eq!(mode_of(&path), 0o666);
    }

    #[tokio::test]
    async fn replaces_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        // A socket file whose listener is gone, as a crashed agent leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (listener, _socket) = bind(&path, uid()).unwrap();
        let client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (_server_side, _) = listener.accept().await.unwrap();
        drop(client);
    }

    #[tokio::test]
    async fn refuses_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let (_listener, socket) = bind(&path, uid()).unwrap();
        let error = bind(&path, uid()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("an agent is already listening on {}", path.display())
        );
        // The failed attempt must not have removed the first agent's socket.
        assert!(path.exists());
        drop(socket);
    }

    #[tokio::test]
    async fn refuses_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        fs::write(&path, "").unwrap();
        let error = bind(&path, uid()).unwrap_err();
        assert!(matches!(error, ListenerError::NotASocket { .. }), "{error}");
    }

    #[tokio::test]
    async fn rejects_long_path() {
        let path = PathBuf::from(format!("/tmp/{}/agent.sock", "x".repeat(120)));
        let error = bind(&path, uid()).unwrap_err();
        assert!(
            matches!(error, ListenerError::PathTooLong { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn keeps_replaced_socket_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let (listener, socket) = bind(&path, uid()).unwrap();
        drop(listener);
        fs::remove_file(&path).unwrap();
        let (_other_listener, other_socket) = bind(&path, uid()).unwrap();
        drop(socket);
        assert!(
            path.exists(),
            "dropping the old handle removed the new socket"
        );
        drop(other_socket);
    }
}
