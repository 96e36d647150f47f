//! Benchmarks 6 and 16: whole-process wall time of an interpreter that does nothing, under
//! `envproxy run` and without it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::fixture;
use crate::interrupt;
use crate::report::{Figure, Row, Target, Unit};
use crate::suite::Suite;

const PYTHON: &str = "python3";
const PYTHON_ARGS: [&str; 2] = ["-c", "pass"];

/// Runs plain `python3 -c pass`, the same under `envproxy run --socket` (the running agent) and
/// under `envproxy run --secrets` (an agent embedded in the CLI), in rotating order.
///
/// All three get the five references in their environment, as an application would. Only the
/// `--socket` form has a target: the embedded form also starts and stops an agent, which is
/// reported for information.
pub fn python(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let socket = suite.agent_socket()?.to_path_buf();
    let cli = &suite.binaries.cli;
    let secrets = suite.workspace.secrets_file();
    let python = python_executable()?;
    tracing::info!(python = %python.display(), "timing python3 -c pass");

    let plain = || {
        let mut command = Command::new(&python);
        command.args(PYTHON_ARGS);
        command
    };
    let with_socket = || {
        let mut command = Command::new(cli);
        command
            .args(["run", "--socket"])
            .arg(&socket)
            .arg("--")
            .arg(&python)
            .args(PYTHON_ARGS);
        command
    };
    let embedded = || {
        let mut command = Command::new(cli);
        command
            .args(["run", "--secrets"])
            .arg(&secrets)
            .arg("--")
            .arg(&python)
            .args(PYTHON_ARGS);
        command
    };
    let variants: [&dyn Fn() -> Command; 3] = [&plain, &with_socket, &embedded];

    // One untimed run of each fills the page cache and Python's bytecode cache.
    for variant in &variants {
        time_run(variant())?;
    }
    let mut times: [Vec<f64>; 3] = Default::default();
    for run in 0..suite.plan.startup_runs {
        for offset in 0..variants.len() {
            let index = (run + offset) % variants.len();
            times[index].push(time_run(variants[index]())?);
        }
    }

    let [plain_time, socket_time, embedded_time] =
        times.map(|values| Figure::median_of(values, Unit::Milliseconds));
    Ok(vec![
        Row::new(
            "python-run-socket",
            "6 python3 -c pass, envproxy run --socket",
            socket_time,
            Some(plain_time.clone()),
            Some(Target::RatioAtMost(1.25)),
        ),
        Row::new(
            "python-run-embedded",
            "6 python3 -c pass, envproxy run --secrets",
            embedded_time,
            Some(plain_time),
            None,
        ),
    ])
}

/// An interpreter of benchmark 16 and the arguments that make it start and exit at once.
struct Interpreter {
    /// The row's identifier in the JSON report.
    id: &'static str,
    program: &'static str,
    args: &'static [&'static str],
    /// The Debian package that provides it, for the error when it is missing.
    package: &'static str,
}

const INTERPRETERS: [Interpreter; 3] = [
    Interpreter {
        id: "perl-run-socket",
        program: "perl",
        args: &["-e", "1"],
        package: "perl",
    },
    Interpreter {
        id: "ruby-run-socket",
        program: "ruby",
        args: &["-e", "nil"],
        package: "ruby",
    },
    Interpreter {
        id: "node-run-socket",
        program: "node",
        args: &["-e", "0"],
        package: "nodejs",
    },
];

/// Runs Perl, Ruby and Node.js with an empty program, plain and under
/// `envproxy run --socket` (the running agent), in rotating order, one row per interpreter.
///
/// Both sides get the five references in their environment, so Perl loads and installs its
/// hook. No row has a target: these interpreters start in a few milliseconds, so the fixed cost
/// of starting the `envproxy` process weighs more than in benchmark 6, and the figure is there
/// to show it.
pub fn interpreters(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let socket = suite.agent_socket()?.to_path_buf();
    let cli = suite.binaries.cli.clone();
    let mut rows = Vec::new();
    for interpreter in &INTERPRETERS {
        let program = which(interpreter.program).with_context(|| {
            format!(
                "{} is not installed (apt-get install {}); skip this benchmark with --only",
                interpreter.program, interpreter.package
            )
        })?;
        tracing::info!(program = %program.display(), "timing an empty program");
        let plain = || {
            let mut command = Command::new(&program);
            command.args(interpreter.args);
            command
        };
        let with_socket = || {
            let mut command = Command::new(&cli);
            command
                .args(["run", "--socket"])
                .arg(&socket)
                .arg("--")
                .arg(&program)
                .args(interpreter.args);
            command
        };
        let variants: [&dyn Fn() -> Command; 2] = [&plain, &with_socket];
        for variant in &variants {
            time_run(variant())?;
        }
        let mut times: [Vec<f64>; 2] = Default::default();
        for run in 0..suite.plan.startup_runs {
            for offset in 0..variants.len() {
                let index = (run + offset) % variants.len();
                times[index].push(time_run(variants[index]())?);
            }
        }
        let [plain_time, socket_time] =
            times.map(|values| Figure::median_of(values, Unit::Milliseconds));
        rows.push(Row::new(
            interpreter.id,
            format!(
                "16 {} {}, envproxy run --socket",
                interpreter.program,
                interpreter.args.join(" ")
            ),
            socket_time,
            Some(plain_time),
            None,
        ));
    }
    Ok(rows)
}

/// Returns the first executable named `program` on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Returns the interpreter that `python3` starts. A `python3` on `PATH` may be a wrapper
/// script (pyenv's shims take about 100 ms), which would hide the cost being measured.
fn python_executable() -> anyhow::Result<PathBuf> {
    let output = Command::new(PYTHON)
        .args(["-c", "import sys; sys.stdout.write(sys.executable)"])
        .env_remove("LD_PRELOAD")
        .output()
        .context("cannot run python3; install Python 3 or skip this benchmark with --only")?;
    if !output.status.success() || output.stdout.is_empty() {
        bail!(
            "python3 did not print its executable path (status {}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(PathBuf::from(OsString::from_vec(output.stdout)))
}

/// Runs `command` to completion and returns its wall time in milliseconds, from spawn to reap.
fn time_run(mut command: Command) -> anyhow::Result<f64> {
    interrupt::check()?;
    fixture::clear_inherited_settings(&mut command);
    command
        .envs(fixture::reference_variables())
        .env("ENVPROXY_ON_ERROR", "exit");
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(elapsed.as_secs_f64() * 1000.0)
}
