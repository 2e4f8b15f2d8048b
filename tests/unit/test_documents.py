"""The layered notice and the sign, rendered from the records; receipts carry the real notice."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import zlib

import numpy as np
import pytest
import qrcode
import yaml
from fpdf import FPDF
from PIL import Image
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.privacy import documents
from visage_ml.privacy.consent import sha256_text
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.documents import (
    SIGN_MIN_BODY_PT,
    SIGN_PT,
    SIGN_SIZE,
    notice_path,
    records_pdf,
    render_notice,
    sign_lines,
    sign_pdf,
)
from visage_ml.privacy.records import (
    Records,
    RecordsError,
    Retention,
    ensure_records,
    parse_records,
    records_of,
    records_path,
)


def test_notice_is_versioned_by_content_and_receipts_carry_its_hash(project):
    paths = ProjectPaths(project)
    runner = CliRunner()
    r = runner.invoke(app, ["privacy", "notice", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    html = (project / "reports" / "privacy" / "notice.html").read_text()
    rendered = render_notice(
        records_of(paths),
        consent_months=12,
        erase_without_basis=True,
        enforce_interval_seconds=3600,
    )
    assert sha256_text(html) == doc["sha256"] == rendered.sha256
    for words in ("Data protection officer", "lodge a complaint", "analytics", "12 months"):
        assert words in html
    # What privacy.retention enforces of consents is said (it was not: only the records' periods).
    assert "A consent lapses 12 calendar months after it was" in html
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
    assert "Enrolled persons: consent (Art. 6(1)(a), 9(2)(a))" in text and "art6" not in text


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
        "purposes.training.subjects.research.legitimate_interest",
        "purposes.training.subjects.research.balancing_test",
        "purposes.evaluation.subjects.research.legitimate_interest",
        "purposes.evaluation.subjects.research.balancing_test",
        "purposes.analytics.subjects.passer_by.legitimate_interest",
        "purposes.analytics.subjects.passer_by.balancing_test",
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
    for name, cls in (("training", "research"), ("evaluation", "research")):
        records["purposes"][name]["subjects"][cls]["legitimate_interest"] = "safer models"
    records["purposes"]["analytics"]["subjects"]["passer_by"]["legitimate_interest"] = (
        "planning the opening hours of the shop"
    )
    for name, cls in (
        ("training", "research"),
        ("evaluation", "research"),
        ("analytics", "passer_by"),
    ):
        records["purposes"][name]["subjects"][cls]["balancing_test"] = "LIA-7 of 3 July 2026"
    records_path(paths).write_text(yaml.safe_dump(records))
    r = runner.invoke(app, ["privacy", "notice", "--json"])
    assert json.loads(r.output)["placeholders"] == []
    runner.invoke(app, ["privacy", "records"])
    for page in ("notice.html", "records.html"):
        assert "DRAFT" not in (folder / page).read_text(), page
    recs = records_of(paths)
    assert not sign_lines(recs, render_notice(recs))[0][1].startswith("DRAFT")


# -- what the pages look like --------------------------------------------------------------------
# fpdf2 writes each line as `BT x y Td (text) Tj ET` after a `BT /Fn size Tf ET`; a justified line
# is a TJ array with spacing between its words. With the core font (no TrueType file) the text is
# in the clear, so a test can read it.

PT_PER_MM = 72 / 25.4
A4_HEIGHT_PT = 841.89
LINE = re.compile(
    rb"BT /(F\d+) ([\d.]+) Tf ET"
    rb"|BT ([\d.]+) ([\d.]+) Td (?:[\d. ]+r?g )?(\(.*?\)|\[.*?\]) (Tj|TJ) ET"
)


def pdf_lines(pdf: bytes) -> list[list[dict]]:
    """Per page, its text lines: ``x``, ``y`` (pt from the bottom), ``font``, ``size``,
    ``text``, and ``stretched`` (spacing added between words: justified)."""
    pages = []
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            content = zlib.decompress(m.group(1))
        except zlib.error:
            continue
        if b" Td " not in content:
            continue
        font, size, lines = "", 0.0, []
        for op in LINE.finditer(content):
            if op.group(1):
                font, size = op.group(1).decode(), float(op.group(2))
                continue
            raw = op.group(5)
            text = b"".join(re.findall(rb"\(((?:\\.|[^\\)])*)\)", raw))
            text = re.sub(rb"\\(.)", rb"\1", text).decode("latin-1")
            lines.append(
                {
                    "x": float(op.group(3)),
                    "y": float(op.group(4)),
                    "font": font,
                    "size": size,
                    "text": text,
                    "stretched": op.group(6) == b"TJ" and re.search(rb"\)\s*-?[\d.]+\s*\(", raw),
                }
            )
        pages.append(lines)
    return pages


@pytest.fixture
def core_font(monkeypatch):
    """Documents set in the PDF core font, so that their text can be read back."""
    monkeypatch.setattr(documents, "_ttf", lambda: None)


def filled_in(paths) -> Records:
    """The project's records with the example fields replaced (no draft warning)."""
    doc = yaml.safe_load(records_path(paths).read_text())
    doc["controller"] |= {"name": "Acme Shops SA", "contact": "privacy@acme-shops.eu"}
    doc["dpo"]["contact"] = "dpo@acme-shops.eu"
    doc["notice_url"] = "https://acme-shops.eu/privacy/visage"
    for purpose in doc["purposes"].values():
        for basis in purpose["subjects"].values():
            if basis.get("legitimate_interest"):
                basis["legitimate_interest"] = "planning the opening hours of the shop"
    return parse_records(doc)


