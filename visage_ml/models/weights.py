"""Published InceptionResnetV1 weights: fetched on request, checked, placed where ``init`` looks.

facenet-pytorch publishes two weight sets for its InceptionResnetV1 (its
``models/inception_resnet_v1.py`` downloads them from the v2.2.9 release assets when a model is
built with ``pretrained=...``). visage-ml never downloads at run time: ``visage models fetch
NAME`` is the one code path that does, and only when asked. It

1. streams the file into an anonymous temporary file in the target folder (``O_TMPFILE``; a
   named ``.<file>.*.part`` file where the file system lacks it), hashing as it goes;
2. compares the SHA-256 with the pin: the value published for the file where a public source
   gives one (:data:`PUBLISHED`), else the value recorded in the project's pin file on the first
   fetch (trust on first use: shown, and checked on every later fetch and before training);
3. only then links it into place under its final name, atomically (fsync, rename).

A wrong hash, an interrupted transfer or a killed process leaves nothing under the final name
(with ``O_TMPFILE`` nothing at all; a stale ``.part`` file is removed by the next fetch). Offline,
the same command installs a file copied in by hand (``--file``), with the same checks, and its
error message says which file to place where.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from visage_ml.io import atomic_write_json, fsync_dir, sha256_file
from visage_ml.models.facenet_files import FACENET_RELEASE, FACENET_WEIGHTS, facenet_weights_path

logger = logging.getLogger(__name__)

PIN_FILE = "published-weights.lock.json"
CHUNK = 1 << 20
MAX_BYTES = 1 << 30  # the published files are ~110 MB; anything near 1 GiB is not one of them
PART_SUFFIX = ".part"
_RELEASE_DOWNLOAD = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"

MSG_UNKNOWN = "unknown published weights '{name}'; choose one of: {choices}"
MSG_OFFLINE = (
    "could not download {url} ({reason}). visage-ml needs the file {file} in {folder} (where "
    "train_embedder.init: {name} looks; TORCH_HOME moves it). On a machine with internet "
    "access download {url}{check}, copy it here and run `visage models fetch {name} --file "
    "PATH` to check and place it (or copy it to {target} yourself). Nothing was written."
)
MSG_HASH = (
    "refused {what}: its SHA-256 is {found}, but {expected} is expected ({pin}). It was not "
    "installed and nothing was written; fetch it again from the release assets ({release})."
)
MSG_INSTALLED_HASH = (
    "{path} does not match its pin: SHA-256 {found}, expected {expected} ({pin}). Delete it and "
    "run `visage models fetch {name}` (or set train_embedder.init to 'scratch')."
)
MSG_INTERRUPTED = (
    "the download of {url} stopped after {got} of {expected} bytes ({reason}); nothing was "
    "written. Run `visage models fetch {name}` again."
)
MSG_TOO_LARGE = (
    "{url} sends more than {limit} bytes, far more than the published weights; refused, nothing "
    "was written"
)
MSG_SIZE = (
    "{url} announces {announced} bytes, but the published file {file} has {size}; refused, "
    "nothing was written (a wrong or tampered mirror?)"
)
MSG_SCHEME = (
    "refused URL {url}: only https (or http to a loopback mirror) is fetched; weights without "
    "a published hash are only trusted over https"
)
MSG_PIN_FILE = "{path} is not a valid pin file ({reason}); restore it from version control"
MSG_NOT_WEIGHTS = (
    "{what} is not InceptionResnetV1 weights ({why}); nothing was installed or pinned: give the "
    "'{name}' file of the facenet-pytorch {release} release"
)
# What an InceptionResnetV1 state dict holds, whatever its training set: the first convolution
# and the 512-d embedding layer. Checked before a file without a published hash is pinned.
SIGNATURE_SHAPES: dict[str, tuple[int, ...]] = {
    "conv2d_1a.conv.weight": (32, 3, 3, 3),
    "last_linear.weight": (512, 1792),
}


class WeightsError(ValueError):
    """Published weights could not be fetched, checked or installed (the message says why)."""


class WeightsHashError(WeightsError):
    """A file's SHA-256 differs from its pin."""


@dataclass(frozen=True)
class PublishedWeights:
    """One published weight file: where it comes from, where it goes, what it must hash to.

    ``sha256`` and ``size`` are ``None`` where no public source gives them; the first fetch
    then records them in the project's pin file.
    """

    name: str
    file: str
    url: str
    sha256: str | None
    size: int | None
    pin_source: str

    @property
    def target(self) -> Path:
        """Where ``train_embedder.init: <name>`` reads it: ``$TORCH_HOME/checkpoints/<file>``."""
        return facenet_weights_path(self.name)


