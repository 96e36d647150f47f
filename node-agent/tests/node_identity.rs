//! Caller identity against real processes: children that connect to a Unix socket, sit in real
//! `kubepods` cgroups, or run chrooted in a temporary directory.
//!
//! The tests that chroot a child or create cgroups need root. Run as another user they fail
//! with a message saying so, because a skipped test would read as a pass.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envproxy_agent::node::caller::{BootTime, Caller, CallerError, PidfdSource};
use envproxy_agent::node::cgroup::PodContainer;
use envproxy_agent::node::proc_root::{read_file_in_root, ProcRootError};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

const POD_UID: &str = "5d2c9a4e-1f3b-4c6d-8e7f-a0b1c2d3e4f5";
const CONTAINER_ID: &str = "9b8a7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";
const MAX_TOKEN_LEN: usize = 4096;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test chroots child processes and creates cgroups, so it must run as root \
         (for example `sudo -E cargo test -p envproxy-agent --test node_identity`)"
    );
}

/// A forked child process, killed and reaped on drop.
struct ChildProcess {
    pid: Pid,
    reaped: bool,
}

impl ChildProcess {
    /// Forks a child that optionally connects to `socket_path` and then chroots into
    /// `root_directory`, and waits until it has done both. The child then sleeps until killed.
    fn spawn(socket_path: Option<&Path>, root_directory: Option<&Path>) -> ChildProcess {
        // Everything the child needs is prepared here, because after `fork` in a multi-threaded
        // process the child may only make async-signal-safe calls (no allocation).
        let address = socket_path.map(socket_address);
        let root = root_directory.map(|path| CString::new(path.as_os_str().as_bytes()).unwrap());
        let slash = CString::new("/").unwrap();
        let (ready_read, ready_write) = pipe();

        // SAFETY: the child branch calls only async-signal-safe libc functions on data prepared
        // above and leaves through `_exit`, so it never returns into the test harness.
        let fork_result = unsafe { libc::fork() };
        assert!(
            fork_result >= 0,
            "fork failed: {}",
            std::io::Error::last_os_error()
        );
        if fork_result == 0 {
            unsafe {
                run_child(
                    address.as_ref(),
                    root.as_ref(),
                    &slash,
                    ready_write.as_raw_fd(),
                )
            }
        }
        drop(ready_write);

        let mut child = ChildProcess {
            pid: Pid::from_raw(fork_result),
            reaped: false,
        };
        let mut ready = [0u8; 1];
        let read = nix::unistd::read(ready_read.as_raw_fd(), &mut ready).unwrap();
        if read != 1 {
            let status = waitpid(child.pid, None);
            child.reaped = true;
            panic!(
                "child {} failed to set up: {status:?} (exit status 2: connect failed, 3: chroot \
                 failed, 4: chdir failed)",
                child.pid
            );
        }
        child
    }

