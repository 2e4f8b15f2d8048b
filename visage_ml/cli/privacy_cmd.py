"""``visage privacy``: subjects, consent, restriction, objection, and the signed ledger."""

from __future__ import annotations

from pathlib import Path

import typer

from visage_ml.cli.common import console, emit_json, project, user_errors
from visage_ml.config import PURPOSES, load_params
from visage_ml.privacy.consent import ConsentReceipt, sha256_text
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import utc_now

app = typer.Typer(
    help=(
        "Data-subject rights and their proof: subjects, consent, restriction, objection, the "
        "signed ledger (privacy/ledger.jsonl) and the consent snapshot the pipeline reads."
    ),
    no_args_is_help=True,
)
subject_app = typer.Typer(
    help="Register and inspect subjects (pseudonymous pids).", no_args_is_help=True
)
consent_app = typer.Typer(help="Give or withdraw consent per purpose.", no_args_is_help=True)
app.add_typer(subject_app, name="subject")
app.add_typer(consent_app, name="consent")

PURPOSE_HELP = f"Purpose ({', '.join(PURPOSES)}); repeat for several. Default: all."
JSON_OPT = typer.Option(False, "--json", help="Machine-readable JSON output.")


def _core() -> PrivacyCore:
    return PrivacyCore(project())


def _done(as_json: bool, obj: dict, text: str) -> None:
    if as_json:
        emit_json(obj)
    else:
        console.print(text, highlight=False)


@subject_app.command("add")
def subject_add(
    ref: str = typer.Option(
        None, "--ref", help="External reference (e.g. employee number); vault only."
    ),
    contact: str = typer.Option(None, "--contact", help="How to reach the subject; vault only."),
    as_json: bool = JSON_OPT,
) -> None:
    """Register a subject and print their new pid.

    The reference and contact are encrypted into the identity vault (privacy/vault/) under the
    subject's own key; the ledger records only the pid. Refreshes the consent snapshot.
    """
    with user_errors():
        pid = _core().add_subject(external_ref=ref, contact=contact, source="manual")
    _done(as_json, {"pid": pid}, pid)


