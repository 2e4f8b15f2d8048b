"""Security: private files, no secret in any log, constant-time key checks, a limit on failed
authentication, no code-running deserialisation, model files checked against the hashes
recorded at export, and TLS for ``visage serve``.
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import ipaddress
import logging
import os
import shutil
import ssl
import stat
import threading
import time
from pathlib import Path

import pytest
from harness import REPO, make_site
from loadgen import free_port
from typer.testing import CliRunner

from visage_ml.app.http import auth as auth_mod
from visage_ml.app.http.app import create_app

PACKAGE = REPO / "visage_ml"
SECRET_STORES = ("secrets", "gallery/keys", "gallery/templates", "privacy/vault")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_secrets_and_keys_are_private_even_under_a_permissive_umask(project):
    old = os.umask(0o002)  # user-private-group systems: new files group-writable by default
    try:
        site = make_site(project, enrol=4)
        site.world.core.vault.put(site.pids[0], {"external_ref": "X-1", "source": "test"})
        client = site.client()
        client.get("/v1/ledger", headers=site.headers("auditor"))
    finally:
        os.umask(old)
    root = site.root
    checked = 0
    for store in SECRET_STORES:
        base = root / store
        assert base.is_dir(), store
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                assert mode(p) & 0o077 == 0, (p, oct(mode(p)))
            elif p.stat().st_size or not p.name.endswith("lock"):
                assert mode(p) & 0o077 == 0, (p, oct(mode(p)))
                checked += 1
    assert checked >= 12
    for name in ("audit.jsonl",):
        assert mode(root / "privacy" / name) & 0o077 == 0
    # The public key is meant to be read by anyone; the private one never.
    assert mode(root / "secrets" / "ledger.key") == 0o600


def test_no_secret_reaches_a_log_the_audit_log_or_an_error(project, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    site = make_site(project, enrol=4)
    client = site.client()
    pid = site.pids[0]
    secrets_ = list(site.keys.values())
    for key in site.keys.values():
        client.get("/v1/ledger", headers={"X-API-Key": key})
        client.get("/v1/ledger", headers={"X-API-Key": key[:-1] + "A"})  # wrong secret
        client.post(f"/v1/subjects/{pid}/restrict", headers={"X-API-Key": key})
    master = (site.root / "secrets" / "master.key").read_text().strip()
    ledger_key = (site.root / "secrets" / "ledger.key").read_text()
    key_body = "".join(ledger_key.splitlines()[1:-1])
    secrets_ += [master, key_body]
    # A malformed master key in the environment is refused without being echoed.
    monkeypatch.setenv("VISAGE_MASTER_KEY", "not-a-key-" + "s3cr3tmarker")
    from visage_ml.privacy.keys import MasterKeyError, load_master_key

    with pytest.raises(MasterKeyError) as err:
        load_master_key(site.root / "secrets" / "master.key", create=False)
    assert "s3cr3tmarker" not in str(err.value)
    monkeypatch.delenv("VISAGE_MASTER_KEY")
    texts = {
        "log": caplog.text,
        "audit": (site.root / "privacy" / "audit.jsonl").read_text(),
        "ledger": site.paths.ledger.read_text(),
        "api_keys.json": (site.root / "secrets" / "api_keys.json").read_text(),
    }
    for where, text in texts.items():
        for secret in secrets_:
            assert secret not in text, where
    # The key ids are logged (they name keys without revealing them); the keys never.
    assert all(k.split("_")[1] in texts["audit"] for k in site.keys.values())


def test_api_keys_are_compared_in_constant_time(project, monkeypatch):
    site = make_site(project)
    store = auth_mod.KeyStore(site.paths.api_keys)
    calls: list[tuple[bytes, bytes]] = []
    real = auth_mod.hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", counting)
    good = site.keys["dpo"]
    presented = [
        good,  # right
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # known id, wrong secret
        "vk_000000000000_" + good.split("_", 2)[2],  # unknown id
        "garbage",  # malformed
        "x" * 10_000,  # long
    ]
    for key in presented:
        calls.clear()
        store.authenticate(key)
        # One comparison of two 64-character digests, whatever was presented.
        assert len(calls) == 1 and len(calls[0][0]) == len(calls[0][1]) == 64, key[:20]
    source = Path(auth_mod.__file__).read_text()
    assert "sha256 ==" not in source and "== record.sha256" not in source


def test_failed_authentication_is_rate_limited(project):
    site = make_site(project, overrides={"serving.auth.max_failures": 5})

    class Clock:
        t = 100.0

        def __call__(self) -> float:
            return self.t

    clock = Clock()
    app = create_app(
        site.paths, params=site.params, engine=site.engine, gallery=site.gallery(), clock=clock
    )
    from fastapi.testclient import TestClient

    client = TestClient(app, raise_server_exceptions=False)
    good = {"X-API-Key": site.keys["auditor"]}
    for _ in range(5):
        assert client.get("/v1/ledger", headers={"X-API-Key": "vk_bad"}).status_code == 401
    r = client.get("/v1/ledger", headers=good)  # even the right key waits
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "too_many_failed_attempts"
    clock.t += site.params.serving.auth.window_seconds + 1
    assert client.get("/v1/ledger", headers=good).status_code == 200
    # Per client: another address is not blocked by this one's failures.
    limiter = auth_mod.FailureLimiter(max_failures=2, window_seconds=60, clock=clock)
    limiter.failure("10.0.0.1")
    limiter.failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") > 0 and limiter.retry_after("10.0.0.2") == 0
    # Memory stays bounded under a flood of distinct clients.
    small = auth_mod.FailureLimiter(max_failures=2, window_seconds=60, clock=clock, max_clients=50)
    for i in range(1000):
        small.failure(f"c{i}")
    assert len(small._failures) <= 50


# ---------------------------------------------------------------------------------------------
# Deserialisation: nothing that can run code
# ---------------------------------------------------------------------------------------------


def nodes_in_package():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            yield path.relative_to(REPO), node


def dotted(func: ast.AST) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def test_every_torch_load_is_weights_only_and_no_pickle_is_read():
    loads, references, problems = 0, 0, []
    for path, node in nodes_in_package():
        if isinstance(node, ast.Attribute) and dotted(node) == "torch.load":
            references += 1
        if (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("torch")
            and any(a.name == "load" for a in node.names)
        ):
            problems.append(f"{path}:{node.lineno}: torch.load imported under another name")
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        where = f"{path}:{node.lineno}"
        if name == "torch.load":
            loads += 1
            if keyword(node, "weights_only") is not True:
                problems.append(f"{where}: torch.load without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "marshal.loads"):
            problems.append(f"{where}: {name}")
        elif name in ("np.load", "numpy.load") and keyword(node, "allow_pickle") is True:
            problems.append(f"{where}: np.load(allow_pickle=True)")
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            problems.append(f"{where}: {name} (use yaml.safe_load)")
        elif name in ("eval", "exec"):
            problems.append(f"{where}: {name}")
        elif name.startswith("subprocess.") and keyword(node, "shell") is True:
            problems.append(f"{where}: subprocess with shell=True")
    assert problems == []
    assert loads >= 3  # the checkpoint loader and the two published-weights loaders
    assert references == loads  # no torch.load kept in a variable and called elsewhere


# ---------------------------------------------------------------------------------------------
# Model integrity: the ONNX files the export recorded, nothing else
# ---------------------------------------------------------------------------------------------


@pytest.mark.pipeline
def test_served_and_evaluated_models_must_match_the_export_hashes(tiny_pipeline, tmp_path):
    import json

    from visage_ml.app.stages.evaluate import load_models
    from visage_ml.config import ProjectPaths, load_params
    from visage_ml.inference import ModelHashError
    from visage_ml.serving.engine import Engine

    root = tmp_path / "proj"
    root.mkdir()
    for rel in ("params.yaml", "models/embedder.onnx", "models/demographics.onnx"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_pipeline.root / rel, root / rel)
    (root / "reports").mkdir()
    shutil.copy(tiny_pipeline.reports / "export.json", root / "reports" / "export.json")
    paths, params = ProjectPaths(root), load_params(root / "params.yaml")
    recorded = json.loads((paths.reports / "export.json").read_text())
    for kind in ("embedder", "demographics"):
        digest = hashlib.sha256((paths.models / f"{kind}.onnx").read_bytes()).hexdigest()
        assert recorded[kind]["onnx_sha256"] == digest
    Engine.from_project(paths, params, mode="analytics").load("demographics")
    emb, dem = load_models(paths)
    assert emb.kind == "embedder" and dem.kind == "demographics"

    # One changed byte (here: in the ONNX producer string) and the file is refused.
    target = paths.models / "embedder.onnx"
    data = bytearray(target.read_bytes())
    i = data.find(b"pytorch")
    data[i] ^= 0x20
    target.write_bytes(bytes(data))
    with pytest.raises(ModelHashError, match="dvc repro export"):
        Engine.from_project(paths, params).load("embedder")
    with pytest.raises(ModelHashError):
        load_models(paths)
    from visage_ml.app.stages import evaluate

    os.environ["VISAGE_PROJECT"] = str(root)
    try:
        assert evaluate.main([]) == 2
    finally:
        os.environ.pop("VISAGE_PROJECT")


# ---------------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------------


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp / "server.key", tmp / "server.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_serve_over_tls_with_a_private_key_only(project, tmp_path):
    import httpx
    import uvicorn

    from visage_ml.app.cli import app as cli
    from visage_ml.app.cli.common import UserError
    from visage_ml.app.cli.serve_cmd import tls_options

    key, cert = self_signed(tmp_path)
    runner = CliRunner()
    os.chmod(key, 0o644)
    r = runner.invoke(cli, ["serve", "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)])
    assert r.exit_code == 2 and "chmod 600" in r.output
    r = runner.invoke(cli, ["serve", "--ssl-keyfile", str(key)])
    assert r.exit_code == 2 and "--ssl-certfile" in r.output
    with pytest.raises(UserError, match="does not exist"):
        tls_options(tmp_path / "nope.key", cert)
    os.chmod(key, 0o600)
    options = tls_options(key, cert)
    trust = ssl.create_default_context(cafile=str(cert))

    site = make_site(project, enrol=2)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            site.build_app(), host="127.0.0.1", port=port, log_level="warning", **options
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        r = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        r = httpx.get(
            f"https://127.0.0.1:{port}/v1/ledger",
            headers=site.headers("auditor"),
            verify=trust,
            timeout=10,
        )
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP gets no answer from a TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_security_doc_covers_tls_keys_and_the_audit_log():
    doc = (REPO / "docs" / "security.md").read_text()
    for needle in (
        "--ssl-keyfile",
        "--ssl-certfile",
        "reverse proxy",
        "chmod 600",
        "VISAGE_MASTER_KEY",
        "audit.jsonl",
        "X-API-Key",
        "onnx_sha256",
    ):
        assert needle in doc, needle
