//! Decoding one frame from the front of a byte buffer, without copying.

use zerocopy::FromBytes;

use crate::header::{Header, MessageType};
use crate::message::Message;
use crate::{
    DecodeError, HEADER_LEN, MAGIC, MAX_FRAME_LEN, MAX_VERSION, MIN_VERSION, PROTOCOL_VERSION,
};

/// One decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header's protocol version (a supported one).
    pub version: u16,
    /// The header's request id.
    pub request_id: u64,
    /// The payload, borrowing from the input.
    pub message: Message<'a>,
}

/// The result of [`decode_frame`] on a buffer that holds no error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The buffer holds only part of a frame. Call again once it holds at
    /// least `needed` bytes in total (`needed` > the current length).
    Incomplete {
        /// Total buffered length required before the next attempt can progress.
        needed: usize,
    },
    /// A whole frame was decoded from the front of the buffer.
    Frame {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes it occupied: drop them before decoding the next frame.
        consumed: usize,
    },
}

/// Decodes the frame at the start of `buf`, with the protocol's hard limit
/// [`MAX_FRAME_LEN`]. Never panics, never reads past the frame.
///
/// See [`decode_frame_limited`].
pub fn decode_frame(buf: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    decode_frame_limited(buf, MAX_FRAME_LEN)
}

/// Decodes the frame at the start of `buf`, rejecting frames longer than
/// `max_frame_len` (normally the receive limit this side announced in the
/// handshake; values above [`MAX_FRAME_LEN`] are treated as `MAX_FRAME_LEN`).
///
/// Checks happen in this order, each as soon as the bytes it needs are
/// buffered:
/// 1. magic (checked on every prefix, so garbage is rejected at once) →
///    [`DecodeError::BadMagic`], fatal;
/// 2. announced frame length → [`DecodeError::FrameTooLarge`], fatal;
/// 3. (whole frame buffered) version → [`DecodeError::UnsupportedVersion`],
///    recoverable;
/// 4. flags → [`DecodeError::ReservedFlags`], fatal;
/// 5. message type → [`DecodeError::UnknownMessageType`], recoverable;
/// 6. payload → [`DecodeError::Malformed`], fatal.
pub fn decode_frame_limited(buf: &[u8], max_frame_len: usize) -> Result<Decoded<'_>, DecodeError> {
    decode_with(buf, max_frame_len, |version, _| {
        (MIN_VERSION..=MAX_VERSION).contains(&version)
    })
}

/// [`decode_frame_limited`] for a receiver in a session whose version is
/// `session_version` (1 until the handshake is done, then the chosen
/// version; `docs/protocol.md` §6): check 3 accepts a frame whose header
/// version is `session_version`, or 1 for the frozen types `Hello`,
/// `HelloAck`, `Error` and `Goodbye`. Any other version is
/// [`DecodeError::UnsupportedVersion`] (recoverable), exactly as a receiver
/// that speaks no other version would see it.
pub fn decode_frame_for(
    buf: &[u8],
    max_frame_len: usize,
    session_version: u16,
) -> Result<Decoded<'_>, DecodeError> {
    decode_with(buf, max_frame_len, |version, raw_type| {
        (MIN_VERSION..=MAX_VERSION).contains(&version)
            && (version == session_version
                || (version == PROTOCOL_VERSION
                    && MessageType::from_wire(raw_type).is_some_and(Message::is_frozen_type)))
    })
}

fn decode_with(
    buf: &[u8],
    max_frame_len: usize,
    accepts: impl Fn(u16, u16) -> bool,
) -> Result<Decoded<'_>, DecodeError> {
    let max = max_frame_len.min(MAX_FRAME_LEN);
    let seen = buf.get(..buf.len().min(MAGIC.len())).unwrap_or_default();
    if !MAGIC.starts_with(seen) {
        let mut found = [0u8; 4];
        found
            .iter_mut()
            .zip(seen)
            .for_each(|(dst, src)| *dst = *src);
        return Err(DecodeError::BadMagic { found });
    }
    let Ok((header, rest)) = Header::ref_from_prefix(buf) else {
        return Ok(Decoded::Incomplete { needed: HEADER_LEN });
    };
    let payload_len = header.payload_len.get();
    let frame_len = HEADER_LEN as u64 + u64::from(payload_len);
    let Some(frame_len) = usize::try_from(frame_len).ok().filter(|len| *len <= max) else {
        return Err(DecodeError::FrameTooLarge { frame_len, max });
    };
    let Some(payload) = rest.get(..frame_len - HEADER_LEN) else {
        return Ok(Decoded::Incomplete { needed: frame_len });
    };
    let version = header.version.get();
    let raw_type = header.msg_type.get();
    let request_id = header.request_id.get();
    if !accepts(version, raw_type) {
        return Err(DecodeError::UnsupportedVersion {
            version,
            msg_type: raw_type,
            request_id,
            frame_len,
        });
    }
    let flags = header.flags.get();
    if flags != 0 {
        return Err(DecodeError::ReservedFlags {
            flags,
            msg_type: raw_type,
            request_id,
        });
    }
    let Some(msg_type) = MessageType::from_wire_in(raw_type, version) else {
        return Err(DecodeError::UnknownMessageType {
            msg_type: raw_type,
            request_id,
            frame_len,
        });
    };
    let message = Message::decode_payload(msg_type, version, payload).map_err(|error| {
        DecodeError::Malformed {
            msg_type,
            request_id,
            error,
        }
    })?;
    Ok(Decoded::Frame {
        frame: Frame {
            version,
            request_id,
            message,
        },
        consumed: frame_len,
    })
}
