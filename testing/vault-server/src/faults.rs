//! Fault injection and request accounting for tests.
//!
//! Rules match on the request path after `/v1/` (the namespace header is not part of it), by
//! prefix. Latency applies to every matching request. An injected failure replaces the response
//! to the next N matching requests with the given status and the body Vault sends for it.

use std::collections::BTreeMap;
use std::time::Duration;

/// A status code and optional message returned instead of handling the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InjectedFailure {
    pub(crate) status: u16,
    pub(crate) message: Option<String>,
}

#[derive(Debug)]
struct FailureRule {
    prefix: String,
    remaining: u32,
    failure: InjectedFailure,
}

/// One request as the server saw it. The token is recorded by accessor only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path after `/v1/`, without the query string.
    pub path: String,
    /// Namespace from `X-Vault-Namespace`, without slashes; empty for root.
    pub namespace: String,
    pub status: u16,
    pub token_accessor: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    latency: Vec<(String, Duration)>,
    failures: Vec<FailureRule>,
}

impl Faults {
    pub(crate) fn add_latency(&mut self, prefix: &str, delay: Duration) {
        self.latency.retain(|(p, _)| p != prefix);
        self.latency.push((prefix.to_owned(), delay));
    }

    pub(crate) fn add_failures(&mut self, prefix: &str, count: u32, failure: InjectedFailure) {
        self.failures.push(FailureRule {
            prefix: prefix.to_owned(),
            remaining: count,
            failure,
        });
    }

    pub(crate) fn clear(&mut self) {
        self.latency.clear();
        self.failures.clear();
    }

    /// Returns the delay for `path`; the longest matching prefix wins.
    pub(crate) fn latency_for(&self, path: &str) -> Option<Duration> {
        self.latency
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, delay)| *delay)
    }

    /// Takes one injected failure for `path`, in the order the rules were added.
    pub(crate) fn take_failure(&mut self, path: &str) -> Option<InjectedFailure> {
        let rule = self
            .failures
            .iter_mut()
            .find(|r| r.remaining > 0 && path.starts_with(r.prefix.as_str()))?;
        rule.remaining -= 1;
        let failure = rule.failure.clone();
        self.failures.retain(|r| r.remaining > 0);
        Some(failure)
    }
}

/// Requests the server received: counted on arrival, recorded with their status once the
/// response is built.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    arrivals: BTreeMap<(String, String), u64>,
    completed: Vec<RecordedRequest>,
}

impl RequestLog {
    pub(crate) fn count_arrival(&mut self, method: &str, path: &str) {
        *self
            .arrivals
            .entry((method.to_owned(), path.to_owned()))
            .or_insert(0) += 1;
    }

    pub(crate) fn push(&mut self, request: RecordedRequest) {
        self.completed.push(request);
    }

    pub(crate) fn completed(&self) -> Vec<RecordedRequest> {
        self.completed.clone()
    }

    pub(crate) fn count(&self, method: &str, path: &str) -> u64 {
        let key = (method.to_owned(), path.to_owned());
        self.arrivals.get(&key).copied().unwrap_or(0)
    }

    pub(crate) fn counts(&self) -> BTreeMap<(String, String), u64> {
        self.arrivals.clone()
    }

    pub(crate) fn clear(&mut self) {
        self.arrivals.clear();
        self.completed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_run_out_after_count() {
        let mut faults = Faults::default();
        let failure = InjectedFailure {
            status: 500,
            message: None,
        };
        faults.add_failures("secret/", 2, failure.clone());
        assert_eq!(faults.take_failure("secret/data/a"), Some(failure.clone()));
        assert_eq!(faults.take_failure("kv/a"), None);
        assert_eq!(faults.take_failure("secret/data/b"), Some(failure));
        assert_eq!(faults.take_failure("secret/data/c"), None);
    }

    #[test]
    fn longest_latency_prefix_wins() {
        let mut faults = Faults::default();
        faults.add_latency("secret/", Duration::from_millis(10));
        faults.add_latency("secret/data/slow", Duration::from_millis(500));
        assert_eq!(
            faults.latency_for("secret/data/slow/x"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            faults.latency_for("secret/data/fast"),
            Some(Duration::from_millis(10))
        );
        assert_eq!(faults.latency_for("kv/x"), None);
    }
}
