//! Encoding a [`Message`] into a caller-provided buffer.

use zerocopy::IntoBytes;

use crate::header::Header;
use crate::message::Message;
use crate::wire::{self, Writer};
use crate::{
    EncodeError, HEADER_LEN, MAGIC, MAX_FRAME_LEN, MAX_VERSION, MIN_VERSION, PROTOCOL_VERSION,
    PayloadError,
};

impl Message<'_> {
    /// Length of the whole frame (header plus payload) [`encode`](Self::encode)
    /// writes.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len_for(PROTOCOL_VERSION)
    }

    /// Length of the whole frame [`encode_for`](Self::encode_for) writes in
    /// protocol `version`.
    pub fn encoded_len_for(&self, version: u16) -> usize {
        HEADER_LEN.saturating_add(self.payload_len_for(version))
    }

    /// Writes this message as one frame with version [`PROTOCOL_VERSION`] and
    /// the given request id at the start of `out`, and returns the frame's
    /// length. Writes nothing on error.
    ///
    /// To respect a peer's lower receive limit, pass a buffer of at most that
    /// length or compare [`encoded_len`](Self::encoded_len) first.
    pub fn encode(&self, request_id: u64, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_for(PROTOCOL_VERSION, request_id, out)
    }

    /// [`encode`](Self::encode) in protocol `version` (the header carries it
    /// and the payload has its layout): the negotiated version after the
    /// handshake (`docs/protocol.md` §6). A `version` this implementation
    /// does not speak, or a field the version lacks, is
    /// [`EncodeError::Invalid`].
    pub fn encode_for(
        &self,
        version: u16,
        request_id: u64,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
            return Err(EncodeError::Invalid(PayloadError::OutOfRange {
                field: "version",
                value: version.into(),
            }));
        }
        self.validate_for(version).map_err(EncodeError::Invalid)?;
        let len = self.encoded_len_for(version);
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
            version: version.into(),
            msg_type: self.message_type().to_wire().into(),
            flags: 0.into(),
            request_id: request_id.into(),
            payload_len: wire::len_u32(self.payload_len_for(version)).into(),
        };
        let mut w = Writer::new(frame);
        w.put(header.as_bytes());
        self.write_payload(&mut w, version);
        debug_assert_eq!(w.position(), len, "payload_len and write disagree");
        Ok(len)
    }
}
