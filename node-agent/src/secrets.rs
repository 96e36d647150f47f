//! Secrets files: a flat map from key to string value, in JSON, `.env` or TOML.
//!
//! The file name selects the format. A name that is `.env`, starts with `.env` (such as
//! `.env.local`) or ends with `.env` is `.env` style. A `.toml` extension is TOML. Anything else
//! is JSON. Parse errors never contain file content: they give a position and the key name at
//! most, because any byte of the file may belong to a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use envproxy_proto::SecretBytes;
use zeroize::Zeroizing;

use crate::config::line_and_column;

/// Secret values by key.
pub type SecretMap = BTreeMap<String, SecretBytes>;

/// The syntax of a secrets file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON object whose values are all strings.
    Json,
    /// `KEY=VALUE` lines with `#` comments, an optional `export ` prefix and optional quotes.
    Dotenv,
    /// A TOML table whose values are all strings.
    Toml,
}

impl Format {
    /// Chooses the format from the file name.
    pub fn for_path(path: &Path) -> Format {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy())
            .unwrap_or_default();
        if name.starts_with(".env") || name.ends_with(".env") {
            Format::Dotenv
        } else if path.extension().is_some_and(|ext| ext == "toml") {
            Format::Toml
        } else {
            Format::Json
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Dotenv => ".env",
            Format::Toml => "TOML",
        })
    }
}

/// Maximum size of a secrets file. A larger file is rejected, and on reload the last good content
/// stays in use.
pub const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;
/// Maximum length of a key in bytes. A longer key is skipped with a warning.
pub const MAX_KEY_LEN: usize = 4096;

/// A secrets file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "secrets file {} is {size} bytes, more than the maximum of {max} bytes (64 MiB); split \
         it or remove unused keys",
        path.display(),
        max = MAX_FILE_SIZE
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error(
        "secrets file {} is not a regular file (it is {kind}); point to a regular file",
        path.display()
    )]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error(
        "invalid {format} secrets file {}: {source}{}",
        path.display(),
        format_hint(path, *format)
    )]
    Parse {
        path: PathBuf,
        format: Format,
        #[source]
        source: ParseError,
    },
}

/// Content that is not a flat map of strings. No variant carries file content.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The `serde_json` message, which gives a position and never quotes the input.
    #[error("{0}")]
    Json(serde_json::Error),
    #[error("line {line}, column {column}: {message}")]
    Toml {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("line {line}: {reason}")]
    Dotenv { line: usize, reason: &'static str },
    #[error("line {line}: the file is not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("the top level must be an object of strings, found {found}")]
    NotAnObject { found: &'static str },
    #[error("the value of `{key}` must be a string, found {found}")]
    NotAString { key: String, found: &'static str },
}

/// Reads and parses the secrets file at `path`, in the format its name selects.
///
/// A path that is not a regular file (a FIFO, device, directory or socket) is rejected without
/// reading it. The file is opened with `O_NONBLOCK`, so opening a FIFO with no writer does not
/// block, and then `fstat` checks the type of the opened descriptor.
pub fn load(path: &Path) -> Result<SecretMap, SecretsError> {
    let read_error = |source| SecretsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let not_regular = |file_type: fs::FileType| SecretsError::NotRegularFile {
        path: path.to_path_buf(),
        kind: file_type_name(file_type),
    };
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        // Opening a Unix socket fails with ENXIO, so `stat` finds the actual cause.
        Err(err) => {
            return Err(match fs::metadata(path) {
                Ok(metadata) if !metadata.is_file() => not_regular(metadata.file_type()),
                _ => read_error(err),
            })
        }
    };
    let file_type = file.metadata().map_err(read_error)?.file_type();
    if !file_type.is_file() {
        return Err(not_regular(file_type));
    }
    // One byte more than the maximum is read, so a file that grew after `open` is caught too.
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        let size = fs::metadata(path).map_or(bytes.len() as u64, |metadata| metadata.len());
        return Err(SecretsError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let format = Format::for_path(path);
    parse(&bytes, format).map_err(|source| SecretsError::Parse {
        path: path.to_path_buf(),
        format,
        source,
    })
}

/// Explains how the format was chosen when the file name does not show it: a name without a
/// `.json`, `.env` or `.toml` extension is read as JSON.
fn format_hint(path: &Path, format: Format) -> &'static str {
    let named_json = path.extension().is_some_and(|ext| ext == "json");
    if format == Format::Json && !named_json {
        "; the file name chooses the format (.json, .env, .toml), and other names are read as \
         JSON, so this file is not valid JSON"
    } else {
        ""
    }
}

/// Describes a file type that is not a regular file, for error messages.
fn file_type_name(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "of an unknown type"
    }
}

