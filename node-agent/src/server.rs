//! The accept loop: bounds concurrent connections and hands each one to its own task.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::connection::{self, Context};
use crate::node::caller::BootTime;
use crate::peer;

/// Pause after a failed `accept`, so a persistent error such as `EMFILE` does not spin the loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Minimum time between two warnings about connections closed at the connection limit.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Rate limit of the warning about connections closed at the connection limit: at most one line
/// per [`LIMIT_WARNING_INTERVAL`], with the count closed since the previous line.
#[derive(Debug, Default)]
struct LimitWarnings {
    last_warning: Option<Instant>,
    closed_since_warning: u64,
}

impl LimitWarnings {
    /// Counts one closed connection at `now`. Returns the number to report when a warning is
    /// due, which includes this one.
    fn record_closed(&mut self, now: Instant) -> Option<u64> {
        self.closed_since_warning += 1;
        let due = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= LIMIT_WARNING_INTERVAL);
        if !due {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.closed_since_warning))
    }
}

/// Accepts connections until `shutdown` completes, then ends every open connection.
///
/// A connection over `max_connections` is accepted and closed at once, so the listen backlog
/// never fills and clients fail fast instead of hanging in `connect`.
pub(crate) async fn accept_loop(
    listener: UnixListener,
    context: Arc<Context>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    let mut over_limit: u64 = 0;
    let mut limit_warnings = LimitWarnings::default();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = finished {
                    if err.is_panic() {
                        tracing::error!(%err, "bug: a connection task panicked");
                    }
                }
            }
            accepted = listener.accept() => {
                let accepted_at = BootTime::now();
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(%err, "accept failed; retrying");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    over_limit += 1;
                    tracing::debug!(
                        max_connections,
                        closed_total = over_limit,
                        "connection limit reached; closed a new connection"
                    );
                    if let Some(closed) = limit_warnings.record_closed(Instant::now()) {
                        tracing::warn!(
                            max_connections,
                            closed,
                            closed_total = over_limit,
                            "connection limit reached; closed {closed} new connections since \
                             the last warning (raise [agent] max_connections if clients need more)"
                        );
                    }
                    continue;
                };
                let peer = match peer::peer_of(&stream) {
                    Ok(peer) => peer,
                    Err(err) => {
                        tracing::warn!(%err, "cannot read peer credentials; closing connection");
                        continue;
                    }
                };
                let open = context.metrics.open_connection();
                let context = Arc::clone(&context);
                connections.spawn(async move {
                    connection::serve(stream, peer, accepted_at, context).await;
                    drop(open);
                    drop(permit);
                });
            }
        }
    }

    let open = connections.len();
    connections.shutdown().await;
    tracing::debug!(open, "closed open connections");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_warning_at_most_every_interval() {
        let start = Instant::now();
        let mut warnings = LimitWarnings::default();

        assert_eq!(warnings.record_closed(start), Some(1));
        assert_eq!(warnings.record_closed(start + Duration::from_secs(1)), None);
        assert_eq!(warnings.record_closed(start + Duration::from_secs(9)), None);
        assert_eq!(
            warnings.record_closed(start + LIMIT_WARNING_INTERVAL),
            Some(3)
        );
        assert_eq!(
            warnings.record_closed(start + Duration::from_secs(11)),
            None
        );
        assert_eq!(
            warnings.record_closed(start + Duration::from_secs(25)),
            Some(2)
        );
    }
}
