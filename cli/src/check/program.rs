//! Finding the file a command line runs, and reading a script's `#!` line.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{access, AccessFlags};

use super::CheckError;

/// Maximum length of a `#!` line that Linux reads (`BINPRM_BUF_SIZE` since Linux 5.1).
const SHEBANG_MAX: usize = 256;

/// Returns the file that `program` names, as `execvp` finds it: the path itself when it
/// contains a `/`, else the first executable match in `search_path`.
pub fn locate(program: &OsStr, search_path: Option<&OsStr>) -> Result<PathBuf, CheckError> {
    let display_name = program.to_string_lossy();
    if program.is_empty() {
        return Err(CheckError::new("the program name is empty"));
    }
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        check_executable(&path)?;
        return Ok(path);
    }
    let directories = search_path
        .filter(|value| !value.is_empty())
        .ok_or_else(|| {
            CheckError::new(format!(
                "{display_name}: command not found: PATH is not set; give the program's path instead"
            ))
        })?;
    for directory in std::env::split_paths(directories) {
        let candidate = directory.join(program);
        if candidate.is_file() && access(&candidate, AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
    }
    let mut message = format!(
        "{display_name}: command not found in PATH ({})",
        directories.to_string_lossy()
    );
    if Path::new(program).is_file() {
        message.push_str(&format!(
            "; to check the file {display_name} in the current directory, give its path: ./{display_name}"
        ));
    }
    Err(CheckError::new(message))
}

/// Checks that `path` is a regular file that this user may execute.
fn check_executable(path: &Path) -> Result<(), CheckError> {
    let display_name = path.display();
    let metadata = std::fs::metadata(path).map_err(|err| {
        let reason = match err.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => err.to_string(),
        };
        CheckError::new(format!("{display_name}: {reason}"))
    })?;
    if metadata.is_dir() {
        return Err(CheckError::new(format!(
            "{display_name}: is a directory, not a program"
        )));
    }
    if !metadata.is_file() {
        return Err(CheckError::new(format!(
            "{display_name}: is not a regular file, so it cannot be executed"
        )));
    }
    if access(path, AccessFlags::X_OK).is_err() {
        let mode = metadata.permissions().mode() & 0o7777;
        return Err(CheckError::new(format!(
            "{display_name}: not executable (mode {mode:04o}); make it executable with \
             `chmod +x {display_name}`, or check the interpreter that runs it, for example \
             `envproxy check -- python3 {display_name}`"
        )));
    }
    Ok(())
}

/// The interpreter of a `#!` line and its optional argument, which Linux passes as one word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shebang {
    pub interpreter: PathBuf,
    pub argument: Option<OsString>,
}

/// Reads the `#!` line of `path`, or returns `None` when the file does not start with one.
pub fn read_shebang(path: &Path) -> Result<Option<Shebang>, CheckError> {
    let mut head = [0u8; SHEBANG_MAX];
    let mut file = std::fs::File::open(path)
        .map_err(|err| CheckError::new(format!("{}: cannot open: {err}", path.display())))?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(CheckError::new(format!(
                    "{}: cannot read: {err}",
                    path.display()
                )))
            }
        }
    }
    Ok(parse_shebang(&head[..read]))
}

/// Parses a `#!` line as Linux does: the interpreter ends at the first blank, and the rest of
/// the line, without surrounding blanks, is one argument.
pub fn parse_shebang(head: &[u8]) -> Option<Shebang> {
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let is_blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = line.iter().position(|b| !is_blank(b))?;
    let line = &line[start..];
    let end = line.iter().position(is_blank).unwrap_or(line.len());
    let interpreter = PathBuf::from(OsStr::from_bytes(&line[..end]));
    let rest = trim_blanks(&line[end..]);
    let argument = (!rest.is_empty()).then(|| OsStr::from_bytes(rest).to_os_string());
    Some(Shebang {
        interpreter,
        argument,
    })
}

fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let is_blank = |b: &u8| matches!(*b, b' ' | b'\t' | b'\r');
    let start = bytes
        .iter()
        .position(|b| !is_blank(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The program that `env [OPTION]... [NAME=VALUE]... PROGRAM [ARG]...` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvCommand {
    /// `-i`: the program starts with only the given variables.
    pub clears_environment: bool,
    /// The program and its arguments; empty when `env` only prints the environment.
    pub command: Vec<OsString>,
}

/// Parses the arguments of `env`, or returns `None` for an option it does not know, in which
/// case `env` itself is judged.
pub fn parse_env_arguments(arguments: &[OsString]) -> Option<EnvCommand> {
    let mut clears_environment = false;
    let mut index = 0;
    while index < arguments.len() {
        let word = arguments[index].as_bytes();
        match word {
            b"-i" | b"--ignore-environment" | b"-" => clears_environment = true,
            b"-u" | b"--unset" => index += 1,
            b"--" => {
                index += 1;
                break;
            }
            b"-S" | b"--split-string" => {
                let split = arguments.get(index + 1)?;
                let mut rest = split_words(split);
                rest.extend_from_slice(&arguments[index + 2..]);
                let mut inner = parse_env_arguments(&rest)?;
                inner.clears_environment |= clears_environment;
                return Some(inner);
            }
            _ if word.starts_with(b"-S") => {
                let mut rest = split_words(OsStr::from_bytes(&word[2..]));
                rest.extend_from_slice(&arguments[index + 1..]);
                let mut inner = parse_env_arguments(&rest)?;
                inner.clears_environment |= clears_environment;
                return Some(inner);
            }
            _ if word.starts_with(b"--unset=") || word.starts_with(b"-u") => {}
            _ if word.starts_with(b"-") => return None,
            _ if word.contains(&b'=') => {}
            _ => break,
        }
        index += 1;
    }
    Some(EnvCommand {
        clears_environment,
        command: arguments.get(index..).unwrap_or_default().to_vec(),
    })
}

/// Splits at blanks, as `env -S` does for a string without quotes or escapes.
pub fn split_words(text: &OsStr) -> Vec<OsString> {
    text.as_bytes()
        .split(|b| b.is_ascii_whitespace())
        .filter(|word| !word.is_empty())
        .map(|word| OsStr::from_bytes(word).to_os_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// The expected interpreter and argument of a `#!` line.
    type Expected = Option<(&'static str, Option<&'static str>)>;

    #[test]
    fn shebang_interpreter_and_argument() {
        let cases: [(&[u8], Expected); 6] = [
            (b"#!/bin/sh\necho", Some(("/bin/sh", None))),
            (
                b"#! /usr/bin/python3 -I \nx",
                Some(("/usr/bin/python3", Some("-I"))),
            ),
            (
                b"#!/usr/bin/env -S python3 -E\n",
                Some(("/usr/bin/env", Some("-S python3 -E"))),
            ),
            (b"#!/bin/bash\r\n", Some(("/bin/bash\r", None))),
            (b"#!\n", None),
            (b"echo hi\n", None),
        ];
        for (head, expected) in cases {
            let parsed = parse_shebang(head);
            let expected = expected.map(|(interpreter, argument)| Shebang {
                interpreter: PathBuf::from(interpreter),
                argument: argument.map(OsString::from),
            });
            assert_eq!(parsed, expected, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn env_arguments_name_the_program() {
        let parsed =
            parse_env_arguments(&words(&["A=1", "-u", "B", "python3", "-I", "x.py"])).unwrap();
        assert!(!parsed.clears_environment);
        assert_eq!(parsed.command, words(&["python3", "-I", "x.py"]));

        let parsed = parse_env_arguments(&words(&["-i", "PATH=/bin", "node", "app.js"])).unwrap();
        assert!(parsed.clears_environment);
        assert_eq!(parsed.command, words(&["node", "app.js"]));

        let parsed = parse_env_arguments(&words(&["-S", "perl -w", "script.pl"])).unwrap();
        assert_eq!(parsed.command, words(&["perl", "-w", "script.pl"]));

        let parsed = parse_env_arguments(&words(&["-Spython3 -E"])).unwrap();
        assert_eq!(parsed.command, words(&["python3", "-E"]));

        let parsed = parse_env_arguments(&words(&["A=1"])).unwrap();
        assert!(parsed.command.is_empty());

        assert_eq!(parse_env_arguments(&words(&["--chdir=/", "ls"])), None);
    }

    #[test]
    fn missing_and_directory_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = locate(missing.as_os_str(), None).unwrap_err();
        assert!(
            error.to_string().ends_with("missing: no such file"),
            "{error}"
        );

        let error = locate(dir.path().as_os_str(), None).unwrap_err();
        assert!(error.to_string().contains("is a directory"), "{error}");
    }

    #[test]
    fn search_path_finds_executable_only() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        let second = dir.path().join("second");
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        std::fs::write(first.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::write(second.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(second.join("tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let search = std::env::join_paths([&first, &second]).unwrap();

        let found = locate(OsStr::new("tool"), Some(&search)).unwrap();
        assert_eq!(found, second.join("tool"));

        let error = locate(OsStr::new("no-such-tool"), Some(&search)).unwrap_err();
        assert!(
            error.to_string().contains("command not found in PATH"),
            "{error}"
        );
    }
}
