//! Protocol constants: magic, versions, size limits and default timeouts.
//!
//! Every number here is normative and listed in `docs/protocol.md`.

/// The first four bytes of every frame: ASCII `"TAGT"` (`54 41 47 54`).
pub const MAGIC: [u8; 4] = *b"TAGT";

/// The lowest protocol version this implementation speaks.
pub const MIN_VERSION: u16 = 1;

/// The highest protocol version this implementation speaks.
pub const MAX_VERSION: u16 = 2;

/// The handshake version: `Hello` and `HelloAck` are always sent with it,
/// and every frame before `HelloAck` carries it (`docs/protocol.md` §6).
/// [`Message::encode`](crate::Message::encode) writes it.
pub const PROTOCOL_VERSION: u16 = 1;

/// The first version whose `FileEvent` can carry inline content and whose
/// `HelloAck` announces `max_inline_len`.
pub const INLINE_CONTENT_VERSION: u16 = 2;

/// The first version with the host actions of `docs/protocol.md` §14
/// (`Remediate`, `ScanTree`, `Policy`, `Restore`, `Health`, ...) and the
/// `OnDemand` event kind.
pub const HOST_ACTIONS_VERSION: u16 = 2;

/// Most `Remediate`, `Policy` and `Restore` requests a host has outstanding
/// at one guest (§14.1).
pub const MAX_ACTIONS_IN_FLIGHT: u32 = 8;

/// Least time between two `Health` reports of a guest, ms (§14.8).
pub const HEALTH_MIN_INTERVAL_MS: u32 = 10_000;

/// Least time a guest waits for the `Verdict` of an `OnDemand` event, ms
/// (§14.4): such an event blocks no open, so a large or slow file of a scan
/// gets the time to be read and judged. The host's scan budget for one is
/// three quarters of it ([`ON_DEMAND_SCAN_BUDGET_MS`]).
pub const ON_DEMAND_QUERY_TIMEOUT_MS: u32 = 60_000;

/// Least scan budget of a host for an `OnDemand` event, ms (§14.4): shorter
/// than the guest's [`ON_DEMAND_QUERY_TIMEOUT_MS`], so the host's policy
/// verdict arrives before the guest gives up.
pub const ON_DEMAND_SCAN_BUDGET_MS: u32 = ON_DEMAND_QUERY_TIMEOUT_MS / 4 * 3;

/// Size in bytes of the fixed frame header.
pub const HEADER_LEN: usize = 24;

/// Hard upper bound of a whole frame (header plus payload), in bytes.
///
/// Peers may announce a lower receive limit in `Hello` / `HelloAck`, never a
/// higher one.
pub const MAX_FRAME_LEN: usize = 65_536;

/// The lowest receive limit a peer may announce in `Hello` / `HelloAck`.
pub const MIN_FRAME_LEN: usize = 4_096;

/// Size in bytes of the fixed part of a `ReadData` payload (before the data).
pub const READ_DATA_FIXED_LEN: usize = 32;

/// The largest number of content bytes one `ReadRequest` may ask for and one
/// `ReadData` may carry: what fits in a maximum-size frame.
pub const MAX_READ_CHUNK: u32 = (MAX_FRAME_LEN - HEADER_LEN - READ_DATA_FIXED_LEN) as u32;

/// Size in bytes of the fixed part of a version-2 `FileEvent` payload.
pub const FILE_EVENT_V2_FIXED_LEN: usize = 64;

/// The largest `max_inline_len` a host whose frame limit is `max_frame_len`
/// can announce: room for a version-2 `FileEvent`'s fixed part and a
/// one-byte path beside the content (`max_frame_len` − 24 − 64 − 1,
/// protocol §5.2). 0 for a limit too small to hold any.
pub const fn max_inline_len_for(max_frame_len: u32) -> u32 {
    max_frame_len.saturating_sub((HEADER_LEN + FILE_EVENT_V2_FIXED_LEN + 1) as u32)
}

/// The largest `HelloAck.max_inline_len`: what fits a maximum-size frame
/// beside a version-2 `FileEvent`'s fixed part and a one-byte path.
pub const MAX_INLINE_LEN: u32 = max_inline_len_for(MAX_FRAME_LEN as u32);

/// Longest guest name in `Hello`, in UTF-8 bytes.
pub const MAX_GUEST_NAME_LEN: usize = 255;

/// Longest threat name in `Verdict`, in UTF-8 bytes.
pub const MAX_THREAT_NAME_LEN: usize = 255;

/// Longest text in an `Error` message, in UTF-8 bytes.
pub const MAX_ERROR_TEXT_LEN: usize = 1_024;

/// Default deadline of one file query, in milliseconds: the guest applies its
/// fail-open / fail-closed decision when no `Verdict` arrives in time. The
/// value is the real agent's `umcMsgTimeoutMs` registry default.
pub const DEFAULT_QUERY_TIMEOUT_MS: u32 = 2_000;

/// Default interval after which an otherwise silent side sends `Ping`, in
/// milliseconds.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 10_000;

/// Default time without any received frame after which a side gives up on the
/// connection, in milliseconds.
pub const DEFAULT_IDLE_TIMEOUT_MS: u32 = 30_000;

/// Time allowed for the handshake (connection established to `HelloAck`
/// received / sent), in milliseconds.
pub const HANDSHAKE_TIMEOUT_MS: u32 = 5_000;

/// Default number of `FileEvent`s a guest may have outstanding.
pub const DEFAULT_MAX_EVENTS_IN_FLIGHT: u32 = 64;

/// Default number of `ReadRequest`s a host may have outstanding.
pub const DEFAULT_MAX_READS_IN_FLIGHT: u32 = 16;
