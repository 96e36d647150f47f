//! The facts about an ELF file that decide whether `LD_PRELOAD` reaches the program.
//!
//! The file is read in ranges, through [`ReadCache`]: the ELF header, the program and section
//! headers, the dynamic section and the few sections and strings named below. A file of
//! several GB costs no more memory than a small one, except for a Go program, whose bytes are
//! searched in chunks of [`SEARCH_CHUNK`].

use std::fs::File;
use std::io::Read;
use std::path::Path;

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader, SectionTable};
use object::read::ReadCache;
use object::{Endianness, FileKind, ReadRef, SectionIndex};

/// Largest section or segment read whole (the `PT_INTERP` path, the dynamic section, the symbol
/// table). A larger one is treated as absent for the optional facts, because reading it would
/// cost its size in memory.
const MAX_TABLE_SIZE: u64 = 64 << 20;
/// Size of each read when the whole file is searched for bytes.
const SEARCH_CHUNK: usize = 1 << 20;

/// The C library a dynamically linked file was built for, from its loader or its `DT_NEEDED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Libc {
    Glibc,
    Musl,
    Unknown,
}

impl Libc {
    pub fn name(self) -> &'static str {
        match self {
            Libc::Glibc => "glibc",
            Libc::Musl => "musl",
            Libc::Unknown => "an unknown C library",
        }
    }
}

/// Facts of an ELF file about how it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfFacts {
    /// `ELFCLASS64` rather than `ELFCLASS32`.
    pub is_64: bool,
    /// `e_machine`, such as `EM_X86_64`.
    pub machine: u16,
    /// `e_type`, such as `ET_EXEC` or `ET_DYN`.
    pub file_type: u16,
    /// `EI_VERSION`, byte 6 of the header, which should be `EV_CURRENT` (1). Linux does not
    /// check it (`load_elf_binary` in `fs/binfmt_elf.c`), and a copy of `/bin/true` with
    /// any other value runs on Linux 6.18.
    pub ident_version: u8,
    /// `DF_1_PIE` is set in `DT_FLAGS_1`: a position-independent executable, not a library.
    pub is_pie: bool,
    /// The dynamic loader named by `PT_INTERP`; `None` for a static executable.
    pub interpreter: Option<String>,
    /// The libraries of `DT_NEEDED`.
    pub needed: Vec<String>,
    /// Built by the Go toolchain: a `.go.buildinfo` or `.note.go.buildid` section, or a
    /// `runtime.main` symbol.
    pub is_go: bool,
    /// A Go program that contains `Getenv` or `LookupEnv` of the EnvProxy Go module
    /// ([`GO_MODULE_PATH`]), which resolves references itself.
    pub has_envproxy_go_module: bool,
}

impl ElfFacts {
    /// Returns the C library of the program, judged by its loader, or of a library, judged by
    /// the C library it needs.
    pub fn libc(&self) -> Libc {
        if let Some(interpreter) = &self.interpreter {
            if interpreter.contains("ld-musl") {
                return Libc::Musl;
            }
            if interpreter.contains("ld-linux") || interpreter.contains("ld64.so") {
                return Libc::Glibc;
            }
            return Libc::Unknown;
        }
        for library in &self.needed {
            if library.starts_with("libc.so.6") {
                return Libc::Glibc;
            }
            if library == "libc.so" || library.starts_with("libc.musl-") {
                return Libc::Musl;
            }
        }
        Libc::Unknown
    }

    /// Returns whether the file is a static-pie executable: `ET_DYN` without `PT_INTERP`, marked
    /// `DF_1_PIE`, which the kernel runs and which relocates itself.
    pub fn is_static_pie(&self) -> bool {
        self.file_type == elf::ET_DYN && self.interpreter.is_none() && self.is_pie
    }

