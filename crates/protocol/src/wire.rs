//! Small, panic-free helpers shared by the message codecs.

use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use crate::PayloadError;

/// Splits `payload` into its fixed part `T` and the rest.
pub(crate) fn split_fixed<T>(payload: &[u8]) -> Result<(&T, &[u8]), PayloadError>
where
    T: FromBytes + KnownLayout + Immutable + Unaligned,
{
    T::ref_from_prefix(payload).map_err(|_| PayloadError::Truncated {
        needed: size_of::<T>(),
        actual: payload.len(),
    })
}

/// Reads a payload that is exactly its fixed part `T`.
pub(crate) fn exact_fixed<T>(payload: &[u8]) -> Result<&T, PayloadError>
where
    T: FromBytes + KnownLayout + Immutable + Unaligned,
{
    let (fixed, rest) = split_fixed::<T>(payload)?;
    expect_len(payload, size_of::<T>())?;
    debug_assert!(rest.is_empty());
    Ok(fixed)
}

/// Checks that the whole payload is `expected` bytes long.
pub(crate) fn expect_len(payload: &[u8], expected: usize) -> Result<(), PayloadError> {
    if payload.len() == expected {
        Ok(())
    } else {
        Err(PayloadError::LengthMismatch {
            expected,
            actual: payload.len(),
        })
    }
}

/// Fails with [`PayloadError::ReservedNonZero`] unless `value` is zero.
pub(crate) fn reserved(value: u64, field: &'static str) -> Result<(), PayloadError> {
    if value == 0 {
        Ok(())
    } else {
        Err(PayloadError::ReservedNonZero { field })
    }
}

/// Fails with [`PayloadError::TooLong`] if `len > max`.
pub(crate) fn bounded(len: usize, max: usize, field: &'static str) -> Result<(), PayloadError> {
    if len <= max {
        Ok(())
    } else {
        Err(PayloadError::TooLong { field, len, max })
    }
}

/// Validates `bytes` as UTF-8 of at most `max` bytes.
pub(crate) fn utf8<'a>(
    bytes: &'a [u8],
    max: usize,
    field: &'static str,
) -> Result<&'a str, PayloadError> {
    bounded(bytes.len(), max, field)?;
    core::str::from_utf8(bytes).map_err(|_| PayloadError::InvalidUtf8 { field })
}

/// A length known to fit in `u16` (callers validate first); saturates otherwise.
pub(crate) fn len_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// A length known to fit in `u32` (callers validate first); saturates otherwise.
pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Appends bytes to a buffer the encoder has already sized exactly.
///
/// Never panics: a write past the end (an encoder bug, caught by the
/// round-trip tests) is dropped instead.
pub(crate) struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> Writer<'b> {
    pub(crate) fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }

    /// Bytes written so far (including any dropped past the end).
    pub(crate) fn position(&self) -> usize {
        self.pos
    }
}
