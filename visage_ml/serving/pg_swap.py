"""An erasure's rewrite of the pgvector gallery table by copy and swap, serving reading on.

``VACUUM FULL`` holds ACCESS EXCLUSIVE on the table for the whole rewrite (the copy and every
index rebuild: about 5 s per erasure at 100k exact templates, minutes with HNSW), and every
replica's searches wait for it or answer 503. :func:`rewrite_and_swap` writes the same new files
while reads go on:

1. the change log, in a short transaction of its own committed before the copy (so that every
   writer sees it): ``<table>$purge_log``, an unlogged table of the primary key's columns, and
   the trigger ``visage$purge_log`` on the table (after each row inserted, updated or deleted;
   enabled ``ALWAYS``, so it fires under ``session_replication_role = replica`` too) whose
   function (``<table>$purge_log()``, ``SECURITY DEFINER``: the writers need no right on the
   log) inserts the row's key into the log in the writer's own transaction. ``CREATE TRIGGER``
   takes ``SHARE ROW EXCLUSIVE``: it waits for the writes in progress and holds new ones off
   until its commit, never a search; it is asked for briefly, again and again, as step 6's lock
   is (an autovacuum of the table gives way at the second try: :func:`autovacuum_longer`).
   From its commit on, every write's key is in the log once the write commits;

then, in one transaction:

2. ``LOCK`` the table ``SHARE UPDATE EXCLUSIVE``: searches and writes (enrolments, another
   erasure's ``DELETE``) go on; a second purge waits (the mode conflicts with itself), and so do
   ``VACUUM``, ``TRUNCATE`` (which fires no row trigger) and schema changes; the log is locked
   too (``ROW EXCLUSIVE``: writers insert on, nobody drops it) and checked to be as step 1 made
   it;
3. ``CREATE TABLE <table>$purge (LIKE <table> INCLUDING ALL EXCLUDING INDEXES)`` (``LIKE``
   copies no trigger), then what ``LIKE`` leaves out: each column's statistics target (``0``:
   ANALYZE would otherwise copy sample vectors into ``pg_statistic``, set before any row is
   written), the table's storage options and comment, its owner and grants;
4. ``INSERT ... SELECT`` of every row (after the erasure's ``DELETE`` committed: the copy holds
   only live rows), then each index built from the old one's definition (the HNSW graph in one
   build, not row by row; the session's ``maintenance_work_mem`` as the caller sized it);
5. the copy brought up to what was written since (:func:`_catch_up`), writes going on: the keys
   in the log are taken out of it, and the rows of those keys deleted from the copy and copied
   again as they are now, reached through the primary key's index;
6. a short ACCESS EXCLUSIVE (asked for briefly, again and again, as ``VACUUM FULL``'s lock is,
   step 5 run again after each try refused); under it step 5 once more, which reads the log
   and the rows it names, not the table (no write is in progress: the log holds every write not
   yet copied, and the copy is then the same as the table), and the copy given the table's
   grants again (``GRANT`` and ``REVOKE`` take no lock on the table: one committed during the
   copy is kept); the log's trigger dropped from the old table, the log and its function
   dropped; the old table renamed aside (``<table>$purge_old``), its indexes too (to
   ``<table>$purge_old_<n>``, their constraints with them: index names are the schema's), the
   new table, its indexes and constraints renamed to the old names, and the result compared
   with the old table's catalog description taken before the renames: any difference rolls the
   whole swap back. The old table is not dropped here: a ``DROP``'s commit unlinks the table's
   heap, TOAST and index files, and did so with this lock held (0.21 s for the 528 MB of heap
   and TOAST of 100k templates, growing with the table: past serving's 2 s lock timeout towards
   1M; the hold measured at 100k HNSW templates went from 0.37-0.90 s to 0.09-0.17 s,
   docs/shared-gallery.md);

then, after the commit:

7. ``DROP TABLE <table>$purge_old`` in a transaction of its own, its files unlinked at its
   commit, before :func:`rewrite_and_swap` returns (so before the caller's WAL switch and
   checkpoint, and before an erasure is certified: the files hold the erased row). It takes
   ACCESS EXCLUSIVE on the old table alone, which nobody reaches by the gallery's name any
   more: searches and writes go on meanwhile (tested). A search or write that was waiting for
   the gallery table at the swap's commit asked for its lock on the old table; once granted,
   PostgreSQL looks the name up again (invalidation messages arrived meanwhile), releases the
   old table and locks the new one, and a prepared statement's plan, invalidated by the
   rename, is planned again by name: each reads or writes the new table (tested). Its lock is
   asked for as step 6's is, the last try too for a while only (:func:`_drop_waiting`): a
   session holding the old table by its name (a ``pg_dump``, a query typed by hand in a
   transaction left open) would otherwise hold the erasure for as long as it lives; the purge
   stops with :class:`OldTableHeldError` instead, the old table left under its name, as a purge
   that died there leaves it (below). An autovacuum of the old table (of its TOAST table:
   minutes at a million templates) gives way, as PostgreSQL makes it give way to any lock that
   waits for it long enough (:func:`_drop_waiting`).

Why a change log kept by a trigger
----------------------------------
The catch-up first compared the version of every row of the table (key, ``ctid``, ``xmin``)
with the versions copied: one pass over the heap under the ACCESS EXCLUSIVE lock, 0.29 s of a
0.65 s hold at 100k HNSW templates, past serving's 2 s lock timeout towards 1M (every search
503 during each erasure). With the log, the work under the lock is the rows written since the
last catch-up (tested: no sequential scan of the table or the copy between the lock and the
drop). The keys are logged by a trigger rather than by the gallery's own write path
(:mod:`visage_ml.serving.pg_gallery`): the table is written by other clients too (a role that
may write it without the project's keys, an administrator deleting a row by hand), and a write
the log missed would be undone by the swap (a row deleted by hand back in the table), where a
trigger sees every write whoever makes it. Logical decoding was not taken either: it needs
``wal_level = logical`` and a replication slot, which keeps old WAL, the bytes an erasure
removes. The cost: while a purge runs, each row written also inserts its key into an unlogged
table (no WAL); creating the trigger holds writes (not searches) for a brief lock. Measured at
100k HNSW templates, the catch-up under the lock went from 0.32-0.41 s to 0.07-0.10 s (the HNSW
inserts of the 7-8 rows written since the last one); what then remained of the hold grew
with the table still, the ``DROP TABLE``'s commit unlinking the old files with the lock held,
which step 7 moved out of it (docs/shared-gallery.md).

The log holds keys only (``pid``: pseudonymous), never a vector or a sealed template.

A purge that dies
-----------------
Being one transaction, steps 2 to 6 leave the gallery as it was and no ``<table>$purge``
behind when the purge dies (its connection, its process, the server; a server crash may leave
the new files orphaned on disk, as a crash during ``VACUUM FULL`` does: they hold the rows live
at that time, which a later erasure's subject may be among). ``$`` is in no gallery table's
name, so the copy's, the log's and the old table's names are never another gallery's table.

The log, committed before, stays: its trigger goes on inserting keys (an enrolment is not
slowed or refused; with the log dropped by hand it does nothing). A purge holds a session
advisory lock (:data:`PURGE_LOCK` with the table's name) from before the log is made until
the old table is dropped, released with its connection: a log found by whoever gets that lock
is a purge's that died. It is removed (:func:`drop_left_log`) by the purge itself where the
swap was refused or failed with the connection alive (before the ``VACUUM FULL`` that
replaces it), by the next opening of the gallery
(:func:`~visage_ml.serving.pg_gallery.ensure_schema`), and replaced by the next purge's step 1.
Dropping a trigger takes ACCESS EXCLUSIVE on the table: asked for briefly, and where refused
(or the role does not own the table) the log is left, logged, for the next try.

A purge that dies between step 6's commit and step 7's leaves the old table as
``<table>$purge_old``, its files holding the erased row: the swapped table serves, but the
erasure is not done. The erasure's verify names the table while it is there
(:func:`left_tables`, :mod:`visage_ml.rights.erasure.pgvector`), and it is dropped by the next
purge before anything else (:func:`_drop_left_copy`, followed by that purge's WAL switch and
checkpoint: a resumed erasure runs its purge again) and by the next opening of the gallery
(:func:`drop_left_log`), unless a purge is running (it holds the advisory lock, and drops its
own old table). The next purge's drop stops as step 7's does while a session holds the table.

The swap carries over what the gallery's schema holds (:func:`obstacles` names anything else: a
trigger other than the log's, a rule or view, a foreign key, a policy, a publication, an owned
sequence, extended statistics, inheritance, column grants...); for such a table
:class:`SwapRefusedError` is raised before anything is written and the caller falls back to
``VACUUM FULL``.

The new rows carry the purge's transaction id: a REPEATABLE READ snapshot taken before the swap
committed sees the new table empty (as after ``TRUNCATE``). Serving's snapshots take their lock on
the table first (``LOCK TABLE`` before the snapshot), so they see the old table whole or the new
one; another client's long REPEATABLE READ transaction (``pg_dump``) is not protected.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

# Appended to the gallery table's name for its copy (``$`` is in no name check_table allows).
COPY_SUFFIX = "$purge"
# Appended to it for the change log: the table of keys and the trigger function writing it.
LOG_SUFFIX = "$purge_log"
# Appended to it for the old table, renamed aside under the swap's lock and dropped after the
# swap's commit (its indexes: with ``_<n>``). Its files hold the rows as they were before the
# purge, the erased subject's deleted row among them.
OLD_SUFFIX = "$purge_old"
# The tables beside the gallery table that hold its rows of an earlier time: the copy (left by
# hand or by an older version) and the old table (left by a purge that died after its swap).
LEFT_SUFFIXES = (COPY_SUFFIX, OLD_SUFFIX)
# The trigger on the table that writes the change log (the one trigger obstacles() allows).
LOG_TRIGGER = "visage$purge_log"
# pg_trigger.tgtype of it: row 1, insert 4, delete 8, update 16 (AFTER: no before bit).
LOG_TRIGGER_TYPE = 1 | 4 | 8 | 16
# The temporary table of the keys a catch-up takes from the log (:func:`_catch_up`).
CHANGED = "visage_purge_changed"
# With the table's name, the session advisory lock a purge holds from before its log is made
# until it is removed: whoever gets it knows that a log found is left by a purge that died.
PURGE_LOCK = "visage$purge"

MSG_NOT_PLAIN = "it is not a plain, logged table"
MSG_INHERITS = "it is part of an inheritance tree or a typed table"
MSG_ROW_SECURITY = "it has row-level security"
MSG_REPLICA_IDENTITY = "its replica identity is not the default"
MSG_PUBLICATION = "a publication covers it"
MSG_DEPENDS = "{what} depends on it"
MSG_COLUMNS = "a column is an identity or generated column, or has grants of its own"
MSG_LABELS = "it has security labels"
MSG_TOAST = "its TOAST table has storage options"
MSG_INDEX = "an index or constraint is of a kind the swap does not rebuild"
MSG_DIFFERS = "the copy's description differs from the table's ({what})"
MSG_NO_KEY = "it has no primary key (the copy's rows could not be matched to the table's)"
MSG_LOG_GONE = (
    "the change log made for the copy was removed or altered before the copy began (by hand, "
    "or by a gallery opened meanwhile)"
)
MSG_LOG_KEPT = (
    "gallery table {table}: the change log of a purge that died (trigger {trigger}, table "
    "{log}: keys only) could not be removed now ({why}); writes go on through it, and the next "
    "purge or opening of the gallery by the tables' owner removes it"
)
MSG_LOG_REMOVED = (
    "gallery table {table}: the change log of a purge that died (trigger {trigger}, table {log}) "
    "was removed"
)
MSG_OLD_KEPT = (
    "gallery table {table}: the old table a purge that died renamed aside ({old}: its rows as "
    "they were before the purge) could not be dropped now ({why}); the next purge or opening of "
    "the gallery by the tables' owner drops it, and until then an erasure does not verify"
)
MSG_OLD_REMOVED = (
    "gallery table {table}: the old table a purge that died renamed aside ({old}) was dropped"
)
MSG_OLD_HELD = (
    "gallery table {table}: {old} (the table's rows as they were before a purge, the erased "
    "ones among them) could not be dropped in {seconds:.0f} s: another session holds a lock on "
    "it ({holders}: a pg_dump, or a query left open in a transaction). End that session (let "
    "the dump finish, or pg_terminate_backend(pid)), then run `visage privacy resume`: the "
    "resumed erasure drops it; until then the erasure does not verify"
)
# An autovacuum that PostgreSQL does not cancel for a lock: one preventing transaction ID
# wraparound (its query says so in pg_stat_activity).
MSG_AUTOVACUUM_HELD = (
    "; an autovacuum worker holding it was not cancelled (one that prevents transaction ID "
    "wraparound is not): let it finish, then run `visage privacy resume`"
)
AUTOVACUUM = "autovacuum worker"  # pg_stat_activity.backend_type
MSG_DEADLOCK = (
    "a client holding the table waited, without a lock timeout, for a lock the copy's excludes"
)
MSG_FAILED = (
    "the copy could not be made or swapped in ({error}: e.g. the role may not create a table in "
    "the schema, or give it the table's owner and grants, or an object depends on the table)"
)
# What makes the copy or the swap fail for the table's schema or the role's rights (not the
# connection's loss, which fails the purge: the erasure is resumed).
_SCHEMA_ERRORS = (
    psycopg.errors.ProgrammingError,
    psycopg.errors.NotSupportedError,
    psycopg.errors.DependentObjectsStillExist,
)

# What leaves a dead purge's log in place rather than fail (the role's rights, an object on it).
_LEAVE_LOG_ERRORS = (
    psycopg.ProgrammingError,
    psycopg.NotSupportedError,
    psycopg.InternalError,
    psycopg.IntegrityError,
)

# What a pg_depend entry on the table is, when it is not the table's own part.
_DEPENDENT_KIND = {
    "pg_trigger": "a trigger",
    "pg_rewrite": "a rule or view",
    "pg_policy": "a policy",
    "pg_publication_rel": "a publication",
    "pg_statistic_ext": "an extended statistics object",
    "pg_constraint": "a foreign key or exclusion constraint",
    "pg_class": "a sequence or other relation",
}


class SwapRefusedError(RuntimeError):
    """The table holds something the swap cannot carry over (the message says what, no data):
    rewrite it with ``VACUUM FULL`` instead. Nothing was written."""


class OldTableHeldError(RuntimeError):
    """The swap committed but the old table (or a copy left beside the table) could not be
    dropped: another session held it past the purge's lock tries (the message names its
    backend and says what to do). The table keeps its name; the erasure does not verify until
    a later purge drops it."""


def _phase(conn: psycopg.Connection, name: str) -> None:
    """Where a purge is (``copied``, ``built``, ``caught_up``, ``waiting`` for its lock,
    ``locked`` once it holds it, ``swapped`` just before the commit, ``committed``, then
    ``dropping`` the old table before that drop's commit and ``dropped``): a point tests hold
    it at, and the benchmark times the hold by (``benchmarks/bench_erasure_vacuum.py``:
    ``locked`` to ``committed``)."""


def _one(conn: psycopg.Connection, query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def obstacles(conn: psycopg.Connection, oid: int) -> list[str]:
    """Why the table ``oid`` cannot be swapped (empty: it can)."""
    out: list[str] = []
    row = conn.execute(
        "SELECT relkind, relpersistence, reloftype <> 0 OR relhassubclass OR EXISTS (SELECT 1 "
        "FROM pg_catalog.pg_inherits WHERE inhrelid = c.oid), relrowsecurity OR "
        "relforcerowsecurity, relreplident, (SELECT reloptions FROM pg_catalog.pg_class t "
        "WHERE t.oid = c.reltoastrelid) FROM pg_catalog.pg_class c WHERE oid = %s",
        (oid,),
    ).fetchone()
    kind, persistence, inherits, rls, replident, toast_options = row
    if kind != "r" or persistence != "p":
        out.append(MSG_NOT_PLAIN)
    if inherits:
        out.append(MSG_INHERITS)
    if rls or _one(conn, "SELECT count(*) FROM pg_catalog.pg_policy WHERE polrelid = %s", (oid,)):
        out.append(MSG_ROW_SECURITY)
    if replident != "d":
        out.append(MSG_REPLICA_IDENTITY)
    if toast_options:
        out.append(MSG_TOAST)
    # A publication of all tables or of the schema would publish the copy's rows and the drop.
    if _one(
        conn,
        "SELECT count(*) FROM pg_catalog.pg_publication p WHERE p.puballtables OR EXISTS "
        "(SELECT 1 FROM pg_catalog.pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = "
        "%s) OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace s JOIN "
        "pg_catalog.pg_class c ON c.relnamespace = s.pnnspid WHERE s.pnpubid = p.oid AND c.oid = "
        "%s)",
        (oid, oid),
    ):
        out.append(MSG_PUBLICATION)
    # Everything that depends on the table but its own parts (indexes, TOAST table, row type,
    # defaults, NOT NULL / CHECK / PRIMARY KEY / UNIQUE constraints) and the purge's own change
    # log trigger: DROP TABLE would drop it with the table (a trigger, a policy) or refuse (a
    # view, another table's foreign key).
    for (catalog,) in conn.execute(
        "SELECT DISTINCT d.classid::regclass::text FROM pg_catalog.pg_depend d "
        "WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = %(t)s "
        "AND NOT (d.classid = 'pg_catalog.pg_class'::regclass AND (d.objid IN (SELECT indexrelid "
        "FROM pg_catalog.pg_index WHERE indrelid = %(t)s) OR d.objid = (SELECT reltoastrelid "
        "FROM pg_catalog.pg_class WHERE oid = %(t)s))) "
        "AND NOT (d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = (SELECT reltype "
        "FROM pg_catalog.pg_class WHERE oid = %(t)s)) "
        "AND NOT d.classid = 'pg_catalog.pg_attrdef'::regclass "
        "AND NOT (d.classid = 'pg_catalog.pg_trigger'::regclass AND d.objid IN (SELECT oid "
        "FROM pg_catalog.pg_trigger WHERE tgrelid = %(t)s AND tgname = %(log)s)) "
        "AND NOT (d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid IN (SELECT oid "
        "FROM pg_catalog.pg_constraint WHERE conrelid = %(t)s AND contype IN ('p','u','c','n')))",
        {"t": oid, "log": LOG_TRIGGER},
    ).fetchall():
        out.append(MSG_DEPENDS.format(what=_DEPENDENT_KIND.get(catalog, "another object")))
    # Functions or columns of other tables of the table's row type.
    if _one(
        conn,
        "SELECT count(*) FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c "
        "ON d.refobjid = c.reltype WHERE c.oid = %s AND d.refclassid = 'pg_catalog.pg_type'"
        "::regclass AND NOT (d.classid = 'pg_catalog.pg_type'::regclass AND d.deptype = 'i')",
        (oid,),
    ):
        out.append(MSG_DEPENDS.format(what="an object using its row type"))
    if _one(
        conn,
        "SELECT count(*) FROM pg_catalog.pg_attribute WHERE attrelid = %s AND attnum > 0 AND "
        "NOT attisdropped AND (attidentity <> '' OR attgenerated <> '' OR attacl IS NOT NULL)",
        (oid,),
    ):
        out.append(MSG_COLUMNS)
    if _one(conn, "SELECT count(*) FROM pg_catalog.pg_seclabel WHERE objoid = %s", (oid,)):
        out.append(MSG_LABELS)
    if _one(
        conn,
        "SELECT count(*) FROM pg_catalog.pg_index i LEFT JOIN pg_catalog.pg_constraint k "
        "ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid WHERE i.indrelid = %s AND "
        "(i.indisclustered OR NOT i.indisvalid OR (k.oid IS NOT NULL AND k.contype NOT IN "
        "('p', 'u')))",
        (oid,),
    ):
        out.append(MSG_INDEX)
    return out


def describe(conn: psycopg.Connection, oid: int) -> dict[str, Any]:
    """What of the table ``oid`` must be the same after the swap (its name, oid and files
    aside): columns, constraints, indexes, options, owner, grants, comments."""
    q = {
        "table": "SELECT relowner::regrole::text, relacl::text[], reloptions, relpersistence, "
        "relreplident, relrowsecurity, obj_description(oid, 'pg_class') FROM pg_catalog.pg_class "
        "WHERE oid = %(t)s",
        "columns": "SELECT a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), "
        "a.attnotnull, a.attstorage, a.attcompression, a.attstattarget, a.attcollation, "
        "pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attacl::text[], "
        "pg_catalog.col_description(a.attrelid, a.attnum) FROM pg_catalog.pg_attribute a "
        "LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = %(t)s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attname",
        "constraints": "SELECT conname, contype, pg_catalog.pg_get_constraintdef(oid), "
        "condeferrable, condeferred, convalidated, obj_description(oid, 'pg_constraint') "
        "FROM pg_catalog.pg_constraint WHERE conrelid = %(t)s ORDER BY conname",
        "indexes": "SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid), c.reloptions, "
        "i.indisprimary, i.indisunique, obj_description(c.oid, 'pg_class') "
        "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = %(t)s ORDER BY c.relname",
    }
    out: dict[str, Any] = {}
    for key, query in q.items():
        rows = conn.execute(query, {"t": oid}).fetchall()
        out[key] = [tuple(sorted(v) if isinstance(v, list) else v for v in r) for r in rows]
    return out


def _oid(conn: psycopg.Connection, schema: str, name: str) -> int | None:
    return _one(
        conn, "SELECT to_regclass(%s)::oid", (sql.Identifier(schema, name).as_string(conn),)
    )


def ask_briefly(
    do: Callable[[float], None],
    *,
    tries: int,
    timeout_s: float,
    pause_s: float,
    meanwhile: Callable[[], None] | None = None,
    longer: Callable[[], float] | None = None,
    give_up: bool = False,
) -> int:
    """``do(wait)``, a statement that takes a lock waiting at most ``wait`` seconds for it (0: as
    long as it takes), asked ``timeout_s`` at a time ``tries - 1`` times, ``pause_s`` apart, then
    as long as it takes: a request waiting for a lock makes every later one on the table wait
    behind it, so a purge asks briefly rather than hold serving up behind a long reader.
    ``meanwhile`` runs after each try refused, before the pause; ``longer`` too, and the later
    tries wait as much longer as the most it returned (:func:`autovacuum_longer`). With
    ``give_up``, the last try too waits ``timeout_s`` (and that much longer), and its refusal
    (``LockNotAvailable``) is raised. Returns the tries it took."""
    attempt, extra = 0, 0.0
    while True:
        attempt += 1
        last = attempt >= tries
        try:
            do(timeout_s + extra if give_up or not last else 0.0)
        except psycopg.errors.LockNotAvailable:
            if give_up and last:
                raise
            if meanwhile is not None:
                meanwhile()
            if longer is not None:
                extra = max(extra, longer())
            time.sleep(pause_s)
            continue
        return attempt


def autovacuum_longer(
    conn: psycopg.Connection, table: str, names: list[str] | None = None
) -> Callable[[], float]:
    """For :func:`ask_briefly`'s ``longer``, after a try for a lock on ``table`` (found on the
    search path; or on the tables ``names`` of its schema) was refused: how much longer the
    next tries must wait for PostgreSQL to cancel an autovacuum worker that holds it (its TOAST
    table or an index: :func:`holders`), 0 when none does.

    PostgreSQL cancels an autovacuum that blocks a lock once the lock has waited
    ``deadlock_timeout`` (1 s by default), longer than a purge's brief try: a large table's
    autovacuum (minutes at a million templates) outlasted every try but the last, unbounded one
    (about 14 s of refusals), or, where that too is bounded (a drop's), the erasure stopped.
    An anti-wraparound autovacuum is not cancelled; it is waited for as any holder is."""

    def extra() -> float:
        held = holders(conn, _located(conn, table)[1], names or [table])
        return _yielding(conn) if any(kind == AUTOVACUUM for _, kind in held) else 0.0

    return extra


def _lock_briefly(
    conn: psycopg.Connection,
    target: sql.Composable,
    *,
    tries: int,
    timeout_s: float,
    pause_s: float,
    meanwhile: Callable[[], None] | None = None,
) -> int:
    """ACCESS EXCLUSIVE on ``target`` in the open transaction, asked for as :func:`ask_briefly`
    says (``meanwhile`` between tries), each failed try rolled back to a savepoint (the copy is
    kept). Returns the tries."""
    lock = sql.SQL("LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE").format(t=target)

    def take(wait: float) -> None:
        with conn.transaction():
            _wait_for_locks(conn, wait)
            conn.execute(lock)

    try:
        attempts = ask_briefly(
            take, tries=tries, timeout_s=timeout_s, pause_s=pause_s, meanwhile=meanwhile
        )
    except psycopg.errors.DeadlockDetected:
        # A client read the table and waits, with no lock timeout, for a lock behind the copy's:
        # one of the two must give way, and the purge can (by VACUUM FULL after it).
        raise SwapRefusedError(MSG_DEADLOCK) from None
    conn.execute("SELECT pg_catalog.set_config('lock_timeout', '0', true)")
    return attempts


def rewrite_and_swap(
    conn: psycopg.Connection, table: str, *, lock_tries: int, lock_timeout_s: float, pause_s: float
) -> int:
    """Rewrite ``table`` into new files by copy and swap (module docstring); ``conn`` in
    autocommit mode, its ``maintenance_work_mem`` set for the index builds. The old table is
    dropped after the swap's commit, before this returns. Returns the most tries any of its
    locks took (the log's trigger, the swap's ACCESS EXCLUSIVE, a drop of the old table).

    Raises
    ------
    SwapRefusedError
        The table holds something the swap cannot carry over, or the role may not create the
        copy or the change log in the table's schema or give the copy the table's owner:
        nothing was changed (the change log made for it is removed again, where the table
        can be locked briefly: :func:`drop_left_log`).
    OldTableHeldError
        Another session held the old table (or one a purge left) through every try of its
        drop's lock: the swap may have committed, the old table is left under its name.
    """
    locking = (lock_tries, lock_timeout_s, pause_s)
    # Held until the log is gone (released with the connection, were this process to die).
    conn.execute("SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))", (PURGE_LOCK, table))
    swapped = False
    try:
        attempts = _drop_left_copy(conn, table, locking=locking)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
            oid, schema = _located(conn, table)
            # Refused before the log is made (checked again under the copy's lock).
            why = obstacles(conn, oid)
            if why:
                raise SwapRefusedError("; ".join(why))
            key = _primary_key(conn, oid)
        try:
            attempts = max(
                attempts, _make_log(conn, schema=schema, table=table, key=key, locking=locking)
            )
        except _SCHEMA_ERRORS as exc:
            raise SwapRefusedError(MSG_FAILED.format(error=type(exc).__name__)) from None
        attempts = max(attempts, _swap(conn, table, key=key, locking=locking))
        swapped = True
        attempts = max(attempts, _drop_old(conn, table, locking=locking))
    finally:
        if not swapped and not conn.closed:
            # The swap's transaction took the trigger with the old table; here it was refused or
            # failed. A connection lost leaves the log to the next purge or opening.
            with contextlib.suppress(psycopg.Error):
                drop_left_log(conn, table, tries=lock_tries, timeout_s=lock_timeout_s)
        with contextlib.suppress(psycopg.Error):
            conn.execute(
                "SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", (PURGE_LOCK, table)
            )
    return attempts


def _located(conn: psycopg.Connection, table: str) -> tuple[int, str]:
    """The table's oid and schema (found on the search path)."""
    oid = _one(conn, "SELECT to_regclass(%s)::oid", (sql.Identifier(table).as_string(conn),))
    schema = _one(
        conn,
        "SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    )
    return oid, schema


def _swap(
    conn: psycopg.Connection, table: str, *, key: list[str], locking: tuple[int, float, float]
) -> int:
    """Steps 2 to 6 of the module docstring, in one transaction; returns the tries the ACCESS
    EXCLUSIVE lock took."""
    with conn.transaction():
        # One schema change of the gallery at a time (ensure_schema, ensure_hnsw take it too).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
        oid, schema = _located(conn, table)
        old = sql.Identifier(schema, table)
        conn.execute(sql.SQL("LOCK TABLE {t} IN SHARE UPDATE EXCLUSIVE MODE").format(t=old))
        why = obstacles(conn, oid)
        if why:
            raise SwapRefusedError("; ".join(why))
        log = sql.Identifier(schema, f"{table}{LOG_SUFFIX}")
        # Held from here to the commit, the lock keeps the log from being dropped (DROP waits);
        # writers' inserts through the trigger go on.
        if _oid(conn, schema, f"{table}{LOG_SUFFIX}") is None:
            raise SwapRefusedError(MSG_LOG_GONE)
        conn.execute(sql.SQL("LOCK TABLE {g} IN ROW EXCLUSIVE MODE").format(g=log))
        if _primary_key(conn, oid) != key or not _log_in_place(
            conn, oid=oid, schema=schema, table=table, key=key
        ):
            raise SwapRefusedError(MSG_LOG_GONE)
        # With the head of each definition up to USING, as pg_get_indexdef quotes the names.
        indexes = conn.execute(
            "SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid), i.indisunique, "
            "k.conname, k.contype, 'CREATE ' || CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' "
            "END || 'INDEX ' || pg_catalog.quote_ident(c.relname) || ' ON ' || "
            "pg_catalog.quote_ident(%s) || '.' || pg_catalog.quote_ident(%s) || ' USING ' "
            "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
            "LEFT JOIN pg_catalog.pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = "
            "i.indrelid WHERE i.indrelid = %s ORDER BY c.relname",
            (schema, table, oid),
        ).fetchall()
        try:
            attempts, before = _copy_and_swap(
                conn,
                schema=schema,
                table=table,
                oid=oid,
                indexes=indexes,
                locking=locking,
            )
        except _SCHEMA_ERRORS as exc:
            # Raised inside the transaction: whatever the copy and the swap did is rolled back.
            raise SwapRefusedError(MSG_FAILED.format(error=type(exc).__name__)) from None
        after = describe(conn, _oid(conn, schema, table))
        differs = [k for k in before if before[k] != after[k]]
        if differs:
            raise SwapRefusedError(MSG_DIFFERS.format(what=", ".join(differs)))
        _phase(conn, "swapped")
    _phase(conn, "committed")
    return attempts


def _log_body(conn: psycopg.Connection, *, schema: str, table: str, key: list[str]) -> str:
    """The trigger function's body: the key of each row written (both keys of an update that
    changes it) inserted into the log, when the log exists (a log dropped by hand must not
    fail enrolments; while a purge runs its lock keeps the log from being dropped)."""
    log = sql.Identifier(schema, f"{table}{LOG_SUFFIX}")

    def keys(row: str) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("{r}.{c}").format(r=sql.SQL(row), c=sql.Identifier(c)) for c in key
        )

    return (
        sql.SQL(
            "BEGIN\n"
            "  IF pg_catalog.to_regclass({name}) IS NULL THEN\n"
            "    RETURN NULL;\n"
            "  END IF;\n"
            "  IF TG_OP <> 'INSERT' THEN\n"
            "    INSERT INTO {g} VALUES ({old});\n"
            "  END IF;\n"
            "  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND ROW({old}) IS DISTINCT FROM "
            "ROW({new})) THEN\n"
            "    INSERT INTO {g} VALUES ({new});\n"
            "  END IF;\n"
            "  RETURN NULL;\n"
            "END"
        )
        .format(name=sql.Literal(log.as_string(conn)), g=log, old=keys("OLD"), new=keys("NEW"))
        .as_string(conn)
    )


def _make_log(
    conn: psycopg.Connection,
    *,
    schema: str,
    table: str,
    key: list[str],
    locking: tuple[int, float, float],
) -> int:
    """Step 1 of the module docstring: the change log (a table of the key columns, emptied),
    its trigger function and the trigger on the table, committed on their own, the table's
    SHARE ROW EXCLUSIVE lock (which waits for the writes in progress, and holds later writes
    off until the commit, never searches) asked for as :func:`ask_briefly` says. What a purge
    that died left is replaced. Returns the tries the lock took."""
    old = sql.Identifier(schema, table)
    log = sql.Identifier(schema, f"{table}{LOG_SUFFIX}")
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in key)
    body = _log_body(conn, schema=schema, table=table, key=key)
    trigger = sql.Identifier(LOG_TRIGGER)

    def make(wait: float) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
            _wait_for_locks(conn, wait)
            conn.execute(sql.SQL("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").format(t=old))
            if _oid(conn, schema, f"{table}{LOG_SUFFIX}") is not None:
                conn.execute(sql.SQL("DROP TABLE {g}").format(g=log))
            # Unlogged: written by every enrolment during the purge, needed by nobody after a
            # crash (the purge died with it; the next one makes its own).
            conn.execute(
                sql.SQL("CREATE UNLOGGED TABLE {g} AS SELECT {k} FROM {t} WITH NO DATA").format(
                    g=log, k=columns, t=old
                )
            )
            # SECURITY DEFINER: the writers (serving's role) need no right on the log.
            conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql "
                    "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {b}"
                ).format(f=log, b=sql.Literal(body))
            )
            conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {f}() FROM PUBLIC").format(f=log))
            conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER {g} AFTER INSERT OR UPDATE OR DELETE ON {t} "
                    "FOR EACH ROW EXECUTE FUNCTION {f}()"
                ).format(g=trigger, t=old, f=log)
            )
            # Fired under session_replication_role = replica too (a logical replication apply).
            conn.execute(
                sql.SQL("ALTER TABLE {t} ENABLE ALWAYS TRIGGER {g}").format(t=old, g=trigger)
            )

    tries, timeout_s, pause_s = locking
    try:
        return ask_briefly(
            make,
            tries=tries,
            timeout_s=timeout_s,
            pause_s=pause_s,
            longer=autovacuum_longer(conn, table),
        )
    except psycopg.errors.DeadlockDetected:
        raise SwapRefusedError(MSG_DEADLOCK) from None