@subject_app.command("show")
def subject_show(
    pid: str = typer.Argument(..., help="The subject's pid."),
    reveal: bool = typer.Option(
        False, "--reveal", help="Also decrypt the vault record (DPO only)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Show a subject's state per purpose (with --reveal, their vault record). Writes nothing."""
    with user_errors():
        core = _core()
        state = core.subject(pid).to_dict()
        if reveal:
            try:
                state["vault"] = core.vault.get(pid)
            except KeyError:
                state["vault"] = None
    if as_json:
        emit_json(state)
        return
    flags = [n for n in ("restricted", "erasure_pending", "erased") if state[n]]
    console.print(f"{pid}  source={state['source']}  {' '.join(flags)}", highlight=False)
    for purpose, d in state["purposes"].items():
        mark = "[green]allowed[/]" if d["allowed"] else f"[red]denied[/] ({d['reason']})"
        console.print(f"  {purpose:<15} {mark}")
    if reveal:
        console.print(f"  vault: {state['vault']}", highlight=False)


@subject_app.command("list")
def subject_list(as_json: bool = JSON_OPT) -> None:
    """List registered subjects with their allowed purposes. Writes nothing."""
    with user_errors():
        states = [s.to_dict() for s in _core().registry]
    if as_json:
        emit_json(states)
        return
    for s in states:
        allowed = [p for p, d in s["purposes"].items() if d["allowed"]]
        state = "erased" if s["erased"] else ",".join(allowed) or "-"
        console.print(f"{s['pid']}  {state}", highlight=False)
    console.print(f"{len(states)} subjects")


@consent_app.command("give")
def consent_give(
    pid: str = typer.Argument(..., help="The subject's pid."),
    purpose: list[str] = typer.Option(None, "--purpose", "-p", help=PURPOSE_HELP),
    notice_version: str = typer.Option("v1", help="Version of the privacy notice shown."),
    notice_file: Path = typer.Option(None, help="The notice text; its SHA-256 is recorded."),
    evidence: Path = typer.Option(
        None, help="Evidence (e.g. signed form); only its SHA-256 is recorded."
    ),
    method: str = typer.Option("web-form", help="How consent was collected."),
    language: str = typer.Option("en", help="Language of the notice."),
    jurisdiction: str = typer.Option("EU", help="Jurisdiction of the consent."),
    as_json: bool = JSON_OPT,
) -> None:
    """Record explicit consent (Art. 6(1)(a) + 9(2)(a)) as a signed consent receipt.

    Appends consent.given to the ledger and refreshes data/registry/consents.parquet.
    """
    with user_errors():
        core = _core()
        params = load_params(core.paths.params)
        notice_hash = (
            sha256_text(notice_file.read_bytes())
            if notice_file
            else sha256_text(f"notice {notice_version}")
        )
        receipt = ConsentReceipt(
            controller=params.project.controller,
            controller_contact=params.project.controller_contact,
            purposes=tuple(purpose or PURPOSES),
            notice_version=notice_version,
            notice_hash=notice_hash,
            collection_method=method,
            given_at=utc_now(),
            language=language,
            jurisdiction=jurisdiction,
            evidence_hash=sha256_text(evidence.read_bytes()) if evidence else None,
        )
        entry = core.give_consent(pid, receipt)
    _done(
        as_json,
        {"seq": entry.seq, "receipt_hash": receipt.digest(), "purposes": list(receipt.purposes)},
        f"consent recorded for {pid}: {', '.join(receipt.purposes)} (ledger seq {entry.seq})",
    )


@consent_app.command("withdraw")
def consent_withdraw(
    pid: str = typer.Argument(..., help="The subject's pid."),
    purpose: list[str] = typer.Option(None, "--purpose", "-p", help=PURPOSE_HELP),
    as_json: bool = JSON_OPT,
) -> None:
    """Withdraw consent (Art. 7(3)); the pipeline becomes stale in `dvc status`.

    Appends consent.withdrawn and refreshes data/registry/consents.parquet.
    """
    with user_errors():
        entry = _core().withdraw_consent(pid, purpose or None)
    _done(
        as_json,
        {"seq": entry.seq, "purposes": entry.payload["purposes"]},
        f"consent withdrawn for {pid}: {', '.join(entry.payload['purposes'])} (seq {entry.seq})",
    )


@app.command("restrict")
def restrict(
    pid: str = typer.Argument(..., help="The subject's pid."),
    reason_code: str = typer.Option("subject_request", help="Why (a code, no free text)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Restrict processing (Art. 18): data kept, excluded from pipeline and serving.

    Appends restriction.set and refreshes the consent snapshot.
    """
    with user_errors():
        entry = _core().restrict(pid, reason_code=reason_code)
    _done(as_json, {"seq": entry.seq}, f"{pid} restricted (seq {entry.seq})")


@app.command("lift")
def lift(
    pid: str = typer.Argument(..., help="The subject's pid."), as_json: bool = JSON_OPT
) -> None:
    """Lift a restriction. Appends restriction.lifted and refreshes the consent snapshot."""
    with user_errors():
        entry = _core().lift(pid)
    _done(as_json, {"seq": entry.seq}, f"restriction of {pid} lifted (seq {entry.seq})")


@app.command("object")
def object_(
    pid: str = typer.Argument(..., help="The subject's pid."),
    purpose: list[str] = typer.Option(None, "--purpose", "-p", help=PURPOSE_HELP),
    as_json: bool = JSON_OPT,
) -> None:
    """Record an objection (Art. 21) to purposes. Appends objection; refreshes the snapshot."""
    with user_errors():
        entry = _core().object(pid, purpose or None)
    _done(
        as_json,
        {"seq": entry.seq, "purposes": entry.payload["purposes"]},
        f"objection of {pid} recorded: {', '.join(entry.payload['purposes'])} (seq {entry.seq})",
    )


@app.command("verify-ledger")
def verify_ledger(
    public_key: Path = typer.Option(None, help="Public key PEM (default privacy/ledger.pub)."),
    fast: bool = typer.Option(
        False,
        "--fast",
        help="Verify the signatures of anchors only (tree heads, last entry); the chain, which "
        "commits to every byte, is still checked in full.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Check the ledger's hash chain, signatures and tree heads; name the first bad entry.

    Exit code 0 when valid, 1 when not. Writes nothing.
    """
    from visage_ml.privacy.keys import load_public_key

    with user_errors():
        core = _core()
        pub = load_public_key(public_key) if public_key else None
        result = core.ledger.verify(pub, all_signatures=not fast)
    if as_json:
        emit_json(result.__dict__)
    else:
        console.print(result.message(), highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@app.command("checkpoint")
def checkpoint(as_json: bool = JSON_OPT) -> None:
    """Append a signed Merkle tree head (RFC 9162) over all ledger entries so far."""
    with user_errors():
        entry = _core().ledger.checkpoint()
    _done(
        as_json,
        {"seq": entry.seq, **entry.payload},
        f"tree head: size {entry.payload['size']} root {entry.payload['root']} (seq {entry.seq})",
    )


@app.command("snapshot")
def snapshot(as_json: bool = JSON_OPT) -> None:
    """Write data/registry/consents.parquet from the ledger (the pipeline's consent input)."""
    with user_errors():
        core = _core()
        changed = core.snapshot()
    _done(
        as_json,
        {
            "changed": changed,
            "as_of_seq": core.registry.as_of_seq,
            "path": str(core.paths.consents),
        },
        f"{core.paths.consents} {'updated' if changed else 'unchanged'} "
        f"(as of seq {core.registry.as_of_seq})",
    )
