//! The environment of a child: values this library resolved go back to their references.

use std::ffi::{c_char, CStr, CString};
use std::sync::OnceLock;

use crate::cache::{self, ServedLookup};
use crate::real;

/// Shortest value that is replaced when it was resolved under another variable name. Shorter
/// values ("1", "root", "5432") are as likely to be an ordinary setting that happens to equal
/// a secret as a renamed secret, and replacing an ordinary setting breaks the child.
const MIN_RENAMED_VALUE_LEN: usize = 8;

/// The plain `NAME=VALUE` entries of the environment the process started with.
///
/// A value resolved under another name is not replaced where it equals one of these, because it
/// is an ordinary setting that happens to equal a secret. The `LD_PRELOAD` and `ENVPROXY_*`
/// settings given to a child also come from here. The snapshot is taken at load because the
/// current `environ` is no guide: programs such as Node.js set `environ` to the child's
/// environment just before `execvp`.
static INITIAL_PLAIN: OnceLock<Vec<Box<[u8]>>> = OnceLock::new();

/// Records the plain entries of the current environment; called once at load.
pub fn snapshot_initial_environment() {
    let environ = real::environ_ptr();
    let entries = if environ.is_null() {
        Vec::new()
    } else {
        // SAFETY: a non-null `environ` is a NULL-terminated array of NUL-terminated strings,
        // and at load no other thread changes it.
        unsafe { entries_of(environ) }
    };
    let plain = entries
        .iter()
        .map(|entry| entry.to_bytes())
        .filter(|entry| {
            split_entry(entry).is_some_and(|(_, value)| !envproxy_proto::has_known_scheme(value))
        })
        .map(Box::from)
        .collect();
    let _ = INITIAL_PLAIN.set(plain);
}

fn initial_plain() -> &'static [Box<[u8]>] {
    INITIAL_PLAIN.get().map_or(&[], Vec::as_slice)
}

/// Returns whether some plain setting of the environment the process started with, under any
/// name, has this value.
fn is_initial_plain_value(value: &[u8]) -> bool {
    initial_plain()
        .iter()
        .any(|entry| split_entry(entry).is_some_and(|(_, plain)| plain == value))
}

/// Returns the value of `name` in the environment the process started with.
fn initial_value(name: &[u8]) -> Option<&'static [u8]> {
    initial_plain().iter().find_map(|entry| {
        let (entry_name, value) = split_entry(entry)?;
        (entry_name == name).then_some(value)
    })
}

/// A rewritten `envp` array and the strings it points to.
pub struct ChildEnv {
    _strings: Vec<CString>,
    pointers: Vec<*const c_char>,
}

impl ChildEnv {
    /// Returns the NULL-terminated array to pass to `execve` or `posix_spawn`.
    pub fn as_ptr(&self) -> *const *const c_char {
        self.pointers.as_ptr()
    }
}

/// Returns a copy of `envp` in which every `NAME=VALUE` whose value this process resolved is
/// replaced by `NAME=REFERENCE`, or `None` when no entry needs a change (or `envp` is NULL).
/// A value resolved for a name absent from the environment (`ENVPROXY_LOOKUP_UNSET=1`) has no
/// reference, so its entry is left out: the child requests that name from the agent again.
///
/// A value resolved under the same name is always replaced. A value resolved under another
/// name is replaced when it is at least [`MIN_RENAMED_VALUE_LEN`] bytes long, is not itself a
/// reference (the child resolves it on its own), and no plain setting the process started
/// with has the same value.
///
/// When something was replaced, the child also gets what it needs to resolve the references
/// again: `LD_PRELOAD` with this library and the `ENVPROXY_*` settings the process started with,
/// added where
/// the given environment lacks them (a program that passes a minimal environment, such as
/// `{"PGPASSWORD": ...}`, would otherwise hand the child a reference it cannot resolve).
///
/// # Safety
/// `envp` must be NULL or a NULL-terminated array of NUL-terminated strings.
pub unsafe fn rewrite(envp: *const *const c_char) -> Option<ChildEnv> {
    if envp.is_null() || !cache::has_served_values() {
        return None;
    }
    // SAFETY: the caller's guarantee.
    let entries = unsafe { entries_of(envp) };

    let replacements: Vec<Option<Replacement>> = cache::with_served(|served_as| {
        entries
            .iter()
            .map(|entry| replacement(entry.to_bytes(), served_as))
            .collect()
    });
    if replacements.iter().all(Option::is_none) {
        return None;
    }

    let mut strings = Vec::new();
    let mut pointers = Vec::with_capacity(entries.len() + 8);
    let mut kept_entries = Vec::with_capacity(entries.len());
    for (entry, replacement) in entries.iter().zip(replacements) {
        match replacement {
            Some(Replacement::Entry(text)) => {
                pointers.push(text.as_ptr());
                strings.push(text);
                kept_entries.push(*entry);
            }
            Some(Replacement::Remove) => {}
            None => {
                pointers.push(entry.as_ptr());
                kept_entries.push(*entry);
            }
        }
    }
    for addition in resolver_settings(&kept_entries) {
        if let Some(position) = addition.replaces {
            pointers[position] = addition.text.as_ptr();
        } else {
            pointers.push(addition.text.as_ptr());
        }
        strings.push(addition.text);
    }
    pointers.push(std::ptr::null());
    Some(ChildEnv {
        _strings: strings,
        pointers,
    })
}

