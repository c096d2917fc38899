//! A byte stream fed to `StreamDecoder` in arbitrary chunks must yield the
//! same frames and errors as `decode_frame` run over the whole stream, and
//! every frame re-encodes (the seeds hold every message type, the host
//! actions of docs/protocol.md §14 in version-2 sessions).
//!
//! Input layout: `n: u8` (bits 0-6: a count; bit 7: the session version is
//! 2, else 1), then `count` chunk-size bytes (each size is the byte plus
//! one, used in turn), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinagent_protocol::{
    DecodeError, Decoded, Frame, MAX_FRAME_LEN, StreamDecoder, decode_frame_for,
};

/// What the decoder produced: a frame (as its canonical bytes) or an error.
#[derive(Debug, PartialEq)]
enum Event {
    Frame { request_id: u64, encoded: Vec<u8> },
    Error(DecodeError),
}

fn frame_event(frame: &Frame<'_>) -> Event {
    let mut encoded = vec![0u8; MAX_FRAME_LEN];
    let len = frame
        .message
        .encode_for(frame.version, frame.request_id, &mut encoded)
        .expect("a decoded message re-encodes");
    encoded.truncate(len);
    Event::Frame {
        request_id: frame.request_id,
        encoded,
    }
}

/// Decodes the whole stream at once, skipping recoverable errors and stopping
/// at the first fatal one.
fn reference(mut stream: &[u8], version: u16) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        match decode_frame_for(stream, MAX_FRAME_LEN, version) {
            Ok(Decoded::Frame { frame, consumed }) => {
                events.push(frame_event(&frame));
                stream = &stream[consumed..];
            }
            Ok(Decoded::Incomplete { .. }) => return events,
            Err(error) => {
                events.push(Event::Error(error));
                match error.skip_len() {
                    Some(skip) => stream = &stream[skip..],
                    None => return events,
                }
            }
        }
    }
}

/// Drains every ready frame; returns false once a fatal error was recorded.
fn drain(decoder: &mut StreamDecoder<Vec<u8>>, events: &mut Vec<Event>) -> bool {
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => events.push(frame_event(&frame)),
            Ok(None) => return true,
            Err(error) => {
                events.push(Event::Error(error));
                if error.is_fatal() {
                    return false;
                }
            }
        }
    }
}

/// Two event lists agree; `BadMagic` may hold fewer bytes when it was seen on
/// a partial header.
fn same(a: &[Event], b: &[Event]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (
                Event::Error(DecodeError::BadMagic { .. }),
                Event::Error(DecodeError::BadMagic { .. }),
            ) => true,
            (x, y) => x == y,
        })
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let version = if n & 0x80 != 0 { 2 } else { 1 };
    let n = usize::from(n & 0x7f).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let expected = reference(stream, version);

    let mut decoder = StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]);
    decoder.set_session_version(version);
    let mut events = Vec::new();
    let mut remaining = stream;
    let mut turn = 0usize;
    let mut alive = true;
    while alive && !remaining.is_empty() {
        let size = sizes
            .get(turn % sizes.len().max(1))
            .map_or(remaining.len(), |s| usize::from(*s) + 1);
        turn += 1;
        let chunk = &remaining[..size.min(remaining.len())];
        let taken = decoder.push(chunk);
        remaining = &remaining[taken..];
        alive = drain(&mut decoder, &mut events);
        assert!(
            taken > 0 || !alive,
            "decoder stuck with {} bytes buffered",
            decoder.buffered()
        );
    }
    assert!(
        same(&events, &expected),
        "stream: {events:?}\nwhole: {expected:?}"
    );
});
