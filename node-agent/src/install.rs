//! Installation of the library and the runtime hooks into the node's hostPath directory, where
//! the webhook mounts them read-only into pods.
//!
//! # Layout of the target directory
//!
//! ```text
//! <target>/versions/<version>/lib/libenvproxy.so         glibc build
//! <target>/versions/<version>/lib/musl/libenvproxy.so    musl build
//! <target>/versions/<version>/hooks/python/...           Python hook
//! <target>/versions/<version>/hooks/java/...             Java agent
//! <target>/current -> versions/<version>
//! <target>/lib     -> current/lib
//! <target>/hooks   -> current/hooks
//! ```
//!
//! The version directory contains a copy of the source directory (one link per top-level entry of
//! the source), and `<version>` is the first 16 hex digits of a SHA-256 over its file names,
//! modes and contents. All links are relative, so they resolve wherever the directory is
//! mounted. Pods use the stable names (`<mount>/lib/libenvproxy.so`). The library finds the
//! hooks beside its own resolved path, so a process always uses the hooks of the version whose
//! library it loaded.
//!
//! # Never rewriting a mapped file
//!
//! A new version is written into a temporary directory, each file and directory is fsynced, and
//! the directory is renamed to `versions/<version>`. Then a new `current` link is renamed over
//! the old one, which switches all stable names at once. No file that a process may have
//! mapped is ever opened for writing: a process that loaded the old library keeps it, and a
//! process started after the switch loads the new one.
//!
//! # Removing old versions
//!
//! [`sweep`] removes each version that `current` no longer names once no process maps one of
//! its files (`/proc/PID/maps`) or holds one open (`/proc/PID/fd`, as a JVM holds its agent
//! jar). Files are compared by device and inode, because the paths in another process's maps
//! are those of its own mount namespace. A version must also have been replaced at least
//! [`RETIRE_GRACE`] earlier, so a process that resolved `current` just before the switch has
//! time to open the old files. When the entries of a process in a pod cannot be read, nothing is
//! removed. Such processes outside pods are skipped, because the webhook mounts the directory
//! only into pods.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Directory in the image with the library and hooks, when `[install] source` is not set.
pub const DEFAULT_SOURCE: &str = "/usr/lib/envproxy";
/// The hostPath directory on the node, when `[install] target` is not set.
pub const DEFAULT_TARGET: &str = "/opt/envproxy";
/// Interval between sweeps for unused old versions, when `[install] sweep_interval_secs` is not
/// set.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Minimum time between replacing a version and removing it.
pub const RETIRE_GRACE: Duration = Duration::from_secs(30);

/// The library that a source directory must contain, relative to it.
const LIBRARY: &str = "lib/libenvproxy.so";
const VERSIONS: &str = "versions";
const CURRENT: &str = "current";
/// Prefix of the temporary names that an install writes before it renames them.
const TEMPORARY_PREFIX: &str = ".tmp-";
/// Hex digits of the SHA-256 that name a version.
const VERSION_DIGITS: usize = 16;

/// The `[install]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallSettings {
    /// Directory in the agent's image with `lib/` and `hooks/`.
    pub source: PathBuf,
    /// The hostPath directory that pods mount.
    pub target: PathBuf,
    /// Interval between sweeps for old versions that no process uses.
    pub sweep_interval: Duration,
}

impl Default for InstallSettings {
    fn default() -> Self {
        InstallSettings {
            source: PathBuf::from(DEFAULT_SOURCE),
            target: PathBuf::from(DEFAULT_TARGET),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }
}

/// An install or sweep that failed. Each message names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "the install source {} has no {LIBRARY}: set [install] source to the directory in the \
         image that holds lib/ and hooks/",
        path.display()
    )]
    MissingLibrary { path: PathBuf },
    #[error(
        "the install source contains {}, which is neither a regular file nor a directory; \
         only those are copied",
        path.display()
    )]
    UnsupportedEntry { path: PathBuf },
    #[error(
        "{} exists and is not a symbolic link that the agent installed; move it away so that \
         the agent can install the library there",
        path.display()
    )]
    Occupied { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The outcome of an [`install`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The version that `current` names now.
    pub version: String,
    /// `versions/<version>` in the target.
    pub directory: PathBuf,
    /// Whether `current` named another version (or nothing) before.
    pub switched: bool,
}

/// The outcome of a [`sweep`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Versions removed.
    pub removed: Vec<String>,
    /// Old versions kept because a process maps one of their files or has one open.
    pub in_use: Vec<String>,
    /// Old versions kept because they were replaced less than the grace time ago.
    pub recent: Vec<String>,
    /// Processes in pods whose maps or file descriptors could not be read. When this is not
    /// zero, every old version was kept.
    pub unreadable_processes: usize,
}

