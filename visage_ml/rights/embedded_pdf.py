"""What a PDF's streams hold, decoded: an ASCII85-encoded one (:func:`_a85`: reportlab writes a
JPEG so by default) and one deflated first (:func:`_flates`: an attached file's exact bytes, a
JPEG ``[/FlateDecode /DCTDecode]``), inflated a part at a time as it is read. What they decode
to is read as an archive's member is (:func:`~visage_ml.rights.embedded.inside`); each byte of
the PDF is decoded once at most."""

from __future__ import annotations

import base64
import contextlib
import re
import zlib
from collections.abc import Iterator

from visage_ml.rights.embedded_mapping import Buffer, _find, _let_go
from visage_ml.rights.embedded_text import B64_MIN

# A PDF stream's start, and what may follow it ASCII85-encoded (reportlab writes a JPEG so by
# default): the alphabet, ``z`` (four zero bytes) and white space, to ``~>``.
PDF_STREAM = re.compile(rb"stream\r?\n")
A85_RUN = re.compile(rb"[!-uz\s]*")
A85_END = b"~>"
# A PDF stream's keyword after its dictionary (its line break a CR alone for some writers), to
# its ``endstream`` (:func:`_flates`); the dictionary from the ``obj`` that opens it, so far back
# at most, names its filters: deflated first, ``/Filter /FlateDecode`` or ``/Filter
# [/FlateDecode /DCTDecode]``.
PDF_STREAM_AT = re.compile(rb">>\s*stream(?:\r\n|\n|\r)")
PDF_END, PDF_OBJ, PDF_FILTER = b"endstream", b"obj", b"/Filter"
PDF_FLATE = re.compile(rb"/Filter\s*(?:\[\s*)?/FlateDecode(?![^\s/\[\]<>()%])")
PDF_DICT_BACK = 64 << 10
# Deflated data is fed to zlib so much at a time (:class:`_Inflated`).
INFLATE_IN = 64 << 10
# ASCII85 is decoded so many groups at a time (:func:`_a85decode`): Python's decoder holds some
# 90 bytes a character it decodes at once.
A85_GROUPS = re.compile(rb"(?:z|[!-u]{5}){1,65536}")
A85_SPACE = re.compile(rb"\s+")


def _a85(data: bytes) -> Iterator[bytes]:
    """What each ASCII85-encoded stream of a PDF decodes to (a JPEG, as reportlab writes it by
    default). A run of the alphabet is read once, whatever ``stream`` words lie within it
    (reading from each to the run's end was quadratic); it is the last of them that the
    encoded stream begins after (an uncompressed content stream and the dictionary that
    follows it are of the alphabet too)."""
    at = 0
    while (m := PDF_STREAM.search(data, at)) is not None:
        run = A85_RUN.match(data, m.end())
        end = run.end() if run is not None else m.end()
        at = max(end, m.end())
        _let_go(data, m.start())
        if data[end : end + len(A85_END)] != A85_END:  # a mapped file has no startswith
            continue
        *_, last = PDF_STREAM.finditer(data, m.start(), end)
        start = last.end() + 2 if data[last.end() : last.end() + 2] == b"<~" else last.end()
        if end - start >= B64_MIN:
            with contextlib.suppress(ValueError):
                yield _a85decode(data[start:end])


class _Inflated:
    """A deflated PDF stream's content (``data[start:end]``), inflated as it is read
    (:func:`~visage_ml.rights.embedded_spill._stream` reads it as an archive's member):
    ``read(n)`` gives ``n`` bytes, fewer where the deflate data ends or breaks (what it gave
    until then is what a reader shows). Fed :data:`INFLATE_IN` bytes at a time and never asked
    more than ``n`` out: a deflate bomb is spent from the budget a part at a time, not held."""

    def __init__(self, data: Buffer, start: int, end: int) -> None:
        self.data, self.at, self.end = data, start, end
        self.z = zlib.decompressobj()
        self.tail = b""
        self.done = False

    def read(self, n: int) -> bytes:
        out: list[bytes] = []
        got = 0
        while got < n and not self.done:
            if not self.tail:
                if self.at >= self.end:
                    break
                stop = min(self.at + INFLATE_IN, self.end)
                self.tail = bytes(self.data[self.at : stop])
                _let_go(self.data, self.at)
                self.at = stop
            try:
                part = self.z.decompress(self.tail, n - got)
            except zlib.error:
                self.done = True
                break
            self.tail = self.z.unconsumed_tail
            self.done = self.z.eof
            out.append(part)
            got += len(part)
        return b"".join(out)


def _flates(data: Buffer) -> Iterator[_Inflated]:
    """Each stream of a PDF whose dictionary names ``/FlateDecode`` as its first filter (an
    attached file, ``/EmbeddedFile``: its exact bytes; a JPEG ``[/FlateDecode /DCTDecode]``),
    to be inflated as it is read. A stream runs from its ``stream`` keyword to the
    ``endstream`` after it, and the walk goes on from there: each byte is inflated once at
    most (``stream`` keywords within deflated data, each inflated to the file's end, made it
    quadratic). Its dictionary is what lies before the keyword, from the ``obj`` that opens it
    (:data:`PDF_DICT_BACK` at most)."""
    at = 0
    while (m := PDF_STREAM_AT.search(data, at)) is not None:
        _let_go(data, m.start())
        end = _find(data, PDF_END, m.end())
        end = end if end >= 0 else len(data)
        back = max(at, m.start() - PDF_DICT_BACK)
        opened = data.rfind(PDF_OBJ, back, m.start())
        head = bytes(data[max(back, opened) : m.start()])
        at = max(end + len(PDF_END), m.end())
        named = head.rfind(PDF_FILTER)
        if named >= 0 and PDF_FLATE.match(head, named):
            yield _Inflated(data, m.end(), end)


def _a85decode(encoded: bytes) -> bytes:
    """:func:`base64.a85decode` of ``encoded`` (white space in it ignored), a part of
    :data:`A85_GROUPS` at a time: in memory of about twice what it decodes to (a stream of
    ``z``, four zero bytes a character, held 6 GB for a PDF of 64 MiB decoded at once).

    Raises
    ------
    ValueError
        When ``encoded`` is no ASCII85.
    """
    text = A85_SPACE.sub(b"", encoded)
    parts, at = [], 0
    while (m := A85_GROUPS.match(text, at)) is not None:
        parts.append(base64.a85decode(m[0]))
        at = m.end()
    parts.append(base64.a85decode(text[at:]))
    return b"".join(parts)
