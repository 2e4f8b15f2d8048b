"""CPU time of the content scan over files crafted to make it slow; one JSON object.

An operator may plant a file in the project that makes every erasure's content scan slow (its
work must stay about linear in the file's size). Each file is read as the erasure reads it
(:func:`visage_ml.rights.content_scan._looked_at`), sizes unknown (every size may be sought)
and one size sought (a photograph's, which nothing in the file has):

- ``jpegs_apart``: 8-byte JPEGs (SOI, an empty COM, EOI), 248 zero bytes after each, after a
  pickle's first bytes (35 MiB: as many JPEGs as a file of its size may hold); the runs of them
  are given, each told by :func:`~visage_ml.rights.embedded.kind`;
- ``py2_pickle0``: ``pickle.dumps`` of Python 2.7 (protocol 0) of a list of JPEG photographs
  (noise): each a ``str``, ``S'...'`` with every byte outside printable ASCII a ``\\xhh``
  escape, read as text for base64 runs too (38 MiB);
- ``py2_short_strings``: ``pickle.dumps`` of Python 2.7 (protocol 0) of a list of random 4-byte
  ``str``, each memoized (``S'...'``, ``p1``: 32 MiB);
- ``short_bytes``: ``pickle.dumps`` (protocol 3) of a list of random 4-byte ``bytes`` (each
  SHORT_BINBYTES, memoized: 36 MiB);
- ``sha256_log``: a text log of SHA-256s as ``sha256sum`` prints them (64 MiB: 64 hex digits,
  two spaces, a file's name), each line's run of 64 letters a candidate key's, half of them in
  upper case (as Windows' ``certutil`` prints them: letters of base32's alphabet too);
- ``random_64``, ``random_512``: random bytes (64 and 512 MiB: a sealed file, a model's
  weights), told nothing by their first 4 KiB, each of their blocks searched for a tar's header
  (:class:`~visage_ml.rights.embedded_archives.HeaderSearch`; before, one of a size not sought
  was not read).

Each file is read in a child process with this checkout's code and with ``--before``'s (another
checkout, e.g. ``git archive <commit> visage_ml | tar -x -C /tmp/before``) when given, the
checkouts taking turns ``--repeat`` times; reported: ``cpu_s``, the min and max of the reads'
CPU time (``time.process_time``), and ``held``, how many SHA-256s the read found inside.

    python benchmarks/bench_crafted_scan.py [--repeat 3] [--only jpegs_apart] [--before DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The size sought where one is: a photograph's, which no stretch of these files has.
SOUGHT = 23_456
MIB = 1 << 20


class _Sought:
    def may_match(self, size: int) -> bool:
        return size == SOUGHT


def _jpegs_apart(mib: int = 35) -> bytes:
    tiny = b"\xff\xd8\xff\xfe\x00\x02\xff\xd9"
    return b"\x80\x04" + (tiny + bytes(248)) * (mib * MIB // 256)


def _py2_repr(data: bytes) -> bytes:
    """``repr(data)`` of a Python 2 ``str`` (as tests/unit/test_erasure_inside_pickles.py)."""
    quote = b'"' if b"'" in data and b'"' not in data else b"'"
    named = {9: b"\\t", 10: b"\\n", 13: b"\\r", 92: b"\\\\", quote[0]: b"\\" + quote}
    table = [
        named.get(c) or (bytes([c]) if 0x20 <= c < 0x7F else b"\\x%02x" % c) for c in range(256)
    ]
    return quote + b"".join(table[c] for c in data) + quote


def _photos(total: int) -> list[bytes]:
    """Distinct JPEGs of noise (as benchmarks/bench_inside_large.py), ``total`` bytes in all."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (160, 160, 3), np.uint8)).save(out, "JPEG", quality=90)
    jpeg = out.getvalue()
    photos, n = [], 0
    while n < total:
        comment = b"photo %08d" % len(photos)
        photo = jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]
        photos.append(photo)
        n += len(photo)
    return photos


