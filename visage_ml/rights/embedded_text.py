"""Base64 texts a file holds (:func:`_runs`): a photograph pasted into a notebook's HTML export
as a ``data:`` URL, into a JSON or CSV field, a mail's attachment. A run of the alphabet
(either: the standard one or the URL-safe one, padded or not, its slashes escaped as JSON may
write them), wrapped in lines or not, or two wrapped back to back, each decoded to the bytes it
holds; in memory of a few times the text's size, in time linear in it. A text file, a
pickle's or an array's strings, a table's short values and a database's TEXT are read so
(:mod:`visage_ml.rights.embedded`, :mod:`visage_ml.rights.embedded_db`). In every run, however
short, a key as an operator prints one (64 hex digits, base64 of 32 bytes) is decoded and
tested against the keys sought (:func:`_keys`), and yielded only when it is one; so is each
bytes literal of 32 bytes, as Python prints a key (:func:`_literals`), each run of 32 hex
pairs joined by one separator (:func:`_paired`), each list of 32 numbers (:func:`_numbered`),
and a key file as a hex viewer shows it (:func:`_wrapped`, :func:`_dumped`)."""

from __future__ import annotations

import ast
import base64
import binascii
import collections
import contextlib
import functools
import itertools
import json
import re
import string
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence

from visage_ml.io import CHUNK
from visage_ml.rights import embedded
from visage_ml.rights.embedded import SizeFilter

