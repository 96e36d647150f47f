//! Runtimes identified by their program name, and whether each reads values that the library
//! or one of its hooks resolves.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{hook_files, CheckError, Settings, Verdict};

/// Hook file that makes the library prepend `hooks/python` to `PYTHONPATH`.
const PYTHON_HOOK: &str = "python/sitecustomize.py";
/// Hook file that makes the library add `-agentpath:` to `JAVA_TOOL_OPTIONS`.
const JAVA_HOOK: &str = "java/envproxy-javaagent.jar";
/// Hook file that makes the library add `-I<hooks>/perl -MEnvProxy::Hook` to `PERL5OPT`.
const PERL_HOOK: &str = "perl/EnvProxy/Hook.pm";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Any other dynamically linked program, such as C, C++ or Rust.
    Native,
    Python,
    Java,
    Perl,
    Node,
    Ruby,
    Php,
    Shell,
}

impl Runtime {
    /// Identifies a runtime by the file name of its program, such as `python3.11` or `bash`.
    pub fn from_name(name: &str) -> Option<Runtime> {
        let versioned = |prefix: &str| {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
        };
        match name {
            "java" => Some(Runtime::Java),
            "node" | "nodejs" => Some(Runtime::Node),
            "sh" | "bash" | "dash" | "ash" | "zsh" | "ksh" | "mksh" | "busybox" | "fish"
            | "csh" | "tcsh" => Some(Runtime::Shell),
            _ if versioned("python") => Some(Runtime::Python),
            _ if versioned("perl") => Some(Runtime::Perl),
            _ if versioned("ruby") => Some(Runtime::Ruby),
            _ if versioned("php") => Some(Runtime::Php),
            _ => None,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Runtime::Native => "a native program",
            Runtime::Python => "Python",
            Runtime::Java => "Java",
            Runtime::Perl => "Perl",
            Runtime::Node => "Node.js",
            Runtime::Ruby => "Ruby",
            Runtime::Php => "PHP",
            Runtime::Shell => "a shell",
        }
    }
}

/// Returns the verdicts and reasons for `runtime` started with `arguments`, given that the
/// library loads into it, or an error when the runtime will not start. `program` is the
/// runtime's ELF file, when known.
pub fn judge(
    runtime: Runtime,
    arguments: &[OsString],
    program: Option<&Path>,
    settings: &Settings,
    hooks_dir: Option<&Path>,
) -> Result<Vec<(Verdict, String)>, CheckError> {
    let outcome = match runtime {
        Runtime::Native => vec![(
            Verdict::Resolved,
            "libenvproxy.so resolves each libc getenv call; code that reads `environ` itself \
             sees references"
                .to_string(),
        )],
        Runtime::Node => vec![(
            Verdict::Resolved,
            "Node.js reads process.env through libc getenv, which libenvproxy.so resolves"
                .to_string(),
        )],
        // Both checked with Debian 12's Ruby 3.1 and PHP 8.2 under `envproxy run`.
        Runtime::Ruby => vec![(
            Verdict::ResolvedWithCaveat,
            "Ruby's ENV[] and ENV.fetch call libc getenv and resolve, but ENV.to_h, ENV.each \
             and ENV.to_a read the environment directly and return references"
                .to_string(),
        )],
        Runtime::Php => vec![(
            Verdict::ResolvedWithCaveat,
            "PHP's getenv(NAME) calls libc getenv and resolves, but getenv() without a name, \
             $_SERVER and $_ENV read the environment directly and return references"
                .to_string(),
        )],
        Runtime::Shell => vec![(
            Verdict::ReferencesOnly,
            "shells copy the environment at start, so $VAR holds the reference; programs the \
             shell starts resolve it themselves, and `envproxy get NAME` prints a value"
                .to_string(),
        )],
        Runtime::Python => python(arguments, settings, hooks_dir),
        Runtime::Java => java(program, settings, hooks_dir),
        Runtime::Perl => return perl(arguments, settings, hooks_dir),
    };
    Ok(outcome)
}

