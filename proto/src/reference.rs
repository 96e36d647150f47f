//! Secret references: the values that EnvProxy resolves.
//!
//! | form | meaning |
//! | --- | --- |
//! | `vault:<mount>/data/<path>#<key>` | KV v2, latest version |
//! | `vault:<mount>/data/<path>#<key>#<n>` | KV v2, version n |
//! | `vault:<path>#<key>` | any other Vault read (KV v1, dynamic secrets) |
//! | `envproxy:<KEY>` | key KEY of the agent's default backend |
//!
//! A value that starts with neither scheme is not a reference and is never sent anywhere.
//! [`has_known_scheme`] is the cheap prefix test used on every `getenv`; [`Reference::parse`]
//! is the full parser.

use std::fmt;

pub const VAULT_SCHEME: &str = "vault:";
pub const LOCAL_SCHEME: &str = "envproxy:";

/// First path segments of Vault's own APIs. Reading `auth/token/lookup-self` returns the
/// caller's token and `sys/` describes the server, so neither is a secret to hand out.
const RESERVED_FIRST_SEGMENTS: [&str; 2] = ["auth", "sys"];

/// The marker that makes a Vault path a KV version 2 data path.
const KV2_DATA_SEGMENT: &str = "/data/";

/// Returns whether `value` starts with a scheme that EnvProxy resolves.
#[inline]
pub fn has_known_scheme(value: &[u8]) -> bool {
    value.starts_with(VAULT_SCHEME.as_bytes()) || value.starts_with(LOCAL_SCHEME.as_bytes())
}

/// A parsed secret reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A key of a KV version 2 secret, `version` `None` meaning the latest.
    VaultKv2 {
        mount: String,
        path: String,
        key: String,
        version: Option<u64>,
    },
    /// A key of the data returned by a read of any other Vault path.
    Vault { path: String, key: String },
    /// A key of the agent's default backend.
    Local { key: String },
}

/// A malformed reference. Each variant names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("unknown scheme: a reference starts with `vault:` or `envproxy:`")]
    UnknownScheme,
    #[error("the key after `envproxy:` is empty")]
    EmptyLocalKey,
    #[error("the key after `envproxy:` contains a control character")]
    ControlCharacterInKey,
    #[error("the Vault path is empty (expected `vault:<path>#<key>`)")]
    EmptyPath,
    #[error("the Vault path `{0}` has no `#<key>` part (expected `vault:<path>#<key>`)")]
    MissingKey(String),
    #[error("the key after `#` is empty (expected `vault:<path>#<key>`)")]
    EmptyKey,
    #[error("the Vault path `{path}` is invalid: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("the version `{0}` after the second `#` is not a positive integer")]
    InvalidVersion(String),
    #[error(
        "a version (`#<n>`) is only valid for KV v2 paths of the form `<mount>/data/<path>`, \
         but `{0}` has no `/data/` segment"
    )]
    VersionWithoutKv2(String),
    #[error(
        "`{0}` is a Vault system or auth API path, not a secret; references may not read \
         `auth/` or `sys/` paths (they would expose the agent's own token and settings)"
    )]
    ReservedPath(String),
    #[error("too many `#` separators (expected `vault:<path>#<key>` or `vault:<path>#<key>#<n>`)")]
    TooManySeparators,
}

impl Reference {
    /// Parses a reference from an environment value.
    pub fn parse(value: &str) -> Result<Reference, ReferenceError> {
        if let Some(key) = value.strip_prefix(LOCAL_SCHEME) {
            return parse_local(key);
        }
        if let Some(rest) = value.strip_prefix(VAULT_SCHEME) {
            return parse_vault(rest);
        }
        Err(ReferenceError::UnknownScheme)
    }

    /// Returns the full Vault API path to read, without the leading `/v1/`. For KV v2 it
    /// includes the `data/` segment. `None` for local references.
    pub fn vault_path(&self) -> Option<String> {
        match self {
            Reference::VaultKv2 { mount, path, .. } => Some(format!("{mount}/data/{path}")),
            Reference::Vault { path, .. } => Some(path.clone()),
            Reference::Local { .. } => None,
        }
    }

