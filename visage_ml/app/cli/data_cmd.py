"""``visage data``: bring face data into ``data/raw`` (imports of existing data sets)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from visage_ml.app.cli.common import (
    console,
    emit_json,
    err_console,
    project,
    setup_logging,
    user_errors,
)
from visage_ml.config import PURPOSES, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.data.importers import (
    DEFAULT_PURPOSES,
    FORMATS,
    REASON_TEXT,
    ROLES,
    ImportBasis,
    ImportResult,
    import_dataset,
)

app = typer.Typer(
    help=(
        "Acquire face data into data/raw/<pid>/<image_id>.sealed (each image sealed under its "
        "subject's data key) with subjects.parquet and "
        "images.parquet, then `dvc add data/raw`. Identities go to the encrypted identity vault "
        "only; consent or another legal basis goes to the signed ledger."
    ),
    no_args_is_help=True,
)

FORMAT_HELP = "Data set format: " + "; ".join(f"{n}: {f.description}" for n, f in FORMATS.items())


@app.command("import")
def import_(
    fmt: str = typer.Argument(..., metavar="FORMAT", help=FORMAT_HELP),
    path: Path = typer.Argument(
        ..., help="The data set's folder (fairface: the label CSV or its folder)."
    ),
    consent_evidence: Path = typer.Option(
        None,
        "--consent-evidence",
        help="Evidence that the subjects gave explicit consent (Art. 6(1)(a) + 9(2)(a)); only its "
        "SHA-256 is recorded, in a consent receipt per subject.",
        exists=True,
        dir_okay=False,
    ),
    legal_basis: str = typer.Option(
        None,
        "--legal-basis",
        help="Another legal basis: one Art. 6 and one Art. 9 code, e.g. art6(1)(f)+art9(2)(j).",
    ),
    basis_evidence: Path = typer.Option(
        None,
        "--basis-evidence",
        help="With --legal-basis: a document supporting it (e.g. an ethics approval); only its "
        "SHA-256 is recorded.",
        exists=True,
        dir_okay=False,
    ),
    purpose: list[str] = typer.Option(
        None,
        "--purpose",
        "-p",
        help=f"Purpose the basis covers ({', '.join(PURPOSES)}); repeat for several. "
        f"Default: {', '.join(DEFAULT_PURPOSES)}.",
    ),
    pairs: list[Path] = typer.Option(
        None,
        "--pairs",
        help="lfw: a pairs file (pairs.txt, pairsDevTest.txt, pairsDevTrain.txt); repeat for "
        "several. Default: those found next to the images.",
        exists=True,
        dir_okay=False,
    ),
    notice_file: Path = typer.Option(
        None,
        "--notice-file",
        help="The privacy notice shown to the subjects; its SHA-256 goes into the receipts.",
        exists=True,
        dir_okay=False,
    ),
    notice_version: str = typer.Option("v1", help="Version of the privacy notice."),
    role: str = typer.Option(
        None,
        "--role",
        help=f"What the subjects are for: {', '.join(ROLES)} (training: train/val splits only; "
        "evaluation: test only, never trained on). Default: evaluation for a set with protocol "
        "pairs (lfw + pairs.txt), both otherwise.",
    ),
    files: bool = typer.Option(
        False,
        "--files",
        help="Also print each skipped file with its reason (file names may hold person names).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON output."),
) -> None:
    """Import a data set, pseudonymising every person.

    Refuses to run without a recorded legal basis (--consent-evidence or
    --legal-basis): faces processed for recognition are biometric data under
    GDPR Art. 9. Nothing is written then (exit code 2).

    Writes data/raw/<pid>/<image_id>.sealed (decoded, EXIF orientation applied,
    8-bit RGB PNG without any metadata, sealed under the subject's data key; a
    person or file of an erased subject is skipped as erased_subject), merges
    data/raw/subjects.parquet and images.parquet, swaps data/raw in atomically
    and runs `dvc add data/raw`; lfw pairs go to data/protocols/lfw_pairs.parquet.

    Person names go only into the encrypted identity vault (privacy/vault/);
    the ledger gets subject.added and consent.given or basis.recorded events.
    Files not imported are listed with a reason code in
    privacy/imports/import-<time>.json, the only place file names are written
    (an erased subject's are counted there, never listed: the name is the person).
    Exit code 1 when `dvc add` failed after data/raw was written.
    """
    setup_logging()
    with user_errors():
        paths = project()
        basis = ImportBasis.from_options(
            consent_evidence=consent_evidence,
            legal_basis=legal_basis,
            purposes=purpose or None,
            basis_evidence=basis_evidence,
            notice_file=notice_file,
            notice_version=notice_version,
        )
        params = load_params(paths.params)
        result = import_dataset(
            fmt,
            path,
            paths=paths,
            basis=basis,
            pairs=tuple(pairs or ()),
            params=params,
            progress=not as_json and sys.stderr.isatty(),
            role=role,
        )
    if as_json:
        summary = result.summary()
        if files:
            summary["files"] = [s.to_dict() for s in result.skipped]
        emit_json(summary)
    else:
        _print_summary(result, show_files=files)
    if result.dvc_error:
        err_console.print(
            "[bold red]error:[/] data/raw was written but `dvc add data/raw` failed; run it by "
            "hand to version the data set",
            highlight=False,
        )
        raise typer.Exit(1)


def _visible(text: str) -> str:
    """Control characters (a newline in a file name) shown escaped, not acted on."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_summary(result: ImportResult, *, show_files: bool) -> None:
    s = result.summary()
    console.print(
        f"imported {s['images_imported']} images of "
        f"{s['subjects_added'] + s['subjects_updated']} subjects "
        f"({s['subjects_added']} added, {s['subjects_updated']} updated; "
        f"{s['persons_found']} persons found) as {s['source']}, role {s['role']}",
        highlight=False,
    )
    basis = s["basis"]
    console.print(
        f"basis: {basis['kind']} {'+'.join(basis['legal_basis'])} for "
        f"{', '.join(basis['purposes'])}",
        highlight=False,
    )
    if s["skipped_by_reason"]:
        table = Table(title=f"{s['files_skipped']} files skipped", title_justify="left")
        table.add_column("reason")
        table.add_column("files", justify="right")
        table.add_column("meaning")
        for reason, n in s["skipped_by_reason"].items():
            table.add_row(reason, str(n), REASON_TEXT.get(reason, ""))
        console.print(table)
    else:
        console.print("no files skipped")
    if s["conversions"]:
        conv = ", ".join(f"{k} {v}" for k, v in s["conversions"].items())
        console.print(f"converted on import: {conv}", highlight=False)
    if s["lfw_pairs"] is not None:
        lp = s["lfw_pairs"]
        console.print(
            f"LFW pairs: {lp['written']} written to data/protocols/lfw_pairs.parquet, "
            f"{lp['dropped']} dropped (an image not imported)",
            highlight=False,
        )
    if s["dvc_md5"]:
        console.print(f"data/raw md5 (DVC): {s['dvc_md5']}", highlight=False)
    elif not s["dvc_error"]:
        console.print("data/raw md5 (DVC): - (not a DVC repository: not versioned)")
    console.print(f"per-file report: {s['report']}", highlight=False)
    if show_files and result.skipped:
        table = Table(title="skipped files", title_justify="left")
        table.add_column("file")
        table.add_column("reason")
        table.add_column("detail")
        for skip in result.skipped:
            table.add_row(escape(_visible(skip.rel)), skip.reason, escape(_visible(skip.detail)))
        console.print(table)


@app.command("synth")
def synth(
    grid: Path = typer.Option(
        None, "--grid", help="Only render the sample grid (e.g. docs/synthfaces.png) and exit."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON output."),
) -> None:
    """Generate SynthFaces, the embedded default data set, from params.yaml (`synth`).

    Writes data/raw/<pid>/<image_id>.sealed, subjects.parquet, images.parquet and data/scenes/
    (frames + scenes.parquet), registers every synthetic subject with simulated consent events
    in the ledger, refreshes data/registry/consents.parquet and runs `dvc add` on both folders.
    Deterministic for project.seed; when data/raw already holds SynthFaces it is reused.
    Nothing is generated where DVC tracks data/raw but its tables are not checked out: run
    `dvc checkout data/raw` first (exit code 2).
    """
    setup_logging()
    with user_errors():
        paths = project()
        params = load_params(paths.params)
        if grid is not None:
            from visage_ml.data.synth import render_grid  # deferred: loads numba (the renderer)

            render_grid(params.synth, seed=params.project.seed, path=grid)
            console.print(f"sample grid written to {grid}")
            return
        result = acquire_synthfaces(paths, params, progress=sys.stderr.isatty())
    if as_json:
        emit_json(result.__dict__)
        return
    verb = "generated" if result.generated else "reused"
    console.print(
        f"SynthFaces {verb}: {result.n_subjects} subjects, {result.n_images} images, "
        f"{result.n_scenes} scenes; {result.registered} subjects newly registered; "
        f"data/raw md5 {result.raw_md5 or '(not a DVC repository)'}"
    )
