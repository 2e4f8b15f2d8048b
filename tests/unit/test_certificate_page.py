"""The readable page of an erasure certificate: what a DPO files and hands to the subject."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from html import unescape

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rights_fakes import erase_first, make_project, retrain, write_training_lock
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.io import md5_file
from visage_ml.privacy.certificate import render, sign
from visage_ml.privacy.certificate_page import (
    CONSISTENT,
    NOT_VERIFIED,
    VERIFIED,
    Pins,
    controller_pins,
    page_path,
    render_page,
)
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.witness import Witness, default_witness_dir
from visage_ml.rights.erasure import Erasure


@pytest.fixture
def erased(project):
    return erase_first(project)


def _resigned(proj, result, tmp_path, change) -> tuple:
    """The certificate edited by ``change`` and signed again with the controller's own key:
    what a controller (or anyone holding its key) could hand over; the ledger is unchanged."""
    doc = json.loads(result.certificate_path.read_text())
    change(doc)
    forged = tmp_path / "forged.json"
    forged.write_text(render(sign(doc, proj.paths)))
    return forged, doc


def _controller_page(proj, cert):
    return render_page(cert, pins=controller_pins(PrivacyCore(proj.paths), cert))


def _totals(html: str) -> dict[str, int]:
    """The "all stores" row of the page's table, by outcome column."""
    header = re.search(r"<tr><th>store</th>(.*?)<th>total</th></tr>", html).group(1)
    outcomes = re.findall(r"<th>(.*?)</th>", header)
    row = re.search(r"<tr><th>all stores</th>(.*?)</tr>", html).group(1)
    numbers = [int(n) for n in re.findall(r">(\d+)</th>", row)]
    return dict(zip([*outcomes, "total"], numbers, strict=True))


# ---------------------------------------------------------------------------------------------
# Attacks first
# ---------------------------------------------------------------------------------------------


def test_a_certificate_edited_to_claim_more_than_the_ledger_says_renders_not_verified(
    erased, tmp_path
):
    # The attack: more artefacts, "key destroyed" for everything, re-signed with the real key;
    # the signed erasure.completed entry in the ledger still commits to the original claims.
    proj, _, _, result = erased

    def claim_more(doc):
        arts = doc["claims"]["artefacts"]
        for a in arts:
            a["outcome"] = "key destroyed"
        arts.append({"store": "mlflow", "path": "mlruns/x", "sha256": "0" * 64, "outcome": "x"})

    forged, doc = _resigned(proj, result, tmp_path, claim_more)
    page = _controller_page(proj, forged)
    assert page.verdict == NOT_VERIFIED and not page.verified
    failed = {c.name for c in page.report.checks if not c.ok}
    assert failed == {"claims committed in the ledger"}
    assert "NOT VERIFIED" in page.html and "Checks passed</strong>" not in page.html
    assert "not proven" in page.html
    # It shows what the file states, next to the failure, never as proven.
    assert _totals(page.html)["total"] == len(doc["claims"]["artefacts"])
    assert re.search(r"claims committed in the ledger</td><td class=\"fail\">FAILED", page.html)


def test_a_changed_byte_or_another_controllers_key_renders_not_verified(erased, tmp_path):
    proj, _, _, result = erased
    data = bytearray(result.certificate_path.read_bytes())
    data[data.index(b'"completed_at": "') + 20] ^= 1
    changed = tmp_path / "changed.json"
    changed.write_bytes(bytes(data))
    assert _controller_page(proj, changed).verdict == NOT_VERIFIED
    other = tmp_path / "other.pub"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    page = render_page(result.certificate_path, pins=Pins(public_key=other))
    assert page.verdict == NOT_VERIFIED and "signature" in {
        c.name for c in page.report.checks if not c.ok
    }
    assert "Signature: <strong>INVALID</strong>" in page.html


