"""`visage models fetch`: published weights over a loopback HTTP server, hashes, no half files."""

import contextlib
import dataclasses
import hashlib
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.models import weights
from visage_ml.models.backbones import create_backbone
from visage_ml.models.weights import (
    PIN_FILE,
    PUBLISHED,
    WeightsError,
    WeightsHashError,
    fetch_weights,
    verify_installed,
)

PAYLOAD = os.urandom(3 * weights.CHUNK + 12345)  # several chunks: a stream, not one read
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _state_dict_bytes(**extra) -> bytes:
    """What an InceptionResnetV1 checkpoint holds, in the tensors the fetch checks (+ extra)."""
    state = {k: torch.zeros(shape) for k, shape in weights.SIGNATURE_SHAPES.items()}
    buf = io.BytesIO()
    torch.save({**state, **extra}, buf)
    return buf.getvalue()


CASIA = _state_dict_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload``; ``server.mode`` ``cut`` closes halfway, ``stall`` hangs."""

    def do_GET(self):
        srv = self.server
        srv.requests += 1
        body = srv.payload
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.mode == "full":
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        srv.half_sent.set()
        if srv.mode == "stall":
            srv.release.wait(30)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(payload: bytes = PAYLOAD, mode: str = "full"):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.mode, srv.requests = payload, mode, 0
    srv.half_sent, srv.release = threading.Event(), threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}/weights.pt"
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """$TORCH_HOME in tmp_path and a pinned 'vggface2' whose published hash is the payload's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    pinned = dataclasses.replace(PUBLISHED["vggface2"], sha256=SHA, size=len(PAYLOAD))
    monkeypatch.setitem(PUBLISHED, "vggface2", pinned)
    return tmp_path


def checkpoints(home: Path) -> list[str]:
    folder = home / "torch" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_right_hash_is_installed_where_init_looks(home):
    with serve() as (srv, url):
        result = fetch_weights("vggface2", pin_file=home / PIN_FILE, url=url)
    target = home / "torch" / "checkpoints" / "20180402-114759-vggface2.pt"
    assert result.path == target and target.read_bytes() == PAYLOAD
    assert result.sha256 == SHA and result.pin == "published"
    assert checkpoints(home) == [target.name]  # no temporary file left beside it
    assert not (home / PIN_FILE).exists()  # a published pin is not recorded again
    # A second fetch verifies the installed file and downloads nothing.
    with serve() as (srv, url):
        again = fetch_weights("vggface2", pin_file=home / PIN_FILE, url=url)
        assert srv.requests == 0
    assert again.already_present


def test_wrong_hash_is_refused_and_nothing_is_written(home):
    tampered = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1])
    with serve(tampered) as (_, url), pytest.raises(WeightsHashError) as err:
        fetch_weights("vggface2", pin_file=home / PIN_FILE, url=url)
    assert SHA in str(err.value) and "nothing was written" in str(err.value)
    assert checkpoints(home) == []


def test_a_swapped_installed_file_is_refused_before_training(home):
    with serve() as (_, url):
        fetch_weights("vggface2", pin_file=home / PIN_FILE, url=url)
    target = home / "torch" / "checkpoints" / "20180402-114759-vggface2.pt"
    assert verify_installed("vggface2") == SHA
    target.write_bytes(b"attacker's weights")
    with pytest.raises(WeightsHashError, match="does not match its pin"):
        verify_installed("vggface2")
    with pytest.raises(WeightsHashError):  # and fetch does not paper over it
        fetch_weights("vggface2", pin_file=home / PIN_FILE, url="http://127.0.0.1:9/x")


def test_connection_cut_midway_leaves_nothing(home):
    with serve(mode="cut") as (_, url), pytest.raises(WeightsError, match="stopped after"):
        fetch_weights("vggface2", pin_file=home / PIN_FILE, url=url)
    assert checkpoints(home) == []


def test_an_announced_size_that_differs_from_the_published_one_is_refused(home, monkeypatch):
    pinned = dataclasses.replace(PUBLISHED["vggface2"], size=len(PAYLOAD) + 1)
    monkeypatch.setitem(PUBLISHED, "vggface2", pinned)
    with serve() as (_, url), pytest.raises(WeightsError, match="announces"):
        fetch_weights("vggface2", pin_file=home / PIN_FILE, url=url)
    assert checkpoints(home) == []


def test_killed_mid_download_leaves_no_file_and_the_next_fetch_works(home):
    script = (
        "import sys, dataclasses\n"
        "from visage_ml.models import weights as w\n"
        "w.PUBLISHED['vggface2'] = dataclasses.replace(w.PUBLISHED['vggface2'], "
        f"sha256={SHA!r}, size={len(PAYLOAD)})\n"
        "w.fetch_weights('vggface2', pin_file=None, url=sys.argv[1])\n"
    )
    with serve(mode="stall") as (srv, url):
        child = subprocess.Popen(
            [sys.executable, "-c", script, url], env={**os.environ}, stderr=subprocess.PIPE
        )
        try:
            assert srv.half_sent.wait(60), "the download never started"
            time.sleep(0.5)  # let the child write what it received
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(30)
    assert child.returncode == -signal.SIGKILL
    left = checkpoints(home)
    assert "20180402-114759-vggface2.pt" not in left
    # O_TMPFILE leaves nothing at all; without it, only a .part file the next fetch removes.
    assert all(n.endswith(weights.PART_SUFFIX) for n in left)
    with serve() as (_, url):
        fetch_weights("vggface2", pin_file=None, url=url)
    assert checkpoints(home) == ["20180402-114759-vggface2.pt"]


