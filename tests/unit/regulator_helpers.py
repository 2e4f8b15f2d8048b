"""Shared helpers for the regulator's attack tests."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.privacy import checkpoint as checkpoint_mod
from visage_ml.privacy import ledger as ledger_mod
from visage_ml.privacy.witness import Witness, default_witness_dir

ROOT = Path(__file__).resolve().parents[2]
REPO_PARAMS = ROOT / "params.yaml"


def verifier_script(tmp: Path) -> Path:
    """docs/verify.md's stand-alone verifier, saved as verify.py (what a regulator runs)."""
    text = (ROOT / "docs" / "verify.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    script = tmp / "verify.py"
    script.write_text(block)
    return script


def witness_vkey() -> str:
    return Witness(default_witness_dir()).verifier.vkey


def run_verify_py(script: Path, cert: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), str(cert), *args], capture_output=True, text=True
    )


def run_cli(cert: Path, *args: str):
    return CliRunner().invoke(app, ["privacy", "verify-certificate", "--offline", str(cert), *args])


def assert_witnessed_valid(tmp: Path, cert: Path, pub: Path, doc: dict, vkey: str) -> None:
    """Both verifiers, every pin given, say VALID (exit 0) and that the completion date is
    witnessed."""
    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    assert cli.exit_code == 0 and "certificate VALID" in cli.output, cli.output
    assert re.search(r"^ok\s+completion date witnessed", cli.output, re.M), cli.output
    py = run_verify_py(
        verifier_script(tmp),
        cert,
        *("--public-key", str(pub), "--witness-key", vkey),
        *("--origin", doc["proof"]["log"]["origin"]),
    )
    assert py.returncode == 0 and "certificate VALID" in py.stdout, py.stdout
    assert re.search(r"^ok\s+completion date witnessed", py.stdout, re.M), py.stdout


def pinned_cli_args(doc: dict, pub: Path, vkey: str) -> list[str]:
    """Every pin the README offers: key, witness, origin, request and subject."""
    return [
        "--public-key",
        str(pub),
        "--witness-key",
        vkey,
        "--origin",
        doc["proof"]["log"]["origin"],
        "--request-id",
        doc["request_id"],
        "--subject",
        doc["pid"],
    ]


def offline_copy(proj, result, tmp: Path) -> tuple[Path, Path]:
    """What a regulator is handed: the certificate and the published ledger.pub."""
    cert = tmp / "cert.json"
    shutil.copy(result.certificate_path, cert)
    pub = tmp / "ledger.pub"
    shutil.copy(proj.paths.ledger_public_key, pub)
    return cert, pub


def cosign_times(doc: dict) -> list[int]:
    """UNIX times the witnesses stamped on their cosignatures (c2sp tlog-cosignature)."""
    note = doc["proof"]["tlog_proof"].split("\n\n", 1)[1]
    sigs = note[note.rindex("\n\n") + 2 :].splitlines()
    out = []
    for line in sigs:
        _, b64 = line.removeprefix("\u2014 ").split(" ")
        blob = base64.b64decode(b64)
        if len(blob) == 4 + 72:
            out.append(int.from_bytes(blob[4:12], "big"))
    return out


def set_back(monkeypatch, delta: timedelta) -> None:
    """The ledger's clock reads ``delta`` earlier (its entries' times)."""
    real_now = ledger_mod.utc_now

    def now() -> str:
        t = datetime.fromisoformat(real_now().replace("Z", "+00:00")) - delta
        return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    monkeypatch.setattr(ledger_mod, "utc_now", now)


def later(monkeypatch, delta: timedelta) -> None:
    """Every clock reads ``delta`` later: the ledger's and the witness's (its cosignatures)."""
    set_back(monkeypatch, -delta)
    real = time.time
    monkeypatch.setattr(
        checkpoint_mod, "time", SimpleNamespace(time=lambda: real() + delta.total_seconds())
    )
