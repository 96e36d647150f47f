//! Watches: a streamed response of newline-delimited `{"type": ..., "object": ...}` events.
//!
//! A watch from `resourceVersion` N first replays the retained events after N, then streams
//! new ones. Without N (or with `0`) it starts with a synthetic `ADDED` event per matching
//! object. A watch from a compacted version gets one `ERROR` event with a 410 `Status` and ends,
//! as the API server's watch cache does, so the client relists. A watch from a version newer
//! than the server's waits up to 3 s for it and then gets one `ERROR` event with a 504
//! "Too large resource version" `Status`. A client that resumes its watch after the server
//! restarted with fresh state gets this error. With `allowWatchBookmarks`,
//! `BOOKMARK` events carry the latest resource version every bookmark interval. The stream
//! ends after `timeoutSeconds`, when the server closes watches, or when the client goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use crate::api::{self, Body, Filter};
use crate::server::Shared;
use crate::state::{EventType, StoredEvent};
use crate::status::ApiError;

/// Watch length when the request sets no `timeoutSeconds` (the API server's default
/// `--min-request-timeout` is 1800 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Starts a watch and returns its streamed response.
pub(crate) fn start(
    shared: &Shared,
    filter: Filter,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let timeout = match query.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        Some(text) => match text.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => {
                let error = ApiError::bad_request(format!("invalid timeoutSeconds: {text:?}"));
                return api::error_response(&error);
            }
        },
        None => DEFAULT_TIMEOUT,
    };
    let bookmarks = matches!(
        query.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let requested = query
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|rv| !rv.is_empty() && *rv != "0");

    let (first_lines, receiver, progress) = {
        let state = shared.state.lock();
        match requested {
            None => {
                let lines = state
                    .objects(filter.kind)
                    .iter()
                    .filter(|object| filter.matches(object))
                    .map(|object| event_line("ADDED", &object.to_value()))
                    .collect();
                let current = state.resource_version;
                let (_, receiver) = state
                    .watch_from(current)
                    .expect("the current resource version is always watchable");
                (lines, receiver, current)
            }
            Some(text) => {
                let requested = match api::parse_resource_version(text) {
                    Ok(requested) => requested,
                    Err(error) => return api::error_response(&error),
                };
                match state.watch_from(requested) {
                    Ok((replay, receiver)) => {
                        let lines = replay
                            .iter()
                            .filter_map(|event| filtered_line(event, &filter))
                            .collect();
                        (lines, receiver, state.resource_version)
                    }
                    // The watch cache sends both as an `ERROR` event of a watch that started.
                    Err(error) if error.code == 410 || error.code == 504 => {
                        let line = event_line("ERROR", &error.to_status());
                        return stream_response(Box::pin(futures::stream::iter([line])));
                    }
                    Err(error) => return api::error_response(&error),
                }
            }
        }
    };

    let (sender, lines) = mpsc::channel::<Bytes>(64);
    let stream = WatchStream {
        sender,
        receiver,
        filter,
        progress,
        bookmark_interval: bookmarks.then_some(shared.bookmark_interval),
        closed: shared.close_watches.subscribe(),
    };
    tokio::spawn(stream.run(first_lines, timeout));
    let body = futures::stream::unfold(lines, |mut lines| async move {
        lines.recv().await.map(|line| (line, lines))
    });
    stream_response(Box::pin(body))
}

fn stream_response(
    lines: std::pin::Pin<Box<dyn futures::Stream<Item = Bytes> + Send + Sync>>,
) -> Response<Body> {
    use futures::StreamExt;
    let frames = lines.map(|line| Ok(Frame::data(line)));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("static header names and values are valid")
}

struct WatchStream {
    sender: mpsc::Sender<Bytes>,
    receiver: broadcast::Receiver<Arc<StoredEvent>>,
    filter: Filter,
    /// The resource version this watcher is known to be current at, for bookmarks.
    progress: u64,
    bookmark_interval: Option<Duration>,
    closed: tokio::sync::watch::Receiver<u64>,
}

impl WatchStream {
    async fn run(mut self, first_lines: Vec<Bytes>, timeout: Duration) {
        for line in first_lines {
            if self.sender.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let period = self.bookmark_interval.unwrap_or(Duration::MAX / 4);
        let mut bookmarks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            // `closed` is polled first, so a change made after the close (while the server is
            // unavailable) reaches clients only through a later list or a resumed watch.
            let line = tokio::select! {
                biased;
                _ = self.closed.changed() => break,
                _ = &mut deadline => break,
                _ = self.sender.closed() => break,
                _ = bookmarks.tick(), if self.bookmark_interval.is_some() => {
                    Some(bookmark_line(self.filter.kind.name(), self.progress))
                }
                received = self.receiver.recv() => match received {
                    Ok(event) => {
                        self.progress = event.resource_version;
                        filtered_line(&event, &self.filter)
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // The API server also drops watchers that cannot keep up; the client
                        // resumes from its last resource version.
                        debug!(missed, "watcher fell behind; closing its stream");
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if let Some(line) = line {
                if self.sender.send(line).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Returns the line a filtered watch sends for `event`, if any. A modification that moves an
/// object into the filter is `ADDED` and one that moves it out is `DELETED`, as with the API
/// server's watch cache.
fn filtered_line(event: &StoredEvent, filter: &Filter) -> Option<Bytes> {
    let now = filter.matches(&event.object);
    let before = event
        .previous
        .as_ref()
        .is_some_and(|object| filter.matches(object));
    let event_type = match event.event_type {
        EventType::Added if now => "ADDED",
        EventType::Modified if now && before => "MODIFIED",
        EventType::Modified if now => "ADDED",
        EventType::Modified if before => "DELETED",
        EventType::Deleted if now || before => "DELETED",
        _ => return None,
    };
    Some(event_line(event_type, &event.object.to_value()))
}

fn bookmark_line(kind: &str, resource_version: u64) -> Bytes {
    let object = json!({
        "kind": kind,
        "apiVersion": "v1",
        "metadata": { "resourceVersion": resource_version.to_string() },
    });
    event_line("BOOKMARK", &object)
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": event_type, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}
