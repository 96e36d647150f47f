//! Expiry of the two moka caches each backend keeps: the fresh entries, served without asking
//! the backend, and the last good values, served while the backend is unavailable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

/// A cached value with the two deadlines of its entries.
pub(crate) trait Deadlines {
    /// Returns the end of the time the value is served without asking the backend.
    fn fresh_until(&self) -> Instant;
    /// Returns the end of the time the value is served while the backend is unavailable.
    fn stale_until(&self) -> Instant;
}

/// Expiry policy that removes an entry at one of its value's deadlines.
#[derive(Clone, Copy)]
pub(crate) enum ExpireAt {
    /// At `fresh_until`, for the cache of fresh entries.
    Fresh,
    /// At `stale_until`, for the cache of last good values.
    Stale,
}

impl ExpireAt {
    fn remaining<V: Deadlines>(self, value: &V, now: Instant) -> Duration {
        let deadline = match self {
            ExpireAt::Fresh => value.fresh_until(),
            ExpireAt::Stale => value.stale_until(),
        };
        deadline.saturating_duration_since(now)
    }
}

impl<K, V: Deadlines> Expiry<K, Arc<V>> for ExpireAt {
    fn expire_after_create(
        &self,
        _key: &K,
        value: &Arc<V>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(self.remaining(value.as_ref(), created_at))
    }

    fn expire_after_update(
        &self,
        _key: &K,
        value: &Arc<V>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.remaining(value.as_ref(), updated_at))
    }
}
