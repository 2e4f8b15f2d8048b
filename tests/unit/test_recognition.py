"""Identify, verify and enrol over HTTP: the 1:N threshold of the gallery served, the quality
gate, decisions without scores for operators, and one answer for "not enrolled" and "not
allowed"."""

from __future__ import annotations

import functools
import json
import secrets

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter
from serving_fakes import (
    DIM,
    THRESHOLD,
    Person,
    face_tile,
    fake_engine,
    make_person,
    make_world,
    png_b64,
)

from visage_ml.app.http.app import create_app
from visage_ml.app.http.auth import ROLES, KeyStore
from visage_ml.config import load_params
from visage_ml.evaluation.score_model import Comparisons, ScoreModel, build_score_model
from visage_ml.serving.gallery import Gallery
from visage_ml.serving.pg_gallery import PgGallery, PgOptions
from visage_ml.serving.quality import QualityGate

VERSION = "emb-test-1"
UNKNOWN = "p" + "e" * 16


# The spread of the fake world's impostor scores (templates of two people: about 0.15 around 0;
# the largest of the 190 pairs 0.46), and the target FPIR the tests serve at. An operator's
# enrolment is refused when identify would name the new face as someone else, so the 1:N
# threshold must be where the world's strangers match about as rarely as the target says:
# a narrower model, or 1% of searches falsely matched, refused newcomers the tests enrol.
IMPOSTOR_SD = 0.15
TARGET_FPIR = 0.001


def score_model(
    impostor_mean: float, *, sd: float = IMPOSTOR_SD, n: int = 50_000, seed: int = 0
) -> ScoreModel:
    """A score model of independent normal impostor scores around ``impostor_mean``."""
    rng = np.random.default_rng(seed)
    imp = rng.normal(impostor_mean, sd, n)
    gen = rng.normal(0.93, 0.03, 2000)
    doc = build_score_model(
        Comparisons(
            genuine=gen,
            impostor=imp,
            genuine_probe=np.zeros(gen.size, dtype=np.int64),
            impostor_probe=np.arange(n),
            impostor_ref=np.full(n, -1),
            n_identities=n,
            template_images=3,
        ),
        bootstrap=20,
        model_version=VERSION,
    )
    return ScoreModel(doc, confidence=0.8)


class Api:
    def __init__(
        self,
        root,
        *,
        model: ScoreModel | None,
        overrides=None,
        open_gallery=Gallery.open,
        threshold: float = THRESHOLD,
    ) -> None:
        self.world = make_world(root, n_subjects=20, without_identification=2)
        self.pids = list(self.world.people)
        overrides = {"serving.identify.target_fpir": TARGET_FPIR, **(overrides or {})}
        self.params = load_params(root / "params.yaml", overrides=overrides)
        self.engine = fake_engine(root)
        self.gallery = open_gallery(
            self.world.paths,
            model_version=VERSION,
            embedding_dim=DIM,
            threshold=threshold,
            core=self.world.core,
            embed=self.engine.embed,
        )
        app = create_app(
            self.world.paths,
            params=self.params,
            engine=self.engine,
            gallery=self.gallery,
            core=self.world.core,
            score_model=model,
        )
        self.svc = app.state.visage
        self.client = TestClient(app, raise_server_exceptions=False)
        self.keys = {role: KeyStore(self.world.paths.api_keys).create(role)[1] for role in ROLES}

    def call(self, method, path, role=None, **kw):
        headers = {"X-API-Key": self.keys[role]} if role else {}
        return self.client.request(method, path, headers=headers, **kw)

    def photos(self, pid, n=1, blur=0.0):
        out = []
        for tile in self.world.photo(pid, n):
            im = Image.fromarray(tile)
            if blur:
                im = im.filter(ImageFilter.GaussianBlur(blur))
            out.append(png_b64(np.asarray(im)))
        return out

    def enroll(self, pid, role="operator", images=None):
        body = {"pid": pid, "images": images or self.photos(pid, 3)}
        return self.call("POST", "/v1/enroll", role, json=body)

    def identify(self, image):
        return self.call("POST", "/v1/identify", "operator", json={"image": image, "top_k": 3})

    def verify(self, pid, image, role="operator"):
        return self.call("POST", "/v1/verify", role, json={"image": image, "pid": pid})

    def health(self, role="operator"):
        return self.call("GET", "/healthz", role).json()["identification"]


def error(r):
    return r.json()["error"]


@pytest.fixture
def lenient(project):
    return Api(project, model=score_model(0.0))


@pytest.fixture(params=["memory", "pgvector"])
def lenient_each_backend(request, project):
    """`lenient`, served from the in-memory gallery and from the pgvector one (a table of its
    own in the session's PostgreSQL)."""
    if request.param == "memory":
        yield Api(project, model=score_model(0.0))
        return
    dsn = request.getfixturevalue("stack_postgres").dsn
    options = PgOptions(dsn=dsn, table=f"g_{secrets.token_hex(6)}", listen=False)
    s = Api(
        project,
        model=score_model(0.0),
        open_gallery=functools.partial(PgGallery.open, options=options),
    )
    yield s
    s.gallery.close()