def _py2_pickle0(mib: int = 38) -> bytes:
    out = [b"(lp0\n"]
    n, i = 0, 1
    for photo in _photos(mib * MIB * 10 // 27):  # about 2.8 bytes of repr a byte of JPEG
        s = b"S" + _py2_repr(photo) + b"\np%d\na" % i
        out.append(s)
        n, i = n + len(s), i + 1
        if n >= mib * MIB:
            break
    return b"".join(out) + b"."


def _py2_short_strings(mib: int = 32) -> bytes:
    rng = random.Random(0)
    out, n, i = [b"(lp0\n"], 0, 1
    while n < mib * MIB:
        s = b"S" + _py2_repr(rng.randbytes(4)) + b"\np%d\na" % i
        out.append(s)
        n, i = n + len(s), i + 1
    return b"".join(out) + b"."


def _short_bytes(mib: int = 32) -> bytes:
    import pickle

    rng = random.Random(0)
    return pickle.dumps([rng.randbytes(4) for _ in range(mib * MIB // 8)], protocol=3)


def _sha256_log(mib: int = 64) -> bytes:
    import hashlib

    out, n, i = [], 0, 0
    while n < mib * MIB:
        digest = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        line = f"{digest.upper() if i % 2 else digest}  data/raw/s{i % 977:04d}/{i}.png\n"
        out.append(line.encode())
        n, i = n + len(line), i + 1
    return b"".join(out)


def _random(mib: int) -> bytes:
    import numpy as np

    return np.random.default_rng(0).bytes(mib * MIB)


CASES = {
    "jpegs_apart": _jpegs_apart,
    "py2_pickle0": _py2_pickle0,
    "py2_short_strings": _py2_short_strings,
    "short_bytes": _short_bytes,
    "sha256_log": _sha256_log,
    "random_64": lambda: _random(64),
    "random_512": lambda: _random(512),
}


def _child(path: Path, sought: bool) -> dict[str, object]:
    from visage_ml.rights import content_scan, embedded

    sizes = embedded.Floored(_Sought()) if sought else None
    start = time.process_time()
    read, _ = content_scan._looked_at(path, sizes)
    return {"cpu_s": time.process_time() - start, "held": len(read.held or ())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", action="append", choices=sorted(CASES), default=None)
    ap.add_argument("--before", type=Path, default=None, help="a checkout of the earlier code")
    ap.add_argument("--scratch", type=Path, default=None)
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sought", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.sought)))
        return
    here = Path(__file__).resolve().parents[1]
    codes = {"after": here, **({"before": args.before.resolve()} if args.before else {})}
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        for name in args.only or CASES:
            path = Path(tmp) / f"{name}.pkl"
            path.write_bytes(CASES[name]())
            case: dict[str, object] = {"file_mib": round(path.stat().st_size / MIB, 1)}
            for sought in (False, True):
                runs: dict[str, list[dict[str, object]]] = {k: [] for k in codes}
                for _ in range(args.repeat):
                    for key, code in codes.items():
                        cmd = [sys.executable, __file__, "--child", str(path)]
                        cmd += ["--sought"] if sought else []
                        env = {**os.environ, "PYTHONPATH": str(code)}
                        out = subprocess.run(
                            cmd, capture_output=True, text=True, check=True, env=env
                        ).stdout
                        runs[key].append(json.loads(out.strip().splitlines()[-1]))
                case["one_size_sought" if sought else "sizes_unknown"] = {
                    key: {
                        "cpu_s": [
                            round(min(r["cpu_s"] for r in rs), 2),  # type: ignore[type-var]
                            round(max(r["cpu_s"] for r in rs), 2),  # type: ignore[type-var]
                        ],
                        "held": rs[-1]["held"],
                    }
                    for key, rs in runs.items()
                }
            results[name] = case
            path.unlink()
    print(
        json.dumps(
            {**results, "python": platform.python_version(), "cpus": os.cpu_count()}, indent=1
        )
    )


if __name__ == "__main__":
    main()
