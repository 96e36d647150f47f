//! CPU affinity, for measurements that must not depend on where the scheduler places threads.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context};

/// Returns the lowest-numbered CPU this process may run on.
pub fn first_allowed_cpu() -> anyhow::Result<usize> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("sched_getaffinity failed");
    }
    let cpus = 8 * std::mem::size_of_val(&set);
    // SAFETY: CPU_ISSET reads one bit of `set`; `cpu` is below the set's size in bits.
    match (0..cpus).find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }) {
        Some(cpu) => Ok(cpu),
        None => bail!("sched_getaffinity returned an empty CPU set"),
    }
}

/// Makes the process that `command` starts, and every thread it creates, run only on `cpu`.
pub fn pin(command: &mut Command, cpu: usize) {
    let pin_child = move || {
        // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET writes one bit of `set`; the caller's cpu came from
        // first_allowed_cpu, so it is below the set's size in bits.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: sched_setaffinity is a plain system call, safe between fork and exec.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure makes one system call and allocates nothing, so it is safe to run in
    // the forked child before exec.
    unsafe { command.pre_exec(pin_child) };
}

/// Makes the calling thread run only on `cpu`; the process's other threads keep their CPUs.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set`; the caller's cpu came from first_allowed_cpu, so
    // it is below the set's size in bits.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: with pid 0, sched_setaffinity applies to the calling thread only; `set` is a
    // valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("sched_setaffinity to CPU {cpu} failed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_thread_sees_one_cpu() {
        let cpu = first_allowed_cpu().unwrap();
        let allowed = std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
                .map(|list| list.trim().to_string())
        })
        .join()
        .unwrap();
        assert_eq!(allowed, Some(cpu.to_string()));
    }

    #[test]
    fn pinned_child_sees_one_cpu() {
        let cpu = first_allowed_cpu().unwrap();
        let mut command = Command::new("grep");
        command.args(["Cpus_allowed_list", "/proc/self/status"]);
        pin(&mut command, cpu);
        let output = command.output().unwrap();
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            text.split_whitespace().last(),
            Some(cpu.to_string().as_str())
        );
    }
}
