//! The exported C symbols that replace libc's.
//!
//! Each runs its Rust code behind [`guard`], whose fallback is what libc alone would return,
//! so no panic crosses into the host program.

use std::ffi::{c_char, c_int, c_uint};

use libc::pid_t;

use crate::child_env::{self, ChildEnv};
use crate::descriptors;
use crate::ffi::guard;
use crate::real;
use crate::resolve;
use crate::settings;

/// Returns whether a C string starts with `vault:`, `envproxy:` or `k8s:`.
///
/// # Safety
/// `value` must be a valid NUL-terminated string.
#[inline]
unsafe fn is_reference(value: *const c_char) -> bool {
    // SAFETY: `starts_with` stops at the first differing byte, and the NUL terminator differs
    // from every byte of the prefixes, so no byte past the terminator is read.
    unsafe {
        match *value as u8 {
            b'v' => starts_with(value, envproxy_proto::reference::VAULT_SCHEME.as_bytes()),
            b'e' => starts_with(value, envproxy_proto::reference::LOCAL_SCHEME.as_bytes()),
            b'k' => starts_with(
                value,
                envproxy_proto::reference::KUBERNETES_SCHEME.as_bytes(),
            ),
            _ => false,
        }
    }
}

#[inline]
unsafe fn starts_with(value: *const c_char, prefix: &[u8]) -> bool {
    for (i, &expected) in prefix.iter().enumerate() {
        // SAFETY: bytes up to and including the first mismatch (at worst the NUL) are part of
        // the string.
        if unsafe { *value.add(i) } as u8 != expected {
            return false;
        }
    }
    true
}

/// Interposed `getenv(3)`.
///
/// A plain value is libc's own pointer. A resolved reference is a pointer to memory owned by
/// the library: the caller must not free or modify it, and it stays valid for the life of the
/// process, even after the value changes.
///
/// # Safety
/// `name` must be a valid NUL-terminated string, as for libc's `getenv`.
#[no_mangle]
pub unsafe extern "C" fn getenv(name: *const c_char) -> *mut c_char {
    // SAFETY: same contract as the caller's.
    let Some(value) = (unsafe { real::find_in_environ(name) }) else {
        // SAFETY: same contract as the caller's.
        return unsafe { getenv_absent(name) };
    };
    let value = value.as_ptr();
    // SAFETY: the lookup returned a NUL-terminated value.
    if unsafe { is_reference(value) } {
        // SAFETY: `name` and `value` are NUL-terminated; `value` points into the environment.
        return unsafe { getenv_reference(name, value) };
    }
    value
}

// The two paths below are kept out of line so that the plain-value path of `getenv` stays a
// short function with few registers to save.

/// # Safety
/// `name` must be NULL or NUL-terminated.
#[cold]
#[inline(never)]
unsafe fn getenv_absent(name: *const c_char) -> *mut c_char {
    if !settings::get().lookup_unset {
        return std::ptr::null_mut();
    }
    // SAFETY: the caller guarantees a NUL-terminated name (NULL is checked inside).
    guard(std::ptr::null_mut(), || unsafe { resolve::absent(name) })
}

/// # Safety
/// `name` and `value` must be NUL-terminated; `value` points into the environment.
#[cold]
#[inline(never)]
unsafe fn getenv_reference(name: *const c_char, value: *mut c_char) -> *mut c_char {
    // SAFETY: the caller's guarantees.
    guard(value, || unsafe { resolve::reference(name, value) })
}

/// Interposed `secure_getenv(3)`: NULL in secure execution (setuid, setgid, capabilities),
/// as glibc does, otherwise [`getenv`].
///
/// # Safety
/// As for [`getenv`].
#[no_mangle]
pub unsafe extern "C" fn secure_getenv(name: *const c_char) -> *mut c_char {
    // SAFETY: getauxval has no preconditions.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: same contract.
    unsafe { getenv(name) }
}

fn rewrite(envp: *const *const c_char) -> Option<ChildEnv> {
    if !settings::get().enabled {
        return None;
    }
    // SAFETY: every caller passes an envp array from its own C caller, who guarantees its
    // shape as execve(2) requires.
    guard(None, || unsafe { child_env::rewrite(envp) })
}

