//! `libenvproxy.so`: resolves secret references when a program calls `getenv`.
//!
//! Loaded with `LD_PRELOAD`, the library interposes `getenv` and `secure_getenv`. A variable
//! whose value starts with `vault:`, `k8s:` or `envproxy:` is resolved by the EnvProxy agent
//! over a Unix socket. Every other value costs one lookup in `environ` plus a prefix check. It
//! also interposes the `exec` family and `posix_spawn`, so that a child started with a copy of
//! the resolved environment receives the references again, never the values, and `close`,
//! `dup2`, `dup3`, `close_range` and `closefrom`, to notice when the program closes or replaces
//! the descriptor of a pooled connection to the agent.
//!
//! Layout:
//! - [`interpose`]: the exported C symbols, each behind the panic guard of [`ffi`].
//! - [`resolve`]: what one `getenv` of a reference returns (cache, agent, stale, errors).
//! - [`cache`]: the per-thread and per-process caches and the interned values.
//! - [`agent`]: the connection pool and the deadline-bounded request to the agent.
//! - [`descriptors`]: notices when the program closes or replaces the pool's descriptors.
//! - [`forked`]: tells a forked child from its parent without a system call.
//! - [`exec_list`]: `execl`, `execlp` and `execle`, whose variadic lists a C file collects.
//! - [`child_env`]: the rewrite of a child's environment from values back to references.
//! - [`settings`]: the `ENVPROXY_*` variables, read once.
//! - [`hooks`]: makes the runtime hooks findable (`PYTHONPATH`, `JAVA_TOOL_OPTIONS`) at load.
//! - [`jvm_agent`]: the JVMTI agent that installs the Java hook in a starting JVM.
//! - [`real`]: the next definitions of the interposed libc symbols.
//! - [`diag`]: the stderr lines (debug decisions, one error line per variable).
//! - [`clock`]: monotonic time in milliseconds.
//! - [`lock`]: the spin lock that the fork handlers can hold across `fork`.

mod agent;
mod cache;
mod child_env;
mod clock;
mod descriptors;
mod diag;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod exec_list;
mod ffi;
mod forked;
mod hooks;
mod interpose;
mod jvm_agent;
mod lock;
mod real;
mod resolve;
mod settings;

/// Runs when the loader maps the library, before the program's `main`.
extern "C" fn on_load() {
    ffi::guard((), || {
        ffi::install_panic_hook();
        // The interposed descriptor functions run whether or not the library is enabled.
        real::resolve_descriptor_functions();
        let settings = settings::get();
        if !settings.enabled {
            return;
        }
        forked::init();
        child_env::snapshot_initial_environment();
        agent::register_fork_handlers();
        cache::register_fork_handlers();
        hooks::install(settings);
    });
}

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;
