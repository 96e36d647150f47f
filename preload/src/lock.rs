//! A spin lock that stays usable in a forked child.
//!
//! `std` and `parking_lot` mutexes are not safe to take in a child forked while another thread
//! held or waited on them: `parking_lot` keeps waiters in a process-wide table whose state the
//! child inherits half-updated. This lock is one atomic flag with no other state, so the fork
//! handlers can hold it across `fork` and release it in both processes. Critical sections in
//! this library are a few map operations and never include I/O, so spinning is short.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

/// Number of spins before a waiter yields the CPU, so that a holder preempted on the same core
/// can run.
const SPINS_BEFORE_YIELD: u32 = 64;

pub struct SpinLock<T> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialized by `locked`; `T: Send` lets it move between threads.
unsafe impl<T: Send> Sync for SpinLock<T> {}

pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    pub const fn new(data: T) -> SpinLock<T> {
        SpinLock {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(data),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.acquire();
        SpinGuard { lock: self }
    }

    fn acquire(&self) {
        let mut spins = 0;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                if spins < SPINS_BEFORE_YIELD {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                }
            }
        }
    }

    /// Takes the lock without a guard, for a `pthread_atfork` prepare handler.
    pub fn lock_before_fork(&self) {
        self.acquire();
    }

    /// Releases the lock taken by [`SpinLock::lock_before_fork`].
    ///
    /// # Safety
    /// Only a fork handler may call this, after `lock_before_fork` in the same thread.
    pub unsafe fn unlock_after_fork(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// The protected data, for a fork handler that holds the lock without a guard.
    ///
    /// # Safety
    /// The caller must hold the lock through [`SpinLock::lock_before_fork`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn data_while_forking(&self) -> &mut T {
        // SAFETY: the caller holds the lock, so no other reference exists.
        unsafe { &mut *self.data.get() }
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, and `&mut self` makes this reference unique.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn spin_lock_serializes_threads() {
        let counter = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *counter.lock() += 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*counter.lock(), 80_000);
    }
}