fn no_symbol() -> c_int {
    // SAFETY: errno is a thread-local lvalue.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}

/// Interposed `execve(2)`: the child receives references in place of resolved values.
///
/// # Safety
/// As for libc's `execve`.
#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(next) = real::execve() else {
        return no_symbol();
    };
    let child = rewrite(envp);
    let envp = child.as_ref().map_or(envp, ChildEnv::as_ptr);
    // SAFETY: same contract; `child` outlives the call.
    unsafe { next(path, argv, envp) }
}

/// Interposed `execvpe(3)`.
///
/// # Safety
/// As for libc's `execvpe`.
#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(next) = real::execvpe() else {
        return no_symbol();
    };
    let child = rewrite(envp);
    let envp = child.as_ref().map_or(envp, ChildEnv::as_ptr);
    // SAFETY: same contract; `child` outlives the call.
    unsafe { next(file, argv, envp) }
}

/// Interposed `fexecve(3)`.
///
/// # Safety
/// As for libc's `fexecve`.
#[no_mangle]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(next) = real::fexecve() else {
        return no_symbol();
    };
    let child = rewrite(envp);
    let envp = child.as_ref().map_or(envp, ChildEnv::as_ptr);
    // SAFETY: same contract; `child` outlives the call.
    unsafe { next(fd, argv, envp) }
}

/// Interposed `execv(3)`, which passes the process's own `environ`: it holds references
/// unless the program copied a resolved value into it with `setenv`.
///
/// # Safety
/// As for libc's `execv`.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    if let Some(child) = rewrite(real::environ_ptr()) {
        let Some(next) = real::execve() else {
            return no_symbol();
        };
        // SAFETY: same contract; `child` outlives the call.
        return unsafe { next(path, argv, child.as_ptr()) };
    }
    let Some(next) = real::execv() else {
        return no_symbol();
    };
    // SAFETY: same contract.
    unsafe { next(path, argv) }
}

/// Interposed `execvp(3)`, see [`execv`].
///
/// # Safety
/// As for libc's `execvp`.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    if let Some(child) = rewrite(real::environ_ptr()) {
        let Some(next) = real::execvpe() else {
            return no_symbol();
        };
        // SAFETY: same contract; `child` outlives the call.
        return unsafe { next(file, argv, child.as_ptr()) };
    }
    let Some(next) = real::execvp() else {
        return no_symbol();
    };
    // SAFETY: same contract.
    unsafe { next(file, argv) }
}

/// Interposed `posix_spawn(3)`.
///
/// # Safety
/// As for libc's `posix_spawn`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attrp: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let Some(next) = real::posix_spawn() else {
        return libc::ENOSYS;
    };
    let child = rewrite(envp.cast());
    let envp = child.as_ref().map_or(envp, |c| c.as_ptr().cast());
    // SAFETY: same contract; `child` outlives the call.
    unsafe { next(pid, path, file_actions, attrp, argv, envp) }
}

/// Interposed `posix_spawnp(3)`.
///
/// # Safety
/// As for libc's `posix_spawnp`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    file_actions: *const libc::posix_spawn_file_actions_t,
    attrp: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let Some(next) = real::posix_spawnp() else {
        return libc::ENOSYS;
    };
    let child = rewrite(envp.cast());
    let envp = child.as_ref().map_or(envp, |c| c.as_ptr().cast());
    // SAFETY: same contract; `child` outlives the call.
    unsafe { next(pid, file, file_actions, attrp, argv, envp) }
}

// The descriptor functions below let the connection pool notice that the program closed or
// replaced one of its sockets (see `descriptors`). Their own code only reads and writes
// atomics, so it cannot panic and stays async-signal-safe, as `close` and `dup2` must be.
// Where libc lacks one (glibc before 2.34 has no `close_range` or `closefrom`), they make the
// system call themselves, except `dup2`, which then fails with ENOSYS as the exec functions do.

/// Interposed `close(2)`.
///
/// # Safety
/// As for libc's `close`.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    descriptors::note_closing(fd, fd);
    match real::close() {
        // SAFETY: same contract.
        Some(next) => unsafe { next(fd) },
        // SAFETY: close(2) takes any descriptor number.
        None => unsafe { libc::syscall(libc::SYS_close, fd) as c_int },
    }
}

