//! One test per decoding and encoding error path.

mod common;

use common::samples::{encode, samples};
use common::{decode_whole, payload_error, raw_frame};
use thinagent_protocol::{
    Decision, DecodeError, Decoded, EncodeError, ErrorCode, ErrorMessage, FileEvent, FilePath,
    HEADER_LEN, Hello, HelloAck, MAX_FRAME_LEN, MAX_READ_CHUNK, MAX_VERSION, Message, MessageType,
    OsError, PayloadError, ReadData, ReadOutcome, ReadRequest, Verdict, decode_frame,
    decode_frame_limited,
};

/// The payload of the sample named `name`.
fn payload_of(name: &str) -> (MessageType, Vec<u8>) {
    let (_, id, message) = samples().into_iter().find(|(n, ..)| *n == name).unwrap();
    (
        message.message_type(),
        encode(id, &message)[HEADER_LEN..].to_vec(),
    )
}

/// The sample `name`'s payload with `bytes` written at `offset`.
fn patched(name: &str, offset: usize, bytes: &[u8]) -> (MessageType, Vec<u8>) {
    let (t, mut payload) = payload_of(name);
    payload[offset..offset + bytes.len()].copy_from_slice(bytes);
    (t, payload)
}

fn patched_error(name: &str, offset: usize, bytes: &[u8]) -> PayloadError {
    let (t, payload) = patched(name, offset, bytes);
    payload_error(t, &payload)
}

fn sample(name: &str) -> Message<'static> {
    samples().into_iter().find(|(n, ..)| *n == name).unwrap().2
}

// ---- framing ----------------------------------------------------------------

#[test]
fn bad_magic_is_fatal_and_detected_on_the_first_wrong_byte() {
    let err = decode_frame(b"TX").unwrap_err();
    assert_eq!(err, DecodeError::BadMagic { found: *b"TX\0\0" });
    assert!(err.is_fatal());
    assert_eq!(err.skip_len(), None);
    assert_eq!(err.request_id(), None);
    assert_eq!(err.error_code(), ErrorCode::MalformedFrame);
    let mut frame = encode(1, &sample("ping"));
    frame[3] = b'X';
    assert_eq!(
        decode_frame(&frame).unwrap_err(),
        DecodeError::BadMagic { found: *b"TAGX" }
    );
    assert_eq!(
        decode_frame(b"TAG"),
        Ok(Decoded::Incomplete { needed: HEADER_LEN })
    );
    assert_eq!(
        decode_frame(b""),
        Ok(Decoded::Incomplete { needed: HEADER_LEN })
    );
}

