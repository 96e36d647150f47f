//! End-to-end tests of `vault:` references: real C and Python programs under `envproxy run` (or
//! served by a standalone `envproxy-agent`) read secrets from the in-repo Vault test server,
//! which follows Vault's HTTP API and counts the requests it receives.
//!
//! Every test starts its own server and uses random secrets, and checks that no value and no
//! token reaches stderr or the agent's log. The last test runs against a real Vault or OpenBao
//! dev server when `VAULT_ADDR` and `VAULT_TOKEN` are set, and otherwise prints why it did
//! nothing.

mod e2e_support;
mod e2e_vault_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envproxy_vault_test_server::{DatabaseRole, LeaseInfo, ServerOptions, TokenSpec};
use serde_json::{json, Value};

use e2e_support::*;
use e2e_vault_support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Agent cache TTL of the rotation and outage tests, in seconds.
const AGENT_CACHE_TTL_SECS: u64 = 1;
/// Library cache TTL (`ENVPROXY_CACHE_TTL`) of the rotation and outage tests, in seconds.
const LIBRARY_CACHE_TTL_SECS: u64 = 1;

fn require(program: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{program} is not installed; .ci/run installs it (apt-get install python3)"
    );
}

/// Asserts that `text` contains none of `secrets` (values and tokens of the test).
fn assert_no_secrets(origin: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{origin} contains a secret value or the token: {text}"
        );
    }
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn kv2_reference(path: &str, key: &str) -> String {
    format!("vault:{KV2_MOUNT}/data/{path}#{key}")
}

/// Runs the C probe and a Python program with `variables` set, each printing them, and returns
/// both outputs.
fn run_c_and_python(
    make_command: impl Fn(&str) -> Command,
    variables: &[(&str, &str)],
) -> [(&'static str, Output); 2] {
    require("python3");
    let names: Vec<&str> = variables.iter().map(|(name, _)| *name).collect();
    let mut c_command = make_command(probe().to_str().expect("UTF-8 path"));
    c_command
        .envs(variables.iter().copied())
        .arg("get")
        .args(&names);
    let mut python_command = make_command("python3");
    python_command
        .envs(variables.iter().copied())
        .args(["-c", PYTHON_PRINT])
        .args(&names);
    [
        ("C", run_with_limit(&mut c_command, LIMIT)),
        ("Python", run_with_limit(&mut python_command, LIMIT)),
    ]
}

#[test]
fn kv2_latest_and_pinned_version() {
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let path = unique_path("kv2");
    let (first, second) = (random_secret(), random_secret());
    assert_eq!(vault.put_kv2(&path, json!({ "password": first })), 1);
    assert_eq!(vault.put_kv2(&path, json!({ "password": second })), 2);
    let config = AgentConfig::vault(&vault.url()).write(&world, "agent.toml");
    let latest = kv2_reference(&path, "password");
    let pinned = format!("{latest}#1");

    let outputs = run_c_and_python(
        |program| run_with_config(&world, &config, &token, program),
        &[("LATEST", &latest), ("PINNED", &pinned)],
    );
    for (program, output) in &outputs {
        let stderr = stderr_of(output);
        assert_eq!(
            value_of(&output.stdout, "LATEST").as_deref(),
            Some(&*second),
            "{program}: {stderr}"
        );
        assert_eq!(
            value_of(&output.stdout, "PINNED").as_deref(),
            Some(&*first),
            "{program}: {stderr}"
        );
        assert!(output.status.success(), "{program}: {stderr}");
        assert_no_secrets(program, &stderr, &[&first, &second, &token]);
    }
    assert!(vault.reads(&format!("{KV2_MOUNT}/data/{path}")) >= 1);
}

#[test]
fn kv1_secret_resolves() {
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let path = unique_path("kv1");
    let secret = random_secret();
    vault
        .server()
        .root()
        .kv1_put(
            KV1_MOUNT,
            &path,
            json!({ "password": secret, "user": "app" }),
        )
        .expect("write a KV v1 secret");
    let config = AgentConfig::vault(&vault.url()).write(&world, "agent.toml");
    let reference = format!("vault:{KV1_MOUNT}/{path}#password");

    let outputs = run_c_and_python(
        |program| run_with_config(&world, &config, &token, program),
        &[("LEGACY_PASSWORD", &reference)],
    );
    for (program, output) in &outputs {
        let stderr = stderr_of(output);
        assert_eq!(
            value_of(&output.stdout, "LEGACY_PASSWORD").as_deref(),
            Some(&*secret),
            "{program}: {stderr}"
        );
        assert_no_secrets(program, &stderr, &[&secret, &token]);
    }
    assert!(vault.reads(&format!("{KV1_MOUNT}/{path}")) >= 1);
}

#[test]
fn nested_json_values_as_text() {
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let path = unique_path("nested");
    let secret = random_secret();
    let config_object = json!({ "host": "db.internal", "port": 5432, "password": secret });
    vault.put_kv2(
        &path,
        json!({
            "config": config_object,
            "port": 5432,
            "ratio": 0.25,
            "enabled": true,
            "hosts": ["a", "b"],
            "empty": null,
        }),
    );
    let agent_config = AgentConfig::vault(&vault.url()).write(&world, "agent.toml");
    let references: Vec<(&str, String)> = ["config", "port", "ratio", "enabled", "hosts", "empty"]
        .into_iter()
        .map(|key| (key, kv2_reference(&path, key)))
        .collect();
    let variables: Vec<(String, &str)> = references
        .iter()
        .map(|(key, reference)| (key.to_uppercase(), reference.as_str()))
        .collect();
    let variables: Vec<(&str, &str)> = variables
        .iter()
        .map(|(name, reference)| (name.as_str(), *reference))
        .collect();

    let outputs = run_c_and_python(
        |program| run_with_config(&world, &agent_config, &token, program),
        &variables,
    );
    for (program, output) in &outputs {
        let stderr = stderr_of(output);
        let value = |name: &str| value_of(&output.stdout, name);
        let printed = value("CONFIG").unwrap_or_else(|| panic!("{program}: {stderr}"));
        let parsed: Value = serde_json::from_str(&printed)
            .unwrap_or_else(|err| panic!("{program}: CONFIG is not JSON ({err}): {printed}"));
        assert_eq!(parsed, config_object, "{program}");
        assert!(
            !printed.contains(' ') && !printed.contains('\n'),
            "{program}: CONFIG is not compact JSON: {printed}"
        );
        assert_eq!(value("PORT").as_deref(), Some("5432"), "{program}");
        assert_eq!(value("RATIO").as_deref(), Some("0.25"), "{program}");
        assert_eq!(value("ENABLED").as_deref(), Some("true"), "{program}");
        assert_eq!(value("HOSTS").as_deref(), Some(r#"["a","b"]"#), "{program}");
        assert_eq!(value("EMPTY").as_deref(), Some(""), "{program}");
        assert_no_secrets(program, &stderr, &[&secret, &token]);
    }
}

/// Starts `command`, which prints `NAME=VALUE` lines, and returns the running child and a
/// channel of (arrival time, value) for `name`.
fn stream_values(mut command: Command, name: &str) -> (Child, mpsc::Receiver<(Instant, String)>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the program");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, receiver) = mpsc::channel();
    let prefix = format!("{name}=");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(value) = line.strip_prefix(&prefix) {
                if sender.send((Instant::now(), value.to_string())).is_err() {
                    break;
                }
            }
        }
    });
    (child, receiver)
}

