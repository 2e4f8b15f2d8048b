"""The request lifecycle around an action: the verified request an export, rectification,
restriction or objection answers, moved to ``in_progress`` (:mod:`visage_ml.privacy.requests`).

Its own module because every action module (:mod:`~visage_ml.rights.export`,
:mod:`~visage_ml.rights.rectify`, :mod:`~visage_ml.rights.runner`) starts with it, and the runner
also dispatches to the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
        st = book.get(request_id)
        if st.right not in rights:
            raise RequestStateError(
                MSG_WRONG_RIGHT.format(rid=request_id, right=st.right, want=" or ".join(rights))
            )
        if st.pid != pid:
            raise RequestStateError(MSG_OTHER_SUBJECT.format(rid=request_id))
        if st.status == RECEIVED:
            raise RequestStateError(MSG_NOT_READY.format(rid=request_id, status=st.status))
    if st.status == VERIFIED:
        st = book.start(st.request_id)
    if st.status != IN_PROGRESS:
        raise RequestStateError(MSG_NOT_OPEN.format(rid=st.request_id, status=st.status))
    return st
