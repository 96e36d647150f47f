//! End-to-end tests of `libenvproxy.so` in real C programs, through `envproxy run` and
//! against a standalone `envproxy-agent`.

mod e2e_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e_support::*;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn c_program_resolves_secret_absent_from_environ() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("DB_PASSWORD", &secret)]);

    let mut child = run_command(&secrets, probe())
        .args(["wait", "DB_PASSWORD"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start envproxy run");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("pid=") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "probe ended early: {printed}"
        );
        printed.push_str(&line);
    }
    let pid: u32 = value_of(printed.as_bytes(), "pid")
        .unwrap()
        .parse()
        .unwrap();
    let environ = environ_of(pid);
    drop(child.stdin.take());
    let status = child.wait().unwrap();

    assert_eq!(
        value_of(printed.as_bytes(), "DB_PASSWORD").as_deref(),
        Some(&*secret)
    );
    assert!(
        !contains(&environ, &secret),
        "the secret is in /proc/{pid}/environ"
    );
    assert!(contains(&environ, "DB_PASSWORD=envproxy:DB_PASSWORD"));
    assert!(status.success());
}

#[test]
fn envproxy_variables_are_never_resolved() {
    let world = World::new();
    let secrets = world.write_secrets(&[("ENVPROXY_X", "value-of-x"), ("KEY", "k")]);
    let output = run_with_limit(
        run_command(&secrets, probe())
            .env("ENVPROXY_CUSTOM", "envproxy:ENVPROXY_X")
            .args(["get", "ENVPROXY_CUSTOM", "KEY"]),
        LIMIT,
    );
    assert_eq!(
        value_of(&output.stdout, "ENVPROXY_CUSTOM").as_deref(),
        Some("envproxy:ENVPROXY_X")
    );
    assert_eq!(value_of(&output.stdout, "KEY").as_deref(), Some("k"));
}

#[test]
fn plain_values_pass_through_unchanged() {
    let world = World::new();
    let secrets = world.write_secrets(&[("KEY", "k")]);
    let output = run_with_limit(
        run_command(&secrets, probe())
            .env("PLAIN", "vaul")
            .env("URL", "postgres://host/db")
            .env_remove("NOT_SET_ANYWHERE")
            .args(["get", "PLAIN", "URL", "NOT_SET_ANYWHERE"]),
        LIMIT,
    );
    assert_eq!(value_of(&output.stdout, "PLAIN").as_deref(), Some("vaul"));
    assert_eq!(
        value_of(&output.stdout, "URL").as_deref(),
        Some("postgres://host/db")
    );
    assert_eq!(
        value_of(&output.stdout, "NOT_SET_ANYWHERE").as_deref(),
        Some("(null)")
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn secure_getenv_resolves_outside_secure_execution() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("TOKEN", &secret)]);
    let output = run_with_limit(
        run_command(&secrets, probe()).args(["secure", "TOKEN"]),
        LIMIT,
    );
    assert_eq!(value_of(&output.stdout, "TOKEN").as_deref(), Some(&*secret));
}

/// Starts a program that prints `NAME=VALUE` lines and returns a channel of (time, value).
fn stream_values(mut command: Command, name: &str) -> (mpsc::Receiver<(Instant, String)>, u32) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start program");
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    let prefix = format!("{name}=");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(value) = line.strip_prefix(&prefix) {
                if sender.send((Instant::now(), value.to_string())).is_err() {
                    break;
                }
            }
        }
        let _ = child.wait();
    });
    (receiver, pid)
}

/// Edits the secret while a program prints it in a loop and returns how long after the edit
/// the new value first appeared.
fn rotation_delay(world: &World, command: Command, old: &str, new: &str) -> Duration {
    let (values, _pid) = stream_values(command, "ROTATING");
    let first = values.recv_timeout(LIMIT).expect("first value");
    assert_eq!(first.1, old);
    std::thread::sleep(Duration::from_millis(300));
    let edited_at = Instant::now();
    world.write_secrets(&[("ROTATING", new)]);
    loop {
        let (at, value) = values
            .recv_timeout(Duration::from_secs(10))
            .expect("the new value never appeared");
        if value == new {
            return at.duration_since(edited_at);
        }
        assert_eq!(value, old, "unexpected value while rotating");
    }
}

