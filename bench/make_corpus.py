#!/usr/bin/env python3
"""Generates the benchmark corpus and one signature set in both dialects.

Layout written under OUT:
  corpus/small/   N random files of 4-64 KiB, plus planted detections
  corpus/large/   K random files of LARGE_MB MiB (the first carries a YARA hit)
  sigs/thinagent/ bench.hdb (EICAR + hash signatures, 1,000 lines), bench.yar
  sigs/clamd/     the same bench.hdb, and bench.ndb converted from bench.yar
  expected.txt    how many files of each set must be reported infected

Everything is derived from --seed, so two runs with the same arguments write
identical files. Python standard library only.
"""

import argparse
import hashlib
import os
import random
import re
import sys

EICAR = (
    rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
)

PLANTED_EICAR = 10
PLANTED_HASH = 10
YARA_TEXT_RULES = 10
YARA_WILDCARD_RULES = 6
YARA_JUMP_RULES = 4


def yara_rules(rng):
    """A small YARA set of the shapes ClamAV's .ndb can express: one text or
    hex string per rule (with ?? wildcards and [n-m] jumps), condition $a.
    Returns (yara source, list of (rule name, instantiate(rng) -> bytes))."""
    out = []
    plants = []
    for i in range(YARA_TEXT_RULES):
        name = f"Bench_Yara_Text_{i}"
        text = f"ThinAgentBench-{rng.getrandbits(64):016x}"
        out.append(f'rule {name} {{\n  strings:\n    $a = "{text}"\n  condition:\n    $a\n}}\n')
        plants.append((name, lambda r, t=text: t.encode()))
    for i in range(YARA_WILDCARD_RULES):
        name = f"Bench_Yara_Wildcard_{i}"
        head = rng.randbytes(6)
        tail = rng.randbytes(6)
        hexs = " ".join(f"{b:02X}" for b in head) + " ?? " + " ".join(f"{b:02X}" for b in tail)
        out.append(f"rule {name} {{\n  strings:\n    $a = {{ {hexs} }}\n  condition:\n    $a\n}}\n")
        plants.append((name, lambda r, h=head, t=tail: h + r.randbytes(1) + t))
    for i in range(YARA_JUMP_RULES):
        name = f"Bench_Yara_Jump_{i}"
        head = rng.randbytes(8)
        tail = rng.randbytes(8)
        hexs = " ".join(f"{b:02X}" for b in head) + " [4-16] " + " ".join(f"{b:02X}" for b in tail)
        out.append(f"rule {name} {{\n  strings:\n    $a = {{ {hexs} }}\n  condition:\n    $a\n}}\n")
        plants.append((name, lambda r, h=head, t=tail: h + r.randbytes(r.randint(4, 16)) + t))
    return "\n".join(out), plants


RULE_RE = re.compile(
    r"rule\s+(\w+)\s*\{\s*strings:\s*\$a\s*=\s*(\"(?:[^\"\\]|\\.)*\"|\{[^}]*\})\s*(\w+)?\s*"
    r"condition:\s*(\$a|any of them)\s*\}",
    re.S,
)


