//! Arbitrary bytes into `decode_frame` (every version this crate speaks:
//! version 2's inline-content and `OnDemand` `FileEvent`s and the host
//! actions of docs/protocol.md §14 included): it must not panic, a decoded
//! frame must re-encode in its own version to exactly its input bytes, a
//! type of a later version never decodes from an earlier version's frame,
//! and errors must be consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinagent_protocol::{Decoded, HEADER_LEN, MAX_FRAME_LEN, decode_frame};

fuzz_target!(|data: &[u8]| {
    match decode_frame(data) {
        Ok(Decoded::Frame { frame, consumed }) => {
            assert!(consumed >= HEADER_LEN && consumed <= data.len());
            // A host action (0x0040-0x0049) is unknown in a version-1 frame.
            assert!(frame.message.message_type().first_version() <= frame.version);
            let mut out = vec![0u8; MAX_FRAME_LEN];
            let len = frame
                .message
                .encode_for(frame.version, frame.request_id, &mut out)
                .expect("a decoded message re-encodes");
            assert_eq!(
                &out[..len],
                &data[..consumed],
                "re-encoding differs from the input"
            );
            match decode_frame(&out[..len]) {
                Ok(Decoded::Frame {
                    frame: again,
                    consumed: n,
                }) => {
                    assert_eq!((again, n), (frame, consumed));
                }
                other => panic!("re-encoded frame does not decode: {other:?}"),
            }
        }
        Ok(Decoded::Incomplete { needed }) => {
            assert!(needed > data.len() && needed <= MAX_FRAME_LEN)
        }
        Err(error) => {
            assert_eq!(error.is_fatal(), error.skip_len().is_none());
            if let Some(skip) = error.skip_len() {
                assert!(skip >= HEADER_LEN && skip <= data.len());
            }
        }
    }
});
