"""The ``imagefolder`` format: ``root/<person>/<image>``, one subject per folder."""

from __future__ import annotations

from pathlib import Path

from visage_ml.data.importers.common import ImportFormat, Item, Scan, ScanOptions, person_folders


def scan_imagefolder(root: Path, options: ScanOptions) -> Scan:
    """``root/<person>/<image>``: the folder name is the person."""
    scan = Scan()
    for person, files in person_folders(root, scan):
        ref = f"imagefolder:{person.name}"
        scan.items.extend(Item(f.rel, f.path, ref) for f in files)
    return scan


FORMAT = ImportFormat(
    name="imagefolder",
    scan=scan_imagefolder,
    description="root/<person>/<image>: one subject per folder (vault: imagefolder:<folder>)",
)
