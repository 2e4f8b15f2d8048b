"""The shared gallery in PostgreSQL + pgvector (``serving.gallery.backend: pgvector``).

Several ``visage serve`` replicas search one gallery held in PostgreSQL instead of each holding
the templates in memory. The public API is :class:`~visage_ml.serving.gallery.Gallery`'s
(search, verify, enrol, erase, status, template, stats), so the HTTP app and the erasure use
either backend unchanged.

What is where
-------------
Table ``<table>`` (one row per subject): ``pid``, ``model_version``, ``embedding`` (pgvector
``vector(D)``, the unit template as float32, **plaintext**: PostgreSQL must compute distances on
it), ``cluster`` (the score-calibration cluster of the template), ``sealed`` (the template file
of the in-memory backend byte for byte: AES-256-GCM under the subject's own data key, pid and
model version as associated data), ``template_sha256`` (of ``sealed``; the ledger's
``gallery.enrolled`` event records it) and ``n_images``.

- Sealed: the ``sealed`` column. Its data key lives in the project's key ring
  (``gallery/keys/<pid>.key``, wrapped by the master key), as for the in-memory gallery, so
  destroying that key crypto-shreds every copy of the column (backups, replicas, WAL archives).
- Not sealed: the ``embedding`` column. The in-memory backend holds the plaintext template only
  in RAM; here it is at rest in the table's heap files, its HNSW index (when enabled), the WAL,
  and in any base backup, WAL archive or streaming replica of the cluster. Only physical removal
  protects it: an erasure deletes the row, then the table, its TOAST table and its indexes are
  rewritten into new files (copy and swap, :mod:`visage_ml.serving.pg_swap`),
  ``pg_switch_wal()`` closes the WAL segment and ``CHECKPOINT`` lets the server remove the old
  segments (:meth:`PgGallery.purge_physically`). WAL segments are only deleted (rather than
  renamed for reuse with the old bytes inside) with ``wal_recycle = off``, and are kept longer
  by ``wal_keep_size``, replication slots, standbys and archiving: :func:`wal_retention` names
  what would keep them, and the erasure certificate says so.

Whoever may write to the table without holding the project's keys can change ``embedding`` and
``cluster`` (put an intruder's own vector in a subject's row, swap two subjects'). No answer rests
on them alone: before a search returns a row, or a verification scores it, the row's
``embedding`` must be, bit for bit, the template its ``sealed`` column opens to under the
subject's key (whose header names the subject), and under a calibration by clusters its
``cluster`` must be that template's (:meth:`PgGallery._unbound_of`); and the sealed column must
be the one the ledger's last ``gallery.enrolled`` event of the subject records (a subject's own
older sealed template put back with its embedding passes the first comparison, not this one).
Only the rows about to be returned are opened, ``top_k`` at a time, and under AS-norm every row
of the shortlist; a row whose embedding is the template this process already opened from the
sealed value the ledger records is not read again (digests only are cached). A row that fails is
left out as if not enrolled, logged by pid once and counted as ``tampered`` in
:meth:`PgGallery.stats` (a row behind the ledger is logged apart, not counted: it may be an
enrolment about to commit); enrolling the subject again rewrites it.

A refused row does not keep its place in a candidate list either (the top ``top_k``, a
cluster's top ``top_k``, the AS-norm shortlist), or a writer could plant rows near a face to push
its mate out of the answer: the candidates are fetched again without the refused rows (twice as
many each round), and rows this process has refused are left out of its statements from the
start until the ledger names their subject again (an enrolment by any replica). An honest
gallery runs the same one statement per probe (per cluster) as before.
``visage gallery verify`` (:meth:`PgGallery.check_templates`) opens every row, whatever the
searches touched, and compares the ledger's hash too.

Anchor templates
----------------
As in the in-memory backend, an operator's re-enrolment must match both the stored template and
the subject's anchor template (:meth:`Gallery.anchor`), which only a first enrolment, a dpo key,
the gallery stage, ``visage gallery rebuild`` or a rectification moves (``keep_anchor``). The
anchor is the same file as the in-memory backend's, ``gallery/anchors/<pid[1:3]>/<pid>.anc``,
sealed under the subject's gallery key (``ANCHOR_MAGIC``), not a column of the table:

- the key ring it is sealed under is already a folder of the project that every replica shares
  (enrolment and erasure need it), so a file there is seen by every replica, as the key is;
- a role that may write to the table but holds none of the project's keys can neither put an
  older anchor of the subject back nor delete it (which a column would allow); the anchor is out
  of the database's reach, which is what it is for;
- the erasure needs nothing new: the ``gallery`` step already plans, removes (through
  :meth:`PgGallery.erase`), verifies and certifies ``gallery/anchors`` with the key, and
  destroying the key crypto-shreds any copy of the file; no ``VACUUM FULL`` is involved.

The price: the file is not written in the row's transaction. :meth:`PgGallery.enroll_many`
writes it before the ledger append and the commit and puts the previous bytes back when either
fails; a process killed in between leaves the anchor of an enrolment that only a privileged path
(never an operator) was making. :meth:`PgGallery.erase` removes the anchor after destroying the
key; an anchor whose key is gone (an erasure killed in between) is removed when a gallery is
opened (:meth:`PgGallery.reload`) and by :meth:`PgGallery.purge_without_basis`.

As in the in-memory backend, the ledger records each anchor's SHA-256 as it is set, an anchor
file that is not the recorded one (an older one put back) is never compared with, and an
operator's enrolment is written only over the row and anchor it was checked against
(:meth:`Gallery.reference`, ``expect``; the row is read ``FOR UPDATE`` in the transaction of the
write, the anchor under the gallery's file lock).

Consent at query time
---------------------
Table ``<table>_revoked`` lists subjects that must not be returned (identification consent
withdrawn, restricted, objecting, erased, or a template the ledger does not vouch for). Every
search and verification excludes them in the same SQL statement, so a replica never returns a
revoked subject, whatever the state of its notifications. Whichever replica (or CLI) reads a
narrowing ledger event first writes the row; an erasure writes it in the same transaction as the
``DELETE``.

The table is derived data: the registry (the signed ledger's fold) decides, and a role that may
write the table without the project's keys must not. So:

- an entry the registry does not back (a subject it allows, beside the row it vouches for:
  written into the table, ``erased`` or any other reason) would hide a consenting subject from
  every search and lower ``N`` (a lower 1:N threshold). ``N`` never subtracts it (the count of
  a moved change counter checks each entry beside a row with the registry), and it is removed,
  for every replica, by the replica that counted it and by every reload (logged by pid, counted
  as ``revoked_removed`` in :meth:`PgGallery.stats`). Writing it moves the counter (see Change
  propagation), and the search or verification that finds it removes it before answering, in a
  new snapshot: the subject is found by the first call after it. An ``erased`` entry without a
  row is kept: it hides nobody, and an erasure's ledger entries may follow its commit. An entry
  rewritten since it was read is never removed (compared by ``xmin``), so no erasure is undone;
- an entry deleted from the table (a withdrawn subject's) does not bring the subject back: each
  row about to be returned or verified is also checked against the registry (a field read per
  candidate, no statement), the row refused, and the entry written again (counted as
  ``revoked_restored``); every reload re-adds missing entries too.

``visage gallery verify`` names both by pid (:meth:`PgGallery.check_templates`).

Change propagation
------------------
Every change bumps ``<table>_state.version`` and sends ``NOTIFY`` on the gallery's channel in the
same transaction. Whoever writes ``<table>_revoked`` moves the counter too, keys or none: a
trigger on it (deferred to the commit, after the writer's own bump, so one move per
transaction and the counter's row locked last, as before) bumps and notifies, and a trigger on
``<table>_state`` makes every update of the counter a move by one and refuses to delete its row,
so a writer can neither skip the move nor set the counter back. Without them an entry planted
with the counter left alone would hide a consenting subject from running replicas until the next
change. :func:`ensure_schema` creates them with the tables and adds them to tables of an older
version (logged); one missing, disabled or altered (which takes the tables' owner) is created
again at the next opening (a server start, any ``visage gallery`` command), and ``visage gallery
verify`` and ``stats`` (``change_signal``) report it, or report it missing when this role may not
create it. Each replica listens on a connection of its own and, as a fallback, polls the
counter every ``poll_interval_s``; on a change it re-counts the searchable templates, the ``N``
of the 1:N threshold (:mod:`visage_ml.serving.operating_point`), less the revoked entries beside
rows that the registry backs (checked by the next call that holds the gallery's lock when there
are any). A search also reads the counter
in its own snapshot and re-counts at once when it moved, so the threshold always uses the shared
gallery's size at that snapshot.

``N`` counts rows (of this embedder, not revoked); a count that opened every row would cost a
decryption per subject. Rows the ledger does not vouch for (a pid no subject has, a
``template_sha256`` the ledger does not record for the subject) are revoked, for every replica,
by every reload: a server's start and any ``visage gallery`` command, whose ``stats`` then show
them as ``unrecorded``. Until then a writer who plants rows and moves the counter raises ``N``
on running replicas: the threshold gets stricter (fewer matches, never more). Rows checked
``tampered`` stay in ``N`` as well, and show in ``stats``.

Search
------
Exact by default: a sequential scan computing every inner product (the templates are unit
vectors, so the inner product is the cosine), index scans disabled for the statement. With
``hnsw: true`` an HNSW index (``vector_ip_ops``) answers with ``hnsw.ef_search`` candidates and
``hnsw.iterative_scan = strict_order`` (so the revoked filter cannot starve the result). With a
score calibration by clusters (FSN, FairCal), the top ``top_k`` of each calibration cluster are
fetched and calibrated in Python: exact, because every calibration map is monotone in the raw
score for a given pair of clusters (FSN shifts, FairCal beta maps are fitted monotone). AS-norm
normalises each comparison by the template's own cohort statistics, which no SQL ordering knows:
the database returns a shortlist by *raw cosine* of ``max(top_k, COHORT_SHORTLIST)`` (200)
templates with their embeddings, and Python reranks it by the normalised score (each
candidate's cohort statistics computed from its embedding, the probe's once per query). A
template outside the raw-cosine shortlist is not found even if its normalised score would pass;
with the demo's embedder the normalised top candidates lie well inside the top 200 raw ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import numpy as np
import psycopg
from cryptography.exceptions import InvalidTag
from pgvector.psycopg import register_vector
from psycopg import sql

from visage_ml.config import ProjectPaths, load_params
from visage_ml.io import file_lock, secure_unlink, sha256_file
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.datakeys import wrapped_keys_exist
from visage_ml.privacy.keys import PID_RE, check_pid, load_master_key
from visage_ml.privacy.registry import NO_BASIS_REASONS
from visage_ml.privacy.sealed import KeyDestroyedError, open_sealed
from visage_ml.serving import pg_swap
from visage_ml.serving.gallery import (
    ANCHOR_SUFFIX,
    ANCHORS_DIR,
    ERASURE_REASON,
    MAGIC,
    MSG_REBUILD,
    MSG_TAMPERED,
    PURPOSE,
    Enrolment,
    EnrolmentRefusedError,
    Gallery,
    GalleryError,
    GalleryUnavailableError,
    GalleryVersionError,
    Match,
    NotEnrolledError,
    Reference,
    Removal,
    TemplateFileError,
    Threshold,
    _rel,
    anchored_event,
    enrolled_event,
    listed_pids,
    meta_for,
    read_meta,
    served_threshold,
    template_path,
)
from visage_ml.serving.gallery_check import (
    CLUSTER,
    EMBEDDING,
    ENROLLED_NEEDLE,
    NO_KEY,
    REVOKED_MISSING,
    REVOKED_UNBACKED,
    SEALED,
    TRIGGER_MISSING,
    TRIGGER_RESTORED,
    UNRECORDED,
    TemplateCheck,
    enrolment_history,
    ledger_time,
    ledger_verdict,
)
from visage_ml.serving.index import normalize_queries, template_of
from visage_ml.stack import stores
from visage_ml.stack.manager import Stack
from visage_ml.stack.proc import StackError

logger = logging.getLogger(__name__)
T = TypeVar("T")

BACKEND = "pgvector"
DEFAULT_TABLE = "visage_gallery"
# Artefact names of an erasure (the suffix tells the certificate how each was erased:
# ``.tpl`` sealed under the subject's key, ``.embedding`` plaintext physically removed).
SEALED_SUFFIX = ".tpl"
EMBEDDING_SUFFIX = ".embedding"
REVOKED_ERASED = "erased"
REVOKED_NO_CONSENT = "not_allowed"
REVOKED_UNRECORDED = "unrecorded"
DEFAULT_POLL_S = 0.25
DEFAULT_PURGE_MEMORY_MB = 1024
# AS-norm: templates the SQL shortlist (by raw cosine) holds before the normalised rerank.
COHORT_SHORTLIST = 200
# Bindings checked by this process, ``pid -> (SHA-256 of the sealed column as hex, SHA-256 of the
# template it opens to)``: digests only, no template. Cleared when it holds this many subjects.
BOUND_CACHE_MAX = 1 << 20
# Why a row is not used (:meth:`PgGallery._binding`): the first three count as tampered, a row
# behind the ledger is reported apart (it may be an enrolment not committed yet).
UNBOUND_EMBEDDING = "embedding"
UNBOUND_CLUSTER = "cluster"
UNBOUND_SEALED = "sealed"
UNBOUND_LEDGER = "ledger"
UNBOUND_ERASED = "erased"
_TABLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def _calibration_key(cal: Any) -> str:
    """What the state table records of the calibration the ``cluster`` column was computed for."""
    if cal is None:
        return "none"
    if cal.uses_cohort:
        # No stored cluster depends on a cohort method: every row keeps cluster 0.
        return "cohort"
    return hashlib.sha256(np.ascontiguousarray(cal.centroids, dtype="<f8").tobytes()).hexdigest()


def _digest(vec: np.ndarray) -> bytes:
    """SHA-256 of a template's float32 bits (how bindings are compared)."""
    return hashlib.sha256(np.ascontiguousarray(vec, dtype="<f4").tobytes()).digest()


MSG_TABLE = "serving.gallery.table must be a lower-case SQL name of at most 41 characters"
MSG_CONNECT = (
    "cannot connect to the pgvector gallery's PostgreSQL ({error}); start it with `visage stack "
    "up` or set serving.gallery.dsn / $VISAGE_GALLERY_DSN to a reachable server"
)
MSG_LOST = (
    "the pgvector gallery's PostgreSQL dropped the connection (a restart or a failover); the "
    "request was not completed: retry it (repeating it is safe)"
)
MSG_REWRITING = (
    "the pgvector gallery's table is being rewritten (an erasure's purge) or held by "
    "another long operation, and did not answer within serving.gallery.lock_timeout_s; the "
    "request was not completed: retry it (repeating it is safe)"
)
MSG_NO_EXTENSION = (
    "the pgvector extension is not installed in the gallery's database; run `CREATE EXTENSION "
    "vector` there as a superuser (`visage stack up` does it)"
)
MSG_DIM = (
    "the pgvector gallery table {table} holds {found}-value templates but the serving embedder "
    "makes {expected}; use another serving.gallery.table for this embedder"
)
MSG_MODEL = (
    "the pgvector gallery {table} was built for embedder {found!r} but this server runs "
    "{expected!r}; re-enrol the gallery for this embedder (`visage gallery rebuild`)"
)


