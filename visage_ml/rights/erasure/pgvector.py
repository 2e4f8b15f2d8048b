"""The pgvector store: the subject's row of the shared gallery in PostgreSQL, down to disk.

Every gallery table the project wrote to since it remembers them: the one ``serving.gallery``
names when its backend is ``pgvector``, and each one :mod:`visage_ml.stack.stores` remembers (a
project that went back to ``memory`` or renamed its table leaves the old table in the server,
each row a template in clear). None of them: :func:`plan` returns None and nothing is planned
or recorded.
A remembered table is reached with the password of the configured DSN, ``$VISAGE_GALLERY_DSN``
or the stack's credentials when one names its server (:func:`targets`); the preflight stops the
erasure before anything is erased when one cannot be reached. The row holds two copies of the
template:

- ``pgvector:<table>/<pid>.tpl``: the sealed template (AES-GCM under the subject's gallery key).
  Crypto-shredded once that key is destroyed (the ``gallery`` step, or :func:`erase` here),
  including copies this step cannot reach (base backups, WAL archives, streaming replicas);
- ``pgvector:<table>/<pid>.embedding``: the plaintext search vector. Only physical removal
  protects it: the row is revoked for every replica and deleted in one transaction, then the
  table, its TOAST table and its indexes (HNSW included) are rewritten into new files (copied
  and swapped while serving searches on, :mod:`visage_ml.serving.pg_swap`, or by ``VACUUM FULL``
  where the table holds what the swap cannot carry over; ``rewrite`` in the info says which; the
  swap's old table is dropped after its commit, before what follows), and ``pg_switch_wal()`` +
  ``CHECKPOINT`` let the server delete the WAL segments that held the old pages. That last part
  holds only with ``wal_recycle = off``, ``wal_keep_size = 0``, no archiving, no replication
  slot and no streaming standby (the stack's PostgreSQL is configured so); otherwise the step's
  info lists what may keep old WAL (``wal_retention``) and ``wal_removed`` is false, and the
  certificate's notes say so instead of claiming removal. A table left beside the gallery table
  by a purge that died, or that stopped because another session held it
  (``<table>$purge_old``, whose files hold the rows of before), fails :func:`verify` until the
  next purge drops it (a resumed erasure runs its purge again).

Run it right after the ``gallery`` step: from the end of :func:`erase` no replica returns the
subject (the revoked table is checked by every query) and the bytes are gone from the data
folder of the server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan
from visage_ml.serving import pg_gallery
from visage_ml.serving.gallery import ERASURE_REASON, GalleryError
from visage_ml.stack import stores
from visage_ml.stack.proc import StackError

STORE = "pgvector"
NOTE_WAL = (
    "pgvector: the plaintext search vector was deleted and the table rewritten into new files, "
    "but the server may still hold it ({why}); the sealed template is "
    "crypto-shredded regardless"
)
# What verify names for a table a purge left beside the gallery table (no row, no pid in it).
MSG_LEFT = (
    "{store}: {relation} (left beside the table by a purge that died or that another session "
    "holding it kept from dropping it, or by hand: its files hold the table's rows of before, "
    "erased ones among them; the next purge drops it, and `visage privacy resume` finishes an "
    "erasure stopped with it)"
)


@dataclass(frozen=True)
class Target:
    """One gallery table the erasure reaches: its identity (no secret), how to connect, and
    whether it is the one ``serving.gallery`` names now."""

    store: str
    dsn: str
    table: str
    configured: bool


def _candidates(ctx: Context) -> list[str]:
    """Connection strings the project holds, password included: the open gallery's (a
    server's) own, then the gallery's (:func:`~visage_ml.serving.pg_gallery.dsn_candidates`)."""
    out = [ctx.gallery.options.dsn] if isinstance(ctx.gallery, pg_gallery.PgGallery) else []
    found = pg_gallery.dsn_candidates(ctx.params, os.environ, paths=ctx.paths)
    with contextlib.suppress(StackError):  # a stack that names no PostgreSQL holds no password
        out.extend(found)
    return out


def _dsn_for(ctx: Context, store: stores.RememberedStore) -> str:
    """A DSN of the remembered store's database: one the project holds (with its password);
    else one it holds for another database of the same server, pointed at this one (a role's
    password is the server's, not a database's: a gallery moved to another database of the
    server is still reached); else the remembered one (the password from libpq's
    ``PGPASSWORD`` or ``.pgpass``, if any)."""
    from psycopg.conninfo import make_conninfo  # heavy optional dependency: pgvector only

    host, port, dbname = stores.pg_server(store.conninfo)
    same_server: list[str] = []
    for dsn in _candidates(ctx):
        with contextlib.suppress(Exception):  # a malformed DSN is not this server's
            found = stores.pg_server(dsn)
            if found == (host, port, dbname):
                return dsn
            if found[:2] == (host, port):
                same_server.append(make_conninfo(dsn, dbname=dbname))
    return same_server[0] if same_server else store.conninfo


def targets(ctx: Context) -> list[Target]:
    """The configured gallery table (backend ``pgvector``) and every remembered one, once each.

    Raises
    ------
    StoresError
        The list of remembered stores cannot be read.
    """
    out: list[Target] = []
    gallery = ctx.params.serving.gallery
    if gallery.backend == pg_gallery.BACKEND:
        dsn = pg_gallery.resolve_dsn(ctx.params, os.environ, paths=ctx.paths)
        table = pg_gallery.check_table(gallery.table)
        out.append(Target(stores.pgvector_id(dsn, table), dsn, table, configured=True))
    for store in stores.remembered(ctx.paths, kind=stores.PGVECTOR):
        if store.store not in {t.store for t in out}:
            dsn = _dsn_for(ctx, store)
            table = pg_gallery.check_table(store.table)
            out.append(Target(store.store, dsn, table, configured=False))
    return out


def _named(found: list[Target]) -> Callable[[Target, dict[str, Any]], dict[str, Any]]:
    """How each target's row names read on the certificate: ``pgvector:<table>/<pid>.tpl``, or,
    for a remembered table whose name another target shares (another database or server),
    ``<its store>/<pid>.tpl`` (one name for two rows would list one copy where there were two).
    """
    tables = [t.table for t in found]

    def name(target: Target, rows: dict[str, Any]) -> dict[str, Any]:
        if target.configured or tables.count(target.table) < 2:
            return rows
        bare = f"{pg_gallery.BACKEND}:{target.table}/"
        return {
            (f"{target.store}/{k.removeprefix(bare)}" if k.startswith(bare) else k): v
            for k, v in rows.items()
        }

    return name


def _exists(target: Target) -> bool:
    with pg_gallery.connect(target.dsn, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (target.table,)).fetchone()
    return bool(found and found[0] is not None)


def plan(ctx: Context, pid: str) -> Plan | None:
    """The subject's sealed template and search vector in each gallery table, hashed."""
    found = targets(ctx)
    if not found:
        return None
    name = _named(found)
    artefacts = [
        {"store": STORE, "path": k, "sha256": v, "size": n}
        for t in found
        for k, (v, n) in name(t, pg_gallery.subject_row_digests(t.dsn, pid, table=t.table)).items()
    ]
    info: dict[str, Any] = {"stores": [t.store for t in found]}
    configured = [t for t in found if t.configured]
    if configured:
        info["table"] = configured[0].table
    return Plan(artefacts, info=info)


