"""Photographs pickled as Python 2 pickled them, and pickles of protocol 0 or 1 held inside
other pickles: files a project inherits from older code (a data set's cache made under Python 2,
a queue of pickled records) that the content scan must read as it reads newer pickles.

Python 2 pickled a ``str`` (a photograph read from its file, a NumPy array's data) with protocol
0, its default, as a STRING: ``S``, then the string's repr, quoted, every byte outside printable
ASCII escaped (``\\x89``, ``\\r``, ``\\'``), to the end of its line. Python 3 reads such a pickle
(``pickle.load(f, encoding="bytes")`` or ``"latin1"``). No Python 2 is needed here: the pickles
are written byte for byte as Python 2.7's ``pickle`` module writes them (:func:`py2_dumps`).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rights_fakes import make_project, png
from test_erasure_inside import (  # noqa: F401
    _photos,
    _Sought,
    finds_searched,
    held_until_taken_out,
    pickles_read_alike,
    proj,
    sealed_in_each,
)

from visage_ml.rights import embedded


def py2_repr(data: bytes) -> bytes:
    """``repr(data)`` of a ``str`` in Python 2: single quotes unless it holds one and no double
    quote; backslash and its quote escaped, tab, newline and return as ``\\t``, ``\\n``, ``\\r``,
    every other byte outside printable ASCII as ``\\xhh``."""
    quote = b'"' if b"'" in data and b'"' not in data else b"'"
    named = {9: b"\\t", 10: b"\\n", 13: b"\\r", 92: b"\\\\", quote[0]: b"\\" + quote}
    out = [named.get(c) or (bytes([c]) if 0x20 <= c < 0x7F else b"\\x%02x" % c) for c in data]
    return quote + b"".join(out) + quote


class _Global:
    """A class or function named in a pickle (a GLOBAL)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Reduced:
    """An object pickled by its ``__reduce__``: ``func(*args)``, then ``state`` set (BUILD)."""

    def __init__(self, func: _Global, args: tuple, state: object = None) -> None:
        self.func, self.args, self.state = func, args, state


def py2_dumps(obj: object) -> bytes:
    """``pickle.dumps(obj)`` of Python 2.7 (protocol 0), ``bytes`` standing for its ``str`` and
    ``str`` for its ``unicode``: each string, list, tuple and dict memoized (``p0``...), a
    dict's items in their order."""
    out: list[bytes] = []
    memo = [0]

    def put() -> None:
        out.append(b"p%d\n" % memo[0])
        memo[0] += 1

    def save(o: object) -> None:
        if o is None:
            out.append(b"N")
        elif isinstance(o, bool):
            out.append(b"I01\n" if o else b"I00\n")
        elif isinstance(o, int):
            out.append(b"I%d\n" % o)
        elif isinstance(o, float):
            out.append(b"F" + repr(o).encode() + b"\n")
        elif isinstance(o, bytes):
            out.append(b"S" + py2_repr(o) + b"\n")
            put()
        elif isinstance(o, str):
            text = o.replace("\\", "\\u005c").replace("\n", "\\u000a")
            out.append(b"V" + text.encode("raw-unicode-escape") + b"\n")
            put()
        elif isinstance(o, list):
            out.append(b"(l")
            put()
            for item in o:
                save(item)
                out.append(b"a")
        elif isinstance(o, tuple):
            out.append(b"(")
            for item in o:
                save(item)
            out.append(b"t")
            put()
        elif isinstance(o, dict):
            out.append(b"(d")
            put()
            for key, value in o.items():
                save(key)
                save(value)
                out.append(b"s")
        elif isinstance(o, _Global):
            out.append(b"c%s\n%s\n" % (o.module.encode(), o.name.encode()))
            put()
        elif isinstance(o, _Reduced):
            save(o.func)
            save(o.args)
            out.append(b"R")
            put()
            if o.state is not None:
                save(o.state)
                out.append(b"b")
        else:
            raise TypeError(type(o))

    save(obj)
    return b"".join(out) + b"."


