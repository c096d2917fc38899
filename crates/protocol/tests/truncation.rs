//! Truncated input: every prefix of a valid frame (or of several frames) is
//! `Incomplete` and never a different message.

mod common;

use common::samples::{encode, encode_for, samples, samples_v2};
use thinagent_protocol::{Decoded, HEADER_LEN, decode_frame};

#[test]
fn every_prefix_of_every_sample_is_incomplete_with_a_correct_need() {
    for (name, request_id, message) in samples() {
        let frame = encode(request_id, &message);
        for cut in 0..frame.len() {
            let expected = if cut < HEADER_LEN {
                HEADER_LEN
            } else {
                frame.len()
            };
            assert_eq!(
                decode_frame(&frame[..cut]),
                Ok(Decoded::Incomplete { needed: expected }),
                "{name}: prefix of {cut} bytes"
            );
        }
    }
}

#[test]
fn every_prefix_of_every_version_2_sample_is_incomplete_with_a_correct_need() {
    // Inline content, OnDemand events and every host-action message (§14).
    for (name, version, request_id, message) in samples_v2() {
        let frame = encode_for(version, request_id, &message);
        for cut in 0..frame.len() {
            let expected = if cut < HEADER_LEN {
                HEADER_LEN
            } else {
                frame.len()
            };
            assert_eq!(
                decode_frame(&frame[..cut]),
                Ok(Decoded::Incomplete { needed: expected }),
                "{name}: prefix of {cut} bytes"
            );
        }
    }
}

#[test]
fn concatenated_frames_decode_one_at_a_time_and_stop_at_a_partial_one() {
    let all: Vec<u8> = samples()
        .iter()
        .flat_map(|(_, id, m)| encode(*id, m))
        .collect();
    let expected = samples();
    // Cut the stream everywhere: the frames wholly before the cut decode, in
    // order, then the rest is Incomplete.
    for cut in (0..=all.len()).step_by(7) {
        let mut rest = &all[..cut];
        let mut seen = 0;
        loop {
            match decode_frame(rest).expect("valid stream") {
                Decoded::Frame { frame, consumed } => {
                    let (name, id, message) = &expected[seen];
                    assert_eq!(
                        (frame.request_id, frame.message),
                        (*id, *message),
                        "frame {name}"
                    );
                    rest = &rest[consumed..];
                    seen += 1;
                }
                Decoded::Incomplete { needed } => {
                    assert!(needed > rest.len());
                    break;
                }
            }
        }
        let whole_before_cut = expected
            .iter()
            .scan(0, |end, (_, id, m)| {
                *end += encode(*id, m).len();
                Some(*end)
            })
            .filter(|end| *end <= cut)
            .count();
        assert_eq!(seen, whole_before_cut, "cut at {cut}");
    }
}
