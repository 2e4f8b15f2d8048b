"""UTF-16 texts, read as the UTF-8 texts they decode to.

Windows PowerShell 5.1's ``>`` and ``Out-File`` write UTF-16LE with a byte order mark (``echo
$key > key.txt``), as Notepad's "Unicode" does, and Excel's "Unicode text" export is a UTF-16LE
CSV: a key or a photograph's base64 printed there is a NUL every other byte, which no UTF-8
text's reader finds. A file beginning with a mark (``FF FE`` little-endian, ``FE FF``
big-endian) and text after it (:func:`codec`) is told a text of its own kind
(:data:`~visage_ml.rights.embedded.UTF16`), decoded whole when held (:func:`utf8_of`) or a
window at a time from its file (:class:`Utf8Reader`), and read as a UTF-8 text is
(:mod:`~visage_ml.rights.embedded_text`). A run cut out of it is cut from the text it decodes
to exactly, and that written back in its byte order with its mark (:func:`utf16_of`): UTF-16
and UTF-8 spell the same characters, so what is not cut comes back byte for byte. A text
without a mark is told one only where its first bytes are UTF-16LE of printable ASCII
(:func:`_unmarked`: Python's ``encode("utf-16-le")``), and written back without one.
"""

from __future__ import annotations

import codecs
import string
from typing import IO

# Each byte order mark and the codec of the text after it.
BOMS = ((b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
# What tells a text: its first bytes, as many as the scan sniffs.
HEAD = 4096
# A text without a mark: UTF-16LE of printable ASCII, at least so many characters.
UNMARKED_MIN = 8
_ASCII = string.printable.encode()


def _unmarked(first: bytes) -> bool:
    """Whether ``first`` begins a UTF-16LE text without a mark: printable ASCII (white space
    too, no NUL), each character's second byte NUL (a last byte cut off let go)."""
    first = first[: len(first) & ~1]
    low, high = first[0::2], first[1::2]
    return len(low) >= UNMARKED_MIN and not high.strip(b"\x00") and not low.translate(None, _ASCII)


def _order(first: bytes) -> tuple[bytes, str] | None:
    """The mark (b"" for none) and the codec of a text beginning with ``first``, by its mark or
    :func:`_unmarked`; None when neither."""
    for bom, name in BOMS:
        if first.startswith(bom):
            return bom, name
    return (b"", "utf-16-le") if _unmarked(first) else None


def codec(first: bytes) -> str | None:
    """The codec of the UTF-16 text beginning with ``first``: its mark, then characters, none a
    NUL (UTF-32LE's mark begins as UTF-16LE's, then a NUL) nor a lone surrogate (nearly any
    bytes after a mark decode to characters but for those: one in 32 of their units is a
    surrogate; one later in the text, a file name Windows let hold one, is read past and
    written back), its last possibly cut off where ``first`` ends, or no mark
    (:func:`_unmarked`); None when it is none."""
    if (order := _order(first)) is None:
        return None
    mark, name = order
    try:
        text = codecs.getincrementaldecoder(name)().decode(first[len(mark) :], False)
    except UnicodeDecodeError:
        return None
    return name if text and "\x00" not in text else None


def _order_of(data: bytes) -> tuple[bytes, str]:
    """:func:`_order` of ``data``, a UTF-16 text (:func:`codec`)."""
    order = _order(bytes(data[:HEAD]))
    if order is None:
        raise ValueError("no UTF-16 text")
    return order


def utf8_of(data: bytes, *, exact: bool = False) -> bytes:
    """The UTF-8 of the UTF-16 text ``data`` (its mark first, not kept). ``exact``: every code
    unit as it is (a lone surrogate too, to be written back as it was: :func:`utf16_of`),
    raising :class:`UnicodeDecodeError` where it is no UTF-16 (an odd byte at its end); else
    such bytes read as U+FFFD, as any reader of the text shows them."""
    mark, name = _order_of(data)
    errors = "surrogatepass" if exact else "replace"
    text = bytes(data[len(mark) :]).decode(name, errors)
    return text.encode("utf-8", "surrogatepass")


def utf16_of(utf8: bytes, like: bytes) -> bytes:
    """``utf8`` (from :func:`utf8_of` ``exact``) as a UTF-16 text in the byte order of the text
    ``like``, its mark first where it has one."""
    mark, name = _order_of(like)
    return mark + utf8.decode("utf-8", "surrogatepass").encode(name, "surrogatepass")


class Utf8Reader:
    """The UTF-16 text file ``fh`` (at its start) read as the UTF-8 it decodes to, as
    :func:`utf8_of` gives it: ``read(n)`` decodes the next ``n`` bytes of the file (a character
    cut off at their end with the next), at most 1.5 times as many bytes of UTF-8."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self._head = fh.read(HEAD)
        mark, name = _order_of(self._head)
        self._head = self._head[len(mark) :]
        self._decoder = codecs.getincrementaldecoder(name)("replace")

    def read(self, n: int) -> bytes:
        """The UTF-8 of the next ``n`` bytes of the file (or a few more); b"" at its end."""
        while True:
            raw, self._head = self._head + self.fh.read(max(0, n - len(self._head))), b""
            text = self._decoder.decode(raw, not raw)
            if text or not raw:
                return text.encode("utf-8", "surrogatepass")
