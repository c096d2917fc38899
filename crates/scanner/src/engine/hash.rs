//! Hash signatures in ClamAV's own database formats, computed while the
//! content streams through.
//!
//! * `.hdb`: `MD5:Size:MalwareName`
//! * `.hsb`: `HashString:Size:MalwareName`, where the hash is SHA-1 (40 hex
//!   digits) or SHA-256 (64 hex digits).
//!
//! As in ClamAV, `Size` may be `*` ("any size", ClamAV ≥ 0.98). ClamAV
//! requires such a line to carry a minimum functionality level of at least
//! 73 as fourth field (`HashString:*:MalwareName:73`) so that older ClamAV
//! versions, which cannot read `*`, skip it; its loader rejects a `*` line
//! without it as malformed, and so does this one (the same file then loads
//! the same way in both). Otherwise optional trailing `:MinFL[:MaxFL]`
//! functionality-level fields are accepted and ignored (this engine
//! implements every hash feature). Blank lines and lines
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
//! Only the digests some signature needs are computed, and a signature
//! matches only content of its size: the engine keeps, per digest kind, the
//! set of sizes that have signatures and whether any `*` signature exists
//! ([`HashEngine::plan`]). Complete content (its length known) computes
//! exactly the kinds its length needs. A streamed file is planned from the
//! size the guest stated; as the content may end up longer or shorter (the
//! file changed while being read, or the guest is wrong), a kind the stated
//! size does not need is still hashed while the content is no longer than
//! that kind's largest signature size, and dropped as soon as it is longer
//! (no signature of that kind can then match). So the real length always
//! decides, no content is buffered, and the extra cost of a stated size that
//! is right is at most the largest signature size of each unplanned kind,
//! usually nothing (a chunk that crosses that size is never hashed).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The smallest functionality level ClamAV accepts on a `*`-size line.
pub const WILDCARD_SIZE_MIN_FLEVEL: u32 = 73;

/// Which file sizes have signatures of one digest kind.
#[derive(Debug, Default, Clone)]
struct SizeIndex {
    sizes: HashSet<u64>,
    /// Some signature of this kind has size `*`.
    any: bool,
    /// Largest size in `sizes` (0 when empty).
    max: u64,
}

impl SizeIndex {
    fn add(&mut self, size: Option<u64>) {
        match size {
            None => self.any = true,
            Some(n) => {
                self.sizes.insert(n);
                self.max = self.max.max(n);
            }
        }
    }

    fn merge(&mut self, other: &SizeIndex) {
        self.any |= other.any;
        self.max = self.max.max(other.max);
        self.sizes.extend(other.sizes.iter().copied());
    }

    /// Whether a file of `size` bytes could match a signature of this kind.
    fn wants(&self, size: u64) -> bool {
        self.any || self.sizes.contains(&size)
    }

    /// Whether content of which `len` bytes are already known could still
    /// end at a size some signature of this kind has.
    fn may_still_want(&self, len: u64) -> bool {
        self.any || (!self.sizes.is_empty() && len <= self.max)
    }
}

/// Which digests to compute for one file (see [`HashEngine::plan`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DigestPlan {
    /// MD5 (`.hdb`).
    pub md5: bool,
    /// SHA-1 (`.hsb`, 40 hex digits).
    pub sha1: bool,
    /// SHA-256 (`.hsb`, 64 hex digits).
    pub sha256: bool,
}

impl DigestPlan {
    /// No digest at all.
    pub fn is_empty(&self) -> bool {
        !(self.md5 || self.sha1 || self.sha256)
    }
}

/// Digests computed and bytes hashed by one engine since it was loaded,
/// per kind: makes the planning observable (tests, benchmarks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DigestCounts {
    /// MD5 digests finished.
    pub md5: u64,
    /// SHA-1 digests finished.
    pub sha1: u64,
    /// SHA-256 digests finished.
    pub sha256: u64,
    /// Bytes fed to any digest (a byte fed to two digests counts twice).
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    md5: AtomicU64,
    sha1: AtomicU64,
    sha256: AtomicU64,
    bytes: AtomicU64,
}

