"""A table's values are decided without a call each (``embedded_tables._table_values``): what
it finds and what the file scan cache notes are what each value read through ``_part`` (and
its base64 runs through ``_runs``) gives, for any value: a photograph's start, a compressed
file's, their base64 in either alphabet, escaped as JSON may write it, a hex id."""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import lzma
import os
import zipfile
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from visage_ml.rights import embedded, embedded_tables, embedded_text, scan_cache
from visage_ml.rights.embedded_text import B64_MIN, _runs

RUNS = settings(
    max_examples=int(os.environ.get("VISAGE_TABLE_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
# How files begin: the compressed ones (their base64 is looked inside whatever its size) and
# others that are not.
MAGICS = [
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x1f\x8b\x08",
    b"\xfd7zXZ\x00",
    b"BZh91AY&SY",
    b"PAR1",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"SQLite format 3\x00",
]
RAW = st.binary(max_size=160)
# Photographs' sizes sought; a compressed file holding one is far shorter than it.
SIZES = [200, 300, 400]
CONTENT = bytes(range(40)) * 10


def _zipped(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("p.jpg", data)
    return out.getvalue()


COMPRESSED = st.builds(
    lambda pack, size: pack(CONTENT[:size]),
    st.sampled_from([gzip.compress, bz2.compress, lzma.compress, _zipped]),
    st.sampled_from(SIZES),
)
STARTS = st.one_of(
    st.sampled_from(MAGICS),
    st.sampled_from(sorted(embedded.EXPANDS_PAIRS)),  # base64 as a compressed file's
    st.binary(min_size=2, max_size=2),
)
FILES = st.one_of(RAW, st.builds(bytes.__add__, STARTS, RAW), COMPRESSED)


def _escaped(text: bytes) -> bytes:
    return text.replace(b"/", b"\\/")


ENCODED = st.builds(
    lambda f, code: code(f),
    FILES,
    st.sampled_from([base64.b64encode, base64.urlsafe_b64encode, base64.encodebytes]),
)
TEXTS = st.builds(
    lambda head, run, tail, escape: head + (_escaped(run) if escape else run) + tail,
    st.sampled_from([b"", b"x,", b'{"a": "', b"data:image/png;base64,"]),
    ENCODED,
    st.sampled_from([b"", b'"}', b",1\n"]),
    st.booleans(),
)
# A compressed photograph's base64 in a value shorter than the photograph: looked inside.
PACKED = st.builds(
    lambda head, f, code, escape, tail: head + (_escaped(code(f)) if escape else code(f)) + tail,
    st.sampled_from([b"", b'{"a": "']),
    COMPRESSED,
    st.sampled_from([base64.b64encode, base64.urlsafe_b64encode, base64.encodebytes]),
    st.booleans(),
    st.sampled_from([b"", b'"}']),
)
VALUES = st.one_of(FILES, TEXTS, PACKED, st.builds(lambda b: b.hex().encode(), RAW)).filter(bool)
SOUGHT = st.one_of(
    st.sets(st.sampled_from(SIZES), min_size=1),
    st.sets(st.integers(1, 400), min_size=1, max_size=4),
)


class _Sought:
    """What is sought, by size, recording what a read asked and told of it."""

    def __init__(self, sought: set[int]) -> None:
        self.sought, self.smallest, self.events = sought, min(sought), []

    def may_match(self, size: int) -> bool:
        self.events.append(("may_match", size))
        return size in self.sought

    def passed_over(self, size: int) -> None:
        self.events.append(("passed_over", size))


def _outcome(run: Any) -> tuple[Any, ...]:
    try:
        return ("found", list(run()))
    except embedded.TooLarge as exc:
        return ("too large", type(exc).__name__)


def _key_runs(value: bytes) -> list[bytes]:
    """The keys a text's runs may be (64 hex digits, a key's base64), as embedded.key_texts
    reads them."""
    if len(value) < embedded.KEY_TEXT_MIN or not embedded._text(value[:4096]):
        return []
    return [
        raw
        for start, end in embedded_text._run_spans(value)
        if end - start >= embedded.KEY_TEXT_MIN
        for _, raw in embedded_text._keys(value, start, end)
    ]


def _each_value(column: Any, sizes: Any) -> list[str]:
    """What a column held is, each value read as a part and its base64 runs after it."""
    found: list[str] = []
    below, budget = embedded.smallest_sought(sizes), embedded._Budget(1 << 30)
    for value in embedded_tables._column_values(column):
        found += embedded._part(value, sizes, 0, budget)
        if B64_MIN <= len(value) < below and embedded.kind(value[:4096]) == embedded.TEXT:
            for _, raw in _runs(value, sizes):
                found += embedded._part(raw, sizes, 0, budget)
    return found


@RUNS
@given(VALUES, SOUGHT)
# One byte whose base64 begins as a zlib stream's (78 ..) or an LZMA one's (5d 00) does: it holds
# nothing, and is passed over (CI found b"x" held for reading once those streams were read).
@example(b"x", {200})
@example(b"]", {200})
@example(b"a1" * 32, {200})
def test_a_value_is_passed_over_as_part_would_pass_it_over(value, sought):
    sizes = _Sought(sought)
    _outcome(lambda: embedded._part(value, sizes, 0, embedded._Budget(1 << 30)))
    passed = sizes.events[:1] == [("passed_over", len(value))]
    # A key's 32 bytes are asked of by their size, whatever else is sought (an erased
    # subject's key, unwrapped, stored as a value of its own).
    small = len(value) < min(sought) and len(value) != embedded.KEY_SIZE
    assert passed == (small and value[:2] not in embedded.EXPANDS_PAIRS)
    if passed:
        # Then only a key printed in it is asked of (by its size: embedded.key_texts).
        keys = [] if not list(_key_runs(value)) else [("may_match", embedded.KEY_SIZE)]
        assert sizes.events == [("passed_over", len(value)), *keys]
    # A value read (not passed over) is first asked of by its size; one passed over is not
    # (what its base64 decodes to is shorter).
    sizes = _Sought(sought)
    table = pa.table({"c": pa.array([value], pa.binary())})
    _outcome(lambda: embedded_tables._table_values(table, sizes, 0, embedded._Budget(1 << 30)))
    assert (sizes.events[:1] == [("may_match", len(value))]) == (not passed)


@RUNS
@given(st.lists(VALUES, min_size=1, max_size=6), SOUGHT)
@example([base64.b64encode(lzma.compress(CONTENT[:300]))], {300})
@example([_escaped(base64.b64encode(lzma.compress(CONTENT[:300])))], {300})
@example([base64.urlsafe_b64encode(lzma.compress(CONTENT[:300]))], {300})
@example([b'{"a": "' + base64.b64encode(_zipped(CONTENT[:300])) + b'"}'], {300})
@example([base64.encodebytes(bz2.compress(CONTENT[:300]))], {300})
@example([base64.b64encode(gzip.compress(CONTENT[:300])), b"x"], {300})
@example([b"\x01" * 21 + b"+" * 43], {200})
@example([b"a1" * 32, b"+" * 43 + b"="], {200})
def test_a_column_finds_and_notes_what_each_value_read_as_a_part_does(values, sought):
    table = pa.table({"c": pa.array(values, pa.binary())})
    column = table.column("c")

    def read(fast: bool) -> tuple[Any, ...]:
        noted = scan_cache.Noted(embedded.Floored(_Sought(sought)))
        if fast:
            budget = embedded._Budget(1 << 30)
            found = _outcome(lambda: embedded_tables._table_values(table, noted, 0, budget))
        else:
            found = _outcome(lambda: _each_value(column, noted))
        return found, noted.small, sorted(noted.refused)

    assert read(fast=True) == read(fast=False)
