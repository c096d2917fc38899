//! The capture reply as the driver will log it: one DEBUG line per 16-byte
//! row, formatted by `thinagent_guest::LogRecord`, must read back through
//! the same decoder `thinagent-diag decode-log` uses (`parse_line`) and
//! reassemble into the exact buffer.

use thinagent_guest::log::routine;
use thinagent_guest::{Level, LogRecord, NtStatus, parse_line};
use thinagent_km_sys::hexdump::{HEX_ROW_BYTES, hex_rows, parse_hex_row};
use thinagent_km_sys::vmci::{VMCI_CAPTURE_BUFFER_SIZE, VmciCaptureBuffer};

fn logged_reply(reply: &VmciCaptureBuffer) -> Vec<String> {
    let bytes = reply.to_le_bytes();
    hex_rows(&bytes)
        .map(|row| {
            LogRecord::new(
                Level::Debug,
                routine::VSOCK_CAPTURE,
                format_args!("capture reply {row}"),
            )
            .to_string()
        })
        .collect()
}

#[test]
fn reply_rows_round_trip_through_the_log_decoder() {
    // A plausible x64 reply: the request's 1, then two kernel pointers.
    let mut reply = VmciCaptureBuffer::request();
    reply.dwords[2] = 0x1234_5678;
    reply.dwords[3] = 0xffff_f801;
    reply.dwords[4] = 0x9abc_def0;
    reply.dwords[5] = 0xffff_f801;
    reply.dwords[22] = 0x4b43_4f53; // "SOCK" little-endian, for the gutter
    let lines = logged_reply(&reply);
    assert_eq!(
        lines.len(),
        VMCI_CAPTURE_BUFFER_SIZE.div_ceil(HEX_ROW_BYTES)
    );
    assert_eq!(
        lines[0],
        "DEBUG: VsockCapture : capture reply +0x0000: 01 00 00 00 00 00 00 00 \
         78 56 34 12 01 f8 ff ff  |........xV4.....|"
    );
    assert!(lines[5].ends_with("53 4f 43 4b  |........SOCK|"));

    let mut back = [0u8; VMCI_CAPTURE_BUFFER_SIZE];
    for line in &lines {
        let parsed = parse_line(line).expect("seed-shaped line");
        assert_eq!(parsed.level, Level::Debug);
        assert_eq!(parsed.routine, "VsockCapture");
        assert_eq!(parsed.status, None::<NtStatus>, "a row is never a status");
        let mut row = [0u8; HEX_ROW_BYTES];
        let (off, n) = parse_hex_row(parsed.message, &mut row).expect("row");
        back[off..off + n].copy_from_slice(&row[..n]);
    }
    assert_eq!(VmciCaptureBuffer::from_le_bytes(&back), Some(reply));
}
