//! The C client `envbench`: compiled at run time and started once per measurement.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::affinity;
use crate::interrupt;

/// Source of the C client, built into this executable so the benchmark needs no checkout.
const SOURCE: &str = include_str!("../c/envbench.c");

/// The compiled C client.
pub struct Harness {
    program: PathBuf,
}

/// The `key=value` lines that one run of the C client printed.
#[derive(Debug)]
pub struct Output {
    values: HashMap<String, String>,
}

impl Harness {
    /// Compiles the C client with `cc -O2` into `dir`.
    pub fn compile(dir: &Path) -> anyhow::Result<Harness> {
        let source = dir.join("envbench.c");
        let program = dir.join("envbench");
        std::fs::write(&source, SOURCE)
            .with_context(|| format!("cannot write {}", source.display()))?;
        let output = Command::new("cc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&program)
            .arg(&source)
            .output()
            .context("cannot run `cc`; install a C compiler (for example gcc)")?;
        if !output.status.success() {
            bail!(
                "cc -O2 {} failed with {}:\n{}",
                source.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Harness { program })
    }

    /// Runs the client with `args` in exactly `environment` and returns what it printed.
    pub fn run(&self, args: &[&str], environment: &[(String, String)]) -> anyhow::Result<Output> {
        self.run_on(args, environment, None)
    }

    /// Runs the client as [`Harness::run`] does, on one CPU if `cpu` is set.
    pub fn run_on(
        &self,
        args: &[&str],
        environment: &[(String, String)],
        cpu: Option<usize>,
    ) -> anyhow::Result<Output> {
        self.run_configured(args, environment, |command| {
            if let Some(cpu) = cpu {
                affinity::pin(command, cpu);
            }
            Ok(())
        })
    }

    /// Runs the client as [`Harness::run`] does, after `configure` has adjusted its command,
    /// for example to start it inside a pod's cgroup.
    pub fn run_configured(
        &self,
        args: &[&str],
        environment: &[(String, String)],
        configure: impl FnOnce(&mut Command) -> anyhow::Result<()>,
    ) -> anyhow::Result<Output> {
        interrupt::check()?;
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .env_clear()
            .envs(environment.iter().map(|(name, value)| (name, value)));
        configure(&mut command)?;
        let output = command
            .output()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        interrupt::check()?;
        let preload = environment
            .iter()
            .find(|(name, _)| name == "LD_PRELOAD")
            .map_or("", |(_, value)| value.as_str());
        if !output.status.success() {
            // The arguments are left out: they contain the expected secret values.
            bail!(
                "envbench {} (LD_PRELOAD={preload:?}) failed with {}:\n{}",
                args.first().copied().unwrap_or_default(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        Ok(Output::parse(&String::from_utf8_lossy(&output.stdout)))
    }
}

impl Output {
    fn parse(text: &str) -> Output {
        let values = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Output { values }
    }

    /// Returns the number printed as `key=...`.
    pub fn number(&self, key: &str) -> anyhow::Result<f64> {
        let Some(text) = self.values.get(key) else {
            bail!(
                "envbench printed no {key}= line; its output was {:?}",
                self.values
            );
        };
        text.parse()
            .with_context(|| format!("envbench printed an invalid number for {key}: {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::testing::EchoServer;

    fn variables(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn loop_mode_reports_cost_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::compile(dir.path()).unwrap();
        let environment = variables(&[("A", "1"), ("B", "two"), ("C", "3")]);
        let output = harness
            .run(&["loop", "B", "two", "1000"], &environment)
            .unwrap();
        assert_eq!(output.number("calls").unwrap(), 1000.0);
        assert_eq!(output.number("position").unwrap(), 2.0);
        assert_eq!(output.number("variables").unwrap(), 3.0);
        assert!(output.number("ns_per_call").unwrap() > 0.0);
    }

    #[test]
    fn loop_mode_rejects_unexpected_value() {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::compile(dir.path()).unwrap();
        let environment = variables(&[("B", "envproxy:B")]);
        let error = harness
            .run(&["loop", "B", "s3cr3t-value", "10"], &environment)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("the reference itself, unresolved"),
            "{error}"
        );
        assert!(!error.contains("s3cr3t-value"), "{error}");
    }

    #[test]
    fn round_trip_mode_times_both_paths() {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::compile(dir.path()).unwrap();
        let server = EchoServer::start(&dir.path().join("echo.sock"), 7);
        let socket = server.socket().display().to_string();
        let environment = variables(&[("DB", "envproxy:DB")]);
        let output = harness
            .run(
                &["round-trip", &socket, "DB", "envproxy:DB", "200"],
                &environment,
            )
            .unwrap();
        // [2][0 2]DB[0 11]envproxy:DB
        assert_eq!(output.number("request_bytes").unwrap(), 18.0);
        assert_eq!(output.number("reply_payload_bytes").unwrap(), 7.0);
        assert_eq!(output.number("count").unwrap(), 200.0);
        let p50 = output.number("echo_p50_ns").unwrap();
        let p99 = output.number("echo_p99_ns").unwrap();
        assert!(p50 > 0.0);
        assert!(p99 >= p50);
        assert!(output.number("getenv_p50_ns").unwrap() > 0.0);
    }

    #[test]
    fn paired_modes_time_both_servers() {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::compile(dir.path()).unwrap();
        let with = EchoServer::start(&dir.path().join("with.sock"), 5);
        let baseline = EchoServer::start(&dir.path().join("baseline.sock"), 5);
        let with_socket = with.socket().display().to_string();
        let baseline_socket = baseline.socket().display().to_string();
        let environment = variables(&[("DB", "vault:secret/data/db#password")]);
        for mode in ["first-request", "later-requests"] {
            let output = harness
                .run(
                    &[mode, &with_socket, &baseline_socket, "DB", "eeeee", "50"],
                    &environment,
                )
                .unwrap();
            assert_eq!(output.number("count").unwrap(), 50.0, "{mode}");
            // [2][0 2]DB[0 29]vault:secret/data/db#password
            assert_eq!(output.number("request_bytes").unwrap(), 36.0, "{mode}");
            for side in ["with", "baseline"] {
                let p50 = output.number(&format!("{side}_p50_ns")).unwrap();
                let p99 = output.number(&format!("{side}_p99_ns")).unwrap();
                assert!(p50 > 0.0, "{mode} {side}");
                assert!(p99 >= p50, "{mode} {side}");
            }
        }
    }

    #[test]
    fn paired_modes_reject_unexpected_payload() {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::compile(dir.path()).unwrap();
        let with = EchoServer::start(&dir.path().join("with.sock"), 5);
        let baseline = EchoServer::start(&dir.path().join("baseline.sock"), 6);
        let with_socket = with.socket().display().to_string();
        let baseline_socket = baseline.socket().display().to_string();
        let environment = variables(&[("DB", "envproxy:DB")]);
        for mode in ["first-request", "later-requests"] {
            let error = harness
                .run(
                    &[mode, &with_socket, &baseline_socket, "DB", "eeeee", "10"],
                    &environment,
                )
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("6 bytes that differ from the expected 5 bytes"),
                "{mode}: {error}"
            );
        }
    }

    #[test]
    fn get_mode_checks_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::compile(dir.path()).unwrap();
        let environment = variables(&[("A", "1")]);
        let output = harness.run(&["get", "A", "1"], &environment).unwrap();
        assert_eq!(output.number("resolved").unwrap(), 1.0);
        let error = harness
            .run(&["get", "A", "2"], &environment)
            .unwrap_err()
            .to_string();
        assert!(error.contains("getenv(A) returned 1 bytes"), "{error}");
    }

    #[test]
    fn memory_mode_reports_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::compile(dir.path()).unwrap();
        let environment = variables(&[("A", "1"), ("B", "2")]);
        let output = harness
            .run(&["memory", "10000", "2", "A=1", "B=2"], &environment)
            .unwrap();
        assert_eq!(output.number("calls").unwrap(), 10000.0);
        assert_eq!(output.number("references").unwrap(), 2.0);
        let resident = output.number("resident_before_bytes").unwrap();
        let anonymous = output.number("anonymous_before_bytes").unwrap();
        assert!(anonymous > 0.0);
        assert!(resident >= anonymous);
        assert!(output.number("anonymous_after_bytes").unwrap() > 0.0);
    }

    #[test]
    fn invalid_count_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::compile(dir.path()).unwrap();
        let error = harness
            .run(&["loop", "A", "1", "many"], &variables(&[("A", "1")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid count many"), "{error}");
    }

    #[test]
    fn output_parses_key_value_lines() {
        let output = Output::parse("calls=10\nns_per_call=4.5\nnot a pair\n");
        assert_eq!(output.number("calls").unwrap(), 10.0);
        assert_eq!(output.number("ns_per_call").unwrap(), 4.5);
    }

    #[test]
    fn output_reports_missing_key() {
        let output = Output::parse("calls=10\n");
        let error = output.number("p50_ns").unwrap_err().to_string();
        assert!(error.contains("no p50_ns= line"), "{error}");
    }

    #[test]
    fn output_reports_invalid_number() {
        let output = Output::parse("p50_ns=fast\n");
        assert!(output.number("p50_ns").is_err());
    }
}