fn python(
    arguments: &[OsString],
    settings: &Settings,
    hooks_dir: Option<&Path>,
) -> Vec<(Verdict, String)> {
    if let Some(flag) = python_isolating_flag(arguments) {
        return vec![(
            Verdict::ReferencesOnly,
            format!(
                "python -{flag} skips sitecustomize, so the Python hook does not load and \
                 os.environ holds references; only C extensions that call getenv resolve"
            ),
        )];
    }
    hooked(
        "Python",
        "ENVPROXY_NO_PYTHON",
        settings.no_python.as_deref(),
        PYTHON_HOOK,
        hooks_dir,
        "os.environ returns references, from the copy of the environment Python made at start",
        "the Python hook {hook}, which the library adds to PYTHONPATH, makes os.environ and \
         os.getenv resolve",
    )
}

fn java(
    program: Option<&Path>,
    settings: &Settings,
    hooks_dir: Option<&Path>,
) -> Vec<(Verdict, String)> {
    let copied = "System.getenv returns references, from the copy of the environment the JVM \
                  made at start";
    let outcome = hooked(
        "Java",
        "ENVPROXY_NO_JAVA",
        settings.no_java.as_deref(),
        JAVA_HOOK,
        hooks_dir,
        copied,
        "the Java agent {hook}, which the library adds to JAVA_TOOL_OPTIONS, makes \
         System.getenv resolve",
    );
    if outcome[0].0 != Verdict::Resolved {
        return outcome;
    }
    match program.and_then(java_runtime_problem) {
        Some(problem) => vec![(
            Verdict::ReferencesOnly,
            format!("{problem}, so the Java hook cannot load and {copied}"),
        )],
        None => outcome,
    }
}

/// Oldest Java release the Java hook runs on: it is compiled with `javac --release 17`.
const JAVA_HOOK_MIN_RELEASE: u32 = 17;

/// Returns why the Java runtime of the launcher `java` (`<java.home>/bin/java`) cannot load
/// the Java hook: a Java version, read from the runtime's `release` file, older than
/// [`JAVA_HOOK_MIN_RELEASE`]. The library loads the hook as a JVMTI agent (`-agentpath`), so a
/// `jlink` image without the `java.instrument` module loads it too.
fn java_runtime_problem(java: &Path) -> Option<String> {
    let java = std::fs::canonicalize(java).ok()?;
    let home = java.parent()?.parent()?;
    let release = std::fs::read_to_string(home.join("release")).ok()?;
    let version = release.lines().find_map(|line| {
        let value = line.strip_prefix("JAVA_VERSION=")?;
        Some(value.trim().trim_matches('"').to_string())
    })?;
    let major = java_major_version(&version)?;
    (major < JAVA_HOOK_MIN_RELEASE).then(|| {
        format!(
            "the Java runtime {} is Java {version}, but the Java hook needs Java \
             {JAVA_HOOK_MIN_RELEASE} or later",
            home.display()
        )
    })
}

/// Returns the major release of a `JAVA_VERSION` such as `17.0.15`, `21` or `1.8.0_402`.
fn java_major_version(version: &str) -> Option<u32> {
    let mut parts = version.split(['.', '_', '+', '-']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        return parts.next()?.parse().ok();
    }
    Some(first)
}

