"""The tombstone an erasure leaves: keyed MACs of the subject's pid, external reference,
files' SHA-256 and images' PNG SHA-256 (:mod:`visage_ml.privacy.tombstones`), so the same person
or files are refused by every later import (reason ``erased_subject``) and a plaintext copy of
an image, or of the file it was imported from, is found by the scans that follow (MLflow, the
copies step, the certificate's verification). They join
one set of every erasure's MACs, which says neither which came together nor when: a name, a
file or a photograph found there does not lead to the pid.

Run first in the ``vault`` step: the reference is read from the vault record before the vault
store destroys it, the file hashes from ``data/raw/images.parquet`` before the raw step. It
removes nothing, so it plans no artefact; the step records that a tombstone exists.

With each PNG's SHA-256 goes its size (:func:`png_sizes`, from the image itself while the data key
is there), and with each source file's SHA-256 (the data set's file an import read, which the
scans look for too: a copy of the data set in the project is a copy of the subject's photograph)
the size the import recorded beside it, keyed the same way, so that the scans for copies read
only files of a size something erased has. A PNG whose bytes cannot be read back, or a source
an earlier version imported without recording its size, leaves the sizes unknown: every file
is read, by every scan from then on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from visage_ml.data.rawstore import PLAIN_EXTS, RawStore, read_images
from visage_ml.privacy.keys import MasterKeyError
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan


@dataclass
class _Marks:
    refs: list[str] = field(default_factory=list)
    sha256s: list[str] = field(default_factory=list)
    plains: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    source_sizes: dict[str, int] = field(default_factory=dict)


def _png(store: RawStore, pid: str, image_id: str) -> bytes | None:
    """The PNG of ``pid``'s image ``image_id`` as stored (sealed, or in clear in a project not
    yet sealed); None when it cannot be read back."""
    try:
        path = store.image_path(pid, image_id)
        if path.is_file():
            return store.read_image(pid, image_id)
        for ext in PLAIN_EXTS:
            if path.with_suffix(ext).is_file():
                return path.with_suffix(ext).read_bytes()
    except (OSError, ValueError, KeyError, MasterKeyError):  # a key gone, an altered file
        return None
    return None


def png_sizes(ctx: Context, pid: str, images: Iterable[tuple[str, str]]) -> dict[str, int]:
    """SHA-256 -> size in bytes of each of ``pid``'s PNGs ``images`` (image id, the SHA-256
    ``images.parquet`` records) whose bytes hash to it; others are left out (size unknown)."""
    store = RawStore(ctx.paths, core=ctx.core, track=False)
    out: dict[str, int] = {}
    for image_id, sha in images:
        png = _png(store, pid, image_id)
        if png is not None and hashlib.sha256(png).hexdigest() == sha.lower():
            out[sha.lower()] = len(png)
    return out


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
    pngs = rows.dropna(subset=["sha256"])
    marks.sizes = png_sizes(
        ctx, pid, zip(pngs["image_id"].astype(str), pngs["sha256"].astype(str), strict=True)
    )
    sources = rows.dropna(subset=["source_sha256", "source_size"])
    marks.source_sizes = {
        str(sha).lower(): int(n)
        for sha, n in zip(sources["source_sha256"], sources["source_size"], strict=True)
    }
    return Plan(info={"tombstone": True}, state=marks)


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Add the subject's MACs to the tombstones (once; a resumed run finds them there)."""
    marks: _Marks = plan.state if plan is not None else _Marks()
    written = ctx.core.tombstones.add(
        pid,
        refs=marks.refs,
        sha256s=marks.sha256s,
        plains=marks.plains,
        plain_sizes=marks.sizes,
        file_sizes=marks.source_sizes,
    )
    # Whether, not how many: the number of MACs is about three per photograph, a photo count per
    # pid that the tombstone key and the source folder would match to a name.
    return Outcome(info={"tombstone": "written" if written else "present"})


def verify(ctx: Context, pid: str) -> list[str]:
    """Nothing to remove: a tombstone is what erasure leaves on purpose."""
    return []
