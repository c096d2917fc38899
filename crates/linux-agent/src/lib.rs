//! ThinAgent Linux guest agent: on-access scanning with fanotify.
//!
//! The same thin agent as the Windows minifilter, built from the portable
//! `thinagent-guest` core: every `FAN_OPEN_PERM` / `FAN_OPEN_EXEC_PERM` event
//! on the watched mounts goes through the open policy, the verdict cache and
//! the protocol session with the host scanner, and is answered exactly once,
//! always within the deadline.
//!
//! * [`core`]: the sans-IO core (event in, decision and actions out).
//! * [`fanotify`]: the OS edge (group, marks, events, responses, `pread`).
//! * [`connect`]: scanner URLs (`vsock://`, `tcp://`, `unix://`).
//! * [`handover`]: the group kept across restarts (systemd's descriptor
//!   store, exec in place).
//! * [`intake`]: each event as the loop reads it: cached allows and the
//!   agent's own opens answered at once, inline bytes read.
//! * [`actions`]: host actions (protocol §14) carried out off the loop:
//!   remediation and the tree walk of a host scan.
//! * [`agent`]: the tokio loop tying them together.
//! * [`logging`]: lines in the driver's `LEVEL: Routine : message: 0xSTATUS` shape.
// `unsafe` only where inherited descriptors are owned (`handover`) and where
// the fanotify group is registered with tokio's reactor (`fanotify`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod actions;
pub mod agent;
pub mod connect;
pub mod core;
pub mod fanotify;
pub mod handover;
pub mod intake;
pub mod logging;
