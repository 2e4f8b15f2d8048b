import base64
import re

import numpy as np
import pytest

from visage_ml.data.pairs import PairSet, threshold_at_far
from visage_ml.evaluation.fairness import demographic_differentials, fairness_gate, make_breakdown
from visage_ml.evaluation.figures import make_figures
from visage_ml.evaluation.report import fmt_ci, fmt_rate, render_html
from visage_ml.evaluation.verification import SortedScores

PNG = b"\x89PNG\r\n\x1a\n"
LABELS = ("g1", "g<2>")  # a label with markup must come out escaped


@pytest.fixture(scope="module")
def report_inputs():
    rng = np.random.default_rng(0)
    k = 20
    group_of = np.repeat([0, 1], k // 2)
    gen_ids = np.repeat(np.arange(k), 10)
    ia = rng.integers(0, k, 5000)
    ib = (ia + rng.integers(1, k, 5000)) % k
    id_a, id_b = np.r_[gen_ids, ia], np.r_[gen_ids, ib]
    score = np.r_[rng.normal(0.5, 0.15, gen_ids.size), rng.normal(0, 0.15, 5000)]
    n = id_a.size
    pairs = PairSet(np.arange(n), np.arange(n), id_a, id_b, id_a == id_b, score, k)
    b = make_breakdown("group", [LABELS[g] for g in group_of], LABELS)
    t = threshold_at_far(score[~pairs.genuine], 1e-2)
    diffs = demographic_differentials(pairs, [b], threshold=t, rounds=20, seed=1)
    gate = fairness_gate(diffs, max_fmr_ratio=10, max_fnmr_ratio=3)
    curve = SortedScores(score, pairs.genuine).roc()
    curves = {"group": {"all": curve, "g1": curve, "g<2>": None}}
    fairness = {
        "threshold": t,
        "target_fmr": 1e-2,
        "n_identities": k,
        "n_images": 200,
        "verification": {"auc": {"value": 0.99, "ci_low": 0.98, "ci_high": 1.0}},
        "identification": {"rank1": 0.9, "n_enrolled": 10.0},
        "breakdowns": {"group": diffs["group"].to_dict()},
        "demographic_model": {
            "gender_accuracy": {
                "group": {
                    "overall": 0.9,
                    "by_group": {"g1": 0.95, "g<2>": 0.85},
                    "n": {"g1": 100, "g<2>": 100},
                    "difference": 0.1,
                    "ratio": 0.85 / 0.95,
                }
            }
        },
        "detection": None,
        "lfw": {"accuracy": 0.97, "std": 0.01},
        "gate": {**gate.to_dict(), "enforce": True},
    }
    return fairness, curves


def test_figures_are_png_images(report_inputs):
    fairness, curves = report_inputs
    figs = make_figures(fairness=fairness, curves=curves)
    assert {"roc_group.png", "det_group.png", "cross_fmr_group.png", "rates_group.png"} <= set(figs)
    assert "demographics_gender_accuracy.png" in figs
    for name, data in figs.items():
        assert data.startswith(PNG), name
        assert len(data) > 2000, name


def test_html_is_self_contained_escaped_and_explains_itself(report_inputs):
    fairness, curves = report_inputs
    figs = make_figures(fairness=fairness, curves=curves)
    lineage = {
        "eval_data_md5": "d" * 32,
        "embedder_model_version": "emb-7",
        "demographics_model_version": "dem-3",
        "git_rev": "abc123",
    }
    page = render_html(
        fairness=fairness,
        metrics={"verification": {"auc": 0.99}, "fairness": {"gate_passed": 1}},
        figures=figs,
        lineage=lineage,
        params={"evaluate.target_fmr": 0.01},
    )
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 5
    assert all(base64.b64decode(img).startswith(PNG) for img in images)
    # Nothing fetched from elsewhere.
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<script" not in page and "<link" not in page
    assert "g&lt;2&gt;" in page and "g<2>" not in page
    assert "How to read this report" in page
    for value in lineage.values():
        assert value in page
    assert "fairness gate" in page
    assert "LFW 10-fold accuracy" in page


def test_number_formatting():
    assert fmt_rate(None) == "n/a"
    assert fmt_rate(0.0) == "0"
    assert fmt_rate(0.01234) == "0.0123"
    assert fmt_rate(0.0001234) == "1.23e-04"
    assert fmt_ci({"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}) == "0.5 [0.4, 0.6]"
    assert fmt_ci({"value": 0.5, "ci_low": None, "ci_high": None}) == "0.5"


def test_the_banner_says_which_part_of_the_gate_is_enforced(report_inputs):
    # It said "gate advisory (not enforced)" while the demographic model's checks were.
    fairness, curves = report_inputs
    figs = make_figures(fairness=fairness, curves=curves)
    gate = {**fairness["gate"], "enforce": False, "enforce_demographics": True}
    page = render_html(
        fairness={**fairness, "gate": gate},
        metrics={"fairness": {"gate_passed": 1}},
        figures=figs,
        lineage={},
        params={},
    )
    banner = page.split("</p>", 2)[0]
    assert "differentials advisory (not enforced)" in banner
    assert "the demographic model's checks enforced" in banner
    assert "If a check is inconclusive" in page and "g4" in page.split("<b>Groups.</b>")[1]


def test_the_report_states_the_interval_level_the_gate_decided_at(report_inputs):
    """evaluate.ci_level sets every interval and the gate's verdicts; a page that said "95%"
    at 0.9 would tell a reviewer the gate was stricter than it was."""
    fairness, curves = report_inputs
    fairness = {**fairness, "ci_level": 0.9}
    page = render_html(
        fairness=fairness,
        metrics={},
        figures=make_figures(fairness=fairness, curves=curves),
        lineage={},
        params={},
    )
    assert "90% CI" in page and "90% identity-bootstrap interval" in page
    assert "95%" not in page


def test_the_demographic_bars_carry_their_intervals_and_the_gate_limit(monkeypatch):
    # 0.927 and 0.955 looked alike as bars from 0: the 95% intervals and the gate's limit say
    # whether the lowest group is clear of it.
    from matplotlib.axes import Axes

    from visage_ml.evaluation.figures import group_metric_figure

    drawn = {}
    real_errorbar, real_axhline = Axes.errorbar, Axes.axhline

    def errorbar(self, x, y, yerr=None, **kw):
        drawn["yerr"] = yerr
        return real_errorbar(self, x, y, yerr=yerr, **kw)

    def axhline(self, y=0, **kw):
        drawn.setdefault("lines", []).append((y, kw.get("label")))
        return real_axhline(self, y, **kw)

    monkeypatch.setattr(Axes, "errorbar", errorbar)
    monkeypatch.setattr(Axes, "axhline", axhline)
    summary = {"overall": 0.94, "by_group": {"g1": 0.955, "g4": 0.927}}
    intervals = {
        "g1": {"value": 0.955, "ci_low": 0.934, "ci_high": 0.972},
        "g4": {"value": 0.927, "ci_low": 0.891, "ci_high": 0.966},
    }
    png = group_metric_figure(
        summary, title="t", ylabel="accuracy", intervals=intervals, limit=0.85
    )
    assert png.startswith(PNG)
    assert np.allclose(drawn["yerr"], [[0.021, 0.036], [0.017, 0.039]])
    assert (0.85, "gate limit 0.85") in drawn["lines"]


def test_every_cross_fmr_map_has_one_colour_scale_and_a_zero_cell_says_so(
    report_inputs, monkeypatch
):
    # Each map had its own range: one colour meant 3.7e-4 on one map and 2.5e-6 on another.
    import visage_ml.evaluation.figures as figures

    fairness, curves = report_inputs
    group = fairness["breakdowns"]["group"]
    other = {**group, "cross_fmr": {**group["cross_fmr"], "value": [[0.0, 1e-6], [4e-4, 2e-5]]}}
    two = {**fairness, "breakdowns": {"group": group, "gender": other}}
    scales, real = [], figures.heatmap_figure
    monkeypatch.setattr(
        figures,
        "heatmap_figure",
        lambda m, labels, **kw: (
            scales.append((kw["floor"], kw["ceiling"])) or real(m, labels, **kw)
        ),
    )
    figures.make_figures(fairness=two, curves=curves)
    cells = [v for d in two["breakdowns"].values() for r in d["cross_fmr"]["value"] for v in r]
    seen = [float(v) for v in cells if v is not None and float(v) > 0]
    assert scales == [(min(seen) / 10, max(seen))] * 2


def _page(fairness, curves):
    return render_html(
        fairness=fairness,
        metrics={},
        figures=make_figures(fairness=fairness, curves=curves),
        lineage={},
        params={},
    )


def test_the_heat_map_values_can_be_read_as_a_table(report_inputs):
    # The cross-group FMR was a picture only: no value for a reviewer to quote, nothing for a
    # screen reader. Each cell now reads FMR [interval] (impostor pairs).
    fairness, curves = report_inputs
    cross = fairness["breakdowns"]["group"]["cross_fmr"]
    page = _page(fairness, curves)
    table = page.split("Cross-group FMR values")[1].split("</details>")[0]
    cells = re.findall(r"<td>([^<]*)</td>", table)
    assert cells[0] == "g1" and cells[3] == "g&lt;2&gt;"
    assert cells[1].startswith(fmt_rate(cross["value"][0][0]))
    assert cells[2].endswith(f"({cross['n_pairs'][0][1]})")
    assert f"[{fmt_rate(cross['ci_low'][1][0])}, {fmt_rate(cross['ci_high'][1][0])}]" in cells[4]


def test_the_open_set_table_speaks_words_not_keys(report_inputs):
    fairness, curves = report_inputs
    ident = {"fnir_at_fpir_1e-2": 0.2, "fpir_at_fpir_1e-2": 0.011, "threshold_at_fpir_1e-2": 0.9}
    page = _page({**fairness, "identification": {**fairness["identification"], **ident}}, curves)
    assert "fnir_at_fpir_1e-2" not in page.split("<h2>Lineage")[0]
    assert "<td>FNIR at FPIR 0.01</td>" in page
    assert "<td>FPIR reached (target 0.01)</td>" in page
    assert "<td>threshold for FPIR 0.01</td>" in page
    assert "<td>rank-1 hit rate (mated probes)</td>" in page


def test_the_detector_miss_rate_has_intervals_over_people(report_inputs):
    # "Point estimates, no interval": a group's miss rate of 0.1 on 20 people said nothing
    # about whether it differs from another's.
    fairness, curves = report_inputs
    detection = {
        "group": {
            "overall": 0.05,
            "by_group": {"g1": 0.0, "g<2>": 0.1},
            "n": {"g1": 100, "g<2>": 100},
            "difference": 0.1,
            "ratio": 0.0,
        }
    }
    sizes = {"n_images": 100, "n_identities": 10}
    groups = {
        "g1": {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, **sizes},
        "g<2>": {"value": 0.1, "ci_low": 0.02, "ci_high": 0.21, **sizes},
    }
    with_ci = {**fairness, "detection": detection, "ci_level": 0.95}
    page = _page({**with_ci, "detection_intervals": {"group": {"groups": groups}}}, curves)
    section = page.split("miss rate</h2>")[1]
    assert "intervals that resample people" in section
    assert "<td>0.1 [0.02, 0.21]</td><td>100</td><td>10</td>" in section
    bare = _page(with_ci, curves).split("miss rate</h2>")[1]
    assert "no interval" in bare and "[0.02" not in bare
    assert "second look" not in section
    looked = {"group": {"groups": groups, "second_look": {"g1": 0, "g<2>": 4}}}
    section = _page({**with_ci, "detection_intervals": looked}, curves).split("miss rate</h2>")[1]
    assert "<th>found on the second look</th>" in section
    assert "<td>0.1 [0.02, 0.21]</td><td>100</td><td>10</td><td>4</td>" in section
    assert "looked again in the mirror image" in section


def test_names_and_versions_read_left_aligned_and_numbers_right(report_inputs):
    # The lineage and parameter tables held paths and versions right-aligned like numbers.
    page = _page(*report_inputs)
    lineage = page.split("<h2>Lineage</h2>")[1]
    assert lineage.startswith('\n<table class="text">')
    assert '<h3>Parameters</h3>\n<table class="text">' in page
    assert ".text td,.text th{text-align:left" in page
    breakdown = page.split("<h3>By group</h3>")[1]
    assert breakdown.lstrip().startswith("<table><thead>")  # per-group figures: numbers
