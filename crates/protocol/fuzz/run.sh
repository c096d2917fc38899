#!/usr/bin/env bash
# Runs every fuzz target of thinagent-protocol for SECONDS seconds each
# (default 60) and exits non-zero if any target finds a crash.
#
#   crates/protocol/fuzz/run.sh 60
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# The committed corpus is read, never written: new inputs go to a scratch
# directory. Crash inputs land in crates/protocol/fuzz/artifacts/<target>/.
set -euo pipefail

seconds="${1:-60}"
fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

cd "$fuzz_dir/.."
for target in $(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir"); do
    mkdir -p "$scratch/$target"
    echo "== fuzzing $target for ${seconds}s"
    cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" \
        "$scratch/$target" "$fuzz_dir/corpus/$target" \
        -- -max_total_time="$seconds"
done
echo "== no crashes"
