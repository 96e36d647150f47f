//! Finding the file a command line runs, and reading a script's `#!` line.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::unistd::{access, AccessFlags};

use super::CheckError;

/// Maximum length of a `#!` line that Linux reads (`BINPRM_BUF_SIZE` since Linux 5.1).
const SHEBANG_MAX: usize = 256;

/// The search path of glibc's `execvp` when `PATH` is not set (`_CS_PATH`, glibc 2.36).
const DEFAULT_SEARCH_PATH: &str = "/bin:/usr/bin";

/// Returns the file that `program` names, as `execvp` finds it: the path itself when it
/// contains a `/`, else the first executable match in `search_path` (glibc's default when it
/// is not set). Relative paths start at `directory`, or at the current directory.
pub fn locate(
    program: &OsStr,
    search_path: Option<&OsStr>,
    directory: Option<&Path>,
) -> Result<PathBuf, CheckError> {
    let display_name = shown(program);
    if program.is_empty() {
        return Err(CheckError::new("the program name is empty"));
    }
    let in_directory = |path: PathBuf| in_directory(&path, directory);
    if program.as_bytes().contains(&b'/') {
        let path = in_directory(PathBuf::from(program));
        check_executable(&path)?;
        return Ok(path);
    }
    let directories = search_path.unwrap_or(OsStr::new(DEFAULT_SEARCH_PATH));
    for entry in directories.as_bytes().split(|&b| b == b':') {
        // An empty entry is the working directory, as in execvp.
        let entry = if entry.is_empty() { b"." } else { entry };
        let candidate = in_directory(Path::new(OsStr::from_bytes(entry)).join(program));
        if candidate.is_file() && access(&candidate, AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
    }
    let mut message = match search_path {
        Some(value) => format!(
            "{display_name}: command not found in PATH ({})",
            value.to_string_lossy()
        ),
        None => format!(
            "{display_name}: command not found in {DEFAULT_SEARCH_PATH}, which execvp \
             searches when PATH is not set"
        ),
    };
    if program.as_bytes().ends_with(b"\r") {
        message.push_str(
            "; the name ends with a carriage return, as a `#!` line of a file with Windows \
             line endings does; convert that file to Unix line endings",
        );
    } else if in_directory(PathBuf::from(program)).is_file() {
        message.push_str(&format!(
            "; to check the file {display_name} in the current directory, give its path: ./{display_name}"
        ));
    }
    Err(CheckError::new(message))
}

/// Returns `path` as a program started in `directory` opens it: a relative path starts there,
/// and `.` components are dropped.
pub fn in_directory(path: &Path, directory: Option<&Path>) -> PathBuf {
    match directory {
        Some(directory) if path.is_relative() => directory.join(
            path.components()
                .filter(|component| *component != Component::CurDir)
                .collect::<PathBuf>(),
        ),
        _ => path.to_path_buf(),
    }
}

/// Returns `text` for a message: as it is, or quoted with escapes when it contains a control
/// character such as the `\r` of a Windows line ending, which a terminal would not show.
pub fn shown(text: &OsStr) -> String {
    let lossy = text.to_string_lossy();
    if lossy.chars().any(char::is_control) {
        format!("{lossy:?}")
    } else {
        lossy.into_owned()
    }
}

/// Checks that `path` is a regular file that this user may execute.
fn check_executable(path: &Path) -> Result<(), CheckError> {
    let display_name = path.display();
    let metadata = std::fs::metadata(path).map_err(|err| {
        let reason = match err.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ if err.raw_os_error() == Some(libc::ELOOP) => symlink_loop(path),
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

/// Describes the `ELOOP` of `path`: a symbolic link loop, or a chain of more than 40 links.
fn symlink_loop(path: &Path) -> String {
    let target = match std::fs::read_link(path) {
        Ok(target) => format!(" (it points to {})", target.display()),
        Err(_) => String::new(),
    };
    format!(
        "is a symbolic link loop{target}: following its links leads back to a link already \
         followed, or through more than 40 links; point the link at the real program"
    )
}

/// The interpreter of a `#!` line and its optional argument, which Linux passes as one word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shebang {
    pub interpreter: PathBuf,
    pub argument: Option<OsString>,
}

/// Reads the first bytes of `path`: the longest `#!` line that Linux reads.
pub fn read_head(path: &Path) -> Result<Vec<u8>, CheckError> {
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
    Ok(head[..read].to_vec())
}

/// Parses a `#!` line as Linux does: the interpreter ends at the first blank, and the rest of
/// the line, without surrounding blanks, is one argument. Blanks are spaces and tabs only, so
/// the `\r` of a Windows line ending stays in the last word.
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
    let is_blank = |b: &u8| matches!(*b, b' ' | b'\t');
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected interpreter and argument of a `#!` line.
    type Expected = Option<(&'static str, Option<&'static str>)>;

    #[test]
    fn shebang_interpreter_and_argument() {
        let cases: [(&[u8], Expected); 7] = [
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
            (
                b"#!/usr/bin/env python3\r\n",
                Some(("/usr/bin/env", Some("python3\r"))),
            ),
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
    fn missing_and_directory_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = locate(missing.as_os_str(), None, None).unwrap_err();
        assert!(
            error.to_string().ends_with("missing: no such file"),
            "{error}"
        );

        let error = locate(dir.path().as_os_str(), None, None).unwrap_err();
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

        let found = locate(OsStr::new("tool"), Some(&search), None).unwrap();
        assert_eq!(found, second.join("tool"));

        let error = locate(OsStr::new("no-such-tool"), Some(&search), None).unwrap_err();
        assert!(
            error.to_string().contains("command not found in PATH"),
            "{error}"
        );
    }
}
