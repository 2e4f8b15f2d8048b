"""Acquisition of the embedded default data set, SynthFaces, into a project.

Generates the images (``data/raw``, ``data/scenes``), registers every synthetic subject in the
privacy ledger with simulated consent events, writes the per-image table, refreshes the consent
snapshot and puts both folders under DVC. Re-running with the data already present generates
nothing and only completes registration steps a crash may have interrupted; where data/raw's
tables are not checked out though rows are expected in them (DVC tracks data/raw), nothing is
generated either: :class:`~visage_ml.data.rawstore.RawDataMissingError` says to run
``dvc checkout data/raw``.

Every photograph is sealed under its subject's data key and every scene under the ``scenes``
collection key (:class:`~visage_ml.privacy.datakeys.DataKeys`): DVC tracks ciphertext only.
The population is deterministic, so an erased subject would come back with the same pid on a
regeneration: subjects the registry marks erased, or who left a tombstone, are never written
nor registered (counted as ``erased_subject``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from visage_ml import dvcops
from visage_ml.config import PURPOSES, Params, ProjectPaths, to_dict
from visage_ml.data.rawstore import (
    IMAGES_FILE,
    IMAGES_SCHEMA,
    SUBJECTS_SCHEMA,
    RawStore,
    absent_tables,
    check_tables,
    dvc_file,
    read_raw_image,
    read_subjects,
    table_bytes,
)
from visage_ml.io import atomic_write_bytes, canonical_json, sha256_bytes
from visage_ml.privacy.consent import ConsentReceipt, sha256_text
from visage_ml.privacy.core import NewSubject, PrivacyCore
from visage_ml.privacy.datakeys import SUFFIX as SEALED
from visage_ml.privacy.datakeys import DataKeys
from visage_ml.privacy.documents import notice_for_receipts
from visage_ml.privacy.ledger import utc_now
from visage_ml.privacy.records import ensure_records
from visage_ml.privacy.registry import SYNTHFACES_SOURCE

log = logging.getLogger(__name__)

SOURCE = SYNTHFACES_SOURCE
ERASED_SUBJECT = "erased_subject"
NOT_SYNTH = (
    "{path} holds imported data and no SynthFaces; `visage data synth` never adds SynthFaces to "
    "an existing data set (import into a SynthFaces project instead). Use another project "
    "folder for the demo data set"
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
    skipped: dict[str, int] = field(default_factory=dict)


IMAGE_COLUMNS = ["pid", "image_id", "sha256", "width", "height"]


def image_table(raw: Path, keys: DataKeys) -> pd.DataFrame:
    """``data/raw/images.parquet`` rows (:data:`~visage_ml.data.rawstore.IMAGES_SCHEMA`) read
    from the sealed files (decrypted in memory): SHA-256 of each PNG, its size."""
    rows = []
    for folder in sorted(p for p in raw.iterdir() if p.is_dir()):
        for f in sorted(folder.glob(f"*{SEALED}")):
            png = read_raw_image(keys, f)
            with Image.open(io.BytesIO(png)) as im:
                w, h = im.size
            rows.append((folder.name, f.stem, sha256_bytes(png), w, h))
    return pd.DataFrame(rows, columns=IMAGE_COLUMNS)


def _normalise_tables(raw: Path, images: pd.DataFrame) -> None:
    """Give SynthFaces' tables the raw-store schemas (source column, images table)."""
    subjects = pd.read_parquet(raw / "subjects.parquet")
    subjects["source"] = SOURCE
    atomic_write_bytes(raw / "subjects.parquet", table_bytes(subjects, SUBJECTS_SCHEMA), mode=0o600)
    atomic_write_bytes(raw / "images.parquet", table_bytes(images, IMAGES_SCHEMA), mode=0o600)


