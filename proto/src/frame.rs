//! Request and response frames of the agent socket.
//!
//! All integers are big-endian. A connection carries any number of request/response pairs in
//! order.
//!
//! | frame | layout |
//! | --- | --- |
//! | request v1 | `[u8 1][u16 key_len][key]` |
//! | request v2 | `[u8 2][u16 key_len][key][u16 value_len][value]` |
//! | status request | `[u8 3][u16 0]` |
//! | response | `[u8 status][u16 len][payload]` |
//!
//! In a v1 request the key is a variable name that the agent looks up in its default backend.
//! In a v2 request the key is the variable name and the value is that variable's current value
//! in the caller's environment, which is the reference to resolve. A status request makes the
//! agent describe itself, and the reply is a [`Response::Found`] whose payload is a JSON object.
//!
//! Decoding checks each length field against its bound as soon as the field is readable, so a
//! peer announcing a huge frame is rejected before any of its body is buffered.

use std::fmt;

use crate::secret::SecretBytes;

pub const VERSION_V1: u8 = 1;
pub const VERSION_V2: u8 = 2;
pub const KIND_STATUS: u8 = 3;

/// Maximum length of a variable name in a request.
pub const MAX_KEY_LEN: usize = 4096;
/// Maximum length of a variable's value (the reference) in a v2 request.
pub const MAX_VALUE_LEN: usize = 16 * 1024;
/// Maximum payload of a response, fixed by its 16-bit length field.
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize;

/// Maximum encoded size of any request, for sizing read buffers.
pub const MAX_REQUEST_LEN: usize = 1 + 2 + MAX_KEY_LEN + 2 + MAX_VALUE_LEN;
/// Maximum encoded size of any response.
pub const MAX_RESPONSE_LEN: usize = 1 + 2 + MAX_PAYLOAD_LEN;

/// A request from a client to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Look up a bare variable name in the agent's default backend.
    V1 { key: Vec<u8> },
    /// Resolve `value`, the reference that variable `key` holds in the caller's environment.
    V2 { key: Vec<u8>, value: Vec<u8> },
    /// Describe the agent (version, mode, backend) as a JSON payload.
    Status,
}

/// Response status byte values.
pub mod status {
    pub const FOUND: u8 = 0;
    pub const NOT_FOUND: u8 = 1;
    pub const ERROR: u8 = 2;
    pub const PASSTHROUGH: u8 = 3;
}

/// A response from the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// The resolved value.
    Found(SecretBytes),
    /// The backend has no such key.
    NotFound,
    /// The request failed. The reason never contains secret material.
    Error(String),
    /// The value is not a reference; the client uses it unchanged.
    Passthrough,
}

/// A frame that violates the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown request version byte {0} (expected 1, 2 or 3)")]
    UnknownVersion(u8),
    #[error("unknown response status byte {0} (expected 0, 1, 2 or 3)")]
    UnknownStatus(u8),
    #[error("key length {len} exceeds the maximum of {max} bytes")]
    KeyTooLong { len: usize, max: usize },
    #[error("value length {len} exceeds the maximum of {max} bytes")]
    ValueTooLong { len: usize, max: usize },
    #[error("payload length {len} exceeds the maximum of {max} bytes")]
    PayloadTooLong { len: usize, max: usize },
    #[error("the key is empty")]
    EmptyKey,
    #[error("a status request must have an empty key, found {0} bytes")]
    StatusWithKey(usize),
    #[error("a {status} response must have an empty payload, found {len} bytes")]
    UnexpectedPayload { status: &'static str, len: usize },
}

impl Request {
    /// Appends the encoded request to `out`.
    ///
    /// Fails without writing anything when a field is empty or exceeds its bound.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            Request::V1 { key } => {
                check_key(key.len())?;
                out.push(VERSION_V1);
                put_field(out, key);
            }
            Request::V2 { key, value } => {
                check_key(key.len())?;
                check_value(value.len())?;
                out.push(VERSION_V2);
                put_field(out, key);
                put_field(out, value);
            }
            Request::Status => {
                out.push(KIND_STATUS);
                out.extend_from_slice(&0u16.to_be_bytes());
            }
        }
        Ok(())
    }

    /// Decodes one request from the start of `buf`.
    ///
    /// Returns `Ok(None)` while the frame is incomplete, and otherwise the request with the
    /// number of bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Request, usize)>, FrameError> {
        let Some(&version) = buf.first() else {
            return Ok(None);
        };
        if !matches!(version, VERSION_V1 | VERSION_V2 | KIND_STATUS) {
            return Err(FrameError::UnknownVersion(version));
        }

        let Some(key_len) = read_u16(buf, 1) else {
            return Ok(None);
        };
        if version == KIND_STATUS {
            if key_len != 0 {
                return Err(FrameError::StatusWithKey(key_len));
            }
            return Ok(Some((Request::Status, 3)));
        }
        check_key(key_len)?;
        let key_end = 3 + key_len;
        if version == VERSION_V1 {
            let Some(key) = buf.get(3..key_end) else {
                return Ok(None);
            };
            return Ok(Some((Request::V1 { key: key.to_vec() }, key_end)));
        }

        let Some(value_len) = read_u16(buf, key_end) else {
            return Ok(None);
        };
        check_value(value_len)?;
        let value_end = key_end + 2 + value_len;
        if buf.len() < value_end {
            return Ok(None);
        }
        let request = Request::V2 {
            key: buf[3..key_end].to_vec(),
            value: buf[key_end + 2..value_end].to_vec(),
        };
        Ok(Some((request, value_end)))
    }
}

