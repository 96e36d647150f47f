//! The server's whole state behind one lock: namespaces, tokens, leases, seal state, faults
//! and the request log.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::clock::Clock;
use crate::faults::{Faults, RequestLog};
use crate::ids;
use crate::leases::LeaseTable;
use crate::namespace::{normalize_namespace, NamespaceState};
use crate::options::{NodeState, ServerOptions};
use crate::tokens::{IssuedToken, TokenEntry, TokenSpec, TokenStore, SYSTEM_MAX_TTL};

/// A control call named a namespace that does not exist.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("namespace {0:?} does not exist (create it with create_namespace first)")]
pub struct UnknownNamespace(pub String);

pub(crate) struct ServerState {
    pub(crate) clock: Clock,
    pub(crate) options: ServerOptions,
    /// Keyed by normalized path: `""` for root, `team-a/` and `team-a/sub/` below it.
    pub(crate) namespaces: BTreeMap<String, NamespaceState>,
    pub(crate) tokens: TokenStore,
    pub(crate) leases: LeaseTable,
    pub(crate) sealed: bool,
    pub(crate) node_state: NodeState,
    pub(crate) faults: Faults,
    pub(crate) requests: RequestLog,
    pub(crate) cluster_id: String,
    pub(crate) cluster_name: String,
}

impl ServerState {
    pub(crate) fn new(options: ServerOptions, clock: Clock) -> ServerState {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(String::new(), NamespaceState::new(true, &options));
        let mut state = ServerState {
            clock,
            namespaces,
            tokens: TokenStore::default(),
            leases: LeaseTable::default(),
            sealed: false,
            node_state: NodeState::Active,
            faults: Faults::default(),
            requests: RequestLog::default(),
            cluster_id: ids::uuid(),
            cluster_name: format!("vault-cluster-{}", &ids::uuid()[..8]),
            options,
        };
        for namespace in state.options.namespaces.clone() {
            state.create_namespace(&namespace);
        }
        state
    }

    /// Creates a namespace and any missing parents; existing ones are kept.
    pub(crate) fn create_namespace(&mut self, path: &str) {
        let normalized = normalize_namespace(path);
        let mut prefix = String::new();
        for segment in normalized.split_terminator('/') {
            prefix.push_str(segment);
            prefix.push('/');
            if !self.namespaces.contains_key(&prefix) {
                let state = NamespaceState::new(false, &self.options);
                self.namespaces.insert(prefix.clone(), state);
            }
        }
    }

    /// Expires tokens and leases whose TTL has run out; a token's leases go with it.
    pub(crate) fn expire(&mut self) {
        let now = self.clock.now();
        for token in self.tokens.take_expired(now) {
            self.leases.revoke_for_token(&token.accessor, now);
        }
        self.leases.expire(now);
    }

    /// Revokes a token and the leases it created; returns whether it existed.
    pub(crate) fn revoke_token(&mut self, id: &str) -> bool {
        let now = self.clock.now();
        match self.tokens.remove(id) {
            Some(token) => {
                self.leases.revoke_for_token(&token.accessor, now);
                true
            }
            None => false,
        }
    }

    /// Creates a token from a control-API spec.
    pub(crate) fn issue_token(
        &mut self,
        spec: &TokenSpec,
    ) -> Result<IssuedToken, UnknownNamespace> {
        let namespace = normalize_namespace(&spec.namespace);
        let namespace_id = match self.namespaces.get(&namespace) {
            Some(ns) => ns.id.clone(),
            None => return Err(UnknownNamespace(spec.namespace.clone())),
        };
        let mut policies = spec.policies.clone();
        if !spec.no_default_policy && !policies.iter().any(|p| p == "root") {
            policies.push("default".to_owned());
        }
        let ttl = spec.ttl.map(Duration::from_secs).unwrap_or(SYSTEM_MAX_TTL);
        let explicit_max = Duration::from_secs(spec.explicit_max_ttl);
        let entry = self.new_token_entry(NewToken {
            id: spec.id.clone(),
            namespace,
            namespace_id,
            policies,
            display_name: spec.display_name.clone(),
            path: "auth/token/create".to_owned(),
            meta: spec.meta.clone(),
            ttl,
            max_ttl: explicit_max,
            explicit_max_ttl: explicit_max,
            renewable: spec.renewable,
            orphan: false,
            role: None,
            with_entity: false,
        });
        let issued = IssuedToken {
            token: entry.id.clone(),
            accessor: entry.accessor.clone(),
        };
        self.tokens.insert(entry);
        Ok(issued)
    }

    /// Builds a token entry at the current time. A zero `ttl` never expires; a zero `max_ttl`
    /// means the system maximum of 768 hours.
    pub(crate) fn new_token_entry(&self, new: NewToken) -> TokenEntry {
        let now = self.clock.now();
        let mut policies = new.policies;
        policies.sort();
        policies.dedup();
        let max_ttl = if new.max_ttl.is_zero() {
            SYSTEM_MAX_TTL
        } else {
            new.max_ttl
        };
        let ttl = if new.ttl.is_zero() {
            Duration::ZERO
        } else {
            new.ttl.min(max_ttl)
        };
        let expires = !ttl.is_zero();
        TokenEntry {
            id: new
                .id
                .unwrap_or_else(|| ids::service_token(new.namespace_id.as_deref())),
            accessor: ids::accessor(new.namespace_id.as_deref()),
            namespace: new.namespace,
            policies,
            display_name: new.display_name,
            path: new.path,
            meta: new.meta,
            issue_time: now,
            creation_ttl: ttl,
            expire_time: expires.then(|| now + ttl),
            explicit_max_ttl: new.explicit_max_ttl,
            max_expire_time: expires.then(|| now + max_ttl),
            renewable: new.renewable && expires,
            orphan: new.orphan,
            entity_id: if new.with_entity {
                ids::uuid()
            } else {
                String::new()
            },
            role: new.role,
            last_renewal_time: None,
        }
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
    }
}

/// Inputs of [`ServerState::new_token_entry`].
pub(crate) struct NewToken {
    pub(crate) id: Option<String>,
    pub(crate) namespace: String,
    pub(crate) namespace_id: Option<String>,
    pub(crate) policies: Vec<String>,
    pub(crate) display_name: String,
    pub(crate) path: String,
    pub(crate) meta: Option<BTreeMap<String, String>>,
    pub(crate) ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) explicit_max_ttl: Duration,
    pub(crate) renewable: bool,
    pub(crate) orphan: bool,
    pub(crate) role: Option<String>,
    /// Auth methods tie their tokens to an identity entity; the token store does not.
    pub(crate) with_entity: bool,
}
