"""The project's .dvcignore: what Python writes beside the sources is not a change to a stage.

Stages depend on source folders (``visage_ml/models``, ``visage_ml/training``...). Importing a
module writes its byte-code to ``__pycache__/`` beside it; were that part of the folder's hash,
a stage would run again because another stage imported a module first (the demo re-ran
``train_embedder`` after ``train_demographics`` for this).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [dvc, *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )


def test_byte_code_beside_a_stage_source_does_not_make_it_stale(tmp_path):
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: python -c \"open('out.txt', 'w').write('x')\"\n"
        "    deps: [pkg]\n    outs: [out.txt]\n"
    )
    assert _dvc(root, "init", "--no-scm", "-q").returncode == 0
    r = _dvc(root, "repro", "-q")
    assert r.returncode == 0, r.stderr

    cache = root / "pkg" / "__pycache__"
    cache.mkdir()
    (cache / f"mod.cpython-{sys.version_info[0]}{sys.version_info[1]}.pyc").write_bytes(b"\0" * 16)
    (root / "pkg" / "stray.pyc").write_bytes(b"\0" * 16)
    r = _dvc(root, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "{}", f"stage stale after byte-code appeared: {r.stdout}"

    # A real change to the sources still is one.
    (root / "pkg" / "mod.py").write_text("X = 2\n")
    assert _dvc(root, "status", "--json").stdout.strip() != "{}"