fn perl(
    arguments: &[OsString],
    settings: &Settings,
    hooks_dir: Option<&Path>,
) -> Result<Vec<(Verdict, String)>, CheckError> {
    if let Some(flag) = perl_taint_flag(arguments) {
        let mode = if flag == 'T' {
            "taint mode"
        } else {
            "taint mode with warnings"
        };
        return Ok(vec![(
            Verdict::ReferencesOnly,
            format!(
                "perl -{flag} ({mode}) ignores PERL5OPT, so the Perl hook does not load and \
                 %ENV holds the references"
            ),
        )]);
    }
    let options = settings
        .perl_options
        .as_deref()
        .unwrap_or_default()
        .as_bytes();
    let taint_warnings = match perl_options(options) {
        PerlOptions::Illegal(switch) => {
            return Err(CheckError::new(format!(
                "perl will not start: PERL5OPT contains -{switch}, so Perl exits with \
                 \"Illegal switch in PERL5OPT: -{switch}\". Perl accepts only -C, -D, -I, -M, \
                 -U, -d, -m, -t, -w and -W there, and -T only as the first switch (which makes \
                 it ignore the rest of PERL5OPT, the Perl hook included); remove -{switch} \
                 from PERL5OPT or give it on perl's command line"
            )));
        }
        // Checked with Perl 5.36: `PERL5OPT="-T -MModule"` loads no Module.
        PerlOptions::TaintFirst => {
            return Ok(vec![(
                Verdict::ReferencesOnly,
                "PERL5OPT starts with -T, which turns on taint mode and makes Perl ignore the \
                 rest of PERL5OPT, where the library adds the Perl hook, so %ENV holds the \
                 references"
                    .to_string(),
            )]);
        }
        PerlOptions::TaintWarnings => true,
        PerlOptions::Accepted => false,
    };
    if let Some(dir) = hooks_dir {
        if dir
            .as_os_str()
            .as_bytes()
            .iter()
            .any(u8::is_ascii_whitespace)
        {
            return Ok(vec![(
                Verdict::ReferencesOnly,
                format!(
                    "the hooks directory {} contains whitespace, which PERL5OPT cannot hold, \
                     so the Perl hook does not load and %ENV holds the references",
                    dir.display()
                ),
            )]);
        }
    }
    if let (None, Some(dir)) = (&settings.no_perl, hooks_dir) {
        let hook = dir.join(PERL_HOOK);
        // Checked with Perl 5.36: `-MEnvProxy::Hook` with an empty Hook.pm stops perl with
        // status 255 before the program runs.
        if hook.is_file() && hook_files::source_problem(&hook).is_some() {
            return Err(CheckError::new(format!(
                "perl will not start: the Perl hook {} is empty, and the library adds it to \
                 PERL5OPT, so Perl exits with \"EnvProxy/Hook.pm did not return a true \
                 value\" before the program runs; reinstall the hook from an EnvProxy build, \
                 or set ENVPROXY_NO_PERL=1 to start Perl without it",
                hook.display()
            )));
        }
    }
    let mut outcome = hooked(
        "Perl",
        "ENVPROXY_NO_PERL",
        settings.no_perl.as_deref(),
        PERL_HOOK,
        hooks_dir,
        "%ENV holds the references, because Perl copies the environment into it at start",
        "the Perl hook {hook}, which the library adds to PERL5OPT, makes %ENV resolve",
    );
    if taint_warnings && outcome[0].0 == Verdict::Resolved {
        // Checked with Perl 5.36: the value resolves and the warning goes to stderr.
        outcome.push((
            Verdict::ResolvedWithCaveat,
            "PERL5OPT contains -t, which turns on taint checks with warnings: the Perl hook \
             still resolves %ENV, but Perl prints \"Insecure dependency in connect while \
             running with -t switch\" on stderr when the hook connects to the agent"
                .to_string(),
        ));
    }
    Ok(outcome)
}

/// The effect of the switches of `PERL5OPT` in Perl 5.36 (`perl.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PerlOptions {
    /// Every switch is one Perl accepts there, and none is `-t`.
    Accepted,
    /// `-T` is the first switch: taint mode, and Perl ignores the rest of `PERL5OPT`.
    TaintFirst,
    /// A word starts with `-t`: taint checks that warn instead of failing.
    TaintWarnings,
    /// A word starts with a switch other than `CDIMUdmtwW`, such as a `-T` after the first
    /// word: Perl exits with "Illegal switch in PERL5OPT".
    Illegal(char),
}