def _check_tables(raw: Path) -> None:
    """Refuse to generate or complete ``data/raw`` where its tables are not checked out though
    rows are expected in them (:func:`~visage_ml.data.rawstore.check_tables`): SynthFaces
    generated into a data/raw that DVC tracks but that is not checked out would be `dvc add`ed
    as its current version, without any subject imported into it.

    :func:`_normalise_tables` writes subjects.parquet, then images.parquet: a crash between the
    two, before DVC tracked data/raw, leaves images.parquet alone missing, and it is made again
    from the sealed files (:func:`image_table`)."""
    if absent_tables(raw) != [IMAGES_FILE] or dvc_file(raw).is_file():
        check_tables(raw)


def erased_pids(core: PrivacyCore, pids: list[str]) -> set[str]:
    """Those of ``pids`` that the registry marks erased or that left a tombstone."""
    states = core.registry.states()
    out = {pid for pid, st in states.items() if st.erased}
    tombstones = core.tombstones
    if len(tombstones):
        out |= {pid for pid in pids if tombstones.has_subject(pid)}
    return out & set(pids)


def _receipt(
    params: Params, purposes: tuple[str, ...], pid: str, seed: int, notice: tuple[str, str]
) -> ConsentReceipt:
    return ConsentReceipt(
        controller=params.project.controller,
        controller_contact=params.project.controller_contact,
        purposes=purposes,
        notice_version=notice[0],
        notice_hash=notice[1],
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
    # The notice in force (rendered from privacy/records.yaml): what the receipts record.
    notice = notice_for_receipts(core.paths)
    events = []
    for pid in missing:
        p = plan[pid]
        purposes = tuple(x for x in PURPOSES if getattr(p, x, False))
        if purposes:
            r = _receipt(params, purposes, pid, seed, notice)
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
    # Deferred: data.synth loads numba (the renderer), which commands without synthesis skip.
    from visage_ml.data.synth import consent_plan, make_population, write_synthfaces

    synth = params.synth
    seed = params.project.seed
    generated = False
    core = PrivacyCore(paths)
    ensure_records(paths)  # project set-up: the default records of processing
    store = RawStore(paths, core=core, track=False)
    keys = core.data_keys
    population = [p.pid for p in make_population(synth, seed)]
    erased = erased_pids(core, population)
    with store.lock():
        store.recover()
        _check_tables(paths.raw)
        if not paths.subjects.exists():
            summary = write_synthfaces(
                paths.raw,
                paths.scenes,
                synth,
                seed=seed,
                progress=progress,
                keys=keys,
                exclude=erased,
            )
            plan = summary.consent_plan
            generated = True
            _normalise_tables(paths.raw, pd.DataFrame(summary.images, columns=IMAGE_COLUMNS))
        else:
            subjects = read_subjects(paths.raw)
            # SynthFaces imported into later (a mixed project) is reused; imports alone are
            # never topped up with SynthFaces.
            if SOURCE not in set(subjects["source"].dropna()):
                raise FileExistsError(NOT_SYNTH.format(path=paths.raw))
            log.info(
                "data/raw already holds SynthFaces: reusing it (delete data/raw, and `dvc "
                "remove data/raw.dvc` where DVC tracks it, to regenerate)"
            )
            plan = consent_plan(make_population(synth, seed), synth, seed)
        present = set(read_subjects(paths.raw)["pid"].astype(str))
        # A crash after generation may have left subjects unregistered: register what is
        # missing, never an erased subject (a restored backup of data/raw may hold one).
        registered = register_synth_subjects(
            core,
            params,
            {k: v for k, v in plan.items() if k in present and k not in erased},
            seed=seed,
        )
        if not (paths.raw / "images.parquet").exists():
            _normalise_tables(paths.raw, image_table(paths.raw, keys))
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
    n_scenes = (
        len([p for p in paths.scenes.iterdir() if p.suffix in (SEALED, ".png")])
        if paths.scenes.exists()
        else 0
    )
    skipped = {ERASED_SUBJECT: len(erased)} if erased else {}
    if erased:
        log.info("SynthFaces: %d erased subject(s) left out (%s)", len(erased), ERASED_SUBJECT)
    return AcquireResult(
        generated, len(present), n_images, n_scenes, registered, raw_md5, scenes_md5, skipped
    )


def _synth_dict(params: Params) -> dict:
    return to_dict(params.synth)
