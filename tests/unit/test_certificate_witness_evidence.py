"""What an erasure certificate's witnesses prove to a regulator: the completion date, only when a
pinned witness cosigned at that time; who runs a witness, never its name.

Both verifiers (``visage privacy verify-certificate --offline`` and docs/verify.md's verify.py)
and the controller's page must say the same."""

from __future__ import annotations

import json
import re
import shutil
import threading
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path

import pytest
from project_helpers import write_overrides
from regulator_helpers import (
    assert_witnessed_valid,
    cosign_times,
    later,
    offline_copy,
    pinned_cli_args,
    run_cli,
    run_verify_py,
    set_back,
    verifier_script,
)
from rights_fakes import make_project
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths
from visage_ml.io import file_lock
from visage_ml.privacy import ledger as ledger_mod
from visage_ml.privacy import witness as witness_mod
from visage_ml.privacy import witnessed as witnessed_mod
from visage_ml.privacy.certificate import (
    CONSISTENT_ONLY,
    EXIT_CONSISTENT_ONLY,
    EXIT_DATE_NOT_WITNESSED,
    checkout_witnesses,
)
from visage_ml.privacy.certificate_page import VERIFIED, controller_pins, page_path, render_page
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.requests import RequestBook
from visage_ml.privacy.witness import (
    LOCAL_WITNESS_PREFIX,
    Witness,
    default_witness_dir,
    make_server,
)
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.erasure import orchestrator as erasure_mod
from visage_ml.rights.sealing import doctor as run_doctor


def _text(html: str) -> str:
    """The page as a reader sees it (tags dropped, entities decoded, whitespace folded)."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _row(html: str, header: str) -> str:
    """The text of the page's table row whose header is ``header``."""
    return _text(re.search(rf"<tr><th>{header}</th>(.*?)</tr>", html, re.S).group(1))


def _day(stamp: int) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M")


