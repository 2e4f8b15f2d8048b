"""Whether the erased subjects of a tombstone set had any file but their PNGs: what lets a header
word on sizes of an earlier version (:mod:`visage_ml.privacy.tombstones`, written while the sizes
of the files an import read were not recorded) speak for every file.

An import records, for each image, the SHA-256 of the data set's file it read, and the erasure
puts it in the tombstones (kind ``sha256``); earlier versions did so without its size. A subject
SynthFaces made has no such file: its images are the PNGs it rendered (``images.parquet`` holds
no ``source_sha256`` for them), and no import can reach it (it has no identity record, so no
reference an import reads leads to its pid). So where every erased subject was registered by
SynthFaces alone, every file in the set is one of the PNGs, whose sizes the word vouched for.

Which subjects were erased is asked of the tombstones themselves (the pid's MAC, under the key),
and how each was registered of the ledger's ``subject.added`` entries (their ``source``), once
the ledger verifies (hash chain and signed anchors) under the public key of the signing key in
``secrets/``: neither an unkeyed edit of the ledger nor a replaced ``ledger.pub`` makes a
subject SynthFaces'. Anything unsure (no ledger, one that does not verify or changes while read,
no erased subject it registers, one registered by an import, by hand or twice) answers False:
every file is read. Tombstones are written only by the erasure of a subject the ledger
registers; what this cannot see is a ledger put back to a backup older than a subject's
registration, with the tombstones of their erasure kept.
"""

from __future__ import annotations

import logging
import os

from visage_ml.config import ProjectPaths
from visage_ml.privacy.keys import check_pid, load_or_create_signing_key
from visage_ml.privacy.ledger import Ledger, LedgerError
from visage_ml.privacy.registry import SYNTHFACES_SOURCE
from visage_ml.privacy.tombstones import KIND_PID, Tombstones

log = logging.getLogger(__name__)

_ADDED = "subject.added"


def _stamp(path: os.PathLike[str]) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def registered_sources(paths: ProjectPaths) -> dict[str, set[str]] | None:
    """pid -> every ``source`` the ledger's ``subject.added`` entries give it, read from a
    ledger that verifies under the signing key's public key; None when it cannot be shown to."""
    if not paths.ledger.is_file() or not paths.ledger.stat().st_size:
        return None
    ledger = Ledger(
        paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key
    )
    try:
        before = _stamp(paths.ledger)
        # The key in secrets/, not ledger.pub alone: a ledger re-signed under a key written
        # over ledger.pub does not verify (and a ledger.pub not of the key is an error).
        pub = load_or_create_signing_key(
            paths.signing_key, paths.ledger_public_key, ledger_path=paths.ledger
        ).public_key()
        if not ledger.verify(pub, all_signatures=False).ok:
            return None
        sources: dict[str, set[str]] = {}
        for entry in ledger.entries(containing=f'"{_ADDED}"'.encode()):
            if entry.type == _ADDED and entry.pid:
                source = (entry.payload or {}).get("source")
                sources.setdefault(str(entry.pid), set()).add(str(source))
        if _stamp(paths.ledger) != before:  # appended to while read: asked again later
            return None
    except (LedgerError, OSError, ValueError, TypeError, KeyError) as exc:
        log.info("the ledger cannot show how erased subjects were registered (%s)", exc)
        return None
    return sources


def no_unsized_files(paths: ProjectPaths, key: bytes, held: frozenset[str]) -> bool:
    """Whether the signed ledger shows that every subject whose pid's MAC is in ``held`` was
    registered by SynthFaces alone (and at least one is): none had a file an import read."""
    sources = registered_sources(paths)
    if sources is None:
        return False
    try:
        erased = [p for p in sources if Tombstones.mac_with(key, KIND_PID, check_pid(p)) in held]
    except ValueError:  # a pid the ledger should not hold: not shown
        return False
    return bool(erased) and all(sources[pid] == {SYNTHFACES_SOURCE} for pid in erased)
