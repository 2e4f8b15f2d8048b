"""An erasure stopped for a reason the operator can mend (its content scan did not finish; a
session of the shared gallery's database holds the table's old copy; a store out of reach): the
CLI says what to do, and the HTTP API answers 503 with a code of its own, the request left open
with its failure recorded under that code."""

from __future__ import annotations

import pytest
from notify_fakes import free_port
from project_helpers import write_overrides
from rights_fakes import http_caller, make_project
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.data.rawstore import read_images
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.requests import RequestBook
from visage_ml.rights.content_scan import ScanIncompleteError
from visage_ml.rights.erasure import Erasure
from visage_ml.serving.pg_swap import MSG_OLD_HELD, OldTableHeldError

STOPS = {
    "scan_incomplete": ScanIncompleteError("the content scan stopped: a read hung (end it)"),
    "gallery_table_held": OldTableHeldError(
        MSG_OLD_HELD.format(
            table="gallery", old="gallery$purge_old", seconds=14, holders="backend pid 4242"
        )
    ),
}


def _stopped(monkeypatch, error: Exception) -> None:
    """The erasure's first step (the request started) stops with ``error``."""

    def stops(self, st, artefacts):
        raise error

    monkeypatch.setattr(Erasure, "_lineage", stops)


@pytest.mark.parametrize("code", sorted(STOPS))
def test_the_cli_says_what_to_do_and_which_request_stays_open(project, monkeypatch, code):
    # Before: a traceback, the message on its last line.
    proj = make_project(project, n_subjects=1, enrol=False)
    monkeypatch.setenv("VISAGE_PROJECT", str(project))
    _stopped(monkeypatch, STOPS[code])

    r = CliRunner().invoke(app, ["privacy", "erase", proj.pids[0]])

    assert r.exit_code == 2, r.output
    said = " ".join(r.output.split())
    assert "Traceback" not in r.output and said.startswith("error:")
    assert " ".join(str(STOPS[code]).split()) in said
    # The request it stopped, to run again, and what stopped it, on the request.
    [st] = RequestBook(PrivacyCore(proj.paths)).all(pid=proj.pids[0])
    assert f"--request {st.request_id}" in said
    assert (st.failure["step"], st.failure["code"]) == ("lineage", code)


@pytest.mark.parametrize("code", sorted(STOPS))
def test_the_http_api_answers_503_with_its_code_the_request_open(project, monkeypatch, code):
    # Before, for a held table: 500 internal_error, which says neither what nor what to do.
    proj = make_project(project, n_subjects=1, enrol=False)
    pid = proj.pids[0]
    _stopped(monkeypatch, STOPS[code])

    call = http_caller(proj)
    r = call("POST", f"/v1/subjects/{pid}/erasure", "dpo")

    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == code and str(STOPS[code]) in error["message"]
    [st] = RequestBook(proj.core).all(pid=pid)
    assert st.status == "in_progress"
    # Before, nothing on the request said what stopped it (an export's failure is recorded).
    shown = call("GET", f"/v1/requests/{st.request_id}", "dpo").json()
    assert (shown["failure"]["step"], shown["failure"]["code"]) == ("lineage", code), shown
    assert f"request_id={st.request_id}" in shown["failure_hint"]