def test_a_client_without_a_key_cannot_watch_the_gallery_grow_or_shrink(lenient):
    # Whoever reaches the port polls /healthz around an enrolment and an erasure: the size, and
    # the threshold derived from it, would tell them that somebody joined or left.
    s = lenient
    seen = []
    for step in (lambda: None, lambda: s.enroll(s.pids[0]), lambda: s.gallery.erase(s.pids[0])):
        step()
        r = s.call("GET", "/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        seen.append(r.json())
    assert all("identification" not in h or h["identification"] is None for h in seen)
    assert seen[0] == seen[1] == seen[2]
    # Any key is told the operating point; a wrong key is refused and counted, not ignored.
    for role in ROLES:
        assert s.health(role)["gallery_size"] == 0
    r = s.client.get("/healthz", headers={"X-API-Key": s.keys["operator"][:-2] + "xx"})
    assert r.status_code == 401


def test_the_1n_threshold_is_rederived_as_subjects_are_enrolled_and_erased(project):
    # The 1:1 threshold where the score model puts FMR 1e-3 (as evaluation sets it): from five
    # searchable templates the 0.1 % target asks each comparison for less, and the threshold
    # rises above it.
    model = score_model(0.0)
    verify_at = model.threshold_for_fmr(1e-3, upper=False)
    s = Api(project, model=model, threshold=verify_at)
    policy = s.svc.identification
    for pid in s.pids[:5]:
        assert s.enroll(pid).status_code == 200
    h5 = s.health()
    assert h5["gallery_size"] == 5 and h5["target_fpir"] == TARGET_FPIR
    assert h5["threshold"] == pytest.approx(policy.threshold(5))
    assert h5["required_fmr"] == pytest.approx(1 - (1 - TARGET_FPIR) ** (1 / 5))
    assert h5["verify_threshold"] == verify_at < h5["threshold"] and h5["too_large"] is False
    assert h5["source"] == "reports/score_model.json" and h5["at_verify_threshold"] is False
    r = s.identify(s.photos(s.pids[0])[0]).json()
    assert r["gallery_size"] == 5 and r["threshold"] == pytest.approx(h5["threshold"])
    assert r["faces"][0]["decision"] == "match"
    assert r["faces"][0]["matches"][0]["pid"] == s.pids[0]
    for pid in s.pids[5:18]:
        assert s.enroll(pid).status_code == 200
    h18 = s.health()
    assert h18["gallery_size"] == 18 and h18["threshold"] > h5["threshold"]
    assert h18["expected_fnir"] >= h5["expected_fnir"]
    # An erasure and a withdrawal shrink the gallery: the threshold follows at once.
    s.gallery.erase(s.pids[0])
    r = s.call("POST", f"/v1/subjects/{s.pids[1]}/consent/withdraw", "dpo")
    assert r.status_code == 200
    h16 = s.health()
    assert h16["gallery_size"] == 16
    assert h5["threshold"] < h16["threshold"] < h18["threshold"]
    r = s.identify(s.photos(s.pids[2])[0]).json()
    assert r["gallery_size"] == 16 and r["threshold"] == pytest.approx(h16["threshold"])


def test_below_the_1n_threshold_the_answer_is_unknown_and_1to1_verify_is_unchanged(project):
    # Impostor scores near 0.7: a 1% FPIR needs a threshold far above the 1:1 one (0.7).
    s = Api(project, model=score_model(0.7, sd=0.08))
    for pid in s.pids[:18]:
        assert s.enroll(pid).status_code == 200
    h = s.health()
    assert h["threshold"] > 0.95
    photo = s.photos(s.pids[3])[0]
    r = s.identify(photo).json()
    assert r["faces"][0]["decision"] == "unknown" and r["faces"][0]["matches"] == []
    # The same photo verifies against its subject at the FMR-based 1:1 threshold.
    v = s.verify(s.pids[3], photo).json()
    assert v["decision"] == "match" and v["threshold"] == THRESHOLD
    # The gallery is flagged: nearly every mate would be missed at this threshold.
    assert h["too_large"] is True and "too large" in h["warning"]
    assert "max_expected_fnir" in h["warning"]


def test_a_target_beyond_what_the_evaluation_can_bound_is_flagged(project):
    s = Api(
        project, model=score_model(0.0, n=20_000), overrides={"serving.identify.target_fpir": 1e-6}
    )
    for pid in s.pids[:10]:
        assert s.enroll(pid).status_code == 200
    h = s.health()
    assert h["too_large"] is True
    assert h["required_fmr"] < h["min_bounded_fmr"] == pytest.approx(5e-6)
    assert "can bound" in h["warning"] and "evaluate on more identities" in h["warning"]


def test_without_a_score_model_the_fixed_threshold_is_used_and_said(project):
    s = Api(project, model=None)
    assert s.enroll(s.pids[0]).status_code == 200
    h = s.health()
    assert h["threshold"] == THRESHOLD and "no score model" in h["source"]
    assert h["expected_fnir"] is None and h["required_fmr"] is None


def test_an_operator_gets_a_decision_never_a_score(lenient):
    s = lenient
    a, b = s.pids[0], s.pids[1]
    assert s.enroll(a).status_code == 200 and s.enroll(b).status_code == 200
    photo = s.photos(a)[0]
    for pid, decision in ((a, "match"), (b, "no_match")):
        r = s.verify(pid, photo)
        assert r.status_code == 200
        body = r.json()
        assert body["decision"] == decision and body["match"] is (decision == "match")
        assert body["score"] is None
        # No number in the answer but the (published) threshold.
        numbers = [v for v in body.values() if isinstance(v, float)]
        assert numbers == [THRESHOLD]
    for role in ("dpo", "auditor"):
        body = s.verify(a, photo, role).json()
        assert isinstance(body["score"], float) and body["score"] >= THRESHOLD
    assert s.verify(a, photo, "metrics").status_code == 403


def test_an_operator_cannot_read_the_score_that_verify_withholds_through_identify(lenient):
    # The attack: verify gives an operator no score, so ask identify for the same face and
    # read the candidates' similarities (a hill-climbing oracle on the subject's template).
    s = lenient
    a, b = s.pids[0], s.pids[1]
    assert s.enroll(a).status_code == 200 and s.enroll(b).status_code == 200
    r = s.identify(s.photos(a)[0])
    assert r.status_code == 200
    body = r.json()
    face = body["faces"][0]
    assert face["decision"] == "match" and face["matches"][0]["pid"] == a
    for m in face["matches"]:
        assert set(m) == {"pid", "rank"}
    assert [m["rank"] for m in face["matches"]] == list(range(1, len(face["matches"]) + 1))
    # The only similarity in the answer is the published threshold.
    scores = [v for v in body.values() if isinstance(v, float)]
    assert scores == [body["threshold"], body["target_fpir"]]


def test_an_operator_cannot_tell_a_withdrawn_subject_from_an_unknown_one(lenient):
    s = lenient
    enrolled, withdrawn, other = s.pids[0], s.pids[1], s.pids[2]
    no_consent = s.pids[-1]  # never consented to identification
    for pid in (enrolled, withdrawn, other):
        assert s.enroll(pid).status_code == 200
    assert s.call("POST", f"/v1/subjects/{withdrawn}/consent/withdraw", "dpo").status_code == 200
    photo = s.photos(withdrawn)[0]

    def seen(r, pid):
        return r.status_code, error(r)["code"], error(r)["message"].replace(pid, "PID")

    verify = {pid: seen(s.verify(pid, photo), pid) for pid in (withdrawn, UNKNOWN, no_consent)}
    assert len(set(verify.values())) == 1 and verify[UNKNOWN][0] == 404
    images = s.photos(withdrawn, 2)
    enrol = {
        pid: seen(s.enroll(pid, images=images), pid)
        for pid in (withdrawn, UNKNOWN, no_consent, enrolled)  # enrolled: another face
    }
    assert len(set(enrol.values())) == 1, enrol
    assert enrol[UNKNOWN][:2] == (409, "not_available")
    # Identification never returns the withdrawn subject either.
    r = s.identify(photo).json()
    assert withdrawn not in [m["pid"] for f in r["faces"] for m in f["matches"]]
    # A DPO is told the reason.
    r = s.enroll(withdrawn, role="dpo", images=images)
    assert error(r)["code"] == "processing_not_allowed"
    assert "consent_withdrawn" in error(r)["message"]


def test_re_enrolment_needs_a_match_to_the_old_template_or_a_dpo(lenient):
    s = lenient
    a, b = s.pids[0], s.pids[1]
    first = s.enroll(a).json()
    # The same person again: accepted, the template replaced.
    again = s.enroll(a)
    assert again.status_code == 200 and again.json()["replaced"] is True
    kept = again.json()["template_sha256"]
    assert kept != first["template_sha256"]
    # Someone else's face for a's pid: refused, a's template untouched.
    r = s.enroll(a, images=s.photos(b, 3))
    assert r.status_code == 409 and error(r)["code"] == "not_available"
    assert s.gallery.status(a)["searchable"]
    r = s.identify(s.photos(a)[0]).json()
    assert r["faces"][0]["matches"][0]["pid"] == a
    # A DPO may replace it (e.g. after a verified rectification request).
    r = s.enroll(a, role="dpo", images=s.photos(b, 3))
    assert r.status_code == 200 and r.json()["replaced"] is True
    assert s.enroll(a, role="auditor").status_code == 403


def test_a_low_quality_face_is_refused_not_matched(lenient):
    s = lenient
    a = s.pids[0]
    for pid in s.pids[:18]:
        assert s.enroll(pid).status_code == 200
    blurred = s.photos(a, blur=2.0)[0]
    r = s.identify(blurred).json()
    face = r["faces"][0]
    assert face["decision"] == "quality_too_low" and face["matches"] == []
    assert "sharpness" in face["quality"]["failed"] and face["quality"]["score"] < 0.5
    # Without the gate the same image is "identified": the guess the gate prevents.
    gate = s.svc.quality
    s.svc.quality = QualityGate(enabled=False)
    try:
        assert s.identify(blurred).json()["faces"][0]["matches"][0]["pid"] == a
    finally:
        s.svc.quality = gate
    # A stranger's blurred face: refused, never "match" nor "unknown".
    stranger = make_person("p" + "0" * 16, s.world.rng, "g2", "male")
    tile = Image.fromarray(face_tile(stranger, s.world.rng)).filter(ImageFilter.GaussianBlur(2))
    r = s.identify(png_b64(np.asarray(tile))).json()
    assert [f["decision"] for f in r["faces"]] == ["quality_too_low"]
    # Verify: a decision of its own, no comparison.
    v = s.verify(a, blurred, "dpo").json()
    assert v["decision"] == "quality_too_low" and v["match"] is False and v["score"] is None
    # Re-enrolment with one blurred image: refused naming it; the template is not rewritten.
    pid = s.pids[17]
    before = s.gallery.template_path(pid).read_bytes()
    r = s.enroll(pid, images=[*s.photos(pid, 1), *s.photos(pid, blur=2.0)])
    assert r.status_code == 422 and error(r)["code"] == "quality_too_low"
    assert "images[1]" in error(r)["message"] and "blurred" in error(r)["message"]
    assert s.gallery.template_path(pid).read_bytes() == before


def test_a_refused_face_is_answered_with_the_gallery_size_of_now(lenient):
    """Another process (a `visage` command, a second replica) erases a subject: an answer that
    searched nothing must still give the size and threshold a search would have used."""
    s = lenient
    for pid in s.pids[:18]:
        assert s.enroll(pid).status_code == 200
    other = Gallery.open_existing(s.world.paths, load=True)
    assert other is not None and other is not s.gallery
    other.erase(s.pids[5])
    r = s.identify(s.photos(s.pids[0], blur=2.0)[0]).json()
    assert [f["decision"] for f in r["faces"]] == ["quality_too_low"]
    h = s.health()
    assert r["gallery_size"] == h["gallery_size"] == 17
    assert r["threshold"] == pytest.approx(h["threshold"])


def test_an_operator_cannot_probe_consent_with_an_image_that_is_refused(lenient):
    # The attack: enrol with an image that can never be enrolled (no face, or blurred). A subject
    # who may be enrolled gets the image's refusal; one who may not gets not_available before
    # the image is looked at: consent state read off without enrolling anybody.
    s = lenient
    allowed, no_consent = s.pids[0], s.pids[-1]
    blank = png_b64(np.full((96, 96, 3), 128, np.uint8))
    blurred = s.photos(allowed, blur=2.0)[0]
    for image in (blank, blurred):
        seen = {}
        for pid in (allowed, no_consent, UNKNOWN):
            r = s.enroll(pid, images=[image])
            seen[pid] = (r.status_code, error(r)["code"])
        assert len(set(seen.values())) == 1, seen
    assert not s.gallery.status(allowed)["enrolled"]


def spy_work(s: Api, monkeypatch: pytest.MonkeyPatch, embedded: list | None = None) -> list:
    """Record the embedder and gallery calls an enrolment makes (what its time is made of);
    ``embedded`` collects the arrays embedded."""
    work: list = []

    def spy(obj, name, note):
        real = getattr(obj, name)

        def call(*args, **kw):
            work.append(note(*args))
            return real(*args, **kw)

        monkeypatch.setattr(obj, name, call)

    def embed(x):
        if embedded is not None:
            embedded.append(np.asarray(x))
        return ("embed", np.shape(x))

    spy(s.engine, "embed", embed)
    spy(s.gallery, "status", lambda _pid: "status")
    spy(s.gallery, "search", lambda q, **_kw: ("search", np.shape(q)))
    return work


def test_an_operator_cannot_time_consent_state_off_the_one_answer(
    lenient_each_backend, monkeypatch
):
    # The attack: time the one answer. Verify answers 404 alike for a subject who may be
    # enrolled but is not and for one who may not (withdrawn, restricted, erased, unknown). An
    # enrolment with a face the gallery already holds is refused alike too, but a subject who
    # may be enrolled was refused only after the images were embedded and the gallery searched,
    # one who may not as soon as the images were checked: the embedder's time (tens of ms a
    # face) told the two apart. Every refusal now does the same work, on a decoy for a subject
    # who may not be processed (whose images are never embedded).
    from visage_ml.app.http.routers import recognition

    s = lenient_each_backend
    a, allowed = s.pids[0], s.pids[1]
    withdrawn, restricted, erased = s.pids[2:5]
    for pid in (a, withdrawn, restricted, erased):
        assert s.enroll(pid).status_code == 200
    assert s.call("POST", f"/v1/subjects/{withdrawn}/consent/withdraw", "dpo").status_code == 200
    assert s.call("POST", f"/v1/subjects/{restricted}/restrict", "dpo").status_code == 200
    assert s.call("POST", f"/v1/subjects/{erased}/erasure", "dpo").status_code == 200
    images = s.photos(a, 2)  # a's face: someone else's for every pid below
    crops = recognition._enrolment_crops(s.svc, images)
    embedded: list[np.ndarray] = []
    work = spy_work(s, monkeypatch, embedded)
    done = {}
    for pid in (allowed, UNKNOWN, s.pids[-1], withdrawn, restricted, erased):
        work.clear()
        embedded.clear()
        r = s.enroll(pid, images=images)
        assert (r.status_code, error(r)["code"]) == (409, "not_available")
        done[pid] = tuple(work)
        if pid != allowed:  # may not be processed: the images are never embedded
            assert not any(np.array_equal(row, c) for e in embedded for row in e for c in crops)
    assert done[allowed] == (("embed", (2, *crops[0].shape)), "status", ("search", (1, DIM)))
    assert len(set(done.values())) == 1, done
    assert not s.gallery.status(allowed)["enrolled"]


def test_a_refusal_on_a_decoy_draws_no_noise_per_request(lenient, monkeypatch):
    # The decoy's noise was drawn afresh for each refusal of a subject who may not be processed,
    # shaped like the request's crops: work a refusal of one who may never did, and whose time
    # (0.2 ms for one crop, 3.8 ms for twenty) told the two apart. One noise crop is drawn when
    # the service starts; each refusal stacks it as a real one stacks its crops.
    s = lenient
    a, allowed, withdrawn = s.pids[0], s.pids[1], s.pids[2]
    for pid in (a, withdrawn):
        assert s.enroll(pid).status_code == 200
    assert s.call("POST", f"/v1/subjects/{withdrawn}/consent/withdraw", "dpo").status_code == 200
    draws: list = []
    rng = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda *a: draws.append(a) or rng(*a))
    embedded: list[np.ndarray] = []
    spy_work(s, monkeypatch, embedded)
    for n in (1, 3):
        images = s.photos(a, n)  # a's face: someone else's for both
        for pid in (allowed, withdrawn, withdrawn):
            r = s.enroll(pid, images=images)
            assert (r.status_code, error(r)["code"]) == (409, "not_available")
        real, decoy, again = embedded[-3:]
        assert decoy.shape == real.shape and decoy.dtype == real.dtype
        assert decoy.flags.c_contiguous == real.flags.c_contiguous
        assert np.array_equal(decoy, again)  # the same noise: nothing drawn for the request
    assert draws == []


