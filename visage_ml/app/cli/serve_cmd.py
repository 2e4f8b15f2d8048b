"""``visage serve``, ``visage gallery`` and ``visage apikey``: run and manage serving."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from visage_ml.app.cli.common import (
    UserError,
    console,
    emit_json,
    project,
    setup_logging,
    user_errors,
)
from visage_ml.app.http.auth import ApiKeyFileError, KeyStore
from visage_ml.app.stages.gallery import run
from visage_ml.config import load_params
from visage_ml.serving.engine import ModelMismatchError
from visage_ml.serving.gallery import Gallery, GalleryError
from visage_ml.serving.rebuild import select_enrolment_rows

if TYPE_CHECKING:
    from visage_ml.serving.gallery import Gallery

gallery_app = typer.Typer(
    help=(
        "The encrypted identification gallery (gallery/): rebuild it from consented processed "
        "data, list and count its templates."
    ),
    no_args_is_help=True,
)
apikey_app = typer.Typer(
    help=(
        "API keys of the HTTP API (secrets/api_keys.json holds ids, roles and hashes only). "
        "Roles: operator (identify, verify, enroll, analytics), dpo (subject rights), auditor "
        "(ledger, certificates)."
    ),
    no_args_is_help=True,
)
JSON_OPT = typer.Option(False, "--json", help="Machine-readable JSON output.")


@contextlib.contextmanager
def _serving_errors() -> Iterator[None]:
    """Serving's own errors as one-line user errors (besides the common ones)."""

    with user_errors():
        try:
            yield
        except (GalleryError, ModelMismatchError, ApiKeyFileError) as exc:
            raise UserError(str(exc)) from None


MSG_TLS_PAIR = "give both --ssl-keyfile and --ssl-certfile (or neither, behind a TLS proxy)"
MSG_TLS_MISSING = "{what} {path} does not exist; give the PEM file of the server's TLS {what}"
MSG_TLS_KEY_MODE = (
    "TLS private key {path} is readable by other users (mode {mode:o}); restrict it with "
    "`chmod 600 {path}` and start again"
)
MSG_PLAIN_HTTP = (
    "serving plain HTTP on %s, not a loopback address: API keys and face images cross the "
    "network unencrypted. Give --ssl-keyfile/--ssl-certfile or put a TLS proxy in front "
    "(docs/security.md)"
)


def tls_options(keyfile: Path | None, certfile: Path | None) -> dict[str, str]:
    """uvicorn's TLS arguments, after checking the files (the key must be private: 0600).

    Parameters
    ----------
    keyfile, certfile
        PEM private key and certificate chain; both or neither.

    Returns
    -------
    dict
        ``{"ssl_keyfile": ..., "ssl_certfile": ...}``, or ``{}`` for plain HTTP.

    Raises
    ------
    UserError
        Only one of the two given, a file missing, or a key readable by group or others.
    """
    if keyfile is None and certfile is None:
        return {}
    if keyfile is None or certfile is None:
        raise UserError(MSG_TLS_PAIR)
    for what, path in (("private key", keyfile), ("certificate", certfile)):
        if not Path(path).is_file():
            raise UserError(MSG_TLS_MISSING.format(what=what, path=path))
    mode = Path(keyfile).stat().st_mode & 0o777
    if mode & 0o077:
        raise UserError(MSG_TLS_KEY_MODE.format(path=keyfile, mode=mode))
    return {"ssl_keyfile": str(keyfile), "ssl_certfile": str(certfile)}


