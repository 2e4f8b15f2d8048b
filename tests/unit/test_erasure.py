"""Erasure across every store: steps, ledger records, DVC purge by hash, MLflow, resumability."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from lfw_fakes import make_lfw_set
from pyrage import x25519
from rights_fakes import REF, make_project, png
from serving_fakes import face_tile, png_b64
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.app.http.auth import ROLES, KeyStore
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.data.crops import iter_chunks, purge_chunks
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.prepare import prepare, purge_subject
from visage_ml.data.processed import load_processed
from visage_ml.data.rawstore import RawDataMissingError, RawStore, read_images, read_subjects
from visage_ml.dvcops import tracked_md5
from visage_ml.evaluation.lfw import protocol_accuracy
from visage_ml.io import sha256_bytes, sha256_file
from visage_ml.privacy.certificate_page import page_path
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.requests import RequestBook, RequestStateError
from visage_ml.rights import dvc_objects
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.content_hashes import PLAINTEXT_WITHHELD
from visage_ml.rights.erasure import STEPS, Erasure
from visage_ml.rights.erasure import copies as copies_mod
from visage_ml.rights.erasure import orchestrator as erasure_mod
from visage_ml.rights.erasure.mlflow import purge_mlflow, scan_mlflow
from visage_ml.rights.export import Delivery, export_subject

PLAIN = Delivery(plaintext=True)


@pytest.fixture
def proj(project):
    return make_project(project)


def identified(proj, gallery, pid) -> bool:
    emb = proj.engine.embed(proj.world.photo(pid))[0]
    return any(m.pid == pid for m in gallery.identify(emb, top_k=3))


def sealed_hashes(paths: ProjectPaths, pid: str) -> set[str]:
    """SHA-256 of the subject's stored (sealed) raw files: what the erasure certifies."""
    return {sha256_file(f) for f in (paths.raw / pid).glob("*.sealed")}


def test_erasure_removes_the_subject_everywhere_and_certifies_it(proj):
    victim, other = proj.pids[0], proj.pids[1]
    # An in-project bundle, encrypted for the requester.
    recipient = str(x25519.Identity.generate().to_public())
    export = export_subject(
        proj.paths, victim, core=proj.core, delivery=Delivery(recipients=(recipient,))
    )
    assert export.path.name.endswith(".zip.age")
    faces_before = load_processed(proj.paths).faces
    manifest_before = pd.read_parquet(proj.paths.processed / "manifest.parquet")
    stored_before = sealed_hashes(proj.paths, victim)
    # What an interrupted `prepare` of an older version leaves behind: plaintext crops.
    leftover = proj.paths.processed / ".faces.all.4242.tmp"
    leftover.write_bytes(faces_before.tobytes())
    # A plaintext copy of one of the subject's photos logged to MLflow by mistake.
    logged = proj.paths.mlruns / "artifacts" / "r9" / "face.png"
    logged.parent.mkdir(parents=True)
    logged.write_bytes(next(iter(proj.images[victim].values())))
    result = Erasure(proj.paths).erase(victim)
    assert not logged.exists()
    assert not leftover.exists()
    paths = proj.paths
    gallery = proj.gallery(core=PrivacyCore(paths))
    assert victim not in gallery.stored() and not identified(proj, gallery, victim)
    assert identified(proj, gallery, other)
    with pytest.raises(KeyError):
        PrivacyCore(paths).vault.get(victim)
    assert not (paths.raw / victim).exists() and (paths.raw / other).is_dir()
    assert victim not in set(read_subjects(paths.raw)["pid"])
    assert victim not in set(read_images(paths.raw)["pid"])
    # The subject's key is gone and their sealed chunks are overwritten with zeros in place;
    # every other crop is untouched and still addressed by its manifest row.
    assert not PrivacyCore(paths).data_keys.exists(victim)
    manifest = pd.read_parquet(paths.processed / "manifest.parquet")
    faces = load_processed(paths).faces
    assert victim not in set(manifest["pid"]) and len(faces) == len(faces_before)
    gone = manifest_before.loc[manifest_before.pid == victim, "row"].to_numpy()
    assert gone.size and not faces[gone].any()
    chunks = list(iter_chunks(paths.processed / "faces.sealed", manifest_before, pids={victim}))
    with open(paths.processed / "faces.sealed", "rb") as fh:
        for _, _, _, offset, length in chunks:
            fh.seek(offset)
            assert fh.read(length) == b"\0" * length
    rows = manifest["row"].to_numpy()
    assert np.array_equal(faces[rows], faces_before[rows])
    assert victim.encode() not in (paths.processed / "splits.json").read_bytes()
    assert victim not in set(pd.read_parquet(paths.processed / "detection.parquet")["pid"])
    assert not export.path.exists()
    state = PrivacyCore(paths).subject(victim)
    assert state.erased and not state.erasure_pending
    snap = pd.read_parquet(paths.consents)
    assert set(snap[snap.pid == victim]["reason"]) == {"erased"}
    # Every step recorded, planned before acting where it deletes anything.
    steps = [
        (e.payload["step"], e.payload["phase"])
        for e in PrivacyCore(paths).ledger.entries()
        if e.type == "erasure.step"
    ]
    done = [s for s, phase in steps if phase == "done"]
    assert done == list(STEPS[:-1])
    assert ("raw", "planned") in steps and steps.index(("raw", "planned")) < steps.index(
        ("raw", "done")
    )
    # The certificate lists each image with its hash taken before deletion.
    claims = result.certificate["claims"]
    hashes = {a["sha256"] for a in claims["artefacts"]}
    assert stored_before <= hashes
    # ... and how each went: the key destroyed, the sealed images crypto-shredded (and
    # removed), the tables physically rewritten.
    outcome = {a["path"]: a["outcome"] for a in claims["artefacts"] if a["step"] == "raw"}
    assert outcome[f"privacy/keys/{victim}.key"] == "key destroyed"
    raw_files = [p for p in outcome if p.startswith(f"data/raw/{victim}/")]
    assert raw_files and {outcome[p] for p in raw_files} == {"crypto-shredded"}
    assert outcome["data/raw/images.parquet"] == "physically removed"
    assert {a["step"] for a in claims["artefacts"]} >= {"gallery", "vault", "raw", "processed"}
    report = verify_certificate(result.certificate_path, root=paths.root)
    assert report.ok, [c for c in report.checks if not c.ok]
    assert REF.encode() not in paths.ledger.read_bytes()
    st = RequestBook(PrivacyCore(paths)).get(result.request_id)
    assert st.status == "completed" and st.receipt_sha256
    with pytest.raises(ValueError, match="erased"):
        Erasure(paths).erase(victim)