def test_weights_without_published_hash_are_pinned_on_first_fetch(home):
    pin_file = home / PIN_FILE
    with serve(CASIA) as (_, url):
        first = fetch_weights("casia-webface", pin_file=pin_file, url=url)
    assert first.pin == "recorded now"
    pins = json.loads(pin_file.read_text())
    assert pins["casia-webface"]["sha256"] == hashlib.sha256(CASIA).hexdigest()
    assert pins["casia-webface"]["size"] == len(CASIA)
    # The upstream file changes: the next fetch refuses it against the recorded pin.
    first.path.unlink()
    with serve(CASIA + b"x") as (_, url), pytest.raises(WeightsHashError, match="recorded"):
        fetch_weights("casia-webface", pin_file=pin_file, url=url)
    assert not first.path.exists()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        # Named: torch.save writes a serialization id of its own each time, and an id made of
        # the bytes differs between the suite's processes (pytest-xdist then stops).
        pytest.param(PAYLOAD, "not a PyTorch checkpoint", id="not-a-checkpoint"),
        pytest.param(
            _state_dict_bytes(**{"conv2d_1a.conv.weight": torch.zeros(3)}),
            "no conv2d",
            id="no-conv2d",
        ),
    ],
)
def test_a_file_that_is_not_such_weights_is_neither_installed_nor_pinned(home, payload, why):
    # Weights without a published hash are pinned as first fetched, for good: 1,000 random
    # bytes given with --file were installed and pinned, and every later fetch held to them.
    pin_file, given = home / PIN_FILE, home / "given.pt"
    given.write_bytes(payload)
    with pytest.raises(WeightsError, match=f"not InceptionResnetV1 weights \\({why}"):
        fetch_weights("casia-webface", pin_file=pin_file, source_file=given)
    with serve(payload) as (_, url), pytest.raises(WeightsError, match="nothing was installed"):
        fetch_weights("casia-webface", pin_file=pin_file, url=url)
    assert not pin_file.exists() and checkpoints(home) == []


def test_unpinned_weights_are_only_fetched_over_https(home):
    with pytest.raises(WeightsError, match="https"):
        fetch_weights(
            "casia-webface", pin_file=home / PIN_FILE, url="http://mirror.example.invalid/w.pt"
        )


def test_offline_says_which_file_to_place_where(home):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WeightsError) as err:
        fetch_weights("vggface2", pin_file=None, url=f"http://127.0.0.1:{port}/w.pt", timeout=5)
    msg = str(err.value)
    folder = home / "torch" / "checkpoints"
    assert "20180402-114759-vggface2.pt" in msg and str(folder) in msg
    assert "--file" in msg and SHA in msg
    assert checkpoints(home) == []


def test_offline_copy_is_checked_like_a_download(home):
    good, bad = home / "good.pt", home / "bad.pt"
    good.write_bytes(PAYLOAD)
    bad.write_bytes(PAYLOAD[: len(PAYLOAD) // 2])
    with pytest.raises(WeightsHashError):
        fetch_weights("vggface2", pin_file=None, source_file=bad)
    assert checkpoints(home) == []
    result = fetch_weights("vggface2", pin_file=None, source_file=good)
    assert result.path.read_bytes() == PAYLOAD


def test_cli_fetch_and_status(home, monkeypatch):
    monkeypatch.setenv("VISAGE_PROJECT", str(home))
    runner = CliRunner()
    with serve(PAYLOAD[:100]) as (_, url):
        refused = runner.invoke(app, ["models", "fetch", "vggface2", "--url", url])
    assert refused.exit_code == 2 and "refused" in refused.output
    with serve() as (_, url):
        ok = runner.invoke(app, ["models", "fetch", "vggface2", "--url", url])
    assert ok.exit_code == 0, ok.output
    assert SHA in ok.output and "init=vggface2" in ok.output
    status = runner.invoke(app, ["models", "status", "--json"])
    rows = {r["name"]: r for r in json.loads(status.output)}
    assert rows["vggface2"]["present"] and not rows["casia-webface"]["present"]


def test_building_a_model_never_downloads(home, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("a run-time code path tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(FileNotFoundError, match="visage models fetch vggface2"):
        create_backbone("inception_resnet_v1", embedding_dim=512, input_size=160, init="vggface2")


class _Response(io.BytesIO):
    """What urlopen returns, after a redirect to ``url``."""

    def __init__(self, body: bytes, url: str):
        super().__init__(body)
        self.url, self.headers = url, {"Content-Length": str(len(body))}

    def geturl(self):
        return self.url


def test_a_redirect_to_plain_http_is_refused_for_unpinned_weights(home):
    def opener(request, timeout):
        return _Response(PAYLOAD, "http://mirror.example.invalid/w.pt")

    with pytest.raises(WeightsError, match="https"):
        fetch_weights(
            "casia-webface", pin_file=home / PIN_FILE, url="https://a.example/w", opener=opener
        )
    assert checkpoints(home) == [] and not (home / PIN_FILE).exists()


def test_more_bytes_than_any_published_file_are_refused(home, monkeypatch):
    monkeypatch.setattr(weights, "MAX_BYTES", weights.CHUNK)
    monkeypatch.setitem(
        PUBLISHED, "vggface2", dataclasses.replace(PUBLISHED["vggface2"], size=None)
    )
    with serve() as (_, url), pytest.raises(WeightsError, match="more than"):
        fetch_weights("vggface2", pin_file=None, url=url)
    assert checkpoints(home) == []
