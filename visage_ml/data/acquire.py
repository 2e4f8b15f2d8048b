"""Acquisition of the embedded default data set, SynthFaces, into a project.

Generates the images (``data/raw``, ``data/scenes``), registers every synthetic subject in the
privacy ledger with simulated consent events, writes the per-image table, refreshes the consent
snapshot and puts both folders under DVC. Re-running with the data already present generates
nothing and only completes registration steps a crash may have interrupted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from visage_ml import dvcops
from visage_ml.config import PURPOSES, Params, ProjectPaths
from visage_ml.data.rawstore import (
    IMAGES_SCHEMA,
    SUBJECTS_SCHEMA,
    RawStore,
    read_subjects,
    table_bytes,
)
from visage_ml.io import atomic_write_bytes, canonical_json, sha256_file
from visage_ml.privacy.consent import ConsentReceipt, sha256_text
from visage_ml.privacy.core import NewSubject, PrivacyCore
from visage_ml.privacy.ledger import utc_now

log = logging.getLogger(__name__)

SOURCE = "synthfaces"
NOTICE_VERSION = "synthfaces-notice-v1"
NOT_SYNTH = (
    "{path} holds imported data, not SynthFaces; `visage data synth` never mixes the two. "
    "Use another project folder for the demo data set"
)


@dataclass(frozen=True)
class AcquireResult:
    """What :func:`acquire_synthfaces` did."""

    generated: bool
    n_subjects: int
    n_images: int
    n_scenes: int
    registered: int
    raw_md5: str | None
    scenes_md5: str | None


def image_table(raw: Path) -> pd.DataFrame:
    """``data/raw/images.parquet`` rows (:data:`~visage_ml.data.rawstore.IMAGES_SCHEMA`)."""
    rows = []
    for folder in sorted(p for p in raw.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.png")):
            with Image.open(f) as im:
                w, h = im.size
            rows.append((folder.name, f.stem, sha256_file(f), w, h))
    return pd.DataFrame(rows, columns=["pid", "image_id", "sha256", "width", "height"])


def _normalise_tables(raw: Path) -> None:
    """Give SynthFaces' tables the raw-store schemas (source column, images table)."""
    subjects = pd.read_parquet(raw / "subjects.parquet")
    subjects["source"] = SOURCE
    atomic_write_bytes(raw / "subjects.parquet", table_bytes(subjects, SUBJECTS_SCHEMA))
    atomic_write_bytes(raw / "images.parquet", table_bytes(image_table(raw), IMAGES_SCHEMA))


def _receipt(params: Params, purposes: tuple[str, ...], pid: str, seed: int) -> ConsentReceipt:
    return ConsentReceipt(
        controller=params.project.controller,
        controller_contact=params.project.controller_contact,
        purposes=purposes,
        notice_version=NOTICE_VERSION,
        notice_hash=sha256_text(NOTICE_VERSION),
        collection_method="simulated (SynthFaces)",
        given_at=utc_now(),
        evidence_hash=sha256_text(f"synthfaces:{seed}:{pid}"),
    )


def register_synth_subjects(core: PrivacyCore, params: Params, plan: dict, *, seed: int) -> int:
    """Register the subjects of ``plan`` (pid -> ConsentPlan) not yet in the registry.

    Returns how many were registered. Idempotent: subjects already known are left alone.
    """
    missing = [pid for pid in sorted(plan) if pid not in core.registry]
    if not missing:
        return 0
    core.add_subjects([NewSubject(pid=pid) for pid in missing], source=SOURCE, snapshot=False)
    events = []
    for pid in missing:
        p = plan[pid]
        purposes = tuple(x for x in PURPOSES if getattr(p, x))
        if purposes:
            r = _receipt(params, purposes, pid, seed)
            events.append(
                ("consent.given", pid, {"receipt": r.to_dict(), "receipt_hash": r.digest()})
            )
        if p.restricted:
            events.append(("restriction.set", pid, {"reason_code": "simulated"}))
        if p.objected:
            events.append(("objection", pid, {"purposes": list(PURPOSES)}))
    core.ledger.append_many(events)
    return len(missing)


def acquire_synthfaces(
    paths: ProjectPaths, params: Params, *, progress: bool = True
) -> AcquireResult:
    """Generate SynthFaces into ``paths`` (unless present), register subjects, track with DVC."""
    from visage_ml.data.synth import consent_plan, make_population, write_synthfaces

    synth = params.synth
    seed = params.project.seed
    generated = False
    store = RawStore(paths, track=False)
    core = PrivacyCore(paths)
    with store.lock():
        store.recover()
        if not paths.subjects.exists():
            summary = write_synthfaces(paths.raw, paths.scenes, synth, seed=seed, progress=progress)
            plan = summary.consent_plan
            generated = True
            _normalise_tables(paths.raw)
        else:
            subjects = read_subjects(paths.raw)
            if set(subjects["source"].dropna()) - {SOURCE}:
                raise FileExistsError(NOT_SYNTH.format(path=paths.raw))
            log.info(
                "data/raw already holds SynthFaces: reusing it (delete data/raw to regenerate)"
            )
            plan = consent_plan(make_population(synth, seed), synth, seed)
        present = set(read_subjects(paths.raw)["pid"].astype(str))
        # A crash after generation may have left subjects unregistered: register what is missing.
        registered = register_synth_subjects(
            core, params, {k: v for k, v in plan.items() if k in present}, seed=seed
        )
        if not (paths.raw / "images.parquet").exists():
            _normalise_tables(paths.raw)
    if registered:
        core.ledger.append(
            "dataset.acquired",
            None,
            {
                "source": SOURCE,
                "seed": seed,
                "subjects": len(present),
                "params_sha256": sha256_text(canonical_json(_synth_dict(params))),
            },
        )
    core.snapshot()
    raw_md5 = dvcops.track(paths.root, paths.raw)
    scenes_md5 = dvcops.track(paths.root, paths.scenes) if paths.scenes.exists() else None
    n_images = len(pd.read_parquet(paths.raw / "images.parquet"))
    n_scenes = len(list(paths.scenes.glob("*.png"))) if paths.scenes.exists() else 0
    return AcquireResult(
        generated, len(present), n_images, n_scenes, registered, raw_md5, scenes_md5
    )


def _synth_dict(params: Params) -> dict:
    from visage_ml.config import to_dict

    return to_dict(params.synth)
