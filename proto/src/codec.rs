//! The frames as `tokio-util` codecs.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{FrameError, Request, Response};

/// Server side of the agent socket: decodes requests, encodes responses.
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentCodec;

/// Client side of the agent socket: encodes requests, decodes responses.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCodec;

/// A codec failure: a protocol violation or an I/O error on the stream.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for AgentCodec {
    type Item = Request;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, CodecError> {
        let Some((request, used)) = Request::decode(src)? else {
            return Ok(None);
        };
        src.advance(used);
        Ok(Some(request))
    }
}

impl Encoder<&Response> for AgentCodec {
    type Error = CodecError;

    fn encode(&mut self, response: &Response, dst: &mut BytesMut) -> Result<(), CodecError> {
        let mut out = Vec::new();
        response.encode(&mut out)?;
        dst.extend_from_slice(&out);
        Ok(())
    }
}

impl Decoder for ClientCodec {
    type Item = Response;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Response>, CodecError> {
        let Some((response, used)) = Response::decode(src)? else {
            return Ok(None);
        };
        src.advance(used);
        Ok(Some(response))
    }
}

impl Encoder<&Request> for ClientCodec {
    type Error = CodecError;

    fn encode(&mut self, request: &Request, dst: &mut BytesMut) -> Result<(), CodecError> {
        let mut out = Vec::new();
        request.encode(&mut out)?;
        dst.extend_from_slice(&out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_codec_decodes_pipelined_requests() {
        let mut buf = BytesMut::new();
        let mut client = ClientCodec;
        client
            .encode(&Request::V1 { key: b"A".to_vec() }, &mut buf)
            .unwrap();
        client.encode(&Request::Status, &mut buf).unwrap();
        let mut agent = AgentCodec;
        assert_eq!(
            agent.decode(&mut buf).unwrap(),
            Some(Request::V1 { key: b"A".to_vec() })
        );
        assert_eq!(agent.decode(&mut buf).unwrap(), Some(Request::Status));
        assert_eq!(agent.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn agent_codec_rejects_unknown_version() {
        let mut buf = BytesMut::from(&[7u8, 0, 0][..]);
        let error = AgentCodec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            error,
            CodecError::Frame(FrameError::UnknownVersion(7))
        ));
    }
}
