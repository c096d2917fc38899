//! A `no_std`, allocation-free hex dump, one row of 16 bytes at a time, and
//! the parser that reads a row back.
//!
//! The driver logs the capture IOCTL's reply with one DEBUG line per row, in
//! the seed's line shape, e.g.
//!
//! ```text
//! DEBUG: VsockCapture : capture reply +0x0000: 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  |................|
//! ```
//!
//! A row is `+0x` + at least four lower-case hex digits of offset + `:`,
//! then the bytes as two-digit lower-case hex separated by single spaces,
//! then two spaces and an ASCII gutter between `|` bars (letters and digits
//! shown, everything else `.`, so the gutter never contains `:` and cannot
//! be mistaken for a status suffix). [`parse_hex_row`] accepts any text
//! that contains such a row, so `thinagent-diag decode-log` can reassemble
//! the buffer from a captured log.

use core::fmt;

/// Bytes per row.
pub const HEX_ROW_BYTES: usize = 16;

/// Longest formatted row for offsets below 0x10000:
/// `+0x` 3 + 4 digits + `:` 1 = 8, + 16 × ` xx` = 48, + `  |` 3 + 16 + `|` 1.
pub const HEX_ROW_MAX_LEN: usize = 8 + 3 * HEX_ROW_BYTES + 3 + HEX_ROW_BYTES + 1;

/// One row of a dump: up to [`HEX_ROW_BYTES`] bytes at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HexRow<'a> {
    /// Offset of `bytes[0]` in the dumped buffer.
    pub offset: usize,
    /// The row's bytes (1..=16; only the last row is short).
    pub bytes: &'a [u8],
}

impl fmt::Display for HexRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+0x{:04x}:", self.offset)?;
        for b in self.bytes {
            write!(f, " {b:02x}")?;
        }
        f.write_str("  |")?;
        for &b in self.bytes {
            let c = if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '.'
            };
            fmt::Write::write_char(f, c)?;
        }
        f.write_str("|")
    }
}

/// The rows of `data`, 16 bytes each (an empty buffer has no rows).
#[must_use]
pub fn hex_rows(data: &[u8]) -> HexRows<'_> {
    HexRows { data, offset: 0 }
}

/// Iterator over the [`HexRow`]s of a buffer.
#[derive(Clone, Debug)]
pub struct HexRows<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for HexRows<'a> {
    type Item = HexRow<'a>;

    fn next(&mut self) -> Option<HexRow<'a>> {
        if self.offset >= self.data.len() {
            return None;
        }
        let end = (self.offset + HEX_ROW_BYTES).min(self.data.len());
        let row = HexRow {
            offset: self.offset,
            bytes: &self.data[self.offset..end],
        };
        self.offset = end;
        Some(row)
    }
}

/// The whole buffer, rows separated by `\n` (no trailing newline), for
/// sinks that take multi-line text.
#[derive(Clone, Copy, Debug)]
pub struct HexDump<'a>(pub &'a [u8]);

impl fmt::Display for HexDump<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, row) in hex_rows(self.0).enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{row}")?;
        }
        Ok(())
    }
}

/// A [`fmt::Write`] into a caller's byte buffer; fails (rather than
/// truncating) when the buffer is full.
#[derive(Debug)]
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceWriter<'a> {
    /// Writes into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// The text written so far.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so this cannot fail; fall
        // back to "" rather than panic in a driver.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Formats `row` into `buf` and returns the text; `Err` if `buf` is too
/// short ([`HEX_ROW_MAX_LEN`] bytes always suffice below offset 0x10000).
pub fn format_row_into<'b>(row: &HexRow<'_>, buf: &'b mut [u8]) -> Result<&'b str, fmt::Error> {
    let mut w = SliceWriter::new(buf);
    fmt::Write::write_fmt(&mut w, format_args!("{row}"))?;
    let len = w.len;
    core::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)
}

