#!/usr/bin/env python3
"""Prints the scanner-farm storm's tables from a run directory written by
bench/farm_storm.sh: the measured table (one row per mode: local caches
only, and with the farm's shared cache), the Redis entry sizes, and the
model of a farm of FARM_HOSTS hosts x FARM_DESKTOPS desktops.

Usage: farm_report.py RUN_DIR SCANNERS DESKTOPS CORPUS_DIR
Python standard library only. MB = 10^6 bytes.
"""

import csv
import glob
import json
import os
import sys


def metric(text, name):
    """Sum of every sample of `name` (a metric name with its labels, or a
    bare name: every label set)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name or (("{" not in name) and key.split("{")[0] == name and "guest=" not in key):
            try:
                total += float(value)
            except ValueError:
                pass
    return total


def percentile(values, p):
    if not values:
        return 0
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def mode_row(run, mode, scanners):
    meta = json.load(open(os.path.join(run, f"{mode}.json")))
    texts = [open(f).read() for f in sorted(glob.glob(os.path.join(run, f"{mode}-metrics-*.txt")))]
    assert len(texts) == scanners, f"{mode}: {len(texts)} metrics files"

    def total(name):
        return sum(metric(t, name) for t in texts)

    lat = []
    for path in glob.glob(os.path.join(run, f"{mode}-desk-*.csv")):
        with open(path) as f:
            lat += [int(r["latency_us"]) for r in csv.DictReader(f)]
    queries = total("thinagent_scanner_queries_total")
    guest_hits = total('thinagent_scanner_cache_hits_total{kind="guest"}')
    content_hits = total('thinagent_scanner_cache_hits_total{kind="content"}')
    farm_hit = total('thinagent_scanner_farm_requests_total{op="content",result="hit"}')
    farm_miss = total('thinagent_scanner_farm_requests_total{op="content",result="miss"}')
    moved = total("thinagent_scanner_bytes_read_total") + total(
        "thinagent_scanner_inline_content_bytes_total"
    )
    return dict(
        mode=mode,
        seconds=meta["seconds"],
        cpu=meta["cpu_seconds"],
        loadavg=meta["loadavg"],
        queries=int(queries),
        answered=len(lat),
        moved=moved,
        fps=queries / meta["seconds"],
        p50=percentile(lat, 50) / 1000,
        p99=percentile(lat, 99) / 1000,
        # A farm hit is a content-cache hit too (it fills the local cache).
        scans=int(queries - guest_hits - content_hits),
        local_hits=int(content_hits - farm_hit),
        farm_hits=int(farm_hit),
        farm_misses=int(farm_miss),
        farm_rate=farm_hit / (farm_hit + farm_miss) if farm_hit + farm_miss else None,
        publish_dropped=int(total('thinagent_scanner_farm_requests_total{op="publish",result="dropped"}')),
        put_dropped=int(total('thinagent_scanner_farm_requests_total{op="put",result="dropped"}')),
    )


def main():
    run, scanners, desktops, corpus = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sizes = [os.path.getsize(p) for p in glob.glob(os.path.join(corpus, "**"), recursive=True)
             if os.path.isfile(p)]
    files, mean = len(sizes), sum(sizes) / len(sizes)
    rows = [mode_row(run, m, scanners) for m in ("local", "farm")]
    redis = json.load(open(os.path.join(run, "redis.json")))
    load = open("/proc/loadavg").read().split()[:3]

    print(f"### Measured: {scanners} scanners, {desktops} desktops, {files} files "
          f"(mean {mean / 1024:.1f} KiB), every desktop opens every file\n")
    print("| cache | queries | content moved MB | wall s | files/s | p50 ms | p99 ms "
          "| engine scans | local content hits | farm hits | farm hit rate | scanner CPU s | load avg after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rate = "—" if r["farm_rate"] is None else f"{100 * r['farm_rate']:.0f} %"
        label = "local caches only" if r["mode"] == "local" else "farm (shared Redis)"
        print(f"| {label} | {r['queries']} | {r['moved'] / 1e6:.1f} | {r['seconds']:.2f} "
              f"| {r['fps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['scans']} "
              f"| {r['local_hits']} | {r['farm_hits']} | {rate} | {r['cpu']:.2f} | {r['loadavg']} |")
    for r in rows:
        if r["answered"] != r["queries"]:
            print(f"\nWARNING: {r['mode']}: {r['answered']} latencies for {r['queries']} queries")
        if r["publish_dropped"] or r["put_dropped"]:
            print(f"\nNOTE: {r['mode']}: writes dropped (queue full): put {r['put_dropped']}, "
                  f"publish {r['publish_dropped']}")
    per_event = redis["stream_bytes"] / redis["stream_entries"] if redis["stream_entries"] else 0
    print(f"\nRedis MEMORY USAGE (measured): content entry {redis['content_entry']} B, "
          f"detection entry {redis['detection_entry']} B, guest entry {redis['guest_entry']} B, "
          f"events stream {redis['stream_bytes']} B for {redis['stream_entries']} entries "
          f"({per_event:.0f} B each); {redis['content_keys']} content keys, "
          f"{redis['detection_keys']} detection keys; used_memory {redis['used_memory']} B. "
          f"Load average at the end: {' '.join(load)} on {os.cpu_count()} CPUs.")

    # --- model -----------------------------------------------------------
    local, farm = rows
    cal = json.load(open(os.path.join(run, "calibration.json")))
    hosts = int(os.environ.get("FARM_HOSTS", 50))
    per_host = int(os.environ.get("FARM_DESKTOPS", 200))
    logon = int(os.environ.get("FARM_LOGON_FILES", 5000))
    # Measured: engine scans per (scanner, distinct file) without the farm,
    # and with it the share of the other scanners that still scanned a file
    # (they asked Redis before the first scan's verdict was written).
    r_local = local["scans"] / (scanners * files)
    p_race = max(0.0, (farm["scans"] / files - 1) / (scanners - 1))
    # CPU per engine scan (calibration: cold minus warm desktop, per file),
    # per query without a scan (local run), per farm lookup (farm run).
    c_scan = max(0.0, (cal["cold_cpu"] - cal["warm_cpu"]) / (files * cal["runs"]))
    c_query = max(0.0, (local["cpu"] - local["scans"] * c_scan) / local["queries"])
    lookups = farm["farm_hits"] + farm["farm_misses"]
    c_lookup = max(0.0, (farm["cpu"] - farm["queries"] * c_query - farm["scans"] * c_scan)
                   / lookups) if lookups else 0.0
    lookups_per_scanner_file = lookups / (scanners * files)
    moved_per_query = {r["mode"]: r["moved"] / r["queries"] for r in rows}
    queries = hosts * per_host * logon
    scans_local = hosts * logon * r_local
    scans_farm = logon * (1 + (hosts - 1) * p_race)
    farm_lookups = hosts * logon * lookups_per_scanner_file
    # clamd's cost per small file, from the clamd table above (2 CPUs, 747
    # files/s at best: fdpass, 4 connections); not measured by this script.
    c_clamd = 2 / 747
    print(f"\n### Model: {hosts} hosts x {per_host} desktops, {logon} distinct files opened "
          f"per logon (assumed), all desktops log on in one storm\n")
    print(f"Measured inputs: engine scans per scanner and distinct file without the farm "
          f"{r_local:.2f}; share of the other scanners that scanned a file anyway with the "
          f"farm {p_race:.3f}; farm lookups per scanner and distinct file "
          f"{lookups_per_scanner_file:.2f}; content moved per query "
          f"{moved_per_query['local'] / 1024:.1f} KiB (local) / "
          f"{moved_per_query['farm'] / 1024:.1f} KiB (farm); scanner CPU per engine scan "
          f"{1e3 * c_scan:.3f} ms (hash + YARA set of the corpus; calibration: cold "
          f"{cal['cold_cpu']:.2f} s, warm {cal['warm_cpu']:.2f} s for {cal['runs']} x {files} "
          f"files), per "
          f"query without a scan {1e3 * c_query:.3f} ms, per farm lookup "
          f"{1e3 * c_lookup:.3f} ms.\n")
    print("| per morning storm | local caches only | farm (shared Redis) |")
    print("|---|---:|---:|")
    print(f"| queries | {queries:,.0f} | {queries:,.0f} |")
    print(f"| content moved, GB | {queries * moved_per_query['local'] / 1e9:,.1f} "
          f"| {queries * moved_per_query['farm'] / 1e9:,.1f} |")
    print(f"| engine scans | {scans_local:,.0f} | {scans_farm:,.0f} |")
    print(f"| engine CPU, core-s (this signature set) | {scans_local * c_scan:,.0f} "
          f"| {scans_farm * c_scan:,.0f} |")
    print(f"| engine CPU, core-s (at clamd's {1e3 * c_clamd:.1f} ms per small file) "
          f"| {scans_local * c_clamd:,.0f} | {scans_farm * c_clamd:,.0f} |")
    print(f"| farm lookups (CPU, core-s) | 0 | {farm_lookups:,.0f} "
          f"({farm_lookups * c_lookup:,.0f}) |")
    print(f"| per-query CPU without a scan (receive, hash, answer), core-s "
          f"| {queries * c_query:,.0f} | {queries * c_query:,.0f} |")
    entries = logon * redis["content_entry"]
    guests = hosts * per_host * redis["guest_entry"]
    print(f"| Redis memory, MB ({logon} verdicts + {hosts * per_host} guests + "
          f"100,000-entry stream) | — | {(entries + guests + 100_000 * per_event) / 1e6:,.1f} |")


if __name__ == "__main__":
    main()
