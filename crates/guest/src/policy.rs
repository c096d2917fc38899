//! Which file opens are sent to the scanner.
//!
//! [`OpenPolicy::decide`] maps an [`OpenRequest`] (what the minifilter's
//! pre-create callback or the fanotify event knows) to an [`OpenDecision`].
//! The rules, applied in this order (the first that matches wins):
//!
//! 1. `own_io` → [`SkipReason::OwnIo`]: opens made by the agent itself (reading
//!    content for the scanner) would recurse.
//! 2. `requestor_kernel_mode` → [`SkipReason::KernelMode`], unless
//!    [`OpenPolicy::set_check_kernel_mode`] is on: kernel components open files
//!    for their own bookkeeping and could deadlock waiting on the scanner.
//! 3. `is_volume_open` → [`SkipReason::VolumeOpen`] (raw volume handles).
//! 4. `is_paging_file` → [`SkipReason::PagingFile`] (memory manager I/O).
//! 5. `is_directory` → [`SkipReason::Directory`].
//! 6. No data access (none of read/write/append/execute data, nor the generic
//!    rights or `MAXIMUM_ALLOWED`) → [`SkipReason::NoDataAccess`]: attribute-only
//!    opens cannot read content. The I/O manager may or may not have mapped
//!    generic rights yet, so both forms are checked.
//! 7. `create_disposition == FILE_CREATE` → [`SkipReason::NewFile`];
//!    `FILE_SUPERSEDE` / `FILE_OVERWRITE` / `FILE_OVERWRITE_IF` →
//!    [`SkipReason::Overwrite`]: no existing content is readable through the
//!    handle. The new content is checked when the file is next opened, since
//!    the adapter invalidates the cache on close-after-write.
//! 8. `process_id` in the excluded processes → [`SkipReason::ExcludedProcess`]
//!    (process ids are reused: the adapter must remove an id at process exit).
//! 9. `file_size > max_file_size` (when both are known) → [`SkipReason::TooLarge`].
//! 10. path under an excluded prefix → [`SkipReason::ExcludedPath`]. A prefix
//!     matches whole components only: `C:\Temp` excludes `C:\Temp` and
//!     `C:\Temp\a.txt` but not `C:\Temporary`.
//! 11. extension excluded → [`SkipReason::ExcludedExtension`]. The extension
//!     is the text after the last `.` of the last component; with
//!     [`PathStyle::Windows`] an alternate-data-stream suffix (`:stream`) is
//!     ignored first, so `a.log:Zone.Identifier` has extension `log`.
//! 12. otherwise → [`OpenDecision::Check`].
//!
//! Comparison follows [`PathStyle`]: `Windows` is case-insensitive (simple
//! one-to-one Unicode upper-casing, like NTFS's upcase table for the BMP) and
//! treats `/` and `\` alike; `Posix` compares code units exactly. UTF-8 and
//! UTF-16 paths are compared as UTF-16 code units, so either form can be
//! stored and matched against the other.
//!
//! Exclusions live in fixed arrays ([`MAX_EXCLUDED_PREFIXES`] prefixes of up to
//! [`MAX_PREFIX_UNITS`] UTF-16 units, [`MAX_EXCLUDED_EXTENSIONS`] extensions of
//! up to [`MAX_EXTENSION_UNITS`], [`MAX_EXCLUDED_PROCESSES`] process ids);
//! adding to a full list returns [`PolicyError::ListFull`].
//!
//! Matching cost: exclusions are folded once when added, and the prefixes are
//! kept in a sorted index with the longest common prefix of each neighbour
//! pair. [`OpenPolicy::decide`] walks the path once and compares it against
//! the shared part of every still-possible prefix at the same time (a trie
//! walked over the sorted table): a path that leaves the table after `k`
//! units costs at most about `k` folds and comparisons, not `k` per prefix.
//! The shared part is compared from its end, where paths on the same volume
//! as the exclusions differ from them. The extension is folded once into a
//! small buffer and compared as slices. No allocation: the index lives in the
//! policy's fixed arrays.

use core::fmt;

/// Maximum number of excluded path prefixes.
pub const MAX_EXCLUDED_PREFIXES: usize = 32;
/// Maximum length of one excluded prefix, in UTF-16 code units (`MAX_PATH`).
pub const MAX_PREFIX_UNITS: usize = 260;
/// Maximum number of excluded extensions.
pub const MAX_EXCLUDED_EXTENSIONS: usize = 32;
/// Maximum length of one extension (without the dot), in UTF-16 code units.
pub const MAX_EXTENSION_UNITS: usize = 16;
/// Maximum number of excluded process ids.
pub const MAX_EXCLUDED_PROCESSES: usize = 32;

/// `FILE_READ_DATA` access right.
pub const FILE_READ_DATA: u32 = 0x0000_0001;
/// `FILE_WRITE_DATA` access right.
pub const FILE_WRITE_DATA: u32 = 0x0000_0002;
/// `FILE_APPEND_DATA` access right.
pub const FILE_APPEND_DATA: u32 = 0x0000_0004;
/// `FILE_EXECUTE` access right.
pub const FILE_EXECUTE: u32 = 0x0000_0020;
/// `MAXIMUM_ALLOWED` access right.
pub const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
/// `GENERIC_ALL` access right.
pub const GENERIC_ALL: u32 = 0x1000_0000;
/// `GENERIC_EXECUTE` access right.
pub const GENERIC_EXECUTE: u32 = 0x2000_0000;
/// `GENERIC_WRITE` access right.
pub const GENERIC_WRITE: u32 = 0x4000_0000;
/// `GENERIC_READ` access right.
pub const GENERIC_READ: u32 = 0x8000_0000;
/// Every right that reaches file content (rule 6).
pub const DATA_ACCESS_MASK: u32 = FILE_READ_DATA
    | FILE_WRITE_DATA
    | FILE_APPEND_DATA
    | FILE_EXECUTE
    | MAXIMUM_ALLOWED
    | GENERIC_ALL
    | GENERIC_EXECUTE
    | GENERIC_WRITE
    | GENERIC_READ;

