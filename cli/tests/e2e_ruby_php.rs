//! End-to-end tests of Ruby and PHP CLI programs under `envproxy run`. Both read variables
//! through libc `getenv` (`ENV[]`, `ENV.fetch`, PHP's `getenv(NAME)`), so the library alone
//! resolves them. The calls that walk `environ` instead (`ENV.to_h`, `$_SERVER`, `getenv()`
//! without a name) show references, as the README's language table states.

mod e2e_support;

use std::time::Duration;

use e2e_support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Ruby code that prints `ROLE.NAME=VALUE`, whether `ENV.fetch` agrees and whether the value is
/// in its own environ. As the parent it also starts itself as a child, and `/usr/bin/env` with
/// the value passed under another name.
const RUBY_SCRIPT: &str = r##"
name, role = ARGV[0], (ARGV[1] || "parent")
value = ENV[name] || "(nil)"
raw = File.binread("/proc/self/environ")
puts "#{role}.#{name}=#{value}"
puts "#{role}.fetch=#{ENV.fetch(name) == value ? 'same' : 'different'}"
puts "#{role}.environ=#{raw.include?(value) ? 'leak' : 'clean'}"
exit 0 if role != "parent"
puts "to_h=#{ENV.to_h[name]}"
$stdout.flush
system(RbConfig.ruby, "-e", ENV.fetch("RUBY_CHILD_SCRIPT"), name, "child") or abort "child"
system({ "RENAMED" => ENV[name] }, "/usr/bin/env") or abort "env"
"##;

#[test]
fn ruby_env_resolves_secret_for_parent_only() {
    require_program("ruby", "ruby");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let output = run_with_limit(
        run_command(&secrets, "ruby")
            .env("RUBY_CHILD_SCRIPT", RUBY_SCRIPT)
            .args(["-e", RUBY_SCRIPT, "API_TOKEN"]),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let out = &output.stdout;
    assert_eq!(
        value_of(out, "parent.API_TOKEN").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    assert_eq!(value_of(out, "parent.fetch").as_deref(), Some("same"));
    assert_eq!(value_of(out, "parent.environ").as_deref(), Some("clean"));
    // ENV.to_h copies environ without calling getenv.
    assert_eq!(value_of(out, "to_h").as_deref(), Some("envproxy:API_TOKEN"));
    assert_eq!(value_of(out, "child.API_TOKEN").as_deref(), Some(&*secret));
    assert_eq!(value_of(out, "child.environ").as_deref(), Some("clean"));
    assert_eq!(
        value_of(out, "RENAMED").as_deref(),
        Some("envproxy:API_TOKEN"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(&secret).count(), 2, "{stdout}");
}

#[test]
fn ruby_loop_sees_rotated_value_within_ttl() {
    require_program("ruby", "ruby");
    let world = World::new();
    let (old, new) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("ROTATING", &old)]);
    let script =
        r##"$stdout.sync = true; 200.times { puts "ROTATING=#{ENV['ROTATING']}"; sleep 0.05 }"##;
    let mut command = run_command(&secrets, "ruby");
    command.env("ENVPROXY_CACHE_TTL", "1").args(["-e", script]);
    assert_rotation_seen(&world, &mut command, "ROTATING", &old, &new);
}

/// PHP code with the same lines as the Ruby script; the child with another name is started
/// with `proc_open` and an environment built from `getenv()`.
const PHP_SCRIPT: &str = r#"
$name = $argv[1];
$role = $argv[2] ?? "parent";
$value = getenv($name);
$value = $value === false ? "(false)" : $value;
$raw = file_get_contents("/proc/self/environ");
echo "$role.$name=$value\n";
echo "$role.environ=", (strpos($raw, $value) !== false ? "leak" : "clean"), "\n";
if ($role !== "parent") exit(0);
echo "server=", $_SERVER[$name] ?? "(unset)", "\n";
echo "getenv_all=", getenv()[$name] ?? "(unset)", "\n";
passthru(escapeshellarg(PHP_BINARY) . " -r " . escapeshellarg(getenv("PHP_CHILD_SCRIPT"))
    . " -- " . escapeshellarg($name) . " child", $status);
if ($status !== 0) exit(1);
$env = getenv();
$env["RENAMED"] = getenv($name);
$process = proc_open(["/usr/bin/env"], [1 => STDOUT, 2 => STDERR], $pipes, null, $env);
exit(proc_close($process));
"#;

#[test]
fn php_getenv_resolves_secret_for_parent_only() {
    require_program("php", "php-cli");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let output = run_with_limit(
        run_command(&secrets, "php")
            .env("PHP_CHILD_SCRIPT", PHP_SCRIPT)
            .args(["-r", PHP_SCRIPT, "--", "API_TOKEN"]),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    let out = &output.stdout;
    assert_eq!(
        value_of(out, "parent.API_TOKEN").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    assert_eq!(value_of(out, "parent.environ").as_deref(), Some("clean"));
    // $_SERVER and getenv() without a name copy environ without calling getenv.
    assert_eq!(
        value_of(out, "server").as_deref(),
        Some("envproxy:API_TOKEN")
    );
    assert_eq!(
        value_of(out, "getenv_all").as_deref(),
        Some("envproxy:API_TOKEN")
    );
    assert_eq!(value_of(out, "child.API_TOKEN").as_deref(), Some(&*secret));
    assert_eq!(value_of(out, "child.environ").as_deref(), Some("clean"));
    assert_eq!(
        value_of(out, "RENAMED").as_deref(),
        Some("envproxy:API_TOKEN"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(&secret).count(), 2, "{stdout}");
}

#[test]
fn php_loop_sees_rotated_value_within_ttl() {
    require_program("php", "php-cli");
    let world = World::new();
    let (old, new) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("ROTATING", &old)]);
    let script = r#"for ($i = 0; $i < 200; $i++) { echo "ROTATING=", getenv("ROTATING"), "\n"; flush(); usleep(50000); }"#;
    let mut command = run_command(&secrets, "php");
    command.env("ENVPROXY_CACHE_TTL", "1").args(["-r", script]);
    assert_rotation_seen(&world, &mut command, "ROTATING", &old, &new);
}

#[test]
fn library_disabled_leaves_reference_in_ruby_and_php() {
    require_program("ruby", "ruby");
    require_program("php", "php-cli");
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let ruby = run_with_limit(
        run_command(&secrets, "ruby")
            .env("ENVPROXY_ENABLED", "0")
            .args(["-e", r##"puts "API_TOKEN=#{ENV['API_TOKEN']}""##]),
        LIMIT,
    );
    let php = run_with_limit(
        run_command(&secrets, "php")
            .env("ENVPROXY_ENABLED", "0")
            .args(["-r", r#"echo "API_TOKEN=", getenv("API_TOKEN"), "\n";"#]),
        LIMIT,
    );
    for output in [ruby, php] {
        assert_eq!(
            value_of(&output.stdout, "API_TOKEN").as_deref(),
            Some("envproxy:API_TOKEN"),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
