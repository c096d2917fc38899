#!/usr/bin/env bash
# Cold-open latency of the Linux agent against its floor, in one run: per
# file size, fresh files opened and read once each (cold) and again (warm),
# each open timed on its own, under (1) no agent, (2) floor-allow, a bare
# fanotify responder, (3) floor-roundtrip, the same plus one Unix-socket
# round trip carrying the file's first 64 KiB, (4) for files over 64 KiB
# floor-roundtrip-whole, the round trip carrying the whole file, and
# (5) thinagent-linux-agent + thinagent-scanner over a Unix socket.
# Each size's setups are measured in turn, ROUNDS times over (fresh files
# each time), and the table takes the median of the rounds: a drift of the
# machine between two setups then weighs on both. Prints a table and the
# goal check of issue 16 (ThinAgent cold <= 2x floor-roundtrip at 4 KiB;
# the other sizes are reported). Not a test; not run in CI. Needs root
# (tmpfs, fanotify).
# See bench/README.md ("Cold open at its floor") for the method.
#
#   bench/cold_open.sh [--quick] [--sizes "1K 4K 64K 1M"] [--files N] [--mb M]
#                      [--setups "..."] [--dir DIR] [--no-build] [--nice N]
#                      [--cpus LIST] [--agent-args "ARGS"] [--rounds R]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SIZES="1K 4K 64K 1M"
FILES=2000
BUDGET_MB=128
ROUNDS=3
ALL_SETUPS="none floor-allow floor-roundtrip floor-roundtrip-whole thinagent"
SETUPS=$ALL_SETUPS
DIR=/tmp/thinagent-coldopen
BUILD=1
NICE=-10
AGENT_ARGS=
CPUS=
PASS_TIMEOUT=${PASS_TIMEOUT:-150}
FLOOR_BYTES=65536

usage() {
    cat <<EOF
usage: $0 [options]
  --sizes "LIST"     file sizes, bytes or with K/M suffix (default "$SIZES")
  --files N          files per size and setup, at most (default $FILES)
  --mb M             and at most M MiB of them per size and setup (default $BUDGET_MB: 128 files of 1 MiB)
  --rounds R         measure every setup R times, in turn with the others (default $ROUNDS);
                     the table shows the median of the rounds
  --quick            --files 500 --mb 32 --rounds 1 (a check that everything works)
  --setups "LIST"    any of: $ALL_SETUPS (default: all; none is always run)
  --dir DIR          work dir, the tmpfs is mounted at DIR/mnt (default $DIR)
  --no-build         use the binaries already in target/release
  --agent-args "A"   extra arguments for thinagent-linux-agent
  --nice N           niceness of every benchmark process after the builds (default $NICE; 0 = unchanged)
  --cpus LIST        run every benchmark process on these CPUs only (taskset -c LIST, e.g. 0;
                     default: all CPUs)
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --sizes) SIZES=${2:?--sizes needs a list}; shift 2 ;;
        --files) FILES=${2:?--files needs a number}; shift 2 ;;
        --mb) BUDGET_MB=${2:?--mb needs a number}; shift 2 ;;
        --quick) FILES=500; BUDGET_MB=32; ROUNDS=1; shift ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
        --setups) SETUPS=${2:?--setups needs a list}; shift 2 ;;
        --dir) DIR=${2:?--dir needs a path}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --agent-args) AGENT_ARGS=${2?--agent-args needs a value}; shift 2 ;;
        --nice) NICE=${2:?--nice needs a number}; shift 2 ;;
        --cpus) CPUS=${2:?--cpus needs a CPU list}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "cold_open: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
die() { echo "cold_open: $*" >&2; exit 2; }
log() { echo "== $*" >&2; }
case $FILES in ''|*[!0-9]*|0) die "--files expects a positive number" ;; esac
case $BUDGET_MB in ''|*[!0-9]*|0) die "--mb expects a positive number" ;; esac
case $ROUNDS in ''|*[!0-9]*|0) die "--rounds expects a positive number" ;; esac
case $NICE in -[0-9]|-1[0-9]|-20|[0-9]|1[0-9]) ;; *) die "--nice expects -20..19" ;; esac
for s in $SETUPS; do
    case " $ALL_SETUPS " in *" $s "*) ;; *) die "unknown setup $s (known: $ALL_SETUPS)" ;; esac
