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
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont

from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.io import atomic_write_bytes, atomic_write_text, canonical_json, sha256_bytes
from visage_ml.privacy.consent import LEGAL_BASES
from visage_ml.privacy.records import COMPLAINT_TEXT, MSG_DRAFT, RIGHTS_TEXT, Records, records_of

log = logging.getLogger(__name__)

NOTICES_DIR = "notices"
# A4 at 150 dpi.
SIGN_SIZE = (1240, 1754)
SIGN_TITLE = "Face recognition and demographic counting in operation"


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("visage_ml", "privacy/templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=True),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


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


def render_notice(
    records: Records, *, consent_months: int = 0, erase_without_basis: bool = False
) -> Notice:
    """The full notice (HTML) rendered from ``records`` and what ``privacy.retention`` enforces
    of consents (``consent_months``: a consent lapses that long after it was given, 0 never;
    ``erase_without_basis``: a subject no purpose has a basis for is erased); the same inputs
    give the same bytes."""
    html = (
        _env()
        .get_template("notice.html.j2")
        .render(
            r=records,
            draft=draft_text(records),
            consent_months=consent_months,
            erase_without_basis=erase_without_basis,
            bases=LEGAL_BASES,
            rights=RIGHTS_TEXT,
            complaint=COMPLAINT_TEXT,
            automated=any(p.automated_decision for p in records.purposes.values()),
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
    """The sign's content as ``(style, text)``: ``title``, ``head`` or ``body``."""
    c = records.controller
    lines: list[tuple[str, str]] = []
    if draft := draft_text(records):
        lines.append(("head", draft))
    lines.append(("title", SIGN_TITLE))
    lines.append(("head", "Who is responsible"))
    lines.append(("body", f"{c.name} - {c.contact}"))
    lines.append(("body", f"Data protection officer: {records.dpo.contact}"))
    lines.append(("head", "What happens here, and why"))
    for name, p in records.purposes.items():
        lines.append(
            ("body", f"- {name}: {p.description} (legal basis: {basis_words(p.legal_bases)})")
        )
    lines.append(("head", "How long"))
    for name in ("biometric_template", "facial_images", "transient_frames"):
        if name in records.data_categories:
            cat = records.data_categories[name]
            lines.append(("body", f"- {cat.label}: {cat.retention.text()}"))
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


def sign_png(records: Records, notice: Notice) -> bytes:
    """The first-layer sign as an A4 PNG (150 dpi)."""
    w, h = SIGN_SIZE
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    margin = 80
    draw.rectangle([20, 20, w - 20, h - 20], outline=(200, 30, 30), width=12)
    styles = {
        "title": (_font(54, bold=True), (160, 20, 20), 28),
        "head": (_font(36, bold=True), (0, 0, 0), 12),
        "body": (_font(28), (20, 20, 20), 6),
        "meta": (_font(22), (90, 90, 90), 6),
    }
    y = margin
    qr = _qr(records.notice_url).resize((360, 360), Image.Resampling.NEAREST)
    width = w - 2 * margin
    for style, text in sign_lines(records, notice):
        font, colour, gap = styles[style]
        if style == "head":
            y += 18
            if text == "Full information":  # beside the QR code from here on
                width = w - 2 * margin - qr.width - 40
                y = max(y, h - margin - qr.height)
        for line in _wrap(draw, text, font, width):
            draw.text((margin, y), line, font=font, fill=colour)
            y += int(font.size * 1.25) if hasattr(font, "size") else 30
        y += gap
    img.paste(qr, (w - margin - qr.width, h - margin - qr.height))
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
        self, text: str, *, size: float, bold: bool = False, colour: tuple = (0, 0, 0)
    ) -> None:
        self.set_font(self.family_name, "B" if bold else "", size)
        self.set_text_color(*colour)
        self.multi_cell(0, size * 0.5, self.text_of(text), new_x="LMARGIN", new_y="NEXT")


def sign_pdf(records: Records, notice: Notice) -> bytes:
    """The first-layer sign as an A4 PDF (text as text, the QR code as an image)."""
    pdf = _Pdf()
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(False)
    pdf.add_page()
    pdf.set_draw_color(200, 30, 30)
    pdf.set_line_width(2)
    pdf.rect(6, 6, 198, 285)
    sizes = {"title": (20, True, (160, 20, 20)), "head": (13, True, (0, 0, 0))}
    for style, text in sign_lines(records, notice):
        if style == "meta":
            continue
        size, bold, colour = sizes.get(style, (10.5, False, (20, 20, 20)))
        if style == "head":
            pdf.ln(2)
        pdf.para(text, size=size, bold=bold, colour=colour)
    pdf.image(_qr(records.notice_url), x=145, y=230, w=50, h=50)
    pdf.set_xy(15, 275)
    pdf.para(f"Notice version {notice.sha256[:16]}", size=8, colour=(90, 90, 90))
    return bytes(pdf.output())


# ---------------------------------------------------------------------------------------------
# The register (Art. 30)
# ---------------------------------------------------------------------------------------------


def records_digest(records: Records) -> str:
    """SHA-256 of the records' canonical JSON (what a rendered register names)."""
    return sha256_bytes(canonical_json(records.model_dump(mode="json")))


def records_html(
    records: Records, *, registered: list[str] | None = None, generated: str = ""
) -> str:
    """The records of processing as an HTML page."""
    return (
        _env()
        .get_template("records.html.j2")
        .render(
            r=records,
            draft=draft_text(records),
            digest=records_digest(records),
            generated=generated or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
            registered=registered or [],
        )
    )


def records_pdf(records: Records, *, registered: list[str] | None = None) -> bytes:
    """The records of processing as a PDF (A4)."""
    pdf = _Pdf()
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.para("Records of processing activities (GDPR Art. 30(1))", size=16, bold=True)
    if draft := draft_text(records):
        pdf.para(draft, size=11, bold=True)
    pdf.para(f"records SHA-256 {records_digest(records)}", size=8, colour=(90, 90, 90))
    c, d, sa = records.controller, records.dpo, records.supervisory_authority
    rows = [
        ("Controller", f"{c.name}, {c.contact} {c.address}".strip()),
        ("Data protection officer", f"{d.name}, {d.contact} {d.address}".strip()),
        (
            "Representative",
            f"{records.representative.name}, {records.representative.contact}"
            if records.representative
            else "none",
        ),
        ("Supervisory authority", f"{sa.name}, {sa.contact}"),
        ("Published notice", records.notice_url),
    ]
    pdf.ln(2)
    for k, v in rows:
        pdf.para(f"{k}: {v}", size=10)
    pdf.ln(2)
    pdf.para("Purposes", size=13, bold=True)
    for name, p in records.purposes.items():
        pdf.para(name, size=11, bold=True)
        pdf.para(
            f"{p.description}. Legal bases allowed: {', '.join(p.legal_bases)}. Data: "
            f"{', '.join(p.data_categories)}. Subjects: {p.data_subjects}. Consent-based: "
            f"{'yes' if p.consent_based else 'no'}. Automated decisions (Art. 22): "
            f"{'yes' if p.automated_decision else 'no'}.",
            size=9.5,
        )
    pdf.ln(2)
    pdf.para("Data categories and retention", size=13, bold=True)
    for name, cat in records.data_categories.items():
        special = " (Art. 9)" if cat.special else ""
        pdf.para(
            f"{name}: {cat.label}{special}; source: {cat.source}; kept: {cat.retention.text()}",
            size=9.5,
        )
    pdf.ln(2)
    pdf.para("Recipients", size=13, bold=True)
    for r in records.recipients or []:
        pdf.para(f"{r.name} ({r.kind}): {', '.join(r.purposes)}", size=9.5)
    if registered:
        pdf.para("Registered for Art. 19 notices: " + ", ".join(registered), size=9.5)
    pdf.para("Transfers to third countries", size=13, bold=True)
    transfers = [f"{t.country} ({t.safeguard})" for t in records.transfers]
    pdf.para("; ".join(transfers) or "none", size=9.5)
    pdf.para("Security measures", size=13, bold=True)
    for m in records.security_measures:
        pdf.para("- " + m, size=9.5)
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
        "sign_png": out / "sign.png",
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