# A base64 run: at least 64 characters (no photograph is shorter), possibly wrapped in lines
# (``base64`` wraps at 76); its last line as short as it is. Of either alphabet (the standard
# one, or the URL-safe one's ``-`` and ``_`` for ``+`` and ``/``: a JWT's, a web API's), and
# with a backslash: JSON's escaped line breaks and escaped slash (PHP's ``json_encode`` writes
# ``/`` as ``\/``), told from other escapes by :func:`_lines`. A backslash is a letter of the
# class rather than ``\\/`` an alternative: an alternation is read several times slower.
B64_RUN = re.compile(rb"[A-Za-z0-9+/_\\-]{16,}(?:\r?\n[A-Za-z0-9+/_\\-]+)*={0,2}")
# What a run must begin with (:data:`B64_RUN`): so many bytes of its class in a row, found in a
# mask of the bytes first (``bytes.find`` over ``bytes.translate``: the expression tried at each
# byte of a pickle or an array took 14 s a gigabyte, where runs are few).
_RUN_LEAD = 16
_RUN_CLASS = bytes(
    1 if chr(b) in string.ascii_letters + string.digits + "+/_\\-" else 0 for b in range(256)
)
# Where a run ends, in that mask with a line feed as 3 and a carriage return as 2: at a byte of
# no run, a carriage return not before a line feed and a letter, or a line feed not before a
# letter (what :data:`B64_RUN` reads, without its repeated group: the expression held a
# dozen bytes a line of a run to go back to, 100 MB for a text of 8 MB of short lines).
_RUN_MASK = bytes({0x0D: 2, 0x0A: 3}.get(b, c) for b, c in enumerate(_RUN_CLASS))
_RUN_STOP = re.compile(rb"\x00|\x02(?!\x03\x01)|\x03(?!\x01)")
B64_MIN = 64
# The widest line a wrapper gives (``base64``, MIME: 76; PEM: 64).
WRAP_MAX = 76
# Within a run holding a backslash: a line break, "\n" or "\r\n", itself or escaped (group 1),
# or a backslash that is no escape a base64 text holds (``\"``, ``\t``, ``\u00e9``), which
# ends one base64 text; ``\/`` is a slash.
B64_BREAKS = re.compile(rb"(\r?\n|(?:\\r)?\\n)|\\(?!/)")
# The URL-safe alphabet's letters, read as the standard one's.
URLSAFE = bytes.maketrans(b"-_", b"+/")
# How a file begins (a photograph, an archive, an array: :func:`~visage_ml.rights.embedded.kind`
# and the image formats), in base64's decoded bytes: a wrapped run of full lines is split where
# one begins (two photographs wrapped back to back, the first ending on a full line, are one run
# of lines).
FILE_START = re.compile(
    rb"\x89PNG\r\n\x1a\n|\xff\xd8\xff|GIF8[79]a|RIFF....WEBP|II\*\x00|MM\x00\*|PK\x03\x04|"
    rb"\x1f\x8b\x08|\xfd7zXZ\x00|BZh[1-9]1AY&SY|\x93NUMPY|%PDF-|PAR1",
    re.DOTALL,
)
# The first bytes those begin with: the lines of a run that may begin a file are found at once.
FILE_FIRST = re.compile(rb"[\x89\xffGRIMP\x1f\xfdB\x93%]")
# A key once unwrapped (:data:`~visage_ml.rights.embedded.KEY_SIZE` bytes) as an operator prints
# it: 64 hex digits (``key.hex()``), no more in a row (a SHA-512 is no key); base64, 43 letters
# of either alphabet and its padding (``base64.b64encode(key)``), no more in a row, a JSON
# string's escaped line break before it (a notebook's stream output) counted as none. Looked for
# in every run of the alphabet (:func:`_keys`), however short: base64 of a key is shorter than
# :data:`B64_MIN`.
HEX_KEY = re.compile(rb"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")
B64_KEY = re.compile(
    rb"(?:(?<![A-Za-z0-9+/_\\-])|(?<=\\[nrt]))[A-Za-z0-9+/_-]{43}(?:=|(?![A-Za-z0-9+/_=-]))"
)
KEY_CHARS = 43
# A key DER-wrapped as PKCS#8 and raw-key tools print it (between PEM lines, or alone): an ASN.1
# OCTET STRING of its 32 bytes (``04 20``, then them), 34 bytes, base64 of 46 letters and its
# padding.
DER_KEY = b"\x04\x20"
DER_KEY_CHARS = (46, 48)
_DER_SIZE = len(DER_KEY) + embedded.KEY_SIZE
# A key in base32 (RFC 4648, ``base64.b32encode(key)``), as TOTP tools and some secret managers
# print one: 52 letters of ``A-Z2-7``, then ``====`` or not; no more of them in a row. Its
# letters are base64's too, so it lies in a run :func:`_run_spans` finds, of 52 letters or
# more (the base64 alphabet's other letters about it), where it is found in a mask of the run
# (:data:`B32_CLASS`, ``bytes.find``): only runs of 52 letters at least are masked, and a
# log's SHA-256 (64 hex digits) is decoded as hex before.
B32_KEY_CHARS = 52
B32_CLASS = bytes(1 if chr(b) in string.ascii_uppercase + "234567" else 0 for b in range(256))
_B32_SPAN = b"\x01" * B32_KEY_CHARS
_B32_PAD = b"===="
# Either lies in a run of :data:`KEY_CHARS` bytes at least holding no backslash nor line break:
# found with ``bytes.find`` in the run with those as NULs (:func:`_keys`), so that a run of
# escapes (Python 2's ``repr`` of bytes, ``\\xhh`` every few bytes) is not searched for a key.
_KEY_FREE = bytes(0 if b in b"\\\r\n" else 1 for b in range(256))
_KEY_SPAN = b"\x01" * KEY_CHARS
# A key as Python prints bytes (``print(key)``, ``key`` as a notebook cell's last line): a
# literal of 32 characters or escapes, ``b'...'``, or ``b"..."`` when the key holds a ``'`` and
# no ``"``. Found as it lies in a text, and JSON-escaped in a JSON string (a notebook's output:
# each backslash doubled, a ``"`` escaped), where :data:`_LITERAL_AT` finds ``b``, a quote (the
# keys of :data:`LITERALS`) and 32 printable characters, not after a letter (``rb'...'`` is
# typed, not printed); each expression with its quote and whether it is JSON-escaped. The
# finder begins with ``b`` (its quote first: ten times slower); 0.09 s for 42 MiB of text
# holding none, against 0.22 s for the rest of :func:`_runs`.
LITERALS: dict[bytes, tuple[tuple[re.Pattern[bytes], str, bool], ...]] = {
    b"b'": (
        (re.compile(rb"b'((?:[ -&(-\[\]-~]|\\x[0-9a-f]{2}|\\[tnr\\']){32})'"), "'", False),
        (
            re.compile(
                rb"""b'((?:[ !#-&(-\[\]-~]|\\"|\\\\x[0-9a-f]{2}|\\\\[tnr']|\\\\\\\\){32})'"""
            ),
            "'",
            True,
        ),
    ),
    b'b"': ((re.compile(rb'b"((?:[ !#-\[\]-~]|\\x[0-9a-f]{2}|\\[tnr\\]){32})"'), '"', False),),
    b'b\\"': (
        (
            re.compile(rb'b\\"((?:[ !#-\[\]-~]|\\\\x[0-9a-f]{2}|\\\\[tnr]|\\\\\\\\){32})\\"'),
            '"',
            True,
        ),
    ),
}
_LITERAL_AT = re.compile(rb"b(?<![A-Za-z0-9_]b)(?:'|\"|\\\")(?=[ -~]{32})")
# A key printed as hex pairs joined by one separator (``key.hex(":")``, ``key.hex(" ")``,
# ``key.hex("-")``, upper case too): 32 pairs, no more in a run (another pair joined so before or
# after it, a longer token of letters or digits at either end: 31 or 33 pairs, a MAC, a UUID,
# a longer run are none; a TLS certificate's SHA-256 fingerprint is tested as a key and let
# go). Found in a mask of the text (:data:`_PAIRS_MASK`: a hex digit ``h``, another letter or
# digit ``a``, a separator ``s``), where ``bytes.find`` looks for the 32 pairs at once: the text
# reader took 0.07 s more for 42 MiB of logs holding none (0.62 s before), 0.12 s more with
# 16,000 certificate fingerprints among them, where an expression beginning with a hex digit's
# class took 1.2 s a separator, one anchored on ``:`` 0.2 s (:func:`_paired`,
# ``benchmarks/bench_text_reader.py``).
_PAIRS_MASK = bytes(
    ord("h")
    if chr(b) in string.hexdigits
    else ord("a")
    if chr(b) in string.ascii_letters + string.digits
    else ord("s")
    if b in embedded.PAIR_SEPARATORS
    else ord(".")
    for b in range(256)
)
_PAIRS = b"hhs" * (embedded.KEY_SIZE - 1) + b"hh"
_TOKEN = b"ha"  # a byte of the mask that continues a token of letters or digits
# A key printed as the list of its numbers (``list(key)``, ``tuple(key)``,
# ``json.dumps(list(key))``, a NumPy array's or a tensor's repr, over lines or not): 32 integers
# of 0 to 255 between brackets, or parentheses, no more (a longer list holding them is none).
# Each expression begins with its bracket, found as it is (one beginning with either, a class,
# took 0.27 s for 45 MiB of logs holding none, these two 0.035 s together: :func:`_numbered`).
# Between them, space or line breaks: a saved notebook's too (JSON's escaped ``\n``, and where
# its output's lines are the strings of a list, ``\n", "`` ending one and beginning the next).
_NUMBER = rb"(?:0|[1-9][0-9]{0,2})"
_GAP = rb'(?:\s|\\n|"\s*,\s*")*'
NUMBERS = tuple(
    re.compile(
        rb"%s%s((?:%s,%s){%d}%s)%s%s"
        % (o, _GAP, _NUMBER, _GAP, embedded.KEY_SIZE - 1, _NUMBER, _GAP, c)
    )
    for o, c in ((rb"\[", rb"\]"), (rb"\(", rb"\)"))
)
_DIGITS = re.compile(rb"[0-9]+")
# A line break in a text, or in a JSON string (escaped), or between two of a notebook's output
# lines saved as the strings of a list (``\n", "``).
_BREAK = re.compile(rb'\r?\n|(?:\\r)?\\n(?:"\s*,\s*")?')
_BREAK_BEFORE = re.compile(rb"(?:" + _BREAK.pattern + rb")\Z")  # one that ends where asked
# A key as a hex viewer wraps it (``xxd -p``: 60 digits a line, so 60 and 4; ``xxd -p -c 16``:
# 32 and 32; ``fold``): lines of hex digits alone, all as wide as the first (32 to 63 digits)
# but the last, 64 digits in all, no hex line before or after them. Found from the first line:
# 32 hex digits in a row in the text's mask (:data:`_PAIRS_MASK`), a ``bytes.find``.
_WRAPPED_AT = b"h" * 32
_HEX_RUN = re.compile(rb"h*")
# A key file shown by a hex viewer (a shell cell's output in a notebook, a terminal's log): two
# lines of 16 bytes, at offsets 0 and 16, each its offset (6 to 8 digits: hex; ``od``'s default
# octal, 20 for 16), a colon after it or not, then the bytes as pairs (``hexdump -C``, ``od -t
# x1``, ``xxd -g1``) or as groups of four digits (``xxd``'s, in order; ``hexdump``'s and ``od
# -x``'s, without the colon, little-endian words), then whatever column of characters the
# viewer adds; no line of bytes after the second (a longer file's dump holds no key alone).
# Found from the first line's offset: six zeros, a ``bytes.find`` (an expression beginning with
# them took 0.15 s for 200 MiB of a pickle), then the offset's expression there; only in a text
# whose mask (:data:`_PAIRS_MASK`) holds what every such line holds, eight pairs joined by spaces
# or four groups of four digits (:data:`_DUMP_GROUPS`: two finds, 0.04 s for 200 MiB; the zeros'
# find took 0.1 s, a short needle skipping little).
_ZEROS = b"000000"
_DUMP_GROUPS = (b"hhs" * 7 + b"hh", b"hhhhs" * 3 + b"hhhh")
_DUMP_AT = re.compile(rb"000000(?:00?)?(?=:? )")
_DUMP_LINE = re.compile(rb"([0-7][0-9a-f]{5,7})(:?)((?: {1,2}(?:[0-9A-Fa-f]{2}){1,2})+)")
_DUMP_GROUP = re.compile(rb"[0-9A-Fa-f]+")
_DUMP_ROW = 16
# Where a dump's line ends (its column of characters is at most 16, JSON-escaped at most 6
# bytes each, with the viewer's delimiters): a break, or a JSON string's end.
_DUMP_LINE_END = re.compile(rb'\r?\n|\\[rn]|(?<!\\)"')
_DUMP_REACH = 6 * _DUMP_ROW + 8
# At most so many line boundaries of a wrapped run where a size sought would end are split at
# (each split reads the run again; their first ones, from the run's start).
SPLITS_SIZED = 4


