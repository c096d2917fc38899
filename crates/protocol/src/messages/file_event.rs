//! `FileEvent` (guest → host): a file is being opened or executed, or was
//! closed after a write, and the guest waits for a `Verdict`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::PayloadError;
use crate::message::Codec;
use crate::wire::{self, Writer};
use crate::wire_enum::wire_enum;

wire_enum! {
    /// What happened to the file.
    pub enum EventKind: u8, field = "kind" {
        /// The file is being opened (pre-create / fanotify open permission).
        Open = 1,
        /// The file is being mapped for execution.
        Execute = 2,
        /// A handle that wrote to the file was closed; the content may have
        /// changed. The guest still waits for the verdict only if it chooses to.
        CloseAfterWrite = 3,
        /// Version 2: the file is judged because of a host's `ScanTree`
        /// (`docs/protocol.md` §14.4); no operation waits for it, so its
        /// `process_id` and `desired_access` are 0 and its
        /// `create_disposition` is `Open`.
        OnDemand = 4,
    }
}

wire_enum! {
    /// The create disposition of the open, with the values of the Windows
    /// `FILE_*` create dispositions. Linux agents map `O_CREAT`/`O_TRUNC`/
    /// `O_EXCL` onto them (see `docs/protocol.md`).
    pub enum CreateDisposition: u32, field = "create_disposition" {
        /// `FILE_SUPERSEDE`: replace if it exists, create otherwise.
        Supersede = 0,
        /// `FILE_OPEN`: open an existing file.
        Open = 1,
        /// `FILE_CREATE`: create, fail if it exists.
        Create = 2,
        /// `FILE_OPEN_IF`: open, or create if missing.
        OpenIf = 3,
        /// `FILE_OVERWRITE`: open and truncate an existing file.
        Overwrite = 4,
        /// `FILE_OVERWRITE_IF`: open and truncate, or create if missing.
        OverwriteIf = 5,
    }
}

wire_enum! {
    /// How the bytes of a [`FilePath`] are encoded (the `path_encoding` field).
    pub enum PathEncoding: u8, field = "path_encoding" {
        /// UTF-8, validated.
        Utf8 = 1,
        /// UTF-16 little-endian code units (Windows names; unpaired
        /// surrogates allowed because NTFS allows them).
        Utf16Le = 2,
        /// Raw bytes of a POSIX path; senders use it only for paths that
        /// are not valid UTF-8.
        Bytes = 3,
    }
}

/// The normalized path of the file, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilePath<'a> {
    /// A UTF-8 path.
    Utf8(&'a str),
    /// A UTF-16LE path: an even number of bytes, two per code unit.
    Utf16Le(&'a [u8]),
    /// A POSIX path of arbitrary bytes (sent only when not valid UTF-8).
    Bytes(&'a [u8]),
}

impl<'a> FilePath<'a> {
    /// The encoding tag sent on the wire.
    pub const fn encoding(&self) -> PathEncoding {
        match self {
            Self::Utf8(_) => PathEncoding::Utf8,
            Self::Utf16Le(_) => PathEncoding::Utf16Le,
            Self::Bytes(_) => PathEncoding::Bytes,
        }
    }

    /// The path's bytes as sent on the wire.
    pub const fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Self::Utf8(s) => s.as_bytes(),
            Self::Utf16Le(b) | Self::Bytes(b) => b,
        }
    }

    /// The UTF-16 code units of a `Utf16Le` path; `None` for other encodings.
    pub fn utf16_units(&self) -> Option<impl Iterator<Item = u16> + 'a> {
        match *self {
            Self::Utf16Le(b) => Some(b.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]]))),
            Self::Utf8(_) | Self::Bytes(_) => None,
        }
    }

    pub(crate) fn from_wire(encoding: PathEncoding, bytes: &'a [u8]) -> Result<Self, PayloadError> {
        Ok(match encoding {
            PathEncoding::Utf8 => Self::Utf8(
                core::str::from_utf8(bytes)
                    .map_err(|_| PayloadError::InvalidUtf8 { field: "path" })?,
            ),
            PathEncoding::Utf16Le => Self::Utf16Le(bytes),
            PathEncoding::Bytes => Self::Bytes(bytes),
        })
    }

    pub(crate) fn validate(&self) -> Result<(), PayloadError> {
        let bytes = self.as_bytes();
        if bytes.is_empty() {
            return Err(PayloadError::Empty { field: "path" });
        }
        wire::bounded(bytes.len(), usize::from(u16::MAX), "path")?;
        match self {
            Self::Utf16Le(b) if b.len() % 2 != 0 => {
                Err(PayloadError::OddUtf16Length { field: "path" })
            }
            _ => Ok(()),
        }
    }
}

