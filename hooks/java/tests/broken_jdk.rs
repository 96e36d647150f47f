//! A JDK that cannot build the hook (a failing `javac` or `jar`, a `jar` that writes a bad file,
//! a `javac` older than 17) leaves the build successful. The build prints one warning with the
//! reason and the fix, and leaves the jar in `hooks/java` as it was.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Builds this crate into `target_dir` with `JAVA_HOME` set to `java_home`.
fn build_with_java_home(target_dir: &Path, java_home: &Path) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .args(["build", "--offline", "-p", "envproxy-java-hook"])
        .arg("--target-dir")
        .arg(target_dir)
        .env("JAVA_HOME", java_home)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo build")
}

/// Creates `JAVA_HOME/bin/javac` and `JAVA_HOME/bin/jar` as shell scripts with `body`.
fn fake_jdk(java_home: &Path, body: &str) {
    let bin = java_home.join("bin");
    std::fs::create_dir_all(&bin).expect("create the fake JDK's bin");
    for tool in ["javac", "jar"] {
        let path = bin.join(tool);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write a fake JDK tool");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make a fake JDK tool executable");
    }
}

/// Replaces `JAVA_HOME/bin/<tool>` with a shell script with `body`.
fn replace_tool(java_home: &Path, tool: &str, body: &str) {
    let path = java_home.join("bin").join(tool);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write a fake JDK tool");
}

/// Returns the part of the warning that says what became of the installed jar, given its
/// content before the build.
fn expected_effect(jar_before: &Option<Vec<u8>>) -> String {
    match jar_before {
        Some(_) => format!(
            "the jar from an earlier build is kept at {}",
            installed_jar().display()
        ),
        None => "Java programs read references".to_string(),
    }
}

fn installed_jar() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(envproxy_java_hook::JAR_FILE_NAME)
}

/// Returns the `warning: envproxy-java-hook@...: ` lines of cargo's stderr.
fn warnings(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("warning: envproxy-java-hook"))
        .map(str::to_string)
        .collect()
}

#[test]
fn failing_javac_warns_and_build_succeeds() {
    let jar_before = std::fs::read(installed_jar()).ok();
    let java_home = tempfile::tempdir().unwrap();
    fake_jdk(
        java_home.path(),
        "echo 'error: broken compiler' >&2\nexit 3",
    );
    let target_dir = tempfile::tempdir().unwrap();

    let output = build_with_java_home(target_dir.path(), java_home.path());

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the build failed: {stderr}");
    let warnings = warnings(&output);
    assert_eq!(warnings.len(), 1, "one warning expected: {stderr}");
    let warning = &warnings[0];
    assert!(
        warning.contains("the Java hook jar was not built"),
        "{warning}"
    );
    assert!(warning.contains("exit status: 3"), "{warning}");
    assert!(warning.contains("error: broken compiler"), "{warning}");
    assert!(!warning.contains("Install JDK 17"), "{warning}");
    assert!(warning.contains("Fix that failure"), "{warning}");
    assert!(warning.contains("JAVA_HOME"), "{warning}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::fs::read(installed_jar()).ok(),
        jar_before,
        "the failed build changed {}",
        installed_jar().display()
    );
}

#[test]
fn jar_writing_garbage_keeps_installed_jar() {
    let jar_before = std::fs::read(installed_jar()).ok();
    let java_home = tempfile::tempdir().unwrap();
    // javac reports version 17 and compiles nothing; jar exits 0 after writing text into
    // every .jar argument.
    fake_jdk(
        java_home.path(),
        "case \"$1\" in --version) echo 'javac 17.0.9';; esac",
    );
    replace_tool(
        java_home.path(),
        "jar",
        "for a; do case \"$a\" in *.jar) echo garbage > \"$a\";; esac; done",
    );
    let target_dir = tempfile::tempdir().unwrap();

    let output = build_with_java_home(target_dir.path(), java_home.path());

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the build failed: {stderr}");
    let warnings = warnings(&output);
    assert_eq!(warnings.len(), 1, "one warning expected: {stderr}");
    let warning = &warnings[0];
    assert!(warning.contains("which is not a jar"), "{warning}");
    assert!(warning.contains(&expected_effect(&jar_before)), "{warning}");
    assert!(!warning.contains("Install JDK 17"), "{warning}");
    assert_eq!(
        std::fs::read(installed_jar()).ok(),
        jar_before,
        "the garbage jar replaced {}",
        installed_jar().display()
    );
}

