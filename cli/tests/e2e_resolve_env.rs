//! End-to-end tests of `envproxy run --values-in-environ`, which resolves references into the
//! command's environment before it starts, with a statically linked program that no
//! `LD_PRELOAD` reaches.

mod e2e_support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use e2e_support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Start of the warning `--values-in-environ` prints once before the command starts.
const WARNING: &str = "envproxy: warning: --values-in-environ put ";

/// `envproxy` with a clean set of `ENVPROXY_*` variables and no `LD_PRELOAD` inherited.
fn envproxy_command() -> Command {
    let mut command = Command::new(envproxy());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ENVPROXY_") {
            command.env_remove(&key);
        }
    }
    command.env_remove("LD_PRELOAD");
    command
}

/// `envproxy run --values-in-environ --secrets FILE -- PROGRAM ARGS`.
fn values_command(secrets: &Path, program: &Path, arguments: &[&str]) -> Command {
    let mut command = envproxy_command();
    command
        .args(["run", "--values-in-environ", "--secrets"])
        .arg(secrets)
        .arg("--")
        .arg(program)
        .args(arguments);
    command
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn static_program_reads_secret() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);

    let output = run_with_limit(
        &mut values_command(
            &secrets,
            &static_probe(),
            &["get", "API_TOKEN", "LD_PRELOAD"],
        ),
        LIMIT,
    );
    let stderr = stderr_of(&output);

    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    // The library is not needed, so it is not preloaded.
    assert_eq!(
        value_of(&output.stdout, "LD_PRELOAD").as_deref(),
        Some("(null)")
    );
    assert_eq!(stderr.matches(WARNING).count(), 1, "{stderr}");
    assert!(stderr.contains("/proc/PID/environ"), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");
}

#[test]
fn static_program_reads_reference_without_option() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    // The library cannot load into a static program, so without the option it reads the
    // reference.
    let mut command = envproxy_command();
    command
        .env("ENVPROXY_LIB", library())
        .args(["run", "--secrets"])
        .arg(&secrets)
        .arg("--")
        .arg(static_probe())
        .args(["get", "API_TOKEN"]);

    let output = run_with_limit(&mut command, LIMIT);

    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some("envproxy:API_TOKEN")
    );
    assert!(!stderr_of(&output).contains(WARNING));
}

#[test]
fn values_sit_in_proc_environ() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("DB_PASSWORD", &secret)]);
    let output = run_with_limit(
        &mut values_command(
            &secrets,
            Path::new("/bin/sh"),
            &["-c", "tr '\\0' '\\n' < /proc/$$/environ"],
        ),
        LIMIT,
    );

    assert!(output.status.success(), "{}", stderr_of(&output));
    let environ = String::from_utf8_lossy(&output.stdout);
    assert!(
        environ
            .lines()
            .any(|line| line == format!("DB_PASSWORD={secret}")),
        "the value is documented to be in /proc/PID/environ"
    );
}

#[test]
fn plain_and_own_values_untouched() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let output = run_with_limit(
        values_command(
            &secrets,
            &static_probe(),
            &["get", "PLAIN", "ENVPROXY_NOTE", "API_TOKEN"],
        )
        .env("PLAIN", "postgres://db.internal/app")
        .env("ENVPROXY_NOTE", "envproxy:API_TOKEN"),
        LIMIT,
    );

    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        value_of(&output.stdout, "PLAIN").as_deref(),
        Some("postgres://db.internal/app")
    );
    assert_eq!(
        value_of(&output.stdout, "ENVPROXY_NOTE").as_deref(),
        Some("envproxy:API_TOKEN")
    );
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some(&*secret)
    );
}

#[test]
fn inherited_reference_is_resolved() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("SOURCE_KEY", &secret)]);
    let output = run_with_limit(
        values_command(&secrets, &static_probe(), &["get", "RENAMED"])
            .env("RENAMED", "envproxy:SOURCE_KEY"),
        LIMIT,
    );

    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        value_of(&output.stdout, "RENAMED").as_deref(),
        Some(&*secret)
    );
}

