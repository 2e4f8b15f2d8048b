"""``visage privacy seal | rotate-master-key | doctor`` and ``visage data decrypt``: biometric
files at rest, sealed under each subject's key (:mod:`visage_ml.rights.sealing`)."""

from __future__ import annotations

from pathlib import Path

import typer

from visage_ml.app.cli.common import (
    console,
    emit_json,
    project,
    refuse_plaintext_inside,
    setup_logging,
    user_errors,
)
from visage_ml.io import atomic_write_bytes
from visage_ml.privacy.keys import decode_master_key
from visage_ml.rights.sealing import (
    EXPANDS_INSIDE,
    locked_message,
    open_sealed_file,
    rotate_master_key,
    seal_project,
)
from visage_ml.rights.sealing import doctor as run_doctor

JSON_OPT = typer.Option(False, "--json", help="Machine-readable JSON output.")
MSG_DOCTOR_FOUND = (
    "{n} leftover(s) found; `visage privacy doctor --purge` removes those marked purge, "
    "`visage privacy seal` converts those marked seal; delete those marked review, or move "
    "them out of the project (a plaintext image: a face in clear?)"
)
# Said under the findings when one is a file not read to its end: a database may only need its
# -wal checkpointed into it (too large to read with it, or alone), not repairing.
MSG_DOCTOR_EXPANDS = (
    "expands_inside: unpack an archive; repair a database (`sqlite3 <file> .recover`), "
    'checkpoint its -wal file into it (`sqlite3 <file> "PRAGMA wal_checkpoint(TRUNCATE)"`), '
    'or clear the deleted rows left in its freed space (`sqlite3 <file> "VACUUM"`)'
)


def seal(as_json: bool = JSON_OPT) -> None:
    """Convert the project's plaintext biometric files to sealed ones (resumable).

    Raw images, SynthFaces scenes, the crop array data/processed/faces.u8.npy and kept export
    bundles are encrypted under their subject's data key (privacy/keys/); the plaintext is
    overwritten and deleted, and its objects leave the DVC cache and every remote. Killed
    anywhere, a second run finishes the job. A crop array another program changes meanwhile,
    or one that is not the crops visage-ml wrote, is kept and the error says what to do.
    Erased or unknown subjects get no key: see `visage privacy doctor`.
    """
    setup_logging()
    with user_errors():
        report = seal_project(project())
    d = report.to_dict()
    if as_json:
        emit_json(d)
        return
    console.print(
        f"sealed: {report.raw_sealed} raw images ({report.raw_already} finished from an "
        f"earlier run), {report.scenes_sealed} scenes, {report.crops_rows_sealed} crops, "
        f"{report.bundles_sealed} bundles; {report.dvc_objects_removed} plaintext DVC objects "
        f"deleted; {report.permissions_fixed} file modes tightened",
        highlight=False,
    )
    if report.raw_left or report.bundles_left:
        console.print(
            "left for `visage privacy doctor`: "
            f"{sum(report.raw_left.values())} raw files of erased/unknown subjects, "
            f"{report.bundles_left} bundles",
            highlight=False,
        )


def rotate_master_key_cmd(
    new_key_file: Path = typer.Option(
        None,
        "--new-key-file",
        help="File holding the new master key (base64 or hex of 32 bytes); default: drawn at "
        "random and written to secrets/master.key. Required with $VISAGE_MASTER_KEY.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Re-wrap every data key (data, vault, gallery) under a new master key.

    No data file is read or written; each key file is replaced atomically, the version it
    replaces named beside it (.<pid>.key.was: digest and size, no key) for an erasure to seek
    copies of, and a killed run is finished by running again (other commands refuse to run
    meanwhile). Recorded in the ledger with both keys' fingerprints. Back up the new
    secrets/master.key.
    """
    setup_logging()
    with user_errors():
        new = None
        if new_key_file is not None:
            new = decode_master_key(new_key_file.read_text(encoding="ascii"), str(new_key_file))
        report = rotate_master_key(project(), new_key=new)
    if as_json:
        emit_json(report.to_dict())
        return
    n = sum(r["rewrapped"] for r in report.rings.values())
    console.print(
        f"master key rotated ({report.old_fingerprint} -> {report.new_fingerprint}): {n} keys "
        f"re-wrapped, vault index rebuilt ({report.vault_index_entries} entries); new key in "
        f"{report.key_location}",
        highlight=False,
    )
    if report.note:
        console.print(report.note, highlight=False)


def doctor(
    purge: bool = typer.Option(
        False, "--purge", help="Remove the leftovers marked purge (overwrite, then delete)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """List biometric leftovers at rest: files of erased or unknown subjects (a restored backup
    of data/raw, gallery/ or the key rings), sealed files without a key, plaintext faces in
    data/, the DVC cache, local remotes and privacy/exports, notebooks whose saved outputs hold
    images (--purge clears their outputs), and any other image file under data/, mlruns/,
    models/, notebooks/, reports/ or at the project's top, the project's own figures aside, and
    erased subjects' images in the git history (git:<path>) (both marked review: --purge leaves
    them; an erasure removes exact copies only, and never rewrites history), what an erasure
    stops on (review: erased content inside an archive, one expanding too far, a file it could
    not read or a folder it could not list, a notebook too large to look inside; what to do is
    said for each kind), and checkpoints
    kept for erasures whose certificate was issued (privacy/checkpoints/kept; left, saying so,
    while an erasure runs). A key ring or vault folder that a running rotation, key creation or
    erasure holds locked keeps its leftovers and erased subjects' keys (one may be that
    command's next file), and says so: run --purge again later. Exit code 1 when any is left."""
    setup_logging()
    with user_errors():
        report = run_doctor(project(), purge=purge)
    if as_json:
        emit_json(report.to_dict())
    else:
        for f in report.findings:
            console.print(f"{f.kind:<16} {f.action:<6} {f.path}", highlight=False)
        console.print(
            f"{len(report.findings)} finding(s) {report.counts()}; {report.purged} purged",
            highlight=False,
        )
        for kind, todo in report.what_to_do().items():
            console.print(f"{kind}: {todo}", highlight=False)
    locked = {path for paths in report.locked.values() for path in paths}
    remaining = [f for f in report.findings if not purge or f.action != "purge" or f.path in locked]
    if not as_json:
        for folder, paths in report.locked.items():
            console.print(locked_message(folder, len(paths)), highlight=False)
    if remaining:
        if not as_json:
            console.print(MSG_DOCTOR_FOUND.format(n=len(remaining)), highlight=False)
            if any(f.kind == EXPANDS_INSIDE for f in remaining):
                console.print(MSG_DOCTOR_EXPANDS, highlight=False)
        raise typer.Exit(1)


def decrypt(
    sealed: Path = typer.Argument(..., help="A sealed file of this project (*.sealed)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the plaintext (0600)."),
) -> None:
    """Decrypt one sealed file (a raw image, a scene frame, a kept bundle) into --out.

    The plaintext is a face in clear: --out must be outside the project; delete it after use.
    Files of erased subjects are refused.
    """
    with user_errors():
        paths = project()
        refuse_plaintext_inside(paths, out)
        atomic_write_bytes(out, open_sealed_file(paths, sealed), mode=0o600)
    console.print(f"{out} written (mode 0600)", highlight=False)
