from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ConfigError, Params, load_params, params_from_dict, to_dict

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_are_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    # Every section the code knows is written out in params.yaml, so nothing is hidden.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(to_dict(Params()))
    assert params.synth.n_identities == 300


def test_a_params_file_that_leaves_a_key_out_gets_the_documented_setting():
    """The code's defaults are the repository's params.yaml: a project whose params.yaml
    leaves out a key (an older one, or one written by hand) trains and evaluates as the
    README describes, not with a weaker setting (30 demographic epochs with the group-balanced
    loss, not 12 without; 2 million impostor pairs, not 200,000)."""
    written = load_params(REPO / "params.yaml")
    assert to_dict(Params()) == to_dict(written)


@pytest.mark.parametrize(
    ("snippet", "key", "accepted"),
    [
        ({"train_embedder": {"lr": -1}}, "train_embedder.lr", "> 0"),
        ({"prepare": {"imgsize": 3}}, "prepare.imgsize", "known keys"),
        ({"prepare": {"image_size": "big"}}, "prepare.image_size", "an integer"),
        ({"evaluate": {"target_fmr": float("nan")}}, "evaluate.target_fmr", "finite"),
        ({"synth": {"group_shares": [0.5, 0.5]}}, "synth.group_shares", "summing to 1"),
        ({"train_embedder": {"head": "magic"}}, "train_embedder.head", "'arcface'"),
        ({"evaluate": {"gate": {"enforce": "yes"}}}, "evaluate.gate.enforce", "true or false"),
        (
            {"serving": {"request_read_timeout_s": 20.0}},
            "serving.request_read_timeout_s",
            "more than serving.body_timeout_s (30)",
        ),
        (
            {"evaluate": {"gate": {"min_identities": {"group": 50}}}},
            "evaluate.gate.min_identities",
            "a minimum for each of ['group', 'group_gender']",
        ),
    ],
)
def test_bad_value_names_file_key_found_and_accepted(snippet, key, accepted):
    with pytest.raises(ConfigError) as err:
        params_from_dict(snippet, source="params.yaml")
    msg = str(err.value)
    assert msg.startswith("params.yaml: key ")
    assert f"'{key}'" in msg
    assert accepted in msg


def test_a_stage_names_every_bad_key_at_once(project: Path):
    # `dvc exp run -S train_embedder.compile=maybe -S train_embedder.epochs=0`: each run of a
    # stage named one key, so every fix cost another run (and its deleted outputs).
    overrides = {"train_embedder.compile": "maybe", "train_embedder.epochs": 0}
    with pytest.raises(ConfigError) as err:
        load_params(project / "params.yaml", overrides=overrides)
    msg = str(err.value)
    assert "2 problems" in msg
    assert "'train_embedder.compile'" in msg and "'train_embedder.epochs'" in msg


def test_cli_exits_nonzero_naming_the_key(project: Path):
    text = (project / "params.yaml").read_text().replace("lr: 0.006", "lr: -0.5", 1)
    (project / "params.yaml").write_text(text)
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "train_embedder.lr" in result.output
    assert "-0.5" in result.output


def test_config_show_json_round_trips(project: Path):
    import json

    result = CliRunner().invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert params_from_dict(shown) == load_params(project / "params.yaml")


def test_overrides_and_edits_of_the_file_reach_the_next_read_and_only_that_one(tmp_path):
    # Reads of one text share a parse: an override must not leak into the next read, and an
    # edit of the file must be seen at once.
    p = tmp_path / "params.yaml"
    p.write_text(Path("params.yaml").read_text())
    base = load_params(p).train_embedder.epochs
    assert load_params(p, overrides={"train_embedder.epochs": base + 7}).train_embedder.epochs == (
        base + 7
    )
    assert load_params(p).train_embedder.epochs == base
    text = p.read_text().replace("  max_faces: 32 ", "  max_faces: 3 ", 1)
    assert text != p.read_text()
    p.write_text(text)
    assert load_params(p).serving.max_faces == 3
