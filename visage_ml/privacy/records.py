"""Records of processing (GDPR Art. 30) as data: ``privacy/records.yaml``, validated.

The file says who the controller and the DPO are, and for each purpose of the project
(:data:`visage_ml.config.PURPOSES`: identification, training, evaluation, analytics) what it is
for, which data categories it uses and, per class of data subjects (:data:`SUBJECT_CLASSES`:
enrolled persons, persons in research data sets, persons passing the camera), the legal basis it
rests on and, for legitimate interests, the interest pursued; then each data category with its
retention, the recipients, transfers to third countries and the security measures. It is the
one source of:

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

from visage_ml.config import (
    PURPOSES,
    ConfigError,
    LegitimateInterestParams,
    Params,
    ProjectParams,
    ProjectPaths,
    load_params,
)
from visage_ml.io import atomic_write_text
from visage_ml.privacy.consent import ANALYTICS, CONSENT_BASES, LEGAL_BASES, check_basis

log = logging.getLogger(__name__)

RECORDS_FILE = "records.yaml"
RECORDS_FORMAT = 2
# Classes of data subjects, each with its own legal basis per purpose. Enrolled persons and
# persons in research data sets are registered (a pid, a ledger); passers-by never are: a camera
# counts them, so nothing can be consented to or recorded for them.
SUBJECT_CLASSES: dict[str, str] = {
    "enrolled": "enrolled persons who gave their consent (enrolment, or an import with consent "
    "evidence)",
    "research": "persons in research data sets imported under a basis other than consent",
    # Enrolled or not: a purpose that rests on this class (analytics) identifies no one, so it
    # cannot tell an enrolled person from anyone else passing.
    "passer_by": "persons passing the camera, enrolled or not (the camera does not tell them "
    "apart)",
}
REGISTERED_CLASSES: tuple[str, ...] = ("enrolled", "research")
SubjectClass = Literal["enrolled", "research", "passer_by"]
LEGITIMATE_INTERESTS = "art6(1)(f)"
DEFAULT_BALANCING_TEST = (
    "legitimate-interests assessment (balancing test) on file with the data protection officer; "
    "a copy on request"
)

MSG_INVALID = (
    "{path}: {where}: {what}. Fix privacy/records.yaml (the records of processing, Art. 30) and "
    "check it with `visage privacy records`"
)
MSG_NOT_YAML = "{path}: not valid YAML ({why}); fix the syntax and run `visage privacy records`"
MSG_BASIS_NOT_ALLOWED = (
    "legal basis {basis} is not recorded for purpose '{purpose}' in privacy/records.yaml "
    "(allowed: {allowed}); record it there first (purposes.{purpose}.subjects.<class>"
    ".legal_bases) or choose an allowed basis"
)
MSG_FORMAT = (
    "{path}: records of format {found}; this version reads format {known}, which gives the legal "
    "basis per purpose and per class of data subjects (purposes.<purpose>.subjects.<class>: "
    "legal_bases, and for art6(1)(f) the legitimate_interest pursued). Move the file aside, run "
    "`visage privacy records` to write the new default, and carry your edits over"
)
MSG_PASSER_BY_CONSENT = (
    "persons passing the camera are counted without being identified or registered, so they "
    "cannot give consent; rest their processing on another basis (e.g. art6(1)(f) legitimate "
    "interests, with the interest pursued)"
)
MSG_ANALYTICS_CONSENT = (
    "consent cannot be the basis of analytics: the counting identifies no one (Art. 11(1)) and "
    "never asks the consent registry, so it counts a person who refused or withdrew consent "
    "like anyone else, and the notice would offer a withdrawal that changes nothing. Remove "
    "purposes.analytics.subjects.{cls}; analytics counts everyone the camera sees under "
    "purposes.analytics.subjects.passer_by: art6(1)(f) (legitimate interests, with the "
    "legitimate_interest pursued and where the balancing_test is on file) and an Art. 9 "
    "condition (e.g. art9(2)(j))"
)
MSG_NOT_PER_PERSON = (
    "purpose '{purpose}' has no legal basis recorded per person in privacy/records.yaml: it "
    "rests only on the basis of persons passing the camera, who are never registered, so "
    "nothing can be consented to or recorded for a subject"
)
MSG_INTEREST = (
    "art6(1)(f) (legitimate interests) needs the interest pursued (legitimate_interest, stated "
    "by the notice under Art. 13(1)(d)) and where the balancing test is on file (balancing_test)"
)
MSG_PURPOSES = (
    "the purposes must be exactly those visage-ml enforces ({known}); found {found}. A purpose "
    "the code does not know could be consented to but never enforced"
)


EXAMPLE_CONTROLLER = ProjectParams().controller  # what project.controller ships with
# What privacy.legitimate_interests ships with: examples, not the controller's own words.
EXAMPLE_INTERESTS = frozenset(vars(LegitimateInterestParams()).values())
EXAMPLE_DOMAIN = "example.org"
MSG_DRAFT = (
    "DRAFT: {fields} still hold the shipped example; fill in privacy/records.yaml (the "
    "controller, the DPO's contact, where the notice is published, the legitimate interests "
    "pursued) before publishing this"
)


def at_example_domain(value: str) -> bool:
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


class SubjectBasis(_Strict):
    """The legal basis of one purpose for one class of data subjects."""

    legal_bases: list[str] = Field(
        min_length=2, description="codes of consent.LEGAL_BASES: one Art. 6, one Art. 9 condition"
    )
    legitimate_interest: str = Field(
        default="", description="with art6(1)(f): the interest pursued (Art. 13(1)(d))"
    )
    balancing_test: str = Field(
        default="", description="with art6(1)(f): where the balancing test is on file"
    )

    @model_validator(mode="after")
    def _bases(self) -> SubjectBasis:
        unknown = [b for b in self.legal_bases if b not in LEGAL_BASES]
        if unknown:
            raise ValueError(
                f"unknown code(s) {', '.join(unknown)}; known: " + ", ".join(LEGAL_BASES)
            )
        if not any(b.startswith("art6") for b in self.legal_bases) or not any(
            b.startswith("art9") for b in self.legal_bases
        ):
            raise ValueError(
                "biometric processing needs at least one Art. 6 and one Art. 9 condition"
            )
        if self.legitimate_interests and not (
            self.legitimate_interest.strip() and self.balancing_test.strip()
        ):
            raise ValueError(MSG_INTEREST)
        return self

    @property
    def consent(self) -> bool:
        """Consent is the basis (so it can be withdrawn at any time, Art. 7(3))."""
        return any(b in CONSENT_BASES for b in self.legal_bases)

    @property
    def legitimate_interests(self) -> bool:
        """Legitimate interests are a basis (so the subject may object, Art. 21(1))."""
        return LEGITIMATE_INTERESTS in self.legal_bases


class Purpose(_Strict):
    """One purpose of processing, with its legal basis per class of data subjects."""

    description: str = Field(min_length=10)
    summary: str = Field(
        default="", description="one line for the camera sign (first layer); else the description"
    )
    data_categories: list[str] = Field(min_length=1)
    subjects: dict[SubjectClass, SubjectBasis] = Field(
        min_length=1, description="the legal basis per class of data subjects (SUBJECT_CLASSES)"
    )
    automated_decision: bool = Field(
        default=False, description="decisions with legal or similar effects (Art. 22)"
    )

    @model_validator(mode="after")
    def _no_consent_from_passers_by(self) -> Purpose:
        passer_by = self.subjects.get("passer_by")
        if passer_by is not None and passer_by.consent:
            raise ValueError(MSG_PASSER_BY_CONSENT)
        return self

    @property
    def legal_bases(self) -> tuple[str, ...]:
        """The codes a consent or ``basis.recorded`` may name for it: those of the registered
        classes (passers-by have no pid, so nothing is ever recorded for them)."""
        codes = (
            b
            for c in REGISTERED_CLASSES
            if c in self.subjects
            for b in self.subjects[c].legal_bases
        )
        return tuple(dict.fromkeys(codes))


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
            period = plural(self.months, "month")
        elif self.days is not None:
            period = plural(self.days, "day")
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


def plural(n: int, unit: str) -> str:
    """``1 month``, ``6 months``."""
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


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

    format: Literal[2] = RECORDS_FORMAT
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
            missing = [c for c in p.data_categories if c not in self.data_categories]
            if missing:
                raise ValueError(
                    f"purposes.{name}.data_categories: {', '.join(missing)} not under "
                    "data_categories"
                )
        analytics = self.purposes[ANALYTICS]
        for cls, basis in analytics.subjects.items():
            if basis.consent:
                raise ValueError(MSG_ANALYTICS_CONSENT.format(cls=cls))
        for i, r in enumerate(self.recipients):
            bad = [p for p in r.purposes if p not in self.purposes]
            if bad:
                raise ValueError(f"recipients[{i}].purposes: unknown purpose(s) {', '.join(bad)}")
        return self

    # -- questions -----------------------------------------------------------------------------
    def placeholders(self) -> list[str]:
        """The fields still holding the shipped example (the default controller, an address at
        ``example.org``, the example interests, the balancing test said to be "on file" without
        saying where): documents rendered from them are drafts (:data:`MSG_DRAFT`)."""
        found = []
        if self.controller.name == EXAMPLE_CONTROLLER:
            found.append("controller.name")
        for name, value in (
            ("controller.contact", self.controller.contact),
            ("dpo.contact", self.dpo.contact),
            ("notice_url", self.notice_url),
        ):
            if at_example_domain(value):
                found.append(name)
        for name, p in self.purposes.items():
            for cls, basis in p.subjects.items():
                if basis.legitimate_interests and basis.legitimate_interest in EXAMPLE_INTERESTS:
                    found.append(f"purposes.{name}.subjects.{cls}.legitimate_interest")
                # The shipped text claims an assessment is on file; only the DPO can say where.
                if basis.legitimate_interests and basis.balancing_test == DEFAULT_BALANCING_TEST:
                    found.append(f"purposes.{name}.subjects.{cls}.balancing_test")
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
            allowed = set(self.allowed_bases(purpose))
            if not allowed:
                raise RecordsError(MSG_NOT_PER_PERSON.format(purpose=purpose))
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
                    "legal_bases": {
                        cls: {
                            "subjects": SUBJECT_CLASSES[cls],
                            "bases": {b: LEGAL_BASES[b] for b in basis.legal_bases},
                            **(
                                {"legitimate_interest": basis.legitimate_interest}
                                if basis.legitimate_interests
                                else {}
                            ),
                        }
                        for cls, basis in p.subjects.items()
                    },
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


def default_records(
    *, controller: str, contact: str, interests: LegitimateInterestParams | None = None
) -> dict[str, Any]:
    """The records a new project starts from (edit them for the real deployment).

    ``interests``: the legitimate interests pursued (``privacy.legitimate_interests``; the
    shipped examples when None).
    """
    interests = interests or LegitimateInterestParams()

    # Fresh mappings each time: a shared one would be written as a YAML alias.
    def consent() -> dict[str, Any]:
        return {"legal_bases": list(CONSENT_BASES)}

    def interest(text: str) -> dict[str, Any]:
        return {
            "legal_bases": [LEGITIMATE_INTERESTS, "art9(2)(j)"],
            "legitimate_interest": text,
            "balancing_test": DEFAULT_BALANCING_TEST,
        }

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
                "identification against the gallery of their templates). Every face presented "
                "to the camera is compared with the gallery; one that matches no enrolled "
                "person is answered 'unknown' and nothing of it is kept (no image, no "
                "template). Deploy it where only persons who chose to be recognised are "
                "presented (an opt-in lane)",
                "summary": "Recognising enrolled persons who consented.",
                "data_categories": ["facial_images", "biometric_template", "identity_record"],
                # Biometric data used to identify: explicit consent (Art. 9(2)(a)) only.
                "subjects": {"enrolled": consent()},
                "automated_decision": False,
            },
            "training": {
                "description": "Training the face-embedding and demographic models",
                "data_categories": ["facial_images", "demographic_attributes"],
                "subjects": {"enrolled": consent(), "research": interest(interests.research)},
            },
            "evaluation": {
                "description": "Measuring accuracy and demographic bias of the models",
                "data_categories": ["facial_images", "demographic_attributes"],
                "subjects": {"enrolled": consent(), "research": interest(interests.research)},
            },
            "analytics": {
                # What serving/analytics.py does: detection and the demographic model only, a
                # face hash in memory for the window, counts released per closed window.
                "description": "Counting faces per age band, gender and skin-tone group per "
                "time window, from camera frames that are never stored; no biometric template "
                "is computed and no one is identified; only the counts of each closed window are "
                "kept, small counts withheld",
                "summary": "Counting passers-by per age band, gender and skin-tone group. No one "
                "is identified; no image is kept.",
                "data_categories": ["transient_frames", "demographic_attributes"],
                # One basis for everyone the camera counts, enrolled or not: the counting
                # identifies no one, so it could not honour a consent or its withdrawal
                # (MSG_ANALYTICS_CONSENT).
                "subjects": {"passer_by": interest(interests.passer_by)},
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
        Naming the first key that does not validate; or records of an older format (they gave
        one list of bases per purpose, which cannot say which class of subjects each is for).
    """
    found = data.get("format", RECORDS_FORMAT)
    if isinstance(found, int) and found != RECORDS_FORMAT:
        raise RecordsError(MSG_FORMAT.format(path=source, found=found, known=RECORDS_FORMAT))
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


