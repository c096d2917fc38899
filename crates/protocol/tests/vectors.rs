//! The protocol's test vectors (`tests/vectors/session.toml`, docs/protocol.md
//! §12) are well formed: every received frame decodes exactly as the vector
//! says, every vector names a real section, and every section of the spec
//! that states a MUST or MUST NOT has at least one vector. The host and guest
//! sessions run the same vectors in `thinagent-scanner` and
//! `thinagent-guest` (`tests/spec_vectors.rs` in each).

#[path = "vectors/schema.rs"]
mod schema;

use std::collections::{BTreeMap, BTreeSet};

use schema::{Receiver, Vector, hex, load};
use thinagent_protocol::{DecodeError, Decoded, MAX_FRAME_LEN, PROTOCOL_VERSION, decode_frame_for};

const SPEC: &str = include_str!("../../../docs/protocol.md");

/// What the decoder of a receiver in a session of `version` (§6) makes of a
/// whole received chunk: a message type name, or the name of the decoding
/// error.
fn decodes_as(bytes: &[u8], limit: usize, version: u16) -> String {
    match decode_frame_for(bytes, limit, version) {
        Ok(Decoded::Frame { frame, consumed }) => {
            assert_eq!(consumed, bytes.len(), "a step holds exactly one frame");
            format!("{:?}", frame.message.message_type())
        }
        Ok(Decoded::Incomplete { needed }) => panic!("incomplete frame, needs {needed}"),
        Err(e) => {
            let name = match e {
                DecodeError::BadMagic { .. } => "BadMagic",
                DecodeError::FrameTooLarge { .. } => "FrameTooLarge",
                DecodeError::ReservedFlags { .. } => "ReservedFlags",
                DecodeError::Malformed { .. } => "Malformed",
                DecodeError::UnsupportedVersion { .. } => "UnsupportedVersion",
                DecodeError::UnknownMessageType { .. } => "UnknownMessageType",
            };
            // A recoverable error covers the whole frame, so "skip" drops
            // exactly this step's bytes.
            if let Some(skip) = e.skip_len() {
                assert_eq!(skip, bytes.len(), "skip length of {e:?}");
            }
            name.to_owned()
        }
    }
}

/// The spec's section numbers ("5.6") and whether each states a MUST.
fn spec_sections() -> BTreeMap<String, bool> {
    let mut sections = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in SPEC.lines() {
        if let Some(title) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
            .or_else(|| line.strip_prefix("#### "))
        {
            let number = title.split_whitespace().next().unwrap_or("");
            let number = number.trim_end_matches('.');
            if number.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                current = Some(number.to_owned());
                sections.insert(number.to_owned(), false);
            } else {
                // A sub-heading without a number ("### Message types") stays
                // part of its numbered section.
            }
        } else if let Some(section) = &current
            && line.contains("MUST")
        {
            sections.insert(section.clone(), true);
        }
    }
    sections
}

#[test]
fn every_vector_is_well_formed_and_decodes_as_described() {
    let vectors = load();
    let sections = spec_sections();
    let mut names = BTreeSet::new();
    for v in &vectors {
        let ctx = &v.name;
        assert!(names.insert(v.name.clone()), "{ctx}: duplicate name");
        assert!(
            sections.contains_key(&v.section),
            "{ctx}: section {} is not a numbered section of docs/protocol.md",
            v.section
        );
        assert!(!v.rule.is_empty() && !v.step.is_empty(), "{ctx}: empty");
        assert!(
            v.receiver == Receiver::Host
                || (v.host_limits.max_frame_len.is_none()
                    && v.host_limits.max_events_in_flight.is_none()
                    && v.host_limits.max_file_size.is_none()
                    && v.host_limits.max_inline_len.is_none()
                    && v.host_policy.error.is_none()
                    && v.host_policy.timeout.is_none()
                    && v.host_policy.too_large.is_none()),
            "{ctx}: host settings on a guest vector"
        );
        // The session version frames are checked against: the handshake
        // version until the host sent (guest: received and accepted) a
        // HelloAck, then the version it chose (§6.3).
        let mut version = PROTOCOL_VERSION;
        for (i, step) in v.step.iter().enumerate() {
            let ctx = format!("{ctx} step {i}");
            match (&step.recv, &step.app) {
                (Some(bytes), None) => {
                    let decodes = step.decodes.as_deref().expect("recv step names `decodes`");
                    let limit = step.decode_limit.unwrap_or(MAX_FRAME_LEN);
                    let bytes = hex(bytes);
                    assert_eq!(decodes_as(&bytes, limit, version), decodes, "{ctx}");
                    match v.receiver {
                        Receiver::Host => {
                            if let Some(ack) = step.expect.iter().find(|e| e.msg_type == "HelloAck")
                            {
                                version =
                                    ack.version.expect("HelloAck expectations name a version");
                            }
                        }
                        Receiver::Guest => {
                            // Accepted unless the guest answered it with
                            // an Error (a queued FileEvent may follow it).
                            if decodes == "HelloAck"
                                && !step.expect.iter().any(|e| e.msg_type == "Error")
                            {
                                version = u16::from_le_bytes([bytes[24], bytes[25]]);
                            }
                        }
                    }
                }
                (None, Some(action)) => {
                    assert!(step.decodes.is_none(), "{ctx}: `decodes` on an app step");
                    let known: &[&str] = match v.receiver {
                        Receiver::Host => &["fetch", "verdict", "close", "advance_ms"],
                        Receiver::Guest => &["submit", "read_completed", "close", "advance_ms"],
                    };
                    assert!(
                        known.contains(&action.as_str()),
                        "{ctx}: unknown app {action}"
                    );
                }
                _ => panic!("{ctx}: a step is exactly one of `recv` and `app`"),
            }
        }
    }
}

/// Sections whose requirements are not receiver rules a session vector can
/// show (what a host keys its state by), with the tests that check them
/// instead; each file must exist.
const COVERED_ELSEWHERE: &[(&str, &str)] = &[("13", "crates/scanner/tests/guest_identity.rs")];

#[test]
fn every_spec_section_with_a_must_has_a_vector() {
    let vectors: Vec<Vector> = load();
    let mut covered: BTreeSet<&str> = vectors.iter().map(|v| v.section.as_str()).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (section, test) in COVERED_ELSEWHERE {
        assert!(
            root.join(test).is_file(),
            "§{section} names {test}, which is gone"
        );
        covered.insert(section);
    }
    let missing: Vec<_> = spec_sections()
        .into_iter()
        .filter(|(number, has_must)| *has_must && !covered.contains(number.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "sections with a MUST and no vector: {missing:?}"
    );
}

#[test]
fn both_sides_have_vectors_for_every_decoder_outcome() {
    let vectors = load();
    for receiver in [Receiver::Host, Receiver::Guest] {
        let outcomes: BTreeSet<&str> = vectors
            .iter()
            .filter(|v| v.receiver == receiver)
            .flat_map(|v| &v.step)
            .filter_map(|s| s.decodes.as_deref())
            .collect();
        for outcome in [
            "BadMagic",
            "FrameTooLarge",
            "UnsupportedVersion",
            "ReservedFlags",
            "UnknownMessageType",
            "Malformed",
        ] {
            assert!(
                outcomes.contains(outcome),
                "{receiver:?}: no vector decodes as {outcome}"
            );
        }
    }
    // A floor, so a broken generator that writes few vectors is noticed.
    assert!(vectors.len() >= 100, "only {} vectors", vectors.len());
}
