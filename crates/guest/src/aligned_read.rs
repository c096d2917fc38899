//! Host reads served with sector-aligned, non-cached I/O, as the Windows
//! driver does them (`FltReadFile` with `FLTFL_IO_OPERATION_NON_CACHED`):
//! which range to read, and what to answer (§5.6 of docs/protocol.md).
//!
//! Non-cached I/O needs an offset and a length that are multiples of the
//! volume's sector size, so a `ReadRequest` for `length` bytes at `offset`
//! is widened to the [`AlignedRange`] that covers it, and the requested part
//! is handed out of the bigger buffer.
//!
//! What the file system returns for such a read (Microsoft's FastFAT and
//! CDFS samples, `filesys/fastfat/read.c` and `filesys/cdfs/read.c` in
//! Windows-driver-samples, do it this way; NTFS answers the same):
//!
//! * a read that **starts** at or past the end of file fails with
//!   `STATUS_END_OF_FILE` and 0 bytes;
//! * otherwise the length is cut to the end of file and `BytesRead`
//!   (`IoStatus.Information`) is the **cut** count, not rounded up to a
//!   sector, although whole sectors are transferred (the tail of the last
//!   one is zero).
//!
//! So the count the file system returned tells where the file ends whenever
//! the file ends inside the aligned range, and tells that it goes on when it
//! returned bytes past the requested ones. Only a read whose requested end
//! is the aligned end, returned in full, cannot tell: the file may end
//! exactly there, or go on. Then the answer needs the file's current size
//! (`FileStandardInformation.EndOfFile`), and [`crate::read_reaches_end`]
//! decides, as for the Linux agent.
//!
//! The same read serves a file's **inline content** (protocol version 2,
//! `docs/protocol.md` §5.3.1): before it asks, the driver reads the first
//! [`inline_read_len`] bytes at offset 0 in one aligned read, and
//! [`inline_content`] turns the answer into the event's content, marked
//! `WHOLE_FILE` only when the read itself proves it holds the whole file.

use thinagent_protocol::{InlineContent, ReadOutcome};

use crate::session::read_reaches_end;

/// The smallest sector size: what is used when the volume's is unknown (0).
pub const MIN_SECTOR: u32 = 512;

/// The sector-aligned range that covers a host read of `length` bytes at
/// `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlignedRange {
    /// The requested offset.
    pub offset: u64,
    /// The requested length (1 ..= `MAX_READ_CHUNK`, as the decoder checked).
    pub length: u32,
    /// Where the aligned read starts: `offset` rounded down to a sector.
    pub start: u64,
    /// How many bytes the aligned read asks for: from `start` to
    /// `offset + length` rounded up to a sector.
    pub len: u32,
}

/// Why a host read has no [`AlignedRange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignError {
    /// The aligned start is past any file's end: Windows file offsets are
    /// signed 64-bit (`LARGE_INTEGER`), so no file reaches 2⁶³. Answer
    /// `EndOfFile` with no data, as for a read past the end.
    PastAnyFile,
    /// The aligned range does not fit the `u32` length of a read (a
    /// request far above `MAX_READ_CHUNK`). Answer an error
    /// (`STATUS_INVALID_PARAMETER`).
    TooLong,
}

impl AlignedRange {
    /// The range covering `length` bytes at `offset` on a volume with
    /// `sector`-byte sectors (0 = unknown: [`MIN_SECTOR`]; sizes need not be
    /// powers of two here).
    pub fn new(offset: u64, length: u32, sector: u32) -> Result<Self, AlignError> {
        let sector = u64::from(sector.max(MIN_SECTOR));
        let start = offset - offset % sector;
        if start > i64::MAX as u64 {
            return Err(AlignError::PastAnyFile);
        }
        let end = offset
            .checked_add(u64::from(length))
            .ok_or(AlignError::TooLong)?;
        let aligned_end = end
            .div_ceil(sector)
            .checked_mul(sector)
            .ok_or(AlignError::TooLong)?;
        let len = u32::try_from(aligned_end - start).map_err(|_| AlignError::TooLong)?;
        Ok(AlignedRange {
            offset,
            length,
            start,
            len,
        })
    }