#[test]
fn c_loop_sees_rotated_value_within_ttl() {
    let world = World::new();
    let (old, new) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("ROTATING", &old)]);
    let mut command = run_command(&secrets, probe());
    command
        .env("ENVPROXY_CACHE_TTL", "1")
        .args(["loop", "ROTATING", "50", "200"]);
    let delay = rotation_delay(&world, command, &old, &new);
    assert!(
        delay <= Duration::from_secs(2),
        "new value seen after {delay:?}"
    );
}

/// Drives `probe serve`: each request is a variable name, each reply a value and a duration.
struct Serve {
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
    child: std::process::Child,
}

impl Serve {
    fn start(mut command: Command) -> Serve {
        let mut child = command
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start probe serve");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Serve {
            stdin,
            replies,
            child,
        }
    }

    /// Returns the value of `name` and how long `getenv` took, in milliseconds.
    fn get(&mut self, name: &str) -> (String, u64) {
        writeln!(self.stdin, "{name}").unwrap();
        self.stdin.flush().unwrap();
        let value_line = self.replies.recv_timeout(LIMIT).expect("value line");
        let ms_line = self.replies.recv_timeout(LIMIT).expect("ms line");
        let value = value_line
            .strip_prefix(&format!("{name}="))
            .unwrap_or_else(|| panic!("unexpected line {value_line:?}"))
            .to_string();
        let ms = ms_line.strip_prefix("ms=").unwrap().parse().unwrap();
        (value, ms)
    }

    /// Ends the program and returns its stderr.
    fn finish(self) -> String {
        drop(self.stdin);
        let output = self.child.wait_with_output().unwrap();
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

#[test]
fn agent_outage_serves_stale_and_recovers() {
    let world = World::new();
    let (cached, uncached) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("CACHED", &cached), ("UNCACHED", &uncached)]);
    let socket = world.socket();
    let agent = Agent::start(&socket, &secrets);

    let mut command = preload_command(&probe(), &socket);
    command
        .env("ENVPROXY_CACHE_TTL", "1")
        .env("ENVPROXY_TIMEOUT_MS", "500")
        .env("CACHED", "envproxy:CACHED")
        .env("UNCACHED", "envproxy:UNCACHED");
    let mut probe = Serve::start(command);
    assert_eq!(probe.get("CACHED").0, cached);

    agent.stop();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(probe.get("CACHED").0, cached, "stale value not served");
    let (value, ms) = probe.get("UNCACHED");
    assert_eq!(value, "envproxy:UNCACHED");
    assert!(ms <= 600, "getenv took {ms} ms with a 500 ms timeout");
    assert_eq!(probe.get("UNCACHED").0, "envproxy:UNCACHED");

    let _agent = Agent::start(&socket, &secrets);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        probe.get("UNCACHED").0,
        uncached,
        "no reconnect after restart"
    );
    assert_eq!(probe.get("CACHED").0, cached);

    let stderr = probe.finish();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got {stderr:?}");
    assert!(lines[0].contains("UNCACHED: cannot resolve envproxy:UNCACHED"));
    assert!(!stderr.contains(&cached));
    assert!(!stderr.contains(&uncached));
}

#[test]
fn hung_agent_costs_at_most_the_timeout() {
    let world = World::new();
    let socket = world.socket();
    let listener = UnixListener::bind(&socket).unwrap();
    // Accept connections and never respond.
    let silent_agent = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(4) {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(5));
    });
    let mut command = preload_command(&probe(), &socket);
    command
        .env("ENVPROXY_TIMEOUT_MS", "300")
        .env("SLOW", "envproxy:SLOW");
    let mut probe = Serve::start(command);
    let started = Instant::now();
    let (value, ms) = probe.get("SLOW");
    assert_eq!(value, "envproxy:SLOW");
    assert!(
        (250..=500).contains(&ms),
        "getenv took {ms} ms with a 300 ms timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let stderr = probe.finish();
    assert!(stderr.contains("did not answer within 300 ms"), "{stderr}");
    drop(silent_agent);
}

#[test]
fn truncated_response_is_incomplete() {
    check_truncated_responses(
        "C",
        "CUT",
        |socket| {
            let mut command = preload_command(&probe(), socket);
            command.args(["get", "CUT"]);
            command
        },
        |command| run_with_limit(command, LIMIT),
    );
}

