#!/usr/bin/env bash
# ThinAgent (thinagent-scanner + thinagent-diag scan) against ClamAV
# (clamd + clamdscan), same files, same signatures, one run. Prints a table.
# Not a test; not run in CI. See bench/README.md for the method.
#
# Knobs (environment):
#   BENCH_SMALL=2000     random small files (4-64 KiB), plus 10 EICAR files
#   BENCH_LARGE=3        large files
#   BENCH_LARGE_MB=100   size of each large file, MiB
#   BENCH_JOBS=4         concurrent sessions / clamd threads / client threads
#   BENCH_DIR=/tmp/thinagent-bench   work dir (corpus is reused if unchanged)
#   BENCH_SEED=5317      corpus seed
#   BENCH_BUILD=1        0 = use the existing binaries
#   BENCH_PROFILE=release   cargo profile whose binaries are used (release or debug)
#   BENCH_SETS="small large"
#   BENCH_SIDES="thinagent clamd"
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BENCH_SMALL=${BENCH_SMALL:-2000}
BENCH_LARGE=${BENCH_LARGE:-3}
BENCH_LARGE_MB=${BENCH_LARGE_MB:-100}
BENCH_JOBS=${BENCH_JOBS:-4}
BENCH_DIR=${BENCH_DIR:-/tmp/thinagent-bench}
BENCH_SEED=${BENCH_SEED:-5317}
BENCH_BUILD=${BENCH_BUILD:-1}
BENCH_PROFILE=${BENCH_PROFILE:-release}
BENCH_SETS=${BENCH_SETS:-small large}
BENCH_SIDES=${BENCH_SIDES:-thinagent clamd}
side() { case " $BENCH_SIDES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

die() { echo "scan_vs_clamd: $*" >&2; exit 2; }
log() { echo "== $*" >&2; }

CLAMD=${CLAMD:-$(command -v clamd || echo /usr/sbin/clamd)}
[ -x "$CLAMD" ] || die "clamd not found: apt-get install clamav-daemon (or set CLAMD=/path/to/clamd)"
command -v clamdscan >/dev/null || die "clamdscan not found: apt-get install clamav-daemon"
command -v python3 >/dev/null || die "python3 not found"

SCANNER=$ROOT/target/$BENCH_PROFILE/thinagent-scanner
DIAG=$ROOT/target/$BENCH_PROFILE/thinagent-diag
if side thinagent; then
    if [ "$BENCH_BUILD" = 1 ]; then
        log "building $BENCH_PROFILE binaries"
        (cd "$ROOT" && cargo build --profile "$BENCH_PROFILE" -p thinagent-scanner -p thinagent-diag) >&2
    fi
    [ -x "$SCANNER" ] || die "$SCANNER missing: cargo build --profile $BENCH_PROFILE -p thinagent-scanner"
    [ -x "$DIAG" ] || die "$DIAG missing: cargo build --profile $BENCH_PROFILE -p thinagent-diag"
fi

mkdir -p "$BENCH_DIR"
DATA=$BENCH_DIR/data
RUN=$BENCH_DIR/run
rm -rf "$RUN"
mkdir -p "$RUN"

# --- corpus and signatures (regenerated only when the parameters change) ---
STAMP="small=$BENCH_SMALL large=$BENCH_LARGE large_mb=$BENCH_LARGE_MB seed=$BENCH_SEED"
if [ "$(cat "$DATA/stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "generating corpus: $STAMP"
    rm -rf "$DATA"
    python3 "$HERE/make_corpus.py" "$DATA" --small "$BENCH_SMALL" --large "$BENCH_LARGE" \
        --large-mb "$BENCH_LARGE_MB" --hash-sigs 1000 --seed "$BENCH_SEED" >&2
    echo "$STAMP" > "$DATA/stamp"
fi

# --- process management ---
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

wait_socket() { # path what pid
    python3 - "$1" "$2" "$3" <<'EOF'
import os, socket, sys, time
path, what, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.time() + 120
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"{what} exited during start-up")
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); s.close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(f"{what} did not listen on {path} within 120 s")
EOF
}

LIMIT_MB=$((BENCH_LARGE_MB * 2 + 64))
CLAMD_SOCK=$RUN/clamd.sock
cat > "$RUN/clamd.conf" <<EOF
Foreground yes
LocalSocket $CLAMD_SOCK
FixStaleSocket yes
DatabaseDirectory $DATA/sigs/clamd
LogFile $RUN/clamd.log
MaxThreads $BENCH_JOBS
StreamMaxLength ${LIMIT_MB}M
MaxFileSize ${LIMIT_MB}M
MaxScanSize ${LIMIT_MB}M
SelfCheck 0
EOF
CLAMD_PID=
start_clamd() {
    "$CLAMD" --config-file="$RUN/clamd.conf" >>"$RUN/clamd.out" 2>&1 &
    CLAMD_PID=$!
    PIDS+=("$CLAMD_PID")
    wait_socket "$CLAMD_SOCK" clamd "$CLAMD_PID" || { tail -20 "$RUN/clamd.out" >&2; exit 2; }
}
stop_clamd() {
    kill "$CLAMD_PID" 2>/dev/null || true
    wait "$CLAMD_PID" 2>/dev/null || true
    rm -f "$CLAMD_SOCK"
}

TA_SOCK=$RUN/thinagent.sock
TA_ARGS=(--listen "unix://$TA_SOCK" --signatures "$DATA/sigs/thinagent" --no-builtin
         --max-file-size $((LIMIT_MB * 1024 * 1024)) --request-timeout-ms 120000)
