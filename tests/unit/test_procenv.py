"""The environment of child processes: secrets dropped, everything else passed on."""

from __future__ import annotations

import subprocess
import sys

from visage_ml.procenv import child_env, is_secret


def test_secrets_are_dropped_and_the_rest_is_passed_on():
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/op",
        "VISAGE_MASTER_KEY": "k",
        "VISAGE_LEDGER_KEY_FILE": "x",
        "VISAGE_WITNESS_TOKEN": "t",
        "visage_export_passphrase": "p",
        "VISAGE_PROJECT": "/srv/proj",
        "AWS_SECRET_ACCESS_KEY": "remote credential the child needs",
    }
    env = child_env(base=base)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/op",
        "VISAGE_PROJECT": "/srv/proj",
        "AWS_SECRET_ACCESS_KEY": "remote credential the child needs",
    }
    kept = child_env({"DVC_NO_ANALYTICS": "1"}, keep=("VISAGE_MASTER_KEY",), base=base)
    assert kept["VISAGE_MASTER_KEY"] == "k" and kept["DVC_NO_ANALYTICS"] == "1"
    assert "VISAGE_WITNESS_TOKEN" not in kept
    assert is_secret("VISAGE_MASTER_KEY") and not is_secret("VISAGE_PROJECT")


def test_a_spawned_child_does_not_see_the_master_key(monkeypatch):
    monkeypatch.setenv("VISAGE_MASTER_KEY", "the-master-key-value")
    code = "import os; print(os.environ.get('VISAGE_MASTER_KEY'))"
    leaked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert leaked.stdout.strip() == "the-master-key-value"  # what env=None would do
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env()
    )
    assert out.stdout.strip() == "None"
