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
//! mounted. Pods use the stable names (`<mount>/lib/libenvproxy.so`), and the library names the hooks
//! through the stable `hooks` link as well, so variables that children inherit keep working
//! after the old version is removed.
//!
//! Each version directory contains a marker file, `.envproxy-version`, with the version's name.
//! The agent creates every directory it installs with mode 0755, whatever its umask, so that
//! processes of any user in a pod can load the library. It follows no symbolic link inside the
//! target other than the ones it installed for pods: when `versions` is a link, install and
//! sweep stop with an error naming it.
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
//! [`sweep`] considers only the entries of `versions` that the agent created: a directory with
//! a 16-hex-digit name (or the temporary name of an install) and a marker file that holds that
//! name. Anything else there is foreign: it is left alone and reported. Removal opens each
//! directory relative to its parent without following links and unlinks links instead of
//! following them, so nothing outside `versions` is ever removed.
//!
//! It removes each version that `current` no longer names once no process maps one of
//! its files (`/proc/PID/maps`) or holds one open (`/proc/PID/fd`, as a JVM holds its agent
//! jar). Files are compared by device and inode, because the paths in another process's maps
//! are those of its own mount namespace. A version must also have been replaced at least
//! [`RETIRE_GRACE`] earlier, so a process that resolved `current` just before the switch has
//! time to open the old files. When the entries of a process in a pod cannot be read, nothing is
//! removed. Such processes outside pods are skipped, because the webhook mounts the directory
//! only into pods.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags};

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
/// The file in each version directory that contains the version's name, so that the sweep
/// removes only directories the agent created.
pub const VERSION_MARKER: &str = ".envproxy-version";
/// Mode of every directory the agent creates in the target.
const DIRECTORY_MODE: u32 = 0o755;

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
    #[error(
        "{} is a symbolic link; the agent follows no link inside the install target, so that \
         it never writes or removes files elsewhere: replace it with a directory or remove it",
        path.display()
    )]
    Symlink { path: PathBuf },
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
    /// Entries of `versions` that the agent did not create (no version name, no marker, or
    /// not a directory), left alone.
    pub foreign: Vec<String>,
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

    create_directories(target)?;
    let versions = target.join(VERSIONS);
    match fs::symlink_metadata(&versions) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => create_directory(&versions)?,
        Err(source) => return Err(read_error(&versions, source)),
        Ok(_) => {}
    }
    let versions_dir = open_versions(target)?;
    let directory = versions.join(&version);
    match fs::symlink_metadata(&directory) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            copy_version(source, &entries, &versions, versions_dir.as_fd(), &version)?;
        }
        Err(source) => return Err(read_error(&directory, source)),
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(InstallError::Symlink { path: directory })
        }
        Ok(metadata) if !metadata.is_dir() => {
            return Err(InstallError::Occupied { path: directory })
        }
        // A directory of this version without a marker was installed by an earlier agent
        // release: its name is the hash of the same contents, so the agent adopts it.
        Ok(_) if !has_marker(&directory, &version) => write_marker(&directory, &version)?,
        Ok(_) => {}
    }

    let current_link = target.join(CURRENT);
    let destination = Path::new(VERSIONS).join(&version);
    let previous = fs::read_link(&current_link).ok();
    let switched = previous.as_deref() != Some(destination.as_path());
    if switched {
        replace_link(&current_link, &destination)?;
        if let Some(previous) = previous {
            mark_retired(versions_dir.as_fd(), &previous);
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
    match fs::symlink_metadata(&versions) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(source) => return Err(read_error(&versions, source)),
        Ok(_) => {}
    }
    let versions_dir = open_versions(target)?;
    let listing = fs::read_dir(&versions).map_err(|source| read_error(&versions, source))?;

    let mut candidates = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| read_error(&versions, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if Some(&name) == current_name.as_ref() {
            continue;
        }
        let path = entry.path();
        let temporary = is_temporary_name(&name);
        let ours = (is_version_name(&name) || temporary)
            && fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.is_dir())
            && has_marker(&path, marker_name(&name));
        if !ours {
            report.foreign.push(name);
            continue;
        }
        if !retired_before(&path, grace) {
            report.recent.push(name);
            continue;
        }
        if temporary {
            remove_version(versions_dir.as_fd(), &versions, &name)?;
            continue;
        }
        candidates.push((name, path));
    }
    report.foreign.sort();
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
            remove_version(versions_dir.as_fd(), &versions, &name)?;
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
/// `versions/<version>`. The marker is written first, so that the sweep recognises a temporary
/// directory that a stopped install left.
fn copy_version(
    source: &Path,
    entries: &[SourceEntry],
    versions: &Path,
    versions_dir: BorrowedFd<'_>,
    version: &str,
) -> Result<(), InstallError> {
    let temporary_name = format!("{TEMPORARY_PREFIX}{version}-{}", std::process::id());
    let temporary = versions.join(&temporary_name);
    if fs::symlink_metadata(&temporary).is_ok() {
        remove_version(versions_dir, versions, &temporary_name)?;
    }
    create_directory(&temporary)?;
    write_marker(&temporary, version)?;
    let mut directories = vec![temporary.clone()];
    for entry in entries {
        let to = temporary.join(&entry.relative);
        if entry.is_dir {
            create_directory(&to)?;
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

/// Creates the directory `path` with [`DIRECTORY_MODE`]. The mode is set after creation, so the
/// agent's umask does not narrow it.
fn create_directory(path: &Path) -> Result<(), InstallError> {
    fs::create_dir(path).map_err(|source| write_error(path, source))?;
    fs::set_permissions(path, fs::Permissions::from_mode(DIRECTORY_MODE))
        .map_err(|source| write_error(path, source))
}

/// Creates `path` and its missing ancestors with [`DIRECTORY_MODE`]; existing ones keep their
/// mode.
fn create_directories(path: &Path) -> Result<(), InstallError> {
    let mut missing = Vec::new();
    let mut current = Some(path);
    while let Some(directory) = current {
        match fs::metadata(directory) {
            Ok(_) => break,
            Err(err) if err.kind() == io::ErrorKind::NotFound => missing.push(directory),
            Err(source) => return Err(read_error(directory, source)),
        }
        current = directory
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty());
    }
    for directory in missing.into_iter().rev() {
        match fs::create_dir(directory) {
            Ok(()) => fs::set_permissions(directory, fs::Permissions::from_mode(DIRECTORY_MODE))
                .map_err(|source| write_error(directory, source))?,
            // Another agent created it meanwhile.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(write_error(directory, source)),
        }
    }
    Ok(())
}

/// Opens `<target>/versions` without following a link there.
fn open_versions(target: &Path) -> Result<OwnedFd, InstallError> {
    let versions = target.join(VERSIONS);
    if fs::symlink_metadata(&versions).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
        return Err(InstallError::Symlink { path: versions });
    }
    let target_dir = rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| read_error(target, err.into()))?;
    open_directory_at(target_dir.as_fd(), OsStr::new(VERSIONS)).map_err(|err| {
        if err.raw_os_error() == Some(libc::ELOOP) {
            InstallError::Symlink {
                path: versions.clone(),
            }
        } else {
            read_error(&versions, err)
        }
    })
}

