"""What the ``prepare`` stage may use and how it splits it: inventory, purpose filter, splits
(and :func:`parquet_names`, whether a table names a subject).

The purpose filter follows the consent snapshot only: training and validation identities come
from subjects allowed for ``training``, test identities from subjects allowed for
``evaluation``; a subject allowed for neither is never opened. Splits are identity-disjoint and
stratified by demographic group, decided by a seeded hash of each pid over the acquired
population: a consent change or an erasure never moves anyone into another split (a subject
whose split's purpose is no longer allowed is dropped, not moved).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from visage_ml.privacy.registry import ALLOWED

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")

MANIFEST_COLUMNS = (
    "row",
    "pid",
    "image_id",
    "source_sha256",
    "split",
    "age",
    "gender",
    "group",
    "det_prob",
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
)

NO_SUBJECTS_TABLE = (
    "{path} is missing: acquire data first with `visage data synth` or `visage data import`"
)


@dataclass
class PurposeFilter:
    """Outcome of the purpose filter: usable subjects per pool and exclusions per reason."""

    train_pool: set[str] = field(default_factory=set)
    test_pool: set[str] = field(default_factory=set)
    excluded: dict[str, str] = field(default_factory=dict)  # pid -> reason code

    @property
    def usable(self) -> set[str]:
        return self.train_pool | self.test_pool

    def exclusion_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.excluded.values()).items()))


def read_subjects(raw: Path) -> pd.DataFrame:
    """``data/raw/subjects.parquet`` with pid as string and nullable attributes."""
    path = Path(raw) / "subjects.parquet"
    if not path.exists():
        raise FileNotFoundError(NO_SUBJECTS_TABLE.format(path=path))
    df = pd.read_parquet(path)
    df["pid"] = df["pid"].astype(str)
    for col in ("age", "gender", "group"):
        if col not in df:
            df[col] = pd.NA
    return df


def parquet_names(data: bytes, pid: str) -> bool:
    """Whether Parquet bytes hold ``pid`` in a ``pid`` column (or, lacking one, anywhere).

    Bytes that are not readable as Parquet are searched for the pid as they are.
    """
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        names = pf.schema_arrow.names
        if "pid" in names:
            col = pf.read(columns=["pid"]).column("pid")
            return pid in {str(v) for v in col.to_pylist()}
        table = pf.read()
    except Exception:  # not readable as Parquet: fall back to the bytes
        return pid.encode() in data
    return any(pid in str(v) for c in table.columns for v in c.to_pylist())


def inventory(raw: Path, pids: set[str] | None = None) -> pd.DataFrame:
    """One row per image file of ``pids`` (all when None): ``pid``, ``image_id``, ``path``.

    Only the folders of the given subjects are listed, so the files of subjects without a
    legal basis are never even opened.
    """
    raw = Path(raw)
    rows = []
    folders = (
        sorted(pids)
        if pids is not None
        else sorted(p.name for p in raw.iterdir() if p.is_dir() and p.name.startswith("p"))
    )
    for pid in folders:
        folder = raw / pid
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                rows.append((pid, f.stem, str(f)))
    return pd.DataFrame(rows, columns=["pid", "image_id", "path"])


def purpose_filter(subject_pids: list[str], snapshot: pd.DataFrame) -> PurposeFilter:
    """Split subjects into the training and test pools by the consent snapshot.

    Subjects missing from the snapshot are excluded as ``unknown_subject``. For an excluded
    subject the reason is the snapshot's reason for ``training`` (the first purpose checked).
    """
    decisions: dict[tuple[str, str], tuple[bool, str]] = {
        (str(r.pid), str(r.purpose)): (bool(r.allowed), str(r.reason))
        for r in snapshot.itertuples(index=False)
    }
    out = PurposeFilter()
    for pid in subject_pids:
        train = decisions.get((pid, "training"))
        evaluation = decisions.get((pid, "evaluation"))
        if train is None and evaluation is None:
            out.excluded[pid] = "unknown_subject"
            continue
        if train is not None and train[0]:
            out.train_pool.add(pid)
        if evaluation is not None and evaluation[0]:
            out.test_pool.add(pid)
        if pid not in out.usable:
            reason = (train or evaluation or (False, "no_consent"))[1]
            out.excluded[pid] = reason if reason != ALLOWED else "no_consent"
    return out


def _unit_hash(seed: int, pid: str) -> float:
    digest = hashlib.sha256(f"{seed}:{pid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    groups: Mapping[str, str],
    *,
    val: float,
    test: float,
    seed: int,
) -> dict[str, str]:
    """Identity-disjoint splits of every acquired subject, stratified by group.

    Within each group, subjects are ranked by a seeded hash of their pid: the first
    ``round(test * n)`` go to test, the next ``round(val * n)`` to validation, the rest to
    training. The split depends on the acquired population only, never on consent, so a
    consent change removes a subject from its split instead of moving it into another one.
    """
    by_group: dict[str, list[str]] = {}
    for pid, group in groups.items():
        by_group.setdefault(str(group), []).append(pid)
    splits: dict[str, str] = {}
    for members in by_group.values():
        members.sort(key=lambda p: _unit_hash(seed, p))
        n = len(members)
        n_test, n_val = round(test * n), round(val * n)
        for i, p in enumerate(members):
            splits[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return splits


def usable_splits(splits: Mapping[str, str], pools: PurposeFilter) -> dict[str, str]:
    """Keep a subject only when its split's purpose is allowed (train/val: training; test:
    evaluation); record the others in ``pools.excluded`` with ``not_allowed_for_split``."""
    kept: dict[str, str] = {}
    for pid, split in splits.items():
        pool = pools.test_pool if split == "test" else pools.train_pool
        if pid in pool:
            kept[pid] = split
        elif pid not in pools.excluded:
            pools.excluded[pid] = f"no_{'evaluation' if split == 'test' else 'training'}_basis"
    return kept