def _is_open(gallery: Any, target: Target) -> bool:
    """Whether ``gallery`` is the open gallery of ``target``'s table (erased through it, so that
    its replicas and caches follow), configured or remembered."""
    if not isinstance(gallery, pg_gallery.PgGallery) or gallery.names.table != target.table:
        return False
    with contextlib.suppress(Exception):  # a DSN psycopg cannot parse is not this table's
        return stores.pgvector_id(gallery.options.dsn, target.table) == target.store
    return False


def _erase_one(ctx: Context, pid: str, target: Target) -> tuple[dict[str, str], dict[str, Any]]:
    """Revoke and delete the row in one table, then purge its server's files."""
    rows = pg_gallery.subject_rows(target.dsn, pid, table=target.table)
    gallery = ctx.gallery
    if _is_open(gallery, target):
        removed = dict(gallery.erase(pid, reason=ERASURE_REASON).removed)
    elif _exists(target):
        pg_gallery.delete_subject(target.dsn, pid, table=target.table)
        removed = rows
    else:  # dropped since (a rebuild, by hand): nothing of anyone is left to purge
        return {}, {"table_absent": True}
    report = pg_gallery.purge_physically(
        target.dsn,
        table=target.table,
        memory_mb=int(ctx.params.serving.gallery.purge_memory_mb),
    )
    info = report.to_dict()
    if report.notes():
        info["note"] = NOTE_WAL.format(why="; ".join(report.notes()))
    return removed, info


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Revoke and delete the row in each table (every replica stops returning it), destroy the
    gallery key if the ``gallery`` step has not, then purge the servers' files (the table
    rewritten, WAL)."""
    found = targets(ctx)
    if not found:
        return Outcome()
    removed: dict[str, str] = {}
    by_store: dict[str, dict[str, Any]] = {}
    name = _named(found)
    for target in found:
        gone, by_store[target.store] = _erase_one(ctx, pid, target)
        removed.update(name(target, gone))
    # The configured table's report as before (or the only one's); each table's by its store.
    main = next((t for t in found if t.configured), found[0])
    info = {k: v for k, v in by_store[main.store].items() if k != "note"}
    info["stores"] = by_store
    notes = [
        # Each table's store names it (pgvector:host:port/db/table) in place of the bare prefix.
        (f"{store}:{str(i['note']).removeprefix('pgvector:')}" if len(found) > 1 else i["note"])
        for store, i in by_store.items()
        if i.get("note")
    ]
    if notes:
        info["note"] = "; ".join(notes)
    artefacts = [
        {"store": STORE, "path": k, "sha256": v}
        for k, v in removed.items()
        if k.startswith(f"{pg_gallery.BACKEND}:")
    ]
    return Outcome(artefacts, info=info)


def verify(ctx: Context, pid: str) -> list[str]:
    """What the gallery tables still hold of the subject (empty once erased): the subject's
    row, and any table left beside one holding its rows of before a purge
    (:func:`~visage_ml.serving.pg_gallery.purge_leftovers`), whose files may hold the erased
    row's bytes."""
    try:
        found = targets(ctx)
    except (GalleryError, stores.StoresError) as exc:
        return [f"{STORE}: {exc}"]
    left: list[str] = []
    name = _named(found)
    for t in found:
        try:
            left += sorted(name(t, pg_gallery.subject_rows(t.dsn, pid, table=t.table)))
            left += [
                MSG_LEFT.format(store=t.store, relation=r)
                for r in pg_gallery.purge_leftovers(t.dsn, table=t.table)
            ]
        except GalleryError as exc:
            left.append(f"{t.store}: unreachable ({exc})")
    return left
