//! Makes the runtime hooks findable at load, for runtimes that copy the environment at start.
//!
//! - Python: the hook directory (with `sitecustomize.py`) is prepended to `PYTHONPATH`.
//! - Java: `-agentpath:<this library>=<jar>` is put first in `JAVA_TOOL_OPTIONS` when the jar
//!   is installed, so a JVM loads this library as a JVMTI agent ([`crate::jvm_agent`]) before
//!   the user's agents.
//! - Perl: `-I<hooks>/perl -MEnvProxy::Hook` is appended to `PERL5OPT`.
//!
//! Values that an image or the user already set are kept. An EnvProxy entry already in a
//! variable (one that a parent process added, maybe for another installed version) is replaced,
//! not added a second time. The hooks directory is `ENVPROXY_HOOKS_DIR`, else the first of
//! `hooks`, `../hooks` and `../../hooks` next to this library that exists (the last covers
//! `target/<profile>/` in a source checkout).
//!
//! The paths written into the variables are those the library was loaded by (`LD_PRELOAD`'s
//! name as the loader reports it), with `..` removed by name and no link resolved. With the
//! installed layout they go through the stable `lib` and `hooks` links. A process that inherits
//! the variables without mapping the library (a supervisor started with `sh -c exec`) therefore
//! still finds the hooks after the agent installs another version and removes the old one.
//!
//! NOTE: a JVM resolves `lib` and `hooks` separately, so a JVM that starts during an install may
//! load the library of one version and the jar of the next.

use std::ffi::{c_void, CStr, CString};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::settings::{self, Settings};

const JAVA_HOOK_JAR: &str = "java/envproxy-javaagent.jar";
const PERL_HOOK_MODULE: &str = "perl/EnvProxy/Hook.pm";
const PERL_LOAD_OPTION: &str = "-MEnvProxy::Hook";
/// The file name of the library, as an `-agentpath:` option names it.
const LIBRARY_FILE_NAME: &str = "libenvproxy.so";
/// The last two components of the Python hook directory, as a `PYTHONPATH` entry names it.
const PYTHON_HOOK_SUFFIX: &str = "/hooks/python";

/// Extends `PYTHONPATH`, `JAVA_TOOL_OPTIONS` and `PERL5OPT` for the hooks that are installed.
pub fn install(settings: &Settings) {
    let hooks = hooks_dir();
    // Each hook file is looked up once, and only for a runtime whose switch is not off.
    let present = RUNTIMES.map(|runtime| {
        !runtime.is_switched_off(settings)
            && hooks
                .as_deref()
                .is_some_and(|dir| dir.join(runtime.hook_file()).is_file())
    });
    let missing =
        |runtime: Runtime| !runtime.is_switched_off(settings) && !present[runtime as usize];
    // In the usual case every hook is present, and this process need not find out what it is.
    if RUNTIMES.into_iter().any(missing) {
        report_missing_hook(hooks.as_deref(), missing);
    }
    let Some(hooks) = hooks else {
        if settings.debug {
            crate::diag::line(
                "no hooks directory found; Python, Java and Perl programs see references",
            );
        }
        return;
    };
    if present[Runtime::Python as usize] {
        let python = hooks.join("python");
        let current = settings::read(c"PYTHONPATH").unwrap_or_default();
        if let Some(value) = with_python_entry(&current, &python) {
            set(c"PYTHONPATH", value);
        }
    }
    if present[Runtime::Java as usize] {
        let jar = hooks.join(JAVA_HOOK_JAR);
        match library_path() {
            // The JVM splits JAVA_TOOL_OPTIONS at whitespace and has no quoting for
            // -agentpath, so such a path would stop every JVM from starting.
            Some(library) if has_whitespace(&library) || has_whitespace(&jar) => {
                java_hook_skipped(settings.debug)
            }
            Some(library) => {
                let option = format!("-agentpath:{}={}", library.display(), jar.display());
                let current = settings::read(c"JAVA_TOOL_OPTIONS").unwrap_or_default();
                if let Some(value) = with_java_option(&current, &option) {
                    set(c"JAVA_TOOL_OPTIONS", value.into_bytes());
                }
            }
            None if settings.debug => crate::diag::line(
                "the library cannot find its own path, so the Java hook is not loaded and \
                 System.getenv returns references",
            ),
            None => {}
        }
    }
    if present[Runtime::Perl as usize] {
        install_perl(&hooks.join("perl"), settings.debug);
    }
}

