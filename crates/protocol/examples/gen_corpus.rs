//! Writes one valid frame per message type into the fuzz seed corpus and
//! prints the documentation example frames as hex.
//!
//! `cargo run -p thinagent-protocol --example gen_corpus -- crates/protocol/fuzz/corpus`

#[path = "../tests/common/samples.rs"]
mod samples;

use std::path::PathBuf;

/// The decode_stream chunk-size prefix: three sizes, each byte plus one.
const STREAM_CHUNKING: [u8; 4] = [3, 0, 6, 199];
/// The same in a version-2 session (bit 7 of the count byte).
const STREAM_CHUNKING_V2: [u8; 4] = [0x83, 0, 6, 199];

fn main() -> std::io::Result<()> {
    let Some(root) = std::env::args_os().nth(1).map(PathBuf::from) else {
        for (name, id, message) in [
            ("FileEvent", 7, samples::EXAMPLE_FILE_EVENT),
            ("Verdict", 7, samples::EXAMPLE_VERDICT),
            ("FileEvent version 2", 7, samples::EXAMPLE_FILE_EVENT_V2),
        ] {
            let version = if name.ends_with('2') { 2 } else { 1 };
            let frame = samples::encode_for(version, id, &message);
            println!("{name} ({} bytes):", frame.len());
            for line in frame.chunks(16) {
                let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
                println!("{}", hex.join(" "));
            }
        }
        return Ok(());
    };
    let frame_dir = root.join("decode_frame");
    let stream_dir = root.join("decode_stream");
    std::fs::create_dir_all(&frame_dir)?;
    std::fs::create_dir_all(&stream_dir)?;
    for (name, id, message) in samples::samples() {
        let frame = samples::encode(id, &message);
        std::fs::write(frame_dir.join(name), &frame)?;
        // decode_stream inputs start with their chunk sizes: 1, 7, 200 bytes.
        std::fs::write(
            stream_dir.join(name),
            [&STREAM_CHUNKING[..], &frame].concat(),
        )?;
    }
    let all: Vec<u8> = samples::samples()
        .iter()
        .flat_map(|(_, id, m)| samples::encode(*id, m))
        .collect();
    std::fs::write(
        stream_dir.join("all_frames"),
        [&STREAM_CHUNKING[..], &all].concat(),
    )?;
    for (name, version, id, message) in samples::samples_v2() {
        let frame = samples::encode_for(version, id, &message);
        std::fs::write(frame_dir.join(name), &frame)?;
        std::fs::write(
            stream_dir.join(name),
            [&STREAM_CHUNKING_V2[..], &frame].concat(),
        )?;
    }
    // One version-2 session's worth: every version-2 sample in one stream
    // (the HelloAck with header version 1 is accepted there, §6.6).
    let all_v2: Vec<u8> = samples::samples_v2()
        .iter()
        .flat_map(|(_, version, id, m)| samples::encode_for(*version, *id, m))
        .collect();
    std::fs::write(
        stream_dir.join("all_frames_v2"),
        [&STREAM_CHUNKING_V2[..], &all_v2].concat(),
    )?;
    Ok(())
}
