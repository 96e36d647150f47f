//! `envproxy get`, `status` and `run` reject an agent socket that another user serves, checked
//! with `SO_PEERCRED` before any request is sent.
//!
//! This test must run as root: the agent runs as uid 65534 (`nobody`) and the client as root,
//! which accepts only its own uid and root. It fails instead of skipping when not root, because
//! a skipped check would look like a pass.

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{chown, Gid, Pid, Uid};

const ENVPROXY: &str = env!("CARGO_BIN_EXE_envproxy");
const OTHER_UID: u32 = 65534;
const WAIT: Duration = Duration::from_secs(30);

/// Returns the path of the C library mapped into this process, a harmless library to preload.
fn harmless_library() -> PathBuf {
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            let name = Path::new(path).file_name().unwrap().to_string_lossy();
            name.starts_with("libc.so") || name.starts_with("libc-")
        })
        .map(PathBuf::from)
        .expect("no C library in /proc/self/maps")
}

/// An `envproxy run` running as uid 65534, whose embedded agent listens on `socket` while its
/// command sleeps.
struct ForeignAgent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl ForeignAgent {
    fn start() -> ForeignAgent {
        let dir = tempfile::tempdir().unwrap();
        // Anyone may create files in the base directory, like a shared temporary directory.
        fs::set_permissions(dir.path(), Permissions::from_mode(0o777)).unwrap();
        let owner = Some(Uid::from_raw(OTHER_UID));
        let group = Some(Gid::from_raw(OTHER_UID));

        let secrets = dir.path().join("secrets.json");
        fs::write(&secrets, r#"{"API_KEY": "served-to-nobody"}"#).unwrap();
        fs::set_permissions(&secrets, Permissions::from_mode(0o600)).unwrap();
        chown(&secrets, owner, group).unwrap();

        // The binary is copied into the temporary directory, because the build directory may sit
        // below a directory that uid 65534 cannot enter.
        let binary = dir.path().join("envproxy");
        fs::copy(ENVPROXY, &binary).unwrap();
        fs::set_permissions(&binary, Permissions::from_mode(0o755)).unwrap();

        let socket = dir.path().join("run").join("agent.sock");
        let child = Command::new(&binary)
            .arg("run")
            .arg("--secrets")
            .arg(&secrets)
            .arg("--socket")
            .arg(&socket)
            .args(["--", "sleep", "600"])
            .uid(OTHER_UID)
            .gid(OTHER_UID)
            .current_dir(dir.path())
            .env_remove("ENVPROXY_SOCKET")
            .env_remove("VAULT_ADDR")
            .env("ENVPROXY_LIB", harmless_library())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut agent = ForeignAgent {
            child,
            socket,
            _dir: dir,
        };
        agent.wait_for_socket();
        agent
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + WAIT;
        while !self.socket.exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the agent running as uid {OTHER_UID} exited with {status}");
            }
            assert!(Instant::now() < deadline, "the agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

impl Drop for ForeignAgent {
    fn drop(&mut self) {
        // SIGTERM reaches the sleeping command through envproxy run, which then stops its agent.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn envproxy_as_root(args: &[&str]) -> Output {
    Command::new(ENVPROXY)
        .args(args)
        .env_remove("ENVPROXY_SOCKET")
        .env_remove("VAULT_ADDR")
        .env_remove("RUST_LOG")
        .env("ENVPROXY_LIB", harmless_library())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_names_foreign_agent(output: &Output, socket: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected_socket = format!("the agent socket {socket} is served by uid {OTHER_UID}");
    assert!(stderr.contains(&expected_socket), "{stderr}");
    assert!(
        stderr.contains("not by this user (uid 0) or root"),
        "{stderr}"
    );
    assert!(stderr.contains("ENVPROXY_SOCKET"), "{stderr}");
    assert!(!stderr.contains("served-to-nobody"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn commands_reject_other_users_agent() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "this test must run as root (it runs an agent as uid {OTHER_UID}); it runs as uid {euid}"
    );
    let agent = ForeignAgent::start();
    let socket = agent.socket();

    let output = envproxy_as_root(&["get", "API_KEY", "--socket", socket]);
    assert_eq!(output.status.code(), Some(2));
    assert_names_foreign_agent(&output, socket);

    let output = envproxy_as_root(&["status", "--socket", socket]);
    assert_eq!(output.status.code(), Some(1));
    assert_names_foreign_agent(&output, socket);

    let output = envproxy_as_root(&["run", "--socket", socket, "--", "true"]);
    assert_eq!(output.status.code(), Some(125));
    assert_names_foreign_agent(&output, socket);

    // With a file, run would otherwise start its own agent; it must not take over the socket.
    let secrets = tempfile::NamedTempFile::new().unwrap();
    fs::write(secrets.path(), r#"{"A": "1"}"#).unwrap();
    let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    let config_text = format!(
        "[backend]\ntype = \"file\"\npath = \"{}\"\n",
        secrets.path().display()
    );
    fs::write(config.path(), config_text).unwrap();
    let config_path = config.path().to_str().unwrap();
    let output = envproxy_as_root(&[
        "run",
        "--config",
        config_path,
        "--socket",
        socket,
        "--",
        "true",
    ]);
    assert_eq!(output.status.code(), Some(125));
    assert_names_foreign_agent(&output, socket);
}