#[test]
fn jar_without_hook_class_keeps_installed_jar() {
    let jar_before = std::fs::read(installed_jar()).ok();
    let java_home = tempfile::tempdir().unwrap();
    fake_jdk(
        java_home.path(),
        "case \"$1\" in --version) echo 'javac 17.0.9';; esac",
    );
    // jar writes a zip local file header and lists no entries.
    replace_tool(
        java_home.path(),
        "jar",
        "for a; do case \"$a\" in *.jar) printf 'PK\\003\\004' > \"$a\";; esac; done",
    );
    let target_dir = tempfile::tempdir().unwrap();

    let output = build_with_java_home(target_dir.path(), java_home.path());

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the build failed: {stderr}");
    let warnings = warnings(&output);
    assert_eq!(warnings.len(), 1, "one warning expected: {stderr}");
    let warning = &warnings[0];
    assert!(
        warning.contains("does not contain dev/envproxy/javaagent/Hook.class"),
        "{warning}"
    );
    assert!(warning.contains(&expected_effect(&jar_before)), "{warning}");
    assert_eq!(std::fs::read(installed_jar()).ok(), jar_before);
}

#[test]
fn failing_jar_names_failure_not_jdk_version() {
    let jar_before = std::fs::read(installed_jar()).ok();
    let java_home = tempfile::tempdir().unwrap();
    fake_jdk(
        java_home.path(),
        "case \"$1\" in --version) echo 'javac 17.0.9';; esac",
    );
    replace_tool(
        java_home.path(),
        "jar",
        "case \"$1\" in --version) exit 0;; esac\necho 'No space left on device' >&2\nexit 1",
    );
    let target_dir = tempfile::tempdir().unwrap();

    let output = build_with_java_home(target_dir.path(), java_home.path());

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the build failed: {stderr}");
    let warnings = warnings(&output);
    assert_eq!(warnings.len(), 1, "one warning expected: {stderr}");
    let warning = &warnings[0];
    assert!(warning.contains("No space left on device"), "{warning}");
    assert!(warning.contains("Fix that failure"), "{warning}");
    assert!(!warning.contains("Install JDK 17"), "{warning}");
    assert!(warning.contains(&expected_effect(&jar_before)), "{warning}");
    assert_eq!(std::fs::read(installed_jar()).ok(), jar_before);
}

#[test]
fn javac_older_than_17_warns() {
    let jar_before = std::fs::read(installed_jar()).ok();
    let java_home = tempfile::tempdir().unwrap();
    fake_jdk(java_home.path(), "echo 'javac 11.0.22'");
    let target_dir = tempfile::tempdir().unwrap();

    let output = build_with_java_home(target_dir.path(), java_home.path());

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the build failed: {stderr}");
    let warnings = warnings(&output);
    assert_eq!(warnings.len(), 1, "one warning expected: {stderr}");
    assert!(
        warnings[0].contains("is version 11.0.22, and the hook needs 17 or later"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].contains("Install JDK 17 or later"),
        "{}",
        warnings[0]
    );
    assert_eq!(std::fs::read(installed_jar()).ok(), jar_before);
}

#[test]
fn java_home_without_javac_is_named() {
    let java_home = tempfile::tempdir().unwrap();
    let missing = java_home.path().join("no-such-jdk");
    let target_dir = tempfile::tempdir().unwrap();

    let output = build_with_java_home(target_dir.path(), &missing);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the build failed: {stderr}");
    let expected = format!(
        "JAVA_HOME is set to {}, which has no bin/javac",
        missing.display()
    );
    assert!(
        warnings(&output)
            .iter()
            .any(|line| line.contains(&expected)),
        "{stderr}"
    );
}
