//! The committed fuzz seed corpus stays valid: every `decode_frame` seed is
//! one whole frame equal to its sample, every `decode_stream` seed decodes.

mod common;

use std::path::Path;

use common::decode_whole;
use common::samples::{encode, encode_for, samples, samples_v2};
use thinagent_protocol::{MAX_FRAME_LEN, StreamDecoder};

fn corpus(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn decode_frame_seeds_are_the_current_samples() {
    for (name, id, message) in samples() {
        let seed = std::fs::read(corpus("decode_frame").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            seed,
            encode(id, &message),
            "{name}: regenerate with `cargo run --example gen_corpus`"
        );
        assert_eq!(decode_whole(&seed).unwrap().message, message);
    }
    for (name, version, id, message) in samples_v2() {
        let seed = std::fs::read(corpus("decode_frame").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            seed,
            encode_for(version, id, &message),
            "{name}: regenerate with `cargo run --example gen_corpus`"
        );
        let frame = decode_whole(&seed).unwrap();
        assert_eq!((frame.version, frame.message), (version, message));
    }
}

#[test]
fn decode_stream_seeds_decode_without_error() {
    let mut count = 0;
    for entry in std::fs::read_dir(corpus("decode_stream")).unwrap() {
        let seed = std::fs::read(entry.unwrap().path()).unwrap();
        let (&n, rest) = seed.split_first().unwrap();
        // Bit 7 of the count byte: a version-2 session (the fuzz target's
        // input layout).
        let stream = &rest[usize::from(n & 0x7f)..];
        let mut decoder = StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]);
        decoder.set_session_version(if n & 0x80 != 0 { 2 } else { 1 });
        assert_eq!(decoder.push(stream), stream.len());
        while decoder.next_frame().unwrap().is_some() {
            count += 1;
        }
        assert_eq!(decoder.buffered(), 0);
    }
    // Each sample alone, plus all of them in one stream per version
    // (`all_frames`, `all_frames_v2`).
    assert_eq!(count, 2 * samples().len() + 2 * samples_v2().len());
}
