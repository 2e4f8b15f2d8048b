"""Security: private files, no secret in any log, constant-time key checks, a limit on failed
authentication, no code-running deserialisation, model files checked against the hashes
recorded at export, and TLS for ``visage serve``.
"""

from __future__ import annotations

import ast
import base64
import datetime
import hashlib
import io
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import stat
import time
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from harness import REPO, make_site
from loadgen import run_server
from PIL import Image, ImageOps
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
        wrong = key[:-1] + ("B" if key.endswith("A") else "A")  # never the real secret
        client.get("/v1/ledger", headers={"X-API-Key": wrong})
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

    from visage_ml.config import ProjectPaths, load_params
    from visage_ml.evaluation.inputs import load_models
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
    serving = {"host": "127.0.0.1", "log_level": "warning", **options}
    with run_server(site.build_app(), serving) as port:
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


# ---------------------------------------------------------------------------------------------
# The HTTP face: refused before read, bounded, no EXIF in logs, TLS off loopback
# ---------------------------------------------------------------------------------------------


def live_server(app):
    """``app`` under uvicorn on a free loopback port, in a thread; yields the port."""
    return run_server(app, {"host": "127.0.0.1", "log_level": "warning", "log_config": None})


def exchange(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read until the server closes the connection (a timeout fails)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_an_attacker_without_a_key_cannot_make_the_server_read_a_body(project):
    site = make_site(project, enrol=2, overrides={"serving.body_timeout_s": 0.5})
    with live_server(site.build_app()) as port:
        # Declares 10 MB and sends none of it: answered at once, connection closed.
        for key in (b"", b"X-API-Key: vk_nope\r\n"):
            head = (
                b"POST /v1/identify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10000000\r\n" + key + b"\r\n"
            )
            t0 = time.monotonic()
            reply = exchange(port, head)
            assert reply.startswith(b"HTTP/1.1 401 "), reply[:200]
            assert b"unauthenticated" in reply and time.monotonic() - t0 < 5
        # With a valid key, a body that trickles in is cut off after serving.body_timeout_s.
        key = site.keys["operator"].encode()
        head = (
            b"POST /v1/identify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\nX-API-Key: " + key + b"\r\n\r\n"
        )
        t0 = time.monotonic()
        reply = exchange(port, head, b'{"image": "')
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert 0.4 < time.monotonic() - t0 < 8
        # The server still answers well-behaved clients.
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/identify",
            json={"image": site.photo_b64(site.pids[0])[0]},
            headers=site.headers("operator"),
            timeout=30,
        )
        assert r.status_code == 200
    lines = [json.loads(x) for x in (site.root / "privacy" / "audit.jsonl").read_text().split()]
    assert [x["status"] for x in lines[-4:]] == [401, 401, 408, 200]


ARTIST = "Ada Exifname-Lovelace"


