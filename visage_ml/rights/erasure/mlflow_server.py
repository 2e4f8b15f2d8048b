"""The MLflow tracking server of the stack: runs, artefacts and rows naming the subject.

The server-side counterpart of :mod:`.mlflow` (which rewrites the SQLite file of one machine).
MLflow holds no personal data by design, so this normally finds nothing; what it looks for:

- runs (active or deleted) whose name, params or tags name the pid, or that hold an artefact
  naming the pid or byte-identical to one of the subject's raw files or to an erased image's
  plaintext (:mod:`visage_ml.rights.content_hashes`; recorded without its SHA-256, and the
  names chosen in its path keyed, as in :mod:`.mlflow`). Such a
  run is deleted through the client API (with any registered model version made from it) and
  ``mlflow gc`` removes its rows from the backend store and its artefacts from S3;
- rows of the backend PostgreSQL outside runs that still name the pid (an experiment's name or
  description): leaf rows are deleted, other values have the pid replaced;
- a DELETE or UPDATE only marks the old row versions dead: they stay in the tables' files (and
  the WAL) where SQL no longer sees them. So every table ``mlflow gc`` deletes from
  (:func:`gc_tables`) and every table touched here is rewritten (``VACUUM FULL``), its planner
  statistics cleared and re-sampled, and the WAL switched and checkpointed, by the gallery's
  own :func:`visage_ml.serving.pg_gallery.purge_tables`: the step's info makes the same claims
  (``vacuum_full``, ``wal_removed``, ``statistics_cleared``) with the same notes;
- on the local stack, the S3 volumes are then vacuumed (:mod:`visage_ml.stack.seaweed`).

Active when the project tracks to a server (``stack.tracking: server``), and when it once did
(:mod:`visage_ml.stack.stores` remembers the server): a project gone back to SQLite leaves its
runs on the server. A remembered server the stack's settings no longer name cannot be reached
(:func:`foreign`): the preflight stops the erasure before anything is erased.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Collection, Container
from pathlib import Path
from typing import Any

from visage_ml.rights.content_hashes import ContentHashes, content_hit
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan, chosen_names
from visage_ml.rights.erasure.mlflow import ERASED_TEXT, MLFLOW_LEAF_TABLES, mlflow_made
from visage_ml.serving import pg_gallery
from visage_ml.stack import stores
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
NOTE_PURGE = (
    "mlflow-server: the rows naming the subject were deleted and their tables rewritten "
    "(VACUUM FULL), but the server may still hold them ({why})"
)
# What ``mlflow gc --run-ids`` (MLflow 3.x, ``mlflow/cli/__init__.py``) deletes from: each run
# (``_hard_delete_run``: its metrics, latest metrics, params and tags, then the run; deleting it
# through the client removed its assessments), every experiment in the deleted stage
# (``_hard_delete_experiment``: the trace roll-ups, then the experiment) and every logged model
# in the deleted stage; deleting a model version rewrites its row and drops its aliases. The
# tables their foreign keys cascade to are added from the catalog (:func:`gc_tables`).
GC_RUN_TABLES = ("runs", "metrics", "latest_metrics", "params", "tags", "assessments")
GC_EXPERIMENT_TABLES = (
    "experiments",
    "sql_trace_rollup_rebuild_queue",
    "sql_trace_metric_daily_rollups",
    "sql_span_cost_daily_rollups",
    "sql_assessment_daily_rollups",
)
GC_LOGGED_MODEL_TABLES = ("logged_models",)
MODEL_VERSION_TABLES = ("model_versions", "registered_model_aliases", "registered_models")


def _stack_uri(stack: Stack) -> str | None:
    try:
        return stores.without_credentials(stack.mlflow_uri)
    except StackError:  # an external stack without stack.mlflow.uri
        return None


def active(ctx: Context) -> Stack | None:
    """The stack whose MLflow server the project tracks to now, or once did (remembered)."""
    if not ctx.paths.params.is_file():
        return None
    stack = Stack.of(ctx.paths)
    if ctx.params.stack.tracking == "server":
        return stack
    uris = {s.uri for s in stores.remembered(ctx.paths, kind=stores.MLFLOW_SERVER)}
    return stack if uris and _stack_uri(stack) in uris else None


def foreign(ctx: Context) -> list[str]:
    """Remembered MLflow servers the stack's settings no longer name (so none is reached)."""
    found = stores.remembered(ctx.paths, kind=stores.MLFLOW_SERVER)
    if not found:
        return []
    current = _stack_uri(Stack.of(ctx.paths)) if ctx.paths.params.is_file() else None
    return [s.store for s in found if s.uri != current]


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


def _run_digest(run: Any) -> dict[str, Any]:
    """The ``sha256`` and ``size`` of a run's record (its name, parameters, tags, metrics)."""
    doc = {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "params": run.data.params,
        "tags": run.data.tags,
        "metrics": run.data.metrics,
    }
    data = json.dumps(doc, sort_keys=True, default=str).encode()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


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
                hits.append({"store": STORE, "path": f"runs/{rid}", **_run_digest(run)})
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
                    hits.append({"store": STORE, "path": path, "sha256": digest, "size": len(data)})
                elif digest in file_sha256s:
                    hit = content_hit(file_sha256s, digest, store=STORE, path=path, size=len(data))
                    if hit["sha256"] is None:  # named by the run, as a hit by its path
                        del hit["sha256"]
                    hits.append(hit)
            for hit in hits:
                if "sha256" not in hit:
                    hit.update(_run_digest(run))
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