def test_an_operator_is_not_told_why_a_subject_withdrawn_mid_enrolment_is_refused(
    lenient, monkeypatch
):
    # The race: the route checked that a may be enrolled; before the gallery writes, a DPO
    # records a's withdrawal, and the gallery's own check refuses. That refusal named its reason
    # (409 processing_not_allowed, "consent_withdrawn") to the operator, who is owed one answer.
    from visage_ml.app.http.routers import recognition

    s = lenient
    a = s.pids[0]
    assert s.enroll(a).status_code == 200
    checked = recognition._check_not_someone_else

    def then_a_dpo_withdraws(svc, pid, emb):
        checked(svc, pid, emb)
        with svc.lock:
            svc.core.withdraw_consent(pid, ["identification"])

    monkeypatch.setattr(recognition, "_check_not_someone_else", then_a_dpo_withdraws)
    r = s.enroll(a)
    monkeypatch.undo()
    unknown = s.enroll(UNKNOWN, images=s.photos(a, 3))
    assert (r.status_code, error(r)["code"]) == (409, "not_available")
    assert error(r)["message"].replace(a, "PID") == error(unknown)["message"].replace(
        UNKNOWN, "PID"
    )
    assert "withdrawn" not in r.text
    assert not s.gallery.is_searchable(a)
    # A DPO is still told why.
    r = s.enroll(a, role="dpo")
    assert error(r)["code"] == "processing_not_allowed" and "consent_withdrawn" in r.text


