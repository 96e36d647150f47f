//! Tests of `envproxy check` against real programs: C programs built dynamically, statically
//! and with musl, a Go program, setuid copies and scripts for Python, Java, Node.js, Perl and
//! the shell.

mod e2e_support;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e_support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The parsed result of `envproxy check -o json`.
struct Checked {
    status: i32,
    verdict: String,
    reasons: Vec<String>,
    program: String,
}

impl Checked {
    fn text(&self) -> String {
        format!("{}: {}", self.verdict, self.reasons.join(" | "))
    }

    fn mentions(&self, words: &str) -> bool {
        self.reasons.iter().any(|reason| reason.contains(words))
    }
}

/// `envproxy check` with a clean set of `ENVPROXY_*` variables, the built library and the
/// hooks directory `hooks`.
fn check_command(hooks: &Path) -> Command {
    let mut command = Command::new(envproxy());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ENVPROXY_") {
            command.env_remove(&key);
        }
    }
    command
        .env("ENVPROXY_LIB", library())
        .env("ENVPROXY_HOOKS_DIR", hooks)
        .arg("check");
    command
}

/// Runs `command` with `-o json` and parses the report.
fn run_json(command: &mut Command, words: &[&OsStr]) -> Checked {
    command.args(["-o", "json", "--"]).args(words);
    let output = run_with_limit(command, LIMIT);
    let status = output.status.code().expect("check exited normally");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|err| {
        panic!(
            "invalid JSON ({err}): {stdout}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let verdict = report["verdict"].as_str().expect("verdict").to_string();
    let resolved = report["resolved"].as_bool().expect("resolved");
    assert_eq!(resolved, verdict != "references only", "{report}");
    Checked {
        status,
        verdict,
        reasons: report["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .map(|reason| reason.as_str().expect("reason text").to_string())
            .collect(),
        program: report["program"].as_str().expect("program").to_string(),
    }
}

/// Checks `words` with the source tree's hooks.
fn check(words: &[&OsStr]) -> Checked {
    run_json(&mut check_command(&source_hooks_dir()), words)
}

/// Runs `envproxy check` with text output and returns the output.
fn check_text(hooks: &Path, words: &[&OsStr]) -> Output {
    let mut command = check_command(hooks);
    command.arg("--").args(words);
    run_with_limit(&mut command, LIMIT)
}

fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "{program} is not installed; .ci/run installs it (apt-get install {package})"
    );
}

fn require_root(purpose: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{purpose} needs root (chown to another uid, setcap); run the tests as root, as CI does"
    );
}

