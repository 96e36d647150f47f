//! The file backend: the secrets file in memory, reloaded when the file changes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envproxy_proto::SecretBytes;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::secrets::{self, SecretMap, SecretsError};

/// The secrets file and its last good content. Clones share the same content.
#[derive(Clone)]
pub struct FileBackend {
    path: Arc<PathBuf>,
    state: Arc<RwLock<State>>,
}

struct State {
    secrets: Arc<SecretMap>,
    /// The file version that was last read, whether or not it parsed.
    seen: FileVersion,
    /// A new version seen on the last poll and not yet read. It is read only when the next
    /// poll finds it unchanged.
    pending: Option<FileVersion>,
    /// Unix time of the last successful load, in seconds.
    loaded_unix: u64,
    /// Reason the last change of the file could not be loaded, or `None` once a load succeeds.
    last_error: Option<String>,
}

/// The backend's part of the agent status. Contains key names at most, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    pub path: PathBuf,
    pub keys_loaded: usize,
    pub last_reload_error: Option<String>,
    pub last_reload_unix: u64,
}

impl FileBackend {
    /// Loads the secrets file at `path`. Fails when it cannot be read or parsed.
    pub fn open(path: &Path) -> Result<FileBackend, SecretsError> {
        // The version is taken before reading, so a change during the read is seen as new.
        let seen = FileVersion::of(path);
        let secrets = secrets::load(path)?;
        Ok(FileBackend {
            path: Arc::new(path.to_path_buf()),
            state: Arc::new(RwLock::new(State {
                secrets: Arc::new(secrets),
                seen,
                pending: None,
                loaded_unix: unix_now(),
                last_error: None,
            })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns a copy of the value of `key`.
    pub fn get(&self, key: &str) -> Option<SecretBytes> {
        let secrets = self.snapshot();
        let value = secrets.get(key)?;
        Some(SecretBytes::new(value.expose_secret().to_vec()))
    }

    /// Returns the key names in sorted order.
    pub fn key_names(&self) -> Vec<String> {
        self.snapshot().keys().cloned().collect()
    }

    pub fn status(&self) -> BackendStatus {
        let state = self.read_state();
        BackendStatus {
            path: self.path.to_path_buf(),
            keys_loaded: state.secrets.len(),
            last_reload_error: state.last_error.clone(),
            last_reload_unix: state.loaded_unix,
        }
    }

    /// Starts a task that checks the file every `interval` and reloads it when it changed.
    ///
    /// The task polls the file's metadata (device, inode, size, modification time) instead of
    /// subscribing to inotify, because polling also notices editors that save by renaming a new
    /// file into place, files on bind mounts and files on network filesystems. At the default
    /// 250 ms that costs four `stat` calls a second. A change that cannot be loaded, including
    /// the file disappearing, keeps the last good content and logs one warning.
    ///
    /// A new version is read only once two consecutive polls find it unchanged. A shell
    /// rewrite (`printf ... > file`) truncates the file before writing it, and the empty file in
    /// between is a valid `.env` or TOML file with no keys, so loading it would remove every key
    /// for a moment. A change therefore takes effect one to two intervals after the write ends.
    pub fn spawn_reloader(&self, interval: Duration) -> JoinHandle<()> {
        let backend = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let checker = backend.clone();
                // `stat` and `read` block, and may block for long on a network filesystem.
                let checked =
                    tokio::task::spawn_blocking(move || checker.reload_if_changed()).await;
                if let Err(err) = checked {
                    tracing::error!(%err, "bug: the secrets file check panicked");
                }
            }
        })
    }

    /// Reloads the file when its version differs from the one last read and the previous poll
    /// saw the same new version.
    fn reload_if_changed(&self) {
        let current = FileVersion::of(&self.path);
        {
            let mut state = self.write_state();
            if current == state.seen {
                state.pending = None;
                return;
            }
            if state.pending.as_ref() != Some(&current) {
                state.pending = Some(current);
                return;
            }
        }
        let path = self.path.display().to_string();
        let loaded = secrets::load(&self.path);
        // A write that started after the poll may have been read half-done: wait until the
        // version is stable again.
        let after_read = FileVersion::of(&self.path);
        if after_read != current {
            self.write_state().pending = Some(after_read);
            return;
        }
        match loaded {
            Ok(secrets) => {
                let keys = secrets.len();
                let mut state = self.write_state();
                let previous_keys = state.secrets.len();
                state.secrets = Arc::new(secrets);
                state.seen = current;
                state.pending = None;
                state.loaded_unix = unix_now();
                state.last_error = None;
                drop(state);
                if keys == 0 && previous_keys > 0 {
                    tracing::warn!(
                        path,
                        removed = previous_keys,
                        "secrets file reloaded with no keys; every reference to it now fails"
                    );
                } else {
                    tracing::info!(path, keys, "secrets file reloaded");
                }
            }
            Err(err) => {
                let kept = self.read_state().secrets.len();
                tracing::warn!(
                    path,
                    %err,
                    kept,
                    "secrets file changed but cannot be loaded; still serving the last good content"
                );
                let mut state = self.write_state();
                state.seen = current;
                state.pending = None;
                state.last_error = Some(err.to_string());
            }
        }
    }

    fn snapshot(&self) -> Arc<SecretMap> {
        Arc::clone(&self.read_state().secrets)
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A writer only swaps fields and cannot leave the state half-updated, so a poisoned lock
        // still holds consistent data.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Identity of one version of the secrets file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileVersion {
    Present {
        device: u64,
        inode: u64,
        size: u64,
        modified_secs: i64,
        modified_nanos: i64,
    },
    /// `stat` failed with this error kind (the file is missing or unreadable).
    Unavailable(std::io::ErrorKind),
}

impl FileVersion {
    fn of(path: &Path) -> FileVersion {
        match std::fs::metadata(path) {
            Ok(meta) => FileVersion::Present {
                device: meta.dev(),
                inode: meta.ino(),
                size: meta.size(),
                modified_secs: meta.mtime(),
                modified_nanos: meta.mtime_nsec(),
            },
            Err(err) => FileVersion::Unavailable(err.kind()),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Instant;

    const POLL: Duration = Duration::from_millis(10);

    /// Waits up to 5 s for `condition`, so a slow machine does not fail the test.
    async fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        condition()
    }

    fn value(backend: &FileBackend, key: &str) -> Option<Vec<u8>> {
        backend.get(key).map(|v| v.expose_secret().to_vec())
    }

    #[test]
    fn open_loads_and_reports_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        fs::write(&path, r#"{"B": "2", "A": "1"}"#).unwrap();
        let backend = FileBackend::open(&path).unwrap();
        assert_eq!(value(&backend, "A").as_deref(), Some(&b"1"[..]));
        assert_eq!(value(&backend, "C"), None);
        assert_eq!(backend.key_names(), ["A", "B"]);
        let status = backend.status();
        assert_eq!(status.keys_loaded, 2);
        assert_eq!(status.last_reload_error, None);
        assert!(status.last_reload_unix > 0);
        assert_eq!(status.path, path);
    }

    #[test]
    fn open_fails_on_invalid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        fs::write(&path, r#"{"A": 1}"#).unwrap();
        assert!(FileBackend::open(&path).is_err());
    }

    #[tokio::test]
    async fn reload_picks_up_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.env");
        fs::write(&path, "A=1\n").unwrap();
        let backend = FileBackend::open(&path).unwrap();
        let reloader = backend.spawn_reloader(POLL);

        fs::write(&path, "A=changed\nB=2\n").unwrap();
        let reloaded = wait_for(|| value(&backend, "A").as_deref() == Some(&b"changed"[..])).await;
        reloader.abort();
        assert!(reloaded, "the edit was not picked up");
        assert_eq!(value(&backend, "B").as_deref(), Some(&b"2"[..]));
        assert_eq!(backend.status().keys_loaded, 2);
    }

    #[tokio::test]
    async fn reload_picks_up_rename_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        fs::write(&path, "A = \"1\"\n").unwrap();
        let backend = FileBackend::open(&path).unwrap();
        let reloader = backend.spawn_reloader(POLL);

        // Same size as the original, so only the inode differs between the versions.
        let staged = dir.path().join("secrets.toml.new");
        fs::write(&staged, "A = \"2\"\n").unwrap();
        fs::rename(&staged, &path).unwrap();
        let reloaded = wait_for(|| value(&backend, "A").as_deref() == Some(&b"2"[..])).await;
        reloader.abort();
        assert!(reloaded, "the renamed file was not picked up");
    }

    #[tokio::test]
    async fn invalid_file_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        fs::write(&path, r#"{"A": "good"}"#).unwrap();
        let backend = FileBackend::open(&path).unwrap();
        let reloader = backend.spawn_reloader(POLL);

        fs::write(&path, r#"{"A": "half-written"#).unwrap();
        let failed = wait_for(|| backend.status().last_reload_error.is_some()).await;
        assert!(failed, "the invalid file was not noticed");
        assert_eq!(value(&backend, "A").as_deref(), Some(&b"good"[..]));
        let reason = backend.status().last_reload_error.unwrap();
        assert!(reason.contains("secrets.json"), "{reason}");
        assert!(!reason.contains("half-written"), "{reason}");

        fs::remove_file(&path).unwrap();
        let missing = wait_for(|| {
            backend
                .status()
                .last_reload_error
                .is_some_and(|reason| reason.contains("cannot read"))
        })
        .await;
        assert!(missing, "the removal was not noticed");
        assert_eq!(value(&backend, "A").as_deref(), Some(&b"good"[..]));

        fs::write(&path, r#"{"A": "fixed"}"#).unwrap();
        let fixed = wait_for(|| value(&backend, "A").as_deref() == Some(&b"fixed"[..])).await;
        reloader.abort();
        assert!(fixed, "the repaired file was not picked up");
        assert_eq!(backend.status().last_reload_error, None);
    }

    #[tokio::test]
    async fn fifo_replacement_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        fs::write(&path, r#"{"A": "good"}"#).unwrap();
        let backend = FileBackend::open(&path).unwrap();
        let reloader = backend.spawn_reloader(POLL);

        fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let rejected = wait_for(|| {
            backend
                .status()
                .last_reload_error
                .is_some_and(|reason| reason.contains("is not a regular file"))
        })
        .await;
        assert!(rejected, "the FIFO was not rejected");
        assert_eq!(value(&backend, "A").as_deref(), Some(&b"good"[..]));

        fs::remove_file(&path).unwrap();
        fs::write(&path, r#"{"A": "fixed"}"#).unwrap();
        let fixed = wait_for(|| value(&backend, "A").as_deref() == Some(&b"fixed"[..])).await;
        reloader.abort();
        assert!(fixed, "the regular file after the FIFO was not picked up");
        assert_eq!(backend.status().last_reload_error, None);
    }
}
