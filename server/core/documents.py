"""Renders a response as a downloadable file: TXT, PDF, DOCX, Markdown or JSON.

The PDF and DOCX libraries are imported on first use: fpdf2 (with Pillow and numpy) and
python-docx hold about 46 MiB in every process that has imported them, and most
gateways never render a file. The first PDF pays the import (0.23 s here), the first DOCX
0.02 s.
"""

from __future__ import annotations

import enum
import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

DEFAULT_FILENAME = "response"
MAX_FILENAME_CHARS = 100
# Most filesystems limit a name to 255 bytes; leave room for the extension.
MAX_FILENAME_BYTES = 200

_FONT = resources.files("llmproxy.server") / "assets" / "DejaVuSans.ttf"
_FONT_FAMILY = "DejaVuSans"
_FONT_SIZE_PT = 11
_LINE_HEIGHT_MM = 5.5
_TAB = "    "

# Characters Windows, POSIX shells or a Content-Disposition header would choke on.
_UNSAFE = re.compile(r"[<>:\"'`/\\|?*]|\.{2,}")
_WHITESPACE = re.compile(r"\s+")
# XML 1.0 (DOCX) refuses these, and the PDF font has no glyph for them.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
# A word together with the spaces before it, so indentation survives wrapping.
_TOKEN = re.compile(r"\s*\S+|\s+")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)


class DocumentFormat(enum.StrEnum):
    TXT = "txt"
    PDF = "pdf"
    DOCX = "docx"
    MARKDOWN = "markdown"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Document:
    filename: str
    content_type: str
    data: bytes


def sanitize_filename(name: str, fmt: DocumentFormat | None = None) -> str:
    """A safe base name, without extension; drops `fmt`'s extension if the caller added it."""
    name = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", name))
    # Drop control and format characters (NUL, escapes, right-to-left overrides).
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    name = _UNSAFE.sub(" ", name)
    name = _WHITESPACE.sub("_", name.strip())
    if fmt is not None:
        extension = _SPECS[fmt].extension
        if name.lower().endswith(extension):
            name = name[: -len(extension)]
    name = name[:MAX_FILENAME_CHARS]
    while len(name.encode()) > MAX_FILENAME_BYTES:
        name = name[:-1]
    # Leading dots hide a file; Windows drops trailing dots and spaces.
    name = name.strip("._ ")
    if name.upper() in _WINDOWS_RESERVED:
        name += "_"
    return name or DEFAULT_FILENAME


def render_document(content: str, fmt: DocumentFormat, filename: str = "") -> Document:
    """Render `content` in `fmt`; empty content gives a valid empty document.

    CPU-bound (a short PDF takes tens of milliseconds): async callers run it in a thread.
    """
    spec = _SPECS[fmt]
    full_name = sanitize_filename(filename, fmt) + spec.extension
    return Document(full_name, spec.content_type, spec.render(content, full_name))


def _render_text(content: str, _title: str) -> bytes:
    return content.encode()


def _render_json(content: str, _title: str) -> bytes:
    generated_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    body = {"content": content, "generated_at": generated_at}
    return json.dumps(body, ensure_ascii=False, indent=2).encode()


def _render_docx(content: str, title: str) -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = title
    for line in _lines(content):
        document.add_paragraph(line)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _render_pdf(content: str, title: str) -> bytes:
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    pdf = FPDF(format="A4")
    pdf.set_title(title)
    pdf.set_creator("llmproxy")
    pdf.set_auto_page_break(auto=True, margin=15)
    # fpdf2 reads the font lazily until output(), so the file must exist until then. It
    # also subsets the parsed font in place, so the font object cannot be shared between
    # documents: each render parses it again.
    with resources.as_file(_FONT) as font_path:
        pdf.add_font(_FONT_FAMILY, fname=font_path)
        pdf.set_font(_FONT_FAMILY, size=_FONT_SIZE_PT)
        pdf.add_page()
        for line in _lines(content):
            for row in _wrap(line.replace("\t", _TAB), pdf.epw, pdf.get_string_width):
                pdf.cell(
                    w=pdf.epw, h=_LINE_HEIGHT_MM, text=row, new_x=XPos.LMARGIN, new_y=YPos.NEXT
                )
        return bytes(pdf.output())


def _lines(content: str) -> list[str]:
    return [_CONTROL.sub("", line) for line in content.splitlines()]


def _wrap(line: str, width: float, measure: Callable[[str], float]) -> Iterator[str]:
    """Greedy word wrap; a word wider than the page is broken between characters.

    Widths add up (no kerning without text shaping), so each token is measured once;
    fpdf2's own multi_cell re-measures the line per character and is several times slower.
    """
    row, row_width = "", 0.0
    for token in _TOKEN.findall(line):
        token_width = measure(token)
        if row and row_width + token_width > width:
            yield row
            token = token.lstrip()
            row, row_width, token_width = "", 0.0, measure(token)
        if token_width > width:
            for ch in token:
                ch_width = measure(ch)
                if row and row_width + ch_width > width:
                    yield row
                    row, row_width = "", 0.0
                row += ch
                row_width += ch_width
            continue
        row += token
        row_width += token_width
    yield row


@dataclass(frozen=True, slots=True)
class _FormatSpec:
    extension: str
    content_type: str
    render: Callable[[str, str], bytes]


_SPECS: dict[DocumentFormat, _FormatSpec] = {
    DocumentFormat.TXT: _FormatSpec(".txt", "text/plain; charset=utf-8", _render_text),
    DocumentFormat.PDF: _FormatSpec(".pdf", "application/pdf", _render_pdf),
    DocumentFormat.DOCX: _FormatSpec(
        ".docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        _render_docx,
    ),
    DocumentFormat.MARKDOWN: _FormatSpec(".md", "text/markdown; charset=utf-8", _render_text),
    DocumentFormat.JSON: _FormatSpec(".json", "application/json", _render_json),
}
