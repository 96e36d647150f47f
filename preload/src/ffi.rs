//! The panic boundary: nothing unwinds out of an interposed symbol.

use std::panic::{self, AssertUnwindSafe};

/// Runs `body`, returning `fallback` if it panics.
///
/// Every exported function runs its Rust code through this guard and passes as `fallback` what
/// libc alone would have returned, so a bug in the library degrades to plain libc behaviour
/// instead of aborting the host program.
pub fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// Replaces the default panic message with one stderr line that gives only the location.
///
/// The hook belongs to this library's copy of the Rust runtime, so it changes nothing for a
/// Rust host program. Panic payloads are not printed because the library never formats a
/// value into one, and printing them would make that rule harder to check.
pub fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "unknown location".to_string());
        crate::diag::line(&format!(
            "internal error (a bug) at {location}; falling back to plain libc behaviour"
        ));
    }));
}