def yara_to_ndb(source):
    """Converts the simple YARA subset (one text or hex string, condition $a
    or `any of them`, no modifiers) to ClamAV .ndb lines. Returns (lines,
    skipped rule names)."""
    lines, skipped = [], []
    for m in RULE_RE.finditer(source):
        name, string, modifier, _cond = m.groups()
        if modifier:
            skipped.append(name)
            continue
        if string.startswith('"'):
            text = bytes(string[1:-1], "utf-8").decode("unicode_escape").encode("latin-1")
            body = text.hex()
        else:
            parts = []
            for tok in string[1:-1].split():
                if tok == "??":
                    parts.append("??")
                elif re.fullmatch(r"\[\d+-\d+\]", tok):
                    parts.append("{" + tok[1:-1] + "}")
                elif re.fullmatch(r"[0-9A-Fa-f]{2}", tok):
                    parts.append(tok.lower())
                else:
                    parts = None
                    break
            if parts is None:
                skipped.append(name)
                continue
            body = "".join(parts)
        # .ndb: MalwareName:TargetType:Offset:HexSignature (0 = any file).
        lines.append(f"{name}:0:*:{body}")
    declared = re.findall(r"^rule\s+(\w+)", source, re.M)
    converted = {l.split(":", 1)[0] for l in lines}
    skipped += [n for n in declared if n not in converted and n not in skipped]
    return lines, skipped


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--small", type=int, default=2000, help="random small files")
    ap.add_argument("--large", type=int, default=3, help="large files")
    ap.add_argument("--large-mb", type=int, default=100, help="size of each large file, MiB")
    ap.add_argument("--hash-sigs", type=int, default=1000, help="lines in bench.hdb")
    ap.add_argument("--seed", type=int, default=5317)
    a = ap.parse_args()
    rng = random.Random(a.seed)

    small = os.path.join(a.out, "corpus", "small")
    large = os.path.join(a.out, "corpus", "large")
    sig_ta = os.path.join(a.out, "sigs", "thinagent")
    sig_cl = os.path.join(a.out, "sigs", "clamd")
    for d in (small, large, sig_ta, sig_cl):
        os.makedirs(d, exist_ok=True)

    yar, plants = yara_rules(rng)
    needed = PLANTED_EICAR + PLANTED_HASH + len(plants)
    if a.small < needed:
        sys.exit(f"--small must be at least {needed}")

    hdb = [f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Bench.Eicar"]
    infected_small = 0
    # Which small files carry what: the first PLANTED_HASH are hash-listed,
    # the next ones carry one YARA pattern each; EICAR files come on top.
    for i in range(a.small):
        size = rng.randint(4 * 1024, 64 * 1024)
        data = bytearray(rng.randbytes(size))
        if i < PLANTED_HASH:
            hdb.append(f"{hashlib.md5(data).hexdigest()}:{size}:Bench.Hash.Listed.{i}")
            infected_small += 1
        elif i < PLANTED_HASH + len(plants):
            _name, make = plants[i - PLANTED_HASH]
            pattern = make(rng)
            at = rng.randint(0, size - len(pattern))
            data[at : at + len(pattern)] = pattern
            infected_small += 1
        write(os.path.join(small, f"f{i:06d}.bin"), data)
    for i in range(PLANTED_EICAR):
        write(os.path.join(small, f"eicar{i:02d}.com"), EICAR)
        infected_small += 1
    while len(hdb) < a.hash_sigs:
        n = len(hdb)
        hdb.append(f"{rng.getrandbits(128):032x}:{rng.randint(1, 1 << 20)}:Bench.Hash.Random.{n}")
    hdb_text = "\n".join(hdb) + "\n"

    infected_large = 0
    block = 1024 * 1024
    for i in range(a.large):
        path = os.path.join(large, f"large{i:02d}.bin")
        with open(path, "wb") as f:
            for b in range(a.large_mb):
                data = bytearray(rng.randbytes(block))
                if i == 0 and b == a.large_mb - 1:
                    pattern = plants[-1][1](rng)
                    data[block - 4096 : block - 4096 + len(pattern)] = pattern
                f.write(data)
        if i == 0:
            infected_large += 1

    ndb, skipped = yara_to_ndb(yar)
    if skipped:
        print(f"YARA rules not convertible to .ndb (left out of both sets): {skipped}",
              file=sys.stderr)
    write(os.path.join(sig_ta, "bench.hdb"), hdb_text.encode())
    write(os.path.join(sig_ta, "bench.yar"), yar.encode())
    write(os.path.join(sig_cl, "bench.hdb"), hdb_text.encode())
    write(os.path.join(sig_cl, "bench.ndb"), ("\n".join(ndb) + "\n").encode())
    with open(os.path.join(a.out, "expected.txt"), "w") as f:
        f.write(f"small {a.small + PLANTED_EICAR} {infected_small}\n")
        f.write(f"large {a.large} {infected_large}\n")
    print(f"corpus: {a.small + PLANTED_EICAR} small files ({infected_small} infected), "
          f"{a.large} x {a.large_mb} MiB large ({infected_large} infected); "
          f"{len(hdb)} hash signatures, {len(plants)} YARA rules -> {len(ndb)} .ndb signatures")


if __name__ == "__main__":
    main()
