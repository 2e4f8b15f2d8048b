"""Erased photographs base64-encoded in a text file otherwise than the standard alphabet wrapped
or not: the URL-safe alphabet (a JWT's payload, a web API's, a JS library's data URL), JSON's
escaped slash (PHP's ``json_encode`` writes ``/`` as ``\\/``), two photographs wrapped back to
back whose first ends on a full line.

Before: none of them was looked inside (the run broke at each ``-``, ``_`` or ``\\/``, and two
wrapped photographs were read as one run, decoding to both together); the erasure left the
photograph in place and the verifier called the certificate VALID while it was there.
"""

# ruff: noqa: F811 - fixtures imported from the modules that define them

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import struct
import zlib

import numpy as np
import pytest
from rights_fakes import HEX_DUMPS, make_project, png
from test_erasure_inside import _photos, proj  # noqa: F401 - a fixture

from visage_ml.rights import embedded, embedded_photos, embedded_text
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _data(n: int, salt: int = 0) -> bytes:
    return bytes((i * 7 + n + salt) % 251 for i in range(n))


class _Sought:
    """What a scan seeks, by size (as :class:`~visage_ml.rights.content_hashes.ContentHashes`)."""

    def __init__(self, *sizes: int) -> None:
        self.sizes = set(sizes)

    def may_match(self, size: int) -> bool:
        return size in self.sizes


def _urlsafe(data: bytes, *, padded: bool = True) -> bytes:
    out = base64.urlsafe_b64encode(data)
    return out if padded else out.rstrip(b"=")


def _php(data: bytes) -> bytes:
    """The base64 of ``data`` as PHP's ``json_encode`` writes it in a string: ``/`` as ``\\/``."""
    return base64.b64encode(data).replace(b"/", b"\\/")


