//! Reads a small file inside a caller's root filesystem through `/proc/PID/root`.
//!
//! The agent reads a pod's projected service-account token from inside the calling container.
//! The container controls every path component there, so the path is resolved with
//! `openat2(2)` and these flags:
//!
//! - `RESOLVE_IN_ROOT`: `/proc/PID/root` is the root for the whole lookup, so absolute
//!   symlinks and `..` stay inside the container instead of reaching the agent's files.
//! - `RESOLVE_NO_MAGICLINKS`: links such as `/proc/self/root` or `/proc/PID/fd/N` inside the
//!   container cannot jump to another filesystem tree.
//!
//! `RESOLVE_NO_XDEV` is deliberately absent: the kubelet mounts each projected token volume as
//! its own tmpfs inside the container, so refusing mount crossings would break every real pod.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{open, openat2, Mode, OFlags, ResolveFlags};
use zeroize::Zeroizing;

use super::caller::{Caller, CallerError};

/// A file inside a caller's root filesystem that cannot be read. Messages name the pid and the
/// path inside the container, never the file's content.
#[derive(Debug, thiserror::Error)]
pub enum ProcRootError {
    #[error("cannot open the root directory of pid {pid} (/proc/{pid}/root): {source}")]
    OpenRoot {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {} inside the root of pid {pid}: {source}", path.display())]
    Open {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} inside the root of pid {pid} is a {kind}, not a regular file", path.display())]
    NotRegularFile {
        pid: i32,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{} inside the root of pid {pid} is larger than {max_len} bytes", path.display())]
    TooLarge {
        pid: i32,
        path: PathBuf,
        max_len: usize,
    },
    #[error("cannot read {} inside the root of pid {pid}: {source}", path.display())]
    Read {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot confirm that pid {pid} still runs after reading {}: {source}", path.display())]
    Caller {
        path: PathBuf,
        pid: i32,
        #[source]
        source: CallerError,
    },
}

/// Reads the regular file at `path` inside the caller's root filesystem, at most `max_len`
/// bytes.
///
/// `path` is resolved as if the caller's root were `/` (a relative path starts there too).
/// The file is opened with `O_NONBLOCK`, so a FIFO planted at the path cannot block the agent,
/// and anything but a regular file is rejected before it is read. After the read the caller's
/// pidfd must show the process still alive; otherwise the pid may already belong to another
/// process and the content is discarded. The returned bytes are zeroed when dropped, because
/// such files hold tokens.
pub fn read_file_in_root(
    caller: &Caller,
    path: &Path,
    max_len: usize,
) -> Result<Zeroizing<Vec<u8>>, ProcRootError> {
    let pid = caller.pid();
    let root = open(
        format!("/proc/{pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| ProcRootError::OpenRoot {
        pid,
        source: errno.into(),
    })?;

    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let file = openat2(&root, path, flags, Mode::empty(), resolve).map_err(|errno| {
        ProcRootError::Open {
            pid,
            path: path.to_owned(),
            source: errno.into(),
        }
    })?;
    let file = File::from(file);
    let content = read_regular_file(file, pid, path, max_len)?;

    caller
        .ensure_alive()
        .map_err(|source| ProcRootError::Caller {
            path: path.to_owned(),
            pid,
            source,
        })?;
    Ok(content)
}

/// Reads an opened file if it is a regular file of at most `max_len` bytes.
fn read_regular_file(
    file: File,
    pid: i32,
    path: &Path,
    max_len: usize,
) -> Result<Zeroizing<Vec<u8>>, ProcRootError> {
    let read_error = |source| ProcRootError::Read {
        pid,
        path: path.to_owned(),
        source,
    };
    let metadata = file.metadata().map_err(read_error)?;
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        return Err(ProcRootError::NotRegularFile {
            pid,
            path: path.to_owned(),
            kind: file_type_name(file_type),
        });
    }

    // Reading one byte past the limit separates a file of exactly `max_len` bytes from a larger
    // one.
    let limit = u64::try_from(max_len).unwrap_or(u64::MAX).saturating_add(1);
    // Sized up front so that the buffer is not reallocated, which would leave an unzeroed copy.
    let capacity = usize::try_from(metadata.len())
        .unwrap_or(max_len)
        .min(max_len)
        + 1;
    let mut content = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(limit)
        .read_to_end(&mut content)
        .map_err(read_error)?;
    if content.len() > max_len {
        return Err(ProcRootError::TooLarge {
            pid,
            path: path.to_owned(),
            max_len,
        });
    }
    Ok(content)
}

fn file_type_name(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::caller::BootTime;
    use std::os::unix::net::UnixStream;

    /// Builds a caller for this test process, whose root is the agent's own `/`.
    fn own_caller() -> (Caller, UnixStream) {
        let (left, right) = UnixStream::pair().unwrap();
        let caller = Caller::from_socket(&left, BootTime::now()).unwrap();
        (caller, right)
    }

    #[test]
    fn reads_file_up_to_limit() {
        let (caller, _peer) = own_caller();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        std::fs::write(&path, b"0123456789").unwrap();

        let content = read_file_in_root(&caller, &path, 10).unwrap();
        assert_eq!(content.as_slice(), b"0123456789");

        let error = read_file_in_root(&caller, &path, 9).unwrap_err();
        assert!(
            matches!(error, ProcRootError::TooLarge { max_len: 9, .. }),
            "{error}"
        );
        assert!(!error.to_string().contains("0123456789"), "{error}");
    }

    #[test]
    fn rejects_directory_and_fifo() {
        let (caller, _peer) = own_caller();
        let directory = tempfile::tempdir().unwrap();
        let fifo = directory.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();

        let error = read_file_in_root(&caller, &fifo, 100).unwrap_err();
        assert!(
            matches!(error, ProcRootError::NotRegularFile { kind: "FIFO", .. }),
            "{error}"
        );
        let error = read_file_in_root(&caller, directory.path(), 100).unwrap_err();
        assert!(
            matches!(
                error,
                ProcRootError::NotRegularFile {
                    kind: "directory",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn rejects_magic_links() {
        let (caller, _peer) = own_caller();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        std::fs::write(&path, b"token").unwrap();

        let through_proc = Path::new("/proc/self/root").join(path.strip_prefix("/").unwrap());
        let error = read_file_in_root(&caller, &through_proc, 100).unwrap_err();
        let ProcRootError::Open { source, .. } = &error else {
            panic!("expected an open error, got {error}");
        };
        assert_eq!(source.raw_os_error(), Some(libc::ELOOP), "{error}");
    }

    #[test]
    fn missing_file_names_path_and_pid() {
        let (caller, _peer) = own_caller();
        let error = read_file_in_root(&caller, Path::new("/no/such/token"), 100).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/no/such/token"), "{message}");
        assert!(
            message.contains(&format!("pid {}", caller.pid())),
            "{message}"
        );
    }
}
