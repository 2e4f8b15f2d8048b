"""Documents rendered from the records of processing: the layered notice, the sign, the register.

In the manner of EDPB Guidelines 3/2019 on processing of personal data through video devices
(section 7), information is layered:

- the **first layer** is a sign at the camera (:func:`sign_png`, :func:`sign_pdf`: A4): who
  the controller is, what is done and why, the legal basis, retention, the rights and the DPO's
  contact, and a QR code pointing to the second layer;
- the **second layer** is the full notice (:func:`render_notice`, HTML): everything Art. 13/14
  asks, rendered from ``privacy/records.yaml`` (:mod:`visage_ml.privacy.records`).

A notice is versioned by content: its version is the SHA-256 of its HTML, which every consent
receipt records (:func:`notice_for_receipts`); each version published is kept under
``privacy/notices/<sha256>.html`` so a receipt's notice can always be shown.

The records themselves render as HTML and PDF (:func:`records_html`, :func:`records_pdf`), and an
access export carries a human-readable page (:func:`access_html`). Templates are jinja2 files in
``privacy/templates``; the PDFs are made with fpdf2, the PNG with Pillow, the QR code with
``qrcode``: nothing is downloaded.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import io
import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import qrcode
from fpdf import FPDF, FontFace
from PIL import Image, ImageDraw, ImageFont

from visage_ml.config import AnalyticsParams, Params, ProjectPaths, load_params
from visage_ml.io import atomic_write_bytes, atomic_write_text, canonical_json, sha256_bytes
from visage_ml.privacy.consent import LEGAL_BASES
from visage_ml.privacy.pages import template_env
from visage_ml.privacy.records import (
    COMPLAINT_TEXT,
    MSG_DRAFT,
    RIGHTS_TEXT,
    SUBJECT_CLASSES,
    Records,
    RecordsError,
    plural,
    records_of,
)

log = logging.getLogger(__name__)

NOTICES_DIR = "notices"
# A4 at 150 dpi.
SIGN_SIZE = (1240, 1754)
# The sign's image file, as written under reports/privacy (an image, never a face: `visage
# privacy doctor` does not list it among the images to review).
SIGN_PNG = "sign.png"
SIGN_TITLE = "Face recognition and demographic counting in operation"
# The sign is read from a distance: type sizes in points (A4), for the PDF and the PNG alike.
# The draft warning is for whoever prints the sign, not for passers-by.
SIGN_PT: dict[str, float] = {
    "title": 28,
    "head": 20,
    "body": 18,
    "item": 18,
    "draft": 11,
    "meta": 8,
}
SIGN_MIN_BODY_PT = 14.0  # the text shrinks no further than this to fit the page
SIGN_COLOURS: dict[str, tuple[int, int, int]] = {
    "title": (160, 20, 20),
    "head": (0, 0, 0),
    "body": (20, 20, 20),
    "item": (20, 20, 20),
    "draft": (176, 0, 32),
    "meta": (90, 90, 90),
}
# What happens at the camera; training and evaluation use data sets, not the camera.
SIGN_PURPOSES: tuple[str, ...] = ("identification", "analytics")
SIGN_CLASSES: dict[str, str] = {
    "enrolled": "Enrolled persons",
    "research": "Persons in research data sets",
    "passer_by": "Passers-by",
}
MSG_SIGN_FULL = (
    "the sign's text does not fit one A4 page even at {pt} pt: shorten the purposes' summary "
    "(purposes.<purpose>.summary), the controller's or the DPO's contact in privacy/records.yaml"
)


@functools.cache
def _env() -> jinja2.Environment:
    # The pages' shared settings, with the filters the notice and records use.
    env = template_env().overlay()
    env.filters["plural"] = plural
    env.filters["article"] = article
    return env


def article(code: str) -> str:
    """``art6(1)(f)`` -> ``Art. 6(1)(f)``."""
    return "Art. " + code.removeprefix("art")


def duration_words(seconds: float) -> str:
    """``60.0`` -> ``1 minute``, ``90`` -> ``90 seconds``, ``3600`` -> ``1 hour``."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return plural(int(seconds // size), unit)
    return plural(int(seconds), "second") if float(seconds).is_integer() else f"{seconds} seconds"