# A photograph whose base64 holds both '+' or '/' and '-' or '_' in each of these.
LAYOUTS = {
    "urlsafe-json": lambda a: b'{"img": "' + _urlsafe(a) + b'"}',
    "urlsafe-unpadded-json": lambda a: b'{"img": "' + _urlsafe(a, padded=False) + b'"}',
    "urlsafe-data-url": lambda a: b'<img src="data:image/png;base64,' + _urlsafe(a) + b'">',
    "urlsafe-jwt": lambda a: b"eyJhbGciOiJIUzI1NiJ9." + _urlsafe(a, padded=False) + b".c2ln\n",
    "urlsafe-wrapped": lambda a: b"\n".join(
        _urlsafe(a)[i : i + 76] for i in range(0, len(_urlsafe(a)), 76)
    ),
    "php-escaped-slash": lambda a: b'{"img":"' + _php(a) + b'","id":1}',
    # PHP's chunk_split (76, "\r\n") then json_encode: escaped slashes and escaped line breaks.
    "php-chunked": lambda a: (
        b'{"img":"'
        + base64.encodebytes(a)
        .replace(b"\n", b"\r\n")
        .replace(b"/", b"\\/")
        .replace(b"\r\n", b"\\r\\n")
        + b'"}'
    ),
    "php-after-an-escaped-quote": lambda a: b'{"t":"say \\"hi\\"","img":"' + _php(a) + b'"}',
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_base64_of_the_urlsafe_alphabet_or_with_escaped_slashes_is_found(layout):
    """Every length (every padding, every last line): the photograph is found, with and
    without the sizes a scan seeks."""
    missed = []
    for n in range(3000, 3012):
        a = _data(n)
        text = LAYOUTS[layout](a)
        assert b"-" in text or b"_" in text or b"\\/" in text  # the layout is what it says
        for sizes in (None, _Sought(n)):
            if _sha(a) not in set(embedded.inside(text, embedded.TEXT, sizes=sizes)):
                missed.append((n, sizes is not None))
    assert missed == []


def _pngs_back_to_back(first_full: bool) -> tuple[bytes, bytes]:
    """Two PNGs, the first ending on a full line of a 76-character wrap (its size a multiple
    of 57) when ``first_full``."""
    a = embedded_photos.PNG_MAGIC + _data(57 * 50 - 8)
    b = embedded_photos.PNG_MAGIC + _data(3000 - 8, 1)
    return (a, b) if first_full else (b, a)


@pytest.mark.parametrize("sep", [b"\n", b"\r\n", b"\\n"], ids=["lf", "crlf", "json-lf"])
@pytest.mark.parametrize("sized", [False, True], ids=["any-size", "sizes-sought"])
def test_two_photographs_wrapped_back_to_back_are_each_found_and_cut(sep, sized, tmp_path):
    """``base64 a.png >> faces.txt; base64 b.png >> faces.txt``: where the first's last line
    is full, the two were one run of lines, decoding to both together (matching neither).
    Each is found, and cutting one leaves the other."""
    a, b = _pngs_back_to_back(first_full=True)
    both = base64.encodebytes(a) + base64.encodebytes(b)
    assert len(a) % 57 == 0 and base64.encodebytes(a).count(b"\n") == len(a) // 57
    text = both.replace(b"\n", sep)
    for erased, kept in ((a, b), (b, a)):
        sizes = _Sought(len(erased)) if sized else None
        assert _sha(erased) in set(embedded.inside(text, embedded.TEXT, sizes=sizes))
        path = tmp_path / "faces.txt"
        path.write_bytes(text)
        assert _sha(erased) in embedded.encoded(path)
        assert embedded.cut_encoded(path, {_sha(erased)}) == 1
        left = path.read_bytes().replace(sep, b"\n")
        assert base64.decodebytes(left) == kept


def test_two_wrapped_photographs_of_no_known_format_are_found_by_the_sizes_sought():
    """No signature to split at: where a size sought would end (from the start or the end)."""
    a, b = _data(57 * 30), _data(57 * 31 + 5, 3)
    text = base64.encodebytes(a) + base64.encodebytes(b)
    for erased in (a, b):
        found = set(embedded.inside(text, embedded.TEXT, sizes=_Sought(len(erased))))
        assert _sha(erased) in found


def test_a_mime_attachment_before_its_boundary_line_is_still_found():
    """A boundary line (``--==...``) right after the wrapped photograph joins its run of lines:
    it holds '-', the photograph '+' or '/', and the run is still read line by line."""
    missed = []
    for n in range(3000, 3003):
        a = _data(n)
        text = b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(a) + b"--==abc==--\n"
        if _sha(a) not in set(embedded.inside(text, embedded.TEXT)):
            missed.append(n)
    assert missed == []


def _decoded_counted(monkeypatch) -> list[int]:
    decoded: list[int] = []
    real = embedded_text._decoded

    def counted(text):
        decoded.append(len(text))
        return real(text)

    monkeypatch.setattr(embedded_text, "_decoded", counted)
    return decoded


@pytest.mark.parametrize(
    "crafted",
    ["dashes-lines", "escaped-slashes", "escaped-slash-lines", "full-lines-of-signatures"],
)
def test_crafted_text_of_the_new_alphabets_is_read_in_linear_time(crafted, monkeypatch):
    """Lines of '-' and '_', ``\\/`` repeated, a long run of full lines each beginning a PNG
    (a split at each): what is decoded, and what the splits hand on, stay within a few times
    the file's size, with every size sought or none (splitting at each line where a size
    sought would end, or handing on each part from a line where a file begins to the run's end,
    was quadratic)."""
    lines = 12_000
    text = {
        "dashes-lines": b"-" * 17 + b"".join(b"\n" + b"_-" * 8 for _ in range(lines)),
        "escaped-slashes": b'{"a":"' + b"\\/" * (40 * lines) + b'"}',
        "escaped-slash-lines": b"\\/" * 9 + b"".join(b"\\n" + b"A\\/" * 5 for _ in range(lines)),
        "full-lines-of-signatures": base64.encodebytes(
            (embedded_photos.PNG_MAGIC + _data(49)) * lines
        ),
    }[crafted]
    for sizes in (None, _Sought(*range(57, 57 * lines, 57))):
        decoded = _decoded_counted(monkeypatch)
        handed = 0
        for _, raw in embedded_text._runs(text, sizes):
            handed += len(raw)
        assert sum(decoded) <= 3 * len(text), crafted
        # The run, its parts where a file begins, and both sides of a few sized splits.
        assert handed <= 10 * len(text), crafted


def _padded_to_a_full_line(arr: np.ndarray) -> bytes:
    """A PNG whose size is a multiple of 57: its base64, wrapped at 76, ends on a full line (a
    text chunk, as an editor writes one, makes up the size)."""
    data = png(arr)
    body = b"c\x00" + b"x" * (-(len(data) + 14) % 57)
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]) & 0xFFFFFFFF)
    out = data[:-12] + chunk + data[-12:]  # before IEND
    assert len(out) % 57 == 0
    return out


