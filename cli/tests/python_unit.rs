//! Runs the Python hook's and the example apps' own unittest suites, so that the one test
//! command covers them.

use std::path::Path;
use std::process::Command;

fn run_unittest(start_dir: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s", start_dir])
        .current_dir(root)
        .env_remove("LD_PRELOAD")
        .output()
        .expect("python3 is not installed; .ci/run installs it");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{start_dir} failed:\n{stderr}");
    assert!(
        !stderr.contains("(skipped="),
        "{start_dir} skipped tests:\n{stderr}"
    );
}

#[test]
fn python_hook_unit_tests() {
    run_unittest("hooks/python/tests");
}

#[test]
fn example_apps_tests() {
    run_unittest("examples/tests");
}
