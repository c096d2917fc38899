//! The host session fed by a hostile or broken guest (raw bytes, valid and
//! invalid frames, answers to its reads honest or not, time steps) and an
//! arbitrary application (verdicts, fetches, consumption, close). The script
//! and its contract checks (no panic, every query ends exactly once, at most
//! one Verdict per ending, nothing after Goodbye, read and byte limits) live
//! in ../host_session_script.rs, shared with the crate's seed-replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinagent_scanner as scanner;

#[path = "../host_session_script.rs"]
mod host_session_script;

fuzz_target!(|data: &[u8]| {
    host_session_script::run(data);
});
