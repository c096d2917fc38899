//! `floor-roundtrip --watch PATH --connect SOCKET [--max-bytes N]
//! [--ready-file FILE]`: a fanotify responder that, per open, sends the
//! file's first N bytes (64 KiB by default, 0 = all of it) to `floor-echo`
//! and waits for its 1-byte answer before it allows (see `src/floor.rs`).

#![forbid(unsafe_code)]

use thinagent_bench_floor::{DEFAULT_MAX_BYTES, RoundTrip, run_responder};

const USAGE: &str = "usage: floor-roundtrip --watch PATH --connect SOCKET [--max-bytes N (0 = whole file)] [--ready-file FILE]";

fn main() -> std::process::ExitCode {
    run_responder(
        "floor-roundtrip",
        USAGE,
        &["watch", "connect", "max-bytes", "ready-file"],
        |o| {
            let socket = o
                .connect
                .as_deref()
                .ok_or_else(|| std::io::Error::other(USAGE))?;
            let max = match o.max_bytes {
                None => Some(DEFAULT_MAX_BYTES),
                Some(0) => None,
                Some(n) => Some(n),
            };
            let rt = RoundTrip::connect(socket, max)
                .map_err(|e| std::io::Error::other(format!("connect {}: {e}", socket.display())))?;
            Ok(Box::new(rt))
        },
    )
}