/// Writes a new version of the secret while a program prints it in a loop and returns how
/// long after the write the new value first appeared.
fn rotation_delay(vault: &Vault, path: &str, command: Command, old: &str, new: &str) -> Duration {
    let (child, values) = stream_values(command, "ROTATING");
    let first = values.recv_timeout(LIMIT).expect("first value");
    assert_eq!(first.1, old, "first value");
    std::thread::sleep(Duration::from_millis(300));
    let written_at = Instant::now();
    vault.put_kv2(path, json!({ "password": new }));
    let delay = loop {
        let (at, value) = values
            .recv_timeout(Duration::from_secs(10))
            .expect("the new value never appeared");
        if value == new {
            break at.duration_since(written_at);
        }
        assert_eq!(value, old, "unexpected value while rotating");
    };
    let output = child.wait_with_output().expect("wait for the program");
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert_no_secrets("stderr", &stderr, &[old, new]);
    delay
}

#[test]
fn rotation_seen_within_cache_ttls() {
    require("python3");
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let config = AgentConfig::vault(&vault.url())
        .set("cache_ttl", &format!("{AGENT_CACHE_TTL_SECS}s"))
        .write(&world, "agent.toml");
    // The agent's entry expires after its TTL, the library's after its own, and the programs
    // print every 50 ms, so one more second covers reading and scheduling.
    let bound = Duration::from_secs(AGENT_CACHE_TTL_SECS + LIBRARY_CACHE_TTL_SECS + 1);
    let python_loop = r#"
import os, time
for _ in range(120):
    print("ROTATING=" + os.environ["ROTATING"], flush=True)
    time.sleep(0.05)
"#;

    for program in ["C", "Python"] {
        let path = unique_path("rotating");
        let (old, new) = (random_secret(), random_secret());
        vault.put_kv2(&path, json!({ "password": old }));
        let mut command = match program {
            "C" => {
                let mut command = run_with_config(&world, &config, &token, probe());
                command.args(["loop", "ROTATING", "50", "120"]);
                command
            }
            _ => {
                let mut command = run_with_config(&world, &config, &token, "python3");
                command.args(["-c", python_loop]);
                command
            }
        };
        command
            .env("ENVPROXY_CACHE_TTL", LIBRARY_CACHE_TTL_SECS.to_string())
            .env("ROTATING", kv2_reference(&path, "password"));
        let delay = rotation_delay(&vault, &path, command, &old, &new);
        assert!(
            delay <= bound,
            "{program}: new value seen {delay:?} after the write, bound {bound:?}"
        );
    }
}

