//! Makes the runtime hooks findable at load, for runtimes that copy the environment at start.
//!
//! - Python: the hook directory (with `sitecustomize.py`) is prepended to `PYTHONPATH`.
//! - Java: `-agentpath:<this library>=<jar>` is appended to `JAVA_TOOL_OPTIONS` when the jar
//!   is installed, so a JVM loads this library as a JVMTI agent ([`crate::jvm_agent`]).
//! - Perl: `-I<hooks>/perl -MEnvProxy::Hook` is appended to `PERL5OPT`.
//!
//! Values that an image or the user already set are kept, and an entry already present is
//! not added twice. The hooks directory is `ENVPROXY_HOOKS_DIR`, else the first of `hooks`,
//! `../hooks` and `../../hooks` next to this library that exists (the last covers
//! `target/<profile>/` in a source checkout).

use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::settings::{self, Settings};

const JAVA_HOOK_JAR: &str = "java/envproxy-javaagent.jar";
const PERL_HOOK_MODULE: &str = "perl/EnvProxy/Hook.pm";
const PERL_LOAD_OPTION: &str = "-MEnvProxy::Hook";

/// Extends `PYTHONPATH`, `JAVA_TOOL_OPTIONS` and `PERL5OPT` for the hooks that are installed.
pub fn install(settings: &Settings) {
    let Some(hooks) = hooks_dir() else {
        if settings.debug {
            crate::diag::line(
                "no hooks directory found; Python, Java and Perl programs see references",
            );
        }
        return;
    };
    if !settings.no_python {
        let python = hooks.join("python");
        if python.join("sitecustomize.py").is_file() {
            prepend_path_entry(c"PYTHONPATH", &python);
        }
    }
    if !settings.no_java {
        let jar = hooks.join(JAVA_HOOK_JAR);
        if jar.is_file() {
            match library_path() {
                Some(library) => {
                    let option = format!("-agentpath:{}={}", library.display(), jar.display());
                    append_option(c"JAVA_TOOL_OPTIONS", &option);
                }
                None if settings.debug => crate::diag::line(
                    "the library cannot find its own path, so the Java hook is not loaded and \
                     System.getenv returns references",
                ),
                None => {}
            }
        }
    }
    if !settings.no_perl && hooks.join(PERL_HOOK_MODULE).is_file() {
        install_perl(&hooks.join("perl"), settings.debug);
    }
}

/// Appends `-I<dir> -MEnvProxy::Hook` to `PERL5OPT`, unless it already loads the hook.
///
/// Perl splits `PERL5OPT` at whitespace, so a directory whose path contains whitespace cannot
/// be named there; Perl programs then read references.
///
/// NOTE: children inherit `PERL5OPT`. A Perl child that cannot read `<dir>` (another mount
/// namespace, a chroot) fails at start because it cannot locate `EnvProxy/Hook.pm`.
fn install_perl(dir: &Path, debug: bool) {
    let current = settings::read(c"PERL5OPT").unwrap_or_default();
    if current
        .split_whitespace()
        .any(|existing| existing == PERL_LOAD_OPTION)
    {
        return;
    }
    let Some(dir) = dir.to_str().filter(|d| !d.contains(char::is_whitespace)) else {
        if debug {
            crate::diag::line(
                "the Perl hook's path contains whitespace or is not UTF-8, which PERL5OPT \
                 cannot hold; Perl programs see references",
            );
        }
        return;
    };
    let value = format!("-I{dir} {PERL_LOAD_OPTION}");
    let value = if current.trim().is_empty() {
        value
    } else {
        format!("{} {value}", current.trim_end())
    };
    set(c"PERL5OPT", value.into_bytes());
}

fn hooks_dir() -> Option<PathBuf> {
    if let Some(dir) = settings::read(c"ENVPROXY_HOOKS_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let library = library_path()?;
    let library_dir = library.parent()?;
    ["hooks", "../hooks", "../../hooks"]
        .iter()
        .map(|relative| library_dir.join(relative))
        .find(|candidate| candidate.is_dir())
        .map(|found| std::fs::canonicalize(&found).unwrap_or(found))
}

/// Returns the path this library was loaded from, as the loader reports it.
fn library_path() -> Option<PathBuf> {
    // SAFETY: Dl_info is plain old data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let address = install as *const c_void;
    // SAFETY: `address` lies in this library; dladdr fills `info` or returns 0.
    if unsafe { libc::dladdr(address, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated file name owned by the loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
    Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}

fn prepend_path_entry(variable: &CStr, entry: &Path) {
    let entry = entry.as_os_str().as_bytes();
    let current = settings::read(variable).unwrap_or_default();
    if current
        .split(':')
        .any(|existing| existing.as_bytes() == entry)
    {
        return;
    }
    let mut value = entry.to_vec();
    if !current.is_empty() {
        value.push(b':');
        value.extend_from_slice(current.as_bytes());
    }
    set(variable, value);
}

fn append_option(variable: &CStr, option: &str) {
    let current = settings::read(variable).unwrap_or_default();
    if current
        .split_whitespace()
        .any(|existing| existing == option)
    {
        return;
    }
    let value = if current.trim().is_empty() {
        option.to_string()
    } else {
        format!("{} {option}", current.trim_end())
    };
    set(variable, value.into_bytes());
}

fn set(variable: &CStr, value: Vec<u8>) {
    let Ok(value) = CString::new(value) else {
        return;
    };
    // SAFETY: both strings are NUL-terminated. This runs from the library constructor, before
    // the program's `main` starts any thread that could read the environment concurrently.
    unsafe { libc::setenv(variable.as_ptr(), value.as_ptr(), 1) };
}
