//! The host policy (`docs/protocol.md` §14.6) as the agent enforces it.
//!
//! A `Policy` is checked whole first ([`Enforced::prepare`]: the new open
//! policy is built aside, every exclusion must fit its table), then put in
//! place in one step on the core's thread ([`Enforced::commit`]): an open
//! is judged by the old policy or the new, never a mix. Fields the local
//! admin pinned (`--pin-policy`) are never changed by the host and are
//! reported in `ActionResult.pinned`.

use std::time::Duration;

use thinagent_guest::{FailMode, OpenPolicy, PathRef, PathStyle};
use thinagent_protocol::{ExclusionKind, FilePath, Policy, PolicyFields};

/// Most process image names a host policy may exclude.
pub const MAX_EXCLUDED_IMAGES: usize = 32;
/// Longest excluded process image name, bytes (a file name).
pub const MAX_IMAGE_LEN: usize = 255;

/// The names of `--pin-policy`, with their field bits.
const FIELD_NAMES: [(&str, PolicyFields); 6] = [
    ("fail-mode", PolicyFields::FAIL_MODE),
    ("debug-level", PolicyFields::DEBUG_LEVEL),
    ("exclusions", PolicyFields::EXCLUSIONS),
    ("query-timeout", PolicyFields::QUERY_TIMEOUT),
    ("cache-ttl-max", PolicyFields::CACHE_TTL_MAX),
    ("max-scan-size", PolicyFields::MAX_SCAN_SIZE),
];

/// `--pin-policy` names (`fail-mode`, `debug-level`, `exclusions`,
/// `query-timeout`, `cache-ttl-max`, `max-scan-size`, `all`) as field bits.
pub fn pinned_fields_from_names<S: AsRef<str>>(names: &[S]) -> Result<PolicyFields, String> {
    let mut bits = PolicyFields::default();
    for n in names {
        let n = n.as_ref().trim();
        if n.is_empty() {
            continue;
        }
        if n == "all" {
            bits = PolicyFields::ALL;
            continue;
        }
        match FIELD_NAMES.iter().find(|(name, _)| *name == n) {
            Some((_, f)) => bits = bits.union(*f),
            None => {
                return Err(format!(
                    "--pin-policy: unknown field {n:?} (known: {}, all)",
                    FIELD_NAMES.map(|(n, _)| n).join(", ")
                ));
            }
        }
    }
    Ok(bits)
}

