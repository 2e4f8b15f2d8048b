"""The tombstone an erasure leaves: keyed MACs of the subject's pid, external reference,
files' SHA-256 and images' PNG SHA-256 (:mod:`visage_ml.privacy.tombstones`), so the same person
or files are refused by every later import (reason ``erased_subject``) and a plaintext copy of
an image is found by the scans that follow (MLflow, the certificate's verification). They join
one set of every erasure's MACs, which says neither which came together nor when: a name, a
file or a photograph found there does not lead to the pid.

Run first in the ``vault`` step: the reference is read from the vault record before the vault
store destroys it, the file hashes from ``data/raw/images.parquet`` before the raw step. It
removes nothing, so it plans no artefact; the step records that a tombstone exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from visage_ml.data.rawstore import read_images
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan


@dataclass
class _Marks:
    refs: list[str] = field(default_factory=list)
    sha256s: list[str] = field(default_factory=list)
    plains: list[str] = field(default_factory=list)


def plan(ctx: Context, pid: str) -> Plan:
    """Collect what the tombstone will hold (kept in memory, never recorded in clear)."""
    marks = _Marks()
    if ctx.paths.vault.is_dir() and pid in ctx.core.vault:
        try:
            ref = ctx.core.vault.get(pid).get("external_ref")
        except KeyError:
            ref = None
        if ref:
            marks.refs.append(str(ref))
    images = read_images(ctx.paths.raw)
    rows = images[images["pid"].astype(str) == pid]
    for col in ("source_sha256", "sha256"):
        marks.sha256s.extend(str(v) for v in rows[col].dropna())
    # The PNG a sealed image holds, asked for apart: a copy of it is data to erase, wherever.
    marks.plains.extend(str(v) for v in rows["sha256"].dropna())
    return Plan(info={"tombstone": True}, state=marks)


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Add the subject's MACs to the tombstones (once; a resumed run finds them there)."""
    marks: _Marks = plan.state if plan is not None else _Marks()
    written = ctx.core.tombstones.add(
        pid, refs=marks.refs, sha256s=marks.sha256s, plains=marks.plains
    )
    # Whether, not how many: the number of MACs is about three per photograph, a photo count per
    # pid that the tombstone key and the source folder would match to a name.
    return Outcome(info={"tombstone": "written" if written else "present"})


def verify(ctx: Context, pid: str) -> list[str]:
    """Nothing to remove: a tombstone is what erasure leaves on purpose."""
    return []