/// Identity and version of the file's content, so the host can cache
/// verdicts across opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileIdentity {
    /// Volume serial number (Windows) or `st_dev` (Linux).
    pub volume_serial: u64,
    /// 128-bit file id (`FILE_ID_128`, bytes as Windows stores them) or, on
    /// Linux, `st_ino` as little-endian u64 in bytes 0..8 and zeros after.
    pub file_id: [u8; 16],
    /// File size in bytes when the event was raised.
    pub size: u64,
    /// Last write time as a Windows `FILETIME`: 100 ns intervals since
    /// 1601-01-01 UTC (Linux: `st_mtime` converted).
    pub last_write_time: u64,
}

/// The first bytes of the file, sent with a version-2 `FileEvent` so the
/// host need not ask for them (`docs/protocol.md` §5.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InlineContent<'a> {
    /// Bytes `0..bytes.len()` of the file as the guest read them.
    pub bytes: &'a [u8],
    /// `bytes` is the whole file: the guest read to its end, and
    /// `bytes.len()` equals the event's `file_size`. The host then sends no
    /// `ReadRequest` for the event.
    pub whole_file: bool,
}

impl<'a> InlineContent<'a> {
    /// No inline content (every version-1 `FileEvent`).
    pub const NONE: InlineContent<'static> = InlineContent {
        bytes: &[],
        whole_file: false,
    };

    /// `true` when the event carries nothing inline (no bytes, not marked
    /// as the whole file).
    pub const fn is_none(&self) -> bool {
        self.bytes.is_empty() && !self.whole_file
    }
}

/// Guest → host: asks for a verdict on one file. The header's request id
/// names the event; the `Verdict` and every `ReadRequest` refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileEvent<'a> {
    /// What happened.
    pub kind: EventKind,
    /// Id of the process doing it.
    pub process_id: u32,
    /// Windows `ACCESS_MASK` of the open (Linux: mapped, see `docs/protocol.md`).
    pub desired_access: u32,
    /// Create disposition of the open.
    pub create_disposition: CreateDisposition,
    /// File identity and version.
    pub file: FileIdentity,
    /// Normalized path, never empty.
    pub path: FilePath<'a>,
    /// The file's first bytes (version 2 and later; [`InlineContent::NONE`]
    /// in version 1, which cannot carry any).
    pub content: InlineContent<'a>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FileEventWire {
    kind: u8,
    path_encoding: u8,
    path_len: U16,
    process_id: U32,
    desired_access: U32,
    create_disposition: U32,
    volume_serial: U64,
    file_id: [u8; 16],
    file_size: U64,
    last_write_time: U64,
}

/// What version 2 appends to the version-1 fixed part.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct InlineWire {
    content_len: U32,
    content_flags: u8,
    reserved0: u8,
    reserved1: U16,
}

/// `content_flags` bit 0: the content is the whole file.
const WHOLE_FILE: u8 = 1;

/// Size of `FileEvent`'s fixed part in version 1.
pub(crate) const FILE_EVENT_FIXED_LEN: usize = 56;
const _: () = assert!(size_of::<FileEventWire>() == FILE_EVENT_FIXED_LEN);
pub(crate) use crate::FILE_EVENT_V2_FIXED_LEN;
const _: () =
    assert!(size_of::<FileEventWire>() + size_of::<InlineWire>() == FILE_EVENT_V2_FIXED_LEN);

/// `true` when `version` has the inline-content layout.
const fn has_inline(version: u16) -> bool {
    version >= 2
}

