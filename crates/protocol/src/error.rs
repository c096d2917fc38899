//! Decoding and encoding errors, and which decoding errors a connection
//! survives.

use core::fmt;

use crate::header::MessageType;
use crate::messages::error_message::ErrorCode;

/// Why a payload (the bytes after the header) is not a valid message of its
/// type. Returned by the decoder inside [`DecodeError::Malformed`] and by the
/// encoder inside [`EncodeError::Invalid`], so both sides enforce the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// The payload is shorter than the fixed part of its message type.
    Truncated {
        /// Bytes the fixed part needs.
        needed: usize,
        /// Bytes the payload has.
        actual: usize,
    },
    /// The payload length differs from fixed part plus declared variable part.
    LengthMismatch {
        /// Length implied by the fixed part's length fields.
        expected: usize,
        /// Actual payload length.
        actual: usize,
    },
    /// An enumerated field holds a value this version does not define.
    UnknownValue {
        /// Field name as in `docs/protocol.md`.
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// A reserved field is not zero.
    ReservedNonZero {
        /// Field name as in `docs/protocol.md`.
        field: &'static str,
    },
    /// A numeric field is outside its allowed range, or contradicts another
    /// field of the same message.
    OutOfRange {
        /// Field name as in `docs/protocol.md`.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// A text field is not valid UTF-8.
    InvalidUtf8 {
        /// Field name as in `docs/protocol.md`.
        field: &'static str,
    },
    /// A UTF-16LE field has an odd number of bytes.
    OddUtf16Length {
        /// Field name as in `docs/protocol.md`.
        field: &'static str,
    },
    /// A variable-length field exceeds its maximum.
    TooLong {
        /// Field name as in `docs/protocol.md`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum in bytes.
        max: usize,
    },
    /// A field that must not be empty is empty.
    Empty {
        /// Field name as in `docs/protocol.md`.
        field: &'static str,
    },
    /// A field is set that the frame's protocol version does not have
    /// (e.g. inline content in a version-1 `FileEvent`).
    NotInVersion {
        /// Field name as in `docs/protocol.md`.
        field: &'static str,
        /// The version in question.
        version: u16,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { needed, actual } => {
                write!(
                    f,
                    "payload of {actual} bytes is shorter than its fixed part of {needed} bytes"
                )
            }
            Self::LengthMismatch { expected, actual } => {
                write!(
                    f,
                    "payload is {actual} bytes but its length fields say {expected}"
                )
            }
            Self::UnknownValue { field, value } => {
                write!(f, "unknown value {value} in field {field}")
            }
            Self::ReservedNonZero { field } => write!(f, "reserved field {field} is not zero"),
            Self::OutOfRange { field, value } => {
                write!(f, "field {field} has out-of-range value {value}")
            }
            Self::InvalidUtf8 { field } => write!(f, "field {field} is not valid UTF-8"),
            Self::OddUtf16Length { field } => {
                write!(f, "UTF-16LE field {field} has an odd byte length")
            }
            Self::TooLong { field, len, max } => {
                write!(
                    f,
                    "field {field} is {len} bytes, longer than its maximum of {max}"
                )
            }
            Self::Empty { field } => write!(f, "field {field} must not be empty"),
            Self::NotInVersion { field, version } => {
                write!(
                    f,
                    "field {field} does not exist in protocol version {version}"
                )
            }
        }
    }
}

impl core::error::Error for PayloadError {}

/// Why [`decode_frame`](crate::decode_frame) rejected the buffered bytes.
///
/// Errors are either **fatal** (the byte stream can no longer be trusted: send
/// `Error` + `Goodbye` if possible and close the connection) or **recoverable**
/// (the frame is well delimited but not understood: drop
/// [`skip_len`](Self::skip_len) bytes, answer with `Error`, go on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fatal: the stream does not start with [`MAGIC`](crate::MAGIC). Holds
    /// the bytes seen so far (zero-padded when fewer than four arrived).
    BadMagic {
        /// The first (up to four) bytes of the frame.
        found: [u8; 4],
    },
    /// Fatal: the header announces a frame longer than the receive limit.
    FrameTooLarge {
        /// Header plus announced payload length.
        frame_len: u64,
        /// The receive limit in force.
        max: usize,
    },
    /// Fatal: reserved header flag bits are set in a supported version.
    ReservedFlags {
        /// The flags field.
        flags: u32,
        /// The header's message type field, uninterpreted (so a receiver
        /// knows not to answer an `Error` frame with an `Error`).
        msg_type: u16,
        /// The frame's request id.
        request_id: u64,
    },
    /// Fatal: the payload violates its message type's layout or rules.
    Malformed {
        /// The frame's message type.
        msg_type: MessageType,
        /// The frame's request id.
        request_id: u64,
        /// What is wrong with it.
        error: PayloadError,
    },
    /// Recoverable: the frame's version is not one this implementation
    /// speaks. Skip `frame_len` bytes, answer `Error(VersionUnsupported)`.
    UnsupportedVersion {
        /// The header's version field.
        version: u16,
        /// The header's message type field, uninterpreted.
        msg_type: u16,
        /// The frame's request id.
        request_id: u64,
        /// Whole frame length, to skip.
        frame_len: usize,
    },
    /// Recoverable: the message type is unknown. Skip `frame_len` bytes,
    /// answer `Error(UnknownMessageType)`.
    UnknownMessageType {
        /// The header's message type field.
        msg_type: u16,
        /// The frame's request id.
        request_id: u64,
        /// Whole frame length, to skip.
        frame_len: usize,
    },
}

