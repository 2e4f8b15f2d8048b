"""What the ``prepare`` stage may use and how it splits it: inventory, purpose filter, splits
(and :func:`parquet_names`, whether a table names a subject).

The purpose filter follows the consent snapshot only: training and validation identities come
from subjects allowed for ``training``, test identities from subjects allowed for
``evaluation``; a subject allowed for neither is never opened. Splits are identity-disjoint and
stratified by demographic group, decided by a seeded hash of each pid over the acquired
population: a consent change or an erasure never moves anyone into another split (a subject
whose split's purpose is no longer allowed is dropped, not moved).

Roles: every subject carries the role its import gave it (``subjects.parquet`` column ``role``):
``training`` subjects only ever reach train/val, ``evaluation`` subjects (benchmark protocols
such as LFW pairs) only ever reach test, ``both`` (SynthFaces, and any subject without a
recorded role) are split as above. Subjects are stratified by source, role and group, so adding
an imported set never moves a subject of another source into another split.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from visage_ml.config import GENDERS, GROUPS
from visage_ml.privacy.registry import ALLOWED

# Sealed images (``.sealed``, the raw store's form) and plaintext ones of a project from before
# sealing, which prepare refuses with the command that converts them.
IMAGE_SUFFIXES = (".sealed", ".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")

# What an imported subject may be used for (``visage data import --role``).
ROLE_TRAINING = "training"
ROLE_EVALUATION = "evaluation"
ROLE_BOTH = "both"
ROLES: tuple[str, ...] = (ROLE_TRAINING, ROLE_EVALUATION, ROLE_BOTH)
UNKNOWN_SOURCE = "unknown"
# The label of a subject whose demographic attribute is unknown, in every per-group report.
UNLABELED = "unlabeled"
MSG_BAD_ROLE = "unknown role {role!r}; choose one of: {roles}"

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
    "source",
    "role",
    "fallback",
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
    # Subjects acquired before roles existed (and SynthFaces) are usable for both purposes.
    df["role"] = df["role"].fillna(ROLE_BOTH).astype(str) if "role" in df else ROLE_BOTH
    df["source"] = (
        df["source"].fillna(UNKNOWN_SOURCE).astype(str) if "source" in df else UNKNOWN_SOURCE
    )
    return df


def check_role(role: str) -> str:
    """``role`` when it is one of :data:`ROLES` (``ValueError`` naming the choices otherwise)."""
    if role not in ROLES:
        raise ValueError(MSG_BAD_ROLE.format(role=role, roles=", ".join(ROLES)))
    return role


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
    roles: Mapping[str, str] | None = None,
    sources: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Identity-disjoint splits of every acquired subject, stratified by source, role and group.

    Within each stratum, subjects are ranked by a seeded hash of their pid. Role ``both`` (the
    default for a subject missing from ``roles``): the first ``round(test * n)`` go to test,
    the next ``round(val * n)`` to validation, the rest to training. Role ``evaluation``: all
    go to test. Role ``training``: the first ``round(val / (1 - test) * n)`` go to validation,
    the rest to training. The split depends on the acquired population only, never on
    consent, so a consent change removes a subject from its split instead of moving it into
    another one.
    """
    roles = roles or {}
    sources = sources or {}
    strata: dict[tuple[str, str, str], list[str]] = {}
    for pid, group in groups.items():
        role = check_role(roles.get(pid, ROLE_BOTH))
        key = (sources.get(pid, UNKNOWN_SOURCE), role, str(group))
        strata.setdefault(key, []).append(pid)
    splits: dict[str, str] = {}
    for (_, role, _), members in strata.items():
        members.sort(key=lambda p: _unit_hash(seed, p))
        n = len(members)
        if role == ROLE_EVALUATION:
            n_test, n_val = n, 0
        elif role == ROLE_TRAINING:
            n_test, n_val = 0, round(val / (1.0 - test) * n)
        else:
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


def label_coverage(manifest: pd.DataFrame) -> dict[str, Any]:
    """How many subjects of ``manifest`` carry each demographic label (subject-level).

    A gender counts when it is one of ``config.GENDERS``, a group when it is one of
    ``config.GROUPS`` (the demographic model's classes; other group labels, e.g. UTKFace's race
    names, are counted apart as ``group_other``), an age when it is known.

    Returns
    -------
    dict
        ``subjects``; per label the subjects that have it (``age``, ``gender``, ``group``,
        ``group_other``); ``complete`` (all three usable), ``unlabeled`` (none) and
        ``unlabeled_share``.
    """
    first = manifest.drop_duplicates("pid")
    n = len(first)
    age = first["age"].notna()
    gender = first["gender"].isin(GENDERS)
    group = first["group"].isin(GROUPS)
    group_other = first["group"].notna() & ~group
    unlabeled = ~(age | gender | group)
    return {
        "subjects": n,
        "age": int(age.sum()),
        "gender": int(gender.sum()),
        "group": int(group.sum()),
        "group_other": int(group_other.sum()),
        "complete": int((age & gender & group).sum()),
        "unlabeled": int(unlabeled.sum()),
        "unlabeled_share": round(float(unlabeled.mean()), 4) if n else 0.0,
    }


def source_summary(
    detection: pd.DataFrame,
    manifest: pd.DataFrame,
    *,
    excluded: Mapping[str, str] | None = None,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Per source: role(s), exclusions, subjects and images per split, detector misses,
    fallback crops and label coverage.

    ``detection`` and ``manifest`` are the prepare stage's tables (columns ``source``, ``role``,
    ``detected``, ``fallback``, ``split``); ``excluded`` (pid -> reason) and ``sources``
    (pid -> source) add the subjects the purpose filter left out, per reason.
    """
    excluded_by: dict[str, Counter[str]] = {}
    for pid, reason in (excluded or {}).items():
        source = (sources or {}).get(pid, UNKNOWN_SOURCE)
        excluded_by.setdefault(str(source), Counter())[reason] += 1
    seen = set(detection["source"].astype(str)) if len(detection) else set()
    out: dict[str, Any] = {}
    for source in sorted(seen | set(excluded_by)):
        det = detection[detection["source"].astype(str) == source] if len(detection) else detection
        man = manifest[manifest["source"].astype(str) == source]
        n = len(det)
        out[source] = {
            "roles": sorted({str(r) for r in det["role"]}) if n else [],
            "subjects_used": int(det["pid"].nunique()) if n else 0,
            "subjects_excluded": dict(sorted(excluded_by.get(source, Counter()).items())),
            "images_processed": n,
            "faces_aligned": len(man),
            "miss_rate": round(float((~det["detected"].astype(bool)).mean()), 4) if n else 0.0,
            "fallback_crops": int(det["fallback"].astype(bool).sum()) if n else 0,
            "splits": {
                sp: {
                    "subjects": int(man.loc[man["split"] == sp, "pid"].nunique()),
                    "images": int((man["split"] == sp).sum()),
                }
                for sp in SPLITS
            },
            "labels": label_coverage(man),
        }
    return out
