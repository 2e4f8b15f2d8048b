"""Before an erasure starts: every service its stores need is reachable, and DVC can open every
remote of the project (one it cannot open would be left holding the subject's objects).

An erasure whose stack is down (after ``visage stack down``, a reboot) would run its first
steps on the local files, then stop half-way at the first store it cannot reach, after minutes
of retries, with the client library's traceback. This check runs first and stops it with one
message instead: nothing is erased, and the same command finishes it once the services answer.

What needs what: the project's DVC remote ``stack`` (configured by ``visage stack up``) needs
S3; ``stack.tracking: server`` needs the MLflow server; the pgvector gallery on the stack's
PostgreSQL (no ``serving.gallery.dsn`` nor ``$VISAGE_GALLERY_DSN``) needs PostgreSQL. So does
every store the project once wrote to and no longer points at (:mod:`visage_ml.stack.stores`):
each remembered gallery table's server must answer (with a password the project holds or libpq
finds), and each remembered MLflow server must be the stack's and answer; one that does not
stops the erasure with its name (no secret) and the way to forget it if it was decommissioned.
"""

from __future__ import annotations

import os

from visage_ml.rights.erasure import mlflow_server, pgvector
from visage_ml.rights.erasure.base import Context
from visage_ml.serving.pg_gallery import BACKEND, DSN_ENV
from visage_ml.stack import stores
from visage_ml.stack.manager import Stack
from visage_ml.stack.proc import StackError

MSG_DOWN = (
    "the erasure needs the stack's {services}, which {verb} not reachable ({where}); nothing "
    "was erased. Run `visage stack up` (or, with an external stack, make the services "
    "reachable from this host), then run the erasure again: `visage privacy erase {pid}`"
)


def needed(ctx: Context) -> list[str]:
    """The stack services (``s3``, ``postgres``, ``mlflow``) this project's erasure uses."""
    if not ctx.paths.params.is_file():
        return []
    out: list[str] = []
    if ctx.is_dvc and ctx.params.stack.dvc_remote in ctx.dvc_setup().remote_urls:
        out.append("s3")
    gallery = ctx.params.serving.gallery
    on_stack = not gallery.dsn and not os.environ.get(DSN_ENV) and ctx.paths.stack_secrets.is_file()
    if gallery.backend == BACKEND and on_stack:
        out.append("postgres")
    if ctx.params.stack.tracking == "server":
        out.append("mlflow")
    return out


MSG_UNOPENED = (
    "DVC cannot open the remote(s) {names} of this project, so the subject's objects there could "
    "be neither deleted nor looked for; nothing was erased. Install the remote's DVC plugin (e.g. "
    "`pip install dvc-ssh`) or remove the remote from .dvc/config if it holds nothing, then run "
    "the erasure again: `visage privacy erase {pid}`"
)


MSG_REMEMBERED = (
    "this project wrote personal data to {names}, which cannot be reached now, so the subject's "
    "data there could be neither erased nor looked for; nothing was erased. Make {it} reachable "
    "(`visage stack up`; a PostgreSQL outside the stack: its DSN with the password in "
    "serving.gallery.dsn or ${env}; an MLflow server: stack.mlflow in params.yaml), then run the "
    "erasure again: `visage privacy erase {pid}`. A store decommissioned with its data is "
    "forgotten, on the ledger: `visage stack forget STORE` (`visage stack stores` lists them)"
)
WHY_LOGIN = "no password the project holds opens it"
WHY_DOWN = "no answer"
WHY_OTHER_SERVER = "the stack's settings name another MLflow server now"


def _pg_why(dsn: str) -> str | None:
    """Why the server of ``dsn`` cannot be used (None: it answers). Never the server's words:
    they may quote the connection string."""
    import psycopg  # heavy optional dependency: only the stack and pgvector backend need it

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return WHY_LOGIN if "password" in str(exc).lower() else WHY_DOWN
    return None


def unreachable(ctx: Context) -> dict[str, str]:
    """The remembered stores (:mod:`visage_ml.stack.stores`) the erasure cannot reach, and why."""
    if not stores.remembered(ctx.paths):
        return {}
    out: dict[str, str] = {}
    for target in pgvector.targets(ctx):
        if not target.configured and (why := _pg_why(target.dsn)):
            out[target.store] = why
    out.update(dict.fromkeys(mlflow_server.foreign(ctx), WHY_OTHER_SERVER))
    remembered_ml = stores.remembered(ctx.paths, kind=stores.MLFLOW_SERVER)
    if remembered_ml and "mlflow" not in needed(ctx) and mlflow_server.active(ctx) is not None:
        up, _where = Stack.of(ctx.paths).probe("mlflow")
        if not up:
            current = [s.store for s in remembered_ml if s.store not in out]
            out.update(dict.fromkeys(current, WHY_DOWN))
    return out


def check(ctx: Context, pid: str) -> None:
    """Raise :class:`StackError` naming every needed service that does not answer (only the
    needed ones are looked at), every configured DVC remote DVC cannot open, or every store the
    project once wrote to that cannot be reached."""
    # A store only the file knew (an older version kept the file alone) goes into the ledger
    # first: deleting the file no longer takes it out of this or any later erasure's reach.
    stores.record_unrecorded(ctx.paths, ctx.core.record_store)
    if ctx.is_dvc and (unopened := ctx.dvc_setup().unopened):
        names = ", ".join(f"{n} ({why})" for n, why in sorted(unopened.items()))
        raise StackError(MSG_UNOPENED.format(names=names, pid=pid))
    services = needed(ctx)
    if services:
        _check_services(ctx, pid, services)
    if down := unreachable(ctx):
        names = ", ".join(f"{n} ({why})" for n, why in sorted(down.items()))
        it = "it" if len(down) == 1 else "them"
        raise StackError(MSG_REMEMBERED.format(names=names, it=it, env=DSN_ENV, pid=pid))


def _check_services(ctx: Context, pid: str, services: list[str]) -> None:
    stack = Stack.of(ctx.paths)
    probes = {s: stack.probe(s) for s in services}
    down = [s for s, (up, _where) in probes.items() if not up]
    if down:
        raise StackError(
            MSG_DOWN.format(
                services=", ".join(down),
                verb="is" if len(down) == 1 else "are",
                where=", ".join(f"{s} at {probes[s][1]}" for s in down),
                pid=pid,
            )
        )
