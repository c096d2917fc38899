//! `floor-echo --listen SOCKET`: answers one byte to every length-prefixed
//! message of `floor-roundtrip` (see `src/floor.rs`). Prints
//! `messages=N` on SIGTERM or SIGINT.

#![forbid(unsafe_code)]

use std::os::unix::net::UnixListener;
use std::process::ExitCode;

use thinagent_bench_floor::{Options, echo, termination_fd};

const USAGE: &str = "usage: floor-echo --listen SOCKET";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = (|| -> Result<u64, String> {
        let opts = Options::parse(&args, &["listen"]).map_err(|e| format!("{e}\n{USAGE}"))?;
        let path = opts.listen.ok_or_else(|| USAGE.to_string())?;
        let stop = termination_fd().map_err(|e| format!("signals: {e}"))?;
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
        echo(&listener, &stop).map_err(|e| e.to_string())
    })();
    match result {
        Ok(n) => {
            println!("messages={n}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("floor-echo: {e}");
            ExitCode::from(2)
        }
    }
}