#[test]
fn on_error_unset_and_exit() {
    let world = World::new();
    let socket = world.path("no-agent.sock");

    let mut unset = preload_command(&probe(), &socket);
    unset
        .env("ENVPROXY_ON_ERROR", "unset")
        .env("GONE", "envproxy:GONE")
        .args(["get", "GONE"]);
    let output = run_with_limit(&mut unset, LIMIT);
    assert_eq!(value_of(&output.stdout, "GONE").as_deref(), Some("(null)"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("GONE: cannot resolve"));

    let mut exit = preload_command(&probe(), &socket);
    exit.env("ENVPROXY_ON_ERROR", "exit")
        .env("GONE", "envproxy:GONE")
        .args(["get", "GONE"]);
    let output = run_with_limit(&mut exit, LIMIT);
    assert_eq!(output.status.code(), Some(78));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exiting with status 78"), "{stderr}");
}

#[test]
fn sixteen_threads_resolve_at_once() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("SHARED", &secret)]);
    for ttl in ["30", "0"] {
        let output = run_with_limit(
            run_command(&secrets, probe())
                .env("ENVPROXY_CACHE_TTL", ttl)
                .args(["threads", "SHARED", &secret, "16"]),
            Duration::from_secs(120),
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "ok",
            "TTL {ttl}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn fifty_forked_children_resolve() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("FORKED", &secret)]);
    for ttl in ["30", "0"] {
        let output = run_with_limit(
            run_command(&secrets, probe())
                .env("ENVPROXY_CACHE_TTL", ttl)
                .args(["fork", "FORKED", &secret, "50"]),
            Duration::from_secs(60),
        );
        assert_eq!(
            value_of(&output.stdout, "matched").as_deref(),
            Some("50"),
            "TTL {ttl}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn grandchild_through_shell_resolves() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("NESTED", &secret)]);
    let script = format!("sh -c '{} get NESTED'", probe().display());
    let output = run_with_limit(run_command(&secrets, "sh").args(["-c", &script]), LIMIT);
    assert_eq!(
        value_of(&output.stdout, "NESTED").as_deref(),
        Some(&*secret)
    );
}

#[test]
fn children_get_references_for_copied_values() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("COPIED", &secret)]);
    for mode in ["execve", "spawn"] {
        let output = run_with_limit(run_command(&secrets, probe()).args([mode, "COPIED"]), LIMIT);
        assert!(output.status.success(), "{mode}: {output:?}");
        let environment = String::from_utf8_lossy(&output.stdout);
        assert!(
            !environment.contains(&secret),
            "{mode}: the child saw the value"
        );
        assert!(
            environment.lines().any(|l| l == "COPIED=envproxy:COPIED"),
            "{mode}: {environment}"
        );
        assert!(
            environment.lines().any(|l| l == "RENAMED=envproxy:COPIED"),
            "{mode}: {environment}"
        );
    }
}

#[test]
fn exec_list_children_get_references() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("COPIED", &secret)]);
    for mode in ["execl", "execlp", "execle"] {
        let output = run_with_limit(run_command(&secrets, probe()).args([mode, "COPIED"]), LIMIT);
        assert!(output.status.success(), "{mode}: {output:?}");
        let environment = String::from_utf8_lossy(&output.stdout);
        assert!(
            !environment.contains(&secret),
            "{mode}: the child saw the value"
        );
        assert!(
            environment.lines().any(|l| l == "COPIED=envproxy:COPIED"),
            "{mode}: {environment}"
        );
        assert!(
            environment.lines().any(|l| l == "RENAMED=envproxy:COPIED"),
            "{mode}: {environment}"
        );
    }
}

#[test]
fn exec_list_child_under_library_resolves() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("COPIED", &secret)]);
    let probe = probe();
    let probe = probe.to_str().expect("the probe's path is UTF-8");
    for mode in ["execl", "execlp", "execle"] {
        // env runs `probe get COPIED RENAMED`, which inherits LD_PRELOAD.
        let output = run_with_limit(
            run_command(&secrets, probe).args([mode, "COPIED", probe, "get", "COPIED", "RENAMED"]),
            LIMIT,
        );
        assert!(output.status.success(), "{mode}: {output:?}");
        assert_eq!(
            value_of(&output.stdout, "COPIED").as_deref(),
            Some(&*secret),
            "{mode}"
        );
        assert_eq!(
            value_of(&output.stdout, "RENAMED").as_deref(),
            Some(&*secret),
            "{mode}"
        );
    }
}

