"""The committed notebooks run top to bottom on a tiny pipeline project."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _execute(nb: nbformat.NotebookNode, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``nb`` top to bottom on the project at ``root``, outputs kept in ``nb``."""
    monkeypatch.setenv("VISAGE_PROJECT", str(root))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}
    )
    client.execute()


@pytest.mark.notebook
@pytest.mark.parametrize("name", ["01-explore-synthfaces", "02-fairness-review"])
def test_notebook_runs(name, tiny_pipeline, monkeypatch):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "notebooks are committed without outputs"
    )
    _execute(nb, tiny_pipeline.root, monkeypatch)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors


SPY = '''
_read_parquet = pd.read_parquet


def _consents_with_refusals(path, *args, **kwargs):
    # Half the subjects refuse training (restricted, objected, withdrawn): the snapshot says so.
    df = _read_parquet(path, *args, **kwargs)
    if Path(path) == paths.consents:
        df = df.copy()
        refused = sorted(df.pid.unique())[::2]
        df.loc[df.pid.isin(refused) & (df.purpose == "training"), "allowed"] = False
    return df


pd.read_parquet = _consents_with_refusals
_shown = []
_read_image = RawStore.read_image


def _spy(self, pid, image_id):
    _shown.append(pid)
    return _read_image(self, pid, image_id)


RawStore.read_image = _spy
'''

CHECK = '''
_snap = pd.read_parquet(paths.consents)
_ok = set(_snap.loc[(_snap.purpose == "training") & _snap.allowed, "pid"])
assert _shown and set(_shown) <= _ok, f"faces of {len(set(_shown) - _ok)} refusing subjects shown"
'''


@pytest.mark.notebook
def test_the_explore_notebook_shows_no_face_of_a_subject_who_refused_training(
    tiny_pipeline, monkeypatch
):
    nb = nbformat.read(NOTEBOOKS / "01-explore-synthfaces.ipynb", as_version=4)
    nb.cells.insert(2, nbformat.v4.new_code_cell(SPY))
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    _execute(nb, tiny_pipeline.root, monkeypatch)  # a failed cell raises


@pytest.mark.notebook
def test_the_erasure_walkthrough_runs_and_leaves_no_key_or_face_behind(tmp_path, monkeypatch):
    # The DPO's walkthrough builds a project of its own in a temporary folder (its master key,
    # sealed faces, an export bundle) and must take it away when the kernel ends.
    nb = nbformat.read(NOTEBOOKS / "03-erasure-walkthrough.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    nb.cells.insert(2, nbformat.v4.new_code_cell("print('WORK=' + str(WORK))"))
    _execute(nb, tmp_path, monkeypatch)  # a failed cell raises
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    work = Path(printed.split("WORK=", 1)[1].strip())
    assert work.name.startswith("visage-erasure-")
    assert not work.exists(), "the walkthrough's project (master key, faces) was left behind"
    shown = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "IProgress not found" not in shown


@pytest.mark.notebook
def test_the_erasure_walkthrough_takes_its_project_away_even_when_a_cell_fails(
    tmp_path, monkeypatch
):
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(NOTEBOOKS / "03-erasure-walkthrough.ipynb", as_version=4)
    stop = "(WORK / 'secret').write_text('x'); print('WORK=' + str(WORK)); raise RuntimeError('x')"
    nb.cells.insert(2, nbformat.v4.new_code_cell(stop))
    with pytest.raises(CellExecutionError):
        _execute(nb, tmp_path, monkeypatch)
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs if o.output_type == "stream")
    work = Path(printed.split("WORK=", 1)[1].strip())
    assert not work.exists(), "a failed walkthrough left its project (master key, faces) behind"
