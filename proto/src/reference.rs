//! Secret references: the values that EnvProxy resolves.
//!
//! | form | meaning |
//! | --- | --- |
//! | `vault:<mount>/data/<path>#<key>` | KV v2, latest version |
//! | `vault:<mount>/data/<path>#<key>#<n>` | KV v2, version n |
//! | `vault:<path>#<key>` | any other Vault read (KV v1, dynamic secrets) |
//! | `k8s:[<namespace>/]<secret>#<key>` | key of a Kubernetes Secret (`data` or `stringData`) |
//! | `envproxy:<KEY>` | key KEY of the agent's default backend |
//!
//! A value that starts with none of these schemes is not a reference and is never sent
//! anywhere.
//! [`has_known_scheme`] is the cheap prefix test used on every `getenv`; [`Reference::parse`]
//! is the full parser.

use std::fmt;

pub const VAULT_SCHEME: &str = "vault:";
pub const LOCAL_SCHEME: &str = "envproxy:";
pub const KUBERNETES_SCHEME: &str = "k8s:";

/// Longest Kubernetes namespace name: an RFC 1123 label.
const MAX_NAMESPACE_LEN: usize = 63;
/// Longest Secret name and longest Secret key: an RFC 1123 subdomain.
const MAX_SECRET_NAME_LEN: usize = 253;

/// First path segments of Vault's own APIs. Reading `auth/token/lookup-self` returns the
/// caller's token and `sys/` describes the server, so neither is a secret to hand out.
const RESERVED_FIRST_SEGMENTS: [&str; 2] = ["auth", "sys"];

/// The marker that makes a Vault path a KV version 2 data path.
const KV2_DATA_SEGMENT: &str = "/data/";

/// Returns whether `value` starts with a scheme that EnvProxy resolves.
#[inline]
pub fn has_known_scheme(value: &[u8]) -> bool {
    value.starts_with(VAULT_SCHEME.as_bytes())
        || value.starts_with(LOCAL_SCHEME.as_bytes())
        || value.starts_with(KUBERNETES_SCHEME.as_bytes())
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
    /// A key of a Kubernetes Secret. `namespace` `None` means the caller's namespace: the
    /// pod's own in node mode, the kubeconfig context's in local mode.
    Kubernetes {
        namespace: Option<String>,
        secret: String,
        key: String,
    },
}

