"""``visage serve``, ``visage gallery`` and ``visage apikey``: run and manage serving."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from visage_ml.app.cli.common import (
    UserError,
    console,
    emit_json,
    project,
    refuse_plaintext_inside,
    setup_logging,
    user_errors,
)
from visage_ml.app.http.auth import ApiKeyFileError, KeyStore, parse_duration, parse_time
from visage_ml.app.stages.gallery import run
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.rawstore import RawStore
from visage_ml.io import atomic_write_bytes, private_dir
from visage_ml.privacy.records import records_of
from visage_ml.rights import content_scan
from visage_ml.serving.engine import ModelMismatchError
from visage_ml.serving.gallery import Gallery, GalleryError
from visage_ml.serving.gallery_check import IN_FLIGHT_S, MSG_IN_FLIGHT
from visage_ml.serving.operating_point import (
    AT_VERIFY_THRESHOLD,
    IdentificationPolicy,
    load_score_model,
)
from visage_ml.serving.pg_gallery import open_configured
from visage_ml.serving.rebuild import select_holdout
from visage_ml.serving.release import SCORE_MODEL_JSON, check_released, latest_releases
from visage_ml.serving.score_calibration import released_calibration

if TYPE_CHECKING:  # annotations only
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
        "API keys of the HTTP API (secrets/api_keys.json holds ids, roles, expiry and hashes "
        "only). Roles: operator (identify, verify, enroll, analytics), dpo (subject rights), "
        "auditor (ledger, certificates, metrics), metrics (/metrics only). Keys expire "
        "(serving.auth.key_ttl_days); rotate them with `visage apikey rotate KEY_ID`."
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
    "serving plain HTTP on %s, not a loopback address, because --insecure-http was given: API "
    "keys and face images cross the network unencrypted"
)
MSG_TLS_REQUIRED = (
    "refusing to serve plain HTTP on {host}, which is not a loopback address: API keys and face "
    "images would cross the network unencrypted. Give --ssl-keyfile KEY --ssl-certfile CERT, "
    "or listen on 127.0.0.1 behind a TLS reverse proxy (docs/security.md); only if the network "
    "is encrypted otherwise, add --insecure-http"
)
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface only (``0.0.0.0`` and names do not)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport(host: str, *, tls: bool, insecure_http: bool) -> None:
    """Refuse plain HTTP off loopback unless ``insecure_http`` (then warn).

    Raises
    ------
    UserError
        Plain HTTP on a non-loopback address without ``--insecure-http``.
    """
    if tls or is_loopback(host):
        return
    if not insecure_http:
        raise UserError(MSG_TLS_REQUIRED.format(host=host))
    logging.getLogger(__name__).warning(MSG_PLAIN_HTTP, host)


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
    insecure_http: bool = typer.Option(
        False,
        "--insecure-http",
        help="Allow plain HTTP on a non-loopback address (refused otherwise): only where the "
        "network is encrypted by other means.",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Debug logging of visage-ml (never of libraries: no EXIF)."
    ),
) -> None:
    """Start the HTTP API (uvicorn) on the project's models and gallery.

    Loads the ONNX models and decrypts the searchable templates (subjects whose consent covers
    identification) into memory before accepting requests, after checking that the ONNX
    models and reports/threshold.json are the files released in the privacy ledger. Every
    request is written to privacy/audit.jsonl; /metrics serves Prometheus metrics to keys of
    role auditor or metrics. Off loopback it needs HTTPS (--ssl-keyfile/--ssl-certfile) or
    --insecure-http; behind a TLS proxy, keep it on loopback (docs/security.md).
    """
    import uvicorn

    # Deferred: the HTTP app loads fastapi, which the other `visage` commands do not need.
    from visage_ml.app.http.app import create_app
    from visage_ml.app.http.deadline import connection_options

    setup_logging(verbose)
    with _serving_errors():
        tls = tls_options(ssl_keyfile, ssl_certfile)
        paths = project()
        params = load_params(paths.params)
        bind = host or params.serving.host
        check_transport(bind, tls=bool(tls), insecure_http=insecure_http)
        if mode is not None and mode not in ("full", "analytics"):
            raise UserError(f"--mode must be 'full' or 'analytics', not '{mode}'")
        # The records are read by every rights call and notice: one that does not validate is
        # named now, not answered with a 500 on each of those requests once serving.
        records_of(paths)
        app = create_app(paths, params=params, mode=mode)
    # An erasure's content scan runs in a fork server's processes, each of which runs the
    # `visage` script again: the server imports what it imports once, for all of them.
    content_scan.preload("visage_ml.app.cli")
    uvicorn.run(
        app,  # an app object: one process, no workers that would inherit the environment
        host=bind,
        port=port or params.serving.port,
        # The audit log records each request; uvicorn's access log would repeat paths (pids).
        access_log=False,
        # uvicorn keeps our logging (log_config=None) and never logs below INFO: its debug and
        # trace output describe connections and ASGI messages.
        log_config=None,
        log_level="info",
        # The failed-authentication limit counts the connecting address. uvicorn would replace
        # it with X-Forwarded-For from loopback (a proxy that passes the client's own header on,
        # or any local user), letting a key guesser pose as a new client with every guess.
        # The limiter reads the header itself, from serving.auth.trusted_proxies only.
        proxy_headers=False,
        # A request's line, headers and body must be in within serving.request_read_timeout_s:
        # uvicorn alone let a client that sends slowly, or stops halfway, hold a connection
        # for good (its h11 protocol, with the deadline, replaces httptools where installed).
        **connection_options(params.serving),
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
    # serving.gallery.backend: the files under gallery/ or the shared pgvector gallery.
    gallery = open_configured(paths, load_params(paths.params), environ=os.environ)
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


@gallery_app.command("verify")
def gallery_verify(as_json: bool = JSON_OPT) -> None:
    """Open every stored template under its subject's key and check it, by pid.

    pgvector: each row's search vector (and calibration cluster) must be, bit for bit, the
    template its sealed column opens to. Both backends: the template's SHA-256 must be the one
    the ledger's last enrolment of the subject records (an older template put back fails). An
    enrolment recorded in the last two minutes but not stored yet is shown as in flight.
    pgvector: `_revoked` entries that disagree with the registry (one that hides a consenting
    subject, or one missing for a subject the registry forbids) are named too; opening the
    gallery repairs them, as any gallery command does; so are the triggers that move the change
    counter on every write to `_revoked` (missing, disabled or altered). Exit code 1 when a
    template, a revocation or a trigger is wrong.
    """
    with _serving_errors():
        paths = project()
        gallery = _open_gallery()
        report = gallery.check_templates(calibration=_served_calibration(paths, gallery))
    doc = report.to_dict()
    if as_json:
        emit_json(doc)
    else:
        for p in doc["problems"]:
            console.print(f"{p['pid']}  {p['kind']}: {p['what']}", highlight=False)
        for p in doc["revocations"]:
            console.print(f"{p['pid']}  {p['kind']}: {p['what']}", highlight=False)
        for t in doc["triggers"]:
            console.print(f"trigger {t['name']}  {t['kind']}: {t['what']}", highlight=False)
        for pid in doc["in_flight"]:
            console.print(
                f"{pid}  in flight: {MSG_IN_FLIGHT.format(s=IN_FLIGHT_S)}", highlight=False
            )
        kinds = ", ".join(f"{n} {k}" for k, n in doc["by_kind"].items())
        console.print(
            f"{doc['checked']} templates checked ({doc['backend']}): {doc['ok']} ok, "
            f"{doc['wrong']} wrong{f' ({kinds})' if kinds else ''}, "
            f"{len(doc['in_flight'])} in flight, {doc['stale']} of another embedder"
            + ("" if doc["clusters_checked"] else "; calibration clusters not compared")
            + (
                f"; {len(doc['revocations'])} revoked-table entries disagreed with the registry"
                if doc["revocations"]
                else ""
            )
            + (
                f"; {len(doc['triggers'])} change-counter triggers wrong" if doc["triggers"] else ""
            ),
            highlight=False,
        )
    if report.wrong:
        raise typer.Exit(1)


def _served_calibration(paths: ProjectPaths, gallery: Gallery) -> Any:
    """The score calibration a server would apply to ``gallery`` (None: none released or it
    cannot be read; the check then leaves clusters out and says so)."""
    try:
        return released_calibration(
            paths, latest_releases(gallery.core.ledger), model_version=gallery.model_version
        )
    except (OSError, ValueError):
        return None


@gallery_app.command("info")
def gallery_info(as_json: bool = JSON_OPT) -> None:
    """The identification operating point of the gallery: its size, the target FPIR, the 1:N
    threshold derived for them and the expected FNIR; flags a gallery too large for the target.

    The threshold comes from the released reports/score_model.json (serving.identify in
    params.yaml sets the target and the confidence of the bound); the 1:1 verification threshold
    is shown beside it. Counts and rates only.
    """
    with _serving_errors():
        paths = project()
        params = load_params(paths.params)
        gallery = _open_gallery()
        model, digest = load_score_model(
            paths,
            model_version=gallery.model_version,
            confidence=params.serving.identify.confidence,
        )
        check_released(latest_releases(gallery.core.ledger), SCORE_MODEL_JSON, digest)
        stats = gallery.stats()
        policy = IdentificationPolicy.from_params(model, params, verify_threshold=gallery.threshold)
        info = {
            **policy.status(int(stats["searchable"])),
            "stored": stats["stored"],
            "verify_threshold": gallery.threshold,
            "model_version": gallery.model_version,
        }
    if as_json:
        emit_json(info)
        return
    rows = [
        ("gallery size", f"{info['gallery_size']} searchable ({info['stored']} stored)"),
        ("target FPIR", f"{info['target_fpir']:g}"),
        ("1:N threshold", f"{info['threshold']:.4f} ({_threshold_basis(info)})"),
        ("required FMR", f"{info['required_fmr']:.3g} per comparison"),
        ("expected FPIR", _rate(info["expected_fpir"])),
        ("expected FNIR", _rate(info["expected_fnir"])),
        ("1:1 threshold", f"{info['verify_threshold']:.4f} (verify)"),
    ]
    if info.get("score_model_template_images"):
        rows.append(
            (
                "measured on",
                f"{info['score_model_template_images']}-image templates (the gallery stage "
                f"enrols {params.gallery.images_per_subject} images per subject)",
            )
        )
    for name, value in rows:
        console.print(f"{name:<16} {value}", highlight=False)
    if info["too_large"]:
        console.print(f"[bold red]too large:[/] {info['warning']}", highlight=False)
    else:
        console.print("size             within what the target allows at this accuracy")


def _threshold_basis(info: dict) -> str:
    if info.get("at_verify_threshold"):
        return AT_VERIFY_THRESHOLD
    return f"on {info.get('bound', 'a fixed threshold')}"


def _rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


@gallery_app.command("holdout")
def gallery_holdout(
    count: int = typer.Option(1, min=1, help="How many images to list."),
    out: Path = typer.Option(
        None,
        "--out",
        help="Decrypt the listed images into this folder (0700, files 0600), outside the project. "
        "They are faces in clear that no erasure can reach: delete them after use.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Images of searchable subjects that were NOT used to enrol them (to try identify).

    Lists pid and image id, one image per subject, and decrypts nothing: raw images are
    sealed, and a decrypted copy is a face in clear outside the project. With --out the listed
    images are decrypted there and their paths printed.
    """
    import pandas as pd

    with _serving_errors():
        paths = project()
        refuse_plaintext_inside(paths, out)
        params = load_params(paths.params)
        gallery = _open_gallery()
        manifest = pd.read_parquet(paths.processed / "manifest.parquet")
        picks = select_holdout(
            manifest,
            gallery.searchable(),
            per_subject=params.gallery.images_per_subject,
            count=count,
        )
        if picks.empty:
            searchable, stored = len(gallery.searchable()), len(gallery.stored())
            raise UserError(
                f"no held-out image of an enrolled subject: {searchable} of {stored} stored "
                "template(s) searchable, and every image of those was used to enrol them"
                + (
                    " (the others are refused or without a legal basis: `visage gallery "
                    "info` says why; `visage gallery rebuild` re-enrols from data/processed)"
                    if searchable < stored
                    else ""
                )
            )
        rows = [{"pid": str(r.pid), "image_id": str(r.image_id)} for r in picks.itertuples()]
        if out is not None:
            folder = private_dir(out)
            store = RawStore(paths, track=False)
            for row in rows:
                target = folder / f"{row['image_id']}.png"
                png = store.read_image(row["pid"], row["image_id"])
                atomic_write_bytes(target, png, mode=0o600)
                row["image"] = str(target)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        console.print(f"{r['pid']}  {r.get('image', r['image_id'])}", highlight=False)
    if out is not None:
        console.print("faces in clear: delete them after use", highlight=False)


