"""API keys with roles, stored as hashes only, and a limit on failed authentication per client.

A key reads ``vk_<key id>_<secret>``: the id (12 hex characters) names the key in the audit log
and in ``secrets/api_keys.json``, the secret is 32 random bytes. The file holds each key's id,
role, creation time, revocation flag and the SHA-256 of the whole key, never the key itself: a
key is shown once, when it is created. SHA-256 without a slow KDF is enough because keys are
256-bit random values, not passwords. Presented keys are compared with
:func:`hmac.compare_digest`, and an unknown id is compared against a dummy hash so the time taken
does not tell which ids exist.

Roles: ``operator`` identifies, verifies, enrols and runs analytics; ``dpo`` reads subject
state and exercises data-subject rights; ``auditor`` reads subject state, the ledger and
certificates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from visage_ml.io import atomic_write_bytes, file_lock
from visage_ml.privacy.ledger import utc_now

OPERATOR = "operator"
DPO = "dpo"
AUDITOR = "auditor"
ROLES: tuple[str, ...] = (OPERATOR, DPO, AUDITOR)
KEY_RE = re.compile(r"^vk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
FILE_VERSION = 1
_DUMMY_HASH = hashlib.sha256(b"visage-ml: no such key").hexdigest()

MSG_ROLE = "unknown role '{role}'; roles are: " + ", ".join(ROLES)
MSG_NO_KEY_ID = "no API key with id '{key_id}'; list them with `visage apikey list`"
MSG_BAD_FILE = (
    "{path} is not a visage API key file ({reason}); restore it from a backup or move it away "
    "and create new keys with `visage apikey create`"
)


class ApiKeyFileError(ValueError):
    """``secrets/api_keys.json`` cannot be read."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key: id, role and the SHA-256 of the key (never the key)."""

    key_id: str
    role: str
    sha256: str
    created: str
    revoked: bool = False

    def public(self) -> dict[str, Any]:
        """Everything but the hash (for listings)."""
        return {k: v for k, v in asdict(self).items() if k != "sha256"}


def hash_key(key: str) -> str:
    """Hex SHA-256 of a presented key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    """The API keys of a project (``secrets/api_keys.json``), re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stat: tuple[int, int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    # -- file ----------------------------------------------------------------------------------

    def _read(self) -> dict[str, ApiKey]:
        if not self.path.exists():
            return {}
        try:
            doc = orjson.loads(self.path.read_bytes())
            keys = {}
            for k in doc["keys"]:
                key = ApiKey(
                    key_id=str(k["key_id"]),
                    role=str(k["role"]),
                    sha256=str(k["sha256"]),
                    created=str(k.get("created", "")),
                    revoked=bool(k.get("revoked", False)),
                )
                keys[key.key_id] = key
            return keys
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ApiKeyFileError(
                MSG_BAD_FILE.format(path=self.path, reason=type(exc).__name__)
            ) from None

    def _write(self, keys: dict[str, ApiKey]) -> None:
        doc = {"version": FILE_VERSION, "keys": [asdict(k) for k in keys.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        atomic_write_bytes(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2), mode=0o600)

    def _current(self) -> dict[str, ApiKey]:
        try:
            st = self.path.stat()
            stat = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stat = None
        with self._lock:
            if stat != self._stat:
                self._keys = self._read()
                self._stat = stat
            return self._keys

    # -- management (CLI) ----------------------------------------------------------------------

    def create(self, role: str) -> tuple[ApiKey, str]:
        """Create a key for ``role``; returns the stored record and the key (shown once)."""
        if role not in ROLES:
            raise ValueError(MSG_ROLE.format(role=role))
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            keys = self._read()
            key_id = os.urandom(6).hex()
            while key_id in keys:
                key_id = os.urandom(6).hex()
            secret = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")
            key = f"vk_{key_id}_{secret}"
            record = ApiKey(key_id=key_id, role=role, sha256=hash_key(key), created=utc_now())
            keys[key_id] = record
            self._write(keys)
        return record, key

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked (kept in the file so the audit log's key ids stay explained)."""
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            keys = self._read()
            if key_id not in keys:
                raise KeyError(MSG_NO_KEY_ID.format(key_id=key_id))
            rec = keys[key_id]
            keys[key_id] = ApiKey(rec.key_id, rec.role, rec.sha256, rec.created, revoked=True)
            self._write(keys)
            return keys[key_id]

    def list(self) -> list[ApiKey]:
        """Every key record (with hashes; use :meth:`ApiKey.public` to show them)."""
        return list(self._read().values())

    # -- authentication ------------------------------------------------------------------------

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The key record matching ``presented``, or None (missing, malformed, wrong, revoked)."""
        if not presented:
            return None
        keys = self._current()
        m = KEY_RE.fullmatch(presented)
        key_id = m.group(1) if m else ""
        record = keys.get(key_id)
        expected = record.sha256 if record is not None else _DUMMY_HASH
        ok = hmac.compare_digest(expected.encode("ascii"), hash_key(presented).encode("ascii"))
        if not ok or record is None or record.revoked:
            return None
        return record


class FailureLimiter:
    """At most ``max_failures`` failed authentications per client within ``window_seconds``.

    A client over the limit is refused (before its key is even checked) until its oldest failure
    in the window ages out. Memory is bounded: at most ``max_clients`` clients are tracked, the
    least recently failing forgotten first.
    """

    def __init__(
        self,
        *,
        max_failures: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.max_failures = int(max_failures)
        self.window = float(window_seconds)
        self._clock = clock
        self._max_clients = int(max_clients)
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, client: str, now: float) -> deque[float] | None:
        q = self._failures.get(client)
        if q is None:
            return None
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._failures[client]
            return None
        return q

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0 when not blocked)."""
        now = self._clock()
        with self._lock:
            q = self._prune(client, now)
            if q is None or len(q) < self.max_failures:
                return 0.0
            return max(q[0] + self.window - now, 0.0)

    def failure(self, client: str) -> None:
        """Record one failed authentication of ``client``."""
        now = self._clock()
        with self._lock:
            q = self._prune(client, now)
            if q is None:
                q = deque()
                self._failures[client] = q
            q.append(now)
            self._failures.move_to_end(client)
            while len(self._failures) > self._max_clients:
                self._failures.popitem(last=False)