done
case " $SETUPS " in *" none "*) ;; *) SETUPS="none $SETUPS" ;; esac
want() { case " $SETUPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
bytes_of() { # 1K -> 1024, 1M -> 1048576, 300 -> 300
    case $1 in
        *[kK]) echo $(( ${1%?} * 1024 )) ;;
        *[mM]) echo $(( ${1%?} * 1024 * 1024 )) ;;
        *) echo "$1" ;;
    esac
}
SIZE_BYTES=()
for s in $SIZES; do
    case $s in ''|*[!0-9kKmM]*) die "--sizes: bad size $s" ;; esac
    b=$(bytes_of "$s")
    [ "$b" -gt 0 ] 2>/dev/null || die "--sizes: bad size $s"
    SIZE_BYTES+=("$b")
done
files_for() { # SIZE_BYTES: min(FILES, BUDGET_MB MiB / size), at least 10
    local n=$(( BUDGET_MB * 1024 * 1024 / $1 ))
    [ "$n" -gt "$FILES" ] && n=$FILES
    [ "$n" -lt 10 ] && n=10
    echo "$n"
}

if [ "$(id -u)" != 0 ]; then
    echo "cold_open: SKIPPED: needs root (it mounts a tmpfs and the agents use fanotify permission events); run it with sudo" >&2
    exit 0
fi
command -v python3 >/dev/null || die "python3 not found"
command -v timeout >/dev/null || die "timeout (coreutils) not found"

# --- binaries ---
REL=$ROOT/target/release
WORKLOAD=$REL/thinagent-onaccess-workload
SCANNER=$REL/thinagent-scanner
AGENT=$REL/thinagent-linux-agent
if [ "$BUILD" = 1 ]; then
    log "building the workload and the floor programs (standalone package bench/onaccess)"
    cargo build --release --quiet --manifest-path "$HERE/onaccess/Cargo.toml" --target-dir "$ROOT/target" >&2
fi
for b in "$WORKLOAD" "$REL/floor-allow" "$REL/floor-roundtrip" "$REL/floor-echo"; do
    [ -x "$b" ] || die "$b missing: cargo build --release --manifest-path bench/onaccess/Cargo.toml --target-dir target"
done

declare -A STATUS=()
if want thinagent; then
    if [ "$BUILD" = 1 ]; then
        log "building thinagent-scanner and thinagent-linux-agent (release)"
        if ! (cd "$ROOT" && cargo build --release -p thinagent-scanner -p thinagent-linux-agent) >&2; then
            STATUS[thinagent]="cargo build --release -p thinagent-scanner -p thinagent-linux-agent failed"
        fi
    fi
    if [ -z "${STATUS[thinagent]:-}" ]; then
        [ -x "$SCANNER" ] || STATUS[thinagent]="$SCANNER missing: cargo build --release -p thinagent-scanner"
        [ -x "$AGENT" ] || STATUS[thinagent]="$AGENT missing: cargo build --release -p thinagent-linux-agent"
    fi
fi

# Every process started from here on inherits this niceness, the same for
# every setup (see onaccess_vs_clamonacc.sh). The builds above ran at the default.
if [ "$NICE" != 0 ]; then
    renice -n "$NICE" -p $$ >/dev/null || die "renice -n $NICE failed"
fi
# Likewise the CPUs (inherited by every process started from here on).
if [ -n "$CPUS" ]; then
    command -v taskset >/dev/null || die "--cpus needs taskset (util-linux)"
    taskset -p -c "$CPUS" $$ >/dev/null || die "taskset -c $CPUS failed"
fi

# --- work dir, tmpfs, process management ---
MNT=$DIR/mnt
RUN=$DIR/run
SIGS=$DIR/sigs
mkdir -p "$DIR"
if mountpoint -q "$MNT"; then
    die "$MNT is already a mount point (a previous run still mounted?): umount $MNT, or pass --dir"
fi
rm -rf "$RUN" "$SIGS"
mkdir -p "$MNT" "$RUN" "$SIGS"

