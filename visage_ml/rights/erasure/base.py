"""What every store of the erasure provides, and what the orchestrator hands them.

A store module (``gallery``, ``vault``, ``import_reports``, ``raw``, ``dvc``, ``processed``,
``exports``, ``checkpoints``, ``mlflow``, ``copies``) has three functions, the :class:`Store`
protocol:

- ``plan(ctx, pid)``: find and hash what the store holds of the subject, deleting nothing
  (a :class:`Plan`; None when the store is not part of the project, e.g. DVC outside a DVC
  repository: nothing is planned or recorded as planned);
- ``erase(ctx, pid, planned, plan)``: remove it; ``planned`` is the plan as the ledger records
  it (merged with the plan of an interrupted earlier run), ``plan`` this run's
  :class:`Plan`; returns an :class:`Outcome`;
- ``verify(ctx, pid)``: what the store still holds of the subject (project-relative paths or
  object names; empty once erased).

An artefact is a dict ``{"store", "path", "sha256"[, "md5"][, "size"]}``: the SHA-256 is taken
before deletion, with the size in bytes of what it hashed where the step has it (the copies
step and the verifier then read only files of a size sought), the path is project-relative
where the file is inside the project. Plaintext images
are recorded by their path alone, with ``"sha256": None`` and ``"content"`` saying why, since
their hashes would lead anyone holding the photograph to the erased pid in the ledger and the
certificate: a file found only because it is the plaintext of an erased image (an MLflow copy,
asked of the tombstone set; ``content`` :data:`~visage_ml.rights.content_hashes.ERASED_IMAGE`)
or the data set's file an erased subject was imported from
(:data:`~visage_ml.rights.content_hashes.ERASED_SOURCE`),
and a plaintext image the erasure removes itself (a PNG of a project not yet sealed in
``data/raw``, its DVC objects; ``content``
:data:`~visage_ml.rights.content_hashes.PLAINTEXT_WITHHELD`, no MD5, and a DVC object's path
names the file it held, not the object). Their outcome is ``physically removed``.

The path of an MLflow artefact (:mod:`.mlflow`, :mod:`.mlflow_server`), of an export bundle
(:mod:`.exports`), of a file in the subject's raw folder (:mod:`.raw`, and the DVC objects of one
in clear, :mod:`.dvc`), of an embedder checkpoint (:mod:`.checkpoints`) or an import report
(:mod:`.import_reports`) keeps only the names the project or MLflow made (experiment and run
ids, its folders, ``<request id>.zip.age``, ``<image id>.sealed``, ``epoch-0001.pt``,
``import-<time>.json``): a name someone chose there, an artefact's file or folder, a bundle
written under another name, a file placed by hand, may be the person's, which the ledger and the
certificate would pair with the pid for good. Each such component is recorded as ``~`` and the
first 12 hex digits of its MAC under the tombstone key (:func:`chosen_names`): the same file
gives the same record, so a resumed run, which finds it again by scanning, merges with the plan
it reads back from the ledger; the store removes what it found, never the recorded path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from visage_ml import dvcops
from visage_ml.config import Params, ProjectPaths
from visage_ml.io import CHUNK, leftover_target, sha256_sized
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.sealed import earlier_wrappings
from visage_ml.rights import dvc_objects
from visage_ml.rights.content_hashes import PLAINTEXT_WITHHELD

Artefact = dict[str, Any]
# A name someone chose, as a path records it (chosen_names): its MAC's domain under the
# tombstone key (no other MAC shares it), how much of the MAC is kept, and how it then reads.
NAME_KIND = "chosen_name"
NAME_PREFIX = "~"
NAME_HEX = 12
KEYED_NAME = re.compile(re.escape(NAME_PREFIX) + f"[0-9a-f]{{{NAME_HEX}}}")


@dataclass
class Plan:
    """What a store found of the subject.

    Attributes
    ----------
    artefacts
        What it is about to remove or rewrite, each hashed before.
    info
        Recorded with the ``planned`` entry (None: nothing).
    state
        What :func:`erase` needs from the planning and the ledger does not record.
    """

    artefacts: list[Artefact] = field(default_factory=list)
    info: dict[str, Any] | None = None
    state: Any = None


@dataclass
class Outcome:
    """What a store's ``erase`` did: artefacts removed beyond the plan, and the step's info."""

    artefacts: list[Artefact] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """The project an erasure runs in, shared by its stores.

    Attributes
    ----------
    paths, core, params
        The project, its privacy core and parameters.
    gallery
        An open :class:`~visage_ml.serving.gallery.Gallery` to erase from (a running server's),
        or None (the gallery store opens the one on disk).
    planned
        Artefacts each step of the current request planned so far (from the ledger): the DVC
        step purges the objects of the raw files, the MLflow step looks for their hashes.
    done, infos
        What each step of the request recorded done so far, and its info (from the ledger):
        the copies step looks for what the certificate will list.
    request_id
        The request a step runs for (None outside one): the copies step names the files it
        keeps under it, :func:`~visage_ml.rights.content_scan.in_use_name`.
    """

    paths: ProjectPaths
    core: PrivacyCore
    params: Params
    gallery: Any = None
    planned: Mapping[str, list[Artefact]] = field(default_factory=dict)
    done: Mapping[str, list[Artefact]] = field(default_factory=dict)
    infos: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    request_id: str | None = None
    _setup: dvc_objects.DvcSetup | None = field(default=None, repr=False)

    @property
    def is_dvc(self) -> bool:
        """Whether the project is a DVC repository."""
        return dvcops.is_dvc_repo(self.paths.root)

    def dvc_setup(self) -> dvc_objects.DvcSetup:
        """DVC's stores and site cache, opened once per erasure."""
        if self._setup is None:
            self._setup = dvc_objects.open_setup(self.paths.root)
        return self._setup

    def rel(self, path: Path) -> str:
        """``path`` relative to the project (as given when outside it)."""
        return rel(path, self.paths.root)


class Store(Protocol):
    """One store of the subject's data (a module with these three functions)."""

    def plan(self, ctx: Context, pid: str) -> Plan | None: ...

    def erase(
        self, ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None
    ) -> Outcome: ...

    def verify(self, ctx: Context, pid: str) -> list[str]: ...


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (as given when outside it)."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def chosen_names(
    ctx: Context, artefact: Artefact, *, under: str, made: Callable[[str], bool]
) -> Artefact:
    """``artefact`` as the ledger may hold it: each component of its path below ``under`` that
    ``made`` does not recognise replaced by ``~`` and a MAC of it (see the module docstring).

    Its ``outcome`` is read from the real path first: a sealed file's suffix says
    ``crypto-shredded``.
    """
    path = str(artefact["path"])
    recorded = chosen_path(ctx, path, under=under, made=made)
    if recorded == path:
        return artefact
    outcome = artefact.get("outcome") or outcome_of(artefact, set())
    return {**artefact, "path": recorded, "outcome": outcome}


