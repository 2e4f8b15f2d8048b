"""An erased photograph held inside the containers an ML data set is packed in.

Beside zip, tar, Parquet, a pickle or an array, a data scientist packs a face data set into an
Arrow IPC file (Hugging Face ``datasets``' ``save_to_disk()`` shards and its cache are Arrow
streams; ``pyarrow.ipc`` and Feather V2 write Arrow files), HDF5 (h5py), LMDB (``data.mdb``) or
TFRecord (``tf.train.Example``). Each holds a photograph's bytes as they are, and none was a
kind the scan knew: a file of another size than anything sought was only sniffed, and one
holding the erased photograph passed the verifier as VALID.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from PIL import Image
from rights_fakes import make_project, png
from test_erasure_inside import put_back_fails_the_verifier, stopped_then_certified

from visage_ml.privacy.certificate_page import page_path
from visage_ml.rights import embedded
from visage_ml.rights.certify import verify_certificate


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


ENCODINGS = {"png": png, "jpeg": _jpeg}


def _arrow(photos: list[bytes], *, stream: bool) -> bytes:
    """A table of ``photos`` as ``pyarrow.ipc`` writes it: an Arrow file (``ARROW1``), or the
    stream format ``datasets``' ``save_to_disk()`` writes, the image column as its ``Image``
    feature stores it (a struct of the bytes and a path)."""
    n = len(photos)
    if stream:
        image = pa.StructArray.from_arrays(
            [pa.array(photos, pa.binary()), pa.array([f"{i}.jpg" for i in range(n)])],
            names=["bytes", "path"],
        )
    else:
        image = pa.array(photos, pa.binary())
    table = pa.table({"image": image, "label": pa.array(range(n), pa.int64())})
    sink = io.BytesIO()
    opener = ipc.new_stream if stream else ipc.new_file
    with opener(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli, reflected 0x82F63B78), a bit at a time: the test's own, not the
    scan's table-driven one."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> bytes:
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, "little")


def _field(number: int, payload: bytes) -> bytes:
    """A protobuf length-delimited field (wire type 2)."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _example(photo: bytes) -> bytes:
    """A ``tf.train.Example``: features { feature { key: "image/encoded" value { bytes_list {
    value: <photo> } } } }, as TensorFlow serializes it."""
    feature = _field(1, _field(1, photo))  # Feature.bytes_list.value
    entry = _field(1, b"image/encoded") + _field(2, feature)
    return _field(1, _field(1, entry))  # Example.features.feature (a map entry)


def _tfrecord(photos: list[bytes]) -> bytes:
    """A TFRecord file: each record its length (uint64), the length's masked CRC32C, the
    serialized Example, its masked CRC32C (all little-endian)."""
    out = bytearray()
    for photo in photos:
        data = _example(photo)
        length = struct.pack("<Q", len(data))
        out += length + _masked(_crc32c(length)) + data + _masked(_crc32c(data))
    return bytes(out)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _hdf5(photos: list[bytes], *, user_block: int = 0) -> bytes:
    """An HDF5-like file (h5py cannot be installed here): the superblock's signature and
    version, at 0 or after a user block, then each dataset's bytes as contiguous storage lays
    them (a JPEG of a vlen uint8 or fixed-size opaque dataset lies as it is)."""
    out = bytearray(b"\x00" * user_block)
    out += HDF5_SIGNATURE + b"\x00\x00\x00\x00\x00\x08\x08\x00" + b"\x00" * 80
    for photo in photos:
        out += b"\x00" * (-len(out) % 8) + photo
    return bytes(out)


LMDB_PAGE = 4096