def test_hostile_strings_in_a_certificate_are_escaped_and_never_offered_to_a_shell(
    erased, tmp_path
):
    proj, _, _, result = erased

    def hostile(doc):
        doc["request_id"] = "<script>alert(1)</script>"
        doc["pid"] = "$(touch /tmp/pwned)"
        doc["controller"]["name"] = '<img src=x onerror="alert(2)">'
        doc["claims"]["artefacts"][0]["store"] = '"><b>store</b>'
        doc["claims"]["store_notes"] = ["<iframe src=//evil>"]
        doc["claims"]["models"] = [{"model": "<svg onload=alert(3)>", "status": "stale"}]

    forged, _ = _resigned(proj, result, tmp_path, hostile)
    page = _controller_page(proj, forged)
    assert page.verdict == NOT_VERIFIED
    for raw in ("<script>", "<img src=x", "<b>store</b>", "<iframe", "<svg"):
        assert raw not in page.html, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
    assert "&lt;iframe src=//evil&gt;" in page.html
    command = re.search(r"<pre>(.*?)</pre>", page.html, re.S).group(1)
    assert "pwned" not in command and "alert" not in command
    assert "--subject &lt;pid&gt;" in command and "--request-id &lt;request id&gt;" in command


def test_the_page_names_the_pid_and_never_an_artefact_path_or_a_photographs_hash(erased, tmp_path):
    proj, victim, removed, result = erased
    html = page_path(result.certificate_path).read_text()
    doc = json.loads(result.certificate_path.read_text())
    assert victim in html
    for a in doc["claims"]["artefacts"]:
        assert a["path"] not in html
        assert not a.get("sha256") or a["sha256"] not in html
        assert not a.get("md5") or a["md5"] not in html
    # The erased photographs: neither their hash nor the bytes' base64 is anywhere in the page.
    for png in removed.values():
        assert hashlib.sha256(png).hexdigest() not in html

    # A certificate naming a person's folder (an older import, a hostile file) shows counts only.
    def named(doc):
        doc["claims"]["artefacts"].append(
            {
                "store": "data",
                "path": "data/raw/Jane_Doe/holiday.png",
                "sha256": hashlib.sha256(b"jane").hexdigest(),
                "outcome": "physically removed",
            }
        )

    forged, _ = _resigned(proj, result, tmp_path, named)
    page = _controller_page(proj, forged)
    assert "Jane_Doe" not in page.html and "holiday" not in page.html
    assert hashlib.sha256(b"jane").hexdigest() not in page.html


# ---------------------------------------------------------------------------------------------
# What a DPO reads
# ---------------------------------------------------------------------------------------------


def test_the_erasure_writes_a_verified_page_whose_counts_are_the_jsons(erased):
    proj, victim, _, result = erased
    path = page_path(result.certificate_path)
    assert path.name == f"{result.request_id}.html"
    html = path.read_text()
    doc = json.loads(result.certificate_path.read_text())
    by_outcome = Counter(a["outcome"] for a in doc["claims"]["artefacts"])
    totals = _totals(html)
    assert totals == {**by_outcome, "total": len(doc["claims"]["artefacts"])}
    assert {"key destroyed", "crypto-shredded", "physically removed"} <= set(totals)
    for store, n in Counter(a["store"] for a in doc["claims"]["artefacts"]).items():
        assert re.search(rf"<code>{store}</code>.*?<td class=\"n\">{n}</td></tr>", html)
    assert "Checks passed</strong> when" in html and "NOT VERIFIED" not in html
    assert "This page is not the proof" in html and "The JSON\nfile is the proof" in html
    sha = hashlib.sha256(result.certificate_path.read_bytes()).hexdigest()
    assert sha in html and doc["request_id"] in html
    assert doc["received_at"] in html and doc["completed_at"] in html
    # The ledger entry and the witness that cosigned, with its key and its time.
    entry = doc["ledger"]["erasure_completed"]
    assert f"ledger entry {entry['seq']}" in html and entry["hash"] in html
    witness = doc["proof"]["witnesses"][0]
    assert witness["name"] in html and witness["fingerprint"] in html
    assert "a directory witness the controller keeps itself" in html
    # Its time is the controller's own clock: the page must not offer it as a witness's.
    assert "this host&#39;s clock, not a witness&#39;s" in html or (
        "this host's clock, not a witness's" in html
    )
    # How to check it: the command with this certificate's values, and docs/verify.md.
    assert "visage privacy verify-certificate --offline" in html and "docs/verify.md" in html
    assert f"--request-id {doc['request_id']} --subject {victim}" in html
    # The shipped example controller is flagged, as on the notice.
    assert "EXAMPLE CONTROLLER" in html
    # Deterministic: the same certificate and keys give the same bytes.
    assert _controller_page(proj, result.certificate_path).html == html


def _verdict(html: str) -> str:
    """The page's verdict box, as text a reader sees."""
    box = re.search(r'<div class="verdict [a-z]+">(.*?)</div>', html, re.S).group(1)
    return " ".join(unescape(re.sub(r"<[^>]+>", "", box)).split())


