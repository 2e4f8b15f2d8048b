"""The MLflow store: artefacts and database content naming the subject (by design none).

Every file under ``mlruns/`` that names the pid, or whose SHA-256 is one of the subject's raw
files or the plaintext of an erased image (:mod:`visage_ml.rights.content_hashes`), is
overwritten and deleted; a plaintext copy is recorded by its path only. A path keeps MLflow's
own names (experiment and run ids, its folders: ``mlruns/1/<run id>/artifacts/``); an
artefact's file and folder names, a registered model's name, a tag's key were chosen by whoever
logged them and may be the person's: each is recorded keyed
(:func:`~visage_ml.rights.erasure.base.chosen_names`), and the purge removes what this run's
scan found (a resumed run scans again). In the SQLite tracking
database the pid is removed by raw SQL against MLflow's schema, on purpose: MLflow's API can
delete runs and tags but cannot erase a value from a tag or param in place, and nothing in it
rewrites the freed SQLite pages that still hold deleted bytes (``PRAGMA secure_delete=ON`` +
``VACUUM`` do).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
from collections.abc import Container, Iterable, Mapping
from pathlib import Path
from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.io import secure_unlink, sha256_sized
from visage_ml.rights.content_hashes import ContentHashes, content_hit
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan, chosen_names, rel

STORE = "mlflow"
DB_FILE = "mlflow.db"
# Tables whose rows are key/value leaves of a run, model or trace: a row naming the pid is
# deleted; elsewhere (names, descriptions) the pid is replaced by ERASED_TEXT.
MLFLOW_LEAF_TABLES = frozenset(
    {
        "tags",
        "params",
        "metrics",
        "latest_metrics",
        "experiment_tags",
        "model_version_tags",
        "registered_model_tags",
        "input_tags",
        "trace_tags",
        "trace_request_metadata",
        "logged_model_tags",
        "logged_model_params",
    }
)
ERASED_TEXT = "[erased]"
# The names MLflow makes under mlruns/ (and in a server's artefact paths): experiment ids,
# run, logged-model and trace ids, a model's versions, its own folders and files. Any other
# name was chosen by whoever logged it.
MLFLOW_NAMES = re.compile(
    r"\d+|(?:m-|tr-)?[0-9a-f]{32}|version-\d+|\.trash|meta\.yaml|mlflow\.db"
    r"|artifacts|metrics|params|tags|inputs|outputs|models|traces"
)


def mlflow_made(name: str) -> bool:
    """Whether a path component is a name MLflow made (see :data:`MLFLOW_NAMES`)."""
    return MLFLOW_NAMES.fullmatch(name) is not None


def _db(paths: ProjectPaths) -> Path:
    return paths.mlruns / DB_FILE


def _db_files(db: Path) -> tuple[Path, ...]:
    return (db, Path(f"{db}-wal"), Path(f"{db}-journal"))


def _db_rows_naming(db: Path, pid: str) -> int:
    """How many rows of the MLflow database hold ``pid`` in any column."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return 0
    n = 0
    try:
        for table, cols in _text_columns(con):
            for col in cols:
                # Names come from the database's own schema; the value is bound.
                n += con.execute(
                    f'SELECT COUNT(*) FROM "{table}" WHERE instr(CAST("{col}" AS BLOB), ?) > 0',  # noqa: S608
                    (pid.encode(),),
                ).fetchone()[0]
    finally:
        con.close()
    return n


def _text_columns(con: sqlite3.Connection) -> list[tuple[str, list[str]]]:
    out = []
    for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        cols = [
            r[1]
            for r in con.execute(f'PRAGMA table_info("{table}")')
            if not str(r[2]).upper().startswith(("INT", "REAL", "FLOAT", "DOUBLE", "BOOL"))
        ]
        if cols:
            out.append((str(table), cols))
    return out


