//! `Error` (either direction): reports a problem with a received frame.

use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::message::Codec;
use crate::wire::{self, Writer};
use crate::wire_enum::wire_enum;
use crate::{MAX_ERROR_TEXT_LEN, PayloadError};

wire_enum! {
    /// What went wrong.
    pub enum ErrorCode: u16, field = "code" {
        /// The frame's protocol version is not supported, or no version in
        /// the `Hello` range is.
        VersionUnsupported = 1,
        /// The frame's message type is unknown.
        UnknownMessageType = 2,
        /// The frame is malformed (fatal; followed by `Goodbye`).
        MalformedFrame = 3,
        /// A well-formed message that is not allowed in this state or
        /// direction (fatal; followed by `Goodbye`).
        UnexpectedMessage = 4,
        /// A negotiated limit was exceeded (fatal; followed by `Goodbye`).
        LimitExceeded = 5,
        /// The sender failed internally.
        Internal = 6,
    }
}

/// Either side: an error report. The header's request id is the id of the
/// frame the error is about, or 0 when it is about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMessage<'a> {
    /// Error class.
    pub code: ErrorCode,
    /// Human-readable detail for logs (UTF-8, at most
    /// [`MAX_ERROR_TEXT_LEN`] bytes, may be empty).
    pub text: &'a str,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ErrorWire {
    code: U16,
    text_len: U16,
}

/// Size of `Error`'s fixed part.
pub(crate) const ERROR_FIXED_LEN: usize = 4;
const _: () = assert!(size_of::<ErrorWire>() == ERROR_FIXED_LEN);

impl<'a> Codec<'a> for ErrorMessage<'a> {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let (w, text) = wire::split_fixed::<ErrorWire>(payload)?;
        wire::expect_len(payload, ERROR_FIXED_LEN + usize::from(w.text_len.get()))?;
        Ok(ErrorMessage {
            code: ErrorCode::decode(w.code.get())?,
            text: wire::utf8(text, MAX_ERROR_TEXT_LEN, "text")?,
        })
    }

    fn validate(&self) -> Result<(), PayloadError> {
        wire::bounded(self.text.len(), MAX_ERROR_TEXT_LEN, "text")
    }

    fn payload_len(&self, _version: u16) -> usize {
        ERROR_FIXED_LEN.saturating_add(self.text.len())
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = ErrorWire {
            code: self.code.to_wire().into(),
            text_len: wire::len_u16(self.text.len()).into(),
        };
        w.put(fixed.as_bytes());
        w.put(self.text.as_bytes());
    }
}