def test_an_operator_cannot_enrol_one_face_under_a_second_pid(lenient):
    # The attack: the same face (a's photos) enrolled under b's pid, a subject who may be
    # enrolled but is not yet: the face then answers to both pids, and b's slot is taken.
    s = lenient
    a, b = s.pids[0], s.pids[1]
    assert s.enroll(a).status_code == 200
    r = s.enroll(b, images=s.photos(a, 3))
    assert (r.status_code, error(r)["code"]) == (409, "not_available")
    assert not s.gallery.status(b)["enrolled"]
    assert s.enroll(a).status_code == 200  # a's own re-enrolment still matches only a
    assert s.enroll(b).status_code == 200  # b's own face is welcome
    # A DPO may (twins, a rectification).
    assert s.enroll(s.pids[2], role="dpo", images=s.photos(a, 3)).status_code == 200


def morph_photos(s: Api, a: str, b: Person, t: float, n: int = 3) -> list[str]:
    """``n`` photographs of a face ``t`` of the way from subject ``a``'s face to ``b``'s."""
    pa = s.world.people[a]
    morph = Person(a, (1.0 - t) * pa.pattern + t * b.pattern, pa.group, pa.gender)
    return [png_b64(face_tile(morph, s.world.rng)) for _ in range(n)]


# Steps of 1/8 from a to b: without the anchor all 8 pass, each matching the step before.
MORPH_STEPS = 8


