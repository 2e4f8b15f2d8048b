"""The content an erasure looks for, and how a sealed image's plaintext is named in its records.

An erased artefact is named by the SHA-256 of its file as stored (a sealed image: ciphertext,
which says nothing of the face). A plaintext copy of a sealed image (an MLflow artefact, a file
someone decrypted) is looked for too, by the SHA-256 of its PNG; but that hash would stay in the
ledger and the certificate forever, and anyone holding a photograph that encodes to those bytes
could confirm it was the erased subject's. So the records keep it keyed, ``plain_mac``: HMAC
under the tombstone key (``secrets/tombstone.key``) of the PNG's SHA-256. A scan hashes each file
as before and keys only the 32-byte digest. Records made before carry ``plain_sha256``, which is
still looked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.privacy.tombstones import Tombstones

# The MAC's domain: a PNG's SHA-256, apart from the tombstones' pid and reference values.
PLAIN_KIND = "plain_sha256"
MSG_NO_KEY = "plaintext copies not looked for: the tombstone key is missing"


def plain_mac(tombstones: Tombstones, sha256: str) -> str:
    """The keyed name of a sealed image's plaintext (its PNG's SHA-256), for the records
    (``tombstones`` holds the key, read once for all of a subject's images)."""
    return tombstones.mac(PLAIN_KIND, sha256)


@dataclass(frozen=True)
class ContentHashes:
    """SHA-256s to look for, and keyed plaintext names matched through the tombstone key.

    ``digest in hashes`` for each file's SHA-256 (hex); ``len(hashes)`` how many are sought.
    """

    sha256s: frozenset[str]
    plain_macs: frozenset[str] = frozenset()
    key: bytes | None = None

    @classmethod
    def of(
        cls,
        paths: ProjectPaths,
        artefacts: Iterable[Mapping[str, Any]],
        *,
        exclude: Iterable[str | None] = (),
    ) -> ContentHashes:
        """What ``artefacts`` name (``sha256``, and ``plain_sha256`` of older records), and
        their ``plain_mac``; ``exclude``: SHA-256s not to look for (shared content in use)."""
        rows = [a for a in artefacts if isinstance(a, Mapping)]
        sha256s = {str(a[k]) for a in rows for k in ("sha256", PLAIN_KIND) if a.get(k)}
        macs = frozenset(str(a["plain_mac"]) for a in rows if a.get("plain_mac"))
        # Read only when a record names one: a key is never made by looking.
        key = Tombstones.open(paths).existing_key() if macs else None
        return cls(frozenset(sha256s - set(exclude)), macs, key)

    @property
    def keyed(self) -> bool:
        """Whether every keyed name can be looked for (False: the tombstone key is missing)."""
        return not self.plain_macs or self.key is not None

    def __contains__(self, digest: object) -> bool:
        if digest in self.sha256s:
            return True
        if not self.plain_macs or self.key is None or not isinstance(digest, str):
            return False
        return Tombstones.mac_with(self.key, PLAIN_KIND, digest) in self.plain_macs

    def __len__(self) -> int:
        return len(self.sha256s) + len(self.plain_macs)
