"""Which subjects each purged ``data/raw`` manifest listed, kept for the lineage of the others.

Lineage (:mod:`visage_ml.rights.lineage`) tells that a model saw a subject when the ``data/raw``
``.dir`` manifest its data was prepared from lists the subject's folder. An erasure purges every
manifest that lists its subject, and each lists everyone in the data set then: after one
erasure, the models trained on those versions no longer showed in the lineage, and so in the
certificates, of anyone else. Before the purge the erasure writes here the pids each of those
manifests listed, but its own subject's (pseudonymous ids, as the ledger holds them; no file,
hash or name), and lineage asks here for a manifest no DVC store holds any more. Every erasure
also takes its subject out of every entry. The file is not signed: lineage reads it only to add
a model a subject may have seen, never to rule one out (:func:`lists`).

The index is ``privacy/lineage/manifests.json`` (mode 0600): ``{".dir md5": [pid, ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_text
from visage_ml.privacy.keys import PID_RE

INDEX = Path("lineage") / "manifests.json"  # under privacy/


def index_path(paths: ProjectPaths) -> Path:
    """Where the index is."""
    return paths.privacy / INDEX


def load(paths: ProjectPaths) -> dict[str, list[str]]:
    """The index, ``{".dir md5": [pid, ...]}`` (empty when there is none)."""
    return _read(paths)


def _read(paths: ProjectPaths) -> dict[str, list[str]]:
    try:
        doc = json.loads(index_path(paths).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{index_path(paths)} cannot be read ({exc}): restore it from a backup, or delete "
            "it (lineage then says 'unknown' for the data versions erasures purged)"
        ) from None
    if not isinstance(doc, dict):
        return {}
    return {str(k): [str(p) for p in v] for k, v in doc.items() if isinstance(v, list)}


def _write(paths: ProjectPaths, index: Mapping[str, list[str]]) -> None:
    path = index_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({k: sorted(set(v)) for k, v in sorted(index.items()) if v}, indent=1)
    atomic_write_text(path, text + "\n", mode=0o600)


def pids_listed(entries: Iterable[Mapping[str, object]]) -> set[str]:
    """The subjects whose folders (``<pid>/...``) a manifest's entries list."""
    out = set()
    for e in entries:
        top = str(e.get("relpath", "")).replace("\\", "/").split("/")[0]
        if PID_RE.fullmatch(top):
            out.add(top)
    return out


def remember(
    paths: ProjectPaths,
    listings: Mapping[str, Iterable[str]],
    *,
    erased: Callable[[str], bool],
) -> None:
    """Record the pids each manifest (``md5 -> pids``) listed, but those ``erased`` accepts
    (the subject being erased, anyone erased before: a manifest restored from a backup lists
    them too)."""
    index = _read(paths)
    changed = False
    for md5, pids in listings.items():
        keep = set(index.get(md5, [])) | {p for p in pids if not erased(p)}
        if keep and keep != set(index.get(md5, [])):
            index[md5] = sorted(keep)
            changed = True
    if changed:
        _write(paths, index)


def forget(paths: ProjectPaths, pid: str) -> None:
    """Take ``pid`` out of every entry (its erasure)."""
    index = _read(paths)
    if any(pid in v for v in index.values()):
        _write(paths, {k: [p for p in v if p != pid] for k, v in index.items()})


def lists(index: Mapping[str, list[str]], md5: str, pid: str) -> bool | None:
    """True when the purged manifest ``md5`` listed ``pid`` in ``index`` (:func:`load`); None
    otherwise (unknown).

    Never False: the index is a file an operator can edit, so it may add to what a model saw
    (a certificate then names one model too many), never take away from it; a pid it does not
    name reads as before it was kept, "unknown".
    """
    return True if pid in index.get(md5, ()) else None


def names(paths: ProjectPaths, pid: str) -> bool:
    """Whether any entry still names ``pid``."""
    return any(pid in v for v in _read(paths).values())