def _log_in_place(
    conn: psycopg.Connection, *, oid: int, schema: str, table: str, key: list[str]
) -> bool:
    """Whether the table's change log is as :func:`_make_log` made it: its trigger on the table,
    always enabled, for every row written, calling the function with the body made for it, and
    the log's columns the key's."""
    name = f"{table}{LOG_SUFFIX}"
    fired = _one(
        conn,
        "SELECT count(*) FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p "
        "ON p.oid = t.tgfoid WHERE t.tgrelid = %s AND t.tgname = %s AND t.tgenabled = 'A' "
        "AND t.tgtype = %s AND t.tgnargs = 0 AND t.tgqual IS NULL AND t.tgattr::text = '' "
        "AND p.oid = pg_catalog.to_regprocedure(%s) AND p.prosrc = %s AND p.prosecdef",
        (
            oid,
            LOG_TRIGGER,
            LOG_TRIGGER_TYPE,
            sql.Identifier(schema, name).as_string(conn) + "()",
            _log_body(conn, schema=schema, table=table, key=key),
        ),
    )
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (_oid(conn, schema, name),),
        ).fetchall()
    ]
    return bool(fired) and columns == key


def drop_left_log(
    conn: psycopg.Connection, table: str, *, tries: int = 1, timeout_s: float = 0.5
) -> bool:
    """Remove what a purge left: the old table a purge that died after its swap renamed aside
    (:data:`OLD_SUFFIX`, dropped in a transaction of its own), the change log, its trigger and
    function (a purge that died, or was refused after making them); call outside a transaction
    or inside one (a savepoint).

    Nothing is done while a purge holds the table (its log is in use, its old table about to be
    dropped by it) or when there is nothing to remove. Dropping the trigger takes ACCESS
    EXCLUSIVE on the table: asked for ``timeout_s`` at a time, ``tries`` times, then left as it
    is (logged: writes go on through it, and the next purge, or the next try, removes it); the
    old table's lock is asked for once, ``timeout_s`` long (nobody but a client reading it by
    its name holds it). Returns whether something was removed."""
    old = _drop_left_old(conn, table, timeout_s=timeout_s)
    return _drop_left_log(conn, table, tries=tries, timeout_s=timeout_s) or old


