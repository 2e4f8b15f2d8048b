"""API keys with roles and an expiry, stored as hashes only, and a limit on failed authentication.

A key reads ``vk_<key id>_<secret>``: the id (12 hex characters) names the key in the audit log
and in ``secrets/api_keys.json``, the secret is 32 random bytes. The file holds each key's id,
role, creation and expiry times, revocation flag, rotation links and the SHA-256 of the whole
key, never the key itself: a key is shown once, when it is created.

Every key expires (``serving.auth.key_ttl_days`` after creation unless ``--expires-in`` says
otherwise; a record written before keys had an expiry expires that long after its creation).
:meth:`KeyStore.rotate` issues a successor key with a new id and secret and lets the old one
work only for a grace period (``serving.auth.rotation_grace_hours``), so clients can switch
without downtime. SHA-256 without a slow KDF is enough because keys are
256-bit random values, not passwords. Presented keys are compared with
:func:`hmac.compare_digest`, and an unknown id is compared against a dummy hash so the time taken
does not tell which ids exist.

Roles: ``operator`` identifies, verifies, enrols and runs analytics; ``dpo`` reads subject
state and exercises data-subject rights; ``auditor`` reads subject state, the ledger,
certificates and metrics; ``metrics`` reads ``/metrics`` only (a Prometheus scraper's key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from visage_ml.io import atomic_write_bytes, file_lock
from visage_ml.privacy.ledger import utc_now

OPERATOR = "operator"
DPO = "dpo"
AUDITOR = "auditor"
METRICS = "metrics"
ROLES: tuple[str, ...] = (OPERATOR, DPO, AUDITOR, METRICS)
KEY_RE = re.compile(r"^vk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
FILE_VERSION = 2
DEFAULT_TTL_DAYS = 90.0
MAX_TTL_DAYS = 3650.0
_DUMMY_HASH = hashlib.sha256(b"visage-ml: no such key").hexdigest()
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")

# Outcomes of KeyStore.check.
VALID = "valid"
INVALID = "invalid"
EXPIRED = "expired"

MSG_ROLE = "unknown role '{role}'; roles are: " + ", ".join(ROLES)
MSG_NO_KEY_ID = "no API key with id '{key_id}'; list them with `visage apikey list`"
MSG_DURATION = (
    "'{text}' is not a duration; write a number and a unit: s, m, h, d or w (e.g. 90d, 12h)"
)
MSG_DURATION_RANGE = (
    "an API key must expire after more than 0 s and at most {max_days:g} days, not '{text}'"
)
MSG_ROTATE_REVOKED = "API key {key_id} is revoked; create a new key with `visage apikey create`"
MSG_ROTATE_TWICE = (
    "API key {key_id} was already rotated; its successor is {successor} (rotate that one)"
)
MSG_BAD_FILE = (
    "{path} is not a visage API key file ({reason}); restore it from a backup or move it away "
    "and create new keys with `visage apikey create`"
)
MSG_UNREADABLE_FILE = (
    "{path} cannot be read ({reason}); let the server's user read it (a file, mode 600), or "
    "restore it from a backup, or move it away and create new keys with `visage apikey create`"
)


class ApiKeyFileError(ValueError):
    """``secrets/api_keys.json`` cannot be read."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key: id, role, expiry and the SHA-256 of the key (never the key).

    ``expires`` is an ISO 8601 UTC time; ``replaces`` / ``replaced_by`` link the keys of a
    rotation.
    """

    key_id: str
    role: str
    sha256: str
    created: str
    revoked: bool = False
    expires: str | None = None
    replaces: str | None = None
    replaced_by: str | None = None

    def public(self) -> dict[str, Any]:
        """Everything but the hash (for listings)."""
        return {k: v for k, v in asdict(self).items() if k != "sha256"}


@dataclass(frozen=True)
class CheckResult:
    """What :meth:`KeyStore.check` found: ``valid``, ``invalid`` or ``expired`` (with the key)."""

    outcome: str
    record: ApiKey | None = None


def hash_key(key: str) -> str:
    """Hex SHA-256 of a presented key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def iso_utc(ts: float) -> str:
    """A POSIX time as ISO 8601 UTC with a ``Z`` (the format of ``created``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) as POSIX seconds."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_duration(text: str, *, max_days: float = MAX_TTL_DAYS) -> float:
    """Seconds in a duration such as ``90d``, ``12h``, ``30m``, ``2w`` or ``45s``.

    Raises
    ------
    ValueError
        Not a duration, zero, or longer than ``max_days``.
    """
    m = _DURATION_RE.match(text or "")
    if not m:
        raise ValueError(MSG_DURATION.format(text=text))
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= max_days * 86400.0:
        raise ValueError(MSG_DURATION_RANGE.format(text=text, max_days=max_days))
    return seconds


class KeyStore:
    """The API keys of a project (``secrets/api_keys.json``), re-read when the file changes.

    Parameters
    ----------
    path
        ``secrets/api_keys.json``.
    ttl_days
        Lifetime of a new key when none is given, and of a record without an expiry.
    clock
        Wall clock (POSIX seconds) deciding expiry.
    """

    def __init__(
        self,
        path: Path,
        *,
        ttl_days: float = DEFAULT_TTL_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.ttl_s = float(ttl_days) * 86400.0
        self._clock = clock
        self._lock = threading.Lock()
        self._stat: tuple[int, int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    # -- file ----------------------------------------------------------------------------------

    def _read(self) -> dict[str, ApiKey]:
        if not self.path.exists():
            return {}
        try:
            raw = self.path.read_bytes()
        except OSError as exc:  # a folder in its place, no read permission
            raise ApiKeyFileError(
                MSG_UNREADABLE_FILE.format(path=self.path, reason=type(exc).__name__)
            ) from None
        try:
            doc = orjson.loads(raw)
            keys = {}
            for k in doc["keys"]:
                created = str(k.get("created", ""))
                expires = k.get("expires")
                if expires is None:
                    # A key from before keys expired: its lifetime counts from its creation
                    # (an unreadable creation time makes it expired).
                    try:
                        expires = iso_utc(parse_time(created) + self.ttl_s)
                    except ValueError:
                        expires = iso_utc(0)
                key = ApiKey(
                    key_id=str(k["key_id"]),
                    role=str(k["role"]),
                    sha256=str(k["sha256"]),
                    created=created,
                    revoked=bool(k.get("revoked", False)),
                    expires=str(expires),
                    replaces=k.get("replaces"),
                    replaced_by=k.get("replaced_by"),
                )
                parse_time(key.expires or "")
                keys[key.key_id] = key
            return keys
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
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
        except OSError as exc:  # its folder may not be searched
            raise ApiKeyFileError(
                MSG_UNREADABLE_FILE.format(path=self.path, reason=type(exc).__name__)
            ) from None
        with self._lock:
            if stat != self._stat:
                self._keys = self._read()
                self._stat = stat
            return self._keys

    # -- management (CLI) ----------------------------------------------------------------------

    def _new(
        self, keys: dict[str, ApiKey], role: str, expires_in_s: float | None, **links: Any
    ) -> tuple[ApiKey, str]:
        key_id = os.urandom(6).hex()
        while key_id in keys:
            key_id = os.urandom(6).hex()
        secret = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")
        key = f"vk_{key_id}_{secret}"
        ttl = self.ttl_s if expires_in_s is None else float(expires_in_s)
        record = ApiKey(
            key_id=key_id,
            role=role,
            sha256=hash_key(key),
            created=utc_now(),
            expires=iso_utc(self._clock() + ttl),
            **links,
        )
        keys[key_id] = record
        return record, key

    def create(self, role: str, *, expires_in_s: float | None = None) -> tuple[ApiKey, str]:
        """Create a key for ``role``; returns the stored record and the key (shown once).

        Parameters
        ----------
        role
            One of :data:`ROLES`.
        expires_in_s
            Lifetime in seconds (the store's ``ttl_days`` when None).
        """
        if role not in ROLES:
            raise ValueError(MSG_ROLE.format(role=role))
        if expires_in_s is not None and expires_in_s <= 0:
            raise ValueError(MSG_DURATION_RANGE.format(text=expires_in_s, max_days=MAX_TTL_DAYS))
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            keys = self._read()
            record, key = self._new(keys, role, expires_in_s)
            self._write(keys)
        return record, key

    def rotate(
        self, key_id: str, *, grace_s: float, expires_in_s: float | None = None
    ) -> tuple[ApiKey, str, ApiKey]:
        """Issue a successor of ``key_id`` (same role, new id and secret); retire the old key.

        The old key keeps working for ``grace_s`` seconds (or until its own expiry, if sooner).

        Returns
        -------
        tuple
            The new record, the new key (shown once) and the old record as now stored.

        Raises
        ------
        KeyError
            No such key.
        ValueError
            The key is revoked or was already rotated.
        """
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            keys = self._read()
            if key_id not in keys:
                raise KeyError(MSG_NO_KEY_ID.format(key_id=key_id))
            old = keys[key_id]
            if old.revoked:
                raise ValueError(MSG_ROTATE_REVOKED.format(key_id=key_id))
            if old.replaced_by:
                raise ValueError(MSG_ROTATE_TWICE.format(key_id=key_id, successor=old.replaced_by))
            record, key = self._new(keys, old.role, expires_in_s, replaces=key_id)
            retire = min(parse_time(old.expires or iso_utc(0)), self._clock() + max(grace_s, 0.0))
            keys[key_id] = replace(old, expires=iso_utc(retire), replaced_by=record.key_id)
            self._write(keys)
            return record, key, keys[key_id]

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked (kept in the file so the audit log's key ids stay explained)."""
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            keys = self._read()
            if key_id not in keys:
                raise KeyError(MSG_NO_KEY_ID.format(key_id=key_id))
            keys[key_id] = replace(keys[key_id], revoked=True)
            self._write(keys)
            return keys[key_id]

    def expired(self, record: ApiKey) -> bool:
        """Whether ``record`` is past its expiry now."""
        return self._clock() >= parse_time(record.expires or iso_utc(0))

    def list(self) -> list[ApiKey]:
        """Every key record (with hashes; use :meth:`ApiKey.public` to show them)."""
        return list(self._read().values())

    # -- authentication ------------------------------------------------------------------------

    def check(self, presented: str | None) -> CheckResult:
        """Whether ``presented`` is a valid key, an expired one (with its record) or neither.

        Only a presented key whose whole hash matches learns that it expired; a wrong, revoked,
        malformed or missing key is ``invalid``.
        """
        if not presented:
            return CheckResult(INVALID)
        keys = self._current()
        m = KEY_RE.fullmatch(presented)
        key_id = m.group(1) if m else ""
        record = keys.get(key_id)
        expected = record.sha256 if record is not None else _DUMMY_HASH
        ok = hmac.compare_digest(expected.encode("ascii"), hash_key(presented).encode("ascii"))
        if not ok or record is None or record.revoked:
            return CheckResult(INVALID)
        if self.expired(record):
            return CheckResult(EXPIRED, record)
        return CheckResult(VALID, record)

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The key record matching ``presented``, or None (missing, malformed, wrong, revoked,
        expired)."""
        result = self.check(presented)
        return result.record if result.outcome == VALID else None


class FailureLimiter:
    """At most ``max_failures`` failed authentications per client within ``window_seconds``.

    A client over the limit is refused (before its key is even checked) until its oldest failure
    in the window ages out. Memory is bounded: at most ``max_clients`` clients are tracked, the
    least recently failing forgotten first. The client is the connecting address, or behind one
    of ``trusted_proxies`` the address that proxy saw (:meth:`client_of`).
    """

    def __init__(
        self,
        *,
        max_failures: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.max_failures = int(max_failures)
        self.window = float(window_seconds)
        self._clock = clock
        self._max_clients = int(max_clients)
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        # A dual-stack socket reports an IPv4 proxy as ::ffff:a.b.c.d.
        mapped = getattr(address, "ipv4_mapped", None)
        return any(
            address in net or (mapped is not None and mapped in net) for net in self._proxies
        )

    def client_of(self, scope: Mapping[str, Any]) -> str:
        """The address a request's failures count against.

        The connecting peer's, unless it is a trusted proxy: then the nearest address in
        ``X-Forwarded-For`` that is not one. A proxy appends the address it saw, so whatever a
        client writes into the header itself lies to the left of that and is never reached.
        """
        peer = scope.get("client")
        host = str(peer[0]) if peer else "unknown"
        if not self._proxies or not self._trusted(host):
            return host
        hops = [
            hop.strip()
            for name, value in scope.get("headers") or []
            if name.lower() == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        for hop in reversed(hops):
            if not self._trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return host  # not what a proxy appends: count it with the proxy
        return host

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
