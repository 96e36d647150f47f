//! Tells a forked child from the process that last claimed the connection pool, without a
//! system call on each request.
//!
//! A page mapped with `MADV_WIPEONFORK` (Linux 4.14 and later) reads as zeros in every child
//! that gets a copy of the address space: `fork`, `_Fork` and `clone` without `CLONE_VM`,
//! whether or not the `pthread_atfork` handlers ran. Its first byte is 1 in the process that
//! claimed it. Where the kernel rejects the advice, the process id is compared instead, which
//! costs one `getpid` per check.

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};

/// [`MARKER`] before the page was mapped.
const UNMAPPED: usize = 0;
/// [`MARKER`] when the kernel has no `MADV_WIPEONFORK`.
const UNAVAILABLE: usize = 1;

/// The address of the marker page, or one of the two values above.
static MARKER: AtomicUsize = AtomicUsize::new(UNMAPPED);
/// The claiming process, used only when the marker page is unavailable.
static OWNER_PID: AtomicI32 = AtomicI32::new(0);

/// Maps the marker page now, so that later checks make no system call.
pub fn init() {
    marker();
}

/// Returns whether this process is not the one that last called [`claim`]: a child forked
/// since, or a process that never claimed.
pub fn is_new_process() -> bool {
    match marker() {
        Some(byte) => byte.load(Ordering::Relaxed) == 0,
        None => OWNER_PID.load(Ordering::Relaxed) != current_pid(),
    }
}

/// Makes this process the owner, so [`is_new_process`] returns `false` until the next fork.
pub fn claim() {
    match marker() {
        Some(byte) => byte.store(1, Ordering::Relaxed),
        None => OWNER_PID.store(current_pid(), Ordering::Relaxed),
    }
}

fn current_pid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

fn marker() -> Option<&'static AtomicU8> {
    let mut address = MARKER.load(Ordering::Acquire);
    if address == UNMAPPED {
        let mapped = map_marker_page();
        address =
            match MARKER.compare_exchange(UNMAPPED, mapped, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => mapped,
                Err(existing) => {
                    // Another thread mapped its page first.
                    unmap(mapped);
                    existing
                }
            };
    }
    if address == UNAVAILABLE {
        return None;
    }
    // SAFETY: `address` is the start of a readable and writable page that is never unmapped,
    // and an AtomicU8 has no alignment requirement.
    Some(unsafe { &*(address as *const AtomicU8) })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Maps a zeroed page that children see as zeros again, or returns [`UNAVAILABLE`].
fn map_marker_page() -> usize {
    let size = page_size();
    // SAFETY: an anonymous private mapping at an address the kernel chooses touches no
    // existing memory.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return UNAVAILABLE;
    }
    // SAFETY: `page` is the mapping made above, `size` bytes long.
    if unsafe { libc::madvise(page, size, libc::MADV_WIPEONFORK) } != 0 {
        // SAFETY: as above; nothing refers to the page yet.
        unsafe { libc::munmap(page, size) };
        return UNAVAILABLE;
    }
    page as usize
}

fn unmap(address: usize) {
    if address != UNAVAILABLE && address != UNMAPPED {
        // SAFETY: `address` is a page from `map_marker_page` that was never published.
        unsafe { libc::munmap(address as *mut libc::c_void, page_size()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child made by the `clone` system call, which runs no `pthread_atfork` handler (the
    /// library's own handler would claim the marker in the child).
    #[test]
    fn child_is_new_process() {
        claim();
        assert!(!is_new_process(), "the claiming process is not new");
        // SAFETY: with only SIGCHLD as flags, clone copies the process as fork does; the child
        // only reads memory and calls _exit.
        let child = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
        let child = libc::pid_t::try_from(child).expect("clone returned a pid");
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let status = if is_new_process() { 0 } else { 1 };
            // SAFETY: _exit ends the child at once, without running the test harness.
            unsafe { libc::_exit(status) };
        }
        let mut status = 0;
        // SAFETY: `child` is this process's child and `status` is writable.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status), "the child did not exit");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child saw itself as the owner"
        );
        assert!(!is_new_process(), "the parent stays the owner after fork");
    }
}
