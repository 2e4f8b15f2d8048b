"""A pickle, an array, a Parquet table or a PDF too large to hold in memory (over
``embedded.EMBED_MAX``, 64 MiB; made small here) holding the erased photograph: ordinary data
science files are that large. A Hugging Face ``datasets`` Parquet shard (an ``image`` column of
``{bytes, path}``, row group after row group), ``pickle.dump`` of a data set's photographs,
``np.save`` of them packed in one uint8 array, ``np.savez`` of it (a zip whose member is that
large), a PDF report of hundreds of photographs.

Before, each was only hashed whole, wherever it lay (a file of the project, an archive's member,
a git blob, a DVC remote's object): the erasure left it, and the verifier called the certificate
VALID.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import tracemalloc

import numpy as np
import pytest
from rights_fakes import make_project, png
from test_erasure_inside import _Sought
from test_erasure_inside_jpeg import ENCODINGS, _pdf
from test_erasure_inside_large import _hash_object, _holds, _pushed_then_gone

from visage_ml.rights import dvc_objects, embedded
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure

# What is held in memory at once, here: the files below are several times larger.
SMALL_MAX = 256 << 10
FILLER = 48 << 10


def _filler(n: int, seed: int) -> bytes:
    """Bytes that do not compress (other people's photographs, as far as size goes)."""
    return random.Random(seed).randbytes(n)


def _dataset(photo: bytes, n: int = 24) -> list[bytes]:
    """A data set's photographs, ``photo`` among them, several times :data:`SMALL_MAX` in all."""
    photos = [_filler(FILLER + i, i) for i in range(n)]
    photos.insert(n // 2 + 1, photo)
    return photos


def _parquet(photos: list[bytes]) -> bytes:
    """A Hugging Face ``datasets`` shard: an ``image`` struct of ``{bytes, path}``, a label,
    a few rows a row group (``datasets`` writes image tables in small row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.array(
        [{"bytes": p, "path": f"img_{i:05d}.png"} for i, p in enumerate(photos)],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    table = pa.table({"image": image, "label": list(range(len(photos)))})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=4)
    assert pq.ParquetFile(io.BytesIO(out.getvalue())).metadata.num_row_groups > 3
    return out.getvalue()


def _npy(photos: list[bytes]) -> bytes:
    out = io.BytesIO()
    np.save(out, np.frombuffer(b"".join(photos), dtype=np.uint8))
    return out.getvalue()


def _npz(photos: list[bytes]) -> bytes:
    out = io.BytesIO()
    np.savez(out, images=np.frombuffer(b"".join(photos), dtype=np.uint8), n=len(photos))
    return out.getvalue()


def _holders(photo: bytes) -> dict[str, bytes]:
    made = {
        "train-00000-of-00001.parquet": _parquet(_dataset(photo)),
        "photos.pkl": pickle.dumps(_dataset(photo)),
        "photos-protocol-2.pkl": pickle.dumps(_dataset(photo), protocol=2),
        "photos.npy": _npy(_dataset(photo)),
        "photos.npz": _npz(_dataset(photo)),
    }
    if photo.startswith(b"\xff\xd8\xff"):  # a report shows JPEGs as they are
        made["report.pdf"] = _pdf(_dataset(photo), a85=False)
        made["report-reportlab.pdf"] = _pdf(_dataset(photo), a85=True)
    return made


def _photos(proj) -> tuple[str, bytes, bytes]:
    victim, other = proj.pids[0], proj.pids[1]
    return victim, next(iter(proj.images[victim].values())), next(iter(proj.images[other].values()))


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_a_large_table_pickle_array_or_pdf_holding_the_photograph_stops_the_erasure(
    project, monkeypatch, encoding
):
    """Each is looked inside from its file, whatever its size: the erasure stops and says how
    many; once the operator has taken the photograph out it certifies, and the verifier fails
    the certificate while any of them is back."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    encode = ENCODINGS["baseline"] if encoding == "jpeg" else png
    proj = make_project(project, n_subjects=3, encode=encode)
    victim, photo, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "hf_cache"
    folder.mkdir(parents=True)
    made = {folder / n: d for n, d in _holders(photo).items()}
    kept = {folder / f"other-{n}": d for n, d in _holders(theirs).items()}
    for path, data in {**made, **kept}.items():
        assert len(data) > 3 * embedded.EMBED_MAX, path.name
        path.write_bytes(data)
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert f"{len(made)} file(s) hold erased content inside" in said, said
    for path in made:  # the operator takes the photograph out (here: the files go)
        path.unlink()
    (done,) = Erasure(proj.paths).resume()
    assert [p.name for p in kept if not p.exists()] == []
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    for path, data in made.items():
        path.write_bytes(data)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert {f["path"] for f in report.findings} == {str(p) for p in made}


@pytest.mark.pipeline
@pytest.mark.parametrize("where", ["git", "remote"])
def test_a_large_pickle_or_table_in_git_or_on_a_remote_fails_the_verifier(
    tiny_project, monkeypatch, where
):
    """Committed to git (a blob) or pushed to a DVC remote read as S3 is (its object), then gone
    from the workspace: spilled to an unnamed file of the project and looked inside from
    there."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    monkeypatch.setattr(dvc_objects, "_is_local", lambda odb: False)
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim, photo, _ = _photos(proj)
    result = Erasure(proj.paths).erase(victim)
    assert verify_certificate(result.certificate_path, root=root).ok
    if where == "git":
        _hash_object(root, pickle.dumps(_dataset(photo)))
    else:
        data = _parquet(_dataset(photo))
        remote = _pushed_then_gone(root, "parquet", data)
        assert _holds(remote, data)
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    assert report.findings and all(
        ("git" if where == "git" else "remote") in f["path"] for f in report.findings
    ), report.findings


@pytest.mark.parametrize("name", ["parquet", "pkl", "pkl2", "npy", "pdf", "reportlab"])
def test_a_file_looked_inside_from_its_file_gives_what_it_does_in_memory(tmp_path, name):
    photo = ENCODINGS["baseline"](np.full((32, 32, 3), 90, np.uint8))
    made = _holders(photo)
    data = {
        "parquet": made["train-00000-of-00001.parquet"],
        "pkl": made["photos.pkl"],
        "pkl2": made["photos-protocol-2.pkl"],
        "npy": made["photos.npy"],
        "pdf": made["report.pdf"],
        "reportlab": made["report-reportlab.pdf"],
    }[name]
    what = embedded.kind(data[: embedded.SNIFF])
    path = tmp_path / "f"
    path.write_bytes(data)
    in_memory = set(embedded.inside(data, what))
    with open(path, "rb") as fh:
        from_file = set(embedded.inside_large(fh, what))
    assert from_file == in_memory
    assert hashlib.sha256(photo).hexdigest() in from_file


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_key_pickled_is_found_from_its_file_as_in_memory(tmp_path, protocol):
    """A key pickled among a data set's bytes (protocol 2, torch.save's: as a latin-1 string,
    UTF-8 encoded), read from its file (mapped) as in memory: before, protocol 2's was found by
    neither."""
    key = bytes(range(0x70, 0x90))  # half of it 0x80 and up: two bytes each in protocol 2
    data = pickle.dumps({"photos": _dataset(b"\x00" * 64, n=8), "key": key}, protocol=protocol)
    path = tmp_path / "f"
    path.write_bytes(data)
    in_memory = set(embedded.inside(data, embedded.BINARY))
    with open(path, "rb") as fh:
        from_file = set(embedded.inside_large(fh, embedded.BINARY))
    assert from_file == in_memory
    assert hashlib.sha256(key).hexdigest() in from_file


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_a_large_array_pickled_with_protocol_2_is_looked_inside_in_bounded_memory(
    tmp_path, monkeypatch, encoding
):
    """A data set's photographs packed in one uint8 array and pickled with protocol 2: one
    latin-1 string, UTF-8 encoded, several times what is held in memory. Read from its file
    (mapped) it gives what it does in memory, the photograph among it, in memory of a few
    windows; before, neither read found the photograph."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    photo = (ENCODINGS["baseline"] if encoding == "jpeg" else png)(
        np.full((32, 32, 3), 90, np.uint8)
    )
    packed = np.frombuffer(b"".join(_dataset(photo, n=48)), np.uint8)
    data = pickle.dumps({"n": 49, "images": packed}, protocol=2)
    assert len(data) > 8 * SMALL_MAX
    path = tmp_path / "packed.pkl"
    path.write_bytes(data)
    in_memory = set(embedded.inside(data, embedded.BINARY))
    from_file = _read_in_bounded_memory(path)
    assert from_file == in_memory
    assert hashlib.sha256(photo).hexdigest() in from_file


