"""``visage demo``: the main job on the embedded default, end to end, and where to look."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import typer
import yaml

from visage_ml.app.cli.common import console, project, setup_logging, user_errors
from visage_ml.app.cli.fairness_summary import fairness_lines
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.documents import write_documents
from visage_ml.privacy.keys import MASTER_KEY_ENV
from visage_ml.privacy.records import ensure_records
from visage_ml.privacy.witness import KEY_FILE, Witness, project_id
from visage_ml.privacy.witnessed import witness_folder, witness_params
from visage_ml.procenv import child_env
from visage_ml.serving.operating_point import (
    AT_VERIFY_THRESHOLD,
    IdentificationPolicy,
    load_score_model,
)


def _venv_env() -> dict[str, str]:
    # The stages `dvc repro` runs are visage's own and decrypt with the master key, so it is
    # the one secret kept; every other secret stays out of DVC and what it starts.
    env = child_env(keep=(MASTER_KEY_ENV,))
    # dvc.yaml runs `python -m visage_ml.app.stages.<name>`: make it this interpreter.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PYTHONUNBUFFERED"] = "1"  # the stages' output through the pipe as it comes
    return env


def _release_for_new_project(paths: ProjectPaths) -> list[str]:
    """A demo re-run in a folder emptied since (a fresh clone where an earlier one stood): its
    directory witnesses still bind the folder to the earlier project's log, and would refuse
    the new ledger as a rebuilt one. With no ledger, no ledger key and no raw data here there
    is nothing of the old project to protect, so the binding is released (recorded by the
    witness in ``projects/released.jsonl``)."""
    has_data = paths.raw.is_dir() and any(paths.raw.iterdir())
    if paths.ledger.exists() or paths.signing_key.exists() or has_data:
        return []
    lines = []
    for spec in witness_params(paths).witnesses:
        folder = witness_folder(spec) if spec.kind == "directory" else None
        if folder is None or not (folder / KEY_FILE).exists():
            continue
        bound = Witness(folder).release(
            project_id(paths.root), reason="visage demo: a new project in a folder with no ledger"
        )
        if bound is not None:
            lines.append(
                f"ledger witness: this folder was bound to an earlier project's log ({bound}); "
                "released for the new project (recorded by the witness)"
            )
    return lines


def _witness_setup(paths: ProjectPaths) -> list[str]:
    """Make sure the ledger's directory witnesses exist, and say where they are.

    The default (params.yaml ``privacy.witness``) is a folder outside the project:
    ``$VISAGE_WITNESS_DIR`` or ``~/.local/share/visage-ml/witness``. The ledger is checkpointed
    and cosigned now, so that a rollback from here on is detected.
    """
    core = PrivacyCore(paths)
    lines = []
    for spec in witness_params(paths).witnesses:
        if spec.kind == "directory":
            folder = witness_folder(spec).resolve()
            w = Witness.create(folder)
            inside = folder.is_relative_to(paths.root)
            note = "  [red](inside the project: move it to another volume)[/]" if inside else ""
            lines.append(f"ledger witness: directory {folder} ({w.name}){note}")
        else:
            lines.append(f"ledger witness: {spec.url}")
    if core.paths.ledger.exists():
        witnessed = core.checkpoint_and_witness()
        lines.append(
            f"ledger checkpoint: {witnessed.checkpoint.size} entries, cosigned by "
            f"{', '.join(witnessed.cosigners) or 'no witness'}"
        )
    return lines


def _operating_point(paths: ProjectPaths) -> list[str]:
    """The 1:N operating point ``visage serve`` derives for the demo's gallery (as
    ``visage gallery info`` shows it), from ``reports/gallery.json`` and the score model."""
    try:
        gallery = json.loads((paths.reports / "gallery.json").read_text())
        params = load_params(paths.params)
        model, _ = load_score_model(
            paths,
            model_version=str(gallery["model_version"]),
            confidence=params.serving.identify.confidence,
        )
    except (OSError, ValueError, KeyError) as exc:
        return [f"  served 1:N point     n/a ({type(exc).__name__}: run `visage gallery info`)"]
    policy = IdentificationPolicy.from_params(
        model, params, verify_threshold=float(gallery["threshold"])
    )
    s = policy.status(int(gallery["searchable"]))
    fnir = "n/a" if s.get("expected_fnir") is None else f"{s['expected_fnir']:.3g}"
    lines = [
        f"  served 1:N point     {s['gallery_size']} enrolled, target FPIR {s['target_fpir']:g}: "
        f"threshold {s['threshold']:.4f}, expected FNIR {fnir}"
    ]
    if s.get("at_verify_threshold"):
        lines.append(f"    at {AT_VERIFY_THRESHOLD}")
    if s.get("too_large"):
        lines.append(
            "    gallery too large for the target at this model's accuracy "
            "(`visage gallery info`; README: how the threshold is chosen)"
        )
    return lines


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
        ):
            value = pick(*keys)
            if value is not None:
                lines.append(
                    f"  {label:<20} {value:.4f}"
                    if isinstance(value, float)
                    else f"  {label:<20} {value}"
                )
    # The gate's three-way outcome, the served calibration, per-group demographic accuracy.
    lines.extend(fairness_lines(root / "reports"))
    return lines


# How DVC names the stage it starts or skips: each line starts the stage's clock.
_STAGE_LINE = re.compile(r"^(?:Running stage|Stage) '([^']+)'")


def repro_timed(
    cmd: list[str], root: Path, stages: list[str], timings: dict[str, float]
) -> tuple[int, str | None]:
    """Run ``dvc repro`` once, passing its output through, and time each stage of ``stages``.

    One run, not one ``dvc repro STAGE`` per stage: each run loads DVC and checks the stages
    upstream again, 1.1-1.3 s a run on 2 cores. A stage's time runs from the line where DVC
    starts (or skips) it to the next such line, or to DVC's exit; the first one's from DVC's
    start. Returns DVC's exit status and the last stage it started.
    """
    proc = subprocess.Popen(
        cmd, cwd=root, env=_venv_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    current, started = None, time.perf_counter()
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        m = _STAGE_LINE.match(line)
        if m and m.group(1) in stages:
            if current is not None:  # the first stage's time holds DVC's start
                now = time.perf_counter()
                timings[current] = timings.get(current, 0.0) + now - started
                started = now
            current = m.group(1)
    returncode = proc.wait()
    if current is not None:
        timings[current] = timings.get(current, 0.0) + time.perf_counter() - started
    return returncode, current


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
        for line in _release_for_new_project(paths):
            console.print(line, highlight=False)
        if not skip_synth:
            t = time.perf_counter()
            result = acquire_synthfaces(paths, params)
            timings["synth"] = time.perf_counter() - t
            verb = "generated" if result.generated else "reused"
            console.print(
                f"SynthFaces {verb}: {result.n_subjects} subjects, {result.n_images} images, "
                f"{result.n_scenes} scenes"
            )
        for line in _witness_setup(paths):
            console.print(line, highlight=False)
        # The DPO's documents: records of processing, the full notice, a sample sign.
        ensure_records(paths)
        written = write_documents(paths, paths.reports / "privacy")
        console.print(
            f"privacy documents: {', '.join(p.name for p in written.values())} in reports/privacy/"
        )
    dvc = str(Path(sys.executable).with_name("dvc"))
    stages = list(yaml.safe_load((paths.root / "dvc.yaml").read_text())["stages"])
    returncode, last = repro_timed([dvc, "repro"], paths.root, stages, timings)
    if returncode != 0:
        where = f" at stage {last}" if last else ""
        console.print(f"[red]dvc repro failed{where}[/]: see the messages above")
        raise typer.Exit(returncode)
    console.print("\n[bold]visage-ml demo finished[/]")
    console.print("time per step (s):")
    for name, secs in timings.items():
        console.print(f"  {name:<20} {secs:6.1f}")
    console.print(f"  {'total':<20} {sum(timings.values()):6.1f}")
    console.print("headline metrics (reports/metrics.json):")
    for line in [*_headline(paths.root), *_operating_point(paths)]:
        console.print(line, highlight=False)
    console.print(
        "\nWhere to look:\n"
        "  reports/fairness_report.html   the fairness report (open in a browser)\n"
        "  reports/privacy/               records of processing, the notice and the sign (DPO)\n"
        "  make ui                        MLflow UI: runs, the report, registered models\n"
        "  dvc metrics show / dvc plots show\n"
        "  visage serve                   HTTP API (README: identify and analytics with curl)\n"
        "  visage privacy verify-ledger   the signed ledger, checked against its witnesses\n"
        "  visage witness status          the directory witness (README: a witness on another host)"
    )
