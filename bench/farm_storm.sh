#!/usr/bin/env bash
# The VDI morning storm on a scanner farm (issue 15): N simulated desktops
# (thinagent-diag scan, each its own guest name) spread over S
# thinagent-scanner processes, all opening the same corpus at once; run
# twice, without [farm] (every scanner scans for its own guests) and with
# one shared Redis (a file scanned once per farm). Prints a table (content
# moved, files/s, p99, engine scans, farm hit rate, scanner CPU) and the
# Redis entry sizes, then the model of bench/README.md. Not a test; not run
# in CI. See bench/README.md, "Scanner farm storm".
#
# Knobs (environment):
#   FARM_SCANNERS=3      scanner processes (2-4)
#   FARM_GUESTS=24       simulated desktops, spread round-robin
#   FARM_SMALL=3000      files in the corpus (4-64 KiB each, plus planted detections)
#   FARM_WINDOW=8        queries in flight per desktop
#   FARM_DIR=/tmp/thinagent-farm-storm   work dir (corpus reused if unchanged)
#   FARM_SEED=5317       corpus seed
#   FARM_BUILD=1         0 = use the existing binaries
#   FARM_PROFILE=release cargo profile whose binaries are used (release or debug)
#   FARM_HOSTS=50 FARM_DESKTOPS=200 FARM_LOGON_FILES=5000   the modelled farm
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
FARM_SCANNERS=${FARM_SCANNERS:-3}
FARM_GUESTS=${FARM_GUESTS:-24}
FARM_SMALL=${FARM_SMALL:-3000}
FARM_WINDOW=${FARM_WINDOW:-8}
FARM_DIR=${FARM_DIR:-/tmp/thinagent-farm-storm}
FARM_SEED=${FARM_SEED:-5317}
FARM_BUILD=${FARM_BUILD:-1}
FARM_PROFILE=${FARM_PROFILE:-release}
export FARM_HOSTS=${FARM_HOSTS:-50} FARM_DESKTOPS=${FARM_DESKTOPS:-200} \
    FARM_LOGON_FILES=${FARM_LOGON_FILES:-5000}

die() { echo "farm_storm: $*" >&2; exit 2; }
log() { echo "== $*" >&2; }

[ "$FARM_SCANNERS" -ge 2 ] && [ "$FARM_SCANNERS" -le 4 ] || die "FARM_SCANNERS must be 2..4"
command -v redis-server >/dev/null || die "redis-server not found: apt-get install redis-server"
command -v redis-cli >/dev/null || die "redis-cli not found: apt-get install redis-tools"
command -v python3 >/dev/null || die "python3 not found"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SCANNER=$TARGET/$FARM_PROFILE/thinagent-scanner
DIAG=$TARGET/$FARM_PROFILE/thinagent-diag
if [ "$FARM_BUILD" = 1 ]; then
    log "building $FARM_PROFILE binaries"
    (cd "$ROOT" && cargo build --profile "$FARM_PROFILE" -p thinagent-scanner -p thinagent-diag) >&2
fi
[ -x "$SCANNER" ] || die "$SCANNER missing: cargo build --profile $FARM_PROFILE -p thinagent-scanner"
[ -x "$DIAG" ] || die "$DIAG missing: cargo build --profile $FARM_PROFILE -p thinagent-diag"

mkdir -p "$FARM_DIR"
DATA=$FARM_DIR/data
RUN=$FARM_DIR/run
rm -rf "$RUN"
mkdir -p "$RUN"

