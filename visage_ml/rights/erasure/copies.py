"""Exact copies of the erased content anywhere the verifier looks: found by hash, removed, counted.

The verifier (:mod:`visage_ml.rights.certify`) hashes every file of the places a subject's data
could be (:func:`~visage_ml.rights.content_hashes.scanned_roots`: ``data/``, ``gallery/``,
``mlruns/``, ``models/``, ``privacy/``, ``reports/``, ``notebooks/`` and the files at the
project's top) for the content hashes a certificate lists and every erased image's plaintext.
This store does the same, with the same hashes, before the certificate is made: a copy someone
saved (the subject's photo in ``data/interim`` or ``reports/``, a sealed file in a backup
folder) is removed (overwritten, then deleted) rather than certified and found afterwards.

Only exact copies: a re-encoded or cropped face has other bytes, and is for ``visage privacy
doctor`` to list for review. Not looked at: the files ``data/raw`` holds of its current
subjects (the raw step's; a photograph two subjects share stays with the other, as DVC keeps
its object), content the certificate declares still in use
(:func:`~visage_ml.rights.erasure.base.retained_shared`), the empty file. DVC's cache and local
remotes are looked through too, as the verifier does (a copy tracked with ``dvc add`` has its
object there, which ``dvc checkout`` would put back), and the objects of the copies found are
removed from the other remotes by their md5; the ``.dvc`` file that tracked a copy then names
an object that is gone (``dvc status`` says so). The subject's own objects are the dvc step's.

The ledger and the certificate record a count per top folder (``top level`` for the project's
own files), never a path or a hash: a file name may be the person's name, and a plaintext's hash
leads a photograph to the pid. A copy that cannot be removed stops the erasure before the
certificate (:data:`MSG_NOT_REMOVED`). A run resumed after an earlier one removed some counts, per
folder, the larger of the earlier plan's count and its own.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visage_ml.data.rawstore import read_images
from visage_ml.io import md5_file, secure_unlink, sha256_file, usable_cpus
from visage_ml.rights.content_hashes import ContentHashes, scanned_roots, walk_files
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan, retained_shared

FOUND = "copies_found"
REMOVED = "copies_removed"
TOP_LEVEL = "top level"
MSG_NOT_REMOVED = (
    "{n} exact copy(ies) of the erased content could not be removed ({where}); the erasure stops "
    "before its certificate. Make them removable (a read-only mount, an immutable file, a "
    "folder's permissions) or delete them, then run `visage privacy resume`"
)


def _artefacts(ctx: Context) -> list[Artefact]:
    """What the certificate will list: every step's artefacts so far."""
    return [a for step in (ctx.planned, ctx.done) for rec in step.values() for a in rec]


def _hashes(ctx: Context, pid: str, artefacts: list[Artefact]) -> ContentHashes:
    """The verifier's hashes: what ``artefacts`` name less the content the current data shares,
    and every erased image's plaintext."""
    retained = retained_shared(artefacts, ctx.infos.get("dvc") or {})
    return ContentHashes.of(ctx.paths, artefacts, exclude=[h for _, h in retained], pid=pid)


def _in_use(ctx: Context) -> set[tuple[str, str]]:
    """(pid, image id) of the images ``data/raw`` lists now (the other subjects')."""
    images = read_images(ctx.paths.raw)
    return set(zip(images["pid"].astype(str), images["image_id"].astype(str), strict=True))


def _folder(ctx: Context, path: Path) -> str:
    """The top folder of ``path`` in the project (:data:`TOP_LEVEL` for a file at its top)."""
    parts = Path(ctx.rel(path)).parts
    return parts[0] if len(parts) > 1 else TOP_LEVEL


@dataclass(frozen=True)
class Copy:
    """One exact copy: a file (``path``), or an object of a DVC remote not on this file system
    (``store``, ``oid``); ``where`` is what the records count it under."""

    where: str
    path: Path | None = None
    store: Any = None
    oid: str = ""

    def remove(self) -> None:
        if self.path is not None:
            secure_unlink(self.path)
        else:
            self.store.remove(self.oid)

    def exists(self) -> bool:
        return self.path.exists() if self.path is not None else bool(self.store.exists(self.oid))


