"""Durable file primitives: atomic replace, fsync'd appends, advisory locks, content hashes.

Everything visage-ml stores goes through these so that a crash leaves either the old or the new
content, never a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from visage_ml import faults

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Create folder ``path`` readable and writable by its owner only (0700, whatever umask).

    Missing parents are created as usual; an existing folder is left as it is.
    """
    path = Path(path)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    return path


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``: temporary file in the same folder, fsync, rename.

    ``mode`` is the new file's; by default that of the file replaced (a private file rewritten
    stays private: an erasure rewriting ``splits.json`` left it readable to all), 0644 for a new
    one.
    """
    path = Path(path)
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def leftovers(path: Path) -> list[Path]:
    """The temporary files of :func:`atomic_write_bytes` calls of ``path`` that were killed
    between write and rename: nothing else removes them, and each holds a full version of the
    file (a key under the current master key, an index naming a subject)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


# ``.<name>.<mkstemp's random part>.tmp``, as atomic_write_bytes names its temporary files.
_LEFTOVER_RE = re.compile(r"\.(.+)\.[a-z0-9_]+\.tmp")


def leftover_target(path: Path | str) -> str | None:
    """The name of the file a temporary file of :func:`atomic_write_bytes` was to replace
    (``.p1.key.x1y2z3.tmp``: ``p1.key``); None when ``path`` is not named as one."""
    match = _LEFTOVER_RE.fullmatch(Path(path).name)
    return match.group(1) if match else None


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Text form of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


# A shared file that holds a row of many subjects (a table, an index, a report) carries this much
# fresh randomness in each version it is written in: an erasure records the SHA-256 of the
# version it replaced, and without the randomness the rest of that version plus one guessed row
# would rebuild it byte for byte, confirming the erased subject's attributes or reference.
NONCE_KEY = "version_nonce"


def version_nonce() -> str:
    """128 random bits (hex) for the next version of a shared file (see :data:`NONCE_KEY`)."""
    return os.urandom(16).hex()


def atomic_write_json(
    path: Path, obj: Any, *, mode: int | None = None, indent: int | None = 2
) -> None:
    """Write ``obj`` as JSON atomically (sorted keys, trailing newline)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n", mode=mode)


def secure_unlink(path: Path) -> bool:
    """Overwrite a small file with zeros, fsync, then unlink it. Returns whether it existed.

    A file with other hard links is only unlinked (its bytes are theirs too).

    On copy-on-write or journalling file systems the overwrite is best effort; the guarantee of
    erasure comes from destroying keys (crypto-shredding) and from hash-level verification.
    """
    path = Path(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    size = st.st_size
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        # Other names share these bytes (a hard link: DVC's hardlink cache, a copy made with
        # `cp -l`): zeroing would destroy what they hold, which may be another subject's kept
        # data. This name goes; the bytes go with their last name (each found by its content).
        os.unlink(path)
        fsync_dir(path.parent)
        return True
    try:
        with open(path, "r+b") as fh:
            remaining = size
            zeros = b"\0" * min(CHUNK, max(size, 1))
            while remaining > 0:
                n = min(remaining, len(zeros))
                fh.write(zeros[:n])
                remaining -= n
            fh.flush()
            os.fsync(fh.fileno())
    except PermissionError:
        os.chmod(path, 0o600)
        return secure_unlink(path)
    faults.crash_point("io:secure-unlink:zeroed")
    os.unlink(path)
    fsync_dir(path.parent)
    return True


class LockHeldError(BlockingIOError):
    """:func:`file_lock` with ``wait=False`` found the lock held by someone else."""


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Advisory ``flock`` on ``path`` (created if missing) for the duration of the block.

    With ``wait`` false, :class:`LockHeldError` at once instead of waiting for its holder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    how = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        os.close(fd)
        raise LockHeldError(str(path)) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def line_spans(data: bytes, needles: Sequence[bytes]) -> list[tuple[int, int]]:
    """``(start, end)`` of each line of ``data`` (complete lines) holding one of ``needles``
    (non-empty), in order, ``end`` at its newline: found by jumping from one needle to the next,
    so the rest (nearly all of a large ledger) is neither split nor parsed."""
    spans = set()
    for needle in needles:
        pos = data.find(needle)
        while pos != -1:
            stop = data.find(b"\n", pos)
            spans.add((data.rfind(b"\n", 0, pos) + 1, stop))
            pos = data.find(needle, stop)
    return sorted(spans)


def lines_containing(
    path: Path, needles: Sequence[bytes], *, start_offset: int = 0, block: int = 1 << 24
) -> Iterator[bytes]:
    """Complete lines of the file at ``path`` (from ``start_offset``) holding one of
    ``needles`` (non-empty), without their newline, in order: found by searching ``block``
    bytes at a time for each needle, never line by line. Nothing when the file is missing."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    with fh:
        fh.seek(start_offset)
        rest = b""
        while chunk := fh.read(block):
            data = rest + chunk
            end = data.rfind(b"\n") + 1
            data, rest = data[:end], data[end:]
            for a, b in line_spans(data, needles):
                yield data[a:b]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_sized(path: Path) -> tuple[str, int]:
    """Hex SHA-256 of a file's content and its size in bytes, from one read (the size of the
    content hashed, not of a file changed since)."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def md5_file(path: Path) -> str:
    """Hex MD5 of a file's content (the hash DVC names its cache objects by)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, UTF-8) for hashing and signing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )
