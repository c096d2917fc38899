//! [`FileScan`]: one file through every engine of a
//! [`SignatureSet`].
//!
//! Chunks are fed in offset order to every engine while the BLAKE3 of the
//! content ([`content_key`]) is computed for the cross-guest content cache:
//! a strong digest computed here, by the host, from the bytes it read, never
//! a value a guest sent. BLAKE3 rather than SHA-256 because it is several
//! times faster on the same bytes; the hash engine computes MD5, SHA-1 or
//! SHA-256 only when a signature of the file's size needs one. The first
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
    /// [`content_key`] of the whole content, or `None` when the scan stopped
    /// early on a detection (the hash then covers only a prefix).
    pub content_key: Option<ContentKey>,
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
    content: blake3::Hasher,
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
            content: blake3::Hasher::new(),
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
            self.content.update(chunk);
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
            content_key: (!early).then(|| *self.content.finalize().as_bytes()),
            bytes: self.bytes,
            duration: self.started.elapsed(),
            generation: self.generation,
        }
    }
}

/// Key of the cross-guest content cache: BLAKE3 of the content.
pub type ContentKey = [u8; 32];

/// The [`ContentKey`] of `data`.
pub fn content_key(data: &[u8]) -> ContentKey {
    *blake3::hash(data).as_bytes()
}

/// Scans complete content in one call, computing its [`content_key`].
pub fn scan_bytes(set: &Arc<SignatureSet>, data: &[u8]) -> ScanOutcome {
    scan_complete(set, data, content_key(data))
}

/// Scans complete content whose [`content_key`] the caller already has
/// (it looked the content up in the cache first). Each engine sees the
/// whole buffer at once ([`Engine::scan_complete`](crate::engine::Engine::scan_complete)):
/// its exact length plans the hash engine's digests and YARA scans it
/// without copying.
pub fn scan_complete(set: &Arc<SignatureSet>, data: &[u8], key: ContentKey) -> ScanOutcome {
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut detection = None;
    for engine in set.engines() {
        match engine.scan_complete(data) {
            Ok(Some(d)) => {
                detection = Some(d);
                break;
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    let verdict = match (detection, errors.is_empty()) {
        (Some(d), _) => ScanVerdict::Infected(d),
        (None, true) => ScanVerdict::Clean,
        (None, false) => ScanVerdict::Error(errors),
    };
    ScanOutcome {
        verdict,
        content_key: Some(key),
        bytes: data.len() as u64,
        duration: started.elapsed(),
        generation: set.generation(),
    }
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
        assert_eq!(clean.content_key, Some(content_key(b"just text")));
        assert_eq!(
            content_key(b"just text"),
            *blake3::hash(b"just text").as_bytes()
        );
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