/// Compiles `tests/programs/execl_many.c`, whose one call has 65537 arguments, so that only
/// this test pays its compile time.
fn execl_many_program(world: &World) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/execl_many.c");
    let program = world.path("execl_many");
    let status = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&program)
        .arg(&source)
        .status()
        .expect("run cc (install gcc)");
    assert!(status.success(), "compiling {} failed", source.display());
    program
}

#[test]
fn execl_many_arguments_work() {
    let world = World::new();
    let secrets = world.write_secrets(&[("COPIED", "unused")]);
    let program = execl_many_program(&world);

    // 65537 arguments run /bin/true, which prints nothing.
    let output = run_with_limit(&mut run_command(&secrets, &program), LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout, "", "execl failed");

    // With a 1 MiB stack size limit, ARG_MAX is 256 KiB, and the argument pointers alone
    // exceed it, so execl fails as execve would.
    let output = run_with_limit(run_command(&secrets, &program).arg("small-stack"), LIMIT);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(value_of(&output.stdout, "execl").as_deref(), Some("E2BIG"));
}

#[test]
fn forked_children_never_hang_while_threads_resolve() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("BUSY", &secret)]);
    let output = run_with_limit(
        run_command(&secrets, probe())
            .env("ENVPROXY_CACHE_TTL", "0")
            .args(["forkthreads", "BUSY", &secret, "200"]),
        Duration::from_secs(120),
    );
    assert_eq!(value_of(&output.stdout, "hung").as_deref(), Some("0"));
    assert_eq!(value_of(&output.stdout, "matched").as_deref(), Some("200"));
}

#[test]
fn minimal_child_environment_gets_resolver_settings() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("PGPASSWORD", &secret)]);
    let output = run_with_limit(
        run_command(&secrets, probe()).args(["minimal", "PGPASSWORD"]),
        LIMIT,
    );
    let environment = String::from_utf8_lossy(&output.stdout);
    assert!(!environment.contains(&secret), "the child saw the value");
    assert!(
        environment.lines().any(|l| l == "COPY=envproxy:PGPASSWORD"),
        "{environment}"
    );
    assert!(
        environment
            .lines()
            .any(|l| l.starts_with("LD_PRELOAD=") && l.ends_with("libenvproxy.so")),
        "{environment}"
    );
    assert!(
        environment
            .lines()
            .any(|l| l.starts_with("ENVPROXY_SOCKET=")),
        "{environment}"
    );
}

#[test]
fn short_values_under_other_names_stay_plain() {
    let world = World::new();
    let secrets = world.write_secrets(&[("FLAG", "1")]);
    let output = run_with_limit(
        run_command(&secrets, probe())
            .env("PLAIN_ONE", "1")
            .args(["execve", "FLAG"]),
        LIMIT,
    );
    let environment = String::from_utf8_lossy(&output.stdout);
    assert!(
        environment.lines().any(|l| l == "PLAIN_ONE=1"),
        "{environment}"
    );
    assert!(
        environment.lines().any(|l| l == "FLAG=envproxy:FLAG"),
        "{environment}"
    );
}

#[test]
fn looked_up_unset_values_stay_out_of_children() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("ABSENT", &secret)]);
    let agent = Agent::start(&world.socket(), &secrets);
    for mode in ["execve", "spawn"] {
        let output = run_with_limit(
            preload_command(&probe(), &agent.socket)
                .env_remove("ABSENT")
                .env("ENVPROXY_LOOKUP_UNSET", "1")
                .args([mode, "ABSENT"]),
            LIMIT,
        );
        assert!(output.status.success(), "{mode}: {output:?}");
        let environment = String::from_utf8_lossy(&output.stdout);
        assert!(
            !environment.contains(&secret),
            "{mode}: the child saw the value"
        );
        assert!(
            !environment.lines().any(|l| l.starts_with("ABSENT=")),
            "{mode}: {environment}"
        );
        assert!(
            !environment.lines().any(|l| l.starts_with("RENAMED=")),
            "{mode}: {environment}"
        );
        assert!(
            environment.lines().any(|l| l == "ENVPROXY_LOOKUP_UNSET=1"),
            "{mode}: {environment}"
        );
    }
    agent.stop();
}

