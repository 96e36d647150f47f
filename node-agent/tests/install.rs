//! The agent installs the library into a hostPath-style directory while processes keep the
//! version they loaded. Real processes preload a small shared library from the install target,
//! the `envproxy-agent` binary installs a new build, and the sweep removes the old build only
//! after its last user exits.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use envproxy_agent::install;
use envproxy_proto::{client, Request};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const AGENT: &str = env!("CARGO_BIN_EXE_envproxy-agent");
const WAIT: Duration = Duration::from_secs(10);

/// A stand-in for `libenvproxy.so` that reports which build was loaded.
const LIBRARY_SOURCE: &str = r#"
const char *envproxy_test_build(void) { return BUILD; }
"#;

/// Prints the build of the preloaded library at start and again for each line on stdin.
const PROGRAM_SOURCE: &str = r#"
#include <stdio.h>
const char *envproxy_test_build(void) __attribute__((weak));
static void report(void) {
    printf("%s\n", envproxy_test_build ? envproxy_test_build() : "no library");
    fflush(stdout);
}
int main(void) {
    char line[64];
    report();
    while (fgets(line, sizeof line, stdin)) report();
    return 0;
}
"#;

fn compile(work: &Path, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let source_path = work.join(format!("{name}.c"));
    fs::write(&source_path, source).unwrap();
    let output = work.join(name);
    let status = Command::new("cc")
        .args(args)
        .arg("-o")
        .arg(&output)
        .arg(&source_path)
        .status()
        .expect("cannot run cc; install a C compiler (apt-get install gcc)");
    assert!(status.success(), "cc failed for {name}");
    output
}

/// Writes an install source directory whose library reports `build`.
fn source_directory(work: &Path, build: &str) -> PathBuf {
    let library = compile(
        work,
        &format!("lib-{build}.so"),
        LIBRARY_SOURCE,
        &["-shared", "-fPIC", &format!("-DBUILD=\"{build}\"")],
    );
    let source = work.join(format!("source-{build}"));
    fs::create_dir_all(source.join("lib")).unwrap();
    fs::create_dir_all(source.join("hooks/python")).unwrap();
    fs::copy(&library, source.join("lib/libenvproxy.so")).unwrap();
    fs::write(
        source.join("hooks/python/sitecustomize.py"),
        format!("BUILD = {build:?}\n"),
    )
    .unwrap();
    // The image's Java hook, at the path the library adds to JAVA_TOOL_OPTIONS.
    fs::create_dir_all(source.join("hooks/java")).unwrap();
    fs::write(source.join(JAVA_HOOK), java_hook_bytes(build)).unwrap();
    source
}

/// The Java hook's path in the image's install source and under the install target.
const JAVA_HOOK: &str = "hooks/java/envproxy-javaagent.jar";

/// Stand-in bytes for the jar of `build`: a zip header and bytes that are not UTF-8.
fn java_hook_bytes(build: &str) -> Vec<u8> {
    let mut bytes = b"PK\x03\x04\x00\xff\xfe".to_vec();
    bytes.extend_from_slice(build.as_bytes());
    bytes
}

