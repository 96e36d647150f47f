//! A process that inherits the variables the library sets, without mapping the library itself
//! (a supervisor started with `sh -c exec`), still starts Java, Python and Perl programs after
//! the agent installs another version and removes the one the variables came from.

mod e2e_support;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e_support::*;
use envproxy_agent::install::{self, InstallSettings};

const HOOK_VARIABLES: [&str; 3] = ["JAVA_TOOL_OPTIONS", "PYTHONPATH", "PERL5OPT"];

/// Writes an install source with the built library, the source tree's hooks, the built Java
/// hook and a `build.txt` with `build`, so that each build is a different version.
fn install_source(work: &Path, build: &str) -> PathBuf {
    let Some(jar) = envproxy_java_hook::BUILT_JAR else {
        panic!(
            "the Java hook jar was not built: {}",
            envproxy_java_hook::BUILD_PROBLEM.unwrap_or("unknown reason")
        );
    };
    let hooks = source_hooks_dir();
    let source = work.join(format!("source-{build}"));
    let files = [
        (library(), "lib/libenvproxy.so"),
        (
            hooks.join("python/sitecustomize.py"),
            "hooks/python/sitecustomize.py",
        ),
        (
            hooks.join("python/envproxy_hook.py"),
            "hooks/python/envproxy_hook.py",
        ),
        (
            hooks.join("perl/EnvProxy/Hook.pm"),
            "hooks/perl/EnvProxy/Hook.pm",
        ),
        (
            hooks.join("perl/EnvProxy/Hook/Env.pm"),
            "hooks/perl/EnvProxy/Hook/Env.pm",
        ),
        (PathBuf::from(jar), "hooks/java/envproxy-javaagent.jar"),
    ];
    for (from, to) in files {
        let to = source.join(to);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap_or_else(|err| panic!("cannot copy {}: {err}", from.display()));
    }
    fs::write(source.join("hooks/build.txt"), build).unwrap();
    source
}

fn install_build(work: &Path, target: &Path, build: &str) -> install::Installed {
    install::install(&InstallSettings {
        source: install_source(work, build),
        target: target.to_path_buf(),
        ..InstallSettings::default()
    })
    .unwrap()
}

/// Runs `env` with the installed library preloaded and `inherited` set, and returns the hook
/// variables it sees.
fn hook_variables_under_library(
    target: &Path,
    socket: &Path,
    inherited: &HashMap<String, String>,
) -> HashMap<String, String> {
    let mut command = Command::new("env");
    command
        .env("LD_PRELOAD", target.join("lib/libenvproxy.so"))
        .env("ENVPROXY_SOCKET", socket)
        .env_remove("ENVPROXY_HOOKS_DIR");
    for variable in HOOK_VARIABLES {
        command.env_remove(variable);
    }
    command.envs(inherited);
    let output = command.output().unwrap();
    assert!(output.status.success(), "env failed: {output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| HOOK_VARIABLES.contains(name))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Returns a command with the hook variables of `inherited` and no preloaded library.
fn inheriting(program: &str, socket: &Path, inherited: &HashMap<String, String>) -> Command {
    let mut command = Command::new(program);
    command
        .env_remove("LD_PRELOAD")
        .env_remove("ENVPROXY_HOOKS_DIR")
        .env("ENVPROXY_SOCKET", socket)
        .envs(inherited);
    command
}

#[test]
fn inherited_hook_variables_survive_upgrade() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let target = work.join("node/opt/envproxy");
    // No agent listens here: the programs read no references, so none is needed.
    let socket = work.join("agent.sock");
    let first = install_build(work, &target, "first");

    let inherited = hook_variables_under_library(&target, &socket, &HashMap::new());
    let java = &inherited["JAVA_TOOL_OPTIONS"];
    assert_eq!(
        *java,
        format!(
            "-agentpath:{}={}",
            target.join("lib/libenvproxy.so").display(),
            target.join("hooks/java/envproxy-javaagent.jar").display()
        )
    );
    assert_eq!(
        inherited["PYTHONPATH"],
        target.join("hooks/python").display().to_string()
    );
    assert_eq!(
        inherited["PERL5OPT"],
        format!("-I{} -MEnvProxy::Hook", target.join("hooks/perl").display())
    );
    // A second library in a child replaces its own entries instead of adding more.
    assert_eq!(
        hook_variables_under_library(&target, &socket, &inherited),
        inherited
    );

    let second = install_build(work, &target, "second");
    assert_ne!(first.version, second.version);
    let report = install::sweep(&target, Path::new("/proc"), Duration::ZERO).unwrap();
    assert_eq!(report.removed, std::slice::from_ref(&first.version));
    assert!(!first.directory.exists());

    let output = inheriting("java", &socket, &inherited)
        .arg("-version")
        .output()
        .expect("java is not installed; .ci/run installs default-jdk-headless");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "java failed to start: {stderr}");
    assert!(!stderr.contains("Could not find agent library"), "{stderr}");

    let output = inheriting("python3", &socket, &inherited)
        .args(["-c", "import sitecustomize; print(sitecustomize.__file__)"])
        .output()
        .expect("python3 is not installed; .ci/run installs it");
    assert!(output.status.success(), "python3 failed: {output:?}");
    let loaded = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        loaded.trim_end(),
        target
            .join("hooks/python/sitecustomize.py")
            .display()
            .to_string()
    );

    let output = inheriting("perl", &socket, &inherited)
        .args(["-e", "print $INC{'EnvProxy/Hook.pm'}"])
        .output()
        .expect("perl is not installed");
    assert!(output.status.success(), "perl failed: {output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        target
            .join("hooks/perl/EnvProxy/Hook.pm")
            .display()
            .to_string()
    );
}
