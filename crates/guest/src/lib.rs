//! ThinAgent portable guest logic (work in progress: see the modules).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod clamp;
pub mod connector;
pub mod file_key;
pub mod status;
pub mod time;

pub use cache::{CacheStats, CachedVerdict, InsertOutcome, VerdictCache};
pub use clamp::{Clamp, Clamps};
pub use connector::{Backoff, Connector, ConnectorAction, ConnectorConfig, GiveUpReason};
pub use file_key::FileKey;
pub use status::NtStatus;
pub use time::Instant;
pub mod policy;
pub use policy::{
    OpenDecision, OpenPolicy, OpenRequest, PathRef, PathStyle, PolicyError, SkipReason,
};
pub mod log;
pub use log::{Level, LevelFilter, LogLine, LogRecord, ParsedLine, parse_line};