/// A runtime that copies the environment at start and so needs its hook to read values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runtime {
    Python = 0,
    Java = 1,
    Perl = 2,
}

/// Every runtime with a hook, in the order of their discriminants.
const RUNTIMES: [Runtime; 3] = [Runtime::Python, Runtime::Java, Runtime::Perl];

impl Runtime {
    /// Returns the runtime whose interpreter or launcher has the file name `name`: `java`,
    /// `perl` or `perl5.36.0`, `python`, `python3` or `python3.11`.
    fn from_executable_name(name: &str) -> Option<Runtime> {
        let is_version = |rest: &str| rest.chars().all(|c| c.is_ascii_digit() || c == '.');
        if name == "java" {
            return Some(Runtime::Java);
        }
        if name.strip_prefix("perl").is_some_and(is_version) {
            return Some(Runtime::Perl);
        }
        if name.strip_prefix("python").is_some_and(is_version) {
            return Some(Runtime::Python);
        }
        None
    }

    fn name(self) -> &'static str {
        match self {
            Runtime::Python => "Python",
            Runtime::Java => "Java",
            Runtime::Perl => "Perl",
        }
    }

    /// Returns the hook's file, relative to the hooks directory.
    fn hook_file(self) -> &'static str {
        match self {
            Runtime::Python => "python/sitecustomize.py",
            Runtime::Java => JAVA_HOOK_JAR,
            Runtime::Perl => PERL_HOOK_MODULE,
        }
    }

    /// Returns the runtime's interface that returns references without the hook.
    fn environment_interface(self) -> &'static str {
        match self {
            Runtime::Python => "os.environ",
            Runtime::Java => "System.getenv",
            Runtime::Perl => "%ENV",
        }
    }

    /// Returns the `ENVPROXY_NO_*` switch that turns the hook off.
    fn switch_name(self) -> &'static str {
        match self {
            Runtime::Python => "ENVPROXY_NO_PYTHON",
            Runtime::Java => "ENVPROXY_NO_JAVA",
            Runtime::Perl => "ENVPROXY_NO_PERL",
        }
    }

    fn is_switched_off(self, settings: &Settings) -> bool {
        match self {
            Runtime::Python => settings.no_python,
            Runtime::Java => settings.no_java,
            Runtime::Perl => settings.no_perl,
        }
    }
}

/// Prints one line when this process is a Python, Java or Perl runtime whose hook is missing
/// while its environment contains references, because the program would otherwise read the
/// references without any message. `missing` returns whether a runtime's hook is missing while
/// its `ENVPROXY_NO_*` switch is not set.
fn report_missing_hook(hooks: Option<&Path>, missing: impl Fn(Runtime) -> bool) {
    let Ok(executable) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Some(runtime) = executable
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(Runtime::from_executable_name)
    else {
        return;
    };
    if !missing(runtime) || !environment_has_reference() {
        return;
    }
    let cause = match hooks {
        Some(hooks) => format!(
            "{} does not exist",
            hooks.join(runtime.hook_file()).display()
        ),
        None => match library_path() {
            Some(library) => format!(
                "no hooks directory was found beside {} and ENVPROXY_HOOKS_DIR is not set",
                library.display()
            ),
            None => "no hooks directory was found and ENVPROXY_HOOKS_DIR is not set".to_string(),
        },
    };
    crate::diag::line(&format!(
        "the {name} hook is missing, so {interface} returns references: {cause}. Install the \
         hooks directory beside the library or set ENVPROXY_HOOKS_DIR to it, or set {switch}=1 \
         to turn this message off",
        name = runtime.name(),
        interface = runtime.environment_interface(),
        switch = runtime.switch_name(),
    ));
}