def test_an_operator_cannot_walk_a_template_to_another_face_by_re_enrolment(
    lenient_each_backend,
):
    # The attack: an operator key, who wants their own face (b, a stranger) to be identified and
    # verified as subject a, re-enrols a with morphs a little further from a toward b each time.
    # Each step matches the template stored by the step before; the last is b's own face.
    s = lenient_each_backend
    a = s.pids[0]
    for pid in s.pids[:10]:
        assert s.enroll(pid).status_code == 200
    pa = s.world.people[a]
    b = make_person("p" + "b" * 16, np.random.default_rng(7), pa.group, pa.gender)
    anchor = s.gallery.anchor_path(a).read_bytes()
    steps = [
        s.enroll(a, images=morph_photos(s, a, b, t))
        for t in np.linspace(0.0, 1.0, MORPH_STEPS + 1)[1:]
    ]
    codes = [r.status_code for r in steps]
    # The walk stops where the morphs leave a's anchor (the consented first template), and
    # every later step, b's own face last, gets the one answer of any refusal.
    stop = codes.index(409)
    assert 0 < stop < MORPH_STEPS and codes[stop:] == [409] * (MORPH_STEPS - stop), codes
    assert {error(r)["code"] for r in steps[stop:]} == {"not_available"}
    assert s.gallery.anchor_path(a).read_bytes() == anchor  # operators never move the anchor
    b_photo = png_b64(face_tile(b, s.world.rng))
    assert s.verify(a, b_photo).json()["decision"] == "no_match"
    found = s.identify(b_photo).json()["faces"][0]["matches"]
    assert a not in [m["pid"] for m in found]
    assert s.verify(a, s.photos(a)[0]).json()["decision"] == "match"