def _wraps(widths: Sequence[int]) -> Iterator[tuple[int, int]]:
    """The lines (``first``, ``last`` + 1) of a run of lines of these ``widths`` that may each
    be one base64 text. A wrapped one is lines of one width, then one no longer (``base64``
    wraps at 76, PEM at 64): each run of lines of one width is tried whole, and with the line
    after it when that is shorter (its last line; else the CSV row's next field,
    ``1,<run>\\n2,...``, or the next photograph's line). A line longer than any wrap is tried
    alone too (a photograph a line, ``base64 -w0``, beside others of its length). Each line is
    in a few tries at most, so a file of short lines is read in linear time (trying every
    shorter prefix of a run was quadratic)."""
    i, n = 0, len(widths)
    while i < n:
        j = i + 1
        while j < n and widths[j] == widths[i]:
            j += 1
        yield i, j
        if widths[i] > WRAP_MAX and j - i > 1:
            yield from ((k, k + 1) for k in range(i, j))
        if j < n and widths[j] < widths[i]:
            yield i, j + 1
        i = j


def _decoded(text: bytes) -> bytes | None:
    """What ``text`` (escapes taken out) decodes to, as base64 of the standard alphabet or of
    the URL-safe one (which of ``+/`` or ``-_`` it holds: a text holding both is base64 of
    neither), its padding there or not (a JWT's is not); None when it is not base64."""
    urlsafe = b"-" in text or b"_" in text
    if urlsafe and (b"+" in text or b"/" in text):
        return None
    missing = -len(text) % 4
    if missing == 3:
        return None
    try:
        return base64.b64decode(
            (text.translate(URLSAFE) if urlsafe else text) + b"=" * missing, validate=True
        )
    except (binascii.Error, ValueError):
        return None