@pytest.fixture
def full_lines(project):
    return make_project(project, n_subjects=3, encode=_padded_to_a_full_line)


@pytest.mark.parametrize("victim_first", [True, False], ids=["erased-first", "erased-second"])
def test_wrapped_back_to_back_in_json_the_erasure_cuts_and_the_verifier_fails(
    full_lines, victim_first
):
    """A JSON file of two subjects' photographs, each wrapped at 76 and written one after the
    other into one string: the erased one is cut out of it (the file still JSON, the other
    photograph whole), and the verifier fails while it is there."""
    victim, png_, theirs = _photos(full_lines)
    pair = (png_, theirs) if victim_first else (theirs, png_)
    folder = full_lines.paths.root / "data" / "exports"
    folder.mkdir(parents=True)
    path = folder / "faces.json"
    value = (base64.encodebytes(pair[0]) + base64.encodebytes(pair[1])).decode()
    path.write_text(json.dumps({"faces": value, "n": 2}), encoding="utf-8")
    saved = path.read_bytes()
    result = Erasure(full_lines.paths).erase(victim)
    left = json.loads(path.read_text(encoding="utf-8"))
    assert left["n"] == 2 and base64.decodebytes(left["faces"].encode()) == theirs
    assert result.certificate["claims"]["copies_removed"] == {"data": 1}
    assert verify_certificate(result.certificate_path, root=full_lines.paths.root).ok
    path.write_bytes(saved)
    report = verify_certificate(result.certificate_path, root=full_lines.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(path)]


@pytest.mark.parametrize(
    "encode",
    [_urlsafe, lambda p: _urlsafe(p, padded=False), _php],
    ids=["urlsafe", "urlsafe-unpadded", "php-escaped-slash"],
)
def test_the_photograph_urlsafe_or_php_encoded_in_json_is_cut_and_the_verifier_fails(proj, encode):
    victim, png_, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "labels"
    folder.mkdir(parents=True)
    path = folder / "faces.json"
    # As the serializer writes it (a string's escapes its own), no space after the colons.
    rows = [
        b'{"img":"' + encode(p) + b'","id":' + str(i).encode() + b"}"
        for i, p in ((1, png_), (2, theirs))
    ]
    path.write_bytes(b"[" + b",".join(rows) + b"]")
    saved = path.read_bytes()
    result = Erasure(proj.paths).erase(victim)
    left = json.loads(path.read_text(encoding="utf-8"))
    kept = encode(theirs).replace(b"\\/", b"/").decode()
    assert [(r["img"], r["id"]) for r in left] == [("", 1), (kept, 2)]
    assert result.certificate["claims"]["copies_removed"] == {"data": 1}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    path.write_bytes(saved)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(path)]


def test_runs_found_through_the_mask_are_those_the_expression_finds():
    """Runs are looked for where 16 bytes of their class begin (a mask of the bytes, searched),
    not by trying the expression at every byte of a pickle or an array: the same runs, at the
    same places, as the expression finds over text, binary and the edges between them."""
    import random

    rng = random.Random(53)
    alphabet = b'ABCabc0129+/_-\\\r\n="x, '
    for _ in range(2000):
        n = rng.randrange(0, 300)
        data = bytes(
            rng.choice(alphabet) if rng.random() < 0.9 else rng.randrange(256) for _ in range(n)
        )
        expected = [m.span() for m in embedded_text.B64_RUN.finditer(data)]
        assert list(embedded_text._run_spans(data)) == expected


