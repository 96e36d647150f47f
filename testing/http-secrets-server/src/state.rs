//! The server's data: secrets, tokens, injected faults and the log of requests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

/// Keys a bearer token may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAccess {
    /// Every key.
    All,
    /// Only these keys. A request for any other key gets 403.
    Keys(BTreeSet<String>),
    /// No key: the token is known, so requests get 403 rather than 401.
    Forbidden,
}

impl TokenAccess {
    fn allows(&self, key: &str) -> bool {
        match self {
            TokenAccess::All => true,
            TokenAccess::Keys(keys) => keys.contains(key),
            TokenAccess::Forbidden => false,
        }
    }
}

/// A failure injected into the responses for one key or for every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Respond with this status and an error body, before the token is checked.
    Status(u16),
    /// Wait this long before responding; a client with a shorter timeout times out.
    Delay(Duration),
    /// Respond to a readable key with 200 and a body that is not JSON.
    NotJson,
    /// Respond to a readable key with 200 and a JSON object without `value`.
    MissingValue,
    /// Respond to a readable key with 200 and a number as `value`.
    NonStringValue,
}

/// One request as the server received it. The token is never recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as sent, still percent-encoded.
    pub path: String,
    /// The decoded key for a request under `/v1/env/`.
    pub key: Option<String>,
    /// Whether an `Authorization: Bearer` header was present.
    pub had_bearer_token: bool,
    /// The status of the response.
    pub status: u16,
}

/// A stored secret: its JSON value (a string unless a test stores another type) and TTL.
#[derive(Debug, Clone)]
pub(crate) struct StoredSecret {
    pub value: Value,
    pub ttl_secs: Option<u64>,
}

#[derive(Default)]
pub(crate) struct State {
    pub secrets: BTreeMap<String, StoredSecret>,
    pub tokens: BTreeMap<String, TokenAccess>,
    /// Faults with the key they apply to, or `None` for every key, in the order injected.
    pub faults: Vec<(Option<String>, Fault)>,
    pub latency: Duration,
    pub requests: Vec<RecordedRequest>,
}

/// The server's decision for one request under `/v1/env/<key>`.
pub(crate) enum Decision {
    Status(u16, &'static str),
    Unauthorized,
    Forbidden,
    NotFound,
    Found(StoredSecret),
    Malformed(Fault),
}

impl State {
    /// Returns the delay to apply to a request for `key`: the latency plus matching delays.
    pub(crate) fn delay_for(&self, key: &str) -> Duration {
        let delays = self
            .matching_faults(key)
            .filter_map(|fault| match fault {
                Fault::Delay(delay) => Some(*delay),
                _ => None,
            })
            .sum::<Duration>();
        self.latency + delays
    }

    /// Decides the response to a request for `key` with bearer `token`.
    pub(crate) fn decide(&self, key: &str, token: Option<&str>) -> Decision {
        let mut body_fault = None;
        for fault in self.matching_faults(key) {
            match fault {
                Fault::Status(status) => {
                    return Decision::Status(*status, "injected failure");
                }
                Fault::Delay(_) => {}
                other => {
                    body_fault.get_or_insert_with(|| other.clone());
                }
            }
        }
        let Some(access) = token.and_then(|token| self.tokens.get(token)) else {
            return Decision::Unauthorized;
        };
        if !access.allows(key) {
            return Decision::Forbidden;
        }
        let Some(secret) = self.secrets.get(key) else {
            return Decision::NotFound;
        };
        match body_fault {
            Some(fault) => Decision::Malformed(fault),
            None => Decision::Found(secret.clone()),
        }
    }

    fn matching_faults<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Fault> + 'a {
        self.faults
            .iter()
            .filter(move |(scope, _)| scope.as_deref().is_none_or(|only| only == key))
            .map(|(_, fault)| fault)
    }
}
