"""The containers an ML data set is packed in that hold a photograph's bytes as they are, told
by their first bytes (:func:`holds_as_is`) and read as a pickle or an array is
(:data:`~visage_ml.rights.embedded.BINARY`: a PNG or a JPEG found where it lies).

- Arrow IPC: Hugging Face ``datasets``' ``save_to_disk()`` shards and its cache
  (``~/.cache/huggingface/datasets``) are streams (a continuation marker, then the schema's
  message); ``pyarrow.ipc`` and Feather V2 files begin ``ARROW1``. An image column's bytes lie
  in its buffers as they are, unless the buffers were written compressed (LZ4 or ZSTD, Feather's
  default): not looked inside.
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

ARROW_FILE_MAGIC = b"ARROW1\x00\x00"
ARROW_CONTINUATION = b"\xff\xff\xff\xff"
# The first message of a stream is its schema (MessageHeader.Schema), of metadata version V4 or
# V5 (those that write the continuation marker).
ARROW_SCHEMA, ARROW_VERSIONS = 1, frozenset({3, 4})
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


def _hdf5(first: bytes) -> bool:
    """The superblock's signature where the format puts it, and a superblock version after."""
    n = len(HDF5_MAGIC)
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
