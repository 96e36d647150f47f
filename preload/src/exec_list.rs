//! The exported `execl`, `execlp` and `execle`, which take a variadic argument list.
//!
//! Stable Rust cannot define a C variadic function, so `src/c/exec_list.c` (compiled by
//! `build.rs`) collects the list into an array and calls [`crate::interpose`]'s `execv`,
//! `execvp` and `execve`. A static library's C symbols are not exported from a Rust cdylib, so
//! each exported name here is a naked function that jumps to the C definition. The jump leaves
//! every argument register, the stack arguments and `%al` (the vector register count of a
//! variadic call on x86-64) as the caller set them.
//!
//! NOTE: the jump is written for x86-64 and aarch64 only. On other architectures the module is
//! left out, so `execl`, `execlp` and `execle` there pass a value the program copied into its
//! environment on to the child.

extern "C" {
    fn envproxy_execl();
    fn envproxy_execlp();
    fn envproxy_execle();
}

/// Jumps to the C function `$target`, with the caller's registers and stack.
macro_rules! tail_jump {
    ($target:ident) => {{
        #[cfg(target_arch = "x86_64")]
        core::arch::naked_asm!("jmp {}", sym $target);
        #[cfg(target_arch = "aarch64")]
        core::arch::naked_asm!("b {}", sym $target);
    }};
}

/// Interposed `execl(3)`: as `execv` with the arguments up to the NULL.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn execl() {
    tail_jump!(envproxy_execl)
}

/// Interposed `execlp(3)`: as `execvp` with the arguments up to the NULL.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn execlp() {
    tail_jump!(envproxy_execlp)
}

/// Interposed `execle(3)`: as `execve` with the arguments up to the NULL and the environment
/// array after it.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn execle() {
    tail_jump!(envproxy_execle)
}
