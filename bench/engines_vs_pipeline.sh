#!/usr/bin/env bash
# Cold-scan throughput of the whole pipeline (thinagent-diag scan as guests
# -> thinagent-scanner, fresh for every run) against the raw engines on the
# same bytes in one process (thinagent-bench-engines: yara-x plus exactly the
# digests the loaded signatures require, and yara-x alone), on the same
# cores, in one run; then the scanner's memory per idle session. Prints a
# table and the goal checks of issue 16 (large files >= 80 %, small files
# >= 60 % of the raw engines). Not a test; not run in CI. No root needed.
# See bench/README.md ("Cold path at its floor") for the method.
#
#   bench/engines_vs_pipeline.sh [--quick] [--small N] [--large N] [--large-mb M]
#                                [--jobs J] [--threads T] [--runs R] [--sessions N]
#                                [--sets "small large"] [--dir DIR] [--no-build] [--nice N]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SMALL=2000
LARGE=3
LARGE_MB=100
JOBS=4
THREADS=$(nproc)
RUNS=3
SESSIONS=50
SETS="small large"
DIR=/tmp/thinagent-engines
SEED=5317
BUILD=1
NICE=0

usage() {
    cat <<EOF
usage: $0 [options]
  --small N        random small files, 4-64 KiB, plus 10 EICAR files (default $SMALL)
  --large N        large files (default $LARGE)
  --large-mb M     size of each large file, MiB (default $LARGE_MB)
  --quick          --small 500 --large 2 --large-mb 20 --runs 1 --sessions 20 (~1 min)
  --jobs J         thinagent-diag scan --jobs (concurrent sessions; default $JOBS)
  --threads T      threads of the raw engines (default $THREADS: the CPUs)
  --runs R         runs of each measurement, the table shows the median (default $RUNS)
  --sessions N     idle sessions for the memory measurement (default $SESSIONS; 0 = skip it)
  --sets "LIST"    small and/or large (default "$SETS")
  --dir DIR        work dir; the corpus is reused while its parameters are unchanged (default $DIR)
  --no-build       use the binaries already in target/release
  --nice N         niceness of every benchmark process after the builds (default $NICE;
                   negative values need root)
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --small) SMALL=${2:?--small needs a number}; shift 2 ;;
        --large) LARGE=${2:?--large needs a number}; shift 2 ;;
        --large-mb) LARGE_MB=${2:?--large-mb needs a number}; shift 2 ;;
        --quick) SMALL=500; LARGE=2; LARGE_MB=20; RUNS=1; SESSIONS=20; shift ;;
        --jobs) JOBS=${2:?--jobs needs a number}; shift 2 ;;
        --threads) THREADS=${2:?--threads needs a number}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --sessions) SESSIONS=${2:?--sessions needs a number}; shift 2 ;;
        --sets) SETS=${2:?--sets needs a list}; shift 2 ;;
        --dir) DIR=${2:?--dir needs a path}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --nice) NICE=${2:?--nice needs a number}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "engines_vs_pipeline: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
die() { echo "engines_vs_pipeline: $*" >&2; exit 2; }
log() { echo "== $*" >&2; }
for v in "$SMALL" "$LARGE" "$LARGE_MB" "$JOBS" "$THREADS" "$RUNS"; do
    case $v in ''|*[!0-9]*|0) die "counts must be positive numbers (got '$v')" ;; esac
done
case $SESSIONS in ''|*[!0-9]*) die "--sessions expects a number" ;; esac
case $NICE in -[0-9]|-1[0-9]|-20|[0-9]|1[0-9]) ;; *) die "--nice expects -20..19" ;; esac
for s in $SETS; do case $s in small|large) ;; *) die "unknown set $s (small, large)" ;; esac; done
command -v python3 >/dev/null || die "python3 not found"

