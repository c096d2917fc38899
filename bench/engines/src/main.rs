//! Raw engine throughput: the floor of `thinagent-scanner`'s cold scans
//! (`bench/engines_vs_pipeline.sh`).
//!
//! ```text
//! thinagent-bench-engines --sigs DIR [--threads T] [--runs R] [--min-ms MS] [--modes "M ..."] PATH...
//! ```
//!
//! Loads the signature directory the scanner is given (`*.hdb`, `*.hsb`:
//! `hash:size:name[:flevel...]`; `*.yar`, `*.yara`: compiled by yara-x, one
//! namespace per file, as the scanner does), reads every file under the
//! PATHs into memory (not timed), then, per mode, runs the engines over all
//! of them with T threads (default: the CPUs) taking files from one queue,
//! R times (default 3), and prints one line per mode:
//!
//! `mode=M threads=T files=N bytes=B runs=R passes=P ns=MEDIAN ns_runs=A,B,C
//! detected=D md5=X sha1=Y sha256=Z blake3=W`
//!
//! `ns` is the median time of one pass over the set: each run goes P
//! times over it (P chosen after a first pass so that a run lasts at least
//! `--min-ms`, 300 ms by default: the set is scanned in milliseconds, and a
//! run that short would measure one preemption more than the engines), from
//! the first thread's start to the last one's end, divided by P.
//! `detected` and `md5`... count the files found and the digests computed
//! in one pass. Modes:
//!
//! - `yara`: yara-x alone, each file scanned in place (the same crate
//!   version and features as the scanner, one `Scanner` per thread, reused,
//!   `fast_scan(true)` and the scanner's 30 s timeout).
//! - `digests`: the hash digests the signatures require and nothing else:
//!   a file gets an MD5 (SHA-1, SHA-256) only when some signature of that
//!   kind has the file's size or size `*`, as the scanner's hash engine
//!   plans them.
//! - `engines`: `yara` + `digests`: the raw engines the loaded signatures
//!   actually require.
//! - `blake3`: BLAKE3 of every file alone (the scanner's content-cache key).
//! - `engines+blake3`: `engines` plus that key: the engine work of a cold
//!   scan in the scanner, without its protocol, copies and scheduling.
//! - `socket`, `socket+engines`, ...: the same after the bytes crossed a
//!   Unix stream socket (one sender thread per engine thread, writes of at
//!   most the protocol's 65,480-byte chunk, the receiver reads each file
//!   into one reused buffer): what moving the content from guest to scanner
//!   costs at the least, with and without the engines.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

const USAGE: &str = "usage: thinagent-bench-engines --sigs DIR [--threads T] [--runs R] [--min-ms MS] \
                     [--modes \"yara digests engines blake3 socket, or +-joined: engines+blake3 ...\"] PATH...";

/// The scanner's default YARA scan budget (`DEFAULT_YARA_TIMEOUT`).
const YARA_TIMEOUT: Duration = Duration::from_secs(30);

/// Most passes over the set one run makes (see `--min-ms`).
const MAX_PASSES: usize = 10_000;

/// Which file sizes have signatures of one digest kind (the scanner's
/// `SizeIndex`).
#[derive(Debug, Default)]
struct SizeIndex {
    sizes: HashSet<u64>,
    any: bool,
}

impl SizeIndex {
    fn wants(&self, size: u64) -> bool {
        self.any || self.sizes.contains(&size)
    }
}

