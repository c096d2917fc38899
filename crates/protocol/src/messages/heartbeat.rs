//! `Ping` / `Pong` (either direction): liveness and round-trip time.

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::PayloadError;
use crate::message::Codec;
use crate::wire::{self, Writer};

/// The payload of both `Ping` and `Pong`: a `Pong` echoes its `Ping`'s
/// payload and request id unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Heartbeat {
    /// Any value chosen by the `Ping` sender.
    pub nonce: u64,
    /// The `Ping` sender's monotonic clock in milliseconds (for round-trip
    /// time); meaningless to the receiver.
    pub timestamp_ms: u64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HeartbeatWire {
    nonce: U64,
    timestamp_ms: U64,
}

/// Size of the `Ping` / `Pong` payload.
pub(crate) const HEARTBEAT_LEN: usize = 16;
const _: () = assert!(size_of::<HeartbeatWire>() == HEARTBEAT_LEN);

impl<'a> Codec<'a> for Heartbeat {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let w = wire::exact_fixed::<HeartbeatWire>(payload)?;
        Ok(Heartbeat {
            nonce: w.nonce.get(),
            timestamp_ms: w.timestamp_ms.get(),
        })
    }

    fn validate(&self) -> Result<(), PayloadError> {
        Ok(())
    }

    fn payload_len(&self, _version: u16) -> usize {
        HEARTBEAT_LEN
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = HeartbeatWire {
            nonce: self.nonce.into(),
            timestamp_ms: self.timestamp_ms.into(),
        };
        w.put(fixed.as_bytes());
    }
}
