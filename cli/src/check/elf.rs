//! The facts about an ELF file that decide whether `LD_PRELOAD` reaches the program.

use object::elf;
use object::read::elf::{Dyn, ElfFile, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol};

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

    /// Returns a short name of the architecture, such as `x86-64`.
    pub fn architecture(&self) -> String {
        let name = match self.machine {
            elf::EM_X86_64 => "x86-64",
            elf::EM_386 => "i386",
            elf::EM_AARCH64 => "aarch64",
            elf::EM_ARM => "arm",
            elf::EM_RISCV => "riscv",
            elf::EM_PPC64 => "ppc64",
            elf::EM_S390 => "s390x",
            other => return format!("machine {other}"),
        };
        let bits = if self.is_64 { 64 } else { 32 };
        format!("{name} ({bits}-bit)")
    }
}

/// Reads the facts of an ELF file, or returns why `data` is not one.
pub fn read(data: &[u8]) -> Result<ElfFacts, String> {
    if !data.starts_with(&elf::ELFMAG) {
        return Err("it does not start with the ELF magic bytes".to_string());
    }
    match object::File::parse(data) {
        Ok(object::File::Elf32(file)) => facts_of(&file, data),
        Ok(object::File::Elf64(file)) => facts_of(&file, data),
        Ok(_) => Err("it is not an ELF file".to_string()),
        Err(err) => Err(format!("it is not a valid ELF file: {err}")),
    }
}

fn facts_of<Elf: FileHeader<Endian = Endianness>>(
    file: &ElfFile<'_, Elf>,
    data: &[u8],
) -> Result<ElfFacts, String> {
    let endian = file.endian();
    let header = file.elf_header();

    let mut interpreter = None;
    for segment in file.elf_program_headers() {
        let found = segment
            .interpreter(endian, data)
            .map_err(|err| format!("its PT_INTERP segment is invalid: {err}"))?;
        if let Some(path) = found {
            interpreter = Some(String::from_utf8_lossy(path).into_owned());
        }
    }

    let needed = needed_libraries(file, data).unwrap_or_default();

    let is_go = file.section_by_name(".go.buildinfo").is_some()
        || file.section_by_name(".note.go.buildid").is_some()
        || file
            .symbols()
            .any(|symbol| symbol.name() == Ok("runtime.main"));
    let has_envproxy_go_module = is_go && calls_envproxy_go_module(data);

    Ok(ElfFacts {
        is_64: header.is_type_64(),
        machine: header.e_machine(endian),
        interpreter,
        needed,
        is_go,
        has_envproxy_go_module,
    })
}

/// Returns the `DT_NEEDED` entries of the dynamic section.
fn needed_libraries<Elf: FileHeader<Endian = Endianness>>(
    file: &ElfFile<'_, Elf>,
    data: &[u8],
) -> object::read::Result<Vec<String>> {
    let endian = file.endian();
    let sections = file.elf_section_table();
    let Some((entries, string_index)) = sections.dynamic(endian, data)? else {
        return Ok(Vec::new());
    };
    let strings = sections.strings(endian, data, string_index)?;
    let mut needed = Vec::new();
    for entry in entries {
        if entry.tag32(endian) == Some(elf::DT_NEEDED as i32) {
            let name = entry.string(endian, strings)?;
            needed.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(needed)
}

/// Import path of the EnvProxy Go module.
pub const GO_MODULE_PATH: &[u8] = b"envproxy.dev/go";

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
        let error = read(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(error.contains("ELF magic"), "{error}");
    }

    #[test]
    fn truncated_elf_is_invalid() {
        let error = read(b"\x7fELF\x02\x01\x01\0\0\0").unwrap_err();
        assert!(error.contains("not a valid ELF file"), "{error}");
    }

    #[test]
    fn own_test_binary_is_dynamic() {
        let path = std::env::current_exe().unwrap();
        let data = std::fs::read(path).unwrap();
        let facts = read(&data).unwrap();
        assert!(facts.interpreter.is_some(), "{facts:?}");
        assert!(!facts.is_go);
        assert_eq!(facts.libc(), Libc::Glibc);
    }
}