/// Hash signatures by digest kind: digest -> name, plus the size index.
#[derive(Debug, Default)]
struct Hashes {
    md5: HashMap<Vec<u8>, (Option<u64>, String)>,
    sha1: HashMap<Vec<u8>, (Option<u64>, String)>,
    sha256: HashMap<Vec<u8>, (Option<u64>, String)>,
    md5_sizes: SizeIndex,
    sha1_sizes: SizeIndex,
    sha256_sizes: SizeIndex,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Hashes {
    /// Adds the lines of one `.hdb`/`.hsb` file (the kind of each line is
    /// the length of its hash, as the scanner reads them).
    fn add(&mut self, text: &str, origin: &Path) -> Result<usize, String> {
        let mut n = 0;
        for (i, raw) in text.trim_start_matches('\u{feff}').lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: &str| format!("{}:{}: {why}", origin.display(), i + 1);
            let mut fields = line.split(':');
            let (Some(hash), Some(size), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(err("need hash:size:name"));
            };
            let digest = unhex(hash).ok_or_else(|| err("hash is not hex"))?;
            let size = match size {
                "*" => None,
                s => Some(s.parse::<u64>().map_err(|_| err("bad size"))?),
            };
            let (map, index) = match digest.len() {
                16 => (&mut self.md5, &mut self.md5_sizes),
                20 => (&mut self.sha1, &mut self.sha1_sizes),
                32 => (&mut self.sha256, &mut self.sha256_sizes),
                _ => return Err(err("hash is neither MD5, SHA-1 nor SHA-256")),
            };
            match size {
                None => index.any = true,
                Some(s) => {
                    index.sizes.insert(s);
                }
            }
            map.insert(digest, (size, name.to_string()));
            n += 1;
        }
        Ok(n)
    }

    fn lookup(map: &HashMap<Vec<u8>, (Option<u64>, String)>, digest: &[u8], size: u64) -> bool {
        map.get(digest)
            .is_some_and(|(s, _)| s.is_none_or(|s| s == size))
    }
}

/// The signature directory, loaded.
struct Signatures {
    hashes: Hashes,
    hash_lines: usize,
    rules: Option<yara_x::Rules>,
    rule_count: usize,
}

fn load_signatures(dir: &Path) -> Result<Signatures, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut hashes = Hashes::default();
    let mut hash_lines = 0;
    let mut compiler = yara_x::Compiler::new();
    let mut yara_files = 0;
    for path in &paths {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "hdb" | "hsb" => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                hash_lines += hashes.add(&text, path)?;
            }
            "yar" | "yara" => {
                let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let namespace = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "default".into());
                compiler.new_namespace(&namespace);
                compiler
                    .add_source(yara_x::SourceCode::from(text.as_slice()))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                yara_files += 1;
            }
            _ => {}
        }
    }
    let (rules, rule_count) = if yara_files > 0 {
        let rules = compiler.build();
        let n = rules.iter().len();
        (Some(rules), n)
    } else {
        (None, 0)
    };
    Ok(Signatures {
        hashes,
        hash_lines,
        rules,
        rule_count,
    })
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect_files(&e, out)?;
        }
    } else if meta.is_file() {
        out.push(path.to_path_buf());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    yara: bool,
    digests: bool,
    blake3: bool,
    /// The bytes cross a Unix socket first (see [`run_socket`]).
    socket: bool,
}

/// A mode: `+`-joined parts among `yara`, `digests`, `engines` (= both),
/// `blake3`, `socket`.
fn mode(name: &str) -> Result<Mode, String> {
    let mut m = Mode {
        yara: false,
        digests: false,
        blake3: false,
        socket: false,
    };
    for part in name.split('+') {
        match part {
            "yara" => m.yara = true,
            "digests" => m.digests = true,
            "engines" => (m.yara, m.digests) = (true, true),
            "blake3" => m.blake3 = true,
            "socket" => m.socket = true,
            _ => return Err(format!("unknown mode {name:?}\n{USAGE}")),
        }
    }
    Ok(m)
}

#[derive(Default)]
struct Counts {
    detected: AtomicU64,
    md5: AtomicU64,
    sha1: AtomicU64,
    sha256: AtomicU64,
    blake3: AtomicU64,
    errors: AtomicU64,
}