/// Installs the contents of `settings.source` into `settings.target` as described in the
/// module documentation, and returns the version that `current` names afterwards.
pub fn install(settings: &InstallSettings) -> Result<Installed, InstallError> {
    let source = &settings.source;
    let target = &settings.target;
    if !source.join(LIBRARY).is_file() {
        return Err(InstallError::MissingLibrary {
            path: source.clone(),
        });
    }
    let entries = source_tree(source)?;
    let version = version_of(source, &entries)?;
    let top_level = top_level_names(&entries);

    // Check the stable names before changing anything, so a foreign file there stops the
    // install with the old version still in place.
    for name in top_level.iter().map(String::as_str).chain([CURRENT]) {
        check_link_slot(&target.join(name))?;
    }

    let versions = target.join(VERSIONS);
    fs::create_dir_all(&versions).map_err(|source| write_error(&versions, source))?;
    let directory = versions.join(&version);
    if !directory.is_dir() {
        copy_version(source, &entries, &versions, &version)?;
    }

    let current_link = target.join(CURRENT);
    let destination = Path::new(VERSIONS).join(&version);
    let previous = fs::read_link(&current_link).ok();
    let switched = previous.as_deref() != Some(destination.as_path());
    if switched {
        replace_link(&current_link, &destination)?;
        if let Some(previous) = previous {
            mark_retired(&target.join(previous));
        }
    }
    for name in &top_level {
        let link = target.join(name);
        let destination = Path::new(CURRENT).join(name);
        if fs::read_link(&link).ok().as_deref() != Some(destination.as_path()) {
            replace_link(&link, &destination)?;
        }
    }
    sync_directory(target)?;
    Ok(Installed {
        version,
        directory,
        switched,
    })
}

/// Removes the old versions in `target` that no process uses and that were replaced at least
/// `grace` ago, reading processes from `proc_root` (normally `/proc`). Temporary directories
/// that a stopped install left are removed after the same grace time.
pub fn sweep(
    target: &Path,
    proc_root: &Path,
    grace: Duration,
) -> Result<SweepReport, InstallError> {
    let versions = target.join(VERSIONS);
    let current = fs::read_link(target.join(CURRENT)).ok();
    let current_name = current
        .as_deref()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned());
    let mut report = SweepReport::default();
    let listing = match fs::read_dir(&versions) {
        Ok(listing) => listing,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(source) => return Err(read_error(&versions, source)),
    };

    let mut candidates = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| read_error(&versions, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if Some(&name) == current_name.as_ref() {
            continue;
        }
        let path = entry.path();
        if !retired_before(&path, grace) {
            report.recent.push(name);
            continue;
        }
        if name.starts_with(TEMPORARY_PREFIX) {
            remove_version(&path)?;
            continue;
        }
        candidates.push((name, path));
    }
    if candidates.is_empty() {
        return Ok(report);
    }

    let open_files = scan_open_files(proc_root);
    report.unreadable_processes = open_files.unreadable;
    for (name, path) in candidates {
        let files = file_ids(&path)?;
        if report.unreadable_processes > 0 || files.iter().any(|id| open_files.ids.contains(id)) {
            report.in_use.push(name);
        } else {
            remove_version(&path)?;
            report.removed.push(name);
        }
    }
    Ok(report)
}

/// A file's identity across mount namespaces: device major and minor numbers, and inode.
type FileId = (u32, u32, u64);

/// Files that processes map or hold open.
struct OpenFiles {
    ids: HashSet<FileId>,
    /// Processes whose maps or file descriptors could not be read for a reason other than the
    /// process having exited.
    unreadable: usize,
}