#[test]
fn two_hundred_processes_cost_one_read() {
    const PROCESSES: usize = 200;
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let path = unique_path("shared");
    let secret = random_secret();
    vault.put_kv2(&path, json!({ "password": secret }));
    let vault_path = format!("{KV2_MOUNT}/data/{path}");
    // The first read stays in flight for a second, so the requests of the processes started
    // meanwhile reach the agent while it is still waiting for Vault.
    vault
        .server()
        .inject_latency(&vault_path, Duration::from_secs(1));
    // The Vault timeout is far above the injected second, so a loaded machine that delays the
    // response further does not turn the one read into a failure. The check stays the same:
    // every process resolves and Vault sees exactly one read.
    let config = AgentConfig::vault(&vault.url())
        .set("cache_ttl", "5m")
        .set("timeout", "30s")
        .write(&world, "agent.toml");
    let script = format!("for i in $(seq {PROCESSES}); do \"$PROBE\" get SHARED & done; wait");

    let output = run_with_limit(
        run_with_config(&world, &config, &token, "sh")
            .env("PROBE", probe())
            .env("SHARED", kv2_reference(&path, "password"))
            .env("ENVPROXY_TIMEOUT_MS", "30000")
            .args(["-c", &script]),
        Duration::from_secs(120),
    );

    let stderr = stderr_of(&output);
    let expected = format!("SHARED={secret}");
    let resolved = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| *line == expected)
        .count();
    assert_eq!(resolved, PROCESSES, "{stderr}");
    assert_eq!(
        vault.reads(&vault_path),
        1,
        "Vault reads for {PROCESSES} processes"
    );
    assert_no_secrets("stderr", &stderr, &[&secret, &token]);
}

/// Drives `probe serve`: each request is a variable name, each reply a value and the
/// milliseconds `getenv` took.
struct Serve {
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
    child: Child,
}

