"""Sealing at rest vs plaintext files: prepare faces/s and training images/s, same run.

Goal (issue: sealed biometrics): with every raw image and crop sealed under its subject's key,
``prepare`` aligns faces at >= 0.90 of the rate of the plaintext layout it replaced, and the
training loop runs at >= 0.90 of its images/s. Both sides run here, on the same images, with the
same detector and model, alternating rounds (best of each):

- prepare: the detect-and-align loop reading plaintext PNG files and writing a ``faces.u8.npy``
  memmap (the layout before sealing) against the library's sealed path (each ``.sealed`` file
  decrypted in memory by :func:`visage_ml.data.prepare.open_raw_image`, each subject's crops
  sealed by :class:`visage_ml.data.crops.CropWriter`);
- training: :func:`~visage_ml.training.loop.fit_embedder` over the crops as the stage gets them,
  from a memmap against decrypted into memory by :func:`visage_ml.data.crops.read_crops`
  (resized once to the model's input side by ``train_val_images`` either way), plus the time to
  open the crops.

Prints one JSON object.

    python benchmarks/bench_sealing.py [--ids 40 --per-id 3 --crops 1024 --steps 8 --rounds 2]

``prepare.overhead_per_image`` times what sealing adds per image without the detector (reading
and decrypting vs reading; sealing crops vs writing a memmap): on a loaded machine the
faces/s of both sides swing more than that difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from visage_ml.config import ProjectPaths, SynthParams
from visage_ml.data.crops import CropWriter, read_crops, write_crops
from visage_ml.data.detect import FaceDetector, detect_and_align
from visage_ml.data.prepare import open_raw_image
from visage_ml.data.processed import ProcessedData, train_val_images
from visage_ml.data.synth import encode_png, make_population, photograph
from visage_ml.privacy.datakeys import DataKeys

GOAL = 0.90
SIZE = 112
BATCH = 64  # prepare.detect_batch


def _photos(root: Path, keys: DataKeys, ids: int, per_id: int, seed: int) -> tuple[list, list]:
    """The same photographs as plaintext PNG files and as sealed files: (plain, sealed) paths."""
    params = dataclasses.replace(SynthParams(), n_identities=ids)
    plain, sealed = [], []
    for i, person in enumerate(make_population(params, seed)):
        for j in range(per_id):
            pixels, _ = photograph(person, rng=np.random.default_rng([seed, i, j]), params=params)
            png = encode_png(pixels)
            image_id = f"i{i:06x}{j:06x}"
            for folder, data, out in (
                (root / "plain" / person.pid, png, plain),
                (root / "raw" / person.pid, keys.seal_raw(person.pid, image_id, png), sealed),
            ):
                folder.mkdir(parents=True, exist_ok=True)
                suffix = ".png" if out is plain else ".sealed"
                (folder / f"{image_id}{suffix}").write_bytes(data)
                out.append(folder / f"{image_id}{suffix}")
    return plain, sealed


def _prepare_plaintext(detector: FaceDetector, files: list[Path], out: Path) -> float:
    """Faces/s of the loop before sealing: PNG files in, a plaintext memmap out."""
    t0 = time.perf_counter()
    faces = np.lib.format.open_memmap(
        out, mode="w+", dtype=np.uint8, shape=(len(files), SIZE, SIZE, 3)
    )
    kept = 0
    for start in range(0, len(files), BATCH):
        pil = []
        for f in files[start : start + BATCH]:
            with Image.open(f) as im:
                pil.append(im.convert("RGB"))
        crops, dets = detect_and_align(detector, pil, size=SIZE, min_prob=0.9)
        for crop, det in zip(crops, dets, strict=True):
            if det is not None:
                faces[kept] = crop
                kept += 1
    faces.flush()
    del faces
    return len(files) / (time.perf_counter() - t0)


def _prepare_sealed(
    detector: FaceDetector, files: list[Path], out: Path, keys: DataKeys, root: Path
) -> float:
    """Faces/s of the library's sealed path: decrypt in memory, seal each subject's crops."""
    t0 = time.perf_counter()
    with CropWriter(out, keys, SIZE) as writer:
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            pil = [open_raw_image(f, root, keys)[0] for f in chunk]
            crops, dets = detect_and_align(detector, pil, size=SIZE, min_prob=0.9)
            for f, crop, det in zip(chunk, crops, dets, strict=True):
                if det is not None:
                    writer.add(f.parent.name, crop)
        writer.commit()
    return len(files) / (time.perf_counter() - t0)


def _overhead(plain: list[Path], sealed: list[Path], keys: DataKeys, root: Path) -> dict:
    """Milliseconds per image of what sealing adds, without the detector's noise: reading a
    sealed file and decrypting it vs reading the PNG file, and sealing 112 px crops per subject
    vs writing them into a memmap (best of 5 passes each)."""

    def best(fn) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) * 1000 / len(plain)

    read_plain = best(lambda: [f.read_bytes() for f in plain])
    read_sealed = best(
        lambda: [keys.open_raw(f.read_bytes(), f.parent.name, f.stem) for f in sealed]
    )
    crops = np.random.default_rng(0).integers(0, 256, (len(plain), SIZE, SIZE, 3), np.uint8)

    def write_plain() -> None:
        out = np.lib.format.open_memmap(
            root / "o.npy", mode="w+", dtype=np.uint8, shape=crops.shape
        )
        out[:] = crops
        out.flush()

    def write_sealed() -> None:
        with CropWriter(root / "o.sealed", keys, SIZE) as w:
            for f, crop in zip(sealed, crops, strict=True):
                w.add(f.parent.name, crop)
            w.commit()

    return {
        "read_ms_plaintext": round(read_plain, 4),
        "read_decrypt_ms_sealed": round(read_sealed, 4),
        "crop_write_ms_plaintext": round(best(write_plain), 4),
        "crop_seal_ms_sealed": round(best(write_sealed), 4),
    }


def _train(images: np.ndarray, manifest: pd.DataFrame, args: argparse.Namespace) -> float:
    """Images/s of fit_embedder over ``images`` as the training stage hands them in."""
    import torch  # deferred: heavy

    from visage_ml.models.backbones import create_backbone
    from visage_ml.models.heads import create_head
    from visage_ml.training.config import LoopConfig, seed_everything
    from visage_ml.training.loop import fit_embedder

    data = ProcessedData(faces=images, manifest=manifest, data_md5="bench")
    train = manifest.sort_values("row").reset_index(drop=True)
    array, rows, _ = train_val_images(data, train, train.iloc[:0], args.input_size)
    seed_everything(0)
    torch.set_num_threads(args.threads)
    model = create_backbone("mobilefacenet", embedding_dim=128, input_size=args.input_size)
    labels = pd.factorize(train["pid"])[0]
    head = create_head("arcface", embedding_dim=128, num_classes=int(labels.max()) + 1)
    marks: dict[str, float] = {}

    def on_step(step: int) -> None:
        if step == args.warmup:
            marks["t0"] = time.perf_counter()
        elif step == args.warmup + args.steps:
            marks["t1"] = time.perf_counter()

    config = LoopConfig(
        epochs=100,
        batch_size=64,
        lr=1e-3,
        warmup_epochs=0.1,
        device="cpu",
        precision="fp32",
        max_steps=args.warmup + args.steps,
        progress=False,
        desc="bench",
    )
    fit_embedder(
        model, head, images=array, rows=rows, labels=labels, config=config, on_step=on_step
    )
    return args.steps * 64 / (marks["t1"] - marks["t0"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=40, help="identities photographed for prepare")
    ap.add_argument("--per-id", type=int, default=3)
    ap.add_argument("--crops", type=int, default=1024, help="crops for the training comparison")
    ap.add_argument("--subjects", type=int, default=128, help="subjects the crops belong to")
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if min(args.ids, args.per_id, args.crops, args.steps, args.rounds) < 1:
        ap.error("--ids, --per-id, --crops, --steps and --rounds must be at least 1")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.pop("VISAGE_MASTER_KEY", None)
        keys = DataKeys.for_project(ProjectPaths(root))
        plain, sealed = _photos(root, keys, args.ids, args.per_id, args.seed)
        detector = FaceDetector(device="cpu", min_face_size=20)
        detect_and_align(detector, [Image.open(plain[0]).convert("RGB")], size=SIZE, min_prob=0.9)
        overhead = _overhead(plain, sealed, keys, root)
        prep: dict[str, list[float]] = {"plaintext": [], "sealed": []}
        for _ in range(args.rounds):
            prep["plaintext"].append(_prepare_plaintext(detector, plain, root / "faces.u8.npy"))
            prep["sealed"].append(
                _prepare_sealed(detector, sealed, root / "faces.sealed", keys, root)
            )

        rng = np.random.default_rng(args.seed)
        crops = rng.integers(0, 256, size=(args.crops, SIZE, SIZE, 3), dtype=np.uint8)
        pids = [f"p{k % args.subjects:016x}" for k in range(args.crops)]
        manifest = pd.DataFrame({"row": np.arange(args.crops), "pid": pids, "split": "train"})
        np.save(root / "train.u8.npy", crops)
        write_crops(root / "train.sealed", keys, pids, crops)
        t0 = time.perf_counter()
        mem = np.load(root / "train.u8.npy", mmap_mode="r")
        open_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        dec = read_crops(root / "train.sealed", keys, manifest)
        open_sealed = time.perf_counter() - t0
        assert np.array_equal(dec, crops)
        train: dict[str, list[float]] = {"plaintext": [], "sealed": []}
        for _ in range(args.rounds):
            train["plaintext"].append(_train(mem, manifest, args))
            train["sealed"].append(_train(dec, manifest, args))

    best = {k: {s: max(v) for s, v in d.items()} for k, d in (("prepare", prep), ("train", train))}
    ratio = {k: round(v["sealed"] / v["plaintext"], 3) for k, v in best.items()}
    print(
        json.dumps(
            {
                "benchmark": "sealing",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "prepare": {
                    "images": len(plain),
                    "faces_per_s_plaintext": round(best["prepare"]["plaintext"], 1),
                    "faces_per_s_sealed": round(best["prepare"]["sealed"], 1),
                    "ratio": ratio["prepare"],
                    "rounds": {k: [round(x, 1) for x in v] for k, v in prep.items()},
                    "overhead_per_image": overhead,
                    "sealing_ms_per_image": round(
                        overhead["read_decrypt_ms_sealed"]
                        - overhead["read_ms_plaintext"]
                        + overhead["crop_seal_ms_sealed"]
                        - overhead["crop_write_ms_plaintext"],
                        4,
                    ),
                    "detect_ms_per_image_plaintext": round(1000 / best["prepare"]["plaintext"], 2),
                },
                "training": {
                    "crops": args.crops,
                    "input_size": args.input_size,
                    "images_per_s_plaintext": round(best["train"]["plaintext"], 1),
                    "images_per_s_sealed": round(best["train"]["sealed"], 1),
                    "ratio": ratio["train"],
                    "open_s_plaintext_memmap": round(open_plain, 4),
                    "open_s_sealed_decrypt": round(open_sealed, 4),
                    "rounds": {k: [round(x, 1) for x in v] for k, v in train.items()},
                },
                "goal": {"min_ratio": GOAL},
                "meets_goal": all(r >= GOAL for r in ratio.values()),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