/// Returns whether any environment value starts with a scheme the agent resolves.
fn environment_has_reference() -> bool {
    std::env::vars_os().any(|(_, value)| envproxy_proto::has_known_scheme(value.as_bytes()))
}

/// Appends `-I<dir> -MEnvProxy::Hook` to `PERL5OPT`, or puts it in place of the EnvProxy
/// options already there.
///
fn java_hook_skipped(debug: bool) {
    if debug {
        crate::diag::line(
            "the library's or the Java hook's path contains whitespace, which \
             JAVA_TOOL_OPTIONS cannot hold; Java programs see references",
        );
    }
}

fn has_whitespace(path: &Path) -> bool {
    path.as_os_str()
        .as_bytes()
        .iter()
        .any(|byte| byte.is_ascii_whitespace())
}

/// Perl splits `PERL5OPT` at whitespace, so a directory whose path contains whitespace cannot
/// be named there; Perl programs then read references.
///
/// NOTE: children inherit `PERL5OPT`. A Perl child that cannot read `<dir>` (another mount
/// namespace, a chroot) fails at start because it cannot locate `EnvProxy/Hook.pm`.
fn install_perl(dir: &Path, debug: bool) {
    let current = settings::read(c"PERL5OPT").unwrap_or_default();
    let Some(dir) = dir.to_str().filter(|d| !d.contains(char::is_whitespace)) else {
        if debug {
            crate::diag::line(
                "the Perl hook's path contains whitespace or is not UTF-8, which PERL5OPT \
                 cannot hold; Perl programs see references",
            );
        }
        return;
    };
    if let Some(value) = with_perl_options(&current, dir) {
        set(c"PERL5OPT", value.into_bytes());
    }
}

fn hooks_dir() -> Option<PathBuf> {
    if let Some(dir) = settings::read(c"ENVPROXY_HOOKS_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let library = library_path()?;
    let library_dir = library.parent()?;
    // The name with `..` removed comes first, because it keeps a stable link such as
    // `/opt/envproxy/hooks`. The joined name covers a build directory that is itself a link.
    ["hooks", "../hooks", "../../hooks"]
        .iter()
        .map(|relative| library_dir.join(relative))
        .flat_map(|joined| [lexically_normal(&joined), joined])
        .find(|candidate| candidate.is_dir())
}

/// Returns `path` with `.` removed and each `..` removing the name before it, without resolving
/// links.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    normal.push("..");
                }
            }
            other => normal.push(other),
        }
    }
    normal
}

/// Returns the path this library was loaded from, as the loader reports it, made absolute
/// without resolving links (so it goes through the stable `lib` link of an install).
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
    if path.as_os_str().is_empty() {
        return None;
    }
    Some(lexically_normal(
        &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    ))
}

/// Returns `PYTHONPATH` with `entry` first and without other EnvProxy hook entries (those ending
/// in `hooks/python`), or `None` when `current` already starts with `entry` alone.
fn with_python_entry(current: &str, entry: &Path) -> Option<Vec<u8>> {
    let entry = entry.as_os_str().as_bytes();
    let is_hook = |existing: &str| {
        existing.as_bytes() == entry || existing.trim_end_matches('/').ends_with(PYTHON_HOOK_SUFFIX)
    };
    let others: Vec<&str> = current
        .split(':')
        .filter(|existing| !existing.is_empty() && !is_hook(existing))
        .collect();
    let hooks = current
        .split(':')
        .filter(|existing| is_hook(existing))
        .count();
    if hooks == 1 && current.as_bytes().starts_with(entry) {
        let rest = &current.as_bytes()[entry.len()..];
        if rest.is_empty() || rest[0] == b':' {
            return None;
        }
    }
    let mut value = entry.to_vec();
    for other in others {
        value.push(b':');
        value.extend_from_slice(other.as_bytes());
    }
    Some(value)
}