declare -A PID_OF=()
MOUNTED=0
stop() { # NAME: SIGTERM, then SIGKILL after 10 s
    local name=$1 pid=${PID_OF[$1]:-}
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "   $name (pid $pid) ignored SIGTERM for 10 s: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "PID_OF[$name]"
}
cleanup() {
    local rc=$?
    # Listeners of permission events first (a blocked open waits on them),
    # the round-trip floor before its echo server (which serves one
    # connection until it closes).
    for name in agent floor scanner echo; do stop "$name"; done
    if [ "$MOUNTED" = 1 ]; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT" || echo "   could not unmount $MNT" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The largest set of files lives on the tmpfs at a time (one size, one setup).
MAX_MB=0
for b in "${SIZE_BYTES[@]}"; do
    mb=$(( $(files_for "$b") * (b + 4096) / 1048576 + 1 ))
    [ "$mb" -gt "$MAX_MB" ] && MAX_MB=$mb
done
mount -t tmpfs -o "size=$((MAX_MB + 64))m,mode=755" thinagent-coldopen "$MNT"
MOUNTED=1
python3 "$HERE/onaccess/make_probe_set.py" "$MNT/probe" "$SIGS"

wait_for() { # SECONDS NAME COMMAND...: polls COMMAND every 0.1 s while NAME is alive
    local secs=$1 name=$2; shift 2
    for _ in $(seq $((secs * 10))); do
        "$@" && return 0
        if [ -n "${PID_OF[$name]:-}" ] && ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then
            echo "   $name exited during start-up" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "   $name: not ready after $secs s" >&2
    return 1
}
socket_up() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$1" 2>/dev/null; }

probe() { timeout 20 "$WORKLOAD" probe "$1" >"$RUN/probe.out" 2>&1; }
# The functions below return 1 with the reason in WHY (never called in a
# subshell: start_setup records the pids of what it starts).
WHY=
# check_thinagent: EICAR and the hash-listed sample denied, a clean file
# allowed (retrying EICAR for up to 60 s while the agent places its marks).
check_thinagent() {
    local rc
    for _ in $(seq 120); do
        rc=0; probe "$MNT/probe/eicar.com" || rc=$?
        [ "$rc" = 1 ] && break
        sleep 0.5
    done
    [ "$rc" = 1 ] || { WHY="did not block EICAR within 60 s (probe: $(cat "$RUN/probe.out"))"; return 1; }
    rc=0; probe "$MNT/probe/sample.bin" || rc=$?
    [ "$rc" = 1 ] || { WHY="did not block the hash-listed sample.bin (probe: $(cat "$RUN/probe.out"))"; return 1; }
    rc=0; probe "$MNT/probe/clean.txt" || rc=$?
    [ "$rc" = 0 ] || { WHY="clean.txt not readable (probe: $(cat "$RUN/probe.out"))"; return 1; }
}
# check_open: without an agent (or with a floor, which allows all), every
# probe file opens.
check_open() {
    local f rc
    for f in eicar.com sample.bin clean.txt; do
        rc=0; probe "$MNT/probe/$f" || rc=$?
        [ "$rc" = 0 ] || { WHY="$f not readable (probe: $(cat "$RUN/probe.out")): is another on-access scanner watching $MNT?"; return 1; }
    done
}

start_setup() { # SETUP TAG: starts the daemons
    local setup=$1 tag=$2
    rm -f "$RUN/ready" "$RUN/echo.sock" "$RUN/thinagent.sock"
    case $setup in
        none) return 0 ;;
        floor-allow)
            "$REL/floor-allow" --watch "$MNT" --ready-file "$RUN/ready" \
                >"$RUN/$tag-floor.out" 2>&1 &
            PID_OF[floor]=$! ;;
        floor-roundtrip|floor-roundtrip-whole)
            local max=$FLOOR_BYTES
            [ "$setup" = floor-roundtrip-whole ] && max=0
            "$REL/floor-echo" --listen "$RUN/echo.sock" >"$RUN/$tag-echo.out" 2>&1 &
            PID_OF[echo]=$!
            wait_for 30 echo socket_up "$RUN/echo.sock" || { WHY="floor-echo did not listen"; return 1; }
            "$REL/floor-roundtrip" --watch "$MNT" --connect "$RUN/echo.sock" --max-bytes "$max" \
                --ready-file "$RUN/ready" >"$RUN/$tag-floor.out" 2>&1 &
            PID_OF[floor]=$! ;;
        thinagent)
            "$SCANNER" --listen "unix://$RUN/thinagent.sock" --signatures "$SIGS/thinagent" --no-builtin \
                >"$RUN/$tag-scanner.log" 2>&1 &
            PID_OF[scanner]=$!
            wait_for 60 scanner socket_up "$RUN/thinagent.sock" \
                || { WHY="thinagent-scanner did not listen: $(tail -3 "$RUN/$tag-scanner.log")"; return 1; }
            # shellcheck disable=SC2086 # AGENT_ARGS is a list of words
            "$AGENT" --connect "unix://$RUN/thinagent.sock" --watch "$MNT" --fail-mode open \
                --ready-file "$RUN/ready" $AGENT_ARGS >"$RUN/$tag-agent.log" 2>&1 &
            PID_OF[agent]=$! ;;
    esac
    local daemon=floor
    [ "$setup" = thinagent ] && daemon=agent
    wait_for 60 "$daemon" test -e "$RUN/ready" \
        || { WHY="$setup not ready: $(tail -q -n 3 "$RUN/$tag-"*.out "$RUN/$tag-"*.log 2>/dev/null | tr '\n' ' ')"; return 1; }
}
stop_setup() { # SETUP TAG
    case $1 in
        thinagent)
            stop agent; stop scanner
            grep -s 'Stats :' "$RUN/$2-agent.log" | tail -1 | sed 's/^.*Stats : //' >"$RUN/$2-counters.txt" || true ;;
        floor-*)
            stop floor; stop echo
            tail -1 "$RUN/$2-floor.out" >"$RUN/$2-counters.txt" 2>/dev/null || true ;;
    esac
}