/// `FILE_SUPERSEDE` create disposition.
pub const FILE_SUPERSEDE: u32 = 0;
/// `FILE_OPEN` create disposition (the Linux agent always passes this).
pub const FILE_OPEN: u32 = 1;
/// `FILE_CREATE` create disposition.
pub const FILE_CREATE: u32 = 2;
/// `FILE_OPEN_IF` create disposition.
pub const FILE_OPEN_IF: u32 = 3;
/// `FILE_OVERWRITE` create disposition.
pub const FILE_OVERWRITE: u32 = 4;
/// `FILE_OVERWRITE_IF` create disposition.
pub const FILE_OVERWRITE_IF: u32 = 5;

/// How paths compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PathStyle {
    /// Case-insensitive, `/` equals `\` (Windows guests).
    #[default]
    Windows,
    /// Exact code units, `/` is the only separator (Linux guests).
    Posix,
}

/// A borrowed path in either encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRef<'a> {
    /// UTF-16 code units, as Windows passes them (`UNICODE_STRING`), no NUL.
    Utf16(&'a [u16]),
    /// UTF-8 text (Linux paths that are valid UTF-8, configuration strings).
    Utf8(&'a str),
}

impl<'a> From<&'a str> for PathRef<'a> {
    fn from(s: &'a str) -> Self {
        PathRef::Utf8(s)
    }
}

impl<'a> From<&'a [u16]> for PathRef<'a> {
    fn from(s: &'a [u16]) -> Self {
        PathRef::Utf16(s)
    }
}

enum Units<'a> {
    U16(core::iter::Copied<core::slice::Iter<'a, u16>>),
    U8(core::str::EncodeUtf16<'a>),
}

impl Iterator for Units<'_> {
    type Item = u16;
    #[inline]
    fn next(&mut self) -> Option<u16> {
        match self {
            Units::U16(i) => i.next(),
            Units::U8(i) => i.next(),
        }
    }
}

impl<'a> PathRef<'a> {
    fn units(self) -> Units<'a> {
        match self {
            PathRef::Utf16(s) => Units::U16(s.iter().copied()),
            PathRef::Utf8(s) => Units::U8(s.encode_utf16()),
        }
    }

    /// `true` if the path has no code units.
    #[must_use]
    pub fn is_empty(self) -> bool {
        match self {
            PathRef::Utf16(s) => s.is_empty(),
            PathRef::Utf8(s) => s.is_empty(),
        }
    }

    /// The extension of the last component (see rule 11), without the dot.
    #[must_use]
    pub fn extension(self, style: PathStyle) -> Option<PathRef<'a>> {
        match self {
            PathRef::Utf16(s) => ext_range(s, style, |u| u).map(|r| PathRef::Utf16(&s[r])),
            // The range is bounded by ASCII '.', ':' or the end, so it lies on
            // char boundaries.
            PathRef::Utf8(s) => ext_range(s.as_bytes(), style, u16::from)
                .and_then(|r| s.get(r))
                .map(PathRef::Utf8),
        }
    }
}

fn is_sep(style: PathStyle, u: u16) -> bool {
    u == u16::from(b'/') || (style == PathStyle::Windows && u == u16::from(b'\\'))
}

/// Index range of the extension of the last component of `s`.
fn ext_range<T: Copy>(
    s: &[T],
    style: PathStyle,
    to_u16: impl Fn(T) -> u16,
) -> Option<core::ops::Range<usize>> {
    let start = s
        .iter()
        .rposition(|&u| is_sep(style, to_u16(u)))
        .map_or(0, |i| i + 1);
    let mut end = s.len();
    if style == PathStyle::Windows
        && let Some(colon) = s[start..]
            .iter()
            .position(|&u| to_u16(u) == u16::from(b':'))
    {
        end = start + colon;
    }
    let dot = start
        + s[start..end]
            .iter()
            .rposition(|&u| to_u16(u) == u16::from(b'.'))?;
    if dot + 1 == end {
        None
    } else {
        Some(dot + 1..end)
    }
}

/// Folds one UTF-16 unit for comparison under `style`.
#[inline]
fn fold(style: PathStyle, u: u16) -> u16 {
    if style == PathStyle::Posix {
        return u;
    }
    if u < 0x80 {
        let b = u as u8;
        return if b == b'/' {
            u16::from(b'\\')
        } else {
            u16::from(b.to_ascii_uppercase())
        };
    }
    // Surrogates (0xD800..=0xDFFF) are not chars and stay as they are.
    match char::from_u32(u32::from(u)) {
        Some(c) => {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(one), None) if (one as u32) <= 0xFFFF => one as u32 as u16,
                _ => u,
            }
        }
        None => u,
    }
}

/// Why an open is not checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The agent's own I/O.
    OwnIo,
    /// Requested from kernel mode.
    KernelMode,
    /// A volume open.
    VolumeOpen,
    /// The paging file.
    PagingFile,
    /// A directory.
    Directory,
    /// No right that reaches content was requested.
    NoDataAccess,
    /// `FILE_CREATE`: the file is new, there is no content yet.
    NewFile,
    /// Supersede / overwrite: the old content is discarded.
    Overwrite,
    /// The requesting process is excluded.
    ExcludedProcess,
    /// Larger than the configured maximum.
    TooLarge,
    /// Under an excluded path prefix.
    ExcludedPath,
    /// Its extension is excluded.
    ExcludedExtension,
}

impl SkipReason {
    /// A short lower-case name for logs and counters.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            SkipReason::OwnIo => "own-io",
            SkipReason::KernelMode => "kernel-mode",
            SkipReason::VolumeOpen => "volume-open",
            SkipReason::PagingFile => "paging-file",
            SkipReason::Directory => "directory",
            SkipReason::NoDataAccess => "no-data-access",
            SkipReason::NewFile => "new-file",
            SkipReason::Overwrite => "overwrite",
            SkipReason::ExcludedProcess => "excluded-process",
            SkipReason::TooLarge => "too-large",
            SkipReason::ExcludedPath => "excluded-path",
            SkipReason::ExcludedExtension => "excluded-extension",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy's answer for one open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpenDecision {
    /// Ask the cache, then the scanner.
    Check,
    /// Let the open through unchecked.
    Skip(SkipReason),
}

