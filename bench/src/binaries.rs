//! The EnvProxy build outputs under test, found beside this executable.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

pub const AGENT: &str = "envproxy-agent";
pub const CLI: &str = "envproxy";
pub const LIBRARY: &str = "libenvproxy.so";

/// Paths of the programs and the library that the benchmarks run.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub cli: PathBuf,
    pub library: PathBuf,
    /// This executable, started again as the echo server.
    pub bench: PathBuf,
}

impl Binaries {
    /// Finds the agent, the CLI and the library in the directory of this executable, which is
    /// where `cargo build --release --workspace` puts all of them. The CLI must exist only when
    /// `need_cli` is set.
    pub fn locate(need_cli: bool) -> anyhow::Result<Binaries> {
        let bench = std::env::current_exe().context("cannot find the path of envproxy-bench")?;
        let dir = bench
            .parent()
            .context("the envproxy-bench executable has no parent directory")?;
        let binaries = Binaries {
            agent: dir.join(AGENT),
            cli: dir.join(CLI),
            library: dir.join(LIBRARY),
            bench: bench.clone(),
        };
        let missing: Vec<&Path> = [&binaries.agent, &binaries.cli, &binaries.library]
            .into_iter()
            .filter(|path| need_cli || **path != binaries.cli)
            .filter(|path| !path.is_file())
            .map(PathBuf::as_path)
            .collect();
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "missing build outputs: {}. Run `cargo build --release --workspace` and start \
                 target/release/envproxy-bench from the same target directory",
                list.join(", ")
            );
        }
        Ok(binaries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_reports_missing_outputs() {
        // Cargo places test executables in `deps/`, away from the binaries of the workspace.
        let error = Binaries::locate(true).unwrap_err().to_string();
        assert!(error.contains("envproxy-agent"), "{error}");
        assert!(
            error.contains("cargo build --release --workspace"),
            "{error}"
        );
    }
}
