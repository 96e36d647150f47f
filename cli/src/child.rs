//! The command `envproxy run` starts: spawn, signal forwarding and exit status.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;

/// Signals passed on to the command.
pub const FORWARDED_SIGNALS: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// Exit status when the command is not found, as in POSIX shells.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit status when the command exists but cannot be executed, as in POSIX shells.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;

/// A command that could not be started, with the exit status a shell would use for it.
#[derive(Debug, thiserror::Error)]
#[error("{program}: {reason}")]
pub struct SpawnError {
    pub program: String,
    pub reason: String,
    pub exit_code: i32,
}

/// Signals caught from the start of `envproxy run`, queued until the command runs.
pub type CaughtSignals = SignalsInfo<WithOrigin>;

/// Starts catching [`FORWARDED_SIGNALS`], so none of them ends this process before its temporary
/// files are removed. Signals that arrive before the command starts are queued.
pub fn catch_signals() -> io::Result<CaughtSignals> {
    SignalsInfo::<WithOrigin>::new(FORWARDED_SIGNALS)
}

/// Command line, environment and limits of the command.
pub struct ChildSpec {
    /// The program and its arguments. Must not be empty.
    pub command: Vec<OsString>,
    /// The complete environment of the command.
    pub environment: Vec<(OsString, OsString)>,
    /// Soft `RLIMIT_NOFILE` to restore in the command, when this process raised its own.
    pub open_files_soft_limit: Option<u64>,
    /// Signals caught since `envproxy run` started, from [`catch_signals`].
    pub signals: CaughtSignals,
}

/// Starts the command, forwards signals to it until it exits, and returns its exit code: its own
/// status, or 128 plus the signal number when a signal ended it.
///
/// `SIGINT`, `SIGQUIT` and `SIGHUP` that the kernel sent (from the terminal) are not forwarded,
/// because the terminal sends them to the whole foreground process group, which includes the
/// command. Signals sent with `kill` are forwarded.
pub fn run(spec: ChildSpec) -> Result<i32, SpawnError> {
    let program = spec.command[0].clone();
    let display_name = program.to_string_lossy().into_owned();
    let spawn_error = |reason: String, exit_code| SpawnError {
        program: display_name.clone(),
        reason,
        exit_code,
    };

    let mut signals = spec.signals;
    // A signal that arrived while the agent started, such as SIGTERM from `timeout`, ends the
    // run before the command starts, and the caller then removes the temporary files.
    if let Some(origin) = signals.pending().next() {
        return Ok(128 + origin.signal);
    }
    let signals_handle = signals.handle();

    let mut command = Command::new(&program);
    command.args(&spec.command[1..]);
    command.env_clear();
    command.envs(spec.environment.iter().map(|(k, v)| (k, v)));
    if let Some(soft) = spec.open_files_soft_limit {
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe functions may be called. It calls getrlimit/setrlimit through nix,
        // which are plain system calls that neither allocate nor take locks.
        unsafe {
            command.pre_exec(move || {
                let (_, hard) = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)?;
                setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
                Ok(())
            });
        }
    }
    let mut child = command.spawn().map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => match find_program(&program, &spec.environment) {
            // execve reports ENOENT for a file that exists when its `#!` interpreter or the
            // dynamic loader it names is missing.
            Some(path) => spawn_error(missing_interpreter_reason(&path), EXIT_NOT_FOUND),
            None => spawn_error("command not found".to_string(), EXIT_NOT_FOUND),
        },
        io::ErrorKind::PermissionDenied => {
            spawn_error("permission denied".to_string(), EXIT_NOT_EXECUTABLE)
        }
        _ if err.raw_os_error() == Some(libc::E2BIG) => spawn_error(
            format!(
                "cannot execute: {err}; the environment, with one KEY=envproxy:KEY reference per \
                 secret key, is larger than the kernel accepts: use a secrets file with only \
                 the keys this command needs"
            ),
            EXIT_NOT_EXECUTABLE,
        ),
        _ => spawn_error(format!("cannot execute: {err}"), EXIT_NOT_EXECUTABLE),
    })?;
    let pid = Pid::from_raw(child.id() as i32);

    // `exited` is set, under the lock, after the command has exited but before it is reaped.
    // Until it is reaped its pid cannot be reused, so a forwarded signal never reaches another
    // process.
    let exited = Arc::new(Mutex::new(false));
    let forwarder = {
        let exited = Arc::clone(&exited);
        std::thread::spawn(move || {
            for origin in signals.forever() {
                if origin.cause == Cause::Kernel {
                    continue;
                }
                let guard = exited
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if *guard {
                    break;
                }
                if let Ok(signal) = Signal::try_from(origin.signal) {
                    let _ = kill(pid, signal);
                }
            }
        })
    };

    wait_without_reaping(pid);
    *exited
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
    let status = child.wait();
    signals_handle.close();
    let _ = forwarder.join();

    match status {
        Ok(status) => Ok(exit_code(status)),
        Err(err) => Err(spawn_error(
            format!("cannot read the exit status: {err}"),
            EXIT_NOT_EXECUTABLE,
        )),
    }
}