    /// Bytes of the aligned buffer before the requested offset.
    #[must_use]
    pub fn skip(&self) -> usize {
        // Less than one sector (a u32).
        (self.offset - self.start) as usize
    }

    /// The answer to the host read, from what the aligned read returned.
    ///
    /// `read` is the aligned buffer's first `BytesRead` bytes (empty when
    /// the read failed with `STATUS_END_OF_FILE`: it started past the end).
    /// `size_now` gives the file's current size (`None` if unknown); it is
    /// called at most once, and only when the read cannot tell by itself:
    ///
    /// | the aligned read returned | answer |
    /// |---|---|
    /// | nothing from `offset` on | `EndOfFile`, no data (at or past the end) |
    /// | fewer than `length` bytes from `offset` | `EndOfFile` with them (a short read: the file ends there) |
    /// | more than `length` bytes from `offset` | `Data` with the `length` requested bytes (the file goes on) |
    /// | exactly `length` bytes, less than the aligned range | `EndOfFile` with them (the read stopped at `offset + length`: the end) |
    /// | exactly `length` bytes, all of the aligned range | asks `size_now`: `EndOfFile` if the file ends at `offset + length` ([`read_reaches_end`]), else `Data` |
    ///
    /// The last row is the only one where the file may end exactly where
    /// the read did or go on: `offset + length` is a sector boundary. The
    /// size is the one now, not the one sent in the `FileEvent`, so a file
    /// that grew is read on to its new end; a size that does not match
    /// (unknown, or a truncation that raced the read) answers `Data` and the
    /// host reads on to find the end.
    pub fn outcome<'a>(
        &self,
        read: &'a [u8],
        size_now: impl FnOnce() -> Option<u64>,
    ) -> ReadOutcome<'a> {
        let skip = self.skip();
        let got = read.len().min(self.len as usize);
        let length = self.length as usize;
        if got <= skip {
            return ReadOutcome::EndOfFile(&[]);
        }
        let avail = got - skip;
        if avail > length {
            return ReadOutcome::Data(&read[skip..skip + length]);
        }
        let data = &read[skip..got];
        if avail < length || got < self.len as usize {
            // Short of the request, or of the aligned range: `BytesRead`
            // stops at the end of file.
            return ReadOutcome::EndOfFile(data);
        }
        // Exactly the request, ending on the aligned end: ask the size.
        if read_reaches_end(self.offset, avail, false, size_now()) {
            ReadOutcome::EndOfFile(data)
        } else {
            ReadOutcome::Data(data)
        }
    }
}

/// How many first bytes to read for a query's inline content, given the
/// session's [`inline_budget`](crate::Session::inline_budget) (0: read
/// nothing) and the file's size at the open, if known.
///
/// A file smaller than the budget is read **one byte past** its stated
/// size, as the Linux agent does: a read that then stops at the size proves
/// by its own count that nothing follows (no size query), and a file that
/// grew since shows it by returning that extra byte. A file at least as
/// large as the budget (or of unknown size) is read up to the budget.
#[must_use]
pub fn inline_read_len(budget: usize, stated_size: Option<u64>) -> u32 {
    let budget = u32::try_from(budget).unwrap_or(u32::MAX);
    match stated_size {
        Some(size) if size < u64::from(budget) => size as u32 + 1,
        _ => budget,
    }
}

