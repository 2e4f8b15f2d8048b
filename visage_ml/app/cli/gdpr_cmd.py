"""``visage privacy`` operations of a running deployment: records of processing, notice and
sign, retention enforcement, notification delivery, the Art. 19 recipients register, the audit
log. Commands of the ``privacy`` group (registered in :mod:`visage_ml.app.cli`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from visage_ml.app.cli.common import (
    UserError,
    console,
    emit_json,
    project,
    setup_logging,
    user_errors,
)
from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_bytes, atomic_write_text, sha256_file
from visage_ml.privacy import auditlog
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.documents import (
    SIGN_PNG,
    draft_text,
    publish_notice,
    records_html,
    records_pdf,
    sign_pdf,
    sign_png,
)
from visage_ml.privacy.outbox import Outbox, Recipients
from visage_ml.privacy.records import ensure_records, records_of, records_path
from visage_ml.privacy.requests import parse_time
from visage_ml.rights.enforce import Enforcer
from visage_ml.rights.notify import Notifier

JSON_OPT = typer.Option(False, "--json", help="Machine-readable JSON output.")
OUT_HELP = "Folder to write to (default reports/privacy)."
MSG_AT_APPLY = "--at plans as of another time and cannot be combined with --apply"

recipients_app = typer.Typer(
    help="The Art. 19 register: recipients told of every rectification, erasure and restriction.",
    no_args_is_help=True,
)
audit_app = typer.Typer(
    help="The HTTP audit log (privacy/audit.jsonl): a hash chain without personal data.",
    no_args_is_help=True,
)


def _out(paths: ProjectPaths, out: Path | None) -> Path:
    folder = out if out is not None else paths.reports / "privacy"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def records(
    out: Path = typer.Option(None, "--out", "-o", help=OUT_HELP),
    as_json: bool = JSON_OPT,
) -> None:
    """Validate privacy/records.yaml (the Art. 30 records) and render it as HTML and PDF.

    Writes the default records first when the project has none. Exit code 2 naming the key
    when the file does not validate.
    """
    with user_errors():
        paths = project()
        ensure_records(paths)
        recs = records_of(paths)
        folder = _out(paths, out)
        registered = [f"{r.id} ({r.name})" for r in Recipients(PrivacyCore(paths)).all()]
        html, pdf = folder / "records.html", folder / "records.pdf"
        atomic_write_text(html, records_html(recs, registered=registered))
        atomic_write_bytes(pdf, records_pdf(recs, registered=registered))
    doc = {
        "records": str(records_path(paths)),
        "purposes": list(recs.purposes),
        "html": str(html),
        "pdf": str(pdf),
        "placeholders": recs.placeholders(),
    }
    if as_json:
        emit_json(doc)
        return
    console.print(f"{records_path(paths)} is valid: purposes {', '.join(recs.purposes)}")
    if draft := draft_text(recs):
        console.print(f"[bold red]{draft}[/]", highlight=False)
    console.print(f"wrote {html} and {pdf}", highlight=False)


def notice(
    out: Path = typer.Option(None, "--out", "-o", help=OUT_HELP),
    as_json: bool = JSON_OPT,
) -> None:
    """Render the layered notice from the records: the full notice (HTML) and the first-layer
    sign with a QR code to it (A4 PDF and PNG), EDPB Guidelines 3/2019.

    The notice's version is the SHA-256 of its HTML; each version is kept under
    privacy/notices/ and consent receipts record it.
    """
    with user_errors():
        paths = project()
        ensure_records(paths)
        recs = records_of(paths)
        current = publish_notice(paths)
        folder = _out(paths, out)
        files = {
            "notice_html": folder / "notice.html",
            "sign_pdf": folder / "sign.pdf",
            "sign_png": folder / SIGN_PNG,
        }
        atomic_write_text(files["notice_html"], current.html)
        atomic_write_bytes(files["sign_pdf"], sign_pdf(recs, current))
        atomic_write_bytes(files["sign_png"], sign_png(recs, current))
    doc = {
        "version": current.version,
        "sha256": current.sha256,
        **{k: str(v) for k, v in files.items()},
        "placeholders": recs.placeholders(),
    }
    if as_json:
        emit_json(doc)
        return
    console.print(f"notice {current.version} (sha256 {current.sha256})", highlight=False)
    if draft := draft_text(recs):
        console.print(f"[bold red]{draft}[/]", highlight=False)
    for path in files.values():
        console.print(f"  {path}", highlight=False)


def enforce(
    apply: bool = typer.Option(
        False, "--apply", help="Carry the actions out (default: only show what would be done)."
    ),
    at: str = typer.Option(
        None, "--at", help="Plan as of this ISO 8601 time instead of now (dry run only)."
    ),
    no_notify: bool = typer.Option(
        False, "--no-notify", help="With --apply: leave the outbox for `visage privacy notify`."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Retention that enforces itself: consent expiry, template purge and erasure for expired
    retention, withdrawal, objection and restriction policies, old exports and receipts.

    Dry run by default. With --apply each action is a ledger event with its reason and the
    actor `scheduler`; erasures end with certificates; notifications are then delivered.
    `visage serve` runs it every privacy.retention.serve_interval_seconds (hourly by default;
    the notice says so); with 0, or with no server running, run it from a timer (cron,
    systemd). "Now" is never before the ledger's newest
    entry nor the time the HTTP witnesses cosign the current checkpoint at (asked first).
    """
    if at and apply:
        raise typer.BadParameter(MSG_AT_APPLY)
    setup_logging()
    with user_errors():
        paths = project()
        when = parse_time(at) if at else None
        enforcer = Enforcer(paths, now=(lambda: when) if when is not None else None)
        if apply:
            result = enforcer.apply(deliver=not no_notify)
            actions = result.actions
            doc = result.to_dict()
        else:
            actions = enforcer.plan()
            doc = {"actions": [a.to_dict() for a in actions], "dry_run": True}
        attention = enforcer.attention()
    doc["requests"] = [a.to_dict() for a in attention]
    clock = enforcer.clock
    doc["clock"] = clock.to_dict() if clock is not None else None
    if as_json:
        emit_json(doc)
        return
    if clock is not None:
        console.print(escape(clock.describe()), highlight=False)
    verb = "done" if apply else "would do"
    for a in actions:
        console.print(f"  {escape(a.describe())}", highlight=False)
    console.print(f"enforce {verb}: {len(actions)} action(s)")
    if not apply and actions:
        console.print("run `visage privacy enforce --apply` to carry them out")
    for item in attention:
        console.print(f"  {escape(item.describe())}", highlight=False)
    if attention:
        overdue = sum(a.overdue for a in attention)
        failed = sum(a.failure is not None for a in attention)
        console.print(
            f"{len(attention)} open request(s) need the DPO: {overdue} overdue, {failed} with a "
            "failed attempt (`visage privacy request show ID`)"
        )


