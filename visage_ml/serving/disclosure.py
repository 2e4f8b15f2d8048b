"""Disclosure control of analytics releases: duplicate faces, complementary suppression, noise.

Analytics (:mod:`visage_ml.serving.analytics`) releases one table per closed window; this
module makes sure that table reveals no cell below ``k_min``:

- **Duplicate faces count once** (:class:`FaceDeduper`). The same face tiled several times in a
  frame, or a frame replayed, would otherwise multiply one person into a cell of size k. Each
  aligned face crop (the demographic model's input: no embedder is involved) gets a perceptual
  hash, the low frequencies of its 2-D DCT compared with their median (256 bits); a crop
  within ``max_distance`` (share of differing bits) of a crop already counted in the window, or
  of its mirror image (a mirrored tile is the same face), is not counted again. Brightness and
  contrast changes and light pixel noise leave the hash within that distance, while different
  people stay far apart (see :data:`FaceDeduper.max_distance`). Different photographs of one
  person are not recognised as one face (that would take the embedder). The hashes live in
  memory for the open window only and are dropped when it closes: nothing per face is kept
  beyond the window, nothing is written.
- **Complementary suppression** (:func:`complementary_suppression`). Each dimension (age band,
  gender, group) partitions the same faces, so its suppressed cells together hold the total
  minus its released cells. After k-suppression, a dimension's cells under k stay hidden on
  their own, or with the smallest released cell, or the whole dimension is hidden, by a rule
  that looks only at what is released: someone who knows the rule and the release still finds,
  for every hidden cell, windows released the same in which it holds nobody and in which it
  holds someone. (Checking only that no hidden cell has a single possible value was not
  enough: where such a search stopped told which cells were empty.)
- **Differential privacy through OpenDP** (:func:`noisy_counts`). With ``epsilon`` > 0 every
  cell of a window's table is released with discrete Laplace noise from one OpenDP
  measurement over the whole vector, drawn once when the window closes (asking again returns
  the same release, so repeats cannot average it out). OpenDP's privacy map gives the epsilon
  actually spent for the table's L1 sensitivity (the cells one face changes); a window is
  released once and its spending is reported with it (:class:`Budget`).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np
import opendp.prelude as dp
from PIL import Image
from scipy.fft import dctn

log = logging.getLogger(__name__)

SUPPRESSED = "suppressed"
HASH_SIDE = 32  # crops are reduced to this square before the DCT
HASH_FREQS = 16  # the low HASH_FREQS x HASH_FREQS frequencies make the hash
MSG_BUDGET = (
    "this release would spend epsilon {need:.4g} but the window's budget is {budget:.4g} "
    "(serving.analytics.epsilon); a window is released once"
)


# ---------------------------------------------------------------------------------------------
# Duplicate faces
# ---------------------------------------------------------------------------------------------


def perceptual_hash(crop: np.ndarray) -> np.ndarray:
    """256-bit perceptual hash of an aligned face crop (HxWx3 or HxW, any dtype)."""
    arr = np.asarray(crop)
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)).astype(np.uint8)
    img = Image.fromarray(arr).convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX)
    coeffs = dctn(np.asarray(img, dtype=np.float64), norm="ortho")[:HASH_FREQS, :HASH_FREQS]
    flat = coeffs.reshape(-1)
    return flat > np.median(flat[1:])  # the DC term would dominate the median


def face_hashes(crop: np.ndarray) -> np.ndarray:
    """The perceptual hashes of ``crop`` and of its mirror image, shape ``(2, 256)``."""
    arr = np.asarray(crop)
    return np.stack([perceptual_hash(arr), perceptual_hash(arr[:, ::-1])])


@dataclass
class FaceDeduper:
    """Counts each face once per window (see the module docstring).

    Parameters
    ----------
    max_distance
        Largest share of differing hash bits under which two crops are the same face. At 0.1
        (26 bits), measured on 600 aligned SynthFaces test crops of the demo: a crop's mirror
        image, +-20 pixel noise, 30% more contrast or JPEG at quality 60 stay within it; two
        different people never came closer than 46 bits (0.18), mirrored or not.
    """

    max_distance: float = 0.1
    _seen: list[np.ndarray] = field(default_factory=list, repr=False)

    def fresh(self, crops: Sequence[np.ndarray]) -> list[int]:
        """Indexes of ``crops`` not seen before in this window (nor earlier in ``crops``), as
        they are or mirrored; remembers them."""
        return self.fresh_hashes([face_hashes(c) for c in crops])

    def fresh_hashes(self, hashes: Sequence[np.ndarray]) -> list[int]:
        """:meth:`fresh` for hashes computed already: each a :func:`perceptual_hash` or the
        pair of :func:`face_hashes` (then a face matching one counted before, either way
        round, is not fresh)."""
        keep: list[int] = []
        limit = self.max_distance * HASH_FREQS * HASH_FREQS
        for i, h in enumerate(hashes):
            forms = np.atleast_2d(h)
            if self._seen:
                seen = np.stack(self._seen)
                distance = np.count_nonzero(seen[None, :, :] != forms[:, None, :], axis=2)
                if int(distance.min()) <= limit:
                    continue
            self._seen.append(forms[0])
            keep.append(i)
        return keep

    def reset(self) -> None:
        """Forget every hash (the window closed)."""
        self._seen = []

    def __len__(self) -> int:
        return len(self._seen)


# ---------------------------------------------------------------------------------------------
# Complementary suppression
# ---------------------------------------------------------------------------------------------


def _alone_deniable(hidden: int, hidden_sum: float, k_min: int) -> bool:
    """Cells under k hidden on their own keep each one deniable: two or more, holding together
    at least one face and at most what all but one of them can (``k_min - 1`` each). Then every
    hidden cell may hold nobody, and may hold someone, in a window released the same."""
    return hidden >= 2 and 1 <= hidden_sum <= (hidden - 1) * (k_min - 1)


def _partner_deniable(hidden: int, hidden_sum: float, shown: Sequence[float], k_min: int) -> bool:
    """The cells under k and the smallest released one, ``hidden`` cells holding ``hidden_sum``
    together, keep each deniable: for each, windows released the same have it empty and not.

    Empty: the other cells under k empty too, the one taken holding the whole sum, which is
    then under every cell still ``shown`` (the one taken was the smallest). One face: the other
    cells under k at ``k_min - 1`` each (too many to stay hidden alone), the one taken holding
    the rest, at least ``k_min``; so the sum is at least ``k_min + 1 + (hidden - 2) *
    (k_min - 1)``."""
    return bool(shown) and k_min + 1 + max(hidden - 2, 0) * (k_min - 1) <= hidden_sum < min(shown)


def _withheld(cells: Mapping[str, Any], *, total: float, k_min: int) -> list[str]:
    """The released cells of one dimension to withhold beside its cells under k (see
    :func:`complementary_suppression`)."""
    small = sum(v == SUPPRESSED for v in cells.values())
    if not small:
        return []
    shown = sorted((v, n) for n, v in cells.items() if v != SUPPRESSED)
    hidden_sum = total - sum(v for v, _ in shown)
    if _alone_deniable(small, hidden_sum, k_min):
        return []
    if shown and _partner_deniable(
        small + 1, hidden_sum + shown[0][0], [v for v, _ in shown[1:]], k_min
    ):
        return [shown[0][1]]
    return [n for _, n in shown]


def complementary_suppression(out: dict[str, Any], *, dims: Sequence[str], k_min: int) -> list[str]:
    """Suppress more of ``out`` (in place) so that no hidden cell can be told empty or not.

    ``out`` is a released table: ``faces`` and, per dimension in ``dims``, cells as numbers or
    :data:`SUPPRESSED` (k-suppression done). The hidden cells of a dimension hold the total
    less its released cells, so their sum is public; the rule is public too. It is made so that
    someone who knows both still finds, for every hidden cell, a window released exactly the
    same in which it holds nobody and one in which it holds someone:

    - the total is shown when it reaches ``k_min``; otherwise every cell is under k and nothing
      is shown. Each dimension is then withheld from its own cells and the total alone, so the
      dimensions tell nothing about each other's hidden cells;
    - a dimension's cells under k stay hidden on their own when there are two or more and they
      hold between 1 and ``(n - 1) * (k_min - 1)`` faces (:func:`_alone_deniable`): three
      cells under k = 5 holding 9 would each hold at least 1;
    - otherwise the smallest released cell is hidden with them when their sum is still under
      every cell shown (:func:`_partner_deniable`): with ``<18`` empty, ``18-29`` is hidden
      beside it. Were the sum larger, the attacker would know which cell was taken, and how
      much the others hold;
    - otherwise the whole dimension is hidden.

    The conditions look only at what is released (the count of hidden cells, their sum, the
    cells shown), so meeting them tells nothing. Withholding more until no hidden cell has a
    single possible value (the rule before this one) was not enough: where such a search stops
    is itself a clue, and it told empty cells apart (the "minimality attack";
    ``tests/unit/test_redteam_analytics.py``). Returns the cells suppressed here
    (``dim.cell``).
    """
    added: list[str] = []
    if k_min <= 1:  # a cell suppressed under k = 1 is 0 whatever else is released
        return added
    total = out["faces"]
    for d in dims:
        if total == SUPPRESSED:
            # Only under noise can a cell reach k in a window whose total does not.
            names = [n for n, v in out[d].items() if v != SUPPRESSED]
        else:
            names = _withheld(out[d], total=float(total), k_min=k_min)
        for n in names:
            out[d][n] = SUPPRESSED
            added.append(f"{d}.{n}")
    return added


def reconstructable(out: Mapping[str, Any], *, dims: Sequence[str]) -> list[str]:
    """The suppressed cells of ``out`` an outsider can work out: the dimension sums to the
    total (released, or the sum of a dimension released whole), so a dimension with one
    suppressed cell gives it away, and one whose suppressed cells sum to 0 gives them all away.
    Empty for a release made by :func:`complementary_suppression`."""
    total = out["faces"]
    if total == SUPPRESSED:
        whole = [d for d in dims if all(v != SUPPRESSED for v in out[d].values())]
        total = sum(out[whole[0]].values()) if whole else None
    found: list[str] = []
    if total is None:
        return found
    for d in dims:
        hidden = [n for n, v in out[d].items() if v == SUPPRESSED]
        rest = total - sum(v for v in out[d].values() if v != SUPPRESSED)
        if len(hidden) == 1 or (hidden and rest <= 0):
            found += [f"{d}.{n}={rest if len(hidden) == 1 else 0}" for n in hidden]
    return found


# ---------------------------------------------------------------------------------------------
# Noise (OpenDP) and its accounting
# ---------------------------------------------------------------------------------------------


@functools.cache
def _measurement(scale: float) -> Any:
    # make_laplace on an integer vector is discrete Laplace; it is a "contrib" constructor.
    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
    return dp.m.make_laplace(*space, scale=scale)


@dataclass
class Budget:
    """The privacy budget of one window: what was allowed, what a release spent."""

    epsilon: float
    spent: float = 0.0
    releases: int = 0
    sensitivity: int = 0
    scale: float = 0.0

    def charge(self, epsilon: float) -> None:
        if self.spent + epsilon > self.epsilon * (1 + 1e-9):
            raise RuntimeError(MSG_BUDGET.format(need=self.spent + epsilon, budget=self.epsilon))
        self.spent += epsilon
        self.releases += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "mechanism": "discrete Laplace (OpenDP make_laplace)" if self.scale else "none",
            "library": f"opendp {version('opendp')}",
            "epsilon_budget": self.epsilon,
            "epsilon_spent": round(self.spent, 6),
            "releases": self.releases,
            "sensitivity": self.sensitivity,
            "scale": self.scale,
        }


def noisy_counts(
    values: Sequence[int], *, epsilon: float, sensitivity: int, budget: Budget | None = None
) -> list[int]:
    """``values`` with discrete Laplace noise from one OpenDP measurement over the vector.

    The scale is ``sensitivity / epsilon``; OpenDP's privacy map of the measurement at
    ``sensitivity`` is what is charged to ``budget`` (refused when it would exceed it).
    """
    scale = float(sensitivity) / float(epsilon)
    meas = _measurement(scale)
    spent = float(meas.map(d_in=int(sensitivity)))
    if budget is not None:
        budget.charge(spent)
        budget.sensitivity, budget.scale = int(sensitivity), scale
    return list(meas([round(v) for v in values]))


def sensitivity_of(table: Any, dims: Sequence[str]) -> int:
    """Cells one face changes in ``table``: the total, one per dimension, one per joint
    dimension (when the table keeps joint counts)."""
    return 1 + len(dims) + len(getattr(table, "joint", None) or {})


def _cells(table: Any, dims: Sequence[str]) -> list[tuple[str, ...]]:
    cells: list[tuple[str, ...]] = [("faces",)]
    cells += [(d, c) for d in dims for c in getattr(table, d)]
    joint = getattr(table, "joint", None) or {}
    cells += [("joint", d, k) for d in joint for k in joint[d]]
    return cells


def noised_table(
    table: Any, *, dims: Sequence[str], epsilon: float, budget: Budget | None = None
) -> Any:
    """A copy of count ``table`` with every cell noised by one OpenDP draw over the whole
    vector (:func:`noisy_counts`; negative counts become 0)."""
    cells = _cells(table, dims)
    out = copy.deepcopy(table)

    def slot(t: Any, cell: tuple[str, ...]) -> tuple[Any, str]:
        if cell[0] == "joint":
            return t.joint[cell[1]], cell[2]
        return getattr(t, cell[0]), cell[1]

    values = [
        int(table.faces) if c[0] == "faces" else int(slot(table, c)[0][slot(table, c)[1]])
        for c in cells
    ]
    noisy = noisy_counts(
        values, epsilon=epsilon, sensitivity=sensitivity_of(table, dims), budget=budget
    )
    for cell, v in zip(cells, noisy, strict=True):
        if cell[0] == "faces":
            out.faces = max(int(v), 0)
        else:
            holder, key = slot(out, cell)
            holder[key] = max(int(v), 0)
    return out