/// The hash signature engine: immutable after loading.
#[derive(Default, Clone)]
pub struct HashEngine {
    md5: HashMap<[u8; 16], Vec<Sig>>,
    sha1: HashMap<[u8; 20], Vec<Sig>>,
    sha256: HashMap<[u8; 32], Vec<Sig>>,
    md5_sizes: SizeIndex,
    sha1_sizes: SizeIndex,
    sha256_sizes: SizeIndex,
    /// Shared by clones: one relaxed add per digest finished and per chunk
    /// hashed, noise next to the hashing itself.
    counters: Arc<Counters>,
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
            let mut min_flevel = None;
            for fl in fields {
                let Ok(level) = fl.parse::<u32>() else {
                    return Err(err(format!("functionality level `{fl}` is not a number")));
                };
                min_flevel.get_or_insert(level);
            }
            let size = match size {
                "*" if min_flevel.is_some_and(|l| l >= WILDCARD_SIZE_MIN_FLEVEL) => None,
                "*" => {
                    return Err(err(format!(
                        "size `*` needs a minimum functionality level of at least \
                         {WILDCARD_SIZE_MIN_FLEVEL} as fourth field, as ClamAV requires \
                         (e.g. `{hash}:*:{name}:{WILDCARD_SIZE_MIN_FLEVEL}`)"
                    )));
                }
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
                    staged.md5_sizes.add(sig.size);
                    staged.md5.entry(h).or_default().push(sig);
                }
                (40, _) => {
                    let h = hex::<20>(&hash).ok_or_else(|| err(format!("`{hash}` is not hex")))?;
                    staged.sha1_sizes.add(sig.size);
                    staged.sha1.entry(h).or_default().push(sig);
                }
                (64, _) => {
                    let h = hex::<32>(&hash).ok_or_else(|| err(format!("`{hash}` is not hex")))?;
                    staged.sha256_sizes.add(sig.size);
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
        self.md5_sizes.merge(&staged.md5_sizes);
        self.sha1_sizes.merge(&staged.sha1_sizes);
        self.sha256_sizes.merge(&staged.sha256_sizes);
        Ok(added)
    }

    /// The digests a file of exactly `size` bytes needs: a kind is computed
    /// only when some signature of that kind has this size or size `*`.
    pub fn plan(&self, size: u64) -> DigestPlan {
        DigestPlan {
            md5: self.md5_sizes.wants(size),
            sha1: self.sha1_sizes.wants(size),
            sha256: self.sha256_sizes.wants(size),
        }
    }

