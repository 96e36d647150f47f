//! One client connection: requests are handled in order until the client closes, falls idle or
//! breaks the protocol.

use std::sync::Arc;
use std::time::Duration;

use envproxy_proto::codec::{AgentCodec, CodecError};
use envproxy_proto::frame::MAX_REQUEST_LEN;
use envproxy_proto::{Request, Response};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::admin::audit::{self, AuditLog};
use crate::handler::{self, Backends};
use crate::metrics::Metrics;
use crate::node::caller::BootTime;
use crate::node::serve::{self as node_serve, NodeConnection, NodeContext, Rejected};
use crate::peer::{self, Peer};
use crate::status::StatusReporter;

/// Maximum time a connection stays open after its final error response, to drain input.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Shared state that every connection uses.
pub(crate) struct Context {
    pub backends: Backends,
    pub status: StatusReporter,
    /// The agent's effective uid, the only uid it serves.
    pub agent_uid: u32,
    /// A connection that sends no complete request within this time is closed.
    pub idle_timeout: Duration,
    /// Node mode; `None` in local mode, where only the agent's uid is served.
    pub node: Option<NodeContext>,
    /// Receives one audit event per request that gets a response.
    pub audit: Arc<AuditLog>,
    /// The agent's metrics; requests are counted through `audit`.
    pub metrics: Arc<Metrics>,
}

/// Serves `stream`, accepted at `accepted_at`, until it ends. Errors end only this connection
/// and are logged.
pub(crate) async fn serve(
    stream: UnixStream,
    peer: Peer,
    accepted_at: BootTime,
    context: Arc<Context>,
) {
    // In node mode any uid may connect: the caller's pod decides what it may read.
    let admitted = context
        .node
        .as_ref()
        .map(|node| NodeConnection::admit(node, &stream, &peer, accepted_at));
    let mut framed = Framed::new(stream, AgentCodec);

    let mut node_connection = None;
    if let Some(admitted) = admitted {
        match admitted {
            Ok(connection) => node_connection = Some(connection),
            Err(Rejected(reason)) => {
                let reply = Response::error(reason);
                send_best_effort(&mut framed, &reply, context.idle_timeout).await;
                close_after_error(framed.into_inner()).await;
                return;
            }
        }
    } else if let Err(rejected) = peer::authorize(&peer, context.agent_uid) {
        tracing::warn!(
            pid = peer.pid,
            uid = peer.uid,
            agent_uid = context.agent_uid,
            "rejected a connection from another user"
        );
        let reply = Response::error(rejected.to_string());
        send_best_effort(&mut framed, &reply, context.idle_timeout).await;
        close_after_error(framed.into_inner()).await;
        return;
    }

    // One timer serves the whole connection. A timer made per request would be inserted
    // into and removed from Tokio's timer wheel around every request. This one fires at most
    // once per idle timeout, and then closes the connection or moves on to the end of the
    // current idle period.
    let mut last_response = Instant::now();
    let idle = tokio::time::sleep(context.idle_timeout);
    tokio::pin!(idle);
    loop {
        let next = tokio::select! {
            biased;
            next = framed.next() => next,
            () = &mut idle => {
                let idle_until = last_response + context.idle_timeout;
                if Instant::now() < idle_until {
                    idle.as_mut().reset(idle_until);
                    continue;
                }
                tracing::debug!(pid = peer.pid, "closing idle connection");
                return;
            }
        };
        let request = match next {
            None => return,
            Some(Ok(request)) => request,
            Some(Err(CodecError::Frame(err))) => {
                tracing::debug!(pid = peer.pid, %err, "malformed frame; closing connection");
                let reply = Response::error(format!("malformed frame: {err}"));
                send_best_effort(&mut framed, &reply, context.idle_timeout).await;
                close_after_error(framed.into_inner()).await;
                return;
            }
            Some(Err(CodecError::Io(err))) => {
                // `Framed` reports a stream that ends inside a frame as an I/O error. The client
                // may still read after closing its write side, so it gets a reason.
                tracing::debug!(pid = peer.pid, %err, "connection ended inside a frame");
                let reply = Response::error(format!("incomplete frame: {err}"));
                send_best_effort(&mut framed, &reply, context.idle_timeout).await;
                return;
            }
        };

        let started = Instant::now();
        let (outcome, note) = audit::scope(async {
            match (&context.node, node_connection.as_mut()) {
                (Some(node), Some(connection)) => {
                    node_serve::handle(node, connection, &request, &context.status).await
                }
                _ => handler::handle(&request, &context.backends, &context.status).await,
            }
        })
        .await;
        log_request(&peer, &request, outcome.decision);
        context.audit.record(
            peer.pid,
            &request,
            outcome.decision,
            &outcome.response,
            note,
            started.elapsed(),
        );
        if let Err(err) = framed.send(&outcome.response).await {
            tracing::debug!(pid = peer.pid, %err, "cannot send response; closing connection");
            return;
        }
        last_response = Instant::now();
    }
}

fn log_request(peer: &Peer, request: &Request, decision: handler::Decision) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    match request {
        Request::V1 { key } | Request::V2 { key, .. } => {
            let variable = String::from_utf8_lossy(key);
            tracing::debug!(pid = peer.pid, ?variable, %decision, "request");
        }
        Request::Status => tracing::debug!(pid = peer.pid, %decision, "request"),
    }
}

/// Closes `stream` after an error response without making the client's pending write fail.
///
/// A client that writes its whole request before reading, as the EnvProxy clients do, would
/// get `EPIPE` and miss the error response if the agent closed at once. So the agent shuts down
/// its write side and discards input until the client closes, for at most [`CLOSE_LINGER`] and
/// [`MAX_REQUEST_LEN`] bytes.
async fn close_after_error(mut stream: UnixStream) {
    let _ = stream.shutdown().await;
    let mut buffer = [0u8; 4096];
    let mut discarded = 0;
    let drain = async {
        while discarded <= MAX_REQUEST_LEN {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
}

/// Sends a last response before the connection closes. The client may already be gone.
async fn send_best_effort(
    framed: &mut Framed<UnixStream, AgentCodec>,
    response: &Response,
    timeout: Duration,
) {
    match tokio::time::timeout(timeout, framed.send(response)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%err, "cannot send the final response"),
        Err(_) => tracing::debug!("timed out sending the final response"),
    }
}
