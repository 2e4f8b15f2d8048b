"""The subject's keys as they are once unwrapped, sought as copies: added to the tombstones
before the key files go.

The erasure destroys the subject's wrapped key files (the data key's ``privacy/keys/<pid>.key``,
the vault's, the gallery's) and keeps the master key. The key itself, 32 bytes once unwrapped
(what ``DataKeys.for_project(paths).key(pid)`` returns), printed by an operator in a notebook's
output or a file (``key.hex()``, ``base64.b64encode(key)``) or saved as it is, opens every sealed
copy of the subject without any key file: a DVC remote's, an off-site backup's. So each is
sought by the copies step and the verifier, as a key file's copy is
(:mod:`visage_ml.rights.embedded_text`: a run of 64 hex digits, base64 of 32 bytes), through
the tombstones: the MAC of each key's SHA-256 and a keyed tag of it go there, under the
tombstone key (:meth:`~visage_ml.privacy.tombstones.Tombstones.add_keys`), never to the ledger
or the certificate (the SHA-256 of a key is a check value of it, and beside the pid).

Run first in each step that destroys a key (``gallery``, ``vault``, ``raw``), so that no key
goes before its MAC is written, and a run resumed after a key went finds the rest. It removes
nothing and plans nothing.
"""

from __future__ import annotations

from visage_ml.privacy.datakeys import keyring_folders
from visage_ml.privacy.keys import MasterKeyError, load_master_key
from visage_ml.privacy.sealed import KeyDestroyedError, KeyRing
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan

# The key rings of a subject's keys (not the collections': no subject's).
RINGS = ("data", "vault", "gallery")


def keys(ctx: Context, pid: str) -> list[bytes]:
    """Each of ``pid``'s keys still there, unwrapped (held in memory for the tombstones' MACs
    alone, never written or logged)."""
    folders = keyring_folders(ctx.paths)
    there = [folders[r] for r in RINGS if (folders[r][0] / f"{pid}.key").is_file()]
    if not there:
        return []
    master = load_master_key(ctx.paths.master_key, create=False)
    out = []
    for folder, context in there:
        try:
            key = KeyRing(folder, master, context=context).get(pid)
        except KeyDestroyedError:  # gone meanwhile: nothing left to seek of it
            continue
        out.append(key)
    return out


def plan(ctx: Context, pid: str) -> Plan | None:
    """Nothing to remove: the keys are the next stores' to destroy."""
    return None


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Add the MAC of each of the subject's keys still there to the tombstones (once; a
    resumed run finds them there)."""
    try:
        found = keys(ctx, pid)
    except MasterKeyError:
        # No master key: no key can be unwrapped, by the erasure or by anyone holding a copy of
        # a key file; the stores that destroy them say what they need.
        return Outcome()
    ctx.core.tombstones.add_keys(found)
    return Outcome()


def verify(ctx: Context, pid: str) -> list[str]:
    """Nothing to remove: the tombstones keep what is sought on purpose."""
    return []