def test_the_controllers_page_says_whose_check_it_is_not_verified(erased, tmp_path):
    """The page an erasure writes is checked by the controller's own installation with the keys
    it holds. It said "Verified", the controller's own word, which a regulator cannot rely on:
    it names the checks, who made them, and the offline verifier a reader runs themselves."""
    proj, _, _, result = erased
    html = page_path(result.certificate_path).read_text()
    title = re.search(r"<title>(.*?)</title>", html).group(1)
    verdict = _verdict(html)
    assert "verified" not in title.lower() and "verified" not in verdict.lower(), verdict
    for checked in ("signature", "ledger entry", "inclusion", "witnessed checkpoint"):
        assert checked in verdict, checked
    assert "this project's own visage-ml installation, with the keys it holds" in verdict
    assert "not an independent verification" in verdict
    # Independent verification: the reader's own run of the offline verifier, published keys.
    assert "visage privacy verify-certificate --offline" in verdict and "verify.py" in verdict
    assert "docs/verify.md" in verdict and "published" in verdict
    # The checks stay: a copy rendered by a reader with the published keys passes them, and says
    # who made them; a failed check still reads NOT VERIFIED.
    cert = tmp_path / "cert.json"
    shutil.copy(result.certificate_path, cert)
    pinned = render_page(
        cert,
        pins=Pins(
            public_key=proj.paths.ledger_public_key,
            witness_keys=(Witness(default_witness_dir()).verifier.vkey,),
            origin=result.certificate["proof"]["log"]["origin"],
            by="given on the command line",
        ),
    )
    assert pinned.verdict == VERIFIED
    assert "whoever rendered this copy" in _verdict(pinned.html)
    assert "own visage-ml installation" not in _verdict(pinned.html)


def test_a_shared_file_rewritten_without_the_subject_is_not_said_to_be_deleted(erased, tmp_path):
    """data/processed/faces.sealed holds every subject's sealed crops and is rewritten without
    the erased one: the page counted it "crypto-shredded", glossed "deleted as well", as if the
    file had gone. The subject's part is gone (their key destroyed, their crops removed); the
    file is not, and the page says so from what the certificate records."""
    proj, _, _, result = erased
    assert (proj.paths.processed / "faces.sealed").is_file()  # kept, for the others
    dataset = result.certificate["claims"]["dataset"]
    assert dataset["processed_md5_after"] not in (None, dataset["processed_md5_before"])
    text = " ".join(unescape(page_path(result.certificate_path).read_text()).split())
    assert "unreadable everywhere, and deleted as well where the controller could reach" not in text
    assert "unless it is a file shared with other people and still in use" in text
    assert (
        "1 crypto-shredded item is a file shared with other people (the prepared training data, "
        "each person's face crops sealed under their own key): it was not deleted" in text
    )
    assert "the subject's part, unreadable once their key was destroyed, was removed" in text

    # A certificate whose prepared data was left with no file (none after the erasure): nothing
    # shared is kept, and the page does not say so.
    def gone(doc):
        doc["claims"]["dataset"]["processed_md5_after"] = None

    forged, _ = _resigned(proj, result, tmp_path, gone)
    assert "crypto-shredded item" not in _controller_page(proj, forged).html


def test_the_page_says_when_photographs_are_kept_in_clear_in_dvc(erased, tmp_path):
    """The certificate counts the subject's plaintext photographs DVC keeps because other data
    holds the same file (claims.dvc.kept_plaintext); the page said nothing of them."""
    _, _, _, result = erased
    doc = json.loads(result.certificate_path.read_text())
    doc["claims"].setdefault("dvc", {})["kept_plaintext"] = 2
    copy = tmp_path / result.certificate_path.name
    copy.write_text(json.dumps(doc))
    html = render_page(copy).html  # the changed file no longer verifies; the page still says
    assert "NOT VERIFIED" in html
    assert "2 DVC object(s) holding the subject&#39;s photographs in clear are kept" in html or (
        "2 DVC object(s) holding the subject's photographs in clear are kept" in html
    )