def _no_purge(conn: psycopg.Connection, table: str) -> tuple[int, str] | None:
    """In the open transaction: the table's oid and schema when no purge holds it (the purge's
    advisory lock, :data:`PURGE_LOCK`, then taken until the commit), else None (or no table):
    what a purge left is removed only by whoever holds that lock."""
    held = _one(
        conn,
        "SELECT pg_try_advisory_xact_lock(hashtext(%s), hashtext(%s))",
        (PURGE_LOCK, table),
    )
    if not held:
        return None
    oid, schema = _located(conn, table)
    return None if oid is None else (oid, schema)


def _drop_left_old(conn: psycopg.Connection, table: str, *, timeout_s: float) -> bool:
    name = f"{table}{OLD_SUFFIX}"
    try:
        with conn.transaction():
            found = _no_purge(conn, table)
            if found is None or _oid(conn, found[1], name) is None:
                return False
            schema = found[1]
            before = _one(conn, "SELECT pg_catalog.current_setting('lock_timeout')")
            conn.execute(
                "SELECT pg_catalog.set_config('lock_timeout', %s, true)",
                (f"{max(1, round(timeout_s * 1000))}ms",),
            )
            conn.execute(sql.SQL("DROP TABLE {o}").format(o=sql.Identifier(schema, name)))
            conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (before,))
    except (psycopg.errors.LockNotAvailable, *_LEAVE_LOG_ERRORS) as exc:
        logger.warning(MSG_OLD_KEPT.format(table=table, old=name, why=type(exc).__name__))
        return False
    logger.info(MSG_OLD_REMOVED.format(table=table, old=name))
    return True


