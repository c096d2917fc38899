//! A host `Policy` (`docs/protocol.md` §14.6) as a guest applies it,
//! sans-IO: [`stage`] checks the whole policy and builds the new settings
//! aside (the exclusions into a copy of the open policy the caller made),
//! so the caller can then put both in place in one step under its lock, or
//! change nothing when the policy is [`Rejection`]ed.
//!
//! Fields the local admin pinned (a bit mask of `Policy.fields`: the
//! Windows driver's `PinnedPolicy` registry value) keep their local value
//! and are reported back in `ActionResult.pinned`.
//!
//! No allocation: exclusion values are converted into a fixed buffer of
//! [`MAX_PREFIX_UNITS`] UTF-16 units.

use core::fmt;

use thinagent_protocol::{ExclusionKind, FilePath, Policy, PolicyFields};

use crate::params::FailMode;
use crate::policy::{MAX_PREFIX_UNITS, OpenPolicy, PathRef, PolicyError};

/// Most process images a host policy may exclude.
pub const MAX_EXCLUDED_IMAGES: usize = 16;
/// Longest excluded image name, UTF-16 units (a file name, no directory).
pub const MAX_IMAGE_UNITS: usize = 64;

/// Excluded process image names (§14.6 kind 3): an open by a process whose
/// image file name (the last component of its path) equals one of them,
/// ASCII case-insensitively, is not scanned. Fixed size, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageList {
    names: [[u16; MAX_IMAGE_UNITS]; MAX_EXCLUDED_IMAGES],
    lens: [u8; MAX_EXCLUDED_IMAGES],
    count: usize,
}

fn fold(u: u16) -> u16 {
    if (u16::from(b'A')..=u16::from(b'Z')).contains(&u) {
        u + 32
    } else {
        u
    }
}

fn is_separator(u: u16) -> bool {
    u == u16::from(b'\\') || u == u16::from(b'/')
}

impl Default for ImageList {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageList {
    /// No image excluded.
    #[must_use]
    pub const fn new() -> Self {
        ImageList {
            names: [[0; MAX_IMAGE_UNITS]; MAX_EXCLUDED_IMAGES],
            lens: [0; MAX_EXCLUDED_IMAGES],
            count: 0,
        }
    }

    /// Removes every image.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Whether no image is excluded.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds an image name (a path's last component is taken).
    pub fn add(&mut self, name: PathRef<'_>) -> Result<(), Rejection> {
        let mut buf = [0u16; MAX_PREFIX_UNITS];
        let mut n = 0;
        let mut push = |u: u16| -> Result<(), Rejection> {
            if is_separator(u) {
                n = 0;
                return Ok(());
            }
            if n == buf.len() {
                return Err(Rejection::ImageTooLong);
            }
            buf[n] = fold(u);
            n += 1;
            Ok(())
        };
        match name {
            PathRef::Utf16(s) => s.iter().try_for_each(|&u| push(u))?,
            PathRef::Utf8(s) => s.encode_utf16().try_for_each(&mut push)?,
        }
        if n == 0 {
            return Err(Rejection::ImageTooLong);
        }
        if n > MAX_IMAGE_UNITS {
            return Err(Rejection::ImageTooLong);
        }
        if self.count == MAX_EXCLUDED_IMAGES {
            return Err(Rejection::TooManyImages);
        }
        self.names[self.count][..n].copy_from_slice(&buf[..n]);
        self.lens[self.count] = n as u8;
        self.count += 1;
        Ok(())
    }

    /// Whether the image at `path` (a full image path, e.g. from
    /// `SeLocateProcessImageName`) is excluded.
    #[must_use]
    pub fn matches(&self, path: &[u16]) -> bool {
        let start = path
            .iter()
            .rposition(|&u| is_separator(u))
            .map_or(0, |i| i + 1);
        let file = &path[start..];
        (0..self.count).any(|i| {
            let name = &self.names[i][..usize::from(self.lens[i])];
            name.len() == file.len() && name.iter().zip(file).all(|(&a, &b)| a == fold(b))
        })
    }
}

/// Shortest per-query deadline a host may set, ms (as `umcMsgTimeoutMs`).
pub const MIN_QUERY_TIMEOUT_MS: u32 = 100;
/// Longest per-query deadline a host may set, ms (as `umcMsgTimeoutMs`).
pub const MAX_QUERY_TIMEOUT_MS: u32 = 60_000;

/// The settings a host policy changes besides the open policy's
/// exclusions and size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSettings {
    /// The host policy version in effect (0: none received).
    pub version: u64,
    /// What a query gets without a host verdict.
    pub fail_mode: FailMode,
    /// Log level 0..=4.
    pub debug_level: u8,
    /// Per-query deadline, ms.
    pub query_timeout_ms: u32,
    /// Longest a verdict is kept, ms: `None` = no limit of the guest's own
    /// (each `Verdict`'s TTL still applies), `Some(0)` = no caching.
    pub cache_ttl_cap_ms: Option<u64>,
}