def exif_images(name: str) -> dict[str, str]:
    """A face tile as base64 PNG, JPEG and WebP files whose EXIF Artist is ``name``."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from serving_fakes import face_tile, make_person

    rng = np.random.default_rng(3)
    tile = face_tile(make_person("p" + "c" * 16, rng, "g1", "female"), rng)
    exif = Image.Exif()
    exif[0x013B] = name  # Artist
    exif[0x0112] = 1  # Orientation: read by the server (exif_transpose)
    out = {}
    for fmt in ("PNG", "JPEG", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(tile).save(buf, format=fmt, exif=exif.tobytes(), quality=95)
        out[fmt] = base64.b64encode(buf.getvalue()).decode()
    return out


def test_exif_of_uploaded_images_never_reaches_a_log(project, caplog):
    images = exif_images(ARTIST)
    pil = logging.getLogger("PIL")
    before = pil.level
    caplog.set_level(logging.DEBUG)
    try:
        # The attack on an unguarded process: Pillow logs the tag's value at DEBUG.
        pil.setLevel(logging.DEBUG)
        ImageOps.exif_transpose(Image.open(io.BytesIO(base64.b64decode(images["WEBP"]))))
        assert ARTIST in caplog.text
        caplog.clear()
        site = make_site(project, enrol=2)
        client = site.client()  # building the app puts third-party loggers at their floors
        op = site.headers("operator")
        for fmt, b64 in images.items():
            assert client.post("/v1/identify", json={"image": b64}, headers=op).status_code == 200
            r = client.post("/v1/analytics", json={"image": b64}, headers=op)
            assert r.status_code == 200, fmt
        r = client.post(
            "/v1/enroll", json={"pid": site.pids[5], "images": list(images.values())}, headers=op
        )
        assert r.status_code == 200, r.text
        assert caplog.records and ARTIST not in caplog.text
    finally:
        pil.setLevel(before)


def test_mlflow_s_database_layer_never_logs_below_warning():
    """An erasure edits MLflow's store: SQLAlchemy's INFO (mapper set-up, and each SQL
    statement with its parameters: run names, tags) never reaches a command's log."""
    import logging

    from visage_ml.app import logsafe

    logsafe.quiet_third_party()
    for name in ("sqlalchemy.engine.Engine", "sqlalchemy.orm.mapper.Mapper", "alembic.runtime"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name


def test_serve_verbose_logs_visage_debug_but_never_a_library_s(project):
    """The CLI's logging set-up in a fresh process, as `visage serve --verbose` makes it."""
    import subprocess
    import sys

    images = exif_images(ARTIST)
    code = f"""
import logging, sys
sys.path.insert(0, {str(REPO / "tests" / "reliability")!r})
from pathlib import Path
from harness import make_site
from visage_ml.app.cli.common import setup_logging

setup_logging(verbose=True)
logging.getLogger("visage_ml.probe").debug("visage debug is on")
logging.getLogger("PIL.TiffImagePlugin").setLevel(logging.DEBUG)  # even if someone lowers it
site = make_site(Path({str(project)!r}), enrol=2)
client = site.client()
for b64 in {list(images.values())!r}:
    r = client.post("/v1/identify", json={{"image": b64}}, headers=site.headers("operator"))
    assert r.status_code == 200, r.text
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DEBUG visage_ml.probe: visage debug is on" in out.stderr
    assert ARTIST not in out.stderr and ARTIST not in out.stdout
    assert "DEBUG PIL" not in out.stderr


ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the address whose plain HTTP must be refused


def test_plain_http_off_loopback_is_refused_unless_asked_for(project, monkeypatch, caplog):
    from visage_ml.app.cli import app as cli
    from visage_ml.app.cli import serve_cmd
    from visage_ml.app.http import app as app_mod

    built, runs = [], []
    monkeypatch.setattr(app_mod, "create_app", lambda *a, **kw: built.append(kw) or "APP")
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: runs.append(kw))
    runner = CliRunner()
    for host in (ALL_INTERFACES, "192.168.7.7", "::", "visage.example.org"):
        r = runner.invoke(cli, ["serve", "--host", host])
        assert r.exit_code == 2, host
        for needle in ("--ssl-keyfile", "--ssl-certfile", "--insecure-http", "refusing"):
            assert needle in r.output, (host, needle)
    assert built == [] and runs == []  # refused before any model was loaded
    caplog.set_level(logging.WARNING)
    r = runner.invoke(cli, ["serve", "--host", ALL_INTERFACES, "--insecure-http", "--verbose"])
    assert r.exit_code == 0, r.output
    assert "unencrypted" in caplog.text and runs[-1]["host"] == ALL_INTERFACES
    # uvicorn logs at INFO at most, through our handlers, whatever --verbose says.
    assert runs[-1]["log_level"] == "info" and runs[-1]["log_config"] is None
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert runner.invoke(cli, ["serve", "--host", host]).exit_code == 0, host
    assert len(runs) == 5
    assert not serve_cmd.is_loopback(ALL_INTERFACES) and serve_cmd.is_loopback("[::1]")


def test_x_forwarded_for_does_not_escape_the_failed_authentication_limit(project, monkeypatch):
    # The attack: behind the documented proxy on loopback (or from the host itself), a key
    # guesser sends a new X-Forwarded-For with each guess. uvicorn trusts that header from
    # 127.0.0.1 by default, so each guess would count against another "client", never 429.
    import uvicorn

    from visage_ml.app.cli import app as cli
    from visage_ml.app.http import app as app_mod

    site = make_site(project, overrides={"serving.auth.max_failures": 3})
    built = site.build_app()
    runs = []
    monkeypatch.setattr(app_mod, "create_app", lambda *a, **kw: built)
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: runs.append((app, kw)))
    assert CliRunner().invoke(cli, ["serve"]).exit_code == 0
    app, kw = runs[-1]
    config = uvicorn.Config(app, **kw)
    config.load()  # the ASGI stack `visage serve` runs, with uvicorn's own middleware

    def get(key: str, n: int) -> int:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        headers = [(b"x-api-key", key.encode()), (b"x-forwarded-for", f"203.0.113.{n}".encode())]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v1/ledger",
            "raw_path": b"/v1/ledger",
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 40000 + n),
            "server": ("127.0.0.1", 8000),
        }
        anyio.run(config.loaded_app, scope, receive, send)
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    assert [get("vk_guess", n) for n in range(3)] == [401, 401, 401]
    assert get("vk_guess", 99) == 429
    assert get(site.keys["auditor"], 100) == 429  # the limit holds for the real client


# ---------------------------------------------------------------------------------------------
# Served models and threshold: exactly the files released in the ledger
# ---------------------------------------------------------------------------------------------


def _served_project(root: Path):
    """A project with the fake world's ONNX models and params fitted to them."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from serving_fakes import DIM, MODEL_SIZE, make_world

    from visage_ml.config import load_params, write_params

    world = make_world(root, n_subjects=4)
    params = load_params(
        world.paths.params,
        overrides={
            "train_embedder.input_size": MODEL_SIZE,
            "train_embedder.embedding_dim": DIM,
            "train_demographics.input_size": MODEL_SIZE,
        },
    )
    write_params(params, world.paths.params)
    return world, params


def test_served_models_and_threshold_must_be_the_released_files(project):
    from serving_fakes import fake_engine

    from visage_ml.app.cli import app as cli
    from visage_ml.inference import ModelHashError
    from visage_ml.io import atomic_write_json
    from visage_ml.serving.engine import Engine
    from visage_ml.serving.release import (
        SCORE_MODEL_JSON,
        THRESHOLD_JSON,
        ReleaseError,
        latest_releases,
        record_release,
    )

    world, params = _served_project(project)
    paths, core = world.paths, world.core
    onnx = ["models/embedder.onnx", "models/demographics.onnx"]
    # Nothing released (no export.json either): refused before a model is loaded.
    with pytest.raises(ReleaseError, match=r"models/demographics\.onnx .*`dvc repro export`"):
        create_app(paths, params=params, core=core, mode="analytics")
    r = CliRunner().invoke(cli, ["serve"])
    assert r.exit_code == 2 and "models/embedder.onnx has no release" in r.output
    assert "dvc repro export" in r.output

    record_release(core.ledger, paths.root, onnx, stage="export")
    released = {k: latest_releases(core.ledger)[f"models/{k}.onnx"].sha256 for k in ("embedder",)}
    assert Engine.from_project(paths, params, expected_sha256=released).load("embedder")

    # A replaced model is refused, by name; so are bytes that change while it is loaded.
    target = paths.models / "embedder.onnx"
    original = target.read_bytes()
    data = bytearray(original)
    data[data.find(b"visage")] ^= 0x20
    target.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match=r"models/embedder\.onnx .*changed or replaced"):
        create_app(paths, params=params, core=core)
    with pytest.raises(ModelHashError):
        Engine.from_project(paths, params, expected_sha256=released).load("embedder")
    # A newer release makes the older file stale: putting it back is refused too.
    newer = record_release(core.ledger, paths.root, onnx, stage="export")
    target.write_bytes(original)
    with pytest.raises(ReleaseError, match=f"ledger entry {newer.seq}"):
        create_app(paths, params=params, core=core)
    record_release(core.ledger, paths.root, onnx, stage="export")

    # The threshold: unreleased, then released, then edited to let everyone match.
    paths.reports.mkdir(exist_ok=True)
    threshold = paths.reports / "threshold.json"
    threshold.write_text(json.dumps({"threshold": 0.7, "target_fmr": 0.001}))
    engine = fake_engine(project)
    with pytest.raises(ReleaseError, match=r"reports/threshold\.json .*`dvc repro evaluate`"):
        create_app(paths, params=params, engine=engine, core=core)
    record_release(core.ledger, paths.root, [THRESHOLD_JSON], stage="evaluate")
    # The 1:N score model evaluation stores beside it: missing, then unreleased, then released.
    with pytest.raises(FileNotFoundError, match=r"score_model\.json is missing"):
        create_app(paths, params=params, engine=engine, core=core)
    atomic_write_json(paths.reports / "score_model.json", _score_model_doc(engine))
    with pytest.raises(ReleaseError, match=r"reports/score_model\.json .*`dvc repro evaluate`"):
        create_app(paths, params=params, engine=engine, core=core)
    record_release(core.ledger, paths.root, [SCORE_MODEL_JSON], stage="evaluate")
    app = create_app(paths, params=params, engine=engine, core=core)
    assert app.state.visage.gallery.threshold == 0.7
    threshold.write_text(json.dumps({"threshold": -1.0, "target_fmr": 0.001}))
    with pytest.raises(ReleaseError, match=r"reports/threshold\.json .*changed or replaced"):
        create_app(paths, params=params, engine=engine, core=core)
    (paths.reports / "export.json").unlink(missing_ok=True)  # it never was the authority


