//! The library's settings, read once from `ENVPROXY_*` variables.

use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The result of `getenv` for a reference that cannot be resolved and has no stale value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// `getenv` returns the reference unchanged.
    Reference,
    /// `getenv` returns NULL, as if the variable were not set.
    Unset,
    /// The process exits with [`EXIT_CONFIG`] after the error line.
    Exit,
}

/// Exit status for `ENVPROXY_ON_ERROR=exit`: `EX_CONFIG` from `sysexits.h`.
pub const EXIT_CONFIG: i32 = 78;

pub const DEFAULT_TTL_SECS: u64 = 30;
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;

#[derive(Debug)]
pub struct Settings {
    /// `ENVPROXY_ENABLED`, default on; `0` turns every interposed symbol into plain libc.
    pub enabled: bool,
    /// `ENVPROXY_DEBUG=1`: one stderr line per decision.
    pub debug: bool,
    /// `ENVPROXY_CACHE_TTL` in milliseconds. With 0 every call sends a request to the agent.
    pub ttl_ms: u64,
    /// `ENVPROXY_TIMEOUT_MS`: the longest one `getenv` waits for the agent.
    pub timeout_ms: u64,
    /// `ENVPROXY_ON_ERROR`.
    pub on_error: OnError,
    /// `ENVPROXY_LOOKUP_UNSET=1`: ask the agent for names absent from the environment.
    pub lookup_unset: bool,
    /// `ENVPROXY_SOCKET`, else the per-user default of the local agent.
    pub socket: PathBuf,
    /// `ENVPROXY_NO_PYTHON` set to `1`, `true` or `yes` (any case) skips the Python hook.
    pub no_python: bool,
    /// `ENVPROXY_NO_JAVA` set to `1`, `true` or `yes` (any case) skips the Java hook.
    pub no_java: bool,
    /// `ENVPROXY_NO_PERL` set to `1`, `true` or `yes` (any case) skips the Perl hook.
    pub no_perl: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Returns the settings, reading them on first use.
#[inline]
pub fn get() -> &'static Settings {
    SETTINGS.get_or_init(Settings::from_environment)
}

impl Settings {
    fn from_environment() -> Settings {
        let ttl_secs = number("ENVPROXY_CACHE_TTL", DEFAULT_TTL_SECS);
        Settings {
            enabled: !read(c"ENVPROXY_ENABLED")
                .is_some_and(|value| envproxy_proto::is_disabled(&value)),
            debug: flag(c"ENVPROXY_DEBUG"),
            ttl_ms: ttl_secs.saturating_mul(1000),
            timeout_ms: timeout_ms(),
            on_error: on_error(),
            lookup_unset: flag(c"ENVPROXY_LOOKUP_UNSET"),
            socket: socket_path(),
            no_python: switch(c"ENVPROXY_NO_PYTHON"),
            no_java: switch(c"ENVPROXY_NO_JAVA"),
            no_perl: switch(c"ENVPROXY_NO_PERL"),
        }
    }
}

/// Reads a variable from `environ` directly, never through the interposed `getenv`.
pub fn read(name: &CStr) -> Option<String> {
    // SAFETY: `name` is NUL-terminated; the scan returns a NUL-terminated string owned by
    // the environment.
    let value = unsafe { crate::real::find_in_environ(name.as_ptr()) }?;
    // SAFETY: the string is NUL-terminated.
    let value = unsafe { CStr::from_ptr(value.as_ptr()) };
    Some(value.to_string_lossy().into_owned())
}

fn flag(name: &CStr) -> bool {
    read(name).as_deref() == Some("1")
}

/// Reads a hook switch, which `envproxy check` reads with the same [`is_switch_on`].
///
/// [`is_switch_on`]: envproxy_proto::is_switch_on
fn switch(name: &CStr) -> bool {
    read(name).is_some_and(|value| envproxy_proto::is_switch_on(&value))
}

fn number(name: &str, default: u64) -> u64 {
    let c_name = std::ffi::CString::new(name).expect("variable names contain no NUL");
    let Some(text) = read(&c_name) else {
        return default;
    };
    match text.trim().parse::<u64>() {
        Ok(n) => n,
        Err(err) if *err.kind() == std::num::IntErrorKind::PosOverflow => {
            crate::diag::line(&format!(
                "{name}={text:?} is too large (the maximum is {}); using the default {default}",
                u64::MAX
            ));
            default
        }
        Err(_) => {
            crate::diag::line(&format!(
                "{name}={text:?} is not a whole number; using the default {default}"
            ));
            default
        }
    }
}

fn timeout_ms() -> u64 {
    let timeout = number("ENVPROXY_TIMEOUT_MS", DEFAULT_TIMEOUT_MS);
    if timeout == 0 {
        crate::diag::line(&format!(
            "ENVPROXY_TIMEOUT_MS=0 would fail every request; using the default {DEFAULT_TIMEOUT_MS}"
        ));
        return DEFAULT_TIMEOUT_MS;
    }
    timeout
}

fn on_error() -> OnError {
    match read(c"ENVPROXY_ON_ERROR").as_deref() {
        None | Some("") | Some("reference") => OnError::Reference,
        Some("unset") => OnError::Unset,
        Some("exit") => OnError::Exit,
        Some(other) => {
            crate::diag::line(&format!(
                "ENVPROXY_ON_ERROR={other:?} is not one of reference, unset, exit; \
                 using reference"
            ));
            OnError::Reference
        }
    }
}

fn socket_path() -> PathBuf {
    if let Some(path) = read(c"ENVPROXY_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let runtime_dir = read(c"XDG_RUNTIME_DIR").map(PathBuf::from);
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    envproxy_proto::socket_path::local_socket_path(runtime_dir.as_deref(), uid)
}
