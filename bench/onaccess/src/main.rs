//! The on-access benchmark's workload (`bench/onaccess_vs_clamonacc.sh`).
//!
//! One process per pass, single-threaded, so each pass measures the latency
//! that an on-access scanner adds to every open of a sequential reader:
//!
//! - `populate ROOT --files N [--headers H] [--units U]` writes the tree once
//!   (before any agent starts): `tree/dNNN/fNNNNN.dat` (N files of 512-4096
//!   random bytes, 100 per directory), `include/hNNN.h` (H text headers,
//!   1-8 KiB), `src/uNNNN.c` (U small sources) and `workload.txt` (the counts).
//! - `read ROOT --pass NAME`: stat-free open + read-to-end + close of every
//!   file of `tree/`, in name order.
//! - `compile ROOT --pass NAME`: what a compiler does with its headers: for
//!   each source, open and read it, then for each of its 40 includes stat the
//!   header in a first include directory where it is missing (ENOENT), then
//!   stat, open, read and close it in `include/` (the same headers over and
//!   over, as every translation unit of a project includes them).
//! - `probe PATH`: open and read one file; exit 0 allowed, 1 denied
//!   (EACCES/EPERM at open or read), 2 any other error.
//! - `populate-sized DIR --files N --size BYTES [--seed S]` (for
//!   `bench/cold_open.sh`): N files of exactly BYTES random bytes,
//!   `DIR/dNNN/fNNNNN.bin` (100 per directory), and `DIR/sized.txt`.
//! - `coldread DIR --pass NAME`: open + read to the end + close of every
//!   file `populate-sized` wrote, in name order, each open **timed on its
//!   own** (from just before `open` to just after `close`). Run once on
//!   fresh files it measures cold opens; again, warm ones.
//!
//! A pass prints one line of `key=value` fields on stdout:
//! `pass=NAME kind=read opens=N stats=S bytes=B ns=T errors=E`, where `ns` is
//! the wall time of the pass (the file list is built before the clock
//! starts). `coldread` adds the distribution of the per-open times:
//! `p50_ns`, `p90_ns`, `p99_ns`, `min_ns`, `max_ns`, `mean_ns` (`ns` is then
//! the sum of the per-open times). A failed open or read is counted in
//! `errors` (the first one is also printed on stderr) and the exit status is
//! then 1.

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Files per directory of `tree/`.
const FILES_PER_DIR: usize = 100;
/// Includes per translation unit in the compile pass.
const INCLUDES_PER_UNIT: usize = 40;
/// Name of the file describing a populated tree.
const MANIFEST: &str = "workload.txt";
/// Name of the file describing a `populate-sized` directory.
const SIZED_MANIFEST: &str = "sized.txt";

const USAGE: &str = "usage:
  thinagent-onaccess-workload populate ROOT --files N [--headers H] [--units U] [--seed S]
  thinagent-onaccess-workload read ROOT --pass NAME
  thinagent-onaccess-workload compile ROOT --pass NAME
  thinagent-onaccess-workload probe PATH
  thinagent-onaccess-workload populate-sized DIR --files N --size BYTES [--seed S]
  thinagent-onaccess-workload coldread DIR --pass NAME";

/// Counts of a populated tree, as written to `workload.txt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    files: usize,
    headers: usize,
    units: usize,
    seed: u64,
}

impl Shape {
    fn render(&self) -> String {
        format!(
            "files={} headers={} units={} seed={}\n",
            self.files, self.headers, self.units, self.seed
        )
    }

    fn parse(text: &str) -> Result<Shape, String> {
        let mut shape = Shape {
            files: 0,
            headers: 0,
            units: 0,
            seed: 0,
        };
        for field in text.split_whitespace() {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("bad field {field:?}"))?;
            let n: u64 = value
                .parse()
                .map_err(|_| format!("bad number in {field:?}"))?;
            match key {
                "files" => shape.files = n as usize,
                "headers" => shape.headers = n as usize,
                "units" => shape.units = n as usize,
                "seed" => shape.seed = n,
                _ => return Err(format!("unknown field {field:?}")),
            }
        }
        if shape.files == 0 || shape.headers == 0 || shape.units == 0 {
            return Err("files, headers and units must all be > 0".into());
        }
        Ok(shape)
    }

    fn load(root: &Path) -> Result<Shape, String> {
        let path = root.join(MANIFEST);
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e} (run `populate` first)", path.display()))?;
        Shape::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn tree_file(root: &Path, i: usize) -> PathBuf {
    root.join(format!("tree/d{:03}/f{:05}.dat", i / FILES_PER_DIR, i))
}