/// Finds a row (`+0x<offset>: xx xx ...`) in `text` and decodes it into
/// `out`. Returns `(offset, byte count)`; `None` if `text` holds no
/// well-formed row. The ASCII gutter, if present, is ignored.
#[must_use]
pub fn parse_hex_row(text: &str, out: &mut [u8; HEX_ROW_BYTES]) -> Option<(usize, usize)> {
    let start = text.find("+0x")?;
    let rest = &text[start + 3..];
    let (off, rest) = rest.split_once(':')?;
    if off.is_empty() || off.len() > 16 || !off.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let offset = usize::from_str_radix(off, 16).ok()?;
    let hex = match rest.find("  |") {
        Some(i) => &rest[..i],
        None => rest,
    };
    let mut n = 0;
    for tok in hex.split_ascii_whitespace() {
        if tok.len() != 2 || n == HEX_ROW_BYTES {
            return None;
        }
        out[n] = u8::from_str_radix(tok, 16).ok()?;
        n += 1;
    }
    if n == 0 {
        return None;
    }
    Some((offset, n))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    #[test]
    fn formats_the_capture_request() {
        let req = crate::vmci::VmciCaptureBuffer::request().to_le_bytes();
        let rows: Vec<String> = hex_rows(&req).map(|r| r.to_string()).collect();
        assert_eq!(rows.len(), 6); // 92 = 5 × 16 + 12
        assert_eq!(
            rows[0],
            "+0x0000: 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  |................|"
        );
        assert_eq!(
            rows[5],
            "+0x0050: 00 00 00 00 00 00 00 00 00 00 00 00  |............|"
        );
        assert_eq!(rows[0].len(), HEX_ROW_MAX_LEN);
    }

    #[test]
    fn gutter_shows_alphanumerics_only() {
        let row = HexRow {
            offset: 0x10,
            bytes: b"Tag: x",
        };
        assert_eq!(row.to_string(), "+0x0010: 54 61 67 3a 20 78  |Tag..x|");
    }

    #[test]
    fn format_into_caller_buffer() {
        let data = [0xabu8; 16];
        let row = hex_rows(&data).next().expect("one row");
        let mut buf = [0u8; HEX_ROW_MAX_LEN];
        let s = format_row_into(&row, &mut buf).expect("fits");
        assert!(s.starts_with("+0x0000: ab ab"));
        let mut small = [0u8; 20];
        assert!(format_row_into(&row, &mut small).is_err());
    }

    #[test]
    fn dump_and_parse_round_trip() {
        let data: Vec<u8> = (0u8..=0x5b).map(|i| i.wrapping_mul(37)).collect();
        let text = HexDump(&data).to_string();
        let mut back = std::vec![0u8; data.len()];
        let mut row = [0u8; HEX_ROW_BYTES];
        for line in text.lines() {
            let logged = std::format!("DEBUG: VsockCapture : capture reply {line}");
            let (off, n) = parse_hex_row(&logged, &mut row).expect("row parses");
            back[off..off + n].copy_from_slice(&row[..n]);
        }
        assert_eq!(back, data);
    }

    #[test]
    fn parse_rejects_malformed_rows() {
        let mut row = [0u8; HEX_ROW_BYTES];
        assert_eq!(parse_hex_row("no row here", &mut row), None);
        assert_eq!(parse_hex_row("+0x: 01", &mut row), None);
        assert_eq!(parse_hex_row("+0x0000:", &mut row), None);
        assert_eq!(parse_hex_row("+0x0000: 1 2", &mut row), None);
        assert_eq!(parse_hex_row("+0x0000: zz", &mut row), None);
        let long = std::format!("+0x0000:{}", " 00".repeat(17));
        assert_eq!(parse_hex_row(&long, &mut row), None);
        assert_eq!(parse_hex_row("+0x0020: 0a ff", &mut row), Some((0x20, 2)));
        assert_eq!(&row[..2], &[0x0a, 0xff]);
    }

    #[test]
    fn empty_buffer_has_no_rows() {
        assert_eq!(hex_rows(&[]).count(), 0);
        assert_eq!(HexDump(&[]).to_string(), "");
    }
}
