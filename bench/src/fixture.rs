//! The files and the environment that every benchmark shares.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use tempfile::TempDir;

/// A secret of the benchmark's secrets file, read through a variable of the same name whose
/// value is the reference `envproxy:<name>`. The values are made up for the benchmark.
pub struct Secret {
    pub name: &'static str,
    pub value: &'static str,
}

pub const SECRETS: [Secret; 5] = [
    Secret {
        name: "API_TOKEN",
        value: "tok_3f9a1c7e5b2d4f60a8c1e3b5d7f9a2c4",
    },
    Secret {
        name: "DATABASE_URL",
        value: "postgres://app:s3cr3t-pa55w0rd@db.internal:5432/app",
    },
    Secret {
        name: "REDIS_URL",
        value: "redis://:r3d1s-pa55@cache.internal:6379/0",
    },
    Secret {
        name: "SESSION_SECRET",
        value: "8c2e4a6f0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d",
    },
    Secret {
        name: "SMTP_PASSWORD",
        value: "smtp-Pa55w0rd-2026",
    },
];

/// The variable whose reference benchmarks 2 to 4 resolve.
pub const REFERENCE_VARIABLE: &str = "DATABASE_URL";
/// The plain variable of benchmark 1.
pub const PLAIN_VARIABLE: &str = "LOG_LEVEL";
pub const PLAIN_VALUE: &str = "info";

/// Plain variables of a typical service container. With the five references and the
/// `LD_PRELOAD` and `ENVPROXY_*` settings they make an environment of 30 variables.
const PLAIN_VARIABLES: [(&str, &str); 19] = [
    ("APP_CACHE_DIR", "/var/cache/app"),
    ("APP_ENV", "production"),
    ("APP_PORT", "8080"),
    ("APP_WORKERS", "4"),
    ("HOME", "/home/app"),
    ("HOSTNAME", "app-7d9f8c6b5-x2k4q"),
    ("LANG", "C.UTF-8"),
    ("LC_ALL", "C.UTF-8"),
    ("LOGNAME", "app"),
    (PLAIN_VARIABLE, PLAIN_VALUE),
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("PWD", "/srv/app"),
    ("SERVICE_NAME", "checkout"),
    ("SHELL", "/bin/sh"),
    ("SHLVL", "1"),
    ("TERM", "xterm"),
    ("TMPDIR", "/tmp"),
    ("TZ", "UTC"),
    ("USER", "app"),
];

/// How the library is configured in a benchmark's environment.
pub struct LibrarySettings<'a> {
    /// `LD_PRELOAD`: the library, or `None` for the baseline, which gets an empty value so
    /// that both environments hold the same variables.
    pub library: Option<&'a Path>,
    pub socket: &'a Path,
    /// `ENVPROXY_CACHE_TTL`, in seconds.
    pub cache_ttl_secs: u64,
}

/// Returns the 30-variable environment of the C benchmarks.
///
/// `ENVPROXY_ON_ERROR=exit` makes a reference that the library fails to resolve end the
/// program, so a failure cannot pass for a fast result. The runtime hooks are turned off
/// because the library would otherwise add `PYTHONPATH` to the environment of a C program.
pub fn environment(settings: &LibrarySettings<'_>) -> Vec<(String, String)> {
    let library = settings
        .library
        .map(|path| path.display().to_string())
        .unwrap_or_default();
    let mut variables: Vec<(String, String)> = PLAIN_VARIABLES
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    variables.extend(reference_variables());
    variables.extend([
        ("LD_PRELOAD".to_string(), library),
        (
            "ENVPROXY_SOCKET".to_string(),
            settings.socket.display().to_string(),
        ),
        (
            "ENVPROXY_CACHE_TTL".to_string(),
            settings.cache_ttl_secs.to_string(),
        ),
        ("ENVPROXY_ON_ERROR".to_string(), "exit".to_string()),
        ("ENVPROXY_NO_PYTHON".to_string(), "1".to_string()),
        ("ENVPROXY_NO_JAVA".to_string(), "1".to_string()),
    ]);
    variables
}

/// Variables that change how the servers, the CLI or the library behave, removed from the
/// inherited environment of every program the benchmark starts, so that a user's settings do
/// not change the figures. `ENVPROXY_*` variables are removed as well.
const INHERITED_SETTINGS: [&str; 3] = ["LD_PRELOAD", "RUST_LOG", "TOKIO_WORKER_THREADS"];

