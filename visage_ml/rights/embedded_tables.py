"""What a table's values hold: a Parquet table's (:func:`_table`) and an Arrow file's or stream's
(:func:`_arrow`) byte and text columns, read with pyarrow (their pages and buffers are
compressed: a photograph in a column does not lie in the file as it is), each value looked
inside as a file held in another is, a short string's base64 runs too. Only the columns that can
hold bytes are read, what they expand to spent from the budget before they are read; a table
too large to hold is read from its file a few rows at a time."""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator
from typing import IO, Any

from visage_ml.rights import embedded, embedded_formats
from visage_ml.rights.embedded import (
    B64_EXPANDS,
    EXPANDS_PAIRS,
    KEY_TEXT_MIN,
    SizeFilter,
    _Budget,
)
from visage_ml.rights.embedded_mapping import Buffer
from visage_ml.rights.embedded_text import B64_MIN, _runs

# What a value must hold for a base64 run of it to begin as a compressed file's does
# (:data:`~visage_ml.rights.embedded.B64_EXPANDS`, of either alphabet; ``\/`` holds ``/``).
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_EXPANDS_TEXT = re.compile(
    b"|".join(map(re.escape, sorted(B64_EXPANDS | {p.translate(_TO_URLSAFE) for p in B64_EXPANDS})))
)

# Rows of a table read from its file at once (:func:`_table`): a data set's photographs, a few
# MB each at most.
TABLE_ROWS = 64
TABLE_BUFFER = 1 << 20


def _holds_bytes(t: Any) -> bool:  # a pyarrow DataType (pyarrow is imported late)
    """Whether a Parquet column of arrow type ``t`` can hold bytes or text: binary or string of
    any width, or a dictionary, list, struct or map with such values."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _holds_bytes(t.value_type)
    if isinstance(t, pa.ExtensionType):
        return _holds_bytes(t.storage_type)
    checks = (
        "is_binary",
        "is_large_binary",
        "is_fixed_size_binary",
        "is_binary_view",
        "is_string",
        "is_large_string",
        "is_string_view",
    )
    if any(getattr(pa.types, c, lambda _: False)(t) for c in checks):
        return True
    return any(_holds_bytes(t.field(i).type) for i in range(t.num_fields))


def _values(value: object) -> Iterator[bytes | str]:
    """The bytes and strings in a value of a Parquet column, nested ones too."""
    if isinstance(value, bytes | str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _values(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _values(v)


def _column_values(column: Any) -> list[bytes]:
    """The bytes and strings (as UTF-8 bytes, or as stored when they are not UTF-8) a Parquet
    column holds, nested ones too, each once (a category, a repeated value)."""
    import pyarrow as pa

    t = column.type
    flat = t.value_type if pa.types.is_dictionary(t) else t
    if not pa.types.is_nested(flat.storage_type if isinstance(flat, pa.ExtensionType) else flat):
        # Cast to bytes: a string column a writer left without checking may hold any bytes.
        values: Iterator[object] = iter(column.cast(pa.large_binary()).to_pylist())
    else:
        values = _values(column.to_pylist())
    return list(dict.fromkeys(v.encode("utf-8") if isinstance(v, str) else v for v in values if v))


def _parquet(data: bytes, sizes: SizeFilter | None, depth: int, budget: _Budget) -> Iterator[str]:
    """:func:`_table` of a table held in memory: read at once."""
    yield from _table(io.BytesIO(data), sizes, depth, budget, rows=None)


def _table(
    source: IO[bytes], sizes: SizeFilter | None, depth: int, budget: _Budget, *, rows: int | None
) -> Iterator[str]:
    """Every binary value of a Parquet table (compressed in its pages, so not as it is in the
    file), and the base64 runs of its strings; only the columns that can hold them are read
    (numbers, an embedding, are not). What it expands to is spent from ``budget`` before it is
    read (a table of one value repeated is a bomb too); a column that cannot be read (a
    string that is not UTF-8, as a writer that does not check leaves it) is passed over, the
    others read. ``rows``: read that many rows at a time, row group by row group (a table too
    large to hold, read from its file: a data set's shard of gigabytes); None: at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    errors = (pa.ArrowException, OSError, ValueError)
    try:
        # From a file: read as it is asked for, a buffer at a time (pre-buffering held about
        # one and a half times the table's size at its peak, 450 MB for 300 MB).
        reading = {} if rows is None else {"pre_buffer": False, "buffer_size": TABLE_BUFFER}
        table = pq.ParquetFile(source, **reading)
        meta = table.metadata
        budget.spend(sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)))
        schema = table.schema_arrow
        wanted = [f.name for f in schema if _holds_bytes(f.type)]
        if not wanted:
            return
        # Columns by name: a table whose names repeat is read whole.
        unique = len(set(schema.names)) == len(schema.names)
        columns = wanted if unique else None
        parts: Iterator[Any] = (
            iter([table.read(columns=columns)])
            if rows is None
            else table.iter_batches(batch_size=rows, columns=columns)
        )
    except errors:
        return
    while True:
        try:
            read = next(parts, None)
        except errors:  # damaged past here: what was read stays looked at
            return
        if read is None:
            return
        yield from _table_values(read, sizes, depth, budget)


