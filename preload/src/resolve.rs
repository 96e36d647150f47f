//! The result of one `getenv` call for a reference, or for a name absent from the environment.

use std::cell::Cell;
use std::ffi::{c_char, CStr};

use envproxy_proto::{Reference, Request, Response};

use crate::agent::{self, AgentError};
use crate::cache::{self, Lookup};
use crate::clock;
use crate::diag;
use crate::settings::{self, OnError, EXIT_CONFIG};

/// After a failure, the time before the agent is asked again for the same pair. Calls in
/// between get the stale value or the error result at once instead of waiting again.
const RETRY_AFTER_MS: u64 = 1000;

/// Variables with this prefix configure EnvProxy and are never resolved.
const OWN_PREFIX: &[u8] = b"ENVPROXY_";

thread_local! {
    /// Set while this thread is inside the slow path, so a `getenv` made by code the library
    /// calls gets plain libc behaviour instead of recursing.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Resolves `reference`, the current value of variable `name`, returning what `getenv` gives
/// the program. `reference` is returned unchanged whenever the library passes the call
/// through.
///
/// # Safety
/// `name` and `reference` must be valid NUL-terminated strings; `reference` must stay valid
/// for the duration of the call (it points into the environment).
#[inline]
pub unsafe fn reference(name: *const c_char, reference: *mut c_char) -> *mut c_char {
    let settings = settings::get();
    if !settings.enabled {
        return reference;
    }
    // SAFETY: the caller guarantees both are NUL-terminated.
    let (name, reference_text) = unsafe { (CStr::from_ptr(name), CStr::from_ptr(reference)) };
    if name.to_bytes().starts_with(OWN_PREFIX) {
        return reference;
    }
    let reference_bytes = reference_text.to_bytes();
    if settings.ttl_ms > 0 {
        if let Some(value) = cache::local_get(name, reference_bytes, clock::coarse_ms()) {
            return value;
        }
    }
    with_busy_flag(reference, || {
        slow_path(name, Some(reference_text), reference)
    })
}

/// Asks the agent for `name`, which is absent from the environment
/// (`ENVPROXY_LOOKUP_UNSET=1`), returning NULL unless the agent has it.
///
/// # Safety
/// `name` must be a valid NUL-terminated string.
pub unsafe fn absent(name: *const c_char) -> *mut c_char {
    let settings = settings::get();
    if !settings.enabled || !settings.lookup_unset || name.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the caller guarantees a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) };
    if name.to_bytes().starts_with(OWN_PREFIX) || name.to_bytes().is_empty() {
        return std::ptr::null_mut();
    }
    if settings.ttl_ms > 0 {
        if let Some(value) = cache::local_get(name, b"", clock::coarse_ms()) {
            return value;
        }
    }
    with_busy_flag(std::ptr::null_mut(), || {
        slow_path(name, None, std::ptr::null_mut())
    })
}

fn with_busy_flag(fallback: *mut c_char, body: impl FnOnce() -> *mut c_char) -> *mut c_char {
    let entered = BUSY.try_with(|busy| !busy.replace(true)).unwrap_or(false);
    if !entered {
        return fallback;
    }
    let result = body();
    let _ = BUSY.try_with(|busy| busy.set(false));
    result
}

