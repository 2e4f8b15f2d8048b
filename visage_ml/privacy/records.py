"""Records of processing (GDPR Art. 30) as data: ``privacy/records.yaml``, validated.

The file says who the controller and the DPO are, and for each purpose of the project
(:data:`visage_ml.config.PURPOSES`: identification, training, evaluation, analytics) what it is
for, which legal bases may be recorded for it, which data categories it uses; then each data
category with its retention, the recipients, transfers to third countries and the security
measures. It is the one source of:

- what a consent or another basis may name (:meth:`Records.check_basis`, asked by the privacy
  core before any ``consent.given`` or ``basis.recorded`` is appended),
- the retention that ``visage privacy enforce`` carries out (:meth:`Records.retention`),
- the layered notice and the sign (:mod:`visage_ml.privacy.documents`),
- the Art. 15(1) information of an access export (:meth:`Records.art15_information`).

Project set-up writes the default (:func:`ensure_records`, from ``params.yaml``'s controller);
the DPO edits it and checks it with ``visage privacy records``. A file that does not validate is
refused with a message naming the key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from visage_ml.config import PURPOSES, ConfigError, ProjectParams, ProjectPaths, load_params
from visage_ml.io import atomic_write_text
from visage_ml.privacy.consent import LEGAL_BASES, check_basis

log = logging.getLogger(__name__)

RECORDS_FILE = "records.yaml"
RECORDS_FORMAT = 1

MSG_INVALID = (
    "{path}: {where}: {what}. Fix privacy/records.yaml (the records of processing, Art. 30) and "
    "check it with `visage privacy records`"
)
MSG_NOT_YAML = "{path}: not valid YAML ({why}); fix the syntax and run `visage privacy records`"
MSG_BASIS_NOT_ALLOWED = (
    "legal basis {basis} is not recorded for purpose '{purpose}' in privacy/records.yaml "
    "(allowed: {allowed}); record it there first (purposes.{purpose}.legal_bases) or choose an "
    "allowed basis"
)
MSG_PURPOSES = (
    "the purposes must be exactly those visage-ml enforces ({known}); found {found}. A purpose "
    "the code does not know could be consented to but never enforced"
)


EXAMPLE_CONTROLLER = ProjectParams().controller  # what project.controller ships with
EXAMPLE_DOMAIN = "example.org"
MSG_DRAFT = (
    "DRAFT: {fields} still hold the shipped example; fill in privacy/records.yaml (the "
    "controller, the DPO's contact, where the notice is published) before publishing this"
)


def _at_example_domain(value: str) -> bool:
    """Whether an e-mail address or URL is at :data:`EXAMPLE_DOMAIN` (or a subdomain)."""
    host = value.rsplit("@", 1)[-1] if "@" in value and "://" not in value else value
    host = host.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    return host == EXAMPLE_DOMAIN or host.endswith("." + EXAMPLE_DOMAIN)


class RecordsError(ConfigError):
    """``privacy/records.yaml`` does not validate, or a basis is not allowed by it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Party(_Strict):
    """A controller, DPO, representative or supervisory authority."""

    name: str = Field(min_length=1)
    contact: str = Field(min_length=3, description="e-mail address or postal address")
    address: str = ""
    url: str = ""


class Purpose(_Strict):
    """One purpose of processing."""

    description: str = Field(min_length=10)
    legal_bases: list[str] = Field(
        min_length=2, description="codes of consent.LEGAL_BASES that may be recorded for it"
    )
    data_categories: list[str] = Field(min_length=1)
    data_subjects: str = Field(min_length=3)
    consent_based: bool = Field(
        default=False, description="consent is the basis (then it can be withdrawn any time)"
    )
    automated_decision: bool = Field(
        default=False, description="decisions with legal or similar effects (Art. 22)"
    )


class Retention(_Strict):
    """How long a data category is kept, from when (``null`` periods: not time-limited)."""

    months: int | None = Field(default=None, ge=0, le=1200)
    days: int | None = Field(default=None, ge=0, le=36600)
    start: Literal["collection", "enrolment", "creation", "completion", "none"] = "collection"
    note: str = ""

    @model_validator(mode="after")
    def _one_period(self) -> Retention:
        if self.months is not None and self.days is not None:
            raise ValueError("give months or days, not both")
        return self

    @property
    def limited(self) -> bool:
        return self.months is not None or self.days is not None

    def text(self) -> str:
        """Human-readable period (for the notice and the register)."""
        if self.months == 0 or self.days == 0:  # kept for no time at all: say so, no "0 days"
            return self.note or "not kept"
        if self.months is not None:
            period = f"{self.months} month(s)"
        elif self.days is not None:
            period = f"{self.days} day(s)"
        else:
            return self.note or "not time-limited"
        since = {
            "collection": "after collection",
            "enrolment": "after enrolment",
            "creation": "after it is made",
            "completion": "after the request is completed",
            "none": "",
        }[self.start]
        return " ".join(x for x in (period, since, f"({self.note})" if self.note else "") if x)