def _read_in_bounded_memory(path) -> set[str]:
    """What the pickle at ``path`` holds, read from its file (mapped), in memory of a few
    windows of :data:`SMALL_MAX` at most."""
    tracemalloc.start()
    try:
        with open(path, "rb") as fh:
            found = set(embedded.inside_large(fh, embedded.BINARY))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * SMALL_MAX + (1 << 20), peak
    return found


def test_a_large_pickle_of_photographs_is_looked_inside_in_bounded_memory(tmp_path, monkeypatch):
    """A pickle of a data set's JPEGs, over 20 MiB: what is held to look inside it stays about a
    window (the file itself is mapped: the system pages it), not a share of its size (a bit a
    byte, eight bytes a 64, as the walks kept for data in memory)."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    photos = []
    for i in range(400):
        photos.append(ENCODINGS["baseline"](np.full((16, 16, 3), i % 256, np.uint8)))
        photos.append(_filler(60 << 10, i))
    path = tmp_path / "photos.pkl"
    path.write_bytes(pickle.dumps(photos))
    size = path.stat().st_size
    assert size > 20 << 20
    found = _read_in_bounded_memory(path)
    assert {hashlib.sha256(p).hexdigest() for p in photos[::2]} <= found


def test_a_large_member_that_cannot_be_written_to_look_inside_is_not_shown_clean(monkeypatch):
    """``np.savez``'s member too large to hold is written to an unnamed file to be looked inside
    from; with no room for it, the scan says the archive is not shown clean (before, the
    error was taken for a damaged archive's, and its rest passed over)."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    photo = ENCODINGS["baseline"](np.full((32, 32, 3), 90, np.uint8))
    npz = _npz(_dataset(photo))
    assert hashlib.sha256(photo).hexdigest() in set(embedded.inside(npz, embedded.ZIP))

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedded.tempfile, "TemporaryFile", no_room)
    with pytest.raises(embedded.TooLarge):
        list(embedded.inside(npz, embedded.ZIP))


