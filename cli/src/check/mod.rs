//! `envproxy check`: reports whether a program started through `envproxy run` (or with
//! `libenvproxy.so` preloaded) will see resolved values, and why.
//!
//! The check reads files only and starts nothing. It follows the command line as the kernel
//! and `execvp` would: a `PATH` search, `env` (with the variables, `-u` and `-C` it applies),
//! `#!` lines up to their interpreter, and `/bin/sh` for a file that the kernel rejects with
//! `ENOEXEC` but `execvp` runs with the shell. It then judges the ELF file that runs (static, Go,
//! setuid, its C library) and the runtime that the file name identifies, with the hooks that
//! the library would load from the hooks directory.

mod elf;
mod env_command;
mod hook_files;
mod kernel;
mod program;
mod runtime;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::environment::{append_preload, PRELOAD_VARIABLE};
use crate::library::{self, LIBRARY_VARIABLE};
use elf::{ElfFacts, Libc};
use env_command::EnvCommand;
use program::Shebang;
use runtime::Runtime;

/// Exit status when the program will see resolved values, with or without a caveat.
pub const EXIT_RESOLVED: i32 = 0;
/// Exit status when the program will see references.
pub const EXIT_REFERENCES: i32 = 1;
/// Exit status for a usage error or a file that cannot be checked.
pub const EXIT_ERROR: i32 = 2;

/// Maximum nesting of `#!` interpreters and `env` commands that is followed. Linux itself
/// fails a deeper chain of interpreters with `ELOOP`.
const MAX_DEPTH: usize = 5;

/// The shell that glibc's `execvp` runs a file with when the kernel rejects it with
/// `ENOEXEC` (`_PATH_BSHELL`).
const SHELL: &str = "/bin/sh";

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    output: Output,
    /// The program's path, or, after `--`, a command and its arguments as `envproxy run` takes
    /// them (a name without `/` is searched in PATH).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PATH|COMMAND"
    )]
    command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// The verdict on the first line, then one reason per line.
    Text,
    /// One JSON object with `command`, `program`, `verdict`, `resolved` and `reasons`, or,
    /// when the file cannot be checked, with `command`, `verdict` (`error`), `resolved` and
    /// `error`.
    Json,
}

/// A file that cannot be checked, or a command line that names none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CheckError(String);

impl CheckError {
    pub fn new(message: impl Into<String>) -> CheckError {
        CheckError(message.into())
    }
}

/// Whether the program reads resolved values, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Resolved,
    ResolvedWithCaveat,
    ReferencesOnly,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Resolved => "resolved",
            Verdict::ResolvedWithCaveat => "resolved with a caveat",
            Verdict::ReferencesOnly => "references only",
        }
    }
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text())
    }
}

/// The result of a check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line as given.
    pub command: Vec<String>,
    /// The file the command line names.
    pub program: String,
    pub verdict: Verdict,
    /// True for `resolved` and `resolved with a caveat`.
    pub resolved: bool,
    /// One sentence per fact that led to the verdict, in the order they were found.
    pub reasons: Vec<String>,
}

/// The environment variables of the program being judged, by name.
pub type Variables = BTreeMap<OsString, OsString>;

/// The settings of the library and of `execvp` that the environment of the judged program
/// contains. The check starts from its own environment, which `envproxy run` passes on to the
/// command, and applies the changes of each `env` on the command line.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The value of `ENVPROXY_ENABLED` when it turns EnvProxy off (`0`, `false`, `no` or
    /// `off`).
    pub disabled: Option<String>,
    /// The value of `ENVPROXY_NO_PYTHON` when it turns the Python hook off.
    pub no_python: Option<String>,
    /// The value of `ENVPROXY_NO_JAVA` when it turns the Java hook off.
    pub no_java: Option<String>,
    /// The value of `ENVPROXY_NO_PERL` when it turns the Perl hook off.
    pub no_perl: Option<String>,
    /// `ENVPROXY_HOOKS_DIR`.
    pub hooks_dir: Option<PathBuf>,
    /// `PATH`.
    pub search_path: Option<OsString>,
    /// `LD_PRELOAD`.
    pub preload: Option<OsString>,
    /// `PERL5OPT`, to which the library appends the Perl hook.
    pub perl_options: Option<OsString>,
}

