//! End-to-end tests of Perl programs under `envproxy run`: `%ENV` reads resolve through the
//! hook that the library loads with `PERL5OPT`, and neither Perl nor its children hold the value
//! in `/proc/PID/environ`.

mod e2e_support;

use std::path::Path;
use std::time::Duration;

use e2e_support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Perl code that prints `ROLE.NAME=VALUE` and whether the value is in its own environ. Run as
/// the parent, it then starts children: itself through `system` with the inherited environment,
/// `/usr/bin/env` after `local $ENV{NAME}` and after copying the value to another name.
const PERL_SCRIPT: &str = r#"
my ($name, $role) = @ARGV;
$role //= "parent";
my $value = $ENV{$name} // "(undef)";
open(my $fh, "<", "/proc/self/environ") or die "environ: $!";
my $raw = do { local $/; <$fh> };
print "$role.$name=$value\n";
print "$role.environ=", (index($raw, $value) >= 0 ? "leak" : "clean"), "\n";
exit 0 if $role ne "parent";
my %copy = %ENV;
print "copy.$name=$copy{$name}\n";
print "exists=", (exists $ENV{$name} ? 1 : 0), "\n";
print "listed=", ((grep { $_ eq $name } keys %ENV) ? 1 : 0), "\n";
$|= 1;
system($^X, "-e", $ENV{PERL_CHILD_SCRIPT}, $name, "child") == 0 or die "child failed";
{
    local $ENV{$name} = $ENV{$name};
    local $ENV{RENAMED} = $ENV{$name};
    $ENV{PLAIN_SETTING} = "written-by-perl";
    system("/usr/bin/env") == 0 or die "env failed";
}
delete $ENV{PLAIN_SETTING};
print "deleted=", (defined $ENV{PLAIN_SETTING} ? "no" : "yes"), "\n";
system("/bin/sh", "-c", 'echo "shell.PLAIN_SETTING=${PLAIN_SETTING-unset}"') == 0 or die;
"#;

fn perl_command(secrets: &std::path::Path, name: &str) -> std::process::Command {
    let mut command = run_command(secrets, "perl");
    command
        .env("PERL_CHILD_SCRIPT", PERL_SCRIPT)
        .args(["-e", PERL_SCRIPT, name]);
    command
}