/// UTF-8 byte order mark, which some editors write at the start of a file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses secrets file content, after a UTF-8 byte order mark if there is one.
///
/// A key that cannot be exported as an environment variable, or whose value contains NUL, is
/// left out with a warning that names the key and the reason, and the rest of the file is used.
pub fn parse(bytes: &[u8], format: Format) -> Result<SecretMap, ParseError> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut secrets = match format {
        Format::Json => parse_json(bytes)?,
        Format::Toml => parse_toml(utf8(bytes)?)?,
        Format::Dotenv => parse_dotenv(utf8(bytes)?)?,
    };
    secrets.retain(
        |key, value| match unusable_entry_reason(key, value.expose_secret()) {
            Some(reason) => {
                tracing::warn!(key = ?key, reason, "skipping a key of the secrets file");
                false
            }
            None => true,
        },
    );
    Ok(secrets)
}

/// Returns why `key` and its value cannot be served as an environment variable, if they cannot.
fn unusable_entry_reason(key: &str, value: &[u8]) -> Option<&'static str> {
    if key.is_empty() {
        return Some("the key is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return Some("the key is longer than 4096 bytes");
    }
    if key.contains('=') {
        return Some("the key contains `=`, which ends a variable name in an environment");
    }
    if key.chars().any(char::is_control) {
        return Some("the key contains a control character such as NUL or a newline");
    }
    if value.contains(&0) {
        return Some("the value contains a NUL byte, which an environment cannot carry");
    }
    None
}

fn utf8(bytes: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(bytes).map_err(|err| {
        let valid = &bytes[..err.valid_up_to()];
        ParseError::NotUtf8 {
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
        }
    })
}

fn parse_json(bytes: &[u8]) -> Result<SecretMap, ParseError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(ParseError::Json)?;
    let serde_json::Value::Object(object) = value else {
        return Err(ParseError::NotAnObject {
            found: json_type(&value),
        });
    };
    let mut secrets = SecretMap::new();
    for (key, value) in object {
        let serde_json::Value::String(text) = value else {
            return Err(ParseError::NotAString {
                found: json_type(&value),
                key,
            });
        };
        secrets.insert(key, SecretBytes::new(text.into_bytes()));
    }
    Ok(secrets)
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn parse_toml(text: &str) -> Result<SecretMap, ParseError> {
    let table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        // The Display form of a TOML error quotes the source line, which may hold a secret.
        let (line, column) = err
            .span()
            .map(|span| line_and_column(text, span.start))
            .unwrap_or((1, 1));
        ParseError::Toml {
            line,
            column,
            message: err.message().to_string(),
        }
    })?;
    let mut secrets = SecretMap::new();
    for (key, value) in table {
        let toml::Value::String(text) = value else {
            return Err(ParseError::NotAString {
                found: toml_type(&value),
                key,
            });
        };
        secrets.insert(key, SecretBytes::new(text.into_bytes()));
    }
    Ok(secrets)
}

fn toml_type(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Parses `.env` content.
///
/// Each entry is `KEY=VALUE`, optionally preceded by `export `. Blank lines and lines starting
/// with `#` are skipped. A value is one of:
/// - unquoted: up to the end of the line or to a ` #` comment, with surrounding whitespace
///   removed;
/// - single-quoted: taken literally up to the next `'`, which may be on a later line;
/// - double-quoted: up to the next unescaped `"`, which may be on a later line. The escapes
///   `\n`, `\r`, `\t`, `\"`, `\\` and `\$` are replaced, and any other backslash is kept.
///
/// `$NAME` references are not expanded. A later entry for the same key replaces an earlier one,
/// as in a shell.
fn parse_dotenv(text: &str) -> Result<SecretMap, ParseError> {
    let mut secrets = SecretMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let line_number = index + 1;
        let error = |reason| ParseError::Dotenv {
            line: line_number,
            reason,
        };
        let entry = line.trim_start();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let entry = strip_export(entry);
        let Some((key, rest)) = entry.split_once('=') else {
            return Err(error("expected KEY=VALUE"));
        };
        let key = key.trim_end();
        if !is_variable_name(key) {
            return Err(error(
                "the name before `=` is not a variable name (letters, digits, `_` and `.`, \
                 not starting with a digit)",
            ));
        }
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let (value, after) = read_quoted(&rest[1..], quote, &mut lines)
                    .ok_or_else(|| error("the quoted value has no closing quote"))?;
                let after = after.trim_start();
                if !after.is_empty() && !after.starts_with('#') {
                    return Err(error("unexpected text after the closing quote"));
                }
                value
            }
            _ => strip_inline_comment(rest).trim_end().to_string(),
        };
        secrets.insert(key.to_string(), SecretBytes::new(value.into_bytes()));
    }
    Ok(secrets)
}

