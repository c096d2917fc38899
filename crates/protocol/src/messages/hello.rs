//! `Hello` (guest → host) and `HelloAck` (host → guest): version negotiation,
//! guest identity and the limits each side will accept.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::message::Codec;
use crate::wire::{self, Writer};
use crate::wire_enum::wire_enum;
use crate::{
    HEADER_LEN, MAX_FRAME_LEN, MAX_GUEST_NAME_LEN, MIN_FRAME_LEN, PayloadError, READ_DATA_FIXED_LEN,
};

wire_enum! {
    /// The guest's operating system.
    pub enum OsKind: u16, field = "os_kind" {
        /// Windows (minifilter driver).
        Windows = 1,
        /// Linux (fanotify agent).
        Linux = 2,
    }
}

/// Feature bits a guest announces in `Hello`.
///
/// Bits not defined here are carried verbatim and MUST be ignored by a
/// receiver that does not know them (they are how a guest announces features
/// added without a protocol version change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// The guest answers `ReadRequest`s with file content.
    pub const READ_CONTENT: Self = Self(1 << 0);
    /// The guest sends `FileEvent`s of kind `Execute`.
    pub const EXECUTE_EVENTS: Self = Self(1 << 1);
    /// The guest sends `FileEvent`s of kind `CloseAfterWrite`.
    pub const CLOSE_AFTER_WRITE_EVENTS: Self = Self(1 << 2);
    /// The guest caches verdicts and honours `cache_ttl_secs`.
    pub const VERDICT_CACHE: Self = Self(1 << 3);
    /// The guest sends files' first bytes inline in `FileEvent`s when the
    /// session is version 2 or later and the host's `max_inline_len` allows.
    pub const INLINE_CONTENT: Self = Self(1 << 4);
    /// The guest takes `Remediate` (version 2, `docs/protocol.md` §14.2).
    pub const REMEDIATE: Self = Self(1 << 5);
    /// The guest takes `ScanTree` / `ScanCancel` and sends `OnDemand`
    /// events (version 2, §14.4).
    pub const SCAN_TREE: Self = Self(1 << 6);
    /// The guest takes `Policy` (version 2, §14.6).
    pub const POLICY: Self = Self(1 << 7);
    /// The guest takes `Restore` / `RestoreData` (version 2, §14.7).
    pub const RESTORE: Self = Self(1 << 8);

    /// `true` when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of both sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The guest agent's own version (not the protocol version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AgentVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Patch version.
    pub patch: u16,
}

/// Guest → host, the first frame on every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Lowest protocol version the guest speaks (≥ 1).
    pub version_min: u16,
    /// Highest protocol version the guest speaks (≥ `version_min`).
    pub version_max: u16,
    /// Guest operating system.
    pub os: OsKind,
    /// Guest agent version.
    pub agent_version: AgentVersion,
    /// Features the guest supports.
    pub capabilities: Capabilities,
    /// Largest frame the guest accepts, in [`MIN_FRAME_LEN`]..=[`MAX_FRAME_LEN`].
    pub max_frame_len: u32,
    /// Most `ReadRequest`s the host may have outstanding (≥ 1).
    pub max_reads_in_flight: u32,
    /// Guest name for logs (host name or VM name), UTF-8, at most
    /// [`MAX_GUEST_NAME_LEN`] bytes, may be empty.
    pub guest_name: &'a str,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HelloWire {
    version_min: U16,
    version_max: U16,
    os_kind: U16,
    name_len: U16,
    agent_major: U16,
    agent_minor: U16,
    agent_patch: U16,
    reserved: U16,
    capabilities: U64,
    max_frame_len: U32,
    max_reads_in_flight: U32,
}

/// Size of `Hello`'s fixed part.
pub(crate) const HELLO_FIXED_LEN: usize = 32;
const _: () = assert!(size_of::<HelloWire>() == HELLO_FIXED_LEN);

fn check_frame_limit(value: u32) -> Result<(), PayloadError> {
    let value_usize = usize::try_from(value).unwrap_or(usize::MAX);
    if (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&value_usize) {
        Ok(())
    } else {
        Err(PayloadError::OutOfRange {
            field: "max_frame_len",
            value: value.into(),
        })
    }
}