def _drop_left_log(conn: psycopg.Connection, table: str, *, tries: int, timeout_s: float) -> bool:
    why = ""
    for attempt in range(tries):
        try:
            return _drop_log(conn, table, timeout_s=timeout_s)
        except psycopg.errors.LockNotAvailable as exc:
            why = type(exc).__name__
            if attempt + 1 < tries:
                time.sleep(timeout_s)
        except _LEAVE_LOG_ERRORS as exc:
            # Not this role's to drop, or something made on the log: a gallery's opening
            # must not fail for it.
            why = type(exc).__name__
            break
    logger.warning(
        MSG_LOG_KEPT.format(table=table, trigger=LOG_TRIGGER, log=f"{table}{LOG_SUFFIX}", why=why)
    )
    return False


def _drop_log(conn: psycopg.Connection, table: str, *, timeout_s: float) -> bool:
    with conn.transaction():
        found = _no_purge(conn, table)
        if found is None:
            return False
        oid, schema = found
        name = f"{table}{LOG_SUFFIX}"
        trigger = _one(
            conn,
            "SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = %s AND tgname = %s",
            (oid, LOG_TRIGGER),
        )
        log = _oid(conn, schema, name)
        function = _one(
            conn,
            "SELECT pg_catalog.to_regprocedure(%s)::oid",
            (sql.Identifier(schema, name).as_string(conn) + "()",),
        )
        if not trigger and log is None and function is None:
            return False
        before = _one(conn, "SELECT pg_catalog.current_setting('lock_timeout')")
        conn.execute(
            "SELECT pg_catalog.set_config('lock_timeout', %s, true)",
            (f"{max(1, round(timeout_s * 1000))}ms",),
        )
        if trigger:
            conn.execute(
                sql.SQL("DROP TRIGGER {g} ON {t}").format(
                    g=sql.Identifier(LOG_TRIGGER), t=sql.Identifier(schema, table)
                )
            )
        if log is not None:
            conn.execute(sql.SQL("DROP TABLE {g}").format(g=sql.Identifier(schema, name)))
        if function is not None:
            conn.execute(sql.SQL("DROP FUNCTION {f}()").format(f=sql.Identifier(schema, name)))
        conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (before,))
    logger.info(MSG_LOG_REMOVED.format(table=table, trigger=LOG_TRIGGER, log=name))
    return True


