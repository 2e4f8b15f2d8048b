"""Per-subject data keys and the sealed-file format: binding, tampering, no invented keys."""

from __future__ import annotations

import base64
import os

import pytest

from visage_ml.config import ProjectPaths
from visage_ml.privacy import datakeys
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.datakeys import (
    MAGIC,
    DataKeys,
    NoDataKeyError,
    SealedFileError,
    sniff_bytes,
    wrapped_keys_exist,
)
from visage_ml.privacy.keys import MasterKeyError
from visage_ml.serving import gallery as gallery_store

A, B = "p" + "a" * 16, "p" + "b" * 16
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
def keys(project) -> DataKeys:
    return DataKeys.for_project(ProjectPaths(project))


def test_a_sealed_image_opens_only_as_itself(keys):
    blob = keys.seal_raw(A, "i000000000001", PNG)
    assert blob.startswith(MAGIC) and PNG[:8] not in blob and PNG[8:40] not in blob
    assert keys.open_raw(blob, A, "i000000000001") == PNG
    # Read as another image or another subject's file: refused before any decryption.
    for pid, image_id in ((A, "i000000000002"), (B, "i000000000001")):
        with pytest.raises(SealedFileError, match="sealed as"):
            keys.open_raw(blob, pid, image_id)
    # The clear header rewritten to name another image: the tag no longer verifies.
    forged = blob.replace(b"i000000000001", b"i000000000002", 1)
    with pytest.raises(SealedFileError, match="fails authentication"):
        keys.open_raw(forged, A, "i000000000002")
    # Another subject's key never opens it, even with a matching header.
    keys.key(B, create=True)
    swapped = blob.replace(A.encode(), B.encode(), 1)
    with pytest.raises(SealedFileError, match="fails authentication"):
        keys.open_raw(swapped, B, "i000000000001")
    with pytest.raises(SealedFileError, match="not a visage sealed file"):
        keys.open_raw(PNG, A, "i000000000001")


def test_destroying_the_key_is_the_end_of_every_copy(keys):
    blob = keys.seal_raw(A, "i000000000001", PNG)
    copy = bytes(blob)  # a backup, a remote, a clone: the same bytes
    # A long-running process holding the key in memory loses it with the file.
    server = DataKeys(keys.directory, keys._master)
    assert server.open_raw(blob, A, "i000000000001") == PNG
    digest = keys.destroy(A)
    with pytest.raises(NoDataKeyError):
        server.open_raw(blob, A, "i000000000001")
    assert digest and not keys.exists(A) and not keys.path(A).exists()
    for b in (blob, copy):
        with pytest.raises(NoDataKeyError, match="erased"):
            keys.open_raw(b, A, "i000000000001")
    # A new DataKeys over the same folder (another process) has no key either.
    again = DataKeys(keys.directory, keys._master)
    with pytest.raises(NoDataKeyError):
        again.open_raw(copy, A, "i000000000001")


def test_keys_live_outside_data_wrapped_and_private(project, keys):
    paths = ProjectPaths(project)
    keys.seal_raw(A, "i000000000001", PNG)
    key_file = keys.path(A)
    assert key_file.parent == paths.privacy / "keys"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.parent.stat().st_mode & 0o777 == 0o700
    raw_key = keys.key(A)
    assert raw_key not in key_file.read_bytes()  # wrapped by the master key
    scene = keys.seal_scene("s000000000001", PNG)
    assert keys.open(scene) == PNG
    assert (paths.privacy / "keys" / "collections" / "scenes.key").is_file()


def test_a_missing_master_key_is_never_invented_for_existing_keys(project, keys):
    paths = ProjectPaths(project)
    keys.key(A, create=True)
    assert wrapped_keys_exist(paths)
    paths.master_key.unlink()
    with pytest.raises(MasterKeyError, match="missing"):
        DataKeys.for_project(paths)
    # The vault (whose own ring is still empty) does not create one either.
    with pytest.raises(MasterKeyError, match="missing"):
        PrivacyCore(paths).vault  # noqa: B018
    assert not paths.master_key.exists()
    # With the wrong master key: refused by the ring's check, nothing written.
    paths.master_key.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    with pytest.raises(MasterKeyError, match="does not open"):
        DataKeys.for_project(paths)


def test_the_gallery_ring_is_where_the_gallery_keeps_it():
    assert datakeys.GALLERY_KEYS == gallery_store.KEYS_DIR


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (MAGIC + b"\x00\x02{}", "sealed"),
        (b"\x89PNG\r\n\x1a\n....", "png"),
        (b"\xff\xd8\xff\xe0", "jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"\x93NUMPY\x01\x00", "npy"),
        (b"PK\x03\x04", "zip"),
        (b"age-encryption.org/v1\n", "age"),
        (b"hello", "other"),
    ],
)
def test_sniff_tells_sealed_files_from_plaintext(head, kind):
    assert sniff_bytes(head) == kind
