"""The legal basis recorded for every subject of an import: consent evidence or another basis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from visage_ml.config import ProjectParams
from visage_ml.data.importers.common import (
    BASIS_REQUIRED,
    BOTH_BASES,
    CONSENT_NEEDS_EVIDENCE,
    DEFAULT_PURPOSES,
    BasisRequiredError,
)
from visage_ml.privacy.consent import (
    ANALYTICS,
    CONSENT_BASES,
    MSG_ANALYTICS_NOT_CONSENT,
    ConsentReceipt,
    check_purposes,
    parse_basis,
    sha256_text,
)
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.documents import notice_for_receipts
from visage_ml.privacy.ledger import utc_now
from visage_ml.privacy.records import ensure_records


@dataclass(frozen=True)
class ImportBasis:
    """The legal basis recorded for every imported subject.

    ``kind == "consent"``: a consent receipt per subject (Art. 6(1)(a) + 9(2)(a)) holding the
    evidence's SHA-256. ``kind == "legal_basis"``: a ``basis.recorded`` event with the codes.
    """

    kind: Literal["consent", "legal_basis"]
    purposes: tuple[str, ...]
    legal_basis: tuple[str, ...]
    evidence_hash: str | None = None
    notice_version: str = "v1"
    notice_hash: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        consent_evidence: Path | None = None,
        legal_basis: str | None = None,
        purposes: Sequence[str] | None = None,
        basis_evidence: Path | None = None,
        notice_file: Path | None = None,
        notice_version: str = "v1",
    ) -> ImportBasis:
        """Build the basis from command-line options, refusing when none (or both) is given.

        Raises
        ------
        BasisRequiredError
            Neither or both of ``consent_evidence`` and ``legal_basis``.
        ValueError
            Unknown purposes or basis codes; consent codes given as ``legal_basis``; consent
            to analytics, which rests on no one's consent.
        """
        if consent_evidence is None and not legal_basis:
            raise BasisRequiredError(BASIS_REQUIRED)
        if consent_evidence is not None and legal_basis:
            raise BasisRequiredError(BOTH_BASES)
        chosen = check_purposes(purposes or DEFAULT_PURPOSES)
        notice_hash = sha256_text(notice_file.read_bytes()) if notice_file else None
        if consent_evidence is not None:
            if ANALYTICS in chosen:  # before any subject is registered
                raise ValueError(MSG_ANALYTICS_NOT_CONSENT)
            return cls(
                kind="consent",
                purposes=chosen,
                legal_basis=CONSENT_BASES,
                evidence_hash=sha256_text(Path(consent_evidence).read_bytes()),
                notice_version=notice_version,
                notice_hash=notice_hash,
            )
        assert legal_basis is not None
        codes = parse_basis(legal_basis)
        if set(codes) & set(CONSENT_BASES):
            raise ValueError(CONSENT_NEEDS_EVIDENCE.format(codes="+".join(codes)))
        return cls(
            kind="legal_basis",
            purposes=chosen,
            legal_basis=codes,
            evidence_hash=sha256_text(basis_evidence.read_bytes()) if basis_evidence else None,
            notice_version=notice_version,
            notice_hash=notice_hash,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "purposes": list(self.purposes),
            "legal_basis": list(self.legal_basis),
            "evidence_hash": self.evidence_hash,
        }


def record_basis(
    core: PrivacyCore,
    pids: Sequence[str],
    basis: ImportBasis,
    *,
    fmt: str,
    controller: ProjectParams,
) -> None:
    """Record ``basis`` for ``pids`` in the ledger: a consent receipt each, or the basis codes.

    Parameters
    ----------
    core
        The privacy core the subjects were registered with.
    pids
        The subjects that got images.
    basis
        What to record.
    fmt
        The import format (the consent receipt's collection method names it).
    controller
        The project section of the params: the controller named in a consent receipt.
    """
    ensure_records(core.paths)  # an import sets a project up: its records of processing
    if basis.kind == "consent":
        notice_version, notice_hash = basis.notice_version, basis.notice_hash
        if notice_hash is None:  # the notice in force, rendered from the records
            notice_version, notice_hash = notice_for_receipts(core.paths)
        receipt = ConsentReceipt(
            controller=controller.controller,
            controller_contact=controller.controller_contact,
            purposes=basis.purposes,
            notice_version=notice_version,
            notice_hash=notice_hash,
            collection_method=f"dataset-import:{fmt}",
            given_at=utc_now(),
            evidence_hash=basis.evidence_hash,
        )
        core.give_consents(pids, receipt, snapshot=False)
    else:
        core.record_bases(
            pids,
            purposes=basis.purposes,
            legal_basis=basis.legal_basis,
            evidence_hash=basis.evidence_hash,
            snapshot=False,
        )
