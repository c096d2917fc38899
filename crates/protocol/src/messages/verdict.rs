//! `Verdict` (host → guest): the one answer to a `FileEvent`.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::message::Codec;
use crate::wire::{self, Writer};
use crate::wire_enum::wire_enum;
use crate::{MAX_THREAT_NAME_LEN, PayloadError};

wire_enum! {
    /// What the guest does with the file operation.
    pub enum Decision: u8, field = "decision" {
        /// Let the operation proceed; cacheable for `cache_ttl_secs`.
        Allow = 1,
        /// Fail the operation (access denied); cacheable for `cache_ttl_secs`.
        Deny = 2,
        /// Let this operation proceed but do not cache the answer
        /// (`cache_ttl_secs` must be 0).
        AllowNoCache = 3,
    }
}

/// Host → guest: the decision on the `FileEvent` whose request id the header
/// carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'a> {
    /// Allow or deny.
    pub decision: Decision,
    /// How long the guest may reuse this verdict for the same file identity,
    /// in seconds; 0 = do not cache.
    pub cache_ttl_secs: u32,
    /// Name of the detected threat (UTF-8, at most [`MAX_THREAT_NAME_LEN`]
    /// bytes); empty when there is none.
    pub threat_name: &'a str,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct VerdictWire {
    decision: u8,
    reserved: u8,
    threat_name_len: U16,
    cache_ttl_secs: U32,
}

/// Size of `Verdict`'s fixed part.
pub(crate) const VERDICT_FIXED_LEN: usize = 8;
const _: () = assert!(size_of::<VerdictWire>() == VERDICT_FIXED_LEN);

impl<'a> Codec<'a> for Verdict<'a> {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let (w, name) = wire::split_fixed::<VerdictWire>(payload)?;
        wire::expect_len(
            payload,
            VERDICT_FIXED_LEN + usize::from(w.threat_name_len.get()),
        )?;
        wire::reserved(w.reserved.into(), "reserved")?;
        let verdict = Verdict {
            decision: Decision::decode(w.decision)?,
            cache_ttl_secs: w.cache_ttl_secs.get(),
            threat_name: wire::utf8(name, MAX_THREAT_NAME_LEN, "threat_name")?,
        };
        verdict.validate()?;
        Ok(verdict)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        if self.decision == Decision::AllowNoCache && self.cache_ttl_secs != 0 {
            return Err(PayloadError::OutOfRange {
                field: "cache_ttl_secs",
                value: self.cache_ttl_secs.into(),
            });
        }
        wire::bounded(self.threat_name.len(), MAX_THREAT_NAME_LEN, "threat_name")
    }

    fn payload_len(&self, _version: u16) -> usize {
        VERDICT_FIXED_LEN.saturating_add(self.threat_name.len())
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = VerdictWire {
            decision: self.decision.to_wire(),
            reserved: 0,
            threat_name_len: wire::len_u16(self.threat_name.len()).into(),
            cache_ttl_secs: self.cache_ttl_secs.into(),
        };
        w.put(fixed.as_bytes());
        w.put(self.threat_name.as_bytes());
    }
}
