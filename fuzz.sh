#!/usr/bin/env bash
# Runs every cargo-fuzz target of every crate that has one (crates/*/fuzz) for
# SECONDS seconds each (default 60); exits non-zero if any target finds a crash.
#
#   ./fuzz.sh 60
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Committed corpora are read, never written: new inputs go to a scratch
# directory. Crash inputs land in crates/<crate>/fuzz/artifacts/<target>/.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for fuzz_dir in "$root"/crates/*/fuzz; do
    crate="$(basename "$(dirname "$fuzz_dir")")"
    cd "$fuzz_dir/.."
    for target in $(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir"); do
        mkdir -p "$scratch/$crate/$target" "$fuzz_dir/corpus/$target"
        echo "== fuzzing $crate/$target for ${seconds}s"
        cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" \
            "$scratch/$crate/$target" "$fuzz_dir/corpus/$target" \
            -- -max_total_time="$seconds"
    done
done
echo "== no crashes"