def left_tables(conn: psycopg.Connection, table: str) -> list[str]:
    """The tables beside ``table`` (in its schema) that hold its rows of an earlier time
    (:data:`LEFT_SUFFIXES`): a ``<table>$purge`` copy left by hand or by an older version, the
    ``<table>$purge_old`` a purge that died after its swap left. Their files may hold a row
    deleted since, an erased subject's; a purge drops them before it rewrites the table."""
    oid, schema = _located(conn, table)
    if oid is None:
        return []
    return [
        f"{table}{suffix}"
        for suffix in LEFT_SUFFIXES
        if _oid(conn, schema, f"{table}{suffix}") is not None
    ]


def _drop_left_copy(
    conn: psycopg.Connection, table: str, *, locking: tuple[int, float, float]
) -> int:
    """Drop the tables :func:`left_tables` finds, committed on their own before the swap.

    A purge that died during its copy took its copy with it (one transaction): a
    ``<table>$purge`` was made by hand or by an older version, and holds the rows of its time,
    a subject erased since among them. Dropped inside the swap's transaction, the drop was
    rolled back with a swap that could not run (the table VACUUM FULLed instead) and the copy's
    files kept the erased vector. A ``<table>$purge_old`` is the old table of a purge that died
    between its swap's commit and its drop. The names are the purge's (no gallery's has a
    ``$``); the caller's WAL switch and checkpoint follow the drop. Their lock is asked for as
    the old table's is (:func:`_drop_waiting`). Returns the tries it took."""

    def drop(wait: float) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
            _wait_for_locks(conn, wait)
            schema = _located(conn, table)[1]
            for name in left_tables(conn, table):
                conn.execute(sql.SQL("DROP TABLE {t}").format(t=sql.Identifier(schema, name)))

    return _drop_waiting(conn, table, drop, locking=locking)