impl Response {
    /// Returns the status byte of this response.
    pub fn status_byte(&self) -> u8 {
        match self {
            Response::Found(_) => status::FOUND,
            Response::NotFound => status::NOT_FOUND,
            Response::Error(_) => status::ERROR,
            Response::Passthrough => status::PASSTHROUGH,
        }
    }

    /// Returns the reason of an error response to a request for variable `name` without the
    /// `NAME: ` that the agent puts first. The agent names the variable so that its answer
    /// stands alone in any client's log; a client that names the variable itself shows the
    /// rest, so the name appears once.
    pub fn reason_without_name<'a>(reason: &'a str, name: &[u8]) -> &'a str {
        reason
            .as_bytes()
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(b": "))
            .map_or(reason, |rest| &reason[reason.len() - rest.len()..])
    }

    /// Builds an error response, cutting a reason longer than a frame allows at a character
    /// boundary.
    pub fn error(reason: impl Into<String>) -> Response {
        let mut reason = reason.into();
        if reason.len() > MAX_PAYLOAD_LEN {
            let mut end = MAX_PAYLOAD_LEN;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Response::Error(reason)
    }

    /// Appends the encoded response to `out`.
    ///
    /// Fails without writing anything when the payload exceeds [`MAX_PAYLOAD_LEN`].
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let payload: &[u8] = match self {
            Response::Found(value) => value.expose_secret(),
            Response::Error(reason) => reason.as_bytes(),
            Response::NotFound | Response::Passthrough => &[],
        };
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(FrameError::PayloadTooLong {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        out.push(self.status_byte());
        put_field(out, payload);
        Ok(())
    }

    /// Decodes one response from the start of `buf`.
    ///
    /// Returns `Ok(None)` while the frame is incomplete, and otherwise the response with the
    /// number of bytes it used. An error reason that is not valid UTF-8 is decoded lossily.
    pub fn decode(buf: &[u8]) -> Result<Option<(Response, usize)>, FrameError> {
        let Some(&status_byte) = buf.first() else {
            return Ok(None);
        };
        if status_byte > status::PASSTHROUGH {
            return Err(FrameError::UnknownStatus(status_byte));
        }
        let Some(len) = read_u16(buf, 1) else {
            return Ok(None);
        };
        let Some(payload) = buf.get(3..3 + len) else {
            return Ok(None);
        };
        let response = match status_byte {
            status::FOUND => Response::Found(SecretBytes::new(payload.to_vec())),
            status::ERROR => Response::Error(String::from_utf8_lossy(payload).into_owned()),
            status::NOT_FOUND => {
                expect_empty("not-found", len)?;
                Response::NotFound
            }
            _ => {
                expect_empty("passthrough", len)?;
                Response::Passthrough
            }
        };
        Ok(Some((response, 3 + len)))
    }
}

impl fmt::Display for Request {
    /// Describes the request by kind and variable name. The value is a reference, never a
    /// secret, but it is left out to keep log lines short.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::V1 { key } => write!(f, "v1 {}", String::from_utf8_lossy(key)),
            Request::V2 { key, .. } => write!(f, "v2 {}", String::from_utf8_lossy(key)),
            Request::Status => f.write_str("status"),
        }
    }
}

