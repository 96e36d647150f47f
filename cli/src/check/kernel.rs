//! The checks that Linux's `execve` makes on an ELF file before it runs it, so that `check`
//! reports an error for a file the kernel rejects instead of judging it.
//!
//! The rules follow `load_elf_binary` and `load_elf_phdrs` in `fs/binfmt_elf.c` (Linux 6.x)
//! and were checked against corrupted copies of `/bin/true` on Linux 6.18 for x86-64. The
//! kernel reads the header in its own byte order and word size, picked by `e_machine`, and
//! ignores `EI_CLASS` and `EI_DATA`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use object::elf;

use super::elf::machine_name;

/// `BINPRM_BUF_SIZE`: the bytes of the file the kernel reads first, and zero-fills when the
/// file is shorter.
const HEAD_SIZE: usize = 256;
/// Maximum size of the program header table that `load_elf_phdrs` reads.
const MAX_PROGRAM_HEADERS_SIZE: u64 = 65536;
/// Offsets of the class and the byte order in `e_ident`.
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
/// `PATH_MAX`: the longest `PT_INTERP` path the kernel reads.
const PATH_MAX: u64 = 4096;

/// A failure of `execve` on a file, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// `ENOEXEC` (Exec format error), after which glibc's `execvp` runs the file with
    /// `/bin/sh`.
    ExecFormat(String),
    /// `EIO`: the kernel fails to read a part of the file that the header points to.
    InputOutput(String),
    /// The kernel runs the file, but its `EI_CLASS` or `EI_DATA` disagrees with its machine,
    /// so the ELF reader of `check` would read it differently from the kernel.
    Inconsistent(String),
}

/// An ELF word size and byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    is_64: bool,
    little_endian: bool,
}

impl Layout {
    fn describe(self) -> &'static str {
        match (self.is_64, self.little_endian) {
            (true, true) => "64-bit little-endian",
            (true, false) => "64-bit big-endian",
            (false, true) => "32-bit little-endian",
            (false, false) => "32-bit big-endian",
        }
    }

    fn program_header_size(self) -> u64 {
        if self.is_64 {
            56
        } else {
            32
        }
    }
}

/// The layout of this machine's own programs, which the kernel uses for every ELF file.
const HOST_LAYOUT: Layout = Layout {
    is_64: cfg!(target_pointer_width = "64"),
    little_endian: cfg!(target_endian = "little"),
};

/// Returns the machines the kernel runs natively, with their layouts: this machine's own, and
/// its 32-bit compatibility machine.
// NOTE: an x32 program (`EM_X86_64` in `ELFCLASS32`) is reported as rejected, although a
// kernel built with x32 support and booted with it enabled runs it.
fn host_machines() -> Vec<(u16, Layout)> {
    let compat = Layout {
        is_64: false,
        ..HOST_LAYOUT
    };
    if cfg!(target_arch = "x86_64") {
        vec![(elf::EM_X86_64, HOST_LAYOUT), (elf::EM_386, compat)]
    } else if cfg!(target_arch = "aarch64") {
        vec![(elf::EM_AARCH64, HOST_LAYOUT), (elf::EM_ARM, compat)]
    } else {
        // The machine of this program's own file is the kernel's native one.
        let own = std::env::current_exe()
            .ok()
            .and_then(|path| read_head(&path).ok())
            .map(|head| native_u16(&head, 18));
        own.map(|machine| vec![(machine, HOST_LAYOUT)])
            .unwrap_or_default()
    }
}

