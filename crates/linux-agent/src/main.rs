//! `thinagent-linux-agent` binary.
fn main() {}
