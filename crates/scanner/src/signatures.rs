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
        Ok(Self::from_engines_with_summary(engines, summary))
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
            summary,
        }
    }

    /// The built-in set alone.
    pub fn builtin() -> Self {
        Self::from_engines_with_summary(
            builtin_engines(),
            LoadSummary {
                builtin: true,
                builtin_signatures: builtin_signature_count(),
                ..LoadSummary::default()
            },
        )
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
}
