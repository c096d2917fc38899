//! Parameters come from the registry or a config file an admin wrote: any
//! name/value must be applied, clamped or rejected without panicking, and the
//! result must stay within the documented bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinagent_guest::{Params, RegValue};

fuzz_target!(|data: &[u8]| {
    // Layout: [kind][name_len][name bytes][value bytes...]
    let [kind, name_len, rest @ ..] = data else {
        return;
    };
    let name_len = usize::from(*name_len).min(rest.len());
    let (name, value) = rest.split_at(name_len);
    let Ok(name) = core::str::from_utf8(name) else {
        return;
    };
    let dword = |v: &[u8]| {
        let mut b = [0u8; 4];
        for (d, s) in b.iter_mut().zip(v) {
            *d = *s;
        }
        u32::from_le_bytes(b)
    };
    let qword = |v: &[u8]| {
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(v) {
            *d = *s;
        }
        u64::from_le_bytes(b)
    };
    let text = core::str::from_utf8(value).unwrap_or("");
    let value = match kind % 4 {
        0 => RegValue::Dword(dword(value)),
        1 => RegValue::Qword(qword(value)),
        2 => RegValue::Sz(text),
        _ => RegValue::MultiSz(text),
    };
    let mut params = Params::default();
    let _ = params.apply(name, value);
    // Derived values must be computable for whatever was accepted.
    let _ = params.umc_msg_timeout_100ns();
    let _ = params.connector_config().worst_case_wait();
    let _ = params.level_filter();
});
