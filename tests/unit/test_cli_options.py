"""Every command's options: no short or long name given to two options of one command."""

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
