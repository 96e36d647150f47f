//! ACL policies: path patterns with capabilities, matched with Vault's priority rules.
//!
//! Follows <https://developer.hashicorp.com/vault/docs/concepts/policies>: a pattern may end in
//! `*` (prefix glob) and may contain `+` segments (one whole path segment). When several
//! patterns match a path, the most specific one decides; `deny` on a pattern overrides every
//! other capability on that pattern. Rules from all of a token's policies are merged per
//! pattern before matching, as Vault does.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Deserialize;

/// One capability a policy rule grants.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Create,
    Read,
    Update,
    Patch,
    Delete,
    List,
    Sudo,
    Deny,
}

/// A named set of path rules, like one Vault ACL policy document.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Policy {
    /// Path pattern (relative to the token's namespace) to capabilities.
    pub paths: BTreeMap<String, Vec<Capability>>,
}

impl Policy {
    /// Creates an empty policy.
    pub fn new() -> Policy {
        Policy::default()
    }

    /// Adds a rule; capabilities for a pattern given twice are merged.
    pub fn allow(mut self, pattern: &str, capabilities: &[Capability]) -> Policy {
        self.paths
            .entry(pattern.to_owned())
            .or_default()
            .extend_from_slice(capabilities);
        self
    }

    /// Builds the `default` policy that non-root tokens carry unless created without it. Like
    /// Vault's built-in default policy, it grants the self-service token paths and lease renewal.
    pub fn vault_default() -> Policy {
        use Capability::{Read, Update};
        Policy::new()
            .allow("auth/token/lookup-self", &[Read])
            .allow("auth/token/renew-self", &[Update])
            .allow("auth/token/revoke-self", &[Update])
            .allow("sys/capabilities-self", &[Update])
            .allow("sys/leases/renew", &[Update])
            .allow("sys/leases/lookup", &[Update])
            .allow("sys/renew", &[Update])
            .allow(
                "cubbyhole/*",
                &[Capability::Create, Read, Update, Capability::Delete],
            )
    }
}

/// The merged rules of a token's policies.
#[derive(Debug, Default)]
pub(crate) struct Acl {
    root: bool,
    rules: BTreeMap<String, Vec<Capability>>,
}

impl Acl {
    /// Merges `policies`; the name `root` grants everything.
    pub(crate) fn new<'a>(
        policies: impl IntoIterator<Item = (&'a str, Option<&'a Policy>)>,
    ) -> Acl {
        let mut acl = Acl::default();
        for (name, policy) in policies {
            if name == "root" {
                acl.root = true;
                continue;
            }
            let Some(policy) = policy else { continue };
            for (pattern, capabilities) in &policy.paths {
                acl.rules
                    .entry(pattern.clone())
                    .or_default()
                    .extend_from_slice(capabilities);
            }
        }
        acl
    }

    /// Returns whether `path` allows any of `wanted`.
    pub(crate) fn allows(&self, path: &str, wanted: &[Capability]) -> bool {
        if self.root {
            return true;
        }
        let best = self
            .rules
            .iter()
            .filter(|(pattern, _)| pattern_matches(pattern, path))
            .max_by(|a, b| compare_priority(a.0, b.0));
        let Some((_, capabilities)) = best else {
            return false;
        };
        if capabilities.contains(&Capability::Deny) {
            return false;
        }
        wanted.iter().any(|w| capabilities.contains(w))
    }
}

/// Returns whether `pattern` matches `path` (both without a leading slash).
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (body, glob) = match pattern.strip_suffix('*') {
        Some(body) => (body, true),
        None => (pattern, false),
    };
    if !body.contains('+') {
        return if glob {
            path.starts_with(body)
        } else {
            path == body
        };
    }

    // With `+` segments, compare segment by segment; a trailing glob takes the rest.
    let pattern_segments: Vec<&str> = body.split('/').collect();
    let path_segments: Vec<&str> = path.split('/').collect();
    if path_segments.len() < pattern_segments.len() {
        return false;
    }
    if !glob && path_segments.len() != pattern_segments.len() {
        return false;
    }
    let last = pattern_segments.len() - 1;
    pattern_segments
        .iter()
        .zip(&path_segments)
        .enumerate()
        .all(|(i, (p, s))| {
            if *p == "+" {
                return true;
            }
            if glob && i == last {
                // A glob after a partial segment, as in `secret/+/app*`.
                return s.starts_with(p);
            }
            p == s
        })
}

/// Orders two matching patterns by Vault's rules: the greater one is more specific.
fn compare_priority(a: &str, b: &str) -> Ordering {
    let first_wildcard = |p: &str| p.find(['+', '*']).unwrap_or(usize::MAX);
    let plus_count = |p: &str| p.split('/').filter(|s| *s == "+").count();

    // 1. A wildcard that occurs earlier means lower priority.
    first_wildcard(a)
        .cmp(&first_wildcard(b))
        // 2. Ending in `*` means lower priority.
        .then_with(|| b.ends_with('*').cmp(&a.ends_with('*')))
        // 3. More `+` segments mean lower priority.
        .then_with(|| plus_count(b).cmp(&plus_count(a)))
        // 4. Shorter means lower priority, then 5. lexicographically smaller.
        .then_with(|| a.len().cmp(&b.len()))
        .then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::Capability::*;
    use super::*;

    fn acl(policy: &Policy) -> Acl {
        Acl::new([("p", Some(policy))])
    }

    #[test]
    fn glob_matches_prefix_only() {
        let policy = Policy::new().allow("secret/data/app/*", &[Read]);
        assert!(acl(&policy).allows("secret/data/app/config", &[Read]));
        assert!(!acl(&policy).allows("secret/data/other", &[Read]));
        assert!(!acl(&policy).allows("secret/data/app/config", &[Update]));
    }

    #[test]
    fn plus_matches_one_segment() {
        let policy = Policy::new().allow("secret/data/+/config", &[Read]);
        assert!(acl(&policy).allows("secret/data/team/config", &[Read]));
        assert!(!acl(&policy).allows("secret/data/team/x/config", &[Read]));
    }

    #[test]
    fn exact_rule_beats_glob() {
        let policy = Policy::new()
            .allow("secret/data/*", &[Read])
            .allow("secret/data/locked", &[Deny]);
        assert!(acl(&policy).allows("secret/data/open", &[Read]));
        assert!(!acl(&policy).allows("secret/data/locked", &[Read]));
    }

    #[test]
    fn longer_glob_wins_over_shorter() {
        let policy = Policy::new()
            .allow("secret/*", &[Deny])
            .allow("secret/data/app/*", &[Read]);
        assert!(acl(&policy).allows("secret/data/app/x", &[Read]));
        assert!(!acl(&policy).allows("secret/metadata/app/x", &[Read]));
    }

    #[test]
    fn root_policy_allows_everything() {
        let acl = Acl::new([("root", None)]);
        assert!(acl.allows("anything/at/all", &[Sudo]));
    }

    #[test]
    fn rules_merge_across_policies() {
        let reader = Policy::new().allow("kv/app", &[Read]);
        let writer = Policy::new().allow("kv/app", &[Update]);
        let acl = Acl::new([("r", Some(&reader)), ("w", Some(&writer))]);
        assert!(acl.allows("kv/app", &[Read]));
        assert!(acl.allows("kv/app", &[Update]));
    }
}