def every_words(seconds: float) -> str:
    """What follows "every": ``3600`` -> ``hour``, ``7200`` -> ``2 hours``, ``90`` -> ``90
    seconds``."""
    words = duration_words(seconds)
    return words.removeprefix("1 ") if words in ("1 hour", "1 minute", "1 second") else words


# ---------------------------------------------------------------------------------------------
# The notice (second layer)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """A rendered full notice: its HTML and its content version."""

    html: str
    sha256: str

    @property
    def version(self) -> str:
        """What receipts record as ``notice_version`` (the hash, shortened)."""
        return f"notice-{self.sha256[:16]}"


_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)


def _months(n: int, *, further: bool = False) -> str:
    """``1`` -> ``"one month"``, ``2, further`` -> ``"two further months"``."""
    word = _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)
    return f"{word} {'further ' if further else ''}{'month' if n == 1 else 'months'}"


def render_notice(
    records: Records,
    *,
    consent_months: int = 0,
    erase_without_basis: bool = False,
    analytics: AnalyticsParams | None = None,
    deadline_months: int = 1,
    max_extension_months: int = 2,
    enforce_interval_seconds: float = 0.0,
) -> Notice:
    """The full notice (HTML) rendered from ``records``, what ``privacy.retention`` enforces
    of consents (``consent_months``: a consent lapses that long after it was given, 0 never;
    ``erase_without_basis``: a subject no purpose has a basis for is erased) and how often
    (``enforce_interval_seconds``: ``visage serve`` enforces retention that often, and the
    notice says it is automatic; 0: it says only that a scheduled check erases) and how analytics
    releases its counts (``serving.analytics``: window, suppression below ``k_min``, noise at
    ``epsilon``; the shipped values when None) and the answer deadlines the request book applies
    (``privacy.deadline_months``, ``privacy.max_extension_months``); the same inputs give the
    same bytes."""
    analytics = analytics or AnalyticsParams()
    html = (
        _env()
        .get_template("notice.html.j2")
        .render(
            r=records,
            draft=draft_text(records),
            consent_months=consent_months,
            erase_without_basis=erase_without_basis,
            analytics=analytics,
            window=duration_words(analytics.window_seconds),
            bases=LEGAL_BASES,
            classes=SUBJECT_CLASSES,
            rights=RIGHTS_TEXT,
            complaint=COMPLAINT_TEXT,
            automated=any(p.automated_decision for p in records.purposes.values()),
            answer_within=_months(deadline_months),
            extension=_months(max_extension_months, further=True) if max_extension_months else "",
            first_period="month" if deadline_months == 1 else _months(deadline_months),
            enforce_every=every_words(enforce_interval_seconds) if enforce_interval_seconds else "",
        )
    )
    return Notice(html=html, sha256=sha256_bytes(html.encode("utf-8")))


def notice_path(paths: ProjectPaths, sha256: str) -> Path:
    """Where the notice version ``sha256`` is kept."""
    return paths.privacy / NOTICES_DIR / f"{sha256}.html"


def publish_notice(paths: ProjectPaths) -> Notice:
    """Render the project's notice and keep this version under ``privacy/notices/``."""
    params = load_params(paths.params) if paths.params.exists() else Params()
    retention = params.privacy.retention
    notice = render_notice(
        records_of(paths),
        consent_months=retention.consent_months,
        erase_without_basis=retention.erase_without_basis,
        analytics=params.serving.analytics,
        deadline_months=params.privacy.deadline_months,
        max_extension_months=params.privacy.max_extension_months,
        enforce_interval_seconds=retention.serve_interval_seconds,
    )
    path = notice_path(paths, notice.sha256)
    if not path.exists():
        atomic_write_text(path, notice.html)
        log.info("published notice version %s", notice.version)
    return notice