# A run without a backslash is measured so many bytes at a time (each piece split into its
# lines, their lengths kept, the lines let go of at once).
LINES_PIECE = 1 << 20
_PLUS_ONE = (1).__add__
# A line's width while every line is this narrow: a byte (a text of short lines, the one that
# has many); wider ones widen the array.
_NARROW = 255


class _Lines:
    """Lines of a run (:func:`_lines`) that may make up one base64 text: where each begins in
    the bytes read (``starts``), how many characters of the text it holds (``widths``: escapes
    taken out), and where it ends (``ends``; None where each ends ``widths`` after it begins).
    No line is held as bytes of its own: a text of 16-character lines (a log of ids) is a line
    in every 17 bytes, and a bytes object and a few ints a line held 20 times its size; a text
    is taken out only when it is decoded (:meth:`text`)."""

    __slots__ = ("data", "ends", "starts", "widths")

    def __init__(self, data: bytes, starts: array, widths: array, ends: array | None) -> None:
        self.data, self.starts, self.widths, self.ends = data, starts, widths, ends

    def end(self, i: int) -> int:
        """Where line ``i`` ends (its line break, or an escape, after it)."""
        return self.ends[i] if self.ends is not None else self.starts[i] + self.widths[i]

    def text(self, first: int, last: int) -> bytes:
        """The text lines ``first`` to ``last`` - 1 make up: their span, its line breaks (a
        group holds no other escape: a backslash that is none ends it) and escaped slashes
        taken out."""
        span = self.data[self.starts[first] : self.end(last - 1)]
        if self.ends is None:  # no escape: a carriage return is only ever before a line feed
            return span.translate(None, b"\r\n")
        return B64_BREAKS.sub(b"", span).replace(b"\\/", b"/")

    def chars(self, first: int, last: int) -> int:
        """How many characters of the text lines ``first`` to ``last`` - 1 hold (counted over
        their span: each line is in a few tries at most, :func:`_wraps`)."""
        if self.ends is not None:
            return sum(self.widths[first:last])
        s, e = self.starts[first], self.end(last - 1)
        return e - s - self.data.count(b"\n", s, e) - self.data.count(b"\r", s, e)

    def head(self, i: int) -> bytes:
        """The first two characters of line ``i``'s text."""
        s = self.starts[i]
        first = self.data[s : min(s + 4, self.end(i))]
        return (first.replace(b"\\/", b"/") if self.ends is not None else first)[:2]


def _offsets(size: int) -> str:
    """The array type that holds an offset into ``size`` bytes (4 bytes one, not 8, where they
    are under 2 GiB)."""
    return "i" if size < 1 << 31 else "q"


def _lines(data: bytes, start: int, end: int) -> Iterator[_Lines]:
    """The lines of the run (:data:`B64_RUN`) from ``start`` to ``end`` of ``data``, by base64
    text they may make up: a backslash that is no escape base64 holds (a JSON string's ``\\"``)
    ends one. Without a backslash the run is split at once, a piece at a time (the regex is
    slow over a large run); what is kept is a few ints a line in arrays (:class:`_Lines`), the
    run itself not copied."""
    code = _offsets(len(data) + 2)
    if data.find(b"\\", start, end) < 0:
        crlf = data.find(b"\r", start, end) >= 0
        starts, widths, at = array(code, [start]), array("B"), start
        while at <= end:
            stop = data.find(b"\n", min(at + LINES_PIECE, end), end)
            stop = end if stop < 0 else stop  # the piece ends on a line's end
            piece = data[at:stop]
            # Where each next line begins: this one's bytes and its line feed on.
            after = itertools.accumulate(map(_PLUS_ONE, map(len, piece.split(b"\n"))), initial=at)
            starts.extend(itertools.islice(after, 1, None))
            wide = array(
                code, map(len, (piece.replace(b"\r\n", b"\n") if crlf else piece).split(b"\n"))
            )
            if widths.typecode != code and max(wide) > _NARROW:
                widths = array(code, widths)
            widths.extend(wide if widths.typecode == code else iter(wide))
            at = stop + 1
        starts.pop()  # where a line after the last would begin
        yield _Lines(data, starts, widths, None)
        return
    starts, ends, widths, at = array(code), array(code), array(code), start
    for m in itertools.chain(B64_BREAKS.finditer(data, start, end), [None]):
        stop = m.start() if m is not None else end
        starts.append(at)
        ends.append(stop)
        widths.append(stop - at - data.count(b"\\/", at, stop))  # "\\/" is one "/"
        if m is None or m.group(1) is None:
            yield _Lines(data, starts, widths, ends)
            starts, ends, widths = array(code), array(code), array(code)
        if m is not None:
            at = m.end()


