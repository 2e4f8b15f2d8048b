"""Witnesses of the ledger's checkpoints: the C2SP tlog-witness state machine, its folder, its
HTTP face, and the clients a project uses to reach one.

A witness is a separate key and a separate store. Its folder holds

- ``witness.key``: its Ed25519 key as Go's signer-key text (``PRIVATE+KEY+name+id+...``, 0600),
- ``witness.vkey``: its cosignature verifier key (type 0x04), what a project pins,
- ``logs/<sha256(origin)>/state.json``: per log (origin), the log keys it trusts (pinned vkeys),
  the size and root of the latest checkpoint it cosigned and that cosigned checkpoint,
- ``projects/<project id>.json``: per project (an opaque id, the hash of its folder), the one
  log it is bound to (:meth:`Witness.bind`), and ``projects/released.jsonl``, every binding the
  witness's operator released.

A project binds its folder to its log the first time it is witnessed, with a note signed by the
log key. A ledger rebuilt in the same folder under a brand-new key is a new log (its origin is
named after its first key), and the witness refuses to bind it (409): deleting the ledger, its
keys and its checkpoints and re-signing a history without a withdrawal is detected, not
trusted on first use. Only the witness's operator releases a binding (``visage witness
release``), an act the witness records.

:meth:`Witness.add_checkpoint` is ``add-checkpoint`` of c2sp.org/tlog-witness: the checkpoint
must be signed by a pinned key of its origin (404 for an unknown origin, 403 for no valid
signature), ``old`` must be at most the new size (400) and equal to the size it last cosigned
(409 Conflict with that size, ``text/x.tlog.size``), the consistency proof from that size must
verify (422) and an equal size must have an equal root (409). Only then is the new checkpoint
stored (atomically, under a lock, so two requests can never roll it back) and a timestamped
cosignature (c2sp.org/tlog-cosignature, Ed25519 ``cosignature/v1``) returned. A witness never
cosigns a smaller or forked tree.

Log keys change only through the ledger: :meth:`Witness.rotate_log_key` accepts a new key when
shown the ``ledger.key_rotated`` entry (signed by a pinned key, vouched for by the new one) and
its inclusion proof in the checkpoint the witness already cosigned.

A *directory witness* is this state machine used in-process on a folder (ideally another volume);
``visage witness serve`` puts it behind HTTP (:func:`make_server`). :class:`DirectoryWitness`
and :class:`HttpWitness` are the two clients a project talks to.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from visage_ml.io import atomic_write_bytes, file_lock, private_dir
from visage_ml.privacy import merkle
from visage_ml.privacy.checkpoint import (
    ED25519,
    Checkpoint,
    Note,
    NoteError,
    Signature,
    Signer,
    Verifier,
    cosigner,
    format_add_checkpoint,
    parse_add_checkpoint,
    parse_checkpoint,
    parse_note,
    parse_signature_line,
    parse_skey,
    parse_vkey,
    verify_note,
)
from visage_ml.privacy.ledger import ROTATION_TYPE, check_rotation

log = logging.getLogger(__name__)

WITNESS_DIR_ENV = "VISAGE_WITNESS_DIR"
KEY_FILE = "witness.key"
VKEY_FILE = "witness.vkey"
STATE_FILE = "state.json"
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_BODY = 64 * 1024
ROTATE_PATH = "/visage/rotate-log-key"
CHECKPOINT_PATH = "/visage/checkpoint"

# The name of a witness made without --name, the default directory witness of a project or one
# served from another host alike. A name is whatever its creator typed: it says nothing of who
# runs the witness, nor of its kind (the controller's page goes by privacy.witness instead).
LOCAL_WITNESS_PREFIX = "visage-witness.local/"
MSG_UNKNOWN_ORIGIN = (
    "this witness does not know the log {origin}; its operator adds it with "
    "`visage witness add-log '<log vkey>'` (the project prints its vkey: `visage witness "
    "log-key`)"
)
MSG_NOT_SIGNED = "the checkpoint is not signed by a key this witness trusts for {origin}"
MSG_OLD_TOO_BIG = "old size {old} is larger than the checkpoint size {size}"
MSG_CONFLICT = "old size {old} is not the size {size} this witness last cosigned for {origin}"
MSG_FORK = "same size {size} as the last cosigned checkpoint, but another root: a fork"
MSG_BAD_PROOF = "the consistency proof from size {old} to {size} does not verify"
MSG_PINNED = (
    "the witness already trusts other keys for {origin}; a log key changes only through a "
    "signed ledger.key_rotated entry (`visage privacy rotate-ledger-key`)"
)
MSG_NO_KEY = "{path} holds no witness key: create one with `visage witness init --dir {dir}`"
MSG_REBOUND = (
    "project {project} is bound to the log {bound}; this witness refuses the new log {origin} "
    "for it: its ledger was replaced (rebuilt under a new key, or the project re-created in "
    "the same folder). If the project was re-created on purpose and holds no personal data of "
    "the old one, the witness's operator releases it: `visage witness release <project "
    "folder>`"
)
MSG_STATE_LOST = (
    "this witness binds {n} project(s) to the log {origin} but holds no state for it: the state "
    "was deleted or lost, and witnessing the log again from nothing would cosign a ledger cut "
    "back. Restore the witness's folder from a backup; if the state is lost for good, release "
    "each project first (`visage witness release <project folder> --reason CODE`, recorded), "
    "then add the log again"
)
BINDING_HEADER = "visage-ml/project-binding"
PROJECTS_DIR = "projects"
RELEASED_FILE = "released.jsonl"
BIND_PATH = "/visage/bind"
PROJECT_PATH = "/visage/project"


class WitnessError(Exception):
    """A witness refused or could not answer; ``status`` is the HTTP status it means."""

    def __init__(self, status: int, message: str, *, size: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.size = size


def default_witness_dir() -> Path:
    """``$VISAGE_WITNESS_DIR``, else ``~/.local/share/visage-ml/witness``."""
    env = os.environ.get(WITNESS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "visage-ml" / "witness"


# ---------------------------------------------------------------------------------------------
# The state machine and its folder
# ---------------------------------------------------------------------------------------------


@dataclass
class LogState:
    """What a witness keeps about one log."""

    origin: str
    keys: list[str]
    size: int = 0
    root: bytes = merkle.EMPTY_ROOT
    checkpoint: bytes | None = None
    retired: list[dict[str, Any]] = field(default_factory=list)

    def verifiers(self) -> list[Verifier]:
        return [parse_vkey(k) for k in self.keys]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "origin": self.origin,
                "keys": self.keys,
                "size": self.size,
                "root": base64.b64encode(self.root).decode("ascii"),
                "checkpoint": self.checkpoint.decode("utf-8") if self.checkpoint else None,
                "retired": self.retired,
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_json(cls, data: bytes) -> LogState:
        doc = orjson.loads(data)
        cp = doc.get("checkpoint")
        return cls(
            origin=doc["origin"],
            keys=list(doc["keys"]),
            size=int(doc["size"]),
            root=base64.b64decode(doc["root"]),
            checkpoint=cp.encode("utf-8") if cp else None,
            retired=list(doc.get("retired") or []),
        )


class Witness:
    """A witness kept in folder ``root`` (its key and, per log, its state).

    Parameters
    ----------
    root
        The witness's folder; see :meth:`create` to make one.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._signer: Signer | None = None
        self._mutex = threading.Lock()

    # -- keys ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, *, name: str | None = None) -> Witness:
        """Open the witness in ``root``, creating its folder (0700) and key on first use."""
        root = Path(root).expanduser()
        private_dir(root)
        key_path = root / KEY_FILE
        with file_lock(root / ".lock"):
            if not key_path.exists():
                chosen = name or f"{LOCAL_WITNESS_PREFIX}{os.urandom(4).hex()}"
                signer = Signer(chosen, Ed25519PrivateKey.generate())
                atomic_write_bytes(key_path, (signer.skey + "\n").encode("ascii"), mode=0o600)
                vkey = signer.verifier(0x04).vkey
                atomic_write_bytes(root / VKEY_FILE, (vkey + "\n").encode("ascii"), mode=0o644)
                log.info("witness key created in %s (%s)", root, chosen)
        return cls(root)

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            path = self.root / KEY_FILE
            try:
                self._signer = parse_skey(path.read_text(encoding="ascii"))
            except (OSError, NoteError, UnicodeDecodeError):
                raise WitnessError(500, MSG_NO_KEY.format(path=path, dir=self.root)) from None
        return self._signer

    @property
    def name(self) -> str:
        return self.signer.name

    @property
    def verifier(self) -> Verifier:
        """The cosignature/v1 key of this witness (what projects pin)."""
        return self.signer.verifier(0x04)

    @staticmethod
    def published_verifier(root: Path) -> Verifier | None:
        """The witness's public key as its folder publishes it (``witness.vkey``), if any."""
        try:
            return cosigner(parse_vkey((Path(root) / VKEY_FILE).read_text(encoding="ascii")))
        except (OSError, NoteError, UnicodeDecodeError):
            return None

    # -- logs ----------------------------------------------------------------------------------
    def _log_dir(self, origin: str) -> Path:
        return self.root / "logs" / hashlib.sha256(origin.encode("utf-8")).hexdigest()[:32]

    def state_path(self, origin: str) -> Path:
        """Where the state of ``origin`` is kept (``logs/<hash>/state.json``)."""
        return self._log_dir(origin) / STATE_FILE

    def log(self, origin: str) -> LogState | None:
        """The state kept for ``origin`` (None when this witness does not know it)."""
        path = self.state_path(origin)
        try:
            state = LogState.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WitnessError(500, f"{path} is unreadable ({type(exc).__name__})") from None
        if state.origin != origin:
            raise WitnessError(500, f"{path} holds another log's state")
        return state

    def logs(self) -> list[LogState]:
        """Every log this witness knows."""
        out = []
        for path in sorted((self.root / "logs").glob(f"*/{STATE_FILE}")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                out.append(LogState.from_json(path.read_bytes()))
        return out

    def _store(self, state: LogState) -> None:
        private_dir(self.root / "logs")
        folder = private_dir(self._log_dir(state.origin))
        atomic_write_bytes(folder / STATE_FILE, state.to_json(), mode=0o600)

    @contextlib.contextmanager
    def _locked(self, origin: str) -> Iterator[None]:
        # A thread lock for the HTTP server's threads, a file lock for other processes.
        private_dir(self.root / "logs")
        folder = private_dir(self._log_dir(origin))
        with self._mutex, file_lock(folder / ".lock"):
            yield

    def add_log(self, vkey: str) -> LogState:
        """Trust the log key ``vkey`` (its name is the log's origin); idempotent.

        Raises
        ------
        WitnessError
            The origin is already pinned to other keys (409): keys change only by rotation;
            or it holds no state for the origin although a project is bound to it (409: the
            state was lost; a binding is released first, on the record).
        """
        v = parse_vkey(vkey)
        if v.sig_type != ED25519:
            raise WitnessError(400, "a log key is an Ed25519 vkey (type 0x01)")
        with self._locked(v.name):
            state = self.log(v.name)
            if state is None:
                # A binding is made only once the log's state is stored: one still there means
                # the state was lost, not that the log is new.
                bound = self.projects_bound_to(v.name)
                if bound:
                    raise WitnessError(409, MSG_STATE_LOST.format(n=bound, origin=v.name))
                state = LogState(origin=v.name, keys=[v.vkey])
                self._store(state)
                log.info("witness %s now witnesses %s", self.root, v.name)
            elif v.vkey not in state.keys:
                raise WitnessError(409, MSG_PINNED.format(origin=v.name))
            return state

    # -- project bindings ----------------------------------------------------------------------
    def _project_file(self, project: str) -> Path:
        if not _is_project_id(project):
            raise WitnessError(400, "a project id is 64 lowercase hex digits")
        return self.root / PROJECTS_DIR / f"{project}.json"

    def bound(self, project: str) -> str | None:
        """The origin of the log ``project`` is bound to (None when it is not bound)."""
        path = self._project_file(project)
        try:
            return str(orjson.loads(path.read_bytes())["origin"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WitnessError(500, f"{path} is unreadable ({type(exc).__name__})") from None

    def projects_bound_to(self, origin: str) -> int:
        """How many projects this witness binds to the log ``origin`` (unreadable files are
        not counted)."""
        n = 0
        for path in (self.root / PROJECTS_DIR).glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                n += orjson.loads(path.read_bytes())["origin"] == origin
        return n

    def bind(self, note: bytes) -> str:
        """Bind a project to its log, from a binding note signed by a key the log pins.

        The note's text is ``visage-ml/project-binding``, the project id and the origin, one
        per line (:func:`binding_text`). Binding the same log again is a no-op.

        Returns
        -------
        str
            The origin the project is bound to.

        Raises
        ------
        WitnessError
            400 malformed, 404 unknown log, 403 not signed by its key, 409 the project is bound
            to another log (its ledger was replaced).
        """
        try:
            parsed = parse_note(note)
        except NoteError as exc:
            raise WitnessError(400, str(exc)) from None
        lines = parsed.text.decode("utf-8").split("\n")
        if len(lines) != 4 or lines[0] != BINDING_HEADER or lines[3] != "":
            raise WitnessError(400, "not a project-binding note")
        project, origin = lines[1], lines[2]
        path = self._project_file(project)
        state = self.log(origin)
        if state is None:
            raise WitnessError(404, MSG_UNKNOWN_ORIGIN.format(origin=origin))
        try:
            verify_note(parsed, state.verifiers())
        except NoteError:
            raise WitnessError(403, MSG_NOT_SIGNED.format(origin=origin)) from None
        folder = private_dir(self.root / PROJECTS_DIR)
        with self._mutex, file_lock(folder / ".lock"):
            bound = self.bound(project)
            if bound is None:
                doc = {"project": project, "origin": origin, "bound_at": _now()}
                atomic_write_bytes(path, orjson.dumps(doc), mode=0o600)
                log.info("witness %s: a project is now bound to %s", self.root, origin)
            elif bound != origin:
                log.warning("witness %s refused to rebind a project of %s", self.root, bound)
                raise WitnessError(
                    409, MSG_REBOUND.format(project=project[:16], bound=bound, origin=origin)
                )
        return origin

    def release(self, project: str, *, reason: str = "") -> str | None:
        """Release ``project``'s binding (the witness operator's act, recorded); returns the
        origin it was bound to, or None when it was not bound."""
        folder = private_dir(self.root / PROJECTS_DIR)
        with self._mutex, file_lock(folder / ".lock"):
            bound = self.bound(project)
            if bound is None:
                return None
            record = {"project": project, "origin": bound, "released_at": _now(), "reason": reason}
            with open(folder / RELEASED_FILE, "ab") as fh:
                fh.write(orjson.dumps(record) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._project_file(project).unlink()
            log.info("witness %s: a project's binding to %s released", self.root, bound)
            return bound

    # -- add-checkpoint ------------------------------------------------------------------------
    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: bytes) -> Signature:
        """Check and store checkpoint ``note``; return this witness's cosignature.

        Raises
        ------
        WitnessError
            With the status c2sp.org/tlog-witness prescribes (400, 403, 404, 409, 422).
        """
        try:
            parsed = parse_note(note)
            cp = parse_checkpoint(parsed.text)
        except NoteError as exc:
            raise WitnessError(400, str(exc)) from None
        state = self.log(cp.origin)
        if state is None:
            raise WitnessError(404, MSG_UNKNOWN_ORIGIN.format(origin=cp.origin))
        try:
            verified = verify_note(parsed, state.verifiers())
        except NoteError:
            raise WitnessError(403, MSG_NOT_SIGNED.format(origin=cp.origin)) from None
        if old_size > cp.size:
            raise WitnessError(400, MSG_OLD_TOO_BIG.format(old=old_size, size=cp.size))
        with self._locked(cp.origin):
            state = self.log(cp.origin)
            if state is None:  # removed by hand while this request waited
                raise WitnessError(404, MSG_UNKNOWN_ORIGIN.format(origin=cp.origin))
            if old_size != state.size:
                raise WitnessError(
                    409,
                    MSG_CONFLICT.format(old=old_size, size=state.size, origin=cp.origin),
                    size=state.size,
                )
            if old_size == cp.size:
                if cp.root != state.root:
                    raise WitnessError(409, MSG_FORK.format(size=cp.size), size=state.size)
            elif old_size == 0:
                if proof:
                    raise WitnessError(422, "the proof must be empty when the old size is 0")
            elif not merkle.verify_consistency(old_size, cp.size, proof, state.root, cp.root):
                log.warning(
                    "witness %s refused an inconsistent checkpoint of %s (old %d, size %d)",
                    self.name,
                    cp.origin,
                    old_size,
                    cp.size,
                )
                raise WitnessError(422, MSG_BAD_PROOF.format(old=old_size, size=cp.size))
            cosig = self.signer.cosign(parsed.text)
            # Kept: the log's verified signatures and this cosignature.
            keep = [
                s
                for s in parsed.signatures
                if any(s.name == v.name and s.key_id == v.key_id for v in verified)
            ]
            state.size, state.root = cp.size, cp.root
            state.checkpoint = Note(parsed.text, (*keep, cosig)).to_bytes()
            self._store(state)
        return cosig

    def handle_add_checkpoint(self, body: bytes) -> bytes:
        """An ``add-checkpoint`` request body in, the response body (signature lines) out."""
        try:
            old, proof, note = parse_add_checkpoint(body)
        except NoteError as exc:
            raise WitnessError(400, str(exc)) from None
        return self.add_checkpoint(old, proof, note).line()

    def latest(self, origin: str) -> bytes | None:
        """The latest checkpoint cosigned for ``origin`` (log signatures and cosignature)."""
        state = self.log(origin)
        return state.checkpoint if state is not None else None

    # -- log key rotation ----------------------------------------------------------------------
    def rotate_log_key(
        self, origin: str, entry_line: bytes, index: int, proof: Sequence[bytes]
    ) -> LogState:
        """Trust the new key of a ``ledger.key_rotated`` entry of log ``origin``.

        The entry (its exact ledger line) must be included at ``index`` in the tree this
        witness last cosigned, signed by a key it trusts, and vouched for by the new key. The
        old key is retired: checkpoints signed by it alone are refused from now on.

        Raises
        ------
        WitnessError
            404 unknown origin, 422 not included or not a valid rotation by a trusted key.
        """
        with self._locked(origin):
            state = self.log(origin)
            if state is None:
                raise WitnessError(404, MSG_UNKNOWN_ORIGIN.format(origin=origin))
            leaf = merkle.leaf_hash(entry_line)
            if not merkle.verify_inclusion(leaf, index, state.size, proof, state.root):
                raise WitnessError(
                    422, "the rotation entry is not in the checkpoint this witness cosigned"
                )
            try:
                obj = orjson.loads(entry_line)
            except ValueError:
                raise WitnessError(422, "the rotation entry is not JSON") from None
            if obj.get("type") != ROTATION_TYPE or obj.get("seq") != index:
                raise WitnessError(422, "not the ledger.key_rotated entry at that index")
            trusted = {v.raw: v for v in state.verifiers()}
            try:
                old = base64.b64decode(obj["payload"]["old_key"], validate=True)
            except (KeyError, TypeError, ValueError, binascii.Error):
                raise WitnessError(422, "the rotation entry is malformed") from None
            if old not in trusted:
                raise WitnessError(422, "the rotation is signed by a key this witness does not pin")
            try:
                new = check_rotation(obj, old)
            except ValueError as exc:
                raise WitnessError(422, str(exc)) from None
            new_vkey = Verifier(origin, ED25519, Ed25519PublicKey.from_public_bytes(new)).vkey
            if new_vkey not in state.keys:
                state.keys = [new_vkey]
                state.retired.append(
                    {"key": trusted[old].vkey, "rotated_at_seq": index, "to": new_vkey}
                )
                self._store(state)
                log.info("witness %s: log key of %s rotated at seq %d", self.name, origin, index)
            return state


# ---------------------------------------------------------------------------------------------
# HTTP (visage witness serve)
# ---------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "visage-witness"
    protocol_version = "HTTP/1.1"
    timeout = 15  # seconds a client may take to send its request (slow bodies are cut off)

    @property
    def witness(self) -> Witness:
        return self.server.witness  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._send(411, b"a Content-Length is required\n")
            return None
        if int(length) > MAX_BODY:
            self.close_connection = True
            self._send(413, b"request body too large\n")
            return None
        return self.rfile.read(int(length))

    def _error(self, exc: WitnessError) -> None:
        if exc.status == 409 and exc.size is not None:
            self._send(409, f"{exc.size}\n".encode("ascii"), SIZE_CONTENT_TYPE)
        else:
            self._send(exc.status, (str(exc) + "\n").encode("utf-8"))

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path not in ("/add-checkpoint", ROTATE_PATH, BIND_PATH):
            self._send(404, b"not found\n")
            return
        body = self._body()
        if body is None:
            return
        try:
            if path == "/add-checkpoint":
                self._send(200, self.witness.handle_add_checkpoint(body))
            elif path == BIND_PATH:
                self._send(200, (self.witness.bind(body) + "\n").encode("utf-8"))
            else:
                doc = json.loads(body)
                self.witness.rotate_log_key(
                    str(doc["origin"]),
                    base64.b64decode(doc["entry"], validate=True),
                    int(doc["index"]),
                    [base64.b64decode(h, validate=True) for h in doc["proof"]],
                )
                self._send(200, b"ok\n")
        except WitnessError as exc:
            self._error(exc)
        except (ValueError, KeyError, TypeError, binascii.Error):
            self._send(400, b"malformed request\n")

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/visage/key":
            self._send(200, (self.witness.verifier.vkey + "\n").encode("ascii"))
            return
        if parts.path == PROJECT_PATH:
            project = urllib.parse.parse_qs(parts.query).get("id", [""])[0]
            try:
                bound = self.witness.bound(project)
            except WitnessError as exc:
                self._error(exc)
                return
            if bound is None:
                self._send(404, b"this project is not bound\n")
            else:
                self._send(200, (bound + "\n").encode("utf-8"))
            return
        if parts.path != CHECKPOINT_PATH:
            self._send(404, b"not found\n")
            return
        origin = urllib.parse.parse_qs(parts.query).get("origin", [""])[0]
        try:
            note = self.witness.latest(origin) if origin else None
        except WitnessError as exc:
            self._error(exc)
            return
        if note is None:
            self._send(404, b"no checkpoint for this origin\n")
        else:
            self._send(200, note)


def make_server(witness: Witness, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server speaking tlog-witness ``add-checkpoint`` for ``witness`` (not started).

    Besides the C2SP endpoint it answers ``GET /visage/checkpoint?origin=...`` (the latest
    cosigned checkpoint, what a project checks when it opens its ledger), ``GET /visage/key``,
    ``POST /visage/rotate-log-key`` (JSON: origin, entry, index, proof), ``POST /visage/bind``
    (a signed project-binding note) and ``GET /visage/project?id=...`` (the bound origin).
    """
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.witness = witness  # type: ignore[attr-defined]
    return server


# ---------------------------------------------------------------------------------------------
# Clients (what a project talks to)
# ---------------------------------------------------------------------------------------------


class WitnessClient(Protocol):
    """A witness as a project sees it."""

    @property
    def where(self) -> str: ...

    def cosigner(self) -> Verifier | None: ...

    def known_size(self, origin: str) -> int | None: ...

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: bytes) -> Signature: ...

    def latest(self, origin: str) -> bytes | None: ...

    def rotate_log_key(
        self, origin: str, entry_line: bytes, index: int, proof: Sequence[bytes]
    ) -> None: ...

    def ensure_log(self, vkey: str) -> None: ...

    def bind(self, note: bytes) -> str: ...

    def bound(self, project: str) -> str | None: ...


class DirectoryWitness:
    """A witness in a folder, used in-process (created with its key on first use).

    What it has cosigned (:meth:`latest`, :meth:`known_size`, :meth:`bound`) is read from the
    folder as found, whether or not its key files are there: a folder stripped of
    ``witness.key`` still holds the checkpoints that show a ledger cut back. Reading creates
    nothing; a missing file reads as nothing cosigned.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self._witness: Witness | None = None

    @property
    def where(self) -> str:
        return f"directory witness {self.root}"

    @property
    def witness(self) -> Witness:
        if self._witness is None:
            self._witness = Witness.create(self.root)
        return self._witness

    def cosigner(self) -> Verifier | None:
        """The witness's published key; None when the folder holds no witness yet."""
        return Witness.published_verifier(self.root)

    def known_size(self, origin: str) -> int | None:
        state = Witness(self.root).log(origin)
        return state.size if state is not None else None

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: bytes) -> Signature:
        return self.witness.add_checkpoint(old_size, proof, note)

    def latest(self, origin: str) -> bytes | None:
        return Witness(self.root).latest(origin)

    def lost_state(self, origin: str, project: str) -> str | None:
        """Why this folder must once have held a state for ``origin`` that it holds no more:
        it binds ``project`` to that log, and a binding is made only once the log's state is
        stored (None: it holds one, or shows no sign of ever having had one).

        Raises
        ------
        WitnessError
            The binding file is unreadable (500).
        """
        witness = Witness(self.root)
        state = witness.state_path(origin)
        if state.exists() or witness.bound(project) != origin:
            return None
        return f"{state} is gone, though the folder binds this project to that log"

    def rotate_log_key(
        self, origin: str, entry_line: bytes, index: int, proof: Sequence[bytes]
    ) -> None:
        self.witness.rotate_log_key(origin, entry_line, index, proof)

    def ensure_log(self, vkey: str) -> None:
        """Trust on first use: the project's own directory witness learns its log key."""
        origin = parse_vkey(vkey).name
        if self.witness.log(origin) is None:
            self.witness.add_log(vkey)

    def bind(self, note: bytes) -> str:
        return self.witness.bind(note)

    def bound(self, project: str) -> str | None:
        return Witness(self.root).bound(project)


class HttpWitness:
    """A witness behind ``visage witness serve`` (or any tlog-witness) at ``url``."""

    def __init__(self, url: str, vkey: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.vkey = vkey
        self.timeout = timeout

    @property
    def where(self) -> str:
        return f"http witness {self.url}"

    def cosigner(self) -> Verifier | None:
        return cosigner(self.vkey)

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, str]:
        req = urllib.request.Request(self.url + path, data=body, method=method)  # noqa: S310
        if body is not None:
            req.add_header("Content-Type", "text/plain")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return resp.status, resp.read(MAX_BODY), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(MAX_BODY), exc.headers.get("Content-Type", "")
        except (urllib.error.URLError, OSError) as exc:
            raise WitnessError(503, f"{self.where} is unreachable ({exc})") from None

    def known_size(self, origin: str) -> int | None:
        return None

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: bytes) -> Signature:
        status, body, ctype = self._request(
            "POST", "/add-checkpoint", format_add_checkpoint(old_size, proof, note)
        )
        if status == 409 and ctype.startswith(SIZE_CONTENT_TYPE):
            text = body.decode("ascii", "replace").strip()
            size = int(text) if text.isdigit() else None
            raise WitnessError(409, f"{self.where}: conflict (its size {text})", size=size)
        if status != 200:
            detail = body.decode("utf-8", "replace").strip()[:300]
            raise WitnessError(status, f"{self.where} answered {status}: {detail}")
        wanted = self.cosigner()
        for line in body.decode("utf-8", "replace").splitlines():
            with contextlib.suppress(NoteError):
                sig = parse_signature_line(line)
                if wanted is not None and (sig.name, sig.key_id) == (wanted.name, wanted.key_id):
                    return sig
        raise WitnessError(502, f"{self.where} returned no cosignature of its pinned key")

    def latest(self, origin: str) -> bytes | None:
        query = urllib.parse.urlencode({"origin": origin})
        status, body, _ = self._request("GET", f"{CHECKPOINT_PATH}?{query}")
        if status == 404:
            return None
        if status != 200:
            raise WitnessError(status, f"{self.where} answered {status}")
        return body

    def rotate_log_key(
        self, origin: str, entry_line: bytes, index: int, proof: Sequence[bytes]
    ) -> None:
        doc = {
            "origin": origin,
            "entry": base64.b64encode(entry_line).decode("ascii"),
            "index": index,
            "proof": [base64.b64encode(h).decode("ascii") for h in proof],
        }
        status, body, _ = self._request("POST", ROTATE_PATH, json.dumps(doc).encode())
        if status != 200:
            detail = body.decode("utf-8", "replace").strip()[:300]
            raise WitnessError(status, f"{self.where} refused the key rotation: {detail}")

    def ensure_log(self, vkey: str) -> None:
        """Nothing to do: a remote witness's operator adds logs (`visage witness add-log`)."""

    def bind(self, note: bytes) -> str:
        status, body, _ = self._request("POST", BIND_PATH, note)
        if status != 200:
            detail = body.decode("utf-8", "replace").strip()[:400]
            raise WitnessError(status, f"{self.where} answered {status}: {detail}")
        return body.decode("utf-8", "replace").strip()

    def bound(self, project: str) -> str | None:
        query = urllib.parse.urlencode({"id": project})
        status, body, _ = self._request("GET", f"{PROJECT_PATH}?{query}")
        if status == 404:
            return None
        if status != 200:
            raise WitnessError(status, f"{self.where} answered {status}")
        return body.decode("utf-8", "replace").strip()


def checkpoint_of(note: bytes) -> Checkpoint:
    """The checkpoint a signed note carries (signatures not verified)."""
    return parse_checkpoint(parse_note(note).text)


def project_id(root: Path) -> str:
    """The id under which witnesses bind the project in folder ``root`` (the hash of its
    resolved path: a witness learns nothing of the folder's name)."""
    text = "visage-ml project\n" + str(Path(root).resolve())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def binding_text(project: str, origin: str) -> bytes:
    """The text of the note that binds ``project`` to the log ``origin`` (signed by its key)."""
    return f"{BINDING_HEADER}\n{project}\n{origin}\n".encode()


def _is_project_id(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
