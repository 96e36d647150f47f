//! Shared parts of the end-to-end tests: built binaries, the probe program, agents, random
//! secrets and `/proc` scans.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use envproxy_proto::{client, Request, Response};

/// Returns the directory that contains the workspace's built binaries and `libenvproxy.so`.
pub fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_envproxy"))
        .parent()
        .expect("binary has a parent directory")
        .to_path_buf()
}

/// Returns the path of a built artifact, failing with the command that builds it.
pub fn artifact(name: &str) -> PathBuf {
    let path = build_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing; build the whole workspace first with `cargo build --workspace` \
         (the test command in README.md does)",
        path.display()
    );
    path
}

pub fn envproxy() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_envproxy"))
}

pub fn library() -> PathBuf {
    artifact("libenvproxy.so")
}

/// Returns the source tree's runtime hooks directory. The library finds it by itself only when
/// the build directory is inside the source tree, so the commands below set `ENVPROXY_HOOKS_DIR`
/// to it and tests also pass with `CARGO_TARGET_DIR` elsewhere.
pub fn source_hooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks")
}

pub fn agent_binary() -> PathBuf {
    artifact("envproxy-agent")
}

/// Returns a random secret of 32 hex characters, different in every test.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles `tests/programs/probe.c` once per test binary.
pub fn probe() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/probe.c");
            let dir = build_dir().join("e2e-programs");
            std::fs::create_dir_all(&dir).expect("create program dir");
            let output = dir.join(format!("probe-{}", std::process::id()));
            let status = Command::new("cc")
                .args(["-O1", "-pthread", "-o"])
                .arg(&output)
                .arg(&source)
                .status()
                .expect("run cc (install gcc)");
            assert!(status.success(), "compiling {} failed", source.display());
            output
        })
        .clone()
}

/// Compiles `tests/programs/probe.c` with `cc -static` once per test binary: a program that
/// `LD_PRELOAD` cannot reach.
pub fn static_probe() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/probe.c");
            let dir = build_dir().join("e2e-programs");
            std::fs::create_dir_all(&dir).expect("create program dir");
            let output = dir.join(format!("probe-static-{}", std::process::id()));
            let status = Command::new("cc")
                .args(["-static", "-O1", "-pthread", "-o"])
                .arg(&output)
                .arg(&source)
                .status()
                .expect("run cc (install gcc and libc6-dev)");
            assert!(
                status.success(),
                "compiling {} with -static failed; the static glibc is in libc6-dev",
                source.display()
            );
            output
        })
        .clone()
}

/// A temporary directory with a secrets file, removed on drop.
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        World {
            dir: tempfile::Builder::new()
                .prefix("envproxy-e2e-")
                .tempdir()
                .expect("create temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `secrets.json` atomically (write then rename, as editors do) and returns its path.
    pub fn write_secrets(&self, pairs: &[(&str, &str)]) -> PathBuf {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        let path = self.path("secrets.json");
        let staging = self.path("secrets.json.new");
        std::fs::write(&staging, serde_json::to_vec(&map).unwrap()).expect("write secrets");
        std::fs::rename(&staging, &path).expect("rename secrets");
        path
    }

    pub fn socket(&self) -> PathBuf {
        self.path("agent.sock")
    }
}

/// A standalone `envproxy-agent` process, stopped on drop.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
}

impl Agent {
    pub fn start(socket: &Path, secrets: &Path) -> Agent {
        let child = Command::new(agent_binary())
            .arg("--socket")
            .arg(socket)
            .arg("--secrets")
            .arg(secrets)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start envproxy-agent");
        let agent = Agent {
            child,
            socket: socket.to_path_buf(),
        };
        wait_for_agent(socket, Duration::from_secs(10));
        agent
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: kill with a pid this test spawned; the process is not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Waits until an agent responds to a status request on `socket`.
pub fn wait_for_agent(socket: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(mut stream) = UnixStream::connect(socket) {
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
            if let Ok(Response::Found(_)) = client::call(&mut stream, &Request::Status) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agent answered on {} within {limit:?}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion, killing it after `limit`.
pub fn run_with_limit(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "command {command:?} did not finish within {limit:?}; stdout: {} stderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Environment for a program run directly under the library against `socket`, with a clean
/// set of `ENVPROXY_*` variables and the source tree's hooks.
pub fn preload_command(program: &Path, socket: &Path) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ENVPROXY_") {
            command.env_remove(&key);
        }
    }
    command
        .env("LD_PRELOAD", library())
        .env("ENVPROXY_SOCKET", socket)
        .env("ENVPROXY_HOOKS_DIR", source_hooks_dir());
    command
}

/// `envproxy run --secrets FILE -- PROGRAM ARGS` with a clean set of `ENVPROXY_*` variables and
/// the source tree's hooks.
pub fn run_command(secrets: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(envproxy());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ENVPROXY_") {
            command.env_remove(&key);
        }
    }
    command
        .env("ENVPROXY_LIB", library())
        .env("ENVPROXY_HOOKS_DIR", source_hooks_dir())
        .arg("run")
        .arg("--secrets")
        .arg(secrets)
        .arg("--")
        .arg(program);
    command
}

/// Reads `/proc/PID/environ`.
pub fn environ_of(pid: u32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/environ")).expect("read /proc/PID/environ")
}