def notice_for_receipts(paths: ProjectPaths) -> tuple[str, str]:
    """``(notice_version, notice_hash)`` of the notice in force, for a consent receipt.

    The notice is published (kept under ``privacy/notices/``) so the receipt's hash can always
    be resolved to the text the subject was shown.
    """
    notice = publish_notice(paths)
    return notice.version, notice.sha256


# ---------------------------------------------------------------------------------------------
# The sign (first layer)
# ---------------------------------------------------------------------------------------------


def draft_text(records: Records) -> str:
    """The draft warning of documents rendered from ``records`` (empty when none is due)."""
    draft = records.placeholders()
    return MSG_DRAFT.format(fields=", ".join(draft)) if draft else ""


def sign_lines(records: Records, notice: Notice) -> list[tuple[str, str]]:
    """The sign's content as ``(style, text)``: ``draft``, ``title``, ``head``, ``body`` or
    ``meta``.

    The first layer of EDPB Guidelines 3/2019 (section 7): who the controller is, what is done
    at the camera and on which basis, the rights, and where the full notice is. Purposes that
    do not happen at the camera (training, evaluation) and retention are in the full notice.
    """
    c = records.controller
    lines: list[tuple[str, str]] = []
    if draft := draft_text(records):
        lines.append(("draft", draft))
    lines.append(("title", SIGN_TITLE))
    lines.append(("head", "Who is responsible"))
    lines.append(("body", f"{c.name}, {c.contact}"))
    lines.append(("body", f"Data protection officer: {records.dpo.contact}"))
    lines.append(("head", "What happens here, and why"))
    for name in SIGN_PURPOSES:
        if name not in records.purposes:
            continue
        p = records.purposes[name]
        lines.append(("body", f"{p.summary or p.description}"))
        for cls, basis in p.subjects.items():
            words = (
                f"{SIGN_CLASSES.get(cls, SUBJECT_CLASSES[cls])}: {basis_words(basis.legal_bases)}"
            )
            if basis.legitimate_interests:
                words += "; you may object"
            lines.append(("item", words))
    lines.append(("head", "Your rights"))
    lines.append(
        (
            "body",
            "Access, rectification, erasure, restriction, objection, portability; withdraw "
            f"consent at any time. Write to {records.dpo.contact}. You may complain to "
            f"{records.supervisory_authority.name}.",
        )
    )
    lines.append(("head", "Full information"))
    lines.append(("body", f"Scan the code or visit {records.notice_url}"))
    lines.append(("meta", f"Notice version {notice.sha256[:16]}"))
    return lines


def basis_words(codes: list[str]) -> str:
    """Legal-basis codes as a passer-by reads them: the Art. 6 grounds in words, then the
    articles, e.g. ``consent (Art. 6(1)(a), 9(2)(a))``."""
    words = [LEGAL_BASES[c] for c in codes if c.startswith("art6") and c in LEGAL_BASES]
    articles = [c.removeprefix("art") for c in codes]
    return f"{' or '.join(words) or 'see the full notice'} (Art. {', '.join(articles)})"


def _qr(url: str) -> Image.Image:
    img = qrcode.make(url, border=2)
    return img.get_image().convert("RGB") if hasattr(img, "get_image") else img.convert("RGB")


