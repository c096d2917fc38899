//! The ThinAgent wire protocol between guest agents and the host scanner.
//!
//! A connection carries a stream of *frames*: a fixed 24-byte little-endian
//! [`Header`] followed by a payload whose layout depends on the
//! [`MessageType`]. `docs/protocol.md` is the normative specification; this
//! crate implements it without `std`, without allocation and without
//! `unsafe`, decoding in place ([`Message`] borrows text and data from the
//! received bytes).
//!
//! * Decode: [`decode_frame`] / [`decode_frame_limited`] on a buffer, or a
//!   [`StreamDecoder`] over a byte stream.
//! * Encode: [`Message::encode`] into a caller-provided buffer.
//! * Errors: [`DecodeError`] says whether the connection survives
//!   ([`DecodeError::skip_len`]) and what to tell the peer
//!   ([`DecodeError::error_code`]).
//!
//! ```
//! use thinagent_protocol::{decode_frame, Decoded, Heartbeat, Message, MAX_FRAME_LEN};
//!
//! let mut buf = [0u8; MAX_FRAME_LEN];
//! let ping = Message::Ping(Heartbeat { nonce: 7, timestamp_ms: 1_000 });
//! let len = ping.encode(42, &mut buf).unwrap();
//! match decode_frame(&buf[..len]).unwrap() {
//!     Decoded::Frame { frame, consumed } => {
//!         assert_eq!((frame.request_id, frame.message, consumed), (42, ping, len));
//!     }
//!     Decoded::Incomplete { .. } => unreachable!(),
//! }
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
mod header;
mod limits;
mod message;
mod messages;
mod stream;
mod wire;
mod wire_enum;

pub use decode::{Decoded, Frame, decode_frame, decode_frame_for, decode_frame_limited};
pub use error::{DecodeError, EncodeError, PayloadError};
pub use header::{Header, MessageType};
pub use limits::*;
pub use message::Message;
pub use messages::error_message::{ErrorCode, ErrorMessage};
pub use messages::file_event::{
    CreateDisposition, EventKind, FileEvent, FileIdentity, FilePath, InlineContent, PathEncoding,
};
pub use messages::goodbye::{Goodbye, GoodbyeReason};
pub use messages::heartbeat::Heartbeat;
pub use messages::hello::{AgentVersion, Capabilities, Hello, HelloAck, OsKind};
pub use messages::host_action::{
    ACTION_RESULT_LEN, ActionResult, ActionStatus, EXCLUSION_HEADER_LEN, Exclusion, ExclusionKind,
    Exclusions, FailMode, HEALTH_LEN, Health, HealthState, MAX_DEBUG_LEVEL, MAX_RESTORE_CHUNK,
    POLICY_FIXED_LEN, Policy, PolicyFields, REMEDIATE_FIXED_LEN, RESTORE_DATA_FIXED_LEN,
    RESTORE_FIXED_LEN, Remediate, RemediateAction, Restore, RestoreData, SCAN_DONE_LEN,
    SCAN_PROGRESS_LEN, SCAN_TREE_FIXED_LEN, ScanCancel, ScanCounters, ScanDone, ScanFlags,
    ScanProgress, ScanStatus, ScanTree,
};
pub use messages::read::{ErrorSpace, OsError, ReadData, ReadOutcome, ReadRequest, ReadStatus};
pub use messages::verdict::{Decision, Verdict};
pub use stream::StreamDecoder;