/// Returns `JAVA_TOOL_OPTIONS` with `option` ahead of every other agent option, or `None`
/// when it is already there and the only EnvProxy option.
///
/// The JVM loads agents and sends them `VMInit` in the order of the options, and a
/// `-javaagent` runs its `premain` in its `VMInit`. EnvProxy's agent therefore comes first, so
/// that the user's agents read resolved values in `premain`. An EnvProxy option that already
/// precedes every agent (one a parent process added) is replaced in place. Otherwise all
/// EnvProxy options are removed and `option` is put first.
fn with_java_option(current: &str, option: &str) -> Option<String> {
    let all = tokens(current);
    let ours: Vec<Range<usize>> = all
        .iter()
        .filter(|range| is_java_hook_option(&current[(*range).clone()]))
        .cloned()
        .collect();
    let first_agent = all
        .iter()
        .position(|range| is_agent_option(&current[range.clone()]));
    let ours_first = first_agent.is_some_and(|index| ours.first() == Some(&all[index]));
    if ours_first {
        if let [only] = ours.as_slice() {
            if &current[only.clone()] == option {
                return None;
            }
        }
        return Some(splice(current, &ours, option));
    }
    let rest = without(current, &ours);
    let rest = rest.trim();
    if rest.is_empty() {
        return Some(option.to_string());
    }
    Some(format!("{option} {rest}"))
}

/// Returns whether `token` loads an agent: `-javaagent:`, `-agentpath:` or `-agentlib:`.
fn is_agent_option(token: &str) -> bool {
    ["-javaagent:", "-agentpath:", "-agentlib:"]
        .iter()
        .any(|prefix| token.starts_with(prefix))
}

/// Returns whether `token` loads this library as a JVMTI agent with the Java hook's jar.
fn is_java_hook_option(token: &str) -> bool {
    let jar_name = Path::new(JAVA_HOOK_JAR)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    token.strip_prefix("-agentpath:").is_some_and(|rest| {
        rest.split_once('=').is_some_and(|(library, jar)| {
            library.ends_with(LIBRARY_FILE_NAME) && jar.ends_with(jar_name)
        })
    })
}

/// Returns `PERL5OPT` with `-I<dir> -MEnvProxy::Hook` in place of the EnvProxy options already
/// there (the load option and an `-I.../perl` just before it), or appended. Returns `None`
/// when they are already the only ones.
fn with_perl_options(current: &str, dir: &str) -> Option<String> {
    let options = format!("-I{dir} {PERL_LOAD_OPTION}");
    let all = tokens(current);
    let mut ours = Vec::new();
    for (index, range) in all.iter().enumerate() {
        if &current[range.clone()] != PERL_LOAD_OPTION {
            continue;
        }
        let include = index
            .checked_sub(1)
            .map(|before| all[before].clone())
            .filter(|before| {
                let token = &current[before.clone()];
                token.starts_with("-I") && token.trim_end_matches('/').ends_with("/perl")
            });
        match include {
            Some(include) => ours.push(include.start..range.end),
            None => ours.push(range.clone()),
        }
    }
    if let [only] = ours.as_slice() {
        if current[only.clone()] == options {
            return None;
        }
    }
    Some(splice(current, &ours, &options))
}

/// Returns the byte ranges of the whitespace-separated words of `text`.
fn tokens(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = None;
    for (index, character) in text.char_indices() {
        match (character.is_whitespace(), start) {
            (true, Some(begin)) => {
                ranges.push(begin..index);
                start = None;
            }
            (false, None) => start = Some(index),
            _ => {}
        }
    }
    if let Some(begin) = start {
        ranges.push(begin..text.len());
    }
    ranges
}