def py2_array(data: bytes) -> _Reduced:
    """A NumPy ``uint8`` array of ``data`` as Python 2's NumPy pickled it: ``_reconstruct``, then
    its state, the data a ``str``."""
    dtype = _Reduced(
        _Global("numpy", "dtype"), (b"u1", 0, 1), (3, b"|", None, None, None, -1, -1, 0)
    )
    return _Reduced(
        _Global("numpy.core.multiarray", "_reconstruct"),
        (_Global("numpy", "ndarray"), (0,), b"b"),
        (1, (len(data),), dtype, False, data),
    )


# Python 2 ``str`` values, in files as Python 2 made them: ``pickle.dump(obj, f)``.
_PY2 = {
    "rows-py2.pkl": lambda photos: py2_dumps(
        [(f"face-{i}", p, 0.5 + i / 10) for i, p in enumerate(photos)]
    ),
    "dataset-py2.pkl": lambda photos: py2_dumps(
        {b"labels": list(range(2000)), b"imgs": photos, b"name": b"faces"}
    ),
    "arrays-py2.pkl": lambda photos: py2_dumps({b"crops": [py2_array(p) for p in photos]}),
    # One long line: the first 4 KiB one string, cut off.
    "bare-py2.pkl": lambda photos: b"".join(py2_dumps(p) for p in photos),
    "pair-py2.pkl": lambda photos: py2_dumps(tuple(photos)),
}


def test_py2_dumps_writes_what_python_2_wrote():
    """The pickles these tests make are Python 2.7's (``pickle.dumps``, protocol 0), as it wrote
    them, and Python 3 reads them back."""
    b = b"\x89PNG\r\n\x1a\n'\"\\ab\x00\x7f\x80\xff\t"
    assert py2_dumps({b"photo": b}) == b"(dp0\nS'photo'\np1\nS'" + (
        b"\\x89PNG\\r\\n\\x1a\\n\\'\"\\\\ab\\x00\\x7f\\x80\\xff\\t'\np2\ns."
    )
    assert py2_dumps([("face-0", b, 0.5)]) == (
        b"(lp0\n(Vface-0\np1\nS'\\x89PNG\\r\\n\\x1a\\n\\'\"\\\\ab\\x00\\x7f\\x80\\xff\\t'\np2\n"
        b"F0.5\ntp3\na."
    )
    assert pickle.loads(py2_dumps([("face-0", b, 0.5)]), encoding="bytes") == [("face-0", b, 0.5)]
    array = pickle.loads(py2_dumps(py2_array(b)), encoding="latin1")
    assert array.dtype == np.uint8 and array.tobytes() == b


def test_a_photograph_python_2_pickled_as_a_str_stops_the_erasure(proj):  # noqa: F811
    """Rows, a data set's dict, NumPy arrays, the photograph alone and a pair pickled as Python 2
    did, each ``str`` a quoted, escaped line: the photograph's bytes lie in none as they are,
    and the erasure was certified. Now it stops on them; the same files of others' photographs
    are no concern."""
    _, photo, theirs = _photos(proj)
    third = next(iter(proj.images[proj.pids[2]].values()))
    folder = proj.paths.root / "data" / "py2"
    made = held_until_taken_out(proj, folder, _PY2, photo, [theirs, third])
    for data in made.values():
        assert photo not in data and py2_repr(photo) in data


