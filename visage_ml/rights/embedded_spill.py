"""Where what is read inside a file is held: a member up to
:data:`~visage_ml.rights.embedded.EMBED_MAX` in memory, while what members the process holds
stays under :data:`MEMORY_MAX`; one larger, or beyond that, hashed as it streams and copied to
an unnamed file of :data:`~visage_ml.rights.embedded.SPILL_DIR` to be looked inside from there
(:func:`_stream`); a database copied to a named one, which SQLite needs (:func:`_database`).
The result is the same wherever it is held; the memory of a scan stays bounded."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from visage_ml.io import CHUNK
from visage_ml.rights import embedded
from visage_ml.rights.embedded import SizeFilter, _Budget

# Archive members held in memory to be looked inside, every scan of the process together (each
# level of nesting, in each scan thread, held one): one beyond is copied to an unnamed file of
# SPILL_DIR and looked inside from there, with the same result (a file of nested archives of
# 60 MiB made the scan hold 480 MiB a thread, 3 GB at once).
MEMORY_MAX = 256 << 20


class _Memory:
    """What is left of :data:`MEMORY_MAX`, taken by a member before it is read into memory."""

    def __init__(self) -> None:
        self.used = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self.lock:
            if self.used + n > MEMORY_MAX:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self.lock:
            self.used -= n


_MEMORY = _Memory()


def _spilling(do: Callable[[], Any]) -> Any:
    """``do()``, an OSError of the spilled file (made, written, flushed) as
    :class:`~visage_ml.rights.embedded.NotSpilled`."""
    try:
        return do()
    except OSError as exc:
        raise embedded.NotSpilled from exc


def _close(spill: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        spill.close()


def _stream(
    stream: IO[bytes], size: int | None, sizes: SizeFilter | None, depth: int, budget: _Budget
):
    """A member as it streams: looked inside when small enough, else only hashed (and not
    even read when its size and first bytes show it can be nothing sought). What is read
    (decompressed) is spent from ``budget``."""
    head = stream.read(embedded.SNIFF)
    budget.spend(len(head))
    what = embedded.kind(head)
    unsought = size is not None and sizes is not None and not sizes.may_match(size)
    if unsought and what is None:
        return
    # Nothing looked inside (a photograph, the last level): hashed as it streams.
    looked = what if depth < embedded.DEPTH else None
    held = embedded.EMBED_MAX + 1 if size is None else min(size, embedded.EMBED_MAX) + 1
    large = size is not None and size > embedded.EMBED_MAX
    if looked is None or large or (looked in embedded.STREAMED and not _MEMORY.take(held)):
        yield from _streamed(stream, head, looked, sizes, depth, budget)
        return
    try:
        data = head + stream.read(embedded.EMBED_MAX + 1 - len(head))
        budget.spend(len(data) - len(head))
        if len(data) <= embedded.EMBED_MAX:
            yield from embedded._part(data, sizes, depth, budget)
            return
        # Larger than it said (a compressed stream says nothing): from a file, as one is.
        yield from _streamed(stream, data, looked, sizes, depth, budget)
    finally:
        if looked in embedded.STREAMED:
            _MEMORY.give(held)


def _streamed(
    stream: IO[bytes],
    head: bytes,
    what: str | None,
    sizes: SizeFilter | None,
    depth: int,
    budget: _Budget,
) -> Iterator[str]:
    """A member, ``head`` read already, hashed as it streams (as
    :func:`~visage_ml.rights.embedded._part` would); one of a kind looked inside (``what``: an
    archive, a table, a pickle... too large to hold, or with no memory left to hold it) is
    copied to an unnamed file of :data:`~visage_ml.rights.embedded.SPILL_DIR` as it streams,
    and looked inside from there (:func:`~visage_ml.rights.embedded.inside_large`), whatever
    its size.

    Raises
    ------
    NotSpilled
        When that file cannot be written.
    """
    h, n = hashlib.sha256(head), len(head)
    whole = head  # the member's bytes while no more than a key's (a stream may give them in pieces)
    with contextlib.ExitStack() as stack:
        spill = None
        if what is not None:
            spill = _spilling(lambda: tempfile.TemporaryFile(dir=embedded.SPILL_DIR))  # noqa: SIM115
            # Closed by the stack; its close flushes what was not read back (passed over as too
            # small): lost with it.
            stack.callback(_close, spill)
            _spilling(lambda: spill.write(head))
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            budget.spend(len(chunk))
            h.update(chunk)
            n += len(chunk)
            if n <= embedded.KEY_SIZE:
                whole += chunk
            if spill is not None:
                _spilling(lambda c=chunk: spill.write(c))
        if n == embedded.KEY_SIZE:  # tested against the keys sought, as a part of that size is
            yield from embedded._digest(whole, sizes)
            return
        if n < embedded.smallest_sought(sizes) and head[:2] not in embedded.EXPANDS_PAIRS:
            embedded.passed_over(sizes, n)
            return
        if sizes is None or sizes.may_match(n):
            yield h.hexdigest()
        if spill is not None and what is not None:
            _spilling(spill.flush)  # a full disk says so here
            spill.seek(0)
            yield from embedded.inside_large(
                spill, what, sizes=sizes, depth=depth + 1, budget=budget
            )


def _database(fh: IO[bytes], sizes: SizeFilter | None) -> Iterator[str]:
    """A database too large to hold, open as ``fh`` at its start (an archive's member, a git
    blob or a remote's object, spilled to an unnamed file): SQLite opens only a file by its
    name, so it is copied to a named one of :data:`~visage_ml.rights.embedded.SPILL_DIR`, read
    table by table (read-only, immutable) and removed. Were the process killed, the copy left
    is in the project, where the next scan finds it (it was only hashed, what it held passed as
    looked at).

    Raises
    ------
    NotSpilled
        When the copy cannot be written.
    """
    from visage_ml.rights import embedded_db

    with contextlib.ExitStack() as stack:
        named = _spilling(
            lambda: stack.enter_context(
                tempfile.NamedTemporaryFile(dir=embedded.SPILL_DIR, prefix="scan-", suffix=".db")
            )
        )
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            _spilling(lambda c=chunk: named.write(c))
        _spilling(named.flush)
        yield from embedded_db.inside_path(Path(named.name), sizes=sizes)