EXPIRES_OPT = typer.Option(
    None,
    "--expires-in",
    help="Lifetime of the key: a number and a unit, s m h d w (e.g. 90d, 12h); default "
    "serving.auth.key_ttl_days.",
)


def _key_store() -> tuple[KeyStore, float]:
    """The project's key store (with its default lifetime) and the rotation grace in seconds."""
    paths = project()
    auth = load_params(paths.params).serving.auth
    return KeyStore(paths.api_keys, ttl_days=auth.key_ttl_days), auth.rotation_grace_hours * 3600


def _key_state(k: dict[str, object], now: float) -> str:
    if k["revoked"]:
        return "revoked"
    if now >= parse_time(str(k["expires"])):
        return "expired"
    if k.get("replaced_by"):
        return f"retiring (rotated to {k['replaced_by']})"
    return "active"


@apikey_app.command("create")
def apikey_create(
    role: str = typer.Option(..., "--role", help="operator, dpo, auditor or metrics."),
    expires_in: str = EXPIRES_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Create an API key and print it once; only its SHA-256 is stored. Every key expires."""

    with _serving_errors():
        store, _ = _key_store()
        ttl = parse_duration(expires_in) if expires_in is not None else None
        record, key = store.create(role, expires_in_s=ttl)
    if as_json:
        emit_json({"key": key, **record.public()})
        return
    console.print(
        f"key id {record.key_id}, role {record.role}, expires {record.expires}", highlight=False
    )
    console.print(key, highlight=False)
    console.print("Store the key now: it is not kept and cannot be shown again.")


@apikey_app.command("rotate")
def apikey_rotate(
    key_id: str = typer.Argument(..., help="The key id to replace."),
    expires_in: str = EXPIRES_OPT,
    grace: str = typer.Option(
        None,
        "--grace",
        help="How long the old key keeps working (e.g. 24h); default "
        "serving.auth.rotation_grace_hours.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Issue a new key (new id and secret, same role) for KEY_ID and retire the old one.

    The old key keeps working for the grace period so clients can switch; then it expires.
    """
    import time

    with _serving_errors():
        store, default_grace = _key_store()
        ttl = parse_duration(expires_in) if expires_in is not None else None
        grace_s = default_grace if grace is None else parse_duration(grace)
        try:
            record, key, old = store.rotate(key_id, grace_s=grace_s, expires_in_s=ttl)
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
    if as_json:
        emit_json({"key": key, **record.public(), "old": old.public()})
        return
    console.print(
        f"key id {record.key_id}, role {record.role}, expires {record.expires} "
        f"(replaces {old.key_id})",
        highlight=False,
    )
    console.print(key, highlight=False)
    console.print("Store the key now: it is not kept and cannot be shown again.")
    state = "expired" if time.time() >= parse_time(old.expires or "") else "works"
    console.print(f"the old key {old.key_id} {state} until {old.expires}", highlight=False)


@apikey_app.command("list")
def apikey_list(as_json: bool = JSON_OPT) -> None:
    """List API key ids, roles, creation and expiry times and state (never keys or hashes)."""
    import time

    with _serving_errors():
        store, _ = _key_store()
        now = time.time()
        keys = [{**k.public(), "state": _key_state(k.public(), now)} for k in store.list()]
    if as_json:
        emit_json(keys)
        return
    for k in keys:
        console.print(
            f"{k['key_id']}  {k['role']:<8}  created {k['created']}  expires {k['expires']}  "
            f"{k['state']}",
            highlight=False,
        )


@apikey_app.command("revoke")
def apikey_revoke(key_id: str = typer.Argument(..., help="The key id to revoke.")) -> None:
    """Revoke an API key (a running server refuses it from its next request)."""

    with _serving_errors():
        try:
            KeyStore(project().api_keys).revoke(key_id)
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
    console.print(f"key {key_id} revoked", highlight=False)
