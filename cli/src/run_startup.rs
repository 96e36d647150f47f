//! Ends `envproxy run` on SIGINT, SIGTERM or SIGHUP while it starts up, before the command runs.
//!
//! [`crate::child::catch_signals`] queues these signals until the command starts, so they cannot
//! kill the process before its temporary directory is removed. A start-up step that blocks
//! (a slow backend, a file system that does not respond) would then make the signal wait for
//! good. The watcher thread here removes the private directory and exits at once instead.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// Signals that end `envproxy run` during start-up, with exit status 128 plus the signal number.
const STARTUP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// The private directory created during start-up, removed when a signal ends the start-up.
static STARTUP_DIRECTORY: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A running start-up watcher. [`StartupWatcher::finish`] stops it once the command is about to
/// start, so later signals are forwarded to the command as usual.
pub struct StartupWatcher {
    handle: Handle,
    thread: JoinHandle<()>,
}

impl StartupWatcher {
    /// Starts the watcher thread.
    pub fn start() -> std::io::Result<StartupWatcher> {
        let mut signals = Signals::new(STARTUP_SIGNALS)?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("envproxy-startup-signals".to_owned())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    end_startup(signal);
                }
            })?;
        Ok(StartupWatcher { handle, thread })
    }

    /// Stops the watcher and clears the recorded directory, which its owner now removes.
    pub fn finish(self) {
        self.handle.close();
        let _ = self.thread.join();
        set_directory(None);
    }
}

/// Records the private directory that a signal during start-up must remove.
pub fn note_directory(directory: &Path) {
    set_directory(Some(directory.to_path_buf()));
}

fn set_directory(directory: Option<PathBuf>) {
    *STARTUP_DIRECTORY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = directory;
}

/// Removes the private directory and exits with 128 plus `signal`.
///
/// NOTE: a socket that the agent already bound at an explicit `--socket` path is left in place.
fn end_startup(signal: i32) -> ! {
    let directory = STARTUP_DIRECTORY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(directory) = directory {
        if let Err(err) = std::fs::remove_dir_all(&directory) {
            eprintln!(
                "envproxy: cannot remove {} after a signal: {err}",
                directory.display()
            );
        }
    }
    eprintln!("envproxy: stopped by signal {signal} before the command started");
    std::process::exit(128 + signal);
}