# --- binaries ---
REL=$ROOT/target/release
ENGINES=$REL/thinagent-bench-engines
SCANNER=$REL/thinagent-scanner
DIAG=$REL/thinagent-diag
if [ "$BUILD" = 1 ]; then
    log "building the raw engines (standalone package bench/engines; yara-x takes minutes the first time)"
    cargo build --release --quiet --manifest-path "$HERE/engines/Cargo.toml" --target-dir "$ROOT/target" >&2
    log "building thinagent-scanner and thinagent-diag (release)"
    (cd "$ROOT" && cargo build --release -p thinagent-scanner -p thinagent-diag) >&2
fi
[ -x "$ENGINES" ] || die "$ENGINES missing: cargo build --release --manifest-path bench/engines/Cargo.toml --target-dir target"
[ -x "$SCANNER" ] || die "$SCANNER missing: cargo build --release -p thinagent-scanner"
[ -x "$DIAG" ] || die "$DIAG missing: cargo build --release -p thinagent-diag"

if [ "$NICE" != 0 ]; then
    renice -n "$NICE" -p $$ >/dev/null || die "renice -n $NICE failed (negative values need root)"
fi

mkdir -p "$DIR"
DATA=$DIR/data
RUN=$DIR/run
rm -rf "$RUN"
mkdir -p "$RUN"

# --- corpus and signatures (bench/make_corpus.py, as scan_vs_clamd.sh) ---
STAMP="small=$SMALL large=$LARGE large_mb=$LARGE_MB seed=$SEED"
if [ "$(cat "$DATA/stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "generating corpus: $STAMP"
    rm -rf "$DATA"
    python3 "$HERE/make_corpus.py" "$DATA" --small "$SMALL" --large "$LARGE" \
        --large-mb "$LARGE_MB" --hash-sigs 1000 --seed "$SEED" >&2
    echo "$STAMP" >"$DATA/stamp"
fi
SIGS=$DATA/sigs/thinagent

# --- the scanner ---
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_socket() { # PATH PID
    python3 - "$1" "$2" <<'EOF'
import os, socket, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 120
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("thinagent-scanner exited during start-up")
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); s.close(); sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit(f"thinagent-scanner did not listen on {path} within 120 s")
EOF
}
SOCK=$RUN/thinagent.sock
LIMIT_MB=$((LARGE_MB * 2 + 64))
TA_ARGS=(--listen "unix://$SOCK" --signatures "$SIGS" --no-builtin
         --max-file-size $((LIMIT_MB * 1024 * 1024)) --request-timeout-ms 120000
         --max-sessions-per-guest $((SESSIONS + JOBS + 8)))
