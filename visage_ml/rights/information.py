"""The Art. 15(1) information an access export carries, and its human-readable page.

An access bundle (:mod:`visage_ml.rights.export`) holds the subject's data; Art. 15(1) also
asks for the information about its processing: purposes, categories, recipients, retention,
the source, the rights and the right to complain, and automated decisions. They come from the
records of processing (:meth:`~visage_ml.privacy.records.Records.art15_information`), with the
subject's own identification events from the HTTP audit log (when, by which API key, 1:N or
1:1) and their state per purpose. The audit log is first verified against its anchors in the
ledger: a log with lines removed or rewritten before its last anchor is refused
(:class:`~visage_ml.privacy.auditlog.AuditLogError`), so an access export never omits
identifications silently. ``information.json`` holds it; ``index.html`` renders the
whole bundle for a person to read.
"""

from __future__ import annotations

from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.privacy.auditlog import AUDIT_FILE, anchors_in, identification_events
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.documents import access_html
from visage_ml.privacy.outbox import Recipients
from visage_ml.privacy.records import records_of


def subject_information(
    paths: ProjectPaths, pid: str, *, source: str = "", core: PrivacyCore | None = None
) -> dict[str, Any]:
    """``information.json`` of ``pid``'s access bundle (see the module docstring).

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    source
        Where the subject's data came from, as recorded.
    core
        The open privacy core whose ledger anchors the audit log (opened when None).

    Raises
    ------
    AuditLogError
        The audit log fails verification against its anchors (a ``ValueError``).
    """
    core = core if core is not None else PrivacyCore(paths)
    records = records_of(paths)
    where = (
        records.data_categories["facial_images"].source
        if "facial_images" in (records.data_categories)
        else "the data subject"
    )
    info = records.art15_information(
        source=f"{where} (recorded source: {source})" if source else where
    )
    return {
        **info,
        # Art. 15(1)(c): beside the categories of the records, the recipients the controller
        # registered as receiving personal data (those told of rectification, erasure and
        # restriction, Art. 19); their names, not their addresses.
        "registered_recipients": [{"id": r.id, "name": r.name} for r in Recipients(core).all()],
        "identification_events": identification_events(
            paths.privacy / AUDIT_FILE,
            pid,
            anchors=anchors_in(core.ledger.path),
        ),
    }


def access_page(
    *,
    pid: str,
    information: dict[str, Any],
    state: dict[str, Any],
    events: list[dict[str, Any]],
    images: int,
    templates: int,
    generated: str,
) -> bytes:
    """``index.html`` of an access bundle (UTF-8)."""
    return access_html(
        pid=pid,
        information=information,
        state=state.get("purposes") or {},
        identifications=information.get("identification_events") or [],
        events=events,
        images=images,
        templates=templates,
        generated=generated,
    ).encode("utf-8")
