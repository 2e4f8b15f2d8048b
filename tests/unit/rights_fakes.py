"""A small project for the rights tests: raw images, processed crops, gallery, vault, fake models.

Subjects come from ``serving_fakes.make_world`` (registered, consent to every purpose, tiny real
ONNX models). Each has a few 32x32 "face" tiles stored through the real :class:`RawStore`, the
same tiles as processed crops (sealed ``faces.sealed`` + manifest, as ``prepare`` writes them) and a
template in the real encrypted gallery, embedded by the fake engine. Not a test module.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from serving_fakes import (
    DIM,
    THRESHOLD,
    TileDetector,
    World,
    face_tile,
    fake_engine,
    make_world,
)

from visage_ml.config import ProjectPaths
from visage_ml.data.crops import write_crops
from visage_ml.data.detect import Detection
from visage_ml.data.prepare import FACES_FILE
from visage_ml.data.rawstore import RawStore
from visage_ml.io import sha256_bytes
from visage_ml.privacy.datakeys import DataKeys
from visage_ml.rights.erasure import Erasure
from visage_ml.serving.gallery import Gallery

VERSION = "emb-test-1"
REF = "Zelda Q. Testperson-4711"
CONTACT = "zelda.testperson@example.invalid"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class RightsProject:
    world: World
    engine: object
    pids: list[str]
    images: dict[str, dict[str, bytes]]  # pid -> image_id -> the file's bytes (PNG unless told)

    @property
    def paths(self) -> ProjectPaths:
        return self.world.paths

    @property
    def core(self):
        return self.world.core

    def gallery(self, core=None) -> Gallery:
        return Gallery.open(
            self.paths,
            model_version=VERSION,
            embedding_dim=DIM,
            threshold=THRESHOLD,
            core=core or self.core,
            embed=self.engine.embed,
        )


def write_processed(
    paths: ProjectPaths, images: dict[str, dict[str, bytes]], keys: DataKeys | None = None
) -> None:
    """``data/processed`` as ``prepare`` writes it: crops = the tiles (sealed), manifest, splits."""
    rows, crops, det = [], [], []
    splits = {"train": [], "val": [], "test": []}
    for i, pid in enumerate(sorted(images)):
        split = ("train", "train", "val", "test")[i % 4]
        splits[split].append(pid)
        for image_id, data in sorted(images[pid].items()):
            crops.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            rows.append(
                {
                    "row": len(rows),
                    "pid": pid,
                    "image_id": image_id,
                    "source_sha256": sha256_bytes(data),
                    "split": split,
                    "age": 30,
                    "gender": "female",
                    "group": "g1",
                    "det_prob": 0.99,
                    "box_x1": 0.0,
                    "box_y1": 0.0,
                    "box_x2": 32.0,
                    "box_y2": 32.0,
                }
            )
            det.append({"pid": pid, "image_id": image_id, "split": split, "detected": True})
    processed = paths.processed
    processed.mkdir(parents=True, exist_ok=True)
    keys = keys if keys is not None else DataKeys.for_project(paths)
    write_crops(processed / FACES_FILE, keys, [r["pid"] for r in rows], np.stack(crops))
    pd.DataFrame(rows).to_parquet(processed / "manifest.parquet", index=False)
    pd.DataFrame(det).to_parquet(processed / "detection.parquet", index=False)
    (processed / "splits.json").write_text(json.dumps({"seed": 1, **splits}))


def make_project(
    root: Path,
    *,
    n_subjects: int = 6,
    n_images: int = 3,
    track: bool = False,
    processed: bool = True,
    enrol: bool = True,
    seed: int = 0,
    encode: Callable[[np.ndarray], bytes] = png,
) -> RightsProject:
    """Subjects with raw images (through RawStore), processed crops, gallery templates.
    ``encode``: how a photograph's pixels become the file stored (a JPEG, as a project begun
    before sealing kept its photographs and ``visage privacy seal`` sealed them)."""
    world = make_world(root, n_subjects=n_subjects, seed=seed)
    engine = fake_engine(root)
    pids = list(world.people)
    images: dict[str, dict[str, bytes]] = {}
    store = RawStore(world.paths, core=world.core, track=track)
    with store.transaction() as txn:
        txn.add_subjects(
            {
                "pid": pid,
                "age": 20 + i,
                "gender": world.people[pid].gender,
                "group": world.people[pid].group,
                "source": "test",
            }
            for i, pid in enumerate(pids)
        )
        rows = []
        for pid in pids:
            images[pid] = {}
            for _ in range(n_images):
                data = encode(face_tile(world.people[pid], world.rng))
                image_id = txn.write_image(pid, data)
                images[pid][image_id] = data
                rows.append(
                    {
                        "pid": pid,
                        "image_id": image_id,
                        "sha256": sha256_bytes(data),
                        "width": 32,
                        "height": 32,
                    }
                )
        txn.add_images(rows)
    if processed:
        write_processed(world.paths, images, world.core.data_keys)
    proj = RightsProject(world, engine, pids, images)
    if enrol:
        g = proj.gallery()
        g.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in pids})
    world.core.vault.put(pids[0], {"external_ref": REF, "contact": CONTACT, "source": "test"})
    return proj


def printed_notebook(lines: list[str], source: str) -> str:
    """A notebook whose one code cell (``source``) printed ``lines`` (a stream output), and a
    markdown cell after it: an operator's notebook as Jupyter saves it."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": 1,
                "id": "c1",
                "metadata": {},
                "source": source,
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": [f"{t}\n" for t in lines]}
                ],
            },
            {"cell_type": "markdown", "id": "m1", "metadata": {}, "source": "the rest stays"},
        ],
        "metadata": {"language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1)


def scan(roots, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """``{needle name: [files holding it]}`` over every file under ``roots``."""
    hits: dict[str, list[str]] = {k: [] for k in needles}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            if f.is_symlink():
                continue
            data = f.read_bytes()
            for name, needle in needles.items():
                if needle in data:
                    hits[name].append(str(f))
    return {k: v for k, v in hits.items() if v}


class PrepareTileDetector:
    """MTCNN stand-in for ``prepare``: every face tile, as visage Detections."""

    def __init__(self, **_: object) -> None:
        self._inner = TileDetector()

    def detect(self, images):
        return [
            [Detection(d.box, d.prob, d.landmarks) for d in found]
            for found in self._inner.detect(images)
        ]


def write_training_lock(paths: ProjectPaths, faces_md5: str, model_md5: str) -> None:
    """A dvc.lock saying the embedder (``model_md5``) was trained on ``faces.sealed``
    (``faces_md5``): what marks the subject's models stale in a certificate."""
    doc = {
        "schema": "2.0",
        "stages": {
            "train_embedder": {
                "cmd": "python -m visage_ml.app.stages.train_embedder",
                "deps": [{"path": "data/processed/faces.sealed", "md5": faces_md5}],
                "outs": [{"path": "models/embedder.pt", "md5": model_md5}],
            }
        },
    }
    (paths.root / "dvc.lock").write_text(yaml.safe_dump(doc))


def write_pipeline_lock(root: Path, raw_md5: str, faces_md5: str, model_md5: str) -> None:
    """A dvc.lock saying ``prepare`` made ``faces.sealed`` (``faces_md5``) from ``data/raw``
    (``raw_md5``) and the embedder (``model_md5``) was trained on it."""
    doc = {
        "schema": "2.0",
        "stages": {
            "prepare": {
                "cmd": "python -m visage_ml.app.stages.prepare",
                "deps": [{"path": "data/raw", "md5": raw_md5}],
                "outs": [{"path": "data/processed/faces.sealed", "md5": faces_md5}],
            },
            "train_embedder": {
                "cmd": "python -m visage_ml.app.stages.train_embedder",
                "deps": [{"path": "data/processed/faces.sealed", "md5": faces_md5}],
                "outs": [{"path": "models/embedder.pt", "md5": model_md5}],
            },
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(doc))


def retrain(
    paths: ProjectPaths, faces_md5: str, model_md5: str, *, raw_md5: str | None = None
) -> None:
    """What `dvc repro` leaves: dvc.lock says the embedder (``model_md5``) was trained on
    ``faces_md5`` (which ``prepare`` made from ``raw_md5``, when given), and the exported ONNX
    models say so in their ``visage.data_md5``."""
    import onnx  # deferred: protobuf-heavy

    if raw_md5 is None:
        write_training_lock(paths, faces_md5, model_md5)
    else:
        write_pipeline_lock(paths.root, raw_md5, faces_md5, model_md5)
    for f in sorted(paths.models.glob("*.onnx")):
        model = onnx.load(str(f))
        for prop in model.metadata_props:
            if prop.key == "visage.data_md5":
                prop.value = faces_md5
        onnx.save(model, str(f))


def erase_first(root: Path, *, n_subjects: int = 4) -> tuple[Any, str, dict, Any]:
    """A project of ``n_subjects`` whose first subject is erased: the project, the pid, the
    images it had (by image id) and the erasure's result."""
    proj = make_project(root, n_subjects=n_subjects)
    victim = proj.pids[0]
    removed = dict(proj.images[victim])
    return proj, victim, removed, Erasure(proj.paths).erase(victim)


def http_caller(proj: RightsProject) -> Callable[..., Any]:
    """``call(method, path, role, **kw)``: a request to the project's HTTP app (every mode on)
    with a key of that role."""
    # fastapi, and the HTTP app built on it, load only for the HTTP tests
    from fastapi.testclient import TestClient

    from visage_ml.app.http.app import create_app
    from visage_ml.app.http.auth import ROLES, KeyStore
    from visage_ml.config import load_params

    keys = {role: KeyStore(proj.paths.api_keys).create(role)[1] for role in ROLES}
    http_app = create_app(
        proj.paths,
        params=load_params(proj.paths.params),
        engine=proj.engine,
        gallery=proj.gallery(),
        core=proj.core,
        mode="full",
    )
    client = TestClient(http_app, raise_server_exceptions=False)

    def call(method: str, path: str, role: str, **kw: Any) -> Any:
        return client.request(method, path, headers={"X-API-Key": keys[role]}, **kw)

    call.app = http_app  # type: ignore[attr-defined]  # its OpenAPI schema, for the docs' tests
    return call


def _shown(b: bytes) -> str:
    return "".join(chr(c) if 0x20 <= c < 0x7F else "." for c in b)


_EVEN = range(0, 16, 2)


def _rows(k: bytes) -> list[tuple[int, bytes]]:
    return [(at, k[at : at + 16]) for at in range(0, len(k), 16)]


# A key file (``open("k.bin", "wb").write(key)``) shown by a hex viewer in a shell cell
# (``!xxd k.bin``) or a terminal whose log is kept, as each prints it (checked against xxd
# 2023, hexdump and od of util-linux and coreutils on 32 and 48 random bytes): xxd's groups of
# four digits after an offset and a colon, and its column of characters; xxd -p's 60 digits a
# line; hexdump -C's pairs; hexdump's little-endian words; od's pairs after hex offsets.
HEX_DUMPS = {
    "xxd": lambda k: "".join(
        f"{at:08x}: {' '.join(r[i : i + 2].hex() for i in range(0, 16, 2))}  {_shown(r)}\n"
        for at, r in _rows(k)
    ),
    "xxd -p": lambda k: "".join(k.hex()[i : i + 60] + "\n" for i in range(0, 2 * len(k), 60)),
    "hexdump -C": lambda k: (
        "".join(
            f"{at:08x}  {r[:8].hex(' ')}  {r[8:].hex(' ')}  |{_shown(r)}|\n" for at, r in _rows(k)
        )
        + f"{len(k):08x}\n"
    ),
    "hexdump": lambda k: (
        "".join(
            f"{at:07x} {' '.join(r[i + 1 : i + 2].hex() + r[i : i + 1].hex() for i in _EVEN)}\n"
            for at, r in _rows(k)
        )
        + f"{len(k):07x}\n"
    ),
    "od -A x -t x1z": lambda k: (
        "".join(f"{at:06x} {r.hex(' ')}  >{_shown(r)}<\n" for at, r in _rows(k)) + f"{len(k):06x}\n"
    ),
}