PASS_ERRORS=0
# pass SETUP SIZE NAME DIR ROUND: one coldread pass, its line (with round=ROUND)
# appended to SIZE-SETUP.passes
pass() {
    local setup=$1 size=$2 name=$3 dir=$4 round=$5 tag="$2-$1-$3-r$5" rc=0 line
    timeout "$PASS_TIMEOUT" "$WORKLOAD" coldread "$dir" --pass "$name" \
        >"$RUN/$tag.out" 2>"$RUN/$tag.err" || rc=$?
    line=$(cat "$RUN/$tag.out")
    if [ "$rc" = 124 ] || [ -z "$line" ]; then
        WHY="pass $name did not finish (exit $rc, limit ${PASS_TIMEOUT}s): $(head -c 300 "$RUN/$tag.err")"
        return 1
    fi
    if [ "$rc" != 0 ]; then
        echo "   $setup $size $name: errors: $(head -c 300 "$RUN/$tag.err")" >&2
        PASS_ERRORS=1
    fi
    echo "   $setup $size $name (round $round): $line" >&2
    echo "round=$round $line" >>"$RUN/$2-$1.passes"
}

# One line per (size, setup, round) in setups.tsv: size setup status
# load_before load_after counters round
: >"$RUN/setups.tsv"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for i in "${!SIZE_BYTES[@]}"; do
    size=${SIZE_BYTES[$i]}
    n=$(files_for "$size")
    for s in $ALL_SETUPS; do : >"$RUN/$size-$s.passes"; done
  for round in $(seq "$ROUNDS"); do
    for setup in $ALL_SETUPS; do
        want "$setup" || continue
        [ "$setup" = floor-roundtrip-whole ] && [ "$size" -le "$FLOOR_BYTES" ] && continue
        tag=$size-$setup-r$round
        status=ok
        load_before=$(cut -d' ' -f1-3 /proc/loadavg)
        if [ -n "${STATUS[$setup]:-}" ]; then
            status=${STATUS[$setup]}
        else
            log "size $size, round $round/$ROUNDS, $setup: $n fresh files (load average $load_before)"
            fdir=$MNT/$tag
            # Fresh files written before the setup starts: its first pass is
            # the first open of each of them while it runs.
            "$WORKLOAD" populate-sized "$fdir" --files "$n" --size "$size" \
                --seed "$((round * 1000 + i * 10 + ${#setup}))" >/dev/null
            if ! start_setup "$setup" "$tag"; then
                status="did not start: $WHY"
            elif [ "$setup" = thinagent ] && ! check_thinagent; then
                status=$WHY
            elif [ "$setup" != thinagent ] && ! check_open; then
                status=$WHY
            elif ! pass "$setup" "$size" cold "$fdir" "$round" \
                    || ! pass "$setup" "$size" warm "$fdir" "$round"; then
                status=$WHY
            fi
            stop_setup "$setup" "$tag"
            rm -rf "$fdir"
            [ "$status" = ok ] || echo "   FAILURE: $setup at $size bytes: $status" >&2
        fi
        load_after=$(cut -d' ' -f1-3 /proc/loadavg)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$setup" "$status" "$load_before" \
            "$load_after" "$(cat "$RUN/$tag-counters.txt" 2>/dev/null || true)" "$round" \
            >>"$RUN/setups.tsv"
    done
  done
done

echo
echo "Cold open at its floor — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), kernel $(uname -r)"
echo "fresh files per size, setup and round on tmpfs: at most $FILES, at most $BUDGET_MB MiB; $ROUNDS rounds (setups in turn), median shown; niceness $(ps -o ni= -p $$ | tr -d ' '); CPUs ${CPUS:-all}${AGENT_ARGS:+; agent arguments: $AGENT_ARGS}; load average at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 "$HERE/cold_report.py" "$RUN"
echo
echo "raw results and logs: $RUN"
REPORT_RC=0
awk -F'\t' '$3 != "ok" {bad=1} END {exit bad}' "$RUN/setups.tsv" || REPORT_RC=1
grep -q 'fail_mode_decisions=[1-9]' "$RUN"/*-thinagent-counters.txt 2>/dev/null && REPORT_RC=1
[ "$PASS_ERRORS" = 0 ] || REPORT_RC=1
exit "$REPORT_RC"
