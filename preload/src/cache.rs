//! The per-process and per-thread caches of resolved values.
//!
//! Values are interned: each distinct value of a (name, reference) pair is copied once into a
//! NUL-terminated allocation that is never freed, so a pointer returned by `getenv` stays valid
//! for the life of the process. A refresh that returns the same bytes reuses the pointer, so
//! memory grows only when a value actually changes.
//!
//! The process cache sits behind one mutex that is never held during I/O. In front of it each
//! thread keeps a small cache of fresh entries, so a repeated `getenv` of a cached reference
//! takes no lock shared between threads and makes no system call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, CStr};

use crate::lock::SpinLock;

/// Maximum entries in one thread's cache before it is emptied and refilled from the process
/// cache. Programs read far fewer distinct references than this.
const MAX_LOCAL_ENTRIES: usize = 256;

/// A value handed out by `getenv`: NUL-terminated, never freed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Interned(*mut c_char);

// SAFETY: the pointee is immutable after creation and never freed, so the pointer may be read
// from any thread.
unsafe impl Send for Interned {}

impl Interned {
    fn new(bytes: &[u8]) -> Interned {
        let mut copy = Vec::with_capacity(bytes.len() + 1);
        copy.extend_from_slice(bytes);
        copy.push(0);
        Interned(Box::leak(copy.into_boxed_slice()).as_mut_ptr().cast())
    }

    pub fn as_ptr(self) -> *mut c_char {
        self.0
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: created by `Interned::new` from a NUL-terminated copy that is never freed.
        unsafe { CStr::from_ptr(self.0) }.to_bytes()
    }
}

/// One (variable name, reference) pair in the process cache. An empty reference stands for a
/// name looked up while absent from the environment (`ENVPROXY_LOOKUP_UNSET=1`).
#[derive(Default)]
struct Entry {
    /// The current value; `None` before the first success or after "not found".
    current: Option<Interned>,
    /// Whether `current` reflects a response from the agent, including "not found".
    answered: bool,
    fresh_until_ms: u64,
    /// No new request to the agent before this time, after a failure.
    retry_after_ms: u64,
    /// The error line for the current failure was written.
    reported: bool,
    /// Every value ever handed out for this pair, for the rewrite of children's environments.
    served: Vec<Interned>,
}

type Key = (Box<[u8]>, Box<[u8]>);

static PROCESS: SpinLock<Option<HashMap<Key, Entry>>> = SpinLock::new(None);

struct LocalEntry {
    name: Box<[u8]>,
    reference: Box<[u8]>,
    /// Null when the agent responded "not found".
    value: *mut c_char,
    fresh_until_ms: u64,
}

thread_local! {
    static LOCAL: RefCell<Vec<LocalEntry>> = const { RefCell::new(Vec::new()) };
}

/// The state of a pair in the process cache at a given time.
pub enum Lookup {
    /// A fresh response. The pointer is null when the agent responded "not found".
    Fresh(*mut c_char),
    /// A recent failure; no request before its retry time. Carries the stale value, if any.
    BackingOff(Option<Interned>),
    /// The agent must be asked.
    Miss,
}

/// Looks a pair up in this thread's cache; `None` when absent or expired.
#[inline]
pub fn local_get(name: &CStr, reference: &[u8], now_ms: u64) -> Option<*mut c_char> {
    let name = name.to_bytes();
    LOCAL
        .try_with(|local| {
            let local = local.try_borrow().ok()?;
            let entry = local
                .iter()
                .find(|e| *e.name == *name && *e.reference == *reference)?;
            (now_ms < entry.fresh_until_ms).then_some(entry.value)
        })
        .ok()
        .flatten()
}

/// Stores a fresh response in this thread's cache.
pub fn local_put(name: &CStr, reference: &[u8], value: *mut c_char, fresh_until_ms: u64) {
    let name = name.to_bytes();
    let _ = LOCAL.try_with(|local| {
        let Ok(mut local) = local.try_borrow_mut() else {
            return;
        };
        if let Some(entry) = local
            .iter_mut()
            .find(|e| *e.name == *name && *e.reference == *reference)
        {
            entry.value = value;
            entry.fresh_until_ms = fresh_until_ms;
            return;
        }
        if local.len() >= MAX_LOCAL_ENTRIES {
            local.clear();
        }
        local.push(LocalEntry {
            name: name.into(),
            reference: reference.into(),
            value,
            fresh_until_ms,
        });
    });
}

fn key(name: &CStr, reference: &[u8]) -> Key {
    (name.to_bytes().into(), reference.into())
}

/// Looks a pair up in the process cache.
pub fn get(name: &CStr, reference: &[u8], now_ms: u64) -> Lookup {
    let mut guard = PROCESS.lock();
    let Some(entry) = guard
        .get_or_insert_with(HashMap::new)
        .get(&key(name, reference))
    else {
        return Lookup::Miss;
    };
    if entry.answered && now_ms < entry.fresh_until_ms {
        let value = entry.current.map_or(std::ptr::null_mut(), Interned::as_ptr);
        return Lookup::Fresh(value);
    }
    if now_ms < entry.retry_after_ms {
        return Lookup::BackingOff(entry.current);
    }
    Lookup::Miss
}

