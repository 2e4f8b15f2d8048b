"""The layered notice and the sign, rendered from the records; receipts carry the real notice."""

from __future__ import annotations

import io
import json

import numpy as np
import qrcode
import yaml
from PIL import Image
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths
from visage_ml.privacy.consent import sha256_text
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.documents import SIGN_SIZE, notice_path, render_notice, sign_lines
from visage_ml.privacy.records import ensure_records, records_of, records_path


def test_notice_is_versioned_by_content_and_receipts_carry_its_hash(project):
    paths = ProjectPaths(project)
    runner = CliRunner()
    r = runner.invoke(app, ["privacy", "notice", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    html = (project / "reports" / "privacy" / "notice.html").read_text()
    rendered = render_notice(records_of(paths), consent_months=12, erase_without_basis=True)
    assert sha256_text(html) == doc["sha256"] == rendered.sha256
    for words in ("Data protection officer", "lodge a complaint", "analytics", "12 month(s)"):
        assert words in html
    # What privacy.retention enforces of consents is said (it was not: only the records' periods).
    assert "A consent lapses 12 calendar month(s) after it was" in html
    assert "all of it\nis erased" in html
    assert 'name="viewport"' in html  # the sign's QR code opens it on a phone
    assert notice_path(paths, doc["sha256"]).read_text() == html  # the version is kept
    # A consent given without --notice-file records this notice, not the hash of a string.
    core = PrivacyCore(paths)
    pid = core.add_subject(source="test")
    r = runner.invoke(app, ["privacy", "consent", "give", pid, "-p", "identification"])
    assert r.exit_code == 0, r.output
    (given,) = [e for e in core.ledger.entries() if e.type == "consent.given"]
    assert given.payload["receipt"]["notice_hash"] == doc["sha256"]
    assert given.payload["receipt"]["notice_hash"] != sha256_text("notice v1")
    # Changing the records changes the notice: a new version, the old one still on file.
    records = yaml.safe_load(records_path(paths).read_text())
    records["dpo"]["contact"] = "privacy-officer@example.org"
    records_path(paths).write_text(yaml.safe_dump(records))
    new = json.loads(runner.invoke(app, ["privacy", "notice", "--json"]).output)
    assert new["sha256"] != doc["sha256"] and notice_path(paths, doc["sha256"]).is_file()
    runner.invoke(app, ["privacy", "consent", "give", pid, "-p", "training"])
    latest = [e for e in core.ledger.entries() if e.type == "consent.given"][-1]
    assert latest.payload["receipt"]["notice_hash"] == new["sha256"]


def test_the_sign_is_an_a4_first_layer_with_a_qr_code_to_the_full_notice(project):
    paths = ProjectPaths(project)
    ensure_records(paths)
    r = CliRunner().invoke(app, ["privacy", "notice"])
    assert r.exit_code == 0, r.output
    folder = project / "reports" / "privacy"
    png = Image.open(folder / "sign.png").convert("L")
    assert png.size == SIGN_SIZE  # A4 at 150 dpi
    url = records_of(paths).notice_url
    # The QR code in the corner is the one for the notice's URL (its modules, pixel for pixel).
    qr = qrcode.make(url, border=2).get_image().convert("L")
    qr = np.asarray(qr.resize((360, 360), Image.Resampling.NEAREST))
    corner = np.asarray(png)[-80 - 360 : -80, -80 - 360 : -80]
    assert np.mean(np.abs(corner.astype(int) - qr.astype(int)) < 64) > 0.99
    pdf = (folder / "sign.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and b"/Count 1" in pdf  # one A4 page
    assert b"/MediaBox [0 0 595.28 841.89]" in pdf
    assert b"/Subtype /Image" in pdf  # the QR code
    with Image.open(io.BytesIO((folder / "sign.png").read_bytes())) as im:
        assert im.format == "PNG"
    # A passer-by reads the legal basis in words, with the articles, not as codes.
    recs = records_of(paths)
    text = "\n".join(t for _, t in sign_lines(recs, render_notice(recs)))
    assert "(legal basis: consent (Art. 6(1)(a), 9(2)(a)))" in text and "art6" not in text


def test_documents_with_the_shipped_example_controller_say_they_are_drafts(project):
    # The default records name "Example Controller Ltd", dpo@example.org and a notice on
    # example.org: a sign printed from them would send passers-by nowhere. They say so, and
    # stop saying it once the DPO has filled privacy/records.yaml in.
    paths = ProjectPaths(project)
    ensure_records(paths)
    runner = CliRunner()
    r = runner.invoke(app, ["privacy", "notice", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["placeholders"] == [
        "controller.name",
        "controller.contact",
        "dpo.contact",
        "notice_url",
    ]
    r = runner.invoke(app, ["privacy", "records"])
    assert "DRAFT" in r.output and "privacy/records.yaml" in r.output
    folder = project / "reports" / "privacy"
    for page in ("notice.html", "records.html"):
        assert "DRAFT" in (folder / page).read_text(), page
    recs = records_of(paths)
    assert sign_lines(recs, render_notice(recs))[0][1].startswith("DRAFT")

    records = yaml.safe_load(records_path(paths).read_text())
    records["controller"] |= {"name": "Acme Shops SA", "contact": "privacy@acme.test"}
    records["dpo"]["contact"] = "dpo@acme.test"
    records["notice_url"] = "https://acme.test/privacy/visage"
    records_path(paths).write_text(yaml.safe_dump(records))
    r = runner.invoke(app, ["privacy", "notice", "--json"])
    assert json.loads(r.output)["placeholders"] == []
    runner.invoke(app, ["privacy", "records"])
    for page in ("notice.html", "records.html"):
        assert "DRAFT" not in (folder / page).read_text(), page
    recs = records_of(paths)
    assert not sign_lines(recs, render_notice(recs))[0][1].startswith("DRAFT")