/// Collects the identity of every file that a process under `proc_root` maps or holds open.
fn scan_open_files(proc_root: &Path) -> OpenFiles {
    let mut open_files = OpenFiles {
        ids: HashSet::new(),
        unreadable: 0,
    };
    let Ok(listing) = fs::read_dir(proc_root) else {
        open_files.unreadable = 1;
        return open_files;
    };
    for entry in listing.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let process = entry.path();
        let maps = read_maps(&process.join("maps"), &mut open_files.ids);
        let fds = read_fds(&process.join("fd"), &mut open_files.ids);
        let unreadable = [maps, fds].iter().any(|result| match result {
            Err(err) => !process_exited(err),
            Ok(()) => false,
        });
        if unreadable && !outside_pods(&process) {
            open_files.unreadable += 1;
        }
    }
    open_files
}

/// Returns whether the process at `process` (a `/proc/PID` directory) runs outside any pod, going by
/// its cgroup file, which every user may read. The webhook mounts the install directory only
/// into pods, so such a process cannot use an installed version unless someone preloads the
/// library on the host by hand. A process whose cgroup file cannot be read counts as in a pod.
fn outside_pods(process: &Path) -> bool {
    let Ok(text) = fs::read_to_string(process.join("cgroup")) else {
        return false;
    };
    matches!(crate::node::cgroup::parse_cgroup_file(&text), Ok(None))
}

/// Returns whether `err` from reading a `/proc/PID` entry means that the process exited meanwhile.
fn process_exited(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

/// Adds the file of each mapping in a `/proc/PID/maps` file to `ids`. A line reads
/// `start-end perms offset major:minor inode path`, with the device numbers in hex and inode 0
/// for anonymous mappings.
fn read_maps(path: &Path, ids: &mut HashSet<FileId>) -> io::Result<()> {
    let text = fs::read_to_string(path)?;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace().skip(3);
        let (Some(device), Some(inode)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((major, minor)) = device.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(inode)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        if inode != 0 {
            ids.insert((major, minor, inode));
        }
    }
    Ok(())
}

/// Adds the file behind each descriptor in a `/proc/PID/fd` directory to `ids`.
fn read_fds(path: &Path, ids: &mut HashSet<FileId>) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        // A descriptor closed between the listing and the stat is simply gone.
        let Ok(entry) = entry else { continue };
        if let Ok(metadata) = fs::metadata(entry.path()) {
            ids.insert(file_id(&metadata));
        }
    }
    Ok(())
}

fn file_id(metadata: &fs::Metadata) -> FileId {
    let device = metadata.dev();
    (libc::major(device), libc::minor(device), metadata.ino())
}

/// Returns the identities of the regular files under `directory`.
fn file_ids(directory: &Path) -> Result<Vec<FileId>, InstallError> {
    let mut ids = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(current) = pending.pop() {
        let listing = fs::read_dir(&current).map_err(|source| read_error(&current, source))?;
        for entry in listing {
            let entry = entry.map_err(|source| read_error(&current, source))?;
            let metadata = fs::symlink_metadata(entry.path())
                .map_err(|source| read_error(&entry.path(), source))?;
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.is_file() {
                ids.push(file_id(&metadata));
            }
        }
    }
    Ok(ids)
}

/// One entry of the source tree, relative to the source directory.
struct SourceEntry {
    relative: PathBuf,
    is_dir: bool,
    mode: u32,
}

/// Lists the source tree in a fixed order (sorted by path), directories before their contents.
fn source_tree(source: &Path) -> Result<Vec<SourceEntry>, InstallError> {
    let mut entries = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let directory = source.join(&relative);
        let listing = fs::read_dir(&directory).map_err(|source| read_error(&directory, source))?;
        let mut children = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|source| read_error(&directory, source))?;
            children.push(entry.file_name());
        }
        children.sort();
        for child in children.into_iter().rev() {
            let child_relative = relative.join(&child);
            let path = source.join(&child_relative);
            // Symbolic links are followed, so an image may link to the built library.
            let metadata = fs::metadata(&path).map_err(|source| read_error(&path, source))?;
            if metadata.is_dir() {
                pending.push(child_relative.clone());
            } else if !metadata.is_file() {
                return Err(InstallError::UnsupportedEntry { path });
            }
            entries.push(SourceEntry {
                relative: child_relative,
                is_dir: metadata.is_dir(),
                mode: metadata.permissions().mode() & 0o777,
            });
        }
    }
    entries.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(entries)
}

