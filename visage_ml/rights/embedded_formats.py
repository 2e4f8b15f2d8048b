"""The containers an ML data set is packed in that hold a photograph's bytes as they are, told
by their first bytes (:func:`holds_as_is`) and read as a pickle or an array is
(:data:`~visage_ml.rights.embedded.BINARY`: a PNG or a JPEG found where it lies).

- Arrow IPC: Hugging Face ``datasets``' ``save_to_disk()`` shards and its cache
  (``~/.cache/huggingface/datasets``) are streams (a continuation marker, then the schema's
  message); ``pyarrow.ipc`` and Feather V2 files begin ``ARROW1``. An image column's bytes lie
  in its buffers as they are, unless the buffers were written compressed (LZ4 or ZSTD, Feather's
  default): its byte and text columns are then read with pyarrow, batch by batch, as a Parquet
  table's are (:func:`~visage_ml.rights.embedded.inside`), once what they decompress to is
  known (:func:`arrow_expands`, from each message's buffers, before any is decompressed).
- HDF5 (h5py): the superblock's signature at the start or where a user block ends. A dataset of
  JPEG bytes (variable-length uint8, fixed-size opaque) stored contiguous lies as it is; a
  chunked one compressed (gzip, lzf) does not: not looked inside.
- LMDB (``data.mdb``): the first meta page's magic. A value larger than a page lies whole in its
  overflow pages.
- TFRecord: no magic. The first record's length and the masked CRC32C of its bytes are checked,
  so that another binary file is not read whole for nothing. A ``tf.train.Example``'s bytes
  feature holds a JPEG as it is; a TFRecord written with GZIP is a gzip file, looked inside as
  one, one written with ZLIB is not looked inside.
"""

from __future__ import annotations

import struct
from typing import Any

ARROW_FILE_MAGIC = b"ARROW1\x00\x00"
ARROW_CONTINUATION = b"\xff\xff\xff\xff"
# The first message of a stream is its schema (MessageHeader.Schema), of metadata version V4 or
# V5 (those that write the continuation marker).
ARROW_SCHEMA, ARROW_VERSIONS = 1, frozenset({3, 4})
ARROW_FILE, ARROW_STREAM = "file", "stream"
# Flatbuffer fields (Message.fbs, File.fbs): Message's header type, header and body length; a
# header that is a DictionaryBatch (its RecordBatch in ``data``) or a RecordBatch (buffers,
# compression); the Footer's dictionaries and record batches, Blocks of 24 bytes.
ARROW_HEADER_TYPE, ARROW_HEADER, ARROW_BODY_LENGTH = 1, 2, 3
ARROW_DICTIONARY, ARROW_BATCH = 2, 3
ARROW_DICTIONARY_DATA, ARROW_BUFFERS, ARROW_COMPRESSION = 1, 2, 3
ARROW_FOOTER_DICTIONARIES, ARROW_FOOTER_BATCHES, ARROW_BLOCK = 2, 3, 24
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# A user block is 0 bytes or a power of two from 512; one larger than the first bytes read
# (:data:`~visage_ml.rights.embedded.SNIFF`) hides the signature from them.
HDF5_AT = (0, 512, 1024, 2048)
HDF5_VERSIONS = frozenset({0, 1, 2, 3})
# LMDB's meta page: the page header (page number, pad, flags, bounds: 16 bytes on a 64-bit
# build), then MDB_meta: magic and data version (little-endian).
LMDB_FLAGS_AT, LMDB_META = 10, 0x08
LMDB_MAGIC_AT, LMDB_MAGIC, LMDB_VERSION = 16, 0xBEEFC0DE, 1
TFRECORD_MASK = 0xA282EAD8
CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _table() -> tuple[int, ...]:
    out = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (CRC32C_POLY if crc & 1 else 0)
        out.append(crc)
    return tuple(out)


_CRC32C = _table()


