//! Location of `libenvproxy.so`, the library `envproxy run` preloads into the command.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

/// File name of the preload library.
pub const LIBRARY_FILE_NAME: &str = "libenvproxy.so";
/// Environment variable that names the library explicitly.
pub const LIBRARY_VARIABLE: &str = "ENVPROXY_LIB";

/// The library could not be found, or `$ENVPROXY_LIB` names no usable library.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error(
        "{LIBRARY_FILE_NAME} not found; looked at {}; build it with `cargo build --workspace` or \
         set {LIBRARY_VARIABLE} to its path",
        list(looked_at)
    )]
    NotFound { looked_at: Vec<PathBuf> },
    #[error(
        "{LIBRARY_VARIABLE}={} names no file; set it to the path of {LIBRARY_FILE_NAME} or \
         unset it to use the copy beside the envproxy executable",
        path.display()
    )]
    ExplicitMissing { path: PathBuf },
    #[error(
        "{LIBRARY_VARIABLE}={} is not an ELF shared object ({reason}); set it to the path of \
         {LIBRARY_FILE_NAME}",
        path.display()
    )]
    NotSharedObject { path: PathBuf, reason: String },
    #[error(
        "the library path {} contains a {separator}, and the dynamic loader splits LD_PRELOAD \
         at spaces and colons, so no program could load it; move {LIBRARY_FILE_NAME} to a \
         directory whose path has neither and set {LIBRARY_VARIABLE} to it",
        path.display()
    )]
    SplitByLoader {
        path: PathBuf,
        separator: &'static str,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// Returns the candidate paths in order: `$ENVPROXY_LIB` when set, `libenvproxy.so` beside the
/// executable, then `../lib/envproxy/libenvproxy.so` relative to the executable's directory (the
/// layout of an installed prefix such as `/usr/local`).
pub fn candidates(explicit: Option<OsString>, executable: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(explicit) = explicit.filter(|value| !value.is_empty()) {
        paths.push(PathBuf::from(explicit));
    }
    if let Some(directory) = executable.parent() {
        paths.push(directory.join(LIBRARY_FILE_NAME));
        if let Some(prefix) = directory.parent() {
            paths.push(prefix.join("lib/envproxy").join(LIBRARY_FILE_NAME));
        }
    }
    paths
}

/// Finds the library and returns its canonical path, so the command and its children see the
/// same absolute path whatever their working directory.
///
/// A non-empty `$ENVPROXY_LIB` is the only candidate: it must name an ELF shared object, and no
/// other copy is used in its place.
pub fn find(explicit: Option<OsString>, executable: &Path) -> Result<PathBuf, LibraryError> {
    if let Some(explicit) = explicit.filter(|value| !value.is_empty()) {
        let path = PathBuf::from(explicit);
        if !path.is_file() {
            return Err(LibraryError::ExplicitMissing { path });
        }
        if let Err(reason) = check_shared_object(&path) {
            return Err(LibraryError::NotSharedObject { path, reason });
        }
        return Ok(canonical(&path));
    }
    let paths = candidates(None, executable);
    match paths.iter().find(|path| path.is_file()) {
        Some(path) => Ok(canonical(path)),
        None => Err(LibraryError::NotFound { looked_at: paths }),
    }
}

/// Fails when `path` contains a byte at which the dynamic loader splits `LD_PRELOAD` (a space
/// or a colon, as ld.so(8) documents), because the loader would then look for two other files.
pub fn check_preload_path(path: &Path) -> Result<(), LibraryError> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let separator = if bytes.contains(&b' ') {
        "space"
    } else if bytes.contains(&b':') {
        "colon"
    } else {
        return Ok(());
    };
    Err(LibraryError::SplitByLoader {
        path: path.to_path_buf(),
        separator,
    })
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// ELF file type of a shared object (`ET_DYN`), at offset 16 of the header.
const ELF_SHARED_OBJECT: u16 = 3;

/// Checks the ELF magic `\x7fELF` and the file type `ET_DYN` in the first 18 bytes of `path`.
fn check_shared_object(path: &Path) -> Result<(), String> {
    let mut header = [0u8; 18];
    let mut file = std::fs::File::open(path).map_err(|err| format!("cannot open it: {err}"))?;
    file.read_exact(&mut header)
        .map_err(|_| "it is shorter than an ELF header".to_string())?;
    if &header[..4] != b"\x7fELF" {
        return Err("it does not start with the ELF magic bytes".to_string());
    }
    // Byte 5 (EI_DATA) is 1 for little-endian and 2 for big-endian fields.
    let file_type = match header[5] {
        2 => u16::from_be_bytes([header[16], header[17]]),
        _ => u16::from_le_bytes([header[16], header[17]]),
    };
    if file_type != ELF_SHARED_OBJECT {
        return Err(format!("its ELF file type is {file_type}, not ET_DYN"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_order() {
        let paths = candidates(
            Some("/opt/lib.so".into()),
            Path::new("/usr/local/bin/envproxy"),
        );
        assert_eq!(
            paths,
            [
                PathBuf::from("/opt/lib.so"),
                PathBuf::from("/usr/local/bin/libenvproxy.so"),
                PathBuf::from("/usr/local/lib/envproxy/libenvproxy.so"),
            ]
        );
        let paths = candidates(Some("".into()), Path::new("/usr/local/bin/envproxy"));
        assert_eq!(paths.len(), 2);
    }

    /// Returns the first bytes of a little-endian ELF shared object header.
    fn elf_header() -> Vec<u8> {
        let mut header = b"\x7fELF\x02\x01\x01".to_vec();
        header.resize(16, 0);
        header.extend_from_slice(&ELF_SHARED_OBJECT.to_le_bytes());
        header.resize(64, 0);
        header
    }

    #[test]
    fn explicit_library_wins() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("custom.so");
        std::fs::write(&explicit, elf_header()).unwrap();
        std::fs::write(dir.path().join(LIBRARY_FILE_NAME), elf_header()).unwrap();
        let found = find(
            Some(explicit.clone().into_os_string()),
            &dir.path().join("envproxy"),
        )
        .unwrap();
        assert_eq!(found, std::fs::canonicalize(&explicit).unwrap());
    }

    #[test]
    fn missing_explicit_library_is_error() {
        let dir = tempfile::tempdir().unwrap();
        // A usable copy beside the executable must not replace the one named explicitly.
        std::fs::write(dir.path().join(LIBRARY_FILE_NAME), elf_header()).unwrap();
        let error = find(
            Some("/nonexistent/x.so".into()),
            &dir.path().join("envproxy"),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, LibraryError::ExplicitMissing { .. }),
            "{message}"
        );
        assert!(
            message.contains("ENVPROXY_LIB=/nonexistent/x.so"),
            "{message}"
        );
        assert!(message.contains("names no file"), "{message}");
    }

    #[test]
    fn explicit_non_elf_file_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let executable_header = {
            let mut header = elf_header();
            header[16] = 2; // ET_EXEC
            header
        };
        let cases: [(&str, Vec<u8>, &str); 3] = [
            ("text.so", b"not a library at all\n".to_vec(), "ELF magic"),
            ("short.so", b"\x7fEL".to_vec(), "shorter than an ELF header"),
            ("program", executable_header, "not ET_DYN"),
        ];
        for (name, content, reason) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let error = find(
                Some(path.clone().into_os_string()),
                &dir.path().join("envproxy"),
            )
            .unwrap_err();
            let message = error.to_string();
            assert!(
                matches!(error, LibraryError::NotSharedObject { .. }),
                "{message}"
            );
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("not an ELF shared object"), "{message}");
            assert!(message.contains(reason), "{name}: {message}");
        }
    }

    #[test]
    fn installed_prefix_layout_found() {
        let dir = tempfile::tempdir().unwrap();
        let lib_dir = dir.path().join("lib/envproxy");
        std::fs::create_dir_all(&lib_dir).unwrap();
        std::fs::write(lib_dir.join(LIBRARY_FILE_NAME), "").unwrap();
        let found = find(None, &dir.path().join("bin/envproxy")).unwrap();
        assert_eq!(
            found,
            std::fs::canonicalize(lib_dir.join(LIBRARY_FILE_NAME)).unwrap()
        );
    }

    #[test]
    fn missing_library_lists_every_path() {
        let dir = tempfile::tempdir().unwrap();
        let error = find(None, &dir.path().join("bin/envproxy")).unwrap_err();
        let message = error.to_string();
        let LibraryError::NotFound { looked_at } = &error else {
            panic!("{message}");
        };
        assert_eq!(looked_at.len(), 2);
        for path in looked_at {
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        assert!(message.contains("cargo build --workspace"), "{message}");
        assert!(message.contains("ENVPROXY_LIB"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}