/// Consults the process cache, then the agent; `reference` is `None` for an absent name and
/// `fallback` is what libc alone returned.
fn slow_path(name: &CStr, reference: Option<&CStr>, fallback: *mut c_char) -> *mut c_char {
    let settings = settings::get();
    let reference_bytes = reference.map_or(&b""[..], CStr::to_bytes);
    let now = clock::coarse_ms();

    match cache::get(name, reference_bytes, now) {
        Lookup::Fresh(value) if settings.ttl_ms > 0 => {
            cache::local_put(name, reference_bytes, value, now + settings.ttl_ms);
            diag::debug(name, "resolved from the process cache");
            return value;
        }
        Lookup::BackingOff(stale) => {
            if let Some(stale) = stale {
                diag::debug(name, "agent unreachable, serving the last value (stale)");
                return stale.as_ptr();
            }
            return error_result(name, fallback, reference.is_some());
        }
        Lookup::Fresh(_) | Lookup::Miss => {}
    }

    let request = match reference {
        Some(reference) => Request::V2 {
            key: name.to_bytes().to_vec(),
            value: reference.to_bytes().to_vec(),
        },
        None => Request::V1 {
            key: name.to_bytes().to_vec(),
        },
    };
    let started = clock::precise_ms();
    let outcome = agent::request(&request);
    let fresh_until = clock::coarse_ms() + settings.ttl_ms;

    match outcome {
        Ok(Response::Found(value)) => {
            let interned =
                cache::put_value(name, reference_bytes, value.expose_secret(), fresh_until);
            if settings.ttl_ms > 0 {
                cache::local_put(name, reference_bytes, interned.as_ptr(), fresh_until);
            }
            if settings.debug {
                let elapsed = clock::precise_ms().saturating_sub(started);
                diag::debug(name, &format!("resolved by the agent in {elapsed} ms"));
            }
            interned.as_ptr()
        }
        Ok(Response::NotFound) if reference.is_none() => {
            cache::put_absent(name, reference_bytes, fresh_until);
            if settings.ttl_ms > 0 {
                cache::local_put(name, reference_bytes, std::ptr::null_mut(), fresh_until);
            }
            diag::debug(name, "not set, and the agent does not have it");
            std::ptr::null_mut()
        }
        Ok(Response::NotFound) => failure(name, reference, fallback, Cause::NotFound),
        Ok(Response::Passthrough) => {
            diag::debug(name, "the agent says the value is not a reference");
            fallback
        }
        Ok(Response::Error(reason)) => failure(name, reference, fallback, Cause::Agent(reason)),
        Err(err) => failure(name, reference, fallback, Cause::Unreachable(err)),
    }
}

/// Names the missing key, quoted so that spaces and control characters show.
fn not_found_reason(reference: &[u8]) -> String {
    let parsed = std::str::from_utf8(reference)
        .ok()
        .and_then(|value| Reference::parse(value).ok());
    match parsed {
        Some(parsed) => format!("the agent's backend has no key {:?}", parsed.key()),
        None => "the agent's backend has no such key".to_string(),
    }
}

enum Cause {
    NotFound,
    Agent(String),
    Unreachable(AgentError),
}

fn failure(
    name: &CStr,
    reference: Option<&CStr>,
    fallback: *mut c_char,
    cause: Cause,
) -> *mut c_char {
    let reference_bytes = reference.map_or(&b""[..], CStr::to_bytes);
    let authoritative = !matches!(cause, Cause::Unreachable(_));
    let retry_after = clock::coarse_ms() + RETRY_AFTER_MS;
    let recorded = cache::put_failure(name, reference_bytes, retry_after, authoritative);

    let reason = match &cause {
        Cause::NotFound => not_found_reason(reference_bytes),
        Cause::Agent(reason) => format!(
            "the agent answered: {}",
            Response::reason_without_name(reason, name.to_bytes())
        ),
        Cause::Unreachable(err) => err.to_string(),
    };
    let Some(reference) = reference else {
        // An absent name that could not be looked up stays absent; this is no error for the
        // program, which did not set the variable.
        diag::debug(name, &format!("lookup of an unset name failed: {reason}"));
        return std::ptr::null_mut();
    };
    if let Some(stale) = recorded.stale {
        diag::debug(name, &format!("serving the last value (stale): {reason}"));
        return stale.as_ptr();
    }

    let on_error = settings::get().on_error;
    if recorded.report || on_error == OnError::Exit {
        let consequence = match on_error {
            OnError::Reference => {
                "getenv returns the reference unchanged (ENVPROXY_ON_ERROR=reference)".to_string()
            }
            OnError::Unset => "getenv returns NULL (ENVPROXY_ON_ERROR=unset)".to_string(),
            OnError::Exit => format!("exiting with status {EXIT_CONFIG} (ENVPROXY_ON_ERROR=exit)"),
        };
        diag::line(&format!(
            "{}: cannot resolve {}: {reason}; {consequence}",
            diag::printable(name.to_bytes()),
            diag::printable(reference.to_bytes()),
        ));
    }
    error_result(name, fallback, true)
}

/// Applies `ENVPROXY_ON_ERROR` to a reference that cannot be resolved.
fn error_result(name: &CStr, fallback: *mut c_char, is_reference: bool) -> *mut c_char {
    if !is_reference {
        return std::ptr::null_mut();
    }
    match settings::get().on_error {
        OnError::Reference => fallback,
        OnError::Unset => std::ptr::null_mut(),
        OnError::Exit => {
            diag::debug(name, "exiting because ENVPROXY_ON_ERROR=exit");
            // SAFETY: _exit ends the process at once; nothing after it runs.
            unsafe { libc::_exit(EXIT_CONFIG) }
        }
    }
}