def _defaults(paths: ProjectPaths) -> dict[str, Any]:
    """The params a new project's records start from: the controller, legitimate interests."""
    params = load_params(paths.params) if paths.params.exists() else Params()
    return {
        "controller": params.project.controller,
        "contact": params.project.controller_contact,
        "interests": params.privacy.legitimate_interests,
    }


def records_of(paths: ProjectPaths) -> Records:
    """The project's records: ``privacy/records.yaml``, or the default when there is none yet."""
    path = records_path(paths)
    if path.exists():
        return read_records(path)
    return parse_records(default_records(**_defaults(paths)), source="default")


def ensure_records(paths: ProjectPaths) -> Path:
    """Write the default ``privacy/records.yaml`` when the project has none; return its path.

    Called by project set-up (``visage data synth``, ``visage data import``, ``visage demo``).
    An existing file is validated, never replaced.
    """
    path = records_path(paths)
    if path.exists():
        read_records(path)
        return path
    doc = default_records(**_defaults(paths))
    parse_records(doc, source="default")
    header = (
        "# Records of processing activities (GDPR Art. 30) of this visage-ml project.\n"
        "# Edit for the real deployment; `visage privacy records` validates and renders it.\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False, width=100))
    log.info("wrote the default records of processing to %s", path)
    return path