/// Returns the first [`VERSION_DIGITS`] hex digits of a SHA-256 over the names, modes and
/// contents of `entries`.
fn version_of(source: &Path, entries: &[SourceEntry]) -> Result<String, InstallError> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    for entry in entries {
        let name = entry.relative.to_string_lossy();
        digest.update(&(name.len() as u64).to_be_bytes());
        digest.update(name.as_bytes());
        digest.update(&[u8::from(entry.is_dir)]);
        digest.update(&entry.mode.to_be_bytes());
        if entry.is_dir {
            continue;
        }
        let path = source.join(&entry.relative);
        let mut file = File::open(&path).map_err(|source| read_error(&path, source))?;
        let length = file
            .metadata()
            .map_err(|source| read_error(&path, source))?
            .len();
        digest.update(&length.to_be_bytes());
        loop {
            let count = file
                .read(&mut buffer)
                .map_err(|source| read_error(&path, source))?;
            if count == 0 {
                break;
            }
            digest.update(&buffer[..count]);
        }
    }
    let hex: String = digest
        .finish()
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(hex[..VERSION_DIGITS].to_string())
}

/// Returns the names of the top-level entries, each of which gets a stable link.
fn top_level_names(entries: &[SourceEntry]) -> Vec<String> {
    entries
        .iter()
        .filter(|entry| entry.relative.components().count() == 1)
        .map(|entry| entry.relative.to_string_lossy().into_owned())
        .collect()
}

/// Fails when `path` exists and is not a symbolic link, because the agent replaces only links.
fn check_link_slot(path: &Path) -> Result<(), InstallError> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => Ok(()),
        Ok(_) => Err(InstallError::Occupied {
            path: path.to_path_buf(),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(read_error(path, source)),
    }
}

/// Copies the source tree into `versions/.tmp-<version>-<pid>`, syncs it, and renames it to
/// `versions/<version>`.
fn copy_version(
    source: &Path,
    entries: &[SourceEntry],
    versions: &Path,
    version: &str,
) -> Result<(), InstallError> {
    let temporary = versions.join(format!(
        "{TEMPORARY_PREFIX}{version}-{}",
        std::process::id()
    ));
    if temporary.exists() {
        fs::remove_dir_all(&temporary).map_err(|source| write_error(&temporary, source))?;
    }
    create_directory(&temporary, 0o755)?;
    let mut directories = vec![temporary.clone()];
    for entry in entries {
        let to = temporary.join(&entry.relative);
        if entry.is_dir {
            create_directory(&to, entry.mode)?;
            directories.push(to);
        } else {
            copy_file(&source.join(&entry.relative), &to, entry.mode)?;
        }
    }
    for directory in directories.iter().rev() {
        sync_directory(directory)?;
    }
    let directory = versions.join(version);
    fs::rename(&temporary, &directory).map_err(|source| write_error(&directory, source))?;
    sync_directory(versions)
}

fn create_directory(path: &Path, mode: u32) -> Result<(), InstallError> {
    fs::create_dir(path).map_err(|source| write_error(path, source))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|source| write_error(path, source))
}

/// Copies `from` to the new file `to` with `mode` and syncs it to disk.
fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<(), InstallError> {
    let mut input = File::open(from).map_err(|source| read_error(from, source))?;
    let mut output = File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|source| write_error(to, source))?;
    io::copy(&mut input, &mut output).map_err(|source| write_error(to, source))?;
    output
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|source| write_error(to, source))?;
    output.sync_all().map_err(|source| write_error(to, source))
}

/// Points `link` at `destination` by creating a link under a temporary name and renaming it
/// over `link`, so that `link` always resolves to either the old or the new destination.
fn replace_link(link: &Path, destination: &Path) -> Result<(), InstallError> {
    let directory = link.parent().unwrap_or(Path::new("/"));
    let name = link.file_name().unwrap_or_default().to_string_lossy();
    let temporary = directory.join(format!("{TEMPORARY_PREFIX}{name}-{}", std::process::id()));
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(write_error(&temporary, source)),
    }
    std::os::unix::fs::symlink(destination, &temporary)
        .map_err(|source| write_error(&temporary, source))?;
    fs::rename(&temporary, link).map_err(|source| write_error(link, source))
}

