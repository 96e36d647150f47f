//! The Rust clients of the agent benchmarks: throughput over many persistent blocking
//! connections, a burst of a fixed number of requests, and paired latencies on one connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use envproxy_proto::frame::status;
use envproxy_proto::Request;

/// Maximum wait for one response before a client thread gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The request that every client thread sends, and the measurement window.
pub struct Load<'a> {
    pub socket: &'a Path,
    pub connections: usize,
    pub request: &'a Request,
    /// Every response must be "found" with exactly this payload.
    pub expected_payload: &'a [u8],
    /// Time before counting starts, so connection set-up and scheduler warm-up do not count.
    pub warm_up: Duration,
    pub duration: Duration,
}

/// Runs the load and returns completed requests per second over the measured window.
pub fn requests_per_second(load: &Load<'_>) -> anyhow::Result<f64> {
    let mut frame = Vec::new();
    load.request
        .encode(&mut frame)
        .context("cannot encode the benchmark request")?;
    let frame: Arc<[u8]> = frame.into();
    let expected: Arc<[u8]> = load.expected_payload.into();
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Arc<Vec<AtomicU64>> =
        Arc::new((0..load.connections).map(|_| AtomicU64::new(0)).collect());
    // Every thread connects before any sends, and the main thread starts the clock.
    let ready = Arc::new(Barrier::new(load.connections + 1));

    let mut threads = Vec::with_capacity(load.connections);
    for index in 0..load.connections {
        let stream = UnixStream::connect(load.socket)
            .with_context(|| format!("cannot connect to {}", load.socket.display()))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let frame = Arc::clone(&frame);
        let expected = Arc::clone(&expected);
        let stop = Arc::clone(&stop);
        let counters = Arc::clone(&counters);
        let ready = Arc::clone(&ready);
        threads.push(std::thread::spawn(move || {
            ready.wait();
            run_client(stream, &frame, &expected, &stop, &counters[index])
        }));
    }

    ready.wait();
    std::thread::sleep(load.warm_up);
    let start_count = total(&counters);
    let started = Instant::now();
    std::thread::sleep(load.duration);
    let end_count = total(&counters);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);

    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => bail!("a client thread panicked"),
        }
    }
    Ok((end_count - start_count) as f64 / elapsed.as_secs_f64())
}

