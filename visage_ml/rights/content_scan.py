"""One walk of every place erased content could be, shared by the erasure and the verifier.

The erasure's copies step (:mod:`visage_ml.rights.erasure.copies`) removes what this walk finds
before the certificate is made; the verifier (:mod:`visage_ml.rights.certify`) fails a
certificate when it still finds something. Both walk the same roots
(:func:`roots`: :func:`~visage_ml.rights.content_hashes.scanned_roots`, DVC's local stores and
its site cache), hash every file once (:func:`hash_files`, in parallel) and apply the same rule
to what matches (:func:`in_use`), so that an erasure's own certificate never fails its verifier
over a file the erasure chose to keep.

That rule: a file that matches is a copy, to be removed, unless it is another current subject's
data, which the erasure keeps and the certificate counts (``claims.copies_in_use``): a file of
``data/raw`` that its images table lists under a current subject (a photograph two subjects
share, in clear on a project not yet sealed; a sealed file filed byte for byte under another
subject), and the DVC objects with that file's md5. A copy filed under another subject after
the certificate is beyond its count, and the verifier reports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.data.rawstore import read_images
from visage_ml.io import CHUNK, md5_file, usable_cpus
from visage_ml.rights.content_hashes import scanned_roots, walk_files

TOP_LEVEL = "top level"
# The certificate's count of the files of data/raw, identical to erased content, that other
# current subjects hold (kept by the erasure; the verifier accepts that many, no more).
IN_USE = "copies_in_use"


@dataclass(frozen=True)
class Root:
    """A place walked: ``where`` is what counts call it (None: the file's top folder in the
    project); ``store``: a DVC object store, whose files are named by their md5."""

    path: Path
    where: str | None = None
    store: bool = False


@dataclass(frozen=True)
class Hashed:
    """One file walked: its SHA-256 (None: unreadable, or gone since the walk) and size."""

    path: Path
    root: Root
    digest: str | None
    size: int

    def where(self, project: Path) -> str:
        """What counts call it: the store's label, or its top folder (:data:`TOP_LEVEL`)."""
        if self.root.where is not None:
            return self.root.where
        try:
            parts = self.path.relative_to(project).parts
        except ValueError:
            return TOP_LEVEL
        return parts[0] if len(parts) > 1 else TOP_LEVEL

    @property
    def oid(self) -> str | None:
        """The DVC object id of a store's file (``ab/cdef…`` -> ``abcdef…``), else None."""
        if not self.root.store or len(self.path.parent.name) != 2:
            return None
        return self.path.parent.name + self.path.name


def store_label(store: Any) -> str:
    """What counts call a DVC store: ``dvc cache``, or ``dvc <remote name>``."""
    return "dvc cache" if store.kind == "cache" else f"dvc {store.name}"


def roots(paths: ProjectPaths, setup: Any = None) -> list[Root]:
    """Where to look: the project's scanned folders and top files, then (``setup``: an open
    :class:`~visage_ml.rights.dvc_objects.DvcSetup`) each local DVC store and the site cache."""
    out = [Root(p) for p in scanned_roots(paths.root)]
    if setup is not None:
        out += [Root(s.local_path, store_label(s), True) for s in setup.stores if s.local_path]
        if setup.site_cache_dir is not None:
            out.append(Root(setup.site_cache_dir, "dvc site cache"))
    return out


def _hash(path: Path) -> tuple[str | None, int]:
    h = hashlib.sha256()
    n = 0
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                h.update(chunk)
                n += len(chunk)
    except OSError:  # gone or unreadable since the walk: not a file this scan can judge
        return None, 0
    return h.hexdigest(), n


def hash_files(walked: Sequence[Root], *, skip: Iterable[Path] = ()) -> list[Hashed]:
    """Every file under ``walked`` once (by real path; symbolic links not followed), but
    ``skip`` (real paths), with its SHA-256, in walk order."""
    seen = {Path(p) for p in skip}
    todo: list[tuple[Path, Root]] = []
    for root in walked:
        for path in walk_files(root.path):
            real = path.resolve()
            if real not in seen:
                seen.add(real)
                todo.append((path, root))
    # On every CPU this process may use (hashlib lets go of the GIL on large reads): the walk
    # reads the whole project.
    with ThreadPoolExecutor(max_workers=min(8, usable_cpus())) as pool:
        digests = list(pool.map(_hash, [p for p, _ in todo]))
    return [Hashed(p, r, d, n) for (p, r), (d, n) in zip(todo, digests, strict=True)]


def _listed(paths: ProjectPaths, pid: str) -> set[tuple[str, str]]:
    """(pid, image id) of the images ``data/raw`` lists now, but ``pid``'s."""
    if not paths.raw.is_dir():
        return set()
    images = read_images(paths.raw)
    return {
        (p, i)
        for p, i in zip(images["pid"].astype(str), images["image_id"].astype(str), strict=True)
        if p != pid
    }


@dataclass(frozen=True)
class InUse:
    """The hits that are another current subject's data: ``files`` of ``data/raw``, and the DVC
    ``objects`` with their md5 (``md5s``: never removed from any store)."""

    files: frozenset[Path] = frozenset()
    objects: frozenset[Path] = frozenset()
    md5s: frozenset[str] = frozenset()

    def __contains__(self, path: object) -> bool:
        return path in self.files or path in self.objects


def in_use(paths: ProjectPaths, hits: Iterable[Hashed], *, pid: str) -> InUse:
    """Which ``hits`` (files that matched erased content) are another current subject's data: a
    file ``<raw>/<pid>/<image id>.*`` the images table lists (``pid`` excepted), and a DVC
    store's object with the md5 of such a file."""
    hits = list(hits)
    listed = _listed(paths, pid) if hits else set()
    raw = paths.raw.resolve()
    files: set[Path] = set()
    for h in hits:
        real = h.path.resolve()
        if real.parent.parent == raw and (real.parent.name, real.name.split(".")[0]) in listed:
            files.add(h.path)
    md5s = set()
    for p in files:
        try:
            md5s.add(md5_file(p))
        except OSError:
            continue
    objects = {h.path for h in hits if h.oid is not None and h.oid in md5s}
    return InUse(frozenset(files), frozenset(objects), frozenset(md5s))