#[test]
fn reference_like_values_are_not_rewritten_when_renamed() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("OUTER", "envproxy:INNER"), ("INNER", &secret)]);
    let output = run_with_limit(
        run_command(&secrets, probe()).args(["execve", "OUTER"]),
        LIMIT,
    );
    assert!(output.status.success(), "{output:?}");
    let environment = String::from_utf8_lossy(&output.stdout);
    assert!(
        environment.lines().any(|l| l == "OUTER=envproxy:OUTER"),
        "{environment}"
    );
    assert!(
        environment.lines().any(|l| l == "RENAMED=envproxy:INNER"),
        "{environment}"
    );
    assert!(
        environment.lines().any(|l| l == "INNER=envproxy:INNER"),
        "{environment}"
    );
}

#[test]
fn plain_setting_values_stay_plain_under_new_names() {
    let world = World::new();
    let shared = "/usr/local/share/app";
    let secrets = world.write_secrets(&[("SAME_AS_PLAIN", shared)]);
    let output = run_with_limit(
        run_command(&secrets, probe())
            .env("PLAIN_DIRECTORY", shared)
            .args(["execve", "SAME_AS_PLAIN"]),
        LIMIT,
    );
    assert!(output.status.success(), "{output:?}");
    let environment = String::from_utf8_lossy(&output.stdout);
    assert!(
        environment
            .lines()
            .any(|l| l == format!("RENAMED={shared}")),
        "{environment}"
    );
    assert!(
        environment
            .lines()
            .any(|l| l == "SAME_AS_PLAIN=envproxy:SAME_AS_PLAIN"),
        "{environment}"
    );
}

#[test]
fn closed_stderr_does_not_corrupt_requests() {
    let world = World::new();
    let (first, second) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("FIRST", &first), ("SECOND", &second)]);
    let socket = world.socket();
    let _agent = Agent::start(&socket, &secrets);
    let script = format!(
        "exec 2>&-; {} get MISSING FIRST SECOND FIRST",
        probe().display()
    );
    let mut command = preload_command(Path::new("/bin/sh"), &socket);
    command
        .env("ENVPROXY_CACHE_TTL", "0")
        .env("MISSING", "envproxy:MISSING")
        .env("FIRST", "envproxy:FIRST")
        .env("SECOND", "envproxy:SECOND")
        .args(["-c", &script]);
    let output = run_with_limit(&mut command, LIMIT);
    let values = lines(&output.stdout);
    assert_eq!(values.len(), 4, "{values:?}");
    assert_eq!(values[1], ("FIRST".to_string(), first.clone()));
    assert_eq!(values[2], ("SECOND".to_string(), second));
    assert_eq!(values[3], ("FIRST".to_string(), first));
}

