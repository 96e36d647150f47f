//! Observers of a running agent for benchmarks 12 and 13: a client that follows the admin API's
//! audit stream, and a Prometheus-style scraper of the metrics listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use envproxy_admin_proto::v1 as pb;
use envproxy_admin_proto::v1::admin_client::AdminClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

/// Maximum wait for the audit stream to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts of the events an audit watcher received.
#[derive(Debug, Clone, Copy, Default)]
pub struct Followed {
    pub events: u64,
    /// Events the agent dropped because the watcher fell behind, from `dropped_before`.
    pub dropped: u64,
}

/// One `WatchAudit` stream, read on its own thread and Tokio runtime until stopped.
pub struct AuditWatcher {
    stop: Arc<tokio::sync::Notify>,
    thread: JoinHandle<anyhow::Result<Followed>>,
}

impl AuditWatcher {
    /// Opens the audit stream on the admin socket at `admin_socket` and returns once the agent
    /// has accepted it, so every request sent after this returns is in the stream.
    pub fn start(admin_socket: &Path) -> anyhow::Result<AuditWatcher> {
        let stop = Arc::new(tokio::sync::Notify::new());
        let (opened, on_open) = mpsc::channel();
        let socket = admin_socket.to_path_buf();
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("audit-watcher".to_string())
            .spawn(move || follow(socket, &thread_stop, &opened))
            .context("cannot start the audit watcher thread")?;
        match on_open.recv_timeout(CONNECT_TIMEOUT) {
            Ok(()) => Ok(AuditWatcher { stop, thread }),
            Err(_) => match thread.join() {
                Ok(Err(err)) => Err(err.context("the audit stream did not open")),
                _ => bail!("the audit stream did not open within {CONNECT_TIMEOUT:?}"),
            },
        }
    }

    /// Closes the stream and returns what it received.
    pub fn stop(self) -> anyhow::Result<Followed> {
        self.stop.notify_one();
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => bail!("the audit watcher thread panicked"),
        }
    }
}

fn follow(
    socket: PathBuf,
    stop: &tokio::sync::Notify,
    opened: &mpsc::Sender<()>,
) -> anyhow::Result<Followed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the audit watcher's Tokio runtime")?;
    runtime.block_on(async {
        // The URI is required by the endpoint but never resolved: the connector dials the socket.
        let channel =
            Endpoint::try_from("http://admin.invalid")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }))
                .await
                .context("cannot connect to the admin socket")?;
        let mut stream = AdminClient::new(channel)
            .watch_audit(pb::WatchAuditRequest {})
            .await
            .context("WatchAudit failed")?
            .into_inner();
        let _ = opened.send(());
        let mut followed = Followed::default();
        loop {
            tokio::select! {
                () = stop.notified() => return Ok(followed),
                message = stream.message() => match message.context("the audit stream failed")? {
                    Some(event) => {
                        followed.events += 1;
                        followed.dropped += event.dropped_before;
                    }
                    None => bail!("the agent ended the audit stream"),
                },
            }
        }
    })
}

/// Scrapes `GET /metrics` at a fixed interval on its own thread until stopped.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicU64>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Scraper {
    pub fn start(address: SocketAddr, interval: Duration) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicU64::new(0));
        let thread_stop = Arc::clone(&stop);
        let thread_scrapes = Arc::clone(&scrapes);
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                scrape(address)?;
                thread_scrapes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(interval);
            }
            Ok(())
        });
        Scraper {
            stop,
            scrapes,
            thread,
        }
    }

    /// Stops scraping and returns the number of scrapes.
    pub fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(result) => result?,
            Err(_) => bail!("the scraper thread panicked"),
        }
        Ok(self.scrapes.load(Ordering::Relaxed))
    }
}

/// Sends one `GET /metrics` and checks that the response is a 200 ending in `# EOF`.
pub fn scrape(address: SocketAddr) -> anyhow::Result<()> {
    let mut stream =
        TcpStream::connect(address).with_context(|| format!("cannot connect to {address}"))?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") || !response.ends_with("# EOF\n") {
        let head = response.lines().next().unwrap_or_default();
        bail!("the metrics listener at {address} returned an unexpected response: {head}");
    }
    Ok(())
}

/// Returns a loopback address with a port that was free a moment ago, for an agent to listen
/// on. Another process may take the port in between, which fails the agent's start.
pub fn free_loopback_address() -> anyhow::Result<SocketAddr> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(probe.local_addr()?)
}