def serve(
    host: str = typer.Option(None, help="Address to listen on (default serving.host)."),
    port: int = typer.Option(None, help="Port (default serving.port)."),
    mode: str = typer.Option(
        None,
        help="full (identify, verify, enroll, analytics) or analytics (counts only; the "
        "embedder is never loaded). Default serving.mode.",
    ),
    ssl_keyfile: Path = typer.Option(
        None, "--ssl-keyfile", help="TLS private key (PEM, mode 0600): serve HTTPS."
    ),
    ssl_certfile: Path = typer.Option(
        None, "--ssl-certfile", help="TLS certificate chain (PEM), with --ssl-keyfile."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Debug logging."),
) -> None:
    """Start the HTTP API (uvicorn) on the project's models and gallery.

    Loads the ONNX models and decrypts the searchable templates (subjects whose consent covers
    identification) into memory before accepting requests. Every request is written to
    privacy/audit.jsonl; /metrics serves Prometheus metrics and /docs the OpenAPI schema.
    Serve HTTPS with --ssl-keyfile/--ssl-certfile, or behind a TLS proxy (docs/security.md).
    """
    import logging

    import uvicorn

    from visage_ml.app.http.app import create_app

    setup_logging(verbose)
    with _serving_errors():
        tls = tls_options(ssl_keyfile, ssl_certfile)
        paths = project()
        params = load_params(paths.params)
        if mode is not None and mode not in ("full", "analytics"):
            raise UserError(f"--mode must be 'full' or 'analytics', not '{mode}'")
        app = create_app(paths, params=params, mode=mode)
    bind = host or params.serving.host
    if not tls and bind not in ("127.0.0.1", "::1", "localhost"):
        logging.getLogger(__name__).warning(MSG_PLAIN_HTTP, bind)
    uvicorn.run(
        app,
        host=bind,
        port=port or params.serving.port,
        # The audit log records each request; uvicorn's access log would repeat paths (pids).
        access_log=False,
        log_level="debug" if verbose else "info",
        **tls,
    )


@gallery_app.command("rebuild")
def gallery_rebuild(
    as_json: bool = JSON_OPT,
    verbose: bool = typer.Option(False, "--verbose", help="Debug logging."),
) -> None:
    """Re-enrol every subject allowed for identification with the current embedder.

    Uses gallery.images_per_subject crops per subject from data/processed (train and
    validation images first, so test images stay held out), models/embedder.onnx and the
    threshold in reports/threshold.json. Templates without a legal basis any more are erased;
    unchanged ones are not rewritten. Run it after a new embedder was exported.
    """

    setup_logging(verbose)
    with _serving_errors():
        paths = project()
        report = run(paths, load_params(paths.params))
    if as_json:
        emit_json(report.to_dict())
        return
    console.print(
        f"gallery rebuilt for embedder {report.model_version}: {report.searchable} searchable, "
        f"{report.templates_written} written, {report.templates_unchanged} unchanged, "
        f"{report.removed_without_basis} removed without a legal basis, "
        f"{report.stale_templates} stale, {report.allowed_without_images} allowed subjects "
        "without processed images",
        highlight=False,
    )


def _open_gallery() -> Gallery:

    paths = project()
    gallery = Gallery.open_existing(paths)
    if gallery is None:
        raise GalleryError(f"no gallery at {paths.gallery}; run `visage gallery rebuild`")
    return gallery


@gallery_app.command("list")
def gallery_list(as_json: bool = JSON_OPT) -> None:
    """List stored templates by pid: searchable or not, and the embedder that made them."""
    with _serving_errors():
        gallery = _open_gallery()
        pids = gallery.stored()
        rows = [{"pid": pid, **gallery.status(pid)} for pid in pids]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        state = "searchable" if r["searchable"] else "not searchable"
        console.print(f"{r['pid']}  {state}  {r['template_model_version']}", highlight=False)
    console.print(f"{len(rows)} templates")


@gallery_app.command("stats")
def gallery_stats(as_json: bool = JSON_OPT) -> None:
    """Counts only: stored, searchable and stale templates; embedder and threshold."""
    with _serving_errors():
        stats = _open_gallery().stats()
    if as_json:
        emit_json(stats)
        return
    for k, v in stats.items():
        console.print(f"{k:<16} {v}", highlight=False)


@gallery_app.command("holdout")
def gallery_holdout(
    count: int = typer.Option(1, min=1, help="How many images to list."),
    as_json: bool = JSON_OPT,
) -> None:
    """Raw images of searchable subjects that were NOT used to enrol them (to try identify).

    Reads data/processed/manifest.parquet and the gallery; writes nothing.
    """
    import pandas as pd

    with _serving_errors():
        paths = project()
        params = load_params(paths.params)
        gallery = _open_gallery()
        manifest = pd.read_parquet(paths.processed / "manifest.parquet")
        searchable = set(gallery.searchable())
        enrolled = select_enrolment_rows(
            manifest, searchable, per_subject=params.gallery.images_per_subject
        )
        used = {int(r) for rows in enrolled.values() for r in rows}
        spare = manifest[manifest["pid"].astype(str).isin(searchable) & ~manifest["row"].isin(used)]
        if spare.empty:
            raise UserError("no held-out image of an enrolled subject: every image was enrolled")
        picks = spare.sort_values(["split", "image_id"]).groupby("pid").head(1).head(count)
        rows = [
            {"pid": str(r.pid), "image": str(paths.raw / str(r.pid) / f"{r.image_id}.png")}
            for r in picks.itertuples()
        ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        console.print(f"{r['pid']}  {r['image']}", highlight=False)


@apikey_app.command("create")
def apikey_create(
    role: str = typer.Option(..., "--role", help="operator, dpo or auditor."),
    as_json: bool = JSON_OPT,
) -> None:
    """Create an API key and print it once; only its SHA-256 is stored."""

    with _serving_errors():
        record, key = KeyStore(project().api_keys).create(role)
    if as_json:
        emit_json({"key": key, **record.public()})
        return
    console.print(f"key id {record.key_id}, role {record.role}", highlight=False)
    console.print(key, highlight=False)
    console.print("Store the key now: it is not kept and cannot be shown again.")


@apikey_app.command("list")
def apikey_list(as_json: bool = JSON_OPT) -> None:
    """List API key ids, roles, creation times and revocation (never keys or hashes)."""

    with _serving_errors():
        keys = [k.public() for k in KeyStore(project().api_keys).list()]
    if as_json:
        emit_json(keys)
        return
    for k in keys:
        flag = "  revoked" if k["revoked"] else ""
        console.print(f"{k['key_id']}  {k['role']:<8}  {k['created']}{flag}", highlight=False)


@apikey_app.command("revoke")
def apikey_revoke(key_id: str = typer.Argument(..., help="The key id to revoke.")) -> None:
    """Revoke an API key (a running server refuses it from its next request)."""

    with _serving_errors():
        try:
            KeyStore(project().api_keys).revoke(key_id)
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
    console.print(f"key {key_id} revoked", highlight=False)