fn check_nonzero(value: u32, field: &'static str) -> Result<(), PayloadError> {
    if value == 0 {
        Err(PayloadError::OutOfRange { field, value: 0 })
    } else {
        Ok(())
    }
}

impl<'a> Codec<'a> for Hello<'a> {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let (w, name) = wire::split_fixed::<HelloWire>(payload)?;
        wire::expect_len(payload, HELLO_FIXED_LEN + usize::from(w.name_len.get()))?;
        wire::reserved(w.reserved.get().into(), "reserved")?;
        let hello = Hello {
            version_min: w.version_min.get(),
            version_max: w.version_max.get(),
            os: OsKind::decode(w.os_kind.get())?,
            agent_version: AgentVersion {
                major: w.agent_major.get(),
                minor: w.agent_minor.get(),
                patch: w.agent_patch.get(),
            },
            capabilities: Capabilities(w.capabilities.get()),
            max_frame_len: w.max_frame_len.get(),
            max_reads_in_flight: w.max_reads_in_flight.get(),
            guest_name: wire::utf8(name, MAX_GUEST_NAME_LEN, "guest_name")?,
        };
        hello.validate()?;
        Ok(hello)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        if self.version_min == 0 {
            return Err(PayloadError::OutOfRange {
                field: "version_min",
                value: 0,
            });
        }
        if self.version_max < self.version_min {
            return Err(PayloadError::OutOfRange {
                field: "version_max",
                value: self.version_max.into(),
            });
        }
        check_frame_limit(self.max_frame_len)?;
        check_nonzero(self.max_reads_in_flight, "max_reads_in_flight")?;
        wire::bounded(self.guest_name.len(), MAX_GUEST_NAME_LEN, "guest_name")
    }

    fn payload_len(&self, _version: u16) -> usize {
        HELLO_FIXED_LEN + self.guest_name.len()
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = HelloWire {
            version_min: self.version_min.into(),
            version_max: self.version_max.into(),
            os_kind: self.os.to_wire().into(),
            name_len: wire::len_u16(self.guest_name.len()).into(),
            agent_major: self.agent_version.major.into(),
            agent_minor: self.agent_version.minor.into(),
            agent_patch: self.agent_version.patch.into(),
            reserved: 0.into(),
            capabilities: self.capabilities.0.into(),
            max_frame_len: self.max_frame_len.into(),
            max_reads_in_flight: self.max_reads_in_flight.into(),
        };
        w.put(fixed.as_bytes());
        w.put(self.guest_name.as_bytes());
    }
}

/// Host → guest, the answer to an acceptable `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloAck {
    /// The protocol version chosen for the rest of the connection.
    pub version: u16,
    /// Largest frame the host accepts, in [`MIN_FRAME_LEN`]..=[`MAX_FRAME_LEN`].
    pub max_frame_len: u32,
    /// Most `FileEvent`s the guest may have outstanding (≥ 1).
    pub max_events_in_flight: u32,
    /// Largest `length` the host will put in a `ReadRequest`; at least 1 and
    /// at most `max_frame_len` − 24 − 32, so a full `ReadData` fits.
    pub max_read_chunk: u32,
    /// A side that has sent nothing for this long sends `Ping` (0 = never).
    pub heartbeat_interval_ms: u32,
    /// A side that has received nothing for this long closes the connection
    /// (0 = never; otherwise greater than a nonzero `heartbeat_interval_ms`).
    pub idle_timeout_ms: u32,
    /// How long the host expects to take at most per `FileEvent` (≥ 1); a hint.
    pub query_timeout_ms: u32,
    /// Most content bytes the guest may send inline in one `FileEvent`
    /// (version 2 and later; 0 = none). Always 0 when `version` is 1, where
    /// the field is reserved. At most `max_frame_len` − 24 − 64 − 1, so an
    /// event with a one-byte path and that much content fits.
    pub max_inline_len: u32,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HelloAckWire {
    version: U16,
    reserved0: U16,
    max_frame_len: U32,
    max_events_in_flight: U32,
    max_read_chunk: U32,
    heartbeat_interval_ms: U32,
    idle_timeout_ms: U32,
    query_timeout_ms: U32,
    /// Reserved (0) in version 1; `max_inline_len` from version 2 on.
    max_inline_len: U32,
}

