"""Forensic check of erasure: after it, no byte of the subject is anywhere the project keeps data.

A tiny SynthFaces project in a git + DVC repository with a local remote (pushed), the real
``dvc repro prepare``, a gallery enrolled by a fake embedder (a random projection of the
processed crops), a real MLflow run and registered model version, a vault record with a
distinctive reference and an export bundle. One subject is erased through the CLI; then every
file under the project tree, the remote and DVC's site cache is read and searched for the
subject's image files, their decoded pixel rows, their aligned crops, their template and their
external reference.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rights_fakes import REF, scan
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights import dvc_objects
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.export import export_subject, validate_bundle
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


@pytest.mark.pipeline
def test_erased_subject_leaves_no_byte_in_any_store(tiny_project, tmp_path):
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
    manifest = pd.read_parquet(paths.processed / "manifest.parquet")
    victim = str(manifest["pid"].iloc[0])
    core.vault.put(victim, {"external_ref": REF, "contact": "zelda@example.invalid"})
    faces = np.load(paths.processed / "faces.u8.npy")
    gallery = Gallery.open(
        paths, model_version="fake-embedder-1", embedding_dim=DIM, threshold=0.5, core=core
    )
    rows = manifest.groupby("pid")["row"].apply(list)
    gallery.enroll_many({pid: _fake_embedder(faces[r]) for pid, r in rows.items()})
    _log_mlflow(paths, workspace_processed_md5(paths), victim)
    bundle = export_subject(paths, victim, core=core)  # inside the project, as a DPO would
    kept_bundle = shutil.copy(bundle.path, tmp_path / "bundle.zip")  # the subject's copy

    # What would betray the subject.
    needles: dict[str, bytes] = {"external_ref": REF.encode()}
    for f in sorted((paths.raw / victim).glob("*.png")):
        data = f.read_bytes()
        needles[f"png:{f.name}"] = data
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        needles[f"pixels:{f.name}"] = pixels[:ROWS].tobytes()
    for r in rows[victim]:
        needles[f"crop:{r}"] = faces[r].tobytes()
    template, _ = gallery.template(victim)
    needles["template"] = template.astype("<f4").tobytes()
    del faces
    site = dvc_objects.open_setup(root).site_cache_dir
    places = [root, remote, site]
    before = scan(places, needles)
    # The scan does find the subject before the erasure: raw files, cache, remote, crops.
    assert any(k.startswith("png:") for k in before) and any(k.startswith("crop:") for k in before)
    assert len(before[next(k for k in before if k.startswith("png:"))]) >= 3

    result = CliRunner().invoke(app, ["privacy", "erase", victim, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{") :])
    cert = Path(out["certificate"])

    after = scan(places, needles)
    assert after == {}, after
    scanned = sum(
        p.stat().st_size
        for place in places
        for p in Path(place).rglob("*")
        if p.is_file() and not p.is_symlink()
    )
    assert scanned > 1_000_000
    print(json.dumps({"forensic_scan_bytes": scanned, "needles": len(needles), "hits": 0}))

    report = verify_certificate(cert, root=root)
    assert report.ok, (report.checks, report.findings)
    models = {m["kind"] for m in json.loads(cert.read_text())["claims"]["models"]}
    assert {"mlflow_model", "mlflow_run"} <= models
    data = bytearray(cert.read_bytes())
    data[len(data) // 2] ^= 0x01
    altered = tmp_path / "altered.json"
    altered.write_bytes(bytes(data))
    assert not verify_certificate(altered, root=root, scan=False, models=False).ok
    doc = validate_bundle(Path(kept_bundle))
    assert doc["manifest"]["pid"] == victim and doc["subject"]["identity"]["external_ref"] == REF
    # The project still works: DVC is consistent and the remote holds the current version.
    _run(root, "dvc", "push")
    assert "new:" not in _run(root, "dvc", "status", "-c").stdout
