"""Records of processing (Art. 30) as validated data; every consent or basis names them."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import AnalyticsParams, ProjectPaths
from visage_ml.privacy.consent import ConsentReceipt
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.documents import records_html, render_notice
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
        (
            lambda d: d["purposes"]["training"]["subjects"]["research"]["legal_bases"].append(
                "art99"
            ),
            "unknown code",
        ),
        (
            lambda d: d["purposes"]["training"]["subjects"]["enrolled"].update(
                legal_bases=["art6(1)(a)"]
            ),
            "at least 2",
        ),
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
    del doc["purposes"]["evaluation"]["subjects"]["enrolled"]  # research data sets only
    records_path(paths).write_text(yaml.safe_dump(doc))
    with pytest.raises(RecordsError, match="evaluation"):
        core.give_consent(pid, receipt(["evaluation"]))
    assert core.subject(pid).decision("evaluation").reason == "no_consent"


def _notice_rows(html: str, purpose: str) -> str:
    """The notice table's rows of ``purpose``."""
    rows = html[html.index(f">{purpose}</td>") :]
    return rows[: min(i for i in (rows.find("<tr><td rowspan"), rows.find("</table>")) if i >= 0)]


def test_analytics_offers_no_consent_it_could_not_honour(project):
    """Analytics counts passers-by without identifying them and never asks the consent
    registry; the notice offered enrolled persons consent to it ("You can withdraw your
    consent at any time"), and a withdrawal was recorded and had no effect."""
    paths = ProjectPaths(project)
    ensure_records(paths)
    recs = records_of(paths)
    # One basis for everyone the camera counts, enrolled or not: legitimate interests.
    (basis,) = recs.purposes["analytics"].subjects.values()
    assert not basis.consent and basis.legitimate_interests
    html = render_notice(recs).html
    rows = _notice_rows(html, "analytics")
    assert "consent" not in rows and "enrolled or not" in rows
    counting = html[html.index("How the counting works") :]
    counting = " ".join(counting[: counting.index("</p>")].split())
    assert "no one's consent is asked" in counting
    # What an objection can do is said: not take one person out of counts that hold no one.
    interests = html[html.index("Legitimate interests (Art. 6(1)(f)") :]
    assert "cannot leave one person out" in " ".join(interests.split())
    # Nothing can be consented to, nor withdrawn, for analytics; the refusal says why.
    core = PrivacyCore(paths)
    pid = core.add_subject(source="test")
    with pytest.raises(ValueError, match="analytics does not rest on consent"):
        core.give_consent(pid, receipt(["analytics"]))
    core.give_consent(pid, receipt(["training", "identification"]))
    with pytest.raises(ValueError, match="identifies no one"):
        core.withdraw_consent(pid, ["analytics"])
    # "All purposes" are the purposes a consent is given for.
    assert core.withdraw_consent(pid).payload["purposes"] == [
        "training",
        "evaluation",
        "identification",
    ]
    assert core.subject(pid).decision("analytics").reason == "no_consent"
    # An objection is still recorded, for the DPO to weigh and answer (Art. 21(1)).
    core.object(pid, ["analytics"])
    assert core.may_process(pid, "analytics").reason == "objected"
    # The CLI says the same, and its default purposes leave analytics out.
    runner = CliRunner()
    r = runner.invoke(app, ["privacy", "consent", "withdraw", pid, "-p", "analytics"])
    assert r.exit_code == 2 and "does not rest on consent" in " ".join(r.output.split())
    other = core.add_subject(source="test")
    r = runner.invoke(app, ["privacy", "consent", "give", other, "--json"])
    assert r.exit_code == 0, r.output
    assert "analytics" not in yaml.safe_load(r.output)["purposes"]


def test_records_that_rest_analytics_on_consent_are_refused_saying_what_to_use():
    doc = default_records(controller="C", contact="dpo@example.org")
    doc["purposes"]["analytics"]["subjects"]["enrolled"] = {
        "legal_bases": ["art6(1)(a)", "art9(2)(a)"]
    }
    with pytest.raises(RecordsError, match="identifies no one") as refused:
        parse_records(doc)
    message = str(refused.value)
    assert "purposes.analytics.subjects.enrolled" in message and "art6(1)(f)" in message


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