/// Returns `text` with `replacement` in place of the first of `ranges` and the others removed
/// with the whitespace before them, or with `replacement` appended when `ranges` is empty.
/// The rest of `text` (quotes, spacing) is kept as it is.
fn splice(text: &str, ranges: &[Range<usize>], replacement: &str) -> String {
    let Some((first, rest)) = ranges.split_first() else {
        return if text.trim().is_empty() {
            replacement.to_string()
        } else {
            format!("{} {replacement}", text.trim_end())
        };
    };
    let mut value = String::with_capacity(text.len() + replacement.len());
    value.push_str(&text[..first.start]);
    value.push_str(replacement);
    let mut position = first.end;
    for range in rest {
        let kept = text[position..range.start].trim_end();
        value.push_str(kept);
        position = range.end;
    }
    value.push_str(&text[position..]);
    value
}

/// Returns `text` without `ranges` and the whitespace before each of them.
fn without(text: &str, ranges: &[Range<usize>]) -> String {
    let mut value = String::with_capacity(text.len());
    let mut position = 0;
    for range in ranges {
        value.push_str(text[position..range.start].trim_end());
        position = range.end;
    }
    value.push_str(&text[position..]);
    value
}

fn set(variable: &CStr, value: Vec<u8>) {
    let Ok(value) = CString::new(value) else {
        return;
    };
    // SAFETY: both strings are NUL-terminated. This runs from the library constructor, before
    // the program's `main` starts any thread that could read the environment concurrently.
    unsafe { libc::setenv(variable.as_ptr(), value.as_ptr(), 1) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_AGENT: &str = "-agentpath:/opt/envproxy/versions/0123456789abcdef/lib/libenvproxy.so=\
                             /opt/envproxy/versions/0123456789abcdef/hooks/java/envproxy-javaagent.jar";
    const NEW_AGENT: &str = "-agentpath:/opt/envproxy/lib/libenvproxy.so=\
                             /opt/envproxy/hooks/java/envproxy-javaagent.jar";

    #[test]
    fn runtime_from_executable_name() {
        let cases = [
            ("java", Some(Runtime::Java)),
            ("perl", Some(Runtime::Perl)),
            ("perl5.36.0", Some(Runtime::Perl)),
            ("python3", Some(Runtime::Python)),
            ("python3.11", Some(Runtime::Python)),
            ("python", Some(Runtime::Python)),
            ("javac", None),
            ("perldoc", None),
            ("python3-config", None),
            ("bash", None),
        ];
        for (name, expected) in cases {
            assert_eq!(Runtime::from_executable_name(name), expected, "{name}");
        }
    }

    #[test]
    fn java_option_put_before_user_options() {
        assert_eq!(with_java_option("", NEW_AGENT).unwrap(), NEW_AGENT);
        assert_eq!(
            with_java_option("-Xmx64m ", NEW_AGENT).unwrap(),
            format!("{NEW_AGENT} -Xmx64m")
        );
    }

    #[test]
    fn java_option_replaces_earlier_agent() {
        let current = format!("-Xmx64m {OLD_AGENT} -Dname=\"a b\"");
        assert_eq!(
            with_java_option(&current, NEW_AGENT).unwrap(),
            format!("-Xmx64m {NEW_AGENT} -Dname=\"a b\"")
        );
    }

    #[test]
    fn java_option_keeps_one_of_several_agents() {
        let current = format!("{OLD_AGENT} -Xss1m {OLD_AGENT}");
        assert_eq!(
            with_java_option(&current, NEW_AGENT).unwrap(),
            format!("{NEW_AGENT} -Xss1m")
        );
    }

    #[test]
    fn java_option_present_is_unchanged() {
        assert_eq!(
            with_java_option(&format!("-Xmx1g {NEW_AGENT}"), NEW_AGENT),
            None
        );
        assert_eq!(
            with_java_option(&format!("{NEW_AGENT} -javaagent:/app/apm.jar"), NEW_AGENT),
            None
        );
    }

    #[test]
    fn java_option_goes_before_other_agents() {
        let other = "-agentpath:/usr/lib/libyjpagent.so=port=10001";
        assert_eq!(
            with_java_option(other, NEW_AGENT).unwrap(),
            format!("{NEW_AGENT} {other}")
        );
        let javaagent = "-Xmx1g -javaagent:/app/apm.jar=service=shop -agentlib:jdwp=server=y";
        assert_eq!(
            with_java_option(javaagent, NEW_AGENT).unwrap(),
            format!("{NEW_AGENT} {javaagent}")
        );
    }

    #[test]
    fn java_option_after_user_agent_moves_first() {
        let current = format!("-Xmx1g -javaagent:/app/apm.jar {OLD_AGENT} -Xss1m");
        assert_eq!(
            with_java_option(&current, NEW_AGENT).unwrap(),
            format!("{NEW_AGENT} -Xmx1g -javaagent:/app/apm.jar -Xss1m")
        );
        let current = format!("-javaagent:/app/apm.jar {NEW_AGENT}");
        assert_eq!(
            with_java_option(&current, NEW_AGENT).unwrap(),
            format!("{NEW_AGENT} -javaagent:/app/apm.jar")
        );
    }

    #[test]
    fn python_entry_replaces_earlier_hook_entry() {
        let entry = Path::new("/opt/envproxy/hooks/python");
        let current = "/app:/opt/envproxy/versions/0123456789abcdef/hooks/python:/lib/py";
        assert_eq!(
            with_python_entry(current, entry).unwrap(),
            b"/opt/envproxy/hooks/python:/app:/lib/py"
        );
    }

    #[test]
    fn python_entry_prepended_once() {
        let entry = Path::new("/opt/envproxy/hooks/python");
        assert_eq!(
            with_python_entry("", entry).unwrap(),
            b"/opt/envproxy/hooks/python"
        );
        assert_eq!(
            with_python_entry("/app", entry).unwrap(),
            b"/opt/envproxy/hooks/python:/app"
        );
        assert_eq!(
            with_python_entry("/opt/envproxy/hooks/python:/app", entry),
            None
        );
        assert_eq!(
            with_python_entry("/app:/opt/envproxy/hooks/python", entry).unwrap(),
            b"/opt/envproxy/hooks/python:/app"
        );
    }

    #[test]
    fn perl_options_replace_earlier_hook() {
        let current =
            "-Mstrict -I/opt/envproxy/versions/0123456789abcdef/hooks/perl -MEnvProxy::Hook -w";
        assert_eq!(
            with_perl_options(current, "/opt/envproxy/hooks/perl").unwrap(),
            "-Mstrict -I/opt/envproxy/hooks/perl -MEnvProxy::Hook -w"
        );
    }

    #[test]
    fn perl_options_appended_or_unchanged() {
        let dir = "/opt/envproxy/hooks/perl";
        let options = "-I/opt/envproxy/hooks/perl -MEnvProxy::Hook";
        assert_eq!(with_perl_options("", dir).unwrap(), options);
        assert_eq!(
            with_perl_options("-Mstrict", dir).unwrap(),
            format!("-Mstrict {options}")
        );
        assert_eq!(with_perl_options(&format!("-w {options}"), dir), None);
        // The load option without its include directory gets one.
        assert_eq!(with_perl_options("-MEnvProxy::Hook", dir).unwrap(), options);
    }

    #[test]
    fn lexical_normal_form_keeps_links() {
        assert_eq!(
            lexically_normal(Path::new("/opt/envproxy/lib/../hooks")),
            Path::new("/opt/envproxy/hooks")
        );
        assert_eq!(
            lexically_normal(Path::new("/src/target/debug/./../../hooks")),
            Path::new("/src/hooks")
        );
        assert_eq!(lexically_normal(Path::new("../a")), Path::new("../a"));
    }
}
