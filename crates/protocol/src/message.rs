//! [`Message`]: every message of the protocol, borrowing from the frame it
//! was decoded from.

use crate::PayloadError;
use crate::header::MessageType;
use crate::messages::error_message::ErrorMessage;
use crate::messages::file_event::FileEvent;
use crate::messages::goodbye::Goodbye;
use crate::messages::heartbeat::Heartbeat;
use crate::messages::hello::{Hello, HelloAck};
use crate::messages::host_action::{
    ActionResult, Health, Policy, Remediate, Restore, RestoreData, ScanCancel, ScanDone,
    ScanProgress, ScanTree,
};
use crate::messages::read::{ReadData, ReadRequest};
use crate::messages::verdict::Verdict;
use crate::wire::Writer;

/// The codec every message payload implements. `decode` applies the same
/// `validate` the encoder applies, so what one side can encode the other side
/// accepts, and nothing else.
pub(crate) trait Codec<'a>: Sized {
    /// Parses and validates a payload of exactly this message type, in the
    /// layout of protocol `version` (a supported one).
    fn decode(payload: &'a [u8], version: u16) -> Result<Self, PayloadError>;
    /// Checks the rules of this message type that its Rust type cannot
    /// express and that hold in every version.
    fn validate(&self) -> Result<(), PayloadError>;
    /// Checks that this value can be sent in protocol `version` (a field a
    /// version lacks must be empty).
    fn check_version(&self, _version: u16) -> Result<(), PayloadError> {
        Ok(())
    }
    /// Length of the encoded payload in protocol `version`.
    fn payload_len(&self, version: u16) -> usize;
    /// Writes the payload in protocol `version`; `w` has exactly
    /// `payload_len(version)` bytes of room.
    fn write(&self, w: &mut Writer<'_>, version: u16);
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
    /// Host → guest (version 2): remove or empty a file.
    Remediate(Remediate<'a>),
    /// Guest → host (version 2): answer to `Remediate`, `Policy`, `Restore`.
    ActionResult(ActionResult),
    /// Host → guest (version 2): judge every file of a tree.
    ScanTree(ScanTree<'a>),
    /// Guest → host (version 2): a scan's counters so far.
    ScanProgress(ScanProgress),
    /// Guest → host (version 2): answer to `ScanTree`.
    ScanDone(ScanDone),
    /// Host → guest (version 2): stop a scan.
    ScanCancel(ScanCancel),
    /// Host → guest (version 2): the guest's policy.
    Policy(Policy<'a>),
    /// Host → guest (version 2): write a file back.
    Restore(Restore<'a>),
    /// Host → guest (version 2): a chunk of a `Restore`'s content.
    RestoreData(RestoreData<'a>),
    /// Guest → host (version 2): the guest's state.
    Health(Health),
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
            Message::Remediate($m) => $body,
            Message::ActionResult($m) => $body,
            Message::ScanTree($m) => $body,
            Message::ScanProgress($m) => $body,
            Message::ScanDone($m) => $body,
            Message::ScanCancel($m) => $body,
            Message::Policy($m) => $body,
            Message::Restore($m) => $body,
            Message::RestoreData($m) => $body,
            Message::Health($m) => $body,
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
            Self::Remediate(_) => MessageType::Remediate,
            Self::ActionResult(_) => MessageType::ActionResult,
            Self::ScanTree(_) => MessageType::ScanTree,
            Self::ScanProgress(_) => MessageType::ScanProgress,
            Self::ScanDone(_) => MessageType::ScanDone,
            Self::ScanCancel(_) => MessageType::ScanCancel,
            Self::Policy(_) => MessageType::Policy,
            Self::Restore(_) => MessageType::Restore,
            Self::RestoreData(_) => MessageType::RestoreData,
            Self::Health(_) => MessageType::Health,
            Self::Error(_) => MessageType::Error,
            Self::Goodbye(_) => MessageType::Goodbye,
        }
    }

    /// Checks every rule the decoder enforces on this message's payload in
    /// any version (see [`validate_for`](Self::validate_for) for one
    /// version). [`encode`](Self::encode) calls it first.
    pub fn validate(&self) -> Result<(), PayloadError> {
        with_payload!(self, m => m.validate())
    }

    /// [`validate`](Self::validate), and that the message can be sent in
    /// protocol `version` (e.g. inline content needs version 2).
    pub fn validate_for(&self, version: u16) -> Result<(), PayloadError> {
        self.validate()?;
        with_payload!(self, m => m.check_version(version))
    }

    /// Length of the payload alone (the header's `payload_len`) in the
    /// handshake version [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub fn payload_len(&self) -> usize {
        self.payload_len_for(crate::PROTOCOL_VERSION)
    }

    /// Length of the payload alone in protocol `version`.
    pub fn payload_len_for(&self, version: u16) -> usize {
        with_payload!(self, m => m.payload_len(version))
    }

    pub(crate) fn write_payload(&self, w: &mut Writer<'_>, version: u16) {
        with_payload!(self, m => m.write(w, version))
    }

    /// Parses a payload of message type `msg_type` in protocol `version`.
    pub(crate) fn decode_payload(
        msg_type: MessageType,
        version: u16,
        payload: &'a [u8],
    ) -> Result<Self, PayloadError> {
        let v = version;
        Ok(match msg_type {
            MessageType::Hello => Self::Hello(Codec::decode(payload, v)?),
            MessageType::HelloAck => Self::HelloAck(Codec::decode(payload, v)?),
            MessageType::FileEvent => Self::FileEvent(Codec::decode(payload, v)?),
            MessageType::Verdict => Self::Verdict(Codec::decode(payload, v)?),
            MessageType::ReadRequest => Self::ReadRequest(Codec::decode(payload, v)?),
            MessageType::ReadData => Self::ReadData(Codec::decode(payload, v)?),
            MessageType::Ping => Self::Ping(Codec::decode(payload, v)?),
            MessageType::Pong => Self::Pong(Codec::decode(payload, v)?),
            MessageType::Remediate => Self::Remediate(Codec::decode(payload, v)?),
            MessageType::ActionResult => Self::ActionResult(Codec::decode(payload, v)?),
            MessageType::ScanTree => Self::ScanTree(Codec::decode(payload, v)?),
            MessageType::ScanProgress => Self::ScanProgress(Codec::decode(payload, v)?),
            MessageType::ScanDone => Self::ScanDone(Codec::decode(payload, v)?),
            MessageType::ScanCancel => Self::ScanCancel(Codec::decode(payload, v)?),
            MessageType::Policy => Self::Policy(Codec::decode(payload, v)?),
            MessageType::Restore => Self::Restore(Codec::decode(payload, v)?),
            MessageType::RestoreData => Self::RestoreData(Codec::decode(payload, v)?),
            MessageType::Health => Self::Health(Codec::decode(payload, v)?),
            MessageType::Error => Self::Error(Codec::decode(payload, v)?),
            MessageType::Goodbye => Self::Goodbye(Codec::decode(payload, v)?),
        })
    }

    /// `true` for the message types whose layout is the same in every
    /// version and that a receiver accepts with header version 1 in every
    /// state: `Hello`, `HelloAck`, `Error`, `Goodbye` (`docs/protocol.md` §6).
    pub const fn is_frozen_type(msg_type: MessageType) -> bool {
        matches!(
            msg_type,
            MessageType::Hello | MessageType::HelloAck | MessageType::Error | MessageType::Goodbye
        )
    }
}