    /// Returns the key to pick out of the secret.
    pub fn key(&self) -> &str {
        match self {
            Reference::VaultKv2 { key, .. }
            | Reference::Vault { key, .. }
            | Reference::Local { key } => key,
        }
    }
}

fn parse_local(key: &str) -> Result<Reference, ReferenceError> {
    if key.is_empty() {
        return Err(ReferenceError::EmptyLocalKey);
    }
    if key.chars().any(char::is_control) {
        return Err(ReferenceError::ControlCharacterInKey);
    }
    Ok(Reference::Local {
        key: key.to_string(),
    })
}

fn parse_vault(rest: &str) -> Result<Reference, ReferenceError> {
    let mut parts = rest.split('#');
    let path = parts.next().unwrap_or_default();
    let key = parts.next();
    let version = parts.next();
    if parts.next().is_some() {
        return Err(ReferenceError::TooManySeparators);
    }

    if path.is_empty() {
        return Err(ReferenceError::EmptyPath);
    }
    validate_path(path)?;
    let first_segment = path.split('/').next().unwrap_or_default();
    if RESERVED_FIRST_SEGMENTS.contains(&first_segment) {
        return Err(ReferenceError::ReservedPath(path.to_string()));
    }
    let Some(key) = key else {
        return Err(ReferenceError::MissingKey(path.to_string()));
    };
    if key.is_empty() {
        return Err(ReferenceError::EmptyKey);
    }

    let version = match version {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(ReferenceError::InvalidVersion(text.to_string())),
        },
    };

    let Some(split) = path.find(KV2_DATA_SEGMENT) else {
        if version.is_some() {
            return Err(ReferenceError::VersionWithoutKv2(path.to_string()));
        }
        return Ok(Reference::Vault {
            path: path.to_string(),
            key: key.to_string(),
        });
    };
    // `validate_path` rejected a leading or trailing `/`, so both parts are non-empty.
    let mount = &path[..split];
    let secret_path = &path[split + KV2_DATA_SEGMENT.len()..];
    Ok(Reference::VaultKv2 {
        mount: mount.to_string(),
        path: secret_path.to_string(),
        key: key.to_string(),
        version,
    })
}

