//! The `envproxy` binary against real agents: `run`, `get` and `status`.
//!
//! `run` needs a library to preload. These tests name the C library the test process already
//! uses, which changes nothing in the command, so they do not depend on `libenvproxy.so` being
//! built. With that library nothing resolves `$KEY` in a shell, so the command sees the
//! reference `envproxy:KEY`, which is what these tests check.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use envproxy_agent::{Agent, AgentStatus, Config};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::oneshot;

const ENVPROXY: &str = env!("CARGO_BIN_EXE_envproxy");
/// Upper bound for one `envproxy` invocation; each finishes in well under a second normally.
const WAIT: Duration = Duration::from_secs(30);

/// Returns the path of the C library mapped into this process, a harmless library to preload.
fn harmless_library() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            let name = Path::new(path).file_name().unwrap().to_string_lossy();
            name.starts_with("libc.so") || name.starts_with("libc-")
        })
        .map(PathBuf::from)
        .expect("no C library in /proc/self/maps")
}

/// Returns a value that appears nowhere else, so finding it in output can only be a leak.
fn unique_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("secret-{nanos:x}-{}", std::process::id())
}

/// `envproxy` with a clean EnvProxy environment and the harmless library.
fn envproxy(args: &[&str]) -> Command {
    let mut command = Command::new(ENVPROXY);
    command
        .args(args)
        .env_remove("ENVPROXY_SOCKET")
        .env_remove("LD_PRELOAD")
        .env_remove("RUST_LOG")
        .env("ENVPROXY_LIB", harmless_library())
        .stdin(Stdio::null());
    command
}

/// Runs `command` to completion within [`WAIT`], killing it if it hangs.
fn output_of(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let status = wait_or_kill(&mut child);
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).unwrap();
        bytes
    })
}