/// Returns whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Returns the `NAME=` lines of a program's output as (name, value) pairs.
pub fn lines(output: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(output)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// Returns the value a program printed for `name`.
pub fn value_of(output: &[u8], name: &str) -> Option<String> {
    lines(output)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// Fails the test unless `program --version` runs, naming the Debian package that provides it.
pub fn require_program(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{program} is not installed; .ci/run installs it (apt-get install {package})"
    );
}

/// Starts `command`, which prints `NAME=VALUE` for `name` about every 50 ms, checks that it
/// prints `old`, edits the secret `name` in `world` to `new`, and asserts that the new value is
/// printed within 2 s. The command must run with `ENVPROXY_CACHE_TTL=1`; it is stopped with
/// SIGTERM, which `envproxy run` forwards.
pub fn assert_rotation_seen(
    world: &World,
    command: &mut Command,
    name: &str,
    old: &str,
    new: &str,
) {
    use std::io::{BufRead, BufReader};

    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the reading program");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, values) = std::sync::mpsc::channel();
    let prefix = format!("{name}=");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(value) = line.strip_prefix(&prefix) {
                let _ = sender.send((Instant::now(), value.to_string()));
            }
        }
    });
    let stop = |mut child: Child| {
        // SAFETY: kill with the pid of a child this test spawned and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    };
    let first = match values.recv_timeout(Duration::from_secs(60)) {
        Ok((_, value)) => value,
        Err(_) => {
            stop(child);
            panic!("the program printed no {name}= line within 60 s");
        }
    };
    if first != old {
        stop(child);
        let printed = if first.starts_with("envproxy:") {
            first.as_str()
        } else {
            "another value"
        };
        panic!("{name}: the first line did not show the secret but {printed}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let edited_at = Instant::now();
    world.write_secrets(&[(name, new)]);
    let outcome = loop {
        match values.recv_timeout(Duration::from_secs(10)) {
            Ok((at, value)) if value == new => break Ok(at.duration_since(edited_at)),
            Ok((_, value)) if value == old => continue,
            Ok(_) => break Err("a line showed neither the old nor the new value".to_string()),
            Err(_) => break Err("the new value was not printed within 10 s".to_string()),
        }
    };
    stop(child);
    let delay = outcome.unwrap_or_else(|reason| panic!("{name}: {reason}"));
    assert!(
        delay <= Duration::from_secs(2),
        "{name}: the new value was printed {delay:?} after the edit (TTL 1 s)"
    );
}

/// What a probe in `wait NAME` mode printed, and its `/proc/PID/environ` read while it ran.
pub struct WaitingProbe {
    /// The probe's stdout: `NAME=value` and `pid=PID`.
    pub printed: String,
    pub environ: Vec<u8>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

/// Runs `command`, which starts `probe wait NAME` (directly or under `envproxy run`): reads the
/// value and pid the probe prints, reads its `/proc/PID/environ` while it waits on stdin, then
/// closes stdin so that it ends. Kills the command when the probe prints nothing within `limit`.
pub fn run_waiting_probe(command: &mut Command, limit: Duration) -> WaitingProbe {
    use std::io::BufRead;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the probe");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut printed = String::new();
    while !printed.contains("pid=") {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                printed.push_str(&line);
                printed.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                let output = child.wait_with_output().expect("collect output");
                panic!(
                    "the probe printed no pid within {limit:?}: {printed} stderr: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    let pid: u32 = value_of(printed.as_bytes(), "pid")
        .and_then(|pid| pid.parse().ok())
        .expect("the probe prints its pid");
    let environ = environ_of(pid);
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("wait for the command");
    WaitingProbe {
        printed,
        environ,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        status: output.status,
    }
}

/// Starts a fake agent on `socket` that accepts one connection, reads one request and responds
/// with a header promising 65535 bytes followed by 10 bytes, then closes the connection or,
/// with `hold_open`, keeps it open for 5 s.
pub fn start_truncating_agent(socket: &Path, hold_open: bool) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut request = [0u8; 512];
        let _ = Read::read(&mut stream, &mut request);
        let mut truncated = vec![0u8, 0xff, 0xff];
        truncated.extend_from_slice(b"0123456789");
        let _ = std::io::Write::write_all(&mut stream, &truncated);
        if hold_open {
            std::thread::sleep(Duration::from_secs(5));
        }
    })
}

/// Runs the program of `command` against each response of [`start_truncating_agent`], with
/// `CUT=envproxy:CUT` and a 300 ms timeout. `command` builds the command for an agent socket,
/// and `run` runs it. Checks that the program prints `CUT`'s reference as `printed` on stdout,
/// and that stderr reports an incomplete response, not a silent agent.
pub fn check_truncated_responses(
    label: &str,
    printed: &str,
    command: impl Fn(&Path) -> Command,
    run: impl Fn(&mut Command) -> Output,
) {
    for (hold_open, expected) in TRUNCATED_RESPONSE_MESSAGES {
        let world = World::new();
        let socket = world.socket();
        let _agent = start_truncating_agent(&socket, hold_open);
        let mut command = command(&socket);
        command
            .env("ENVPROXY_TIMEOUT_MS", "300")
            .env("CUT", "envproxy:CUT");
        let output = run(&mut command);
        let stderr = String::from_utf8_lossy(&output.stderr);

        assert_eq!(
            value_of(&output.stdout, printed).as_deref(),
            Some("envproxy:CUT"),
            "{label}: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{label}, hold_open={hold_open}: {stderr}"
        );
        assert!(!stderr.contains("did not answer"), "{label}: {stderr}");
    }
}

/// The messages for the responses [`start_truncating_agent`] sends, with a 300 ms timeout:
/// `(hold_open, expected message part)`.
pub const TRUNCATED_RESPONSE_MESSAGES: [(bool, &str); 2] = [
    (
        false,
        "sent an incomplete response: the header promised 65535 bytes, and the connection \
         closed after 10",
    ),
    (
        true,
        "sent an incomplete response: 10 of the 65535 bytes its header promised arrived within \
         300 ms (ENVPROXY_TIMEOUT_MS)",
    ),
];
