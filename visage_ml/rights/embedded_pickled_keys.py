"""An erased subject's key printed (``key.hex()``, ``base64.b64encode(key)``) and then pickled as
a string: a ``str`` or ``bytes`` value of Python 3, a ``str`` or ``unicode`` one of Python 2,
with any protocol (:func:`_printed_keys`).

The text reader finds a printed key by its run of letters, no longer than a key's
(:func:`~visage_ml.rights.embedded_text._keys`). In a pickle the string's opcode, its length or
the memo's put after it are often letters themselves and lengthen that run: an UNICODE line's
``V`` (protocol 0, Python 2's default), the length 43 of a SHORT_BINUNICODE, SHORT_BINBYTES or
SHORT_BINSTRING (``+``), a BINPUT's ``q`` after a BINUNICODE of protocol 1 to 3. So each such
string is found by its opcode, and only those of a printed key's length (43 or 44 letters of
base64, 64 hex digits) and alphabet are decoded and tested against the keys sought, as the text
reader tests its runs; a pickle held in another's value has no text read at all."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from visage_ml.rights import embedded, embedded_text
from visage_ml.rights.embedded_mapping import Buffer

# A printed key's text, and its length as the byte a pickle writes before it (the first of four
# or eight little-endian for the longer opcodes: :func:`_lengthed`): unpadded base64 (43,
# ``+``), padded (44, ``,``), hex (64, ``@``); of the standard or the URL-safe alphabet
# (embedded_text._decoded tells which, or none).
_B64 = rb"[A-Za-z0-9+/_-]{43}"
_HEX = rb"[0-9A-Fa-f]{64}"


def _lengthed(opcode: bytes, width: int) -> re.Pattern[bytes]:
    """``opcode`` followed by a length of ``width`` bytes that is a printed key's, and that
    many letters of its alphabet (group 1, 2 or 3): found by the opcode's byte, the rest a
    lookahead tried where it lies."""
    pad = b"\\x00" * (width - 1)
    return re.compile(
        re.escape(opcode) + rb"(?=\+%s(%s)|,%s(%s=)|@%s(%s))" % (pad, _B64, pad, _B64, pad, _HEX)
    )


# Where each kind of pickle holds a string, and how far past its opcode its text may reach:
# protocol 0's UNICODE line (``V``, Python 3's ``str`` and its ``bytes``' latin-1 string,
# Python 2's ``unicode``), Python 2's STRING (``S'``, its repr: a key's text has nothing to
# escape), each to its line's end (``\r\n`` where Python 2 wrote it on Windows in text mode);
# BINUNICODE (``X``: protocols 1 to 3, ``str`` and ``bytes``' latin-1 string alike),
# SHORT_BINSTRING (``U``: Python 2's ``str`` of protocols 1 and 2), SHORT_BINBYTES (``C``:
# ``bytes`` of protocol 3 and up), SHORT_BINUNICODE (``\x8c``: ``str`` of 4 and up),
# BYTEARRAY8 (``\x96``: a ``bytearray`` of protocol 5; of 3 and 4, its ``bytes``).
_REACH = 1 + 8 + 64 + 3
UNICODE_LINE = re.compile(rb"V(?=(%s=?|%s)\r?\n)" % (_B64, _HEX))
STRING_LINE = re.compile(rb"S'(?=(%s=?|%s)'\r?\n)" % (_B64, _HEX))
BINUNICODE = _lengthed(b"X", 4)
SHORT_BINSTRING = _lengthed(b"U", 1)
SHORT_BINBYTES = _lengthed(b"C", 1)
SHORT_BINUNICODE = _lengthed(b"\x8c", 1)
BYTEARRAY8 = _lengthed(b"\x96", 8)
# The opcodes a pickle of each protocol holds its strings with (one of 0 or 1, told by its
# first opcodes: both, as the old reader reads them).
OLD = (UNICODE_LINE, STRING_LINE, BINUNICODE, SHORT_BINSTRING)
BY_PROTOCOL = {
    2: (BINUNICODE, SHORT_BINSTRING),
    3: (BINUNICODE, SHORT_BINBYTES),
    4: (SHORT_BINUNICODE, SHORT_BINBYTES),
    5: (SHORT_BINUNICODE, SHORT_BINBYTES, BYTEARRAY8),
}


def heads(protocols: set[int] | None) -> tuple[re.Pattern[bytes], ...]:
    """The strings' opcodes to look for in a pickle of ``protocols`` (None: of 0 or 1), each
    once."""
    if protocols is None:
        return OLD
    found = (head for p in sorted(protocols) for head in BY_PROTOCOL.get(p, ()))
    return tuple(dict.fromkeys(found))


def _printed_keys(
    data: Buffer,
    protocols: set[int] | None,
    sizes: embedded.SizeFilter | None,
    depth: int,
    budget: embedded._Budget,
) -> Iterator[str]:
    """:func:`~visage_ml.rights.embedded._part` of each key sought that ``data``, a pickle of
    ``protocols`` (None: of 0 or 1), holds printed as a string (:func:`heads`): each string of
    a printed key's length and alphabet decoded (:func:`~visage_ml.rights.embedded_text._keys`)
    and tested (:func:`~visage_ml.rights.embedded.key_test`, asked at the first: a pickle
    holding none leaves the scan cache no note). One pass over ``data`` an opcode, a mapped
    file a window at a time (:func:`~visage_ml.rights.embedded._heads`); a string's text is
    copied only where it is one."""
    test: Callable[[bytes], bool] | None = None
    asked = False
    for head in heads(protocols):
        for at in embedded._heads(data, head, _REACH):
            m = head.match(data, at)
            if m is None or m.lastindex is None:
                continue
            text = m.group(m.lastindex)
            for _, raw in embedded_text._keys(text, 0, len(text)):
                if not asked:
                    test, asked = embedded.key_test(sizes), True
                if test is None:
                    return
                if test(raw):
                    yield from embedded._part(raw, sizes, depth, budget)