/// Returns the "command not found" error that starting `program` with `environment` would
/// give, or `None` when the program exists. Callers use it before work that only makes sense
/// for a command that will start.
pub fn check_command_exists(
    program: &OsStr,
    environment: &[(OsString, OsString)],
) -> Option<SpawnError> {
    let exists = if program.as_bytes().contains(&b'/') {
        // A directory or a file without execute permission fails later with status 126.
        Path::new(program).exists()
    } else {
        find_program(program, environment).is_some()
    };
    (!exists).then(|| SpawnError {
        program: program.to_string_lossy().into_owned(),
        reason: "command not found".to_string(),
        exit_code: EXIT_NOT_FOUND,
    })
}

/// Returns the file that `program` names: the path itself when it contains a `/`, else the
/// first match in the `PATH` of `environment`, as `execvp` searches.
fn find_program(program: &OsStr, environment: &[(OsString, OsString)]) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    // Without PATH, glibc's execvp searches its default path.
    let search_path = environment
        .iter()
        .find(|(name, _)| name == "PATH")
        .map_or_else(
            || OsString::from("/bin:/usr/bin"),
            |(_, value)| value.clone(),
        );
    std::env::split_paths(&search_path)
        .map(|directory| directory.join(program))
        .find(|candidate| candidate.is_file())
}

/// Describes why a file that exists could not be executed with ENOENT: the interpreter of its
/// `#!` line, when it has one, or otherwise the dynamic loader or a library.
fn missing_interpreter_reason(path: &Path) -> String {
    match shebang_interpreter(path) {
        Some(interpreter) => format!(
            "the interpreter {interpreter} named on the file's `#!` line could not be found"
        ),
        None => "the file exists, but its interpreter (the dynamic loader) or a library could \
                 not be found"
            .to_string(),
    }
}

/// Returns the interpreter path of a `#!` line, or `None` when the file does not start with one.
fn shebang_interpreter(path: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let read = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..read].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let interpreter = line
        .split(|b| b.is_ascii_whitespace())
        .find(|word| !word.is_empty())?;
    Some(String::from_utf8_lossy(interpreter).into_owned())
}

/// Blocks until `pid` has exited, leaving it a zombie so its pid stays reserved.
fn wait_without_reaping(pid: Pid) {
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            // Success, or an error such as ECHILD that `Child::wait` reports next.
            _ => return,
        }
    }
}

/// Converts an exit status to the code a shell reports: the status itself, or 128 plus the
/// signal number.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => EXIT_NOT_EXECUTABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn spec(command: &[&str]) -> ChildSpec {
        ChildSpec {
            command: command.iter().map(OsString::from).collect(),
            environment: vec![("PATH".into(), std::env::var_os("PATH").unwrap_or_default())],
            open_files_soft_limit: None,
            signals: catch_signals().unwrap(),
        }
    }

    #[test]
    fn exit_status_passes_through() {
        assert_eq!(run(spec(&["sh", "-c", "exit 7"])).unwrap(), 7);
        assert_eq!(run(spec(&["true"])).unwrap(), 0);
    }

    #[test]
    fn killed_child_reports_128_plus_signal() {
        assert_eq!(run(spec(&["sh", "-c", "kill -TERM $$"])).unwrap(), 143);
        assert_eq!(run(spec(&["sh", "-c", "kill -KILL $$"])).unwrap(), 137);
    }

    #[test]
    fn missing_command_is_127() {
        let error = run(spec(&["envproxy-no-such-command"])).unwrap_err();
        assert_eq!(error.exit_code, 127);
        assert_eq!(
            error.to_string(),
            "envproxy-no-such-command: command not found"
        );
    }

    #[test]
    fn non_executable_file_is_126() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script.sh");
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        let error = run(spec(&[path.to_str().unwrap()])).unwrap_err();
        assert_eq!(error.exit_code, 126);
        assert!(error.to_string().ends_with("permission denied"), "{error}");
    }

    #[test]
    fn missing_interpreter_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script.sh");
        std::fs::write(&path, "#!/nonexistent/interpreter -x\nexit 0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();

        let error = run(spec(&[path.to_str().unwrap()])).unwrap_err();
        let message = error.to_string();
        assert_eq!(error.exit_code, 127);
        assert!(!message.contains("command not found"), "{message}");
        assert!(message.contains("/nonexistent/interpreter"), "{message}");
        assert!(message.contains("could not be found"), "{message}");
    }

    #[test]
    fn missing_interpreter_found_through_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envproxy-test-script");
        std::fs::write(&path, "#!/nonexistent/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut spec = spec(&["envproxy-test-script"]);
        spec.environment = vec![("PATH".into(), dir.path().as_os_str().to_os_string())];

        let error = run(spec).unwrap_err();
        assert_eq!(error.exit_code, 127);
        assert!(error.to_string().contains("/nonexistent/sh"), "{error}");
    }

    #[test]
    fn environment_is_exactly_the_given_one() {
        let output = std::env::temp_dir().join(format!("envproxy-env-{}", std::process::id()));
        let mut spec = spec(&["sh", "-c", "env > \"$OUT\""]);
        spec.environment.push(("OUT".into(), output.clone().into()));
        spec.environment.push(("ONLY_HERE".into(), "1".into()));
        assert_eq!(run(spec).unwrap(), 0);
        let text = std::fs::read_to_string(&output).unwrap();
        std::fs::remove_file(&output).unwrap();
        assert!(text.contains("ONLY_HERE=1"), "{text}");
        assert!(!text.contains("CARGO_PKG_NAME"), "{text}");
    }
}
