//! The jar is the same byte for byte when two builds of one commit set the same
//! `SOURCE_DATE_EPOCH`, as the image build does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Builds this crate into `target_dir` with `SOURCE_DATE_EPOCH` and returns the jar it packed.
fn build_jar(target_dir: &Path, epoch: &str) -> Vec<u8> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--offline", "--quiet", "-p", "envproxy-java-hook"])
        .arg("--target-dir")
        .arg(target_dir)
        .env("SOURCE_DATE_EPOCH", epoch)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build -p envproxy-java-hook failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let jars: Vec<PathBuf> = out_dirs(target_dir)
        .into_iter()
        .map(|out| out.join(envproxy_java_hook::JAR_FILE_NAME))
        .filter(|jar| jar.is_file())
        .collect();
    assert_eq!(
        jars.len(),
        1,
        "one packed jar under {}",
        target_dir.display()
    );
    std::fs::read(&jars[0]).expect("read the packed jar")
}

/// Returns the `OUT_DIR` of each build of this crate's build script under `target_dir`.
fn out_dirs(target_dir: &Path) -> Vec<PathBuf> {
    let build = target_dir.join("debug/build");
    std::fs::read_dir(&build)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", build.display()))
        .map(|entry| entry.expect("read a directory entry").path())
        .filter(|dir| {
            dir.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("envproxy-java-hook-"))
        })
        .map(|dir| dir.join("out"))
        .collect()
}

#[test]
fn same_epoch_gives_same_jar() {
    assert!(
        envproxy_java_hook::BUILT_JAR.is_some(),
        "the jar was not built, so it cannot be compared: {}",
        envproxy_java_hook::BUILD_PROBLEM.unwrap_or("no reason given")
    );
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();

    let first = build_jar(first_dir.path(), "1700000000");
    // Zip entry times have a resolution of two seconds, so without a fixed date two builds
    // this far apart would differ.
    std::thread::sleep(Duration::from_millis(2100));
    let second = build_jar(second_dir.path(), "1700000000");

    assert!(
        first == second,
        "two builds with one SOURCE_DATE_EPOCH differ"
    );
}

#[test]
fn epoch_before_1980_still_builds() {
    assert!(
        envproxy_java_hook::BUILT_JAR.is_some(),
        "the jar was not built: {}",
        envproxy_java_hook::BUILD_PROBLEM.unwrap_or("no reason given")
    );
    let target_dir = tempfile::tempdir().unwrap();

    let jar = build_jar(target_dir.path(), "0");

    assert!(jar.starts_with(b"PK\x03\x04"), "a zip file");
}
