//! A container for secret bytes that never prints them.

use std::fmt;

use zeroize::Zeroize;

/// Secret bytes, such as a resolved value.
///
/// `Debug` and `Display` print a fixed marker, the type is not `Clone`, and the bytes are
/// overwritten with zeros when it is dropped. Reading the bytes takes
/// [`SecretBytes::expose_secret`], so every place that handles a value is easy to find.
#[derive(PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }

    /// Returns the secret bytes. Callers must not log or format them.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for SecretBytes {
    fn from(value: &str) -> Self {
        SecretBytes(value.as_bytes().to_vec())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([redacted])")
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_value() {
        let secret = SecretBytes::from("hunter2");
        assert_eq!(format!("{secret:?}"), "SecretBytes([redacted])");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(secret.expose_secret(), b"hunter2");
    }
}
