//! Encoding a [`Message`] into a caller-provided buffer.

use zerocopy::IntoBytes;

use crate::header::Header;
use crate::message::Message;
use crate::wire::{self, Writer};
use crate::{EncodeError, HEADER_LEN, MAGIC, MAX_FRAME_LEN, PROTOCOL_VERSION};

impl Message<'_> {
    /// Length of the whole frame (header plus payload) [`encode`](Self::encode)
    /// writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.payload_len())
    }

    /// Writes this message as one frame with version [`PROTOCOL_VERSION`] and
    /// the given request id at the start of `out`, and returns the frame's
    /// length. Writes nothing on error.
    ///
    /// To respect a peer's lower receive limit, pass a buffer of at most that
    /// length or compare [`encoded_len`](Self::encoded_len) first.
    pub fn encode(&self, request_id: u64, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.validate().map_err(EncodeError::Invalid)?;
        let len = self.encoded_len();
        if len > MAX_FRAME_LEN {
            return Err(EncodeError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        let Some(frame) = out.get_mut(..len) else {
            return Err(EncodeError::BufferTooSmall {
                needed: len,
                available: out.len(),
            });
        };
        let header = Header {
            magic: MAGIC,
            version: PROTOCOL_VERSION.into(),
            msg_type: self.message_type().to_wire().into(),
            flags: 0.into(),
            request_id: request_id.into(),
            payload_len: wire::len_u32(self.payload_len()).into(),
        };
        let mut w = Writer::new(frame);
        w.put(header.as_bytes());
        self.write_payload(&mut w);
        debug_assert_eq!(w.position(), len, "payload_len and write disagree");
        Ok(len)
    }
}
