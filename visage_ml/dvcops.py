"""The few DVC operations visage-ml performs itself: track a source, read lineage from dvc.lock,
tell a tracked folder against its record.

DVC is driven through its command line (``dvc add``), the supported interface; ``dvc.lock`` is
plain YAML and read directly; a folder's record is told by its hash as DVC computes it
(:func:`folder_state`, DVC's own ignore rules applied).
"""

from __future__ import annotations

import configparser
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from visage_ml.io import md5_file
from visage_ml.procenv import child_env

log = logging.getLogger(__name__)

NOT_A_DVC_REPO = (
    "{root} is not a DVC repository, so {target} is not versioned; run `git init && dvc init` "
    "there (the README shows how) and repeat the command"
)


class DvcError(RuntimeError):
    """A DVC command failed."""


def dvc_env() -> dict[str, str]:
    """Environment for DVC subprocesses: no secrets, no analytics, no update checks."""
    env = child_env({"DVC_NO_ANALYTICS": "1"})
    env.setdefault("DVC_UPDATER", "0")
    return env


def dvc_executable() -> list[str]:
    """The ``dvc`` of this interpreter's environment (works without an activated venv)."""
    exe = Path(sys.executable).with_name("dvc")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("dvc")
    if found:
        return [found]
    return [sys.executable, "-m", "dvc"]


def is_dvc_repo(root: Path) -> bool:
    """Whether ``root`` holds a ``.dvc`` folder."""
    return (Path(root) / ".dvc").is_dir()


