"""Bring your own data and weights, end to end: SynthFaces + an imported LFW-layout set with
pairs, published weights brought in offline, the GPU preset (InceptionResnetV1 at 160 px) run
for a few CPU steps through `dvc repro`, and the LFW figures in reports/metrics.json."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lfw_fakes import make_lfw_set
from PIL import Image
from project_helpers import pipeline_env

from visage_ml.models.checkpoint import load_model
from visage_ml.models.weights import PIN_FILE

# docs/gpu.md's preset, shrunk to a smoke run: a few optimizer steps on tiny data, on the CPU.
GPU_PRESET_SMOKE = {
    "prepare.image_size": 160,
    "train_embedder.backbone": "inception_resnet_v1",
    "train_embedder.init": "casia-webface",
    "train_embedder.input_size": 160,
    "train_embedder.embedding_dim": 512,
    "train_embedder.margin.s": 64.0,
    "train_embedder.margin.m2": 0.5,
    "train_embedder.lr": 0.0003,
    "train_embedder.batch_size": 4,
    "train_embedder.epochs": 1,
    "train_embedder.max_steps": 2,
    "train_demographics.batch_size": 8,
    "train_demographics.epochs": 1,
    "train_demographics.max_steps": 2,
    "export.parity_samples": 4,
    "evaluate.bootstrap": 5,
    "evaluate.impostor_pairs": 2000,
    # A small evaluation population; a 2-step demographic net cannot pass its gate (advisory).
    "eval_population.identities_per_cell": 2,
    "eval_population.calibration_identities_per_cell": 2,
    "eval_population.images_per_identity": 2,
    "demographic_population.identities_per_cell": 1,
    "demographic_population.images_per_identity": 2,
    "evaluate.calibration.bootstrap": 10,
    "evaluate.calibration.min_cluster_impostors": 50,
    "evaluate.gate.demographics.enforce": False,
}
N_PEOPLE, PER_PERSON, FOLDS, PER_FOLD = 8, 3, 10, 2


def _run(cmd: list[str], root: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd[1:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


def _no_face(seed: int) -> bytes:
    """A picture without a face (a smooth gradient): MTCNN finds nothing in it."""
    y, x = np.mgrid[0:160, 0:160]
    pixels = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8) + seed
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _fake_published_weights(path: Path) -> None:
    """Stands in for facenet-pytorch's casia-webface file (no network here): the same
    architecture and keys, random values, and its classifier of training identities."""
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    torch.manual_seed(0)
    state = InceptionResnetV1(pretrained=None, classify=False).state_dict()
    state["logits.weight"] = torch.zeros(5, 512)
    state["logits.bias"] = torch.zeros(5)
    torch.save(state, path)


@pytest.mark.pipeline
def test_lfw_import_and_gpu_preset_through_dvc_repro(tiny_project, tmp_path):
    root = tiny_project(GPU_PRESET_SMOKE, dvc=True)
    env = {**pipeline_env(root), "TORCH_HOME": str(tmp_path / "torch")}
    bindir = Path(sys.executable).parent
    visage, dvc = str(bindir / "visage"), str(bindir / "dvc")
    _run([visage, "data", "synth"], root, env)

    base, keys = make_lfw_set(
        tmp_path / "lfw-download",
        n_people=N_PEOPLE,
        per_person=PER_PERSON,
        folds=FOLDS,
        pairs_per_fold=PER_FOLD,
        size=160,
    )
    # Two images of the protocol hold no face: the detector misses them.
    blind = list(dict.fromkeys(keys))[:2]
    for i, key in enumerate(blind):
        name, num = key.split("/")
        (base / "lfw" / name / f"{name}_{int(num):04d}.jpg").write_bytes(_no_face(i))
    forms = tmp_path / "forms.txt"
    forms.write_text("signed consent forms of the imported subjects\n")
    imported = _run(
        [visage, "data", "import", "lfw", str(base), "--consent-evidence", str(forms), "--json"],
        root,
        env,
    )
    summary = json.loads(imported.stdout)
    assert summary["role"] == "evaluation"  # it brings pairs: a benchmark, never trained on
    assert summary["lfw_pairs"]["written"] == FOLDS * PER_FOLD * 2

    # The published weights, brought in offline: checked, pinned on first fetch, placed.
    fake = tmp_path / "20180408-102900-casia-webface.pt"
    _fake_published_weights(fake)
    fetched = _run(
        [visage, "models", "fetch", "casia-webface", "--file", str(fake), "--json"], root, env
    )
    assert Path(json.loads(fetched.stdout)["path"]).parent == tmp_path / "torch" / "checkpoints"
    assert "casia-webface" in json.loads((root / PIN_FILE).read_text())

    repro = _run([dvc, "repro"], root, env)
    reports = root / "reports"

    # Splits respect roles: every LFW subject is in test, though its consent covers training.
    prep = json.loads((reports / "prepare.json").read_text())
    lfw_prep = prep["by_source"]["import:lfw"]
    assert lfw_prep["roles"] == ["evaluation"]
    assert lfw_prep["splits"]["train"]["subjects"] == lfw_prep["splits"]["val"]["subjects"] == 0
    assert lfw_prep["splits"]["test"]["subjects"] == N_PEOPLE
    assert lfw_prep["labels"]["unlabeled"] == N_PEOPLE and prep["labels"]["unlabeled"] == N_PEOPLE
    assert prep["by_source"]["synthfaces"]["labels"]["unlabeled"] == 0
    splits = json.loads((root / "data" / "processed" / "splits.json").read_text())
    detection = pd.read_parquet(root / "data" / "processed" / "detection.parquet")
    lfw_pids = set(detection.loc[detection["source"] == "import:lfw", "pid"])
    assert not lfw_pids & (set(splits["train"]) | set(splits["val"]))

    # The LFW 10-fold accuracy on every protocol pair, misses counted and reported.
    metrics = json.loads((reports / "metrics.json").read_text())
    lfw = metrics["lfw"]
    assert lfw["n_pairs"] == FOLDS * PER_FOLD * 2
    assert lfw["stderr"] == pytest.approx(lfw["std"] / FOLDS**0.5)  # one accuracy per fold
    assert lfw["pairs_in_protocol"] == lfw["pairs_used"] == FOLDS * PER_FOLD * 2
    assert lfw["pairs_not_evaluated"] == 0
    with_blind = sum(
        1 for a, b in zip(keys[::2], keys[1::2], strict=True) if a in blind or b in blind
    )
    assert lfw["pairs_with_undetected_image"] >= with_blind > 0
    assert lfw["images_missed"] >= 2
    assert lfw["miss_rate"] == pytest.approx(lfw["images_missed"] / lfw["images"])
    assert lfw["source"] == "import:lfw"
    # Which source each figure comes from.
    # synthfaces:evaluation is the evaluation-only population (the eval_population stage).
    assert metrics["population"]["sources"] == "import:lfw, synthfaces, synthfaces:evaluation"
    assert set(metrics["sources"]) == {"import:lfw", "synthfaces", "synthfaces:evaluation"}
    assert metrics["sources"]["import:lfw"]["n_identities"] == N_PEOPLE
    assert metrics["sources"]["import:lfw"]["detection_miss_rate"] > 0
    fairness = json.loads((reports / "fairness.json").read_text())
    assert fairness["breakdowns"]["group"]["unlabeled"]["n_identities"] == N_PEOPLE
    page = (reports / "fairness_report.html").read_text()
    assert "import:lfw" in page and "Per source" in page

    # The preset ran: InceptionResnetV1 at 160 px, fine-tuned from the pinned weights.
    assert "loaded InceptionResnetV1 weights 'casia-webface'" in repro.stdout + repro.stderr
    _, meta = load_model(root / "models" / "embedder.pt")
    assert meta["config"]["backbone"] == "inception_resnet_v1"
    assert meta["preprocess"]["input_size"] == 160 and meta["config"]["embedding_dim"] == 512
    assert meta["params"]["max_steps"] == 2 and meta["params"]["init"] == "casia-webface"
    demo = json.loads((reports / "train_demographics.json").read_text())
    assert demo["train_images_unlabeled"] == 0  # LFW never reached a training split

    # No imported person's name in anything the pipeline wrote.
    from lfw_fakes import names

    for folder in ("data", "reports", "models"):
        for p in (root / folder).rglob("*"):
            if p.is_file() and p.stat().st_size < 50_000_000:
                blob = p.read_bytes()
                assert not any(n.encode() in blob for n in names(N_PEOPLE)), p
