//! ThinAgent guest driver: a Windows file-system minifilter that asks a host
//! scanner over vsock for a verdict on every file open.
//!
//! This library is the root package of the workspace and builds to
//! `thinagent.sys` (a `cdylib`) with windows-drivers-rs. Everything it does on
//! Windows lives in the `windows` module; every decision it takes (capture
//! retries, sessions, verdict cache, log lines) lives in the portable crates
//! `thinagent-guest` and `thinagent-protocol`, which build and are tested on
//! any host.
//!
//! On hosts other than Windows this crate compiles only its portable part,
//! [`filter_registration`] (the Filter Manager registration tables, built
//! from `windows-sys` types and unit-tested there): no kernel calls, no
//! `unsafe`, no `no_std`. That keeps `cargo build`,
//! `cargo clippy --all-targets` and the system tests in `tests/` working on
//! Linux, where `wdk-build` refuses to run.
//!
//! Build, install and debugging instructions: `docs/windows.md`.

// `no_std` only for the real driver. Plain `cfg_attr(not(test), no_std)`, as
// the windows-drivers-rs samples write it, would also make the Linux build
// `no_std`, and a `no_std` cdylib needs its own `#[panic_handler]` (on
// Windows `wdk-panic` provides it, and it does not build elsewhere).
#![cfg_attr(all(windows, not(test)), no_std)]
// Off Windows there is nothing unsafe to do. On Windows the `DriverEntry`
// export needs `#[unsafe(export_name)]`, which the `unsafe_code` lint rejects.
#![cfg_attr(not(windows), forbid(unsafe_code))]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(windows)]
extern crate alloc;

pub mod filter_registration;
pub mod session_sizes;

#[cfg(windows)]
pub mod windows;
