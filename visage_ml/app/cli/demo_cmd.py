"""``visage demo``: the main job on the embedded default, end to end, and where to look."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import typer
import yaml

from visage_ml.app.cli.common import console, project, setup_logging, user_errors
from visage_ml.config import load_params
from visage_ml.data.acquire import acquire_synthfaces


def _venv_env() -> dict[str, str]:
    env = dict(os.environ)
    # dvc.yaml runs `python -m visage_ml.app.stages.<name>`: make it this interpreter.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _headline(root: Path) -> list[str]:
    lines = []
    metrics = root / "reports" / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())

        def pick(*keys: str) -> object:
            node: object = m
            for k in keys:
                if not isinstance(node, dict) or k not in node:
                    return None
                node = node[k]
            return node

        for label, keys in (
            ("TAR@FAR=1e-3", ("verification", "tar_at_fmr_1e-3")),
            ("EER", ("verification", "eer")),
            ("AUC", ("verification", "auc")),
            ("rank-1", ("identification", "rank1")),
            ("FMR max/min ratio", ("fairness", "fmr_max_min_ratio")),
            ("FNMR max/min ratio", ("fairness", "fnmr_max_min_ratio")),
            ("fairness gate passed", ("fairness", "gate_passed")),
        ):
            value = pick(*keys)
            if value is not None:
                lines.append(
                    f"  {label:<20} {value:.4f}"
                    if isinstance(value, float)
                    else f"  {label:<20} {value}"
                )
    return lines


def demo(
    skip_synth: bool = typer.Option(False, help="Use data/raw as it is (no SynthFaces)."),
) -> None:
    """Run the main job on the embedded default: SynthFaces -> `dvc repro` -> headline metrics.

    Writes data/raw and data/scenes (SynthFaces, DVC-tracked), the privacy ledger and vault,
    then every pipeline output (data/processed, models, reports, mlruns, gallery). Re-running
    reuses the data and redoes only what is out of date.
    """
    setup_logging()
    paths = project()
    timings: dict[str, float] = {}
    with user_errors():
        params = load_params(paths.params)
        if not skip_synth:
            t = time.perf_counter()
            result = acquire_synthfaces(paths, params)
            timings["synth"] = time.perf_counter() - t
            verb = "generated" if result.generated else "reused"
            console.print(
                f"SynthFaces {verb}: {result.n_subjects} subjects, {result.n_images} images, "
                f"{result.n_scenes} scenes"
            )
    dvc = str(Path(sys.executable).with_name("dvc"))
    # One `dvc repro STAGE` per stage of dvc.yaml (written in pipeline order), so each stage's
    # time can be shown; DVC skips an up-to-date stage in about a second.
    stages = list(yaml.safe_load((paths.root / "dvc.yaml").read_text())["stages"])
    for stage in stages:
        t = time.perf_counter()
        proc = subprocess.run([dvc, "repro", stage], cwd=paths.root, env=_venv_env())
        timings[stage] = time.perf_counter() - t
        if proc.returncode != 0:
            console.print(f"[red]dvc repro {stage} failed[/]: see the messages above")
            raise typer.Exit(proc.returncode)
    console.print("\n[bold]visage-ml demo finished[/]")
    console.print("time per step (s):")
    for name, secs in timings.items():
        console.print(f"  {name:<20} {secs:6.1f}")
    console.print(f"  {'total':<20} {sum(timings.values()):6.1f}")
    console.print("headline metrics (reports/metrics.json):")
    for line in _headline(paths.root):
        console.print(line, highlight=False)
    console.print(
        "\nWhere to look:\n"
        "  reports/fairness_report.html   the fairness report (open in a browser)\n"
        "  make ui                        MLflow UI: runs, the report, registered models\n"
        "  dvc metrics show / dvc plots show\n"
        "  visage serve                   HTTP API (README: identify and analytics with curl)\n"
        "  visage privacy verify-ledger   the signed privacy ledger"
    )