# A backslash that ends a base64 text (:data:`B64_BREAKS`): any but an escaped slash or line
# break's (``\/``, ``\n``, ``\r\n``), told by the bytes after it alone (:func:`_unbroken`).
_BACKSLASH, _SLASH, _N, _R = b"\\/nr"


def _unbroken(data: bytes, least: int) -> Iterator[tuple[int, int]]:
    """The stretches of ``data`` between the backslashes that end a base64 text (as
    :func:`_lines` ends one: :data:`B64_BREAKS`), from its start to its end, that are at least
    ``least`` bytes long, in order. Where a run holds such backslashes its lines make a text
    only within one such stretch: one shorter than :data:`B64_MIN` holds none. Found a
    :data:`CHUNK` at a time with NumPy (Python 2's ``repr`` of bytes, a protocol-0 pickle's
    strings, is a run of the alphabet, a ``\\xhh`` escape every few bytes: split into its
    texts by :func:`_lines`, a regex match and a :class:`_Lines` a backslash, 9 s for 38 MiB,
    none long enough)."""
    import numpy as np

    size, begin = len(data), 0
    if data.find(b"\\") < 0:  # no backslash (a wrapped base64 text's): one stretch
        if size >= least:
            yield 0, size
        return
    for at in range(0, size, CHUNK):
        stop = min(at + CHUNK, size)
        piece = bytes(data[at : stop + 3])  # the bytes after a backslash: 3 at most
        window = np.frombuffer(piece + bytes(stop + 3 - at - len(piece)), np.uint8)
        slashes = np.flatnonzero(window[: stop - at] == _BACKSLASH)
        after = window[slashes + 1]
        ending = slashes[
            (after != _SLASH)
            & (after != _N)
            & ~((after == _R) & (window[slashes + 2] == _BACKSLASH) & (window[slashes + 3] == _N))
        ]
        if not len(ending):
            continue
        ends = ending + at
        starts = np.concatenate(([begin], ends[:-1] + 1))
        long = ends - starts >= least
        yield from zip(starts[long].tolist(), ends[long].tolist(), strict=True)
        begin = int(ends[-1]) + 1
    if size - begin >= least:
        yield begin, size


def _splits(
    widths: Sequence[int], first: int, last: int, raw: bytes, sizes: SizeFilter | None
) -> Iterator[tuple[int, int, bytes]]:
    """The parts (``first``, ``last`` + 1, bytes) of the base64 text that lines ``first`` to
    ``last`` make up, decoded to ``raw``, that may each be a file: two photographs wrapped one
    after the other, the first ending on a full line, are one run of lines (:func:`_wraps`
    cannot tell them apart). It is split at each full line where a file begins
    (:data:`FILE_START`), and, when ``sizes`` knows what is sought, where a size sought would
    end, from its start or from its end (:data:`SPLITS_SIZED` of them): the splits read the
    run a few times at most, whatever its lines (trying every line was quadratic)."""
    width, lines = widths[first], last - first
    if lines < 2 or width > WRAP_MAX or width % 4:
        return
    per = width // 4 * 3
    # A part begins after full lines only: the last line is one when the run decodes to whole
    # lines of bytes.
    full = lines if widths[last - 1] == width and len(raw) % per == 0 else lines - 1
    cuts = {
        m.start()
        for m in FILE_FIRST.finditer(raw[: full * per : per], 1)  # each full line's first byte
        if FILE_START.match(raw, m.start() * per)
    }
    parts = list(itertools.pairwise(sorted({0, *cuts, lines})))
    if sizes is not None and embedded.smallest_sought(sizes) > 0:  # else every size may be sought
        sized = (
            k
            for k in range(1, min(full + 1, lines))
            if sizes.may_match(k * per) or sizes.may_match(len(raw) - k * per)
        )
        for k in itertools.islice(sized, SPLITS_SIZED):
            parts += [(0, k), (k, lines)]
    for a, b in dict.fromkeys(parts):
        if (a, b) != (0, lines):
            yield first + a, first + b, raw[a * per : b * per if b < lines else len(raw)]


def _run_spans(data: bytes) -> Iterator[tuple[int, int]]:
    """The spans of ``B64_RUN.finditer(data)``, each found only where :data:`_RUN_LEAD` bytes
    of its class begin (the first such place from where the last ended is where the expression
    would match next), and ended where :data:`_RUN_STOP` finds (in memory of the mask, however
    many lines the run has). Spans, not matches: a gigabyte of logs is 16 million runs (each
    hex id, each SHA-256), and most are dropped at once by their length (:func:`_runs`)."""
    if not isinstance(data, bytes):  # a mapped file: as it is
        for m in B64_RUN.finditer(data):
            yield m.span()
        return
    mask, lead, at, size = data.translate(_RUN_MASK), b"\x01" * _RUN_LEAD, 0, len(data)
    find, stop_at, padded = mask.find, _RUN_STOP.search, data.startswith
    while (at := find(lead, at)) >= 0:
        stop = stop_at(mask, at)
        end = size if stop is None else stop.start()
        end += padded(b"=", end) + padded(b"==", end)  # its padding
        yield at, end
        at = end