    /// Digests computed and bytes hashed so far (by this engine and its
    /// clones).
    pub fn digest_counts(&self) -> DigestCounts {
        let c = &self.counters;
        DigestCounts {
            md5: c.md5.load(Ordering::Relaxed),
            sha1: c.sha1.load(Ordering::Relaxed),
            sha256: c.sha256.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }

    fn count(&self, plan: DigestPlan, bytes: u64) {
        let c = &self.counters;
        for (on, counter) in [
            (plan.md5, &c.md5),
            (plan.sha1, &c.sha1),
            (plan.sha256, &c.sha256),
        ] {
            if on {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
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

    /// Looks up complete content: computes only the digests its length
    /// needs ([`HashEngine::plan`]).
    pub fn scan_bytes(&self, data: &[u8]) -> Option<Detection> {
        let size = data.len() as u64;
        let plan = self.plan(size);
        if plan.is_empty() {
            return None;
        }
        let kinds = u64::from(plan.md5) + u64::from(plan.sha1) + u64::from(plan.sha256);
        self.count(plan, size.saturating_mul(kinds));
        let digests = Digests {
            md5: plan.md5.then(|| Md5::digest(data).into()),
            sha1: plan.sha1.then(|| Sha1::digest(data).into()),
            sha256: plan.sha256.then(|| Sha256::digest(data).into()),
        };
        self.find(&digests, size).map(|name| Detection {
            threat: name.to_string(),
            engine: self.name,
        })
    }
}

struct Digests {
    md5: Option<[u8; 16]>,
    sha1: Option<[u8; 20]>,
    sha256: Option<[u8; 32]>,
}

/// One file being hashed. A hasher is `None` once its kind cannot match
/// (see the module docs): planned kinds from the stated size, the others
/// while the content is no longer than their largest signature size.
struct HashScan {
    engine: Arc<HashEngine>,
    md5: Option<Md5>,
    sha1: Option<Sha1>,
    sha256: Option<Sha256>,
    /// The plan for the stated size: these hashers are kept whatever the
    /// length turns out to be.
    planned: DigestPlan,
    size: u64,
}

impl HashScan {
    fn new(engine: Arc<HashEngine>, stated: u64) -> Self {
        let planned = engine.plan(stated);
        // Unplanned kinds start too when the content could still end at one
        // of their sizes (a wrong stated size); `update` drops them early.
        let start = |planned: bool, index: &SizeIndex| planned || index.may_still_want(0);
        Self {
            md5: start(planned.md5, &engine.md5_sizes).then(Md5::new),
            sha1: start(planned.sha1, &engine.sha1_sizes).then(Sha1::new),
            sha256: start(planned.sha256, &engine.sha256_sizes).then(Sha256::new),
            planned,
            engine,
            size: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.size = self.size.saturating_add(chunk.len() as u64);
        let size = self.size;
        let engine = &self.engine;
        let mut fed = 0u64;
        let len = chunk.len() as u64;
        fn step<D: Digest>(
            h: &mut Option<D>,
            planned: bool,
            index: &SizeIndex,
            size: u64,
            chunk: &[u8],
            fed: &mut u64,
            len: u64,
        ) {
            if !planned && !index.may_still_want(size) {
                // Longer than every signature of this kind: none can match.
                *h = None;
            }
            if let Some(h) = h {
                h.update(chunk);
                *fed += len;
            }
        }
        step(
            &mut self.md5,
            self.planned.md5,
            &engine.md5_sizes,
            size,
            chunk,
            &mut fed,
            len,
        );
        step(
            &mut self.sha1,
            self.planned.sha1,
            &engine.sha1_sizes,
            size,
            chunk,
            &mut fed,
            len,
        );
        step(
            &mut self.sha256,
            self.planned.sha256,
            &engine.sha256_sizes,
            size,
            chunk,
            &mut fed,
            len,
        );
        if fed > 0 {
            engine.counters.bytes.fetch_add(fed, Ordering::Relaxed);
        }
    }

    fn result(self) -> Option<Detection> {
        // The real length decides which digests are looked up; a hasher
        // still alive has seen all of the content.
        let need = self.engine.plan(self.size);
        let finished = DigestPlan {
            md5: need.md5 && self.md5.is_some(),
            sha1: need.sha1 && self.sha1.is_some(),
            sha256: need.sha256 && self.sha256.is_some(),
        };
        self.engine.count(finished, 0);
        let digests = Digests {
            md5: self.md5.filter(|_| need.md5).map(|h| h.finalize().into()),
            sha1: self.sha1.filter(|_| need.sha1).map(|h| h.finalize().into()),
            sha256: self
                .sha256
                .filter(|_| need.sha256)
                .map(|h| h.finalize().into()),
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

    fn start(&self, size: u64) -> Box<dyn EngineScan> {
        Box::new(HashScan::new(Arc::clone(&self.0), size))
    }

    fn scan_complete(&self, data: &[u8]) -> Result<Option<Detection>, EngineError> {
        Ok(self.0.scan_bytes(data))
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

    fn digest_hex(data: &[u8]) -> (String, String, String) {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        (
            hex(&Md5::digest(data)),
            hex(&Sha1::digest(data)),
            hex(&Sha256::digest(data)),
        )
    }

    /// Streams `data` announced as `stated` bytes.
    fn streamed_stated(
        e: &Arc<HashEngine>,
        data: &[u8],
        stated: u64,
        chunk: usize,
    ) -> Option<Detection> {
        let mut scan = SharedHashEngine(Arc::clone(e)).start(stated);
        for c in data.chunks(chunk.max(1)) {
            assert_eq!(scan.update(c).unwrap(), None);
        }
        scan.finish().unwrap()
    }

    #[test]
    fn plan_computes_a_kind_only_for_sizes_it_has_signatures_of() {
        let (md5, sha1, sha256) = digest_hex(b"x");
        let mut e = HashEngine::new();
        let text = format!("{md5}:68:A\n{md5}:500:B\n{sha1}:100:C\n");
        e.add_text(&text, HashDbKind::Hdb, Path::new("t.hdb"))
            .unwrap();
        let plan = |md5, sha1, sha256| DigestPlan { md5, sha1, sha256 };
        assert_eq!(e.plan(68), plan(true, false, false));
        assert_eq!(e.plan(500), plan(true, false, false));
        assert_eq!(e.plan(100), plan(false, true, false));
        assert!(e.plan(69).is_empty());
        assert!(e.plan(0).is_empty());
        assert!(e.plan(u64::MAX).is_empty());
        // A `*` SHA-256 signature makes SHA-256 needed at every size.
        e.add_text(
            &format!("{sha256}:*:D:73\n"),
            HashDbKind::Hsb,
            Path::new("t.hsb"),
        )
        .unwrap();
        assert_eq!(e.plan(68), plan(true, false, true));
        assert_eq!(e.plan(69), plan(false, false, true));
        assert_eq!(HashEngine::new().plan(68), DigestPlan::default());
    }

    #[test]
    fn every_digest_kind_detects_at_its_size_and_computes_only_that_kind() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 256) as u8).collect();
        let (md5, sha1, sha256) = digest_hex(&data);
        for (line, kind, which) in [
            (format!("{md5}:5000:K-Md5\n"), HashDbKind::Hdb, 0),
            (format!("{sha1}:5000:K-Sha1\n"), HashDbKind::Hsb, 1),
            (format!("{sha256}:5000:K-Sha256\n"), HashDbKind::Hsb, 2),
        ] {
            let e = Arc::new(engine(&line, kind).unwrap());
            let name = ["K-Md5", "K-Sha1", "K-Sha256"][which];
            assert_eq!(e.scan_bytes(&data).unwrap().threat, name);
            for chunk in [1000, 4096, 5000] {
                let d = streamed_stated(&e, &data, 5000, chunk).expect(name);
                assert_eq!(d.threat, name);
            }
            let counts = e.digest_counts();
            let got = [counts.md5, counts.sha1, counts.sha256];
            let mut want = [0; 3];
            want[which] = 4;
            assert_eq!(got, want, "{name}");
            assert_eq!(counts.bytes, 4 * 5000, "{name}");
            // One byte more or less: another size, no detection.
            assert_eq!(e.scan_bytes(&data[1..]), None);
        }
    }

    #[test]
    fn star_size_signatures_detect_every_size() {
        for len in [0usize, 1, 68, 65_537, 300_000] {
            let data = vec![0x5a; len];
            let (md5, sha1, sha256) = digest_hex(&data);
            for (line, kind) in [
                (format!("{md5}:*:Star-Md5:73\n"), HashDbKind::Hdb),
                (format!("{sha1}:*:Star-Sha1:73:255\n"), HashDbKind::Hsb),
                (format!("{sha256}:*:Star-Sha256:200\n"), HashDbKind::Hsb),
            ] {
                let e = Arc::new(engine(&line, kind).unwrap());
                assert!(e.scan_bytes(&data).is_some(), "{line}");
                let d = streamed_stated(&e, &data, len as u64, 65_536);
                assert!(d.is_some(), "{line}");
                // Stated size wrong both ways: still found.
                assert!(streamed_stated(&e, &data, len as u64 + 7, 4096).is_some());
                assert!(streamed_stated(&e, &data, len as u64 / 2, 4096).is_some());
            }
        }
    }

    #[test]
    fn star_size_needs_functionality_level_73_as_clamav_does() {
        let sha = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";
        for bad in [
            format!("{sha}:*:NoLevel\n"),
            format!("{sha}:*:TooLow:72\n"),
            format!("{sha}:*:TooLow:0:255\n"),
        ] {
            let err = engine(&bad, HashDbKind::Hsb).unwrap_err().to_string();
            assert!(err.contains("functionality level of at least 73"), "{err}");
            assert!(err.contains(":*:"), "the message shows the fix: {err}");
        }
        for good in [format!("{sha}:*:Ok:73\n"), format!("{sha}:*:Ok:99:255\n")] {
            assert_eq!(engine(&good, HashDbKind::Hsb).unwrap().len(), 1);
        }
        // A numeric size needs no level.
        assert!(engine(&format!("{sha}:68:Ok\n"), HashDbKind::Hsb).is_ok());
    }

    #[test]
    fn a_file_whose_size_matches_no_signature_is_not_hashed() {
        let e = Arc::new(
            engine(
                &format!(
                    "{}\n3395856ce81f2b7382dee72602f798b642f14140:68:S1\n\
                     275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:70:S2\n",
                    "44d88612fea8a8f36de82e1278abb02f:68:M"
                ),
                HashDbKind::Hsb,
            )
            .unwrap(),
        );
        let big = vec![7u8; 1 << 20];
        assert_eq!(e.scan_bytes(&big), None);
        assert_eq!(e.scan_bytes(&big[..69]), None);
        // Streamed, its (right) stated size known up front, in chunks
        // larger than every signature size: not one byte hashed.
        assert_eq!(streamed_stated(&e, &big, big.len() as u64, 65_536), None);
        assert_eq!(e.digest_counts(), DigestCounts::default());
        // A size that does match: only the kinds of that size.
        assert_eq!(e.scan_bytes(EICAR).unwrap().threat, "M");
        let c = e.digest_counts();
        assert_eq!((c.md5, c.sha1, c.sha256, c.bytes), (1, 1, 0, 2 * 68));
    }

    #[test]
    fn a_wrong_stated_size_still_detects_by_the_real_length() {
        let (md5, sha1, sha256) = digest_hex(EICAR);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (big_md5, _, _) = digest_hex(&data);
        for (line, kind) in [
            (format!("{md5}:68:W-Md5\n"), HashDbKind::Hdb),
            (format!("{sha1}:68:W-Sha1\n"), HashDbKind::Hsb),
            (format!("{sha256}:68:W-Sha256\n"), HashDbKind::Hsb),
        ] {
            let e = Arc::new(engine(&line, kind).unwrap());
            for stated in [0, 10, 67, 69, 1 << 20, u64::MAX] {
                for chunk in [1, 10, 68] {
                    assert!(
                        streamed_stated(&e, EICAR, stated, chunk).is_some(),
                        "{line} stated {stated} chunk {chunk}"
                    );
                }
            }
            // The stated size has a signature, the real length has none.
            assert_eq!(streamed_stated(&e, &EICAR[..60], 68, 7), None);
        }
        // Content longer than stated, past the planned size.
        let e = Arc::new(engine(&format!("{big_md5}:200000:W-Big\n"), HashDbKind::Hdb).unwrap());
        for stated in [68, 100_000, 300_000] {
            let d = streamed_stated(&e, &data, stated, 65_536);
            assert_eq!(d.map(|d| d.threat).as_deref(), Some("W-Big"), "{stated}");
        }
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