@pytest.mark.parametrize("back", [timedelta(days=40), timedelta(hours=3)], ids=["40d", "3h"])
def test_a_completion_stamped_by_a_clock_set_back_fails_the_date_check(
    project, tmp_path, monkeypatch, back
):
    """Received 60 days ago; the ledger's clock set back when the erasure completed, so that it
    reads as on time. The witness (here the default folder under a name of another host's,
    standing in for one) cosigned at the real time: both verifiers must fail the completion
    date, not print VALID with a note, and their verdict must say the date is not witnessed
    and by when the erasure is proven done; the controller's page must not say "checks passed"
    of it nor take its dates as fact. Up to a day of set-back used to pass without a word."""
    witness = Witness.create(default_witness_dir(), name="witness.example.org/w1")
    real_now = ledger_mod.utc_now
    set_back(monkeypatch, timedelta(days=90))  # the subjects were added before the request
    proj = make_project(project, n_subjects=3)
    monkeypatch.setattr(ledger_mod, "utc_now", real_now)
    received = (datetime.now(UTC) - timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    set_back(monkeypatch, back)
    result = Erasure(proj.paths).erase(proj.pids[0], received_at=received)
    monkeypatch.setattr(ledger_mod, "utc_now", real_now)
    cert, pub = offline_copy(proj, result, tmp_path)
    doc = json.loads(cert.read_text())
    (stamp,) = cosign_times(doc)
    vkey = witness.verifier.vkey

    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    assert cli.exit_code == EXIT_DATE_NOT_WITNESSED, cli.output
    assert "certificate VALID" not in cli.output, cli.output
    failed = [line for line in cli.output.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and "completion date witnessed" in failed[0], cli.output
    # What the certificate does prove: done by the witness's time at the latest.
    assert _day(stamp) in failed[0], failed
    assert _day(stamp) in _verdict(cli.output), cli.output

    origin = doc["proof"]["log"]["origin"]
    py = run_verify_py(
        verifier_script(tmp_path),
        cert,
        *("--public-key", str(pub), "--witness-key", vkey, "--origin", origin),
    )
    assert py.returncode == EXIT_DATE_NOT_WITNESSED, py.stdout
    assert "certificate VALID" not in py.stdout, py.stdout
    failed = [line for line in py.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and "completion date witnessed" in failed[0], py.stdout
    assert _day(stamp) in failed[0], failed
    assert _day(stamp) in _verdict(py.stdout), py.stdout

    html = page_path(result.certificate_path).read_text()
    assert "Checks passed" not in html and "Completion date not witnessed" in html
    completed = _row(html, "erasure completed")
    assert doc["completed_at"] in completed and "not corroborated" in completed, completed
    assert _day(stamp) in completed, completed
    received_row = _row(html, "request received")
    assert "the controller's statement" in received_row, received_row


class _Killed(BaseException):
    """The process dies at this point (kill -9): nothing after it runs."""


def _killed_at(monkeypatch, step: str, where: str) -> None:
    def fault(s: str, w: str = "") -> None:
        if (s, w) == (step, where):
            raise _Killed

    monkeypatch.setattr(erasure_mod, "_fault", fault)


@pytest.mark.parametrize(
    "killed", [("certificate", "completed"), ("certificate", "")], ids=["completed", "written"]
)
def test_an_erasure_killed_after_its_witnessed_completion_and_resumed_hours_later_verifies(
    project, tmp_path, monkeypatch, killed
):
    """The process dies right after the witnesses cosigned `erasure.completed` (or after the
    certificate was written, before the request was closed); `visage privacy resume` runs 3
    hours later. The completion was witnessed at its time, so the resumed certificate must
    carry that checkpoint and verify VALID: it carried a checkpoint cosigned at the resume,
    and both verifiers failed the completion date of an honest controller's erasure."""
    witness = Witness.create(default_witness_dir(), name="witness.example.org/w1")
    proj = make_project(project, n_subjects=3)
    real_fault = erasure_mod._fault
    _killed_at(monkeypatch, *killed)
    with pytest.raises(_Killed):
        Erasure(proj.paths).erase(proj.pids[0])
    monkeypatch.setattr(erasure_mod, "_fault", real_fault)  # the next run lives
    later(monkeypatch, timedelta(hours=3))
    issued, cert, pub, doc = _resumed_copy(proj, tmp_path)
    vkey = witness.verifier.vkey

    assert_witnessed_valid(tmp_path, cert, pub, doc, vkey)
    html = page_path(issued).read_text()
    assert "NOT VERIFIED" not in html and "not corroborated" not in html


def _resumed_copy(proj, tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    """`visage privacy resume` run now: the one certificate it issued, a copy of it and of the
    ledger's public key, and the certificate's document."""
    res = CliRunner().invoke(app, ["privacy", "resume", "--json"])
    assert res.exit_code == 0, res.output
    (done,) = json.loads(res.output[res.output.index("[") :])
    cert = tmp_path / "cert.json"
    shutil.copy(done["certificate"], cert)
    pub = tmp_path / "ledger.pub"
    shutil.copy(proj.paths.ledger_public_key, pub)
    return Path(done["certificate"]), cert, pub, json.loads(cert.read_text())


def test_kept_checkpoints_go_once_their_certificate_is_issued_and_old_ones_still_verify(
    project, tmp_path, monkeypatch
):
    """privacy/checkpoints/kept held the checkpoint of every erasure's completion for good: a
    file more with each erasure. A certificate carries its checkpoint verbatim, so it is needed
    only until the certificate is issued: an erasure killed before then keeps it (resumed 3
    hours later it still verifies VALID, its completion date witnessed), a finished one leaves
    nothing, and a certificate issued earlier still verifies VALID once its copy is gone."""
    witness = Witness.create(default_witness_dir(), name="witness.example.org/w1")
    vkey = witness.verifier.vkey
    proj = make_project(project, n_subjects=4)
    kept = proj.paths.checkpoints / "kept"

    def held() -> list[str]:
        return sorted(p.name for p in kept.iterdir()) if kept.is_dir() else []

    first = Erasure(proj.paths).erase(proj.pids[0])
    assert held() == []
    real_fault = erasure_mod._fault
    _killed_at(monkeypatch, "certificate", "completed")
    with pytest.raises(_Killed):
        Erasure(proj.paths).erase(proj.pids[1])
    monkeypatch.setattr(erasure_mod, "_fault", real_fault)  # the next runs live
    (interrupted,) = held()
    Erasure(proj.paths).erase(proj.pids[2])
    assert held() == [interrupted]  # its certificate is still to be issued

    later(monkeypatch, timedelta(hours=3))
    _, cert, pub, doc = _resumed_copy(proj, tmp_path)
    assert doc["ledger"]["erasure_completed"]["seq"] == int(interrupted)
    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    assert cli.exit_code == 0 and "certificate VALID" in cli.output, cli.output
    assert re.search(r"^ok\s+completion date witnessed", cli.output, re.M), cli.output
    assert held() == []

    (tmp_path / "old").mkdir()
    old, pub = offline_copy(proj, first, tmp_path / "old")
    cli = run_cli(old, *pinned_cli_args(json.loads(old.read_text()), pub, vkey))
    assert cli.exit_code == 0 and "certificate VALID" in cli.output, cli.output
    assert re.search(r"^ok\s+completion date witnessed", cli.output, re.M), cli.output
    assert verify_certificate(first.certificate_path, root=proj.paths.root).ok


def test_doctor_names_and_purges_a_kept_checkpoint_whose_certificate_was_issued(
    project, monkeypatch
):
    """An erasure killed once its request was closed, before its kept checkpoint went: nothing
    reads that file again (the certificate carries the checkpoint), and no later erasure need
    come. `visage privacy doctor` names it (exit 1) and `--purge` removes it; the certificate
    still verifies VALID."""
    Witness.create(default_witness_dir(), name="witness.example.org/w1")
    proj = make_project(project, n_subjects=3)

    real = witnessed_mod.Witnessing.prune_kept

    def killed(self, *, needed):
        raise _Killed

    monkeypatch.setattr(witnessed_mod.Witnessing, "prune_kept", killed)
    with pytest.raises(_Killed):
        Erasure(proj.paths).erase(proj.pids[0])
    monkeypatch.setattr(witnessed_mod.Witnessing, "prune_kept", real)  # the next runs live
    (issued,) = proj.paths.certificates.glob("*.json")
    (left,) = (proj.paths.checkpoints / "kept").iterdir()
    runner = CliRunner()
    res = runner.invoke(app, ["privacy", "doctor", "--json"])
    assert res.exit_code == 1, res.output
    report = json.loads(res.output[res.output.index("{") :])
    found = [f for f in report["findings"] if f["kind"] == "kept_checkpoint"]
    assert [(f["path"], f["action"]) for f in found] == [
        (f"privacy/checkpoints/kept/{left.name}", "purge")
    ], report
    with file_lock(proj.paths.root / erasure_mod.LOCK):  # an erasure running meanwhile
        res = runner.invoke(app, ["privacy", "doctor", "--purge"])
    assert res.exit_code == 1 and left.exists(), res.output
    said = " ".join(res.output.split())
    assert "privacy/checkpoints/kept: 1 kept checkpoint(s) left in place" in said, said
    assert "an erasure is running" in said, said
    res = runner.invoke(app, ["privacy", "doctor", "--purge"])
    assert not left.exists(), res.output
    res = runner.invoke(app, ["privacy", "doctor", "--json"])
    report = json.loads(res.output[res.output.index("{") :])
    assert not [f for f in report["findings"] if f["kind"] == "kept_checkpoint"], report
    assert verify_certificate(issued, root=proj.paths.root).ok


@pytest.mark.timeout(120)
def test_a_doctor_purge_during_an_erasure_leaves_its_kept_checkpoint(project, monkeypatch):
    """A `visage privacy doctor --purge` that looked at the open requests just before an
    erasure recorded its completion, and at privacy/checkpoints/kept once its witnesses had
    cosigned it: it took the running erasure's kept checkpoint for one whose certificate was
    issued, and deleted it before the certificate could carry it. It leaves it (the erasure
    holds its lock), says so, and a later run finds nothing to purge."""
    Witness.create(default_witness_dir(), name="witness.example.org/w1")
    proj = make_project(project, n_subjects=3)
    kept = proj.paths.checkpoints / "kept"
    decided, go, reports = threading.Event(), threading.Event(), []
    real_needed = RequestBook.uncertified_completions

    def needed(self):
        out = real_needed(self)
        if threading.current_thread() is doctor_run and not decided.is_set():
            decided.set()
            go.wait(timeout=60)  # the erasure records its completion meanwhile
        return out

    monkeypatch.setattr(RequestBook, "uncertified_completions", needed)
    doctor_run = threading.Thread(target=lambda: reports.append(run_doctor(proj.paths, purge=True)))
    doctor_run.start()
    assert decided.wait(timeout=60)
    real_fault, held = erasure_mod._fault, []

    def fault(step: str, where: str = "") -> None:
        if (step, where) == ("certificate", "completed") and not held:
            # Witnessed and kept, the certificate not yet written: the doctor goes on.
            held.extend((p.name, p.read_bytes()) for p in sorted(kept.iterdir()))
            go.set()
            doctor_run.join(timeout=60)
        real_fault(step, where)

    monkeypatch.setattr(erasure_mod, "_fault", fault)
    result = Erasure(proj.paths).erase(proj.pids[0])
    (report,) = reports
    ((seq, cosigned),) = held
    rel = f"privacy/checkpoints/kept/{seq}"
    assert report.locked == {"privacy/checkpoints/kept": [rel]}
    doc = json.loads(result.certificate_path.read_text())
    assert doc["ledger"]["erasure_completed"]["seq"] == int(seq)
    # The certificate carries the checkpoint its completion was cosigned under, verbatim (not
    # one cosigned later, which dates the completion later than it was).
    assert cosigned.decode() in doc["proof"]["tlog_proof"]
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    assert list(kept.iterdir()) == []  # the erasure's own prune, once issued
    assert not [f for f in run_doctor(proj.paths).findings if f.kind == "kept_checkpoint"]


def test_a_certificate_rendered_again_or_resumed_days_later_keeps_its_witnessed_date(
    project, tmp_path, monkeypatch
):
    """Nothing re-makes a certificate once its request is closed: `visage privacy resume` finds
    nothing to do and `certificate-page` renders the same file two days later. Its checkpoint,
    cosigned at the completion, still dates it: VALID, and the page still says checks passed."""
    witness = Witness.create(default_witness_dir(), name="witness.example.org/w1")
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    issued = result.certificate_path.read_bytes()
    later(monkeypatch, timedelta(days=2))
    runner = CliRunner()
    res = runner.invoke(app, ["privacy", "resume", "--json"])
    assert res.exit_code == 0 and json.loads(res.output[res.output.index("[") :]) == []
    res = runner.invoke(app, ["privacy", "certificate-page", str(result.certificate_path)])
    assert res.exit_code == 0 and "checks passed" in res.output, res.output
    assert result.certificate_path.read_bytes() == issued
    cert, pub = offline_copy(proj, result, tmp_path)
    cli = run_cli(cert, *pinned_cli_args(json.loads(issued), pub, witness.verifier.vkey))
    assert cli.exit_code == 0 and "certificate VALID" in cli.output, cli.output


def test_an_erasure_whose_witness_was_down_at_its_completion_is_proven_done_when_it_cosigned(
    project, tmp_path, monkeypatch
):
    """The witness does not answer when the erasure completes (the entry is on the ledger; the
    command says the certificate waits); it is back 3 hours later and `visage privacy resume`
    issues the certificate. No witness saw the completion at its time, so its date is not
    proven; but nothing in the certificate is false: both verifiers must say exactly what it
    proves (the erasure done by the witness's cosignature, the date it states the controller's
    clock) under a verdict and exit code of their own. They said `certificate INVALID`, the
    verdict of a forgery, of an honest controller's certificate, and so did its page."""
    witness = Witness.create(default_witness_dir(), name="witness.example.org/w1")
    proj = make_project(project, n_subjects=3)
    real = witnessed_mod.Witnessing.after_append

    def down_at_completion(self, entries):
        if any(e.type == "erasure.completed" for e in entries):
            raise witnessed_mod.WitnessUnavailableError("witness down (test)")
        return real(self, entries)

    monkeypatch.setattr(witnessed_mod.Witnessing, "after_append", down_at_completion)
    with pytest.raises(witnessed_mod.WitnessUnavailableError) as down:
        Erasure(proj.paths).erase(proj.pids[0])
    # The operator learns at once that the date is proven only once the witnesses cosign.
    said = " ".join(" ".join(down.value.__notes__).split())
    assert "proven done only by the time" in said, said
    monkeypatch.setattr(witnessed_mod.Witnessing, "after_append", real)
    later(monkeypatch, timedelta(hours=3))
    issued, cert, pub, doc = _resumed_copy(proj, tmp_path)
    (stamp,) = cosign_times(doc)
    vkey = witness.verifier.vkey

    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    py = run_verify_py(
        verifier_script(tmp_path),
        cert,
        *("--public-key", str(pub), "--witness-key", vkey),
        *("--origin", doc["proof"]["log"]["origin"]),
    )
    for code, out in ((cli.exit_code, cli.output), (py.returncode, py.stdout)):
        assert code == EXIT_DATE_NOT_WITNESSED, out
        assert "INVALID" not in out and "certificate VALID" not in out, out
        failed = [line for line in out.splitlines() if line.startswith("FAIL")]
        assert len(failed) == 1 and "completion date witnessed" in failed[0], out
        verdict = _verdict(out)
        assert verdict.startswith("certificate COMPLETION DATE NOT WITNESSED"), verdict
        # What is proven, and what is not: the witness's time, the date stated.
        assert _day(stamp) in verdict and doc["completed_at"] in verdict, verdict

    html = page_path(issued).read_text()
    assert "NOT VERIFIED" not in html and "Checks passed" not in html
    assert "Completion date not witnessed" in html
    assert "so they are not proven" not in html  # the counts are signed and committed
    completed = _row(html, "erasure completed")
    assert "not corroborated" in completed and _day(stamp) in completed, completed


def _verdict(out: str) -> str:
    """The verifier's verdict: its last line that starts with "certificate ", up to the
    `conceded:` lines (a wrapped line joined)."""
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("certificate "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("conceded:")), None)
    return " ".join(" ".join(lines[start:end]).split())


def _http_witness(project, remote: Witness):
    """params.yaml with one witness, ``remote``, served over HTTP as from another host."""
    server = make_server(remote, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    write_overrides(
        project / "params.yaml",
        {
            "privacy.witness.witnesses": [
                {"kind": "http", "url": url, "key": remote.verifier.vkey}
            ],
            "privacy.witness.quorum": 0,
            "privacy.witness.timeout_seconds": 2.0,
        },
    )
    remote.add_log(PrivacyCore(ProjectPaths(project)).witnessing.log_verifier().vkey)
    return server


def test_a_witness_on_another_host_dates_the_completion_whatever_its_name(project, tmp_path):
    """An HTTP witness made without --name bears the name visage-ml gives the default directory
    witness: the controller's page must mark it by its configured kind (http), not call it
    the controller's folder, and print the time it cosigned beside the controller's dates."""
    remote = Witness.create(tmp_path / "remote-host")  # no --name: visage-witness.local/...
    assert remote.name.startswith(LOCAL_WITNESS_PREFIX)
    server = _http_witness(project, remote)
    try:
        proj = make_project(project, n_subjects=3)
        result = Erasure(proj.paths).erase(proj.pids[0])
    finally:
        server.shutdown()
    cert, pub = offline_copy(proj, result, tmp_path)
    doc = json.loads(cert.read_text())
    (stamp,) = cosign_times(doc)
    vkey = remote.verifier.vkey

    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    assert cli.exit_code == 0, cli.output
    assert re.search(
        r"^ok\s+completion date witnessed: .*" + re.escape(remote.name), cli.output, re.M
    )
    origin = doc["proof"]["log"]["origin"]
    py = run_verify_py(
        verifier_script(tmp_path),
        cert,
        *("--public-key", str(pub), "--witness-key", vkey, "--origin", origin),
    )
    assert py.returncode == 0, py.stdout
    assert re.search(r"^ok\s+completion date witnessed", py.stdout, re.M), py.stdout

    html = page_path(result.certificate_path).read_text()
    assert "Checks passed" in html
    assert "kept by the controller itself" not in html and "this host's clock" not in _text(html)
    completed = _row(html, "erasure completed")
    assert f"witnessed by {remote.name} at {_day(stamp)}" in completed, completed
    assert "the controller's statement" in _row(html, "request received")


def test_without_a_pinned_witness_the_completion_date_is_the_controllers_statement(
    project, tmp_path
):
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert, pub = offline_copy(proj, result, tmp_path)
    cli = run_cli(cert, "--public-key", str(pub))
    assert cli.exit_code == EXIT_CONSISTENT_ONLY, cli.output  # no witness pinned
    assert "completion date witnessed" not in cli.output
    assert "the completion date is the controller's statement" in cli.output, cli.output
    py = run_verify_py(verifier_script(tmp_path), cert, "--public-key", str(pub))
    assert py.returncode == EXIT_CONSISTENT_ONLY, py.stdout
    assert "completion date witnessed" not in py.stdout, py.stdout
    assert "the completion date is the controller's statement" in py.stdout, py.stdout
    # The controller's page: its only witness is a folder on its disk, stamped by its clock.
    html = page_path(result.certificate_path).read_text()
    assert "the controller's clock" in _row(html, "erasure completed")


def test_the_controllers_own_witness_is_flagged_whatever_name_it_was_given(project, tmp_path):
    """`visage witness init --name witness.dpa-audit.eu/w1` on the default folder: the witness
    is still a folder on the controller's disk. The verifiers cannot know (they say a name
    proves nothing); the controller's page knows its configuration and must say so."""
    witness = Witness.create(default_witness_dir(), name="witness.dpa-audit.eu/w1")
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert, pub = offline_copy(proj, result, tmp_path)
    doc = json.loads(cert.read_text())
    vkey = witness.verifier.vkey

    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    assert cli.exit_code == 0, cli.output
    notes = [line for line in cli.output.splitlines() if line.startswith("note")]
    assert any(witness.name in n and "proves nothing" in n and "who runs" in n for n in notes), (
        notes
    )
    origin = doc["proof"]["log"]["origin"]
    py = run_verify_py(
        verifier_script(tmp_path),
        cert,
        *("--public-key", str(pub), "--witness-key", vkey, "--origin", origin),
    )
    assert py.returncode == 0, py.stdout
    notes = [line for line in py.stdout.splitlines() if line.startswith("note")]
    assert any(witness.name in n and "proves nothing" in n and "who runs" in n for n in notes), (
        notes
    )

    page = page_path(result.certificate_path).read_text()
    assert "kept by the controller itself" in page
    assert "a directory witness the controller keeps itself" in page
    assert "this host's clock" in _text(page)
    # The in-checkout render says the same as the page the erasure wrote.
    again = render_page(
        result.certificate_path,
        pins=controller_pins(PrivacyCore(proj.paths), result.certificate_path),
    )
    assert again.html == page and again.verdict == VERIFIED


def test_a_witness_replaced_since_still_authenticates_its_certificates_in_the_checkout(
    project, tmp_path
):
    """The controller moves to another witness, on the record: the certificates the old one
    cosigned are still the checkout's own (VALID, its directory witness marked as such), not
    "consistent only" as if they were anyone's."""
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    old = Witness(default_witness_dir()).verifier
    new = Witness.create(tmp_path / "w2", name="witness.other.org/w2")
    both = [{"kind": "directory", "path": "default"}, {"kind": "directory", "path": str(new.root)}]
    write_overrides(proj.paths.params, {"privacy.witness.witnesses": both})
    runner = CliRunner()
    out = runner.invoke(app, ["privacy", "checkpoint"])  # the new witness goes on the record
    assert out.exit_code == 0, out.output
    write_overrides(proj.paths.params, {"privacy.witness.witnesses": both[1:]})
    out = runner.invoke(app, ["privacy", "remove-witness", old.name, "--reason", "decommissioned"])
    assert out.exit_code == 0, out.output

    cert = str(result.certificate_path)
    out = runner.invoke(app, ["privacy", "verify-certificate", cert])
    assert out.exit_code == 0 and "certificate VALID" in out.output, out.output
    assert "none of the witnesses" not in out.output and CONSISTENT_ONLY not in out.output
    report = verify_certificate(cert, root=proj.paths.root)
    assert [(c["name"], c["local"]) for c in report.cosignatures] == [(old.name, True)]
    assert any(old.name in n and "directory witness of this project" in n for n in report.notes)
    # The page the controller renders again (as `lineage --refresh` does) says the same.
    out = runner.invoke(app, ["privacy", "certificate-page", cert])
    assert out.exit_code == 0 and "checks passed" in out.output, out.output
    assert "kept by the controller itself" in page_path(result.certificate_path).read_text()
    pins = controller_pins(PrivacyCore(proj.paths), cert)
    assert pins.witness_keys == (old.vkey,) and old.vkey in pins.directory


def test_a_witness_set_line_written_in_without_the_ledger_key_names_no_witness_of_the_checkout(
    project, tmp_path
):
    """Someone with the ledger file but not its key writes in a witness.set naming a witness of
    theirs: the checkout does not take it as one of its own."""
    proj = make_project(project, n_subjects=3)
    Erasure(proj.paths).erase(proj.pids[0])
    old = Witness(default_witness_dir()).verifier.vkey
    assert checkout_witnesses(proj.paths).vkeys == (old,)
    stranger = Witness.create(tmp_path / "stranger", name="witness.example.org/w1").verifier.vkey
    lines = proj.paths.ledger.read_bytes().splitlines()
    recorded = json.loads(next(line for line in lines if b'"witness.set"' in line))
    recorded["seq"] = json.loads(lines[-1])["seq"] + 1
    recorded["payload"]["witnesses"] = [
        {"kind": "http", "url": "https://witness.example.org", "vkey": stranger},
        {"kind": "http", "url": "https://witness.example.org/old", "vkey": old},
    ]
    with proj.paths.ledger.open("ab") as fh:
        fh.write(json.dumps(recorded, separators=(",", ":")).encode() + b"\n")
    own = checkout_witnesses(proj.paths)
    assert own.vkeys == (old,) and own.directory == (old,)


def test_a_witness_unread_when_a_killed_erasure_is_resumed_keeps_its_cosignature(
    project, tmp_path, monkeypatch
):
    """Two witnesses, both needed. The process dies once both cosigned `erasure.completed`;
    at the resume one witness's folder cannot be read for a moment (the checkpoint's pending
    mark keeps what the other holds, and waits for it), and it is back when the resume asks it
    to cosign a newer tree. Its copy of the completion's checkpoint must be gathered before
    that cosignature replaces it: it was not, the mark was dropped, and the certificate of a
    completion both witnesses cosigned read COMPLETION DATE NOT WITNESSED."""
    default = Witness.create(default_witness_dir(), name="witness.example.org/w1")
    second = Witness.create(tmp_path / "w2", name="witness.example.org/w2")
    write_overrides(
        project / "params.yaml",
        {
            "privacy.witness.witnesses": [
                {"kind": "directory", "path": "default"},
                {"kind": "directory", "path": str(tmp_path / "w2")},
            ],
            "privacy.witness.quorum": 0,
        },
    )
    proj = make_project(project, n_subjects=3)

    def killed_once_cosigned(point: str) -> None:
        if point == "witness:kept:cosigned":
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(witnessed_mod, "crash_point", killed_once_cosigned)
        with pytest.raises(_Killed):
            Erasure(proj.paths).erase(proj.pids[0])
    assert list((proj.paths.checkpoints / "kept").glob("*.pending"))
    later(monkeypatch, timedelta(hours=3))
    real_latest = witness_mod.DirectoryWitness.latest
    real_record = witnessed_mod.Witnessing._record_witness_set
    back = {"w2": False}

    def flaky(self, origin):
        if self.root == tmp_path / "w2" and not back["w2"]:
            raise OSError(5, "Input/output error")
        return real_latest(self, origin)

    def record(self):  # w2 is back once the resume's checkpoint settled the marks without it
        back["w2"] = True
        return real_record(self)

    monkeypatch.setattr(witness_mod.DirectoryWitness, "latest", flaky)
    monkeypatch.setattr(witnessed_mod.Witnessing, "_record_witness_set", record)
    _issued, cert, pub, doc = _resumed_copy(proj, tmp_path)
    assert back["w2"], "no newer tree was cosigned"

    for w in (default, second):
        assert_witnessed_valid(tmp_path, cert, pub, doc, w.verifier.vkey)