def _sha256_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:  # gone or unreadable since the walk: not a copy this run can see
        return None


def _dvc_where(store: Any) -> str:
    return "dvc cache" if store.kind == "cache" else f"dvc {store.name}"  # dvc remote:<name>


def _found(ctx: Context, pid: str) -> list[Copy]:
    artefacts = _artefacts(ctx)
    hashes = _hashes(ctx, pid, artefacts)
    if not len(hashes) and hashes.tombstones is None:
        return []
    raw = ctx.paths.raw.resolve()
    in_use = _in_use(ctx)
    # A file a step recorded is that step's (removed, or rewritten without the subject where it
    # is shared): never taken for a copy of itself.
    seen = {(ctx.paths.root / str(a["path"])).resolve() for a in artefacts if a.get("path")}
    stores = ctx.dvc_setup().stores if ctx.is_dvc else []
    # DVC's cache and local remotes are looked through as the verifier does: a copy tracked
    # with `dvc add` has its object there, and `dvc checkout` would put it back.
    roots = [(r, None) for r in scanned_roots(ctx.paths.root)]
    roots += [(s.local_path, _dvc_where(s)) for s in stores if s.local_path is not None]
    todo: list[tuple[Path, str | None]] = []
    for root, where in roots:
        for path in walk_files(root):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            if real.parent.parent == raw and (real.parent.name, real.name.split(".")[0]) in in_use:
                continue
            todo.append((path, where))
    # Hashed on every CPU this process may use (hashlib lets go of the GIL on large reads):
    # the scan reads the whole project, on each run of the step.
    with ThreadPoolExecutor(max_workers=min(8, usable_cpus())) as pool:
        digests = list(pool.map(_sha256_or_none, [p for p, _ in todo]))
    found = [
        Copy(where or _folder(ctx, path), path=path)
        for (path, where), digest in zip(todo, digests, strict=True)
        if digest is not None and digest in hashes
    ]
    # A remote elsewhere cannot be hashed whole: the objects of the copies found here are
    # looked for there by their md5, DVC's name for them.
    md5s = sorted({md5_file(c.path) for c in found if c.path is not None})
    for store in stores:
        if store.local_path is None:
            found += [Copy(_dvc_where(store), store=store, oid=m) for m in md5s if store.exists(m)]
    return found


def _count(copies: list[Copy]) -> dict[str, int]:
    return dict(sorted(Counter(c.where for c in copies).items()))


def plan(ctx: Context, pid: str) -> Plan:
    """The copies, counted by top folder (the files themselves stay in this run's memory); a
    folder's count is at least what an earlier run of the request planned and removed."""
    found = _found(ctx, pid)
    now = _count(found)
    earlier = (ctx.infos.get("copies") or {}).get(FOUND) or {}
    counts = {f: max(earlier.get(f, 0), now.get(f, 0)) for f in sorted({*earlier, *now})}
    return Plan(info={FOUND: counts}, state=found)


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Remove the copies; an OSError saying where (top folder) and what to do if one stays."""
    found: list[Copy] = plan.state if plan is not None else []
    stuck: dict[str, str] = {}
    for copy in found:
        try:
            copy.remove()
        except OSError as exc:
            stuck.setdefault(copy.where, exc.strerror or type(exc).__name__)
    if stuck:
        where = "; ".join(f"{folder}: {why}" for folder, why in sorted(stuck.items()))
        n = sum(1 for c in found if c.exists())
        raise OSError(MSG_NOT_REMOVED.format(n=n, where=where))
    counts = (plan.info or {}).get(FOUND, {}) if plan is not None else {}
    return Outcome(info={REMOVED: {f: n for f, n in counts.items() if n}})


def verify(ctx: Context, pid: str) -> list[str]:
    """Top folders still holding an exact copy (of what this request's steps listed)."""
    return [f"{folder}: {n}" for folder, n in _count(_found(ctx, pid)).items()]