/// The inline content of a query from the answer to its first-bytes read
/// ([`AlignedRange::outcome`] of a read of [`inline_read_len`] bytes at
/// offset 0).
///
/// `WHOLE_FILE` only when the read met the end of the file (`EndOfFile`)
/// and the bytes it returned are exactly the size stated in the event: the
/// file was neither cut nor grown between the size query and the read, so
/// the host may judge it without a `ReadRequest`. Otherwise the bytes go as
/// the file's first bytes (`Data`, or an end that does not match the
/// stated size) and the host reads the rest; a failed read sends nothing
/// (the host reads everything, as in version 1).
///
/// The bytes are never more than the stated size (§5.3.1: at most
/// `min(file size, ...)`): the extra byte of [`inline_read_len`], or a file
/// that grew, is left to the host's reads.
#[must_use]
pub fn inline_content<'a>(outcome: ReadOutcome<'a>, stated_size: Option<u64>) -> InlineContent<'a> {
    let (bytes, at_end) = match outcome {
        ReadOutcome::EndOfFile(bytes) => (bytes, true),
        ReadOutcome::Data(bytes) => (bytes, false),
        ReadOutcome::Error(_) | ReadOutcome::Cancelled => return InlineContent::NONE,
    };
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let cut = stated_size.map_or(len, |size| size.min(len)) as usize;
    InlineContent {
        bytes: &bytes[..cut],
        whole_file: at_end && stated_size == Some(len),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::cell::Cell;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    /// What a file system returns for the non-cached read of `r` over a
    /// file of `size` bytes (the count, cut at the end of file; an empty
    /// read for `STATUS_END_OF_FILE`), and what `outcome` answers, with the
    /// number of size queries it made.
    fn serve(r: &AlignedRange, file: &[u8], size_now: Option<u64>) -> (ReadOutcome<'static>, u32) {
        let start = r.start as usize;
        let n = (r.len as usize).min(file.len().saturating_sub(start));
        let bytes: &'static [u8] = Vec::leak(file[start.min(file.len())..][..n].to_vec());
        let asked = Cell::new(0u32);
        let out = r.outcome(bytes, || {
            asked.set(asked.get() + 1);
            size_now
        });
        (out, asked.get())
    }

    fn file(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn the_range_covers_the_request_in_whole_sectors() {
        let r = AlignedRange::new(0, 39, 512).unwrap();
        assert_eq!((r.start, r.len, r.skip()), (0, 512, 0));
        let r = AlignedRange::new(65_480, 56, 512).unwrap();
        assert_eq!((r.start, r.len, r.skip()), (65_024, 512, 456));
        let r = AlignedRange::new(0, 65_480, 512).unwrap();
        assert_eq!((r.start, r.len), (0, 65_536));
        let r = AlignedRange::new(4096, 4096, 4096).unwrap();
        assert_eq!((r.start, r.len), (4096, 4096));
        let r = AlignedRange::new(100, 5000, 4096).unwrap();
        assert_eq!((r.start, r.len, r.skip()), (0, 8192, 100));
        // An unknown sector size (0) is the smallest.
        assert_eq!(AlignedRange::new(700, 1, 0).unwrap().start, 512);
    }

    #[test]
    fn ranges_out_of_reach() {
        assert_eq!(
            AlignedRange::new(1 << 63, 1, 512),
            Err(AlignError::PastAnyFile)
        );
        assert_eq!(
            AlignedRange::new(u64::MAX - 10, 10, 512),
            Err(AlignError::PastAnyFile)
        );
        // Within the last sector below 2^63: the file system says where the end is.
        assert!(AlignedRange::new((1 << 63) - 1, 1, 512).is_ok());
        assert_eq!(
            AlignedRange::new(1, u32::MAX, 512),
            Err(AlignError::TooLong)
        );
    }

    #[test]
    fn a_small_file_in_one_read_is_end_of_file_without_a_size_query() {
        let f = file(39);
        let r = AlignedRange::new(0, 39, 512).unwrap();
        let (out, asked) = serve(&r, &f, Some(39));
        assert_eq!(out, ReadOutcome::EndOfFile(&f[..]));
        assert_eq!(asked, 0, "the count (39 of 512) tells");
    }

    #[test]
    fn bytes_past_the_request_mean_the_file_goes_on() {
        let f = file(1000);
        let r = AlignedRange::new(0, 39, 512).unwrap();
        let (out, asked) = serve(&r, &f, Some(1000));
        assert_eq!(out, ReadOutcome::Data(&f[..39]));
        assert_eq!(asked, 0);
        // The first 65480-byte chunk of a 65536-byte file.
        let f = file(65_536);
        let r = AlignedRange::new(0, 65_480, 512).unwrap();
        let (out, asked) = serve(&r, &f, Some(65_536));
        assert_eq!(out, ReadOutcome::Data(&f[..65_480]));
        assert_eq!(asked, 0);
    }

    #[test]
    fn a_read_stopping_inside_the_aligned_range_is_the_end() {
        // A file of 100 bytes, 50 asked at 50: the read returns 100 of 512.
        let f = file(100);
        let r = AlignedRange::new(50, 50, 512).unwrap();
        let (out, asked) = serve(&r, &f, None);
        assert_eq!(out, ReadOutcome::EndOfFile(&f[50..]));
        assert_eq!(asked, 0);
        // Short of the request.
        let r = AlignedRange::new(50, 500, 512).unwrap();
        let (out, _) = serve(&r, &f, None);
        assert_eq!(out, ReadOutcome::EndOfFile(&f[50..]));
    }

    #[test]
    fn a_read_ending_on_a_sector_boundary_asks_the_size() {
        let f = file(4096);
        let r = AlignedRange::new(0, 4096, 512).unwrap();
        let (out, asked) = serve(&r, &f, Some(4096));
        assert_eq!(out, ReadOutcome::EndOfFile(&f[..]));
        assert_eq!(asked, 1);
        // The size unknown: Data, the host reads on.
        let (out, _) = serve(&r, &f, None);
        assert_eq!(out, ReadOutcome::Data(&f[..]));
        // The last 56 bytes of a 65536-byte file (the host's second chunk).
        let f = file(65_536);
        let r = AlignedRange::new(65_480, 56, 512).unwrap();
        let (out, asked) = serve(&r, &f, Some(65_536));
        assert_eq!(out, ReadOutcome::EndOfFile(&f[65_480..]));
        assert_eq!(asked, 1);
        // Sector-sized chunks of a 65536-byte file: every one asks; the last ends it.
        for k in 0..16u64 {
            let r = AlignedRange::new(k * 4096, 4096, 512).unwrap();
            let (out, asked) = serve(&r, &f, Some(65_536));
            let data = &f[k as usize * 4096..][..4096];
            if k == 15 {
                assert_eq!(out, ReadOutcome::EndOfFile(data));
            } else {
                assert_eq!(out, ReadOutcome::Data(data));
            }
            assert_eq!(asked, 1);
        }
    }

    #[test]
    fn a_file_that_grew_is_read_on_to_its_new_end() {
        // Stated 4096 in the FileEvent, 5000 bytes now.
        let f = file(5000);
        let r = AlignedRange::new(0, 4096, 512).unwrap();
        let (out, asked) = serve(&r, &f, Some(5000));
        assert_eq!(
            out,
            ReadOutcome::Data(&f[..4096]),
            "the count fills the range"
        );
        assert_eq!(asked, 1);
        // The host probes past the stated size and gets the rest as the end.
        let r = AlignedRange::new(4096, 65_480, 512).unwrap();
        let (out, asked) = serve(&r, &f, Some(5000));
        assert_eq!(out, ReadOutcome::EndOfFile(&f[4096..]));
        assert_eq!(asked, 0);
        // Stated 39, 600 bytes now: bytes past the request say it goes on.
        let f = file(600);
        let r = AlignedRange::new(0, 39, 512).unwrap();
        assert_eq!(serve(&r, &f, Some(600)).0, ReadOutcome::Data(&f[..39]));
    }

    #[test]
    fn a_size_that_does_not_match_the_read_is_not_trusted() {
        let f = file(4096);
        let r = AlignedRange::new(0, 4096, 512).unwrap();
        // Truncated after the read (or a size that lies): Data, the host probes.
        assert_eq!(serve(&r, &f, Some(0)).0, ReadOutcome::Data(&f[..]));
        assert_eq!(serve(&r, &f, Some(4095)).0, ReadOutcome::Data(&f[..]));
    }

    #[test]
    fn at_or_past_the_end_is_end_of_file_with_no_data() {
        let f = file(39);
        // At the end, inside the last sector: the read returns 39 bytes, none from 39 on.
        let r = AlignedRange::new(39, 65_480, 512).unwrap();
        assert_eq!(serve(&r, &f, Some(39)), (ReadOutcome::EndOfFile(&[]), 0));
        // Past the end, a sector further: STATUS_END_OF_FILE, an empty read.
        let r = AlignedRange::new(1000, 10, 512).unwrap();
        assert_eq!(serve(&r, &f, Some(39)), (ReadOutcome::EndOfFile(&[]), 0));
        // An empty file.
        let r = AlignedRange::new(0, 4096, 512).unwrap();
        assert_eq!(serve(&r, &[], Some(0)), (ReadOutcome::EndOfFile(&[]), 0));
        // A file system that returned more than asked is cut to the range.
        let big = file(2048);
        let r = AlignedRange::new(0, 512, 512).unwrap();
        assert_eq!(
            r.outcome(&big, || Some(512)),
            ReadOutcome::EndOfFile(&big[..512])
        );
    }

    /// The first-bytes read of a file of `size` bytes (stated `stated` at
    /// the open) with `budget`: what goes inline, and the size queries.
    fn inline(size: usize, stated: Option<u64>, budget: usize) -> (InlineContent<'static>, u32) {
        let f: &'static [u8] = Vec::leak(file(size));
        let len = inline_read_len(budget, stated);
        let r = AlignedRange::new(0, len, 512).unwrap();
        let (out, asked) = serve(&r, f, Some(size as u64));
        (inline_content(out, stated), asked)
    }

    #[test]
    fn a_small_file_is_read_one_byte_past_its_size_and_sent_whole() {
        assert_eq!(inline_read_len(65_447, Some(68)), 69);
        assert_eq!(inline_read_len(65_447, Some(4096)), 4097);
        assert_eq!(inline_read_len(65_447, Some(0)), 1);
        for size in [0, 39, 68, 511, 512, 4096, 65_446] {
            let (c, asked) = inline(size, Some(size as u64), 65_447);
            assert!(c.whole_file, "{size}");
            assert_eq!(c.bytes, &file(size)[..], "{size}");
            assert_eq!(asked, 0, "{size}: the count tells, no size query");
        }
    }

    #[test]
    fn a_file_as_large_as_the_budget_or_larger_goes_in_part() {
        assert_eq!(inline_read_len(65_447, Some(65_447)), 65_447);
        assert_eq!(inline_read_len(65_447, Some(204_800)), 65_447);
        assert_eq!(inline_read_len(65_447, None), 65_447);
        assert_eq!(inline_read_len(0, Some(10)), 0);
        // Exactly the budget: the read stops at the end, whole.
        let (c, _) = inline(65_447, Some(65_447), 65_447);
        assert!(c.whole_file);
        assert_eq!(c.bytes.len(), 65_447);
        // 200 KiB: the first 65,447 bytes, not whole.
        let (c, asked) = inline(204_800, Some(204_800), 65_447);
        assert!(!c.whole_file);
        assert_eq!(c.bytes, &file(204_800)[..65_447]);
        assert_eq!(asked, 0);
        // A sector-multiple budget smaller than the file: the size decides, Data.
        let (c, asked) = inline(10_000, Some(10_000), 4096);
        assert_eq!((c.bytes.len(), c.whole_file, asked), (4096, false, 1));
        // Size unknown: never whole, even when the read ends the file.
        let (c, _) = inline(68, None, 65_447);
        assert_eq!((c.bytes.len(), c.whole_file), (68, false));
    }

    #[test]
    fn a_file_changed_since_its_size_was_taken_is_not_whole() {
        // Stated 40, 68 now: the byte past the size comes back (Data);
        // the stated 40 go, the host reads on.
        let (c, _) = inline(68, Some(40), 65_447);
        assert_eq!((c.bytes, c.whole_file), (&file(68)[..40], false));
        // Stated 4096, 4196 now.
        let (c, _) = inline(4196, Some(4096), 65_447);
        assert_eq!((c.bytes.len(), c.whole_file), (4096, false));
        // Stated 40, 41 now: the read ends the file, one byte past the size.
        let (c, _) = inline(41, Some(40), 65_447);
        assert_eq!((c.bytes.len(), c.whole_file), (40, false));
        // Stated 100, cut to 30: the end, but not the stated size.
        let (c, _) = inline(30, Some(100), 65_447);
        assert_eq!((c.bytes, c.whole_file), (&file(30)[..], false));
        // A failed read sends nothing.
        let failed = ReadOutcome::Error(thinagent_protocol::OsError::NtStatus(0xC000_0022));
        assert!(inline_content(failed, Some(10)).is_none());
        assert!(inline_content(ReadOutcome::Cancelled, Some(10)).is_none());
    }

    proptest! {
        /// Any file, stated size and budget: the content is the file's
        /// first bytes, at most the budget, and `WHOLE_FILE` exactly when
        /// it is the whole file and the file has its stated size.
        #[test]
        fn inline_content_is_the_first_bytes_and_whole_only_when_it_is(
            size in 0usize..9_000,
            stated in proptest::option::of(0u64..9_000),
            budget in 1usize..10_000,
            sector_shift in 9u32..13,
        ) {
            let f = file(size);
            let len = inline_read_len(budget, stated);
            prop_assert!(len as usize <= budget);
            let r = AlignedRange::new(0, len, 1 << sector_shift).unwrap();
            let (out, _) = serve(&r, &f, Some(size as u64));
            let c = inline_content(out, stated);
            prop_assert!(c.bytes.len() <= budget);
            prop_assert!(stated.is_none_or(|s| c.bytes.len() as u64 <= s));
            prop_assert_eq!(c.bytes, &f[..c.bytes.len()]);
            prop_assert_eq!(
                c.whole_file,
                c.bytes.len() == size && stated == Some(size as u64)
            );
        }
    }

    proptest! {
        /// Over any file, request and sector size: the answer carries the
        /// file's bytes from the offset, it is `EndOfFile` exactly when
        /// those bytes end the file (the size being known), a `Data` answer
        /// is never empty, and the size is asked only when the requested end
        /// is the aligned end.
        #[test]
        fn answers_follow_the_file(
            size in 0usize..20_000,
            offset in 0u64..22_000,
            length in 1u32..70_000,
            sector_shift in 9u32..13,
            known in any::<bool>(),
        ) {
            let sector = 1u32 << sector_shift;
            let f = file(size);
            let r = AlignedRange::new(offset, length, sector).unwrap();
            prop_assert_eq!(r.start % u64::from(sector), 0);
            prop_assert_eq!(r.len % sector, 0);
            prop_assert!(r.start <= offset);
            prop_assert!(r.start + u64::from(r.len) >= offset + u64::from(length));
            prop_assert!(r.start + u64::from(r.len) < offset + u64::from(length) + u64::from(sector));
            let (out, asked) = serve(&r, &f, known.then_some(size as u64));
            let from = (offset as usize).min(size);
            let expected = &f[from..(from + length as usize).min(size)];
            let ends = from + expected.len() == size;
            match out {
                ReadOutcome::EndOfFile(d) => {
                    prop_assert_eq!(d, expected);
                    prop_assert!(ends, "EndOfFile before the end");
                }
                ReadOutcome::Data(d) => {
                    prop_assert_eq!(d, expected);
                    prop_assert!(!d.is_empty());
                    prop_assert!(!ends || !known, "Data at the end though the size was known");
                }
                other => prop_assert!(false, "{:?}", other),
            }
            let aligned_end = offset + u64::from(length) == r.start + u64::from(r.len);
            prop_assert!(asked <= 1);
            prop_assert!(asked == 0 || aligned_end);
        }
    }
}