def test_a_python_2_pickle_is_read_alike_from_its_file_and_in_parts(tmp_path, monkeypatch):
    """Each: the photograph found in memory and from its file (mapped); with strings larger than
    are held (EMBED_MAX), decoded a part at a time, escapes cut between parts; a 32-byte key
    pickled so. A string whose repr holds an escape Python 2 never writes is no value."""
    rng = np.random.default_rng(7)
    photo = png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    other = png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    sha = hashlib.sha256(photo).hexdigest()
    pickles_read_alike(tmp_path, _PY2, photo, other)
    key = bytes(range(0, 256, 8))
    assert hashlib.sha256(key).hexdigest() in set(
        embedded.inside(py2_dumps({"key": key, "n": list(range(900))}), embedded.BINARY)
    )
    backslashes = b"\\" * 3000 + photo + b"\\\x89" * 700
    for step in (1000, 1001, 1002, 1003):
        monkeypatch.setattr(embedded, "EMBED_MAX", step)
        for value in (photo, backslashes):
            data = py2_dumps({"v": value, "n": list(range(900))})
            assert hashlib.sha256(value).hexdigest() in set(
                embedded.inside(data, embedded.BINARY)
            ), step
    monkeypatch.undo()
    odd = py2_dumps({"n": list(range(900)), "v": photo}).replace(b"'\\x89PNG", b"'\\xzz\\x89PNG")
    assert sha not in set(embedded.inside(odd, embedded.BINARY))


def test_a_pickle_of_protocol_0_or_1_held_in_another_pickle_is_read():
    """A pickle's ``bytes`` value of no size sought that is itself a pickle of protocol 0 or 1
    (a queue of records pickled by older code; Python 2's, a text) holding the photograph, in a
    pickle of protocol 4, 2 or 0: only those beginning with ``\\x80`` were read as pickles, and
    the photograph, escaped or UTF-8 in them, was not found."""
    rng = np.random.default_rng(9)
    photo = png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    sha = hashlib.sha256(photo).hexdigest()

    class Sought:  # the photograph's size, not the inner pickle's
        def may_match(self, size: int) -> bool:
            return size == len(photo)

    inner = {
        "protocol-0": pickle.dumps([("face", photo)], protocol=0),
        "protocol-1": pickle.dumps([("face", photo)], protocol=1),
        "python-2": py2_dumps([("face", photo)]),
    }
    for name, held in inner.items():
        assert photo not in held
        for outer in (4, 2, 0):
            data = pickle.dumps({"queue": [held], "n": 3}, protocol=outer)
            what = embedded.kind(data[: embedded.SNIFF])
            assert what == embedded.BINARY, (name, outer)
            assert sha in set(embedded.inside(data, what, sizes=Sought())), (name, outer)
        data = py2_dumps({"queue": [held], "n": 3})  # Python 2's, the pickle a ``str``
        assert sha in set(embedded.inside(data, embedded.BINARY, sizes=Sought())), name


def test_crafted_string_heads_are_each_tried_once(monkeypatch):
    """Crafted: a Python 2 pickle's STRING heads (``S'``) many to a line, lines of them without
    their closing quote, a long line of them: each line's end searched for once, and each
    string decoded once at most: linear (each reader of such pickles searches the bytes once)."""
    searched = finds_searched(monkeypatch)
    n = 20_000
    for data in (
        b"(lp0\n" + b"S'" * (n * 50) + b"'\np1\na.",
        b"(lp0\n" + (b"S'\\x89" * 40 + b"\n") * n,
        b"(lp0\n" + (b"S'S\"S'" * 40 + b'"\n') * n,
    ):
        searched.clear()
        start = time.process_time()
        list(embedded.inside(data, embedded.BINARY))
        assert sum(searched) <= 8 * len(data)  # each reader's finds: once over it
        assert time.process_time() - start < 2


def _heads_taken(heads: list[bytes]) -> int:
    return sum(embedded._old_pickle(h, text=embedded._text(h)) for h in heads)