impl DecodeError {
    /// `true` when the connection must be closed.
    pub const fn is_fatal(&self) -> bool {
        self.skip_len().is_none()
    }

    /// For a recoverable error, how many bytes to drop from the front of the
    /// buffer to reach the next frame; `None` for a fatal error.
    pub const fn skip_len(&self) -> Option<usize> {
        match *self {
            Self::UnsupportedVersion { frame_len, .. }
            | Self::UnknownMessageType { frame_len, .. } => Some(frame_len),
            _ => None,
        }
    }

    /// The request id of the offending frame, when its header was read.
    pub const fn request_id(&self) -> Option<u64> {
        match *self {
            Self::ReservedFlags { request_id, .. }
            | Self::Malformed { request_id, .. }
            | Self::UnsupportedVersion { request_id, .. }
            | Self::UnknownMessageType { request_id, .. } => Some(request_id),
            Self::BadMagic { .. } | Self::FrameTooLarge { .. } => None,
        }
    }

    /// Whether the offending frame's header says it is an `Error` frame
    /// (`msg_type` 0x00F0). A receiver never answers an `Error` with an
    /// `Error` (protocol §9): a recoverable problem is skipped silently, a
    /// fatal one closes with `Goodbye` alone. `false` for [`BadMagic`] and
    /// [`FrameTooLarge`], whose header is not trusted.
    ///
    /// [`BadMagic`]: Self::BadMagic
    /// [`FrameTooLarge`]: Self::FrameTooLarge
    pub const fn concerns_error_frame(&self) -> bool {
        let error = MessageType::Error.to_wire();
        match *self {
            Self::ReservedFlags { msg_type, .. }
            | Self::UnsupportedVersion { msg_type, .. }
            | Self::UnknownMessageType { msg_type, .. } => msg_type == error,
            Self::Malformed { msg_type, .. } => msg_type.to_wire() == error,
            Self::BadMagic { .. } | Self::FrameTooLarge { .. } => false,
        }
    }

    /// The code of the `Error` message to send the peer about this error.
    pub const fn error_code(&self) -> ErrorCode {
        match *self {
            Self::UnsupportedVersion { .. } => ErrorCode::VersionUnsupported,
            Self::UnknownMessageType { .. } => ErrorCode::UnknownMessageType,
            Self::FrameTooLarge { .. } => ErrorCode::LimitExceeded,
            Self::BadMagic { .. } | Self::ReservedFlags { .. } | Self::Malformed { .. } => {
                ErrorCode::MalformedFrame
            }
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadMagic { found } => write!(f, "bad frame magic {found:02x?}"),
            Self::FrameTooLarge { frame_len, max } => {
                write!(f, "frame of {frame_len} bytes exceeds the limit of {max}")
            }
            Self::ReservedFlags {
                flags, request_id, ..
            } => {
                write!(
                    f,
                    "reserved header flags {flags:#010x} set (request {request_id})"
                )
            }
            Self::Malformed {
                msg_type,
                request_id,
                error,
            } => {
                write!(
                    f,
                    "malformed {msg_type:?} frame (request {request_id}): {error}"
                )
            }
            Self::UnsupportedVersion {
                version,
                msg_type,
                request_id,
                ..
            } => write!(
                f,
                "unsupported protocol version {version} (message type {msg_type:#06x}, request {request_id})"
            ),
            Self::UnknownMessageType {
                msg_type,
                request_id,
                ..
            } => {
                write!(
                    f,
                    "unknown message type {msg_type:#06x} (request {request_id})"
                )
            }
        }
    }
}

impl core::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Malformed { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Why [`Message::encode`](crate::Message::encode) wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is shorter than the frame.
    BufferTooSmall {
        /// Length of the frame.
        needed: usize,
        /// Length of the buffer.
        available: usize,
    },
    /// The frame would exceed [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN).
    TooLarge {
        /// Length of the frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message breaks a rule the decoder enforces (the peer would reject it).
    Invalid(PayloadError),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BufferTooSmall { needed, available } => {
                write!(
                    f,
                    "frame needs {needed} bytes but the buffer has {available}"
                )
            }
            Self::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            Self::Invalid(error) => write!(f, "invalid message: {error}"),
        }
    }
}

impl core::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Invalid(error) => Some(error),
            _ => None,
        }
    }
}
