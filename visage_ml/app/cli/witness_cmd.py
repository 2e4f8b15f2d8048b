"""``visage witness``: run a witness of privacy ledgers (C2SP tlog-witness) and manage its logs."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import typer

from visage_ml.app.cli.common import (
    UserError,
    console,
    emit_json,
    err_console,
    project,
    setup_logging,
    user_errors,
)
from visage_ml.privacy.checkpoint import NoteError
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.witness import (
    KEY_FILE,
    Witness,
    WitnessError,
    default_witness_dir,
    make_server,
    project_id,
)

app = typer.Typer(
    help=(
        "A witness of privacy ledgers: its own key and store (a folder, ideally on another "
        "volume or host) that cosigns a ledger's checkpoints only after checking they extend "
        "what it saw before, so nobody can roll the ledger back or fork it unnoticed. "
        "Folder: --dir, else $VISAGE_WITNESS_DIR, else ~/.local/share/visage-ml/witness."
    ),
    no_args_is_help=True,
)
MSG_NO_WITNESS = (
    "no witness in {dir}: give the witness's folder with --dir (as `visage witness init --dir` "
    "made it), or create one there with `visage witness init --dir {dir}`"
)
DIR_OPT = typer.Option(None, "--dir", help="The witness's folder (default: see above).")
JSON_OPT = typer.Option(False, "--json", help="Machine-readable JSON output.")


@contextlib.contextmanager
def _witness_errors() -> Iterator[None]:
    with user_errors():
        try:
            yield
        except (WitnessError, NoteError) as exc:
            raise UserError(str(exc)) from None


def _folder(folder: Path | None) -> Path:
    return (folder or default_witness_dir()).expanduser()


@app.command("init")
def init(
    folder: Path = DIR_OPT,
    name: str = typer.Option(
        None, "--name", help="Key name, e.g. witness.example.org/w1 (default: random)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Create the witness's key (once) and print its verifier key, which projects pin."""
    with _witness_errors():
        w = Witness.create(_folder(folder), name=name)
        vkey = w.verifier.vkey
    if as_json:
        emit_json({"dir": str(w.root), "name": w.name, "vkey": vkey})
    else:
        console.print(f"witness {w.name} in {w.root}", highlight=False)
        console.print(vkey, highlight=False, soft_wrap=True)


@app.command("add-log")
def add_log(
    vkey: str = typer.Argument(..., help="The log's key, as `visage witness log-key` prints it."),
    folder: Path = DIR_OPT,
) -> None:
    """Trust a ledger's key: cosign its checkpoints from now on (its name is the origin).

    Changes an existing witness only (`visage witness init` makes one): a mistyped or missing
    --dir must not create a second witness that trusts the log while the served one does not.
    """
    root = _folder(folder)
    with _witness_errors():
        if not (root / KEY_FILE).is_file():
            raise UserError(MSG_NO_WITNESS.format(dir=root))
        w = Witness(root)
        state = w.add_log(vkey)
    console.print(
        f"witness {w.name} in {w.root} now witnesses {state.origin} (size {state.size})",
        highlight=False,
    )


@app.command("release")
def release(
    project_dir: Path = typer.Argument(..., help="The project folder whose binding to release."),
    folder: Path = DIR_OPT,
    reason: str = typer.Option("", "--reason", help="Recorded with the release."),
) -> None:
    """Release a project folder's binding to its log (the witness operator's act, recorded).

    A witness binds each project folder to one log. A ledger rebuilt in that folder under a
    new key is refused until its operator releases the binding: do it only for a project
    re-created on purpose that holds none of the old project's personal data.
    """
    with _witness_errors():
        bound = Witness(_folder(folder)).release(project_id(project_dir), reason=reason)
    if bound is None:
        console.print("this witness holds no binding for that folder", highlight=False)
    else:
        console.print(f"released: the folder was bound to {bound} (recorded)", highlight=False)


@app.command("status")
def status(folder: Path = DIR_OPT, as_json: bool = JSON_OPT) -> None:
    """The witness's key and, per log, the size it last cosigned. Writes nothing."""
    root = _folder(folder)
    with _witness_errors():
        w = Witness(root)
        vkey = w.verifier.vkey
        logs = [
            {"origin": s.origin, "size": s.size, "root": s.root.hex(), "keys": s.keys}
            for s in w.logs()
        ]
    if as_json:
        emit_json({"dir": str(root), "vkey": vkey, "logs": logs})
        return
    console.print(f"witness {vkey}", highlight=False, soft_wrap=True)
    for entry in logs:
        console.print(f"  {entry['origin']}  size {entry['size']}", highlight=False)
    console.print(f"{len(logs)} log(s)")


@app.command("serve")
def serve(
    folder: Path = DIR_OPT,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(7380, help="Port to listen on."),
    log: list[str] = typer.Option(None, "--log", help="Also trust this log key (repeatable)."),
    verbose: bool = typer.Option(False, "--verbose", help="Log every request."),
) -> None:
    """Serve the witness over HTTP: POST /add-checkpoint (c2sp.org/tlog-witness).

    Everything it receives and returns is public (checkpoints, proofs, cosignatures); put it
    behind TLS (a reverse proxy) when it leaves the machine.
    """
    setup_logging(verbose)
    with _witness_errors():
        w = Witness.create(_folder(folder))
        for vkey in log or []:
            w.add_log(vkey)
        server = make_server(w, host, port)
    with contextlib.suppress(ValueError):
        if not ipaddress.ip_address(host).is_loopback:
            err_console.print(
                "note: plain HTTP off loopback; the content is public, but put the witness "
                "behind TLS so clients know they talk to it"
            )
    console.print(
        f"witness {w.name} on http://{host}:{server.server_address[1]} (folder {w.root})",
        highlight=False,
    )
    console.print(w.verifier.vkey, highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command("log-key")
def log_key(as_json: bool = JSON_OPT) -> None:
    """This project's ledger key as a log vkey, for `visage witness add-log` on a witness."""
    with _witness_errors():
        core = PrivacyCore(project())
        vkey = core.witnessing.log_verifier().vkey
        origin = core.witnessing.origin
    if as_json:
        emit_json({"origin": origin, "vkey": vkey})
    else:
        console.print(vkey, highlight=False, soft_wrap=True)
