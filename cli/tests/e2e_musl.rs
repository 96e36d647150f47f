//! Tests of the musl build of `libenvproxy.so`: a C program compiled with `musl-gcc` runs under
//! `envproxy run` with the musl library, and the agent is the workspace's own build.
//!
//! They need `musl-gcc` (`apt-get install musl-tools`) and the Rust target
//! `x86_64-unknown-linux-musl`. The library is built by `scripts/build-musl.sh` into its own
//! target directory under the build directory, since the workspace's is locked while
//! `cargo test` runs.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use e2e_support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Builds the musl library once per test binary and returns its path.
fn musl_library() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-musl.sh");
            let target_dir = build_dir().join("musl-build");
            let output = run_with_limit(
                Command::new(&script).env("CARGO_TARGET_DIR", &target_dir),
                Duration::from_secs(600),
            );
            assert!(
                output.status.success(),
                "{} failed (it needs musl-tools and the Rust target x86_64-unknown-linux-musl, \
                 which .ci/run installs):\n{}",
                script.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let path = PathBuf::from(path);
            assert!(path.is_file(), "the script printed {}", path.display());
            path
        })
        .clone()
}

/// Compiles `tests/programs/musl_reader.c` with musl-gcc once per test binary.
fn musl_reader() -> PathBuf {
    static READER: OnceLock<PathBuf> = OnceLock::new();
    READER
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/musl_reader.c");
            let dir = build_dir().join("e2e-programs");
            std::fs::create_dir_all(&dir).expect("create program dir");
            let output = dir.join(format!("musl-reader-{}", std::process::id()));
            let status = Command::new("musl-gcc")
                .args(["-O1", "-o"])
                .arg(&output)
                .arg(&source)
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "compiling {} with musl-gcc failed (apt-get install musl-tools)",
                source.display()
            );
            let installed = dir.join("musl-reader");
            std::fs::rename(&output, &installed).expect("move the program into place");
            installed
        })
        .clone()
}

/// `envproxy run` with the musl library in `LD_PRELOAD`.
fn musl_run(secrets: &Path) -> Command {
    let mut command = run_command(secrets, musl_reader());
    command.env("ENVPROXY_LIB", musl_library());
    command
}

#[test]
fn musl_library_has_no_glibc_or_libgcc_dependency() {
    let output = Command::new("readelf")
        .arg("-d")
        .arg(musl_library())
        .output()
        .expect("run readelf (binutils)");
    let dynamic = String::from_utf8_lossy(&output.stdout);
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .collect();
    assert_eq!(needed.len(), 1, "{needed:?}");
    assert!(needed[0].contains("[libc.so]"), "{needed:?}");
}

#[test]
fn musl_program_reads_secret_and_child_gets_references() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let output = run_with_limit(musl_run(&secrets).arg("API_TOKEN"), LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let out = &output.stdout;
    assert_eq!(
        value_of(out, "API_TOKEN").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    assert_eq!(value_of(out, "environ").as_deref(), Some("clean"));
    assert_eq!(value_of(out, "child.API_TOKEN").as_deref(), Some(&*secret));
    assert_eq!(value_of(out, "child.environ").as_deref(), Some("clean"));
    // The parent passed the value under both names; the library's execve wrapper passed the
    // reference instead.
    assert_eq!(
        value_of(out, "child.raw.API_TOKEN").as_deref(),
        Some("envproxy:API_TOKEN")
    );
    assert_eq!(
        value_of(out, "child.raw.RENAMED").as_deref(),
        Some("envproxy:API_TOKEN")
    );
}

#[test]
fn musl_program_sees_rotated_value_within_ttl() {
    let world = World::new();
    let (old, new) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("ROTATING", &old)]);
    let mut command = musl_run(&secrets);
    command
        .env("ENVPROXY_CACHE_TTL", "1")
        .args(["-loop", "ROTATING"]);
    assert_rotation_seen(&world, &mut command, "ROTATING", &old, &new);
}

#[test]
fn musl_library_disabled_leaves_reference() {
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let output = run_with_limit(
        musl_run(&secrets)
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
