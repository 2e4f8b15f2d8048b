"""The few DVC operations visage-ml performs itself: track a source, read lineage from dvc.lock.

DVC is driven through its command line (``dvc add``), the supported interface; ``dvc.lock`` is
plain YAML and read directly.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

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
