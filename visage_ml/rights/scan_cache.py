"""What the scan of the project's files learnt of each file, kept: an unchanged file is read once.

The erasure's copies step and ``visage privacy doctor`` read every text file, archive, pickle,
array and table of the project whole to look inside it
(:func:`~visage_ml.rights.content_scan.hash_files`): gigabytes of ordinary logs and tables on
every request. What a read learnt of a file (its SHA-256, size, a notebook's images, what it
holds inside) is kept here, in the project's own state (:data:`FILES`, private to its owner),
keyed by the file's identity and state: its real path, device, inode, size, modification and
change time. A file edited in place keeps its path and inode, and ``touch -d`` or ``os.utime``
can put its modification time back, but not its change time: any change to it is a miss.

What is trusted, and by whom: an entry is used only for a file whose state is the one it names,
whose last change is older than the scan that wrote it by :data:`RACY_NS` (as git treats its
index, a file changed again in the same tick of a coarse clock would not show); the whole cache
only when written by this scanner's code (the git scan cache's scanner id). What a read learnt
depends on what was sought: a scan passes over a part of a size nothing sought has, and one
smaller than anything sought (:mod:`~visage_ml.rights.embedded`). Each entry names those
(``refused``: each size it was told is not sought; ``small``: the largest part passed over as
too small), and counts for a later scan only when that one seeks none of them: a file read while
one subject was erased is read again for the next when it holds something of that subject's
size. A part of a key's size (a run of 64 hex digits: a log's SHA-256s,
:func:`~visage_ml.rights.embedded.key_test`) is tested against the keys sought and its digest
kept only when it is one; each erasure seeks its own subject's keys, so the entry keeps the
first :data:`KEY_MARK` hex digits of each such part's tag under the tombstone key (``tags``: a
keyed value, which names nothing without that key), and counts only while none is among the
tombstones' MACs then (a key sought since); a read that had no tag to make (no key sought yet)
notes the size as refused instead. A file of a key's size leaves no entry (its SHA-256 would be
a check value of the key it may be). Beyond that an entry is believed: telling an edited digest
from a true one takes reading the file, the very cost saved. The verifier, which a regulator
runs to check an erasure, never reads this and reads every file.

The cache holds digests, sizes and paths, never content; a file found to hold what was sought
leaves no entry (its digest is the erased content's), nor does a file gone or passed over by the
walk (an erasure's own artefacts). The walk of the erasure and ``doctor`` passes over the cache
itself (it is no copy of anything); the verifier's reads it as any file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from visage_ml.io import atomic_write_bytes, leftovers, private_dir
from visage_ml.rights import embedded

log = logging.getLogger(__name__)

FILES = Path(".visage") / "file-scan-cache.json"
FORMAT = 1
# A file changed less than this before the scan that read it is not trusted (nor kept): a file
# system whose clock ticks coarsely (a second or two) would show no change made in the same tick.
RACY_NS = 2_000_000_000
_HEX = frozenset("0123456789abcdef")
# Digest, size, a notebook's images, too large a notebook, what it holds inside, its kind, and
# whether that expands too far: the fields of :class:`~visage_ml.rights.content_scan.Read`.
Learnt = tuple[str, int, tuple[str, ...], bool, tuple[str, ...], str | None, bool]
# Device, inode, size, modification and change time (ns).
State = tuple[int, int, int, int, int]


def _now() -> int:
    return time.time_ns()


def state(st: os.stat_result) -> State:
    """A file's identity and state, as its entry is keyed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Noted:
    """A scan's size filter (``sizes``) as one file's read asks it, noting what that read passed
    over: each size it was told is not sought (``refused``), the largest part it passed over
    as smaller than anything sought (``small``, :func:`~visage_ml.rights.embedded.passed_over`),
    and the tags of the parts it tested for a key (``tags``, :meth:`key_test`)."""

    def __init__(self, sizes: embedded.SizeFilter) -> None:
        self.sizes = sizes
        self.refused: set[int] = set()
        self.tags: set[str] = set()
        self.small = -1
        self._key_test: Callable[[bytes], bool] | None = None
        self.smallest = embedded.smallest_sought(sizes)

    # Each asked once a part (a table's every value, a text's every base64 run: millions of
    # times a scan of a gigabyte of logs), so as plain comparisons, no call of their own.
    def may_match(self, size: int) -> bool:
        # noted as the largest passed over, not size by size; a key's size is sought alone
        # (:data:`~visage_ml.rights.embedded.KEY_SIZE`): noted as refused
        if size < self.smallest and size != embedded.KEY_SIZE:
            if size > self.small:
                self.small = size
            return False
        sought = self.sizes.may_match(size)
        if not sought:
            self.refused.add(size)
        return sought

    def key_test(self) -> Callable[[bytes], bool]:
        """:func:`~visage_ml.rights.embedded.key_test`'s test of ``sizes``, noting what it
        tested: the read keeps no digest of a 32-byte part that is not a key sought now, and
        each erasure seeks its own subject's. So the first :data:`KEY_MARK` hex digits of each
        part's tag are noted (``tags``), which a later scan checks against the tombstones as
        they are then (:meth:`FileCache.get`); where there is no tag (no tombstone key, no key
        sought yet), the key's size is noted as refused, and a scan seeking a key reads it
        again. Made once a read (asked of every 32-byte part: a table's every value)."""
        if self._key_test is None:
            self._key_test = self._make_key_test()
        return self._key_test

    def _make_key_test(self) -> Callable[[bytes], bool]:
        found = getattr(self.sizes, "key_tagger", None)
        tagged = found() if found is not None else None
        if tagged is None:
            self.refused.add(embedded.KEY_SIZE)
            return embedded.own_key_test(self.sizes)
        tag, sought = tagged
        tags = self.tags

        def test(raw: bytes) -> bool:
            t = tag(raw)
            tags.add(t[:KEY_MARK])
            return t in sought

        return test

    def passed_over(self, size: int) -> None:
        if size > self.small:
            self.small = size