impl HostSettings {
    /// The TTL to cache a host verdict with, given its own `cache_ttl_secs`:
    /// `None` = do not cache.
    #[must_use]
    pub fn verdict_ttl(&self, host_secs: u32) -> Option<core::time::Duration> {
        if host_secs == 0 {
            return None;
        }
        let host = u64::from(host_secs).saturating_mul(1000);
        let ms = self.cache_ttl_cap_ms.map_or(host, |cap| cap.min(host));
        (ms > 0).then(|| core::time::Duration::from_millis(ms))
    }
}

/// Why a policy cannot be held: it is answered `Rejected` and changes
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// More process-image exclusions than [`MAX_EXCLUDED_IMAGES`].
    TooManyImages,
    /// An empty process-image name, or one longer than [`MAX_IMAGE_UNITS`].
    ImageTooLong,
    /// An exclusion value that is not text (raw bytes that are not UTF-8,
    /// or odd-length UTF-16).
    Encoding,
    /// An exclusion longer than the tables hold, or too many.
    Exclusion(PolicyError),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::TooManyImages => write!(
                f,
                "more than {MAX_EXCLUDED_IMAGES} process-image exclusions"
            ),
            Rejection::ImageTooLong => write!(
                f,
                "a process-image exclusion is empty or longer than {MAX_IMAGE_UNITS} UTF-16 units"
            ),
            Rejection::Encoding => f.write_str("an exclusion is not valid text"),
            Rejection::Exclusion(e) => write!(f, "{e}"),
        }
    }
}

/// What [`stage`] prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    /// The settings to put in place (`version` = the policy's).
    pub settings: HostSettings,
    /// Whether `staged` (the open policy) or `images` changed: exclusions
    /// or max size.
    pub open_policy_changed: bool,
    /// The policy's fields not applied because they are pinned
    /// (`ActionResult.pinned`).
    pub pinned: u32,
}