/// The names of the bits in `fields`, comma-separated ("none" if empty).
#[must_use]
pub fn field_names(fields: PolicyFields) -> String {
    let names: Vec<&str> = FIELD_NAMES
        .iter()
        .filter(|(_, f)| fields.0 & f.0 != 0)
        .map(|(n, _)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// A host `Policy`, owned (decoded from the session's inbox).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HostPolicy {
    /// The version, ≥ 1.
    pub version: u64,
    /// Fail open (`Some(Open)`) or closed.
    pub fail_mode: Option<FailMode>,
    /// 0..=4.
    pub debug_level: Option<u8>,
    /// The whole exclusion list: (kind, value as text).
    pub exclusions: Option<Vec<(ExclusionKind, String)>>,
    /// Per-query deadline, ms.
    pub query_timeout_ms: Option<u32>,
    /// Longest verdict lifetime, s; 0 = no caching.
    pub cache_ttl_max_secs: Option<u32>,
    /// Larger files are not queried; 0 = no limit.
    pub max_scan_size: Option<u64>,
}

fn text_of(p: &FilePath<'_>) -> String {
    match *p {
        FilePath::Utf8(s) => s.to_string(),
        FilePath::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        FilePath::Utf16Le(b) => {
            let units: Vec<u16> = b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
    }
}

impl HostPolicy {
    /// From the decoded message.
    #[must_use]
    pub fn from_wire(p: &Policy<'_>) -> Self {
        HostPolicy {
            version: p.version,
            fail_mode: p.fail_mode.map(|m| match m {
                thinagent_protocol::FailMode::Open => FailMode::Open,
                thinagent_protocol::FailMode::Closed => FailMode::Closed,
            }),
            debug_level: p.debug_level,
            exclusions: p
                .exclusions
                .map(|e| e.iter().map(|x| (x.kind, text_of(&x.value))).collect()),
            query_timeout_ms: p.query_timeout_ms,
            cache_ttl_max_secs: p.cache_ttl_max_secs,
            max_scan_size: p.max_scan_size,
        }
    }

    /// The `fields` bits this policy sets.
    #[must_use]
    pub fn fields(&self) -> PolicyFields {
        let mut f = 0;
        for (set, bit) in [
            (self.fail_mode.is_some(), PolicyFields::FAIL_MODE),
            (self.debug_level.is_some(), PolicyFields::DEBUG_LEVEL),
            (self.exclusions.is_some(), PolicyFields::EXCLUSIONS),
            (self.query_timeout_ms.is_some(), PolicyFields::QUERY_TIMEOUT),
            (
                self.cache_ttl_max_secs.is_some(),
                PolicyFields::CACHE_TTL_MAX,
            ),
            (self.max_scan_size.is_some(), PolicyFields::MAX_SCAN_SIZE),
        ] {
            if set {
                f |= bit.0;
            }
        }
        PolicyFields(f)
    }
}

/// What applying a policy did, for the edge's log and its own settings.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PolicyChange {
    /// The version the host sent.
    pub version: u64,
    /// The fields applied.
    pub applied: PolicyFields,
    /// The fields the host set that are pinned locally (not applied).
    pub pinned: PolicyFields,
    /// The version was already in effect: nothing changed.
    pub unchanged: bool,
    /// Refused (`Rejected`): why. Nothing changed.
    pub rejected: Option<String>,
    /// The log level the host asked for (0..=4), if applied.
    pub debug_level: Option<u8>,
    /// The cache TTL maximum changed (caches flushed).
    pub cache_ttl_changed: bool,
    /// What is in effect now, for the log line.
    pub summary: String,
}

impl PolicyChange {
    pub(super) fn rejected(version: u64, why: String) -> Self {
        PolicyChange {
            version,
            rejected: Some(why),
            ..PolicyChange::default()
        }
    }
}

/// A checked policy, ready to be put in place.
pub(super) struct Prepared {
    version: u64,
    same: bool,
    applied: PolicyFields,
    pub(super) pinned: PolicyFields,
    open_policy: Option<Box<OpenPolicy>>,
    images: Option<Vec<Vec<u8>>>,
    fail_mode: Option<FailMode>,
    timeout: Option<Duration>,
    cache_ttl_max: Option<Option<u32>>,
    max_scan_size: Option<Option<u64>>,
    debug_level: Option<u8>,
    exclusion_count: usize,
}

/// The host policy's state in the core.
#[derive(Debug, Default)]
pub(super) struct Enforced {
    /// The version in effect; 0: none received.
    pub(super) version: u64,
    /// Fields pinned locally.
    pub(super) pinned: PolicyFields,
    /// `max_scan_size` in effect.
    pub(super) max_scan_size: Option<u64>,
    /// `cache_ttl_max_secs` in effect.
    cache_ttl_max: Option<u32>,
    /// Excluded process image names.
    images: Vec<Vec<u8>>,
    /// Exclusions the last applied list had.
    exclusion_count: usize,
}

impl Enforced {
    pub(super) fn new(pinned: PolicyFields, _local: &OpenPolicy) -> Self {
        Enforced {
            pinned,
            ..Enforced::default()
        }
    }

    pub(super) fn has_images(&self) -> bool {
        !self.images.is_empty()
    }

    pub(super) fn image_excluded(&self, image: &[u8]) -> bool {
        self.images.iter().any(|i| i == image)
    }

    /// A verdict's TTL capped by the policy's maximum.
    pub(super) fn cap_ttl(&self, ttl: u32) -> u32 {
        self.cache_ttl_max.map_or(ttl, |m| ttl.min(m))
    }

    /// Checks `p` whole against `current` (the open policy in effect);
    /// builds what would replace it. `Err`: it does not fit (`Rejected`).
    pub(super) fn prepare(&self, p: &HostPolicy, current: &OpenPolicy) -> Result<Prepared, String> {
        let fields = p.fields();
        let pinned = PolicyFields(fields.0 & self.pinned.0);
        let applied = PolicyFields(fields.0 & !self.pinned.0);
        let mut prep = Prepared {
            version: p.version,
            same: p.version == self.version,
            applied,
            pinned,
            open_policy: None,
            images: None,
            fail_mode: None,
            timeout: None,
            cache_ttl_max: None,
            max_scan_size: None,
            debug_level: None,
            exclusion_count: 0,
        };
        if prep.same {
            return Ok(prep);
        }
        let on = |f: PolicyFields| applied.0 & f.0 != 0;
        if on(PolicyFields::EXCLUSIONS)
            && let Some(list) = &p.exclusions
        {
            // The host's list replaces the path and extension exclusions;
            // the process-id ones (the agent, the scanner, --exclude-pid)
            // are the agent's own and stay.
            let mut np = Box::new(OpenPolicy::new(PathStyle::Posix));
            np.set_max_file_size(current.max_file_size());
            for pid in current.excluded_processes() {
                np.add_excluded_process(*pid)
                    .map_err(|e| format!("process exclusions: {e}"))?;
            }
            let mut images = Vec::new();
            for (kind, value) in list {
                match kind {
                    ExclusionKind::PathPrefix => {
                        let v = value.trim_end_matches('/');
                        let v = if v.is_empty() { "/" } else { v };
                        np.add_excluded_prefix(PathRef::Utf8(v))
                            .map_err(|e| format!("path prefix {value:?}: {e}"))?;
                    }
                    ExclusionKind::Extension => {
                        np.add_excluded_extension(PathRef::Utf8(value.trim_start_matches('.')))
                            .map_err(|e| format!("extension {value:?}: {e}"))?;
                    }
                    ExclusionKind::ProcessImage => {
                        if images.len() >= MAX_EXCLUDED_IMAGES {
                            return Err(format!(
                                "more than {MAX_EXCLUDED_IMAGES} process image exclusions"
                            ));
                        }
                        if value.len() > MAX_IMAGE_LEN || value.contains('/') {
                            return Err(format!(
                                "process image {value:?}: not a file name of at most \
                                 {MAX_IMAGE_LEN} bytes"
                            ));
                        }
                        images.push(value.as_bytes().to_vec());
                    }
                }
            }
            prep.open_policy = Some(np);
            prep.images = Some(images);
            prep.exclusion_count = list.len();
        }
        if on(PolicyFields::FAIL_MODE) {
            prep.fail_mode = p.fail_mode;
        }
        if on(PolicyFields::QUERY_TIMEOUT) {
            prep.timeout = p
                .query_timeout_ms
                .map(|ms| Duration::from_millis(ms.max(1).into()));
        }
        if on(PolicyFields::CACHE_TTL_MAX) {
            prep.cache_ttl_max = p.cache_ttl_max_secs.map(Some);
        }
        if on(PolicyFields::MAX_SCAN_SIZE) {
            prep.max_scan_size = p.max_scan_size.map(|m| (m > 0).then_some(m));
        }
        if on(PolicyFields::DEBUG_LEVEL) {
            prep.debug_level = p.debug_level;
        }
        Ok(prep)
    }

    /// Puts a prepared policy in place (one step on the core's thread).
    pub(super) fn commit(
        &mut self,
        prep: Prepared,
        policy: &mut Box<OpenPolicy>,
        fail_mode: &mut FailMode,
        timeout: &mut Duration,
    ) -> PolicyChange {
        let mut change = PolicyChange {
            version: prep.version,
            applied: prep.applied,
            pinned: prep.pinned,
            unchanged: prep.same,
            ..PolicyChange::default()
        };
        if !prep.same {
            if let Some(np) = prep.open_policy {
                *policy = np;
            }
            if let Some(images) = prep.images {
                self.images = images;
                self.exclusion_count = prep.exclusion_count;
            }
            if let Some(m) = prep.fail_mode {
                *fail_mode = m;
            }
            if let Some(t) = prep.timeout {
                *timeout = t;
            }
            if let Some(c) = prep.cache_ttl_max {
                change.cache_ttl_changed = c != self.cache_ttl_max;
                self.cache_ttl_max = c;
            }
            if let Some(m) = prep.max_scan_size {
                self.max_scan_size = m;
            }
            change.debug_level = prep.debug_level;
            self.version = prep.version;
        }
        change.summary = format!(
            "{}, query timeout {} ms, {} path/extension exclusions, {} process images, \
             cache TTL max {}, max scan size {}",
            match *fail_mode {
                FailMode::Open => "fail-open",
                FailMode::Closed => "fail-closed",
            },
            timeout.as_millis(),
            policy.prefixes().count() + policy.extensions().count(),
            self.images.len(),
            self.cache_ttl_max
                .map_or("none".to_string(), |s| format!("{s} s")),
            self.max_scan_size
                .map_or("none".to_string(), |s| format!("{s} bytes")),
        );
        change
    }
}