/// Opens the directory `name` in `parent`, failing with `ELOOP` when it is a symbolic link.
fn open_directory_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Returns whether `name` has the form of a version: [`VERSION_DIGITS`] lowercase hex digits.
fn is_version_name(name: &str) -> bool {
    name.len() == VERSION_DIGITS
        && name
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Returns whether `name` has the form of an install's temporary directory,
/// `.tmp-<version>-<pid>`.
fn is_temporary_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TEMPORARY_PREFIX) else {
        return false;
    };
    let Some((version, pid)) = rest.split_once('-') else {
        return false;
    };
    is_version_name(version) && !pid.is_empty() && pid.bytes().all(|byte| byte.is_ascii_digit())
}

/// The version that the marker in the directory `name` must hold: `name` itself, or the
/// version part of a temporary name.
fn marker_name(name: &str) -> &str {
    name.strip_prefix(TEMPORARY_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .map_or(name, |(version, _)| version)
}

/// Returns whether `directory` contains a marker file (not a link) whose content is `version`.
fn has_marker(directory: &Path, version: &str) -> bool {
    let mut contents = String::new();
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(directory.join(VERSION_MARKER))
        .and_then(|mut file| file.read_to_string(&mut contents))
        .is_ok()
        && contents.trim_end() == version
}

/// Writes the marker file with `version` into `directory`.
fn write_marker(directory: &Path, version: &str) -> Result<(), InstallError> {
    let path = directory.join(VERSION_MARKER);
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|source| write_error(&path, source))?;
    file.write_all(format!("{version}\n").as_bytes())
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(0o644)))
        .and_then(|()| file.sync_all())
        .map_err(|source| write_error(&path, source))
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
/// which [`sweep`] compares against the grace time. `previous` is the old target of `current`;
/// anything but `versions/<version>` is left alone.
fn mark_retired(versions_dir: BorrowedFd<'_>, previous: &Path) {
    let mut components = previous.components();
    let (Some(first), Some(name), None) = (components.next(), components.next(), components.next())
    else {
        return;
    };
    if first.as_os_str() != VERSIONS || !name.as_os_str().to_str().is_some_and(is_version_name) {
        return;
    }
    let directory = previous;
    let now = SystemTime::now();
    let result = open_directory_at(versions_dir, name.as_os_str())
        .and_then(|fd| File::from(fd).set_modified(now));
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
    let modified = fs::symlink_metadata(path).and_then(|metadata| metadata.modified());
    match modified {
        Ok(modified) => modified
            .elapsed()
            .map(|age| age >= grace)
            .unwrap_or(grace.is_zero()),
        Err(_) => false,
    }
}

