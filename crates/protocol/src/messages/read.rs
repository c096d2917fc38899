//! `ReadRequest` (host → guest) and `ReadData` (guest → host): the host pulls
//! a file's content in chunks while it decides on a `FileEvent`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::message::Codec;
use crate::wire::{self, Writer};
use crate::wire_enum::wire_enum;
use crate::{MAX_READ_CHUNK, PayloadError, READ_DATA_FIXED_LEN};

/// Host → guest: read `length` bytes at `offset` of the file of the
/// outstanding `FileEvent` `event_id`. The header's request id is the host's
/// own id for this read; the `ReadData` answer carries it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    /// Request id of the `FileEvent` whose file to read.
    pub event_id: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes wanted, 1..=[`MAX_READ_CHUNK`] (and at most the negotiated
    /// `max_read_chunk`); `offset + length` must not overflow u64.
    pub length: u32,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ReadRequestWire {
    event_id: U64,
    offset: U64,
    length: U32,
    reserved: U32,
}

/// Size of `ReadRequest`'s payload.
pub(crate) const READ_REQUEST_LEN: usize = 24;
const _: () = assert!(size_of::<ReadRequestWire>() == READ_REQUEST_LEN);

impl<'a> Codec<'a> for ReadRequest {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let w = wire::exact_fixed::<ReadRequestWire>(payload)?;
        wire::reserved(w.reserved.get().into(), "reserved")?;
        let request = ReadRequest {
            event_id: w.event_id.get(),
            offset: w.offset.get(),
            length: w.length.get(),
        };
        request.validate()?;
        Ok(request)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        if self.length == 0 || self.length > MAX_READ_CHUNK {
            return Err(PayloadError::OutOfRange {
                field: "length",
                value: self.length.into(),
            });
        }
        if self.offset.checked_add(self.length.into()).is_none() {
            return Err(PayloadError::OutOfRange {
                field: "offset",
                value: self.offset,
            });
        }
        Ok(())
    }

    fn payload_len(&self, _version: u16) -> usize {
        READ_REQUEST_LEN
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let fixed = ReadRequestWire {
            event_id: self.event_id.into(),
            offset: self.offset.into(),
            length: self.length.into(),
            reserved: 0.into(),
        };
        w.put(fixed.as_bytes());
    }
}

/// An operating-system error code from a failed read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OsError {
    /// A Windows `NTSTATUS` (e.g. `0xC0000022` access denied).
    NtStatus(u32),
    /// A POSIX `errno` value (e.g. 5 = `EIO`).
    Errno(u32),
}

impl OsError {
    /// `error_space` and `error_code` as on the wire for an optional error
    /// (`ReadData`, and the results of protocol §14).
    pub(crate) const fn to_wire(error: Option<Self>) -> (ErrorSpace, u32) {
        match error {
            None => (ErrorSpace::None, 0),
            Some(Self::NtStatus(c)) => (ErrorSpace::NtStatus, c),
            Some(Self::Errno(c)) => (ErrorSpace::Errno, c),
        }
    }
}

/// The outcome of one read, borrowing the data from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome<'a> {
    /// 1 or more bytes starting at the requested offset; the file goes on.
    /// May be shorter than requested.
    Data(&'a [u8]),
    /// The last bytes of the file (possibly none): offset + length = file size.
    EndOfFile(&'a [u8]),
    /// The read failed; no data.
    Error(OsError),
    /// The event is no longer outstanding on the guest (its deadline passed
    /// or it was never known); no data.
    Cancelled,
}

wire_enum! {
    /// The `status` field of `ReadData`.
    pub enum ReadStatus: u8, field = "status" {
        /// See [`ReadOutcome::Data`].
        Data = 1,
        /// See [`ReadOutcome::EndOfFile`].
        EndOfFile = 2,
        /// See [`ReadOutcome::Error`].
        Error = 3,
        /// See [`ReadOutcome::Cancelled`].
        Cancelled = 4,
    }
}

wire_enum! {
    /// The `error_space` field of `ReadData`: how to read `error_code`.
    pub enum ErrorSpace: u8, field = "error_space" {
        /// No error: `error_code` is 0.
        None = 0,
        /// `error_code` is an `NTSTATUS`.
        NtStatus = 1,
        /// `error_code` is an `errno`.
        Errno = 2,
    }
}

/// Guest → host: the answer to the `ReadRequest` whose request id the header
/// carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadData<'a> {
    /// The `event_id` of the `ReadRequest`, echoed.
    pub event_id: u64,
    /// The `offset` of the `ReadRequest`, echoed.
    pub offset: u64,
    /// Data or why there is none.
    pub outcome: ReadOutcome<'a>,
}

