//! ThinAgent boot load-order model.
//!
//! - [`registry`]: a case-insensitive registry tree, read from `.reg` exports
//!   or offline SYSTEM hives; both readers produce the same [`registry::RegKey`].
//!
//! (The service/driver model, the order computation, hazards and the
//! simulator are added as modules beside it.)
#![forbid(unsafe_code)]

pub mod hazard;
pub mod model;
pub mod needs;
pub mod order;
pub mod registry;
pub mod simulate;