/// One file through the engines of `mode`; returns whether anything matched.
fn scan_one(
    data: &[u8],
    m: Mode,
    sigs: &Signatures,
    scanner: Option<&mut yara_x::Scanner<'_>>,
    c: &Counts,
) -> bool {
    let size = data.len() as u64;
    let mut found = false;
    if m.digests {
        let h = &sigs.hashes;
        if h.md5_sizes.wants(size) {
            c.md5.fetch_add(1, Ordering::Relaxed);
            found |= Hashes::lookup(&h.md5, &Md5::digest(data), size);
        }
        if h.sha1_sizes.wants(size) {
            c.sha1.fetch_add(1, Ordering::Relaxed);
            found |= Hashes::lookup(&h.sha1, &Sha1::digest(data), size);
        }
        if h.sha256_sizes.wants(size) {
            c.sha256.fetch_add(1, Ordering::Relaxed);
            found |= Hashes::lookup(&h.sha256, &Sha256::digest(data), size);
        }
    }
    if let Some(scanner) = scanner {
        match scanner.scan(data) {
            Ok(results) => found |= results.matching_rules().next().is_some(),
            Err(_) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if m.blake3 {
        c.blake3.fetch_add(1, Ordering::Relaxed);
        std::hint::black_box(blake3::hash(data));
    }
    if found {
        c.detected.fetch_add(1, Ordering::Relaxed);
    }
    found
}

/// One timed run of `mode` over `files`, `passes` times over, with
/// `threads` threads taking (pass, file) items from one queue: from the
/// first thread's start to the last one's end (each thread reads the clock
/// itself, so a preempted main thread cannot shorten the span).
fn run(
    files: &[Vec<u8>],
    passes: usize,
    m: Mode,
    sigs: &Signatures,
    threads: usize,
    c: &Counts,
) -> Duration {
    let items = files.len() * passes;
    let next = AtomicUsize::new(0);
    let ready = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (ready, next) = (&ready, &next);
                s.spawn(move || {
                    // The scanner is built before the clock starts, as the
                    // scanner service keeps one per thread.
                    let mut scanner = sigs.rules.as_ref().filter(|_| m.yara).map(|rules| {
                        let mut sc = yara_x::Scanner::new(rules);
                        sc.fast_scan(true);
                        sc.set_timeout(YARA_TIMEOUT);
                        sc
                    });
                    ready.wait();
                    let start = Instant::now();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items {
                            break;
                        }
                        let data = &files[i % files.len()];
                        scan_one(data, m, sigs, scanner.as_mut(), c);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("engine thread panicked"))
            .collect()
    });
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    last - first
}

/// Content bytes per message in [`run_socket`]: the protocol's
/// `MAX_READ_CHUNK` (docs/protocol.md §3).
const SOCKET_CHUNK: usize = 65_480;

/// Like [`run`], but each file first crosses a Unix stream socket, as
/// content crosses the guest-to-scanner socket: per engine thread one
/// sender thread takes files from the queue and writes each (8-byte length,
/// then the bytes in writes of at most [`SOCKET_CHUNK`]); the engine thread
/// reads it into its one reused buffer and runs the engines of `m` on it.
/// `2 x threads` threads; the span runs from the first start to the last end.
fn run_socket(
    files: &[Vec<u8>],
    passes: usize,
    m: Mode,
    sigs: &Signatures,
    threads: usize,
    c: &Counts,
) -> Duration {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let items = files.len() * passes;
    let next = AtomicUsize::new(0);
    let ready = Barrier::new(2 * threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for _ in 0..threads {
            let (mut tx, mut rx) = UnixStream::pair().expect("socketpair");
            let (ready, next) = (&ready, &next);
            handles.push(s.spawn(move || {
                ready.wait();
                let start = Instant::now();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items {
                        break;
                    }
                    let data = &files[i % files.len()];
                    tx.write_all(&(data.len() as u64).to_le_bytes())
                        .expect("socket write");
                    for chunk in data.chunks(SOCKET_CHUNK) {
                        tx.write_all(chunk).expect("socket write");
                    }
                }
                drop(tx);
                (start, Instant::now())
            }));
            handles.push(s.spawn(move || {
                let mut scanner = sigs.rules.as_ref().filter(|_| m.yara).map(|rules| {
                    let mut sc = yara_x::Scanner::new(rules);
                    sc.fast_scan(true);
                    sc.set_timeout(YARA_TIMEOUT);
                    sc
                });
                let mut buf: Vec<u8> = Vec::new();
                ready.wait();
                let start = Instant::now();
                let mut len = [0u8; 8];
                while rx.read_exact(&mut len).is_ok() {
                    let n = usize::try_from(u64::from_le_bytes(len)).expect("length");
                    buf.resize(n, 0);
                    rx.read_exact(&mut buf).expect("socket read");
                    scan_one(&buf, m, sigs, scanner.as_mut(), c);
                }
                (start, Instant::now())
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("socket thread panicked"))
            .collect()
    });
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    last - first
}

fn main_inner(args: &[String]) -> Result<(), String> {
    let mut sigs_dir = None;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs = 3usize;
    let mut min_run = Duration::from_millis(300);
    let mut modes = vec![
        "yara".to_string(),
        "engines".into(),
        "engines+blake3".into(),
    ];
    let mut paths = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--sigs" => sigs_dir = Some(PathBuf::from(value()?)),
            "--threads" => {
                threads = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--threads expects a positive number")?;
            }
            "--min-ms" => {
                min_run = Duration::from_millis(
                    value()?
                        .parse()
                        .map_err(|_| "--min-ms expects a number of milliseconds")?,
                );
            }
            "--runs" => {
                runs = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--runs expects a positive number")?;
            }
            "--modes" => modes = value()?.split_whitespace().map(String::from).collect(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            p => paths.push(PathBuf::from(p)),
        }
    }
    let sigs_dir = sigs_dir.ok_or(USAGE)?;
    if paths.is_empty() {
        return Err(USAGE.into());
    }
    let parsed: Vec<(String, Mode)> = modes
        .iter()
        .map(|n| mode(n).map(|m| (n.clone(), m)))
        .collect::<Result<_, _>>()?;
    let sigs = load_signatures(&sigs_dir)?;
    eprintln!(
        "signatures: {} hash lines (sizes: md5 {}{}, sha1 {}{}, sha256 {}{}), {} YARA rules",
        sigs.hash_lines,
        sigs.hashes.md5_sizes.sizes.len(),
        if sigs.hashes.md5_sizes.any {
            " + *"
        } else {
            ""
        },
        sigs.hashes.sha1_sizes.sizes.len(),
        if sigs.hashes.sha1_sizes.any {
            " + *"
        } else {
            ""
        },
        sigs.hashes.sha256_sizes.sizes.len(),
        if sigs.hashes.sha256_sizes.any {
            " + *"
        } else {
            ""
        },
        sigs.rule_count
    );
    let mut names = Vec::new();
    for p in &paths {
        collect_files(p, &mut names)?;
    }
    let files: Vec<Vec<u8>> = names
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect::<Result<_, _>>()?;
    let bytes: u64 = files.iter().map(|f| f.len() as u64).sum();
    for (name, m) in parsed {
        // One pass to count (and to size the runs): a run repeats the whole
        // set until it lasts at least --min-ms, so a run of a few
        // milliseconds is not at the mercy of one preemption.
        let last = Counts::default();
        let runner = if m.socket { run_socket } else { run };
        let once = runner(&files, 1, m, &sigs, threads, &last);
        let passes = usize::try_from(min_run.as_nanos().div_ceil(once.as_nanos().max(1)))
            .unwrap_or(MAX_PASSES)
            .clamp(1, MAX_PASSES);
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = runner(&files, passes, m, &sigs, threads, &Counts::default());
            times.push(t / u32::try_from(passes).unwrap_or(u32::MAX));
        }
        if last.errors.load(Ordering::Relaxed) > 0 {
            return Err(format!(
                "mode {name}: {} YARA scans failed",
                last.errors.load(Ordering::Relaxed)
            ));
        }
        let mut sorted = times.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        let list: Vec<String> = times.iter().map(|t| t.as_nanos().to_string()).collect();
        println!(
            "mode={name} threads={threads} files={} bytes={bytes} runs={runs} passes={passes} ns={} ns_runs={} \
             detected={} md5={} sha1={} sha256={} blake3={}",
            files.len(),
            median.as_nanos(),
            list.join(","),
            last.detected.load(Ordering::Relaxed),
            last.md5.load(Ordering::Relaxed),
            last.sha1.load(Ordering::Relaxed),
            last.sha256.load(Ordering::Relaxed),
            last.blake3.load(Ordering::Relaxed),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match main_inner(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thinagent-bench-engines: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_lines_index_sizes_by_kind() {
        let mut h = Hashes::default();
        let text = "\u{feff}# comment\n\
                    44d88612fea8a8f36de82e1278abb02f:68:Eicar\n\
                    3395856ce81f2b7382dee72602f798b642f14140:*:Sha1Any:73\n\
                    275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:68:Sha256\n";
        assert_eq!(h.add(text, Path::new("t.hdb")), Ok(3));
        assert!(h.md5_sizes.wants(68) && !h.md5_sizes.wants(69));
        assert!(h.sha1_sizes.wants(12345));
        assert!(h.sha256_sizes.wants(68) && !h.sha256_sizes.wants(1));
        let eicar = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
        assert!(Hashes::lookup(&h.md5, &Md5::digest(eicar), 68));
        assert!(!Hashes::lookup(&h.md5, &Md5::digest(eicar), 67));
        assert!(h.add("zz:1:x\n", Path::new("t.hdb")).is_err());
        assert!(h.add("00:1\n", Path::new("t.hdb")).is_err());
    }

    #[test]
    fn modes_compute_only_the_planned_digests() {
        let dir = std::env::temp_dir().join(format!("bench-engines-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("t.hdb"),
            "44d88612fea8a8f36de82e1278abb02f:68:Eicar\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("t.yar"),
            "rule Needle { strings: $a = \"needle\" condition: $a }\n",
        )
        .unwrap();
        let sigs = load_signatures(&dir).unwrap();
        assert_eq!(sigs.rule_count, 1);
        let eicar =
            br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*".to_vec();
        let files = vec![eicar, b"a needle in here".to_vec(), vec![0u8; 100]];
        let c = Counts::default();
        run(&files, 1, mode("engines+blake3").unwrap(), &sigs, 2, &c);
        assert_eq!(c.detected.load(Ordering::Relaxed), 2);
        assert_eq!(c.md5.load(Ordering::Relaxed), 1, "only the 68-byte file");
        assert_eq!(c.blake3.load(Ordering::Relaxed), 3);
        let c = Counts::default();
        run(&files, 1, mode("yara").unwrap(), &sigs, 1, &c);
        assert_eq!(c.detected.load(Ordering::Relaxed), 1);
        assert_eq!(c.md5.load(Ordering::Relaxed), 0);
        // Three passes: every file three times.
        let c = Counts::default();
        run(&files, 3, mode("engines").unwrap(), &sigs, 2, &c);
        assert_eq!(c.detected.load(Ordering::Relaxed), 6);
        assert_eq!(c.md5.load(Ordering::Relaxed), 3);
        // Through a socket: the same files arrive whole.
        let c = Counts::default();
        run_socket(&files, 2, mode("socket+engines").unwrap(), &sigs, 2, &c);
        assert_eq!(c.detected.load(Ordering::Relaxed), 4);
        assert_eq!(c.md5.load(Ordering::Relaxed), 2);
        assert!(mode("socket+yara+blake3").unwrap().socket);
        assert!(mode("yara+nonsense").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