"$SCANNER" "${TA_ARGS[@]}" --check-config >&2 || die "thinagent-scanner rejected: ${TA_ARGS[*]}"
TA_PID=
start_scanner() {
    rm -f "$SOCK"
    "$SCANNER" "${TA_ARGS[@]}" >>"$RUN/thinagent-scanner.log" 2>&1 &
    TA_PID=$!
    PIDS+=("$TA_PID")
    wait_socket "$SOCK" "$TA_PID" || { tail -20 "$RUN/thinagent-scanner.log" >&2; exit 2; }
}
stop_scanner() {
    kill "$TA_PID" 2>/dev/null || true
    wait "$TA_PID" 2>/dev/null || true
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
now() { date +%s.%N; }

# The raw modes (thinagent-bench-engines --modes): the floor of the goals
# (engines), yara-x alone, with the content-cache key, and the bytes through
# a Unix socket (alone, then with everything the scanner computes).
RAW_MODES="yara engines engines+blake3 socket socket+engines+blake3"
# results.tsv: set what files bytes runs ns_median ns_runs found load_before load_after extra
RESULTS=$RUN/results.tsv
: >"$RESULTS"
for set in $SETS; do
    dir=$DATA/corpus/$set
    files=$(find "$dir" -type f | wc -l)
    bytes=$(find "$dir" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    expected=$(awk -v s="$set" '$1==s {print $3}' "$DATA/expected.txt")

    # Raw engines, all modes, in one process (files read into memory first).
    lb=$(load)
    log "$set: raw engines, $THREADS threads, $RUNS runs (load average $lb)"
    "$ENGINES" --sigs "$SIGS" --threads "$THREADS" --runs "$RUNS" \
        --modes "$RAW_MODES" "$dir" >"$RUN/raw-$set.out" 2>"$RUN/raw-$set.err" \
        || { cat "$RUN/raw-$set.err" >&2; die "thinagent-bench-engines failed"; }
    la=$(load)
    while read -r line; do
        python3 - "$set" "$line" "$lb" "$la" "$expected" >>"$RESULTS" <<'EOF'
import sys
set_, line, lb, la, expected = sys.argv[1:]
f = dict(kv.split("=", 1) for kv in line.split())
extra = (f"md5={f['md5']} sha1={f['sha1']} sha256={f['sha256']} blake3={f['blake3']} "
         f"threads={f['threads']} passes={f['passes']}")
print("\t".join([set_, "raw-" + f["mode"], f["files"], f["bytes"], f["runs"], f["ns"],
                 f["ns_runs"], f"{f['detected']}/{expected}", lb, la, extra]))
EOF
    done <"$RUN/raw-$set.out"
    log "$set: $(tr '\n' ' ' <"$RUN/raw-$set.err")"

    # The pipeline, cold: a fresh scanner (empty caches) for every run.
    lb=$(load)
    log "$set: thinagent-diag scan --jobs $JOBS against a fresh thinagent-scanner, $RUNS runs (load average $lb)"
    times=()
    found=
    for r in $(seq "$RUNS"); do
        start_scanner
        t0=$(now)
        rc=0
        "$DIAG" scan --connect "unix://$SOCK" --jobs "$JOBS" --infected "$dir" \
            >"$RUN/pipeline-$set-$r.out" 2>"$RUN/pipeline-$set-$r.err" || rc=$?
        t1=$(now)
        stop_scanner
        [ "$rc" -ge 2 ] && { tail -5 "$RUN/pipeline-$set-$r.err" >&2; die "thinagent-diag scan failed (exit $rc)"; }
        times+=("$(python3 -c "print(int(($t1 - $t0) * 1e9))")")
        f=$(grep -c ' FOUND$' "$RUN/pipeline-$set-$r.out" || true)
        found=${found:-$f}
        [ "$f" = "$found" ] || found="$found,$f"
        log "   run $r: $(python3 -c "print(round(($t1 - $t0), 3))") s, $f/$expected found"
    done
    la=$(load)
    median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    printf '%s\tpipeline\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$set" "$files" "$bytes" "$RUNS" \
        "$median" "$(IFS=,; echo "${times[*]}")" "$found/$expected" "$lb" "$la" "jobs=$JOBS" >>"$RESULTS"
done

# Memory per idle session: a fresh scanner, one session, then N more.
SESSIONS_LINE=
if [ "$SESSIONS" -gt 0 ]; then
    lb=$(load)
    log "scanner RSS with $SESSIONS idle sessions (load average $lb)"
    start_scanner
    SESSIONS_LINE=$(python3 "$HERE/idle_sessions.py" --socket "$SOCK" --pid "$TA_PID" --sessions "$SESSIONS") \
        || die "idle_sessions.py failed"
    stop_scanner
    SESSIONS_LINE="$SESSIONS_LINE load_before=$(echo "$lb" | tr ' ' '/') load_after=$(load | tr ' ' '/')"
fi
echo "$SESSIONS_LINE" >"$RUN/sessions.txt"

echo
echo "Cold path at its floor: pipeline vs raw engines — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "corpus: $STAMP; pipeline: thinagent-diag scan --jobs $JOBS, fresh scanner per run; raw engines: $THREADS threads; median of $RUNS runs; niceness $(ps -o ni= -p $$ | tr -d ' ')"
echo
python3 "$HERE/engines_report.py" "$RESULTS" "$RUN/sessions.txt"
echo
echo "raw results and logs: $RUN"