def run_dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``dvc ARGS`` in ``root``; raise :class:`DvcError` with its stderr on failure."""
    proc = subprocess.run(
        [*dvc_executable(), *args],
        cwd=root,
        env=dvc_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed: {proc.stderr.strip()[-2000:]}")
    return proc


def track(root: Path, target: Path) -> str | None:
    """``dvc add`` ``target`` (a folder under ``root``); return its new ``.dir`` md5.

    Returns None (with a warning) when ``root`` is not a DVC repository.
    """
    root = Path(root)
    rel = os.path.relpath(target, root)
    if not is_dvc_repo(root):
        log.warning(NOT_A_DVC_REPO.format(root=root, target=rel))
        return None
    run_dvc(root, "add", "--quiet", rel)
    return tracked_md5(root, Path(target))


def tracked_md5(root: Path, target: Path) -> str | None:
    """The md5 recorded in ``<target>.dvc`` (a ``.dir`` hash for folders), if tracked."""
    dvcfile = Path(str(target) + ".dvc")
    if not dvcfile.exists():
        return None
    doc = yaml.safe_load(dvcfile.read_text(encoding="utf-8")) or {}
    outs = doc.get("outs") or []
    return str(outs[0].get("md5")) if outs else None


def tracked_listing(target: Path) -> list[str] | None:
    """The files ``<target>.dvc`` records in the folder ``target`` (relative paths, as its
    ``.dir`` object in the DVC cache lists them), or None where that cannot be told: no such
    file, not a folder's, its object not in the cache (not pulled). A record of no file
    (``nfiles: 0``, ``dvc add`` of an empty folder) is an empty list without the cache."""
    objects = tracked_objects(target)
    return None if objects is None else list(objects)


def tracked_objects(target: Path) -> dict[str, str] | None:
    """Each file ``<target>.dvc`` records in the folder ``target`` (its relative path) and the
    md5 of its object in the DVC cache, or None where that cannot be told
    (:func:`tracked_listing`)."""
    dvcfile = Path(f"{target}.dvc")
    try:
        doc = yaml.safe_load(dvcfile.read_text(encoding="utf-8")) or {}
        out = (doc.get("outs") or [{}])[0]
    except (OSError, yaml.YAMLError, AttributeError, IndexError, KeyError, TypeError):
        return None
    md5 = str(out.get("md5") or "")
    if out.get("nfiles") == 0:
        return {}
    if not md5.endswith(".dir") or len(md5) != 36:
        return None
    for obj in _object_paths(dvcfile.parent, md5):
        try:
            entries = json.loads(obj.read_text(encoding="utf-8"))
            return {str(e["relpath"]): str(e["md5"]) for e in entries}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


class FolderState(NamedTuple):
    """A tracked folder of the workspace against its ``.dvc`` record (:func:`folder_state`)."""

    files: int
    """Files in the workspace's folder, DVC's ignore rules applied."""
    recorded: int | None
    """Files the record counts (its ``nfiles``); None where it does not say."""
    same: bool
    """Whether the folder holds exactly the files recorded, told by their hashes."""


def folder_state(target: Path) -> FolderState:
    """Whether the folder ``target`` of the workspace holds exactly the files ``<target>.dvc``
    records, told without the DVC cache: the md5 of the listing ``dvc add`` would record for it
    (each file's md5 and relative path, DVC's ignore rules applied: DVC 3's ``.dir`` object) is
    the record's. Each file is read (:func:`~visage_ml.io.md5_file`) only where the record's
    file count and byte total (``nfiles``, ``size``) are the workspace's. ``same`` is False
    too where it cannot be told: no record of a folder, or one that cannot be read, a record of
    DVC 2's hash (``md5-dos2unix``: no ``hash: md5``), a ``.dvcignore`` inside (``dvc add``
    refuses it), a file that is not a regular one or cannot be read, ``target`` not a folder of
    a DVC repository."""
    target = Path(target).absolute()
    try:
        doc = yaml.safe_load(Path(f"{target}.dvc").read_text(encoding="utf-8")) or {}
        out = dict((doc.get("outs") or [{}])[0])
    except (OSError, yaml.YAMLError, AttributeError, IndexError, KeyError, TypeError, ValueError):
        out = {}
    md5, nfiles, size = str(out.get("md5") or ""), out.get("nfiles"), out.get("size")
    recorded = nfiles if isinstance(nfiles, int) else None
    files = _folder_files(target)
    state = FolderState(len(files or {}), recorded, False)
    if (
        files is None
        or not md5.endswith(".dir")
        or out.get("hash") != "md5"
        or recorded not in (None, len(files))
        or any(n < 0 for _, n in files.values())
        or (isinstance(size, int) and size != sum(n for _, n in files.values()))
    ):
        return state
    try:
        listing = [
            {"md5": md5_file(path), "relpath": rel} for rel, (path, _) in sorted(files.items())
        ]
    except OSError:  # a file that cannot be read: not shown to be the record's
        return state
    # DVC's Tree.as_bytes and Tree.digest (dvc-data): the listing sorted by path as JSON, its md5.
    body = json.dumps(listing, sort_keys=True).encode("utf-8")
    return state._replace(same=hashlib.md5(body, usedforsecurity=False).hexdigest() == md5[:-4])


def _folder_files(target: Path) -> dict[str, tuple[Path, int]] | None:
    """Each file ``dvc add`` would record in the folder ``target`` (its path relative to
    ``target``, with ``/``): its path and size, walked as DVC walks it (its ignore rules: the
    ``.dvcignore`` files from the repository's root down, ``.git``, ``.dvc``, sub-repositories).
    A file that is not a regular one (nor a link to one) has size -1. None where ``target`` is
    not a folder of a DVC repository."""
    root = next((d for d in (target, *target.parents) if (d / ".dvc").is_dir()), None)
    if root is None or not target.is_dir():
        return None
    from dvc.fs import LocalFileSystem  # heavy: only a check without DVC's listing needs it
    from dvc.ignore import DvcIgnoreFilter

    fs = LocalFileSystem()
    ignore = DvcIgnoreFilter(fs, os.fspath(root))
    found: dict[str, tuple[Path, int]] = {}
    for folder, _dirs, names in ignore.walk(fs, os.fspath(target)):
        for name in names:
            path = Path(folder, name)
            try:
                st = path.stat()
                size = st.st_size if stat.S_ISREG(st.st_mode) and name != ".dvcignore" else -1
            except OSError:
                size = -1
            found[path.relative_to(target).as_posix()] = (path, size)
    return found


def in_cache(start: Path, md5: str) -> bool:
    """Whether the DVC cache of the repository holding ``start`` holds the object ``md5``
    (a file of it there: ``dvc checkout`` can restore it without a remote)."""
    return any(obj.is_file() for obj in _object_paths(Path(start), md5))


def _object_paths(start: Path, md5: str) -> list[Path]:
    """Where the object ``md5`` lies in the DVC cache of the repository holding ``start``
    (DVC 3's ``files/md5/``, then DVC 2's layout)."""
    return [
        obj
        for cache in _cache_dirs(start)
        for obj in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:])
    ]


def _cache_dirs(start: Path) -> list[Path]:
    """The DVC cache of the repository holding ``start`` (``cache.dir`` of its ``.dvc/config``
    and ``config.local``, relative to ``.dvc/``; else ``.dvc/cache``)."""
    for folder in (start, *start.parents):
        dot = folder / ".dvc"
        if not dot.is_dir():
            continue
        found = [dot / "cache"]
        for name in ("config", "config.local"):
            cfg = configparser.ConfigParser()
            try:
                cfg.read(dot / name, encoding="utf-8")
                found.insert(0, (dot / cfg.get("cache", "dir").strip().strip("'\"")).resolve())
            except (configparser.Error, OSError, ValueError):
                continue
        return found
    return []


def read_lock(root: Path) -> dict[str, Any]:
    """``dvc.lock`` as a mapping (empty when absent)."""
    path = Path(root) / "dvc.lock"
    if not path.exists():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def locked_md5(root: Path, stage: str, path: str, *, kind: str = "outs") -> str | None:
    """md5 of ``path`` among the ``kind`` (deps/outs) of ``stage`` in ``dvc.lock``."""
    stage_doc = (read_lock(root).get("stages") or {}).get(stage) or {}
    for item in stage_doc.get(kind) or []:
        if item.get("path") == path:
            return item.get("md5")
    return None


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=root,
            env=child_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 else None


def git_revision(root: Path, *, mark_dirty: bool = False) -> str:
    """``git rev-parse HEAD`` of ``root`` (``"unknown"`` outside git or before a commit).

    With ``mark_dirty``, ``+dirty`` is appended when tracked files differ from the commit.
    """
    rev = _git(root, "rev-parse", "HEAD")
    if not rev:
        return "unknown"
    if mark_dirty and _git(root, "status", "--porcelain", "--untracked-files=no"):
        return rev + "+dirty"
    return rev
