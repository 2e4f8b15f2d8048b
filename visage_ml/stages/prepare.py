"""Stage ``prepare``: purpose filter, MTCNN detection + alignment, identity-disjoint splits.

Reads ``data/raw`` and ``data/registry/consents.parquet``; writes ``data/processed/`` (aligned
crops as a memory-mappable ``faces.u8.npy``, ``manifest.parquet``, ``detection.parquet``,
``splits.json``) and ``reports/prepare.json``. Paths are those of ``dvc.yaml``; knobs come from
``params.yaml`` (``project``, ``prepare``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.detect import FaceDetector, detect_and_align
from visage_ml.data.manifest import (
    MANIFEST_COLUMNS,
    SPLITS,
    assign_splits,
    inventory,
    purpose_filter,
    read_subjects,
    usable_splits,
)
from visage_ml.io import atomic_write_bytes, atomic_write_json, fsync_dir, sha256_file
from visage_ml.privacy.snapshot import read_snapshot

log = logging.getLogger("visage_ml.stages.prepare")


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


MSG_RAW_IMAGE = (
    "{path} cannot be read as an image ({reason}): data/raw was changed outside visage-ml. "
    "Restore it (`dvc checkout data/raw`) or re-import the subject's images, then run again"
)


def open_raw_image(path: Path, root: Path) -> Image.Image:
    """One ``data/raw`` image as RGB, or a ``ValueError`` naming the file (pid and image id)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        try:
            shown = path.relative_to(root).as_posix()
        except ValueError:
            shown = str(path)
        raise ValueError(MSG_RAW_IMAGE.format(path=shown, reason=type(exc).__name__)) from None


