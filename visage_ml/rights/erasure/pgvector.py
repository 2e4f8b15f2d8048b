"""The pgvector store: the subject's row of the shared gallery in PostgreSQL, down to disk.

Only when ``serving.gallery.backend`` is ``pgvector`` (otherwise :func:`plan` returns None and
nothing is planned or recorded). The row holds two copies of the template:

- ``pgvector:<table>/<pid>.tpl``: the sealed template (AES-GCM under the subject's gallery key).
  Crypto-shredded once that key is destroyed (the ``gallery`` step, or :func:`erase` here),
  including copies this step cannot reach (base backups, WAL archives, streaming replicas);
- ``pgvector:<table>/<pid>.embedding``: the plaintext search vector. Only physical removal
  protects it: the row is revoked for every replica and deleted in one transaction, then
  ``VACUUM FULL`` rewrites the table, its TOAST table and its indexes (HNSW included), and
  ``pg_switch_wal()`` + ``CHECKPOINT`` let the server delete the WAL segments that held the old
  pages. That last part holds only with ``wal_recycle = off``, ``wal_keep_size = 0``, no
  archiving, no replication slot and no streaming standby (the stack's PostgreSQL is configured
  so); otherwise the step's info lists what may keep old WAL (``wal_retention``) and
  ``wal_removed`` is false, and the certificate's notes say so instead of claiming removal.

Run it right after the ``gallery`` step: from the end of :func:`erase` no replica returns the
subject (the revoked table is checked by every query) and the bytes are gone from the data
folder of the server.
"""

from __future__ import annotations

import os

from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan
from visage_ml.serving import pg_gallery
from visage_ml.serving.gallery import GalleryError

STORE = "pgvector"
NOTE_WAL = (
    "pgvector: the plaintext search vector was deleted and the table rewritten (VACUUM FULL), "
    "but the server may still hold it ({why}); the sealed template is "
    "crypto-shredded regardless"
)


def _dsn(ctx: Context) -> str | None:
    if ctx.params.serving.gallery.backend != pg_gallery.BACKEND:
        return None
    return pg_gallery.resolve_dsn(ctx.params, os.environ, paths=ctx.paths)


def _table(ctx: Context) -> str:
    return pg_gallery.check_table(ctx.params.serving.gallery.table)


def plan(ctx: Context, pid: str) -> Plan | None:
    """The subject's sealed template and search vector in the gallery table, hashed."""
    dsn = _dsn(ctx)
    if dsn is None:
        return None
    rows = pg_gallery.subject_rows(dsn, pid, table=_table(ctx))
    return Plan(
        [{"store": STORE, "path": k, "sha256": v} for k, v in rows.items()],
        info={"table": _table(ctx)},
    )


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Revoke and delete the row (every replica stops returning it), destroy the gallery key
    if the ``gallery`` step has not, then purge the server's files (VACUUM FULL, WAL)."""
    dsn = _dsn(ctx)
    if dsn is None:
        return Outcome()
    table = _table(ctx)
    rows = pg_gallery.subject_rows(dsn, pid, table=table)
    gallery = ctx.gallery
    removed: dict[str, str] = {}
    if isinstance(gallery, pg_gallery.PgGallery):
        removed = dict(gallery.erase(pid, reason="erasure").removed)
    else:
        pg_gallery.delete_subject(dsn, pid, table=table)
        removed = rows
    report = pg_gallery.purge_physically(dsn, table=table)
    info = report.to_dict()
    if report.notes():
        info["note"] = NOTE_WAL.format(why="; ".join(report.notes()))
    artefacts = [
        {"store": STORE, "path": k, "sha256": v}
        for k, v in removed.items()
        if k.startswith(f"{pg_gallery.BACKEND}:")
    ]
    return Outcome(artefacts, info=info)


def verify(ctx: Context, pid: str) -> list[str]:
    """What the gallery table still holds of the subject (empty once erased)."""
    dsn = _dsn(ctx)
    if dsn is None:
        return []
    try:
        return sorted(pg_gallery.subject_rows(dsn, pid, table=_table(ctx)))
    except GalleryError as exc:
        return [f"{STORE}: unreachable ({exc})"]
