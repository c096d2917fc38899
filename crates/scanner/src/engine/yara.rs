//! YARA rules, compiled and evaluated by the [`yara_x`] crate.
//!
//! Rules are compiled once ([`YaraEngine::from_files`] or
//! [`YaraEngine::from_sources`]) into an immutable [`yara_x::Rules`], shared by
//! every scan. Each rule file gets its own namespace (its file stem), so two
//! files may define rules of the same name without clashing.
//!
//! A rule identifier (the threat name reported) longer than
//! [`MAX_SIGNATURE_NAME_LEN`] bytes is reported cut to it; the load warns
//! once per file, naming the file and the first such rule's line.
//!
//! YARA evaluates a rule over the whole file: modules (`pe`, `elf`, `hash`),
//! `filesize`, `uint32(...)` and patterns across chunk boundaries all need the
//! complete content. yara-x's block scanner (`yara_x::blocks`) drops all of
//! these, so a [`YaraScan`] buffers the content it is fed (bounded by
//! [`YaraEngine::with_max_size`]) and evaluates the rules at
//! [`EngineScan::finish`], limited by [`YaraEngine::with_timeout`].
//! Content already complete in memory ([`Engine::scan_complete`]) is
//! scanned in place, without a copy.
//!
//! The buffer is reserved at the start for the whole stated size, so it
//! never grows (and copies) chunk by chunk. A stated size is never trusted
//! beyond the engine's limit: above it the scan is refused at once, and the
//! session has already refused any file stated larger than its
//! `max_file_size`; a guest that states more than it sends costs address
//! space that is never touched (the allocator maps large buffers lazily),
//! for the length of one scan. Each thread keeps its last buffer of up to
//! [`SPARE_BUFFER_MAX`] bytes for its next scan: its pages are already
//! mapped, so the next file of that size does not page-fault and zero them
//! again.
//!
//! A [`yara_x::Scanner`] is costly to create (a WebAssembly store and
//! instance) compared with scanning a small file, and it is neither `Send`
//! nor detached from the rules it borrows. So each thread keeps one scanner
//! for the rules it last used (a [`std::thread_local`] holding the rules'
//! `Arc` and the scanner borrowing them) and reuses it while the rules stay
//! the same; after a reload the next scan on that thread replaces it, which
//! also releases that thread's hold on the old rules.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{
    Detection, Engine, EngineError, EngineScan, MAX_SIGNATURE_NAME_LEN, cap_signature_name,
};

/// The engine name used in detections, logs and metrics.
pub const YARA_ENGINE_NAME: &str = "yara";

/// Default bound on the content one scan buffers (see
/// [`YaraEngine::with_max_size`]; the service's default `limits.max_file_size`).
pub const DEFAULT_YARA_MAX_SIZE: u64 = 256 * 1024 * 1024;

/// Default time one scan may take (see [`YaraEngine::with_timeout`]).
pub const DEFAULT_YARA_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest buffer a thread keeps between scans (see the module docs): big
/// enough for the usual executable, small enough that idle threads do not
/// hold much memory (tokio ends idle blocking threads after a few seconds).
pub const SPARE_BUFFER_MAX: usize = 32 * 1024 * 1024;

/// A YARA rule file that could not be loaded. Loading is all or nothing: any
/// error means no engine.
#[derive(Debug, thiserror::Error)]
pub enum YaraLoadError {
    /// The file could not be read.
    #[error("{}: cannot read YARA rule file: {source}", path.display())]
    Io {
        /// The rule file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not compile: a syntax or semantic error at `line`.
    #[error("{}:{line}:{column}: YARA rule error: {message}", path.display())]
    Compile {
        /// The rule file (or the origin given to [`YaraEngine::from_sources`]).
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in bytes) of the error.
        column: usize,
        /// What is wrong, as yara-x describes it (e.g. `syntax error:
        /// expecting ...`).
        message: String,
    },
}

impl YaraLoadError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            YaraLoadError::Io { path, .. } | YaraLoadError::Compile { path, .. } => path,
        }
    }

    /// The 1-based line of a compile error (`None` for I/O errors).
    pub fn line(&self) -> Option<usize> {
        match self {
            YaraLoadError::Io { .. } => None,
            YaraLoadError::Compile { line, .. } => Some(*line),
        }
    }
}

