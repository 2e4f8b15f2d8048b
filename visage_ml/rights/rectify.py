"""Rectification (Art. 16) inside the request lifecycle, and re-enrolment after it.

Rectification replaces attributes or images through :class:`~visage_ml.data.rawstore.RawStore`
(``dvc add`` makes every derived output stale through DVC lineage), records before/after hashes
in a ``rectification`` ledger event, and re-enrols the subject in the gallery from the corrected
images (or, without an embedder, removes the now-inaccurate template until ``dvc repro gallery``
enrols it again).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from visage_ml import dvcops
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.imagecheck import check_image
from visage_ml.data.rawstore import RawStore, read_images, read_subjects
from visage_ml.io import canonical_json, sha256_bytes
from visage_ml.privacy.core import ALREADY_ERASED, PrivacyCore
from visage_ml.privacy.keys import check_pid
from visage_ml.privacy.requests import RequestBook
from visage_ml.rights.export import jsonable, row_dict
from visage_ml.rights.lifecycle import begin
from visage_ml.serving.engine import Engine
from visage_ml.serving.gallery import Gallery, read_meta
from visage_ml.serving.pg_gallery import open_project_gallery

log = logging.getLogger(__name__)

MSG_NOTHING = "nothing to rectify: give attributes (age, gender, group) or images"
ATTRIBUTES = ("age", "gender", "group")


@dataclass
class RectificationResult:
    """Before/after hashes of what changed (no values)."""

    request_id: str
    pid: str
    fields: list[str]
    attributes_sha256_before: str | None
    attributes_sha256_after: str | None
    files: list[dict[str, str]] = field(default_factory=list)
    raw_md5_before: str | None = None
    raw_md5_after: str | None = None
    gallery: str = "unchanged"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _attrs_digest(row: Mapping[str, Any] | None) -> str | None:
    if row is None:
        return None
    keep = {k: jsonable(row.get(k)) for k in ATTRIBUTES}
    return hashlib.sha256(canonical_json(keep)).hexdigest()


def _tracked(paths: ProjectPaths) -> str | None:
    return dvcops.tracked_md5(paths.root, paths.raw)


def rectify(
    paths: ProjectPaths,
    pid: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    images: Mapping[str, bytes] | None = None,
    request_id: str | None = None,
    core: PrivacyCore | None = None,
    gallery: Gallery | None = None,
    engine: Engine | None = None,
) -> RectificationResult:
    """Correct a subject's attributes and/or replace images (Art. 16).

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    attributes
        New ``age`` / ``gender`` / ``group`` values (None clears one).
    images
        ``{image_id: file bytes}``: replacements for existing images (any accepted format; it
        is checked and stored as a metadata-free PNG).
    request_id
        The verified rectification request answered (one is recorded when None).
    core, gallery
        Open privacy core and gallery (opened when None).
    engine
        A :class:`~visage_ml.serving.engine.Engine` to re-enrol the subject from the corrected
        images; without one (and without ``models/embedder.onnx``) the subject's template is
        removed until ``dvc repro gallery`` enrols them again.

    Returns
    -------
    RectificationResult
        What changed, as hashes; also in the ``rectification`` ledger event and the receipt.
    """
    check_pid(pid)
    attributes = dict(attributes or {})
    images = dict(images or {})
    if not attributes and not images:
        raise ValueError(MSG_NOTHING)
    core = core if core is not None else PrivacyCore(paths)
    params = load_params(paths.params)
    if core.subject(pid).erased:
        raise ValueError(ALREADY_ERASED.format(pid=pid))
    book = RequestBook(core, params=params.privacy)
    details = {"fields": sorted(attributes), "replaced_files": len(images)}
    st = begin(book, pid, ("rectification",), request_id, details=details)
    subjects = read_subjects(paths.raw)
    row = subjects[subjects["pid"].astype(str) == pid]
    before_row = row_dict(row.iloc[0]) if len(row) else None
    checked = {
        image_id: check_image(data, max_pixels=params.serving.max_image_pixels)
        for image_id, data in images.items()
    }
    store = RawStore(paths, core=core, track=True)
    file_changes = []
    for image_id, c in checked.items():
        try:
            # The PNG's hash, as images.parquet records it (the file itself is sealed).
            before = sha256_bytes(store.read_image(pid, image_id))
        except KeyError:
            before = ""
        file_changes.append(
            {"image_id": image_id, "sha256_before": before, "sha256_after": c.sha256}
        )
    raw_before = _tracked(paths)
    with store.transaction() as txn:
        if attributes:
            txn.update_subject(pid, attributes)
        for image_id, c in checked.items():
            txn.replace_image(
                pid, image_id, c.png, {"sha256": c.sha256, "width": c.width, "height": c.height}
            )
    after = read_subjects(paths.raw)
    after_row = after[after["pid"].astype(str) == pid]
    result = RectificationResult(
        request_id=st.request_id,
        pid=pid,
        fields=sorted(attributes),
        attributes_sha256_before=_attrs_digest(before_row),
        attributes_sha256_after=_attrs_digest(row_dict(after_row.iloc[0]))
        if len(after_row)
        else None,
        files=file_changes,
        raw_md5_before=raw_before,
        raw_md5_after=txn.dvc_md5 or _tracked(paths),
    )
    if checked:
        result.gallery = reenrol(paths, pid, core=core, gallery=gallery, engine=engine)
    core.ledger.append(
        "rectification",
        pid,
        {
            "request_id": st.request_id,
            "fields": result.fields,
            "attributes_sha256_before": result.attributes_sha256_before,
            "attributes_sha256_after": result.attributes_sha256_after,
            "files": file_changes,
            "raw_md5_before": result.raw_md5_before,
            "raw_md5_after": result.raw_md5_after,
            "gallery": result.gallery,
        },
    )
    book.complete(
        st.request_id,
        outcome={
            "fields": result.fields,
            "files": len(file_changes),
            "raw_md5_after": result.raw_md5_after,
            "gallery": result.gallery,
        },
    )
    return result


def reenrol(
    paths: ProjectPaths,
    pid: str,
    *,
    core: PrivacyCore,
    gallery: Gallery | None,
    engine: Engine | None,
) -> str:
    """Re-enrol ``pid`` from their corrected images in ``data/raw``.

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    core, gallery
        Open privacy core, and the gallery (opened when None).
    engine
        The engine that detects and embeds; loaded from ``models/embedder.onnx`` when None and
        the file exists.

    Returns
    -------
    str
        What happened: ``no_gallery``, ``not_enrolled``, ``reenrolled``,
        ``template_removed_until_reenrolment`` (no embedder) or ``template_removed_no_face``.
    """
    meta = read_meta(paths.gallery)
    if meta is None:
        return "no_gallery"
    g = gallery
    if g is None:
        g = open_project_gallery(paths, core=core, load=False)
    if g is None or pid not in g.stored():
        return "not_enrolled"
    if engine is None and (paths.models / "embedder.onnx").is_file():
        engine = Engine.from_project(paths, load_params(paths.params), gallery_meta=meta)
    if engine is None:
        g.erase(pid, reason="rectification")
        return "template_removed_until_reenrolment"
    rows = read_images(paths.raw)
    rows = rows[rows["pid"].astype(str) == pid].sort_values("image_id")
    per_subject = load_params(paths.params).gallery.images_per_subject
    crops = []
    store = RawStore(paths, core=core, track=False)
    for image_id in rows["image_id"].astype(str):
        # Decrypted in memory only.
        with Image.open(io.BytesIO(store.read_image(pid, image_id))) as im:
            faces = engine.detect(im.convert("RGB"))
        if len(faces) == 1:
            crops.append(faces[0].crop)
        if len(crops) >= per_subject:
            break
    if not crops:
        g.erase(pid, reason="rectification")
        return "template_removed_no_face"
    emb = engine.embed(np.stack(crops))
    g.enroll(pid, emb, model_version=engine.embedder.model_version)
    return "reenrolled"
