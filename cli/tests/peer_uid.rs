//! A client running as another uid is rejected by the agent from its `SO_PEERCRED` credentials.
//!
//! This test must run as root: it starts the client as uid 65534 (`nobody`). It fails instead of
//! skipping when not root, because a skipped check would look like a pass.

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use envproxy_agent::{Agent, Config};
use tokio::sync::oneshot;

const OTHER_UID: u32 = 65534;

#[test]
fn other_uid_gets_permission_denied() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "this test must run as root (it runs a client as uid {OTHER_UID}); it runs as uid {euid}"
    );

    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    fs::write(&secrets, r#"{"API_KEY": "root-only"}"#).unwrap();
    fs::set_permissions(&secrets, Permissions::from_mode(0o600)).unwrap();
    let socket_dir = dir.path().join("run");
    let socket = socket_dir.join("agent.sock");

    // The binary is copied into the temporary directory, because the build directory may sit
    // below a directory that uid 65534 cannot enter.
    let client = dir.path().join("envproxy");
    fs::copy(env!("CARGO_BIN_EXE_envproxy"), &client).unwrap();
    fs::set_permissions(&client, Permissions::from_mode(0o755)).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        socket: Some(socket.clone()),
        secrets_file: Some(secrets),
        ..Config::default()
    };
    let agent = runtime.block_on(Agent::bind(config)).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = runtime.spawn(agent.serve(async {
        let _ = stopped.await;
    }));

    // Open the file permissions, so the agent's peer check is the only check left.
    fs::set_permissions(dir.path(), Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&socket_dir, Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&socket, Permissions::from_mode(0o666)).unwrap();

    let output = Command::new(&client)
        .args(["get", "API_KEY", "--socket", socket.to_str().unwrap()])
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .env_remove("ENVPROXY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();

    let _ = stop.send(());
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), served).await })
        .expect("the agent did not stop")
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "envproxy: permission denied: this agent serves uid 0 only; the caller runs as uid \
             {OTHER_UID}\n"
        )
    );
    assert!(output.stdout.is_empty());
    assert!(!socket.exists(), "the socket file was left behind");
}