class DataCategory(_Strict):
    """A category of personal data and its retention."""

    label: str = Field(min_length=3)
    special: bool = Field(default=False, description="special category (Art. 9), e.g. biometric")
    source: str = Field(default="the data subject", min_length=3)
    retention: Retention


class Recipient(_Strict):
    """A category of recipients (Art. 30(1)(d)); the Art. 19 register is separate."""

    name: str = Field(min_length=3)
    kind: Literal["internal", "processor", "controller", "authority"]
    purposes: list[str] = Field(min_length=1)


class Transfer(_Strict):
    """A transfer to a third country or an international organisation (Art. 30(1)(e))."""

    country: str = Field(min_length=2)
    safeguard: str = Field(min_length=3, description="e.g. adequacy decision, SCCs (Art. 46)")


class Records(_Strict):
    """The whole of ``privacy/records.yaml``."""

    format: Literal[1] = RECORDS_FORMAT
    controller: Party
    dpo: Party
    representative: Party | None = None
    supervisory_authority: Party
    notice_url: str = Field(min_length=8, description="where the full notice is published")
    purposes: dict[str, Purpose]
    data_categories: dict[str, DataCategory]
    recipients: list[Recipient] = Field(default_factory=list)
    transfers: list[Transfer] = Field(default_factory=list)
    security_measures: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Records:
        if set(self.purposes) != set(PURPOSES):
            raise ValueError(
                MSG_PURPOSES.format(known=", ".join(PURPOSES), found=", ".join(self.purposes))
            )
        for name, p in self.purposes.items():
            unknown = [b for b in p.legal_bases if b not in LEGAL_BASES]
            if unknown:
                raise ValueError(
                    f"purposes.{name}.legal_bases: unknown code(s) {', '.join(unknown)}; known: "
                    + ", ".join(LEGAL_BASES)
                )
            if not any(b.startswith("art6") for b in p.legal_bases) or not any(
                b.startswith("art9") for b in p.legal_bases
            ):
                raise ValueError(
                    f"purposes.{name}.legal_bases: biometric processing needs at least one "
                    "Art. 6 and one Art. 9 condition"
                )
            missing = [c for c in p.data_categories if c not in self.data_categories]
            if missing:
                raise ValueError(
                    f"purposes.{name}.data_categories: {', '.join(missing)} not under "
                    "data_categories"
                )
        for i, r in enumerate(self.recipients):
            bad = [p for p in r.purposes if p not in self.purposes]
            if bad:
                raise ValueError(f"recipients[{i}].purposes: unknown purpose(s) {', '.join(bad)}")
        return self

    # -- questions -----------------------------------------------------------------------------
    def placeholders(self) -> list[str]:
        """The fields still holding the shipped example (the default controller, an address at
        ``example.org``): documents rendered from them are drafts (:data:`MSG_DRAFT`)."""
        found = []
        if self.controller.name == EXAMPLE_CONTROLLER:
            found.append("controller.name")
        for name, value in (
            ("controller.contact", self.controller.contact),
            ("dpo.contact", self.dpo.contact),
            ("notice_url", self.notice_url),
        ):
            if _at_example_domain(value):
                found.append(name)
        return found

    def allowed_bases(self, purpose: str) -> tuple[str, ...]:
        """The legal-basis codes that may be recorded for ``purpose``."""
        return tuple(self.purposes[purpose].legal_bases)

    def check_basis(self, purposes: Iterable[str], basis: Iterable[str]) -> None:
        """Refuse a consent or basis (codes) the records do not allow for one of ``purposes``.

        Raises
        ------
        RecordsError
            A purpose is not in the records, or a code is not allowed for it.
        """
        codes = check_basis(basis)
        for purpose in purposes:
            if purpose not in self.purposes:
                raise RecordsError(
                    f"purpose '{purpose}' is not in privacy/records.yaml; purposes are: "
                    + ", ".join(self.purposes)
                )
            allowed = set(self.purposes[purpose].legal_bases)
            if not set(codes) <= allowed:
                raise RecordsError(
                    MSG_BASIS_NOT_ALLOWED.format(
                        basis="+".join(codes), purpose=purpose, allowed=", ".join(sorted(allowed))
                    )
                )

    def retention(self, category: str) -> Retention:
        """The retention of ``category`` (a key of ``data_categories``)."""
        try:
            return self.data_categories[category].retention
        except KeyError:
            raise RecordsError(
                f"privacy/records.yaml has no data category '{category}' (data_categories: "
                f"{', '.join(self.data_categories)})"
            ) from None

    def art15_information(self, *, source: str | None = None) -> dict[str, Any]:
        """The Art. 15(1)(a)-(h) information for a subject (an access export carries it)."""
        return {
            "controller": self.controller.model_dump(),
            "dpo": self.dpo.model_dump(),
            "purposes": {
                name: {
                    "description": p.description,
                    "legal_bases": {b: LEGAL_BASES[b] for b in p.legal_bases},
                    "data_categories": [self.data_categories[c].label for c in p.data_categories],
                    "automated_decision": p.automated_decision,
                }
                for name, p in self.purposes.items()
            },
            "data_categories": {
                name: {"label": c.label, "special_category": c.special, "source": c.source}
                for name, c in self.data_categories.items()
            },
            "recipients": [r.model_dump() for r in self.recipients],
            "transfers": [t.model_dump() for t in self.transfers],
            "retention": {name: c.retention.text() for name, c in self.data_categories.items()},
            "source": source or "the data subject",
            "rights": RIGHTS_TEXT,
            "right_to_complain": {
                "text": COMPLAINT_TEXT,
                "authority": self.supervisory_authority.model_dump(),
            },
            "automated_decision_making": any(p.automated_decision for p in self.purposes.values()),
        }