fn strip_export(entry: &str) -> &str {
    match entry.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => entry,
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Returns an unquoted value without a trailing comment, which starts at a `#` that follows
/// whitespace.
fn strip_inline_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return &value[..i];
        }
    }
    value
}

/// Reads a quoted value that starts in `first` (just after the opening quote) and may continue
/// on the following lines. Returns the value and the rest of the line after the closing quote,
/// or `None` when the input ends first.
fn read_quoted<'a>(
    first: &'a str,
    quote: char,
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
) -> Option<(String, &'a str)> {
    let mut value = String::new();
    let mut line = first;
    loop {
        let mut chars = line.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                return Some((value, &line[i + 1..]));
            }
            if c == '\\' && quote == '"' {
                match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, escaped @ ('"' | '\\' | '$'))) => value.push(escaped),
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => value.push('\\'),
                }
                continue;
            }
            value.push(c);
        }
        let (_, next) = lines.next()?;
        value.push('\n');
        line = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'m>(secrets: &'m SecretMap, key: &str) -> &'m [u8] {
        secrets
            .get(key)
            .unwrap_or_else(|| panic!("missing key {key}"))
            .expose_secret()
    }

    /// Returns a value that appears nowhere else, so its presence in a message can only be a leak.
    fn random_secret() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("s3cr3t{:x}{:x}", nanos, std::process::id())
    }

    #[test]
    fn format_follows_file_name() {
        assert_eq!(Format::for_path(Path::new("/a/.env")), Format::Dotenv);
        assert_eq!(Format::for_path(Path::new(".env.local")), Format::Dotenv);
        assert_eq!(Format::for_path(Path::new("prod.env")), Format::Dotenv);
        assert_eq!(Format::for_path(Path::new("/a/secrets.toml")), Format::Toml);
        assert_eq!(Format::for_path(Path::new("secrets.json")), Format::Json);
        assert_eq!(Format::for_path(Path::new("secrets")), Format::Json);
        assert_eq!(Format::for_path(Path::new("environment.txt")), Format::Json);
    }

    #[test]
    fn json_object_of_strings() {
        let secrets = parse(
            br#"{"DB_URL": "postgres://u:p@h/db", "EMPTY": ""}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(value(&secrets, "DB_URL"), b"postgres://u:p@h/db");
        assert_eq!(value(&secrets, "EMPTY"), b"");
    }

    #[test]
    fn json_non_string_names_key_only() {
        let error = parse(br#"{"OK": "x", "PORT": 5432}"#, Format::Json).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("`PORT`"), "{message}");
        assert!(message.contains("a number"), "{message}");
        assert!(!message.contains("5432"), "{message}");
    }

    #[test]
    fn json_top_level_must_be_object() {
        let error = parse(br#"["a", "b"]"#, Format::Json).unwrap_err();
        assert!(error.to_string().contains("found an array"), "{error}");
    }

    #[test]
    fn toml_table_of_strings() {
        let secrets = parse(b"API_KEY = \"abc\"\n'odd key' = 'x#y'\n", Format::Toml).unwrap();
        assert_eq!(value(&secrets, "API_KEY"), b"abc");
        assert_eq!(value(&secrets, "odd key"), b"x#y");
    }

    #[test]
    fn toml_nested_table_is_rejected() {
        let error = parse(b"[database]\nurl = \"x\"\n", Format::Toml).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("`database`"), "{message}");
        assert!(message.contains("a table"), "{message}");
    }

    #[test]
    fn dotenv_forms() {
        let text = "\
# comment line
PLAIN=value one  # trailing comment
export EXPORTED=yes
SPACED = around
SINGLE='literal \\n #not comment'
DOUBLE=\"line\\nbreak \\\"q\\\" \\$HOME \\x\" # comment
EMPTY=
HASH=a#b
MULTI=\"first
second\"
SINGLE_MULTI='a
b'
   INDENTED=1
DUP=old
DUP=new
";
        let secrets = parse(text.as_bytes(), Format::Dotenv).unwrap();
        assert_eq!(value(&secrets, "PLAIN"), b"value one");
        assert_eq!(value(&secrets, "EXPORTED"), b"yes");
        assert_eq!(value(&secrets, "SPACED"), b"around");
        assert_eq!(value(&secrets, "SINGLE"), b"literal \\n #not comment");
        assert_eq!(value(&secrets, "DOUBLE"), b"line\nbreak \"q\" $HOME \\x");
        assert_eq!(value(&secrets, "EMPTY"), b"");
        assert_eq!(value(&secrets, "HASH"), b"a#b");
        assert_eq!(value(&secrets, "MULTI"), b"first\nsecond");
        assert_eq!(value(&secrets, "SINGLE_MULTI"), b"a\nb");
        assert_eq!(value(&secrets, "INDENTED"), b"1");
        assert_eq!(value(&secrets, "DUP"), b"new");
    }

    #[test]
    fn dotenv_single_quotes_are_literal() {
        let secrets = parse(b"A='x\\ny # z'\n", Format::Dotenv).unwrap();
        assert_eq!(value(&secrets, "A"), b"x\\ny # z");
    }

    #[test]
    fn dotenv_text_after_quote_is_error() {
        let error = parse(b"A=1\nB='x'y\n", Format::Dotenv).unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 2: unexpected text after the closing quote"
        );
    }

    #[test]
    fn dotenv_crlf_lines() {
        let secrets = parse(b"A=1\r\nB=\"two\"\r\n", Format::Dotenv).unwrap();
        assert_eq!(value(&secrets, "A"), b"1");
        assert_eq!(value(&secrets, "B"), b"two");
    }

    #[test]
    fn dotenv_export_is_prefix_only_with_space() {
        let secrets = parse(b"exported=1\nexport=2\n", Format::Dotenv).unwrap();
        assert_eq!(value(&secrets, "exported"), b"1");
        assert_eq!(value(&secrets, "export"), b"2");
    }

    #[test]
    fn parse_errors_never_echo_content() {
        let secret = random_secret();
        let cases: Vec<(Format, String)> = vec![
            (Format::Json, format!("{{\"A\": \"{secret}\" \"B\": 1}}")),
            (Format::Json, format!("{{\"A\": \"{secret}")),
            (Format::Json, format!("{{\"A\": {secret}}}")),
            (Format::Json, format!("[\"{secret}\"]")),
            (Format::Toml, format!("A = \"{secret}\" junk\n")),
            (Format::Toml, format!("A = {secret}\n")),
            (Format::Toml, format!("A = \"{secret}\nB = 1\n")),
            (Format::Toml, format!("A = \"x\"\nA = \"{secret}\"\n")),
            (Format::Toml, format!("A = [\"{secret}\"]\n")),
            (Format::Dotenv, format!("{secret}\n")),
            (Format::Dotenv, format!("A=\"{secret}\n")),
            (Format::Dotenv, format!("A='{secret}'{secret}\n")),
            (Format::Dotenv, format!("1{secret}=x\n")),
        ];
        for (format, text) in cases {
            let error = parse(text.as_bytes(), format).unwrap_err();
            let message = error.to_string();
            let debug = format!("{error:?}");
            assert!(!message.contains(&secret), "{format}: {message}");
            assert!(!debug.contains(&secret), "{format}: {debug}");
            assert!(!message.contains(&secret[6..]), "{format}: {message}");
        }
    }

    #[test]
    fn non_utf8_reports_line() {
        let error = parse(b"A=1\nB=\xff\n", Format::Dotenv).unwrap_err();
        assert_eq!(error.to_string(), "line 2: the file is not valid UTF-8");
    }

    #[test]
    fn byte_order_mark_is_accepted() {
        let cases: [(Format, &[u8]); 3] = [
            (Format::Json, b"\xEF\xBB\xBF{\"A\": \"1\"}"),
            (Format::Dotenv, b"\xEF\xBB\xBFA=1\n"),
            (Format::Toml, b"\xEF\xBB\xBFA = \"1\"\n"),
        ];
        for (format, bytes) in cases {
            let secrets = parse(bytes, format).unwrap_or_else(|err| panic!("{format}: {err}"));
            assert_eq!(value(&secrets, "A"), b"1", "{format}");
        }
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let long_key = "K".repeat(MAX_KEY_LEN + 1);
        let longest_key = "K".repeat(MAX_KEY_LEN);
        let text = format!(
            r#"{{"GOOD": "1", "A=B": "2", "": "3", "NL\nKEY": "4", "NUL\u0000KEY": "5",
                "{long_key}": "6", "{longest_key}": "7", "NUL_VALUE": "a\u0000b",
                "TAB\tKEY": "8"}}"#
        );
        let secrets = parse(text.as_bytes(), Format::Json).unwrap();
        let keys: Vec<&str> = secrets.keys().map(String::as_str).collect();
        assert_eq!(keys, ["GOOD", longest_key.as_str()]);

        let toml = "GOOD = \"1\"\n\"A=B\" = \"2\"\n\"\" = \"3\"\nNUL = \"x\\u0000y\"\n";
        let secrets = parse(toml.as_bytes(), Format::Toml).unwrap();
        let keys: Vec<&str> = secrets.keys().map(String::as_str).collect();
        assert_eq!(keys, ["GOOD"]);
    }

    #[test]
    fn unusable_entry_reasons() {
        assert_eq!(unusable_entry_reason("OK", b"v"), None);
        assert_eq!(unusable_entry_reason("", b"v"), Some("the key is empty"));
        assert!(unusable_entry_reason("A=B", b"v").unwrap().contains("`=`"));
        assert!(unusable_entry_reason("A\nB", b"v")
            .unwrap()
            .contains("control"));
        assert!(unusable_entry_reason("A", b"x\0y")
            .unwrap()
            .contains("NUL byte"));
        let long_key = "K".repeat(MAX_KEY_LEN + 1);
        assert!(unusable_entry_reason(&long_key, b"v")
            .unwrap()
            .contains("4096"));
    }

    #[test]
    fn oversized_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        let file = fs::File::create(&path).unwrap();
        file.set_len(MAX_FILE_SIZE + 1).unwrap();
        let error = load(&path).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SecretsError::TooLarge { .. }), "{message}");
        assert!(message.contains("big.json"), "{message}");
        assert!(message.contains("64 MiB"), "{message}");

        let file = fs::File::create(&path).unwrap();
        file.set_len(MAX_FILE_SIZE).unwrap();
        let error = load(&path).unwrap_err();
        assert!(matches!(error, SecretsError::Parse { .. }), "{error}");
    }

    #[test]
    fn load_names_file_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.toml");
        fs::write(&path, "A = 1\n").unwrap();
        let message = load(&path).unwrap_err().to_string();
        assert!(message.contains("invalid TOML secrets file"), "{message}");
        assert!(message.contains("app.toml"), "{message}");
        assert!(message.contains("`A`"), "{message}");

        let missing = dir.path().join("missing.json");
        let message = load(&missing).unwrap_err().to_string();
        assert!(message.contains("cannot read secrets file"), "{message}");
        assert!(message.contains("missing.json"), "{message}");
    }

    fn assert_not_regular(path: &Path, kind: &str) {
        let started = std::time::Instant::now();
        let error = load(path).unwrap_err();
        let message = error.to_string();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "load of {kind} took {:?}",
            started.elapsed()
        );
        assert!(
            matches!(error, SecretsError::NotRegularFile { .. }),
            "{message}"
        );
        assert!(message.contains("is not a regular file"), "{message}");
        assert!(message.contains(kind), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn non_regular_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_not_regular(&fifo, "a FIFO");

        assert_not_regular(dir.path(), "a directory");

        let socket_path = dir.path().join("socket.json");
        let _listener = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
        assert_not_regular(&socket_path, "a socket");

        assert_not_regular(Path::new("/dev/zero"), "a character device");
        assert_not_regular(Path::new("/dev/null"), "a character device");
    }

    #[test]
    fn unknown_extension_names_format_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yaml");
        fs::write(&path, "A: b\n").unwrap();
        let message = load(&path).unwrap_err().to_string();
        assert!(message.contains("invalid JSON secrets file"), "{message}");
        assert!(message.contains("s.yaml"), "{message}");
        assert!(message.contains(".json, .env, .toml"), "{message}");
        assert!(
            message.contains("other names are read as JSON"),
            "{message}"
        );

        let json_path = dir.path().join("s.json");
        fs::write(&json_path, "A: b\n").unwrap();
        let message = load(&json_path).unwrap_err().to_string();
        assert!(!message.contains("other names"), "{message}");
    }
}
