//! End-to-end tests of Python and Node.js programs under `envproxy run`: each reads a random
//! secret through its usual API, and neither it nor its children hold the value in
//! `/proc/PID/environ`.

mod e2e_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e_support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Python code that prints `NAME=VALUE` and whether the value is in its own environ.
const PYTHON_SELF_CHECK: &str = r#"
import os, sys
name = sys.argv[1]
value = os.environ.get(name, "(null)")
raw = open("/proc/self/environ", "rb").read()
print(f"{name}={value}")
print("getenv=" + str(os.getenv(name)))
print("environ=" + ("leak" if value.encode() in raw else "clean"))
"#;

fn require(program: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{program} is not installed; .ci/run installs it (apt-get install python3 nodejs)"
    );
}

#[test]
fn python_reads_secret_through_os_environ() {
    require("python3");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let output = run_with_limit(
        run_command(&secrets, "python3").args(["-c", PYTHON_SELF_CHECK, "API_TOKEN"]),
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    assert_eq!(
        value_of(&output.stdout, "getenv").as_deref(),
        Some(&*secret)
    );
    assert_eq!(
        value_of(&output.stdout, "environ").as_deref(),
        Some("clean")
    );
}

#[test]
fn python_child_with_copied_environ_gets_reference() {
    require("python3");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("DB_URL", &secret)]);
    let parent = format!(
        r#"
import os, subprocess, sys
env = os.environ.copy()
env["EXTRA"] = "1"
child = {PYTHON_SELF_CHECK:?}
subprocess.run([sys.executable, "-c", child, "DB_URL"], env=env, check=True)
subprocess.run(["/usr/bin/env"], env=dict(os.environ), check=True)
"#
    );
    let output = run_with_limit(
        run_command(&secrets, "python3").args(["-c", &parent]),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        value_of(&output.stdout, "DB_URL").as_deref(),
        Some(&*secret)
    );
    assert_eq!(
        value_of(&output.stdout, "environ").as_deref(),
        Some("clean")
    );
    assert!(
        stdout.lines().any(|l| l == "DB_URL=envproxy:DB_URL"),
        "/usr/bin/env did not see the reference: {stdout}"
    );
    // Only the child's own two lines (value and getenv) show the value.
    assert_eq!(stdout.matches(&secret).count(), 2, "{stdout}");
}

#[test]
fn python_loop_sees_rotated_value_within_ttl() {
    require("python3");
    let world = World::new();
    let (old, new) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("ROTATING", &old)]);
    let script = r#"
import os, sys, time
for _ in range(200):
    print("ROTATING=" + os.environ["ROTATING"], flush=True)
    time.sleep(0.05)
"#;
    let mut child = run_command(&secrets, "python3")
        .env("ENVPROXY_CACHE_TTL", "1")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, values) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(value) = line.strip_prefix("ROTATING=") {
                let _ = sender.send((Instant::now(), value.to_string()));
            }
        }
    });
    assert_eq!(values.recv_timeout(LIMIT).unwrap().1, old);
    std::thread::sleep(Duration::from_millis(300));
    let edited_at = Instant::now();
    world.write_secrets(&[("ROTATING", &new)]);
    let delay = loop {
        let (at, value) = values
            .recv_timeout(Duration::from_secs(10))
            .expect("new value");
        if value == new {
            break at.duration_since(edited_at);
        }
        assert_eq!(value, old);
    };
    // SIGTERM, not SIGKILL: envproxy run forwards it to Python and removes its socket directory.
    // SAFETY: kill with the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert!(
        delay <= Duration::from_secs(2),
        "new value seen after {delay:?}"
    );
}

#[test]
fn python_hook_disabled_leaves_reference() {
    require("python3");
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", "value")]);
    for value in ["1", "true", "Yes"] {
        let output = run_with_limit(
            run_command(&secrets, "python3")
                .env("ENVPROXY_NO_PYTHON", value)
                .args(["-c", PYTHON_SELF_CHECK, "API_TOKEN"]),
            LIMIT,
        );
        assert_eq!(
            value_of(&output.stdout, "API_TOKEN").as_deref(),
            Some("envproxy:API_TOKEN"),
            "ENVPROXY_NO_PYTHON={value}"
        );
    }
}

