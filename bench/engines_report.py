#!/usr/bin/env python3
"""Table and goal checks of bench/engines_vs_pipeline.sh.

    engines_report.py RESULTS_TSV SESSIONS_TXT

RESULTS_TSV: set, what (raw-yara, raw-engines, raw-engines+blake3,
pipeline), files, bytes, runs, median ns, ns of each run, found/expected,
load average before and after, extra. SESSIONS_TXT: the line of
idle_sessions.py (or empty). Prints a Markdown table and the goal lines of
issue 16: cold throughput of the pipeline >= 80 % (large files, MB/s) and
>= 60 % (small files, files/s) of the raw engines the signatures require;
scanner memory per session ~0.3 MiB (+10 %). Standard library only.
"""

import sys

LABELS = {
    "raw-yara": "raw yara-x alone",
    "raw-engines": "raw engines the signatures require (yara-x + planned digests)",
    "raw-engines+blake3": "raw engines + BLAKE3 (the content-cache key)",
    "raw-socket": "the bytes through a Unix socket alone (64 KiB writes, one copy in, one out)",
    "raw-socket+engines+blake3": "socket + engines + BLAKE3 (a minimal pipeline in one process)",
    "pipeline": "ThinAgent pipeline, cold (thinagent-diag scan → fresh thinagent-scanner)",
}
GOALS = {"large": ("MB/s", 0.80), "small": ("files/s", 0.60)}
SESSION_GOAL_MIB = 0.3


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = []
    with open(sys.argv[1]) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            rows.append({
                "set": p[0], "what": p[1], "files": int(p[2]), "bytes": int(p[3]),
                "runs": int(p[4]), "ns": int(p[5]), "ns_runs": p[6], "found": p[7],
                "lb": p[8], "la": p[9], "extra": p[10] if len(p) > 10 else "",
            })
    for r in rows:
        s = r["ns"] / 1e9
        r["s"] = s
        r["files/s"] = r["files"] / s if s > 0 else 0.0
        r["MB/s"] = r["bytes"] / 1e6 / s if s > 0 else 0.0

    def get(set_, what):
        return next((r for r in rows if r["set"] == set_ and r["what"] == what), None)

    print("| set | what | files | MB | s (median) | runs, s | files/s | MB/s | pipeline ÷ this "
          "| found/expected | digests per pass | load avg (1 min) before → after |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---|---|---|")
    for r in rows:
        pipe = get(r["set"], "pipeline")
        unit = GOALS[r["set"]][0]
        ratio = "—" if pipe is None or r is pipe or r[unit] == 0 else f"{pipe[unit] / r[unit]:.2f}"
        runs = ", ".join(f"{int(x) / 1e9:.4g}" for x in r["ns_runs"].split(","))
        digests = " ".join(kv for kv in r["extra"].split()
                           if kv.split("=")[0] not in ("threads", "jobs", "passes"))
        passes = next((kv.split("=")[1] for kv in r["extra"].split() if kv.startswith("passes=")), None)
        if passes and passes != "1":
            runs += f" (each run {passes} passes, s per pass)"
        print(f"| {r['set']} | {LABELS.get(r['what'], r['what'])} | {r['files']} "
              f"| {r['bytes'] / 1e6:.1f} | {r['s']:.4g} | {runs} | {r['files/s']:.0f} "
              f"| {r['MB/s']:.1f} | {ratio} | {r['found']} | {digests or '—'} "
              f"| {r['lb'].split()[0]} → {r['la'].split()[0]} |")
    print()
    for set_ in ("large", "small"):
        pipe, raw, yara = get(set_, "pipeline"), get(set_, "raw-engines"), get(set_, "raw-yara")
        if pipe is None or raw is None:
            continue
        unit, goal = GOALS[set_]
        ratio = pipe[unit] / raw[unit]
        verdict = "met" if ratio >= goal else "not met"
        alone = f"; against raw yara-x alone: {pipe[unit] / yara[unit]:.0%}" if yara else ""
        print(f"- goal, {set_} files cold: pipeline >= {goal:.0%} of the raw engines the "
              f"signatures require ({unit}): {pipe[unit]:.1f} vs {raw[unit]:.1f}, "
              f"{ratio:.0%} — {verdict}{alone}")
    line = open(sys.argv[2]).read().strip()
    if line:
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        per_mib = float(f["per_session_kib"]) / 1024
        limit = SESSION_GOAL_MIB * 1.1
        verdict = "met" if per_mib <= limit else "not met"
        print(f"- goal, memory per session ~{SESSION_GOAL_MIB} MiB (+10 %: <= {limit:.2f} MiB): "
              f"scanner VmRSS {int(f['rss_before_kib']) / 1024:.1f} MiB with 1 session, "
              f"{int(f['rss_after_kib']) / 1024:.1f} MiB with {int(f['sessions']) + 1} idle sessions: "
              f"{per_mib:.3f} MiB ({f['per_session_kib']} KiB) per session — {verdict} "
              f"(load average {f.get('load_before', '?')} → {f.get('load_after', '?')})")


if __name__ == "__main__":
    main()