/// Checks the ELF file `path` as `execve` would.
pub fn check(path: &Path) -> Result<(), Rejection> {
    let file = File::open(path)
        .map_err(|err| Rejection::InputOutput(format!("it cannot be opened: {err}")))?;
    let length = file
        .metadata()
        .map_err(|err| Rejection::InputOutput(format!("it cannot be read: {err}")))?
        .len();
    let head = read_head_of(&file)
        .map_err(|err| Rejection::InputOutput(format!("it cannot be read: {err}")))?;

    let file_type = native_u16(&head, 16);
    if file_type != elf::ET_EXEC && file_type != elf::ET_DYN {
        // The caller names the type: an object file, a core dump.
        return Ok(());
    }
    let machine = native_u16(&head, 18);
    let Some(layout) = host_machines()
        .into_iter()
        .find(|(known, _)| *known == machine)
        .map(|(_, layout)| layout)
    else {
        if let Some(handler) = binfmt_misc_handler(&head) {
            tracing::debug!(handler, "a binfmt_misc handler runs the program");
            return Ok(());
        }
        return Err(Rejection::ExecFormat(format!(
            "it is a program for {}, which the kernel of this {} machine does not run, and no \
             binfmt_misc handler (such as qemu-user) is registered for it",
            machine_name(machine),
            host_machines().first().map_or_else(
                || std::env::consts::ARCH.to_string(),
                |(host, _)| machine_name(*host)
            )
        )));
    };

    program_headers(&file, &head, layout, length)?;

    let header_layout = Layout {
        is_64: head[EI_CLASS] == elf::ELFCLASS64,
        little_endian: head[EI_DATA] == elf::ELFDATA2LSB,
    };
    let known_class = matches!(head[EI_CLASS], elf::ELFCLASS32 | elf::ELFCLASS64);
    let known_data = matches!(head[EI_DATA], elf::ELFDATA2LSB | elf::ELFDATA2MSB);
    if !known_class || !known_data || header_layout != layout {
        return Err(Rejection::Inconsistent(format!(
            "its ELF header is inconsistent: EI_CLASS ({}) and EI_DATA ({}) do not describe a \
             {} file, as its machine {} requires. Linux ignores those two bytes and runs it, \
             but envproxy check reads the file by them and cannot judge it; correct bytes 4 \
             and 5 of the file",
            head[EI_CLASS],
            head[EI_DATA],
            layout.describe(),
            machine_name(machine)
        )));
    }
    Ok(())
}

/// Checks the program header table and the `PT_INTERP` path as `load_elf_phdrs` and
/// `load_elf_binary` do.
fn program_headers(file: &File, head: &[u8], layout: Layout, length: u64) -> Result<(), Rejection> {
    let read_word = |offset: usize| -> u64 {
        if layout.is_64 {
            native_u64(head, offset)
        } else {
            u64::from(native_u32(head, offset))
        }
    };
    let (table_offset, entry_size, count) = if layout.is_64 {
        (read_word(32), native_u16(head, 54), native_u16(head, 56))
    } else {
        (read_word(28), native_u16(head, 42), native_u16(head, 44))
    };
    let expected_size = layout.program_header_size();
    if u64::from(entry_size) != expected_size {
        return Err(Rejection::ExecFormat(format!(
            "its program header entries are {entry_size} bytes long (e_phentsize), but a {} \
             file needs {expected_size}",
            layout.describe()
        )));
    }
    let table_size = expected_size * u64::from(count);
    let page_size = rustix::param::page_size() as u64;
    let max_size = MAX_PROGRAM_HEADERS_SIZE.min(page_size);
    if table_size == 0 || table_size > max_size {
        return Err(Rejection::ExecFormat(format!(
            "its program header table has {count} entries (e_phnum), {table_size} bytes, \
             but the kernel reads between 1 entry and {max_size} bytes"
        )));
    }
    let table_end = table_offset.checked_add(table_size);
    if table_end.is_none_or(|end| end > length) {
        return Err(Rejection::ExecFormat(format!(
            "its program header table ({table_size} bytes at offset {table_offset}, e_phoff) \
             ends beyond the end of the file ({length} bytes)"
        )));
    }
    let mut table = vec![0u8; table_size as usize];
    file.read_exact_at(&mut table, table_offset)
        .map_err(|err| Rejection::InputOutput(format!("it cannot be read: {err}")))?;

    for entry in table.chunks_exact(expected_size as usize) {
        if native_u32(entry, 0) != elf::PT_INTERP {
            continue;
        }
        let (offset, size) = if layout.is_64 {
            (native_u64(entry, 8), native_u64(entry, 32))
        } else {
            (
                u64::from(native_u32(entry, 4)),
                u64::from(native_u32(entry, 16)),
            )
        };
        if !(2..=PATH_MAX).contains(&size) {
            return Err(Rejection::ExecFormat(format!(
                "its PT_INTERP segment is {size} bytes long, but the kernel accepts a loader \
                 path of 2 to {PATH_MAX} bytes"
            )));
        }
        if offset.checked_add(size).is_none_or(|end| end > length) {
            return Err(Rejection::InputOutput(format!(
                "its PT_INTERP segment ({size} bytes at offset {offset}) ends beyond the end of \
                 the file ({length} bytes)"
            )));
        }
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, offset + size - 1)
            .map_err(|err| Rejection::InputOutput(format!("it cannot be read: {err}")))?;
        if last[0] != 0 {
            return Err(Rejection::ExecFormat(
                "the loader path of its PT_INTERP segment does not end with a NUL byte".to_string(),
            ));
        }
        // The kernel reads the first PT_INTERP only.
        break;
    }
    Ok(())
}