#[test]
fn perl_env_resolves_secret_for_parent_only() {
    require_program("perl", "perl");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let output = run_with_limit(&mut perl_command(&secrets, "API_TOKEN"), LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let out = &output.stdout;
    assert_eq!(
        value_of(out, "parent.API_TOKEN").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    assert_eq!(value_of(out, "parent.environ").as_deref(), Some("clean"));
    assert_eq!(value_of(out, "copy.API_TOKEN").as_deref(), Some(&*secret));
    assert_eq!(value_of(out, "exists").as_deref(), Some("1"));
    assert_eq!(value_of(out, "listed").as_deref(), Some("1"));
    assert_eq!(value_of(out, "child.API_TOKEN").as_deref(), Some(&*secret));
    assert_eq!(value_of(out, "child.environ").as_deref(), Some("clean"));
    // The children started with `system` see references for the secret, under its own name
    // and under the name it was copied to, and see plain writes.
    assert_eq!(
        value_of(out, "API_TOKEN").as_deref(),
        Some("envproxy:API_TOKEN"),
        "{stdout}"
    );
    assert_eq!(
        value_of(out, "RENAMED").as_deref(),
        Some("envproxy:API_TOKEN"),
        "{stdout}"
    );
    assert_eq!(
        value_of(out, "PLAIN_SETTING").as_deref(),
        Some("written-by-perl")
    );
    assert_eq!(value_of(out, "deleted").as_deref(), Some("yes"));
    assert_eq!(
        value_of(out, "shell.PLAIN_SETTING").as_deref(),
        Some("unset")
    );
    // The parent's two lines, the copy and the child's line: nothing else shows the value.
    assert_eq!(stdout.matches(&secret).count(), 3, "{stdout}");
}

#[test]
fn perl_loop_sees_rotated_value_within_ttl() {
    require_program("perl", "perl");
    let world = World::new();
    let (old, new) = (random_secret(), random_secret());
    let secrets = world.write_secrets(&[("ROTATING", &old)]);
    let script = r#"$| = 1; for (1..200) { print "ROTATING=$ENV{ROTATING}\n"; select(undef, undef, undef, 0.05) }"#;
    let mut command = run_command(&secrets, "perl");
    command.env("ENVPROXY_CACHE_TTL", "1").args(["-e", script]);
    assert_rotation_seen(&world, &mut command, "ROTATING", &old, &new);
}

#[test]
fn perl_hook_disabled_leaves_reference() {
    require_program("perl", "perl");
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    for value in ["1", "true", "YES"] {
        let output = run_with_limit(
            perl_command(&secrets, "API_TOKEN").env("ENVPROXY_NO_PERL", value),
            LIMIT,
        );
        assert_eq!(
            value_of(&output.stdout, "parent.API_TOKEN").as_deref(),
            Some("envproxy:API_TOKEN"),
            "ENVPROXY_NO_PERL={value}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn perl_keeps_its_own_perl5opt() {
    require_program("perl", "perl");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    // `sum` is callable only because PERL5OPT imports it; the child shows the merged setting.
    let script = r#"
print "sum=", sum(2, 3), "\n";
print "API_TOKEN=$ENV{API_TOKEN}\n";
system("/bin/sh", "-c", 'echo "PERL5OPT=$PERL5OPT"');
"#;
    let output = run_with_limit(
        run_command(&secrets, "perl")
            .env("PERL5OPT", "-MList::Util=sum")
            .args(["-e", script]),
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(value_of(&output.stdout, "sum").as_deref(), Some("5"));
    assert_eq!(
        value_of(&output.stdout, "API_TOKEN").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    let perl5opt = value_of(&output.stdout, "PERL5OPT").unwrap_or_default();
    assert!(
        perl5opt.starts_with("-MList::Util=sum -I") && perl5opt.ends_with(" -MEnvProxy::Hook"),
        "PERL5OPT in the child: {perl5opt}"
    );
}

#[test]
fn perl_unresolvable_reference_follows_on_error() {
    require_program("perl", "perl");
    let world = World::new();
    let secrets = world.write_secrets(&[("API_TOKEN", &random_secret())]);
    let script = r#"
print "MISSING=", ($ENV{MISSING} // "(undef)"), "\n";
print "MISSING=", ($ENV{MISSING} // "(undef)"), "\n";
"#;
    let output = run_with_limit(
        run_command(&secrets, "perl")
            .env("MISSING", "envproxy:NOT_IN_FILE")
            .args(["-e", script]),
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        value_of(&output.stdout, "MISSING").as_deref(),
        Some("envproxy:NOT_IN_FILE")
    );
    // One line on stderr for the variable, however often it is read.
    assert_eq!(
        stderr.matches("MISSING: cannot resolve").count(),
        1,
        "{stderr}"
    );
    let unset = run_with_limit(
        run_command(&secrets, "perl")
            .env("MISSING", "envproxy:NOT_IN_FILE")
            .env("ENVPROXY_ON_ERROR", "unset")
            .args(["-e", script]),
        LIMIT,
    );
    assert_eq!(
        value_of(&unset.stdout, "MISSING").as_deref(),
        Some("(undef)")
    );
}

#[test]
fn perl_reconnects_after_fork_and_agent_restart() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    require_program("perl", "perl");
    let world = World::new();
    let secret = random_secret();
    let secrets = world.write_secrets(&[("API_TOKEN", &secret)]);
    let agent = Agent::start(&world.socket(), &secrets);
    // With TTL 0 every read is a request, first on the inherited connection in the forked
    // child, then on a connection the restarted agent never saw.
    let script = r#"
$| = 1;
while (my $command = <STDIN>) {
    chomp $command;
    if ($command eq "fork") {
        my $pid = fork // die "fork: $!";
        if ($pid == 0) { print "forked=$ENV{API_TOKEN}\n"; exit 0 }
        waitpid($pid, 0);
    }
    print "read=$ENV{API_TOKEN}\n";
}
"#;
    let mut child = preload_command(Path::new("perl"), &agent.socket)
        .env("API_TOKEN", "envproxy:API_TOKEN")
        .env("ENVPROXY_CACHE_TTL", "0")
        .args(["-e", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start perl");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut next_line = || {
        lines
            .next()
            .expect("a line from perl")
            .expect("read perl's output")
    };

    writeln!(stdin, "read").unwrap();
    assert_eq!(next_line(), format!("read={secret}"));
    writeln!(stdin, "fork").unwrap();
    assert_eq!(next_line(), format!("forked={secret}"));
    assert_eq!(next_line(), format!("read={secret}"));

    agent.stop();
    let restarted = Agent::start(&world.socket(), &secrets);
    // The first read after the restart finds its pooled connection closed and opens another.
    writeln!(stdin, "read").unwrap();
    assert_eq!(next_line(), format!("read={secret}"));
    drop(stdin);
    let output = child.wait_with_output().expect("wait for perl");
    restarted.stop();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn perl_timeout_message_gives_milliseconds() {
    require_program("perl", "perl");
    let world = World::new();
    // An agent socket that accepts connections into its backlog and never responds.
    let socket = world.path("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind the socket");
    let output = run_with_limit(
        preload_command(Path::new("perl"), &socket)
            .env("ENVPROXY_TIMEOUT_MS", "300")
            .env("SILENT", "envproxy:SILENT")
            .args(["-e", "print qq(SILENT=$ENV{SILENT}\\n)"]),
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        value_of(&output.stdout, "SILENT").as_deref(),
        Some("envproxy:SILENT"),
        "{stderr}"
    );
    assert!(
        stderr.contains("did not answer within 300 ms (ENVPROXY_TIMEOUT_MS)"),
        "{stderr}"
    );
}

#[test]
fn perl_truncated_response_is_incomplete() {
    require_program("perl", "perl");
    check_truncated_responses(
        "Perl",
        "CUT",
        |socket| {
            let mut command = preload_command(Path::new("perl"), socket);
            command.args(["-e", "print qq(CUT=$ENV{CUT}\\n)"]);
            command
        },
        |command| run_with_limit(command, LIMIT),
    );
}

#[test]
fn perl_too_large_setting_gives_maximum() {
    require_program("perl", "perl");
    let world = World::new();
    let socket = world.path("no-agent.sock");
    let output = run_with_limit(
        preload_command(Path::new("perl"), &socket)
            .env("ENVPROXY_CACHE_TTL", "99999999999999999999")
            .env("GONE", "envproxy:GONE")
            .args(["-e", "print qq(GONE=$ENV{GONE}\\n)"]),
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "ENVPROXY_CACHE_TTL=\"99999999999999999999\" is too large (the maximum is \
             18446744073709551615)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("not a whole number"), "{stderr}");
}
