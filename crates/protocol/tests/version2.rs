//! Protocol version 2 (docs/protocol.md §5.2, §5.3.1, §6): inline content in
//! `FileEvent`, `HelloAck.max_inline_len`, and the session version a
//! receiver checks every frame against.

mod common;

use common::{raw_frame, strategies};
use proptest::prelude::*;
use thinagent_protocol::{
    CreateDisposition, DecodeError, Decoded, EncodeError, EventKind, FILE_EVENT_V2_FIXED_LEN,
    FileEvent, FileIdentity, FilePath, Goodbye, GoodbyeReason, HEADER_LEN, Heartbeat, HelloAck,
    InlineContent, MAX_FRAME_LEN, MAX_INLINE_LEN, MAX_VERSION, Message, MessageType,
    PROTOCOL_VERSION, PayloadError, StreamDecoder, decode_frame, decode_frame_for,
};

const V2: u16 = 2;

fn event<'a>(path: &'a str, content: InlineContent<'a>, size: u64) -> FileEvent<'a> {
    FileEvent {
        kind: EventKind::Open,
        process_id: 4242,
        desired_access: 1,
        create_disposition: CreateDisposition::Open,
        file: FileIdentity {
            volume_serial: 7,
            file_id: [3; 16],
            size,
            last_write_time: 9,
        },
        path: FilePath::Utf8(path),
        content,
    }
}

fn encode_v(version: u16, id: u64, m: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = m.encode_for(version, id, &mut buf).expect("encodes");
    buf.truncate(n);
    buf
}

fn frame_of(buf: &[u8]) -> Message<'_> {
    match decode_frame(buf).expect("decodes") {
        Decoded::Frame { frame, consumed } => {
            assert_eq!(consumed, buf.len());
            frame.message
        }
        Decoded::Incomplete { needed } => panic!("incomplete, needs {needed}"),
    }
}

