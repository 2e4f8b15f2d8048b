"""The ``visage`` command: one Typer app whose groups live in the modules of this package."""

from __future__ import annotations

import typer

from visage_ml.app.cli import config_cmd, data_cmd, demo_cmd, privacy_cmd, serve_cmd

app = typer.Typer(
    name="visage",
    help=(
        "visage-ml: on-premise face recognition and demographic analytics in which every "
        "data-subject right is one command. Run from a project root (the folder holding "
        "params.yaml) or set VISAGE_PROJECT."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(privacy_cmd.app, name="privacy")
app.add_typer(data_cmd.app, name="data")
app.command("demo")(demo_cmd.demo)
app.command("serve")(serve_cmd.serve)
app.add_typer(serve_cmd.gallery_app, name="gallery")
app.add_typer(serve_cmd.apikey_app, name="apikey")
