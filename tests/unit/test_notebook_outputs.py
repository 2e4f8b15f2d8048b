"""Faces shown in a notebook are not saved with it: the project's Jupyter strips outputs on save,
and `visage privacy doctor` finds (and `--purge` strips) notebooks saved elsewhere with images."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from jupyter_server.services.contents.filemanager import FileContentsManager
from PIL import Image
from tornado.web import HTTPError
from traitlets.config import Config
from typer.testing import CliRunner

from visage_ml.app.cli import app as cli
from visage_ml.app.jupyter import strip_before_save
from visage_ml.privacy.notebooks import find_image_notebooks, image_outputs

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _face_png() -> str:
    """A PNG as a notebook output stores it (base64): the bytes a scan looks for."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _notebook(png: str, *, html: bool = False) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    shown = (
        {"text/html": f'<img src="data:image/png;base64,{png}">'}
        if html
        else {"image/png": png, "text/plain": "<Figure size 640x480 with 1 Axes>"}
    )
    nb.cells = [
        nbformat.v4.new_code_cell(
            "plt.imshow(face)",
            execution_count=3,
            outputs=[nbformat.v4.new_output("display_data", data=shown)],
        ),
        nbformat.v4.new_code_cell(
            "len(subjects)", outputs=[nbformat.v4.new_output("stream", text="300\n")]
        ),
    ]
    return nb


def _markdown_notebook(png: str, *, attached: bool) -> nbformat.NotebookNode:
    """A face pasted into a Markdown cell (JupyterLab stores it as a cell attachment) or
    written inline (``<img src="data:...">``): no output at all, the image in the cell."""
    nb = nbformat.v4.new_notebook()
    if attached:
        cell = nbformat.v4.new_markdown_cell("Who is this? ![face.png](attachment:face.png)")
        cell["attachments"] = {"face.png": {"image/png": png}}
    else:
        inline = f'<img src="data:image/png;base64,{png}">'
        cell = nbformat.v4.new_markdown_cell(f"Who is this? {inline}")
    nb.cells = [cell, nbformat.v4.new_code_cell("len(subjects)")]
    return nb


def _manager(root: Path) -> FileContentsManager:
    """Jupyter's file manager, configured from the project's Jupyter config file."""
    doc = json.loads((REPO / "jupyter-config" / "visage-ml.json").read_text())
    return FileContentsManager(root_dir=str(root), config=Config(doc))


@pytest.mark.parametrize("html", [False, True])
def test_a_saved_notebook_keeps_no_face_on_disk(tmp_path, html):
    png = _face_png()
    cm = _manager(tmp_path)
    cm.save({"type": "notebook", "format": "json", "content": _notebook(png, html=html)}, "a.ipynb")
    cm.create_checkpoint("a.ipynb")
    for f in [tmp_path / "a.ipynb", *tmp_path.glob(".ipynb_checkpoints/*")]:
        text = f.read_text()
        assert png[:200] not in text, f"{f.name} holds the face"
        nb = json.loads(text)
        assert all(c["outputs"] == [] for c in nb["cells"] if c["cell_type"] == "code")
        assert "".join(nb["cells"][0]["source"]) == "plt.imshow(face)"  # the code is kept


def test_a_hook_that_cannot_strip_refuses_the_save(tmp_path):
    cm = FileContentsManager(root_dir=str(tmp_path))
    cm.register_pre_save_hook(strip_before_save)
    broken = {"type": "notebook", "format": "json", "content": {"cells": "not a list"}}
    with pytest.raises(HTTPError):
        cm.save(broken, "b.ipynb")
    assert not (tmp_path / "b.ipynb").exists()


def test_make_setup_installs_the_config_for_this_environment():
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip("not the project's own virtual environment")
    installed = Path(sys.prefix) / "etc/jupyter/jupyter_server_config.json"
    assert installed.read_text() == (REPO / "jupyter-config" / "visage-ml.json").read_text()


def test_doctor_finds_faces_in_notebooks_and_purge_strips_them(project):
    png = _face_png()
    saved = project / "analysis" / "look.ipynb"
    checkpoint = project / "analysis" / ".ipynb_checkpoints" / "look-checkpoint.ipynb"
    charts_free = project / "analysis" / "counts.ipynb"
    for path, nb in ((saved, _notebook(png)), (checkpoint, _notebook(png, html=True))):
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
    text_only = _notebook(png)
    text_only.cells = text_only.cells[1:]
    nbformat.write(text_only, charts_free)
    assert sorted(find_image_notebooks(project)) == sorted([saved, checkpoint])

    r = runner.invoke(cli, ["privacy", "doctor", "--json"])
    assert r.exit_code == 1
    found = [f for f in json.loads(r.output)["findings"] if f["kind"] == "notebook_image"]
    assert sorted(f["path"] for f in found) == sorted(
        str(p.relative_to(project)) for p in (saved, checkpoint)
    )
    r = runner.invoke(cli, ["privacy", "doctor", "--purge"])
    for path in (saved, checkpoint):
        assert png[:200] not in path.read_text()
        assert image_outputs(json.loads(path.read_text())) == 0
        assert len(nbformat.read(path, as_version=4).cells) == 2  # the notebook itself stays
    assert "300" in charts_free.read_text()  # no image: left as it was
    r = runner.invoke(cli, ["privacy", "doctor", "--json"])
    assert not [f for f in json.loads(r.output)["findings"] if f["kind"] == "notebook_image"]


@pytest.mark.parametrize("attached", [True, False])
def test_a_face_pasted_into_a_markdown_cell_is_not_saved(tmp_path, attached):
    png = _face_png()
    cm = _manager(tmp_path)
    nb = _markdown_notebook(png, attached=attached)
    cm.save({"type": "notebook", "format": "json", "content": nb}, "a.ipynb")
    cm.create_checkpoint("a.ipynb")
    for f in [tmp_path / "a.ipynb", *tmp_path.glob(".ipynb_checkpoints/*")]:
        text = f.read_text()
        assert png[:200] not in text, f"{f.name} holds the face"
        assert "Who is this?" in text  # the text is kept


@pytest.mark.parametrize("attached", [True, False])
def test_doctor_finds_a_face_in_a_markdown_cell_and_purge_removes_it(project, attached):
    png = _face_png()
    saved = project / "analysis" / "pasted.ipynb"
    saved.parent.mkdir(parents=True)
    nbformat.write(_markdown_notebook(png, attached=attached), saved)
    assert find_image_notebooks(project) == [saved]
    r = runner.invoke(cli, ["privacy", "doctor", "--purge"])
    assert r.exit_code == 0, r.output
    assert png[:200] not in saved.read_text()
    assert "Who is this?" in saved.read_text()
    assert find_image_notebooks(project) == []