impl Serve {
    fn start(mut command: Command) -> Serve {
        let mut child = command
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start probe serve");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Serve {
            stdin,
            replies,
            child,
        }
    }

    /// Returns the value of `name` and how long `getenv` took, in milliseconds.
    fn get(&mut self, name: &str) -> (String, u64) {
        writeln!(self.stdin, "{name}").expect("write to probe serve");
        self.stdin.flush().expect("flush probe serve's stdin");
        let value_line = self.replies.recv_timeout(LIMIT).expect("value line");
        let ms_line = self.replies.recv_timeout(LIMIT).expect("ms line");
        let value = value_line
            .strip_prefix(&format!("{name}="))
            .unwrap_or_else(|| panic!("unexpected line {value_line:?}"))
            .to_string();
        let ms = ms_line
            .strip_prefix("ms=")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {ms_line:?}"));
        (value, ms)
    }

    /// Polls `name` every 100 ms until it reads `expected` or `limit` passes, and returns the
    /// time that took, or `None`.
    fn wait_for(&mut self, name: &str, expected: &str, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.get(name).0 == expected {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Ends the program and returns its stderr, which contains `envproxy run`'s as well.
    fn finish(self) -> String {
        drop(self.stdin);
        let output = self.child.wait_with_output().expect("wait for probe serve");
        let stderr = stderr_of(&output);
        assert!(output.status.success(), "{stderr}");
        stderr
    }
}

#[test]
fn vault_outage_serves_cached_and_recovers() {
    // Long enough that the agent's cache entry expires many times over.
    const OUTAGE: Duration = Duration::from_secs(30);
    const CHECK_INTERVAL: Duration = Duration::from_secs(1);
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let (cached_path, new_path) = (unique_path("cached"), unique_path("new"));
    let (old, rotated, fresh) = (random_secret(), random_secret(), random_secret());
    vault.put_kv2(&cached_path, json!({ "password": old }));
    vault.put_kv2(&new_path, json!({ "password": fresh }));
    let config = AgentConfig::vault(&vault.url())
        .set("cache_ttl", &format!("{AGENT_CACHE_TTL_SECS}s"))
        .set("max_stale", "1h")
        .write(&world, "agent.toml");
    let new_reference = kv2_reference(&new_path, "password");

    let mut command = run_with_config(&world, &config, &token, probe());
    command
        .env("ENVPROXY_CACHE_TTL", LIBRARY_CACHE_TTL_SECS.to_string())
        .env("CACHED", kv2_reference(&cached_path, "password"))
        .env("UNCACHED", &new_reference);
    let mut probe = Serve::start(command);
    assert_eq!(probe.get("CACHED").0, old, "before the outage");

    vault.stop_listening();
    // A write during the outage shows only once Vault is back, which proves recovery.
    vault.put_kv2(&cached_path, json!({ "password": rotated }));
    let outage_started = Instant::now();
    let (value, ms) = probe.get("UNCACHED");
    assert_eq!(value, new_reference, "a new path during the outage");
    assert!(ms < 1000, "a new path took {ms} ms to fail with Vault down");
    while outage_started.elapsed() < OUTAGE {
        let elapsed = outage_started.elapsed();
        assert_eq!(
            probe.get("CACHED").0,
            old,
            "cached value {elapsed:?} into the outage"
        );
        std::thread::sleep(CHECK_INTERVAL);
    }

    vault.start_listening();
    // The agent reads its stale entry again on the next request. The library sends a request
    // again after its own TTL, or one second after the failure for the new path.
    let bound = Duration::from_secs(AGENT_CACHE_TTL_SECS + LIBRARY_CACHE_TTL_SECS + 2);
    let cached_after = probe.wait_for("CACHED", &rotated, Duration::from_secs(15));
    let new_after = probe.wait_for("UNCACHED", &fresh, Duration::from_secs(15));
    let stderr = probe.finish();
    let cached_after = cached_after.expect("the rotated value never appeared after the outage");
    let new_after = new_after.expect("the new path never resolved after the outage");
    assert!(
        cached_after <= bound,
        "rotated value after {cached_after:?}"
    );
    assert!(new_after <= bound, "new path resolved after {new_after:?}");

    let line = error_line(&stderr, "UNCACHED")
        .unwrap_or_else(|| panic!("no error line for the new path: {stderr}"));
    // A request on a fresh connection is refused. One on a kept-alive connection that the
    // server closed when it stopped listening fails as the connection closes instead.
    let lower = line.to_lowercase();
    assert!(
        lower.contains("refused") || lower.contains("cannot reach"),
        "the reason does not say that Vault cannot be reached: {line}"
    );
    assert!(error_line(&stderr, "CACHED").is_none(), "{stderr}");
    assert_no_secrets("stderr", &stderr, &[&old, &rotated, &fresh, &token]);
}

/// A line of the dynamic credentials program: when it started reading, and what it read.
struct Tick {
    started_unix: f64,
    user: String,
    password: String,
}

/// Records the lease table every 100 ms while `running` is set.
fn record_leases(vault: &Vault, running: &AtomicBool) -> Vec<LeaseInfo> {
    let mut seen: Vec<LeaseInfo> = Vec::new();
    while running.load(Ordering::Relaxed) {
        for lease in vault.server().live_leases() {
            match seen.iter_mut().find(|l| l.lease_id == lease.lease_id) {
                Some(known) => *known = lease,
                None => seen.push(lease),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen.sort_by_key(|lease| lease.issue_time);
    seen
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64()
}

#[test]
fn dynamic_credentials_renewed_then_rotated() {
    const LEASE_TTL: Duration = Duration::from_secs(2);
    const LEASE_MAX_TTL: Duration = Duration::from_secs(6);
    // Slack for scheduling between the program's clock reading and the agent's response. The
    // server and the program read the same wall clock.
    const CLOCK_SLACK: f64 = 0.2;
    // The program's pause between two lines, in seconds.
    const TICK_INTERVAL: f64 = 0.1;
    // The longest time from the lease's end to the first line with new credentials: one pause
    // plus room for a slow Python loop on a busy machine.
    const ROTATION_SLACK: f64 = TICK_INTERVAL + 0.9;
    require("python3");
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let role = format!("e2e-{}", &random_secret()[..8]);
    vault
        .server()
        .root()
        .add_database_role(
            DATABASE_MOUNT,
            &role,
            DatabaseRole::new(LEASE_TTL, LEASE_MAX_TTL),
        )
        .expect("add a database role");
    let config = AgentConfig::vault(&vault.url()).write(&world, "agent.toml");
    let creds = format!("vault:{DATABASE_MOUNT}/creds/{role}");
    // The clock is read before both variables, so each value was served at or after it.
    let script = r#"
import os, sys, time
end = time.time() + float(sys.argv[1])
while time.time() < end:
    started = time.time()
    user = os.environ["DB_USER"]
    password = os.environ["DB_PASSWORD"]
    print(f"{started:.3f} {user} {password}", flush=True)
    time.sleep(float(sys.argv[2]))
"#;
    let running = AtomicBool::new(true);
    let (output, leases) = std::thread::scope(|scope| {
        let recorder = scope.spawn(|| record_leases(&vault, &running));
        let output = run_with_limit(
            run_with_config(&world, &config, &token, "python3")
                .env("ENVPROXY_CACHE_TTL", "0")
                .env("DB_USER", format!("{creds}#username"))
                .env("DB_PASSWORD", format!("{creds}#password"))
                .args(["-c", script, "9", &TICK_INTERVAL.to_string()]),
            LIMIT,
        );
        running.store(false, Ordering::Relaxed);
        (output, recorder.join().expect("lease recorder"))
    });
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    let ticks: Vec<Tick> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let mut fields = line.split(' ');
            let mut next = || {
                fields
                    .next()
                    .unwrap_or_else(|| panic!("short line {line:?}"))
            };
            Tick {
                started_unix: next().parse().expect("a time"),
                user: next().to_string(),
                password: next().to_string(),
            }
        })
        .collect();
    assert!(ticks.len() > 20, "too few lines: {stderr}");
    for tick in &ticks {
        assert!(!tick.user.starts_with("vault:"), "unresolved: {stderr}");
        assert!(!tick.password.starts_with("vault:"), "unresolved: {stderr}");
    }

    // Renewed: the first lease's credentials outlive its first TTL.
    let first_lease = leases.first().expect("no lease was recorded");
    let first_issued = unix_seconds(first_lease.issue_time);
    let (first_user, first_password) = (&ticks[0].user, &ticks[0].password);
    let first_lease_ticks: Vec<&Tick> = ticks.iter().filter(|t| &t.user == first_user).collect();
    let last_first = first_lease_ticks
        .last()
        .expect("at least one tick")
        .started_unix;
    assert!(
        last_first >= first_issued + LEASE_TTL.as_secs_f64() + 0.5,
        "the first credentials were last seen {:.2} s after the lease was issued",
        last_first - first_issued
    );
    assert!(
        vault.writes("sys/leases/renew") >= 1,
        "the agent never renewed the lease"
    );
    assert!(
        leases
            .iter()
            .any(|l| l.lease_id == first_lease.lease_id && l.last_renewal_time.is_some()),
        "the first lease was never renewed"
    );

    // Never served past the lease's end, and rotated then: new credentials, new lease. The
    // end is the expiry after the last renewal, which Vault caps below `max_ttl` in whole
    // seconds, so it can come before `issue_time + max_ttl`.
    let lease_end = unix_seconds(first_lease.expire_time);
    assert!(
        lease_end <= first_issued + LEASE_MAX_TTL.as_secs_f64(),
        "the first lease outlived its max_ttl"
    );
    assert!(
        last_first <= lease_end + CLOCK_SLACK,
        "the first credentials were served {:.2} s after their lease ended",
        last_first - lease_end
    );
    let rotated = ticks
        .iter()
        .find(|t| &t.user != first_user)
        .expect("the credentials were never rotated");
    assert_ne!(
        &rotated.password, first_password,
        "the password was not rotated"
    );
    assert!(
        rotated.started_unix <= lease_end + ROTATION_SLACK,
        "new credentials appeared {:.2} s after the first lease ended",
        rotated.started_unix - lease_end
    );
    assert!(leases.len() >= 2, "no second lease was issued");

    // Both keys come from one read: one Vault read per lease, and one password per username
    // except where a rotation fell between the two reads of one line.
    let mut users: Vec<&str> = ticks.iter().map(|t| t.user.as_str()).collect();
    users.dedup();
    let rotations = users.len() - 1;
    users.sort_unstable();
    users.dedup();
    let creds_reads = vault.reads(&format!("{DATABASE_MOUNT}/creds/{role}"));
    assert!(
        creds_reads <= users.len() as u64 + 1,
        "{creds_reads} credential reads for {} usernames: the keys were read apart",
        users.len()
    );
    let mismatched = ticks
        .iter()
        .filter(|tick| {
            let mut passwords: Vec<&str> = ticks
                .iter()
                .filter(|other| other.user == tick.user)
                .map(|other| other.password.as_str())
                .collect();
            passwords.sort_unstable();
            // The password seen most often with this username.
            let usual = passwords
                .chunk_by(|a, b| a == b)
                .max_by_key(|run| run.len())
                .map(|run| run[0]);
            usual != Some(tick.password.as_str())
        })
        .count();
    assert!(
        mismatched <= rotations,
        "{mismatched} lines paired a username with another lease's password"
    );
    let secrets: Vec<&str> = ticks.iter().map(|t| t.password.as_str()).collect();
    assert_no_secrets("stderr", &stderr, &secrets);
    assert_no_secrets("stderr", &stderr, &[&token]);
}

#[test]
fn short_token_renewed_past_first_ttl() {
    const TOKEN_TTL: Duration = Duration::from_secs(3);
    let vault = Vault::start();
    let world = World::new();
    let token_created = Instant::now();
    let token = vault.reader_token(TokenSpec::default().ttl(TOKEN_TTL).renewable(true));
    let (first_path, second_path) = (unique_path("first"), unique_path("second"));
    let (first, second) = (random_secret(), random_secret());
    vault.put_kv2(&first_path, json!({ "password": first }));
    vault.put_kv2(&second_path, json!({ "password": second }));
    let config = AgentConfig::vault(&vault.url())
        .set("cache_ttl", &format!("{AGENT_CACHE_TTL_SECS}s"))
        .write(&world, "agent.toml");

    let mut command = run_with_config(&world, &config, &token, probe());
    command
        .env("ENVPROXY_CACHE_TTL", LIBRARY_CACHE_TTL_SECS.to_string())
        .env("FIRST", kv2_reference(&first_path, "password"))
        .env("SECOND", kv2_reference(&second_path, "password"));
    let mut probe = Serve::start(command);
    assert_eq!(probe.get("FIRST").0, first, "with a fresh token");

    let past_first_ttl = TOKEN_TTL + Duration::from_secs(2);
    std::thread::sleep(past_first_ttl.saturating_sub(token_created.elapsed()));
    assert!(
        vault.server().token_is_live(&token),
        "the token expired after its first TTL"
    );
    assert_eq!(
        probe.get("SECOND").0,
        second,
        "a new path past the first TTL"
    );
    assert_eq!(probe.get("FIRST").0, first, "a re-read past the first TTL");
    let stderr = probe.finish();
    assert!(
        vault.writes("auth/token/renew-self") >= 1,
        "the agent never renewed its token"
    );
    assert_no_secrets("stderr", &stderr, &[&first, &second, &token]);
}

/// One error a Vault read can end in, as the program and `envproxy get` must report it.
struct ErrorCase {
    variable: &'static str,
    reference: String,
    /// The Vault path the messages must name.
    vault_path: String,
    /// Words of which the messages must contain at least one, compared in lower case.
    reason: &'static [&'static str],
}

/// Checks the program's stderr line and `envproxy get`'s message for each case.
fn check_error_cases(
    world: &World,
    agent: &VaultAgent,
    cases: &[ErrorCase],
    secrets: &[&str],
) -> Vec<String> {
    let mut command = agent.run(world, probe());
    // The agent's Vault timeout, not the library's, must decide the timeout case.
    command.env("ENVPROXY_TIMEOUT_MS", "20000").arg("get");
    for case in cases {
        command
            .env(case.variable, &case.reference)
            .arg(case.variable);
    }
    let output = run_with_limit(&mut command, LIMIT);
    let program_stderr = stderr_of(&output);
    assert_no_secrets("the program's stderr", &program_stderr, secrets);
    let mut messages = Vec::new();

    for case in cases {
        let name = case.variable;
        assert_eq!(
            value_of(&output.stdout, name).as_deref(),
            Some(case.reference.as_str()),
            "{name}: the program did not get the reference unchanged"
        );
        let line = error_line(&program_stderr, name)
            .unwrap_or_else(|| panic!("{name}: no stderr line from the library: {program_stderr}"));
        let lower = line.to_lowercase();
        assert!(
            case.reason.iter().any(|word| lower.contains(word)),
            "{name}: the program's line does not say {:?}: {line}",
            case.reason
        );

        let got = envproxy_get(world, &agent.socket, &case.reference);
        let message = stderr_of(&got);
        assert_eq!(
            got.status.code(),
            Some(2),
            "{name}: envproxy get: {message}"
        );
        assert!(
            got.stdout.is_empty(),
            "{name}: envproxy get printed a value"
        );
        let lower = message.to_lowercase();
        assert!(
            case.reason.iter().any(|word| lower.contains(word)),
            "{name}: envproxy get does not say {:?}: {message}",
            case.reason
        );
        assert!(
            message.contains(&case.vault_path),
            "{name}: envproxy get does not name {}: {message}",
            case.vault_path
        );
        assert_no_secrets("envproxy get's message", &message, secrets);
        messages.push(message);
    }
    messages
}

#[test]
fn error_kinds_reach_program_and_get() {
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let secret = random_secret();
    let base = unique_path("errors");
    let other_key = format!("other_{}", &random_secret()[..8]);
    let root = vault.server().root();

    vault.put_kv2(
        &format!("{base}/keys"),
        json!({ "password": secret, other_key.clone(): secret }),
    );
    for name in ["deleted", "destroyed"] {
        vault.put_kv2(&format!("{base}/{name}"), json!({ "password": secret }));
        vault.put_kv2(&format!("{base}/{name}"), json!({ "password": secret }));
    }
    root.kv2_delete_versions(KV2_MOUNT, &format!("{base}/deleted"), &[1])
        .expect("delete version 1");
    root.kv2_destroy_versions(KV2_MOUNT, &format!("{base}/destroyed"), &[1])
        .expect("destroy version 1");
    // Outside `secret/data/e2e/`, which is all the token's policy allows.
    let private = format!("private/{}", &random_secret()[..8]);
    vault.put_kv2(&private, json!({ "password": secret }));
    vault.put_kv2(&format!("{base}/slow"), json!({ "password": secret }));
    vault.put_kv2(&format!("{base}/sealed"), json!({ "password": secret }));
    vault.server().inject_latency(
        &format!("{KV2_MOUNT}/data/{base}/slow"),
        Duration::from_secs(3),
    );
    let config = AgentConfig::vault(&vault.url())
        .set("timeout", "1s")
        .write(&world, "agent.toml");
    let agent = VaultAgent::start(&world, &config, &token);
    let secrets = [secret.as_str(), token.as_str()];

    let data_path = |path: &str| format!("{KV2_MOUNT}/data/{path}");
    let cases = [
        ErrorCase {
            variable: "UNKNOWN_MOUNT",
            reference: "vault:nosuchmount/data/app#password".to_string(),
            vault_path: "nosuchmount/data/app".to_string(),
            reason: &["mount"],
        },
        ErrorCase {
            variable: "DENIED",
            reference: kv2_reference(&private, "password"),
            vault_path: data_path(&private),
            reason: &["permission denied"],
        },
        ErrorCase {
            variable: "MISSING",
            reference: kv2_reference(&format!("{base}/missing"), "password"),
            vault_path: data_path(&format!("{base}/missing")),
            reason: &["not found", "no secret"],
        },
        ErrorCase {
            variable: "NO_KEY",
            reference: kv2_reference(&format!("{base}/keys"), "nokey"),
            vault_path: data_path(&format!("{base}/keys")),
            reason: &["nokey"],
        },
        ErrorCase {
            variable: "DELETED",
            reference: format!(
                "{}#1",
                kv2_reference(&format!("{base}/deleted"), "password")
            ),
            vault_path: data_path(&format!("{base}/deleted")),
            reason: &["deleted"],
        },
        ErrorCase {
            variable: "DESTROYED",
            reference: format!(
                "{}#1",
                kv2_reference(&format!("{base}/destroyed"), "password")
            ),
            vault_path: data_path(&format!("{base}/destroyed")),
            reason: &["destroyed"],
        },
        ErrorCase {
            variable: "TIMEOUT",
            reference: kv2_reference(&format!("{base}/slow"), "password"),
            vault_path: data_path(&format!("{base}/slow")),
            reason: &["timed out", "timeout", "did not respond"],
        },
    ];
    let messages = check_error_cases(&world, &agent, &cases, &secrets);
    let no_key = &messages[3];
    assert!(
        !no_key.contains(&other_key),
        "the key-not-found message lists the secret's other keys: {no_key}"
    );

    // Sealing stops every request, so it comes last, on a path not read before: a cached
    // value would rightly be served stale.
    vault.server().seal();
    let sealed = [ErrorCase {
        variable: "SEALED",
        reference: kv2_reference(&format!("{base}/sealed"), "password"),
        vault_path: data_path(&format!("{base}/sealed")),
        reason: &["sealed"],
    }];
    check_error_cases(&world, &agent, &sealed, &secrets);
    assert_no_secrets("the agent's log", &agent.log_text(), &secrets);
}

#[test]
fn deleted_version_not_masked_by_cache() {
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let path = unique_path("masked");
    let secret = random_secret();
    vault.put_kv2(&path, json!({ "password": secret }));
    let config = AgentConfig::vault(&vault.url())
        .set("cache_ttl", &format!("{AGENT_CACHE_TTL_SECS}s"))
        .set("max_stale", "1h")
        .write(&world, "agent.toml");
    let reference = format!("{}#1", kv2_reference(&path, "password"));

    let mut command = run_with_config(&world, &config, &token, probe());
    command
        .env("ENVPROXY_CACHE_TTL", LIBRARY_CACHE_TTL_SECS.to_string())
        .env("PINNED", &reference);
    let mut probe = Serve::start(command);
    assert_eq!(probe.get("PINNED").0, secret, "before the delete");

    vault
        .server()
        .root()
        .kv2_delete_versions(KV2_MOUNT, &path, &[1])
        .expect("delete version 1");
    // Both caches expire, so the next request reaches Vault, which returns the deletion. A
    // stale value may stand in only while Vault is unavailable.
    let expired = Duration::from_secs(AGENT_CACHE_TTL_SECS + LIBRARY_CACHE_TTL_SECS + 1);
    std::thread::sleep(expired);
    assert_eq!(probe.get("PINNED").0, reference, "after the delete");
    let stderr = probe.finish();
    let line = error_line(&stderr, "PINNED")
        .unwrap_or_else(|| panic!("no error line after the delete: {stderr}"));
    assert!(line.contains("deleted"), "{line}");
    assert_no_secrets("stderr", &stderr, &[&secret, &token]);
}

#[test]
fn tls_with_server_ca_and_unrelated_ca() {
    let vault = Vault::start_with(ServerOptions::default().with_tls());
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let path = unique_path("tls");
    let secret = random_secret();
    vault.put_kv2(&path, json!({ "password": secret }));
    let reference = kv2_reference(&path, "password");
    assert!(vault.url().starts_with("https://"), "{}", vault.url());

    let server_ca = vault.write_ca_cert(&world);
    let trusted = AgentConfig::vault(&vault.url())
        .set_path("ca_cert", &server_ca)
        .write(&world, "trusted.toml");
    let output = run_with_limit(
        run_with_config(&world, &trusted, &token, probe())
            .env("TLS_SECRET", &reference)
            .args(["get", "TLS_SECRET"]),
        LIMIT,
    );
    let stderr = stderr_of(&output);
    assert_eq!(
        value_of(&output.stdout, "TLS_SECRET").as_deref(),
        Some(&*secret),
        "with the server's CA: {stderr}"
    );
    assert_no_secrets("stderr", &stderr, &[&secret, &token]);

    let unrelated_ca = world.path("unrelated-ca.pem");
    let pem = envproxy_vault_test_server::unrelated_ca_pem().expect("generate a CA");
    std::fs::write(&unrelated_ca, pem).expect("write the unrelated CA");
    let untrusted = AgentConfig::vault(&vault.url())
        .set_path("ca_cert", &unrelated_ca)
        .write(&world, "untrusted.toml");
    let agent = VaultAgent::start(&world, &untrusted, &token);
    let cases = [ErrorCase {
        variable: "TLS_SECRET",
        reference: reference.clone(),
        vault_path: format!("{KV2_MOUNT}/data/{path}"),
        reason: &["tls", "certificate"],
    }];
    let messages = check_error_cases(&world, &agent, &cases, &[&secret, &token]);
    assert!(
        messages[0].contains("ca_cert") || messages[0].contains("VAULT_CACERT"),
        "the TLS error does not say how to trust the server: {}",
        messages[0]
    );
    assert_no_secrets("the agent's log", &agent.log_text(), &[&secret, &token]);
}

#[test]
fn environment_variables_start_vault_agent() {
    let vault = Vault::start_with(ServerOptions::default().with_tls());
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let path = unique_path("env");
    let secret = random_secret();
    vault.put_kv2(&path, json!({ "password": secret }));
    let server_ca = vault.write_ca_cert(&world);
    let reference = kv2_reference(&path, "password");

    let output = run_with_limit(
        run_with_environment(&world, &vault.url(), &token, probe())
            .env("VAULT_CACERT", &server_ca)
            .env("FROM_ENV", &reference)
            .args(["get", "FROM_ENV"]),
        LIMIT,
    );
    let stderr = stderr_of(&output);
    assert_eq!(
        value_of(&output.stdout, "FROM_ENV").as_deref(),
        Some(&*secret),
        "with VAULT_ADDR, VAULT_TOKEN and VAULT_CACERT: {stderr}"
    );
    assert_no_secrets("stderr", &stderr, &[&secret, &token]);

    // Without VAULT_TOKEN the token comes from ~/.vault-token.
    std::fs::write(world.path(".vault-token"), format!("{token}\n")).expect("write the token");
    let output = run_with_limit(
        run_with_environment(&world, &vault.url(), &token, probe())
            .env_remove("VAULT_TOKEN")
            .env("VAULT_CACERT", &server_ca)
            .env("FROM_ENV", &reference)
            .args(["get", "FROM_ENV"]),
        LIMIT,
    );
    let stderr = stderr_of(&output);
    assert_eq!(
        value_of(&output.stdout, "FROM_ENV").as_deref(),
        Some(&*secret),
        "with the token in ~/.vault-token: {stderr}"
    );
    assert_no_secrets("stderr", &stderr, &[&secret, &token]);
}

#[test]
fn secrets_file_and_vault_together() {
    let vault = Vault::start();
    let world = World::new();
    let token = vault.reader_token(TokenSpec::default());
    let path = unique_path("both");
    let (from_file, from_vault) = (random_secret(), random_secret());
    vault.put_kv2(&path, json!({ "password": from_vault }));
    let secrets = world.write_secrets(&[("FILE_KEY", &from_file)]);
    let reference = kv2_reference(&path, "password");

    // A config file with `[backend] type = "file"` and a `[vault]` table.
    let config = AgentConfig::vault(&vault.url())
        .with_secrets_file(&secrets)
        .write(&world, "agent.toml");
    let with_config = run_with_limit(
        run_with_config(&world, &config, &token, probe())
            .env("VAULT_KEY", &reference)
            .args(["get", "FILE_KEY", "VAULT_KEY"]),
        LIMIT,
    );
    // `--secrets FILE` with VAULT_ADDR and VAULT_TOKEN in the environment.
    let with_flag = run_with_limit(
        envproxy_run(
            &world,
            &["--secrets".as_ref(), secrets.as_os_str()],
            probe(),
        )
        .env("VAULT_ADDR", vault.url())
        .env("VAULT_TOKEN", &token)
        .env("VAULT_KEY", &reference)
        .args(["get", "FILE_KEY", "VAULT_KEY"]),
        LIMIT,
    );

    for (form, output) in [("--config", &with_config), ("--secrets", &with_flag)] {
        let stderr = stderr_of(output);
        assert_eq!(
            value_of(&output.stdout, "FILE_KEY").as_deref(),
            Some(&*from_file),
            "{form}: {stderr}"
        );
        assert_eq!(
            value_of(&output.stdout, "VAULT_KEY").as_deref(),
            Some(&*from_vault),
            "{form}: {stderr}"
        );
        assert_no_secrets(form, &stderr, &[&from_file, &from_vault, &token]);
    }
}

/// Python code that sends one request to the Vault at `VAULT_ADDR` with `VAULT_TOKEN` (and
/// `VAULT_NAMESPACE`, `VAULT_CACERT` when set): method and path as arguments, JSON body on
/// stdin. The token travels in the environment, never in the arguments.
const PYTHON_VAULT_REQUEST: &str = r#"
import os, ssl, sys, urllib.request
method, path = sys.argv[1], sys.argv[2]
body = sys.stdin.read().encode() or None
address = os.environ["VAULT_ADDR"].rstrip("/")
request = urllib.request.Request(f"{address}/v1/{path}", data=body, method=method)
request.add_header("X-Vault-Token", os.environ["VAULT_TOKEN"])
if body:
    request.add_header("Content-Type", "application/json")
if os.environ.get("VAULT_NAMESPACE"):
    request.add_header("X-Vault-Namespace", os.environ["VAULT_NAMESPACE"])
context = None
if address.startswith("https:"):
    context = ssl.create_default_context(cafile=os.environ.get("VAULT_CACERT") or None)
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    print(response.status)
"#;

/// Settings of the real Vault the last test uses, from the test's own environment.
const REAL_VAULT_VARIABLES: [&str; 4] = [
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_NAMESPACE",
    "VAULT_CACERT",
];

/// Sends one request to the real Vault through [`PYTHON_VAULT_REQUEST`].
fn real_vault_request(method: &str, path: &str, body: Option<&Value>) -> Result<(), String> {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON_VAULT_REQUEST, method, path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot start python3: {err}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    if let Some(body) = body {
        stdin
            .write_all(body.to_string().as_bytes())
            .map_err(|err| format!("cannot write the request body: {err}"))?;
    }
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|err| format!("python3 failed: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{method} {path} failed: {}", stderr_of(&output)))
    }
}

