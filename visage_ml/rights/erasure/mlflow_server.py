"""The MLflow tracking server of the stack: runs, artefacts and rows naming the subject.

The server-side counterpart of :mod:`.mlflow` (which rewrites the SQLite file of one machine).
MLflow holds no personal data by design, so this normally finds nothing; what it looks for:

- runs (active or deleted) whose name, params or tags name the pid, or that hold an artefact
  naming the pid or byte-identical to one of the subject's raw files or to an erased image's
  plaintext (:mod:`visage_ml.rights.content_hashes`; recorded without its SHA-256). Such a
  run is deleted through the client API (with any registered model version made from it) and
  ``mlflow gc`` removes its rows from the backend store and its artefacts from S3, for good;
- rows of the backend PostgreSQL outside runs that still name the pid (an experiment's name or
  description): leaf rows are deleted, other values have the pid replaced, and the touched
  tables are rewritten (``VACUUM FULL``) with the WAL switched and checkpointed, so no dead
  tuple keeps the old bytes;
- on the local stack, the S3 volumes are then vacuumed (:mod:`visage_ml.stack.seaweed`).

Active only when the project tracks to a server (``stack.tracking: server``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Container
from pathlib import Path
from typing import Any

from visage_ml.rights.content_hashes import ContentHashes, content_hit
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan
from visage_ml.rights.erasure.mlflow import ERASED_TEXT, MLFLOW_LEAF_TABLES
from visage_ml.stack.manager import Stack
from visage_ml.stack.mlflow_server import gc
from visage_ml.stack.proc import StackError

log = logging.getLogger(__name__)

STORE = "mlflow-server"
#: Artefacts larger than this are not downloaded to be hashed (models, not images).
MAX_HASHED_BYTES = 256 * 1024 * 1024
UNREACHABLE = (
    "the MLflow server {uri} does not answer, so the subject's runs there cannot be checked; "
    "start it (`visage stack up`) and resume the erasure"
)


def _active(ctx: Context) -> Stack | None:
    if not ctx.paths.params.is_file() or ctx.params.stack.tracking != "server":
        return None
    return Stack.of(ctx.paths)


def _client(stack: Stack) -> Any:
    # The scan downloads artefacts one by one: no progress bar per file on the console.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient  # heavy optional dependency: only tracking needs it

    uri = stack.mlflow_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _all_runs(client: Any) -> list[Any]:
    from mlflow.entities import ViewType  # heavy optional dependency: only tracking needs it

    runs: list[Any] = []
    exp_ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
        exp_ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    for i in range(0, len(exp_ids), 100):
        token = None
        while True:
            page = client.search_runs(
                exp_ids[i : i + 100],
                run_view_type=ViewType.ALL,
                max_results=1000,
                page_token=token,
            )
            runs += list(page)
            token = page.token
            if not token:
                break
    return runs


def _artifact_files(client: Any, run_id: str, path: str | None = None) -> list[Any]:
    out = []
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out += _artifact_files(client, run_id, info.path)
        else:
            out.append(info)
    return out


def _run_digest(run: Any) -> str:
    doc = {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "params": run.data.params,
        "tags": run.data.tags,
        "metrics": run.data.metrics,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def scan_server(stack: Stack, pid: str, file_sha256s: Container[str]) -> list[Artefact]:
    """Runs and artefacts of the server that hold the subject (see the module docstring)."""
    client = _client(stack)
    try:
        runs = _all_runs(client)
    except Exception as exc:  # the client raises its own and requests' errors
        raise StackError(UNREACHABLE.format(uri=stack.mlflow_uri)) from exc
    needle = pid.encode()
    found: list[Artefact] = []
    with tempfile.TemporaryDirectory(prefix="visage-mlflow-scan-") as tmp:
        for run in runs:
            rid = run.info.run_id
            texts = [run.info.run_name or ""]
            texts += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
            texts += list(run.data.metrics)
            hits: list[Artefact] = []
            if any(pid in t for t in texts):
                hits.append({"store": STORE, "path": f"runs/{rid}", "sha256": _run_digest(run)})
            for info in _artifact_files(client, rid):
                if pid in info.path:
                    hits.append({"store": STORE, "path": f"runs/{rid}/artifacts/{info.path}"})
                    continue
                if info.file_size is not None and info.file_size > MAX_HASHED_BYTES:
                    continue
                local = Path(client.download_artifacts(rid, info.path, tmp))
                data = local.read_bytes()
                local.unlink()
                digest = hashlib.sha256(data).hexdigest()
                path = f"runs/{rid}/artifacts/{info.path}"
                if needle in data:
                    hits.append({"store": STORE, "path": path, "sha256": digest})
                elif digest in file_sha256s:
                    hit = content_hit(file_sha256s, digest, store=STORE, path=path)
                    if hit["sha256"] is None:  # named by the run, as a hit by its path
                        del hit["sha256"]
                    hits.append(hit)
            for hit in hits:
                hit.setdefault("sha256", _run_digest(run))
                hit["run_id"] = rid
            found += hits
    return found


def _text_columns(conn: Any) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND data_type IN ('text', 'character varying')"
    ).fetchall()
    return [(t, c) for t, c in rows]


def db_rows_naming(stack: Stack, pid: str) -> list[str]:
    """``table.column`` of the backend store's rows that still hold ``pid``."""
    import psycopg  # heavy optional dependency: only the stack needs it

    out = []
    with psycopg.connect(stack.postgres_dsn(stack.params.mlflow.database)) as conn:
        for table, col in _text_columns(conn):
            n = conn.execute(
                f'SELECT count(*) FROM "{table}" WHERE strpos("{col}", %s) > 0',  # noqa: S608
                (pid,),
            ).fetchone()[0]
            if n:
                out.append(f"{table}.{col} ({n} row(s))")
    return out