#[test]
fn unresolvable_reference_fails_start() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let marker = world.path("started");
    let script = format!("touch {}", marker.display());
    let output = run_with_limit(
        values_command(&secrets, Path::new("/bin/sh"), &["-c", &script])
            .env("MISSING_ONE", "envproxy:NO_SUCH_KEY")
            .env("MISSING_TWO", "envproxy: ALSO_ABSENT"),
        LIMIT,
    );
    let stderr = stderr_of(&output);

    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert!(!marker.exists(), "the command started: {stderr}");
    assert!(stderr.contains("cannot resolve 2 reference(s)"), "{stderr}");
    assert!(
        stderr.contains(
            "MISSING_ONE=envproxy:NO_SUCH_KEY: the agent's backend has no key \"NO_SUCH_KEY\""
        ),
        "{stderr}"
    );
    // The quotes show the space that is part of the key.
    assert!(
        stderr.contains("the agent's backend has no key \" ALSO_ABSENT\""),
        "{stderr}"
    );
    assert!(stderr.contains("ENVPROXY_ON_ERROR=reference"), "{stderr}");
    assert!(!stderr.contains(WARNING), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");
}

#[test]
fn on_error_reference_keeps_reference() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let output = run_with_limit(
        values_command(&secrets, &static_probe(), &["get", "MISSING", "API_TOKEN"])
            .env("MISSING", "envproxy:NO_SUCH_KEY")
            .env("ENVPROXY_ON_ERROR", "reference"),
        LIMIT,
    );
    let stderr = stderr_of(&output);

    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        value_of(&output.stdout, "MISSING").as_deref(),
        Some("envproxy:NO_SUCH_KEY")
    );
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some(&*secret)
    );
    assert!(
        stderr.contains("envproxy: MISSING: cannot resolve envproxy:NO_SUCH_KEY"),
        "{stderr}"
    );
    assert_eq!(stderr.matches(WARNING).count(), 1, "{stderr}");
}

#[test]
fn oversized_reference_spares_the_others() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    // Longer than the 16 KiB the protocol carries for a reference: that request fails, and the
    // others still reach the agent.
    let oversized = format!("envproxy:{}", "K".repeat(20_000));
    let output = run_with_limit(
        values_command(&secrets, &static_probe(), &["get", "API_TOKEN", "ZZ_LAST"])
            .env("AA_FIRST", &oversized)
            .env("MM_MALFORMED", "vault:secret/data/app")
            .env("ZZ_LAST", "envproxy:API_TOKEN")
            .env("ENVPROXY_ON_ERROR", "reference"),
        LIMIT,
    );
    let stderr = stderr_of(&output);

    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    assert_eq!(
        value_of(&output.stdout, "ZZ_LAST").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    assert!(
        stderr.contains("envproxy: AA_FIRST: cannot resolve"),
        "{stderr}"
    );
}

#[test]
fn on_error_unset_removes_variable() {
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let output = run_with_limit(
        values_command(&secrets, &static_probe(), &["get", "MISSING"])
            .env("MISSING", "envproxy:NO_SUCH_KEY")
            .env("ENVPROXY_ON_ERROR", "unset"),
        LIMIT,
    );
    let stderr = stderr_of(&output);

    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        value_of(&output.stdout, "MISSING").as_deref(),
        Some("(null)")
    );
    assert!(stderr.contains("(ENVPROXY_ON_ERROR=unset)"), "{stderr}");
}

#[test]
fn invalid_on_error_setting_fails() {
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let output = run_with_limit(
        values_command(&secrets, &static_probe(), &["get", "API_TOKEN"])
            .env("ENVPROXY_ON_ERROR", "ignore"),
        LIMIT,
    );
    let stderr = stderr_of(&output);

    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(stderr.contains("ENVPROXY_ON_ERROR=\"ignore\""), "{stderr}");
}

#[test]
fn running_agent_serves_values() {
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let agent = Agent::start(&world.socket(), &secrets);
    // Without --secrets, the keys the running agent reports become references, then values.
    let mut command = envproxy_command();
    command
        .args(["run", "--values-in-environ", "--socket"])
        .arg(&agent.socket)
        .arg("--")
        .arg(static_probe())
        .args(["get", "API_TOKEN"]);

    let output = run_with_limit(&mut command, LIMIT);
    agent.stop();

    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some(&*secret)
    );
}

#[test]
fn missing_command_gets_no_values_warning() {
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let missing_path = world.path("no-such-dir/no-such-program");
    for program in [
        missing_path.as_path(),
        Path::new("envproxy-no-such-command"),
    ] {
        let output = run_with_limit(&mut values_command(&secrets, program, &[]), LIMIT);
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(127), "{program:?}: {stderr}");
        assert!(stderr.contains("command not found"), "{stderr}");
        assert!(!stderr.contains(WARNING), "{stderr}");
    }
}