fn header_name(h: usize) -> String {
    format!("h{h:03}.h")
}

fn unit_file(root: &Path, u: usize) -> PathBuf {
    root.join(format!("src/u{u:04}.c"))
}

/// The headers unit `u` includes: deterministic, overlapping between units.
fn includes_of(u: usize, headers: usize) -> impl Iterator<Item = usize> {
    (0..INCLUDES_PER_UNIT).map(move |k| (u * 7 + k * 13) % headers)
}

/// xorshift64*: deterministic content, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), String> {
    let mut f = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("write {}: {e}", path.display()))
}

fn populate(root: &Path, shape: Shape) -> Result<(), String> {
    let mk = |p: PathBuf| fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()));
    mk(root.join("include"))?;
    mk(root.join("src"))?;
    for d in 0..shape.files.div_ceil(FILES_PER_DIR) {
        mk(root.join(format!("tree/d{d:03}")))?;
    }
    let mut rng = Rng::new(shape.seed);
    let mut buf = Vec::with_capacity(8192);
    for i in 0..shape.files {
        let len = 512 + rng.below(4096 - 512 + 1) as usize;
        buf.clear();
        while buf.len() < len {
            buf.extend_from_slice(&rng.next().to_le_bytes());
        }
        buf.truncate(len);
        write_file(&tree_file(root, i), &buf)?;
    }
    for h in 0..shape.headers {
        let len = 1024 + rng.below(7 * 1024) as usize;
        let mut text = format!("#ifndef H{h:03}_H\n#define H{h:03}_H\n");
        let mut n = 0;
        while text.len() < len {
            text.push_str(&format!(
                "#define H{h:03}_CONST_{n} 0x{:016x}u\n",
                rng.next()
            ));
            n += 1;
        }
        text.push_str("#endif\n");
        write_file(&root.join("include").join(header_name(h)), text.as_bytes())?;
    }
    for u in 0..shape.units {
        let mut text = String::new();
        for h in includes_of(u, shape.headers) {
            text.push_str(&format!("#include \"{}\"\n", header_name(h)));
        }
        text.push_str(&format!(
            "int unit_{u}(void) {{ return {}; }}\n",
            rng.below(1000)
        ));
        write_file(&unit_file(root, u), text.as_bytes())?;
    }
    write_file(&root.join(MANIFEST), shape.render().as_bytes())
}

/// Counters of one pass.
#[derive(Default)]
struct Tally {
    opens: u64,
    stats: u64,
    bytes: u64,
    errors: u64,
}

impl Tally {
    fn fail(&mut self, what: &str, path: &Path, e: &io::Error) {
        if self.errors == 0 {
            eprintln!("{what} {}: {e}", path.display());
        }
        self.errors += 1;
    }

    /// open + read to the end + close, counted.
    fn read_whole(&mut self, path: &Path, buf: &mut [u8]) {
        self.opens += 1;
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) => return self.fail("open", path, &e),
        };
        loop {
            match f.read(buf) {
                Ok(0) => break,
                Ok(n) => self.bytes += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return self.fail("read", path, &e),
            }
        }
    }

    /// stat, counted; `expect_missing` makes ENOENT the expected outcome.
    fn stat(&mut self, path: &Path, expect_missing: bool) {
        self.stats += 1;
        match (fs::metadata(path), expect_missing) {
            (Ok(_), false) => {}
            (Err(e), true) if e.kind() == ErrorKind::NotFound => {}
            (Ok(_), true) => {
                self.fail("stat (expected missing)", path, &io::Error::other("exists"))
            }
            (Err(e), _) => self.fail("stat", path, &e),
        }
    }
}

fn run_pass(name: &str, kind: &str, root: &Path) -> Result<bool, String> {
    let shape = Shape::load(root)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut tally = Tally::default();
    let ns = match kind {
        "read" => {
            let files: Vec<PathBuf> = (0..shape.files).map(|i| tree_file(root, i)).collect();
            let t0 = Instant::now();
            for path in &files {
                tally.read_whole(path, &mut buf);
            }
            t0.elapsed().as_nanos()
        }
        "compile" => {
            let missing = root.join("sysinclude");
            let include = root.join("include");
            let plan: Vec<(PathBuf, Vec<(PathBuf, PathBuf)>)> = (0..shape.units)
                .map(|u| {
                    let incs = includes_of(u, shape.headers)
                        .map(|h| (missing.join(header_name(h)), include.join(header_name(h))))
                        .collect();
                    (unit_file(root, u), incs)
                })
                .collect();
            let t0 = Instant::now();
            for (unit, incs) in &plan {
                tally.stat(unit, false);
                tally.read_whole(unit, &mut buf);
                for (miss, hit) in incs {
                    tally.stat(miss, true);
                    tally.stat(hit, false);
                    tally.read_whole(hit, &mut buf);
                }
            }
            t0.elapsed().as_nanos()
        }
        _ => return Err(format!("unknown pass kind {kind:?}")),
    };
    println!(
        "pass={name} kind={kind} opens={} stats={} bytes={} ns={ns} errors={}",
        tally.opens, tally.stats, tally.bytes, tally.errors
    );
    Ok(tally.errors == 0)
}