/// Checks `policy` against the guest's tables and prepares it: `current`
/// are the settings in effect, `staged` a copy of the open policy in effect
/// and `images` of the excluded images (changed in place: exclusions
/// replaced, max scan size set, unless pinned), `pinned` the locally pinned
/// field bits. On `Err` `staged` and `images` may be partly changed:
/// discard them.
///
/// A `policy.version` equal to `current.version` is the caller's to
/// answer `Done` without calling this (§14.6).
pub fn stage(
    policy: &Policy<'_>,
    pinned: u32,
    current: &HostSettings,
    staged: &mut OpenPolicy,
    images: &mut ImageList,
) -> Result<Staged, Rejection> {
    let fields = policy.fields();
    let takes = |bit: PolicyFields| fields.contains(bit) && pinned & bit.0 == 0;
    let mut s = *current;
    s.version = policy.version;
    let mut changed = false;
    if takes(PolicyFields::EXCLUSIONS)
        && let Some(list) = policy.exclusions
    {
        staged.clear_exclusions();
        images.clear();
        let mut buf = [0u16; MAX_PREFIX_UNITS];
        for e in list.iter() {
            let value = match e.value {
                FilePath::Utf8(t) => PathRef::Utf8(t),
                FilePath::Bytes(b) => {
                    PathRef::Utf8(core::str::from_utf8(b).map_err(|_| Rejection::Encoding)?)
                }
                FilePath::Utf16Le(b) => {
                    if b.len() % 2 != 0 {
                        return Err(Rejection::Encoding);
                    }
                    let n = b.len() / 2;
                    if n > buf.len() {
                        return Err(Rejection::Exclusion(PolicyError::TooLong {
                            list: crate::policy::ExclusionList::Path,
                            len: n,
                            max: MAX_PREFIX_UNITS,
                        }));
                    }
                    for (d, c) in buf.iter_mut().zip(b.chunks_exact(2)) {
                        *d = u16::from_le_bytes([c[0], c[1]]);
                    }
                    PathRef::Utf16(&buf[..n])
                }
            };
            match e.kind {
                ExclusionKind::PathPrefix => staged
                    .add_excluded_prefix(value)
                    .map_err(Rejection::Exclusion)?,
                ExclusionKind::Extension => staged
                    .add_excluded_extension(value)
                    .map_err(Rejection::Exclusion)?,
                ExclusionKind::ProcessImage => images.add(value)?,
            }
        }
        changed = true;
    }
    if takes(PolicyFields::MAX_SCAN_SIZE)
        && let Some(max) = policy.max_scan_size
    {
        staged.set_max_file_size((max > 0).then_some(max));
        changed = true;
    }
    if takes(PolicyFields::FAIL_MODE)
        && let Some(m) = policy.fail_mode
    {
        s.fail_mode = match m {
            thinagent_protocol::FailMode::Open => FailMode::Open,
            thinagent_protocol::FailMode::Closed => FailMode::Closed,
        };
    }
    if takes(PolicyFields::DEBUG_LEVEL)
        && let Some(l) = policy.debug_level
    {
        s.debug_level = l;
    }
    if takes(PolicyFields::QUERY_TIMEOUT)
        && let Some(t) = policy.query_timeout_ms
    {
        s.query_timeout_ms = t.clamp(MIN_QUERY_TIMEOUT_MS, MAX_QUERY_TIMEOUT_MS);
    }
    if takes(PolicyFields::CACHE_TTL_MAX)
        && let Some(t) = policy.cache_ttl_max_secs
    {
        s.cache_ttl_cap_ms = Some(u64::from(t) * 1000);
    }
    Ok(Staged {
        settings: s,
        open_policy_changed: changed,
        pinned: fields.0 & pinned,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::policy::{OpenDecision, OpenRequest, PathStyle, SkipReason};
    use std::boxed::Box;
    use std::vec::Vec;
    use thinagent_protocol::{Exclusion, Exclusions};

    fn current() -> HostSettings {
        HostSettings {
            version: 0,
            fail_mode: FailMode::Open,
            debug_level: 2,
            query_timeout_ms: 2000,
            cache_ttl_cap_ms: None,
        }
    }

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn with_exclusions<R>(entries: &[Exclusion<'_>], f: impl FnOnce(Exclusions<'_>) -> R) -> R {
        let mut buf = [0u8; 4096];
        let list = Exclusions::write(entries.iter().copied(), &mut buf).expect("fits");
        f(list)
    }

    fn policy<'a>(exclusions: Option<Exclusions<'a>>) -> Policy<'a> {
        Policy {
            version: 7,
            deadline_ms: 1000,
            fail_mode: Some(thinagent_protocol::FailMode::Closed),
            debug_level: Some(4),
            exclusions,
            query_timeout_ms: Some(50),
            cache_ttl_max_secs: Some(0),
            max_scan_size: Some(1 << 20),
        }
    }

    fn excluded(p: &OpenPolicy, path: &str) -> bool {
        let units: Vec<u16> = path.encode_utf16().collect();
        matches!(
            p.decide(&OpenRequest::read(PathRef::Utf16(&units), 1)),
            OpenDecision::Skip(SkipReason::ExcludedPath | SkipReason::ExcludedExtension)
        )
    }

    #[test]
    fn stages_every_field_and_replaces_the_exclusions() {
        let prefix = utf16(r"\Device\HarddiskVolume3\Skip");
        let entries = [
            Exclusion {
                kind: ExclusionKind::PathPrefix,
                value: FilePath::Utf16Le(&prefix),
            },
            Exclusion {
                kind: ExclusionKind::Extension,
                value: FilePath::Utf8("log"),
            },
        ];
        let mut staged = Box::new(OpenPolicy::new(PathStyle::Windows));
        let mut images = ImageList::new();
        staged
            .add_excluded_prefix(PathRef::Utf8(r"C:\Old"))
            .unwrap();
        let out = with_exclusions(&entries, |l| {
            stage(&policy(Some(l)), 0, &current(), &mut staged, &mut images)
        })
        .unwrap();
        assert_eq!(out.pinned, 0);
        assert!(out.open_policy_changed);
        assert_eq!(
            out.settings,
            HostSettings {
                version: 7,
                fail_mode: FailMode::Closed,
                debug_level: 4,
                query_timeout_ms: MIN_QUERY_TIMEOUT_MS,
                cache_ttl_cap_ms: Some(0),
            }
        );
        assert!(excluded(&staged, r"\Device\HarddiskVolume3\skip\a.exe"));
        assert!(excluded(&staged, r"\Device\HarddiskVolume3\x.LOG"));
        assert!(!excluded(&staged, r"C:\Old\a.exe"), "the old list is gone");
        assert_eq!(staged.max_file_size(), Some(1 << 20));
        assert_eq!(out.settings.verdict_ttl(60), None, "TTL cap 0: no caching");
    }

    #[test]
    fn pinned_fields_keep_their_value_and_are_reported() {
        let mut staged = Box::new(OpenPolicy::new(PathStyle::Windows));
        let mut images = ImageList::new();
        staged
            .add_excluded_prefix(PathRef::Utf8(r"C:\Old"))
            .unwrap();
        let pinned = PolicyFields::FAIL_MODE.0 | PolicyFields::EXCLUSIONS.0 | 0x20;
        let out = with_exclusions(&[], |l| {
            stage(
                &policy(Some(l)),
                pinned,
                &current(),
                &mut staged,
                &mut images,
            )
        })
        .unwrap();
        assert_eq!(out.pinned, pinned);
        assert_eq!(out.settings.fail_mode, FailMode::Open);
        assert_eq!(out.settings.debug_level, 4);
        assert!(excluded(&staged, r"C:\Old\a.exe"), "exclusions pinned");
        assert_eq!(staged.max_file_size(), None, "max scan size pinned");
    }

    #[test]
    fn process_images_match_the_file_name_case_insensitively() {
        let mut staged = Box::new(OpenPolicy::new(PathStyle::Windows));
        let mut images = ImageList::new();
        let image = [Exclusion {
            kind: ExclusionKind::ProcessImage,
            value: FilePath::Utf8("Backup.exe"),
        }];
        with_exclusions(&image, |l| {
            stage(&policy(Some(l)), 0, &current(), &mut staged, &mut images)
        })
        .unwrap();
        let units = |s: &str| s.encode_utf16().collect::<Vec<u16>>();
        assert!(images.matches(&units(r"\Device\HarddiskVolume3\Tools\BACKUP.EXE")));
        assert!(images.matches(&units("backup.exe")));
        assert!(!images.matches(&units(r"\Device\HarddiskVolume3\Tools\backup.exe.bak")));
        assert!(!images.matches(&units(r"\Device\HarddiskVolume3\backup\notepad.exe")));
    }

    #[test]
    fn a_policy_the_tables_cannot_hold_is_rejected() {
        let mut staged = Box::new(OpenPolicy::new(PathStyle::Windows));
        let mut images = ImageList::new();
        let names: Vec<std::string::String> = (0..=MAX_EXCLUDED_IMAGES)
            .map(|i| std::format!("tool{i}.exe"))
            .collect();
        let many: Vec<Exclusion<'_>> = names
            .iter()
            .map(|n| Exclusion {
                kind: ExclusionKind::ProcessImage,
                value: FilePath::Utf8(n),
            })
            .collect();
        let r = with_exclusions(&many, |l| {
            stage(&policy(Some(l)), 0, &current(), &mut staged, &mut images)
        });
        assert_eq!(r, Err(Rejection::TooManyImages));
        let long = "x".repeat(MAX_PREFIX_UNITS + 1);
        let too_long = [Exclusion {
            kind: ExclusionKind::PathPrefix,
            value: FilePath::Utf8(&long),
        }];
        let r = with_exclusions(&too_long, |l| {
            stage(&policy(Some(l)), 0, &current(), &mut staged, &mut images)
        });
        assert!(matches!(r, Err(Rejection::Exclusion(_))), "{r:?}");
    }

    #[test]
    fn verdict_ttl_is_the_smaller_of_host_and_cap() {
        let mut s = current();
        assert_eq!(s.verdict_ttl(0), None);
        assert_eq!(s.verdict_ttl(5), Some(core::time::Duration::from_secs(5)));
        s.cache_ttl_cap_ms = Some(2000);
        assert_eq!(s.verdict_ttl(5), Some(core::time::Duration::from_secs(2)));
    }
}