def _drop_old(conn: psycopg.Connection, table: str, *, locking: tuple[int, float, float]) -> int:
    """Drop the old table the swap renamed aside (``<table>$purge_old``), in a transaction of
    its own: its heap, TOAST and index files are unlinked at this commit, with ACCESS EXCLUSIVE
    held on it alone, which nobody reaches by name any more; searches and writes of the gallery
    table go on meanwhile. Run before :func:`rewrite_and_swap` returns, so before the caller's
    WAL switch and checkpoint: the old files hold the erased row. A session that holds it by
    name (a pg_dump, a query left open in a transaction) stops the purge after the lock's tries
    (:func:`_drop_waiting`), the old table left under its name. Returns the tries it took."""

    def drop(wait: float) -> None:
        with conn.transaction():
            _wait_for_locks(conn, wait)
            schema = _located(conn, table)[1]
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {o}").format(
                    o=sql.Identifier(schema, f"{table}{OLD_SUFFIX}")
                )
            )
            _phase(conn, "dropping")

    attempts = _drop_waiting(conn, table, drop, locking=locking)
    _phase(conn, "dropped")
    return attempts


def _wait_for_locks(conn: psycopg.Connection, wait: float) -> None:
    """In the open transaction, a statement waits at most ``wait`` seconds for a lock (0: as
    long as it takes)."""
    conn.execute(
        "SELECT pg_catalog.set_config('lock_timeout', %s, true)",
        (f"{max(1, round(wait * 1000)) if wait else 0}ms",),
    )


def _drop_waiting(
    conn: psycopg.Connection,
    table: str,
    drop: Callable[[float], None],
    *,
    locking: tuple[int, float, float],
) -> int:
    """``drop(wait)`` of a table the purge left or renamed aside, its lock asked for as the
    swap's is (:func:`ask_briefly`), the last try too for ``timeout_s`` only: nobody but a
    session holding that table by name keeps the lock from it (a pg_dump, a query typed by
    hand in a transaction left open), and the erasure must not wait on that session for good.

    An autovacuum of the table (of its TOAST table, where the sealed templates lie: minutes at
    a million templates) gives way: PostgreSQL cancels an autovacuum that blocks a lock once
    the lock has waited ``deadlock_timeout`` (1 s by default), longer than a try's
    ``timeout_s``; after a try refused while an autovacuum worker holds the table, the next
    tries wait that long too (:func:`autovacuum_longer`). Returns the tries it took.

    Raises
    ------
    OldTableHeldError
        Refused at every try: the table keeps its name (the erasure's verify names it), and the
        message names the backends holding it (their pids and kinds, never their queries).
    """
    tries, timeout_s, pause_s = locking
    start = time.monotonic()
    names = [f"{table}{suffix}" for suffix in LEFT_SUFFIXES]
    try:
        return ask_briefly(
            drop,
            tries=tries,
            timeout_s=timeout_s,
            pause_s=pause_s,
            longer=autovacuum_longer(conn, table, names),
            give_up=True,
        )
    except psycopg.errors.LockNotAvailable:
        held = holders(conn, _located(conn, table)[1], names)
        named = ", ".join(f"{pid} ({kind})" for pid, kind in held)
        raise OldTableHeldError(
            MSG_OLD_HELD.format(
                table=table,
                old=", ".join(left_tables(conn, table)) or names[-1],
                seconds=time.monotonic() - start,
                holders=f"backend pid {named}" if named else "ended since",
            )
            + (MSG_AUTOVACUUM_HELD if any(kind == AUTOVACUUM for _, kind in held) else "")
        ) from None