    fn raw_pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Sends SIGKILL and, if `reap`, waits for the child so that its pid is freed.
    fn kill(&mut self, reap: bool) {
        if self.reaped {
            return;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        if reap {
            waitpid(self.pid, None).unwrap();
            self.reaped = true;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill(true);
    }
}

/// Body of a forked child. Exit status 2 means connect failed, 3 chroot, 4 chdir.
unsafe fn run_child(
    address: Option<&(libc::sockaddr_un, libc::socklen_t)>,
    root: Option<&CString>,
    slash: &CString,
    ready: libc::c_int,
) -> ! {
    if let Some((address, length)) = address {
        let socket = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        let address = (address as *const libc::sockaddr_un).cast::<libc::sockaddr>();
        if socket < 0 || libc::connect(socket, address, *length) != 0 {
            libc::_exit(2);
        }
    }
    if let Some(root) = root {
        if libc::chroot(root.as_ptr()) != 0 {
            libc::_exit(3);
        }
        if libc::chdir(slash.as_ptr()) != 0 {
            libc::_exit(4);
        }
    }
    libc::write(ready, [1u8].as_ptr().cast(), 1);
    loop {
        libc::pause();
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let result = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(
        result,
        0,
        "pipe2 failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: pipe2 succeeded, so both descriptors are new and not owned elsewhere.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn socket_address(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data, and all zeroes is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < address.sun_path.len(), "socket path too long");
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    (
        address,
        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
    )
}

/// A listening socket in a temporary directory.
struct Listener {
    _directory: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl Listener {
    fn new() -> Listener {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        Listener {
            _directory: directory,
            path,
            listener,
        }
    }

    /// Accepts one connection and reads the boot time right after, as the agent does.
    fn accept(&self) -> (UnixStream, BootTime) {
        let (stream, _) = self.listener.accept().unwrap();
        (stream, BootTime::now())
    }
}

/// Waits until the caller's process has exited, up to five seconds.
fn wait_until_exited(caller: &Caller) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while caller.is_alive() {
        assert!(
            Instant::now() < deadline,
            "pid {} still alive after SIGKILL",
            caller.pid()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn child_identified_by_both_pidfd_sources() {
    let listener = Listener::new();
    let child = ChildProcess::spawn(Some(&listener.path), None);
    let (stream, accepted_at) = listener.accept();

    for source in [PidfdSource::PeerPidfd, PidfdSource::PidfdOpen] {
        let caller = Caller::from_socket_with(&stream, accepted_at, source).unwrap();
        assert_eq!(caller.pid(), child.raw_pid(), "{source:?}");
        assert_eq!(caller.pidfd_source(), source);
        assert!(caller.is_alive(), "{source:?}");

        let own_cgroup = fs::read_to_string("/proc/self/cgroup").unwrap();
        let expected = envproxy_agent::node::cgroup::parse_cgroup_file(&own_cgroup).unwrap();
        assert_eq!(caller.pod().unwrap(), expected, "{source:?}");
    }
}

#[test]
fn fallback_rejects_pid_started_after_accept() {
    let listener = Listener::new();
    let _child = ChildProcess::spawn(Some(&listener.path), None);
    let (stream, _) = listener.accept();

    let before_child = BootTime::from_duration(Duration::ZERO);
    let error =
        Caller::from_socket_with(&stream, before_child, PidfdSource::PidfdOpen).unwrap_err();
    assert!(
        matches!(error, CallerError::StartedAfterAccept { .. }),
        "{error}"
    );
}

#[test]
fn exited_caller_gets_error_from_pod() {
    for source in [PidfdSource::PeerPidfd, PidfdSource::PidfdOpen] {
        for reap in [false, true] {
            let listener = Listener::new();
            let mut child = ChildProcess::spawn(Some(&listener.path), None);
            let (stream, accepted_at) = listener.accept();
            let caller = Caller::from_socket_with(&stream, accepted_at, source).unwrap();
            assert!(caller.pod().is_ok(), "{source:?} before exit");

            child.kill(reap);
            wait_until_exited(&caller);
            let state = if reap { "reaped" } else { "zombie" };
            let error = caller.pod().unwrap_err();
            assert!(
                matches!(error, CallerError::Exited { pid } if pid == child.raw_pid()),
                "{source:?}, {state}: {error}"
            );
            assert!(caller.ensure_alive().is_err(), "{source:?}, {state}");
        }
    }
}

#[test]
fn exited_peer_cannot_become_caller() {
    let listener = Listener::new();
    let mut child = ChildProcess::spawn(Some(&listener.path), None);
    let (stream, accepted_at) = listener.accept();
    child.kill(true);

    for source in [PidfdSource::PeerPidfd, PidfdSource::PidfdOpen] {
        let result = Caller::from_socket_with(&stream, accepted_at, source);
        assert!(result.is_err(), "{source:?} accepted a reaped peer");
    }
}

/// A cgroup v2 subtree created for one test and removed on drop, innermost first.
struct CgroupTree {
    directories: Vec<PathBuf>,
}

impl CgroupTree {
    /// Creates `relative` (several components) under the cgroup v2 mount.
    fn create(relative: &str) -> CgroupTree {
        let mut path = cgroup2_mount();
        let mut directories = Vec::new();
        for component in relative.split('/') {
            path.push(component);
            fs::create_dir(&path)
                .unwrap_or_else(|error| panic!("cannot create cgroup {}: {error}", path.display()));
            directories.push(path.clone());
        }
        CgroupTree { directories }
    }

    fn path(&self, depth: usize) -> &Path {
        &self.directories[depth]
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for directory in self.directories.iter().rev() {
            // A cgroup is removable once the kernel has released its last reaped process.
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(directory).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Returns the mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on a v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if after.split(' ').next() == Some("cgroup2") {
            let mount_point = before.split(' ').nth(4).unwrap();
            return PathBuf::from(mount_point);
        }
    }
    panic!("no cgroup2 file system is mounted");
}

fn move_to_cgroup(child: &ChildProcess, cgroup: &Path) {
    fs::write(cgroup.join("cgroup.procs"), child.raw_pid().to_string()).unwrap();
}

#[test]
fn kubepods_cgroup_gives_pod_and_container() {
    require_root();
    let prefix = format!("envproxy-test-{}", std::process::id());
    let systemd = CgroupTree::create(&format!(
        "{prefix}-systemd/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/\
         cri-containerd-{CONTAINER_ID}.scope",
        POD_UID.replace('-', "_")
    ));
    let cgroupfs = CgroupTree::create(&format!(
        "{prefix}-cgroupfs/kubepods/besteffort/pod{POD_UID}"
    ));

    let with_container = PodContainer {
        pod_uid: POD_UID.to_owned(),
        container_id: Some(CONTAINER_ID.to_owned()),
    };
    let pod_only = PodContainer {
        pod_uid: POD_UID.to_owned(),
        container_id: None,
    };
    let cases = [
        (systemd.path(4), Some(with_container)),
        (systemd.path(3), Some(pod_only.clone())),
        (cgroupfs.path(3), Some(pod_only)),
        (cgroupfs.path(2), None),
    ];
    for (cgroup, expected) in cases {
        let listener = Listener::new();
        let child = ChildProcess::spawn(Some(&listener.path), None);
        move_to_cgroup(&child, cgroup);
        let (stream, accepted_at) = listener.accept();
        let caller = Caller::from_socket(&stream, accepted_at).unwrap();
        assert_eq!(
            caller.pod().unwrap(),
            expected,
            "cgroup {}",
            cgroup.display()
        );
    }
}

/// A chrooted child with a container-like tree planted in its root.
struct ChrootedCaller {
    caller: Caller,
    _stream: UnixStream,
    child: ChildProcess,
    _listener: Listener,
    _root: tempfile::TempDir,
    _outside: tempfile::TempDir,
    outside_file: PathBuf,
}

/// Plants the test tree and starts a child chrooted into it:
///
/// - `/var/run/secrets/tokens/token`, through the kubelet's `..data` symlinks, contains
///   `pod-token`.
/// - `/etc/hostname` contains `inside`.
/// - `/absolute-link` points to a file that exists only outside the root.
/// - `/absolute-hostname` points to `/etc/hostname`, and `/dotdot-link` climbs to it with `..`.
/// - `/fifo` is a FIFO, and `/big` is one byte larger than [`MAX_TOKEN_LEN`].
fn start_chrooted_caller() -> ChrootedCaller {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let outside_file = outside.path().join("host-only");
    fs::write(&outside_file, b"host").unwrap();

    let tokens = root.path().join("var/run/secrets/tokens");
    fs::create_dir_all(tokens.join("..2026_12_04_10_00_00.123456789")).unwrap();
    fs::write(
        tokens.join("..2026_12_04_10_00_00.123456789/token"),
        b"pod-token",
    )
    .unwrap();
    symlink("..2026_12_04_10_00_00.123456789", tokens.join("..data")).unwrap();
    symlink("..data/token", tokens.join("token")).unwrap();

    fs::create_dir(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/hostname"), b"inside").unwrap();
    symlink(&outside_file, root.path().join("absolute-link")).unwrap();
    symlink("/etc/hostname", root.path().join("absolute-hostname")).unwrap();
    symlink(
        "../../../../../../../../etc/hostname",
        root.path().join("dotdot-link"),
    )
    .unwrap();
    nix::unistd::mkfifo(&root.path().join("fifo"), nix::sys::stat::Mode::S_IRUSR).unwrap();
    fs::write(root.path().join("big"), vec![b'x'; MAX_TOKEN_LEN + 1]).unwrap();

    let listener = Listener::new();
    let child = ChildProcess::spawn(Some(&listener.path), Some(root.path()));
    let (stream, accepted_at) = listener.accept();
    let caller = Caller::from_socket(&stream, accepted_at).unwrap();
    ChrootedCaller {
        caller,
        _stream: stream,
        child,
        _listener: listener,
        _root: root,
        _outside: outside,
        outside_file,
    }
}

fn read_in_chroot(chrooted: &ChrootedCaller, path: &str) -> Result<Vec<u8>, ProcRootError> {
    read_file_in_root(&chrooted.caller, Path::new(path), MAX_TOKEN_LEN)
        .map(|content| content.to_vec())
}

#[test]
fn chroot_reads_token_through_symlinks() {
    require_root();
    let chrooted = start_chrooted_caller();
    assert_eq!(
        read_in_chroot(&chrooted, "/var/run/secrets/tokens/token").unwrap(),
        b"pod-token"
    );
    assert_eq!(
        read_in_chroot(&chrooted, "var/run/secrets/tokens/token").unwrap(),
        b"pod-token"
    );
}

#[test]
fn chroot_symlinks_resolve_inside_root() {
    require_root();
    let chrooted = start_chrooted_caller();

    assert_eq!(
        read_in_chroot(&chrooted, "/absolute-hostname").unwrap(),
        b"inside"
    );
    assert_eq!(
        read_in_chroot(&chrooted, "/dotdot-link").unwrap(),
        b"inside"
    );
    assert_eq!(
        read_in_chroot(&chrooted, "/../../../../etc/hostname").unwrap(),
        b"inside"
    );

    let error = read_in_chroot(&chrooted, "/absolute-link").unwrap_err();
    let ProcRootError::Open { source, .. } = &error else {
        panic!("expected an open error, got {error}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{error}");

    let host_path = chrooted.outside_file.to_str().unwrap();
    let error = read_in_chroot(&chrooted, host_path).unwrap_err();
    assert!(matches!(error, ProcRootError::Open { .. }), "{error}");
}

#[test]
fn chroot_rejects_special_and_large_files() {
    require_root();
    let chrooted = start_chrooted_caller();

    let error = read_in_chroot(&chrooted, "/fifo").unwrap_err();
    assert!(
        matches!(error, ProcRootError::NotRegularFile { kind: "FIFO", .. }),
        "{error}"
    );

    let error = read_in_chroot(&chrooted, "/var/run/secrets/tokens").unwrap_err();
    assert!(
        matches!(
            error,
            ProcRootError::NotRegularFile {
                kind: "directory",
                ..
            }
        ),
        "{error}"
    );

    let error = read_in_chroot(&chrooted, "/big").unwrap_err();
    assert!(
        matches!(
            error,
            ProcRootError::TooLarge {
                max_len: MAX_TOKEN_LEN,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "/big inside the root of pid {} is larger than {MAX_TOKEN_LEN} bytes",
            chrooted.caller.pid()
        )
    );
}

#[test]
fn chroot_read_after_exit_fails() {
    require_root();
    let mut chrooted = start_chrooted_caller();
    chrooted.child.kill(true);
    wait_until_exited(&chrooted.caller);

    let error = read_in_chroot(&chrooted, "/var/run/secrets/tokens/token").unwrap_err();
    assert!(
        matches!(
            error,
            ProcRootError::OpenRoot { .. } | ProcRootError::Caller { .. }
        ),
        "{error}"
    );
}