fn total(counters: &[AtomicU64]) -> u64 {
    counters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Sends the request and reads its response until `stop` is set, counting responses.
fn run_client(
    mut stream: UnixStream,
    frame: &[u8],
    expected: &[u8],
    stop: &AtomicBool,
    completed: &AtomicU64,
) -> anyhow::Result<()> {
    let mut payload = vec![0u8; expected.len()];
    while !stop.load(Ordering::Relaxed) {
        exchange(&mut stream, frame, expected, &mut payload)?;
        completed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Sends one request frame and reads its response, which must be "found" with exactly
/// `expected` as payload. `payload` is a buffer of `expected.len()` bytes.
fn exchange(
    stream: &mut UnixStream,
    frame: &[u8],
    expected: &[u8],
    payload: &mut [u8],
) -> anyhow::Result<()> {
    stream.write_all(frame).context("cannot send a request")?;
    let mut header = [0u8; 3];
    stream
        .read_exact(&mut header)
        .context("cannot read a response header")?;
    let len = u16::from_be_bytes([header[1], header[2]]) as usize;
    if header[0] != status::FOUND || len != expected.len() {
        // An error response carries a reason without secret material, which names the failure.
        let mut reason = vec![0u8; len];
        let detail = match stream.read_exact(&mut reason) {
            Ok(()) if header[0] == status::ERROR => {
                format!(": {}", String::from_utf8_lossy(&reason))
            }
            _ => String::new(),
        };
        bail!(
            "unexpected response: status {} with a {len}-byte payload, expected status {} \
             with {} bytes{detail}",
            header[0],
            status::FOUND,
            expected.len(),
        );
    }
    stream
        .read_exact(payload)
        .context("cannot read a response payload")?;
    if payload != expected {
        bail!("the response payload differs from the expected value");
    }
    Ok(())
}

/// One request and the payload its response must carry.
pub struct Exchange<'a> {
    pub request: &'a Request,
    pub expected_payload: &'a [u8],
}

/// Sends `first` and `second` alternately on one connection, `warm_up` untimed pairs and then
/// `samples` timed pairs, checks every response, and returns the time of each timed round
/// trip in nanoseconds: those of `first`, then those of `second`.
pub fn paired_latencies(
    socket: &Path,
    first: &Exchange<'_>,
    second: &Exchange<'_>,
    warm_up: u64,
    samples: u64,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut prepared = Vec::with_capacity(2);
    for exchange in [first, second] {
        let mut frame = Vec::new();
        exchange
            .request
            .encode(&mut frame)
            .context("cannot encode the benchmark request")?;
        let payload = vec![0u8; exchange.expected_payload.len()];
        prepared.push((frame, exchange.expected_payload, payload));
    }

    let mut times = [
        Vec::with_capacity(samples as usize),
        Vec::with_capacity(samples as usize),
    ];
    for round in 0..warm_up + samples {
        for (index, (frame, expected, payload)) in prepared.iter_mut().enumerate() {
            let started = Instant::now();
            exchange(&mut stream, frame, expected, payload)?;
            let elapsed = started.elapsed();
            if round >= warm_up {
                times[index].push(elapsed.as_nanos() as f64);
            }
        }
    }
    let [first_times, second_times] = times;
    Ok((first_times, second_times))
}

/// Sends the request `per_connection` times on each of `connections` persistent connections,
/// all starting together, checks every response and returns the number of requests sent.
pub fn send_burst(
    socket: &Path,
    connections: usize,
    per_connection: u64,
    request: &Request,
    expected_payload: &[u8],
) -> anyhow::Result<u64> {
    let mut frame = Vec::new();
    request
        .encode(&mut frame)
        .context("cannot encode the benchmark request")?;
    let frame: Arc<[u8]> = frame.into();
    let expected: Arc<[u8]> = expected_payload.into();
    // Every thread connects before any sends, so the first requests arrive together.
    let ready = Arc::new(Barrier::new(connections));

    let mut threads = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = UnixStream::connect(socket)
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let frame = Arc::clone(&frame);
        let expected = Arc::clone(&expected);
        let ready = Arc::clone(&ready);
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut payload = vec![0u8; expected.len()];
            ready.wait();
            for _ in 0..per_connection {
                exchange(&mut stream, &frame, &expected, &mut payload)?;
            }
            Ok(())
        }));
    }
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => bail!("a client thread panicked"),
        }
    }
    Ok(connections as u64 * per_connection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::testing::EchoServer;
    use crate::echo::FILLER;

    fn request() -> Request {
        Request::V2 {
            key: b"K".to_vec(),
            value: b"envproxy:K".to_vec(),
        }
    }

    #[test]
    fn load_counts_echo_responses() {
        let dir = tempfile::tempdir().unwrap();
        let server = EchoServer::start(&dir.path().join("echo.sock"), 4);
        let request = request();
        let rate = requests_per_second(&Load {
            socket: server.socket(),
            connections: 4,
            request: &request,
            expected_payload: &[FILLER; 4],
            warm_up: Duration::from_millis(20),
            duration: Duration::from_millis(100),
        })
        .unwrap();
        assert!(rate > 0.0, "rate {rate}");
    }

    #[test]
    fn load_rejects_wrong_payload() {
        let dir = tempfile::tempdir().unwrap();
        let server = EchoServer::start(&dir.path().join("echo.sock"), 4);
        let request = request();
        let error = requests_per_second(&Load {
            socket: server.socket(),
            connections: 2,
            request: &request,
            expected_payload: b"abcd",
            warm_up: Duration::from_millis(20),
            duration: Duration::from_millis(50),
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("differs from the expected value"), "{error}");
    }

    #[test]
    fn load_rejects_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let server = EchoServer::start(&dir.path().join("echo.sock"), 4);
        let request = request();
        let error = requests_per_second(&Load {
            socket: server.socket(),
            connections: 1,
            request: &request,
            expected_payload: b"abc",
            warm_up: Duration::from_millis(20),
            duration: Duration::from_millis(50),
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("4-byte payload"), "{error}");
    }
}
