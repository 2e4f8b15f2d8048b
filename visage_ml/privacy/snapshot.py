"""The consent snapshot: the only file the DVC pipeline reads about consent.

``data/registry/consents.parquet`` has one row per (subject, purpose): ``pid``, ``purpose``,
``allowed``, ``reason`` and ``as_of_seq`` (the last ledger entry that changed that subject).
Rows change only when a subject's state changes, so ``dvc status`` marks the pipeline stale
exactly when a consent, restriction, objection or erasure happened.
"""

from __future__ import annotations

import io
from pathlib import Path

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
    erasure rewrites three rows instead of recomputing 300k decisions.
    """
    n = len(PURPOSES)
    written = dict(
        zip(old["pid"].iloc[::n].tolist(), old["as_of_seq"].iloc[::n].tolist(), strict=True)
    )
    states = registry.states()
    changed = [st for pid, st in states.items() if written.get(pid) != st.last_seq]
    gone = written.keys() - states.keys()
    if not changed and not gone:
        return None
    drop = {st.pid for st in changed} | gone
    keep = old[~old["pid"].isin(drop)]
    fresh = _frame(sorted(changed, key=lambda st: st.pid))
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
