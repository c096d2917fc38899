//! The worked examples in `docs/protocol.md` are what the code encodes and
//! decodes, byte for byte.

mod common;

use common::decode_whole;
use common::samples::{EXAMPLE_FILE_EVENT, EXAMPLE_FILE_EVENT_V2, EXAMPLE_VERDICT, encode_for};
use thinagent_protocol::Message;

const PROTOCOL_MD: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/protocol.md"
));

/// The bytes of the ```text block after `<!-- example: NAME -->`.
fn example(name: &str) -> Vec<u8> {
    let marker = format!("<!-- example: {name} -->");
    let start = PROTOCOL_MD
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in docs/protocol.md"));
    let after = &PROTOCOL_MD[start + marker.len()..];
    let block = after
        .trim_start()
        .strip_prefix("```text")
        .expect("a ```text block follows the marker");
    let end = block.find("```").expect("closing fence");
    block[..end]
        .split_whitespace()
        .map(|byte| {
            u8::from_str_radix(byte, 16).unwrap_or_else(|_| panic!("bad hex byte {byte:?}"))
        })
        .collect()
}

fn check(name: &str, version: u16, request_id: u64, message: Message<'_>) {
    let documented = example(name);
    assert_eq!(
        encode_for(version, request_id, &message),
        documented,
        "docs/protocol.md example {name} is stale"
    );
    let frame = decode_whole(&documented).unwrap();
    assert_eq!(
        (frame.version, frame.request_id, frame.message),
        (version, request_id, message)
    );
}

#[test]
fn file_event_example_matches_the_code() {
    check("file_event", 1, 7, EXAMPLE_FILE_EVENT);
}

#[test]
fn verdict_example_matches_the_code() {
    check("verdict", 1, 7, EXAMPLE_VERDICT);
}

#[test]
fn version_2_file_event_example_matches_the_code() {
    check("file_event_v2", 2, 7, EXAMPLE_FILE_EVENT_V2);
}