/// Compiled YARA rules as an [`Engine`]. Cheap to clone (the rules are
/// shared).
#[derive(Clone)]
pub struct YaraEngine {
    rules: Arc<yara_x::Rules>,
    rule_count: usize,
    max_size: u64,
    timeout: Duration,
}

impl fmt::Debug for YaraEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("YaraEngine")
            .field("rule_count", &self.rule_count)
            .field("max_size", &self.max_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

pub use super::is_yara_rule_file;

impl YaraEngine {
    /// Reads and compiles every rule file in `paths` (the caller picks the
    /// files, e.g. with [`is_yara_rule_file`]). The first file that cannot be
    /// read or compiled is the error, naming the file and line.
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self, YaraLoadError> {
        let mut sources = Vec::with_capacity(paths.len());
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read(path).map_err(|source| YaraLoadError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            sources.push((path.to_path_buf(), text));
        }
        Self::compile(sources.iter().map(|(p, t)| (p.as_path(), t.as_slice())))
    }

    /// Compiles rules from memory: each item is (origin used in errors and as
    /// the namespace, rule source text).
    pub fn from_sources<'a, I>(sources: I) -> Result<Self, YaraLoadError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        Self::compile(
            sources
                .into_iter()
                .map(|(origin, text)| (Path::new(origin), text.as_bytes())),
        )
    }

    /// Compiles one rule source (origin `<memory>`); convenient for tests.
    pub fn from_source(text: &str) -> Result<Self, YaraLoadError> {
        Self::from_sources([("<memory>", text)])
    }

    fn compile<'a, I>(sources: I) -> Result<Self, YaraLoadError>
    where
        I: IntoIterator<Item = (&'a Path, &'a [u8])>,
    {
        let mut compiler = yara_x::Compiler::new();
        let mut files = Vec::new();
        for (path, text) in sources {
            let namespace = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "default".to_owned());
            compiler.new_namespace(&namespace);
            files.push((namespace.clone(), path, text));
            let origin = path.display().to_string();
            let source = yara_x::SourceCode::from(text).with_origin(origin);
            if let Err(err) = compiler.add_source(source) {
                return Err(compile_error(path, text, &err));
            }
        }
        let rules = compiler.build();
        let rule_count = rules.iter().len();
        warn_long_identifiers(&rules, &files);
        Ok(YaraEngine {
            rules: Arc::new(rules),
            rule_count,
            max_size: DEFAULT_YARA_MAX_SIZE,
            timeout: DEFAULT_YARA_TIMEOUT,
        })
    }

    /// Sets the most content one scan buffers; a longer file is refused
    /// ([`EngineError::Refused`]) rather than scanned in part.
    #[must_use]
    pub fn with_max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// Sets how long evaluating the rules over one file may take.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Number of compiled rules (private and global rules included).
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// Evaluates the rules over a complete buffer: the first matching rule,
    /// or `None`.
    pub fn scan_bytes(&self, data: &[u8]) -> Result<Option<Detection>, EngineError> {
        if self.rule_count == 0 {
            return Ok(None);
        }
        THREAD_SCANNER.with(|slot| {
            let mut slot = slot.borrow_mut();
            let reusable = slot
                .as_ref()
                .is_some_and(|cached| Arc::ptr_eq(cached.borrow_owner(), &self.rules));
            if !reusable {
                // Drop the old scanner (and its rules) before building anew.
                *slot = None;
                *slot = Some(ThreadScanner::new(Arc::clone(&self.rules), |rules| {
                    let mut scanner = yara_x::Scanner::new(rules);
                    // Only the verdict matters: a pattern used as a plain
                    // `$a` stops being searched after its first match.
                    scanner.fast_scan(true);
                    scanner
                }));
            }
            let cached = slot.as_mut().expect("scanner just ensured");
            cached.with_dependent_mut(|_, scanner| self.scan_with(scanner, data))
        })
    }

    fn scan_with(
        &self,
        scanner: &mut yara_x::Scanner<'_>,
        data: &[u8],
    ) -> Result<Option<Detection>, EngineError> {
        scanner.set_timeout(self.timeout);
        let results = scanner.scan(data).map_err(|err| match err {
            yara_x::ScanError::Timeout => EngineError::Timeout {
                engine: YARA_ENGINE_NAME,
                millis: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            },
            other => EngineError::Refused {
                engine: YARA_ENGINE_NAME,
                reason: format!("scan failed: {other}"),
            },
        })?;
        let detection = results.matching_rules().next().map(|rule| Detection {
            threat: cap_signature_name(rule.identifier()).into_owned(),
            engine: YARA_ENGINE_NAME,
        });
        Ok(detection)
    }
}