def test_random_bytes_and_common_texts_are_seldom_taken_for_such_a_pickle():
    """Of random 4 KiB after a byte such a pickle begins with, and of the text files of the
    Python installation (sources, CSV, JSON), few are taken for a pickle of protocol 0 or 1
    (each is then read whole for nothing)."""
    rng = np.random.default_rng(11)
    firsts = sorted(embedded.OLD_PICKLE_FIRST)
    heads = [bytes([b]) + rng.bytes(4095) for b in firsts for _ in range(2000)]
    assert _heads_taken(heads) <= 3 * len(firsts)
    texts = []
    for suffix in ("py", "csv", "json", "txt"):
        for path in sorted(Path(sys.prefix).rglob(f"*.{suffix}"))[:400]:
            texts.append(path.read_bytes()[: embedded.SNIFF])
    assert len(texts) > 400
    assert _heads_taken(texts) == 0
    assert embedded.kind(b"S'it is a line\n" * 300) == embedded.TEXT  # no closing quote


def test_a_file_beginning_as_one_long_string_is_read_only_where_it_holds_something():
    """A pickle of one value, a ``str`` (Python 2, protocol 1: BINSTRING) holding a
    photograph: its first 4 KiB one string, cut off. Read where what the string holds begins as
    a photograph or a file that holds others; other bytes after such a length are not."""
    rng = np.random.default_rng(3)
    photo = png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    data = b"T" + len(photo).to_bytes(4, "little") + photo + b"q\x01."
    assert embedded.kind(data[: embedded.SNIFF]) == embedded.BINARY
    assert hashlib.sha256(photo).hexdigest() in set(embedded.inside(data, embedded.BINARY))
    other = b"T" + (9000).to_bytes(4, "little") + rng.bytes(9000) + b"q\x01."
    assert embedded.kind(other[: embedded.SNIFF]) is None


def py2_binary_dumps(obj: object, protocol: int) -> bytes:
    """``cPickle.dumps(obj, protocol)`` of Python 2.7, protocol 1 or 2 (:func:`py2_dumps`'
    types): a ``str`` a SHORT_BINSTRING or BINSTRING of its bytes as they are, a ``unicode``
    a BINUNICODE of its UTF-8, each memoized (BINPUT, LONG_BINPUT), a GLOBAL once (a get
    after), a list's items after a MARK (APPENDS), a short tuple TUPLE1 to TUPLE3 with
    protocol 2."""
    out: list[bytes] = [b"\x80\x02" if protocol == 2 else b""]
    globals_: dict[tuple[str, str], int] = {}
    memo = [0]

    def put() -> int:
        n = memo[0]
        out.append(b"q" + bytes([n]) if n < 256 else b"r" + n.to_bytes(4, "little"))
        memo[0] += 1
        return memo[0] - 1

    def save(o: object) -> None:
        if isinstance(o, int) and 0 <= o < 256:
            out.append(b"K" + bytes([o]))
        elif isinstance(o, bytes):
            n = len(o)
            out.append((b"U" + bytes([n]) if n < 256 else b"T" + n.to_bytes(4, "little")) + o)
            put()
        elif isinstance(o, str):
            raw = o.encode("utf-8")
            out.append(b"X" + len(raw).to_bytes(4, "little") + raw)
            put()
        elif isinstance(o, list):
            out.append(b"]")
            put()
            out.append(b"(")
            for item in o:
                save(item)
            out.append(b"e")
        elif isinstance(o, tuple):
            short = protocol == 2 and 1 <= len(o) <= 3
            out.append(b"" if short else b"(")
            for item in o:
                save(item)
            out.append(bytes([0x84 + len(o)]) if short else b"t")
            put()
        elif isinstance(o, _Global):
            key = (o.module, o.name)
            if key in globals_:
                n = globals_[key]
                out.append(b"h" + bytes([n]) if n < 256 else b"j" + n.to_bytes(4, "little"))
                return
            out.append(b"c%s\n%s\n" % (o.module.encode(), o.name.encode()))
            globals_[key] = put()
        elif isinstance(o, _Reduced):
            save(o.func)
            save(o.args)
            out.append(b"R")
            put()
        else:
            raise TypeError(type(o))

    save(obj)
    return b"".join(out) + b"."


