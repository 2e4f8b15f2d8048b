"""1:N identification at 1,000 and 10,000 enrolled, measured through the HTTP API; one JSON object.

Everyone in it is an *evaluation-only* SynthFaces identity: people drawn from seeds the project
never trained on (generation and embedding only). Three populations, each from its own seed:

- a **calibration** population, scored like the evaluate stage scores its test split
  (:func:`visage_ml.evaluation.score_model.template_comparisons`, then
  :func:`~visage_ml.evaluation.score_model.build_score_model`): the score model serving derives
  its 1:N threshold from (unless ``--score-model`` names a released ``reports/score_model.json``),
  on scores normalised by the project's served calibration (``reports/score_calibration.json``,
  when the project has one: the same method serving applies, e.g. AS-norm);
- the **enrolled** population (the largest gallery size; smaller galleries are its first
  identities): one photograph each (``--enrol-photos K``: K each, as the gallery stage enrols
  ``gallery.images_per_subject`` and the released score model assumes), detected with the
  project's MTCNN in batches, embedded by the project's exported ONNX embedder and enrolled
  through the library API in bulk
  (``Gallery.enroll_many``) into a temporary project with consent recorded in its ledger;
- **strangers**, never enrolled.

Probes go through HTTP: the app of :func:`visage_ml.app.http.app.create_app` (the same ASGI
stack ``visage serve`` runs: boundary, API keys, routers) driven by Starlette's ``TestClient``
in this process, with an operator key. Per gallery size: ``--mated`` mated probes (a second
photograph of enrolled identities) and ``--strangers`` stranger probes, each through
``POST /v1/identify`` (one face each), twice: with the face-quality gate of
``serving.quality`` and with the gate off (a second app on the same engine and gallery).
Rank-1 (closed-set: is the mate the best-scoring template, whatever the threshold?) is computed
through the library on the same probe crops, since the API never returns candidates below the
threshold.

The detector is wrapped in a cache keyed by the image's pixels (MTCNN is deterministic), so each
probe image pays MTCNN once across gallery sizes, gate settings and reruns (kept under
``--cache``); decoding, alignment, the quality gate, the embedder and the search run every time.

    python benchmarks/bench_identify_scale.py --project DIR [--sizes 1000 10000]
        [--mated 1000] [--strangers 1000] [--calibration 400] [--target-fpir F] [--cache DIR]
        [--score-model reports/score_model.json --enrol-photos 3]

``DIR`` is a project after ``make demo`` (its ``models/embedder.onnx`` and ``params.yaml``).
Embeddings are cached under ``--cache`` (default ``~/.cache/visage-ml/bench``), keyed by the
model's SHA-256, the seeds and the SynthFaces parameters.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from visage_ml.config import ProjectPaths, SynthParams, params_from_dict
from visage_ml.data.detect import second_look
from visage_ml.data.synth import Identity, encode_png, make_population, photograph
from visage_ml.io import sha256_file
from visage_ml.preprocess import align_face

# Seeds of the evaluation-only populations (the demo project trains on project.seed).
SEED_CALIBRATION = 910_001
SEED_ENROLLED = 910_002
SEED_STRANGERS = 910_003
CALIBRATION_IMAGES = 5
DETECT_BATCH = 64
ENROL_BLOCK = 1000  # enrolled identities per cached block of embeddings

log = logging.getLogger("bench_identify_scale")


# Sections of the project's params.yaml a benchmark reads; the others (privacy, ...) may be of an
# older visage-ml and are not needed here.
NEEDED = (
    "project",
    "synth",
    "prepare",
    "train_embedder",
    "train_demographics",
    "evaluate",
    "gallery",
    "serving",
)


def parse_with_logging(ap: argparse.ArgumentParser, logger: logging.Logger) -> argparse.Namespace:
    """``--cache`` (the embeddings' cache) and ``--verbose`` added, the arguments parsed, and
    logging to stderr set up (``logger``, the benchmark's own, at INFO)."""
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "visage-ml" / "bench"))
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logger.setLevel(logging.INFO)
    return args


