"""DVC's object stores (cache, every configured remote, site cache), read and purged by hash.

Lineage and certificate checks read them; the erasure's ``dvc`` store purges one subject.

DVC cannot forget one object (treeverse/dvc#4903, #4218): ``dvc gc`` keeps everything a commit,
branch or tag still names, which is exactly the history an erasure must break. So the subject
is purged by hash, here:

- the **objects** of the subject's files: every ``.dir`` manifest (in the cache and in each
  remote) whose entries list a path under ``<pid>/`` names them, and the raw-store step passes
  the md5 of each file it removed;
- the **manifests** themselves (``<md5>.dir``), which hold the subject's paths, and old
  manifests of other folders that list one of those objects (``data/protocols``, whose LFW pairs
  table the raw-store step rewrites);
- the **old versions of tables** that name the pid (``subjects.parquet``, ``images.parquet``,
  any Parquet object whose ``pid`` column holds it);
- in DVC's **site cache** (``dvc.repo.Repo(root).site_cache_dir``, by default
  ``/var/tmp/dvc/repo/<hash>``): the rows of its key-value databases (file-hash state,
  links, remote indexes) whose key or value names the pid or a purged object, and any other
  index database that does (DVC rebuilds those on demand).

An object the workspace still references (through a ``.dvc`` file or ``dvc.lock``, directly or
inside a referenced ``.dir``) is never removed, even when an old manifest of the subject listed
the same content.

Purging is two-phase so that the erasure can record what it is about to delete, with each
object's SHA-256 taken before deletion, before deleting anything: :func:`plan` finds and hashes,
:func:`execute` deletes what a plan lists (idempotent: absent objects are skipped).

What is recorded (:meth:`PurgePlan.artefacts`): each object with its store, path, md5 and
SHA-256, except the objects of plaintext images (a manifest lists them under ``<pid>/`` with a
name that is not sealed, ``.png`` of a project not yet sealed; or the caller knows their md5):
their md5 and SHA-256 are those of a photograph of the subject, so they are recorded by the file
they held (``"path": "<relpath> (DVC object)"``, or ``"<relpath> (DVC object i of n)"`` when
manifests list ``n`` versions of that file, so that each object removed is certified once; the
erasure records a name someone chose in ``<relpath>`` keyed, :class:`PurgePlan`'s ``name``;
``"sha256": None``, ``content``
:data:`~visage_ml.rights.content_hashes.PLAINTEXT_WITHHELD`) and counted, not named, among the
objects kept because still referenced. A resumed erasure cannot take those objects from the
ledger, so :func:`execute` deletes every other object before any ``.dir`` manifest, in every
store: until the last object is gone the manifests that lead to it are still there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from visage_ml.data.manifest import parquet_names
from visage_ml.data.rawstore import IMAGE_EXT
from visage_ml.dvcops import is_dvc_repo, tracked_md5
from visage_ml.io import fsync_dir, secure_unlink, sha256_sized
from visage_ml.rights.content_hashes import PLAINTEXT_WITHHELD

log = logging.getLogger(__name__)

PARQUET_MAGIC = b"PAR1"
DIR_SUFFIX = ".dir"
SQLITE_MAGIC = b"SQLite format 3\x00"
# Hash layouts: DVC 3 (``files/md5``) and the DVC 2 layout still read for old objects.
HASH_NAMES = ("md5", "md5-dos2unix")

MSG_NOT_REPO = "{root} is not a DVC repository; nothing to purge from DVC storage"
MSG_UNREACHABLE = "DVC remote {name} cannot be reached ({error}): passed over"
PROBE_SECONDS = 2.0  # endpoint_down: how long a remote's endpoint may take to accept
MSG_STILL_LISTED = (
    "the current data/raw manifest ({md5}) still lists subject {pid}; run the raw-store step "
    "of the erasure first (`visage privacy resume`)"
)


@dataclass(frozen=True)
class ObjectStore:
    """One place DVC keeps objects: the local cache or a remote, in one hash layout."""

    name: str
    kind: str  # "cache" or "remote"
    odb: Any  # dvc_data HashFileDB
    local_path: Path | None  # the folder when the store is on the local file system

    def oid_path(self, oid: str) -> str:
        return str(self.odb.oid_to_path(oid))

    def endpoint(self) -> tuple[str, int] | None:
        """``(host, port)`` of a remote's own endpoint (an S3 ``endpointurl``: the local
        stack, a MinIO), None for a local store or a remote without one (AWS itself)."""
        if self.local_path is not None:
            return None
        inner = getattr(self.odb.fs, "fs", None)
        url = (getattr(inner, "client_kwargs", None) or {}).get("endpoint_url")
        if not url:
            return None
        parsed = urlsplit(str(url))
        if not parsed.hostname:
            return None
        return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)

    def exists(self, oid: str) -> bool:
        if self.local_path is not None:
            return os.path.exists(self.oid_path(oid))
        return bool(self.odb.fs.exists(self.oid_path(oid)))

    def read(self, oid: str) -> bytes:
        if self.local_path is not None:
            with open(self.oid_path(oid), "rb") as fh:
                return fh.read()
        return bytes(self.odb.fs.cat_file(self.oid_path(oid)))

    def sha256(self, oid: str) -> tuple[str, int]:
        """The SHA-256 of object ``oid`` and its size in bytes (of the content hashed)."""
        if self.local_path is not None:
            return sha256_sized(Path(self.oid_path(oid)))
        data = self.read(oid)
        return hashlib.sha256(data).hexdigest(), len(data)

    def remove(self, oid: str) -> bool:
        path = self.oid_path(oid)
        if self.local_path is not None:
            return secure_unlink(Path(path))
        if self.odb.fs.exists(path):
            self.odb.fs.rm(path)
            return True
        return False

    def oids(self) -> Iterator[str]:
        """Every object id in the store (``<md5>`` or ``<md5>.dir``)."""
        if self.local_path is not None:
            root = self.local_path
            if not root.is_dir():
                return
            with os.scandir(root) as shards:
                for shard in shards:
                    if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                        continue
                    with os.scandir(shard.path) as files:
                        for f in files:
                            if f.is_file(follow_symlinks=False) and not f.name.startswith("."):
                                yield shard.name + f.name
            return
        with contextlib.suppress(FileNotFoundError):
            for path in self.odb.fs.find(self.odb.path):
                parts = str(path).replace("\\", "/").rsplit("/", 2)
                if len(parts) == 3 and len(parts[1]) == 2:
                    yield parts[1] + parts[2]

    def listed(self) -> Iterator[tuple[str, str, int]]:
        """``(object id, its path, its size)`` of every object of a store not on this file
        system, as DVC's filesystem API lists them: an S3 listing gives each size, and no object
        is read (a file system whose listing gives none is asked each file's size). A remote
        without its folder yet lists nothing; any other error is the client's own (botocore,
        aiohttp; a 403 is s3fs's PermissionError), raised: not an empty remote."""
        fs = self.odb.fs
        try:
            found = fs.fs.find(self.odb.path, detail=True)
        except FileNotFoundError:
            return
        entries = found.items() if isinstance(found, Mapping) else ((p, None) for p in found)
        for path, info in entries:
            parts = str(path).replace("\\", "/").rsplit("/", 2)
            if len(parts) != 3 or len(parts[1]) != 2 or parts[2].startswith("."):
                continue
            if isinstance(info, Mapping) and info.get("type") == "directory":
                continue
            size = info.get("size") if isinstance(info, Mapping) else None
            if not isinstance(size, int):
                size = int(fs.info(str(path))["size"])
            yield parts[1] + parts[2], str(path), size

    def head(self, path: str, n: int) -> bytes:
        """The first ``n`` bytes of the object at ``path`` of a store not on this file system
        (a ranged read on S3)."""
        return bytes(self.odb.fs.cat_file(path, start=0, end=n))

    def open_path(self, path: str) -> Any:
        """The object at ``path`` of a store not on this file system, opened for reading in
        chunks (not read whole into memory)."""
        return self.odb.fs.open(path, "rb")

    def display(self, oid: str, root: Path) -> str:
        """Where the object is, relative to the project when it lies inside it."""
        path = self.oid_path(oid)
        with contextlib.suppress(ValueError):
            return Path(path).resolve().relative_to(root.resolve()).as_posix()
        return path


@dataclass
class DvcSetup:
    """The DVC repository's object stores and site cache."""

    root: Path
    stores: list[ObjectStore] = field(default_factory=list)
    site_cache_dir: Path | None = None
    remote_urls: dict[str, str] = field(default_factory=dict)
    # Configured remotes DVC could not open (name -> the error's type): nothing on them can be
    # purged nor looked for (a missing plugin such as dvc-ssh, a misconfiguration).
    unopened: dict[str, str] = field(default_factory=dict)
    # DVC's .dvcignore test for folders (None: nothing ignored): DVC reads no .dvc file in an
    # ignored folder, so none of them references an object.
    is_ignored_dir: Callable[[str], bool] | None = None


def open_setup(root: Path) -> DvcSetup:
    """Find the cache, every configured remote (both hash layouts) and the site cache.

    Returns an empty setup outside a DVC repository.
    """
    root = Path(root)
    if not is_dvc_repo(root):
        log.info(MSG_NOT_REPO.format(root=root))
        return DvcSetup(root)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.repo import Repo  # heavy (~1 s): only an erasure or a verifier in a DVC repo needs it

    setup = DvcSetup(root)
    with Repo(str(root)) as repo:
        setup.site_cache_dir = Path(repo.site_cache_dir)
        setup.is_ignored_dir = repo.dvcignore.is_ignored_dir
        cache_layouts = (("cache", repo.cache.local), ("cache(legacy)", repo.cache.legacy))
        seen: set[str] = set()
        for name, odb in cache_layouts:
            if odb is None or odb.path in seen:
                continue
            seen.add(odb.path)
            setup.stores.append(ObjectStore(name, "cache", odb, Path(odb.path)))
        for remote, conf in (repo.config.get("remote") or {}).items():
            setup.remote_urls[remote] = str(conf.get("url", ""))
            for hash_name in HASH_NAMES:
                try:
                    odb = repo.cloud.get_remote_odb(remote, hash_name=hash_name)
                except Exception as exc:  # an unreachable or misconfigured remote
                    log.warning("DVC remote %s cannot be opened (%s)", remote, type(exc).__name__)
                    setup.unopened.setdefault(remote, type(exc).__name__)
                    break
                if odb.path in seen:
                    continue
                seen.add(odb.path)
                local = _is_local(odb)
                label = f"remote:{remote}" + ("" if hash_name == "md5" else "(legacy)")
                setup.stores.append(
                    ObjectStore(label, "remote", odb, Path(odb.path) if local else None)
                )
    return setup


def add(root: Path, target: Path) -> str | None:
    """``dvc add`` ``target`` in this process (DVC's Python API); return its new md5.

    Same effect as :func:`visage_ml.dvcops.track`, without starting another interpreter: the
    erasure has DVC imported already for the purge. A folder that ``<target>.dvc`` tracks
    already is updated from that file alone: ``dvc add`` would first load every stage of the
    project (``dvc.yaml``, ``dvc.lock``, each ``.dvc`` file) to find the one that owns the path,
    which is this one, and then do the same (hash, cache, relink, rewrite the ``.dvc`` file).
    """
    root = Path(root)
    if not is_dvc_repo(root):
        return None
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    # Deferred: DVC is heavy and needed only in a DVC repository.
    from dvc.dvcfile import load_file
    from dvc.repo import Repo, lock_repo

    target = Path(target).resolve()
    dvcfile = Path(f"{target}.dvc")
    with Repo(str(root)) as repo, warnings.catch_warnings():
        # DVC 3.67's own DeprecationWarnings (its trie API), not actionable here.
        warnings.simplefilter("ignore", DeprecationWarning)
        repo.scm_context.quiet = True  # no "git add" hint on stdout (JSON output, servers)
        stage = load_file(repo, str(dvcfile)).stage if dvcfile.is_file() else None
        if (
            stage is None
            or not stage.is_data_source
            or len(stage.outs) != 1
            or Path(stage.outs[0].fs_path).resolve() != target
        ):
            repo.add(str(target))
        else:
            with lock_repo(repo), repo.scm_context:
                stage.add_outs()
                stage.dump()
    return tracked_md5(root, target)


def _is_local(odb: Any) -> bool:
    return type(odb.fs).__name__ == "LocalFileSystem"


# ---------------------------------------------------------------------------------------------
# What the workspace references
# ---------------------------------------------------------------------------------------------


def _outs_md5s(doc: Any) -> Iterator[str]:
    """md5 of every output a ``.dvc`` file or ``dvc.lock`` names.

    Dependencies are left out on purpose: DVC needs no object for them (``dvc gc`` keeps outputs
    only), and ``dvc.lock`` names the old ``data/raw`` manifest as a dependency of ``prepare``
    until the stage runs again.
    """
    if not isinstance(doc, dict):
        return
    sections = [doc.get("outs")]
    stages = doc.get("stages")
    if isinstance(stages, dict):
        sections.extend(s.get("outs") for s in stages.values() if isinstance(s, dict))
    for outs in sections:
        for out in outs if isinstance(outs, list) else []:
            if isinstance(out, dict) and isinstance(out.get("md5"), str):
                yield out["md5"]


def workspace_files(
    root: Path, *, is_ignored_dir: Callable[[str], bool] | None = None
) -> list[Path]:
    """The ``.dvc`` files and ``dvc.lock`` files of the workspace (not under .dvc, .git).

    ``is_ignored_dir`` (DVC's ``.dvcignore`` test) skips the folders DVC never reads, such as a
    gallery of 100k templates.
    """
    out: list[Path] = []
    skip = {".git", ".dvc", ".venv", "node_modules", "__pycache__"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d
            for d in dirnames
            if d not in skip
            and not os.path.islink(os.path.join(dirpath, d))
            and not (is_ignored_dir and is_ignored_dir(os.path.join(dirpath, d)))
        ]
        for name in filenames:
            if name.endswith(".dvc") or name == "dvc.lock":
                out.append(Path(dirpath) / name)
    return sorted(out)


def read_manifest(data: bytes) -> list[dict[str, Any]] | None:
    """Entries of a ``.dir`` manifest (``[{"md5", "relpath"}, ...]``), or None if not one."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, list):
        return None
    return [e for e in doc if isinstance(e, dict) and "relpath" in e]


def endpoint_down(store: ObjectStore, known: dict[Any, str | None]) -> str | None:
    """Why ``store``'s endpoint takes no connection (``ConnectionRefusedError``, a timeout),
    or None when it does or has none to try. One TCP connection of at most
    :data:`PROBE_SECONDS` per endpoint, remembered in ``known``: the S3 client would retry each
    request for 4-14 s before it gave up (a stack stopped after ``visage stack down``)."""
    where = store.endpoint()
    if where is None:
        return None
    if where not in known:
        try:
            socket.create_connection(where, timeout=PROBE_SECONDS).close()
            known[where] = None
        except OSError as exc:
            known[where] = type(exc).__name__
    return known[where]


def read_object(
    stores: Iterable[ObjectStore], oid: str, *, unreachable: set[str] | None = None
) -> bytes | None:
    """The bytes of object ``oid`` from the first store holding it (None when none does).

    Given a set ``unreachable``, a remote that cannot be reached (the local stack stopped, a
    network down) is passed over, as a store without the object: named there, with one warning,
    and not asked again. Without it (an erasure must not pass over a copy) its error is raised.
    """
    for store in stores:
        if unreachable is not None and store.name in unreachable:
            continue
        try:
            if store.exists(oid):
                return store.read(oid)
        except FileNotFoundError:  # not in this store
            continue
        except Exception as exc:  # botocore, aiohttp; a 403 (s3fs: PermissionError), refused
            if unreachable is None or store.local_path is not None:
                raise
            unreachable.add(store.name)
            log.warning(MSG_UNREACHABLE.format(name=store.name, error=type(exc).__name__))
    return None


def current_references(setup: DvcSetup, *, unreachable_ok: bool = False) -> set[str]:
    """Object ids the workspace references: outs of .dvc files and dvc.lock, and their entries
    (``unreachable_ok``: remotes that cannot be reached are passed over, :func:`read_object`)."""
    refs: set[str] = set()
    unreachable: set[str] | None = set() if unreachable_ok else None
    if unreachable is not None:  # a stopped stack: passed over at once, not after retries
        known: dict[Any, str | None] = {}
        for store in setup.stores:
            if why := endpoint_down(store, known):
                unreachable.add(store.name)
                log.warning(MSG_UNREACHABLE.format(name=store.name, error=why))
    for f in workspace_files(setup.root, is_ignored_dir=setup.is_ignored_dir):
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            log.warning("%s is unreadable; its objects are kept", f.name)
            continue
        refs.update(_outs_md5s(doc))
    for oid in [r for r in refs if r.endswith(".dir")]:
        data = read_object(setup.stores, oid, unreachable=unreachable)
        entries = read_manifest(data) if data is not None else None
        for e in entries or []:
            if isinstance(e.get("md5"), str):
                refs.add(e["md5"])
    return refs


def manifest_lists(entries: Iterable[dict[str, Any]], pid: str) -> list[dict[str, Any]]:
    """Entries of a manifest under the subject's folder (``<pid>/...``, at any depth)."""
    out = []
    for e in entries:
        rel = str(e.get("relpath", "")).replace("\\", "/")
        if rel.split("/")[0] == pid or f"/{pid}/" in f"/{rel}":
            out.append(e)
    return out


# ---------------------------------------------------------------------------------------------
# Plan and execute
# ---------------------------------------------------------------------------------------------


def is_plaintext_entry(relpath: str) -> bool:
    """Whether a manifest entry of the subject's folder is a file in clear (not sealed)."""
    return not relpath.endswith(IMAGE_EXT)


@dataclass
class PurgePlan:
    """What to delete: objects per store (with SHA-256 before deletion) and site-cache files.

    ``objects`` name each object (``md5``) for :func:`execute`; ``plain`` maps the md5 of each
    plaintext image's object to the file it held, which is all :meth:`artefacts` records of it,
    as ``name`` records that file's path (None: as it is; the erasure's keys the names someone
    chose, :func:`visage_ml.rights.erasure.raw.recorded_name`).
    """

    pid: str
    objects: list[dict[str, Any]] = field(default_factory=list)
    site_cache: list[dict[str, Any]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    plain: dict[str, str] = field(default_factory=dict)
    name: Callable[[str], str] | None = None

    def recorded(self, art: dict[str, Any]) -> dict[str, Any]:
        """Object ``art`` as the ledger may hold it: a plaintext image's without its names.

        Its path is the file it held; where manifests list several versions of that file, it
        also says which (``i of n``, in md5 order), so that no two objects removed are recorded
        alike (artefacts are merged by store, path and SHA-256).
        """
        md5 = str(art.get("md5"))
        held = self.plain.get(md5)
        if held is None:
            return art
        versions = sorted(m for m, f in self.plain.items() if f == held)
        which = f" {versions.index(md5) + 1} of {len(versions)}" if len(versions) > 1 else ""
        shown = held if self.name is None else self.name(held)
        return {
            "store": art["store"],
            "path": f"{shown} (DVC object{which})",
            "sha256": None,
            "content": PLAINTEXT_WITHHELD,
        }

    def artefacts(self) -> list[dict[str, Any]]:
        """What to record: objects (plaintext images' by the file they held) and site cache."""
        return [*(self.recorded(a) for a in self.objects), *self.site_cache]

    @property
    def kept_named(self) -> list[str]:
        """Kept objects that may be named (not plaintext images)."""
        return [k for k in self.kept if k not in self.plain]

    @property
    def kept_withheld(self) -> int:
        """How many kept objects are plaintext images (counted, not named)."""
        return sum(k in self.plain for k in self.kept)


@dataclass
class Found:
    """What :func:`find_subject_objects` found: objects to delete, objects kept because still
    referenced, and of both the plaintext images' objects (md5: the file each held)."""

    targets: set[str]
    kept: set[str]
    plain: dict[str, str]


def find_subject_objects(
    setup: DvcSetup,
    pid: str,
    *,
    known_md5s: Iterable[str] = (),
    plain_md5s: Mapping[str, str] | None = None,
) -> Found:
    """Object ids that hold or name the subject, and those kept because still referenced.

    ``plain_md5s``: md5s the caller knows are plaintext images (md5: the file each held),
    added to ``known_md5s``; the objects a manifest lists under ``<pid>/`` with a name that is
    not sealed are plaintext images too.

    Raises
    ------
    RuntimeError
        The workspace's current manifest still lists the subject (the raw files are not gone).
    """
    keep = current_references(setup)
    plain: dict[str, str] = dict(plain_md5s or {})
    targets: set[str] = set(known_md5s) | set(plain)
    removed = targets - keep
    tables: set[str] = set()
    for store in setup.stores:
        for oid in list(store.oids()):
            if not oid.endswith(".dir"):
                continue
            try:
                entries = read_manifest(store.read(oid))
            except OSError:
                continue
            if entries is None:
                continue
            listed = manifest_lists(entries, pid)
            if listed:
                if oid in keep:
                    raise RuntimeError(MSG_STILL_LISTED.format(md5=oid, pid=pid))
                targets.add(oid)
                for e in listed:
                    if not e.get("md5"):
                        continue
                    md5, relpath = str(e["md5"]), str(e["relpath"]).replace("\\", "/")
                    targets.add(md5)
                    if is_plaintext_entry(relpath):
                        plain[md5] = min(relpath, plain.get(md5, relpath))
            elif oid not in keep and any(str(e.get("md5")) in removed for e in entries):
                # An old manifest of another folder listing a file the raw step rewrote (the
                # LFW pairs under data/protocols): it names the purged object.
                targets.add(oid)
            tables.update(
                str(e["md5"])
                for e in entries
                if str(e.get("relpath", "")).endswith(".parquet") and e.get("md5")
            )
    # Parquet objects no manifest names any more (an earlier purge removed it): found by magic.
    # Objects the workspace references are kept whatever they hold, so they are not opened.
    for store in setup.stores:
        if store.local_path is None:
            continue
        for oid in store.oids():
            if oid.endswith(".dir") or oid in tables or oid in keep:
                continue
            with contextlib.suppress(OSError), open(store.oid_path(oid), "rb") as fh:
                if fh.read(4) == PARQUET_MAGIC:
                    tables.add(oid)
    for oid in tables - keep - targets:
        data = read_object(setup.stores, oid)
        if data is not None and parquet_names(data, pid):
            targets.add(oid)
    kept = targets & keep
    return Found(targets - keep, kept, {m: f for m, f in plain.items() if m in targets})


def plan(
    setup: DvcSetup,
    pid: str,
    *,
    known_md5s: Iterable[str] = (),
    plain_md5s: Mapping[str, str] | None = None,
    name: Callable[[str], str] | None = None,
) -> PurgePlan:
    """Find and hash everything of the subject in DVC's stores and site cache; delete nothing.

    ``known_md5s`` and ``plain_md5s`` as in :func:`find_subject_objects`; ``name`` as in
    :class:`PurgePlan`.
    """
    out = PurgePlan(pid, name=name)
    found = find_subject_objects(setup, pid, known_md5s=known_md5s, plain_md5s=plain_md5s)
    out.targets = sorted(found.targets)
    out.kept = sorted(found.kept)
    out.plain = found.plain
    for store in setup.stores:
        for oid in out.targets:
            try:
                if not store.exists(oid):
                    continue
                digest, size = store.sha256(oid)
            except OSError:
                continue
            out.objects.append(
                {
                    "store": "dvc-" + store.name,
                    "path": store.display(oid, setup.root),
                    "md5": oid,
                    "sha256": digest,
                    "size": size,
                }
            )
    if setup.site_cache_dir is not None:
        out.site_cache = plan_site_cache(setup.site_cache_dir, _needles(pid, out.targets))
    return out


def is_manifest(oid: str) -> bool:
    """Whether object ``oid`` is a ``.dir`` manifest (sorts every other object before it)."""
    return str(oid).endswith(DIR_SUFFIX)


def execute(setup: DvcSetup, purge_plan: PurgePlan) -> list[dict[str, Any]]:
    """Delete what ``purge_plan`` lists (absent objects are skipped); return what was removed,
    as :meth:`PurgePlan.artefacts` records it.

    Every object goes before any ``.dir`` manifest, in every store: an interrupted purge leaves
    the manifests that lead a resumed one to what is left (the ledger does not name the objects
    of plaintext images).
    """
    removed = []
    by_name = {"dvc-" + s.name: s for s in setup.stores}
    for art in sorted(purge_plan.objects, key=lambda a: is_manifest(a["md5"])):
        store = by_name.get(art["store"])
        if store is None:
            continue
        if store.remove(art["md5"]):
            removed.append(purge_plan.recorded(art))
    if setup.site_cache_dir is not None:
        needles = _needles(purge_plan.pid, purge_plan.targets)
        removed.extend(purge_site_cache(setup.site_cache_dir, needles))
    for store in setup.stores:
        if store.local_path is not None and store.local_path.is_dir():
            with contextlib.suppress(OSError):
                fsync_dir(store.local_path)
    return removed


def _needles(pid: str, targets: Iterable[str]) -> list[bytes]:
    out = [pid.encode()]
    for oid in targets:
        out.append(oid.encode())
    return out


# ---------------------------------------------------------------------------------------------
# Site cache
# ---------------------------------------------------------------------------------------------


def _site_files(site: Path) -> Iterator[Path]:
    if not site.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(site):
        for name in filenames:
            yield Path(dirpath) / name


def _contains(path: Path, needles: list[bytes]) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return any(n in data for n in needles)


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _kv_tables(con: sqlite3.Connection) -> list[str]:
    """Tables of a diskcache-style key-value database (``key`` and ``value`` columns)."""
    out = []
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        cols = {r[1] for r in con.execute(f'PRAGMA table_info("{name}")')}
        if {"key", "value"} <= cols:
            out.append(name)
    return out


def plan_site_cache(site: Path, needles: list[bytes]) -> list[dict[str, Any]]:
    """Site-cache files (and their companions) that name the subject or a purged object."""
    out = []
    for path in sorted(_site_files(site)):
        if _contains(path, needles):
            digest, size = sha256_sized(path)
            out.append(
                {"store": "dvc-site-cache", "path": str(path), "sha256": digest, "size": size}
            )
    return out


def purge_site_cache(site: Path, needles: list[bytes]) -> list[dict[str, Any]]:
    """Remove the subject from DVC's site cache; return the files changed or deleted.

    Key-value databases lose the rows whose key or value holds a needle (``secure_delete`` and
    ``VACUUM``, so no freed page keeps them); any other file that holds one is deleted (DVC
    rebuilds its indexes on demand).
    """
    changed = []
    for path in sorted(_site_files(site)):
        if path.name.endswith(("-wal", "-shm", "-journal")) or not _contains(path, needles):
            continue
        digest, size = sha256_sized(path)
        before = {"store": "dvc-site-cache", "path": str(path), "sha256": digest, "size": size}
        if _is_sqlite(path) and _purge_kv(path, needles) and not _contains(path, needles):
            changed.append(before)
            continue
        for companion in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))):
            secure_unlink(companion)
        changed.append(before)
    return changed


def _purge_kv(path: Path, needles: list[bytes]) -> bool:
    """Delete matching rows of a key-value database in place; False when it is not one."""
    try:
        con = sqlite3.connect(path, timeout=30)
    except sqlite3.Error:
        return False
    try:
        tables = _kv_tables(con)
        if not tables:
            return False
        con.execute("PRAGMA secure_delete = ON")
        for table in tables:
            for needle in needles:
                # Table names come from the database's own schema; values are bound.
                con.execute(
                    f'DELETE FROM "{table}" WHERE instr(CAST(key AS BLOB), ?) > 0 '  # noqa: S608
                    "OR instr(CAST(value AS BLOB), ?) > 0",
                    (needle, needle),
                )
        con.commit()
        con.execute("VACUUM")
        with contextlib.suppress(sqlite3.Error):
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return True
    except sqlite3.Error as exc:
        log.warning("site cache database %s could not be edited (%s)", path.name, exc)
        return False
    finally:
        con.close()
