"""Ledger throughput: signed appends/s, verified entries/s, registry fold for 100k subjects,
and the same appends through the privacy core with witnessed checkpoints.

Goals (issue: Foundation): >= 2,000 signed appends/s, >= 20,000 verified entries/s, fold of
100k subjects < 2 s. Issue 15: >= 2,000 appends/s with checkpointing and a local (directory)
witness (`witnessed_appends_per_s`: every append through ``PrivacyCore``, a checkpoint cosigned
every 1,000 entries as params.yaml sets it). Also reported: narrowing events (withdrawals,
each witnessed before it returns) per second, and the cost of a witnessed checkpoint and of the
fail-closed open check on the large ledger. Prints one JSON object.

    python benchmarks/bench_ledger.py [--subjects 100000] [--appends 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from visage_ml.config import ProjectPaths
from visage_ml.privacy.consent import ConsentReceipt, sha256_text
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import Ledger
from visage_ml.privacy.registry import Registry
from visage_ml.privacy.witness import WITNESS_DIR_ENV
from visage_ml.privacy.witnessed import forget_checks


def _ledger(root: Path) -> Ledger:
    p = ProjectPaths(root)
    return Ledger(p.ledger, key_path=p.signing_key, public_key_path=p.ledger_public_key)


def _witnessed(root: Path, n: int, out: dict[str, object]) -> None:
    """Appends through the privacy core (witness cadence active) against plain signed appends,
    interleaved in chunks so that both see the same disk; then narrowing events."""
    paths = ProjectPaths(root / "w")
    core = PrivacyCore(paths)
    witnessed = core.ledger
    plain = _ledger(root / "plain")
    for ledger in (witnessed, plain):
        ledger.append("dataset.acquired", None, {"n": 0})
    spent = {"plain": 0.0, "witnessed": 0.0}
    chunk = 100
    for start in range(0, n, chunk):
        for name, ledger in (("plain", plain), ("witnessed", witnessed)):
            t = time.perf_counter()
            for i in range(start, min(start + chunk, n)):
                ledger.append("rectification", f"p{i:016x}", {"i": i})
            spent[name] += time.perf_counter() - t
    out["witnessed_appends_per_s"] = round(n / spent["witnessed"])
    out["plain_appends_per_s_same_run"] = round(n / spent["plain"])
    out["witnessing_overhead_pct"] = round(100 * (spent["witnessed"] / spent["plain"] - 1), 1)
    out["witnessed_append_note"] = (
        "each append: flock + sign + write + fsync and the cadence check; a checkpoint signed "
        "and cosigned by a directory witness (consistency proof checked) every 1,000 entries; "
        "interleaved with plain appends in chunks of 100"
    )
    pids = [f"p{i:016x}" for i in range(200)]
    witnessed.append_many([("subject.added", p, {"source": "bench"}) for p in pids])
    t = time.perf_counter()
    for pid in pids:
        witnessed.append("consent.withdrawn", pid, {"purposes": ["training"]})
    dt = time.perf_counter() - t
    out["narrowing_events_per_s"] = round(len(pids) / dt)
    out["narrowing_note"] = "each withdrawal witnessed (checkpoint cosigned) before it returns"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--appends", type=int, default=2_000)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    out: dict[str, object] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    receipt = ConsentReceipt(
        controller="Example Controller Ltd",
        controller_contact="dpo@example.org",
        purposes=("training", "evaluation", "identification"),
        notice_version="v1",
        notice_hash=sha256_text("notice"),
        collection_method="web-form",
        given_at="2026-11-26T00:00:00.000Z",
    ).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        # The default directory witness, on "another volume": a folder outside the projects.
        os.environ[WITNESS_DIR_ENV] = str(Path(tmp) / "witness")
        _witnessed(Path(tmp), args.appends, out)
        ledger = _ledger(Path(tmp) / "a")
        ledger.append("dataset.acquired", None, {"n": 0})
        t = time.perf_counter()
        for i in range(args.appends):
            ledger.append("rectification", f"p{i:016x}", {"i": i})
        dt = time.perf_counter() - t
        out["single_appends_per_s"] = round(args.appends / dt)
        out["single_append_note"] = "each append: flock + sign + write + fsync"

        ledger = _ledger(Path(tmp) / "b")
        t = time.perf_counter()
        n_events = 0
        for start in range(0, args.subjects, args.batch):
            events = []
            for i in range(start, min(start + args.batch, args.subjects)):
                pid = f"p{i:016x}"
                events.append(("subject.added", pid, {"source": "bench"}))
                events.append(
                    ("consent.given", pid, {"receipt": receipt, "receipt_hash": "0" * 64})
                )
                if i % 10 == 0:
                    events.append(("consent.withdrawn", pid, {"purposes": ["training"]}))
            ledger.append_many(events)
            n_events += len(events)
        dt = time.perf_counter() - t
        out["batched_appends_per_s"] = round(n_events / dt)
        out["batch_size_events"] = round(n_events / -(-args.subjects // args.batch))
        out["ledger_entries"] = n_events
        out["ledger_bytes"] = ledger.path.stat().st_size

        t = time.perf_counter()
        result = ledger.verify(all_signatures=False)
        dt = time.perf_counter() - t
        assert result.ok, result.message()
        out["verified_entries_per_s"] = round(result.entries / dt)
        out["verify_note"] = (
            "chain, hashes, form and tree heads of every entry; signatures of the anchors "
            "(tree heads, last entry) - `visage privacy verify-ledger --fast`"
        )
        t = time.perf_counter()
        result = ledger.verify(all_signatures=True)
        dt = time.perf_counter() - t
        assert result.ok, result.message()
        out["verified_entries_per_s_every_signature"] = round(result.entries / dt)

        t = time.perf_counter()
        reg = Registry(ledger.path).refresh()
        dt = time.perf_counter() - t
        assert len(reg) == args.subjects
        out["fold_subjects"] = args.subjects
        out["fold_seconds"] = round(dt, 3)
        t = time.perf_counter()
        allowed = len(reg.allowed("training"))
        out["allowed_query_seconds"] = round(time.perf_counter() - t, 3)
        out["allowed_training"] = allowed

        # The large ledger as a project's: one witnessed checkpoint, then a cold open check.
        paths = ProjectPaths(Path(tmp) / "b")
        core = PrivacyCore(paths)
        t = time.perf_counter()
        core.checkpoint_and_witness()
        out["witnessed_checkpoint_seconds_large"] = round(time.perf_counter() - t, 3)
        forget_checks()
        t = time.perf_counter()
        PrivacyCore(paths)
        out["open_check_seconds_large"] = round(time.perf_counter() - t, 3)
    out["goals"] = {
        "single_appends_per_s": 2000,
        "witnessed_appends_per_s": 2000,
        "verified_entries_per_s": 20000,
        "fold_seconds_max": 2.0,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
