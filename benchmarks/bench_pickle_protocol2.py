"""Time of the reader of a large pickle of protocol 2 (or ``--protocol``) holding nothing
sought (:func:`visage_ml.rights.embedded.inside_large`, with a sizes filter, as the erasure and
the verifier call it); one JSON object.

The pickle is ``pickle.dump(rows, f, protocol=2)`` (``torch.save``'s protocol) of ``--mib``
MiB of rows of strings and bytes, as a researcher's dump of a data set's features holds them:
an id, a caption with accents, an embedding's bytes, a thumbnail's noise, a NumPy array. Each
``bytes`` value (the array's too) is held as ``_codecs.encode(str, 'latin1')``, which the reader
finds and looks through (:func:`~visage_ml.rights.embedded._pickled`); with ``--protocol`` 3 to
5, as it is, after its opcode and length (:func:`~visage_ml.rights.embedded._pickled_values`).
The file is about ``--mib`` MiB; it is read from its file (mapped,
over :data:`~visage_ml.rights.embedded.EMBED_MAX`) with this checkout's code, and with
``--before``'s (another checkout, e.g. ``git archive <commit> visage_ml | tar -x -C
/tmp/before``) when given, in a child process each, best of ``--repeat``:

- ``seconds``: the best read's time; ``peak_rss_mib``: the child's peak resident set;
- ``held``: how many SHA-256s it found inside (none sought: 0).

    python benchmarks/bench_pickle_protocol2.py [--mib 200] [--repeat 3] [--protocol 2]
        [--nested] [--compressed] [--before DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The size sought: a photograph's, which no value of the rows has.
SOUGHT = 23_456


class _Sought:
    def may_match(self, size: int) -> bool:
        return size == SOUGHT


def _child(path: Path, repeat: int) -> dict[str, object]:
    from visage_ml.rights import embedded

    best, held = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        # Wrapped as a scan wraps what it seeks (its smallest size worked out once).
        sizes = embedded.Floored(_Sought())
        with open(path, "rb") as fh:
            held = len(list(embedded.inside_large(fh, embedded.BINARY, sizes=sizes)))
        best = min(best, time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(best, 3), "peak_rss_mib": round(peak, 1), "held": held}


def _make(
    path: Path, mib: int, protocol: int, nested: bool = False, compressed: bool = False
) -> int:
    """The pickle of rows, ``mib`` MiB of it (with protocol 2, its random bytes as UTF-8: half
    again as many); with ``nested``, each row also holds a record pickled as ``bytes`` (a queue
    of serialised records), larger than what is sought, so that the reader looks inside each;
    with ``compressed``, ten gzip streams of about 1 KiB (a cache of compressed records), each
    decompressed by the reader."""
    import numpy as np

    rng = random.Random(0)
    rows, n = [], 0
    while n < mib << 20:
        i = len(rows)
        row = {
            "id": f"{i:032x}",
            "caption": f"visage n° {i}, façade, crème brûlée",
            "embedding": rng.randbytes(2048),
            "thumb": rng.randbytes(6000 + i % 512),
            "crop": np.frombuffer(rng.randbytes(3072), np.uint8),
            "label": i % 7,
        }
        size = 2048 + 6000 + i % 512 + 3072
        if nested:
            record = {"id": i, "scan": rng.randbytes(SOUGHT + 100 + i % 512)}
            row["record"] = pickle.dumps(record, protocol=4)
            size += SOUGHT + 200 + i % 512
        if compressed:
            row["zipped"] = [gzip.compress(rng.randbytes(1000) + b"x" * 100) for _ in range(10)]
            size += 10 * 1130
        rows.append(row)
        n += size * (3 if protocol == 2 else 2) // 2 + 120
    with open(path, "wb") as f:
        pickle.dump(rows, f, protocol=protocol)
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--protocol", type=int, default=2, choices=(2, 3, 4, 5))
    ap.add_argument("--before", type=Path, default=None, help="a checkout of the earlier code")
    ap.add_argument("--nested", action="store_true", help="each row holds a pickled record")
    ap.add_argument("--compressed", action="store_true", help="each row holds gzip streams")
    ap.add_argument("--scratch", type=Path, default=None)
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--make", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.repeat)))
        return
    if args.make is not None:
        print(_make(args.make, args.mib, args.protocol, args.nested, args.compressed))
        return
    here = Path(__file__).resolve().parents[1]
    codes = {"after": here, **({"before": args.before.resolve()} if args.before else {})}
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        path = Path(tmp) / "rows.pkl"
        # Made in a child process: Linux starts a child's peak resident set at its parent's.
        cmd = [sys.executable, __file__, "--make", str(path), "--mib", str(args.mib)]
        cmd += ["--protocol", str(args.protocol)] + (["--nested"] if args.nested else [])
        cmd += ["--compressed"] if args.compressed else []
        rows = int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        for name, code in codes.items():
            cmd = [sys.executable, __file__, "--child", str(path), "--repeat", str(args.repeat)]
            env = {**os.environ, "PYTHONPATH": str(code)}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        size = path.stat().st_size
    print(
        json.dumps(
            {
                "rows": rows,
                "protocol": args.protocol,
                "nested": args.nested,
                "compressed": args.compressed,
                "file_mib": round(size / (1 << 20), 1),
                **results,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
