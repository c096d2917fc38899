//! The Linux agent's integration tests as one test binary, a module per
//! file of this directory (each binary links the scanner, with yara-x and
//! wasmtime: one link instead of eight). One file's tests:
//! `cargo test -p thinagent-linux-agent --test integration onaccess::`.

mod common;

mod dist_files;
mod host_actions;
mod host_actions_e2e;
mod inline;
mod kernel_cache;
mod onaccess;
mod restart;
mod tls;
