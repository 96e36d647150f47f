//! The environment of a child: values this library resolved go back to their references.

use std::ffi::{c_char, CStr, CString};

use crate::cache;

/// A rewritten `envp` array and the strings it points to.
pub struct ChildEnv {
    _strings: Vec<CString>,
    pointers: Vec<*const c_char>,
}

impl ChildEnv {
    /// The NULL-terminated array to pass to `execve` or `posix_spawn`.
    pub fn as_ptr(&self) -> *const *const c_char {
        self.pointers.as_ptr()
    }
}

/// Returns a copy of `envp` in which every `NAME=VALUE` whose value this process resolved is
/// replaced by `NAME=REFERENCE`, or `None` when no entry needs a change (or `envp` is NULL).
///
/// # Safety
/// `envp` must be NULL or a NULL-terminated array of NUL-terminated strings.
pub unsafe fn rewrite(envp: *const *const c_char) -> Option<ChildEnv> {
    if envp.is_null() || !cache::has_served_values() {
        return None;
    }
    let mut entries: Vec<&CStr> = Vec::new();
    let mut cursor = envp;
    // SAFETY: the caller guarantees a NULL-terminated array of NUL-terminated strings.
    unsafe {
        while !(*cursor).is_null() {
            entries.push(CStr::from_ptr(*cursor));
            cursor = cursor.add(1);
        }
    }

    let replacements: Vec<Option<CString>> = cache::with_served(|reference_for| {
        entries
            .iter()
            .map(|entry| {
                let bytes = entry.to_bytes();
                let split = bytes.iter().position(|&b| b == b'=')?;
                let (name, value) = (&bytes[..split], &bytes[split + 1..]);
                let reference = reference_for(name, value)?;
                let mut replaced = Vec::with_capacity(name.len() + 1 + reference.len());
                replaced.extend_from_slice(name);
                replaced.push(b'=');
                replaced.extend_from_slice(&reference);
                CString::new(replaced).ok()
            })
            .collect()
    });
    if replacements.iter().all(Option::is_none) {
        return None;
    }

    let mut strings = Vec::new();
    let mut pointers = Vec::with_capacity(entries.len() + 1);
    for (entry, replacement) in entries.iter().zip(replacements) {
        match replacement {
            Some(text) => {
                pointers.push(text.as_ptr());
                strings.push(text);
            }
            None => pointers.push(entry.as_ptr()),
        }
    }
    pointers.push(std::ptr::null());
    Some(ChildEnv {
        _strings: strings,
        pointers,
    })
}
