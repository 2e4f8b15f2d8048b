"""Helpers shared by the CLI modules: project discovery, JSON output, clean error exits."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console

from visage_ml.config import ConfigError, ProjectPaths

console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """An error whose message tells the user what to do; the CLI prints it without a trace."""


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with ``--verbose``); called by command entry points only."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def project() -> ProjectPaths:
    """The project the command acts on (``$VISAGE_PROJECT`` or the current folder)."""
    return ProjectPaths.discover()


def emit_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected errors into a one-line message and exit code 2 (no traceback)."""
    try:
        yield
    except (UserError, ConfigError, PermissionError, FileNotFoundError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        # Library code raises ValueError with user-facing messages for bad input.
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