def holders(conn: psycopg.Connection, schema: str, names: list[str]) -> list[tuple[int, str]]:
    """The other backends holding a lock on the tables ``names`` of ``schema``, on their TOAST
    tables or on an index of either: their pids and kinds (``client backend``,
    :data:`AUTOVACUUM`...)."""
    rows = conn.execute(
        "WITH t AS (SELECT c.oid, c.reltoastrelid FROM pg_catalog.pg_class c JOIN "
        "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = ANY(%s) AND "
        "n.nspname = %s), r AS (SELECT oid FROM t UNION SELECT reltoastrelid FROM t WHERE "
        "reltoastrelid <> 0) SELECT DISTINCT l.pid, coalesce(a.backend_type, '') FROM "
        "pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.granted AND l.pid <> pg_catalog.pg_backend_pid() AND (l.relation IN "
        "(SELECT oid FROM r) OR l.relation IN (SELECT indexrelid FROM pg_catalog.pg_index "
        "WHERE indrelid IN (SELECT oid FROM r))) ORDER BY 1",
        (names, schema),
    ).fetchall()
    return [(int(pid), str(kind)) for pid, kind in rows]


def _yielding(conn: psycopg.Connection) -> float:
    """How much longer than a brief try a lock must wait for PostgreSQL to cancel an
    autovacuum that blocks it: ``deadlock_timeout``, and a quarter of a second for the worker
    to stop."""
    row = conn.execute(
        "SELECT setting::float8 FROM pg_catalog.pg_settings WHERE name = 'deadlock_timeout'"
    ).fetchone()  # in milliseconds
    return (float(row[0]) if row else 1000.0) / 1000 + 0.25


def _copy_and_swap(
    conn: psycopg.Connection,
    *,
    schema: str,
    table: str,
    oid: int,
    indexes: list[tuple],
    locking: tuple[int, float, float],
) -> tuple[int, dict[str, Any]]:
    """Steps 3 to 6 of the module docstring in the caller's transaction; returns the tries the
    ACCESS EXCLUSIVE lock took and the table's description (:func:`describe`) under it, which
    the swapped table must match."""
    old = sql.Identifier(schema, table)
    copy_name = f"{table}{COPY_SUFFIX}"
    new = sql.Identifier(schema, copy_name)
    conn.execute(
        sql.SQL("CREATE TABLE {n} (LIKE {t} INCLUDING ALL EXCLUDING INDEXES)").format(n=new, t=old)
    )
    _carry_over(conn, oid, new)
    key = _primary_key(conn, oid)
    log = sql.Identifier(schema, f"{table}{LOG_SUFFIX}")
    # The keys a catch-up takes from the log; temporary tables are the session's own.
    changed = sql.Identifier(CHANGED)
    conn.execute(
        sql.SQL(
            "CREATE TEMPORARY TABLE {c} ON COMMIT DROP AS SELECT {k} FROM {t} WITH NO DATA"
        ).format(c=changed, k=sql.SQL(", ").join(sql.Identifier(c) for c in key), t=old)
    )
    # Every write committed since the log was made is in it: those committed before this
    # statement's snapshot are in the copy too, and copied again at the catch-up (no harm).
    conn.execute(sql.SQL("INSERT INTO {n} SELECT * FROM {t}").format(n=new, t=old))
    _phase(conn, "copied")
    renames = _build_indexes(conn, indexes, schema=schema, table=table, new=new)
    _phase(conn, "built")
    # What was written during the copy and the build, while writes go on; then the rest,
    # written since, under the lock (the rows the log names, reached by their key).
    _catch_up(conn, old=old, new=new, log=log, changed=changed, key=key)
    _phase(conn, "caught_up")
    tries, timeout_s, pause_s = locking

    def meanwhile() -> None:  # between tries of the lock, what was written since, writes going on
        _catch_up(conn, old=old, new=new, log=log, changed=changed, key=key)
        _phase(conn, "waiting")

    attempts = _lock_briefly(
        conn, old, tries=tries, timeout_s=timeout_s, pause_s=pause_s, meanwhile=meanwhile
    )
    _phase(conn, "locked")
    _catch_up(conn, old=old, new=new, log=log, changed=changed, key=key)
    # GRANT and REVOKE take no lock on the table: those committed since the copy's are carried
    # over now, and the swapped table must match the table as it is now, just before the drop.
    _carry_grants(conn, oid, new)
    before = describe(conn, oid)
    # The log's trigger is dropped from the old table (the copy never had it: LIKE copies
    # none), then the log and its function (an unlogged table of a few keys: its unlinking adds
    # 0.26 ms to the commit). The old table is renamed aside, not dropped: a DROP's commit
    # unlinks its files, with this lock held (0.21 s for 528 MB at 100k templates);
    # rewrite_and_swap drops it after the commit. Its indexes are renamed aside too (their
    # constraints with them): index names are the schema's, and the copy's take them.
    conn.execute(sql.SQL("DROP TRIGGER {g} ON {t}").format(g=sql.Identifier(LOG_TRIGGER), t=old))
    conn.execute(sql.SQL("DROP TABLE {g}").format(g=log))
    conn.execute(sql.SQL("DROP FUNCTION {f}()").format(f=log))
    aside = f"{table}{OLD_SUFFIX}"
    conn.execute(sql.SQL("ALTER TABLE {t} RENAME TO {o}").format(t=old, o=sql.Identifier(aside)))
    for i, (name, *_) in enumerate(indexes):
        conn.execute(
            sql.SQL("ALTER INDEX {i} RENAME TO {o}").format(
                i=sql.Identifier(schema, name), o=sql.Identifier(f"{aside}_{i}")
            )
        )
    conn.execute(sql.SQL("ALTER TABLE {n} RENAME TO {t}").format(n=new, t=sql.Identifier(table)))
    for statement in renames:
        conn.execute(statement)
    return attempts, before


def _primary_key(conn: psycopg.Connection, oid: int) -> list[str]:
    """The table's primary key columns (the rows' identity between the table and its copy)."""
    names = [
        r[0]
        for r in conn.execute(
            "SELECT a.attname FROM pg_catalog.pg_index i CROSS JOIN LATERAL unnest(i.indkey) "
            "WITH ORDINALITY AS k(attnum, n) JOIN pg_catalog.pg_attribute a ON a.attrelid = "
            "i.indrelid AND a.attnum = k.attnum WHERE i.indrelid = %s AND i.indisprimary "
            "ORDER BY k.n",
            (oid,),
        ).fetchall()
    ]
    if not names:
        raise SwapRefusedError(MSG_NO_KEY)
    return names


