//! Location of `libenvproxy.so`, the library `envproxy run` preloads into the command.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// File name of the preload library.
pub const LIBRARY_FILE_NAME: &str = "libenvproxy.so";
/// Environment variable that names the library explicitly.
pub const LIBRARY_VARIABLE: &str = "ENVPROXY_LIB";

/// The library exists at none of the candidate paths.
#[derive(Debug, thiserror::Error)]
#[error(
    "{LIBRARY_FILE_NAME} not found; looked at {}; build it with `cargo build --workspace` or set \
     {LIBRARY_VARIABLE} to its path",
    list(looked_at)
)]
pub struct LibraryNotFound {
    pub looked_at: Vec<PathBuf>,
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
/// An `$ENVPROXY_LIB` that names no file is reported on stderr when another candidate is used.
pub fn find(explicit: Option<OsString>, executable: &Path) -> Result<PathBuf, LibraryNotFound> {
    let has_explicit = explicit.as_ref().is_some_and(|value| !value.is_empty());
    let paths = candidates(explicit, executable);
    for (index, path) in paths.iter().enumerate() {
        if !path.is_file() {
            continue;
        }
        if has_explicit && index > 0 {
            eprintln!(
                "envproxy: {LIBRARY_VARIABLE}={} is not a file; using {}",
                paths[0].display(),
                path.display()
            );
        }
        return Ok(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()));
    }
    Err(LibraryNotFound { looked_at: paths })
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

    #[test]
    fn explicit_library_wins() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("custom.so");
        std::fs::write(&explicit, "").unwrap();
        std::fs::write(dir.path().join(LIBRARY_FILE_NAME), "").unwrap();
        let found = find(
            Some(explicit.clone().into_os_string()),
            &dir.path().join("envproxy"),
        )
        .unwrap();
        assert_eq!(found, std::fs::canonicalize(&explicit).unwrap());
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
        let error = find(
            Some("/nonexistent/x.so".into()),
            &dir.path().join("bin/envproxy"),
        )
        .unwrap_err();
        let message = error.to_string();
        assert_eq!(error.looked_at.len(), 3);
        for path in &error.looked_at {
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        assert!(message.contains("cargo build --workspace"), "{message}");
        assert!(message.contains("ENVPROXY_LIB"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}
