//! The driver takes a host's paths apart with `thinagent_guest::nt_path`
//! (`remediate`, `scan-guest` and `restore --to` name them, and a mount
//! point's reparse data holds one) in the kernel, where a panic is a bug
//! check: on any UTF-16 units these must not panic, and every length or
//! offset they return must lie inside the input and end where its doc
//! says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinagent_guest::nt_path::{
    drive_letter, eq_ascii_case, fold, volume_guid_name_len, volume_name_len,
};

const SLASH: u16 = b'\\' as u16;

fuzz_target!(|data: &[u8]| {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();

    if let Some(end) = volume_name_len(&units) {
        assert!(end <= units.len());
        assert_eq!(units[0], SLASH);
        let slashes = units[..end].iter().filter(|&&u| u == SLASH).count();
        assert_eq!(slashes, 2, "the volume is \\Device\\<name>");
        assert!(end == units.len() || units[end] == SLASH);
    }

    if let Some((letter, rest)) = drive_letter(&units) {
        assert!(rest >= 2 && rest <= units.len());
        assert!(u8::try_from(letter).is_ok_and(|b| b.is_ascii_alphabetic()));
        assert_eq!(units[rest - 2], letter);
        assert_eq!(units[rest - 1], u16::from(b':'));
        assert!(rest == units.len() || units[rest] == SLASH);
    }

    if let Some(len) = volume_guid_name_len(&units) {
        assert!(len <= units.len());
        assert_eq!(units[len - 1], u16::from(b'}'));
        assert!(units.len() - len <= 1, "at most a last backslash after it");
    }

    // Case-insensitive equality is an equivalence that folds only ASCII.
    let (a, b) = units.split_at(units.len() / 2);
    assert!(eq_ascii_case(a, a));
    assert_eq!(eq_ascii_case(a, b), eq_ascii_case(b, a));
    for &u in &units {
        let f = fold(u);
        assert_eq!(fold(f), f);
        assert!(f == u || (u8::try_from(u).is_ok_and(|b| b.is_ascii_uppercase()) && f == u + 32));
    }
});