/// Returns the name of the enabled `binfmt_misc` handler whose magic bytes match `head`, when
/// `binfmt_misc` is mounted.
fn binfmt_misc_handler(head: &[u8]) -> Option<String> {
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    if status.trim() != "enabled" {
        return None;
    }
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "status" || name == "register" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if binfmt_misc_matches(&text, head) {
            return Some(name);
        }
    }
    None
}

/// Returns whether the `binfmt_misc` entry `text` (as `/proc/sys/fs/binfmt_misc/NAME` shows
/// it) is enabled and its magic bytes, under its mask, match `head`.
fn binfmt_misc_matches(text: &str, head: &[u8]) -> bool {
    let mut lines = text.lines();
    if lines.next() != Some("enabled") {
        return false;
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    let Some(magic) = field("magic ").and_then(hex_bytes) else {
        return false;
    };
    let offset: usize = field("offset ")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mask = field("mask ")
        .and_then(hex_bytes)
        .unwrap_or_else(|| vec![0xff; magic.len()]);
    let Some(bytes) = head.get(offset..offset + magic.len()) else {
        return false;
    };
    bytes
        .iter()
        .zip(&magic)
        .zip(mask.iter().chain(std::iter::repeat(&0xff)))
        .all(|((byte, expected), mask)| byte & mask == expected & mask)
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
        .collect()
}

fn read_head(path: &Path) -> std::io::Result<[u8; HEAD_SIZE]> {
    read_head_of(&File::open(path)?)
}

/// Reads the first [`HEAD_SIZE`] bytes of `file`, zero-filled past its end as the kernel does.
fn read_head_of(file: &File) -> std::io::Result<[u8; HEAD_SIZE]> {
    let mut head = [0u8; HEAD_SIZE];
    let mut filled = 0;
    while filled < HEAD_SIZE {
        match file.read_at(&mut head[filled..], filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(head)
}

fn native_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_ne_bytes([bytes[offset], bytes[offset + 1]])
}

fn native_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_ne_bytes(word)
}

fn native_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_ne_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binfmt_misc_entries_match_by_magic_and_mask() {
        let qemu = "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: F\noffset 0\n\
                    magic 7f454c460201010000000000000000000200b700\n\
                    mask ffffffffffffff00fffffffffffffffffeffffff\n";
        let mut aarch64 = [0u8; 64];
        aarch64[..20].copy_from_slice(&[
            0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0xb7, 0,
        ]);
        assert!(binfmt_misc_matches(qemu, &aarch64));

        let mut x86_64 = aarch64;
        x86_64[18] = 0x3e;
        assert!(!binfmt_misc_matches(qemu, &x86_64));

        let disabled = qemu.replacen("enabled", "disabled", 1);
        assert!(!binfmt_misc_matches(&disabled, &aarch64));
    }
}
