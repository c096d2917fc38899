//! [`SignatureSet`]: every engine of one signature load, immutable.
//!
//! [`SignatureSet::load`] reads each `--signatures DIR` (every supported
//! file: `.hdb` and `.hsb` into the hash engine, `.yar` / `.yara` into the
//! YARA engine), adds the built-in set unless disabled and an optional clamd
//! engine. An error in any file fails the whole load, naming the file and
//! line: a set is never half-loaded. A reload builds a new set; the service
//! swaps it atomically ([`SharedSignatures`], an `ArcSwap`), scans in
//! progress finish on the old one, and the new generation number
//! invalidates every cached verdict.
//!
//! Every set also has a [farm digest](SignatureSet::farm_digest): a BLAKE3
//! over what decides its verdicts (the content of every signature and rule
//! file, sorted, never their paths; the built-in set; the scanner's and
//! yara-x's versions; clamd's `VERSION` reply). Two hosts that load the same
//! signatures compute the same digest, so a scanner farm
//! ([`crate::farm`]) shares clean verdicts between them, and a reload with
//! other signatures makes every shared clean verdict of the old ones miss.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::engine::Engine;
use crate::engine::builtin::{builtin_engines, builtin_signature_count};
use crate::engine::clamd::{ClamdAddress, ClamdEngine};
use crate::engine::hash::{HashDbError, HashDbKind, HashEngine, SharedHashEngine};
use crate::engine::is_yara_rule_file;
#[cfg(feature = "yara")]
use crate::engine::yara::{YaraEngine, YaraLoadError};

/// Where to load signatures from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureConfig {
    /// Directories whose supported files are loaded (not recursive).
    pub dirs: Vec<PathBuf>,
    /// Include the built-in set (EICAR).
    pub builtin: bool,
    /// Forward content to this clamd as well.
    pub clamd: Option<ClamdConfig>,
}

impl Default for SignatureConfig {
    /// The built-in set only.
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            builtin: true,
            clamd: None,
        }
    }
}

/// The clamd engine entry of a [`SignatureConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClamdConfig {
    /// clamd's socket.
    pub address: ClamdAddress,
    /// Timeout of each connect, read and write.
    pub timeout: Duration,
}

/// Why a signature set could not be built; the previous set (if any) stays.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A signature directory cannot be listed.
    #[error("{}: cannot read signature directory: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A signature file cannot be read (again, for its digest).
    #[error("{}: cannot read signature file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A bad line in a `.hdb` / `.hsb` file.
    #[error(transparent)]
    Hash(#[from] HashDbError),
    /// A YARA rule file that does not compile.
    #[cfg(feature = "yara")]
    #[error(transparent)]
    Yara(#[from] YaraLoadError),
    /// A YARA rule file, and this build has no YARA engine.
    #[cfg(not(feature = "yara"))]
    #[error(
        "{}: YARA rules need a thinagent-scanner built with the `yara` feature (the default); remove the file or rebuild",
        path.display()
    )]
    NoYara {
        /// The first rule file found.
        path: PathBuf,
    },
    /// Nothing would scan: no built-in set, no file, no clamd.
    #[error(
        "no signatures loaded: the directories hold no .hdb/.hsb/.yar/.yara file and the built-in set is disabled"
    )]
    Empty,
}

/// What a load found, for logs and `--check-config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSummary {
    /// Files loaded.
    pub files: Vec<PathBuf>,
    /// Hash signatures from files.
    pub hash_signatures: usize,
    /// YARA rules compiled.
    pub yara_rules: usize,
    /// Built-in set included.
    pub builtin: bool,
    /// Signatures of the built-in set (0 when it is off).
    pub builtin_signatures: usize,
    /// clamd configured.
    pub clamd: bool,
    /// Files in the directories that are not a supported format (e.g.
    /// ClamAV `.cvd`, `.ndb`, `.ldb`): not loaded, worth a warning.
    pub skipped: Vec<PathBuf>,
}

