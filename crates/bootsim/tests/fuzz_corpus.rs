//! The `analyze` fuzz target's seed corpus: every `.reg` fixture as written,
//! and the same machine as an offline hive built by the test hive writer, so
//! fuzzing starts from inputs that reach the model, the order and the
//! simulator rather than stopping at the readers' first check. This test keeps
//! the committed seeds current and proves each one loads.
//!
//! Regenerate after changing a fixture or the hive writer:
//! `THINAGENT_WRITE_CORPUS=1 cargo test -p thinagent-bootsim --test fuzz_corpus`

mod support;

use std::path::{Path, PathBuf};

use support::hive_writer::{HiveOptions, write_hive};
use thinagent_bootsim::model::Model;
use thinagent_bootsim::registry::{self, reg_file::parse_reg_bytes};

fn fixtures() -> Vec<PathBuf> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [
        crate_dir.join("tests/fixtures/registry"),
        crate_dir.join("../../tests/fixtures"),
    ] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "reg"))
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

#[test]
fn committed_analyze_seeds_are_current_and_load() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/analyze");
    let write = std::env::var_os("THINAGENT_WRITE_CORPUS").is_some();
    let paths = fixtures();
    assert!(paths.len() >= 4, "fixtures found: {paths:?}");
    for path in paths {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let reg = std::fs::read(&path).unwrap();
        let hive = write_hive(
            &parse_reg_bytes(&reg).unwrap().system_tree(),
            &HiveOptions::default(),
        );
        for (name, seed) in [(format!("reg-{stem}"), reg), (format!("hive-{stem}"), hive)] {
            let loaded = registry::from_bytes(&seed)
                .unwrap_or_else(|e| panic!("{name}: the seed must load: {e}"));
            Model::from_control_set(&loaded.control_set)
                .unwrap_or_else(|e| panic!("{name}: the seed must model: {e}"));
            let file = corpus.join(&name);
            if write {
                std::fs::write(&file, &seed).unwrap();
            }
            let committed = std::fs::read(&file)
                .unwrap_or_else(|e| panic!("{}: {e}; regenerate (see header)", file.display()));
            assert!(
                committed == seed,
                "{name}: stale seed; regenerate (see header)"
            );
        }
    }
}