def test_a_dpo_re_enrolment_moves_the_anchor_and_an_operator_needs_one(lenient_each_backend):
    s = lenient_each_backend
    a = s.pids[0]
    assert s.enroll(a).status_code == 200
    pa = s.world.people[a]
    b = make_person("p" + "b" * 16, np.random.default_rng(7), pa.group, pa.gender)
    halfway = 0.5
    r = s.enroll(a, images=morph_photos(s, a, b, halfway))
    assert r.status_code == 409  # too far from a's anchor for an operator
    # A dpo key re-enrols (e.g. after a verified rectification) and re-anchors the subject.
    before = s.gallery.anchor_path(a).read_bytes()
    assert s.enroll(a, role="dpo", images=morph_photos(s, a, b, halfway)).status_code == 200
    assert s.gallery.anchor_path(a).read_bytes() != before
    assert s.enroll(a, images=morph_photos(s, a, b, halfway)).status_code == 200
    # Without an anchor (a template enrolled before anchors were kept) an operator gets the one
    # answer of every refusal, even with the same face; a dpo's re-enrolment makes one.
    s.gallery.anchor_path(a).unlink()
    refused = s.enroll(a, images=morph_photos(s, a, b, halfway))
    unknown = s.enroll(UNKNOWN, images=morph_photos(s, a, b, halfway))
    assert refused.status_code == unknown.status_code == 409
    assert error(refused)["message"].replace(a, "PID") == error(unknown)["message"].replace(
        UNKNOWN, "PID"
    )
    assert s.enroll(a, role="dpo", images=morph_photos(s, a, b, halfway)).status_code == 200
    assert s.enroll(a, images=morph_photos(s, a, b, halfway)).status_code == 200


def test_an_operator_re_enrolment_is_not_checked_against_an_anchor_put_back(
    lenient_each_backend, caplog
):
    # The attack: someone who may write the gallery's files keeps a copy of a's anchor, made
    # from photographs that were partly someone else's (a face 3/8 of the way to b's). A dpo
    # rectifies: re-enrols a with a's own face, which moves the anchor; the copy is then put
    # back. Against it, an operator's re-enrolments walk a's template back past the rectified
    # photographs toward b, which a's real anchor refuses.
    s = lenient_each_backend
    a = s.pids[0]
    pa = s.world.people[a]
    b = make_person("p" + "b" * 16, np.random.default_rng(7), pa.group, pa.gender)
    assert s.enroll(a, role="dpo", images=morph_photos(s, a, b, 0.375)).status_code == 200
    stale = s.gallery.anchor_path(a).read_bytes()
    assert s.enroll(a, role="dpo").status_code == 200  # a's own face: the anchor moves
    current = s.gallery.anchor_path(a).read_bytes()
    assert current != stale
    s.gallery.anchor_path(a).write_bytes(stale)
    with caplog.at_level("WARNING"):
        steps = [s.enroll(a, images=morph_photos(s, a, b, t)) for t in (0.25, 0.375, 0.5)]
    unknown = s.enroll(UNKNOWN, images=morph_photos(s, a, b, 0.25))
    assert [r.status_code for r in steps] == [409, 409, 409]
    assert error(steps[0])["message"].replace(a, "PID") == error(unknown)["message"].replace(
        UNKNOWN, "PID"
    )
    # Logged by pid, nothing else of the subject.
    assert any(a in r.getMessage() and "anchor" in r.getMessage() for r in caplog.records)
    # The anchor the ledger records put back: the operator's own-face re-enrolment is back, and
    # the walk stops before b.
    s.gallery.anchor_path(a).write_bytes(current)
    assert s.enroll(a).status_code == 200
    assert s.enroll(a, images=morph_photos(s, a, b, 0.5)).status_code == 409


@pytest.mark.parametrize("removed", [("template",), ("template", "anchor")])
def test_an_operator_cannot_take_over_a_subject_whose_template_file_is_missing(lenient, removed):
    # The attack: a's template file is gone (deleted by someone who may write the gallery's
    # files, or a backup restored without it) while the ledger still records a's template and
    # anchor. Taken for a first enrolment, an operator's enrolment of a stranger's face (b) was
    # written with no match asked for, and it re-anchored a to b: b then verified as a, and a's
    # own face was refused to operators for good.
    s = lenient
    a = s.pids[0]
    assert s.enroll(a).status_code == 200
    pa = s.world.people[a]
    b = make_person("p" + "b" * 16, np.random.default_rng(7), pa.group, pa.gender)
    paths = {"template": s.gallery.template_path(a), "anchor": s.gallery.anchor_path(a)}
    anchor = paths["anchor"].read_bytes()
    for name in removed:
        paths[name].unlink()
    s.gallery.refresh()
    r = s.enroll(a, images=morph_photos(s, a, b, 1.0))
    unknown = s.enroll(UNKNOWN, images=morph_photos(s, a, b, 1.0))
    assert r.status_code == unknown.status_code == 409
    assert error(r)["message"].replace(a, "PID") == error(unknown)["message"].replace(
        UNKNOWN, "PID"
    )
    assert not paths["template"].exists()
    if "anchor" not in removed:
        assert paths["anchor"].read_bytes() == anchor
    # A dpo key re-enrols the subject (as the refusal says), and then an operator's
    # re-enrolment with a's own face is checked against that as before.
    assert s.enroll(a, role="dpo").status_code == 200
    assert s.enroll(a).status_code == 200
    assert s.enroll(a, images=morph_photos(s, a, b, 1.0)).status_code == 409