# The SHA-256 of the VGGFace2 file is the one independent projects pin for this release asset
# (verified with `sha256sum -c` in their builds and artefact checks), with its size in bytes.
# No public source gives one for the CASIA-WebFace file: it is pinned on first fetch.
PUBLISHED: dict[str, PublishedWeights] = {
    "vggface2": PublishedWeights(
        name="vggface2",
        file=FACENET_WEIGHTS["vggface2"],
        url=_RELEASE_DOWNLOAD + FACENET_WEIGHTS["vggface2"],
        sha256="281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b",
        size=111_898_327,
        pin_source="published SHA-256 of the facenet-pytorch v2.2.9 release asset",
    ),
    "casia-webface": PublishedWeights(
        name="casia-webface",
        file=FACENET_WEIGHTS["casia-webface"],
        url=_RELEASE_DOWNLOAD + FACENET_WEIGHTS["casia-webface"],
        sha256=None,
        size=None,
        pin_source="no published SHA-256: recorded on first fetch",
    ),
}


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_weights` did."""

    name: str
    path: Path
    sha256: str
    size: int
    pin: str  # "published", "recorded" (an earlier fetch) or "recorded now" (first fetch)
    already_present: bool


def get_published(name: str) -> PublishedWeights:
    """The weights ``name`` (``WeightsError`` listing the known names otherwise)."""
    try:
        return PUBLISHED[name]
    except KeyError:
        raise WeightsError(MSG_UNKNOWN.format(name=name, choices=", ".join(PUBLISHED))) from None


# ---------------------------------------------------------------------------------------------
# Pins
# ---------------------------------------------------------------------------------------------


def read_pins(pin_file: Path) -> dict[str, dict[str, Any]]:
    """The pins recorded in ``pin_file`` (empty when it does not exist)."""
    if not pin_file.is_file():
        return {}
    try:
        doc = json.loads(pin_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(MSG_PIN_FILE.format(path=pin_file, reason=type(exc).__name__)) from None
    if not isinstance(doc, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in doc.values()
    ):
        raise WeightsError(MSG_PIN_FILE.format(path=pin_file, reason="unexpected structure"))
    return doc


def expected_sha256(spec: PublishedWeights, pin_file: Path | None) -> tuple[str | None, str]:
    """The pin of ``spec`` and where it comes from: published, else the pin file, else none."""
    if spec.sha256 is not None:
        return spec.sha256, spec.pin_source
    if pin_file is not None:
        pinned = read_pins(pin_file).get(spec.name)
        if pinned:
            return str(pinned["sha256"]), f"recorded in {pin_file.name} on first fetch"
    return None, "no pin yet"


def _record_pin(pin_file: Path, spec: PublishedWeights, sha256: str, size: int) -> None:
    pins = read_pins(pin_file)
    pins[spec.name] = {
        "file": spec.file,
        "url": spec.url,
        "sha256": sha256,
        "size": size,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "trust": "first fetch (no published SHA-256); compare it with a trusted source",
    }
    atomic_write_json(pin_file, dict(sorted(pins.items())))


def verify_installed(name: str, *, pin_file: Path | None = None) -> str | None:
    """Check the installed file of ``name`` against its pin; return its SHA-256.

    Returns ``None`` when the file is not installed or has no pin yet (nothing to check).

    Raises
    ------
    WeightsHashError
        The installed file differs from its pin (a swapped or corrupted file).
    """
    spec = get_published(name)
    if not spec.target.is_file():
        return None
    expected, source = expected_sha256(spec, pin_file)
    if expected is None:
        return None
    found = sha256_file(spec.target)
    if found != expected:
        raise WeightsHashError(
            MSG_INSTALLED_HASH.format(
                path=spec.target, found=found, expected=expected, pin=source, name=name
            )
        )
    return found


# ---------------------------------------------------------------------------------------------
# Writing without a half-written file
# ---------------------------------------------------------------------------------------------


class _Staged:
    """A file being written in ``folder`` that appears under its final name only when complete.

    Linux ``O_TMPFILE``: the data lives in an unnamed inode until :meth:`install` links it, so a
    killed process leaves nothing. Elsewhere: a ``.<name>.<token>.part`` file.
    """

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name
        self.part: Path | None = None
        flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
        tmpfile = getattr(os, "O_TMPFILE", 0)
        self.fd = -1
        if tmpfile and Path("/proc/self/fd").is_dir():
            with contextlib.suppress(OSError):
                self.fd = os.open(folder, flags | tmpfile, 0o644)
        if self.fd < 0:
            self.part = folder / f".{name}.{secrets.token_hex(6)}{PART_SUFFIX}"
            self.fd = os.open(self.part, flags | os.O_CREAT | os.O_EXCL, 0o644)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def install(self) -> Path:
        """fsync, then link/rename to ``folder/name`` (replacing an older file atomically)."""
        os.fsync(self.fd)
        target = self.folder / self.name
        if self.part is None:
            staging = self.folder / f".{self.name}.{secrets.token_hex(6)}.tmp"
            # linkat(AT_SYMLINK_FOLLOW) through /proc gives the unnamed inode its first name;
            # os.link uses linkat (not link) only when a dir_fd is given.
            proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(str(self.fd), staging, src_dir_fd=proc, follow_symlinks=True)
            finally:
                os.close(proc)
        else:
            staging = self.part
        try:
            os.replace(staging, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            raise
        self.part = None
        fsync_dir(self.folder)
        return target

    def readable(self) -> Path:
        """A path that reads the data written so far (before :meth:`install`)."""
        return self.part if self.part is not None else Path(f"/proc/self/fd/{self.fd}")

    def close(self) -> None:
        """Close; drop the data unless installed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.part is not None:
            with contextlib.suppress(FileNotFoundError):
                self.part.unlink()
            self.part = None


def check_signature(path: Path, *, name: str, what: str) -> None:
    """Refuse a file that is not an InceptionResnetV1 state dict (:data:`SIGNATURE_SHAPES`).

    Raises
    ------
    WeightsError
        :data:`MSG_NOT_WEIGHTS`, saying what is wrong with it.
    """
    import torch

    why = ""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, torch's own errors: not a checkpoint
        why = f"not a PyTorch checkpoint: {type(exc).__name__}"
    else:
        if not isinstance(state, dict):
            why = "no state dict in it"
        else:
            for key, shape in SIGNATURE_SHAPES.items():
                found = state.get(key)
                if not isinstance(found, torch.Tensor) or tuple(found.shape) != shape:
                    why = f"no {key} of shape {shape}"
                    break
    if why:
        raise WeightsError(
            MSG_NOT_WEIGHTS.format(what=what, why=why, name=name, release=FACENET_RELEASE)
        )


def stale_parts(folder: Path, name: str) -> list[Path]:
    """``.part`` files a killed fetch of ``name`` left in ``folder`` (without ``O_TMPFILE``)."""
    return sorted(folder.glob(f".{name}.*{PART_SUFFIX}")) if folder.is_dir() else []


@contextlib.contextmanager
def _staged(folder: Path, name: str) -> Iterator[_Staged]:
    for stale in stale_parts(folder, name):
        stale.unlink(missing_ok=True)
    staged = _Staged(folder, name)
    try:
        yield staged
    finally:
        staged.close()


# ---------------------------------------------------------------------------------------------
# Fetch
# ---------------------------------------------------------------------------------------------


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _check_url(url: str, *, pinned: bool) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname)):
        return
    if parts.scheme == "http" and pinned:
        return  # the published hash protects the content; plain http mirrors are usable
    raise WeightsError(MSG_SCHEME.format(url=url))


Opener = Callable[..., Any]


def _copy_stream(
    src: BinaryIO,
    staged: _Staged,
    *,
    announced: int | None,
    url: str,
    name: str,
    progress: Callable[[int], None] | None,
) -> tuple[str, int]:
    h = hashlib.sha256()
    got = 0
    try:
        while chunk := src.read(CHUNK):
            got += len(chunk)
            if got > MAX_BYTES:
                raise WeightsError(MSG_TOO_LARGE.format(url=url, limit=MAX_BYTES))
            h.update(chunk)
            staged.write(chunk)
            if progress is not None:
                progress(len(chunk))
    except (OSError, urllib.error.URLError, ValueError) as exc:
        if isinstance(exc, WeightsError):
            raise
        reason = type(exc).__name__
        raise WeightsError(
            MSG_INTERRUPTED.format(
                url=url, got=got, expected=announced or "?", reason=reason, name=name
            )
        ) from None
    if announced is not None and got != announced:
        raise WeightsError(
            MSG_INTERRUPTED.format(
                url=url, got=got, expected=announced, reason="connection closed", name=name
            )
        )
    return h.hexdigest(), got


def fetch_weights(
    name: str,
    *,
    pin_file: Path | None,
    url: str | None = None,
    source_file: Path | None = None,
    timeout: float = 60.0,
    opener: Opener = urllib.request.urlopen,
    progress: Callable[[int], None] | None = None,
) -> FetchResult:
    """Download (or copy in) published weights, check their SHA-256, place them for ``init``.

    Parameters
    ----------
    name
        A key of :data:`PUBLISHED` (``vggface2``, ``casia-webface``).
    pin_file
        The project's pin file (:data:`PIN_FILE`): the first fetch of weights without a
        published SHA-256 records it there; later fetches must match it.
    url
        A mirror to fetch from instead of the release asset.
    source_file
        A file copied in by hand (offline): checked and installed like a download.
    timeout
        Seconds to wait for the server on connect and on each read.
    opener
        ``urllib.request.urlopen`` (tests pass another).
    progress
        Called with the bytes of each chunk received.

    Returns
    -------
    FetchResult
        The installed path, its SHA-256 and size, and where its pin came from.

    Raises
    ------
    WeightsError
        Unknown name, unreachable server (the message says which file to place where), an
        interrupted or oversized transfer, a refused URL.
    WeightsHashError
        The content differs from the pin (nothing is installed).
    """
    spec = get_published(name)
    target = spec.target
    expected, pin_source = expected_sha256(spec, pin_file)
    if target.is_file() and source_file is None:
        found = sha256_file(target)
        if expected is not None and found != expected:
            raise WeightsHashError(
                MSG_INSTALLED_HASH.format(
                    path=target, found=found, expected=expected, pin=pin_source, name=name
                )
            )
        pin = "published" if spec.sha256 else "recorded"
        if expected is None and pin_file is not None:
            check_signature(target, name=spec.file, what=f"the file {target}")
            _record_pin(pin_file, spec, found, target.stat().st_size)
            pin = "recorded now"
        return FetchResult(name, target, found, target.stat().st_size, pin, True)

    source = url or spec.url
    target.parent.mkdir(parents=True, exist_ok=True)
    with _staged(target.parent, target.name) as staged:
        if source_file is not None:
            with open(source_file, "rb") as fh:
                digest, size = _copy_stream(
                    fh, staged, announced=None, url=str(source_file), name=name, progress=progress
                )
            what = f"the file {source_file}"
        else:
            _check_url(source, pinned=expected is not None)
            digest, size = _download(
                source,
                staged,
                spec=spec,
                pinned=expected is not None,
                timeout=timeout,
                opener=opener,
                progress=progress,
            )
            what = f"the download from {source}"
        if expected is None:  # pinned as it is from now on: it must at least be such weights
            check_signature(staged.readable(), name=spec.file, what=what)
        if expected is not None and digest != expected:
            raise WeightsHashError(
                MSG_HASH.format(
                    what=what,
                    found=digest,
                    expected=expected,
                    pin=pin_source,
                    release=FACENET_RELEASE,
                )
            )
        path = staged.install()
    pin = "published" if spec.sha256 else "recorded"
    if expected is None and pin_file is not None:
        _record_pin(pin_file, spec, digest, size)
        pin = "recorded now"
    logger.info("installed %s (%d bytes, SHA-256 %s, pin: %s)", path.name, size, digest, pin)
    return FetchResult(name, path, digest, size, pin, False)


def _download(
    url: str,
    staged: _Staged,
    *,
    spec: PublishedWeights,
    pinned: bool,
    timeout: float,
    opener: Opener,
    progress: Callable[[int], None] | None,
) -> tuple[str, int]:
    check = f" (SHA-256 {spec.sha256})" if spec.sha256 else ""
    offline = {
        "url": url,
        "file": spec.file,
        "folder": spec.target.parent,
        "target": spec.target,
        "name": spec.name,
        "check": check and f", check its SHA-256 is {spec.sha256}",
    }
    request = urllib.request.Request(url, headers={"User-Agent": "visage-ml"})  # noqa: S310
    try:
        response = opener(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise WeightsError(MSG_OFFLINE.format(reason=f"HTTP {exc.code}", **offline)) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise WeightsError(MSG_OFFLINE.format(reason=reason, **offline)) from None
    with contextlib.closing(response):
        # A redirect must not downgrade an unpinned download to plain http.
        _check_url(response.geturl(), pinned=pinned)
        length = response.headers.get("Content-Length")
        announced = int(length) if length and length.isdigit() else None
        if announced is not None and announced > MAX_BYTES:
            raise WeightsError(MSG_TOO_LARGE.format(url=url, limit=MAX_BYTES))
        if announced is not None and spec.size is not None and announced != spec.size:
            raise WeightsError(
                MSG_SIZE.format(url=url, announced=announced, file=spec.file, size=spec.size)
            )
        return _copy_stream(
            response, staged, announced=announced, url=url, name=spec.name, progress=progress
        )


def weights_status(pin_file: Path | None) -> list[dict[str, Any]]:
    """Each published weight set: where ``init`` looks, whether it is there, and its pin."""
    rows = []
    for spec in PUBLISHED.values():
        expected, source = expected_sha256(spec, pin_file)
        rows.append(
            {
                "name": spec.name,
                "path": str(spec.target),
                "present": spec.target.is_file(),
                "url": spec.url,
                "sha256": expected,
                "pin": source,
            }
        )
    return rows