def test_the_sign_is_set_large_enough_to_read_from_a_distance_and_fits_its_page(project, core_font):
    paths = ProjectPaths(project)
    ensure_records(paths)
    for recs in (records_of(paths), filled_in(paths)):
        notice = render_notice(recs)
        pdf = sign_pdf(recs, notice)
        assert b"/Count 1" in pdf  # one page
        (page,) = pdf_lines(pdf)
        body = [x for x in page if x["size"] < SIGN_PT["head"] and x["size"] > SIGN_PT["draft"]]
        assert body and min(x["size"] for x in body) >= SIGN_MIN_BODY_PT
        # Every line stays inside the border, above the foot, and clear of the QR code.
        qr_x, qr_y, qr_side = (v * PT_PER_MM for v in documents._SIGN_QR)
        qr_bottom = A4_HEIGHT_PT - qr_y - qr_side
        (bold,) = {x["font"] for x in page if x["text"] == "Who is responsible"}
        width = FPDF()
        for line in page:
            assert 15 * PT_PER_MM <= line["y"] <= A4_HEIGHT_PT - 6 * PT_PER_MM, line
            width.set_font("helvetica", "B" if line["font"] == bold else "", line["size"])
            right = line["x"] + width.get_string_width(line["text"]) * PT_PER_MM
            assert right <= 595.28 - 15 * PT_PER_MM + 0.5, line
            if line["y"] + line["size"] > qr_bottom and line["y"] < A4_HEIGHT_PT - qr_y:
                assert right <= qr_x, line  # beside the QR code: left of it
    # The filled-in sign is at full size (18 pt text), ten-point type no more.
    (page,) = pdf_lines(sign_pdf(recs, notice))
    sizes = {x["size"] for x in page if x["text"].startswith("Recognising enrolled")}
    assert sizes == {SIGN_PT["body"]} and SIGN_PT["body"] >= 18
    # The first layer: who, what and on which basis, the rights, where the full notice is.
    text = "\n".join(x["text"] for x in page)
    for words in ("Acme Shops SA", "Passers-by: legitimate interests", "Your rights", "acme-shops"):
        assert words in text
    # Text too long for the page at the smallest size allowed is refused, not cut off.
    doc = recs.model_dump()
    doc["purposes"]["analytics"]["summary"] = "Counting passers-by. " * 120
    with pytest.raises(RecordsError, match="does not fit"):
        sign_pdf(parse_records(doc), notice)


