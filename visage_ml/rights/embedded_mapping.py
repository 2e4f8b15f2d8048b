"""What the walks inside a file read (:data:`Buffer`): its bytes held, or, too large to hold, the
file mapped read-only (:class:`_Map`, :func:`~visage_ml.rights.embedded.mapped`), read as bytes
are, the system paging it in as a walk goes and the pages behind it let go of
(:func:`_let_go`): a file of gigabytes is walked in memory of a few times :data:`LET_GO`."""

from __future__ import annotations

import mmap


class _Map(mmap.mmap):
    """A file too large to hold, mapped read-only
    (:func:`~visage_ml.rights.embedded.inside_large`): the walks read it as they read bytes
    (find, slices, regular expressions), the system pages it in as they go, and what lies
    behind them is let go of (:func:`_let_go`)."""

    behind = 0  # what is let go of: up to here (page-aligned)


# What the walks read: bytes held, or a file mapped.
Buffer = bytes | _Map
# A mapped file's pages behind a walk are let go of this much at a time (each a system call),
# and a search for a signature goes this far at a time, so that it lets go of them too.
LET_GO = 16 << 20


def _let_go(data: Buffer, before: int) -> None:
    """A mapped file's pages before ``before`` are read no more: out of the process's memory
    (they are the file's, unchanged: read again, if ever, from it). Nothing for bytes."""
    if not isinstance(data, _Map) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if before < data.behind:  # a walk from the start again: it reads them anew
        data.behind = 0
    if before - data.behind >= LET_GO:
        upto = before - before % mmap.PAGESIZE
        data.madvise(mmap.MADV_DONTNEED, data.behind, upto - data.behind)
        data.behind = upto


def _find(data: Buffer, magic: bytes, start: int) -> int:
    """``data.find(magic, start)``; over a mapped file :data:`LET_GO` at a time, letting go of
    what it passed (a signature may be a gigabyte on, or nowhere)."""
    if not isinstance(data, _Map):
        return data.find(magic, start)
    size = len(data)
    while start < size:
        stop = min(start + LET_GO, size)
        at = data.find(magic, start, min(stop + len(magic) - 1, size))
        if at >= 0:
            return at
        start = stop
        _let_go(data, start)
    return -1