if side thinagent; then
    "$SCANNER" "${TA_ARGS[@]}" --check-config >&2 \
        || die "thinagent-scanner rejected: ${TA_ARGS[*]}"
fi
TA_PID=
start_scanner() {
    rm -f "$TA_SOCK"
    "$SCANNER" "${TA_ARGS[@]}" >>"$RUN/thinagent-scanner.out" 2>&1 &
    TA_PID=$!
    PIDS+=("$TA_PID")
    wait_socket "$TA_SOCK" thinagent-scanner "$TA_PID" || { tail -20 "$RUN/thinagent-scanner.out" >&2; exit 2; }
}
stop_scanner() {
    kill "$TA_PID" 2>/dev/null || true
    wait "$TA_PID" 2>/dev/null || true
}

now() { date +%s.%N; }
RESULTS=$RUN/results.tsv
: > "$RESULTS"

# record LABEL SET CACHE SECONDS STDOUT RC LATENCY_CSV
record() {
    local label=$1 set=$2 cache=$3 secs=$4 out=$5 rc=$6 lat=$7
    local dir=$DATA/corpus/$set files bytes found expected errors=0
    files=$(find "$dir" -type f | wc -l)
    bytes=$(find "$dir" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    found=$(grep -c ' FOUND$' "$out" || true)
    expected=$(awk -v s="$set" '$1==s {print $3}' "$DATA/expected.txt")
    if [ "$rc" -ge 2 ]; then errors=$(grep -c -v ' FOUND$' "$out" || true); [ "$errors" -gt 0 ] || errors=1; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$label" "$set" "$cache" "$files" "$bytes" "$secs" "$found" "$expected" "$errors" "$lat" >> "$RESULTS"
    log "$label $set $cache: ${secs}s, found $found/$expected, exit $rc"
}

# timed NAME CMD...: runs CMD with stdout to $RUN/NAME.out; sets SECS and RC.
timed() {
    local name=$1; shift
    local t0 t1
    t0=$(now)
    RC=0
    "$@" > "$RUN/$name.out" 2> "$RUN/$name.err" || RC=$?
    t1=$(now)
    SECS=$(python3 -c "print(round($t1 - $t0, 4))")
    if [ "$RC" -ge 2 ]; then
        echo "   $name exited $RC:" >&2
        tail -5 "$RUN/$name.err" >&2
    fi
}

for set in $BENCH_SETS; do
    dir=$DATA/corpus/$set

    # ThinAgent: cold = fresh scanner process, warm = the same files again.
    if side thinagent; then
        start_scanner
        for cache in cold warm; do
            timed "ta-$set-$cache" "$DIAG" scan --connect "unix://$TA_SOCK" --jobs "$BENCH_JOBS" \
                --infected --latency-out "$RUN/ta-$set-$cache.csv" "$dir"
            record "ThinAgent (thinagent-diag scan --jobs $BENCH_JOBS)" "$set" "$cache" "$SECS" \
                "$RUN/ta-$set-$cache.out" "$RC" "$RUN/ta-$set-$cache.csv"
        done
        stop_scanner
        # Latency at the clamd client's concurrency: N sessions, one query
        # in flight each (the rows above keep up to 32 per session in flight).
        start_scanner
        for cache in cold warm; do
            timed "ta1-$set-$cache" "$DIAG" scan --connect "unix://$TA_SOCK" --jobs "$BENCH_JOBS" \
                --window 1 --infected --latency-out "$RUN/ta1-$set-$cache.csv" "$dir"
            record "ThinAgent (thinagent-diag scan --jobs $BENCH_JOBS --window 1)" "$set" "$cache" \
                "$SECS" "$RUN/ta1-$set-$cache.out" "$RC" "$RUN/ta1-$set-$cache.csv"
        done
        stop_scanner
    fi
    side clamd || continue

    # clamd via clamdscan (throughput) and via the latency client, each from a
    # freshly started clamd (cold) and then again (warm: clamd's clean cache).
    for mode in stream fdpass; do
        start_clamd
        for cache in cold warm; do
            timed "clamdscan-$mode-$set-$cache" clamdscan --config-file="$RUN/clamd.conf" \
                "--$mode" --multiscan --infected --no-summary "$dir"
            record "clamd $mode (clamdscan --$mode -m)" "$set" "$cache" "$SECS" \
                "$RUN/clamdscan-$mode-$set-$cache.out" "$RC" -
        done
        stop_clamd
        start_clamd
        for cache in cold warm; do
            timed "client-$mode-$set-$cache" python3 "$HERE/clamd_client.py" --socket "$CLAMD_SOCK" \
                --mode "$mode" --jobs "$BENCH_JOBS" --csv "$RUN/client-$mode-$set-$cache.csv" "$dir"
            # The client writes its CSV, not FOUND lines: derive them.
            awk -F, 'NR>1 && $4!="OK" && $4!~/^ERROR/ {print $1": "$4" FOUND"}' \
                "$RUN/client-$mode-$set-$cache.csv" > "$RUN/client-$mode-$set-$cache.out"
            record "clamd $mode (bench client, $BENCH_JOBS conns)" "$set" "$cache" "$SECS" \
                "$RUN/client-$mode-$set-$cache.out" "$RC" "$RUN/client-$mode-$set-$cache.csv"
        done
        stop_clamd
    done
done

echo
echo "ThinAgent vs clamd — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $("$CLAMD" --version)"
echo "corpus: $STAMP; jobs $BENCH_JOBS; ThinAgent binaries: $BENCH_PROFILE profile"
echo
python3 "$HERE/report.py" "$RESULTS"
echo
echo "raw results and logs: $RUN"
