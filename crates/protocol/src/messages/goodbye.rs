//! `Goodbye` (either direction): the sender is about to close the connection.

use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::PayloadError;
use crate::message::Codec;
use crate::wire::{self, Writer};
use crate::wire_enum::wire_enum;

wire_enum! {
    /// Why the connection is closing.
    pub enum GoodbyeReason: u16, field = "reason" {
        /// Orderly shutdown (service stop, driver unload).
        Shutdown = 1,
        /// The peer broke the protocol (an `Error` frame precedes this).
        ProtocolError = 2,
        /// No common protocol version.
        VersionUnsupported = 3,
        /// Handshake or idle timeout expired.
        Timeout = 4,
        /// The host refuses more guests now; retry later.
        Overloaded = 5,
        /// The sender restarts; reconnect at once.
        Restarting = 6,
    }
}

/// Either side: the last frame before closing. The header's request id is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Goodbye {
    /// Why.
    pub reason: GoodbyeReason,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct GoodbyeWire {
    reason: U16,
    reserved: U16,
}

/// Size of `Goodbye`'s payload.
pub(crate) const GOODBYE_LEN: usize = 4;
const _: () = assert!(size_of::<GoodbyeWire>() == GOODBYE_LEN);

impl<'a> Codec<'a> for Goodbye {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let w = wire::exact_fixed::<GoodbyeWire>(payload)?;
        wire::reserved(w.reserved.get().into(), "reserved")?;
        Ok(Goodbye {
            reason: GoodbyeReason::decode(w.reason.get())?,
        })
    }

    fn validate(&self) -> Result<(), PayloadError> {
        Ok(())
    }

    fn payload_len(&self, _version: u16) -> usize {
        GOODBYE_LEN
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = GoodbyeWire {
            reason: self.reason.to_wire().into(),
            reserved: 0.into(),
        };
        w.put(fixed.as_bytes());
    }
}