def py2_bytearray(data: bytes) -> _Reduced:
    """A ``bytearray`` of ``data`` as Python 2 pickled it (its ``__reduce__``): ``bytearray``
    called with the ``unicode`` its bytes decode to as latin-1 and the ``str`` ``'latin-1'``."""
    return _Reduced(_Global("__builtin__", "bytearray"), (data.decode("latin-1"), b"latin-1"))


def _npy(values: list[bytes], how=np.save) -> bytes:
    """``np.save`` (or ``np.savez``...) of an object array of ``values`` (``allow_pickle``: the
    NPY header, then a pickle of the array)."""
    out = io.BytesIO()
    array = np.empty(len(values), dtype=object)
    array[:] = values
    how(out, array)
    return out.getvalue()


# Object arrays saved by NumPy: the array pickled after the NPY header, alone or in an .npz.
_OBJECT_ARRAYS = {
    "crops.npy": lambda values: _npy(values),
    "crops.npz": lambda values: _npy(values, np.savez),
    "crops-compressed.npz": lambda values: _npy(values, np.savez_compressed),
}


def test_a_sealed_file_in_an_object_array_npy_or_npz_stops_the_erasure(proj, tmp_path):  # noqa: F811
    """The subject's sealed file held in an object array saved by NumPy (``.npy``, ``.npz``):
    the pickle after the NPY header was not read as a pickle, and nothing of the sealed file's
    size was compared whole: the erasure was certified with it."""
    sealed_in_each(proj, tmp_path, _OBJECT_ARRAYS)


# Pickles of protocol 1 beginning with a long number or string of octal digits (with the NULs of
# a memo's index or a length before it: read as a tar header's numeric fields).
_LONG_FIRST = {
    "long-number-protocol-1.pkl": lambda values: pickle.dumps([10**4000, *values], protocol=1),
    "long-text-protocol-1.pkl": lambda values: pickle.dumps(["1" * 5000, *values], protocol=1),
    "long-str-py2-protocol-1.pkl": lambda values: py2_binary_dumps([b"7" * 5000, *values], 1),
}


def test_a_pickle_beginning_with_a_long_number_is_read_as_a_pickle(proj, tmp_path):  # noqa: F811
    """A protocol-1 pickle whose first value is a long number or string of octal digits was
    told a tar (its digits where a header's numbers lie, a NUL before them), so its strings
    were not read: the subject's sealed file in it was certified gone."""
    for name, make in _LONG_FIRST.items():
        data = make([b"x" * 9000])
        assert embedded.kind(data[: embedded.SNIFF]) == embedded.BINARY, name
    sealed_in_each(proj, tmp_path, _LONG_FIRST)


# Python 2's ``str`` (SHORT_BINSTRING, BINSTRING: its bytes as they are) and ``bytearray`` (its
# bytes as a ``unicode`` and ``'latin-1'``), pickled with protocol 0, 1 and 2 by Python 2.
_PY2_BINARY = {
    "strs-py2-protocol-1.pkl": lambda values: py2_binary_dumps(values, 1),
    "strs-py2-protocol-2.pkl": lambda values: py2_binary_dumps(values, 2),
    "bytearrays-py2.pkl": lambda values: py2_dumps([py2_bytearray(v) for v in values]),
    "bytearrays-py2-protocol-1.pkl": lambda values: py2_binary_dumps(
        [py2_bytearray(v) for v in values], 1
    ),
    "bytearrays-py2-protocol-2.pkl": lambda values: py2_binary_dumps(
        [py2_bytearray(v) for v in values], 2
    ),
}