/// Deletes the test's secret and all its versions from the real Vault when dropped.
struct RealSecret {
    metadata_path: String,
}

impl Drop for RealSecret {
    fn drop(&mut self) {
        if let Err(err) = real_vault_request("DELETE", &self.metadata_path, None) {
            eprintln!(
                "cannot delete the test secret {}: {err}",
                self.metadata_path
            );
        }
    }
}

#[test]
fn real_vault_round_trip_when_configured() {
    let configured = |name| std::env::var(name).is_ok_and(|value| !value.is_empty());
    if !configured("VAULT_ADDR") || !configured("VAULT_TOKEN") {
        eprintln!(
            "real_vault_round_trip_when_configured did nothing: set VAULT_ADDR and VAULT_TOKEN \
             (for example from `vault server -dev` or `bao server -dev`) to write, read and \
             delete one KV v2 secret under secret/data/envproxy-e2e/ on that server"
        );
        return;
    }
    require("python3");
    let world = World::new();
    let path = format!("envproxy-e2e/{}", random_secret());
    let secret = random_secret();
    real_vault_request(
        "POST",
        &format!("{KV2_MOUNT}/data/{path}"),
        Some(&json!({ "data": { "password": secret } })),
    )
    .unwrap_or_else(|err| panic!("cannot write the test secret: {err}"));
    let _cleanup = RealSecret {
        metadata_path: format!("{KV2_MOUNT}/metadata/{path}"),
    };

    let mut command = envproxy_run(&world, &[], probe());
    for name in REAL_VAULT_VARIABLES {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    let output = run_with_limit(
        command
            .env("REAL_SECRET", kv2_reference(&path, "password"))
            .args(["get", "REAL_SECRET"]),
        LIMIT,
    );
    let stderr = stderr_of(&output);
    assert_eq!(
        value_of(&output.stdout, "REAL_SECRET").as_deref(),
        Some(&*secret),
        "{stderr}"
    );
    let token = std::env::var("VAULT_TOKEN").unwrap_or_default();
    assert_no_secrets("stderr", &stderr, &[&secret, &token]);
}
