//! The throughput client: many threads, each with one persistent blocking connection.

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
        stream.write_all(frame).context("cannot send a request")?;
        let mut header = [0u8; 3];
        stream
            .read_exact(&mut header)
            .context("cannot read a response header")?;
        let len = u16::from_be_bytes([header[1], header[2]]) as usize;
        if header[0] != status::FOUND || len != expected.len() {
            bail!(
                "unexpected response: status {} with a {len}-byte payload, expected status {} \
                 with {} bytes",
                header[0],
                status::FOUND,
                expected.len()
            );
        }
        stream
            .read_exact(&mut payload)
            .context("cannot read a response payload")?;
        if payload != expected {
            bail!("the response payload differs from the expected value");
        }
        completed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
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