impl Settings {
    pub fn from_variables(variables: &Variables) -> Settings {
        let get = |name: &str| variables.get(OsStr::new(name));
        let switch = |name: &str| {
            get(name)
                .map(|value| value.to_string_lossy().into_owned())
                .filter(|value| envproxy_proto::is_switch_on(value))
        };
        Settings {
            disabled: get("ENVPROXY_ENABLED")
                .map(|value| value.to_string_lossy().into_owned())
                .filter(|value| envproxy_proto::is_disabled(value)),
            no_python: switch("ENVPROXY_NO_PYTHON"),
            no_java: switch("ENVPROXY_NO_JAVA"),
            no_perl: switch("ENVPROXY_NO_PERL"),
            hooks_dir: get("ENVPROXY_HOOKS_DIR")
                .filter(|value| !value.is_empty())
                .map(PathBuf::from),
            search_path: get("PATH").cloned(),
            preload: get(PRELOAD_VARIABLE).cloned(),
            perl_options: get("PERL5OPT").cloned(),
        }
    }
}

/// Runs the check and prints the report. Returns [`EXIT_RESOLVED`], [`EXIT_REFERENCES`] or
/// [`EXIT_ERROR`].
pub fn run(args: CheckArgs) -> i32 {
    let executable = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("envproxy"));
    let report = match check(&args.command, std::env::vars_os().collect(), &executable) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("envproxy check: {err}");
            if args.output == Output::Json {
                let report = ErrorReport {
                    command: words_of(&args.command),
                    verdict: "error",
                    resolved: false,
                    error: err.to_string(),
                };
                if let Ok(json) = serde_json::to_string_pretty(&report) {
                    print_ignoring_closed_pipe(&(json + "\n"));
                }
            }
            return EXIT_ERROR;
        }
    };
    let text = match args.output {
        Output::Text => {
            let mut text = format!("{}\n", report.verdict.text());
            for reason in &report.reasons {
                text.push_str(&format!("  - {reason}\n"));
            }
            text
        }
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(err) => {
                eprintln!("envproxy check: cannot encode the report as JSON: {err}");
                return EXIT_ERROR;
            }
        },
    };
    print_ignoring_closed_pipe(&text);
    if report.resolved {
        EXIT_RESOLVED
    } else {
        EXIT_REFERENCES
    }
}

