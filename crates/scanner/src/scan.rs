//! [`FileScan`]: one file through every engine of a
//! [`SignatureSet`].
//!
//! Chunks are fed in offset order to every engine while the SHA-256 of the
//! content is computed for the cross-guest content cache. The first
//! detection stops the scan (later chunks are ignored). An engine that fails
//! is dropped from this scan and its error kept: the result is then
//! [`ScanVerdict::Error`] unless another engine found something.
//!
//! Engines may block (clamd does socket I/O, YARA may run for long): the
//! service calls [`FileScan::update`], [`FileScan::finish`] and
//! [`scan_bytes`] from `tokio::task::spawn_blocking`, never on an async
//! worker thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::engine::{Detection, EngineError, EngineScan};
use crate::signatures::SignatureSet;

/// The result of one scan.
#[derive(Debug)]
pub enum ScanVerdict {
    /// No engine found anything and none failed.
    Clean,
    /// An engine found a threat.
    Infected(Detection),
    /// No detection, but at least one engine failed: the policy decides.
    Error(Vec<EngineError>),
}

/// A finished scan with its measurements.
#[derive(Debug)]
pub struct ScanOutcome {
    /// What was found.
    pub verdict: ScanVerdict,
    /// SHA-256 of the whole content, or `None` when the scan stopped early
    /// on a detection (the hash then covers only a prefix).
    pub sha256: Option<[u8; 32]>,
    /// Content bytes fed.
    pub bytes: u64,
    /// Time from [`FileScan::new`] to [`FileScan::finish`].
    pub duration: Duration,
    /// Signature-set generation used.
    pub generation: u64,
}

/// One file being scanned.
pub struct FileScan {
    scans: Vec<(&'static str, Box<dyn EngineScan>)>,
    errors: Vec<EngineError>,
    detection: Option<Detection>,
    sha256: Sha256,
    bytes: u64,
    started: Instant,
    generation: u64,
}

impl std::fmt::Debug for FileScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileScan")
            .field(
                "engines",
                &self.scans.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .field("bytes", &self.bytes)
            .field("detection", &self.detection)
            .finish_non_exhaustive()
    }
}

impl FileScan {
    /// Starts scanning a file the guest says has `size` bytes.
    pub fn new(set: &Arc<SignatureSet>, size: u64) -> Self {
        Self {
            scans: set
                .engines()
                .iter()
                .map(|e| (e.name(), e.start(size)))
                .collect(),
            errors: Vec::new(),
            detection: None,
            sha256: Sha256::new(),
            bytes: 0,
            started: Instant::now(),
            generation: set.generation(),
        }
    }

    /// Whether a detection already decided the result (more content is
    /// useless).
    pub fn is_decided(&self) -> bool {
        self.detection.is_some()
    }

    /// Feeds the next chunk. Returns the detection once there is one.
    pub fn update(&mut self, chunk: &[u8]) -> Option<&Detection> {
        if self.detection.is_none() {
            self.bytes = self.bytes.saturating_add(chunk.len() as u64);
            self.sha256.update(chunk);
            let mut i = 0;
            while i < self.scans.len() {
                match self.scans[i].1.update(chunk) {
                    Ok(Some(d)) => {
                        self.detection = Some(d);
                        break;
                    }
                    Ok(None) => i += 1,
                    Err(e) => {
                        self.errors.push(e);
                        drop(self.scans.remove(i));
                    }
                }
            }
        }
        self.detection.as_ref()
    }

    /// The content is complete: every engine's final answer.
    pub fn finish(mut self) -> ScanOutcome {
        let early = self.detection.is_some();
        if !early {
            for (_, scan) in self.scans.drain(..) {
                match scan.finish() {
                    Ok(Some(d)) => {
                        self.detection = Some(d);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => self.errors.push(e),
                }
            }
        }
        let verdict = match (self.detection, self.errors.is_empty()) {
            (Some(d), _) => ScanVerdict::Infected(d),
            (None, true) => ScanVerdict::Clean,
            (None, false) => ScanVerdict::Error(self.errors),
        };
        ScanOutcome {
            verdict,
            sha256: (!early).then(|| self.sha256.finalize().into()),
            bytes: self.bytes,
            duration: self.started.elapsed(),
            generation: self.generation,
        }
    }
}

/// Scans complete content in one call.
pub fn scan_bytes(set: &Arc<SignatureSet>, data: &[u8]) -> ScanOutcome {
    let mut scan = FileScan::new(set, data.len() as u64);
    scan.update(data);
    scan.finish()
}

/// SHA-256 of `data` (the content cache key).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::builtin::EICAR;
    use crate::engine::{Engine, EngineScan};

    #[derive(Debug)]
    struct Failing;
    struct FailingScan;
    impl Engine for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn start(&self, _: u64) -> Box<dyn EngineScan> {
            Box::new(FailingScan)
        }
    }
    impl EngineScan for FailingScan {
        fn update(&mut self, _: &[u8]) -> Result<Option<Detection>, EngineError> {
            Err(EngineError::Unavailable {
                engine: "failing",
                reason: "down".into(),
            })
        }
        fn finish(self: Box<Self>) -> Result<Option<Detection>, EngineError> {
            Ok(None)
        }
    }

    #[test]
    fn eicar_in_chunks_is_infected_clean_is_clean_with_hash() {
        let set = Arc::new(SignatureSet::builtin());
        let mut s = FileScan::new(&set, 68);
        for c in EICAR.chunks(10) {
            s.update(c);
        }
        let out = s.finish();
        match out.verdict {
            ScanVerdict::Infected(d) => assert_eq!(d.threat, "Eicar-Test-Signature"),
            other => panic!("{other:?}"),
        }
        assert_eq!(out.bytes, 68);
        let clean = scan_bytes(&set, b"just text");
        assert!(matches!(clean.verdict, ScanVerdict::Clean));
        assert_eq!(clean.sha256, Some(sha256(b"just text")));
        assert_eq!(clean.generation, set.generation());
    }

    #[test]
    fn engine_error_without_detection_is_error_with_detection_is_infected() {
        let failing = Arc::new(SignatureSet::from_engines(vec![Arc::new(Failing)]));
        assert!(matches!(
            scan_bytes(&failing, b"x").verdict,
            ScanVerdict::Error(ref e) if e.len() == 1
        ));
        let mut engines = crate::engine::builtin::builtin_engines();
        engines.insert(0, Arc::new(Failing));
        let mixed = Arc::new(SignatureSet::from_engines(engines));
        assert!(matches!(
            scan_bytes(&mixed, EICAR).verdict,
            ScanVerdict::Infected(_)
        ));
    }
}