def chosen_path(ctx: Context, path: str, *, under: str, made: Callable[[str], bool]) -> str:
    """``path`` as the ledger may hold it (:func:`chosen_names`): a component already recorded
    so (``~`` and 12 hex digits, read back from a plan) is left as it is."""
    prefix = under.rstrip("/") + "/"
    if not path.startswith(prefix):
        return path
    parts = [
        p
        if made(p) or KEYED_NAME.fullmatch(p)
        else NAME_PREFIX + ctx.core.tombstones.mac(NAME_KIND, p)[:NAME_HEX]
        for p in path[len(prefix) :].split("/")
    ]
    return prefix + "/".join(parts)


def file_artefact(ctx: Context, store: str, path: Path, *, md5: bool = False) -> Artefact:
    """An artefact for file ``path`` of ``store``: its SHA-256 (and MD5, DVC's object name) and
    size (a scan for copies reads only the files of a size sought)."""
    if not md5:
        sha, size = sha256_sized(path)
        return {"store": store, "path": ctx.rel(path), "sha256": sha, "size": size}
    sha, digest, size = hash_pair(path)
    return {"store": store, "path": ctx.rel(path), "sha256": sha, "md5": digest, "size": size}


def earlier_key_artefacts(ctx: Context, store: str, key_path: Path) -> list[Artefact]:
    """The versions of key file ``key_path`` a master-key rotation replaced
    (:func:`~visage_ml.privacy.sealed.earlier_wrappings`): the same key wrapped under an earlier
    master key, which a backup made before the rotation holds, sought by the copies step and the
    verifier like the key file itself."""
    rel = ctx.rel(key_path)
    return [
        {"store": store, "path": rel, "sha256": d, "size": n}
        for d, n in earlier_wrappings(key_path)
    ]


