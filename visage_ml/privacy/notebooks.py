"""Notebook outputs at rest: what a notebook shows is saved in its ``.ipynb``.

A face drawn with ``imshow`` is stored in the notebook file as a base64 PNG (and again in
``.ipynb_checkpoints/``), in clear, outside every store an erasure reaches; Jupyter autosaves it
within minutes, and a ``git commit -a`` puts it into history. So the project's Jupyter saves
notebooks without outputs and without the images of Markdown cells (a pasted image is a cell
attachment; an inlined one a ``data:image`` URL in the text) (:func:`strip_outputs`, installed
as a pre-save hook by ``visage_ml.app.jupyter``), and ``visage privacy doctor`` lists notebooks
anywhere in the project that hold images (:func:`find_image_notebooks`), which ``--purge``
strips.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from visage_ml.io import atomic_write_text

# Folders never searched for notebooks: environments, VCS internals, caches.
SKIP_DIRS = frozenset({".venv", "venv", ".git", ".dvc", "node_modules", "__pycache__", ".tox"})
IMAGE_PREFIX = "image/"
INLINE_IMAGE = "data:image/"
# An image inlined in a cell's text: ``data:image/png;base64,<data>``; group 1 keeps the header.
INLINE_DATA = re.compile(r"(data:image/[\w.+-]+(?:;[\w=.+-]+)*),[A-Za-z0-9+/=%]+")


def _outputs(nb: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            yield from cell.get("outputs", []) or []


def _holds_image(output: dict[str, Any]) -> bool:
    data = output.get("data") or {}
    if any(str(k).startswith(IMAGE_PREFIX) for k in data):
        return True
    # An image inlined in HTML or Markdown output (an <img src="data:image/...">).
    return any(
        INLINE_IMAGE in ("".join(v) if isinstance(v, list) else str(v))
        for k, v in data.items()
        if str(k).startswith("text/")
    )


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _cell_images(cell: dict[str, Any]) -> int:
    """Images a Markdown or raw cell holds itself: attachments (an image pasted or dropped
    into the cell) and images inlined in its text."""
    if cell.get("cell_type") == "code":
        return 0
    return len(cell.get("attachments") or {}) + len(INLINE_DATA.findall(_source(cell)))


def image_outputs(nb: dict[str, Any]) -> int:
    """How many images ``nb`` (a notebook as JSON) holds: outputs holding one, and images
    pasted into or inlined in its Markdown cells."""
    cells = nb.get("cells", [])
    return sum(_holds_image(o) for o in _outputs(nb)) + sum(_cell_images(c) for c in cells)


def strip_outputs(nb: dict[str, Any]) -> int:
    """Clear every code cell's outputs and execution count in place, and remove the images of
    Markdown cells (their attachments; an inlined image's data, its text kept); returns the
    outputs and images removed.

    Also clears ``metadata.widgets`` (widget state can hold images too)."""
    removed = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            images = _cell_images(cell)
            if images:
                removed += images
                cell.pop("attachments", None)
                src = INLINE_DATA.sub(lambda m: m.group(1) + ",", _source(cell))
                cell["source"] = src
            continue
        removed += len(cell.get("outputs", []) or [])
        cell["outputs"] = []
        cell["execution_count"] = None
    meta = nb.get("metadata")
    if isinstance(meta, dict):
        meta.pop("widgets", None)
    return removed


def find_image_notebooks(root: Path) -> list[Path]:
    """Notebooks under ``root`` (checkpoints included) whose outputs hold an image."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if not name.endswith(".ipynb"):
                continue
            path = Path(folder) / name
            try:
                nb = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                continue  # not a notebook we can read: nothing to say about its outputs
            if isinstance(nb, dict) and image_outputs(nb):
                found.append(path)
    return found


def strip_file(path: Path) -> int:
    """:func:`strip_outputs` on the notebook at ``path``, rewritten atomically; outputs removed."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    removed = strip_outputs(nb)
    text = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # as nbformat
    atomic_write_text(path, text, mode=path.stat().st_mode & 0o777)
    return removed
