"""The text reader over a large log holding no key; one JSON object.

Every erasure, every ``visage privacy doctor`` and every certificate verification reads each
text file of the project for base64 runs and for an erased subject's key as an operator prints
one (:func:`visage_ml.rights.embedded_text._runs`). A log of ``--mib`` MiB is made of lines as
a service writes them, full of what is near a printed key and is none: ISO timestamps
(``12:34:56``), UUIDs, MAC and IPv6 addresses, hex ids and SHA-256s, a TLS certificate's
SHA-256 fingerprint (32 colon-separated hex pairs: tested as a key is, and no key), a SHA-1
one (20 pairs), a hex dump's lines of 16 space-separated pairs, a 48-byte file as ``xxd``
shows it (three lines from offset 0) and as ``xxd -p`` wraps it (60 hex digits, then 30),
lists of small numbers and Python ``repr`` of short bytes. It is read as the copies step does
(an erased subject's key sought by its tag: one keyed hash a candidate); reported, the best of
``--repeat`` reads:

- ``seconds``: the whole reader (:func:`~visage_ml.rights.embedded_text._runs`);
- ``found``: what it gave (none: the log holds no key).

    PYTHONPATH=. python benchmarks/bench_text_reader.py [--mib 45] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Callable

from visage_ml.rights import embedded_text


class _Sought:
    """What the copies step seeks, as far as the reader asks: photographs (large) and one
    erased subject's key, told by a keyed tag (:meth:`key_test`)."""

    smallest = 20_000

    def __init__(self) -> None:
        self._tag_key = os.urandom(32)
        self._tags = {self._tag(os.urandom(32))}

    def _tag(self, raw: bytes) -> bytes:
        return hmac.new(self._tag_key, raw, hashlib.sha256).digest()

    def may_match(self, size: int) -> bool:
        return size == 32 or size >= self.smallest

    def key_test(self) -> Callable[[bytes], bool]:
        return lambda raw: self._tag(raw) in self._tags


def _pairs(rng: random.Random, n: int, sep: str) -> str:
    return sep.join(f"{rng.randrange(256):02x}" for _ in range(n))


def log_text(mib: int, seed: int = 11) -> bytes:
    """About ``mib`` MiB of a service's log lines, holding no key."""
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < mib << 20:
        t = f"2024-05-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:"
        t += f"{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z"
        mac = _pairs(rng, 6, ":")
        pick = rng.random()
        if pick < 0.55:
            line = (
                f"{t} INFO req={uuid.UUID(int=rng.getrandbits(128))} client={mac} "
                f"ip=fe80::{rng.getrandbits(16):x}:{rng.getrandbits(16):x} "
                f"trace={rng.getrandbits(64):016x} took={rng.randrange(900)}ms path=/v1/identify"
            )
        elif pick < 0.75:
            line = f"{t} DEBUG blob sha256={rng.randbytes(32).hex()} size={rng.randrange(10**6)}"
        elif pick < 0.85:
            line = f"{t} DEBUG {rng.randrange(1 << 16):08x}: {_pairs(rng, 8, ' ')}  "
            line += f"{_pairs(rng, 8, ' ')}  |................|"
        elif pick < 0.9:
            line = f"{t} INFO peer cert SHA256 Fingerprint={_pairs(rng, 32, ':').upper()}"
        elif pick < 0.92:
            line = f"{t} INFO peer cert SHA1 Fingerprint={_pairs(rng, 20, ':').upper()}"
        elif pick < 0.935:  # a file of 48 bytes as xxd shows it: from offset 0, no key alone
            line = "\n".join(
                f"{at:08x}: "
                + " ".join(f"{rng.getrandbits(16):04x}" for _ in range(8))
                + "  ................"
                for at in (0, 16, 32)
            )
        elif pick < 0.95:  # hex wrapped as xxd -p wraps it, 60 digits a line: 45 bytes
            line = f"{rng.randbytes(30).hex()}\n{rng.randbytes(15).hex()}"
        else:
            nums = ", ".join(str(rng.randrange(256)) for _ in range(rng.randrange(3, 12)))
            line = f"{t} DEBUG batch=[{nums}] head={rng.randbytes(6)!r}"
        lines.append(line)
        size += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=45)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = log_text(args.mib)
    sought = _Sought()
    best, found = float("inf"), 0
    for _ in range(args.repeat):
        start = time.perf_counter()
        found = sum(1 for _ in embedded_text._runs(data, sought))
        best = min(best, time.perf_counter() - start)
    print(
        json.dumps(
            {
                "mib": round(len(data) / (1 << 20), 1),
                "seconds": round(best, 3),
                "found": found,
                "repeat": args.repeat,
                "python": sys.version.split()[0],
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
