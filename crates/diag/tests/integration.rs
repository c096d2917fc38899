//! The diagnosis CLI's integration tests as one test binary, a module
//! per file of this directory (each binary links the scanner, with yara-x
//! and wasmtime: one link instead of eight). One file's tests:
//! `cargo test -p thinagent-diag --test integration scan_cli::`.

mod common;

mod agent_state_cli;
mod control_cli;
mod decode_log_cli;
mod farm_cli;
mod lint_inf_cli;
mod loadorder_cli;
mod scan_cli;
mod simulate_cli;
