//! The fixed 24-byte frame header and the message type registry.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::wire_enum::wire_enum;

/// The frame header exactly as on the wire (all integers little-endian).
///
/// | offset | size | field         |
/// |-------:|-----:|---------------|
/// | 0      | 4    | `magic`       |
/// | 4      | 2    | `version`     |
/// | 6      | 2    | `msg_type`    |
/// | 8      | 4    | `flags`       |
/// | 12     | 8    | `request_id`  |
/// | 20     | 4    | `payload_len` |
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Header {
    /// Always [`MAGIC`](crate::MAGIC).
    pub magic: [u8; 4],
    /// Protocol version the payload is encoded in.
    pub version: U16,
    /// A [`MessageType`] wire value.
    pub msg_type: U16,
    /// Reserved in version 1: must be zero.
    pub flags: U32,
    /// Matches responses to requests; see `docs/protocol.md`.
    pub request_id: U64,
    /// Number of payload bytes following the header.
    pub payload_len: U32,
}

const _: () = assert!(size_of::<Header>() == crate::HEADER_LEN);

wire_enum! {
    /// The `msg_type` header field: which message the payload holds.
    pub enum MessageType: u16, field = "msg_type" {
        /// Guest → host: first frame, version range and guest identity.
        Hello = 0x0001,
        /// Host → guest: handshake answer, chosen version and host limits.
        HelloAck = 0x0002,
        /// Guest → host: a file is being opened, executed or was written.
        FileEvent = 0x0010,
        /// Host → guest: the decision on one `FileEvent`.
        Verdict = 0x0011,
        /// Host → guest: asks for a range of a file's content.
        ReadRequest = 0x0020,
        /// Guest → host: answers one `ReadRequest`.
        ReadData = 0x0021,
        /// Either side: liveness probe.
        Ping = 0x0030,
        /// Either side: echoes a `Ping`.
        Pong = 0x0031,
        /// Host → guest (version 2): remove or empty a file (§14.2).
        Remediate = 0x0040,
        /// Guest → host (version 2): answers `Remediate`, `Policy`, `Restore`.
        ActionResult = 0x0041,
        /// Host → guest (version 2): judge every file of a tree (§14.4).
        ScanTree = 0x0042,
        /// Guest → host (version 2): a scan's counters so far.
        ScanProgress = 0x0043,
        /// Guest → host (version 2): answers `ScanTree`.
        ScanDone = 0x0044,
        /// Host → guest (version 2): stop a scan.
        ScanCancel = 0x0045,
        /// Host → guest (version 2): the guest's policy (§14.6).
        Policy = 0x0046,
        /// Host → guest (version 2): write a file back (§14.7).
        Restore = 0x0047,
        /// Host → guest (version 2): a chunk of a `Restore`'s content.
        RestoreData = 0x0048,
        /// Guest → host (version 2): the guest's state (§14.8).
        Health = 0x0049,
        /// Either side: reports a problem with a received frame.
        Error = 0x00F0,
        /// Either side: announces the close of the connection.
        Goodbye = 0x00F1,
    }
}

impl MessageType {
    /// The first protocol version that has this message type: in a frame
    /// of an earlier version its value is unknown (`docs/protocol.md` §9
    /// check 5).
    pub const fn first_version(self) -> u16 {
        match self {
            Self::Remediate
            | Self::ActionResult
            | Self::ScanTree
            | Self::ScanProgress
            | Self::ScanDone
            | Self::ScanCancel
            | Self::Policy
            | Self::Restore
            | Self::RestoreData
            | Self::Health => crate::HOST_ACTIONS_VERSION,
            _ => 1,
        }
    }

    /// The message type with this wire value in a frame of protocol
    /// `version`, or `None` if that version does not define it.
    pub const fn from_wire_in(value: u16, version: u16) -> Option<Self> {
        match Self::from_wire(value) {
            Some(t) if t.first_version() <= version => Some(t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MessageType;

    #[test]
    fn message_type_values_round_trip_and_nothing_else_decodes() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_wire(t.to_wire()), Some(*t));
        }
        let known = (0..=u16::MAX)
            .filter(|v| MessageType::from_wire(*v).is_some())
            .count();
        assert_eq!(known, MessageType::ALL.len());
    }
}