def withheld_artefact(ctx: Context, store: str, path: Path) -> Artefact:
    """An artefact for plaintext image ``path`` of ``store``: its path, no hash."""
    return {"store": store, "path": ctx.rel(path), "sha256": None, "content": PLAINTEXT_WITHHELD}


def hash_pair(path: Path) -> tuple[str, str, int]:
    """(SHA-256, MD5, size in bytes) of a file in one pass.

    Past the first chunk the MD5 runs in a helper thread while this one computes the SHA-256
    and reads ahead (hashlib releases the GIL on large buffers): the crops of a default project
    (140 MB) take the time of their MD5 alone on two cores.
    """
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    n = 0
    with open(path, "rb") as fh:
        chunk = fh.read(CHUNK)
        if len(chunk) < CHUNK:
            sha.update(chunk)
            md5.update(chunk)
            return sha.hexdigest(), md5.hexdigest(), len(chunk)
        with ThreadPoolExecutor(max_workers=1) as pool:
            while chunk:
                job = pool.submit(md5.update, chunk)
                sha.update(chunk)
                n += len(chunk)
                ahead = fh.read(CHUNK)
                job.result()
                chunk = ahead
    return sha.hexdigest(), md5.hexdigest(), n


def merge(*lists: Iterable[Mapping[str, Any]]) -> list[Artefact]:
    """Artefact lists merged, each (store, path, sha256) once, in first-seen order."""
    seen: dict[tuple[Any, Any, Any], Artefact] = {}
    for items in lists:
        for a in items:
            seen.setdefault((a.get("store"), a.get("path"), a.get("sha256")), dict(a))
    return list(seen.values())


def retained_shared(
    artefacts: Iterable[Mapping[str, Any]], dvc_info: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """(md5, SHA-256) of the removed content the current data still holds under another path:
    the DVC objects the dvc step kept (``kept_still_referenced``), declared by the certificate
    and not looked for as a copy."""
    kept = set(dvc_info.get("kept_still_referenced") or [])
    return sorted(
        {(a["md5"], a["sha256"]) for a in artefacts if a.get("md5") in kept and a.get("sha256")}
    )


# ---------------------------------------------------------------------------------------------
# How each artefact was erased
# ---------------------------------------------------------------------------------------------

KEY_DESTROYED = "key destroyed"
CRYPTO_SHREDDED = "crypto-shredded"
PHYSICALLY_REMOVED = "physically removed"
# Files sealed under a per-subject key (raw images, crops, kept bundles, gallery templates and
# anchor templates, vault records): once that key is destroyed every copy is unreadable,
# wherever it is.
SEALED_SUFFIXES: tuple[str, ...] = (".sealed", ".tpl", ".anc", ".bin")


def outcome_of(artefact: Mapping[str, Any], sealed_md5s: set[str]) -> str:
    """``key destroyed``, ``crypto-shredded`` (ciphertext whose key is destroyed; physically
    removed too where the project can reach it) or ``physically removed`` (plaintext: only the
    deletion protects it).

    A DVC object is crypto-shredded when its md5 is that of a sealed file of the erasure.
    """
    path = str(artefact.get("path", ""))
    # A copy a killed write left (``.p1.key.x1y2z3.tmp``) is what it was to replace.
    path = leftover_target(path) or path
    if path.endswith(".key"):
        return KEY_DESTROYED
    if str(artefact.get("store", "")).startswith("dvc-"):
        return CRYPTO_SHREDDED if artefact.get("md5") in sealed_md5s else PHYSICALLY_REMOVED
    return CRYPTO_SHREDDED if path.endswith(SEALED_SUFFIXES) else PHYSICALLY_REMOVED


def label_outcomes(
    artefacts: Iterable[Mapping[str, Any]], planned: Mapping[str, list[Artefact]]
) -> list[Artefact]:
    """``artefacts`` each with its ``outcome`` (:func:`outcome_of`), kept where already set."""
    items = [dict(a) for a in artefacts]
    sealed = {
        str(a["md5"])
        for a in [*items, *(x for rec in planned.values() for x in rec)]
        if a.get("md5") and str(a.get("path", "")).endswith(SEALED_SUFFIXES)
    }
    for a in items:
        a.setdefault("outcome", outcome_of(a, sealed))
    return items