/// One warning per rule file whose rule identifiers are longer than
/// [`MAX_SIGNATURE_NAME_LEN`] (they are reported cut), naming the file and
/// the line of the first one. `files`: (namespace, path, source) as
/// compiled.
fn warn_long_identifiers(rules: &yara_x::Rules, files: &[(String, &Path, &[u8])]) {
    let mut warned: Vec<&str> = Vec::new();
    for rule in rules.iter() {
        let id = rule.identifier();
        let namespace = rule.namespace();
        if id.len() <= MAX_SIGNATURE_NAME_LEN || warned.contains(&namespace) {
            continue;
        }
        warned.push(namespace);
        let count = rules
            .iter()
            .filter(|r| r.namespace() == namespace && r.identifier().len() > MAX_SIGNATURE_NAME_LEN)
            .count();
        let Some((_, path, text)) = files.iter().find(|(ns, ..)| ns == namespace) else {
            continue;
        };
        let text = String::from_utf8_lossy(text);
        let line = text
            .find(id)
            .map_or(0, |at| text[..at].matches('\n').count() + 1);
        tracing::warn!(
            "{}:{line}: YARA rule name of {} bytes is reported cut to {MAX_SIGNATURE_NAME_LEN} \
             ({count} rule name(s) of this file cut); shorten the names in the file",
            path.display(),
            id.len(),
        );
    }
}

/// A scanner borrowing the rules it owns a reference to.
type BorrowedScanner<'rules> = yara_x::Scanner<'rules>;

self_cell::self_cell!(
    /// One thread's reusable scanner, with the rules it borrows.
    struct ThreadScanner {
        owner: Arc<yara_x::Rules>,
        #[not_covariant]
        dependent: BorrowedScanner,
    }
);

thread_local! {
    /// The scanner this thread used last (see the module docs).
    static THREAD_SCANNER: RefCell<Option<ThreadScanner>> = const { RefCell::new(None) };

    /// The buffer this thread's last scan used, emptied (see the module
    /// docs).
    static SPARE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer able to hold `reserve` bytes: this thread's spare one
/// when it is large enough, else a new one (the spare then stays for a
/// later, smaller file: growing it would copy it).
fn take_buffer(reserve: usize) -> Vec<u8> {
    SPARE_BUFFER.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.capacity() >= reserve && spare.capacity() > 0 {
            std::mem::take(&mut *spare)
        } else {
            Vec::with_capacity(reserve)
        }
    })
}

/// Keeps `buf` as this thread's spare when it is the largest seen, up to
/// [`SPARE_BUFFER_MAX`].
fn give_back_buffer(mut buf: Vec<u8>) {
    if buf.capacity() > SPARE_BUFFER_MAX {
        return;
    }
    buf.clear();
    SPARE_BUFFER.with(|spare| {
        let mut spare = spare.borrow_mut();
        if buf.capacity() > spare.capacity() {
            *spare = buf;
        }
    });
}

/// Turns a yara-x compile error into one naming the file, line and column.
fn compile_error(path: &Path, text: &[u8], err: &yara_x::errors::CompileError) -> YaraLoadError {
    let (offset, label) = err
        .labels()
        .next()
        .map(|l| (l.span().start(), l.text().to_owned()))
        .unwrap_or((0, String::new()));
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = offset - line_start + 1;
    let title = err.title();
    let message = if label.is_empty() || label == title {
        title.to_owned()
    } else {
        format!("{title}: {label}")
    };
    YaraLoadError::Compile {
        path: path.to_path_buf(),
        line,
        column,
        message,
    }
}

