"""Restriction and objection (Art. 18, 21) as requests, and the runner of any verified request.

:func:`run_request` carries out a request of any right that needs no further input by
dispatching to the module that answers it: export (access, portability), restriction,
objection, erasure. A rectification needs the corrected values (:func:`~visage_ml.rights.
rectify.rectify`). A request that finds what it asks for already so (an objection that stands,
a restriction already set, a lift of a restriction not set) is completed with that as its
outcome, not left open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from visage_ml.config import PURPOSES, ProjectPaths
from visage_ml.privacy.consent import check_purposes
from visage_ml.privacy.core import NothingChangedError, PrivacyCore
from visage_ml.privacy.outbox import ALREADY_OBJECTED, ALREADY_RESTRICTED, NOT_RESTRICTED
from visage_ml.privacy.requests import COMPLETED, RequestBook, RequestState, RequestStateError
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.export import Delivery, export_subject
from visage_ml.rights.lifecycle import begin, checked_first
from visage_ml.rights.rawcheck import check_raw
from visage_ml.rights.rectify import enrol_owed, owed_enrolment
from visage_ml.serving.engine import Engine
from visage_ml.serving.gallery import Gallery

log = logging.getLogger(__name__)

MSG_COMPLETED = "request {rid} is already completed"
MSG_EXPORT_DELIVERY = (
    "request {rid} asks for the subject's data, which leaves the project encrypted for the "
    "requester: run `visage privacy export {pid} --request {rid} --recipient age1...` (or "
    "--passphrase-file FILE, or --plaintext)"
)
MSG_RECTIFY = (
    "request {rid} is a rectification: run `visage privacy rectify {pid} "
    "--request {rid}` with the corrected values"
)


def restrict(
    paths: ProjectPaths,
    pid: str,
    *,
    request_id: str | None = None,
    lift: bool = False,
    core: PrivacyCore | None = None,
    reason_code: str = "subject_request",
    gallery: Gallery | None = None,
    engine: Engine | None = None,
) -> RequestState:
    """Answer a restriction request: restrict (or lift) processing; complete the request.

    The data is kept; the registry makes ``prepare`` leave the subject out and serving stop
    scoring them until lifted. Completing a restriction sends the subject its completion and
    every registered recipient its Art. 19 notice; a lift first tells the subject it is
    about to happen (Art. 18(3)). So a restriction or a lift the DPO makes directly (``visage
    privacy restrict`` / ``lift``, ``POST /v1/subjects/{pid}/restrict`` / ``lift``) comes
    here too.

    A lift also makes again the template that a rectification removed while processing was
    restricted (:func:`~visage_ml.rights.rectify.enrol_owed`): the outcome's ``gallery`` is
    ``reenrolled``, or ``reenrolment_needed`` (with ``gallery_reason``) when it could not be
    made, and the subject's completion message says which.

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    request_id
        The verified restriction request answered (one is recorded when None).
    lift
        Lift the restriction instead of setting it.
    core
        Open privacy core (opened when None).
    reason_code
        Why the restriction is set (a code, recorded with ``restriction.set``).
    gallery, engine
        For a lift that owes a template: the gallery and engine to make it with (opened from
        the project when None).

    A verified lift request for a subject who is not restricted (lifted since, or never) is
    completed with ``outcome`` ``{"not_restricted": true}``, nothing lifted and no recipient
    notified, and the subject is told so; without ``request_id`` that is refused (ValueError).
    Likewise a verified restriction request for a subject already restricted: ``outcome``
    ``{"already_restricted": true}``, nothing recorded again; without ``request_id``, refused
    (:class:`~visage_ml.privacy.core.NothingChangedError`).

    Returns
    -------
    RequestState
        The completed request.

    Raises
    ------
    visage_ml.data.rawstore.RawDataMissingError
        A lift owes a template, and ``data/raw``'s tables, which it is made from, are not
        checked out (:func:`~visage_ml.rights.rawcheck.check_raw`): nothing is lifted or
        recorded but the failure, on the request answered.
    """
    core = core if core is not None else PrivacyCore(paths)
    if lift and not core.subject(pid).restricted:
        if request_id is None or core.subject(pid).erased:
            # Before any request is recorded or any subject told.
            raise ValueError(f"subject {pid} is not restricted; nothing to lift")
        return _unchanged(core, pid, "restriction", request_id, outcome={NOT_RESTRICTED: True})
    if not lift:
        try:
            core.check_unrestricted(pid)
        except NothingChangedError:
            if request_id is None:
                raise  # before any request is recorded or any subject told
            outcome = {ALREADY_RESTRICTED: True}
            return _unchanged(core, pid, "restriction", request_id, outcome=outcome)
    owed = owed_enrolment(paths, pid, core=core, gallery=gallery, engine=engine) if lift else None
    book = RequestBook(core)
    if owed is not None and owed.reads_raw:
        # The template is made from the subject's rows in data/raw's tables: read as empty
        # (not checked out), it would be "no single face was found", the lift in force and the
        # subject unidentified until enrolled again. Refused before the lift is recorded.
        with checked_first(book, pid, ("restriction",), request_id, step="lift"):
            check_raw(paths, pid, source=core.subject(pid).source)
    st = begin(
        book, pid, ("restriction",), request_id, details={"action": "lift" if lift else "set"}
    )
    made: dict[str, str] = {}
    if lift:
        # Art. 18(3): the subject is told before the restriction is lifted, not only after.
        book.outbox.for_request(st, "lift_notice")
        entry = core.lift(pid)
        if owed is not None:
            made = enrol_owed(paths, pid, owed, core=core)
    else:
        entry = core.restrict(pid, reason_code=reason_code)
    book.complete(st.request_id, outcome={"event": entry.type, "seq": entry.seq, **made})
    return book.get(st.request_id)


def object_to(
    paths: ProjectPaths,
    pid: str,
    *,
    purposes: list[str] | None = None,
    request_id: str | None = None,
    core: PrivacyCore | None = None,
) -> RequestState:
    """Answer an objection (Art. 21) to ``purposes`` (all when None); complete the request.

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    purposes
        Purposes objected to; every purpose when None.
    request_id
        The verified objection request answered (one is recorded when None).
    core
        Open privacy core (opened when None).

    A verified request naming only purposes the subject already objects to (an objection
    recorded before it arrived, or since) is completed with ``outcome``
    ``{"already_objected": [...]}``, nothing recorded again, and the subject is told their
    objection stands; without ``request_id`` that is refused
    (:class:`~visage_ml.privacy.core.NothingChangedError`).

    Returns
    -------
    RequestState
        The completed request.
    """
    core = core if core is not None else PrivacyCore(paths)
    book = RequestBook(core)
    # An objection the subject already made is not recorded again: without a request, refused
    # before one is recorded (as a lift of a subject who is not restricted); a verified request
    # is answered with it.
    try:
        chosen = core.objection_purposes(pid, purposes)
    except NothingChangedError:
        if request_id is None:
            raise
        named = list(PURPOSES if purposes is None else check_purposes(purposes))
        return _unchanged(core, pid, "objection", request_id, outcome={ALREADY_OBJECTED: named})
    st = begin(book, pid, ("objection",), request_id, details={"purposes": chosen})
    entry = core.object(pid, chosen)
    book.complete(st.request_id, outcome={"event": entry.type, "seq": entry.seq})
    return book.get(st.request_id)


def _unchanged(
    core: PrivacyCore, pid: str, right: str, request_id: str, *, outcome: dict[str, Any]
) -> RequestState:
    """Complete verified request ``request_id`` with what it found already so (``outcome``):
    left verified, its deadline ran with no way out but a denial, which would tell the subject
    that a right they have was refused."""
    book = RequestBook(core)
    st = begin(book, pid, (right,), request_id)
    book.complete(st.request_id, outcome=outcome)
    return book.get(st.request_id)


def _export(paths: ProjectPaths, st: RequestState, core: PrivacyCore) -> Any:
    # A request that recorded the requester's age recipients can be answered as it is.
    recipients = tuple(str(r) for r in st.details.get("recipients") or ())
    if not recipients:
        raise RequestStateError(MSG_EXPORT_DELIVERY.format(rid=st.request_id, pid=st.pid))
    return export_subject(
        paths,
        st.pid,
        request_id=st.request_id,
        core=core,
        right=st.right,
        delivery=Delivery(recipients=recipients),
    )


def _restrict(paths: ProjectPaths, st: RequestState, core: PrivacyCore) -> Any:
    lift = st.details.get("action") == "lift"
    return restrict(paths, st.pid, request_id=st.request_id, lift=lift, core=core)


def _object(paths: ProjectPaths, st: RequestState, core: PrivacyCore) -> Any:
    purposes = st.details.get("purposes") or None
    return object_to(paths, st.pid, purposes=purposes, request_id=st.request_id, core=core)


def _erase(paths: ProjectPaths, st: RequestState, core: PrivacyCore) -> Any:
    return Erasure(paths, core=core).run(st.request_id)


# Right -> what carries out a verified request of it (rectification needs values: not here).
HANDLERS: dict[str, Callable[[ProjectPaths, RequestState, PrivacyCore], Any]] = {
    "access": _export,
    "portability": _export,
    "restriction": _restrict,
    "objection": _object,
    "erasure": _erase,
}


def run_request(paths: ProjectPaths, request_id: str, *, core: PrivacyCore | None = None) -> Any:
    """Carry out a verified request whose right needs no further input.

    Access and portability export, restriction (set or lift, as recorded), objection (to the
    recorded purposes) and erasure; rectification needs the corrected values
    (:func:`~visage_ml.rights.rectify.rectify`).

    Returns
    -------
    Any
        What the handler returns: an :class:`~visage_ml.rights.export.ExportResult`, the
        completed :class:`~visage_ml.privacy.requests.RequestState`, or the erasure's result.

    Raises
    ------
    RequestStateError
        The request is completed already, or is a rectification.
    """
    core = core if core is not None else PrivacyCore(paths)
    st = RequestBook(core).get(request_id)
    if st.status == COMPLETED:
        raise RequestStateError(MSG_COMPLETED.format(rid=request_id))
    handler = HANDLERS.get(st.right)
    if handler is None:
        raise RequestStateError(MSG_RECTIFY.format(rid=request_id, pid=st.pid))
    return handler(paths, st, core)