@pytest.mark.parametrize("dvc", [False, True], ids=["plain", "dvc"])
def test_no_lfw_pair_names_an_erased_subjects_images(tiny_project, tmp_path, dvc):
    # The LFW pairs table lives outside data/raw; an erasure must not leave rows in it that
    # name the subject's former images (or say whether two of them show the same person).
    base, _ = make_lfw_set(
        tmp_path / "download", n_people=5, per_person=3, folds=3, pairs_per_fold=2, size=64
    )
    paths = ProjectPaths(tiny_project(dvc=dvc))
    basis = ImportBasis.from_options(legal_basis="art6(1)(f)+art9(2)(j)")
    import_dataset("lfw", base, paths=paths, basis=basis)
    table = paths.protocols / "lfw_pairs.parquet"
    before = pd.read_parquet(table)
    images = read_images(paths.raw)
    pid_of = images.set_index("image_id")["pid"].astype(str)
    named = pd.concat([before["image_id_a"], before["image_id_b"]]).map(pid_of)
    victim = str(named.value_counts().index[0])  # the subject in the most pairs
    former = set(images.loc[images["pid"] == victim, "image_id"].astype(str))
    hit = before["image_id_a"].isin(former) | before["image_id_b"].isin(former)
    assert hit.any() and not hit.all()

    result = Erasure(paths).erase(victim)

    after = pd.read_parquet(table)
    assert not (after["image_id_a"].isin(former) | after["image_id_b"].isin(former)).any()
    pd.testing.assert_frame_equal(after, before[~hit].reset_index(drop=True))
    # Planned, hashed before and certified like images.parquet; nothing of it remains.
    claims = result.certificate["claims"]
    outcome = {a["path"]: a["outcome"] for a in claims["artefacts"] if a["step"] == "raw"}
    table_rel = "data/protocols/lfw_pairs.parquet"
    assert outcome[table_rel] == "physically removed"
    report = verify_certificate(result.certificate_path, root=paths.root)
    assert report.ok, report.findings
    assert Erasure(paths).remaining(victim)["raw"] == []
    if dvc:  # data/protocols.dvc records the new table; the old one's object is purged
        assert tracked_md5(paths.root, paths.protocols)
        old_md5 = next(a["md5"] for a in claims["artefacts"] if a["path"] == table_rel)
        assert old_md5 not in _objects(paths.root / ".dvc" / "cache")
    # The LFW evaluation scores the pairs that are left; none is reported as not evaluated.
    kept = read_images(paths.raw)["image_id"].astype(str).to_numpy()
    emb = np.random.default_rng(0).normal(size=(len(kept), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lfw = protocol_accuracy(after, kept, emb)
    assert lfw["pairs_in_protocol"] == lfw["pairs_used"] == int((~hit).sum())
    assert lfw["pairs_not_evaluated"] == 0 and "accuracy" in lfw


def test_a_running_gallery_never_matches_the_subject_once_the_gallery_step_returned(
    proj, monkeypatch
):
    victim = proj.pids[2]
    server = proj.gallery(core=PrivacyCore(proj.paths))  # another process's gallery, loaded
    assert identified(proj, server, victim)
    seen = []

    def hook(step: str, where: str = "") -> None:
        if step == "gallery" and where == "":
            seen.append(identified(proj, server, victim))

    monkeypatch.setattr(erasure_mod, "_fault", hook)
    Erasure(proj.paths).erase(victim)
    assert seen == [False]


def _erase_in_child(root: Path, pid: str, fault: str) -> subprocess.CompletedProcess:
    code = (
        "import sys; from visage_ml.config import ProjectPaths; "
        "from visage_ml.rights.erasure import Erasure; "
        "Erasure(ProjectPaths.discover(sys.argv[1])).erase(sys.argv[2])"
    )
    env = {**os.environ, "VISAGE_FAULT": f"erasure:{fault}", "VISAGE_PROJECT": str(root)}
    return subprocess.run(
        [sys.executable, "-c", code, str(root), pid], env=env, capture_output=True, text=True
    )


FAULTS = [
    "raw",
    "processed",
    "certificate:completed",
    pytest.param("lineage", marks=pytest.mark.slow),
    pytest.param("gallery", marks=pytest.mark.slow),
    pytest.param("vault", marks=pytest.mark.slow),
    pytest.param("raw:planned", marks=pytest.mark.slow),
    pytest.param("dvc", marks=pytest.mark.slow),
    pytest.param("mlflow", marks=pytest.mark.slow),
    pytest.param("copies", marks=pytest.mark.slow),
    pytest.param("snapshot", marks=pytest.mark.slow),
    pytest.param("certificate", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("fault", FAULTS)
def test_killed_at_any_step_then_resume_completes_with_a_valid_certificate(proj, fault):
    victim = proj.pids[0]
    image_hashes = sealed_hashes(proj.paths, victim)
    child = _erase_in_child(proj.paths.root, victim, fault)
    assert child.returncode == erasure_mod.FAULT_EXIT, child.stderr[-2000:]
    core = PrivacyCore(proj.paths)
    pending = Erasure(proj.paths, core=core).pending()
    assert [p.pid for p in pending] == [victim]
    # Processing is already stopped for the subject while the request is open.
    assert not core.may_process(victim, "identification").allowed
    result = CliRunner().invoke(app, ["privacy", "resume", "--json"])
    assert result.exit_code == 0, result.output
    (done,) = json.loads(result.output[result.output.index("[") :])
    cert = Path(done["certificate"])
    report = verify_certificate(cert, root=proj.paths.root)
    assert report.ok, [c for c in report.checks if not c.ok]
    claims = json.loads(cert.read_text())["claims"]
    assert image_hashes <= {a["sha256"] for a in claims["artefacts"]}
    assert not (proj.paths.raw / victim).exists()
    assert PrivacyCore(proj.paths).subject(victim).erased
    assert Erasure(proj.paths).pending() == []


def _derived(png_bytes: bytes, key: bytes) -> set[str]:
    """What the tombstone key and a photograph's PNG bytes give: its hashes, and their MAC
    under every kind prefix the tombstones use or used."""
    sha = hashlib.sha256(png_bytes).hexdigest()
    kinds = ("plain_sha256", "sha256", "plain", "png", "image", "ref", "pid")
    macs = {hmac.new(key, f"{k}\0{sha}".encode(), hashlib.sha256).hexdigest() for k in kinds}
    return {sha, hashlib.md5(png_bytes, usedforsecurity=False).hexdigest(), *macs}


def test_the_tombstone_key_and_a_photograph_of_an_erased_subject_lead_to_no_pid(proj):
    # The attack: someone holding the tombstone key (an operator, a key backup) and a
    # photograph of the erased person that encodes to the stored PNG's bytes computes all the
    # key and the photograph give, and looks for it in the ledger and the certificate, kept for
    # good: an entry holding it names the pid, and so the pid's whole history.
    victim = proj.pids[0]
    pngs = list(proj.images[victim].values())
    # A plaintext copy logged to MLflow by mistake: found and removed by the erasure.
    logged = proj.paths.mlruns / "artifacts" / "r9" / "face.png"
    logged.parent.mkdir(parents=True)
    logged.write_bytes(pngs[0])
    result = Erasure(proj.paths).erase(victim)
    assert not logged.exists()
    key = proj.paths.tombstone_key.read_bytes()
    needles = {d for png_bytes in pngs for d in _derived(png_bytes, key)}
    lines = proj.paths.ledger.read_text(encoding="utf-8").splitlines()
    linked = {json.loads(line)["pid"] for line in lines if any(n in line for n in needles)}
    assert linked == set()
    certificate = result.certificate_path.read_text(encoding="utf-8")
    assert not [n for n in needles if n in certificate]
    # The controller still finds a plaintext copy put back, through the tombstones.
    logged.parent.mkdir(parents=True, exist_ok=True)
    logged.write_bytes(pngs[1])
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert [f["path"] for f in report.findings] == [str(logged)]


def test_an_erasure_whose_tombstone_an_earlier_version_wrote_still_finds_plaintext_copies(
    proj, monkeypatch
):
    # Resumed after an upgrade: the vault step's tombstone held no plaintext hashes, and the
    # plan no longer names them; the raw step adds them while data/raw still lists the images.
    victim = proj.pids[0]
    pngs = list(proj.images[victim].values())
    earlier = erasure_mod.tombstone.plan

    def plan(ctx, pid):
        found = earlier(ctx, pid)
        found.state.plains.clear()
        return found

    monkeypatch.setattr(erasure_mod.tombstone, "plan", plan)
    logged = proj.paths.mlruns / "artifacts" / "r9" / "face.png"
    logged.parent.mkdir(parents=True)
    logged.write_bytes(pngs[0])
    Erasure(proj.paths).erase(victim)
    assert not logged.exists()
    tombstones = PrivacyCore(proj.paths).tombstones
    assert all(tombstones.has_plain(sha256_bytes(png_bytes)) for png_bytes in pngs)


def test_each_store_says_what_it_still_holds_until_the_subject_is_erased(proj):
    victim = proj.pids[0]  # the subject with a vault record
    export_subject(proj.paths, victim, core=proj.core, delivery=PLAIN)
    before = Erasure(proj.paths).remaining(victim)
    assert set(before) == set(STEPS) - {"lineage", "snapshot", "certificate"}
    assert all(before[s] for s in ("gallery", "vault", "raw", "processed"))
    Erasure(proj.paths).erase(victim)
    assert Erasure(proj.paths).remaining(victim) == {s: [] for s in before}


def test_a_destroyed_key_put_back_from_a_backup_is_found_by_the_verifier(proj):
    """The certificate says "key destroyed" for the subject's data key and vault files. An
    operator restores them from a backup: the verifier must find them (it scanned only data/,
    gallery/, mlruns/ and exports, and said VALID with the keys back in place)."""
    victim = proj.pids[0]  # the subject with a vault record
    keys = [proj.paths.data_keys, proj.paths.vault]
    backup = {
        f: f.read_bytes()
        for folder in keys
        for f in folder.rglob("*")
        if f.is_file() and victim in f.name
    }
    assert len(backup) >= 2
    result = Erasure(proj.paths).erase(victim)
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    for f, data in backup.items():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    found = json.dumps([str(x) for x in report.findings])
    assert all(f.relative_to(proj.paths.root).as_posix() in found for f in backup), found


def test_the_embedders_resume_checkpoints_and_their_margin_heads_go_with_the_subject(proj):
    # The margin head is one row per training identity, the centre of their embeddings: with
    # the released backbone, a template that identifies them (every training subject of the
    # demo project matches their own row first). The resume checkpoints keep it in clear.
    import torch  # deferred: heavy, and only this test writes a checkpoint

    from visage_ml.models.checkpoint import save_resume

    victim = proj.pids[0]
    checkpoints = proj.paths.models / "checkpoints"
    head = torch.nn.functional.normalize(torch.randn(len(proj.pids), 16), dim=1)
    for epoch in (1, 2):
        state = {"epoch": epoch, "modules": {"head": {"fc.weight": head}}}
        save_resume(checkpoints / "embedder", state, fingerprint="f")
    # A save killed before its rename leaves the same bytes under a temporary name.
    torn = checkpoints / "embedder" / ".epoch-0003.pt.x1y2.tmp"
    torn.write_bytes((checkpoints / "embedder" / "epoch-0002.pt").read_bytes())
    # The demographic net has no row per person: its checkpoint stays resumable.
    kept = save_resume(checkpoints / "demographics", {"epoch": 1}, fingerprint="g")
    assert (
        "models/checkpoints/embedder/epoch-0001.pt"
        in Erasure(proj.paths).remaining(victim)["processed"]
    )
    result = Erasure(proj.paths).erase(victim)
    assert not [f for f in (checkpoints / "embedder").iterdir() if f.is_file()]
    assert kept.is_file()
    removed = {a["path"]: a["outcome"] for a in result.certificate["claims"]["artefacts"]}
    assert removed["models/checkpoints/embedder/epoch-0002.pt"] == "physically removed"
    assert "models/checkpoints/embedder/.epoch-0003.pt.x1y2.tmp" in removed
    assert Erasure(proj.paths).remaining(victim)["processed"] == []


def test_unverified_or_closed_requests_are_not_run(proj):
    book = RequestBook(proj.core)
    st = book.receive(proj.pids[1], "erasure")
    er = Erasure(proj.paths, core=proj.core)
    with pytest.raises(RequestStateError, match="verify"):
        er.run(st.request_id)
    book.verify(st.request_id)
    book.deny(st.request_id, reason_code="art17_3_b")
    with pytest.raises(RequestStateError, match="denied"):
        er.run(st.request_id)
    assert (proj.paths.raw / proj.pids[1]).is_dir()


def test_processed_purge_is_safe_to_repeat_after_an_interruption(proj):
    paths = proj.paths
    victim = proj.pids[4]
    manifest = pd.read_parquet(paths.processed / "manifest.parquet")
    faces = load_processed(paths).faces
    rows = manifest.loc[manifest.pid == victim, "row"].to_numpy()
    expected = faces.copy()
    expected[rows] = 0
    # Crash after the crops were zeroed but before the tables: crops done, manifest old.
    purge_chunks(paths.processed / "faces.sealed", manifest, victim)
    purge_subject(paths.processed, victim)
    purge_subject(paths.processed, victim)
    assert np.array_equal(load_processed(paths).faces, expected)
    after = pd.read_parquet(paths.processed / "manifest.parquet")
    assert victim not in set(after.pid) and len(after) == len(manifest) - len(rows)


def test_the_purge_leaves_every_processed_file_as_private_as_it_found_it(proj):
    # splits.json lists pids: prepare writes it 0600, and the erasure's rewrite left it 0644
    # (readable to every account on the host) until `visage privacy seal` tightened it.
    paths = proj.paths
    files = [paths.processed / n for n in ("splits.json", "manifest.parquet", "detection.parquet")]
    for f in files:
        os.chmod(f, 0o600)
    purge_subject(paths.processed, proj.pids[4])
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}


# The dot is in no alphabet of the ledger's signatures and hashes: only a leak can spell it.
NAME = "Jane.Doe"


def _erased_or_killed_and_resumed(proj, victim: str, fault: str | None, *, planned: Path) -> Path:
    """The certificate of ``victim``'s erasure: run whole (``fault`` None), or killed at
    ``fault`` (``planned`` still there: planned, not yet purged) and resumed."""
    if fault is None:
        return Erasure(proj.paths).erase(victim).certificate_path
    child = _erase_in_child(proj.paths.root, victim, fault)
    assert child.returncode == erasure_mod.FAULT_EXIT, child.stderr[-2000:]
    assert planned.exists()
    (done,) = Erasure(proj.paths).resume()
    return done.certificate_path


@pytest.mark.parametrize("fault", [None, "mlflow:planned"])
def test_files_named_like_the_person_are_removed_and_their_names_never_recorded(proj, fault):
    # The attack: the subject's photo logged to MLflow under their name (a folder and files
    # named after them), their export bundle written under it. The ledger (kept for good) and
    # the certificate (handed to a regulator) name the pid: a path recorded there pairs it with
    # the person's name. Also after a crash between the MLflow plan and its purge, whose resumed
    # run reads that plan back from the ledger.
    victim = proj.pids[0]
    folder = proj.paths.mlruns / "1" / ("ab" * 16) / "artifacts" / NAME
    folder.mkdir(parents=True)
    plain = folder / f"{NAME}.png"
    plain.write_bytes(next(iter(proj.images[victim].values())))
    sealed = folder / f"{NAME}.sealed"
    sealed.write_bytes(next((proj.paths.raw / victim).glob("*.sealed")).read_bytes())
    recipient = str(x25519.Identity.generate().to_public())
    bundle = proj.paths.root / "privacy" / "exports" / f"{NAME}.zip.age"
    export_subject(
        proj.paths, victim, core=proj.core, out=bundle, delivery=Delivery(recipients=(recipient,))
    )
    cert = _erased_or_killed_and_resumed(proj, victim, fault, planned=plain)
    assert not plain.exists() and not sealed.exists() and not bundle.exists()
    records = {
        "ledger": proj.paths.ledger.read_text(encoding="utf-8"),
        "certificate": cert.read_text(encoding="utf-8"),
        "page": page_path(cert).read_text(encoding="utf-8"),
    }
    assert {k for k, text in records.items() if NAME in text or "Jane." in text} == set()
    claims = json.loads(records["certificate"])["claims"]
    # Each file certified once, and as what it was: the sealed copy crypto-shredded.
    logged = sorted(a["outcome"] for a in claims["artefacts"] if a["store"] == "mlflow")
    assert logged == ["crypto-shredded", "physically removed"]
    assert sum(a["store"] == "exports" for a in claims["artefacts"]) == 1
    assert verify_certificate(cert, root=proj.paths.root).ok


def _named_nowhere(paths: ProjectPaths, cert: Path) -> set[str]:
    """Which of the ledger, the certificate and its page spell the person's name."""
    records = {
        "ledger": paths.ledger.read_text(encoding="utf-8"),
        "certificate": cert.read_text(encoding="utf-8"),
        "page": page_path(cert).read_text(encoding="utf-8"),
    }
    return {k for k, text in records.items() if NAME in text or "Jane." in text}


@pytest.mark.parametrize("fault", [None, "raw:planned", "processed:planned"])
def test_files_placed_by_hand_under_the_persons_name_are_removed_and_never_named(proj, fault):
    # The attack: the subject's photo copied by hand into their raw folder under their name
    # (an import names every file by its image id), a file saved under it among the embedder's
    # resume checkpoints. The raw step lists every file of the folder, the checkpoints store
    # every file of its own: recorded by path, each would pair the name with the pid for good.
    # Also after a crash between a step's plan and its purge: the resumed run scans again.
    victim = proj.pids[0]
    by_hand = proj.paths.raw / victim / f"{NAME}.png"
    by_hand.write_bytes(next(iter(proj.images[victim].values())))
    checkpoint = proj.paths.models / "checkpoints" / "embedder" / f"{NAME}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"a margin head")
    cert = _erased_or_killed_and_resumed(proj, victim, fault, planned=checkpoint)
    assert not by_hand.exists() and not checkpoint.exists()
    assert _named_nowhere(proj.paths, cert) == set()
    claims = json.loads(cert.read_text(encoding="utf-8"))["claims"]
    # Each file certified once, as what it was; the image ids an import gave stay readable.
    raw = [a for a in claims["artefacts"] if a["path"].startswith(f"data/raw/{victim}/")]
    assert len(raw) == len(proj.images[victim]) + 1
    assert sum(a.get("content") == PLAINTEXT_WITHHELD for a in raw) == 1
    assert {a["path"] for a in raw} >= {
        f"data/raw/{victim}/{image_id}.sealed" for image_id in proj.images[victim]
    }
    assert sum(a["path"].startswith("models/checkpoints/") for a in claims["artefacts"]) == 1
    report = verify_certificate(cert, root=proj.paths.root)
    assert report.ok, [c for c in report.checks if not c.ok]


@pytest.mark.pipeline
def test_a_dvc_project_records_a_file_placed_by_hand_by_no_name(tiny_project, tmp_path):
    # The same file in a DVC project, tracked and pushed: the manifests list it under the
    # subject's folder by its name, and the dvc step records each of its objects by that file.
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    victim = proj.pids[0]
    by_hand = proj.paths.raw / victim / f"{NAME}.png"
    by_hand.write_bytes(next(iter(proj.images[victim].values())))
    dvc_objects.add(root, proj.paths.raw)
    remote = tmp_path / "remote"
    assert _dvc(root, "remote", "add", "-d", "store", str(remote)).returncode == 0
    assert _dvc(root, "push").returncode == 0
    md5 = md5_bytes(by_hand.read_bytes())
    assert md5 in _objects(root / ".dvc" / "cache") and md5 in _objects(remote)
    result = Erasure(proj.paths).erase(victim)
    assert not by_hand.exists()
    assert md5 not in _objects(root / ".dvc" / "cache") and md5 not in _objects(remote)
    assert _named_nowhere(proj.paths, result.certificate_path) == set()
    held = [
        a
        for a in result.certificate["claims"]["artefacts"]
        if a["step"] == "dvc" and a.get("content") == PLAINTEXT_WITHHELD
    ]
    assert {a["store"] for a in held} == {"dvc-cache", "dvc-remote:store"}
    report = verify_certificate(result.certificate_path, root=root)
    assert report.ok, report.findings


def test_mlflow_rows_artefacts_and_freed_pages_naming_the_subject_are_purged(project):
    paths = ProjectPaths(project)
    pid, other = "p" + "1" * 16, "p" + "2" * 16
    paths.mlruns.mkdir(parents=True)
    db = paths.mlruns / "mlflow.db"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, name TEXT, lifecycle_stage TEXT);"
        "CREATE TABLE tags (key TEXT, value TEXT, run_uuid TEXT);"
        "CREATE TABLE params (key TEXT, value TEXT, run_uuid TEXT);"
    )
    con.execute("INSERT INTO runs VALUES ('r1', ?, 'active')", (f"debug {pid}",))
    con.execute("INSERT INTO tags VALUES ('subject', ?, 'r1')", (pid,))
    con.execute("INSERT INTO params VALUES ('lr', '0.1', 'r1')")
    con.execute("INSERT INTO params VALUES ('note', ?, 'r1')", (f"dropped {pid}",))
    con.commit()
    # A row deleted earlier without secure_delete leaves its bytes in a freed page.
    con.execute("DELETE FROM params WHERE key = 'note'")
    con.commit()
    con.close()
    art = paths.mlruns / "artifacts" / "r1" / "rows.csv"
    art.parent.mkdir(parents=True)
    art.write_text(f"pid\n{pid}\n")
    image = paths.mlruns / "artifacts" / "r1" / "face.png"
    image.write_bytes(b"\x89PNG-not-really")
    clean = paths.mlruns / "artifacts" / "r1" / "metrics.json"
    clean.write_text(json.dumps({"pid_count": 3, "other": other}))
    found = scan_mlflow(paths, pid, {hashlib.sha256(b"\x89PNG-not-really").hexdigest()})
    assert {Path(a["path"]).name for a in found} == {"rows.csv", "face.png", "mlflow.db"}
    purge_mlflow(paths, pid, found)
    assert not art.exists() and not image.exists() and clean.exists()
    assert pid.encode() not in db.read_bytes()
    con = sqlite3.connect(db)
    assert con.execute("SELECT key, value FROM params").fetchall() == [("lr", "0.1")]
    assert con.execute("SELECT name FROM runs").fetchall() == [("debug [erased]",)]
    assert con.execute("SELECT COUNT(*) FROM tags").fetchone()[0] == 0
    con.close()
    assert scan_mlflow(paths, pid, set()) == []


def md5_bytes(data: bytes) -> str:
    """DVC's object name of ``data``."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([dvc, *args], cwd=root, capture_output=True, text=True, env=env)


def _objects(folder: Path) -> dict[str, bytes]:
    return {
        p.parent.name + p.name: p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and len(p.parent.name) == 2
    }


@pytest.mark.pipeline
def test_dvc_cache_remote_and_site_cache_are_purged_by_hash_keeping_shared_objects(
    tiny_project, tmp_path
):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    victim, other = proj.pids[0], proj.pids[1]
    paths = proj.paths
    # A second version of data/raw: the victim gains an image, and someone filed a
    # byte-identical copy of one of the victim's sealed files under another subject (the
    # object must survive, declared; sealed under the victim's key, it is unreadable after).
    store = RawStore(paths, core=proj.core)
    shared_id = sorted(proj.images[victim])[0]
    shared = store.image_path(victim, shared_id).read_bytes()
    extra = png(face_tile(proj.world.people[victim], proj.world.rng))
    size = {"width": 32, "height": 32}
    with store.transaction() as txn:
        extra_id = txn.write_image(victim, extra)
        txn.add_images(
            [{"pid": victim, "image_id": extra_id, "sha256": sha256_bytes(extra), **size}]
        )
    extra = store.image_path(victim, extra_id).read_bytes()  # what DVC stores: ciphertext
    copy = paths.raw / other / "i0000000000aa.sealed"
    copy.write_bytes(shared)
    dvc_objects.add(root, paths.raw)
    victim_files = {f.read_bytes() for f in (paths.raw / victim).glob("*.sealed")}
    remote = tmp_path / "remote"
    assert _dvc(root, "remote", "add", "-d", "store", str(remote)).returncode == 0
    assert _dvc(root, "push").returncode == 0
    assert _dvc(root, "status", "-c").returncode == 0  # fills the site cache's indexes
    setup = dvc_objects.open_setup(root)
    site = setup.site_cache_dir
    assert any(victim.encode() in p.read_bytes() for p in site.rglob("*") if p.is_file())
    md5 = {n: md5_bytes(b) for n, b in (("shared", shared), ("extra", extra))}
    cache = root / ".dvc" / "cache"
    assert md5["extra"] in _objects(cache) and md5["extra"] in _objects(remote)
    result = Erasure(paths).erase(victim)
    for folder in (cache, remote):
        objs = _objects(folder)
        assert md5["extra"] not in objs
        assert md5["shared"] in objs  # still referenced through the other subject
        for oid, data in objs.items():
            if oid.endswith(".dir"):
                assert victim.encode() not in data
            assert data not in victim_files - {shared}
    kept = result.certificate["claims"]["dvc"]["kept_still_referenced"]
    assert md5["shared"] in kept
    retained = result.certificate["claims"]["retained_shared_content"]
    assert [r["sha256"] for r in retained] == [sha256_bytes(shared)]
    with pytest.raises(ValueError, match="erased"):
        PrivacyCore(paths).data_keys.open(shared)
    assert not any(victim.encode() in p.read_bytes() for p in site.rglob("*") if p.is_file())
    # DVC still works on what is left, and the remote is complete for the current version.
    assert _dvc(root, "push").returncode == 0
    status = _dvc(root, "status", "-c")
    assert status.returncode == 0 and "new:" not in status.stdout
    report = verify_certificate(result.certificate_path, root=root)
    assert report.ok, report.findings


@pytest.mark.pipeline
def test_a_dvc_remote_dvc_cannot_open_is_neither_skipped_by_the_erasure_nor_the_verifier(
    tiny_project,
):
    """A remote whose plugin is missing (ssh without dvc-ssh) was skipped with a log line: the
    erasure left whatever it held, the certificate listed it among the remotes, and the
    verifier said nothing remains."""
    import importlib.util

    from visage_ml.stack.proc import StackError

    if importlib.util.find_spec("dvc_ssh") is not None:
        pytest.skip("dvc-ssh is installed: the ssh remote would open")
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    done = Erasure(proj.paths).erase(proj.pids[0])
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    assert _dvc(root, "remote", "add", "far", "ssh://backup.invalid/store").returncode == 0
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert "remote:far (not opened" in json.dumps([c.detail for c in report.checks])
    before = sorted(p.name for p in (proj.paths.raw / proj.pids[1]).iterdir())
    with pytest.raises(StackError, match=r"far \(.*dvc-ssh"):
        Erasure(proj.paths).erase(proj.pids[1])
    assert sorted(p.name for p in (proj.paths.raw / proj.pids[1]).iterdir()) == before


@pytest.mark.pipeline
def test_an_erasure_whose_raw_tables_are_not_checked_out_erases_nothing_until_they_are(
    tiny_project,
):
    """data/raw tracked by DVC, its tables not in the workspace (`dvc checkout` not run, or
    cut short): the tombstone and the raw step read images.parquet as empty, so no one sought
    the subject's photographs by their content. A plaintext copy of one, in reports/, was kept,
    and the erasure certified the subject erased (the verifier: nothing remains); the raw step
    wrote data/raw's tables again without anyone's rows and `dvc add`ed them, and the DVC step
    purged the old versions, which named the subject: every other subject's rows gone for
    good. Refused now before anything is erased, the request kept with its failure."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    paths = proj.paths
    victim = proj.pids[0]
    copy = root / "reports" / "portrait.png"
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(next(iter(proj.images[victim].values())))
    for name in ("subjects.parquet", "images.parquet"):
        (paths.raw / name).unlink()
    key = PrivacyCore(paths).data_keys.key(victim)

    with pytest.raises(RawDataMissingError, match="run `dvc checkout data/raw`") as stopped:
        Erasure(paths).erase(victim)

    st = _kept_stopped_at_preflight(paths, victim, key, stopped.value)
    assert copy.is_file() and len(list((paths.raw / victim).iterdir())) == 3

    assert _dvc(root, "checkout", "data/raw").returncode == 0
    result = Erasure(paths).run(st.request_id)

    assert not copy.exists()
    assert set(read_subjects(paths.raw)["pid"]) == set(proj.pids) - {victim}
    kept = read_images(paths.raw)
    assert len(kept) == 6 and victim not in set(kept["pid"])
    report = verify_certificate(result.certificate_path, root=root)
    assert report.ok, report.findings


@pytest.mark.pipeline
@pytest.mark.parametrize("whose", ["the_subjects", "anothers"])
def test_an_erasure_where_data_raw_is_checked_out_in_part_erases_nothing_until_it_is(
    tiny_project, whose
):
    """data/raw tracked by DVC, its tables there but a photograph they list not (a `dvc
    checkout` cut short): the erasure went on, and the raw step's `dvc add` recorded a version
    without the photograph not there; another subject's was then gone from data/raw's current
    version (`dvc checkout data/raw` after the erasure brought it back no more). Refused now
    before anything is erased, the request kept with its failure; once checked out, it is
    erased and every other photograph kept."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    paths = proj.paths
    victim, other = proj.pids[0], proj.pids[1]
    photo = sorted((paths.raw / (victim if whose == "the_subjects" else other)).iterdir())[0]
    photo.unlink()
    key = PrivacyCore(paths).data_keys.key(victim)

    with pytest.raises(RawDataMissingError, match="checked out only in part") as stopped:
        Erasure(paths).erase(victim)

    said = " ".join(str(stopped.value).split())
    assert "run `dvc checkout data/raw`" in said and other not in said, said
    st = _kept_stopped_at_preflight(paths, victim, key, stopped.value)

    assert _dvc(root, "checkout", "data/raw").returncode == 0 and photo.is_file()
    result = Erasure(paths).run(st.request_id)

    assert _dvc(root, "checkout", "data/raw").returncode == 0
    assert not (paths.raw / victim).exists()
    assert {p: len(list((paths.raw / p).iterdir())) for p in proj.pids[1:]} == {
        p: 3 for p in proj.pids[1:]
    }
    assert len(read_images(paths.raw)) == 6
    report = verify_certificate(result.certificate_path, root=root)
    assert report.ok, report.findings


@pytest.mark.pipeline
def test_an_erasure_whose_photograph_is_lost_for_good_can_go_on_once_the_loss_is_recorded(
    tiny_project,
):
    """A photograph of the subject gone from the workspace and from the DVC cache, no remote
    to pull it from: `dvc checkout` brings it back no more, so a refusal that only said to
    check it out would block the subject's erasure for good. The refusal says how to record
    the loss (`dvc add data/raw`); once recorded, the erasure goes on and its certificate
    verifies."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    paths = proj.paths
    victim = proj.pids[0]
    photo = sorted((paths.raw / victim).iterdir())[0]
    rel = photo.relative_to(paths.raw).as_posix()
    [md5] = [e["md5"] for e in _dir_listing(root) if e["relpath"] == rel]
    photo.unlink()
    (root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink()

    with pytest.raises(RawDataMissingError, match="checked out only in part") as stopped:
        Erasure(paths).erase(victim)

    said = " ".join(str(stopped.value).split())
    assert "lost" in said and "`dvc add data/raw`" in said, said
    [st] = RequestBook(PrivacyCore(paths)).all(pid=victim)
    assert _dvc(root, "add", "data/raw").returncode == 0
    result = Erasure(paths).run(st.request_id)

    assert not (paths.raw / victim).exists()
    assert victim not in set(read_images(paths.raw)["pid"])
    report = verify_certificate(result.certificate_path, root=root)
    assert report.ok, report.findings


@pytest.mark.pipeline
def test_an_erasure_where_a_recorded_file_is_gone_with_the_listing_erases_nothing_until_fetched(
    tiny_project,
):
    """A file DVC records in data/raw that no table lists (another subject's photograph filed
    under a third with a name of its own), gone from the workspace, and data/raw.dvc's listing
    not in the DVC cache: every photograph the tables list is there, so the erasure went on and
    the raw step's `dvc add` made a version without the file. Refused now before anything is
    erased, the request kept with its failure, naming no one; once fetched and checked out, it
    is erased and the file kept in the version recorded."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    paths = proj.paths
    victim, other, third = proj.pids
    copy = paths.raw / third / "kept.sealed"
    copy.write_bytes(sorted((paths.raw / other).iterdir())[0].read_bytes())
    assert _dvc(root, "add", "data/raw").returncode == 0
    copy.unlink()
    md5 = str(tracked_md5(root, paths.raw))
    listing = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    kept = listing.read_bytes()
    listing.chmod(0o600)
    listing.unlink()
    key = PrivacyCore(paths).data_keys.key(victim)

    with pytest.raises(RawDataMissingError, match="not shown to be what") as stopped:
        Erasure(paths).erase(victim)

    said = " ".join(str(stopped.value).split())
    assert "run `dvc fetch data/raw` first" in said and other not in said, said
    assert third not in said and copy.name not in said, said
    st = _kept_stopped_at_preflight(paths, victim, key, stopped.value)

    listing.write_bytes(kept)  # as `dvc fetch data/raw` from a remote holding it brings it
    assert _dvc(root, "checkout", "data/raw").returncode == 0 and copy.is_file()
    result = Erasure(paths).run(st.request_id)

    assert not (paths.raw / victim).exists() and copy.is_file()
    assert f"{third}/{copy.name}" in {e["relpath"] for e in _dir_listing(root)}
    report = verify_certificate(result.certificate_path, root=root)
    assert report.ok, report.findings


@pytest.mark.pipeline
@pytest.mark.parametrize("filed", ["under_another", "in_its_own_folder"])
@pytest.mark.parametrize("listing", ["cached", "not_cached"])
def test_an_erasure_of_a_recorded_copy_in_data_raw_leaves_it_recorded_without_it(
    tiny_project, filed, listing
):
    """A copy of the subject's photograph in clear that no table lists, filed in data/raw under
    another subject or in the subject's own folder under a name of its own, `dvc add`ed. The
    copies step removed the one under another subject (its file and its DVC object) after the
    raw step's `dvc add data/raw` had recorded it: data/raw.dvc still listed it, so the
    verifier could not tell right after the erasure (a recorded file neither here nor in the
    cache), nor, its listing not cached, data/raw shown to be its record, and the next writer
    of data/raw stopped until `dvc add data/raw`; the raw step's version, which names the copy,
    stayed in the cache. Now data/raw is recorded again as the erasure leaves it: the
    certificate verifies, the copy is gone from the workspace, every listing in the cache and
    the cache, and the next writer goes on."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    paths = proj.paths
    victim, _, third = proj.pids
    photo = next(iter(proj.images[victim].values()))
    folder = third if filed == "under_another" else victim
    copy = paths.raw / folder / "kept.png"
    copy.write_bytes(photo)
    assert _dvc(root, "add", "data/raw").returncode == 0
    md5 = hashlib.md5(photo, usedforsecurity=False).hexdigest()
    obj = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert obj.is_file()

    result = Erasure(paths).erase(victim)

    assert not copy.exists() and not (paths.raw / victim).exists()
    assert f"{folder}/{copy.name}" not in {e["relpath"] for e in _dir_listing(root)}
    assert not obj.exists()
    # Nor does any version of data/raw left in the cache list it (the raw step's, superseded).
    manifests = (root / ".dvc" / "cache" / "files" / "md5").glob("*/*.dir")
    assert not [m for m in manifests if copy.name.encode() in m.read_bytes()]
    if listing == "not_cached":
        after = str(tracked_md5(root, paths.raw))
        kept = root / ".dvc" / "cache" / "files" / "md5" / after[:2] / after[2:]
        kept.chmod(0o600)
        kept.unlink()
    report = verify_certificate(result.certificate_path, root=root)
    assert report.ok, report.findings
    status = _dvc(root, "status", "data/raw.dvc")
    assert status.returncode == 0, status.stdout + status.stderr
    if listing == "cached":
        assert "up to date" in status.stdout, status.stdout
    # The next writer of data/raw goes on: what is here is what data/raw.dvc records.
    with RawStore(paths, core=PrivacyCore(paths), track=False).transaction() as txn:
        txn.discard()


@pytest.mark.pipeline
def test_an_erasure_stopped_before_data_raw_is_recorded_again_records_it_on_resume(
    tiny_project, monkeypatch
):
    """The copies step took the copy out of data/raw, then stopped before recording data/raw
    again (DVC failed): the run resumed finds no copy there any more and records data/raw all
    the same, from the count its plan kept, and the certificate verifies."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    paths = proj.paths
    victim, _, third = proj.pids
    copy = paths.raw / third / "kept.png"
    copy.write_bytes(next(iter(proj.images[victim].values())))
    assert _dvc(root, "add", "data/raw").returncode == 0

    def failing(ctx):
        raise RuntimeError(copies_mod.raw.MSG_DVC_ADD.format(target="data/raw", error="down"))

    with monkeypatch.context() as m:
        m.setattr(copies_mod.raw, "record_again", failing)
        with pytest.raises(RuntimeError, match="run `visage privacy resume`"):
            Erasure(paths).erase(victim)
    assert not copy.exists()
    assert f"{third}/{copy.name}" in {e["relpath"] for e in _dir_listing(root)}

    [result] = Erasure(paths).resume()

    assert result.resumed_steps == ["copies"]
    assert f"{third}/{copy.name}" not in {e["relpath"] for e in _dir_listing(root)}
    dataset = result.certificate["claims"]["dataset"]
    assert dataset["raw_md5_after"] == tracked_md5(root, paths.raw)
    report = verify_certificate(result.certificate_path, root=root)
    assert report.ok, report.findings


def _dir_listing(root: Path) -> list[dict]:
    """The entries of data/raw.dvc's .dir object in the DVC cache."""
    md5 = yaml.safe_load((root / "data" / "raw.dvc").read_text())["outs"][0]["md5"]
    obj = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return json.loads(obj.read_text())


def _kept_stopped_at_preflight(paths, victim: str, key: bytes, stopped: BaseException):
    """The erasure request of ``victim``, stopped before anything was erased
    (``raw_data_missing``): kept with its failure, the subject and their key still there."""
    assert "nothing was erased" in "\n".join(stopped.__notes__)
    core = PrivacyCore(paths)
    [st] = RequestBook(core).all(pid=victim)
    assert st.status == "verified", st.status
    assert (st.failure["step"], st.failure["code"]) == ("preflight", "raw_data_missing")
    assert not core.subject(victim).erased and core.data_keys.key(victim) == key
    return st


@pytest.mark.pipeline
def test_in_process_dvc_add_records_what_the_dvc_command_records(tiny_project, tmp_path):
    """The erasure updates data/raw.dvc from that file alone: same .dir md5, cache and status
    as `dvc add data/raw` in a copy of the project."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    before = tracked_md5(root, root / "data" / "raw")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    for r in (root, copy):
        # The same change in both: a subject leaves data/raw and a table is rewritten.
        shutil.rmtree(r / "data" / "raw" / proj.pids[0])
        table = r / "data" / "raw" / "images.parquet"
        images = pd.read_parquet(table)
        images[images["pid"] != proj.pids[0]].to_parquet(table, index=False)
    md5 = dvc_objects.add(root, root / "data" / "raw")
    assert _dvc(copy, "add", "data/raw").returncode == 0
    assert md5 == tracked_md5(copy, copy / "data" / "raw") != before
    assert (root / "data" / "raw.dvc").read_text() == (copy / "data" / "raw.dvc").read_text()
    assert set(_objects(root / ".dvc" / "cache")) == set(_objects(copy / ".dvc" / "cache"))
    status = _dvc(root, "status", "data/raw.dvc")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout


def test_http_erasure_stops_matching_at_once_and_auditors_fetch_the_certificate(proj):
    # Deferred: FastAPI is an optional, heavy dependency only these HTTP checks need.
    from fastapi.testclient import TestClient

    from visage_ml.app.http.app import create_app

    keys = {role: KeyStore(proj.paths.api_keys).create(role)[1] for role in ROLES}
    gallery = proj.gallery()
    app = create_app(
        proj.paths,
        params=load_params(proj.paths.params),
        engine=proj.engine,
        gallery=gallery,
        core=proj.core,
        mode="full",
    )
    client = TestClient(app, raise_server_exceptions=False)

    def call(method, path, role, **kw):
        return client.request(method, path, headers={"X-API-Key": keys[role]}, **kw)

    victim = proj.pids[3]
    photo = {"image": png_b64(proj.world.photo(victim)[0])}
    matches = call("POST", "/v1/identify", "operator", json=photo).json()["faces"][0]["matches"]
    assert matches[0]["pid"] == victim
    assert call("POST", f"/v1/subjects/{victim}/erasure", "auditor").status_code == 403
    r = call("POST", f"/v1/subjects/{victim}/erasure", "dpo")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["artefacts"] > 5 and set(body["timings_s"]) >= set(STEPS)
    matches = call("POST", "/v1/identify", "operator", json=photo).json()["faces"][0]["matches"]
    assert victim not in {m["pid"] for m in matches}
    assert gallery.size == len(proj.pids) - 1
    cert = call("GET", f"/v1/certificates/{body['request_id']}", "auditor")
    assert cert.status_code == 200
    assert hashlib.sha256(cert.content).hexdigest() == body["certificate_sha256"]
    assert call("GET", f"/v1/certificates/{body['request_id']}", "dpo").status_code == 403
    again = call("POST", f"/v1/subjects/{victim}/erasure", "dpo")
    assert again.status_code == 409 and again.json()["error"]["code"] == "subject_erased"
    path = proj.paths.root / "cert.json"
    path.write_bytes(cert.content)
    assert verify_certificate(path, root=proj.paths.root).ok


@pytest.mark.slow
def test_rebuild_mode_reruns_prepare_through_dvc(tiny_project, monkeypatch):
    root = tiny_project(
        {
            "synth.n_identities": 8,
            "synth.images_per_identity": [2, 3],
            "privacy.processed_on_erasure": "rebuild",
        },
        dvc=True,
    )
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    # `dvc repro` runs `python -m visage_ml.app.stages.prepare`: this interpreter's.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    assert _dvc(root, "repro", "prepare").returncode == 0
    victim = str(pd.read_parquet(paths.processed / "manifest.parquet")["pid"].iloc[0])
    result = Erasure(paths).erase(victim)
    assert victim not in set(pd.read_parquet(paths.processed / "manifest.parquet")["pid"])
    dataset = result.certificate["claims"]["dataset"]
    assert dataset["processed_on_erasure"] == "rebuild"
    assert dataset["processed_md5_after"] != dataset["processed_md5_before"]
    # dvc.lock records the rebuilt outputs and the new data/raw; only the snapshot's final
    # "erased" rows (written after the rebuild) are newer.
    status = _dvc(root, "status", "prepare").stdout
    assert "changed outs" not in status and "data/raw" not in status
    assert verify_certificate(result.certificate_path, root=root).ok


@pytest.mark.slow
def test_rebuild_mode_outside_dvc_runs_prepare_in_this_process(tiny_project):
    root = tiny_project(
        {
            "synth.n_identities": 8,
            "synth.images_per_identity": [2, 3],
            "privacy.processed_on_erasure": "rebuild",
        }
    )
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    acquire_synthfaces(paths, params, progress=False)
    prepare(paths, params)
    before = json.loads((paths.reports / "prepare.json").read_text())
    victim = str(pd.read_parquet(paths.processed / "manifest.parquet")["pid"].iloc[0])
    result = Erasure(paths).erase(victim)
    assert victim not in set(pd.read_parquet(paths.processed / "manifest.parquet")["pid"])
    after = json.loads((paths.reports / "prepare.json").read_text())
    assert after["subjects_total"] == before["subjects_total"] - 1
    dataset = result.certificate["claims"]["dataset"]
    assert dataset["processed_on_erasure"] == "rebuild"
    assert dataset["processed_md5_after"] != dataset["processed_md5_before"]
    assert verify_certificate(result.certificate_path, root=root).ok
