#!/usr/bin/env bash
# On-access overhead, side by side on one tmpfs workload with the same
# signatures: (1) no agent, (2) thinagent-linux-agent + thinagent-scanner over
# a Unix socket, (3) ClamAV clamonacc (--fdpass) + clamd. Prints a table.
# Not a test; not run in CI. Needs root (mounts a tmpfs, fanotify). See
# bench/README.md ("On-access overhead") for the method.
#
#   bench/onaccess_vs_clamonacc.sh [--files N] [--quick] [--warm-runs R]
#                                  [--setups "none thinagent clamonacc"]
#                                  [--dir DIR] [--no-build] [--nice N]
#                                  [--agent-args "ARGS"]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
FILES=20000
WARM_RUNS=3
SETUPS="none thinagent clamonacc"
DIR=/tmp/thinagent-onaccess
BUILD=1
NICE=-10
AGENT_ARGS=
PASS_TIMEOUT=${PASS_TIMEOUT:-150}

usage() {
    cat <<EOF
usage: $0 [options]
  --files N          small files read per pass (default $FILES)
  --quick            2,000 files, one warm run (a check that everything works, ~1 min)
  --warm-runs R      warm read passes per setup, the table shows the median (default $WARM_RUNS)
  --setups "LIST"    any of: none thinagent clamonacc (default: all; none is always run)
  --dir DIR          work dir, the tmpfs is mounted at DIR/mnt (default $DIR)
  --no-build         use the binaries already in target/release
  --agent-args "A"   extra arguments for thinagent-linux-agent (e.g. "--no-kernel-cache")
  --nice N           niceness of every benchmark process after the builds (default $NICE; 0 = unchanged)
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --files) FILES=${2:?--files needs a number}; shift 2 ;;
        --quick) FILES=2000; WARM_RUNS=1; shift ;;
        --warm-runs) WARM_RUNS=${2:?--warm-runs needs a number}; shift 2 ;;
        --setups) SETUPS=${2:?--setups needs a list}; shift 2 ;;
        --dir) DIR=${2:?--dir needs a path}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --agent-args) AGENT_ARGS=${2?--agent-args needs a value}; shift 2 ;;
        --nice) NICE=${2:?--nice needs a number}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "onaccess_vs_clamonacc: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
