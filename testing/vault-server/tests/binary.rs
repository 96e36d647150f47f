//! The `envproxy-vault-test-server` binary as a separate process: seed file, ready line on
//! stdout, and a clean exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::install_crypto_provider;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const SEED: &str = r#"{
  "options": { "kv1_lease_duration": 600 },
  "namespaces": {
    "": {
      "kv2": { "secret": { "myapp/config": { "db_url": "postgres://seeded" } } },
      "kv1": { "kv": { "legacy": { "password": "p" } } },
      "database_roles": { "database": { "readonly": { "default_ttl": 60, "max_ttl": 300 } } },
      "policies": { "app": { "paths": { "secret/data/myapp/*": ["read"] } } }
    },
    "team-a": { "kv2": { "secret": { "x": { "owner": "team-a" } } } }
  },
  "tokens": [ { "policies": ["app"], "ttl": 3600 } ]
}"#;

/// Kills the server process if a failed assertion leaves it running.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn binary_serves_seed_until_sigterm() {
    install_crypto_provider();
    let mut seed = tempfile::NamedTempFile::new().unwrap();
    seed.write_all(SEED.as_bytes()).unwrap();
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_envproxy-vault-test-server"))
            .args(["--config", seed.path().to_str().unwrap(), "--tls"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: Value = serde_json::from_str(&line).unwrap();
    let url = ready["url"].as_str().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert_eq!(
        ready["addr"].as_str().unwrap(),
        url.trim_start_matches("https://")
    );
    let root = ready["root_token"].as_str().unwrap();
    let app_token = ready["tokens"][0]["token"].as_str().unwrap();

    let ca = reqwest::Certificate::from_pem(ready["ca_cert_pem"].as_str().unwrap().as_bytes());
    let client = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([ca.unwrap()])
        .build()
        .unwrap();
    let get = |path: &str, token: &str| {
        client
            .get(format!("{url}/v1/{path}"))
            .header("X-Vault-Token", token)
            .send()
    };

    let secret: Value = get("secret/data/myapp/config", app_token)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        secret["data"]["data"],
        json!({ "db_url": "postgres://seeded" })
    );
    assert_eq!(get("kv/legacy", app_token).await.unwrap().status(), 403);
    let legacy: Value = get("kv/legacy", root).await.unwrap().json().await.unwrap();
    assert_eq!(legacy["lease_duration"], 600);
    let creds: Value = get("database/creds/readonly", root)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(creds["lease_duration"], 60);
    let team = client
        .get(format!("{url}/v1/secret/data/x"))
        .header("X-Vault-Token", root)
        .header("X-Vault-Namespace", "team-a")
        .send()
        .await
        .unwrap();
    assert_eq!(
        team.json::<Value>().await.unwrap()["data"]["data"]["owner"],
        "team-a"
    );

    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server exits within 10 s of SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn binary_rejects_unknown_seed_fields() {
    let mut seed = tempfile::NamedTempFile::new().unwrap();
    seed.write_all(br#"{ "secrets": {} }"#).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_envproxy-vault-test-server"))
        .args(["--config", seed.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid seed file"), "{stderr}");
    assert!(stderr.contains("secrets"), "{stderr}");
}

#[test]
fn help_shows_valid_seed_example() {
    let output = Command::new(env!("CARGO_BIN_EXE_envproxy-vault-test-server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("Seed file (--config)"), "{help}");
    // The example runs from the first line that is only `{` to the next `}` at the same
    // indentation.
    let lines: Vec<&str> = help.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.trim() == "{")
        .unwrap_or_else(|| panic!("no seed example in the help: {help}"));
    let closing = lines[start].replace('{', "}");
    let end = start
        + lines[start..]
            .iter()
            .position(|line| *line == closing)
            .unwrap_or_else(|| panic!("the seed example does not end: {help}"));
    let example = lines[start..=end].join("\n");
    let seed: envproxy_vault_test_server::SeedFile = serde_json::from_str(&example)
        .unwrap_or_else(|err| panic!("the seed example is invalid: {err}\n{example}"));
    assert!(seed.options.tls);
    assert_eq!(seed.tokens.len(), 1);
    assert!(seed.namespaces[""].kv2.contains_key("secret"));
}
