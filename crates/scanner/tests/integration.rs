//! The scanner's integration tests as one test binary, a module per file
//! of this directory. Each test binary links the scanner with yara-x and
//! wasmtime (130 to 220 MB each in a debug build): sixteen of them took
//! gigabytes of CI's disk and minutes of linking. One file's tests:
//! `cargo test -p thinagent-scanner --test integration guest_identity::`.

mod common;
/// Test servers several modules start.
mod support {
    pub mod clamd_daemon;
    pub mod redis_server;
}

mod check_config;
mod clamd_engine;
mod control_socket;
mod dist_files;
mod farm_cache;
mod farm_processes;
mod guest_identity;
mod service_clamd;
mod service_e2e;
mod service_events;
mod service_hostile;
mod service_load;
mod service_metrics;
mod service_v2;
mod spec_vectors;
#[cfg(feature = "yara")]
mod yara_engine;
