#!/usr/bin/env python3
"""Per-file latency against clamd, the way clamdscan talks to it.

One connection per file, N files in flight (threads): `zINSTREAM` (content in
64 KiB chunks, like `clamdscan --stream`) or `zFILDES` (the open file
descriptor passed over the Unix socket, like `clamdscan --fdpass`). Writes one
CSV line per file (path,round,latency_us,result,bytes: the same columns as
`thinagent-diag scan --latency-out`) and prints a one-line summary on stderr.
Python standard library only.
"""

import argparse
import concurrent.futures
import os
import socket
import struct
import sys
import time

CHUNK = 64 * 1024


def read_reply(s):
    reply = bytearray()
    while True:
        b = s.recv(4096)
        if not b:
            break
        reply += b
    return reply.split(b"\0")[0].decode(errors="replace")


def scan_stream(sock_path, path):
    with socket.socket(socket.AF_UNIX) as s, open(path, "rb") as f:
        s.connect(sock_path)
        s.sendall(b"zINSTREAM\0")
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            s.sendall(struct.pack(">I", len(data)) + data)
        s.sendall(struct.pack(">I", 0))
        return read_reply(s)


def scan_fdpass(sock_path, path):
    with socket.socket(socket.AF_UNIX) as s, open(path, "rb") as f:
        s.connect(sock_path)
        s.sendall(b"zFILDES\0")
        socket.send_fds(s, [b"\0"], [f.fileno()])
        return read_reply(s)


def files_of(args):
    out = []
    for a in args:
        if os.path.isdir(a):
            for root, _dirs, names in os.walk(a):
                out += [os.path.join(root, n) for n in sorted(names)]
        else:
            out.append(a)
    return sorted(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True, help="clamd LocalSocket")
    ap.add_argument("--mode", choices=["stream", "fdpass"], default="stream")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--csv", required=True)
    ap.add_argument("paths", nargs="+")
    a = ap.parse_args()
    scan = scan_stream if a.mode == "stream" else scan_fdpass
    files = files_of(a.paths)

    def one(path):
        t0 = time.perf_counter()
        try:
            reply = scan(a.socket, path)
        except OSError as e:
            reply = f"{e} ERROR"
        return path, int((time.perf_counter() - t0) * 1e6), reply

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as pool:
        results = list(pool.map(one, files))
    elapsed = time.perf_counter() - t0
    found = errors = 0
    total = 0
    with open(a.csv, "w") as out:
        out.write("path,round,latency_us,result,bytes\n")
        for path, us, reply in results:
            size = os.path.getsize(path)
            total += size
            if reply.endswith("FOUND"):
                found += 1
                result = reply.split(": ", 1)[-1][: -len(" FOUND")]
            elif reply.endswith("OK"):
                result = "OK"
            else:
                errors += 1
                result = "ERROR " + reply
            out.write(f"{path},0,{us},{result.replace(',', ';')},{size}\n")
    print(f"clamd {a.mode}: {len(files)} files, found {found}, errors {errors}, "
          f"{elapsed:.3f} s, {len(files) / elapsed:.1f} files/s, "
          f"{total / elapsed / 1e6:.2f} MB/s", file=sys.stderr)
    sys.exit(2 if errors else (1 if found else 0))


if __name__ == "__main__":
    main()
