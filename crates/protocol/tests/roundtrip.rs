//! Property tests: every valid message survives encode → decode unchanged,
//! and no input makes the decoder panic or misbehave.

mod common;

use common::strategies;
use proptest::prelude::*;
use thinagent_protocol::{
    DecodeError, Decoded, HEADER_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION, decode_frame,
    decode_frame_limited,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn encode_then_decode_is_identity(owned in strategies::message(), request_id in any::<u64>()) {
        let message = owned.message();
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let len = message.encode(request_id, &mut buf).expect("valid message encodes");
        prop_assert_eq!(len, message.encoded_len());
        prop_assert_eq!(len, HEADER_LEN + message.payload_len());
        match decode_frame(&buf[..len]).expect("encoded frame decodes") {
            Decoded::Frame { frame, consumed } => {
                prop_assert_eq!(consumed, len);
                prop_assert_eq!(frame.version, PROTOCOL_VERSION);
                prop_assert_eq!(frame.request_id, request_id);
                prop_assert_eq!(frame.message, message);
            }
            Decoded::Incomplete { needed } => prop_assert!(false, "incomplete, needs {}", needed),
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete(owned in strategies::message(), request_id in any::<u64>()) {
        let message = owned.message();
        let frame = common::samples::encode(request_id, &message);
        for cut in 0..frame.len() {
            match decode_frame(&frame[..cut]) {
                Ok(Decoded::Incomplete { needed }) => prop_assert!(needed > cut && needed <= frame.len()),
                other => prop_assert!(false, "prefix of {} bytes gave {:?}", cut, other),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_decoded_frames_reencode_identically(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        limit in 0usize..=2 * MAX_FRAME_LEN,
    ) {
        check_arbitrary(&bytes, limit)?;
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        owned in strategies::message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut frame = common::samples::encode(1, &owned.message());
        for (index, value) in flips {
            let i = index.index(frame.len());
            frame[i] = value;
        }
        check_arbitrary(&frame, MAX_FRAME_LEN)?;
    }

    #[test]
    fn mutated_version_2_frames_never_panic(
        owned in strategies::message_v2(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // The host actions of §14 and OnDemand events, in version-2 frames.
        let mut scratch = [0u8; strategies::EXCLUSION_SCRATCH];
        let mut frame = common::samples::encode_for(2, 1, &owned.message(&mut scratch));
        for (index, value) in flips {
            let i = index.index(frame.len());
            frame[i] = value;
        }
        check_arbitrary(&frame, MAX_FRAME_LEN)?;
    }
}

/// Decodes `bytes`; a decoded frame must re-encode to exactly the bytes it
/// came from, and an error must be consistent about skipping.
fn check_arbitrary(bytes: &[u8], limit: usize) -> Result<(), TestCaseError> {
    match decode_frame_limited(bytes, limit) {
        Ok(Decoded::Frame { frame, consumed }) => {
            prop_assert!(consumed <= bytes.len() && consumed <= limit);
            let mut out = vec![0u8; MAX_FRAME_LEN];
            let len = frame
                .message
                .encode_for(frame.version, frame.request_id, &mut out)
                .expect("decoded message re-encodes");
            prop_assert_eq!(&out[..len], &bytes[..consumed]);
        }
        Ok(Decoded::Incomplete { needed }) => prop_assert!(needed > bytes.len()),
        Err(error) => {
            if let Some(skip) = error.skip_len() {
                prop_assert!(skip >= HEADER_LEN && skip <= bytes.len());
            }
            prop_assert_eq!(error.is_fatal(), error.skip_len().is_none());
            let malformed = matches!(error, DecodeError::Malformed { .. });
            prop_assert!(
                !malformed || bytes.len() >= HEADER_LEN,
                "malformed needs a header"
            );
        }
    }
    Ok(())
}