def test_without_pinned_keys_the_page_says_consistent_not_verified(erased, tmp_path):
    proj, _, _, result = erased
    cert = tmp_path / "cert.json"
    shutil.copy(result.certificate_path, cert)
    alone = render_page(cert)
    assert alone.verdict == CONSISTENT
    assert (
        "Consistent, not authenticated" in alone.html and "Checks passed</strong>" not in alone.html
    )
    assert "taken from the certificate itself" in alone.html
    doc = json.loads(cert.read_text())
    vkey = Witness(default_witness_dir()).verifier.vkey
    pinned = render_page(
        cert,
        pins=Pins(
            public_key=proj.paths.ledger_public_key,
            witness_keys=(vkey,),
            origin=doc["proof"]["log"]["origin"],
            by="the reader",
        ),
    )
    assert pinned.verdict == VERIFIED and "ledger.pub (the reader)" in pinned.html


def test_the_page_says_stale_then_retrained_once_lineage_refresh_upgrades_it(project):
    proj = make_project(project, n_subjects=4)
    paths, victim = proj.paths, proj.pids[1]
    write_training_lock(paths, md5_file(paths.processed / "faces.sealed"), "a" * 32)
    result = Erasure(paths).erase(victim)
    page = page_path(result.certificate_path)
    assert "train_embedder:models/embedder.pt" in page.read_text()
    assert "stale: trained on data that held the subject" in page.read_text()
    # `dvc repro` on the purged data, then the upgrade: the page beside is rewritten.
    retrain(paths, result.certificate["claims"]["dataset"]["processed_md5_after"], "b" * 32)
    runner = CliRunner()
    refresh = runner.invoke(app, ["privacy", "lineage", "--refresh", "--json"])
    assert json.loads(refresh.output)["upgraded"] == [result.request_id]
    html = page.read_text()
    assert "retrained without the subject (signed ledger entry" in html and "stale:" not in html
    # The command renders the same page from the certificate and the ledger.
    again = runner.invoke(app, ["privacy", "certificate-page", str(result.certificate_path)])
    assert again.exit_code == 0, again.output
    assert page.read_text() == html


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def test_cli_writes_the_page_and_errors_clearly(erased, tmp_path, monkeypatch):
    proj, _, _, result = erased
    cert = result.certificate_path
    runner = CliRunner()
    out = tmp_path / "for-the-file.html"
    ok = runner.invoke(app, ["privacy", "certificate-page", str(cert), "--out", str(out)])
    assert ok.exit_code == 0 and "checks passed" in ok.output, ok.output
    assert out.read_text() == page_path(cert).read_text()
    folder = tmp_path / "dpo"
    folder.mkdir()
    shown = runner.invoke(
        app, ["privacy", "certificate-page", str(cert), "-o", str(folder), "--json"]
    )
    assert json.loads(shown.output)["verdict"] == VERIFIED
    assert (folder / f"{result.request_id}.html").is_file()

    def error(*args: str) -> str:
        res = runner.invoke(app, ["privacy", "certificate-page", *args])
        assert res.exit_code == 2, res.output
        return res.output

    assert "no certificate at" in error(str(tmp_path / "missing.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "is not an erasure certificate" in error(str(tmp_path / "list.json"))
    (tmp_path / "notes.txt").write_text("erased on Monday")
    assert "is not an erasure certificate (not JSON)" in error(str(tmp_path / "notes.txt"))
    assert "is the certificate itself" in error(str(cert), "--out", str(cert))
    assert "no key file" in error(str(cert), "--public-key", str(tmp_path / "nope.pub"))
    # Outside a checkout: say how to render a copy, and do so with --offline.
    copy = tmp_path / "copy.json"
    shutil.copy(cert, copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("VISAGE_PROJECT", str(elsewhere))
    assert "--offline" in error(str(copy))
    assert not (elsewhere / "privacy").exists()  # nothing made where there is no project
    pub = tmp_path / "ledger.pub"
    shutil.copy(proj.paths.ledger_public_key, pub)
    offline = runner.invoke(
        app, ["privacy", "certificate-page", str(copy), "--offline", "--public-key", str(pub)]
    )
    assert offline.exit_code == 0 and page_path(copy).is_file(), offline.output
    # A tampered copy: the page is written and says NOT VERIFIED; the exit code says so too.
    data = bytearray(copy.read_bytes())
    data[-5] ^= 1
    copy.write_bytes(bytes(data))
    bad = runner.invoke(app, ["privacy", "certificate-page", str(copy), "--offline"])
    assert bad.exit_code == 1 and "NOT VERIFIED" in page_path(copy).read_text()