def _score_model_doc(engine) -> dict:
    """A score model of normal impostor scores for ``engine``'s embedder, as evaluation writes."""
    from visage_ml.evaluation.score_model import Comparisons, build_score_model

    engine.load()
    rng = np.random.default_rng(0)
    n = 20_000
    return build_score_model(
        Comparisons(
            genuine=rng.normal(0.93, 0.03, 500),
            impostor=rng.normal(0.0, 0.08, n),
            genuine_probe=np.zeros(500, dtype=np.int64),
            impostor_probe=np.arange(n),
            impostor_ref=np.full(n, -1),
            n_identities=n,
            template_images=3,
        ),
        bootstrap=20,
        model_version=engine.embedder.model_version,
    )


def test_a_forged_release_line_in_the_ledger_is_refused(project):
    from serving_fakes import fake_engine

    from visage_ml.io import canonical_json, sha256_file
    from visage_ml.privacy.ledger import entry_hash, utc_now
    from visage_ml.serving.release import THRESHOLD_JSON, ReleaseError, record_release

    world, params = _served_project(project)
    paths = world.paths
    paths.reports.mkdir(exist_ok=True)
    threshold = paths.reports / "threshold.json"
    threshold.write_text(json.dumps({"threshold": 0.7, "target_fmr": 0.001}))
    record_release(world.core.ledger, paths.root, [THRESHOLD_JSON], stage="evaluate")
    # An operator lowers the threshold and appends a "release" of it without the ledger key.
    threshold.write_text(json.dumps({"threshold": -1.0, "target_fmr": 0.001}))
    last = paths.ledger.read_bytes().splitlines()[-1]
    seq, prev, now = json.loads(last)["seq"] + 1, hashlib.sha256(last).hexdigest(), utc_now()
    payload = {"stage": "evaluate", "files": {THRESHOLD_JSON: sha256_file(threshold)}}
    forged = {
        "seq": seq,
        "time": now,
        "type": "model.released",
        "pid": None,
        "payload": payload,
        "prev_hash": prev,
        "hash": entry_hash(seq, now, "model.released", None, payload, prev),
        "sig": base64.b64encode(os.urandom(64)).decode(),
    }
    with open(paths.ledger, "ab") as fh:
        fh.write(canonical_json(forged) + b"\n")
    with pytest.raises(ReleaseError, match=f"ledger entry {seq} .*does not verify"):
        create_app(paths, params=params, engine=fake_engine(project), core=world.core)


