"""Helpers shared by conftest and test modules: params overrides, subprocess environment.

A test module cannot ``from conftest import ...`` reliably: tests/ and tests/reliability/ each
hold a conftest.py, and whichever was imported first answers to that name.
"""

import os
import sys
from pathlib import Path

import yaml


def write_overrides(params_file: Path, overrides: dict) -> None:
    """Apply dotted-key overrides to a params.yaml in place."""
    raw = yaml.safe_load(params_file.read_text())
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def pipeline_env(root: Path) -> dict[str, str]:
    """Environment for CLI / DVC subprocesses acting on the project at ``root``."""
    return {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "VISAGE_PROJECT": str(root),
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
