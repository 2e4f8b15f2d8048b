"""``visage privacy``: subjects, consent, rights requests, erasure certificates, the ledger."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from visage_ml.app.cli.common import (
    UserError,
    console,
    emit_json,
    err_console,
    project,
    refuse_plaintext_inside,
    setup_logging,
    user_errors,
)
from visage_ml.config import PURPOSES, load_params
from visage_ml.io import atomic_write_text
from visage_ml.privacy import certificate_page as cp
from visage_ml.privacy.certificate import (
    CONSISTENT_ONLY,
    INVALID,
    MSG_UNPINNED_DATE,
    models_retrained_event,
    verify_offline,
)
from visage_ml.privacy.consent import CONSENT_PURPOSES, ConsentReceipt, sha256_text
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.documents import notice_for_receipts
from visage_ml.privacy.keys import load_public_key
from visage_ml.privacy.ledger import LedgerError, utc_now
from visage_ml.privacy.outbox import NO_ADDRESS, Outbox
from visage_ml.privacy.records import plural
from visage_ml.privacy.requests import (
    RequestBook,
    UnknownRequestError,
    check_code,
    failure_hint,
)
from visage_ml.rights import lineage
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.export import Delivery, export_subject
from visage_ml.rights.rectify import (
    MSG_REMOVED_WHILE_RESTRICTED,
    REMOVED_WHILE_RESTRICTED,
    lift_note,
)
from visage_ml.rights.rectify import rectify as do_rectify
from visage_ml.rights.runner import restrict as restrict_request
from visage_ml.rights.runner import run_request

app = typer.Typer(
    help=(
        "Data-subject rights and their proof: subjects, consent, requests with deadlines, "
        "export, rectification, restriction, objection, erasure with signed certificates, the "
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
CONSENT_PURPOSE_HELP = (
    f"Purpose ({', '.join(CONSENT_PURPOSES)}); repeat for several. Default: all of these "
    "(analytics rests on no one's consent: it identifies no one)."
)
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
    purpose: list[str] = typer.Option(None, "--purpose", "-p", help=CONSENT_PURPOSE_HELP),
    notice_version: str = typer.Option(
        None, help="Version of the notice shown (with --notice-file; default its hash)."
    ),
    notice_file: Path = typer.Option(
        None,
        help="The notice text shown; its SHA-256 is recorded. Default: the notice in force, "
        "rendered from privacy/records.yaml (`visage privacy notice`).",
    ),
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
        if notice_file:
            notice_hash = sha256_text(notice_file.read_bytes())
            notice_version = notice_version or f"file-{notice_hash[:16]}"
        else:
            notice_version, notice_hash = notice_for_receipts(core.paths)
        receipt = ConsentReceipt(
            controller=params.project.controller,
            controller_contact=params.project.controller_contact,
            purposes=tuple(purpose or CONSENT_PURPOSES),
            notice_version=notice_version,
            notice_hash=notice_hash,
            collection_method=method,
            given_at=utc_now(),
            language=language,
            jurisdiction=jurisdiction,
            evidence_hash=core.evidence_digest(pid, evidence.read_bytes()) if evidence else None,
        )
        entry = core.give_consent(pid, receipt)
    _done(
        as_json,
        {"seq": entry.seq, "receipt_hash": receipt.digest(), "purposes": list(receipt.purposes)},
        f"consent recorded for {pid}: {', '.join(receipt.purposes)} (ledger seq {entry.seq})",
    )


@consent_app.command("check-evidence")
def consent_check_evidence(
    pid: str = typer.Argument(..., help="The subject's pid."),
    evidence: Path = typer.Argument(..., exists=True, dir_okay=False, help="E.g. the signed form."),
    as_json: bool = JSON_OPT,
) -> None:
    """Whether FILE is the evidence a consent of PID recorded (exit 1 when not).

    The receipt names the evidence by an HMAC under the subject's data key: checkable while
    the subject is on record, meaningless once they are erased.
    """
    with user_errors():
        found = _core().evidence_matches(pid, evidence.read_bytes())
    _done(
        as_json,
        {"pid": pid, "matches": found},
        f"{evidence.name} {'is' if found else 'is not'} the evidence of a consent of {pid}",
    )
    if not found:
        raise typer.Exit(1)


@consent_app.command("withdraw")
def consent_withdraw(
    pid: str = typer.Argument(..., help="The subject's pid."),
    purpose: list[str] = typer.Option(None, "--purpose", "-p", help=CONSENT_PURPOSE_HELP),
    as_json: bool = JSON_OPT,
) -> None:
    """Withdraw consent (Art. 7(3)); the pipeline becomes stale in `dvc status`.

    Appends consent.withdrawn and refreshes data/registry/consents.parquet; refused, with
    nothing appended, when no purpose named has a consent given now.
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

    Appends restriction.set and refreshes the consent snapshot. Recorded as a completed
    restriction request: the subject is told, and each registered recipient gets its Art. 19
    notice (`visage privacy notify` delivers them). Refused, with nothing appended, when the
    subject is restricted already.
    """
    with user_errors():
        core = _core()
        st = restrict_request(core.paths, pid, core=core, reason_code=reason_code)
    seq = st.outcome["seq"]
    out = {"seq": seq, "request_id": st.request_id}
    _told(core, st.request_id, as_json, out)
    _done(as_json, out, f"{pid} restricted (seq {seq}, request {st.request_id})")


@app.command("lift")
def lift(
    pid: str = typer.Argument(..., help="The subject's pid."), as_json: bool = JSON_OPT
) -> None:
    """Lift a restriction: the subject is told first (Art. 18(3)), then restriction.lifted is
    appended, recorded as a completed restriction request (recipients told, Art. 19).

    A template that a rectification removed during the restriction is made again from the
    rectified images, or the output says that the subject must be enrolled again."""
    with user_errors():
        core = _core()
        st = restrict_request(core.paths, pid, core=core, lift=True)
    seq = st.outcome["seq"]
    note = lift_note(pid, st.outcome)
    _done(
        as_json,
        {
            "seq": seq,
            "request_id": st.request_id,
            "template": st.outcome.get("gallery"),
            "note": note,
        },
        f"restriction of {pid} lifted (seq {seq}; request {st.request_id})"
        + (f"\n{note}" if note else ""),
    )


@app.command("object")
def object_(
    pid: str = typer.Argument(..., help="The subject's pid."),
    purpose: list[str] = typer.Option(None, "--purpose", "-p", help=PURPOSE_HELP),
    as_json: bool = JSON_OPT,
) -> None:
    """Record an objection (Art. 21) to purposes. Appends objection; refreshes the snapshot.

    Refused, with nothing appended, when the subject already objects to each purpose named.
    """
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

    with user_errors():
        # The diagnostic itself must open a ledger the fail-closed check refuses.
        core = PrivacyCore(project(), check=False)
        pub = load_public_key(public_key) if public_key else None
        result = core.ledger.verify(pub, all_signatures=not fast)
        witnessed: list[dict[str, Any]] = []
        witness_sets: list[dict[str, Any]] = []
        problem = None
        if result.ok:
            try:
                witness_sets = core.witnessing.history()
                witnessed = core.witnessing.check(full=True)
            except LedgerError as exc:
                problem = str(exc)
    if as_json:
        emit_json(
            {
                **result.__dict__,
                "checkpoints": witnessed,
                "checkpoint_problem": problem,
                "witness_sets": witness_sets,
            }
        )
    else:
        console.print(result.message(), highlight=False)
        for c in witnessed:
            cosigned = ", ".join(c.get("cosigned_by") or []) or "-"
            console.print(
                f"  consistent with the checkpoint of size {c.get('size')} in {c['source']} "
                f"(cosigned by {cosigned})",
                highlight=False,
            )
        for w in witness_sets:
            console.print(f"  {_witness_set_line(w)}", highlight=False)
        if problem:
            console.print(f"[red]checkpoint check FAILED[/]: {escape(problem)}", highlight=False)
    if not result.ok or problem:
        raise typer.Exit(1)


def _witness_set_line(w: dict[str, Any]) -> str:
    """One ``witness.set`` entry of :meth:`~visage_ml.privacy.witnessed.Witnessing.history`."""
    changes = []
    if w["added"]:
        changes.append("added " + ", ".join(w["added"]))
    if w["removed"]:
        changes.append("removed " + ", ".join(w["removed"]))
    reason = f" (reason {w['reason']})" if w["reason"] else ""
    changed = "; ".join(changes) or "quorum changed"
    now = ", ".join(w["witnesses"]) or "none"
    line = (
        f"witnesses at entry {w['seq']} ({w['time']}, by {w['actor'] or '?'}): {changed}{reason}; "
        f"now {now}, {w['needed']} cosignature(s) needed"
    )
    if w.get("lost"):
        line += f"\n  [red]{escape(_lost_line(w['lost'], w['seq']))}[/]"
    return line


def _lost_line(lost: Sequence[str], seq: int) -> str:
    return (
        f"LOST: {', '.join(lost)} could not be read when removed: a rollback of the ledger made "
        f"before entry {seq} shows only through a newer checkpoint of a witness left"
    )


@app.command("checkpoint")
def checkpoint(as_json: bool = JSON_OPT) -> None:
    """Append a signed Merkle tree head (RFC 9162) and have the witnesses cosign a checkpoint.

    The checkpoint (C2SP signed note) covers every entry so far and goes to
    privacy/checkpoints/latest; each witness in params.yaml (privacy.witness) checks that it
    extends the tree it saw last before cosigning. Exit code 2 when too few witnesses cosigned.
    """
    with user_errors():
        core = _core()
        entry = core.ledger.checkpoint()
        witnessed = core.checkpoint_and_witness()
    cp = witnessed.checkpoint
    _done(
        as_json,
        {
            "seq": entry.seq,
            **entry.payload,
            "checkpoint": {"origin": cp.origin, "size": cp.size, "root": cp.root.hex()},
            "cosigned_by": witnessed.cosigners,
        },
        f"tree head (ledger entry {entry.seq}): the {entry.payload['size']} entries before it, "
        f"root {entry.payload['root']}"
        f"\ncheckpoint {cp.origin} size {cp.size} (the tree head included) cosigned by "
        f"{', '.join(witnessed.cosigners) or 'no witness'}",
    )


@app.command("rotate-ledger-key")
def rotate_ledger_key(
    announce: bool = typer.Option(
        False,
        "--announce",
        help="Only show the last rotation to the witnesses that did not accept it yet.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Replace the ledger signing key, as a signed event, and tell the witnesses.

    Appends ledger.key_rotated, signed by the old key and carrying the new key's signature;
    secrets/ledger.key and privacy/ledger.pub become the new key (the old one is kept as
    secrets/ledger.key.previous until every witness pinned the new key). Verification follows
    the key history. Exit code 2 when a witness did not accept it (run again with --announce).
    """
    with user_errors():
        core = _core()
        if announce:
            problems = core.announce_rotation()
            seq = None
        else:
            entry, problems = core.rotate_ledger_key()
            seq = entry.seq
        fingerprint = core.ledger.key_chain().fingerprints()[-1]
    _done(
        as_json,
        {"seq": seq, "fingerprint": fingerprint, "problems": problems},
        (f"ledger key rotated (seq {seq}); " if seq is not None else "")
        + f"new key fingerprint {fingerprint}",
    )
    if problems:
        for p in problems:
            err_console.print(f"[red]witness[/]: {escape(p)}", highlight=False)
        err_console.print("run `visage privacy rotate-ledger-key --announce` when they answer")
        raise typer.Exit(2)


