//! Helpers shared by the admin API tests: a gRPC channel over the admin Unix socket, the
//! agent's wire protocol, and scrapes of the metrics listener.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envproxy_admin_proto::v1::admin_client::AdminClient;
use envproxy_proto::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Maximum wait for one response or for a state change.
pub const WAIT: Duration = Duration::from_secs(20);

/// Opens a gRPC channel over the Unix socket at `path`.
pub async fn channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    // The URI is required by the endpoint but never resolved: the connector dials the socket.
    connect(Endpoint::try_from("http://admin.invalid")?, path).await
}

/// Opens a gRPC channel whose HTTP/2 flow control windows are `window` bytes, so a server
/// stream that the client does not read stalls early.
pub async fn channel_with_window(
    path: &Path,
    window: u32,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::try_from("http://admin.invalid")?
        .initial_stream_window_size(window)
        .initial_connection_window_size(window);
    connect(endpoint, path).await
}

async fn connect(endpoint: Endpoint, path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Returns an admin client on the socket at `path`.
pub async fn admin_client(path: &Path) -> AdminClient<Channel> {
    AdminClient::new(channel(path).await.expect("connect to the admin socket"))
}

/// Sends one request over the agent socket at `socket` and returns the response.
pub async fn agent_request(socket: &Path, request: &Request) -> Response {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    request_on(&mut stream, request).await
}

/// Sends `request` on an open agent connection and returns the response.
pub async fn request_on(stream: &mut UnixStream, request: &Request) -> Response {
    let mut frame = Vec::new();
    request.encode(&mut frame).unwrap();
    stream.write_all(&frame).await.unwrap();
    let mut header = [0u8; 3];
    tokio::time::timeout(WAIT, stream.read_exact(&mut header))
        .await
        .expect("timed out waiting for a response")
        .unwrap();
    let len = u16::from_be_bytes([header[1], header[2]]) as usize;
    let mut frame = header.to_vec();
    frame.resize(3 + len, 0);
    stream.read_exact(&mut frame[3..]).await.unwrap();
    Response::decode(&frame).unwrap().unwrap().0
}

/// Sends `request` `count` times over one connection to the agent socket at `socket`, each
/// after the previous response, and returns the responses.
pub async fn agent_requests(socket: &Path, request: &Request, count: u64) -> Vec<Response> {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    let mut frame = Vec::new();
    request.encode(&mut frame).unwrap();
    let mut responses = Vec::new();
    for _ in 0..count {
        stream.write_all(&frame).await.unwrap();
        let mut header = [0u8; 3];
        tokio::time::timeout(WAIT, stream.read_exact(&mut header))
            .await
            .expect("timed out waiting for a response")
            .unwrap();
        let len = u16::from_be_bytes([header[1], header[2]]) as usize;
        let mut response = header.to_vec();
        response.resize(3 + len, 0);
        stream.read_exact(&mut response[3..]).await.unwrap();
        responses.push(Response::decode(&response).unwrap().unwrap().0);
    }
    responses
}

/// Builds a v2 request for variable `name` whose environment value is `value`.
pub fn v2(name: &str, value: &str) -> Request {
    Request::V2 {
        key: name.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

/// Returns a random hexadecimal string of `len` characters.
pub fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len.div_ceil(2)];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .unwrap();
    let mut text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    text.truncate(len);
    text
}

/// Polls `condition` every 50 ms until it returns true or [`WAIT`] has passed.
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, WAIT, condition).await;
}

/// Polls `condition` every 50 ms until it returns true or `wait` has passed.
pub async fn eventually_within<F, Fut>(what: &str, wait: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP response from the metrics listener.
pub struct HttpReply {
    pub status: u16,
    /// The header lines, lower-cased.
    pub headers: String,
    pub body: String,
}

/// Sends one HTTP/1.1 request without a body to `address` and reads the whole response.
pub async fn http_request(address: SocketAddr, method: &str, path: &str) -> HttpReply {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(address))
        .await
        .expect("connect to the metrics listener in time")
        .unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("read the metrics response in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("the response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("invalid status line {status_line:?}"));
    HttpReply {
        status,
        headers: headers.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// The samples of one scrape of `/metrics`.
pub struct Scrape {
    /// The response body as received.
    pub text: String,
    samples: Vec<prometheus_parse::Sample>,
}

impl Scrape {
    /// Returns the value of the sample `name` whose labels are exactly `labels`.
    ///
    /// # Panics
    ///
    /// Panics, printing the scrape, when there is no such sample.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in the scrape:\n{}", self.text))
    }

    /// Returns whether the scrape has a sample `name` with exactly `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.find(name, labels).is_some()
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let sample = self.samples.iter().find(|sample| {
            sample.metric == name
                && sample.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })?;
        match sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => Some(value),
            ref other => panic!("{name} is not a single value: {other:?}"),
        }
    }
}

/// Scrapes `/metrics` at `address` and checks the text format: a 200 with the OpenMetrics
/// content type, every line a comment, a metric family description or a sample, and `# EOF`
/// as the last line.
pub async fn scrape(address: SocketAddr) -> Scrape {
    let reply = http_request(address, "GET", "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .headers
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        reply.headers
    );
    let text = reply.body;
    assert!(text.ends_with("# EOF\n"), "no `# EOF` at the end:\n{text}");
    for line in text.lines() {
        let known_comment = line.starts_with("# UNIT ") || line == "# EOF";
        let parsed = prometheus_parse::LineInfo::parse(line);
        assert!(
            known_comment || !matches!(parsed, prometheus_parse::LineInfo::Ignored),
            "line {line:?} is not valid Prometheus text"
        );
    }
    let lines = text.lines().map(|line| Ok(line.to_string()));
    let samples = prometheus_parse::Scrape::parse(lines).unwrap().samples;
    Scrape { text, samples }
}

/// The agent's log lines, captured by a subscriber that every test of a file shares.
pub static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Writes log output into [`LOG`].
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the agent's warnings to [`LOG`] from now on, for every test of this file.
pub fn capture_log() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// Returns the captured log lines that contain `text`.
pub fn log_lines_with(text: &str) -> Vec<String> {
    let log = LOG.lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| line.contains(text))
        .map(str::to_string)
        .collect()
}
