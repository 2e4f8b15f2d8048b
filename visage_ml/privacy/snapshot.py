"""The consent snapshot: the only file the DVC pipeline reads about consent.

``data/registry/consents.parquet`` has one row per (subject, purpose): ``pid``, ``purpose``,
``allowed``, ``reason`` and ``as_of_seq`` (the last ledger entry that changed that subject).
Rows change only when a subject's state changes, so ``dvc status`` marks the pipeline stale
exactly when a consent, restriction, objection or erasure happened. The file is not
authenticated: ``prepare`` uses a subject only when the registry allows it too.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from visage_ml.config import PURPOSES
from visage_ml.io import atomic_write_bytes
from visage_ml.privacy.registry import Registry, SubjectState

COLUMNS = ("pid", "purpose", "allowed", "reason", "as_of_seq")


def snapshot_frame(registry: Registry) -> pd.DataFrame:
    """The snapshot as a DataFrame, sorted by pid then purpose."""
    return _frame(sorted(registry, key=lambda s: s.pid))


def _frame(states: list[SubjectState]) -> pd.DataFrame:
    n = len(PURPOSES)
    pids: list[str] = []
    seqs: list[int] = []
    allowed: list[bool] = []
    reasons: list[str] = []
    # Built column by column (typed arrays, no per-row tuples): twice as fast at 100k subjects.
    for st in states:
        for purpose in PURPOSES:
            d = st.decision(purpose)
            allowed.append(d.allowed)
            reasons.append(d.reason)
        pids.extend([st.pid] * n)
        seqs.extend([st.last_seq] * n)
    return pd.DataFrame(
        {
            "pid": pd.array(pids, dtype="string"),
            "purpose": pd.array(list(PURPOSES) * len(states), dtype="string"),
            "allowed": pd.array(allowed, dtype="bool"),
            "reason": pd.array(reasons, dtype="string"),
            "as_of_seq": pd.array(seqs, dtype="int64"),
        },
        columns=list(COLUMNS),
    )


def _patched(old: pd.DataFrame, registry: Registry) -> pd.DataFrame | None:
    """``old`` with the rows of subjects whose state changed replaced, or None when unchanged.

    A subject's ``last_seq`` moves with every change of its state, so comparing it with the
    ``as_of_seq`` written for it finds exactly the subjects to recompute: at 100k subjects an
    erasure rewrites three rows instead of recomputing 300k decisions. Only those subjects'
    states are unpacked from a cold registry (:meth:`Registry.last_seqs`).
    """
    n = len(PURPOSES)
    pids = old["pid"].iloc[::n].tolist()
    last = registry.last_seqs()
    written = old["as_of_seq"].iloc[::n].to_numpy()
    known = set(pids)
    gone = known - last.keys()
    new = [p for p in last if p not in known]
    current = np.fromiter((last.get(p, -1) for p in pids), dtype=np.int64, count=len(pids))
    moved_mask = current != written
    if gone:
        moved_mask |= np.fromiter((p in gone for p in pids), dtype=bool, count=len(pids))
    moved_at = np.flatnonzero(moved_mask)
    moved = [pids[i] for i in moved_at]
    if not moved and not new:
        return None
    if not gone and not new and all(a < b for a, b in itertools.pairwise(pids)):
        # The same subjects, in pid order: the changed ones' rows are overwritten where they
        # are, which is the frame a full rebuild gives, without re-sorting 300k rows.
        fresh = _frame([registry.peek(p) for p in moved])
        rows = (moved_at[:, None] * n + np.arange(n)).ravel()
        out = old.copy()
        for j, col in enumerate(COLUMNS):
            out.iloc[rows, j] = fresh[col].to_numpy()
        return out
    changed = sorted(p for p in [*moved, *new] if p not in gone)
    keep = old[~old["pid"].isin(set(moved))]
    fresh = _frame([st for st in map(registry.peek, changed) if st is not None])
    merged = pd.concat([keep, fresh], ignore_index=True)
    # Rows of one subject are consecutive and in purpose order in both parts: a stable sort
    # on pid alone restores the exact order of a full rebuild.
    return merged.sort_values("pid", kind="stable", ignore_index=True)


def _readable(path: Path) -> pd.DataFrame | None:
    try:
        old = pd.read_parquet(path)
    except (OSError, ValueError):
        return None
    n = len(PURPOSES)
    if list(old.columns) != list(COLUMNS) or len(old) % n:
        return None
    if old["purpose"].iloc[:n].tolist() != list(PURPOSES[: len(old)]) and len(old):
        return None
    return old


def write_snapshot(registry: Registry, path: Path) -> bool:
    """Write the snapshot atomically; return whether the file's bytes changed.

    An existing snapshot is patched for the subjects whose state changed since it was written
    (byte-identical to a full rebuild); an unreadable or foreign one is rebuilt in full.
    """
    path = Path(path)
    old = _readable(path) if path.exists() else None
    if old is not None:
        frame = _patched(old, registry)
        if frame is None:
            return False
    else:
        frame = snapshot_frame(registry)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, engine="pyarrow")
    data = buf.getvalue()
    if path.exists() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


def read_snapshot(path: Path) -> pd.DataFrame:
    """Read the snapshot, failing with a clear message when it is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run `visage privacy snapshot` (acquisition writes it too)"
        )
    return pd.read_parquet(path)


def allowed_pids(snapshot: pd.DataFrame, purpose: str) -> set[str]:
    """Pids the snapshot allows for ``purpose``."""
    sel = snapshot[(snapshot["purpose"] == purpose) & snapshot["allowed"]]
    return set(sel["pid"].astype(str))