#[test]
fn agent_of_another_user_is_not_trusted() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root to run a fake agent as uid 65534; run the suite as root (CI does)"
    );
    let world = World::new();
    std::fs::set_permissions(
        world.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket = world.socket();
    // A stand-in agent owned by uid 65534 that would respond to every request with a value.
    let script = r#"
import os, socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(8)
print("ready", flush=True)
while True:
    connection, _ = server.accept()
    connection.recv(4096)
    connection.sendall(b"\x00\x00\x05owned")
    connection.close()
"#;
    let mut impostor = Command::new("python3")
        .args(["-c", script])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3 as uid 65534");
    let mut ready = String::new();
    BufReader::new(impostor.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");

    let mut command = preload_command(&probe(), &socket);
    command
        .env("TOKEN", "envproxy:TOKEN")
        .args(["get", "TOKEN"]);
    let output = run_with_limit(&mut command, LIMIT);
    let _ = impostor.kill();
    let _ = impostor.wait();

    assert_eq!(
        value_of(&output.stdout, "TOKEN").as_deref(),
        Some("envproxy:TOKEN")
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is served by uid 65534"), "{stderr}");
}

/// The timeout that the descriptor tests give the library. It is well below the test's own
/// limit, so a library stuck on a descriptor fails the test instead of passing late.
const DESCRIPTOR_TIMEOUT_MS: u64 = 1000;

/// Runs the probe in `mode` against a fresh agent with `ENVPROXY_CACHE_TTL=0`, so its second
/// `getenv` sends a request after the program changed its descriptors, and checks that the
/// request resolved within the timeout. Returns the probe's output.
fn run_descriptor_probe(mode: &str, extra_args: &[&Path]) -> Vec<u8> {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("TOKEN", &secret)]);
    let socket = world.socket();
    let _agent = Agent::start(&socket, &secrets);
    let mut command = preload_command(&probe(), &socket);
    command
        .env("ENVPROXY_CACHE_TTL", "0")
        .env("ENVPROXY_TIMEOUT_MS", DESCRIPTOR_TIMEOUT_MS.to_string())
        .env("TOKEN", "envproxy:TOKEN")
        .args([mode, "TOKEN"])
        .args(extra_args);
    let output = run_with_limit(&mut command, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "probe {mode} failed: {stderr}");
    assert_eq!(
        value_of(&output.stdout, "TOKEN").as_deref(),
        Some(&*secret),
        "probe {mode} did not resolve TOKEN after changing its descriptors: {stderr}"
    );
    let ms: u64 = value_of(&output.stdout, "ms").unwrap().parse().unwrap();
    assert!(
        ms < DESCRIPTOR_TIMEOUT_MS,
        "getenv took {ms} ms with a {DESCRIPTOR_TIMEOUT_MS} ms timeout"
    );
    output.stdout
}