impl Engine for YaraEngine {
    fn name(&self) -> &'static str {
        YARA_ENGINE_NAME
    }

    fn start(&self, size: u64) -> Box<dyn EngineScan> {
        let state = if self.rule_count == 0 {
            // Nothing can match: do not buffer at all.
            ScanState::NoRules
        } else if size > self.max_size {
            ScanState::TooLarge(size)
        } else {
            // `size <= max_size` here: the whole stated size, bounded.
            let reserve = usize::try_from(size.min(self.max_size)).unwrap_or(usize::MAX);
            ScanState::Buffering(take_buffer(reserve))
        };
        Box::new(YaraScan {
            engine: self.clone(),
            state,
        })
    }

    fn scan_complete(&self, data: &[u8]) -> Result<Option<Detection>, EngineError> {
        if self.rule_count == 0 {
            return Ok(None);
        }
        let size = data.len() as u64;
        if size > self.max_size {
            return Err(EngineError::Refused {
                engine: YARA_ENGINE_NAME,
                reason: format!(
                    "file of {size} bytes exceeds the YARA scan limit of {} bytes",
                    self.max_size
                ),
            });
        }
        self.scan_bytes(data)
    }
}

enum ScanState {
    NoRules,
    Buffering(Vec<u8>),
    TooLarge(u64),
}

/// One file being scanned by a [`YaraEngine`]: buffers the content, evaluates
/// the rules at [`EngineScan::finish`].
pub struct YaraScan {
    engine: YaraEngine,
    state: ScanState,
}

impl YaraScan {
    fn too_large(&self, size: u64) -> EngineError {
        EngineError::Refused {
            engine: YARA_ENGINE_NAME,
            reason: format!(
                "file of {size} bytes exceeds the YARA scan limit of {} bytes",
                self.engine.max_size
            ),
        }
    }
}

impl EngineScan for YaraScan {
    fn update(&mut self, chunk: &[u8]) -> Result<Option<Detection>, EngineError> {
        match &mut self.state {
            ScanState::NoRules => Ok(None),
            ScanState::TooLarge(size) => {
                let size = *size;
                Err(self.too_large(size))
            }
            ScanState::Buffering(buf) => {
                let total = buf.len() as u64 + chunk.len() as u64;
                if total > self.engine.max_size {
                    self.state = ScanState::TooLarge(total);
                    return Err(self.too_large(total));
                }
                buf.extend_from_slice(chunk);
                Ok(None)
            }
        }
    }

    fn finish(self: Box<Self>) -> Result<Option<Detection>, EngineError> {
        match &self.state {
            ScanState::NoRules => Ok(None),
            ScanState::TooLarge(size) => Err(self.too_large(*size)),
            ScanState::Buffering(buf) => self.engine.scan_bytes(buf),
        }
    }
}

