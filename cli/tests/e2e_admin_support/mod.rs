//! Shared parts of the `envproxy admin` end-to-end tests: running the command against an admin
//! socket, and parsing its tables, JSON and YAML.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::e2e_support::{envproxy, run_with_limit};

/// Maximum run time of one `envproxy admin` command.
pub const ADMIN_LIMIT: Duration = Duration::from_secs(30);

/// `envproxy admin --socket SOCKET ARGS...` without any `ENVPROXY_*` variable of the test.
pub fn admin_command(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(envproxy());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ENVPROXY_") {
            command.env_remove(&key);
        }
    }
    command.arg("admin").arg("--socket").arg(socket).args(args);
    command
}

/// Runs `envproxy admin` to completion.
pub fn admin(socket: &Path, args: &[&str]) -> Output {
    run_with_limit(&mut admin_command(socket, args), ADMIN_LIMIT)
}

/// Runs `envproxy admin`, checks that it succeeded, and returns its stdout.
pub fn admin_ok(socket: &Path, args: &[&str]) -> String {
    let output = admin(socket, args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "envproxy admin {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("admin output is UTF-8")
}

/// Runs `envproxy admin ARGS -o json` and parses its output.
pub fn admin_json(socket: &Path, args: &[&str]) -> Value {
    let text = admin_ok(socket, &[args, &["-o", "json"]].concat());
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("invalid JSON ({err}):\n{text}"))
}

/// Runs `envproxy admin ARGS -o yaml` and parses its output.
pub fn admin_yaml(socket: &Path, args: &[&str]) -> Value {
    let text = admin_ok(socket, &[args, &["-o", "yaml"]].concat());
    yaml_serde::from_str(&text).unwrap_or_else(|err| panic!("invalid YAML ({err}):\n{text}"))
}

/// Starts `envproxy admin` with its stdout and stderr piped.
pub fn spawn_admin(socket: &Path, args: &[&str]) -> Child {
    admin_command(socket, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start envproxy admin")
}

/// Waits for `child` to exit within [`ADMIN_LIMIT`] and returns its output; kills it after.
pub fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + ADMIN_LIMIT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("collect output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("collect output");
    panic!(
        "envproxy admin did not finish within {ADMIN_LIMIT:?}; stdout: {} stderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until the agent at `socket` counts `watchers` open audit streams.
pub fn wait_for_audit_watchers(socket: &Path, watchers: u64) {
    let deadline = Instant::now() + ADMIN_LIMIT;
    loop {
        let status = admin_json(socket, &["status"]);
        if status["counters"]["audit_watchers"].as_u64() == Some(watchers) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never counted {watchers} audit watchers: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses an aligned table: the header line names the columns, and each column starts where
/// its name starts. Header names may contain single spaces; columns are two or more apart.
pub fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines().take_while(|line| !line.is_empty());
    let header = lines.next().expect("a table has a header line");
    let mut columns: Vec<(usize, String)> = Vec::new();
    let mut start = None;
    let bytes = header.as_bytes();
    for index in 0..=bytes.len() {
        // A space belongs to a gap unless it is a single space between two words.
        let space_at = |at: Option<usize>| at.and_then(|at| bytes.get(at)) == Some(&b' ');
        let gap = index == bytes.len()
            || (bytes[index] == b' '
                && (space_at(index.checked_sub(1))
                    || space_at(Some(index + 1))
                    || index + 1 == bytes.len()));
        match (start, gap) {
            (None, false) => start = Some(index),
            (Some(begin), true) => {
                columns.push((begin, header[begin..index].to_string()));
                start = None;
            }
            _ => {}
        }
    }
    lines
        .map(|line| {
            let mut row = BTreeMap::new();
            for (position, (begin, name)) in columns.iter().enumerate() {
                let end = columns
                    .get(position + 1)
                    .map_or(line.len(), |(next, _)| (*next).min(line.len()));
                let cell = line.get((*begin).min(line.len())..end).unwrap_or("");
                row.insert(name.clone(), cell.trim().to_string());
            }
            row
        })
        .collect()
}

/// Parses the `name:  value` lines at the start of `text`, up to the first empty line.
pub fn parse_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a `name: value` line");
            (name.to_string(), value.trim().to_string())
        })
        .collect()
}

/// Returns the text after the first empty line of `text`.
pub fn after_blank_line(text: &str) -> &str {
    text.split_once("\n\n").map_or("", |(_, rest)| rest)
}

/// Panics when any of `secrets` occurs in `output`, without printing the secret.
pub fn assert_free_of(output: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !output.contains(secret),
            "a secret value ({} bytes) appeared in the output",
            secret.len()
        );
    }
}