def test_a_dpo_re_enrolment_between_an_operator_check_and_write_is_not_overwritten(
    lenient_each_backend, monkeypatch
):
    # The race: an operator's re-enrolment of a is checked against a's template and anchor;
    # before it is written, a dpo re-enrols a with another face (a rectification: a's template
    # was someone else's). The operator's write, checked against the anchor the dpo replaced,
    # must not land over the dpo's.
    from visage_ml.app.http.routers import recognition
    from visage_ml.serving.index import template_of

    s = lenient_each_backend
    a, c = s.pids[0], s.pids[1]
    assert s.enroll(a).status_code == 200
    rectified = s.engine.embed(np.stack(recognition._enrolment_crops(s.svc, s.photos(c, 3))))
    checked = recognition._check_not_someone_else
    dpo: list = []

    def then_a_dpo_re_enrols(svc, pid, emb):
        checked(svc, pid, emb)
        dpo.append(s.gallery.enroll(a, rectified, model_version=VERSION))

    monkeypatch.setattr(recognition, "_check_not_someone_else", then_a_dpo_re_enrols)
    r = s.enroll(a)
    monkeypatch.undo()
    assert len(dpo) == 1
    assert r.status_code == 409 and error(r)["code"] == "not_available"
    assert s.gallery.stored_sha256(a) == dpo[0].template_sha256
    np.testing.assert_array_equal(s.gallery.template(a)[0], template_of(rectified, DIM))
    np.testing.assert_array_equal(s.gallery.anchor(a)[0], template_of(rectified, DIM))
    # The same race on a first enrolment: checked as a subject without a template, it must not
    # land over (and re-anchor) the template a dpo enrolled in between.
    a = s.pids[2]
    monkeypatch.setattr(recognition, "_check_not_someone_else", then_a_dpo_re_enrols)
    r = s.enroll(a)
    monkeypatch.undo()
    assert r.status_code == 409 and error(r)["code"] == "not_available"
    assert s.gallery.stored_sha256(a) == dpo[1].template_sha256


def _between(s, pid: str, score: float) -> np.ndarray:
    """A unit embedding that scores ``score`` against ``pid``'s stored template."""
    template, _ = s.gallery.template(pid)
    template = template / np.linalg.norm(template)
    other = np.random.default_rng(3).normal(size=template.shape)
    other -= other @ template * template
    other /= np.linalg.norm(other)
    return (score * template + np.sqrt(1.0 - score**2) * other).astype(np.float32)


def test_identify_never_names_a_subject_whom_verify_refuses_for_the_same_face(
    lenient_each_backend, monkeypatch
):
    # A stranger in front of the camera of a small site. With three people enrolled, a target
    # FPIR of 0.1 % lets each comparison match falsely at 0.033 %, more often than the 1:1
    # threshold lets verification match: identify named a subject for a face that verify,
    # asked about that subject, refused. Such a gallery is searched at the 1:1 threshold.
    s = lenient_each_backend
    for pid in s.pids[:3]:
        assert s.enroll(pid).status_code == 200
    model = s.svc.identification.model
    by_target = model.operating_point(3, TARGET_FPIR).threshold
    assert by_target < THRESHOLD  # what the target alone would serve
    a = s.pids[0]
    probe = _between(s, a, (by_target + THRESHOLD) / 2)
    monkeypatch.setattr(s.engine, "embed", lambda crops: np.repeat(probe[None], len(crops), 0))
    photo = s.photos(a)[0]
    assert s.verify(a, photo).json()["decision"] == "no_match"
    face = s.identify(photo).json()["faces"][0]
    assert face["decision"] == "unknown" and face["matches"] == []
    # What operators are shown: the 1:1 threshold, why, and what it costs.
    h = s.health()
    assert h["gallery_size"] == 3 and h["threshold"] == THRESHOLD == h["verify_threshold"]
    assert h["at_verify_threshold"] is True
    assert "identify never names whom verify would refuse" in h["source"]
    assert h["expected_fpir"] < TARGET_FPIR and h["required_fmr"] > model.fmr(THRESHOLD)
    assert h["expected_fnir"] == pytest.approx(model.expected_fnir(3, THRESHOLD))
    # Just above the 1:1 threshold both name the subject.
    probe = _between(s, a, THRESHOLD + 0.01)
    assert s.verify(a, photo).json()["decision"] == "match"
    assert [m["pid"] for m in s.identify(photo).json()["faces"][0]["matches"]] == [a]


def test_a_face_identify_names_cannot_outlive_its_subjects_erasure_under_a_second_pid(
    lenient_each_backend, monkeypatch
):
    # The attack: an operator enrols a's face under b, another consented pid. When a exercises
    # erasure, a's templates are shredded and the certificate is valid, but b's template is a's
    # face: identify answers b for a's photograph. The face was refused only when it matched a
    # at the 1:1 threshold as well, which on a small gallery is above the 1:N threshold identify
    # answers at: a face identify named as a was enrolled as b. Identify now answers at the 1:1
    # threshold at least; the face is refused at whatever threshold identify answers at.
    s = lenient_each_backend
    a, b = s.pids[0], s.pids[1]
    assert s.enroll(a).status_code == 200
    served = s.health()["threshold"]
    probe = _between(s, a, served + 0.01)
    monkeypatch.setattr(s.engine, "embed", lambda crops: np.repeat(probe[None], len(crops), 0))
    photo = s.photos(a)[0]
    assert [m["pid"] for m in s.identify(photo).json()["faces"][0]["matches"]] == [a]
    r = s.enroll(b, images=s.photos(a, 2))
    assert (r.status_code, error(r)["code"]) == (409, "not_available")
    assert a not in r.text and "dpo key" in error(r)["message"]
    assert not s.gallery.status(b)["enrolled"]
    assert s.call("POST", f"/v1/subjects/{a}/erasure", "dpo").status_code == 200
    face = s.identify(photo).json()["faces"][0]
    assert face["decision"] == "unknown" and face["matches"] == []