def test_a_sealed_file_python_2_pickled_as_a_str_or_a_bytearray_stops_the_erasure(
    proj,  # noqa: F811
    tmp_path,
):
    """The subject's sealed file pickled by Python 2 as a ``str`` with protocol 1 or 2 (its
    bytes as they are, no value of protocol 3's) or as a ``bytearray`` (a ``unicode`` of its
    bytes, then ``'latin-1'``): nothing of its size was compared whole, and the erasure was
    certified with it."""
    for name, make in _PY2_BINARY.items():
        made = make([b"\x89PNG" + bytes(range(256)) * 4, b"ab"])
        back = pickle.loads(made, encoding="latin1")[0]
        back = back.encode("latin-1") if isinstance(back, str) else bytes(back)
        assert back == b"\x89PNG" + bytes(range(256)) * 4, name
    sealed_in_each(proj, tmp_path, _PY2_BINARY)


@pytest.fixture
def thumbs(project):
    """Three subjects whose photographs are thumbnails (2x2 pixels: a PNG of 79 bytes, each
    sealed in 186)."""
    return make_project(project, n_subjects=3, encode=lambda pixels: png(pixels[::16, ::16]))


# Python 2's ``str`` of under 256 bytes (SHORT_BINSTRING: ``U``, its length a byte, its bytes as
# they are), among other short ones, pickled with protocol 1 and 2.
_PY2_SHORT = {
    "thumbs-py2-protocol-1.pkl": lambda values: py2_binary_dumps([b"thumb", *values, b"x"], 1),
    "thumbs-py2-protocol-2.pkl": lambda values: py2_binary_dumps([b"thumb", *values, b"x"], 2),
}


def test_a_sealed_file_of_under_256_bytes_python_2_pickled_as_a_str_stops_the_erasure(
    thumbs, tmp_path
):
    """A thumbnail's sealed file (186 bytes) Python 2 pickled as a ``str`` with protocol 1 or
    2: of the short ones only a key's 32 bytes were compared, and the erasure was certified with
    it. The other subjects' sealed files, of the same size, stop nothing."""
    sealed = sorted((thumbs.paths.raw / thumbs.pids[0]).glob("*.sealed"))[0]
    assert sealed.stat().st_size < 256
    sealed_in_each(thumbs, tmp_path, _PY2_SHORT)


def test_only_short_strs_of_a_size_sought_are_hashed(monkeypatch):
    """A Python 2 pickle of short ``str`` values of every length: those of the one short size
    sought are given, no other; where no size under 256 bytes is sought, no SHORT_BINSTRING is
    looked for at all (a pickle of millions of short strings is read as fast as before)."""
    rng = np.random.default_rng(5)
    values = [rng.bytes(1 + i % 255) for i in range(5000)]
    sizes = _Sought(100, 9000)
    for protocol in (1, 2):
        data = py2_binary_dumps(values, protocol)
        found = set(embedded.inside(data, embedded.BINARY, sizes=sizes))
        assert found == {hashlib.sha256(v).hexdigest() for v in values if len(v) == 100}
    asked: list[bytes] = []
    real = embedded._short_strs

    def spy(data, lengths):
        asked.append(lengths)
        return real(data, lengths)

    monkeypatch.setattr(embedded, "_short_strs", spy)
    assert set(embedded.inside(data, embedded.BINARY, sizes=_Sought(100, 9000))) == found
    assert asked == [bytes([100])]
    asked.clear()
    assert not set(embedded.inside(data, embedded.BINARY, sizes=_Sought(9000)))
    assert not asked


# Pickles of protocol 0 and 1 whose first value is a long ``str`` (UNICODE: a line, its
# characters as they are; BINUNICODE: its UTF-8), a tuple's or alone before the next pickle:
# their first 4 KiB that one string, cut off.
_UNICODE_FIRST = {
    "caption-first-protocol-0.pkl": lambda values: pickle.dumps(("x" * 5000, *values), protocol=0),
    "caption-first-protocol-1.pkl": lambda values: pickle.dumps(("x" * 5000, *values), protocol=1),
    "digits-first-protocol-1.pkl": lambda values: pickle.dumps(("1" * 5000, *values), protocol=1),
    "latin-first-protocol-0.pkl": lambda values: pickle.dumps(("é" * 5000, *values), protocol=0),
    "caption-first-py2.pkl": lambda values: py2_dumps(("x" * 5000, *values)),
    "caption-first-py2-protocol-1.pkl": lambda values: py2_binary_dumps(("x" * 5000, *values), 1),
    "caption-then-values.pkl": lambda values: (
        pickle.dumps("x" * 5000, protocol=0) + pickle.dumps(list(values), protocol=0)
    ),
}


