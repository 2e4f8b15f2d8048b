"""Exact copies of the erased content anywhere the verifier looks: found by hash, removed, counted.

The verifier (:mod:`visage_ml.rights.certify`) hashes every file of the places a subject's data
could be for the content hashes a certificate lists and every erased image's plaintext (but
a file of a size none of that content has, which cannot be a copy and is not read). This
store does the same walk, with the same hashes and the same rule for what is kept
(:mod:`visage_ml.rights.content_scan`), before the certificate is made: a copy someone saved
(the subject's photo in ``data/interim`` or ``reports/``, a sealed file in a backup folder) is
removed (overwritten, then deleted) rather than certified and found afterwards. The subject's
keys as unwrapped are sought too (:mod:`.unwrapped`): printed in a notebook or a text file, as
hex or base64, the run is cut out of it, as a key file's base64 is; a file that is the key alone
is removed.

Only exact copies: a re-encoded or cropped face has other bytes, and is for ``visage privacy
doctor`` to list for review. Kept: a file of ``data/raw`` its images table lists under another
current subject (a photograph two subjects share), and the DVC objects with its md5, listed in
the certificate by a keyed MAC of the request and the path (``claims.copies_in_use``: no name
another certificate lists); content the certificate declares still in use
(:func:`~visage_ml.rights.erasure.base.retained_shared`); the empty file.
DVC's cache and every remote are looked through too, as the verifier does (a copy tracked
with ``dvc add`` has its object there, which ``dvc checkout`` or ``dvc pull`` would put back;
one pushed and gone from the cache is there alone): a remote on this file system as files, any
other (S3) through DVC's filesystem API, listed once with every size, an object of a size
nothing sought has told from a notebook, or a file that holds others, by a ranged read of its
first bytes (read whole only when it is one). The ``.dvc`` file
that tracked a copy then names an object that is gone (``dvc status`` says so); on the local
stack's S3 the volumes are compacted after (:func:`_on_stack`). A remote that
cannot be reached or listed stops the erasure before the certificate (:data:`MSG_REMOTE_DOWN`):
it is not shown clean. The subject's own objects are the dvc step's.

A copy taken out of ``data/raw`` (a photograph filed under another subject with a name no table
lists, ``dvc add``ed) was recorded by the raw step's ``dvc add``, which runs first: ``data/raw``
is recorded again, under the raw store's lock (:func:`.raw.record_again`), whose md5 the
certificate then gives as ``raw_md5_after``; the plan counts such copies (``copies_in_data_raw``),
so that a run resumed after they went records it again too.

The ledger and the certificate record a count per top folder (``top level`` for the project's
own files), never a path or a hash: a file name may be the person's name, and a plaintext's hash
leads a photograph to the pid. A copy that cannot be removed stops the erasure before the
certificate (:data:`MSG_NOT_REMOVED`). A run resumed after an earlier one removed some counts, per
folder, the larger of the earlier plan's count and its own.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.data.rawstore import RawStore
from visage_ml.io import secure_unlink
from visage_ml.privacy.notebooks import drop_images
from visage_ml.rights import content_scan, embedded
from visage_ml.rights.content_hashes import ContentHashes
from visage_ml.rights.embedded import cut_encoded
from visage_ml.rights.erasure import dvc_remote, raw
from visage_ml.rights.erasure.base import (
    CRYPTO_SHREDDED,
    Artefact,
    Context,
    Outcome,
    Plan,
    outcome_of,
    retained_shared,
)
from visage_ml.rights.erasure.dvc import stack_remote
from visage_ml.stack.proc import StackError

FOUND = "copies_found"
REMOVED = "copies_removed"
IN_USE = content_scan.IN_USE
IN_GIT = "copies_in_git"
HELD = "copies_held_inside"
IN_RAW = "copies_in_data_raw"
RAW_AFTER = "raw_md5_after"  # data/raw's md5 as recorded again (the certificate's, then)
MSG_NOT_REMOVED = (
    "{n} exact copy(ies) of the erased content could not be removed ({where}); the erasure stops "
    "before its certificate. Make them removable (a read-only mount, an immutable file, a "
    "folder's permissions) or delete them, then run `visage privacy resume`"
)
MSG_UNREADABLE = (
    "{n} file(s) could not be read, or are notebooks too large to look inside, or archives "
    "that expand too far to look inside (a zip bomb, or near enough) or have a damaged member "
    "or that there was no room to unpack in .visage/ to look inside, or files holding more "
    "image starts than any image file has, or databases that could not be read to their end "
    "(damaged, encrypted, a -wal file not yet checkpointed or a "
    "-journal left by a crash too large to read with its database), or databases with deleted "
    "rows still in their freed space that may be a photograph, anyone's: whose cannot be told "
    "from what is left ({where}), so none of them "
    "is shown to be no copy of the "
    "erased content; the erasure stops before its certificate. Make them readable to this "
    "user (or delete them, clear a notebook's outputs, unpack an archive, free disk space, "
    "repair a database, "
    'checkpoint one: `sqlite3 <file> "PRAGMA wal_checkpoint(TRUNCATE)"`, play its -journal '
    'back: `sqlite3 <file> "PRAGMA integrity_check"`, clear its freed space: `sqlite3 <file> '
    '"VACUUM"` (and `PRAGMA secure_delete = ON` before deleting next time); `visage privacy '
    "doctor` lists them), then run `visage privacy resume`"
)
MSG_REMOTE_DOWN = (
    "the DVC remote(s) {names} could not be reached or listed, so none of their objects is shown "
    "to be no copy of the erased content (an object pushed there alone comes back with `dvc "
    "pull`); the erasure stops before its certificate. Make them reachable from here (`visage "
    "stack up`, the network, the remote's credentials: `dvc push` works), or remove a remote "
    "that holds nothing from .dvc/config, then run `visage privacy resume`"
)
MSG_NOT_LISTED = "not reached or not listed ({why}), its objects not looked at"
MSG_IN_GIT = (
    "{n} object(s) of the project's git repository hold erased content, or are too large or "
    "expand too far to look inside (a file committed, in any branch, tag, stash, reflog or DVC "
    "experiment); the erasure stops before its "
    "certificate. `visage privacy doctor` lists where; rewrite them out of the history (`git "
    "filter-repo --invert-paths --path <file>`), expire the reflog and prune (`git reflog "
    "expire --expire=now --all && git gc --prune=now`), push the rewritten history and have "
    "every clone do the same, then run `visage privacy resume`"
)

MSG_HELD = (
    "{n} file(s) hold erased content inside other content ({where}: an archive, a pickle, an "
    "array, a table, a database, a PDF, a data set's container (Arrow, HDF5, LMDB, "
    "TFRecord) or a UTF-16 text that does not decode exactly, which could not be written back "
    "as it was (an odd byte at its end)), which the erasure neither rewrites nor deletes with "
    "the rest of what they hold; it stops before its certificate. `visage privacy doctor` lists "
    "them; take the erased photograph out of each (a database: delete its rows, then `VACUUM`, "
    "or its freed pages keep the bytes; or delete the file), then run `visage privacy resume`"
)


def _artefacts(ctx: Context) -> list[Artefact]:
    """What the certificate will list: every step's artefacts so far."""
    return [a for step in (ctx.planned, ctx.done) for rec in step.values() for a in rec]