case $FILES in ''|*[!0-9]*|0) echo "onaccess_vs_clamonacc: --files expects a positive number" >&2; exit 2 ;; esac
case $WARM_RUNS in ''|*[!0-9]*|0) echo "onaccess_vs_clamonacc: --warm-runs expects a positive number" >&2; exit 2 ;; esac
case $NICE in -[0-9]|-1[0-9]|-20|[0-9]|1[0-9]) ;; *) echo "onaccess_vs_clamonacc: --nice expects -20..19" >&2; exit 2 ;; esac
case " $SETUPS " in *" none "*) ;; *) SETUPS="none $SETUPS" ;; esac
want() { case " $SETUPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

die() { echo "onaccess_vs_clamonacc: $*" >&2; exit 2; }
log() { echo "== $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "onaccess_vs_clamonacc: SKIPPED: needs root (it mounts a tmpfs and the agents use fanotify permission events); run it with sudo" >&2
    exit 0
fi
command -v python3 >/dev/null || die "python3 not found"
command -v timeout >/dev/null || die "timeout (coreutils) not found"

CLAMD=${CLAMD:-/usr/sbin/clamd}
CLAMONACC=${CLAMONACC:-/usr/sbin/clamonacc}
if want clamonacc; then
    [ -x "$CLAMD" ] && [ -x "$CLAMONACC" ] \
        || die "clamd/clamonacc not found: apt-get install clamav-daemon (or set CLAMD=, CLAMONACC=, or leave clamonacc out of --setups)"
    id clamav >/dev/null 2>&1 || die "user clamav missing (clamd runs as it, and clamonacc excludes it): apt-get install clamav-daemon"
fi

# --- binaries ---
WORKLOAD=$ROOT/target/release/thinagent-onaccess-workload
SCANNER=$ROOT/target/release/thinagent-scanner
AGENT=$ROOT/target/release/thinagent-linux-agent
if [ "$BUILD" = 1 ]; then
    log "building the workload (standalone package bench/onaccess)"
    cargo build --release --quiet --manifest-path "$HERE/onaccess/Cargo.toml" --target-dir "$ROOT/target" >&2
fi
[ -x "$WORKLOAD" ] || die "$WORKLOAD missing: cargo build --release --manifest-path bench/onaccess/Cargo.toml --target-dir target"

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

# Every process started from here on (workload, agents, scanners) inherits
# this niceness, the same for every setup: unrelated load on a shared machine
# then disturbs the measurements less. The builds above ran at the default.
if [ "$NICE" != 0 ]; then
    renice -n "$NICE" -p $$ >/dev/null || die "renice -n $NICE failed"
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
chmod 755 "$DIR" "$RUN" "$SIGS"

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
    # Listeners of permission events first (a blocked open waits on them).
    for name in agent clamonacc scanner clamd; do stop "$name"; done
    if [ "$MOUNTED" = 1 ]; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT" || echo "   could not unmount $MNT" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SIZE_MB=$((FILES * 8 / 1024 + 128))
mount -t tmpfs -o "size=${SIZE_MB}m,mode=755" thinagent-onaccess "$MNT"
MOUNTED=1

log "populating $MNT: $FILES files + headers + sources"
"$WORKLOAD" populate "$MNT/w" --files "$FILES" >"$RUN/shape.txt"
python3 "$HERE/onaccess/make_probe_set.py" "$MNT/probe" "$SIGS"
SHAPE=$(cat "$RUN/shape.txt")

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

# probe FILE: 0 allowed, 1 denied, 2 other error (a hung open counts as an error)
probe() { timeout 20 "$WORKLOAD" probe "$1" >"$RUN/probe.out" 2>&1; }
# check_probes SETUP BLOCKING(1|0): EICAR and the hash-listed sample denied
# (or, without an agent, allowed) and the clean file allowed. Retries the
# EICAR probe for up to 60 s while the agent finishes placing its marks.
check_probes() {
    local setup=$1 blocking=$2 rc want_rc=0
    [ "$blocking" = 1 ] && want_rc=1
    for _ in $(seq 120); do
        rc=0; probe "$MNT/probe/eicar.com" || rc=$?
        [ "$rc" = "$want_rc" ] && break
        [ "$blocking" = 1 ] || break
        sleep 0.5
    done
    if [ "$rc" != "$want_rc" ]; then
        if [ "$blocking" = 1 ]; then
            echo "   FAILURE: $setup did not block EICAR (probe: $(cat "$RUN/probe.out")); nothing measured for it" >&2
            STATUS[$setup]="did not block EICAR within 60 s (probe: $(cat "$RUN/probe.out"))"
        else
            echo "   FAILURE: EICAR is not readable without an agent (probe: $(cat "$RUN/probe.out")): is another on-access scanner watching $MNT?" >&2
            STATUS[$setup]="EICAR not readable without an agent: $(cat "$RUN/probe.out")"
        fi
        return 1
    fi
    echo "   $setup: EICAR $(cat "$RUN/probe.out")" >&2
    rc=0; probe "$MNT/probe/sample.bin" || rc=$?
    if [ "$rc" != "$want_rc" ]; then
        STATUS[$setup]="hash-listed sample.bin: wanted probe exit $want_rc, got $rc ($(cat "$RUN/probe.out"))"
        echo "   FAILURE: $setup: ${STATUS[$setup]}" >&2
        return 1
    fi
    echo "   $setup: sample.bin (listed by MD5 in bench.hdb) $(cat "$RUN/probe.out")" >&2
    rc=0; probe "$MNT/probe/clean.txt" || rc=$?
    if [ "$rc" != 0 ]; then
        STATUS[$setup]="clean file not readable: $(cat "$RUN/probe.out")"
        echo "   FAILURE: $setup: ${STATUS[$setup]}" >&2
        return 1
    fi
    echo "   $setup: clean.txt $(cat "$RUN/probe.out")" >&2
}

RESULTS=$RUN/results.tsv
: >"$RESULTS"
# pass SETUP NAME KIND: one timed workload pass, appended to results.tsv
pass() {
    local setup=$1 name=$2 kind=$3 rc=0 line
    timeout "$PASS_TIMEOUT" "$WORKLOAD" "$kind" "$MNT/w" --pass "$name" \
        >"$RUN/$setup-$name.out" 2>"$RUN/$setup-$name.err" || rc=$?
    line=$(cat "$RUN/$setup-$name.out")
    if [ "$rc" = 124 ] || [ -z "$line" ]; then
        echo "   $setup $name: FAILED (exit $rc, limit ${PASS_TIMEOUT}s): $(head -c 300 "$RUN/$setup-$name.err")" >&2
        STATUS[$setup]="pass $name did not finish (exit $rc; limit ${PASS_TIMEOUT} s)"
        return 1
    fi
    python3 - "$setup" "$line" >>"$RESULTS" <<'EOF'
import sys
setup, line = sys.argv[1], sys.argv[2]
f = dict(kv.split("=", 1) for kv in line.split())
print("\t".join([setup, f["pass"], f["opens"], f["stats"], f["ns"], f["errors"]]))
EOF
    echo "   $setup $name: $line" >&2
    if [ "$rc" != 0 ]; then
        echo "   $setup $name: errors: $(head -c 300 "$RUN/$setup-$name.err")" >&2
        PASS_ERRORS=1
    fi
}
PASS_ERRORS=0
passes() { # SETUP
    local k
    pass "$1" read-cold read || return 1
    for k in $(seq "$WARM_RUNS"); do pass "$1" "read-warm-$k" read || return 1; done
    pass "$1" compile compile || return 1
}

# --- setups ---
start_thinagent() {
    local sock=$RUN/thinagent.sock
    rm -f "$sock" "$RUN/agent.ready"
    "$SCANNER" --listen "unix://$sock" --signatures "$SIGS/thinagent" --no-builtin \
        >"$RUN/thinagent-scanner.log" 2>&1 &
    PID_OF[scanner]=$!
    wait_for 60 scanner socket_up "$sock" || { tail -5 "$RUN/thinagent-scanner.log" >&2; return 1; }
    # shellcheck disable=SC2086 # AGENT_ARGS is a list of words
    "$AGENT" --connect "unix://$sock" --watch "$MNT" --fail-mode open \
        --ready-file "$RUN/agent.ready" $AGENT_ARGS >"$RUN/thinagent-linux-agent.log" 2>&1 &
    PID_OF[agent]=$!
    wait_for 60 agent test -e "$RUN/agent.ready" || { tail -5 "$RUN/thinagent-linux-agent.log" >&2; return 1; }
}
stop_thinagent() {
    stop agent
    stop scanner
    # The agent's counters for the whole setup (all passes), for the report.
    grep -s 'Stats :' "$RUN/thinagent-linux-agent.log" | tail -1 >"$RUN/thinagent-stats.txt" || true
}

start_clamonacc() {
    local sock=$RUN/clamd.sock
    chown clamav "$RUN"
    cat >"$RUN/clamd.conf" <<EOF
Foreground yes
User clamav
LocalSocket $sock
LocalSocketMode 660
FixStaleSocket yes
DatabaseDirectory $SIGS/clamd
LogFile $RUN/clamd.log
SelfCheck 0
MaxThreads 4
OnAccessIncludePath $MNT
OnAccessPrevention yes
OnAccessExcludeUname clamav
EOF
    "$CLAMD" --config-file="$RUN/clamd.conf" >"$RUN/clamd.out" 2>&1 &
    PID_OF[clamd]=$!
    wait_for 60 clamd socket_up "$sock" || { tail -5 "$RUN/clamd.out" >&2; return 1; }
    "$CLAMONACC" --config-file="$RUN/clamd.conf" --foreground --fdpass --log="$RUN/clamonacc.log" \
        >"$RUN/clamonacc.out" 2>&1 &
    PID_OF[clamonacc]=$!
    # clamonacc logs this line once its directory walk has marked every directory.
    wait_for 60 clamonacc grep -qs "watching '$MNT' (and all sub-directories)" "$RUN/clamonacc.log" \
        || { tail -5 "$RUN/clamonacc.out" >&2; return 1; }
}
stop_clamonacc() { stop clamonacc; stop clamd; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for setup in none thinagent clamonacc; do
    want "$setup" || continue
    if [ -n "${STATUS[$setup]:-}" ]; then
        log "$setup: not measured: ${STATUS[$setup]}"
        continue
    fi
    log "$setup"
    case $setup in
        none)
            check_probes none 0 && passes none || true ;;
        thinagent)
            if start_thinagent; then
                check_probes thinagent 1 && passes thinagent || true
            else
                STATUS[thinagent]="did not start (logs: $RUN/thinagent-*.log)"
            fi
            stop_thinagent ;;
        clamonacc)
            if start_clamonacc; then
                check_probes clamonacc 1 && passes clamonacc || true
            else
                STATUS[clamonacc]="did not start (logs: $RUN/clamd.out, $RUN/clamonacc.out)"
            fi
            stop_clamonacc ;;
    esac
    STATUS[$setup]=${STATUS[$setup]:-ok}
