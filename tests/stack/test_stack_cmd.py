"""`visage stack` on the command line: status, and errors that say what to do."""

from __future__ import annotations

import json
import socket

from typer.testing import CliRunner

from visage_ml.app.cli import app


def test_status_json_of_the_running_stack(stack, monkeypatch):
    monkeypatch.setenv("VISAGE_PROJECT", str(stack.root_project))
    result = CliRunner().invoke(app, ["stack", "status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert set(status) == {"postgres", "s3", "mlflow"}
    assert all(s["up"] for s in status.values())
    assert stack.postgres.password not in result.output


def test_port_in_use_is_refused_with_what_to_do(project, monkeypatch):
    from project_helpers import write_overrides

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        write_overrides(project / "params.yaml", {"stack.postgres.port": port})
        # The project folder is pytest's (0700 under root): only the port check may run.
        result = CliRunner().invoke(app, ["stack", "up", "--no-configure"])
    assert result.exit_code == 2
    assert f"port {port}" in result.output and "choose another port" in result.output
    assert "Traceback" not in result.output


def test_status_and_down_of_a_stack_never_started(project):
    from project_helpers import free_port_range, write_overrides

    from visage_ml.stack import proc

    write_overrides(
        project / "params.yaml",
        {
            "stack.postgres.port": proc.free_port(),
            "stack.s3.port": free_port_range(10),
            "stack.mlflow.port": proc.free_port(),
        },
    )
    runner = CliRunner()
    status = runner.invoke(app, ["stack", "status", "--json"])
    assert status.exit_code == 1, status.output
    assert not any(s["up"] for s in json.loads(status.output).values())
    down = runner.invoke(app, ["stack", "down"])
    assert down.exit_code == 0, down.output
    assert "no process left" in down.output
    assert not (project / "secrets" / "stack.json").exists()


def test_up_says_when_no_witness_is_run_by_someone_else(stack, monkeypatch):
    # The default witness is a folder on this host: going to the stack (production) with it
    # alone, the operator is told that certificates prove nothing against them.
    monkeypatch.setenv("VISAGE_PROJECT", str(stack.root_project))
    result = CliRunner().invoke(app, ["stack", "up", "--no-configure", "--json"])
    assert result.exit_code == 0, result.output
    notes = json.loads(result.output)["notes"]
    assert len(notes) == 1 and "someone else runs" in notes[0]