@functools.cache
def _ttf() -> str | None:
    """A Unicode TrueType font shipped by a wheel already installed (matplotlib's DejaVu)."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return str(path)
    return None


def _font(size: int, *, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = _ttf()
    if path is not None:
        if bold:
            bold_path = path.replace("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
            path = bold_path if Path(bold_path).is_file() else path
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> list[str]:
    out: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}".strip()
            if draw.textlength(trial, font=font) <= width:
                line = trial
                continue
            if line:
                out.append(line)
            # A word wider than the line (a URL) is cut where it overflows.
            while draw.textlength(word, font=font) > width:
                cut = max(
                    i for i in range(1, len(word)) if draw.textlength(word[:i], font=font) <= width
                )
                out.append(word[:cut])
                word = word[cut:]
            line = word
        out.append(line)
    return out


def _sign_scales() -> list[float]:
    """Scales of :data:`SIGN_PT` tried in turn until the sign fits its page."""
    smallest = SIGN_MIN_BODY_PT / SIGN_PT["body"]
    steps = round((1 - smallest) / 0.05)
    return [1 - 0.05 * i for i in range(steps + 1)]


def sign_png(records: Records, notice: Notice) -> bytes:
    """The first-layer sign as an A4 PNG (150 dpi), at the type sizes of the PDF.

    Raises
    ------
    RecordsError
        The text does not fit the page even at :data:`SIGN_MIN_BODY_PT` (:data:`MSG_SIGN_FULL`).
    """
    w, h = SIGN_SIZE
    px = 150 / 72  # pixels per point
    margin, qr_side = 80, 360
    lines = sign_lines(records, notice)
    for scale in _sign_scales():
        img = Image.new("RGB", (w, h), "white")
        draw = ImageDraw.Draw(img)
        draw.rectangle([20, 20, w - 20, h - 20], outline=(200, 30, 30), width=12)
        y, width, fits = margin, w - 2 * margin, True
        for style, text in lines:
            if style == "meta":
                continue
            size = SIGN_PT[style] * (scale if style not in ("draft",) else 1)
            font = _font(round(size * px), bold=style in ("title", "head", "draft"))
            if style == "head":
                y += round(size * px * 0.5)
                if text == "Full information":  # beside the QR code from here on
                    if y > h - margin - qr_side:
                        fits = False
                    width = w - 2 * margin - qr_side - 40
                    y = max(y, h - margin - qr_side)
            indent = round(size * px) if style == "item" else 0
            for line in _wrap(draw, text, font, width - indent):
                draw.text((margin + indent, y), line, font=font, fill=SIGN_COLOURS[style])
                y += round(size * px * 1.25)
        meta_font = _font(round(SIGN_PT["meta"] * px))
        if y > h - margin - round(SIGN_PT["meta"] * px * 1.5):
            fits = False
        if fits:
            break
    else:
        raise RecordsError(MSG_SIGN_FULL.format(pt=SIGN_MIN_BODY_PT))
    img.paste(
        _qr(records.notice_url).resize((qr_side, qr_side), Image.Resampling.NEAREST),
        (w - margin - qr_side, h - margin - qr_side),
    )
    draw.text(
        (margin, h - margin - round(SIGN_PT["meta"] * px)),
        lines[-1][1],
        font=meta_font,
        fill=SIGN_COLOURS["meta"],
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class _Pdf(FPDF):
    def __init__(self) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.set_creation_date(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        path = _ttf()
        if path is not None:
            self.add_font("body", "", path)
            bold = path.replace("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
            self.add_font("body", "B", bold if Path(bold).is_file() else path)
            self.family_name = "body"
        else:
            self.family_name = "helvetica"

    def text_of(self, text: str) -> str:
        """Core fonts hold Latin-1 only; a TrueType font takes any text."""
        if self.family_name == "helvetica":
            return text.encode("latin-1", "replace").decode("latin-1")
        return text

    def para(
        self,
        text: str,
        *,
        size: float,
        bold: bool = False,
        colour: tuple = (0, 0, 0),
        indent: float = 0,
        width: float = 0,
        leading: float = 0.5,
    ) -> None:
        """A paragraph, left-aligned (justified text opens gaps between words that read as
        misaligned columns)."""
        self.set_font(self.family_name, "B" if bold else "", size)
        self.set_text_color(*colour)
        self.set_x(self.l_margin + indent)
        self.multi_cell(
            width or self.epw - indent,
            size * leading,
            self.text_of(text),
            align="L",
            new_x="LMARGIN",
            new_y="NEXT",
        )


# The sign (PDF, A4, mm): the QR code in the lower right corner, the notice version under it.
_SIGN_QR = (145.0, 222.0, 50.0)  # x, y, side
_SIGN_FOOT = 276.0  # where the notice version line starts


def _sign_page(records: Records, notice: Notice, scale: float) -> tuple[_Pdf, bool]:
    """The sign at ``scale`` of :data:`SIGN_PT`, and whether its text kept clear of the QR code
    and the foot of the page."""
    pdf = _Pdf()
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(False)
    pdf.add_page()
    pdf.set_draw_color(200, 30, 30)
    pdf.set_line_width(2)
    pdf.rect(6, 6, 198, 285)
    qr_x, qr_y, qr_side = _SIGN_QR
    fits, width = True, 0.0
    lines = sign_lines(records, notice)
    for style, text in lines:
        if style == "meta":
            continue
        size = SIGN_PT[style] * (1 if style == "draft" else scale)
        if style == "head":
            pdf.ln(size * 0.25)
            if text == "Full information":  # beside the QR code from here on
                fits = fits and pdf.get_y() <= qr_y
                width = qr_x - 5 - pdf.l_margin
                pdf.set_y(max(pdf.get_y(), qr_y))
        pdf.para(
            text,
            size=size,
            bold=style in ("title", "head", "draft"),
            colour=SIGN_COLOURS[style],
            indent=size * 0.35 if style == "item" else 0,
            width=width,
            leading=0.45,
        )
    fits = fits and pdf.get_y() <= _SIGN_FOOT
    pdf.image(_qr(records.notice_url), x=qr_x, y=qr_y, w=qr_side, h=qr_side)
    pdf.set_xy(15, _SIGN_FOOT)
    pdf.para(lines[-1][1], size=SIGN_PT["meta"], colour=SIGN_COLOURS["meta"])
    return pdf, fits


def sign_pdf(records: Records, notice: Notice) -> bytes:
    """The first-layer sign as an A4 PDF (text as text, the QR code as an image), set large
    enough to be read from a distance (:data:`SIGN_PT`), smaller only as far as the records'
    text needs to fit the one page.

    Raises
    ------
    RecordsError
        The text does not fit the page even at :data:`SIGN_MIN_BODY_PT` (:data:`MSG_SIGN_FULL`).
    """
    for scale in _sign_scales():
        pdf, fits = _sign_page(records, notice, scale)
        if fits:
            return bytes(pdf.output())
    raise RecordsError(MSG_SIGN_FULL.format(pt=SIGN_MIN_BODY_PT))


# ---------------------------------------------------------------------------------------------
# The register (Art. 30)
# ---------------------------------------------------------------------------------------------


def records_digest(records: Records) -> str:
    """SHA-256 of the records' canonical JSON (what a rendered register names)."""
    return sha256_bytes(canonical_json(records.model_dump(mode="json")))


