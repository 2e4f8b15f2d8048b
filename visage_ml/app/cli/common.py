"""Helpers shared by the CLI modules: project discovery, JSON output, clean error exits."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from visage_ml.app import logsafe
from visage_ml.config import ConfigError, ProjectPaths
from visage_ml.privacy.core import UnknownSubjectError
from visage_ml.privacy.keys import MasterKeyError
from visage_ml.privacy.ledger import LedgerError
from visage_ml.privacy.vault import VaultError
from visage_ml.stack.proc import StackError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """An error whose message tells the user what to do; the CLI prints it without a trace."""


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (visage_ml's own DEBUG with ``--verbose``, never a third-party
    library's: see :mod:`visage_ml.app.logsafe`); called by command entry points only."""
    logsafe.configure(verbose=verbose, stream=sys.stderr)


def project() -> ProjectPaths:
    """The project the command acts on (``$VISAGE_PROJECT`` or the current folder)."""
    return ProjectPaths.discover()


MSG_PLAINTEXT_INSIDE = (
    "{out} is inside the project: a face in clear there is beyond any erasure's reach and one "
    "`git add` or `dvc add` from history; write it outside the project and delete it after use"
)


def refuse_plaintext_inside(paths: ProjectPaths, out: Path | None) -> None:
    """Refuse to write a face in clear (``out``) anywhere in the project, before anything is
    done or recorded: erasure only knows the sealed copies and the bundles it indexes."""
    if out is not None and out.resolve().is_relative_to(paths.root.resolve()):
        raise UserError(MSG_PLAINTEXT_INSIDE.format(out=out))


def emit_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _expected_errors() -> tuple[type[BaseException], ...]:
    # Evaluated when an error propagates only: the scan's and the shared gallery's modules stay
    # out of every command's start.
    from visage_ml.data.rawstore import RawDataMissingError
    from visage_ml.rights.content_scan import ScanIncompleteError
    from visage_ml.serving.pg_swap import OldTableHeldError

    return (
        ScanIncompleteError,  # an erasure's scan stopped: the message says what to do
        OldTableHeldError,  # a session holds the gallery's old table: the message names it
        RawDataMissingError,  # data/raw not checked out: the message says to run dvc checkout
        UserError,
        ConfigError,
        OSError,
        ValueError,
        MasterKeyError,
        UnknownSubjectError,
        LedgerError,
        VaultError,
        StackError,  # a stack service down: the message says to run `visage stack up`
    )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected errors into a one-line message and exit code 2 (no traceback).

    Library code raises these with messages that say what to do; anything else is a bug and
    keeps its traceback.
    """
    try:
        yield
    except _expected_errors() as exc:
        # A note says what else happened (e.g. which request stays open after a failure).
        text = "\n".join([str(exc), *getattr(exc, "__notes__", ())])
        err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)
        raise typer.Exit(2) from None
