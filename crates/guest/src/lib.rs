//! ThinAgent portable guest logic: `no_std`, no allocation, no I/O.
//!
//! The Windows minifilter driver and the Linux fanotify agent are thin adapters
//! around this crate. Every decision lives here and takes events and time as
//! input ([`Instant`], `core::time::Duration`), returning actions:
//!
//! * [`status`]: NTSTATUS values ([`NtStatus`]) shared by both adapters.
//! * [`time`]: the explicit monotonic clock ([`Instant`]).
//! * [`connector`]: the bounded capture-retry loop of the vSockets provider
//!   ([`Connector`]): IOCTL `0x810320C0`, 100 attempts, 1 s apart by default.
//! * [`cache`]: the fixed-capacity verdict cache ([`VerdictCache`]) keyed by
//!   [`FileKey`].
//! * [`policy`]: which opens are checked ([`OpenPolicy`]).
//! * [`params`]: registry / config parameters with defaults and bounds
//!   ([`Params`]).
//! * [`log`]: debug lines in the seed's shape `LEVEL: Routine : message: 0xSTATUS`
//!   and their parser ([`parse_line`]).
//! * [`session`]: the guest side of the protocol with the host scanner, a
//!   sans-IO state machine over `thinagent-protocol` ([`Session`]).
//! * [`aligned_read`]: host reads served with sector-aligned non-cached I/O
//!   (the Windows driver's `FltReadFile`): the range to read and the answer
//!   ([`AlignedRange`]).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aligned_read;
pub mod cache;
pub mod clamp;
pub mod connector;
pub mod control;
pub mod file_key;
pub mod health;
pub mod host_policy;
pub mod log;
pub mod nt_path;
pub mod params;
pub mod policy;
pub mod reconnect;
pub mod registry;
pub mod session;
pub mod status;
pub mod time;

pub use aligned_read::{AlignError, AlignedRange, inline_content, inline_read_len};
pub use cache::{CacheStats, CachedVerdict, InsertOutcome, VerdictCache};
pub use clamp::{BoundedList, Clamp, Clamps};
pub use connector::{
    AttemptReport, Backoff, CaptureLogLine, CaptureMessage, Connector, ConnectorAction,
    ConnectorConfig, GiveUpReason,
};
pub use file_key::FileKey;
pub use health::HealthPacer;
pub use host_policy::{HostSettings, ImageList, Rejection, Staged};
pub use log::{Level, LevelFilter, LogLine, LogRecord, ParsedLine, parse_line};
pub use params::{
    Applied, CaptureMode, DenyStatus, FailMode, ParamError, ParamIssue, ParamReport, Params,
    RegValue, VsockTransport,
};
pub use policy::{
    OpenDecision, OpenPolicy, OpenRequest, PathRef, PathStyle, PolicyError, SkipReason,
};
pub use reconnect::{Reconnect, ReconnectConfig};
pub use session::{
    AnswerError, CloseReason, DEFAULT_INBOX, HostRequest, OFFERED_VERSION_MAX, OFFERED_VERSION_MIN,
    QueryId, QueryVerdict, ReadError, Session, SessionConfig, SessionEvent, SubmitError, Submitted,
    ThreatName, VerdictSource, read_reaches_end,
};
pub use status::NtStatus;
pub use time::Instant;
