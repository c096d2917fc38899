//! The built-in signature set: the EICAR anti-malware test file, found the
//! way ClamAV names it (`Eicar-Test-Signature`).
//!
//! Two engines, so that both code paths are exercised without any database
//! on disk:
//! * [`builtin_hash_engine`]: ClamAV `.hdb` lines for the canonical 68-byte
//!   file (MD5) and `.hsb` lines (SHA-1, SHA-256), through
//!   [`HashEngine`];
//! * [`EicarEngine`]: the content check of the EICAR specification: the file
//!   starts with the 68-character string and may be followed by white space
//!   (space, tab, CR, LF, Ctrl-Z) up to 128 bytes in total.

use std::path::Path;
use std::sync::Arc;

use super::hash::{HashDbKind, HashEngine, SharedHashEngine};
use super::{Detection, Engine, EngineError, EngineScan};

/// The 68-byte EICAR test string.
pub const EICAR: &[u8; 68] =
    br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// The threat name ClamAV reports for EICAR.
pub const EICAR_THREAT: &str = "Eicar-Test-Signature";

/// Longest file the EICAR specification allows (string plus trailing white
/// space).
pub const EICAR_MAX_LEN: usize = 128;

/// Built-in `.hdb` text (MD5 of the 68-byte file).
pub const BUILTIN_HDB: &str = "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n";

/// Built-in `.hsb` text (SHA-1 and SHA-256 of the 68-byte file).
pub const BUILTIN_HSB: &str = "3395856ce81f2b7382dee72602f798b642f14140:68:Eicar-Test-Signature\n\
275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:68:Eicar-Test-Signature\n";

/// The built-in hash signatures as an engine named `builtin`.
pub fn builtin_hash_engine() -> SharedHashEngine {
    let mut e = HashEngine::with_name("builtin");
    // The texts are constants checked by the tests below; a failure here
    // would leave the engine empty rather than panic.
    let _ = e.add_text(BUILTIN_HDB, HashDbKind::Hdb, Path::new("<builtin>.hdb"));
    let _ = e.add_text(BUILTIN_HSB, HashDbKind::Hsb, Path::new("<builtin>.hsb"));
    SharedHashEngine(Arc::new(e))
}

/// Every built-in engine.
pub fn builtin_engines() -> Vec<Arc<dyn Engine>> {
    vec![Arc::new(builtin_hash_engine()), Arc::new(EicarEngine)]
}

/// Signatures of the built-in set: its hash signatures (MD5, SHA-1,
/// SHA-256 of the 68-byte file) and the EICAR content check.
pub fn builtin_signature_count() -> usize {
    builtin_hash_engine().0.len() + 1
}

/// Whether `content` is an EICAR test file per its specification.
pub fn is_eicar(content: &[u8]) -> bool {
    content.len() <= EICAR_MAX_LEN
        && content.starts_with(EICAR)
        && content
            .get(EICAR.len()..)
            .unwrap_or_default()
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x1a))
}

/// The EICAR content check (engine name `builtin`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EicarEngine;

struct EicarScan {
    head: Vec<u8>,
    too_long: bool,
}

impl Engine for EicarEngine {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn start(&self, size: u64) -> Box<dyn EngineScan> {
        Box::new(EicarScan {
            head: Vec::new(),
            too_long: size > EICAR_MAX_LEN as u64,
        })
    }
}

impl EngineScan for EicarScan {
    fn update(&mut self, chunk: &[u8]) -> Result<Option<Detection>, EngineError> {
        if !self.too_long {
            if self.head.len() + chunk.len() > EICAR_MAX_LEN {
                self.too_long = true;
                self.head = Vec::new();
            } else {
                self.head.extend_from_slice(chunk);
            }
        }
        Ok(None)
    }

    fn finish(self: Box<Self>) -> Result<Option<Detection>, EngineError> {
        Ok((!self.too_long && is_eicar(&self.head)).then(|| Detection {
            threat: EICAR_THREAT.to_owned(),
            engine: "builtin",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(engine: &dyn Engine, data: &[u8], chunk: usize) -> Option<Detection> {
        let mut s = engine.start(data.len() as u64);
        for c in data.chunks(chunk.max(1)) {
            assert_eq!(s.update(c).unwrap(), None);
        }
        s.finish().unwrap()
    }

    #[test]
    fn builtin_texts_parse() {
        let mut e = HashEngine::new();
        assert_eq!(
            e.add_text(BUILTIN_HDB, HashDbKind::Hdb, Path::new("b")),
            Ok(1)
        );
        assert_eq!(
            e.add_text(BUILTIN_HSB, HashDbKind::Hsb, Path::new("b")),
            Ok(2)
        );
        assert_eq!(builtin_hash_engine().0.len(), 3);
        assert_eq!(builtin_signature_count(), 4);
    }

    #[test]
    fn canonical_file_found_by_hash_and_content() {
        for chunk in [1, 10, 68] {
            let d = run(&builtin_hash_engine(), EICAR, chunk).unwrap();
            assert_eq!((d.threat.as_str(), d.engine), (EICAR_THREAT, "builtin"));
            let d = run(&EicarEngine, EICAR, chunk).unwrap();
            assert_eq!((d.threat.as_str(), d.engine), (EICAR_THREAT, "builtin"));
        }
    }

    #[test]
    fn trailing_whitespace_up_to_128_bytes() {
        let mut with_newline = EICAR.to_vec();
        with_newline.extend_from_slice(b"\r\n");
        assert_eq!(run(&builtin_hash_engine(), &with_newline, 5), None);
        assert!(run(&EicarEngine, &with_newline, 5).is_some());

        let mut max = EICAR.to_vec();
        max.resize(EICAR_MAX_LEN, b' ');
        assert!(run(&EicarEngine, &max, 3).is_some());
        max.push(b' ');
        assert_eq!(run(&EicarEngine, &max, 3), None, "129 bytes is too long");

        let mut junk = EICAR.to_vec();
        junk.push(b'x');
        assert_eq!(run(&EicarEngine, &junk, 3), None);
        assert_eq!(run(&EicarEngine, &EICAR[1..], 3), None);
        assert_eq!(run(&EicarEngine, b"", 3), None);
    }
}