def run(paths: ProjectPaths) -> dict:
    """Run the stage for the project at ``paths``; return the report written to prepare.json."""
    params = load_params(paths.params)
    pp = params.prepare
    t0 = time.perf_counter()

    subjects = read_subjects(paths.raw)
    snapshot = read_snapshot(paths.consents)
    pools = purpose_filter(subjects["pid"].tolist(), snapshot)
    attrs = subjects.set_index("pid")
    all_splits = assign_splits(
        attrs["group"].astype("string").fillna("unknown").to_dict(),
        val=pp.split.val,
        test=pp.split.test,
        seed=params.project.seed,
    )
    splits = usable_splits(all_splits, pools)
    images = inventory(paths.raw, set(splits))
    images["split"] = images["pid"].map(splits)
    # Counted from the table: the excluded subjects' files are never opened.
    n_images_of = subjects.set_index("pid")["n_images"]
    n_excluded_images = int(sum(int(n_images_of.get(pid, 0)) for pid in pools.excluded))

    detector = FaceDetector(device=pp.device, min_face_size=pp.min_face_size)
    size = pp.image_size
    n = len(images)
    paths.processed.mkdir(parents=True, exist_ok=True)
    for stale in paths.processed.glob(".faces.all.*.tmp"):
        # Left by a run that was killed: face crops nobody will read.
        stale.unlink(missing_ok=True)
    tmp_faces = paths.processed / f".faces.all.{os.getpid()}.tmp"
    try:
        faces = np.lib.format.open_memmap(
            tmp_faces, mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
        det_rows = []
        kept = 0
        keep_rows: list[dict] = []
        bar = tqdm(total=n, desc="prepare: detect + align", unit="img", disable=None)
        for start in range(0, n, pp.detect_batch):
            chunk = images.iloc[start : start + pp.detect_batch]
            pil = [open_raw_image(Path(p), paths.root) for p in chunk["path"]]
            crops, dets = detect_and_align(detector, pil, size=size, min_prob=pp.min_face_prob)
            for (_, img), crop, det in zip(chunk.iterrows(), crops, dets, strict=True):
                a = attrs.loc[img.pid]
                detected = det is not None
                det_rows.append(
                    {
                        "pid": img.pid,
                        "image_id": img.image_id,
                        "split": img.split,
                        "age": a["age"],
                        "gender": a["gender"],
                        "group": a["group"],
                        "detected": detected,
                        "prob": float(det.prob) if detected else 0.0,
                    }
                )
                if not detected:
                    continue
                faces[kept] = crop
                x1, y1, x2, y2 = det.box
                keep_rows.append(
                    {
                        "row": kept,
                        "pid": img.pid,
                        "image_id": img.image_id,
                        "source_sha256": sha256_file(Path(img.path)),
                        "split": img.split,
                        "age": a["age"],
                        "gender": a["gender"],
                        "group": a["group"],
                        "det_prob": float(det.prob),
                        "box_x1": float(x1),
                        "box_y1": float(y1),
                        "box_x2": float(x2),
                        "box_y2": float(y2),
                    }
                )
                kept += 1
            bar.update(len(chunk))
        bar.close()
        faces.flush()
        del faces

        _shrink_into(tmp_faces, paths.processed / "faces.u8.npy", kept)
    except BaseException:
        # Nothing of a failed run stays in data/processed (the crops are face pixels).
        tmp_faces.unlink(missing_ok=True)
        raise

    manifest = pd.DataFrame(keep_rows, columns=list(MANIFEST_COLUMNS))
    manifest = manifest.astype({"age": "Int16", "gender": "string", "group": "string"})
    _write_parquet(manifest, paths.processed / "manifest.parquet")
    detection = pd.DataFrame(det_rows)
    _write_parquet(detection, paths.processed / "detection.parquet")

    split_ids = {s: sorted(p for p, v in splits.items() if v == s) for s in SPLITS}
    atomic_write_json(paths.processed / "splits.json", {"seed": params.project.seed, **split_ids})

    seconds = time.perf_counter() - t0
    report = _report(
        detection=detection,
        manifest=manifest,
        excluded=pools.exclusion_counts(),
        n_subjects=len(subjects),
        n_excluded_images=n_excluded_images,
        seconds=seconds,
    )
    atomic_write_json(paths.reports / "prepare.json", report)
    return report


def _shrink_into(tmp: Path, final: Path, rows: int, chunk: int = 1024) -> None:
    """Copy the first ``rows`` rows of memmap ``tmp`` into ``final`` atomically, in chunks."""
    src = np.load(tmp, mmap_mode="r")
    staging = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    dst = np.lib.format.open_memmap(
        staging, mode="w+", dtype=src.dtype, shape=(rows, *src.shape[1:])
    )
    for start in range(0, rows, chunk):
        dst[start : start + chunk] = src[start : min(rows, start + chunk)]
    dst.flush()
    del dst, src
    with open(staging, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(staging, final)
    os.unlink(tmp)
    fsync_dir(final.parent)


def _report(
    *,
    detection: pd.DataFrame,
    manifest: pd.DataFrame,
    excluded: dict[str, int],
    n_subjects: int,
    n_excluded_images: int,
    seconds: float,
) -> dict:
    n_img = len(detection)
    miss = {}
    if n_img:
        grp = detection.assign(missed=~detection["detected"]).groupby("group", dropna=False)
        miss = {str(g): round(float(v), 4) for g, v in grp["missed"].mean().items()}
    split_counts = {
        s: {
            "subjects": int(manifest.loc[manifest.split == s, "pid"].nunique()),
            "images": int((manifest.split == s).sum()),
        }
        for s in SPLITS
    }
    return {
        "subjects_total": n_subjects,
        "subjects_used": int(detection["pid"].nunique()) if n_img else 0,
        "subjects_excluded": excluded,
        "images_excluded": n_excluded_images,
        "images_processed": n_img,
        "faces_aligned": len(manifest),
        "miss_rate": round(float((~detection["detected"]).mean()), 4) if n_img else 0.0,
        "miss_rate_by_group": miss,
        "splits": split_counts,
        "seconds": round(seconds, 2),
        "faces_per_second": round(n_img / seconds, 1) if seconds > 0 else 0.0,
    }


def main() -> int:
    """Entry point of ``python -m visage_ml.stages.prepare``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.discover()
    try:
        report = run(paths)
    except (FileNotFoundError, ValueError) as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {k: report[k] for k in ("subjects_used", "faces_aligned", "miss_rate", "seconds")}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
