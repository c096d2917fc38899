//! ThinAgent boot load-order model.
//!
//! - [`registry`]: a case-insensitive registry tree, read from `.reg` exports
//!   or offline SYSTEM hives; both readers produce the same [`registry::RegKey`].
//!
//! - [`model`]: services, groups, tag vectors, class and device filters of one
//!   control set ([`model::Model`]).
//! - [`order`]: the boot/system-start initialisation order with PnP device
//!   starts and their deferrals ([`order::compute_order`]).
//! - [`needs`]: the data-driven "who needs whom" table ([`needs::NeedsTable`]).
//! - [`hazard`]: hazards with evidence and fixes ([`hazard::Analysis`]).
//! - [`simulate`]: the boot in virtual time with the real guest `Connector`
//!   ([`simulate::simulate`]).
//!
//! The rules and their sources: `docs/boot-order.md`.
#![forbid(unsafe_code)]

pub mod hazard;
pub mod model;
pub mod needs;
pub mod order;
pub mod registry;
pub mod simulate;