def scan_mlflow(paths: ProjectPaths, pid: str, file_sha256s: Container[str]) -> list[Artefact]:
    """MLflow artefacts and database content that hold the subject: pid or image files.

    Every file under ``mlruns/`` is read: a file naming the pid, or whose SHA-256 is in
    ``file_sha256s`` (the subject's files; with :class:`ContentHashes`, every erased image's
    plaintext and source file too, listed without its SHA-256), is listed; the SQLite store is
    listed when a row names the pid or when its file still holds the pid in freed pages.
    """
    root = paths.root
    found: list[Artefact] = []
    needle = pid.encode()
    db = _db(paths)
    if not paths.mlruns.is_dir():
        return found
    for dirpath, _dirs, files in os.walk(paths.mlruns):
        for name in files:
            f = Path(dirpath) / name
            if f == db or name.startswith(f"{DB_FILE}-"):
                continue
            try:
                data = f.read_bytes()
            except OSError:
                continue
            digest = hashlib.sha256(data).hexdigest()
            if needle in data:
                found.append(
                    {"store": STORE, "path": rel(f, root), "sha256": digest, "size": len(data)}
                )
            elif digest in file_sha256s:
                hit = content_hit(
                    file_sha256s, digest, store=STORE, path=rel(f, root), size=len(data)
                )
                found.append(hit)
    if db.is_file():
        in_bytes = any(p.is_file() and needle in p.read_bytes() for p in _db_files(db))
        if in_bytes or _db_rows_naming(db, pid):
            digest, size = sha256_sized(db)
            found.append({"store": STORE, "path": rel(db, root), "sha256": digest, "size": size})
    return found


def purge_mlflow(paths: ProjectPaths, pid: str, artefacts: Iterable[Mapping[str, Any]]) -> None:
    """Remove what :func:`scan_mlflow` listed.

    Artefact files are overwritten and deleted. In the database, rows of tag, param and metric
    tables that name the pid are deleted and other tables' values have the pid replaced by
    ``[erased]``; then ``PRAGMA secure_delete=ON`` and ``VACUUM`` rewrite the file so that no
    freed page keeps the old bytes.
    """
    root = paths.root
    db = _db(paths)
    for a in artefacts:
        f = root / a["path"] if not Path(a["path"]).is_absolute() else Path(a["path"])
        if f.resolve() == db.resolve():
            continue
        secure_unlink(f)
    if not db.is_file():
        return
    needle = pid.encode()
    if not any(p.is_file() and needle in p.read_bytes() for p in _db_files(db)):
        return
    # Raw SQL, not MLflow's client: see the module docstring.
    con = sqlite3.connect(db, timeout=60)
    try:
        con.execute("PRAGMA secure_delete = ON")
        for table, cols in _text_columns(con):
            for col in cols:
                # Names come from the database's own schema; values are bound.
                where = f'instr(CAST("{col}" AS BLOB), ?) > 0'
                if table in MLFLOW_LEAF_TABLES:
                    con.execute(f'DELETE FROM "{table}" WHERE {where}', (needle,))  # noqa: S608
                else:
                    con.execute(
                        f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) WHERE {where}',  # noqa: S608
                        (pid, ERASED_TEXT, needle),
                    )
        con.commit()
        con.execute("VACUUM")
        with contextlib.suppress(sqlite3.Error):
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def plan(ctx: Context, pid: str) -> Plan:
    """What under ``mlruns/`` names the subject or holds one of their raw files (sealed), or a
    plaintext copy of an erased image (the tombstones know it; older plans' ``plain_mac``)."""
    hashes = ContentHashes.of(ctx.paths, ctx.planned.get("raw", []))
    found = scan_mlflow(ctx.paths, pid, hashes)
    under = ctx.rel(ctx.paths.mlruns)
    recorded = [chosen_names(ctx, a, under=under, made=mlflow_made) for a in found]
    return Plan(recorded, state=found)


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Purge what this run's scan found (the plan records chosen names keyed: a resumed run
    finds what is left by scanning again); the step's info counts what was planned."""
    purge_mlflow(ctx.paths, pid, plan.state if plan is not None else planned)
    return Outcome(info={"found": len(planned)})


def verify(ctx: Context, pid: str) -> list[str]:
    """What under ``mlruns/`` still names the subject."""
    return [a["path"] for a in scan_mlflow(ctx.paths, pid, set())]
