//! The audit log: one JSON object per verdict, one per line, appended to a
//! file.
//!
//! Fields: `time` (RFC 3339 UTC, milliseconds), `guest`, `path`, `verdict`
//! (`allow`, `deny`, `allow_no_cache`), `threat` and `engine` (null when
//! clean), `bytes` (content bytes pulled for this query), `duration_ms`,
//! `cache` (`none`, `guest`, `content`).
//!
//! Each line is written with one `write` call under a lock and flushed, so
//! concurrent sessions never interleave and a crash loses at most the line
//! being written.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One audit line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the verdict was sent (RFC 3339, UTC).
    pub time: String,
    /// Who asked (`vsock:CID:PORT`, `tcp:ADDR`, `unix`, plus the guest's name).
    pub guest: String,
    /// The path the guest reported (lossy UTF-8).
    pub path: String,
    /// `allow`, `deny`, `allow_no_cache`.
    pub verdict: String,
    /// Threat name, if any.
    pub threat: Option<String>,
    /// Engine that found it, if any.
    pub engine: Option<String>,
    /// Content bytes pulled from the guest for this query.
    pub bytes: u64,
    /// FileEvent to Verdict, milliseconds.
    pub duration_ms: f64,
    /// Which cache answered: `none`, `guest`, `content`.
    pub cache: String,
}

/// An open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open audit log {path}: {source} (check the directory exists and is writable)")]
pub struct AuditOpenError {
    path: PathBuf,
    source: io::Error,
}

impl AuditLog {
    /// Opens (creates, appends to) `path`.
    pub fn open(path: &Path) -> Result<Self, AuditOpenError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AuditOpenError {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry. A failed write is logged, never fatal.
    pub fn write(&self, entry: &AuditEntry) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "audit: cannot encode entry");
                return;
            }
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&line) {
            tracing::error!(path = %self.path.display(), error = %e, "audit: write failed");
        }
    }
}

/// `SystemTime` as RFC 3339 UTC with milliseconds (`2026-11-24T19:04:26.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2026-11-24T19:04:26.5Z
        let t = UNIX_EPOCH + Duration::from_millis(1_795_547_066_500);
        assert_eq!(rfc3339(t), "2026-11-24T19:04:26.500Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_append_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let e = AuditEntry {
            time: rfc3339(SystemTime::now()),
            guest: "tcp:127.0.0.1:4000 vm1".into(),
            path: "/tmp/eicar.com".into(),
            verdict: "deny".into(),
            threat: Some("Eicar-Test-Signature".into()),
            engine: Some("hash".into()),
            bytes: 68,
            duration_ms: 0.5,
            cache: "none".into(),
        };
        log.write(&e);
        log.write(&e);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: AuditEntry = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(back, e);
    }
}