def _existing(conn: Any, tables: list[str]) -> list[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND relname = ANY(%s)",
        (tables,),
    ).fetchall()
    return sorted(r[0] for r in rows)


def _any_deleted(conn: Any, table: str) -> bool:
    if not _existing(conn, [table]):
        return False
    row = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM \"{table}\" WHERE lifecycle_stage = 'deleted')"  # noqa: S608
    ).fetchone()
    return bool(row and row[0])


def gc_tables(stack: Stack, *, model_versions: bool) -> list[str]:
    """The backend tables that deleting the planned runs (``model_versions``: and model versions
    made from them) and ``mlflow gc --run-ids`` delete from or rewrite; call it before the gc
    (which removes the deleted experiments and logged models it looks for)."""
    import psycopg  # heavy optional dependency: only the stack needs it

    with psycopg.connect(stack.postgres_dsn(stack.params.mlflow.database)) as conn:
        roots = list(GC_RUN_TABLES)
        if _any_deleted(conn, "experiments"):
            roots += GC_EXPERIMENT_TABLES
        if _any_deleted(conn, "logged_models"):
            roots += GC_LOGGED_MODEL_TABLES
        if model_versions:
            roots += MODEL_VERSION_TABLES
        # Rows of other tables go with them where a foreign key cascades (or is set null).
        rows = conn.execute(
            "WITH RECURSIVE gc(rel) AS ("
            " SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)"
            " UNION SELECT k.conrelid FROM pg_constraint k JOIN gc ON k.confrelid = gc.rel"
            " WHERE k.contype = 'f' AND k.confdeltype IN ('c', 'n', 'd'))"
            " SELECT relname FROM pg_class WHERE oid IN (SELECT rel FROM gc)",
            (roots,),
        ).fetchall()
    return sorted(r[0] for r in rows)


def purge_rows(
    stack: Stack, pid: str, *, rewrite: Collection[str] = ()
) -> tuple[list[str], list[str], pg_gallery.PurgeReport | None]:
    """Delete or rewrite backend rows naming ``pid``, then purge those tables and ``rewrite``
    (:func:`visage_ml.serving.pg_gallery.purge_tables`); the tables touched, the tables
    rewritten and the purge's report (None: nothing to purge)."""
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
    if not touched and not rewrite:
        return [], [], None
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = _existing(conn, sorted(touched | set(rewrite)))
        # ANALYZE may have sampled the subject's values into pg_statistic: cleared, and the
        # tables (without them now) sampled again for MLflow's query plans.
        report = pg_gallery.purge_tables(conn, tables, statistics_of=tables)
        for table in tables:
            conn.execute(f'ANALYZE "{table}"')
    return sorted(touched), tables, report


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
    """The server's runs and artefacts holding the subject; None when the project never
    tracked to a server."""
    stack = active(ctx)
    if stack is None:
        return None
    hashes = ContentHashes.of(ctx.paths, ctx.planned.get("raw", []))
    # An artefact's path as the local store's (mlflow.plan): names chosen by whoever logged it
    # recorded keyed; runs are deleted by their id.
    found = [
        chosen_names(ctx, a, under=f"runs/{a['run_id']}/artifacts", made=mlflow_made)
        for a in scan_server(stack, pid, hashes)
    ]
    return Plan(found, {"server": stack.mlflow_uri})


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Delete the planned runs (and model versions made from them), ``mlflow gc``, rows, vacuum."""
    stack = active(ctx)
    if stack is None:
        return Outcome(info={"server": False})
    client = _client(stack)
    run_ids = sorted({a["run_id"] for a in planned if a.get("run_id")})
    versions = 0
    rewrite: list[str] = []
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
        rewrite = gc_tables(stack, model_versions=bool(versions))
        gc(stack.backend(), tracking_uri=stack.mlflow_uri, run_ids=run_ids)
    tables, rewritten, report = purge_rows(stack, pid, rewrite=rewrite)
    info: dict[str, Any] = {"runs": len(run_ids), "model_versions": versions, "tables": tables}
    if report is not None:
        info["rewritten"] = rewritten
        info.update(report.to_dict())
        if report.notes():
            info["note"] = NOTE_PURGE.format(why="; ".join(report.notes()))
    if stack.local and (run_ids or tables):
        info["vacuum"] = stack.seaweed().vacuum(wait_for=needles if run_ids else ())
    return Outcome(info=info)


def verify(ctx: Context, pid: str) -> list[str]:
    """Runs, artefacts and backend rows of the server still naming the subject."""
    left = [f"{s}: not reachable with the stack's settings" for s in foreign(ctx)]
    stack = active(ctx)
    if stack is None:
        return left
    left += [a["path"] for a in scan_server(stack, pid, set())]
    left += [f"mlflow database: {r}" for r in db_rows_naming(stack, pid)]
    if stack.local:
        garbage = stack.seaweed().garbage_bytes()
        if garbage:
            left.append(f"{garbage} byte(s) of deleted objects still in SeaweedFS volume files")
    return left
