//! Hash signatures in ClamAV's own database formats, computed while the
//! content streams through.
//!
//! * `.hdb`: `MD5:Size:MalwareName`
//! * `.hsb`: `HashString:Size:MalwareName`, where the hash is SHA-1 (40 hex
//!   digits) or SHA-256 (64 hex digits).
//!
//! As in ClamAV, `Size` may be `*` ("any size", ClamAV ≥ 0.98, which expects
//! a minimum functionality level of 73 as fourth field), and optional
//! trailing `:MinFL[:MaxFL]` functionality-level fields are accepted and
//! ignored (this engine implements every hash feature). Blank lines and lines
//! starting with `#` are skipped. A `.hdb` line may also hold a SHA-1 or
//! SHA-256 (ClamAV itself only reads MD5 there; accepting more is harmless).
//!
//! A file may start with a UTF-8 byte-order mark (Windows editors write one):
//! it is skipped. ClamAV's own loader would read it as part of the first
//! hash and call the file malformed; nothing is lost by accepting it. A
//! UTF-16 file (PowerShell's `>` writes one) is refused with a message that
//! says so.
//!
//! A malware name longer than [`MAX_SIGNATURE_NAME_LEN`] bytes is cut to it
//! at load, with one warning per file naming the file and the first such
//! line.
//!
//! Only the digests some signature needs are computed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{
    Detection, Engine, EngineError, EngineScan, MAX_SIGNATURE_NAME_LEN, cap_signature_name,
};

/// Which database format a file is in (by extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashDbKind {
    /// `.hdb`: MD5.
    Hdb,
    /// `.hsb`: SHA-1 or SHA-256.
    Hsb,
}

impl HashDbKind {
    /// The kind of `path` by its extension (`.hdb` / `.hsb`, any case).
    pub fn of_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "hdb" => Some(Self::Hdb),
            "hsb" => Some(Self::Hsb),
            _ => None,
        }
    }
}