def _keys(data: bytes, start: int, end: int) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each key the run from ``start`` to ``end`` of ``data`` may hold (:data:`HEX_KEY`,
    :data:`B64_KEY`, base32: :func:`_base32`), decoded. A run of one line without an escape
    (nearly all: a log's SHA-256, a key printed alone) is one only by its length, or holds 64
    hex digits or 52 letters of base32 among other letters (``0x…``, ``key_…``), or is base64
    of the key DER-wrapped (:data:`DER_KEY`: its last 32 bytes); one of lines or escapes is
    searched whole."""
    n = end - start
    if n == 64:  # nearly all: a SHA-256 of a log, a key printed alone (no escape is hex)
        with contextlib.suppress(binascii.Error, ValueError):
            yield (start, end), binascii.unhexlify(data[start:end])
            return
    if (
        data.find(b"\n", start, end) < 0
        and data.find(b"\\", start, end) < 0
        and data.find(b"\r", start, end) < 0
    ):
        if n == KEY_CHARS or (n == KEY_CHARS + 1 and data[end - 1 : end] == b"="):
            raw = _decoded(data[start:end])
            if raw is not None and len(raw) == embedded.KEY_SIZE:
                yield (start, end), raw
        elif n in DER_KEY_CHARS:
            raw = _decoded(data[start:end])
            if raw is not None and len(raw) == _DER_SIZE and raw.startswith(DER_KEY):
                yield (start, end), raw[len(DER_KEY) :]
        else:
            if n > 64:
                for m in HEX_KEY.finditer(data, start, end):
                    yield m.span(), binascii.unhexlify(m.group())
            if n >= B32_KEY_CHARS:
                yield from _base32(data, start, end)
        return
    if data[start:end].translate(_KEY_FREE).find(_KEY_SPAN) < 0:  # a run of escapes: no key
        return
    for m in HEX_KEY.finditer(data, start, end):
        yield m.span(), binascii.unhexlify(m.group())
    for m in B64_KEY.finditer(data, start, end):
        raw = _decoded(m.group())
        if raw is not None and len(raw) == embedded.KEY_SIZE:
            yield m.span(), raw
    yield from _base32(data, start, end)


def _base32(data: bytes, start: int, end: int) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each key in base32 (:data:`B32_KEY_CHARS` letters of its alphabet, no more in a row) in
    the run from ``start`` to ``end`` of ``data``, decoded, with its span (its ``====`` too)."""
    mask = bytes(data[start:end]).translate(B32_CLASS)
    size, at = len(mask), 0
    while (i := mask.find(_B32_SPAN, at)) >= 0:
        j = i + B32_KEY_CHARS
        if j < size and mask[j]:  # more letters: a longer run, no key
            at = mask.find(b"\x00", j)
            if at < 0:
                return
            continue
        at = j
        first, last = start + i, start + j
        with contextlib.suppress(binascii.Error, ValueError):
            raw = base64.b32decode(bytes(data[first:last]) + _B32_PAD)
            yield (first, last + len(_B32_PAD) * (data[last : last + 4] == _B32_PAD)), raw


def _literals(data: bytes) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each bytes literal of 32 bytes in ``data`` as Python prints one (:data:`LITERALS`),
    decoded, with its span (the literal as it lies, ``b`` and quotes)."""
    for found in _LITERAL_AT.finditer(data):
        for expression, quote, escaped in LITERALS[found.group()]:
            m = expression.match(data, found.start())
            if m is None:
                continue
            inner = m.group(1).decode("ascii")
            if escaped:  # a JSON string's: its own escapes undone first
                inner = json.loads(f'"{inner}"')
            yield m.span(), ast.literal_eval(f"b{quote}{inner}{quote}")
            break


def _lone_pair(mask: bytes, at: int) -> bool:
    """Whether two hex digits lie at ``at`` of a text, a token of their own (``mask``: the
    text's :data:`_PAIRS_MASK`)."""
    return (
        at >= 0
        and mask[at : at + 2] == b"hh"
        and (at == 0 or mask[at - 1] not in _TOKEN)
        and (at + 2 >= len(mask) or mask[at + 2] not in _TOKEN)
    )


def _paired(data: bytes, mask: bytes) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each key in ``data`` printed as 32 hex pairs joined by one separator (:data:`_PAIRS`),
    decoded, with its span (the pairs and separators, nothing about them). Each place the
    mask's 32 pairs are found is read once; a run of more pairs is passed a key's length at a
    time (all of it too long), so a text of pairs alone is read in linear time."""
    n = len(_PAIRS)
    at = 0
    while (start := mask.find(_PAIRS, at)) >= 0:
        end = start + n
        if start and mask[start - 1] in _TOKEN:  # its first pair ends a longer token
            at = start + 3
            continue
        # The pairs after it, to its run's end, are no key (a pair is before each); its last may
        # begin a run of another separator.
        at = end - 2
        sep = data[start + 2 : start + 3]
        if data.count(sep, start, end) != embedded.KEY_SIZE - 1:  # two separators
            at = start + 3
            continue
        if end < len(mask) and mask[end] in _TOKEN:  # its last pair begins a longer token
            continue
        if data[start - 1 : start] == sep and _lone_pair(mask, start - 3):  # a pair joined
            continue
        if data[end : end + 1] == sep and _lone_pair(mask, end + 1):
            continue
        yield (start, end), binascii.unhexlify(data[start:end].translate(None, sep))


def _wrapped(data: bytes, mask: bytes) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each key in ``data`` printed as hex wrapped over lines (:data:`_WRAPPED_AT`), decoded,
    with its span (its lines and the breaks between them). Each line is read at most twice: as
    the first of a key and as the one after, so a long wrapped dump is read in linear time."""
    h, size, at = ord("h"), len(mask), 0
    while (start := mask.find(_WRAPPED_AT, at)) >= 0:
        end = _HEX_RUN.match(mask, start).end()  # type: ignore[union-attr]
        at, width = end, end - start
        if width >= 2 * embedded.KEY_SIZE or (start and mask[start - 1] in _TOKEN):
            continue
        if _BREAK.match(data, end) is None:  # one line (a hex id, an MD5): nearly all
            continue
        before = _BREAK_BEFORE.search(data, max(0, start - 16), start)
        if before is not None and before.start() and mask[before.start() - 1] == h:
            continue  # a hex line before it
        digits, pos = [data[start:end]], end
        total = width
        while total < 2 * embedded.KEY_SIZE and (brk := _BREAK.match(data, pos)) is not None:
            line_end = _HEX_RUN.match(mask, brk.end()).end()  # type: ignore[union-attr]
            n = line_end - brk.end()
            if not n or n > width:
                break
            digits.append(data[brk.end() : line_end])
            total, pos = total + n, line_end
            if n < width:
                break
        if total != 2 * embedded.KEY_SIZE or (pos < size and mask[pos] in _TOKEN):
            continue
        brk = _BREAK.match(data, pos)
        if brk is not None and brk.end() < size and mask[brk.end()] == h:
            continue  # another hex line after it
        yield (start, pos), binascii.unhexlify(b"".join(digits))


def _dump_row(data: bytes, at: int, offsets: Sequence[bytes]) -> tuple[bytes, int, int] | None:
    """The 32 hex digits of the hex viewer's line at ``at`` whose offset is one of ``offsets``,
    in the order they lie; how many digits a group of them has, 2 or 4, and 0 for groups of
    four after an offset with no colon (little-endian words, or in order); and where they end.
    None when it is no such line."""
    m = _DUMP_LINE.match(data, at)
    if m is None or m.group(1) not in offsets:
        return None
    groups, end, n = [], m.start(3), 0
    for g in _DUMP_GROUP.finditer(data, m.start(3), m.end(3)):
        groups.append(g.group())
        end, n = g.end(), n + g.end() - g.start()
        if n >= 2 * _DUMP_ROW:
            break
    width = len(groups[0])
    if n != 2 * _DUMP_ROW or any(len(g) != width for g in groups):
        return None
    return b"".join(groups), 0 if width == 4 and not m.group(2) else width, end


@functools.lru_cache(maxsize=8)
def _third_row(offset: bytes) -> re.Pattern[bytes]:
    """A hex viewer's line of bytes at ``offset`` after a break: the dump goes on."""
    after = re.escape(offset) + rb":? {1,2}[0-9A-Fa-f]{2}"
    return re.compile(rb"(?:" + _BREAK.pattern + rb")" + after)


def _dumped(data: bytes, mask: bytes) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each key in ``data`` (its :data:`_PAIRS_MASK` ``mask``) shown by a hex viewer
    (:data:`_DUMP_AT`), decoded (groups of four digits without a colon: as little-endian words
    too, one of the two tested), with its span (both lines, their columns of characters too)."""
    if all(mask.find(g) < 0 for g in _DUMP_GROUPS):
        return
    at = 0
    while (start := data.find(_ZEROS, at)) >= 0:
        m = _DUMP_AT.match(data, start)
        at = start + len(_ZEROS) if m is None else m.end()
        if m is None or (start and data[start - 1 : start].isalnum()):
            continue
        digits = len(m.group())
        first = _dump_row(data, start, (m.group(),))
        if first is None:
            continue
        # The second line after the first's break: the first break-like bytes that one follows
        # (its column of characters may hold a backslash and an n).
        second_at = (b"0" * (digits - 2) + b"10", b"0" * (digits - 2) + b"20")
        for brk in _BREAK.finditer(data, first[2], first[2] + _DUMP_REACH):
            if (second := _dump_row(data, brk.end(), second_at)) is not None:
                break
        else:
            continue
        if first[1] != second[1]:
            continue
        # Octal offsets (od's default: 0000020 for 16) or hex ones (hexdump's: 0000010).
        octal = data[brk.end() + digits - 2 : brk.end() + digits] == b"20"
        third = _third_row(b"0" * (digits - 2) + (b"40" if octal else b"20"))
        if third.search(data, second[2], second[2] + _DUMP_REACH + 16):  # a longer file's dump
            continue
        ended = _DUMP_LINE_END.search(data, second[2], second[2] + _DUMP_REACH)
        end = len(data) if ended is None else ended.start()
        if ended is None and end - second[2] > _DUMP_REACH:
            continue
        raw = binascii.unhexlify(first[0] + second[0])
        yield (start, end), raw
        if not first[1]:  # hexdump's and od -x's default: each group a little-endian word
            yield (start, end), bytes(raw[i ^ 1] for i in range(len(raw)))


def _numbered(data: bytes) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each key in ``data`` printed as the list of its 32 numbers (:data:`NUMBERS`), with its
    span (the list as it lies, its brackets too)."""
    for expression in NUMBERS:
        for m in expression.finditer(data):
            with contextlib.suppress(ValueError):  # a number over 255: no bytes
                yield m.span(), bytes(int(n) for n in _DIGITS.findall(m.group(1)))


def _runs(data: bytes, sizes: SizeFilter | None = None) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each base64 text of ``data`` (its span) and the bytes it decodes to: a run of the
    alphabet (either, :func:`_decoded`), or of lines of it (:func:`_wraps`: a wrapped one, one a
    line, the next row's field after it; :func:`_splits`: two wrapped back to back). One that
    decodes to fewer bytes than anything ``sizes`` seeks is passed over undecoded, unless it
    begins as a compressed file does (:data:`~visage_ml.rights.embedded.B64_EXPANDS`): nothing
    of that size is sought, and a text, a pickle or a tar holds only what is smaller than itself
    (a log's hex ids, each a valid base64 run)."""
    below, expands = embedded.smallest_sought(sizes), embedded.B64_EXPANDS
    # The largest run passed over: noted as it grows, not run by run (a note keeps the largest).
    largest = -1

    def small(n: int, text: bytes) -> bool:
        nonlocal largest
        if n * 3 // 4 < below and text[:2].translate(URLSAFE) not in expands:
            if n * 3 // 4 > largest:
                largest = n * 3 // 4
                embedded.passed_over(sizes, largest)
            return True
        return False

    # How a key found is told from other 32 bytes (:func:`~visage_ml.rights.embedded.key_test`):
    # asked at the first found, so that a text holding none leaves the scan cache no note.
    test: Callable[[bytes], bool] | None = None
    asked = False
    unhexlify = binascii.unhexlify
    # The stretches between backslashes that end a text (_unbroken), those reaching past the
    # last run read: found as the runs go.
    unbroken, ahead = _unbroken(data, B64_MIN), collections.deque[tuple[int, int]]()
    for start, end in _run_spans(data):
        if end - start >= KEY_CHARS:
            found: Iterable[tuple[tuple[int, int], bytes]]
            try:  # 64 hex digits (a log's SHA-256: nearly every such run), without a call
                if end - start != 64:
                    raise ValueError
                found = (((start, end), unhexlify(data[start:end])),)
            except (binascii.Error, ValueError):
                found = _keys(data, start, end)
            for span, raw in found:
                if not asked:
                    test, asked = embedded.key_test(sizes), True
                if test is not None and test(raw):
                    yield span, raw
        if end - start < B64_MIN:  # nor does any text of its lines: fewer characters than it
            continue
        if data.find(b"\n", start, end) < 0 and data.find(b"\\", start, end) < 0:  # one line
            n = end - start
            if n * 3 // 4 < below and data[start : start + 2].translate(URLSAFE) not in expands:
                if n * 3 // 4 > largest:  # small(), inline: asked of nearly every run
                    largest = n * 3 // 4
                    embedded.passed_over(sizes, largest)
                continue
            if (raw := _decoded(data[start:end])) is not None:
                yield (start, end), raw
            continue
        # Read where it lies (bytes: not copied), or a mapped file's run copied; only its
        # stretches between backslashes that end a text long enough to hold one (_unbroken).
        held, at = (data, 0) if isinstance(data, bytes) else (data[start:end], start)
        while ahead and ahead[0][1] <= start:
            ahead.popleft()
        while not ahead or ahead[-1][0] < end:
            if (stretch := next(unbroken, None)) is None:
                break
            if stretch[1] > start:
                ahead.append(stretch)
        texts = (
            lines
            for s, e in ahead
            if s < end and min(e, end) - max(s, start) >= B64_MIN
            for lines in _lines(held, max(s, start) - at, min(e, end) - at)
        )
        for lines in texts:
            widths = lines.widths
            done: set[tuple[int, int]] = set()
            for first, last in _wraps(widths):
                n = lines.chars(first, last)
                if n < B64_MIN or small(n, lines.head(first)):
                    continue
                raw = _decoded(lines.text(first, last))
                if raw is None:
                    continue
                for a, b, part in [(first, last, raw), *_splits(widths, first, last, raw, sizes)]:
                    if (a, b) in done:
                        continue
                    done.add((a, b))
                    n = lines.chars(a, b)
                    if n < B64_MIN or small(n, lines.head(a)):
                        continue
                    yield (at + lines.starts[a], at + lines.end(b - 1)), part
    # A key as Python prints bytes, as hex pairs joined, as its numbers, as a hex viewer shows a
    # file of it: no run of the alphabet.
    mask = data.translate(_PAIRS_MASK)
    for span, raw in itertools.chain(
        _literals(data),
        _paired(data, mask),
        _numbered(data),
        _wrapped(data, mask),
        _dumped(data, mask),
    ):
        if not asked:
            test, asked = embedded.key_test(sizes), True
        if test is not None and test(raw):
            yield span, raw