MSG_UNBOUND = (
    "gallery row {name} does not rest on the subject's sealed template (its {column} column was "
    "written without the project's keys); it is not returned or verified. Find out who wrote to "
    "the table, then enrol the subject again (`visage gallery rebuild` re-enrols everyone)"
)
MSG_BEHIND = (
    "gallery row {name} holds a sealed template other than the one the ledger last recorded for "
    "the subject (an older copy put back, or an enrolment not committed yet); it is not returned "
    "or verified. `visage gallery verify` tells which"
)


MSG_REVOKED_UNBACKED = (
    "gallery {name}: a revocation the registry does not back was removed (written into the "
    "table without the project's keys, or a restored consent no process had read); it hid a "
    "consenting subject and lowered the 1:N gallery size. `visage gallery verify` names it"
)
MSG_REVOKED_MISSING = (
    "gallery {name}: the registry forbids processing the subject but its row was not revoked "
    "(the entry deleted from the table, or a withdrawal no process had read); revoked again. "
    "`visage gallery verify` names it"
)


MSG_NO_DSN = (
    "serving.gallery.backend is pgvector but no PostgreSQL is named: set serving.gallery.dsn "
    "or $VISAGE_GALLERY_DSN (a libpq URI), or start the stack (`visage stack up`)"
)
DSN_ENV = "VISAGE_GALLERY_DSN"


def dsn_candidates(
    params: Any, environ: Mapping[str, str], *, paths: ProjectPaths | None = None
) -> Iterator[str]:
    """The connection strings the project holds for its gallery, in the order they count:
    ``serving.gallery.dsn``, ``$VISAGE_GALLERY_DSN``, the PostgreSQL of the project's stack
    (``visage stack up``: ``stack`` in params and ``secrets/stack.json``), read only when asked
    for (it raises :class:`StackError` when the stack's settings do not name one)."""
    yield from (d for d in (params.serving.gallery.dsn, environ.get(DSN_ENV, "")) if d)
    if paths is not None and paths.params.is_file() and paths.stack_secrets.is_file():
        yield Stack.of(paths).postgres_dsn()


def resolve_dsn(
    params: Any, environ: Mapping[str, str], *, paths: ProjectPaths | None = None
) -> str:
    """The gallery's connection string: the first of :func:`dsn_candidates`.

    Raises
    ------
    GalleryError
        None is set.
    """
    try:
        dsn = next(dsn_candidates(params, environ, paths=paths), "")
    except StackError as exc:
        raise GalleryError(f"{MSG_NO_DSN} ({exc})") from None
    if not dsn:
        raise GalleryError(MSG_NO_DSN)
    return dsn


def check_table(name: str) -> str:
    """``name`` if it is a safe, lower-case SQL identifier (else :class:`ValueError`)."""
    if not _TABLE_RE.match(name or ""):
        raise ValueError(MSG_TABLE)
    return name


@dataclass(frozen=True)
class PgOptions:
    """How the gallery uses PostgreSQL (``serving.gallery`` in ``params.yaml``).

    Attributes
    ----------
    dsn
        libpq connection string (its password may also come from ``PGPASSWORD``/``.pgpass``).
    table
        Name of the gallery table (``<table>_revoked`` and ``<table>_state`` beside it).
    hnsw
        Search through an HNSW index (approximate) instead of an exact scan.
    ef_search, hnsw_m, ef_construction
        HNSW query breadth, graph degree and build breadth.
    poll_interval_s
        Fallback poll of the change counter, beside ``LISTEN``.
    listen
        Run the listener thread (off for one-shot CLI use).
    lock_timeout_s
        How long a call waits for a lock on the tables before it raises
        :class:`GalleryUnavailableError` (0: as long as it takes). An erasure's swap holds the
        table briefly at its end, and a ``VACUUM FULL`` everything for the whole rewrite;
        ``visage serve`` sets it so that requests answer 503 to retry instead of hanging.
        Opening the gallery, setting its calibration and :meth:`PgGallery.erase` wait.
    purge_memory_mb
        The most ``maintenance_work_mem`` :func:`purge_physically` gives the HNSW rebuild.
    """

    dsn: str
    table: str = DEFAULT_TABLE
    hnsw: bool = False
    ef_search: int = 400
    hnsw_m: int = 16
    ef_construction: int = 64
    poll_interval_s: float = DEFAULT_POLL_S
    listen: bool = True
    lock_timeout_s: float = 0.0
    purge_memory_mb: int = DEFAULT_PURGE_MEMORY_MB

    @classmethod
    def from_params(
        cls, params: Any, *, dsn: str, listen: bool = True, serving: bool = True
    ) -> PgOptions:
        """The options of ``params.serving.gallery`` with connection string ``dsn``; unless
        ``serving`` (commands, rights, the gallery stage), calls wait for locks as long as it
        takes rather than ``lock_timeout_s``."""
        g = params.serving.gallery
        return cls(
            dsn=dsn,
            table=check_table(g.table),
            hnsw=bool(g.hnsw),
            ef_search=int(g.ef_search),
            hnsw_m=int(g.hnsw_m),
            ef_construction=int(g.ef_construction),
            poll_interval_s=float(g.poll_interval_s),
            listen=listen,
            lock_timeout_s=float(g.lock_timeout_s) if serving else 0.0,
            purge_memory_mb=int(g.purge_memory_mb),
        )


@dataclass(frozen=True)
class Names:
    """The SQL names of one gallery."""

    table: str

    @property
    def t(self) -> sql.Identifier:
        return sql.Identifier(self.table)

    @property
    def revoked(self) -> sql.Identifier:
        return sql.Identifier(f"{self.table}_revoked")

    @property
    def state(self) -> sql.Identifier:
        return sql.Identifier(f"{self.table}_state")

    @property
    def index(self) -> sql.Identifier:
        return sql.Identifier(f"{self.table}_hnsw")

    @property
    def channel(self) -> str:
        return f"{self.table}_changed"


def connect(
    dsn: str, *, autocommit: bool = False, lock_timeout_s: float = 0.0
) -> psycopg.Connection:
    """A connection with the ``vector`` type registered (numpy arrays in and out); its
    statements wait at most ``lock_timeout_s`` for a lock when it is over 0
    (:func:`set_lock_timeout`)."""
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise GalleryUnavailableError(MSG_CONNECT.format(error=type(exc).__name__)) from None
    try:
        register_vector(conn)
        keep_alive(conn)
        if lock_timeout_s > 0:
            set_lock_timeout(conn, lock_timeout_s)
    except psycopg.ProgrammingError:
        conn.close()
        raise GalleryError(MSG_NO_EXTENSION) from None
    return conn


# How soon the server gives up on a client gone silent over TCP (a replica's host frozen or cut
# off): the locks its session holds (a row's, the enrolment's advisory lock) are released after
# about idle + interval x count seconds, not after the system's two hours.
KEEPALIVE = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}


def keep_alive(conn: psycopg.Connection) -> None:
    """Set the session's server-side TCP keepalives (:data:`KEEPALIVE`; a Unix socket ignores
    them); call outside a transaction."""
    for name, value in KEEPALIVE.items():
        conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
    if not conn.autocommit:
        conn.commit()


def set_lock_timeout(conn: psycopg.Connection, seconds: float) -> None:
    """Make the session's statements wait at most ``seconds`` for a lock (0: as long as it
    takes); call outside a transaction. PostgreSQL then fails the statement with
    ``LockNotAvailable``."""
    # Session-wide (not LOCAL): it lasts for the connection's life, committed at once.
    conn.execute(
        "SELECT pg_catalog.set_config('lock_timeout', %s, false)",
        (f"{max(0, round(seconds * 1000))}ms",),
    )
    if not conn.autocommit:
        conn.commit()


def ensure_schema(conn: psycopg.Connection, names: Names, dim: int) -> tuple[str, list[str]]:
    """Create the gallery's tables and the triggers on them (idempotent); refuse a table of
    another dimension.

    Returns
    -------
    tuple[str, list[str]]
        What became of the change-counter triggers, and which were wrong (:func:`ensure_signals`).
    """
    n = names
    with conn.transaction():
        # One creator at a time across replicas.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (n.table,))
        new = conn.execute("SELECT to_regclass(%s)", (f"{n.table}_state",)).fetchone()
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {t} (pid text PRIMARY KEY, model_version text NOT NULL,"
                " embedding vector({dim}) NOT NULL, cluster integer NOT NULL DEFAULT 0,"
                " sealed bytea NOT NULL, template_sha256 text NOT NULL,"
                " n_images integer NOT NULL, enrolled timestamptz NOT NULL DEFAULT now())"
            ).format(t=n.t, dim=sql.Literal(int(dim)))
        )
        # Vectors inline in the heap (a scan reads no TOAST); the ciphertext does not compress.
        conn.execute(
            sql.SQL("ALTER TABLE {t} ALTER COLUMN embedding SET STORAGE PLAIN").format(t=n.t)
        )
        conn.execute(
            sql.SQL("ALTER TABLE {t} ALTER COLUMN sealed SET STORAGE EXTERNAL").format(t=n.t)
        )
        no_statistics(conn, n)
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {r} (pid text PRIMARY KEY, reason text NOT NULL,"
                " at timestamptz NOT NULL DEFAULT now())"
            ).format(r=n.revoked)
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {s} (id integer PRIMARY KEY CHECK (id = 1),"
                " version bigint NOT NULL, model_version text, calibration text)"
            ).format(s=n.state)
        )
        conn.execute(
            sql.SQL("INSERT INTO {s} (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING").format(
                s=n.state
            )
        )
        signal = ensure_signals(conn, n)
        # The change log of an erasure's purge that died (its trigger fires on every write):
        # removed unless a purge is running, or left for the next purge where the table is
        # busy or this role may not (logged).
        pg_swap.drop_left_log(conn, n.table, timeout_s=PURGE_LOCK_TIMEOUT_S)
        if signal[0] == SIGNAL_ADDED and (new is None or new[0] is None):
            signal = (SIGNAL_OK, [])  # created with the tables: no older version involved
        row = conn.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = 'embedding'",
            (n.table,),
        ).fetchone()
    if row is not None and int(row[0]) != int(dim):
        raise GalleryVersionError(MSG_DIM.format(table=n.table, found=row[0], expected=dim))
    return signal


def reset_table(dsn: str, *, table: str = DEFAULT_TABLE) -> None:
    """Drop the gallery's tables, for a rebuild with another embedder (its templates and
    their dimension no longer apply). Replicas see the change counter gone and the tables
    re-created by the rebuild; the revocations are re-derived from the ledger on load."""
    names = Names(check_table(table))
    with connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (names.table,))
        for ident in (names.t, names.revoked, names.state):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=ident))
        # The tables' triggers went with them; their functions would read as a trigger
        # dropped by hand (``restored``) when the rebuild creates the tables again.
        for fn in ("_signal", "_counter"):
            conn.execute(
                sql.SQL("DROP FUNCTION IF EXISTS {f}()").format(
                    f=sql.Identifier(f"{names.table}{fn}")
                )
            )
    logger.info("gallery table %s dropped for a rebuild with another embedder", names.table)