    /// Returns why the kernel does not run the file as a program, or `None` for an executable.
    pub fn not_a_program(&self) -> Option<String> {
        match self.file_type {
            elf::ET_EXEC => None,
            elf::ET_DYN if self.interpreter.is_some() || self.is_pie => None,
            elf::ET_DYN => Some(
                "is a shared library (ELF type ET_DYN without PT_INTERP or DF_1_PIE), not a \
                 program the kernel runs directly; check the program that loads it"
                    .to_string(),
            ),
            elf::ET_REL => Some(
                "is an object file (ELF type ET_REL), not a program; check the program linked \
                 from it"
                    .to_string(),
            ),
            elf::ET_CORE => Some("is a core dump (ELF type ET_CORE), not a program".to_string()),
            other => Some(format!("is an ELF file of type {other}, not a program")),
        }
    }

    /// Returns a short name of the architecture, such as `x86-64 (64-bit)`.
    pub fn architecture(&self) -> String {
        let bits = if self.is_64 { 64 } else { 32 };
        format!("{} ({bits}-bit)", machine_name(self.machine))
    }
}

/// Returns a short name of the ELF machine `machine` (`e_machine`), such as `x86-64`.
pub fn machine_name(machine: u16) -> String {
    let name = match machine {
        elf::EM_X86_64 => "x86-64",
        elf::EM_386 => "i386",
        elf::EM_AARCH64 => "aarch64",
        elf::EM_ARM => "arm",
        elf::EM_RISCV => "riscv",
        elf::EM_PPC64 => "ppc64",
        elf::EM_S390 => "s390x",
        other => return format!("machine {other}"),
    };
    name.to_string()
}

/// Reads the facts of the ELF file `path`, or returns why it is not one.
pub fn read_file(path: &Path) -> Result<ElfFacts, String> {
    let file = File::open(path).map_err(|err| format!("it cannot be opened: {err}"))?;
    let cache = ReadCache::new(file);
    let mut facts = read(&cache)?;
    if facts.is_go {
        facts.has_envproxy_go_module = file_calls_envproxy_go_module(path)
            .map_err(|err| format!("it cannot be read: {err}"))?;
    }
    Ok(facts)
}

/// Reads the facts of an ELF file, or returns why `data` is not one. The facts need no more of
/// the file than its headers and a few small sections, except `has_envproxy_go_module`, which
/// [`read_file`] fills in and this leaves false.
pub fn read<'data, R: ReadRef<'data>>(data: R) -> Result<ElfFacts, String> {
    if data.read_bytes_at(0, elf::ELFMAG.len() as u64) != Ok(&elf::ELFMAG[..]) {
        return Err("it does not start with the ELF magic bytes".to_string());
    }
    match FileKind::parse(data) {
        Ok(FileKind::Elf32) => facts_of::<elf::FileHeader32<Endianness>, R>(data),
        Ok(FileKind::Elf64) => facts_of::<elf::FileHeader64<Endianness>, R>(data),
        Ok(_) => Err("it is not an ELF file".to_string()),
        Err(err) => Err(format!("it is not a valid ELF file: {err}")),
    }
}

fn facts_of<'data, Elf, R>(data: R) -> Result<ElfFacts, String>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    let invalid = |err: object::read::Error| format!("it is not a valid ELF file: {err}");
    // Read without `Elf::parse`, which rejects an `EI_VERSION` other than `EV_CURRENT`
    // that the kernel accepts. `read` has checked the magic bytes and `FileKind` the class.
    let header: &Elf = data
        .read_at(0)
        .map_err(|()| "it is not a valid ELF file: its header is truncated".to_string())?;
    let endian = header.endian().map_err(invalid)?;

    let mut interpreter = None;
    for segment in header.program_headers(endian, data).map_err(invalid)? {
        if segment.p_type(endian) != elf::PT_INTERP {
            continue;
        }
        let size: u64 = segment.p_filesz(endian).into();
        if size > MAX_TABLE_SIZE {
            return Err(format!(
                "its PT_INTERP segment is invalid: {size} bytes long"
            ));
        }
        let found = segment
            .interpreter(endian, data)
            .map_err(|err| format!("its PT_INTERP segment is invalid: {err}"))?;
        if let Some(path) = found {
            interpreter = Some(String::from_utf8_lossy(path).into_owned());
        }
    }

    // The section headers are optional for running a program, so a file without valid ones
    // is judged by its program headers alone.
    let sections = header.sections(endian, data).unwrap_or_default();
    let (needed, is_pie) = dynamic_facts(&sections, endian, data).unwrap_or_default();
    let is_go = sections.section_by_name(endian, b".go.buildinfo").is_some()
        || sections
            .section_by_name(endian, b".note.go.buildid")
            .is_some()
        || defines_symbol(&sections, endian, data, b"runtime.main");

    Ok(ElfFacts {
        is_64: header.is_type_64(),
        machine: header.e_machine(endian),
        file_type: header.e_type(endian),
        ident_version: header.e_ident().version,
        is_pie,
        interpreter,
        needed,
        is_go,
        has_envproxy_go_module: false,
    })
}

