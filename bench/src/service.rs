//! Background servers (the agent, the echo server) started for a benchmark and stopped by pid.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::fixture;

/// Maximum wait for a server to accept connections on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum wait for a server to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of a server's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;

/// A running server process that listens on a Unix socket. Dropping it stops the process.
pub struct Service {
    name: &'static str,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Service {
    /// Starts `command` with its output in `log` and waits until `socket` accepts connections.
    pub fn start(
        name: &'static str,
        mut command: Command,
        socket: &Path,
        log: &Path,
    ) -> anyhow::Result<Service> {
        let log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        fixture::clear_inherited_settings(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        let mut service = Service {
            name,
            child,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        tracing::info!(server = name, pid = service.pid(), "started");
        service.wait_until_ready()?;
        Ok(service)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Fails when the process has exited, with the end of its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} (pid {}) exited with {status}; the end of its log {}:\n{}",
                self.name,
                self.pid(),
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.check_running()?;
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{} (pid {}) did not accept connections on {} within {:?}; the end of its \
                     log {}:\n{}",
                    self.name,
                    self.pid(),
                    self.socket.display(),
                    START_TIMEOUT,
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[start..].join("\n")
    }

    /// Sends SIGTERM to the process, waits for it to exit and kills it if it does not.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.pid() as libc::pid_t;
        // SAFETY: plain kill(2) on the pid of a child this process started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                tracing::info!(server = self.name, pid, "stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(server = self.name, pid, timeout = ?STOP_TIMEOUT,
            "did not exit after SIGTERM; sending SIGKILL");
        if let Err(err) = self.child.kill() {
            tracing::warn!(server = self.name, pid, %err, "cannot kill");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_that_exits_reports_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo cannot bind >&2; exit 3"]);
        let error = Service::start(
            "test server",
            command,
            &dir.path().join("never.sock"),
            &dir.path().join("server.log"),
        )
        .err()
        .expect("a server that exits must fail to start")
        .to_string();
        assert!(error.contains("test server"), "{error}");
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(error.contains("cannot bind"), "{error}");
    }

    #[test]
    fn service_is_stopped_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("server.sock");
        // The test binds the socket itself, so the server process can be a plain `sleep`.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let mut command = Command::new("sleep");
        command.arg("30");
        let service =
            Service::start("sleeper", command, &socket, &dir.path().join("server.log")).unwrap();
        let pid = service.pid() as libc::pid_t;
        drop(service);
        // SAFETY: signal 0 only checks whether the pid exists; the child was reaped on drop.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "pid {pid} still exists after drop");
    }
}
