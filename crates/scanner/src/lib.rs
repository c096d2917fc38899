//! ThinAgent host scanner: the host end of the vsock channel.
//!
//! Layers, innermost first:
//! - [`engine`]: the scanning engines behind one streaming trait.
//!
//! (The sans-IO host session, caches, signature sets and the tokio service
//! edge are added as modules beside it.)
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod cache;
pub mod config;
pub mod connection;
#[cfg(unix)]
pub mod control;
pub mod engine;
pub mod events;
pub mod farm;
pub mod guest_policy;
pub mod guests;
pub mod listen;
pub mod log_limit;
pub mod metrics;
pub mod quarantine;
pub mod records;
pub mod remediation;
pub mod scan;
pub mod service;
pub mod session;
pub mod signatures;
pub mod state;
pub mod tls;