/// A running program with the installed library preloaded.
struct Preloaded {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Preloaded {
    fn start(program: &Path, target: &Path) -> Preloaded {
        let mut child = Command::new(program)
            .env("LD_PRELOAD", target.join("lib/libenvproxy.so"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Preloaded {
            child,
            stdin,
            stdout,
        }
    }

    fn read_build(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    fn ask_build(&mut self) -> String {
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
        self.read_build()
    }

    /// Returns the paths of the mappings whose file has `inode`, as the process's maps show.
    fn mapped_paths_of(&self, inode: u64) -> Vec<String> {
        let maps = fs::read_to_string(format!("/proc/{}/maps", self.child.id())).unwrap();
        maps.lines()
            .filter(|line| line.split_ascii_whitespace().nth(4) == Some(&inode.to_string()))
            .filter_map(|line| line.split_ascii_whitespace().nth(5).map(str::to_string))
            .collect()
    }

    fn stop(mut self) {
        drop(self.stdin);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the preloaded program failed: {status}");
    }
}

/// Runs the agent binary with an `[install]` table until it serves, then stops it.
fn run_agent_install(work: &Path, source: &Path, target: &Path) -> String {
    run_agent_install_with_umask(work, source, target, None)
}

/// Like [`run_agent_install`], with the agent's umask set to `umask` when given.
fn run_agent_install_with_umask(
    work: &Path,
    source: &Path,
    target: &Path,
    umask: Option<u32>,
) -> String {
    let secrets = work.join("secrets.json");
    fs::write(&secrets, "{}").unwrap();
    let socket = work.join("agent.sock");
    let config = work.join("config.toml");
    fs::write(
        &config,
        format!(
            "[agent]\nsocket = {socket:?}\n[backend]\npath = {secrets:?}\n\
             [install]\nsource = {source:?}\ntarget = {target:?}\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(AGENT);
    if let Some(mask) = umask {
        let mask = nix::sys::stat::Mode::from_bits_truncate(mask);
        // SAFETY: umask is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(move || {
                nix::sys::stat::umask(mask);
                Ok(())
            });
        }
    }
    let mut agent = command
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut stream) = UnixStream::connect(&socket) {
            stream.set_read_timeout(Some(WAIT)).unwrap();
            if client::call(&mut stream, &Request::Status).is_ok() {
                break;
            }
        }
        if let Some(status) = agent.try_wait().unwrap() {
            let mut stderr = String::new();
            agent
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("the agent exited with {status} before serving:\n{stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "the agent never served on {socket:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
    let status = agent.wait().unwrap();
    let mut stderr = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "the agent failed: {status}\n{stderr}");
    stderr
}

fn installed_library(target: &Path) -> fs::Metadata {
    fs::metadata(target.join("lib/libenvproxy.so")).unwrap()
}

#[test]
fn running_process_keeps_old_library() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let target = work.join("node/opt/envproxy");
    let program = compile(work, "report-build", PROGRAM_SOURCE, &[]);
    let first_source = source_directory(work, "first");
    let second_source = source_directory(work, "second");

    let log = run_agent_install(work, &first_source, &target);
    assert!(log.contains("installed the library and hooks"), "{log}");
    let first_inode = installed_library(&target).ino();
    let first_file = fs::canonicalize(target.join("lib/libenvproxy.so")).unwrap();
    let first_jar = fs::canonicalize(target.join(JAVA_HOOK)).unwrap();
    assert_eq!(fs::read(&first_jar).unwrap(), java_hook_bytes("first"));
    assert_eq!(
        first_jar.strip_prefix(first_file.parent().unwrap().parent().unwrap()),
        Ok(Path::new(JAVA_HOOK)),
        "the jar is not in the library's versions/<version>/ directory"
    );

    let mut old = Preloaded::start(&program, &target);
    assert_eq!(old.read_build(), "first");
    let mapped = old.mapped_paths_of(first_inode);
    assert!(!mapped.is_empty(), "the library is not mapped");
    assert!(
        mapped.iter().all(|path| Path::new(path) == first_file),
        "{mapped:?}"
    );

    run_agent_install(work, &second_source, &target);
    let second_inode = installed_library(&target).ino();
    assert_ne!(second_inode, first_inode);
    assert_eq!(
        fs::read_to_string(target.join("hooks/python/sitecustomize.py")).unwrap(),
        "BUILD = \"second\"\n"
    );
    assert_eq!(
        fs::read(target.join(JAVA_HOOK)).unwrap(),
        java_hook_bytes("second")
    );
    assert_eq!(fs::read(&first_jar).unwrap(), java_hook_bytes("first"));

    // The running process still executes the first build from its file, which still exists.
    assert_eq!(old.ask_build(), "first");
    assert!(!old.mapped_paths_of(first_inode).is_empty());
    assert_eq!(fs::metadata(&first_file).unwrap().ino(), first_inode);

    let mut new = Preloaded::start(&program, &target);
    assert_eq!(new.read_build(), "second");
    assert!(!new.mapped_paths_of(second_inode).is_empty());
    assert!(new.mapped_paths_of(first_inode).is_empty());

    // The first build stays while a process maps it and goes once none does.
    let first_version = first_file
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let report = install::sweep(&target, Path::new("/proc"), Duration::ZERO).unwrap();
    assert_eq!(report.unreadable_processes, 0, "{report:?}");
    assert_eq!(report.in_use, std::slice::from_ref(&first_version));
    assert!(report.removed.is_empty());
    assert!(first_file.exists());

    old.stop();
    let report = install::sweep(&target, Path::new("/proc"), Duration::ZERO).unwrap();
    assert_eq!(report.removed, [first_version]);
    assert!(!first_file.exists());
    assert!(!first_jar.exists());

    // The process of the second build is unaffected by the sweep.
    assert_eq!(new.ask_build(), "second");
    new.stop();
    let report = install::sweep(&target, Path::new("/proc"), Duration::ZERO).unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert!(installed_library(&target).is_file());
}

#[test]
fn agent_stops_when_install_fails() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let empty_source = work.join("empty");
    fs::create_dir(&empty_source).unwrap();
    let config = work.join("config.toml");
    let secrets = work.join("secrets.json");
    fs::write(&secrets, "{}").unwrap();
    fs::write(
        &config,
        format!(
            "[agent]\nsocket = {:?}\n[backend]\npath = {secrets:?}\n\
             [install]\nsource = {empty_source:?}\ntarget = {:?}\n",
            work.join("agent.sock"),
            work.join("target")
        ),
    )
    .unwrap();
    let output = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot install the library"), "{stderr}");
    assert!(stderr.contains("lib/libenvproxy.so"), "{stderr}");
    assert!(!work.join("agent.sock").exists());
}

#[test]
fn install_under_umask_077_creates_0755_directories() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let target = work.join("node/opt/envproxy");
    let source = source_directory(work, "first");
    run_agent_install_with_umask(work, &source, &target, Some(0o077));

    let version = fs::canonicalize(target.join("current")).unwrap();
    let mut directories = vec![
        work.join("node"),
        work.join("node/opt"),
        target.clone(),
        target.join("versions"),
        version.clone(),
    ];
    for relative in ["lib", "hooks", "hooks/python", "hooks/java"] {
        directories.push(version.join(relative));
    }
    for directory in &directories {
        let mode = fs::metadata(directory).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{} has mode {mode:o}", directory.display());
    }
    let marker = version.join(install::VERSION_MARKER);
    let mode = fs::metadata(&marker).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "{} has mode {mode:o}", marker.display());
}