/// What the adapter knows about one open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenRequest<'a> {
    /// The target is a directory (or `FILE_DIRECTORY_FILE` was requested).
    pub is_directory: bool,
    /// The target is a volume, not a file.
    pub is_volume_open: bool,
    /// The target is a paging file.
    pub is_paging_file: bool,
    /// The requestor mode is `KernelMode`.
    pub requestor_kernel_mode: bool,
    /// Requesting process id.
    pub process_id: u32,
    /// Full path of the target (volume-relative or with device prefix; the
    /// exclusions must use the same form).
    pub path: PathRef<'a>,
    /// Size in bytes, if known at this point.
    pub file_size: Option<u64>,
    /// `ACCESS_MASK` requested.
    pub desired_access: u32,
    /// Create disposition (`FILE_OPEN`, ...).
    pub create_disposition: u32,
    /// The open was issued by the agent itself.
    pub own_io: bool,
}

impl<'a> OpenRequest<'a> {
    /// A plain user-mode `FILE_OPEN` for read of `path` by `process_id`, with
    /// every flag false; adjust fields as needed.
    #[must_use]
    pub const fn read(path: PathRef<'a>, process_id: u32) -> Self {
        OpenRequest {
            is_directory: false,
            is_volume_open: false,
            is_paging_file: false,
            requestor_kernel_mode: false,
            process_id,
            path,
            file_size: None,
            desired_access: FILE_READ_DATA,
            create_disposition: FILE_OPEN,
            own_io: false,
        }
    }
}

/// Which exclusion list an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExclusionList {
    /// Path prefixes.
    Path,
    /// Extensions.
    Extension,
    /// Process ids.
    Process,
}

impl fmt::Display for ExclusionList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExclusionList::Path => "path",
            ExclusionList::Extension => "extension",
            ExclusionList::Process => "process",
        })
    }
}

/// Why an exclusion could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// The list already holds `capacity` entries.
    ListFull {
        /// Which list.
        list: ExclusionList,
        /// Its capacity.
        capacity: usize,
    },
    /// The entry is longer than `max` UTF-16 units.
    TooLong {
        /// Which list.
        list: ExclusionList,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The entry is empty (or only a dot / separator).
    Empty(ExclusionList),
    /// An extension contains a separator, `:` or `.` after the leading dot.
    InvalidExtension,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PolicyError::ListFull { list, capacity } => {
                write!(f, "{list} exclusion list is full ({capacity} entries)")
            }
            PolicyError::TooLong { list, len, max } => {
                write!(
                    f,
                    "{list} exclusion too long: {len} UTF-16 units, at most {max}"
                )
            }
            PolicyError::Empty(list) => write!(f, "empty {list} exclusion"),
            PolicyError::InvalidExtension => {
                f.write_str("extension contains '/', '\\', ':' or '.'")
            }
        }
    }
}

impl core::error::Error for PolicyError {}

/// The open-filter policy. See the [module docs](self) for the rules.
///
/// About 18 KiB: keep it in the driver's global context, not on a stack.
#[derive(Clone)]
pub struct OpenPolicy {
    style: PathStyle,
    check_kernel_mode: bool,
    max_file_size: Option<u64>,
    prefixes: [[u16; MAX_PREFIX_UNITS]; MAX_EXCLUDED_PREFIXES],
    prefix_lens: [u16; MAX_EXCLUDED_PREFIXES],
    prefix_count: usize,
    /// Indices into `prefixes`, in lexicographic order of the folded units
    /// (so the storage keeps insertion order for [`OpenPolicy::prefixes`]).
    prefix_order: [u8; MAX_EXCLUDED_PREFIXES],
    /// `prefix_lcp[k]`: units shared by the `k`-th and `k+1`-th prefix in
    /// `prefix_order`; the minimum over a run is what the whole run shares.
    prefix_lcp: [u16; MAX_EXCLUDED_PREFIXES],
    extensions: [[u16; MAX_EXTENSION_UNITS]; MAX_EXCLUDED_EXTENSIONS],
    extension_lens: [u8; MAX_EXCLUDED_EXTENSIONS],
    extension_count: usize,
    processes: [u32; MAX_EXCLUDED_PROCESSES],
    process_count: usize,
}

impl fmt::Debug for OpenPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenPolicy")
            .field("style", &self.style)
            .field("check_kernel_mode", &self.check_kernel_mode)
            .field("max_file_size", &self.max_file_size)
            .field("prefixes", &self.prefix_count)
            .field("extensions", &self.extension_count)
            .field("processes", &self.excluded_processes())
            .finish()
    }
}

impl Default for OpenPolicy {
    fn default() -> Self {
        Self::new(PathStyle::Windows)
    }
}

impl OpenPolicy {
    /// A policy with no exclusions, no size limit, kernel-mode opens skipped.
    #[must_use]
    pub const fn new(style: PathStyle) -> Self {
        OpenPolicy {
            style,
            check_kernel_mode: false,
            max_file_size: None,
            prefixes: [[0; MAX_PREFIX_UNITS]; MAX_EXCLUDED_PREFIXES],
            prefix_lens: [0; MAX_EXCLUDED_PREFIXES],
            prefix_count: 0,
            prefix_order: [0; MAX_EXCLUDED_PREFIXES],
            prefix_lcp: [0; MAX_EXCLUDED_PREFIXES],
            extensions: [[0; MAX_EXTENSION_UNITS]; MAX_EXCLUDED_EXTENSIONS],
            extension_lens: [0; MAX_EXCLUDED_EXTENSIONS],
            extension_count: 0,
            processes: [0; MAX_EXCLUDED_PROCESSES],
            process_count: 0,
        }
    }

    /// The comparison style.
    #[must_use]
    pub const fn style(&self) -> PathStyle {
        self.style
    }