STAMP="small=$FARM_SMALL seed=$FARM_SEED"
if [ "$(cat "$DATA/stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "generating corpus: $STAMP"
    rm -rf "$DATA"
    python3 "$HERE/make_corpus.py" "$DATA" --small "$FARM_SMALL" --large 0 \
        --hash-sigs 1000 --seed "$FARM_SEED" >&2
    echo "$STAMP" > "$DATA/stamp"
fi
CORPUS=$DATA/corpus/small

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REDIS_PORT=$(free_port)
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
mkdir -p "$RUN/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$RUN/redis" >"$RUN/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$REDIS_PORT" ping >/dev/null || die "redis-server did not start (see $RUN/redis.log)"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# Scanner CPU time (user + system), seconds.
cpu_secs() {
    python3 - "$@" <<'EOF'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total += int(fields[11]) + int(fields[12])
print(total / tick)
EOF
}

SCANNER_PIDS=()
URLS=()
METRICS=()
start_scanners() { # mode
    local mode=$1 i out farm=()
    SCANNER_PIDS=(); URLS=(); METRICS=()
    for i in $(seq "$FARM_SCANNERS"); do
        [ "$mode" = farm ] && farm=(--farm-redis-url "$REDIS_URL" --farm-scanner-name "esx-$i")
        out=$RUN/$mode-scanner-$i
        "$SCANNER" --listen tcp://127.0.0.1:0 --metrics tcp://127.0.0.1:0 \
            --signatures "$DATA/sigs/thinagent" --no-builtin --log-level warn \
            "${farm[@]}" >"$out.out" 2>"$out.log" &
        SCANNER_PIDS+=("$!"); PIDS+=("$!")
        for _ in $(seq 400); do
            grep -q '^metrics on' "$out.out" 2>/dev/null && break
            kill -0 "${SCANNER_PIDS[-1]}" 2>/dev/null || die "scanner exited: $(tail -3 "$out.log")"
            sleep 0.05
        done
        URLS+=("$(sed -n 's/^listening on //p' "$out.out" | head -1)")
        METRICS+=("$(sed -n 's#^metrics on \(http://.*\)#\1#p' "$out.out")")
    done
    if [ "$mode" = farm ]; then
        for m in "${METRICS[@]}"; do
            for _ in $(seq 200); do
                python3 -c "import sys,urllib.request; sys.exit(0 if 'thinagent_scanner_farm_up 1' in urllib.request.urlopen('$m').read().decode() else 1)" && break
                sleep 0.05
            done
        done
    fi
}
stop_scanners() {
    for p in "${SCANNER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${SCANNER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

run_mode() { # mode
    local mode=$1 g s t0 t1 cpu0 cpu1 gpids=()
    log "$mode: $FARM_SCANNERS scanners, $FARM_GUESTS desktops x $(find "$CORPUS" -type f | wc -l) files"
    [ "$mode" = farm ] && rcli flushall >/dev/null
    start_scanners "$mode"
    cpu0=$(cpu_secs "${SCANNER_PIDS[@]}")
    t0=$(date +%s.%N)
    for g in $(seq "$FARM_GUESTS"); do
        s=$(( (g - 1) % FARM_SCANNERS ))
        "$DIAG" scan --connect "${URLS[$s]}" --guest-name "desk-$g" --window "$FARM_WINDOW" \
            --quiet --latency-out "$RUN/$mode-desk-$g.csv" "$CORPUS" \
            >"$RUN/$mode-desk-$g.out" 2>"$RUN/$mode-desk-$g.err" &
        gpids+=("$!")
    done
    local rc=0
    # Exit status 1: something found (the planted detections).
    for p in "${gpids[@]}"; do wait "$p" || { r=$?; [ "$r" = 1 ] || rc=$r; }; done
    t1=$(date +%s.%N)
    cpu1=$(cpu_secs "${SCANNER_PIDS[@]}")
    [ "$rc" = 0 ] || die "$mode: a desktop failed (exit $rc); see $RUN/$mode-desk-*.err"
    for i in $(seq "$FARM_SCANNERS"); do
        python3 -c "import urllib.request; print(urllib.request.urlopen('${METRICS[$((i - 1))]}').read().decode())" \
            >"$RUN/$mode-metrics-$i.txt"
    done
    printf '{"mode": "%s", "seconds": %s, "cpu_seconds": %s, "loadavg": "%s"}\n' \
        "$mode" "$(python3 -c "print($t1 - $t0)")" "$(python3 -c "print($cpu1 - $cpu0)")" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" >"$RUN/$mode.json"
    stop_scanners
}

# Calibration of the CPU one engine scan costs: on each scanner one desktop
# opens the corpus cold (every file scanned), then another desktop the same
# files (every file a local content-cache hit: same bytes sent and hashed,
# no scan). The difference per file is the engine's share. (CPU time is
# counted in 10 ms ticks: a cheap signature set is near that resolution.)
calibrate() {
    local c0 c1 c2 u
    log "calibration: each scanner a cold desktop, then a warm one"
    start_scanners local
    c0=$(cpu_secs "${SCANNER_PIDS[@]}")
    for u in "${URLS[@]}"; do
        "$DIAG" scan --connect "$u" --guest-name cal-cold --window "$FARM_WINDOW" --quiet \
            "$CORPUS" >/dev/null 2>&1 || [ $? = 1 ]
    done
    c1=$(cpu_secs "${SCANNER_PIDS[@]}")
    for u in "${URLS[@]}"; do
        "$DIAG" scan --connect "$u" --guest-name cal-warm --window "$FARM_WINDOW" --quiet \
            "$CORPUS" >/dev/null 2>&1 || [ $? = 1 ]
    done
    c2=$(cpu_secs "${SCANNER_PIDS[@]}")
    printf '{"cold_cpu": %s, "warm_cpu": %s, "runs": %s}\n' "$(python3 -c "print($c1 - $c0)")" \
        "$(python3 -c "print($c2 - $c1)")" "$FARM_SCANNERS" >"$RUN/calibration.json"
    stop_scanners
}

run_mode local
run_mode farm
calibrate

# What one entry costs Redis (MEMORY USAGE, bytes), and how many there are.
sample() { rcli --scan --pattern "$1" | { head -1; cat >/dev/null; }; }
usage() { [ -n "$1" ] && rcli memory usage "$1" || echo 0; }
C=$(sample 'thinagent:c:*'); D=$(sample 'thinagent:d:*'); G=$(sample 'thinagent:guest:*')
python3 - "$RUN/redis.json" <<EOF
import json, sys
json.dump({
    "content_entry": $(usage "$C"), "detection_entry": $(usage "$D"),
    "guest_entry": $(usage "$G"),
    "stream_bytes": $(usage thinagent:events), "stream_entries": $(rcli xlen thinagent:events),
    "content_keys": $(rcli --scan --pattern 'thinagent:c:*' | wc -l),
    "detection_keys": $(rcli --scan --pattern 'thinagent:d:*' | wc -l),
    "used_memory": $(rcli info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'),
}, open(sys.argv[1], "w"))
EOF
"$DIAG" farm guests --redis-url "$REDIS_URL" >"$RUN/farm-guests.txt" || true

python3 "$HERE/farm_report.py" "$RUN" "$FARM_SCANNERS" "$FARM_GUESTS" "$CORPUS"