/// Records a resolved value and returns its interned pointer.
pub fn put_value(name: &CStr, reference: &[u8], value: &[u8], fresh_until_ms: u64) -> Interned {
    let mut guard = PROCESS.lock();
    let entry = guard
        .get_or_insert_with(HashMap::new)
        .entry(key(name, reference))
        .or_default();
    let interned = match entry.served.iter().find(|v| v.bytes() == value) {
        Some(existing) => *existing,
        None => {
            let created = Interned::new(value);
            entry.served.push(created);
            created
        }
    };
    entry.current = Some(interned);
    entry.answered = true;
    entry.fresh_until_ms = fresh_until_ms;
    entry.retry_after_ms = 0;
    entry.reported = false;
    interned
}

/// Records a "not found" response that is fresh until the given time.
pub fn put_absent(name: &CStr, reference: &[u8], fresh_until_ms: u64) {
    let mut guard = PROCESS.lock();
    let entry = guard
        .get_or_insert_with(HashMap::new)
        .entry(key(name, reference))
        .or_default();
    entry.current = None;
    entry.answered = true;
    entry.fresh_until_ms = fresh_until_ms;
}

/// The outcome of recording a failure.
pub struct Failure {
    /// The last value, to serve while the agent is unreachable.
    pub stale: Option<Interned>,
    /// Whether this failure still needs its error line (first failure since a success).
    pub report: bool,
}

/// Records a failure to resolve a pair; no request is made for it before `retry_after_ms`.
///
/// `authoritative` failures (the agent responded with an error or "not found") drop the stale
/// value, because an older value must not mask the agent's own response.
pub fn put_failure(
    name: &CStr,
    reference: &[u8],
    retry_after_ms: u64,
    authoritative: bool,
) -> Failure {
    let mut guard = PROCESS.lock();
    let entry = guard
        .get_or_insert_with(HashMap::new)
        .entry(key(name, reference))
        .or_default();
    if authoritative {
        entry.current = None;
        entry.answered = false;
    }
    entry.retry_after_ms = retry_after_ms;
    let report = !entry.reported;
    entry.reported = true;
    Failure {
        stale: entry.current,
        report,
    }
}

/// The origin of a value in a child's environment: the reference this process resolved it from.
pub struct Served {
    /// The reference the value was resolved from, or empty for a name that was absent from
    /// the environment and looked up by name (`ENVPROXY_LOOKUP_UNSET=1`).
    pub reference: Vec<u8>,
    /// Whether it was resolved for the same variable name.
    pub same_name: bool,
}

/// A lookup from (variable name, value) to how this process resolved that value.
pub type ServedLookup<'a> = dyn Fn(&[u8], &[u8]) -> Option<Served> + 'a;

/// Calls `visit` with a lookup from (name, value) to how that value was resolved, holding the
/// cache lock once for all lookups. The lookup prefers an entry of the same name, then one with
/// a reference over a name that was looked up while absent.
pub fn with_served<T>(visit: impl FnOnce(&ServedLookup<'_>) -> T) -> T {
    let guard = PROCESS.lock();
    let empty = HashMap::new();
    let entries = guard.as_ref().unwrap_or(&empty);
    let lookup = |name: &[u8], value: &[u8]| -> Option<Served> {
        let mut other_name: Option<Served> = None;
        for ((entry_name, reference), entry) in entries {
            if !entry.served.iter().any(|v| v.bytes() == value) {
                continue;
            }
            if **entry_name == *name {
                return Some(Served {
                    reference: reference.to_vec(),
                    same_name: true,
                });
            }
            let better = other_name
                .as_ref()
                .is_none_or(|found| found.reference.is_empty() && !reference.is_empty());
            if better {
                other_name = Some(Served {
                    reference: reference.to_vec(),
                    same_name: false,
                });
            }
        }
        other_name
    };
    visit(&lookup)
}

/// Returns whether any value was resolved in this process.
pub fn has_served_values() -> bool {
    PROCESS
        .lock()
        .as_ref()
        .is_some_and(|entries| entries.values().any(|e| !e.served.is_empty()))
}

extern "C" fn before_fork() {
    // Hold the lock across fork so the child never inherits it locked by another thread.
    PROCESS.lock_before_fork();
}

extern "C" fn after_fork() {
    // SAFETY: `before_fork` took the lock in this thread.
    unsafe { PROCESS.unlock_after_fork() };
}

/// Registers the handlers that keep the cache lock consistent across `fork`.
pub fn register_fork_handlers() {
    // SAFETY: the handlers are plain functions that live for the life of the process.
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
}