#[test]
fn socketpair_on_reused_fd_stays_untouched() {
    let stdout = run_descriptor_probe("closefds-socketpair", &[]);
    assert_eq!(value_of(&stdout, "fd").as_deref(), Some("3"));
    assert_eq!(
        value_of(&stdout, "untouched").as_deref(),
        Some("1"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
}

#[test]
fn file_on_reused_fd_stays_open() {
    let world = World::new();
    let file = world.path("program-file");
    let stdout = run_descriptor_probe("closefds-file", &[&file]);
    assert_eq!(value_of(&stdout, "fd").as_deref(), Some("3"));
    assert_eq!(
        value_of(&stdout, "untouched").as_deref(),
        Some("1"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
}

#[test]
fn dup2_over_library_fd_stays_untouched() {
    let stdout = run_descriptor_probe("dup2", &[]);
    let replaced: u32 = value_of(&stdout, "replaced").unwrap().parse().unwrap();
    assert!(
        replaced >= 1,
        "the probe found no socket of the library to replace"
    );
    assert_eq!(
        value_of(&stdout, "untouched").as_deref(),
        Some("1"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
}

#[test]
fn dup3_over_library_fd_stays_untouched() {
    let stdout = run_descriptor_probe("dup3", &[]);
    let replaced: u32 = value_of(&stdout, "replaced").unwrap().parse().unwrap();
    assert!(
        replaced >= 1,
        "the probe found no socket of the library to replace"
    );
    assert_eq!(
        value_of(&stdout, "untouched").as_deref(),
        Some("1"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
}

#[test]
fn close_range_then_socketpair_untouched() {
    let stdout = run_descriptor_probe("close_range", &[]);
    assert_eq!(value_of(&stdout, "fd").as_deref(), Some("3"));
    assert_eq!(
        value_of(&stdout, "untouched").as_deref(),
        Some("1"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
}

#[test]
fn closefrom_then_socketpair_untouched() {
    let stdout = run_descriptor_probe("closefrom", &[]);
    assert_eq!(value_of(&stdout, "fd").as_deref(), Some("3"));
    assert_eq!(
        value_of(&stdout, "untouched").as_deref(),
        Some("1"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
}

/// A raw close system call bypasses the interposed `close`. Unless the connection was idle
/// long enough for the library's periodic `fstat`, the request goes to the file: the send
/// fails with ENOTSOCK and writes nothing, and the library retries on a new connection.
#[test]
fn raw_close_then_file_stays_untouched() {
    let world = World::new();
    let file = world.path("program-file");
    let stdout = run_descriptor_probe("rawclose-file", &[&file]);
    assert_eq!(value_of(&stdout, "fd").as_deref(), Some("3"));
    assert_eq!(
        value_of(&stdout, "untouched").as_deref(),
        Some("1"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
}

/// The agent's default interval between checks of the secrets file. It loads a version that
/// two checks in a row find unchanged, so an empty file that lasts this long is a real change.
const RELOAD_POLL: Duration = Duration::from_millis(250);

/// Rewrites the secrets file in place 40 times, as `printf ... > file` does: truncate, then
/// write after a pause of 20 ms. A program reads the key every 5 ms without a cache, and must
/// see one of the written values every time, never the unresolved reference.
///
/// On a loaded machine the pause can stretch past [`RELOAD_POLL`], and the agent then rightly
/// loads the empty file. The empty time of each rewrite is measured, and a round in which one
/// lasted that long is run again, up to three rounds.
fn check_truncating_rewrites(file_name: &str, format_line: fn(&str) -> String) {
    let mut longest_empty = Vec::new();
    for _ in 0..3 {
        match truncating_rewrite_round(file_name, format_line) {
            Ok(()) => return,
            Err(empty) => longest_empty.push(empty),
        }
    }
    panic!(
        "in each of 3 rounds a rewrite left the file empty for at least the agent's poll \
         interval ({RELOAD_POLL:?}), so the agent could load it: longest empty times \
         {longest_empty:?}; the machine is too loaded for this test"
    );
}

/// Runs one round of [`check_truncating_rewrites`]. Returns the longest time the file was
/// empty when that reached [`RELOAD_POLL`], so that the round proves nothing.
fn truncating_rewrite_round(
    file_name: &str,
    format_line: fn(&str) -> String,
) -> Result<(), Duration> {
    let world = World::new();
    let secrets = world.path(file_name);
    let mut written = vec![random_secret()];
    std::fs::write(&secrets, format_line(&written[0])).unwrap();
    let socket = world.socket();
    let _agent = Agent::start(&socket, &secrets);

    let mut command = preload_command(&probe(), &socket);
    command
        .env("ENVPROXY_CACHE_TTL", "0")
        .env("KEY", "envproxy:KEY")
        .args(["loop", "KEY", "5", "800"]);
    let (values, _pid) = stream_values(command, "KEY");
    let first = values.recv_timeout(LIMIT).expect("first value");
    assert_eq!(first.1, written[0]);

    let mut longest_empty = Duration::ZERO;
    for _ in 0..40 {
        let value = random_secret();
        let truncated = Instant::now();
        let mut file = std::fs::File::create(&secrets).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        file.write_all(format_line(&value).as_bytes()).unwrap();
        drop(file);
        longest_empty = longest_empty.max(truncated.elapsed());
        written.push(value);
        std::thread::sleep(Duration::from_millis(40));
    }

    let last = written.last().unwrap().clone();
    let mut seen_last = false;
    let mut count = 1;
    let mut unresolved = None;
    // The probe ends after its 800 reads, which closes the channel.
    while let Ok((_, value)) = values.recv_timeout(LIMIT) {
        count += 1;
        if !written.contains(&value) && unresolved.is_none() {
            unresolved = Some((count, value.clone()));
        }
        seen_last |= value == last;
    }
    if let Some((read, value)) = unresolved {
        if longest_empty >= RELOAD_POLL {
            return Err(longest_empty);
        }
        panic!(
            "read {read} of KEY returned {value:?}, which was never written (the file was \
             empty for at most {longest_empty:?})"
        );
    }
    assert_eq!(count, 800, "the probe ended early");
    assert!(seen_last, "the last rewrite was never loaded");
    Ok(())
}

#[test]
fn truncating_rewrite_of_dotenv_loses_no_key() {
    check_truncating_rewrites("secrets.env", |value| format!("KEY={value}\n"));
}

#[test]
fn truncating_rewrite_of_toml_loses_no_key() {
    check_truncating_rewrites("secrets.toml", |value| format!("KEY = \"{value}\"\n"));
}

#[test]
fn too_large_setting_gives_maximum() {
    let world = World::new();
    let socket = world.path("no-agent.sock");
    let mut command = preload_command(&probe(), &socket);
    command
        .env("ENVPROXY_CACHE_TTL", "99999999999999999999")
        .env("GONE", "envproxy:GONE")
        .args(["get", "GONE"]);
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "ENVPROXY_CACHE_TTL=\"99999999999999999999\" is too large (the maximum is \
             18446744073709551615); using the default 30"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("not a whole number"), "{stderr}");
}
