#!/usr/bin/env python3
"""Prints the benchmark table from results.tsv (written by scan_vs_clamd.sh).

results.tsv columns: label, set, cache, files, bytes, seconds, found,
expected_found, errors, latency_csv ('-' when the run has no per-file
latencies). A latency CSV has a latency_us column and a bytes column (content
actually transferred). MB = 10^6 bytes. Python standard library only.
"""

import csv
import sys


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def latencies(path):
    if path == "-":
        return None, None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    lat = sorted(int(r["latency_us"]) for r in rows)
    moved = sum(int(r["bytes"] or 0) for r in rows)
    return lat, moved


def fmt_ms(us):
    return "—" if us is None else f"{us / 1000:.2f}"


def main():
    rows = []
    with open(sys.argv[1]) as f:
        for line in f:
            if not line.strip():
                continue
            label, set_, cache, files, size, secs, found, expected, errors, lat_csv = (
                line.rstrip("\n").split("\t")
            )
            lat, moved = latencies(lat_csv)
            secs = float(secs)
            rows.append(
                dict(
                    label=label,
                    set=set_,
                    cache=cache,
                    files=int(files),
                    bytes=int(size),
                    secs=secs,
                    fps=int(files) / secs,
                    mbps=int(size) / secs / 1e6,
                    p50=percentile(lat, 50) if lat else None,
                    p99=percentile(lat, 99) if lat else None,
                    moved=moved,
                    found=f"{found}/{expected}",
                    errors=int(errors),
                )
            )

    print("| scanner (method) | set | cache | files | s | files/s | MB/s | p50 ms | p99 ms "
          "| content moved MB | found/expected | errors |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        moved = "—" if r["moved"] is None else f"{r['moved'] / 1e6:.1f}"
        print(f"| {r['label']} | {r['set']} | {r['cache']} | {r['files']} | {r['secs']:.2f} "
              f"| {r['fps']:.0f} | {r['mbps']:.1f} | {fmt_ms(r['p50'])} | {fmt_ms(r['p99'])} "
              f"| {moved} | {r['found']} | {r['errors']} |")

    def best(set_, cache, key, thinagent):
        cands = [r for r in rows if r["set"] == set_ and r["cache"] == cache
                 and r["label"].startswith("ThinAgent") == thinagent]
        return max((r[key] for r in cands), default=None)

    print()
    goals = [
        ("small", "warm", "fps", 10.0, "files/s, small files, warm: ThinAgent >= 10x clamd"),
        ("small", "cold", "fps", 2.0, "files/s, small files, cold: ThinAgent >= 2x clamd"),
        ("large", "cold", "mbps", 1.0, "MB/s, large files, cold: ThinAgent >= clamd"),
        ("large", "warm", "mbps", 1.0, "MB/s, large files, warm: ThinAgent >= clamd"),
    ]
    for set_, cache, key, factor, text in goals:
        ta, cl = best(set_, cache, key, True), best(set_, cache, key, False)
        if ta is None or cl is None or cl == 0:
            print(f"- {text}: not measured")
            continue
        ratio = ta / cl
        verdict = "met" if ratio >= factor else "NOT met"
        print(f"- {text}: {ratio:.2f}x (best clamd method) — {verdict}")


if __name__ == "__main__":
    main()
