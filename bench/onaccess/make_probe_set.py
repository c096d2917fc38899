#!/usr/bin/env python3
"""Writes the on-access benchmark's signatures and probe files.

    make_probe_set.py PROBE_DIR SIGS_DIR

PROBE_DIR (on the benchmark's tmpfs): eicar.com (the EICAR test file),
sample.bin (4 KiB of seeded random bytes, listed by MD5 in the signatures),
clean.txt (listed nowhere). SIGS_DIR: thinagent/bench.hdb and clamd/bench.hdb,
the same bytes: MD5 signatures of EICAR and sample.bin plus 8 random hashes
that match nothing. Both scanners load only this file (thinagent-scanner with
--no-builtin), so both have exactly the same detections. Standard library only.
"""

import hashlib
import os
import random
import sys

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    probe, sigs = sys.argv[1], sys.argv[2]
    rng = random.Random(6)
    sample = bytes(rng.getrandbits(8) for _ in range(4096))
    clean = b"a clean file: the agent must let this one open\n"
    write(os.path.join(probe, "eicar.com"), EICAR)
    write(os.path.join(probe, "sample.bin"), sample)
    write(os.path.join(probe, "clean.txt"), clean)
    lines = [
        f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Bench.Eicar",
        f"{hashlib.md5(sample).hexdigest()}:{len(sample)}:Bench.Sample",
    ]
    for n in range(8):
        lines.append(f"{rng.getrandbits(128):032x}:{rng.randint(1, 1 << 16)}:Bench.Random.{n}")
    hdb = ("\n".join(lines) + "\n").encode()
    write(os.path.join(sigs, "thinagent", "bench.hdb"), hdb)
    write(os.path.join(sigs, "clamd", "bench.hdb"), hdb)


if __name__ == "__main__":
    main()
