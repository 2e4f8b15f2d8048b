"""One walk of every place erased content could be, shared by the erasure and the verifier.

The erasure's copies step (:mod:`visage_ml.rights.erasure.copies`) removes what this walk finds
before the certificate is made; the verifier (:mod:`visage_ml.rights.certify`) fails a
certificate when it still finds something. Both walk the same roots
(:func:`roots`: :func:`~visage_ml.rights.content_hashes.scanned_roots`, DVC's local stores, its
site cache and every other remote's objects, read through DVC's filesystem API), hash every file
once (:func:`hash_files`, in parallel) and apply the same rule
to what matches (:func:`in_use`), so that an erasure's own certificate never fails its verifier
over a file the erasure chose to keep. A file whose size nothing sought has
(:meth:`~visage_ml.rights.content_hashes.ContentHashes.may_match`) is looked at, not read: it
cannot be a copy. A notebook (its images are decoded from it: any file that begins as JSON, a
DVC or git object has no suffix) and DVC's ``.dir`` manifests (the verifier reads them for the
subject's folder) are read whatever their size.

That rule: a file that matches is a copy, to be removed, unless it is another current subject's
data, which the erasure keeps and the certificate lists, keyed (``claims.copies_in_use``): a
file of ``data/raw`` that its images table lists under a current subject (a photograph two
subjects share, in clear on a project not yet sealed; a sealed file filed byte for byte under
another subject), and the DVC objects with that file's md5. A copy filed under another subject after
the certificate is not among those, and the verifier reports it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import hashlib
import importlib
import json
import logging
import multiprocessing
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, NamedTuple

from visage_ml.config import ProjectPaths
from visage_ml.data import crops
from visage_ml.data.rawstore import PLAIN_EXTS, read_images
from visage_ml.io import CHUNK, atomic_write_bytes, leftovers, md5_file, usable_cpus
from visage_ml.privacy import datakeys, notebooks
from visage_ml.privacy.notebooks import embedded_images
from visage_ml.procenv import child_env
from visage_ml.rights import (
    embedded,
    embedded_archives,
    embedded_db,
    embedded_spill,
    scan_cache,
)
from visage_ml.rights.content_hashes import scanned_roots, walk_files
from visage_ml.rights.scan_cache import FileCache

log = logging.getLogger(__name__)

TOP_LEVEL = "top level"
# The certificate's list of the files of data/raw, identical to erased content, that other
# current subjects hold (kept by the erasure; the verifier accepts those, no other): each as
# ``~`` and 12 hex digits of a MAC of its request id and path under the tombstone key (the path
# names another subject), :func:`in_use_name`.
IN_USE = "copies_in_use"
IN_USE_KIND = "in_use_file"
IN_USE_HEX = 12


@dataclass(frozen=True)
class Root:
    """A place walked: ``where`` is what counts call it (None: the file's top folder in the
    project); ``store``: a DVC object store, whose files are named by their md5."""

    path: Path
    where: str | None = None
    store: bool = False
    git: bool = False
    # A DVC remote not on this file system (its ObjectStore: S3, SSH, ...), listed and read
    # through DVC's filesystem API; ``path`` is then its objects' folder there.
    remote: Any = field(default=None, compare=False)
    # The project's folder where an object of ``remote`` too large to hold is spilled, unnamed,
    # to be looked inside (:class:`_Reader`): DVC's own temporary folder.
    spill: Path | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Hashed:
    """One file walked (or one git object: ``path`` is then the repository's git folder): its
    SHA-256 (None: unreadable, or gone since the walk), size, and the SHA-256s of the images a
    notebook holds in base64 (``inner``)."""

    path: Path
    root: Root
    digest: str | None
    size: int
    inner: tuple[str, ...] = ()
    name: str = ""  # a git object's id
    # A notebook too large to look inside (over NOTEBOOK_MAX): its images are not shown clean.
    opaque: bool = False
    # False: not read, being of a size nothing sought has (``digest`` None).
    read: bool = True
    # The SHA-256s of the files it holds inside (an archive's members, a base64 run of a text
    # file, a pickled photo: :func:`~visage_ml.rights.embedded.inside`), and what it is
    # (:func:`~visage_ml.rights.embedded.kind`: a text file is rewritten without them).
    held: tuple[str, ...] = ()
    kind: str | None = None
    # Why a DVC remote (``root.remote``, ``path`` its folder) could not be listed: none of its
    # objects was looked at, so none is shown clean.
    down: str = ""
    # What it holds inside expands beyond what its size allows (a zip bomb, or near enough:
    # :class:`~visage_ml.rights.embedded.TooLarge`), or holds more image starts than any image
    # file has (:class:`~visage_ml.rights.embedded.TooManyStarts`), or a database could not be
    # read to its end (damaged, encrypted: :class:`~visage_ml.rights.embedded_db.NotRead`) or
    # holds deleted rows that may be a photograph in its freed space
    # (:class:`~visage_ml.rights.embedded_db.HoldsDeleted`): not shown clean.
    expands: bool = False

    @property
    def unreadable(self) -> bool:
        """There, but not readable (permissions, an I/O error), a notebook too large to look
        inside, or a file whose content expands too far to look inside: nothing shows it
        clean."""
        return (self.digest is None and self.size == UNREADABLE) or self.opaque or self.expands

    @property
    def gone(self) -> bool:
        """Gone since the walk (or unreadable): nothing of it was looked at."""
        return self.digest is None and self.read

    def matches(self, hashes: Container[str]) -> bool:
        """Whether the file, or an image it holds, is in ``hashes``."""
        return (self.digest is not None and self.digest in hashes) or any(
            d in hashes for d in (*self.inner, *self.held)
        )

    def where(self, project: Path) -> str:
        """What counts call it: the store's label, or its top folder (:data:`TOP_LEVEL`)."""
        if self.root.where is not None:
            return self.root.where
        try:
            parts = self.path.relative_to(project).parts
        except ValueError:
            return TOP_LEVEL
        return parts[0] if len(parts) > 1 else TOP_LEVEL

    @property
    def oid(self) -> str | None:
        """The DVC object id of a store's file (``ab/cdef…`` -> ``abcdef…``), else None."""
        if not self.root.store or len(self.path.parent.name) != 2:
            return None
        return self.path.parent.name + self.path.name


def store_label(store: Any) -> str:
    """What counts call a DVC store: ``dvc cache``, or ``dvc <remote name>``."""
    return "dvc cache" if store.kind == "cache" else f"dvc {store.name}"


def roots(paths: ProjectPaths, setup: Any = None) -> list[Root]:
    """Where to look: the project's scanned folders and top files, then (``setup``: an open
    :class:`~visage_ml.rights.dvc_objects.DvcSetup`) each local DVC store, the site cache and
    each DVC remote elsewhere (read through DVC's filesystem API, :func:`hash_files`)."""
    out = [Root(p) for p in scanned_roots(paths.root)]
    with contextlib.suppress(GitUnreadableError):  # said by git_objects, which reads the rest
        folder = git_dir(paths.root)
        # Git LFS keeps each tracked file's bytes under their SHA-256, plain files: the
        # repository's, and each submodule's.
        for repo in [folder, *_submodule_dirs(folder)] if folder is not None else []:
            if (repo / LFS_OBJECTS).is_dir():
                out.append(Root(repo / LFS_OBJECTS, GIT_LFS_WHERE))
    if setup is not None:
        out += [Root(s.local_path, store_label(s), True) for s in setup.stores if s.local_path]
        if setup.site_cache_dir is not None:
            out.append(Root(setup.site_cache_dir, "dvc site cache"))
        # A copy pushed and then gone from the cache and the workspace (`dvc gc -w -c`, a
        # clone that never pulled) is there alone, under its own md5 (a notebook's): only its
        # bytes show it, and `dvc pull` brings it back.
        out += [
            Root(Path(s.odb.path), store_label(s), True, remote=s, spill=dvc_tmp(setup.root))
            for s in setup.stores
            if s.local_path is None
        ]
    return out


def dvc_tmp(root: Path) -> Path:
    """DVC's temporary folder of the repository at ``root`` (``.dvc/tmp``)."""
    return Path(root) / ".dvc" / "tmp"


# The size of a file that is there but could not be read.
UNREADABLE = -1
# A notebook larger than this is not looked inside: not shown clean (``Hashed.opaque``).
NOTEBOOK_MAX = 256 << 20
NOTEBOOK_SUFFIX = ".ipynb"
NOTEBOOK_KEY = b'"cells"'
NOTEBOOK_V3_KEY = b'"worksheets"'
# Read whatever their size: the verifier reads a DVC ``.dir`` manifest for the objects and the
# subject's folder it lists; a notebook holds images.
ALWAYS_READ = (".dir", NOTEBOOK_SUFFIX)
# What a file that is not read shows first, to tell a notebook (any JSON) from the rest.
SNIFF = 4096


# What is sought, by size (:class:`~visage_ml.rights.content_hashes.ContentHashes`).
SizeFilter = embedded.SizeFilter


def _json_start(first: bytes) -> bool:
    """Whether a file beginning with ``first`` may be JSON (a notebook): ``{`` after a byte
    order mark and white space. A DVC or git object has no ``.ipynb`` suffix to go by."""
    return first.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"{"


def _inner(data: bytes) -> tuple[str, ...]:
    """SHA-256s of the images the notebook ``data`` holds in base64 (none when not one)."""
    if NOTEBOOK_KEY not in data and NOTEBOOK_V3_KEY not in data:
        return ()
    try:
        nb = json.loads(data.removeprefix(b"\xef\xbb\xbf"))
        images = embedded_images(nb)
    except (ValueError, UnicodeDecodeError, TypeError, AttributeError):
        return ()  # not JSON, or JSON of another shape: no notebook's images
    return tuple(hashlib.sha256(img).hexdigest() for img in images)


def held_in(path: Path) -> tuple[str, ...]:
    """SHA-256s of the images the notebook at ``path`` holds and of the files it holds inside
    (:mod:`visage_ml.rights.embedded`); none when unreadable."""
    read = _hash(path)
    return (*read.inner, *read.held)


@dataclass(frozen=True)
class Read:
    """What :class:`_Reader` found: SHA-256, size, the notebook's images' SHA-256s, whether it
    is a notebook too large to look inside, and what it holds inside (``held``, ``kind``)."""

    digest: str | None
    size: int
    inner: tuple[str, ...] = ()
    opaque: bool = False
    held: tuple[str, ...] = ()
    kind: str | None = None
    # What it holds inside expands too far to look inside (``Hashed.expands``).
    expands: bool = False


# What is looked inside from its file when too large to hold whole (over
# :data:`~visage_ml.rights.embedded.EMBED_MAX`): an archive or a compressed file member by member,
# a text file a window at a time, a table a few rows at a time, a pickle, an array or a PDF
# mapped (:func:`~visage_ml.rights.embedded.inside_large`); a database from its path.
FROM_FILE = embedded.LARGE


def _spill_file(folder: Path) -> IO[bytes]:
    """An unnamed file in ``folder`` (``O_TMPFILE`` on Linux: no name is left behind, even by a
    process killed while it writes; elsewhere named, and unlinked at once)."""
    folder.mkdir(exist_ok=True)
    return tempfile.TemporaryFile(dir=folder)


# The project's own sealed files (a photograph, a crops file: its magic, then ciphertext), the
# bulk of a project and of its DVC cache: where one is read (its size sought), its blocks are not
# searched for a tar's header past its first bytes (no tar is written under such a head).
SEALED = (datakeys.MAGIC, crops.MAGIC)


@dataclass
class _Reader:
    """One file's or object's bytes as they stream by: its SHA-256, size, the notebook it may
    be, and what it may hold inside (:mod:`visage_ml.rights.embedded`).

    ``spill``: a folder of the project where an object streamed from elsewhere (a remote's, a
    git blob) too large to hold (:data:`FROM_FILE`) is written, unnamed, as it streams, to be
    looked inside from there as a local file is (:func:`_inside_large`); never the system's
    temporary folder, which may be shared or kept. Where it cannot be written, ``spill_error``
    says why, and the object is not looked inside (its caller does not show it clean). None:
    nothing spilled (a local file is read again from itself)."""

    name: str = ""
    sizes: SizeFilter | None = None
    spill: Path | None = None
    n: int = 0
    json: bool | None = None
    kind: str | None = None
    parts: list[bytes] = field(default_factory=list)
    h: Any = field(default_factory=hashlib.sha256)
    spill_error: str = ""
    _file: IO[bytes] | None = None
    # A file told nothing by its first bytes: the search for a tar's header in every block.
    _search: embedded_archives.HeaderSearch | None = None

    def update(self, chunk: bytes) -> None:
        if self.json is None:
            # Told from the first CHUNK, however much comes at once (a file held is read whole).
            self.json = _json_start(chunk[:CHUNK])
            self.kind = embedded.kind(chunk[: embedded.SNIFF])
            if self.kind is None and not self.json and not chunk.startswith(SEALED):
                self._search = embedded_archives.HeaderSearch()
        self.h.update(chunk)
        self.n += len(chunk)
        if self._search is not None:
            chunk = self._tar_from(chunk)
            if not chunk:
                return
        if self.spill is not None and self.n > embedded.EMBED_MAX and self.kind in FROM_FILE:
            self._spill(self.spill, chunk)
        if self.n <= self._kept:
            self.parts.append(chunk)
        elif not self.json and self.parts:
            # Too large to hold: looked inside from its file, if at all (its first 64 MiB were
            # held to the end of the read, and through the read of it from its file).
            self.parts = []

    def _tar_from(self, chunk: bytes) -> bytes:
        """What of ``chunk``, the last bytes read of a file told nothing, is kept as a tar's
        (:data:`~visage_ml.rights.embedded.TAR`, held or spilled as one is): from the first block
        that is a header (:class:`~visage_ml.rights.embedded_archives.HeaderSearch`) on, as ``tar
        -xif`` reads it past the blocks before (a backup whose start was overwritten); b"" where
        none is yet. Read from its file, it is found again there
        (:func:`~visage_ml.rights.embedded_archives._tar_start`)."""
        assert self._search is not None
        begun = self._search.begun  # a block the chunk before began (a short read's)
        found = self._search.feed(chunk)
        if found < 0:
            return b""
        self._search, self.kind = None, embedded.TAR
        at = found - (self.n - len(chunk))
        return begun + chunk if at < 0 else chunk[at:]

    def _spill(self, folder: Path, chunk: bytes) -> None:
        """Write ``chunk`` to the spilled file, made in ``folder`` with what came before it when
        there is none yet; on an error (no room, a folder this user cannot write) spill no
        more."""
        try:
            if self._file is None:
                self._file = _spill_file(folder)
                self._file.writelines(self.parts)
                if not self.json:  # only the spilled file is read now (a notebook's parts are)
                    self.parts = []
            self._file.write(chunk)
            # A full disk said so here, not first when done() reads it back (a git blob's
            # error escaped the scan, a traceback where the verifier says why).
            self._file.flush()
        except OSError as exc:
            self.close()
            self.spill = None
            if not self.json:
                self.parts = []
            self.spill_error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)

    def close(self) -> None:
        """Let go of the spilled file (unnamed: its space is freed)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    @property
    def _kept(self) -> int:
        """How much is kept to look inside: a notebook's, or another holder's, whole."""
        if self.json:
            return NOTEBOOK_MAX
        return embedded.EMBED_MAX if self.kind is not None else -1

    def _held(self) -> tuple[str, ...]:
        if self.kind is None or self.n > embedded.EMBED_MAX:  # an archive: its file, streamed
            return ()
        data = b"".join(self.parts)
        return tuple(embedded.inside(data, self.kind, sizes=self.sizes))

    def done(self, *, look: bool = True) -> Read:
        """What was read; an object spilled is looked inside from its spilled file, then let
        go of; ``look`` False: nothing looked inside (the caller reads it from its file)."""
        try:
            read = self._done(look=look)
            if self._file is not None and look:
                self._file.flush()
                self._file.seek(0)
                read = _inside_large(read, self._file, self.sizes)
            return read
        finally:
            self.close()

    def _done(self, *, look: bool = True) -> Read:
        digest = self.h.hexdigest()
        try:
            held = self._held() if look else ()
        except embedded.TooLarge:  # a bomb, or near enough: nothing of it shown clean
            return Read(digest, self.n, kind=self.kind, expands=True)
        if not self.json:
            return Read(digest, self.n, held=held, kind=self.kind)
        if self.n <= NOTEBOOK_MAX:
            inner = _inner(b"".join(self.parts))
            return Read(digest, self.n, inner, held=held, kind=self.kind)
        first = self.parts[0] if self.parts else b""
        opaque = self.name.endswith(NOTEBOOK_SUFFIX) or NOTEBOOK_KEY in first
        return Read(digest, self.n, (), opaque, kind=self.kind)


def _inside_large(
    read: Read,
    fh: IO[bytes],
    sizes: SizeFilter | None,
    path: Path | None = None,
    *,
    paired: bool = False,
) -> Read:
    """``read`` with what a file too large to hold in memory (over
    :data:`~visage_ml.rights.embedded.EMBED_MAX`) holds inside, read from ``fh`` (a file, at
    its start): an archive member by member, a text file (a CSV of a dataset's photographs) a
    window at a time, a table (a data set's Parquet shard) a few rows at a time, a pickle, an
    array or a PDF mapped (:data:`FROM_FILE`); a database of this file system (``path``) table by
    table, opened read-only and immutable (nothing written beside it); ``paired``: a database
    and its ``-wal`` file, read together whatever their size
    (:func:`~visage_ml.rights.embedded_db.inside_path`)."""
    if (read.size <= embedded.EMBED_MAX and not paired) or read.expands:
        return read
    if read.kind not in FROM_FILE and not (read.kind == embedded.SQLITE and path is not None):
        return read
    try:
        held = tuple(
            embedded_db.inside_path(path, sizes=sizes)
            if read.kind == embedded.SQLITE and path is not None
            else embedded.inside_large(fh, read.kind, sizes=sizes)
        )
    except embedded.TooLarge:  # a bomb, or near enough: not shown clean
        return replace(read, expands=True)
    return replace(read, held=held)


def _read_open(fh: Any, path: Path, sizes: SizeFilter | None) -> Read:
    """What the file at ``path``, open as ``fh`` at its start, is and holds (:class:`Read`)."""
    reader = _Reader(path.name, sizes)
    size = os.fstat(fh.fileno()).st_size
    # Small enough to hold, and held to be looked inside (a notebook it may be, or what it is,
    # from its first bytes): read in one piece, which is looked inside as read (read a chunk at
    # a time, each text file or table was held twice at once, its chunks and their join: a
    # copy of every byte of it). What it grew by since is read on, a chunk at a time; any other
    # file streams, a chunk at a time held.
    head = fh.peek(SNIFF)[:SNIFF] if size <= embedded.EMBED_MAX else b""
    held = head and (_json_start(head) or embedded.kind(head) is not None)
    if held and (whole := fh.read(size + 1)):
        reader.update(whole)
    for chunk in iter(lambda: fh.read(CHUNK), b""):
        reader.update(chunk)
    # A database and its -wal file are read together, as SQLite reads them.
    paired = reader.kind == embedded.SQLITE and None not in embedded_db.pair(path)
    read = reader.done(look=not paired)
    large = read.size > embedded.EMBED_MAX
    if paired or (large and (read.kind in FROM_FILE or read.kind == embedded.SQLITE)):
        fh.seek(0)  # too large to hold, or a database with its -wal: read again from its file
        read = _inside_large(read, fh, sizes, path, paired=paired)
    return read


def _hash(
    path: Path,
    sizes: SizeFilter | None = None,
    *,
    cache: FileCache | None = None,
    key: str = "",
) -> Read:
    """What the file at ``path`` is and holds; with ``cache``, what an earlier scan learnt of
    it (``key``: its real path), unchanged since, when that holds for ``sizes``
    (:meth:`~visage_ml.rights.scan_cache.FileCache.get`), and what this read learns is kept
    there."""
    try:
        with open(path, "rb") as fh:
            if cache is None:
                return _read_open(fh, path, sizes)
            key = key or str(path.resolve())
            before = os.fstat(fh.fileno())
            known = cache.get(key, before, sizes)
            if known is not None:
                return Read(*known)
            noted = scan_cache.Noted(sizes) if sizes is not None else None
            read = _read_open(fh, path, noted)
            # Changed while read: what was read is of no state to key it by.
            if scan_cache.state(os.fstat(fh.fileno())) == scan_cache.state(before):
                cache.put(key, before, read, noted)
            return read
    except FileNotFoundError:  # gone since the walk: nothing left to judge
        return Read(None, 0)
    except OSError:  # there, but not readable: not shown clean (``Hashed.unreadable``)
        return Read(None, UNREADABLE)


def _looked_at(
    path: Path, sizes: SizeFilter | None, cache: FileCache | None = None, *, key: str = ""
) -> tuple[Read, bool]:
    """:func:`_hash` of ``path`` (``cache``: as it says, ``key`` its real path) and True,
    unless ``sizes`` shows from its size alone that it cannot be what is sought and its first
    bytes that it is no notebook and holds nothing inside
    (:func:`~visage_ml.rights.embedded.kind`: no text, archive, pickle, array, table, database,
    PDF or data set's container): then its size, opened (one this user cannot open is still
    :attr:`Hashed.unreadable`) but not read, and False."""
    if sizes is not None and not path.name.endswith(ALWAYS_READ):
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:  # gone since the walk
            return Read(None, 0), True
        except OSError:  # left for the read to say
            size = None
        if size is not None and not sizes.may_match(size):
            try:
                with open(path, "rb") as fh:
                    first = fh.read(SNIFF)
            except FileNotFoundError:
                return Read(None, 0), True
            except OSError:
                return Read(None, UNREADABLE), True
            # Told nothing: not read. A tar whose start was overwritten (``tar -xif`` reads it
            # from its first header however far) is found only in a file read anyway
            # (:class:`_Reader`): searching every such file would read all of a project's other
            # data at every scan, where the size filter exists so that none of it is.
            if not _json_start(first) and embedded.kind(first) is None:
                return Read(None, size), False
    return _hash(path, sizes, cache=cache, key=key), True


def _hashed(path: Path, root: Root, x: Read, read: bool) -> Hashed:
    """A file's (or a remote object's) :class:`Hashed`, from what reading it found."""
    return Hashed(
        path,
        root,
        x.digest,
        x.size,
        x.inner,
        opaque=x.opaque,
        read=read,
        held=x.held,
        kind=x.kind,
        expands=x.expands,
    )


def file_cache(paths: ProjectPaths) -> Path:
    """The project's file scan cache (:mod:`~visage_ml.rights.scan_cache`)."""
    return paths.root / scan_cache.FILES


def hash_files(
    walked: Sequence[Root],
    *,
    skip: Iterable[Path] = (),
    sizes: SizeFilter | None = None,
    cache: Path | None = None,
) -> list[Hashed]:
    """Every file under ``walked`` once (by real path; symbolic links not followed), but
    ``skip`` (real paths), with its SHA-256, in walk order; with ``sizes``, a file of a size
    that cannot match, and no notebook, is not read (``read`` False). A remote root's objects
    come after the files (:func:`_remote_objects`).

    ``cache``: the project's file scan cache (:func:`file_cache`): a file unchanged since an
    earlier scan read it is not read again when what that read learnt holds for ``sizes``
    (:mod:`~visage_ml.rights.scan_cache`), and the cache itself is passed over; the erasure's
    copies step and ``visage privacy doctor`` do so. The verifier does not: anyone able to
    write the project's state can edit the cache, so it reads every file and never the cache.
    What ``sizes`` holds (``digest in sizes``, as
    :class:`~visage_ml.rights.content_hashes.ContentHashes` says) leaves no entry behind."""
    skip = [Path(p) for p in skip]
    seen = set(skip)
    files = None
    if cache is not None:
        files = scan_cache.FileCache(cache, scanner=_scanner_id())
        seen.update(p.resolve() for p in (cache, *leftovers(cache)))
    sought = sizes
    if sizes is not None:  # the smallest size sought, worked out once for every file
        sizes = embedded.Floored(sizes)
    todo: list[tuple[Path, Root, Path]] = []
    for root in walked:
        if root.remote is not None:
            continue
        # The walk follows no link, a folder's or a file's: below its root a path is real as
        # walked, so the root alone is resolved (each file's was, a system call a folder of
        # its path: a quarter of a second a scan of 16,000 files). Not before a file is found:
        # a root that is a loop of links holds none.
        top: Path | None = None
        for path in walk_files(root.path):
            top = top or root.path.resolve()
            real = top / path.relative_to(root.path)
            if real not in seen:
                seen.add(real)
                todo.append((path, root, real))

    digests = _look_all(todo, sizes, files)
    local = [_hashed(p, r, x, read) for (p, r, _), (x, read) in zip(todo, digests, strict=True)]
    if files is not None:
        # What holds what is sought is the erased content's digest: never kept.
        found = sought if isinstance(sought, Container) else ()
        files.drop(str(p) for p in skip)
        files.drop(str(t[2]) for t, h in zip(todo, local, strict=True) if h.matches(found))
        files.save()
    return local + _remote_objects([r for r in walked if r.remote is not None], sizes)


# The local files of a scan are looked at in this many processes (the work is Python, value by
# value: threads of one process share one core's worth of it, two threads gave 1.0x).
SCAN_PROCESSES = min(8, usable_cpus())
# A scan reading less than this runs in threads of its own process: starting processes costs
# more (:func:`_start_method`). A pool of 2 to its first answer, on 2 idle cores (and busy with
# other work; benchmarks/bench_scan_processes.py): forked 0.015 s (0.01-0.04), from a fork
# server 0.015-0.02 s once it runs (0.03-0.05), 0.6-1.3 s the first time (1.3-1.7: the server
# started, importing this module and what the main script imports, once a process: the
# service's lifetime). 64 MiB of logs took 1.15 s in threads, 0.7 s in 2 processes of either.
PROCESS_MIN_BYTES = 64 << 20
# Where processes are spawned (no fork server: neither Linux nor macOS), each imports this
# module itself, every scan: 0.7-2.8 s a pool of 2.
SPAWN_MIN_BYTES = 256 << 20
# Set to a number, how many processes the scan starts at most; 0 or 1: none (threads only), for
# a host where forking a process that has loaded native libraries is not wanted.
PROCESSES_ENV = "VISAGE_SCAN_PROCESSES"
MSG_PROCESSES_ENV = f"{PROCESSES_ENV} must be a whole number of processes (0 or 1: none)"
# A process is handed files a batch at a time, up to this many or this many bytes (a large
# table alone: the processes stay busy to the end).
BATCH_FILES = 64
BATCH_BYTES = 8 << 20

MSG_SCAN_INCOMPLETE = (
    "a process of the content scan ended before the files it was given were looked at "
    "(killed: out of memory, or by a signal), so nothing of this scan was taken as clean and "
    "it stopped: give the machine more free memory, then run it again"
)


# A process or thread of the scan that hangs (a read the disk or a network file system never
# answers; in a forked process, a lock another thread of this process held at the fork, which
# nobody in the child will release) never hands its batch back: the scan waits for the next
# batch at most this long, plus the time the largest batch still out takes at STALL_RATE (a
# 96 MiB Parquet shard or pickle alone in its batch was looked inside at 52-65 MiB/s on 2 busy
# cores, benchmarks/bench_inside_large.py), then kills its processes (a thread cannot be
# killed: it is left behind) and stops.
STALL_SECONDS = 300
STALL_RATE = 2 << 20

MSG_SCAN_STALLED = (
    "no batch came back from the content scan's processes in {seconds:.0f} s (a process hung: "
    "a lock held at the fork, or the disk stopped answering), so they were killed, nothing of "
    "this scan was taken as clean and it stopped: run it again, or set {env}=1 to scan in "
    "this process alone"
)
# A thread cannot be killed: the hung read's is left behind, blocked in this process.
MSG_SCAN_STALLED_THREADS = (
    "no batch came back from the content scan's threads in {seconds:.0f} s (a read hung: the "
    "disk or a network file system stopped answering), so nothing of this scan was taken as "
    "clean and it stopped; the hung read is left waiting in this process: check that the "
    "project's disk answers, then run it again (restart the service if its reads still hang)"
)


class ScanIncompleteError(RuntimeError):
    """A process of the scan ended (killed) before its files were looked at."""


class _Notes(NamedTuple):
    """What a :class:`~visage_ml.rights.scan_cache.Noted` noted, as a process hands it back."""

    small: int
    refused: frozenset[int]
    tags: frozenset[str]


class _Kept:
    """The file cache as a scan process asks it: answered from what the cache held of its
    batch's files (:meth:`~visage_ml.rights.scan_cache.FileCache.part`, handed over with the
    batch), what the process used or learnt kept to hand back; the scan's own process alone
    keeps and writes the cache (:func:`_kept_back`)."""

    def __init__(self, files: FileCache) -> None:
        self.files = files
        self.used: list[str] = []
        self.learnt: list[tuple[str, os.stat_result, Read, _Notes | None]] = []

    def get(self, key: str, st: os.stat_result, sizes: SizeFilter | None) -> Any:
        known = self.files.get(key, st, sizes)
        if known is not None:
            self.used.append(key)
        return known

    def put(self, key: str, st: os.stat_result, read: Read, noted: Any) -> None:
        notes = (
            None
            if noted is None
            else _Notes(noted.small, frozenset(noted.refused), frozenset(noted.tags))
        )
        self.learnt.append((key, st, read, notes))


# What a scan process looks at with: the scan's size filter (:func:`_in_process`).
_SOUGHT: SizeFilter | None = None


def _in_process(processes: int, memory: int, spill: Path | None, sizes: SizeFilter | None) -> None:
    """A scan process begins, handed what its scan's process holds (a fork server's child has
    none of it: its modules are imported afresh): ``memory`` (that process's
    :data:`~visage_ml.rights.embedded_spill.MEMORY_MAX`), of which it takes its share (each
    process has its own), nothing of it taken; where members too large for it are spilled
    (:func:`~visage_ml.rights.embedded.spill_into`: the project's private folder, never the
    system's temporary one); and the size filter it asks."""
    global _SOUGHT
    embedded_spill.MEMORY_MAX = memory // processes
    embedded_spill._MEMORY = embedded_spill._Memory()
    embedded.SPILL_DIR = spill
    _SOUGHT = sizes


def _look_batch(
    batch: list[tuple[Path, str]], files: FileCache | None
) -> tuple[list[tuple[Read, bool]], Any]:
    """:func:`_looked_at` of each file of ``batch`` (path, real path), in a scan process, with
    what the file cache held of them (``files``), and what it used or learnt of that."""
    kept = _Kept(files) if files is not None else None
    out = [_looked_at(path, _SOUGHT, kept, key=key) for path, key in batch]  # type: ignore[arg-type]
    return out, None if kept is None else (kept.used, kept.learnt)


def _kept_back(files: FileCache, back: Any) -> None:
    used, learnt = back
    for key in used:
        files.keep(key)
    for key, st, read, notes in learnt:
        files.put(key, st, read, notes)


def _batches(
    todo: Sequence[tuple[Path, Root, Path]],
) -> tuple[list[list[tuple[Path, str]]], list[int]]:
    """``todo`` cut into batches (:data:`BATCH_FILES`, :data:`BATCH_BYTES`), and each batch's
    bytes."""
    out: list[list[tuple[Path, str]]] = []
    held_by: list[int] = []
    batch: list[tuple[Path, str]] = []
    held = 0
    for path, _root, real in todo:
        size = _size(path)
        if batch and (len(batch) >= BATCH_FILES or held + size > BATCH_BYTES):
            out.append(batch)
            held_by.append(held)
            batch, held = [], 0
        batch.append((path, str(real)))
        held += size
    if batch:
        out.append(batch)
        held_by.append(held)
    return out, held_by


# Threads that take no lock a scan process needs: the progress bars' monitor, which DVC
# starts (it sleeps, and looks at the bars now and then).
QUIET_THREADS = frozenset({"tqdm_monitor"})


def _alone() -> bool:
    """Whether this is the process's one thread (but :data:`QUIET_THREADS`)."""
    main = threading.main_thread()
    return all(t is main or t.name in QUIET_THREADS for t in threading.enumerate())


def _processes() -> int:
    """How many processes a scan starts: :data:`SCAN_PROCESSES`, or fewer as
    :data:`PROCESSES_ENV` says."""
    given = os.environ.get(PROCESSES_ENV, "").strip()
    if not given:
        return SCAN_PROCESSES
    if not given.isdigit():
        raise ValueError(MSG_PROCESSES_ENV)
    return min(SCAN_PROCESSES, int(given))


# Modules a fork server imports once, before it forks any scan process: this one and what it
# imports (pandas, pyarrow, the readers of what files hold; no torch, ONNX Runtime nor MLflow),
# 0.9 s a process otherwise; and those :func:`preload` names.
_SERVER_PRELOAD: list[str] = [__name__]


def preload(*modules: str) -> None:
    """Have this process's fork server, when it starts, import ``modules`` too: what the
    program's main script imports. A fork server's child runs that script again (as
    multiprocessing does, to unpickle what it may define; the fork server of Python 3.11 does
    not do it for them, though asked): ``visage serve``'s, the ``visage`` script, imported the
    CLI in each scan process, 0.7 s every scan."""
    _SERVER_PRELOAD.extend(m for m in modules if m not in _SERVER_PRELOAD)


def _start_method() -> str | None:
    """How the scan's processes are started, here and now: ``fork`` where this is the process's
    one thread (the command line, the verifier; the cheapest); else (the service) a fork
    server's (``forkserver``), or ``spawn`` where there is none; None: in threads (no method).

    A fork takes no other thread along: a lock one held then (SQLite's, an ONNX session's, in
    the service answering other requests beside the erasure) would stay held in the child for
    good. A fork server is a process of its own, started (fork and exec) from this one when
    first needed, that has never run another thread of this one: its children, forked from it,
    hold no lock of this process. It is started once, and kept for every later scan of this
    process (and its children's imports with it: :func:`preload`); it ends with it.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and _alone():
        return "fork"
    if "forkserver" in methods:
        return "forkserver"
    return "spawn" if "spawn" in methods else None


def _context(method: str) -> multiprocessing.context.BaseContext:
    """The multiprocessing context of ``method`` (:func:`_start_method`)."""
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Only taken when the server starts (the first scan beside another thread); a server
        # already running (this process's own use of one) is used as it is.
        ctx.set_forkserver_preload(list(_SERVER_PRELOAD))
    return ctx


def _look_all(
    todo: Sequence[tuple[Path, Root, Path]], sizes: SizeFilter | None, files: FileCache | None
) -> list[tuple[Read, bool]]:
    """:func:`_looked_at` of each file of ``todo``, in order: in :data:`SCAN_PROCESSES`
    processes (:func:`_start_method`) where the scan reads enough to pay for them, else in
    threads of this process. The processes are handed the size filter when they start, the
    file cache's entries with each batch of files, and hand back what they found and what they
    used or learnt of the file cache (``files``), kept here as a thread's would be.

    Raises
    ------
    ScanIncompleteError
        When a process ended (killed) before its files were looked at, or no batch of files
        came back in time (:func:`_watched`).
    """
    processes = _processes()
    batches, held = _batches(todo)
    method = _start_method() if processes > 1 else None
    least = SPAWN_MIN_BYTES if method == "spawn" else PROCESS_MIN_BYTES
    if method is None or sum(held) < least:
        return _look_in_threads(batches, held, sizes, files, threads=max(1, processes))
    out: list[tuple[Read, bool]] = []
    # What this process holds now is never collected in a forked child: a collection there ran
    # the destructor of this process's garbage (an ONNX session's, joining threads a fork does
    # not take along) and the child hung. (A fork server's child holds none of it.)
    frozen = method == "fork"
    if frozen:
        gc.freeze()
    try:
        # A fork server's child is handed the size filter pickled, the tombstone key with it
        # (as a forked one has it in memory), through a pipe: never written to a file.
        with ProcessPoolExecutor(
            max_workers=processes,
            mp_context=_context(method),
            initializer=_in_process,
            initargs=(processes, embedded_spill.MEMORY_MAX, embedded.SPILL_DIR, sizes),
        ) as pool:

            def kill() -> None:
                # One that hangs answers neither SIGTERM nor its pool's shutdown.
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.kill()
                pool.shutdown(wait=True, cancel_futures=True)

            futures = [
                pool.submit(
                    _look_batch, batch, None if files is None else files.part(k for _, k in batch)
                )
                for batch in batches
            ]
            for found, back in _watched(futures, held, stop=kill, said=MSG_SCAN_STALLED):
                out += found
                if files is not None:
                    _kept_back(files, back)
    except BrokenProcessPool as exc:  # never a file of it taken as clean
        raise ScanIncompleteError(MSG_SCAN_INCOMPLETE) from exc
    finally:
        if frozen:
            gc.unfreeze()
    return out


# The names of the scan's own threads (:func:`_look_in_threads`).
SCAN_THREAD = "content-scan"


def _look_in_threads(
    batches: list[list[tuple[Path, str]]],
    held: list[int],
    sizes: SizeFilter | None,
    files: FileCache | None,
    *,
    threads: int,
) -> list[tuple[Read, bool]]:
    """:func:`_looked_at` of each file of ``batches`` (of ``held`` bytes each), in order, in
    ``threads`` threads of this process, watched as the processes are (:func:`_watched`).

    A read that hangs cannot be stopped in a thread: its thread is left behind, blocked, and
    the scan stops. So the threads are daemons (a :class:`ThreadPoolExecutor`'s are joined
    when the interpreter exits, and its shutdown joins them: a hung one kept the erasure, and
    then the command, from ending), each taking the next batch not cancelled; the batches not
    begun when a read hangs are cancelled.

    Raises
    ------
    ScanIncompleteError
        When no batch came back in time.
    """
    work: queue.SimpleQueue[tuple[Future, list[tuple[Path, str]]]] = queue.SimpleQueue()
    futures: list[Future] = []
    for batch in batches:
        futures.append(Future())
        work.put((futures[-1], batch))

    def look() -> None:
        while True:
            try:
                future, batch = work.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():  # cancelled: a read hung
                continue
            try:
                future.set_result([_looked_at(p, sizes, files, key=k) for p, k in batch])
            except BaseException as exc:  # said by the scan, as a pool's worker does
                future.set_exception(exc)

    # hashlib lets go of the GIL on large reads; little else does.
    workers = [
        threading.Thread(target=look, name=SCAN_THREAD, daemon=True)
        for _ in range(min(threads, len(batches)))
    ]
    for worker in workers:
        worker.start()

    def cancel() -> None:
        for future in futures:
            future.cancel()

    out: list[tuple[Read, bool]] = []
    try:
        for found in _watched(futures, held, stop=cancel, said=MSG_SCAN_STALLED_THREADS):
            out += found
    except ScanIncompleteError:  # a read hung: its thread stays blocked, the others end
        raise
    except BaseException:
        cancel()
        raise
    finally:
        if not any(f.running() for f in futures):
            for worker in workers:  # done (or about to be): none is left to a later scan
                worker.join()
    return out


def _stall_limit(out: Sequence[int]) -> float:
    """How long the scan waits for the next batch, with batches of ``out`` bytes still out."""
    return STALL_SECONDS + max(out, default=0) / STALL_RATE


def _watched(
    futures: list[Future], held: list[int], *, stop: Callable[[], None], said: str
) -> Iterator[Any]:
    """What each of ``futures`` (batches of ``held`` bytes each) gives, in order; when none
    comes back for :func:`_stall_limit`, ``stop`` is called (the processes killed, the batches
    not begun cancelled) and the scan stops, saying ``said``.

    Raises
    ------
    ScanIncompleteError
        When no batch came back in time.
    """
    out: dict[Future, int] = dict(zip(futures, held, strict=True))
    for future in futures:
        while not future.done():
            limit = _stall_limit(list(out.values()))
            done, _ = wait(list(out), timeout=limit, return_when=FIRST_COMPLETED)
            if not done:
                stop()
                raise ScanIncompleteError(said.format(seconds=limit, env=PROCESSES_ENV))
            for f in done:
                out.pop(f, None)
        out.pop(future, None)
        yield future.result()


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:  # the read says why
        return 0


# Objects of a remote read at once: each request waits on the network, not on a CPU.
REMOTE_JOBS = 16


def _remote_objects(walked: Sequence[Root], sizes: SizeFilter | None) -> list[Hashed]:
    """Every object of the DVC remotes ``walked`` (each object once, by its path: the legacy
    layout's folder holds the current one's), looked at as a file is (:func:`_looked_at_object`),
    after one listing per remote that gives every size. A remote whose endpoint takes no
    connection, or that cannot be listed, is one :attr:`Hashed.down` entry saying why."""
    # Deferred: dvc_objects imports DVC's data layer, which only a DVC project needs.
    from visage_ml.rights.dvc_objects import endpoint_down

    known: dict[Any, str | None] = {}
    down: list[Hashed] = []
    seen: set[str] = set()
    todo: list[tuple[str, int, Root]] = []
    for root in walked:
        why = endpoint_down(root.remote, known)  # at once, not after the client's retries
        if not why:
            try:
                listed = list(root.remote.listed())
            except Exception as exc:  # the client's own errors (botocore, fsspec): not "empty"
                why = type(exc).__name__
        if why:
            down.append(Hashed(root.path, root, None, 0, down=why))
            continue
        for _oid, path, size in listed:
            if path not in seen:
                seen.add(path)
                todo.append((path, size, root))
    with ThreadPoolExecutor(max_workers=REMOTE_JOBS) as pool:
        digests = list(pool.map(lambda t: _looked_at_object(t[2], t[0], t[1], sizes), todo))
    return down + [
        _hashed(Path(p), r, x, read) for (p, _, r), (x, read) in zip(todo, digests, strict=True)
    ]


def _looked_at_object(
    root: Root, path: str, size: int, sizes: SizeFilter | None
) -> tuple[Read, bool]:
    """:func:`_looked_at` for the object at ``path`` of the remote ``root``, its ``size`` as
    listed: one that cannot match by size is told from a notebook, or a file that holds others
    inside, by its first bytes (a ranged read), else read whole, streamed, once. One too large
    to hold in memory (over :data:`~visage_ml.rights.embedded.EMBED_MAX`: a ``dataset.tar.gz``,
    a CSV of photographs) is spilled as it streams to an unnamed file in ``root.spill`` and
    looked inside from there as a local file is (read again from the remote, an archive's
    members would cost a request each, and its content could change between the reads); where
    it cannot be spilled it is not shown clean."""
    store = root.remote
    reader = _Reader(path, sizes, root.spill)
    try:
        cannot = sizes is not None and not path.endswith(ALWAYS_READ) and not sizes.may_match(size)
        if cannot:
            first = store.head(path, SNIFF)
            if not _json_start(first) and embedded.kind(first) is None:
                return Read(None, size), False
        with store.open_path(path) as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                reader.update(chunk)
        if reader.spill_error:  # too large to hold, and no room to look inside: not shown clean
            return Read(None, UNREADABLE), True
        return reader.done(), True
    except FileNotFoundError:  # gone since the listing: nothing left to judge
        return Read(None, 0), True
    except Exception:  # the client's own errors, or a 403: not shown clean
        return Read(None, UNREADABLE), True
    finally:
        reader.close()


GIT_WHERE = "git history"
GIT_LFS_WHERE = "git lfs"
LFS_OBJECTS = Path("lfs") / "objects"


class GitUnreadableError(OSError):
    """The project is in a git repository whose objects could not be read."""


MSG_GIT_UNREADABLE = (
    "the git repository of the project could not be read ({why}), so its history was not "
    "looked at for erased content: make `git cat-file --batch-all-objects --batch-check` work "
    "there (git installed; `git config --global --add safe.directory <project>` when another "
    "user owns it), then run it again"
)


def _in_a_repository(root: Path) -> bool:
    """Whether ``root`` or a folder above it holds a ``.git``."""
    return any((p / ".git").exists() for p in (root, *root.resolve().parents))


def git_dir(root: Path) -> Path | None:
    """The git folder of the repository holding ``root`` (its own, or one above it); None
    outside one.

    Raises
    ------
    GitUnreadableError
        There is a repository, but git cannot read it (git missing, another owner: "dubious
        ownership").
    """
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--absolute-git-dir"],
            cwd=root,
            env=child_env(),
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        if _in_a_repository(root):
            raise GitUnreadableError(MSG_GIT_UNREADABLE.format(why=type(exc).__name__)) from exc
        return None
    if out.returncode == 0 and out.stdout.strip():
        return Path(out.stdout.strip())
    if not _in_a_repository(root):  # git says so in the user's language: not parsed
        return None
    why = (out.stderr.strip().splitlines() or ["git rev-parse failed"])[-1][:200]
    raise GitUnreadableError(MSG_GIT_UNREADABLE.format(why=why))


def git_objects(root: Path, *, cached: bool = False) -> list[Hashed]:
    """Every blob of the git repository holding ``root`` (and of each submodule), hashed as a
    file is: reachable or not (any commit of any branch or tag, a stash, the reflog, DVC's
    experiments under ``refs/exps``, and objects nothing names any more until ``git gc`` prunes
    them). A file committed by mistake is there for good, whatever the working tree holds now.
    Every blob is read, whatever its size: git does not say which blob is a notebook. One too
    large to hold in memory that may hold others inside (an archive, a text file over
    :data:`~visage_ml.rights.embedded.EMBED_MAX`) is written as it streams to an unnamed file in
    the git folder, and looked inside from there as a file of the project is (:class:`_Reader`).

    ``cached``: what an earlier scan read of an object is taken from the git folder's
    :data:`SCAN_CACHE` (an object's id is the hash of its content, which never changes), and
    only the objects it does not hold are read (:func:`_git_read_cached`); the erasure's copies
    step and ``visage privacy doctor`` do so. The verifier does not: anyone able to write the
    git folder can edit the cache, so it reads every object and never the cache.

    Raises
    ------
    GitUnreadableError
        The repository is there but its objects could not be read (an object damaged, git
        refusing it), or a blob too large to hold could not be written to the git folder to be
        looked inside (no room, not writable): not shown clean.
    """
    folder = git_dir(root)
    if folder is None:
        return []
    read = _git_read_cached if cached else _git_read
    out: list[Hashed] = []
    for repo in [folder, *_submodule_dirs(folder)]:
        out += read(root, Root(repo, GIT_WHERE, git=True))
    return out


def _submodule_dirs(folder: Path) -> list[Path]:
    """The git folders of the submodules under ``<git dir>/modules`` (nested ones too): each
    keeps its own objects, which the outer repository's do not include."""
    modules = folder / "modules"
    if not modules.is_dir():
        return []
    found = []
    for dirpath, dirnames, _files in os.walk(modules):
        here = Path(dirpath)
        if (here / "HEAD").is_file() and (here / "objects").is_dir():
            found.append(here)
            dirnames[:] = [d for d in dirnames if d == "modules"]
    return sorted(found)


GIT_FORMAT = "%(objectname) %(objecttype) %(objectsize)"
MSG_GIT_DAMAGED = "an object git lists cannot be read (damaged): run `git fsck`"
MSG_GIT_NO_ROOM = (
    "a blob over {mib} MiB could not be written to the git folder to look inside it ({why}): "
    "make room there, or make it writable"
)


def _git_error(err: bytes) -> GitUnreadableError:
    why = (err.decode(errors="replace").strip().splitlines() or ["git cat-file failed"])[-1]
    return GitUnreadableError(MSG_GIT_UNREADABLE.format(why=why[:200]))


def _feed(stream: Any, oids: Sequence[str]) -> None:
    """Write ``oids`` to git's input, one a line, then close it (in a thread: git answers while
    it is fed, and a full pipe either way would stop both)."""
    try:
        for i in range(0, len(oids), 4096):
            stream.write("".join(f"{o}\n" for o in oids[i : i + 4096]).encode())
    except OSError:  # git stopped early: its exit status says why
        pass
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def _git_read(root: Path, where: Root, *, oids: Sequence[str] | None = None) -> list[Hashed]:
    """Every blob of the git folder ``where.path`` (``oids``: those objects only) read through
    ``git cat-file --batch``, hashed, a notebook's images decoded."""
    repo = where.path
    cmd = ["git", f"--git-dir={repo}", "cat-file", f"--batch={GIT_FORMAT}"]
    if oids is None:
        cmd += ["--batch-all-objects", "--unordered"]
    out: list[Hashed] = []
    damaged = False
    unspilled = ""
    feeder = None
    with subprocess.Popen(
        cmd,
        cwd=root,
        env=child_env(),
        stdin=subprocess.DEVNULL if oids is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        stream = proc.stdout
        if stream is None:  # never: stdout is a pipe
            raise GitUnreadableError(MSG_GIT_UNREADABLE.format(why="no output"))
        if oids is not None:
            feeder = threading.Thread(target=_feed, args=(proc.stdin, oids), daemon=True)
            feeder.start()
        while header := stream.readline():
            fields = header.split()
            if len(fields) != 3:  # "<oid> missing": listed, not readable (its id not said)
                damaged = True
                continue
            oid, kind, size = fields
            left = int(size)
            # A blob too large to hold is spilled, unnamed, into the git folder itself.
            reader = _Reader(spill=repo) if kind == b"blob" else None
            while left:
                chunk = stream.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                if reader is not None:
                    reader.update(chunk)
            stream.read(1)  # the newline after each object
            if reader is not None and reader.spill_error:  # not looked inside: not shown clean
                unspilled = reader.spill_error
            elif reader is not None:
                x = reader.done()
                out.append(
                    Hashed(
                        repo,
                        where,
                        x.digest,
                        x.size,
                        x.inner,
                        oid.decode(),
                        # A blob that expands too far is as a notebook too large (kept so).
                        x.opaque or x.expands,
                        held=x.held,
                        kind=x.kind,
                    )
                )
        err = proc.stderr.read() if proc.stderr is not None else b""
        if feeder is not None:
            feeder.join()
    if proc.returncode != 0:
        raise _git_error(err)
    if damaged:
        raise GitUnreadableError(MSG_GIT_UNREADABLE.format(why=MSG_GIT_DAMAGED))
    if unspilled:
        why = MSG_GIT_NO_ROOM.format(mib=embedded.EMBED_MAX >> 20, why=unspilled)
        raise GitUnreadableError(MSG_GIT_UNREADABLE.format(why=why))
    return out


# What the scan read of each blob, kept by object id in each git folder (the repository's, each
# submodule's): an erasure or doctor on a monorepo reads only the objects written since. Inside
# the git folder, which the walk of files never enters (it is not taken for a copy).
#
# What is trusted, and by whom: an entry is used only for an object git lists now, of the size
# the entry says (a cache copied from another repository, or an entry of another object, is
# not); the whole cache only when written by this scanner's code (:func:`_scanner_id`: a change
# to what a notebook's images are reads everything again). Beyond that an entry is believed:
# telling an edited digest from a true one takes reading the object, the very cost saved. So
# the erasure and doctor trust what this user's git folder says of its own objects, as they
# trust git itself (which does not check a loose object rewritten in place either); the
# verifier, which a regulator runs to check that erasure, reads every object and never this.
SCAN_CACHE = Path("visage") / "scan-cache.json"
SCAN_CACHE_FORMAT = 2
_HEX = frozenset("0123456789abcdef")
# SHA-256, size, a notebook's images, too large a notebook, what it holds inside, its kind.
_Entry = tuple[str, int, tuple[str, ...], bool, tuple[str, ...], str | None]


def _scanner_files() -> list[Path]:
    """The code that decides what a blob or a file holds: this module, the notebooks' reader,
    every reader of what other files hold inside (each ``embedded*.py`` of this package, found
    so that a new one is not left out), the file cache's rules."""
    names = sorted(p.stem for p in Path(embedded.__file__).parent.glob("embedded*.py"))
    readers = [Path(str(importlib.import_module(f"{__package__}.{n}").__file__)) for n in names]
    return [Path(__file__), Path(notebooks.__file__), *readers, Path(scan_cache.__file__)]


@functools.cache
def _scanner_id() -> str:
    """The SHA-256 of the code that decides what a blob or a file holds
    (:func:`_scanner_files`): a cache another version wrote is not used (the git scan cache,
    the file scan cache)."""
    h = hashlib.sha256()
    try:
        for module in _scanner_files():
            h.update(module.read_bytes())
    except OSError:  # code not in files: no cache is this one's
        return os.urandom(32).hex()
    return h.hexdigest()


def _sha256_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _entry(value: object) -> _Entry | None:
    """A cache entry as :class:`Hashed` fields, or None when not one (then the object is
    read)."""
    if not isinstance(value, list) or len(value) != 6:
        return None
    digest, size, inner, opaque, held, what = value
    if not _sha256_hex(digest) or type(size) is not int or size < 0:
        return None
    for found in (inner, held):
        if not isinstance(found, list) or not all(_sha256_hex(d) for d in found):
            return None
    if not isinstance(opaque, bool) or not (what is None or what in embedded.KINDS):
        return None
    return digest, size, tuple(inner), opaque, tuple(held), what


def _load_cache(repo: Path) -> dict[str, Any]:
    """The entries of ``repo``'s scan cache; none when it is missing, damaged or not this
    scanner's (all is read)."""
    try:
        doc = json.loads((repo / SCAN_CACHE).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != SCAN_CACHE_FORMAT:
        return {}
    objects = doc.get("objects")
    if doc.get("scanner") != _scanner_id() or not isinstance(objects, dict):
        return {}
    return objects


def _save_cache(repo: Path, entries: dict[str, _Entry]) -> None:
    """Replace ``repo``'s scan cache with ``entries`` (the objects git lists now, no other: an
    object pruned after a history rewrite leaves no digest behind), and remove what a killed
    write left. A git folder this user cannot write is read in full each time."""
    path = repo / SCAN_CACHE
    doc = {
        "format": SCAN_CACHE_FORMAT,
        "scanner": _scanner_id(),
        "objects": {
            o: [d, n, list(i), op, list(held), what]
            for o, (d, n, i, op, held, what) in entries.items()
        },
    }
    try:
        for left in leftovers(path):
            left.unlink(missing_ok=True)
        data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        atomic_write_bytes(path, data, mode=0o600)
    except OSError as exc:
        log.debug("git scan cache not written: %s", type(exc).__name__)


def _git_list(root: Path, repo: Path) -> list[tuple[str, int]]:
    """The blobs git lists in ``repo`` (``--batch-check``: headers only, nothing read), as
    (object id, size), in the order they are stored."""
    cmd = [
        "git",
        f"--git-dir={repo}",
        "cat-file",
        "--batch-all-objects",
        "--unordered",
        f"--batch-check={GIT_FORMAT}",
    ]
    done = subprocess.run(cmd, cwd=root, env=child_env(), capture_output=True)
    if done.returncode != 0:
        raise _git_error(done.stderr)
    out = []
    damaged = False
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) != 3:  # "<oid> missing": listed, its header not readable
            damaged = True
        elif fields[1] == b"blob":
            out.append((fields[0].decode(), int(fields[2])))
    if damaged:
        raise GitUnreadableError(MSG_GIT_UNREADABLE.format(why=MSG_GIT_DAMAGED))
    return out


def _git_read_cached(root: Path, where: Root) -> list[Hashed]:
    """:func:`_git_read` of the git folder ``where.path``, but what its :data:`SCAN_CACHE` holds
    of a blob git lists now, of the size it says, is taken from there; the rest is read (their
    ids fed to ``git cat-file --batch``) and the cache rewritten with the blobs listed now."""
    repo = where.path
    listed = _git_list(root, repo)
    cache = _load_cache(repo)
    entries: dict[str, _Entry] = {}
    todo: list[str] = []
    for oid, size in listed:
        entry = _entry(cache.get(oid))
        if entry is not None and entry[1] == size:
            entries[oid] = entry
        else:
            todo.append(oid)
    for h in _git_read(root, where, oids=todo) if todo else []:
        if h.digest is not None:
            entries[h.name] = (h.digest, h.size, h.inner, h.opaque, h.held, h.kind)
    if any(oid not in entries for oid, _ in listed):  # never: git says "missing" instead
        raise GitUnreadableError(MSG_GIT_UNREADABLE.format(why=MSG_GIT_DAMAGED))
    if todo or len(cache) != len(entries):
        _save_cache(repo, entries)
    return [
        Hashed(repo, where, d, n, inner, oid, opaque, held=held, kind=what)
        for oid, _ in listed
        for d, n, inner, opaque, held, what in [entries[oid]]
    ]


def _listed(paths: ProjectPaths, pid: str) -> dict[tuple[str, str], str]:
    """(pid, image id) -> the PNG's SHA-256, of the images ``data/raw`` lists now, but
    ``pid``'s."""
    if not paths.raw.is_dir():
        return {}
    images = read_images(paths.raw)
    rows = zip(
        images["pid"].astype(str),
        images["image_id"].astype(str),
        images["sha256"].astype(str),
        strict=True,
    )
    return {(p, i): h for p, i, h in rows if p != pid}


def _own_plaintext(raw: Path, h: Hashed, listed: dict[tuple[str, str], str]) -> bool:
    """Whether ``h`` is the plaintext file of an image ``listed``, exactly: at
    ``<raw>/<pid>/<image id><ext>`` (a project not yet sealed, :data:`PLAIN_EXTS`), holding the
    PNG its row names. Not a sealed file (sealed under its own subject's key, it is never
    byte-identical to another's), not ``<image id>.bak.png`` beside it, not other bytes."""
    real = h.path.resolve()
    stem, ext = os.path.splitext(real.name)
    if real.parent.parent != raw or ext.lower() not in PLAIN_EXTS:
        return False
    return listed.get((real.parent.name, stem)) == h.digest


@dataclass(frozen=True)
class InUse:
    """The hits that are another current subject's data: ``files`` of ``data/raw``, and the DVC
    ``objects`` with their md5 (``md5s``: never removed from any store)."""

    files: frozenset[Path] = frozenset()
    objects: frozenset[Path] = frozenset()
    md5s: frozenset[str] = frozenset()

    def __contains__(self, path: object) -> bool:
        return path in self.files or path in self.objects


def in_use(paths: ProjectPaths, hits: Iterable[Hashed], *, pid: str) -> InUse:
    """Which ``hits`` (files that matched erased content) are another current subject's data:
    the plaintext file of an image the images table lists under them (:func:`_own_plaintext`),
    and a DVC store's object with that file's md5."""
    hits = list(hits)
    listed = _listed(paths, pid) if hits else {}
    raw = paths.raw.resolve()
    files = {h.path for h in hits if not h.root.store and _own_plaintext(raw, h, listed)}
    md5s = set()
    for p in files:
        try:
            md5s.add(md5_file(p))
        except OSError:
            continue
    objects = {h.path for h in hits if h.oid is not None and h.oid in md5s}
    return InUse(frozenset(files), frozenset(objects), frozenset(md5s))


def current_pngs(paths: ProjectPaths, pid: str) -> set[str]:
    """The SHA-256s of the PNGs ``data/raw`` lists now under a subject other than ``pid``."""
    return set(_listed(paths, pid).values())


def git_hits(
    root: Path, hashes: Container[str], *, allowed: Container[str], cached: bool = False
) -> list[Hashed]:
    """The objects of the git history holding erased content (or a notebook showing it), or
    too large or expanding too far to look inside (``opaque``), but those whose bytes are
    ``allowed``: a current subject's own photograph (:func:`current_pngs`,
    one the erased subject shared), a sealed file whose key the erasure destroyed (unreadable
    for good, as every other copy of it: a key file itself is never allowed).

    ``cached``: as :func:`git_objects` (never the verifier's).

    Raises
    ------
    GitUnreadableError
        As :func:`git_objects`.
    """
    found = git_objects(root, cached=cached)
    # An object too large or expanding too far to look inside is not shown clean either.
    return [h for h in found if (h.matches(hashes) or h.opaque) and h.digest not in allowed]


def in_use_name(
    mac: Callable[[str, str], str], root: Path, path: Path, *, request_id: str | None
) -> str:
    """What the certificate of erasure ``request_id`` records of a file other current subjects
    hold (:data:`IN_USE`): ``~`` and the first hex digits of ``mac(kind, request id NUL its
    project-relative path)``. The request binds it: a file kept by two erasures (a photograph
    three subjects share) is named apart on each certificate, or two of them would show their
    subjects shared a photograph with one third. ``request_id`` None: the name certificates
    made before gave (the path alone; neither an id nor a path holds a NUL, so the two forms
    never meet), which the verifier still reads."""
    try:  # as walked: a project folder may be a link to another volume
        relpath = path.relative_to(root).as_posix()
    except ValueError:
        relpath = path.as_posix()
    value = relpath if request_id is None else f"{request_id}\0{relpath}"
    return "~" + mac(IN_USE_KIND, value)[:IN_USE_HEX]


def git_paths(root: Path, oids: Iterable[str]) -> dict[str, list[str]]:
    """The paths under which commits (of every ref and the reflog) hold each of ``oids``; an
    object no commit reaches has none (only expiring the reflog and pruning removes it)."""
    wanted = set(oids)
    out: dict[str, list[str]] = {o: [] for o in wanted}
    if not wanted:
        return out
    cmd = ["git", "rev-list", "--all", "--reflog", "--objects"]
    listed = subprocess.run(cmd, cwd=root, env=child_env(), capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        oid, _, path = line.partition(" ")
        if oid in wanted and path and path not in out[oid]:
            out[oid].append(path)
    return out