def test_the_register_pdf_is_dated_left_aligned_and_keeps_headings_with_what_follows(
    project, core_font
):
    paths = ProjectPaths(project)
    ensure_records(paths)
    recs = filled_in(paths)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    pages = pdf_lines(records_pdf(recs))
    # The render date, as in the HTML (read across lines: where the line breaks depends on the
    # glyphs of the records' SHA-256 before it).
    assert f"on {today}" in " ".join(x["text"] for x in pages[0])
    dated = pdf_lines(records_pdf(recs, generated="2031-02-03"))[0]
    assert "on 2031-02-03" in " ".join(x["text"] for x in dated)
    # Text is left-aligned: no line has its words spread out, and in the tables every line of
    # a text column starts at that column's left edge, as the column's heading does.
    doc = recs.model_dump()
    for n in range(40):  # registers of every length: a heading lands at every height of a page
        doc["security_measures"] = [f"measure {i}" for i in range(1, 2 + n)]
        doc["recipients"] = [
            {"name": f"Recipient number {i}", "kind": "processor", "purposes": ["analytics"]}
            for i in range(n % 7)
        ]
        pages = pdf_lines(records_pdf(parse_records(doc)))
        for page in pages:
            assert not [x for x in page if x["stretched"]], "justified lines"
        for page in pages[:-1]:
            last = page[-1]
            assert last["size"] < 13, f"heading {last['text']!r} alone at the foot of a page"
    # Table cells (9 pt) start where their column's heading starts (the first table has none:
    # its label and value columns).
    pages = pdf_lines(records_pdf(recs))
    cells = [x for page in pages for x in page if x["size"] == 9]
    columns = {x["x"] for x in cells if x["font"] == cells[0]["font"]}  # headings, in bold
    columns |= {x["x"] for x in cells if x["text"].startswith("Acme Shops SA")}
    assert len(columns) > 5 and {x["x"] for x in cells} <= columns


def test_periods_are_written_in_the_singular_and_the_plural(project):
    assert Retention(months=1).text() == "1 month after collection"
    assert Retention(months=6, start="enrolment").text() == "6 months after enrolment"
    assert Retention(days=1, start="creation").text() == "1 day after it is made"
    assert Retention(days=30, start="creation").text() == "30 days after it is made"
    paths = ProjectPaths(project)
    ensure_records(paths)
    html = render_notice(records_of(paths), consent_months=1).html
    assert "A consent lapses 1 calendar month after" in html and "(s)" not in html
    assert "6 calendar months" in render_notice(records_of(paths), consent_months=6).html


def test_the_notice_says_what_happens_to_a_face_that_matches_no_one(project):
    # Identification compares every face presented, enrolled or not: the notice said only
    # "recognising enrolled persons", as if no one else's face were processed (a DPO's finding).
    paths = ProjectPaths(project)
    text = " ".join(render_notice(records_of(paths)).html.split())
    assert "Every face presented to the camera is compared with the gallery" in text
    assert "answered 'unknown' and nothing of it is kept (no image, no template)" in text.replace(
        "&#39;", "'"
    )


def test_the_notice_says_retention_is_automatic_only_when_the_server_enforces_it(project):
    # The notice told subjects "Retention is enforced automatically" while the shipped
    # privacy.retention.serve_interval_seconds was 0: `visage serve` never ran the enforcer,
    # only a `visage privacy enforce` someone ran did. The default server now enforces hourly,
    # and the sentence follows the setting.
    paths = ProjectPaths(project)
    ensure_records(paths)
    shipped = load_params(paths.params).privacy.retention.serve_interval_seconds
    assert shipped == Params().privacy.retention.serve_interval_seconds == 3600
    r = CliRunner().invoke(app, ["privacy", "notice", "--json"])
    assert r.exit_code == 0, r.output
    text = " ".join((project / "reports" / "privacy" / "notice.html").read_text().split())
    assert (
        "Retention is enforced automatically while the service runs, at least once every hour:"
        in text
    )

    def notice(seconds):
        html = render_notice(records_of(paths), enforce_interval_seconds=seconds).html
        return " ".join(html.split())

    assert "at least once every 2 hours:" in notice(7200)
    assert "at least once every 90 seconds:" in notice(90)
    manual = notice(0)
    assert "automatic" not in manual
    assert "Expired data is erased when the controller's scheduled retention check runs" in manual
    # Another setting is another notice, so another version in the receipts.
    assert (
        render_notice(records_of(paths)).sha256
        != render_notice(records_of(paths), enforce_interval_seconds=3600).sha256
    )
