"""Every Download format renders, parses back with a real reader, and gets a safe filename."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import docx
import pytest
from pypdf import PdfReader

from llmproxy.server.core.documents import (
    DocumentFormat,
    render_document,
    sanitize_filename,
)

SAMPLE = "Café naïve — Ελληνικά — Кириллица"
MULTILINE = f"{SAMPLE}\nsecond line\n\nnew paragraph after a blank line"


def read_pdf(data: bytes) -> PdfReader:
    assert data.startswith(b"%PDF-")
    return PdfReader(io.BytesIO(data))


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in read_pdf(data).pages)


def pdf_rows(data: bytes) -> list[tuple[str, float]]:
    """Each drawn row of text on the first page, with its baseline y in PDF points."""
    rows: list[tuple[str, float]] = []

    def visit(text, _cm, tm, _font, _size):
        if text.strip():
            rows.append((text, tm[5]))

    read_pdf(data).pages[0].extract_text(visitor_text=visit)
    return rows


def read_docx(data: bytes):
    return docx.Document(io.BytesIO(data))


@pytest.mark.parametrize(
    ("fmt", "filename", "content_type"),
    [
        (DocumentFormat.TXT, "response.txt", "text/plain; charset=utf-8"),
        (DocumentFormat.PDF, "response.pdf", "application/pdf"),
        (
            DocumentFormat.DOCX,
            "response.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        (DocumentFormat.MARKDOWN, "response.md", "text/markdown; charset=utf-8"),
        (DocumentFormat.JSON, "response.json", "application/json"),
    ],
)
def test_each_format_has_its_extension_and_content_type(fmt, filename, content_type):
    document = render_document("hello", fmt)

    assert document.filename == filename
    assert document.content_type == content_type
    assert document.data


def test_document_format_values_are_the_wire_names():
    assert [f.value for f in DocumentFormat] == ["txt", "pdf", "docx", "markdown", "json"]


@pytest.mark.parametrize("fmt", [DocumentFormat.TXT, DocumentFormat.MARKDOWN])
def test_text_formats_are_the_content_as_utf8(fmt):
    content = f"# Title\n\n{SAMPLE}\n- item 🙂\n"

    document = render_document(content, fmt, "notes")

    assert document.data == content.encode("utf-8")
    assert document.data.decode("utf-8") == content


def test_json_wraps_content_with_a_utc_timestamp():
    before = datetime.now(UTC).replace(microsecond=0)
    document = render_document(MULTILINE, DocumentFormat.JSON, "answer")
    after = datetime.now(UTC)

    body = json.loads(document.data.decode("utf-8"))
    assert set(body) == {"content", "generated_at"}
    assert body["content"] == MULTILINE
    assert body["generated_at"].endswith("Z")
    generated_at = datetime.fromisoformat(body["generated_at"])
    assert generated_at.utcoffset() == timedelta(0)
    assert before <= generated_at <= after
    # Not \u-escaped: the file stays readable.
    assert SAMPLE.encode("utf-8") in document.data


def test_pdf_keeps_unicode_text_and_title(caplog):
    with caplog.at_level(logging.WARNING):
        document = render_document(MULTILINE, DocumentFormat.PDF, "report")

    reader = read_pdf(document.data)
    assert len(reader.pages) == 1
    assert reader.metadata.title == "report.pdf"
    text = pdf_text(document.data)
    assert SAMPLE in text
    assert "new paragraph after a blank line" in text
    # The embedded font covers every character: fpdf2 warns about missing glyphs otherwise.
    assert "missing" not in caplog.text


def test_pdf_keeps_paragraph_breaks():
    document = render_document(MULTILINE, DocumentFormat.PDF)

    rows = pdf_rows(document.data)
    assert [text for text, _ in rows] == [
        SAMPLE,
        "second line",
        "new paragraph after a blank line",
    ]
    line_step = rows[0][1] - rows[1][1]
    paragraph_step = rows[1][1] - rows[2][1]
    assert line_step > 0
    assert paragraph_step == pytest.approx(2 * line_step)


def test_pdf_wraps_a_long_line_without_losing_words():
    words = [f"word{i:03d}" for i in range(200)]

    document = render_document(" ".join(words), DocumentFormat.PDF)

    rows = [text for text, _ in pdf_rows(document.data)]
    assert len(rows) > 5
    assert " ".join(rows).split() == words


def test_pdf_breaks_a_word_wider_than_the_page():
    word = "x" * 400 + "END"

    document = render_document(f"start {word}", DocumentFormat.PDF)

    rows = [text for text, _ in pdf_rows(document.data)]
    assert rows[0] == "start"
    assert len(rows) > 2
    assert "".join(rows[1:]) == word


def test_long_pdf_spans_pages_and_keeps_every_line():
    lines = [f"Line {i:04d}: {SAMPLE}" for i in range(300)]

    document = render_document("\n".join(lines), DocumentFormat.PDF)

    reader = read_pdf(document.data)
    assert len(reader.pages) > 1
    extracted = [line for line in pdf_text(document.data).splitlines() if line.strip()]
    assert extracted == lines


def test_docx_has_one_paragraph_per_line_and_a_title():
    document = render_document(MULTILINE, DocumentFormat.DOCX, "report")

    parsed = read_docx(document.data)
    assert [p.text for p in parsed.paragraphs] == [
        SAMPLE,
        "second line",
        "",
        "new paragraph after a blank line",
    ]
    assert parsed.core_properties.title == "report.docx"


@pytest.mark.parametrize("fmt", [DocumentFormat.PDF, DocumentFormat.DOCX])
def test_control_characters_do_not_break_binary_formats(fmt):
    content = "bell\x07 null\x00 escape\x1b\ttab\rcarriage"

    document = render_document(content, fmt)

    if fmt is DocumentFormat.PDF:
        text = pdf_text(document.data)
    else:
        text = "\n".join(p.text for p in read_docx(document.data).paragraphs)
    assert "bell null escape" in text
    assert "carriage" in text
    assert "\x00" not in text


def test_empty_content_gives_valid_empty_documents():
    txt = render_document("", DocumentFormat.TXT)
    markdown = render_document("", DocumentFormat.MARKDOWN)
    pdf = render_document("", DocumentFormat.PDF)
    word = render_document("", DocumentFormat.DOCX)
    json_doc = render_document("", DocumentFormat.JSON)

    assert txt.data == b""
    assert markdown.data == b""
    reader = read_pdf(pdf.data)
    assert len(reader.pages) == 1
    assert reader.pages[0].extract_text().strip() == ""
    assert [p.text for p in read_docx(word.data).paragraphs] == []
    assert json.loads(json_doc.data)["content"] == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report", "report"),
        ("", "response"),
        ("   ", "response"),
        ("../../etc/passwd", "etc_passwd"),
        ("..\\..\\windows\\system32", "windows_system32"),
        ("a/b\\c", "a_b_c"),
        ("/absolute/path", "absolute_path"),
        ("bad\x00na\x1bme\x7f\x01", "badname"),
        ("invoice\u202efdp", "invoicefdp"),  # right-to-left override spoofs the extension
        ("..hidden", "hidden"),
        (".env", "env"),
        ("trailing. . .", "trailing"),
        ('say "hi" <now>?', "say_hi_now"),
        ("a:b|c*d'e`f", "a_b_c_d_e_f"),
        ("my  report\tfinal\nv2", "my_report_final_v2"),
        ("résumé", "résumé"),
        ("re\u0301sume\u0301", "résumé"),  # decomposed accents are composed
        ("Отчёт Ελληνικά", "Отчёт_Ελληνικά"),
        ("CON", "CON_"),
        ("lpt1", "lpt1_"),
        ("...", "response"),
    ],
)
def test_sanitize_filename(raw, expected):
    assert sanitize_filename(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fmt", "expected"),
    [
        ("report.pdf", DocumentFormat.PDF, "report"),
        ("Report.PDF", DocumentFormat.PDF, "Report"),
        ("report.pdf", DocumentFormat.DOCX, "report.pdf"),
        ("notes.md", DocumentFormat.MARKDOWN, "notes"),
        ("data.json", DocumentFormat.JSON, "data"),
        ("letter.docx", DocumentFormat.DOCX, "letter"),
        ("plain.txt", DocumentFormat.TXT, "plain"),
        ("report.pdf", None, "report.pdf"),
    ],
)
def test_sanitize_filename_drops_the_matching_extension(raw, fmt, expected):
    assert sanitize_filename(raw, fmt) == expected


def test_render_document_does_not_double_the_extension():
    assert render_document("x", DocumentFormat.PDF, "report.pdf").filename == "report.pdf"
    assert render_document("x", DocumentFormat.TXT, "../x/report.txt").filename == "x_report.txt"


def test_sanitize_filename_caps_length():
    assert sanitize_filename("a" * 500) == "a" * 100
    assert sanitize_filename("a" * 500 + ".pdf", DocumentFormat.PDF) == "a" * 100
    # Multi-byte names stay within what filesystems accept (255 bytes) with the extension.
    cjk = sanitize_filename("日本語" * 100)
    assert len(cjk) <= 100
    assert len(cjk.encode("utf-8")) <= 200
    assert cjk.startswith("日本語")


def test_sanitized_names_are_safe_in_paths_and_headers():
    nasty = '../..\\<x>:"y"|z?*\'\x00\r\n/..'
    name = sanitize_filename(nasty)

    assert name
    assert not set(name) & set("<>:\"/\\|?*'\x00\r\n")
    assert ".." not in name
    assert not name.startswith(".")


def test_the_server_imports_the_pdf_and_docx_libraries_only_when_a_file_is_rendered():
    # fpdf2 (with Pillow and numpy) and python-docx hold about 46 MiB per worker process.
    probe = (
        "import sys\n"
        "from llmproxy.server.app import build_app\n"
        "from llmproxy.server.config import Settings\n"
        "build_app(Settings())\n"
        "heavy = ('fpdf', 'docx', 'numpy', 'PIL')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
        "from llmproxy.server.core.documents import DocumentFormat, render_document\n"
        "render_document('x', DocumentFormat.PDF)\n"
        "print('fpdf' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out == ["", "True"]
