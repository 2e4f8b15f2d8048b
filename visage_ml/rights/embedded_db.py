"""Files held in a SQLite database: what :mod:`visage_ml.rights.embedded` reads of one.

A photograph's bytes end up in a database as often as in an archive: ``sqlite3`` or pandas'
``to_sql`` with a BLOB column, a labelling tool's ``project.db`` with each task's image base64
in a TEXT column, a notebook's cache. The file never holds such a value whole once it is
larger than a page (SQLite splits it over overflow pages, a page number before each piece), so
it is read as a database: every table (WITHOUT ROWID ones, and a virtual table's shadow tables,
which hold what it holds), every stored column, whatever its declared type (SQLite keeps any
value in any column). A BLOB is taken as a part is (hashed, and looked inside: a zip in a
BLOB); a TEXT as a part and for its base64 runs, as a Parquet table's strings are.

What is read is never written: a file is opened read-only and immutable (no journal, no
``-wal`` or ``-shm`` made beside it, nothing waited on), bytes in memory (an archive's member,
a git object) are deserialized, and either connection only queries. Tables are read by the
names the database's own schema gives, each quoted (a table named ``x"; DROP TABLE y; --`` is
one table), rows streamed through a cursor. A value that cannot matter (shorter than anything
sought, not compressed, no base64 run of a compressed file in it) is passed over in SQLite, its
row never made into Python's (a table of a log's hex ids). A value larger than
:data:`~visage_ml.rights.embedded.EMBED_MAX` is not held in memory: a BLOB or TEXT of a rowid
table is hashed as it streams (:meth:`sqlite3.Connection.blobopen`), not looked inside.

Not shown clean (:class:`NotRead`): a database that cannot be read to its end (damaged,
encrypted, not one though it begins as one), and a value too large to hold that cannot be
streamed (a WITHOUT ROWID table's, a TEXT SQLite reports too large). Not looked inside: what a
``-wal`` file beside the database holds that is not yet checkpointed into it, and rows deleted
but still in freed pages (until ``VACUUM``): neither is in a table any more.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from visage_ml.io import CHUNK
from visage_ml.rights import embedded
from visage_ml.rights.embedded import B64_EXPANDS, SizeFilter, _Budget, _part, _runs

# Bytes 18 and 19 of the header: 2 for a database in WAL mode. SQLite's in-memory files cannot
# hold a WAL, so a copy in memory is read as a rollback-journal database (the same pages).
WAL_FLAGS_AT = 18
ROLLBACK_FLAGS = b"\x01\x01"
# Names a rowid can be selected by (a column of the same name hides it).
ROWID_NAMES = ("_rowid_", "rowid", "oid")
# Columns a SELECT returns that are stored (PRAGMA table_xinfo ``hidden``): 0 an ordinary one,
# 3 a STORED generated one. 1 is a virtual table's hidden column, 2 a VIRTUAL generated one,
# computed by an expression of the file (not read: it holds nothing the others do not).
STORED = (0, 3)
# How the schema says a table is virtual, or has no rowid (taken for one that has none when a
# default's text says so: its large values are then not shown clean, never passed over).
VIRTUAL = re.compile(rb"\s*CREATE\s+VIRTUAL\s", re.IGNORECASE)
WITHOUT_ROWID = re.compile(rb"WITHOUT\s+ROWID", re.IGNORECASE)


class NotRead(embedded.TooLarge):
    """A database not read to its end (damaged, encrypted, or a value too large to hold that
    cannot be streamed): nothing it holds is shown clean, as a bomb's is
    (:class:`~visage_ml.rights.embedded.TooLarge`, so every caller that stops on one stops on
    this)."""


def _quoted(name: str) -> str:
    """``name`` as an SQL identifier: in double quotes, each one in it doubled."""
    return '"' + name.replace('"', '""') + '"'


def _guarded(con: sqlite3.Connection) -> sqlite3.Connection:
    """``con`` as the reader uses it: queries only, no function the file's schema names run,
    no value larger than :data:`~visage_ml.rights.embedded.EMBED_MAX` loaded, text as the
    bytes stored (a TEXT that is not UTF-8 is read, not refused)."""
    con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, embedded.EMBED_MAX)
    con.execute("PRAGMA query_only = ON")
    con.execute("PRAGMA trusted_schema = OFF")
    con.execute("PRAGMA cell_size_check = ON")
    con.text_factory = bytes
    return con


def _tables(con: sqlite3.Connection) -> list[tuple[str, bool]]:
    """The tables of the database, by name, and whether each is WITHOUT ROWID: ordinary ones
    and a virtual table's shadow tables (the virtual table itself, whose module may not be
    here, is read through them). From the schema table, which every SQLite version has."""
    rows = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
    return [
        (name.decode(), bool(WITHOUT_ROWID.search(sql or b"")))
        for name, sql in rows
        if not VIRTUAL.match(sql or b"")
    ]


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    """The stored columns of ``table`` (its name bound, never pasted into the query)."""
    rows = con.execute(
        "SELECT name, hidden FROM pragma_table_xinfo(?) ORDER BY cid", (table,)
    ).fetchall()
    return [name.decode() for name, hidden in rows if hidden in STORED]


def _streamed(
    con: sqlite3.Connection,
    table: str,
    column: str,
    rowid: int,
    sizes: SizeFilter | None,
    budget: _Budget,
) -> Iterator[str]:
    """The SHA-256 of a value too large to hold, read as it streams (as an archive's member of
    that size is: hashed, not looked inside)."""
    with con.blobopen(table, column, rowid, readonly=True) as blob:
        n = len(blob)
        budget.spend(n)
        if sizes is not None and not sizes.may_match(n):
            return
        h = hashlib.sha256()
        for chunk in iter(lambda: blob.read(CHUNK), b""):
            h.update(chunk)
    yield h.hexdigest()


def _worth(q: str) -> str:
    """When the value of the column ``q`` (quoted) may hold something sought, as SQL: a BLOB or
    TEXT (its bytes) no shorter than anything sought (``:below``), or that begins as a
    compressed file does (it may hold more than itself), or that may hold a base64 run
    beginning as one does (:data:`~visage_ml.rights.embedded.B64_EXPANDS`). The rules of
    :func:`~visage_ml.rights.embedded._part` and of a short text's runs, loosened, so that a
    table of short values (a log's hex ids, names, labels) is passed over in SQLite, its rows
    never made into Python's."""
    b = f"CAST({q} AS BLOB)"
    first = ", ".join(f"X'{base64.b64decode(p + b'==').hex()}'" for p in sorted(B64_EXPANDS))
    runs = " OR ".join(f"instr({b}, X'{p.hex()}') > 0" for p in sorted(B64_EXPANDS))
    return (
        f"typeof({q}) IN ('blob', 'text') AND (length({b}) >= :below "
        f"OR substr({b}, 1, 1) IN ({first}) "
        f"OR (length({b}) >= {embedded.B64_MIN} AND ({runs})))"
    )


def _values(
    con: sqlite3.Connection,
    table: str,
    without_rowid: bool,
    sizes: SizeFilter | None,
    depth: int,
    budget: _Budget,
) -> Iterator[str]:
    """What each BLOB and TEXT of ``table`` holds, its rows streamed."""
    columns = _columns(con, table)
    if not columns:
        return
    named = {c.lower() for c in columns}
    rowid = None if without_rowid else next((r for r in ROWID_NAMES if r not in named), None)
    picked, wanted = [], []
    for c in columns:
        q = _quoted(c)
        too_large = f"typeof({q}) = 'blob' AND length({q}) > {embedded.EMBED_MAX}"
        worth = _worth(q)
        # Each value that may matter (:func:`_worth`), but a BLOB too large to hold: NULL, its
        # length beside it. Numbers are never loaded, and a row of nothing else never returned.
        picked.append(f"CASE WHEN {too_large} THEN NULL WHEN {worth} THEN {q} END")
        picked.append(f"CASE WHEN {too_large} THEN length({q}) END")
        wanted.append(f"({too_large}) OR ({worth})")
    head = f"{rowid}, " if rowid is not None else ""
    sql = (
        f"SELECT {head}{', '.join(picked)} FROM {_quoted(table)} "  # noqa: S608
        f"WHERE {' OR '.join(wanted)}"
    )
    below = embedded.smallest_sought(sizes)
    # Values shorter than anything sought are passed over in SQLite, unseen here: the longest
    # such may be one byte short of it (a later scan seeking smaller reads this file again).
    embedded.passed_over(sizes, below - 1)
    for row in con.execute(sql, {"below": below}):
        key, cells = (row[0], row[1:]) if rowid is not None else (None, row)
        for i, column in enumerate(columns):
            value, large = cells[2 * i], cells[2 * i + 1]
            if large is not None:
                if key is None:  # no rowid to stream it by: not looked at, not shown clean
                    raise NotRead
                yield from _streamed(con, table, column, key, sizes, budget)
                continue
            if not value:
                continue
            budget.spend(len(value))
            yield from _part(value, sizes, depth, budget)
            if (
                embedded.B64_MIN <= len(value) < below
                and embedded.kind(value[: embedded.SNIFF]) == embedded.TEXT
            ):
                # Too short to be sought itself (so not looked inside by _part): its base64.
                for _, raw in _runs(value, sizes):
                    yield from _part(raw, sizes, depth, budget)


def _read(
    con: sqlite3.Connection, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What every table of the open database holds (:func:`_values`), ``depth`` deep."""
    try:
        _guarded(con)
        for table, without_rowid in _tables(con):
            yield from _values(con, table, without_rowid, sizes, depth, budget)
    # Damaged, encrypted, a value too large, a name that is not UTF-8: not shown clean.
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise NotRead from exc
    finally:
        con.close()


def inside_db(
    data: bytes, *, sizes: SizeFilter | None = None, depth: int = 0, budget: _Budget
) -> Iterator[str]:
    """The SHA-256 of each file the database ``data`` (bytes in memory) holds in a BLOB, or
    base64 in a TEXT (:func:`embedded.inside` for :data:`~visage_ml.rights.embedded.SQLITE`).

    Raises
    ------
    TooLarge
        What it holds expands beyond what its size allows (``budget``); :class:`NotRead`
        when it could not be read to its end.
    """
    if data[WAL_FLAGS_AT : WAL_FLAGS_AT + 2] == b"\x02\x02":
        data = data[:WAL_FLAGS_AT] + ROLLBACK_FLAGS + data[WAL_FLAGS_AT + 2 :]
    con = sqlite3.connect(":memory:")
    try:
        con.deserialize(data)
    except sqlite3.Error as exc:
        con.close()
        raise NotRead from exc
    yield from _read(con, sizes, depth, budget)


def inside_path(path: Path, *, sizes: SizeFilter | None = None) -> Iterator[str]:
    """:func:`inside_db` for the database file at ``path``, whatever its size: opened
    read-only and immutable, so nothing is written beside it or in it.

    Raises
    ------
    TooLarge
        As :func:`inside_db`.
    OSError
        When the file cannot be opened.
    """
    budget = _Budget(path.stat().st_size)
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise NotRead from exc
    yield from _read(con, sizes, 0, budget)