def _hashes(ctx: Context, pid: str, artefacts: list[Artefact]) -> ContentHashes:
    """The verifier's hashes: what ``artefacts`` name less the content the current data shares,
    and every erased image's plaintext."""
    retained = retained_shared(artefacts, ctx.infos.get("dvc") or {})
    return ContentHashes.of(ctx.paths, artefacts, exclude=[h for _, h in retained], pid=pid)


@dataclass(frozen=True)
class Copy:
    """One exact copy: a file (``path``), an image a notebook holds (``path``, and the SHA-256s
    of its images to remove, ``images``), erased content a text file holds base64-encoded
    (``path``, and the SHA-256s to cut out, ``encoded``), or an object of a DVC remote not on
    this file system (``store``, ``oid``); ``where`` is what the records count it under."""

    where: str
    path: Path | None = None
    store: Any = None
    oid: str = ""
    images: frozenset[str] = frozenset()
    encoded: frozenset[str] = frozenset()

    @property
    def rewritten(self) -> bool:
        """Whether the file stays, rewritten without the erased content (not removed)."""
        return bool(self.images or self.encoded) and self.path is not None

    def remove(self) -> None:
        if self.rewritten and self.path is not None:
            if self.images:
                # The notebook stays, without the outputs that showed the erased content.
                drop_images(self.path, lambda b: hashlib.sha256(b).hexdigest() in self.images)
            if self.encoded:
                # An HTML export, a JSON or CSV file stays, without the encoded photograph.
                cut_encoded(self.path, self.encoded)
        elif self.path is not None:
            secure_unlink(self.path)
        else:
            self.store.remove(self.oid)

    def exists(self) -> bool:
        if self.rewritten and self.path is not None:
            return self.path.exists() and bool(
                set(content_scan.held_in(self.path)) & (self.images | self.encoded)
            )
        return self.path.exists() if self.path is not None else bool(self.store.exists(self.oid))