def purge_rows(stack: Stack, pid: str) -> list[str]:
    """Delete or rewrite backend rows naming ``pid``, then rewrite those tables and the WAL."""
    import psycopg  # heavy optional dependency: only the stack needs it

    touched: set[str] = set()
    dsn = stack.postgres_dsn(stack.params.mlflow.database)
    with psycopg.connect(dsn) as conn:
        for table, col in _text_columns(conn):
            where = f'strpos("{col}", %s) > 0'
            if table in MLFLOW_LEAF_TABLES:
                cur = conn.execute(f'DELETE FROM "{table}" WHERE {where}', (pid,))  # noqa: S608
            else:
                cur = conn.execute(
                    f'UPDATE "{table}" SET "{col}" = replace("{col}", %s, %s) WHERE {where}',  # noqa: S608
                    (pid, ERASED_TEXT, pid),
                )
            if cur.rowcount:
                touched.add(table)
    if touched:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in sorted(touched):
                conn.execute(f'VACUUM FULL "{table}"')
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
    return sorted(touched)


def _run_needles(stack: Stack, run_ids: list[str]) -> list[str]:
    """Volume file ids holding the S3 objects of ``run_ids``' artefacts (local stack)."""
    seaweed = stack.seaweed()
    prefix = stack.params.s3.mlflow_prefix.strip("/") + "/"
    keys: list[str] = []
    for page in (
        seaweed.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=seaweed.bucket, Prefix=prefix)
    ):
        keys += [o["Key"] for o in page.get("Contents", [])]
    wanted = [k for k in keys if any(f"/{rid}/" in f"/{k}" for rid in run_ids)]
    return [fid for k in wanted for fid in seaweed.chunk_ids(k)]


def plan(ctx: Context, pid: str) -> Plan | None:
    """The server's runs and artefacts holding the subject; None when tracking is SQLite."""
    stack = _active(ctx)
    if stack is None:
        return None
    hashes = ContentHashes.of(ctx.paths, ctx.planned.get("raw", []))
    return Plan(scan_server(stack, pid, hashes), {"server": stack.mlflow_uri})


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Delete the planned runs (and model versions made from them), ``mlflow gc``, rows, vacuum."""
    stack = _active(ctx)
    if stack is None:
        return Outcome(info={"server": False})
    client = _client(stack)
    run_ids = sorted({a["run_id"] for a in planned if a.get("run_id")})
    versions = 0
    if run_ids:
        for rm in client.search_registered_models():
            for mv in client.search_model_versions(f"name='{rm.name}'"):
                if mv.run_id in run_ids:
                    client.delete_model_version(mv.name, mv.version)
                    versions += 1
        # The volume needles of the runs' artefacts, before they go: SeaweedFS deletes them
        # asynchronously, and the vacuum must wait for that (or it finds nothing to compact).
        needles = _run_needles(stack, run_ids) if stack.local else []
        for rid in run_ids:
            if client.get_run(rid).info.lifecycle_stage != "deleted":
                client.delete_run(rid)
        gc(stack.backend(), tracking_uri=stack.mlflow_uri, run_ids=run_ids)
    tables = purge_rows(stack, pid)
    info: dict[str, Any] = {"runs": len(run_ids), "model_versions": versions, "tables": tables}
    if stack.local and (run_ids or tables):
        info["vacuum"] = stack.seaweed().vacuum(wait_for=needles if run_ids else ())
    return Outcome(info=info)


def verify(ctx: Context, pid: str) -> list[str]:
    """Runs, artefacts and backend rows of the server still naming the subject."""
    stack = _active(ctx)
    if stack is None:
        return []
    left = [a["path"] for a in scan_server(stack, pid, set())]
    left += [f"mlflow database: {r}" for r in db_rows_naming(stack, pid)]
    if stack.local:
        garbage = stack.seaweed().garbage_bytes()
        if garbage:
            left.append(f"{garbage} byte(s) of deleted objects still in SeaweedFS volume files")
    return left
