"""Erasure of one subject, every step but retraining, on a default-size project; one JSON object.

Goal (issue: data-subject rights): <= 5 s for one subject on the default SynthFaces set (300
identities, 4-20 images each) with a 100k-template gallery.

The project is built once in a temporary folder (or ``--scratch``) and is a real one: a git +
DVC repository running the repository's ``dvc.yaml``, SynthFaces acquired through the raw store
(``dvc add data/raw``), a local DVC remote with everything pushed, ``data/processed`` of the
full size (``faces.sealed`` with one 112 px crop per image, manifest, detection table, splits)
recorded in ``dvc.lock`` with ``dvc commit prepare`` (the crops are the images resized rather
than MTCNN-aligned: detection is not part of erasure and would take many minutes on a CPU), an
MLflow run and registered model version tagged with the data md5, and a gallery of
``--gallery`` extra subjects plus the acquired ones. The extra subjects are registered in the
ledger with a legal basis for identification (so the registry fold and the consent snapshot
are full-size too); their random unit templates are written without per-file fsync and synced
once before anything is timed.

Then one subject who is in ``data/raw``, the processed data, the remote and the gallery is
erased with a cold privacy core (as ``visage privacy erase`` does), and the certificate is
verified. The cold core finds the ledger's derived caches as the bulk registration left them,
as after any import: the registry's fold cache (``ledger.jsonl.fold``) and the Merkle leaf
hashes (``ledger.jsonl.leaves``); it folds and hashes only the entries appended after them.
Reported: the time of each step, the total, the certificate verification; then the same for a
second subject erased on the same project (``second_erasure``: what the scans learnt in the
first is there to be used).

With ``--service`` the erasures and the verifier run with a second thread of this process alive,
as ``visage serve`` runs an erasure beside its other threads (uvicorn's, other requests'): the
scans of the files then start no forked process
(:func:`~visage_ml.rights.content_scan._start_method`), but a fork server's (a checkout before
the fork server looked at them in threads), which imports what this script imports once, as
``visage serve``'s imports what the ``visage`` script does (each of its processes runs the main
script again). Each scan says where (``looked_in``).

With ``--remote-api`` the DVC remote is read as an S3 one is, through DVC's filesystem API
(listed once with every size, each object of another size ranged-read for its first bytes, the
others read whole), rather than as files: what the copies step and the verifier add for a cloud
remote, less the network's round trips (each of those reads is one request there).

The bulk a real project holds besides its data, none of it a copy, in ``data/interim``:
``--bulk-gb`` random binary files (of a size nothing erased has, they are only looked at);
``--bulk-text-gb`` CSV and JSON-lines logs of 32 MB (hex request ids and SHA-256s, floats),
read for base64 runs; ``--bulk-archive-gb`` tar.gz and zip files of 256 MB holding other
people's photographs (JPEG-like random bytes of 50-400 kB), read member by member;
``--bulk-parquet-gb`` Parquet tables of about 48 MB (ids, hex digests, a 128-float embedding
per row), read for binary values and base64 in strings. For the copies step and the verifier,
each scan of the files (:func:`~visage_ml.rights.content_scan.hash_files`) is reported with
its seconds, the bytes this process read meanwhile (``rchar``: from the page cache or the
disk, compressed as stored) and the bytes of the files it hashed.

    python benchmarks/bench_erasure.py [--identities 300] [--gallery 100000] [--dim 128]
        [--bulk-gb 0] [--bulk-text-gb 0] [--bulk-archive-gb 0] [--bulk-parquet-gb 0]
        [--remote-api] [--service] [--scratch DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import visage_ml.privacy.sealed as keys_mod
import visage_ml.serving.gallery as gallery_mod
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.data.crops import CropWriter
from visage_ml.data.prepare import FACES_FILE
from visage_ml.data.rawstore import RawStore, read_images, read_subjects
from visage_ml.privacy.core import NewSubject, PrivacyCore
from visage_ml.rights import content_scan, dvc_objects
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.lineage import workspace_processed_md5
from visage_ml.serving.gallery import Gallery
from visage_ml.tracking import configure

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _run(root: Path, *args: str) -> None:
    exe = str(Path(sys.executable).with_name("dvc")) if args[0] == "dvc" else args[0]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    }
    proc = subprocess.run([exe, *args[1:]], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")


@contextlib.contextmanager
def unsynced_writes() -> Iterator[None]:
    """Write gallery files without per-file fsync (bulk construction only), then one sync."""

    def fast(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    saved = (keys_mod.atomic_write_bytes, gallery_mod.atomic_write_bytes)
    keys_mod.atomic_write_bytes = fast
    gallery_mod.atomic_write_bytes = fast
    try:
        yield
    finally:
        keys_mod.atomic_write_bytes, gallery_mod.atomic_write_bytes = saved
        os.sync()


def build(root: Path, *, identities: int, extra: int, dim: int) -> dict:
    """The project described in the module docstring; returns build timings and sizes."""
    import pandas as pd
    import yaml
    from PIL import Image

    info: dict = {}
    root.mkdir(parents=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["synth"]["n_identities"] = identities
    raw["synth"]["n_scenes"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / "visage_ml").symlink_to(REPO / "visage_ml")
    for cmd in (("git", "init", "-q"), ("dvc", "init", "-q")):
        _run(root, *cmd)
    paths = ProjectPaths(root)
    t = time.perf_counter()
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    info["acquire_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    images = read_images(paths.raw).sort_values(["pid", "image_id"]).reset_index(drop=True)
    subjects = read_subjects(paths.raw).set_index("pid")
    size = 112
    paths.processed.mkdir(parents=True)
    store = RawStore(paths, track=False)
    # Crops sealed per subject as prepare writes them (images are sorted by pid).
    writer = CropWriter(paths.processed / FACES_FILE, store.keys, size)
    rows = []
    pids = sorted(images["pid"].unique())
    split_of = {
        p: ("train", "train", "train", "val", "test", "test")[i % 6] for i, p in enumerate(pids)
    }
    for i, r in enumerate(images.itertuples(index=False)):
        with Image.open(io.BytesIO(store.read_image(r.pid, r.image_id))) as im:
            writer.add(r.pid, np.asarray(im.convert("RGB").resize((size, size))))
        a = subjects.loc[r.pid]
        rows.append(
            {
                "row": i,
                "pid": r.pid,
                "image_id": r.image_id,
                "source_sha256": r.sha256,
                "split": split_of[r.pid],
                "age": a["age"],
                "gender": a["gender"],
                "group": a["group"],
                "det_prob": 0.99,
                "box_x1": 0.0,
                "box_y1": 0.0,
                "box_x2": 160.0,
                "box_y2": 160.0,
            }
        )
    writer.commit()
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(paths.processed / "manifest.parquet", index=False)
    manifest.assign(detected=True, prob=0.99)[
        ["pid", "image_id", "split", "age", "gender", "group", "detected", "prob"]
    ].to_parquet(paths.processed / "detection.parquet", index=False)
    splits = {s: sorted(p for p in pids if split_of[p] == s) for s in ("train", "val", "test")}
    (paths.processed / "splits.json").write_text(json.dumps({"seed": 1, **splits}))
    paths.reports.mkdir(exist_ok=True)
    (paths.reports / "prepare.json").write_text("{}")
    _run(root, "dvc", "commit", "-f", "prepare")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "data")
    info["processed_s"] = round(time.perf_counter() - t, 1)
    info["images"] = len(images)
    info["subjects"] = len(pids)
    info["faces_mb"] = round((paths.processed / FACES_FILE).stat().st_size / 1e6, 1)

    t = time.perf_counter()
    remote = root.parent / "remote"
    _run(root, "dvc", "remote", "add", "-d", "store", str(remote))
    _run(root, "dvc", "push", "-q")
    info["push_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    data_md5 = workspace_processed_md5(paths)
    import mlflow  # deferred: heavy (seconds); the build's MLflow part alone needs it

    configure(paths)
    with mlflow.start_run(run_name="train_embedder") as run:
        mlflow.set_tag("visage.data_md5", data_md5)
        mlflow.log_metric("val_tar", 0.9)
    client = mlflow.MlflowClient()
    client.create_registered_model("visage-embedder")
    mv = client.create_model_version(
        "visage-embedder", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_model_version_tag("visage-embedder", mv.version, "visage.data_md5", data_md5)
    info["mlflow_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    core = PrivacyCore(paths)
    extra_pids = [f"p{0xE000000000000000 + i:016x}" for i in range(extra)]
    step = 20000
    for s in range(0, extra, step):
        chunk = extra_pids[s : s + step]
        core.add_subjects([NewSubject(pid=p) for p in chunk], source="bench", snapshot=False)
        core.record_bases(
            chunk,
            purposes=["identification"],
            legal_basis=["art6(1)(a)", "art9(2)(a)"],  # what the default records allow
            snapshot=False,
        )
    core.snapshot()
    info["ledger_s"] = round(time.perf_counter() - t, 1)
    info["ledger_entries"] = len(core.ledger)

    t = time.perf_counter()
    gallery = Gallery.open(
        paths, model_version="bench-embedder", embedding_dim=dim, threshold=0.5, core=core
    )
    rng = np.random.default_rng(0)
    allowed = sorted(core.registry.allowed("identification") & set(pids))
    gallery.enroll_many(
        {p: rng.standard_normal((2, dim)).astype(np.float32) for p in allowed},
        model_version="bench-embedder",
    )
    with unsynced_writes():
        for s in range(0, extra, 4096):
            chunk = extra_pids[s : s + 4096]
            m = rng.standard_normal((len(chunk), dim), dtype=np.float32)
            m /= np.linalg.norm(m, axis=1, keepdims=True)
            for pid, vec in zip(chunk, m, strict=True):
                key = gallery.keys.get(pid, create=True)
                path = gallery.template_path(pid)
                gallery_mod.atomic_write_bytes(path, gallery._seal(pid, key, vec, 1), mode=0o600)
    info["gallery_s"] = round(time.perf_counter() - t, 1)
    info["gallery_templates"] = len(allowed) + extra
    victims = [p for p in allowed if split_of[p] == "train" and (paths.raw / p).is_dir()]
    info["victim"], info["second_victim"] = victims[0], victims[1]
    info["raw_files"] = sum(1 for _ in paths.raw.rglob("*.sealed"))
    return info


def fill(folder: Path, gb: float) -> int:
    """Write ``gb`` GB of random files of 64 MB into ``folder`` (none of them a copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    size, total, i = 64 << 20, int(gb * (1 << 30)), 0
    while i * size < total:
        n = min(size, total - i * size)
        (folder / f"bulk-{i:05d}.bin").write_bytes(rng.bytes(n))
        i += 1
    return total


def _rchar() -> int:
    """Bytes this process (every thread) has read so far, page cache or disk; 0 off Linux."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _hex_rows(rng: np.random.Generator, n: int, width: int) -> list[str]:
    return [x.hex() for x in np.frombuffer(rng.bytes(n * width), f"S{width}")]


def fill_text(folder: Path, gb: float, *, each: int = 32 << 20) -> int:
    """Write ``gb`` GB of logs into ``folder``: CSV and JSON lines, alternately, of ``each``
    bytes (a request id of 32 hex digits and a SHA-256 of 64 per row, floats, a status)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    total, written, i = int(gb * (1 << 30)), 0, 0
    while written < total:
        want = min(each, total - written)
        out, n = [], 0
        csv = i % 2 == 0
        if csv:
            out.append("ts,request_id,image_sha256,score,latency_ms,status\n")
        while n < want:
            k = 20000
            ids, shas = _hex_rows(rng, k, 16), _hex_rows(rng, k, 32)
            scores, lat = rng.random(k), rng.random(k) * 100
            for j in range(k):
                ts = f"2024-05-{1 + (i + j) % 28:02d}T12:{j % 60:02d}:{(j * 7) % 60:02d}Z"
                if csv:
                    row = f"{ts},{ids[j]},{shas[j]},{scores[j]:.6f},{lat[j]:.3f},ok\n"
                else:
                    row = (
                        f'{{"ts": "{ts}", "request_id": "{ids[j]}", "image_sha256": '
                        f'"{shas[j]}", "score": {scores[j]:.6f}, "latency_ms": {lat[j]:.3f}, '
                        '"status": "ok"}\n'
                    )
                out.append(row)
                n += len(row)
                if n >= want:
                    break
        data = "".join(out).encode()[:want]
        (folder / f"log-{i:05d}.{'csv' if csv else 'jsonl'}").write_bytes(data)
        written += len(data)
        i += 1
    return written


def _photo(rng: np.random.Generator) -> bytes:
    """Another person's photograph as far as the scan goes: a JPEG's markers around random
    bytes (no compressor shrinks them) of 50-400 kB."""
    n = int(rng.integers(50_000, 400_000))
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.bytes(n) + b"\xff\xd9"


def fill_archives(folder: Path, gb: float, *, each: int = 256 << 20) -> int:
    """Write ``gb`` GB of archives of photographs into ``folder``: a .tar.gz and a .zip
    (deflated), alternately, of about ``each`` bytes."""
    import tarfile
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    total, written, i = int(gb * (1 << 30)), 0, 0
    while written < total:
        want = min(each, total - written)
        if i % 2 == 0:
            path = folder / f"photos-{i:03d}.tar.gz"
            with tarfile.open(path, "w:gz", compresslevel=1) as t:
                n, j = 0, 0
                while n < want:
                    photo = _photo(rng)
                    info = tarfile.TarInfo(f"people/{j:06d}.jpg")
                    info.size = len(photo)
                    t.addfile(info, io.BytesIO(photo))
                    n, j = n + len(photo), j + 1
        else:
            path = folder / f"photos-{i:03d}.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                n, j = 0, 0
                while n < want:
                    photo = _photo(rng)
                    z.writestr(f"people/{j:06d}.jpg", photo)
                    n, j = n + len(photo), j + 1
        written += path.stat().st_size
        i += 1
    return written


def fill_parquet(folder: Path, gb: float, *, rows: int = 80_000) -> int:
    """Write ``gb`` GB of Parquet tables into ``folder``, ``rows`` rows each (about 48 MB): a
    pid, an image id and a SHA-256 in hex (strings), a score, a split and a 128-float
    embedding."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    total, written, i = int(gb * (1 << 30)), 0, 0
    while written < total:
        emb = rng.standard_normal(rows * 128, dtype=np.float32)
        table = pa.table(
            {
                "pid": ["p" + h for h in _hex_rows(rng, rows, 8)],
                "image_id": _hex_rows(rng, rows, 4),
                "sha256": _hex_rows(rng, rows, 32),
                "score": rng.random(rows),
                "split": pa.array(["train", "val", "test"] * (rows // 3) + ["train"] * (rows % 3)),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb), 128),
            }
        )
        path = folder / f"embeddings-{i:03d}.parquet"
        pq.write_table(table, path)
        written += path.stat().st_size
        i += 1
    return written


@contextlib.contextmanager
def scans_timed() -> Iterator[list[dict]]:
    """Each call of ``content_scan.hash_files`` meanwhile: its seconds, the bytes this process
    read (``rchar``), how many files it read and their bytes, and where it looked at them
    (``looked_in``: the start method of its processes, or ``threads``)."""
    calls: list[dict] = []
    real, pools = content_scan.hash_files, content_scan.ProcessPoolExecutor
    started: list[str] = []

    class Pool(pools):  # type: ignore[misc,valid-type]
        def __init__(self, *args, **kwargs) -> None:
            started.append(kwargs["mp_context"].get_start_method())
            super().__init__(*args, **kwargs)

    def timed(*args, **kwargs):
        started.clear()
        t, r = time.perf_counter(), _rchar()
        out = real(*args, **kwargs)
        hashed = [h for h in out if h.read and h.digest is not None]
        calls.append(
            {
                "s": round(time.perf_counter() - t, 3),
                "rchar_bytes": _rchar() - r,
                "files": len(out),
                "files_hashed": len(hashed),
                "bytes_hashed": sum(h.size for h in hashed),
                "looked_in": started[0] if started else "threads",
            }
        )
        return out

    content_scan.hash_files, content_scan.ProcessPoolExecutor = timed, Pool
    try:
        yield calls
    finally:
        content_scan.hash_files, content_scan.ProcessPoolExecutor = real, pools


@contextlib.contextmanager
def beside_another_thread(service: bool) -> Iterator[None]:
    """With ``service``, a second thread of this process runs meanwhile (it waits), as the
    service's do."""
    if not service:
        yield
        return
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="service", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def as_the_service() -> None:
    """Have the scans' fork server import what this script imports, once for all its
    processes, as ``visage serve`` has it import the CLI
    (:func:`~visage_ml.rights.content_scan.preload`; a checkout before it has none)."""
    preload = getattr(content_scan, "preload", None)
    if preload is not None:
        preload(*sorted(m for m in sys.modules if m.startswith("visage_ml.")))


def erase(root: Path, victim: str, *, remote_api: bool = False, service: bool = False) -> dict:
    """Erase ``victim`` with a cold core (as the CLI does) and verify the certificate
    (``remote_api``: the DVC remote read through DVC's filesystem API, as S3 is; ``service``:
    both beside another thread, :func:`beside_another_thread`)."""
    with beside_another_thread(service):
        return _erase(root, victim, remote_api=remote_api)


def _erase(root: Path, victim: str, *, remote_api: bool) -> dict:
    paths = ProjectPaths(root)
    if remote_api:
        dvc_objects._is_local = lambda odb: False
    remote_objects = sum(1 for p in (root.parent / "remote").rglob("*") if p.is_file())
    t, cpu = time.perf_counter(), time.process_time()
    with scans_timed() as erasure_scans:
        result = Erasure(paths).erase(victim)
    total, cpu = time.perf_counter() - t, time.process_time() - cpu
    t, r = time.perf_counter(), _rchar()
    with scans_timed() as verify_scans:
        report = verify_certificate(result.certificate_path, root=root)
    verify_s, verify_rchar = time.perf_counter() - t, _rchar() - r
    assert report.ok, report.findings
    t = time.perf_counter()
    n_git = len(content_scan.git_objects(root))
    git_s = time.perf_counter() - t
    claims = result.certificate["claims"]
    return {
        "total_s": round(total, 3),
        # CPU time of this process (DVC runs in it): what the wall time approaches on an idle
        # machine, apart from waiting for fsync.
        "cpu_s": round(cpu, 3),
        "steps_s": {k: round(v, 3) for k, v in result.timings.items()},
        "artefacts": len(claims["artefacts"]),
        "models_stale": len(claims["models"]),
        "verify_certificate_s": round(verify_s, 3),
        # Files the verifier looked at; of those, read and hashed (the others are of a size
        # nothing erased has).
        "verify_files_looked_at": report.files_looked_at,
        "verify_files_hashed": report.files_hashed,
        "verify_bytes_hashed": report.bytes_hashed,
        "verify_rchar_bytes": verify_rchar,
        # Each scan of the files: the copies step's (and any other step's), the verifier's.
        "erasure_file_scans": erasure_scans,
        "verify_file_scans": verify_scans,
        # Reading every object of the git history, as the verifier does (the copies step reads
        # only those its cache lacks: benchmarks/bench_git_scan.py).
        "git_objects": n_git,
        "git_objects_s": round(git_s, 3),
        "remote_objects": remote_objects,
        "remote_read_through_api": remote_api,
        "goal_s": 5.0,
        "within_goal": total <= 5.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--identities", type=int, default=300)
    ap.add_argument("--gallery", type=int, default=100_000, help="extra gallery subjects")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--scratch", default=None, help="Folder for the project (default: tmp).")
    ap.add_argument("--keep", action="store_true", help="Keep the project afterwards.")
    ap.add_argument(
        "--build-only", action="store_true", help="Build, keep, print the folder; erase nothing."
    )
    ap.add_argument(
        "--bulk-gb",
        type=float,
        default=0.0,
        help="Also fill data/interim with this many GB of other files (64 MB each) that the "
        "copies step and the verifier look at (of a size nothing erased has, they are not "
        "read): what a large project costs them.",
    )
    for kind, what in (
        ("text", "CSV and JSON-lines logs of 32 MB (read for base64 runs)"),
        ("archive", "tar.gz and zip files of 256 MB of photographs (read member by member)"),
        ("parquet", "Parquet tables of about 48 MB (ids, digests, embeddings)"),
    ):
        ap.add_argument(
            f"--bulk-{kind}-gb",
            type=float,
            default=0.0,
            help=f"Also fill data/interim/{kind} with this many GB of {what}, none a copy.",
        )
    ap.add_argument(
        "--service",
        action="store_true",
        help="Erase and verify with a second thread alive, as `visage serve` does.",
    )
    ap.add_argument(
        "--remote-api",
        action="store_true",
        help="Read the DVC remote through DVC's filesystem API, as an S3 remote is read.",
    )
    args = ap.parse_args()
    if args.service:
        as_the_service()
    base = Path(tempfile.mkdtemp(prefix="bench-erasure-", dir=args.scratch))
    try:
        t = time.perf_counter()
        info = build(base / "proj", identities=args.identities, extra=args.gallery, dim=args.dim)
        info["build_s"] = round(time.perf_counter() - t, 1)
        victim, second = info.pop("victim"), info.pop("second_victim")
        if args.bulk_gb > 0:
            t = time.perf_counter()
            info["bulk_bytes"] = fill(base / "proj" / "data" / "interim", args.bulk_gb)
            info["bulk_s"] = round(time.perf_counter() - t, 1)
        interim = base / "proj" / "data" / "interim"
        for kind, gb, write in (
            ("text", args.bulk_text_gb, fill_text),
            ("archive", args.bulk_archive_gb, fill_archives),
            ("parquet", args.bulk_parquet_gb, fill_parquet),
        ):
            if gb > 0:
                t = time.perf_counter()
                info[f"bulk_{kind}_bytes"] = write(interim / kind, gb)
                info[f"bulk_{kind}_s"] = round(time.perf_counter() - t, 1)
        if args.build_only:
            args.keep = True
            print(json.dumps({"project": str(base / "proj"), "victim": victim, **info}))
            return
        out = {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "project": info,
            "erasure": erase(
                base / "proj", victim, remote_api=args.remote_api, service=args.service
            ),
            # Another subject on the same project: what an erasure costs once one has run
            # (the scans' caches warm).
            "second_erasure": erase(
                base / "proj", second, remote_api=args.remote_api, service=args.service
            ),
        }
        print(json.dumps(out, indent=2))
    finally:
        if args.keep:
            print(f"project kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