    /// Also check opens requested from kernel mode (rule 2).
    pub fn set_check_kernel_mode(&mut self, on: bool) {
        self.check_kernel_mode = on;
    }

    /// Whether opens requested from kernel mode are scanned too.
    #[must_use]
    pub const fn checks_kernel_mode(&self) -> bool {
        self.check_kernel_mode
    }

    /// Skip files larger than `max` bytes (`None` = no limit, the default).
    pub fn set_max_file_size(&mut self, max: Option<u64>) {
        self.max_file_size = max;
    }

    /// The size limit.
    #[must_use]
    pub const fn max_file_size(&self) -> Option<u64> {
        self.max_file_size
    }

    /// Excludes every path under `prefix` (whole components). Adding a prefix
    /// that is already present is a no-op.
    pub fn add_excluded_prefix(&mut self, prefix: PathRef<'_>) -> Result<(), PolicyError> {
        let mut buf = [0u16; MAX_PREFIX_UNITS];
        let mut len = 0;
        for u in prefix.units() {
            if len == MAX_PREFIX_UNITS {
                let total = prefix.units().count();
                return Err(PolicyError::TooLong {
                    list: ExclusionList::Path,
                    len: total,
                    max: MAX_PREFIX_UNITS,
                });
            }
            buf[len] = fold(self.style, u);
            len += 1;
        }
        if len == 0 {
            return Err(PolicyError::Empty(ExclusionList::Path));
        }
        if self.prefixes().any(|p| p == &buf[..len]) {
            return Ok(());
        }
        if self.prefix_count == MAX_EXCLUDED_PREFIXES {
            return Err(PolicyError::ListFull {
                list: ExclusionList::Path,
                capacity: MAX_EXCLUDED_PREFIXES,
            });
        }
        self.prefixes[self.prefix_count] = buf;
        self.prefix_lens[self.prefix_count] = len as u16;
        self.prefix_count += 1;
        self.index_new_prefix();
        Ok(())
    }

    /// Inserts the last stored prefix into the sorted index and recomputes
    /// the neighbour common-prefix lengths (at most 32 entries: configuration
    /// time, not the open path).
    fn index_new_prefix(&mut self) {
        let new = self.prefix_count - 1;
        let key = self.stored_prefix(new);
        let at =
            self.prefix_order[..new].partition_point(|&i| self.stored_prefix(usize::from(i)) < key);
        self.prefix_order.copy_within(at..new, at + 1);
        // MAX_EXCLUDED_PREFIXES (32) fits a u8.
        self.prefix_order[at] = new as u8;
        for k in 0..new {
            let (a, b) = (self.sorted_prefix(k), self.sorted_prefix(k + 1));
            let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            // Both are at most MAX_PREFIX_UNITS (260) long.
            self.prefix_lcp[k] = common as u16;
        }
    }

    fn stored_prefix(&self, i: usize) -> &[u16] {
        &self.prefixes[i][..usize::from(self.prefix_lens[i])]
    }

    /// The `k`-th prefix in sorted order.
    #[inline]
    fn sorted_prefix(&self, k: usize) -> &[u16] {
        self.stored_prefix(usize::from(self.prefix_order[k]))
    }

    /// Excludes an extension, given with or without its leading dot (`"log"`,
    /// `".log"`). Adding one that is already present is a no-op.
    pub fn add_excluded_extension(&mut self, ext: PathRef<'_>) -> Result<(), PolicyError> {
        let mut units = ext.units().peekable();
        if units.peek() == Some(&u16::from(b'.')) {
            units.next();
        }
        let mut buf = [0u16; MAX_EXTENSION_UNITS];
        let mut len = 0;
        for u in units {
            if u == u16::from(b'.')
                || u == u16::from(b':')
                || is_sep(self.style, u)
                || u == u16::from(b'/')
            {
                return Err(PolicyError::InvalidExtension);
            }
            if len == MAX_EXTENSION_UNITS {
                let total = ext.units().count();
                return Err(PolicyError::TooLong {
                    list: ExclusionList::Extension,
                    len: total,
                    max: MAX_EXTENSION_UNITS,
                });
            }
            buf[len] = fold(self.style, u);
            len += 1;
        }
        if len == 0 {
            return Err(PolicyError::Empty(ExclusionList::Extension));
        }
        if self.extensions().any(|e| e == &buf[..len]) {
            return Ok(());
        }
        if self.extension_count == MAX_EXCLUDED_EXTENSIONS {
            return Err(PolicyError::ListFull {
                list: ExclusionList::Extension,
                capacity: MAX_EXCLUDED_EXTENSIONS,
            });
        }
        self.extensions[self.extension_count] = buf;
        self.extension_lens[self.extension_count] = len as u8;
        self.extension_count += 1;
        Ok(())
    }

    /// Excludes a process id (remove it when the process exits: ids are reused).
    pub fn add_excluded_process(&mut self, pid: u32) -> Result<(), PolicyError> {
        if self.excluded_processes().contains(&pid) {
            return Ok(());
        }
        if self.process_count == MAX_EXCLUDED_PROCESSES {
            return Err(PolicyError::ListFull {
                list: ExclusionList::Process,
                capacity: MAX_EXCLUDED_PROCESSES,
            });
        }
        self.processes[self.process_count] = pid;
        self.process_count += 1;
        Ok(())
    }

    /// Removes a process id; returns whether it was present.
    pub fn remove_excluded_process(&mut self, pid: u32) -> bool {
        match self.excluded_processes().iter().position(|&p| p == pid) {
            Some(i) => {
                self.processes[i] = self.processes[self.process_count - 1];
                self.process_count -= 1;
                true
            }
            None => false,
        }
    }

    /// Removes every path, extension and process exclusion.
    pub fn clear_exclusions(&mut self) {
        self.prefix_count = 0;
        self.extension_count = 0;
        self.process_count = 0;
    }