@dataclass(frozen=True)
class Section:
    """A section of the register: a heading and a table (``headings`` empty: a table of
    ``label | value`` rows), or a list (``items``), or a line (``text``)."""

    title: str
    headings: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    items: tuple[str, ...] = ()
    text: str = ""
    widths: tuple[float, ...] = ()  # relative column widths in the PDF

    def numeric(self, column: int) -> bool:
        """Whether every value of ``column`` is a number (set right-aligned; text is left)."""
        values = [row[column] for row in self.rows]
        return bool(values) and all(_is_number(v) for v in values)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def register_sections(records: Records, *, registered: list[str] | None = None) -> list[Section]:
    """The content of the register (Art. 30(1)), shared by its HTML and its PDF."""
    c, d, sa = records.controller, records.dpo, records.supervisory_authority
    rep = records.representative
    basis_rows = []
    for name, p in records.purposes.items():
        for cls, b in p.subjects.items():
            basis_rows.append(
                (
                    name,
                    SUBJECT_CLASSES[cls],
                    "\n".join(f"{code} ({LEGAL_BASES[code]})" for code in b.legal_bases),
                    b.legitimate_interest if b.legitimate_interests else "-",
                    b.balancing_test if b.legitimate_interests else "-",
                )
            )
    sections = [
        Section(
            "",
            rows=(
                ("controller", " ".join(f"{c.name}, {c.contact} {c.address}".split())),
                ("data protection officer", " ".join(f"{d.name}, {d.contact} {d.address}".split())),
                ("representative", f"{rep.name}, {rep.contact}" if rep else "none"),
                ("supervisory authority", f"{sa.name}, {sa.contact}"),
                ("published notice", records.notice_url),
            ),
            widths=(1, 3),
        ),
        Section(
            "Purposes (Art. 30(1)(b))",
            headings=("purpose", "description", "data categories", "Art. 22"),
            rows=tuple(
                (
                    name,
                    p.description,
                    ", ".join(p.data_categories),
                    "yes" if p.automated_decision else "no",
                )
                for name, p in records.purposes.items()
            ),
            widths=(1.3, 3.3, 1.9, 0.7),
        ),
        Section(
            "Legal bases per purpose and class of data subjects (Art. 6, 9; Art. 30(1)(c))",
            headings=(
                "purpose",
                "data subjects",
                "legal bases",
                "legitimate interest pursued",
                "balancing test",
            ),
            rows=tuple(basis_rows),
            widths=(1.3, 1.7, 2.1, 2.2, 1.6),
        ),
        Section(
            "Data categories and retention (Art. 30(1)(c), (f))",
            headings=("category", "label", "Art. 9", "source", "retention"),
            rows=tuple(
                (name, cat.label, "yes" if cat.special else "no", cat.source, cat.retention.text())
                for name, cat in records.data_categories.items()
            ),
            widths=(1.7, 2.3, 0.7, 1.7, 2.0),
        ),
        Section(
            "Recipients (Art. 30(1)(d))",
            headings=("recipient", "kind", "purposes"),
            rows=tuple((x.name, x.kind, ", ".join(x.purposes)) for x in records.recipients)
            or (("none", "", ""),),
            widths=(3, 1, 3),
        ),
    ]
    if registered:
        sections.append(
            Section(
                "", text="Registered recipients notified under Art. 19: " + ", ".join(registered)
            )
        )
    sections.append(
        Section(
            "Transfers to third countries (Art. 30(1)(e))",
            headings=("country", "safeguard") if records.transfers else (),
            rows=tuple((t.country, t.safeguard) for t in records.transfers),
            text="" if records.transfers else "None.",
            widths=(1, 3),
        )
    )
    sections.append(
        Section(
            "Security measures (Art. 30(1)(g), Art. 32)",
            items=tuple(records.security_measures),
        )
    )
    return sections


