"""Consent receipts (Kantara Consent Receipt v1.1 / ISO/IEC TS 27560 fields) and legal bases.

A receipt describes what a subject agreed to, under which notice and how it was collected. It
holds no personal data itself: the notice is referred to by its SHA-256, the subject's own
evidence (e.g. the signed form) by an HMAC under their data key
(:meth:`~visage_ml.privacy.core.PrivacyCore.evidence_digest`, meaningless once the subject is
erased), an import's evidence by its SHA-256, and the subject by pid. It is stored inside the
signed ``consent.given`` ledger event, which makes it non-repudiable.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from visage_ml.config import PURPOSES
from visage_ml.io import canonical_json

RECEIPT_VERSION = "KI-CR-v1.1.0"

# GDPR Art. 6 (lawfulness) and Art. 9 (special categories: biometric data) conditions.
LEGAL_BASES: dict[str, str] = {
    "art6(1)(a)": "consent",
    "art6(1)(b)": "performance of a contract",
    "art6(1)(c)": "legal obligation",
    "art6(1)(e)": "public task",
    "art6(1)(f)": "legitimate interests",
    "art9(2)(a)": "explicit consent to processing of biometric data",
    "art9(2)(g)": "substantial public interest (Union or Member State law)",
    "art9(2)(j)": "archiving, scientific or historical research, or statistics (Art. 89(1))",
}
CONSENT_BASES: tuple[str, ...] = ("art6(1)(a)", "art9(2)(a)")
DATA_CATEGORIES: tuple[str, ...] = (
    "facial images",
    "biometric template",
    "age",
    "gender",
    "skin-tone group",
)

# Analytics counts the faces passing the camera without identifying anyone (no template; the
# consent registry is never asked), so it could not leave out a person who refused or withdrew
# consent: no one's consent is asked for it, and it rests on legitimate interests for everyone
# (privacy/records.yaml refuses consent as its basis).
ANALYTICS = "analytics"
CONSENT_PURPOSES: tuple[str, ...] = tuple(p for p in PURPOSES if p != ANALYTICS)
MSG_ANALYTICS_NOT_CONSENT = (
    "analytics does not rest on consent, so no consent to it can be given or withdrawn: it "
    "counts the faces passing the camera per time window and identifies no one (no template, "
    "nothing of a face kept past the window), so it could not leave one person out of the "
    "counts (Art. 11(1)). It rests on legitimate interests (Art. 6(1)(f)) for everyone the "
    "camera sees, as the notice says; a subject who disagrees can object (Art. 21): `visage "
    "privacy object PID -p analytics` (POST /v1/subjects/PID/object) records it for the DPO "
    "to weigh against the counting as a whole"
)
BAD_PURPOSE = "unknown purpose '{p}'; purposes are: " + ", ".join(PURPOSES)
BAD_BASIS = (
    "unknown legal basis '{b}'; accepted: "
    + ", ".join(LEGAL_BASES)
    + ". Biometric processing needs one Art. 6 and one Art. 9 condition."
)
INCOMPLETE_BASIS = (
    "legal basis {b} is incomplete: processing facial images for recognition is biometric "
    "data processing and needs one Art. 6 condition and one Art. 9 condition "
    "(e.g. art6(1)(a)+art9(2)(a) for explicit consent)"
)


def check_purposes(purposes: Any) -> tuple[str, ...]:
    """Validate and de-duplicate purposes, keeping the canonical order."""
    chosen = set(purposes)
    for p in chosen:
        if p not in PURPOSES:
            raise ValueError(BAD_PURPOSE.format(p=p))
    if not chosen:
        raise ValueError("name at least one purpose: " + ", ".join(PURPOSES))
    return tuple(p for p in PURPOSES if p in chosen)


def check_basis(basis: Any) -> tuple[str, ...]:
    """Validate a legal basis: known codes, one from Art. 6 and one from Art. 9."""
    codes = tuple(sorted(set(basis)))
    for b in codes:
        if b not in LEGAL_BASES:
            raise ValueError(BAD_BASIS.format(b=b))
    if not any(b.startswith("art6") for b in codes) or not any(b.startswith("art9") for b in codes):
        raise ValueError(INCOMPLETE_BASIS.format(b="+".join(codes) or "(none)"))
    return codes


def parse_basis(text: str) -> tuple[str, ...]:
    """``"art6(1)(f)+art9(2)(j)"`` -> validated codes."""
    return check_basis(p.strip() for p in text.replace(",", "+").split("+") if p.strip())


def sha256_text(text: str | bytes) -> str:
    """Hex SHA-256 of text or bytes (for notices and evidence)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ConsentReceipt:
    """The fields of a consent receipt, without any personal data."""

    controller: str
    controller_contact: str
    purposes: tuple[str, ...]
    notice_version: str
    notice_hash: str
    collection_method: str
    given_at: str
    legal_basis: tuple[str, ...] = CONSENT_BASES
    data_categories: tuple[str, ...] = DATA_CATEGORIES
    language: str = "en"
    jurisdiction: str = "EU"
    evidence_hash: str | None = None
    sensitive: bool = True
    third_party_sharing: bool = False
    version: str = RECEIPT_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "purposes", check_purposes(self.purposes))
        object.__setattr__(self, "legal_basis", check_basis(self.legal_basis))
        for name in ("notice_hash", "evidence_hash"):
            value = getattr(self, name)
            if value is not None and (
                len(value) != 64 or any(c not in "0123456789abcdef" for c in value)
            ):
                raise ValueError(f"{name} must be a lowercase hex SHA-256, got {value[:20]!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["purposes"] = list(self.purposes)
        d["legal_basis"] = list(self.legal_basis)
        d["data_categories"] = list(self.data_categories)
        return d

    def digest(self) -> str:
        """SHA-256 of the receipt's canonical JSON."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()
