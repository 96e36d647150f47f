//! Monotonic time in milliseconds.

/// Milliseconds of `CLOCK_MONOTONIC_COARSE`, for cache expiry.
///
/// The coarse clock is read from the vDSO without a system call and is precise to a few
/// milliseconds, which is ample for TTLs counted in seconds.
#[inline]
pub fn coarse_ms() -> u64 {
    read_ms(libc::CLOCK_MONOTONIC_COARSE)
}

/// Milliseconds of `CLOCK_MONOTONIC`, for I/O deadlines.
pub fn precise_ms() -> u64 {
    read_ms(libc::CLOCK_MONOTONIC)
}

fn read_ms(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock ids are supported on Linux.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}
