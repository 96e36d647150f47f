//! A blocking request/response call, for command-line tools and tests.

use std::io::{self, Read, Write};

use crate::frame::{Request, Response, MAX_RESPONSE_LEN};

/// Sends `request` on `stream` and reads one response.
///
/// Timeouts are the stream's own (for example `UnixStream::set_read_timeout`). A protocol
/// violation by the peer or a connection closed before a whole response is an
/// `io::ErrorKind::InvalidData` or `UnexpectedEof` error.
pub fn call<S: Read + Write>(stream: &mut S, request: &Request) -> io::Result<Response> {
    let mut out = Vec::new();
    request
        .encode(&mut out)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    stream.write_all(&out)?;
    read_response(stream)
}

/// Reads one response from `stream`.
pub fn read_response<S: Read>(stream: &mut S) -> io::Result<Response> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        match Response::decode(&buf) {
            Ok(Some((response, _))) => return Ok(response),
            Ok(None) => {}
            Err(err) => return Err(io::Error::new(io::ErrorKind::InvalidData, err)),
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection before sending a whole response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        debug_assert!(buf.len() <= MAX_RESPONSE_LEN + chunk.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretBytes;
    use std::io::Cursor;

    /// A stream that yields scripted bytes one at a time and records what is written.
    struct Scripted {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let end = buf.len().min(1);
            self.input.read(&mut buf[..end])
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn call_reads_response_split_across_reads() {
        let mut reply = Vec::new();
        Response::Found(SecretBytes::from("v"))
            .encode(&mut reply)
            .unwrap();
        let mut stream = Scripted {
            input: Cursor::new(reply),
            written: Vec::new(),
        };
        let response = call(&mut stream, &Request::V1 { key: b"K".to_vec() }).unwrap();
        assert_eq!(response, Response::Found(SecretBytes::from("v")));
        assert_eq!(stream.written, [1, 0, 1, b'K']);
    }

    #[test]
    fn call_reports_early_close() {
        let mut stream = Scripted {
            input: Cursor::new(vec![0, 0, 5, b'a']),
            written: Vec::new(),
        };
        let error = call(&mut stream, &Request::Status).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