def test_a_pickle_beginning_with_a_long_unicode_string_is_read_as_a_pickle(proj, tmp_path):  # noqa: F811
    """A protocol-0 or 1 pickle whose first value is a long ``str`` (UNICODE, BINUNICODE) was
    told a text, a tar or nothing (fewer opcodes than a pickle's first 4 KiB must hold, the last
    no STRING or BINSTRING), so its strings were not read: the subject's sealed file in it was
    certified gone."""
    for name, make in _UNICODE_FIRST.items():
        data = make([b"x" * 9000])
        assert embedded.kind(data[: embedded.SNIFF]) == embedded.BINARY, name
    sealed_in_each(proj, tmp_path, _UNICODE_FIRST)


def test_a_long_line_or_utf_8_after_a_mark_is_seldom_taken_for_such_a_pickle():
    """Random bytes after a MARK and a UNICODE or BINUNICODE opcode (and its length), no line's
    end among them, are not taken for a pickle beginning with a long string; a text of one long
    line is read as a text unless it begins as such a pickle does."""
    rng = np.random.default_rng(13)
    for head in (b"(V", b"V", b"(X\x88\x13\x00\x00", b"X\x88\x13\x00\x00"):
        firsts = [
            head + rng.bytes(embedded.SNIFF - len(head)).replace(b"\n", b"n") for _ in range(2000)
        ]
        assert _heads_taken(firsts) == 0, head
    line = b"It was the best of times, it was the worst of times, " * 80
    assert embedded.kind(line[: embedded.SNIFF]) == embedded.TEXT


def _windows(data: bytes) -> bytes:
    """``data`` as Python 2 on Windows wrote it to a file opened in text mode (``open(path,
    "w")``, then ``pickle.dump``): each line's end ``\\r\\n``."""
    return data.replace(b"\n", b"\r\n")


# Python 2's protocol-0 pickles written on Windows in text mode.
_WINDOWS = {
    "rows-py2-windows.pkl": lambda values: _windows(_PY2["rows-py2.pkl"](values)),
    "dataset-py2-windows.pkl": lambda values: _windows(_PY2["dataset-py2.pkl"](values)),
    "bare-py2-windows.pkl": lambda values: _windows(_PY2["bare-py2.pkl"](values)),
}


def test_a_python_2_pickle_written_on_windows_stops_the_erasure(proj, tmp_path):  # noqa: F811
    """A Python 2 pickle of protocol 0 written in text mode on Windows (each ``\\n`` a
    ``\\r\\n``: read back as Python 2 read it, in text mode) holding the subject's sealed file: its
    lines were not read as a pickle's opcodes (``p0\\r``...) nor its STRINGs as ones (a
    ``\\r`` after the closing quote), and the erasure was certified with it."""
    value = b"\x89PNG\r\n" + bytes(range(256))
    back = pickle.loads(_windows(py2_dumps([value])).replace(b"\r\n", b"\n"), encoding="bytes")
    assert back == [value]
    sealed_in_each(proj, tmp_path, _WINDOWS)


def test_windows_texts_are_not_taken_for_such_a_pickle():
    """The text files of the Python installation with Windows line ends are not taken for a
    pickle of protocol 0 (their lines read again with ``\\n`` ends)."""
    texts = []
    for suffix in ("py", "csv", "json", "txt"):
        for path in sorted(Path(sys.prefix).rglob(f"*.{suffix}"))[:400]:
            texts.append(_windows(path.read_bytes())[: embedded.SNIFF])
    assert len(texts) > 400
    assert _heads_taken(texts) == 0


