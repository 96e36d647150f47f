//! The baseline server: a Unix-socket server shaped like the agent that does no work.
//!
//! Like `envproxy-agent` it runs a multi-threaded Tokio runtime, spawns a task per connection
//! and decodes whole request frames with the agent's own codec. For every request it sends a
//! found response with a payload of a fixed length, the length of the agent's response, so both
//! servers move the same bytes. The difference between the two is the agent's own work:
//! caller checks, the backend lookup, logging and timeouts.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use envproxy_proto::codec::AgentCodec;
use envproxy_proto::{Response, SecretBytes};
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

/// Byte of the payload that the server sends in place of a secret.
pub const FILLER: u8 = b'e';

/// Serves requests on `socket` until the process is killed.
pub fn serve(socket: &Path, reply_len: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")?;
    runtime.block_on(async {
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), reply_len, "echo server listening");
        serve_until(listener, reply_len, std::future::pending()).await
    })
}

/// Accepts connections on `listener` until `shutdown` completes.
pub async fn serve_until(
    listener: UnixListener,
    reply_len: usize,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let reply = Arc::new(Response::Found(SecretBytes::new(vec![FILLER; reply_len])));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accept failed")?;
                tokio::spawn(serve_connection(stream, Arc::clone(&reply)));
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, reply: Arc<Response>) {
    let mut framed = Framed::new(stream, AgentCodec);
    while let Some(request) = framed.next().await {
        if let Err(err) = request {
            tracing::warn!(%err, "invalid request; closing the connection");
            return;
        }
        if let Err(err) = framed.send(&*reply).await {
            tracing::debug!(%err, "cannot send the reply; closing the connection");
            return;
        }
    }
}

/// An echo server on a thread of its own, for tests of the clients.
#[cfg(test)]
pub mod testing {
    use std::path::{Path, PathBuf};

    use tokio::net::UnixListener;
    use tokio::sync::oneshot;

    /// A running echo server; dropping it stops the server and joins its thread.
    pub struct EchoServer {
        socket: PathBuf,
        stop: Option<oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl EchoServer {
        /// Starts a server on `socket`, which must not exist yet.
        pub fn start(socket: &Path, reply_len: usize) -> EchoServer {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let listener = runtime
                .block_on(async { UnixListener::bind(socket) })
                .unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                let shutdown = async {
                    let _ = stopped.await;
                };
                runtime
                    .block_on(super::serve_until(listener, reply_len, shutdown))
                    .unwrap();
                runtime.shutdown_background();
            });
            EchoServer {
                socket: socket.to_path_buf(),
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        pub fn socket(&self) -> &Path {
            &self.socket
        }
    }

    impl Drop for EchoServer {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use envproxy_proto::Request;

    use super::testing::EchoServer;
    use super::FILLER;

    #[test]
    fn echo_replies_with_fixed_length() {
        let dir = tempfile::tempdir().unwrap();
        let server = EchoServer::start(&dir.path().join("echo.sock"), 5);
        let mut stream = UnixStream::connect(server.socket()).unwrap();
        let mut frame = Vec::new();
        Request::V2 {
            key: b"K".to_vec(),
            value: b"envproxy:K".to_vec(),
        }
        .encode(&mut frame)
        .unwrap();

        // Two requests on one connection: the server replies to each in order.
        for _ in 0..2 {
            stream.write_all(&frame).unwrap();
            let mut reply = [0u8; 8];
            stream.read_exact(&mut reply).unwrap();
            assert_eq!(reply[..3], [0, 0, 5], "status found, payload length 5");
            assert_eq!(reply[3..], [FILLER; 5]);
        }
    }

    #[test]
    fn echo_closes_on_invalid_frame() {
        let dir = tempfile::tempdir().unwrap();
        let server = EchoServer::start(&dir.path().join("echo.sock"), 5);
        let mut stream = UnixStream::connect(server.socket()).unwrap();
        stream.write_all(&[9, 0, 1, b'K']).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "no reply to an unknown version byte");
    }
}