done

: >"$RUN/status.tsv"
for setup in none thinagent clamonacc; do
    want "$setup" && printf '%s\t%s\n' "$setup" "${STATUS[$setup]}" >>"$RUN/status.tsv"
done
echo
echo "On-access overhead — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), kernel $(uname -r)$(want clamonacc && echo ", $("$CLAMD" --version)")"
echo "workload on tmpfs: $SHAPE; warm = median of $WARM_RUNS; niceness $(ps -o ni= -p $$ | tr -d ' ')${AGENT_ARGS:+; agent arguments: $AGENT_ARGS}; load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 "$HERE/onaccess/report.py" "$RESULTS" "$RUN/status.tsv"
echo
if [ -s "$RUN/thinagent-stats.txt" ]; then
    echo
    echo "thinagent-linux-agent counters over all its passes: $(sed 's/^.*Stats : //' "$RUN/thinagent-stats.txt")"
    FAIL_MODE=$(sed -n 's/.*fail_mode_decisions=\([0-9]*\).*/\1/p' "$RUN/thinagent-stats.txt")
    if [ "${FAIL_MODE:-0}" != 0 ]; then
        echo "WARNING: $FAIL_MODE opens were let through by the fail mode, not by a scanner verdict: the ThinAgent rows are not a measurement of scanning"
        PASS_ERRORS=1
    fi
fi
echo
echo "raw results and logs: $RUN"
for setup in none thinagent clamonacc; do
    want "$setup" && [ "${STATUS[$setup]}" != ok ] && exit 1
done
[ "$PASS_ERRORS" = 0 ] || exit 1
exit 0
