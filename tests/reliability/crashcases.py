"""Crash cases: an operation killed at a fault point, then restart, recovery and checks.

Shared by ``test_crash.py`` and ``benchmarks/bench_reliability.py``. Each case runs the
operation in a child process with ``VISAGE_FAULT=<point>`` (:mod:`visage_ml.faults`, and the
erasure's own ``erasure:<step>`` points) and then, like an operator would: starts a server (opens
the gallery), runs ``visage privacy resume``, lets the next acquisition recover ``data/raw``, and
repeats the interrupted operation. After the restart, and again after recovery:

- the ledger verifies (a torn tail is allowed only until the next append repairs it);
- the gallery agrees with the registry: nothing searchable that may not be identified, nothing
  searchable that the ledger does not record, every subject enrolled before the crash still
  searchable (no lost update);
- no subject whose erasure started is matchable, and after ``resume`` nothing of them is left;
- an interrupted import, repeated, stores every image exactly once and every person once.

Not a test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from harness import VERSION  # also puts tests/unit on the import path (rights_fakes)
from PIL import Image

from visage_ml.config import ProjectPaths
from visage_ml.data.rawstore import RawStore, read_images, read_subjects
from visage_ml.faults import FAULT_EXIT
from visage_ml.io import sha256_file
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.serving.gallery import Gallery

CHILD = Path(__file__).with_name("crash_child.py")
LEDGER = ["ledger:append:before-write", "ledger:append:torn", "ledger:append:before-fsync"]
ENROL = [
    "gallery:enroll:key-created",
    "gallery:enroll:template-written",
    "gallery:enroll:recorded",
    *LEDGER,
]
ERASE = [
    "gallery:erase:dropped",
    "io:secure-unlink:zeroed",
    "gallery:erase:key-destroyed",
    "gallery:erase:template-removed",
    "erasure:lineage",
    "erasure:gallery:planned",
    "erasure:gallery",
    "erasure:vault:planned",
    "erasure:vault",
    "erasure:raw:planned",
    "erasure:raw",
    "erasure:dvc",
    "erasure:processed",
    "erasure:mlflow",
    "erasure:copies",
    "erasure:snapshot",
    "witness:kept:cosigned",
    "erasure:certificate:completed",
    "erasure:certificate",
    "ledger:append:torn",
]
IMPORT = [
    "ledger:append:before-write",
    "import:registered",
    "import:basis-recorded",
    "rawstore:staged",
    "rawstore:swap:between",
    "rawstore:swap:done",
    "rawstore:committed",
    "ledger:append:torn",
]
# The points the default test run covers (one or two of each kind); the slow run covers all.
DEFAULT = {
    ("enroll", "gallery:enroll:template-written"),
    ("enroll", "ledger:append:torn"),
    ("erase", "io:secure-unlink:zeroed"),
    ("erase", "gallery:erase:key-destroyed"),
    ("erase", "erasure:vault"),
    ("withdraw", "ledger:append:torn"),
    ("import", "rawstore:swap:between"),
    ("import", "import:registered"),
    ("import", "ledger:append:torn"),
}
CASES = [
    *[("enroll", f) for f in ENROL],
    *[("erase", f) for f in ERASE],
    *[("withdraw", f) for f in LEDGER],
    *[("import", f) for f in IMPORT],
]


def child(root: Path, fault: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VISAGE_PROJECT": str(root)}
    env.pop("VISAGE_FAULT", None)
    if fault:
        env["VISAGE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, str(CHILD), args[0], str(root), *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------------------------------------
# The project and what it must look like
# ---------------------------------------------------------------------------------------------


class Crashed:
    """A rights-test project (raw, processed, gallery, vault) with one subject not enrolled."""

    def __init__(self, root: Path) -> None:
        from rights_fakes import make_project

        self.proj = make_project(root, n_subjects=6, n_images=2, enrol=False)
        self.paths: ProjectPaths = self.proj.paths
        self.pids = self.proj.pids
        self.newcomer = self.pids[-1]
        g = self.proj.gallery()
        g.enroll_many({p: self.embed(p, 2) for p in self.pids[:-1]})
        self.acknowledged = set(self.pids[:-1])

    def embed(self, pid: str, n: int = 1) -> np.ndarray:
        return self.proj.engine.embed(self.proj.world.photo(pid, n))

    def gallery(self):
        return Gallery.open(
            self.paths,
            model_version=VERSION,
            embedding_dim=64,
            threshold=0.7,
            core=PrivacyCore(self.paths),
        )

    def matched(self, gallery, pid: str) -> bool:
        return any(m.pid == pid for m in gallery.identify(self.embed(pid)[0], top_k=6))


def ledger_state(paths: ProjectPaths) -> str:
    """``ok``, or ``torn`` for a torn tail only (repaired by the next append)."""
    result = PrivacyCore(paths).ledger.verify()
    if result.ok:
        return "ok"
    assert "torn last line" in result.reason, result.message()
    return "torn"


def check_consistent(c: Crashed, *, after_resume: bool) -> None:
    """Gallery versus registry, erasure state, lost updates."""
    gallery = c.gallery()  # a restarted server: interrupted erasures of templates finish here
    core = gallery.core
    registry = core.registry
    allowed = registry.allowed("identification")
    searchable = set(gallery.searchable())
    assert searchable <= allowed, searchable - allowed
    for pid in c.pids:
        st = registry.get(pid)
        if st.erased or st.erasure_pending:
            assert pid not in searchable and not c.matched(gallery, pid), pid
            if after_resume:
                assert st.erased and not st.erasure_pending
                assert not gallery.template_path(pid).exists()
                assert not gallery.keys.path(pid).exists()
                assert not (c.paths.vault / "keys" / f"{pid}.key").exists()
                assert not (c.paths.vault / "records" / f"{pid}.bin").exists()
                assert not (c.paths.raw / pid).exists()
        elif pid in c.acknowledged and pid in allowed:
            assert pid in searchable and c.matched(gallery, pid), pid
    # Every searchable template is the one the ledger last recorded for its subject.
    for pid in searchable:
        assert recorded_template(core, pid) == sha256_file(gallery.template_path(pid)), pid


def recorded_template(core: PrivacyCore, pid: str) -> str | None:
    """SHA-256 of the template the ledger last recorded as enrolled for ``pid``, if any."""
    digest = None
    for e in core.ledger.entries():
        if e.pid == pid and e.type == "gallery.enrolled":
            digest = e.payload["template_sha256"]
        elif e.pid == pid and e.type == "gallery.removed":
            digest = None
    return digest


def put_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path, "JPEG")


def crash_and_recover(project: Path, tmp_path: Path, op: str, fault: str) -> None:
    """Run ``op`` until ``fault`` kills it, restart, recover, repeat it; check all along."""
    c = Crashed(project)
    args: list[str]
    if op == "enroll":
        target = c.newcomer
        np.save(tmp_path / "emb.npy", c.embed(target, 3))
        args = [op, target, str(tmp_path / "emb.npy")]
    elif op == "erase":
        target = c.pids[0]  # the one with a vault record
        args = [op, target]
    elif op == "withdraw":
        target = c.pids[2]
        args = [op, target]
    else:
        target = ""
        src = tmp_path / "incoming"
        for i, person in enumerate(("Ann_Example", "Bob_Example")):
            for k in range(2):
                put_jpeg(src / person / f"{k}.jpg", 100 * i + k)
        args = [op, str(src)]

    died = child(c.paths.root, fault, *args)
    assert died.returncode == FAULT_EXIT, (died.returncode, died.stderr[-3000:])

    # Restart: the ledger may only have a torn tail; the gallery must already be consistent.
    assert ledger_state(c.paths) in ("ok", "torn")
    check_consistent(c, after_resume=False)

    # Recovery as an operator runs it, then the interrupted operation again.
    core = PrivacyCore(c.paths)
    Erasure(c.paths, core=core).resume()
    with RawStore(c.paths, core=core, track=False).lock():
        RawStore(c.paths, core=core, track=False).recover()
    again = child(c.paths.root, None, *args)
    if op == "erase" and again.returncode != 0:
        assert "erased" in again.stderr  # resume already finished it
    elif op == "withdraw" and again.returncode != 0:
        assert "nothing to withdraw" in again.stderr  # the first one reached the ledger
    else:
        assert again.returncode == 0, again.stderr[-3000:]
    core = PrivacyCore(c.paths)
    core.ledger.checkpoint()  # any append repairs a torn tail
    assert core.ledger.verify().ok, core.ledger.verify().message()
    if op == "enroll":
        c.acknowledged.add(target)
    check_consistent(c, after_resume=True)

    gallery = c.gallery()
    if op == "erase":
        assert core.registry.get(target).erased
        certs = sorted(c.paths.certificates.glob("r*.json"))
        assert certs and verify_certificate(certs[-1], root=c.paths.root).ok
    elif op == "withdraw":
        assert target not in gallery.searchable()
    elif op == "enroll":
        assert target in gallery.searchable() and c.matched(gallery, target)
    else:
        check_import(c)


def check_import(c: Crashed) -> None:
    """Every imported image once, every person once, tables and files in agreement."""
    images, subjects = read_images(c.paths.raw), read_subjects(c.paths.raw)
    files = {p.stem for p in c.paths.raw.glob("p*/*.sealed")}
    assert set(images["image_id"]) == files and len(files) == len(images)
    assert images["sha256"].is_unique
    assert not list(c.paths.data.glob("raw.*"))  # no staging or old tree left
    core = PrivacyCore(c.paths)
    imported = set(subjects.loc[subjects["source"] == "import:imagefolder", "pid"])
    assert len(imported) == 2
    assert len(images[images["pid"].isin(imported)]) == 4
    refs = {core.vault.find(f"imagefolder:{p}") for p in ("Ann_Example", "Bob_Example")}
    assert refs == imported or len(refs) == 2
    for pid in imported:
        assert core.may_process(pid, "training").allowed
