//! [`Message`]: every message of the protocol, borrowing from the frame it
//! was decoded from.

use crate::PayloadError;
use crate::header::MessageType;
use crate::messages::error_message::ErrorMessage;
use crate::messages::file_event::FileEvent;
use crate::messages::goodbye::Goodbye;
use crate::messages::heartbeat::Heartbeat;
use crate::messages::hello::{Hello, HelloAck};
use crate::messages::read::{ReadData, ReadRequest};
use crate::messages::verdict::Verdict;
use crate::wire::Writer;

/// The codec every message payload implements. `decode` applies the same
/// `validate` the encoder applies, so what one side can encode the other side
/// accepts, and nothing else.
pub(crate) trait Codec<'a>: Sized {
    /// Parses and validates a payload of exactly this message type.
    fn decode(payload: &'a [u8]) -> Result<Self, PayloadError>;
    /// Checks the rules of this message type that its Rust type cannot express.
    fn validate(&self) -> Result<(), PayloadError>;
    /// Length of the encoded payload.
    fn payload_len(&self) -> usize;
    /// Writes the payload; `w` has exactly `payload_len()` bytes of room.
    fn write(&self, w: &mut Writer<'_>);
}

/// One protocol message (the payload of one frame), borrowing its text and
/// data from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Guest → host handshake.
    Hello(Hello<'a>),
    /// Host → guest handshake answer.
    HelloAck(HelloAck),
    /// Guest → host file query.
    FileEvent(FileEvent<'a>),
    /// Host → guest answer to a `FileEvent`.
    Verdict(Verdict<'a>),
    /// Host → guest content request.
    ReadRequest(ReadRequest),
    /// Guest → host content answer.
    ReadData(ReadData<'a>),
    /// Either side: liveness probe.
    Ping(Heartbeat),
    /// Either side: echo of a `Ping`.
    Pong(Heartbeat),
    /// Either side: error report.
    Error(ErrorMessage<'a>),
    /// Either side: closing.
    Goodbye(Goodbye),
}

/// Runs `$body` with `$m` bound to the payload of whichever variant `$msg` is.
macro_rules! with_payload {
    ($msg:expr, $m:ident => $body:expr) => {
        match $msg {
            Message::Hello($m) => $body,
            Message::HelloAck($m) => $body,
            Message::FileEvent($m) => $body,
            Message::Verdict($m) => $body,
            Message::ReadRequest($m) => $body,
            Message::ReadData($m) => $body,
            Message::Ping($m) | Message::Pong($m) => $body,
            Message::Error($m) => $body,
            Message::Goodbye($m) => $body,
        }
    };
}

impl<'a> Message<'a> {
    /// The message type written into the header.
    pub const fn message_type(&self) -> MessageType {
        match self {
            Self::Hello(_) => MessageType::Hello,
            Self::HelloAck(_) => MessageType::HelloAck,
            Self::FileEvent(_) => MessageType::FileEvent,
            Self::Verdict(_) => MessageType::Verdict,
            Self::ReadRequest(_) => MessageType::ReadRequest,
            Self::ReadData(_) => MessageType::ReadData,
            Self::Ping(_) => MessageType::Ping,
            Self::Pong(_) => MessageType::Pong,
            Self::Error(_) => MessageType::Error,
            Self::Goodbye(_) => MessageType::Goodbye,
        }
    }

    /// Checks every rule the decoder enforces on this message's payload.
    /// [`encode`](Self::encode) calls it first.
    pub fn validate(&self) -> Result<(), PayloadError> {
        with_payload!(self, m => m.validate())
    }

    /// Length of the payload alone (the header's `payload_len`).
    pub fn payload_len(&self) -> usize {
        with_payload!(self, m => m.payload_len())
    }

    pub(crate) fn write_payload(&self, w: &mut Writer<'_>) {
        with_payload!(self, m => m.write(w))
    }

    /// Parses a payload of message type `msg_type`.
    pub(crate) fn decode_payload(
        msg_type: MessageType,
        payload: &'a [u8],
    ) -> Result<Self, PayloadError> {
        Ok(match msg_type {
            MessageType::Hello => Self::Hello(Codec::decode(payload)?),
            MessageType::HelloAck => Self::HelloAck(Codec::decode(payload)?),
            MessageType::FileEvent => Self::FileEvent(Codec::decode(payload)?),
            MessageType::Verdict => Self::Verdict(Codec::decode(payload)?),
            MessageType::ReadRequest => Self::ReadRequest(Codec::decode(payload)?),
            MessageType::ReadData => Self::ReadData(Codec::decode(payload)?),
            MessageType::Ping => Self::Ping(Codec::decode(payload)?),
            MessageType::Pong => Self::Pong(Codec::decode(payload)?),
            MessageType::Error => Self::Error(Codec::decode(payload)?),
            MessageType::Goodbye => Self::Goodbye(Codec::decode(payload)?),
        })
    }
}