@dataclass(frozen=True)
class Found:
    """What :func:`_found` found: the ``copies`` to remove, how many files of ``data/raw`` that
    matched are other current subjects' data (``in_use``: kept, as the certificate records them,
    :func:`~visage_ml.rights.content_scan.in_use_name`; the verifier's rule
    :func:`~visage_ml.rights.content_scan.in_use`), and how many git objects hold erased
    content (``in_git``: only a rewrite of the history removes them), the files that could
    not be read, by top folder (``unreadable``: none of them is shown to be no copy), the
    files that hold erased content among other content the erasure does not rewrite, by top
    folder (``held``: an archive made for a colleague, a pickle; deleting one would take the
    rest with it, so the operator decides), and the DVC remotes that could not be listed,
    with why (``down``: none of their objects is shown to be no copy either)."""

    copies: list[Copy] = field(default_factory=list)
    in_use: list[str] = field(default_factory=list)
    in_git: int = 0
    unreadable: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    down: dict[str, str] = field(default_factory=dict)


def git_allowed(paths: ProjectPaths, pid: str, artefacts: Iterable[Artefact]) -> set[str]:
    """What a git object may hold and not stop the erasure
    (:func:`~visage_ml.rights.content_scan.git_hits`): the current subjects' photographs, and
    the erased files sealed under a destroyed key (``crypto-shredded``: not a key file)."""
    rows = [a for a in artefacts if isinstance(a, Mapping) and a.get("sha256")]
    shredded = {
        str(a["sha256"])
        for a in rows
        if (a.get("outcome") or outcome_of(a, set())) == CRYPTO_SHREDDED
    }
    return shredded | content_scan.current_pngs(paths, pid)