/// Records when a version stopped being current by setting its directory's modification time,
/// which [`sweep`] compares against the grace time.
fn mark_retired(directory: &Path) {
    let now = SystemTime::now();
    let result = File::open(directory).and_then(|file| file.set_modified(now));
    if let Err(err) = result {
        tracing::warn!(
            directory = %directory.display(),
            %err,
            "cannot mark a replaced version with the time of replacement; it may be removed \
             before the grace time"
        );
    }
}

/// Returns whether the directory `path` was last modified at least `grace` ago.
fn retired_before(path: &Path, grace: Duration) -> bool {
    let modified = fs::metadata(path).and_then(|metadata| metadata.modified());
    match modified {
        Ok(modified) => modified
            .elapsed()
            .map(|age| age >= grace)
            .unwrap_or(grace.is_zero()),
        Err(_) => false,
    }
}

fn remove_version(path: &Path) -> Result<(), InstallError> {
    fs::remove_dir_all(path).map_err(|source| write_error(path, source))
}

fn sync_directory(path: &Path) -> Result<(), InstallError> {
    File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| write_error(path, source))
}

fn read_error(path: &Path, source: io::Error) -> InstallError {
    InstallError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn write_error(path: &Path, source: io::Error) -> InstallError {
    InstallError::Write {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, contents: &str, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn source_with(library: &str) -> tempfile::TempDir {
        let source = tempfile::tempdir().unwrap();
        write(&source.path().join("lib/libenvproxy.so"), library, 0o755);
        write(
            &source.path().join("lib/musl/libenvproxy.so"),
            "musl",
            0o755,
        );
        write(
            &source.path().join("hooks/python/sitecustomize.py"),
            "import envproxy_hook\n",
            0o644,
        );
        source
    }

    fn settings(source: &Path, target: &Path) -> InstallSettings {
        InstallSettings {
            source: source.to_path_buf(),
            target: target.to_path_buf(),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }

    #[test]
    fn install_creates_layout() {
        let source = source_with("one");
        let target = tempfile::tempdir().unwrap();
        let installed = install(&settings(source.path(), target.path())).unwrap();
        assert!(installed.switched);
        assert_eq!(installed.version.len(), VERSION_DIGITS);
        let root = target.path();
        assert_eq!(
            fs::read_to_string(root.join("lib/libenvproxy.so")).unwrap(),
            "one"
        );
        assert_eq!(
            fs::read_to_string(root.join("lib/musl/libenvproxy.so")).unwrap(),
            "musl"
        );
        assert_eq!(
            fs::read_to_string(root.join("hooks/python/sitecustomize.py")).unwrap(),
            "import envproxy_hook\n"
        );
        assert_eq!(
            fs::read_link(root.join("current")).unwrap(),
            Path::new("versions").join(&installed.version)
        );
        assert_eq!(
            fs::read_link(root.join("lib")).unwrap(),
            Path::new("current/lib")
        );
        let library_mode = fs::metadata(root.join("lib/libenvproxy.so"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(library_mode & 0o777, 0o755);
        let hook_mode = fs::metadata(root.join("hooks/python/sitecustomize.py"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(hook_mode & 0o777, 0o644);
    }

    #[test]
    fn install_same_source_twice_keeps_version() {
        let source = source_with("one");
        let target = tempfile::tempdir().unwrap();
        let first = install(&settings(source.path(), target.path())).unwrap();
        let second = install(&settings(source.path(), target.path())).unwrap();
        assert_eq!(first.version, second.version);
        assert!(!second.switched);
        let versions: Vec<_> = fs::read_dir(target.path().join("versions"))
            .unwrap()
            .collect();
        assert_eq!(versions.len(), 1);
    }

    #[test]
    fn install_new_source_keeps_old_files() {
        let target = tempfile::tempdir().unwrap();
        let old = install(&settings(source_with("one").path(), target.path())).unwrap();
        let old_library = old.directory.join("lib/libenvproxy.so");
        let old_inode = fs::metadata(&old_library).unwrap().ino();
        let new = install(&settings(source_with("two").path(), target.path())).unwrap();
        assert_ne!(old.version, new.version);
        assert!(new.switched);
        assert_eq!(fs::read_to_string(&old_library).unwrap(), "one");
        assert_eq!(fs::metadata(&old_library).unwrap().ino(), old_inode);
        assert_eq!(
            fs::read_to_string(target.path().join("lib/libenvproxy.so")).unwrap(),
            "two"
        );
    }

    #[test]
    fn install_mode_change_is_new_version() {
        let target = tempfile::tempdir().unwrap();
        let source = source_with("one");
        let first = install(&settings(source.path(), target.path())).unwrap();
        let hook = source.path().join("hooks/python/sitecustomize.py");
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o600)).unwrap();
        let second = install(&settings(source.path(), target.path())).unwrap();
        assert_ne!(first.version, second.version);
    }

    #[test]
    fn install_without_library_names_source() {
        let source = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let error = install(&settings(source.path(), target.path()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&source.path().display().to_string()),
            "{error}"
        );
        assert!(error.contains("lib/libenvproxy.so"), "{error}");
        assert!(error.contains("[install] source"), "{error}");
    }

    #[test]
    fn install_rejects_foreign_directory() {
        let source = source_with("one");
        let target = tempfile::tempdir().unwrap();
        write(&target.path().join("lib/libenvproxy.so"), "foreign", 0o755);
        let error = install(&settings(source.path(), target.path())).unwrap_err();
        assert!(
            matches!(&error, InstallError::Occupied { path } if path.ends_with("lib")),
            "{error}"
        );
        assert!(!target.path().join("current").exists());
        assert_eq!(
            fs::read_to_string(target.path().join("lib/libenvproxy.so")).unwrap(),
            "foreign"
        );
    }

    #[test]
    fn sweep_removes_unused_old_versions() {
        let target = tempfile::tempdir().unwrap();
        let old = install(&settings(source_with("one").path(), target.path())).unwrap();
        let new = install(&settings(source_with("two").path(), target.path())).unwrap();

        let waiting = sweep(target.path(), Path::new("/proc"), Duration::from_secs(3600)).unwrap();
        assert_eq!(waiting.recent, std::slice::from_ref(&old.version));
        assert!(old.directory.exists());

        let report = sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap();
        assert_eq!(report.removed, [old.version]);
        assert!(report.in_use.is_empty());
        assert!(!old.directory.exists());
        assert!(new.directory.exists());
        assert_eq!(
            fs::read_to_string(target.path().join("lib/libenvproxy.so")).unwrap(),
            "two"
        );
    }

    #[test]
    fn sweep_keeps_version_with_open_file() {
        let target = tempfile::tempdir().unwrap();
        let old = install(&settings(source_with("one").path(), target.path())).unwrap();
        let open_hook = File::open(old.directory.join("hooks/python/sitecustomize.py")).unwrap();
        install(&settings(source_with("two").path(), target.path())).unwrap();

        let report = sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap();
        assert_eq!(report.in_use, std::slice::from_ref(&old.version));
        assert!(old.directory.exists());
        drop(open_hook);
        let report = sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap();
        assert_eq!(report.removed, [old.version]);
    }

    #[test]
    fn sweep_without_install_does_nothing() {
        let target = tempfile::tempdir().unwrap();
        let report = sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap();
        assert_eq!(report, SweepReport::default());
    }

    #[test]
    fn sweep_removes_stale_temporary_directory() {
        let target = tempfile::tempdir().unwrap();
        install(&settings(source_with("one").path(), target.path())).unwrap();
        let stale = target.path().join("versions/.tmp-0123456789abcdef-1");
        fs::create_dir(&stale).unwrap();
        sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap();
        assert!(!stale.exists());
    }

    #[test]
    fn maps_lines_parse_device_and_inode() {
        let dir = tempfile::tempdir().unwrap();
        let maps = dir.path().join("maps");
        fs::write(
            &maps,
            "7f0000000000-7f0000001000 r-xp 00000000 fd:01 1234567    /opt/envproxy/lib/x.so\n\
             7f0000002000-7f0000003000 rw-p 00000000 00:00 0 \n\
             7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0          [stack]\n",
        )
        .unwrap();
        let mut ids = HashSet::new();
        read_maps(&maps, &mut ids).unwrap();
        assert_eq!(ids, HashSet::from([(0xfd, 0x01, 1234567)]));
    }
}
