"""The stores outside the project's folder that it has written personal data to, remembered.

``params.yaml`` says where the project writes *now*; an erasure must reach where it *ever*
wrote. A project that enrolled into a pgvector gallery and went back to
``serving.gallery.backend: memory`` (or renamed ``serving.gallery.table``) leaves that table in
PostgreSQL, each row a template in clear; one that tracked to an MLflow server and went back to
SQLite leaves its runs there. So the first time the project creates or opens a gallery table,
or tracks to a server, the store is recorded in the signed ledger (a ``store.remembered``
entry, before anything is written there) and added to ``.visage/stores.json`` (git-ignored,
0600, written atomically under a lock). The stores remembered are those of either, less those a
later ``store.forgotten`` entry let go: the file alone is not the record, since an operator who
deleted or edited it would otherwise take a table of templates out of every later erasure's
reach, while the ledger is witnessed and cannot lose an entry unseen. The erasure plans its
pgvector and MLflow-server steps for every store remembered as well as for the configured one
(:mod:`visage_ml.rights.erasure.preflight` stops it before anything is erased while one cannot
be reached, and first records in the ledger a store the file alone knew). A store left before
this version remembered stores is not known.

An entry names a store by its identity (``pgvector:<host>:<port>/<database>/<table>``,
``mlflow-server:<uri>``) and keeps how to reach it without any secret: a PostgreSQL connection
string without its password (the erasure takes the password from the configured DSN,
``$VISAGE_GALLERY_DSN`` or the stack's ``secrets/stack.json`` when one names the same server,
else from libpq's ``PGPASSWORD`` / ``.pgpass``), an MLflow URI without credentials. A store
decommissioned with its data is forgotten with ``visage stack forget STORE``, which the
ledger records.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_text, file_lock, lines_containing, private_dir
from visage_ml.stack.proc import StackError

log = logging.getLogger(__name__)

STATE_FILE = Path(".visage") / "stores.json"
LOCK_FILE = Path(".visage") / "locks" / "stores.lock"
REMEMBERED = "store.remembered"
FORGOTTEN = "store.forgotten"
# How the ledger's canonical JSON spells those types (its keys sorted, no spaces).
_NEEDLES = (b'"type":"store.remembered"', b'"type":"store.forgotten"')
PGVECTOR = "pgvector"
MLFLOW_SERVER = "mlflow-server"
# What of a libpq connection string is kept: where the server is and how to talk to it, never
# a password (nor a passfile, a service file or an SSL key: they hold or lead to secrets).
PG_KEPT = ("host", "hostaddr", "port", "dbname", "user", "sslmode")

MSG_UNKNOWN = (
    "{store} is not a store this project remembers; `visage stack stores` lists them "
    "(copy the name from there)"
)
MSG_UNREADABLE = (
    "{path} cannot be read ({why}): it lists the stores outside the project that hold personal "
    "data, which every erasure must reach. Restore it from a backup of the project, or remove "
    "it: the stores the ledger recorded are reached without it (one this file alone listed, "
    "from a version before the ledger recorded stores, is then no longer known)"
)


_MEMO: dict[str, tuple[tuple[int, int, int], dict[str, Any], frozenset[str]]] = {}
_MEMO_LOCK = threading.Lock()
_FIELDS = ("store", "kind", "since", "conninfo", "table", "uri")  # of RememberedStore

# Appends one signed ledger entry (event type, payload) and returns it: the privacy core's,
# handed down by the caller (this layer sits below the ledger's).
Recorder = Callable[[str, Mapping[str, Any]], Any]

MSG_LEDGER = (
    "{path} cannot be read ({why}): its store entries say which stores outside the project "
    "hold personal data. Run `visage privacy verify-ledger` and restore the ledger from a "
    "backup"
)


class StoresError(StackError):
    """The list of remembered stores cannot be read, or names no such store."""


@dataclass(frozen=True)
class RememberedStore:
    """One store the project wrote personal data to (no secret in any field).

    Attributes
    ----------
    store
        Its identity, as messages and the ledger name it.
    kind
        ``pgvector`` or ``mlflow-server``.
    since
        When the project first wrote to it (UTC, ISO 8601).
    conninfo, table
        pgvector: the connection string without password, and the gallery table.
    uri
        mlflow-server: the tracking URI without credentials.
    """

    store: str
    kind: str
    since: str
    conninfo: str = ""
    table: str = ""
    uri: str = ""


def _path(paths: ProjectPaths) -> Path:
    return paths.root / STATE_FILE


def _from_file(paths: ProjectPaths) -> list[RememberedStore]:
    path = _path(paths)
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return [RememberedStore(**item) for item in doc["stores"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoresError(MSG_UNREADABLE.format(path=path, why=type(exc).__name__)) from None


def _from_ledger(paths: ProjectPaths) -> tuple[dict[str, RememberedStore], set[str]]:
    """(the stores the ledger remembers, by identity; those it forgot since) in its order.

    The lines are taken as they stand: the ledger's signatures and witnessed checkpoints are
    the privacy core's to check (every erasure opens one). A line of either type that does not
    read as a store stops the reading, as an unreadable file does.

    Raises
    ------
    StoresError
        A store line of the ledger cannot be read.
    """
    try:
        st = os.stat(paths.ledger)
    except FileNotFoundError:
        return {}, set()
    # An erasure asks several times (preflight, each step's targets) and a long ledger takes
    # a while to search: the answer is kept while the file is the same inode, size and mtime
    # (the ledger is only appended to; a rewrite in place is the privacy core's to catch).
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    key = str(paths.ledger)
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
    if hit is not None and hit[0] == stamp:
        return dict(hit[1]), set(hit[2])
    known: dict[str, RememberedStore] = {}
    forgotten: set[str] = set()
    for line in lines_containing(paths.ledger, _NEEDLES):
        try:
            obj = json.loads(line)
            kind = obj.get("type")
            if kind not in (REMEMBERED, FORGOTTEN):
                continue  # the words inside another entry's payload
            payload = obj["payload"]
            store = str(payload["store"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            why = f"a store entry does not read: {type(exc).__name__}"
            raise StoresError(MSG_LEDGER.format(path=paths.ledger, why=why)) from None
        if kind == REMEMBERED:
            fields = {k: str(payload.get(k, "")) for k in _FIELDS}
            known[store] = RememberedStore(**fields)
            forgotten.discard(store)
        else:
            forgotten.add(store)
    with _MEMO_LOCK:
        _MEMO[key] = (stamp, dict(known), frozenset(forgotten))
    return known, forgotten


def remembered(paths: ProjectPaths, *, kind: str | None = None) -> list[RememberedStore]:
    """The stores remembered for the project (of ``kind`` only, when given), oldest first:
    those of the ledger and of ``.visage/stores.json``, less those the ledger forgot since.

    Raises
    ------
    StoresError
        The file exists but cannot be read: an erasure must not go on as if it listed nothing.
    """
    known, forgotten = _from_ledger(paths)
    found = dict(known)
    for item in _from_file(paths):
        found.setdefault(item.store, item)
    items = sorted((s for s in found.values() if s.store not in forgotten), key=lambda s: s.since)
    return [s for s in items if kind is None or s.kind == kind]


def unrecorded(paths: ProjectPaths) -> list[RememberedStore]:
    """The stores ``.visage/stores.json`` lists that the ledger never recorded (written by a
    version that kept the file alone): :func:`record_unrecorded` puts them in the ledger."""
    known, forgotten = _from_ledger(paths)
    return [s for s in _from_file(paths) if s.store not in known and s.store not in forgotten]


def record_unrecorded(paths: ProjectPaths, record: Recorder) -> list[RememberedStore]:
    """Record in the ledger every store only the file knew (see :func:`unrecorded`)."""
    with file_lock(paths.root / LOCK_FILE):
        found = unrecorded(paths)
        for item in found:
            record(REMEMBERED, asdict(item))
    return found


def _write(paths: ProjectPaths, items: list[RememberedStore]) -> None:
    private_dir(_path(paths).parent)
    doc = {"stores": [asdict(s) for s in items]}
    atomic_write_text(_path(paths), json.dumps(doc, indent=2) + "\n", mode=0o600)


def remember(paths: ProjectPaths, entry: RememberedStore, *, record: Recorder) -> bool:
    """Remember ``entry`` unless its store is remembered already; True if it was added.

    ``record`` signs the ``store.remembered`` entry in the ledger first, so that the file never
    lists a store the ledger does not."""
    if any(s.store == entry.store for s in remembered(paths)):
        return False  # the common case (every open of a gallery): no lock, no write
    with file_lock(paths.root / LOCK_FILE):
        known, forgotten = _from_ledger(paths)
        items = [s for s in _from_file(paths) if s.store != entry.store]
        if entry.store in known and entry.store not in forgotten:
            entry = known[entry.store]  # the file was lost or edited: the ledger restores it
            added = False
        else:  # never remembered, or forgotten since (whatever an old copy of the file says)
            record(REMEMBERED, asdict(entry))
            added = True
        _write(paths, [*items, entry])
    if added:
        log.info("the project now remembers the store %s for its erasures", entry.store)
    return added


def forget(paths: ProjectPaths, store: str, *, record: Recorder) -> tuple[RememberedStore, Any]:
    """Let ``store`` go from the remembered ones, recorded first in the ledger by ``record``
    (a ``store.forgotten`` entry); return it and what ``record`` returned.

    Raises
    ------
    StoresError
        No such store is remembered.
    """
    with file_lock(paths.root / LOCK_FILE):
        known = {s.store: s for s in remembered(paths)}
        if store not in known:
            raise StoresError(MSG_UNKNOWN.format(store=store))
        recorded = record(FORGOTTEN, to_dict(known[store]))
        _write(paths, [s for s in _from_file(paths) if s.store != store])
    return known[store], recorded


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- PostgreSQL --------------------------------------------------------------------------------


def pg_parts(dsn: str) -> dict[str, str]:
    """The kept fields (:data:`PG_KEPT`) of a libpq connection string (URI or key=value)."""
    from psycopg.conninfo import conninfo_to_dict  # heavy optional dependency: pgvector only

    parts = conninfo_to_dict(dsn)
    return {k: str(parts[k]) for k in PG_KEPT if parts.get(k) not in (None, "")}


def pg_server(dsn: str) -> tuple[str, str, str]:
    """(host, port, database) of ``dsn``, as libpq defaults them: which server and database."""
    parts = pg_parts(dsn)
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    return host, parts.get("port") or "5432", parts.get("dbname") or parts.get("user") or ""


def pgvector_id(dsn: str, table: str) -> str:
    """The identity of gallery ``table`` on the server of ``dsn`` (no user, no password)."""
    host, port, dbname = pg_server(dsn)
    return f"{PGVECTOR}:{host}:{port}/{dbname}/{table}"


def remember_pgvector(paths: ProjectPaths, *, dsn: str, table: str, record: Recorder) -> bool:
    """Remember gallery ``table`` on the server of ``dsn`` (its password left out)."""
    from psycopg.conninfo import make_conninfo  # heavy optional dependency: pgvector only

    entry = RememberedStore(
        store=pgvector_id(dsn, table),
        kind=PGVECTOR,
        since=_now(),
        conninfo=make_conninfo("", **pg_parts(dsn)),
        table=table,
    )
    return remember(paths, entry, record=record)


# -- MLflow ------------------------------------------------------------------------------------


def without_credentials(uri: str) -> str:
    """``uri`` without a user or password in its authority (nor a query or fragment)."""
    parts = urlsplit(uri.rstrip("/"))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def mlflow_id(uri: str) -> str:
    """The identity of the MLflow tracking server at ``uri``."""
    return f"{MLFLOW_SERVER}:{without_credentials(uri)}"


def remember_mlflow_server(paths: ProjectPaths, uri: str, *, record: Recorder) -> bool:
    """Remember the MLflow tracking server at ``uri`` (its credentials left out)."""
    clean = without_credentials(uri)
    entry = RememberedStore(store=mlflow_id(uri), kind=MLFLOW_SERVER, since=_now(), uri=clean)
    return remember(paths, entry, record=record)


def to_dict(store: RememberedStore) -> dict[str, Any]:
    """What ``visage stack stores`` shows and the ledger records of a store."""
    out: dict[str, Any] = {"store": store.store, "kind": store.kind, "since": store.since}
    if store.table:
        out["table"] = store.table
    return out