def _table_values(
    read: Any, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What the columns of ``read`` (a pyarrow table, or a batch of its rows) hold."""
    import pyarrow as pa

    below = embedded.smallest_sought(sizes)
    for column in read.columns:
        if not _holds_bytes(column.type):
            continue
        try:
            values = _column_values(column)
        except (pa.ArrowException, ValueError):
            continue
        # A table's every value is a part (millions in a gigabyte of tables: a SHA-256 in hex
        # each row), and most are shorter than anything sought: what _part would do with
        # those is decided here without a call a value, their largest noted once a column.
        largest = -1
        try:
            for value in values:
                n = len(value)
                # _part passes it over (but a key's 32 bytes, tested as it tests them)
                if n < below and value[:2] not in EXPANDS_PAIRS and n != embedded.KEY_SIZE:
                    largest = n if n > largest else largest
                    # Its base64 runs decode to less than it: _runs passes over each (its note
                    # smaller than this one) but one that begins as a compressed file's base64.
                    if (
                        n >= B64_MIN
                        and _EXPANDS_TEXT.search(value) is not None
                        and embedded.kind(value[: embedded.SNIFF]) == embedded.TEXT
                    ):
                        for _, raw in _runs(value, sizes):
                            yield from embedded._part(raw, sizes, depth, budget)
                    elif n >= KEY_TEXT_MIN:  # a key printed in it, as _part tests one
                        yield from embedded.key_texts(value, sizes, depth, budget)
                    continue
                yield from embedded._part(value, sizes, depth, budget)
                if (
                    n >= B64_MIN
                    and n < below
                    and embedded.kind(value[: embedded.SNIFF]) == embedded.TEXT
                ):
                    # Too short to be sought itself (so not looked inside by _part): its base64.
                    for _, raw in _runs(value, sizes):
                        yield from embedded._part(raw, sizes, depth, budget)
        finally:  # noted too when a part of it raises (TooLarge), as each was before
            if largest >= 0:
                embedded.passed_over(sizes, largest)


def _arrow(
    data: Buffer, form: str, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What the byte and text columns of an Arrow file or stream (``form``:
    :func:`~visage_ml.rights.embedded_formats.arrow`) hold, read with pyarrow record batch by
    record batch (decompressed: Feather's LZ4, ZSTD), :data:`TABLE_ROWS` rows at a time, as a
    Parquet table's are. What its batches decompress to is spent from ``budget`` before any is
    read (:func:`~visage_ml.rights.embedded_formats.arrow_expands`). ``data`` held, or a file
    mapped (read in place: a batch uncompressed is not copied). One pyarrow cannot read (cut
    short, damaged) is read as far as it can be; what lies in it as it is, the raw walk finds
    (:func:`~visage_ml.rights.embedded.inside`)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        expands, batches = embedded_formats.arrow_expands(data, form)
    except ValueError:
        return
    budget.spend(expands)
    errors = (pa.ArrowException, OSError, ValueError)
    opener = ipc.open_file if form == embedded_formats.ARROW_FILE else ipc.open_stream
    try:
        source = pa.py_buffer(data)
        schema = opener(pa.BufferReader(source)).schema
        _ = schema.names  # a name that is no UTF-8 (damaged) raises here, not at each batch
        # Only the columns that can hold bytes are decompressed (numbers, an embedding, are not).
        wanted = [i for i, f in enumerate(schema) if _holds_bytes(f.type)]
        if not wanted:
            return
        options = ipc.IpcReadOptions(included_fields=wanted)
        reader = opener(pa.BufferReader(source), options=options)
        read: Iterator[Any] = (
            (reader.get_batch(i) for i in range(batches))
            if form == embedded_formats.ARROW_FILE
            else itertools.islice(reader, batches)
        )
    except errors:
        return
    while True:
        try:
            batch = next(read, None)
            if batch is not None:
                # A batch is checked whole before a value of it is read: pyarrow reads what a
                # damaged one's offsets say (a length of -2^60 aborted the process, an offset
                # past its buffer raised SystemError).
                batch.validate(full=True)
        except errors:  # damaged past here: what was read stays looked at
            return
        if batch is None:
            return
        for at in range(0, batch.num_rows, TABLE_ROWS):
            yield from _table_values(batch.slice(at, TABLE_ROWS), sizes, depth, budget)