def _catch_up(
    conn: psycopg.Connection,
    *,
    old: sql.Composable,
    new: sql.Composable,
    log: sql.Composable,
    changed: sql.Composable,
    key: list[str],
) -> int:
    """Bring the copy up to what was written to the table since the last catch-up (or the
    copy): enrolments, re-enrolments, another erasure's ``DELETE``; returns the rows changed.

    The keys the log holds are taken from it (deleted, in one statement: a key logged by a
    transaction that commits later stays for the next run), and each row of those keys is
    deleted from the copy (a row deleted or written again: a later erasure's purge, which waits
    for this one, rewrites the copy's files in turn) and copied again as it is now. The rows are
    reached through the primary keys' indexes (nested loops; no scan of the table or the copy):
    the work is the rows written, not the table's size. Run once while writes go on (most of
    what was written during the copy and the index build, the HNSW inserts included), after each
    try of the lock refused, then under the swap's ACCESS EXCLUSIVE lock, where no write is in
    progress and the log holds every one not yet copied: it leaves the copy the same as the
    table. A key copied again before its writer's log entry was taken is copied once more at
    the next run (no harm)."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in key)

    def on(a: str, b: str) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("{a}.{c} = {b}.{c}").format(a=sql.SQL(a), b=sql.SQL(b), c=sql.Identifier(c))
            for c in key
        )

    conn.execute(
        sql.SQL(
            "WITH taken AS (DELETE FROM {g} RETURNING {k}) INSERT INTO {c} SELECT DISTINCT {k} "
            "FROM taken"
        ).format(g=log, k=columns, c=changed)
    )
    rows = int(_one(conn, sql.SQL("SELECT count(*) FROM {c}").format(c=changed)))
    if rows:
        # By key whatever the planner estimates (the copy and the keys have no statistics): a
        # hash or merge join would read the whole table and copy to match a few keys.
        plans = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")
        kept = conn.execute(
            "SELECT " + ", ".join("pg_catalog.current_setting(%s)" for _ in plans), plans
        ).fetchone()
        conn.execute(
            "SELECT " + ", ".join("pg_catalog.set_config(%s, 'off', true)" for _ in plans), plans
        )
        conn.execute(
            sql.SQL("DELETE FROM {n} AS n USING {c} AS c WHERE {m}").format(
                n=new, c=changed, m=on("n", "c")
            )
        )
        conn.execute(
            sql.SQL("INSERT INTO {n} SELECT o.* FROM {t} AS o JOIN {c} AS c ON {m}").format(
                n=new, t=old, c=changed, m=on("o", "c")
            )
        )
        conn.execute(
            "SELECT " + ", ".join("pg_catalog.set_config(%s, %s, true)" for _ in plans),
            [v for pair in zip(plans, kept, strict=True) for v in pair],
        )
        conn.execute(sql.SQL("DELETE FROM {c}").format(c=changed))
    return rows


def _carry_over(conn: psycopg.Connection, oid: int, new: sql.Composable) -> None:
    """What ``LIKE ... INCLUDING ALL`` does not copy: the statistics targets (before any row is
    written), the table's storage options, comment, owner and grants."""
    for name, target in conn.execute(
        "SELECT attname, attstattarget FROM pg_catalog.pg_attribute WHERE attrelid = %s "
        "AND attnum > 0 AND NOT attisdropped AND attstattarget IS NOT NULL",
        (oid,),
    ).fetchall():
        conn.execute(
            sql.SQL("ALTER TABLE {n} ALTER COLUMN {c} SET STATISTICS {v}").format(
                n=new, c=sql.Identifier(name), v=sql.Literal(int(target))
            )
        )
    options, comment, owner = conn.execute(
        "SELECT reloptions, obj_description(oid, 'pg_class'), relowner::regrole::text "
        "FROM pg_catalog.pg_class WHERE oid = %s",
        (oid,),
    ).fetchone()
    if options:
        pairs = [o.split("=", 1) for o in options]
        conn.execute(
            sql.SQL("ALTER TABLE {n} SET ({o})").format(
                n=new,
                o=sql.SQL(", ").join(
                    sql.SQL("{k} = {v}").format(k=sql.SQL(k), v=sql.Literal(v)) for k, v in pairs
                ),
            )
        )
    if comment is not None:
        conn.execute(sql.SQL("COMMENT ON TABLE {n} IS {c}").format(n=new, c=sql.Literal(comment)))
    conn.execute(sql.SQL("ALTER TABLE {n} OWNER TO {o}").format(n=new, o=sql.SQL(owner)))
    _carry_grants(conn, oid, new)


def _carry_grants(conn: psycopg.Connection, oid: int, new: sql.Composable) -> None:
    """Give ``new`` the grants the table ``oid`` holds now (its owner's aside), those given
    before revoked first: ``GRANT`` and ``REVOKE`` take no lock on the table, so one committed
    during the copy is carried over again under the swap's lock."""
    target = _one(conn, "SELECT to_regclass(%s)::oid", (new.as_string(conn),))
    for (grantee,) in conn.execute(
        "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END "
        "FROM pg_catalog.pg_class c, LATERAL pg_catalog.aclexplode(c.relacl) a "
        "WHERE c.oid = %s AND a.grantee <> c.relowner",
        (target,),
    ).fetchall():
        conn.execute(sql.SQL("REVOKE ALL ON {n} FROM {g}").format(n=new, g=sql.SQL(grantee)))
    for grantee, privilege, grantable in conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, "
        "a.privilege_type, a.is_grantable FROM pg_catalog.pg_class c, "
        "LATERAL pg_catalog.aclexplode(c.relacl) a WHERE c.oid = %s AND a.grantee <> c.relowner",
        (oid,),
    ).fetchall():
        conn.execute(
            sql.SQL("GRANT {p} ON {n} TO {g}{w}").format(
                p=sql.SQL(privilege),
                n=new,
                g=sql.SQL(grantee),
                w=sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )


def _build_indexes(
    conn: psycopg.Connection,
    indexes: list[tuple],
    *,
    schema: str,
    table: str,
    new: sql.Composable,
) -> list[sql.Composable]:
    """Build on the copy each index of the table (``indexes``: name, definition, unique,
    constraint, its kind, the definition's head up to ``USING``) under a name of its own;
    returns the statements that give the indexes and constraints the old names once the old
    table is dropped."""
    renames: list[sql.Composable] = []
    for i, (name, definition, unique, constraint, kind, head) in enumerate(indexes):
        if not definition.startswith(head):
            raise SwapRefusedError(MSG_INDEX)
        temporary = sql.Identifier(f"{table}{COPY_SUFFIX}_{i}")
        conn.execute(
            sql.SQL("CREATE {u}INDEX {i} ON {n} USING {rest}").format(
                u=sql.SQL("UNIQUE " if unique else ""),
                i=temporary,
                n=new,
                rest=sql.SQL(definition[len(head) :]),
            )
        )
        target = sql.Identifier(schema, f"{table}{COPY_SUFFIX}_{i}")
        if constraint is None:
            renames.append(
                sql.SQL("ALTER INDEX {i} RENAME TO {o}").format(i=target, o=sql.Identifier(name))
            )
            continue
        conn.execute(
            sql.SQL("ALTER TABLE {n} ADD CONSTRAINT {k} {c} USING INDEX {i}").format(
                n=new,
                k=temporary,
                c=sql.SQL("PRIMARY KEY" if kind == "p" else "UNIQUE"),
                i=temporary,
            )
        )
        renames.append(
            sql.SQL("ALTER TABLE {t} RENAME CONSTRAINT {k} TO {o}").format(
                t=sql.Identifier(schema, table), k=temporary, o=sql.Identifier(constraint)
            )
        )
        if constraint != name:  # the index keeps its own name apart from the constraint's
            renames.append(
                sql.SQL("ALTER INDEX {i} RENAME TO {o}").format(
                    i=sql.Identifier(schema, constraint), o=sql.Identifier(name)
                )
            )
    return renames
