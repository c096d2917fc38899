//! The guest session is fed bytes by the host (a peer that may be hostile or
//! broken) interleaved with local submits, timer ticks and read completions.
//! The op language and the contract checks live in
//! crates/guest/tests/common/session_script.rs, shared with the test that
//! replays the committed seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/session_script.rs"]
mod session_script;

fuzz_target!(|data: &[u8]| {
    session_script::run(data);
});
