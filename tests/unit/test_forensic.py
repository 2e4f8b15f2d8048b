"""Forensic check of erasure: after it, no byte of the subject is readable anywhere, copies the
project cannot reach included.

A tiny SynthFaces project in a git + DVC repository with a local remote (pushed), the real
``dvc repro prepare``, a gallery enrolled by a fake embedder (a random projection of the
processed crops), a real MLflow run and registered model version, a vault record with a
distinctive reference and an export bundle encrypted for the requester. Before the erasure an
operator takes a tar backup of the whole project and clones the DVC remote. One subject is
erased through the CLI; then every file under the project tree, the remote, the clone, DVC's
site cache and the tar backup is searched for the subject's PNG bytes, their decoded pixel
rows, their aligned crops, their template and their external reference; and every sealed copy
of the subject's files in any of those places is tried with the project's keys (the master key
included): none opens.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pyrage import x25519
from rights_fakes import REF, scan
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.data.crops import iter_chunks, read_crops
from visage_ml.data.processed import load_processed
from visage_ml.data.rawstore import RawStore
from visage_ml.io import md5_file
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.datakeys import MAGIC, NoDataKeyError, parse_header
from visage_ml.rights import dvc_objects
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.export import Delivery, export_subject, validate_bundle
from visage_ml.rights.lineage import workspace_processed_md5
from visage_ml.serving.gallery import Gallery
from visage_ml.tracking import configure

DIM = 64
ROWS = 8  # decoded pixel rows of each source image searched for


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    venv = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{venv}:/usr/bin:/bin",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    exe = str(Path(sys.executable).with_name("dvc")) if args[0] == "dvc" else args[0]
    proc = subprocess.run([exe, *args[1:]], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _fake_embedder(crops: np.ndarray) -> np.ndarray:
    w = np.random.default_rng(5).normal(size=(int(np.prod(crops.shape[1:])), DIM))
    e = crops.reshape(len(crops), -1).astype(np.float32) @ w.astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _log_mlflow(paths: ProjectPaths, data_md5: str, victim: str) -> None:
    import mlflow  # deferred: heavy, and only this test logs a run

    configure(paths)
    with mlflow.start_run(run_name="train_embedder") as run:
        mlflow.set_tags({"visage.data_md5": data_md5, "visage.kind": "embedder"})
        mlflow.log_metric("val_tar", 0.9)
        # A mistake the erasure must catch: a per-subject table logged as an artefact.
        table = paths.root / "per_subject.csv"
        table.write_text(f"pid,score\n{victim},0.93\n")
        mlflow.log_artifact(str(table))
        table.unlink()
    client = mlflow.MlflowClient()
    client.create_registered_model("visage-embedder")
    mv = client.create_model_version(
        "visage-embedder", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_model_version_tag("visage-embedder", mv.version, "visage.data_md5", data_md5)


def _unpack(tar_path: Path, into: Path) -> Path:
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="tar")
    return into


def sealed_copies(roots: list[Path], pid: str) -> list[tuple[Path, bytes]]:
    """Every file under ``roots`` that is a sealed file of ``pid`` (by its clear header)."""
    found = []
    for root in roots:
        for f in Path(root).rglob("*"):
            if not f.is_file() or f.is_symlink():
                continue
            with open(f, "rb") as fh:
                head = fh.read(len(MAGIC))
            if head != MAGIC:
                continue
            blob = f.read_bytes()
            header, _ = parse_header(blob)
            if header.get("pid") == pid:
                found.append((f, blob))
    return found


@pytest.mark.pipeline
def test_erased_subject_leaves_nothing_readable_in_any_copy(tiny_project, tmp_path):
    root = tiny_project({"synth.n_identities": 8, "synth.images_per_identity": [2, 3]}, dvc=True)
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    remote = tmp_path / "remote"
    _run(root, "dvc", "remote", "add", "-d", "store", str(remote))
    _run(root, "dvc", "repro", "prepare")
    _run(root, "dvc", "push")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "data and prepare")
    core = PrivacyCore(paths)
    data = load_processed(paths)
    manifest, faces = data.manifest, data.faces
    victim = str(manifest["pid"].iloc[0])
    core.vault.put(victim, {"external_ref": REF, "contact": "zelda@example.invalid"})
    gallery = Gallery.open(
        paths, model_version="fake-embedder-1", embedding_dim=DIM, threshold=0.5, core=core
    )
    rows = manifest.groupby("pid")["row"].apply(list)
    gallery.enroll_many({pid: _fake_embedder(faces[r]) for pid, r in rows.items()})
    _log_mlflow(paths, workspace_processed_md5(paths), victim)
    requester = x25519.Identity.generate()
    bundle = export_subject(  # kept inside the project, as a DPO would, encrypted
        paths, victim, core=core, delivery=Delivery(recipients=(str(requester.to_public()),))
    )
    kept_bundle = shutil.copy(bundle.path, tmp_path / "bundle.zip.age")  # the subject's copy

    # What would betray the subject, in clear.
    store = RawStore(paths, core=core)
    needles: dict[str, bytes] = {"external_ref": REF.encode()}
    victim_md5s = set()
    for f in sorted((paths.raw / victim).glob("*.sealed")):
        victim_md5s.add(md5_file(f))
        png = store.read_image(victim, f.stem)
        needles[f"png:{f.stem}"] = png
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        needles[f"pixels:{f.stem}"] = pixels[:ROWS].tobytes()
    for r in rows[victim]:
        needles[f"crop:{r}"] = faces[r].tobytes()
    template, _ = gallery.template(victim)
    needles["template"] = template.astype("<f4").tobytes()
    del faces, data
    site = dvc_objects.open_setup(root).site_cache_dir
    # Copies the project will never reach: a tar backup of everything, a clone of the remote.
    backup = tmp_path / "backup.tar"
    with tarfile.open(backup, "w") as tar:
        tar.add(root, arcname="proj")
    clone = shutil.copytree(remote, tmp_path / "remote-clone")
    places = [root, remote, clone, site, backup]

    # The scanner works: it finds every needle in a plaintext copy of the same data ...
    plain = tmp_path / "plain-copy.bin"
    plain.write_bytes(b"".join(needles.values()))
    assert set(scan([plain], needles)) == set(needles)
    # ... and finds none of them at rest, even before the erasure: everything is sealed.
    assert scan(places, needles) == {}
    # The victim's sealed images are in the cache, the remote, its clone and the backup.
    cache = root / ".dvc" / "cache"
    assert all(
        any((folder / "files" / "md5" / m[:2] / m[2:]).is_file() for m in victim_md5s)
        for folder in (cache, remote, clone)
    )

    result = CliRunner().invoke(app, ["privacy", "erase", victim, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{") :])
    cert = Path(out["certificate"])

    unpacked = _unpack(backup, tmp_path / "restored")
    assert scan([*places, unpacked], needles) == {}
    scanned = sum(
        p.stat().st_size
        for place in [*places, unpacked]
        for p in ([Path(place)] if Path(place).is_file() else Path(place).rglob("*"))
        if p.is_file() and not p.is_symlink()
    )
    assert scanned > 1_000_000
    # Ciphertext of the subject survives where the project cannot reach (the backup, the
    # clone); with every key the project holds, master key included, none of it opens.
    keys = PrivacyCore(paths).data_keys
    copies = sealed_copies([root, remote, clone, unpacked], victim)
    assert len(copies) >= 3 * len(victim_md5s)  # backup tree, its cache, the clone
    for _, blob in copies:
        with pytest.raises(NoDataKeyError):
            keys.open(blob)
    # The erased rows of the backup's crop file do not open either.
    backup_faces = unpacked / "proj" / "data" / "processed" / "faces.sealed"
    old_manifest = pd.read_parquet(unpacked / "proj" / "data" / "processed" / "manifest.parquet")
    chunks = list(iter_chunks(backup_faces, old_manifest, pids={victim}))
    assert chunks
    with pytest.raises(ValueError, match="erased"):
        read_crops(backup_faces, keys, old_manifest, pids={victim})
    # The project's cache and remote no longer hold the objects at all (defence in depth).
    for folder in (cache, remote):
        assert not any((folder / "files" / "md5" / m[:2] / m[2:]).is_file() for m in victim_md5s)
    print(json.dumps({"forensic_scan_bytes": scanned, "needles": len(needles), "hits": 0}))

    report = verify_certificate(cert, root=root)
    assert report.ok, (report.checks, report.findings)
    doc = json.loads(cert.read_text())
    models = {m["kind"] for m in doc["claims"]["models"]}
    assert {"mlflow_model", "mlflow_run"} <= models
    outcomes = {a["outcome"] for a in doc["claims"]["artefacts"]}
    assert {"key destroyed", "crypto-shredded", "physically removed"} <= outcomes
    data_bytes = bytearray(cert.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0x01
    altered = tmp_path / "altered.json"
    altered.write_bytes(bytes(data_bytes))
    assert not verify_certificate(altered, root=root, scan=False, models=False).ok
    # The requester's own copy is theirs: it still opens with their key, and only with it.
    doc = validate_bundle(Path(kept_bundle), identity=str(requester))
    assert doc["manifest"]["pid"] == victim and doc["subject"]["identity"]["external_ref"] == REF
    # The project still works: DVC is consistent and the remote holds the current version.
    _run(root, "dvc", "push")
    assert "new:" not in _run(root, "dvc", "status", "-c").stdout