def _pickled_values(values: list[bytes], protocol: int) -> bytes:
    """A data set's values pickled with ``protocol``: ``bytes``, with 5 a ``bytearray`` too."""
    held: list[object] = list(values)
    if protocol == 5:
        held = [bytearray(v) if i % 2 else v for i, v in enumerate(values)]
    return pickle.dumps({"n": len(values), "values": held}, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_value_of_a_size_sought_is_found_whole_from_its_file_as_in_memory(
    tmp_path, monkeypatch, protocol
):
    """A GIF (no PNG's or JPEG's signature) and a file larger than what is held in memory (a
    zip), each a whole value of a large pickle: before, neither read found either. The reads
    from the file (mapped) and in memory give the same; a size sought that no value has finds
    nothing."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, format="GIF")
    gif, large = buf.getvalue(), _filler(SMALL_MAX + 4321, 99)
    data = _pickled_values([*_dataset(gif), large], protocol)
    assert len(data) > 3 * SMALL_MAX
    path = tmp_path / "values.pkl"
    path.write_bytes(data)
    for sizes, found in [
        (_Sought(len(gif), len(large)), {hashlib.sha256(v).hexdigest() for v in (gif, large)}),
        (_Sought(len(gif) + 1, FILLER - 1), set()),
    ]:
        in_memory = set(embedded.inside(data, embedded.BINARY, sizes=sizes))
        with open(path, "rb") as fh:
            assert set(embedded.inside_large(fh, embedded.BINARY, sizes=sizes)) == in_memory
        assert in_memory == found


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_every_size_sought_hashes_each_value_of_a_pickle_and_no_long_stretch_beside(
    monkeypatch, protocol
):
    """Where every size may be sought (sizes not known: each part is hashed), a pickle of
    random bytes gives each value's SHA-256; an opcode's byte and a length found among other
    bytes (each value holds several) are taken for a value only where the pickler's memo
    follows it: no stretch longer than a SHORT_BINBYTES' (255 bytes) is hashed beside them."""
    values = [_filler(n, n) for n in (300, 5000, 70_000, 200)]
    values += [_filler(FILLER + i, i) for i in range(80)]
    data = _pickled_values(values, protocol)
    assert len(data) > 3 << 20
    parts: list[int] = []
    part = embedded._part

    def hashed(raw, *args):
        parts.append(len(raw))
        return part(raw, *args)

    monkeypatch.setattr(embedded, "_part", hashed)
    found = set(embedded.inside(data, embedded.BINARY))
    assert {hashlib.sha256(v).hexdigest() for v in values} <= found
    beside = list(parts)
    for v in values:
        beside.remove(len(v))
    assert max(beside, default=0) <= embedded.SHORT_MAX, beside