def test_an_erasure_its_preflight_stops_is_answered_503_and_sent_again_once_the_stack_is_up(
    project,
):
    # Before: 500 internal_error. The preflight's refusal (a service the erasure needs is down,
    # a DVC remote cannot be opened, a store the project wrote to cannot be reached: nothing
    # erased) had no answer of its own, though its message says what to do.
    proj = make_project(project, n_subjects=1, enrol=False)
    pid = proj.pids[0]
    params = proj.paths.params
    stack_on = {"stack.tracking": "server", "stack.mlflow.port": free_port()}
    write_overrides(params, stack_on)  # `visage stack up` set it; the stack is down now
    call = http_caller(proj)

    r = call("POST", f"/v1/subjects/{pid}/erasure", "dpo")

    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "stores_unreachable"
    assert "visage stack up" in error["message"] and "nothing was erased" in error["message"]
    [st] = RequestBook(proj.core).all(pid=pid)
    assert st.is_open and st.status == "verified"  # recorded, not started
    assert not PrivacyCore(proj.paths).registry.get(pid).erased
    # What stopped it is on the request, under the same code, with what to do (before: no
    # failure recorded, though the stops after its start are).
    shown = call("GET", f"/v1/requests/{st.request_id}", "dpo").json()
    assert shown["status"] == "verified"
    assert (shown["failure"]["step"], shown["failure"]["code"]) == (
        "preflight",
        "stores_unreachable",
    ), shown
    assert "visage stack up" in shown["failure_hint"], shown["failure_hint"]
    # Documented on the erasure route alone, with what to do.
    paths = call.app.openapi()["paths"]
    erasure = paths["/v1/subjects/{pid}/erasure"]["post"]["responses"]["503"]["description"]
    assert "`stores_unreachable`: " in erasure and "send the erasure again" in erasure, erasure
    elsewhere = [
        (path, method)
        for path, ops in paths.items()
        for method, op in ops.items()
        if path != "/v1/subjects/{pid}/erasure"
        and "stores_unreachable" in op["responses"].get("503", {}).get("description", "")
    ]
    assert elsewhere == []

    # The stack answers again (here: the project tracks in sqlite): the same request finishes.
    write_overrides(params, {"stack.tracking": "sqlite"})
    r = http_caller(proj)("POST", f"/v1/subjects/{pid}/erasure", "dpo")
    assert r.status_code == 200, r.text
    assert r.json()["request_id"] == st.request_id
    assert PrivacyCore(proj.paths).registry.get(pid).erased
    done = call("GET", f"/v1/requests/{st.request_id}", "dpo").json()
    assert done["status"] == "completed" and done["failure_hint"] is None


def test_an_erasure_whose_raw_data_is_not_checked_out_is_answered_503_and_erases_nothing(
    project,
):
    # images.parquet not checked out (`dvc checkout` cut short), subjects.parquet there: the
    # erasure read the subject's images as none, so its tombstone held no photograph of theirs
    # to seek copies by, and its raw step wrote images.parquet again without anyone's rows; it
    # answered 200 with a certificate. Refused now before anything is erased: 503
    # raw_data_missing, the request verified with that failure, sent again once checked out.
    proj = make_project(project, n_subjects=3, enrol=False)
    pid = proj.pids[0]
    table = proj.paths.raw / "images.parquet"
    kept = table.read_bytes()
    table.unlink()
    call = http_caller(proj)

    r = call("POST", f"/v1/subjects/{pid}/erasure", "dpo")

    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "raw_data_missing" and "dvc checkout data/raw" in error["message"]
    [st] = RequestBook(proj.core).all(pid=pid)
    assert st.status == "verified"
    assert not PrivacyCore(proj.paths).registry.get(pid).erased
    assert len(list((proj.paths.raw / pid).iterdir())) == 3 and not table.exists()
    shown = call("GET", f"/v1/requests/{st.request_id}", "dpo").json()
    assert (shown["failure"]["step"], shown["failure"]["code"]) == (
        "preflight",
        "raw_data_missing",
    ), shown
    assert "dvc checkout data/raw" in shown["failure_hint"], shown["failure_hint"]
    paths = call.app.openapi()["paths"]
    erasure = paths["/v1/subjects/{pid}/erasure"]["post"]["responses"]["503"]["description"]
    assert "`raw_data_missing`" in erasure, erasure

    table.write_bytes(kept)  # `dvc checkout data/raw`: the same request finishes
    r = call("POST", f"/v1/subjects/{pid}/erasure", "dpo")
    assert r.status_code == 200, r.text
    assert r.json()["request_id"] == st.request_id
    left = read_images(proj.paths.raw)
    assert set(left["pid"]) == set(proj.pids[1:]) and len(left) == 6
