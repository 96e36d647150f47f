//! Notices when the program closes or replaces a descriptor that refers to one of the
//! library's sockets, so that a pooled connection needs no `fstat` before each request.
//!
//! The library registers each socket it opens with [`watch`]. The interposed `close`, `dup2`,
//! `dup3`, `close_range` and `closefrom` call [`note_closing`] before they reach libc, and it
//! increments a process-wide change counter when the call can close or replace a registered
//! descriptor. A connection stores the counter's value from its last `fstat`, so a changed
//! counter means that its descriptor must be checked again before the next request.
//!
//! NOTE: a descriptor closed or replaced without going through these functions is not noticed:
//! a raw `syscall(SYS_close, fd)`, `syscall(SYS_close_range, ...)`, an io_uring close, or a call
//! inside libc itself (for example `freopen` on a stream opened on the library's descriptor).
//! See the `agent` module for what the next request then does.

use std::ffi::c_int;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// Registered descriptors at most. A connection opened while every slot is taken is never
/// trusted without `fstat`, which costs time but not safety.
const SLOTS: usize = 16;

/// A free slot.
const FREE: c_int = -1;

static WATCHED: [AtomicI32; SLOTS] = [const { AtomicI32::new(FREE) }; SLOTS];

/// Incremented before every interposed call that can close or replace a registered
/// descriptor.
static CHANGES: AtomicU64 = AtomicU64::new(0);

/// Registers `fd`, a socket the library has just opened. Returns `false` when every slot is
/// taken, and then `fd` is not watched.
pub fn watch(fd: c_int) -> bool {
    WATCHED.iter().any(|slot| {
        slot.compare_exchange(FREE, fd, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    })
}

/// Removes one registration of `fd`, made by [`watch`] when it returned `true`.
pub fn unwatch(fd: c_int) {
    for slot in &WATCHED {
        if slot
            .compare_exchange(fd, FREE, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// Returns the change counter. A connection whose descriptor was proven to be its socket
/// after the counter had this value stays its socket for as long as the counter keeps it,
/// unless a close bypassed the interposed functions.
#[inline]
pub fn changes() -> u64 {
    CHANGES.load(Ordering::SeqCst)
}

/// Records that the program is about to close or replace every descriptor from `first` to
/// `last` inclusive. Runs before the real call, so a request that reads [`changes`] after the
/// descriptor was reused sees the new count.
///
/// Async-signal-safe: it only reads and writes atomics, because `close` is called from signal
/// handlers and from children between `fork` and `exec`.
#[inline]
pub fn note_closing(first: c_int, last: c_int) {
    let covered = WATCHED.iter().any(|slot| {
        let fd = slot.load(Ordering::SeqCst);
        fd != FREE && first <= fd && fd <= last
    });
    if covered {
        CHANGES.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    /// Serializes the tests, because each reads the process-wide counter. Each test also uses
    /// descriptor numbers of its own that no real socket of the test process gets.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn close_of_watched_descriptor_counts() {
        let _serial = SERIAL.lock().unwrap_or_else(|err| err.into_inner());
        assert!(watch(100_001));
        let before = changes();
        note_closing(100_001, 100_001);
        assert!(changes() > before);
        unwatch(100_001);
    }

    #[test]
    fn close_of_other_descriptor_does_not_count() {
        let _serial = SERIAL.lock().unwrap_or_else(|err| err.into_inner());
        assert!(watch(100_011));
        let before = changes();
        note_closing(100_012, 100_020);
        note_closing(0, 100_010);
        assert_eq!(changes(), before);
        unwatch(100_011);
    }

    #[test]
    fn range_covering_watched_descriptor_counts() {
        let _serial = SERIAL.lock().unwrap_or_else(|err| err.into_inner());
        assert!(watch(100_021));
        let before = changes();
        note_closing(100_000, c_int::MAX);
        assert!(changes() > before);
        unwatch(100_021);
    }

    #[test]
    fn unwatched_descriptor_no_longer_counts() {
        let _serial = SERIAL.lock().unwrap_or_else(|err| err.into_inner());
        assert!(watch(100_031));
        unwatch(100_031);
        let before = changes();
        note_closing(100_031, 100_031);
        assert_eq!(changes(), before);
    }

    #[test]
    fn one_unwatch_per_watch() {
        let _serial = SERIAL.lock().unwrap_or_else(|err| err.into_inner());
        assert!(watch(100_041));
        assert!(watch(100_041));
        unwatch(100_041);
        let before = changes();
        note_closing(100_041, 100_041);
        assert!(changes() > before, "the second registration still counts");
        unwatch(100_041);
    }
}