# ---------------------------------------------------------------------------------------------
# Secrets stay out of child processes
# ---------------------------------------------------------------------------------------------


SPAWN_CALLS = ("subprocess.run", "subprocess.Popen", "subprocess.call")
SPAWN_CALLS += ("subprocess.check_call", "subprocess.check_output")
ENV_BUILDERS = ("child_env", "dvc_env", "_venv_env")


def test_secrets_never_reach_a_child_process(project, tmp_path, monkeypatch):
    from visage_ml import dvcops
    from visage_ml.app.cli import demo_cmd
    from visage_ml.rights import lineage

    master = base64.b64encode(os.urandom(32)).decode()
    secrets_ = {
        "VISAGE_MASTER_KEY": master,
        "VISAGE_WITNESS_TOKEN": "tok-" + os.urandom(8).hex(),
        "VISAGE_EXPORT_PASSPHRASE": "pass-" + os.urandom(8).hex(),
    }
    for name, value in secrets_.items():
        monkeypatch.setenv(name, value)
    # Stand-ins for the programs visage starts: each appends the environment it was given.
    dump = tmp_path / "env.txt"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for prog in ("git", "dvc"):
        script = bindir / prog
        script.write_text(f"#!/bin/sh\necho '--- {prog}' >> {dump}\nenv >> {dump}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(dvcops, "dvc_executable", lambda: [str(bindir / "dvc")])
    (project / ".dvc").mkdir()
    (project / ".git").mkdir()
    dvcops.run_dvc(project, "status", check=False)
    dvcops.git_revision(project)
    lineage.lock_documents(project)
    text = dump.read_text()
    assert text.count("--- dvc") == 1 and text.count("--- git") == 2  # every child ran
    assert "DVC_NO_ANALYTICS=1" in text  # the environment is passed, not emptied
    for name, value in secrets_.items():
        assert value not in text and f"{name}=" not in text, name
    # `visage demo` runs `dvc repro` of visage's own stages: the master key only.
    env = demo_cmd._venv_env()
    assert env["VISAGE_MASTER_KEY"] == master
    assert "VISAGE_WITNESS_TOKEN" not in env and "VISAGE_EXPORT_PASSPHRASE" not in env


def test_every_spawn_in_the_package_gets_an_environment_without_secrets():
    spawns, problems = 0, []
    for path, node in nodes_in_package():
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        where = f"{path}:{node.lineno}"
        if name in ("os.system", "os.popen") or name.startswith(("os.exec", "os.spawn")):
            problems.append(f"{where}: {name} (use subprocess with env=child_env())")
        if name in SPAWN_CALLS:
            spawns += 1
            env = keyword(node, "env")
            if not (isinstance(env, ast.Call) and dotted(env.func) in ENV_BUILDERS):
                problems.append(f"{where}: {name} without env=child_env(...)")
    assert problems == []
    assert spawns >= 5  # dvc, git (twice in lineage, once in dvcops), dvc repro in the demo


def test_security_doc_covers_the_http_defences():
    doc = (REPO / "docs" / "security.md").read_text()
    for needle in (
        "before the body is read",
        "serving.max_concurrent",
        "serving.body_timeout_s",
        "serving.request_read_timeout_s",
        "limit_conn",
        "serving.max_detect_side",
        "serving.openapi",
        "EXIF",
        "--insecure-http",
        "model.released",
        "visage apikey rotate",
        "--expires-in",
        "serving.auth.key_ttl_days",
        "child_env",
        "metrics",
    ):
        assert needle in doc, needle