def crc32c(data: bytes) -> int:
    """CRC32C of ``data``, a byte at a time by table (only a record's 8 length bytes are)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    """A CRC as TFRecord stores it: rotated right by 15 bits, plus a constant."""
    return (((crc >> 15) | (crc << 17)) + TFRECORD_MASK) & 0xFFFFFFFF


def _arrow_stream(first: bytes) -> bool:
    """Whether ``first`` begins an Arrow stream: the continuation marker, the message's length
    (padded to 8), and a flatbuffer Message of the schema in it."""
    if len(first) < 16 or not first.startswith(ARROW_CONTINUATION):
        return False
    (size,) = struct.unpack_from("<i", first, 4)
    if size < 8 or size % 8:
        return False
    msg = first[8 : 8 + size]
    try:
        (root,) = struct.unpack_from("<I", msg, 0)
        (back,) = struct.unpack_from("<i", msg, root)
        vtable = root - back
        vt_size, _ = struct.unpack_from("<HH", msg, vtable)
        fields = struct.unpack_from(f"<{max(0, (vt_size - 4) // 2)}H", msg, vtable + 4)
        if vt_size < 8 or len(fields) < 2 or not fields[0] or not fields[1]:
            return False
        (version,) = struct.unpack_from("<h", msg, root + fields[0])
        header = msg[root + fields[1]]
    except (struct.error, IndexError):  # points past what was read: not a message
        return False
    return version in ARROW_VERSIONS and header == ARROW_SCHEMA


def arrow(first: bytes) -> str | None:
    """What Arrow IPC format a file beginning with ``first`` is in: :data:`ARROW_FILE` (a
    footer locates its batches), :data:`ARROW_STREAM`, or None (not Arrow)."""
    if first.startswith(ARROW_FILE_MAGIC):
        return ARROW_FILE
    return ARROW_STREAM if _arrow_stream(first) else None


def _at(fmt: str, data: Any, at: int) -> int:
    """``fmt`` (one little-endian number) at ``at`` of ``data`` (bytes, or a file mapped).

    Raises
    ------
    ValueError
        When it does not lie within ``data`` (an offset of a damaged file, or a crafted one).
    """
    if at < 0:
        raise ValueError("out of the file")
    try:
        return struct.unpack_from(fmt, data, at)[0]
    except struct.error as exc:
        raise ValueError("out of the file") from exc


def _field(data: Any, table: int, index: int) -> int | None:
    """Where field ``index`` of the flatbuffer table at ``table`` lies; None: not set."""
    vtable = table - _at("<i", data, table)
    size = _at("<H", data, vtable)
    if 4 + 2 * index + 2 > size:
        return None
    offset = _at("<H", data, vtable + 4 + 2 * index)
    return table + offset if offset else None


def _ref(data: Any, table: int, index: int) -> int | None:
    """Where the table or vector field ``index`` of the table at ``table`` points to."""
    at = _field(data, table, index)
    return None if at is None else at + _at("<I", data, at)


def _prefix(data: Any, at: int) -> tuple[int, int]:
    """Where the flatbuffer of the message at ``at`` begins, after its continuation marker
    and length (or, as before Arrow 0.15, its length alone), and that length."""
    size = _at("<i", data, at)
    if size == -1:
        size, at = _at("<i", data, at + 4), at + 8
    else:
        at += 4
    if size <= 0:
        raise ValueError("no message")
    return at, size


def _header_type(data: Any, at: int) -> int:
    """Where the header type of the message at ``at`` lies (a byte; a Schema's is 1)."""
    at, _ = _prefix(data, at)
    found = _field(data, at + _at("<I", data, at), ARROW_HEADER_TYPE)
    if found is None:
        raise ValueError("no header")
    return found


def _message(data: Any, at: int) -> tuple[int, int]:
    """Where the message at ``at`` (its continuation marker or, as before Arrow 0.15, its
    length) ends, its body with it, and the bytes reading it takes: its metadata, and its body
    decompressed.

    Raises
    ------
    ValueError
        When it is no message (:func:`arrow_expands`).
    """
    at, size = _prefix(data, at)
    root = at + _at("<I", data, at)
    body_at = _field(data, root, ARROW_BODY_LENGTH)
    body = 0 if body_at is None else _at("<q", data, body_at)
    header_type = _field(data, root, ARROW_HEADER_TYPE)
    kind = 0 if header_type is None else _at("<B", data, header_type)
    start, end = at + size, at + size + body
    if body < 0 or end > len(data):
        raise ValueError("a body past the file's end")
    batch = _ref(data, root, ARROW_HEADER) if kind in (ARROW_BATCH, ARROW_DICTIONARY) else None
    if batch is not None and kind == ARROW_DICTIONARY:
        batch = _ref(data, batch, ARROW_DICTIONARY_DATA)
    if batch is None or _field(data, batch, ARROW_COMPRESSION) is None:
        return end, size + body
    buffers = _ref(data, batch, ARROW_BUFFERS)
    n = 0 if buffers is None else _at("<I", data, buffers)
    if buffers is not None and buffers + 4 + 16 * n > start:
        raise ValueError("buffers past the message's end")
    expands = size
    for i in range(n):
        offset = _at("<q", data, buffers + 4 + 16 * i)
        length = _at("<q", data, buffers + 12 + 16 * i)
        if length == 0:
            continue
        if length < 8 or offset < 0 or offset + length > body:
            raise ValueError("a buffer out of its body")
        # A compressed buffer begins with its length decompressed; -1: left as it is.
        raw = _at("<q", data, start + offset)
        if raw < -1:
            raise ValueError("a buffer of negative length")
        expands += length - 8 if raw == -1 else raw
    return end, expands


def arrow_expands(data: Any, what: str) -> tuple[int, int]:
    """What the Arrow ``data`` (bytes, or a file mapped; ``what``: :data:`ARROW_FILE` or
    :data:`ARROW_STREAM`, :func:`arrow`) expands to read, and
    how many of its record batches that is: each record batch's and dictionary's buffers,
    decompressed where they are compressed (as its first 8 bytes say), summed before any is
    decompressed (a ZSTD column of gigabytes of zeros is a few kB). A file's batches are those
    its footer names, as a reader finds them; a stream's, each message to its end marker. Those
    from the first that cannot be read on (a stream cut short, damaged) are not counted, and
    are not to be read. In time linear in the messages' metadata.

    Raises
    ------
    ValueError
        When ``data`` is no Arrow file or stream this can read (a file cut short has no
        footer), or a file's dictionary cannot be read.
    """
    expands = batches = 0
    if what == ARROW_FILE:
        read: dict[int, tuple[int, int]] = {}
        n = len(data)
        if n < 2 * len(ARROW_FILE_MAGIC) or bytes(data[n - 6 :]) != ARROW_FILE_MAGIC[:6]:
            raise ValueError("no footer")
        root = n - 10 - _at("<i", data, n - 10)
        root += _at("<I", data, root)
        for index in (ARROW_FOOTER_DICTIONARIES, ARROW_FOOTER_BATCHES):
            blocks = _ref(data, root, index)
            count = 0 if blocks is None else _at("<I", data, blocks)
            for i in range(count):
                at = _at("<q", data, blocks + 4 + ARROW_BLOCK * i)
                try:
                    # Blocks may name one message many times: it is read once here (each
                    # time by pyarrow, so counted each time).
                    _, grows = read[at] if at in read else read.setdefault(at, _message(data, at))
                except ValueError:
                    if index == ARROW_FOOTER_DICTIONARIES:
                        raise
                    break
                expands += grows
                batches += index == ARROW_FOOTER_BATCHES
        return expands, batches
    if what != ARROW_STREAM:
        raise ValueError("not Arrow")
    at = 0
    while at + 8 <= len(data):
        size = _at("<i", data, at)
        if (_at("<i", data, at + 4) if size == -1 else size) == 0:  # the end marker
            break
        try:
            kind = _at("<B", data, _header_type(data, at))
            at, grows = _message(data, at)
        except ValueError:
            break
        expands += grows
        batches += kind == ARROW_BATCH
    return expands, batches


def _hdf5(first: bytes) -> bool:
    """The superblock's signature where the format puts it, and a superblock version after."""
    n = len(HDF5_MAGIC)
    if len(first) <= HDF5_AT[1]:  # a short part (a pickled value): its first bytes alone
        return first.startswith(HDF5_MAGIC) and len(first) > n and first[n] in HDF5_VERSIONS
    return any(
        first[at : at + n] == HDF5_MAGIC and len(first) > at + n and first[at + n] in HDF5_VERSIONS
        for at in HDF5_AT
    )


def _lmdb(first: bytes) -> bool:
    if len(first) < LMDB_MAGIC_AT + 8:
        return False
    (flags,) = struct.unpack_from("<H", first, LMDB_FLAGS_AT)
    magic, version = struct.unpack_from("<II", first, LMDB_MAGIC_AT)
    return bool(flags & LMDB_META) and magic == LMDB_MAGIC and version == LMDB_VERSION


def _tfrecord(first: bytes) -> bool:
    if len(first) < 12:
        return False
    (crc,) = struct.unpack_from("<I", first, 8)
    return masked(crc32c(first[:8])) == crc


def holds_as_is(first: bytes) -> bool:
    """Whether a file beginning with ``first`` is an Arrow IPC, HDF5, LMDB or TFRecord file."""
    return (
        first.startswith(ARROW_FILE_MAGIC)
        or _arrow_stream(first)
        or _hdf5(first)
        or _lmdb(first)
        or _tfrecord(first)
    )