RIGHTS_TEXT: dict[str, str] = {
    "access": "Art. 15: a copy of your data and this information",
    "rectification": "Art. 16: correction of inaccurate data",
    "erasure": "Art. 17: erasure of your data",
    "restriction": "Art. 18: restriction of processing",
    "portability": "Art. 20: your data in a machine-readable format",
    "objection": "Art. 21: objection to processing based on legitimate interests or research",
    "withdraw_consent": "Art. 7(3): withdraw consent at any time, as easily as it was given",
}
COMPLAINT_TEXT = (
    "You have the right to lodge a complaint with a supervisory authority (Art. 77), in "
    "particular in the Member State of your habitual residence, place of work or of the "
    "alleged infringement."
)


# ---------------------------------------------------------------------------------------------
# The default and the file
# ---------------------------------------------------------------------------------------------


def default_records(*, controller: str, contact: str) -> dict[str, Any]:
    """The records a new project starts from (edit them for the real deployment)."""
    consent = ["art6(1)(a)", "art9(2)(a)"]
    research = ["art6(1)(a)", "art9(2)(a)", "art6(1)(f)", "art9(2)(j)"]
    subjects = "enrolled persons who gave their consent, and persons in research data sets"
    return {
        "format": RECORDS_FORMAT,
        "controller": {"name": controller, "contact": contact, "address": "", "url": ""},
        "dpo": {"name": "Data Protection Officer", "contact": contact, "address": "", "url": ""},
        "representative": None,
        "supervisory_authority": {
            "name": "the supervisory authority of your Member State",
            "contact": "see https://edpb.europa.eu/about-edpb/about-edpb/members_en",
            "address": "",
            "url": "https://edpb.europa.eu/about-edpb/about-edpb/members_en",
        },
        "notice_url": "https://example.org/privacy/visage-notice.html",
        "purposes": {
            "identification": {
                "description": "Recognising enrolled persons who consented (1:N face "
                "identification against the gallery of their templates)",
                "legal_bases": consent,
                "data_categories": ["facial_images", "biometric_template", "identity_record"],
                "data_subjects": "enrolled persons who gave explicit consent",
                "consent_based": True,
                "automated_decision": False,
            },
            "training": {
                "description": "Training the face-embedding and demographic models",
                "legal_bases": research,
                "data_categories": ["facial_images", "demographic_attributes"],
                "data_subjects": subjects,
                "consent_based": True,
            },
            "evaluation": {
                "description": "Measuring accuracy and demographic bias of the models",
                "legal_bases": research,
                "data_categories": ["facial_images", "demographic_attributes"],
                "data_subjects": subjects,
                "consent_based": True,
            },
            "analytics": {
                "description": "Counting faces per age band, gender and skin-tone group per "
                "time window; no identity is computed and no face is stored",
                "legal_bases": research,
                "data_categories": ["transient_frames", "demographic_attributes"],
                "data_subjects": "persons passing the camera",
                "consent_based": False,
            },
        },
        "data_categories": {
            "facial_images": {
                "label": "facial images",
                "special": True,
                "source": "the data subject (enrolment) or an imported research data set",
                "retention": {"months": 36, "start": "collection"},
            },
            "biometric_template": {
                "label": "biometric template",
                "special": True,
                "source": "computed from the facial images",
                "retention": {
                    "months": 12,
                    "start": "enrolment",
                    "note": "and only while consent to identification lasts",
                },
            },
            "demographic_attributes": {
                # Skin tone can reveal racial or ethnic origin (Art. 9(1)), and analytics infers
                # it from passers-by: a special category, under every purpose's Art. 9 condition.
                "label": "age, gender and skin-tone group (skin tone may reveal ethnic origin)",
                "special": True,
                "source": "the data subject or the data set's labels",
                "retention": {"months": 36, "start": "collection", "note": "with the images"},
            },
            "identity_record": {
                "label": "reference and contact (encrypted identity vault)",
                "special": False,
                "source": "the data subject",
                "retention": {"months": 36, "start": "collection", "note": "with the images"},
            },
            "transient_frames": {
                "label": "camera frames in analytics mode",
                "special": True,
                "source": "the camera",
                "retention": {
                    "days": 0,
                    "start": "collection",
                    "note": "never stored; only counts per window are kept",
                },
            },
            "export_bundles": {
                "label": "copies of a subject's data prepared for them (access, portability)",
                "special": True,
                "source": "the project's stores",
                "retention": {"days": 30, "start": "creation"},
            },
            "request_receipts": {
                "label": "signed receipts of data-subject requests",
                "special": False,
                "source": "the controller",
                "retention": {"months": 36, "start": "completion"},
            },
            "ledger": {
                "label": "signed ledger of consents and rights (pseudonymous ids and hashes)",
                "special": False,
                "source": "the controller",
                "retention": {
                    "start": "none",
                    "note": "kept for accountability (Art. 5(2)); holds no names or images",
                },
            },
        },
        "recipients": [
            {
                "name": "Operators of the identification service",
                "kind": "internal",
                "purposes": ["identification"],
            },
            {
                "name": "Hosting and IT service provider (Art. 28)",
                "kind": "processor",
                "purposes": ["identification", "training", "evaluation", "analytics"],
            },
        ],
        "transfers": [],
        "security_measures": [
            "every face image, crop and template sealed at rest per subject (AES-256-GCM); "
            "destroying a subject's key erases every copy",
            "identity data only in an encrypted vault under a separate master key",
            "pseudonymous ids everywhere else; no personal data in logs, MLflow or reports",
            "signed, hash-chained ledger with checkpoints cosigned by independent witnesses",
            "API keys with roles, hash-chained audit log without personal data",
            "analytics: counts per window only, small cells suppressed, optional "
            "differential-privacy noise",
        ],
    }