def _found(ctx: Context, pid: str) -> Found:
    artefacts = _artefacts(ctx)
    hashes = _hashes(ctx, pid, artefacts)
    if not len(hashes) and hashes.tombstones is None:
        return Found()
    # A file a step recorded is that step's (removed, or rewritten without the subject where it
    # is shared): never taken for a copy of itself.
    recorded = {(ctx.paths.root / str(a["path"])).resolve() for a in artefacts if a.get("path")}
    setup = ctx.dvc_setup() if ctx.is_dvc else None
    # A file of a size nothing sought has is not read (it cannot be a copy), nor one unchanged
    # since an earlier scan read it, when what that learnt holds for what is sought now.
    walked = content_scan.roots(ctx.paths, setup)
    embedded.spill_into(ctx.paths.root)
    cache = content_scan.file_cache(ctx.paths)
    hashed = content_scan.hash_files(walked, skip=recorded, sizes=hashes, cache=cache)
    hits = [h for h in hashed if h.matches(hashes)]
    kept = content_scan.in_use(ctx.paths, hits, pid=pid)
    root = ctx.paths.root
    # A notebook a store holds goes whole: an object is its content (DVC's name for it), the
    # version of a file DVC keeps (and so does any object holding erased content inside). A
    # file of the project that holds it among other content it cannot be cut from (an
    # archive, a pickle, an array, a table) stops the erasure instead.
    held = [h for h in hits if h.path not in kept and holds_inside(h, hashes)]
    stopping = {h.path for h in held}
    found = [
        Copy(h.where(root), store=h.root.remote, oid=str(h.oid))
        if h.root.remote is not None
        else Copy(h.where(root), path=h.path)
        if h.digest in hashes or h.root.store
        else Copy(
            h.where(root),
            path=h.path,
            images=frozenset(d for d in h.inner if d in hashes),
            encoded=frozenset(d for d in h.held if d in hashes),
        )
        for h in hits
        if h.path not in kept and h.path not in stopping
    ]
    allowed = git_allowed(ctx.paths, pid, artefacts)
    in_git = len(content_scan.git_hits(root, hashes, allowed=allowed, cached=True))
    unreadable = Counter(h.where(root) for h in hashed if h.unreadable)
    down = {h.where(root): h.down for h in hashed if h.down}
    mac, rid = ctx.core.tombstones.mac, ctx.request_id
    names = sorted({content_scan.in_use_name(mac, root, f, request_id=rid) for f in kept.files})
    inside = dict(sorted(Counter(h.where(root) for h in held).items()))
    return Found(
        found,
        names,
        in_git,
        dict(sorted(unreadable.items())),
        inside,
        dict(sorted(down.items())),
    )


def holds_inside(h: content_scan.Hashed, hashes: ContentHashes) -> bool:
    """Whether ``h``, a file of the project (not a store's object), holds erased content among
    other content the erasure does not take it out of (an archive, a pickle, an array, a
    table, a PDF, a data set's container): it stops the erasure, for the operator to decide
    (:data:`MSG_HELD`)."""
    return h.digest not in hashes and not h.root.store and not _rewritable(h, hashes)


def _rewritable(h: content_scan.Hashed, hashes: ContentHashes) -> bool:
    """Whether the erased content ``h`` holds inside can be taken out of it, the file kept: a
    notebook's images, a text file's base64 runs that are the erased content itself (a UTF-16
    text's too, where it decodes exactly: it is written back byte for byte); not what an
    archive or a pickle holds, nor an archive base64-encoded in a text file (cutting its run
    would take the rest of what it holds)."""
    held = {d for d in h.held if d in hashes}
    if not held:
        return True
    if h.kind not in (embedded.TEXT, embedded.UTF16):
        return False
    try:
        return held <= embedded.encoded(h.path)
    except OSError:  # gone or unreadable since the scan: the erasure's next look says so
        return False


def _count(copies: list[Copy]) -> dict[str, int]:
    return dict(sorted(Counter(c.where for c in copies).items()))


def plan(ctx: Context, pid: str) -> Plan:
    """The copies, counted by top folder (the files themselves stay in this run's memory); a
    folder's count is at least what an earlier run of the request planned and removed."""
    result = _found(ctx, pid)
    found, in_use = result.copies, result.in_use
    now = _count(found)
    before = ctx.infos.get("copies") or {}
    earlier = before.get(FOUND) or {}
    counts = {f: max(earlier.get(f, 0), now.get(f, 0)) for f in sorted({*earlier, *now})}
    info: dict[str, Any] = {FOUND: counts}
    earlier_in_use = before.get(IN_USE)
    if in_use := sorted({*in_use, *(earlier_in_use if isinstance(earlier_in_use, list) else [])}):
        info[IN_USE] = in_use
    if result.in_git:
        info[IN_GIT] = result.in_git
    if result.held:
        info[HELD] = result.held
    # Counted for a resumed run too, which finds them gone: data/raw is recorded again.
    if in_raw := max(int(before.get(IN_RAW) or 0), sum(1 for c in found if _in_raw(ctx, c))):
        info[IN_RAW] = in_raw
    return Plan(info=info, state=result)


def _in_raw(ctx: Context, copy: Copy) -> bool:
    """Whether ``copy`` is a file of ``data/raw`` (one ``data/raw.dvc`` may record)."""
    raw_dir = ctx.paths.raw.resolve()
    return copy.path is not None and raw_dir in copy.path.resolve().parents


