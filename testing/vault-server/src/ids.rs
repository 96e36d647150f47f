//! Random identifiers in the shapes Vault uses: tokens, accessors, request ids, lease ids.

use rand::distr::Alphanumeric;
use rand::RngExt;

/// Generates a random alphanumeric string of `len` characters.
pub(crate) fn alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Generates a random UUID-shaped string (8-4-4-4-12 hex digits), like Vault's `request_id`.
pub(crate) fn uuid() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Generates a service token id: `hvs.` and random characters, plus `.<namespace id>` outside
/// the root namespace, as Vault Enterprise issues them.
pub(crate) fn service_token(namespace_id: Option<&str>) -> String {
    with_namespace_suffix(format!("hvs.{}", alphanumeric(24)), namespace_id)
}

/// Generates a token accessor, suffixed like tokens outside the root namespace.
pub(crate) fn accessor(namespace_id: Option<&str>) -> String {
    with_namespace_suffix(alphanumeric(24), namespace_id)
}

pub(crate) fn with_namespace_suffix(id: String, namespace_id: Option<&str>) -> String {
    match namespace_id {
        Some(ns) => format!("{id}.{ns}"),
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_has_five_groups() {
        let id = uuid();
        let lengths: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(lengths, [8, 4, 4, 4, 12]);
    }

    #[test]
    fn namespaced_token_has_suffix() {
        let token = service_token(Some("Ab12C"));
        assert!(token.starts_with("hvs."));
        assert!(token.ends_with(".Ab12C"));
    }
}