# Keys Python prints with single quotes, with double quotes (it holds a ' and no "), and with a
# backslash, a quote and printable bytes among the escapes.
_PRINTED_KEYS = [
    bytes(range(0x80, 0xA0)),
    b"'" + bytes(range(0xA0, 0xBF)),
    b"\\'\"\t\n\r a~" + bytes(range(0xE0, 0xF7)),
]


@pytest.mark.parametrize("key", _PRINTED_KEYS, ids=["single", "double", "escapes"])
@pytest.mark.parametrize("layer", ["text", "json"])
def test_a_key_printed_as_python_prints_bytes_is_found_where_it_lies(key, layer):
    printed = repr(key)
    text = f"k = {printed}\n" if layer == "text" else json.dumps({"text": [f"{printed}\n"]})
    data = text.encode()
    found = [(span, raw) for span, raw in embedded_text._runs(data) if len(raw) == 32]
    assert [raw for _, raw in found] == [key]
    (start, end), _ = found[0]
    # The span is the literal as it lies: cut, nothing of it is left.
    expected = printed if layer == "text" else json.dumps(printed)[1:-1]
    assert data[start:end].decode() == expected


def test_bytes_of_another_length_or_not_a_literal_are_no_key():
    near = [repr(bytes(31)), repr(bytes(33)), "rb'" + "a" * 32 + "'", "xb'" + "\\x00" * 32 + "'"]
    data = "\n".join(near).encode()
    assert [raw for _, raw in embedded_text._runs(data) if len(raw) == 32] == []


_KEY = bytes(range(0x8F, 0xAF))  # a byte of each digit, upper half: "8f", "a0"...


@pytest.mark.parametrize("sep", [":", " ", "-"])
@pytest.mark.parametrize("case", ["lower", "upper"])
@pytest.mark.parametrize("layer", ["text", "json"])
def test_a_key_printed_as_hex_pairs_with_a_separator_is_found_where_it_lies(sep, case, layer):
    printed = _KEY.hex(sep)
    printed = printed.upper() if case == "upper" else printed
    text = f"key: {printed}\n" if layer == "text" else json.dumps({"text": [f"{printed}\n"]})
    data = text.encode()
    found = [(span, raw) for span, raw in embedded_text._runs(data) if len(raw) == 32]
    assert [raw for _, raw in found] == [_KEY]
    (start, end), _ = found[0]
    assert data[start:end].decode() == printed  # cut, nothing of it is left


def test_hex_pairs_of_another_count_or_run_are_no_key():
    # 31 or 33 pairs, the key's 32 inside a longer run (of pairs, or after a longer token of
    # hex joined so), two separators, a mix of them, a MAC and a UUID: none is 32 bytes printed.
    key = _KEY
    near = [
        key[:31].hex(":"),
        (key + b"\x00").hex(":"),
        (b"\x00" + key).hex(" "),
        "ab:cd:" + key.hex(":"),
        key.hex("-") + "-0f",
        "beef:" + key.hex(":") + ":00",
        key.hex(":").replace(":", "::"),
        key[:16].hex(":") + "-" + key[16:].hex("-"),
        key.hex(":") + "0",
        "0" + key.hex(" "),
        "ee:e7:61:5e:f3:5f",
        "89e7d15f-1736-2f25-244c-af9c4dabb481",
    ]
    data = "\n".join(near).encode()
    assert [raw for _, raw in embedded_text._runs(data) if len(raw) == 32] == []


# A key whose bytes literal holds characters no base64 run has (where a window may end).
_PUNCTUATED = b"!#%&.;<>?@" + bytes(range(0x90, 0xA6))
_PRINTED_FORMS = {
    "pairs": (_KEY, _KEY.hex(" ")),
    "numbers": (_KEY, str(list(_KEY))),
    "literal": (_PUNCTUATED, repr(_PUNCTUATED)),
    "literal in JSON": (_PUNCTUATED, json.dumps({"text": [repr(_PUNCTUATED)]})),
    # ``xxd``: its column of characters holds any printable byte
    "xxd": (_PUNCTUATED, HEX_DUMPS["xxd"](_PUNCTUATED)),
}