/// Removes [`INHERITED_SETTINGS`] and every `ENVPROXY_*` variable of this process from the
/// environment that `command` passes on, and every `VAULT_*` variable that `command` does not
/// set itself, because the agent takes its Vault defaults from them.
pub fn clear_inherited_settings(command: &mut Command) {
    for name in INHERITED_SETTINGS {
        command.env_remove(name);
    }
    let set_by_command: Vec<std::ffi::OsString> = command
        .get_envs()
        .filter(|(_, value)| value.is_some())
        .map(|(name, _)| name.to_os_string())
        .collect();
    for (name, _) in std::env::vars_os() {
        let bytes = name.as_bytes();
        let vault_default = bytes.starts_with(b"VAULT_") && !set_by_command.contains(&name);
        if bytes.starts_with(b"ENVPROXY_") || vault_default {
            command.env_remove(name);
        }
    }
}

/// Returns `NAME=envproxy:NAME` for every secret.
pub fn reference_variables() -> Vec<(String, String)> {
    SECRETS
        .iter()
        .map(|secret| (secret.name.to_string(), reference(secret.name)))
        .collect()
}

pub fn reference(name: &str) -> String {
    format!("envproxy:{name}")
}

/// Returns the value of the secret `name`.
///
/// # Panics
/// Panics when `name` is not one of [`SECRETS`], which is a bug in the caller.
pub fn secret_value(name: &str) -> &'static str {
    SECRETS
        .iter()
        .find(|secret| secret.name == name)
        .map(|secret| secret.value)
        .unwrap_or_else(|| panic!("bug: {name} is not a benchmark secret"))
}

/// A private temporary directory with the secrets file and room for sockets, compiled
/// programs and logs. Dropping it removes the directory.
pub struct Workspace {
    dir: TempDir,
}

impl Workspace {
    pub fn create() -> anyhow::Result<Workspace> {
        // Under /tmp, because a socket path must fit the 108 bytes of `sockaddr_un`.
        let dir = tempfile::Builder::new()
            .prefix("envproxy-bench-")
            .tempdir_in("/tmp")
            .context("cannot create a temporary directory under /tmp")?;
        let workspace = Workspace { dir };
        workspace.write_secrets()?;
        Ok(workspace)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn secrets_file(&self) -> PathBuf {
        self.path("secrets.json")
    }

    fn write_secrets(&self) -> anyhow::Result<()> {
        let map: serde_json::Map<String, serde_json::Value> = SECRETS
            .iter()
            .map(|secret| (secret.name.to_string(), secret.value.into()))
            .collect();
        let text = serde_json::to_string_pretty(&map)?;
        let path = self.secrets_file();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_has_thirty_variables() {
        let settings = LibrarySettings {
            library: None,
            socket: Path::new("/tmp/agent.sock"),
            cache_ttl_secs: 30,
        };
        let variables = environment(&settings);
        assert_eq!(variables.len(), 30);
        let mut names: Vec<&str> = variables.iter().map(|(name, _)| name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 30, "variable names repeat");
    }

    #[test]
    fn environments_differ_only_in_preload() {
        let library = Path::new("/opt/libenvproxy.so");
        let socket = Path::new("/tmp/agent.sock");
        let with = environment(&LibrarySettings {
            library: Some(library),
            socket,
            cache_ttl_secs: 30,
        });
        let without = environment(&LibrarySettings {
            library: None,
            socket,
            cache_ttl_secs: 30,
        });
        let differing: Vec<&str> = with
            .iter()
            .zip(&without)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.0.as_str())
            .collect();
        assert_eq!(differing, ["LD_PRELOAD"]);
    }

    #[test]
    fn inherited_settings_are_removed() {
        let mut command = Command::new("true");
        clear_inherited_settings(&mut command);
        let removed: Vec<String> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        for name in INHERITED_SETTINGS {
            assert!(removed.iter().any(|r| r == name), "{name} not removed");
        }
        for (name, _) in std::env::vars() {
            if name.starts_with("ENVPROXY_") {
                assert!(removed.contains(&name), "{name} not removed");
            }
        }
    }

    #[test]
    fn references_name_their_secrets() {
        for (name, value) in reference_variables() {
            assert_eq!(value, format!("envproxy:{name}"));
            assert!(!secret_value(&name).is_empty());
        }
    }
}
