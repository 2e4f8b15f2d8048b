"""The committed notebooks run top to bottom on a tiny pipeline project."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.notebook
@pytest.mark.parametrize("name", ["01-explore-synthfaces", "02-fairness-review"])
def test_notebook_runs(name, tiny_pipeline, monkeypatch):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "notebooks are committed without outputs"
    )
    monkeypatch.setenv("VISAGE_PROJECT", str(tiny_pipeline.root))
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tiny_pipeline.root)}},
    )
    client.execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
