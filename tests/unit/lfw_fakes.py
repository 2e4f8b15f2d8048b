"""An LFW-layout data set drawn with SynthFaces: ``lfw/<Name>/<Name>_NNNN.jpg`` + ``pairs.txt``.

Realistic enough for MTCNN and the whole pipeline, made on the machine (no face data is
downloaded). ``pairs.txt`` follows LFW View 2: a ``<folds> <n>`` header, then per fold ``n``
matched (``name i j``) and ``n`` mismatched (``name1 i name2 j``) lines. Not a test module.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from visage_ml.config import SynthParams
from visage_ml.data.synth import make_population, render_face

# Fictitious names (never real people); one per identity.
FIRST = ("Ada", "Bo", "Cyd", "Dag", "Eli", "Fen", "Gus", "Hal", "Ivo", "Jun", "Kit", "Lev")
LAST = ("Testperson", "Probandus", "Examplename", "Samplesson")


def names(n: int) -> list[str]:
    return [f"{FIRST[i % len(FIRST)]}_{LAST[i // len(FIRST) % len(LAST)]}{i}" for i in range(n)]


def make_lfw_set(
    base: Path,
    *,
    n_people: int = 12,
    per_person: int = 4,
    folds: int = 10,
    pairs_per_fold: int = 3,
    size: int = 112,
    seed: int = 99,
) -> tuple[Path, list[str]]:
    """Write the set under ``base`` (``base/lfw/...`` and ``base/pairs.txt``).

    Returns ``base`` and the pairs lines' image keys (``"<Name>/<n>"``) in order.
    """
    people = names(n_people)
    params = SynthParams(n_identities=n_people)
    population = make_population(params, seed)
    for i, name in enumerate(people):
        folder = base / "lfw" / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, per_person + 1):
            image, _ = render_face(
                population[i], rng=np.random.default_rng([seed, i, k]), params=params, size=size
            )
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=92)
            (folder / f"{name}_{k:04d}.jpg").write_bytes(buf.getvalue())
    rng = np.random.default_rng(seed)
    lines = [f"{folds}\t{pairs_per_fold}"]
    keys: list[str] = []
    for _ in range(folds):
        for _ in range(pairs_per_fold):
            p = people[rng.integers(n_people)]
            i, j = rng.choice(np.arange(1, per_person + 1), size=2, replace=False)
            lines.append(f"{p}\t{i}\t{j}")
            keys += [f"{p}/{i}", f"{p}/{j}"]
        for _ in range(pairs_per_fold):
            a, b = rng.choice(n_people, size=2, replace=False)
            i, j = rng.integers(1, per_person + 1, size=2)
            lines.append(f"{people[a]}\t{i}\t{people[b]}\t{j}")
            keys += [f"{people[a]}/{i}", f"{people[b]}/{j}"]
    (base / "pairs.txt").write_text("\n".join(lines) + "\n")
    return base, keys