impl<'a> Codec<'a> for FileEvent<'a> {
    fn decode(payload: &'a [u8], version: u16) -> Result<Self, PayloadError> {
        let (w, rest) = wire::split_fixed::<FileEventWire>(payload)?;
        let (content_len, whole_file, variable) = if has_inline(version) {
            let (x, variable) =
                wire::split_fixed::<InlineWire>(rest).map_err(|_| PayloadError::Truncated {
                    needed: FILE_EVENT_V2_FIXED_LEN,
                    actual: payload.len(),
                })?;
            if x.content_flags & !WHOLE_FILE != 0 {
                return Err(PayloadError::ReservedNonZero {
                    field: "content_flags",
                });
            }
            wire::reserved(x.reserved0.into(), "reserved")?;
            wire::reserved(x.reserved1.get().into(), "reserved")?;
            (
                x.content_len.get() as usize,
                x.content_flags & WHOLE_FILE != 0,
                variable,
            )
        } else {
            (0, false, rest)
        };
        let path_len = usize::from(w.path_len.get());
        let fixed = payload.len() - variable.len();
        wire::expect_len(
            payload,
            fixed.saturating_add(path_len).saturating_add(content_len),
        )?;
        let (path, content) = variable.split_at(path_len);
        let kind = EventKind::decode(w.kind)?;
        if kind == EventKind::OnDemand && version < crate::HOST_ACTIONS_VERSION {
            return Err(PayloadError::UnknownValue {
                field: "kind",
                value: w.kind.into(),
            });
        }
        let event = FileEvent {
            kind,
            process_id: w.process_id.get(),
            desired_access: w.desired_access.get(),
            create_disposition: CreateDisposition::decode(w.create_disposition.get())?,
            file: FileIdentity {
                volume_serial: w.volume_serial.get(),
                file_id: w.file_id,
                size: w.file_size.get(),
                last_write_time: w.last_write_time.get(),
            },
            path: FilePath::from_wire(PathEncoding::decode(w.path_encoding)?, path)?,
            content: InlineContent {
                bytes: content,
                whole_file,
            },
        };
        event.validate()?;
        Ok(event)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        self.path.validate()?;
        wire::bounded(
            self.content.bytes.len(),
            crate::MAX_INLINE_LEN as usize,
            "content",
        )?;
        if self.kind == EventKind::OnDemand {
            let fields = [
                ("process_id", u64::from(self.process_id), 0),
                ("desired_access", u64::from(self.desired_access), 0),
                (
                    "create_disposition",
                    u64::from(self.create_disposition.to_wire()),
                    u64::from(CreateDisposition::Open.to_wire()),
                ),
            ];
            for (field, value, required) in fields {
                if value != required {
                    return Err(PayloadError::OutOfRange { field, value });
                }
            }
        }
        let len = self.content.bytes.len() as u64;
        if self.content.whole_file && len != self.file.size {
            return Err(PayloadError::OutOfRange {
                field: "content_len",
                value: len,
            });
        }
        Ok(())
    }

    fn check_version(&self, version: u16) -> Result<(), PayloadError> {
        if self.kind == EventKind::OnDemand && version < crate::HOST_ACTIONS_VERSION {
            return Err(PayloadError::NotInVersion {
                field: "kind",
                version,
            });
        }
        if has_inline(version) || self.content.is_none() {
            Ok(())
        } else {
            Err(PayloadError::NotInVersion {
                field: "content",
                version,
            })
        }
    }

    fn payload_len(&self, version: u16) -> usize {
        let fixed = if has_inline(version) {
            FILE_EVENT_V2_FIXED_LEN
        } else {
            FILE_EVENT_FIXED_LEN
        };
        fixed
            .saturating_add(self.path.as_bytes().len())
            .saturating_add(self.content.bytes.len())
    }

    fn write(&self, w: &mut Writer<'_>, version: u16) {
        let fixed = FileEventWire {
            kind: self.kind.to_wire(),
            path_encoding: self.path.encoding().to_wire(),
            path_len: wire::len_u16(self.path.as_bytes().len()).into(),
            process_id: self.process_id.into(),
            desired_access: self.desired_access.into(),
            create_disposition: self.create_disposition.to_wire().into(),
            volume_serial: self.file.volume_serial.into(),
            file_id: self.file.file_id,
            file_size: self.file.size.into(),
            last_write_time: self.file.last_write_time.into(),
        };
        w.put(fixed.as_bytes());
        if has_inline(version) {
            let inline = InlineWire {
                content_len: wire::len_u32(self.content.bytes.len()).into(),
                content_flags: if self.content.whole_file {
                    WHOLE_FILE
                } else {
                    0
                },
                reserved0: 0,
                reserved1: 0.into(),
            };
            w.put(inline.as_bytes());
        }
        w.put(self.path.as_bytes());
        w.put(self.content.bytes);
    }
}
