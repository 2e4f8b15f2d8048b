"""Records of processing (Art. 30) as validated data; every consent or basis names them."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths
from visage_ml.privacy.consent import ConsentReceipt
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.records import (
    RecordsError,
    default_records,
    ensure_records,
    parse_records,
    records_of,
    records_path,
)


def receipt(purposes, basis=("art6(1)(a)", "art9(2)(a)")) -> ConsentReceipt:
    return ConsentReceipt(
        controller="C",
        controller_contact="dpo@example.org",
        purposes=tuple(purposes),
        notice_version="v",
        notice_hash="ab" * 32,
        collection_method="form",
        given_at="2026-01-01T00:00:00Z",
        legal_basis=tuple(basis),
    )


def test_project_set_up_writes_valid_records_with_analytics_as_a_purpose(project):
    paths = ProjectPaths(project)
    path = ensure_records(paths)
    assert path == records_path(paths) and path.is_file()
    recs = records_of(paths)
    assert set(recs.purposes) == {"identification", "training", "evaluation", "analytics"}
    assert recs.retention("biometric_template").months == 12
    # Skin tone may reveal ethnic origin (Art. 9(1)): a special category, as faces are.
    assert recs.data_categories["demographic_attributes"].special
    # An existing file is validated, never replaced.
    text = path.read_text().replace("months: 36", "months: 24", 1)
    path.write_text(text)
    ensure_records(paths)
    assert path.read_text() == text and records_of(paths).retention("facial_images").months == 24


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d["purposes"].pop("analytics"), "purposes must be exactly"),
        (lambda d: d["purposes"]["training"]["legal_bases"].append("art99"), "unknown code"),
        (lambda d: d["purposes"]["training"].update(legal_bases=["art6(1)(a)"]), "at least 2"),
        (lambda d: d["purposes"]["analytics"]["data_categories"].append("dna"), "dna"),
        (lambda d: d["data_categories"]["facial_images"]["retention"].update(days=3), "months"),
        (lambda d: d.update(dpo=None), "dpo"),
    ],
)
def test_records_that_do_not_hold_are_refused_naming_the_key(change, where):
    doc = default_records(controller="C", contact="dpo@example.org")
    change(doc)
    with pytest.raises(RecordsError, match=where):
        parse_records(doc)


def test_a_consent_or_basis_the_records_do_not_allow_is_refused(project):
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pid = core.add_subject(source="test")
    # Identification rests on explicit consent only: a research basis is refused for it ...
    with pytest.raises(RecordsError, match="not recorded for purpose 'identification'"):
        core.record_basis(
            pid, purposes=["identification"], legal_basis=["art6(1)(f)", "art9(2)(j)"]
        )
    # ... and allowed for training; a DPO who narrows the records narrows what is accepted.
    core.record_basis(pid, purposes=["training"], legal_basis=["art6(1)(f)", "art9(2)(j)"])
    ensure_records(paths)
    doc = yaml.safe_load(records_path(paths).read_text())
    doc["purposes"]["analytics"]["legal_bases"] = ["art6(1)(f)", "art9(2)(j)"]
    records_path(paths).write_text(yaml.safe_dump(doc))
    with pytest.raises(RecordsError, match="analytics"):
        core.give_consent(pid, receipt(["analytics"]))
    assert core.subject(pid).decision("analytics").reason == "no_consent"


def test_analytics_can_be_consented_to_and_objected_to(project):
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(source="test")
    core.give_consent(pid, receipt(["analytics"]))
    assert core.may_process(pid, "analytics").allowed
    core.object(pid, ["analytics"])
    assert core.may_process(pid, "analytics").reason == "objected"


def test_cli_validates_and_renders_the_register(project):
    runner = CliRunner()
    r = runner.invoke(app, ["privacy", "records", "--json"])
    assert r.exit_code == 0, r.output
    html = (project / "reports" / "privacy" / "records.html").read_text()
    pdf = (project / "reports" / "privacy" / "records.pdf").read_bytes()
    assert "Art. 30" in html and "analytics" in html and "biometric template" in html
    assert pdf.startswith(b"%PDF-") and len(pdf) > 2000
    path = records_path(ProjectPaths(project))
    path.write_text(path.read_text().replace("notice_url:", "notice_link:"))
    bad = runner.invoke(app, ["privacy", "records"])
    assert bad.exit_code == 2 and "notice_url" in bad.output and "records.yaml" in bad.output