def notify(
    retry_dead: bool = typer.Option(
        False, "--retry-dead", help="Give messages that ran out of attempts another round."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Deliver the notification outbox (SMTP, webhooks); failures are retried later.

    Exit code 1 when a message could not be delivered in this pass.
    """
    setup_logging()
    with user_errors():
        paths = project()
        core = PrivacyCore(paths)
        if retry_dead:
            Outbox(core).revive()
        report = Notifier(paths, core=core).deliver()
        left = Outbox(core).messages()
    doc = {**report.to_dict(), "waiting": [m.id for m in left]}
    if as_json:
        emit_json(doc)
    else:
        console.print(
            f"{len(report.delivered)} delivered, {len(report.retrying)} to retry, "
            f"{len(report.dead)} gave up; {len(left)} message(s) waiting"
        )
    if report.retrying or report.dead:
        raise typer.Exit(1)


@recipients_app.command("add")
def recipients_add(
    recipient_id: str = typer.Argument(..., help="A short code (e.g. processor_it)."),
    name: str = typer.Option(..., "--name", help="Who they are."),
    address: str = typer.Option(..., "--address", help="E-mail address or https:// webhook."),
    as_json: bool = JSON_OPT,
) -> None:
    """Register a recipient of personal data (Art. 19 notices go to them)."""
    with user_errors():
        rec = Recipients(PrivacyCore(project())).add(recipient_id, name=name, address=address)
    if as_json:
        emit_json(rec.__dict__)
    else:
        console.print(f"recipient {rec.id} registered ({rec.channel})", highlight=False)


@recipients_app.command("list")
def recipients_list(as_json: bool = JSON_OPT) -> None:
    """List registered recipients. Writes nothing."""
    with user_errors():
        items = Recipients(PrivacyCore(project())).all()
    if as_json:
        emit_json([r.__dict__ for r in items])
        return
    for r in items:
        console.print(f"{r.id:<16} {r.channel:<8} {r.address}  {r.name}", highlight=False)
    console.print(f"{len(items)} recipient(s)")


@recipients_app.command("remove")
def recipients_remove(
    recipient_id: str = typer.Argument(..., help="The recipient's code."),
) -> None:
    """Remove a recipient from the register."""
    with user_errors():
        try:
            Recipients(PrivacyCore(project())).remove(recipient_id)
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
    console.print(f"recipient {recipient_id} removed", highlight=False)


@audit_app.command("verify")
def audit_verify(as_json: bool = JSON_OPT) -> None:
    """Check the audit log's hash chain, and that it still holds every head anchored in the
    ledger by the server or an export (nothing rewritten or cut before the last anchor); name
    the first broken line and say how many lines are not anchored yet. Exit code 1 when
    broken."""
    with user_errors():
        paths = project()
        anchors = auditlog.anchors_in(PrivacyCore(paths).ledger.path)
        report = auditlog.verify(paths.privacy / auditlog.AUDIT_FILE, anchors=anchors)
    if as_json:
        emit_json({k: v for k, v in report.__dict__.items() if k != "records"})
    else:
        console.print(report.message(), highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    out: Path = typer.Option(
        None, "--out", "-o", help="File to write (default reports/privacy/audit-<time>.jsonl)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Export the verified audit log with a manifest (lines, head hash, SHA-256) and anchor its
    head in the signed ledger (audit.exported), so later truncation is detected."""
    with user_errors():
        paths = project()
        core = PrivacyCore(paths)
        if out is None:
            stamp = core.ledger.clock().replace(":", "").replace("-", "")[:15]
            out = _out(paths, None) / f"audit-{stamp}.jsonl"
        anchors = auditlog.anchors_in(core.ledger.path)
        report, manifest = auditlog.export(
            paths.privacy / auditlog.AUDIT_FILE, out, anchors=anchors
        )
        entry = core.ledger.append(
            "audit.exported",
            None,
            {"lines": report.lines, "head": report.head, "sha256": sha256_file(out)},
        )
    doc = {**manifest, "path": str(out), "ledger_seq": entry.seq}
    if as_json:
        emit_json(doc)
    else:
        console.print(
            f"{out}: {report.lines} lines, head {report.head} (ledger seq {entry.seq})",
            highlight=False,
        )
