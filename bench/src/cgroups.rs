//! Test pods' cgroups and the placement of a client process inside one, for the node-mode
//! benchmarks. Creating cgroups, moving processes between them and mounting a token directory
//! all need root.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Maximum wait for a cgroup to become empty and removable after its processes have exited.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Fails unless this process runs as root, with a message that explains why `what` (plural) need
/// root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "{what} need root (effective uid is {euid}) to create kubepods cgroups, place client \
             processes in them and mount each pod's token in a mount namespace of its own. Run \
             envproxy-bench as root, or leave the node benchmarks out of --only"
        );
    }
    Ok(())
}

/// Returns the mount point of the cgroup v2 file system, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        // The fields after " - " start with the file system type. Field 5 before it is the
        // mount point (proc(5)).
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if after.split(' ').next() == Some("cgroup2") {
            if let Some(mount_point) = before.split(' ').nth(4) {
                return Ok(PathBuf::from(mount_point));
            }
        }
    }
    bail!("no cgroup2 file system is mounted; node mode identifies pods by their cgroup v2 path")
}

/// A `kubepods` tree, as the kubelet's systemd cgroup driver names it, under a directory of its
/// own in the cgroup v2 tree. Dropping it removes every cgroup it created.
pub struct Cgroups {
    root: PathBuf,
    /// Created directories, parents before children.
    created: Vec<PathBuf>,
}

impl Cgroups {
    /// Creates `envproxy-bench-<suffix>` at the top of the cgroup v2 tree.
    pub fn create(suffix: &str) -> anyhow::Result<Cgroups> {
        let root = cgroup2_mount()?.join(format!("envproxy-bench-{suffix}"));
        std::fs::create_dir(&root)
            .with_context(|| format!("cannot create the cgroup {}", root.display()))?;
        Ok(Cgroups {
            root: root.clone(),
            created: vec![root],
        })
    }

    /// Creates the cgroup of container `container_id` of pod `pod_uid` (a besteffort pod
    /// under containerd) and returns its path.
    pub fn container(&mut self, pod_uid: &str, container_id: &str) -> anyhow::Result<PathBuf> {
        let underscored = pod_uid.replace('-', "_");
        let parts = [
            "kubepods.slice".to_string(),
            "kubepods-besteffort.slice".to_string(),
            format!("kubepods-besteffort-pod{underscored}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ];
        let mut path = self.root.clone();
        for part in parts {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .with_context(|| format!("cannot create the cgroup {}", path.display()))?;
                self.created.push(path.clone());
            }
        }
        Ok(path)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for path in self.created.iter().rev() {
            // A cgroup can be removed once its processes are gone, shortly after they exit.
            let deadline = Instant::now() + REMOVE_TIMEOUT;
            loop {
                match std::fs::remove_dir(path) {
                    Ok(()) => break,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                    Err(err) if Instant::now() >= deadline => {
                        tracing::warn!(cgroup = %path.display(), %err, "cannot remove cgroup");
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// Makes the process that `command` starts join the cgroup `cgroup` and see `token_dir` at
/// `token_mount`, through a bind mount in a new private mount namespace. A pod's container finds
/// its projected token in the same way.
pub fn enter_pod(
    command: &mut Command,
    cgroup: &Path,
    token_dir: &Path,
    token_mount: &Path,
) -> anyhow::Result<()> {
    let c_path = |path: &Path| {
        CString::new(path.as_os_str().as_encoded_bytes())
            .with_context(|| format!("the path {} contains a NUL byte", path.display()))
    };
    let procs = c_path(&cgroup.join("cgroup.procs"))?;
    let source = c_path(token_dir)?;
    let target = c_path(token_mount)?;
    // SAFETY: the closure runs between fork and exec and makes only system calls, on strings
    // built before the fork, so it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || join_pod(&procs, &source, &target));
    }
    Ok(())
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`, and bind-mounts
/// `source` over `target` in a new private mount namespace.
fn join_pod(procs: &CString, source: &CString, target: &CString) -> io::Result<()> {
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Writing 0 to cgroup.procs moves the writing process (cgroups(7)).
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Without this the bind mount would propagate back to the host's mount namespace.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