/// A bad line in a hash database: names the file and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason} (expected `hash:size:name`, e.g. `44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature`)", path.display())]
pub struct HashDbError {
    /// The database file (or a label for built-in text).
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Sig {
    /// `None` = any size (`*`).
    size: Option<u64>,
    name: Arc<str>,
}

/// The hash signature engine: immutable after loading.
#[derive(Default, Clone)]
pub struct HashEngine {
    md5: HashMap<[u8; 16], Vec<Sig>>,
    sha1: HashMap<[u8; 20], Vec<Sig>>,
    sha256: HashMap<[u8; 32], Vec<Sig>>,
    name: &'static str,
}

impl fmt::Debug for HashEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashEngine")
            .field("name", &self.name)
            .field("md5", &self.md5.len())
            .field("sha1", &self.sha1.len())
            .field("sha256", &self.sha256.len())
            .finish()
    }
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl HashEngine {
    /// An empty engine reporting itself as `hash`.
    pub fn new() -> Self {
        Self::with_name("hash")
    }

    /// An empty engine with another [`Engine::name`] (the built-in set uses
    /// `builtin`).
    pub fn with_name(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    /// Number of signatures loaded.
    pub fn len(&self) -> usize {
        self.md5.values().map(Vec::len).sum::<usize>()
            + self.sha1.values().map(Vec::len).sum::<usize>()
            + self.sha256.values().map(Vec::len).sum::<usize>()
    }

    /// Whether no signature is loaded.
    pub fn is_empty(&self) -> bool {
        self.md5.is_empty() && self.sha1.is_empty() && self.sha256.is_empty()
    }

    /// Reads a database file of `kind` and adds its signatures.
    pub fn load_file(&mut self, path: &Path, kind: HashDbKind) -> Result<usize, HashDbError> {
        let text = std::fs::read(path).map_err(|e| HashDbError {
            path: path.to_owned(),
            line: 0,
            reason: format!("cannot read the file: {e}"),
        })?;
        if text.starts_with(&[0xFF, 0xFE]) || text.starts_with(&[0xFE, 0xFF]) {
            return Err(HashDbError {
                path: path.to_owned(),
                line: 1,
                reason: "the file is UTF-16 text (it starts with a UTF-16 byte-order mark, \
                         as PowerShell's `>` writes); save it as UTF-8 or ASCII"
                    .into(),
            });
        }
        let text = String::from_utf8_lossy(&text);
        self.add_text(&text, kind, path)
    }

    /// Parses database text of `kind` (`origin` names it in errors) and adds
    /// its signatures; on error nothing of this text is added. Names longer
    /// than [`MAX_SIGNATURE_NAME_LEN`] are cut, with one warning for the
    /// text.
    pub fn add_text(
        &mut self,
        text: &str,
        kind: HashDbKind,
        origin: &Path,
    ) -> Result<usize, HashDbError> {
        let mut staged = Self::with_name(self.name);
        // A leading UTF-8 byte-order mark is not part of the first hash.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // (first line, its name's length, how many) of the names cut
        let mut cut: Option<(usize, usize, usize)> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| HashDbError {
                path: origin.to_owned(),
                line: index + 1,
                reason,
            };
            let mut fields = line.split(':');
            let (Some(hash), Some(size), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(err(format!(
                    "{} field(s), need at least 3",
                    line.split(':').count()
                )));
            };
            for fl in fields {
                if fl.parse::<u32>().is_err() {
                    return Err(err(format!("functionality level `{fl}` is not a number")));
                }
            }
            let size = match size {
                "*" => None,
                s => Some(s.parse::<u64>().map_err(|_| {
                    err(format!("size `{s}` is neither a number of bytes nor `*`"))
                })?),
            };
            if name.is_empty() {
                return Err(err("empty malware name".into()));
            }
            if name.len() > MAX_SIGNATURE_NAME_LEN {
                match &mut cut {
                    Some((_, _, n)) => *n += 1,
                    None => cut = Some((index + 1, name.len(), 1)),
                }
            }
            let sig = Sig {
                size,
                name: Arc::from(cap_signature_name(name)),
            };
            let hash = hash.to_ascii_lowercase();
            match (hash.len(), kind) {
                (32, _) => {
                    let h = hex::<16>(&hash).ok_or_else(|| err(format!("`{hash}` is not hex")))?;
                    staged.md5.entry(h).or_default().push(sig);
                }
                (40, _) => {
                    let h = hex::<20>(&hash).ok_or_else(|| err(format!("`{hash}` is not hex")))?;
                    staged.sha1.entry(h).or_default().push(sig);
                }
                (64, _) => {
                    let h = hex::<32>(&hash).ok_or_else(|| err(format!("`{hash}` is not hex")))?;
                    staged.sha256.entry(h).or_default().push(sig);
                }
                (n, HashDbKind::Hdb) => {
                    return Err(err(format!(
                        "hash of {n} characters: an MD5 has 32 hex digits"
                    )));
                }
                (n, HashDbKind::Hsb) => {
                    return Err(err(format!(
                        "hash of {n} characters: SHA-1 has 40 and SHA-256 64 hex digits"
                    )));
                }
            }
        }
        if let Some((line, len, count)) = cut {
            tracing::warn!(
                "{}:{line}: signature name of {len} bytes cut to {MAX_SIGNATURE_NAME_LEN} \
                 ({count} name(s) of this file cut); shorten the names in the file",
                origin.display()
            );
        }
        let added = staged.len();
        for (k, v) in staged.md5 {
            self.md5.entry(k).or_default().extend(v);
        }
        for (k, v) in staged.sha1 {
            self.sha1.entry(k).or_default().extend(v);
        }
        for (k, v) in staged.sha256 {
            self.sha256.entry(k).or_default().extend(v);
        }
        Ok(added)
    }

    fn find(&self, digests: &Digests, size: u64) -> Option<Arc<str>> {
        let hit = |sigs: Option<&Vec<Sig>>| {
            sigs.and_then(|v| {
                v.iter()
                    .find(|s| s.size.is_none_or(|want| want == size))
                    .map(|s| Arc::clone(&s.name))
            })
        };
        digests
            .md5
            .and_then(|h| hit(self.md5.get(&h)))
            .or_else(|| digests.sha1.and_then(|h| hit(self.sha1.get(&h))))
            .or_else(|| digests.sha256.and_then(|h| hit(self.sha256.get(&h))))
    }

    /// Looks up complete content (for tests and one-shot scans).
    pub fn scan_bytes(&self, data: &[u8]) -> Option<Detection> {
        let mut scan = HashScan::new(Arc::new(self.clone()));
        scan.feed(data);
        scan.result()
    }
}

struct Digests {
    md5: Option<[u8; 16]>,
    sha1: Option<[u8; 20]>,
    sha256: Option<[u8; 32]>,
}

