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
from visage_ml.privacy.registry import Registry

COLUMNS = ("pid", "purpose", "allowed", "reason", "as_of_seq")


def snapshot_frame(registry: Registry) -> pd.DataFrame:
    """The snapshot as a DataFrame, sorted by pid then purpose."""
    states = sorted(registry, key=lambda s: s.pid)
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


def write_snapshot(registry: Registry, path: Path) -> bool:
    """Write the snapshot atomically; return whether the file's bytes changed."""
    buf = io.BytesIO()
    snapshot_frame(registry).to_parquet(buf, index=False, engine="pyarrow")
    data = buf.getvalue()
    path = Path(path)
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
