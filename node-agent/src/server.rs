//! The accept loop: bounds concurrent connections and hands each one to its own task.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::connection::{self, Context};
use crate::peer;

/// Pause after a failed `accept`, so a persistent error such as `EMFILE` does not spin the loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

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
                    continue;
                };
                let peer = match peer::peer_of(&stream) {
                    Ok(peer) => peer,
                    Err(err) => {
                        tracing::warn!(%err, "cannot read peer credentials; closing connection");
                        continue;
                    }
                };
                let context = Arc::clone(&context);
                connections.spawn(async move {
                    connection::serve(stream, peer, context).await;
                    drop(permit);
                });
            }
        }
    }

    let open = connections.len();
    connections.shutdown().await;
    tracing::debug!(open, "closed open connections");
}
