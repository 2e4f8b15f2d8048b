"""``visage config``: show the resolved, validated configuration."""

from __future__ import annotations

import typer
import yaml
from rich.markup import escape

from visage_ml.app.cli.common import console, emit_json, err_console, project, user_errors
from visage_ml.config import load_params, to_dict, validate_params

app = typer.Typer(help="Inspect params.yaml as visage-ml reads it.", no_args_is_help=True)


@app.command("show")
def show(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
    section: str = typer.Argument(None, help="Only this section (e.g. train_embedder)."),
) -> None:
    """Validate params.yaml and print every value, defaults filled in. Writes nothing."""
    with user_errors():
        params = load_params(project().params)
        data = to_dict(params)
        if section:
            if section not in data:
                raise ValueError(
                    f"no section '{section}' in params.yaml; sections: {', '.join(data)}"
                )
            data = {section: data[section]}
    if as_json:
        emit_json(data)
    else:
        console.print(yaml.safe_dump(data, sort_keys=False), end="", highlight=False)


@app.command("validate")
def validate() -> None:
    """Check params.yaml and exit non-zero naming every bad key. Writes nothing."""
    with user_errors():
        path = project().params
        problems = validate_params(path)
    if problems:
        for text in problems:
            err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)
        err_console.print(
            f"{len(problems)} problem(s); fix them in {path} (see README, 'Configuration')",
            highlight=False,
        )
        raise typer.Exit(2)
    console.print("params.yaml is valid")