def project_params(project: ProjectPaths) -> Any:
    """The project's parameters, the sections this benchmark needs only."""
    raw = yaml.safe_load(project.params.read_text(encoding="utf-8")) or {}
    return params_from_dict(
        {k: v for k, v in raw.items() if k in NEEDED}, source=str(project.params)
    )


# ---------------------------------------------------------------------------------------------
# Populations, photographs, crops, embeddings
# ---------------------------------------------------------------------------------------------


def population(synth: SynthParams, n: int, seed: int) -> list[Identity]:
    """``n`` SynthFaces identities of the project's population model, drawn from ``seed``."""
    return make_population(dataclasses.replace(synth, n_identities=n), seed)


def photo(person: Identity, index: int, shot: int, *, synth: SynthParams, seed: int) -> np.ndarray:
    """Photograph ``shot`` of the ``index``-th person of a population (deterministic)."""
    pixels, _ = photograph(person, rng=np.random.default_rng([seed, 11, index, shot]), params=synth)
    return pixels


def detect_crops(
    detector: Any,
    images: Sequence[np.ndarray],
    *,
    crop_size: int,
    min_prob: float,
    look_again: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The most probable face of each image, aligned: ``(crops, found)``; ``look_again``: the
    pipeline's second look (``prepare.second_look``) where the first pass found none."""
    crops = np.zeros((len(images), crop_size, crop_size, 3), dtype=np.uint8)
    found = np.zeros(len(images), dtype=bool)
    for start in range(0, len(images), DETECT_BATCH):
        chunk = list(images[start : start + DETECT_BATCH])
        results = detector.detect(chunk)
        if look_again:
            results = second_look(detector, chunk, results, min_prob=min_prob)
        for k, dets in enumerate(results):
            kept = [d for d in dets if d.prob >= min_prob]
            if kept:
                best = max(kept, key=lambda d: d.prob)
                crops[start + k] = align_face(chunk[k], best.landmarks, crop_size)
                found[start + k] = True
    return crops, found


def cached_embeddings(
    cache: Path,
    key: dict[str, Any],
    make: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """``make()`` (embeddings, found) once per ``key``, kept under ``cache``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache / f"{key['what']}-{digest}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["emb"], z["found"]
    emb, found = make()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, emb=emb, found=found)
    os.replace(tmp, path)
    return emb, found


def population_embeddings(
    cache: Path, params: Any, *, model_sha: str, detector: Any, embedder: Any
) -> Callable[[str, int, list[Identity], int, list[int]], tuple[np.ndarray, np.ndarray]]:
    """``embedded(what, seed, people, start, shots)``: embeddings and found flags of photographs
    ``shots`` of ``people`` (the ``start``-th person of their population first), through the
    project's detector and embedder, cached under ``cache`` by model, seeds and SynthFaces
    parameters (one cache for every benchmark that calls this)."""
    synth, prep = params.synth, params.prepare

    def embedded(
        what: str, seed: int, people: list[Identity], start: int, shots: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        key = {
            "what": what,
            "start": start,
            "stop": start + len(people),
            "seed": seed,
            "shots": shots,
            "model": model_sha,
            "synth": str(synth),
            "second_look": prep.second_look,
        }
        return cached_embeddings(
            cache,
            key,
            lambda: embed_photos(
                people,
                shots,
                synth=synth,
                seed=seed,
                detector=detector,
                embedder=embedder,
                crop_size=prep.image_size,
                min_prob=prep.min_face_prob,
                look_again=prep.second_look,
                first_index=start,
            ),
        )

    return embedded


def enrolment_shots(photos: int) -> list[int]:
    """The photographs an enrolled identity is enrolled from: shot 0, then shots 2, 3, ...
    (shot 1 is its mated probe)."""
    if photos < 1:
        raise ValueError(f"--enrol-photos must be at least 1, got {photos}")
    return [0, *range(2, photos + 1)]


def enrolled_embeddings(
    embedded: Callable[[str, int, list[Identity], int, list[int]], tuple[np.ndarray, np.ndarray]],
    people: list[Identity],
    shots: Sequence[int] = (0,),
) -> tuple[np.ndarray, np.ndarray]:
    """The enrolled population's enrolment photographs ``shots`` (person-major: row
    ``i * len(shots) + k``), embedded and cached in blocks of ``ENROL_BLOCK`` identities (a
    larger gallery reuses a smaller one's blocks)."""
    parts = [
        embedded("enrolled", SEED_ENROLLED, people[s : s + ENROL_BLOCK], s, list(shots))
        for s in range(0, len(people), ENROL_BLOCK)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def embed_photos(
    people: Sequence[Identity],
    shots: Sequence[int],
    *,
    synth: SynthParams,
    seed: int,
    detector: Any,
    embedder: Any,
    crop_size: int,
    min_prob: float,
    look_again: bool,
    first_index: int = 0,
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of photographs ``shots`` of each person (person-major order), and found.

    ``people[k]`` is the ``first_index + k``-th person of its population (its photographs'
    random streams depend on that index).
    """
    embs, founds = [], []
    jobs = [(first_index + i, s) for i in range(len(people)) for s in shots]
    t0 = time.perf_counter()
    for start in range(0, len(jobs), chunk):
        part = jobs[start : start + chunk]
        images = [photo(people[i - first_index], i, s, synth=synth, seed=seed) for i, s in part]
        crops, found = detect_crops(
            detector, images, crop_size=crop_size, min_prob=min_prob, look_again=look_again
        )
        emb = np.asarray(embedder.embed(crops, batch_size=64), dtype=np.float32)
        emb[~found] = 0.0
        embs.append(emb)
        founds.append(found)
        log.info(
            "embedded %d/%d photographs (%.0f s)",
            start + len(part),
            len(jobs),
            time.perf_counter() - t0,
        )
    return np.concatenate(embs), np.concatenate(founds)


# ---------------------------------------------------------------------------------------------
# The served gallery and the HTTP probes
# ---------------------------------------------------------------------------------------------


class CachedDetector:
    """The project's MTCNN, answering repeated images (same pixels) from a cache.

    MTCNN is deterministic, so a cached answer is the answer; the cache is kept in ``path``
    (this benchmark's own file) so that a rerun pays detection only for new images.
    """

    def __init__(self, detector: Any, path: Path | None = None) -> None:
        self.detector = detector
        self.path = path
        self.cache: dict[bytes, list[Any]] = {}
        if path is not None and path.is_file():
            with open(path, "rb") as fh:
                self.cache = pickle.load(fh)  # noqa: S301 - this benchmark's own cache file
        self.calls = 0

    def save(self) -> None:
        """Write the cache to ``path`` (atomically)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(self.cache, fh)
        os.replace(tmp, self.path)

    def detect(self, images: Sequence[Any]) -> list[list[Any]]:
        out: list[list[Any] | None] = []
        todo: list[tuple[int, bytes, Any]] = []
        for i, im in enumerate(images):
            a = np.asarray(im)
            key = hashlib.sha256(a.tobytes() + str(a.shape).encode()).digest()
            hit = self.cache.get(key)
            out.append(hit)
            if hit is None:
                todo.append((i, key, a))
        if todo:
            self.calls += len(todo)
            found = self.detector.detect([a for _, _, a in todo])
            for (i, key, _), dets in zip(todo, found, strict=True):
                self.cache[key] = dets
                out[i] = dets
        return [o if o is not None else [] for o in out]


def register(core: Any, pids: Sequence[str]) -> None:
    """Register ``pids`` with consent to identification (a ``consent.given`` event each)."""
    from visage_ml.privacy.consent import ConsentReceipt, sha256_text
    from visage_ml.privacy.core import NewSubject

    receipt = ConsentReceipt(
        controller="Benchmark",
        controller_contact="bench@example.org",
        purposes=("identification",),
        notice_version="bench",
        notice_hash=sha256_text("benchmark notice"),
        collection_method="benchmark",
        given_at="2026-12-01T00:00:00.000Z",
    )
    core.add_subjects([NewSubject(pid=p) for p in pids], source="bench", snapshot=False)
    events = [
        ("consent.given", pid, {"receipt": receipt.to_dict(), "receipt_hash": receipt.digest()})
        for pid in pids
    ]
    core.ledger.append_many(events)


def wilson(k: int, n: int, z: float = 1.96) -> list[float | None]:
    """95% Wilson interval of a proportion ``k / n``."""
    if n == 0:
        return [None, None]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 5), round(min(1.0, c + h), 5)]


def rates(outcome: dict[str, np.ndarray], groups: dict[str, np.ndarray]) -> dict[str, Any]:
    """FPIR, FNIR and rank-1 (with intervals), overall and per group, from per-probe flags."""

    def one(mask_m: np.ndarray, mask_s: np.ndarray) -> dict[str, Any]:
        fp = int(outcome["false_positive"][mask_s].sum())
        ns = int(mask_s.sum())
        hit = int(outcome["hit"][mask_m].sum())
        nm = int(mask_m.sum())
        r1 = int(outcome["rank1"][mask_m].sum())
        return {
            "fpir": round(fp / ns, 5) if ns else None,
            "fpir_ci95": wilson(fp, ns),
            "false_positives": fp,
            "stranger_probes": ns,
            "fnir": round(1 - hit / nm, 5) if nm else None,
            "fnir_ci95": [None if x is None else round(1 - x, 5) for x in wilson(hit, nm)[::-1]],
            "rank1": round(r1 / nm, 5) if nm else None,
            "mated_probes": nm,
            "quality_refused": {
                "mated": round(float(outcome["refused_mated"][mask_m].mean()), 4) if nm else None,
                "strangers": round(float(outcome["refused_stranger"][mask_s].mean()), 4)
                if ns
                else None,
            },
        }

    out = one(np.ones_like(groups["mated"], bool), np.ones_like(groups["strangers"], bool))
    out["per_group"] = {
        g: one(groups["mated"] == g, groups["strangers"] == g)
        for g in sorted(set(groups["mated"]) | set(groups["strangers"]))
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=os.environ.get("VISAGE_PROJECT") or ".")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--mated", type=int, default=1000)
    ap.add_argument(
        "--enrol-photos",
        type=int,
        default=1,
        help="photographs each enrolled identity is enrolled from (the gallery stage enrols "
        "gallery.images_per_subject, as the released score model assumes)",
    )
    ap.add_argument("--strangers", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=400, help="calibration identities")
    ap.add_argument(
        "--draw",
        type=int,
        default=0,
        help="another draw of calibration people and strangers (their seeds + 10 x draw); the "
        "enrolled stay the same",
    )
    ap.add_argument(
        "--target-fpir",
        type=float,
        default=None,
        help="serve this target instead of serving.identify.target_fpir (0.001 at 100,000 "
        "enrolled asks the tail for the FMR, 1e-8, that 1 %% at a million would)",
    )
    ap.add_argument("--score-model", default=None, help="a released reports/score_model.json")
    ap.add_argument(
        "--raw-scores",
        action="store_true",
        help="ignore the project's score calibration (raw cosine scores, as before calibration)",
    )
    args = parse_with_logging(ap, log)
    # A witness of this run's temporary ledger, never the user's own.
    os.environ.setdefault("VISAGE_WITNESS_DIR", tempfile.mkdtemp(prefix="bench-witness-"))
    from fastapi.testclient import TestClient

    from visage_ml.app.http.app import create_app
    from visage_ml.app.http.auth import KeyStore
    from visage_ml.data.detect import FaceDetector
    from visage_ml.evaluation.calibration import NO_CALIBRATION
    from visage_ml.evaluation.score_model import ScoreModel, template_comparisons
    from visage_ml.evaluation.serving_reports import score_model_document
    from visage_ml.inference import OnnxModel
    from visage_ml.privacy.core import PrivacyCore
    from visage_ml.serving.engine import Engine
    from visage_ml.serving.gallery import Gallery, Threshold
    from visage_ml.serving.quality import QualityGate
    from visage_ml.serving.score_calibration import SCORE_CALIBRATION_FILE, load_score_calibration

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    project = ProjectPaths(Path(args.project).resolve())
    params = project_params(project)
    if args.target_fpir is not None:
        identify = dataclasses.replace(params.serving.identify, target_fpir=args.target_fpir)
        params = dataclasses.replace(
            params, serving=dataclasses.replace(params.serving, identify=identify)
        )
    synth = params.synth
    seed_calibration = SEED_CALIBRATION + 10 * args.draw
    seed_strangers = SEED_STRANGERS + 10 * args.draw
    if params.project.seed in (seed_calibration, SEED_ENROLLED, seed_strangers):
        raise SystemExit("the project was trained on a seed this benchmark uses; change it")
    onnx = project.models / "embedder.onnx"
    embedder = OnnxModel(onnx, expected_kind="embedder")
    model_sha = sha256_file(onnx)
    detector = FaceDetector(device="cpu", min_face_size=params.prepare.min_face_size)
    crop, min_prob = params.prepare.image_size, params.prepare.min_face_prob
    cache = Path(args.cache)
    sizes = sorted(args.sizes)

    embedded = population_embeddings(
        cache, params, model_sha=model_sha, detector=detector, embedder=embedder
    )

    # 1. The score model: the project's released one, or one from the calibration population,
    # on the scores serving compares (the project's calibration applied, as in `visage serve`).
    t = time.perf_counter()
    calibration = None
    if not args.raw_scores and (project.reports / SCORE_CALIBRATION_FILE).is_file():
        calibration, _ = load_score_calibration(project, model_version=embedder.model_version)
    ident = params.serving.identify
    sm = params.evaluate.score_model
    if args.score_model:
        doc = json.loads(Path(args.score_model).read_text())
        source = str(args.score_model)
        if doc.get("template_images") != args.enrol_photos:
            log.warning(
                "%s was measured against %s-image templates; this run enrols %d photograph(s) "
                "per identity (--enrol-photos; a template of fewer photographs may spread "
                "strangers' scores wider)",
                source,
                doc.get("template_images"),
                args.enrol_photos,
            )
    else:
        cal = population(synth, args.calibration, seed_calibration)
        emb, found = embedded(
            "calibration", seed_calibration, cal, 0, list(range(CALIBRATION_IMAGES))
        )
        codes = np.repeat(np.arange(len(cal)), CALIBRATION_IMAGES)
        comparisons = template_comparisons(
            emb[found],
            codes[found],
            template_images=1,
            seed=0,
            calibration=calibration or NO_CALIBRATION,
        )
        doc = score_model_document(
            comparisons,
            sm,
            groups=np.array([p.group for p in cal]),
            seed=0,
            model_version=embedder.model_version,
        )
        source = (
            f"calibration population: {len(cal)} evaluation-only identities x "
            f"{CALIBRATION_IMAGES} photographs (seed {seed_calibration}), 1-image templates"
        )
    model = ScoreModel(doc, confidence=ident.confidence)
    timings["score_model_s"] = time.perf_counter() - t

    # 2. Enrolled and probe populations (embeddings cached in blocks of 1,000 identities).
    t = time.perf_counter()
    block = ENROL_BLOCK
    enrolled_people = population(synth, max(sizes), SEED_ENROLLED)
    shots = enrolment_shots(args.enrol_photos)
    enrol_e, enrol_f = enrolled_embeddings(embedded, enrolled_people, shots)
    enrol_e = enrol_e.reshape(len(enrolled_people), len(shots), -1)
    enrol_f = enrol_f.reshape(len(enrolled_people), len(shots))
    # An identity is enrolled when a face was found in any of its enrolment photographs.
    enrolled_f = enrol_f.any(axis=1)
    strangers = population(synth, args.strangers, seed_strangers)
    timings["enrolment_embeddings_s"] = time.perf_counter() - t

    # 3. A temporary project: consent in its ledger, the gallery, the app.
    tmp = Path(tempfile.mkdtemp(prefix="bench-identify-scale-"))
    paths = ProjectPaths(tmp)
    core = PrivacyCore(paths)
    mtcnn_key = f"{model_sha[:12]}-{params.prepare.min_face_size}-{params.serving.max_detect_side}"
    cached_detector = CachedDetector(detector, cache / f"detections-{mtcnn_key}.pkl")
    engine = Engine(
        embedder=lambda: embedder,
        detector=lambda: cached_detector,
        crop_size=crop,
        min_face_prob=min_prob,
        second_look=params.prepare.second_look,
        max_faces=params.serving.max_faces,
        max_detect_side=params.serving.max_detect_side,
        batch_size=params.serving.batch_size,
    )
    verify_t = model.threshold_for_fmr(params.evaluate.target_fmr, upper=False)
    gallery = Gallery.open(
        paths,
        model_version=embedder.model_version,
        embedding_dim=int(embedder.embedding_dim or enrol_e.shape[2]),
        threshold=Threshold(verify_t, "score model at evaluate.target_fmr"),
        preprocess=embedder.spec.to_dict(),
        core=core,
        embed=engine.embed,
    )
    if calibration is not None:
        gallery.set_calibration(calibration)
    app = create_app(
        paths, params=params, engine=engine, gallery=gallery, core=core, score_model=model
    )
    svc = app.state.visage
    gate = svc.quality
    client = TestClient(app, raise_server_exceptions=False)
    key = KeyStore(paths.api_keys).create("operator")[1]
    headers = {"X-API-Key": key}

    def probe_png(person: Identity, index: int, shot: int, seed: int) -> str:
        pixels = photo(person, index, shot, synth=synth, seed=seed)
        return base64.b64encode(encode_png(pixels)).decode("ascii")

    # Mated probes: identities of the smallest gallery whose enrolment photograph had a face.
    mated_idx = [i for i in range(sizes[0]) if enrolled_f[i]][: args.mated]
    probes = [("mated", i, probe_png(enrolled_people[i], i, 1, SEED_ENROLLED)) for i in mated_idx]
    probes += [("stranger", i, probe_png(p, i, 0, seed_strangers)) for i, p in enumerate(strangers)]
    groups = {
        "mated": np.array([enrolled_people[i].group for i in mated_idx]),
        "strangers": np.array([p.group for p in strangers]),
    }

    def rank1(b64: str) -> str | None:
        from PIL import Image

        img = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
        faces = engine.detect(img)
        if not faces:
            return None
        rows, _, _ = gallery.search(
            engine.embed(faces[0].crop), top_k=1, threshold_for=lambda _n: -2.0
        )
        return rows[0][0].pid if rows[0] else None

    results: dict[str, Any] = {}
    enrolled_n = 0
    for size in sizes:
        t = time.perf_counter()
        items = {
            enrolled_people[i].pid: enrol_e[i][enrol_f[i]]
            for i in range(enrolled_n, size)
            if enrolled_f[i]
        }
        pids = list(items)
        for start in range(0, len(pids), block):
            chunk = pids[start : start + block]
            register(core, chunk)
            gallery.enroll_many({p: items[p] for p in chunk}, model_version=embedder.model_version)
        enrolled_n = size
        timings[f"enrol_{size}_s"] = time.perf_counter() - t
        point = svc.identification.status(gallery.size)
        per_size: dict[str, Any] = {
            "gallery_size": gallery.size,
            "enrolled_identities_without_face": int((~enrolled_f[:size]).sum()),
            "enrolment_photos_without_face": int((~enrol_f[:size]).sum()),
            "threshold": round(point["threshold"], 5),
            "required_fmr": point["required_fmr"],
            "predicted": {
                "fpir": point["expected_fpir"],
                "fnir": point["expected_fnir"],
                "too_large": point["too_large"],
            },
        }
        top1 = {i: rank1(b64) for kind, i, b64 in probes if kind == "mated"}
        for label, quality in (("with_quality_gate", gate), ("without_quality_gate", None)):
            svc.quality = quality if quality is not None else QualityGate(enabled=False)
            t = time.perf_counter()
            hit, fp, refused_m, refused_s, r1 = [], [], [], [], []
            for kind, i, b64 in probes:
                r = client.post("/v1/identify", json={"image": b64, "top_k": 1}, headers=headers)
                faces = r.json().get("faces", []) if r.status_code == 200 else []
                if r.status_code not in (200, 422):
                    raise SystemExit(f"/v1/identify answered {r.status_code}: {r.text[:200]}")
                first = faces[0] if faces else {"decision": "unknown", "matches": []}
                if kind == "mated":
                    pid = enrolled_people[i].pid
                    hit.append(first["decision"] == "match" and first["matches"][0]["pid"] == pid)
                    refused_m.append(first["decision"] == "quality_too_low")
                    r1.append(top1[i] == pid)
                else:
                    fp.append(any(f["decision"] == "match" for f in faces))
                    refused_s.append(bool(faces) and faces[0]["decision"] == "quality_too_low")
            per_size[label] = rates(
                {
                    "hit": np.array(hit),
                    "false_positive": np.array(fp),
                    "refused_mated": np.array(refused_m),
                    "refused_stranger": np.array(refused_s),
                    "rank1": np.array(r1),
                },
                groups,
            )
            timings[f"probes_{size}_{label}_s"] = time.perf_counter() - t
        svc.quality = gate
        per_size["target_fpir"] = ident.target_fpir
        fpir = per_size["with_quality_gate"]["fpir"]
        per_size["fpir_over_target"] = round(fpir / ident.target_fpir, 3) if fpir else fpir
        results[str(size)] = per_size
        log.info("gallery %d: %s", size, json.dumps(per_size)[:400])
    cached_detector.save()
    timings["total_s"] = time.perf_counter() - t_start
    out = {
        "project": str(project.root),
        "embedder_model_version": embedder.model_version,
        "client": "Starlette TestClient: the app of create_app (boundary, API keys, routers) "
        "in-process over ASGI",
        "enrolment": f"library API in bulk (Gallery.enroll_many), {len(shots)} photograph(s) per "
        "identity, MTCNN-aligned; consent recorded in a temporary project's ledger",
        "enrolment_photos": len(shots),
        "populations": {
            "enrolled_seed": SEED_ENROLLED,
            "strangers_seed": seed_strangers,
            "calibration_seed": seed_calibration,
            "project_seed": params.project.seed,
        },
        "score_model": {
            "source": source,
            "n_identities": doc.get("n_identities"),
            "n_impostor": doc.get("n_impostor"),
            # 1 from the calibration population; a released model's is
            # gallery.images_per_subject (compare with enrolment_photos).
            "template_images": doc.get("template_images"),
            "tail": doc.get("tail"),
            "confidence": ident.confidence,
            "min_bounded_fmr": doc.get("min_bounded_fmr"),
            "score_calibration": calibration.method if calibration is not None else "none",
        },
        "quality_gate": dataclasses.asdict(params.serving.quality),
        "mated_probes": len(mated_idx),
        "stranger_probes": len(strangers),
        "sizes": results,
        "second_look": params.prepare.second_look,
        "mtcnn_calls_for_probes": engine.detector.calls,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