def test_a_dpo_may_enrol_a_face_that_matches_another_subject_and_it_is_recorded(
    lenient_each_backend,
):
    # Twins: a dpo key may give a face identify names as a a pid of its own. The answer names
    # whom it matched (the dpo's, never an operator's); the ledger records that a match was
    # overridden (no other pid: the ledger is kept for good) and the audit log whom.
    s = lenient_each_backend
    a, twin, c = s.pids[0], s.pids[1], s.pids[2]
    assert s.enroll(a).status_code == 200
    refused = s.enroll(twin, images=s.photos(a, 3))
    assert refused.status_code == 409 and a not in refused.text
    r = s.enroll(twin, role="dpo", images=s.photos(a, 3))
    assert r.status_code == 200 and r.json()["matches_enrolled"] == [a]
    enrolled = [e for e in s.world.core.ledger.entries() if e.type == "gallery.enrolled"]
    assert enrolled[-1].pid == twin and enrolled[-1].payload["matched_enrolled"] is True
    assert a not in json.dumps(enrolled[-1].payload)
    audit = [
        json.loads(line)
        for line in (s.world.paths.privacy / "audit.jsonl").read_text().splitlines()
    ]
    assert audit[-1]["role"] == "dpo" and audit[-1]["pid"] == twin and audit[-1]["pids"] == [a]
    # A face that matches nobody: nothing to record.
    r = s.enroll(c, role="dpo")
    assert r.status_code == 200 and r.json()["matches_enrolled"] == []
    enrolled = [e for e in s.world.core.ledger.entries() if e.type == "gallery.enrolled"]
    assert "matched_enrolled" not in enrolled[-1].payload
    # An operator is never told whom a face matched, even its own subject's.
    assert s.enroll(c).json()["matches_enrolled"] is None


def test_an_operator_cannot_re_enrol_a_subject_with_another_subjects_face(lenient_each_backend):
    # Re-enrolment of an enrolled subject b with a's face stays refused (it must match b's
    # template and anchor), on both backends, and b's template is left as it was.
    s = lenient_each_backend
    a, b = s.pids[0], s.pids[1]
    assert s.enroll(a).status_code == 200 and s.enroll(b).status_code == 200
    before = s.gallery.stored_sha256(b)
    r = s.enroll(b, images=s.photos(a, 3))
    assert (r.status_code, error(r)["code"]) == (409, "not_available") and a not in r.text
    assert s.gallery.stored_sha256(b) == before
    assert s.call("POST", f"/v1/subjects/{a}/erasure", "dpo").status_code == 200
    face = s.identify(s.photos(a)[0]).json()["faces"][0]
    assert b not in [m["pid"] for m in face["matches"]]


def test_the_gallery_refuses_a_second_pid_for_a_face_it_holds_on_both_backends(
    lenient_each_backend,
):
    # The library's own enrolment (what the HTTP route calls under the gallery's lock): a
    # template matching another searchable subject at the threshold given is not written, and
    # the refusal names only the subject being enrolled.
    from visage_ml.serving.gallery import MatchesEnrolledError

    s = lenient_each_backend
    a, b = s.pids[0], s.pids[1]
    assert s.enroll(a).status_code == 200
    probe = _between(s, a, 0.6)[None, :]
    with pytest.raises(MatchesEnrolledError) as refused:
        s.gallery.enroll(b, probe, model_version=VERSION, distinct_at=lambda _n: 0.5)
    assert a not in str(refused.value) and b in str(refused.value)
    assert "dpo key" in str(refused.value)
    assert not s.gallery.status(b)["enrolled"] and s.gallery.searchable() == [a]
    # Its own subject is no other subject; below the threshold is no match.
    s.gallery.enroll(a, probe, model_version=VERSION, distinct_at=lambda _n: 0.5)
    probe = _between(s, a, 0.6)[None, :]
    s.gallery.enroll(b, probe, model_version=VERSION, distinct_at=lambda _n: 0.7)
    assert sorted(s.gallery.searchable()) == sorted([a, b])


def test_one_face_under_two_new_pids_in_one_enrolment_is_refused_on_both_backends(
    lenient_each_backend,
):
    # Several subjects enrolled at once with ``distinct_at``: the search sees only stored
    # templates, so one face under two pids, neither stored yet, passed it and both were written.
    from visage_ml.serving.gallery import MatchesEnrolledError

    s = lenient_each_backend
    a, b = s.pids[0], s.pids[1]
    face = np.random.default_rng(5).normal(size=s.gallery.embedding_dim).astype(np.float32)
    face /= np.linalg.norm(face)
    with pytest.raises(MatchesEnrolledError):
        s.gallery.enroll_many(
            {a: face[None, :], b: face[None, :]},
            model_version=VERSION,
            distinct_at=lambda _n: 0.5,
        )
    assert s.gallery.searchable() == []
    assert not s.gallery.status(a)["enrolled"] and not s.gallery.status(b)["enrolled"]


def test_a_restricted_subjects_face_under_a_second_pid_is_not_caught(lenient):
    # What de-duplication does not cover (docs/security.md): a restricted subject's template is
    # not searched, not even to refuse a copy of the face, which would process it and tell the
    # operator the subject is there. Lifting the restriction brings the face back under both.
    s = lenient
    a, b = s.pids[0], s.pids[1]
    assert s.enroll(a).status_code == 200
    assert s.call("POST", f"/v1/subjects/{a}/restrict", "dpo").status_code == 200
    assert s.enroll(b, images=s.photos(a, 3)).status_code == 200
    assert s.call("POST", f"/v1/subjects/{a}/lift", "dpo").status_code == 200
    face = s.identify(s.photos(a)[0]).json()["faces"][0]
    assert sorted(m["pid"] for m in face["matches"]) == sorted([a, b])