fn malformed(buf: &[u8]) -> PayloadError {
    match decode_frame(buf) {
        Err(DecodeError::Malformed { error, .. }) => error,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn ack(version: u16, max_inline_len: u32) -> HelloAck {
    HelloAck {
        version,
        max_frame_len: MAX_FRAME_LEN as u32,
        max_events_in_flight: 64,
        max_read_chunk: 65_480,
        heartbeat_interval_ms: 10_000,
        idle_timeout_ms: 30_000,
        query_timeout_ms: 1_500,
        max_inline_len,
    }
}

#[test]
fn version_2_file_event_layout_is_the_documented_one() {
    let content = b"hello";
    let e = event(
        "/a",
        InlineContent {
            bytes: content,
            whole_file: true,
        },
        5,
    );
    let buf = encode_v(V2, 9, &Message::FileEvent(e));
    assert_eq!(u16::from_le_bytes([buf[4], buf[5]]), V2, "header version");
    let payload = &buf[HEADER_LEN..];
    assert_eq!(payload.len(), FILE_EVENT_V2_FIXED_LEN + 2 + 5);
    assert_eq!(&payload[56..60], &5u32.to_le_bytes(), "content_len");
    assert_eq!(payload[60], 1, "content_flags: WHOLE_FILE");
    assert_eq!(&payload[61..64], &[0, 0, 0], "reserved");
    assert_eq!(&payload[64..66], b"/a", "path after the fixed part");
    assert_eq!(&payload[66..], content, "content after the path");
    assert_eq!(frame_of(&buf), Message::FileEvent(e));
}

#[test]
fn a_version_2_event_without_content_is_the_v1_event_plus_eight_zero_bytes() {
    let e = event("/x", InlineContent::NONE, 100);
    let v1 = encode_v(PROTOCOL_VERSION, 3, &Message::FileEvent(e));
    let v2 = encode_v(V2, 3, &Message::FileEvent(e));
    assert_eq!(v2.len(), v1.len() + 8);
    assert_eq!(
        &v2[HEADER_LEN..HEADER_LEN + 56],
        &v1[HEADER_LEN..HEADER_LEN + 56]
    );
    assert_eq!(&v2[HEADER_LEN + 56..HEADER_LEN + 64], &[0; 8]);
    assert_eq!(&v2[HEADER_LEN + 64..], &v1[HEADER_LEN + 56..]);
    assert_eq!(frame_of(&v2), Message::FileEvent(e));
}

#[test]
fn version_1_cannot_carry_content() {
    for content in [
        InlineContent {
            bytes: b"abc",
            whole_file: false,
        },
        InlineContent {
            bytes: b"",
            whole_file: true,
        },
    ] {
        let e = event("/a", content, content.bytes.len() as u64);
        let mut buf = [0u8; 256];
        assert_eq!(
            Message::FileEvent(e).encode(1, &mut buf),
            Err(EncodeError::Invalid(PayloadError::NotInVersion {
                field: "content",
                version: 1
            }))
        );
        assert!(Message::FileEvent(e).encode_for(V2, 1, &mut buf).is_ok());
    }
}

#[test]
fn whole_file_content_must_be_the_stated_size() {
    let e = event(
        "/a",
        InlineContent {
            bytes: b"abc",
            whole_file: true,
        },
        4,
    );
    let mut buf = [0u8; 256];
    assert!(matches!(
        Message::FileEvent(e).encode_for(V2, 1, &mut buf),
        Err(EncodeError::Invalid(PayloadError::OutOfRange {
            field: "content_len",
            value: 3
        }))
    ));
    // The same bytes on the wire, built by hand: the decoder refuses them.
    let good = event(
        "/a",
        InlineContent {
            bytes: b"abc",
            whole_file: true,
        },
        3,
    );
    let mut raw = encode_v(V2, 1, &Message::FileEvent(good));
    raw[HEADER_LEN + 40..HEADER_LEN + 48].copy_from_slice(&4u64.to_le_bytes());
    assert_eq!(
        malformed(&raw),
        PayloadError::OutOfRange {
            field: "content_len",
            value: 3
        }
    );
    // Partial content may be shorter than the file: that is what it is for.
    let partial = event(
        "/a",
        InlineContent {
            bytes: b"abc",
            whole_file: false,
        },
        1 << 20,
    );
    let buf = encode_v(V2, 1, &Message::FileEvent(partial));
    assert_eq!(frame_of(&buf), Message::FileEvent(partial));
}

#[test]
fn content_flags_and_reserved_bytes_are_checked() {
    let e = event(
        "/a",
        InlineContent {
            bytes: b"z",
            whole_file: false,
        },
        10,
    );
    let good = encode_v(V2, 1, &Message::FileEvent(e));
    for (offset, value, field) in [
        (60, 2u8, "content_flags"),
        (60, 0x81, "content_flags"),
        (61, 1, "reserved"),
        (62, 1, "reserved"),
        (63, 1, "reserved"),
    ] {
        let mut bad = good.clone();
        bad[HEADER_LEN + offset] = value;
        assert_eq!(
            malformed(&bad),
            PayloadError::ReservedNonZero { field },
            "offset {offset}"
        );
    }
}

#[test]
fn content_length_must_match_the_payload() {
    let e = event(
        "/a",
        InlineContent {
            bytes: b"abcd",
            whole_file: false,
        },
        10,
    );
    let good = encode_v(V2, 1, &Message::FileEvent(e));
    for content_len in [3u32, 5, u32::MAX] {
        let mut bad = good.clone();
        bad[HEADER_LEN + 56..HEADER_LEN + 60].copy_from_slice(&content_len.to_le_bytes());
        assert!(
            matches!(malformed(&bad), PayloadError::LengthMismatch { .. }),
            "content_len {content_len}"
        );
    }
    // A version-2 payload cut inside the 8 new bytes is truncated.
    let cut = raw_frame(
        V2,
        MessageType::FileEvent.to_wire(),
        0,
        1,
        &good[HEADER_LEN..HEADER_LEN + 60],
    );
    assert_eq!(
        malformed(&cut),
        PayloadError::Truncated {
            needed: FILE_EVENT_V2_FIXED_LEN,
            actual: 60
        }
    );
}

#[test]
fn hello_ack_max_inline_len_exists_from_version_2() {
    let a2 = ack(2, 4096);
    let buf = {
        let mut b = vec![0u8; 64];
        let n = Message::HelloAck(a2).encode(1, &mut b).unwrap();
        b.truncate(n);
        b
    };
    assert_eq!(
        u16::from_le_bytes([buf[4], buf[5]]),
        1,
        "HelloAck is sent as version 1"
    );
    assert_eq!(
        &buf[HEADER_LEN + 28..HEADER_LEN + 32],
        &4096u32.to_le_bytes()
    );
    assert_eq!(frame_of(&buf), Message::HelloAck(a2));
    // In a HelloAck choosing version 1 the field is reserved.
    let mut v1 = buf.clone();
    v1[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(
        malformed(&v1),
        PayloadError::ReservedNonZero { field: "reserved1" }
    );
    let mut b = [0u8; 64];
    assert_eq!(
        Message::HelloAck(ack(1, 1)).encode(1, &mut b),
        Err(EncodeError::Invalid(PayloadError::NotInVersion {
            field: "max_inline_len",
            version: 1
        }))
    );
    // Its bound: what fits beside a one-byte path in the host's frame limit.
    assert_eq!(MAX_INLINE_LEN as usize, MAX_FRAME_LEN - HEADER_LEN - 64 - 1);
    assert!(
        Message::HelloAck(ack(2, MAX_INLINE_LEN))
            .encode(1, &mut b)
            .is_ok()
    );
    assert!(
        Message::HelloAck(ack(2, MAX_INLINE_LEN + 1))
            .encode(1, &mut b)
            .is_err()
    );
    let small = HelloAck {
        max_frame_len: 4096,
        max_read_chunk: 4096 - 56,
        ..ack(2, 4096 - 24 - 64 - 1)
    };
    assert!(Message::HelloAck(small).encode(1, &mut b).is_ok());
    let over = HelloAck {
        max_inline_len: 4096 - 24 - 64,
        ..small
    };
    assert!(matches!(
        Message::HelloAck(over).encode(1, &mut b),
        Err(EncodeError::Invalid(PayloadError::OutOfRange {
            field: "max_inline_len",
            ..
        }))
    ));
}

#[test]
fn frames_are_checked_against_the_session_version() {
    let ping = Message::Ping(Heartbeat {
        nonce: 1,
        timestamp_ms: 2,
    });
    let goodbye = Message::Goodbye(Goodbye {
        reason: GoodbyeReason::Shutdown,
    });
    let unsupported = |buf: &[u8], session: u16| {
        matches!(
            decode_frame_for(buf, MAX_FRAME_LEN, session),
            Err(DecodeError::UnsupportedVersion { .. })
        )
    };
    let ok = |buf: &[u8], session: u16| {
        matches!(
            decode_frame_for(buf, MAX_FRAME_LEN, session),
            Ok(Decoded::Frame { .. })
        )
    };
    let ping1 = encode_v(1, 5, &ping);
    let ping2 = encode_v(2, 5, &ping);
    // Before the handshake (session 1) a version-2 frame is skipped, as by
    // a receiver that speaks version 1 only; after choosing 2, version-1
    // frames of other types are skipped the same way.
    assert!(ok(&ping1, 1) && unsupported(&ping2, 1));
    assert!(ok(&ping2, 2) && unsupported(&ping1, 2));
    // Frozen types are accepted as version 1 in every session.
    for m in [
        goodbye,
        Message::HelloAck(ack(2, 0)),
        Message::Error(thinagent_protocol::ErrorMessage {
            code: thinagent_protocol::ErrorCode::Internal,
            text: "x",
        }),
    ] {
        let v1 = encode_v(1, 5, &m);
        assert!(ok(&v1, 2), "{m:?} as version 1 in a version-2 session");
        let v2 = encode_v(2, 5, &m);
        assert!(ok(&v2, 2) && unsupported(&v2, 1), "{m:?} as version 2");
    }
    // A version this implementation does not speak is skipped everywhere.
    let mut ping3 = ping2.clone();
    ping3[4..6].copy_from_slice(&(MAX_VERSION + 1).to_le_bytes());
    assert!(unsupported(&ping3, 1) && unsupported(&ping3, 2));
    assert!(matches!(
        ping.encode_for(MAX_VERSION + 1, 1, &mut [0u8; 64]),
        Err(EncodeError::Invalid(_))
    ));
    // The stream decoder starts at the handshake version and follows
    // set_session_version; clear() goes back to it.
    let mut d = StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]);
    assert_eq!(d.session_version(), PROTOCOL_VERSION);
    d.push(&ping2);
    assert!(matches!(
        d.next_frame(),
        Err(DecodeError::UnsupportedVersion { .. })
    ));
    d.set_session_version(2);
    d.push(&ping2);
    assert!(matches!(d.next_frame(), Ok(Some(f)) if f.version == 2));
    d.clear();
    assert_eq!(d.session_version(), PROTOCOL_VERSION);
}

fn owned_event() -> impl Strategy<Value = (String, Vec<u8>, bool, u64, u64)> {
    (
        "[a-z/]{1,40}",
        proptest::collection::vec(any::<u8>(), 0..2048),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(path, content, whole, size, id)| {
            let size = if whole { content.len() as u64 } else { size };
            (path, content, whole, size, id)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn version_2_events_round_trip((path, content, whole, size, id) in owned_event()) {
        let e = event(&path, InlineContent { bytes: &content, whole_file: whole }, size);
        let m = Message::FileEvent(e);
        let buf = encode_v(V2, id.max(1), &m);
        prop_assert_eq!(buf.len(), m.encoded_len_for(V2));
        match decode_frame_for(&buf, MAX_FRAME_LEN, V2).unwrap() {
            Decoded::Frame { frame, consumed } => {
                prop_assert_eq!(consumed, buf.len());
                prop_assert_eq!(frame.version, V2);
                prop_assert_eq!(frame.message, m);
            }
            Decoded::Incomplete { .. } => prop_assert!(false),
        }
        // Every strict prefix is incomplete, never an error.
        for cut in [0, 23, 24, buf.len() / 2, buf.len() - 1] {
            let is_incomplete = matches!(decode_frame(&buf[..cut]), Ok(Decoded::Incomplete { .. }));
            prop_assert!(is_incomplete);
        }
    }
}

// ------------------------------------------------------ host actions (§14)

/// Encodes `m` in version 2 with request id `id` into a new vector.
fn encode_v2(id: u64, m: &Message<'_>) -> Vec<u8> {
    encode_v(V2, id, m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn host_action_messages_round_trip_in_version_2(
        owned in strategies::message_v2(),
        id in any::<u64>(),
    ) {
        let mut scratch = [0u8; strategies::EXCLUSION_SCRATCH];
        let m = owned.message(&mut scratch);
        let buf = encode_v2(id, &m);
        prop_assert_eq!(buf.len(), m.encoded_len_for(V2));
        prop_assert_eq!(u16::from_le_bytes([buf[4], buf[5]]), V2);
        for decoded in [decode_frame(&buf), decode_frame_for(&buf, MAX_FRAME_LEN, V2)] {
            match decoded.unwrap() {
                Decoded::Frame { frame, consumed } => {
                    prop_assert_eq!(consumed, buf.len());
                    prop_assert_eq!(frame.version, V2);
                    prop_assert_eq!(frame.request_id, id);
                    prop_assert_eq!(frame.message, m);
                }
                Decoded::Incomplete { .. } => prop_assert!(false),
            }
        }
    }

    #[test]
    fn every_strict_prefix_of_a_host_action_is_incomplete(
        owned in strategies::message_v2(),
        id in any::<u64>(),
    ) {
        let mut scratch = [0u8; strategies::EXCLUSION_SCRATCH];
        let buf = encode_v2(id, &owned.message(&mut scratch));
        for cut in 0..buf.len() {
            let needed = if cut < HEADER_LEN { HEADER_LEN } else { buf.len() };
            prop_assert_eq!(decode_frame(&buf[..cut]), Ok(Decoded::Incomplete { needed }));
        }
    }

    #[test]
    fn host_actions_do_not_exist_in_version_1(
        owned in strategies::message_v2(),
        id in any::<u64>(),
    ) {
        let mut scratch = [0u8; strategies::EXCLUSION_SCRATCH];
        let m = owned.message(&mut scratch);
        let mut out = vec![0u8; MAX_FRAME_LEN];
        let field = if matches!(m, Message::FileEvent(_)) { "kind" } else { "msg_type" };
        prop_assert_eq!(
            m.encode_for(PROTOCOL_VERSION, id, &mut out),
            Err(EncodeError::Invalid(PayloadError::NotInVersion { field, version: 1 }))
        );
        // The same bytes with header version 1: an unknown type (§9 check
        // 5, skipped), or for an OnDemand event an unknown kind (Malformed).
        let mut v1 = encode_v2(id, &m);
        v1[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        match decode_frame(&v1) {
            Err(DecodeError::UnknownMessageType { msg_type, request_id, frame_len }) => {
                prop_assert!(!matches!(m, Message::FileEvent(_)));
                prop_assert_eq!(msg_type, m.message_type().to_wire());
                prop_assert_eq!(request_id, id);
                prop_assert_eq!(frame_len, v1.len());
            }
            Err(DecodeError::Malformed { msg_type: MessageType::FileEvent, .. }) => {
                // A version-1 FileEvent's fixed part is 8 bytes shorter, so
                // the version-2 payload never parses as one.
                prop_assert!(matches!(m, Message::FileEvent(_)));
            }
            other => prop_assert!(false, "version-1 frame of {:?} gave {:?}", m, other),
        }
    }
}
