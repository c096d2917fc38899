//! Encode + decode of one `FileEvent` with a typical 60-character UTF-16 path
//! (target: well under 1 µs per round trip).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use thinagent_protocol::{
    CreateDisposition, Decoded, EventKind, FileEvent, FileIdentity, FilePath, MAX_FRAME_LEN,
    Message, decode_frame,
};

const PATH: &str = r"\Device\HarddiskVolume3\Users\alice\Downloads\setup-v2.1.exe";

fn file_event_roundtrip(c: &mut Criterion) {
    assert_eq!(PATH.chars().count(), 60);
    let utf16: Vec<u8> = PATH.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let event = Message::FileEvent(FileEvent {
        kind: EventKind::Open,
        process_id: 4242,
        desired_access: 0x0012_0089,
        create_disposition: CreateDisposition::Open,
        file: FileIdentity {
            volume_serial: 0x1234_5678_9abc_def0,
            file_id: [7; 16],
            size: 1_234_567,
            last_write_time: 133_000_000_000_000_000,
        },
        path: FilePath::Utf16Le(&utf16),
        content: thinagent_protocol::InlineContent::NONE,
    });
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    c.bench_function("file_event_encode_decode_60_char_path", |b| {
        b.iter(|| {
            let len = black_box(&event)
                .encode(black_box(17), &mut buf)
                .expect("encodes");
            match decode_frame(black_box(&buf[..len])).expect("decodes") {
                Decoded::Frame { frame, .. } => black_box(frame.message == event),
                Decoded::Incomplete { .. } => unreachable!("a whole frame was given"),
            }
        });
    });
}

criterion_group!(benches, file_event_roundtrip);
criterion_main!(benches);