/// Shape of a `populate-sized` directory, as written to `sized.txt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sized {
    files: usize,
    size: usize,
    seed: u64,
}

impl Sized {
    fn render(&self) -> String {
        format!(
            "files={} size={} seed={}\n",
            self.files, self.size, self.seed
        )
    }

    fn parse(text: &str) -> Result<Sized, String> {
        let mut s = Sized {
            files: 0,
            size: 0,
            seed: 0,
        };
        for field in text.split_whitespace() {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("bad field {field:?}"))?;
            let n: u64 = value
                .parse()
                .map_err(|_| format!("bad number in {field:?}"))?;
            match key {
                "files" => s.files = n as usize,
                "size" => s.size = n as usize,
                "seed" => s.seed = n,
                _ => return Err(format!("unknown field {field:?}")),
            }
        }
        if s.files == 0 {
            return Err("files must be > 0".into());
        }
        Ok(s)
    }
}

fn sized_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("d{:03}/f{:05}.bin", i / FILES_PER_DIR, i))
}

fn populate_sized(dir: &Path, shape: Sized) -> Result<(), String> {
    for d in 0..shape.files.div_ceil(FILES_PER_DIR) {
        let p = dir.join(format!("d{d:03}"));
        fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
    }
    let mut rng = Rng::new(shape.seed);
    let mut buf = Vec::with_capacity(shape.size + 8);
    for i in 0..shape.files {
        buf.clear();
        while buf.len() < shape.size {
            buf.extend_from_slice(&rng.next().to_le_bytes());
        }
        buf.truncate(shape.size);
        write_file(&sized_file(dir, i), &buf)?;
    }
    write_file(&dir.join(SIZED_MANIFEST), shape.render().as_bytes())
}

/// The `p`-th percentile (0..=100) of sorted `v`, nearest rank.
fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p as usize * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// `coldread`: every file of a `populate-sized` directory, each open timed.
fn run_coldread(name: &str, dir: &Path) -> Result<bool, String> {
    let path = dir.join(SIZED_MANIFEST);
    let text = fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {}: {e} (run `populate-sized` first)",
            path.display()
        )
    })?;
    let shape = Sized::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let files: Vec<PathBuf> = (0..shape.files).map(|i| sized_file(dir, i)).collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut tally = Tally::default();
    let mut times = Vec::with_capacity(files.len());
    for path in &files {
        let t0 = Instant::now();
        tally.read_whole(path, &mut buf);
        times.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let total: u64 = times.iter().sum();
    let mean = total / times.len().max(1) as u64;
    times.sort_unstable();
    println!(
        "pass={name} kind=coldread opens={} stats=0 bytes={} ns={total} errors={} \
         p50_ns={} p90_ns={} p99_ns={} min_ns={} max_ns={} mean_ns={mean}",
        tally.opens,
        tally.bytes,
        tally.errors,
        percentile(&times, 50),
        percentile(&times, 90),
        percentile(&times, 99),
        times.first().copied().unwrap_or(0),
        times.last().copied().unwrap_or(0),
    );
    Ok(tally.errors == 0)
}