/// Returns the `DT_NEEDED` entries of the dynamic section and whether `DT_FLAGS_1` contains
/// `DF_1_PIE`.
fn dynamic_facts<'data, Elf, R>(
    sections: &SectionTable<'data, Elf, R>,
    endian: Endianness,
    data: R,
) -> object::read::Result<(Vec<String>, bool)>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    let too_large = sections.iter().any(|section| {
        section.sh_type(endian) == elf::SHT_DYNAMIC
            && section.sh_size(endian).into() > MAX_TABLE_SIZE
    });
    if too_large {
        return Ok((Vec::new(), false));
    }
    let Some((entries, string_index)) = sections.dynamic(endian, data)? else {
        return Ok((Vec::new(), false));
    };
    let strings = sections.strings(endian, data, string_index)?;
    let mut needed = Vec::new();
    let mut is_pie = false;
    for entry in entries {
        match entry.d_tag(endian).into() {
            tag if tag == elf::DT_NEEDED => {
                let name = entry.string(endian, strings)?;
                needed.push(String::from_utf8_lossy(name).into_owned());
            }
            tag if tag == elf::DT_FLAGS_1 => {
                is_pie |= entry.d_val(endian).into() & u64::from(elf::DF_1_PIE) != 0;
            }
            _ => {}
        }
    }
    Ok((needed, is_pie))
}

/// Returns whether the string table of the symbol table (`SHT_SYMTAB`, absent from stripped
/// files) contains `name`. The table is read in one range, which costs less memory than
/// looking up the name of each symbol.
fn defines_symbol<'data, Elf, R>(
    sections: &SectionTable<'data, Elf, R>,
    endian: Endianness,
    data: R,
    name: &[u8],
) -> bool
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    let Some(symbols) = sections
        .iter()
        .find(|section| section.sh_type(endian) == elf::SHT_SYMTAB)
    else {
        return false;
    };
    let Ok(strings) = sections.section(SectionIndex(symbols.sh_link(endian) as usize)) else {
        return false;
    };
    let size: u64 = strings.sh_size(endian).into();
    if size > MAX_TABLE_SIZE {
        return false;
    }
    let Ok(table) = data.read_bytes_at(strings.sh_offset(endian).into(), size) else {
        return false;
    };
    let mut entry = Vec::with_capacity(name.len() + 2);
    entry.push(0);
    entry.extend_from_slice(name);
    entry.push(0);
    find(table, &entry).is_some()
}

/// Import path of the EnvProxy Go module.
pub const GO_MODULE_PATH: &[u8] = b"envproxy.dev/go";

/// Returns whether the file `path` names `Getenv` or `LookupEnv` of a package of the EnvProxy
/// Go module, searching it in chunks that overlap by the longest name searched.
fn file_calls_envproxy_go_module(path: &Path) -> std::io::Result<bool> {
    // A function name is at most 256 bytes long in `calls_envproxy_go_module`.
    let overlap = GO_MODULE_PATH.len() + 256;
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; SEARCH_CHUNK + overlap];
    let mut kept = 0;
    loop {
        let read = match file.read(&mut buffer[kept..]) {
            Ok(0) => return Ok(calls_envproxy_go_module(&buffer[..kept])),
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let filled = kept + read;
        if filled < buffer.len() {
            kept = filled;
            continue;
        }
        if calls_envproxy_go_module(&buffer[..filled]) {
            return Ok(true);
        }
        buffer.copy_within(filled - overlap..filled, 0);
        kept = overlap;
    }
}