impl Drop for YaraScan {
    /// Finished or abandoned (another engine found something first), the
    /// buffer goes back to the thread for the next scan.
    fn drop(&mut self) {
        if let ScanState::Buffering(buf) = &mut self.state {
            give_back_buffer(std::mem::take(buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_rule_file_extensions() {
        assert!(is_yara_rule_file(Path::new("a/b.yar")));
        assert!(is_yara_rule_file(Path::new("b.YARA")));
        assert!(!is_yara_rule_file(Path::new("b.hdb")));
        assert!(!is_yara_rule_file(Path::new("yar")));
    }

    #[test]
    fn compile_error_names_line_and_column() {
        let src = "rule ok { condition: true }\n\nrule bad {\n  condition: tru e\n}\n";
        let err = YaraEngine::from_sources([("rules/bad.yar", src)]).unwrap_err();
        assert_eq!(err.path(), Path::new("rules/bad.yar"));
        assert_eq!(err.line(), Some(4), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("rules/bad.yar:4:"), "{text}");
    }

    #[test]
    fn alternating_rule_sets_on_one_thread_use_the_right_rules() {
        let a =
            YaraEngine::from_source(r#"rule A { strings: $a = "alpha" condition: $a }"#).unwrap();
        let b =
            YaraEngine::from_source(r#"rule B { strings: $b = "beta" condition: $b }"#).unwrap();
        for _ in 0..3 {
            let hit = |e: &YaraEngine, data: &[u8]| e.scan_bytes(data).unwrap().map(|d| d.threat);
            assert_eq!(hit(&a, b"alpha beta").as_deref(), Some("A"));
            assert_eq!(hit(&b, b"alpha beta").as_deref(), Some("B"));
            assert_eq!(hit(&a, b"beta"), None);
            assert_eq!(hit(&a.clone(), b"alpha").as_deref(), Some("A"));
        }
        // The thread's cached scanner keeps `b`'s rules alive only until a
        // scan with other rules replaces it.
        b.scan_bytes(b"x").unwrap();
        let weak = Arc::downgrade(&b.rules);
        drop(b);
        assert!(weak.upgrade().is_some());
        a.scan_bytes(b"x").unwrap();
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn long_rule_names_are_reported_cut() {
        let long = format!("R{}", "x".repeat(200 * 1024));
        let src = format!("rule {long} {{ strings: $a = \"marker\" condition: $a }}\n");
        let engine = YaraEngine::from_sources([("long.yar", src.as_str())]).unwrap();
        let d = engine.scan_bytes(b"a marker here").unwrap().unwrap();
        assert_eq!(d.threat.len(), MAX_SIGNATURE_NAME_LEN);
        assert!(d.threat.starts_with("Rxxx") && d.threat.ends_with(super::super::CUT_MARK));
    }

    fn spare_capacity() -> usize {
        SPARE_BUFFER.with(|s| s.borrow().capacity())
    }

    #[test]
    fn the_stated_size_is_reserved_once_and_the_buffer_reused() {
        // A fresh thread: its own spare buffer.
        std::thread::spawn(|| {
            let engine =
                YaraEngine::from_source(r#"rule M { strings: $a = "needle" condition: $a }"#)
                    .unwrap();
            let mut data = vec![b'.'; 300_000];
            data[250_000..250_006].copy_from_slice(b"needle");
            let run = |stated: u64| {
                let mut scan = engine.start(stated);
                for c in data.chunks(65_536) {
                    assert_eq!(scan.update(c).unwrap(), None);
                }
                scan.finish().unwrap().map(|d| d.threat)
            };
            assert_eq!(spare_capacity(), 0);
            assert_eq!(run(300_000).as_deref(), Some("M"));
            // Reserved for the stated size up front: never grown.
            let kept = spare_capacity();
            assert_eq!(kept, 300_000);
            let first = SPARE_BUFFER.with(|s| s.borrow().as_ptr());
            // The next file of that size or smaller reuses it.
            assert_eq!(run(300_000).as_deref(), Some("M"));
            assert_eq!(SPARE_BUFFER.with(|s| s.borrow().as_ptr()), first);
            // A wrong stated size, either way, still scans the real content.
            assert_eq!(run(10).as_deref(), Some("M"));
            assert_eq!(run(299_999).as_deref(), Some("M"));
            assert_eq!(run(1 << 20).as_deref(), Some("M"));
            assert!(spare_capacity() <= SPARE_BUFFER_MAX);
            // A stated size beyond the limit is refused at once, nothing
            // reserved.
            let small = engine.clone().with_max_size(1000);
            let mut scan = small.start(u64::MAX);
            assert!(matches!(
                scan.update(b"x"),
                Err(EngineError::Refused { .. })
            ));
            // Complete content is scanned in place, limit included.
            assert_eq!(
                engine
                    .scan_complete(&data)
                    .unwrap()
                    .map(|d| d.threat)
                    .as_deref(),
                Some("M")
            );
            assert!(matches!(
                small.scan_complete(&data),
                Err(EngineError::Refused { .. })
            ));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn spare_buffers_are_bounded() {
        std::thread::spawn(|| {
            give_back_buffer(Vec::with_capacity(SPARE_BUFFER_MAX + 1));
            assert_eq!(spare_capacity(), 0, "too large to keep");
            give_back_buffer(Vec::with_capacity(1000));
            give_back_buffer(Vec::with_capacity(10));
            assert_eq!(spare_capacity(), 1000, "the larger one stays");
            assert_eq!(take_buffer(2000).capacity(), 2000);
            assert_eq!(spare_capacity(), 1000, "too small, left in place");
            assert_eq!(take_buffer(5).capacity(), 1000);
            assert_eq!(spare_capacity(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn no_rules_never_buffers_and_never_matches() {
        let engine = YaraEngine::from_sources(std::iter::empty()).unwrap();
        assert_eq!(engine.rule_count(), 0);
        let mut scan = engine.start(10);
        assert_eq!(scan.update(b"anything").unwrap(), None);
        assert_eq!(scan.finish().unwrap(), None);
    }
}
