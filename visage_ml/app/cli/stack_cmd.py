"""``visage stack up | down | status``: PostgreSQL + pgvector, S3 and MLflow for a project."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from visage_ml.app.cli.common import (
    UserError,
    console,
    emit_json,
    project,
    setup_logging,
    user_errors,
)
from visage_ml.config import load_params
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.witnessed import independence_note
from visage_ml.stack import stores
from visage_ml.stack.manager import Stack
from visage_ml.stack.proc import StackError

app = typer.Typer(
    help=(
        "The scale-out stack (docs/deploy.md): PostgreSQL with pgvector, S3 (SeaweedFS) and an "
        "MLflow server on loopback, or a team's existing services (stack.mode: external)."
    ),
    no_args_is_help=True,
)


@contextlib.contextmanager
def _stack_errors() -> Iterator[None]:
    with user_errors():
        try:
            yield
        except StackError as exc:
            raise UserError(str(exc)) from None


@app.command("up")
def up(
    configure: bool = typer.Option(
        True,
        "--configure/--no-configure",
        help="Point the project at the stack: stack.tracking: server, a DVC remote.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Start the stack (local mode; idempotent) and configure the project to use it."""
    setup_logging()
    with _stack_errors():
        stack = Stack.of(project(), generate=True)
        started = stack.up(configure=configure)
        status = stack.status()
    # Going to the stack is going to production: say so if no witness is someone else's.
    note = independence_note(load_params(project().params).privacy.witness)
    if as_json:
        emit_json(
            {
                "started_s": started,
                "status": status,
                "tracking_uri": project().tracking_uri,
                "notes": [note] if note else [],
            }
        )
        return
    _print_status(status)
    if configure:
        console.print(f"MLflow tracking: {project().tracking_uri}")
        console.print(f"DVC remote: {stack.params.dvc_remote} -> {stack.dvc_url}")
    if note:
        console.print(f"[yellow]note:[/] {note}")


@app.command("down")
def down() -> None:
    """Stop every local service and check that no process or port of the stack is left."""
    setup_logging()
    with _stack_errors():
        stack = Stack.of(project())
        if not stack.local:
            console.print("stack.mode is external: nothing of ours to stop")
            return
        stack.down()
    console.print("stack stopped; no process left")


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show each service up or down. Exit code 1 when any is down."""
    with _stack_errors():
        result = Stack.of(project()).status()
    if as_json:
        emit_json(result)
    else:
        _print_status(result)
    if not all(s["up"] for s in result.values()):
        raise typer.Exit(1)


@app.command("stores")
def list_stores(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the stores outside the project it has written personal data to (gallery tables,
    MLflow servers): every erasure reaches each, whatever params.yaml points at now."""
    with _stack_errors():
        found = [stores.to_dict(s) for s in stores.remembered(project())]
    if as_json:
        emit_json(found)
        return
    if not found:
        console.print("no store outside the project folder was ever written to")
    for s in found:
        console.print(f"{s['store']}  (since {s['since']})", highlight=False)


@app.command("forget")
def forget(
    store: str = typer.Argument(..., help="The store as `visage stack stores` names it."),
) -> None:
    """Stop erasing from a store that was decommissioned with its data (signed in the ledger).

    Only for a store whose data is destroyed (a dropped table, a deleted server and its
    backups): a store forgotten while it still holds data keeps every later erasure's subject
    there, and the certificates would not say so.
    """
    setup_logging()
    with _stack_errors():
        paths = project()
        _store, entry = stores.forget(paths, store, record=PrivacyCore(paths).record_store)
    console.print(
        f"forgotten: {store} (ledger entry {entry.seq}); erasures no longer reach it",
        highlight=False,
    )


def _print_status(status: dict) -> None:
    for name, info in status.items():
        state = "[green]up[/]" if info["up"] else "[red]down[/]"
        pid = f" pid {info['pid']}" if info.get("pid") else ""
        console.print(f"{name:9} {state}  {info['where']}{pid}", highlight=False)