def _lmdb(photos: list[bytes]) -> bytes:
    """An LMDB-like ``data.mdb``: two meta pages (the page header, then the magic 0xBEEFC0DE
    and version 1), then each value larger than a page whole in its overflow pages, as LMDB
    stores it."""

    def meta(pgno: int) -> bytes:
        head = struct.pack("<QHHHH", pgno, 0, 0x08, 0, 0)  # pgno, pad, P_META, bounds
        page = head + struct.pack("<II", 0xBEEFC0DE, 1) + struct.pack("<QQ", 0, 1 << 30)
        return page.ljust(LMDB_PAGE, b"\x00")

    out = bytearray(meta(0) + meta(1))
    for photo in photos:
        pgno = len(out) // LMDB_PAGE
        pages = -(-(16 + len(photo)) // LMDB_PAGE)
        head = struct.pack("<QHHI", pgno, 0, 0x04, pages)  # P_OVERFLOW, its page count
        out += (head + photo).ljust(pages * LMDB_PAGE, b"\x00")
    return bytes(out)


def _holders(photo: bytes, others: list[bytes]) -> dict[str, bytes]:
    """Files holding ``photo``'s bytes as they are among ``others``, one of each container."""
    shelf = [others[0], photo, others[1]]
    return {
        "train.arrow": _arrow(shelf, stream=False),
        "data-00000-of-00001.arrow": _arrow(shelf, stream=True),
        "faces.tfrecord": _tfrecord(shelf),
        "faces.h5": _hdf5(shelf),
        "faces-userblock.h5": _hdf5(shelf, user_block=512),
        "data.mdb": _lmdb(shelf),
    }


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_photo_in_an_arrow_hdf5_lmdb_or_tfrecord_file_stops_the_erasure(project, encoding):
    """The files stay (they hold a colleague's data set too): the erasure stops before its
    certificate, ``doctor`` lists them; once the photograph is out the resumed erasure
    certifies, the same containers of other subjects' photographs untouched, and the verifier
    fails the certificate while any of them is back."""
    proj = make_project(project, n_subjects=3, encode=ENCODINGS[encoding])
    victim = proj.pids[0]
    photo = next(iter(proj.images[victim].values()))
    theirs = [p for pid in proj.pids[1:] for p in proj.images[pid].values()]
    folder = proj.paths.root / "data" / "hf_cache"
    folder.mkdir(parents=True)
    made = {folder / n: d for n, d in _holders(photo, theirs[:2]).items()}
    kept = {folder / f"other-{n}": d for n, d in _holders(theirs[2], theirs[3:5]).items()}
    for path, data in {**made, **kept}.items():
        path.write_bytes(data)
    said, done = stopped_then_certified(proj, victim, made, kept)
    assert "data: " in said, said
    assert "a data set's container (Arrow, HDF5, LMDB, TFRecord)" in said, said
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert report.ok
    # What is looked inside, and what of these formats is not, is said beside the verdict and
    # on the certificate's page.
    (check,) = [c for c in report.checks if c.name == "no erased content remains"]
    page = " ".join(page_path(done.certificate_path).read_text(encoding="utf-8").split())
    for said in (" ".join(check.detail.split()), page):
        for name in ("Arrow", "HDF5", "LMDB", "TFRecord"):
            assert name in said, (name, said)
        assert "HDF5 datasets chunked and compressed" in said, said
        assert "TFRecords compressed with ZLIB" in said, said
    put_back_fails_the_verifier(proj, done, made)


def _kind(data: bytes) -> str | None:
    return embedded.kind(data[: embedded.SNIFF])


def test_each_container_is_told_by_its_first_bytes_not_its_name():
    photo = _jpeg(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    for name, data in _holders(photo, [photo, photo]).items():
        assert _kind(data) == embedded.BINARY, name
    # A user block of 1024 or 2048 bytes puts the superblock there.
    for block in (1024, 2048):
        assert _kind(_hdf5([photo], user_block=block)) == embedded.BINARY
    # A TFRecord compressed with GZIP is a gzip file: the record is read inside it.
    packed = gzip.compress(_tfrecord([photo]))
    assert _kind(packed) == embedded.COMPRESSED
    assert hashlib.sha256(photo).hexdigest() in set(embedded.inside(packed, embedded.COMPRESSED))


def test_a_binary_file_is_not_taken_for_a_tfrecord_without_its_crc():
    """TFRecord has no magic: only a first record whose length's CRC checks is one. Another
    binary file (a model's weights, random bytes) is not read whole for nothing."""
    record = _tfrecord([b"\xff\xd8\xff\xd9" * 100])
    assert _kind(record) == embedded.BINARY
    broken = bytearray(record)
    broken[8] ^= 0x01
    assert _kind(bytes(broken)) is None
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert _kind(b"\x00" + rng.bytes(4095)) is None
    assert _kind(np.arange(1024, dtype=np.float32).tobytes()) is None
    # Zero blocks are read past for a tar, as ``tar -i`` skips them (an empty tar before one).
    assert _kind(bytes(4096)) == embedded.TAR
    assert _kind(bytes(511) + b"\x01" + bytes(3584)) is None


def test_near_misses_of_the_other_magics_are_not_containers():
    """A signature alone, where the format does not put it, is not enough."""
    hdf5 = _hdf5([b"x"])
    assert _kind(b"\x00" * 300 + hdf5) is None  # not where a user block ends
    lmdb = bytearray(_lmdb([]))
    lmdb[10] = 0x02  # a leaf page, not a meta page
    assert _kind(bytes(lmdb)) is None
    lmdb = bytearray(_lmdb([]))
    lmdb[20] = 9  # another data version
    assert _kind(bytes(lmdb)) is None
    assert _kind(b"\xff\xff\xff\xff" + b"\x00" * 4092) is None  # no Arrow message follows
    assert _kind(b"\xff" * 4096) is None