/// Node.js code that prints the value, checks its own environ, then spawns a child with a
/// spread copy of `process.env` that does the same.
const NODE_SCRIPT: &str = r#"
const fs = require("fs");
const { spawnSync } = require("child_process");
const name = process.argv[1];
const value = process.env[name];
const raw = fs.readFileSync("/proc/self/environ");
const role = process.argv[2] || "parent";
console.log(`${role}.${name}=${value}`);
console.log(`${role}.environ=${raw.includes(Buffer.from(value)) ? "leak" : "clean"}`);
if (role === "parent") {
  console.log(`listed=${Object.keys(process.env).includes(name)}`);
  console.log(`entries=${Object.fromEntries(Object.entries(process.env))[name] === value}`);
  const result = spawnSync(process.execPath, ["-e", process.argv[3], name, "child"], {
    env: { ...process.env, EXTRA: "1" },
    stdio: "inherit",
  });
  process.exit(result.status);
}
"#;

#[test]
fn node_reads_secret_and_spread_env_child_gets_reference() {
    require("node");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("SESSION_KEY", &secret)]);
    let output = run_with_limit(
        run_command(&secrets, "node").args([
            "-e",
            NODE_SCRIPT,
            "SESSION_KEY",
            "parent",
            NODE_SCRIPT,
        ]),
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let out = &output.stdout;
    assert_eq!(
        value_of(out, "parent.SESSION_KEY").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    assert_eq!(value_of(out, "parent.environ").as_deref(), Some("clean"));
    // Object.keys lists the name; the values it leads to read through getenv as well.
    assert_eq!(value_of(out, "listed").as_deref(), Some("true"));
    assert_eq!(value_of(out, "entries").as_deref(), Some("true"));
    assert_eq!(
        value_of(out, "child.SESSION_KEY").as_deref(),
        Some(&*secret)
    );
    assert_eq!(value_of(out, "child.environ").as_deref(), Some("clean"));
}

#[test]
fn node_loop_sees_rotated_value_within_ttl() {
    require("node");
    let world = World::new();
    let (old, new) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("ROTATING", &old)]);
    let script = r#"
let count = 0;
const timer = setInterval(() => {
  console.log(`ROTATING=${process.env.ROTATING}`);
  if (++count === 200) clearInterval(timer);
}, 50);
"#;
    let mut command = run_command(&secrets, "node");
    command.env("ENVPROXY_CACHE_TTL", "1").args(["-e", script]);
    assert_rotation_seen(&world, &mut command, "ROTATING", &old, &new);
}

#[test]
fn node_renamed_value_reaches_child_as_reference() {
    require("node");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("SESSION_KEY", &secret)]);
    // libuv sets `environ` to the child's environment and then calls execvp.
    let script = r#"
const { spawnSync } = require("child_process");
const result = spawnSync("/usr/bin/env", [], {
  env: { ...process.env, RENAMED: process.env.SESSION_KEY },
  encoding: "utf8",
});
process.stdout.write(result.stdout);
"#;
    let output = run_with_limit(run_command(&secrets, "node").args(["-e", script]), LIMIT);
    let environment = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !environment.contains(&secret),
        "the child saw the value: {environment}"
    );
    assert!(
        environment
            .lines()
            .any(|l| l == "RENAMED=envproxy:SESSION_KEY"),
        "{environment}"
    );
}

#[test]
fn python_truncated_response_is_incomplete() {
    require("python3");
    check_truncated_responses(
        "Python",
        "CUT",
        |socket| {
            let mut command = preload_command(Path::new("python3"), socket);
            command.args(["-c", "import os; print('CUT=' + os.environ['CUT'])"]);
            command
        },
        |command| run_with_limit(command, LIMIT),
    );
}

