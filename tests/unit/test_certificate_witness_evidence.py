"""What an erasure certificate's witnesses prove to a regulator: who runs a witness, never its
name.

Both verifiers (``visage privacy verify-certificate --offline`` and docs/verify.md's verify.py)
and the controller's page must say the same."""

from __future__ import annotations

import json
import re
from html import unescape

from regulator_helpers import (
    offline_copy,
    pinned_cli_args,
    run_cli,
    run_verify_py,
    verifier_script,
)
from rights_fakes import make_project

from visage_ml.privacy.certificate_page import VERIFIED, controller_pins, page_path, render_page
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.witness import (
    Witness,
    default_witness_dir,
)
from visage_ml.rights.erasure import Erasure


def _text(html: str) -> str:
    """The page as a reader sees it (tags dropped, entities decoded, whitespace folded)."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


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
    py = run_verify_py(
        verifier_script(tmp_path), cert, "--public-key", str(pub), "--witness-key", vkey
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
