#!/usr/bin/env python3
"""Prints the on-access benchmark table (bench/onaccess_vs_clamonacc.sh).

    report.py RESULTS_TSV STATUS_TSV

RESULTS_TSV, one line per pass: setup, pass (read-cold, read-warm-K, compile),
opens, stats, ns, errors. STATUS_TSV, one line per setup: setup, status ("ok"
or why it was not measured). The warm row of a setup is the median of its
read-warm-K passes. "added" is the setup's time per open minus the no-agent
setup's for the same pass; "ratio vs clamonacc" is ThinAgent's added time
divided by clamonacc's for the same pass. Total overhead is the sum of the
added seconds of the cold, warm and compile rows. Nothing is estimated: a
missing setup or a pass with errors makes the goals "not measured".
Standard library only.
"""

import statistics
import sys

SETUPS = [("none", "none (no agent)"),
          ("thinagent", "ThinAgent (linux agent + thinagent-scanner, unix socket)"),
          ("clamonacc", "ClamAV (clamonacc --fdpass + clamd)")]
PASSES = [("read-cold", "read 1 (cold)"), ("read-warm", "read 2 (warm)"), ("compile", "compile-like")]
WARM_GOAL_US = 5.0
TOTAL_GOAL_RATIO = 0.2


def load(results_path, status_path):
    status = {}
    with open(status_path) as f:
        for line in f:
            setup, _, why = line.rstrip("\n").partition("\t")
            status[setup] = why
    raw = {}
    with open(results_path) as f:
        for line in f:
            setup, name, opens, stats, ns, errors = line.rstrip("\n").split("\t")
            key = "read-warm" if name.startswith("read-warm") else name
            raw.setdefault((setup, key), []).append((int(opens), int(stats), int(ns), int(errors)))
    rows = {}
    for (setup, key), runs in raw.items():
        ns = statistics.median_low([r[2] for r in runs])
        rows[(setup, key)] = {
            "opens": runs[0][0],
            "ns": ns,
            "errors": sum(r[3] for r in runs),
            "runs": len(runs),
            "all_ns": [r[2] for r in runs],
        }
    return status, rows


def fmt(x, digits=2, signed=False):
    if x is None:
        return "—"
    x = round(x, digits) + 0.0  # no "-0.00"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    status, rows = load(sys.argv[1], sys.argv[2])

    def us(setup, key):
        r = rows.get((setup, key))
        if r is None or r["errors"]:
            return None
        return r["ns"] / r["opens"] / 1000

    def added(setup, key):
        a, b = us(setup, key), us("none", key)
        return None if a is None or b is None else a - b

    print("| setup | pass | opens | total s | µs/open | added µs/open vs none | ratio vs clamonacc |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for setup, label in SETUPS:
        if status.get(setup) != "ok":
            if setup in status:
                print(f"| {label} | — | — | — | — | — | — |")
            continue
        for key, plabel in PASSES:
            r = rows.get((setup, key))
            if r is None:
                continue
            if r["runs"] > 1:
                plabel += f", median of {r['runs']}"
            if r["errors"]:
                plabel += f" — {r['errors']} ERRORS"
            ratio = None
            if setup == "thinagent":
                t, c = added("thinagent", key), added("clamonacc", key)
                ratio = t / c if t is not None and c else None
            elif setup == "clamonacc" and added(setup, key) is not None:
                ratio = 1.0
            add = None if setup == "none" else added(setup, key)
            print(f"| {label} | {plabel} | {r['opens']} | {r['ns'] / 1e9:.3f} | {fmt(us(setup, key))} "
                  f"| {fmt(add, signed=True) if setup != 'none' else '—'} | {fmt(ratio, 3)} |")
    print()
    for setup, label in SETUPS:
        if status.get(setup, "ok") != "ok":
            print(f"- {label}: NOT MEASURED — {status[setup]}")
        for key, _ in PASSES:
            r = rows.get((setup, key))
            if r and r["runs"] > 1:
                spread = ", ".join(f"{n / r['opens'] / 1000:.2f}" for n in r["all_ns"])
                print(f"- {setup} {key}: µs/open of each run: {spread}")

    def total_added(setup):
        parts = [added(setup, key) for key, _ in PASSES]
        if any(p is None for p in parts):
            return None
        return sum((rows[(setup, key)]["opens"] * p) / 1e6 for (key, _), p in zip(PASSES, parts))

    print()
    warm = added("thinagent", "read-warm")
    if warm is None:
        print(f"- goal: warm-cache overhead <= {WARM_GOAL_US:g} µs/open — NOT MEASURED")
    else:
        verdict = "met" if warm <= WARM_GOAL_US else "NOT met"
        print(f"- goal: warm-cache overhead <= {WARM_GOAL_US:g} µs/open: ThinAgent {warm:+.2f} µs/open — {verdict}")
    ta, cl = total_added("thinagent"), total_added("clamonacc")
    if ta is None or cl is None:
        print("- goal: total overhead <= 1/5 of clamonacc's — NOT MEASURED")
    elif cl <= 0:
        print(f"- goal: total overhead <= 1/5 of clamonacc's — NOT MEASURED (clamonacc added {cl:.3f} s: no overhead to compare with)")
    else:
        verdict = "met" if ta <= TOTAL_GOAL_RATIO * cl else "NOT met"
        print(f"- goal: total overhead <= 1/5 of clamonacc's: ThinAgent {ta:.3f} s vs clamonacc {cl:.3f} s added "
              f"(ratio {ta / cl:.3f}) — {verdict}")


if __name__ == "__main__":
    main()
