#!/usr/bin/env python3
"""Scanner memory per session: RSS of a thinagent-scanner with N idle
sessions against none (bench/engines_vs_pipeline.sh).

    idle_sessions.py --socket PATH --pid PID [--sessions N] [--settle S]

Opens one session first (what the first session allocates once stays out
of the count), reads the scanner's VmRSS (/proc/PID/status), opens N more
Unix-socket connections and completes the handshake on each (a `Hello` of protocol
version 1, docs/protocol.md §5.1, and its `HelloAck`), waits S seconds
(default 1; well below the 10 s heartbeat interval, so no session needs to
answer a Ping), reads VmRSS again, closes them all, and prints one line:

    sessions=N rss_before_kib=A rss_after_kib=B per_session_kib=(B-A)/N

The scanner must allow N + 1 sessions of one guest (--max-sessions-per-guest).
Standard library only.
"""

import argparse
import socket
import struct
import sys
import time

MAGIC = b"TAGT"
HELLO = 0x0001
HELLO_ACK = 0x0002
HEADER = struct.Struct("<4sHHIQI")  # magic, version, msg_type, flags, request_id, payload_len
READ_CONTENT = 1 << 0
VERDICT_CACHE = 1 << 3


def hello(name=b"bench-idle"):
    payload = struct.pack(
        "<HHHHHHHHQII",
        1, 1,  # version_min, version_max
        2,  # os_kind: Linux
        len(name),
        0, 1, 0,  # agent version
        0,  # reserved
        READ_CONTENT | VERDICT_CACHE,
        65536,  # max_frame_len
        16,  # max_reads_in_flight
    ) + name
    return HEADER.pack(MAGIC, 1, HELLO, 0, 1, len(payload)) + payload


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("scanner closed the connection during the handshake")
        buf += chunk
    return buf


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--settle", type=float, default=1.0)
    a = ap.parse_args()
    conns = []
    try:
        conns.append(session(a.socket, 0))
        time.sleep(a.settle)
        before = rss_kib(a.pid)
        for n in range(a.sessions):
            conns.append(session(a.socket, n + 1))
        time.sleep(a.settle)
        after = rss_kib(a.pid)
    finally:
        for s in conns:
            s.close()
    per = (after - before) / a.sessions
    print(f"sessions={a.sessions} rss_before_kib={before} rss_after_kib={after} "
          f"per_session_kib={per:.1f}")


def session(path, n):
    """One connection with its handshake done."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(hello())
    magic, _v, msg_type, _f, rid, plen = HEADER.unpack(recv_exact(s, HEADER.size))
    recv_exact(s, plen)
    if magic != MAGIC or msg_type != HELLO_ACK or rid != 1:
        s.close()
        sys.exit(f"unexpected answer to Hello: type {msg_type:#06x} (session {n})")
    return s


if __name__ == "__main__":
    main()