fn wait_or_kill(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("envproxy did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A temporary directory with a secrets file of two keys.
struct Secrets {
    dir: tempfile::TempDir,
    path: PathBuf,
    api_key: String,
}

impl Secrets {
    fn new() -> Secrets {
        let dir = tempfile::tempdir().unwrap();
        let api_key = unique_secret();
        let path = dir.path().join("secrets.json");
        std::fs::write(
            &path,
            format!(r#"{{"API_KEY": "{api_key}", "DB_PASSWORD": "pw-{api_key}"}}"#),
        )
        .unwrap();
        Secrets { dir, path, api_key }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// An agent running inside the test process, on its own runtime thread.
struct RunningAgent {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningAgent {
    fn start(secrets: &Path, socket: &Path) -> RunningAgent {
        let config = Config {
            socket: Some(socket.to_path_buf()),
            secrets_file: Some(secrets.to_path_buf()),
            ..Config::default()
        };
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let agent = Agent::bind(config).await.unwrap();
                ready_sender.send(()).unwrap();
                agent
                    .serve(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        ready.recv_timeout(WAIT).expect("the agent did not start");
        RunningAgent {
            socket: socket.to_path_buf(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

#[test]
fn run_sets_reference_not_value() {
    let secrets = Secrets::new();
    let output = output_of(envproxy(&[
        "run",
        "--secrets",
        secrets.path(),
        "--",
        "sh",
        "-c",
        "echo \"$API_KEY\"",
    ]));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "envproxy:API_KEY\n");
    assert!(!text(&output.stdout).contains(&secrets.api_key));
    assert!(!text(&output.stderr).contains(&secrets.api_key));
}

#[test]
fn run_environment_and_private_socket() {
    let secrets = Secrets::new();
    let script =
        "printf '%s\\n' \"$API_KEY\" \"$DB_PASSWORD\" \"$ENVPROXY_SOCKET\" \"$LD_PRELOAD\"; \
                  stat -c %a \"$(dirname \"$ENVPROXY_SOCKET\")\"; \
                  test -S \"$ENVPROXY_SOCKET\" && echo socket-exists";
    let mut command = envproxy(&["run", "--secrets", secrets.path(), "--", "sh", "-c", script]);
    command.env("API_KEY", "set-by-caller");
    let output = output_of(command);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(lines[0], "set-by-caller");
    assert_eq!(lines[1], "envproxy:DB_PASSWORD");
    let socket = Path::new(lines[2]);
    assert!(socket.is_absolute(), "{stdout}");
    assert_eq!(
        lines[3],
        std::fs::canonicalize(harmless_library())
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(lines[4], "700");
    assert_eq!(lines[5], "socket-exists");
    assert!(
        !socket.parent().unwrap().exists(),
        "the private socket directory was left behind"
    );
}

#[test]
fn run_passes_exit_status_through() {
    let secrets = Secrets::new();
    let cases: [(&str, i32); 3] = [("exit 7", 7), ("kill -TERM $$", 143), ("exit 0", 0)];
    for (script, expected) in cases {
        let output = output_of(envproxy(&[
            "run",
            "--secrets",
            secrets.path(),
            "--",
            "sh",
            "-c",
            script,
        ]));
        assert_eq!(
            output.status.code(),
            Some(expected),
            "{script}: {}",
            text(&output.stderr)
        );
    }
}

#[test]
fn run_reports_unstartable_commands() {
    let secrets = Secrets::new();
    let output = output_of(envproxy(&[
        "run",
        "--secrets",
        secrets.path(),
        "--",
        "envproxy-test-no-such-command",
    ]));
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(
        text(&output.stderr),
        "envproxy: envproxy-test-no-such-command: command not found\n"
    );

    let script = secrets.dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let output = output_of(envproxy(&[
        "run",
        "--secrets",
        secrets.path(),
        "--",
        script.to_str().unwrap(),
    ]));
    assert_eq!(output.status.code(), Some(126));
    let stderr = text(&output.stderr);
    assert!(stderr.ends_with(": permission denied\n"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn run_forwards_signals() {
    let secrets = Secrets::new();
    let cases = [
        (Signal::SIGUSR1, 42),
        (Signal::SIGTERM, 143),
        (Signal::SIGHUP, 43),
    ];
    for (signal, expected) in cases {
        let script = "trap 'exit 42' USR1; trap 'exit 43' HUP; echo ready; \
                      while :; do sleep 0.05; done";
        let mut child = envproxy(&["run", "--secrets", secrets.path(), "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = wait_or_kill(&mut child);
        assert_eq!(status.code(), Some(expected), "{signal}");
    }
}

#[test]
fn run_without_library_lists_paths() {
    let secrets = Secrets::new();
    // A copy of the binary in an empty directory, so no library sits beside it.
    let bin_dir = secrets.dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let copy = bin_dir.join("envproxy");
    std::fs::copy(ENVPROXY, &copy).unwrap();
    let mut command = Command::new(&copy);
    command
        .args(["run", "--secrets", secrets.path(), "--", "true"])
        .env_remove("ENVPROXY_LIB")
        .env_remove("ENVPROXY_SOCKET");
    let output = output_of(command);
    assert_eq!(output.status.code(), Some(125));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for path in [
        bin_dir.join("libenvproxy.so"),
        secrets.dir.path().join("lib/envproxy/libenvproxy.so"),
    ] {
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    }
    assert!(stderr.contains("cargo build --workspace"), "{stderr}");
    assert!(stderr.contains("ENVPROXY_LIB"), "{stderr}");
}

#[test]
fn run_rejects_unusable_explicit_library() {
    let secrets = Secrets::new();
    // A usable library beside the binary must not replace the one ENVPROXY_LIB names.
    let bin_dir = secrets.dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let copy = bin_dir.join("envproxy");
    std::fs::copy(ENVPROXY, &copy).unwrap();
    std::fs::copy(harmless_library(), bin_dir.join("libenvproxy.so")).unwrap();
    let text_file = secrets.dir.path().join("notes.so");
    std::fs::write(&text_file, "not a library\n").unwrap();

    let cases = [
        ("/nonexistent/libenvproxy.so", "names no file"),
        (text_file.to_str().unwrap(), "is not an ELF shared object"),
    ];
    for (library, reason) in cases {
        let mut command = Command::new(&copy);
        command
            .args(["run", "--secrets", secrets.path(), "--", "true"])
            .env("ENVPROXY_LIB", library)
            .env_remove("ENVPROXY_SOCKET");
        let output = output_of(command);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(125), "{stderr}");
        assert!(
            stderr.contains(&format!("ENVPROXY_LIB={library}")),
            "{stderr}"
        );
        assert!(stderr.contains(reason), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn run_rejects_library_path_loader_splits() {
    let secrets = Secrets::new();
    for (directory, separator) in [("lib dir", "space"), ("lib:dir", "colon")] {
        // ENVPROXY_LIB and the copy beside the binary are both checked.
        let bin_dir = secrets.dir.path().join(directory);
        std::fs::create_dir(&bin_dir).unwrap();
        let copy = bin_dir.join("envproxy");
        std::fs::copy(ENVPROXY, &copy).unwrap();
        let library = bin_dir.join("libenvproxy.so");
        std::fs::copy(harmless_library(), &library).unwrap();

        for explicit in [true, false] {
            let marker = secrets.dir.path().join("started");
            let mut command = Command::new(&copy);
            command
                .args(["run", "--secrets", secrets.path(), "--", "touch"])
                .arg(&marker)
                .env_remove("ENVPROXY_SOCKET");
            if explicit {
                command.env("ENVPROXY_LIB", &library);
            } else {
                command.env_remove("ENVPROXY_LIB");
            }
            let output = output_of(command);
            let stderr = text(&output.stderr);
            let case = format!("{directory}, ENVPROXY_LIB set: {explicit}");
            assert_eq!(output.status.code(), Some(125), "{case}: {stderr}");
            assert!(
                stderr.contains(&format!("contains a {separator}")),
                "{case}: {stderr}"
            );
            assert!(
                stderr.contains(library.to_str().unwrap()),
                "{case}: {stderr}"
            );
            assert!(stderr.contains("move libenvproxy.so"), "{case}: {stderr}");
            assert!(!marker.exists(), "{case}: the command started");
        }
    }
}

#[test]
fn get_prints_value_or_reason() {
    let secrets = Secrets::new();
    let agent = RunningAgent::start(&secrets.path, &secrets.dir.path().join("run/agent.sock"));

    for name in ["API_KEY", "envproxy:API_KEY"] {
        let output = output_of(envproxy(&["get", name, "--socket", agent.socket()]));
        assert_eq!(
            output.status.code(),
            Some(0),
            "{name}: {}",
            text(&output.stderr)
        );
        assert_eq!(text(&output.stdout), format!("{}\n", secrets.api_key));
    }

    let mut from_variable = envproxy(&["get", "DB_PASSWORD"]);
    from_variable.env("ENVPROXY_SOCKET", agent.socket());
    let output = output_of(from_variable);
    assert_eq!(text(&output.stdout), format!("pw-{}\n", secrets.api_key));

    let output = output_of(envproxy(&["get", "MISSING", "--socket", agent.socket()]));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "");
    assert_eq!(
        text(&output.stderr),
        "envproxy: MISSING: not found in the agent's secrets\n"
    );

    let output = output_of(envproxy(&[
        "get",
        "s3:bucket/x",
        "--socket",
        agent.socket(),
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "");
    assert_eq!(
        text(&output.stderr),
        "envproxy: s3:bucket/x: not found in the agent's secrets, and `s3:` is not a reference \
         scheme EnvProxy knows (vault:, envproxy:, k8s:); check the reference's spelling\n"
    );

    let output = output_of(envproxy(&[
        "get",
        "vault:secret/data/app#db",
        "--socket",
        agent.socket(),
    ]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("envproxy get: vault: references need the Vault backend"),
        "{stderr}"
    );
    assert!(!stderr.contains("ENVPROXY_GET"), "{stderr}");

    let output = output_of(envproxy(&["get", "envproxy:", "--socket", agent.socket()]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("invalid reference"), "{stderr}");
}

#[test]
fn get_without_agent_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let output = output_of(envproxy(&[
        "get",
        "A",
        "--socket",
        socket.to_str().unwrap(),
    ]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn status_text_and_json() {
    let secrets = Secrets::new();
    let agent = RunningAgent::start(&secrets.path, &secrets.dir.path().join("run/agent.sock"));

    let output = output_of(envproxy(&["status", "--socket", agent.socket()]));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("reachable:         yes\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("socket:            {}\n", agent.socket())),
        "{stdout}"
    );
    assert!(stdout.contains("mode:              local\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("backend:           file {}\n", secrets.path())),
        "{stdout}"
    );
    assert!(stdout.contains("keys loaded:       2\n"), "{stdout}");
    assert!(stdout.contains("last reload error: none\n"), "{stdout}");
    assert!(!stdout.contains(&secrets.api_key), "{stdout}");

    let output = output_of(envproxy(&[
        "status",
        "-o",
        "json",
        "--socket",
        agent.socket(),
    ]));
    assert_eq!(output.status.code(), Some(0));
    let stdout = text(&output.stdout);
    assert!(!stdout.contains(&secrets.api_key), "{stdout}");
    let status: AgentStatus = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status.keys, ["API_KEY", "DB_PASSWORD"]);
    assert_eq!(status.pid, std::process::id());
}

#[test]
fn status_to_closed_pipe_exits_0() {
    let secrets = Secrets::new();
    let agent = RunningAgent::start(&secrets.path, &secrets.dir.path().join("run/agent.sock"));
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut command = envproxy(&["status", "-o", "json", "--socket", agent.socket()]);
    command.stdout(writer).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    drop(command);
    let stderr = read_in_background(child.stderr.take().unwrap());
    let status = wait_or_kill(&mut child);
    let stderr = text(&stderr.join().unwrap());
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn status_without_agent_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let cases = [
        (&missing, "the socket does not exist"),
        (&stale, "connection refused"),
    ];
    for (socket, reason) in cases {
        let output = output_of(envproxy(&["status", "--socket", socket.to_str().unwrap()]));
        assert_eq!(output.status.code(), Some(1));
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(socket.to_str().unwrap()), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "start an agent with `envproxy-agent --secrets FILE --socket {}`",
                socket.display()
            )),
            "{stderr}"
        );
        assert_eq!(text(&output.stdout), "");
    }
}

#[test]
fn status_times_out_on_silent_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    // Accepts connections into the backlog and never responds.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let started = Instant::now();
    let output = output_of(envproxy(&["status", "--socket", socket.to_str().unwrap()]));
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("did not respond within 5s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn run_uses_running_agent_keys() {
    let secrets = Secrets::new();
    let agent = RunningAgent::start(&secrets.path, &secrets.dir.path().join("run/agent.sock"));
    let script = "printf '%s\\n' \"$API_KEY\" \"$ENVPROXY_SOCKET\"";

    let output = output_of(envproxy(&[
        "run",
        "--socket",
        agent.socket(),
        "--",
        "sh",
        "-c",
        script,
    ]));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!("envproxy:API_KEY\n{}\n", agent.socket())
    );

    let mut from_variable = envproxy(&["run", "--", "sh", "-c", script]);
    from_variable.env("ENVPROXY_SOCKET", agent.socket());
    let output = output_of(from_variable);
    assert_eq!(
        text(&output.stdout),
        format!("envproxy:API_KEY\n{}\n", agent.socket())
    );
}

#[test]
fn run_without_file_or_agent_fails() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let output = output_of(envproxy(&[
        "run",
        "--socket",
        socket.to_str().unwrap(),
        "--",
        "true",
    ]));
    assert_eq!(output.status.code(), Some(125));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(socket.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("--secrets FILE"), "{stderr}");
    assert!(stderr.contains("envproxy-agent"), "{stderr}");
}

#[test]
fn run_on_silent_socket_names_timeout() {
    let secrets = Secrets::new();
    let socket = secrets.dir.path().join("silent.sock");
    // Accepts connections into the backlog and never responds.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let output = output_of(envproxy(&[
        "run",
        "--secrets",
        secrets.path(),
        "--socket",
        socket.to_str().unwrap(),
        "--",
        "true",
    ]));
    assert_eq!(output.status.code(), Some(125));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the agent at {} did not respond within 2s",
            socket.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("pass another --socket"), "{stderr}");
    assert!(!stderr.contains("already listening"), "{stderr}");
}

#[test]
fn run_starts_agent_on_given_socket() {
    let secrets = Secrets::new();
    let socket = secrets.dir.path().join("given/agent.sock");
    // The command requests a value from the embedded agent through the CLI itself.
    let script = "\"$ENVPROXY_BIN\" get API_KEY; echo \"$ENVPROXY_SOCKET\"";
    let mut command = envproxy(&[
        "run",
        "--secrets",
        secrets.path(),
        "--socket",
        socket.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    command.env("ENVPROXY_BIN", ENVPROXY);
    let output = output_of(command);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!("{}\n{}\n", secrets.api_key, socket.display())
    );
    assert!(
        !socket.exists(),
        "the embedded agent left its socket behind"
    );
}

#[test]
fn run_prefers_agent_already_on_socket() {
    let secrets = Secrets::new();
    let agent = RunningAgent::start(&secrets.path, &secrets.dir.path().join("run/agent.sock"));
    let other = secrets.dir.path().join("other.env");
    std::fs::write(&other, "ONLY_IN_OTHER=1\n").unwrap();
    let script = "\"$ENVPROXY_BIN\" status -o json; echo \"$ONLY_IN_OTHER\"";
    let mut command = envproxy(&[
        "run",
        "--secrets",
        other.to_str().unwrap(),
        "--socket",
        agent.socket(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    command.env("ENVPROXY_BIN", ENVPROXY);
    let output = output_of(command);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let mut lines = stdout.lines();
    let status: AgentStatus = serde_json::from_str(lines.next().unwrap()).unwrap();
    // The agent running in this test process served the command.
    assert_eq!(status.pid, std::process::id());
    // The keys come from the given file.
    assert_eq!(lines.next(), Some("envproxy:ONLY_IN_OTHER"));
    assert!(
        agent.socket.exists(),
        "the running agent's socket was removed"
    );
}

#[test]
fn run_with_original_config_file() {
    let secrets = Secrets::new();
    let config = secrets.dir.path().join("config.toml");
    let configured_socket = secrets.dir.path().join("configured.sock");
    std::fs::write(
        &config,
        format!(
            "[agent]\nsocket = \"{}\"\nlog_level = \"info\"\n\
             [backend]\ntype = \"file\"\npath = \"secrets.json\"\n",
            configured_socket.display()
        ),
    )
    .unwrap();
    let script = "printf '%s\\n' \"$API_KEY\" \"$ENVPROXY_SOCKET\"";
    let output = output_of(envproxy(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "envproxy:API_KEY");
    assert!(lines[1].contains("envproxy-run-"), "{stdout}");
    assert!(!configured_socket.exists());
}

#[test]
fn admin_missing_config_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-config.toml");
    let output = output_of(envproxy(&[
        "admin",
        "--config",
        missing.to_str().unwrap(),
        "status",
    ]));
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr.matches(missing.to_str().unwrap()).count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("--config"), "{stderr}");
}

#[test]
fn run_rejects_secrets_with_config() {
    let output = output_of(envproxy(&[
        "run",
        "--secrets",
        "a.json",
        "--config",
        "c.toml",
        "--",
        "true",
    ]));
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("cannot be used with"));
}

#[test]
fn run_reports_invalid_secrets_file() {
    let secrets = Secrets::new();
    let secret = unique_secret();
    let bad = secrets.dir.path().join("bad.toml");
    std::fs::write(&bad, format!("A = \"{secret}\" trailing\n")).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = output_of(envproxy(&[
        "run",
        "--secrets",
        bad.to_str().unwrap(),
        "--",
        "true",
    ]));
    assert_eq!(output.status.code(), Some(125));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("invalid TOML secrets file"), "{stderr}");
    assert!(stderr.contains("line 1"), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");
}

#[test]
fn run_states_parse_error_once() {
    let secrets = Secrets::new();
    let truncated = secrets.dir.path().join("truncated.json");
    std::fs::write(&truncated, r#"{"A": "#).unwrap();
    let missing = secrets.dir.path().join("missing.json");
    let cases = [
        (truncated, "EOF while parsing a value"),
        (missing, "No such file or directory"),
    ];
    for (path, cause) in cases {
        let output = output_of(envproxy(&[
            "run",
            "--secrets",
            path.to_str().unwrap(),
            "--",
            "true",
        ]));
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(125), "{stderr}");
        assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    }
}

#[test]
fn run_explains_skipped_own_keys() {
    let secrets = Secrets::new();
    let path = secrets.dir.path().join("own.json");
    std::fs::write(&path, r#"{"ENVPROXY_FOO": "x", "A": "1"}"#).unwrap();
    let output = output_of(envproxy(&[
        "run",
        "--secrets",
        path.to_str().unwrap(),
        "--",
        "true",
    ]));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("\"ENVPROXY_FOO\""), "{stderr}");
    assert!(stderr.contains("configure EnvProxy"), "{stderr}");
    assert!(!stderr.contains("sets this variable itself"), "{stderr}");
}

#[test]
fn commands_reject_non_socket_file() {
    let secrets = Secrets::new();
    for args in [
        vec!["get", "API_KEY", "--socket", secrets.path()],
        vec!["status", "--socket", secrets.path()],
    ] {
        let output = output_of(envproxy(&args));
        let stderr = text(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("not a socket"), "{stderr}");
        assert!(stderr.contains(secrets.path()), "{stderr}");
        assert!(!stderr.contains("stale"), "{stderr}");
    }
}

#[test]
fn run_names_missing_interpreter() {
    let secrets = Secrets::new();
    let script = secrets.dir.path().join("script.sh");
    std::fs::write(&script, "#!/nonexistent\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = output_of(envproxy(&[
        "run",
        "--secrets",
        secrets.path(),
        "--",
        script.to_str().unwrap(),
    ]));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(127), "{stderr}");
    assert!(stderr.contains("interpreter /nonexistent"), "{stderr}");
    assert!(!stderr.contains("command not found"), "{stderr}");
}

#[test]
fn run_removes_directory_on_early_signal() {
    let secrets = Secrets::new();
    // Enough keys that loading them takes a while, so the signal arrives during start-up.
    let many = secrets.dir.path().join("many.json");
    let entries: Vec<String> = (0..200_000)
        .map(|i| format!("\"KEY_{i}\": \"value-{i}\""))
        .collect();
    std::fs::write(&many, format!("{{{}}}", entries.join(","))).unwrap();
    let runtime_dir = secrets.dir.path().join("runtime");
    std::fs::create_dir(&runtime_dir).unwrap();
    std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let mut command = envproxy(&["run", "--secrets", many.to_str().unwrap(), "--", "true"]);
        command
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + WAIT;
        while std::fs::read_dir(&runtime_dir).unwrap().next().is_none() {
            assert!(child.try_wait().unwrap().is_none(), "envproxy exited early");
            assert!(Instant::now() < deadline, "no private directory appeared");
            std::thread::sleep(Duration::from_millis(1));
        }
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = wait_or_kill(&mut child);

        assert_eq!(
            status.code(),
            Some(128 + signal as i32),
            "{signal}: {status}"
        );
        let left: Vec<_> = std::fs::read_dir(&runtime_dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{signal}: left behind {left:?}");
    }
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = output_of(envproxy(&["completions", shell]));
        assert_eq!(
            output.status.code(),
            Some(0),
            "{shell}: {}",
            text(&output.stderr)
        );
        let script = text(&output.stdout);
        assert!(script.contains("envproxy"), "{shell}: {script}");
        for subcommand in ["run", "get", "status", "completions"] {
            assert!(script.contains(subcommand), "{shell}: no {subcommand}");
        }
    }
    let output = output_of(envproxy(&["completions", "tcsh"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("possible values"));
}

#[test]
fn run_rejects_fifo_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("secrets.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let runtime_dir = dir.path().join("runtime");
    std::fs::create_dir(&runtime_dir).unwrap();

    let started = Instant::now();
    let mut command = envproxy(&["run", "--secrets", fifo.to_str().unwrap(), "--", "true"]);
    command.env("XDG_RUNTIME_DIR", &runtime_dir);
    let output = output_of(command);
    let stderr = text(&output.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("is not a regular file"), "{stderr}");
    assert!(stderr.contains("a FIFO"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&runtime_dir).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Returns the entries of `dir` whose names start with `envproxy-run-`.
fn run_directories(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("envproxy-run-")
        })
        .collect()
}

#[test]
fn run_ends_on_signal_during_startup() {
    // A Kubernetes API server that accepts connections and never responds keeps the embedded
    // agent's start-up waiting for the default Secret's keys for the 20 s read timeout.
    let silent_server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent_server.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "t", "cluster": { "server": format!("http://127.0.0.1:{port}") } }],
        "users": [{ "name": "t", "user": { "token": "unused" } }],
        "contexts": [{ "name": "t", "context": { "cluster": "t", "user": "t" } }],
        "current-context": "t",
    });
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig.to_string()).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[backend]\ntype = \"kubernetes\"\nnamespace = \"shop\"\nsecret_name = \"app-env\"\n\
         kubeconfig = \"kubeconfig\"\ntimeout_ms = 20000\n",
    )
    .unwrap();
    let runtime_dir = dir.path().join("runtime");
    std::fs::create_dir(&runtime_dir).unwrap();

    for (signal, expected) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let mut child = envproxy(&["run", "--config", config.to_str().unwrap(), "--", "true"])
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while run_directories(&runtime_dir).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !run_directories(&runtime_dir).is_empty(),
            "the private directory was not created"
        );
        // Start-up is now waiting for the API server.
        std::thread::sleep(Duration::from_millis(300));

        let signalled = Instant::now();
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = wait_or_kill(&mut child);
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "{signal} took {:?} to end start-up",
            signalled.elapsed()
        );
        assert_eq!(status.code(), Some(expected), "{signal}");
        let left = run_directories(&runtime_dir);
        assert!(left.is_empty(), "{signal} left behind: {left:?}");
    }
}