/// A malformed reference. Each variant names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("unknown scheme: a reference starts with `vault:`, `k8s:` or `envproxy:`")]
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
    #[error("the Secret `{0}` has no `#<key>` part (expected `k8s:[<namespace>/]<secret>#<key>`)")]
    MissingSecretKey(String),
    #[error("the Secret name is empty (expected `k8s:[<namespace>/]<secret>#<key>`)")]
    EmptySecretName,
    #[error(
        "the namespace `{0}` is invalid: a namespace is at most 63 lowercase letters, digits \
         and `-`, starting and ending with a letter or digit"
    )]
    InvalidNamespace(String),
    #[error(
        "the Secret name `{0}` is invalid: a Secret name is at most 253 lowercase letters, \
         digits, `-` and `.`, starting and ending with a letter or digit"
    )]
    InvalidSecretName(String),
    #[error(
        "the Secret key `{0}` is invalid: a key is at most 253 letters, digits, `-`, `_` and \
         `.`, and not `.` or `..`"
    )]
    InvalidSecretKey(String),
    #[error("too many `#` separators (expected `k8s:[<namespace>/]<secret>#<key>`)")]
    TooManySecretSeparators,
    #[error(
        "the Secret `{0}` has an empty key after `#` (expected \
         `k8s:[<namespace>/]<secret>#<key>`)"
    )]
    EmptySecretKey(String),
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
        if let Some(rest) = value.strip_prefix(KUBERNETES_SCHEME) {
            return parse_kubernetes(rest);
        }
        Err(ReferenceError::UnknownScheme)
    }

    /// Returns the full Vault API path to read, without the leading `/v1/`. For KV v2 it
    /// includes the `data/` segment. `None` for other schemes.
    pub fn vault_path(&self) -> Option<String> {
        match self {
            Reference::VaultKv2 { mount, path, .. } => Some(format!("{mount}/data/{path}")),
            Reference::Vault { path, .. } => Some(path.clone()),
            Reference::Local { .. } | Reference::Kubernetes { .. } => None,
        }
    }

    /// Returns the key to pick out of the secret.
    pub fn key(&self) -> &str {
        match self {
            Reference::VaultKv2 { key, .. }
            | Reference::Vault { key, .. }
            | Reference::Local { key }
            | Reference::Kubernetes { key, .. } => key,
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

/// Parses `[<namespace>/]<secret>#<key>`. Names follow the API server's validation, so a
/// reference it would reject fails here with the part named, and no name can add a path
/// segment or a query to the request URL.
fn parse_kubernetes(rest: &str) -> Result<Reference, ReferenceError> {
    let mut parts = rest.split('#');
    let location = parts.next().unwrap_or_default();
    let key = parts.next();
    if parts.next().is_some() {
        return Err(ReferenceError::TooManySecretSeparators);
    }
    let (namespace, secret) = match location.split_once('/') {
        Some((namespace, secret)) => (Some(namespace), secret),
        None => (None, location),
    };
    if let Some(namespace) = namespace {
        if !is_dns_label(namespace) {
            return Err(ReferenceError::InvalidNamespace(namespace.to_string()));
        }
    }
    if secret.is_empty() {
        return Err(ReferenceError::EmptySecretName);
    }
    if !is_dns_subdomain(secret) {
        return Err(ReferenceError::InvalidSecretName(secret.to_string()));
    }
    let Some(key) = key else {
        return Err(ReferenceError::MissingSecretKey(location.to_string()));
    };
    if key.is_empty() {
        return Err(ReferenceError::EmptySecretKey(location.to_string()));
    }
    if !is_secret_key(key) {
        return Err(ReferenceError::InvalidSecretKey(key.to_string()));
    }
    Ok(Reference::Kubernetes {
        namespace: namespace.map(str::to_string),
        secret: secret.to_string(),
        key: key.to_string(),
    })
}

/// Returns whether `name` is an RFC 1123 label, as namespace names must be.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= MAX_NAMESPACE_LEN && !name.contains('.') && is_dns_subdomain(name)
}

/// Returns whether `name` is an RFC 1123 subdomain, as Secret names must be.
pub fn is_dns_subdomain(name: &str) -> bool {
    let valid_characters = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_LEN
        && valid_characters
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric)
}

