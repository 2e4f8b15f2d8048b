"""The ``visage`` command: one Typer app whose groups live in the modules of this package."""

from __future__ import annotations

import typer

from visage_ml.app.cli import (
    config_cmd,
    data_cmd,
    demo_cmd,
    gdpr_cmd,
    models_cmd,
    privacy_cmd,
    sealing_cmd,
    serve_cmd,
    stack_cmd,
    witness_cmd,
)

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
app.add_typer(models_cmd.app, name="models")
app.command("demo")(demo_cmd.demo)
app.command("serve")(serve_cmd.serve)
app.add_typer(serve_cmd.gallery_app, name="gallery")
app.add_typer(serve_cmd.apikey_app, name="apikey")
app.add_typer(witness_cmd.app, name="witness")
app.add_typer(stack_cmd.app, name="stack")
# Biometric files at rest (sealing_cmd): commands of the privacy and data groups.
privacy_cmd.app.command("seal")(sealing_cmd.seal)
privacy_cmd.app.command("rotate-master-key")(sealing_cmd.rotate_master_key_cmd)
privacy_cmd.app.command("doctor")(sealing_cmd.doctor)
data_cmd.app.command("decrypt")(sealing_cmd.decrypt)
# Running a deployment (gdpr_cmd): records, notice, retention, notifications, recipients, audit.
privacy_cmd.app.command("records")(gdpr_cmd.records)
privacy_cmd.app.command("notice")(gdpr_cmd.notice)
privacy_cmd.app.command("enforce")(gdpr_cmd.enforce)
privacy_cmd.app.command("notify")(gdpr_cmd.notify)
privacy_cmd.app.add_typer(gdpr_cmd.recipients_app, name="recipients")
privacy_cmd.app.add_typer(gdpr_cmd.audit_app, name="audit")