/// Reads `PERL5OPT` as Perl does: words split at whitespace, each with an optional `-`, whose
/// first letter only is checked. Later letters of a word, as in `-wT`, are bundled switches
/// that Perl accepts.
fn perl_options(options: &[u8]) -> PerlOptions {
    // Perl's isSPACE: space, \t, \n, \v, \f and \r.
    let is_space = |b: &u8| matches!(*b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = options
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(options.len());
    if options[start..].starts_with(b"-T") {
        return PerlOptions::TaintFirst;
    }
    let mut taint_warnings = false;
    for word in options.split(is_space).filter(|word| !word.is_empty()) {
        let word = word.strip_prefix(b"-").unwrap_or(word);
        let Some(&switch) = word.first() else {
            continue;
        };
        if !b"CDIMUdmtwW".contains(&switch) {
            return PerlOptions::Illegal(char::from(switch));
        }
        taint_warnings |= switch == b't';
    }
    if taint_warnings {
        PerlOptions::TaintWarnings
    } else {
        PerlOptions::Accepted
    }
}

/// Judges a runtime whose values resolve only through a hook file. `switched_off` is the
/// value of the variable `switch` when it turns the hook off. `resolved` contains `{hook}`,
/// replaced by the hook's path.
fn hooked(
    language: &str,
    switch: &str,
    switched_off: Option<&str>,
    hook: &str,
    hooks_dir: Option<&Path>,
    copied: &str,
    resolved: &str,
) -> Vec<(Verdict, String)> {
    if let Some(value) = switched_off {
        return vec![(
            Verdict::ReferencesOnly,
            format!("{switch}={value} turns the {language} hook off, so {copied}"),
        )];
    }
    let Some(dir) = hooks_dir else {
        return vec![(
            Verdict::ReferencesOnly,
            format!(
                "the {language} hook is not installed (no hooks directory was found; set \
                 ENVPROXY_HOOKS_DIR), so {copied}"
            ),
        )];
    };
    let path = dir.join(hook);
    if !path.is_file() {
        return vec![(
            Verdict::ReferencesOnly,
            format!(
                "the {language} hook is not installed ({} does not exist), so {copied}",
                path.display()
            ),
        )];
    }
    let problem = if hook == JAVA_HOOK {
        hook_files::java_agent_problem(&path)
    } else {
        hook_files::source_problem(&path)
    };
    if let Some(problem) = problem {
        return vec![(
            Verdict::ReferencesOnly,
            format!(
                "the {language} hook {} is not usable because {problem}, so {copied}; \
                 reinstall it from an EnvProxy build",
                path.display()
            ),
        )];
    }
    vec![(
        Verdict::Resolved,
        resolved.replace("{hook}", &path.display().to_string()),
    )]
}

/// Returns the first of the flags `-I`, `-E` and `-S` among Python's options, which end at
/// the script, `-c` or `-m`.
fn python_isolating_flag(arguments: &[OsString]) -> Option<char> {
    let mut words = arguments.iter();
    while let Some(word) = words.next() {
        let word = word.as_bytes();
        if word == b"-" || word == b"--" || !word.starts_with(b"-") {
            return None;
        }
        if word.starts_with(b"--") {
            continue;
        }
        for (index, &letter) in word.iter().enumerate().skip(1) {
            match letter {
                b'I' | b'E' | b'S' => return Some(letter as char),
                b'c' | b'm' => return None,
                // The rest of the word, or the next word, is the option's value.
                b'W' | b'X' => {
                    if index + 1 == word.len() {
                        words.next();
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    None
}

/// Returns the first of the taint flags `-T` and `-t` among Perl's options, which end at the
/// script or `-e`.
fn perl_taint_flag(arguments: &[OsString]) -> Option<char> {
    for word in arguments {
        let word = word.as_bytes();
        if word == b"-" || word == b"--" || !word.starts_with(b"-") {
            return None;
        }
        for &letter in &word[1..] {
            match letter {
                b'T' | b't' => return Some(letter as char),
                b'e' | b'E' => return None,
                // The rest of the word is the option's value.
                b'I' | b'M' | b'm' | b'x' | b'd' | b'D' | b'l' | b'0' | b'C' | b'i' => break,
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn runtime_names() {
        let cases = [
            ("python3", Some(Runtime::Python)),
            ("python3.11", Some(Runtime::Python)),
            ("python", Some(Runtime::Python)),
            ("python-config", None),
            ("java", Some(Runtime::Java)),
            ("nodejs", Some(Runtime::Node)),
            ("perl5.36.0", Some(Runtime::Perl)),
            ("ruby3.1", Some(Runtime::Ruby)),
            ("php8.2", Some(Runtime::Php)),
            ("bash", Some(Runtime::Shell)),
            ("probe", None),
        ];
        for (name, expected) in cases {
            assert_eq!(Runtime::from_name(name), expected, "{name}");
        }
    }

    #[test]
    fn python_flags_that_skip_the_hook() {
        let cases: [(&[&str], Option<char>); 8] = [
            (&["-I", "app.py"], Some('I')),
            (&["-uE", "app.py"], Some('E')),
            (&["-W", "ignore", "-S"], Some('S')),
            (&["-X", "dev", "app.py", "-I"], None),
            (&["-c", "print(1)", "-I"], None),
            (&["-m", "http.server", "-E"], None),
            (&["app.py", "-I"], None),
            (&["-u", "--", "-I"], None),
        ];
        for (arguments, expected) in cases {
            assert_eq!(
                python_isolating_flag(&words(arguments)),
                expected,
                "{arguments:?}"
            );
        }
    }

    #[test]
    fn perl_taint_flags() {
        let cases: [(&[&str], Option<char>); 7] = [
            (&["-T", "app.pl"], Some('T')),
            (&["-wT", "app.pl"], Some('T')),
            (&["-t", "app.pl"], Some('t')),
            (&["-w", "app.pl"], None),
            (&["-e", "print 1", "-T"], None),
            (&["-ITest", "app.pl"], None),
            (&["app.pl", "-T"], None),
        ];
        for (arguments, expected) in cases {
            assert_eq!(
                perl_taint_flag(&words(arguments)),
                expected,
                "{arguments:?}"
            );
        }
    }

    #[test]
    fn perl5opt_switches() {
        let cases: [(&str, PerlOptions); 9] = [
            ("", PerlOptions::Accepted),
            ("-MStrict -I/opt/lib", PerlOptions::Accepted),
            ("-wT", PerlOptions::Accepted),
            ("-t", PerlOptions::TaintWarnings),
            ("-w - -tw", PerlOptions::TaintWarnings),
            ("  -T -w", PerlOptions::TaintFirst),
            ("-w -T", PerlOptions::Illegal('T')),
            ("-t -T", PerlOptions::Illegal('T')),
            ("-x", PerlOptions::Illegal('x')),
        ];
        for (options, expected) in cases {
            assert_eq!(perl_options(options.as_bytes()), expected, "{options:?}");
        }
    }

    #[test]
    fn java_major_versions() {
        let cases = [
            ("17.0.15", Some(17)),
            ("21", Some(21)),
            ("25-ea", Some(25)),
            ("11.0.2", Some(11)),
            ("1.8.0_402", Some(8)),
            ("", None),
        ];
        for (version, expected) in cases {
            assert_eq!(java_major_version(version), expected, "{version}");
        }
    }

    #[test]
    fn hook_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            disabled: None,
            ..Settings::default()
        };
        let outcome = judge(Runtime::Java, &[], None, &settings, Some(dir.path())).unwrap();
        assert_eq!(outcome[0].0, Verdict::ReferencesOnly);
        assert!(outcome[0].1.contains("not installed"), "{}", outcome[0].1);

        std::fs::create_dir_all(dir.path().join("java")).unwrap();
        std::fs::write(dir.path().join(JAVA_HOOK), b"").unwrap();
        let outcome = judge(Runtime::Java, &[], None, &settings, Some(dir.path())).unwrap();
        assert_eq!(outcome[0].0, Verdict::ReferencesOnly);
        assert!(
            outcome[0].1.contains("because it is empty"),
            "{}",
            outcome[0].1
        );

        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../hooks")
                .join(JAVA_HOOK),
            dir.path().join(JAVA_HOOK),
        )
        .unwrap();
        let outcome = judge(Runtime::Java, &[], None, &settings, Some(dir.path())).unwrap();
        assert_eq!(outcome[0].0, Verdict::Resolved);

        let off = Settings {
            no_java: Some("yes".to_string()),
            ..settings.clone()
        };
        let outcome = judge(Runtime::Java, &[], None, &off, Some(dir.path())).unwrap();
        assert_eq!(outcome[0].0, Verdict::ReferencesOnly);
        assert!(
            outcome[0].1.starts_with("ENVPROXY_NO_JAVA=yes"),
            "{}",
            outcome[0].1
        );
    }
}