/// Returns whether `key` is a valid key of a Secret's `data`, as the API server checks it.
fn is_secret_key(key: &str) -> bool {
    key.len() <= MAX_SECRET_NAME_LEN
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
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
            Reference::Kubernetes {
                namespace: Some(namespace),
                secret,
                key,
            } => write!(f, "{KUBERNETES_SCHEME}{namespace}/{secret}#{key}"),
            Reference::Kubernetes {
                namespace: None,
                secret,
                key,
            } => write!(f, "{KUBERNETES_SCHEME}{secret}#{key}"),
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
    fn kubernetes_references() {
        assert_eq!(
            Reference::parse("k8s:shop/db-creds#password").unwrap(),
            Reference::Kubernetes {
                namespace: Some("shop".into()),
                secret: "db-creds".into(),
                key: "password".into(),
            }
        );
        let own_namespace = Reference::parse("k8s:tls.example.com#tls.crt").unwrap();
        assert_eq!(
            own_namespace,
            Reference::Kubernetes {
                namespace: None,
                secret: "tls.example.com".into(),
                key: "tls.crt".into(),
            }
        );
        assert_eq!(own_namespace.key(), "tls.crt");
        assert_eq!(own_namespace.vault_path(), None);
        for text in ["k8s:shop/db-creds#password", "k8s:db#API_KEY-2_x.y"] {
            assert_eq!(Reference::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn malformed_kubernetes_references_name_the_part() {
        use ReferenceError::*;
        let long_namespace = "n".repeat(64);
        let long_secret = "s".repeat(254);
        let cases: Vec<(String, ReferenceError)> = vec![
            ("k8s:".into(), EmptySecretName),
            ("k8s:#key".into(), EmptySecretName),
            ("k8s:shop/#key".into(), EmptySecretName),
            ("k8s:db".into(), MissingSecretKey("db".into())),
            ("k8s:shop/db".into(), MissingSecretKey("shop/db".into())),
            ("k8s:db#".into(), EmptySecretKey("db".into())),
            ("k8s:shop/db#".into(), EmptySecretKey("shop/db".into())),
            ("k8s:db#a#b".into(), TooManySecretSeparators),
            ("k8s:/db#k".into(), InvalidNamespace("".into())),
            ("k8s:Shop/db#k".into(), InvalidNamespace("Shop".into())),
            ("k8s:a.b/db#k".into(), InvalidNamespace("a.b".into())),
            (
                format!("k8s:{long_namespace}/db#k"),
                InvalidNamespace(long_namespace.clone()),
            ),
            ("k8s:ns/a/b#k".into(), InvalidSecretName("a/b".into())),
            ("k8s:DB#k".into(), InvalidSecretName("DB".into())),
            ("k8s:-db#k".into(), InvalidSecretName("-db".into())),
            ("k8s:db?x=1#k".into(), InvalidSecretName("db?x=1".into())),
            ("k8s:..#k".into(), InvalidSecretName("..".into())),
            (
                format!("k8s:{long_secret}#k"),
                InvalidSecretName(long_secret.clone()),
            ),
            ("k8s:db#a/b".into(), InvalidSecretKey("a/b".into())),
            ("k8s:db#..".into(), InvalidSecretKey("..".into())),
            ("k8s:db#my key".into(), InvalidSecretKey("my key".into())),
        ];
        for (text, expected) in &cases {
            assert_eq!(Reference::parse(text).as_ref(), Err(expected), "{text}");
        }
    }

    #[test]
    fn kubernetes_errors_exact_text() {
        let cases = [
            (
                "k8s:Shop/db#k",
                "the namespace `Shop` is invalid: a namespace is at most 63 lowercase letters, \
                 digits and `-`, starting and ending with a letter or digit",
            ),
            (
                "k8s:DB#k",
                "the Secret name `DB` is invalid: a Secret name is at most 253 lowercase \
                 letters, digits, `-` and `.`, starting and ending with a letter or digit",
            ),
            (
                "k8s:db#a/b",
                "the Secret key `a/b` is invalid: a key is at most 253 letters, digits, `-`, \
                 `_` and `.`, and not `.` or `..`",
            ),
            (
                "k8s:shop/db#",
                "the Secret `shop/db` has an empty key after `#` (expected \
                 `k8s:[<namespace>/]<secret>#<key>`)",
            ),
        ];
        for (text, message) in cases {
            let error = Reference::parse(text).unwrap_err().to_string();
            assert_eq!(error, message, "{text}");
            assert!(!error.contains("  "), "{text}: {error}");
        }
    }

    #[test]
    fn known_scheme_prefix_check() {
        assert!(has_known_scheme(b"vault:x"));
        assert!(has_known_scheme(b"envproxy:X"));
        assert!(has_known_scheme(b"k8s:db#k"));
        assert!(!has_known_scheme(b"k8s"));
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

        #[test]
        fn kubernetes_display_round_trips(
            namespace in proptest::option::of("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"),
            secret in "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?",
            key in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,12}",
        ) {
            let reference = Reference::Kubernetes { namespace, secret, key };
            prop_assert_eq!(Reference::parse(&reference.to_string()), Ok(reference));
        }
    }
}
