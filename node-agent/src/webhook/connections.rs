//! The table of open webhook connections, which keeps their number under a limit without
//! starving admissions.
//!
//! Refusing new connections at the limit would let anyone who can reach the port block every
//! admission by opening idle connections. At the limit a new connection instead closes an idle
//! one (no request in flight): first the oldest that has not sent a request yet, as flooding
//! clients do, then the oldest idle keep-alive connection. HTTP clients such as the API server's
//! retry a request on a fresh connection when the server closed the idle one. A new connection is
//! refused only when every open connection has a request in flight.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Minimum time between two warnings about the connection limit; the warnings in between are
/// counted and the next one reports the counts.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The open connections, keyed by accept order.
pub(super) struct ConnectionTable {
    limit: usize,
    state: Mutex<TableState>,
}

struct TableState {
    next_id: u64,
    open: BTreeMap<u64, Arc<ConnectionState>>,
}

/// What the table and the connection's task share about one connection.
#[derive(Default)]
pub(super) struct ConnectionState {
    /// Requests whose response has not been produced yet.
    in_flight: AtomicUsize,
    /// Set when the first request arrives.
    requested: AtomicBool,
    /// Cancelled when the table closes the connection to make room for a new one.
    evicted: CancellationToken,
}

impl ConnectionState {
    /// Marks a request as in flight until the returned guard is dropped.
    pub(super) fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.requested.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(Arc::clone(self))
    }

    /// Returns whether a request of this connection is in flight.
    pub(super) fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Returns whether the connection has sent a request.
    pub(super) fn has_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Completes when the table closes this connection to make room.
    pub(super) async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

/// A request in flight; see [`ConnectionState::start_request`].
pub(super) struct RequestGuard(Arc<ConnectionState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's place in the table, given up when dropped.
pub(super) struct Slot {
    table: Arc<ConnectionTable>,
    id: u64,
    pub(super) state: Arc<ConnectionState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().open.remove(&self.id);
    }
}

/// Outcome of [`ConnectionTable::admit`] for an admitted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// The table was under its limit.
    Free,
    /// An idle connection was closed.
    Evicted,
}

impl ConnectionTable {
    pub(super) fn new(limit: usize) -> Arc<ConnectionTable> {
        Arc::new(ConnectionTable {
            limit: limit.max(1),
            state: Mutex::new(TableState {
                next_id: 0,
                open: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TableState> {
        // The state stays consistent across a panic: each change is one map operation.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a new connection, closing an idle one when the table is full. Returns `None` when
    /// every open connection has a request in flight.
    pub(super) fn admit(self: &Arc<Self>) -> Option<(Slot, Admission)> {
        let mut state = self.lock();
        let mut admission = Admission::Free;
        if state.open.len() >= self.limit {
            let victim = Self::pick_idle(&state.open)?;
            if let Some(evicted) = state.open.remove(&victim) {
                evicted.evicted.cancel();
            }
            admission = Admission::Evicted;
        }
        let id = state.next_id;
        state.next_id += 1;
        let connection = Arc::new(ConnectionState::default());
        state.open.insert(id, Arc::clone(&connection));
        let slot = Slot {
            table: Arc::clone(self),
            id,
            state: connection,
        };
        Some((slot, admission))
    }

    /// Returns the oldest idle connection that has not sent a request, or else the oldest idle
    /// one.
    fn pick_idle(open: &BTreeMap<u64, Arc<ConnectionState>>) -> Option<u64> {
        let mut oldest_idle = None;
        for (id, connection) in open {
            if connection.is_busy() {
                continue;
            }
            if !connection.has_requested() {
                return Some(*id);
            }
            oldest_idle.get_or_insert(*id);
        }
        oldest_idle
    }
}

/// Counts connections closed or refused at the limit and logs a warning at most once per
/// [`LIMIT_WARNING_INTERVAL`].
pub(super) struct LimitWarnings {
    limit: usize,
    last_warning: Option<Instant>,
    evicted: u64,
    refused: u64,
}

impl LimitWarnings {
    pub(super) fn new(limit: usize) -> LimitWarnings {
        LimitWarnings {
            limit,
            last_warning: None,
            evicted: 0,
            refused: 0,
        }
    }

    /// Counts a connection closed to make room for a new one.
    pub(super) fn evicted(&mut self) {
        self.evicted += 1;
        self.warn_if_due();
    }

    /// Counts a new connection refused because every open one was busy.
    pub(super) fn refused(&mut self) {
        self.refused += 1;
        self.warn_if_due();
    }

    fn warn_if_due(&mut self) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < LIMIT_WARNING_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            max_connections = self.limit,
            closed_idle = self.evicted,
            refused = self.refused,
            interval_secs = LIMIT_WARNING_INTERVAL.as_secs(),
            "webhook connection limit reached; closed idle connections to make room and \
             refused new ones while all were busy (counts since the last warning); raise \
             [webhook] max_connections or restrict who can reach the webhook port"
        );
        self.last_warning = Some(now);
        self.evicted = 0;
        self.refused = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_table_evicts_unrequested_before_keep_alive() {
        let table = ConnectionTable::new(3);
        let (keep_alive, _) = table.admit().unwrap();
        drop(keep_alive.state.start_request());
        let (busy, _) = table.admit().unwrap();
        let _request = busy.state.start_request();
        let (fresh, admission) = table.admit().unwrap();
        assert_eq!(admission, Admission::Free);

        let (_newest, admission) = table.admit().unwrap();
        assert_eq!(admission, Admission::Evicted);
        assert!(fresh.state.evicted.is_cancelled());
        assert!(!keep_alive.state.evicted.is_cancelled());

        let (_next, admission) = table.admit().unwrap();
        assert_eq!(admission, Admission::Evicted);
        assert!(
            !keep_alive.state.evicted.is_cancelled(),
            "the newest connection has not requested yet, so it goes before the keep-alive one"
        );
    }

    #[test]
    fn full_table_of_busy_connections_refuses() {
        let table = ConnectionTable::new(2);
        let (first, _) = table.admit().unwrap();
        let (second, _) = table.admit().unwrap();
        let _first_request = first.state.start_request();
        let _second_request = second.state.start_request();
        assert!(table.admit().is_none());
        assert!(!first.state.evicted.is_cancelled());
        assert!(!second.state.evicted.is_cancelled());

        drop(_second_request);
        let (_third, admission) = table.admit().unwrap();
        assert_eq!(admission, Admission::Evicted);
        assert!(second.state.evicted.is_cancelled());
    }

    #[test]
    fn dropped_slot_frees_its_place() {
        let table = ConnectionTable::new(1);
        let (first, _) = table.admit().unwrap();
        drop(first);
        let (_second, admission) = table.admit().unwrap();
        assert_eq!(admission, Admission::Free);
    }

    #[test]
    fn limit_warnings_count_between_warnings() {
        let mut warnings = LimitWarnings::new(4);
        warnings.evicted();
        assert!(warnings.last_warning.is_some());
        assert_eq!((warnings.evicted, warnings.refused), (0, 0));
        warnings.evicted();
        warnings.refused();
        warnings.refused();
        assert_eq!((warnings.evicted, warnings.refused), (1, 2));
    }
}