/// Removes the directory `name` in `versions` and everything under it. Each directory is opened
/// relative to its parent without following links, and links are unlinked, never followed.
fn remove_version(
    versions_dir: BorrowedFd<'_>,
    versions: &Path,
    name: &str,
) -> Result<(), InstallError> {
    let path = versions.join(name);
    remove_tree_at(versions_dir, OsStr::new(name)).map_err(|source| write_error(&path, source))
}

fn remove_tree_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let directory = open_directory_at(parent, name)?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&directory)? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push(OsStr::from_bytes(child).to_os_string());
        }
    }
    for child in children {
        let stat = rustix::fs::statat(&directory, child.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory {
            remove_tree_at(directory.as_fd(), &child)?;
        } else {
            rustix::fs::unlinkat(&directory, child.as_os_str(), AtFlags::empty())?;
        }
    }
    drop(directory);
    Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
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
        write_marker(&stale, "0123456789abcdef").unwrap();
        fs::create_dir(stale.join("lib")).unwrap();
        sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap();
        assert!(!stale.exists());
    }

    #[test]
    fn install_writes_marker_in_version() {
        let target = tempfile::tempdir().unwrap();
        let installed = install(&settings(source_with("one").path(), target.path())).unwrap();
        let marker = installed.directory.join(VERSION_MARKER);
        assert_eq!(
            fs::read_to_string(&marker).unwrap(),
            format!("{}\n", installed.version)
        );
        let mode = fs::metadata(&marker).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn sweep_leaves_foreign_entries_alone() {
        let target = tempfile::tempdir().unwrap();
        let old = install(&settings(source_with("one").path(), target.path())).unwrap();
        install(&settings(source_with("two").path(), target.path())).unwrap();
        let versions = target.path().join("versions");
        // A directory someone else put there, one with a version's name but no marker, one
        // whose marker names another version, a file, and an unmarked temporary directory.
        write(&versions.join("backup/keep.txt"), "keep", 0o644);
        write(&versions.join("fedcba9876543210/lib/x.so"), "keep", 0o644);
        write(
            &versions.join("0011223344556677").join(VERSION_MARKER),
            "8899aabbccddeeff\n",
            0o644,
        );
        write(&versions.join("notes"), "keep", 0o644);
        fs::create_dir(versions.join(".tmp-0123456789abcdef-7")).unwrap();

        let report = sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap();
        assert_eq!(report.removed, [old.version]);
        assert_eq!(
            report.foreign,
            [
                ".tmp-0123456789abcdef-7",
                "0011223344556677",
                "backup",
                "fedcba9876543210",
                "notes"
            ]
        );
        assert_eq!(
            fs::read_to_string(versions.join("backup/keep.txt")).unwrap(),
            "keep"
        );
        assert!(versions.join("fedcba9876543210/lib/x.so").is_file());
        assert!(versions
            .join("0011223344556677")
            .join(VERSION_MARKER)
            .is_file());
        assert!(versions.join("notes").is_file());
        assert!(versions.join(".tmp-0123456789abcdef-7").is_dir());
    }

    #[test]
    fn sweep_and_install_reject_linked_versions() {
        let target = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        // What the link points at looks like an old version, so a sweep that followed the link
        // would remove it.
        let victim = elsewhere.path().join("0123456789abcdef");
        write(&victim.join(VERSION_MARKER), "0123456789abcdef\n", 0o644);
        std::os::unix::fs::symlink(elsewhere.path(), target.path().join("versions")).unwrap();

        let error = sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap_err();
        assert!(
            matches!(&error, InstallError::Symlink { path } if path.ends_with("versions")),
            "{error}"
        );
        assert!(error.to_string().contains("symbolic link"), "{error}");
        let error = install(&settings(source_with("one").path(), target.path())).unwrap_err();
        assert!(
            matches!(&error, InstallError::Symlink { path } if path.ends_with("versions")),
            "{error}"
        );
        assert!(victim.join(VERSION_MARKER).is_file());
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 1);
        assert!(!target.path().join("current").exists());
    }

    #[test]
    fn sweep_does_not_follow_links_in_versions() {
        let target = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        write(
            &elsewhere.path().join(VERSION_MARKER),
            "0123456789abcdef\n",
            0o644,
        );
        write(&elsewhere.path().join("data/keep.txt"), "keep", 0o644);
        let old = install(&settings(source_with("one").path(), target.path())).unwrap();
        install(&settings(source_with("two").path(), target.path())).unwrap();
        let versions = target.path().join("versions");
        // A link with a version's name to a directory with a valid marker, and links inside
        // an old version to a directory and a file outside.
        std::os::unix::fs::symlink(elsewhere.path(), versions.join("0123456789abcdef")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), old.directory.join("lib/outside")).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.path().join("data/keep.txt"),
            old.directory.join("hooks/keep.txt"),
        )
        .unwrap();

        let report = sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap();
        assert_eq!(report.removed, [old.version]);
        assert_eq!(report.foreign, ["0123456789abcdef"]);
        assert!(!old.directory.exists());
        assert!(fs::symlink_metadata(versions.join("0123456789abcdef")).is_ok());
        assert_eq!(
            fs::read_to_string(elsewhere.path().join("data/keep.txt")).unwrap(),
            "keep"
        );
        assert!(elsewhere.path().join(VERSION_MARKER).is_file());
    }

    #[test]
    fn install_adopts_unmarked_version_of_same_contents() {
        let target = tempfile::tempdir().unwrap();
        let source = source_with("one");
        let first = install(&settings(source.path(), target.path())).unwrap();
        // As an agent release before markers left it.
        fs::remove_file(first.directory.join(VERSION_MARKER)).unwrap();
        let again = install(&settings(source.path(), target.path())).unwrap();
        assert_eq!(again.version, first.version);
        assert!(has_marker(&again.directory, &again.version));
        install(&settings(source_with("two").path(), target.path())).unwrap();
        let report = sweep(target.path(), Path::new("/proc"), Duration::ZERO).unwrap();
        assert_eq!(report.removed, [first.version]);
    }

    #[test]
    fn install_rejects_link_as_version() {
        let target = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let source = source_with("one");
        let version = install(&settings(source.path(), target.path()))
            .unwrap()
            .version;
        let directory = target.path().join("versions").join(&version);
        fs::rename(&directory, elsewhere.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("moved"), &directory).unwrap();
        let error = install(&settings(source.path(), target.path())).unwrap_err();
        assert!(
            matches!(&error, InstallError::Symlink { path } if *path == directory),
            "{error}"
        );
    }

    #[test]
    fn version_and_temporary_names() {
        assert!(is_version_name("0123456789abcdef"));
        assert!(!is_version_name("0123456789ABCDEF"));
        assert!(!is_version_name("0123456789abcde"));
        assert!(!is_version_name("etc"));
        assert!(is_temporary_name(".tmp-0123456789abcdef-42"));
        assert!(!is_temporary_name(".tmp-0123456789abcdef-"));
        assert!(!is_temporary_name(".tmp-current-42"));
        assert_eq!(marker_name(".tmp-0123456789abcdef-42"), "0123456789abcdef");
        assert_eq!(marker_name("0123456789abcdef"), "0123456789abcdef");
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
