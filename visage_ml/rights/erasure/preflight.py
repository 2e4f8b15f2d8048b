"""Before an erasure starts: every service its stores need is reachable, and DVC can open every
remote of the project (one it cannot open would be left holding the subject's objects).

An erasure whose stack is down (after ``visage stack down``, a reboot) would run its first
steps on the local files, then stop half-way at the first store it cannot reach, after minutes
of retries, with the client library's traceback. This check runs first and stops it with one
message instead: nothing is erased, and the same command finishes it once the services answer.

What needs what: the project's DVC remote ``stack`` (configured by ``visage stack up``) needs
S3; ``stack.tracking: server`` needs the MLflow server; the pgvector gallery on the stack's
PostgreSQL (no ``serving.gallery.dsn`` nor ``$VISAGE_GALLERY_DSN``) needs PostgreSQL.
"""

from __future__ import annotations

import os

from visage_ml.rights.erasure.base import Context
from visage_ml.serving.pg_gallery import BACKEND, DSN_ENV
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


def check(ctx: Context, pid: str) -> None:
    """Raise :class:`StackError` naming every needed service that does not answer (only the
    needed ones are looked at), or every configured DVC remote DVC cannot open."""
    if ctx.is_dvc and (unopened := ctx.dvc_setup().unopened):
        names = ", ".join(f"{n} ({why})" for n, why in sorted(unopened.items()))
        raise StackError(MSG_UNOPENED.format(names=names, pid=pid))
    services = needed(ctx)
    if not services:
        return
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
