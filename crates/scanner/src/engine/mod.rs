//! Scanning engines: each one a module behind [`Engine`].
//!
//! Content arrives from the guest in chunks (ReadData), in offset order, and is
//! streamed into every engine of the active set: an engine never sees the
//! whole file at once unless it chooses to buffer it. Engines are synchronous;
//! an engine that does I/O (clamd) or heavy CPU work (YARA) is called by the
//! service from a blocking-capable context (`tokio::task::spawn_blocking`), so
//! `update` and `finish` may block, but must honour their own timeouts.

pub mod builtin;
pub mod clamd;
pub mod hash;
#[cfg(feature = "yara")]
pub mod yara;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

/// Longest signature (threat) name kept, in bytes. A longer name is cut at
/// a character boundary and ends in [`CUT_MARK`], the whole at most this
/// long: names go into every detection's log line, audit record and
/// `Verdict`, so one absurd name must not cost kilobytes per detection.
pub const MAX_SIGNATURE_NAME_LEN: usize = 256;

/// Ends a signature name cut to [`MAX_SIGNATURE_NAME_LEN`].
pub const CUT_MARK: &str = "...[cut]";

/// `name`, or its cut form when longer than [`MAX_SIGNATURE_NAME_LEN`]
/// bytes (see there).
pub fn cap_signature_name(name: &str) -> Cow<'_, str> {
    if name.len() <= MAX_SIGNATURE_NAME_LEN {
        return Cow::Borrowed(name);
    }
    let mut end = MAX_SIGNATURE_NAME_LEN - CUT_MARK.len();
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{CUT_MARK}", &name[..end]))
}

/// A positive finding: what was found and by which engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The threat name as the signature names it (e.g. `Eicar-Test-Signature`).
    pub threat: String,
    /// The engine that found it ([`Engine::name`]).
    pub engine: &'static str,
}

/// What went wrong inside an engine while scanning one file. An engine error
/// never kills a session: the service turns it into the configured policy
/// verdict and logs it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's backend (clamd) could not be reached or broke the
    /// connection.
    #[error("{engine}: backend unavailable: {reason}")]
    Unavailable {
        /// Engine name.
        engine: &'static str,
        /// What failed, for the log.
        reason: String,
    },
    /// The engine took longer than its timeout.
    #[error("{engine}: timed out after {millis} ms")]
    Timeout {
        /// Engine name.
        engine: &'static str,
        /// The timeout that expired.
        millis: u64,
    },
    /// The engine refused the content (too large for it, or its backend said
    /// so).
    #[error("{engine}: {reason}")]
    Refused {
        /// Engine name.
        engine: &'static str,
        /// Why, for the log.
        reason: String,
    },
}

/// A loaded engine: immutable after loading, shared by every session
/// (`Send + Sync`). A signature reload builds new engines and swaps the whole
/// set; scans in progress finish on the old set.
pub trait Engine: Send + Sync + fmt::Debug {
    /// Short stable name used in logs, the audit log and metrics
    /// (`hash`, `yara`, `clamd`).
    fn name(&self) -> &'static str;

    /// Starts scanning one file of `size` bytes (the size the guest reported;
    /// the content may end up shorter if the file changes while being read).
    fn start(&self, size: u64) -> Box<dyn EngineScan>;

    /// Whether a scan may wait on something other than the CPU (clamd's
    /// socket). The service runs every scan of a set holding such an engine
    /// on a blocking thread; a set of engines that only compute (built-in,
    /// hash, YARA: the default `false`) may scan small content on the
    /// connection's own task, without a thread hop.
    fn blocks(&self) -> bool {
        false
    }

    /// Scans complete content already in memory (its length is the real
    /// size). The default streams it through [`Engine::start`]; an engine
    /// that can use the whole buffer directly (no copy, exact size known)
    /// overrides it.
    fn scan_complete(&self, data: &[u8]) -> Result<Option<Detection>, EngineError> {
        let mut scan = self.start(data.len() as u64);
        match scan.update(data)? {
            Some(d) => Ok(Some(d)),
            None => scan.finish(),
        }
    }
}

/// One file being scanned by one engine.
pub trait EngineScan: Send {
    /// Feeds the next chunk, in offset order. Returning a detection early lets
    /// the service stop pulling content.
    fn update(&mut self, chunk: &[u8]) -> Result<Option<Detection>, EngineError>;

    /// The content is complete: the final answer (`None` = clean).
    fn finish(self: Box<Self>) -> Result<Option<Detection>, EngineError>;
}

/// True when `path` names a YARA rule file (`*.yar` or `*.yara`, any case).
pub fn is_yara_rule_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yar") || e.eq_ignore_ascii_case("yara"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_at_a_char_boundary_with_a_mark() {
        assert!(matches!(
            cap_signature_name("Eicar"),
            Cow::Borrowed("Eicar")
        ));
        let exact = "x".repeat(MAX_SIGNATURE_NAME_LEN);
        assert_eq!(cap_signature_name(&exact), exact.as_str());
        let long = "y".repeat(200 * 1024);
        let cut = cap_signature_name(&long);
        assert_eq!(cut.len(), MAX_SIGNATURE_NAME_LEN);
        assert!(cut.ends_with(CUT_MARK) && cut.starts_with("yyy"));
        // Multi-byte characters across the cut point: never split.
        for pad in 0..4 {
            let name = format!("{}{}", "a".repeat(pad), "\u{20ac}".repeat(200));
            let cut = cap_signature_name(&name);
            assert!(cut.len() <= MAX_SIGNATURE_NAME_LEN, "{pad}");
            assert!(cut.len() > MAX_SIGNATURE_NAME_LEN - CUT_MARK.len() - 4);
            assert!(cut.ends_with(CUT_MARK));
        }
    }
}
