"""The 1:N identification threshold of the gallery that is served, re-derived as it changes size.

Evaluation stores the impostor and genuine score distributions as a score model
(``reports/score_model.json``, :mod:`visage_ml.evaluation.score_model`), released in the
privacy ledger like ``reports/threshold.json``. Serving keeps the false positive identification
rate at ``serving.identify.target_fpir`` whatever the gallery's size ``N``: a stranger searched
against ``N`` templates is falsely matched with probability ``1 - (1 - FMR(t)) ** N``, so the
threshold is the score ``t`` at which the model's bound on FMR at level
``serving.identify.confidence`` is ``1 - (1 - target_fpir) ** (1 / N)``: at 0.5 (the default)
the median over identity resamples, which serves FPIR about the target; at 0.8 and above an
upper confidence bound, which keeps it under the target at a cost in misses
(``benchmarks/bench_fpir_draws.py``). ``N`` is the number of
searchable templates at the moment of each search (:meth:`Gallery.search` asks under the
gallery's lock), so enrolments, erasures, withdrawals and restrictions move the threshold at
once; operating points are cached per ``N``.

A gallery is flagged *too large for the target at this model's accuracy* when the expected
FNIR at its threshold exceeds ``serving.identify.max_expected_fnir``, or when the FMR it needs
is below what the score model can bound (``min_bounded_fmr``): the answer "unknown" is then
either nearly always given or not backed by the evaluation.

The 1:1 verification threshold (``reports/threshold.json``, at ``evaluate.target_fmr``) is
unchanged: a verification compares with one template, whatever the gallery's size. It is also
the lowest threshold identification serves: on a small gallery the target FPIR would allow each
comparison a larger FMR than verification does (below about ``target_fpir / target_fmr``
templates: 10 at the defaults), and ``/v1/identify`` would name a subject whom ``/v1/verify``
refuses for the same face. Such a gallery is searched at the 1:1 threshold, and its expected
FPIR is below the target (``source`` says so).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.evaluation.score_model import OperatingPoint, ScoreModel
from visage_ml.io import sha256_bytes

logger = logging.getLogger(__name__)

SCORE_MODEL_FILE = "score_model.json"
SOURCE_MODEL = "reports/score_model.json"
SOURCE_FIXED = "the 1:1 verification threshold (no score model: FPIR grows with the gallery)"
# Why a small gallery is searched at the 1:1 threshold, as operators are told (gallery info and
# the demo; ``source`` says where that threshold comes from too).
_WHY_VERIFY = (
    "the target allows a lower one at this size, and identify never names whom verify would refuse"
)
AT_VERIFY_THRESHOLD = f"the 1:1 threshold: {_WHY_VERIFY}"
SOURCE_VERIFY = f"the 1:1 verification threshold (reports/threshold.json): {_WHY_VERIFY}"

MSG_NO_SCORE_MODEL = (
    "{path} is missing: the 1:N identification threshold is derived from the score model that "
    "evaluation stores; run `dvc repro evaluate`"
)
MSG_SCORE_MODEL_VERSION = (
    "{path} was computed for embedder {found!r} but serving uses {expected!r}; run `dvc repro "
    "evaluate` for this embedder"
)
MSG_UNREADABLE = "{path} is not a score model ({error}); run `dvc repro evaluate`"
MSG_TOO_LARGE_FNIR = (
    "gallery too large for the target at this model's accuracy: with {n} searchable templates "
    "and target FPIR {fpir:g}, the threshold {t:.4f} is expected to miss {fnir:.0%} of enrolled "
    "people (above serving.identify.max_expected_fnir = {limit:g}); use a more accurate "
    "embedder, a smaller gallery or a higher target FPIR"
)
MSG_TOO_LARGE_BOUND = (
    "gallery too large for the target at this model's accuracy: with {n} searchable templates "
    "and target FPIR {fpir:g} each comparison may match falsely at most {need:.2g}, below the "
    "{floor:.2g} the score model can bound (it rests on {n_imp} impostor comparisons); evaluate "
    "on more identities, or use a smaller gallery or a higher target FPIR"
)
# Operating points remembered (one per gallery size seen).
CACHE_SIZE = 4096


def load_score_model(
    paths: ProjectPaths, *, model_version: str | None, confidence: float
) -> tuple[ScoreModel, str]:
    """``reports/score_model.json`` for the serving embedder, and the SHA-256 of its bytes.

    Raises
    ------
    FileNotFoundError
        No score model.
    ValueError
        Unreadable, of another format or embedder, or without a bound at ``confidence``.
    """
    path = Path(paths.reports) / SCORE_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(MSG_NO_SCORE_MODEL.format(path=path))
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(MSG_UNREADABLE.format(path=path, error=type(exc).__name__)) from None
    if not isinstance(doc, dict):
        raise ValueError(MSG_UNREADABLE.format(path=path, error="not an object"))
    found = doc.get("embedder_model_version")
    if model_version is not None and found != model_version:
        raise ValueError(
            MSG_SCORE_MODEL_VERSION.format(path=path, found=found, expected=model_version)
        )
    try:
        model = ScoreModel(doc, confidence=confidence)
    except (KeyError, TypeError) as exc:
        raise ValueError(MSG_UNREADABLE.format(path=path, error=type(exc).__name__)) from None
    return model, sha256_bytes(raw)


@dataclass(frozen=True)
class Served:
    """The identification operating point at one gallery size, as shown to operators."""

    point: OperatingPoint
    source: str
    too_large: bool
    warning: str | None

    def to_dict(self) -> dict[str, Any]:
        p = self.point
        return {
            "gallery_size": p.gallery_size,
            "target_fpir": p.target_fpir,
            "threshold": p.threshold,
            "required_fmr": _finite(p.required_fmr),
            "expected_fpir": _finite(p.expected_fpir),
            "expected_fnir": _finite(p.expected_fnir),
            "too_large": self.too_large,
            "warning": self.warning,
            "source": self.source,
            # Raised to the 1:1 threshold: the target alone allows a lower one at this size.
            "at_verify_threshold": p.floored,
        }


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


class IdentificationPolicy:
    """The 1:N threshold at each gallery size (from a score model, or fixed without one).

    Parameters
    ----------
    model
        The score model; None keeps the fixed ``fallback`` threshold (and says so).
    target_fpir, max_expected_fnir
        ``serving.identify`` parameters.
    verify_threshold
        The 1:1 verification threshold: the lowest threshold served, and the one used without
        a score model (only for galleries built in code, e.g. tests; ``visage serve`` refuses to
        start without a score model).
    """

    def __init__(
        self,
        model: ScoreModel | None,
        *,
        target_fpir: float,
        max_expected_fnir: float,
        verify_threshold: float,
    ) -> None:
        self.model = model
        self.target_fpir = float(target_fpir)
        self.max_expected_fnir = float(max_expected_fnir)
        self.verify_threshold = float(verify_threshold)
        self.served = functools.lru_cache(maxsize=CACHE_SIZE)(self._served)
        self._warned: set[int] = set()

    @classmethod
    def from_params(
        cls, model: ScoreModel | None, params: Any, *, verify_threshold: float
    ) -> IdentificationPolicy:
        """The policy of ``params.serving.identify`` (a :class:`visage_ml.config.Params`)."""
        ident = params.serving.identify
        return cls(
            model,
            target_fpir=ident.target_fpir,
            max_expected_fnir=ident.max_expected_fnir,
            verify_threshold=verify_threshold,
        )

    def threshold(self, n: int) -> float:
        """The threshold a search of ``n`` searchable templates is answered at (logs, once per
        size, when the gallery is too large for the target; :meth:`status` only reports it)."""
        served = self.served(int(n))
        if served.warning is not None and served.too_large and int(n) not in self._warned:
            self._warned.add(int(n))
            logger.warning(served.warning)
        return served.point.threshold

    def _served(self, n: int) -> Served:
        if self.model is None:
            point = OperatingPoint(
                gallery_size=n,
                target_fpir=self.target_fpir,
                required_fmr=float("nan"),
                threshold=self.verify_threshold,
                expected_fpir=float("nan"),
                expected_fnir=float("nan"),
                bounded=False,
            )
            return Served(point, SOURCE_FIXED, too_large=False, warning=SOURCE_FIXED)
        point = self.model.operating_point(max(n, 1), self.target_fpir, floor=self.verify_threshold)
        source = SOURCE_VERIFY if point.floored else SOURCE_MODEL
        point = OperatingPoint(**{**point.to_dict(), "gallery_size": n})
        warning = None
        if not point.bounded:
            warning = MSG_TOO_LARGE_BOUND.format(
                n=n,
                fpir=self.target_fpir,
                need=point.required_fmr,
                floor=self.model.min_bounded_fmr,
                n_imp=self.model.doc.get("n_impostor", "?"),
            )
        elif point.expected_fnir > self.max_expected_fnir:
            warning = MSG_TOO_LARGE_FNIR.format(
                n=n,
                fpir=self.target_fpir,
                t=point.threshold,
                fnir=point.expected_fnir,
                limit=self.max_expected_fnir,
            )
        return Served(point, source, too_large=warning is not None, warning=warning)

    def status(self, n: int) -> dict[str, Any]:
        """What ``/healthz`` and ``visage gallery info`` show for ``n`` searchable templates."""
        out = self.served(int(n)).to_dict()
        if self.model is not None:
            out["confidence"] = self.model.confidence
            out["bound"] = self.model.bound
            # The template size the FMR was measured on; the gallery's own templates average
            # gallery.images_per_subject images (README: how the threshold is chosen).
            out["score_model_template_images"] = self.model.doc.get("template_images")
            out["min_bounded_fmr"] = self.model.min_bounded_fmr
        return out