/// One file being hashed.
struct HashScan {
    engine: Arc<HashEngine>,
    md5: Option<Md5>,
    sha1: Option<Sha1>,
    sha256: Option<Sha256>,
    size: u64,
}

impl HashScan {
    fn new(engine: Arc<HashEngine>) -> Self {
        Self {
            md5: (!engine.md5.is_empty()).then(Md5::new),
            sha1: (!engine.sha1.is_empty()).then(Sha1::new),
            sha256: (!engine.sha256.is_empty()).then(Sha256::new),
            engine,
            size: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.size = self.size.saturating_add(chunk.len() as u64);
        if let Some(h) = &mut self.md5 {
            h.update(chunk);
        }
        if let Some(h) = &mut self.sha1 {
            h.update(chunk);
        }
        if let Some(h) = &mut self.sha256 {
            h.update(chunk);
        }
    }

    fn result(self) -> Option<Detection> {
        let digests = Digests {
            md5: self.md5.map(|h| h.finalize().into()),
            sha1: self.sha1.map(|h| h.finalize().into()),
            sha256: self.sha256.map(|h| h.finalize().into()),
        };
        self.engine.find(&digests, self.size).map(|name| Detection {
            threat: name.to_string(),
            engine: self.engine.name,
        })
    }
}

impl EngineScan for HashScan {
    fn update(&mut self, chunk: &[u8]) -> Result<Option<Detection>, EngineError> {
        self.feed(chunk);
        Ok(None)
    }

    fn finish(self: Box<Self>) -> Result<Option<Detection>, EngineError> {
        Ok(self.result())
    }
}

/// A loaded [`HashEngine`] shared by every scan.
#[derive(Debug, Clone)]
pub struct SharedHashEngine(pub Arc<HashEngine>);

impl Engine for SharedHashEngine {
    fn name(&self) -> &'static str {
        self.0.name
    }