def _sha256_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _int(value: object, *, least: int = 0) -> bool:
    return type(value) is int and value >= least


_KEYS = frozenset(
    {
        "state",
        "sha256",
        "size",
        "inner",
        "opaque",
        "held",
        "kind",
        "expands",
        "small",
        "refused",
        "tags",
    }
)
KEY_MARK = embedded.KEY_MARK
# An entry's tags: separated by spaces, so that the cache is no run of base64 (or hex) that the
# verifier, which reads it as any file, would decode whole.
_TAGS = re.compile(rf"(?:[0-9a-f]{{{KEY_MARK}}}(?: [0-9a-f]{{{KEY_MARK}}})*)?")


def _tags(value: object) -> bool:
    return isinstance(value, str) and _TAGS.fullmatch(value) is not None


def _entry(value: object) -> tuple[State, Learnt, int, tuple[int, ...], str] | None:
    """An entry as (state, what was learnt, ``small``, ``refused``, ``tags``); None when not
    one."""
    if not isinstance(value, dict) or set(value) != _KEYS or not _tags(value["tags"]):
        return None
    st, inner, held, refused = value["state"], value["inner"], value["held"], value["refused"]
    if not isinstance(st, list) or len(st) != 5 or not all(_int(n) for n in st):
        return None
    if not _sha256_hex(value["sha256"]) or not _int(value["size"]) or st[2] != value["size"]:
        return None
    for found in (inner, held):
        if not isinstance(found, list) or not all(_sha256_hex(d) for d in found):
            return None
    what = value["kind"]
    if not isinstance(value["opaque"], bool) or not isinstance(value["expands"], bool):
        return None
    if not (what is None or what in embedded.KINDS) or not _int(value["small"], least=-1):
        return None
    if not isinstance(refused, list) or not all(_int(n) for n in refused):
        return None
    learnt = (
        value["sha256"],
        value["size"],
        tuple(inner),
        value["opaque"],
        tuple(held),
        what,
        value["expands"],
    )
    return tuple(st), learnt, value["small"], tuple(refused), value["tags"]  # type: ignore[return-value]


def _racy(st: State, since: int) -> bool:
    """Whether a file in state ``st`` changed too close to ``since`` (or after) to be trusted."""
    return max(st[3], st[4]) >= since - RACY_NS


