//! The library's stderr lines. It never writes to stdout, and never a value.

use std::ffi::CStr;

/// Writes `envproxy[PID]: MESSAGE` and a newline to stderr with one `write` call.
///
/// Uses `write(2)` directly: no buffering to interleave with the program's own stdio, and no
/// lock that a forked child could inherit.
pub fn line(message: &str) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let text = format!("envproxy[{pid}]: {message}\n");
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid readable buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            let interrupted =
                n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
            if interrupted {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Writes a decision line when `ENVPROXY_DEBUG=1`.
pub fn debug(name: &CStr, decision: &str) {
    if crate::settings::get().debug {
        line(&format!("{}: {decision}", name.to_string_lossy()));
    }
}
