"""An erased subject's key printed (``key.hex()``, ``base64.b64encode(key)``) and then pickled
within a string: a ``str`` or ``bytes`` value of Python 3, a ``str`` or ``unicode`` one of Python
2, with any protocol, the key alone or among other text (:func:`_printed_keys`).

The text reader finds a printed key by its run of letters, no longer than a key's
(:func:`~visage_ml.rights.embedded_text._keys`). In a pickle the string's opcode, its length or
the memo's put after it are often letters themselves and lengthen that run: an UNICODE line's
``V`` (protocol 0, Python 2's default), the length 43 of a SHORT_BINUNICODE, SHORT_BINBYTES or
SHORT_BINSTRING (``+``), 68 (``D``, a hex digit: ``key.hex() + ".bin"``), a BINPUT's ``q``
after a BINUNICODE of protocol 1 to 3 (``"key=" + `` unpadded base64). So the pickle's opcodes
are walked (:func:`_strings`, as :mod:`pickletools` reads them: each argument's size, a string's
text skipped, not read) and each string's own text is searched for runs as the text reader
searches a text, where it meets a run of a key's length at least (:func:`_letter_runs`, found
first: a pickle of numbers or random bytes holds none and is not walked); a pickle held in
another's value has no text read at all, and is searched so too."""

from __future__ import annotations

import pickletools
from collections.abc import Callable, Iterator

from visage_ml.rights import embedded, embedded_text
from visage_ml.rights.embedded_mapping import Buffer, _let_go

# The fewest letters a printed key is (base64 without its padding), in a row of the text
# reader's class (letters, digits, ``+/_-`` and a backslash: :data:`embedded_text._RUN_CLASS`).
KEY_CHARS = embedded_text.KEY_CHARS
_LEAD = b"\x01" * KEY_CHARS
# How far past a run its padding may reach (``=`` or ``==``, not of the class).
_PAD = 2
# The window its mask is made of at a time, and what a run's end is looked for in past it:
# small, so that a mapped file is read in bounded memory (its bytes and its mask copied).
_WINDOW = 1 << 18

# Each opcode's argument, as pickletools describes it: its size in bytes (>= 0), a line (-1),
# or a count of so many little-endian bytes before it (-2: one, -3: four signed, -4: four, -5:
# eight); the opcodes whose argument is a string's text (and a GLOBAL's or INST's two lines).
_COUNTED = {-2: (1, False), -3: (4, True), -4: (4, False), -5: (8, False)}
_TEXTS = {
    "STRING",
    "UNICODE",
    "BINSTRING",
    "SHORT_BINSTRING",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
    "BINBYTES",
    "SHORT_BINBYTES",
    "BINBYTES8",
    "BYTEARRAY8",
}
_ARGS: dict[int, tuple[int, int, bool]] = {
    ord(op.code): (
        op.arg.n if op.arg is not None else 0,
        2 if op.arg is not None and op.arg.name == "stringnl_noescape_pair" else 1,
        op.name in _TEXTS,
    )
    for op in pickletools.opcodes
}


def _letter_runs(data: Buffer) -> Iterator[tuple[int, int]]:
    """Each run of :data:`KEY_CHARS` letters at least of the text reader's class in ``data``,
    in order: found in a mask of the bytes (``bytes.find`` over ``bytes.translate``), a window
    of :data:`_WINDOW` at a time (a mapped file's pages let go of behind it), its end looked for
    past the window where it goes on."""
    size, at = len(data), 0
    while at < size:
        stop = min(at + _WINDOW, size)
        mask = bytes(data[at : min(stop + KEY_CHARS, size)]).translate(embedded_text._RUN_CLASS)
        found, end = mask.find(_LEAD), stop
        while 0 <= found < stop - at:
            start = at + found
            gap = mask.find(b"\x00", found + KEY_CHARS)
            end = at + gap if gap >= 0 else _run_end(data, at + len(mask))
            yield start, end
            found = mask.find(_LEAD, end - at) if end < stop else -1
        _let_go(data, stop)
        at = max(stop, end)


def _run_end(data: Buffer, at: int) -> int:
    """Where the run of the text reader's class going on at ``at`` ends."""
    size = len(data)
    while at < size:
        piece = bytes(data[at : at + _WINDOW]).translate(embedded_text._RUN_CLASS)
        gap = piece.find(b"\x00")
        if gap >= 0:
            return at + gap
        at += len(piece)
    return size


def _strings(data: Buffer, at: int, until: int) -> Iterator[tuple[int, int]]:
    """The span of each string's text of :data:`KEY_CHARS` bytes at least that the pickles
    from ``at`` hold (one after another: a STOP, then the next), walked opcode by opcode to the
    first byte that is none or an argument cut off, or to ``until``: an opcode's argument of
    its size skipped, a line's found; a STRING's line with its quotes, a line's end without
    its CR (Python 2's, written on Windows in text mode)."""
    size, find, args = len(data), data.find, _ARGS
    while at < min(size, until):
        how = args.get(data[at])
        if how is None:
            return
        n, lines, text = how
        at += 1
        if n >= 0:
            at += n
        elif n == -1:
            for _ in range(lines):
                end = find(b"\n", at)
                if end < 0:
                    return
                if text and end - at >= KEY_CHARS:
                    yield at, end - (data[end - 1] == 0x0D)
                at = end + 1
        else:
            width, signed = _COUNTED[n]
            count = int.from_bytes(data[at : at + width], "little", signed=signed)
            at += width
            if count < 0 or at + count > size:
                return
            if text and count >= KEY_CHARS:
                yield at, at + count
            at += count


def _printed_keys(
    data: Buffer, sizes: embedded.SizeFilter | None, depth: int, budget: embedded._Budget
) -> Iterator[str]:
    """:func:`~visage_ml.rights.embedded._part` of each key sought that ``data``, a pickle (or
    pickles one after another; a ``.npy`` file's object array after its header), holds printed
    within a string: where a run of a key's length at least lies (:func:`_letter_runs`; none:
    the pickle is not walked), each string's text it meets (:func:`_strings`) is searched there
    for runs as the text reader searches a text (its runs, each key they may hold decoded:
    :func:`~visage_ml.rights.embedded_text._keys`), so that no byte of an opcode, a length or
    a memo's put joins one, and tested (:func:`~visage_ml.rights.embedded.key_test`, asked at
    the first: a pickle holding none leaves the scan cache no note). Only the text within a run
    is copied; the walk stops past the last run."""
    runs = list(_letter_runs(data))
    if not runs:
        return
    test: Callable[[bytes], bool] | None = None
    asked = False
    i, count = 0, len(runs)
    for first, last in _strings(data, embedded._npy_pickle(data), runs[-1][1]):
        _let_go(data, first)
        while i < count and runs[i][1] <= first:  # both in order: the runs it is past
            i += 1
        for j in range(i, count):
            start, end = runs[j]
            if start >= last:
                break
            a, b = max(start, first), min(end, last)
            if b - a < KEY_CHARS:
                continue
            # one run of the class (no line break is of it), and its padding where it has one
            piece = bytes(data[a : min(b + _PAD, last)])
            n = b - a
            n += piece.startswith(b"=", n) + piece.startswith(b"==", n)
            for _, raw in embedded_text._keys(piece, 0, n):
                if not asked:
                    test, asked = embedded.key_test(sizes), True
                if test is None:
                    return
                if test(raw):
                    yield from embedded._part(raw, sizes, depth, budget)
