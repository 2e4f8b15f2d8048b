"""Red-team: the one answer of an operator's refused enrolment (recognition.py).

Every refusal of an operator's enrolment must look alike, in its answer and in the work done
before it, whatever the reason: a subject who may not be processed (the decoy), one who may but
whose stored template the images do not match, one whose images match another subject.
"""

from __future__ import annotations

import logging

import pytest
from test_recognition import UNKNOWN, Api, error, score_model, spy_work

from visage_ml.app.http.routers import recognition


@pytest.fixture
def lenient(project):
    return Api(project, model=score_model(0.0))


def test_a_mismatch_refusal_does_the_same_search_as_a_consent_refusal(lenient, monkeypatch):
    # The attack: an operator who wants to know whether enrolled subject b withdrew consent sends
    # someone else's face (a's) for b. Consented, b is refused for the mismatch with b's stored
    # template; withdrawn, b is refused after the decoy's work, which searches the whole gallery.
    # On a large gallery the search is what takes time: if only one of the two refusals
    # searches, the one answer's timing tells whether b withdrew.
    s = lenient
    a, b, withdrawn = s.pids[0], s.pids[1], s.pids[2]
    for pid in (a, b, withdrawn):
        assert s.enroll(pid).status_code == 200
    assert s.call("POST", f"/v1/subjects/{withdrawn}/consent/withdraw", "dpo").status_code == 200
    images = s.photos(a, 2)
    work = spy_work(s, monkeypatch)
    done = {}
    for pid in (b, withdrawn, UNKNOWN):
        work.clear()
        r = s.enroll(pid, images=images)
        assert (r.status_code, error(r)["code"]) == (409, "not_available")
        done[pid] = tuple(w[0] if isinstance(w, tuple) else w for w in work)
    assert done[b] == done[withdrawn] == done[UNKNOWN], done


def test_the_decoy_work_on_an_empty_gallery_is_still_the_one_answer(lenient):
    # Nobody enrolled yet: the decoy's search runs over an empty gallery. An exception there
    # would answer 500 for a subject who may not be processed, 200 for one who may.
    s = lenient
    withdrawn = s.pids[2]
    assert s.call("POST", f"/v1/subjects/{withdrawn}/consent/withdraw", "dpo").status_code == 200
    r = s.enroll(withdrawn)
    u = s.enroll(UNKNOWN, images=s.photos(withdrawn, 3))
    assert (r.status_code, error(r)["code"]) == (409, "not_available")
    assert error(r)["message"].replace(withdrawn, "PID") == error(u)["message"].replace(
        UNKNOWN, "PID"
    )


def test_the_decoy_leaves_no_trace_an_operator_or_log_reader_could_tell_apart(lenient, caplog):
    # Logs, headers and the ledger of a refusal for consent must read as those of a refusal for
    # a mismatch: no DECOY_PID in a log line, no extra ledger entry, the same headers.
    s = lenient
    a, b, withdrawn = s.pids[0], s.pids[1], s.pids[2]
    for pid in (a, b, withdrawn):
        assert s.enroll(pid).status_code == 200
    assert s.call("POST", f"/v1/subjects/{withdrawn}/consent/withdraw", "dpo").status_code == 200
    ledger = s.world.paths.ledger
    images = s.photos(a, 2)
    answers = {}
    for pid in (b, withdrawn):
        n = len(ledger.read_bytes().splitlines())
        with caplog.at_level(logging.DEBUG):
            caplog.clear()
            r = s.enroll(pid, images=images)
        answers[pid] = r
        assert len(ledger.read_bytes().splitlines()) == n
        assert not any(recognition.DECOY_PID in rec.getMessage() for rec in caplog.records)
    strip = {"date", "content-length", "x-request-id"}
    hb = {k: v for k, v in answers[b].headers.items() if k.lower() not in strip}
    hw = {k: v for k, v in answers[withdrawn].headers.items() if k.lower() not in strip}
    assert hb == hw
    assert error(answers[b])["message"].replace(b, "PID") == error(answers[withdrawn])[
        "message"
    ].replace(withdrawn, "PID")