fn check_key(len: usize) -> Result<(), FrameError> {
    if len == 0 {
        return Err(FrameError::EmptyKey);
    }
    if len > MAX_KEY_LEN {
        return Err(FrameError::KeyTooLong {
            len,
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

fn check_value(len: usize) -> Result<(), FrameError> {
    if len > MAX_VALUE_LEN {
        return Err(FrameError::ValueTooLong {
            len,
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

fn expect_empty(status: &'static str, len: usize) -> Result<(), FrameError> {
    if len != 0 {
        return Err(FrameError::UnexpectedPayload { status, len });
    }
    Ok(())
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    // Callers have checked the length against a bound below u16::MAX.
    out.extend_from_slice(&(field.len() as u16).to_be_bytes());
    out.extend_from_slice(field);
}

fn read_u16(buf: &[u8], at: usize) -> Option<usize> {
    let bytes = buf.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(request: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        request.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn v1_request_layout() {
        let bytes = encoded(&Request::V1 {
            key: b"DB".to_vec(),
        });
        assert_eq!(bytes, [1, 0, 2, b'D', b'B']);
    }

    #[test]
    fn v2_request_layout() {
        let request = Request::V2 {
            key: b"K".to_vec(),
            value: b"envproxy:K".to_vec(),
        };
        let bytes = encoded(&request);
        assert_eq!(&bytes[..4], &[2, 0, 1, b'K']);
        assert_eq!(&bytes[4..6], &[0, 10]);
        assert_eq!(&bytes[6..], b"envproxy:K");
    }

    #[test]
    fn response_layout() {
        let mut out = Vec::new();
        Response::Found(SecretBytes::from("abc"))
            .encode(&mut out)
            .unwrap();
        assert_eq!(out, [0, 0, 3, b'a', b'b', b'c']);
        out.clear();
        Response::Passthrough.encode(&mut out).unwrap();
        assert_eq!(out, [3, 0, 0]);
    }

    #[test]
    fn decode_incomplete_frames() {
        let bytes = encoded(&Request::V2 {
            key: b"KEY".to_vec(),
            value: b"vault:a/b#c".to_vec(),
        });
        for cut in 0..bytes.len() {
            assert_eq!(Request::decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(Request::decode(&bytes).unwrap().is_some());
    }

    #[test]
    fn decode_rejects_unknown_version() {
        assert_eq!(
            Request::decode(&[9, 0, 1, b'K']),
            Err(FrameError::UnknownVersion(9))
        );
    }

    #[test]
    fn decode_rejects_long_key_before_body() {
        let header = [1, 0xff, 0xff];
        assert_eq!(
            Request::decode(&header),
            Err(FrameError::KeyTooLong {
                len: 65535,
                max: MAX_KEY_LEN
            })
        );
    }

    #[test]
    fn decode_rejects_long_value_before_body() {
        let mut bytes = vec![2, 0, 1, b'K'];
        bytes.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(
            Request::decode(&bytes),
            Err(FrameError::ValueTooLong {
                len: 65535,
                max: MAX_VALUE_LEN
            })
        );
    }

    #[test]
    fn decode_rejects_empty_key() {
        assert_eq!(Request::decode(&[1, 0, 0]), Err(FrameError::EmptyKey));
    }

    #[test]
    fn status_request_round_trip() {
        let bytes = encoded(&Request::Status);
        assert_eq!(bytes, [3, 0, 0]);
        assert_eq!(Request::decode(&bytes), Ok(Some((Request::Status, 3))));
        assert_eq!(
            Request::decode(&[3, 0, 2, b'x', b'y']),
            Err(FrameError::StatusWithKey(2))
        );
    }

    #[test]
    fn encode_rejects_oversized_fields() {
        let mut out = Vec::new();
        let long_key = Request::V1 {
            key: vec![b'K'; MAX_KEY_LEN + 1],
        };
        assert!(long_key.encode(&mut out).is_err());
        let long_payload = Response::Found(SecretBytes::new(vec![0; MAX_PAYLOAD_LEN + 1]));
        assert!(long_payload.encode(&mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn error_reason_is_truncated_to_fit() {
        let reason = "é".repeat(MAX_PAYLOAD_LEN);
        let Response::Error(cut) = Response::error(reason) else {
            panic!("expected an error response");
        };
        assert!(cut.len() <= MAX_PAYLOAD_LEN);
    }

    #[test]
    fn response_decode_rejects_payload_on_not_found() {
        assert_eq!(
            Response::decode(&[1, 0, 1, b'x']),
            Err(FrameError::UnexpectedPayload {
                status: "not-found",
                len: 1
            })
        );
    }

    fn any_request() -> impl Strategy<Value = Request> {
        let key = proptest::collection::vec(any::<u8>(), 1..64);
        let value = proptest::collection::vec(any::<u8>(), 0..128);
        prop_oneof![
            key.clone().prop_map(|key| Request::V1 { key }),
            (key, value).prop_map(|(key, value)| Request::V2 { key, value }),
            Just(Request::Status),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trip(request in any_request(), trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut bytes = encoded(&request);
            let len = bytes.len();
            bytes.extend_from_slice(&trailing);
            prop_assert_eq!(Request::decode(&bytes), Ok(Some((request, len))));
        }

        #[test]
        fn response_round_trip(status_byte in 0u8..4, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let response = match status_byte {
                0 => Response::Found(SecretBytes::new(payload)),
                1 => Response::NotFound,
                2 => Response::Error(String::from_utf8_lossy(&payload).into_owned()),
                _ => Response::Passthrough,
            };
            let mut bytes = Vec::new();
            response.encode(&mut bytes).unwrap();
            let (decoded, used) = Response::decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(decoded, response);
        }

        #[test]
        fn request_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some((_, used))) = Request::decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn response_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some((_, used))) = Response::decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }
    }

    #[test]
    fn reason_without_name_strips_only_the_leading_name() {
        let strip = Response::reason_without_name;
        assert_eq!(
            strip("DB_PASSWORD: permission denied: x", b"DB_PASSWORD"),
            "permission denied: x"
        );
        assert_eq!(
            strip("permission denied: DB_PASSWORD: x", b"DB_PASSWORD"),
            "permission denied: DB_PASSWORD: x"
        );
        assert_eq!(strip("DB_PASSWORDS: x", b"DB_PASSWORD"), "DB_PASSWORDS: x");
        assert_eq!(strip("DB: x", b"DB_PASSWORD"), "DB: x");
    }
}
