//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod samples;
pub mod strategies;

use thinagent_protocol::{DecodeError, Decoded, Frame, MessageType, PayloadError, decode_frame};

/// A frame with a hand-made header and payload, for feeding bad input.
pub fn raw_frame(
    version: u16,
    msg_type: u16,
    flags: u32,
    request_id: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(24 + payload.len());
    frame.extend_from_slice(b"TAGT");
    frame.extend_from_slice(&version.to_le_bytes());
    frame.extend_from_slice(&msg_type.to_le_bytes());
    frame.extend_from_slice(&flags.to_le_bytes());
    frame.extend_from_slice(&request_id.to_le_bytes());
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Decodes `buf`, which must hold exactly one whole frame.
pub fn decode_whole(buf: &[u8]) -> Result<Frame<'_>, DecodeError> {
    match decode_frame(buf)? {
        Decoded::Frame { frame, consumed } => {
            assert_eq!(consumed, buf.len(), "frame length");
            Ok(frame)
        }
        Decoded::Incomplete { needed } => {
            panic!("whole frame reported incomplete (needs {needed})")
        }
    }
}

/// Decodes a version-1 frame of `msg_type` with `payload`, expecting the
/// payload to be rejected, and returns why.
pub fn payload_error(msg_type: MessageType, payload: &[u8]) -> PayloadError {
    let frame = raw_frame(1, msg_type.to_wire(), 0, 5, payload);
    match decode_whole(&frame) {
        Err(DecodeError::Malformed {
            msg_type: t,
            request_id: 5,
            error,
        }) if t == msg_type => error,
        other => panic!("expected a malformed {msg_type:?}, got {other:?}"),
    }
}