fn probe(path: &Path) -> ExitCode {
    let denied = |e: &io::Error| {
        matches!(e.kind(), ErrorKind::PermissionDenied) || e.raw_os_error() == Some(1)
    };
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if denied(&e) => {
            println!("denied at open: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            println!("error at open: {e}");
            return ExitCode::from(2);
        }
    };
    let mut data = Vec::new();
    match f.read_to_end(&mut data) {
        Ok(n) => {
            println!("allowed ({n} bytes read)");
            ExitCode::SUCCESS
        }
        Err(e) if denied(&e) => {
            println!("denied at read: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            println!("error at read: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--key value` options after the positional argument.
fn options(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(key) = it.next() {
        let key = key
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {key:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        out.push((key.to_string(), value.clone()));
    }
    Ok(out)
}

fn number(key: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("--{key} expects a number, got {value:?}"))
}

fn main_inner(args: &[String]) -> Result<ExitCode, String> {
    let (cmd, target, rest) = match args {
        [cmd, target, rest @ ..] => (cmd.as_str(), Path::new(target), rest),
        _ => return Err(USAGE.into()),
    };
    let opts = options(rest)?;
    match cmd {
        "populate" => {
            let mut shape = Shape {
                files: 0,
                headers: 200,
                units: 0,
                seed: 6,
            };
            for (k, v) in &opts {
                match k.as_str() {
                    "files" => shape.files = number(k, v)? as usize,
                    "headers" => shape.headers = number(k, v)? as usize,
                    "units" => shape.units = number(k, v)? as usize,
                    "seed" => shape.seed = number(k, v)?,
                    _ => return Err(format!("populate: unknown option --{k}\n{USAGE}")),
                }
            }
            if shape.units == 0 {
                shape.units = (shape.files / 50).max(10);
            }
            if shape.files == 0 || shape.headers == 0 {
                return Err("populate: --files and --headers must be > 0".into());
            }
            populate(target, shape)?;
            print!("{}", shape.render());
            Ok(ExitCode::SUCCESS)
        }
        "read" | "compile" => {
            let mut name = cmd.to_string();
            for (k, v) in &opts {
                match k.as_str() {
                    "pass" => name = v.clone(),
                    _ => return Err(format!("{cmd}: unknown option --{k}\n{USAGE}")),
                }
            }
            Ok(if run_pass(&name, cmd, target)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        "probe" if opts.is_empty() => Ok(probe(target)),
        "populate-sized" => {
            let mut shape = Sized {
                files: 0,
                size: 0,
                seed: 16,
            };
            for (k, v) in &opts {
                match k.as_str() {
                    "files" => shape.files = number(k, v)? as usize,
                    "size" => shape.size = number(k, v)? as usize,
                    "seed" => shape.seed = number(k, v)?,
                    _ => return Err(format!("populate-sized: unknown option --{k}\n{USAGE}")),
                }
            }
            if shape.files == 0 {
                return Err("populate-sized: --files must be > 0".into());
            }
            populate_sized(target, shape)?;
            print!("{}", shape.render());
            Ok(ExitCode::SUCCESS)
        }
        "coldread" => {
            let mut name = cmd.to_string();
            for (k, v) in &opts {
                match k.as_str() {
                    "pass" => name = v.clone(),
                    _ => return Err(format!("{cmd}: unknown option --{k}\n{USAGE}")),
                }
            }
            Ok(if run_coldread(&name, target)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match main_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("thinagent-onaccess-workload: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_round_trips_and_rejects_zero_counts() {
        let s = Shape {
            files: 20_000,
            headers: 200,
            units: 400,
            seed: 6,
        };
        assert_eq!(Shape::parse(&s.render()), Ok(s));
        assert!(Shape::parse("files=0 headers=1 units=1 seed=1").is_err());
        assert!(Shape::parse("files=1 headers=1 units=1 colour=1").is_err());
    }

    #[test]
    fn populate_then_passes_count_every_open() {
        let root =
            std::env::temp_dir().join(format!("onaccess-workload-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let shape = Shape {
            files: 250,
            headers: 30,
            units: 12,
            seed: 1,
        };
        populate(&root, shape).unwrap();
        assert!(tree_file(&root, 249).is_file());
        assert!(!tree_file(&root, 250).exists());
        assert!(run_pass("t-read", "read", &root).unwrap());
        assert!(run_pass("t-compile", "compile", &root).unwrap());
        // A missing file is an error of the pass, not a silent skip.
        fs::remove_file(tree_file(&root, 7)).unwrap();
        assert!(!run_pass("t-read", "read", &root).unwrap());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&v, 100), 100);
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[1, 2, 3], 50), 2);
    }

    #[test]
    fn populate_sized_then_coldread_counts_every_open() {
        let dir = std::env::temp_dir().join(format!("onaccess-sized-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let shape = Sized {
            files: 150,
            size: 70_000,
            seed: 3,
        };
        populate_sized(&dir, shape).unwrap();
        assert_eq!(fs::metadata(sized_file(&dir, 149)).unwrap().len(), 70_000);
        assert!(!sized_file(&dir, 150).exists());
        assert_eq!(
            Sized::parse(&fs::read_to_string(dir.join(SIZED_MANIFEST)).unwrap()),
            Ok(shape)
        );
        assert!(run_coldread("t-cold", &dir).unwrap());
        fs::remove_file(sized_file(&dir, 9)).unwrap();
        assert!(!run_coldread("t-cold", &dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
