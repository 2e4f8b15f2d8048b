"""The request lifecycle around an action: the verified request an export, rectification,
restriction or objection answers, moved to ``in_progress`` (:mod:`visage_ml.privacy.requests`).

Its own module because every action module (:mod:`~visage_ml.rights.export`,
:mod:`~visage_ml.rights.rectify`, :mod:`~visage_ml.rights.runner`) starts with it, and the runner
also dispatches to the others.

What can be checked (ids, files, values) is checked before :func:`begin`, so bad input leaves
the request as it was; a failure after it is recorded on the request by :func:`recorded`, and so
is one of what the server holds checked before it (:func:`checked_first`: ``data/raw`` not
checked out), the request left as it was.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from visage_ml.data.rawstore import ImageUnreadableError, RawDataMissingError
from visage_ml.privacy.auditlog import AuditLogError
from visage_ml.privacy.requests import (
    IN_PROGRESS,
    RECEIVED,
    VERIFIED,
    RequestBook,
    RequestState,
    RequestStateError,
)

MSG_WRONG_RIGHT = "request {rid} is a {right} request; this action answers {want} requests"
MSG_NOT_READY = (
    "request {rid} is {status}; verify the requester's identity first "
    "(`visage privacy request verify {rid}`)"
)
MSG_OTHER_SUBJECT = "request {rid} is about another subject"
MSG_NOT_OPEN = "request {rid} is already {status}"
MSG_STAYS_OPEN = (
    "request {rid} stays {status}, with this failure recorded ({code}); once it is fixed, "
    "run the same action again with --request {rid} (HTTP: request_id={rid}) instead of "
    "opening another request, or deny it (`visage privacy request deny {rid} --reason CODE`)"
)
# Failure codes of errors a DPO acts on in a known way (the others: the error class, in
# snake case); the same code as the HTTP API answers.
FAILURE_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (AuditLogError, "audit_log_unverified"),
    (ImageUnreadableError, "image_unreadable"),
    (RawDataMissingError, "raw_data_missing"),
)

log = logging.getLogger(__name__)


def begin(
    book: RequestBook,
    pid: str,
    rights: tuple[str, ...],
    request_id: str | None,
    *,
    details: Mapping[str, Any] | None = None,
) -> RequestState:
    """The request an action answers, moved to ``in_progress``.

    Without ``request_id`` a request is recorded, verified (``dpo_initiated``: the DPO acts on
    a request they verified outside the tool) and started.

    Parameters
    ----------
    book
        The request book.
    pid
        The subject the action is about.
    rights
        Rights the action answers; the first is recorded when ``request_id`` is None.
    request_id
        A verified request, or None.
    details
        Recorded with a new request.

    Raises
    ------
    RequestStateError
        The request is of another right, about another subject, not verified yet, or closed.
    """
    if request_id is None:
        st = book.receive(pid, rights[0], details=details, channel="dpo")
        st = book.verify(st.request_id, method="dpo_initiated")
    else:
        st = _answered(book, pid, rights, request_id)
    if st.status == VERIFIED:
        st = book.start(st.request_id)
    if st.status != IN_PROGRESS:
        raise RequestStateError(MSG_NOT_OPEN.format(rid=st.request_id, status=st.status))
    return st


def _answered(
    book: RequestBook, pid: str, rights: tuple[str, ...], request_id: str
) -> RequestState:
    """Request ``request_id``, refused (RequestStateError) unless it is of one of ``rights``,
    about ``pid`` and verified (or further)."""
    st = book.get(request_id)
    if st.right not in rights:
        raise RequestStateError(
            MSG_WRONG_RIGHT.format(rid=request_id, right=st.right, want=" or ".join(rights))
        )
    if st.pid != pid:
        raise RequestStateError(MSG_OTHER_SUBJECT.format(rid=request_id))
    if st.status == RECEIVED:
        raise RequestStateError(MSG_NOT_READY.format(rid=request_id, status=st.status))
    return st


@contextlib.contextmanager
def checked_first(
    book: RequestBook,
    pid: str,
    rights: tuple[str, ...],
    request_id: str | None,
    *,
    step: str,
) -> Iterator[None]:
    """A check of what the server holds, made before an action starts its request
    (:func:`begin`): a failure inside the block is recorded on the request answered, which
    stays as it was (verified, or in progress) with ``request.failed``, as :func:`recorded`
    does (the exception gets :data:`MSG_STAYS_OPEN`), and re-raised. Without ``request_id``
    nothing is recorded, as for input refused: a request recorded for it would stay open each
    time the DPO's own action is tried again.

    Raises
    ------
    RequestStateError
        ``request_id`` is of another right, about another subject, not verified yet, or closed
        (before the block runs).
    """
    if request_id is None:
        yield
        return
    st = _answered(book, pid, rights, request_id)
    if st.status not in (VERIFIED, IN_PROGRESS):
        raise RequestStateError(MSG_NOT_OPEN.format(rid=request_id, status=st.status))
    with recorded(book, st, step=step):
        yield


# (exception, code) pairs: the failure codes of an action's own errors (see recorded).
Codes = Sequence[tuple[type[BaseException], str]]


def failure_code(exc: BaseException, codes: Codes = ()) -> str:
    """A ledger-safe code for ``exc``: its entry in ``codes`` or :data:`FAILURE_CODES`, else its
    class name in snake case (``GalleryUnavailableError`` -> ``gallery_unavailable_error``);
    never its message, which may hold values."""
    for exc_type, code in (*codes, *FAILURE_CODES):
        if isinstance(exc, exc_type):
            return code
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()[:64] or "error"


@contextlib.contextmanager
def recorded(
    book: RequestBook, st: RequestState, *, step: str, codes: Codes = ()
) -> Iterator[None]:
    """Record a failure inside the block on the in-progress (or verified, not yet started)
    request ``st``, and re-raise it.

    The request stays as it was with ``request.failed`` (``step``, :func:`failure_code`, the
    action's own ``codes`` first: the codes the HTTP API answers), so the DPO's request list
    shows what failed instead of a request nothing will finish; the exception gets a note
    (:data:`MSG_STAYS_OPEN`) naming the request to run again.
    """
    try:
        yield
    except Exception as exc:
        code = failure_code(exc, codes)
        try:
            book.fail(st.request_id, step=step, code=code)
        except Exception:
            # The ledger itself may be what failed (or the request closed before the failure):
            # the original error is the one to report.
            log.exception("request %s: its failure could not be recorded", st.request_id)
        else:
            status = st.status.replace("_", " ")
            exc.add_note(MSG_STAYS_OPEN.format(rid=st.request_id, status=status, code=code))
        raise
