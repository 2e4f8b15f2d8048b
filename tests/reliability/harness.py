"""Shared pieces of the reliability tests: a served fake project and store fingerprints.

The project is the serving tests' world (``tests/unit/serving_fakes.py``): tiny real ONNX models,
tile-grid "faces", registered subjects with consent, an encrypted gallery, one API key per role.
Not a test module.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNIT = Path(__file__).resolve().parents[1] / "unit"
# tests/ too: run as a script (the load generator's server), project_helpers is not on the path.
for folder in (UNIT, UNIT.parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from project_helpers import copy_repo_params  # noqa: E402 - after the path set-up above
from serving_fakes import (  # noqa: E402 - after the path set-up above
    DIM,
    THRESHOLD,
    World,
    fake_engine,
    make_world,
    png_b64,
)

from visage_ml.app.http.auth import ROLES, KeyStore  # noqa: E402
from visage_ml.config import Params, load_params  # noqa: E402
from visage_ml.serving.gallery import Gallery  # noqa: E402

VERSION = "emb-test-1"
REPO = Path(__file__).resolve().parents[2]

# Stores whose bytes an input that is refused must not change.
STORES: tuple[str, ...] = ("data", "privacy", "gallery", "models", "secrets")


def _ignored(rel: str) -> bool:
    """Logs, reports and lock files: written by any request, they hold no stored data."""
    name = rel.rsplit("/", 1)[-1]
    return (
        rel == "privacy/audit.jsonl"
        or rel.startswith("privacy/imports/")
        or name.endswith(".lock")
        or name == ".lock"
    )


def store_hashes(root: Path, stores: tuple[str, ...] = STORES) -> dict[str, str]:
    """``{relative path: sha256 | '<dir>' | '-> target'}`` of every entry of the stores."""
    out: dict[str, str] = {}
    for store in stores:
        base = Path(root) / store
        if not base.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                rel = p.relative_to(root).as_posix()
                if _ignored(rel):
                    continue
                if p.is_symlink():
                    out[rel] = "-> " + os.readlink(p)
                elif p.is_dir():
                    out[rel] = "<dir>"
                else:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths added, removed or changed between two :func:`store_hashes`."""
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k))


@dataclass
class Site:
    """A project with models, subjects, a gallery and API keys, served by an ASGI app."""

    root: Path
    world: World
    params: Params
    engine: Any
    keys: dict[str, str] = field(default_factory=dict)
    app: Any = None

    @property
    def paths(self):
        return self.world.paths

    @property
    def pids(self) -> list[str]:
        return list(self.world.people)

    def gallery(self, core: Any = None) -> Gallery:
        return Gallery.open(
            self.paths,
            model_version=VERSION,
            embedding_dim=DIM,
            threshold=THRESHOLD,
            core=core or self.world.core,
            embed=self.engine.embed,
        )

    def build_app(self) -> Any:
        # Deferred: FastAPI is heavy and the crash tests use this module without the app.
        from visage_ml.app.http.app import create_app

        self.app = create_app(
            self.paths,
            params=self.params,
            engine=self.engine,
            gallery=self.gallery(),
            core=self.world.core,
        )
        return self.app

    def client(self) -> Any:
        from fastapi.testclient import TestClient

        return TestClient(self.app or self.build_app(), raise_server_exceptions=False)

    def photo_b64(self, pid: str, n: int = 1) -> list[str]:
        return [png_b64(t) for t in self.world.photo(pid, n)]

    def headers(self, role: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[role]}


def make_site(
    root: Path,
    *,
    n_subjects: int = 12,
    enrol: int = 0,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> Site:
    """A project at ``root`` (holding params.yaml) with ``enrol`` subjects in the gallery."""
    if not (root / "params.yaml").exists():
        copy_repo_params(root / "params.yaml")
    world = make_world(root, n_subjects=n_subjects, seed=seed)
    params = load_params(root / "params.yaml", overrides=overrides or {})
    engine = fake_engine(root, max_faces=params.serving.max_faces)
    site = Site(root=root, world=world, params=params, engine=engine)
    site.keys = {role: KeyStore(world.paths.api_keys).create(role)[1] for role in ROLES}
    if enrol:
        g = site.gallery()
        g.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in site.pids[:enrol]})
    return site