/// Rejects paths that would read somewhere other than they appear to once placed in a URL.
fn validate_path(path: &str) -> Result<(), ReferenceError> {
    let invalid = |reason| ReferenceError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.starts_with('/') {
        return Err(invalid(
            "it starts with `/`; write it without the leading slash",
        ));
    }
    if path.ends_with('/') {
        return Err(invalid("it ends with `/`"));
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("it contains whitespace or a control character"));
    }
    if path.contains(['?', '%', '\\']) {
        return Err(invalid("it contains `?`, `%` or `\\`"));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(invalid("it contains an empty segment (`//`)")),
            "." | ".." => return Err(invalid("it contains a `.` or `..` segment")),
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::VaultKv2 {
                mount,
                path,
                key,
                version,
            } => {
                write!(f, "{VAULT_SCHEME}{mount}/data/{path}#{key}")?;
                if let Some(version) = version {
                    write!(f, "#{version}")?;
                }
                Ok(())
            }
            Reference::Vault { path, key } => write!(f, "{VAULT_SCHEME}{path}#{key}"),
            Reference::Local { key } => write!(f, "{LOCAL_SCHEME}{key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kv2_latest() {
        let reference = Reference::parse("vault:secret/data/app/config#db_url").unwrap();
        assert_eq!(
            reference,
            Reference::VaultKv2 {
                mount: "secret".into(),
                path: "app/config".into(),
                key: "db_url".into(),
                version: None,
            }
        );
        assert_eq!(reference.vault_path().unwrap(), "secret/data/app/config");
    }

    #[test]
    fn kv2_pinned_version() {
        let reference = Reference::parse("vault:secret/data/app#password#3").unwrap();
        let Reference::VaultKv2 { version, .. } = reference else {
            panic!("expected KV v2, got {reference:?}");
        };
        assert_eq!(version, Some(3));
    }

    #[test]
    fn kv2_mount_with_slashes() {
        let reference = Reference::parse("vault:team/kv/data/app#k").unwrap();
        let Reference::VaultKv2 { mount, path, .. } = reference else {
            panic!("expected KV v2, got {reference:?}");
        };
        assert_eq!(mount, "team/kv");
        assert_eq!(path, "app");
    }

    #[test]
    fn other_vault_paths() {
        for (text, path, key) in [
            (
                "vault:database/creds/readonly#username",
                "database/creds/readonly",
                "username",
            ),
            ("vault:kv/app#token", "kv/app", "token"),
            (
                "vault:aws/creds/deploy#secret_key",
                "aws/creds/deploy",
                "secret_key",
            ),
        ] {
            assert_eq!(
                Reference::parse(text).unwrap(),
                Reference::Vault {
                    path: path.into(),
                    key: key.into()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn local_reference() {
        assert_eq!(
            Reference::parse("envproxy:API_KEY").unwrap(),
            Reference::Local {
                key: "API_KEY".into()
            }
        );
    }

    #[test]
    fn malformed_references_name_the_part() {
        use ReferenceError::*;
        let cases: &[(&str, ReferenceError)] = &[
            ("postgres://x", UnknownScheme),
            ("envproxy:", EmptyLocalKey),
            ("envproxy:A\nB", ControlCharacterInKey),
            ("vault:", EmptyPath),
            ("vault:#key", EmptyPath),
            (
                "vault:secret/data/app",
                MissingKey("secret/data/app".into()),
            ),
            ("vault:secret/data/app#", EmptyKey),
            ("vault:secret/data/app#k#0", InvalidVersion("0".into())),
            ("vault:secret/data/app#k#v2", InvalidVersion("v2".into())),
            ("vault:secret/data/app#k#+2", InvalidVersion("+2".into())),
            ("vault:kv/app#k#2", VersionWithoutKv2("kv/app".into())),
            ("vault:a/data/b#k#1#2", TooManySeparators),
            (
                "vault:auth/token/lookup-self#id",
                ReservedPath("auth/token/lookup-self".into()),
            ),
            (
                "vault:sys/health#version",
                ReservedPath("sys/health".into()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Reference::parse(text).as_ref(), Err(expected), "{text}");
        }
    }

    #[test]
    fn invalid_paths_are_rejected() {
        for text in [
            "vault:/secret/data/app#k",
            "vault:secret/data/app/#k",
            "vault:secret//app#k",
            "vault:secret/../sys/seal#k",
            "vault:secret/data/app?version=1#k",
            "vault:secret/data/my app#k",
            "vault:secret/data/%2e%2e#k",
        ] {
            let error = Reference::parse(text).unwrap_err();
            assert!(
                matches!(error, ReferenceError::InvalidPath { .. }),
                "{text}: {error:?}"
            );
        }
    }

    #[test]
    fn known_scheme_prefix_check() {
        assert!(has_known_scheme(b"vault:x"));
        assert!(has_known_scheme(b"envproxy:X"));
        assert!(!has_known_scheme(b"vaul"));
        assert!(!has_known_scheme(b"/usr/bin"));
        assert!(!has_known_scheme(b""));
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in ".{0,80}") {
            let _ = Reference::parse(&text);
        }

        #[test]
        fn display_round_trips(
            mount in "[a-z]{1,8}",
            path in "[a-z0-9_-]{1,8}(/[a-z0-9_-]{1,8}){0,2}",
            key in "[A-Za-z0-9_.-]{1,12}",
            version in proptest::option::of(1u64..1000),
        ) {
            let reference = Reference::VaultKv2 { mount, path, key, version };
            prop_assert_eq!(Reference::parse(&reference.to_string()), Ok(reference));
        }
    }
}