/// Interposed `dup2(2)`: `new_fd` is closed and replaced unless it equals `old_fd`.
///
/// # Safety
/// As for libc's `dup2`.
#[no_mangle]
pub unsafe extern "C" fn dup2(old_fd: c_int, new_fd: c_int) -> c_int {
    if old_fd != new_fd {
        descriptors::note_closing(new_fd, new_fd);
    }
    match real::dup2() {
        // SAFETY: same contract.
        Some(next) => unsafe { next(old_fd, new_fd) },
        None => no_symbol(),
    }
}

/// Interposed `dup3(2)`.
///
/// # Safety
/// As for libc's `dup3`.
#[no_mangle]
pub unsafe extern "C" fn dup3(old_fd: c_int, new_fd: c_int, flags: c_int) -> c_int {
    if old_fd != new_fd {
        descriptors::note_closing(new_fd, new_fd);
    }
    match real::dup3() {
        // SAFETY: same contract.
        Some(next) => unsafe { next(old_fd, new_fd, flags) },
        // SAFETY: dup3(2) takes any descriptor numbers and flags.
        None => unsafe { libc::syscall(libc::SYS_dup3, old_fd, new_fd, flags) as c_int },
    }
}

/// Interposed `close_range(2)`. With `CLOSE_RANGE_CLOEXEC` nothing is closed, but the range
/// is noted all the same: an extra `fstat` costs less than a missed close.
///
/// # Safety
/// As for libc's `close_range`.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    descriptors::note_closing(descriptor_at_most(first), descriptor_at_most(last));
    match real::close_range() {
        // SAFETY: same contract.
        Some(next) => unsafe { next(first, last, flags) },
        // SAFETY: close_range(2) takes any range and flags.
        None => unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) as c_int },
    }
}

/// Interposed `closefrom(3)`.
///
/// # Safety
/// As for libc's `closefrom`.
#[no_mangle]
pub unsafe extern "C" fn closefrom(lowest: c_int) {
    descriptors::note_closing(lowest.max(0), c_int::MAX);
    match real::closefrom() {
        // SAFETY: same contract.
        Some(next) => unsafe { next(lowest) },
        // SAFETY: the caller gives up every descriptor from `lowest` on.
        None => unsafe { close_from_without_libc(lowest.max(0)) },
    }
}

/// Closes every descriptor from `lowest` on with `close_range(2)`, or, on kernels before 5.9
/// that lack it, one `close` per number below the descriptor limit.
///
/// # Safety
/// The caller must own every descriptor from `lowest` on.
unsafe fn close_from_without_libc(lowest: c_int) {
    // SAFETY: close_range(2) takes any range.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, lowest, c_uint::MAX, 0) } == 0;
    if closed {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let end = c_int::try_from(limit.rlim_cur).unwrap_or(c_int::MAX);
    for fd in lowest..end {
        // SAFETY: the caller owns these descriptors; close(2) accepts numbers not open.
        unsafe { libc::syscall(libc::SYS_close, fd) };
    }
}

/// Converts a `close_range` bound to a descriptor number, which never exceeds `c_int::MAX`.
fn descriptor_at_most(bound: c_uint) -> c_int {
    c_int::try_from(bound).unwrap_or(c_int::MAX)
}

// The wrappers that `src/c/exec_list.c` calls from `execl`, `execlp` and `execle` once it has
// collected their variadic arguments into an array. The C file declares these names hidden, so
// the linker binds its calls here directly and does not export the names.

/// [`execv`] for `execl`.
///
/// # Safety
/// As for libc's `execv`.
#[no_mangle]
pub unsafe extern "C" fn envproxy_execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: same contract.
    unsafe { execv(path, argv) }
}

/// [`execvp`] for `execlp`.
///
/// # Safety
/// As for libc's `execvp`.
#[no_mangle]
pub unsafe extern "C" fn envproxy_execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: same contract.
    unsafe { execvp(file, argv) }
}

/// [`execve`] for `execle`.
///
/// # Safety
/// As for libc's `execve`.
#[no_mangle]
pub unsafe extern "C" fn envproxy_execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: same contract.
    unsafe { execve(path, argv, envp) }
}