impl LoadSummary {
    /// Every signature of the set: the built-in ones, hash signatures and
    /// YARA rules from files. clamd's database is not counted: its size is
    /// clamd's own and not known here.
    pub fn signature_count(&self) -> usize {
        self.builtin_signatures + self.hash_signatures + self.yara_rules
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// One loaded, immutable set of engines.
#[derive(Debug)]
pub struct SignatureSet {
    engines: Vec<Arc<dyn Engine>>,
    /// Some engine [blocks](Engine::blocks).
    blocks: bool,
    generation: u64,
    /// See [`SignatureSet::farm_digest`].
    farm_digest: [u8; 32],
    summary: LoadSummary,
}

impl SignatureSet {
    /// Loads `config`. All or nothing.
    pub fn load(config: &SignatureConfig) -> Result<Self, SignatureError> {
        let mut engines: Vec<Arc<dyn Engine>> = Vec::new();
        let mut summary = LoadSummary {
            builtin: config.builtin,
            builtin_signatures: if config.builtin {
                builtin_signature_count()
            } else {
                0
            },
            clamd: config.clamd.is_some(),
            ..LoadSummary::default()
        };
        if config.builtin {
            engines.extend(builtin_engines());
        }
        let mut hash = HashEngine::new();
        let mut yara_files = Vec::new();
        for dir in &config.dirs {
            for path in list_dir(dir)? {
                if let Some(kind) = HashDbKind::of_path(&path) {
                    summary.hash_signatures += hash.load_file(&path, kind)?;
                    summary.files.push(path);
                } else if is_yara_rule_file(&path) {
                    yara_files.push(path.clone());
                    summary.files.push(path);
                } else {
                    summary.skipped.push(path);
                }
            }
        }
        if !hash.is_empty() {
            engines.push(Arc::new(SharedHashEngine(Arc::new(hash))));
        }
        #[cfg(feature = "yara")]
        if let Some(yara) = yara_engine_from_files(&yara_files)? {
            summary.yara_rules = yara.rule_count();
            engines.push(Arc::new(yara));
        }
        #[cfg(not(feature = "yara"))]
        if let Some(path) = yara_files.first() {
            return Err(SignatureError::NoYara { path: path.clone() });
        }
        if let Some(clamd) = &config.clamd {
            engines.push(Arc::new(ClamdEngine::new(
                clamd.address.clone(),
                clamd.timeout,
            )));
        }
        if engines.is_empty() {
            return Err(SignatureError::Empty);
        }
        let mut files = Vec::with_capacity(summary.files.len());
        for path in &summary.files {
            let content = std::fs::read(path).map_err(|source| SignatureError::Read {
                path: path.clone(),
                source,
            })?;
            let kind = HashDbKind::of_path(path).map_or("yara", |k| match k {
                HashDbKind::Hdb => "hdb",
                HashDbKind::Hsb => "hsb",
            });
            files.push(file_digest(kind, &content));
        }
        let clamd_version = config.clamd.as_ref().map(clamd_version);
        let digest = farm_digest(
            config.builtin,
            &files,
            (!yara_files.is_empty()).then_some(YARA_X_VERSION),
            clamd_version.as_ref().map(|v| v.as_deref()),
        );
        let mut set = Self::from_engines_with_summary(engines, summary);
        set.farm_digest = digest;
        Ok(set)
    }

    /// A set of the given engines (tests, custom embeddings).
    pub fn from_engines(engines: Vec<Arc<dyn Engine>>) -> Self {
        Self::from_engines_with_summary(engines, LoadSummary::default())
    }

    fn from_engines_with_summary(engines: Vec<Arc<dyn Engine>>, summary: LoadSummary) -> Self {
        Self {
            blocks: engines.iter().any(|e| e.blocks()),
            engines,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            farm_digest: unshared_digest(),
            summary,
        }
    }

    /// The built-in set alone.
    pub fn builtin() -> Self {
        let mut set = Self::from_engines_with_summary(
            builtin_engines(),
            LoadSummary {
                builtin: true,
                builtin_signatures: builtin_signature_count(),
                ..LoadSummary::default()
            },
        );
        set.farm_digest = farm_digest(true, &[], None, None);
        set
    }

    /// The engines, in scan order (cheap ones first).
    pub fn engines(&self) -> &[Arc<dyn Engine>] {
        &self.engines
    }

    /// Whether some engine may block on I/O (clamd): scans of this set
    /// then always run on a blocking thread.
    pub fn blocks(&self) -> bool {
        self.blocks
    }

    /// A number unique to this load (process-wide, increasing); cached
    /// verdicts of other generations are ignored.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What was loaded.
    pub fn summary(&self) -> &LoadSummary {
        &self.summary
    }

    /// The digest of what decides this set's verdicts, the same on every
    /// host that loads the same signatures (see the module doc). A set
    /// built from engines ([`from_engines`](Self::from_engines)) or whose
    /// clamd did not tell its version gets a digest of its own that no
    /// other set has: its clean verdicts are never shared.
    pub fn farm_digest(&self) -> &[u8; 32] {
        &self.farm_digest
    }
}

/// The yara-x version rules are compiled and run with (the exact version
/// `Cargo.toml` pins: a test checks the two agree).
pub const YARA_X_VERSION: &str = "1.22.1";

/// How long loading waits for clamd's `VERSION` reply at most.
const CLAMD_VERSION_TIMEOUT: Duration = Duration::from_secs(2);

/// clamd's version line (it names the database version), or `None` when
/// clamd does not answer now (its verdicts are then not shared).
fn clamd_version(clamd: &ClamdConfig) -> Option<String> {
    let engine = ClamdEngine::new(
        clamd.address.clone(),
        clamd.timeout.min(CLAMD_VERSION_TIMEOUT),
    );
    match engine.version() {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(
                "clamd did not tell its version ({e}): clean verdicts of this signature set are not shared with a scanner farm; reload (SIGHUP) once clamd answers"
            );
            None
        }
    }
}

/// The digest of one signature file: its kind and its bytes.
fn file_digest(kind: &str, content: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(kind.as_bytes());
    h.update(&[0]);
    h.update(content);
    *h.finalize().as_bytes()
}

/// The farm digest of a set: the built-in set (if loaded), the sorted
/// digests of its files, yara-x's version (when rules are loaded) and
/// clamd's (when configured; `Some(None)`: clamd did not answer, and the
/// digest is one of its own).
fn farm_digest(
    builtin: bool,
    files: &[[u8; 32]],
    yara_x: Option<&str>,
    clamd: Option<Option<&str>>,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"thinagent-farm-generation-v1\0scanner ");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    if builtin {
        h.update(b"\0builtin\0");
        h.update(crate::engine::builtin::BUILTIN_HDB.as_bytes());
        h.update(b"\0");
        h.update(crate::engine::builtin::BUILTIN_HSB.as_bytes());
    }
    let mut sorted = files.to_vec();
    sorted.sort_unstable();
    h.update(b"\0files\0");
    h.update(&(sorted.len() as u64).to_le_bytes());
    for f in &sorted {
        h.update(f);
    }
    if let Some(v) = yara_x {
        h.update(b"\0yara-x ");
        h.update(v.as_bytes());
    }
    match clamd {
        None => {}
        Some(Some(v)) => {
            h.update(b"\0clamd ");
            h.update(v.trim().as_bytes());
        }
        Some(None) => {
            h.update(b"\0clamd unknown\0");
            h.update(&unshared_digest());
        }
    }
    *h.finalize().as_bytes()
}

