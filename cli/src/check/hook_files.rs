//! Checks that a runtime hook file that exists can also load: a Java agent jar that is a zip
//! file containing the hook's class, and Python and Perl sources that are not empty.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The class in the Java agent jar that the library loads as the hook.
pub const JAVA_HOOK_CLASS: &str = "dev/envproxy/javaagent/Hook.class";

/// Signature of a zip local file header, with which every jar starts.
const LOCAL_HEADER_SIGNATURE: &[u8; 4] = b"PK\x03\x04";
/// Signature of the zip end-of-central-directory record.
const END_SIGNATURE: &[u8; 4] = b"PK\x05\x06";
/// Signature of a zip central directory file header.
const CENTRAL_HEADER_SIGNATURE: &[u8; 4] = b"PK\x01\x02";
/// Size of the end-of-central-directory record without its comment.
const END_RECORD_SIZE: u64 = 22;
/// Maximum length of the zip file comment that follows the end-of-central-directory record.
const MAX_COMMENT_SIZE: u64 = 65535;
/// Size of a central directory file header without its name, extra field and comment.
const CENTRAL_HEADER_SIZE: usize = 46;
/// Largest central directory read, which bounds the memory a damaged jar can cost.
const MAX_CENTRAL_DIRECTORY_SIZE: u64 = 16 << 20;

/// Returns why the Java agent jar `path` cannot load, or `None` when it is a zip file whose
/// central directory lists [`JAVA_HOOK_CLASS`]. The class itself is not read.
pub fn java_agent_problem(path: &Path) -> Option<String> {
    match read_central_directory(path) {
        Ok(directory) if lists_entry(&directory, JAVA_HOOK_CLASS) => None,
        Ok(_) => Some(format!("it does not contain {JAVA_HOOK_CLASS}")),
        Err(problem) => Some(problem),
    }
}

/// Returns why the source file `path` of a Python or Perl hook does nothing, or `None`.
pub fn source_problem(path: &Path) -> Option<String> {
    match std::fs::read(path) {
        Ok(content) if content.iter().all(u8::is_ascii_whitespace) => {
            Some("it is empty".to_string())
        }
        Ok(_) => None,
        Err(err) => Some(format!("it cannot be read: {err}")),
    }
}

/// Reads the central directory of the zip file `path`, or returns why it is not a zip file.
fn read_central_directory(path: &Path) -> Result<Vec<u8>, String> {
    let mut file = File::open(path).map_err(|err| format!("it cannot be opened: {err}"))?;
    let length = file
        .metadata()
        .map_err(|err| format!("it cannot be read: {err}"))?
        .len();
    if length == 0 {
        return Err("it is empty".to_string());
    }
    let mut signature = [0u8; 4];
    let starts_as_zip =
        file.read_exact(&mut signature).is_ok() && &signature == LOCAL_HEADER_SIGNATURE;
    if !starts_as_zip {
        return Err(
            "it is not a zip file (it does not start with the zip signature PK\\x03\\x04)"
                .to_string(),
        );
    }

    let damaged = "it is a damaged zip file: its end-of-central-directory record is missing or \
                   points outside the file";
    let tail_size = length.min(END_RECORD_SIZE + MAX_COMMENT_SIZE);
    let tail = read_range(&mut file, length - tail_size, tail_size)?;
    let end = tail
        .windows(END_SIGNATURE.len())
        .rposition(|window| window == END_SIGNATURE)
        .filter(|&end| end as u64 + END_RECORD_SIZE <= tail_size)
        .ok_or_else(|| damaged.to_string())?;
    let u32_at = |offset: usize| {
        u64::from(u32::from_le_bytes(
            tail[end + offset..end + offset + 4]
                .try_into()
                .unwrap_or_default(),
        ))
    };
    let (size, offset) = (u32_at(12), u32_at(16));
    if size > MAX_CENTRAL_DIRECTORY_SIZE || offset.saturating_add(size) > length {
        return Err(damaged.to_string());
    }
    read_range(&mut file, offset, size)
}

fn read_range(file: &mut File, offset: u64, size: u64) -> Result<Vec<u8>, String> {
    let mut buffer = vec![0u8; size as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut buffer))
        .map_err(|err| format!("it cannot be read: {err}"))?;
    Ok(buffer)
}

/// Returns whether the zip central directory `directory` has an entry named `name`.
fn lists_entry(directory: &[u8], name: &str) -> bool {
    let mut rest = directory;
    while rest.len() >= CENTRAL_HEADER_SIZE && rest.starts_with(CENTRAL_HEADER_SIGNATURE) {
        let u16_at =
            |offset: usize| usize::from(u16::from_le_bytes([rest[offset], rest[offset + 1]]));
        let (name_length, extra_length, comment_length) = (u16_at(28), u16_at(30), u16_at(32));
        let Some(entry_name) = rest.get(CENTRAL_HEADER_SIZE..CENTRAL_HEADER_SIZE + name_length)
        else {
            return false;
        };
        if entry_name == name.as_bytes() {
            return true;
        }
        let next = CENTRAL_HEADER_SIZE + name_length + extra_length + comment_length;
        rest = rest.get(next..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_hook_jar_is_usable() {
        let jar =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks/java/envproxy-javaagent.jar");
        assert_eq!(java_agent_problem(&jar), None, "{}", jar.display());
    }

    #[test]
    fn broken_jars_named() {
        let dir = tempfile::tempdir().unwrap();
        let built = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks/java/envproxy-javaagent.jar"),
        )
        .unwrap();
        let renamed = {
            let mut data = built.clone();
            let at = data
                .windows(JAVA_HOOK_CLASS.len())
                .rposition(|window| window == JAVA_HOOK_CLASS.as_bytes())
                .unwrap();
            data[at + JAVA_HOOK_CLASS.len() - 7] = b'X';
            data
        };
        let cases: [(&str, Vec<u8>, &str); 4] = [
            ("empty", Vec::new(), "it is empty"),
            ("garbage", b"garbage\n".to_vec(), "it is not a zip file"),
            (
                "truncated",
                built[..built.len() / 2].to_vec(),
                "damaged zip file",
            ),
            (
                "renamed",
                renamed,
                "it does not contain dev/envproxy/javaagent/Hook.class",
            ),
        ];
        for (name, data, expected) in cases {
            let jar = dir.path().join(name);
            std::fs::write(&jar, data).unwrap();
            let problem = java_agent_problem(&jar).unwrap_or_default();
            assert!(problem.contains(expected), "{name}: {problem:?}");
        }
    }
}