/// Writes `text` to stdout. A closed pipe (`envproxy check ... | head -1`) still gets the
/// verdict's exit status, so a failed write is ignored.
fn print_ignoring_closed_pipe(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

fn words_of(command: &[OsString]) -> Vec<String> {
    command
        .iter()
        .map(|word| word.to_string_lossy().into_owned())
        .collect()
}

/// The JSON output of `check -o json` for a file that cannot be checked.
#[derive(Debug, Serialize)]
struct ErrorReport {
    command: Vec<String>,
    /// Always `error`.
    verdict: &'static str,
    /// Always false.
    resolved: bool,
    /// The message also written to stderr.
    error: String,
}

/// The library `envproxy run` would preload, with its ELF facts.
struct Library {
    path: PathBuf,
    facts: ElfFacts,
}

/// The state of one check: what it found so far.
struct Checker {
    library: Result<Library, String>,
    /// The environment of the program judged next.
    variables: Variables,
    /// The working directory of the program judged next, when an `env -C` changed it.
    directory: Option<PathBuf>,
    verdict: Verdict,
    reasons: Vec<String>,
}

/// Checks the command line `command` (a path, or a program and its arguments) as
/// `envproxy run` would start it with the environment `variables`. `executable` is the
/// `envproxy` binary, beside which the library is searched.
pub fn check(
    command: &[OsString],
    mut variables: Variables,
    executable: &Path,
) -> Result<Report, CheckError> {
    let Some(first) = command.first() else {
        return Err(CheckError::new("no program given"));
    };
    let library = find_library(variables.get(OsStr::new(LIBRARY_VARIABLE)), executable);
    if let Ok(library) = &library {
        // As `envproxy run` does for the command.
        let preload = append_preload(
            variables
                .get(OsStr::new(PRELOAD_VARIABLE))
                .map(OsString::as_os_str),
            &library.path,
        );
        variables.insert(OsString::from(PRELOAD_VARIABLE), preload);
    }
    let mut checker = Checker {
        library,
        variables,
        directory: None,
        verdict: Verdict::Resolved,
        reasons: Vec::new(),
    };
    let program = checker.locate(first)?;
    checker.command(&program, command, 0, true)?;
    Ok(Report {
        command: words_of(command),
        program: program.display().to_string(),
        verdict: checker.verdict,
        resolved: checker.verdict != Verdict::ReferencesOnly,
        reasons: checker.reasons,
    })
}

fn find_library(explicit: Option<&OsString>, executable: &Path) -> Result<Library, String> {
    let path = library::find(explicit.cloned(), executable).map_err(|err| err.to_string())?;
    let facts = elf::read_file(&path)
        .map_err(|reason| format!("{} is not usable: {reason}", path.display()))?;
    Ok(Library { path, facts })
}

/// Returns the hooks directory the library uses: `ENVPROXY_HOOKS_DIR`, else the first of
/// `hooks`, `../hooks` and `../../hooks` beside the library that exists.
fn find_hooks_dir(settings: &Settings, library: Option<&Library>) -> Option<PathBuf> {
    if let Some(dir) = &settings.hooks_dir {
        return Some(dir.clone());
    }
    let library_dir = library?.path.parent()?.to_path_buf();
    ["hooks", "../hooks", "../../hooks"]
        .iter()
        .map(|relative| library_dir.join(relative))
        .find(|candidate| candidate.is_dir())
        .map(|found| std::fs::canonicalize(&found).unwrap_or(found))
}

impl Checker {
    fn note(&mut self, verdict: Verdict, reason: impl Into<String>) {
        self.verdict = self.verdict.max(verdict);
        self.reasons.push(reason.into());
    }

    fn settings(&self) -> Settings {
        Settings::from_variables(&self.variables)
    }

    /// Finds the file that `program` names, as `execvp` would in the current environment and
    /// working directory.
    fn locate(&self, program: &OsStr) -> Result<PathBuf, CheckError> {
        program::locate(
            program,
            self.settings().search_path.as_deref(),
            self.directory.as_deref(),
        )
    }

    /// Judges `command`, whose first word names the file `path`. `by_execvp` is true when
    /// `execvp` starts it, which runs a file that the kernel rejects as a program with
    /// `/bin/sh`, and false when the kernel does, as for a `#!` interpreter.
    fn command(
        &mut self,
        path: &Path,
        command: &[OsString],
        depth: usize,
        by_execvp: bool,
    ) -> Result<(), CheckError> {
        if depth >= MAX_DEPTH {
            return Err(CheckError::new(format!(
                "{}: more than {MAX_DEPTH} nested interpreters or `env` commands; the kernel \
                 does not run such a chain",
                path.display()
            )));
        }
        let name = file_name(&command[0]);
        let arguments = &command[1..];
        if name == "env" {
            let inner = env_command::parse(arguments, &self.variables)?;
            if !inner.command.is_empty() {
                return self.env_command(path, &inner, depth);
            }
        }
        self.file(path, &name, arguments, depth, by_execvp)
    }

    /// Judges the program that `env` at `path` starts, in the environment and working
    /// directory that `env` gives it.
    fn env_command(
        &mut self,
        path: &Path,
        inner: &EnvCommand,
        depth: usize,
    ) -> Result<(), CheckError> {
        inner.apply(&mut self.variables);
        if let Some(directory) = &inner.directory {
            let directory = self.in_directory(Path::new(directory));
            if !directory.is_dir() {
                return Err(CheckError::new(format!(
                    "{}: `env -C {}`: no such directory",
                    path.display(),
                    directory.display()
                )));
            }
            self.directory = Some(directory);
        }
        let next = self.locate(&inner.command[0])?;
        if inner.clears_environment {
            let given: Vec<String> = inner
                .assignments
                .iter()
                .map(|(name, _)| name.to_string_lossy().into_owned())
                .collect();
            let given = if given.is_empty() {
                "no variables".to_string()
            } else {
                format!("only {}", given.join(", "))
            };
            // The references of the environment are gone, whatever the program is.
            self.note(
                Verdict::ReferencesOnly,
                format!(
                    "`env -i` starts {} with {given} in its environment, so the references \
                     of the environment do not reach it",
                    next.display()
                ),
            );
            return Ok(());
        }
        // GNU env starts its command with execvp.
        self.command(&next, &inner.command, depth + 1, true)
    }

    /// Returns `path` as the program judged next opens it: relative paths start at the
    /// directory of `env -C`.
    fn in_directory(&self, path: &Path) -> PathBuf {
        program::in_directory(path, self.directory.as_deref())
    }

    /// Judges the file `path`, started under the name `name` with `arguments`.
    fn file(
        &mut self,
        path: &Path,
        name: &str,
        arguments: &[OsString],
        depth: usize,
        by_execvp: bool,
    ) -> Result<(), CheckError> {
        let runtime = Runtime::from_name(name).or_else(|| {
            let canonical = std::fs::canonicalize(path).ok()?;
            Runtime::from_name(&file_name(canonical.as_os_str()))
        });

        let head = program::read_head(path)?;
        if let Some(shebang) = program::parse_shebang(&head) {
            if let Some(runtime) = runtime {
                // A script named like a runtime starts that runtime in some way of its own,
                // as pyenv and asdf shims do, so the name is all that can be judged.
                self.reasons.push(format!(
                    "{} is a script named `{name}` (a wrapper such as a pyenv shim), so it is \
                     judged as {}",
                    path.display(),
                    runtime.description()
                ));
                if self.wrapper_loads_library() {
                    self.runtime(runtime, arguments, None)?;
                }
                return Ok(());
            }
            let interpreter = self.locate_interpreter(path, &shebang)?;
            self.reasons.push(format!(
                "{} is a script that the kernel runs with {} (its `#!` line)",
                path.display(),
                program::shown(shebang.interpreter.as_os_str())
            ));
            if let Some(argument) = shebang
                .argument
                .as_ref()
                .filter(|a| a.as_bytes().ends_with(b"\r"))
            {
                self.reasons.push(format!(
                    "its `#!` line ends with a carriage return (the file has Windows line \
                     endings), so the interpreter gets the argument {}",
                    program::shown(argument)
                ));
            }
            let mut next = vec![shebang.interpreter.clone().into_os_string()];
            next.extend(shebang.argument);
            next.push(path.as_os_str().to_os_string());
            next.extend_from_slice(arguments);
            return self.command(&interpreter, &next, depth + 1, false);
        }

        if !head.starts_with(&object::elf::ELFMAG) {
            if by_execvp {
                return self.shell_fallback(path, &head, arguments, depth);
            }
            return Err(CheckError::new(format!(
                "{}: the kernel cannot run it: it is neither an ELF file nor a script with a \
                 `#!` line",
                path.display()
            )));
        }
        self.kernel_accepts(path, by_execvp)?;
        let facts = elf::read_file(path).map_err(|reason| {
            CheckError::new(format!(
                "{}: envproxy check cannot read it: {reason}",
                path.display()
            ))
        })?;
        if let Some(problem) = facts.not_a_program() {
            return Err(CheckError::new(format!("{}: {problem}", path.display())));
        }
        self.interpreter_exists(path, &facts)?;
        if self.executable(path, &facts)? {
            self.runtime(runtime.unwrap_or(Runtime::Native), arguments, Some(path))?;
        }
        Ok(())
    }

    /// Judges a file that is neither an ELF file nor a script with a `#!` line, so the kernel
    /// rejects it with `ENOEXEC`. glibc's `execvp` (and `execlp`) then runs it with `/bin/sh`,
    /// whatever its content: an empty file, text, or binary data.
    fn shell_fallback(
        &mut self,
        path: &Path,
        head: &[u8],
        arguments: &[OsString],
        depth: usize,
    ) -> Result<(), CheckError> {
        let line = if head.starts_with(b"#!") {
            "its `#!` line names no interpreter"
        } else {
            "it has no `#!` line"
        };
        self.reasons.push(format!(
            "{} is not an ELF file and {line}, so the kernel rejects it (Exec format error) \
             and execvp, as envproxy run uses it, runs it with {SHELL}",
            path.display()
        ));
        if head.contains(&0) {
            self.reasons.push(format!(
                "it contains NUL bytes, so it looks like a binary file rather than a shell \
                 script; glibc's execvp runs it with {SHELL} all the same, which most likely \
                 fails on it"
            ));
        }
        let shell = program::locate(OsStr::new(SHELL), None, None)?;
        let mut next = vec![OsString::from(SHELL), path.as_os_str().to_os_string()];
        next.extend_from_slice(arguments);
        self.command(&shell, &next, depth + 1, false)
    }

    /// Checks the ELF file `path` as `execve` does, and returns an error that says why when
    /// the kernel rejects it.
    fn kernel_accepts(&self, path: &Path, by_execvp: bool) -> Result<(), CheckError> {
        let message = match kernel::check(path) {
            Ok(()) => return Ok(()),
            Err(kernel::Rejection::ExecFormat(reason)) if by_execvp => format!(
                "the kernel rejects it (Exec format error): {reason}. execvp then runs it with \
                 {SHELL}, which fails on a binary file, so the program does not start"
            ),
            Err(kernel::Rejection::ExecFormat(reason)) => {
                format!("the kernel rejects it (Exec format error): {reason}")
            }
            Err(kernel::Rejection::InputOutput(reason)) => {
                format!("the kernel fails to start it (Input/output error): {reason}")
            }
            Err(kernel::Rejection::Inconsistent(reason)) => reason,
        };
        Err(CheckError::new(format!("{}: {message}", path.display())))
    }

    /// Checks that the ELF interpreter (the dynamic loader named by `PT_INTERP`) of the
    /// program `path` exists. The kernel opens it by its path as written, so a relative path
    /// starts at the working directory, and fails `execve` with `ENOENT` when it is missing.
    // NOTE: for a command found through PATH, glibc's execvp tries the next directory of PATH
    // after ENOENT, so a program of the same name later in PATH would run instead. The check
    // reports the first one as an error.
    fn interpreter_exists(&self, path: &Path, facts: &ElfFacts) -> Result<(), CheckError> {
        let Some(written) = &facts.interpreter else {
            return Ok(());
        };
        let interpreter = self.in_directory(Path::new(written));
        let err = match std::fs::metadata(&interpreter) {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let shown = program::shown(OsStr::new(written));
        if err.kind() != std::io::ErrorKind::NotFound {
            return Err(CheckError::new(format!(
                "{}: its ELF interpreter (PT_INTERP) {shown} cannot be opened: {err}, so the \
                 kernel fails to start it",
                path.display()
            )));
        }
        let hint = if facts.libc() == Libc::Musl {
            "it is a musl program, such as one built on Alpine Linux: install musl on this \
             host (on Debian, `apt-get install musl`) or run it in an image that has musl"
        } else {
            "it was built for another distribution, such as NixOS, whose loaders live under \
             /nix/store: run it on that system or in its image, or set this host's loader \
             with `patchelf --set-interpreter`"
        };
        // glibc's execvp runs a file with /bin/sh only after ENOEXEC, never after ENOENT.
        Err(CheckError::new(format!(
            "{}: its ELF interpreter (the dynamic loader named by PT_INTERP) {shown} does not \
             exist, so the kernel fails to start it (No such file or directory) and the \
             program never runs; {hint}",
            path.display()
        )))
    }

    /// Finds the interpreter of the `#!` line of `script`, which the kernel opens by its path
    /// as written: a relative path starts at the working directory, never at `PATH`.
    fn locate_interpreter(&self, script: &Path, shebang: &Shebang) -> Result<PathBuf, CheckError> {
        let written = &shebang.interpreter;
        let mut path = self.in_directory(written);
        if path.is_relative() {
            path = Path::new(".").join(path);
        }
        if path.exists() || path.symlink_metadata().is_ok() {
            return program::locate(path.as_os_str(), None, None).map_err(|err| {
                CheckError::new(format!("the interpreter of {}: {err}", script.display()))
            });
        }
        let shown = program::shown(written.as_os_str());
        if written.as_os_str().as_bytes().ends_with(b"\r") {
            return Err(CheckError::new(format!(
                "{}: the interpreter {shown} of its `#!` line ends with a carriage return, \
                 because the file has Windows line endings, and no such file exists; convert \
                 the file to Unix line endings, for example with `sed -i 's/\\r$//' {}`",
                script.display(),
                script.display()
            )));
        }
        if written.is_relative() {
            let directory = match &self.directory {
                Some(directory) => directory.display().to_string(),
                None => "the current directory".to_string(),
            };
            let name = file_name(written.as_os_str());
            let absolute = self.locate(OsStr::new(&name)).map_or_else(
                |_| format!("/usr/bin/{name}"),
                |found| found.display().to_string(),
            );
            return Err(CheckError::new(format!(
                "{}: the interpreter {shown} of its `#!` line is a relative path, which the \
                 kernel resolves against the working directory ({directory}), not through \
                 PATH, and {} does not exist; write `#!/usr/bin/env {name}` to search PATH, or \
                 an absolute path such as `#!{absolute}`",
                script.display(),
                path.display()
            )));
        }
        Err(CheckError::new(format!(
            "{}: the interpreter {shown} of its `#!` line does not exist",
            script.display()
        )))
    }

    /// Judges how the dynamic loader treats the ELF executable `path`. Returns whether the
    /// library loads, so that the runtime is worth judging.
    fn executable(&mut self, path: &Path, facts: &ElfFacts) -> Result<bool, CheckError> {
        let linking = match &facts.interpreter {
            Some(_) => format!("dynamically linked ({})", facts.libc().name()),
            None if facts.is_static_pie() => "statically linked (static-pie)".to_string(),
            None => "statically linked".to_string(),
        };
        self.reasons.push(format!(
            "{} is a {linking} ELF executable for {}",
            path.display(),
            facts.architecture()
        ));
        if facts.ident_version != object::elf::EV_CURRENT {
            self.reasons.push(format!(
                "its EI_VERSION byte (offset 6 of the ELF header) is {}, not 1 (EV_CURRENT), \
                 but Linux does not check that byte and runs the file",
                facts.ident_version
            ));
        }

        if facts.is_go {
            if let (true, Some(value)) = (facts.has_envproxy_go_module, &self.settings().disabled) {
                // The module reads the switch from the Go program's own copy of the
                // environment and accepts the same values as the library.
                let reason = format!(
                    "a Go program that uses the EnvProxy Go module, but ENVPROXY_ENABLED={value} \
                     turns the module off: its Getenv and LookupEnv return the references, as \
                     os.LookupEnv does"
                );
                self.note(Verdict::ReferencesOnly, reason);
            } else if facts.has_envproxy_go_module {
                self.note(
                    Verdict::ResolvedWithCaveat,
                    "a Go program that uses the EnvProxy Go module: values read through its \
                     Getenv and LookupEnv resolve, but os.Getenv and os.Environ return \
                     references",
                );
            } else {
                self.note(
                    Verdict::ReferencesOnly,
                    "a Go program: os.Getenv reads the copy of the environment Go made at \
                     start, never libc getenv; use the EnvProxy Go module (hooks/go), or start \
                     it with `envproxy run --values-in-environ`",
                );
            }
            return Ok(false);
        }
        if facts.interpreter.is_none() {
            self.note(
                Verdict::ReferencesOnly,
                "statically linked: no dynamic loader runs, so LD_PRELOAD cannot load \
                 libenvproxy.so; start it with `envproxy run --values-in-environ`",
            );
            return Ok(false);
        }
        if !self.environment_loads_library() {
            return Ok(false);
        }
        let secure = self.secure_execution(path)?;
        let library = self.library_compatibility(facts);
        Ok(secure && library)
    }

    /// Judges the variables of the program's environment that keep the library out:
    /// `LD_PRELOAD` without the library, which an `env` on the command line can cause, and
    /// an `ENVPROXY_ENABLED` that turns EnvProxy off. Returns whether the library loads, as far as they decide.
    fn environment_loads_library(&mut self) -> bool {
        let settings = self.settings();
        if let Ok(library) = &self.library {
            let library_path = library.path.clone();
            if let Some(separator) = preload_separator(&library_path) {
                self.note(
                    Verdict::ReferencesOnly,
                    format!(
                        "the library path {} contains a {separator}, and the dynamic loader \
                         splits LD_PRELOAD at spaces and colons, so that path cannot be \
                         preloaded and libenvproxy.so does not load; move the library to a path \
                         without spaces or colons and set {LIBRARY_VARIABLE} to it",
                        program::shown(library_path.as_os_str())
                    ),
                );
                return false;
            }
            match &settings.preload {
                None => {
                    self.note(
                        Verdict::ReferencesOnly,
                        "LD_PRELOAD is not set in the program's environment (`env -u LD_PRELOAD` \
                         removes it), so the dynamic loader does not load libenvproxy.so",
                    );
                    return false;
                }
                Some(preload) if !preload_names(preload, &library_path) => {
                    self.note(
                        Verdict::ReferencesOnly,
                        format!(
                            "LD_PRELOAD in the program's environment is {}, which does not \
                             name {}, so the dynamic loader does not load libenvproxy.so",
                            program::shown(preload),
                            library_path.display()
                        ),
                    );
                    return false;
                }
                Some(_) => {}
            }
        }
        if let Some(value) = &settings.disabled {
            self.note(
                Verdict::ReferencesOnly,
                format!(
                    "ENVPROXY_ENABLED={value} turns libenvproxy.so off, and with it the runtime \
                     hooks it loads"
                ),
            );
            return false;
        }
        true
    }

    /// Judges what can be known about a wrapper script's runtime without its ELF file.
    /// Returns whether the library loads.
    fn wrapper_loads_library(&mut self) -> bool {
        if !self.environment_loads_library() {
            return false;
        }
        if let Err(reason) = &self.library {
            let reason = reason.clone();
            self.note(
                Verdict::ReferencesOnly,
                format!("envproxy run cannot preload the library: {reason}"),
            );
            return false;
        }
        true
    }

    /// Judges setuid, setgid and file capabilities, which make the loader ignore
    /// `LD_PRELOAD` (secure-execution mode, `AT_SECURE`). Returns false when it is ignored
    /// for this user.
    fn secure_execution(&mut self, path: &Path) -> Result<bool, CheckError> {
        let metadata = std::fs::metadata(path)
            .map_err(|err| CheckError::new(format!("{}: {err}", path.display())))?;
        let nosuid = nix::sys::statvfs::statvfs(path)
            .is_ok_and(|stat| stat.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID));
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let mut loads = true;

        let setid = [
            (
                metadata.mode() & libc::S_ISUID != 0,
                "setuid",
                "uid",
                metadata.uid(),
                uid,
            ),
            (
                metadata.mode() & libc::S_ISGID != 0,
                "setgid",
                "gid",
                metadata.gid(),
                gid,
            ),
        ];
        for (set, bit, id_kind, owner, own) in setid {
            if !set {
                continue;
            }
            if nosuid {
                self.reasons.push(format!(
                    "it is {bit}, but its file system is mounted nosuid, so the bit has no \
                     effect"
                ));
            } else if owner == own {
                self.note(
                    Verdict::ResolvedWithCaveat,
                    format!(
                        "it is {bit} to {id_kind} {owner}: started by this {id_kind} it loads \
                         the library, but started with any other {id_kind} the loader runs it \
                         in secure-execution mode and ignores LD_PRELOAD"
                    ),
                );
            } else {
                self.note(
                    Verdict::ReferencesOnly,
                    format!(
                        "it is {bit} to {id_kind} {owner}: the loader runs it in \
                         secure-execution mode and ignores LD_PRELOAD; start it with \
                         `envproxy run --values-in-environ` instead"
                    ),
                );
                loads = false;
            }
        }

        if has_file_capabilities(path) && !nosuid {
            if uid == 0 {
                self.note(
                    Verdict::ResolvedWithCaveat,
                    "it has file capabilities: started by root it loads the library, but \
                     started by any other user the loader runs it in secure-execution mode and \
                     ignores LD_PRELOAD",
                );
            } else {
                self.note(
                    Verdict::ReferencesOnly,
                    "it has file capabilities: the loader runs it in secure-execution mode and \
                     ignores LD_PRELOAD; start it with `envproxy run --values-in-environ` \
                     instead",
                );
                loads = false;
            }
        }
        Ok(loads)
    }

    /// Judges whether the library that would be preloaded suits the program. Returns false when
    /// the loader would not load it.
    fn library_compatibility(&mut self, facts: &ElfFacts) -> bool {
        let library = match &self.library {
            Ok(library) => library,
            Err(reason) => {
                let reason = reason.clone();
                self.note(
                    Verdict::ReferencesOnly,
                    format!("envproxy run cannot preload the library: {reason}"),
                );
                return false;
            }
        };
        let (path, library_facts) = (library.path.display().to_string(), library.facts.clone());
        if library_facts.machine != facts.machine || library_facts.is_64 != facts.is_64 {
            self.note(
                Verdict::ReferencesOnly,
                format!(
                    "the library {path} is built for {}, so the loader skips it for this {} \
                     program; set {LIBRARY_VARIABLE} to a build for {}",
                    library_facts.architecture(),
                    facts.architecture(),
                    facts.architecture()
                ),
            );
            return false;
        }
        let (program_libc, library_libc) = (facts.libc(), library_facts.libc());
        if program_libc != Libc::Unknown
            && library_libc != Libc::Unknown
            && program_libc != library_libc
        {
            // musl's loader ends the program when a preloaded library fails to load, while
            // glibc's prints a warning and ignores it (seen with musl 1.2.3 and glibc 2.36).
            let consequence = if program_libc == Libc::Musl {
                "musl's loader cannot load it and exits with status 127, so the program does \
                 not start at all"
            } else {
                "the loader ignores it"
            };
            self.note(
                Verdict::ReferencesOnly,
                format!(
                    "the program uses {}, but the library {path} is built for {}: \
                     {consequence}; set {LIBRARY_VARIABLE} to a libenvproxy.so built for {}",
                    program_libc.name(),
                    library_libc.name(),
                    program_libc.name()
                ),
            );
            return false;
        }
        true
    }

    /// Judges the runtime, once the library is known to load.
    fn runtime(
        &mut self,
        runtime: Runtime,
        arguments: &[OsString],
        program: Option<&Path>,
    ) -> Result<(), CheckError> {
        let settings = self.settings();
        let hooks_dir = find_hooks_dir(&settings, self.library.as_ref().ok());
        let outcome = runtime::judge(runtime, arguments, program, &settings, hooks_dir.as_deref())?;
        for (verdict, reason) in outcome {
            self.note(verdict, reason);
        }
        Ok(())
    }
}

/// Returns whether `preload`, split at spaces and colons as the dynamic loader splits
/// `LD_PRELOAD`, names the file `library`.
fn preload_names(preload: &OsStr, library: &Path) -> bool {
    let canonical = std::fs::canonicalize(library).ok();
    preload
        .as_bytes()
        .split(|&b| b == b' ' || b == b':')
        .filter(|entry| !entry.is_empty())
        .map(|entry| Path::new(OsStr::from_bytes(entry)))
        .any(|entry| {
            entry == library
                || (canonical.is_some() && std::fs::canonicalize(entry).ok() == canonical)
        })
}

/// Returns the name of the first character of `library` at which the dynamic loader splits
/// `LD_PRELOAD` (glibc 2.36 splits it at spaces and colons), or `None`.
fn preload_separator(library: &Path) -> Option<&'static str> {
    library
        .as_os_str()
        .as_bytes()
        .iter()
        .find_map(|&byte| match byte {
            b' ' => Some("space"),
            b':' => Some("colon"),
            _ => None,
        })
}

/// Returns whether `path` has a `security.capability` extended attribute.
fn has_file_capabilities(path: &Path) -> bool {
    let mut buffer = [0u8; 64];
    rustix::fs::getxattr(path, "security.capability", &mut buffer[..]).is_ok()
}

/// Returns the last component of a program name or path.
fn file_name(word: &OsStr) -> String {
    let bytes = word.as_bytes();
    let name = bytes.rsplit(|&b| b == b'/').next().unwrap_or(bytes);
    String::from_utf8_lossy(name).into_owned()
}