def _today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def records_html(
    records: Records, *, registered: list[str] | None = None, generated: str = ""
) -> str:
    """The records of processing as an HTML page, dated ``generated`` (default today, UTC)."""
    return (
        _env()
        .get_template("records.html.j2")
        .render(
            r=records,
            draft=draft_text(records),
            digest=records_digest(records),
            generated=generated or _today(),
            sections=register_sections(records, registered=registered),
        )
    )


# The register's PDF: type sizes (pt) and what a heading keeps with it on its page (mm).
_REG_PT = {"title": 16, "head": 13, "table": 9, "text": 9.5}


def _pdf_section(pdf: _Pdf, section: Section) -> None:
    """Draw a section: its heading, then its table, list or line."""
    if section.title:
        pdf.ln(2)
        pdf.para(section.title, size=_REG_PT["head"], bold=True)
        pdf.ln(1)
    if section.rows:
        pdf.set_font(pdf.family_name, "", _REG_PT["table"])
        pdf.set_text_color(0, 0, 0)
        pdf.set_draw_color(170, 170, 170)
        pdf.set_line_width(0.2)
        ncols = len(section.rows[0])
        align = tuple("RIGHT" if section.numeric(i) else "LEFT" for i in range(ncols))
        with pdf.table(
            col_widths=section.widths or None,
            text_align=align,
            first_row_as_headings=bool(section.headings),
            headings_style=FontFace(emphasis="BOLD", fill_color=(235, 235, 235)),
            line_height=_REG_PT["table"] * 0.45,
            padding=1.2,
            v_align="TOP",
            width=pdf.epw,
        ) as table:
            if section.headings:
                row = table.row()
                for h in section.headings:
                    row.cell(pdf.text_of(h))
            for values in section.rows:
                row = table.row()
                for i, v in enumerate(values):
                    style = FontFace(emphasis="BOLD") if not section.headings and i == 0 else None
                    row.cell(pdf.text_of(v), style=style)
    for item in section.items:
        pdf.para("- " + item, size=_REG_PT["text"])
    if section.text:
        pdf.para(section.text, size=_REG_PT["text"])