/// # Safety
/// As for [`rewrite`], with `envp` non-null.
unsafe fn entries_of<'a>(envp: *const *const c_char) -> Vec<&'a CStr> {
    let mut entries = Vec::new();
    let mut cursor = envp;
    // SAFETY: the caller guarantees a NULL-terminated array of NUL-terminated strings.
    unsafe {
        while !(*cursor).is_null() {
            entries.push(CStr::from_ptr(*cursor));
            cursor = cursor.add(1);
        }
    }
    entries
}

fn split_entry(entry: &[u8]) -> Option<(&[u8], &[u8])> {
    let split = entry.iter().position(|&b| b == b'=')?;
    Some((&entry[..split], &entry[split + 1..]))
}

/// Change to one entry of a child's environment.
enum Replacement {
    /// `NAME=REFERENCE` in place of the resolved value.
    Entry(CString),
    /// The entry is left out.
    Remove,
}

fn replacement(entry: &[u8], served_as: &ServedLookup<'_>) -> Option<Replacement> {
    let (name, value) = split_entry(entry)?;
    let served = served_as(name, value)?;
    if !served.same_name
        && (value.len() < MIN_RENAMED_VALUE_LEN
            || envproxy_proto::has_known_scheme(value)
            || is_initial_plain_value(value))
    {
        return None;
    }
    if served.reference.is_empty() {
        return Some(Replacement::Remove);
    }
    let mut replaced = Vec::with_capacity(name.len() + 1 + served.reference.len());
    replaced.extend_from_slice(name);
    replaced.push(b'=');
    replaced.extend_from_slice(&served.reference);
    CString::new(replaced).ok().map(Replacement::Entry)
}

/// An entry added to (or replacing one of) a child's environment.
struct Addition {
    text: CString,
    /// Index of the entry it replaces, or `None` to append.
    replaces: Option<usize>,
}

/// Returns the `LD_PRELOAD` and `ENVPROXY_*` entries that the child's environment lacks.
fn resolver_settings(entries: &[&CStr]) -> Vec<Addition> {
    let mut additions = Vec::new();
    let child_value = |wanted: &[u8]| {
        entries.iter().enumerate().find_map(|(index, entry)| {
            let (name, value) = split_entry(entry.to_bytes())?;
            (name == wanted).then_some((index, value))
        })
    };

    let libraries: Vec<&[u8]> = initial_value(b"LD_PRELOAD")
        .unwrap_or_default()
        .split(|&b| b == b' ' || b == b':')
        .filter(|part| part.ends_with(b"libenvproxy.so"))
        .collect();
    if !libraries.is_empty() {
        let text = match child_value(b"LD_PRELOAD") {
            None => Some((join(b"LD_PRELOAD=", &libraries), None)),
            Some((index, value)) => {
                let missing: Vec<&[u8]> = libraries
                    .iter()
                    .copied()
                    .filter(|library| {
                        !value
                            .split(|&b| b == b' ' || b == b':')
                            .any(|p| p == *library)
                    })
                    .collect();
                (!missing.is_empty()).then(|| {
                    let mut prefix = b"LD_PRELOAD=".to_vec();
                    prefix.extend_from_slice(value);
                    if !value.is_empty() {
                        prefix.push(b' ');
                    }
                    (join(&prefix, &missing), Some(index))
                })
            }
        };
        if let Some((bytes, replaces)) = text {
            if let Ok(text) = CString::new(bytes) {
                additions.push(Addition { text, replaces });
            }
        }
    }

    for entry in initial_plain() {
        let Some((name, _)) = split_entry(entry) else {
            continue;
        };
        if name.starts_with(b"ENVPROXY_") && child_value(name).is_none() {
            if let Ok(text) = CString::new(entry.to_vec()) {
                additions.push(Addition {
                    text,
                    replaces: None,
                });
            }
        }
    }
    additions
}

fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(part);
    }
    out
}
