"""SynthFaces acquisition into a project (`visage data synth`): what it writes and refuses."""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.rawstore import read_subjects


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def test_synthfaces_where_data_raw_is_not_checked_out_is_refused_and_generates_nothing(
    tiny_project, tmp_path
):
    """DVC tracks data/raw (SynthFaces and an imported person) and data/scenes, neither checked
    out here (a fresh clone, `dvc checkout` not run): `visage data synth` found no
    subjects.parquet, generated SynthFaces again into an empty data/raw and `dvc add`ed it, so
    data/raw.dvc's current version held no imported subject. Refused now in one line saying
    what to run, nothing written; checked out, SynthFaces is reused and everyone kept."""
    root = tiny_project(dvc=True)
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    person = tmp_path / "faces" / "Zelda_Testperson"
    person.mkdir(parents=True)
    (person / "a.jpg").write_bytes(_jpeg(1))
    basis = ImportBasis.from_options(legal_basis="art6(1)(f)+art9(2)(j)")
    import_dataset("imagefolder", person.parent, paths=paths, basis=basis)
    everyone = set(read_subjects(paths.raw)["pid"])
    dvcfile = paths.data / "raw.dvc"
    tracked = dvcfile.read_text()
    shutil.rmtree(paths.raw)
    shutil.rmtree(paths.scenes)

    refused = CliRunner().invoke(app, ["data", "synth"])

    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert "DVC tracks data/raw" in said and "run `dvc checkout data/raw`" in said, said
    assert not paths.raw.exists() and not paths.scenes.exists()
    assert dvcfile.read_text() == tracked

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(sys.executable).with_name("dvc"))
    checkout = subprocess.run(
        [dvc, "checkout", "data/raw", "data/scenes"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert checkout.returncode == 0, checkout.stderr
    again = acquire_synthfaces(paths, load_params(paths.params), progress=False)
    assert not again.generated and set(read_subjects(paths.raw)["pid"]) == everyone