@pytest.mark.parametrize("form", sorted(_PRINTED_FORMS))
def test_a_key_printed_over_the_edge_of_a_large_texts_window(monkeypatch, form):
    # A text over EMBED_MAX is read a window at a time, each ending after the last byte no
    # base64 run holds: a space or a colon between two pairs, a comma between two numbers, a
    # character of a bytes literal that no base64 run has ended one there.
    monkeypatch.setattr(embedded, "EMBED_MAX", 4096)
    key, printed = _PRINTED_FORMS[form]
    printed = printed.encode()
    lines = b"".join(b"%05d run ok, loss 0.41.\n" % i for i in range(400))
    for at in range(0, len(printed), 5):
        head = lines[: 4096 - at - 5] + b"\nkey "
        data = head + printed + b"\n" + lines
        found = set(embedded.inside_text(io.BytesIO(data)))
        assert _sha(key) in found, at


def test_pairs_found_through_the_mask_are_the_runs_of_32_an_expression_finds():
    """Keys printed as hex pairs are found in a mask of the text, passing a run of more a key's
    length at a time: the same, at the same places, as every maximal run of pairs (each a token
    of its own) joined by one separator, of 32 pairs, that an expression finds, where runs of
    31, 32 and 33 pairs of each separator and case lie back to back or a few bytes apart."""
    import binascii
    import random

    rng = random.Random(29)

    def expected(data: bytes) -> list:
        found = []
        for sep in embedded.PAIR_SEPARATORS:
            lone = rb"[0-9A-Fa-f]{2}(?![0-9A-Za-z])"
            run = rb"(?<![0-9A-Za-z])%s(?:%s%s)*" % (lone, re.escape(bytes([sep])), lone)
            for m in re.finditer(run, data):
                if len(m.group()) == 32 * 3 - 1:
                    found.append(
                        (m.span(), binascii.unhexlify(m.group().replace(bytes([sep]), b"")))
                    )
        return sorted(found)

    for _ in range(1500):
        parts = []
        for _ in range(rng.randrange(1, 6)):
            pairs = rng.randbytes(rng.choice([5, 31, 32, 32, 33])).hex(rng.choice(":- "))
            parts.append((pairs.upper() if rng.random() < 0.3 else pairs).encode())
            parts.append(bytes(rng.choice(b"0a9F:: --xZ.\n") for _ in range(rng.randrange(4))))
        data = b"".join(parts)
        assert sorted(
            embedded_text._paired(data, data.translate(embedded_text._PAIRS_MASK))
        ) == expected(data), data


@pytest.mark.parametrize(
    "printed",
    [
        str(list(_KEY)),
        str(tuple(_KEY)),
        json.dumps(list(_KEY), separators=(",", ":")),
        json.dumps(list(_KEY), indent=1),
        repr(np.frombuffer(_KEY, np.uint8))[len("array(") : -len(", dtype=uint8)")],
    ],
    ids=["list", "tuple", "json", "json-indented", "numpy"],
)
@pytest.mark.parametrize("layer", ["text", "json", "notebook"])
def test_a_key_printed_as_the_list_of_its_numbers_is_found_where_it_lies(printed, layer):
    # A saved notebook keeps an output's lines as the strings of a list: a repr over lines
    # (NumPy's, indented JSON) lies there as ``...,\n",\n   "  200, ...``.
    text = {
        "text": f"k = {printed}\n",
        "json": json.dumps({"text": [f"{printed}\n"]}),
        "notebook": json.dumps({"text": f"k = {printed}\n".splitlines(True)}, indent=1),
    }[layer]
    data = text.encode()
    found = [(span, raw) for span, raw in embedded_text._runs(data) if len(raw) == 32]
    assert [raw for _, raw in found] == [_KEY]
    (start, end), _ = found[0]
    if layer == "text":
        assert data[start:end].decode() == printed
    else:  # cut from inside one string to inside another: still JSON, the key's lines joined
        left = json.loads(data[:start] + data[end:])["text"]
        assert "".join(left if isinstance(left, list) else [left]).strip("k =\n") == ""


def test_numbers_of_another_count_range_or_list_are_no_key():
    key = list(_KEY)
    near = [
        str(key[:31]),
        str([*key, 0]),
        str([0, *key]),
        str([*key[:31], 256]),
        str([[*key[:16]], [*key[16:]]]),
        str([float(b) for b in key]),
        str(key).replace(" 1", " 01"),
        str([1, 2, *key, 3]),
    ]
    data = "\n".join(near).encode()
    assert [raw for _, raw in embedded_text._runs(data) if len(raw) == 32] == []


