//! The library's stderr lines. It never writes to stdout, and never a value.

use std::ffi::CStr;

/// Writes `envproxy[PID]: MESSAGE` and a newline to stderr with one `write` call.
///
/// Uses `write(2)` directly: no buffering to interleave with the program's own stdio, and no
/// lock that a forked child could inherit.
pub fn line(message: &str) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let text = format!("envproxy[{pid}]: {message}\n");
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid readable buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            let interrupted =
                n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
            if interrupted {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Writes a decision line when `ENVPROXY_DEBUG=1`.
pub fn debug(name: &CStr, decision: &str) {
    if crate::settings::get().debug {
        line(&format!("{}: {decision}", printable(name.to_bytes())));
    }
}

/// Maximum characters of a name or reference quoted in a stderr line.
const MAX_QUOTED_CHARS: usize = 200;

/// Returns `bytes` as text for a stderr line: control characters and invalid UTF-8 escaped as
/// `\xNN`, so a line stays one line and sends no terminal escape sequences, and at most
/// [`MAX_QUOTED_CHARS`] characters followed by `...` when longer.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (count, chunk) in bytes.utf8_chunks().flat_map(escape_chunk).enumerate() {
        if count == MAX_QUOTED_CHARS {
            out.push_str("...");
            break;
        }
        out.push_str(&chunk);
    }
    out
}

fn escape_chunk(chunk: std::str::Utf8Chunk<'_>) -> Vec<String> {
    let mut parts: Vec<String> = chunk
        .valid()
        .chars()
        .map(|c| {
            if c.is_control() {
                let mut buffer = [0u8; 4];
                c.encode_utf8(&mut buffer)
                    .bytes()
                    .map(|b| format!("\\x{b:02x}"))
                    .collect()
            } else {
                c.to_string()
            }
        })
        .collect();
    parts.extend(chunk.invalid().iter().map(|b| format!("\\x{b:02x}")));
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_and_invalid_bytes() {
        assert_eq!(
            printable(b"envproxy:A\nB\x1b[31m"),
            "envproxy:A\\x0aB\\x1b[31m"
        );
        assert_eq!(printable(b"a\xffb"), "a\\xffb");
    }

    #[test]
    fn printable_truncates_long_text() {
        let long = "x".repeat(500);
        let shown = printable(long.as_bytes());
        assert_eq!(shown.len(), MAX_QUOTED_CHARS + 3);
        assert!(shown.ends_with("..."));
    }
}
