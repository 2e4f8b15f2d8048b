"""One erasure request across the whole stack: the shared gallery in PostgreSQL, the DVC remote
on S3 and the MLflow server, each down to the bytes on disk, certified per store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from project_helpers import files_holding, init_dvc_repo, stack_project_on, write_overrides
from rights_fakes import VERSION, make_project
from serving_fakes import DIM, THRESHOLD

from visage_ml.config import ProjectPaths, load_params
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.serving.pg_gallery import PgGallery, PgOptions, resolve_dsn
from visage_ml.stack.manager import Stack, configure_project
from visage_ml.stack.seaweed import scan

DVC = str(Path(sys.executable).with_name("dvc"))


def _dvc(root: Path, *args: str) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([DVC, *args], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.pipeline
def test_one_request_erases_the_subject_from_every_store_of_the_stack(stack, project):
    init_dvc_repo(project)
    proj = make_project(project, n_subjects=4, track=True, enrol=False)
    stack_project_on(stack, project)
    table = f"g_{os.urandom(5).hex()}"
    write_overrides(
        project / "params.yaml",
        {"serving.gallery.backend": "pgvector", "serving.gallery.table": table},
    )
    paths = ProjectPaths(project)
    configure_project(Stack.of(paths))
    # The gallery's DSN comes from the stack (secrets/stack.json), as `visage serve` finds it.
    dsn = resolve_dsn(load_params(paths.params), {}, paths=paths)
    gallery = PgGallery.open(
        paths,
        options=PgOptions(dsn=dsn, table=table, listen=False),
        model_version=VERSION,
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=proj.core,
    )
    gallery.enroll_many({pid: proj.engine.embed(proj.world.photo(pid, 2)) for pid in proj.pids})
    gallery.write_meta()
    victim, other = proj.pids[0], proj.pids[1]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    gallery.close()
    _dvc(project, "push")
    sealed = sorted((paths.raw / victim).glob("*.sealed"))[0].read_bytes()
    probe = sealed[len(sealed) // 2 : len(sealed) // 2 + 64]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    # The attack works before: the subject's bytes are in each service's data folder.
    assert scan(stack.s3_data_dir, probe)
    assert files_holding(stack.data_dir, vector)

    t = time.perf_counter()
    result = Erasure(paths).erase(victim)
    seconds = time.perf_counter() - t
    claims = result.certificate["claims"]
    by_store: dict[str, set[str]] = {}
    for a in claims["artefacts"]:
        by_store.setdefault(a["store"], set()).add(a["outcome"])
    assert by_store["pgvector"] == {"crypto-shredded", "physically removed"}
    # The sealed images on S3 are crypto-shredded; old table versions naming the pid, removed.
    assert by_store["dvc-remote"] == {"crypto-shredded", "physically removed"}
    # Each object on the stack's S3 is listed once, by the step that deleted and vacuumed it
    # (the dvc step, which sees the same remote, does not list it again).
    on_s3 = {a["path"] for a in claims["artefacts"] if a["store"] == "dvc-remote"}
    twice = [a for a in claims["artefacts"] if a["store"] != "dvc-remote" and a["path"] in on_s3]
    assert twice == []
    # Each hash with the size of its content: the scans for copies read only files of a size
    # sought (one without would have every file of the project read).
    assert [a for a in claims["artefacts"] if a.get("sha256") and "size" not in a] == []
    assert verify_certificate(result.certificate_path, root=paths.root).ok
    # ... and after: nothing of the subject in S3's volume files or PostgreSQL's data folder.
    assert scan(stack.s3_data_dir, probe) == []
    assert files_holding(stack.data_dir, vector) == []
    shared = PgGallery.open(
        paths,
        options=PgOptions(dsn=dsn, table=table, listen=False),
        model_version=VERSION,
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=PrivacyCore(paths),
    )
    assert shared.stored() == sorted(p for p in proj.pids if p != victim)
    assert other in shared.stored()
    shared.close()
    print(f"whole-stack erasure: {seconds:.1f} s")


def test_an_external_s3_remote_puts_its_caveat_on_the_certificate(monkeypatch, project):
    """On a provider's S3 the objects are deleted through the S3 API, but whether the bytes
    left the provider's disks cannot be observed: the certificate must say so. The caveat was
    recorded under a key the certificate never reads, and dropped when the step ran."""
    from types import SimpleNamespace

    from visage_ml.rights.erasure import dvc_remote
    from visage_ml.rights.erasure.base import Context

    monkeypatch.setattr(dvc_remote, "stack_remote", lambda ctx: (SimpleNamespace(local=False), []))
    proj = make_project(project, n_subjects=2)
    ctx = Context(paths=proj.paths, core=proj.core, params=load_params(proj.paths.params))
    plan = dvc_remote.plan(ctx, proj.pids[0])
    assert plan is not None and plan.info == {"note": dvc_remote.EXTERNAL_NOTE}
    outcome = dvc_remote.erase(ctx, proj.pids[0], [], plan)
    # The orchestrator gathers every step's "note" into the certificate's store_notes.
    assert outcome.info.get("note") == dvc_remote.EXTERNAL_NOTE


def test_a_dvc_remote_on_another_provider_puts_its_caveat_on_the_certificate(project):
    """A DVC remote on a provider's S3 (or GCS, Azure, SSH...) that is not the stack's: its
    objects are deleted through the API, and the certificate called a table in clear there
    "physically removed" without a word on versions, replicas or the provider's disks. A remote
    on a path is deleted by the erasure itself, and the stack's remote has its own step."""
    from visage_ml.rights import dvc_objects
    from visage_ml.rights.erasure import dvc
    from visage_ml.rights.erasure.base import Context

    init_dvc_repo(project)
    proj = make_project(project, n_subjects=2)
    ctx = Context(paths=proj.paths, core=proj.core, params=load_params(proj.paths.params))
    setup = dvc_objects.DvcSetup(proj.paths.root)
    stack_name = Stack.of(proj.paths).params.dvc_remote
    setup.remote_urls = {
        "offsite": "s3://backups/visage",
        "archive": "gs://archive/dvc",
        "nas": "/mnt/nas/dvc",
        "here": "file:///srv/dvc",
    }
    assert dvc.api_remotes(ctx, setup) == ["archive", "offsite"]
    # The stack's own remote, once DVC knows it, is its step's to note (or compact).
    setup.remote_urls[stack_name] = "s3://visage-dvc"
    ctx.dvc_setup = lambda: setup  # type: ignore[method-assign]
    assert dvc.api_remotes(ctx, setup) == ["archive", "offsite"]
    plan = dvc.Plan([], {}, state=dvc_objects.PurgePlan(proj.pids[0]))
    outcome = dvc.erase(ctx, proj.pids[0], [], plan)
    assert outcome.info["note"] == dvc.API_NOTE.format(names="archive, offsite")


def test_a_step_keeps_every_stores_caveat_not_the_last_one():
    """The dvc step runs the stack's S3 store, then DVC's: with an external stack S3 and an
    offsite remote, each has a caveat, and the step's record kept only the later one, so the
    external S3's never reached the certificate."""
    from visage_ml.rights.erasure import dvc, dvc_remote
    from visage_ml.rights.erasure.orchestrator import merge_infos

    offsite = dvc.API_NOTE.format(names="offsite")
    merged = merge_infos(
        [
            {"stack_remote": True, "note": dvc_remote.EXTERNAL_NOTE},
            {"remotes": ["offsite", "visage"], "note": offsite},
        ]
    )
    assert merged["note"] == f"{dvc_remote.EXTERNAL_NOTE}; {offsite}"
    assert merged["stack_remote"] is True and merged["remotes"] == ["offsite", "visage"]
    assert "note" not in merge_infos([{"remotes": []}, {"dvc": False}])