def test_legal_bases_are_per_purpose_and_per_class_of_subjects(project):
    # Passers-by are counted by a camera, not enrolled: they cannot consent, so their analytics
    # rests on legitimate interests, stated with the interest pursued; recognising enrolled
    # persons (biometric data used to identify) rests on explicit consent only.
    paths = ProjectPaths(project)
    ensure_records(paths)
    recs = records_of(paths)
    analytics, identification = recs.purposes["analytics"], recs.purposes["identification"]
    passers_by = analytics.subjects["passer_by"]
    assert passers_by.legal_bases == ["art6(1)(f)", "art9(2)(j)"] and not passers_by.consent
    assert passers_by.legitimate_interest and passers_by.balancing_test
    assert list(identification.subjects) == ["enrolled"]
    assert identification.subjects["enrolled"].legal_bases == ["art6(1)(a)", "art9(2)(a)"]
    # The notice says the same, per class: the passers-by's row names no consent, and the
    # interest pursued, the balancing test and the right to object are stated.
    html = render_notice(recs).html
    row = html[html.index("persons passing the camera") :]
    row = row[: row.index("</tr>")]
    assert "Art. 6(1)(f): legitimate interests" in row and "consent" not in row
    interests = html[html.index("Legitimate interests (Art. 6(1)(f)") :]
    assert passers_by.legitimate_interest in interests
    assert "balancing test" in interests and "Art. 21(1)" in interests
    # The register holds the same table: purpose, class of subjects, bases, interest.
    register = records_html(recs)
    assert "Legal bases per purpose and class of data subjects" in register
    assert passers_by.legitimate_interest in register
    # Records that let passers-by consent, or claim legitimate interests without saying which,
    # are refused.
    doc = yaml.safe_load(records_path(paths).read_text())
    doc["purposes"]["analytics"]["subjects"]["passer_by"]["legal_bases"] = [
        "art6(1)(a)",
        "art9(2)(a)",
    ]
    with pytest.raises(RecordsError, match="cannot give consent"):
        parse_records(doc)
    doc = yaml.safe_load(records_path(paths).read_text())
    doc["purposes"]["analytics"]["subjects"]["passer_by"]["legitimate_interest"] = ""
    with pytest.raises(RecordsError, match="interest pursued"):
        parse_records(doc)


def test_the_legitimate_interest_comes_from_params_and_the_example_is_a_draft(project):
    paths = ProjectPaths(project)
    ensure_records(paths)
    field = "purposes.analytics.subjects.passer_by.legitimate_interest"
    assert field in records_of(paths).placeholders()
    assert field in render_notice(records_of(paths)).html  # named in the DRAFT warning
    # The controller's own words, set in params.yaml before set-up, are what the notice states.
    records_path(paths).unlink()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["privacy"]["legitimate_interests"]["passer_by"] = "staffing the tills of the shop"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    ensure_records(paths)
    recs = records_of(paths)
    assert field not in recs.placeholders()
    assert "the interest we pursue is staffing the tills of the shop" in render_notice(recs).html


def test_the_notice_describes_the_counting_as_analytics_does_it(project):
    paths = ProjectPaths(project)
    ensure_records(paths)
    recs = records_of(paths)
    html = render_notice(recs, analytics=AnalyticsParams(k_min=7, window_seconds=300)).html
    assert "window of 5 minutes" in html and "a count below\n7 is withheld" in html
    assert "No random noise is added" in html
    noisy = render_notice(recs, analytics=AnalyticsParams(epsilon=0.5)).html
    assert "differential privacy, &epsilon; = 0.5 per window" in noisy
    # `visage privacy notice` renders what params.yaml sets.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["serving"]["analytics"]["k_min"] = 11
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert CliRunner().invoke(app, ["privacy", "notice"]).exit_code == 0
    assert "below\n11 is withheld" in (project / "reports/privacy/notice.html").read_text()


def test_records_of_the_older_format_are_refused_saying_what_changed(project):
    paths = ProjectPaths(project)
    ensure_records(paths)
    doc = yaml.safe_load(records_path(paths).read_text())
    doc["format"] = 1
    records_path(paths).write_text(yaml.safe_dump(doc))
    with pytest.raises(RecordsError, match="per class of data subjects"):
        records_of(paths)


def test_a_balancing_test_said_to_be_on_file_without_saying_where_is_a_draft(project):
    # The shipped text claims "on file with the data protection officer": a claim nobody made.
    paths = ProjectPaths(project)
    ensure_records(paths)
    field = "purposes.analytics.subjects.passer_by.balancing_test"
    assert field in records_of(paths).placeholders()
    doc = yaml.safe_load(records_path(paths).read_text())
    doc["purposes"]["analytics"]["subjects"]["passer_by"]["balancing_test"] = (
        "LIA-2026-07 of 3 July 2026, held by the DPO; a copy on request"
    )
    recs = parse_records(doc)
    assert field not in recs.placeholders()
    assert "LIA-2026-07" in render_notice(recs).html


def test_the_notice_states_the_deadlines_the_request_book_applies(project):
    """privacy.deadline_months and max_extension_months set the deadlines of every request;
    the notice said "one month ... two further months" whatever they were."""
    paths = ProjectPaths(project)
    ensure_records(paths)
    recs = records_of(paths)
    default = render_notice(recs).html
    assert "within one month of receiving" in default and "two further months" in default
    none = render_notice(recs, deadline_months=1, max_extension_months=0).html
    assert "within one month of receiving your request; we do not extend this." in none
    assert "further" not in none.split("Your rights")[1].split("</p>")[1]
    longer = render_notice(recs, deadline_months=2, max_extension_months=1).html
    assert "within two months of receiving" in longer and "by one further month" in longer
    assert "within the first\ntwo months" in longer