    /// The stored prefixes (folded for the style), in insertion order.
    pub fn prefixes(&self) -> impl Iterator<Item = &[u16]> + '_ {
        self.prefixes[..self.prefix_count]
            .iter()
            .zip(&self.prefix_lens)
            .map(|(p, &l)| &p[..usize::from(l)])
    }

    /// The stored extensions (folded for the style, no dot).
    pub fn extensions(&self) -> impl Iterator<Item = &[u16]> + '_ {
        self.extensions[..self.extension_count]
            .iter()
            .zip(&self.extension_lens)
            .map(|(e, &l)| &e[..usize::from(l)])
    }

    /// The excluded process ids.
    #[must_use]
    pub fn excluded_processes(&self) -> &[u32] {
        &self.processes[..self.process_count]
    }

    /// `true` if `path` is under an excluded prefix.
    #[must_use]
    pub fn path_excluded(&self, path: PathRef<'_>) -> bool {
        if self.prefix_count == 0 {
            return false;
        }
        // Only the first MAX_PREFIX_UNITS + 1 units can decide: a stored
        // prefix is at most MAX_PREFIX_UNITS long, plus the unit after it
        // (the component boundary).
        const HEAD: usize = MAX_PREFIX_UNITS + 1;
        match path {
            PathRef::Utf16(s) => self.units_excluded(s),
            PathRef::Utf8(s) => {
                let head = &s.as_bytes()[..s.len().min(HEAD)];
                if head.is_ascii() {
                    // ASCII bytes are the UTF-16 units themselves.
                    self.units_excluded(head)
                } else {
                    let mut buf = [0u16; HEAD];
                    let mut n = 0;
                    for (slot, u) in buf.iter_mut().zip(s.encode_utf16()) {
                        *slot = u;
                        n += 1;
                    }
                    self.units_excluded(&buf[..n])
                }
            }
        }
    }

    /// The one-pass prefix match over the path's (unfolded) units. `lo..hi`
    /// is the run of sorted prefixes that agree with the first `i` folded
    /// units of the path. A run shares its first `min(prefix_lcp[lo..hi-1])`
    /// units, so they are compared once for the whole run; where its members
    /// differ, it narrows by binary search on unit `i`.
    fn units_excluded<T: Copy + Into<u16>>(&self, path: &[T]) -> bool {
        let style = self.style;
        let unit = |j: usize| fold(style, path[j].into());
        let (mut lo, mut hi) = (0, self.prefix_count);
        let mut i = 0;
        while lo < hi {
            let first = self.sorted_prefix(lo);
            let common = self.prefix_lcp[lo..hi - 1]
                .iter()
                .map(|&l| usize::from(l))
                .min()
                .unwrap_or(first.len());
            if common > i {
                // Every member of the run is at least `common` long and
                // starts with `first[..common]`.
                if path.len() < common {
                    return false;
                }
                // Backwards: exclusions and paths mostly share their volume
                // or root, so a mismatch is likeliest at the run's end.
                if (i..common).rev().any(|j| unit(j) != first[j]) {
                    return false;
                }
                i = common;
            }
            let next = (i < path.len()).then(|| unit(i));
            if first.len() == i {
                // `first` is the run's shortest member and a prefix of all
                // the others; it matches at a component boundary.
                let ends_with_sep = first.last().is_some_and(|&p| is_sep(style, p));
                match next {
                    None => return true,
                    Some(u) if ends_with_sep || is_sep(style, u) => return true,
                    Some(_) => {}
                }
                lo += 1;
                continue;
            }
            // Every member is longer than `i` and they share units `..i`,
            // so the run is sorted by unit `i`.
            let Some(u) = next else {
                return false;
            };
            let run = &self.prefix_order[lo..hi];
            let below = run.partition_point(|&p| self.stored_prefix(usize::from(p))[i] < u);
            let upto = run.partition_point(|&p| self.stored_prefix(usize::from(p))[i] <= u);
            (lo, hi) = (lo + below, lo + upto);
            // The new run (if any) has unit `i` = `u`, as the path has.
            i += 1;
        }
        false
    }

    /// `true` if `path`'s extension is excluded.
    #[must_use]
    pub fn extension_excluded(&self, path: PathRef<'_>) -> bool {
        if self.extension_count == 0 {
            return false;
        }
        let Some(ext) = path.extension(self.style) else {
            return false;
        };
        // Fold the extension once; one longer than any stored extension can
        // match none.
        let mut buf = [0u16; MAX_EXTENSION_UNITS];
        let mut len = 0;
        for u in ext.units() {
            if len == MAX_EXTENSION_UNITS {
                return false;
            }
            buf[len] = fold(self.style, u);
            len += 1;
        }
        let ext = &buf[..len];
        self.extensions().any(|e| e == ext)
    }

    /// Applies the rules to one open.
    #[must_use]
    pub fn decide(&self, req: &OpenRequest<'_>) -> OpenDecision {
        let skip = if req.own_io {
            SkipReason::OwnIo
        } else if req.requestor_kernel_mode && !self.check_kernel_mode {
            SkipReason::KernelMode
        } else if req.is_volume_open {
            SkipReason::VolumeOpen
        } else if req.is_paging_file {
            SkipReason::PagingFile
        } else if req.is_directory {
            SkipReason::Directory
        } else if req.desired_access & DATA_ACCESS_MASK == 0 {
            SkipReason::NoDataAccess
        } else if req.create_disposition == FILE_CREATE {
            SkipReason::NewFile
        } else if matches!(
            req.create_disposition,
            FILE_SUPERSEDE | FILE_OVERWRITE | FILE_OVERWRITE_IF
        ) {
            SkipReason::Overwrite
        } else if self.excluded_processes().contains(&req.process_id) {
            SkipReason::ExcludedProcess
        } else if matches!((req.file_size, self.max_file_size), (Some(s), Some(m)) if s > m) {
            SkipReason::TooLarge
        } else if self.path_excluded(req.path) {
            SkipReason::ExcludedPath
        } else if self.extension_excluded(req.path) {
            SkipReason::ExcludedExtension
        } else {
            return OpenDecision::Check;
        };
        OpenDecision::Skip(skip)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::string::String;
    use std::vec::Vec;

    fn u16s(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    fn win() -> OpenPolicy {
        let mut p = OpenPolicy::new(PathStyle::Windows);
        p.add_excluded_prefix("\\Device\\HarddiskVolume2\\Temp".into())
            .unwrap();
        p.add_excluded_prefix(PathRef::Utf16(&u16s("c:/pagefiles/")))
            .unwrap();
        p.add_excluded_extension(".LOG".into()).unwrap();
        p.add_excluded_extension("tmp".into()).unwrap();
        p.add_excluded_process(4).unwrap();
        p
    }

    fn decide(p: &OpenPolicy, path: &str) -> OpenDecision {
        p.decide(&OpenRequest::read(PathRef::Utf8(path), 100))
    }

    #[test]
    fn rule_order() {
        let p = win();
        let base = OpenRequest::read("C:\\a.exe".into(), 100);
        assert_eq!(p.decide(&base), OpenDecision::Check);
        let all = OpenRequest {
            own_io: true,
            requestor_kernel_mode: true,
            is_volume_open: true,
            is_paging_file: true,
            is_directory: true,
            desired_access: 0,
            create_disposition: FILE_CREATE,
            process_id: 4,
            file_size: Some(u64::MAX),
            path: "\\Device\\HarddiskVolume2\\Temp\\x.log".into(),
        };
        let mut p2 = p.clone();
        p2.set_max_file_size(Some(10));
        // peel the rules off one by one, in documented order
        let mut r = all;
        let expected = [
            SkipReason::OwnIo,
            SkipReason::KernelMode,
            SkipReason::VolumeOpen,
            SkipReason::PagingFile,
            SkipReason::Directory,
            SkipReason::NoDataAccess,
            SkipReason::NewFile,
            SkipReason::ExcludedProcess,
            SkipReason::TooLarge,
            SkipReason::ExcludedPath,
            SkipReason::ExcludedExtension,
        ];
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(p2.decide(&r), OpenDecision::Skip(*want), "step {i}");
            match i {
                0 => r.own_io = false,
                1 => r.requestor_kernel_mode = false,
                2 => r.is_volume_open = false,
                3 => r.is_paging_file = false,
                4 => r.is_directory = false,
                5 => r.desired_access = GENERIC_READ,
                6 => r.create_disposition = FILE_OPEN,
                7 => r.process_id = 5,
                8 => r.file_size = Some(10),
                9 => r.path = "\\Device\\HarddiskVolume3\\x.log".into(),
                _ => r.path = "\\Device\\HarddiskVolume3\\x.exe".into(),
            }
        }
        assert_eq!(p2.decide(&r), OpenDecision::Check);
        // kernel mode checked when asked
        let mut p3 = p.clone();
        p3.set_check_kernel_mode(true);
        let km = OpenRequest {
            requestor_kernel_mode: true,
            ..base
        };
        assert_eq!(p3.decide(&km), OpenDecision::Check);
        assert_eq!(p.decide(&km), OpenDecision::Skip(SkipReason::KernelMode));
        for d in [FILE_SUPERSEDE, FILE_OVERWRITE, FILE_OVERWRITE_IF] {
            let o = OpenRequest {
                create_disposition: d,
                ..base
            };
            assert_eq!(p.decide(&o), OpenDecision::Skip(SkipReason::Overwrite));
        }
        let oi = OpenRequest {
            create_disposition: FILE_OPEN_IF,
            ..base
        };
        assert_eq!(p.decide(&oi), OpenDecision::Check);
    }

    #[test]
    fn prefixes_match_whole_components_case_insensitively() {
        let p = win();
        let ex = OpenDecision::Skip(SkipReason::ExcludedPath);
        assert_eq!(decide(&p, "\\device\\harddiskvolume2\\temp"), ex);
        assert_eq!(decide(&p, "\\DEVICE\\HARDDISKVOLUME2\\TEMP\\a.exe"), ex);
        assert_eq!(decide(&p, "/Device/HarddiskVolume2/Temp/a.exe"), ex);
        assert_eq!(
            decide(&p, "\\Device\\HarddiskVolume2\\Temporary\\a.exe"),
            OpenDecision::Check
        );
        assert_eq!(
            decide(&p, "\\Device\\HarddiskVolume2\\Tem"),
            OpenDecision::Check
        );
        assert_eq!(decide(&p, "C:\\PageFiles\\x.sys"), ex);
        assert_eq!(decide(&p, "C:\\PageFilesX\\x.sys"), OpenDecision::Check);
        // non-ASCII folding: Ä vs ä
        let mut q = OpenPolicy::new(PathStyle::Windows);
        q.add_excluded_prefix("C:\\Dätä".into()).unwrap();
        assert_eq!(decide(&q, "c:\\DÄTÄ\\f.exe"), ex);
        let w = u16s("C:\\DÄTÄ\\f.exe");
        assert_eq!(q.decide(&OpenRequest::read(PathRef::Utf16(&w), 1)), ex);
    }

    #[test]
    fn extensions() {
        let p = win();
        let ex = OpenDecision::Skip(SkipReason::ExcludedExtension);
        assert_eq!(decide(&p, "C:\\x\\a.LoG"), ex);
        assert_eq!(decide(&p, "C:\\x\\a.exe.tmp"), ex);
        assert_eq!(decide(&p, "C:\\x\\a.log:Zone.Identifier"), ex);
        assert_eq!(decide(&p, "C:\\x\\a.tmp.exe"), OpenDecision::Check);
        assert_eq!(decide(&p, "C:\\x.log\\a"), OpenDecision::Check);
        assert_eq!(decide(&p, "C:\\x\\a.logs"), OpenDecision::Check);
        assert_eq!(decide(&p, "C:\\x\\log"), OpenDecision::Check);
        assert_eq!(decide(&p, "C:\\x\\a."), OpenDecision::Check);
        assert_eq!(
            PathRef::Utf8("a/b.c/d.ée").extension(PathStyle::Posix),
            Some(PathRef::Utf8("ée"))
        );
        let w = u16s("a\\b.Tmp");
        assert_eq!(p.decide(&OpenRequest::read(PathRef::Utf16(&w), 1)), ex);
    }

    #[test]
    fn posix_is_exact() {
        let mut p = OpenPolicy::new(PathStyle::Posix);
        p.add_excluded_prefix("/var/log".into()).unwrap();
        p.add_excluded_extension("gz".into()).unwrap();
        assert_eq!(
            decide(&p, "/var/log/syslog"),
            OpenDecision::Skip(SkipReason::ExcludedPath)
        );
        assert_eq!(decide(&p, "/VAR/log/syslog"), OpenDecision::Check);
        assert_eq!(
            decide(&p, "/home/a.gz"),
            OpenDecision::Skip(SkipReason::ExcludedExtension)
        );
        assert_eq!(decide(&p, "/home/a.GZ"), OpenDecision::Check);
        assert_eq!(decide(&p, "/home/a\\b.gz:x"), OpenDecision::Check);
    }

    #[test]
    fn bounded_lists() {
        let mut p = OpenPolicy::new(PathStyle::Windows);
        for i in 0..MAX_EXCLUDED_PREFIXES {
            p.add_excluded_prefix(PathRef::Utf8(&std::format!("C:\\d{i}")))
                .unwrap();
        }
        p.add_excluded_prefix("c:\\D0".into()).unwrap(); // duplicate after folding: no-op
        assert_eq!(
            p.add_excluded_prefix("C:\\more".into()),
            Err(PolicyError::ListFull {
                list: ExclusionList::Path,
                capacity: 32
            })
        );
        let long: String = "a".repeat(261);
        assert_eq!(
            p.add_excluded_prefix(PathRef::Utf8(&long)),
            Err(PolicyError::TooLong {
                list: ExclusionList::Path,
                len: 261,
                max: 260
            })
        );
        assert_eq!(
            p.add_excluded_prefix("".into()),
            Err(PolicyError::Empty(ExclusionList::Path))
        );
        assert_eq!(
            p.add_excluded_extension(".".into()),
            Err(PolicyError::Empty(ExclusionList::Extension))
        );
        assert_eq!(
            p.add_excluded_extension("a.b".into()),
            Err(PolicyError::InvalidExtension)
        );
        assert!(matches!(
            p.add_excluded_extension("abcdefghijklmnopq".into()),
            Err(PolicyError::TooLong { .. })
        ));
        for pid in 0..32 {
            p.add_excluded_process(pid).unwrap();
        }
        assert!(p.add_excluded_process(99).is_err());
        assert!(p.remove_excluded_process(3));
        assert!(!p.remove_excluded_process(3));
        p.add_excluded_process(99).unwrap();
        assert_eq!(
            std::format!(
                "{}",
                PolicyError::ListFull {
                    list: ExclusionList::Process,
                    capacity: 32
                }
            ),
            "process exclusion list is full (32 entries)"
        );
        p.clear_exclusions();
        assert_eq!(p.prefixes().count(), 0);
    }

    fn reference_prefix_match(prefix: &str, path: &str) -> bool {
        let norm = |s: &str| -> String {
            s.chars()
                .map(|c| if c == '/' { '\\' } else { c })
                .flat_map(char::to_uppercase)
                .collect()
        };
        let (p, q) = (norm(prefix), norm(path));
        q == p || (q.starts_with(&p) && (p.ends_with('\\') || q[p.len()..].starts_with('\\')))
    }

    /// The matching algorithm before the sorted index (issue 16), kept as
    /// the oracle: every stored prefix and extension compared unit by unit,
    /// folding the path again for each. Straightforward, so easy to trust.
    mod oracle {
        use super::super::*;

        fn prefix_matches(p: &OpenPolicy, prefix: &[u16], path: PathRef<'_>) -> bool {
            let mut units = path.units();
            for &x in prefix {
                match units.next() {
                    Some(u) if fold(p.style, u) == x => {}
                    _ => return false,
                }
            }
            let ends_with_sep = prefix.last().is_some_and(|&x| is_sep(p.style, x));
            match units.next() {
                None => true,
                Some(u) => ends_with_sep || is_sep(p.style, u),
            }
        }

        pub fn path_excluded(p: &OpenPolicy, path: PathRef<'_>) -> bool {
            p.prefixes().any(|x| prefix_matches(p, x, path))
        }

        pub fn extension_excluded(p: &OpenPolicy, path: PathRef<'_>) -> bool {
            let Some(ext) = path.extension(p.style) else {
                return false;
            };
            p.extensions().any(|e| {
                let mut units = ext.units();
                e.iter()
                    .all(|&x| units.next().is_some_and(|u| fold(p.style, u) == x))
                    && units.next().is_none()
            })
        }

        pub fn decide(p: &OpenPolicy, req: &OpenRequest<'_>) -> OpenDecision {
            let skip = if req.own_io {
                SkipReason::OwnIo
            } else if req.requestor_kernel_mode && !p.check_kernel_mode {
                SkipReason::KernelMode
            } else if req.is_volume_open {
                SkipReason::VolumeOpen
            } else if req.is_paging_file {
                SkipReason::PagingFile
            } else if req.is_directory {
                SkipReason::Directory
            } else if req.desired_access & DATA_ACCESS_MASK == 0 {
                SkipReason::NoDataAccess
            } else if req.create_disposition == FILE_CREATE {
                SkipReason::NewFile
            } else if matches!(
                req.create_disposition,
                FILE_SUPERSEDE | FILE_OVERWRITE | FILE_OVERWRITE_IF
            ) {
                SkipReason::Overwrite
            } else if p.excluded_processes().contains(&req.process_id) {
                SkipReason::ExcludedProcess
            } else if matches!((req.file_size, p.max_file_size), (Some(s), Some(m)) if s > m) {
                SkipReason::TooLarge
            } else if path_excluded(p, req.path) {
                SkipReason::ExcludedPath
            } else if extension_excluded(p, req.path) {
                SkipReason::ExcludedExtension
            } else {
                return OpenDecision::Check;
            };
            OpenDecision::Skip(skip)
        }
    }

    /// Paths longer than any prefix are matched on their first
    /// `MAX_PREFIX_UNITS + 1` units (non-ASCII UTF-8 is transcoded only that
    /// far): a prefix of the maximum length still sees its boundary unit.
    #[test]
    fn longest_prefixes_match_like_the_oracle() {
        let mut p = OpenPolicy::new(PathStyle::Windows);
        let ascii: String = "A".repeat(MAX_PREFIX_UNITS);
        let wide: String = "ä".repeat(MAX_PREFIX_UNITS - 1) + "\\";
        p.add_excluded_prefix(PathRef::Utf8(&ascii)).unwrap();
        p.add_excluded_prefix(PathRef::Utf8(&wide)).unwrap();
        let long_tail = "é".repeat(600);
        let paths = [
            ascii.clone(),
            ascii.to_lowercase(),
            std::format!("{ascii}\\{long_tail}"),
            std::format!("{ascii}B{long_tail}"),
            std::format!("{}\\x", &ascii[1..]),
            wide.clone(),
            wide.to_uppercase(),
            std::format!("{wide}{long_tail}"),
            std::format!("{}{long_tail}", &wide[..wide.len() - 1]),
            std::format!("{}x{long_tail}", &wide[..wide.len() - 1]),
        ];
        let mut hits = 0;
        for path in &paths {
            let w = u16s(path);
            for path in [PathRef::Utf8(path), PathRef::Utf16(&w)] {
                let want = oracle::path_excluded(&p, path);
                hits += usize::from(want);
                assert_eq!(p.path_excluded(path), want, "{path:?}");
            }
        }
        assert_eq!(hits, 2 * 6, "the cases are not all misses");
    }

    /// Path material for the oracle test: both separators, the drive colon,
    /// dots, ASCII and non-ASCII letters in both cases (`ß` upper-cases to
    /// two letters and so folds to itself; `ſ` upper-cases to `S`), a
    /// character outside the BMP (a surrogate pair in UTF-16).
    const ALPHABET: &[char] = &[
        'a', 'A', 'b', 'B', 's', 'S', '/', '\\', '.', ':', 'ä', 'Ä', 'ß', 'ſ', 'k', '\u{212A}', '𝔸',
    ];

    fn piece(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(ALPHABET), 0..=max)
            .prop_map(|v| v.into_iter().collect())
    }

    /// `s` with each letter's case flipped where `flips` says so and each
    /// separator swapped where `seps` says so: a Windows-equal variant.
    fn variant(s: &str, flips: &[bool]) -> String {
        s.chars()
            .zip(flips.iter().cycle())
            .flat_map(|(c, &f)| {
                let c = match c {
                    '/' if f => '\\',
                    '\\' if f => '/',
                    _ => c,
                };
                let mut out: Vec<char> = if f && c.is_lowercase() {
                    c.to_uppercase().collect()
                } else if f && c.is_uppercase() {
                    c.to_lowercase().collect()
                } else {
                    std::vec![c]
                };
                // A case change that is not one-to-one is not a variant.
                if out.len() != 1 {
                    out = std::vec![c];
                }
                out
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The indexed matcher decides exactly like the oracle, for random
        /// exclusion sets and paths built from them (case / separator
        /// variants, truncated, extended), in both styles and encodings.
        #[test]
        fn decide_agrees_with_oracle(
            windows in any::<bool>(),
            prefixes in prop::collection::vec(piece(8), 0..12),
            extensions in prop::collection::vec(piece(4), 0..6),
            base in any::<prop::sample::Index>(),
            use_base in 0u8..4,
            flips in prop::collection::vec(any::<bool>(), 1..8),
            cut in any::<prop::sample::Index>(),
            tail in piece(8),
        ) {
            let style = if windows { PathStyle::Windows } else { PathStyle::Posix };
            let mut p = OpenPolicy::new(style);
            for x in &prefixes {
                let _ = p.add_excluded_prefix(PathRef::Utf8(x));
            }
            for x in &extensions {
                let _ = p.add_excluded_extension(PathRef::Utf8(x));
            }
            // Mostly paths that start like a stored prefix, so matches and
            // near-misses (one unit short, the next component longer) are
            // common rather than rare.
            let head = match (use_base, prefixes.is_empty()) {
                (0, _) | (_, true) => String::new(),
                (1, false) => prefixes[base.index(prefixes.len())].clone(),
                (_, false) => {
                    let v = variant(&prefixes[base.index(prefixes.len())], &flips);
                    if use_base == 3 {
                        let chars: Vec<char> = v.chars().collect();
                        chars[..cut.index(chars.len() + 1)].iter().collect()
                    } else {
                        v
                    }
                }
            };
            let path = head + &tail;
            let w = u16s(&path);
            for path in [PathRef::Utf8(&path), PathRef::Utf16(&w)] {
                prop_assert_eq!(p.path_excluded(path), oracle::path_excluded(&p, path));
                prop_assert_eq!(
                    p.extension_excluded(path),
                    oracle::extension_excluded(&p, path)
                );
                let req = OpenRequest::read(path, 7);
                prop_assert_eq!(p.decide(&req), oracle::decide(&p, &req));
            }
        }

        #[test]
        fn prefix_matching_agrees_with_reference(
            prefix in "[a-cA-C/\\\\]{1,6}",
            path in "[a-cA-C/\\\\.]{0,10}",
        ) {
            let mut p = OpenPolicy::new(PathStyle::Windows);
            p.add_excluded_prefix(PathRef::Utf8(&prefix)).unwrap();
            let want = reference_prefix_match(&prefix, &path);
            prop_assert_eq!(p.path_excluded(PathRef::Utf8(&path)), want);
            let w = u16s(&path);
            prop_assert_eq!(p.path_excluded(PathRef::Utf16(&w)), want);
        }

        #[test]
        fn utf8_and_utf16_decide_alike(path in "\\PC{0,40}", pid in 0u32..40) {
            let p = win();
            let w = u16s(&path);
            prop_assert_eq!(
                p.decide(&OpenRequest::read(PathRef::Utf8(&path), pid)),
                p.decide(&OpenRequest::read(PathRef::Utf16(&w), pid))
            );
        }
    }
}