    fn start(&self, _size: u64) -> Box<dyn EngineScan> {
        Box::new(HashScan::new(Arc::clone(&self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

    fn engine(text: &str, kind: HashDbKind) -> Result<HashEngine, HashDbError> {
        let mut e = HashEngine::new();
        e.add_text(text, kind, Path::new("test.db"))?;
        Ok(e)
    }

    fn streamed(e: HashEngine, data: &[u8], chunk: usize) -> Option<Detection> {
        let shared = SharedHashEngine(Arc::new(e));
        let mut scan = shared.start(data.len() as u64);
        for c in data.chunks(chunk.max(1)) {
            assert_eq!(scan.update(c).unwrap(), None);
        }
        scan.finish().unwrap()
    }

    #[test]
    fn md5_sha1_sha256_match_with_size() {
        let hdb = "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Md5\n";
        let hsb1 = "3395856CE81F2B7382DEE72602F798B642F14140:68:Eicar-Sha1\n";
        let hsb256 =
            "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:68:Eicar-Sha256\n";
        for (text, kind, name) in [
            (hdb, HashDbKind::Hdb, "Eicar-Md5"),
            (hsb1, HashDbKind::Hsb, "Eicar-Sha1"),
            (hsb256, HashDbKind::Hsb, "Eicar-Sha256"),
        ] {
            let e = engine(text, kind).unwrap();
            assert_eq!(e.len(), 1);
            for chunk in [1, 7, 68] {
                let d = streamed(e.clone(), EICAR, chunk).expect(name);
                assert_eq!((d.threat.as_str(), d.engine), (name, "hash"));
            }
            assert_eq!(e.scan_bytes(b"clean"), None);
        }
    }

    #[test]
    fn size_must_match_unless_star() {
        let e = engine(
            "44d88612fea8a8f36de82e1278abb02f:69:Wrong-Size\n",
            HashDbKind::Hdb,
        )
        .unwrap();
        assert_eq!(e.scan_bytes(EICAR), None);
        let e = engine(
            "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:*:Any-Size:73\n",
            HashDbKind::Hsb,
        )
        .unwrap();
        assert_eq!(e.scan_bytes(EICAR).unwrap().threat, "Any-Size");
    }

    #[test]
    fn errors_name_file_and_line() {
        let bad = [
            ("# comment\n\nnothex:68:X\n", 3, "characters"),
            ("44d88612fea8a8f36de82e1278abb02f:68\n", 1, "field"),
            ("44d88612fea8a8f36de82e1278abb02f:sixty:X\n", 1, "size"),
            (
                "44d88612fea8a8f36de82e1278abb02f:68:\n",
                1,
                "empty malware name",
            ),
            ("zzd88612fea8a8f36de82e1278abb02f:68:X\n", 1, "not hex"),
            (
                "44d88612fea8a8f36de82e1278abb02f:68:X:abc\n",
                1,
                "functionality",
            ),
        ];
        for (text, line, needle) in bad {
            let err = engine(text, HashDbKind::Hdb).unwrap_err();
            assert_eq!(err.line, line, "{text}");
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("test.db:{line}: ")), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        }
        let err = engine("44d88612fea8a8f36de82e1278abb02f:68:X\n", HashDbKind::Hsb);
        assert!(err.is_ok(), "an MD5 is accepted in .hsb too");
        let err = engine("abcd:1:X\n", HashDbKind::Hsb).unwrap_err();
        assert!(err.to_string().contains("SHA-256"));
    }

    #[test]
    fn failed_text_adds_nothing() {
        let mut e = HashEngine::new();
        let text = "44d88612fea8a8f36de82e1278abb02f:68:Ok\nbad line\n";
        assert!(e.add_text(text, HashDbKind::Hdb, Path::new("x")).is_err());
        assert!(e.is_empty());
    }

    proptest::proptest! {
        /// Any text either loads or names a line; never panics.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}", hsb in proptest::bool::ANY) {
            let kind = if hsb { HashDbKind::Hsb } else { HashDbKind::Hdb };
            if let Err(e) = engine(&text, kind) {
                proptest::prop_assert!(e.line >= 1);
            }
        }
    }

    #[test]
    fn long_names_are_cut_at_load() {
        let long = "N".repeat(200 * 1024);
        let text = format!(
            "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:68:{long}\n\
             3395856ce81f2b7382dee72602f798b642f14141:68:Short\n"
        );
        let e = engine(&text, HashDbKind::Hsb).unwrap();
        assert_eq!(e.len(), 2);
        let d = streamed(e, EICAR, 68).unwrap();
        assert_eq!(d.threat.len(), MAX_SIGNATURE_NAME_LEN);
        assert!(d.threat.ends_with(super::super::CUT_MARK), "{}", d.threat);
        assert!(d.threat.starts_with("NNNN"));
    }

    #[test]
    fn a_leading_utf8_bom_is_skipped() {
        let text = "\u{feff}44d88612fea8a8f36de82e1278abb02f:68:Eicar-Bom\n";
        let e = engine(text, HashDbKind::Hdb).unwrap();
        assert_eq!(e.scan_bytes(EICAR).unwrap().threat, "Eicar-Bom");
        // From a file, as Notepad saves it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bom.hdb");
        std::fs::write(&path, text.as_bytes()).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..3], b"\xEF\xBB\xBF");
        let mut e = HashEngine::new();
        assert_eq!(e.load_file(&path, HashDbKind::Hdb), Ok(1));
        assert_eq!(e.scan_bytes(EICAR).unwrap().threat, "Eicar-Bom");
        // Only at the start: elsewhere it is still an error.
        let text = "44d88612fea8a8f36de82e1278abb02f:68:A\n\u{feff}44d88612fea8a8f36de82e1278abb02f:68:B\n";
        assert_eq!(engine(text, HashDbKind::Hdb).unwrap_err().line, 2);
    }

    #[test]
    fn utf16_files_are_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ps.hdb");
        let mut bytes = vec![0xFF, 0xFE];
        for unit in "44d88612fea8a8f36de82e1278abb02f:68:X\r\n".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        let err = HashEngine::new()
            .load_file(&path, HashDbKind::Hdb)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("UTF-16") && err.contains("save it as UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn plus_sign_is_not_hex() {
        assert!(engine("+4d88612fea8a8f36de82e1278abb02f:68:X\n", HashDbKind::Hdb).is_err());
    }

    #[test]
    fn kind_by_extension() {
        assert_eq!(
            HashDbKind::of_path(Path::new("a/b.HDB")),
            Some(HashDbKind::Hdb)
        );
        assert_eq!(
            HashDbKind::of_path(Path::new("b.hsb")),
            Some(HashDbKind::Hsb)
        );
        assert_eq!(HashDbKind::of_path(Path::new("b.ndb")), None);
    }
}
