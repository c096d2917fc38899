//! `StreamDecoder`: frames out of arbitrarily split input, recoverable errors
//! skipped, fatal errors sticky, limits enforced.

mod common;

use common::raw_frame;
use common::samples::{encode, samples};
use thinagent_protocol::{
    DecodeError, HEADER_LEN, MAX_FRAME_LEN, Message, MessageType, StreamDecoder,
};

fn stream() -> Vec<u8> {
    samples()
        .iter()
        .flat_map(|(_, id, m)| encode(*id, m))
        .collect()
}

fn collect(
    decoder: &mut StreamDecoder<Vec<u8>>,
    out: &mut Vec<(u64, String)>,
) -> Result<(), DecodeError> {
    while let Some(frame) = decoder.next_frame()? {
        out.push((frame.request_id, format!("{:?}", frame.message)));
    }
    Ok(())
}

fn expected() -> Vec<(u64, String)> {
    samples()
        .iter()
        .map(|(_, id, m)| (*id, format!("{m:?}")))
        .collect()
}

#[test]
fn any_chunk_size_yields_the_same_frames() {
    let bytes = stream();
    for chunk in [1, 2, 3, 5, 23, 24, 25, 97, 4096] {
        let mut decoder = StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            assert_eq!(decoder.push(piece), piece.len());
            collect(&mut decoder, &mut out).unwrap();
        }
        assert_eq!(out, expected(), "chunk size {chunk}");
        assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn spare_and_commit_fill_the_buffer_directly() {
    let bytes = stream();
    let mut decoder = StreamDecoder::new(vec![0u8; 300]);
    let mut out = Vec::new();
    let mut fed = 0;
    while fed < bytes.len() {
        let spare = decoder.spare_mut();
        let n = spare.len().min(bytes.len() - fed).min(50);
        spare[..n].copy_from_slice(&bytes[fed..fed + n]);
        decoder.commit(n);
        fed += n;
        collect(&mut decoder, &mut out).unwrap();
    }
    assert_eq!(out, expected());
}

#[test]
fn push_takes_only_what_fits() {
    let mut decoder = StreamDecoder::new([0u8; 40]);
    assert_eq!(decoder.push(&[b'T'; 100][..]), 40);
    assert_eq!(decoder.buffered(), 40);
}

#[test]
fn recoverable_errors_are_skipped_and_decoding_continues() {
    let mut bytes = raw_frame(1, 0x7777, 0, 11, &[1, 2, 3]);
    bytes.extend(raw_frame(9, MessageType::Ping.to_wire(), 0, 12, &[0; 16]));
    let ping = samples().into_iter().find(|(n, ..)| *n == "ping").unwrap();
    bytes.extend(encode(ping.1, &ping.2));
    let mut decoder = StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]);
    decoder.push(&bytes);
    assert_eq!(
        decoder.next_frame().map(|f| f.map(|f| f.request_id)),
        Err(DecodeError::UnknownMessageType {
            msg_type: 0x7777,
            request_id: 11,
            frame_len: HEADER_LEN + 3
        })
    );
    assert!(matches!(
        decoder.next_frame(),
        Err(DecodeError::UnsupportedVersion {
            version: 9,
            request_id: 12,
            ..
        })
    ));
    let frame = decoder.next_frame().unwrap().unwrap();
    assert_eq!((frame.request_id, frame.message), (ping.1, ping.2));
    assert_eq!(decoder.next_frame().unwrap(), None);
    assert_eq!(decoder.fatal_error(), None);
}

#[test]
fn fatal_errors_stick() {
    let mut decoder = StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]);
    decoder.push(b"GET / HTTP/1.1\r\n");
    let error = DecodeError::BadMagic { found: *b"GET " };
    assert_eq!(decoder.next_frame().unwrap_err(), error);
    let ping = encode(1, &Message::Ping(Default::default()));
    decoder.push(&ping);
    assert_eq!(decoder.next_frame().unwrap_err(), error);
    assert_eq!(decoder.fatal_error(), Some(error));
}

#[test]
fn frame_limit_is_the_smallest_of_storage_setting_and_protocol_maximum() {
    let mut decoder = StreamDecoder::new(vec![0u8; 2 * MAX_FRAME_LEN]);
    assert_eq!(decoder.max_frame_len(), MAX_FRAME_LEN);
    decoder.set_max_frame_len(usize::MAX);
    assert_eq!(decoder.max_frame_len(), MAX_FRAME_LEN);
    decoder.set_max_frame_len(4096);
    assert_eq!(decoder.max_frame_len(), 4096);
    decoder.push(&raw_frame(1, MessageType::Ping.to_wire(), 0, 1, &[])[..HEADER_LEN - 4]);
    decoder.push(&(4096u32 - 23).to_le_bytes());
    assert_eq!(
        decoder.next_frame().unwrap_err(),
        DecodeError::FrameTooLarge {
            frame_len: 4097,
            max: 4096
        }
    );

    let small = StreamDecoder::new([0u8; 100]);
    assert_eq!(small.max_frame_len(), 100);
}

#[test]
fn clear_makes_a_used_decoder_as_new() {
    let mut decoder = StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]);
    decoder.set_max_frame_len(4096);
    decoder.push(b"GET / HTTP/1.1\r\n");
    assert!(decoder.next_frame().is_err());
    assert!(decoder.fatal_error().is_some());
    decoder.clear();
    assert_eq!(decoder.fatal_error(), None);
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(decoder.max_frame_len(), MAX_FRAME_LEN);
    let mut out = Vec::new();
    decoder.push(&stream()[..]);
    collect(&mut decoder, &mut out).unwrap();
    assert_eq!(out, expected());
}

#[test]
fn a_const_zeroed_decoder_behaves_like_new() {
    const_initialiser_compiles();
    let mut decoder: StreamDecoder<[u8; MAX_FRAME_LEN]> = StreamDecoder::new_zeroed();
    assert_eq!(decoder.max_frame_len(), MAX_FRAME_LEN);
    let small: StreamDecoder<[u8; 100]> = StreamDecoder::new_zeroed();
    assert_eq!(small.max_frame_len(), 100);
    let ping = encode(7, &Message::Ping(Default::default()));
    decoder.push(&ping);
    let frame = decoder.next_frame().unwrap().unwrap();
    assert_eq!(frame.request_id, 7);
}

/// `new_zeroed` must be usable where only constants are allowed.
fn const_initialiser_compiles() {
    static DECODER: StreamDecoder<[u8; 64]> = StreamDecoder::new_zeroed();
    assert_eq!(DECODER.max_frame_len(), 64);
}