#[test]
fn frame_too_large_is_fatal_as_soon_as_the_header_arrives() {
    let header = &raw_frame(1, MessageType::Ping.to_wire(), 0, 1, &[])[..HEADER_LEN - 4];
    let mut buf = header.to_vec();
    buf.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = decode_frame(&buf).unwrap_err();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            frame_len: u64::from(u32::MAX) + 24,
            max: MAX_FRAME_LEN
        }
    );
    assert!(err.is_fatal());
    assert_eq!(err.error_code(), ErrorCode::LimitExceeded);

    let exactly_max = (MAX_FRAME_LEN - HEADER_LEN) as u32;
    buf[20..24].copy_from_slice(&exactly_max.to_le_bytes());
    assert_eq!(
        decode_frame(&buf),
        Ok(Decoded::Incomplete {
            needed: MAX_FRAME_LEN
        })
    );
    buf[20..24].copy_from_slice(&(exactly_max + 1).to_le_bytes());
    assert!(matches!(
        decode_frame(&buf),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

#[test]
fn a_lower_limit_is_enforced_and_a_higher_one_is_capped() {
    let ping = encode(1, &sample("ping"));
    assert_eq!(
        decode_frame_limited(&ping, ping.len() - 1),
        Err(DecodeError::FrameTooLarge {
            frame_len: ping.len() as u64,
            max: ping.len() - 1
        })
    );
    assert!(matches!(
        decode_frame_limited(&ping, ping.len()),
        Ok(Decoded::Frame { .. })
    ));
    let mut big = raw_frame(1, MessageType::Ping.to_wire(), 0, 1, &[]);
    big[20..24].copy_from_slice(&(MAX_FRAME_LEN as u32).to_le_bytes());
    assert_eq!(
        decode_frame_limited(&big, usize::MAX),
        Err(DecodeError::FrameTooLarge {
            frame_len: MAX_FRAME_LEN as u64 + 24,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn unsupported_version_is_recoverable_once_the_frame_is_whole() {
    for version in [0u16, MAX_VERSION + 1, u16::MAX] {
        let frame = raw_frame(
            version,
            MessageType::Ping.to_wire(),
            0xffff_ffff,
            77,
            &[9; 10],
        );
        assert_eq!(
            decode_frame(&frame[..frame.len() - 1]),
            Ok(Decoded::Incomplete {
                needed: frame.len()
            })
        );
        let err = decode_frame(&frame).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnsupportedVersion {
                version,
                msg_type: MessageType::Ping.to_wire(),
                request_id: 77,
                frame_len: frame.len()
            }
        );
        assert!(!err.is_fatal());
        assert_eq!(err.skip_len(), Some(frame.len()));
        assert_eq!(err.request_id(), Some(77));
        assert_eq!(err.error_code(), ErrorCode::VersionUnsupported);
    }
}

#[test]
fn reserved_flags_are_fatal() {
    let frame = raw_frame(1, MessageType::Ping.to_wire(), 0x8000_0000, 4, &[0; 16]);
    let err = decode_frame(&frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::ReservedFlags {
            flags: 0x8000_0000,
            msg_type: MessageType::Ping.to_wire(),
            request_id: 4
        }
    );
    assert!(err.is_fatal());
    assert!(!err.concerns_error_frame());
    assert_eq!(err.request_id(), Some(4));
    assert_eq!(err.error_code(), ErrorCode::MalformedFrame);
}

#[test]
fn unknown_message_type_is_recoverable() {
    for msg_type in [0u16, 0x0003, 0x0012, 0x00F2, 0xFFFF] {
        let frame = raw_frame(1, msg_type, 0, 99, &[1, 2, 3]);
        let err = decode_frame(&frame).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownMessageType {
                msg_type,
                request_id: 99,
                frame_len: HEADER_LEN + 3
            }
        );
        assert_eq!(err.skip_len(), Some(HEADER_LEN + 3));
        assert_eq!(err.error_code(), ErrorCode::UnknownMessageType);
    }
}

#[test]
fn malformed_payload_is_fatal_and_names_the_frame() {
    let frame = raw_frame(1, MessageType::Goodbye.to_wire(), 0, 6, &[1, 0, 0]);
    let err = decode_frame(&frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Malformed {
            msg_type: MessageType::Goodbye,
            request_id: 6,
            error: PayloadError::Truncated {
                needed: 4,
                actual: 3
            }
        }
    );
    assert!(err.is_fatal());
    assert_eq!(err.request_id(), Some(6));
    assert_eq!(err.error_code(), ErrorCode::MalformedFrame);
    assert!(core::error::Error::source(&err).is_some());
}

#[test]
fn every_error_displays_something_specific() {
    let errors = [
        DecodeError::BadMagic { found: *b"ABCD" }.to_string(),
        DecodeError::FrameTooLarge {
            frame_len: 1,
            max: 0,
        }
        .to_string(),
        DecodeError::ReservedFlags {
            flags: 1,
            msg_type: 0x30,
            request_id: 2,
        }
        .to_string(),
        DecodeError::UnsupportedVersion {
            version: 3,
            msg_type: 1,
            request_id: 2,
            frame_len: 24,
        }
        .to_string(),
        DecodeError::UnknownMessageType {
            msg_type: 0x7777,
            request_id: 2,
            frame_len: 24,
        }
        .to_string(),
        EncodeError::BufferTooSmall {
            needed: 30,
            available: 20,
        }
        .to_string(),
        EncodeError::TooLarge {
            len: 70_000,
            max: MAX_FRAME_LEN,
        }
        .to_string(),
        EncodeError::Invalid(PayloadError::Empty { field: "path" }).to_string(),
        PayloadError::Truncated {
            needed: 4,
            actual: 3,
        }
        .to_string(),
        PayloadError::LengthMismatch {
            expected: 4,
            actual: 3,
        }
        .to_string(),
        PayloadError::UnknownValue {
            field: "kind",
            value: 9,
        }
        .to_string(),
        PayloadError::ReservedNonZero { field: "reserved" }.to_string(),
        PayloadError::OutOfRange {
            field: "length",
            value: 0,
        }
        .to_string(),
        PayloadError::InvalidUtf8 { field: "text" }.to_string(),
        PayloadError::OddUtf16Length { field: "path" }.to_string(),
        PayloadError::TooLong {
            field: "text",
            len: 2000,
            max: 1024,
        }
        .to_string(),
    ];
    assert!(errors[0].contains("41, 42, 43, 44"), "{}", errors[0]);
    assert!(errors[4].contains("0x7777"));
    assert!(errors[7].contains("path"));
    for (i, a) in errors.iter().enumerate() {
        for b in &errors[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

// ---- payload length rules ---------------------------------------------------

#[test]
fn fixed_size_payloads_must_be_exact() {
    for name in ["hello_ack", "read_request", "ping", "pong", "goodbye"] {
        let (t, mut payload) = payload_of(name);
        let len = payload.len();
        assert_eq!(
            payload_error(t, &payload[..len - 1]),
            PayloadError::Truncated {
                needed: len,
                actual: len - 1
            },
            "{name}"
        );
        payload.push(0);
        assert_eq!(
            payload_error(t, &payload),
            PayloadError::LengthMismatch {
                expected: len,
                actual: len + 1
            },
            "{name}"
        );
    }
}

#[test]
fn variable_payloads_must_match_their_length_field() {
    // (sample, offset of its length field, width, fixed part length)
    for (name, offset, width, fixed) in [
        ("hello", 6, 2, 32),
        ("file_event", 2, 2, 56),
        ("verdict", 2, 2, 8),
        ("read_data", 24, 4, 32),
        ("error", 2, 2, 4),
    ] {
        let (t, payload) = payload_of(name);
        let (_, short) = payload_of(name);
        assert_eq!(
            payload_error(t, &short[..fixed - 1]),
            PayloadError::Truncated {
                needed: fixed,
                actual: fixed - 1
            },
            "{name}"
        );
        let mut longer = payload.clone();
        longer.push(b'x');
        assert_eq!(
            payload_error(t, &longer),
            PayloadError::LengthMismatch {
                expected: payload.len(),
                actual: payload.len() + 1
            },
            "{name}"
        );
        let mut lying = payload.clone();
        let declared = payload.len() - fixed + 1;
        lying[offset..offset + width].copy_from_slice(&declared.to_le_bytes()[..width]);
        assert_eq!(
            payload_error(t, &lying),
            PayloadError::LengthMismatch {
                expected: payload.len() + 1,
                actual: payload.len()
            },
            "{name}"
        );
    }
}

// ---- enums ------------------------------------------------------------------

#[test]
fn unknown_enum_values_are_rejected() {
    let unknown = |field, value| PayloadError::UnknownValue { field, value };
    assert_eq!(patched_error("hello", 4, &[0, 0]), unknown("os_kind", 0));
    assert_eq!(patched_error("hello", 4, &[3, 0]), unknown("os_kind", 3));
    assert_eq!(patched_error("file_event", 0, &[0]), unknown("kind", 0));
    assert_eq!(patched_error("file_event", 0, &[4]), unknown("kind", 4));
    assert_eq!(
        patched_error("file_event", 1, &[0]),
        unknown("path_encoding", 0)
    );
    assert_eq!(
        patched_error("file_event", 1, &[4]),
        unknown("path_encoding", 4)
    );
    assert_eq!(
        patched_error("file_event", 12, &[6, 0, 0, 0]),
        unknown("create_disposition", 6)
    );
    assert_eq!(patched_error("verdict", 0, &[0]), unknown("decision", 0));
    assert_eq!(patched_error("verdict", 0, &[4]), unknown("decision", 4));
    assert_eq!(patched_error("read_data", 16, &[0]), unknown("status", 0));
    assert_eq!(patched_error("read_data", 16, &[5]), unknown("status", 5));
    assert_eq!(
        patched_error("read_data_error", 17, &[3]),
        unknown("error_space", 3)
    );
    assert_eq!(
        patched_error("read_data_error", 17, &[0]),
        unknown("error_space", 0)
    );
    assert_eq!(patched_error("error", 0, &[0, 0]), unknown("code", 0));
    assert_eq!(patched_error("error", 0, &[7, 0]), unknown("code", 7));
    assert_eq!(patched_error("goodbye", 0, &[0, 0]), unknown("reason", 0));
    assert_eq!(patched_error("goodbye", 0, &[7, 0]), unknown("reason", 7));
}

// ---- reserved fields --------------------------------------------------------

#[test]
fn reserved_fields_must_be_zero() {
    let reserved = |field| PayloadError::ReservedNonZero { field };
    assert_eq!(patched_error("hello", 14, &[1, 0]), reserved("reserved"));
    assert_eq!(
        patched_error("hello_ack", 2, &[0, 1]),
        reserved("reserved0")
    );
    assert_eq!(
        patched_error("hello_ack", 28, &[0, 0, 0, 1]),
        reserved("reserved1")
    );
    assert_eq!(patched_error("verdict", 1, &[1]), reserved("reserved"));
    assert_eq!(
        patched_error("read_request", 20, &[1, 0, 0, 0]),
        reserved("reserved")
    );
    assert_eq!(
        patched_error("read_data", 18, &[1, 0]),
        reserved("reserved0")
    );
    assert_eq!(
        patched_error("read_data", 28, &[1, 0, 0, 0]),
        reserved("reserved1")
    );
    assert_eq!(
        patched_error("read_data", 17, &[1]),
        reserved("error_space")
    );
    assert_eq!(
        patched_error("read_data", 20, &[1, 0, 0, 0]),
        reserved("error_code")
    );
    assert_eq!(patched_error("goodbye", 2, &[1, 0]), reserved("reserved"));
}

// ---- ranges and cross-field rules ---------------------------------------------

#[test]
fn hello_ranges_are_checked() {
    let range = |field, value| PayloadError::OutOfRange { field, value };
    assert_eq!(patched_error("hello", 0, &[0, 0]), range("version_min", 0));
    assert_eq!(
        patched_error("hello", 0, &[5, 0, 4, 0]),
        range("version_max", 4)
    );
    assert_eq!(
        patched_error("hello", 24, &4095u32.to_le_bytes()),
        range("max_frame_len", 4095)
    );
    assert_eq!(
        patched_error("hello", 24, &65_537u32.to_le_bytes()),
        range("max_frame_len", 65_537)
    );
    assert_eq!(
        patched_error("hello", 28, &0u32.to_le_bytes()),
        range("max_reads_in_flight", 0)
    );
}

#[test]
fn hello_ack_ranges_are_checked() {
    let range = |field, value| PayloadError::OutOfRange { field, value };
    assert_eq!(patched_error("hello_ack", 0, &[0, 0]), range("version", 0));
    assert_eq!(
        patched_error("hello_ack", 4, &4095u32.to_le_bytes()),
        range("max_frame_len", 4095)
    );
    assert_eq!(
        patched_error("hello_ack", 8, &0u32.to_le_bytes()),
        range("max_events_in_flight", 0)
    );
    assert_eq!(
        patched_error("hello_ack", 12, &0u32.to_le_bytes()),
        range("max_read_chunk", 0)
    );
    assert_eq!(
        patched_error("hello_ack", 12, &65_481u32.to_le_bytes()),
        range("max_read_chunk", 65_481)
    );
    // A smaller frame limit lowers the largest allowed chunk with it.
    let (t, mut p) = payload_of("hello_ack");
    p[4..8].copy_from_slice(&8192u32.to_le_bytes());
    p[12..16].copy_from_slice(&(8192u32 - 55).to_le_bytes());
    assert_eq!(payload_error(t, &p), range("max_read_chunk", 8192 - 55));
    // idle must exceed a nonzero heartbeat; idle without heartbeat is invalid.
    assert_eq!(
        patched_error("hello_ack", 20, &10_000u32.to_le_bytes()),
        range("idle_timeout_ms", 10_000)
    );
    assert_eq!(
        patched_error("hello_ack", 16, &0u32.to_le_bytes()),
        range("idle_timeout_ms", 30_000)
    );
    assert_eq!(
        patched_error("hello_ack", 24, &0u32.to_le_bytes()),
        range("query_timeout_ms", 0)
    );
}

#[test]
fn hello_ack_accepts_disabled_timers() {
    let (t, mut p) = payload_of("hello_ack");
    p[16..24].fill(0);
    let frame = raw_frame(1, t.to_wire(), 0, 1, &p);
    let Message::HelloAck(ack) = decode_whole(&frame).unwrap().message else {
        panic!("not a HelloAck")
    };
    assert_eq!((ack.heartbeat_interval_ms, ack.idle_timeout_ms), (0, 0));
}

#[test]
fn verdict_allow_no_cache_must_not_carry_a_ttl() {
    let (t, mut p) = payload_of("verdict");
    p[0] = Decision::AllowNoCache.to_wire();
    assert_eq!(
        payload_error(t, &p),
        PayloadError::OutOfRange {
            field: "cache_ttl_secs",
            value: 300
        }
    );
}

#[test]
fn read_request_ranges_are_checked() {
    let range = |field, value| PayloadError::OutOfRange { field, value };
    assert_eq!(
        patched_error("read_request", 16, &0u32.to_le_bytes()),
        range("length", 0)
    );
    let too_long = MAX_READ_CHUNK + 1;
    assert_eq!(
        patched_error("read_request", 16, &too_long.to_le_bytes()),
        range("length", too_long.into())
    );
    let offset = u64::MAX - 4095;
    assert_eq!(
        patched_error("read_request", 8, &offset.to_le_bytes()),
        range("offset", offset)
    );
}

#[test]
fn read_data_rules_are_checked() {
    let range = |field, value| PayloadError::OutOfRange { field, value };
    // An error or cancellation carries no data.
    let (t, mut p) = payload_of("read_data_error");
    p[24..28].copy_from_slice(&1u32.to_le_bytes());
    p.push(0);
    assert_eq!(payload_error(t, &p), range("data_len", 1));
    p[16] = 4; // Cancelled
    p[17] = 0;
    p[20..24].fill(0);
    assert_eq!(payload_error(t, &p), range("data_len", 1));
    // Data must not be empty; EndOfFile may be.
    let (t, mut p) = payload_of("read_data");
    p[24..28].fill(0);
    p.truncate(32);
    let frame = raw_frame(1, t.to_wire(), 0, 1, &p);
    assert!(decode_whole(&frame).is_ok());
    p[16] = 1;
    assert_eq!(payload_error(t, &p), PayloadError::Empty { field: "data" });
    // offset + data length must not overflow.
    let (t, mut p) = payload_of("read_data");
    p[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(payload_error(t, &p), range("offset", u64::MAX));
}

#[test]
fn read_data_longer_than_a_chunk_is_rejected() {
    let data = vec![0u8; MAX_READ_CHUNK as usize + 1];
    let message = Message::ReadData(ReadData {
        event_id: 1,
        offset: 0,
        outcome: ReadOutcome::Data(&data),
    });
    assert_eq!(
        message.validate(),
        Err(PayloadError::TooLong {
            field: "data",
            len: data.len(),
            max: MAX_READ_CHUNK as usize
        })
    );
    let fits = Message::ReadData(ReadData {
        event_id: 1,
        offset: 0,
        outcome: ReadOutcome::Data(&data[1..]),
    });
    assert_eq!(fits.encoded_len(), MAX_FRAME_LEN);
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    assert_eq!(fits.encode(3, &mut buf), Ok(MAX_FRAME_LEN));
}

// ---- text -------------------------------------------------------------------

#[test]
fn text_must_be_valid_utf8() {
    let invalid = |field| PayloadError::InvalidUtf8 { field };
    let hello_name_at = 32;
    assert_eq!(
        patched_error("hello", hello_name_at, &[0xff]),
        invalid("guest_name")
    );
    assert_eq!(
        patched_error("file_event_utf8", 56, &[0xc3]),
        invalid("path")
    );
    assert_eq!(
        patched_error("verdict", 8, &[0xed, 0xa0, 0x80]),
        invalid("threat_name")
    );
    assert_eq!(patched_error("error", 4, &[0x80]), invalid("text"));
}

#[test]
fn utf16_paths_must_have_even_length_and_no_path_may_be_empty() {
    let (t, mut p) = payload_of("file_event");
    p.pop();
    let len = (p.len() - 56) as u16;
    p[2..4].copy_from_slice(&len.to_le_bytes());
    assert_eq!(
        payload_error(t, &p),
        PayloadError::OddUtf16Length { field: "path" }
    );
    p.truncate(56);
    p[2..4].fill(0);
    assert_eq!(payload_error(t, &p), PayloadError::Empty { field: "path" });
}

#[test]
fn utf16_paths_may_hold_unpaired_surrogates() {
    let lone_surrogate = [0x00, 0xd8, b'a', 0];
    let event = FileEvent {
        path: FilePath::Utf16Le(&lone_surrogate),
        ..file_event_sample()
    };
    let frame = encode(1, &Message::FileEvent(event));
    let Message::FileEvent(back) = decode_whole(&frame).unwrap().message else {
        panic!("not a FileEvent")
    };
    assert_eq!(
        back.path.utf16_units().unwrap().collect::<Vec<_>>(),
        [0xd800, u16::from(b'a')]
    );
    assert!(FilePath::Utf8("x").utf16_units().is_none());
}

#[test]
fn bounded_text_fields_reject_one_byte_too_many() {
    let long = "x".repeat(1025);
    let too_long = |field, len, max| Err(PayloadError::TooLong { field, len, max });
    let Message::Hello(hello) = sample("hello") else {
        unreachable!()
    };
    assert_eq!(
        Message::Hello(Hello {
            guest_name: &long[..256],
            ..hello
        })
        .validate(),
        too_long("guest_name", 256, 255)
    );
    assert_eq!(
        Message::Hello(Hello {
            guest_name: &long[..255],
            ..hello
        })
        .validate(),
        Ok(())
    );
    let Message::Verdict(verdict) = sample("verdict") else {
        unreachable!()
    };
    assert_eq!(
        Message::Verdict(Verdict {
            threat_name: &long[..256],
            ..verdict
        })
        .validate(),
        too_long("threat_name", 256, 255)
    );
    let error = ErrorMessage {
        code: ErrorCode::Internal,
        text: &long,
    };
    assert_eq!(
        Message::Error(error).validate(),
        too_long("text", 1025, 1024)
    );
    // The decoder applies the same bounds.
    let (t, mut p) = payload_of("verdict");
    p.truncate(8);
    p[2..4].copy_from_slice(&256u16.to_le_bytes());
    p.extend_from_slice(&long.as_bytes()[..256]);
    assert_eq!(
        payload_error(t, &p),
        PayloadError::TooLong {
            field: "threat_name",
            len: 256,
            max: 255
        }
    );
    let (t, mut p) = payload_of("hello");
    p.truncate(32);
    p[6..8].copy_from_slice(&256u16.to_le_bytes());
    p.extend_from_slice(&long.as_bytes()[..256]);
    assert_eq!(
        payload_error(t, &p),
        PayloadError::TooLong {
            field: "guest_name",
            len: 256,
            max: 255
        }
    );
    let (t, mut p) = payload_of("error");
    p.truncate(4);
    p[2..4].copy_from_slice(&1025u16.to_le_bytes());
    p.extend_from_slice(long.as_bytes());
    assert_eq!(
        payload_error(t, &p),
        PayloadError::TooLong {
            field: "text",
            len: 1025,
            max: 1024
        }
    );
}

// ---- encoder ----------------------------------------------------------------

fn file_event_sample() -> FileEvent<'static> {
    let Message::FileEvent(event) = sample("file_event") else {
        unreachable!()
    };
    event
}

#[test]
fn encode_reports_a_short_buffer_and_writes_nothing() {
    let message = sample("file_event");
    let mut buf = vec![0xAAu8; message.encoded_len() - 1];
    assert_eq!(
        message.encode(1, &mut buf),
        Err(EncodeError::BufferTooSmall {
            needed: message.encoded_len(),
            available: buf.len()
        })
    );
    assert!(buf.iter().all(|b| *b == 0xAA));
}

#[test]
fn encode_refuses_frames_over_the_maximum() {
    let path = vec![b'a'; usize::from(u16::MAX)];
    let message = Message::FileEvent(FileEvent {
        path: FilePath::Bytes(&path),
        ..file_event_sample()
    });
    let mut buf = vec![0u8; 2 * MAX_FRAME_LEN];
    assert_eq!(
        message.encode(1, &mut buf),
        Err(EncodeError::TooLarge {
            len: 24 + 56 + 65_535,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn encode_refuses_what_the_decoder_would_reject() {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let invalid = [
        (
            Message::FileEvent(FileEvent {
                path: FilePath::Utf16Le(b"abc"),
                ..file_event_sample()
            }),
            "path",
        ),
        (
            Message::FileEvent(FileEvent {
                path: FilePath::Utf8(""),
                ..file_event_sample()
            }),
            "path",
        ),
        (
            Message::ReadRequest(ReadRequest {
                event_id: 1,
                offset: 0,
                length: 0,
            }),
            "length",
        ),
        (
            Message::ReadData(ReadData {
                event_id: 1,
                offset: 0,
                outcome: ReadOutcome::Data(&[]),
            }),
            "data",
        ),
        (
            Message::HelloAck(HelloAck {
                max_frame_len: 100,
                ..hello_ack_sample()
            }),
            "max_frame_len",
        ),
        (
            Message::Verdict(Verdict {
                decision: Decision::AllowNoCache,
                cache_ttl_secs: 1,
                threat_name: "",
            }),
            "cache_ttl_secs",
        ),
    ];
    for (message, field) in invalid {
        let err = message.encode(1, &mut buf).unwrap_err();
        let EncodeError::Invalid(payload) = err else {
            panic!("{err:?}")
        };
        assert!(format!("{payload}").contains(field), "{payload}");
    }
    let too_long_path = vec![b'a'; usize::from(u16::MAX) + 1];
    let message = Message::FileEvent(FileEvent {
        path: FilePath::Bytes(&too_long_path),
        ..file_event_sample()
    });
    assert_eq!(
        message.encode(1, &mut buf),
        Err(EncodeError::Invalid(PayloadError::TooLong {
            field: "path",
            len: 65_536,
            max: 65_535
        }))
    );
    let error = Message::ReadData(ReadData {
        event_id: 1,
        offset: 0,
        outcome: ReadOutcome::Error(OsError::Errno(5)),
    });
    assert!(error.encode(1, &mut buf).is_ok());
}

fn hello_ack_sample() -> HelloAck {
    let Message::HelloAck(ack) = sample("hello_ack") else {
        unreachable!()
    };
    ack
}

/// §9: a receiver never answers an `Error` frame with an `Error`, so it
/// must be able to tell, for every decoding error whose header it trusts,
/// whether the offending frame was an `Error`.
#[test]
fn decode_errors_say_whether_the_frame_was_an_error() {
    let error = MessageType::Error.to_wire();
    let cases = [
        (raw_frame(1, error, 1, 3, &[6, 0, 0, 0]), true),
        (
            raw_frame(1, MessageType::Ping.to_wire(), 1, 3, &[0; 16]),
            false,
        ),
        (raw_frame(1, error, 0, 3, &[6, 0, 5, 0]), true),
        (
            raw_frame(1, MessageType::Goodbye.to_wire(), 0, 3, &[1, 0, 1, 0]),
            false,
        ),
        (raw_frame(3, error, 0, 3, &[6, 0, 0, 0]), true),
        (raw_frame(3, MessageType::Ping.to_wire(), 0, 3, &[]), false),
        (raw_frame(1, 0x7777, 0, 3, &[]), false),
    ];
    for (frame, is_error) in cases {
        let err = decode_frame(&frame).unwrap_err();
        assert_eq!(err.concerns_error_frame(), is_error, "{err:?}");
        assert_eq!(err.request_id(), Some(3), "{err:?}");
    }
    // Checks 1-2 do not trust the header, whatever its type field says.
    let mut huge = raw_frame(1, error, 0, 3, &[]);
    huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = decode_frame(&huge).unwrap_err();
    assert!(matches!(err, DecodeError::FrameTooLarge { .. }));
    assert!(!err.concerns_error_frame());
    assert!(!DecodeError::BadMagic { found: *b"XXXX" }.concerns_error_frame());
}
