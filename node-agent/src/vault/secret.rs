//! Text that must never be printed: Vault tokens and service account JWTs.

use std::fmt;

use zeroize::Zeroizing;

/// A token or JWT. `Debug` prints a fixed marker, the type is not `Clone` (share it in an
/// `Arc`), and the text is overwritten with zeros when it is dropped.
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    pub fn new(text: String) -> SecretText {
        SecretText(Zeroizing::new(text))
    }

    /// Returns the secret text. Callers must not log or format it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl PartialEq for SecretText {
    fn eq(&self, other: &SecretText) -> bool {
        *self.0 == *other.0
    }
}

impl Eq for SecretText {}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_text() {
        let secret = SecretText::new("hvs.secret".to_string());
        assert_eq!(format!("{secret:?}"), "SecretText([redacted])");
        assert_eq!(secret.expose_secret(), "hvs.secret");
    }
}