/// Writes an executable file.
fn write_executable(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn os(text: &str) -> &OsStr {
    OsStr::new(text)
}

/// Returns a temporary directory inside the build directory. `/tmp` may be mounted nosuid,
/// where setuid bits have no effect.
fn build_temp_dir() -> tempfile::TempDir {
    let base = build_dir().join("e2e-programs");
    std::fs::create_dir_all(&base).expect("create program dir");
    tempfile::Builder::new()
        .prefix("check-")
        .tempdir_in(base)
        .expect("create temp dir")
}

#[test]
fn dynamic_c_program_resolved() {
    let checked = check(&[probe().as_os_str()]);

    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved");
    assert_eq!(checked.program, probe().display().to_string());
    assert!(
        checked.mentions("dynamically linked (glibc)"),
        "{}",
        checked.text()
    );
    assert!(checked.mentions("libc getenv"), "{}", checked.text());
}

#[test]
fn static_program_references_only() {
    let checked = check(&[static_probe().as_os_str()]);

    assert_eq!(checked.status, 1, "{}", checked.text());
    assert_eq!(checked.verdict, "references only");
    assert!(checked.mentions("statically linked"), "{}", checked.text());
    assert!(
        checked.mentions("envproxy run --values-in-environ"),
        "{}",
        checked.text()
    );
}

#[test]
fn text_output_has_verdict_line() {
    let output = check_text(&source_hooks_dir(), &[static_probe().as_os_str()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(lines.next(), Some("references only"), "{stdout}");
    let reasons: Vec<&str> = lines.collect();
    assert!(reasons.len() >= 2, "{stdout}");
    assert!(
        reasons.iter().all(|line| line.starts_with("  - ")),
        "{stdout}"
    );
}

/// Builds a Go program that reads a variable with `os.Getenv`.
fn go_program(dir: &Path) -> PathBuf {
    require("go", "golang-go");
    let source = dir.join("main.go");
    std::fs::write(
        &source,
        "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\
         \tfmt.Println(os.Getenv(\"API_TOKEN\"))\n}\n",
    )
    .expect("write main.go");
    let output = dir.join("go-program");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&output)
        .arg(&source)
        .current_dir(dir)
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .status()
        .expect("run go build");
    assert!(status.success(), "go build failed");
    output
}

#[test]
fn go_program_references_only() {
    let dir = tempfile::tempdir().unwrap();
    let program = go_program(dir.path());

    let checked = check(&[program.as_os_str()]);

    assert_eq!(checked.status, 1, "{}", checked.text());
    assert_eq!(checked.verdict, "references only");
    assert!(checked.mentions("a Go program"), "{}", checked.text());
    assert!(checked.mentions("os.Getenv"), "{}", checked.text());
}

#[test]
fn go_program_with_envproxy_module_is_caveat() {
    require("go", "golang-go");
    let dir = tempfile::tempdir().unwrap();
    // A module with the EnvProxy Go module's import path and functions: the check reads only
    // the function names the Go linker keeps.
    let module = dir.path().join("module");
    std::fs::create_dir_all(&module).unwrap();
    std::fs::write(module.join("go.mod"), "module envproxy.dev/go\n\ngo 1.19\n").unwrap();
    std::fs::write(
        module.join("envproxy.go"),
        "package envproxy\n\nimport \"os\"\n\n\
         func Getenv(name string) string { return os.Getenv(name) }\n",
    )
    .unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("go.mod"),
        "module example.com/app\n\ngo 1.19\n\nrequire envproxy.dev/go v0.0.0\n\n\
         replace envproxy.dev/go => ../module\n",
    )
    .unwrap();
    std::fs::write(
        app.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\n\tenvproxy \"envproxy.dev/go\"\n)\n\n\
         func main() { fmt.Println(envproxy.Getenv(\"API_TOKEN\")) }\n",
    )
    .unwrap();
    let program = dir.path().join("go-module-program");
    let status = Command::new("go")
        .args(["build", "-ldflags=-s -w", "-o"])
        .arg(&program)
        .arg(".")
        .current_dir(&app)
        .env("GOCACHE", dir.path().join("cache"))
        .env("GOPATH", dir.path().join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .status()
        .expect("run go build");
    assert!(status.success(), "go build failed");

    let checked = check(&[program.as_os_str()]);

    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved with a caveat");
    assert!(
        checked.mentions("uses the EnvProxy Go module"),
        "{}",
        checked.text()
    );
}

/// Builds `tests/programs/go-reader`, which reads through the EnvProxy Go module in
/// `hooks/go`, into `dir`, offline and without cgo.
fn go_reader_in(dir: &Path) -> PathBuf {
    require("go", "golang-go");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/go-reader");
    let home = build_dir().join("e2e-programs/go");
    let program = dir.join("go-reader");
    let mut command = Command::new("go");
    command
        .args(["build", "-o"])
        .arg(&program)
        .arg(".")
        .current_dir(&source)
        .env("GOCACHE", home.join("cache"))
        .env("GOPATH", home.join("path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("CGO_ENABLED", "0");
    let output = run_with_limit(&mut command, Duration::from_secs(300));
    assert!(
        output.status.success(),
        "go build in {} failed: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    program
}

#[test]
fn go_module_disabled_references_only() {
    let dir = tempfile::tempdir().unwrap();
    let program = go_reader_in(dir.path());

    let checked = check(&[program.as_os_str()]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved with a caveat");

    let mut command = check_command(&source_hooks_dir());
    command.env("ENVPROXY_ENABLED", "0");
    let checked = run_json(&mut command, &[program.as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert_eq!(checked.verdict, "references only");
    assert!(
        checked.mentions("ENVPROXY_ENABLED=0 turns the module off"),
        "{}",
        checked.text()
    );

    let words = [os("env"), os("ENVPROXY_ENABLED=0"), program.as_os_str()];
    let checked = check(&words);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("ENVPROXY_ENABLED=0 turns the module off"),
        "{}",
        checked.text()
    );

    // The module, like the library, is off for 0, false, no and off, and on for other values.
    let words = [os("env"), os("ENVPROXY_ENABLED=false"), program.as_os_str()];
    let checked = check(&words);
    assert_eq!(checked.status, 1, "{}", checked.text());
    let words = [os("env"), os("ENVPROXY_ENABLED=1"), program.as_os_str()];
    let checked = check(&words);
    assert_eq!(checked.status, 0, "{}", checked.text());

    // The verdicts match what the program reads under `envproxy run`.
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    for (setting, expected) in [
        ("ENVPROXY_ENABLED=0", "envproxy:API_TOKEN"),
        ("ENVPROXY_ENABLED=false", "envproxy:API_TOKEN"),
        ("ENVPROXY_ENABLED=1", secret.as_str()),
    ] {
        let mut command = run_command(&secrets, "env");
        command.arg(setting).arg(&program).arg("API_TOKEN");
        let output = run_with_limit(&mut command, LIMIT);
        assert_eq!(
            value_of(&output.stdout, "API_TOKEN").as_deref(),
            Some(expected),
            "{setting}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Returns a copy of the dynamic probe with `mode`, owned by `uid` and `gid`.
fn probe_copy(dir: &Path, name: &str, uid: u32, gid: u32, mode: u32) -> PathBuf {
    let copy = dir.join(name);
    std::fs::copy(probe(), &copy).expect("copy probe");
    std::os::unix::fs::chown(&copy, Some(uid), Some(gid)).expect("chown copy");
    // chown clears the setuid and setgid bits, so the mode comes after it.
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).expect("chmod copy");
    copy
}

#[test]
fn setuid_program_references_only() {
    require_root("a setuid copy owned by another user");
    let dir = build_temp_dir();
    let copy = probe_copy(dir.path(), "setuid-probe", 65534, 0, 0o4755);

    let checked = check(&[copy.as_os_str()]);

    assert_eq!(checked.status, 1, "{}", checked.text());
    assert_eq!(checked.verdict, "references only");
    assert!(
        checked.mentions("setuid to uid 65534"),
        "{}",
        checked.text()
    );
    assert!(
        checked.mentions("secure-execution mode and ignores LD_PRELOAD"),
        "{}",
        checked.text()
    );
}

#[test]
fn setuid_verdicts_match_envproxy_run() {
    require_root("setuid copies owned by root and by another user");
    let dir = build_temp_dir();
    let foreign = probe_copy(dir.path(), "setuid-foreign", 65534, 0, 0o4755);
    let own = probe_copy(dir.path(), "setuid-own", 0, 0, 0o4755);
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    // The probe runs as uid 65534, which must be able to enter the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    for (program, expected_verdict, expected_value) in [
        (&foreign, "references only", "envproxy:API_TOKEN"),
        (&own, "resolved with a caveat", secret.as_str()),
    ] {
        let checked = check(&[program.as_os_str()]);
        assert_eq!(checked.verdict, expected_verdict, "{}", checked.text());

        let output = run_with_limit(
            run_command(&secrets, program).args(["get", "API_TOKEN"]),
            LIMIT,
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            value_of(&output.stdout, "API_TOKEN").as_deref(),
            Some(expected_value),
            "{}",
            program.display()
        );
    }
}

#[test]
fn setgid_program_references_only() {
    require_root("a setgid copy owned by another group");
    let dir = build_temp_dir();
    let copy = probe_copy(dir.path(), "setgid-probe", 0, 65534, 0o2755);

    let checked = check(&[copy.as_os_str()]);

    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("setgid to gid 65534"),
        "{}",
        checked.text()
    );
}

#[test]
fn setuid_to_own_uid_is_caveat() {
    require_root("a setuid copy owned by root");
    let dir = build_temp_dir();
    let copy = probe_copy(dir.path(), "setuid-root-probe", 0, 0, 0o4755);

    let checked = check(&[copy.as_os_str()]);

    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved with a caveat");
    assert!(
        checked.mentions("started with any other uid"),
        "{}",
        checked.text()
    );
}

#[test]
fn file_capabilities_are_caveat_for_root() {
    require_root("setcap");
    require("setcap", "libcap2-bin");
    let dir = build_temp_dir();
    let copy = probe_copy(dir.path(), "capability-probe", 0, 0, 0o755);
    let status = Command::new("setcap")
        .arg("cap_net_bind_service=ep")
        .arg(&copy)
        .status()
        .expect("run setcap");
    assert!(status.success(), "setcap failed");

    let checked = check(&[copy.as_os_str()]);

    assert_eq!(
        checked.verdict,
        "resolved with a caveat",
        "{}",
        checked.text()
    );
    assert!(checked.mentions("file capabilities"), "{}", checked.text());
}

#[test]
fn musl_program_needs_musl_library() {
    require("musl-gcc", "musl-tools");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("getenv.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include <stdlib.h>\n\
         int main(void) { const char *v = getenv(\"API_TOKEN\"); puts(v ? v : \"(null)\"); \
         return 0; }\n",
    )
    .unwrap();
    let program = dir.path().join("musl-program");
    let library = dir.path().join("libmusl-stand-in.so");
    let compile = |arguments: &[&OsStr]| {
        let status = Command::new("musl-gcc")
            .args(arguments)
            .status()
            .expect("run musl-gcc");
        assert!(status.success(), "musl-gcc {arguments:?} failed");
    };
    compile(&[os("-o"), program.as_os_str(), source.as_os_str()]);
    // A shared object linked against musl serves as a musl build of libenvproxy.so: the
    // check reads only its ELF header and DT_NEEDED entries.
    compile(&[
        os("-shared"),
        os("-fPIC"),
        os("-o"),
        library.as_os_str(),
        source.as_os_str(),
    ]);

    let checked = check(&[program.as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("dynamically linked (musl)"),
        "{}",
        checked.text()
    );
    assert!(
        checked.mentions("the program uses musl, but the library"),
        "{}",
        checked.text()
    );
    assert!(
        checked.mentions("the program does not start at all"),
        "{}",
        checked.text()
    );
    // What the check states: under envproxy run with the glibc library the program exits
    // with 127 before main.
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let output = run_with_limit(&mut run_command(&secrets, &program), LIMIT);
    assert_eq!(
        output.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.is_empty());

    let mut command = check_command(&source_hooks_dir());
    command.env("ENVPROXY_LIB", &library);
    let checked = run_json(&mut command, &[program.as_os_str()]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved");
}

#[test]
fn python_script_resolved_through_hook() {
    require("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    write_executable(
        &script,
        "#!/usr/bin/env python3\nimport os\nprint(os.environ.get('API_TOKEN'))\n",
    );

    let checked = check(&[script.as_os_str()]);

    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved");
    assert!(checked.mentions("its `#!` line"), "{}", checked.text());
    assert!(
        checked.mentions("python/sitecustomize.py"),
        "{}",
        checked.text()
    );
}

#[test]
fn python_hook_disabled_or_skipped() {
    require("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    write_executable(&script, "#!/usr/bin/env -S python3 -I\nprint(1)\n");

    let checked = check(&[script.as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("python -I skips sitecustomize"),
        "{}",
        checked.text()
    );

    let checked = check(&[os("python3"), os("-E"), os("app.py")]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(checked.mentions("python -E"), "{}", checked.text());

    let mut command = check_command(&source_hooks_dir());
    command.env("ENVPROXY_NO_PYTHON", "1");
    let checked = run_json(&mut command, &[os("python3"), os("app.py")]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("ENVPROXY_NO_PYTHON=1 turns the Python hook off"),
        "{}",
        checked.text()
    );
}

#[test]
fn library_disabled_references_only() {
    let mut command = check_command(&source_hooks_dir());
    command.env("ENVPROXY_ENABLED", "0");
    let checked = run_json(&mut command, &[probe().as_os_str()]);

    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(checked.mentions("ENVPROXY_ENABLED=0"), "{}", checked.text());
}

/// Builds `hello.jar`, a Java program that prints a variable with `System.getenv`.
fn java_program(dir: &Path) -> PathBuf {
    require("javac", "default-jdk-headless");
    let source = dir.join("Hello.java");
    std::fs::write(
        &source,
        "public class Hello { public static void main(String[] args) { \
         System.out.println(System.getenv(\"API_TOKEN\")); } }\n",
    )
    .unwrap();
    let status = Command::new("javac")
        .arg("-d")
        .arg(dir)
        .arg(&source)
        .status()
        .expect("run javac");
    assert!(status.success(), "javac failed");
    let jar = dir.join("hello.jar");
    let status = Command::new("jar")
        .arg("--create")
        .arg("--file")
        .arg(&jar)
        .arg("--main-class")
        .arg("Hello")
        .arg("-C")
        .arg(dir)
        .arg("Hello.class")
        .status()
        .expect("run jar");
    assert!(status.success(), "jar failed");
    jar
}

/// Copies the built Java agent jar into the hooks directory `hooks`.
fn install_java_hook(hooks: &Path) {
    let jar = "java/envproxy-javaagent.jar";
    std::fs::copy(source_hooks_dir().join(jar), hooks.join(jar)).expect("copy the Java hook");
}

#[test]
fn java_program_needs_java_hook() {
    let dir = tempfile::tempdir().unwrap();
    let jar = java_program(dir.path());
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(hooks.join("java")).unwrap();
    let words = [os("java"), os("-jar"), jar.as_os_str()];

    let checked = run_json(&mut check_command(&hooks), &words);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("the Java hook is not installed"),
        "{}",
        checked.text()
    );
    assert!(checked.mentions("System.getenv"), "{}", checked.text());

    install_java_hook(&hooks);
    let checked = run_json(&mut check_command(&hooks), &words);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved");
    assert!(checked.mentions("JAVA_TOOL_OPTIONS"), "{}", checked.text());

    // The library accepts 1, true and yes in any case. Anything else leaves the hook on.
    for value in ["1", "true", "YES"] {
        let mut command = check_command(&hooks);
        command.env("ENVPROXY_NO_JAVA", value);
        let checked = run_json(&mut command, &words);
        assert_eq!(checked.status, 1, "{value}: {}", checked.text());
        assert!(
            checked.mentions(&format!("ENVPROXY_NO_JAVA={value} turns the Java hook off")),
            "{}",
            checked.text()
        );
    }
    for value in ["0", "no", ""] {
        let mut command = check_command(&hooks);
        command.env("ENVPROXY_NO_JAVA", value);
        let checked = run_json(&mut command, &words);
        assert_eq!(checked.status, 0, "{value:?}: {}", checked.text());
    }
}

#[test]
fn java_runtime_version_and_modules() {
    require("java", "default-jdk-headless");
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(hooks.join("java")).unwrap();
    install_java_hook(&hooks);
    // A runtime image with the real launcher: the check reads only bin/java, lib/ and release.
    let home = dir.path().join("jdk");
    std::fs::create_dir_all(home.join("bin")).unwrap();
    std::fs::create_dir_all(home.join("lib")).unwrap();
    let launcher = std::fs::canonicalize(
        std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|directory| directory.join("java"))
            .find(|candidate| candidate.is_file())
            .expect("java in PATH"),
    )
    .unwrap();
    std::fs::copy(&launcher, home.join("bin/java")).unwrap();
    std::fs::write(home.join("lib/libjli.so"), b"").unwrap();
    std::fs::write(home.join("release"), "JAVA_VERSION=\"21.0.2\"\n").unwrap();
    let java = home.join("bin/java");
    let words = [java.as_os_str(), os("-jar"), os("app.jar")];

    // A jlink image without java.instrument has no lib/libinstrument.so. The library loads
    // the hook as a JVMTI agent, which does not need that module.
    let checked = run_json(&mut check_command(&hooks), &words);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved");
    assert!(!checked.mentions("java.instrument"), "{}", checked.text());

    std::fs::write(home.join("lib/libinstrument.so"), b"").unwrap();
    let checked = run_json(&mut check_command(&hooks), &words);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved");

    std::fs::write(home.join("release"), "JAVA_VERSION=\"11.0.2\"\n").unwrap();
    let checked = run_json(&mut check_command(&hooks), &words);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("is Java 11.0.2, but the Java hook needs Java 17 or later"),
        "{}",
        checked.text()
    );
}

#[test]
fn node_script_resolved_by_library() {
    require("node", "nodejs");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.js");
    write_executable(
        &script,
        "#!/usr/bin/env node\nconsole.log(process.env.API_TOKEN);\n",
    );

    let checked = check(&[script.as_os_str()]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved");
    assert!(checked.mentions("Node.js"), "{}", checked.text());

    let checked = check(&[os("node"), script.as_os_str()]);
    assert_eq!(checked.status, 0, "{}", checked.text());
}

#[test]
fn perl_script_needs_perl_hook() {
    require("perl", "perl");
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(hooks.join("perl/EnvProxy")).unwrap();
    let script = dir.path().join("app.pl");
    let tainted = dir.path().join("tainted.pl");
    write_executable(&script, "#!/usr/bin/perl -w\nprint $ENV{API_TOKEN};\n");
    write_executable(&tainted, "#!/usr/bin/perl -wT\nprint $ENV{API_TOKEN};\n");

    let checked = run_json(&mut check_command(&hooks), &[script.as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("the Perl hook is not installed"),
        "{}",
        checked.text()
    );

    std::fs::write(hooks.join("perl/EnvProxy/Hook.pm"), b"1;\n").unwrap();
    let checked = run_json(&mut check_command(&hooks), &[script.as_os_str()]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert!(checked.mentions("PERL5OPT"), "{}", checked.text());

    let checked = run_json(&mut check_command(&hooks), &[tainted.as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("perl -T (taint mode) ignores PERL5OPT"),
        "{}",
        checked.text()
    );

    let words = [os("perl"), os("-t"), script.as_os_str()];
    let checked = run_json(&mut check_command(&hooks), &words);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("perl -t (taint mode with warnings) ignores PERL5OPT"),
        "{}",
        checked.text()
    );

    let mut command = check_command(&hooks);
    command.env("PERL5OPT", "-T -w");
    let checked = run_json(&mut command, &[script.as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("PERL5OPT starts with -T"),
        "{}",
        checked.text()
    );

    let mut command = check_command(&hooks);
    command.env("ENVPROXY_NO_PERL", "1");
    let checked = run_json(&mut command, &[script.as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert_eq!(
        checked.reasons.last().map(String::as_str),
        Some(
            "ENVPROXY_NO_PERL=1 turns the Perl hook off, so %ENV holds the references, because \
             Perl copies the environment into it at start"
        ),
        "{}",
        checked.text()
    );
}

#[test]
fn perl5opt_taint_switches_judged() {
    require("perl", "perl");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.pl");
    write_executable(
        &script,
        "#!/usr/bin/perl\nprint \"API_TOKEN=$ENV{API_TOKEN}\\n\";\n",
    );
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let run_perl = |options: &str| {
        let mut command = run_command(&secrets, &script);
        command.env("PERL5OPT", options);
        run_with_limit(&mut command, LIMIT)
    };

    // -t: the hook resolves, and Perl warns about the tainted socket path.
    let mut command = check_command(&source_hooks_dir());
    command.env("PERL5OPT", "-t");
    let checked = run_json(&mut command, &[script.as_os_str()]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved with a caveat");
    assert!(
        checked.mentions("Insecure dependency in connect while running with -t switch"),
        "{}",
        checked.text()
    );
    let output = run_perl("-t");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some(secret.as_str()),
        "{stderr}"
    );
    assert!(
        stderr.contains("Insecure dependency in connect while running with -t switch"),
        "{stderr}"
    );

    // -T after another switch: Perl does not start at all.
    let mut command = check_command(&source_hooks_dir());
    command.env("PERL5OPT", "-w -T").arg("--").arg(&script);
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty(), "{stderr}");
    assert!(stderr.contains("perl will not start"), "{stderr}");
    assert!(
        stderr.contains("Illegal switch in PERL5OPT: -T"),
        "{stderr}"
    );
    let output = run_perl("-w -T");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty(), "{stderr}");
    assert!(
        stderr.contains("Illegal switch in PERL5OPT: -T"),
        "{stderr}"
    );
}

#[test]
fn ruby_and_php_are_caveats() {
    require("ruby", "ruby");
    require("php", "php-cli");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.rb");
    write_executable(&script, "#!/usr/bin/env ruby\nputs ENV['API_TOKEN']\n");

    let checked = check(&[script.as_os_str()]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved with a caveat");
    assert!(checked.mentions("ENV.to_h"), "{}", checked.text());

    let checked = check(&[os("php"), os("app.php")]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved with a caveat");
    assert!(checked.mentions("$_SERVER"), "{}", checked.text());
}

#[test]
fn shell_script_references_only() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("start.sh");
    write_executable(&script, "#!/bin/sh\necho \"$API_TOKEN\"\n");

    let checked = check(&[script.as_os_str()]);

    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("shells copy the environment at start"),
        "{}",
        checked.text()
    );
    assert!(checked.mentions("/bin/sh"), "{}", checked.text());
}

#[test]
fn env_command_is_followed() {
    let checked = check(&[os("env"), os("A=1"), probe().as_os_str()]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert!(
        checked.mentions(&probe().display().to_string()),
        "{}",
        checked.text()
    );

    let checked = check(&[os("env"), os("-i"), probe().as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(checked.mentions("env -i"), "{}", checked.text());
    assert_eq!(checked.reasons.len(), 1, "{}", checked.text());
}

#[test]
fn missing_path_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-program");
    let output = check_text(&source_hooks_dir(), &[missing.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty());
    assert_eq!(
        stderr.trim_end(),
        format!("envproxy check: {}: no such file", missing.display())
    );
}

#[test]
fn missing_command_is_error() {
    let output = check_text(&source_hooks_dir(), &[os("envproxy-no-such-command")]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("envproxy-no-such-command: command not found in PATH"),
        "{stderr}"
    );
}

#[test]
fn non_executable_file_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    std::fs::write(&script, "print(1)\n").unwrap();
    let output = check_text(&source_hooks_dir(), &[script.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not executable (mode 0644)"), "{stderr}");
    assert!(stderr.contains("chmod +x"), "{stderr}");
}

#[test]
fn file_without_shebang_runs_with_sh() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let cases: [(&str, &[u8]); 4] = [
        ("text", b"echo \"API_TOKEN=$API_TOKEN\"\n"),
        ("empty-shebang", b"#!\necho \"API_TOKEN=$API_TOKEN\"\n"),
        ("empty", b""),
        ("binary", b"echo \"API_TOKEN=$API_TOKEN\"\n\0\x01\x02\n"),
    ];
    for (name, content) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();

        for words in [
            vec![file.as_os_str()],
            vec![os("env"), os("A=1"), file.as_os_str()],
        ] {
            let checked = check(&words);
            assert_eq!(checked.status, 1, "{name}: {}", checked.text());
            assert_eq!(checked.verdict, "references only", "{name}");
            assert!(
                checked.mentions("so the kernel rejects it (Exec format error) and execvp"),
                "{name}: {}",
                checked.text()
            );
            assert!(
                checked.mentions("runs it with /bin/sh"),
                "{name}: {}",
                checked.text()
            );
            assert!(
                checked.mentions("shells copy the environment at start"),
                "{name}: {}",
                checked.text()
            );
            assert_eq!(
                checked.mentions("NUL bytes"),
                name == "binary",
                "{name}: {}",
                checked.text()
            );
        }

        // envproxy run starts the file with /bin/sh, which sees the reference.
        let output = run_with_limit(&mut run_command(&secrets, &file), LIMIT);
        if !content.is_empty() {
            assert_eq!(
                value_of(&output.stdout, "API_TOKEN").as_deref(),
                Some("envproxy:API_TOKEN"),
                "{name}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Reads a little-endian `u64` of `data` at `offset`.
fn u64_at(data: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(data[offset..offset + 8].try_into().unwrap())
}

/// Returns the offset of the `PT_INTERP` program header of the 64-bit little-endian ELF
/// file `data`.
fn interpreter_header(data: &[u8]) -> usize {
    let table = u64_at(data, 32) as usize;
    let count = u16::from_le_bytes([data[56], data[57]]) as usize;
    (0..count)
        .map(|index| table + 56 * index)
        .find(|&entry| data[entry..entry + 4] == 3u32.to_le_bytes())
        .expect("/bin/true has a PT_INTERP program header")
}

#[test]
fn kernel_rejected_elf_is_error() {
    let original = std::fs::read("/bin/true").expect("read /bin/true");
    assert_eq!(
        &original[..6],
        b"\x7fELF\x02\x01",
        "this test patches a 64-bit little-endian /bin/true"
    );
    let length = original.len() as u64;
    let interp = interpreter_header(&original);
    let interp_offset = u64_at(&original, interp + 8) as usize;
    let interp_size = u64_at(&original, interp + 32) as usize;
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);

    // Each case: a name, a patch (offset and new bytes), and the words the error contains.
    let cases: Vec<(&str, usize, Vec<u8>, &str)> = vec![
        (
            "phnum",
            56,
            0xffffu16.to_le_bytes().to_vec(),
            "65535 entries (e_phnum)",
        ),
        (
            "phentsize",
            54,
            32u16.to_le_bytes().to_vec(),
            "entries are 32 bytes long (e_phentsize)",
        ),
        (
            "phoff",
            32,
            (length - 10).to_le_bytes().to_vec(),
            "ends beyond the end of the file",
        ),
        (
            "machine",
            18,
            0x5555u16.to_le_bytes().to_vec(),
            "a program for machine 21845",
        ),
        (
            "interp-nul",
            interp_offset + interp_size - 1,
            b"x".to_vec(),
            "does not end with a NUL byte",
        ),
        (
            "interp-offset",
            interp + 8,
            (length + 100).to_le_bytes().to_vec(),
            "(Input/output error): its PT_INTERP segment",
        ),
        ("type", 16, 1u16.to_le_bytes().to_vec(), "is an object file"),
    ];
    for (name, offset, bytes, expected) in cases {
        let mut data = original.clone();
        data[offset..offset + bytes.len()].copy_from_slice(&bytes);
        let file = dir.path().join(name);
        std::fs::write(&file, &data).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();

        let output = check_text(&source_hooks_dir(), &[file.as_os_str()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(output.stdout.is_empty(), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");

        // The program does not start: execvp's /bin/sh fails on the binary file.
        let output = run_with_limit(&mut run_command(&secrets, &file), LIMIT);
        assert!(
            !output.status.success(),
            "{name}: envproxy run succeeded: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // Linux ignores EI_CLASS and EI_DATA and runs these; check says it cannot judge them.
    for (name, offset) in [("class", 4), ("data", 5)] {
        let mut data = original.clone();
        data[offset] = if offset == 4 { 1 } else { 2 };
        let file = dir.path().join(name);
        std::fs::write(&file, &data).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();

        let output = check_text(&source_hooks_dir(), &[file.as_os_str()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("its ELF header is inconsistent"),
            "{name}: {stderr}"
        );
        let output = run_with_limit(&mut Command::new(&file), LIMIT);
        assert!(output.status.success(), "{name}: the kernel did not run it");
    }
}

#[test]
fn missing_library_references_only() {
    let mut command = check_command(&source_hooks_dir());
    command.env("ENVPROXY_LIB", "/nonexistent/libenvproxy.so");
    let checked = run_json(&mut command, &[probe().as_os_str()]);

    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("cannot preload the library"),
        "{}",
        checked.text()
    );
}

/// Returns a copy of the dynamic probe named `name` in `dir`.
fn probe_in(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.join(name);
    std::fs::copy(probe(), &copy).expect("copy probe");
    copy
}

#[test]
fn env_assignments_are_applied() {
    let checked = check(&[os("env"), os("ENVPROXY_ENABLED=0"), probe().as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(checked.mentions("ENVPROXY_ENABLED=0"), "{}", checked.text());

    let checked = check(&[
        os("env"),
        os("LD_PRELOAD=/lib/other.so"),
        probe().as_os_str(),
    ]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("LD_PRELOAD in the program's environment is /lib/other.so"),
        "{}",
        checked.text()
    );

    // A PATH set by env finds the next program.
    let dir = tempfile::tempdir().unwrap();
    probe_in(dir.path(), "only-here");
    let path = format!("PATH={}", dir.path().display());
    let checked = check(&[os("env"), os(&path), os("only-here")]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert!(
        checked.mentions(&format!("{}/only-here", dir.path().display())),
        "{}",
        checked.text()
    );
}

#[test]
fn env_unset_is_applied() {
    for words in [
        &["-u", "LD_PRELOAD"][..],
        &["-uLD_PRELOAD"],
        &["--unset=LD_PRELOAD"],
        &["-S", "-u LD_PRELOAD"],
    ] {
        let mut command: Vec<&OsStr> = vec![os("env")];
        command.extend(words.iter().map(|word| os(word)));
        let program = probe();
        command.push(program.as_os_str());
        let checked = check(&command);
        assert_eq!(checked.status, 1, "{words:?}: {}", checked.text());
        assert!(
            checked.mentions("LD_PRELOAD is not set in the program's environment"),
            "{words:?}: {}",
            checked.text()
        );
    }

    require("python3", "python3");
    let mut command = check_command(&source_hooks_dir());
    command.env("ENVPROXY_NO_PYTHON", "1");
    let words = [
        os("env"),
        os("-u"),
        os("ENVPROXY_NO_PYTHON"),
        os("python3"),
        os("app.py"),
    ];
    let checked = run_json(&mut command, &words);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert_eq!(checked.verdict, "resolved");
}

#[test]
fn env_chdir_judges_next_program() {
    let dir = tempfile::tempdir().unwrap();
    let program = probe_in(dir.path(), "app");
    let directory = dir.path().display().to_string();
    let joined = format!("-C{directory}");
    let long = format!("--chdir={directory}");
    let forms: [&[&str]; 4] = [
        &["-C", &directory],
        &[&joined],
        &[&long],
        &["--chdir", &directory],
    ];
    for form in forms {
        let mut command: Vec<&OsStr> = vec![os("env")];
        command.extend(form.iter().map(|word| os(word)));
        command.push(os("./app"));
        let checked = check(&command);
        assert_eq!(checked.status, 0, "{form:?}: {}", checked.text());
        assert!(
            checked.mentions(&format!("{} is a dynamically linked", program.display())),
            "{form:?}: {}",
            checked.text()
        );
    }

    // A relative interpreter of a script in that directory starts there too.
    write_executable(&dir.path().join("start"), "#!app\n");
    let checked = check(&[os("env"), os("-C"), dir.path().as_os_str(), os("./start")]);
    assert_eq!(checked.status, 0, "{}", checked.text());
    assert!(
        checked.mentions(&format!("{} is a dynamically linked", program.display())),
        "{}",
        checked.text()
    );
}

#[test]
fn env_split_string_is_followed_or_rejected() {
    let split = format!("ENVPROXY_ENABLED=0 '{}'", probe().display());
    let checked = check(&[os("env"), os("-S"), os(&split)]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(checked.mentions("ENVPROXY_ENABLED=0"), "{}", checked.text());

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app");
    write_executable(&script, "#!/usr/bin/env -S $PROGRAM\n");
    let output = check_text(&source_hooks_dir(), &[script.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("$PROGRAM\": only ${NAME} is expanded"),
        "{stderr}"
    );

    let output = check_text(
        &source_hooks_dir(),
        &[os("env"), os("--frobnicate"), os("ls")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("env option \"--frobnicate\" is not understood"),
        "{stderr}"
    );
}

/// Runs `command` and returns its exit status and maximum resident set size in KiB, read with
/// `wait4` for that child alone.
// wait4 reaps the child, which `Child::wait` cannot do while returning its rusage.
#[allow(clippy::zombie_processes)]
fn run_measuring_rss(command: &mut Command) -> (i32, i64, String) {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start envproxy check");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("stdout");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).expect("read stdout");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 writes to both out-parameters only.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is a child of this process that nothing else waits for.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    (libc::WEXITSTATUS(status), usage.ru_maxrss, text)
}

#[test]
fn huge_sparse_file_small_rss() {
    const SIZE: u64 = 6 << 30;
    let dir = tempfile::tempdir().unwrap();
    let program = probe_in(dir.path(), "huge");
    // The probe's headers and sections stay at the front; the rest is a hole.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&program)
        .unwrap();
    file.set_len(SIZE).unwrap();
    drop(file);

    let mut command = check_command(&source_hooks_dir());
    command.arg("--").arg(&program);
    let (status, max_rss_kib, stdout) = run_measuring_rss(&mut command);

    assert_eq!(status, 0, "{stdout}");
    assert!(stdout.starts_with("resolved\n"), "{stdout}");
    assert!(
        max_rss_kib < 100 * 1024,
        "checking a {SIZE}-byte file took a max RSS of {max_rss_kib} KiB"
    );
}

#[test]
fn relative_shebang_interpreter_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app");
    write_executable(&script, "#!python3\nprint(1)\n");
    let output = check_text(&source_hooks_dir(), &[script.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the interpreter python3 of its `#!` line is a relative path"),
        "{stderr}"
    );
    assert!(stderr.contains("not through PATH"), "{stderr}");
    assert!(stderr.contains("`#!/usr/bin/env python3`"), "{stderr}");
    assert!(!stderr.contains("PATH is not set"), "{stderr}");
}

#[test]
fn crlf_shebang_is_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("start.sh");
    write_executable(&script, "#!/bin/sh\r\necho hi\r\n");
    let output = check_text(&source_hooks_dir(), &[script.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(r#""/bin/sh\r""#), "{stderr}");
    assert!(stderr.contains("Windows line endings"), "{stderr}");
    assert!(!stderr.contains('\r'), "{stderr:?}");

    write_executable(&script, "#!/usr/bin/env sh\r\necho hi\r\n");
    let output = check_text(&source_hooks_dir(), &[script.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(r#""sh\r": command not found"#), "{stderr}");
    assert!(stderr.contains("Windows line endings"), "{stderr}");
}

#[test]
fn symlink_loop_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    std::os::unix::fs::symlink(&second, &first).unwrap();
    std::os::unix::fs::symlink(&first, &second).unwrap();
    let output = check_text(&source_hooks_dir(), &[first.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: is a symbolic link loop", first.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("os error"), "{stderr}");
}

#[test]
fn shared_library_and_static_pie_told_apart() {
    require("gcc", "gcc");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("main.c");
    std::fs::write(
        &source,
        "#include <stdlib.h>\nint main(void) { return getenv(\"API_TOKEN\") == 0; }\n",
    )
    .unwrap();
    let library = dir.path().join("libsample.so");
    let static_pie = dir.path().join("static-pie");
    for (output, flag) in [(&library, "-shared"), (&static_pie, "-static-pie")] {
        let status = Command::new("gcc")
            .args([flag, "-fPIC", "-o"])
            .arg(output)
            .arg(&source)
            .status()
            .expect("run gcc");
        assert!(
            status.success(),
            "gcc {flag} failed; the static glibc is in libc6-dev"
        );
    }
    std::fs::set_permissions(&library, std::fs::Permissions::from_mode(0o755)).unwrap();

    let output = check_text(&source_hooks_dir(), &[library.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is a shared library"), "{stderr}");
    assert!(
        stderr.contains("not a program the kernel runs directly"),
        "{stderr}"
    );

    let checked = check(&[static_pie.as_os_str()]);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("is a statically linked (static-pie) ELF executable"),
        "{}",
        checked.text()
    );
    assert!(
        checked.mentions("no dynamic loader runs"),
        "{}",
        checked.text()
    );
}

/// Writes a copy of the ELF file `original` to `file` with its `PT_INTERP` path, which must
/// have the same length as `interpreter`, replaced by `interpreter`.
fn write_with_interpreter(original: &[u8], file: &Path, interpreter: &str) {
    let interp = interpreter_header(original);
    let offset = u64_at(original, interp + 8) as usize;
    let size = u64_at(original, interp + 32) as usize;
    assert_eq!(
        size,
        interpreter.len() + 1,
        "the new interpreter path must have the length of the old one"
    );
    let mut data = original.to_vec();
    data[offset..offset + interpreter.len()].copy_from_slice(interpreter.as_bytes());
    std::fs::write(file, &data).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn missing_elf_interpreter_is_error() {
    require("musl-gcc", "musl-tools");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("main.c");
    std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let musl = dir.path().join("musl-built");
    let status = Command::new("musl-gcc")
        .arg("-o")
        .arg(&musl)
        .arg(&source)
        .status()
        .expect("run musl-gcc");
    assert!(status.success(), "musl-gcc failed");
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);

    // Each case: a name, the original program, a missing loader of the same path length, and
    // the hint the error gives.
    let glibc = std::fs::read("/bin/true").expect("read /bin/true");
    let musl = std::fs::read(&musl).unwrap();
    let cases = [
        (
            "nix",
            &glibc,
            "/nix/st/ld-linux-x86-64.so2",
            "built for another distribution",
        ),
        (
            "alpine",
            &musl,
            "/lib/ld-musl-x86_65.so.1",
            "apt-get install musl",
        ),
    ];
    for (name, original, interpreter, hint) in cases {
        let file = dir.path().join(name);
        write_with_interpreter(original, &file, interpreter);

        let output = check_text(&source_hooks_dir(), &[file.as_os_str()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(output.stdout.is_empty(), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("its ELF interpreter (the dynamic loader named by PT_INTERP) {interpreter} does not exist")),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains("No such file or directory"),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(hint), "{name}: {stderr}");

        // Through `env`, which starts it with execvp, the error is the same: execvp runs
        // /bin/sh only after Exec format error.
        let output = check_text(&source_hooks_dir(), &[os("env"), file.as_os_str()]);
        assert_eq!(output.status.code(), Some(2), "{name} through env");

        // What the check states: the program never starts.
        let output = run_with_limit(&mut run_command(&secrets, &file), LIMIT);
        assert_eq!(
            output.status.code(),
            Some(127),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let error = Command::new(&file).status().unwrap_err();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::NotFound,
            "{name}: {error}"
        );
    }
}

#[test]
fn elf_version_byte_is_ignored() {
    let original = std::fs::read("/bin/true").expect("read /bin/true");
    let dir = tempfile::tempdir().unwrap();
    for version in [0u8, 7] {
        let mut data = original.clone();
        data[6] = version;
        let file = dir.path().join(format!("version-{version}"));
        std::fs::write(&file, &data).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();

        // Linux runs the file, so the check judges it.
        let output = run_with_limit(&mut Command::new(&file), LIMIT);
        assert!(
            output.status.success(),
            "EI_VERSION {version}: the kernel did not run it"
        );
        let checked = check(&[file.as_os_str()]);
        assert_eq!(
            checked.status,
            0,
            "EI_VERSION {version}: {}",
            checked.text()
        );
        assert_eq!(checked.verdict, "resolved", "EI_VERSION {version}");
        assert!(
            checked.mentions(&format!(
                "its EI_VERSION byte (offset 6 of the ELF header) is {version}"
            )),
            "{}",
            checked.text()
        );
    }
}

/// Copies the source tree's hooks directory to `target`, without the build files of the Java
/// hook.
fn copy_hooks(target: &Path) {
    for hook in [
        "java/envproxy-javaagent.jar",
        "python/sitecustomize.py",
        "python/envproxy_hook.py",
        "perl/EnvProxy/Hook.pm",
    ] {
        let to = target.join(hook);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(source_hooks_dir().join(hook), &to).expect("copy a hook file");
    }
}

#[test]
fn unusable_hook_files_judged() {
    require("perl", "perl");
    require("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    let jar = java_program(dir.path());
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let python = [
        os("python3"),
        os("-c"),
        os("import os; print(os.environ['API_TOKEN'])"),
    ];
    let java = [os("java"), os("-jar"), jar.as_os_str()];
    let perl = [os("perl"), os("-e"), os("print \"$ENV{API_TOKEN}\\n\"")];

    // Each case: the hook file, its broken content, the command, and the words of the reason.
    let cases: [(&str, &[u8], &[&OsStr], &str); 4] = [
        (
            "java/envproxy-javaagent.jar",
            b"",
            &java,
            "because it is empty",
        ),
        (
            "java/envproxy-javaagent.jar",
            b"garbage\n",
            &java,
            "because it is not a zip file",
        ),
        (
            "python/sitecustomize.py",
            b"",
            &python,
            "because it is empty",
        ),
        (
            "python/sitecustomize.py",
            b"\n\n",
            &python,
            "because it is empty",
        ),
    ];
    for (index, (hook, content, words, expected)) in cases.into_iter().enumerate() {
        let hooks = dir.path().join(format!("hooks-{index}"));
        copy_hooks(&hooks);
        let mut command = check_command(&hooks);
        let checked = run_json(&mut command, words);
        assert_eq!(checked.status, 0, "{hook} intact: {}", checked.text());

        std::fs::write(hooks.join(hook), content).unwrap();
        let checked = run_json(&mut check_command(&hooks), words);
        assert_eq!(checked.status, 1, "{hook}: {}", checked.text());
        assert!(checked.mentions(expected), "{hook}: {}", checked.text());
        assert!(
            checked.mentions(&hooks.join(hook).display().to_string()),
            "{hook}: {}",
            checked.text()
        );

        // What the check states: the program runs and reads the reference.
        let mut command = run_command(&secrets, words[0]);
        command.args(&words[1..]).env("ENVPROXY_HOOKS_DIR", &hooks);
        let output = run_with_limit(&mut command, LIMIT);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{hook}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout.trim_end(), "envproxy:API_TOKEN", "{hook}");
    }

    // An empty Perl hook stops every Perl program, so the check reports an error.
    let hooks = dir.path().join("hooks-perl");
    copy_hooks(&hooks);
    let hook = hooks.join("perl/EnvProxy/Hook.pm");
    std::fs::write(&hook, b"").unwrap();
    let output = check_text(&hooks, &perl);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("perl will not start"), "{stderr}");
    assert!(stderr.contains(&hook.display().to_string()), "{stderr}");
    assert!(stderr.contains("did not return a true value"), "{stderr}");

    let mut command = run_command(&secrets, "perl");
    command.args(&perl[1..]).env("ENVPROXY_HOOKS_DIR", &hooks);
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("did not return a true value"), "{stderr}");
    assert!(output.stdout.is_empty());

    // ENVPROXY_NO_PERL=1 keeps the hook out, and Perl starts.
    let mut command = check_command(&hooks);
    command.env("ENVPROXY_NO_PERL", "1");
    let checked = run_json(&mut command, &perl);
    assert_eq!(checked.status, 1, "{}", checked.text());
    assert!(
        checked.mentions("ENVPROXY_NO_PERL=1 turns the Perl hook off"),
        "{}",
        checked.text()
    );
}

#[test]
fn library_path_with_separator_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    for (name, separator) in [("with space", "space"), ("with:colon", "colon")] {
        let library_dir = dir.path().join(name);
        std::fs::create_dir_all(&library_dir).unwrap();
        let copy = library_dir.join("libenvproxy.so");
        std::fs::copy(library(), &copy).unwrap();

        let mut command = check_command(&source_hooks_dir());
        command.env("ENVPROXY_LIB", &copy);
        let checked = run_json(&mut command, &[probe().as_os_str()]);
        assert_eq!(checked.status, 1, "{name}: {}", checked.text());
        assert!(
            checked.mentions(&format!(
                "the library path {} contains a {separator}",
                copy.display()
            )),
            "{name}: {}",
            checked.text()
        );
        assert!(
            checked.mentions("splits LD_PRELOAD at spaces and colons"),
            "{name}: {}",
            checked.text()
        );
        assert!(
            checked.mentions("move the library to a path without spaces or colons"),
            "{name}: {}",
            checked.text()
        );
        assert!(
            !checked.mentions("which does not name"),
            "{name}: {}",
            checked.text()
        );

        // What the check states: the loader does not preload the library at that path, so
        // the program reads the reference, unless `envproxy run` rejects the path first.
        let mut command = run_command(&secrets, probe());
        command
            .env("ENVPROXY_LIB", &copy)
            .args(["get", "API_TOKEN"]);
        let output = run_with_limit(&mut command, LIMIT);
        let expected = output.status.success().then_some("envproxy:API_TOKEN");
        assert_eq!(
            value_of(&output.stdout, "API_TOKEN").as_deref(),
            expected,
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn json_error_written_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-program");
    let mut command = check_command(&source_hooks_dir());
    command
        .args(["-o", "json", "--"])
        .arg(&missing)
        .arg("--flag");
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{}: no such file", missing.display());

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end(), format!("envproxy check: {expected}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("invalid JSON ({err}): {stdout:?}"));
    assert_eq!(report["verdict"], "error", "{report}");
    assert_eq!(report["resolved"], false, "{report}");
    assert_eq!(report["error"], expected.as_str(), "{report}");
    assert_eq!(
        report["command"],
        serde_json::json!([missing.display().to_string(), "--flag"]),
        "{report}"
    );
}