/// Returns whether `data` names `Getenv` or `LookupEnv` of a package of the EnvProxy Go module.
///
/// Go keeps function names, such as `envproxy.dev/go.Getenv`, NUL-terminated in its own table
/// (`.gopclntab`), also in a stripped binary, so a search of the bytes finds them. The linker
/// drops functions the program never calls.
fn calls_envproxy_go_module(data: &[u8]) -> bool {
    let mut start = 0;
    while let Some(offset) = find(&data[start..], GO_MODULE_PATH) {
        let name_start = start + offset;
        let name = &data[name_start..];
        let name = &name[..name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name.len())
            .min(256)];
        if name.ends_with(b".Getenv") || name.ends_with(b".LookupEnv") {
            return true;
        }
        start = name_start + GO_MODULE_PATH.len();
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(interpreter: Option<&str>, needed: &[&str]) -> ElfFacts {
        ElfFacts {
            is_64: true,
            machine: elf::EM_X86_64,
            file_type: elf::ET_DYN,
            ident_version: elf::EV_CURRENT,
            is_pie: true,
            interpreter: interpreter.map(str::to_string),
            needed: needed.iter().map(|n| n.to_string()).collect(),
            is_go: false,
            has_envproxy_go_module: false,
        }
    }

    #[test]
    fn libc_from_loader_or_needed() {
        let cases = [
            (facts(Some("/lib64/ld-linux-x86-64.so.2"), &[]), Libc::Glibc),
            (facts(Some("/lib/ld-musl-x86_64.so.1"), &[]), Libc::Musl),
            (facts(Some("/opt/odd-loader"), &[]), Libc::Unknown),
            (facts(None, &["libgcc_s.so.1", "libc.so.6"]), Libc::Glibc),
            (facts(None, &["libc.so"]), Libc::Musl),
            (facts(None, &["libc.musl-x86_64.so.1"]), Libc::Musl),
            (facts(None, &[]), Libc::Unknown),
        ];
        for (facts, expected) in cases {
            assert_eq!(facts.libc(), expected, "{facts:?}");
        }
    }

    #[test]
    fn go_module_function_names_found() {
        let cases: [(&[u8], bool); 5] = [
            (b"\0runtime.main\0envproxy.dev/go.Getenv\0os.Getenv\0", true),
            (b"envproxy.dev/go/sub.LookupEnv\0", true),
            (b"envproxy.dev/go.init\0envproxy.dev/go.Getenv", true),
            (b"envproxy.dev/go.init\0os.Getenv\0", false),
            (b"example.com/envproxy.Getenv\0", false),
        ];
        for (data, expected) in cases {
            assert_eq!(
                calls_envproxy_go_module(data),
                expected,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn text_is_not_elf() {
        let error = read(&b"#!/bin/sh\necho hi\n"[..]).unwrap_err();
        assert!(error.contains("ELF magic"), "{error}");
    }

    #[test]
    fn truncated_elf_is_invalid() {
        let error = read(&b"\x7fELF\x02\x01\x01\0\0\0"[..]).unwrap_err();
        assert!(error.contains("not a valid ELF file"), "{error}");
    }

    #[test]
    fn symbol_names_found_in_string_table() {
        let file = File::open(std::env::current_exe().unwrap()).unwrap();
        let cache = ReadCache::new(file);
        let header = elf::FileHeader64::<Endianness>::parse(&cache).unwrap();
        let endian = header.endian().unwrap();
        let sections = header.sections(endian, &cache).unwrap();

        assert!(defines_symbol(&sections, endian, &cache, b"main"));
        assert!(!defines_symbol(
            &sections,
            endian,
            &cache,
            b"envproxy.no.such.symbol"
        ));
    }

    #[test]
    fn own_test_binary_is_dynamic() {
        let path = std::env::current_exe().unwrap();
        let facts = read_file(&path).unwrap();
        assert!(facts.interpreter.is_some(), "{facts:?}");
        assert!(!facts.is_go);
        assert_eq!(facts.libc(), Libc::Glibc);
    }
}