def records_pdf(
    records: Records, *, registered: list[str] | None = None, generated: str = ""
) -> bytes:
    """The records of processing as a PDF (A4), dated ``generated`` (default today, UTC).

    A section's heading is never left alone at the foot of a page: when the heading and the
    start of what follows it would not fit, the section starts on the next page.
    """
    pdf = _Pdf()
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.para("Records of processing activities (GDPR Art. 30(1))", size=_REG_PT["title"], bold=True)
    if draft := draft_text(records):
        pdf.para(draft, size=11, bold=True, colour=(176, 0, 32))
    pdf.para(
        f"Rendered from privacy/records.yaml (SHA-256 {records_digest(records)}) on "
        f"{generated or _today()}.",
        size=8,
        colour=(90, 90, 90),
    )
    for section in register_sections(records, registered=registered):
        if section.title:
            # Keep the heading with the start of its content: try the section's heading and
            # first row (or item) where we are; when that breaks the page, start a new one.
            head = Section(
                section.title,
                headings=section.headings,
                rows=section.rows[:1],
                items=section.items[:1],
                text=section.text,
                widths=section.widths,
            )
            with pdf.offset_rendering() as trial:
                _pdf_section(trial, head)
            if trial.page_break_triggered:
                pdf.add_page()
        _pdf_section(pdf, section)
    return bytes(pdf.output())


# ---------------------------------------------------------------------------------------------
# The access page (Art. 15)
# ---------------------------------------------------------------------------------------------


def access_html(
    *,
    pid: str,
    information: dict[str, Any],
    state: dict[str, Any],
    identifications: list[dict[str, Any]],
    events: list[dict[str, Any]],
    images: int,
    templates: int,
    generated: str,
) -> str:
    """The human-readable page an access export carries beside its JSON files."""
    return (
        _env()
        .get_template("access.html.j2")
        .render(
            pid=pid,
            info=information,
            state=state,
            identifications=identifications,
            events=events,
            images=images,
            templates=templates,
            generated=generated,
        )
    )


def write_documents(paths: ProjectPaths, out: Path) -> dict[str, Path]:
    """Write the register (HTML, PDF), the full notice (HTML) and the sign (PDF, PNG) to
    ``out``; returns ``{kind: path}`` (what `visage demo` puts under ``reports/privacy``)."""
    records = records_of(paths)
    notice = publish_notice(paths)
    files = {
        "records_html": out / "records.html",
        "records_pdf": out / "records.pdf",
        "notice_html": out / "notice.html",
        "sign_pdf": out / "sign.pdf",
        "sign_png": out / SIGN_PNG,
    }
    atomic_write_text(files["records_html"], records_html(records))
    atomic_write_bytes(files["records_pdf"], records_pdf(records))
    atomic_write_text(files["notice_html"], notice.html)
    atomic_write_bytes(files["sign_pdf"], sign_pdf(records, notice))
    atomic_write_bytes(files["sign_png"], sign_png(records, notice))
    return files


def wrap_text(text: str, width: int = 72) -> str:
    """Plain-text wrapping for e-mail bodies."""
    return "\n".join(textwrap.fill(p, width) if p else "" for p in text.split("\n"))