def records_path(paths: ProjectPaths) -> Path:
    """``privacy/records.yaml`` of the project."""
    return paths.privacy / RECORDS_FILE


def parse_records(data: Mapping[str, Any], *, source: str = RECORDS_FILE) -> Records:
    """Validate a records mapping.

    Raises
    ------
    RecordsError
        Naming the first key that does not validate.
    """
    try:
        return Records.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        what = err["msg"].removeprefix("Value error, ")
        raise RecordsError(MSG_INVALID.format(path=source, where=where, what=what)) from None


@lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> Records:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecordsError(MSG_NOT_YAML.format(path=path, why=type(exc).__name__)) from None
    if not isinstance(data, dict):
        raise RecordsError(MSG_INVALID.format(path=path, where="(top level)", what="not a map"))
    return parse_records(data, source=path)


def read_records(path: Path) -> Records:
    """Read and validate a records file (re-read only when it changed)."""
    st = Path(path).stat()
    return _read_cached(str(path), st.st_mtime_ns, st.st_size)


def _controller(paths: ProjectPaths) -> tuple[str, str]:
    if paths.params.exists():
        project = load_params(paths.params).project
        return project.controller, project.controller_contact
    shipped = ProjectParams()
    return shipped.controller, shipped.controller_contact


def records_of(paths: ProjectPaths) -> Records:
    """The project's records: ``privacy/records.yaml``, or the default when there is none yet."""
    path = records_path(paths)
    if path.exists():
        return read_records(path)
    controller, contact = _controller(paths)
    return parse_records(default_records(controller=controller, contact=contact), source="default")


def ensure_records(paths: ProjectPaths) -> Path:
    """Write the default ``privacy/records.yaml`` when the project has none; return its path.

    Called by project set-up (``visage data synth``, ``visage data import``, ``visage demo``).
    An existing file is validated, never replaced.
    """
    path = records_path(paths)
    if path.exists():
        read_records(path)
        return path
    controller, contact = _controller(paths)
    doc = default_records(controller=controller, contact=contact)
    parse_records(doc, source="default")
    header = (
        "# Records of processing activities (GDPR Art. 30) of this visage-ml project.\n"
        "# Edit for the real deployment; `visage privacy records` validates and renders it.\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False, width=100))
    log.info("wrote the default records of processing to %s", path)
    return path