impl ReadData<'_> {
    /// The bytes carried (empty unless `Data` or `EndOfFile`).
    pub const fn data(&self) -> &[u8] {
        match self.outcome {
            ReadOutcome::Data(d) | ReadOutcome::EndOfFile(d) => d,
            ReadOutcome::Error(_) | ReadOutcome::Cancelled => &[],
        }
    }

    /// The `status` value sent on the wire.
    pub const fn status(&self) -> ReadStatus {
        match self.outcome {
            ReadOutcome::Data(_) => ReadStatus::Data,
            ReadOutcome::EndOfFile(_) => ReadStatus::EndOfFile,
            ReadOutcome::Error(_) => ReadStatus::Error,
            ReadOutcome::Cancelled => ReadStatus::Cancelled,
        }
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ReadDataWire {
    event_id: U64,
    offset: U64,
    status: u8,
    error_space: u8,
    reserved0: U16,
    error_code: U32,
    data_len: U32,
    reserved1: U32,
}

const _: () = assert!(size_of::<ReadDataWire>() == READ_DATA_FIXED_LEN);

impl<'a> Codec<'a> for ReadData<'a> {
    fn decode(payload: &'a [u8], _version: u16) -> Result<Self, PayloadError> {
        let (w, data) = wire::split_fixed::<ReadDataWire>(payload)?;
        let data_len = usize::try_from(w.data_len.get()).unwrap_or(usize::MAX);
        wire::expect_len(payload, READ_DATA_FIXED_LEN.saturating_add(data_len))?;
        wire::reserved(w.reserved0.get().into(), "reserved0")?;
        wire::reserved(w.reserved1.get().into(), "reserved1")?;
        let status = ReadStatus::decode(w.status)?;
        let space = ErrorSpace::decode(w.error_space)?;
        let code = w.error_code.get();
        let outcome = match status {
            ReadStatus::Data => ReadOutcome::Data(data),
            ReadStatus::EndOfFile => ReadOutcome::EndOfFile(data),
            ReadStatus::Error => ReadOutcome::Error(match space {
                ErrorSpace::NtStatus => OsError::NtStatus(code),
                ErrorSpace::Errno => OsError::Errno(code),
                ErrorSpace::None => {
                    return Err(PayloadError::UnknownValue {
                        field: "error_space",
                        value: 0,
                    });
                }
            }),
            ReadStatus::Cancelled => ReadOutcome::Cancelled,
        };
        if matches!(status, ReadStatus::Error | ReadStatus::Cancelled) && !data.is_empty() {
            return Err(PayloadError::OutOfRange {
                field: "data_len",
                value: data.len() as u64,
            });
        }
        if status != ReadStatus::Error {
            wire::reserved(space.to_wire().into(), "error_space")?;
            wire::reserved(code.into(), "error_code")?;
        }
        let read = ReadData {
            event_id: w.event_id.get(),
            offset: w.offset.get(),
            outcome,
        };
        read.validate()?;
        Ok(read)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        let data = self.data();
        wire::bounded(data.len(), MAX_READ_CHUNK as usize, "data")?;
        match self.outcome {
            ReadOutcome::Data([]) => Err(PayloadError::Empty { field: "data" }),
            _ => {
                if self.offset.checked_add(data.len() as u64).is_none() {
                    return Err(PayloadError::OutOfRange {
                        field: "offset",
                        value: self.offset,
                    });
                }
                Ok(())
            }
        }
    }

    fn payload_len(&self, _version: u16) -> usize {
        READ_DATA_FIXED_LEN.saturating_add(self.data().len())
    }

    fn write(&self, w: &mut Writer<'_>, _version: u16) {
        let (space, code) = OsError::to_wire(match self.outcome {
            ReadOutcome::Error(e) => Some(e),
            _ => None,
        });
        let fixed = ReadDataWire {
            event_id: self.event_id.into(),
            offset: self.offset.into(),
            status: self.status().to_wire(),
            error_space: space.to_wire(),
            reserved0: 0.into(),
            error_code: code.into(),
            data_len: wire::len_u32(self.data().len()).into(),
            reserved1: 0.into(),
        };
        w.put(fixed.as_bytes());
        w.put(self.data());
    }
}

#[cfg(test)]
mod tests {
    use super::{OsError, ReadData, ReadOutcome, ReadStatus};

    #[test]
    fn data_and_status_follow_the_outcome() {
        let read = |outcome| ReadData {
            event_id: 1,
            offset: 0,
            outcome,
        };
        assert_eq!(read(ReadOutcome::Data(b"ab")).data(), b"ab");
        assert_eq!(read(ReadOutcome::Data(b"ab")).status(), ReadStatus::Data);
        assert_eq!(read(ReadOutcome::EndOfFile(b"c")).data(), b"c");
        assert_eq!(
            read(ReadOutcome::EndOfFile(b"c")).status(),
            ReadStatus::EndOfFile
        );
        assert_eq!(read(ReadOutcome::Error(OsError::Errno(5))).data(), b"");
        assert_eq!(
            read(ReadOutcome::Error(OsError::Errno(5))).status(),
            ReadStatus::Error
        );
        assert_eq!(read(ReadOutcome::Cancelled).data(), b"");
        assert_eq!(read(ReadOutcome::Cancelled).status(), ReadStatus::Cancelled);
    }
}