@app.command("remove-witness")
def remove_witness(
    names: list[str] = typer.Argument(
        None,
        help="The witnesses let go: the name `verify-ledger` shows, the vkey, or the path or URL "
        "as configured.",
    ),
    reason: str = typer.Option(
        ..., "--reason", help="Why, as a code (e.g. decommissioned); the ledger keeps it."
    ),
    quorum: int = typer.Option(
        None,
        "--quorum",
        help="Record a lower privacy.witness.quorum (set it in params.yaml first).",
    ),
    lost_for_good: bool = typer.Option(
        False,
        "--lost-for-good",
        help="Record the removal of a witness that cannot be read (its volume or host lost "
        "for good); the ledger and verify-ledger then say so, for good.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Record on the ledger that witnesses left, or that fewer cosignatures are needed.

    The ledger records its witnesses and quorum (a witness.set entry); while params.yaml
    (privacy.witness) lacks one of them or asks fewer cosignatures, every process refuses the
    ledger, as it does while a recorded directory witness's folder holds no witness or another
    key. Take the witness out of params.yaml (or lower the quorum there; a folder that lost its
    witness stays), then run this: it appends a witness.set entry as params.yaml now has it (a
    new witness in that folder included), witnessed by the remaining witnesses and, when
    reachable, by the ones let go, so that they learn it. `visage privacy verify-ledger` shows
    every change. A witness that cannot be read now (volume unmounted, host down, its state
    damaged) is not removed: bring it back first, or, when it is lost for good, say so with
    --lost-for-good (recorded). Exit code 2 when refused or too few witnesses cosigned.
    """
    with user_errors():
        check_code(reason, "the reason")
        # The removal checks the ledger itself: the usual open check refuses until it is done.
        core = PrivacyCore(project(), check=False)
        record, witnessed, told = core.remove_witnesses(
            names or [], quorum=quorum, reason=reason, lost_for_good=lost_for_good
        )
    lines = [
        f"witnesses recorded at entry {record.seq} (reason {record.reason}): "
        f"{', '.join(w.name for w in record.witnesses) or 'none'}, "
        f"{record.needed} cosignature(s) needed; checkpoint of {witnessed.checkpoint.size} "
        f"entries cosigned by {', '.join(witnessed.cosigners) or 'no witness'}"
    ]
    for name, cosigned in told.items():
        lines.append(
            f"{name} was told (it cosigned the record)"
            if cosigned
            else f"{name} could not be reached and was not told: its copy stays as it was"
        )
    if record.lost:
        lines.append(_lost_line([w.name for w in record.lost], record.seq))
    _done(
        as_json,
        {
            "seq": record.seq,
            "witnesses": [w.name for w in record.witnesses],
            "quorum": record.quorum,
            "reason": record.reason,
            "told": told,
            "lost": [w.name for w in record.lost],
            "cosigned_by": witnessed.cosigners,
        },
        "\n".join(lines),
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


# ---------------------------------------------------------------------------------------------
# Requests and rights (Art. 12, 15-21): lifecycle, export, rectification, erasure, certificates
# ---------------------------------------------------------------------------------------------

request_app = typer.Typer(
    help=(
        "Data-subject requests: record, verify, extend, deny, run. Each transition is a signed "
        "ledger event; state is folded from the ledger."
    ),
    no_args_is_help=True,
)
app.add_typer(request_app, name="request")
REQUEST_OPT = typer.Option(
    None,
    "--request",
    "-r",
    help="The verified request this answers (default: record one for the DPO now).",
)
# export: -r is the age recipient, as in `age -r` (and as it always answered there).
EXPORT_REQUEST_OPT = typer.Option(
    None,
    "--request",
    help="The verified request this answers (default: record one for the DPO now).",
)


@contextlib.contextmanager
def _rights_errors() -> Iterator[None]:
    """Request lookups and state errors as one-line user errors."""

    with user_errors():
        try:
            yield
        except UnknownRequestError as exc:
            raise UserError(str(exc)) from None


def _book() -> Any:

    return RequestBook(_core())


MSG_EXPORT_MISSING = (
    "\n{n} photograph(s) the raw table lists for the subject could not be read (deleted, or "
    "`dvc checkout` not run): named in the bundle's subject.json, not in it; restore them "
    "(`dvc checkout`) and answer a new request to hand them over"
)
MSG_NOT_TOLD = (
    "the subject was not told: they have no contact address in the vault (`visage privacy "
    "subject add --contact`); reach them another way and keep a record of it"
)


def _told(core: Any, request_id: str | None, as_json: bool, out: dict[str, Any]) -> None:
    """Say so when the message a request command queued for the subject had no address (with
    --json, as ``subject_not_told`` in ``out``)."""
    if not request_id or Outbox(core).subject_message(request_id) != NO_ADDRESS:
        return
    if as_json:
        out["subject_not_told"] = MSG_NOT_TOLD
    else:
        err_console.print(f"[yellow]warning[/]: {MSG_NOT_TOLD}", highlight=False)


def _request_line(st: Any, now: Any) -> str:
    if st.is_open:
        days = st.days_left(now)
        late = f"[red]OVERDUE by {plural(-days, 'day')}[/]"
        when = late if st.overdue(now) else f"{plural(days, 'day')} left"
    else:
        when = st.status
    failed = f"  [red]failed: {st.failure['code']}[/]" if st.is_open and st.failure else ""
    # A receipt the registry did not know of yet: a reviewer may ask for the letter.
    early = (
        f"  [yellow]received before registration ({(st.subject_added_at or '')[:10]})[/]"
        if st.received_before_registration
        else ""
    )
    return (
        f"{st.request_id}  {st.pid}  {st.right:<13} {st.status:<11} "
        f"deadline {st.deadline[:10]}  {when}{failed}{early}"
    )


@app.command("requests")
def requests_list(
    all_: bool = typer.Option(False, "--all", help="Also closed (completed, denied) requests."),
    pid: str = typer.Option(None, "--pid", help="Only this subject's requests."),
    as_json: bool = JSON_OPT,
) -> None:
    """List open requests, nearest deadline first, with days left; flag overdue ones.

    Writes nothing. Exit code 0 (overdue requests are flagged, not an error).
    """
    with _rights_errors():
        book = _book()
        clock = book.clock()
        clock.warn()  # a host clock behind the ledger or the witnesses
        now = clock.time
        items = book.all(pid=pid) if all_ else book.open(pid=pid)
    if as_json:
        emit_json([{**s.to_dict(now), "failure_hint": failure_hint(s)} for s in items])
        return
    for st in items:
        console.print(_request_line(st, now), highlight=False)
        hint = failure_hint(st)
        if hint:
            console.print(f"    {escape(hint)}", highlight=False)
    overdue = sum(1 for s in items if s.overdue(now))
    console.print(f"{len(items)} request(s){f', {overdue} overdue' if overdue else ''}")


@request_app.command("new")
def request_new(
    pid: str = typer.Argument(..., help="The subject's pid."),
    right: str = typer.Option(
        ...,
        "--right",
        help="access, portability, rectification, erasure, restriction or objection.",
    ),
    received_at: str = typer.Option(
        None,
        "--received-at",
        help="When it arrived (ISO 8601; default now), before the subject was added too.",
    ),
    channel: str = typer.Option("unspecified", help="How it arrived, as a code (email, ...)."),
    purpose: list[str] = typer.Option(None, "--purpose", "-p", help="Objection: " + PURPOSE_HELP),
    lift: bool = typer.Option(False, "--lift", help="Restriction: the subject asks to lift it."),
    as_json: bool = JSON_OPT,
) -> None:
    """Record a request (status received); the deadline is one month from receipt."""
    details: dict[str, Any] = {}
    if right == "objection":
        details["purposes"] = list(purpose or PURPOSES)
    if right == "restriction":
        details["action"] = "lift" if lift else "set"
    with _rights_errors():
        book = _book()
        st = book.receive(pid, right, received_at=received_at, details=details, channel=channel)
    out = st.to_dict()
    _told(book.core, st.request_id, as_json, out)
    _done(as_json, out, f"request {st.request_id} ({right}) received; deadline {st.deadline}")


@request_app.command("verify")
def request_verify(
    request_id: str = typer.Argument(..., help="The request id."),
    method: str = typer.Option("identity_verified", help="How identity was verified (a code)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Record that the requester's identity was verified (Art. 12(6))."""
    with _rights_errors():
        st = _book().verify(request_id, method=method)
    _done(as_json, st.to_dict(), f"request {request_id} verified")


@request_app.command("extend")
def request_extend(
    request_id: str = typer.Argument(..., help="The request id."),
    months: int = typer.Option(None, "--months", help="Calendar months added to the deadline."),
    days: int = typer.Option(None, "--days", help="Days added to the deadline (or --months)."),
    reason: str = typer.Option(..., "--reason", help="Why, as a code (e.g. complex_request)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Extend the deadline (Art. 12(3): before it passes, by two further months at most, with a
    reason); the subject is told, with the reasons."""
    with _rights_errors():
        book = _book()
        st = book.extend(request_id, months=months, days=days, reason_code=reason)
    out = st.to_dict()
    _told(book.core, request_id, as_json, out)
    _done(as_json, out, f"request {request_id}: new deadline {st.deadline}")


@request_app.command("deny")
def request_deny(
    request_id: str = typer.Argument(..., help="The request id."),
    reason: str = typer.Option(
        ..., "--reason", help="Why, as a code (e.g. manifestly_unfounded, art17_3_b)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Refuse a request with a reason code; a denied erasure lifts its processing stop."""
    with _rights_errors():
        book = _book()
        st = book.deny(request_id, reason_code=reason)
    out = st.to_dict()
    _told(book.core, request_id, as_json, out)
    _done(as_json, out, f"request {request_id} denied ({reason})")


@request_app.command("show")
def request_show(
    request_id: str = typer.Argument(..., help="The request id."), as_json: bool = JSON_OPT
) -> None:
    """Show a request: status, deadline, history, outcome, and where its last message to the
    subject stands (no_address, queued, retrying, delivered, failed). Writes nothing."""
    with _rights_errors():
        book = _book()
        st = book.get(request_id)
        doc = st.to_dict(book.now())
        doc["subject_message"] = Outbox(book.core).subject_message(request_id)
    if as_json:
        emit_json(doc)
        return
    console.print(_request_line(st, book.now()), highlight=False)
    for h in doc["history"]:
        console.print(f"  seq {h['seq']:>6}  {h['time']}  {h['event']}", highlight=False)
    if doc["subject_message"] is not None:
        console.print(f"  message to the subject: {doc['subject_message']}", highlight=False)
    hint = failure_hint(st)
    if hint:
        console.print(escape(hint), highlight=False)


@request_app.command("run")
def request_run(
    request_id: str = typer.Argument(..., help="A verified request."), as_json: bool = JSON_OPT
) -> None:
    """Carry out a verified request: export, restriction, objection or erasure.

    Rectification needs the corrected values: use `visage privacy rectify PID --request ID`.
    """

    setup_logging()
    with _rights_errors():
        result = run_request(project(), request_id)
    obj = result.to_dict() if hasattr(result, "to_dict") else {"result": str(result)}
    _done(as_json, obj, f"request {request_id} done")


@app.command("export")
def export(
    pid: str = typer.Argument(..., help="The subject's pid."),
    request_id: str = EXPORT_REQUEST_OPT,
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Bundle to write (default privacy/exports/<request id>.zip.age; with --plaintext "
        "<request id>.zip.sealed, kept under the subject's data key).",
    ),
    portability: bool = typer.Option(
        False, "--portability", help="Record the request as Art. 20 portability."
    ),
    recipient: list[str] = typer.Option(
        None,
        "--recipient",
        "-r",
        help="The requester's age public key (age1...); repeat for several.",
    ),
    passphrase_file: Path = typer.Option(
        None, "--passphrase-file", help="Encrypt with the passphrase in this file (age scrypt)."
    ),
    plaintext: bool = typer.Option(
        False,
        "--plaintext",
        help="Hand the zip out unencrypted (recorded in the ledger with its hash).",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Access / portability export (Art. 15, 20): one zip with everything about the subject.

    manifest.json (hashes), subject.json (identity, consents, attributes), images/, the
    biometric template(s) (base64 float32, model id and version, how to compare them),
    processing records, and schema.json, encrypted for the requester in the age format
    (--recipient or --passphrase-file; open with `age -d`). Written atomically with mode 0600;
    completes the request with a signed receipt.
    """

    with _rights_errors():
        if plaintext:
            refuse_plaintext_inside(project(), out)
        phrase = None
        if passphrase_file is not None:
            phrase = passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
        delivery = Delivery(
            recipients=tuple(recipient or ()), passphrase=phrase, plaintext=plaintext
        )
        core = _core()
        result = export_subject(
            project(),
            pid,
            out=out,
            request_id=request_id,
            core=core,
            right="portability" if portability else "access",
            delivery=delivery,
        )
    shown = result.to_dict()
    _told(core, result.request_id, as_json, shown)
    _done(
        as_json,
        shown,
        f"{result.path} written ({result.images} images, {result.templates} template(s); "
        f"{result.delivery}; sha256 {result.sha256}); request {result.request_id} completed"
        + (MSG_EXPORT_MISSING.format(n=result.images_missing) if result.images_missing else "")
        + (
            f"\nkept sealed under the subject's data key: hand it out with `visage data decrypt "
            f"{result.path} --out FILE`"
            if result.path is not None and result.path.name.endswith(".sealed")
            else ""
        ),
    )


@app.command("rectify")
def rectify(
    pid: str = typer.Argument(..., help="The subject's pid."),
    request_id: str = REQUEST_OPT,
    age: int = typer.Option(None, "--age", help="Corrected age in years."),
    gender: str = typer.Option(None, "--gender", help="Corrected gender (female, male)."),
    group: str = typer.Option(None, "--group", help="Corrected demographic group label."),
    image: list[str] = typer.Option(
        None, "--image", help="IMAGE_ID=FILE: replace an image (repeat for several)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Rectification (Art. 16): correct attributes or replace images through the raw store.

    The ledger records before/after hashes; `dvc add data/raw` makes derived data stale; the
    subject is re-enrolled in the gallery from the corrected images. A restricted subject
    (Art. 18(1)(a)) is rectified too: their old template is removed, and `visage privacy lift`
    makes it again from the corrected images.
    """

    attributes = {
        k: v for k, v in {"age": age, "gender": gender, "group": group}.items() if v is not None
    }
    setup_logging()
    with _rights_errors():
        images = {}
        for item in image or []:
            image_id, sep, file = item.partition("=")
            if not sep:
                raise UserError(f"--image takes IMAGE_ID=FILE, not {item!r}")
            images[image_id] = Path(file).read_bytes()
        result = do_rectify(
            project(),
            pid,
            attributes=attributes,
            images=images,
            request_id=request_id,
            core=(core := _core()),
        )
    shown = result.to_dict()
    note = (
        MSG_REMOVED_WHILE_RESTRICTED.format(pid=pid)
        if result.gallery == REMOVED_WHILE_RESTRICTED
        else None
    )
    shown["note"] = note
    _told(core, result.request_id, as_json, shown)
    _done(
        as_json,
        shown,
        f"{pid} rectified ({', '.join(result.fields) or 'images'}); gallery: {result.gallery}; "
        f"request {result.request_id} completed" + (f"\n{note}" if note else ""),
    )


@app.command("erase")
def erase(
    pid: str = typer.Argument(..., help="The subject's pid."),
    request_id: str = REQUEST_OPT,
    received_at: str = typer.Option(
        None, "--received-at", help="When the request arrived (ISO 8601; default now)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Erasure (Art. 17) everywhere, ending with a signed certificate.

    Gallery template and key, identity vault, data/raw (and `dvc add`), DVC cache, remotes and
    site cache, processed data, MLflow; the certificate goes to privacy/certificates/.
    Interrupted? `visage privacy resume` finishes it.
    """

    setup_logging()
    with _rights_errors():
        core = _core()
        er = Erasure(project(), core=core)
        result = er.run(request_id) if request_id else er.erase(pid, received_at=received_at)
    shown = result.to_dict()
    _told(core, result.request_id, as_json, shown)
    _done(
        as_json,
        shown,
        f"{pid} erased: {_outcomes(result.certificate)}; certificate {result.certificate_path}",
    )


def _outcomes(certificate: dict[str, Any]) -> str:
    """The certificate's artefacts counted by outcome ("3 key destroyed, 12 crypto-shredded")."""
    artefacts = (certificate.get("claims") or {}).get("artefacts") or []
    counts = Counter(str(a.get("outcome") or "erased") for a in artefacts)
    if not counts:
        return "nothing of the subject was found"
    parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    return f"{sum(counts.values())} artefacts ({parts})"


@app.command("resume")
def resume(as_json: bool = JSON_OPT) -> None:
    """Finish every interrupted erasure (after a crash or kill at any step)."""

    setup_logging()
    with _rights_errors():
        results = Erasure(project(), core=_core()).resume()
    if as_json:
        emit_json([r.to_dict() for r in results])
        return
    for r in results:
        resumed = ", ".join(r.resumed_steps) or "from a step boundary"
        console.print(
            f"{r.request_id} finished (resumed: {resumed}): {r.certificate_path}",
            highlight=False,
        )
    console.print(f"{len(results)} erasure(s) finished")


@app.command("verify-certificate")
def verify_certificate_cmd(
    cert: Path = typer.Argument(..., help="The certificate (privacy/certificates/<id>.json)."),
    public_key: Path = typer.Option(
        None, help="The controller's ledger public key (default privacy/ledger.pub)."
    ),
    no_scan: bool = typer.Option(
        False, "--no-scan", help="Skip hashing the checkout's files (signature and proof only)."
    ),
    offline: bool = typer.Option(
        False,
        "--offline",
        help="Check the proof bundle alone, with no access to a project: signature, entries, "
        "the witnessed checkpoint and its cosignatures (pin keys with --public-key and "
        "--witness-key).",
    ),
    witness_key: list[str] = typer.Option(
        None,
        "--witness-key",
        help="A witness verifier key that must have cosigned (repeatable; in the checkout, "
        "default: one of its witnesses, configured or recorded in its ledger).",
    ),
    origin: str = typer.Option(
        None, "--origin", help="The controller's published log name to require."
    ),
    request_id: str = typer.Option(
        None, "--request-id", help="Fail unless the certificate is for this erasure request."
    ),
    subject: str = typer.Option(
        None, "--subject", help="Fail unless the certificate is for this subject (pid)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Verify an erasure certificate with only the certificate, the public key and the checkout.

    Checks the encoding, the Ed25519 signature, the ledger entries, the Merkle inclusion proof
    and the witnessed checkpoint (cosigned by the witnesses pinned with --witness-key, else by
    one the checkout is configured with or its ledger recorded; of the log --origin names),
    then hashes every file under data/, gallery/, mlruns/, models/, privacy/ (the destroyed
    keys and vault files too), reports/, notebooks/ and at the project's top, the DVC cache,
    the configured remotes and DVC's site cache for the listed content hashes (a file of a size
    none of that content has cannot be a copy: looked at, not read; outside the checkout: not
    checked, a failed check), and says whether the models in use were trained without the
    subject. Exit code 0 when valid, 1 when not, 3 when every check passed but a
    key, the witnesses or the log name came from the certificate itself (CONSISTENT ONLY, NOT
    AUTHENTICATED: pin them), 4 when every check passed but no witness cosigned within an hour
    of the completion (COMPLETION DATE NOT WITNESSED: the erasure is proven done by the time
    they cosigned, which it names).
    """

    with _rights_errors():
        if offline:
            report = verify_offline(
                cert, public_key=public_key, witness_keys=witness_key or (), origin=origin
            )
        else:
            report = verify_certificate(
                cert,
                root=project().root,
                public_key=public_key,
                scan=not no_scan,
                witness_keys=witness_key or (),
                origin=origin,
            )
        report.expect(request_id=request_id, pid=subject)
    if as_json:
        emit_json(report.to_dict())
    else:
        for c in report.checks:
            mark = "[green]ok[/]  " if c.ok else "[red]FAIL[/]"
            console.print(f"{mark} {c.name}: {c.detail}", highlight=False)
        for f in report.findings[:20]:
            console.print(f"     found: {f['path']} ({f['why']})", highlight=False)
        if report.models:
            console.print(f"models: {report.models['status']}", highlight=False)
        for text in report.notes:
            console.print(f"[yellow]note[/] {text}", highlight=False)
        verdict = report.verdict_line()
        if report.verdict == CONSISTENT_ONLY:
            undated = f"; {MSG_UNPINNED_DATE}" if report.completion else ""
            verdict += f" ({MSG_UNPINNED}{undated})"
        elif report.ok and report.notes:
            verdict += " (see the notes)"
        console.print(verdict, highlight=False)
        # What the claims admit, once they verified (a date not witnessed leaves them so).
        for text in report.conceded if report.verdict != INVALID else ():
            console.print(f"conceded: {text}", highlight=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


MSG_UNPINNED = (
    "a key, the witnesses or the log name came from the certificate itself, see the notes: pin "
    "--public-key, --witness-key and --origin with what the controller published"
)
MSG_NO_CHECKOUT = (
    "no ledger here ({ledger}): run inside the controller's checkout (or set VISAGE_PROJECT), "
    "or render a copy with --offline --public-key ledger.pub"
)
MSG_OUT_IS_CERT = "--out {out} is the certificate itself: write the page to another file"
MSG_NO_PUBLIC_KEY = (
    "no key file at {path}: give the controller's published ledger.pub (or ledger-keys.pem)"
)


@app.command("certificate-page")
def certificate_page_cmd(
    cert: Path = typer.Argument(..., help="The certificate (privacy/certificates/<id>.json)."),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Where to write the page (a folder: <request id>.html in it). Default: beside the "
        "certificate, <request id>.html.",
    ),
    offline: bool = typer.Option(
        False,
        "--offline",
        help="Render a copy with no access to the project: only the keys given are pinned "
        "(--public-key, --witness-key, --origin), and the models' status is the certificate's.",
    ),
    public_key: Path = typer.Option(
        None,
        help="The controller's ledger public key (default: the checkout's published key file).",
    ),
    witness_key: list[str] = typer.Option(
        None, "--witness-key", help="A witness verifier key that must have cosigned (repeatable)."
    ),
    origin: str = typer.Option(None, "--origin", help="The controller's published log name."),
    as_json: bool = JSON_OPT,
) -> None:
    """Render an erasure certificate as a readable HTML page for the DPO's file and the subject.

    The page names the request, the subject's pid (nothing else of them), the dates, what was
    erased counted by store and outcome, the models trained on the subject's data (stale or
    retrained), the ledger entry and the witnesses that cosigned, and which checks passed, made
    by whom and with which keys; it gives the certificate's SHA-256 and says the JSON is the
    proof. In the checkout it is checked with the controller's keys, and the page says that is
    the controller's own word, not an independent verification (the reader's offline verifier
    is); an erasure already writes it beside the certificate. Exit code 0 when every check
    passed (the page says "consistent only" when keys came from the certificate itself), 1 when
    the page says NOT VERIFIED (it is written either way), 2 on an error.
    """
    with _rights_errors():
        _, doc = cp.load_certificate(cert)  # a clear error before anything is opened or written
        if public_key is not None and not public_key.is_file():
            raise UserError(MSG_NO_PUBLIC_KEY.format(path=public_key))
        target = out if out is not None else cp.page_path(cert)
        if target.is_dir():
            target = target / cp.page_path(cert).name
        if target.resolve() == cert.resolve():
            raise UserError(MSG_OUT_IS_CERT.format(out=target))
        if offline:
            page = cp.render_page(
                cert,
                pins=cp.Pins(
                    public_key=public_key,
                    witness_keys=tuple(witness_key or ()),
                    origin=origin,
                    by="given on the command line",
                ),
            )
        else:
            paths = project()
            if not paths.ledger.is_file():
                raise UserError(MSG_NO_CHECKOUT.format(ledger=paths.ledger))
            core = _core()
            own = cp.controller_pins(core, cert)
            given = public_key is not None or bool(witness_key) or origin is not None
            pins = cp.Pins(
                public_key=public_key if public_key is not None else own.public_key,
                witness_keys=tuple(witness_key or ()) or own.witness_keys,
                origin=origin if origin is not None else own.origin,
                by=f"{'some given on the command line, ' if given else ''}{own.by}",
                # Keys given on the command line are the reader's choice: not the checkout's.
                own=not given,
                directory=own.directory,  # the checkout's kinds, whoever chose the keys
            )
            event = models_retrained_event(
                core.ledger, doc.get("request_id"), core.ledger.key_chain().public_keys()
            )
            # The event says they were retrained once; the models in use say whether still.
            retrained = lineage.page_retrained(
                paths, str(doc.get("pid")), doc.get("claims") or {}, event
            )
            page = cp.render_page(cert, pins=pins, retrained=retrained)
        atomic_write_text(target, page.html)
    headline = cp.HEADLINE.get(page.verdict, page.verdict)  # the page's own word
    _done(
        as_json,
        {
            "page": str(target),
            "request_id": page.request_id,
            "verdict": page.verdict,
            "certificate_sha256": page.sha256,
        },
        f"page {target}: certificate {page.request_id} {headline}",
    )
    if page.verdict == cp.NOT_VERIFIED:
        raise typer.Exit(1)


@app.command("lineage")
def lineage_cmd(
    pid: str = typer.Argument(None, help="The subject's pid (optional with --refresh)."),
    refresh: bool = typer.Option(
        False,
        "--refresh",
        help="Record erasure.models_retrained for erasures whose stale models were retrained.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Which data versions and models saw the subject (DVC lineage, ONNX metadata, MLflow).

    For an erased subject, the models their certificate lists and whether the models in use
    were retrained without them. A certificate that fails verification is not judged: --refresh
    records nothing for it, and both say so and exit 1.
    """

    if pid is None and not refresh:
        raise typer.BadParameter("give a PID, or --refresh")
    with _rights_errors():
        paths = project()
        core = _core()
        out: dict[str, Any] = {}
        if refresh:
            done = lineage.refresh(paths, core=core)
            out["upgraded"] = done.upgraded
            out["refused"] = [asdict(r) for r in done.refused]
        if pid is not None:
            out["lineage"] = _lineage_of(paths, core, pid)
    unverified = [r["reason"] for r in out.get("refused", [])]
    if pid is not None and out["lineage"].get("certificate_verified") is False:
        unverified.append(out["lineage"]["certificate_status"])
    if as_json:
        emit_json(out)
    else:
        _print_lineage(out, refresh=refresh)
        for reason in dict.fromkeys(unverified):
            err_console.print(f"[bold red]error:[/] {escape(reason)}", highlight=False)
    if unverified:
        raise typer.Exit(1)


def _print_lineage(out: dict[str, Any], *, refresh: bool) -> None:
    if refresh and (out["upgraded"] or not out["refused"]):
        ups = out["upgraded"]
        console.print(
            f"models retrained: certificate(s) {', '.join(ups)} upgraded"
            if ups
            else "no certificate to upgrade (models still stale, or none listed)",
            highlight=False,
        )
    doc = out.get("lineage")
    if doc is None or doc.get("certificate_verified") is False:
        return  # no verdict on a certificate that failed verification (said on stderr)
    for d in doc.get("data_versions", []):
        console.print(f"data   {d['kind']:<9} {d['md5']}  ({d['source']})", highlight=False)
    for m in doc.get("models", []):
        status = m.get("status", "")
        console.print(
            f"model  {m['kind']:<12} {m['model']} v{m['version']}  data {m['data_md5']}  {status}",
            highlight=False,
        )
    if not doc.get("models"):
        console.print(lineage.NO_MODEL_UNKNOWN if doc.get("notes") else lineage.NO_MODEL)
    for n in doc.get("notes", []):
        console.print(f"note: {n}", highlight=False)


def _lineage_of(paths: Any, core: PrivacyCore, pid: str) -> dict[str, Any]:
    state = core.subject(pid)
    if not state.erased:
        return lineage.subject_lineage(paths, pid).to_dict()
    for st in RequestBook(core).all(pid=pid):
        cert = paths.certificates / f"{st.request_id}.json"
        if st.right == "erasure" and cert.is_file():
            doc, why = lineage.verified_certificate(paths, cert, request_id=st.request_id, pid=pid)
            if doc is None:  # its claims, perhaps edited, are not shown as the lineage
                return {
                    "pid": pid,
                    "erased": True,
                    "certificate": str(cert),
                    "certificate_verified": False,
                    "certificate_status": why,
                }
            claims = doc.get("claims") or {}
            models = claims.get("models") or []
            check = lineage.check_certified(paths, pid, claims)
            status = lineage.models_verdict(
                recorded=st.models_retrained_seq is not None, clean=check.clean
            )
            return {
                "pid": pid,
                "erased": True,
                "certificate": str(cert),
                "certificate_verified": True,
                "data_versions": (claims.get("dataset") or {}).get("data_versions_with_subject")
                or [],
                "models": [{**m, "status": status} for m in models],
                "current_models_clean": check.clean,
                "notes": [
                    *(claims.get("lineage_notes") or []),
                    *(claims.get("store_notes") or []),
                    *filter(None, [lineage.restorable(paths, models)]),
                ],
            }
    return {"pid": pid, "erased": True, "data_versions": [], "models": [], "notes": []}
