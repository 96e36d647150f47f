//! Tests of the Go module in `hooks/go`: its own `go test` suite against a real agent, and a Go
//! program that reads through `envproxy.Getenv` under `envproxy run`.
//!
//! They need the Go toolchain (`apt-get install golang-go`) and use no network: the module
//! uses the standard library only, `GOPROXY=off`, and the Go caches live under the build
//! directory.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use e2e_support::*;

const LIMIT: Duration = Duration::from_secs(300);

fn go_module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks/go")
}

/// Returns a `go` command with caches under the build directory, no module downloads and no
/// cgo, so its programs are static and no `LD_PRELOAD` can reach them.
fn go(args: &[&str]) -> Command {
    let found = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "the Go toolchain is needed for the Go module's tests; .ci/run installs it \
         (apt-get install golang-go)"
    );
    let home = build_dir().join("e2e-programs/go");
    let mut command = Command::new("go");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ENVPROXY_") {
            command.env_remove(&key);
        }
    }
    command
        .args(args)
        .env_remove("LD_PRELOAD")
        .env("GOCACHE", home.join("cache"))
        .env("GOPATH", home.join("path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("CGO_ENABLED", "0");
    command
}

/// Builds `tests/programs/go-reader` once per test binary, replacing the previous build.
fn go_reader() -> PathBuf {
    static READER: OnceLock<PathBuf> = OnceLock::new();
    READER
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/go-reader");
            let dir = build_dir().join("e2e-programs");
            let staging = dir.join(format!("go-reader-{}", std::process::id()));
            let output = dir.join("go-reader");
            let result = run_with_limit(
                go(&["build", "-o"])
                    .arg(&staging)
                    .arg(".")
                    .current_dir(&source),
                LIMIT,
            );
            assert!(
                result.status.success(),
                "go build in {} failed: {}",
                source.display(),
                String::from_utf8_lossy(&result.stderr)
            );
            std::fs::rename(&staging, &output).expect("move the Go program into place");
            output
        })
        .clone()
}

#[test]
fn go_module_tests_pass_against_real_agent() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("GO_SECRET", &secret)]);
    let agent = Agent::start(&world.socket(), &secrets);
    let output = run_with_limit(
        go(&["test", "-count=1", "-tags", "envproxy_agent", "-v", "./..."])
            .current_dir(go_module_dir())
            .env("ENVPROXY_SOCKET", &agent.socket)
            .env("ENVPROXY_GO_TEST_SECRETS", &secrets)
            .env("ENVPROXY_GO_TEST_SECRET_NAME", "GO_SECRET")
            .env("GO_SECRET", "envproxy:GO_SECRET"),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    agent.stop();
    assert!(
        output.status.success(),
        "go test failed:\n{stdout}\n{stderr}"
    );
    // The tests that need the agent ran, rather than being left out by the build tag.
    for name in [
        "TestAgentResolvesThroughGetenvAndLookupEnv",
        "TestRotatedValueSeenWithinTTL",
        "TestReferenceIsResolvedWithV2Frame",
    ] {
        assert!(
            stdout.contains(&format!("--- PASS: {name}")),
            "{name} did not pass:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains(&secret) && !stderr.contains(&secret),
        "go test printed the secret"
    );
}

#[test]
fn go_program_reads_secret_and_child_gets_reference() {
    let reader = go_reader();
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let output = run_with_limit(run_command(&secrets, &reader).arg("API_TOKEN"), LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    let out = &output.stdout;
    assert_eq!(
        value_of(out, "API_TOKEN").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    assert_eq!(value_of(out, "environ").as_deref(), Some("clean"));
    assert_eq!(value_of(out, "child.API_TOKEN").as_deref(), Some(&*secret));
    assert_eq!(value_of(out, "child.environ").as_deref(), Some("clean"));
}

#[test]
fn go_program_sees_rotated_value_within_ttl() {
    let reader = go_reader();
    let world = World::new();
    let (old, new) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("ROTATING", &old)]);
    let mut command = run_command(&secrets, &reader);
    command
        .env("ENVPROXY_CACHE_TTL", "1")
        .args(["-loop", "ROTATING"]);
    assert_rotation_seen(&world, &mut command, "ROTATING", &old, &new);
}

#[test]
fn go_program_with_envproxy_disabled_reads_reference() {
    let reader = go_reader();
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let output = run_with_limit(
        run_command(&secrets, &reader)
            .env("ENVPROXY_ENABLED", "0")
            .arg("API_TOKEN"),
        LIMIT,
    );
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some("envproxy:API_TOKEN"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
