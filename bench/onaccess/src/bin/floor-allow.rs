//! `floor-allow --watch PATH [--ready-file FILE]`: a bare fanotify
//! responder that allows every open at once (see `src/floor.rs`).

#![forbid(unsafe_code)]

use thinagent_bench_floor::{AllowOnly, run_responder};

const USAGE: &str = "usage: floor-allow --watch PATH [--ready-file FILE]";

fn main() -> std::process::ExitCode {
    run_responder("floor-allow", USAGE, &["watch", "ready-file"], |_| {
        Ok(Box::new(AllowOnly))
    })
}