def ensure_hnsw(
    conn: psycopg.Connection, names: Names, *, m: int = 16, ef_construction: int = 64
) -> None:
    """Build the HNSW index (inner product) unless it exists."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (names.table,))
        conn.execute(
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (embedding vector_ip_ops) "
                "WITH (m = {m}, ef_construction = {ef})"
            ).format(
                i=names.index,
                t=names.t,
                m=sql.Literal(int(m)),
                ef=sql.Literal(int(ef_construction)),
            )
        )


def wal_retention(conn: psycopg.Connection) -> list[str]:
    """Server settings under which old WAL segments (with old row images) stay on disk.

    Empty when ``pg_switch_wal()`` + ``CHECKPOINT`` removes every segment written before them:
    ``wal_recycle`` off (a recycled segment is renamed and keeps its old bytes until
    overwritten), ``wal_keep_size`` 0, no archiving, no replication slot, no standby streaming
    from the server (one without a slot holds its own copy of the tables and of the WAL), and
    the role may call ``pg_switch_wal()`` and ``CHECKPOINT``.
    """
    out: list[str] = []

    def setting(name: str) -> str:
        row = conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()
        return str(row[0]) if row and row[0] is not None else ""

    if setting("wal_recycle") != "off":
        out.append("wal_recycle is on: recycled WAL segments keep old bytes until overwritten")
    if setting("wal_keep_size") not in ("0", "0MB", "0kB"):
        out.append(f"wal_keep_size = {setting('wal_keep_size')} keeps old WAL segments")
    if setting("archive_mode") != "off":
        out.append("archive_mode is on: archived WAL segments are outside this server's reach")
    slots = conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()
    if slots and int(slots[0]):
        out.append(f"{slots[0]} replication slot(s) retain WAL and feed copies elsewhere")
    # Every role sees one row per WAL sender (the details only with pg_read_all_stats).
    senders = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
    if senders and int(senders[0]):
        out.append(
            f"{senders[0]} standby(s) stream from this server (pg_stat_replication) and keep "
            "their own copy of the tables and of the WAL"
        )
    return out


@dataclass(frozen=True)
class PurgeReport:
    """What :func:`purge_tables` did (no personal data)."""

    vacuum_full: bool
    wal_switched_from: str | None
    checkpoint: bool
    wal_retention: list[str]
    seconds: float
    # Why the planner statistics of the tables could not be cleared (empty: they were).
    statistics: list[str] = field(default_factory=list)
    # The most tries any of the purge's locks took (:func:`purge_tables`): a table's VACUUM
    # FULL, or the swap's (its change log's trigger, its ACCESS EXCLUSIVE, the old table's drop).
    lock_attempts: int = 0
    # What the server said while purging (NOTICE, WARNING: severity and message only), e.g.
    # pgvector's "hnsw graph no longer fits into maintenance_work_mem".
    server_messages: list[str] = field(default_factory=list)
    # The rebuild's maintenance_work_mem (MB) when :func:`purge_physically` set it.
    maintenance_work_mem_mb: int | None = None
    # The gallery table was rewritten by copy and swap (serving read on), not VACUUM FULL;
    # ``vacuum_full`` says that every table was rewritten into new files either way.
    swapped: bool = False
    # Why it was VACUUM FULLed instead (what the swap cannot carry over; no personal data).
    swap_refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "vacuum_full": self.vacuum_full,
            "wal_switched_from": self.wal_switched_from,
            "checkpoint": self.checkpoint,
            "wal_retention": list(self.wal_retention),
            "wal_removed": self.checkpoint and not self.wal_retention,
            "statistics_cleared": not self.statistics,
            "statistics": list(self.statistics),
            "seconds": round(self.seconds, 3),
            "lock_attempts": self.lock_attempts,
            "server_messages": list(self.server_messages),
            "maintenance_work_mem_mb": self.maintenance_work_mem_mb,
            "rewrite": "swap" if self.swapped else "vacuum_full",
            "swap_refused": self.swap_refused,
        }

    def notes(self) -> list[str]:
        """Why the purge may have left old bytes on the server (empty: it left none)."""
        return [*self.wal_retention, *self.statistics]


def no_statistics(conn: psycopg.Connection, names: Names) -> None:
    """Keep ANALYZE from sampling the gallery table: its statistics (``pg_statistic``) would
    hold sample values of each column, the plaintext search vectors and the pids among them,
    where no row deletion reaches."""
    # Only the columns not set yet: this runs at every gallery open, and an ALTER rewrites the
    # catalog row even when nothing changes.
    cols = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped AND attstattarget IS DISTINCT FROM 0",
        (names.table,),
    ).fetchall()
    for (col,) in cols:
        conn.execute(
            sql.SQL("ALTER TABLE {t} ALTER COLUMN {c} SET STATISTICS 0").format(
                t=names.t, c=sql.Identifier(col)
            )
        )


# pg_clear_attribute_stats(), which a role with MAINTAIN on a table may call, is PostgreSQL 18's.
CLEAR_STATS_VERSION = 180000


def _is_superuser(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def _privileged(conn: psycopg.Connection, relation: str, privilege: str) -> bool:
    row = conn.execute("SELECT has_table_privilege(%s, %s)", (relation, privilege)).fetchone()
    return bool(row and row[0])


def clear_statistics(conn: psycopg.Connection, tables: Sequence[str]) -> list[str]:
    """Remove the planner statistics of ``tables`` and compact ``pg_statistic`` (and its TOAST
    table), so that the sample values ANALYZE copied there leave the files too. Returns why it
    could not (the notes for the certificate; empty: done).

    Only a superuser may DELETE from ``pg_statistic``; another role clears them with
    ``pg_clear_attribute_stats()`` (PostgreSQL 18, MAINTAIN on the table: its owner or
    ``pg_maintain``) and compacts ``pg_statistic`` with MAINTAIN on it (``pg_maintain``).
    Re-analysing would not do: a column kept out of the statistics (``SET STATISTICS 0``) keeps
    its old row, and the others' new rows would hold other people's values.
    """
    if not tables:
        return []
    named = ", ".join(tables)
    if _is_superuser(conn):
        deleted = 0
        for table in tables:
            deleted += conn.execute(
                "DELETE FROM pg_catalog.pg_statistic WHERE starelid = %s::regclass", (table,)
            ).rowcount
        if deleted:  # none kept (the columns keep no statistics): nothing to compact
            conn.execute("VACUUM FULL pg_catalog.pg_statistic")
        return []
    if conn.info.server_version < CLEAR_STATS_VERSION or not all(
        _privileged(conn, t, "MAINTAIN") for t in tables
    ):
        return [MSG_STATS_ROLE.format(tables=named)]
    kept = False
    for table in tables:
        # pg_stats shows a column's rows only to a role that may read it: otherwise assume some.
        row = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_stats s JOIN pg_catalog.pg_class c "
            "ON c.relname = s.tablename JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace AND n.nspname = s.schemaname WHERE c.oid = %s::regclass",
            (table,),
        ).fetchone()
        kept = kept or bool(row and row[0]) or not _privileged(conn, table, "SELECT")
        conn.execute(
            "SELECT pg_catalog.pg_clear_attribute_stats(n.nspname::text, c.relname::text, "
            "a.attname::text, i.inherited) FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
            "CROSS JOIN (VALUES (false), (true)) AS i(inherited) "
            "WHERE c.oid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            (table,),
        )
    if not kept:
        return []
    # VACUUM skips a relation the role may not vacuum with a mere warning: ask first.
    if not _privileged(conn, "pg_catalog.pg_statistic", "MAINTAIN"):
        return [MSG_STATS_FILES.format(tables=named)]
    conn.execute("VACUUM FULL pg_catalog.pg_statistic")
    return []


# The longest pause between a lost listener's reconnection attempts.
LISTEN_BACKOFF_MAX_S = 30.0
MSG_STATS_ROLE = (
    "the planner statistics (pg_statistic) of {tables} could not be cleared: the role is not a "
    "superuser and, on PostgreSQL 18 or later, lacks MAINTAIN on the table; older sample values "
    "of the table may stay there (run the erasure as a superuser, or as the table's owner with "
    "pg_maintain on PostgreSQL 18 or later: docs/deploy.md)"
)
MSG_STATS_FILES = (
    "the planner statistics (pg_statistic) of {tables} were cleared but pg_statistic could not "
    "be compacted: the role lacks MAINTAIN on it (grant pg_maintain); older sample values of the "
    "table may stay in its files"
)
MSG_SWAP_REFUSED = (
    "gallery table {table} rewritten by VACUUM FULL, serving held for the rewrite, not by copy "
    "and swap: {why}"
)
MSG_NO_VACUUM = (
    "the role may not VACUUM FULL {table} (PostgreSQL would skip it with a warning and leave the "
    "deleted rows on disk): run the erasure as the table's owner, a superuser or a member of "
    "pg_maintain (docs/deploy.md)"
)


# VACUUM FULL asks for its ACCESS EXCLUSIVE lock this long at a time, this many times with a
# pause between, before it waits as long as it takes (the erasure must complete). A VACUUM
# waiting for its lock makes every later search wait behind it: a long transaction reading the
# table would otherwise hold serving up for its whole length, not only for the rewrite.
PURGE_LOCK_TIMEOUT_S = 0.5
PURGE_LOCK_TRIES = 10
PURGE_LOCK_PAUSE_S = 1.0
# Server messages a purge report keeps (each cut to this many characters).
SERVER_MESSAGES_MAX = 20
SERVER_MESSAGE_CHARS = 300
# The HNSW graph in memory against the index's size on disk: each neighbour is a 16-byte
# pointer and distance in memory against a 6-byte TID on disk, so at small dimensions the
# graph is up to about twice the index (512-d: about the same).
HNSW_MEMORY_HEADROOM = 2.0


class PurgeRefusedError(RuntimeError):
    """The role cannot purge a table it was asked to: nothing could be claimed removed."""


def _may_vacuum(conn: psycopg.Connection, table: str) -> bool:
    if conn.info.server_version >= 170000:  # MAINTAIN: owner, pg_maintain or granted
        return _privileged(conn, table, "MAINTAIN")
    row = conn.execute(
        "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class "
        "WHERE oid = %s::regclass",
        (table,),
    ).fetchone()
    return _is_superuser(conn) or bool(row and row[0])


def purge_tables(
    conn: psycopg.Connection,
    tables: Sequence[str],
    *,
    statistics_of: Sequence[str] = (),
    swap: str | None = None,
) -> PurgeReport:
    """Rewrite ``tables`` without dead rows, clear the planner statistics of ``statistics_of``
    and let the server drop old WAL; ``conn`` in autocommit mode.

    ``VACUUM FULL`` of each table (its TOAST table and every index are rebuilt with it),
    :func:`clear_statistics`, ``pg_switch_wal()``, then ``CHECKPOINT`` (after which the server
    removes or recycles the WAL segments before it), twice; :func:`wal_retention` says what
    may keep old segments anyway. ``swap``, one of ``tables``: rewritten by copy and swap
    instead (:func:`visage_ml.serving.pg_swap.rewrite_and_swap`, serving reads on meanwhile),
    its statistics cleared first (the old table's go with it), or by ``VACUUM FULL`` where the
    swap cannot carry the table over (the report says why). Needs a role allowed to run them
    (a superuser, or the tables' owner with ``pg_checkpoint``, ``pg_maintain`` and EXECUTE on
    ``pg_switch_wal``); raises :class:`PurgeRefusedError` for a table it may not vacuum.
    """
    start = time.perf_counter()
    for table in tables:
        if not _may_vacuum(conn, table):
            raise PurgeRefusedError(MSG_NO_VACUUM.format(table=table))
    heard: list[str] = []

    def hear(diag: psycopg.errors.Diagnostic) -> None:
        # Severity and primary message only: a DETAIL or CONTEXT may quote a row's values.
        said = f"{diag.severity_nonlocalized or diag.severity}: {diag.message_primary or ''}"
        said = said[:SERVER_MESSAGE_CHARS]
        if said not in heard and len(heard) < SERVER_MESSAGES_MAX:
            heard.append(said)

    conn.add_notice_handler(hear)
    attempts, refused, statistics = 0, None, []
    try:
        if swap is not None:
            # Before the swap: the old table's pg_statistic rows are deleted with it, their
            # bytes left in pg_statistic's files, which only this compacts.
            statistics = clear_statistics(conn, [t for t in statistics_of if t == swap])
            try:
                attempts = pg_swap.rewrite_and_swap(
                    conn,
                    swap,
                    lock_tries=PURGE_LOCK_TRIES,
                    lock_timeout_s=PURGE_LOCK_TIMEOUT_S,
                    pause_s=PURGE_LOCK_PAUSE_S,
                )
                tables = [t for t in tables if t != swap]
            except pg_swap.SwapRefusedError as exc:
                refused = str(exc)
                logger.warning(MSG_SWAP_REFUSED.format(table=swap, why=refused))
        attempts = max([attempts, *(_vacuum_full(conn, table) for table in tables)])
        statistics = statistics or clear_statistics(conn, statistics_of)
        row = conn.execute("SELECT pg_switch_wal()::text").fetchone()
        conn.execute("CHECKPOINT")
        # The checkpoint record itself opened a new segment; a second switch and checkpoint
        # make sure no segment before the purge is still the current one or needed for redo.
        conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")
        retention = wal_retention(conn)
    finally:
        conn.remove_notice_handler(hear)
    return PurgeReport(
        vacuum_full=bool(tables) or swap is not None,
        wal_switched_from=str(row[0]) if row else None,
        checkpoint=True,
        wal_retention=retention,
        seconds=time.perf_counter() - start,
        statistics=statistics,
        lock_attempts=attempts,
        server_messages=heard,
        swapped=swap is not None and refused is None,
        swap_refused=refused,
    )


def _vacuum_full(conn: psycopg.Connection, table: str) -> int:
    """``VACUUM FULL`` of ``table`` (autocommit); returns the tries its lock took.

    The lock is asked for :data:`PURGE_LOCK_TIMEOUT_S` at a time (serving's calls queue behind
    a waiting VACUUM only that long), then, after :data:`PURGE_LOCK_TRIES` tries, as long as it
    takes: the erasure is not given up. An autovacuum of the table gives way at the second try
    (:func:`~visage_ml.serving.pg_swap.autovacuum_longer`)."""
    vacuum = sql.SQL("VACUUM FULL {t}").format(t=sql.Identifier(table))

    def run(wait: float) -> None:
        set_lock_timeout(conn, wait)
        try:
            conn.execute(vacuum)
        finally:
            set_lock_timeout(conn, 0)

    return pg_swap.ask_briefly(
        run,
        tries=PURGE_LOCK_TRIES,
        timeout_s=PURGE_LOCK_TIMEOUT_S,
        pause_s=PURGE_LOCK_PAUSE_S,
        longer=pg_swap.autovacuum_longer(conn, table),
    )


def size_rebuild_memory(conn: psycopg.Connection, names: Names, *, cap_mb: int) -> int:
    """Give this session's rebuild of the table's HNSW index the memory the graph needs
    (``maintenance_work_mem``, :data:`HNSW_MEMORY_HEADROOM` times the index's size, at most
    ``cap_mb``, never below the session's own setting) and build it in this process alone;
    returns the setting in MB.

    The rebuild inherits the server's ``maintenance_work_mem`` (64 MB by default): a larger graph
    is built on disk, several times slower (506 s instead of about 110 s at 100k x 512-d), and
    every replica's searches wait for it."""
    row = conn.execute(
        "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'maintenance_work_mem'"
    ).fetchone()
    current_kb = int(row[0]) if row else 0
    row = conn.execute(
        "SELECT coalesce(max(pg_catalog.pg_relation_size(i.indexrelid)), 0) "
        "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_catalog.pg_am a ON a.oid = c.relam "
        "WHERE i.indrelid = %s::regclass AND a.amname = 'hnsw'",
        (names.table,),
    ).fetchone()
    need_kb = math.ceil(HNSW_MEMORY_HEADROOM * int(row[0] if row else 0) / 1024)
    want_kb = max(current_kb, min(need_kb, int(cap_mb) * 1024))
    conn.execute(
        "SELECT pg_catalog.set_config('maintenance_work_mem', %s, false)", (f"{want_kb}kB",)
    )
    # A parallel build takes maintenance_work_mem of dynamic shared memory (/dev/shm): in a
    # container (Docker gives it 64 MB) a parallel rebuild of a large graph fails, and the
    # erasure with it; one process builds it slower but surely.
    conn.execute("SELECT pg_catalog.set_config('max_parallel_maintenance_workers', '0', false)")
    return math.ceil(want_kb / 1024)


def purge_physically(
    dsn: str, *, table: str = DEFAULT_TABLE, memory_mb: int = DEFAULT_PURGE_MEMORY_MB
) -> PurgeReport:
    """Rewrite the gallery's files without dead rows and let the server drop old WAL
    (:func:`purge_tables` of the table, copied and swapped while serving reads on, its revoked
    and state tables, and the table's statistics), the HNSW index rebuilt with up to
    ``memory_mb`` of memory (:func:`size_rebuild_memory`)."""
    names = Names(check_table(table))
    with connect(dsn, autocommit=True) as conn:
        no_statistics(conn, names)
        memory = size_rebuild_memory(conn, names, cap_mb=memory_mb)
        report = purge_tables(
            conn,
            [names.table, f"{names.table}_revoked", f"{names.table}_state"],
            statistics_of=[names.table],
            swap=names.table,
        )
    return dataclasses.replace(report, maintenance_work_mem_mb=memory)


def subject_rows(dsn: str, pid: str, *, table: str = DEFAULT_TABLE) -> dict[str, str]:
    """``{artefact name: sha256}`` of what the gallery table holds of ``pid`` (empty: nothing).

    The names are ``pgvector:<table>/<pid>.tpl`` (the sealed template) and
    ``pgvector:<table>/<pid>.embedding`` (the plaintext search vector, as float32 bytes).
    """
    return {k: d for k, (d, _) in subject_row_digests(dsn, pid, table=table).items()}


def purge_leftovers(dsn: str, *, table: str = DEFAULT_TABLE) -> list[str]:
    """The tables beside the gallery table holding its rows of an earlier time, erased rows'
    bytes among them (:func:`visage_ml.serving.pg_swap.left_tables`: a purge that died after its
    swap left its old table); empty when there are none. The next purge drops them."""
    names = Names(check_table(table))
    with connect(dsn, autocommit=True) as conn:
        return pg_swap.left_tables(conn, names.table)


def subject_row_digests(
    dsn: str, pid: str, *, table: str = DEFAULT_TABLE
) -> dict[str, tuple[str, int]]:
    """:func:`subject_rows` with the size in bytes of each content hashed (a scan for a copy of
    it reads only files of that size)."""
    check_pid(pid)
    names = Names(check_table(table))
    with connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (names.table,)).fetchone()
        if not exists or exists[0] is None:
            return {}
        row = conn.execute(
            sql.SQL("SELECT sealed, embedding FROM {t} WHERE pid = %s").format(t=names.t), (pid,)
        ).fetchone()
    if row is None:
        return {}
    sealed, emb = bytes(row[0]), as_array(row[1]).tobytes()
    return {
        artefact_name(table, pid, SEALED_SUFFIX): (hashlib.sha256(sealed).hexdigest(), len(sealed)),
        artefact_name(table, pid, EMBEDDING_SUFFIX): (hashlib.sha256(emb).hexdigest(), len(emb)),
    }


def as_array(value: Any) -> np.ndarray:
    """A ``vector`` value as read back (pgvector's ``Vector``) as little-endian float32."""
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    return np.asarray(value, dtype="<f4")


def artefact_name(table: str, pid: str, suffix: str) -> str:
    """How an erasure names a row's column (``pgvector:<table>/<pid><suffix>``)."""
    return f"{BACKEND}:{table}/{pid}{suffix}"


def delete_subject(dsn: str, pid: str, *, table: str = DEFAULT_TABLE) -> bool:
    """Revoke and delete ``pid``'s row in one transaction (notifying every replica)."""
    check_pid(pid)
    names = Names(check_table(table))
    with connect(dsn) as conn, conn.transaction():
        exists = conn.execute("SELECT to_regclass(%s)", (names.table,)).fetchone()
        if not exists or exists[0] is None:
            return False
        return _revoke_delete(conn, names, pid)


def _revoke_delete(conn: psycopg.Connection, names: Names, pid: str) -> bool:
    conn.execute(
        sql.SQL(
            "INSERT INTO {r} (pid, reason) VALUES (%s, %s) "
            "ON CONFLICT (pid) DO UPDATE SET reason = EXCLUDED.reason, at = now()"
        ).format(r=names.revoked),
        (pid, REVOKED_ERASED),
    )
    cur = conn.execute(sql.SQL("DELETE FROM {t} WHERE pid = %s").format(t=names.t), (pid,))
    _bump(conn, names)
    return cur.rowcount > 0


def _bump(conn: psycopg.Connection, names: Names) -> int:
    row = conn.execute(
        sql.SQL("UPDATE {s} SET version = version + 1 WHERE id = 1 RETURNING version").format(
            s=names.state
        )
    ).fetchone()
    version = int(row[0]) if row else 0
    # Delivered at commit, to every session listening (other replicas and this one).
    conn.execute("SELECT pg_notify(%s, %s)", (names.channel, str(version)))
    return version


# The triggers that move the change counter whoever writes the revoked table (module docstring,
# "Change propagation"), as ``(relation suffix, trigger, pg_trigger.tgtype, deferred,
# function)``; tgtype bits: row 1, before 2, insert 4, delete 8, update 16, truncate 32.
_SIGNAL_TRIGGERS = (
    ("_revoked", "visage_signal", 1 | 4 | 8 | 16, True, "_signal"),
    ("_revoked", "visage_signal_truncate", 32, False, "_signal"),
    ("_state", "visage_counter", 1 | 2 | 16, False, "_counter"),
    ("_state", "visage_counter_kept", 2 | 8 | 32, False, "_counter"),
)
# Once per transaction: a transaction that has already moved the counter (a writer's own bump
# before its commit, or this trigger for an earlier row) is not counted twice. The counter's own
# trigger makes every update of the row a move, so "already updated" cannot be faked.
_SIGNAL_BODY = """DECLARE v bigint;
BEGIN
  UPDATE {s} SET version = version + 1
    WHERE id = 1 AND xmin <> pg_catalog.pg_current_xact_id()::xid RETURNING version INTO v;
  IF v IS NOT NULL THEN
    PERFORM pg_catalog.pg_notify({c}, v::text);
  END IF;
  RETURN NULL;
END"""
# The counter only moves forward, by one per update, and its row stays.
_COUNTER_BODY = """BEGIN
  IF TG_OP = 'UPDATE' THEN
    NEW.version := OLD.version + 1;
    RETURN NEW;
  END IF;
  RAISE EXCEPTION USING MESSAGE = {m};
END"""
MSG_COUNTER_KEPT = (
    "the change counter of a visage gallery is never deleted; drop the gallery's tables to "
    "start again (`visage gallery rebuild` with another embedder does)"
)
SIGNAL_OK = "ok"
SIGNAL_ADDED = "added"
SIGNAL_RESTORED = "restored"
SIGNAL_MISSING = "missing"
MSG_SIGNAL_ADDED = (
    "gallery {table}: triggers added that move the change counter on every write to its revoked "
    "table (a table created by an older version)"
)
MSG_SIGNAL_RESTORED = (
    "gallery {table}: a trigger that moves the change counter on every write to its revoked "
    "table was missing, disabled or altered (only a role that owns the tables can do that) and "
    "was created again; until then an entry written there could hide a subject from running "
    "replicas. `visage gallery verify` reports it; find out who changed it"
)
MSG_SIGNAL_MISSING = (
    "gallery {table}: a trigger that moves the change counter on every write to its revoked "
    "table is missing, disabled or altered, and this role may not create it: an entry written "
    "there hides a subject from running replicas until the next change. Open the gallery once "
    "as the tables' owner (any `visage gallery` command creates it)"
)


def _signal_sql(conn: psycopg.Connection, names: Names) -> tuple[str, dict[str, str]] | None:
    """The schema of the gallery's tables and ``{function name: body}`` of its triggers (None
    when the tables do not exist)."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(%s)",
        (f"{names.table}_state",),
    ).fetchone()
    if row is None:
        return None
    schema = str(row[0])
    # Qualified: an unqualified name could resolve to a temporary table of the writer's.
    state = sql.Identifier(schema, f"{names.table}_state").as_string(conn)
    bodies = {
        f"{names.table}_signal": _SIGNAL_BODY.format(
            s=state, c=sql.Literal(names.channel).as_string(conn)
        ),
        f"{names.table}_counter": _COUNTER_BODY.format(
            m=sql.Literal(MSG_COUNTER_KEPT).as_string(conn)
        ),
    }
    return schema, bodies


def signal_problems(conn: psycopg.Connection, names: Names) -> list[str]:
    """The change-counter triggers of the gallery that are missing, disabled or not as this
    version creates them (``<relation>.<trigger>``); empty when all are in place."""
    found = _signal_sql(conn, names)
    if found is None:
        return []
    schema, bodies = found
    rows = conn.execute(
        "SELECT c.relname, t.tgname, t.tgtype, t.tgenabled IN ('O', 'A'), t.tginitdeferred,"
        " t.tgqual IS NULL AND t.tgnargs = 0 AND t.tgattr::text = '', p.proname,"
        " pn.nspname, p.prosrc FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_proc p ON p.oid = t.tgfoid"
        " JOIN pg_namespace pn ON pn.oid = p.pronamespace"
        " WHERE n.nspname = %s AND c.relname = ANY(%s) AND NOT t.tgisinternal",
        (schema, [f"{names.table}_revoked", f"{names.table}_state"]),
    ).fetchall()
    have = {(r[0], r[1]): r[2:] for r in rows}
    wrong = []
    for suffix, trigger, tgtype, deferred, fn in _SIGNAL_TRIGGERS:
        rel, proc = f"{names.table}{suffix}", f"{names.table}{fn}"
        got = have.get((rel, trigger))
        if got != (tgtype, True, deferred, True, proc, schema, bodies[proc]):
            wrong.append(f"{rel}.{trigger}")
    return wrong


def ensure_signals(conn: psycopg.Connection, names: Names) -> tuple[str, list[str]]:
    """Create the triggers that move the change counter on every write to ``<table>_revoked``
    (and keep the counter moving forward) unless they are in place; call in a transaction.

    Returns
    -------
    tuple[str, list[str]]
        :data:`SIGNAL_OK` (in place), :data:`SIGNAL_ADDED` (created for tables of an older
        version), :data:`SIGNAL_RESTORED` (re-created: one was missing, disabled or altered)
        or :data:`SIGNAL_MISSING` (this role may not create them); and the triggers that were
        wrong (:func:`signal_problems`).
    """
    wrong = signal_problems(conn, names)
    found = _signal_sql(conn, names)
    if not wrong or found is None:
        return SIGNAL_OK, []
    schema, bodies = found
    existed = conn.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname = ANY(%s)",
        (schema, list(bodies)),
    ).fetchone()
    try:
        with conn.transaction():
            for fn, body in bodies.items():
                conn.execute(
                    sql.SQL(
                        "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql "
                        "SET search_path = pg_catalog, pg_temp AS {b}"
                    ).format(f=sql.Identifier(schema, fn), b=sql.Literal(body))
                )
            for suffix, trigger, *_ in _SIGNAL_TRIGGERS:
                rel = sql.Identifier(schema, f"{names.table}{suffix}")
                conn.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS {g} ON {r}").format(
                        g=sql.Identifier(trigger), r=rel
                    )
                )
            signal = sql.Identifier(schema, f"{names.table}_signal")
            counter = sql.Identifier(schema, f"{names.table}_counter")
            revoked = sql.Identifier(schema, f"{names.table}_revoked")
            state = sql.Identifier(schema, f"{names.table}_state")
            # Deferred to the commit, after the writer's own bump: the counter's row is locked
            # where it always was (last), so no new lock order, and one move per transaction.
            conn.execute(
                sql.SQL(
                    "CREATE CONSTRAINT TRIGGER visage_signal AFTER INSERT OR UPDATE OR DELETE "
                    "ON {r} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {f}()"
                ).format(r=revoked, f=signal)
            )
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER visage_signal_truncate AFTER TRUNCATE ON {r} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION {f}()"
                ).format(r=revoked, f=signal)
            )
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER visage_counter BEFORE UPDATE ON {s} "
                    "FOR EACH ROW EXECUTE FUNCTION {f}()"
                ).format(s=state, f=counter)
            )
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER visage_counter_kept BEFORE DELETE OR TRUNCATE ON {s} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION {f}()"
                ).format(s=state, f=counter)
            )
    except psycopg.errors.InsufficientPrivilege:
        return SIGNAL_MISSING, wrong
    return (SIGNAL_RESTORED if existed and int(existed[0]) else SIGNAL_ADDED), wrong


def open_configured(
    paths: ProjectPaths,
    params: Any,
    *,
    environ: Mapping[str, str],
    core: Any = None,
    load: bool = True,
) -> Gallery | None:
    """The project's gallery as ``serving.gallery.backend`` says, opened as it exists
    (:meth:`Gallery.open_existing` or :meth:`PgGallery.open_existing`); None when none exists.

    For the commands and rights that work on the gallery outside ``visage serve``.
    """
    if params.serving.gallery.backend != BACKEND:
        return Gallery.open_existing(paths, core=core, load=load)
    dsn = resolve_dsn(params, environ, paths=paths)
    # Commands and rights wait for the tables as long as it takes (no 503 to retry there).
    options = PgOptions.from_params(params, dsn=dsn, listen=False, serving=False)
    return PgGallery.open_existing(paths, options=options, core=core, load=load)


def open_project_gallery(
    paths: ProjectPaths, *, core: Any = None, load: bool = False, params: Any = None
) -> Gallery | None:
    """:func:`open_configured` with the project's ``params.yaml`` (unless given) and this
    process's environment: the gallery the rights (export, rectification, retention, erasure)
    work on, wherever ``serving.gallery.backend`` keeps it."""
    chosen = params if params is not None else load_params(paths.params)
    return open_configured(paths, chosen, environ=os.environ, core=core, load=load)


def _reads(method: Callable[..., T]) -> Callable[..., T]:
    """A :class:`PgGallery` method that only reads: run again once after a dropped connection."""

    @functools.wraps(method)
    def call(self: PgGallery, *args: Any, **kw: Any) -> T:
        return self._reading(lambda: method(self, *args, **kw))

    return call


def _writes(method: Callable[..., T]) -> Callable[..., T]:
    """A :class:`PgGallery` method that writes: a dropped connection is a
    :class:`GalleryUnavailableError` for the caller to retry."""

    @functools.wraps(method)
    def call(self: PgGallery, *args: Any, **kw: Any) -> T:
        return self._writing(lambda: method(self, *args, **kw))

    return call


def _erases(method: Callable[..., T]) -> Callable[..., T]:
    """:func:`_writes` for the erasure: it waits for its locks as long as it takes (a purge in
    progress, an enrolment of the subject), however short serving's lock timeout."""

    @functools.wraps(method)
    def call(self: PgGallery, *args: Any, **kw: Any) -> T:
        return self._writing(lambda: method(self, *args, **kw), wait=True)

    return call


class PgGallery(Gallery):
    """The consent-aware gallery with its templates in PostgreSQL (use :meth:`open`).

    Behaves as :class:`~visage_ml.serving.gallery.Gallery` for its callers. Thread-safe in the
    same way: calls are serialised by ``lock``; the listener thread only touches the cached
    gallery size, under its own lock.
    """

    def __init__(self, paths: ProjectPaths, *, options: PgOptions, **kw: Any) -> None:
        super().__init__(paths, **kw)
        self.options = options
        self.names = Names(check_table(options.table))
        self._db = connect(options.dsn)
        self._size_lock = threading.Lock()
        self._size: tuple[int, int] = (-1, 0)  # (state version, searchable count)
        # (state version, rows of this embedder, revoked entries beside them as (pid, sha)):
        # what the listener counted, for a thread holding ``lock`` to check with the registry.
        self._raw: tuple[int, int, tuple[tuple[str, str], ...]] = (-1, 0, ())
        # Revoked entries, or rows without one, found disagreeing with the registry by a count
        # or a search; :meth:`_repair_revocations` puts the table right.
        self._suspect: set[str] = set()
        self._revocation_report: dict[str, str] = {}
        self._revoked_removed = 0
        self._revoked_restored = 0
        # What opening found of the change-counter triggers (:func:`ensure_signals`).
        self._signal: tuple[str, list[str]] = (SIGNAL_OK, [])
        self._calibration: Any = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()
        self.notifications = 0
        self._bound: dict[str, tuple[str, bytes]] = {}
        self._unbound: set[str] = set()
        self._behind: set[str] = set()
        # The connection's lock timeout once opened (:meth:`_limit_lock_waits`), and whether a
        # call ran out of it: then each call first asks whether the tables are still held.
        self._lock_timeout_s = 0.0
        self._rewriting = False

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(  # type: ignore[override]
        cls,
        paths: ProjectPaths,
        *,
        options: PgOptions,
        model_version: str,
        embedding_dim: int,
        threshold: Threshold | float,
        preprocess: Mapping[str, Any] | None = None,
        core: Any = None,
        embed: Callable[[np.ndarray], np.ndarray] | None = None,
        lock: Any = None,
        load: bool = True,
        **_: Any,
    ) -> PgGallery:
        """Open (creating its tables when needed) the pgvector gallery for an embedder.

        Parameters
        ----------
        paths
            The project (its ledger, key ring and master key).
        options
            Connection and search options (:class:`PgOptions`).
        model_version, embedding_dim, preprocess, threshold, core, embed, lock
            As for :meth:`Gallery.open`.
        load
            Reconcile the revoked table with the registry now and start the listener.

        Raises
        ------
        GalleryError
            The server is unreachable or lacks pgvector.
        GalleryVersionError
            The table holds templates of another dimension or embedder.
        """
        thr = threshold if isinstance(threshold, Threshold) else Threshold(float(threshold), "")
        meta = meta_for(
            read_meta(paths.gallery),
            model_version=model_version,
            embedding_dim=embedding_dim,
            preprocess=preprocess,
            threshold=thr,
        )
        master = load_master_key(paths.master_key, create=not wrapped_keys_exist(paths))
        gallery = cls(
            paths,
            options=options,
            core=core if core is not None else PrivacyCore(paths),
            meta=meta,
            threshold=thr.value,
            master_key=master,
            embed=embed,
            lock=lock,
        )
        try:
            gallery._setup()
        except BaseException:
            gallery.close()
            raise
        if load:
            gallery.reload()
            if options.listen:
                gallery.start_listener()
        gallery._limit_lock_waits()
        return gallery

    @classmethod
    def open_existing(  # type: ignore[override]
        cls, paths: ProjectPaths, *, options: PgOptions, core: Any = None, load: bool = True
    ) -> PgGallery | None:
        """Open the shared gallery as its tables describe it (embedder, size); None when its
        tables do not exist yet. The 1:1 threshold is the one a server uses
        (:func:`~visage_ml.serving.gallery.served_threshold`) if the project has a
        ``gallery/gallery.json`` (else 1.0: matches nothing until a server opens it)."""
        names = Names(check_table(options.table))
        with connect(options.dsn, autocommit=True) as conn:
            found = conn.execute("SELECT to_regclass(%s)", (names.table,)).fetchone()
            if not found or found[0] is None:
                return None
            row = conn.execute(
                sql.SQL("SELECT model_version FROM {s} WHERE id = 1").format(s=names.state)
            ).fetchone()
            dim = conn.execute(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attname = 'embedding'",
                (names.table,),
            ).fetchone()
        if not row or row[0] is None or not dim:
            return None
        meta = read_meta(paths.gallery)
        core = core if core is not None else PrivacyCore(paths)
        threshold = served_threshold(paths, meta, core) if meta else 1.0
        return cls.open(
            paths,
            options=dataclasses.replace(options, listen=False),
            model_version=str(row[0]),
            embedding_dim=int(dim[0]),
            threshold=threshold,
            core=core,
            load=load,
        )

    def _setup(self) -> None:
        conn, n = self._conn, self.names
        # Before the table can hold a row: every later erasure reaches it, wherever
        # params.yaml points by then (visage_ml.stack.stores).
        stores.remember_pgvector(
            self.paths, dsn=self.options.dsn, table=n.table, record=self.core.record_store
        )
        self._signal = ensure_schema(conn, n, self.meta.embedding_dim)
        if self._signal[0] == SIGNAL_ADDED:
            logger.info(MSG_SIGNAL_ADDED.format(table=n.table))
        elif self._signal[0] == SIGNAL_RESTORED:
            logger.warning(MSG_SIGNAL_RESTORED.format(table=n.table))
        elif self._signal[0] == SIGNAL_MISSING:
            logger.warning(MSG_SIGNAL_MISSING.format(table=n.table))
        with conn.transaction():
            row = conn.execute(
                sql.SQL("SELECT model_version FROM {s} WHERE id = 1 FOR UPDATE").format(s=n.state)
            ).fetchone()
            found = row[0] if row else None
            if found is None:
                conn.execute(
                    sql.SQL("UPDATE {s} SET model_version = %s WHERE id = 1").format(s=n.state),
                    (self.meta.model_version,),
                )
            elif found != self.meta.model_version:
                raise GalleryVersionError(
                    MSG_MODEL.format(table=n.table, found=found, expected=self.meta.model_version)
                )
        if self.options.hnsw:
            ensure_hnsw(
                conn, n, m=self.options.hnsw_m, ef_construction=self.options.ef_construction
            )

    def _limit_lock_waits(self) -> None:
        """From now on, statements wait at most ``options.lock_timeout_s`` for a lock. Opening
        waits as long as it takes (a replica starting during a rewrite starts after it)."""
        self._lock_timeout_s = max(0.0, float(self.options.lock_timeout_s))
        if self._lock_timeout_s > 0:
            set_lock_timeout(self._conn, self._lock_timeout_s)

    def close(self) -> None:
        """Stop the listener and close the connection."""
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        with contextlib.suppress(Exception):
            self._db.close()

    @property
    def _conn(self) -> psycopg.Connection:
        """The connection, opened anew when the server dropped the last one (a restart, a
        failover, an idle timeout): psycopg marks it broken at the first statement that fails."""
        if self._db.closed or self._db.broken:
            logger.warning("pgvector gallery lost its connection to PostgreSQL; reconnecting")
            self._db = connect(self.options.dsn, lock_timeout_s=self._lock_timeout_s)
        return self._db

    def _lost(self) -> bool:
        """Whether the last error was the connection's loss (not a statement's own failure).

        psycopg marks a connection broken at most failures of its socket, but not when the
        server's end arrives while a transaction is being opened ("connection socket closed"):
        libpq's own status then says it is gone."""
        if self._db.closed or self._db.broken:
            return True
        try:
            return bool(self._db.pgconn.status != psycopg.pq.ConnStatus.OK)
        except Exception:  # no status to read: the connection is not usable either
            return True

    def _reading(self, call: Callable[[], T]) -> T:
        """``call`` (which only reads), once more on a new connection if the server dropped
        the last one under it (a restart, a failover): the caller never sees the drop."""
        try:
            self._fail_fast()
            return call()
        except psycopg.errors.LockNotAvailable:
            self._timed_out()
        except psycopg.OperationalError:
            if not self._lost():
                raise
        return self._writing(call)

    def _writing(self, call: Callable[[], T], *, wait: bool = False) -> T:
        """``call``, with a dropped connection, or a lock not obtained within the lock timeout
        (the table being rewritten), reported as :class:`GalleryUnavailableError`; ``wait``:
        not refused early while the tables are held (:meth:`_fail_fast`).

        A write is not repeated here: the caller decides (it is safe, see the error)."""
        try:
            if not wait:
                self._fail_fast()
            return call()
        except psycopg.errors.LockNotAvailable:
            self._timed_out()
        except psycopg.OperationalError:
            if not self._lost():
                raise
            logger.warning("pgvector gallery lost its connection during a call")
            raise GalleryUnavailableError(MSG_LOST) from None

    def _timed_out(self) -> NoReturn:
        """A statement waited ``lock_timeout_s`` for a lock on the tables (an erasure's
        ``VACUUM FULL`` holds them for the rewrite): the call is refused, to retry."""
        with contextlib.suppress(psycopg.Error):
            # A statement outside an explicit transaction leaves the implicit one failed.
            if self._db.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                self._db.rollback()
        if not self._rewriting:
            logger.warning(
                "pgvector gallery %s: a lock on the table was not granted within %.1f s "
                "(a rewrite in progress); calls answer unavailable until it is released",
                self.names.table,
                self._lock_timeout_s,
            )
        self._rewriting = True
        raise GalleryUnavailableError(MSG_REWRITING) from None

    def _fail_fast(self) -> None:
        """After a lock timeout, refuse a call at once while the tables are still held or
        waited for by an ACCESS EXCLUSIVE lock: calls queued behind ``lock`` in this replica
        would otherwise each wait a lock timeout in turn, and requests pile up."""
        if not self._rewriting:
            return
        with self.lock:
            if not self._rewriting:
                return
            n, conn = self.names, self._conn
            with conn.transaction():
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'relation'"
                    " AND mode = 'AccessExclusiveLock' AND database = (SELECT oid FROM"
                    " pg_catalog.pg_database WHERE datname = pg_catalog.current_database())"
                    " AND relation = ANY(ARRAY[to_regclass(%s), to_regclass(%s),"
                    " to_regclass(%s)]::oid[]))",
                    (n.table, f"{n.table}_revoked", f"{n.table}_state"),
                ).fetchone()
            if row and row[0]:
                raise GalleryUnavailableError(MSG_REWRITING)
            self._rewriting = False
            logger.info("pgvector gallery %s: its tables are no longer held", n.table)

    def _snapshot(self, conn: psycopg.Connection) -> None:
        """Make the open transaction a read-only REPEATABLE READ snapshot taken after a lock on
        the gallery table: an erasure's purge swaps in a copy of the table whose rows a snapshot
        from before the swap does not see (:mod:`visage_ml.serving.pg_swap`); locked first, the
        snapshot sees the old table whole (the swap waits for it) or the new one."""
        conn.execute(
            sql.SQL(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                "LOCK TABLE {t} IN ACCESS SHARE MODE"
            ).format(t=self.names.t)
        )

    def __enter__(self) -> PgGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- change propagation --------------------------------------------------------------------

    def start_listener(self) -> None:
        """``LISTEN`` on the gallery's channel, polling the change counter as a fallback."""
        if self._listener is not None:
            return
        self._listener = threading.Thread(
            target=self._listen, name="visage-pg-gallery-listen", daemon=True
        )
        self._listener.start()
        # Changes made after open() returns are notified to this replica.
        self._listening.wait(timeout=10)

    def _listen(self) -> None:
        n = self.names
        wait = self.options.poll_interval_s
        failures = 0
        while not self._stop.is_set():
            try:
                with connect(self.options.dsn, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {c}").format(c=sql.Identifier(n.channel)))
                    self._recount(conn)
                    self._listening.set()
                    if failures:
                        logger.warning(
                            "pgvector gallery listener reconnected after %d attempt(s)", failures
                        )
                    failures, wait = 0, self.options.poll_interval_s
                    while not self._stop.is_set():
                        got = False
                        for _ in conn.notifies(timeout=self.options.poll_interval_s):
                            got = True
                            self.notifications += 1
                            break
                        # On a notification or a poll tick: the counter says whether to recount
                        # (a notification lost with a dropped connection is caught here).
                        self._recount(conn, notified=got)
            except (psycopg.Error, GalleryError):
                # Once, then quietly with a growing pause (PostgreSQL down for minutes wrote
                # four lines a second per replica).
                log = logger.warning if failures == 0 else logger.debug
                log("pgvector gallery listener lost its connection; reconnecting")
                failures += 1
                self._stop.wait(wait)
                wait = min(wait * 2, LISTEN_BACKOFF_MAX_S)

    def _recount(self, conn: psycopg.Connection, *, notified: bool = False) -> None:
        with conn.transaction():
            self._snapshot(conn)
            version = self._version(conn)
            if version in (self._size[0], self._raw[0]):
                return
            total, entries = self._count(conn)
        with self._size_lock:
            if version > self._raw[0]:
                self._raw = (version, total, entries)
            # Revoked entries beside rows are checked with the registry by a thread holding
            # ``lock`` (:meth:`_size_in`); none (the usual case): the size is known here.
            if not entries and version > self._size[0]:
                self._size = (version, total)

    def _version(self, conn: psycopg.Connection) -> int:
        row = conn.execute(
            sql.SQL("SELECT version FROM {s} WHERE id = 1").format(s=self.names.state)
        ).fetchone()
        return int(row[0]) if row else 0

    def _count(self, conn: psycopg.Connection) -> tuple[int, tuple[tuple[str, str], ...]]:
        """Rows of this embedder, and the revoked entries beside them as ``(pid,
        template_sha256)``, in the caller's snapshot."""
        n = self.names
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {t} t WHERE t.model_version = %s").format(t=n.t),
            (self.meta.model_version,),
        ).fetchone()
        entries = conn.execute(
            sql.SQL(
                "SELECT t.pid, t.template_sha256 FROM {r} r JOIN {t} t ON t.pid = r.pid "
                "WHERE t.model_version = %s"
            ).format(t=n.t, r=n.revoked),
            (self.meta.model_version,),
        ).fetchall()
        return (int(row[0]) if row else 0), tuple((str(p), str(h)) for p, h in entries)

    def _searchable_count(self, total: int, entries: Iterable[tuple[str, str]]) -> int:
        """``N``: the rows ``total`` less the revoked entries beside them that the registry
        backs (call with ``lock`` held). An entry it does not back (written into the table
        without the project's keys) would hide a consenting subject and lower N, and with it the
        1:N threshold: it is not subtracted, and :meth:`_repair_revocations` removes it."""
        entries = list(entries)
        registry = self.core.registry
        unbacked = [p for p, sha in entries if self._decision(p, registry, sha) is None]
        if unbacked:
            # Read the ledger again: an event this process has not read yet may back them.
            registry = registry.refresh()
            unbacked = [p for p, sha in entries if self._decision(p, registry, sha) is None]
            self._suspect.update(unbacked)
        return total - len(entries) + len(unbacked)

    def _size_in(self, conn: psycopg.Connection) -> int:
        """Searchable subjects in the current snapshot (cached per change counter; call with
        ``lock`` held)."""
        version = self._version(conn)
        cached = self._size
        if cached[0] == version:
            return cached[1]
        raw = self._raw
        total, entries = (raw[1], raw[2]) if raw[0] == version else self._count(conn)
        count = self._searchable_count(total, entries)
        with self._size_lock:
            if version >= self._size[0]:
                self._size = (version, count)
        return count

    # -- consent: the revoked table follows the registry ---------------------------------------

    def _decision(self, pid: str, registry: Any, sha: str | None) -> str | None:
        """Why ``pid`` (whose row holds template ``sha``, None: no row) must not be returned,
        as of ``registry`` read so far (None: it may)."""
        state = registry.peek(pid)
        if state is None:
            # A row of no registered subject: planted (see stats' ``unrecorded``).
            return REVOKED_NO_CONSENT if sha is None else REVOKED_UNRECORDED
        if not state.decision(PURPOSE).allowed:
            return REVOKED_NO_CONSENT
        if sha is not None and state.template_sha256 != sha:
            return REVOKED_UNRECORDED
        return None

    def _forbidden_now(self, pid: str) -> bool:
        """Whether the registry forbids ``pid`` although a statement that excludes revoked
        subjects returned its row: its revoked entry is missing (deleted from the table). The
        ledger is read again before saying so; the table is put right after the statement's
        transaction (:meth:`_repair_revocations`)."""
        registry = self.core.registry
        state = registry.peek(pid)
        if state is None or state.decision(PURPOSE).allowed:
            # Unknown subjects are refused by the binding check (no key, not in the ledger).
            return False
        if registry.may_process(pid, PURPOSE).allowed:
            return False
        self._suspect.add(pid)
        return True

    def _repair_revocations(self) -> None:
        """Put right the revoked entries a count or a statement found disagreeing with the
        registry (:meth:`_searchable_count`, :meth:`_forbidden_now`); nothing when none."""
        if not self._suspect:
            return
        pids, self._suspect = self._suspect, set()
        try:
            self._sync(self.core.registry.refresh(), pids, report=True)
        except BaseException:
            # Not applied (the connection dropped, say): the next call tries again.
            self._suspect |= pids
            raise

    def _sync(self, registry: Any, pids: Iterable[str] | None, *, report: bool = False) -> None:
        """Make the revoked table agree with the registry for ``pids`` (None: every row and
        every entry).

        An entry the registry does not back is removed, whatever its reason, ``erased``
        included when the subject's row is there: an erasure deletes the row in the transaction
        that writes its entry, so an ``erased`` entry beside a row the ledger vouches for, of a
        subject the registry allows, is no erasure's. ``erased`` entries without a row are kept
        (they hide nobody; an erasure's ledger entries may come after its commit). An entry
        rewritten since it was read (``xmin``) is left alone, so an erasure committing meanwhile
        is never undone. With ``report``, an entry removed beside a row, or added for a row of
        a subject the registry forbids, is logged (pid only), counted in :meth:`stats` and
        named by :meth:`check_templates`.
        """
        conn, n = self._conn, self.names
        with conn.transaction():
            if pids is None:
                rows = conn.execute(
                    sql.SQL(
                        "SELECT coalesce(t.pid, r.pid), t.template_sha256, r.reason, "
                        "r.xmin::text FROM {t} t FULL JOIN {r} r ON r.pid = t.pid"
                    ).format(t=n.t, r=n.revoked)
                ).fetchall()
            else:
                rows = conn.execute(
                    sql.SQL(
                        "SELECT p.pid, t.template_sha256, r.reason, r.xmin::text"
                        " FROM unnest(%s::text[]) p(pid)"
                        " LEFT JOIN {t} t ON t.pid = p.pid LEFT JOIN {r} r ON r.pid = p.pid"
                    ).format(t=n.t, r=n.revoked),
                    (sorted(pids),),
                ).fetchall()
            add: list[tuple[str, str]] = []
            missing: set[str] = set()
            drop: dict[str, tuple[str, bool]] = {}
            for pid, sha, reason, xmin in rows:
                why = self._decision(pid, registry, sha)
                if why is None:
                    if reason is not None and (sha is not None or reason != REVOKED_ERASED):
                        drop[pid] = (xmin, sha is not None)
                elif reason is None:
                    add.append((pid, why))
                    if sha is not None and why == REVOKED_NO_CONSENT:
                        missing.add(pid)
                elif reason not in (why, REVOKED_ERASED):
                    add.append((pid, why))
            if drop:
                # The rows were read first: a ledger read now is at least as new as they are.
                registry = self.core.registry.refresh()
                shas = {r[0]: r[1] for r in rows}
                drop = {
                    p: v for p, v in drop.items() if self._decision(p, registry, shas[p]) is None
                }
            if not add and not drop:
                return
            removed: list[str] = []
            with conn.cursor() as cur:
                if add:
                    cur.executemany(
                        sql.SQL(
                            "INSERT INTO {r} (pid, reason) VALUES (%s, %s) ON CONFLICT (pid)"
                            " DO UPDATE SET reason = EXCLUDED.reason, at = now()"
                            " WHERE {r}.reason <> {e}"
                        ).format(r=n.revoked, e=sql.Literal(REVOKED_ERASED)),
                        add,
                    )
                if drop:
                    cur.execute(
                        sql.SQL(
                            "DELETE FROM {r} r USING unnest(%s::text[], %s::text[]) d(pid, x) "
                            "WHERE r.pid = d.pid AND r.xmin::text = d.x RETURNING r.pid"
                        ).format(r=n.revoked),
                        (list(drop), [v[0] for v in drop.values()]),
                    )
                    removed = [r[0] for r in cur.fetchall()]
            _bump(conn, n)
        if report:
            for pid in sorted(p for p in removed if not drop[p][1]):
                # It hid nobody (no row): housekeeping, not a finding.
                logger.info("gallery %s/%s: a revocation without a row removed", n.table, pid)
            self._report_revocations(sorted(p for p in removed if drop[p][1]), sorted(missing))

    def _report_revocations(self, removed: list[str], restored: list[str]) -> None:
        """Log (pid only), count and keep for :meth:`check_templates` the revoked entries
        :meth:`_sync` removed beside rows or put back for rows of forbidden subjects."""
        for pid in removed:
            logger.warning(MSG_REVOKED_UNBACKED.format(name=f"{self.names.table}/{pid}"))
            self._revocation_report[pid] = REVOKED_UNBACKED
        for pid in restored:
            logger.warning(MSG_REVOKED_MISSING.format(name=f"{self.names.table}/{pid}"))
            self._revocation_report[pid] = REVOKED_MISSING
        self._revoked_removed += len(removed)
        self._revoked_restored += len(restored)

    @_reads
    def reload(self) -> None:
        """Fold the whole ledger and make the revoked table agree with it for every subject;
        finish the erasures that stopped between the key and the anchor file."""
        with self.lock:
            self._finish_interrupted_erasures()
            ledger_path = self.core.ledger.path
            offset = ledger_path.stat().st_size if ledger_path.exists() else 0
            registry = self.core.registry.refresh()
            self._sync(registry, None, report=True)
            self._offset = self._offset_floor(ledger_path, offset)
            self._size_in_tx()

    @_reads
    def refresh(self) -> None:
        """Apply ledger events appended since the last call (cheap when none).

        A subject a new event touches is revoked or reinstated in the shared table, for every
        replica, in one transaction.
        """
        with self.lock:
            self._repair_revocations()
            start = self._offset
            news = self._ledger_news()
            if news is None:
                return
            touched, registry = news
            # The ledger names them again (an enrolment, by any process): check their rows anew.
            self._unbound.difference_update(touched)
            self._behind.difference_update(touched)
            if touched:
                try:
                    self._sync(registry, touched)
                except BaseException:
                    # Not applied (the connection dropped, say): read these events again next
                    # time, or a withdrawal read here would never reach the shared table.
                    self._offset = start
                    raise

    def _size_in_tx(self) -> int:
        with self._conn.transaction():
            self._snapshot(self._conn)
            size = self._size_in(self._conn)
        self._repair_revocations()
        return size

    # -- queries -------------------------------------------------------------------------------

    def set_calibration(self, calibration: Any) -> None:
        """Score as evaluation did (see :meth:`Gallery.set_calibration`); stored clusters are
        recomputed when the calibration differs from the one they were computed for."""
        if calibration is not None:
            calibration.check_embedder(self.model_version)
        if calibration is not None and calibration.identity:
            calibration = None
        with self.lock:
            self._calibration = calibration
            self._ensure_clusters()

    def _scoring_calibration(self) -> Any:
        return self._calibration

    def _calibration_id(self) -> str:
        return _calibration_key(self._calibration)

    def _ensure_clusters(self) -> None:
        conn, n = self._conn, self.names
        want = self._calibration_id()
        with conn.transaction():
            # Part of starting a replica (visage serve sets the released calibration after
            # opening): it waits for a rewrite in progress, as opening does.
            conn.execute("SET LOCAL lock_timeout = 0")
            row = conn.execute(
                sql.SQL("SELECT calibration FROM {s} WHERE id = 1 FOR UPDATE").format(s=n.state)
            ).fetchone()
            if row and row[0] == want:
                return
            if self._calibration is None:
                conn.execute(sql.SQL("UPDATE {t} SET cluster = 0 WHERE cluster <> 0").format(t=n.t))
            else:
                rows = conn.execute(
                    sql.SQL("SELECT pid, embedding FROM {t}").format(t=n.t)
                ).fetchall()
                if rows:
                    clusters = self._calibration.clusters(np.stack([as_array(r[1]) for r in rows]))
                    with conn.cursor() as cur:
                        cur.executemany(
                            sql.SQL("UPDATE {t} SET cluster = %s WHERE pid = %s").format(t=n.t),
                            [(int(c), r[0]) for c, r in zip(clusters, rows, strict=True)],
                        )
            conn.execute(
                sql.SQL("UPDATE {s} SET calibration = %s WHERE id = 1").format(s=n.state), (want,)
            )

    def _cluster_of(self, vec: np.ndarray) -> int:
        cal = self._calibration
        return 0 if cal is None else int(cal.clusters(vec[None])[0])

    @property
    def size(self) -> int:
        """Searchable subjects of the shared gallery (as of the last change seen)."""
        cached = self._size
        listening = self._listener is not None and self._listener.is_alive()
        if cached[0] >= 0 and cached[0] >= self._raw[0] and listening:
            return cached[1]
        return self._size_now()

    @_reads
    def _size_now(self) -> int:
        # As a search counts it: a table held by a rewrite is the 503 to retry, not an error.
        with self.lock:
            self.refresh()
            return self._size_in_tx()

    def _search_sql(self, *, cluster: int | None, skip: bool = False) -> sql.Composed:
        n = self.names
        where = sql.SQL("")
        if cluster is not None:
            where = sql.SQL(" AND t.cluster = {c}").format(c=sql.Literal(int(cluster)))
        if skip:
            # Rows refused by the binding check (:meth:`_answer`); absent from an honest
            # gallery's statements, which pay nothing for it.
            where = sql.Composed([where, sql.SQL(" AND t.pid <> ALL(%(skip)s)")])
        return sql.SQL(
            "SELECT t.pid, t.cluster, t.embedding <#> %(q)s AS d, t.embedding FROM {t} t "
            "WHERE t.model_version = %(mv)s{where} AND NOT EXISTS "
            "(SELECT 1 FROM {r} r WHERE r.pid = t.pid) ORDER BY t.embedding <#> %(q)s "
            "LIMIT %(k)s"
        ).format(t=n.t, r=n.revoked, where=where)

    def _set_local(self, conn: psycopg.Connection) -> None:
        if self.options.hnsw:
            conn.execute(
                sql.SQL("SET LOCAL hnsw.ef_search = {v}").format(
                    v=sql.Literal(int(self.options.ef_search))
                )
            )
            conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
        else:
            # Exact: never an (approximate) index scan, whatever indexes exist.
            conn.execute("SET LOCAL enable_indexscan = off")
            conn.execute("SET LOCAL enable_bitmapscan = off")

    def _candidates(
        self, conn: psycopg.Connection, q: np.ndarray, limit: int, skip: set[str]
    ) -> list[tuple]:
        """Rows ``(pid, cluster, negated inner product, embedding)`` of the best ``limit`` by raw
        cosine (per calibration cluster under FSN/FairCal), the pids in ``skip`` left out."""
        params: dict[str, Any] = {"q": q, "mv": self.meta.model_version, "k": limit}
        if skip:
            params["skip"] = sorted(skip)
        cal = self._calibration
        # Binary: the vectors as float32 bits (parsing their text costs ~0.2 ms each).
        if cal is None or cal.uses_cohort:
            return conn.execute(
                self._search_sql(cluster=None, skip=bool(skip)), params, binary=True
            ).fetchall()
        # Top-k per cluster: exact under any calibration monotone in the raw score.
        rows: list[tuple] = []
        for c in range(cal.n_clusters):
            rows += conn.execute(
                self._search_sql(cluster=c, skip=bool(skip)), params, binary=True
            ).fetchall()
        return rows

    @_reads
    def search(
        self,
        embeddings: np.ndarray,
        *,
        top_k: int = 5,
        threshold_for: Callable[[int], float],
    ) -> tuple[list[list[Match]], int, float]:
        """As :meth:`Gallery.search`; ``N`` is the shared gallery's searchable size in the
        snapshot the search runs in, and revoked subjects are excluded by the query itself."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, not {top_k}")
        q = normalize_queries(embeddings, self.meta.embedding_dim)
        with self.lock:
            return self._search_locked(q, top_k=top_k, threshold_for=threshold_for)

    def _search_locked(
        self, q: np.ndarray, *, top_k: int, threshold_for: Callable[[int], float]
    ) -> tuple[list[list[Match]], int, float]:
        """:meth:`search` in one read-only snapshot (the caller holds ``lock``)."""
        self.refresh()
        conn = self._conn
        for last in (False, True):
            with conn.transaction():
                self._snapshot(conn)
                n = self._size_in(conn)
                if last or not self._suspect:
                    threshold = float(threshold_for(n))
                    out = [self._answer(conn, row, top_k=top_k, threshold=threshold) for row in q]
                    break
            # The count found revoked entries the registry does not back: they hide consenting
            # subjects in this snapshot. Removed first, then searched in a new one (once: an
            # intruder writing more entries cannot hold the search up).
            self._repair_revocations()
        self._repair_revocations()
        return out, n, threshold

    def _scores(self, q: np.ndarray, found: list[tuple]) -> np.ndarray:
        """The calibrated scores of the candidate rows ``found`` for the probe ``q``."""
        cal = self._calibration
        raw = np.array([-float(r[2]) for r in found])
        if cal is None:
            return raw
        if cal.uses_cohort:
            sides = cal.sides(np.stack([as_array(r[3]) for r in found]))
            return cal.apply(raw, cal.sides(q[None]), sides)
        return cal.apply(raw, cal.clusters(q[None]), np.array([r[1] for r in found]))

    def _answer(
        self, conn: psycopg.Connection, q: np.ndarray, *, top_k: int, threshold: float
    ) -> list[Match]:
        """The matches of one probe: the best ``top_k`` rows over ``threshold`` that rest on
        their sealed templates.

        A refused row must not take the place of an honest one in any list the answer is
        drawn from (the top ``top_k``, a cluster's top ``top_k``, the AS-norm shortlist): when
        a row is refused the candidates are fetched again without it. Rows this process
        already refused (``tampered`` in :meth:`stats`) are left out from the start, so a
        search near planted rows does not open them again; an honest gallery runs one
        statement per probe (per cluster), as before.
        """
        cal = self._calibration
        cohort = cal is not None and cal.uses_cohort
        limit = max(top_k, COHORT_SHORTLIST) if cohort else top_k
        skip = set(self._unbound)
        while True:
            # Again for each statement: the binding check lets index scans back in.
            self._set_local(conn)
            found = self._candidates(conn, q, limit, skip)
            if not found:
                return []
            if cohort:
                # Every row of the shortlist holds a place that an honest row would otherwise
                # have; its embedding came with it, so a row checked before costs a hash.
                refused = self._refused(conn, found)
                if refused:
                    skip |= refused
                    continue
            scores = self._scores(q, found)
            order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= threshold]
            if cohort:
                return [Match(found[i][0], float(scores[i])) for i in order[:top_k]]
            picked, refused = self._first_bound(conn, [found[i] for i in order], top_k)
            if not refused:
                return [
                    Match(found[i][0], float(scores[i])) for i in order if found[i][0] in picked
                ]
            skip |= refused
            # Twice as deep each time: many planted rows cost a few statements, not one each.
            limit *= 2

    # -- the binding of a row's search columns to its sealed template --------------------------

    def _first_bound(
        self, conn: psycopg.Connection, rows: list[tuple], k: int
    ) -> tuple[set[str], set[str]]:
        """Of candidate ``rows`` (best first), the pids of the first ``k`` that rest on their
        sealed templates, and the pids refused on the way.

        Checks ``k`` rows at a time, so a search opens only the few templates it returns (more
        only when a row fails).
        """
        out: set[str] = set()
        refused: set[str] = set()
        start = 0
        while len(out) < k and start < len(rows):
            chunk = rows[start : start + k - len(out)]
            start += len(chunk)
            bad = self._refused(conn, chunk)
            refused |= bad
            out |= {r[0] for r in chunk if r[0] not in bad}
        return out, refused

    def _refused(self, conn: psycopg.Connection, rows: list[tuple]) -> set[str]:
        """Of candidate ``rows`` (as :meth:`_candidates` returns them, read in the caller's
        snapshot), the pids whose row must not be used (see :meth:`_unbound_of`).

        A row whose embedding is the template this process already opened from the sealed
        value the ledger records for the subject is used without reading its sealed column
        again; only the others are read and opened.
        """
        cal = self._calibration
        vecs = [as_array(r[3]) for r in rows]
        clusters = None
        if cal is not None and not cal.uses_cohort and rows:
            clusters = cal.clusters(np.stack(vecs))
        registry = self.core.registry
        bad: set[str] = set()
        pending: list[str] = []
        for i, row in enumerate(rows):
            pid = row[0]
            if clusters is not None and int(clusters[i]) != int(row[1]):
                self._refuse(pid, UNBOUND_CLUSTER)
                bad.add(pid)
                continue
            cached = self._bound.get(pid)
            state = registry.peek(pid)
            if state is not None and not state.decision(PURPOSE).allowed:
                # The statement excluded revoked subjects: this one's entry is missing.
                if self._forbidden_now(pid):
                    bad.add(pid)
                    continue
                state = registry.peek(pid)
            if (
                cached is not None
                and state is not None
                and cached[0] == state.template_sha256
                and cached[1] == _digest(vecs[i])
            ):
                continue
            pending.append(pid)
        return bad | self._unbound_of(conn, pending)

    def _refuse(self, pid: str, why: str) -> None:
        """Note (and log once) that ``pid``'s row is not used, for reason ``why``."""
        if why in (UNBOUND_EMBEDDING, UNBOUND_CLUSTER, UNBOUND_SEALED):
            if pid not in self._unbound:
                self._unbound.add(pid)
                logger.error(MSG_UNBOUND.format(name=f"{self.names.table}/{pid}", column=why))
        elif why == UNBOUND_LEDGER and pid not in self._behind:
            self._behind.add(pid)
            logger.warning(MSG_BEHIND.format(name=f"{self.names.table}/{pid}"))

    def _unbound_of(self, conn: psycopg.Connection, pids: list[str]) -> set[str]:
        """Of ``pids``, those whose row (read in the caller's snapshot) must not be used.

        A row is used only when its ``embedding`` is, bit for bit, the template its ``sealed``
        column opens to under the subject's key (whose header names the subject and this
        embedder), under a calibration by clusters its ``cluster`` is that template's, and its
        ``sealed`` column is the one the ledger's last ``gallery.enrolled`` event of the subject
        records (not an older template of the subject put back). A database role without the
        project's keys can write neither. A failing row is logged (pid only) and counted in
        :meth:`stats`; a row whose key an erasure under way has just destroyed is left out
        silently; a row behind the ledger (put back, or an enrolment not committed yet) is
        logged as such and not counted.
        """
        if not pids:
            return set()
        if not self.options.hnsw:
            # An exact search turned index scans off for its statements; these rows are read by
            # primary key (else a sequential scan of the whole table per search).
            conn.execute("SET LOCAL enable_indexscan = on")
        rows = conn.execute(
            sql.SQL(
                "SELECT t.pid, t.embedding, t.cluster, t.sealed FROM {t} t WHERE t.pid = ANY(%s)"
            ).format(t=self.names.t),
            (list(pids),),
            binary=True,  # the vectors as float32 bits (parsing their text costs ~0.2 ms each)
        ).fetchall()
        cal = self._calibration
        by_cluster = cal is not None and not cal.uses_cohort
        bad = set(pids) - {r[0] for r in rows}
        for pid, emb, cluster, sealed in rows:
            vec = as_array(emb)
            why = self._binding(pid, vec, bytes(sealed))
            if why is None and by_cluster and int(cal.clusters(vec[None])[0]) != int(cluster):
                why = UNBOUND_CLUSTER
            if why is None:
                self._unbound.discard(pid)
                continue
            bad.add(pid)
            self._refuse(pid, why)
        return bad

    def _binding(self, pid: str, vec: np.ndarray, blob: bytes) -> str | None:
        """Why ``vec`` (the row's ``embedding``) is not the template ``blob`` seals for
        ``pid``, or ``blob`` not the sealed template the ledger last recorded for ``pid``
        (None: both are). Opens ``blob`` once per sealed value (cached by digest)."""
        sealed_hex = hashlib.sha256(blob).hexdigest()
        cached = self._bound.get(pid)
        if cached is None or cached[0] != sealed_hex:
            try:
                template, _ = self._decrypt(pid, blob)
            except KeyDestroyedError:
                # An erasure since this snapshot; a row of no registered subject has no key.
                return UNBOUND_ERASED if self._registered(pid) else UNBOUND_SEALED
            except (InvalidTag, ValueError, TypeError, AttributeError, struct.error):
                # Whatever was written there (a header that is no JSON object included).
                return UNBOUND_SEALED
            if template is None:
                return UNBOUND_SEALED
            if len(self._bound) >= BOUND_CACHE_MAX:
                self._bound.clear()
            cached = (sealed_hex, _digest(template))
            self._bound[pid] = cached
        if cached[1] != _digest(vec):
            return UNBOUND_EMBEDDING
        return None if self._recorded(pid, sealed_hex) else UNBOUND_LEDGER

    def _registered(self, pid: str) -> bool:
        """Whether the ledger knows ``pid`` (read again when this process has not seen it)."""
        registry = self.core.registry
        return registry.peek(pid) is not None or registry.refresh().peek(pid) is not None

    def _recorded(self, pid: str, sealed_hex: str) -> bool:
        """Whether ``sealed_hex`` is the template the ledger last recorded for ``pid``. The ledger
        is read again on a difference: a row enrolled since this process last read it is newer
        than the registry here, never than the ledger (the row commits after its event)."""
        registry = self.core.registry
        state = registry.peek(pid)
        if state is not None and state.template_sha256 == sealed_hex:
            return True
        state = registry.refresh().peek(pid)
        return state is not None and state.template_sha256 == sealed_hex

    def _bound_now(self, pid: str) -> bool:
        """Whether ``pid``'s row rests on its sealed template now (see :meth:`_unbound_of`) and
        the registry allows it (see :meth:`_forbidden_now`)."""
        with self._conn.transaction():
            ok = not self._unbound_of(self._conn, [pid]) and not self._forbidden_now(pid)
        self._repair_revocations()
        return ok

    @_reads
    def verify(self, embedding: np.ndarray, pid: str) -> tuple[bool, float]:
        """As :meth:`Gallery.verify`, scored in the database against ``pid``'s row only."""
        check_pid(pid)
        q = normalize_queries(np.asarray(embedding).reshape(1, -1), self.meta.embedding_dim)[0]
        n = self.names
        with self.lock:
            self.refresh()
            conn = self._conn
            for last in (False, True):
                again = False
                with conn.transaction():
                    # One snapshot: the row scored is the row checked against its sealed template.
                    self._snapshot(conn)
                    row = conn.execute(
                        sql.SQL(
                            "SELECT t.embedding <#> %s, t.cluster, t.embedding FROM {t} t "
                            "WHERE t.pid = %s AND t.model_version = %s AND NOT EXISTS "
                            "(SELECT 1 FROM {r} r WHERE r.pid = t.pid)"
                        ).format(t=n.t, r=n.revoked),
                        (q, pid, self.meta.model_version),
                    ).fetchone()
                    if row is None and not last:
                        # Hidden by a revoked entry the registry does not back? The count of a
                        # moved counter finds it, as for a search: removed, then read again.
                        self._size_in(conn)
                        again = pid in self._suspect
                    elif row is not None and (
                        self._unbound_of(conn, [pid]) or self._forbidden_now(pid)
                    ):
                        row = None
                self._repair_revocations()
                if not again:
                    break
        if row is None:
            raise NotEnrolledError(pid)
        score = -float(row[0])
        cal = self._calibration
        if cal is not None:
            side = cal.sides(as_array(row[2])[None]) if cal.uses_cohort else np.array([row[1]])
            score = float(cal.apply(np.array([score]), cal.sides(q[None]), side)[0])
        return score >= self.threshold, score

    def _pids(self, *, searchable: bool) -> list[str]:
        n = self.names
        query = sql.SQL("SELECT t.pid FROM {t} t").format(t=n.t)
        params: tuple[Any, ...] = ()
        if searchable:
            query = sql.SQL(
                "SELECT t.pid FROM {t} t WHERE t.model_version = %s AND NOT EXISTS "
                "(SELECT 1 FROM {r} r WHERE r.pid = t.pid)"
            ).format(t=n.t, r=n.revoked)
            params = (self.meta.model_version,)
        with self._conn.transaction():
            return sorted(r[0] for r in self._conn.execute(query, params).fetchall())

    @_reads
    def searchable(self) -> list[str]:
        """Pids the shared gallery may return now."""
        with self.lock:
            self.refresh()
            return self._pids(searchable=True)

    @_reads
    def is_searchable(self, pid: str) -> bool:
        """Whether ``pid`` may be returned now."""
        check_pid(pid)
        with self.lock:
            self.refresh()
            return self._row_state(pid)[1] is not None and self._bound_now(pid)

    @_reads
    def stored(self) -> list[str]:
        """Pids with a row (searchable or not)."""
        with self.lock:
            self.refresh()
            return self._pids(searchable=False)

    def _row_state(self, pid: str) -> tuple[str | None, str | None]:
        """(model version of ``pid``'s row or None, ``pid`` when it is searchable else None)."""
        n = self.names
        with self._conn.transaction():
            row = self._conn.execute(
                sql.SQL(
                    "SELECT t.model_version, EXISTS (SELECT 1 FROM {r} r WHERE r.pid = t.pid) "
                    "FROM {t} t WHERE t.pid = %s"
                ).format(t=n.t, r=n.revoked),
                (pid,),
            ).fetchone()
        if row is None:
            return None, None
        ok = row[0] == self.meta.model_version and not row[1]
        return row[0], pid if ok else None

    @_reads
    def status(self, pid: str) -> dict[str, Any]:
        """Gallery state of ``pid``: enrolled (a row exists), searchable (also: its row rests
        on its sealed template), its embedder."""
        check_pid(pid)
        with self.lock:
            self.refresh()
            version, searchable = self._row_state(pid)
            if searchable is None and version == self.meta.model_version:
                # Revoked: by the registry, or by an entry written into the table that it does
                # not back (put right first, as a search would, so that the answer is the
                # registry's and not the table's).
                self._suspect.add(pid)
                self._repair_revocations()
                version, searchable = self._row_state(pid)
            usable = searchable is not None and self._bound_now(pid)
        return {
            "enrolled": version is not None,
            "searchable": usable,
            "template_model_version": version,
        }

    def _sealed(self, pid: str) -> bytes | None:
        with self._conn.transaction():
            row = self._conn.execute(
                sql.SQL("SELECT sealed FROM {t} WHERE pid = %s").format(t=self.names.t), (pid,)
            ).fetchone()
        return bytes(row[0]) if row else None

    @_reads
    def stored_sha256(self, pid: str) -> str:
        """SHA-256 of ``pid``'s template as stored (the sealed column's bytes)."""
        with self.lock:
            blob = self._sealed(pid)
        if blob is None:
            raise NotEnrolledError(pid)
        return hashlib.sha256(blob).hexdigest()

    @_reads
    def template(self, pid: str) -> tuple[np.ndarray, dict[str, Any]]:
        """``pid``'s decrypted template and header, from the sealed column (see
        :meth:`Gallery.template`)."""
        check_pid(pid)
        with self.lock:
            blob = self._sealed(pid)
        if blob is None:
            raise NotEnrolledError(pid)
        try:
            header, header_bytes, body = self._parse(blob)
            if header.get("pid") != pid:
                raise ValueError("template header names another subject")
            plain = open_sealed(self.keys.get(pid), body, aad=MAGIC + header_bytes)
        except KeyDestroyedError:
            raise NotEnrolledError(pid) from None
        except (InvalidTag, ValueError, KeyError):
            raise TemplateFileError(MSG_TAMPERED.format(name=f"{self.names.table}/{pid}")) from None
        return np.frombuffer(plain, dtype="<f4").astype(np.float32), header

    @_reads
    def stats(self) -> dict[str, Any]:
        """Counts only: stored, searchable and stale rows, the embedder and threshold.

        ``tampered``: rows this process found not resting on their sealed template (a search
        vector, cluster or sealed value written into the database without the project's keys)
        and sets aside, as of the searches it ran (a row leaves the count when the ledger names
        its subject again); they still count as searchable, in ``N``. For every row, whatever
        was searched: :meth:`check_templates` (``visage gallery verify``). ``unrecorded``: rows
        revoked because the ledger does not vouch for them (planted rows included).
        ``revoked_removed`` / ``revoked_restored``: revoked entries this process removed because
        the registry does not back them (they hid a consenting subject and lowered ``N``), or
        put back for a row of a subject the registry forbids (see :meth:`_sync`).
        ``change_signal``: the triggers that move the change counter on every write to the
        revoked table, ``ok``, ``restored`` (wrong when this process opened the gallery,
        created again) or ``missing`` (wrong now: missing, disabled or altered).
        """
        n = self.names
        with self.lock:
            self.refresh()
            with self._conn.transaction():
                row = self._conn.execute(
                    sql.SQL(
                        "SELECT count(*), count(*) FILTER (WHERE t.model_version <> %s), "
                        "count(*) FILTER (WHERE r.reason = %s) FROM {t} t "
                        "LEFT JOIN {r} r ON r.pid = t.pid"
                    ).format(t=n.t, r=n.revoked),
                    (self.meta.model_version, REVOKED_UNRECORDED),
                ).fetchone()
            searchable = self._size_in_tx()
            triggers = self._trigger_check()
        stored, stale, unrecorded = (int(x) for x in row) if row else (0, 0, 0)
        return {
            "stored": stored,
            "searchable": searchable,
            "stale": stale,
            "unrecorded": unrecorded,
            "not_searchable": stored - searchable - stale,
            "model_version": self.meta.model_version,
            "embedding_dim": self.meta.embedding_dim,
            "threshold": self.threshold,
            "backend": BACKEND,
            "hnsw": self.options.hnsw,
            "tampered": len(self._unbound),
            "revoked_removed": self._revoked_removed,
            "revoked_restored": self._revoked_restored,
            "change_signal": (
                SIGNAL_MISSING
                if TRIGGER_MISSING in triggers.values()
                else SIGNAL_RESTORED
                if triggers
                else SIGNAL_OK
            ),
        }

    @_reads
    def check_templates(self, *, calibration: Any = None) -> TemplateCheck:
        """Open every row's sealed template and compare it with the row's search columns and
        with the ledger (:mod:`visage_ml.serving.gallery_check`); reads only.

        Parameters
        ----------
        calibration
            The calibration serving applies (default: this gallery's). Clusters are compared
            when it is by clusters (FSN, FairCal) and the table's clusters were computed for it.

        A row found wrong or in flight is read again (a new snapshot, the ledger read again)
        before it is reported, so an enrolment or erasure that committed meanwhile is not.
        """
        cal = calibration if calibration is not None else self._calibration
        report = TemplateCheck(BACKEND)
        with self.lock:
            self.refresh()
            by_cluster = self._clusters_of_table(cal)
            report.clusters_checked = by_cluster is not None
            suspects = self._check_pass(report, None, by_cluster)
            if suspects:
                self._check_pass(report, suspects, by_cluster)
            # What this process's reload (the gallery's opening) repaired, and what disagrees
            # now.
            report.revocations = {**self._revocation_check(), **self._revocation_report}
            report.triggers = self._trigger_check()
        return report

    def _trigger_check(self) -> dict[str, str]:
        """``<relation>.<trigger> -> kind`` of the change-counter triggers that are wrong now
        (:data:`TRIGGER_MISSING`) or were when this process opened the gallery and were created
        again (:data:`TRIGGER_RESTORED`); reads only."""
        with self._conn.transaction():
            now = signal_problems(self._conn, self.names)
        status, then = self._signal
        out = dict.fromkeys(then, TRIGGER_RESTORED) if status == SIGNAL_RESTORED else {}
        return {**out, **dict.fromkeys(now, TRIGGER_MISSING)}

    def _revocation_check(self) -> dict[str, str]:
        """``pid -> kind`` of the rows whose revoked entry disagrees with the registry: present
        for a subject it allows with the template it records, or missing for a subject it
        forbids. The rows are read first, the ledger after (reads only)."""
        n = self.names
        with self._conn.transaction():
            rows = self._conn.execute(
                sql.SQL(
                    "SELECT t.pid, t.template_sha256, r.pid IS NOT NULL FROM {t} t "
                    "LEFT JOIN {r} r ON r.pid = t.pid"
                ).format(t=n.t, r=n.revoked)
            ).fetchall()
        registry = self.core.registry.refresh()
        out: dict[str, str] = {}
        for pid, sha, revoked in rows:
            state = registry.peek(pid)
            if state is None:
                continue  # a row of no subject: the template check names it
            allowed = state.decision(PURPOSE).allowed
            if revoked and allowed and state.template_sha256 == sha:
                out[pid] = REVOKED_UNBACKED
            elif not revoked and not allowed:
                out[pid] = REVOKED_MISSING
        return out

    def _clusters_of_table(self, cal: Any) -> Any:
        """``cal`` when the table's ``cluster`` column was computed for it, else None."""
        if cal is None or cal.identity or cal.uses_cohort:
            return None
        with self._conn.transaction():
            row = self._conn.execute(
                sql.SQL("SELECT calibration FROM {s} WHERE id = 1").format(s=self.names.state)
            ).fetchone()
        return cal if row and row[0] == _calibration_key(cal) else None

    def _check_pass(self, report: TemplateCheck, pids: list[str] | None, cal: Any) -> list[str]:
        """:meth:`check_templates` over every row (``pids`` None) or again over ``pids``;
        returns the pids found wrong or in flight."""
        conn = self._conn
        query = sql.SQL("SELECT pid, model_version, embedding, cluster, sealed FROM {t}").format(
            t=self.names.t
        )
        params: tuple[Any, ...] = ()
        if pids is not None:
            query = sql.Composed([query, sql.SQL(" WHERE pid = ANY(%s)")])
            params = (list(pids),)
        seen: set[str] = set()
        with conn.transaction():
            self._snapshot(conn)
            # The snapshot first, the ledger after: the event of every row in the snapshot is
            # in the ledger as read below (a row commits after its gallery.enrolled event).
            conn.execute("SELECT 1")
            registry = self.core.registry.refresh()
            history = enrolment_history(self.core.ledger.lines_containing((ENROLLED_NEEDLE,)))
            now = ledger_time(self.core.ledger.clock())
            with conn.cursor(name="visage_gallery_check", binary=True) as cur:
                cur.itersize = 512
                cur.execute(query, params)
                for pid, version, emb, cluster, sealed in cur:
                    seen.add(pid)
                    if version != self.meta.model_version:
                        report.stale += pids is None
                        continue
                    report.checked += pids is None
                    verdict = self._row_verdict(
                        pid, as_array(emb), int(cluster), bytes(sealed), cal
                    )
                    if verdict is None:
                        state = registry.peek(pid)
                        if state is None:
                            verdict = UNRECORDED
                        else:
                            sha = hashlib.sha256(bytes(sealed)).hexdigest()
                            verdict = ledger_verdict(
                                sha, state.template_sha256, history.get(pid, []), now
                            )
                    report.record(pid, verdict)
        for pid in set(pids or ()) - seen:
            # Gone since the first pass (an erasure): not reported, not counted.
            report.record(pid, None)
            report.checked -= 1
        return sorted(report.problems) + sorted(report.in_flight)

    def _row_verdict(
        self, pid: str, vec: np.ndarray, cluster: int, blob: bytes, cal: Any
    ) -> str | None:
        """What is wrong with a row's sealed template, embedding or cluster (None: nothing)."""
        try:
            template, _ = self._decrypt(pid, blob)
        except KeyDestroyedError:
            return NO_KEY
        except (InvalidTag, ValueError, TypeError, AttributeError, struct.error):
            return SEALED
        if template is None:
            return SEALED
        if _digest(template) != _digest(vec):
            return EMBEDDING
        if cal is not None and int(cal.clusters(vec[None])[0]) != cluster:
            return CLUSTER
        return None

    # -- changes -------------------------------------------------------------------------------

    def files_of(self, pid: str) -> list[Any]:
        """The project files of ``pid`` that exist (anchor template, gallery key); the rows:
        :func:`subject_rows`."""
        return [p for p in (self.anchor_path(pid), self.keys.path(pid)) if p.is_file()]

    @property
    def keeps_anchors(self) -> bool:
        """True: :meth:`enroll_many` writes anchor files as the in-memory backend does."""
        return True

    def _anchored(self) -> list[str]:
        """Pids with an anchor file (a listing of ``gallery/anchors``; nothing is opened)."""
        return [
            pid
            for pid in listed_pids(self.directory / ANCHORS_DIR, ANCHOR_SUFFIX)
            if PID_RE.fullmatch(pid)
        ]

    def _finish_interrupted_erasures(self) -> None:
        """Remove anchor files whose gallery key is gone: an erasure stopped after its commit
        point (the key), before the anchor (see :meth:`erase`). A key is always created before
        its anchor is written, so no enrolment in progress is taken for one."""
        keyed = set(self.keys.pids())
        for pid in self._anchored():
            if pid in keyed:
                continue
            path = self.anchor_path(pid)
            with file_lock(self._file_lock):
                # Again under the lock: an erasure may just have finished it, an enrolment
                # re-created the key.
                if self.keys.exists(pid) or not path.is_file():
                    continue
                digest = sha256_file(path)
                secure_unlink(path)
            self.core.ledger.append(
                "gallery.removed",
                pid,
                {
                    "anchor_sha256": digest,
                    "reason": "interrupted_erasure_completed",
                    "backend": BACKEND,
                },
            )
            logger.warning("gallery: finished an interrupted erasure (anchor without key removed)")

    @_reads
    def reference(self, pid: str) -> Reference:
        """As :meth:`Gallery.reference`, the template from the sealed column."""
        return super().reference(pid)

    @_writes
    def enroll_many(
        self,
        items: Mapping[str, np.ndarray],
        *,
        model_version: str | None = None,
        keep_anchor: bool = False,
        expect: Mapping[str, Reference] | None = None,
        distinct_at: Callable[[int], float] | None = None,
        match_overridden: bool = False,
    ) -> list[Enrolment]:
        """As :meth:`Gallery.enroll_many`: rows written in one transaction that commits only
        after the ledger records the enrolments (no row the ledger does not vouch for).

        ``distinct_at`` searches the shared table before the write, under this process's lock,
        the gallery's file lock and a lock of the server's (:meth:`_enrolling`): enrolments that
        search are serialised with it across replicas and hosts.

        Unless ``keep_anchor`` (an operator's re-enrolment), each template also becomes the
        subject's anchor file, a row left unchanged included (a subject enrolled before anchors
        were kept gets one), and the ledger records the anchor's SHA-256. The anchor files are
        written before the ledger append and put back as they were when the append or the
        commit fails. ``expect`` is compared with the rows as locked (``FOR UPDATE``) in the
        transaction and the anchor files under the gallery's file lock.
        """
        if model_version is not None and model_version != self.meta.model_version:
            raise GalleryVersionError(
                MSG_REBUILD.format(found=model_version, expected=self.meta.model_version)
            )
        dim = self.meta.embedding_dim
        vectors: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for pid, e in items.items():
            vectors[check_pid(pid)] = template_of(e, dim)
            counts[pid] = int(np.asarray(e).reshape(-1, dim).shape[0])
        with self.lock:
            self.refresh()
            registry = self.core.registry
            for pid in vectors:
                decision = registry.may_process(pid, PURPOSE)
                if not decision.allowed:
                    raise EnrolmentRefusedError(pid, decision.reason)
            results: list[Enrolment] = []
            events: list[tuple[str, str | None, Mapping[str, Any]]] = []
            undo: list[tuple[Any, bytes | None]] = []
            conn = self._conn
            try:
                with file_lock(self._file_lock), self._enrolling(distinct_at is not None):
                    if distinct_at is not None:
                        self._refuse_matches(vectors, distinct_at)
                    with conn.transaction():
                        self._enroll_rows(
                            conn,
                            vectors,
                            counts,
                            keep_anchor,
                            results,
                            events,
                            undo,
                            expect=expect,
                            match_overridden=match_overridden,
                        )
            except BaseException:
                self._undo(undo)
                raise
            if events:
                # This process's own read of the new events must not revoke what it just wrote.
                self.refresh()
                self._unbound.difference_update(r.pid for r in results if r.changed)
        return results

    @contextlib.contextmanager
    def _enrolling(self, searched: bool) -> Iterator[None]:
        """With ``searched``: a session advisory lock of the server's held from the search for
        a matching face to the commit, so that replicas on other hosts (whose file locks this
        one's does not see) cannot both find nobody and both write one face under two pids.
        Waited for as long as serving's lock timeout allows (enrolments hold it for a search
        and a write); released when the connection ends, were this process to die."""
        if not searched:
            yield
            return
        conn, key = self._conn, f"{self.names.table}$enrol"
        with conn.transaction():  # a session lock: it outlasts the statement's transaction
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                    conn.rollback()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))

    def _enroll_rows(
        self,
        conn: psycopg.Connection,
        vectors: Mapping[str, np.ndarray],
        counts: Mapping[str, int],
        keep_anchor: bool,
        results: list[Enrolment],
        events: list[tuple[str, str | None, Mapping[str, Any]]],
        undo: list[tuple[Any, bytes | None]],
        *,
        expect: Mapping[str, Reference] | None = None,
        match_overridden: bool = False,
    ) -> None:
        """:meth:`enroll_many` inside its transaction: the rows, the anchor files (their old
        bytes noted in ``undo``) and the ledger append; ``results`` and ``events`` filled in."""
        n = self.names
        registry = self.core.registry
        # The write's lock first: a row lock read (FOR UPDATE) before it would hold the table
        # while waiting for the write's lock behind an erasure's copy (pg_swap), whose swap then
        # waits for this transaction: a deadlock that PostgreSQL ends by failing one of them.
        conn.execute(sql.SQL("LOCK TABLE {t} IN ROW EXCLUSIVE MODE").format(t=n.t))
        old = {
            r[0]: (bytes(r[1]), as_array(r[2]))
            for r in conn.execute(
                sql.SQL(
                    "SELECT pid, sealed, embedding FROM {t} WHERE pid = ANY(%s) FOR UPDATE"
                ).format(t=n.t),
                (list(vectors),),
            ).fetchall()
        }
        for pid, ref in (expect or {}).items():
            self._check_unchanged(ref, old[pid][0] if pid in old else None, registry.peek(pid))
        rows = []
        for pid, vec in vectors.items():
            prev = old[pid][0] if pid in old else None
            state = registry.peek(pid)
            if prev is not None and state is not None:
                digest = hashlib.sha256(prev).hexdigest()
                # Unchanged only if the search vector is the sealed template too: enrolling
                # again must repair a row whose embedding was written over in the table.
                same = self._same_template(pid, prev, vec) and np.array_equal(old[pid][1], vec)
                if state.template_sha256 == digest and same:
                    if not keep_anchor:
                        # A subject enrolled before anchors were kept (or recorded) gets one here.
                        anchor = self._write_anchor(pid, vec, counts[pid], undo)
                        if state.anchor_sha256 != anchor:
                            events.append(
                                anchored_event(pid, anchor, model_version=self.meta.model_version)
                            )
                    results.append(Enrolment(pid, digest, counts[pid], True, changed=False))
                    continue
            if not self.keys.exists(pid):  # a first enrolment undone leaves no key
                undo.append((self.keys.path(pid), None))
            blob = self._seal(pid, self.keys.get(pid, create=True), vec, counts[pid])
            anchor = None if keep_anchor else self._write_anchor(pid, vec, counts[pid], undo)
            digest = hashlib.sha256(blob).hexdigest()
            rows.append(
                (
                    pid,
                    self.meta.model_version,
                    vec,
                    self._cluster_of(vec),
                    blob,
                    digest,
                    counts[pid],
                )
            )
            results.append(Enrolment(pid, digest, counts[pid], prev is not None))
            events.append(
                enrolled_event(
                    pid,
                    digest,
                    model_version=self.meta.model_version,
                    replaced=prev is not None,
                    anchor_sha256=anchor,
                    matched_enrolled=match_overridden,
                )
            )
        if not events:
            return
        if rows:
            self._upsert(conn, rows)
        # The ledger first: a failed append rolls the rows back (and the anchors, the caller).
        self.core.ledger.append_many(events)

    def _upsert(self, conn: psycopg.Connection, rows: list[tuple]) -> None:
        """Write enrolled ``rows`` (and reinstate them for every replica) in ``conn``'s
        transaction."""
        n = self.names
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {t} (pid, model_version, embedding, cluster, sealed,"
                    " template_sha256, n_images) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (pid) DO UPDATE SET model_version ="
                    " EXCLUDED.model_version, embedding = EXCLUDED.embedding,"
                    " cluster = EXCLUDED.cluster, sealed = EXCLUDED.sealed,"
                    " template_sha256 = EXCLUDED.template_sha256,"
                    " n_images = EXCLUDED.n_images, enrolled = now()"
                ).format(t=n.t),
                rows,
            )
            cur.execute(
                sql.SQL("DELETE FROM {r} WHERE pid = ANY(%s) AND reason <> %s").format(r=n.revoked),
                ([r[0] for r in rows], REVOKED_ERASED),
            )
        _bump(conn, n)

    @_erases
    def erase(self, pid: str, *, reason: str = ERASURE_REASON) -> Removal:
        """Remove ``pid`` for good: revoked and deleted for every replica, key destroyed.

        The row's removal from the database files (``VACUUM FULL``, WAL) is
        :func:`purge_physically`, run by the erasure after this.

        Order: the row is revoked and deleted (every replica stops returning it), the key file
        is destroyed (the commit point: the sealed column and the anchor file are unreadable from
        here on, in every copy), then the anchor file is overwritten and unlinked. A crash after
        the key leaves an anchor without a key, which the next :meth:`reload` removes.

        Returns
        -------
        Removal
            ``pgvector:<table>/<pid>.tpl`` and ``.embedding`` with their SHA-256 before
            deletion, the key file, the anchor file and a memory gallery's template left from
            before the switch to pgvector; empty when the subject had nothing in the gallery.
        """
        check_pid(pid)
        root = self.paths.root
        removed: dict[str, str] = {}
        with self.lock:
            rows = subject_rows(self.options.dsn, pid, table=self.names.table)
            with file_lock(self._file_lock):
                anchor = self.anchor_path(pid)
                anchor_hash = sha256_file(anchor) if anchor.is_file() else None
                with self._conn.transaction():
                    # The erasure waits for its locks (a purge in progress, an enrolment of
                    # the subject), whatever serving's lock timeout.
                    self._conn.execute("SET LOCAL lock_timeout = 0")
                    _revoke_delete(self._conn, self.names, pid)
                self._bound.pop(pid, None)
                self._unbound.discard(pid)
                key_path = self.keys.path(pid)
                self._key_sought(pid)
                keys = self.keys.destroy_files(pid, erasure=reason == ERASURE_REASON)
                key_hash = keys.get(key_path)
                removed.update((_rel(p, root), h) for p, h in keys.items())
                if anchor_hash is not None:
                    secure_unlink(anchor)
                    removed[_rel(anchor, root)] = anchor_hash
                # The memory gallery's template of a project since switched to pgvector
                # (docs/deploy.md): unreadable without the key, and gone with it all the same.
                legacy = template_path(self.paths.gallery, pid)
                if legacy.is_file():
                    removed[_rel(legacy, root)] = sha256_file(legacy)
                    secure_unlink(legacy)
            removed.update(rows)
            if removed:
                self.core.ledger.append(
                    "gallery.removed",
                    pid,
                    {
                        "template_sha256": rows.get(
                            artefact_name(self.names.table, pid, SEALED_SUFFIX)
                        ),
                        "anchor_sha256": anchor_hash,
                        "key_sha256": key_hash,
                        "reason": reason,
                        "backend": BACKEND,
                    },
                )
        return Removal(pid, removed)

    def purge_physically(self) -> PurgeReport:
        """:func:`purge_physically` on this gallery's table."""
        return purge_physically(
            self.options.dsn, table=self.names.table, memory_mb=self.options.purge_memory_mb
        )

    def purge_without_basis(self) -> list[Removal]:
        """As :meth:`Gallery.purge_without_basis`, over the shared table's rows and the anchor
        files (one whose row is gone, left by an enrolment killed before its commit, too)."""
        registry = self.core.registry
        out = []
        with self.lock:
            self._finish_interrupted_erasures()
            for pid in sorted(set(self.stored()) | set(self._anchored())):
                if registry.may_process(pid, PURPOSE).reason in NO_BASIS_REASONS:
                    out.append(self.erase(pid, reason="no_legal_basis"))
        return out
