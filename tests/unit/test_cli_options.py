"""Every command's options: no short or long name given to two options of one command; the CLI
starts without torch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from visage_ml.app.cli import app


def _commands(cmd: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, [*path, name])
    else:
        yield " ".join(path), cmd


def test_no_command_gives_one_option_name_to_two_options():
    # `visage privacy export` gave -r to --request and to --recipient: the help listed both,
    # and `-r X` silently meant the recipient.
    clashes = []
    commands = list(_commands(typer.main.get_command(app), ["visage"]))
    assert len(commands) > 50
    for path, cmd in commands:
        seen: dict[str, str] = {}
        for param in cmd.params:
            for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
                if opt.startswith("-") and seen.setdefault(opt, param.name) != param.name:
                    clashes.append(f"{path}: {opt} is {seen[opt]} and {param.name}")
    assert not clashes


def test_the_cli_starts_without_loading_torch():
    # torch costs about 1.3 s of every command's start (`visage privacy subject show` took 3 s);
    # the commands that train, export or load weights import it when they run.
    import subprocess
    import sys

    code = "import sys, visage_ml.app.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "importing the CLI loads torch"