/// A digest no other set has (this process, this load, this instant).
fn unshared_digest() -> [u8; 32] {
    static UNSHARED: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(b"thinagent-unshared\0");
    h.update(&std::process::id().to_le_bytes());
    h.update(&UNSHARED.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    h.update(&nanos.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The active set, swapped atomically on reload.
pub type SharedSignatures = ArcSwap<SignatureSet>;

/// Builds the YARA engine from every rule file found (one compilation, so
/// rules of all directories share one scanner). `None` when there is none.
#[cfg(feature = "yara")]
fn yara_engine_from_files(files: &[PathBuf]) -> Result<Option<YaraEngine>, SignatureError> {
    if files.is_empty() {
        return Ok(None);
    }
    Ok(Some(YaraEngine::from_files(files)?))
}

/// Regular files in `dir`, sorted by name (a stable load order).
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, SignatureError> {
    let err = |source| SignatureError::Dir {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::builtin::EICAR;

    fn scan(set: &SignatureSet, data: &[u8]) -> Option<String> {
        for e in set.engines() {
            let mut s = e.start(data.len() as u64);
            s.update(data).unwrap();
            if let Some(d) = s.finish().unwrap() {
                return Some(d.threat);
            }
        }
        None
    }

    #[test]
    fn builtin_only_by_default() {
        let set = SignatureSet::load(&SignatureConfig::default()).unwrap();
        assert_eq!(scan(&set, EICAR).as_deref(), Some("Eicar-Test-Signature"));
        assert_eq!(set.summary().signature_count(), builtin_signature_count());
        assert_eq!(
            SignatureSet::builtin().summary().signature_count(),
            builtin_signature_count()
        );
        assert_eq!(scan(&set, b"hello"), None);
    }

    #[test]
    fn loads_hash_files_and_fails_whole_on_one_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        // md5("hello") = 5d41402abc4b2a76b9719d911017c592
        std::fs::write(
            dir.path().join("a.hdb"),
            "5d41402abc4b2a76b9719d911017c592:5:Test-Hello\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let config = SignatureConfig {
            dirs: vec![dir.path().to_owned()],
            builtin: false,
            clamd: None,
        };
        let set = SignatureSet::load(&config).unwrap();
        assert_eq!(set.summary().hash_signatures, 1);
        assert_eq!(set.summary().signature_count(), 1, "built-in set off");
        assert_eq!(scan(&set, b"hello").as_deref(), Some("Test-Hello"));
        assert_eq!(scan(&set, EICAR), None, "built-in disabled");
        assert_eq!(set.summary().skipped, vec![dir.path().join("notes.txt")]);

        std::fs::write(dir.path().join("b.hsb"), "\nnot a signature\n").unwrap();
        let err = SignatureSet::load(&config).unwrap_err().to_string();
        assert!(err.contains("b.hsb:2:"), "{err}");
    }

    #[cfg(feature = "yara")]
    #[test]
    fn yara_files_are_compiled_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("r.yar"),
            "rule Test_Marker { strings: $a = \"THINAGENT-MARKER\" condition: $a }\n",
        )
        .unwrap();
        let config = SignatureConfig {
            dirs: vec![dir.path().to_owned()],
            builtin: false,
            clamd: None,
        };
        let set = SignatureSet::load(&config).unwrap();
        assert_eq!(set.summary().yara_rules, 1);
        assert!(scan(&set, b"xx THINAGENT-MARKER yy").is_some());
        std::fs::write(dir.path().join("s.yara"), "rule { broken").unwrap();
        let err = SignatureSet::load(&config).unwrap_err().to_string();
        assert!(err.contains("s.yara"), "{err}");
    }

    #[test]
    fn only_a_set_with_clamd_blocks() {
        assert!(!SignatureSet::builtin().blocks());
        let clamd = SignatureConfig {
            clamd: Some(ClamdConfig {
                address: "tcp://127.0.0.1:1".parse().unwrap(),
                timeout: Duration::from_secs(1),
            }),
            ..SignatureConfig::default()
        };
        // Loading does not connect: clamd is asked per scan.
        assert!(SignatureSet::load(&clamd).unwrap().blocks());
    }

    #[test]
    fn empty_and_missing_are_errors_and_generations_differ() {
        let dir = tempfile::tempdir().unwrap();
        let empty = SignatureConfig {
            dirs: vec![dir.path().to_owned()],
            builtin: false,
            clamd: None,
        };
        assert!(matches!(
            SignatureSet::load(&empty),
            Err(SignatureError::Empty)
        ));
        let missing = SignatureConfig {
            dirs: vec![dir.path().join("nope")],
            builtin: true,
            clamd: None,
        };
        let err = SignatureSet::load(&missing).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let a = SignatureSet::builtin();
        let b = SignatureSet::builtin();
        assert_ne!(a.generation(), b.generation());
    }

    #[test]
    fn farm_digest_is_the_content_not_the_paths_and_changes_with_it() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hdb = "5d41402abc4b2a76b9719d911017c592:5:Test-Hello\n";
        std::fs::write(one.path().join("a.hdb"), hdb).unwrap();
        std::fs::write(two.path().join("other-name.hdb"), hdb).unwrap();
        let load = |dir: &Path| {
            SignatureSet::load(&SignatureConfig {
                dirs: vec![dir.to_owned()],
                builtin: true,
                clamd: None,
            })
            .unwrap()
        };
        let (a, b) = (load(one.path()), load(two.path()));
        assert_ne!(a.generation(), b.generation());
        assert_eq!(a.farm_digest(), b.farm_digest(), "same files, other paths");
        assert_eq!(load(one.path()).farm_digest(), a.farm_digest(), "reload");
        std::fs::write(
            two.path().join("b.hdb"),
            "44d88612fea8a8f36de82e1278abb02f:68:Other\n",
        )
        .unwrap();
        let c = load(two.path());
        assert_ne!(c.farm_digest(), a.farm_digest(), "a file more");
        let builtin = SignatureSet::builtin();
        assert_eq!(
            builtin.farm_digest(),
            SignatureSet::load(&SignatureConfig::default())
                .unwrap()
                .farm_digest()
        );
        assert_ne!(builtin.farm_digest(), a.farm_digest());
        // Sets of hand-made engines, or whose clamd did not answer, are
        // never shared.
        let e1 = SignatureSet::from_engines(builtin_engines());
        let e2 = SignatureSet::from_engines(builtin_engines());
        assert_ne!(e1.farm_digest(), e2.farm_digest());
        let no_clamd = SignatureConfig {
            clamd: Some(ClamdConfig {
                address: "tcp://127.0.0.1:1".parse().unwrap(),
                timeout: Duration::from_secs(1),
            }),
            ..SignatureConfig::default()
        };
        let (n1, n2) = (
            SignatureSet::load(&no_clamd).unwrap(),
            SignatureSet::load(&no_clamd).unwrap(),
        );
        assert_ne!(n1.farm_digest(), n2.farm_digest());
        assert_ne!(
            farm_digest(true, &[], None, Some(Some("ClamAV 1.0.7/27100"))),
            farm_digest(true, &[], None, Some(Some("ClamAV 1.0.7/27101"))),
            "clamd's database version counts"
        );
        assert_eq!(
            farm_digest(true, &[[1; 32], [2; 32]], None, None),
            farm_digest(true, &[[2; 32], [1; 32]], None, None),
            "file order does not count"
        );
    }

    #[test]
    fn yara_x_version_is_the_pinned_one() {
        let manifest = include_str!("../Cargo.toml");
        assert!(
            manifest.contains(&format!("yara-x = {{ version = \"={YARA_X_VERSION}\"")),
            "update YARA_X_VERSION to the yara-x version Cargo.toml pins"
        );
    }
}