#[test]
fn missing_hooks_directory_is_reported() {
    require("python3");
    require("perl");
    let world = World::new();
    // Two levels down, so that none of hooks, ../hooks and ../../hooks beside the copy exists.
    let library_dir = world.path("a/b/nohooks");
    std::fs::create_dir_all(&library_dir).unwrap();
    let library_copy = library_dir.join("libenvproxy.so");
    std::fs::copy(library(), &library_copy).unwrap();
    let socket = world.path("no-agent.sock");

    let runtimes: [(&str, &[&str], &str); 3] = [
        (
            "python3",
            &["-c", "pass"],
            "the Python hook is missing, so os.environ",
        ),
        ("perl", &["-e", "1"], "the Perl hook is missing, so %ENV"),
        (
            "java",
            &["-version"],
            "the Java hook is missing, so System.getenv",
        ),
    ];
    for (program, args, expected) in runtimes {
        let command = || {
            let mut command = preload_command(Path::new(program), &socket);
            command
                .env("LD_PRELOAD", &library_copy)
                .env_remove("ENVPROXY_HOOKS_DIR")
                .env_remove("JAVA_TOOL_OPTIONS")
                .env_remove("PERL5OPT")
                .args(args);
            command
        };
        let mut with_reference = command();
        with_reference.env("API_TOKEN", "envproxy:API_TOKEN");
        let output = run_with_limit(&mut with_reference, LIMIT);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{program}: {stderr}");
        assert!(stderr.contains(expected), "{program}: {stderr}");
        assert!(
            stderr.contains(&format!("beside {}", library_copy.display())),
            "{program}: {stderr}"
        );
        assert_eq!(stderr.matches("hook is missing").count(), 1, "{stderr}");

        // Without references in the environment the program needs no hook.
        let output = run_with_limit(&mut command(), LIMIT);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("hook is missing"), "{program}: {stderr}");
    }

    // The switch that turns the hook off also turns the message off.
    let mut switched_off = preload_command(Path::new("python3"), &socket);
    switched_off
        .env("LD_PRELOAD", &library_copy)
        .env_remove("ENVPROXY_HOOKS_DIR")
        .env("ENVPROXY_NO_PYTHON", "1")
        .env("API_TOKEN", "envproxy:API_TOKEN")
        .args(["-c", "pass"]);
    let output = run_with_limit(&mut switched_off, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("hook is missing"), "{stderr}");

    // A program that is no such runtime gets no message.
    let mut c_program = preload_command(&probe(), &socket);
    c_program
        .env("LD_PRELOAD", &library_copy)
        .env_remove("ENVPROXY_HOOKS_DIR")
        .env("API_TOKEN", "envproxy:API_TOKEN")
        .args(["get", "OTHER"]);
    let output = run_with_limit(&mut c_program, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("hook is missing"), "{stderr}");
}

#[test]
fn enabled_off_values_leave_references() {
    require("python3");
    require("perl");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let probe_path = probe();
    let programs: [(&str, Vec<&std::ffi::OsStr>); 3] = [
        (
            "C",
            vec![probe_path.as_os_str(), "get".as_ref(), "API_TOKEN".as_ref()],
        ),
        (
            "Perl",
            vec![
                "perl".as_ref(),
                "-e".as_ref(),
                "print qq(API_TOKEN=$ENV{API_TOKEN}\\n)".as_ref(),
            ],
        ),
        (
            "Python",
            vec![
                "python3".as_ref(),
                "-c".as_ref(),
                "import os; print('API_TOKEN=' + os.environ['API_TOKEN'])".as_ref(),
            ],
        ),
    ];
    let cases = [
        ("ENVPROXY_ENABLED=0", "envproxy:API_TOKEN"),
        ("ENVPROXY_ENABLED=false", "envproxy:API_TOKEN"),
        ("ENVPROXY_ENABLED=No", "envproxy:API_TOKEN"),
        ("ENVPROXY_ENABLED=OFF", "envproxy:API_TOKEN"),
        ("ENVPROXY_ENABLED=1", secret.as_str()),
        ("ENVPROXY_ENABLED=", secret.as_str()),
    ];
    for (label, program) in &programs {
        for (setting, expected) in cases {
            // `env` starts under the library, which sets the runtime variables such as
            // PERL5OPT, and then the program starts with the setting.
            let mut command = run_command(&secrets, "env");
            command.arg(setting).args(program);
            let output = run_with_limit(&mut command, LIMIT);
            assert_eq!(
                value_of(&output.stdout, "API_TOKEN").as_deref(),
                Some(expected),
                "{label} with {setting}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
