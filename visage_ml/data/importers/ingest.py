"""Taking files in: reading untrusted files, skipping duplicates, registering the persons.

Registration moves the staged images of each accepted person into a
:class:`~visage_ml.data.rawstore.RawTransaction` under the person's pid; a known subject who
withdrew consent, objected, or is restricted or being erased gets no new images.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visage_ml.data.importers.basis import ImportBasis
from visage_ml.data.importers.common import (
    ERASED_SUBJECT,
    MAX_FILE_BYTES,
    NOT_A_REGULAR_FILE,
    SUBJECT_RIGHTS,
    SYMLINK,
    TOO_LARGE,
    UNREADABLE,
    ImportFormat,
    Item,
    Skip,
)
from visage_ml.data.importers.result import ImportResult
from visage_ml.data.manifest import ROLE_BOTH
from visage_ml.data.rawstore import RawTransaction
from visage_ml.privacy.core import NewSubject, PrivacyCore
from visage_ml.privacy.registry import ERASED, ERASURE_PENDING, OBJECTED, RESTRICTED, WITHDRAWN
from visage_ml.privacy.tombstones import Tombstones

# Registry states that forbid adding data of an existing subject (the registry's reason codes).
_BLOCKING_STATES = frozenset({ERASED, ERASURE_PENDING, OBJECTED, RESTRICTED, WITHDRAWN})


def read_untrusted(path: Path) -> bytes:
    """Read a regular file without following a link (raises :class:`FileRefused`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if os.path.islink(path):
            raise FileRefused(SYMLINK, "symbolic links are never followed") from None
        raise FileRefused(UNREADABLE, type(exc).__name__) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(NOT_A_REGULAR_FILE, "not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise FileRefused(TOO_LARGE, f"{st.st_size} bytes")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_FILE_BYTES:
                raise FileRefused(TOO_LARGE, "grew while read")
        return b"".join(chunks)
    except OSError as exc:
        raise FileRefused(UNREADABLE, type(exc).__name__) from None
    finally:
        os.close(fd)


class FileRefused(Exception):  # noqa: N818 - control flow inside import_dataset, never escapes
    """A file that is not read: a reason code and a detail for the report."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Accepted:
    """An image that passed the checks and waits, staged, for its person's registration."""

    image_id: str
    item: Item
    sha256: str
    source_sha256: str
    width: int
    height: int
    # The source file's size: what an erasure's scans need to read only files that could be it.
    source_size: int | None = None


def _common(values: list[Any]) -> Any:
    """The value all images agree on, else None (a subject's attribute from its images)."""
    present = {v for v in values if v is not None}
    return present.pop() if len(present) == 1 and None not in values else None


def register_persons(
    core: PrivacyCore,
    txn: RawTransaction,
    accepted: Mapping[str, list[Accepted]],
    *,
    basis: ImportBasis,
    spec: ImportFormat,
    result: ImportResult,
    role: str = ROLE_BOTH,
) -> dict[str, str]:
    """Register the persons of ``accepted``, place their images, add the table rows.

    A person already in the vault under their reference or one of their items' aliases is a
    known subject. A known subject who has withdrawn consent, objected, or is restricted or
    being erased gets no new images (``subject_rights``). ``role`` (training, evaluation or
    both) is recorded for new subjects; a known subject keeps the role recorded first. Returns
    image id -> pid of what was placed.
    """
    if not accepted:
        return {}
    refs = list(accepted)
    before = set(core.registry.states())
    # Aliases: the references earlier imports may have recorded this person under (UTKFace's
    # per-file names): such a person keeps their pid.
    subjects = [
        NewSubject(
            external_ref=ref,
            aliases=tuple(dict.fromkeys(a for acc in accepted[ref] for a in acc.item.aliases)),
        )
        for ref in refs
    ]
    pids = core.add_subjects(subjects, source=spec.source, snapshot=False)
    states = core.registry.states()
    placed: dict[str, str] = {}
    subject_rows, image_rows = [], []
    for ref, pid in zip(refs, pids, strict=True):
        accs = accepted[ref]
        if pid in before:
            reasons = {states[pid].decision(p).reason for p in basis.purposes}
            blocked = sorted(reasons & _BLOCKING_STATES)
            if blocked:
                for acc in accs:
                    txn.drop(acc.image_id)
                    result.skipped.append(Skip(acc.item.rel, SUBJECT_RIGHTS, blocked[0]))
                continue
            result.subjects_updated += 1
        else:
            result.subjects_added += 1
        for acc in accs:
            txn.place(acc.image_id, pid)
            placed[acc.image_id] = pid
            attrs = {k: acc.item.attrs.get(k) for k in ("age", "age_band", "gender", "group")}
            image_rows.append(
                {
                    "pid": pid,
                    "image_id": acc.image_id,
                    "sha256": acc.sha256,
                    "source_sha256": acc.source_sha256,
                    "source_size": acc.source_size,
                    "width": acc.width,
                    "height": acc.height,
                    **attrs,
                }
            )
        common = {
            k: _common([a.item.attrs.get(k) for a in accs]) for k in ("age", "gender", "group")
        }
        subject_rows.append({"pid": pid, "source": spec.source, "role": role, **common})
    txn.add_subjects(subject_rows)
    txn.add_images(image_rows)
    result.images_imported = len(image_rows)
    return placed


class ErasedFilter:
    """Keeps erased people out of an import: the keyed tombstones of their erasure.

    A file is refused when the person's external reference (or an alias) or the file's SHA-256
    (as read, or of its re-encoded PNG) matches a tombstone; a person any of whose files matched
    is refused whole, files accepted before the match included (:meth:`drop_accepted`). All
    refusals carry the reason ``erased_subject`` and are counted, never listed by path: the
    import report is read without the tombstone key, and the path names the erased person.
    """

    def __init__(self, tombstones: Tombstones) -> None:
        self.tombstones = tombstones
        self.active = len(tombstones) > 0
        self.refs: set[str] = set()
        self._checked: dict[str, bool] = {}

    def _has_ref(self, ref: str) -> bool:
        if ref not in self._checked:
            self._checked[ref] = self.tombstones.has_ref(ref)
        return self._checked[ref]

    def person(self, ref: str, aliases: tuple[str, ...] = ()) -> bool:
        """Whether the person ``ref`` (also recorded as any of ``aliases``) is an erased
        subject (known so far).

        Each reference is asked once; the files of one person may bring different aliases (a
        UTKFace photograph's two copies), so every file's are asked.
        """
        if not self.active:
            return False
        if any(self._has_ref(r) for r in (ref, *aliases)):
            self.refs.add(ref)
        return ref in self.refs

    def file(self, ref: str, sha256: str) -> bool:
        """Whether a file with this SHA-256 belonged to an erased subject (then so does ``ref``)."""
        if not self.active or not self.tombstones.has_file(sha256):
            return False
        self.refs.add(ref)
        return True

    def skip(self, result: ImportResult) -> None:
        """Count a file as not imported with reason ``erased_subject`` (without its path)."""
        result.withheld[ERASED_SUBJECT] += 1

    def drop_accepted(
        self,
        txn: RawTransaction,
        accepted: dict[str, list[Accepted]],
        result: ImportResult,
        key_to_image: dict[str, str],
    ) -> None:
        """Drop the staged files of persons found erased after some of their files passed."""
        for ref in sorted(self.refs & set(accepted)):
            for acc in accepted.pop(ref):
                txn.drop(acc.image_id)
                self.skip(result)
                if acc.item.key and key_to_image.get(acc.item.key) == acc.image_id:
                    del key_to_image[acc.item.key]
