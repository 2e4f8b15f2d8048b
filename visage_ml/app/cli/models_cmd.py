"""``visage models``: published weights, fetched and checked only when asked."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table
from tqdm import tqdm

from visage_ml.app.cli.common import console, emit_json, project, setup_logging, user_errors
from visage_ml.models.weights import (
    PIN_FILE,
    PUBLISHED,
    fetch_weights,
    get_published,
    weights_status,
)

app = typer.Typer(
    help=(
        "Published InceptionResnetV1 weights (facenet-pytorch's vggface2 and casia-webface) for "
        "train_embedder.init. Nothing downloads at run time: `visage models fetch` is the only "
        f"command that does. Pins: the published SHA-256, else {PIN_FILE} in the project."
    ),
    no_args_is_help=True,
)


@app.command("fetch")
def fetch(
    name: str = typer.Argument(..., metavar="NAME", help=f"One of: {', '.join(PUBLISHED)}."),
    source_file: Path = typer.Option(
        None,
        "--file",
        help="Offline: a copy of the published file brought in by hand; checked and placed "
        "like a download.",
        exists=True,
        dir_okay=False,
    ),
    url: str = typer.Option(None, "--url", help="A mirror to download from instead."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for the server."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON output."),
) -> None:
    """Download NAME, verify its SHA-256 and place it where `init: NAME` finds it.

    The file is streamed to an unnamed temporary file and appears under its final name
    ($TORCH_HOME/checkpoints/<file>) only once complete and matching its pin; a wrong hash or
    an interrupted transfer installs nothing (exit code 2). Weights without a published
    SHA-256 (casia-webface) have it recorded on the first fetch in the project's pin file and
    checked on every later fetch and before training.
    """
    setup_logging()
    with user_errors():
        paths = project()
        spec = get_published(name)
        bar = tqdm(
            total=spec.size,
            unit="B",
            unit_scale=True,
            desc=spec.file,
            disable=as_json or not sys.stderr.isatty(),
        )
        try:
            result = fetch_weights(
                name,
                pin_file=paths.root / PIN_FILE,
                url=url,
                source_file=source_file,
                timeout=timeout,
                progress=bar.update,
            )
        finally:
            bar.close()
    if as_json:
        emit_json({**result.__dict__, "path": str(result.path)})
        return
    verb = "already present" if result.already_present else "installed"
    console.print(f"{name}: {verb} at {result.path} ({result.size} bytes)", highlight=False)
    console.print(f"SHA-256 {result.sha256}", highlight=False)
    if result.pin == "recorded now":
        console.print(
            f"no published SHA-256 exists for {name}: this one was recorded in "
            f"{paths.root / PIN_FILE}; compare it with a trusted source and commit the pin file",
            highlight=False,
        )
    else:
        console.print(f"matches the {result.pin} SHA-256", highlight=False)
    console.print(f"use it with: dvc exp run -S train_embedder.init={name}", highlight=False)


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON output.")):
    """Where each published weight set must be, whether it is there, and its pin."""
    with user_errors():
        rows = weights_status(project().root / PIN_FILE)
    if as_json:
        emit_json(rows)
        return
    table = Table(title="published weights", title_justify="left")
    for col in ("name", "present", "path", "SHA-256 pin"):
        table.add_column(col)
    for r in rows:
        pin = f"{r['sha256']} ({r['pin']})" if r["sha256"] else r["pin"]
        table.add_row(r["name"], "yes" if r["present"] else "no", r["path"], pin)
    console.print(table)
