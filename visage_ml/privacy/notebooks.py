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

import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Iterator
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


# ---------------------------------------------------------------------------------------------
# The images themselves: an erasure looks for an erased photograph among them
# ---------------------------------------------------------------------------------------------


def _decode(value: Any) -> bytes | None:
    text = "".join(value) if isinstance(value, list) else value
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None  # not base64 (an SVG is text): not a file's bytes


def _inline(text: str) -> list[bytes]:
    """The images a text inlines as ``data:`` URLs in base64."""
    out = []
    for m in INLINE_DATA.finditer(text):
        if m.group(1).endswith(";base64") and (data := _decode(m.group(0).split(",", 1)[1])):
            out.append(data)
    return out


# nbformat 3 kept an output's image under its short name (``png``), not its MIME type.
V3_IMAGES = ("png", "jpeg", "jpg", "gif")
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8")


def _output_images(output: dict[str, Any]) -> list[bytes]:
    data = output.get("data") or {}
    if not isinstance(data, dict):
        data = {}
    out = []
    for k, v in [
        *data.items(),
        *((f"{IMAGE_PREFIX}{k}", output[k]) for k in V3_IMAGES if k in output),
    ]:
        if str(k).startswith(IMAGE_PREFIX) and (raw := _decode(v)) is not None:
            out.append(raw)
        elif str(k).startswith("text/"):
            out += _inline("".join(v) if isinstance(v, list) else str(v))
    # A stream (print of an <img> tag, nbformat 3's html) inlines them in its text.
    for k in ("text", "html"):
        if isinstance(text := output.get(k), list | str):
            out += _inline("".join(text) if isinstance(text, list) else text)
    return out


def _widget_images(value: Any) -> list[bytes]:
    """Images held anywhere in widget state (an Image widget's value, a buffer): any string
    that decodes from base64 to an image, and any ``data:`` URL."""
    out: list[bytes] = []
    if isinstance(value, dict):
        for v in value.values():
            out += _widget_images(v)
    elif isinstance(value, list):
        for v in value:
            out += _widget_images(v)
    elif isinstance(value, str) and len(value) >= 16:
        raw = _decode(value)
        if raw is not None and raw.startswith(IMAGE_MAGIC):
            out.append(raw)
        else:
            out += _inline(value)
    return out


def _cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of nbformat 4 (``cells``) and of nbformat 3 (``worksheets[].cells``)."""
    cells = list(nb.get("cells") or [])
    for sheet in nb.get("worksheets") or []:
        if isinstance(sheet, dict):
            cells += list(sheet.get("cells") or [])
    return [c for c in cells if isinstance(c, dict)]


def _widgets(nb: dict[str, Any]) -> Any:
    meta = nb.get("metadata")
    return meta.get("widgets") if isinstance(meta, dict) else None


def _cell_own_images(cell: dict[str, Any]) -> list[bytes]:
    out = []
    for bundle in (cell.get("attachments") or {}).values():
        if isinstance(bundle, dict):
            out += [
                raw for k, v in bundle.items() if k.startswith(IMAGE_PREFIX) and (raw := _decode(v))
            ]
    return out + _inline(_source(cell))


def embedded_images(nb: Any) -> list[bytes]:
    """The bytes of every image ``nb`` (a notebook as JSON, nbformat 4 or 3) holds in base64:
    its outputs' image data and ``data:`` URLs (streams too), its Markdown cells' attachments and
    inlined images, and the widget state saved in its metadata."""
    if not isinstance(nb, dict):
        return []
    out: list[bytes] = []
    for cell in _cells(nb):
        if cell.get("cell_type") == "code":
            for o in cell.get("outputs", []) or []:
                out += _output_images(o) if isinstance(o, dict) else []
        else:
            out += _cell_own_images(cell)
    return out + _widget_images(_widgets(nb))


def drop_images(path: Path, match: Callable[[bytes], bool]) -> int:
    """Remove from the notebook at ``path`` every output holding an image ``match`` accepts (the
    whole output: its other forms show the same thing), every Markdown cell's image it accepts,
    and the widget state when it holds one; rewritten atomically when anything went. Returns how
    many were removed."""
    nb = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is no error
    removed = 0
    if any(map(match, _widget_images(_widgets(nb)))):
        nb["metadata"].pop("widgets", None)  # widget state is a cache the kernel rebuilds
        removed += 1
    for cell in _cells(nb):
        if cell.get("cell_type") == "code":
            keep = [
                o for o in cell.get("outputs", []) or [] if not any(map(match, _output_images(o)))
            ]
            removed += len(cell.get("outputs", []) or []) - len(keep)
            cell["outputs"] = keep
            continue
        atts = cell.get("attachments") or {}
        for name in [
            n for n, b in atts.items() if any(map(match, _cell_own_images({"attachments": {n: b}})))
        ]:
            atts.pop(name)
            removed += 1

        def unlink(m: re.Match[str]) -> str:
            nonlocal removed
            if any(map(match, _inline(m.group(0)))):
                removed += 1
                return m.group(1) + ","
            return m.group(0)

        if (text := INLINE_DATA.sub(unlink, _source(cell))) != _source(cell):
            cell["source"] = text
    if removed:
        text = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # as nbformat
        atomic_write_text(path, text, mode=path.stat().st_mode & 0o777)
    return removed