def _on_stack(ctx: Context, copies: list[Copy]) -> tuple[Any, list[str]] | None:
    """The local stack's SeaweedFS and the volume needles of the ``copies`` on its S3, when
    some are there or its volumes hold deleted bytes (an interrupted run deleted some); else
    None. Deleting an S3 object there only marks its needle deleted: its bytes stay in the
    volume file until it is compacted, as the dvc_remote step does for the subject's own."""
    found = stack_remote(ctx)
    if found is None or not found[0].local:
        return None
    stack, stores = found
    names = {s.name for s in stores}
    mine = [c for c in copies if c.store is not None and c.store.name in names]
    seaweed = stack.seaweed()
    if not seaweed.running():
        if mine:
            raise StackError(dvc_remote.NOT_RUNNING)
        return None
    if not mine and not seaweed.garbage_bytes():
        return None
    bucket = seaweed.bucket
    return seaweed, [
        n for c in mine for n in seaweed.chunk_ids(dvc_remote.object_key(c.store, c.oid, bucket))
    ]


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Remove the copies; an OSError saying where (top folder) and what to do if one stays."""
    result: Found = plan.state if plan is not None else Found()
    info = (plan.info or {}) if plan is not None else {}
    found = result.copies
    stack = _on_stack(ctx, found)
    # A copy taken out of data/raw after the raw step's `dvc add` recorded it: data/raw is
    # recorded again without it, under the raw store's lock (no writer in between), or its
    # record names a file gone from the workspace and the cache (the verifier cannot tell).
    again = bool(info.get(IN_RAW)) and raw.tracked(ctx)
    store = RawStore(ctx.paths, core=ctx.core, track=False)
    stuck: dict[str, str] = {}
    with store.lock() if again else contextlib.nullcontext():
        for copy in found:
            try:
                copy.remove()
            except OSError as exc:
                stuck.setdefault(copy.where, exc.strerror or type(exc).__name__)
            except (ValueError, TypeError, AttributeError) as exc:  # a notebook not rewritable
                stuck.setdefault(copy.where, f"not rewritable ({type(exc).__name__})")
        raw_after = raw.record_again(ctx) if again else None
    if stuck:
        where = "; ".join(f"{folder}: {why}" for folder, why in sorted(stuck.items()))
        n = sum(1 for c in found if c.exists())
        raise OSError(MSG_NOT_REMOVED.format(n=n, where=where))
    if stack is not None:
        seaweed, needles = stack
        seaweed.vacuum(wait_for=needles)
    if result.unreadable:
        where = ", ".join(f"{folder}: {n}" for folder, n in result.unreadable.items())
        raise OSError(MSG_UNREADABLE.format(n=sum(result.unreadable.values()), where=where))
    if result.down:
        names = ", ".join(f"{label} ({why})" for label, why in result.down.items())
        raise OSError(MSG_REMOTE_DOWN.format(names=names))
    if result.held:
        where = ", ".join(f"{folder}: {n}" for folder, n in result.held.items())
        raise OSError(MSG_HELD.format(n=sum(result.held.values()), where=where))
    if result.in_git:
        raise OSError(MSG_IN_GIT.format(n=result.in_git))
    removed = {f: n for f, n in (info.get(FOUND) or {}).items() if n}
    out: dict[str, Any] = {REMOVED: removed}
    if IN_USE in info:
        out[IN_USE] = info[IN_USE]
    if raw_after is not None:
        out[RAW_AFTER] = raw_after
    return Outcome(info=out)


def verify(ctx: Context, pid: str) -> list[str]:
    """Top folders still holding an exact copy (of what this request's steps listed)."""
    result = _found(ctx, pid)
    git = [f"{content_scan.GIT_WHERE}: {result.in_git}"] if result.in_git else []
    held = [f"{folder}: {n}" for folder, n in result.held.items()]
    down = [f"{label}: {MSG_NOT_LISTED.format(why=why)}" for label, why in result.down.items()]
    return [f"{folder}: {n}" for folder, n in _count(result.copies).items()] + held + git + down