# Python 2's ``bytearray`` (``__builtin__ bytearray`` called with a ``unicode`` line and
# ``'latin-1'``) pickled with protocol 0, written on Windows in text mode: the GLOBAL's lines,
# the memo's and the UNICODE's line end ``\r\n``.
_WINDOWS_BYTEARRAYS = {
    "bytearrays-py2-windows.pkl": lambda values: _windows(
        py2_dumps([py2_bytearray(v) for v in values])
    ),
    "bytearray-rows-py2-windows.pkl": lambda values: _windows(
        py2_dumps([(f"face-{i}", py2_bytearray(v)) for i, v in enumerate(values)])
    ),
}


def test_a_bytearray_python_2_pickled_on_windows_stops_the_erasure(proj, tmp_path):  # noqa: F811
    """A ``bytearray`` of the subject's sealed file Python 2 pickled with protocol 0 in a file
    written in text mode on Windows: its head (``c__builtin__\\r\\nbytearray\\r\\n``) was not
    found, and the erasure was certified with it."""
    value = b"\x89PNG\r\n" + bytes(range(256))
    made = _WINDOWS_BYTEARRAYS["bytearrays-py2-windows.pkl"]([value])
    back = pickle.loads(made.replace(b"\r\n", b"\n"), encoding="latin1")
    assert back == [bytearray(value)]
    sealed_in_each(proj, tmp_path, _WINDOWS_BYTEARRAYS)


def test_a_bytearray_ending_with_a_return_is_read_whole_from_either_line_end(tmp_path):
    """A ``bytearray`` whose last byte is a CR (the UNICODE line keeps it as it is): written on
    Windows, its line's CR is the line end's, told by the lines before it, and the value's own
    kept; written with ``\\n``, the CR is the value's."""
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8 + b"\r"
    makers = {
        "bytearray-py2.pkl": lambda values: py2_dumps([py2_bytearray(v) for v in values]),
        **_WINDOWS_BYTEARRAYS,
    }
    for name, make in makers.items():
        made = make([b"ab", photo])
        if "windows" in name:  # read back in text mode
            made = made.replace(b"\r\n", b"\n")
        assert pickle.loads(made, encoding="latin1")[-1] in (bytearray(photo), ("face-1", photo))
    pickles_read_alike(tmp_path, makers, photo, b"ab")
    # Its bytes without the last CR: found from neither (a value is one size, not two).
    cut = hashlib.sha256(photo[:-1]).hexdigest()
    for make in makers.values():
        assert cut not in set(embedded.inside(make([b"ab", photo]), embedded.BINARY))


def test_crafted_windows_heads_of_protocol_0_strings_are_each_tried_once(monkeypatch):
    """Crafted: Windows heads (a get, a MARK, an UNICODE, each line ending ``\\r\\n``) each
    followed by a long line and no arguments, or a line not ending ``\\r\\n``: each MARK found
    once and its head tried, each line's end searched for over the bytes to the next: linear,
    nothing found. More such heads than image starts a file of its size may hold: not read to
    its end (not shown clean)."""
    searched = finds_searched(monkeypatch)
    n = 10_000
    no_args = b"(" + (b"g1\r\n(V" + b"\x89" * 200 + b"\r") * n
    no_cr = b"(" + (b"c__builtin__\r\nbytearray\r\n(V" + b"\x89" * 200 + b"\n") * n
    for data in (no_args, no_cr):
        assert embedded.kind(data[: embedded.SNIFF]) == embedded.BINARY
        searched.clear()
        assert list(embedded.inside(data, embedded.BINARY)) == []
        assert len(searched) <= 4 * n
        assert sum(searched) <= 4 * len(data)
    with pytest.raises(embedded.TooManyStarts):
        list(embedded.inside(b"(" + b"g1\r\n(V\n" * 1_000_000, embedded.BINARY))
