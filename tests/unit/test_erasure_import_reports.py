"""The import reports after an erasure: the lines naming the erased person lose their path and
keep their reason (rights/erasure/import_reports.py, data/importers/reports.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tombstones import YORICK, ZELDA, jpeg, put, run_import

from visage_ml.config import ProjectPaths
from visage_ml.data.importers.reports import REDACTED, report_files
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.erasure import Erasure


@pytest.fixture
def imported(project, tmp_path):
    """Zelda and Yorick imported; one photograph of each refused as too small."""
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    put(src / ZELDA / "scan_small.jpg", jpeg(2, side=16))
    put(src / YORICK / "b.jpg", jpeg(3))
    put(src / YORICK / "tiny.jpg", jpeg(4, side=16))
    run_import(project, src)
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pids = {name: core.vault.find(f"imagefolder:{name}") for name in (ZELDA, YORICK)}
    return src, paths, core, pids


def lines(paths: ProjectPaths) -> list[dict]:
    return [x for f in report_files(paths) for x in json.loads(f.read_text())["files"]]


def named(paths: ProjectPaths, name: str) -> list[str]:
    return [f.name for f in report_files(paths) if name in f.read_text()]


def test_an_erasure_leaves_the_reports_counting_the_person_s_files_but_not_naming_them(imported):
    _, paths, core, pids = imported
    (report,) = report_files(paths)
    assert named(paths, ZELDA) == [report.name]  # the refused scan names her folder
    result = Erasure(paths, core=core).erase(pids[ZELDA])
    assert named(paths, ZELDA) == []
    doc = json.loads(report.read_text())
    assert doc["files_skipped"] == 2 and doc["skipped_by_reason"] == {"too_small": 2}
    (hers,) = [x for x in lines(paths) if x["file"] is None]
    assert hers == {"file": None, "reason": "too_small", "detail": "", "redacted": REDACTED}
    assert {x["file"] for x in lines(paths)} == {None, f"{YORICK}/tiny.jpg"}
    assert report.stat().st_mode & 0o777 == 0o600
    # The certificate names the rewritten report (hashed before), in the vault step.
    claimed = [a for a in result.certificate["claims"]["artefacts"] if a["store"] == "imports"]
    assert [a["path"] for a in claimed] == [f"privacy/imports/{report.name}"]
    assert Erasure(paths, core=core).remaining(pids[ZELDA])["vault"] == []


def _add_line(paths, file: str, reason: str):
    """The only import report, with a refused ``file`` listed by path as an older version did."""
    (report,) = report_files(paths)
    doc = json.loads(report.read_text())
    doc["files"].append({"file": file, "reason": reason, "detail": ""})
    report.write_text(json.dumps(doc))
    return report


def test_a_line_an_older_erasure_left_is_found_and_cleaned_by_the_next(imported):
    _, paths, core, pids = imported
    Erasure(paths, core=core).erase(pids[ZELDA])
    # A report that still names her, as an erasure before this store left them.
    report = _add_line(paths, f"{ZELDA}/other.jpg", "too_small")
    erasure = Erasure(paths, core=core)
    # Found by the tombstones before any erasure of hers runs again (Yorick's own files aside).
    assert f"privacy/imports/{report.name}" in erasure.remaining(pids[YORICK])["vault"]
    erasure.erase(pids[YORICK])
    assert named(paths, ZELDA) == [] and named(paths, YORICK) == []
    assert erasure.remaining(pids[YORICK])["vault"] == []


def test_a_later_import_of_the_erased_person_s_folder_counts_the_refusals_without_naming_them(
    imported,
):
    """The report of an import that refuses an erased person's folder is readable without the
    tombstone key and kept until the next erasure: it must not name the person (their folder)
    or their files, and still tell the operator how many files were refused and why."""
    src, paths, core, pids = imported
    Erasure(paths, core=core).erase(pids[ZELDA])
    again = run_import(Path(paths.root), src)
    text = again.report_path.read_text()
    assert ZELDA not in text
    assert "a.jpg" not in text and "scan_small.jpg" not in text
    doc = json.loads(text)
    assert doc["skipped_by_reason"]["erased_subject"] == 2
    assert doc["reason_text"]["erased_subject"].startswith("the person, or this file")
    assert doc["files_skipped"] == len(doc["files"]) + 2
    # Nor does the import's summary (`--json`, the console) name them.
    assert ZELDA not in json.dumps(again.summary())
    assert not [s for s in again.skipped if s.reason == "erased_subject"]
    assert Erasure(paths, core=core).remaining(pids[ZELDA])["vault"] == []


def test_a_report_an_older_version_wrote_naming_a_refused_erased_person_is_found_and_redacted(
    imported,
):
    """Reports written before refusals were counted only still list them by path: the next
    erasure rewrites them, and until then `remaining` finds them (it skipped them before)."""
    _, paths, core, pids = imported
    Erasure(paths, core=core).erase(pids[ZELDA])
    report = _add_line(paths, f"{ZELDA}/c.jpg", "erased_subject")
    erasure = Erasure(paths, core=core)
    assert f"privacy/imports/{report.name}" in erasure.remaining(pids[ZELDA])["vault"]
    erasure.erase(pids[YORICK])
    assert named(paths, ZELDA) == []


def test_a_report_named_by_hand_is_rewritten_and_recorded_by_no_name(imported):
    # A report someone renamed after the person it is about: the vault step records the reports
    # it rewrites by path, in the ledger (kept for good) and the certificate, next to the pid.
    # The dot is in no alphabet of the ledger's signatures and hashes: only a leak spells it.
    _, paths, core, pids = imported
    (report,) = report_files(paths)
    by_hand = report.rename(report.with_name("import-Jane.Doe.json"))
    result = Erasure(paths, core=core).erase(pids[ZELDA])
    assert named(paths, ZELDA) == [] and by_hand.is_file()
    texts = [paths.ledger.read_text(), result.certificate_path.read_text()]
    assert not [t for t in texts if "Jane." in t]
    claimed = [a for a in result.certificate["claims"]["artefacts"] if a["store"] == "imports"]
    assert len(claimed) == 1