def test_texts_between_backslashes_are_those_a_run_read_whole_gives(monkeypatch):
    """A run holding backslashes is split into its texts only within the stretches between those
    that end a text (_unbroken: any but ``\\/``, ``\\n`` and ``\\r\\n``'s) long enough to hold
    one, and searched for a key only where 43 bytes of no backslash nor line break lie in a row:
    the same runs, keys, spans and bytes as reading each run whole, over escapes of every kind
    and the edges of the pieces _unbroken reads (here 7 bytes)."""
    import random

    rng = random.Random(59)
    photo = base64.b64encode(_data(300)).replace(b"/", b"\\/")
    key = _data(32, salt=5)
    pieces = [b"\\x9f", b"\\/", b"\\n", b"\\r\\n", b"\\r", b"\\\\", b"\\", b"\\t", b'\\"', b"A"]
    pieces += [b"\n", b"\r\n", b"=", b" ", b"Zm9v" * 5, photo[:90], photo]
    pieces += [key.hex().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key)[:43]]
    texts = [b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40))) for _ in range(600)]
    texts += [b'{"img":"' + photo + b'"}', b"\\x41" * 30 + photo + b"\\x41" * 30]
    monkeypatch.setattr(embedded_text, "CHUNK", 7)
    for sizes in (None, _Sought(225, 300)):
        for text in texts:
            split = list(embedded_text._runs(text, sizes))
            monkeypatch.setattr(embedded_text, "_unbroken", lambda data, _: iter([(0, len(data))]))
            monkeypatch.setattr(embedded_text, "_KEY_FREE", b"\x01" * 256)
            assert split == list(embedded_text._runs(text, sizes)), text
            monkeypatch.undo()
            monkeypatch.setattr(embedded_text, "CHUNK", 7)
    assert key in [raw for text in texts for _, raw in embedded_text._runs(text)]
    assert _data(300) in [raw for _, raw in embedded_text._runs(texts[-2])]


def _py2_repr(data: bytes) -> bytes:
    """A Python 2 ``str``'s repr, as test_erasure_inside_pickles.py's ``py2_repr``."""
    named = {9: b"\\t", 10: b"\\n", 13: b"\\r", 92: b"\\\\", 39: b"\\'"}
    out = [named.get(c) or (bytes([c]) if 0x20 <= c < 0x7F else b"\\x%02x" % c) for c in data]
    return b"'" + b"".join(out) + b"'"


def test_a_python_2_pickle_of_escaped_bytes_is_split_only_where_a_text_may_lie(monkeypatch):
    """Crafted: a Python 2 pickle of protocol 0 whose strings are bytes (Python 2's ``repr``, a
    ``\\xhh`` escape every few bytes), one run of the alphabet: it was split into a text at each
    backslash (9 s for 38 MiB). Only the stretches between backslashes long enough to hold a text
    are now: none of the bytes', and the sealed file's base64 held in a JSON string (escaped
    quotes and slashes) among them is found, and so are the bytes themselves."""
    rng = np.random.default_rng(61)
    values = [rng.bytes(20_000) for _ in range(20)]
    sealed = rng.bytes(3000)
    json_ = b'{"note": "say \\"hi\\"", "img": "' + _php(sealed) + b'"}'
    values.insert(10, json_)
    pickled = b"(lp0\n" + b"".join(
        b"S" + _py2_repr(v) + b"\np%d\na" % (i + 1) for i, v in enumerate(values)
    )
    pickled += b"."
    read = []
    real = embedded_text._lines

    def lines(data, start, end):
        read.append(end - start)
        return real(data, start, end)

    monkeypatch.setattr(embedded_text, "_lines", lines)
    found = set(embedded.inside(pickled, embedded.kind(pickled[: embedded.SNIFF])))
    assert _sha(sealed) in found
    assert {_sha(v) for v in values} <= found
    assert sum(read) < len(pickled) // 50, (len(read), sum(read), len(pickled))
