//! The Kubernetes objects of `manifests/` and `chart/envproxy/`, and the Dockerfile, checked by
//! `deploy-tests/validate_deploy.py` (Kubernetes schemas of three releases, Helm's own engine),
//! and each agent config they contain loaded by the agent's own parser.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use envproxy_agent::node::settings::TokenSource;
use envproxy_agent::vault::VaultEnvironment;
use envproxy_agent::{admin_socket_path, Config};

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the validation script, which writes each agent config into `config_dir`, and fails with
/// its output when any check fails.
fn run_validation(config_dir: &Path) {
    let root = repository_root();
    let output = Command::new("python3")
        .arg(root.join("deploy-tests/validate_deploy.py"))
        .arg("--config-dir")
        .arg(config_dir)
        // The Dockerfile check runs `cargo metadata` with the cargo that builds this test.
        .env("CARGO", env!("CARGO"))
        .output()
        .expect("cannot run python3; install Python 3 (apt-get install python3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "deploy-tests/validate_deploy.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("0 failures"), "{stdout}");
}

fn load(config_dir: &Path, name: &str) -> Config {
    let path = config_dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{} was not written: {err}", path.display()));
    let config = Config::parse_with(
        &text,
        Path::new("/etc/envproxy/config/config.toml"),
        &VaultEnvironment::default(),
        Some("worker-1".to_string()),
    )
    .unwrap_or_else(|err| panic!("{name}: the agent rejects the config: {err}"));
    // `envproxy-agent webhook` reads the [webhook] table, so only other unknown keys are typos.
    let unexpected: Vec<_> = config
        .warnings
        .iter()
        .filter(|warning| !warning.contains("`webhook`"))
        .collect();
    assert!(unexpected.is_empty(), "{name}: {unexpected:?}");
    config
}

#[test]
fn manifests_and_chart_validate() {
    let configs = tempfile::tempdir().unwrap();
    run_validation(configs.path());

    for name in ["manifests", "chart-default"] {
        let config = load(configs.path(), name);
        let node = config.node.as_ref().expect("node mode");
        assert_eq!(node.node_name, "worker-1", "{name}");
        assert_eq!(node.token_audience, "vault", "{name}");
        assert_eq!(node.token_source, TokenSource::Projected, "{name}");
        assert_eq!(
            config.socket.as_deref(),
            Some(Path::new("/run/envproxy/agent.sock")),
            "{name}"
        );
        let vault = config.vault.as_ref().expect("a [vault] table");
        assert_eq!(vault.address, "https://vault.vault.svc:8200", "{name}");
        let install = config.install.as_ref().expect("an [install] table");
        assert_eq!(install.source, Path::new("/usr/lib/envproxy"), "{name}");
        assert_eq!(install.target, Path::new("/opt/envproxy"), "{name}");
        assert_eq!(
            admin_socket_path(&config).as_deref(),
            Some(Path::new("/run/envproxy-admin/admin.sock")),
            "{name}"
        );
        assert_eq!(
            config.admin.health_listen,
            Some("0.0.0.0:9465".parse().unwrap()),
            "{name}"
        );
        assert_eq!(
            config.metrics.listen,
            Some("0.0.0.0:9464".parse().unwrap()),
            "{name}"
        );
    }

    let custom = load(configs.path(), "chart-custom");
    let node = custom.node.as_ref().unwrap();
    assert_eq!(node.token_audience, "vault.platform.example");
    assert_eq!(node.token_source, TokenSource::TokenRequest);
    assert_eq!(node.token_path, Path::new("/var/run/secrets/vault/token"));
    assert_eq!(node.max_connections_per_pod, 128);
    assert_eq!(
        node.vault_addr_allowlist,
        ["https://vault-b.platform.example:8200"]
    );
    assert_eq!(custom.max_connections, 8192);
    assert_eq!(custom.log_level, "envproxy_agent=debug,info");
    assert!(custom.audit.log);
    assert_eq!(custom.metrics.listen, None);
    assert_eq!(
        admin_socket_path(&custom).as_deref(),
        Some(Path::new("/var/run/envproxy-admin/admin.sock"))
    );
    assert_eq!(
        custom.admin.health_listen,
        Some("0.0.0.0:19465".parse().unwrap())
    );
    let install = custom.install.as_ref().unwrap();
    assert_eq!(install.target, Path::new("/var/lib/envproxy"));
    assert_eq!(install.sweep_interval, Duration::from_secs(300));
    let vault = custom.vault.as_ref().unwrap();
    assert_eq!(vault.address, "https://vault.platform.example:8200");
}
