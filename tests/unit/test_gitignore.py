"""The project's .gitignore against DVC experiments: `dvc exp run` commits the workspace into an
experiment ref, files git ignores included in none. The metrics it compares must be there, and
data that must never reach git history must not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _ignored(root: Path, paths: list[str]) -> set[str]:
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return set(out.stdout.split())


def _declared(kind: str) -> list[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = []
    for stage in stages.values():
        for item in stage.get(kind) or []:
            found.extend(item if isinstance(item, dict) else [item])
    return sorted(set(found))


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def test_experiments_carry_their_metrics(tmp_path):
    # Ignored metrics left every experiment's row of `dvc exp show` and `dvc exp diff` empty.
    metrics = _declared("metrics")
    assert "reports/metrics.json" in metrics
    assert _ignored(_project(tmp_path), metrics) == set()


def test_no_face_data_and_no_secret_reaches_an_experiment_commit(tmp_path):
    # The evaluation and demographic populations' sealed crops (112 MB in a demo) were
    # committed into every experiment ref.
    outs = [o for o in _declared("outs") if o.startswith(("data/", "models/", "gallery/"))]
    outs += ["secrets/master.key", "privacy/ledger.jsonl", "reports/plots/roc_g1.csv"]
    assert "data/eval_population/faces.sealed" in outs
    assert _ignored(_project(tmp_path), outs) == set(outs)