/// Size of `HelloAck`'s payload.
pub(crate) const HELLO_ACK_LEN: usize = 32;
const _: () = assert!(size_of::<HelloAckWire>() == HELLO_ACK_LEN);

impl<'a> Codec<'a> for HelloAck {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let w = wire::exact_fixed::<HelloAckWire>(payload)?;
        wire::reserved(w.reserved0.get().into(), "reserved0")?;
        if w.version.get() < 2 {
            wire::reserved(w.max_inline_len.get().into(), "reserved1")?;
        }
        let ack = HelloAck {
            version: w.version.get(),
            max_frame_len: w.max_frame_len.get(),
            max_events_in_flight: w.max_events_in_flight.get(),
            max_read_chunk: w.max_read_chunk.get(),
            heartbeat_interval_ms: w.heartbeat_interval_ms.get(),
            idle_timeout_ms: w.idle_timeout_ms.get(),
            query_timeout_ms: w.query_timeout_ms.get(),
            max_inline_len: w.max_inline_len.get(),
        };
        ack.validate()?;
        Ok(ack)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        if self.version == 0 {
            return Err(PayloadError::OutOfRange {
                field: "version",
                value: 0,
            });
        }
        check_frame_limit(self.max_frame_len)?;
        check_nonzero(self.max_events_in_flight, "max_events_in_flight")?;
        let chunk_max = u64::from(self.max_frame_len) - (HEADER_LEN + READ_DATA_FIXED_LEN) as u64;
        if self.max_read_chunk == 0 || u64::from(self.max_read_chunk) > chunk_max {
            return Err(PayloadError::OutOfRange {
                field: "max_read_chunk",
                value: self.max_read_chunk.into(),
            });
        }
        if self.idle_timeout_ms != 0
            && (self.heartbeat_interval_ms == 0
                || self.idle_timeout_ms <= self.heartbeat_interval_ms)
        {
            return Err(PayloadError::OutOfRange {
                field: "idle_timeout_ms",
                value: self.idle_timeout_ms.into(),
            });
        }
        check_nonzero(self.query_timeout_ms, "query_timeout_ms")?;
        if self.version < 2 && self.max_inline_len != 0 {
            return Err(PayloadError::NotInVersion {
                field: "max_inline_len",
                version: self.version,
            });
        }
        if self.max_inline_len > crate::max_inline_len_for(self.max_frame_len) {
            return Err(PayloadError::OutOfRange {
                field: "max_inline_len",
                value: self.max_inline_len.into(),
            });
        }
        Ok(())
    }

    fn payload_len(&self, _version: u16) -> usize {
        HELLO_ACK_LEN
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = HelloAckWire {
            version: self.version.into(),
            reserved0: 0.into(),
            max_frame_len: self.max_frame_len.into(),
            max_events_in_flight: self.max_events_in_flight.into(),
            max_read_chunk: self.max_read_chunk.into(),
            heartbeat_interval_ms: self.heartbeat_interval_ms.into(),
            idle_timeout_ms: self.idle_timeout_ms.into(),
            query_timeout_ms: self.query_timeout_ms.into(),
            max_inline_len: self.max_inline_len.into(),
        };
        w.put(fixed.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::Capabilities;

    #[test]
    fn capabilities_contain_exactly_their_bits() {
        let caps = Capabilities::READ_CONTENT.union(Capabilities::VERDICT_CACHE);
        assert_eq!(caps.0, 0b1001);
        assert!(caps.contains(Capabilities::READ_CONTENT));
        assert!(caps.contains(Capabilities::READ_CONTENT.union(Capabilities::VERDICT_CACHE)));
        assert!(!caps.contains(Capabilities::EXECUTE_EVENTS));
        assert!(!caps.contains(Capabilities::READ_CONTENT.union(Capabilities::EXECUTE_EVENTS)));
        assert!(Capabilities(1 << 63).contains(Capabilities::default()));
    }
}