class FileCache:
    """One scan's view of the project's file scan cache at ``path``: what it held when the scan
    began (none when missing, damaged or not ``scanner``'s), and what this scan learnt."""

    def __init__(self, path: Path, *, scanner: str) -> None:
        self.path = path
        self.scanner = scanner
        self.since = _now()
        self._written = 0  # when the cache read was written (its scan began)
        self._old = self._load()
        self._new: dict[str, Any] = {}
        self._dropped: set[str] = set()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def part(self, keys: Iterable[str]) -> FileCache:
        """What this cache held of the files ``keys`` when the scan began, alone: handed to a
        scan process with its batch of files (pickled), to answer :meth:`get` there; what it
        used or learnt is kept here (:meth:`keep`, :meth:`put`)."""
        out = copy.copy(self)
        out._old = {k: self._old[k] for k in keys if k in self._old}
        out._new, out._dropped = {}, set()
        return out

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return {}
        files, since = doc.get("files"), doc.get("since")
        if doc.get("scanner") != self.scanner or not isinstance(files, dict) or not _int(since):
            return {}
        # Entries are checked one by one when asked: a racy one against the cache's own time.
        self._written = since
        return files

    def get(self, key: str, st: os.stat_result, sizes: embedded.SizeFilter | None) -> Learnt | None:
        """What an earlier scan learnt of the file ``key`` (its real path), now in state ``st``,
        when that holds for a scan seeking ``sizes`` (None: every size); else None (read it)."""
        found = _entry(self._old.get(key))
        if found is None:
            return None
        was, learnt, small, refused, tags = found
        if was != state(st) or _racy(was, self._written):
            return None
        may: Callable[[int], bool] = sizes.may_match if sizes is not None else lambda _n: True
        if small >= embedded.smallest_sought(sizes) or any(may(n) for n in refused):
            return None
        if tags and not self._untagged(tags, sizes):
            return None
        with self._lock:
            self._new[key] = self._old[key]
        return learnt

    def _untagged(self, tags: str, sizes: embedded.SizeFilter | None) -> bool:
        """Whether none of ``tags`` (what a read tagged as a key might be) is a key sought now:
        none is a MAC of the tombstones as they are now (its first :data:`KEY_MARK` digits;
        a tag that was one made the file a find, which leaves no entry)."""
        marks = getattr(sizes, "key_marks", None)
        return marks is not None and marks.isdisjoint(tags.split(" "))

    def put(self, key: str, st: os.stat_result, read: Any, noted: Noted | None) -> None:
        """Keep what this scan read of the file ``key`` in state ``st`` (``read``: a
        :class:`~visage_ml.rights.content_scan.Read`; ``noted``: what its read passed over)."""
        was = state(st)
        # A file of a key's size is not kept: its SHA-256 is a check value of whatever key it is
        # (the tombstone key, a master key, an erased subject's), and it is read again at once.
        if read.digest is None or _racy(was, self.since) or read.size == embedded.KEY_SIZE:
            return
        value = {
            "state": list(was),
            "sha256": read.digest,
            "size": read.size,
            "inner": list(read.inner),
            "opaque": read.opaque,
            "held": list(read.held),
            "kind": read.kind,
            "expands": read.expands,
            "small": noted.small if noted is not None else -1,
            "refused": sorted(noted.refused) if noted is not None else [],
            "tags": " ".join(sorted(noted.tags)) if noted is not None else "",
        }
        with self._lock:
            self._new[key] = value

    def keep(self, key: str) -> None:
        """Keep the entry of ``key`` as it was: a scan process had it from :meth:`get`."""
        with self._lock:
            self._new[key] = self._old[key]

    def drop(self, keys: Iterable[str]) -> None:
        """Keep nothing of the files ``keys``: those found to hold what was sought, those the
        walk passed over."""
        with self._lock:
            self._dropped.update(keys)

    def save(self) -> None:
        """Write the cache: what this scan learnt or used, and what the cache held of files this
        scan did not read that are still in the state their entry names (a DVC store the doctor
        does not walk); never a file dropped or gone. A folder this user cannot write leaves the
        cache as it was (every file is read next time)."""
        files = {k: v for k, v in self._new.items() if k not in self._dropped}
        for key, value in self._old.items():
            if key in files or key in self._dropped or key in self._new:
                continue
            found = _entry(value)
            if found is None or _racy(found[0], self._written):
                continue
            with contextlib.suppress(OSError):
                if state(os.stat(key)) == found[0]:
                    files[key] = value
        if files == self._old:
            return
        doc = {"format": FORMAT, "scanner": self.scanner, "since": self.since, "files": files}
        try:
            private_dir(self.path.parent)
            for left in leftovers(self.path):
                left.unlink(missing_ok=True)
            data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
            atomic_write_bytes(self.path, data, mode=0o600)
        except OSError as exc:
            log.debug("file scan cache not written: %s", type(exc).__name__)
